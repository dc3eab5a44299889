//! The keeper: a small process the VMM starts before it drops its capabilities, which gives the
//! pod interface back to the kernel once the VMM is gone, however it ended (even SIGKILL).
//! The VMM keeps no capability to undo a takeover itself; the keeper does nothing else.
//!
//! The VMM passes the takeover's record ([`qnet_netns::Takeover::hand_off`]) on the keeper's
//! stdin, framed by its length (u32, native endian), and the namespace as descriptor 3. The
//! keeper reads the record, answers one byte on its stdout (it is loaded: the VMM may now
//! empty its root, which the keeper shares), then reads on until end of file: the VMM's end of the pipe closes
//! when it exits or when it says it is done ([`Keeper::finish`], after its TAP is gone).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// What the keeper writes on its stdout once it holds the record.
const READY: &[u8; 1] = b"R";

/// Largest record the keeper accepts (a pod interface has a few addresses and routes).
const MAX_RECORD: usize = 1 << 20;

/// The running keeper, from the VMM's side.
pub struct Keeper {
    child: Child,
}

impl Keeper {
    /// Starts the keeper for `takeover`, which from here on is the keeper's to undo.
    pub fn start(takeover: &mut qnet_netns::Takeover) -> anyhow::Result<Keeper> {
        let (netns, record) = takeover
            .hand_off()
            .context("handing the pod interface to the keeper")?;
        let exe = std::env::current_exe().context("finding qvisor's own binary")?;
        let netns: OwnedFd = netns.into();
        let raw = netns.as_raw_fd();
        let mut cmd = Command::new(exe);
        cmd.arg("keeper")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: between fork and exec only dup2, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the keeper")?;
        drop(netns);
        let len = u32::try_from(record.len()).context("the takeover record is too large")?;
        let mut stdin = child.stdin.take().context("the keeper's stdin")?;
        stdin
            .write_all(&len.to_ne_bytes())
            .and_then(|()| stdin.write_all(&record))
            .context("passing the takeover to the keeper")?;
        // Held open until finish or the end of this process.
        child.stdin = Some(stdin);
        // The keeper says it has the record, and so is fully loaded (its shared libraries
        // too): the VMM's root is about to become empty, for the keeper as well.
        let mut ready = [0u8; 1];
        let mut stdout = child.stdout.take().context("the keeper's stdout")?;
        stdout
            .read_exact(&mut ready)
            .context("the keeper ended before it was ready")?;
        anyhow::ensure!(ready == *READY, "the keeper said {ready:?}");
        Ok(Keeper { child })
    }

    /// The VMM is done with the interface: the keeper gives it back; waits until it has.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        match self.child.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!("the keeper ended with {s} giving the pod interface back"),
            Err(e) => tracing::warn!("waiting for the keeper: {e}"),
        }
    }
}

/// `qvisor keeper`: the keeper's own side. Returns its exit status.
pub fn run() -> i32 {
    // Stop signals meant for the container (or its process group) must not end the keeper
    // before it has done its one job; it ends when the VMM's pipe does.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a disposition to SIG_IGN.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    match keep() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("keeper: {e:#}");
            eprintln!("qvisor keeper: {e:#}");
            1
        }
    }
}

fn keep() -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut len = [0; 4];
    stdin
        .read_exact(&mut len)
        .context("reading the takeover record's length")?;
    let len = u32::from_ne_bytes(len) as usize;
    anyhow::ensure!(len <= MAX_RECORD, "a takeover record of {len} bytes");
    let mut record = vec![0; len];
    stdin
        .read_exact(&mut record)
        .context("reading the takeover record")?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(READY)
        .and_then(|()| stdout.flush())
        .context("telling the VMM the keeper is ready")?;
    // Anything more the VMM writes is not ours to act on: wait for the end of the pipe.
    let mut rest = [0; 512];
    loop {
        match stdin.read(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting for the VMM"),
        }
    }
    // SAFETY: descriptor 3 is the namespace the VMM passed (Keeper::start), ours alone; a
    // descriptor of anything else fails setns with a clear error.
    let file = unsafe { std::fs::File::from_raw_fd(3) };
    // The keeper shares the VMM's mount namespace, whose root becomes an empty tmpfs when the
    // VMM confines itself: it reaches the namespace by this descriptor, never by a path.
    let netns = qnet_netns::Netns::from_file(file, std::path::Path::new("the pod's namespace"));
    qnet_netns::restore_handed_off(netns, &record).context("giving the pod interface back")
}
