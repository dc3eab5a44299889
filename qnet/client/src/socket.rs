//! Sockets over the ring with std::net's shapes: [`TcpStream`], [`TcpListener`], [`UdpSocket`],
//! blocking by default, non-blocking on request (`io::ErrorKind::WouldBlock`).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::{Duration, Instant};

use qnet_ring::errno::*;
use qnet_ring::*;

use crate::client::{errno, Client};

/// Bad address: a raw reader's destination took none of the bytes (not a ring error).
const EFAULT: i32 = 14;

/// One slot owned by this process; closed on drop.
struct Slot {
    client: Client,
    idx: u32,
    nonblocking: AtomicBool,
    /// Private copies of the positions this side owns. The receive position is adopted from
    /// the ring when another reader in this process's care moved it there (a guest's reads
    /// served in its syscall stub, qvisor): see [`Slot::rx_head`].
    rx_head: AtomicU32,
    tx_tail: AtomicU32,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

fn addr_sqe(opcode: u8, slot: u32, addr: SocketAddr) -> io::Result<Sqe> {
    let SocketAddr::V4(v4) = addr else {
        return Err(errno(EAFNOSUPPORT));
    };
    let mut sqe = Sqe {
        opcode,
        slot,
        family: AF_INET,
        port: v4.port(),
        ..Default::default()
    };
    sqe.addr[..4].copy_from_slice(&v4.ip().octets());
    Ok(sqe)
}

fn cqe_addr(c: &Cqe) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(c.addr[0], c.addr[1], c.addr[2], c.addr[3]),
        c.port,
    ))
}

fn deadline(t: Option<Duration>) -> Option<Instant> {
    t.map(|t| Instant::now() + t)
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "qnet socket timed out")
}

impl Slot {
    fn open(client: &Client, ty: u32) -> io::Result<Slot> {
        let c = client.call(Sqe {
            opcode: OP_SOCKET,
            family: AF_INET,
            arg0: ty,
            ..Default::default()
        })?;
        Ok(Slot {
            client: client.clone(),
            idx: c.slot,
            nonblocking: AtomicBool::new(false),
            rx_head: AtomicU32::new(0),
            tx_tail: AtomicU32::new(0),
            read_timeout: None,
            write_timeout: None,
        })
    }

    fn adopt(client: &Client, idx: u32) -> Slot {
        Slot {
            client: client.clone(),
            idx,
            nonblocking: AtomicBool::new(false),
            rx_head: AtomicU32::new(0),
            tx_tail: AtomicU32::new(0),
            read_timeout: None,
            write_timeout: None,
        }
    }

    fn op(&self, opcode: u8) -> Sqe {
        Sqe {
            opcode,
            slot: self.idx,
            ..Default::default()
        }
    }

    fn call(&self, sqe: Sqe) -> io::Result<Cqe> {
        self.client.call(sqe)
    }

    fn setsockopt(&self, level: u32, name: u32, value: u64) -> io::Result<()> {
        let mut sqe = self.op(OP_SETSOCKOPT);
        sqe.arg0 = sockopt(level, name);
        sqe.arg1 = value;
        self.call(sqe).map(|_| ())
    }

    fn getsockopt(&self, level: u32, name: u32) -> io::Result<u64> {
        let mut sqe = self.op(OP_GETSOCKOPT);
        sqe.arg0 = sockopt(level, name);
        self.call(sqe).map(|c| c.value)
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        let e = self.getsockopt(SOL_SOCKET, SO_ERROR)?;
        Ok((e != 0).then(|| errno(e as i32)))
    }

    fn bind(&self, addr: SocketAddr) -> io::Result<()> {
        self.call(addr_sqe(OP_BIND, self.idx, addr)?).map(|_| ())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.call(self.op(OP_GETSOCKNAME)).map(|c| cqe_addr(&c))
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.call(self.op(OP_GETPEERNAME)).map(|c| cqe_addr(&c))
    }

    fn view(&self) -> &RegionView {
        self.client.view()
    }

    fn readiness(&self) -> u32 {
        self.client.readiness(self.idx)
    }

