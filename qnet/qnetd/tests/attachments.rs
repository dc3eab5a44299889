//! Endpoints qnetd does not make a TAP for: an existing link (the host end of a pod's veth
//! pair), joined to a TAP of the daemon's with tc mirred, and a socket ring, served by a qnet
//! stack inside the daemon to ring clients (here the test itself, through qnet-client).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quark_tests::overlay::{pings, two_nodes, TwoNodes};
use quark_tests::{receive_all, require_env, run, send_pattern, Netns};

const QNETD: &str = env!("CARGO_BIN_EXE_qnetd");

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// A kernel listener in `ns` at `at` that hashes what one connection sends.
fn kernel_sink(ns: &Netns, at: SocketAddr) -> std::thread::JoinHandle<(usize, Vec<u8>)> {
    let listener = ns
        .enter(|| std::net::TcpListener::bind(at))
        .unwrap_or_else(|e| panic!("binding {at}: {e}"));
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accepting");
        receive_all(&mut s)
    })
}

/// Whether `ns` gets an answer from `ip` within three one-second pings: a qnet stack drops
/// the packet that makes it look up a neighbour (smoltcp queues nothing), so its first
/// answer may be lost.
fn answers(ns: &Netns, ip: &str) -> bool {
    (0..3).any(|_| pings(ns, ip))
}

