//! The syscall table: Linux semantics and errno values for what static programs need first.
//! Arguments are untrusted: every pointer goes through [`Machine`] accesses that fail with
//! `EFAULT`, every length is clamped before it sizes a host buffer.

use crate::elf::{STACK_SIZE, STACK_TOP, USER_END};
use crate::errno::*;
use crate::machine::{Machine, PageFlags};

const PAGE: u64 = 4096;
/// Largest chunk copied through the host per step of a read or write.
const CHUNK: usize = 64 << 10;
/// Where `mmap` without a hint starts placing mappings (grows down, like Linux).
const MMAP_TOP: u64 = STACK_TOP - STACK_SIZE - (1 << 30);

/// A syscall as the platform delivers it: `rax` and the six argument registers.
#[derive(Debug, Clone, Copy)]
pub struct SyscallArgs {
    pub nr: u64,
    pub args: [u64; 6],
}

/// What the platform does after a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallOutcome {
    /// Resume the app with this value in `rax`.
    Return(i64),
    /// The app (all of it) exited with this status.
    Exit(i32),
}

/// The kernel state of one single-threaded process (the process model comes later).
#[derive(Debug)]
pub struct Kernel {
    brk_start: u64,
    brk: u64,
    /// Heap pages are mapped up to here.
    brk_mapped: u64,
    mmap_next: u64,
    pid: i64,
}

fn name(nr: u64) -> &'static str {
    match nr {
        0 => "read",
        1 => "write",
        9 => "mmap",
        12 => "brk",
        13 => "rt_sigaction",
        14 => "rt_sigprocmask",
        20 => "writev",
        60 => "exit",
        158 => "arch_prctl",
        231 => "exit_group",
        _ => "?",
    }
}

impl Kernel {
    /// A kernel for a program loaded with its heap starting at `brk`.
    pub fn new(brk: u64) -> Self {
        Kernel {
            brk_start: brk,
            brk,
            brk_mapped: brk,
            mmap_next: MMAP_TOP,
            pid: 1,
        }
    }

    /// Serves one syscall.
    pub fn syscall(&mut self, m: &mut dyn Machine, call: SyscallArgs) -> SyscallOutcome {
        let [a0, a1, a2, a3, a4, _a5] = call.args;
        let r = match call.nr {
            0 => self.read(m, a0, a1, a2),
            1 => self.write(m, a0, a1, a2),
            20 => self.writev(m, a0, a1, a2),
            9 => self.mmap(m, a0, a1, a2, a3, a4),
            10 => Ok(0), // mprotect: mappings keep their permissions for now
            11 => Ok(0), // munmap: address space is not reclaimed yet
            12 => Ok(self.brk(m, a0) as i64),
            13 | 14 => Ok(0),  // rt_sigaction, rt_sigprocmask: recorded later
            16 => Err(ENOTTY), // ioctl: stdio is not a terminal
            24 => Ok(0),       // sched_yield
            39 | 186 => Ok(self.pid), // getpid, gettid
            110 => Ok(0),      // getppid: the container's init has no parent
            102 | 104 | 107 | 108 => Ok(0), // getuid, getgid, geteuid, getegid: root inside
            60 | 231 => return SyscallOutcome::Exit((a0 & 0xff) as i32),
            63 => self.uname(m, a0),
            158 => self.arch_prctl(m, a0, a1),
            218 => Ok(self.pid), // set_tid_address
            273 => Ok(0),        // set_robust_list
            228 => self.clock_gettime(m, a0, a1),
            201 => self.time(m, a0),
            302 => self.prlimit(m, a2, a3),
            318 => self.getrandom(m, a0, a1),
            334 => Err(ENOSYS), // rseq: glibc falls back
            _ => {
                tracing::debug!(nr = call.nr, name = name(call.nr), "unimplemented syscall");
                Err(ENOSYS)
            }
        };
        SyscallOutcome::Return(r.unwrap_or_else(|e| -e))
    }

    fn read(&mut self, m: &mut dyn Machine, fd: u64, buf: u64, len: u64) -> Result<i64, i64> {
        if fd != 0 {
            return Err(EBADF);
        }
        let mut tmp = vec![0u8; (len as usize).min(CHUNK)];
        let n = m
            .console_read(&mut tmp)
            .map_err(|e| e.raw_os_error().unwrap_or(5) as i64)?;
        m.write(buf, &tmp[..n]).map_err(|_| EFAULT)?;
        Ok(n as i64)
    }

    fn write(&mut self, m: &mut dyn Machine, fd: u64, buf: u64, len: u64) -> Result<i64, i64> {
        if fd != 1 && fd != 2 {
            return Err(EBADF);
        }
        let mut done = 0u64;
        let mut tmp = vec![0u8; (len as usize).min(CHUNK)];
        while done < len {
            let n = ((len - done) as usize).min(CHUNK);
            m.read(buf.wrapping_add(done), &mut tmp[..n])
                .map_err(|_| EFAULT)?;
            let w = m
                .console_write(fd as i32, &tmp[..n])
                .map_err(|e| e.raw_os_error().unwrap_or(5) as i64)?;
            done += w as u64;
            if w < n {
                break;
            }
        }
        Ok(done as i64)
    }

