//! The runtime suite: what a container costs before any network traffic. Start-to-exit time
//! of `busybox true` under qvisor and under Debian's runc on the same bundle (alternating), the
//! host memory (PSS) of running containers, the cost of a guest syscall and page touch next
//! to the same program run natively, fork+exec in a shell loop, and `exec` of a process into
//! a running container.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::workload::median;
use crate::Figure;

/// A bundle whose root holds Debian's busybox and the syscall-cost program, static and
/// dynamically linked (with the host's libc and loader).
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn create(tag: &str) -> anyhow::Result<Bundle> {
        let dir = std::env::temp_dir().join(format!("netbench-{tag}-{}", std::process::id()));
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .context("copying /bin/busybox (install busybox-static)")?;
        for applet in ["sh", "true", "sleep"] {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
        build_guest("syscost", &bin)?;
        build_guest("forkcost", &bin)?;
        compile_guest("syscost", &bin.join("syscost-dyn"), &[])?; // shared libc
        for lib in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ] {
            let to = dir.join("rootfs").join(&lib[1..]);
            std::fs::create_dir_all(to.parent().context("library path")?)?;
            std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
        }
        Ok(Bundle { dir })
    }

    /// Writes config.json from `runc spec`, with these args and no terminal.
    fn set_args(&self, args: &[&str]) -> anyhow::Result<()> {
        let config = self.dir.join("config.json");
        let _ = std::fs::remove_file(&config);
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&self.dir)
            .output()
            .context("running runc spec (install runc)")?;
        if !out.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
        std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        Ok(())
    }
}

impl Bundle {
    /// Sets one annotation in config.json.
    fn annotate(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let config = self.dir.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
        spec["annotations"][key] = value.into();
        std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        Ok(())
    }
}

/// qvisor's annotation for the syscall path (qvisor::bundle::SYSCALL_POLL_ANNOTATION).
pub const POLL_ANNOTATION: &str = "dev.quark.syscall-poll";
/// qvisor's annotation for the vDSO (qvisor::bundle::VDSO_ANNOTATION).
pub const VDSO_ANNOTATION: &str = "dev.quark.vdso";
/// qvisor's annotation for syscall-site patching (qvisor::bundle::SYSCALL_PATCHING_ANNOTATION).
pub const PATCHING_ANNOTATION: &str = "dev.quark.syscall-patching";

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds `guests/NAME.c` into `bin/NAME`, static, as every runtime runs it.
pub(crate) fn build_guest(name: &str, bin: &Path) -> anyhow::Result<()> {
    compile_guest(name, &bin.join(name), &["-static"])
}

/// gcc `-O2` of `guests/NAME.c` into `out`, with `flags`.
fn compile_guest(name: &str, out: &Path, flags: &[&str]) -> anyhow::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("guests/{name}.c"));
    let built = Command::new("gcc")
        .args(flags)
        .args(["-O2", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .context("running gcc (install gcc and libc6-dev)")?;
    if !built.status.success() {
        bail!("gcc {name}: {}", String::from_utf8_lossy(&built.stderr));
    }
    Ok(())
}

/// `runsc run` of the bundle with a state root of its own.
fn gvisor_run(bundle: &Path, id: &str) -> Command {
    let state = std::env::temp_dir().join(format!("netbench-runsc-{}", std::process::id()));
    crate::containers::runsc_run(&state, bundle, id)
}

pub(crate) fn qvisor() -> PathBuf {
    sibling("qvisor")
}

/// A binary of the workspace: netbench and the others are built into the same directory.
pub(crate) fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

pub(crate) fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn pss_kib(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no Pss in smaps_rollup")
}

/// User + system CPU ticks (1/100 s) of a process.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .context("stat field")
    };
    Ok(num(11)? + num(12)?) // utime, stime (fields 14 and 15)
}

/// A running `qvisor run` of the bundle and its container's pid (the VMM process, a child of
/// `run`, which measurements look at).
struct Sleeper {
    run: Child,
    vmm: u32,
}

impl Sleeper {
    fn id(&self) -> u32 {
        self.vmm
    }

    /// Ends it: SIGKILL to the container (its init, busybox sleep, ignores SIGTERM as a
    /// container's init without a handler does); `run` then deletes it and exits.
    fn stop(mut self) {
        // SAFETY: kill(2) of the VMM process `run` started for us.
        unsafe { libc::kill(self.vmm as i32, libc::SIGKILL) };
        let _ = self.run.wait();
    }
}

