#!/usr/bin/env bash
# Installs what Quark's demo, tests and benchmarks need on a fresh Debian machine, then builds
# the release binaries (skipped with --packages-only: the test suite builds its own debug ones,
# and two full builds side by side outgrow a small CI disk).
# Idempotent: packages already present are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
[ "${1:-}" = "--packages-only" ] && build=0

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (Quark creates TAP devices and network namespaces)" >&2
    exit 1
  fi
}
need_root

packages=(iproute2 iputils-ping curl netcat-openbsd python3 iperf3 procps busybox-static tini catatonit gcc g++ libc6-dev musl-tools runc runsc util-linux containerd containernetworking-plugins iptables nginx-light wrk ethtool etcd-server protobuf-compiler hping3)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
[ -e /dev/net/tun ] || { modprobe tun 2>/dev/null || true; }
[ -e /dev/net/tun ] || { echo "setup: /dev/net/tun is missing" >&2; exit 1; }

if [ "$build" = 1 ]; then
  cargo build --release --workspace --bins
fi
