//! Socket reads and writes the platform's syscall stub serves without qkernel (qvisor: the
//! stub copies from the socket's receive ring, or into its transmit ring, in guest user mode,
//! so a `read` that finds data, or a `write` that finds room, costs no host thread and no
//! exit).
//!
//! qkernel decides which descriptors qualify: after it served a long read or write of a
//! socket, it offers that descriptor to the platform ([`Machine::net_fast_read`]), which takes
//! it for a connected stream. The stub's table is the running process's view, so before the app runs
//! again ([`Kernel::sync_fast_reads`], after every entry into the kernel) every offered
//! descriptor must still name the same socket in the running process's table; one that does
//! not (closed, replaced by dup2, another process running) is taken back. Everything else a
//! read or write means (waiting, EOF, errors, SIGPIPE, signals) stays here: the stub reads
//! only bytes that are there, writes only to a stream the stack last saw open for writing
//! and only what fits whole, and leaves every other case to the ordinary call.

use crate::fs::FileKind;
use crate::machine::{Machine, SocketId};
use crate::syscalls::Kernel;

/// The private syscall the stub makes after a read from the ring when the stack asked to hear
/// of freed room (`rx_wanted`): `(fd, bytes read)`, returning the bytes read.
pub const QUARK_READ_DONE: u64 = 0x5100;

/// The private syscall the stub makes after a write into the ring found no kick outstanding
/// (the stack may sleep): `(fd, bytes written)`, returning the bytes written.
pub const QUARK_WRITE_DONE: u64 = 0x5101;

/// A read or write at least this long offers its descriptor: a stream, where the stub pays
/// (the platform maps the socket's rings into the guest for it, not worth it for a request).
pub(crate) const FAST_READ_MIN: i64 = 16 << 10;

/// Most descriptors offered at once: the check before every return to the app stays short.
const MAX_FAST_READS: usize = 64;

impl Kernel {
    /// `fd` (socket `s`) was just read or written here: let the stub read and write it from
    /// now on if it can.
    pub(crate) fn offer_fast_read(&mut self, m: &mut dyn Machine, fd: u64, s: SocketId) {
        if self.fast_reads.len() >= MAX_FAST_READS
            || self.fast_reads.iter().any(|&(f, _, _)| f == fd)
        {
            return;
        }
        let blocking = !self.p.fds.nonblocking(fd);
        if m.net_fast_read(fd, s, blocking) {
            self.fast_reads.push((fd, s, blocking));
        }
    }

    /// Takes back every offered descriptor that no longer names its socket in the running
    /// process's table. Called by the platform after every entry into the kernel, before the
    /// app runs again.
    pub fn sync_fast_reads(&mut self, m: &mut dyn Machine) {
        let fds = &self.p.fds;
        // A thread about to run a call again that it parked with a deadline (SO_RCVTIMEO,
        // SO_SNDTIMEO: `io_until`) or with part of a write sent must bring it here: served by
        // the stub, the call would leave the deadline behind (the thread's next wait would
        // end at once), or send the part again.
        let restarting = self.t.io_until.is_some() || self.t.write_progress.is_some();
        self.fast_reads.retain(|&(fd, s, blocking)| {
            let same = !restarting
                && matches!(fds.kind(fd), Ok(FileKind::Socket(x)) if *x == s)
                && fds.nonblocking(fd) != blocking;
            if !same {
                m.net_fast_forget(fd);
            }
            same
        });
    }

    /// [`QUARK_READ_DONE`] (`write` false: the stub read `n` bytes of `fd`'s ring and the
    /// stack waits to hear of the room) or [`QUARK_WRITE_DONE`] (the stub wrote `n` bytes into
    /// it and no kick was outstanding). Returns `n`, the read's or write's result (any value
    /// an app passes is only its own).
    pub(crate) fn fast_io_done(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        n: u64,
        write: bool,
    ) -> Result<i64, i64> {
        if let Ok(FileKind::Socket(s)) = self.p.fds.kind(fd) {
            if write {
                m.net_write_done(*s);
            } else {
                m.net_read_done(*s);
            }
        }
        Ok(n.min(i64::MAX as u64) as i64)
    }
}
