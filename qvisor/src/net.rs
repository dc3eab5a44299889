//! The container's network: a qnet stack running in qvisor on a TAP in the container's network
//! namespace, and the guest's sockets as clients of it over the socket ring.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use anyhow::Context;
use qnet::phy::TapOptions;
use qnet::runner::RunningStack;
use qnet::{Ipv4Cidr, StackConfig};
use qnet_client::{poll, Client, Interest, TcpListener, TcpStream, UdpSocket};
use qnet_ring::{READY_ERR, READY_HUP, READY_IN, READY_OUT, READY_RDHUP};

use qkernel::{SocketId, SocketReady};

const EAGAIN: i64 = 11;
const EBADF: i64 = 9;
const EINVAL: i64 = 22;
const ENOTCONN: i64 = 107;
const EOPNOTSUPP: i64 = 95;
const EMFILE: i64 = 24;
/// Most sockets one container may hold (qnet bounds its ring slots too).
const MAX_SOCKETS: usize = 1024;

/// Where the container's network comes from.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// A network namespace (`ip netns add NAME`) to put the TAP in.
    pub netns: String,
    pub tap: String,
    /// The container's address.
    pub addr: Ipv4Cidr,
    /// An address for the kernel side of the TAP (the peer the container reaches), if any.
    pub peer: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
}

enum Sock {
    Fresh {
        bound: Option<SocketAddr>,
    },
    Stream(TcpStream),
    Listener(TcpListener),
    /// A datagram socket not yet bound (bound on bind, connect or the first send).
    FreshDgram,
    Dgram(UdpSocket),
}

pub struct GuestNet {
    socks: Vec<Option<Sock>>,
    client: Client,
    // Dropped last: the stack outlives its client.
    _stack: RunningStack,
}

fn errno(e: io::Error) -> i64 {
    match (e.raw_os_error(), e.kind()) {
        (Some(n), _) => n as i64,
        (None, io::ErrorKind::WouldBlock) => EAGAIN,
        (None, io::ErrorKind::TimedOut) => 110,
        (None, io::ErrorKind::BrokenPipe) => 32,
        _ => 5,
    }
}

