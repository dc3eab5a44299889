//! AF_UNIX stream sockets inside the guest: socketpair(2), the channel forking servers (nginx's
//! master and workers) and runtimes use between their processes, and sockets named by a path
//! or an abstract name (bind, listen, connect, accept) for servers inside the container.
//!
//! A pair is two pipes, one each way ([`FileKind::Unix`] names the one it reads and the one it
//! writes), so reads, writes, waits, poll readiness, EOF and EPIPE are the pipes' own. What a
//! socket adds: sendmsg/recvmsg with descriptors passed in SCM_RIGHTS (held by the kernel while
//! in flight, with the bytes they were sent with), shutdown, and the socket calls that name no
//! address. Datagram and seqpacket pairs keep message boundaries (their pipes are message
//! pipes: a send is one message, a receive takes one, cut to the buffer with MSG_TRUNC), and
//! so do the connections of named seqpacket sockets.

use std::collections::VecDeque;

use crate::errno::*;
use crate::fs::{FileKind, OpenFile};
use crate::machine::Machine;
use crate::net::{EAFNOSUPPORT, ENOTSOCK};

const EADDRINUSE: i64 = 98;
const EISCONN: i64 = 106;
const ECONNREFUSED: i64 = 111;
const ESOCKTNOSUPPORT: i64 = 94;
use crate::syscalls::Kernel;

const AF_UNIX: u64 = 1;
const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
const SOCK_SEQPACKET: u64 = 5;
const SOCK_NONBLOCK: u64 = 0o4000;
const SOCK_CLOEXEC: u64 = 0o2000000;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
const MSG_DONTWAIT: u64 = 0x40;
const MSG_CTRUNC: u32 = 0x8;
const MSG_TRUNC_FLAG: u32 = 0x20;
/// recv flag: return a datagram's real length even when it was cut.
const MSG_TRUNC: u64 = 0x20;
const MSG_CMSG_CLOEXEC: u64 = 0x4000_0000;
/// Descriptors one message may carry (Linux's SCM_MAX_FD).
const MAX_RIGHTS: usize = 253;
/// Bytes one call moves at most.
const CHUNK: usize = 1 << 20;

/// Descriptors in flight on the pipe they were sent on, oldest first: each entry goes with
/// the next read of that pipe.
pub(crate) type InFlight = std::collections::BTreeMap<u32, VecDeque<Vec<OpenFile>>>;

/// Most connections a listener queues.
const MAX_BACKLOG: usize = 4096;
const AF_UNIX_SOCKADDR_MAX: usize = 110;

/// An AF_UNIX socket made by socket(2): a stream socket before it is connected (its name
/// once bound, and the connections waiting for accept once listening, each the server's end:
/// (rx, tx) pipes), or a datagram socket for its whole life (`unix_dgram.rs`).
#[derive(Debug, Default)]
pub(crate) struct NamedSocket {
    pub(crate) name: Option<Vec<u8>>,
    backlog: Option<VecDeque<(u32, u32)>>,
    pub(crate) dgram: Option<crate::unix_dgram::Datagrams>,
    /// A seqpacket socket: its connections keep message boundaries (message pipes).
    seqpacket: bool,
}

/// The named sockets of the container, and which one each name is bound to.
#[derive(Debug, Default)]
pub(crate) struct UnixNames {
    sockets: Vec<Option<NamedSocket>>,
    pub(crate) names: std::collections::BTreeMap<Vec<u8>, u32>,
}

/// `struct sockaddr_un` for `name` (None: unnamed, the family alone): a path with its NUL, an
/// abstract name as it is.
pub(crate) fn unix_sockaddr(name: Option<&[u8]>) -> Vec<u8> {
    let mut out = (AF_UNIX as u16).to_le_bytes().to_vec();
    if let Some(name) = name {
        out.extend_from_slice(name);
        if name.first() != Some(&0) {
            out.push(0);
        }
    }
    out
}

