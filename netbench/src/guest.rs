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

/// How the client program runs.
enum Runner<'a> {
    Native(&'a Root),
    Quark(&'a Root),
}

impl Runner<'_> {
    fn run(&self, link: &Link, args: &[&str]) -> anyhow::Result<String> {
        let out = match self {
            Runner::Native(root) => link
                .client
                .cmd(root.0.join("bin/tcpbench").to_str().context("path")?)
                .args(args)
                .output()?,
            Runner::Quark(root) => Command::new(crate::runtime::qvisor())
                .args(["launch", "--rootfs"])
                .arg(&root.0)
                .args(["--netns", &format!("/run/netns/{}", link.client.name)])
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

fn value(out: &str, key: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .with_context(|| format!("tcpbench printed no {key}: {out}"))
}

/// A kernel listener in the peer namespace serving one connection with `serve`.
fn peer<T: Send + 'static>(
    link: &Link,
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> anyhow::Result<(u16, thread::JoinHandle<Option<T>>)> {
    let l = link.peer.enter(|| TcpListener::bind((PEER_IP, 0)))?;
    let port = l.local_addr()?.port();
    let h = thread::spawn(move || {
        let (s, _) = l.accept().ok()?;
        s.set_nodelay(true).ok()?;
        Some(serve(s))
    });
    Ok((port, h))
}

/// One round on one path: [client -> peer Gbit/s, peer -> client Gbit/s, p50 µs, p99 µs].
fn round(runner: &Runner, link: &Link, d: Duration) -> anyhow::Result<[f64; 4]> {
    let secs = format!("{}", d.as_secs_f64());
    // Client sends; the receiving peer measures.
    let (port, sink) = peer(link, |s| bulk_recv(s).ok())?;
    runner.run(link, &["send", PEER_IP, &port.to_string(), &secs])?;
    let (bytes, took) = sink
        .join()
        .ok()
        .flatten()
        .flatten()
        .context("the sink peer failed")?;
    let up = bytes as f64 * 8.0 / took.as_secs_f64().max(1e-9) / 1e9;
    // Peer sends; the client measures.
    let (port, source) = peer(link, move |s| bulk_send(s, d).ok())?;
    let down = value(
        &runner.run(link, &["recv", PEER_IP, &port.to_string()])?,
        "gbps",
    )?;
    let _ = source.join();
    // 1-byte request/response against a kernel echo.
    let (port, echoer) = peer(link, |s| echo(s).ok())?;
    let rr = runner.run(link, &["rr", PEER_IP, &port.to_string(), &secs])?;
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
    let (native, quark) = (Runner::Native(&root), Runner::Quark(&root));
    let (q, n) = alternate(
        rounds,
        || round(&quark, &quark_link, d),
        || round(&native, &native_link, d),
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
