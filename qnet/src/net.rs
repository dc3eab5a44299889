//! The shared network state every client's sockets live in: the smoltcp interface and socket
//! set, port reservations, listen queues, and TCP sockets finishing their close after the client
//! let go of them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration as SDuration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use qnet_client::sys::Mapping;
use qnet_ring::errno::*;

use crate::config::{StackConfig, MIN_TCP_BUF};
use crate::conn::{ConnId, PipeId, Pipes};
use crate::phy::rx::{Endpoint, Landing, LANDING_MIN};

/// The loopback network every Linux namespace has.
pub const LOOPBACK: crate::Ipv4Cidr = crate::Ipv4Cidr {
    addr: Ipv4Addr::new(127, 0, 0, 1),
    prefix: 8,
};
/// Linux's default ephemeral port range.
const EPHEMERAL: std::ops::Range<u16> = 32768..61000;
/// Listening sockets kept ready per listener; refilled after every received packet, so this
/// bounds SYNs per packet, not connections.
const LISTEN_SPARES: usize = 16;
/// A closing connection whose peer stops acknowledging is aborted after this long.
const LINGER_LIMIT: SDuration = SDuration::from_secs(60);
/// Largest listen backlog (Linux's somaxconn default).
pub const MAX_BACKLOG: usize = 4096;
/// Bytes each way in a pipe between two ring sockets of the stack (see `conn`): the rings on
/// both sides buffer as much again, and a copy moves it at memory speed.
const PIPE_BUF: usize = 256 * 1024;

/// A protocol's port table: how many sockets hold each port, and which ports have a listener.
#[derive(Debug, Default)]
pub struct PortTable {
    users: HashMap<u16, u32>,
    listening: HashSet<u16>,
    next: u16,
}

impl PortTable {
    fn in_use(&self, port: u16) -> bool {
        self.users.get(&port).is_some_and(|n| *n > 0) || self.listening.contains(&port)
    }

    /// Reserves `port` (0 picks an ephemeral one). `shared` is SO_REUSEADDR: a port held by
    /// non-listening sockets may be shared, a listening port never.
    pub fn bind(&mut self, port: u16, shared: bool) -> Result<u16, i32> {
        let port = if port == 0 {
            self.ephemeral()?
        } else {
            if self.listening.contains(&port) || (!shared && self.in_use(port)) {
                return Err(EADDRINUSE);
            }
            port
        };
        *self.users.entry(port).or_default() += 1;
        Ok(port)
    }

    fn ephemeral(&mut self) -> Result<u16, i32> {
        let span = EPHEMERAL.end - EPHEMERAL.start;
        for i in 0..span {
            let port = EPHEMERAL.start + (self.next.wrapping_add(i)) % span;
            if !self.in_use(port) {
                self.next = self.next.wrapping_add(i + 1);
                return Ok(port);
            }
        }
        Err(EADDRNOTAVAIL)
    }

    pub fn release(&mut self, port: u16) {
        if let Some(n) = self.users.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(&port);
            }
        }
    }

    /// Marks a port already bound by the caller as listening.
    pub fn listen(&mut self, port: u16) -> Result<(), i32> {
        if !self.listening.insert(port) {
            return Err(EADDRINUSE);
        }
        Ok(())
    }

    pub fn unlisten(&mut self, port: u16) {
        self.listening.remove(&port);
    }
}

/// Identifies a listener in [`Net::listeners`].
pub type ListenerId = u64;

/// A listening port: spare listening sockets and connections waiting for `accept`.
#[derive(Debug)]
pub struct Listener {
    pub port: u16,
    /// The address it was bound to (`None`: every local address).
    pub addr: Option<Ipv4Addr>,
    pub backlog: usize,
    spares: Vec<SocketHandle>,
    /// Connections that left LISTEN, in arrival order; some may still be handshaking.
    pub queue: VecDeque<SocketHandle>,
    /// Pipes from ring sockets of this stack, waiting to be accepted (their end 1).
    pub pipes: VecDeque<PipeId>,
    pub opts: TcpOpts,
    /// The queue is full and no spare is listening (new SYNs are refused).
    full: bool,
}

/// TCP options a socket carries into the smoltcp sockets made for it.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpOpts {
    pub nodelay: bool,
    pub keepalive: bool,
}