/// Writes the address of `name` to `addr` (as much as the socklen_t at `lenp` says fits) and
/// its length to `lenp`.
pub(crate) fn write_unix_address(
    m: &mut dyn Machine,
    addr: u64,
    lenp: u64,
    name: Option<&[u8]>,
) -> Result<(), i64> {
    let mut l = [0u8; 4];
    m.read(lenp, &mut l).map_err(|_| EFAULT)?;
    let bytes = unix_sockaddr(name);
    let fits = (u32::from_le_bytes(l) as usize).min(bytes.len());
    m.write(addr, &bytes[..fits]).map_err(|_| EFAULT)?;
    m.write(lenp, &(bytes.len() as u32).to_le_bytes())
        .map_err(|_| EFAULT)?;
    Ok(())
}

/// A received datagram's sender: its address, or for an unnamed sender an address length of
/// 0 (where getsockname of an unnamed socket gives the family alone).
pub(crate) fn write_sender_address(
    m: &mut dyn Machine,
    addr: u64,
    lenp: u64,
    name: Option<&[u8]>,
) -> Result<(), i64> {
    match name {
        Some(_) => write_unix_address(m, addr, lenp, name),
        None => m.write(lenp, &0u32.to_le_bytes()).map_err(|_| EFAULT),
    }
}

impl Kernel {
    /// socketpair(2) for AF_UNIX.
    pub(crate) fn socketpair(
        &mut self,
        m: &mut dyn Machine,
        domain: u64,
        ty: u64,
        sv: u64,
    ) -> Result<i64, i64> {
        if domain != AF_UNIX {
            return Err(EAFNOSUPPORT);
        }
        if !matches!(ty & 0xf, SOCK_STREAM | SOCK_DGRAM | SOCK_SEQPACKET)
            || ty & !(0xf | SOCK_NONBLOCK | SOCK_CLOEXEC) != 0
        {
            return Err(EINVAL);
        }
        let each = if ty & 0xf == SOCK_STREAM {
            crate::pipe::PIPE_CAPACITY
        } else {
            crate::pipe::MESSAGE_PIPE_CAPACITY
        };
        self.reserve_buffers(2 * each)?;
        let (there, back) = if ty & 0xf == SOCK_STREAM {
            (self.new_pipe(), self.new_pipe())
        } else {
            let seqpacket = ty & 0xf == SOCK_SEQPACKET;
            (
                self.new_message_pipe(seqpacket),
                self.new_message_pipe(seqpacket),
            )
        };
        let status = 2 | (ty & SOCK_NONBLOCK) as i32; // O_RDWR
        let cloexec = ty & SOCK_CLOEXEC != 0;
        let a = self.p.fds.install_kind(
            FileKind::Unix {
                rx: back,
                tx: there,
            },
            status,
            cloexec,
        );
        let b = a.and_then(|a| {
            self.p
                .fds
                .install_kind(
                    FileKind::Unix {
                        rx: there,
                        tx: back,
                    },
                    status,
                    cloexec,
                )
                .map(|b| (a, b))
                .inspect_err(|_| {
                    let _ = self.p.fds.take_fd(a as u64);
                })
        });
        let mut out = [0u8; 8];
        let written = b.and_then(|(a, b)| {
            out[..4].copy_from_slice(&(a as i32).to_le_bytes());
            out[4..].copy_from_slice(&(b as i32).to_le_bytes());
            m.write(sv, &out).map_err(|_| EFAULT).inspect_err(|_| {
                let _ = self.p.fds.take_fd(a as u64);
                let _ = self.p.fds.take_fd(b as u64);
            })
        });
        if let Err(e) = written {
            self.free_pipe(there);
            self.free_pipe(back);
            return Err(e);
        }
        Ok(0)
    }

    /// The pipes of a socket-pair end: (the one it reads, the one it writes).
    pub(crate) fn unix_of(&self, fd: u64) -> Option<(u32, u32)> {
        match self.p.fds.kind(fd) {
            Ok(FileKind::Unix { rx, tx }) => Some((*rx, *tx)),
            _ => None,
        }
    }

