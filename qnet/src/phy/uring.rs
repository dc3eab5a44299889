//! The TAP device driven by io_uring, and the frame queues smoltcp sees as its `Device`.
//!
//! Frames the stack sends to itself (its own address, 127.0.0.0/8) never reach the TAP: the
//! transmit token hands them straight back to the receive queue, which is the stack's loopback
//! device. Loopback-sourced frames are never sent to or accepted from the link (Linux's martian
//! rule), so nothing on the pod network can reach a service bound to 127.0.0.1.
//!
//! Frames are read from the TAP by the stack thread itself, one `readv` each when smoltcp can
//! take one (rx.rs): a bulk TCP stream's payload is read straight to where its socket stores
//! it, a place known only right before the read. (A multishot read into provided buffers did
//! it before; its buffers are chosen ahead of the frames, so every payload was copied again.)
//! Writes are queued by smoltcp's transmit tokens and submitted in one batch per service pass,
//! so a burst of frames costs one `io_uring_enter`. The ring also waits on the TAP becoming
//! readable, the stack's doorbell eventfd, client hang-ups and the stack's timer, so the
//! service loop sleeps in exactly one place.
//!
//! A TCP payload that lies in a client's ring region (a stream sending straight from its
//! transmit ring) is not copied into the frame: smoltcp leaves it out (its `detach` patch) and
//! the write gathers header and payload (`writev`), holding the region until it completes. A
//! payload anywhere else is copied in as before.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};
use qnet_client::sys::Mapping;
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::rx::{Endpoint, Frame, Landing, TapReader};
use super::tap::VNET_HDR_LEN;
use super::vnet::{prepare_tx, rx_checksum_ok, VnetHdr};

/// Frames queued for or in flight to the TAP before smoltcp is told to hold off.
const TX_LIMIT: usize = 256;
/// Frames dropped unseen (bad checksum, martian) before `receive` gives the pass back.
const RX_DROPS_PER_CALL: usize = 64;
/// Largest frame (Ethernet header included) smoltcp may emit for segmentation offload, unless
/// the link asks for less ([`FrameQueues::set_gso_max`]): the kernel segments in software any
/// GSO skb of 64 KiB or more (a veth's `gso_max_size`), and a 64 KiB frame segmented into 45
/// packets costs the receiving kernel 45 passes instead of one.
pub const GSO_MAX: usize = 65535;

const TAG_SHIFT: u32 = 56;
const TAG_RX: u64 = 1;
const TAG_TX: u64 = 2;
const TAG_DOORBELL: u64 = 3;
const TAG_HANGUP: u64 = 4;
const TAG_CANCEL: u64 = 5;

fn tag(kind: u64, id: u64) -> u64 {
    kind << TAG_SHIFT | id
}

/// Counters for the device (read by tests, benchmarks and the metrics endpoint later).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Received frames whose TCP payload was read straight into its socket's storage.
    pub rx_landed_frames: u64,
    pub rx_bad_checksum: u64,
    pub rx_errors: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
    pub tx_gso_frames: u64,
    /// Frames whose payload was written from a client's transmit ring, not copied into them.
    pub tx_gathered_frames: u64,
    /// Frames the stack sent to itself.
    pub looped_frames: u64,
    /// Frames dropped on transmit: loopback-sourced frames bound for the link, or any frame
    /// bound for the link when there is none.
    pub tx_dropped: u64,
    /// Frames from the link with a loopback source or destination, dropped.
    pub rx_martians: u64,
}

/// Frames waiting on the loopback queue before smoltcp is told to hold off.
const LOOP_LIMIT: usize = 256;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

/// The stack's own addresses, which decide what is looped back.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddrs {
    pub mac: [u8; 6],
    pub ip: std::net::Ipv4Addr,
    /// Whether 127.0.0.0/8 is served.
    pub loopback: bool,
}

/// Where a transmitted frame goes.
#[derive(Debug, PartialEq, Eq)]
enum Dest {
    Link,
    Local,
    Drop,
}

fn is_loopback(ip: [u8; 4]) -> bool {
    ip[0] == 127
}

