//! The TAP device driven by io_uring, and the frame queues smoltcp sees as its `Device`.
//!
//! Reads are kept posted on the TAP (one buffer each, up to `RX_DEPTH`), writes are queued by
//! smoltcp's transmit tokens and submitted in one batch per service pass, so a burst of frames
//! costs one `io_uring_enter`. The same ring waits on the stack's doorbell eventfd, on client
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

/// Posted TAP reads.
const RX_DEPTH: usize = 64;
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

/// What smoltcp polls: received frames in, transmitted frames out.
#[derive(Debug)]
pub struct FrameQueues {
    rx_ready: VecDeque<Vec<u8>>,
    rx_spent: Vec<Vec<u8>>,
    tx: TxQueue,
    mtu: usize,
}

impl FrameQueues {
    /// Empty queues for a link of `mtu` (also a device for tests that need no TAP).
    pub fn new(mtu: usize) -> Self {
        FrameQueues {
            rx_ready: VecDeque::new(),
            rx_spent: (0..RX_DEPTH).map(|_| vec![0u8; FRAME_BUF]).collect(),
            tx: TxQueue::default(),
            mtu,
        }
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
    buf: Vec<u8>,
    spent: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.buf[VNET_HDR_LEN..]);
        self.spent.push(self.buf);
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
        let buf = self.rx_ready.pop_front()?;
        Some((
            RxToken {
                buf,
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
    ring: IoUring,
    tap: OwnedFd,
    rx_inflight: Vec<Option<Vec<u8>>>,
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
            .build((RX_DEPTH + TX_LIMIT + 64).next_power_of_two() as u32)?;
        Ok(UringTap {
            ring,
            tap,
            rx_inflight: (0..RX_DEPTH).map(|_| None).collect(),
            tx_inflight: Vec::new(),
            tx_free_ids: Vec::new(),
            doorbell,
            doorbell_buf: Box::new(0),
            doorbell_armed: false,
            queues: FrameQueues::new(mtu),
            stats: DeviceStats::default(),
        })
    }

    /// Reads currently posted on the TAP.
    pub fn rx_posted(&self) -> usize {
        self.rx_inflight.iter().filter(|b| b.is_some()).count()
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
        while let Some(mut buf) = self.queues.rx_spent.pop() {
            let Some(id) = self.rx_inflight.iter().position(Option::is_none) else {
                self.queues.rx_spent.push(buf);
                break;
            };
            buf.resize(FRAME_BUF, 0);
            let entry = opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                .build()
                .user_data(tag(TAG_RX, id as u64));
            self.rx_inflight[id] = Some(buf);
            self.push(&entry)?;
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
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in done {
            let id = (user_data & ((1 << TAG_SHIFT) - 1)) as usize;
            match user_data >> TAG_SHIFT {
                TAG_RX => {
                    let Some(mut buf) = self.rx_inflight.get_mut(id).and_then(Option::take) else {
                        continue;
                    };
                    if res <= VNET_HDR_LEN as i32 {
                        if res < 0 {
                            self.stats.rx_errors += 1;
                            tracing::debug!(
                                "tap read failed: {}",
                                io::Error::from_raw_os_error(-res)
                            );
                        }
                        self.queues.rx_spent.push(buf);
                        continue;
                    }
                    buf.truncate(res as usize);
                    let hdr = VnetHdr::parse(&buf).unwrap_or_default();
                    if !rx_checksum_ok(&hdr, &buf[VNET_HDR_LEN..]) {
                        self.stats.rx_bad_checksum += 1;
                        self.queues.rx_spent.push(buf);
                        continue;
                    }
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (res as usize - VNET_HDR_LEN) as u64;
                    self.queues.rx_ready.push_back(buf);
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
