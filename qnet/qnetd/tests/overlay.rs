//! qnetd end to end: nodes and pods as network namespaces on an underlay bridge, each node
//! running the real daemon, pods talking through it with the kernel's own tools (ping, TCP
//! sockets, python raw sockets), and a Linux kernel VXLAN device as a foreign node.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use quark_tests::overlay::{pings, two_nodes_with, underlay_ip, TwoNodes, Underlay};
use quark_tests::{receive_all, require_env, run, send_pattern, Netns, Pattern};

const QNETD: &str = env!("CARGO_BIN_EXE_qnetd");

fn two_nodes() -> TwoNodes {
    require_env(&["ping", "python3"]);
    quark_tests::overlay::two_nodes(QNETD, "red")
}

/// A listener at `addr` inside `ns`.
fn listen(ns: &Netns, addr: SocketAddr) -> TcpListener {
    ns.enter(|| TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"))
}

fn connect(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpStream> {
    ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
}

/// Sends `bytes` of a pattern from `client` to a server in `server` at `addr` and checks that
/// the SHA-256 of what arrived is that of what was sent; the time it took.
fn transfer(client: &Netns, server: &Netns, addr: SocketAddr, bytes: usize) -> Duration {
    let listener = listen(server, addr);
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accepting");
        receive_all(&mut s)
    });
    let started = Instant::now();
    let mut s = connect(client, addr).expect("connecting through the overlay");
    let sent = send_pattern(&mut s, bytes);
    s.shutdown(std::net::Shutdown::Write)
        .expect("shutting down");
    let (total, got) = receiver.join().expect("receiver");
    assert_eq!(total, bytes);
    assert_eq!(got, sent, "the data changed on the way");
    started.elapsed()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

#[test]
fn pods_on_two_nodes_ping_and_move_a_gib_intact() {
    require_env(&["ping", "python3"]);
    let t = two_nodes_with(QNETD, "red", &["--tunnel-offload", "on"]);
    // The pod's interface is what the VPC says: address, MTU (underlay less 50), gateway.
    let link =
        t.pa.sh("ip -o addr show eth0; ip -o link show eth0; ip route");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("10.42.0.2/24"), "{link}");
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("0a:58:0a:2a:00:02"), "{link}");
    assert!(link.contains("default via 10.42.0.1"), "{link}");
    assert!(pings(&t.pa, "10.42.0.1"), "the gateway answers ping");
    assert!(pings(&t.pa, "10.42.0.3"), "A's pod reaches B's");
    assert!(pings(&t.pb, "10.42.0.2"), "B's pod reaches A's");
    let took = transfer(&t.pa, &t.pb, addr("10.42.0.3:5001"), 1 << 30);
    eprintln!(
        "1 GiB from node A to node B in {took:?} ({:.0} Mbit/s)",
        8.0 * 1024.0 / took.as_secs_f64()
    );
    // The pods' 64 KiB TCP frames went whole through both nodes' tunnel devices: ~16k
    // frames for 1 GiB, where frame by frame would have been ~740k.
    let stats = || format!("{}\n{}", t.a.ok(&["stats"]), t.b.ok(&["stats"]));
    assert!(t.a.counter("tunnel_out") > 1000, "{}", stats());
    assert!(t.b.counter("tunnel_in") > 1000, "{}", stats());
    assert!(t.b.counter("delivered") < 200_000, "{}", stats());
    assert_eq!(t.a.counter("cut"), 0, "{}", stats());
    assert_eq!(t.b.counter("dropped.malformed"), 0, "{}", t.b.log_text());
    assert_eq!(t.b.counter("dropped.spoofed"), 0);
}

#[test]
fn without_tunnel_offload_frames_are_cut_and_joined_over_udp_sockets() {
    require_env(&["ping", "python3"]);
    let t = two_nodes_with(QNETD, "red", &["--tunnel-offload", "off"]);
    assert!(pings(&t.pa, "10.42.0.3"), "A's pod reaches B's");
    transfer(&t.pa, &t.pb, addr("10.42.0.3:5001"), 256 << 20);
    transfer(&t.pb, &t.pa, addr("10.42.0.2:5001"), 64 << 20);
    // The pods' 64 KiB TCP frames were cut for the underlay and joined again for the TAP.
    assert!(t.a.counter("cut") > 1000, "{}", t.a.ok(&["stats"]));
    assert!(t.b.counter("joined") > 1000, "{}", t.b.ok(&["stats"]));
    assert!(
        t.b.counter("delivered") > 170_000,
        "B delivered every segment"
    );
    assert_eq!(t.a.counter("tunnel_out"), 0);
    assert_eq!(t.b.counter("dropped.malformed"), 0);
}

