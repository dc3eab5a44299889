//! Stream connections as a session sees them: a smoltcp TCP socket, or a pipe.
//!
//! A pipe joins two ring sockets of this stack when one connects to an address of the stack
//! where the other listens (127.0.0.1 or the stack's own address): the bytes go from one
//! socket's ring into a buffer and out to the other's, with no TCP in between. Clients see
//! a TCP connection (connect, accept, half-close, reset on close with unread data, names);
//! the stack saves the two smoltcp sockets and the frames they would exchange, which is most
//! of the cost of a proxy in front of the guest (qhttp) and of any loopback traffic.

use smoltcp::socket::tcp;
use smoltcp::storage::RingBuffer;
use smoltcp::time::Duration as SDuration;
use smoltcp::wire::IpEndpoint;

use smoltcp::iface::{SocketHandle, SocketSet};

/// Identifies a pipe in [`Pipes`].
pub type PipeId = usize;

/// A stream connection of a ring slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnId {
    Tcp(SocketHandle),
    /// A pipe and which end of it (0: the connecting side, 1: the accepted side).
    Pipe(PipeId, usize),
}

/// Both directions of one pipe.
#[derive(Debug)]
pub struct Pipe {
    /// `bufs[i]` is written by end `i` and read by the other end.
    bufs: [RingBuffer<'static, u8>; 2],
    /// End `i` will send nothing more (shutdown or close).
    fin: [bool; 2],
    /// An end aborted: both see a reset connection.
    reset: bool,
    /// End `i` no longer belongs to a slot.
    gone: [bool; 2],
    /// Each end's (local, remote) endpoints.
    names: [(IpEndpoint, IpEndpoint); 2],
}

/// Every pipe of a stack.
#[derive(Debug, Default)]
pub struct Pipes {
    slots: Vec<Option<Pipe>>,
    free: Vec<PipeId>,
}

impl Pipes {
    /// A new pipe from `client` (end 0) to `server` (end 1), `buf` bytes each way.
    pub fn open(&mut self, client: IpEndpoint, server: IpEndpoint, buf: usize) -> PipeId {
        let pipe = Pipe {
            bufs: [
                RingBuffer::new(vec![0u8; buf]),
                RingBuffer::new(vec![0u8; buf]),
            ],
            fin: [false; 2],
            reset: false,
            gone: [false; 2],
            names: [(client, server), (server, client)],
        };
        match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(pipe);
                id
            }
            None => {
                self.slots.push(Some(pipe));
                self.slots.len() - 1
            }
        }
    }

    fn get(&mut self, id: PipeId) -> Option<&mut Pipe> {
        self.slots.get_mut(id).and_then(Option::as_mut)
    }

    /// The end's slot lets go of it: after a close (`abort` false) the other end reads what is
    /// left, then end of stream; after an abort it sees a reset. Returns the buffer bytes freed
    /// when this was the last end.
    pub fn release(&mut self, id: PipeId, side: usize, abort: bool) -> Option<usize> {
        let pipe = self.get(id)?;
        pipe.gone[side] = true;
        pipe.fin[side] = true;
        if abort {
            pipe.reset = true;
        }
        if pipe.gone == [true, true] {
            let bytes = pipe.bufs[0].capacity() + pipe.bufs[1].capacity();
            self.slots[id] = None;
            self.free.push(id);
            return Some(bytes);
        }
        None
    }

    /// Every open pipe is reset (the stack is going away).
    pub fn reset_all(&mut self) {
        for p in self.slots.iter_mut().flatten() {
            p.reset = true;
        }
    }
}

/// One end of a pipe, borrowed for a pass.
pub struct PipeEnd<'a> {
    pipe: &'a mut Pipe,
    side: usize,
}

impl PipeEnd<'_> {
    /// Neither reset, nor shut for writing here, nor gone at the other end.
    fn may_send(&self) -> bool {
        let p = &self.pipe;
        !p.reset && !p.fin[self.side] && !p.gone[1 - self.side]
    }
}

/// A connection borrowed from the socket set or the pipes.
pub enum Conn<'a> {
    Tcp(&'a mut tcp::Socket<'static>),
    Pipe(PipeEnd<'a>),
    /// A pipe end that no longer exists (cannot happen while its slot holds it).
    Gone,
}

impl<'a> Conn<'a> {
    /// Borrows `id` from the two places connections live.
    pub fn get(sockets: &'a mut SocketSet<'static>, pipes: &'a mut Pipes, id: ConnId) -> Conn<'a> {
        match id {
            ConnId::Tcp(h) => Conn::Tcp(sockets.get_mut::<tcp::Socket>(h)),
            ConnId::Pipe(p, side) => match pipes.get(p) {
                Some(pipe) => Conn::Pipe(PipeEnd { pipe, side }),
                None => Conn::Gone,
            },
        }
    }

    /// The TCP state the session reasons with; a pipe maps its ends' FINs onto it.
    pub fn state(&self) -> tcp::State {
        match self {
            Conn::Tcp(s) => s.state(),
            Conn::Pipe(e) => {
                let (me, peer) = (e.side, 1 - e.side);
                let p = &e.pipe;
                if p.reset || (p.gone[peer] && !p.fin[peer]) {
                    return tcp::State::Closed;
                }
                match (p.fin[me], p.fin[peer]) {
                    (false, false) => tcp::State::Established,
                    (false, true) => tcp::State::CloseWait,
                    (true, false) => tcp::State::FinWait2,
                    (true, true) => tcp::State::TimeWait,
                }
            }
            Conn::Gone => tcp::State::Closed,
        }
    }

    pub fn may_send(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.may_send(),
            Conn::Pipe(e) => e.may_send(),
            Conn::Gone => false,
        }
    }

