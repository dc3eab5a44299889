//! The OCI runtime command line, runc's contract: what containerd's runc shim, Docker and a
//! user at a shell drive. `create` starts the VMM process (the container's pid), which boots
//! the VM and waits on an exec fifo; `start` opens the fifo and the app runs; the VMM's exit
//! status is the container's. State lives in [`state`] under `--root`.

pub mod cgroup;
pub mod console;
pub mod exec;
pub mod hooks;
pub mod log;
pub mod state;

use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use cgroup::Cgroup;
use hooks::Point;
use state::{process_state, Container, Record, Status, Store};

/// Options every command takes (runc's global flags).
#[derive(Debug, Clone)]
pub struct Global {
    pub root: PathBuf,
    pub log: Option<PathBuf>,
    pub log_json: bool,
    pub debug: bool,
    pub systemd_cgroup: bool,
}

impl Global {
    fn store(&self) -> Store {
        Store::new(&self.root)
    }

    /// The flags again, for the VMM process.
    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--root".into(), self.root.clone().into()];
        if let Some(log) = &self.log {
            a.extend(["--log".into(), log.clone().into()]);
        }
        a.extend([
            "--log-format".into(),
            if self.log_json { "json" } else { "text" }.into(),
        ]);
        if self.debug {
            a.push("--debug".into());
        }
        if self.systemd_cgroup {
            a.push("--systemd-cgroup".into());
        }
        a
    }
}

/// `create`'s (and `run`'s) options.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// What the VMM tells `create` once the VM is booted, as one JSON line on the sync pipe.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    Ready { cgroup: Option<Cgroup> },
    Failed { error: String },
}

fn state_json(record: &Record, status: Status) -> Vec<u8> {
    serde_json::to_vec(&record.oci_state(status)).unwrap_or_default()
}