fn v4(ip: u32, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

fn split(a: SocketAddr) -> (u32, u16) {
    match a {
        SocketAddr::V4(v) => (u32::from(*v.ip()), v.port()),
        SocketAddr::V6(v) => (0, v.port()),
    }
}

impl GuestNet {
    /// Starts the stack on a TAP in the namespace and attaches to it.
    pub fn start(cfg: &NetConfig) -> anyhow::Result<GuestNet> {
        let mut stack_cfg = StackConfig::new(cfg.addr);
        stack_cfg.gateway = cfg.gateway;
        stack_cfg.ring_slots = MAX_SOCKETS as u32;
        let socket: PathBuf =
            std::env::temp_dir().join(format!("qvisor-net-{}.sock", std::process::id()));
        let tap = TapOptions {
            name: cfg.tap.clone(),
            netns: Some(cfg.netns.clone()),
            mtu: stack_cfg.mtu,
            peer_addr: cfg.peer,
        };
        let stack = RunningStack::start(stack_cfg, Some(&tap), &socket)
            .context("starting the network stack")?;
        let client = Client::connect(&socket).context("attaching to the network stack")?;
        Ok(GuestNet {
            socks: Vec::new(),
            client,
            _stack: stack,
        })
    }

    fn get(&mut self, s: SocketId) -> Result<&mut Sock, i64> {
        self.socks
            .get_mut(s as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)
    }

    fn insert(&mut self, sock: Sock) -> Result<SocketId, i64> {
        let i = match self.socks.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.socks.len() < MAX_SOCKETS => {
                self.socks.push(None);
                self.socks.len() - 1
            }
            None => return Err(EMFILE),
        };
        self.socks[i] = Some(sock);
        Ok(i as SocketId)
    }

    pub fn socket(&mut self, stream: bool) -> Result<SocketId, i64> {
        self.insert(if stream {
            Sock::Fresh { bound: None }
        } else {
            Sock::FreshDgram
        })
    }

    /// The datagram socket behind `s`, bound to `at` (any port) if it was not yet.
    fn dgram(&mut self, s: SocketId, at: SocketAddr) -> Result<&mut UdpSocket, i64> {
        let client = self.client.clone();
        let sock = self.get(s)?;
        if let Sock::FreshDgram = sock {
            *sock = Sock::Dgram(UdpSocket::bind(&client, at).map_err(errno)?);
        }
        match sock {
            Sock::Dgram(u) => Ok(u),
            _ => Err(EINVAL),
        }
    }

    pub fn sendto(
        &mut self,
        s: SocketId,
        buf: &[u8],
        ip: u32,
        port: u16,
        nonblocking: bool,
    ) -> Result<usize, i64> {
        if let Sock::Stream(_) = self.get(s)? {
            return self.send(s, buf, nonblocking);
        }
        let u = self.dgram(s, v4(0, 0))?;
        u.set_nonblocking(nonblocking).map_err(errno)?;
        u.send_to(buf, v4(ip, port)).map_err(errno)
    }

    pub fn recvfrom(
        &mut self,
        s: SocketId,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<(usize, u32, u16), i64> {
        if let Sock::Stream(_) = self.get(s)? {
            let n = self.recv(s, buf, nonblocking)?;
            let (ip, port) = self.name(s, true)?;
            return Ok((n, ip, port));
        }
        let u = self.dgram(s, v4(0, 0))?;
        u.set_nonblocking(nonblocking).map_err(errno)?;
        let (n, from) = u.recv_from(buf).map_err(errno)?;
        let (ip, port) = split(from);
        Ok((n, ip, port))
    }

    pub fn bind(&mut self, s: SocketId, ip: u32, port: u16) -> Result<(), i64> {
        if let Sock::FreshDgram = self.get(s)? {
            return self.dgram(s, v4(ip, port)).map(|_| ());
        }
        match self.get(s)? {
            Sock::Fresh { bound } if bound.is_none() => {
                *bound = Some(v4(ip, port));
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    pub fn listen(&mut self, s: SocketId, backlog: u32) -> Result<(), i64> {
        let client = self.client.clone();
        let sock = self.get(s)?;
        let Sock::Fresh { bound } = sock else {
            return match sock {
                Sock::Listener(_) => Ok(()),
                _ => Err(EINVAL),
            };
        };
        let addr = bound.unwrap_or(v4(0, 0));
        *sock = Sock::Listener(TcpListener::bind(&client, addr, backlog).map_err(errno)?);
        Ok(())
    }

    pub fn accept(&mut self, s: SocketId, nonblocking: bool) -> Result<(SocketId, u32, u16), i64> {
        let Sock::Listener(l) = self.get(s)? else {
            return Err(EINVAL);
        };
        l.set_nonblocking(nonblocking).map_err(errno)?;
        let (stream, peer) = l.accept().map_err(errno)?;
        let (ip, port) = split(peer);
        Ok((self.insert(Sock::Stream(stream))?, ip, port))
    }

    pub fn connect(
        &mut self,
        s: SocketId,
        ip: u32,
        port: u16,
        nonblocking: bool,
    ) -> Result<(), i64> {
        const EINPROGRESS: i64 = 115;
        let client = self.client.clone();
        let sock = self.get(s)?;
        match sock {
            Sock::Fresh { .. } if nonblocking => {
                let stream = TcpStream::start_connect(&client, v4(ip, port)).map_err(errno)?;
                *sock = Sock::Stream(stream);
                Err(EINPROGRESS)
            }
            Sock::Fresh { .. } => {
                let stream = TcpStream::connect(&client, v4(ip, port)).map_err(errno)?;
                *sock = Sock::Stream(stream);
                Ok(())
            }
            Sock::Stream(_) => Err(106), // EISCONN
            Sock::Listener(_) => Err(EINVAL),
            Sock::FreshDgram | Sock::Dgram(_) => {
                let u = self.dgram(s, v4(0, 0))?;
                u.connect(v4(ip, port)).map_err(errno)
            }
        }
    }

    fn stream(&mut self, s: SocketId) -> Result<&mut TcpStream, i64> {
        match self.get(s)? {
            Sock::Stream(t) => Ok(t),
            Sock::Listener(_) => Err(EOPNOTSUPP),
            _ => Err(ENOTCONN),
        }
    }

    pub fn send(&mut self, s: SocketId, buf: &[u8], nonblocking: bool) -> Result<usize, i64> {
        if let Sock::Dgram(u) = self.get(s)? {
            u.set_nonblocking(nonblocking).map_err(errno)?;
            return u.send(buf).map_err(errno);
        }
        let t = self.stream(s)?;
        t.set_nonblocking(nonblocking).map_err(errno)?;
        t.write(buf).map_err(errno)
    }

    pub fn recv(&mut self, s: SocketId, buf: &mut [u8], nonblocking: bool) -> Result<usize, i64> {
        if let Sock::Dgram(u) = self.get(s)? {
            u.set_nonblocking(nonblocking).map_err(errno)?;
            return u.recv(buf).map_err(errno);
        }
        let t = self.stream(s)?;
        t.set_nonblocking(nonblocking).map_err(errno)?;
        t.read(buf).map_err(errno)
    }

    pub fn shutdown(&mut self, s: SocketId, how: u32) -> Result<(), i64> {
        let how = match how {
            0 => Shutdown::Read,
            1 => Shutdown::Write,
            2 => Shutdown::Both,
            _ => return Err(EINVAL),
        };
        self.stream(s)?.shutdown(how).map_err(errno)
    }

    pub fn name(&mut self, s: SocketId, peer: bool) -> Result<(u32, u16), i64> {
        let addr = match self.get(s)? {
            Sock::Fresh { bound } if !peer => bound.unwrap_or(v4(0, 0)),
            Sock::Fresh { .. } => return Err(ENOTCONN),
            Sock::Listener(l) if !peer => l.local_addr().map_err(errno)?,
            Sock::Listener(_) => return Err(ENOTCONN),
            Sock::Stream(t) if peer => t.peer_addr().map_err(errno)?,
            Sock::Stream(t) => t.local_addr().map_err(errno)?,
            Sock::FreshDgram if !peer => v4(0, 0),
            Sock::FreshDgram => return Err(ENOTCONN),
            Sock::Dgram(u) if peer => u.peer_addr().map_err(errno)?,
            Sock::Dgram(u) => u.local_addr().map_err(errno)?,
        };
        Ok(split(addr))
    }

    /// SO_ERROR of a stream (0 for others or none).
    pub fn take_error(&mut self, s: SocketId) -> Result<i64, i64> {
        match self.get(s)? {
            Sock::Stream(t) => Ok(t.take_error().map_err(errno)?.map_or(0, errno)),
            Sock::Dgram(u) => Ok(u.take_error().map_err(errno)?.map_or(0, errno)),
            _ => Ok(0),
        }
    }

    /// Waits (up to `timeout_ms`; negative: no limit) until a socket is ready for what it
    /// wants, and reports every socket's state.
    pub fn poll(
        &mut self,
        socks: &[(SocketId, bool, bool)],
        timeout_ms: i64,
    ) -> Result<Vec<SocketReady>, i64> {
        // Slots to wait on; an unconnected socket is "writable and hung up" at once, as on Linux.
        let mut slots = Vec::new();
        let mut fresh = false;
        for &(s, want_in, want_out) in socks {
            let mut interest = READY_HUP | READY_ERR;
            if want_in {
                interest |= Interest::READABLE;
            }
            if want_out {
                interest |= Interest::WRITABLE;
            }
            match self.get(s)? {
                Sock::Stream(t) => slots.push((t.slot(), interest)),
                Sock::Listener(l) => slots.push((l.slot(), interest)),
                Sock::Dgram(u) => slots.push((u.slot(), interest)),
                Sock::Fresh { .. } | Sock::FreshDgram => {
                    fresh = true;
                    slots.push((u32::MAX, 0));
                }
            }
        }
        let timeout = if fresh {
            Some(std::time::Duration::ZERO)
        } else if timeout_ms < 0 {
            None
        } else {
            Some(std::time::Duration::from_millis(timeout_ms as u64))
        };
        let live: Vec<(u32, u32)> = slots
            .iter()
            .copied()
            .filter(|(s, _)| *s != u32::MAX)
            .collect();
        let bits = if live.is_empty() {
            Vec::new()
        } else {
            poll(&self.client, &live, timeout).map_err(errno)?
        };
        let mut bits = bits.into_iter();
        Ok(slots
            .iter()
            .map(|(slot, _)| {
                if *slot == u32::MAX {
                    return SocketReady {
                        writable: true,
                        hangup: true,
                        ..Default::default()
                    };
                }
                let b = bits.next().unwrap_or(0);
                SocketReady {
                    readable: b & (READY_IN | READY_RDHUP | READY_HUP | READY_ERR) != 0,
                    writable: b & READY_OUT != 0,
                    hangup: b & READY_HUP != 0,
                    error: b & READY_ERR != 0,
                }
            })
            .collect())
    }

    pub fn close(&mut self, s: SocketId) {
        if let Some(slot) = self.socks.get_mut(s as usize) {
            *slot = None;
        }
    }
}
