//! The data plane: one thread that moves frames between the local endpoints' TAPs and the
//! underlay UDP socket with io_uring, asking [`crate::forward`] where each goes.
//!
//! Every frame lives in one slot from the read that brings it to the write that sends it on:
//! a slot has headroom for the virtio-net header (TAP side) and the VXLAN header (underlay
//! side), so encapsulating, decapsulating and answering never copy the frame. When no slot is
//! free, reads wait until writes complete (back-pressure instead of loss).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use io_uring::{opcode, squeue, types, IoUring};
use qnet::phy::tap::VNET_HDR_LEN;
use qnet::phy::Tap;

use crate::forward::{self, Conntrack, Counters, DropReason, EndpointId, Tables, Verdict};
use crate::wire::{self, VXLAN_LEN};

/// Headroom in front of a frame: the VXLAN header and the virtio-net header share it.
const HEAD: usize = VXLAN_LEN + VNET_HDR_LEN;
/// Largest frame read: a jumbo frame, so an endpoint that raises its MTU past the overlay's is
/// told so (ICMP fragmentation-needed) rather than cut.
const MAX_FRAME: usize = 9216 + wire::ETH_LEN;
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
    TapWrite = 3,
    UdpRecv = 4,
    UdpSend = 5,
    Cancel = 6,
}

fn user_data(op: Op, ep: EndpointId, slot: usize) -> u64 {
    (op as u64) << 56 | u64::from(ep) << 24 | slot as u64
}

fn decode(ud: u64) -> (Option<Op>, EndpointId, usize) {
    let op = match ud >> 56 {
        1 => Some(Op::Wake),
        2 => Some(Op::TapRead),
        3 => Some(Op::TapWrite),
        4 => Some(Op::UdpRecv),
        5 => Some(Op::UdpSend),
        6 => Some(Op::Cancel),
        _ => None,
    };
    (op, (ud >> 24) as u32, (ud & 0xff_ffff) as usize)
}

