//! The overlay suite: pod-to-pod TCP across two nodes through qnetd against the Linux kernel's
//! own VXLAN + bridge set up the same way: nodes are namespaces on one underlay bridge, pods
//! have the overlay MTU (1450), one TCP stream. Rounds alternate the two; medians reported.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use quark_tests::overlay::{kernel_vxlan_node, two_nodes, underlay_ip};
use quark_tests::Netns;

use crate::workload::{bulk_recv, bulk_send, echo, percentile_us, ping_pong};
use crate::{alternate, figures, Column, Figure, RoundRows};

/// Two pods on two nodes, the server at `server_ip`.
struct Path {
    client: Netns,
    server: Netns,
    server_ip: &'static str,
}

fn serve<T: Send + 'static>(
    p: &Path,
    work: impl FnOnce(TcpStream) -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<(SocketAddr, thread::JoinHandle<std::io::Result<T>>)> {
    let l = p.server.enter(|| TcpListener::bind((p.server_ip, 0)))?;
    let addr = l.local_addr()?;
    let h = thread::spawn(move || {
        let (s, _) = l.accept()?;
        s.set_nodelay(true)?;
        work(s)
    });
    Ok((addr, h))
}

fn connect(p: &Path, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = p
        .client
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One round on `p`: bulk throughput (Gbit/s), then 1-byte request/response p50 and p99 (µs).
fn round(p: &Path, d: Duration) -> anyhow::Result<[f64; 3]> {
    let (addr, h) = serve(p, bulk_recv)?;
    bulk_send(connect(p, addr)?, d)?;
    let (bytes, took) = h
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let gbits = bytes as f64 * 8.0 / took.as_secs_f64() / 1e9;
    let (addr, h) = serve(p, echo)?;
    let mut rtts = ping_pong(connect(p, addr)?, d)?;
    h.join().map_err(|_| anyhow::anyhow!("echo panicked"))??;
    Ok([
        gbits,
        percentile_us(&mut rtts, 50.0),
        percentile_us(&mut rtts, 99.0),
    ])
}

/// The suite's name in reports, and its two paths (the baseline second).
pub const SUITE: &str = "overlay";
pub const PATHS: (&str, &str) = ("qnetd", "kernel vxlan");

pub fn suite(duration: f64, rounds: usize) -> anyhow::Result<Vec<Figure>> {
    let (names, (q, k)) = measure(duration, rounds)?;
    Ok(figures(&names, &q, &k))
}

/// Every round of both paths, as report rows.
pub fn rows(duration: f64, rounds: usize) -> anyhow::Result<Vec<crate::report::Row>> {
    let (names, (q, k)) = measure(duration, rounds)?;
    Ok(crate::report::paired_rows(SUITE, &names, PATHS, &q, &k))
}

/// The figures' names, and each round's [throughput, p50, p99] on qnetd and on the kernel.
fn measure(duration: f64, rounds: usize) -> anyhow::Result<([Column; 3], RoundRows<3>)> {
    quark_tests::require_env(&["bridge"]);
    let d = Duration::from_secs_f64(duration);
    let qnetd = crate::runtime::sibling("qnetd");
    let qnetd = qnetd.to_str().context("qnetd's path")?;
    let nodes = two_nodes(qnetd, "bench");
    let quark = Path {
        client: nodes.pa,
        server: nodes.pb,
        server_ip: "10.42.0.3",
    };
    let (_ka, kpa) = kernel_vxlan_node(&nodes.ul, 11, 43, underlay_ip(12), "10.43.0.2");
    let (_kb, kpb) = kernel_vxlan_node(&nodes.ul, 12, 43, underlay_ip(11), "10.43.0.3");
    let kernel = Path {
        client: kpa,
        server: kpb,
        server_ip: "10.43.0.3",
    };
    let (q, k) = alternate(rounds, || round(&quark, d), || round(&kernel, d))?;
    let names: [Column; 3] = [
        (
            "pod -> pod across nodes, bulk (1 stream)",
            "throughput",
            "Gbit/s",
        ),
        (
            "pod -> pod across nodes, tcp rr 1 byte",
            "p50 latency",
            "us",
        ),
        (
            "pod -> pod across nodes, tcp rr 1 byte",
            "p99 latency",
            "us",
        ),
    ];
    Ok((names, (q, k)))
}