    /// sendmsg(2) on a socket-pair end: the iovecs' bytes, and the descriptors of an
    /// SCM_RIGHTS message, which the peer's next recvmsg receives.
    pub(crate) fn unix_sendmsg(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        msg: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        let (_, tx) = self.unix_of(fd).ok_or(ENOTSOCK)?;
        let nonblocking = self.p.fds.nonblocking(fd) || flags & MSG_DONTWAIT != 0;
        let h = crate::net::read_msghdr(m, msg)?;
        let data = h.gather(m)?;
        let rights = self.rights_to_send(m, msg)?;
        let n = self
            .pipe_write(tx, &data, nonblocking)?
            .ok_or(crate::pipe::ESIGPIPE)?;
        if !rights.is_empty() {
            self.in_flight.entry(tx).or_default().push_back(rights);
        }
        Ok(n as i64)
    }

    /// The open files an SCM_RIGHTS control message of the msghdr at `msg` names.
    fn rights_to_send(&self, m: &dyn Machine, msg: u64) -> Result<Vec<OpenFile>, i64> {
        let control = crate::net::read_u64(m, msg + 32)?;
        let len = crate::net::read_u64(m, msg + 40)?;
        if control == 0 || len < 16 {
            return Ok(Vec::new());
        }
        let len = (len as usize).min(16 + 4 * MAX_RIGHTS + 8);
        let mut buf = vec![0u8; len];
        m.read(control, &mut buf).map_err(|_| EFAULT)?;
        let mut rights = Vec::new();
        let mut at = 0usize;
        // cmsghdr: cmsg_len (u64, header included), cmsg_level (i32), cmsg_type (i32), data;
        // each one 8-byte aligned.
        while at + 16 <= buf.len() {
            let clen = u64::from_le_bytes(buf[at..at + 8].try_into().unwrap_or_default()) as usize;
            let level = i32::from_le_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
            let kind = i32::from_le_bytes(buf[at + 12..at + 16].try_into().unwrap_or_default());
            if clen < 16 || at + clen > buf.len() {
                return Err(EINVAL);
            }
            if level == SOL_SOCKET && kind == SCM_RIGHTS {
                for fd in buf[at + 16..at + clen].chunks_exact(4) {
                    let fd = i32::from_le_bytes(fd.try_into().unwrap_or_default());
                    rights.push(self.p.fds.open_file(fd as u64)?);
                }
            }
            at += clen.div_ceil(8) * 8;
        }
        if rights.len() > MAX_RIGHTS {
            return Err(EINVAL);
        }
        Ok(rights)
    }

    /// recvmsg(2) on a socket-pair end: bytes into the iovecs, and descriptors in flight with
    /// them installed and named in an SCM_RIGHTS message (MSG_CTRUNC, and closed, if the
    /// control buffer cannot hold them).
    pub(crate) fn unix_recvmsg(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        msg: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        let (rx, _) = self.unix_of(fd).ok_or(ENOTSOCK)?;
        let nonblocking = self.p.fds.nonblocking(fd) || flags & MSG_DONTWAIT != 0;
        let h = crate::net::read_msghdr(m, msg)?;
        let control = crate::net::read_u64(m, msg + 32)?;
        let control_len = crate::net::read_u64(m, msg + 40)? as usize;
        let mut tmp = vec![0u8; h.capacity().min(CHUNK)];
        let (n, whole) = self.pipe_read_message(rx, &mut tmp, nonblocking)?;
        h.scatter(m, &tmp[..n])?;
        let mut msg_flags = 0u32;
        if whole > n {
            msg_flags |= MSG_TRUNC_FLAG; // a datagram cut to fit
        }
        let mut cmsg = Vec::new();
        let rights = if n > 0 {
            self.in_flight.get_mut(&rx).and_then(VecDeque::pop_front)
        } else {
            None
        };
        if let Some(files) = rights {
            let space = 16 + (4 * files.len()).div_ceil(8) * 8;
            if control == 0 || control_len < space {
                msg_flags |= MSG_CTRUNC;
                for f in files {
                    self.release_file(m, f.kind);
                }
            } else {
                let cloexec = flags & MSG_CMSG_CLOEXEC != 0;
                let mut fds = Vec::new();
                for f in files {
                    match self.p.fds.install_open_file(f, cloexec) {
                        Ok(nfd) => fds.push(nfd as i32),
                        Err(_) => msg_flags |= MSG_CTRUNC,
                    }
                }
                cmsg.extend_from_slice(&((16 + 4 * fds.len()) as u64).to_le_bytes());
                cmsg.extend_from_slice(&SOL_SOCKET.to_le_bytes());
                cmsg.extend_from_slice(&SCM_RIGHTS.to_le_bytes());
                for fd in fds {
                    cmsg.extend_from_slice(&fd.to_le_bytes());
                }
                cmsg.resize(cmsg.len().div_ceil(8) * 8, 0);
                m.write(control, &cmsg).map_err(|_| EFAULT)?;
            }
        }
        m.write(msg + 8, &0u32.to_le_bytes()).map_err(|_| EFAULT)?; // no sender name
        m.write(msg + 40, &(cmsg.len() as u64).to_le_bytes())
            .map_err(|_| EFAULT)?;
        m.write(msg + 48, &msg_flags.to_le_bytes())
            .map_err(|_| EFAULT)?;
        Ok(if flags & MSG_TRUNC != 0 { whole } else { n } as i64)
    }

