//! Resource limits: getrlimit, setrlimit and prlimit64. Each process has Linux's defaults,
//! copies its parent's at fork and keeps them across exec. `RLIMIT_NOFILE` is enforced (the
//! lowest free descriptor must be under its soft limit, as on Linux); the others are kept and
//! reported, not enforced (`RLIMIT_CPU`, `RLIMIT_AS`...; the container's memory and pids
//! limits are what bounds it). A hard limit only goes down: raising one needs
//! CAP_SYS_RESOURCE, which container runtimes do not grant by default.

use crate::errno::*;
use crate::machine::Machine;
use crate::syscalls::Kernel;

pub(crate) const INFINITY: u64 = u64::MAX;
const RLIMIT_STACK: usize = 3;
const RLIMIT_CORE: usize = 4;
pub(crate) const RLIMIT_NOFILE: usize = 7;
const RLIMIT_MEMLOCK: usize = 8;
const RLIMIT_MSGQUEUE: usize = 12;
const RLIMIT_NICE: usize = 13;
const RLIMIT_RTPRIO: usize = 14;
const COUNT: usize = 16;
/// The most descriptors a process may raise its soft limit to.
pub(crate) const NOFILE_HARD: u64 = 65536;

/// A process's soft and hard limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits([(u64, u64); COUNT]);

impl Default for Limits {
    fn default() -> Self {
        let mut l = [(INFINITY, INFINITY); COUNT];
        l[RLIMIT_STACK] = (crate::elf::STACK_SIZE, INFINITY);
        l[RLIMIT_CORE] = (0, INFINITY);
        l[RLIMIT_NOFILE] = (crate::fs::MAX_FDS as u64, NOFILE_HARD);
        l[RLIMIT_MEMLOCK] = (8 << 20, 8 << 20);
        l[RLIMIT_MSGQUEUE] = (819_200, 819_200);
        l[RLIMIT_NICE] = (0, 0);
        l[RLIMIT_RTPRIO] = (0, 0);
        Limits(l)
    }
}

impl Kernel {
    /// prlimit64(2) (and getrlimit/setrlimit for the caller, `pid` 0): writes the old limits
    /// of `resource` to `old`, then sets those at `new`.
    pub(crate) fn prlimit(
        &mut self,
        m: &mut dyn Machine,
        pid: i64,
        resource: u64,
        (new, old): (u64, u64),
    ) -> Result<i64, i64> {
        let r = usize::try_from(resource)
            .ok()
            .filter(|r| *r < COUNT)
            .ok_or(EINVAL)?;
        let pid = if pid == 0 { self.p.pid } else { pid };
        let current = self.proc_of(pid).ok_or(ESRCH)?.limits.0[r];
        let wanted = match new {
            0 => None,
            va => {
                let mut b = [0u8; 16];
                m.read(va, &mut b).map_err(|_| EFAULT)?;
                let word =
                    |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
                let (soft, hard) = (word(0), word(8));
                if soft > hard {
                    return Err(EINVAL);
                }
                if hard > current.1 || (r == RLIMIT_NOFILE && hard > NOFILE_HARD) {
                    return Err(EPERM);
                }
                Some((soft, hard))
            }
        };
        if old != 0 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&current.0.to_le_bytes());
            b[8..].copy_from_slice(&current.1.to_le_bytes());
            m.write(old, &b).map_err(|_| EFAULT)?;
        }
        if let Some(limit) = wanted {
            let proc = if pid == self.p.pid {
                &mut self.p
            } else {
                &mut self.procs.parked.get_mut(&pid).ok_or(ESRCH)?.proc
            };
            proc.limits.0[r] = limit;
            if r == RLIMIT_NOFILE {
                proc.fds.set_limit(limit.0.min(NOFILE_HARD) as usize);
            }
        }
        Ok(0)
    }
}
