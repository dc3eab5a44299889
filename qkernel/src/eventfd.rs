//! eventfd(2): a 64-bit counter behind a descriptor. A read takes the whole count (or one,
//! with EFD_SEMAPHORE) and waits while it is zero; a write adds and waits while the sum would
//! pass 2^64 - 2. Like a pipe it belongs to the kernel, shared by whoever holds it, and a wait
//! parks the process ([`crate::pipe::ERESTART`]).

use crate::errno::*;
use crate::fs::FileKind;
use crate::pipe::ERESTART;
use crate::syscalls::Kernel;

const EFD_SEMAPHORE: u64 = 1;
const EFD_NONBLOCK: u64 = 0o4000;
const EFD_CLOEXEC: u64 = 0o2000000;
const MAX: u64 = u64::MAX - 1;

#[derive(Debug, Default)]
pub struct EventFd {
    count: u64,
    semaphore: bool,
}

impl Kernel {
    /// eventfd2(2).
    pub(crate) fn eventfd(&mut self, initval: u64, flags: u64) -> Result<i64, i64> {
        if flags & !(EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC) != 0 {
            return Err(EINVAL);
        }
        let id = crate::put_in_vacancy(
            &mut self.eventfds,
            EventFd {
                count: initval & 0xffff_ffff,
                semaphore: flags & EFD_SEMAPHORE != 0,
            },
        ) as u32;
        // Readable and writable (O_RDWR = 2).
        let status = 2 | (flags & EFD_NONBLOCK) as i32;
        self.p
            .fds
            .install_kind(FileKind::EventFd(id), status, flags & EFD_CLOEXEC != 0)
            .inspect_err(|_| self.eventfds[id as usize] = None)
    }

    pub(crate) fn eventfd_read(
        &mut self,
        id: u32,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        if buf.len() < 8 {
            return Err(EINVAL);
        }
        let wait = !self.without_waiting(nonblocking);
        let e = self.eventfd_mut(id)?;
        if e.count == 0 {
            return Err(if wait { ERESTART } else { EAGAIN });
        }
        let taken = if e.semaphore { 1 } else { e.count };
        e.count -= taken;
        buf[..8].copy_from_slice(&taken.to_le_bytes());
        self.procs.wake_blocked();
        Ok(8)
    }

    pub(crate) fn eventfd_write(
        &mut self,
        id: u32,
        buf: &[u8],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        let add = buf
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(EINVAL)?;
        if add == u64::MAX {
            return Err(EINVAL);
        }
        let wait = !self.without_waiting(nonblocking);
        let e = self.eventfd_mut(id)?;
        if add > MAX - e.count {
            return Err(if wait { ERESTART } else { EAGAIN });
        }
        e.count += add;
        self.procs.wake_blocked();
        Ok(8)
    }

    fn eventfd_mut(&mut self, id: u32) -> Result<&mut EventFd, i64> {
        self.eventfds
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)
    }

    /// Poll readiness: (readable, writable).
    pub(crate) fn eventfd_state(&self, id: u32) -> (bool, bool) {
        self.eventfds
            .get(id as usize)
            .and_then(Option::as_ref)
            .map_or((false, false), |e| (e.count > 0, e.count < MAX))
    }

    /// Drops the counter once no process holds it.
    pub(crate) fn eventfd_closed(&mut self, id: u32) {
        let kind = FileKind::EventFd(id);
        if !self.p.fds.refers_to(&kind) && !self.held_elsewhere(&kind) {
            if let Some(slot) = self.eventfds.get_mut(id as usize) {
                *slot = None;
            }
        }
    }
}
