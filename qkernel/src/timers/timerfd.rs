//! timerfd(2): a timer behind a descriptor. Its expiries are counted, not signalled: a read
//! takes the count (waiting while it is zero), poll and epoll see it readable while it is
//! not. The count is brought up to date whenever it is looked at (from the monotonic clock),
//! so nothing has to fire on time; a wait that would outlast the next expiry ends there and
//! looks again. Like an eventfd it belongs to the kernel, shared by whoever holds it.

use super::{put_two_times, shown, two_times, Arming};
use crate::errno::*;
use crate::fs::FileKind;
use crate::machine::Machine;
use crate::syscalls::Kernel;

const TFD_TIMER_ABSTIME: u64 = 1;
const TFD_TIMER_CANCEL_ON_SET: u64 = 2;
const TFD_NONBLOCK: u64 = 0o4000;
const TFD_CLOEXEC: u64 = 0o2000000;
/// The most timerfds the container may hold at once (each is a few words; Linux bounds them
/// by the descriptor limit, which is lower per process).
const MAX_TIMERFDS: usize = 1 << 16;
/// Asks the caller to park the reading thread until [`Kernel::timerfd_wake`] (a read that
/// waits for the next expiry while other threads may run).
pub(crate) const ETIMERFD_WAIT: i64 = 517;

#[derive(Debug)]
pub struct TimerFd {
    /// `CLOCK_REALTIME` (an absolute time is on the wall clock) or a monotonic one.
    realtime: bool,
    arming: Option<Arming>,
    /// Expiries not yet read.
    ticks: u64,
}

impl TimerFd {
    /// Counts the expiries due by `now` (monotonic ns).
    fn catch_up(&mut self, now: u64) {
        let Some(a) = self.arming else { return };
        if now < a.next {
            return;
        }
        let (missed, next) = a.expire(now);
        self.ticks = self.ticks.saturating_add(1 + missed as u64);
        self.arming = next;
    }
}

impl Kernel {
    /// timerfd_create(2).
    pub(crate) fn timerfd_create(&mut self, clock: u64, flags: u64) -> Result<i64, i64> {
        // CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME and their _ALARM forms (the
        // container never suspends, so BOOTTIME counts as MONOTONIC does).
        let realtime = match clock {
            0 | 8 => true,
            1 | 7 | 9 => false,
            _ => return Err(EINVAL),
        };
        if flags & !(TFD_NONBLOCK | TFD_CLOEXEC) != 0 {
            return Err(EINVAL);
        }
        if self.timerfds.len() >= MAX_TIMERFDS && self.timerfds.iter().all(Option::is_some) {
            return Err(ENOMEM);
        }
        let timer = TimerFd {
            realtime,
            arming: None,
            ticks: 0,
        };
        let id = crate::put_in_vacancy(&mut self.timerfds, timer) as u32;
        // O_RDWR, as Linux opens it (a write is then EINVAL, not EBADF).
        let status = 2 | (flags & TFD_NONBLOCK) as i32;
        self.p
            .fds
            .install_kind(FileKind::TimerFd(id), status, flags & TFD_CLOEXEC != 0)
            .inspect_err(|_| self.timerfds[id as usize] = None)
    }

    fn timerfd_of(&mut self, fd: u64) -> Result<u32, i64> {
        match self.p.fds.kind(fd)? {
            FileKind::TimerFd(id) => Ok(*id),
            _ => Err(EINVAL),
        }
    }

