//! `exec`: a new process in a running container, started by qkernel at the runtime's request.
//!
//! The VMM listens on a Unix socket in the container's state directory. A client (`qvisor
//! exec`'s proxy process) connects and sends one JSON line, [`ExecSpec`], with its stdin,
//! stdout and stderr attached (SCM_RIGHTS); the VMM hands them and the spec to qkernel as a
//! [`qkernel::HostRequest::Spawn`] and answers `{"pid": N}` (or `{"error": "..."}`). From
//! then on the client may send `{"signal": N}` lines for the process, and the VMM sends
//! `{"exit": STATUS}` (a wait status) when it ends. A client that goes away kills its
//! process (SIGKILL), so no exec'd process outlives whoever waits for it.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use qnet_client::sys::recv_some_with_fds;

use crate::vm::{send_host_request, HostQueue, HostRequest};

/// The socket's name in the container's state directory.
pub const SOCKET: &str = "exec.sock";
/// Longest request line.
const MAX_REQUEST: usize = 1 << 20;
/// How long the VMM waits for qkernel to start a process.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The process to start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// What the VMM says back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Pid(i64),
    Error(String),
    Exit(i32),
}

/// What the client sends after its request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Signal(i32),
}

/// Serves exec requests on `path` for the VM of `core`, on a thread of its own.
pub fn listen(path: &Path, host: Arc<HostQueue>) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::thread::Builder::new()
        .name("qvisor-exec".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let host = host.clone();
                let _ = std::thread::Builder::new()
                    .name("qvisor-exec-conn".into())
                    .spawn(move || {
                        // Before the pid is sent, the client reads this error as the answer.
                        let answer = conn.try_clone();
                        if let Err(e) = serve(conn, &host) {
                            tracing::info!("exec: {e:#}");
                            if let Ok(mut out) = answer {
                                let mut text = serde_json::to_vec(&Reply::Error(format!("{e:#}")))
                                    .unwrap_or_default();
                                text.push(b'\n');
                                let _ = out.write_all(&text);
                            }
                        }
                    });
            }
        })
        .context("starting the exec thread")?;
    Ok(())
}

/// One client: its request, the process's start, signals for it, its exit.
fn serve(conn: UnixStream, host: &Arc<HostQueue>) -> anyhow::Result<()> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let mut first = vec![0u8; 64 << 10];
    let (n, fds) =
        recv_some_with_fds(&conn, &mut first, 3).context("receiving the exec request")?;
    first.truncate(n);
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = first;
    if !line.ends_with(b"\n") {
        let mut rest = Vec::new();
        std::io::Read::take(&mut reader, MAX_REQUEST as u64).read_until(b'\n', &mut rest)?;
        line.extend(rest);
    }
    let mut out = conn.try_clone()?;
    let reply = |out: &mut UnixStream, r: &Reply| -> std::io::Result<()> {
        let mut text = serde_json::to_vec(r).unwrap_or_default();
        text.push(b'\n');
        out.write_all(&text)
    };
    let spec: ExecSpec = match serde_json::from_slice(&line) {
        Ok(s) => s,
        Err(e) => {
            reply(&mut out, &Reply::Error(format!("bad exec request: {e}")))?;
            return Ok(());
        }
    };
    let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
        reply(
            &mut out,
            &Reply::Error("exec needs stdin, stdout and stderr".into()),
        )?;
        return Ok(());
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    let request = qkernel::SpawnRequest {
        id,
        argv: spec.args,
        env: spec.env,
        cwd: spec.cwd,
        user: (spec.uid, spec.gid, spec.groups),
        stdio: [0; 3], // the platform's files for `stdio`, made as qkernel takes the request
    };
    send_host_request(
        host,
        HostRequest::Spawn {
            spec: request,
            stdio,
        },
        Some((id, tx)),
    );
    let pid = match rx.recv_timeout(START_TIMEOUT) {
        Ok(qkernel::HostEvent::Started { pid: Ok(pid), .. }) => pid,
        Ok(qkernel::HostEvent::Started {
            pid: Err(errno), ..
        }) => {
            let why = std::io::Error::from_raw_os_error(errno as i32);
            reply(
                &mut out,
                &Reply::Error(format!("starting the process: {why}")),
            )?;
            return Ok(());
        }
        other => bail!("no start from the kernel: {other:?}"),
    };
    reply(&mut out, &Reply::Pid(pid))?;
    // Signals from the client go to the process; the client gone, the process goes too.
    let exited = Arc::new(AtomicBool::new(false));
    let (host2, exited2) = (host.clone(), exited.clone());
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Ok(Control::Signal(sig)) = serde_json::from_str(&line) {
                send_host_request(&host2, HostRequest::Signal { pid, sig }, None);
            }
        }
        if !exited2.load(Ordering::SeqCst) {
            send_host_request(&host2, HostRequest::Signal { pid, sig: 9 }, None);
        }
    });
    if let Ok(qkernel::HostEvent::Exited { status, .. }) = rx.recv() {
        exited.store(true, Ordering::SeqCst);
        reply(&mut out, &Reply::Exit(status))?;
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_controls_are_one_json_object_each() {
        assert_eq!(
            serde_json::to_string(&Reply::Pid(7)).unwrap(),
            r#"{"pid":7}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::Exit(256)).unwrap(),
            r#"{"exit":256}"#
        );
        assert_eq!(
            serde_json::from_str::<Control>(r#"{"signal":15}"#).unwrap(),
            Control::Signal(15)
        );
    }
}
