//! Starting a whole stack in the background: TAP, attach socket, service loop on its own thread.
//! Used by `qnet serve`, the tests and netbench.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::Context;

use crate::phy::{Tap, TapOptions};
use crate::{Stack, StackConfig, StackHandle};

/// A stack running on its own thread, reachable by ring clients at `socket`.
pub struct RunningStack {
    pub socket: PathBuf,
    handle: StackHandle,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningStack {
    /// Starts a stack on a TAP created from `tap`, or with loopback only when `None`.
    pub fn start(
        cfg: StackConfig,
        tap: Option<&TapOptions>,
        socket: &Path,
    ) -> anyhow::Result<RunningStack> {
        cfg.validate()?;
        let tap = tap.map(Tap::create).transpose()?;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("listening on {}", socket.display()))?;
        let (mut stack, attacher, handle) = Stack::new(cfg, tap)?;
        std::thread::Builder::new()
            .name("qnet-attach".into())
            .spawn(move || attacher.serve(listener))?;
        let thread = std::thread::Builder::new()
            .name("qnet".into())
            .spawn(move || stack.run())?;
        Ok(RunningStack {
            socket: socket.to_path_buf(),
            handle,
            thread: Some(thread),
        })
    }

    /// The stack's counters (refreshed once a second).
    pub fn stats(&self) -> crate::StackStats {
        self.handle.stats()
    }

    /// The stack's counters as qhttp's metrics endpoint reports them.
    pub fn http_counters(&self) -> qhttp::StackCounters {
        let handle = self.handle.clone();
        std::sync::Arc::new(move || http_samples(&handle.stats()))
    }

    /// Runs `f` on the stack's thread (see [`StackHandle::on_stack_thread`]).
    pub fn on_stack_thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        self.handle.on_stack_thread(f)
    }

    /// Waits for the stack to end (it runs until stopped or failed).
    pub fn wait(mut self) -> anyhow::Result<()> {
        self.join()
    }

    /// Stops the stack and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.handle.stop();
        self.join()
    }

    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the stack thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningStack {
    fn drop(&mut self) {
        self.handle.stop();
        let _ = self.join();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// qnet's counters, named for Prometheus (`qnet_` is added by qhttp).
fn http_samples(s: &crate::StackStats) -> Vec<qhttp::StackSample> {
    let sample = |name, help, counter, value| qhttp::StackSample {
        name,
        help,
        counter,
        value,
    };
    vec![
        sample("sockets", "Sockets open in the stack", false, s.net.sockets),
        sample(
            "sessions",
            "Ring clients attached",
            false,
            s.sessions as u64,
        ),
        sample(
            "ring_resident_bytes",
            "Bytes of the ring clients' shared regions in memory",
            false,
            s.ring_resident_bytes,
        ),
        sample(
            "tcp_accepted",
            "TCP connections accepted",
            true,
            s.net.tcp_accepted,
        ),
        sample(
            "tcp_connected",
            "TCP connections opened",
            true,
            s.net.tcp_connected,
        ),
        sample(
            "tcp_retransmits",
            "TCP segments retransmitted (timeout or fast)",
            true,
            s.net.tcp_retransmits,
        ),
        sample(
            "tcp_rx_direct",
            "TCP connections that received straight into their client's ring",
            true,
            s.net.tcp_rx_direct,
        ),
        sample(
            "tcp_tx_direct",
            "TCP connections that sent straight from their client's ring",
            true,
            s.net.tcp_tx_direct,
        ),
        sample(
            "listen_overflows",
            "SYNs refused because a listen queue was full",
            true,
            s.net.listen_overflows,
        ),
        sample(
            "rx_frames",
            "Frames received from the link",
            true,
            s.device.rx_frames,
        ),
        sample(
            "tx_frames",
            "Frames sent to the link",
            true,
            s.device.tx_frames,
        ),
        sample(
            "rx_dropped_bad_checksum",
            "Received frames dropped for a bad checksum",
            true,
            s.device.rx_bad_checksum,
        ),
        sample(
            "rx_dropped_martian",
            "Received frames dropped for a loopback address",
            true,
            s.device.rx_martians,
        ),
        sample(
            "rx_errors",
            "Receive errors on the link",
            true,
            s.device.rx_errors,
        ),
        sample(
            "tx_dropped",
            "Frames dropped on transmit",
            true,
            s.device.tx_dropped,
        ),
        sample(
            "tx_errors",
            "Transmit errors on the link",
            true,
            s.device.tx_errors,
        ),
        sample(
            "sessions_closed_for_violation",
            "Ring clients closed for breaking the ring's rules",
            true,
            s.net.sessions_closed_for_violation,
        ),
    ]
}