/// One frame's memory and the message header that points into it while the kernel has it.
struct Slot {
    buf: Box<[u8]>,
    iov: libc::iovec,
    msg: libc::msghdr,
    addr: libc::sockaddr_in,
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
                buf: vec![0u8; HEAD + MAX_FRAME].into_boxed_slice(),
                iov: std::mem::zeroed(),
                msg: std::mem::zeroed(),
                addr: std::mem::zeroed(),
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
        self.msg.msg_control = std::ptr::null_mut();
        self.msg.msg_controllen = 0;
        self.msg.msg_flags = 0;
    }

    fn set_peer(&mut self, ip: Ipv4Addr, port: u16) {
        self.addr.sin_family = libc::AF_INET as libc::sa_family_t;
        self.addr.sin_port = port.to_be();
        self.addr.sin_addr.s_addr = u32::from(ip).to_be();
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

/// Where a frame came from, for sending a reply back.
#[derive(Clone, Copy)]
enum Origin {
    Local(EndpointId),
    Overlay { node: Ipv4Addr, vni: u32 },
}

struct Plane {
    ring: IoUring,
    /// Never grows or shrinks: the kernel holds pointers into slots while an operation runs.
    slots: Vec<Slot>,
    free: Vec<usize>,
    udp: UdpSocket,
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

/// Starts the data plane on its own thread, forwarding on `udp` (bound to the underlay
/// address and VXLAN port) and sending VXLAN to peers' `port`.
pub fn spawn(udp: UdpSocket, port: u16, counters: Arc<Counters>) -> io::Result<DataplaneHandle> {
    // SAFETY: plain eventfd(2); the result is checked and owned at once.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut plane = Plane {
        ring: IoUring::new(1024)?,
        slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        free: (0..SLOTS).rev().collect(),
        udp,
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
            let buf = &mut self.slots[slot].buf[VXLAN_LEN..];
            let sqe = opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
                .build()
                .user_data(user_data(Op::TapRead, id, slot));
            self.push(sqe)?;
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
            Some(Op::TapWrite) | Some(Op::UdpSend) => {
                if res < 0 {
                    self.counters
                        .send_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.free.push(slot);
            }
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
        self.counters
            .from_endpoints
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = res as usize;
        if n < VNET_HDR_LEN {
            return self.dispatch(
                slot,
                Verdict::Drop(DropReason::Malformed),
                0,
                Origin::Local(id),
            );
        }
        let frame = &mut self.slots[slot].buf[HEAD..VXLAN_LEN + n];
        let (verdict, len) = forward::from_local(&self.tables, &mut self.conntrack, id, frame);
        self.dispatch(slot, verdict, len, Origin::Local(id))
    }

    fn udp_recv(&mut self, slot: usize, res: i32) -> io::Result<()> {
        self.udp_reads -= 1;
        if res < 0 {
            self.free.push(slot);
            return Ok(());
        }
        self.counters
            .from_overlay
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = &mut self.slots[slot];
        let n = res as usize;
        let node = s.peer();
        let truncated = s.msg.msg_flags & libc::MSG_TRUNC != 0;
        let vni = wire::vxlan_vni(&s.buf[VNET_HDR_LEN..VNET_HDR_LEN + n.min(VXLAN_LEN)]);
        let (verdict, len, vni) = match vni {
            Some(vni) if !truncated && n >= VXLAN_LEN => {
                let frame = &mut s.buf[HEAD..VNET_HDR_LEN + n];
                let (v, len) =
                    forward::from_overlay(&self.tables, &mut self.conntrack, node, vni, frame);
                (v, len, vni)
            }
            _ => (Verdict::Drop(DropReason::Malformed), 0, 0),
        };
        self.dispatch(slot, verdict, len, Origin::Overlay { node, vni })
    }

    /// Carries out `verdict` for the frame of `len` bytes at `HEAD` in `slot`.
    fn dispatch(
        &mut self,
        slot: usize,
        verdict: Verdict,
        len: usize,
        origin: Origin,
    ) -> io::Result<()> {
        let answered = verdict == Verdict::Reply;
        let verdict = match (verdict, origin) {
            (Verdict::Reply, Origin::Local(id)) => Verdict::Deliver(id),
            (Verdict::Reply, Origin::Overlay { node, vni }) => Verdict::Encap { node, vni },
            (v, _) => v,
        };
        let verdict = match verdict {
            Verdict::Deliver(id) if self.eps.get(&id).is_none_or(|e| e.detaching) => {
                Verdict::Drop(DropReason::Detached)
            }
            v => v,
        };
        let counted = match verdict {
            Verdict::Deliver(_) | Verdict::Encap { .. } if answered => Verdict::Reply,
            v => v,
        };
        self.counters.count(counted);
        let s = &mut self.slots[slot];
        let sqe = match verdict {
            Verdict::Deliver(id) => {
                // Written at once, not through the ring: the TAP driver cannot take a write
                // without blocking semantics, so io_uring would hand every one to a worker
                // thread (measured: 30 workers and 330 Mbit/s). A TAP write never waits: the
                // frame is queued to the namespace's stack or dropped.
                let fd: RawFd = self.eps[&id].tap.fd.as_raw_fd();
                s.buf[VXLAN_LEN..HEAD].fill(0);
                let out = &s.buf[VXLAN_LEN..HEAD + len];
                // SAFETY: writing from a live buffer of the given length.
                let n = unsafe { libc::write(fd, out.as_ptr().cast(), out.len()) };
                if n < 0 {
                    self.counters
                        .send_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.free.push(slot);
                return Ok(());
            }
            Verdict::Encap { node, vni } => {
                wire::put_vxlan(&mut s.buf[VNET_HDR_LEN..HEAD], vni);
                s.set_peer(node, self.port);
                s.aim(VNET_HDR_LEN, HEAD + len);
                let msg: *const libc::msghdr = &s.msg;
                opcode::SendMsg::new(types::Fd(self.udp.as_raw_fd()), msg)
                    .build()
                    .user_data(user_data(Op::UdpSend, 0, slot))
            }
            Verdict::Reply | Verdict::Drop(_) => {
                self.free.push(slot);
                return Ok(());
            }
        };
        self.push(sqe)
    }
}
