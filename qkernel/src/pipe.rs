//! Pipes: pipe/pipe2, reads and writes with Linux's semantics (64 KiB of buffer, writes of
//! up to PIPE_BUF bytes atomic, EOF once every writer is gone, EPIPE and SIGPIPE once every
//! reader is). A pipe belongs to the kernel, not to a process: its two ends travel through
//! fork and exec like any descriptor. Who still holds an end is found by looking at every
//! process's descriptors, so no count can drift.
//!
//! A read of an empty pipe or a write to a full one, on a blocking descriptor, parks the
//! process ([`ERESTART`]) and runs another; any change to a pipe wakes the parked ones, which
//! run their call again.

use std::collections::VecDeque;

use crate::errno::*;
use crate::fs::FileKind;
use crate::machine::Machine;
use crate::syscalls::Kernel;

/// Bytes a pipe holds (Linux's default).
pub const PIPE_CAPACITY: usize = 64 << 10;
/// Writes of at most this many bytes are never split (POSIX PIPE_BUF).
const PIPE_BUF: usize = 4096;
const O_NONBLOCK: u64 = 0o4000;
const O_CLOEXEC: u64 = 0o2000000;
const SIGPIPE: i32 = 13;

/// Internal errno: the call must wait; the kernel parks the process and runs it again later.
/// Never reaches the app (Linux's ERESTARTSYS).
pub const ERESTART: i64 = 512;
/// Internal errno: the write hit a pipe without readers and SIGPIPE's default action ends
/// the process.
pub const ESIGPIPE: i64 = 513;

#[derive(Debug, Default)]
pub struct Pipe {
    buf: VecDeque<u8>,
    /// Shut down (a socket pair's shutdown): reads drain it then see EOF, writes fail.
    shut: bool,
}

