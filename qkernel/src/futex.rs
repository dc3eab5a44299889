//! futex(2): the app's threads wait on a word of their memory and wake each other.
//!
//! A waiter parks its thread ([`State::Futex`]) keyed by its process and the word's address;
//! every process has its own memory (fork copies it), so a key never spans processes. The
//! value check and the park happen under the one kernel lock, so a wake between them cannot
//! be lost, which is the whole contract of a futex.

use crate::errno::*;
use crate::machine::Machine;
use crate::process::State;
use crate::syscalls::Kernel;

const WAIT: u64 = 0;
const WAKE: u64 = 1;
const REQUEUE: u64 = 3;
const CMP_REQUEUE: u64 = 4;
const WAKE_OP: u64 = 5;
const WAIT_BITSET: u64 = 9;
const WAKE_BITSET: u64 = 10;
const CLOCK_REALTIME_FLAG: u64 = 256;
/// The operations that have a command in their low bits (FUTEX_PRIVATE_FLAG is 128, and
/// every futex is private to its process here anyway).
const CMD_MASK: u64 = 0x7f;

/// Internal errno: the call parks its thread on a futex (see [`Kernel::park_on_futex`]).
/// Never reaches the app.
pub const EFUTEX: i64 = 515;

/// A wait the running thread is about to start (kept between the call and its park).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FutexWait {
    addr: u64,
    bitset: u32,
    /// Monotonic deadline, u64::MAX for none.
    until: u64,
}

/// The arguments of one futex call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FutexArgs {
    pub(crate) uaddr: u64,
    pub(crate) op: u64,
    pub(crate) val: u64,
    /// The timeout pointer, or (requeue, wake_op) a second count.
    pub(crate) timeout: u64,
    pub(crate) uaddr2: u64,
    pub(crate) val3: u64,
}

fn read_word(m: &dyn Machine, addr: u64) -> Result<u32, i64> {
    if addr % 4 != 0 {
        return Err(EINVAL);
    }
    let mut w = [0u8; 4];
    m.read(addr, &mut w).map_err(|_| EFAULT)?;
    Ok(u32::from_le_bytes(w))
}

impl Kernel {
    /// futex(2): WAIT, WAKE, their BITSET forms, REQUEUE, CMP_REQUEUE and WAKE_OP.
    pub(crate) fn futex(&mut self, m: &mut dyn Machine, a: FutexArgs) -> Result<i64, i64> {
        let count = |v: u64| (v as u32).min(i32::MAX as u32) as usize;
        match a.op & CMD_MASK {
            cmd @ (WAIT | WAIT_BITSET) => {
                let bitset = if cmd == WAIT { u32::MAX } else { a.val3 as u32 };
                if bitset == 0 {
                    return Err(EINVAL);
                }
                if read_word(m, a.uaddr)? != a.val as u32 {
                    return Err(EAGAIN);
                }
                let until = match a.timeout {
                    0 => u64::MAX,
                    ts => {
                        let t = crate::syscalls::read_timespec(m, ts)?;
                        // FUTEX_WAIT's timeout is relative; FUTEX_WAIT_BITSET's absolute.
                        if cmd == WAIT {
                            m.monotonic_ns().saturating_add(t)
                        } else if a.op & CLOCK_REALTIME_FLAG != 0 {
                            let now = m.monotonic_ns();
                            now.saturating_add(t.saturating_sub(m.realtime_ns()))
                        } else {
                            t
                        }
                    }
                };
                self.futex_wait = Some(FutexWait {
                    addr: a.uaddr,
                    bitset,
                    until,
                });
                Err(EFUTEX)
            }
            WAKE => Ok(self.futex_wake(a.uaddr, count(a.val), u32::MAX) as i64),
            WAKE_BITSET => {
                if a.val3 as u32 == 0 {
                    return Err(EINVAL);
                }
                Ok(self.futex_wake(a.uaddr, count(a.val), a.val3 as u32) as i64)
            }
            cmd @ (REQUEUE | CMP_REQUEUE) => {
                if cmd == CMP_REQUEUE && read_word(m, a.uaddr)? != a.val3 as u32 {
                    return Err(EAGAIN);
                }
                let woken = self.futex_wake(a.uaddr, count(a.val), u32::MAX);
                let moved = self.futex_requeue(a.uaddr, a.uaddr2, count(a.timeout));
                Ok((woken + if cmd == CMP_REQUEUE { moved } else { 0 }) as i64)
            }
            WAKE_OP => self.futex_wake_op(m, a),
            _ => Err(ENOSYS),
        }
    }

