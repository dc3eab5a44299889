//! qnetd nodes sharing one etcd (Debian's etcd-server): VPCs and endpoints made on one node
//! reach the others through the watch, leases take a dead node's endpoints away, and a
//! restarted node publishes its own again.

use std::time::{Duration, Instant};

use quark_tests::overlay::{pings, Etcd, Node, Underlay};
use quark_tests::{require_env, Netns};

const QNETD: &str = env!("CARGO_BIN_EXE_qnetd");

/// Polls `done` every 50 ms for up to `limit`; how long it took, or a failure saying `what`.
fn within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} (waited {limit:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn lists(node: &Node, what: &str, name: &str) -> bool {
    node.ok(&[what, "list"])
        .contains(&format!("\"name\":\"{name}\""))
}

#[test]
fn three_nodes_share_vpcs_and_endpoints_through_etcd() {
    require_env(&["ping", "etcd"]);
    let ul = Underlay::new();
    let etcd = Etcd::start(&ul, 100);
    let args = ["--etcd", etcd.url.as_str()];
    let mut nodes: Vec<Node> = (1..=3).map(|n| ul.node_with(QNETD, n, &args)).collect();

    // A VPC made on one node is every node's.
    nodes[0].add_vpc("red", 42, "10.42.0.0/24");
    within(Duration::from_secs(2), "the VPC reached every node", || {
        nodes.iter().all(|n| lists(n, "vpc", "red"))
    });
    // One pod per node, each attached through its own node only: they reach each other.
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("cp{i}"))).collect();
    for (i, (node, pod)) in nodes.iter().zip(&pods).enumerate() {
        node.attach(&format!("p{i}"), "red", &format!("10.42.0.{}", 10 + i), pod);
    }
    within(
        Duration::from_secs(5),
        "pods on three nodes reach each other",
        || pings(&pods[0], "10.42.0.12") && pings(&pods[2], "10.42.0.11"),
    );

    // An endpoint added live is known to the other nodes within a second.
    let p3 = Netns::new("cp3");
    let started = Instant::now();
    nodes[1].attach("p3", "red", "10.42.0.13", &p3);
    within(Duration::from_secs(1), "node 1 learnt p3", || {
        lists(&nodes[0], "endpoint", "p3")
    });
    eprintln!(
        "a new endpoint reached another node {:?} after its API call",
        started.elapsed()
    );
    assert!(pings(&pods[0], "10.42.0.13"));
    // Its address is the cluster's: another node cannot give it out again.
    let spare = Netns::new("cpx");
    let netns = format!("/run/netns/{}", spare.name);
    let out = nodes[2].ctl(&[
        "endpoint",
        "add",
        "dup",
        "--vpc",
        "red",
        "--ip",
        "10.42.0.13",
        "--netns",
        &netns,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10.42.0.13"), "{err}");
    // And removed live.
    nodes[1].ok(&["endpoint", "del", "p3"]);
    within(Duration::from_secs(1), "node 1 forgot p3", || {
        !lists(&nodes[0], "endpoint", "p3")
    });
    assert!(!pings(&pods[0], "10.42.0.13"));

    // A dead node's endpoints go with its lease.
    nodes[2].kill();
    let gone = within(
        Duration::from_secs(8),
        "node 3's endpoint left node 1",
        || !lists(&nodes[0], "endpoint", "p2"),
    );
    eprintln!("a killed node's endpoint disappeared after {gone:?}");
    assert!(!pings(&pods[0], "10.42.0.12"));
    // Restarted, it keeps its endpoint and publishes it again.
    nodes[2].start();
    within(
        Duration::from_secs(5),
        "node 3's endpoint came back",
        || lists(&nodes[0], "endpoint", "p2") && pings(&pods[0], "10.42.0.12"),
    );
    // A VPC with endpoints somewhere in the cluster cannot be deleted anywhere.
    let out = nodes[1].ctl(&["vpc", "del", "red"]);
    assert!(!out.status.success(), "deleted a VPC in use");
}
