//! The guest suite: the same static client (`guests/tcpbench.c`) run natively in a namespace
//! behind a veth pair (what runc gives a container) and as a Quark container whose pod
//! namespace has the same veth (qvisor takes the interface over; the app's sockets go through
//! qkernel and qnet). The peer is a kernel socket in the other namespace. Rounds alternate the
//! two paths; medians are reported, with the floor the host's syscall cost sets.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};

use quark_tests::Netns;

use crate::workload::{bulk_recv, bulk_send, echo};
use crate::{alternate, figures, Column, Figure};

const CLIENT_IP: &str = "10.87.0.2";
const PEER_IP: &str = "10.87.0.1";

/// A root holding the static client, and the syscall-cost program for the floor.
struct Root(PathBuf);

impl Root {
    fn build() -> anyhow::Result<Root> {
        let dir = std::env::temp_dir().join(format!("netbench-guest-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        for name in ["tcpbench", "syscost"] {
            crate::runtime::build_guest(name, &bin)?;
        }
        Ok(Root(dir))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A client namespace with a veth to its own peer namespace.
struct Link {
    client: Netns,
    peer: Netns,
}

impl Link {
    fn new(tag: &str) -> Link {
        let client = Netns::new(tag);
        let peer = Netns::new(&format!("{tag}p"));
        client.veth_to(&peer, &format!("{CLIENT_IP}/24"), &format!("{PEER_IP}/24"));
        Link { client, peer }
    }
}

/// How and where the client program runs.
enum Runner<'a> {
    /// In namespace `1`, as runc would run it.
    Native(&'a Root, &'a Netns),
    /// In a Quark container with these network options of `qvisor launch`.
    Quark(&'a Root, Vec<String>),
}

impl Runner<'_> {
    /// A Quark container that takes over the pod interface of `ns`.
    fn quark_in<'a>(root: &'a Root, ns: &Netns) -> Runner<'a> {
        Runner::Quark(
            root,
            vec!["--netns".into(), format!("/run/netns/{}", ns.name)],
        )
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = match self {
            Runner::Native(root, ns) => ns
                .cmd(root.0.join("bin/tcpbench").to_str().context("path")?)
                .args(args)
                .output()?,
            Runner::Quark(root, net) => Command::new(crate::runtime::qvisor())
                .args(["launch", "--rootfs"])
                .arg(&root.0)
                .args(net)
                .arg("/bin/tcpbench")
                .args(args)
                .output()?,
        };
        if !out.status.success() {
            bail!(
                "tcpbench {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }
}

/// The kernel peer a round talks to: a namespace and its address.
struct Peer<'a> {
    ns: &'a Netns,
    ip: &'a str,
}

fn value(out: &str, key: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .with_context(|| format!("tcpbench printed no {key}: {out}"))
}

/// A kernel listener in the peer namespace serving one connection with `serve`.
fn listen<T: Send + 'static>(
    peer: &Peer,
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> anyhow::Result<(u16, thread::JoinHandle<Option<T>>)> {
    let ip = peer.ip;
    let l = peer.ns.enter(|| TcpListener::bind((ip, 0)))?;
    let port = l.local_addr()?.port();
    let h = thread::spawn(move || {
        let (s, _) = l.accept().ok()?;
        s.set_nodelay(true).ok()?;
        Some(serve(s))
    });
    Ok((port, h))
}

/// One round on one path: [client -> peer Gbit/s, peer -> client Gbit/s, p50 µs, p99 µs].
fn round(runner: &Runner, peer: &Peer, d: Duration) -> anyhow::Result<[f64; 4]> {
    let secs = format!("{}", d.as_secs_f64());
    // Client sends; the receiving peer measures.
    let (port, sink) = listen(peer, |s| bulk_recv(s).ok())?;
    runner.run(&["send", peer.ip, &port.to_string(), &secs])?;
    let (bytes, took) = sink
        .join()
        .ok()
        .flatten()
        .flatten()
        .context("the sink peer failed")?;
    let up = bytes as f64 * 8.0 / took.as_secs_f64().max(1e-9) / 1e9;
    // Peer sends; the client measures.
    let (port, source) = listen(peer, move |s| bulk_send(s, d).ok())?;
    let down = value(&runner.run(&["recv", peer.ip, &port.to_string()])?, "gbps")?;
    let _ = source.join();
    // 1-byte request/response against a kernel echo.
    let (port, echoer) = listen(peer, |s| echo(s).ok())?;
    let rr = runner.run(&["rr", peer.ip, &port.to_string(), &secs])?;
    let _ = echoer.join();
    Ok([up, down, value(&rr, "p50_us")?, value(&rr, "p99_us")?])
}

/// A guest syscall's cost (ns) on the trapping path: the floor of a blocking socket call.
fn trapped_syscall_ns(root: &Root) -> anyhow::Result<f64> {
    let out = Command::new(crate::runtime::qvisor())
        .args(["launch", "--syscall-poll", "off", "--rootfs"])
        .arg(&root.0)
        .args(["/bin/syscost", "2000", "1"])
        .output()?;
    value(&String::from_utf8_lossy(&out.stdout), "getpid_ns")
}

pub fn suite(duration: f64, rounds: usize) -> anyhow::Result<Vec<Figure>> {
    quark_tests::require_env(&[]);
    let d = Duration::from_secs_f64(duration);
    let root = Root::build()?;
    let native_link = Link::new("ng-n");
    let quark_link = Link::new("ng-q");
    let native = Runner::Native(&root, &native_link.client);
    let quark = Runner::quark_in(&root, &quark_link.client);
    let (quark_peer, native_peer) = (
        Peer {
            ns: &quark_link.peer,
            ip: PEER_IP,
        },
        Peer {
            ns: &native_link.peer,
            ip: PEER_IP,
        },
    );
    let (q, n) = alternate(
        rounds,
        || round(&quark, &quark_peer, d),
        || round(&native, &native_peer, d),
    )?;
    let floor_us = 2.0 * trapped_syscall_ns(&root)? / 1000.0;
    let names: [Column; 4] = [
        (
            "guest -> kernel peer bulk (1 stream)",
            "throughput",
            "Gbit/s",
        ),
        (
            "kernel peer -> guest bulk (1 stream)",
            "throughput",
            "Gbit/s",
        ),
        ("guest tcp request/response 1 byte", "p50 latency", "us"),
        ("guest tcp request/response 1 byte", "p99 latency", "us"),
    ];
    let mut figures = figures(&names, &q, &n);
    // Two trapped guest syscalls (send, receive) per round trip: the floor on this host,
    // next to the measured p50.
    figures.push(Figure::new(
        "floor: 2 trapped guest syscalls per round trip",
        "latency",
        "us",
        floor_us,
        figures[2].value,
    ));
    Ok(figures)
}

/// The VPC suite: the same client in a pod of a qnetd VPC on node A against a kernel pod on
/// node B (`quark_tests::overlay::two_nodes`), three ways in each round: natively in a pod on
/// a TAP endpoint (what a runc pod in the VPC gets, the baseline), as a Quark container that
/// takes that pod's interface over (app -> qkernel -> qnet in qvisor -> TAP -> qnetd), and as
/// a Quark container on a ring endpoint (app -> qkernel -> ring -> qnet in qnetd -> qnetd: no
/// stack, TAP or interface of its own). Each goes first equally often.
pub fn vpc_suite(duration: f64, rounds: usize) -> anyhow::Result<Vec<Figure>> {
    quark_tests::require_env(&["bridge"]);
    let d = Duration::from_secs_f64(duration);
    let root = Root::build()?;
    let qnetd = crate::runtime::sibling("qnetd");
    let nodes = quark_tests::overlay::two_nodes(qnetd.to_str().context("qnetd's path")?, "bench");
    let made = nodes.a.ok(&[
        "endpoint",
        "add",
        "pr",
        "--vpc",
        "bench",
        "--ip",
        "10.42.0.5",
        "--attach",
        "ring",
    ]);
    let made: serde_json::Value = serde_json::from_str(&made).context("qnetd's answer")?;
    let socket = made["ring"]["socket"]
        .as_str()
        .with_context(|| format!("no ring socket in {made}"))?
        .to_string();
    nodes.b.remote("pr", "bench", "10.42.0.5", nodes.a.ip, None);
    let peer = Peer {
        ns: &nodes.pb,
        ip: "10.42.0.3",
    };
    let runners = [
        Runner::Native(&root, &nodes.pa),
        Runner::quark_in(&root, &nodes.pa),
        Runner::Quark(&root, vec!["--net-ring".into(), socket]),
    ];
    let mut rows: [Vec<[f64; 4]>; 3] = Default::default();
    for r in 0..rounds {
        eprint!("\rnetbench: round {}/{rounds}", r + 1);
        for i in 0..3 {
            let which = (i + r) % 3;
            rows[which].push(round(&runners[which], &peer, d)?);
        }
    }
    eprintln!();
    let tap: [Column; 4] = [
        (
            "TAP endpoint: guest -> pod on node B, bulk",
            "throughput",
            "Gbit/s",
        ),
        (
            "TAP endpoint: pod on node B -> guest, bulk",
            "throughput",
            "Gbit/s",
        ),
        (
            "TAP endpoint: tcp request/response 1 byte",
            "p50 latency",
            "us",
        ),
        (
            "TAP endpoint: tcp request/response 1 byte",
            "p99 latency",
            "us",
        ),
    ];
    let ring: [Column; 4] = [
        (
            "ring endpoint: guest -> pod on node B, bulk",
            "throughput",
            "Gbit/s",
        ),
        (
            "ring endpoint: pod on node B -> guest, bulk",
            "throughput",
            "Gbit/s",
        ),
        (
            "ring endpoint: tcp request/response 1 byte",
            "p50 latency",
            "us",
        ),
        (
            "ring endpoint: tcp request/response 1 byte",
            "p99 latency",
            "us",
        ),
    ];
    let mut out = figures(&tap, &rows[1], &rows[0]);
    out.extend(figures(&ring, &rows[2], &rows[0]));
    Ok(out)
}
