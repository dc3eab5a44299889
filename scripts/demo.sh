#!/usr/bin/env bash
# The main job, end to end: a container in its own KVM VM with networking. Its TCP server runs in
# guest user mode; its socket syscalls go to qkernel, over the socket ring to qnet (the TCP/IP
# stack inside qvisor), out through a TAP in a fresh network namespace, where the kernel's nc
# reaches it. Then qnet on its own (ping, HTTP, TCP and UDP echo). Everything is cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

ns=quark-demo-$$
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
run() { echo "+ $*"; ip netns exec "$ns" "$@"; }

echo "== a container with networking (qvisor + qkernel + qnet)"
mkdir -p "$work/rootfs/bin"
cp /bin/busybox "$work/rootfs/bin/busybox"
gcc -static -O2 -o "$work/rootfs/bin/tcp" qvisor/tests/guests/tcp.c
./target/release/qvisor exec --root "$work/rootfs" --netns "$ns" \
  --net-addr 10.99.0.2/24 --net-peer 10.99.0.1/24 /bin/tcp server 8080 > "$work/guest.out" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/guest.out" 2>/dev/null && break; sleep 0.05; done
echo "guest: $(cat "$work/guest.out")"
echo "+ printf 'hello from the host' | nc 10.99.0.2 8080   (in $ns)"
reply=$(printf 'hello from the host' | ip netns exec "$ns" nc -q1 -w5 10.99.0.2 8080)
echo "reply from the guest: $reply"
wait "${pids[0]}"
pids=()

echo "== qnet on its own: ping, HTTP, TCP and UDP echo through a ring client"
sock=$work/qnet.sock
ip netns del "$ns"; ip netns add "$ns"; ip -n "$ns" link set lo up
./target/release/qnet serve --netns "$ns" --tap qtap0 --addr 10.99.0.2/24 \
  --peer-addr 10.99.0.1/24 --socket "$sock" &
pids+=($!)
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
sleep 0.3
run ping -c 2 -W 2 10.99.0.2
run curl -sS -m 5 http://10.99.0.2/
echo "hello through qnet" | run nc -q1 -w5 10.99.0.2 7
echo "a datagram" | run nc -u -w1 10.99.0.2 7
echo "demo: OK (a container served TCP through qnet; qnet served ping, HTTP, TCP and UDP echo)"
