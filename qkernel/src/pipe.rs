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

/// Linux's errno for a datagram larger than the socket can ever hold.
const EMSGSIZE: i64 = 90;
/// Bytes a message pipe holds: Linux's default socket send buffer (net.core.wmem_default).
pub(crate) const MESSAGE_PIPE_CAPACITY: usize = 212_992;
/// The largest datagram (Linux: the send buffer less its 32-byte accounting).
const MAX_MESSAGE: usize = MESSAGE_PIPE_CAPACITY - 32;

#[derive(Debug, Default)]
pub struct Pipe {
    buf: VecDeque<u8>,
    /// Shut down (a socket pair's shutdown): reads drain it then see EOF, writes fail.
    shut: bool,
    /// A datagram or seqpacket socket pair's direction: the length of each message in `buf`,
    /// oldest first. A write goes in whole or waits; a read takes one message, and what of it
    /// does not fit the buffer is dropped, as on Linux. `None`: a byte stream.
    messages: Option<VecDeque<usize>>,
    /// A seqpacket pair's direction: FIONREAD counts every byte queued, as Linux does for
    /// seqpacket (a datagram pair's counts the next message).
    count_all: bool,
}

impl Pipe {
    fn capacity(&self) -> usize {
        if self.messages.is_some() {
            MESSAGE_PIPE_CAPACITY
        } else {
            PIPE_CAPACITY
        }
    }

    /// Whether a read finds something (a message may be empty).
    fn has_data(&self) -> bool {
        match &self.messages {
            Some(m) => !m.is_empty(),
            None => !self.buf.is_empty(),
        }
    }
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
        self.reserve_buffers(PIPE_CAPACITY)?;
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

    /// Whether `bytes` more of kernel buffers (a pipe's, a socket's queue) fit the container's
    /// budget: half its memory, held in the VMM's heap rather than the guest's memory, so a
    /// guest making pipe after pipe cannot grow the VMM past what it was given. ENFILE beyond
    /// (Linux's "too many open files in the system").
    pub(crate) fn reserve_buffers(&self, bytes: usize) -> Result<(), i64> {
        const ENFILE: i64 = 23;
        let pipes: usize = self.pipes.iter().flatten().map(Pipe::capacity).sum();
        let queues = self.unix_dgram_count() * crate::unix_dgram::QUEUE_BYTES;
        if (pipes + queues + bytes) as u64 > self.buffer_budget {
            return Err(ENFILE);
        }
        Ok(())
    }

    /// A new empty pipe; its id.
    pub(crate) fn new_pipe(&mut self) -> u32 {
        self.install_pipe(Pipe::default())
    }

    /// A new empty pipe that keeps message boundaries (a datagram or, with `seqpacket`, a
    /// seqpacket socket pair's direction).
    pub(crate) fn new_message_pipe(&mut self, seqpacket: bool) -> u32 {
        self.install_pipe(Pipe {
            messages: Some(VecDeque::new()),
            count_all: seqpacket,
            ..Pipe::default()
        })
    }

    fn install_pipe(&mut self, pipe: Pipe) -> u32 {
        crate::put_in_vacancy(&mut self.pipes, pipe) as u32
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

    /// Whether pipe `id` keeps message boundaries.
    pub(crate) fn is_message_pipe(&self, id: u32) -> bool {
        self.pipes
            .get(id as usize)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.messages.is_some())
    }

    /// Bytes waiting in pipe `id` (FIONREAD): of the next message, on a datagram pair's.
    pub(crate) fn pipe_pending(&self, id: u32) -> usize {
        self.pipes
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or(0, |p| match &p.messages {
                Some(m) if !p.count_all => m.front().copied().unwrap_or(0),
                _ => p.buf.len(),
            })
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
        self.pipe_read_message(id, buf, nonblocking).map(|(n, _)| n)
    }