/// A TCP socket the client closed, still sending its last bytes or FIN.
#[derive(Debug)]
struct Lingering {
    handle: SocketHandle,
    port: Option<u16>,
    since: Instant,
}

/// Counters for the metrics endpoint, tests and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub tcp_accepted: u64,
    pub tcp_connected: u64,
    /// Times a listen queue filled up (from then on SYNs are refused until an accept).
    pub listen_overflows: u64,
    pub sessions_closed_for_violation: u64,
    /// TCP retransmissions (RTO and fast), of sockets closed so far; see [`Net::stats`].
    pub tcp_retransmits: u64,
    /// Sockets open now (TCP and UDP, lingering ones included).
    pub sockets: u64,
    /// TCP connections that received straight into their client's socket ring.
    pub tcp_rx_direct: u64,
    /// Connections that went over to sending straight from their transmit ring.
    pub tcp_tx_direct: u64,
}

pub struct Net {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub tcp_ports: PortTable,
    pub udp_ports: PortTable,
    pub listeners: HashMap<ListenerId, Listener>,
    /// Connections between two ring sockets of this stack.
    pub pipes: Pipes,
    next_listener: ListenerId,
    lingering: Vec<Lingering>,
    socket_count: usize,
    /// Socket buffer bytes allocated, against `cfg.buffer_budget`.
    buffer_bytes: usize,
    pub cfg: StackConfig,
    pub stats: NetStats,
    /// The ring regions TCP sockets receive into directly (see `Session`'s direct receive),
    /// held here so a region stays mapped for as long as a socket may write into it.
    pub rx_regions: HashMap<SocketHandle, Arc<Mapping>>,
    /// Whole receive rings the stack may fill, against half the buffer budget.
    pub rx_grants: RingGrants,
    /// Whole transmit rings clients may fill, against a quarter of it.
    pub tx_grants: RingGrants,
}

/// Byte rings that may be resident whole. A ring's pages are all written once a stream has
/// gone round it, so each socket that receives (or sends) in full holds its whole ring (4 MiB
/// receiving, 2 MiB sending by default); past this limit a socket's ring stays lean instead
/// (at most [`LEAN_FILL`] bytes in it, pages given back behind the reader: `Session::rx_room`,
/// `Session::decide_tx`), as Linux shrinks socket buffers under `tcp_mem` pressure. qvisor's
/// budget is the container's memory, so its guest's rings stay within it.
#[derive(Debug)]
pub struct RingGrants {
    held: u64,
    limit: u64,
}

/// What a lean ring holds at most, and the chunks it gives its pages back in.
pub const LEAN_FILL: u32 = 128 << 10;
pub const LEAN_CHUNK: u32 = 64 << 10;

impl RingGrants {
    pub fn new(limit: u64) -> Self {
        RingGrants { held: 0, limit }
    }

    /// Takes a grant of `bytes`, if the limit allows.
    pub fn take(&mut self, bytes: u64) -> bool {
        if self.held + bytes > self.limit {
            return false;
        }
        self.held += bytes;
        true
    }

    pub fn give(&mut self, bytes: u64) {
        self.held = self.held.saturating_sub(bytes);
    }
}