    /// Blocks (unless non-blocking) until one of `interest` is ready.
    fn block_on(&self, interest: u32, timeout: Option<Duration>) -> io::Result<()> {
        if self.nonblocking.load(Acquire) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self
            .client
            .wait_ready(self.idx, interest, deadline(timeout))?
        {
            Ok(())
        } else {
            Err(timed_out())
        }
    }

    /// Bytes waiting in the receive ring.
    fn rx_available(&self) -> u32 {
        self.rx_tail().wrapping_sub(self.rx_head())
    }

    fn rx_tail(&self) -> u32 {
        self.view()
            .slot_stack(self.idx)
            .map_or(0, |w| w.rx_tail.load(Acquire))
    }

    /// Where this side has read to. Normally only this process writes the ring's `rx_head`,
    /// so it equals the private copy; a second reader sharing the slot (qvisor's guest,
    /// reading in its syscall stub while this side is not reading) may have moved it on. Its
    /// word is untrusted: adopted only if it lies between the private copy and `rx_tail`
    /// (what the stack also checks), ignored otherwise.
    fn rx_head(&self) -> u32 {
        let private = self.rx_head.load(Acquire);
        let Some(c) = self.view().slot_client(self.idx) else {
            return private;
        };
        let shared = c.rx_head.load(Acquire);
        if shared == private || shared.wrapping_sub(private) > self.rx_tail().wrapping_sub(private)
        {
            return private;
        }
        self.rx_head.store(shared, Release);
        shared
    }

    /// Marks `n` received bytes consumed and kicks the stack if it is waiting for room.
    fn consume_rx(&self, n: u32) {
        let head = self.rx_head().wrapping_add(n);
        self.rx_head.store(head, Release);
        if let Some(c) = self.view().slot_client(self.idx) {
            c.rx_head.store(head, SeqCst);
        }
        self.kick_rx_if_wanted();
    }

    /// Tells the stack of room freed in the receive ring if it asked (`rx_wanted`); the
    /// caller stored `rx_head` (`SeqCst`) first (ring.md, memory ordering).
    fn kick_rx_if_wanted(&self) {
        if let Some(s) = self.view().slot_stack(self.idx) {
            if s.rx_wanted.load(SeqCst) != 0 && s.rx_wanted.swap(0, SeqCst) != 0 {
                self.client.notify(OP_RX_KICK, self.idx);
            }
        }
    }

    /// Free bytes in the transmit ring.
    fn tx_space(&self) -> u32 {
        self.client.tx_free(self.idx, self.tx_tail())
    }

    /// Where this side has written to. As with [`Slot::rx_head`], a second writer sharing the
    /// slot (qvisor's guest, writing in its syscall stub) may have moved the ring's `tx_tail`
    /// on; its word is adopted only if it lies ahead of the private copy and within `tx_limit`
    /// of `tx_head` (what the stack also checks), ignored otherwise. (The stack may already
    /// have consumed past the private copy: the other writer's bytes.)
    fn tx_tail(&self) -> u32 {
        let private = self.tx_tail.load(Acquire);
        let (Some(c), Some(w)) = (
            self.view().slot_client(self.idx),
            self.view().slot_stack(self.idx),
        ) else {
            return private;
        };
        let shared = c.tx_tail.load(Acquire);
        let head = w.tx_head.load(Acquire);
        if shared == private
            || shared.wrapping_sub(private) > i32::MAX as u32
            || shared.wrapping_sub(head) > self.client.tx_limit(self.idx)
        {
            return private;
        }
        self.tx_tail.store(shared, Release);
        shared
    }

    /// Publishes `n` more transmit bytes and kicks the stack once per batch.
    fn publish_tx(&self, n: u32) {
        let tail = self.tx_tail().wrapping_add(n);
        self.tx_tail.store(tail, Release);
        if let Some(c) = self.view().slot_client(self.idx) {
            c.tx_tail.store(tail, SeqCst);
            if c.tx_kick.swap(1, SeqCst) == 0 {
                self.client.notify(OP_TX_KICK, self.idx);
            }
        }
    }

