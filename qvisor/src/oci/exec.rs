//! `qvisor exec`: a new process in a running container, as runc's `exec` starts one.
//!
//! The process lives in the container's VM, not on the host, so what the caller (containerd's
//! shim) waits for is a proxy: `qvisor exec` starts `qvisor exec-proxy`, which hands the
//! process and its own stdio to the VMM ([`crate::exec`]), reports that it started, then
//! forwards the signals it gets and ends as the process ends (same exit code, or killed by the
//! same signal). Its pid is the one `--pid-file` names; with `--detach` `exec` returns once
//! the process runs, else it waits for the proxy.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use qnet_client::sys::send_with_fds;

use super::state::{self, Status};
use super::Global;
use crate::exec::{Control, ExecSpec, Reply, SOCKET};

/// `exec`'s options (runc's).
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// A process JSON (the OCI `process` object); else `args` with the container's defaults.
    pub process: Option<PathBuf>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub tty: bool,
    /// Where the terminal's master goes (with `tty`).
    pub console_socket: Option<PathBuf>,
    pub cwd: Option<String>,
    pub env: Vec<String>,
    /// `UID[:GID]`, over the process's own user.
    pub user: Option<String>,
    pub args: Vec<String>,
}

/// `exec`: starts the process through a proxy; returns the exit code to end with.
pub fn exec(g: &Global, id: &str, opts: &ExecOptions) -> anyhow::Result<i32> {
    let container = g.store().open(id)?;
    let record = container.read()?;
    match container.status(&record) {
        Status::Running => {}
        other => bail!("exec failed: cannot exec in a {} container", other.as_str()),
    }
    let (spec, tty) = exec_spec(&record.bundle, opts)?;
    if tty && opts.detach && opts.console_socket.is_none() {
        bail!(
            "exec failed: cannot allocate tty if runc will detach without setting console socket"
        );
    }
    let json = serde_json::to_string(&spec)?;
    // The container's lock goes now: other commands (another exec, kill) must not wait for
    // this process to end.
    let dir = container.dir().to_path_buf();
    drop(container);
    let (mut proxy, line) = super::spawn_self(g, &dir, |cmd, sync_fd| {
        cmd.arg("exec-proxy")
            .arg("--sync-fd")
            .arg(sync_fd.to_string());
        if tty {
            cmd.arg("--tty");
        }
        if let (true, Some(s)) = (tty, &opts.console_socket) {
            cmd.arg("--console-socket").arg(s);
        }
        cmd.arg(id).arg(&json);
    })
    .context("starting the exec proxy")?;
    if !line.starts_with("ok ") {
        let _ = proxy.wait();
        bail!("exec failed: {}", line.trim());
    }
    if let Some(pid_file) = &opts.pid_file {
        state::write_atomically(pid_file, proxy.id().to_string().as_bytes(), 0o644)?;
    }
    if opts.detach {
        return Ok(0);
    }
    let status = proxy.wait().context("waiting for the exec proxy")?;
    Ok(std::os::unix::process::ExitStatusExt::signal(&status)
        .map_or_else(|| status.code().unwrap_or(1), |sig| 128 + sig))
}

/// The process to start: the `--process` JSON, or `args` with the container's own process
/// (from its bundle) as the defaults for environment, directory and user, as runc does; and
/// whether it gets a terminal.
fn exec_spec(bundle: &Path, opts: &ExecOptions) -> anyhow::Result<(ExecSpec, bool)> {
    let process: oci_spec::runtime::Process = match &opts.process {
        Some(path) => {
            let text =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{}: not a valid OCI process", path.display()))?
        }
        None => {
            let (spec, _) = crate::bundle::read(bundle)?;
            spec.process()
                .clone()
                .context("the container's config has no process")?
        }
    };
    let tty = if opts.process.is_some() {
        process.terminal().unwrap_or(false)
    } else {
        opts.tty
    };
    let args = if opts.process.is_some() {
        process.args().clone().unwrap_or_default()
    } else {
        opts.args.clone()
    };
    if args.is_empty() {
        bail!("exec needs a command to run");
    }
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(opts.env.iter().cloned());
    let user = process.user();
    let (uid, gid) = match &opts.user {
        Some(u) => parse_user(u)?,
        None => (user.uid(), user.gid()),
    };
    let spec = ExecSpec {
        args,
        env,
        cwd: opts
            .cwd
            .clone()
            .unwrap_or_else(|| process.cwd().to_string_lossy().into_owned()),
        uid,
        gid,
        groups: user.additional_gids().clone().unwrap_or_default(),
    };
    Ok((spec, tty))
}

/// `--user UID[:GID]`: numbers only (names would need the image's /etc/passwd); the gid
/// defaults to 0, as runc's.
fn parse_user(s: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = s.split_once(':').unwrap_or((s, "0"));
    let num = |v: &str| {
        v.parse::<u32>()
            .with_context(|| format!("exec failed: --user {s:?}: expected UID[:GID] as numbers"))
    };
    Ok((num(uid)?, num(gid)?))
}

/// Signals the proxy forwards to the process (bit `sig - 1`).
static FORWARD: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_forwarded_signal(sig: libc::c_int) {
    FORWARD.fetch_or(1 << (sig - 1), Ordering::SeqCst);
}