fn spawn_sleeper(bundle: &Bundle, id: &str) -> anyhow::Result<Sleeper> {
    let id = format!("{id}-{}", std::process::id());
    let pid_file = bundle.dir.join(format!("{id}.pid"));
    let _ = std::fs::remove_file(&pid_file);
    let run = Command::new(qvisor())
        .args(["run", "--pid-file"])
        .arg(&pid_file)
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg(&id)
        .stdout(Stdio::null())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            return Ok(Sleeper { run, vmm: pid });
        }
        if Instant::now() >= end {
            bail!("qvisor run wrote no pid file for {id}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cost(out: &str, key: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("the guest printed no {key}: {out}"))
}

pub fn suite(runs: usize) -> anyhow::Result<Vec<Figure>> {
    let bundle = Bundle::create("rt")?;
    let mut figures = Vec::new();

    // (a) start to exit of `true`, alternating runtimes.
    bundle.set_args(&["/bin/true"])?;
    let (mut q, mut r) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprint!("\rnetbench runtime: start {}/{runs}", i + 1);
        let id = format!("nb-{}-{i}", std::process::id());
        let qv = || {
            timed(
                Command::new(qvisor())
                    .args(["run", "--bundle"])
                    .arg(&bundle.dir)
                    .arg(&id),
            )
        };
        let rc = || {
            timed(
                Command::new("runc")
                    .args(["run", "--bundle"])
                    .arg(&bundle.dir)
                    .arg(&id),
            )
        };
        if i % 2 == 0 {
            q.push(qv()?.as_secs_f64() * 1e3);
            r.push(rc()?.as_secs_f64() * 1e3);
        } else {
            r.push(rc()?.as_secs_f64() * 1e3);
            q.push(qv()?.as_secs_f64() * 1e3);
        }
    }
    eprintln!();
    let (qm, rm) = (median(&mut q), median(&mut r));
    figures.push(Figure::new(
        "busybox true, start to exit (qvisor vs runc)",
        "median wall",
        "ms",
        qm,
        rm,
    ));

    // (b) memory of running containers.
    bundle.set_args(&["/bin/sleep", "30"])?;
    let one = spawn_sleeper(&bundle, "nb-mem-1")?;
    std::thread::sleep(Duration::from_millis(500));
    let single = pss_kib(one.id())?;
    let cpu0 = cpu_ticks(one.id())?;
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu = (cpu_ticks(one.id())? - cpu0) as f64; // ticks of 10 ms over 1 s = percent
    one.stop();
    let ten = (0..10)
        .map(|i| spawn_sleeper(&bundle, &format!("nb-mem-10-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(800));
    let total: f64 = ten
        .iter()
        .map(|c| pss_kib(c.id()))
        .sum::<anyhow::Result<f64>>()?;
    for c in ten {
        c.stop();
    }
    figures.push(Figure::new(
        "idle busybox sleep container",
        "PSS (one alone)",
        "KiB",
        single,
        f64::NAN,
    ));
    figures.push(Figure::new(
        "idle busybox sleep container",
        "CPU over 1 s, % of a core",
        "%",
        idle_cpu,
        f64::NAN,
    ));
    figures.push(Figure::new(
        "idle busybox sleep container",
        "PSS each (10 running)",
        "KiB",
        total / 10.0,
        f64::NAN,
    ));

    // (c) syscall and page-touch cost, guest vs the same binary on the host: libc's getpid()
    // in a static binary (its own code: polled or trapping) and in a dynamically linked one
    // (libc's site: patched into a jump, or not).
    let calls = "2000";
    let pages = "2000";
    let on_host = |bin: &str| -> anyhow::Result<String> {
        let native = Command::new(bundle.dir.join("rootfs/bin").join(bin))
            .args([calls, pages])
            .output()?;
        Ok(String::from_utf8_lossy(&native.stdout).to_string())
    };
    let (n_static, n_dyn) = (on_host("syscost")?, on_host("syscost-dyn")?);
    for (bin, poll, patching, label) in [
        ("syscost", "on", "on", "polled, static binary"),
        ("syscost", "off", "on", "trapping, static binary"),
        ("syscost-dyn", "on", "on", "patched libc site"),
        ("syscost-dyn", "on", "off", "polled libc site, patching off"),
    ] {
        bundle.set_args(&[&format!("/bin/{bin}"), calls, pages])?;
        bundle.annotate(crate::runtime::POLL_ANNOTATION, poll)?;
        bundle.annotate(crate::runtime::PATCHING_ANNOTATION, patching)?;
        let guest = Command::new(qvisor())
            .args(["run", "--bundle"])
            .arg(&bundle.dir)
            .arg("nb-cost")
            .output()?;
        let g = String::from_utf8_lossy(&guest.stdout).to_string();
        let n = if bin == "syscost" { &n_static } else { &n_dyn };
        figures.push(Figure::new(
            &format!("getpid, {label} (qvisor guest vs host)"),
            "mean per call",
            "us",
            cost(&g, "getpid_ns")? / 1e3,
            cost(n, "getpid_ns")? / 1e3,
        ));
        if label.starts_with("patched") {
            // The same binary under gVisor (ptrace platform), for scale.
            let gv = gvisor_run(&bundle.dir, "nb-cost-gvisor").output()?;
            let gv = String::from_utf8_lossy(&gv.stdout).to_string();
            figures.push(Figure::new(
                "getpid, libc site, gVisor (runsc, ptrace) vs host",
                "mean per call",
                "us",
                cost(&gv, "getpid_ns")? / 1e3,
                cost(n, "getpid_ns")? / 1e3,
            ));
        }
        if label.starts_with("polled, static") {
            figures.push(Figure::new(
                "first touch of an anonymous page (qvisor guest vs host)",
                "mean per page",
                "us",
                cost(&g, "touch_ns")? / 1e3,
                cost(n, "touch_ns")? / 1e3,
            ));
        }
    }
    // Clock reads in the static binary: through the vDSO, and as syscalls with it off.
    bundle.set_args(&["/bin/syscost", calls, "1"])?;
    bundle.annotate(crate::runtime::POLL_ANNOTATION, "on")?;
    bundle.annotate(crate::runtime::PATCHING_ANNOTATION, "on")?;
    for (vdso, label) in [
        ("on", "through the vDSO"),
        ("off", "vDSO off, a syscall each"),
    ] {
        bundle.annotate(crate::runtime::VDSO_ANNOTATION, vdso)?;
        let guest = Command::new(qvisor())
            .args(["run", "--bundle"])
            .arg(&bundle.dir)
            .arg("nb-clock")
            .output()?;
        figures.push(Figure::new(
            &format!("clock_gettime, static binary, {label} (qvisor guest vs host)"),
            "mean per call",
            "us",
            cost(&String::from_utf8_lossy(&guest.stdout), "clock_ns")? / 1e3,
            cost(&n_static, "clock_ns")? / 1e3,
        ));
    }
    bundle.annotate(crate::runtime::VDSO_ANNOTATION, "on")?;
    figures.extend(fork_figures(&bundle)?);
    // (d) fork + exec + exit + wait in a shell loop.
    figures.extend(fork_exec_figures(&bundle)?);
    figures.push(exec_figure(&bundle, runs)?);
    Ok(figures)
}

/// (c2) fork + _exit + waitpid of a process with 1 and 64 MiB of touched memory, guest vs
/// the same binary on the host: the cost of qvisor's eager fork (every page copied) against
/// Linux's copy-on-write (page tables copied).
fn fork_figures(bundle: &Bundle) -> anyhow::Result<Vec<Figure>> {
    bundle.annotate(crate::runtime::POLL_ANNOTATION, "on")?;
    bundle.annotate(crate::runtime::PATCHING_ANNOTATION, "on")?;
    let mut figures = Vec::new();
    for mib in ["1", "64"] {
        let native = Command::new(bundle.dir.join("rootfs/bin/forkcost"))
            .args([mib, "21"])
            .output()?;
        bundle.set_args(&["/bin/forkcost", mib, "21"])?;
        let guest = Command::new(qvisor())
            .args(["run", "--bundle"])
            .arg(&bundle.dir)
            .arg("nb-fork")
            .output()?;
        let (n, g) = (
            String::from_utf8_lossy(&native.stdout).to_string(),
            String::from_utf8_lossy(&guest.stdout).to_string(),
        );
        figures.push(Figure::new(
            &format!("fork + exit + wait, {mib} MiB touched (qvisor guest vs host)"),
            "median of 21",
            "us",
            cost(&g, "fork_us")?,
            cost(&n, "fork_us")?,
        ));
    }
    Ok(figures)
}

/// (d) fork + exec + exit + wait: busybox sh running a program in a loop, runtimes in turn,
/// three rounds. busybox's `true` is static (the polled path); the dynamically linked
/// syscost (`syscost-dyn 1 1`: ld.so, libc, two calls) shows what exec costs when every new
/// process's libc sites are trapped and patched again, against the same with patching off.
fn fork_exec_figures(bundle: &Bundle) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    bundle.annotate(crate::runtime::POLL_ANNOTATION, "on")?;
    for (program, n, label) in [
        ("/bin/true", 1000, "busybox sh: /bin/true 1,000 times"),
        (
            "/bin/syscost-dyn 1 1",
            200,
            "busybox sh: a dynamically linked program 200 times",
        ),
    ] {
        bundle.set_args(&[
            "/bin/sh",
            "-c",
            &format!("i=0; while [ $i -lt {n} ]; do {program} >/dev/null; i=$((i+1)); done"),
        ])?;
        // qvisor patched, qvisor unpatched, runc, gVisor
        let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for round in 0..3 {
            eprint!(
                "\rnetbench runtime: fork+exec {program}, round {}/3",
                round + 1
            );
            for (which, t) in times.iter_mut().enumerate() {
                let id = format!("nb-fork-{}-{round}-{which}", std::process::id());
                let mut c = match which {
                    0 | 1 => {
                        let patching = if which == 0 { "on" } else { "off" };
                        bundle.annotate(crate::runtime::PATCHING_ANNOTATION, patching)?;
                        let mut c = Command::new(qvisor());
                        c.args(["run", "--bundle"]).arg(&bundle.dir).arg(&id);
                        c
                    }
                    2 => {
                        let mut c = Command::new("runc");
                        c.args(["run", "--bundle"]).arg(&bundle.dir).arg(&id);
                        c
                    }
                    _ => gvisor_run(&bundle.dir, &id),
                };
                t.push(timed(&mut c)?.as_secs_f64() * 1e6 / n as f64);
            }
        }
        eprintln!();
        let [mut patched, mut unpatched, mut runc, mut gvisor] = times;
        let runc = median(&mut runc);
        for (times, who) in [
            (&mut patched, "qvisor, patching on"),
            (&mut unpatched, "qvisor, patching off"),
            (&mut gvisor, "gVisor"),
        ] {
            figures.push(Figure::new(
                &format!("{label} (fork+exec+exit+wait), {who} vs runc"),
                "median per command",
                "us",
                median(times),
                runc,
            ));
        }
    }
    bundle.annotate(crate::runtime::PATCHING_ANNOTATION, "on")?;
    Ok(figures)
}

/// (e) `exec ID /bin/true` into a running container (busybox sleep), start to exit, each
/// runtime with a state root of its own, alternating.
fn exec_figure(bundle: &Bundle, runs: usize) -> anyhow::Result<Figure> {
    bundle.set_args(&["/bin/sleep", "600"])?;
    let id = format!("nb-exec-{}", std::process::id());
    let runtimes = [qvisor(), PathBuf::from("runc")];
    let roots: Vec<PathBuf> = ["qvisor", "runc"]
        .iter()
        .map(|n| std::env::temp_dir().join(format!("netbench-exec-{n}-{}", std::process::id())))
        .collect();
    let cmd = |rt: usize, args: &[&str]| {
        let mut c = Command::new(&runtimes[rt]);
        c.arg("--root").arg(&roots[rt]).args(args);
        c
    };
    let bundle_dir = bundle.dir.to_string_lossy().into_owned();
    let mut times = [Vec::new(), Vec::new()];
    let result = (|| {
        for (rt, runtime) in runtimes.iter().enumerate() {
            // Not through pipes: the container keeps the descriptors create gave it.
            for args in [
                &["create", "--bundle", &bundle_dir, &id][..],
                &["start", &id],
            ] {
                let status = cmd(rt, args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                if !status.success() {
                    bail!("{runtime:?} {args:?}: {status}");
                }
            }
        }
        for i in 0..runs.max(5) {
            eprint!("\rnetbench runtime: exec {}/{}", i + 1, runs.max(5));
            for (rt, t) in times.iter_mut().enumerate() {
                let took = timed(&mut cmd(rt, &["exec", &id, "/bin/true"]))?;
                t.push(took.as_secs_f64() * 1e3);
            }
        }
        eprintln!();
        Ok::<_, anyhow::Error>(())
    })();
    for (rt, root) in roots.iter().enumerate() {
        let _ = cmd(rt, &["delete", "--force", &id]).output();
        let _ = std::fs::remove_dir_all(root);
    }
    result?;
    let [mut q, mut r] = times;
    Ok(Figure::new(
        "exec /bin/true into a running container (start to exit)",
        "median",
        "ms",
        median(&mut q),
        median(&mut r),
    ))
}
