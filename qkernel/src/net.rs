//! Socket syscalls: TCP over IPv4 on the container's network stack (qnet), through the
//! platform's `net_*` calls. Addresses from the app are parsed with length checks; a socket is
//! a descriptor like any other (read, write, close, fcntl O_NONBLOCK).

use crate::errno::*;
use crate::fs::FileKind;
use crate::machine::Machine;
use crate::syscalls::Kernel;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const ENETUNREACH: i64 = 101;
const EADDRNOTAVAIL: i64 = 99;
const IPPROTO_IPV6: u64 = 41;
const IPV6_V6ONLY: u64 = 26;
const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
/// Largest datagram or chunk moved per call.
const CHUNK: usize = 64 << 10;
const SOCK_NONBLOCK: u64 = 0o4000;
const SOCK_CLOEXEC: u64 = 0o2000000;
pub(crate) const EAFNOSUPPORT: i64 = 97;
const ESOCKTNOSUPPORT: i64 = 94;
pub(crate) const ENOTSOCK: i64 = 88;
const EMSGSIZE: i64 = 90;
/// recv/send flag: do not wait, whatever the descriptor's mode.
const MSG_DONTWAIT: u64 = 0x40;
const MSG_NOSIGNAL: u64 = 0x4000;
/// recv flag: the whole length of a datagram cut to fit (and, in msg_flags, that it was cut).
const MSG_TRUNC: u64 = 0x20;
/// recvmmsg flag: wait for the first message only.
const MSG_WAITFORONE: u64 = 0x10000;
/// Most iovecs in one message (Linux's UIO_MAXIOV) and messages in one mmsg call.
const MAX_IOV: u64 = 1024;
/// `struct msghdr` and `struct mmsghdr` sizes on x86-64.
const MSGHDR_LEN: u64 = 56;
const MMSGHDR_LEN: u64 = 64;

/// The fields of a `struct msghdr` the socket calls use (control data is not supported and
/// comes back empty).
pub(crate) struct MsgHdr {
    name: u64,
    namelen: u64,
    /// (base, length) of each iovec.
    iov: Vec<(u64, u64)>,
}

pub(crate) fn read_u64(m: &dyn Machine, at: u64) -> Result<u64, i64> {
    let mut b = [0u8; 8];
    m.read(at, &mut b).map_err(|_| EFAULT)?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) fn read_msghdr(m: &dyn Machine, at: u64) -> Result<MsgHdr, i64> {
    let name = read_u64(m, at)?;
    let namelen = read_u64(m, at + 8)? & 0xffff_ffff;
    let iov_at = read_u64(m, at + 16)?;
    let count = read_u64(m, at + 24)?;
    if count > MAX_IOV {
        return Err(EMSGSIZE);
    }
    let iov = read_iovecs(m, iov_at, count)?;
    Ok(MsgHdr { name, namelen, iov })
}

/// A blocking stream write that sent part of its buffer and waits for room for the rest
/// (see [`Kernel::socket_io`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WriteProgress {
    fd: u64,
    /// The call's first buffer and whole length: the same call when it runs again.
    base: u64,
    len: u64,
    pub(crate) sent: u64,
}

/// `iov` without its first `skip` bytes.
fn iov_after(iov: &[(u64, u64)], mut skip: u64) -> Vec<(u64, u64)> {
    let mut rest = Vec::with_capacity(iov.len());
    for &(at, len) in iov {
        if skip >= len {
            skip -= len;
            continue;
        }
        rest.push((at.wrapping_add(skip), len - skip));
        skip = 0;
    }
    rest
}

/// `count` iovecs at `at`, as (base, length).
pub(crate) fn read_iovecs(m: &dyn Machine, at: u64, count: u64) -> Result<Vec<(u64, u64)>, i64> {
    (0..count)
        .map(|i| {
            let e = at.wrapping_add(i * 16);
            Ok((read_u64(m, e)?, read_u64(m, e.wrapping_add(8))?))
        })
        .collect()
}

impl MsgHdr {
    /// Bytes the iovecs hold, up to what one call moves.
    pub(crate) fn capacity(&self) -> usize {
        let total = crate::machine::iov_len(&self.iov);
        total.min(CHUNK as u64) as usize
    }

    pub(crate) fn gather(&self, m: &dyn Machine) -> Result<Vec<u8>, i64> {
        let mut out = vec![0u8; self.capacity()];
        let mut at = 0;
        for &(base, len) in &self.iov {
            let n = (len as usize).min(out.len() - at);
            m.read(base, &mut out[at..at + n]).map_err(|_| EFAULT)?;
            at += n;
        }
        Ok(out)
    }

