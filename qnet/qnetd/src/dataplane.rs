//! The data plane: one thread that moves frames between the local endpoints' TAPs and the
//! underlay UDP socket, asking [`crate::forward`] where each goes. io_uring waits for the
//! reads (a read per TAP, one receive on the underlay socket); sending is synchronous
//! ([`crate::output`]), since neither kind of send waits.
//!
//! A frame lives in one slot from the read that brings it to the send: a slot has headroom
//! for the virtio-net header (TAP side) and the VXLAN header (underlay side), so decapsulating
//! and answering never copy a frame. Offloads keep frames large where the kernel allows:
//! the TAPs hand over 64 KiB TCP frames, cut into segments only on the way to another node
//! (UDP GSO), and the underlay socket hands over runs of datagrams (UDP GRO) whose TCP
//! segments are joined again for the TAP ([`crate::gso`]). With tunnel offload
//! ([`crate::tunnel`]) VXLAN goes through a TAP instead of the sockets, whole both ways. When
//! no slot is free, reads wait.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use io_uring::{opcode, squeue, types, IoUring};
use qnet::phy::tap::VNET_HDR_LEN;
use qnet::phy::vnet::{VnetHdr, GSO_NONE, GSO_TCPV4};
use qnet::phy::Tap;

use crate::forward::{self, Conntrack, Counters, DropReason, EndpointId, Tables, Verdict};
use crate::gso;
use crate::output::{Delivery, Output, SendError, TunnelWay};
use crate::tunnel::{self, Tunnel};
use crate::wire::{self, VXLAN_LEN};

/// Headroom in front of a frame: room for what a tunnel frame has in front of it (virtio-net,
/// outer and VXLAN headers); a TAP's virtio-net header, or a socket's VXLAN header, sits right
/// before the frame.
const HEAD: usize = tunnel::FRONT + VXLAN_LEN;
/// Where a TAP read lands: its virtio-net header, then the frame at `HEAD`.
const TAP_AT: usize = HEAD - VNET_HDR_LEN;
/// Largest read: a 64 KiB TCP frame from a TAP, or a run of datagrams joined by UDP GRO.
const MAX_READ: usize = 65_536 + 512;
const SLOTS: usize = 512;
/// Receives kept posted on the underlay socket. One: every posted receive arms its own poll,
/// and a datagram woke them all (with 32 posted, request/response took 402 µs instead of 226);
/// the 16 MiB socket buffer holds what arrives meanwhile.
const UDP_READS: usize = 1;

/// A change for the data plane, from the control side.
pub enum Update {
    Tables(Arc<Tables>),
    Attach(EndpointId, Tap),
    /// Detach and delete the endpoint's device.
    Detach(EndpointId),
}

/// The control side's way to the data plane thread.
pub struct DataplaneHandle {
    tx: Sender<Update>,
    wake: Arc<OwnedFd>,
}

