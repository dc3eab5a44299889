//! epoll: interest sets over descriptors, answered with the same readiness as poll(2).
//! Level-triggered; EPOLLET is accepted and served level-triggered (programs that use it read
//! until EAGAIN, which stays correct), EPOLLONESHOT disables an entry once reported.

use std::collections::BTreeMap;

use crate::errno::*;
use crate::fs::FileKind;
use crate::machine::Machine;
use crate::syscalls::Kernel;

const EPOLL_CTL_ADD: u64 = 1;
const EPOLL_CTL_DEL: u64 = 2;
const EPOLL_CTL_MOD: u64 = 3;
const EPOLLONESHOT: u32 = 1 << 30;
const EEXIST: i64 = 17;
/// `struct epoll_event` is packed on x86-64: u32 events, u64 data.
const EVENT_SIZE: usize = 12;
const MAX_EVENTS: u64 = 4096;

/// One epoll instance: fd -> (events, data).
#[derive(Debug, Default, Clone)]
pub struct EpollSet {
    entries: BTreeMap<i32, (u32, u64)>,
}

impl Kernel {
    pub(crate) fn epoll_create(&mut self, flags: u64) -> Result<i64, i64> {
        const EPOLL_CLOEXEC: u64 = 0o2000000;
        if flags & !EPOLL_CLOEXEC != 0 {
            return Err(EINVAL);
        }
        let id = crate::put_in_vacancy(&mut self.p.epolls, EpollSet::default());
        let r = self
            .p
            .fds
            .install_kind(FileKind::Epoll(id as u32), 2, flags & EPOLL_CLOEXEC != 0);
        if r.is_err() {
            self.p.epolls[id] = None;
        }
        r
    }

    fn epoll_of(&mut self, epfd: u64) -> Result<&mut EpollSet, i64> {
        let FileKind::Epoll(id) = *self.p.fds.kind(epfd)? else {
            return Err(EINVAL);
        };
        self.p
            .epolls
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)
    }

    pub(crate) fn epoll_ctl(
        &mut self,
        m: &mut dyn Machine,
        epfd: u64,
        op: u64,
        fd: u64,
        event: u64,
    ) -> Result<i64, i64> {
        self.p.fds.kind(fd)?;
        if fd == epfd {
            return Err(EINVAL);
        }
        let ev = if op == EPOLL_CTL_DEL {
            None
        } else {
            let mut b = [0u8; EVENT_SIZE];
            m.read(event, &mut b).map_err(|_| EFAULT)?;
            let mut data = [0u8; 8];
            data.copy_from_slice(&b[4..]);
            Some((
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                u64::from_le_bytes(data),
            ))
        };
        let set = self.epoll_of(epfd)?;
        let fd = fd as i32;
        match (op, ev) {
            (EPOLL_CTL_ADD, Some(e)) => {
                if set.entries.contains_key(&fd) {
                    return Err(EEXIST);
                }
                set.entries.insert(fd, e);
            }
            (EPOLL_CTL_MOD, Some(e)) => {
                *set.entries.get_mut(&fd).ok_or(ENOENT)? = e;
            }
            (EPOLL_CTL_DEL, _) => {
                set.entries.remove(&fd).ok_or(ENOENT)?;
            }
            _ => return Err(EINVAL),
        }
        Ok(0)
    }

    pub(crate) fn epoll_wait(
        &mut self,
        m: &mut dyn Machine,
        epfd: u64,
        events: u64,
        max: u64,
        timeout_ms: i64,
    ) -> Result<i64, i64> {
        if max == 0 || max > MAX_EVENTS {
            return Err(EINVAL);
        }
        let list: Vec<(i32, u32, u64)> = self
            .epoll_of(epfd)?
            .entries
            .iter()
            .map(|(fd, (ev, data))| (*fd, *ev, *data))
            .collect();
        // poll(2) and epoll share the low event bits (IN 1, OUT 4, ERR 8, HUP 0x10).
        let items: Vec<(i32, u16)> = list.iter().map(|(fd, ev, _)| (*fd, *ev as u16)).collect();
        let revents = self.readiness(m, &items, timeout_ms)?;
        let mut out = Vec::new();
        let mut fired = Vec::new();
        for ((fd, ev, data), r) in list.iter().zip(revents) {
            if r == 0 || out.len() / EVENT_SIZE >= max as usize {
                continue;
            }
            out.extend_from_slice(&(r as u32).to_le_bytes());
            out.extend_from_slice(&data.to_le_bytes());
            if ev & EPOLLONESHOT != 0 {
                fired.push(*fd);
            }
        }
        if !fired.is_empty() {
            let set = self.epoll_of(epfd)?;
            for fd in fired {
                if let Some(e) = set.entries.get_mut(&fd) {
                    e.0 = 0;
                }
            }
        }
        m.write(events, &out).map_err(|_| EFAULT)?;
        Ok((out.len() / EVENT_SIZE) as i64)
    }

    pub(crate) fn drop_epoll(&mut self, id: u32) {
        if let Some(slot) = self.p.epolls.get_mut(id as usize) {
            *slot = None;
        }
    }

    /// A closed descriptor leaves every interest set.
    pub(crate) fn forget_in_epolls(&mut self, fd: i32) {
        for set in self.p.epolls.iter_mut().flatten() {
            set.entries.remove(&fd);
        }
    }
}
