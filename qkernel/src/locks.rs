//! Advisory file locks: fcntl's POSIX record locks (`F_GETLK`, `F_SETLK`, `F_SETLKW`), their
//! open-file-description form (`F_OFD_*`) and flock(2). SQLite locks its database this way
//! (without them every write is "disk I/O error"), as do package managers and many daemons.
//!
//! The locks are the container's: kept here, by file (device and inode), between the
//! container's processes; the host's locks on the same files are not consulted (the root is
//! the container's own). A POSIX lock belongs to a process and goes when it closes any
//! descriptor of the file (or exits); an OFD lock and a flock belong to the open file and go
//! when its last descriptor closes. POSIX and OFD locks conflict with each other, flocks only
//! with flocks, as on Linux. A lock that must wait parks its thread until a lock is released
//! ([`crate::pipe::ERESTART`]).

use std::collections::HashMap;

use crate::errno::*;
use crate::machine::{HostFile, Machine};
use crate::pipe::ERESTART;
use crate::syscalls::Kernel;

const F_GETLK: u64 = 5;
const F_SETLK: u64 = 6;
const F_SETLKW: u64 = 7;
const F_OFD_GETLK: u64 = 36;
const F_OFD_SETLK: u64 = 37;
const F_OFD_SETLKW: u64 = 38;
const F_RDLCK: i16 = 0;
const F_WRLCK: i16 = 1;
const F_UNLCK: i16 = 2;
const LOCK_SH: u64 = 1;
const LOCK_EX: u64 = 2;
const LOCK_NB: u64 = 4;
const LOCK_UN: u64 = 8;
/// `struct flock` on x86-64.
const FLOCK_SIZE: usize = 32;
/// Locks the container may hold at once, so a process cannot grow the table without end.
const MAX_LOCKS: usize = 65536;

/// Whether fcntl's `cmd` is one of the lock commands.
pub(crate) fn is_lock_command(cmd: u64) -> bool {
    matches!(
        cmd,
        F_GETLK | F_SETLK | F_SETLKW | F_OFD_GETLK | F_OFD_SETLK | F_OFD_SETLKW
    )
}

/// A file: device and inode number.
type Inode = (u64, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A POSIX lock of a process.
    Process(i64),
    /// An OFD lock of an open file.
    OpenFile(HostFile),
    /// A flock of an open file.
    Flock(HostFile),
}

impl Owner {
    fn is_flock(self) -> bool {
        matches!(self, Owner::Flock(_))
    }
}

#[derive(Debug, Clone, Copy)]
struct Lock {
    owner: Owner,
    write: bool,
    /// `[start, end)`; `end` u64::MAX for "to the end of the file, however it grows".
    start: u64,
    end: u64,
}

/// Every lock in the container.
#[derive(Debug, Default)]
pub(crate) struct Locks {
    files: HashMap<Inode, Vec<Lock>>,
    count: usize,
}

impl Locks {
    /// The first lock of another owner that `want` conflicts with.
    fn conflict(&self, inode: Inode, want: &Lock) -> Option<Lock> {
        self.files.get(&inode)?.iter().copied().find(|l| {
            l.owner != want.owner
                && l.owner.is_flock() == want.owner.is_flock()
                && l.start < want.end
                && want.start < l.end
                && (l.write || want.write)
        })
    }

    /// Sets `lock` (or, `unlock`, clears its range) for its owner: the owner's locks over the
    /// range are cut away first, so a lock replaces or converts what was there.
    fn set(&mut self, inode: Inode, lock: Lock, unlock: bool) -> Result<(), i64> {
        let list = self.files.entry(inode).or_default();
        let before = list.len();
        let mut kept = Vec::with_capacity(list.len() + 2);
        for l in list.iter().copied() {
            if l.owner != lock.owner || l.end <= lock.start || lock.end <= l.start {
                kept.push(l);
                continue;
            }
            if l.start < lock.start {
                kept.push(Lock {
                    end: lock.start,
                    ..l
                });
            }
            if lock.end < l.end {
                kept.push(Lock {
                    start: lock.end,
                    ..l
                });
            }
        }
        if !unlock {
            // The owner's locks of the same kind that touch it become one with it, as Linux
            // keeps them (F_GETLK reports the whole range).
            let mut lock = lock;
            kept.retain(|l| {
                let touches = l.end == lock.start || lock.end == l.start;
                if l.owner == lock.owner && l.write == lock.write && touches {
                    lock.start = lock.start.min(l.start);
                    lock.end = lock.end.max(l.end);
                    return false;
                }
                true
            });
            kept.push(lock);
        }
        if self.count - before + kept.len() > MAX_LOCKS {
            // The call fails and changes nothing.
            if list.is_empty() {
                self.files.remove(&inode);
            }
            return Err(ENOLCK);
        }
        self.count = self.count - before + kept.len();
        if kept.is_empty() {
            self.files.remove(&inode);
        } else {
            *list = kept;
        }
        Ok(())
    }

