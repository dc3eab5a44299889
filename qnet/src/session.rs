//! One client's ring: executes its socket operations against [`Net`] and moves its sockets' data
//! between the ring's byte buffers and smoltcp.
//!
//! Nothing the client writes is trusted. Queue positions and byte-ring positions are checked
//! against the stack's private copies on every pass; an inconsistency is a [`Violation`], which
//! closes this session (its sockets are reset) and no other.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};
use std::sync::Arc;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration as SDuration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint};
use thiserror::Error;

use qnet_client::sys::{eventfd_signal, futex_wake_all, Mapping};
use qnet_ring::errno::*;
use qnet_ring::*;

use crate::conn::{Conn, ConnId};
use crate::net::{
    apply_tcp_opts, endpoint, ListenerId, Net, NetStats, RingGrants, TcpOpts, LEAN_CHUNK,
    LEAN_FILL, MAX_BACKLOG,
};

/// SYN retransmissions give up after this long (Linux: about two minutes).
const CONNECT_TIMEOUT: SDuration = SDuration::from_secs(75);
/// Bytes a socket must receive in one service to count as a bulk stream, whose next frames'
/// payload the stack reads straight into its storage (about a 16 KiB offloaded frame).
const RX_HOT_MIN: u32 = 16 << 10;

/// The client broke the ring protocol.
#[derive(Debug, Error)]
#[error("ring protocol violation: {0}")]
pub struct Violation(pub String);

#[derive(Debug, Default)]
enum Kind {
    #[default]
    Free,
    Stream(Stream),
    Listener(ListenerId),
    Dgram(Dgram),
    /// Closed by the client; the stack is still sending what it had written.
    Closing(ConnId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Connected,
    Failed,
}

#[derive(Debug)]
struct Stream {
    handle: Option<ConnId>,
    phase: Phase,
    last: tcp::State,
    peer_fin: bool,
    shut_rd: bool,
    shut_wr: bool,
    fin_sent: bool,
    started: Instant,
}

impl Stream {
    fn new(handle: Option<ConnId>, phase: Phase, last: tcp::State, now: Instant) -> Self {
        Stream {
            handle,
            phase,
            last,
            peer_fin: false,
            shut_rd: false,
            shut_wr: false,
            fin_sent: false,
            started: now,
        }
    }
}

#[derive(Debug, Default)]
struct Dgram {
    handle: Option<SocketHandle>,
    peer: Option<IpEndpoint>,
}

#[derive(Debug, Default)]
struct SlotState {
    kind: Kind,
    /// Private copies of the positions this side owns.
    tx_head: u32,
    rx_tail: u32,
    readiness: u32,
    error: u32,
    reuseaddr: bool,
    opts: TcpOpts,
    bound_ip: Option<Ipv4Addr>,
    /// Port this slot holds in the protocol's port table.
    port: Option<u16>,
    /// After close: transmit ring bytes still to send end here.
    close_at: Option<u32>,
    /// smoltcp receives straight into this slot's receive ring (see [`Session::enter_direct_rx`]).
    rx_direct: bool,
    /// With `rx_direct`: the ring position of smoltcp's first queued byte, i.e. what the client
    /// had read when the stack last looked. smoltcp's queue runs from here; `rx_tail` is how
    /// much of it is published.
    rx_taken: u32,
    /// With `rx_direct`: the buffer smoltcp had before, given back when the slot stops being
    /// direct (no allocation per connection).
    rx_own: Option<tcp::SocketBuffer<'static>>,
    /// `rx_tail` when [`Session::give_back_idle_rings`] last looked, and whether data went
    /// through the receive ring since its pages were last given back.
    rx_seen: u32,
    rx_touched: bool,
    /// How much of its receive ring the slot may fill.
    rx_share: RxShare,
    /// smoltcp sends straight from this slot's transmit ring (see [`Session::enter_direct_tx`]).
    tx_direct: bool,
    /// With `tx_direct`: the ring position up to which bytes were handed to smoltcp; smoltcp's
    /// queue (sent and unacknowledged, then unsent) ends here and starts at `tx_head`, so the
    /// client gets ring space back as the peer acknowledges.
    tx_given: u32,
    /// With `tx_direct`: the buffer smoltcp had before, given back when the slot stops being
    /// direct.
    tx_own: Option<tcp::SocketBuffer<'static>>,
    /// How much of its transmit ring the client may fill (`tx_limit`).
    tx_share: TxShare,
    /// The client's `rx_head` when the stack last found that it wants to hear of the client's
    /// next read (the ring full, or past half with direct receive: the window holds the
    /// sender back). Published as `rx_wanted` only before the stack sleeps
    /// ([`Session::rearm_rx_kicks`]); while awake it looks at every slot each pass anyway.
    rx_kick_at: Option<u32>,
}

/// How much of its transmit ring a slot's client may fill (docs/ring.md, `tx_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxShare {
    /// At most [`LEAN_FILL`] bytes; the pages of what the stack consumed are given back up to
    /// `freed_to`. A stream whose client filled that share asks for a grant.
    Lean { freed_to: u32 },
    /// The whole ring, under a grant from [`RingGrants`].
    Whole,
}

impl Default for TxShare {
    fn default() -> Self {
        TxShare::Lean { freed_to: 0 }
    }
}

/// How much of its receive ring a slot may fill (docs/ring.md), decided when it has data to
/// deliver ([`Session::decide_rx`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum RxShare {
    #[default]
    Undecided,
    /// At most [`LEAN_FILL`] bytes in the ring, its pages given back behind the reader up to
    /// `freed_to`; `outgrown` once data waited while that share was full (it asks for a grant).
    Lean { freed_to: u32, outgrown: bool },
    /// The whole ring, under a grant from [`RingGrants`].
    Whole,
}

impl RxShare {
    /// Data waits while the slot's share of its ring is full: a lean slot asks for a grant.
    fn mark_outgrown(&mut self) {
        if let RxShare::Lean { outgrown, .. } = self {
            *outgrown = true;
        }
    }
}

/// A smoltcp buffer over a slot's byte ring, its first byte where ring position `at` falls,
/// for a socket to receive into or send from in place.
///
/// # Safety
/// The ring's memory must stay mapped while the buffer lives (the caller keeps the session's
/// mapping in `Net::rx_regions`), and nothing else in this process may refer to those bytes
/// meanwhile; the client may still change them (see the callers for why that is harmless).
unsafe fn ring_socket_buffer(ring: &ByteRing<'_>, at: u32) -> tcp::SocketBuffer<'static> {
    // SAFETY: the ring's bytes lie inside the session's mapping (validated geometry), which
    // outlives the buffer by this function's contract.
    let storage: &'static mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(ring.as_mut_ptr(), ring.size() as usize) };
    let mut buf = tcp::SocketBuffer::new(storage);
    let start = (at % ring.size()) as usize;
    buf.enqueue_unallocated(start);
    buf.dequeue_allocated(start);
    buf
}

/// A socket's buffer for when it leaves a ring: `kept` (the one it had before) emptied, if it
/// holds `at_least` bytes; else a new one of that size, or of `kept`'s if larger.
fn own_buffer(
    kept: Option<tcp::SocketBuffer<'static>>,
    at_least: usize,
) -> tcp::SocketBuffer<'static> {
    match kept {
        Some(mut own) if own.capacity() >= at_least => {
            own.clear();
            own
        }
        kept => {
            let capacity = kept.map_or(0, |o| o.capacity()).max(at_least);
            tcp::SocketBuffer::new(vec![0; capacity])
        }
    }
}

pub struct Session {
    pub id: u64,
    // Declared before `mapping`: dropped first, so the view never outlives the memory.
    view: RegionView,
    /// Shared with [`Net::rx_regions`] while sockets receive into it, and with TAP writes
    /// that send from its transmit rings.
    mapping: Arc<Mapping>,
    /// Freed slots' rings (offset, length) whose pages go back once no TAP write may still
    /// read them ([`Session::give_back_released`]).
    released: Vec<(u64, u64)>,
    /// The memfd behind `mapping`, kept to count the pages it holds ([`Session::resident_bytes`]).
    memory: Option<OwnedFd>,
    /// The attach connection; its hang-up ends the session.
    pub stream: UnixStream,
    /// Written when the client armed it (`client_wake_armed`): how an event loop is woken.
    client_wake: OwnedFd,
    slots: Vec<SlotState>,
    free: Vec<u32>,
    /// The slots in use, so a pass visits those and not the whole table (most of a ring's
    /// slots are free); `open_at[idx]` is `idx`'s position in it.
    open: Vec<u32>,
    open_at: Vec<u32>,
    /// Reused copy of `open` to iterate while slots are freed.
    visit: Vec<u32>,
    /// Slots the client's operations named since the last [`Session::service_touched`].
    touched: Vec<u32>,
    /// TCP sockets that received a stream's worth in one service since the stack last asked
    /// (it reads their next frames' payload straight into them: phy/rx.rs).
    rx_hot: Vec<SocketHandle>,
    sq_head: u32,
    cq_tail: u32,
    ev_tail: u32,
    pending_cqes: VecDeque<Cqe>,
    /// Something was published this pass; the client may need a wake-up.
    published: bool,
    /// The client hung up: served once more (what it posted before it went), then detached.
    pub hung_up: bool,
    /// Detached: only the streams it closed are left, sending what they hold until then.
    pub detached_until: Option<std::time::Instant>,
}

fn cqe(user_data: u64, result: i32) -> Cqe {
    Cqe {
        user_data,
        result,
        ..Default::default()
    }
}

fn with_addr(mut c: Cqe, ep: Option<IpEndpoint>) -> Cqe {
    c.family = AF_INET;
    if let Some(ep) = ep {
        if let IpAddress::Ipv4(ip) = ep.addr {
            c.addr[..4].copy_from_slice(&ip.octets());
        }
        c.port = ep.port;
    }
    c
}