    /// shutdown(2) of a socket-pair end: SHUT_RD ends what it reads, SHUT_WR what it writes
    /// (the peer reads EOF once the bytes sent are read).
    pub(crate) fn unix_shutdown(&mut self, fd: u64, how: u64) -> Result<i64, i64> {
        let (rx, tx) = self.unix_of(fd).ok_or(ENOTSOCK)?;
        let ends: &[u32] = match how {
            0 => &[rx],
            1 => &[tx],
            2 => &[rx, tx],
            _ => return Err(EINVAL),
        };
        for id in ends {
            self.shut_pipe(*id);
        }
        Ok(0)
    }

    /// getsockname/getpeername of an AF_UNIX socket: the name it is bound to, or for the
    /// peer, the name a datagram socket connected to; unnamed otherwise (a pair's ends).
    pub(crate) fn unix_name(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        (addr, lenp): (u64, u64),
        peer: bool,
    ) -> Result<i64, i64> {
        let name = self.unix_named_of(fd).and_then(|id| {
            let sock = self.named(id).ok()?;
            if peer {
                sock.dgram.as_ref()?.peer.clone()
            } else {
                sock.name.clone()
            }
        });
        if peer && name.is_none() && self.unix_named_of(fd).is_some() {
            return Err(ENOTCONN);
        }
        write_unix_address(m, addr, lenp, name.as_deref())?;
        Ok(0)
    }

    /// socket(2) for AF_UNIX: a stream socket to bind and listen, or to connect; or a
    /// datagram socket.
    pub(crate) fn unix_socket(&mut self, ty: u64) -> Result<i64, i64> {
        if ty & !(0xf | SOCK_NONBLOCK | SOCK_CLOEXEC) != 0 {
            return Err(EINVAL);
        }
        let dgram = match ty & 0xf {
            SOCK_STREAM | SOCK_SEQPACKET => None,
            SOCK_DGRAM => {
                self.reserve_buffers(crate::unix_dgram::QUEUE_BYTES)?;
                Some(crate::unix_dgram::Datagrams::default())
            }
            _ => return Err(ESOCKTNOSUPPORT),
        };
        let socket = NamedSocket {
            dgram,
            seqpacket: ty & 0xf == SOCK_SEQPACKET,
            ..NamedSocket::default()
        };
        let id = crate::put_in_vacancy(&mut self.unix.sockets, socket);
        let status = 2 | (ty & SOCK_NONBLOCK) as i32;
        self.p
            .fds
            .install_kind(
                FileKind::UnixNamed(id as u32),
                status,
                ty & SOCK_CLOEXEC != 0,
            )
            .inspect_err(|_| self.unix.sockets[id] = None)
    }

    /// The named socket behind `fd`, if it is one.
    pub(crate) fn unix_named_of(&self, fd: u64) -> Option<u32> {
        match self.p.fds.kind(fd) {
            Ok(FileKind::UnixNamed(id)) => Some(*id),
            _ => None,
        }
    }

    /// How many datagram sockets exist (each may queue [`crate::unix_dgram::QUEUE_BYTES`]).
    pub(crate) fn unix_dgram_count(&self) -> usize {
        self.unix
            .sockets
            .iter()
            .flatten()
            .filter(|s| s.dgram.is_some())
            .count()
    }