/// Waits (up to `limit`) until the container's process has exited.
fn wait_gone(record: &Record, limit: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while process_state(record.pid, record.pid_start).is_some() {
        if Instant::now() >= end {
            bail!("container process {} did not exit", record.pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn signal(record: &Record, sig: i32) -> anyhow::Result<()> {
    // SAFETY: kill with a pid we checked is the container's (start time matches).
    if unsafe { libc::kill(record.pid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            bail!("container not running");
        }
        return Err(e).context("kill");
    }
    Ok(())
}

/// `create`: boots the container's VM in a new VMM process, which waits for `start`.
pub fn create(g: &Global, id: &str, opts: &CreateOptions) -> anyhow::Result<()> {
    create_child(g, id, opts).map(drop)
}

/// `create`, giving back the VMM process (which `run` waits for).
fn create_child(g: &Global, id: &str, opts: &CreateOptions) -> anyhow::Result<Child> {
    state::check_id(id)?;
    let bundle = std::fs::canonicalize(&opts.bundle)
        .with_context(|| format!("bundle {}", opts.bundle.display()))?;
    // Read before anything is made, so a broken bundle fails with nothing to clean up.
    let (spec, launch) = crate::bundle::read(&bundle)?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal && opts.console_socket.is_none() {
        bail!("cannot allocate tty if runc will detach without setting console socket");
    }
    if !terminal && opts.console_socket.is_some() {
        bail!("cannot use console socket if runc will not detach or allocate tty");
    }
    let container = g.store().create(id)?;
    let made = (|| {
        container.make_exec_fifo()?;
        let child = spawn_vmm(g, id, &bundle, opts.console_socket.as_deref(), &container)?;
        let record = Record {
            id: id.into(),
            bundle: bundle.clone(),
            rootfs: launch.root.clone(),
            pid: child.0.id() as i32,
            pid_start: state::start_time(child.0.id() as i32).unwrap_or(0),
            created: log::rfc3339(SystemTime::now()),
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: child.1,
            hooks: spec.hooks().clone(),
        };
        Ok::<_, anyhow::Error>((child.0, record))
    })();
    let (mut child, record) = match made {
        Ok(v) => v,
        Err(e) => {
            let _ = container.destroy();
            return Err(e);
        }
    };
    let finish = (|| {
        container.write(&record)?;
        let json = state_json(&record, Status::Created);
        hooks::run(record.hooks.as_ref(), Point::CreateRuntime, &json)?;
        hooks::run(record.hooks.as_ref(), Point::CreateContainer, &json)?;
        if let Some(pid_file) = &opts.pid_file {
            state::write_atomically(pid_file, record.pid.to_string().as_bytes(), 0o644)?;
        }
        Ok::<_, anyhow::Error>(())
    })();
    if let Err(e) = finish {
        let _ = child.kill();
        let _ = child.wait();
        if let Some(cg) = &record.cgroup {
            let _ = cg.remove();
        }
        let _ = container.destroy();
        return Err(e);
    }
    tracing::info!(id, pid = record.pid, "container created");
    Ok(child)
}

/// Starts qvisor itself in `dir` with the global options and the arguments `args` adds (given
/// the number of a sync pipe's write end, which the child inherits), and reads the first line
/// the child writes on it (empty if it closes it without one).
fn spawn_self(
    g: &Global,
    dir: &Path,
    args: impl FnOnce(&mut Command, i32),
) -> anyhow::Result<(Child, String)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, which we own from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: fresh descriptors from pipe2.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().context("finding qvisor's own binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(g.args());
    args(&mut cmd, tx.as_raw_fd());
    cmd.current_dir(dir);
    let sync = tx.as_raw_fd();
    // SAFETY: between fork and exec only fcntl, which is async-signal-safe, clearing
    // close-on-exec on the sync pipe so the child inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(sync, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(tx);
    let mut line = String::new();
    let _ = std::io::BufReader::new(std::fs::File::from(rx)).read_line(&mut line);
    Ok((child, line))
}

/// Starts the VMM process (`qvisor vmm`) and waits for its report that the VM is booted.
fn spawn_vmm(
    g: &Global,
    id: &str,
    bundle: &Path,
    console_socket: Option<&Path>,
    container: &Container,
) -> anyhow::Result<(Child, Option<Cgroup>)> {
    let (mut child, line) = spawn_self(g, container.dir(), |cmd, sync_fd| {
        cmd.arg("vmm")
            .arg("--bundle")
            .arg(bundle)
            .arg("--sync-fd")
            .arg(sync_fd.to_string());
        if let Some(s) = console_socket {
            cmd.arg("--console-socket").arg(s);
        }
        cmd.arg(id);
    })
    .context("starting the VMM process")?;
    match serde_json::from_str::<Report>(line.trim()) {
        Ok(Report::Ready { cgroup }) => Ok((child, cgroup)),
        Ok(Report::Failed { error }) => {
            let _ = child.wait();
            bail!("{error}")
        }
        Err(_) => {
            let status = child.wait()?;
            bail!("the VMM process exited before the container was created ({status})")
        }
    }
}

/// The VMM process: boots the VM, reports to `create`, waits for `start`, runs the app, and
/// exits with the app's status. Returns that status.
pub fn vmm(
    g: &Global,
    id: &str,
    bundle: &Path,
    sync_fd: i32,
    console_socket: Option<&Path>,
) -> i32 {
    // SAFETY: the descriptor number `create` passed us, ours alone from here.
    let mut sync = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(sync_fd) });
    // Stop signals from here on end the container cleanly, even before `start`.
    crate::vm::install_stop_signals();
    let booted = (|| {
        if let Some(socket) = console_socket {
            console::attach(socket)?;
        }
        let (spec, launch) = crate::bundle::read(bundle)?;
        let linux = spec.linux().as_ref();
        let cgroup = match linux.and_then(|l| l.cgroups_path().as_ref()) {
            Some(path) => Some(
                Cgroup::create(
                    &path.to_string_lossy(),
                    g.systemd_cgroup,
                    linux.and_then(|l| l.resources().as_ref()),
                    launch.memory,
                    std::process::id() as i32,
                )
                .context("setting up the container's cgroup")?,
            ),
            None => None,
        };
        let booted = crate::boot(&launch).inspect_err(|_| {
            if let Some(cg) = &cgroup {
                let _ = cg.remove();
            }
        })?;
        Ok::<_, anyhow::Error>((booted, cgroup, spec))
    })();
    let report = match &booted {
        Ok((_, cgroup, _)) => Report::Ready {
            cgroup: cgroup.clone(),
        },
        Err(e) => Report::Failed {
            error: format!("{e:#}"),
        },
    };
    let _ = writeln!(
        sync,
        "{}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    drop(sync);
    let Ok((mut booted, _, spec)) = booted else {
        return 1;
    };
    if let Err(e) = wait_for_start() {
        tracing::info!("{e:#}");
        return crate::vm::stop_signal().map_or(1, |s| 128 + s);
    }
    // Signals from the runtime's `kill` now go to the app's init (wait_for_start turned that
    // on; SIGKILL still ends the VMM at once).
    let record = Record {
        id: id.into(),
        bundle: bundle.into(),
        rootfs: PathBuf::new(),
        pid: std::process::id() as i32,
        pid_start: 0,
        created: String::new(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        cgroup: None,
        hooks: None,
    };
    let json = state_json(&record, Status::Running);
    if let Err(e) = hooks::run(spec.hooks().as_ref(), Point::StartContainer, &json)
        .and_then(|()| booted.adopt_configured_interface())
        .and_then(|()| booted.serve_exec(Path::new(crate::exec::SOCKET)))
    {
        tracing::error!("{e:#}");
        eprintln!("qvisor: {e:#}");
        return 1;
    }
    match booted.run() {
        Ok(stop) => {
            if let crate::Stop::Killed { reason, .. } = &stop {
                tracing::info!(id, "container killed: {reason}");
            }
            stop.status()
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("qvisor: {e:#}");
            1
        }
    }
}

/// Blocks on the exec fifo (in the working directory, the container's state directory) until
/// `start` opens it, and turns signal forwarding on; fails if a stop signal comes first.
fn wait_for_start() -> anyhow::Result<()> {
    // The signals end the wait (EINTR) on this thread alone; held again after it.
    crate::vm::take_process_signals();
    let waited = wait_on_exec_fifo();
    crate::vm::hold_process_signals();
    waited
}

fn wait_on_exec_fifo() -> anyhow::Result<()> {
    loop {
        // SAFETY: open with a NUL-terminated path; blocks until a reader opens the fifo.
        let fd = unsafe { libc::open(c"exec.fifo".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor we own.
            let mut fifo = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            // `start` reads this byte before it removes the fifo, which makes the container
            // "running": from then on `kill` must reach the app's init, so forwarding starts
            // now, not once this process is scheduled again.
            crate::vm::forward_signals();
            fifo.write_all(b"0").context("writing the exec fifo")?;
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e).context("opening the exec fifo");
        }
        if let Some(sig) = crate::vm::stop_signal() {
            bail!("stopped by signal {sig} before start");
        }
    }
}

/// `start`: lets the created container's app run.
pub fn start(g: &Global, id: &str) -> anyhow::Result<()> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    match container.status(&record) {
        Status::Created => {}
        Status::Stopped => bail!("cannot start a container that has stopped"),
        Status::Running | Status::Paused => bail!("cannot start an already running container"),
    }
    let path = container.exec_fifo();
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut byte = [0u8; 1];
    loop {
        let mut pfd = libc::pollfd {
            fd: fifo.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 20) };
        match (&fifo).read(&mut byte) {
            Ok(1) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading the exec fifo"),
        }
        if process_state(record.pid, record.pid_start).is_none() {
            bail!("cannot start a container that has stopped");
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    hooks::run_warn(
        record.hooks.as_ref(),
        Point::Poststart,
        &state_json(&record, Status::Running),
    );
    tracing::info!(id, "container started");
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

/// `state`: the OCI state JSON.
pub fn state(g: &Global, id: &str) -> anyhow::Result<String> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    let status = container.status(&record);
    Ok(serde_json::to_string_pretty(&record.oci_state(status))?)
}

/// A signal by name (`KILL`, `SIGKILL`, case-insensitive) or number.
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal {s:?}");
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    const NAMES: [(&str, i32); 31] = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("IOT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("SYS", 31),
    ];
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .with_context(|| format!("unknown signal {s:?}"))
}

/// `kill`: sends `sig` to the container (its VMM, which hands it to the app).
pub fn kill(g: &Global, id: &str, sig: i32) -> anyhow::Result<()> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    if container.status(&record) == Status::Stopped {
        bail!("container not running");
    }
    signal(&record, sig)
}

/// `delete`: removes a stopped (or created) container; `force` kills a running one first.
pub fn delete(g: &Global, id: &str, force: bool) -> anyhow::Result<()> {
    let store = g.store();
    let container = match store.open(id) {
        Ok(c) => c,
        Err(e) => {
            // An aborted create can leave a directory without state.
            let dir = store.dir_of(id);
            if state::check_id(id).is_ok() && dir.is_dir() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return if force { Ok(()) } else { Err(e) };
        }
    };
    let record = container.read()?;
    match container.status(&record) {
        Status::Stopped => {}
        Status::Created => {
            signal(&record, libc::SIGKILL).ok();
            wait_gone(&record, Duration::from_secs(10))?;
        }
        status @ (Status::Running | Status::Paused) => {
            if !force {
                bail!("cannot delete container {id} that is not stopped: {status}");
            }
            signal(&record, libc::SIGKILL).ok();
            wait_gone(&record, Duration::from_secs(10))?;
        }
    }
    if let Some(cg) = &record.cgroup {
        if let Err(e) = cg.remove() {
            tracing::warn!("{e:#}");
        }
    }
    hooks::run_warn(
        record.hooks.as_ref(),
        Point::Poststop,
        &state_json(&record, Status::Stopped),
    );
    container.destroy()?;
    tracing::info!(id, "container deleted");
    Ok(())
}

/// The signal `run` forwards to the container (0: none pending).
static FORWARD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_forward(sig: libc::c_int) {
    FORWARD.store(sig, Ordering::SeqCst);
}

/// `run`: create, start, and (unless `detach`) wait for the app, forward the signals this
/// process gets to it, delete the container and return its exit status.
pub fn run(g: &Global, id: &str, opts: &CreateOptions, detach: bool) -> anyhow::Result<i32> {
    let child = create_child(g, id, opts)?;
    if let Err(e) = start(g, id) {
        let _ = delete(g, id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: a plain sigaction whose handler only stores to an atomic; no SA_RESTART,
        // so waitpid returns EINTR and the signal is forwarded.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_forward as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let pid = child.id() as i32;
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e).context("waiting for the container");
        }
        let sig = FORWARD.swap(0, Ordering::SeqCst);
        if sig != 0 {
            // SAFETY: our child, not yet reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    delete(g, id, true)?;
    Ok(code)
}

/// `list`: every container, as a table or JSON.
pub fn list(g: &Global, json: bool, quiet: bool) -> anyhow::Result<String> {
    let store = g.store();
    let mut rows = Vec::new();
    for id in store.ids()? {
        let Ok(container) = store.open(&id) else {
            continue; // deleted meanwhile
        };
        let Ok(record) = container.read() else {
            continue;
        };
        let status = container.status(&record);
        rows.push((record, status));
    }
    if quiet {
        return Ok(rows.iter().map(|(r, _)| format!("{}\n", r.id)).collect());
    }
    if json {
        let states: Vec<_> = rows.iter().map(|(r, s)| r.oci_state(*s)).collect();
        return Ok(serde_json::to_string(&states)? + "\n");
    }
    let mut table = vec![[
        "ID".to_string(),
        "PID".into(),
        "STATUS".into(),
        "BUNDLE".into(),
        "CREATED".into(),
        "OWNER".into(),
    ]];
    for (r, s) in &rows {
        let st = r.oci_state(*s);
        table.push([
            r.id.clone(),
            st.pid.to_string(),
            s.to_string(),
            r.bundle.display().to_string(),
            r.created.clone(),
            "root".into(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].len())
                .max()
                .unwrap_or(0)
                .max(11)
        })
        .collect();
    Ok(table
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join(" ").trim_end().to_string() + "\n"
        })
        .collect())
}

/// `ps`: the container's processes (the VMM: the whole VM is one host process).
pub fn ps(g: &Global, id: &str, json: bool, ps_args: &[String]) -> anyhow::Result<String> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    let pids: Vec<i32> = match container.status(&record) {
        Status::Stopped => Vec::new(),
        _ => vec![record.pid],
    };
    if json {
        return Ok(serde_json::to_string(&pids)? + "\n");
    }
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = Command::new("ps")
        .args(&args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let pid_col = header
        .split_whitespace()
        .position(|c| c == "PID")
        .context("ps printed no PID column")?;
    let mut result = format!("{header}\n");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(pid_col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            result += line;
            result.push('\n');
        }
    }
    Ok(result)
}