    pub(crate) fn scatter(&self, m: &mut dyn Machine, mut data: &[u8]) -> Result<(), i64> {
        for &(base, len) in &self.iov {
            let n = (len as usize).min(data.len());
            m.write(base, &data[..n]).map_err(|_| EFAULT)?;
            data = &data[n..];
        }
        Ok(())
    }
}

/// Reads a `struct sockaddr_in`, or a `struct sockaddr_in6` holding an IPv4 address
/// (`::ffff:a.b.c.d`, or `::` for any): (host-order ip, port). The stack is IPv4: any other
/// IPv6 address is unreachable.
fn read_sockaddr(m: &dyn Machine, addr: u64, len: u64) -> Result<(u32, u16), i64> {
    if len < 16 {
        return Err(EINVAL);
    }
    let mut b = [0u8; 28];
    let n = (len as usize).min(28);
    m.read(addr, &mut b[..n]).map_err(|_| EFAULT)?;
    let port = u16::from_be_bytes([b[2], b[3]]);
    match u16::from_le_bytes([b[0], b[1]]) {
        AF_INET => Ok((u32::from_be_bytes([b[4], b[5], b[6], b[7]]), port)),
        AF_INET6 if n < 24 => Err(EINVAL),
        AF_INET6 => {
            let a = &b[8..24];
            let mapped = a[..10] == [0; 10] && a[10..12] == [0xff, 0xff];
            if mapped {
                Ok((u32::from_be_bytes([a[12], a[13], a[14], a[15]]), port))
            } else if a == [0u8; 16] {
                Ok((0, port))
            } else {
                Err(ENETUNREACH)
            }
        }
        _ => Err(EAFNOSUPPORT),
    }
}

/// The address `ip:port` as a socket of the app's family names it: a `struct sockaddr_in`,
/// or for an AF_INET6 socket a `struct sockaddr_in6` with the IPv4 address mapped
/// (`::ffff:a.b.c.d`; `::` for any).
fn sockaddr_bytes(v6: bool, ip: u32, port: u16) -> Vec<u8> {
    if !v6 {
        return sockaddr_in(ip, port).to_vec();
    }
    let mut b = vec![0u8; 28];
    b[..2].copy_from_slice(&AF_INET6.to_le_bytes());
    b[2..4].copy_from_slice(&port.to_be_bytes());
    if ip != 0 {
        b[18..20].copy_from_slice(&[0xff, 0xff]);
        b[20..24].copy_from_slice(&ip.to_be_bytes());
    }
    b
}

/// A `struct sockaddr_in` for a host-order ip and port.
fn sockaddr_in(ip: u32, port: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&AF_INET.to_le_bytes());
    b[2..4].copy_from_slice(&port.to_be_bytes());
    b[4..8].copy_from_slice(&ip.to_be_bytes());
    b
}

/// The port of a `struct sockaddr_in` or `sockaddr_in6` (the same place in both).
fn port_of(m: &dyn Machine, addr: u64) -> Result<u16, i64> {
    let mut b = [0u8; 4];
    m.read(addr, &mut b).map_err(|_| EFAULT)?;
    Ok(u16::from_be_bytes([b[2], b[3]]))
}

/// Writes the address `bytes` to `addr` with `*lenp` as its capacity, and its length to
/// `*lenp`, as accept/getsockname do.
fn write_sockaddr(m: &mut dyn Machine, addr: u64, lenp: u64, bytes: &[u8]) -> Result<(), i64> {
    if addr == 0 {
        return Ok(());
    }
    let mut l = [0u8; 4];
    m.read(lenp, &mut l).map_err(|_| EFAULT)?;
    let cap = u32::from_le_bytes(l) as usize;
    m.write(addr, &bytes[..cap.min(bytes.len())])
        .map_err(|_| EFAULT)?;
    m.write(lenp, &(bytes.len() as u32).to_le_bytes())
        .map_err(|_| EFAULT)?;
    Ok(())
}

/// An AF_INET6 socket of the app, carried on the IPv4 stack (see [`Kernel::socket`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Inet6 {
    /// IPV6_V6ONLY: it takes IPv6 traffic only, which this stack never carries.
    v6only: bool,
    /// A v6-only socket that was bound (to this port): it holds no port on the stack and
    /// never becomes ready, as such a listener in an IPv4-only pod on Linux.
    idle_port: Option<u16>,
}

impl Kernel {
    /// The socket behind `fd` and whether it is non-blocking.
    fn socket_of(&mut self, fd: u64) -> Result<(u32, bool), i64> {
        let s = match self.p.fds.kind(fd)? {
            FileKind::Socket(s) => *s,
            _ => return Err(ENOTSOCK),
        };
        let nonblocking = self.p.fds.nonblocking(fd);
        Ok((s, self.without_waiting(nonblocking)))
    }