/// The tc filters on the ingress of `link` in `ns`, as `tc` prints them.
fn ingress_filters(ns: &Netns, link: &str) -> String {
    let out = ns.sh(&format!("tc filter show dev {link} ingress"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qnetd endpoint add` of `pc` (10.42.0.4 in VPC red) on an existing link in `netns`; the
/// link's name and MAC follow.
fn link_endpoint(netns: &str) -> [&str; 11] {
    [
        "endpoint",
        "add",
        "pc",
        "--vpc",
        "red",
        "--ip",
        "10.42.0.4",
        "--attach",
        "link",
        "--netns",
        netns,
    ]
}

/// Pod `pc` (10.42.0.4, MAC 02:00:00:00:00:04) behind a veth pair whose host end `vc` is in
/// node A's namespace, set up as a CNI plugin would, and attached to A's qnetd as an existing
/// link; B is told where it is.
fn veth_pod(t: &TwoNodes) -> Netns {
    let pc = Netns::new("pc");
    let node = &t.a.ns.name;
    let script = format!(
        "ip -n {node} link add vc type veth peer name eth0 netns {pc} && \
         ip -n {pc} link set eth0 address 02:00:00:00:00:04 mtu 1450 up && \
         ip -n {pc} addr add 10.42.0.4/24 dev eth0 && \
         ip -n {pc} route add default via 10.42.0.1",
        pc = pc.name
    );
    run("sh", &["-c", &script]);
    let netns = format!("/run/netns/{node}");
    let more = ["--ifname", "vc", "--mac", "02:00:00:00:00:04"];
    t.a.ok(&[&link_endpoint(&netns)[..], &more[..]].concat());
    t.b.remote("pc", "red", "10.42.0.4", t.a.ip, Some("02:00:00:00:00:04"));
    pc
}

#[test]
fn a_pod_on_an_existing_veth_end_joins_the_vpc_and_its_link_is_given_back() {
    require_env(&["ping", "python3", "tc"]);
    let mut t = two_nodes(QNETD, "red");
    let pc = veth_pod(&t);
    assert!(pings(&pc, "10.42.0.1"), "the gateway answers the veth pod");
    assert!(
        pings(&pc, "10.42.0.2"),
        "the veth pod reaches a TAP pod on its node"
    );
    assert!(
        pings(&pc, "10.42.0.3"),
        "the veth pod reaches a pod on node B"
    );
    assert!(
        pings(&t.pb, "10.42.0.4"),
        "node B's pod reaches the veth pod"
    );

    // Bulk both ways across the nodes, intact.
    for (from, to, at) in [
        (&pc, &t.pb, "10.42.0.3:5001"),
        (&t.pb, &pc, "10.42.0.4:5002"),
    ] {
        let sink = kernel_sink(to, addr(at));
        let mut s = from
            .enter(|| std::net::TcpStream::connect_timeout(&addr(at), Duration::from_secs(3)))
            .expect("connecting through the overlay");
        let sent = send_pattern(&mut s, 128 << 20);
        s.shutdown(std::net::Shutdown::Write)
            .expect("shutting down");
        assert_eq!(sink.join().expect("sink"), (128 << 20, sent), "{at}");
    }

    // The link's ingress goes to qnetd's TAP; a restarted daemon replaces its filter rather
    // than adding a second one, and the pod keeps its way out.
    assert_eq!(ingress_filters(&t.a.ns, "vc").matches("mirred").count(), 1);
    t.a.kill();
    t.a.start();
    assert!(
        pings(&pc, "10.42.0.3"),
        "the veth pod after a restart of its node"
    );
    let filters = ingress_filters(&t.a.ns, "vc");
    assert_eq!(filters.matches("mirred").count(), 1, "{filters}");

    // Deleting the endpoint gives the link back as it was and removes qnetd's TAP.
    t.a.ok(&["endpoint", "del", "pc"]);
    let filters = ingress_filters(&t.a.ns, "vc");
    assert!(!filters.contains("mirred"), "{filters}");
    let links = t.a.ns.sh("ip -o link show");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(" qe"), "{links}");
    assert!(links.contains("vc@"), "the link itself stays: {links}");
    assert!(!pings(&pc, "10.42.0.3"), "a deleted endpoint is cut off");
}

#[test]
fn an_existing_link_endpoint_needs_a_link_that_exists_and_its_mac() {
    require_env(&["ping", "python3"]);
    let t = two_nodes(QNETD, "red");
    let netns = format!("/run/netns/{}", t.a.ns.name);
    let base = link_endpoint(&netns);
    let refused = |extra: &[&str], says: &str| {
        let out = t.a.ctl(&[&base[..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{extra:?}: {err}"
        );
    };
    refused(&["--mac", "02:00:00:00:00:04"], "ifname");
    refused(&["--ifname", "vc"], "mac");
    refused(
        &["--ifname", "nosuch0", "--mac", "02:00:00:00:00:04"],
        "nosuch0",
    );
    // Nothing of the refused endpoints was kept.
    assert!(!t.a.ok(&["endpoint", "list"]).contains("\"pc\""));
    let links = t.a.ns.sh("ip -o link show");
    assert!(!String::from_utf8_lossy(&links.stdout).contains(" qe"));
}

/// The socket a ring endpoint's JSON names.
fn ring_socket(endpoint_json: &str) -> PathBuf {
    let v: serde_json::Value = serde_json::from_str(endpoint_json).expect("endpoint JSON");
    v["ring"]["socket"]
        .as_str()
        .unwrap_or_else(|| panic!("no ring socket in {endpoint_json}"))
        .into()
}

#[test]
fn a_ring_endpoint_serves_sockets_from_a_stack_in_the_daemon_and_after_a_restart() {
    require_env(&["ping", "python3"]);
    let mut t = two_nodes(QNETD, "red");
    let made = t.a.ok(&[
        "endpoint",
        "add",
        "pr",
        "--vpc",
        "red",
        "--ip",
        "10.42.0.5",
        "--attach",
        "ring",
        "--buffers-mib",
        "64",
    ]);
    assert!(made.contains("\"buffers_mib\":64"), "{made}");
    let socket = ring_socket(&made);
    t.b.remote("pr", "red", "10.42.0.5", t.a.ip, None);
    assert!(
        answers(&t.pb, "10.42.0.5"),
        "node B's pod pings the ring endpoint's stack"
    );
    assert!(
        answers(&t.pa, "10.42.0.5"),
        "a TAP pod on its node pings it"
    );

    let client = qnet_client::Client::connect(&socket).expect("attaching to the ring");
    // Out: the ring client connects to a kernel server on node B.
    let sink = kernel_sink(&t.pb, addr("10.42.0.3:5001"));
    let mut s = qnet_client::TcpStream::connect(&client, addr("10.42.0.3:5001"))
        .expect("connecting from the ring");
    assert_eq!(
        s.local_addr().expect("local address").ip().to_string(),
        "10.42.0.5"
    );
    let sent = send_pattern(&mut s, 128 << 20);
    s.shutdown(std::net::Shutdown::Write)
        .expect("shutting down");
    assert_eq!(sink.join().expect("sink"), (128 << 20, sent));

    // In: a kernel client on node B connects to a listener on the ring.
    let listener = qnet_client::TcpListener::bind(&client, addr("0.0.0.0:8080"), 8)
        .expect("listening on the ring");
    let mut k =
        t.pb.enter(|| {
            std::net::TcpStream::connect_timeout(&addr("10.42.0.5:8080"), Duration::from_secs(3))
        })
        .expect("connecting to the ring endpoint");
    let sender = std::thread::spawn(move || {
        let sent = send_pattern(&mut k, 64 << 20);
        k.shutdown(std::net::Shutdown::Write)
            .expect("shutting down");
        sent
    });
    let (mut conn, peer) = listener.accept().expect("accepting on the ring");
    assert_eq!(peer.ip().to_string(), "10.42.0.3");
    let got = receive_all(&mut conn);
    assert_eq!(got, (64 << 20, sender.join().expect("sender")));

    // A restarted daemon starts the endpoint's stack again: the old stack's connections are
    // gone with it, new clients attach and connect.
    drop((conn, listener, s));
    // A reader blocked on a connection of the old stack learns that it died, within about a
    // second, instead of waiting for ever.
    let quiet =
        t.pb.enter(|| std::net::TcpListener::bind(addr("10.42.0.3:5004")))
            .expect("binding");
    let mut blocked = qnet_client::TcpStream::connect(&client, addr("10.42.0.3:5004"))
        .expect("connecting from the ring");
    let _peer = quiet.accept().expect("accepting");
    let reader = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let got = blocked.read(&mut [0u8; 16]);
        (got.map_err(|e| e.kind()), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    t.a.kill();
    let (got, after) = reader.join().expect("reader");
    assert_eq!(got, Err(std::io::ErrorKind::ConnectionAborted));
    assert!(after < Duration::from_secs(3), "noticed after {after:?}");
    drop(client);
    t.a.start();
    let client = qnet_client::Client::connect(&socket).expect("attaching after a restart");
    let sink = kernel_sink(&t.pb, addr("10.42.0.3:5003"));
    let mut s = qnet_client::TcpStream::connect(&client, addr("10.42.0.3:5003"))
        .expect("connecting from the ring after a restart");
    let sent = send_pattern(&mut s, 1 << 20);
    s.shutdown(std::net::Shutdown::Write)
        .expect("shutting down");
    assert_eq!(sink.join().expect("sink"), (1 << 20, sent));

    // Deleting the endpoint stops its stack and removes its socket and devices.
    drop((s, client));
    t.a.ok(&["endpoint", "del", "pr"]);
    assert!(!socket.exists(), "{} is left", socket.display());
    let links = t.a.ns.sh("ip -o link show");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(" qr") && !links.contains(" qs"), "{links}");
    assert!(
        !pings(&t.pb, "10.42.0.5"),
        "a deleted ring endpoint is gone"
    );
}