    pub fn can_send(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.can_send(),
            Conn::Pipe(e) => e.may_send() && !e.pipe.bufs[e.side].is_full(),
            Conn::Gone => false,
        }
    }

    pub fn can_recv(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.can_recv(),
            Conn::Pipe(e) => !e.pipe.reset && !e.pipe.bufs[1 - e.side].is_empty(),
            Conn::Gone => false,
        }
    }

    /// Received bytes not yet taken.
    pub fn recv_queue(&self) -> usize {
        match self {
            Conn::Tcp(s) => s.recv_queue(),
            Conn::Pipe(e) => e.pipe.bufs[1 - e.side].len(),
            Conn::Gone => 0,
        }
    }

    /// Bytes given to send and not acknowledged yet (a pipe: not read yet).
    pub fn send_queue(&self) -> usize {
        match self {
            Conn::Tcp(s) => s.send_queue(),
            Conn::Pipe(e) => e.pipe.bufs[e.side].len(),
            Conn::Gone => 0,
        }
    }

    /// Offers `f` free send space (one contiguous piece); `f` returns what it filled.
    pub fn send_with(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        match self {
            Conn::Tcp(s) => s
                .send(|buf| {
                    let n = f(buf);
                    (n, n)
                })
                .unwrap_or(0),
            Conn::Pipe(e) => {
                if e.may_send() {
                    e.pipe.bufs[e.side]
                        .enqueue_many_with(|buf| {
                            let n = f(buf);
                            (n, n)
                        })
                        .1
                } else {
                    0
                }
            }
            Conn::Gone => 0,
        }
    }

    /// Offers `f` received bytes (one contiguous piece); `f` returns what it took.
    pub fn recv_with(&mut self, f: impl FnOnce(&[u8]) -> usize) -> usize {
        match self {
            Conn::Tcp(s) => s
                .recv(|buf| {
                    let n = f(buf);
                    (n, n)
                })
                .unwrap_or(0),
            Conn::Pipe(e) => {
                let peer = 1 - e.side;
                e.pipe.bufs[peer]
                    .dequeue_many_with(|buf| {
                        let n = f(buf);
                        (n, n)
                    })
                    .1
            }
            Conn::Gone => 0,
        }
    }

    /// Drops up to `limit` received bytes unread; returns how many went.
    pub fn discard(&mut self, limit: usize) -> usize {
        let mut left = limit;
        while left > 0 {
            let n = self.recv_with(|b| b.len().min(left));
            if n == 0 {
                break;
            }
            left -= n;
        }
        limit - left
    }

    /// Sends FIN once what was sent before it is out.
    pub fn close(&mut self) {
        match self {
            Conn::Tcp(s) => s.close(),
            Conn::Pipe(e) => e.pipe.fin[e.side] = true,
            Conn::Gone => {}
        }
    }

    pub fn set_timeout(&mut self, t: Option<SDuration>) {
        if let Conn::Tcp(s) = self {
            s.set_timeout(t);
        }
    }

    pub fn local_endpoint(&self) -> Option<IpEndpoint> {
        match self {
            Conn::Tcp(s) => s.local_endpoint(),
            Conn::Pipe(e) => Some(e.pipe.names[e.side].0),
            Conn::Gone => None,
        }
    }

    pub fn remote_endpoint(&self) -> Option<IpEndpoint> {
        match self {
            Conn::Tcp(s) => s.remote_endpoint(),
            Conn::Pipe(e) => Some(e.pipe.names[e.side].1),
            Conn::Gone => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{IpAddress, Ipv4Address};

    fn ep(port: u16) -> IpEndpoint {
        IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::new(127, 0, 0, 1)), port)
    }

    #[test]
    fn a_pipe_carries_bytes_half_closes_and_resets_like_tcp() {
        let mut sockets = SocketSet::new(vec![]);
        let mut pipes = Pipes::default();
        let id = pipes.open(ep(40000), ep(80), 8);
        let (a, b) = (ConnId::Pipe(id, 0), ConnId::Pipe(id, 1));
        let mut c = Conn::get(&mut sockets, &mut pipes, a);
        assert_eq!(c.state(), tcp::State::Established);
        assert_eq!(
            c.send_with(|buf| {
                buf[..5].copy_from_slice(b"hello");
                5
            }),
            5
        );
        assert_eq!(c.remote_endpoint(), Some(ep(80)));
        c.close();
        assert_eq!(c.state(), tcp::State::FinWait2);
        assert!(!c.may_send());
        let mut s = Conn::get(&mut sockets, &mut pipes, b);
        assert_eq!(s.state(), tcp::State::CloseWait);
        assert_eq!(s.recv_queue(), 5);
        let mut got = Vec::new();
        while s.can_recv() {
            s.recv_with(|buf| {
                got.extend_from_slice(buf);
                buf.len()
            });
        }
        assert_eq!(got, b"hello");
        assert_eq!(s.local_endpoint(), Some(ep(80)));
        // Full: the sender is told there is no room, not given a short buffer silently.
        assert_eq!(s.send_with(|buf| buf.len()), 8);
        assert!(!s.can_send());
        // The client end goes away with unread data: an abort, the server end sees a reset.
        assert_eq!(pipes.release(id, 0, true), None);
        let s = Conn::get(&mut sockets, &mut pipes, b);
        assert_eq!(s.state(), tcp::State::Closed);
        assert!(!s.can_recv());
        assert_eq!(pipes.release(id, 1, false), Some(16));
        assert!(matches!(Conn::get(&mut sockets, &mut pipes, b), Conn::Gone));
    }
}
