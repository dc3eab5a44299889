//! Interval timers: alarm, setitimer and getitimer (`ITIMER_REAL`, `ITIMER_VIRTUAL`,
//! `ITIMER_PROF`) and POSIX timers (timer_create and friends). Each expires into a signal for
//! its process (or one of its threads).
//!
//! Wall-clock timers keep their deadlines on the monotonic clock (a `CLOCK_REALTIME` absolute
//! time is converted when the timer is armed: the container cannot set the clock) and fire at
//! the deadline when the container idles, at the next syscall or preemption tick while it
//! computes. CPU-time timers (`ITIMER_VIRTUAL`, `ITIMER_PROF`, timers on the process's or one
//! of its threads' CPU clock) count CPU time, which only grows while the process runs, so they
//! are looked at on its calls and on preemption ticks (every tick while one is armed). The
//! process's CPU time is all the vCPU spent for it, the app's and qkernel's alike:
//! `ITIMER_VIRTUAL` counts what `ITIMER_PROF` counts. Another process's CPU clock is refused
//! with `EINVAL`, as Linux refuses a timer on it.

mod timerfd;

pub(crate) use timerfd::{TimerFd, ETIMERFD_WAIT};

use crate::errno::*;
use crate::machine::Machine;
use crate::process::CpuClockId;
use crate::signal::{SigInfo, SI_KERNEL, SI_TIMER};
use crate::syscalls::Kernel;

const SIGALRM: u64 = 14;
const SIGVTALRM: u64 = 26;
const SIGPROF: u64 = 27;
const NS: u64 = 1_000_000_000;
/// The most POSIX timers a process may hold (Linux bounds them by RLIMIT_SIGPENDING).
const MAX_TIMERS: usize = 1024;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;
const TIMER_ABSTIME: u64 = 1;

/// When a timer next expires (monotonic ns) and its reload interval (0: once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Arming {
    next: u64,
    interval: u64,
}

impl Arming {
    /// Expiries missed beyond the first by `now`, after which it is re-armed (or, with no
    /// interval, spent: `None`).
    fn expire(self, now: u64) -> (i32, Option<Arming>) {
        if self.interval == 0 {
            return (0, None);
        }
        let missed = (now - self.next) / self.interval;
        let next = (missed + 1)
            .checked_mul(self.interval)
            .and_then(|d| self.next.checked_add(d))
            .unwrap_or(u64::MAX); // centuries away: never
        (
            missed.min(i32::MAX as u64) as i32,
            Some(Arming { next, ..self }),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notify {
    None,
    Process,
    Thread(i64),
}

/// What a POSIX timer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Realtime,
    Monotonic,
    ProcessCpu,
    /// A thread of the timer's own process.
    ThreadCpu(i64),
}

impl Clock {
    fn is_cpu(self) -> bool {
        matches!(self, Clock::ProcessCpu | Clock::ThreadCpu(_))
    }
}

/// The CPU times the CPU-time timers of the running process count by: its own, and that of
/// each thread a timer watches.
pub(crate) struct CpuNow {
    process: u64,
    threads: Vec<(i64, u64)>,
}

#[derive(Debug, Clone)]
struct PosixTimer {
    clock: Clock,
    signo: u64,
    value: u64,
    notify: Notify,
    arming: Option<Arming>,
    /// The overrun its last signal carried (timer_getoverrun): expiries missed between two
    /// looks, and those while the signal was still pending (`Kernel::overrun_pending`).
    overrun: i32,
}

/// A process's timers. Not inherited by a fork child; exec keeps `ITIMER_REAL` and deletes
/// the POSIX timers, as on Linux.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timers {
    real: Option<Arming>,
    /// `ITIMER_VIRTUAL` and `ITIMER_PROF`, on the process's CPU time.
    virt: Option<Arming>,
    prof: Option<Arming>,
    posix: Vec<Option<PosixTimer>>,
}

/// A timer's signal, due now: (thread, or the whole process), the signal, its siginfo.
pub(crate) type Expiry = (Option<i64>, u64, SigInfo);

impl Timers {
    /// The earliest expiry of any armed wall-clock timer.
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        let posix = self
            .posix
            .iter()
            .flatten()
            .filter(|t| !t.clock.is_cpu())
            .filter_map(|t| t.arming);
        self.real.into_iter().chain(posix).map(|a| a.next).min()
    }