impl Net {
    pub fn new(cfg: StackConfig, device: &mut impl smoltcp::phy::Device, now: Instant) -> Self {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac.0)));
        config.random_seed = random_u64();
        let mut iface = Interface::new(config, device, now);
        iface.update_ip_addrs(|addrs| {
            // A fresh interface has room for two addresses (smoltcp's default); the link's
            // first, so it is the source for destinations outside both.
            let cidr = IpCidr::new(IpAddress::Ipv4(cfg.addr.addr), cfg.addr.prefix);
            let _ = addrs.push(cidr);
            if cfg.loopback && !LOOPBACK.contains(cfg.addr.addr) {
                let lo = IpCidr::new(IpAddress::Ipv4(LOOPBACK.addr), LOOPBACK.prefix);
                let _ = addrs.push(lo);
            }
        });
        // validate() bounds the routes by the table's size.
        iface.routes_mut().update(|table| {
            for r in &cfg.routes {
                let cidr = IpCidr::new(IpAddress::Ipv4(r.dst.addr), r.dst.prefix);
                let _ = table.push(smoltcp::iface::Route {
                    cidr,
                    via_router: IpAddress::Ipv4(r.via),
                    preferred_until: None,
                    expires_at: None,
                });
            }
        });
        if let Some(gw) = cfg.gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        Net {
            iface,
            sockets: SocketSet::new(Vec::new()),
            tcp_ports: PortTable::default(),
            udp_ports: PortTable::default(),
            listeners: HashMap::new(),
            pipes: Pipes::default(),
            next_listener: 1,
            lingering: Vec::new(),
            socket_count: 0,
            buffer_bytes: 0,
            rx_grants: RingGrants::new(cfg.buffer_budget as u64 / 2),
            tx_grants: RingGrants::new(cfg.buffer_budget as u64 / 4),
            stats: NetStats::default(),
            rx_regions: HashMap::new(),
            cfg,
        }
    }

    pub fn local_ip(&self) -> Ipv4Addr {
        self.cfg.addr.addr
    }

    /// Whether `ip` is one of the stack's own addresses (the link's, or loopback).
    pub fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip == self.cfg.addr.addr || self.is_loopback(ip)
    }

    /// Whether `ip` is the loopback address served. Only 127.0.0.1: smoltcp owns exact
    /// addresses, not Linux's whole 127.0.0.0/8, so other 127.x are unreachable.
    fn is_loopback(&self, ip: Ipv4Addr) -> bool {
        self.cfg.loopback && ip == LOOPBACK.addr
    }

    /// The source address for a connection to `dst` from a socket bound to `bound`, as Linux
    /// picks it: the bound address if any, 127.0.0.1 towards loopback, else the link's.
    pub fn source_for(&self, bound: Option<Ipv4Addr>, dst: Ipv4Addr) -> Result<Ipv4Addr, i32> {
        let to_loopback = self.is_loopback(dst);
        match bound.filter(|ip| !ip.is_unspecified()) {
            // A loopback address never leaves the stack (Linux says EINVAL too).
            Some(ip) if LOOPBACK.contains(ip) && !to_loopback => Err(EINVAL),
            Some(ip) => Ok(ip),
            None if to_loopback => Ok(LOOPBACK.addr),
            None => Ok(self.cfg.addr.addr),
        }
    }

    /// Whether `dst` can be reached: on the link, through a gateway, or on loopback.
    pub fn routable(&self, dst: Ipv4Addr) -> bool {
        self.cfg.addr.contains(dst)
            || self.cfg.gateway.is_some()
            || self.cfg.routes.iter().any(|r| r.dst.contains(dst))
            || self.is_loopback(dst)
    }

    fn reserve_socket(&mut self) -> Result<(), i32> {
        if self.socket_count >= self.cfg.max_sockets {
            return Err(ENOBUFS);
        }
        self.socket_count += 1;
        Ok(())
    }

    /// Charges `bytes` of socket buffers to the budget.
    fn charge(&mut self, bytes: usize) -> Result<(), i32> {
        if self.buffer_bytes + bytes > self.cfg.buffer_budget {
            return Err(ENOBUFS);
        }
        self.reserve_socket()?;
        self.buffer_bytes += bytes;
        Ok(())
    }

    /// A new TCP socket with data-centre timers and the configured buffers (smaller ones once
    /// half the buffer budget is in use).
    pub fn new_tcp(&mut self, opts: TcpOpts) -> Result<SocketHandle, i32> {
        let (rx, tx) = (self.cfg.tcp_rx_buf, self.cfg.tcp_tx_buf);
        let roomy = self.buffer_bytes + rx + tx <= self.cfg.buffer_budget / 2;
        let (rx, tx) = if roomy {
            (rx, tx)
        } else {
            (rx.min(MIN_TCP_BUF), tx.min(MIN_TCP_BUF))
        };
        self.charge(rx + tx)?;
        let rx = tcp::SocketBuffer::new(vec![0; rx]);
        let tx = tcp::SocketBuffer::new(vec![0; tx]);
        let mut s = tcp::Socket::new(rx, tx);
        // A connected socket receives into its client's ring (direct receive), so its window
        // may grow to the ring's size; under budget pressure it stays at its own small buffer's.
        if roomy {
            s.set_rx_window_max(self.cfg.ring_rx_buf as usize);
        }
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_ack_delay(Some(SDuration::from_micros(
            self.cfg.ack_delay.as_micros() as u64
        )));
        apply_tcp_opts(&mut s, opts);
        Ok(self.sockets.add(s))
    }

    pub fn new_udp(&mut self) -> Result<SocketHandle, i32> {
        self.charge(2 * self.cfg.udp_buf)?;
        let meta = || vec![udp::PacketMetadata::EMPTY; 256];
        let rx = udp::PacketBuffer::new(meta(), vec![0; self.cfg.udp_buf]);
        let tx = udp::PacketBuffer::new(meta(), vec![0; self.cfg.udp_buf]);
        Ok(self.sockets.add(udp::Socket::new(rx, tx)))
    }

    /// Drops a socket from the set at once (nothing more is sent for it).
    pub fn remove(&mut self, handle: SocketHandle) {
        let bytes = match self.sockets.remove(handle) {
            smoltcp::socket::Socket::Tcp(t) => {
                self.stats.tcp_retransmits += t.retransmits();
                t.recv_capacity() + t.send_capacity()
            }
            smoltcp::socket::Socket::Udp(u) => {
                u.payload_recv_capacity() + u.payload_send_capacity()
            }
            #[allow(unreachable_patterns)] // only TCP and UDP sockets are created
            _ => 0,
        };
        self.buffer_bytes = self.buffer_bytes.saturating_sub(bytes);
        self.socket_count -= 1;
        // After the socket itself: it no longer writes into the region.
        self.rx_regions.remove(&handle);
    }

    /// Bytes of socket buffers allocated now.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Resets a TCP connection: the RST goes out on the next egress, then the socket is dropped.
    pub fn abort_tcp(&mut self, handle: SocketHandle, port: Option<u16>, now: Instant) {
        self.sockets.get_mut::<tcp::Socket>(handle).abort();
        self.linger(handle, port, now);
    }

    /// A pipe from `client` to the listener `id` (see `conn`), queued for its accept. A full
    /// queue refuses it (`ECONNREFUSED`, as a SYN to a full listener is answered with RST);
    /// `Ok(None)` when the buffers cannot be had (the caller then goes through TCP).
    pub fn connect_pipe(
        &mut self,
        id: ListenerId,
        client: IpEndpoint,
        server: IpEndpoint,
    ) -> Result<Option<ConnId>, i32> {
        let Some(l) = self.listeners.get(&id) else {
            return Ok(None);
        };
        if l.queue.len() + l.pipes.len() >= l.backlog {
            if !l.full {
                self.stats.listen_overflows += 1;
            }
            return Err(ECONNREFUSED);
        }
        if self.charge(2 * PIPE_BUF).is_err() {
            return Ok(None);
        }
        let pipe = self.pipes.open(client, server, PIPE_BUF);
        if let Some(l) = self.listeners.get_mut(&id) {
            l.pipes.push_back(pipe);
        }
        Ok(Some(ConnId::Pipe(pipe, 0)))
    }

    /// The listener a connection from this stack to `ip:port` reaches, if any.
    pub fn local_listener(&self, ip: Ipv4Addr, port: u16) -> Option<ListenerId> {
        if !self.is_local(ip) {
            return None;
        }
        self.listeners
            .iter()
            .find(|(_, l)| l.port == port && l.addr.is_none_or(|a| a == ip))
            .map(|(id, _)| *id)
    }

    /// Resets a connection; its port is released when it is gone.
    pub fn abort_conn(&mut self, c: ConnId, port: Option<u16>, now: Instant) {
        match c {
            ConnId::Tcp(h) => self.abort_tcp(h, port, now),
            ConnId::Pipe(p, side) => self.release_pipe(p, side, true, port),
        }
    }

    /// Lets a connection finish its close (FIN after what was sent); its port is released
    /// when it is gone.
    pub fn linger_conn(&mut self, c: ConnId, port: Option<u16>, now: Instant) {
        match c {
            ConnId::Tcp(h) => self.linger(h, port, now),
            ConnId::Pipe(p, side) => self.release_pipe(p, side, false, port),
        }
    }

    fn release_pipe(&mut self, p: PipeId, side: usize, abort: bool, port: Option<u16>) {
        if let Some(bytes) = self.pipes.release(p, side, abort) {
            self.buffer_bytes = self.buffer_bytes.saturating_sub(bytes);
            self.socket_count -= 1;
        }
        if let Some(port) = port {
            self.tcp_ports.release(port);
        }
    }

    /// Hands a TCP socket over to finish its close; its port is released when it is gone.
    pub fn linger(&mut self, handle: SocketHandle, port: Option<u16>, now: Instant) {
        self.lingering.push(Lingering {
            handle,
            port,
            since: now,
        });
    }

    /// TCP socket `h`'s stream as its received frames carry it: (source, destination), the
    /// peer's address and port and ours; `None` if `h` is no connected IPv4 TCP socket now.
    pub fn tcp_flow(&mut self, h: SocketHandle) -> Option<(Endpoint, Endpoint)> {
        let sock = self.sockets.try_get_mut::<tcp::Socket>(h)?;
        let (local, remote) = (sock.local_endpoint()?, sock.remote_endpoint()?);
        let (IpAddress::Ipv4(l), IpAddress::Ipv4(r)) = (local.addr, remote.addr) else {
            return None;
        };
        Some(((r.octets(), remote.port), (l.octets(), local.port)))
    }

    /// Where TCP socket `h`'s next in-order byte goes, for the TAP to read the next frame's
    /// payload straight there (phy/rx.rs); `None` if `h` is no such socket now or has too
    /// little room.
    pub fn rx_landing(&mut self, h: SocketHandle) -> Option<Landing> {
        let (remote, local) = self.tcp_flow(h)?;
        let sock = self.sockets.try_get_mut::<tcp::Socket>(h)?;
        let (seq, room, at_edge) = sock.rx_landing()?;
        (room.len() >= LANDING_MIN).then_some(Landing {
            remote,
            local,
            seq: seq.0 as u32,
            ptr: room.as_mut_ptr(),
            len: room.len(),
            at_edge,
        })
    }

    /// Removes lingering sockets that finished (or took too long), releasing their ports.
    pub fn reap_lingering(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.lingering.len() {
            let l = &self.lingering[i];
            let s = self.sockets.get::<tcp::Socket>(l.handle);
            // A reset socket keeps its endpoint until its RST has been sent.
            let done = match s.state() {
                tcp::State::Closed => s.remote_endpoint().is_none(),
                tcp::State::TimeWait => true,
                _ => false,
            };
            if done || now - l.since > LINGER_LIMIT {
                let l = self.lingering.swap_remove(i);
                self.remove(l.handle);
                if let Some(p) = l.port {
                    self.tcp_ports.release(p);
                }
            } else {
                i += 1;
            }
        }
    }

    /// The counters, with retransmissions of open sockets added in (O(sockets): for reports,
    /// not for every pass).
    pub fn stats(&self) -> NetStats {
        let live: u64 = self
            .sockets
            .iter()
            .filter_map(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => Some(t.retransmits()),
                _ => None,
            })
            .sum();
        NetStats {
            tcp_retransmits: self.stats.tcp_retransmits + live,
            sockets: self.socket_count as u64,
            ..self.stats
        }
    }

    pub fn has_lingering(&self) -> bool {
        !self.lingering.is_empty()
    }

    /// Resets every TCP connection (the stack is going away): each peer gets an RST on the
    /// next egress instead of a connection that silently vanished.
    pub fn abort_all(&mut self) {
        for (_, socket) in self.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(t) = socket {
                t.abort();
            }
        }
        self.pipes.reset_all();
    }

    /// Starts listening on a port the caller already reserved in `tcp_ports`.
    pub fn add_listener(
        &mut self,
        addr: Option<Ipv4Addr>,
        port: u16,
        backlog: usize,
        opts: TcpOpts,
    ) -> Result<ListenerId, i32> {
        self.tcp_ports.listen(port)?;
        let id = self.next_listener;
        self.next_listener += 1;
        self.listeners.insert(
            id,
            Listener {
                port,
                addr,
                backlog: backlog.clamp(1, MAX_BACKLOG),
                spares: Vec::new(),
                queue: VecDeque::new(),
                pipes: VecDeque::new(),
                opts,
                full: false,
            },
        );
        self.refill_listener(id);
        Ok(id)
    }

    /// Moves sockets that left LISTEN to the accept queue and tops up the spares, within the
    /// backlog. Called after every received packet so a SYN burst never finds no listener.
    pub fn refill_listeners(&mut self) {
        let ids: Vec<ListenerId> = self.listeners.keys().copied().collect();
        for id in ids {
            self.refill_listener(id);
        }
    }

    fn refill_listener(&mut self, id: ListenerId) {
        let Some(mut l) = self.listeners.remove(&id) else {
            return;
        };
        let mut i = 0;
        while i < l.spares.len() {
            if self.sockets.get::<tcp::Socket>(l.spares[i]).state() != tcp::State::Listen {
                l.queue.push_back(l.spares.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Handshakes that failed leave the queue.
        let mut dead = Vec::new();
        l.queue.retain(|h| {
            let closed = self.sockets.get::<tcp::Socket>(*h).state() == tcp::State::Closed;
            if closed {
                dead.push(*h);
            }
            !closed
        });
        for h in dead {
            self.remove(h);
        }
        let waiting = l.queue.len() + l.pipes.len();
        let want = LISTEN_SPARES.min(l.backlog.saturating_sub(waiting));
        let full = want == 0 && l.spares.is_empty();
        if full && !l.full {
            self.stats.listen_overflows += 1;
        }
        l.full = full;
        while l.spares.len() < want {
            let Ok(h) = self.new_tcp(l.opts) else { break };
            let ok = self
                .sockets
                .get_mut::<tcp::Socket>(h)
                .listen(smoltcp::wire::IpListenEndpoint {
                    addr: l.addr.map(IpAddress::Ipv4),
                    port: l.port,
                })
                .is_ok();
            if !ok {
                self.remove(h);
                break;
            }
            l.spares.push(h);
        }
        self.listeners.insert(id, l);
    }

    /// Takes the first fully established connection off a listener's queue.
    pub fn accept(&mut self, id: ListenerId) -> Option<ConnId> {
        let l = self.listeners.get_mut(&id)?;
        if let Some(p) = l.pipes.pop_front() {
            self.stats.tcp_accepted += 1;
            return Some(ConnId::Pipe(p, 1));
        }
        let pos = l.queue.iter().position(|h| {
            let s = self.sockets.get::<tcp::Socket>(*h);
            !matches!(s.state(), tcp::State::SynReceived | tcp::State::Listen)
        })?;
        let h = l.queue.remove(pos)?;
        self.stats.tcp_accepted += 1;
        // The spare count may grow again now the queue is shorter.
        self.refill_listener(id);
        Some(ConnId::Tcp(h))
    }

    /// Whether a listener has a connection ready to accept.
    pub fn acceptable(&self, id: ListenerId) -> bool {
        self.listeners.get(&id).is_some_and(|l| {
            !l.pipes.is_empty()
                || l.queue.iter().any(|h| {
                    !matches!(
                        self.sockets.get::<tcp::Socket>(*h).state(),
                        tcp::State::SynReceived | tcp::State::Listen
                    )
                })
        })
    }

    /// Closes a listener: pending connections are reset, the port is freed.
    pub fn remove_listener(&mut self, id: ListenerId, now: Instant) {
        if let Some(l) = self.listeners.remove(&id) {
            for h in l.spares {
                self.remove(h);
            }
            for h in l.queue {
                self.abort_tcp(h, None, now);
            }
            for p in l.pipes {
                self.release_pipe(p, 1, true, None);
            }
            self.tcp_ports.unlisten(l.port);
            self.tcp_ports.release(l.port);
        }
    }
}

pub fn apply_tcp_opts(s: &mut tcp::Socket<'_>, opts: TcpOpts) {
    s.set_nagle_enabled(!opts.nodelay);
    s.set_keep_alive(opts.keepalive.then(|| SDuration::from_secs(75)));
}

/// The endpoint for an IPv4 address and port.
pub fn endpoint(ip: Ipv4Addr, port: u16) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv4(ip), port)
}