#[test]
fn two_vpcs_with_the_same_network_stay_apart() {
    require_env(&["ping", "python3"]);
    let ul = Underlay::new();
    let a = ul.node(QNETD, 1);
    let b = ul.node(QNETD, 2);
    for n in [&a, &b] {
        n.add_vpc("red", 42, "10.42.0.0/24");
        n.add_vpc("blue", 43, "10.42.0.0/24");
    }
    // The same addresses in both VPCs, placed crosswise.
    let (ra, rb, ba, bb, bx) = (
        Netns::new("ra"),
        Netns::new("rb"),
        Netns::new("ba"),
        Netns::new("bb"),
        Netns::new("bx"),
    );
    a.attach("ra", "red", "10.42.0.2", &ra);
    b.attach("rb", "red", "10.42.0.3", &rb);
    a.attach("ba", "blue", "10.42.0.3", &ba);
    b.attach("bb", "blue", "10.42.0.2", &bb);
    b.attach("bx", "blue", "10.42.0.9", &bx);
    a.remote("rb", "red", "10.42.0.3", b.ip, None);
    b.remote("ra", "red", "10.42.0.2", a.ip, None);
    a.remote("bb", "blue", "10.42.0.2", b.ip, None);
    a.remote("bx", "blue", "10.42.0.9", b.ip, None);
    b.remote("ba", "blue", "10.42.0.3", a.ip, None);

    // Each pod answers with its name; who answers 10.42.0.3 depends on the VPC asking.
    let mut servers = Vec::new();
    for (ns, ip, name) in [
        (&rb, "10.42.0.3", "rb"),
        (&ba, "10.42.0.3", "ba"),
        (&bb, "10.42.0.2", "bb"),
    ] {
        let l = listen(ns, addr(&format!("{ip}:7000")));
        servers.push(std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accepting");
            s.write_all(name.as_bytes()).expect("answering");
        }));
    }
    let ask = |ns: &Netns, ip: &str| {
        let mut s = connect(ns, addr(&format!("{ip}:7000"))).expect("connecting");
        let mut name = String::new();
        s.read_to_string(&mut name).expect("reading");
        name
    };
    assert_eq!(ask(&ra, "10.42.0.3"), "rb", "red's 10.42.0.3 is on node B");
    assert_eq!(ask(&bb, "10.42.0.3"), "ba", "blue's 10.42.0.3 is on node A");
    assert_eq!(ask(&ba, "10.42.0.2"), "bb", "blue's 10.42.0.2 is on node B");
    for s in servers {
        s.join().expect("server");
    }

    // Red cannot reach an address only blue has, by ping or TCP, and it shows in the counters.
    let before = a.counter("dropped.no_route");
    assert!(!pings(&ra, "10.42.0.9"));
    assert!(connect(&ra, addr("10.42.0.9:7000")).is_err());
    assert!(
        a.counter("dropped.no_route") > before,
        "A counted the drops"
    );

    // A pod that takes another address (blue's) is refused as a spoofer, not routed.
    let before = a.counter("dropped.spoofed");
    run(
        "ip",
        &["-n", &ra.name, "addr", "add", "10.42.0.9/32", "dev", "eth0"],
    );
    let spoof = ra.sh("ping -c 1 -W 1 -I 10.42.0.9 10.42.0.3");
    assert!(!spoof.status.success(), "a spoofed source went through");
    assert!(
        a.counter("dropped.spoofed") > before,
        "A counted the spoofed frames"
    );
}

#[test]
fn a_kernel_vxlan_node_interoperates_both_ways() {
    kernel_vxlan_interop("on");
}

#[test]
fn a_kernel_vxlan_node_interoperates_over_udp_sockets() {
    kernel_vxlan_interop("off");
}