    /// Whether a CPU-time timer is armed (the process's CPU time must then be watched).
    pub(crate) fn cpu_armed(&self) -> bool {
        self.virt.is_some()
            || self.prof.is_some()
            || self
                .posix
                .iter()
                .flatten()
                .any(|t| t.clock.is_cpu() && t.arming.is_some())
    }

    /// The threads whose CPU clocks armed timers watch.
    fn watched_threads(&self) -> Vec<i64> {
        let armed = self.posix.iter().flatten().filter(|t| t.arming.is_some());
        armed
            .filter_map(|t| match t.clock {
                Clock::ThreadCpu(tid) => Some(tid),
                _ => None,
            })
            .collect()
    }

    /// Exec: the POSIX timers go; `ITIMER_REAL` stays.
    pub(crate) fn exec(&mut self) {
        self.posix.clear();
    }

    /// Takes the expiries due by `now` (monotonic ns) and, with `cpu`, those of the CPU-time
    /// timers due by the CPU times it gives; re-arms periodic timers.
    pub(crate) fn take_due(&mut self, now: u64, cpu_now: Option<&CpuNow>, out: &mut Vec<Expiry>) {
        let cpu = cpu_now.map(|c| c.process);
        let itimers = [
            (&mut self.real, Some(now), SIGALRM),
            (&mut self.virt, cpu, SIGVTALRM),
            (&mut self.prof, cpu, SIGPROF),
        ];
        for (timer, clock, sig) in itimers {
            let Some(clock) = clock else { continue };
            if let Some(a) = timer.filter(|a| a.next <= clock) {
                *timer = a.expire(clock).1;
                let info = SigInfo {
                    code: SI_KERNEL,
                    ..SigInfo::default()
                };
                out.push((None, sig, info));
            }
        }
        for (id, slot) in self.posix.iter_mut().enumerate() {
            let Some(t) = slot else { continue };
            let now = match (t.clock, cpu_now) {
                (Clock::Realtime | Clock::Monotonic, _) => now,
                (_, None) => continue,
                (Clock::ProcessCpu, Some(c)) => c.process,
                (Clock::ThreadCpu(tid), Some(c)) => {
                    // A thread that is gone gains no more CPU time: its timers never fire.
                    match c.threads.iter().find(|(t, _)| *t == tid) {
                        Some((_, ns)) => *ns,
                        None => continue,
                    }
                }
            };
            let Some(a) = t.arming.filter(|a| a.next <= now) else {
                continue;
            };
            let (overrun, next) = a.expire(now);
            t.arming = next;
            t.overrun = overrun;
            let info = SigInfo {
                code: SI_TIMER,
                pid: id as i64,
                overrun,
                value: t.value,
                ..SigInfo::default()
            };
            match t.notify {
                Notify::None => {}
                Notify::Process => out.push((None, t.signo, info)),
                Notify::Thread(tid) => out.push((Some(tid), t.signo, info)),
            }
        }
    }

    fn posix_mut(&mut self, id: u64) -> Result<&mut PosixTimer, i64> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.posix.get_mut(i))
            .and_then(Option::as_mut)
            .ok_or(EINVAL)
    }
}

/// A `struct timespec` or `struct timeval` (`unit` ns per unit of its second field) as ns;
/// EINVAL when a field is out of range.
pub(crate) fn to_ns(secs: i64, frac: i64, unit: i64) -> Result<u64, i64> {
    if secs < 0 || frac < 0 || frac >= NS as i64 / unit {
        return Err(EINVAL);
    }
    Ok((secs as u64)
        .saturating_mul(NS)
        .saturating_add((frac * unit) as u64))
}

fn two_times(m: &dyn Machine, addr: u64, unit: i64) -> Result<(u64, u64), i64> {
    let mut b = [0u8; 32];
    m.read(addr, &mut b).map_err(|_| EFAULT)?;
    let f = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    Ok((to_ns(f(0), f(1), unit)?, to_ns(f(2), f(3), unit)?))
}

fn put_two_times(
    m: &mut dyn Machine,
    addr: u64,
    (interval, value): (u64, u64),
    unit: u64,
) -> Result<(), i64> {
    let mut b = [0u8; 32];
    for (i, ns) in [interval, value].into_iter().enumerate() {
        b[i * 16..i * 16 + 8].copy_from_slice(&(ns / NS).to_le_bytes());
        b[i * 16 + 8..i * 16 + 16].copy_from_slice(&((ns % NS) / unit).to_le_bytes());
    }
    m.write(addr, &b).map_err(|_| EFAULT)
}

