//! signalfd(2): a descriptor from which a process reads its pending signals of a mask as
//! `signalfd_siginfo` records instead of having handlers run (it blocks them). Container inits
//! (catatonit), s6's supervisors and PostgreSQL's latches wait on one with poll or epoll. Like
//! an eventfd it is the kernel's, shared by whoever holds it; what it reads is the reader's:
//! the signals pending on the calling thread, then those pending on the other threads of its
//! process (qkernel keeps a process-directed signal on one of its threads).

use crate::errno::*;
use crate::fs::FileKind;
use crate::machine::Machine;
use crate::signal::{SigInfo, ESIGWAIT, SI_TIMER};
use crate::syscalls::Kernel;

const SFD_NONBLOCK: u64 = 0o4000;
const SFD_CLOEXEC: u64 = 0o2000000;
/// `struct signalfd_siginfo`.
const RECORD: usize = 128;
/// SIGKILL and SIGSTOP, which a mask cannot hold.
const UNCATCHABLE: u64 = (1 << 8) | (1 << 18);

#[derive(Debug)]
pub struct SignalFd {
    mask: u64,
}

impl Kernel {
    /// signalfd4(2) (and signalfd(2), `flags` 0): a new descriptor for `fd` -1, else a new
    /// mask for the signalfd `fd`.
    pub(crate) fn signalfd(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        mask: u64,
        size: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        if flags & !(SFD_NONBLOCK | SFD_CLOEXEC) != 0 || size != 8 {
            return Err(EINVAL);
        }
        let mut b = [0u8; 8];
        m.read(mask, &mut b).map_err(|_| EFAULT)?;
        let mask = u64::from_le_bytes(b) & !UNCATCHABLE;
        if fd as i32 != -1 {
            let FileKind::SignalFd(id) = self.p.fds.kind(fd)? else {
                return Err(EINVAL);
            };
            let id = *id;
            self.signalfd_mut(id)?.mask = mask;
            return Ok(fd as i64);
        }
        let id = crate::put_in_vacancy(&mut self.signalfds, SignalFd { mask }) as u32;
        let status = (flags & SFD_NONBLOCK) as i32; // O_RDONLY
        self.p
            .fds
            .install_kind(FileKind::SignalFd(id), status, flags & SFD_CLOEXEC != 0)
            .inspect_err(|_| self.signalfds[id as usize] = None)
    }

    /// A read: one record for each pending signal of the mask that fits in `buf` (EINVAL if
    /// not one does); with none pending EAGAIN, or a wait until one is posted.
    pub(crate) fn signalfd_read(
        &mut self,
        m: &mut dyn Machine,
        id: u32,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        if buf.len() < RECORD {
            return Err(EINVAL);
        }
        let mask = self.signalfd_mut(id)?.mask;
        self.t.sigwait = 0;
        loop {
            let mut n = 0;
            while n + RECORD <= buf.len() {
                let Some((sig, info)) = self.take_signal_of(mask) else {
                    break;
                };
                buf[n..n + RECORD].copy_from_slice(&record(sig, info));
                n += RECORD;
            }
            if n > 0 {
                return Ok(n);
            }
            if self.without_waiting(nonblocking) {
                return Err(EAGAIN);
            }
            if self.t.deliverable().is_some() || m.cancelled() {
                return Err(EINTR); // its handler runs as the call returns
            }
            // Parked until one of the mask is posted to this thread (or another of the
            // process takes it first: then the read looks and waits again).
            self.t.sigwait = mask;
            if !self.procs_alone() || self.host_requests {
                return Err(ESIGWAIT);
            }
            // Alone: only a timer can post it, and the wait ends at its expiry.
            let now = m.monotonic_ns();
            m.sleep_ns(self.next_timer.saturating_sub(now).min(50_000_000));
            self.take_host_events(m);
            self.t.sigwait = 0;
        }
    }

    /// The signals of the signalfds among `fds` pending for the running thread: they are
    /// readable, and while they wait, a post of one of them wakes the thread.
    pub(crate) fn signalfd_masks(&self, fds: impl Iterator<Item = i32>) -> u64 {
        fds.filter(|fd| *fd >= 0)
            .filter_map(|fd| match self.p.fds.kind(fd as u64) {
                Ok(FileKind::SignalFd(id)) => self.signalfds.get(*id as usize)?.as_ref(),
                _ => None,
            })
            .fold(0, |all, s| all | s.mask)
    }

    /// Whether a signal of signalfd `id` is pending for the running thread's process.
    pub(crate) fn signalfd_ready(&self, id: u32) -> bool {
        let mask = self
            .signalfds
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or(0, |s| s.mask);
        self.pending_for_process() & mask != 0
    }

    /// Drops the mask once no process holds the descriptor.
    pub(crate) fn signalfd_closed(&mut self, id: u32) {
        let kind = FileKind::SignalFd(id);
        if !self.p.fds.refers_to(&kind) && !self.held_elsewhere(&kind) {
            if let Some(slot) = self.signalfds.get_mut(id as usize) {
                *slot = None;
            }
        }
    }

    fn signalfd_mut(&mut self, id: u32) -> Result<&mut SignalFd, i64> {
        self.signalfds
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)
    }

    /// The signals pending on the running thread and on the other threads of its process.
    fn pending_for_process(&self) -> u64 {
        self.procs
            .parked_threads(self.p.pid)
            .fold(self.t.pending(), |all, t| all | t.pending())
    }

    /// Takes the lowest pending signal of `mask`: the running thread's first, then one
    /// pending on another thread of the process.
    fn take_signal_of(&mut self, mask: u64) -> Option<(u64, Option<SigInfo>)> {
        if let Some(taken) = self.t.take_pending(mask) {
            return Some(taken);
        }
        self.procs
            .parked_threads_mut(self.p.pid)
            .find_map(|(_, t)| t.take_pending(mask))
    }
}

/// One `struct signalfd_siginfo`.
fn record(sig: u64, info: Option<SigInfo>) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0..4].copy_from_slice(&(sig as u32).to_le_bytes()); // ssi_signo
    let Some(info) = info else {
        return r;
    };
    r[8..12].copy_from_slice(&info.code.to_le_bytes()); // ssi_code
    if info.code == SI_TIMER {
        r[24..28].copy_from_slice(&(info.pid as u32).to_le_bytes()); // ssi_tid: the timer
        r[32..36].copy_from_slice(&(info.overrun as u32).to_le_bytes()); // ssi_overrun
    } else {
        r[12..16].copy_from_slice(&(info.pid as u32).to_le_bytes()); // ssi_pid
    }
    r[40..44].copy_from_slice(&info.status.to_le_bytes()); // ssi_status
    r[44..48].copy_from_slice(&(info.value as i32).to_le_bytes()); // ssi_int
    r[48..56].copy_from_slice(&info.value.to_le_bytes()); // ssi_ptr
    r[72..80].copy_from_slice(&info.addr.to_le_bytes()); // ssi_addr
    r
}