    /// Drops every lock of `owner` (on `inode` only, if given). True if any went.
    fn release(&mut self, owner: Owner, inode: Option<Inode>) -> bool {
        let mut gone = 0;
        self.files.retain(|key, list| {
            if inode.is_none_or(|i| i == *key) {
                let before = list.len();
                list.retain(|l| l.owner != owner);
                gone += before - list.len();
            }
            !list.is_empty()
        });
        self.count -= gone;
        gone > 0
    }

    fn held_by_process(&self, pid: i64) -> bool {
        self.files
            .values()
            .flatten()
            .any(|l| l.owner == Owner::Process(pid))
    }
}

const ENOLCK: i64 = 37;

impl Kernel {
    /// fcntl's lock commands: `F_GETLK`, `F_SETLK`, `F_SETLKW` and their `F_OFD_` forms, with
    /// a `struct flock` at `arg`.
    pub(crate) fn fcntl_lock(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        cmd: u64,
        arg: u64,
    ) -> Result<i64, i64> {
        let (file, readable, writable) = self.lockable(fd)?;
        let mut b = [0u8; FLOCK_SIZE];
        m.read(arg, &mut b).map_err(|_| EFAULT)?;
        let field = |at: usize, n: usize| {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&b[at..at + n]);
            i64::from_le_bytes(v)
        };
        let (kind, whence) = (field(0, 2) as i16, field(2, 2) as i16);
        let (start, len, pid) = (field(8, 8), field(16, 8), field(24, 4) as i32);
        let ofd = matches!(cmd, F_OFD_GETLK | F_OFD_SETLK | F_OFD_SETLKW);
        if ofd && pid != 0 {
            return Err(EINVAL);
        }
        let base: i64 = match whence {
            0 => 0,                                   // SEEK_SET
            1 => self.lseek(m, fd, 0, 1)?,            // SEEK_CUR
            2 => stat_size(&m.fs_stat(file)?) as i64, // SEEK_END
            _ => return Err(EINVAL),
        };
        let from = base.checked_add(start).ok_or(EINVAL)?;
        let (lo, hi) = match len {
            0 => (from, i64::MAX),
            l if l > 0 => (from, from.checked_add(l).ok_or(EINVAL)?),
            l => (from.checked_add(l).ok_or(EINVAL)?, from),
        };
        if lo < 0 {
            return Err(EINVAL);
        }
        let end = if hi == i64::MAX { u64::MAX } else { hi as u64 };
        let owner = if ofd {
            Owner::OpenFile(file)
        } else {
            Owner::Process(self.p.pid)
        };
        let inode = inode_of(&m.fs_stat(file)?);
        let write = match kind {
            F_RDLCK => false,
            F_WRLCK => true,
            F_UNLCK if !matches!(cmd, F_GETLK | F_OFD_GETLK) => {
                let gone = Lock {
                    owner,
                    write: false,
                    start: lo as u64,
                    end,
                };
                self.locks.set(inode, gone, true)?;
                self.procs.wake_blocked();
                return Ok(0);
            }
            _ => return Err(EINVAL),
        };
        let want = Lock {
            owner,
            write,
            start: lo as u64,
            end,
        };
        if matches!(cmd, F_GETLK | F_OFD_GETLK) {
            let mut out = b;
            match self.locks.conflict(inode, &want) {
                None => out[0..2].copy_from_slice(&F_UNLCK.to_le_bytes()),
                Some(l) => {
                    let kind = if l.write { F_WRLCK } else { F_RDLCK };
                    let len = if l.end == u64::MAX {
                        0
                    } else {
                        l.end - l.start
                    };
                    let pid = match l.owner {
                        Owner::Process(p) => p as i32,
                        _ => -1,
                    };
                    out[0..2].copy_from_slice(&kind.to_le_bytes());
                    out[2..4].copy_from_slice(&0i16.to_le_bytes()); // SEEK_SET
                    out[8..16].copy_from_slice(&l.start.to_le_bytes());
                    out[16..24].copy_from_slice(&len.to_le_bytes());
                    out[24..28].copy_from_slice(&pid.to_le_bytes());
                }
            }
            m.write(arg, &out).map_err(|_| EFAULT)?;
            return Ok(0);
        }
        if (write && !writable) || (!write && !readable) {
            return Err(EBADF);
        }
        let wait = matches!(cmd, F_SETLKW | F_OFD_SETLKW);
        self.take_lock(inode, want, wait)
    }

    /// flock(2): a shared or exclusive lock on the whole file, of the open file.
    pub(crate) fn flock(&mut self, m: &mut dyn Machine, fd: u64, op: u64) -> Result<i64, i64> {
        let (file, _, _) = self.lockable(fd)?;
        let inode = inode_of(&m.fs_stat(file)?);
        let whole = |write| Lock {
            owner: Owner::Flock(file),
            write,
            start: 0,
            end: u64::MAX,
        };
        match op & !LOCK_NB {
            LOCK_UN => {
                self.locks.set(inode, whole(false), true)?;
                self.procs.wake_blocked();
                Ok(0)
            }
            LOCK_SH | LOCK_EX => self.take_lock(inode, whole(op & LOCK_EX != 0), op & LOCK_NB == 0),
            _ => Err(EINVAL),
        }
    }

    /// Sets `want` if nothing conflicts; else EAGAIN, or (`wait`) a park until a lock goes.
    fn take_lock(&mut self, inode: Inode, want: Lock, wait: bool) -> Result<i64, i64> {
        if self.locks.conflict(inode, &want).is_some() {
            return Err(if wait && !self.without_waiting(false) {
                ERESTART
            } else if want.owner.is_flock() {
                11 // EWOULDBLOCK
            } else {
                EAGAIN
            });
        }
        self.locks.set(inode, want, false)?;
        // A read lock replacing a write lock may let others in.
        self.procs.wake_blocked();
        Ok(0)
    }

    /// The file of `fd` if it can be locked (a file of the root), and whether it was opened
    /// for reading and for writing.
    fn lockable(&self, fd: u64) -> Result<(HostFile, bool, bool), i64> {
        self.p.fds.host_file_access(fd)
    }

    /// Closing a descriptor of `file` (`last`: its open file's last one): the process's
    /// POSIX locks on the file go, and with the last descriptor the open file's own.
    pub(crate) fn locks_on_close(&mut self, m: &mut dyn Machine, file: HostFile, last: bool) {
        let mut gone = false;
        if last {
            gone |= self.locks.release(Owner::OpenFile(file), None);
            gone |= self.locks.release(Owner::Flock(file), None);
        }
        if self.locks.held_by_process(self.p.pid) {
            if let Ok(st) = m.fs_stat(file) {
                gone |= self
                    .locks
                    .release(Owner::Process(self.p.pid), Some(inode_of(&st)));
            }
        }
        if gone {
            self.procs.wake_blocked();
        }
    }
}