    fn timerfd_mut(&mut self, id: u32) -> Result<&mut TimerFd, i64> {
        self.timerfds
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)
    }

    /// timerfd_settime(2): arms (or, with a zero value, disarms) and forgets the expiries
    /// not yet read.
    pub(crate) fn timerfd_settime(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        flags: u64,
        new: u64,
        old: u64,
    ) -> Result<i64, i64> {
        if flags & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0 {
            return Err(EINVAL);
        }
        let id = self.timerfd_of(fd)?;
        let (interval, value) = two_times(m, new, 1)?;
        let (now, real_now) = (m.monotonic_ns(), m.realtime_ns());
        let t = self.timerfd_mut(id)?;
        t.catch_up(now);
        let previous = shown(t.arming, now);
        t.arming = (value != 0).then(|| {
            let next = match (flags & TFD_TIMER_ABSTIME != 0, t.realtime) {
                (false, _) => now.saturating_add(value),
                (true, true) => now.saturating_add(value.saturating_sub(real_now)),
                (true, false) => value,
            };
            // An absolute time already past expires at once.
            Arming {
                next: next.max(1),
                interval,
            }
        });
        t.ticks = 0;
        // Waiters look again: a read parked on the old arming waits for the new one.
        self.procs.wake_blocked();
        if old != 0 {
            put_two_times(m, old, previous, 1)?;
        }
        Ok(0)
    }

    /// timerfd_gettime(2): the interval and the time to the next expiry.
    pub(crate) fn timerfd_gettime(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        cur: u64,
    ) -> Result<i64, i64> {
        let id = self.timerfd_of(fd)?;
        let now = m.monotonic_ns();
        let t = self.timerfd_mut(id)?;
        t.catch_up(now);
        put_two_times(m, cur, shown(t.arming, now), 1)?;
        Ok(0)
    }

    /// A read: the expiries since the last one (8 bytes), waiting while there are none.
    /// Waiting alone, it sleeps here until the next expiry (a signal with a handler ends it:
    /// EINTR); beside other threads it parks ([`ETIMERFD_WAIT`]) until then.
    pub(crate) fn timerfd_read(
        &mut self,
        m: &mut dyn Machine,
        id: u32,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        if buf.len() < 8 {
            return Err(EINVAL);
        }
        loop {
            let now = m.monotonic_ns();
            let t = self.timerfd_mut(id)?;
            t.catch_up(now);
            if t.ticks > 0 {
                buf[..8].copy_from_slice(&t.ticks.to_le_bytes());
                t.ticks = 0;
                return Ok(8);
            }
            let next = t.arming.map(|a| a.next);
            if self.without_waiting(nonblocking) {
                return Err(EAGAIN);
            }
            let Some(next) = next else {
                // Disarmed: only a settime (which wakes the blocked) can change that.
                return Err(crate::pipe::ERESTART);
            };
            if !self.procs_alone() || self.host_requests {
                self.timerfd_wake = next;
                return Err(ETIMERFD_WAIT);
            }
            m.sleep_ns(next.min(self.next_timer).saturating_sub(now));
            self.take_host_events(m);
            if self.t.deliverable().is_some() || m.cancelled() {
                return Err(EINTR);
            }
        }
    }

    /// Poll readiness: readable while expiries wait to be read.
    pub(crate) fn timerfd_ready(&mut self, now: u64, id: u32) -> bool {
        self.timerfd_mut(id).is_ok_and(|t| {
            t.catch_up(now);
            t.ticks > 0
        })
    }

    /// The next expiry (monotonic ns) of the armed timerfds among `fds`: a wait on them must
    /// end by then to see them become readable.
    pub(crate) fn timerfd_deadline(&self, fds: impl Iterator<Item = i32>) -> Option<u64> {
        fds.filter_map(|fd| match self.p.fds.kind(fd as u64) {
            Ok(FileKind::TimerFd(id)) => self
                .timerfds
                .get(*id as usize)
                .and_then(Option::as_ref)
                .and_then(|t| t.arming)
                .map(|a| a.next),
            _ => None,
        })
        .min()
    }

    /// Drops the timer once no process holds it.
    pub(crate) fn timerfd_closed(&mut self, id: u32) {
        let kind = FileKind::TimerFd(id);
        if !self.p.fds.refers_to(&kind) && !self.held_elsewhere(&kind) {
            if let Some(slot) = self.timerfds.get_mut(id as usize) {
                *slot = None;
            }
        }
    }
}
