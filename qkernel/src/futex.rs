//! futex(2): the app's threads wait on a word of their memory and wake each other.
//!
//! A waiter parks its thread ([`State::Futex`]) keyed by its process and the word's address;
//! a word in shared memory (anonymous or a file's) is also keyed by where it is in the
//! machine ([`Machine::shared_memory_key`]), the same in every process that maps it at
//! whatever address, so process-shared mutexes work across processes. The value check and the park happen under the one kernel lock, so
//! a wake between them cannot be lost, which is the whole contract of a futex.
//!
//! Robust futexes: set_robust_list registers a thread's list of held robust mutexes; when
//! the thread dies (it exits, its process exits or is killed, without unlocking), each lock
//! it still owns gets FUTEX_OWNER_DIED and one waiter is woken, so pthread_mutex_lock there
//! returns EOWNERDEAD instead of hanging.

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
    /// The word's key when it is in shared memory (see the module doc).
    shared: Option<u64>,
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
                    shared: self.shared_key(m, a.uaddr),
                    bitset,
                    until,
                });
                Err(EFUTEX)
            }
            WAKE => Ok(self.futex_wake(m, a.uaddr, count(a.val), u32::MAX) as i64),
            WAKE_BITSET => {
                if a.val3 as u32 == 0 {
                    return Err(EINVAL);
                }
                Ok(self.futex_wake(m, a.uaddr, count(a.val), a.val3 as u32) as i64)
            }
            cmd @ (REQUEUE | CMP_REQUEUE) => {
                if cmd == CMP_REQUEUE && read_word(m, a.uaddr)? != a.val3 as u32 {
                    return Err(EAGAIN);
                }
                let woken = self.futex_wake(m, a.uaddr, count(a.val), u32::MAX);
                let moved = self.futex_requeue(m, a.uaddr, a.uaddr2, count(a.timeout));
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
            shared: w.shared,
        })
    }

    /// The machine-wide key of the futex word at `addr` when it is in shared memory of the
    /// running process.
    fn shared_key(&self, m: &dyn Machine, addr: u64) -> Option<u64> {
        self.p
            .vm
            .backing(addr, addr.saturating_add(4))
            .is_some_and(crate::syscalls::Backing::shared)
            .then(|| m.shared_memory_key(addr))
            .flatten()
    }

    /// Wakes up to `n` threads of the running process waiting on `addr` with a bitset
    /// meeting `bitset`, longest waiting first; returns how many.
    pub(crate) fn futex_wake(
        &mut self,
        m: &dyn Machine,
        addr: u64,
        n: usize,
        bitset: u32,
    ) -> usize {
        let pid = self.p.pid;
        let key = self.shared_key(m, addr);
        let tids = self.procs.futex_waiters(pid, addr, bitset, key);
        let woken = tids.len().min(n);
        for tid in &tids[..woken] {
            self.procs.wake_futex_waiter(*tid);
        }
        woken
    }

    /// Moves up to `n` waiters on `from` to wait on `to`; returns how many.
    fn futex_requeue(&mut self, m: &dyn Machine, from: u64, to: u64, n: usize) -> usize {
        let key = self.shared_key(m, from);
        let tids = self.procs.futex_waiters(self.p.pid, from, u32::MAX, key);
        let moved = tids.len().min(n);
        let to_key = self.shared_key(m, to);
        for tid in &tids[..moved] {
            self.procs.requeue_futex_waiter(*tid, to, to_key);
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
        let mut woken = self.futex_wake(m, a.uaddr, count(a.val), u32::MAX);
        if met {
            woken += self.futex_wake(m, a.uaddr2, count(a.timeout), u32::MAX);
        }
        Ok(woken as i64)
    }
}

const FUTEX_WAITERS: u32 = 0x8000_0000;
const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
/// `struct robust_list_head`: next pointer, futex offset, pending entry.
const ROBUST_HEAD_LEN: u64 = 24;
/// Most entries walked in one robust list (Linux's ROBUST_LIST_LIMIT): a list the app made
/// into a loop cannot hold the kernel.
const ROBUST_LIST_LIMIT: usize = 2048;

impl Kernel {
    /// set_robust_list(2): the head of the calling thread's list (Linux wants its exact size).
    pub(crate) fn set_robust_list(&mut self, head: u64, len: u64) -> Result<i64, i64> {
        if len != ROBUST_HEAD_LEN {
            return Err(EINVAL);
        }
        self.t.robust_list = head;
        Ok(0)
    }