    pub(crate) fn unix_socket_ref(&self, id: u32) -> Option<&NamedSocket> {
        self.unix.sockets.get(id as usize).and_then(Option::as_ref)
    }

    pub(crate) fn named(&mut self, id: u32) -> Result<&mut NamedSocket, i64> {
        self.unix
            .sockets
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)
    }

    /// The name a `struct sockaddr_un` gives: an absolute path in the root (relative ones
    /// from the working directory), or an abstract name (a leading NUL, kept).
    pub(crate) fn unix_address(
        &self,
        m: &dyn Machine,
        addr: u64,
        len: u64,
    ) -> Result<Vec<u8>, i64> {
        let len = len as usize;
        if !(3..=AF_UNIX_SOCKADDR_MAX).contains(&len) {
            return Err(EINVAL);
        }
        let mut buf = vec![0u8; len];
        m.read(addr, &mut buf).map_err(|_| EFAULT)?;
        if u16::from_le_bytes([buf[0], buf[1]]) != AF_UNIX as u16 {
            return Err(EAFNOSUPPORT);
        }
        let path = &buf[2..];
        if path[0] == 0 {
            return Ok(path.to_vec()); // abstract: every byte counts
        }
        let path = &path[..path.iter().position(|b| *b == 0).unwrap_or(path.len())];
        Ok(if path.starts_with(b"/") {
            path.to_vec()
        } else {
            let mut p = self.p.cwd.clone();
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(path);
            p
        })
    }

    /// bind(2) of an AF_UNIX socket: the name is the container's until the socket closes.
    /// (A path's name lives in the kernel only: no socket file appears in the root.)
    pub(crate) fn unix_bind(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        len: u64,
    ) -> Result<i64, i64> {
        let id = self.unix_named_of(fd).ok_or(EINVAL)?;
        let name = self.unix_address(m, addr, len)?;
        if self.unix.names.contains_key(&name) {
            return Err(EADDRINUSE);
        }
        let sock = self.named(id)?;
        if sock.name.is_some() {
            return Err(EINVAL);
        }
        sock.name = Some(name.clone());
        self.unix.names.insert(name, id);
        Ok(0)
    }

    /// listen(2) of a bound AF_UNIX socket.
    pub(crate) fn unix_listen(&mut self, fd: u64) -> Result<i64, i64> {
        let id = self.unix_named_of(fd).ok_or(EINVAL)?;
        let sock = self.named(id)?;
        if sock.dgram.is_some() {
            return Err(EOPNOTSUPP);
        }
        if sock.name.is_none() {
            return Err(EINVAL); // Linux would bind an abstract name of its own
        }
        sock.backlog.get_or_insert_with(VecDeque::new);
        Ok(0)
    }

    /// connect(2) of an AF_UNIX socket to a listening one: a pair of pipes; this descriptor
    /// becomes one end, the other waits in the listener's queue for accept.
    pub(crate) fn unix_connect(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        len: u64,
    ) -> Result<i64, i64> {
        let id = self.unix_named_of(fd).ok_or(EISCONN)?;
        let name = self.unix_address(m, addr, len)?;
        let abstract_name = name.first() == Some(&0);
        let Some(&target) = self.unix.names.get(&name) else {
            return Err(if abstract_name { ECONNREFUSED } else { ENOENT });
        };
        if self.named(id)?.dgram.is_some() {
            return self.unix_dgram_connect(id, target, name);
        }
        let seqpacket = self.named(id)?.seqpacket;
        let listener = self.named(target)?;
        if listener.dgram.is_some() || listener.seqpacket != seqpacket {
            return Err(ECONNREFUSED); // a socket of another type: Linux refuses too
        }
        match listener.backlog.as_ref() {
            None => return Err(ECONNREFUSED),
            Some(q) if q.len() >= MAX_BACKLOG => return Err(EAGAIN),
            Some(_) => {}
        }
        // A seqpacket connection is a pair of message pipes, as socketpair's.
        let (there, back) = if seqpacket {
            self.reserve_buffers(2 * crate::pipe::MESSAGE_PIPE_CAPACITY)?;
            (self.new_message_pipe(true), self.new_message_pipe(true))
        } else {
            self.reserve_buffers(2 * crate::pipe::PIPE_CAPACITY)?;
            (self.new_pipe(), self.new_pipe())
        };
        if let Some(q) = self.named(target)?.backlog.as_mut() {
            q.push_back((there, back));
        }
        self.p.fds.set_kind(
            fd,
            FileKind::Unix {
                rx: back,
                tx: there,
            },
        )?;
        if let Some(sock) = self.unix.sockets.get_mut(id as usize) {
            *sock = None; // the descriptor is a connected end now
        }
        self.procs.wake_blocked();
        Ok(0)
    }

    /// accept(2)/accept4(2) on a listening AF_UNIX socket.
    pub(crate) fn unix_accept(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        lenp: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        let id = self.unix_named_of(fd).ok_or(EINVAL)?;
        let nonblocking = self.p.fds.nonblocking(fd);
        let wait = !self.without_waiting(nonblocking);
        if self.named(id)?.dgram.is_some() {
            return Err(EOPNOTSUPP);
        }
        let queue = self.named(id)?.backlog.as_mut().ok_or(EINVAL)?;
        let Some((rx, tx)) = queue.pop_front() else {
            return Err(if wait { crate::pipe::ERESTART } else { EAGAIN });
        };
        let status = 2 | (flags & SOCK_NONBLOCK) as i32;
        let nfd =
            self.p
                .fds
                .install_kind(FileKind::Unix { rx, tx }, status, flags & SOCK_CLOEXEC != 0);
        let nfd = match nfd {
            Ok(n) => n,
            Err(e) => {
                self.unix_end_closed(m, rx, tx);
                return Err(e);
            }
        };
        if addr != 0 {
            write_unix_address(m, addr, lenp, None)?; // the connecting socket has no name
        }
        Ok(nfd)
    }

    /// Whether a listening socket has a connection for accept (poll's POLLIN).
    pub(crate) fn unix_pending(&self, id: u32) -> bool {
        self.unix
            .sockets
            .get(id as usize)
            .and_then(Option::as_ref)
            .and_then(|s| s.backlog.as_ref())
            .is_some_and(|q| !q.is_empty())
    }

    /// The last descriptor of a named socket closed: its name is free again, and the
    /// connections it never accepted end (their clients read EOF).
    pub(crate) fn unix_named_closed(&mut self, m: &mut dyn Machine, id: u32) {
        let Some(sock) = self
            .unix
            .sockets
            .get_mut(id as usize)
            .and_then(Option::take)
        else {
            return;
        };
        if let Some(name) = sock.name {
            self.unix.names.remove(&name);
        }
        for (rx, tx) in sock.backlog.unwrap_or_default() {
            self.unix_end_closed(m, rx, tx);
        }
    }

    /// An end of a pair closed: each pipe goes once no end holds it, with what was in
    /// flight on it.
    pub(crate) fn unix_end_closed(&mut self, m: &mut dyn Machine, rx: u32, tx: u32) {
        for id in [rx, tx] {
            if self.pipe_end_closed(id) {
                self.drop_in_flight(m, id);
            }
        }
    }

    /// Whether a connection waiting in a listener's queue holds pipe end `kind` (it counts as
    /// open: the client may write before the server accepts).
    pub(crate) fn queued_refers_to(&self, kind: &FileKind) -> bool {
        self.unix
            .sockets
            .iter()
            .flatten()
            .filter_map(|s| s.backlog.as_ref())
            .flatten()
            .any(|&(rx, tx)| FileKind::Unix { rx, tx }.refers_to(kind))
    }

    /// Drops what was in flight on pipe `id` (gone: both ends closed everywhere).
    pub(crate) fn drop_in_flight(&mut self, m: &mut dyn Machine, id: u32) {
        if let Some(queue) = self.in_flight.remove(&id) {
            for f in queue.into_iter().flatten() {
                self.release_file(m, f.kind);
            }
        }
    }

    /// Whether a file in flight refers to `kind`.
    pub(crate) fn in_flight_refers_to(&self, kind: &FileKind) -> bool {
        self.in_flight
            .values()
            .flatten()
            .flatten()
            .any(|f| f.kind.refers_to(kind))
    }
}