fn ipv4_at(frame: &[u8], at: usize) -> Option<[u8; 4]> {
    frame.get(at..at + 4)?.try_into().ok()
}

impl LocalAddrs {
    fn is_local(&self, ip: [u8; 4]) -> bool {
        ip == self.ip.octets() || (self.loopback && is_loopback(ip))
    }

    fn classify(&self, frame: &[u8]) -> Dest {
        let ethertype = frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
        match ethertype {
            // ARP target protocol address.
            Some(ETHERTYPE_ARP) => match ipv4_at(frame, 14 + 24) {
                Some(target) if self.is_local(target) => Dest::Local,
                _ => Dest::Link,
            },
            Some(ETHERTYPE_IPV4) => {
                let (Some(src), Some(dst)) = (ipv4_at(frame, 14 + 12), ipv4_at(frame, 14 + 16))
                else {
                    return Dest::Drop;
                };
                if self.is_local(dst) {
                    Dest::Local
                } else if is_loopback(src) {
                    Dest::Drop
                } else {
                    Dest::Link
                }
            }
            _ => Dest::Link,
        }
    }
}

/// Whether a frame from the link claims a loopback source or destination.
fn is_martian(frame: &[u8]) -> bool {
    let ipv4 = frame.get(12..14) == Some(&ETHERTYPE_IPV4.to_be_bytes()[..]);
    ipv4 && [14 + 12, 14 + 16]
        .iter()
        .any(|at| ipv4_at(frame, *at).is_some_and(is_loopback))
}

/// Payloads at least this long are sent from where they lie when they are in a client's
/// region (smaller ones cost less to copy than a second piece of the write).
pub const DETACH_MIN: usize = 8 << 10;

/// A frame's payload sent from a client's ring region: the region is held until the write
/// that reads it completes.
#[derive(Debug)]
struct Payload {
    ptr: *const u8,
    len: usize,
    _region: Arc<Mapping>,
}

// SAFETY: the pointer is into `_region`'s mapping, which the Arc keeps alive; only the
// kernel reads it (the write), and the frame queues are used by one thread at a time.
unsafe impl Send for Payload {}

/// A frame ready for the link: its first `len` bytes of `buf` (virtio-net header first) and,
/// if detached, its payload. (`buf` keeps its length for reuse: shortening it would make the
/// next frame zero it again.)
#[derive(Debug)]
struct TxFrame {
    buf: Vec<u8>,
    len: usize,
    payload: Option<Payload>,
}

/// Transmit side of the frame queues.
#[derive(Debug)]
struct TxQueue {
    ready: Vec<TxFrame>,
    /// Client regions a detached payload may be sent from.
    regions: Vec<Arc<Mapping>>,
    free: Vec<Vec<u8>>,
    /// Frames in `ready` plus frames submitted and not yet completed.
    outstanding: usize,
    /// Frames sent to ourselves, in order, with room for the virtio-net header in front.
    looped: VecDeque<Vec<u8>>,
    local: LocalAddrs,
    /// Whether a link (TAP) exists; without one only looped frames go anywhere.
    has_link: bool,
    looped_frames: u64,
    dropped: u64,
}

/// Anonymous, page-aligned memory (a ring region, or pages the guest maps), unmapped on drop.
pub struct RawRegion {
    ptr: *mut u8,
    len: usize,
}