/// `exec-proxy` (started by `exec` in the container's state directory): starts `spec_json`'s
/// process with this process's stdio (or, with `tty`, a new terminal whose master goes to
/// `console_socket`), writes `ok PID` (or the error) on `sync_fd`, then lives as long as the
/// process. Returns the exit code (or ends by the process's fatal signal).
pub fn proxy(sync_fd: i32, spec_json: &str, tty: bool, console_socket: Option<&Path>) -> i32 {
    // SAFETY: the descriptor number `exec` passed us, ours alone from here.
    let mut sync = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(sync_fd) });
    let started = stdio(tty, console_socket).and_then(|(fds, _slave)| start(spec_json, &fds));
    let (conn, lines) = match started {
        Ok((conn, lines, pid)) => {
            let _ = writeln!(sync, "ok {pid}");
            (conn, lines)
        }
        Err(e) => {
            let _ = writeln!(sync, "{e:#}");
            return 1;
        }
    };
    drop(sync);
    install_forwarding();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines() {
            let Ok(line) = line else { break };
            if let Ok(Reply::Exit(status)) = serde_json::from_str(&line) {
                let _ = tx.send(status);
                return;
            }
        }
    });
    let mut out = &conn;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(status) => return end_as(status),
            // The VMM is gone: the process died with its container.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return 128 + libc::SIGKILL,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        let mut pending = FORWARD.swap(0, Ordering::SeqCst);
        while pending != 0 {
            let sig = pending.trailing_zeros() as i32 + 1;
            pending &= pending - 1;
            let mut line = serde_json::to_vec(&Control::Signal(sig)).unwrap_or_default();
            line.push(b'\n');
            let _ = out.write_all(&line);
        }
    }
}

/// The process's stdin, stdout and stderr: this process's own, or a new terminal's slave (its
/// master sent to `console_socket`; without one, this process's terminal is the process's).
/// The slave, if any, is kept open until the request is sent.
fn stdio(tty: bool, console_socket: Option<&Path>) -> anyhow::Result<([i32; 3], Option<OwnedFd>)> {
    let Some(socket) = console_socket.filter(|_| tty) else {
        return Ok(([0, 1, 2], None));
    };
    let name = super::console::pty_to_socket(socket)?;
    // SAFETY: the slave's NUL-terminated path; the descriptor is ours from here.
    let fd = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening the terminal");
    }
    // SAFETY: a fresh descriptor.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(([fd, fd, fd], Some(slave)))
}

/// Connects to the VMM, sends the request with `stdio` attached, reads the answer: (the
/// connection, a reader of what follows, the process's pid in the container).
fn start(
    spec_json: &str,
    stdio: &[i32; 3],
) -> anyhow::Result<(UnixStream, BufReader<UnixStream>, i64)> {
    let conn = UnixStream::connect(SOCKET)
        .context("connecting to the container's VMM (is the container running?)")?;
    let mut request = spec_json.as_bytes().to_vec();
    request.push(b'\n');
    send_with_fds(&conn, &request, stdio).context("sending the exec request")?;
    let mut lines = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    lines.read_line(&mut line)?;
    match serde_json::from_str::<Reply>(&line) {
        Ok(Reply::Pid(pid)) => Ok((conn, lines, pid)),
        Ok(Reply::Error(e)) => bail!("{e}"),
        _ => bail!("the VMM gave no answer ({:?})", line.trim()),
    }
}

/// Forwards the catchable signals a runtime sends an exec'd process.
fn install_forwarding() {
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGTERM,
        libc::SIGCONT,
        libc::SIGTSTP,
        libc::SIGWINCH,
        libc::SIGALRM,
    ] {
        // SAFETY: a plain sigaction whose handler only does an atomic OR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_forwarded_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Ends the proxy as the process ended: its exit code, or its fatal signal.
fn end_as(status: i32) -> i32 {
    let sig = status & 0x7f;
    if sig == 0 {
        return (status >> 8) & 0xff;
    }
    // SAFETY: back to the default action, then the signal to ourselves: the caller's wait
    // sees the same death as the process's.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    128 + sig
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exec_spec` of a `--process` file holding `json`, in a directory named by `tag`.
    fn spec_of(tag: &str, json: &str) -> (ExecSpec, bool) {
        let dir = std::env::temp_dir().join(format!("qvisor-exec-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("process.json");
        std::fs::write(&file, json).unwrap();
        let opts = ExecOptions {
            process: Some(file),
            ..Default::default()
        };
        let spec = exec_spec(&dir, &opts).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        spec
    }

    #[test]
    fn a_process_json_gives_args_env_cwd_and_user() {
        let (spec, tty) = spec_of(
            "spec",
            r#"{"args":["sh","-c","id"],"env":["A=1"],"cwd":"/tmp","user":{"uid":5,"gid":6}}"#,
        );
        assert!(!tty);
        assert_eq!(spec.args, ["sh", "-c", "id"]);
        assert_eq!(spec.env, ["A=1"]);
        assert_eq!((spec.cwd.as_str(), spec.uid, spec.gid), ("/tmp", 5, 6));
    }

    #[test]
    fn user_is_uid_and_gid_as_numbers() {
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert_eq!(parse_user("65534").unwrap(), (65534, 0));
        assert!(parse_user("nobody").is_err());
    }

    #[test]
    fn a_process_json_asks_for_its_terminal() {
        let (spec, tty) = spec_of(
            "tty",
            r#"{"terminal":true,"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
        );
        assert!(tty);
        assert_eq!(spec.args, ["sh"]);
    }
}