/// `pause`: stops the VMM (its vCPU and network stack) with SIGSTOP.
pub fn pause(g: &Global, id: &str) -> anyhow::Result<()> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    match container.status(&record) {
        Status::Running | Status::Created => {}
        Status::Paused => bail!("container already paused"),
        Status::Stopped => bail!("container not running"),
    }
    signal(&record, libc::SIGSTOP)?;
    wait_for(&container, &record, Status::Paused)
}

/// `resume`: continues a paused VMM.
pub fn resume(g: &Global, id: &str) -> anyhow::Result<()> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    if container.status(&record) != Status::Paused {
        bail!("container not paused");
    }
    signal(&record, libc::SIGCONT)?;
    let end = Instant::now() + Duration::from_secs(5);
    while container.status(&record) == Status::Paused {
        if Instant::now() >= end {
            bail!("container did not resume");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn wait_for(container: &Container, record: &Record, want: Status) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(5);
    while container.status(record) != want {
        if Instant::now() >= end {
            bail!("container did not become {want}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// One `events` stats line (runc's shape, the fields we have).
pub fn stats(g: &Global, id: &str) -> anyhow::Result<String> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    if container.status(&record) == Status::Stopped {
        bail!("container not running");
    }
    let usage = record
        .cgroup
        .as_ref()
        .map(Cgroup::usage)
        .unwrap_or_default();
    // Without a cgroup: the VMM process's own figures.
    let ticks = || -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", record.pid)).ok()?;
        let f: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let rss = || -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", record.pid)).ok()?;
        let kb = text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let line = serde_json::json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": { "usage": { "total": usage.cpu_ns.or_else(|| ticks().map(|t| t * 1_000_000_000 / hz)).unwrap_or(0) } },
            "memory": { "usage": {
                "usage": usage.memory_bytes.or_else(rss).unwrap_or(0),
                "limit": usage.memory_limit.unwrap_or(0),
            } },
            "pids": { "current": usage.pids.unwrap_or(1) },
        }
    });
    Ok(line.to_string() + "\n")
}

/// `features`: what this runtime supports, in runc's JSON shape.
pub fn features() -> String {
    let f = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [],
        "linux": {
            "namespaces": ["network", "pid", "ipc", "uts", "mount"],
            "capabilities": [],
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            // The guest's own seccomp profile is not applied (qkernel has no seccomp yet);
            // the VMM's own filters, per thread kind, are listed under "quark".
            "seccomp": { "enabled": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "io.github.quark.runtime": "qvisor",
            crate::bundle::SYSCALL_POLL_ANNOTATION: "on|off",
        },
        "quark": {
            "vmmSeccomp": crate::jail::describe(),
            "vmmCapabilities": crate::jail::kept_capability_names(),
        },
    });
    serde_json::to_string_pretty(&f).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("SIGUSR1").unwrap(), 10);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }
}
