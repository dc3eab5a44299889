//! netbench: measures Quark next to the Linux kernel and peer runtimes, in the same run.
//!
//! `netbench all` is the harness: the network scenarios (iperf3, request/response, connection
//! rate, UDP packet rate, wrk against nginx and through qhttp) on every runtime (native, runc,
//! Quark, gVisor), what a container costs to start and keep, and qhttp against nginx as a
//! proxy; runtimes take turns round by round, and the report gives medians with min/max and
//! ratios to the baseline (`--json`, `--out DIR` for raw runs, Markdown and SVG plots). The
//! other subcommands are single suites, each against its own baseline.

mod cni;
mod containerd;
mod containers;
mod flood;
mod guest;
mod overlay;
mod plot;
mod progress;
mod proxy;
mod report;
mod runtime;
mod scenarios;
mod startup;
mod workload;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;

use quark_tests::{start_stack_in, Netns, PEER_IP, STACK_IP};
use workload::*;

#[derive(Parser)]
#[command(
    name = "netbench",
    about = "Quark network benchmarks against the Linux kernel"
)]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Subcommand)]
enum Suite {
    /// qnet host client through a TAP vs kernel sockets across a veth pair.
    Qnet(Opts),
    /// A program in a Quark container (qkernel sockets over qnet) vs the same program run
    /// natively behind a veth pair.
    Guest(Rounds),
    /// Pod to pod across two nodes: qnetd's VXLAN overlay vs the kernel's VXLAN + bridge.
    Overlay(Rounds),
    /// A program in a qnetd VPC pod talking to a pod on another node: in a Quark container on
    /// a TAP endpoint and on a ring endpoint, vs natively in a pod on a TAP endpoint.
    Vpc(Rounds),
    /// A container's throughput and latency while a kernel peer floods its neighbour
    /// container with SYNs and UDP, against rounds without the flood.
    Flood {
        #[command(flatten)]
        rounds: Rounds,
        /// The runtime of both containers (quark, runc, ...).
        #[arg(long, default_value = "quark")]
        runtime: String,
        /// pinned: the bystander on core 0, the flooded container and the generators on
        /// core 1; shared: everything on both cores.
        #[arg(long, value_enum, default_value = "pinned")]
        layout: flood::Layout,
    },
    /// The whole harness: the network scenarios and start-up on every runtime, and the proxy
    /// suite, in one report (about 10 minutes with the defaults).
    All(Harness),
    /// The network scenarios on every runtime: iperf3 1 and 4 streams both ways, 1-byte
    /// request/response, connection rate, 64-byte UDP, wrk against nginx and through qhttp.
    Net(Harness),
    /// Start-to-exit of `busybox true` and idle memory on every runtime.
    Startup(Harness),
    /// wrk through qhttp, straight through qnet, and through nginx as reverse proxy, against
    /// one upstream in the same run (ratios against nginx).
    Proxy(Harness),
    /// qnet-cni's ptp mode vs Debian's reference ptp plugin: ADD+DEL wall time.
    Cni {
        /// ADD+DEL cycles per plugin (medians are reported).
        #[arg(long, default_value_t = 50)]
        cycles: usize,
        /// One JSON object per figure instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// `ctr run --rm` through containerd's runc shim: qvisor vs runc as the runtime binary.
    Containerd {
        /// Runs per runtime (medians are reported).
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// One JSON object per figure instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Container start time (qvisor vs runc), idle memory, guest syscall and fault cost.
    Runtime {
        /// Start-time samples per runtime.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// One JSON object per figure instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Options of the multi-runtime harness.
#[derive(clap::Args)]
struct Harness {
    /// Seconds per scenario per round.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Rounds: every runtime runs every scenario once a round (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Start-to-exit samples per runtime.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// The runtimes to compare, comma-separated; the first is the baseline.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "native,runc,quark,quark-nopatch,gvisor,gvisor-host"
    )]
    runtimes: Vec<String>,
    /// One JSON object per row (median, min, max, ratio) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the raw runs (raw.json), a Markdown report (report.md) and SVG plots here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

impl Harness {
    /// Runs the suites `which` asks for into one report, then prints and writes it.
    fn run(&self, which: &str) -> anyhow::Result<()> {
        let runtimes = self
            .runtimes
            .iter()
            .map(|r| containers::Runtime::parse(r))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let baseline = runtimes.first().context("--runtimes is empty")?.name();
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let mut report = report::Report::new(command);
        if matches!(which, "all" | "net") {
            let (rows, lat) = scenarios::suite(&runtimes, self.duration, self.rounds)?;
            report.add_suite(scenarios::SUITE, baseline, rows, lat);
        }
        if matches!(which, "all" | "startup") {
            let rows = startup::suite(&runtimes, self.runs, self.rounds)?;
            report.add_suite(startup::SUITE, baseline, rows, vec![]);
        }
        if which != "proxy" {
            report
                .notes
                .extend(containers::NOTES.iter().map(|n| n.to_string()));
        }
        if which == "all" {
            let rows = overlay::rows(self.duration, self.rounds)?;
            report.add_suite(overlay::SUITE, overlay::PATHS.1, rows, vec![]);
            report.notes.push(
                "overlay: pod to pod across two nodes (namespaces joined by an underlay veth), \
                 qnetd's VXLAN against the kernel's VXLAN and bridge"
                    .into(),
            );
            let rows = flood::rows(self.duration, self.rounds)?;
            report.add_suite(flood::SUITE, flood::PATHS.1, rows, vec![]);
            report.notes.push(
                "flood: two Quark containers side by side; hping3 (20,000 SYN/s, random \
                 sources) and iperf3 -u (100 Mbit/s of 64-byte datagrams) at one, which has a \
                 CPU limit of half a core, the other measured, against rounds without the flood; \
                 the bystander and its clients on core 0, the flooded one and the generators on \
                 core 1"
                    .into(),
            );
        }
        if matches!(which, "all" | "proxy") {
            let rows = proxy::suite(self.duration, self.rounds)?;
            report.add_suite(proxy::SUITE, "nginx", rows, vec![]);
            report.notes.push(
                "proxy: one upstream (qnet's demo HTTP server on a TAP) reached through qhttp in the \
                 same stack, straight through qnet, and through Debian's nginx (one worker, \
                 keep-alive) on kernel sockets"
                    .into(),
            );
        }
        if self.json {
            print!("{}", report.json_lines()?);
        } else {
            print!("{}", report.table());
        }
        if let Some(dir) = &self.out {
            report.write_dir(dir)?;
            eprintln!(
                "netbench: wrote {}/report.md, raw.json and plots",
                dir.display()
            );
        }
        Ok(())
    }
}

/// Timed cases run in alternating rounds on both paths.
#[derive(clap::Args)]
struct Rounds {
    /// Seconds per case per round.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Rounds (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// One JSON object per figure instead of a table.
    #[arg(long)]
    json: bool,
}

impl Rounds {
    fn report(&self, figures: &[Figure], what: &str, columns: (&str, &str)) -> anyhow::Result<()> {
        let title = format!(
            "{what}; medians of {} rounds of {:.1} s",
            self.rounds, self.duration
        );
        report(figures, self.json, &title, columns)
    }
}

#[derive(Parser, Clone)]
struct Opts {
    /// Seconds per case per round.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Rounds (each runs every case on both paths; medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// One JSON object per figure instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure only qnet, for profiling (no baseline, so no ratios).
    #[arg(long)]
    qnet_only: bool,
    /// qnet's TCP buffer per socket and direction, in bytes (default: the stack's).
    #[arg(long)]
    tcp_buf: Option<usize>,
    /// qnet's receive ring per socket, in bytes (a power of two; it is the TCP window).
    #[arg(long)]
    ring_rx_buf: Option<u32>,
    /// qnet's transmit ring per socket, in bytes (a power of two).
    #[arg(long)]
    ring_tx_buf: Option<u32>,
    /// qnet's delayed-ACK timeout in microseconds (0: acknowledge every segment at once).
    #[arg(long)]
    ack_delay_us: Option<u64>,
    /// How long qnet's loop keeps polling after its last work before it sleeps, in
    /// microseconds (0: sleep at once)
    #[arg(long)]
    busy_poll_us: Option<u64>,
}

/// One reported figure: Quark's value next to the baseline measured in the same run.
#[derive(Serialize)]
struct Figure {
    scenario: String,
    metric: String,
    unit: String,
    value: f64,
    baseline: f64,
    ratio: f64,
}

impl Figure {
    fn new(scenario: &str, metric: &str, unit: &str, value: f64, baseline: f64) -> Figure {
        Figure {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            value,
            baseline,
            ratio: value / baseline,
        }
    }
}

/// Prints figures as JSON lines or as a table under `title`.
/// What a suite names a column of its rounds: scenario, metric, unit.
pub(crate) type Column = (&'static str, &'static str, &'static str);

/// Runs `rounds` rounds of the subject path and the baseline alternately, each going first
/// equally often; every round's figures for each.
pub(crate) type RoundRows<const N: usize> = (Vec<[f64; N]>, Vec<[f64; N]>);
fn alternate<const N: usize>(
    rounds: usize,
    mut subject: impl FnMut() -> anyhow::Result<[f64; N]>,
    mut baseline: impl FnMut() -> anyhow::Result<[f64; N]>,
) -> anyhow::Result<RoundRows<N>> {
    let (mut s, mut b) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        eprint!("\rnetbench: round {}/{rounds}", r + 1);
        if r % 2 == 0 {
            s.push(subject()?);
            b.push(baseline()?);
        } else {
            b.push(baseline()?);
            s.push(subject()?);
        }
    }
    eprintln!();
    Ok((s, b))
}

/// One figure per column: the medians of the subject's and the baseline's rounds.
fn figures<const N: usize>(
    columns: &[Column; N],
    subject: &[[f64; N]],
    baseline: &[[f64; N]],
) -> Vec<Figure> {
    let col =
        |rows: &[[f64; N]], i: usize| median(&mut rows.iter().map(|r| r[i]).collect::<Vec<_>>());
    columns
        .iter()
        .enumerate()
        .map(|(i, (scenario, metric, unit))| {
            Figure::new(scenario, metric, unit, col(subject, i), col(baseline, i))
        })
        .collect()
}

fn report(
    figures: &[Figure],
    json: bool,
    title: &str,
    columns: (&str, &str),
) -> anyhow::Result<()> {
    if json {
        for f in figures {
            println!("{}", serde_json::to_string(f)?);
        }
        return Ok(());
    }
    println!("{title}");
    println!(
        "{:<56} {:<22} {:>10} {:>10} {:>8}",
        "scenario", "metric", columns.0, columns.1, "ratio"
    );
    for f in figures {
        println!(
            "{:<56} {:<22} {:>10.2} {:>10.2} {:>7.2}x   ({})",
            f.scenario, f.metric, f.value, f.baseline, f.ratio, f.unit
        );
    }
    Ok(())
}

const PORT: u16 = 5201;
const VETH_A: &str = "10.88.0.1";
const VETH_B: &str = "10.88.0.2";

/// A connected pair of streams: the subject end (measured path) and the peer end.
trait Path {
    type Subject: std::io::Read + std::io::Write + Send + 'static;
    /// Connects a fresh pair with TCP_NODELAY set on both ends.
    fn pair(&self) -> anyhow::Result<(Self::Subject, TcpStream)>;
}

/// Kernel sockets: subject in namespace A, peer in namespace B, across a veth pair.
struct KernelPath {
    a: Netns,
    b: Netns,
}

impl Path for KernelPath {
    type Subject = TcpStream;
    fn pair(&self) -> anyhow::Result<(TcpStream, TcpStream)> {
        let listener = self.a.enter(|| TcpListener::bind((VETH_A, 0)))?;
        let addr = listener.local_addr()?;
        let peer = self.b.enter(|| TcpStream::connect(addr))?;
        let (subject, _) = listener.accept()?;
        subject.set_nodelay(true)?;
        peer.set_nodelay(true)?;
        Ok((subject, peer))
    }
}

/// qnet: subject is a ring client of a stack on a TAP; peer is a kernel socket in the TAP's
/// namespace.
struct QnetPath {
    ns: Netns,
    client: qnet_client::Client,
    listener: qnet_client::TcpListener,
}

impl Path for QnetPath {
    type Subject = qnet_client::TcpStream;
    fn pair(&self) -> anyhow::Result<(qnet_client::TcpStream, TcpStream)> {
        let target = SocketAddr::from((STACK_IP, PORT));
        let _ = &self.client;
        let peer = self.ns.enter(|| TcpStream::connect(target))?;
        let (subject, _) = self.listener.accept()?;
        subject.set_nodelay(true)?;
        peer.set_nodelay(true)?;
        Ok((subject, peer))
    }
}

/// Throughput (Gbit/s) of `sender` -> `receiver` for `d`.
fn bulk<W, R>(sender: W, receiver: R, d: Duration) -> anyhow::Result<f64>
where
    W: std::io::Write + Send + 'static,
    R: std::io::Read + Send + 'static,
{
    let rx = thread::spawn(move || bulk_recv(receiver));
    bulk_send(sender, d).context("sending")?;
    let (bytes, secs) = rx
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    Ok(bytes as f64 * 8.0 / secs.as_secs_f64().max(1e-9) / 1e9)
}

/// One round of every case on one path: [rx Gbit/s, tx Gbit/s, p50 µs, p99 µs].
fn round<P: Path>(path: &P, d: Duration) -> anyhow::Result<[f64; 4]> {
    let (subject, peer) = path.pair()?;
    let rx = bulk(peer, subject, d).context("bulk peer -> subject")?;
    let (subject, peer) = path.pair()?;
    let tx = bulk(subject, peer, d).context("bulk subject -> peer")?;
    let (subject, peer) = path.pair()?;
    let echo = thread::spawn(move || echo(peer));
    let mut rtts = ping_pong(subject, d).context("ping-pong")?;
    let _ = echo.join();
    Ok([
        rx,
        tx,
        percentile_us(&mut rtts, 50.0),
        percentile_us(&mut rtts, 99.0),
    ])
}

fn qnet_suite(o: &Opts) -> anyhow::Result<()> {
    quark_tests::require_env(&[]);
    let d = Duration::from_secs_f64(o.duration);
    let a = Netns::new("nb-a");
    let b = Netns::new("nb-b");
    a.veth_to(&b, &format!("{VETH_A}/24"), &format!("{VETH_B}/24"));
    let kernel = KernelPath { a, b };

    let ns = Netns::new("nb-q");
    let (_stack, socket) = start_stack_in(&ns, |c| {
        if let Some(b) = o.tcp_buf {
            c.tcp_rx_buf = b;
            c.tcp_tx_buf = b;
        }
        if let Some(us) = o.ack_delay_us {
            c.ack_delay = Duration::from_micros(us);
        }
        if let Some(us) = o.busy_poll_us {
            c.busy_poll = Duration::from_micros(us);
        }
        if o.ring_rx_buf.is_some() || o.ring_tx_buf.is_some() {
            c.ring_rx_buf = o.ring_rx_buf.unwrap_or(c.ring_rx_buf);
            c.ring_tx_buf = o.ring_tx_buf.unwrap_or(c.ring_tx_buf);
            c.ring_slots = 256;
        }
    });
    let client = qnet_client::Client::connect(&socket)?;
    let listener =
        qnet_client::TcpListener::bind(&client, SocketAddr::from(([0, 0, 0, 0], PORT)), 128)?;
    let qnet = QnetPath {
        ns,
        client,
        listener,
    };

    let mut k: Vec<[f64; 4]> = Vec::new();
    let mut q: Vec<[f64; 4]> = Vec::new();
    for r in 0..o.rounds {
        eprint!("\rnetbench: round {}/{}", r + 1, o.rounds);
        // A B A B ... then B A B A: each path goes first equally often.
        if o.qnet_only {
            q.push(round(&qnet, d)?);
            k.push([f64::NAN; 4]);
        } else if r % 2 == 0 {
            k.push(round(&kernel, d)?);
            q.push(round(&qnet, d)?);
        } else {
            q.push(round(&qnet, d)?);
            k.push(round(&kernel, d)?);
        }
    }
    eprintln!();
    let names: [Column; 4] = [
        (
            "bulk kernel peer -> subject (1 stream)",
            "throughput",
            "Gbit/s",
        ),
        (
            "bulk subject -> kernel peer (1 stream)",
            "throughput",
            "Gbit/s",
        ),
        ("tcp request/response 1 byte", "p50 latency", "us"),
        ("tcp request/response 1 byte", "p99 latency", "us"),
    ];
    let figures = figures(&names, &q, &k);
    report(
        &figures,
        o.json,
        &format!(
            "qnet (ring client -> qnet -> TAP) vs kernel (veth between namespaces); medians of {} rounds of {:.1} s",
            o.rounds, o.duration
        ),
        ("qnet", "kernel"),
    )?;
    if !o.json {
        println!("subject = the measured end (qnet ring client | kernel socket in ns A); peer = kernel socket at {PEER_IP} | {VETH_B}");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.suite {
        Suite::Qnet(o) => qnet_suite(&o),
        Suite::Guest(r) => guest::suite(r.duration, r.rounds).and_then(|f| {
            r.report(
                &f,
                "guest (qvisor, pod interface taken over by qnet) vs native (veth between namespaces)",
                ("quark", "native"),
            )
        }),
        Suite::Vpc(r) => guest::vpc_suite(r.duration, r.rounds).and_then(|f| {
            r.report(
                &f,
                "a program in a qnetd VPC pod -> a kernel pod on another node: quark (TAP or ring endpoint) vs native (TAP endpoint)",
                ("quark", "native"),
            )
        }),
        Suite::Overlay(r) => overlay::suite(r.duration, r.rounds).and_then(|f| {
            r.report(
                &f,
                "qnetd overlay vs kernel VXLAN + bridge, nodes and pods as namespaces",
                ("qnetd", "kernel"),
            )
        }),
        Suite::Flood {
            rounds: r,
            runtime,
            layout,
        } => containers::Runtime::parse(&runtime)
            .and_then(|rt| flood::suite(rt, layout, r.duration, r.rounds))
            .and_then(|f| {
                r.report(
                    &f,
                    &format!(
                        "a {runtime} container while its neighbour is flooded vs quiet ({layout:?} cores)"
                    ),
                    ("flooded", "quiet"),
                )
            }),
        Suite::All(h) => h.run("all"),
        Suite::Net(h) => h.run("net"),
        Suite::Startup(h) => h.run("startup"),
        Suite::Proxy(h) => h.run("proxy"),
        Suite::Cni { cycles, json } => cni::suite(cycles).and_then(|f| {
            report(
                &f,
                json,
                &format!("qnet-cni vs the reference ptp plugin; medians of {cycles} cycles"),
                ("qnet-cni", "ptp"),
            )
        }),
        Suite::Containerd { runs, json } => containerd::suite(runs).and_then(|f| {
            report(
                &f,
                json,
                &format!("containerd {runs} runs each, alternating; medians"),
                ("qvisor", "runc"),
            )
        }),
        Suite::Runtime { runs, json } => runtime::suite(runs).and_then(|f| {
            report(
                &f,
                json,
                &format!(
                    "qvisor vs the baseline named in each row; start times are medians of {runs}"
                ),
                ("quark", "baseline"),
            )
        }),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netbench: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
