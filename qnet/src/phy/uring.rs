//! The TAP device driven by io_uring, and the frame queues smoltcp sees as its `Device`.
//!
//! Frames are received by one multishot read on the TAP into a ring of provided buffers (so
//! they complete in arrival order: posting many plain reads reordered frames, and TCP took the
//! reordering for loss); writes are queued by smoltcp's transmit tokens and submitted in one
//! batch per service pass, so a burst of frames costs one `io_uring_enter`. The same ring waits on the stack's doorbell eventfd, on client
//! hang-ups and on the stack's timer, so the service loop sleeps in exactly one place.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::tap::VNET_HDR_LEN;
use super::vnet::{prepare_tx, rx_checksum_ok, VnetHdr};

/// Receive buffers in the provided-buffer ring (a power of two).
const RX_BUFFERS: u16 = 128;
/// io_uring buffer group of the receive buffers.
const RX_GROUP: u16 = 0;
/// Frames queued for or in flight to the TAP before smoltcp is told to hold off.
const TX_LIMIT: usize = 256;
/// Largest frame the TAP hands us with offloads on (a 64 KiB GSO super-packet), plus headers.
const FRAME_BUF: usize = VNET_HDR_LEN + 14 + 65535 + 256;
/// Largest IPv4 packet smoltcp may emit for segmentation offload (Ethernet header included).
const GSO_MAX: usize = 14 + 65535;

const TAG_SHIFT: u32 = 56;
const TAG_RX: u64 = 1;
const TAG_TX: u64 = 2;
const TAG_DOORBELL: u64 = 3;
const TAG_HANGUP: u64 = 4;

fn tag(kind: u64, id: u64) -> u64 {
    kind << TAG_SHIFT | id
}

/// Counters for the device (read by tests, benchmarks and the metrics endpoint later).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_bad_checksum: u64,
    pub rx_errors: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub tx_gso_frames: u64,
}

/// Transmit side of the frame queues.
#[derive(Debug, Default)]
struct TxQueue {
    ready: Vec<Vec<u8>>,
    free: Vec<Vec<u8>>,
    /// Frames in `ready` plus frames submitted and not yet completed.
    outstanding: usize,
}

/// Anonymous memory mapped for the kernel to write into, unmapped on drop.
struct RawRegion {
    ptr: *mut u8,
    len: usize,
}

impl RawRegion {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; nothing else aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RawRegion {
            ptr: ptr as *mut u8,
            len,
        })
    }
}

// SAFETY: the region is plain memory owned by one FrameQueues; moving it between threads
// (the stack is built on one thread and run on another) is fine.
unsafe impl Send for RawRegion {}