    /// [`Kernel::socket_of`] for a call that waits until the socket is readable (`read`)
    /// or writable (`write`).
    fn socket_for(&mut self, fd: u64, read: bool, write: bool) -> Result<(u32, bool), i64> {
        let (s, nonblocking) = self.socket_of(fd)?;
        self.note_socket_wait(s, read, write);
        Ok((s, nonblocking))
    }

    pub(crate) fn socket(&mut self, m: &mut dyn Machine, domain: u64, ty: u64) -> Result<i64, i64> {
        const AF_UNIX: u64 = 1;
        if domain == AF_UNIX {
            return self.unix_socket(ty);
        }
        // AF_INET6 sockets are carried on the IPv4 stack with IPv4-mapped addresses (the pod
        // network is IPv4): dual-stack listeners on `[::]` and clients of `::ffff:a.b.c.d`
        // work; other IPv6 addresses are unreachable.
        let v6 = domain == AF_INET6 as u64;
        if domain != AF_INET as u64 && !v6 {
            return Err(EAFNOSUPPORT);
        }
        let stream = match ty & 0xf {
            SOCK_STREAM => true,
            SOCK_DGRAM => false,
            _ => return Err(ESOCKTNOSUPPORT),
        };
        let s = m.net_socket(stream)?;
        let flags = 2 | if ty & SOCK_NONBLOCK != 0 { 0o4000 } else { 0 };
        let fd = self
            .p
            .fds
            .install_kind(FileKind::Socket(s), flags, ty & SOCK_CLOEXEC != 0)
            .inspect_err(|_| m.net_close(s))?;
        if v6 {
            self.inet6.insert(s, Inet6::default());
        }
        Ok(fd)
    }

    /// Where a datagram of socket `s` goes: the address at `addr`, which a v6-only socket
    /// cannot reach on this IPv4 network.
    fn destination(&self, m: &dyn Machine, s: u32, addr: u64, len: u64) -> Result<(u32, u16), i64> {
        if self.inet6.get(&s).is_some_and(|i| i.v6only) {
            return Err(ENETUNREACH);
        }
        read_sockaddr(m, addr, len)
    }

    /// Whether socket `s` is the app's AF_INET6 one.
    pub(crate) fn is_inet6(&self, s: u32) -> bool {
        self.inet6.contains_key(&s)
    }

    /// Whether socket `s` is a bound v6-only one, which never becomes ready here.
    pub(crate) fn is_idle_v6(&self, s: u32) -> bool {
        self.inet6.get(&s).is_some_and(|i| i.idle_port.is_some())
    }

    pub(crate) fn bind(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        len: u64,
    ) -> Result<i64, i64> {
        if self.unix_named_of(fd).is_some() {
            return self.unix_bind(m, fd, addr, len);
        }
        let (s, _) = self.socket_of(fd)?;
        if self.inet6.get(&s).is_some_and(|i| i.v6only) {
            // Bound, but holding nothing on the IPv4 stack (it would take no IPv4 traffic).
            let port = match read_sockaddr(m, addr, len) {
                Ok((0, _)) | Err(ENETUNREACH) => port_of(m, addr)?,
                _ => return Err(EINVAL), // an IPv4-mapped address on a v6-only socket
            };
            if let Some(i) = self.inet6.get_mut(&s) {
                i.idle_port = Some(port);
            }
            return Ok(0);
        }
        match self.with_sockaddr(m, fd, addr, len, |m, s, ip, port| m.net_bind(s, ip, port)) {
            Err(ENETUNREACH) => Err(EADDRNOTAVAIL), // not an address of this pod
            r => r,
        }
    }

    /// Runs `op` with the socket behind `fd` and the address the app passed.
    fn with_sockaddr(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        len: u64,
        op: impl FnOnce(&mut dyn Machine, crate::machine::SocketId, u32, u16) -> Result<(), i64>,
    ) -> Result<i64, i64> {
        let (s, _) = self.socket_of(fd)?;
        let (ip, port) = read_sockaddr(m, addr, len)?;
        op(m, s, ip, port).map(|()| 0)
    }

    pub(crate) fn listen(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        backlog: u64,
    ) -> Result<i64, i64> {
        if self.unix_named_of(fd).is_some() {
            return self.unix_listen(fd);
        }
        let (s, _) = self.socket_of(fd)?;
        if self.is_idle_v6(s) {
            return Ok(0);
        }
        m.net_listen(s, (backlog as u32).clamp(1, 4096)).map(|()| 0)
    }

