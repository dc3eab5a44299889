#!/usr/bin/env bash
# The main job, end to end: qnet (Quark's in-hypervisor TCP/IP stack) serving HTTP, TCP echo and
# UDP echo on a TAP in a fresh network namespace, reached by the kernel's curl, nc and ping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

ns=quark-demo-$$
sock=/run/qnet/$ns.sock
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
./target/release/qnet serve --netns "$ns" --tap qtap0 --addr 10.99.0.2/24 \
  --peer-addr 10.99.0.1/24 --socket "$sock" &
pid=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
sleep 0.3

run() { echo "+ $*"; ip netns exec "$ns" "$@"; }
run ping -c 2 -W 2 10.99.0.2
run curl -sS -m 5 http://10.99.0.2/
echo "hello through qnet" | run nc -q1 -w5 10.99.0.2 7
echo "a datagram" | run nc -u -w1 10.99.0.2 7
echo "demo: OK (qnet served ping, HTTP, TCP echo and UDP echo from namespace $ns)"
