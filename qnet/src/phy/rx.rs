//! Frames from the TAP, read by the stack thread one at a time when it can take one.
//!
//! A TCP stream receiving in bulk has its frames' payload read straight to where its socket
//! stores its next in-order byte (its client's ring, with direct receive): before each read
//! the stack guesses the stream (crate::hot) and names that place (a [`Landing`]), the read
//! puts the frame's headers in a small buffer and what follows at the landing, and smoltcp
//! finds the payload already in place
//! (smoltcp patch 10, `phy/detach.rs`). That saves the copy smoltcp made of every received
//! byte. A frame that turns out to be anything else (another flow, out of order, headers of
//! another length, a checksum still to verify) is put back together in the frame buffer,
//! which costs the copy it always cost; the landing's bytes it overwrote were free storage.
//! A client may see its ring's free storage, so the stack lands only while it serves a single
//! client (a container's stack does): another flow's bytes never pass through another
//! client's memory.
//!
//! Reading only when the stack can take a frame also leaves frames in the TAP's queue rather
//! than in buffers of ours while smoltcp is held off.

use std::io;
use std::os::fd::RawFd;

use super::tap::VNET_HDR_LEN;
use super::vnet::{csum_add, csum_fold, VnetHdr, F_DATA_VALID, F_NEEDS_CSUM};

/// Largest frame the TAP hands us with offloads on (a 64 KiB GSO super-packet), plus headers.
pub const FRAME_BUF: usize = VNET_HDR_LEN + 14 + 65535 + 256;
/// Room for the headers of a landed frame: virtio-net, Ethernet, IPv4 and TCP with options.
const HDR_MAX: usize = VNET_HDR_LEN + 14 + 60 + 60;
/// The headers of a TCP/IPv4 frame without options, the first guess for a flow.
const HDR_PLAIN: usize = VNET_HDR_LEN + 14 + 20 + 20;
/// Most payload one frame carries (an IPv4 packet is at most 64 KiB).
const PAYLOAD_MAX: usize = 65536;
/// Landings smaller than this are not worth a three-piece read.
pub const LANDING_MIN: usize = 4096;

const IP: usize = VNET_HDR_LEN + 14;

/// An IPv4 address and port.
pub type Endpoint = ([u8; 4], u16);

/// Where the next in-order payload byte of a TCP stream goes, as the stack finds it before a
/// read.
#[derive(Clone, Copy, Debug)]
pub struct Landing {
    /// The peer's address and port (the frames' source).
    pub remote: Endpoint,
    /// Ours (the frames' destination).
    pub local: Endpoint,
    /// Sequence number of the next in-order byte.
    pub seq: u32,
    /// Where it is stored, and the contiguous free storage from there (within the window).
    pub ptr: *mut u8,
    pub len: usize,
    /// Whether bytes past `len` lie past the receive window (smoltcp cuts them off anyway)
    /// rather than wrapping to the start of the storage.
    pub at_edge: bool,
}

// SAFETY: a landing is found and used by the stack thread within one read; it only crosses
// threads with the stack before that thread starts (empty then).
unsafe impl Send for Landing {}

/// A frame read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The first `len` bytes of [`TapReader::frame`], virtio-net header first.
    Whole(usize),
    /// The frame's headers are the first `hdr_len` bytes of [`TapReader::headers`] (the IP
    /// length rewritten to cover the headers alone) and its TCP payload, `payload` bytes, lies
    /// at the landing it was read with.
    Landed { hdr_len: usize, payload: usize },
}