    /// A read: (bytes copied into `buf`, the length of the message they came from, larger
    /// when a datagram was cut to fit; for a stream the bytes copied).
    pub(crate) fn pipe_read_message(
        &mut self,
        id: u32,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<(usize, usize), i64> {
        let writers = self.pipe_end_open(&FileKind::PipeWrite(id));
        let pipe = self
            .pipes
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)?;
        let writers = writers && !pipe.shut;
        if !pipe.has_data() {
            return match (writers, self.without_waiting(nonblocking)) {
                (false, _) => Ok((0, 0)),
                (true, true) => Err(EAGAIN),
                (true, false) => Err(ERESTART),
            };
        }
        let whole = match &mut pipe.messages {
            Some(m) => m.pop_front().unwrap_or(0).min(pipe.buf.len()),
            None => buf.len().min(pipe.buf.len()),
        };
        let n = buf.len().min(whole);
        for (b, v) in buf.iter_mut().zip(pipe.buf.drain(..n)) {
            *b = v;
        }
        pipe.buf.drain(..whole - n); // the rest of a datagram that did not fit
        self.procs.wake_blocked();
        Ok((n, whole))
    }

    /// Puts bytes a read took from byte-stream pipe `id` back at its front: the app's buffer
    /// could not take them (EFAULT), and Linux leaves them in the pipe then. Message pipes
    /// keep what they dropped dropped.
    pub(crate) fn pipe_unread(&mut self, id: u32, data: &[u8]) {
        if let Some(Some(pipe)) = self.pipes.get_mut(id as usize) {
            if pipe.messages.is_none() {
                for &b in data.iter().rev() {
                    pipe.buf.push_front(b);
                }
            }
        }
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
            return match self.broken_pipe() {
                ESIGPIPE => Ok(None),
                e => Err(e),
            };
        }
        let wait = !self.without_waiting(nonblocking);
        let pipe = self
            .pipes
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)?;
        let room = pipe.capacity().saturating_sub(pipe.buf.len());
        if let Some(messages) = &mut pipe.messages {
            // A message goes in whole or waits for room; one larger than the pipe never fits.
            if buf.len() > MAX_MESSAGE {
                return Err(EMSGSIZE);
            }
            if room < buf.len() {
                return Err(if wait { ERESTART } else { EAGAIN });
            }
            messages.push_back(buf.len());
            pipe.buf.extend(buf);
            self.procs.wake_blocked();
            return Ok(Some(buf.len()));
        }
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
                let data = pipe.is_some_and(Pipe::has_data);
                let writers =
                    self.pipe_end_open(&FileKind::PipeWrite(*id)) && !pipe.is_some_and(|p| p.shut);
                (data || !writers, false, !writers)
            }
            FileKind::PipeWrite(id) => {
                let room = self
                    .pipes
                    .get(*id as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|p| p.buf.len() < p.capacity());
                let readers = self.pipe_end_open(&FileKind::PipeRead(*id));
                (false, room || !readers, !readers)
            }
            _ => (false, false, false),
        }
    }

    /// A write to a pipe or connection nobody reads any more: SIGPIPE for the writer, as on
    /// Linux. Its default action, unblocked, ends the process (ESIGPIPE asks the caller to);
    /// otherwise the write fails with EPIPE, and SIGPIPE, unless ignored, is pending on the
    /// writing thread (a handler runs as the call returns).
    pub(crate) fn broken_pipe(&mut self) -> i64 {
        const SIG_IGN: u64 = 1;
        let action = &self.p.sigactions[SIGPIPE as usize - 1];
        let handler = u64::from_le_bytes(action[..8].try_into().unwrap_or_default());
        let blocked = self.t.sigmask & (1 << (SIGPIPE - 1)) != 0;
        match handler {
            0 if !blocked => return ESIGPIPE, // SIG_DFL
            SIG_IGN => {}
            _ => {
                let info = crate::signal::SigInfo {
                    code: 0, // SI_USER, from the writer itself (as Linux's send_sig)
                    pid: self.p.pid,
                    status: 0,
                    addr: 0,
                    overrun: 0,
                    value: 0,
                };
                self.t.post(SIGPIPE as u64, info);
            }
        }
        EPIPE
    }

    /// SIGPIPE's default action, for a writer whose pipe has no reader left.
    pub(crate) fn sigpipe(&mut self, m: &mut dyn Machine) -> crate::SyscallOutcome {
        self.exit_process(m, SIGPIPE)
    }
}
