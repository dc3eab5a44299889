//! The network scenarios across runtimes: a container per runtime serving iperf3, nginx and
//! netserve in its own namespace, clients (Debian's iperf3 and wrk, and ours on kernel
//! sockets) in a peer namespace across a veth pair. Each scenario runs round by round on every
//! runtime in a rotating order, so drift falls on all alike.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use quark_tests::Netns;

use crate::containers::*;
use crate::progress::Progress;
use crate::report::{Latencies, Row};
use crate::workload::{percentile_us, ping_pong, rotation};

pub const SUITE: &str = "net";

#[derive(Clone, Copy)]
enum Kind {
    Iperf { streams: u32, reverse: bool },
    RequestResponse,
    ConnectRate,
    Udp64,
    Wrk { path: &'static str, port: u16 },
}

struct Scenario {
    name: &'static str,
    kind: Kind,
}

/// (metric, unit, higher is better) of each value a kind measures, in order.
fn metrics(kind: Kind) -> &'static [(&'static str, &'static str, bool)] {
    match kind {
        Kind::Iperf { .. } => &[("throughput", "Gbit/s", true)],
        Kind::RequestResponse => &[
            ("p50 latency", "us", false),
            ("p99 latency", "us", false),
            ("p999 latency", "us", false),
        ],
        Kind::ConnectRate => &[("connections/s", "conn/s", true)],
        Kind::Udp64 => &[("packets/s received", "kpps", true)],
        Kind::Wrk { .. } => &[("requests/s", "req/s", true), ("p99 latency", "us", false)],
    }
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "iperf3 1 stream, client -> container",
        kind: Kind::Iperf {
            streams: 1,
            reverse: false,
        },
    },
    Scenario {
        name: "iperf3 1 stream, container -> client",
        kind: Kind::Iperf {
            streams: 1,
            reverse: true,
        },
    },
    Scenario {
        name: "iperf3 4 streams, client -> container",
        kind: Kind::Iperf {
            streams: 4,
            reverse: false,
        },
    },
    Scenario {
        name: "iperf3 4 streams, container -> client",
        kind: Kind::Iperf {
            streams: 4,
            reverse: true,
        },
    },
    Scenario {
        name: "tcp request/response, 1 byte",
        kind: Kind::RequestResponse,
    },
    Scenario {
        name: "tcp connect + 1-byte exchange + close",
        kind: Kind::ConnectRate,
    },
    Scenario {
        name: "udp 64-byte datagrams, client -> container",
        kind: Kind::Udp64,
    },
    Scenario {
        name: "wrk -c50, nginx static 1 KiB",
        kind: Kind::Wrk {
            path: "/1k",
            port: HTTP_PORT,
        },
    },
    Scenario {
        name: "wrk -c50, nginx static 100 KiB",
        kind: Kind::Wrk {
            path: "/100k",
            port: HTTP_PORT,
        },
    },
    Scenario {
        name: "wrk -c50, nginx static 1 KiB through qhttp",
        kind: Kind::Wrk {
            path: "/1k",
            port: QHTTP_PORT,
        },
    },
];

impl Scenario {
    /// qhttp lives in Quark's stack: the other runtimes have nothing to measure there.
    fn applies(&self, runtime: Runtime) -> bool {
        !matches!(
            self.kind,
            Kind::Wrk {
                port: QHTTP_PORT,
                ..
            }
        ) || runtime.is_quark()
    }
}

/// One runtime's container with its namespaces; or why it could not start.
pub(crate) struct Lane {
    pub(crate) runtime: Runtime,
    pub(crate) peer: Netns,
    _container_ns: Netns,
    pub(crate) container: Option<Container>,
    pub(crate) error: Option<String>,
}