impl RawRegion {
    pub fn new(len: usize) -> io::Result<Self> {
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

impl RawRegion {
    /// The start of the mapping (page aligned, `len` bytes, valid until drop).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// SAFETY: the region is plain memory with one owner; moving it between threads is fine.
unsafe impl Send for RawRegion {}

impl Drop for RawRegion {
    fn drop(&mut self) {
        // SAFETY: exactly what mmap returned; its owner, and every borrow of it, is gone.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// What smoltcp polls: received frames in, transmitted frames out.
pub struct FrameQueues {
    /// The link's receive side; `None` without a TAP.
    reader: Option<TapReader>,
    /// Where the next frame's TCP payload should go, if it is the next of a bulk stream (the
    /// stack sets it before each frame; taken by the read).
    pub landing: Option<Landing>,
    rx_stats: DeviceStats,
    /// Looped frames smoltcp has read, to reuse for transmit.
    looped_spent: Vec<Vec<u8>>,
    tx: TxQueue,
    mtu: usize,
    /// Largest frame handed to the TAP for segmentation offload (Ethernet header included).
    gso_max: usize,
}

impl FrameQueues {
    /// Empty queues for a link of `mtu` (also a device for tests that need no TAP).
    pub fn new(mtu: usize, local: LocalAddrs, has_link: bool) -> io::Result<Self> {
        Ok(FrameQueues {
            reader: None,
            landing: None,
            rx_stats: DeviceStats::default(),
            looped_spent: Vec::new(),
            tx: TxQueue {
                ready: Vec::new(),
                regions: Vec::new(),
                free: Vec::new(),
                outstanding: 0,
                looped: VecDeque::new(),
                local,
                has_link,
                looped_frames: 0,
                dropped: 0,
            },
            mtu,
            gso_max: GSO_MAX,
        })
    }

    /// Lets payloads that lie in `region` (a client's ring region) be sent from there.
    pub fn add_payload_region(&mut self, region: Arc<Mapping>) {
        self.tx.regions.push(region);
    }

    /// Stops sending payloads from `region` (writes in flight keep it until they complete).
    pub fn remove_payload_region(&mut self, region: &Arc<Mapping>) {
        self.tx.regions.retain(|r| !Arc::ptr_eq(r, region));
    }

    /// Limits segmentation-offload frames to `frame` bytes (Ethernet header included; at
    /// most [`GSO_MAX`]); a limit that leaves no room above the MTU turns offload off.
    pub fn set_gso_max(&mut self, frame: usize) {
        self.gso_max = frame.min(GSO_MAX);
    }

    pub fn has_rx(&self) -> bool {
        !self.tx.looped.is_empty()
    }

    /// Frames taken from the link so far, and how many of them landed in place.
    pub fn rx_counts(&self) -> (u64, u64) {
        (self.rx_stats.rx_frames, self.rx_stats.rx_landed_frames)
    }

    /// The (source, destination) of the last TCP frame read from the link.
    pub fn last_rx_flow(&self) -> Option<(Endpoint, Endpoint)> {
        self.reader.as_ref()?.last_flow()
    }

    /// Reads the link from `fd`, a non-blocking TAP that outlives the queues.
    fn attach_link(&mut self, fd: RawFd) {
        self.reader = Some(TapReader::new(fd));
    }

    /// Whether smoltcp may queue another frame (on the link and on loopback).
    fn may_transmit(&self) -> bool {
        self.tx.outstanding < TX_LIMIT && self.tx.looped.len() < LOOP_LIMIT
    }

    /// Gives looped frames smoltcp has read back to the transmit side.
    fn recycle_looped(&mut self) {
        for buf in self.looped_spent.drain(..) {
            if self.tx.free.len() < TX_LIMIT {
                self.tx.free.push(buf);
            }
        }
    }

    /// Queues an Ethernet frame as received, ahead of the link's, as a looped frame is: how
    /// the property tests feed hostile input to the stack without a TAP.
    pub fn inject_received(&mut self, frame: &[u8]) {
        let mut buf = vec![0u8; VNET_HDR_LEN + frame.len()];
        buf[VNET_HDR_LEN..].copy_from_slice(frame);
        self.tx.looped.push_back(buf);
    }

    /// Frames queued for or in flight to the TAP.
    pub fn tx_outstanding(&self) -> usize {
        self.tx.outstanding
    }
}

pub struct RxToken<'a>(RxFrame<'a>);

enum RxFrame<'a> {
    /// A frame from the TAP, virtio-net header first.
    Link(&'a [u8]),
    /// A frame from the TAP whose TCP payload was read to where its socket stores it: the
    /// headers (virtio-net header first), and the payload's place and length.
    Landed {
        headers: &'a [u8],
        payload: (*const u8, usize),
    },
    /// A frame the stack sent to itself.
    Looped {
        buf: Vec<u8>,
        spent: &'a mut Vec<Vec<u8>>,
    },
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        match self.0 {
            RxFrame::Link(frame) => f(&frame[VNET_HDR_LEN..]),
            RxFrame::Landed {
                headers,
                payload: (ptr, len),
            } => {
                // SAFETY: the payload was read just now to the landing the stack found in the
                // socket it belongs to (its next in-order byte, free storage nothing else
                // writes); it stays there, unchanged, while smoltcp processes this frame.
                unsafe { phy::set_attached_payload(ptr, len) };
                let r = f(&headers[VNET_HDR_LEN..]);
                phy::clear_attached_payload();
                r
            }
            RxFrame::Looped { buf, spent } => {
                let r = f(&buf[VNET_HDR_LEN..]);
                spent.push(buf);
                r
            }
        }
    }
}

pub struct TxToken<'a> {
    q: &'a mut TxQueue,
    gso_size: Option<u16>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.q.free.pop().unwrap_or_default();
        // smoltcp writes every byte of the frame: a reused buffer needs no zeroing (a 64 KiB
        // memset per segment-offload frame), and keeps its length (an ACK's buffer, cut to
        // 64 bytes, was zeroed again for the next 64 KiB frame); the frame is its first
        // `need` bytes.
        let need = VNET_HDR_LEN + len;
        if buf.len() < need {
            buf.resize(need, 0);
        }
        let _ = phy::take_detached_payload(); // none left from an earlier frame
        let r = f(&mut buf[VNET_HDR_LEN..need]);
        let q = &mut *self.q;
        // A payload smoltcp left out lies in the socket's buffer, unchanged until the socket
        // set is next touched: either the write sends it from a client region, or it is
        // copied into the frame's last bytes now.
        let detached = phy::take_detached_payload().filter(|&(_, n)| n <= len);
        let keep = detached.and_then(|(ptr, n)| {
            let at = ptr as usize;
            q.regions
                .iter()
                .find(|r| {
                    let start = r.as_ptr() as usize;
                    at >= start && at + n <= start + r.len()
                })
                .map(|r| Payload {
                    ptr,
                    len: n,
                    _region: r.clone(),
                })
        });
        let dest = q.local.classify(&buf[VNET_HDR_LEN..need]);
        let keep = keep.filter(|_| matches!(dest, Dest::Link) && q.has_link);
        if let (Some((ptr, n)), None) = (detached, &keep) {
            // SAFETY: smoltcp recorded this slice of the socket's buffer while building the
            // frame just now (phy/detach.rs); nothing has touched the socket since.
            let payload = unsafe { std::slice::from_raw_parts(ptr, n) };
            buf[need - n..need].copy_from_slice(payload);
        }
        match dest {
            Dest::Local => {
                // Addressed to our own MAC, as a loopback device delivers it; smoltcp does not
                // verify TCP/UDP checksums, and a segmentation-offload frame arrives whole.
                buf[VNET_HDR_LEN..VNET_HDR_LEN + 6].copy_from_slice(&q.local.mac);
                buf.truncate(need); // the receive side takes the buffer's length
                q.looped.push_back(buf);
                q.looped_frames += 1;
            }
            Dest::Link if q.has_link => {
                // The headers say the whole length; only they are read here.
                let hdr = prepare_tx(&mut buf[VNET_HDR_LEN..need], self.gso_size);
                hdr.write(&mut buf[..VNET_HDR_LEN]);
                let len = need - keep.as_ref().map_or(0, |p| p.len);
                q.ready.push(TxFrame {
                    buf,
                    len,
                    payload: keep,
                });
                q.outstanding += 1;
            }
            Dest::Link | Dest::Drop => {
                q.dropped += 1;
                q.free.push(buf);
            }
        }
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
        self.recycle_looped();
        // Looped frames first: they are answers the stack is waiting on itself. Taking one
        // frees the loopback room its reply may need, so only the link's limit applies; a
        // full loopback queue that refused its own reader would never drain.
        let rx = if !self.tx.looped.is_empty() {
            if self.tx.outstanding >= TX_LIMIT {
                return None;
            }
            let buf = self.tx.looped.pop_front()?;
            RxFrame::Looped {
                buf,
                spent: &mut self.looped_spent,
            }
        } else {
            if !self.may_transmit() {
                return None;
            }
            let reader = self.reader.as_mut()?;
            let landing = self.landing.take();
            let stats = &mut self.rx_stats;
            let mut frame = None;
            for _ in 0..RX_DROPS_PER_CALL {
                let read = match reader.read(landing.as_ref()) {
                    Ok(Some(read)) => read,
                    Ok(None) => break,
                    Err(e) => {
                        stats.rx_errors += 1;
                        tracing::debug!("tap read failed: {e}");
                        break;
                    }
                };
                // The headers (a landed frame's checksum the reader found vouched for), and
                // the payload's length beyond them.
                let (headers, beyond) = match read {
                    Frame::Landed { hdr_len, payload } => (&reader.headers()[..hdr_len], payload),
                    Frame::Whole(len) => {
                        let buf = &reader.frame()[..len];
                        let hdr = VnetHdr::parse(buf).unwrap_or_default();
                        if len <= VNET_HDR_LEN || !rx_checksum_ok(&hdr, &buf[VNET_HDR_LEN..]) {
                            stats.rx_bad_checksum += u64::from(len > VNET_HDR_LEN);
                            continue;
                        }
                        (buf, 0)
                    }
                };
                if is_martian(&headers[VNET_HDR_LEN..]) {
                    stats.rx_martians += 1;
                    continue;
                }
                stats.rx_frames += 1;
                stats.rx_landed_frames += u64::from(matches!(read, Frame::Landed { .. }));
                stats.rx_bytes += (headers.len() - VNET_HDR_LEN + beyond) as u64;
                frame = Some(read);
                break;
            }
            match frame? {
                Frame::Whole(len) => RxFrame::Link(&reader.frame()[..len]),
                Frame::Landed { hdr_len, payload } => RxFrame::Landed {
                    headers: &reader.headers()[..hdr_len],
                    payload: (landing?.ptr, payload),
                },
            }
        };
        Some((
            RxToken(rx),
            TxToken {
                q: &mut self.tx,
                gso_size: None,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.recycle_looped();
        self.may_transmit().then_some(TxToken {
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
        caps.segmentation.tcpv4 = std::num::NonZeroUsize::new(self.gso_max)
            .filter(|max| max.get() > caps.max_transmission_unit);
        caps
    }
}

/// What one reap of the completion queue found.
#[derive(Debug, Default)]
pub struct Reaped {
    /// The TAP became readable while the stack slept.
    pub rx_ready: bool,
    pub doorbell: bool,
    /// Tokens passed to [`UringTap::watch_hangup`] whose descriptor hung up.
    pub hangups: Vec<u64>,
}

/// A write the kernel may still be reading: the frame, and for a detached payload the
/// two-piece vector the write names (boxed: its address must not move).
struct InFlight {
    frame: TxFrame,
    iov: Option<Box<[libc::iovec; 2]>>,
}

// SAFETY: the vector points into the frame's own buffer and its payload's region (held by
// the frame); only the kernel reads through it, and the tap is used by one thread at a time.
unsafe impl Send for InFlight {}

/// The TAP, its io_uring, and the frame queues.
pub struct UringTap {
    // Declared first: dropped (its writes' buffers released) before the queues.
    ring: IoUring,
    /// The link; `None` for a loopback-only stack.
    tap: Option<OwnedFd>,
    /// Whether a poll for the TAP's next frame is armed (to wake the sleeping stack).
    rx_armed: bool,
    tx_inflight: Vec<Option<InFlight>>,
    tx_free_ids: Vec<usize>,
    /// Writes in flight that send a payload from a client's ring.
    gathering: usize,
    doorbell: OwnedFd,
    doorbell_buf: Box<u64>,
    doorbell_armed: bool,
    pub queues: FrameQueues,
    pub stats: DeviceStats,
}

impl Drop for UringTap {
    /// A TAP goes away with the last reference to its file, and a poll still pending on it
    /// holds one until io_uring's teardown, which runs later in a kernel worker, cancels it:
    /// a stopped stack's TAP could outlive it (a deleted endpoint's device still listed).
    /// The poll is cancelled and its completion awaited here (briefly), so the device goes
    /// when the stack does.
    fn drop(&mut self) {
        if self.tap.is_none() || !self.rx_armed {
            return;
        }
        let cancel = opcode::AsyncCancel::new(tag(TAG_RX, 0))
            .build()
            .user_data(tag(TAG_CANCEL, 0));
        if self.push(&cancel).is_err() {
            return;
        }
        let ts = types::Timespec::from(Duration::from_millis(10));
        for _ in 0..100 {
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
            if !self.rx_armed {
                break;
            }
        }
    }
}

impl UringTap {
    /// Wraps an open TAP (with a virtio-net header), or no link at all, and the stack's
    /// doorbell eventfd.
    pub fn new(
        tap: Option<OwnedFd>,
        doorbell: OwnedFd,
        mtu: usize,
        local: LocalAddrs,
    ) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build((TX_LIMIT + 64).next_power_of_two() as u32)?;
        let mut queues = FrameQueues::new(mtu, local, tap.is_some())?;
        if let Some(tap) = &tap {
            // The stack reads the TAP itself and must find it empty, not wait (io_uring's
            // writes and poll do not mind).
            let fd = tap.as_raw_fd();
            // SAFETY: fcntl on a descriptor we own.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
            {
                return Err(io::Error::last_os_error());
            }
            // The reader keeps the raw descriptor: `tap` lives in this struct beside it.
            queues.attach_link(fd);
        }
        Ok(UringTap {
            ring,
            tap,
            rx_armed: false,
            tx_inflight: Vec::new(),
            tx_free_ids: Vec::new(),
            gathering: 0,
            doorbell,
            doorbell_buf: Box::new(0),
            doorbell_armed: false,
            queues,
            stats: DeviceStats::default(),
        })
    }

    /// Completions the kernel dropped for a full completion queue (for diagnostics).
    pub fn cq_dropped(&mut self) -> u32 {
        self.ring.completion().overflow()
    }

    /// Whether a write that sends a payload from a client's ring is in flight (the kernel
    /// may still read the ring).
    pub fn gathering(&self) -> bool {
        self.gathering > 0
    }

    /// Whether a wake-up on the TAP's next frame is armed (for diagnostics).
    pub fn rx_armed(&self) -> bool {
        self.rx_armed
    }

    /// The device counters, with the queues' own.
    pub fn stats(&self) -> DeviceStats {
        let rx = &self.queues.rx_stats;
        DeviceStats {
            rx_frames: rx.rx_frames,
            rx_bytes: rx.rx_bytes,
            rx_landed_frames: rx.rx_landed_frames,
            rx_bad_checksum: rx.rx_bad_checksum,
            rx_errors: rx.rx_errors,
            rx_martians: rx.rx_martians,
            looped_frames: self.queues.tx.looped_frames,
            tx_dropped: self.queues.tx.dropped,
            ..self.stats
        }
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

    /// Posts writes for queued frames, and the doorbell read.
    pub fn arm(&mut self) -> io::Result<()> {
        self.arm_doorbell()?;
        let Some(tap) = &self.tap else {
            return Ok(());
        };
        let fd = types::Fd(tap.as_raw_fd());
        let ready = std::mem::take(&mut self.queues.tx.ready);
        for frame in ready {
            let id = match self.tx_free_ids.pop() {
                Some(id) => id,
                None => {
                    self.tx_inflight.push(None);
                    self.tx_inflight.len() - 1
                }
            };
            let (entry, iov) = match &frame.payload {
                None => (
                    opcode::Write::new(fd, frame.buf.as_ptr(), frame.len as u32).build(),
                    None,
                ),
                Some(p) => {
                    let iov = Box::new([
                        libc::iovec {
                            iov_base: frame.buf.as_ptr() as *mut libc::c_void,
                            iov_len: frame.len,
                        },
                        libc::iovec {
                            iov_base: p.ptr as *mut libc::c_void,
                            iov_len: p.len,
                        },
                    ]);
                    self.gathering += 1;
                    (opcode::Writev::new(fd, iov.as_ptr(), 2).build(), Some(iov))
                }
            };
            // The frame, its payload's region and the vector stay in tx_inflight until the
            // write's completion is reaped.
            self.tx_inflight[id] = Some(InFlight { frame, iov });
            self.push(&entry.user_data(tag(TAG_TX, id as u64)))?;
        }
        Ok(())
    }

    fn arm_doorbell(&mut self) -> io::Result<()> {
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

    /// Submits and sleeps until a completion arrives (the TAP's next frame among them) or
    /// `timeout` passes.
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if let (Some(tap), false) = (&self.tap, self.rx_armed) {
            // Completes at once if a frame came after the stack last read.
            let entry = opcode::PollAdd::new(types::Fd(tap.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(tag(TAG_RX, 0));
            self.push(&entry)?;
            self.rx_armed = true;
        }
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
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in done {
            let id = (user_data & ((1 << TAG_SHIFT) - 1)) as usize;
            match user_data >> TAG_SHIFT {
                TAG_RX => {
                    // The TAP is readable (or the poll failed: the next pass reads anyway).
                    self.rx_armed = false;
                    out.rx_ready = true;
                }
                TAG_TX => {
                    let Some(done) = self.tx_inflight.get_mut(id).and_then(Option::take) else {
                        continue;
                    };
                    self.tx_free_ids.push(id);
                    let buf = done.frame.buf;
                    let payload = done.frame.payload.map_or(0, |p| p.len);
                    if done.iov.is_some() {
                        self.gathering -= 1;
                    }
                    if res < 0 {
                        self.stats.tx_errors += 1;
                        tracing::debug!("tap write failed: {}", io::Error::from_raw_os_error(-res));
                    } else {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += (done.frame.len + payload - VNET_HDR_LEN) as u64;
                        if payload > 0 {
                            self.stats.tx_gathered_frames += 1;
                        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::Device;

    proptest::proptest! {
        /// What the TAP delivers is hostile: the checks a received frame meets before smoltcp
        /// (virtio-net header, offloaded checksums, martian sources) take any bytes.
        #[test]
        fn link_input_checks_take_any_bytes(
            frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)
        ) {
            if let Some(hdr) = VnetHdr::parse(&frame) {
                if frame.len() > VNET_HDR_LEN {
                    let _ = rx_checksum_ok(&hdr, &frame[VNET_HDR_LEN..]);
                    let _ = is_martian(&frame[VNET_HDR_LEN..]);
                }
            }
            let _ = is_martian(&frame);
        }
    }

    #[test]
    fn offload_frames_stay_below_64_kib_and_below_what_the_link_allows() {
        let local = LocalAddrs {
            mac: [2, 0, 0, 0, 0, 1],
            ip: std::net::Ipv4Addr::new(10, 0, 0, 2),
            loopback: true,
        };
        let mut q = FrameQueues::new(1500, local, true).unwrap();
        let gso = |q: &FrameQueues| q.capabilities().segmentation.tcpv4.map(|m| m.get());
        // A veth segments skbs of 65,536 bytes or more (its gso_max_size), header included.
        assert_eq!(gso(&q), Some(65535));
        q.set_gso_max(100_000);
        assert_eq!(gso(&q), Some(65535));
        q.set_gso_max(16383);
        assert_eq!(gso(&q), Some(16383));
        q.set_gso_max(1000);
        assert_eq!(gso(&q), None, "no room above the MTU: no offload");
    }

    #[test]
    fn a_full_loopback_queue_still_drains() {
        let local = LocalAddrs {
            mac: [2, 0, 0, 0, 0, 1],
            ip: std::net::Ipv4Addr::new(10, 0, 0, 1),
            loopback: true,
        };
        let mut q = FrameQueues::new(1500, local, false).unwrap();
        for _ in 0..LOOP_LIMIT {
            q.tx.looped.push_back(vec![0u8; VNET_HDR_LEN + 60]);
        }
        assert!(q.transmit(Instant::ZERO).is_none(), "no room to send more");
        let mut drained = 0;
        while let Some((rx, _tx)) = q.receive(Instant::ZERO) {
            phy::RxToken::consume(rx, |_| ());
            drained += 1;
        }
        assert_eq!(drained, LOOP_LIMIT);
        assert!(q.transmit(Instant::ZERO).is_some());
    }
}