/// A foreign node, the Linux kernel's own VXLAN device with VNI 42 and address 10.42.0.50
/// sending everything it does not know to node A, whose qnetd runs with tunnel offload
/// `offload`: pings and 32 MiB each way.
fn kernel_vxlan_interop(offload: &str) {
    require_env(&["ping", "python3", "bridge", "ethtool"]);
    let ul = Underlay::new();
    let a = ul.node_with(QNETD, 1, &["--tunnel-offload", offload]);
    let k = ul.join("kvx", 9);
    let sh = |script: &str| {
        let out = k.sh(script);
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    if offload == "off" {
        // The underlay veth stands for a wire: checksums are finished before a frame leaves
        // (a veth would otherwise carry the inner TCP checksum unfinished, CHECKSUM_PARTIAL,
        // into qnetd's UDP socket, which no NIC does). Through the tunnel device the kernel
        // says so in the virtio-net header and qnetd passes the checksum on partial.
        sh("ethtool -K u0 tx off >/dev/null");
    }
    sh(
        "ip link add vx0 type vxlan id 42 dstport 4789 local 192.168.77.9 dev u0 nolearning \
        && ip link set vx0 mtu 1450 up && ip addr add 10.42.0.50/24 dev vx0 \
        && bridge fdb append 00:00:00:00:00:00 dev vx0 dst 192.168.77.1",
    );
    let kmac = sh("cat /sys/class/net/vx0/address");
    let pa = Netns::new("pa");
    a.add_vpc("red", 42, "10.42.0.0/24");
    a.attach("pa", "red", "10.42.0.2", &pa);
    a.remote("kernel", "red", "10.42.0.50", underlay_ip(9), Some(&kmac));

    assert!(
        pings(&pa, "10.42.0.50"),
        "qnetd's pod reaches the kernel node"
    );
    assert!(
        pings(&k, "10.42.0.2"),
        "the kernel node reaches qnetd's pod"
    );
    transfer(&pa, &k, addr("10.42.0.50:5002"), 32 << 20);
    transfer(&k, &pa, addr("10.42.0.2:5003"), 32 << 20);
    // The kernel learnt the pod's MAC from qnetd's ARP answer.
    let neigh = sh("ip neigh show 10.42.0.2");
    assert!(neigh.contains("0a:58:0a:2a:00:02"), "{neigh}");
    let (sent, received) = (a.counter("tunnel_out"), a.counter("tunnel_in"));
    if offload == "on" {
        assert!(sent > 100 && received > 100, "{}", a.ok(&["stats"]));
    } else {
        assert_eq!((sent, received), (0, 0));
    }
}

#[test]
fn tunnel_offload_on_refuses_a_node_that_does_not_forward() {
    let ul = Underlay::new();
    let n = ul.join("nofwd", 5);
    // A new namespace takes the host's setting: turn forwarding off.
    n.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "0"))
        .expect("turning forwarding off");
    let dir = std::env::temp_dir().join(format!("qnetd-{}", n.name));
    std::fs::create_dir_all(&dir).expect("making a directory");
    let mut child = n
        .cmd(QNETD)
        .arg("--api")
        .arg(dir.join("api.sock"))
        .args([
            "run",
            "--underlay",
            "192.168.77.5",
            "--tunnel-offload",
            "on",
        ])
        .arg("--state")
        .arg(dir.join("state.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting qnetd");
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for qnetd") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("qnetd started without the tunnel offload it was told to use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("reading stderr");
    assert!(!status.success());
    assert!(err.contains("ip_forward"), "the reason is named: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stopped_daemon_removes_its_redirect_and_a_killed_ones_is_replaced() {
    let ul = Underlay::new();
    let mut a = ul.node_with(QNETD, 1, &["--tunnel-offload", "on"]);
    let filters = |n: &quark_tests::overlay::Node| {
        let out = n.ns.sh("tc filter show dev u0 ingress");
        String::from_utf8_lossy(&out.stdout)
            .matches("mirred")
            .count()
    };
    assert_eq!(filters(&a), 1, "the VXLAN port is redirected to qnetd0");
    // Killed, nothing of its own runs: the filter stays (pointing at a device gone with the
    // process) and the next start replaces it rather than adding a second.
    a.kill();
    a.start();
    assert_eq!(filters(&a), 1, "replaced, not added");
    // Stopped: the filter goes, so the node's VXLAN port is the kernel's again.
    assert!(
        a.terminate(),
        "qnetd exits cleanly on SIGTERM: {}",
        a.log_text()
    );
    assert_eq!(filters(&a), 0, "{}", a.log_text());
}

#[test]
fn a_restarted_daemon_keeps_its_endpoints_and_their_connections() {
    let mut t = two_nodes();
    let listener = listen(&t.pb, addr("10.42.0.3:5004"));
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accepting");
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).expect("echoing"),
            }
        }
    });
    let mut s = connect(&t.pa, addr("10.42.0.3:5004")).expect("connecting");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut roundtrip = |msg: &[u8]| {
        s.write_all(msg).expect("sending");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).expect("the echo");
        assert_eq!(got, msg);
    };
    roundtrip(b"before");
    t.a.kill();
    // While A is down its pod's interface stays, and what it sends waits in TCP.
    let link = t.pa.sh("ip -o link show eth0");
    assert!(
        link.status.success(),
        "the pod's interface went away with the daemon"
    );
    t.a.start();
    roundtrip(b"after the restart");
    assert!(pings(&t.pa, "10.42.0.3"));
    let listed = t.a.ok(&["endpoint", "list"]);
    assert!(
        listed.contains("\"pa\"") && listed.contains("\"pb\""),
        "{listed}"
    );
    drop(s);
    echo.join().expect("echo server");

    // Deleting the endpoint removes the pod's interface.
    t.a.ok(&["endpoint", "del", "pa"]);
    let end = Instant::now() + Duration::from_secs(5);
    while t.pa.sh("ip link show eth0").status.success() {
        assert!(
            Instant::now() < end,
            "eth0 stayed after the endpoint was deleted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!t.a.log_text().contains("panicked"));
}

/// Random and hostile input from the underlay and from a pod is dropped and counted; the
/// daemon keeps forwarding.
#[test]
fn malformed_and_hostile_packets_are_counted_and_never_crash_the_daemon() {
    let mut t = two_nodes();
    // From the underlay: a socket on node B's namespace sending to A's VXLAN port.
    let udp =
        t.b.ns
            .enter(|| UdpSocket::bind("192.168.77.2:0"))
            .expect("binding");
    let to = SocketAddr::from((t.a.ip, 4789));
    let mut pattern = Pattern::new(7);
    let mut junk = vec![0u8; 1600];
    for i in 0..3000usize {
        let len = i % junk.len();
        pattern.fill(&mut junk[..len]);
        if i % 3 == 0 && len >= 8 {
            // A valid VXLAN header for red, with a random inner frame.
            junk[..8].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 42, 0]);
        }
        let _ = udp.send_to(&junk[..len], to);
    }
    // A valid-looking frame to pa from an address B does not host (forged inner source).
    let mut forged = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    forged.extend_from_slice(&[
        0x0a, 0x58, 10, 42, 0, 2, 0x0a, 0x58, 10, 42, 0, 77, 0x08, 0x00,
    ]);
    forged.extend_from_slice(&ipv4_udp(
        Ipv4Addr::new(10, 42, 0, 77),
        Ipv4Addr::new(10, 42, 0, 2),
    ));
    udp.send_to(&forged, to).expect("sending");

    // From the pod: raw frames, random and forged, on its interface.
    let script = r#"