    fn stream_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let avail = self.wait_rx()?;
        let n = (avail as usize).min(buf.len());
        if let Some(ring) = self.view().rx_ring(self.idx) {
            ring.read(self.rx_head(), &mut buf[..n]);
        }
        self.consume_rx(n as u32);
        Ok(n)
    }

    /// [`Slot::stream_read`] of up to `max` bytes handed to `copy` where they lie in the ring
    /// (a piece at a time, in order); `copy` says how many of a piece's bytes it took, from
    /// its start. Only what it took is consumed; EFAULT when it took nothing.
    fn stream_read_raw(
        &self,
        max: usize,
        copy: &mut dyn FnMut(*const u8, usize) -> usize,
    ) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let avail = self.wait_rx()?;
        let n = (avail as usize).min(max);
        let Some(ring) = self.view().rx_ring(self.idx) else {
            return Ok(0);
        };
        let mut took = 0;
        for (ptr, len) in ring.raw_pieces(self.rx_head(), n) {
            if len == 0 {
                break;
            }
            let taken = copy(ptr, len).min(len);
            took += taken;
            if taken < len {
                break;
            }
        }
        if took == 0 && n > 0 {
            return Err(errno(EFAULT));
        }
        self.consume_rx(took as u32);
        Ok(took)
    }

    /// Waits (unless non-blocking) until received bytes are waiting and says how many; 0 at
    /// the end of the stream.
    fn wait_rx(&self) -> io::Result<u32> {
        let deadline = deadline(self.read_timeout);
        loop {
            let avail = self.rx_available();
            if avail > 0 {
                return Ok(avail);
            }
            let r = self.readiness();
            if r & (READY_RDHUP | READY_ERR | READY_HUP) != 0 {
                // Data published before the flag is visible now; deliver it first.
                if self.rx_available() > 0 {
                    continue;
                }
                if r & READY_ERR != 0 {
                    if let Some(e) = self.client.slot_error(self.idx) {
                        return Err(e);
                    }
                }
                if r & READY_CONNECTED == 0 {
                    return Err(errno(ENOTCONN));
                }
                return Ok(0);
            }
            if r & READY_CONNECTED == 0 && r & READY_OUT == 0 && !self.connecting() {
                return Err(errno(ENOTCONN));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(timed_out());
            }
            self.block_on(READY_IN | READY_RDHUP | READY_ERR | READY_HUP, left)?;
        }
    }

    fn connecting(&self) -> bool {
        self.readiness() & READY_CONNECTED == 0
    }

    fn stream_write(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let space = self.wait_tx()?;
        let n = (space as usize).min(buf.len());
        if let Some(ring) = self.view().tx_ring(self.idx) {
            ring.write(self.tx_tail(), &buf[..n]);
        }
        self.publish_tx(n as u32);
        Ok(n)
    }

    /// [`Slot::stream_write`] of up to `max` bytes that `fill` writes where they go in the
    /// ring (a piece at a time, in order); `fill` says how many of a piece's bytes it wrote,
    /// from its start. Only what it wrote is sent; EFAULT when it wrote nothing.
    fn stream_write_raw(
        &self,
        max: usize,
        fill: &mut dyn FnMut(*mut u8, usize) -> usize,
    ) -> io::Result<usize> {
        if max == 0 {
            return Ok(0);
        }
        let space = self.wait_tx()?;
        let n = (space as usize).min(max);
        let Some(ring) = self.view().tx_ring(self.idx) else {
            return Ok(0);
        };
        let mut wrote = 0;
        for (ptr, len) in ring.raw_pieces(self.tx_tail(), n) {
            if len == 0 {
                break;
            }
            let filled = fill(ptr, len).min(len);
            wrote += filled;
            if filled < len {
                break;
            }
        }
        if wrote == 0 {
            return Err(errno(EFAULT));
        }
        self.publish_tx(wrote as u32);
        Ok(wrote)
    }

    /// Waits (unless non-blocking) until the transmit ring has room and says how much.
    fn wait_tx(&self) -> io::Result<u32> {
        let deadline = deadline(self.write_timeout);
        loop {
            let r = self.readiness();
            if r & READY_ERR != 0 {
                if let Some(e) = self.client.slot_error(self.idx) {
                    return Err(e);
                }
            }
            if r & READY_CONNECTED == 0 {
                return Err(errno(ENOTCONN));
            }
            if r & READY_OUT == 0 {
                return Err(errno(EPIPE));
            }
            let space = self.tx_space();
            if space > 0 {
                return Ok(space);
            }
            if self.nonblocking.load(Acquire) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if !self.client.wait_until(deadline, || {
                self.tx_space() > 0 || self.readiness() & (READY_ERR | READY_HUP) != 0
            })? {
                return Err(timed_out());
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.client.forget_wakers(self.idx);
        self.client.notify(OP_CLOSE, self.idx);
    }
}

/// Socket options the ring carries (docs/ring.md: `OP_SETSOCKOPT`), by Linux level and
/// number, for callers that speak the socket API (qkernel on behalf of a guest).
macro_rules! socket_options {
    ($($t:ty),*) => {$(
        impl $t {
            /// Sets option `name` of `level` to `value` (ENOPROTOOPT for one the ring lacks).
            pub fn set_option(&self, level: u32, name: u32, value: u64) -> io::Result<()> {
                self.slot.setsockopt(level, name, value)
            }

            /// Reads option `name` of `level`.
            pub fn option(&self, level: u32, name: u32) -> io::Result<u64> {
                self.slot.getsockopt(level, name)
            }
        }
    )*};
}

socket_options!(TcpStream, TcpListener, UdpSocket);

/// A TCP connection through qnet.
pub struct TcpStream {
    slot: Slot,
}

impl TcpStream {
    /// Connects (blocking) to `addr`.
    pub fn connect(client: &Client, addr: SocketAddr) -> io::Result<TcpStream> {
        Self::connect_timeout(client, addr, None)
    }

    pub fn connect_timeout(
        client: &Client,
        addr: SocketAddr,
        timeout: Option<Duration>,
    ) -> io::Result<TcpStream> {
        let s = TcpStream::start_connect(client, addr)?;
        if !client.wait_ready(s.slot.idx, READY_CONNECTED, deadline(timeout))? {
            return Err(timed_out());
        }
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        Ok(s)
    }

    /// Starts a connection and returns at once (the `EINPROGRESS` style): wait for
    /// [`Interest::CONNECTED`] with [`poll`], then check [`TcpStream::take_error`].
    pub fn start_connect(client: &Client, addr: SocketAddr) -> io::Result<TcpStream> {
        let slot = Slot::open(client, SOCK_STREAM)?;
        slot.call(addr_sqe(OP_CONNECT, slot.idx, addr)?)?;
        Ok(TcpStream { slot })
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.slot.nonblocking.store(on, Release);
        Ok(())
    }

    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.slot.read_timeout = t;
    }

    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.slot.write_timeout = t;
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.slot.setsockopt(IPPROTO_TCP, TCP_NODELAY, on as u64)
    }

    pub fn nodelay(&self) -> io::Result<bool> {
        self.slot
            .getsockopt(IPPROTO_TCP, TCP_NODELAY)
            .map(|v| v != 0)
    }

    pub fn set_keepalive(&self, on: bool) -> io::Result<()> {
        self.slot.setsockopt(SOL_SOCKET, SO_KEEPALIVE, on as u64)
    }

    /// `SO_ERROR`: the pending error, cleared by reading it.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.slot.take_error()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.slot.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.slot.peer_addr()
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let mut sqe = self.slot.op(OP_SHUTDOWN);
        sqe.arg0 = match how {
            Shutdown::Read => SHUT_RD,
            Shutdown::Write => SHUT_WR,
            Shutdown::Both => SHUT_RDWR,
        };
        self.slot.call(sqe).map(|_| ())
    }

    /// After a reader outside this process's calls (qvisor's guest, reading the ring in its
    /// syscall stub) moved `rx_head`: adopts the new position and kicks the stack if it
    /// waits for room (`rx_wanted`).
    pub fn rx_consumed_elsewhere(&self) {
        self.slot.rx_head();
        self.slot.kick_rx_if_wanted();
    }

    /// After a writer outside this process's calls (qvisor's guest, writing the ring in its
    /// syscall stub) moved `tx_tail` and found no kick outstanding: adopts the new position
    /// and kicks the stack (the writer already set `tx_kick`).
    pub fn tx_published_elsewhere(&self) {
        self.slot.tx_tail();
        self.slot.client.notify(OP_TX_KICK, self.slot.idx);
    }

    /// Bytes ready to read without blocking (`FIONREAD`).
    pub fn bytes_available(&self) -> usize {
        self.slot.rx_available() as usize
    }

    pub fn readiness(&self) -> u32 {
        self.slot.readiness()
    }

    pub fn slot(&self) -> u32 {
        self.slot.idx
    }

    pub(crate) fn client(&self) -> &Client {
        &self.slot.client
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.slot.stream_read(buf)
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.slot.stream_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TcpStream {
    /// Reads as [`Read::read`] does, up to `max` bytes, but hands them to `copy` where they
    /// lie in the ring instead of copying them into a slice: for a reader whose destination
    /// is not a slice of its own (qvisor copies straight into guest memory). Each call of
    /// `copy` gets a pointer valid for reads of its length, to bytes the stack no longer
    /// changes; it returns how many it took from their start (fewer: it can take no more).
    /// Only what it took is consumed; EFAULT if it took nothing.
    pub fn read_raw(
        &self,
        max: usize,
        mut copy: impl FnMut(*const u8, usize) -> usize,
    ) -> io::Result<usize> {
        self.slot.stream_read_raw(max, &mut copy)
    }

    /// Writes as [`Write::write`] does, up to `max` bytes, but lets `fill` put them where
    /// they go in the ring instead of copying them from a slice: for a writer whose source is
    /// not a slice of its own (qvisor copies straight from guest memory). Each call of `fill`
    /// gets a pointer valid for writes of its length, to ring space the stack does not read
    /// until it is published; it returns how many bytes it wrote from its start (fewer: it
    /// has no more). Only what it wrote is sent; EFAULT if it wrote nothing.
    pub fn write_raw(
        &self,
        max: usize,
        mut fill: impl FnMut(*mut u8, usize) -> usize,
    ) -> io::Result<usize> {
        self.slot.stream_write_raw(max, &mut fill)
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.slot.stream_read(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.slot.stream_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening TCP socket through qnet.
pub struct TcpListener {
    slot: Slot,
}

impl TcpListener {
    /// Binds `addr` (with `SO_REUSEADDR`, as most servers set it) and listens.
    pub fn bind(client: &Client, addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
        let slot = Slot::open(client, SOCK_STREAM)?;
        slot.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)?;
        slot.bind(addr)?;
        let mut sqe = slot.op(OP_LISTEN);
        sqe.arg0 = backlog;
        slot.call(sqe)?;
        Ok(TcpListener { slot })
    }

    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            match self.slot.call(self.slot.op(OP_ACCEPT)) {
                Ok(c) => {
                    let stream = TcpStream {
                        slot: Slot::adopt(&self.slot.client, c.slot),
                    };
                    return Ok((stream, cqe_addr(&c)));
                }
                Err(e) if e.raw_os_error() == Some(EAGAIN) => {
                    self.slot.block_on(READY_IN | READY_ERR, None)?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.slot.nonblocking.store(on, Release);
        Ok(())
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.slot.local_addr()
    }

    pub fn readiness(&self) -> u32 {
        self.slot.readiness()
    }

    pub fn slot(&self) -> u32 {
        self.slot.idx
    }

    pub(crate) fn client(&self) -> &Client {
        &self.slot.client
    }
}

/// A UDP socket through qnet.
pub struct UdpSocket {
    slot: Slot,
}

const DGRAM_HDR: u32 = std::mem::size_of::<DatagramHeader>() as u32;

impl UdpSocket {
    pub fn bind(client: &Client, addr: SocketAddr) -> io::Result<UdpSocket> {
        let slot = Slot::open(client, SOCK_DGRAM)?;
        slot.bind(addr)?;
        Ok(UdpSocket { slot })
    }

    /// Sets the default peer for [`UdpSocket::send`] and `peer_addr`.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.slot
            .call(addr_sqe(OP_CONNECT, self.slot.idx, addr)?)
            .map(|_| ())
    }

    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        let SocketAddr::V4(v4) = addr else {
            return Err(errno(EAFNOSUPPORT));
        };
        self.send_record(buf, Some(v4))
    }

    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.send_record(buf, None)
    }

    fn send_record(&self, buf: &[u8], to: Option<SocketAddrV4>) -> io::Result<usize> {
        if buf.len() > DATAGRAM_MAX as usize {
            return Err(errno(EMSGSIZE));
        }
        let record = datagram_record_size(buf.len() as u32);
        // More than the slot's share of its ring would never fit.
        if record > self.slot.client.tx_limit(self.slot.idx) {
            return Err(errno(EMSGSIZE));
        }
        loop {
            if self.slot.tx_space() >= record {
                break;
            }
            if self.slot.nonblocking.load(Acquire) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.slot
                .client
                .wait_until(None, || self.slot.tx_space() >= record)?;
        }
        let mut hdr = [0u8; DGRAM_HDR as usize];
        hdr[..4].copy_from_slice(&(buf.len() as u32).to_ne_bytes());
        if let Some(to) = to {
            hdr[4..6].copy_from_slice(&AF_INET.to_ne_bytes());
            hdr[6..8].copy_from_slice(&to.port().to_ne_bytes());
            hdr[8..12].copy_from_slice(&to.ip().octets());
        }
        if let Some(ring) = self.slot.view().tx_ring(self.slot.idx) {
            let at = self.slot.tx_tail();
            ring.write(at, &hdr);
            ring.write(at.wrapping_add(DGRAM_HDR), buf);
        }
        self.slot.publish_tx(record);
        Ok(buf.len())
    }

    /// Receives one datagram; a datagram larger than `buf` is truncated, as on Linux.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let deadline = deadline(self.slot.read_timeout);
        loop {
            if self.slot.rx_available() >= DGRAM_HDR {
                let ring = self
                    .slot
                    .view()
                    .rx_ring(self.slot.idx)
                    .ok_or_else(|| errno(EBADF))?;
                let at = self.slot.rx_head.load(Acquire);
                let mut hdr = [0u8; DGRAM_HDR as usize];
                ring.read(at, &mut hdr);
                let len = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]).min(DATAGRAM_MAX);
                let port = u16::from_ne_bytes([hdr[6], hdr[7]]);
                let from = SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(hdr[8], hdr[9], hdr[10], hdr[11]),
                    port,
                ));
                let n = (len as usize).min(buf.len());
                ring.read(at.wrapping_add(DGRAM_HDR), &mut buf[..n]);
                self.slot.consume_rx(datagram_record_size(len));
                return Ok((n, from));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(timed_out());
            }
            self.slot.block_on(READY_IN | READY_ERR, left)?;
            if self.slot.rx_available() < DGRAM_HDR && self.slot.readiness() & READY_ERR != 0 {
                if let Some(e) = self.slot.take_error()? {
                    return Err(e);
                }
            }
        }
    }

    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_from(buf).map(|(n, _)| n)
    }

    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.slot.nonblocking.store(on, Release);
        Ok(())
    }

    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.slot.read_timeout = t;
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.slot.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.slot.peer_addr()
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.slot.take_error()
    }

    pub fn slot(&self) -> u32 {
        self.slot.idx
    }
}

/// Readiness interests for [`poll`], the ring's `READY_*` bits.
pub struct Interest;

impl Interest {
    pub const READABLE: u32 = READY_IN | READY_RDHUP | READY_HUP | READY_ERR;
    pub const WRITABLE: u32 = READY_OUT | READY_HUP | READY_ERR;
    pub const CONNECTED: u32 = READY_CONNECTED;
}

/// Waits until any `(slot, interest)` pair is ready, or `timeout`; returns the ready bits of each
/// (the poll(2) of the ring). All slots must belong to `client`.
pub fn poll(
    client: &Client,
    slots: &[(u32, u32)],
    timeout: Option<Duration>,
) -> io::Result<Vec<u32>> {
    let ready = || -> Vec<u32> {
        slots
            .iter()
            .map(|(s, i)| client.poll_readiness(*s) & i)
            .collect()
    };
    client.wait_until(deadline(timeout), || ready().iter().any(|r| *r != 0))?;
    Ok(ready())
}
