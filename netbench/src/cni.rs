//! The CNI suite: wall time of one ADD and the DEL after it, qnet-cni's ptp mode against
//! Debian's reference ptp plugin on the same configuration (host-local IPAM), alternating, in
//! pod namespaces of their own.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use quark_tests::Netns;

use crate::workload::median;
use crate::Figure;

const CNI_DIR: &str = "/usr/lib/cni";

/// Runs one plugin command as a runtime does; returns its wall time.
fn call(
    plugin: &Path,
    command: &str,
    pod: &Netns,
    id: &str,
    conf: &str,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{}", pod.name))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("plugin stdin")?
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command}: {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(took)
}

pub fn suite(cycles: usize) -> anyhow::Result<Vec<Figure>> {
    quark_tests::require_env(&[]);
    let ours = crate::runtime::sibling("qnet-cni");
    let theirs = Path::new(CNI_DIR).join("ptp");
    if !theirs.exists() {
        bail!(
            "{} is missing (install containernetworking-plugins)",
            theirs.display()
        );
    }
    let data = std::env::temp_dir().join(format!("netbench-cni-{}", std::process::id()));
    let conf = |ty: &str| {
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "netbench", "type": ty, "mode": "ptp",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.82.0.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data},
        })
        .to_string()
    };
    let (conf_ours, conf_theirs) = (conf("qnet-cni"), conf("ptp"));
    let pod = Netns::new("nb-cni");
    let (mut q, mut r) = (Vec::new(), Vec::new());
    for i in 0..cycles {
        eprint!("\rnetbench: cycle {}/{cycles}", i + 1);
        let id = format!("nb{i}");
        let cycle = |plugin: &Path, conf: &str| -> anyhow::Result<f64> {
            let add = call(plugin, "ADD", &pod, &id, conf)?;
            let del = call(plugin, "DEL", &pod, &id, conf)?;
            Ok((add + del).as_secs_f64() * 1000.0)
        };
        if i % 2 == 0 {
            q.push(cycle(&ours, &conf_ours)?);
            r.push(cycle(&theirs, &conf_theirs)?);
        } else {
            r.push(cycle(&theirs, &conf_theirs)?);
            q.push(cycle(&ours, &conf_ours)?);
        }
    }
    eprintln!();
    let _ = std::fs::remove_dir_all(&data);
    Ok(vec![Figure::new(
        "ptp pod: ADD then DEL (host-local IPAM)",
        "median wall",
        "ms",
        median(&mut q),
        median(&mut r),
    )])
}