import os, socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mine = bytes.fromhex("0a580a2a0002")
sent = 0
for i in range(2000):
    n = 14 + (i * 37) % 1400
    body = os.urandom(n - 14)
    kind = i % 4
    if kind == 0:
        frame = os.urandom(6) + mine + b"\x08\x00" + body   # junk IPv4
    elif kind == 1:
        frame = os.urandom(6) + mine + b"\x08\x06" + body   # junk ARP
    elif kind == 2:
        frame = os.urandom(6) + os.urandom(6) + b"\x08\x00" + body   # another MAC
    else:
        frame = os.urandom(6) + mine + os.urandom(2) + body
    try:
        s.send(frame)
        sent += 1
    except OSError:
        pass
print(sent)
"#;
    let sent = t.pa.python_output(script, &[]);
    assert!(sent.starts_with("2000"), "{sent}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(t.a.alive(), "qnetd died: {}", t.a.log_text());
    assert!(
        t.a.counter("dropped.malformed") > 500,
        "{}",
        t.a.ok(&["stats"])
    );
    assert!(
        t.a.counter("dropped.spoofed") > 300,
        "{}",
        t.a.ok(&["stats"])
    );
    assert!(
        t.a.counter("dropped.unknown_vni") > 0,
        "{}",
        t.a.ok(&["stats"])
    );
    // Still forwarding.
    assert!(pings(&t.pa, "10.42.0.3"));
    transfer(&t.pb, &t.pa, addr("10.42.0.2:5005"), 8 << 20);
}

/// An IPv4/UDP packet with a valid header checksum.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 16, 0, 0]);
    p.extend_from_slice(b"forged!!");
    p
}

