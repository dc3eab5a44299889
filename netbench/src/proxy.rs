//! The proxy suite: wrk (Debian's) against one upstream HTTP server three ways in the same
//! run: through qhttp, straight through qnet without a proxy, and through Debian's nginx as a
//! reverse proxy (one worker, keep-alive to the upstream). The upstream is qnet's demo HTTP
//! server, a ring client of a qnet stack on a TAP, standing for the guest; qhttp runs on the
//! same stack, as it does inside qvisor; nginx runs on kernel sockets on the TAP's other side
//! and reaches the upstream through it. The paths take turns, in a rotating order.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use quark_tests::{start_stack_in, wait_listening, Netns, PEER_IP, STACK_IP};

use crate::progress::Progress;
use crate::report::Row;
use crate::workload::rotation;

const UPSTREAM: u16 = 80;
const QHTTP: u16 = 8080;
const NGINX: u16 = 8088;
/// wrk's connections, as the issue's comparison asks.
const CONNECTIONS: u32 = 50;

/// One wrk run: requests per second and latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
}

pub fn wrk(ns: &Netns, url: &str, d: Duration) -> anyhow::Result<Run> {
    let out = ns
        .cmd("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}")])
        .arg(format!("-d{}s", d.as_secs().max(1)))
        .args(["--timeout", "5s", "--latency", url])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk {url} failed or saw errors:\n{text}");
    }
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p50 = field("50%").and_then(wrk_us).context("no p50")?;
    let p99 = field("99%").and_then(wrk_us).context("no p99")?;
    Ok(Run { rps, p50, p99 })
}

/// wrk's durations (`812.00us`, `1.53ms`, `2.01s`) in microseconds.
fn wrk_us(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// Debian's nginx in the namespace, one worker, proxying to the upstream with keep-alive.
struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(ns: &Netns) -> anyhow::Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("netbench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = format!(
            r#"worker_processes 1;
daemon off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir};
  proxy_temp_path {dir};
  upstream guest {{ server {STACK_IP}:{UPSTREAM}; keepalive 256; }}
  server {{
    listen {PEER_IP}:{NGINX} backlog=4096;
    location / {{
      proxy_pass http://guest;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"#,
            dir = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = ns
            .cmd("nginx")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?;
        wait_listening(ns, NGINX);
        Ok(Nginx { child, dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A figure taken from each run: metric, unit, higher is better, the value.
type RunMetric = (&'static str, &'static str, bool, fn(&Run) -> f64);

/// The suite's name in reports; its baseline is nginx.
pub const SUITE: &str = "proxy";

pub fn suite(duration: f64, rounds: usize) -> anyhow::Result<Vec<Row>> {
    quark_tests::require_env(&["wrk", "nginx"]);
    let d = Duration::from_secs_f64(duration);
    let ns = Netns::new("nb-px");
    let (stack, socket) = start_stack_in(&ns, |_| {});
    let upstream = qnet_client::Client::connect(&socket)?;
    qnet::demo::http_hello(upstream, UPSTREAM)?;
    let cfg = qhttp::Config::from_json(&format!(
        r#"{{"listeners": [{{"port": {QHTTP}, "routes": [{{"upstream": {UPSTREAM}}}]}}]}}"#
    ))?;
    let proxy = qhttp::start(
        cfg,
        qnet_client::Client::connect(&socket)?,
        Some(stack.http_counters()),
    )?;
    let _nginx = Nginx::start(&ns)?;
    let url = |ip: Ipv4Addr, port: u16| format!("http://{}/", SocketAddr::from((ip, port)));
    let paths = [
        url(STACK_IP, QHTTP),
        url(STACK_IP, UPSTREAM),
        url(PEER_IP, NGINX),
    ];
    // Warm every path (pooled connections, caches) before measuring.
    for p in &paths {
        wrk(&ns, p, Duration::from_secs(1))?;
    }
    let mut runs: [Vec<Run>; 3] = Default::default();
    let mut progress = Progress::new("proxy", 3 * rounds);
    for r in 0..rounds {
        for i in rotation(3, r) {
            progress.step(&format!("{}, round {}/{rounds}", paths[i], r + 1));
            runs[i].push(wrk(&ns, &paths[i], d)?);
        }
    }
    progress.finish();
    drop(proxy);
    let names = ["qhttp", "qnet (no proxy)", "nginx"];
    let scenario = format!("wrk -c{CONNECTIONS} through a proxy to one upstream");
    let mut out = Vec::new();
    let metrics: [RunMetric; 3] = [
        ("requests/s", "req/s", true, |r| r.rps),
        ("p50 latency", "us", false, |r| r.p50),
        ("p99 latency", "us", false, |r| r.p99),
    ];
    for (metric, unit, higher_is_better, f) in metrics {
        for (i, name) in names.iter().enumerate() {
            out.push(Row {
                suite: SUITE.into(),
                scenario: scenario.clone(),
                metric: metric.into(),
                unit: unit.into(),
                higher_is_better,
                runtime: (*name).into(),
                samples: runs[i].iter().map(f).collect(),
                error: None,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations_parse() {
        assert_eq!(super::wrk_us("812.00us"), Some(812.0));
        assert_eq!(super::wrk_us("1.50ms"), Some(1500.0));
        assert_eq!(super::wrk_us("2.00s"), Some(2e6));
        assert_eq!(super::wrk_us("12"), None);
    }
}