/// Converts a smoltcp time to std.
pub fn to_std(d: SDuration) -> Duration {
    Duration::from_micros(d.total_micros())
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 8, 0) };
    if n != 8 {
        // Not security-relevant (smoltcp's initial sequence numbers); time is a fine fallback.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_conflict_as_linux_does() {
        let mut t = PortTable::default();
        assert_eq!(t.bind(8080, false), Ok(8080));
        assert_eq!(t.bind(8080, false), Err(EADDRINUSE));
        assert_eq!(
            t.bind(8080, true),
            Ok(8080),
            "SO_REUSEADDR shares a non-listening port"
        );
        t.listen(8080).unwrap();
        assert_eq!(
            t.bind(8080, true),
            Err(EADDRINUSE),
            "never a listening port"
        );
        t.unlisten(8080);
        t.release(8080);
        t.release(8080);
        assert_eq!(t.bind(8080, false), Ok(8080));
        let e = t.bind(0, false).unwrap();
        assert!(EPHEMERAL.contains(&e));
        assert_ne!(t.bind(0, false).unwrap(), e);
    }

    #[test]
    fn socket_buffers_are_bounded_by_the_budget() {
        let mut cfg = StackConfig::new("10.9.0.2/24".parse().unwrap());
        cfg.tcp_rx_buf = 1 << 20;
        cfg.tcp_tx_buf = 1 << 20;
        cfg.buffer_budget = 8 << 20;
        let local = crate::phy::LocalAddrs {
            mac: cfg.mac.0,
            ip: cfg.addr.addr,
            loopback: true,
        };
        let mut dev = crate::phy::FrameQueues::new(1500, local, false).unwrap();
        let mut net = Net::new(cfg, &mut dev, Instant::ZERO);
        // Two full-size sockets fill half the budget; the rest get 64 KiB each way.
        let full: Vec<_> = (0..2)
            .map(|_| net.new_tcp(TcpOpts::default()).unwrap())
            .collect();
        assert_eq!(net.buffer_bytes(), 4 << 20);
        let mut small = Vec::new();
        while let Ok(h) = net.new_tcp(TcpOpts::default()) {
            small.push(h);
        }
        assert_eq!(small.len(), (4 << 20) / (2 * MIN_TCP_BUF));
        assert_eq!(net.buffer_bytes(), 8 << 20);
        assert_eq!(net.new_udp(), Err(ENOBUFS));
        // Freed buffers are available again.
        for h in full {
            net.remove(h);
        }
        assert_eq!(net.buffer_bytes(), 4 << 20);
        assert!(net.new_tcp(TcpOpts::default()).is_ok());
    }

    /// The harness below reaches the stack's real input path: an unchanged SYN gets its
    /// SYN-ACK queued to the link.
    #[test]
    fn an_injected_syn_is_answered() {
        let cfg = StackConfig::new("10.9.0.2/24".parse().unwrap());
        let mac = cfg.mac.0;
        let local = crate::phy::LocalAddrs {
            mac,
            ip: cfg.addr.addr,
            loopback: true,
        };
        let mut dev = crate::phy::FrameQueues::new(1500, local, true).unwrap();
        let mut net = Net::new(cfg, &mut dev, Instant::ZERO);
        net.add_listener(None, 80, 16, TcpOpts::default()).unwrap();
        let syn = [
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        dev.inject_received(&crate::fuzz::frame_to_stack(mac, 6, &syn));
        while net
            .iface
            .poll_ingress_single(Instant::ZERO, &mut dev, &mut net.sockets)
            != smoltcp::iface::PollIngressSingleResult::None
        {
            net.refill_listeners();
        }
        let _ = net
            .iface
            .poll_egress(Instant::ZERO, &mut dev, &mut net.sockets);
        assert_eq!(dev.tx_outstanding(), 1, "no SYN-ACK");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Frames from the pod network are hostile: any bytes, or a TCP SYN, a UDP datagram or
        /// an ARP request with bytes changed anywhere, go through the stack's input and output
        /// (with a listener and a bound UDP socket to reach) without a panic.
        #[test]
        fn hostile_frames_never_panic_the_stack(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            which in 0usize..3,
            flips in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..90,
        ) {
            crate::fuzz::frames(&raw, which, &flips, cut);
        }
    }
}