    pub(crate) fn accept(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        lenp: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        if self.unix_named_of(fd).is_some() {
            return self.unix_accept(m, fd, addr, lenp, flags);
        }
        let (s, _) = self.socket_of(fd)?;
        if self.is_idle_v6(s) {
            // No connection ever comes (Linux would wait for good; see docs/qvisor.md).
            return Err(EAGAIN);
        }
        let (s, nonblocking) = self.socket_for(fd, true, false)?;
        let (new, ip, port) = m.net_accept(s, nonblocking)?;
        let status = 2 | if flags & SOCK_NONBLOCK != 0 {
            0o4000
        } else {
            0
        };
        let nfd = self
            .p
            .fds
            .install_kind(FileKind::Socket(new), status, flags & SOCK_CLOEXEC != 0)
            .inspect_err(|_| m.net_close(new))?;
        let v6 = self.is_inet6(s);
        if v6 {
            self.inet6.insert(new, Inet6::default()); // an accepted socket has its family
        }
        write_sockaddr(m, addr, lenp, &sockaddr_bytes(v6, ip, port))?;
        Ok(nfd)
    }

    pub(crate) fn connect(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        len: u64,
    ) -> Result<i64, i64> {
        if self.unix_named_of(fd).is_some() {
            return self.unix_connect(m, fd, addr, len);
        }
        let (s, _) = self.socket_of(fd)?;
        if self.inet6.get(&s).is_some_and(|i| i.v6only) {
            return Err(ENETUNREACH); // no IPv6 route in this pod
        }
        let nonblocking = self.p.fds.nonblocking(fd);
        self.with_sockaddr(m, fd, addr, len, |m, s, ip, port| {
            m.net_connect(s, ip, port, nonblocking)
        })
    }

    pub(crate) fn shutdown(&mut self, m: &mut dyn Machine, fd: u64, how: u64) -> Result<i64, i64> {
        if self.unix_of(fd).is_some() {
            return self.unix_shutdown(fd, how);
        }
        let (s, _) = self.socket_of(fd)?;
        m.net_shutdown(s, how as u32).map(|()| 0)
    }

    pub(crate) fn sockname(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        addr: u64,
        lenp: u64,
        peer: bool,
    ) -> Result<i64, i64> {
        if self.unix_of(fd).is_some() || self.unix_named_of(fd).is_some() {
            return self.unix_name(m, fd, (addr, lenp), peer);
        }
        let (s, _) = self.socket_of(fd)?;
        let (ip, port) = match self.inet6.get(&s).and_then(|i| i.idle_port) {
            Some(port) if !peer => (0, port),
            Some(_) => return Err(ENOTCONN),
            None => m.net_name(s, peer)?,
        };
        write_sockaddr(m, addr, lenp, &sockaddr_bytes(self.is_inet6(s), ip, port))?;
        Ok(0)
    }

    /// A read (`write` false) or write of an IPv4 socket straight between the app's buffers
    /// (`iov`) and the stack, with send/recv `flags` (MSG_DONTWAIT; MSG_NOSIGNAL spares a
    /// broken connection's writer SIGPIPE, as on Linux).
    pub(crate) fn socket_io(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        iov: &[(u64, u64)],
        flags: u64,
        write: bool,
    ) -> Result<i64, i64> {
        let (s, nonblocking) = self.socket_for(fd, !write, write)?;
        // A blocking call tried without waiting (by the host thread, or beside other
        // processes): if it would wait, it runs again where it may.
        let tried = nonblocking && !self.p.fds.nonblocking(fd) && flags & MSG_DONTWAIT == 0;
        let nonblocking = nonblocking || flags & MSG_DONTWAIT != 0;
        if !write {
            let n = m
                .net_recv_user(s, iov, nonblocking)
                .map(|(n, _)| n as i64)?;
            if n >= crate::fastread::FAST_READ_MIN && flags == 0 {
                self.offer_fast_read(m, fd, s);
            }
            return Ok(n);
        }
        // A blocking write goes on until all of it is in (Linux: a short count only after a
        // signal or a timeout); what went in before an error is the call's result. Tried
        // without waiting, a write that sent part keeps what it sent in its thread and waits
        // for room like any other; run again, it goes on from there.
        let len = crate::machine::iov_len(iov);
        let base = iov.first().map_or(0, |&(at, _)| at);
        let mut sent = match self.t.write_progress.take() {
            Some(w) if (w.fd, w.base, w.len) == (fd, base, len) => w.sent,
            _ => 0,
        };
        let result = loop {
            // The first try, nearly always the only one, takes the app's list as it is.
            let rest;
            let pieces = if sent == 0 {
                iov
            } else {
                rest = iov_after(iov, sent);
                &rest
            };
            match m.net_send_user(s, pieces, nonblocking) {
                Ok(n) => {
                    sent += n as u64;
                    if (nonblocking && !tried) || n == 0 || sent >= len {
                        break Ok(sent as i64);
                    }
                }
                Err(EAGAIN) if tried && sent > 0 => {
                    self.t.write_progress = Some(WriteProgress {
                        fd,
                        base,
                        len,
                        sent,
                    });
                    break Err(EAGAIN);
                }
                Err(_) if sent > 0 => break Ok(sent as i64),
                Err(EPIPE) if flags & MSG_NOSIGNAL == 0 => break Err(self.broken_pipe()),
                Err(e) => break Err(e),
            }
        };
        if result.is_ok_and(|n| n >= crate::fastread::FAST_READ_MIN) && flags == 0 {
            self.offer_fast_read(m, fd, s);
        }
        result
    }

