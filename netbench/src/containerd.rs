//! The containerd suite: `ctr run --rm busybox echo hi` through containerd's runc shim with
//! runc and with qvisor as the runtime binary, alternating run by run on one daemon; the
//! median wall time of each and their ratio.

use std::process::Command;

use anyhow::Context;
use quark_tests::containerd::{Containerd, BUSYBOX_IMAGE};

use crate::runtime::{qvisor, timed};
use crate::workload::median;
use crate::Figure;

pub fn suite(runs: usize) -> anyhow::Result<Vec<Figure>> {
    let c = Containerd::start("nb")?;
    c.import_busybox()?;
    let qvisor = qvisor();
    let runtimes = [c.runtime_args(None), c.runtime_args(Some(&qvisor))];
    let run = |rt: &[String], id: &str| {
        let mut args: Vec<&str> = vec!["run", "--rm"];
        args.extend(rt.iter().map(String::as_str));
        args.extend([BUSYBOX_IMAGE, id, "echo", "hi"]);
        let mut cmd: Command = c.command(&args);
        timed(&mut cmd).with_context(|| format!("ctr {args:?}"))
    };
    // One unmeasured run each: the snapshot and the shim binaries are cold at first.
    run(&runtimes[0], "nb-warm-runc")?;
    run(&runtimes[1], "nb-warm-qvisor")?;
    let (mut r, mut q) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprint!("\rnetbench containerd: run {}/{runs}", i + 1);
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let took = run(&runtimes[which], &format!("nb-{which}-{i}"))?;
            [&mut r, &mut q][which].push(took.as_secs_f64() * 1e3);
        }
    }
    eprintln!();
    Ok(vec![Figure::new(
        "ctr run --rm busybox echo hi (qvisor vs runc shim binary)",
        "median wall",
        "ms",
        median(&mut q),
        median(&mut r),
    )])
}