#[test]
fn the_api_refuses_bad_input_clearly_and_keeps_nothing_of_it() {
    require_env(&["curl"]);
    let ul = Underlay::new();
    let a = ul.node(QNETD, 1);
    a.add_vpc("red", 42, "10.42.0.0/24");
    let pod = Netns::new("pod");
    let netns = format!("/run/netns/{}", pod.name);
    let refused = |args: &[&str], why: &str| {
        let out = a.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    refused(
        &["vpc", "add", "x", "--vni", "7", "--cidr", "10.0.0.1/24"],
        "host bits",
    );
    refused(
        &["vpc", "add", "x", "--vni", "42", "--cidr", "10.1.0.0/24"],
        "VNI 42 belongs",
    );
    refused(
        &[
            "vpc",
            "add",
            "x",
            "--vni",
            "99999999",
            "--cidr",
            "10.1.0.0/24",
        ],
        "24 bits",
    );
    refused(
        &["vpc", "add", "red", "--vni", "7", "--cidr", "10.1.0.0/24"],
        "exists",
    );
    // Endpoint `e`: (VPC, address, where), and what the refusal says.
    let ns_arg = ["--netns", netns.as_str()];
    for (vpc, ip, place, why) in [
        ("nope", "10.42.0.2", ns_arg, "no VPC"),
        ("red", "10.43.0.2", ns_arg, "not a free host address"),
        ("red", "10.42.0.1", ns_arg, "not a free host address"),
        (
            "red",
            "10.42.0.2",
            ["--netns", "/run/netns/no-such-ns"],
            "no-such-ns",
        ),
        (
            "red",
            "10.42.0.2",
            ["--node", "192.168.77.1"],
            "is this node",
        ),
    ] {
        let mut args = vec!["endpoint", "add", "e", "--vpc", vpc, "--ip", ip];
        args.extend(place);
        refused(&args, why);
    }
    refused(&["endpoint", "del", "nope"], "no endpoint");
    a.attach("e", "red", "10.42.0.2", &pod);
    refused(
        &[
            "endpoint",
            "add",
            "f",
            "--vpc",
            "red",
            "--ip",
            "10.42.0.2",
            "--node",
            "192.168.77.2",
        ],
        "is endpoint \"e\"'s",
    );
    refused(&["vpc", "del", "red"], "still has 1 endpoint");
    // Raw HTTP: malformed JSON, unknown fields, an oversized body, an unknown path.
    let api = a.api().display().to_string();
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/stderr",
                "-w",
                "%{http_code}",
                "--unix-socket",
                &api,
            ])
            .args(args)
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, body) = curl(&["-d", "{not json", "http://qnetd/v1/vpcs"]);
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("bad request body"), "{body}");
    let (code, body) = curl(&[
        "-d",
        r#"{"name":"x","vni":5,"cidr":"10.5.0.0/24","colour":"red"}"#,
        "http://qnetd/v1/vpcs",
    ]);
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("colour"), "{body}");
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(100_000));
    let (code, _) = curl(&["-d", &big, "http://qnetd/v1/vpcs"]);
    assert_eq!(code, "413");
    let (code, _) = curl(&["http://qnetd/v2/anything"]);
    assert_eq!(code, "404");
    let (code, _) = curl(&["-X", "PUT", "http://qnetd/v1/vpcs"]);
    assert_eq!(code, "405");
    // Nothing of the refused calls was kept.
    let vpcs = a.ok(&["vpc", "list"]);
    assert_eq!(vpcs.matches("\"name\"").count(), 1, "{vpcs}");
    let eps = a.ok(&["endpoint", "list"]);
    assert_eq!(eps.matches("\"name\"").count(), 1, "{eps}");
    let state = std::fs::read_to_string(a.dir().join("state.json")).expect("state file");
    assert!(
        state.contains("\"e\"") && !state.contains("\"x\""),
        "{state}"
    );
}