    /// recvfrom: the source is the datagram's sender (a stream's peer).
    pub(crate) fn recvfrom(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        (buf, len, flags): (u64, u64, u64),
        src: u64,
        srclen: u64,
    ) -> Result<i64, i64> {
        if let Some(id) = self.unix_dgram_of(fd) {
            let nonblocking = self.p.fds.nonblocking(fd) || flags & MSG_DONTWAIT != 0;
            let got = self.unix_dgram_recv(id, (len as usize).min(CHUNK), nonblocking)?;
            m.write(buf, &got.data).map_err(|_| EFAULT)?;
            if src != 0 && srclen != 0 {
                crate::unix::write_sender_address(m, src, srclen, got.from.as_deref())?;
            }
            let whole = flags & MSG_TRUNC != 0;
            return Ok(if whole { got.whole } else { got.data.len() } as i64);
        }
        if self.unix_of(fd).is_some() {
            // A socket pair's peer has no name: the address length is 0.
            if src != 0 && srclen != 0 {
                m.write(srclen, &0u32.to_le_bytes()).map_err(|_| EFAULT)?;
            }
            return self.read(m, fd, buf, len, None);
        }
        let (s, nonblocking) = self.socket_for(fd, true, false)?;
        let nonblocking = nonblocking || flags & MSG_DONTWAIT != 0;
        let (n, from) = m.net_recv_user(s, &[(buf, len)], nonblocking)?;
        if n as i64 >= crate::fastread::FAST_READ_MIN && flags == 0 && src == 0 {
            self.offer_fast_read(m, fd, s);
        }
        match from {
            Some((ip, port)) => {
                write_sockaddr(m, src, srclen, &sockaddr_bytes(self.is_inet6(s), ip, port))?
            }
            // A stream: Linux writes an address length of 0 and no address.
            None if src != 0 && srclen != 0 => {
                m.write(srclen, &0u32.to_le_bytes()).map_err(|_| EFAULT)?
            }
            None => {}
        }
        Ok(n as i64)
    }

    /// sendto: to `dest` for a datagram socket; without one, like write.
    pub(crate) fn sendto(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        (buf, len, flags): (u64, u64, u64),
        dest: u64,
        dlen: u64,
    ) -> Result<i64, i64> {
        if let Some(id) = self.unix_dgram_of(fd) {
            let to = match dest {
                0 => None,
                _ => Some(self.unix_address(m, dest, dlen)?),
            };
            let mut tmp = vec![0u8; (len as usize).min(CHUNK)];
            m.read(buf, &mut tmp).map_err(|_| EFAULT)?;
            let nonblocking = self.p.fds.nonblocking(fd) || flags & MSG_DONTWAIT != 0;
            return self
                .unix_dgram_send(id, &tmp, to, nonblocking)
                .map(|n| n as i64);
        }
        if self.unix_of(fd).is_some() {
            // A socket pair is connected: the address is ignored.
            return self.write(m, fd, buf, len, None);
        }
        if dest == 0 {
            return self.socket_io(m, fd, &[(buf, len)], flags, true);
        }
        let (s, nonblocking) = self.socket_for(fd, false, true)?;
        let nonblocking = nonblocking || flags & MSG_DONTWAIT != 0;
        let (ip, port) = self.destination(m, s, dest, dlen)?;
        let mut tmp = vec![0u8; (len as usize).min(CHUNK)];
        m.read(buf, &mut tmp).map_err(|_| EFAULT)?;
        m.net_sendto(s, &tmp, ip, port, nonblocking)
            .map(|n| n as i64)
    }