impl Kernel {
    /// pipe(2)/pipe2(2).
    pub(crate) fn pipe2(
        &mut self,
        m: &mut dyn Machine,
        fds_va: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        if flags & !(O_NONBLOCK | O_CLOEXEC) != 0 {
            return Err(EINVAL);
        }
        let id = self.new_pipe();
        let status = (flags & O_NONBLOCK) as i32;
        let cloexec = flags & O_CLOEXEC != 0;
        let r = self
            .p
            .fds
            .install_kind(FileKind::PipeRead(id), status, cloexec);
        let r = r.and_then(|r| {
            self.p
                .fds
                .install_kind(FileKind::PipeWrite(id), status | 1, cloexec)
                .map(|w| (r, w))
                .inspect_err(|_| {
                    let _ = self.p.fds.take_fd(r as u64);
                })
        });
        let (r, w) = match r {
            Ok(rw) => rw,
            Err(e) => {
                self.free_pipe(id);
                return Err(e);
            }
        };
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&(r as i32).to_le_bytes());
        out[4..].copy_from_slice(&(w as i32).to_le_bytes());
        if m.write(fds_va, &out).is_err() {
            let _ = self.p.fds.take_fd(r as u64);
            let _ = self.p.fds.take_fd(w as u64);
            self.free_pipe(id);
            return Err(EFAULT);
        }
        Ok(0)
    }

    /// A new empty pipe; its id.
    pub(crate) fn new_pipe(&mut self) -> u32 {
        let id = match self.pipes.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.pipes.push(None);
                self.pipes.len() - 1
            }
        };
        self.pipes[id] = Some(Pipe::default());
        id as u32
    }

    /// Frees a pipe no descriptor refers to.
    pub(crate) fn free_pipe(&mut self, id: u32) {
        if let Some(slot) = self.pipes.get_mut(id as usize) {
            *slot = None;
        }
    }

    /// Shuts a pipe down (see [`Pipe::shut`]) and wakes whoever waits on it.
    pub(crate) fn shut_pipe(&mut self, id: u32) {
        if let Some(Some(p)) = self.pipes.get_mut(id as usize) {
            p.shut = true;
        }
        self.procs.wake_blocked();
    }

    /// Bytes waiting in pipe `id` (FIONREAD).
    pub(crate) fn pipe_pending(&self, id: u32) -> usize {
        self.pipes
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or(0, |p| p.buf.len())
    }

    /// Whether any process holds `end` of a pipe open.
    fn pipe_end_open(&self, end: &FileKind) -> bool {
        self.p.fds.refers_to(end) || self.held_elsewhere(end)
    }

    /// Drops the pipe once neither end is open anywhere (true: dropped); wakes whoever waits
    /// on pipes.
    pub(crate) fn pipe_end_closed(&mut self, id: u32) -> bool {
        let gone = !self.pipe_end_open(&FileKind::PipeRead(id))
            && !self.pipe_end_open(&FileKind::PipeWrite(id));
        if gone {
            self.free_pipe(id);
        }
        self.procs.wake_blocked();
        gone
    }

    pub(crate) fn pipe_read(
        &mut self,
        id: u32,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        let writers = self.pipe_end_open(&FileKind::PipeWrite(id));
        let pipe = self
            .pipes
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)?;
        let writers = writers && !pipe.shut;
        if pipe.buf.is_empty() {
            return match (writers, self.without_waiting(nonblocking)) {
                (false, _) => Ok(0),
                (true, true) => Err(EAGAIN),
                (true, false) => Err(ERESTART),
            };
        }
        let n = buf.len().min(pipe.buf.len());
        for (b, v) in buf.iter_mut().zip(pipe.buf.drain(..n)) {
            *b = v;
        }
        self.procs.wake_blocked();
        Ok(n)
    }

    /// A write; `Err(ERESTART)` to wait for room, and SIGPIPE's action when no reader is left
    /// (`Ok(None)` asks the caller to end the process by it).
    pub(crate) fn pipe_write(
        &mut self,
        id: u32,
        buf: &[u8],
        nonblocking: bool,
    ) -> Result<Option<usize>, i64> {
        let shut = self
            .pipes
            .get(id as usize)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.shut);
        if shut || !self.pipe_end_open(&FileKind::PipeRead(id)) {
            // SIGPIPE's default action ends the writer; ignored or handled (handlers are not
            // run yet), the write fails with EPIPE.
            return if self.sigpipe_default() {
                Ok(None)
            } else {
                Err(EPIPE)
            };
        }
        let wait = !self.without_waiting(nonblocking);
        let pipe = self
            .pipes
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)?;
        let room = PIPE_CAPACITY - pipe.buf.len();
        // Up to PIPE_BUF bytes go in whole or not at all.
        if room == 0 || (buf.len() <= PIPE_BUF && room < buf.len()) {
            return Err(if wait { ERESTART } else { EAGAIN });
        }
        let n = buf.len().min(room);
        pipe.buf.extend(&buf[..n]);
        self.procs.wake_blocked();
        Ok(Some(n))
    }

    /// Bytes waiting in a pipe (FIONREAD) and poll readiness: (readable, writable, hangup).
    pub(crate) fn pipe_state(&self, kind: &FileKind) -> (bool, bool, bool) {
        match kind {
            FileKind::PipeRead(id) => {
                let pipe = self.pipes.get(*id as usize).and_then(Option::as_ref);
                let data = pipe.is_some_and(|p| !p.buf.is_empty());
                let writers =
                    self.pipe_end_open(&FileKind::PipeWrite(*id)) && !pipe.is_some_and(|p| p.shut);
                (data || !writers, false, !writers)
            }
            FileKind::PipeWrite(id) => {
                let room = self
                    .pipes
                    .get(*id as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|p| p.buf.len() < PIPE_CAPACITY);
                let readers = self.pipe_end_open(&FileKind::PipeRead(*id));
                (false, room || !readers, !readers)
            }
            _ => (false, false, false),
        }
    }

    fn sigpipe_default(&self) -> bool {
        let action = &self.p.sigactions[SIGPIPE as usize - 1];
        u64::from_le_bytes(action[..8].try_into().unwrap_or_default()) == 0 // SIG_DFL
    }

    /// SIGPIPE's default action, for a writer whose pipe has no reader left.
    pub(crate) fn sigpipe(&mut self, m: &mut dyn Machine) -> crate::SyscallOutcome {
        self.exit_process(m, SIGPIPE)
    }
}