impl DataplaneHandle {
    pub fn send(&self, update: Update) {
        if self.tx.send(update).is_ok() {
            let one = 1u64;
            // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Wake = 1,
    TapRead = 2,
    UdpRecv = 4,
    Cancel = 6,
    TunnelRead = 7,
}

fn user_data(op: Op, ep: EndpointId, slot: usize) -> u64 {
    (op as u64) << 56 | u64::from(ep) << 24 | slot as u64
}

fn decode(ud: u64) -> (Option<Op>, EndpointId, usize) {
    let op = match ud >> 56 {
        1 => Some(Op::Wake),
        2 => Some(Op::TapRead),
        4 => Some(Op::UdpRecv),
        6 => Some(Op::Cancel),
        7 => Some(Op::TunnelRead),
        _ => None,
    };
    (op, (ud >> 24) as u32, (ud & 0xff_ffff) as usize)
}

/// One read's memory and the message header that points into it while the kernel has it.
struct Slot {
    buf: Box<[u8]>,
    iov: libc::iovec,
    msg: libc::msghdr,
    addr: libc::sockaddr_in,
    /// Ancillary data of a receive: UDP GRO's segment size.
    control: [u64; 4],
}

// SAFETY: the raw pointers in iov/msg point into the slot itself (its own heap buffer and
// fields); the slot moves between threads only as a whole, inside the data plane.
unsafe impl Send for Slot {}

impl Slot {
    fn new() -> Slot {
        // SAFETY: msghdr, iovec and sockaddr_in are plain C structs for which all zeroes is a
        // valid value.
        unsafe {
            Slot {
                buf: vec![0u8; HEAD + MAX_READ].into_boxed_slice(),
                iov: std::mem::zeroed(),
                msg: std::mem::zeroed(),
                addr: std::mem::zeroed(),
                control: [0; 4],
            }
        }
    }

    /// Points the message header at `buf[from..to]` and the slot's address.
    fn aim(&mut self, from: usize, to: usize) {
        self.iov.iov_base = self.buf[from..].as_mut_ptr().cast();
        self.iov.iov_len = to - from;
        self.msg.msg_name = (&mut self.addr as *mut libc::sockaddr_in).cast();
        self.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        self.msg.msg_iov = &mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_control = self.control.as_mut_ptr().cast();
        self.msg.msg_controllen = std::mem::size_of_val(&self.control);
        self.msg.msg_flags = 0;
    }

    /// The segment size UDP GRO reported for the datagrams received, if it joined any.
    fn gro_size(&self) -> Option<usize> {
        // SAFETY: the kernel filled msg_control (within `control`) for this receive; the
        // CMSG macros walk it within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&self.msg);
            while !c.is_null() {
                if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                    return usize::try_from(size).ok().filter(|s| *s > 0);
                }
                c = libc::CMSG_NXTHDR(&self.msg, c);
            }
        }
        None
    }

    fn peer(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.addr.sin_addr.s_addr))
    }
}

struct Attached {
    tap: Tap,
    /// The slot of the read in flight.
    reading: Option<usize>,
    detaching: bool,
    /// Reads failed with an error other than a transient one (the device is gone).
    broken: bool,
}

const SOL_UDP: libc::c_int = 17;
const UDP_GRO: libc::c_int = 104;

struct Plane {
    ring: IoUring,
    output: Output,
    deliveries: Vec<Delivery>,
    /// Never grows or shrinks: the kernel holds pointers into slots while an operation runs.
    slots: Vec<Slot>,
    free: Vec<usize>,
    udp: UdpSocket,
    /// VXLAN's way in and out when tunnel offload is on (the sockets then carry only what
    /// the redirect leaves to the kernel: fragments).
    tunnel: Option<Tunnel>,
    tunnel_reading: bool,
    /// Sockets VXLAN leaves from, one per source port; a flow always uses the same.
    senders: Vec<UdpSocket>,
    port: u16,
    tables: Arc<Tables>,
    conntrack: Conntrack,
    eps: HashMap<EndpointId, Attached>,
    to_read: VecDeque<EndpointId>,
    udp_reads: usize,
    updates: Receiver<Update>,
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    counters: Arc<Counters>,
}

/// Starts the data plane on its own thread, receiving VXLAN on `udp` (bound to the underlay
/// address and VXLAN port) and sending it from `senders` to peers' `port`.
pub fn spawn(
    udp: UdpSocket,
    tunnel: Option<Tunnel>,
    senders: Vec<UdpSocket>,
    port: u16,
    counters: Arc<Counters>,
) -> io::Result<DataplaneHandle> {
    if senders.is_empty() {
        return Err(io::Error::other("no VXLAN senders"));
    }
    // SAFETY: plain eventfd(2); the result is checked and owned at once.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let (tx, rx) = crossbeam_channel::unbounded();
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            udp.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "UDP GRO unavailable: datagrams arrive one by one");
    }
    let mut plane = Plane {
        ring: IoUring::new(1024)?,
        output: Output::default(),
        deliveries: Vec::new(),
        slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        free: (0..SLOTS).rev().collect(),
        udp,
        tunnel,
        tunnel_reading: false,
        senders,
        port,
        tables: Arc::new(Tables::default()),
        conntrack: Conntrack::default(),
        eps: HashMap::new(),
        to_read: VecDeque::new(),
        udp_reads: 0,
        updates: rx,
        wake: wake.clone(),
        wake_buf: Box::new(0),
        counters,
    };
    std::thread::Builder::new()
        .name("qnetd-dataplane".into())
        .spawn(move || {
            if let Err(e) = plane.run() {
                tracing::error!(error = %e, "the data plane stopped");
                std::process::exit(1);
            }
        })?;
    Ok(DataplaneHandle { tx, wake })
}

