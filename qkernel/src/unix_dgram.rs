//! Named AF_UNIX datagram sockets: socket(AF_UNIX, SOCK_DGRAM), bound to a path or an
//! abstract name, reached by sendto/sendmsg to that name or through connect. What syslog(3)
//! (/dev/log), sd_notify and many daemons' control sockets use.
//!
//! Each socket keeps the datagrams sent to it, with the sender's name, in a queue of its own
//! (Linux's receive buffer size); a send to a full queue waits (or EAGAIN), a receive takes
//! one whole datagram, cut to the buffer with MSG_TRUNC. A connected socket receives only from
//! its peer (EPERM for others, as Linux). The names are the same table as stream sockets'
//! (`unix.rs`): a path name lives in the kernel only, no socket file appears in the root.

use std::collections::VecDeque;

use crate::errno::*;
use crate::fs::FileKind;
use crate::pipe::ERESTART;
use crate::syscalls::Kernel;

/// Bytes a socket's queue holds (Linux's default receive buffer, net.core.rmem_default).
pub(crate) const QUEUE_BYTES: usize = 212_992;
/// The largest datagram (the send buffer less Linux's 32-byte accounting).
const MAX_DATAGRAM: usize = QUEUE_BYTES - 32;
const EMSGSIZE: i64 = 90;
const ECONNREFUSED: i64 = 111;
const EPERM: i64 = 1;

/// A datagram socket's state beside its name.
#[derive(Debug, Default)]
pub(crate) struct Datagrams {
    /// Received datagrams, oldest first: (the sender's name, if it had one; the bytes).
    queue: VecDeque<(Option<Vec<u8>>, Vec<u8>)>,
    /// Bytes in `queue`.
    bytes: usize,
    /// The name connect(2) gave: where sends without an address go, and the only sender
    /// received from.
    pub(crate) peer: Option<Vec<u8>>,
}

/// One received datagram: its bytes (cut to the buffer), its whole length and its sender.
pub(crate) struct Received {
    pub(crate) data: Vec<u8>,
    pub(crate) whole: usize,
    pub(crate) from: Option<Vec<u8>>,
}

impl Kernel {
    /// The datagram socket behind `fd`, if it is one.
    pub(crate) fn unix_dgram_of(&self, fd: u64) -> Option<u32> {
        match self.p.fds.kind(fd) {
            Ok(FileKind::UnixNamed(id)) => {
                let id = *id;
                self.unix_dgram_id(id).then_some(id)
            }
            _ => None,
        }
    }

    fn unix_dgram_id(&self, id: u32) -> bool {
        self.unix_socket_ref(id).is_some_and(|s| s.dgram.is_some())
    }

    fn datagrams(&mut self, id: u32) -> Result<&mut Datagrams, i64> {
        self.named(id)?.dgram.as_mut().ok_or(ENOTCONN)
    }

    /// connect(2) of datagram socket `id` to the socket bound to `name` (`target`).
    pub(crate) fn unix_dgram_connect(
        &mut self,
        id: u32,
        target: u32,
        name: Vec<u8>,
    ) -> Result<i64, i64> {
        if !self.unix_dgram_id(target) {
            return Err(ECONNREFUSED); // a socket of another type: Linux refuses too
        }
        self.datagrams(id)?.peer = Some(name);
        Ok(0)
    }

    /// Sends one datagram from socket `id` to `to`, or to its peer. A full queue at the
    /// receiver waits ([`ERESTART`]) unless `nonblocking`.
    pub(crate) fn unix_dgram_send(
        &mut self,
        id: u32,
        data: &[u8],
        to: Option<Vec<u8>>,
        nonblocking: bool,
    ) -> Result<usize, i64> {
        let (own, peer) = {
            let sock = self.named(id)?;
            let peer = sock.dgram.as_ref().and_then(|d| d.peer.clone());
            (sock.name.clone(), peer)
        };
        let to_peer = to.is_none();
        let to = to.or(peer).ok_or(ENOTCONN)?;
        let Some(&target) = self.unix.names.get(&to) else {
            // A peer that went away refuses; a path nobody bound does not exist.
            return Err(if to_peer || to.first() == Some(&0) {
                ECONNREFUSED
            } else {
                ENOENT
            });
        };
        if data.len() > MAX_DATAGRAM {
            return Err(EMSGSIZE);
        }
        let wait = !self.without_waiting(nonblocking);
        let queue = self.named(target)?.dgram.as_mut().ok_or(ECONNREFUSED)?;
        if queue.peer.is_some() && queue.peer != own {
            return Err(EPERM); // connected to someone else
        }
        if queue.bytes + data.len() > QUEUE_BYTES {
            return Err(if wait { ERESTART } else { EAGAIN });
        }
        queue.bytes += data.len();
        queue.queue.push_back((own, data.to_vec()));
        self.procs.wake_blocked();
        Ok(data.len())
    }

    /// Receives one datagram on socket `id`, cut to `capacity` bytes; waits ([`ERESTART`])
    /// for one unless `nonblocking`.
    pub(crate) fn unix_dgram_recv(
        &mut self,
        id: u32,
        capacity: usize,
        nonblocking: bool,
    ) -> Result<Received, i64> {
        let wait = !self.without_waiting(nonblocking);
        let queue = self.datagrams(id)?;
        let Some((from, mut data)) = queue.queue.pop_front() else {
            return Err(if wait { ERESTART } else { EAGAIN });
        };
        queue.bytes -= data.len();
        let whole = data.len();
        data.truncate(capacity);
        self.procs.wake_blocked(); // room for waiting senders
        Ok(Received { data, whole, from })
    }

    /// Poll readiness of datagram socket `id`: (readable, writable). Writable when a send to
    /// its peer would not wait (always, unconnected: it depends on the destination).
    pub(crate) fn unix_dgram_ready(&self, id: u32) -> (bool, bool) {
        let Some(d) = self.unix_socket_ref(id).and_then(|s| s.dgram.as_ref()) else {
            return (false, false);
        };
        let writable = d
            .peer
            .as_ref()
            .and_then(|p| self.unix.names.get(p))
            .and_then(|&t| self.unix_socket_ref(t))
            .and_then(|s| s.dgram.as_ref())
            .is_none_or(|q| q.bytes < QUEUE_BYTES);
        (!d.queue.is_empty(), writable)
    }

    /// FIONREAD of datagram socket `id`: the next datagram's length.
    pub(crate) fn unix_dgram_pending(&self, id: u32) -> usize {
        self.unix_socket_ref(id)
            .and_then(|s| s.dgram.as_ref())
            .and_then(|d| d.queue.front())
            .map_or(0, |(_, data)| data.len())
    }
}