fn sqe_ipv4(sqe: &Sqe) -> Result<(Ipv4Addr, u16), i32> {
    match sqe.family {
        AF_INET => Ok((
            Ipv4Addr::new(sqe.addr[0], sqe.addr[1], sqe.addr[2], sqe.addr[3]),
            sqe.port,
        )),
        _ => Err(EAFNOSUPPORT),
    }
}

impl Session {
    pub fn new(
        id: u64,
        view: RegionView,
        mapping: Mapping,
        stream: UnixStream,
        client_wake: OwnedFd,
    ) -> Self {
        let count = view.geometry().slot_count;
        Session {
            id,
            view,
            mapping: Arc::new(mapping),
            released: Vec::new(),
            memory: None,
            stream,
            client_wake,
            slots: (0..count).map(|_| SlotState::default()).collect(),
            free: (0..count).rev().collect(),
            open: Vec::new(),
            open_at: vec![0; count as usize],
            visit: Vec::new(),
            touched: Vec::new(),
            rx_hot: Vec::new(),
            sq_head: 0,
            cq_tail: 0,
            ev_tail: 0,
            pending_cqes: VecDeque::new(),
            published: false,
            hung_up: false,
            detached_until: None,
        }
    }

    /// Bytes of memory the session's region maps (for accounting).
    pub fn mapped_bytes(&self) -> usize {
        self.mapping.len()
    }

    /// Keeps the memfd the region lives in, so [`Session::resident_bytes`] can count it.
    pub fn with_memory(mut self, memfd: OwnedFd) -> Self {
        self.memory = Some(memfd);
        self
    }