fn inode_of(st: &[u8; 144]) -> Inode {
    let word = |at: usize| u64::from_le_bytes(st[at..at + 8].try_into().unwrap_or_default());
    (word(0), word(8))
}

fn stat_size(st: &[u8; 144]) -> u64 {
    u64::from_le_bytes(st[48..56].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(owner: Owner, write: bool, start: u64, end: u64) -> Lock {
        Lock {
            owner,
            write,
            start,
            end,
        }
    }

    #[test]
    fn ranges_split_convert_and_conflict_by_owner() {
        let mut l = Locks::default();
        let (a, b) = (Owner::Process(1), Owner::Process(2));
        let f = (1, 1);
        l.set(f, lock(a, true, 0, 100), false).unwrap();
        assert!(l.conflict(f, &lock(b, false, 50, 60)).is_some());
        assert!(
            l.conflict(f, &lock(a, true, 50, 60)).is_none(),
            "own locks never conflict"
        );
        assert!(
            l.conflict(f, &lock(b, true, 100, 200)).is_none(),
            "ranges are half open"
        );
        // Unlocking the middle splits the lock in two.
        l.set(f, lock(a, false, 40, 60), true).unwrap();
        assert!(l.conflict(f, &lock(b, true, 45, 55)).is_none());
        assert!(l.conflict(f, &lock(b, true, 30, 45)).is_some());
        assert_eq!(l.count, 2);
        // Relocking the gap joins the pieces again.
        l.set(f, lock(a, true, 40, 60), false).unwrap();
        assert_eq!(l.count, 1);
        l.set(f, lock(a, false, 40, 60), true).unwrap();
        // Converting to a read lock lets readers in.
        l.set(f, lock(a, false, 0, u64::MAX), false).unwrap();
        assert!(l.conflict(f, &lock(b, false, 0, 10)).is_none());
        assert!(l.conflict(f, &lock(b, true, 500, 600)).is_some());
        assert_eq!(l.count, 1);
        // flocks live apart from record locks.
        assert!(l
            .conflict(f, &lock(Owner::Flock(9), true, 0, u64::MAX))
            .is_none());
        assert!(l.release(a, Some(f)));
        assert!(l.files.is_empty());
        assert_eq!(l.count, 0);
    }
}