/// Starts `runtime`'s container serving nginx, iperf3 and netserve at [`CONTAINER_IP`] in a
/// namespace of its own, its clients' namespace joined by a veth; `tag` names its files.
pub(crate) fn start_lane(runtime: Runtime, root: &Root, work: &std::path::Path, tag: &str) -> Lane {
    let container_ns = Netns::new(&format!("nb{}", runtime.name()));
    let peer = Netns::new(&format!("nb{}p", runtime.name()));
    container_ns.veth_to(
        &peer,
        &format!("{CONTAINER_IP}/24"),
        &format!("{PEER_IP}/24"),
    );
    // The connection-rate client leaves a TIME_WAIT per connection: room and reuse for them.
    peer.sh("sysctl -qw net.ipv4.ip_local_port_range='1024 65000' net.ipv4.tcp_tw_reuse=1");
    let started = (|| {
        let dir = work.join(tag);
        let root = root.copy_to(&dir.join("rootfs"))?;
        let script = format!(
            "/usr/sbin/nginx & /usr/bin/iperf3 -s -p {IPERF_PORT} & exec /bin/netserve {NETSERVE_PORT}"
        );
        let bundle = Bundle::write(
            &dir,
            &root.dir,
            &["/bin/sh", "-c", &script],
            Some(&container_ns.name),
            runtime,
        )?;
        let id = format!("nb-{tag}-{}", std::process::id());
        let mut c = Container::start(runtime, &bundle, &id)?;
        // Not iperf3's port: a connection that closes at once upsets iperf3's server (it takes
        // it for a test's control connection); a tiny real test says it is ready instead.
        let mut ports = vec![HTTP_PORT, NETSERVE_PORT];
        if runtime.is_quark() {
            ports.push(QHTTP_PORT);
        }
        match c
            .wait_ready(&peer, &ports)
            .and_then(|()| iperf_ready(&mut c, &peer))
        {
            Ok(()) => Ok(c),
            Err(e) => {
                c.stop();
                Err(e)
            }
        }
    })();
    let (container, error) = match started {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(format!("container did not start: {e:#}"))),
    };
    Lane {
        runtime,
        peer,
        _container_ns: container_ns,
        container,
        error,
    }
}

