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