#[test]
fn a_security_group_admits_its_rules_and_replies_and_nothing_else() {
    let t = two_nodes();
    // A guarded pod on B: TCP 8080 from the VPC's network, nothing else.
    t.b.ok(&["sg", "add", "web", "--rule", "tcp:8080@10.42.0.0/24"]);
    let pg = Netns::new("pg");
    let netns = format!("/run/netns/{}", pg.name);
    t.b.ok(&[
        "endpoint",
        "add",
        "pg",
        "--vpc",
        "red",
        "--ip",
        "10.42.0.4",
        "--netns",
        &netns,
        "--security-group",
        "web",
    ]);
    t.a.remote("pg", "red", "10.42.0.4", t.b.ip, None);

    let open = listen(&pg, addr("10.42.0.4:8080"));
    let _closed = listen(&pg, addr("10.42.0.4:9090"));
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = open.accept().expect("accepting");
            s.write_all(b"web").expect("answering");
        }
    });
    for (client, from) in [(&t.pa, "another node"), (&t.pb, "the same node")] {
        let mut s = connect(client, addr("10.42.0.4:8080"))
            .unwrap_or_else(|e| panic!("port 8080 from {from}: {e}"));
        let mut got = String::new();
        s.read_to_string(&mut got).expect("reading");
        assert_eq!(got, "web");
    }
    server.join().expect("server");
    let before = t.b.counter("dropped.denied");
    assert!(
        connect(&t.pa, addr("10.42.0.4:9090")).is_err(),
        "9090 is not allowed"
    );
    assert!(!pings(&t.pa, "10.42.0.4"), "ping is not allowed");
    assert!(!pings(&t.pb, "10.42.0.4"), "not from the same node either");
    assert!(t.b.counter("dropped.denied") > before);

    // What the guarded pod starts gets its replies.
    let peer = listen(&t.pa, addr("10.42.0.2:7001"));
    let echo = std::thread::spawn(move || {
        let (mut s, _) = peer.accept().expect("accepting");
        s.write_all(b"reply").expect("replying");
    });
    let mut s = connect(&pg, addr("10.42.0.2:7001")).expect("the guarded pod connects out");
    let mut got = String::new();
    s.read_to_string(&mut got).expect("reading the reply");
    assert_eq!(got, "reply");
    echo.join().expect("echo");
    assert!(pings(&pg, "10.42.0.2"), "its ping gets the echo reply");

    // Rules change live; a group in use cannot go.
    t.b.ok(&[
        "sg",
        "set",
        "web",
        "--rule",
        "tcp:8080@10.42.0.0/24",
        "--rule",
        "icmp",
    ]);
    assert!(pings(&t.pa, "10.42.0.4"), "ping allowed now");
    let out = t.b.ctl(&["sg", "del", "web"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("guards endpoint \"pg\""));
    let out = t.b.ctl(&["sg", "add", "bad", "--rule", "icmp:80"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ports apply to tcp and udp"));
}

/// RFC 7348's recommendation: the outer source port comes from a hash of the inner flow, so
/// underlays can spread flows (ECMP) while one flow keeps one path.
#[test]
fn each_flow_keeps_one_vxlan_source_port_and_flows_spread_over_several() {
    require_env(&["python3"]);
    let ul = Underlay::new();
    let a = ul.node(QNETD, 1);
    let far = ul.join("far", 9);
    let pa = Netns::new("pa");
    a.add_vpc("red", 42, "10.42.0.0/24");
    a.attach("pa", "red", "10.42.0.2", &pa);
    a.remote("far", "red", "10.42.0.9", underlay_ip(9), None);
    let sink = far
        .enter(|| UdpSocket::bind("192.168.77.9:4789"))
        .expect("binding the far node's VXLAN port");
    sink.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let client = pa
        .enter(|| UdpSocket::bind("10.42.0.2:0"))
        .expect("binding");
    let flows: Vec<u16> = (1000..1016).collect();
    for port in &flows {
        for _ in 0..2 {
            client.send_to(b"x", ("10.42.0.9", *port)).expect("sending");
        }
    }
    // Inner destination port -> the outer source ports its datagrams came from.
    let mut seen: std::collections::BTreeMap<u16, std::collections::BTreeSet<u16>> =
        Default::default();
    let mut buf = [0u8; 2048];
    for _ in 0..flows.len() * 2 {
        let (n, from) = sink.recv_from(&mut buf).expect("a VXLAN datagram");
        let inner = &buf[8..n];
        assert_eq!(inner[12..14], [0x08, 0x00], "IPv4 inside");
        let ihl = usize::from(inner[14] & 0x0f) * 4;
        let udp = &inner[14 + ihl..];
        let dst = u16::from_be_bytes([udp[2], udp[3]]);
        seen.entry(dst).or_default().insert(from.port());
    }
    assert_eq!(seen.len(), flows.len(), "{seen:?}");
    assert!(
        seen.values().all(|ports| ports.len() == 1),
        "a flow changed source port: {seen:?}"
    );
    let distinct: std::collections::BTreeSet<u16> = seen.values().flatten().copied().collect();
    assert!(distinct.len() >= 2, "16 flows left from one port: {seen:?}");
    assert!(!distinct.contains(&4789));
}