/// Waits until a 1 KiB iperf3 test against the container succeeds.
fn iperf_ready(c: &mut Container, peer: &Netns) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let out = peer
            .cmd("timeout")
            .args(["5", "iperf3", "-c", &CONTAINER_IP.to_string()])
            .args(["-p", &IPERF_PORT.to_string(), "-n", "1K"])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        c.check_running()?;
        if Instant::now() >= end {
            bail!(
                "iperf3 not served after 30 s: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Values of `kind`'s metrics from one run against the lane's container, and the latency
/// samples it took, if any.
fn measure(kind: Kind, peer: &Netns, d: Duration) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    match kind {
        Kind::Iperf { streams, reverse } => Ok((vec![iperf(peer, streams, reverse, d)?], vec![])),
        Kind::RequestResponse => {
            let addr = SocketAddr::from((CONTAINER_IP, NETSERVE_PORT));
            let s = peer.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut rtts = ping_pong(s, d).context("1-byte request/response")?;
            let values = [50.0, 99.0, 99.9]
                .iter()
                .map(|p| percentile_us(&mut rtts, *p))
                .collect();
            Ok((values, rtts.iter().map(|t| t.as_secs_f64() * 1e6).collect()))
        }
        Kind::ConnectRate => Ok((vec![peer.enter(|| connect_rate(d))?], vec![])),
        Kind::Udp64 => Ok((vec![peer.enter(|| udp_rate(d))? / 1e3], vec![])),
        Kind::Wrk { path, port } => {
            let url = format!("http://{CONTAINER_IP}:{port}{path}");
            let run = crate::proxy::wrk(peer, &url, d)?;
            Ok((vec![run.rps, run.p99], vec![]))
        }
    }
}

/// Debian's iperf3 client against the container's server: the receiver's Gbit/s.
pub(crate) fn iperf(peer: &Netns, streams: u32, reverse: bool, d: Duration) -> anyhow::Result<f64> {
    let secs = d.as_secs_f64().ceil().max(1.0) as u64;
    let mut cmd = peer.cmd("timeout");
    cmd.arg((secs + 20).to_string()).args(["iperf3", "-c"]);
    cmd.arg(CONTAINER_IP.to_string())
        .args(["-p", &IPERF_PORT.to_string(), "-J", "-t", &secs.to_string()])
        .args(["-P", &streams.to_string()]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().context("running iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = report["error"].as_str() {
        bail!("iperf3: {e}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3's report has no end.sum_received")
}

/// Connections per second: connect, one byte there and back, close; over and over.
fn connect_rate(d: Duration) -> anyhow::Result<f64> {
    let addr = SocketAddr::from((CONTAINER_IP, NETSERVE_PORT));
    let start = Instant::now();
    let mut n = 0u64;
    let mut b = [1u8];
    while start.elapsed() < d {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("connection {n}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(&b)?;
        s.read_exact(&mut b)
            .with_context(|| format!("connection {n}: the answer"))?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// 64-byte datagrams sent as fast as one socket can for `d`; what the container counted, per
/// second.
fn udp_rate(d: Duration) -> anyhow::Result<f64> {
    let s = UdpSocket::bind((PEER_IP, 0))?;
    s.connect((CONTAINER_IP, NETSERVE_PORT))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let ask = |s: &UdpSocket| -> anyhow::Result<u64> {
        let mut buf = [0u8; 32];
        for _ in 0..25 {
            s.send(b"?")?;
            if let Ok(n) = s.recv(&mut buf) {
                let text = std::str::from_utf8(&buf[..n]).context("netserve's count")?;
                return text.parse().context("netserve's count");
            }
        }
        bail!("netserve did not answer for its count")
    };
    s.send(b"!")?;
    ask(&s)?;
    let payload = [0x5au8; 64];
    let start = Instant::now();
    while start.elapsed() < d {
        for _ in 0..64 {
            match s.send(&payload) {
                Ok(_) => {}
                // A full device queue drops the datagram, as it would for any sender.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let took = start.elapsed();
    // What is still queued towards the container lands before the question does.
    std::thread::sleep(Duration::from_millis(100));
    Ok(ask(&s)? as f64 / took.as_secs_f64())
}

/// At most this many latency samples per runtime are kept for the CDF (evenly spaced ranks).
const KEEP_SAMPLES: usize = 5000;

fn thin(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    let step = v.len().div_ceil(KEEP_SAMPLES).max(1);
    v.into_iter().step_by(step).collect()
}

pub fn suite(
    runtimes: &[Runtime],
    duration: f64,
    rounds: usize,
) -> anyhow::Result<(Vec<Row>, Vec<Latencies>)> {
    quark_tests::require_env(&["iperf3", "wrk", "nginx", "runc", "gcc"]);
    let d = Duration::from_secs_f64(duration);
    let work = std::env::temp_dir().join(format!("netbench-net-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    let root = Root::build(&work.join("root"))?;
    let mut lanes = Vec::new();
    for &rt in runtimes {
        eprint!("\r\x1b[2Knetbench net: starting {}", rt.name());
        lanes.push(start_lane(rt, &root, &work, rt.name()));
    }
    let steps: usize = SCENARIOS
        .iter()
        .map(|s| lanes.iter().filter(|l| s.applies(l.runtime)).count() * rounds)
        .sum();
    let mut progress = Progress::new("net", steps);
    let mut rows = Vec::new();
    let mut latencies = Vec::new();
    for (si, sc) in SCENARIOS.iter().enumerate() {
        let n = lanes.len();
        // Per lane: values per metric, latency samples, first error.
        let mut values = vec![vec![Vec::new(); metrics(sc.kind).len()]; n];
        let mut samples = vec![Vec::new(); n];
        let mut errors: Vec<Option<String>> = lanes.iter().map(|l| l.error.clone()).collect();
        for r in 0..rounds {
            for i in rotation(n, r + si) {
                let lane = &lanes[i];
                if !sc.applies(lane.runtime) || lane.container.is_none() {
                    continue;
                }
                progress.step(&format!(
                    "{} on {}, round {}/{rounds}",
                    sc.name,
                    lane.runtime.name(),
                    r + 1
                ));
                match measure(sc.kind, &lane.peer, d) {
                    Ok((v, lat)) => {
                        for (m, x) in v.into_iter().enumerate() {
                            values[i][m].push(x);
                        }
                        samples[i].extend(lat);
                    }
                    Err(e) => {
                        errors[i].get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        }
        for (i, lane) in lanes.iter().enumerate() {
            if !sc.applies(lane.runtime) {
                continue;
            }
            for (m, (metric, unit, higher)) in metrics(sc.kind).iter().enumerate() {
                rows.push(Row {
                    suite: SUITE.into(),
                    scenario: sc.name.into(),
                    metric: (*metric).into(),
                    unit: (*unit).into(),
                    higher_is_better: *higher,
                    runtime: lane.runtime.name().into(),
                    samples: std::mem::take(&mut values[i][m]),
                    error: errors[i].clone(),
                });
            }
            if !samples[i].is_empty() {
                latencies.push(Latencies {
                    suite: SUITE.into(),
                    scenario: sc.name.into(),
                    runtime: lane.runtime.name().into(),
                    us: thin(std::mem::take(&mut samples[i])),
                });
            }
        }
    }
    progress.finish();
    for lane in lanes {
        if let Some(c) = lane.container {
            c.stop();
        }
    }
    Ok((rows, latencies))
}

/// Removes a working directory when the suite ends, however it ends.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