    /// sendmsg: the iovecs gathered into one send (one datagram), to `msg_name` if given.
    pub(crate) fn sendmsg(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        msg: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        if self.unix_of(fd).is_some() {
            return self.unix_sendmsg(m, fd, msg, flags);
        }
        if let Some(id) = self.unix_dgram_of(fd) {
            let nonblocking = self.p.fds.nonblocking(fd) || flags & MSG_DONTWAIT != 0;
            let h = read_msghdr(m, msg)?;
            let to = match h.name {
                0 => None,
                name => Some(self.unix_address(m, name, h.namelen)?),
            };
            let data = h.gather(m)?;
            return self
                .unix_dgram_send(id, &data, to, nonblocking)
                .map(|n| n as i64);
        }
        let h = read_msghdr(m, msg)?;
        if h.name == 0 {
            return self.socket_io(m, fd, &h.iov, flags, true);
        }
        let (s, nonblocking) = self.socket_for(fd, false, true)?;
        let nonblocking = nonblocking || flags & MSG_DONTWAIT != 0;
        let (ip, port) = self.destination(m, s, h.name, h.namelen)?;
        Ok(m.net_sendto(s, &h.gather(m)?, ip, port, nonblocking)? as i64)
    }

    /// recvmsg: one receive scattered over the iovecs, the sender in `msg_name`.
    pub(crate) fn recvmsg(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        msg: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        if self.unix_of(fd).is_some() {
            return self.unix_recvmsg(m, fd, msg, flags);
        }
        if let Some(id) = self.unix_dgram_of(fd) {
            let nonblocking = self.p.fds.nonblocking(fd) || flags & MSG_DONTWAIT != 0;
            let h = read_msghdr(m, msg)?;
            let got = self.unix_dgram_recv(id, h.capacity(), nonblocking)?;
            h.scatter(m, &got.data)?;
            if h.name != 0 {
                // msg_namelen is the capacity in, the address length out.
                crate::unix::write_sender_address(m, h.name, msg + 8, got.from.as_deref())?;
            }
            let truncated = if got.whole > got.data.len() {
                MSG_TRUNC as u32
            } else {
                0
            };
            m.write(msg + 40, &0u64.to_le_bytes()).map_err(|_| EFAULT)?;
            m.write(msg + 48, &truncated.to_le_bytes())
                .map_err(|_| EFAULT)?;
            let n = if flags & MSG_TRUNC != 0 {
                got.whole
            } else {
                got.data.len()
            };
            return Ok(n as i64);
        }
        let (s, nonblocking) = self.socket_for(fd, true, false)?;
        let nonblocking = nonblocking || flags & MSG_DONTWAIT != 0;
        let h = read_msghdr(m, msg)?;
        let (n, from) = m.net_recv_user(s, &h.iov, nonblocking)?;
        if h.name != 0 {
            // msg_namelen is the capacity in, the address length out (0 for a stream).
            let len = match from {
                Some((ip, port)) => {
                    let bytes = sockaddr_bytes(self.is_inet6(s), ip, port);
                    let cap = (h.namelen as usize).min(bytes.len());
                    m.write(h.name, &bytes[..cap]).map_err(|_| EFAULT)?;
                    bytes.len() as u32
                }
                None => 0,
            };
            m.write(msg + 8, &len.to_le_bytes()).map_err(|_| EFAULT)?;
        }
        // No control data; no flags.
        m.write(msg + 40, &0u64.to_le_bytes()).map_err(|_| EFAULT)?;
        m.write(msg + 48, &0u32.to_le_bytes()).map_err(|_| EFAULT)?;
        Ok(n as i64)
    }

    /// readv/writev on a socket: one receive or one send (one datagram) over all the iovecs.
    pub(crate) fn socket_vectored(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        iov: Vec<(u64, u64)>,
        write: bool,
    ) -> Result<i64, i64> {
        let h = MsgHdr {
            name: 0,
            namelen: 0,
            iov,
        };
        if let Some(id) = self.unix_dgram_of(fd) {
            let nonblocking = self.p.fds.nonblocking(fd);
            return if write {
                let data = h.gather(m)?;
                self.unix_dgram_send(id, &data, None, nonblocking)
                    .map(|n| n as i64)
            } else {
                let got = self.unix_dgram_recv(id, h.capacity(), nonblocking)?;
                h.scatter(m, &got.data)?;
                Ok(got.data.len() as i64)
            };
        }
        self.socket_io(m, fd, &h.iov, 0, write)
    }