impl Plane {
    fn run(&mut self) -> io::Result<()> {
        self.post_wake_read()?;
        let mut done = Vec::with_capacity(256);
        loop {
            self.arm()?;
            match self.ring.submit_and_wait(1) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => r?,
            };
            done.clear();
            done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(ud, res) in &done {
                self.complete(ud, res)?;
            }
        }
    }

    fn push(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        // SAFETY: every entry points into a slot (or the wake buffer) that stays allocated and
        // untouched until its completion is reaped: a slot is off the free list meanwhile.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }

    fn post_wake_read(&mut self) -> io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(user_data(Op::Wake, 0, 0));
        self.push(sqe)
    }

    /// Posts the reads that wait for a slot: every attached TAP's and the underlay's.
    fn arm(&mut self) -> io::Result<()> {
        while let Some(&id) = self.to_read.front() {
            let Some(slot) = self.free.pop() else {
                return Ok(());
            };
            self.to_read.pop_front();
            let Some(ep) = self.eps.get_mut(&id) else {
                self.free.push(slot);
                continue;
            };
            if ep.reading.is_some() || ep.detaching || ep.broken {
                self.free.push(slot);
                continue;
            }
            ep.reading = Some(slot);
            let fd = ep.tap.fd.as_raw_fd();
            let buf = &mut self.slots[slot].buf[TAP_AT..];
            let sqe = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
                .build()
                .user_data(user_data(Op::TapRead, id, slot));
            self.push(sqe)?;
        }
        if let Some(t) = self.tunnel.as_ref().filter(|_| !self.tunnel_reading) {
            let Some(slot) = self.free.pop() else {
                return Ok(());
            };
            let fd = t.tap.fd.as_raw_fd();
            let buf = &mut self.slots[slot].buf;
            let sqe = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
                .build()
                .user_data(user_data(Op::TunnelRead, 0, slot));
            self.push(sqe)?;
            self.tunnel_reading = true;
        }
        while self.udp_reads < UDP_READS {
            let Some(slot) = self.free.pop() else {
                return Ok(());
            };
            let s = &mut self.slots[slot];
            let end = s.buf.len();
            s.aim(VNET_HDR_LEN, end);
            let msg: *mut libc::msghdr = &mut s.msg;
            let sqe = opcode::RecvMsg::new(types::Fd(self.udp.as_raw_fd()), msg)
                .build()
                .user_data(user_data(Op::UdpRecv, 0, slot));
            self.push(sqe)?;
            self.udp_reads += 1;
        }
        Ok(())
    }

    fn complete(&mut self, ud: u64, res: i32) -> io::Result<()> {
        let (op, id, slot) = decode(ud);
        match op {
            Some(Op::Wake) => {
                self.take_updates();
                self.post_wake_read()?;
            }
            Some(Op::TapRead) => self.tap_read(id, slot, res)?,
            Some(Op::UdpRecv) => self.udp_recv(slot, res)?,
            Some(Op::TunnelRead) => self.tunnel_read(slot, res)?,
            Some(Op::Cancel) | None => {}
        }
        Ok(())
    }

    fn take_updates(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            match update {
                Update::Tables(t) => self.tables = t,
                Update::Attach(id, tap) => {
                    self.eps.insert(
                        id,
                        Attached {
                            tap,
                            reading: None,
                            detaching: false,
                            broken: false,
                        },
                    );
                    self.to_read.push_back(id);
                }
                Update::Detach(id) => {
                    let Some(ep) = self.eps.get_mut(&id) else {
                        continue;
                    };
                    ep.detaching = true;
                    if let Some(slot) = ep.reading {
                        // The read completes (cancelled) and finishes the detach.
                        let sqe = opcode::AsyncCancel::new(user_data(Op::TapRead, id, slot))
                            .build()
                            .user_data(user_data(Op::Cancel, id, 0));
                        // A full ring here is only delay: the cancel is retried on submit.
                        // SAFETY: a cancel entry points at no memory.
                        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                            let _ = self.ring.submit();
                            // SAFETY: as above.
                            let _ = unsafe { self.ring.submission().push(&sqe) };
                        }
                    } else {
                        self.finish_detach(id);
                    }
                }
            }
        }
    }

    fn finish_detach(&mut self, id: EndpointId) {
        if let Some(ep) = self.eps.remove(&id) {
            if let Err(e) = ep.tap.set_persist(false) {
                tracing::warn!(error = %e, "un-persisting a detached endpoint's device");
            }
            tracing::debug!(id, "endpoint detached");
        }
    }

    fn tap_read(&mut self, id: EndpointId, slot: usize, res: i32) -> io::Result<()> {
        let Some(ep) = self.eps.get_mut(&id) else {
            self.free.push(slot);
            return Ok(());
        };
        ep.reading = None;
        if ep.detaching {
            self.free.push(slot);
            self.finish_detach(id);
            return Ok(());
        }
        if res < 0 {
            self.free.push(slot);
            let err = -res;
            if err == libc::EAGAIN || err == libc::EINTR || err == libc::ECANCELED {
                self.to_read.push_back(id);
            } else {
                tracing::warn!(id, error = %io::Error::from_raw_os_error(err), "endpoint device failed");
                ep.broken = true;
            }
            return Ok(());
        }
        self.to_read.push_back(id);
        self.count(&self.counters.from_endpoints, 1);
        self.forward_from_endpoint(id, slot, res as usize);
        self.free.push(slot);
        Ok(())
    }

    fn count(&self, c: &std::sync::atomic::AtomicU64, n: u64) {
        c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn drop_frame(&self, reason: DropReason) {
        self.counters.count_drop(reason);
    }

    /// Forwards the frame endpoint `id` sent, `n` bytes with its virtio-net header at
    /// `TAP_AT` in `slot`.
    fn forward_from_endpoint(&mut self, id: EndpointId, slot: usize, n: usize) {
        let buf = &mut self.slots[slot].buf;
        let Some(hdr) = VnetHdr::parse(&buf[TAP_AT..HEAD]).filter(|_| n >= VNET_HDR_LEN) else {
            return self.drop_frame(DropReason::Malformed);
        };
        let frame = &mut buf[HEAD..TAP_AT + n];
        let mss = match hdr.gso_type {
            GSO_NONE => 0,
            GSO_TCPV4 if hdr.gso_size > 0 => hdr.gso_size,
            _ => return self.drop_frame(DropReason::Unsupported),
        };
        // A small frame's partial checksum is finished here, once, whatever its way; a large
        // one's segments get theirs when it is cut (or the receiving TAP's kernel finishes it).
        if mss == 0 && !gso::finish_checksum(frame, &hdr) {
            return self.drop_frame(DropReason::Malformed);
        }
        let (verdict, len) = forward::from_local(&self.tables, &mut self.conntrack, id, frame, mss);
        let udp = sender_for(&self.senders, &buf[HEAD..HEAD + len]);
        match verdict {
            Verdict::Deliver(to) => {
                let Some(fd) = tap_fd(&self.eps, to) else {
                    return self.drop_frame(DropReason::Detached);
                };
                if mss == 0 {
                    buf[TAP_AT..HEAD].fill(0);
                }
                // A large frame goes on whole, its virtio-net header with it.
                let sent = self.output.to_tap(fd, &[&buf[TAP_AT..HEAD + len]]);
                self.sent(sent.is_ok(), verdict);
            }
            Verdict::Encap { node, vni } if self.tunnel.is_some() => {
                // The checksum of a small frame was finished above. A TSO frame of one segment
                // goes as a plain frame with its checksum left partial (see put_front).
                let one_segment = gso::tcp_frame(&buf[HEAD..HEAD + len])
                    .is_some_and(|t| t.payload_len <= usize::from(mss));
                let inner = match mss {
                    0 => VnetHdr::default(),
                    _ if one_segment => VnetHdr {
                        gso_type: GSO_NONE,
                        gso_size: 0,
                        ..hdr
                    },
                    _ => hdr,
                };
                self.tunnel_send(slot, node, vni, len, &inner);
            }
            Verdict::Encap { node, vni } if mss > 0 => {
                let frame = &buf[HEAD..HEAD + len];
                match self
                    .output
                    .segments_to_node(udp, node, self.port, frame, mss, vni)
                {
                    Ok(_) => {
                        self.count(&self.counters.cut, 1);
                        self.sent(true, verdict)
                    }
                    Err(SendError::Uncuttable) => self.drop_frame(DropReason::Unsupported),
                    Err(SendError::Io(_)) => self.sent(false, verdict),
                }
            }
            Verdict::Encap { node, vni } => {
                wire::put_vxlan(&mut buf[HEAD - VXLAN_LEN..HEAD], vni);
                let sent =
                    self.output
                        .to_node(udp, node, self.port, &buf[HEAD - VXLAN_LEN..HEAD + len]);
                self.sent(sent.is_ok(), verdict);
            }
            Verdict::Reply => {
                let Some(fd) = tap_fd(&self.eps, id) else {
                    return self.drop_frame(DropReason::Detached);
                };
                buf[TAP_AT..HEAD].fill(0);
                let sent = self.output.to_tap(fd, &[&buf[TAP_AT..HEAD + len]]);
                self.sent(sent.is_ok(), verdict);
            }
            Verdict::Drop(reason) => self.drop_frame(reason),
        }
    }

    /// Sends the frame at `HEAD..HEAD + len` in `slot`, whose virtio-net header is `inner`, in
    /// VXLAN `vni` to `node` through the tunnel device: whole, or cut into segments when it
    /// cannot go whole.
    fn tunnel_send(&mut self, slot: usize, node: Ipv4Addr, vni: u32, len: usize, inner: &VnetHdr) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        let buf = &mut self.slots[slot].buf;
        let sport = flow_port(&buf[HEAD..HEAD + len]);
        wire::put_vxlan(&mut buf[HEAD - VXLAN_LEN..HEAD], vni);
        let fd = t.tap.fd.as_raw_fd();
        let verdict = Verdict::Encap { node, vni };
        if t.encap.put_front(
            &mut buf[..tunnel::FRONT],
            node,
            sport,
            VXLAN_LEN + len,
            inner,
        ) {
            let sent = self.output.to_tap(fd, &[&buf[..HEAD + len]]).is_ok();
            if sent {
                self.count(&self.counters.tunnel_out, 1);
            }
            return self.sent(sent, verdict);
        }
        let frame = &buf[HEAD..HEAD + len];
        let way = TunnelWay {
            fd,
            encap: &mut t.encap,
            node,
            sport,
        };
        match self
            .output
            .segments_to_tunnel(way, frame, inner.gso_size, vni)
        {
            Ok(n) => {
                self.count(&self.counters.cut, 1);
                self.count(&self.counters.tunnel_out, n as u64);
                self.sent(true, verdict)
            }
            Err(SendError::Uncuttable) => self.drop_frame(DropReason::Unsupported),
            Err(SendError::Io(_)) => self.sent(false, verdict),
        }
    }

    /// Forwards what the tunnel device gave (`res` bytes in `slot`): one VXLAN packet, whole.
    fn tunnel_read(&mut self, slot: usize, res: i32) -> io::Result<()> {
        self.tunnel_reading = false;
        if res < 0 {
            self.free.push(slot);
            let err = -res;
            if err == libc::EAGAIN || err == libc::EINTR {
                return Ok(());
            }
            // The device is gone: VXLAN redirected to it is lost, so stop and be restarted.
            return Err(io::Error::other(format!(
                "reading the tunnel device: {}",
                io::Error::from_raw_os_error(err)
            )));
        }
        self.forward_from_tunnel(slot, res as usize);
        self.free.push(slot);
        Ok(())
    }

    fn forward_from_tunnel(&mut self, slot: usize, n: usize) {
        let Some(t) = self.tunnel.as_mut() else {
            return;
        };
        self.counters
            .from_overlay
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counters
            .tunnel_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let buf = &mut self.slots[slot].buf;
        let arrival = match t.encap.parse(&buf[..n]) {
            Ok(a) => a,
            Err(reason) => return self.counters.count_drop(reason),
        };
        // The inner frame starts at HEAD, as a TAP read's does.
        debug_assert_eq!(arrival.datagram.start, tunnel::FRONT);
        let Some(vni) = wire::vxlan_vni(&buf[arrival.datagram.clone()]) else {
            return self.counters.count_drop(DropReason::Malformed);
        };
        let mss = if arrival.inner.gso_type != GSO_NONE {
            arrival.inner.gso_size
        } else {
            0
        };
        let frame = &mut buf[HEAD..arrival.datagram.end];
        let (verdict, len) = forward::from_overlay(
            &self.tables,
            &mut self.conntrack,
            arrival.node,
            vni,
            frame,
            mss,
        );
        match verdict {
            Verdict::Deliver(id) => {
                let Some(fd) = tap_fd(&self.eps, id) else {
                    return self.counters.count_drop(DropReason::Detached);
                };
                arrival.inner.write(&mut buf[TAP_AT..HEAD]);
                let sent = self.output.to_tap(fd, &[&buf[TAP_AT..HEAD + len]]);
                self.sent(sent.is_ok(), verdict);
            }
            Verdict::Reply => {
                // Back to the node, in the VNI it came in (the VXLAN header is still there).
                let sport = flow_port(&buf[HEAD..HEAD + len]);
                let fd = t.tap.fd.as_raw_fd();
                let plain = VnetHdr::default();
                let front = &mut buf[..tunnel::FRONT];
                let sent = t
                    .encap
                    .put_front(front, arrival.node, sport, VXLAN_LEN + len, &plain)
                    && self.output.to_tap(fd, &[&buf[..HEAD + len]]).is_ok();
                self.sent(sent, verdict);
            }
            Verdict::Encap { .. } => self.counters.count_drop(DropReason::NoRoute),
            Verdict::Drop(reason) => self.counters.count_drop(reason),
        }
    }

    fn sent(&self, ok: bool, verdict: Verdict) {
        if ok {
            self.counters.count(verdict);
        } else {
            self.count(&self.counters.send_errors, 1);
        }
    }

    fn udp_recv(&mut self, slot: usize, res: i32) -> io::Result<()> {
        self.udp_reads -= 1;
        if res >= 0 {
            self.forward_from_overlay(slot, res as usize);
        }
        self.free.push(slot);
        Ok(())
    }

    /// Forwards the `n` bytes received from the underlay into `slot` at `VNET_HDR_LEN`: one
    /// VXLAN datagram, or a run of them UDP GRO joined (each the reported size, the last
    /// maybe shorter).
    fn forward_from_overlay(&mut self, slot: usize, n: usize) {
        let s = &mut self.slots[slot];
        let node = s.peer();
        let truncated = s.msg.msg_flags & libc::MSG_TRUNC != 0;
        let size = s.gro_size().unwrap_or(n).max(1);
        self.deliveries.clear();
        let end = VNET_HDR_LEN + n;
        let mut at = VNET_HDR_LEN;
        while at < end {
            let next = (at + size).min(end);
            self.counters
                .from_overlay
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let datagram = &mut s.buf[at..next];
            let vni =
                wire::vxlan_vni(datagram).filter(|_| !truncated && datagram.len() >= VXLAN_LEN);
            let (verdict, len) = match vni {
                Some(vni) => forward::from_overlay(
                    &self.tables,
                    &mut self.conntrack,
                    node,
                    vni,
                    &mut datagram[VXLAN_LEN..],
                    0,
                ),
                None => (Verdict::Drop(DropReason::Malformed), 0),
            };
            match verdict {
                Verdict::Deliver(id) => match self.eps.get(&id).filter(|e| !e.detaching) {
                    Some(e) => {
                        self.deliveries.push(Delivery {
                            endpoint: id,
                            fd: e.tap.fd.as_raw_fd(),
                            frame: at + VXLAN_LEN..at + VXLAN_LEN + len,
                        });
                        self.counters.count(verdict);
                    }
                    None => self.counters.count_drop(DropReason::Detached),
                },
                Verdict::Reply => {
                    let udp = sender_for(&self.senders, &datagram[VXLAN_LEN..VXLAN_LEN + len]);
                    let sent =
                        self.output
                            .to_node(udp, node, self.port, &datagram[..VXLAN_LEN + len]);
                    if sent.is_ok() {
                        self.counters.count(verdict);
                    } else {
                        self.counters
                            .send_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Verdict::Encap { .. } => self.counters.count_drop(DropReason::NoRoute),
                Verdict::Drop(reason) => self.counters.count_drop(reason),
            }
            at = next;
        }
        let (failed, joined) = self.output.deliver_joined(&s.buf, &self.deliveries);
        self.count(&self.counters.send_errors, failed);
        self.count(&self.counters.joined, joined);
    }
}

/// The TAP of endpoint `id`, unless it is gone or going.
fn tap_fd(eps: &HashMap<EndpointId, Attached>, id: EndpointId) -> Option<RawFd> {
    eps.get(&id)
        .filter(|e| !e.detaching)
        .map(|e| e.tap.fd.as_raw_fd())
}

/// The sender a frame's flow leaves from, so one flow keeps one VXLAN source port.
fn sender_for(senders: &[UdpSocket], frame: &[u8]) -> RawFd {
    senders[(flow_hash(frame) % senders.len() as u64) as usize].as_raw_fd()
}

/// The VXLAN source port of a frame's flow through the tunnel device: in the dynamic range
/// (49152-65535), as RFC 7348 section 5 suggests.
fn flow_port(frame: &[u8]) -> u16 {
    49_152 + (flow_hash(frame) % 16_384) as u16
}

/// A hash of a frame's flow: its inner IPv4 addresses and, for TCP and UDP, ports (else its
/// Ethernet addresses).
fn flow_hash(frame: &[u8]) -> u64 {
    let key: &[u8] = match frame.get(12..14) {
        Some([0x08, 0x00]) if frame.len() >= wire::ETH_LEN + 24 => {
            let ip = &frame[wire::ETH_LEN..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let ports = matches!(ip[9], 6 | 17) && ip.len() >= ihl + 4 && ihl >= 20;
            if ports {
                // Addresses (12..20) and, after the header, the two ports.
                return fnv_more(fnv(&ip[12..20]), &ip[ihl..ihl + 4]);
            }
            &ip[12..20]
        }
        _ => frame.get(..12).unwrap_or(frame),
    };
    fnv(key)
}

fn fnv(data: &[u8]) -> u64 {
    fnv_more(0xcbf2_9ce4_8422_2325, data)
}

fn fnv_more(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}
