//! What a container costs before any traffic, on every runtime: start-to-exit time of
//! `busybox true` and the memory (PSS) an idle container (`busybox sleep`) keeps, from the same
//! bundle, runtimes taking turns.

use std::time::Duration;

use crate::containers::*;
use crate::progress::Progress;
use crate::report::Row;
use crate::scenarios::RemoveOnDrop;
use crate::workload::rotation;

pub const SUITE: &str = "startup";

fn row(metric: &str, unit: &str, scenario: &str, rt: Runtime) -> Row {
    Row {
        suite: SUITE.into(),
        scenario: scenario.into(),
        metric: metric.into(),
        unit: unit.into(),
        higher_is_better: false,
        runtime: rt.name().into(),
        samples: Vec::new(),
        error: None,
    }
}

fn record(row: &mut Row, r: anyhow::Result<f64>) {
    match r {
        Ok(v) => row.samples.push(v),
        Err(e) => {
            row.error.get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

pub fn suite(runtimes: &[Runtime], runs: usize, rounds: usize) -> anyhow::Result<Vec<Row>> {
    quark_tests::require_env(&["runc", "busybox"]);
    let work = std::env::temp_dir().join(format!("netbench-startup-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    // busybox alone: what every runtime needs to start `true` and `sleep`.
    let rootfs = work.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["dev", "proc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))?;
    for applet in ["true", "sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let bundles = |args: &[&str], tag: &str| {
        runtimes
            .iter()
            .map(|&rt| {
                Bundle::write(
                    &work.join(format!("{tag}-{}", rt.name())),
                    &rootfs,
                    args,
                    None,
                    rt,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let truths = bundles(&["/bin/true"], "true")?;
    let sleepers = bundles(&["/bin/sleep", "600"], "sleep")?;
    let n = runtimes.len();
    let mut start: Vec<Row> = runtimes
        .iter()
        .map(|&rt| row("start to exit", "ms", "busybox true", rt))
        .collect();
    let mut memory: Vec<Row> = runtimes
        .iter()
        .map(|&rt| row("PSS", "MiB", "idle container (busybox sleep)", rt))
        .collect();
    let mut progress = Progress::new("startup", n * (runs + rounds));
    for r in 0..runs {
        for i in rotation(n, r) {
            let rt = runtimes[i];
            progress.step(&format!("start of {}, {}/{runs}", rt.name(), r + 1));
            let id = format!("nbs-{}-{}-{r}", rt.name(), std::process::id());
            let took = Container::run_to_end(rt, &truths[i], &id);
            record(&mut start[i], took.map(|t| t.as_secs_f64() * 1e3));
        }
    }
    for r in 0..rounds {
        for i in rotation(n, r) {
            let rt = runtimes[i];
            progress.step(&format!("memory of {}, {}/{rounds}", rt.name(), r + 1));
            let id = format!("nbm-{}-{}-{r}", rt.name(), std::process::id());
            let pss = Container::start(rt, &sleepers[i], &id).and_then(|mut c| {
                // Settled: the runtime's start-up work is done and the process sleeps.
                std::thread::sleep(Duration::from_millis(1500));
                let pss = c.check_running().and_then(|()| tree_pss_kib(c.pid()));
                c.stop();
                Ok(pss? / 1024.0)
            });
            record(&mut memory[i], pss);
        }
    }
    progress.finish();
    Ok(start.into_iter().chain(memory).collect())
}