    /// Bytes of the region in memory now (the memfd's allocated pages; the region is sparse,
    /// and rings give theirs back when freed or idle). 0 when the memfd was not kept.
    pub fn resident_bytes(&self) -> u64 {
        let Some(fd) = &self.memory else {
            return 0;
        };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // The fstat system call itself: glibc's wrapper may use newfstatat, which takes a path
        // and which qvisor's seccomp filter does not give the network thread.
        // SAFETY: fstat writes a `stat` into the pointer on success; it is read only then.
        if unsafe { libc::syscall(libc::SYS_fstat, fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return 0;
        }
        // SAFETY: fstat succeeded, so the struct is initialised.
        let st = unsafe { st.assume_init() };
        st.st_blocks as u64 * 512
    }

    /// Whether a stream the client closed still has bytes in its ring for its socket.
    /// The client's ring region (the device sends payloads from its transmit rings).
    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    pub fn has_closing_streams(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.kind, Kind::Closing(_)))
    }

    /// Whether the client has published operations the stack has not taken yet.
    pub fn has_submissions(&self) -> bool {
        self.view.sq_tail().load(Acquire) != self.sq_head
    }

    /// Before the stack sleeps: clears every open slot's `tx_kick`, so the next write kicks
    /// the stack awake. Returns whether any was set: bytes published before the clear (whose
    /// writer saw the flag and did not kick) are then looked for by one more pass; any
    /// published after it come with a kick.
    pub fn rearm_tx_kicks(&self) -> bool {
        let mut any = false;
        for &idx in &self.open {
            if let Some(c) = self.view.slot_client(idx) {
                if c.tx_kick.load(Acquire) != 0 {
                    any |= c.tx_kick.swap(0, SeqCst) != 0;
                }
            }
        }
        any
    }

    pub fn set_stack_flag(&self, flag: u32, on: bool) {
        if on {
            self.view.stack_flags().fetch_or(flag, SeqCst);
        } else {
            self.view.stack_flags().fetch_and(!flag, SeqCst);
        }
    }

    /// Takes and executes submitted operations; returns how many.
    pub fn process_submissions(&mut self, net: &mut Net, now: Instant) -> Result<usize, Violation> {
        let entries = self.view.geometry().sq_entries;
        let cq_entries = self.view.geometry().cq_entries as usize;
        let tail = self.view.sq_tail().load(Acquire);
        if tail.wrapping_sub(self.sq_head) > entries {
            return Err(Violation(format!(
                "sq_tail {tail} is more than {entries} ahead of sq_head {}",
                self.sq_head
            )));
        }
        let mut done = 0;
        while self.sq_head != tail && self.pending_cqes.len() < cq_entries {
            let sqe = self.view.read_sqe(self.sq_head);
            self.sq_head = self.sq_head.wrapping_add(1);
            let c = self.execute(&sqe, net, now);
            if sqe.opcode != OP_SOCKET {
                self.touched.push(sqe.slot);
            }
            if matches!(sqe.opcode, OP_SOCKET | OP_ACCEPT) && c.result >= 0 {
                self.touched.push(c.slot);
            }
            if sqe.flags & SQE_F_NO_CQE == 0 {
                self.pending_cqes.push_back(Cqe {
                    user_data: sqe.user_data,
                    ..c
                });
            }
            done += 1;
        }
        if done > 0 {
            self.view.sq_head().store(self.sq_head, Release);
        }
        self.flush_completions()?;
        Ok(done)
    }

    fn flush_completions(&mut self) -> Result<(), Violation> {
        if self.pending_cqes.is_empty() {
            return Ok(());
        }
        let entries = self.view.geometry().cq_entries;
        let head = self.view.cq_head().load(Acquire);
        let mut used = self.cq_tail.wrapping_sub(head);
        if used > entries {
            return Err(Violation(format!(
                "cq_head {head} is ahead of cq_tail {}",
                self.cq_tail
            )));
        }
        while used < entries {
            let Some(c) = self.pending_cqes.pop_front() else {
                break;
            };
            self.view.write_cqe(self.cq_tail, &c);
            self.cq_tail = self.cq_tail.wrapping_add(1);
            used += 1;
        }
        self.view.cq_tail().store(self.cq_tail, Release);
        self.published = true;
        Ok(())
    }

    fn alloc_slot(&mut self, kind: Kind) -> Result<u32, i32> {
        let idx = self.free.pop().ok_or(EMFILE)?;
        self.slots[idx as usize] = SlotState {
            kind,
            ..Default::default()
        };
        self.open_at[idx as usize] = self.open.len() as u32;
        self.open.push(idx);
        // Only this side resets the words; the client must not touch a slot before it owns it.
        if let (Some(c), Some(s)) = (self.view.slot_client(idx), self.view.slot_stack(idx)) {
            c.tx_tail.store(0, Release);
            c.rx_head.store(0, Release);
            c.tx_kick.store(0, Release);
            s.tx_head.store(0, Release);
            s.rx_tail.store(0, Release);
            s.readiness.store(0, Release);
            s.event_queued.store(0, Release);
            s.rx_wanted.store(0, Release);
            s.error.store(0, Release);
            s.tx_limit
                .store(LEAN_FILL.min(self.view.geometry().tx_buf_size), Release);
            s.generation.fetch_add(1, Release);
        }
        Ok(idx)
    }

    /// What the client of slot `idx` may have in its transmit ring.
    fn tx_limit(&self, idx: u32) -> u32 {
        let size = self.view.geometry().tx_buf_size;
        match self.slots[idx as usize].tx_share {
            TxShare::Lean { .. } => LEAN_FILL.min(size),
            TxShare::Whole => size,
        }
    }

    fn free_slot(&mut self, idx: u32, rx_grants: &mut RingGrants, tx_grants: &mut RingGrants) {
        let s = &self.slots[idx as usize];
        if s.rx_share == RxShare::Whole {
            rx_grants.give(u64::from(self.view.geometry().rx_buf_size));
        }
        if s.tx_share == TxShare::Whole {
            tx_grants.give(u64::from(self.view.geometry().tx_buf_size));
        }
        self.release_buffers(idx);
        self.slots[idx as usize] = SlotState::default();
        self.free.push(idx);
        let at = self.open_at[idx as usize] as usize;
        if self.open.get(at) == Some(&idx) {
            self.open.swap_remove(at);
            if let Some(&moved) = self.open.get(at) {
                self.open_at[moved as usize] = at as u32;
            }
        }
    }

    /// Gives back the memory of a freed slot's two byte rings: a connection that moved data
    /// leaves up to 5 MiB of them resident (the default geometry), which Linux would have
    /// freed with its socket buffers; the next socket in the slot faults in what it uses.
    fn release_buffers(&mut self, idx: u32) {
        let g = self.view.geometry();
        // The slot is free: nothing of the stack reads its rings until it is handed out again
        // (a client that still does reads zeros). A TAP write of an earlier pass may still be
        // sending from its transmit ring (an io_uring write the kernel did not run at once):
        // the stack gives the pages back once none is in flight.
        self.released.push((g.tx_buf_off(idx), g.slot_buf_stride()));
    }

    /// Gives back the pages of the rings freed since the last call; the stack calls it when
    /// no TAP write that may read a ring is in flight.
    pub fn give_back_released(&mut self) {
        for (off, len) in std::mem::take(&mut self.released) {
            self.give_back_pages(off, len);
        }
    }

    /// Gives back the pages of every receive ring that stayed empty since the last call and
    /// held data before: a connection that received a burst and then went quiet holds none of
    /// its ring (up to 4 MiB), as Linux frees a socket's receive buffers once they are read.
    /// Called about once a second; a busy ring is never touched, so a stream pays no faults.
    pub fn give_back_idle_rings(&mut self, net: &mut Net) {
        for at in 0..self.open.len() {
            let idx = self.open[at];
            let s = &mut self.slots[idx as usize];
            if s.rx_tail != s.rx_seen {
                s.rx_seen = s.rx_tail;
                s.rx_touched = true;
                continue;
            }
            let (tail, taken, direct) = (s.rx_tail, s.rx_taken, s.rx_direct);
            let read_all = self
                .view
                .slot_client(idx)
                .is_some_and(|c| c.rx_head.load(Acquire) == tail);
            if !s.rx_touched || !read_all {
                continue;
            }
            // A direct ring is smoltcp's receive buffer: it may hold bytes not yet published, or
            // out of order past them, in what looks like free space.
            if direct {
                let Some(h) = self.tcp_handle(idx) else {
                    continue;
                };
                let sock = net.sockets.get::<tcp::Socket>(h);
                if sock.recv_queue() != tail.wrapping_sub(taken) as usize
                    || sock.holds_out_of_order()
                {
                    continue;
                }
            }
            let s = &mut self.slots[idx as usize];
            s.rx_touched = false;
            // Quiet, it asks again when data comes (a direct ring stays smoltcp's buffer, and
            // keeps its grant: the window it advertised must still fit).
            match s.rx_share {
                RxShare::Lean { .. } => s.rx_share = RxShare::Undecided,
                RxShare::Whole if !direct => {
                    s.rx_share = RxShare::Undecided;
                    net.rx_grants
                        .give(u64::from(self.view.geometry().rx_buf_size));
                }
                _ => {}
            }
            let g = self.view.geometry();
            // Empty: the client has read everything published and the stack writes nothing
            // there outside its own passes, so the bytes are nobody's.
            self.give_back_pages(g.rx_buf_off(idx), g.rx_buf_size as u64);
        }
    }

    /// Frees the pages of `len` bytes of the byte rings from `off` (MADV_REMOVE: they read as
    /// zeros afterwards, and are faulted in again when written).
    fn give_back_pages(&self, off: u64, len: u64) {
        if off.saturating_add(len) > self.view.len() as u64 {
            return;
        }
        // SAFETY: the range lies inside the mapped region (checked above) and is page
        // aligned (the layout puts the buffers on a page boundary; each is a power of two of
        // at least a page). MADV_REMOVE frees its pages, which then read as zeros, and
        // changes no mapping; callers give back only bytes nobody will read as data.
        unsafe {
            libc::madvise(
                self.view.base().add(off as usize).cast(),
                len as usize,
                libc::MADV_REMOVE,
            );
        }
    }

    fn execute(&mut self, sqe: &Sqe, net: &mut Net, now: Instant) -> Cqe {
        let r = match sqe.opcode {
            OP_NOP => Ok(cqe(0, 0)),
            OP_SOCKET => self.op_socket(sqe),
            OP_BIND => self.op_bind(sqe, net),
            OP_LISTEN => self.op_listen(sqe, net),
            OP_ACCEPT => self.op_accept(sqe, net, now),
            OP_CONNECT => self.op_connect(sqe, net, now),
            OP_SHUTDOWN => self.op_shutdown(sqe),
            OP_CLOSE => self.op_close(sqe, net, now),
            OP_SETSOCKOPT => self.op_setsockopt(sqe, net),
            OP_GETSOCKOPT => self.op_getsockopt(sqe),
            OP_GETSOCKNAME => self.op_getsockname(sqe, net),
            OP_GETPEERNAME => self.op_getpeername(sqe, net),
            // The kick only wakes the loop, which services every slot on every pass. Its flag
            // stays set while the stack is awake, so writers do not kick a busy stack; the
            // stack clears it before it sleeps (`Session::rearm_tx_kicks`).
            OP_TX_KICK => Ok(cqe(0, 0)),
            OP_RX_KICK => Ok(cqe(0, 0)),
            _ => Err(EINVAL),
        };
        r.unwrap_or_else(|e| cqe(0, -e))
    }

    fn slot_mut(&mut self, slot: u32) -> Result<&mut SlotState, i32> {
        match self.slots.get_mut(slot as usize) {
            Some(s) if !matches!(s.kind, Kind::Free | Kind::Closing(_)) => Ok(s),
            _ => Err(EBADF),
        }
    }

    fn op_socket(&mut self, sqe: &Sqe) -> Result<Cqe, i32> {
        if sqe.family != AF_INET {
            return Err(EAFNOSUPPORT);
        }
        let kind = match sqe.arg0 & 0xf {
            SOCK_STREAM => Kind::Stream(Stream::new(
                None,
                Phase::Idle,
                tcp::State::Closed,
                Instant::ZERO,
            )),
            SOCK_DGRAM => Kind::Dgram(Dgram::default()),
            _ => return Err(EPROTONOSUPPORT),
        };
        let idx = self.alloc_slot(kind)?;
        let mut c = cqe(0, 0);
        c.slot = idx;
        Ok(c)
    }

    fn check_local_ip(ip: Ipv4Addr, net: &Net) -> Result<(), i32> {
        if ip.is_unspecified() || net.is_local(ip) {
            Ok(())
        } else {
            Err(EADDRNOTAVAIL)
        }
    }

    fn op_bind(&mut self, sqe: &Sqe, net: &mut Net) -> Result<Cqe, i32> {
        let (ip, port) = sqe_ipv4(sqe)?;
        Self::check_local_ip(ip, net)?;
        let s = self.slot_mut(sqe.slot)?;
        if s.port.is_some() {
            return Err(EINVAL);
        }
        match &mut s.kind {
            Kind::Stream(st) if st.phase == Phase::Idle => {
                s.port = Some(net.tcp_ports.bind(port, s.reuseaddr)?);
            }
            Kind::Dgram(d) => {
                let port = net.udp_ports.bind(port, s.reuseaddr)?;
                let h = match net.new_udp() {
                    Ok(h) => h,
                    Err(e) => {
                        net.udp_ports.release(port);
                        return Err(e);
                    }
                };
                let local = smoltcp::wire::IpListenEndpoint {
                    addr: (!ip.is_unspecified()).then_some(IpAddress::Ipv4(ip)),
                    port,
                };
                if net.sockets.get_mut::<udp::Socket>(h).bind(local).is_err() {
                    net.remove(h);
                    net.udp_ports.release(port);
                    return Err(EINVAL);
                }
                d.handle = Some(h);
                s.port = Some(port);
            }
            _ => return Err(EINVAL),
        }
        s.bound_ip = Some(ip);
        Ok(cqe(0, 0))
    }

    fn op_listen(&mut self, sqe: &Sqe, net: &mut Net) -> Result<Cqe, i32> {
        let s = self.slot_mut(sqe.slot)?;
        match &s.kind {
            Kind::Listener(id) => {
                // Linux lets listen() be called again to change the backlog.
                if let Some(l) = net.listeners.get_mut(id) {
                    l.backlog = (sqe.arg0 as usize).clamp(1, MAX_BACKLOG);
                }
                return Ok(cqe(0, 0));
            }
            Kind::Stream(st) if st.phase == Phase::Idle => {}
            Kind::Dgram(_) => return Err(EOPNOTSUPP),
            _ => return Err(EINVAL),
        }
        let port = match s.port {
            Some(p) => p,
            None => {
                let p = net.tcp_ports.bind(0, false)?;
                s.port = Some(p);
                p
            }
        };
        let addr = s.bound_ip.filter(|ip| !ip.is_unspecified());
        let id = net.add_listener(addr, port, sqe.arg0 as usize, s.opts)?;
        s.kind = Kind::Listener(id);
        Ok(cqe(0, 0))
    }

    fn op_accept(&mut self, sqe: &Sqe, net: &mut Net, now: Instant) -> Result<Cqe, i32> {
        let s = self.slot_mut(sqe.slot)?;
        let Kind::Listener(id) = s.kind else {
            return Err(EINVAL);
        };
        let opts = s.opts;
        if self.free.is_empty() {
            return Err(EMFILE);
        }
        let c = net.accept(id).ok_or(EAGAIN)?;
        let mut conn = Conn::get(&mut net.sockets, &mut net.pipes, c);
        if let Conn::Tcp(sock) = &mut conn {
            apply_tcp_opts(sock, opts);
        }
        let peer = conn.remote_endpoint();
        let state = conn.state();
        let idx = self.alloc_slot(Kind::Stream(Stream::new(
            Some(c),
            Phase::Connected,
            state,
            now,
        )))?;
        let slot = &mut self.slots[idx as usize];
        slot.opts = opts;
        // Published before the completion, so the client may write as soon as accept returns.
        // Accepted connections share the listener's port; they hold no reservation of their own.
        slot.readiness = READY_CONNECTED | READY_OUT;
        if let Some(w) = self.view.slot_stack(idx) {
            w.readiness.store(READY_CONNECTED | READY_OUT, Release);
        }
        let mut c = with_addr(cqe(0, 0), peer);
        c.slot = idx;
        Ok(c)
    }

    fn op_connect(&mut self, sqe: &Sqe, net: &mut Net, now: Instant) -> Result<Cqe, i32> {
        let (ip, port) = sqe_ipv4(sqe)?;
        let s = self.slot_mut(sqe.slot)?;
        match &mut s.kind {
            Kind::Stream(st) => {
                match st.phase {
                    Phase::Connecting => return Err(EALREADY),
                    Phase::Connected => return Err(EISCONN),
                    Phase::Failed => return Err(EINVAL),
                    Phase::Idle => {}
                }
                if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                    return Err(ENETUNREACH);
                }
                if port == 0 {
                    return Err(ECONNREFUSED);
                }
                if !net.routable(ip) {
                    return Err(ENETUNREACH);
                }
                let src = net.source_for(s.bound_ip, ip)?;
                let lport = match s.port {
                    Some(p) => p,
                    None => {
                        let p = net.tcp_ports.bind(0, false)?;
                        s.port = Some(p);
                        p
                    }
                };
                // A listener of this stack: a pipe, no TCP (see `conn`).
                if let Some(id) = net.local_listener(ip, port) {
                    let (client, server) = (endpoint(src, lport), endpoint(ip, port));
                    if let Some(c) = net.connect_pipe(id, client, server)? {
                        *st = Stream::new(Some(c), Phase::Connecting, tcp::State::SynSent, now);
                        return Ok(cqe(0, 0));
                    }
                }
                let h = net.new_tcp(s.opts)?;
                let sock = net.sockets.get_mut::<tcp::Socket>(h);
                sock.set_timeout(Some(CONNECT_TIMEOUT));
                if sock
                    .connect(
                        net.iface.context(),
                        endpoint(ip, port),
                        endpoint(src, lport),
                    )
                    .is_err()
                {
                    net.remove(h);
                    return Err(EINVAL);
                }
                *st = Stream::new(
                    Some(ConnId::Tcp(h)),
                    Phase::Connecting,
                    tcp::State::SynSent,
                    now,
                );
                Ok(cqe(0, 0))
            }
            Kind::Dgram(d) => {
                d.peer = (!ip.is_unspecified()).then(|| endpoint(ip, port));
                Ok(cqe(0, 0))
            }
            _ => Err(EINVAL),
        }
    }

    fn op_shutdown(&mut self, sqe: &Sqe) -> Result<Cqe, i32> {
        let s = self.slot_mut(sqe.slot)?;
        match &mut s.kind {
            Kind::Stream(st) if st.phase == Phase::Connected => {
                match sqe.arg0 {
                    SHUT_RD => st.shut_rd = true,
                    SHUT_WR => st.shut_wr = true,
                    SHUT_RDWR => {
                        st.shut_rd = true;
                        st.shut_wr = true;
                    }
                    _ => return Err(EINVAL),
                }
                Ok(cqe(0, 0))
            }
            Kind::Listener(_) => Ok(cqe(0, 0)),
            _ => Err(ENOTCONN),
        }
    }

    fn op_close(&mut self, sqe: &Sqe, net: &mut Net, now: Instant) -> Result<Cqe, i32> {
        self.slot_mut(sqe.slot)?;
        self.close_slot(sqe.slot, net, now);
        Ok(cqe(0, 0))
    }

    /// Releases a slot the client closed. A connected stream first sends what is already in
    /// its transmit ring (then FIN); unread received data makes it a reset, as on Linux.
    fn close_slot(&mut self, idx: u32, net: &mut Net, now: Instant) {
        self.leave_direct_of(idx, net);
        let s = &mut self.slots[idx as usize];
        match std::mem::take(&mut s.kind) {
            Kind::Stream(st) => match st.handle {
                Some(h) if st.phase == Phase::Connected => {
                    let unread = self
                        .view
                        .slot_client(idx)
                        .is_some_and(|c| c.rx_head.load(Acquire) != s.rx_tail)
                        || Conn::get(&mut net.sockets, &mut net.pipes, h).recv_queue() > 0;
                    if unread {
                        net.abort_conn(h, None, now);
                    } else {
                        let tail = self
                            .view
                            .slot_client(idx)
                            .map_or(s.tx_head, |c| c.tx_tail.load(Acquire));
                        let pending = tail.wrapping_sub(s.tx_head);
                        let limit = self.tx_limit(idx);
                        let s = &mut self.slots[idx as usize];
                        s.close_at = Some(if pending <= limit { tail } else { s.tx_head });
                        s.kind = Kind::Closing(h);
                        return;
                    }
                    if let Some(p) = s.port.take() {
                        net.tcp_ports.release(p);
                    }
                }
                Some(h) => {
                    net.abort_conn(h, s.port.take(), now);
                }
                None => {
                    if let Some(p) = s.port.take() {
                        net.tcp_ports.release(p);
                    }
                }
            },
            Kind::Listener(id) => {
                s.port = None; // remove_listener releases it
                net.remove_listener(id, now);
            }
            Kind::Dgram(d) => {
                if let Some(h) = d.handle {
                    net.remove(h);
                }
                if let Some(p) = s.port.take() {
                    net.udp_ports.release(p);
                }
            }
            Kind::Closing(h) => {
                net.abort_conn(h, s.port.take(), now);
            }
            Kind::Free => return,
        }
        self.free_slot(idx, &mut net.rx_grants, &mut net.tx_grants);
    }

    fn op_setsockopt(&mut self, sqe: &Sqe, net: &mut Net) -> Result<Cqe, i32> {
        let on = sqe.arg1 != 0;
        let s = self.slot_mut(sqe.slot)?;
        let handle = match &s.kind {
            Kind::Stream(st) => st.handle,
            _ => None,
        };
        match sqe.arg0 {
            x if x == sockopt(SOL_SOCKET, SO_REUSEADDR)
                || x == sockopt(SOL_SOCKET, SO_REUSEPORT) =>
            {
                s.reuseaddr = on
            }
            x if x == sockopt(SOL_SOCKET, SO_KEEPALIVE) => s.opts.keepalive = on,
            // The ring buffers are fixed at attach time; accepted like Linux accepts any size.
            x if x == sockopt(SOL_SOCKET, SO_RCVBUF) || x == sockopt(SOL_SOCKET, SO_SNDBUF) => {}
            x if x == sockopt(IPPROTO_TCP, TCP_NODELAY) => s.opts.nodelay = on,
            _ => return Err(ENOPROTOOPT),
        }
        let opts = s.opts;
        if let Kind::Listener(id) = s.kind {
            if let Some(l) = net.listeners.get_mut(&id) {
                l.opts = opts;
            }
        }
        if let Some(ConnId::Tcp(h)) = handle {
            apply_tcp_opts(net.sockets.get_mut::<tcp::Socket>(h), opts);
        }
        Ok(cqe(0, 0))
    }

    fn op_getsockopt(&mut self, sqe: &Sqe) -> Result<Cqe, i32> {
        let g = self.view.geometry();
        let (sndbuf, rcvbuf) = (g.tx_buf_size as u64, g.rx_buf_size as u64);
        let s = self.slot_mut(sqe.slot)?;
        let value = match sqe.arg0 {
            x if x == sockopt(SOL_SOCKET, SO_ERROR) => {
                let e = std::mem::take(&mut s.error);
                s.readiness &= !READY_ERR;
                if let Some(w) = self.view.slot_stack(sqe.slot) {
                    w.error.store(0, Release);
                    w.readiness.fetch_and(!READY_ERR, Release);
                }
                e as u64
            }
            x if x == sockopt(SOL_SOCKET, SO_TYPE) => match s.kind {
                Kind::Dgram(_) => SOCK_DGRAM as u64,
                _ => SOCK_STREAM as u64,
            },
            x if x == sockopt(SOL_SOCKET, SO_REUSEADDR)
                || x == sockopt(SOL_SOCKET, SO_REUSEPORT) =>
            {
                s.reuseaddr as u64
            }
            x if x == sockopt(SOL_SOCKET, SO_KEEPALIVE) => s.opts.keepalive as u64,
            x if x == sockopt(SOL_SOCKET, SO_SNDBUF) => sndbuf,
            x if x == sockopt(SOL_SOCKET, SO_RCVBUF) => rcvbuf,
            x if x == sockopt(IPPROTO_TCP, TCP_NODELAY) => s.opts.nodelay as u64,
            _ => return Err(ENOPROTOOPT),
        };
        let mut c = cqe(0, 0);
        c.value = value;
        Ok(c)
    }

    fn op_getsockname(&mut self, sqe: &Sqe, net: &mut Net) -> Result<Cqe, i32> {
        let local_ip = net.local_ip();
        let s = self.slot_mut(sqe.slot)?;
        let connected_handle = match &s.kind {
            Kind::Stream(st) => st.handle,
            _ => None,
        };
        let ep = match connected_handle
            .and_then(|h| Conn::get(&mut net.sockets, &mut net.pipes, h).local_endpoint())
        {
            Some(ep) => ep,
            None => {
                let ip = match (&s.kind, s.bound_ip) {
                    (Kind::Dgram(d), Some(ip)) if ip.is_unspecified() && d.peer.is_some() => {
                        local_ip
                    }
                    (_, Some(ip)) => ip,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                endpoint(ip, s.port.unwrap_or(0))
            }
        };
        Ok(with_addr(cqe(0, 0), Some(ep)))
    }

    fn op_getpeername(&mut self, sqe: &Sqe, net: &mut Net) -> Result<Cqe, i32> {
        let s = self.slot_mut(sqe.slot)?;
        let ep = match &s.kind {
            Kind::Stream(st) if st.phase == Phase::Connected => st
                .handle
                .and_then(|h| Conn::get(&mut net.sockets, &mut net.pipes, h).remote_endpoint()),
            Kind::Dgram(d) => d.peer,
            _ => None,
        };
        ep.map(|ep| with_addr(cqe(0, 0), Some(ep))).ok_or(ENOTCONN)
    }

    /// Moves data and updates readiness for every socket; returns whether anything moved.
    pub fn service(&mut self, net: &mut Net, now: Instant) -> Result<bool, Violation> {
        self.touched.clear();
        let mut visit = std::mem::take(&mut self.visit);
        visit.clear();
        visit.extend_from_slice(&self.open);
        self.service_list(visit, net, now)
    }

    /// Like [`Session::service`], for the slots the client's operations named since the last
    /// call: a kick names a slot with new data, so this moves it without a sweep of them all.
    pub fn service_touched(&mut self, net: &mut Net, now: Instant) -> Result<bool, Violation> {
        let mut visit = std::mem::take(&mut self.visit);
        visit.clear();
        visit.append(&mut self.touched);
        visit.sort_unstable();
        visit.dedup();
        // Each index once and in range (the client chose these numbers); free slots are
        // skipped as in the full sweep.
        let slots = self.slots.len() as u32;
        visit.retain(|&i| i < slots);
        self.service_list(visit, net, now)
    }

    fn service_list(
        &mut self,
        visit: Vec<u32>,
        net: &mut Net,
        now: Instant,
    ) -> Result<bool, Violation> {
        let mut moved = false;
        let result = self.service_slots(&visit, net, now, &mut moved);
        self.visit = visit;
        result.map(|()| moved)
    }

    fn service_slots(
        &mut self,
        visit: &[u32],
        net: &mut Net,
        now: Instant,
        moved: &mut bool,
    ) -> Result<(), Violation> {
        for &idx in visit {
            let changed = match self.slots[idx as usize].kind {
                Kind::Free => continue,
                Kind::Stream(_) => self.service_stream(idx, net, now)?,
                Kind::Listener(id) => {
                    let r = if net.acceptable(id) { READY_IN } else { 0 };
                    self.set_readiness(idx, r, false)
                }
                Kind::Dgram(_) => self.service_dgram(idx, net)?,
                Kind::Closing(h) => {
                    self.service_closing(idx, h, net, now)?;
                    false
                }
            };
            *moved |= changed;
        }
        self.flush_completions()
    }

    /// Publishes `readiness` for a slot and queues an event if it changed or data moved.
    fn set_readiness(&mut self, idx: u32, readiness: u32, data_moved: bool) -> bool {
        let s = &mut self.slots[idx as usize];
        let changed = s.readiness != readiness;
        if !changed && !data_moved {
            return false;
        }
        s.readiness = readiness;
        let error = s.error;
        let Some(words) = self.view.slot_stack(idx) else {
            return false;
        };
        words.error.store(error, Release);
        words.readiness.store(readiness, Release);
        self.published = true;
        if words.event_queued.swap(1, SeqCst) == 0 {
            let entries = self.view.geometry().ev_entries;
            let head = self.view.ev_head().load(Acquire);
            // The client cleared event_queued without popping: its queue state is its own
            // problem, but the stack never writes past the free space.
            if self.ev_tail.wrapping_sub(head) < entries {
                self.view.write_event(self.ev_tail, idx);
                self.ev_tail = self.ev_tail.wrapping_add(1);
                self.view.ev_tail().store(self.ev_tail, Release);
            }
        }
        true
    }

    /// Validated transmit-ring bytes waiting for the stack.
    fn tx_pending(&self, idx: u32) -> Result<u32, Violation> {
        let s = &self.slots[idx as usize];
        let tail = self
            .view
            .slot_client(idx)
            .map_or(s.tx_head, |c| c.tx_tail.load(Acquire));
        let limit = self.tx_limit(idx);
        if tail.wrapping_sub(s.tx_head) > limit {
            return Err(Violation(format!(
                "slot {idx}: tx_tail {tail} is more than its tx_limit {limit} ahead of tx_head {}",
                s.tx_head
            )));
        }
        // Bytes not handed to smoltcp yet.
        let given = if s.tx_direct { s.tx_given } else { s.tx_head };
        let pending = tail.wrapping_sub(given);
        if pending > self.view.geometry().tx_buf_size {
            return Err(Violation(format!(
                "slot {idx}: tx_tail {tail} went back behind what the stack took, {given}"
            )));
        }
        Ok(match s.close_at {
            Some(end) => end.wrapping_sub(given).min(pending),
            None => pending,
        })
    }

    /// Validated free space in the receive ring.
    fn rx_space(&self, idx: u32) -> Result<u32, Violation> {
        let s = &self.slots[idx as usize];
        let head = self
            .view
            .slot_client(idx)
            .map_or(s.rx_tail, |c| c.rx_head.load(SeqCst));
        let used = s.rx_tail.wrapping_sub(head);
        let size = self.view.geometry().rx_buf_size;
        if used > size {
            return Err(Violation(format!(
                "slot {idx}: rx_head {head} is ahead of rx_tail {}",
                s.rx_tail
            )));
        }
        Ok(size - used)
    }

    /// Free space the stack may fill in the receive ring: all of it with a grant, up to
    /// [`LEAN_FILL`] bytes in use when lean.
    fn rx_room(&self, idx: u32) -> Result<u32, Violation> {
        let space = self.rx_space(idx)?;
        if !matches!(self.slots[idx as usize].rx_share, RxShare::Lean { .. }) {
            return Ok(space);
        }
        let size = self.view.geometry().rx_buf_size;
        let used = size - space;
        Ok(space.min(LEAN_FILL.min(size).saturating_sub(used)))
    }

    /// A TCP slot granted its whole ring but not direct yet (the ring still holds what it
    /// received lean) leaves new data in smoltcp until the client has drained the ring, then
    /// receives directly; true while it waits. The client's read kicks the stack (`rx_wanted`),
    /// and the ring is looked at once more after asking, as in [`Session::pump_rx`].
    fn awaits_direct(&mut self, idx: u32, sock: &Conn<'_>) -> Result<bool, Violation> {
        let s = &self.slots[idx as usize];
        if s.rx_share != RxShare::Whole || s.rx_direct || !matches!(sock, Conn::Tcp(_)) {
            return Ok(false);
        }
        let size = self.view.geometry().rx_buf_size;
        if self.rx_space(idx)? == size {
            return Ok(false);
        }
        self.want_rx_kick(idx);
        Ok(true)
    }

    /// The stack wants to hear of the client's next read of slot `idx`: noted here, published
    /// before the stack sleeps.
    fn want_rx_kick(&mut self, idx: u32) {
        let head = self.view.slot_client(idx).map(|c| c.rx_head.load(SeqCst));
        self.slots[idx as usize].rx_kick_at = head;
    }

    /// The TCP sockets that received in bulk since the last call, the latest last.
    pub fn take_rx_hot(&mut self) -> std::vec::Drain<'_, SocketHandle> {
        self.rx_hot.drain(..)
    }

    /// Notes that slot `idx` just received `bytes`: a stream's worth makes it the hot one.
    fn note_received(&mut self, idx: u32, bytes: u32) {
        if bytes >= RX_HOT_MIN {
            if let Some(h) = self.tcp_handle(idx) {
                self.rx_hot.push(h);
            }
        }
    }

    /// Before the stack sleeps: stores `rx_wanted` for every slot whose client's next read
    /// the stack wants to hear of, then loads `rx_head` once more. Returns whether a client
    /// read since the stack last looked: it may have missed the request, so the stack makes
    /// one more pass (ring.md, "Wake-ups"). While the stack is awake nobody kicks for reads.
    pub fn rearm_rx_kicks(&mut self) -> bool {
        let mut read_since = false;
        for &idx in &self.open {
            let Some(at) = self.slots[idx as usize].rx_kick_at.take() else {
                continue;
            };
            if let (Some(w), Some(c)) = (self.view.slot_stack(idx), self.view.slot_client(idx)) {
                w.rx_wanted.store(1, SeqCst);
                read_since |= c.rx_head.load(SeqCst) != at;
            }
        }
        read_since
    }

    /// Called while a slot has data to deliver. Every slot starts lean, so a connection that
    /// only ever receives requests and small answers never holds a whole ring; one that
    /// outgrows it (data waiting while its lean share is full: a stream) takes a grant for
    /// its whole receive ring if the stack-wide limit allows, and stays lean otherwise.
    fn decide_rx(&mut self, idx: u32, grants: &mut RingGrants) {
        let size = self.view.geometry().rx_buf_size;
        let s = &mut self.slots[idx as usize];
        match s.rx_share {
            RxShare::Undecided => {
                s.rx_share = RxShare::Lean {
                    freed_to: s.rx_tail & !(LEAN_CHUNK.min(size) - 1),
                    outgrown: false,
                }
            }
            RxShare::Lean { outgrown: true, .. } if grants.take(u64::from(size)) => {
                s.rx_share = RxShare::Whole;
            }
            RxShare::Lean { .. } | RxShare::Whole => {}
        }
    }

    /// A lean slot gives back the pages of every whole chunk of its receive ring the client has
    /// read past, so it holds about [`LEAN_FILL`] bytes of memory however much goes through.
    fn recycle_lean_pages(&mut self, idx: u32) {
        let g = self.view.geometry();
        let chunk = LEAN_CHUNK.min(g.rx_buf_size);
        let s = &self.slots[idx as usize];
        let RxShare::Lean {
            mut freed_to,
            outgrown,
        } = s.rx_share
        else {
            return;
        };
        let Some(head) = self.view.slot_client(idx).map(|c| c.rx_head.load(Acquire)) else {
            return;
        };
        // A head outside what was published is the client's violation, reported by rx_space.
        if head.wrapping_sub(freed_to) > s.rx_tail.wrapping_sub(freed_to) {
            return;
        }
        while head.wrapping_sub(freed_to) >= chunk {
            let off = g.rx_buf_off(idx) + u64::from(freed_to % g.rx_buf_size);
            self.give_back_pages(off, u64::from(chunk));
            freed_to = freed_to.wrapping_add(chunk);
        }
        self.slots[idx as usize].rx_share = RxShare::Lean { freed_to, outgrown };
    }

    /// A stream whose client filled its lean share of the transmit ring (a writer waiting for
    /// room: a bulk sender) takes a grant for the whole ring if the stack-wide limit allows,
    /// and stays lean otherwise, as [`Session::decide_rx`] does for receive. Says whether the
    /// share grew (the client should hear of the room).
    fn decide_tx(&mut self, idx: u32, grants: &mut RingGrants) -> bool {
        let size = self.view.geometry().tx_buf_size;
        let limit = self.tx_limit(idx);
        let s = &self.slots[idx as usize];
        if s.tx_share == TxShare::Whole || limit >= size {
            return false;
        }
        let tail = self
            .view
            .slot_client(idx)
            .map_or(s.tx_head, |c| c.tx_tail.load(Acquire));
        // More than the share is the client's violation, reported by tx_pending.
        if tail.wrapping_sub(s.tx_head) != limit || !grants.take(u64::from(size)) {
            return false;
        }
        self.slots[idx as usize].tx_share = TxShare::Whole;
        if let Some(w) = self.view.slot_stack(idx) {
            w.tx_limit.store(size, Release);
        }
        true
    }

    /// A lean slot gives back the pages of every whole chunk of its transmit ring the stack
    /// has consumed (sent, or with direct transmit acknowledged), so it holds about
    /// [`LEAN_FILL`] bytes of memory however much goes through. The client writes only in
    /// `[tx_head, tx_head + limit)`, so a consumed position `p` is written again (as
    /// `p + size`) only once `tx_head` passes `p + size - limit`: only this thread moves
    /// `tx_head`, and it frees nothing closer than that.
    fn recycle_lean_tx_pages(&mut self, idx: u32) {
        let g = self.view.geometry();
        let (size, limit) = (g.tx_buf_size, self.tx_limit(idx));
        let chunk = LEAN_CHUNK.min(size);
        let s = &self.slots[idx as usize];
        let TxShare::Lean { mut freed_to } = s.tx_share else {
            return;
        };
        let head = s.tx_head;
        // Never free what the client may write next: start no further back than that.
        let reach = size - limit;
        if head.wrapping_sub(freed_to) > reach {
            freed_to = head.wrapping_sub(reach).wrapping_add(chunk - 1) & !(chunk - 1);
        }
        while head.wrapping_sub(freed_to) >= chunk && head.wrapping_sub(freed_to) <= reach {
            let off = g.tx_buf_off(idx) + u64::from(freed_to % size);
            self.give_back_pages(off, u64::from(chunk));
            freed_to = freed_to.wrapping_add(chunk);
        }
        self.slots[idx as usize].tx_share = TxShare::Lean { freed_to };
    }

    /// Copies the transmit ring into smoltcp's send buffer; returns bytes moved.
    fn pump_tx(&mut self, idx: u32, sock: &mut Conn<'_>) -> Result<u32, Violation> {
        let mut pending = self.tx_pending(idx)?;
        let Some(ring) = self.view.tx_ring(idx) else {
            return Ok(0);
        };
        let s = &mut self.slots[idx as usize];
        let mut moved = 0;
        // smoltcp hands out its ring in at most two contiguous pieces.
        for _ in 0..2 {
            if pending == 0 || !sock.can_send() {
                break;
            }
            let head = s.tx_head;
            let n = sock.send_with(|buf| {
                let n = buf.len().min(pending as usize);
                ring.read(head, &mut buf[..n]);
                n
            }) as u32;
            if n == 0 {
                break;
            }
            s.tx_head = s.tx_head.wrapping_add(n);
            pending -= n;
            moved += n;
        }
        if moved > 0 {
            if let Some(w) = self.view.slot_stack(idx) {
                w.tx_head.store(s.tx_head, Release);
            }
        }
        Ok(moved)
    }

    /// Copies received data into the receive ring; returns bytes moved.
    fn pump_rx(&mut self, idx: u32, sock: &mut Conn<'_>) -> Result<u32, Violation> {
        self.recycle_lean_pages(idx);
        let Some(ring) = self.view.rx_ring(idx) else {
            return Ok(0);
        };
        let mut moved = 0;
        let mut space = self.rx_room(idx)?;
        let s = &mut self.slots[idx as usize];
        while space > 0 && sock.can_recv() {
            let tail = s.rx_tail;
            let n = sock.recv_with(|buf| {
                let n = buf.len().min(space as usize);
                ring.write(tail, &buf[..n]);
                n
            }) as u32;
            if n == 0 {
                break;
            }
            s.rx_tail = s.rx_tail.wrapping_add(n);
            space -= n;
            moved += n;
        }
        if moved > 0 {
            if let Some(w) = self.view.slot_stack(idx) {
                w.rx_tail.store(s.rx_tail, Release);
            }
        }
        if sock.can_recv() {
            // The ring is full: the client's next read should reopen the window at once.
            s.rx_share.mark_outgrown();
            self.want_rx_kick(idx);
        }
        self.note_received(idx, moved);
        Ok(moved)
    }

    /// The TCP socket a stream slot holds, if it holds one (not a pipe).
    fn tcp_handle(&self, idx: u32) -> Option<SocketHandle> {
        match &self.slots[idx as usize].kind {
            Kind::Stream(Stream {
                handle: Some(ConnId::Tcp(h)),
                ..
            }) => Some(*h),
            _ => None,
        }
    }

    /// Lets smoltcp receive straight into the slot's receive ring instead of into a buffer of
    /// its own that the stack copies from: one copy less for every byte received (the copy was
    /// a third of the stack thread's time in a bulk receive). Done only while the ring is empty,
    /// since smoltcp takes all of it, and when smoltcp's own buffer is no larger than the ring
    /// (the window it advertised must still fit).
    fn enter_direct_rx(
        &mut self,
        idx: u32,
        h: SocketHandle,
        sock: &mut tcp::Socket<'static>,
        regions: &mut HashMap<SocketHandle, Arc<Mapping>>,
    ) -> Result<bool, Violation> {
        let size = self.view.geometry().rx_buf_size;
        if sock.recv_capacity() > size as usize || self.rx_space(idx)? != size {
            return Ok(false);
        }
        let Some(ring) = self.view.rx_ring(idx) else {
            return Ok(false);
        };
        let s = &mut self.slots[idx as usize];
        // smoltcp's first byte goes where the client reads next.
        // SAFETY: `regions` holds the session's mapping for as long as the socket holds the
        // buffer: the entry goes only when the socket is back on buffers of its own or dropped
        // (`Net::remove`). Nothing else in this process refers to these bytes while the slot is
        // direct. The client may change them at any time; smoltcp only writes received payload
        // into them and never reads it back (the stack releases bytes without looking at
        // them), so what the client does there changes only its own data, as with any copy
        // into the ring.
        let buf = unsafe { ring_socket_buffer(&ring, s.rx_tail) };
        let Ok(own) = sock.replace_rx_buffer(buf) else {
            return Ok(false);
        };
        s.rx_own = Some(own);
        s.rx_direct = true;
        s.rx_taken = s.rx_tail;
        regions.insert(h, self.mapping.clone());
        Ok(true)
    }

    /// Puts the socket back on a buffer of its own (the slot is closing, shut for reading, or
    /// no longer connected), keeping only what the client has not been shown yet.
    fn leave_direct_rx(
        &mut self,
        idx: u32,
        h: SocketHandle,
        sock: &mut tcp::Socket<'static>,
        regions: &mut HashMap<SocketHandle, Arc<Mapping>>,
    ) {
        let s = &mut self.slots[idx as usize];
        if !s.rx_direct {
            return;
        }
        s.rx_direct = false;
        // The buffer it had, if it is as large as the ring (the window it advertised must fit).
        let own = own_buffer(s.rx_own.take(), sock.recv_capacity());
        if sock.replace_rx_buffer(own).is_err() {
            // Cannot happen (empty, same size). The connection cannot go on without the ring;
            // `regions` keeps the region mapped until the socket is dropped.
            tracing::error!(slot = idx, "could not move a socket off its receive ring");
            sock.abort();
            return;
        }
        // Published bytes are the client's already, in the ring.
        Conn::Tcp(sock).discard(s.rx_tail.wrapping_sub(s.rx_taken) as usize);
        if !s.tx_direct {
            regions.remove(&h);
        }
    }

    /// Lets smoltcp send straight from the slot's transmit ring instead of from a buffer of its
    /// own that the stack copies into: one copy less for every byte sent. The ring is then
    /// smoltcp's send buffer: what the client publishes is handed over in place, and ring space
    /// comes back to the client as the peer acknowledges it. Done only while smoltcp holds
    /// nothing to send, so that its queue starts where the client's unsent bytes do.
    fn enter_direct_tx(
        &mut self,
        idx: u32,
        h: SocketHandle,
        sock: &mut tcp::Socket<'static>,
        regions: &mut HashMap<SocketHandle, Arc<Mapping>>,
    ) -> bool {
        if sock.send_queue() > 0 {
            return false;
        }
        let Some(ring) = self.view.tx_ring(idx) else {
            return false;
        };
        let s = &mut self.slots[idx as usize];
        // smoltcp's first byte is the client's first unsent one.
        // SAFETY: `regions` holds the session's mapping for as long as the socket holds the
        // buffer (the entry goes when neither ring is smoltcp's, or with the socket in
        // `Net::remove`). smoltcp only reads these bytes, to send and resend them; the client
        // writes only past what it published, and whatever it changes in place changes only
        // its own stream, as if it had written other bytes.
        let buf = unsafe { ring_socket_buffer(&ring, s.tx_head) };
        let Ok(own) = sock.replace_tx_buffer(buf) else {
            return false;
        };
        s.tx_own = Some(own);
        s.tx_direct = true;
        s.tx_given = s.tx_head;
        regions.insert(h, self.mapping.clone());
        true
    }

    /// Puts the socket back on a buffer of its own, with what it still holds (unacknowledged
    /// or unsent) copied there: the slot is closing and its ring may be handed out again.
    fn leave_direct_tx(
        &mut self,
        idx: u32,
        h: SocketHandle,
        sock: &mut tcp::Socket<'static>,
        regions: &mut HashMap<SocketHandle, Arc<Mapping>>,
    ) {
        let s = &mut self.slots[idx as usize];
        if !s.tx_direct {
            return;
        }
        s.tx_direct = false;
        let own = own_buffer(s.tx_own.take(), sock.send_queue());
        if sock.replace_tx_buffer(own).is_err() {
            // Cannot happen (empty, large enough). The connection cannot go on without the
            // ring; `regions` keeps the region mapped until the socket is dropped.
            tracing::error!(slot = idx, "could not move a socket off its transmit ring");
            sock.abort();
            return;
        }
        // What smoltcp holds is in its own buffer now: the ring is the client's up to there.
        s.tx_head = s.tx_given;
        if let Some(w) = self.view.slot_stack(idx) {
            w.tx_head.store(s.tx_head, Release);
        }
        if !s.rx_direct {
            regions.remove(&h);
        }
    }

    /// The transmit path of a direct slot: hands smoltcp what the client published since, and
    /// gives the client back the ring space of what the peer acknowledged. Returns the space
    /// given back when the client should hear of it: when a third of the ring came free (as
    /// Linux wakes a writer) or all of it; an event per acknowledgement would wake a waiting
    /// writer for every few segments.
    fn pump_tx_direct(
        &mut self,
        idx: u32,
        sock: &mut tcp::Socket<'static>,
    ) -> Result<u32, Violation> {
        let pending = self.tx_pending(idx)?;
        // What the client may fill: its "free space" is measured against this.
        let size = self.tx_limit(idx);
        let s = &mut self.slots[idx as usize];
        // The end of the client's bytes in the ring (validated: at most `size` past tx_head).
        let tail = s.tx_given.wrapping_add(pending);
        if pending > 0 && sock.may_send() {
            // Always fits: smoltcp's buffer is the ring, and the client never has more in it.
            let n = sock.send_enqueued(pending as usize).unwrap_or(0) as u32;
            s.tx_given = s.tx_given.wrapping_add(n);
        }
        let head = s.tx_given.wrapping_sub(sock.send_queue() as u32);
        if head == s.tx_head {
            return Ok(0);
        }
        // The ring's free space before and after.
        let free_before = size.saturating_sub(tail.wrapping_sub(s.tx_head));
        let free_after = size.saturating_sub(tail.wrapping_sub(head));
        let released = head.wrapping_sub(s.tx_head);
        s.tx_head = head;
        if let Some(w) = self.view.slot_stack(idx) {
            w.tx_head.store(head, Release);
        }
        let third = size / 3;
        let tell = (free_before < third && free_after >= third) || free_after == size;
        Ok(if tell { released } else { 0 })
    }

    /// Both rings back to smoltcp's own buffers, before the slot is closed or reset.
    fn leave_direct_of(&mut self, idx: u32, net: &mut Net) {
        if let Some(h) = self.tcp_handle(idx) {
            let sock = net.sockets.get_mut::<tcp::Socket>(h);
            self.leave_direct_tx(idx, h, sock, &mut net.rx_regions);
        }
        self.leave_direct_rx_of(idx, net);
    }

    fn leave_direct_rx_of(&mut self, idx: u32, net: &mut Net) {
        if let Some(h) = self
            .tcp_handle(idx)
            .filter(|_| self.slots[idx as usize].rx_direct)
        {
            let sock = net.sockets.get_mut::<tcp::Socket>(h);
            self.leave_direct_rx(idx, h, sock, &mut net.rx_regions);
        }
    }

    /// The receive path of a direct slot: hands smoltcp back what the client has read (which
    /// opens the window) and publishes what smoltcp received since; returns bytes published.
    fn pump_rx_direct(&mut self, idx: u32, sock: &mut Conn<'_>) -> Result<u32, Violation> {
        let size = self.view.geometry().rx_buf_size;
        let mut published = 0;
        let s = &mut self.slots[idx as usize];
        let head = self
            .view
            .slot_client(idx)
            .map_or(s.rx_tail, |c| c.rx_head.load(SeqCst));
        let read = head.wrapping_sub(s.rx_taken);
        if read > s.rx_tail.wrapping_sub(s.rx_taken) {
            return Err(Violation(format!(
                "slot {idx}: rx_head {head} is outside the published {}..{}",
                s.rx_taken, s.rx_tail
            )));
        }
        // Fewer only when a reset emptied smoltcp's queue.
        sock.discard(read as usize);
        s.rx_taken = head;
        let queued = sock.recv_queue().min(size as usize) as u32;
        let unread = s.rx_tail.wrapping_sub(head);
        if queued > unread {
            published += queued - unread;
            s.rx_tail = head.wrapping_add(queued);
            if let Some(w) = self.view.slot_stack(idx) {
                w.rx_tail.store(s.rx_tail, Release);
            }
        }
        // Past half full, the window is what holds the sender back: the client's next read
        // should reopen it at once, not on the next frame.
        if s.rx_tail.wrapping_sub(head) >= size / 2 {
            self.want_rx_kick(idx);
        }
        self.note_received(idx, published);
        Ok(published)
    }

    fn service_stream(&mut self, idx: u32, net: &mut Net, now: Instant) -> Result<bool, Violation> {
        let Kind::Stream(st) = &self.slots[idx as usize].kind else {
            return Ok(false);
        };
        let Some(h) = st.handle else {
            return Ok(false);
        };
        let mut sock = Conn::get(&mut net.sockets, &mut net.pipes, h);
        self.service_stream_socket(
            idx,
            &mut sock,
            &mut net.stats,
            &mut net.rx_regions,
            (&mut net.rx_grants, &mut net.tx_grants),
            now,
        )
    }

    fn service_stream_socket(
        &mut self,
        idx: u32,
        sock: &mut Conn<'_>,
        stats: &mut NetStats,
        regions: &mut HashMap<SocketHandle, Arc<Mapping>>,
        (rx_grants, tx_grants): (&mut RingGrants, &mut RingGrants),
        now: Instant,
    ) -> Result<bool, Violation> {
        let state = sock.state();
        let mut moved = false;
        {
            let s = &mut self.slots[idx as usize];
            let Kind::Stream(st) = &mut s.kind else {
                return Ok(false);
            };
            if matches!(
                state,
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
            ) {
                st.peer_fin = true;
            }
            match st.phase {
                Phase::Connecting => match state {
                    tcp::State::SynSent | tcp::State::SynReceived => {}
                    tcp::State::Closed => {
                        st.phase = Phase::Failed;
                        s.error = if now - st.started >= CONNECT_TIMEOUT {
                            ETIMEDOUT
                        } else {
                            ECONNREFUSED
                        } as u32;
                    }
                    _ => {
                        st.phase = Phase::Connected;
                        sock.set_timeout(None);
                        stats.tcp_connected += 1;
                    }
                },
                Phase::Connected
                    if state == tcp::State::Closed && st.last != tcp::State::Closed =>
                {
                    let orderly = st.fin_sent && st.peer_fin;
                    if !orderly {
                        s.error = ECONNRESET as u32;
                    }
                }
                _ => {}
            }
            st.last = state;
        }
        let connected = matches!(
            &self.slots[idx as usize].kind,
            Kind::Stream(st) if st.phase == Phase::Connected
        );
        let shut_rd = matches!(&self.slots[idx as usize].kind, Kind::Stream(st) if st.shut_rd);
        if connected && !shut_rd && sock.recv_queue() > 0 {
            self.decide_rx(idx, rx_grants);
        }
        if let (Conn::Tcp(tcp), Some(h)) = (&mut *sock, self.tcp_handle(idx)) {
            let direct = self.slots[idx as usize].rx_direct;
            if direct && (shut_rd || !connected) {
                self.leave_direct_rx(idx, h, tcp, regions);
            } else if !direct
                && connected
                && !shut_rd
                && self.slots[idx as usize].rx_share == RxShare::Whole
                && self.enter_direct_rx(idx, h, tcp, regions)?
            {
                stats.tcp_rx_direct += 1;
            }
            let shut_wr = matches!(&self.slots[idx as usize].kind, Kind::Stream(st) if st.shut_wr);
            if !self.slots[idx as usize].tx_direct
                && connected
                && !shut_wr
                && self.enter_direct_tx(idx, h, tcp, regions)
            {
                stats.tcp_tx_direct += 1;
            }
        }
        if connected {
            // A grant is news for a writer waiting for room.
            moved |= self.decide_tx(idx, tx_grants);
            moved |= match &mut *sock {
                Conn::Tcp(tcp) if self.slots[idx as usize].tx_direct => {
                    self.pump_tx_direct(idx, tcp)? > 0
                }
                _ => self.pump_tx(idx, sock)? > 0,
            };
            self.recycle_lean_tx_pages(idx);
            if shut_rd {
                // Linux discards data that arrives after SHUT_RD.
                sock.discard(usize::MAX);
            } else if self.slots[idx as usize].rx_direct {
                moved |= self.pump_rx_direct(idx, sock)? > 0;
            } else if !self.awaits_direct(idx, sock)? {
                moved |= self.pump_rx(idx, sock)? > 0;
            }
        }
        let pending = self.tx_pending(idx)?;
        let s = &mut self.slots[idx as usize];
        let Kind::Stream(st) = &mut s.kind else {
            return Ok(moved);
        };
        if st.phase == Phase::Connected
            && st.shut_wr
            && !st.fin_sent
            && pending == 0
            && sock.may_send()
        {
            sock.close();
            st.fin_sent = true;
        }
        // Bytes a reset or closed connection can no longer send are dropped.
        if pending > 0 && !sock.may_send() && st.phase != Phase::Connecting {
            if s.tx_direct {
                // smoltcp may still hold sent bytes for the peer to acknowledge (after FIN).
                s.tx_given = s.tx_given.wrapping_add(pending);
                s.tx_head = s.tx_given.wrapping_sub(sock.send_queue() as u32);
            } else {
                s.tx_head = s.tx_head.wrapping_add(pending);
            }
            if let Some(w) = self.view.slot_stack(idx) {
                w.tx_head.store(s.tx_head, Release);
            }
            if s.error == 0 && !st.fin_sent {
                s.error = EPIPE as u32;
            }
            moved = true;
        }
        let mut r = 0;
        let rx_head = self
            .view
            .slot_client(idx)
            .map_or(s.rx_tail, |c| c.rx_head.load(Acquire));
        if rx_head != s.rx_tail {
            r |= READY_IN;
        }
        match st.phase {
            Phase::Connected => {
                r |= READY_CONNECTED;
                let all_published = match s.rx_direct {
                    // smoltcp's queue holds the published bytes the client has not read yet.
                    true => sock.recv_queue() <= s.rx_tail.wrapping_sub(s.rx_taken) as usize,
                    false => !sock.can_recv(),
                };
                let eof = (st.peer_fin || state == tcp::State::Closed) && all_published;
                if eof || st.shut_rd {
                    r |= READY_RDHUP | READY_IN;
                }
                if sock.may_send() && !st.shut_wr {
                    r |= READY_OUT;
                }
                if state == tcp::State::Closed || (eof && st.fin_sent) {
                    r |= READY_HUP;
                }
            }
            Phase::Failed => r |= READY_CONNECTED | READY_HUP | READY_IN | READY_OUT,
            Phase::Connecting | Phase::Idle => {}
        }
        if s.error != 0 {
            r |= READY_ERR;
        }
        Ok(self.set_readiness(idx, r, moved))
    }

    /// Sends what a closed stream still had in its ring, then FIN, then frees the slot.
    fn service_closing(
        &mut self,
        idx: u32,
        h: ConnId,
        net: &mut Net,
        now: Instant,
    ) -> Result<(), Violation> {
        let mut sock = Conn::get(&mut net.sockets, &mut net.pipes, h);
        self.pump_tx(idx, &mut sock)?;
        let pending = self.tx_pending(idx)?;
        let may_send = sock.may_send();
        if may_send && pending == 0 {
            sock.close();
        }
        if pending == 0 || !may_send {
            let port = self.slots[idx as usize].port.take();
            net.linger_conn(h, port, now);
            self.free_slot(idx, &mut net.rx_grants, &mut net.tx_grants);
        }
        Ok(())
    }

    fn service_dgram(&mut self, idx: u32, net: &mut Net) -> Result<bool, Violation> {
        let Kind::Dgram(d) = &self.slots[idx as usize].kind else {
            return Ok(false);
        };
        let peer = d.peer;
        let mut handle = d.handle;
        let mut moved = false;
        let pending = self.tx_pending(idx)?;
        if pending > 0 && handle.is_none() {
            // First send on an unbound socket binds it to an ephemeral port, as Linux does.
            let s = &mut self.slots[idx as usize];
            let port = net.udp_ports.bind(0, false).ok();
            let h = port.and_then(|p| {
                let h = net.new_udp().ok()?;
                if net.sockets.get_mut::<udp::Socket>(h).bind(p).is_err() {
                    net.remove(h);
                    return None;
                }
                Some(h)
            });
            match (port, h) {
                (Some(p), Some(h)) => {
                    s.port = Some(p);
                    s.bound_ip = Some(Ipv4Addr::UNSPECIFIED);
                    if let Kind::Dgram(d) = &mut s.kind {
                        d.handle = Some(h);
                    }
                    handle = Some(h);
                }
                (p, _) => {
                    if let Some(p) = p {
                        net.udp_ports.release(p);
                    }
                    s.error = ENOBUFS as u32;
                }
            }
        }
        if let Some(h) = handle {
            moved |= self.dgram_tx(idx, h, peer, net)?;
            moved |= self.dgram_rx(idx, h, net)?;
        }
        let s = &self.slots[idx as usize];
        let rx_head = self
            .view
            .slot_client(idx)
            .map_or(s.rx_tail, |c| c.rx_head.load(Acquire));
        let mut r = READY_OUT;
        if rx_head != s.rx_tail {
            r |= READY_IN;
        }
        if s.error != 0 {
            r |= READY_ERR;
        }
        Ok(self.set_readiness(idx, r, moved))
    }

    fn dgram_tx(
        &mut self,
        idx: u32,
        h: SocketHandle,
        peer: Option<IpEndpoint>,
        net: &mut Net,
    ) -> Result<bool, Violation> {
        let Some(ring) = self.view.tx_ring(idx) else {
            return Ok(false);
        };
        let mut pending = self.tx_pending(idx)?;
        let mut moved = false;
        let hdr_len = std::mem::size_of::<DatagramHeader>() as u32;
        while pending > 0 {
            let s = &mut self.slots[idx as usize];
            if pending < hdr_len {
                return Err(Violation(format!("slot {idx}: partial datagram header")));
            }
            let mut raw = [0u8; 24];
            ring.read(s.tx_head, &mut raw);
            let len = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let family = u16::from_ne_bytes([raw[4], raw[5]]);
            let port = u16::from_ne_bytes([raw[6], raw[7]]);
            if len > DATAGRAM_MAX || datagram_record_size(len) > pending {
                return Err(Violation(format!(
                    "slot {idx}: datagram record of {len} bytes"
                )));
            }
            let record = datagram_record_size(len);
            let dst = if family == AF_INET && port != 0 {
                Some(endpoint(
                    Ipv4Addr::new(raw[8], raw[9], raw[10], raw[11]),
                    port,
                ))
            } else {
                peer
            };
            let sock = net.sockets.get_mut::<udp::Socket>(h);
            match dst {
                Some(dst) => {
                    let data_at = s.tx_head.wrapping_add(hdr_len);
                    match sock.send(len as usize, dst) {
                        Ok(buf) => ring.read(data_at, buf),
                        Err(udp::SendError::BufferFull) => break,
                        Err(udp::SendError::Unaddressable) => s.error = ENETUNREACH as u32,
                    }
                }
                None => s.error = EDESTADDRREQ as u32,
            }
            s.tx_head = s.tx_head.wrapping_add(record);
            pending -= record;
            moved = true;
        }
        if moved {
            let head = self.slots[idx as usize].tx_head;
            if let Some(w) = self.view.slot_stack(idx) {
                w.tx_head.store(head, Release);
            }
            self.recycle_lean_tx_pages(idx);
        }
        Ok(moved)
    }

    fn dgram_rx(&mut self, idx: u32, h: SocketHandle, net: &mut Net) -> Result<bool, Violation> {
        if net.sockets.get::<udp::Socket>(h).can_recv() {
            self.decide_rx(idx, &mut net.rx_grants);
        }
        self.recycle_lean_pages(idx);
        let Some(ring) = self.view.rx_ring(idx) else {
            return Ok(false);
        };
        let mut moved = false;
        loop {
            let space = self.rx_room(idx)?;
            let sock = net.sockets.get_mut::<udp::Socket>(h);
            let Ok((payload, meta)) = sock.peek() else {
                break;
            };
            let record = datagram_record_size(payload.len() as u32);
            if record > space {
                self.slots[idx as usize].rx_share.mark_outgrown();
                break;
            }
            let s = &mut self.slots[idx as usize];
            let mut hdr = [0u8; 24];
            hdr[..4].copy_from_slice(&(payload.len() as u32).to_ne_bytes());
            hdr[4..6].copy_from_slice(&AF_INET.to_ne_bytes());
            hdr[6..8].copy_from_slice(&meta.endpoint.port.to_ne_bytes());
            if let IpAddress::Ipv4(ip) = meta.endpoint.addr {
                hdr[8..12].copy_from_slice(&ip.octets());
            }
            ring.write(s.rx_tail, &hdr);
            ring.write(s.rx_tail.wrapping_add(24), payload);
            s.rx_tail = s.rx_tail.wrapping_add(record);
            let _ = sock.recv();
            moved = true;
        }
        if moved {
            let tail = self.slots[idx as usize].rx_tail;
            if let Some(w) = self.view.slot_stack(idx) {
                w.rx_tail.store(tail, Release);
            }
        }
        Ok(moved)
    }

    /// Wakes client threads sleeping on the ring if anything was published since the last call.
    pub fn wake_client(&mut self) {
        if !std::mem::take(&mut self.published) {
            return;
        }
        self.view.client_wake_seq().fetch_add(1, SeqCst);
        if self.view.client_waiters().load(SeqCst) > 0 {
            futex_wake_all(self.view.client_wake_seq());
        }
        if self.view.client_wake_armed().swap(0, SeqCst) != 0 {
            eventfd_signal(self.client_wake.as_raw_fd());
        }
    }

    /// Ends the session: every socket is reset or dropped, ports are released, and the client
    /// is told (it may still be alive if the stack closed it for a violation).
    pub fn teardown(&mut self, net: &mut Net, now: Instant) {
        self.release_slots(net, now, false);
        self.set_stack_flag(STACK_CLOSED, true);
        self.published = true;
        self.wake_client();
    }

    /// A client that went away: its open sockets are reset or dropped, as in
    /// [`Session::teardown`], but the streams it closed keep sending what their rings hold (as
    /// a kernel finishes a closed socket after its process exits); the session ends when they
    /// are done.
    pub fn detach(&mut self, net: &mut Net, now: Instant) {
        self.release_slots(net, now, true);
    }

    /// Resets open streams, closes every other socket, and (unless `keep_closing`) resets the
    /// streams the client closed.
    fn release_slots(&mut self, net: &mut Net, now: Instant, keep_closing: bool) {
        for idx in 0..self.slots.len() as u32 {
            if keep_closing && matches!(self.slots[idx as usize].kind, Kind::Closing(_)) {
                continue;
            }
            self.leave_direct_of(idx, net);
            if let Kind::Stream(st) = &self.slots[idx as usize].kind {
                if let Some(h) = st.handle {
                    let port = self.slots[idx as usize].port.take();
                    net.abort_conn(h, port, now);
                    self.slots[idx as usize].kind = Kind::Free;
                    continue;
                }
            }
            if let Kind::Closing(h) = self.slots[idx as usize].kind {
                let port = self.slots[idx as usize].port.take();
                net.abort_conn(h, port, now);
                self.slots[idx as usize].kind = Kind::Free;
                continue;
            }
            self.close_slot(idx, net, now);
        }
    }
}