/// The TCP/IPv4 headers of a frame (offsets from the start of the virtio-net header).
struct TcpHeaders {
    ihl: usize,
    /// The whole header length, virtio-net header included: where the payload starts.
    len: usize,
    /// The IP packet's length.
    ip_total: usize,
    src: Endpoint,
    dst: Endpoint,
    seq: u32,
    flags: u8,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// Reads the TCP/IPv4 headers at the start of `b` (a frame with its virtio-net header), if
/// they are all there.
fn tcp_headers(b: &[u8]) -> Option<TcpHeaders> {
    let ip = b.get(IP..IP + 20)?;
    if b.get(VNET_HDR_LEN + 12..IP)? != [0x08, 0x00] || ip[0] >> 4 != 4 || ip[9] != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // Fragments are left to smoltcp.
    if ihl < 20 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let tcp = b.get(IP + ihl..IP + ihl + 20)?;
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 {
        return None;
    }
    let ipv4 = |at: usize| -> [u8; 4] { [ip[at], ip[at + 1], ip[at + 2], ip[at + 3]] };
    Some(TcpHeaders {
        ihl,
        len: IP + ihl + doff,
        ip_total: usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        src: (ipv4(12), u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: (ipv4(16), u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags: tcp[13],
    })
}

/// Reads frames from a non-blocking TAP (with a virtio-net header).
pub struct TapReader {
    fd: RawFd,
    headers: Box<[u8; HDR_MAX]>,
    frame: Vec<u8>,
    /// Header length of the last TCP segment with data: where the next one's payload should
    /// start (a peer's streams carry the same options).
    expect_hdr: usize,
    /// The (source, destination) of the last TCP frame read: its stream's next frame likely
    /// follows (a sender's segmentation offload sends a stream's frames in bursts).
    last_flow: Option<(Endpoint, Endpoint)>,
}

impl TapReader {
    /// Reads from `fd`, which must be a non-blocking TAP and outlive the reader.
    pub fn new(fd: RawFd) -> Self {
        TapReader {
            fd,
            headers: Box::new([0; HDR_MAX]),
            frame: vec![0; FRAME_BUF],
            expect_hdr: HDR_PLAIN,
            last_flow: None,
        }
    }

    /// The (source, destination) of the last TCP frame read.
    pub fn last_flow(&self) -> Option<(Endpoint, Endpoint)> {
        self.last_flow
    }

    /// Notes the stream of a frame read whole (its first `n` bytes in the frame buffer).
    fn note_whole(&mut self, n: usize) {
        self.last_flow = None;
        if let Some(t) = tcp_headers(&self.frame[..n]) {
            self.last_flow = Some((t.src, t.dst));
            if n > t.len && t.len <= HDR_MAX {
                self.expect_hdr = t.len;
            }
        }
    }

    /// The frame buffer ([`Frame::Whole`]).
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// The header buffer ([`Frame::Landed`]).
    pub fn headers(&self) -> &[u8] {
        &self.headers[..]
    }

    /// Reads the next frame, its TCP payload to `landing` if it is the next of that stream.
    /// `None` when the TAP has nothing queued.
    pub fn read(&mut self, landing: Option<&Landing>) -> io::Result<Option<Frame>> {
        // A landing shorter than a frame's payload may take one only where the window ends
        // (smoltcp cuts the rest off anyway); at the storage's end the payload would run on,
        // and the frame would be put back together: a copy more than a plain read.
        let fits = |l: &&Landing| l.len >= LANDING_MIN && (l.at_edge || l.len >= PAYLOAD_MAX);
        let Some(l) = landing.filter(fits) else {
            // SAFETY: the frame buffer is FRAME_BUF bytes, ours for the call.
            let n = unsafe { libc::read(self.fd, self.frame.as_mut_ptr().cast(), FRAME_BUF) };
            let n = Self::done(n)?;
            if let Some(n) = n {
                self.note_whole(n);
            }
            return Ok(n.map(Frame::Whole));
        };
        let h = self.expect_hdr;
        let land = l.len.min(PAYLOAD_MAX);
        let iov = [
            libc::iovec {
                iov_base: self.headers.as_mut_ptr().cast(),
                iov_len: h,
            },
            libc::iovec {
                iov_base: l.ptr.cast(),
                iov_len: land,
            },
            libc::iovec {
                iov_base: self.frame.as_mut_ptr().cast(),
                iov_len: FRAME_BUF,
            },
        ];
        // SAFETY: the header and frame buffers are ours for the call; the landing is free
        // storage of the stream's socket, `l.len` bytes, that nothing else writes while the
        // stack thread is here (the stack found it just now, Landing's contract).
        let n = unsafe { libc::readv(self.fd, iov.as_ptr(), 3) };
        let Some(n) = Self::done(n)? else {
            return Ok(None);
        };
        // What came to the landing and past it.
        let landed = n.saturating_sub(h).min(land);
        let spilled = n.saturating_sub(h + land);
        if n > FRAME_BUF {
            return Ok(Some(Frame::Whole(0))); // no TAP frame is this long: dropped
        }
        if let Some(payload) = self.check_landed(l, n, landed, spilled) {
            self.last_flow = Some((l.remote, l.local));
            return Ok(Some(Frame::Landed {
                hdr_len: h,
                payload,
            }));
        }
        // Put the frame back together in the frame buffer: headers, landed part, spill.
        self.frame.copy_within(..spilled, h + landed);
        // SAFETY: `landed` bytes at the landing were just written by the read; the frame
        // buffer has room for the whole frame (n <= FRAME_BUF) and does not overlap it.
        let landed_bytes = unsafe { std::slice::from_raw_parts(l.ptr, landed) };
        self.frame[h..h + landed].copy_from_slice(landed_bytes);
        let head = n.min(h);
        self.frame[..head].copy_from_slice(&self.headers[..head]);
        self.note_whole(n);
        Ok(Some(Frame::Whole(n)))
    }

    /// The payload length to hand smoltcp if the frame read with `l` is the stream's next
    /// segment with its payload exactly at the landing; `None` otherwise.
    fn check_landed(
        &mut self,
        l: &Landing,
        n: usize,
        landed: usize,
        spilled: usize,
    ) -> Option<usize> {
        let h = self.expect_hdr;
        if n <= h {
            return None;
        }
        let vnet = VnetHdr::parse(&self.headers[..])?;
        let t = tcp_headers(&self.headers[..h])?;
        if t.len != h || (t.src, t.dst) != (l.remote, l.local) {
            return None;
        }
        // The checksum must be vouched for: smoltcp verifies none of a landed payload. The
        // segment must be the next in order and carry only data (and perhaps a FIN).
        if vnet.flags & (F_NEEDS_CSUM | F_DATA_VALID) == 0
            || t.seq != l.seq
            || t.flags & (TCP_SYN | TCP_RST) != 0
            || t.ip_total != n - IP
        {
            return None;
        }
        // Bytes past the landing: fine only where smoltcp would cut them off (past the window),
        // and not with a FIN, which would then be taken as sent right after the cut.
        if spilled > 0 && (!l.at_edge || t.flags & TCP_FIN != 0) {
            return None;
        }
        // The headers alone, as smoltcp is to parse them: IP length and checksum redone.
        let ip_len = t.len - IP;
        let ip = &mut self.headers[IP..IP + t.ihl];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[10..12].fill(0);
        let sum = !csum_fold(csum_add(0, ip));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        Some(landed)
    }

    fn done(n: isize) -> io::Result<Option<usize>> {
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const PEER: Endpoint = ([10, 0, 0, 1], 5001);
    const US: Endpoint = ([10, 0, 0, 2], 40000);

    /// A datagram socket pair standing in for the TAP: one frame per message, as a TAP reads.
    fn link() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two descriptors we then own.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors from socketpair.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn send(fd: &OwnedFd, frame: &[u8]) {
        // SAFETY: a valid buffer; a blocking-free send of one message.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize);
    }

    /// A TCP/IPv4 frame from `src` to `dst` with a virtio-net header (`flags`), `options`
    /// bytes of TCP options and `payload`.
    fn frame(
        src: Endpoint,
        dst: Endpoint,
        seq: u32,
        flags: u8,
        options: usize,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f[0] = flags;
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        let total = 20 + 20 + options + payload.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ];
        ip.extend_from_slice(&src.0);
        ip.extend_from_slice(&dst.0);
        let sum = !csum_fold(csum_add(0, &ip));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 1]); // ack
        f.push((((20 + options) / 4) << 4) as u8);
        f.extend_from_slice(&[0x18, 0xff, 0xff, 0, 0, 0, 0]); // PSH|ACK, window, csum, urgent
        f.extend(std::iter::repeat_n(1u8, options)); // NOPs
        f.extend_from_slice(payload);
        f
    }

    fn landing(storage: &mut [u8], seq: u32, at_edge: bool) -> Landing {
        Landing {
            remote: PEER,
            local: US,
            seq,
            ptr: storage.as_mut_ptr(),
            len: storage.len(),
            at_edge,
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_next_segment_of_the_stream_lands_where_its_socket_stores_it() {
        let (tap, peer) = link();
        let mut r = TapReader::new(tap.as_raw_fd());
        let mut storage = vec![0u8; 65536];
        let data = payload(5000);
        send(&peer, &frame(PEER, US, 1000, F_NEEDS_CSUM, 0, &data));
        let l = landing(&mut storage, 1000, false);
        let got = r.read(Some(&l)).unwrap();
        assert_eq!(
            got,
            Some(Frame::Landed {
                hdr_len: HDR_PLAIN,
                payload: 5000
            })
        );
        assert!(
            storage[..5000] == data[..],
            "the payload is where the socket stores it"
        );
        // The headers smoltcp parses: the IP length covers them alone, the checksum agrees.
        let ip = &r.headers()[IP..IP + 20];
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40);
        assert_eq!(csum_fold(csum_add(0, ip)), 0xffff);
        assert_eq!(r.read(Some(&l)).unwrap(), None, "nothing more queued");
    }

    #[test]
    fn any_other_frame_comes_out_whole_and_unchanged() {
        let (tap, peer) = link();
        let mut r = TapReader::new(tap.as_raw_fd());
        // Room for less than the payload: it runs past the landing.
        let mut storage = vec![0u8; LANDING_MIN];
        let data = payload(6000);
        let other = ([10, 0, 0, 9], 5001);
        let cases = [
            (
                "another flow",
                frame(other, US, 1000, F_NEEDS_CSUM, 0, &data),
                false,
            ),
            (
                "out of order",
                frame(PEER, US, 2000, F_NEEDS_CSUM, 0, &data),
                false,
            ),
            (
                "checksum unchecked",
                frame(PEER, US, 1000, 0, 0, &data),
                false,
            ),
            (
                "past a wrapping landing",
                frame(PEER, US, 1000, F_NEEDS_CSUM, 0, &data),
                false,
            ),
            (
                "FIN cut at the window",
                {
                    let mut f = frame(PEER, US, 1000, F_NEEDS_CSUM, 0, &data);
                    f[IP + 20 + 13] |= TCP_FIN;
                    f
                },
                true,
            ),
            (
                "shorter than the headers",
                frame(PEER, US, 1000, F_NEEDS_CSUM, 0, &[])[..30].to_vec(),
                false,
            ),
        ];
        for (what, f, at_edge) in cases {
            send(&peer, &f);
            let l = landing(&mut storage, 1000, at_edge);
            assert_eq!(
                r.read(Some(&l)).unwrap(),
                Some(Frame::Whole(f.len())),
                "{what}"
            );
            assert!(
                r.frame()[..f.len()] == f[..],
                "{what}: the frame came out changed"
            );
        }
    }

    #[test]
    fn a_flow_with_longer_headers_lands_from_its_second_frame() {
        let (tap, peer) = link();
        let mut r = TapReader::new(tap.as_raw_fd());
        let mut storage = vec![0u8; 65536];
        let data = payload(3000);
        // Timestamps: 12 bytes of options the first read does not expect.
        let first = frame(PEER, US, 1000, F_DATA_VALID, 12, &data);
        send(&peer, &first);
        let l = landing(&mut storage, 1000, false);
        assert_eq!(r.read(Some(&l)).unwrap(), Some(Frame::Whole(first.len())));
        assert!(r.frame()[..first.len()] == first[..]);
        send(&peer, &frame(PEER, US, 4000, F_DATA_VALID, 12, &data));
        let l = landing(&mut storage, 4000, false);
        let got = r.read(Some(&l)).unwrap();
        assert_eq!(
            got,
            Some(Frame::Landed {
                hdr_len: HDR_PLAIN + 12,
                payload: 3000
            })
        );
        assert!(storage[..3000] == data[..]);
    }

    #[test]
    fn a_segment_past_the_window_lands_cut_at_its_edge() {
        let (tap, peer) = link();
        let mut r = TapReader::new(tap.as_raw_fd());
        let mut storage = vec![0u8; 4096];
        let data = payload(6000);
        send(&peer, &frame(PEER, US, 1000, F_NEEDS_CSUM, 0, &data));
        let l = landing(&mut storage, 1000, true);
        let got = r.read(Some(&l)).unwrap();
        assert_eq!(
            got,
            Some(Frame::Landed {
                hdr_len: HDR_PLAIN,
                payload: 4096
            })
        );
        assert!(storage[..] == data[..4096]);
    }

    proptest::proptest! {
        /// What the TAP delivers is hostile: any bytes read with a landing come out either
        /// whole and unchanged, or landed only if they are the stream's next segment, the
        /// payload at the landing and the headers as sent but for the IP length and checksum.
        #[test]
        fn any_frame_read_with_a_landing_comes_out_whole_or_truly_landed(
            data_len in 0usize..9000,
            options in proptest::sample::select(vec![0usize, 12]),
            flags in 0u8..4,
            seq_off in proptest::sample::select(vec![0u32, 1, 5000]),
            flip in proptest::option::of((0usize..120, proptest::prelude::any::<u8>())),
            noise in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
            room in LANDING_MIN..9000,
            at_edge in proptest::prelude::any::<bool>(),
        ) {
            let (tap, peer) = link();
            let mut r = TapReader::new(tap.as_raw_fd());
            let mut f = match noise {
                Some(bytes) => bytes,
                None => frame(PEER, US, 1000 + seq_off, flags, options, &payload(data_len)),
            };
            if let Some((at, byte)) = flip {
                if let Some(b) = f.get_mut(at) {
                    *b = byte;
                }
            }
            if f.is_empty() {
                return Ok(()); // a zero-length message reads as nothing
            }
            send(&peer, &f);
            let mut storage = vec![0u8; room];
            let l = landing(&mut storage, 1000, at_edge);
            match r.read(Some(&l)).unwrap() {
                Some(Frame::Whole(n)) => {
                    proptest::prop_assert_eq!(n, f.len());
                    proptest::prop_assert!(r.frame()[..n] == f[..]);
                }
                Some(Frame::Landed { hdr_len, payload }) => {
                    let t = tcp_headers(&f).expect("only TCP/IPv4 lands");
                    proptest::prop_assert_eq!((t.src, t.dst, t.seq, t.len), (PEER, US, 1000, hdr_len));
                    proptest::prop_assert!(payload <= room && hdr_len + payload <= f.len());
                    proptest::prop_assert!(storage[..payload] == f[hdr_len..hdr_len + payload]);
                    let (mut sent, mut got) = (f[..hdr_len].to_vec(), r.headers()[..hdr_len].to_vec());
                    for b in [&mut sent, &mut got] {
                        b[IP + 2..IP + 4].fill(0);
                        b[IP + 10..IP + 12].fill(0);
                    }
                    proptest::prop_assert_eq!(sent, got);
                }
                None => proptest::prop_assert!(false, "a frame was sent"),
            }
        }
    }

    #[test]
    fn without_a_landing_frames_are_read_whole() {
        let (tap, peer) = link();
        let mut r = TapReader::new(tap.as_raw_fd());
        let f = frame(PEER, US, 1000, F_NEEDS_CSUM, 0, &payload(100));
        send(&peer, &f);
        assert_eq!(r.read(None).unwrap(), Some(Frame::Whole(f.len())));
        assert!(r.frame()[..f.len()] == f[..]);
        let mut small = vec![0u8; LANDING_MIN - 1];
        send(&peer, &f);
        let l = landing(&mut small, 1000, false);
        assert_eq!(
            r.read(Some(&l)).unwrap(),
            Some(Frame::Whole(f.len())),
            "too small a landing"
        );
        assert_eq!(r.read(None).unwrap(), None);
    }
}
