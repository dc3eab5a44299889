#!/usr/bin/env bash
# The main job, end to end: a pod wired by a real CNI plugin (Debian's bridge + host-local), and
# a Quark container in it, from an OCI bundle made by `runc spec`. The container's busybox nc
# serves HTTP in guest user mode; its socket syscalls go to qkernel, over the socket ring to qnet
# (the TCP/IP stack inside qvisor), which has taken over the pod's eth0 (tc mirred to a TAP).
# curl on the node fetches the page. Everything is cleaned up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

node=quark-node-$$
pod=quark-pod-$$
work=$(mktemp -d)
cni_conf=$(cat <<EOF
{"cniVersion": "1.0.0", "name": "quark-demo", "type": "bridge", "bridge": "qdemo0",
 "isGateway": true,
 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]],
          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$work/ipam"}}
EOF
)
cni() {
  echo "$cni_conf" | CNI_COMMAND=$1 CNI_CONTAINERID=quark-demo CNI_NETNS=/run/netns/$pod \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni ip netns exec "$node" /usr/lib/cni/bridge
}
container=
cleanup() {
  # KILL: like runc's, a container's init ignores a SIGTERM it has no handler for.
  [ -n "$container" ] && { ./target/release/qvisor kill quark-demo KILL 2>/dev/null || true; wait "$container" 2>/dev/null || true; }
  cni DEL >/dev/null 2>&1 || true
  ip netns del "$pod" 2>/dev/null || true
  ip netns del "$node" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { echo; echo "== $*"; }

step "a pod network from the bridge CNI plugin (node namespace $node, pod namespace $pod)"
ip netns add "$node"
ip netns add "$pod"
ip -n "$node" link set lo up
cni ADD > "$work/cni-result.json"
ip=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ips"][0]["address"].split("/")[0])' "$work/cni-result.json")
echo "the plugin gave the pod $ip; in the pod namespace the kernel holds it:"
ip -n "$pod" -4 -brief addr show dev eth0

step "an OCI bundle (runc spec) whose config.json names the pod's network namespace"
mkdir -p "$work/bundle/rootfs/bin"
cp /bin/busybox "$work/bundle/rootfs/bin/busybox"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" "/run/netns/$pod" <<'EOF'
import json, sys
path, netns = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/bin/busybox", "nc", "-l", "-p", "8080"]
for ns in spec["linux"]["namespaces"]:
    if ns["type"] == "network":
        ns["path"] = netns
json.dump(spec, open(path, "w"), indent=2)
EOF
echo "process.args: busybox nc -l -p 8080; linux.namespaces network path: /run/netns/$pod"

step "qvisor run: the container in its own KVM VM, its network served by qnet inside qvisor"
./target/release/qvisor delete --force quark-demo 2>/dev/null || true  # a previous run's leftovers
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from busybox in a Quark VM, over qnet\n' \
  | ./target/release/qvisor run --bundle "$work/bundle" quark-demo > "$work/guest.out" 2>&1 &
container=$!
for _ in $(seq 100); do
  ip netns exec "$pod" tc filter show dev eth0 ingress 2>/dev/null | grep -q mirred && break
  sleep 0.05
done
echo "while it runs, qnet owns eth0: the kernel's address is gone and tc redirects eth0 to qtap0:"
addrs=$(ip -n "$pod" -4 -brief addr show dev eth0)
echo "${addrs:-eth0: no IPv4 address in the kernel}"
ip netns exec "$pod" tc filter show dev eth0 ingress | grep -o 'mirred (Egress Redirect to device [a-z0-9]*)'

step "curl from the node to the container"
echo "+ curl http://$ip:8080/"
body=""
for _ in $(seq 50); do
  body=$(ip netns exec "$node" curl -sS -m 5 "http://$ip:8080/" 2>/dev/null) && break
  sleep 0.1
done
echo "$body"
wait "$container" && status=0 || status=$?
container=
echo "the container exited with status $status; what it read from curl:"
head -1 "$work/guest.out"
echo "eth0 is the kernel's again, as the plugin made it:"
ip -n "$pod" -4 -brief addr show dev eth0
ip -n "$pod" route

[ "$body" = "hello from busybox in a Quark VM, over qnet" ] && [ "$status" = 0 ] || {
  echo "demo: FAILED"; exit 1; }
echo
echo "demo: OK (a CNI-wired pod, a container in its own VM serving HTTP through qnet to curl)"