/// What an arming shows: (interval, time left), zeros when disarmed.
fn shown(a: Option<Arming>, now: u64) -> (u64, u64) {
    // An expiry not yet delivered shows 1 ns left, never 0 (which would read as disarmed).
    a.map_or((0, 0), |a| (a.interval, a.next.saturating_sub(now).max(1)))
}

impl Kernel {
    /// The earliest expiry of any process's timers (monotonic ns; `u64::MAX`: none armed).
    pub(crate) fn recompute_next_timer(&mut self) {
        let parked = self.procs.parked.values().filter(|p| p.zombie.is_none());
        self.next_timer = std::iter::once(&self.p)
            .chain(parked.map(|p| &p.proc))
            .filter_map(|p| p.timers.next_expiry())
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Sends the signals of every timer due by now.
    pub(crate) fn fire_timers(&mut self, m: &mut dyn Machine) {
        let now = m.monotonic_ns();
        let wall_due = now >= self.next_timer;
        // Only the running process gains CPU time.
        let cpu = self.p.timers.cpu_armed().then(|| {
            let process = self.process_cpu_ns(m);
            let watched = self.p.timers.watched_threads();
            let threads = watched
                .into_iter()
                .filter_map(|tid| Some((tid, self.own_thread_cpu_ns(tid)?)))
                .collect();
            CpuNow { process, threads }
        });
        if !wall_due && cpu.is_none() {
            return;
        }
        let mut due: Vec<(i64, Expiry)> = Vec::new();
        let mut out = Vec::new();
        self.p.timers.take_due(now, cpu.as_ref(), &mut out);
        due.extend(out.drain(..).map(|e| (self.p.pid, e)));
        if wall_due {
            for (pid, p) in self.procs.parked.iter_mut() {
                if p.zombie.is_none() {
                    p.proc.timers.take_due(now, None, &mut out);
                    due.extend(out.drain(..).map(|e| (*pid, e)));
                }
            }
            self.recompute_next_timer();
        }
        for (pid, (tid, sig, info)) in due {
            tracing::trace!(pid, ?tid, sig, "timer expired");
            if info.code == SI_TIMER && self.overrun_pending(pid, tid, sig, info) {
                continue;
            }
            match tid {
                Some(tid)
                    if self
                        .proc_of(pid)
                        .is_some_and(|p| crate::signal::has_handler(p, sig)) =>
                {
                    self.post_to_thread(tid, sig, info)
                }
                _ => self.signal_asynchronously(m, pid, sig, info),
            }
        }
    }

    /// Whether timer `info.pid`'s previous signal is still pending for process `pid` (or its
    /// thread `tid`): then this expiry only adds to that signal's overrun, which
    /// timer_getoverrun reports too.
    fn overrun_pending(&mut self, pid: i64, tid: Option<i64>, sig: u64, info: SigInfo) -> bool {
        let by = info.overrun.saturating_add(1);
        let mut overrun = None;
        if pid == self.p.pid && tid.is_none_or(|t| t == self.t.tid) {
            overrun = self.t.add_timer_overrun(sig, info.pid, by);
        }
        if overrun.is_none() {
            overrun = self
                .procs
                .parked_threads_mut(pid)
                .filter(|(t, _)| tid.is_none_or(|want| want == *t))
                .find_map(|(_, t)| t.add_timer_overrun(sig, info.pid, by));
        }
        let Some(overrun) = overrun else {
            return false;
        };
        let timers = if pid == self.p.pid {
            Some(&mut self.p.timers)
        } else {
            self.procs.parked.get_mut(&pid).map(|p| &mut p.proc.timers)
        };
        if let Some(t) = timers.and_then(|t| t.posix_mut(info.pid as u64).ok()) {
            t.overrun = overrun;
        }
        true
    }

    /// alarm(2): `ITIMER_REAL` once in `secs`; returns the seconds the previous one had left.
    pub(crate) fn alarm(&mut self, m: &mut dyn Machine, secs: u64) -> Result<i64, i64> {
        let now = m.monotonic_ns();
        let arming = (secs != 0).then(|| Arming {
            next: now.saturating_add(secs.saturating_mul(NS)),
            interval: 0,
        });
        let old = std::mem::replace(&mut self.p.timers.real, arming);
        self.recompute_next_timer();
        // Rounded to the nearest second, and at least 1 while one was pending (as Linux).
        Ok(old.map_or(0, |a| {
            let left = a.next.saturating_sub(now);
            ((left + NS / 2) / NS).max(1) as i64
        }))
    }

    /// The itimer `which` names, and the present time of its clock.
    fn itimer(
        &mut self,
        m: &mut dyn Machine,
        which: u64,
    ) -> Result<(&mut Option<Arming>, u64), i64> {
        let now = match which {
            0 => m.monotonic_ns(),
            1 | 2 => self.process_cpu_ns(m),
            _ => return Err(EINVAL),
        };
        let t = &mut self.p.timers;
        let timer = match which {
            0 => &mut t.real,
            1 => &mut t.virt,
            _ => &mut t.prof,
        };
        Ok((timer, now))
    }

    /// setitimer(2).
    pub(crate) fn setitimer(
        &mut self,
        m: &mut dyn Machine,
        which: u64,
        new: u64,
        old: u64,
    ) -> Result<i64, i64> {
        let (interval, value) = if new == 0 {
            (0, 0)
        } else {
            two_times(m, new, 1000)?
        };
        let (timer, now) = self.itimer(m, which)?;
        let previous = shown(*timer, now);
        *timer = (value != 0).then(|| Arming {
            next: now.saturating_add(value),
            interval,
        });
        self.recompute_next_timer();
        if old != 0 {
            put_two_times(m, old, previous, 1000)?;
        }
        Ok(0)
    }

    /// getitimer(2).
    pub(crate) fn getitimer(
        &mut self,
        m: &mut dyn Machine,
        which: u64,
        cur: u64,
    ) -> Result<i64, i64> {
        let (timer, now) = self.itimer(m, which)?;
        let shown = shown(*timer, now);
        put_two_times(m, cur, shown, 1000)?;
        Ok(0)
    }

    /// timer_create(2) on `CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME` or
    /// `CLOCK_PROCESS_CPUTIME_ID`.
    pub(crate) fn timer_create(
        &mut self,
        m: &mut dyn Machine,
        clock: u64,
        sevp: u64,
        id_out: u64,
    ) -> Result<i64, i64> {
        let clock = match clock as i32 {
            0 => Clock::Realtime,
            1 | 7 => Clock::Monotonic,
            2 => Clock::ProcessCpu,
            3 => Clock::ThreadCpu(self.t.tid),
            8 | 9 => return Err(EPERM), // the alarm clocks need CAP_WAKE_ALARM
            // A CPU clock by id: glibc names its own process's this way, pthread_getcpuclockid
            // a thread's. Only the caller's own process and its threads.
            _ => match self.cpu_clock_of(clock) {
                Some(CpuClockId::Process(pid)) if pid == self.p.pid => Clock::ProcessCpu,
                Some(CpuClockId::Thread(tid)) if self.own_thread_cpu_ns(tid).is_some() => {
                    Clock::ThreadCpu(tid)
                }
                _ => return Err(EINVAL),
            },
        };
        let free = self.p.timers.posix.iter().position(Option::is_none);
        let id = free.unwrap_or(self.p.timers.posix.len());
        if id >= MAX_TIMERS {
            return Err(EAGAIN);
        }
        let (signo, value, notify) = if sevp == 0 {
            (SIGALRM, id as u64, Notify::Process)
        } else {
            let mut b = [0u8; 20];
            m.read(sevp, &mut b).map_err(|_| EFAULT)?;
            let value = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
            let signo = i32::from_le_bytes(b[8..12].try_into().unwrap_or_default());
            let how = i32::from_le_bytes(b[12..16].try_into().unwrap_or_default());
            let tid = i32::from_le_bytes(b[16..20].try_into().unwrap_or_default());
            let signo = u64::try_from(signo).map_err(|_| EINVAL)?;
            let notify = match how {
                SIGEV_NONE => Notify::None,
                SIGEV_SIGNAL => Notify::Process,
                SIGEV_THREAD_ID => {
                    let mine = i64::from(tid) == self.t.tid
                        || self.procs.threads_of(self.p.pid).contains(&i64::from(tid));
                    if !mine {
                        return Err(EINVAL);
                    }
                    Notify::Thread(i64::from(tid))
                }
                _ => return Err(EINVAL), // SIGEV_THREAD is the C library's, over SIGEV_THREAD_ID
            };
            if notify != Notify::None && !(1..=64).contains(&signo) {
                return Err(EINVAL);
            }
            (signo, value, notify)
        };
        m.write(id_out, &(id as i32).to_le_bytes())
            .map_err(|_| EFAULT)?;
        let timer = PosixTimer {
            clock,
            signo,
            value,
            notify,
            arming: None,
            overrun: 0,
        };
        match free {
            Some(i) => self.p.timers.posix[i] = Some(timer),
            None => self.p.timers.posix.push(Some(timer)),
        }
        Ok(id as i64)
    }

    /// timer_settime(2).
    pub(crate) fn timer_settime(
        &mut self,
        m: &mut dyn Machine,
        id: u64,
        flags: u64,
        new: u64,
        old: u64,
    ) -> Result<i64, i64> {
        let clock = self.p.timers.posix_mut(id)?.clock;
        let (interval, value) = two_times(m, new, 1)?;
        let now = self.clock_now(m, clock);
        let real_now = m.realtime_ns();
        let t = self.p.timers.posix_mut(id)?;
        let previous = shown(t.arming, now);
        t.arming = (value != 0).then(|| {
            let next = match (flags & TIMER_ABSTIME != 0, clock) {
                (false, _) => now.saturating_add(value),
                (true, Clock::Realtime) => now.saturating_add(value.saturating_sub(real_now)),
                (true, _) => value,
            };
            // An absolute time already past expires at once.
            Arming {
                next: next.max(1),
                interval,
            }
        });
        t.overrun = 0;
        self.recompute_next_timer();
        if old != 0 {
            put_two_times(m, old, previous, 1)?;
        }
        Ok(0)
    }

    /// The present time of what `clock` counts (monotonic ns for the wall clocks).
    fn clock_now(&mut self, m: &mut dyn Machine, clock: Clock) -> u64 {
        match clock {
            Clock::ProcessCpu => self.process_cpu_ns(m),
            Clock::ThreadCpu(tid) => {
                self.charge_cpu(m);
                self.own_thread_cpu_ns(tid).unwrap_or(0)
            }
            Clock::Realtime | Clock::Monotonic => m.monotonic_ns(),
        }
    }

    /// timer_gettime(2).
    pub(crate) fn timer_gettime(
        &mut self,
        m: &mut dyn Machine,
        id: u64,
        cur: u64,
    ) -> Result<i64, i64> {
        let clock = self.p.timers.posix_mut(id)?.clock;
        let now = self.clock_now(m, clock);
        let shown = shown(self.p.timers.posix_mut(id)?.arming, now);
        put_two_times(m, cur, shown, 1)?;
        Ok(0)
    }

    /// timer_getoverrun(2).
    pub(crate) fn timer_getoverrun(&mut self, id: u64) -> Result<i64, i64> {
        Ok(self.p.timers.posix_mut(id)?.overrun.into())
    }

    /// timer_delete(2).
    pub(crate) fn timer_delete(&mut self, id: u64) -> Result<i64, i64> {
        self.p.timers.posix_mut(id)?;
        self.p.timers.posix[id as usize] = None;
        self.recompute_next_timer();
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_timer_counts_the_expiries_it_missed_and_keeps_its_phase() {
        let a = Arming {
            next: 1000,
            interval: 100,
        };
        assert_eq!(
            a.expire(1000),
            (
                0,
                Some(Arming {
                    next: 1100,
                    interval: 100
                })
            )
        );
        assert_eq!(
            a.expire(1350),
            (
                3,
                Some(Arming {
                    next: 1400,
                    interval: 100
                })
            )
        );
        let once = Arming {
            next: 1000,
            interval: 0,
        };
        assert_eq!(once.expire(5000), (0, None));
        let late = Arming {
            next: u64::MAX - 10,
            interval: 100,
        };
        assert_eq!(late.expire(u64::MAX - 5).1.map(|a| a.next), Some(u64::MAX));
    }

    #[test]
    fn times_out_of_range_are_refused() {
        assert_eq!(to_ns(1, 999_999, 1000), Ok(1_999_999_000));
        assert_eq!(to_ns(1, 1_000_000, 1000), Err(EINVAL));
        assert_eq!(to_ns(-1, 0, 1), Err(EINVAL));
        assert_eq!(to_ns(0, -1, 1), Err(EINVAL));
    }
}