    fn writev(&mut self, m: &mut dyn Machine, fd: u64, iov: u64, count: u64) -> Result<i64, i64> {
        if count > 1024 {
            return Err(EINVAL);
        }
        let mut total = 0i64;
        for i in 0..count {
            let mut raw = [0u8; 16];
            m.read(iov.wrapping_add(i * 16), &mut raw)
                .map_err(|_| EFAULT)?;
            let base = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
            let len = u64::from_le_bytes(raw[8..].try_into().unwrap_or_default());
            match self.write(m, fd, base, len) {
                Ok(n) => total += n,
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(total)
    }

    fn brk(&mut self, m: &mut dyn Machine, want: u64) -> u64 {
        if want < self.brk_start || want >= MMAP_TOP {
            return self.brk;
        }
        let need = want.div_ceil(PAGE) * PAGE;
        if need > self.brk_mapped {
            let rw = PageFlags {
                write: true,
                exec: false,
            };
            if m.map_zeroed(self.brk_mapped, need - self.brk_mapped, rw)
                .is_err()
            {
                return self.brk; // Linux reports failure by returning the old break.
            }
            self.brk_mapped = need;
        }
        self.brk = want;
        want
    }

    fn mmap(
        &mut self,
        m: &mut dyn Machine,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        fd: u64,
    ) -> Result<i64, i64> {
        const MAP_FIXED: u64 = 0x10;
        const MAP_ANONYMOUS: u64 = 0x20;
        const PROT_WRITE: u64 = 2;
        const PROT_EXEC: u64 = 4;
        let _ = fd; // only anonymous mappings so far
        if flags & MAP_ANONYMOUS == 0 {
            return Err(ENOSYS); // file mappings come with the file system
        }
        if len == 0 || len > USER_END {
            return Err(EINVAL);
        }
        let len = len.div_ceil(PAGE) * PAGE;
        let va = if flags & MAP_FIXED != 0 {
            if addr % PAGE != 0 || addr.checked_add(len).is_none_or(|e| e > USER_END) {
                return Err(EINVAL);
            }
            addr
        } else {
            let va = self.mmap_next.checked_sub(len).ok_or(ENOMEM)?;
            if va <= self.brk_mapped + (64 << 20) {
                return Err(ENOMEM);
            }
            self.mmap_next = va - PAGE; // a guard page between mappings
            va
        };
        let flags = PageFlags {
            write: prot & PROT_WRITE != 0,
            exec: prot & PROT_EXEC != 0,
        };
        m.map_zeroed(va, len, flags).map_err(|_| ENOMEM)?;
        Ok(va as i64)
    }

    fn uname(&mut self, m: &mut dyn Machine, buf: u64) -> Result<i64, i64> {
        let mut u = [0u8; 65 * 6];
        for (i, f) in [
            "Linux",
            "quark",
            "6.1.0-quark",
            "#1 SMP",
            "x86_64",
            "(none)",
        ]
        .iter()
        .enumerate()
        {
            u[i * 65..i * 65 + f.len()].copy_from_slice(f.as_bytes());
        }
        m.write(buf, &u).map_err(|_| EFAULT)?;
        Ok(0)
    }

    fn arch_prctl(&mut self, m: &mut dyn Machine, code: u64, addr: u64) -> Result<i64, i64> {
        const ARCH_SET_FS: u64 = 0x1002;
        if code != ARCH_SET_FS {
            return Err(EINVAL);
        }
        if addr >= USER_END {
            return Err(EPERM);
        }
        m.set_thread_pointer(addr);
        Ok(0)
    }

    fn clock_gettime(&mut self, m: &mut dyn Machine, clock: u64, ts: u64) -> Result<i64, i64> {
        let ns = match clock {
            0 | 5 | 8 | 11 => m.realtime_ns(), // REALTIME and its coarse/alarm/tai variants
            1 | 4 | 6 | 7 | 9 => m.monotonic_ns(), // MONOTONIC, RAW, COARSE, BOOTTIME
            2 | 3 => m.monotonic_ns(),         // CPU time: close enough for a single vCPU
            _ => return Err(EINVAL),
        };
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
        b[8..].copy_from_slice(&(ns % 1_000_000_000).to_le_bytes());
        m.write(ts, &b).map_err(|_| EFAULT)?;
        Ok(0)
    }

    fn time(&mut self, m: &mut dyn Machine, out: u64) -> Result<i64, i64> {
        let secs = (m.realtime_ns() / 1_000_000_000) as i64;
        if out != 0 {
            m.write(out, &secs.to_le_bytes()).map_err(|_| EFAULT)?;
        }
        Ok(secs)
    }

    fn prlimit(&mut self, m: &mut dyn Machine, new: u64, old: u64) -> Result<i64, i64> {
        if new != 0 {
            return Err(EPERM);
        }
        if old != 0 {
            let inf = u64::MAX.to_le_bytes();
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&inf);
            b[8..].copy_from_slice(&inf);
            m.write(old, &b).map_err(|_| EFAULT)?;
        }
        Ok(0)
    }

    fn getrandom(&mut self, m: &mut dyn Machine, buf: u64, len: u64) -> Result<i64, i64> {
        let n = (len as usize).min(CHUNK);
        let mut tmp = vec![0u8; n];
        m.random(&mut tmp);
        m.write(buf, &tmp).map_err(|_| EFAULT)?;
        Ok(n as i64)
    }
}