    /// Parks the running thread in the wait [`Kernel::futex`] checked. The registers it
    /// resumes with return ETIMEDOUT unless a wake (0) or a signal (EINTR) changes that.
    pub(crate) fn park_on_futex(&mut self, m: &mut dyn Machine) -> crate::SyscallOutcome {
        let Some(w) = self.futex_wait.take() else {
            return crate::SyscallOutcome::Return(-EINVAL);
        };
        let mut regs = m.user_regs();
        regs.rax = (-ETIMEDOUT) as u64;
        let seq = self.procs.next_futex_seq();
        self.switch_away(m, regs, false, move |saved| State::Futex {
            saved,
            addr: w.addr,
            bitset: w.bitset,
            until: w.until,
            seq,
        })
    }

    /// Wakes up to `n` threads of the running process waiting on `addr` with a bitset
    /// meeting `bitset`, longest waiting first; returns how many.
    pub(crate) fn futex_wake(&mut self, addr: u64, n: usize, bitset: u32) -> usize {
        let pid = self.p.pid;
        let tids = self.procs.futex_waiters(pid, addr, bitset);
        let woken = tids.len().min(n);
        for tid in &tids[..woken] {
            self.procs.wake_futex_waiter(*tid);
        }
        woken
    }

    /// Moves up to `n` waiters on `from` to wait on `to`; returns how many.
    fn futex_requeue(&mut self, from: u64, to: u64, n: usize) -> usize {
        let tids = self.procs.futex_waiters(self.p.pid, from, u32::MAX);
        let moved = tids.len().min(n);
        for tid in &tids[..moved] {
            self.procs.requeue_futex_waiter(*tid, to);
        }
        moved
    }

    /// FUTEX_WAKE_OP: changes the word at `uaddr2` by the op in `val3`, wakes `val` waiters
    /// on `uaddr`, and `timeout` (a count here) on `uaddr2` if the old word met the compare.
    fn futex_wake_op(&mut self, m: &mut dyn Machine, a: FutexArgs) -> Result<i64, i64> {
        let enc = a.val3 as u32;
        let op = (enc >> 28) & 7;
        let shift_arg = (enc >> 28) & 8 != 0;
        let cmp = (enc >> 24) & 15;
        let mut oparg = (enc >> 12) & 0xfff;
        let cmparg = enc & 0xfff;
        if shift_arg {
            oparg = 1u32.checked_shl(oparg).unwrap_or(0);
        }
        let old = read_word(m, a.uaddr2)?;
        let new = match op {
            0 => oparg,                   // SET
            1 => old.wrapping_add(oparg), // ADD
            2 => old | oparg,             // OR
            3 => old & !oparg,            // ANDN
            4 => old ^ oparg,             // XOR
            _ => return Err(ENOSYS),
        };
        m.write(a.uaddr2, &new.to_le_bytes()).map_err(|_| EFAULT)?;
        let met = match cmp {
            0 => old == cmparg,
            1 => old != cmparg,
            2 => (old as i32) < cmparg as i32,
            3 => old as i32 <= cmparg as i32,
            4 => old as i32 > cmparg as i32,
            5 => old as i32 >= cmparg as i32,
            _ => return Err(ENOSYS),
        };
        let count = |v: u64| (v as u32).min(i32::MAX as u32) as usize;
        let mut woken = self.futex_wake(a.uaddr, count(a.val), u32::MAX);
        if met {
            woken += self.futex_wake(a.uaddr2, count(a.timeout), u32::MAX);
        }
        Ok(woken as i64)
    }
}