    /// get_robust_list(2) for the calling thread (pid 0 or its own tid); another thread's is
    /// ESRCH here (Linux asks for ptrace rights, which nothing in the container has).
    pub(crate) fn get_robust_list(
        &mut self,
        m: &mut dyn Machine,
        pid: u64,
        head_ptr: u64,
        len_ptr: u64,
    ) -> Result<i64, i64> {
        if pid != 0 && pid as i64 != self.t.tid {
            return Err(ESRCH);
        }
        m.write(head_ptr, &self.t.robust_list.to_le_bytes())
            .map_err(|_| EFAULT)?;
        m.write(len_ptr, &ROBUST_HEAD_LEN.to_le_bytes())
            .map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// What the death of thread `tid` does to the robust futexes in its list at `head`
    /// (Linux's exit_robust_list), read in the current address space: every word is the
    /// app's and untrusted, a bad pointer ends the walk, and at most ROBUST_LIST_LIMIT
    /// entries are followed.
    pub(crate) fn release_robust_list(&mut self, m: &mut dyn Machine, tid: i64, head: u64) {
        if head == 0 {
            return;
        }
        let read = |a: u64| -> Option<u64> {
            let mut b = [0u8; 8];
            m.read(a, &mut b).ok().map(|()| u64::from_le_bytes(b))
        };
        let (Some(first), Some(offset), Some(pending)) =
            (read(head), read(head + 8), read(head + 16))
        else {
            return;
        };
        // Bit 0 of an entry marks a PI futex; the address is the rest.
        let pending = pending & !1;
        let mut words = Vec::new();
        let mut entry = first & !1;
        while entry != head && words.len() < ROBUST_LIST_LIMIT {
            let Some(next) = read(entry) else { break };
            if entry != pending {
                words.push(entry.wrapping_add(offset));
            }
            entry = next & !1;
        }
        if pending != 0 {
            words.push(pending.wrapping_add(offset));
        }
        for word in words {
            self.owner_died(m, word, tid);
        }
    }

    /// Marks the robust futex at `addr` as left by its dead owner `tid` and wakes a waiter.
    fn owner_died(&mut self, m: &mut dyn Machine, addr: u64, tid: i64) {
        let Ok(word) = read_word(m, addr) else { return };
        if i64::from(word & FUTEX_TID_MASK) != tid {
            return; // not (or no longer) this thread's
        }
        let marked = (word & FUTEX_WAITERS) | FUTEX_OWNER_DIED;
        if m.write(addr, &marked.to_le_bytes()).is_ok() && word & FUTEX_WAITERS != 0 {
            self.futex_wake(m, addr, 1, u32::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_machine::{TestMachine, BASE};

    fn put(m: &mut TestMachine, at: u64, v: u64) {
        m.write(at, &v.to_le_bytes()).unwrap();
    }

    #[test]
    fn a_dead_threads_robust_locks_are_marked_and_a_looping_list_ends() {
        let m = &mut TestMachine::region();
        let mut k = Kernel::new(0x100_0000, "/bin/app", "/");
        let tid = k.t.tid;
        // head -> a -> b -> head; futex words at entry + 32; b's owner is someone else.
        let (head, a, b) = (BASE, BASE + 0x100, BASE + 0x200);
        put(m, head, a);
        put(m, head + 8, 32);
        put(m, head + 16, 0);
        put(m, a, b);
        put(m, b, head);
        m.write(a + 32, &(tid as u32 | FUTEX_WAITERS).to_le_bytes())
            .unwrap();
        m.write(b + 32, &7u32.to_le_bytes()).unwrap();
        k.release_robust_list(m, tid, head);
        assert_eq!(
            read_word(m, a + 32).unwrap(),
            FUTEX_WAITERS | FUTEX_OWNER_DIED
        );
        assert_eq!(
            read_word(m, b + 32).unwrap(),
            7,
            "another owner's lock is left"
        );
        // A list the app looped (b -> b) or pointed outside memory ends the walk.
        put(m, b, b);
        k.release_robust_list(m, tid, head);
        put(m, a, 0xdead_0000);
        k.release_robust_list(m, tid, head);
        assert_eq!(k.set_robust_list(head, 16), Err(EINVAL));
    }
}