    /// sendmmsg/recvmmsg: each message in turn, its length in `msg_len`; the count done is
    /// returned, or the first message's error if none was.
    pub(crate) fn mmsg(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        vec: u64,
        vlen: u64,
        flags: u64,
        send: bool,
    ) -> Result<i64, i64> {
        let waits_for_all = !send && vlen > 1 && flags & (MSG_DONTWAIT | MSG_WAITFORONE) == 0;
        // A blocking recvmmsg waits for every message, as Linux's does. Tried without waiting,
        // it could take the first messages and then find it must wait; what it took cannot be
        // put back. So it is served only where it may wait.
        if waits_for_all && !self.p.fds.nonblocking(fd) && self.decline_nowait() {
            return Err(EAGAIN);
        }
        let mut done = 0u64;
        for i in 0..vlen.min(MAX_IOV) {
            let hdr = vec.wrapping_add(i * MMSGHDR_LEN);
            let flags = if !send && done > 0 && flags & MSG_WAITFORONE != 0 {
                flags | MSG_DONTWAIT
            } else {
                flags
            };
            let r = if send {
                self.sendmsg(m, fd, hdr, flags)
            } else {
                self.recvmsg(m, fd, hdr, flags)
            };
            match r {
                Ok(n) => {
                    m.write(hdr + MSGHDR_LEN, &(n as u32).to_le_bytes())
                        .map_err(|_| EFAULT)?;
                    done += 1;
                }
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done as i64)
    }

    /// setsockopt: the options qnet keeps go to it (`SO_REUSEADDR`, `SO_REUSEPORT`,
    /// `SO_KEEPALIVE`, `SO_RCVBUF`, `SO_SNDBUF`, `TCP_NODELAY`; an int of at least 4 bytes);
    /// `IPV6_V6ONLY` is qkernel's. Others are accepted and change nothing (`SO_LINGER`,
    /// `TCP_CORK`, timeouts...): apps set them as hints and fail hard on an error.
    pub(crate) fn setsockopt(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        (level, name): (u64, u64),
        (val, len): (u64, u64),
    ) -> Result<i64, i64> {
        if self.unix_of(fd).is_some() || self.unix_named_of(fd).is_some() {
            return Ok(0);
        }
        let (s, _) = self.socket_of(fd)?;
        if let Some(send) = timeout_option(level, name) {
            return self.set_socket_timeout(m, s, send, (val, len));
        }
        let stack_keeps = stack_option(level, name);
        if !stack_keeps && (level, name) != (IPPROTO_IPV6, IPV6_V6ONLY) {
            return Ok(0);
        }
        if (len as i64) < 4 {
            return Err(EINVAL);
        }
        let mut v = [0u8; 4];
        m.read(val, &mut v).map_err(|_| EFAULT)?;
        let value = i32::from_le_bytes(v);
        if stack_keeps {
            m.net_set_option(s, level as u32, name as u32, value as u32 as u64)?;
        } else if let Some(i) = self.inet6.get_mut(&s) {
            i.v6only = value != 0;
        }
        Ok(0)
    }

    /// getsockopt: SO_ERROR and the options qnet keeps from the stack, `SO_DOMAIN` and
    /// `IPV6_V6ONLY` from qkernel; others read as 0. The value is an int, cut to `*lenp`
    /// bytes if that is less.
    pub(crate) fn getsockopt(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        level: u64,
        name: u64,
        val: u64,
        lenp: u64,
    ) -> Result<i64, i64> {
        const SOL_SOCKET: u64 = 1;
        const SO_ERROR: u64 = 4;
        const SO_DOMAIN: u64 = 39;
        let value = if self.unix_of(fd).is_some() || self.unix_named_of(fd).is_some() {
            0
        } else if let Some(send) = timeout_option(level, name) {
            let (s, _) = self.socket_of(fd)?;
            let (rcv, snd) = self.sock_timeouts.get(&s).copied().unwrap_or((0, 0));
            let ns = if send { snd } else { rcv };
            let mut tv = [0u8; 16];
            tv[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
            tv[8..].copy_from_slice(&(ns % 1_000_000_000 / 1000).to_le_bytes());
            return put_option(m, val, lenp, &tv);
        } else if (level, name) == (IPPROTO_IPV6, IPV6_V6ONLY) {
            let (s, _) = self.socket_of(fd)?;
            u32::from(self.inet6.get(&s).is_some_and(|i| i.v6only))
        } else if level == SOL_SOCKET && name == SO_ERROR {
            let (s, _) = self.socket_of(fd)?;
            m.net_take_error(s)? as u32
        } else if level == SOL_SOCKET && name == SO_DOMAIN {
            let (s, _) = self.socket_of(fd)?;
            if self.is_inet6(s) {
                10 // AF_INET6
            } else {
                2 // AF_INET
            }
        } else if stack_option(level, name) {
            let (s, _) = self.socket_of(fd)?;
            m.net_option(s, level as u32, name as u32)? as u32
        } else {
            0
        };
        put_option(m, val, lenp, &value.to_le_bytes())
    }

    /// SO_RCVTIMEO / SO_SNDTIMEO (`send`): a `struct timeval`; zero is no timeout.
    fn set_socket_timeout(
        &mut self,
        m: &mut dyn Machine,
        s: u32,
        send: bool,
        (val, len): (u64, u64),
    ) -> Result<i64, i64> {
        if (len as i64) < 16 {
            return Err(EINVAL);
        }
        let mut tv = [0u8; 16];
        m.read(val, &mut tv).map_err(|_| EFAULT)?;
        let sec = i64::from_le_bytes(tv[..8].try_into().unwrap_or_default());
        let usec = i64::from_le_bytes(tv[8..].try_into().unwrap_or_default());
        if !(0..1_000_000).contains(&usec) {
            return Err(33); // EDOM
        }
        // A negative time is no timeout (Linux: "treated as zero"), as is zero.
        let ns = if sec < 0 {
            0
        } else {
            (sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(usec as u64 * 1000)
        };
        let t = self.sock_timeouts.entry(s).or_default();
        if send {
            t.1 = ns;
        } else {
            t.0 = ns;
        }
        Ok(0)
    }

    /// The SO_RCVTIMEO or SO_SNDTIMEO that bounds `call`'s wait, if it is a read or write
    /// of a socket that set one.
    pub(crate) fn socket_call_timeout(&self, call: &crate::SyscallArgs) -> Option<u64> {
        let send = match call.nr {
            0 | 19 | 45 | 47 | 43 | 288 => false, // read, readv, recvfrom, recvmsg, accept(4)
            1 | 20 | 44 | 46 => true,             // write, writev, sendto, sendmsg
            _ => return None,
        };
        let FileKind::Socket(s) = self.p.fds.kind(call.args[0]).ok()? else {
            return None;
        };
        let (rcv, snd) = self.sock_timeouts.get(s)?;
        let ns = if send { *snd } else { *rcv };
        (ns > 0).then_some(ns)
    }
}

/// Writes an option's value for getsockopt, cut to the `*lenp` bytes the app offers, and the
/// length written.
fn put_option(m: &mut dyn Machine, val: u64, lenp: u64, value: &[u8]) -> Result<i64, i64> {
    if val != 0 {
        let mut l = [0u8; 4];
        m.read(lenp, &mut l).map_err(|_| EFAULT)?;
        let len = i32::from_le_bytes(l);
        if len < 0 {
            return Err(EINVAL);
        }
        let n = (len as usize).min(value.len());
        m.write(val, &value[..n]).map_err(|_| EFAULT)?;
        m.write(lenp, &(n as u32).to_le_bytes())
            .map_err(|_| EFAULT)?;
    }
    Ok(0)
}

/// Whether option `name` of `level` is SO_RCVTIMEO (false) or SO_SNDTIMEO (true), in their
/// old or new (`_NEW`, the same `timeval` on x86-64) numbers.
fn timeout_option(level: u64, name: u64) -> Option<bool> {
    const SOL_SOCKET: u64 = 1;
    match (level, name) {
        (SOL_SOCKET, 20 | 66) => Some(false),
        (SOL_SOCKET, 21 | 67) => Some(true),
        _ => None,
    }
}

/// Whether qnet keeps option `name` of `level` (the ring carries it).
fn stack_option(level: u64, name: u64) -> bool {
    const SOL_SOCKET: u64 = 1;
    const IPPROTO_TCP: u64 = 6;
    matches!(
        (level, name),
        // SO_REUSEADDR, SO_TYPE, SO_SNDBUF, SO_RCVBUF, SO_KEEPALIVE, SO_REUSEPORT,
        // SO_ACCEPTCONN, SO_PROTOCOL
        (SOL_SOCKET, 2 | 3 | 7 | 8 | 9 | 15 | 30 | 38) | (IPPROTO_TCP, 1) // TCP_NODELAY
    )
}

#[cfg(test)]
mod tests {
    use super::iov_after;

    #[test]
    fn the_rest_of_an_iovec_list_starts_where_a_short_write_stopped() {
        let iov = [(0x1000, 10), (0x2000, 0), (0x3000, 5)];
        assert_eq!(iov_after(&iov, 0), vec![(0x1000, 10), (0x3000, 5)]);
        assert_eq!(iov_after(&iov, 4), vec![(0x1004, 6), (0x3000, 5)]);
        assert_eq!(iov_after(&iov, 10), vec![(0x3000, 5)]);
        assert_eq!(iov_after(&iov, 12), vec![(0x3002, 3)]);
        assert!(iov_after(&iov, 15).is_empty());
        assert!(iov_after(&iov, 99).is_empty());
    }
}