impl Drop for RawRegion {
    fn drop(&mut self) {
        // SAFETY: exactly what mmap returned; the ring that used it is gone (UringTap drops
        // the io_uring before the queues).
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// Receive buffers handed to the kernel through an io_uring provided-buffer ring. Buffer `bid`
/// is `FRAME_BUF` bytes at `bid * FRAME_BUF`; while the kernel owns a buffer the stack never
/// reads it, and while the stack holds one (a received frame) it is not in the ring.
struct RxPool {
    buffers: RawRegion,
    /// `io_uring_buf` entries (16 bytes each); the ring tail is the u16 at offset 14.
    ring: RawRegion,
    tail: u16,
}

impl RxPool {
    fn new() -> io::Result<Self> {
        let mut pool = RxPool {
            buffers: RawRegion::new(RX_BUFFERS as usize * FRAME_BUF)?,
            ring: RawRegion::new((RX_BUFFERS as usize * 16).max(4096))?,
            tail: 0,
        };
        for bid in 0..RX_BUFFERS {
            pool.provide(bid);
        }
        pool.publish();
        Ok(pool)
    }

    /// Queues buffer `bid` for the kernel (visible after [`RxPool::publish`]).
    fn provide(&mut self, bid: u16) {
        let slot = (self.tail & (RX_BUFFERS - 1)) as usize;
        let addr = self.buffers.ptr as u64 + bid as u64 * FRAME_BUF as u64;
        // SAFETY: slot < RX_BUFFERS, so the 16-byte entry is inside the ring mapping. The tail
        // word (offset 14 of entry 0) is not written here.
        unsafe {
            let e = self.ring.ptr.add(slot * 16);
            (e as *mut u64).write_volatile(addr);
            (e.add(8) as *mut u32).write_volatile(FRAME_BUF as u32);
            (e.add(12) as *mut u16).write_volatile(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail word of the ring, 2-byte aligned; the kernel reads it with acquire.
        let tail =
            unsafe { std::sync::atomic::AtomicU16::from_ptr(self.ring.ptr.add(14) as *mut u16) };
        tail.store(self.tail, std::sync::atomic::Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid` (bounds-checked).
    fn frame(&self, bid: u16, len: usize) -> &[u8] {
        let bid = (bid % RX_BUFFERS) as usize;
        let len = len.min(FRAME_BUF);
        // SAFETY: inside the buffers mapping; the kernel finished writing this buffer (its
        // completion was reaped) and does not own it again until it is provided back.
        unsafe { std::slice::from_raw_parts(self.buffers.ptr.add(bid * FRAME_BUF), len) }
    }
}

/// What smoltcp polls: received frames in, transmitted frames out.
pub struct FrameQueues {
    rx_pool: RxPool,
    /// Received frames in arrival order: (buffer id, length with the virtio-net header).
    rx_ready: VecDeque<(u16, usize)>,
    /// Buffers smoltcp is done with, to give back to the kernel.
    rx_spent: Vec<u16>,
    tx: TxQueue,
    mtu: usize,
}

impl FrameQueues {
    /// Empty queues for a link of `mtu` (also a device for tests that need no TAP).
    pub fn new(mtu: usize) -> io::Result<Self> {
        Ok(FrameQueues {
            rx_pool: RxPool::new()?,
            rx_ready: VecDeque::new(),
            rx_spent: Vec::new(),
            tx: TxQueue::default(),
            mtu,
        })
    }

    pub fn has_rx(&self) -> bool {
        !self.rx_ready.is_empty()
    }

    /// Frames queued for or in flight to the TAP.
    pub fn tx_outstanding(&self) -> usize {
        self.tx.outstanding
    }
}

pub struct RxToken<'a> {
    pool: &'a RxPool,
    bid: u16,
    len: usize,
    spent: &'a mut Vec<u16>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.pool.frame(self.bid, self.len)[VNET_HDR_LEN..]);
        self.spent.push(self.bid);
        r
    }
}

pub struct TxToken<'a> {
    q: &'a mut TxQueue,
    gso_size: Option<u16>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.q.free.pop().unwrap_or_default();
        buf.clear();
        buf.resize(VNET_HDR_LEN + len, 0);
        let r = f(&mut buf[VNET_HDR_LEN..]);
        let hdr = prepare_tx(&mut buf[VNET_HDR_LEN..], self.gso_size);
        hdr.write(&mut buf[..VNET_HDR_LEN]);
        self.q.ready.push(buf);
        self.q.outstanding += 1;
        r
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.gso_size = meta.segmentation_offload_size.map(|s| s.get());
    }
}

impl phy::Device for FrameQueues {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.tx.outstanding >= TX_LIMIT {
            return None;
        }
        let (bid, len) = self.rx_ready.pop_front()?;
        Some((
            RxToken {
                pool: &self.rx_pool,
                bid,
                len,
                spent: &mut self.rx_spent,
            },
            TxToken {
                q: &mut self.tx,
                gso_size: None,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        (self.tx.outstanding < TX_LIMIT).then_some(TxToken {
            q: &mut self.tx,
            gso_size: None,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        let mut csum = ChecksumCapabilities::default();
        // TCP/UDP checksums are offloaded (vnet.rs); IP and ICMP stay in smoltcp.
        csum.tcp = Checksum::None;
        csum.udp = Checksum::None;
        caps.checksum = csum;
        caps.segmentation.tcpv4 = std::num::NonZeroUsize::new(GSO_MAX);
        caps
    }
}

/// What one reap of the completion queue found.
#[derive(Debug, Default)]
pub struct Reaped {
    pub rx_frames: usize,
    pub doorbell: bool,
    /// Tokens passed to [`UringTap::watch_hangup`] whose descriptor hung up.
    pub hangups: Vec<u64>,
}

/// The TAP, its io_uring, and the frame queues.
pub struct UringTap {
    // Declared first: dropped (and the provided buffers unregistered) before the queues.
    ring: IoUring,
    tap: OwnedFd,
    /// Whether the multishot read is armed.
    rx_armed: bool,
    tx_inflight: Vec<Option<Vec<u8>>>,
    tx_free_ids: Vec<usize>,
    doorbell: OwnedFd,
    doorbell_buf: Box<u64>,
    doorbell_armed: bool,
    pub queues: FrameQueues,
    pub stats: DeviceStats,
}

impl UringTap {
    /// Wraps an open TAP (with a virtio-net header) and the stack's doorbell eventfd.
    pub fn new(tap: OwnedFd, doorbell: OwnedFd, mtu: usize) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build((TX_LIMIT + 64).next_power_of_two() as u32)?;
        let queues = FrameQueues::new(mtu)?;
        // SAFETY: the ring memory is page aligned, RX_BUFFERS entries long, and lives in
        // `queues` inside this struct, which drops the io_uring (unregistering it) first.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                queues.rx_pool.ring.ptr as u64,
                RX_BUFFERS,
                RX_GROUP,
                0,
            )?
        };
        Ok(UringTap {
            ring,
            tap,
            rx_armed: false,
            tx_inflight: Vec::new(),
            tx_free_ids: Vec::new(),
            doorbell,
            doorbell_buf: Box::new(0),
            doorbell_armed: false,
            queues,
            stats: DeviceStats::default(),
        })
    }

    /// Whether the TAP read is armed (for diagnostics).
    pub fn rx_armed(&self) -> bool {
        self.rx_armed
    }

    /// Pushes one entry, submitting first if the submission queue is full.
    fn push(&mut self, entry: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry's buffers (rx/tx buffers, doorbell_buf) are owned by self and
            // stay alive and unmoved (heap allocations) until their completion is reaped.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Posts reads for spent buffers, writes for queued frames, and the doorbell read.
    pub fn arm(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.tap.as_raw_fd());
        if !self.queues.rx_spent.is_empty() {
            for bid in std::mem::take(&mut self.queues.rx_spent) {
                self.queues.rx_pool.provide(bid);
            }
            self.queues.rx_pool.publish();
        }
        if !self.rx_armed {
            let entry = opcode::ReadMulti::new(fd, 0, RX_GROUP)
                .build()
                .user_data(tag(TAG_RX, 0));
            self.push(&entry)?;
            self.rx_armed = true;
        }
        let ready = std::mem::take(&mut self.queues.tx.ready);
        for buf in ready {
            let id = match self.tx_free_ids.pop() {
                Some(id) => id,
                None => {
                    self.tx_inflight.push(None);
                    self.tx_inflight.len() - 1
                }
            };
            let entry = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                .build()
                .user_data(tag(TAG_TX, id as u64));
            self.tx_inflight[id] = Some(buf);
            self.push(&entry)?;
        }
        if !self.doorbell_armed {
            let entry = opcode::Read::new(
                types::Fd(self.doorbell.as_raw_fd()),
                &mut *self.doorbell_buf as *mut u64 as *mut u8,
                8,
            )
            .build()
            .user_data(tag(TAG_DOORBELL, 0));
            self.push(&entry)?;
            self.doorbell_armed = true;
        }
        Ok(())
    }

    /// Asks for a completion tagged `token` when `fd` hangs up or becomes readable.
    pub fn watch_hangup(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let events = (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP) as u32;
        let entry = opcode::PollAdd::new(types::Fd(fd), events)
            .build()
            .user_data(tag(TAG_HANGUP, token));
        self.push(&entry)
    }

    /// Submits what is queued without waiting, which also runs pending completions.
    pub fn submit(&mut self) -> io::Result<()> {
        self.ring.submit()?;
        Ok(())
    }

    /// Submits and sleeps until a completion arrives or `timeout` passes.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let res = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Collects completions: received frames go to the queues, finished writes free buffers.
    pub fn reap(&mut self) -> Reaped {
        let mut out = Reaped::default();
        let done: Vec<(u64, i32, u32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (user_data, res, flags) in done {
            let id = (user_data & ((1 << TAG_SHIFT) - 1)) as usize;
            match user_data >> TAG_SHIFT {
                TAG_RX => {
                    if !io_uring::cqueue::more(flags) {
                        self.rx_armed = false; // re-armed by the next arm()
                    }
                    let Some(bid) = io_uring::cqueue::buffer_select(flags) else {
                        // No buffer: out of buffers (ENOBUFS, re-armed once some are given
                        // back) or an error.
                        if res < 0 && res != -libc::ENOBUFS {
                            self.stats.rx_errors += 1;
                            tracing::debug!(
                                "tap read failed: {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                        continue;
                    };
                    let len = res.max(0) as usize;
                    let frame = self.queues.rx_pool.frame(bid, len);
                    let hdr = VnetHdr::parse(frame).unwrap_or_default();
                    if len <= VNET_HDR_LEN || !rx_checksum_ok(&hdr, &frame[VNET_HDR_LEN..]) {
                        if len > VNET_HDR_LEN {
                            self.stats.rx_bad_checksum += 1;
                        }
                        self.queues.rx_spent.push(bid);
                        continue;
                    }
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                    self.queues.rx_ready.push_back((bid, len));
                    out.rx_frames += 1;
                }
                TAG_TX => {
                    let Some(buf) = self.tx_inflight.get_mut(id).and_then(Option::take) else {
                        continue;
                    };
                    self.tx_free_ids.push(id);
                    if res < 0 {
                        self.stats.tx_errors += 1;
                        tracing::debug!("tap write failed: {}", io::Error::from_raw_os_error(-res));
                    } else {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += (buf.len() - VNET_HDR_LEN) as u64;
                        if buf.get(1).is_some_and(|g| *g != 0) {
                            self.stats.tx_gso_frames += 1;
                        }
                    }
                    self.queues.tx.outstanding = self.queues.tx.outstanding.saturating_sub(1);
                    if self.queues.tx.free.len() < TX_LIMIT {
                        self.queues.tx.free.push(buf);
                    }
                }
                TAG_DOORBELL => {
                    self.doorbell_armed = false;
                    out.doorbell = true;
                }
                TAG_HANGUP => out.hangups.push(id as u64),
                _ => {}
            }
        }
        out
    }
}
