//! Sending frames on, synchronously (neither a TAP write nor a UDP send waits: the first is
//! queued to the namespace's stack, the second to a 16 MiB socket buffer): to a TAP, one frame
//! or joined TCP segments in one `writev`; to a node, one VXLAN datagram or a large frame's
//! segments in UDP GSO `sendmsg` calls.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use qnet::phy::tap::VNET_HDR_LEN;
use qnet::phy::vnet::VnetHdr;

use crate::gso::{self, TcpFrame};
use crate::tunnel::{self, Encap};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
/// The most segments one UDP GSO send may carry.
const MAX_SEGMENTS: usize = 64;
/// The largest UDP payload over IPv4.
const MAX_UDP: usize = 65_507;
/// The largest IP packet a joined frame may become.
const MAX_IP: usize = 65_535;

/// Why a frame was not sent.
#[derive(Debug)]
pub enum SendError {
    /// The frame is not one that can be cut (a large frame that is not plain TCP/IPv4).
    Uncuttable,
    Io(io::Error),
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError::Io(e)
    }
}

fn iov(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

/// Writes the buffers `iovs` points at to `fd` in one call.
fn writev(fd: RawFd, iovs: &[libc::iovec]) -> io::Result<()> {
    // SAFETY: every caller builds `iovs` over buffers that live for the call; writev only
    // reads them.
    let n = unsafe { libc::writev(fd, iovs.as_ptr(), iovs.len() as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A frame handed to a local endpoint from the overlay, for joining.
pub struct Delivery {
    pub endpoint: crate::forward::EndpointId,
    pub fd: RawFd,
    pub frame: std::ops::Range<usize>,
}

/// Where a packet through the tunnel device goes: the device, its outer headers, the remote
/// node and the flow's VXLAN source port.
pub struct TunnelWay<'a> {
    pub fd: RawFd,
    pub encap: &'a mut Encap,
    pub node: Ipv4Addr,
    pub sport: u16,
}

/// The sending side's scratch space (kept between frames, so sending allocates nothing).
#[derive(Default)]
pub struct Output {
    headers: Vec<u8>,
    joined: Vec<u8>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the iovecs are scratch, rebuilt before every call that uses them and pointing only
// at buffers that outlive that call; nothing reads them across threads.
unsafe impl Send for Output {}

impl Output {
    /// Writes the concatenation of `parts` to TAP `fd` as one frame.
    pub fn to_tap(&mut self, fd: RawFd, parts: &[&[u8]]) -> io::Result<()> {
        self.iovs.clear();
        self.iovs.extend(parts.iter().map(|p| iov(p)));
        writev(fd, &self.iovs)
    }

    /// Cuts `frame` as [`Output::segments_to_node`] does and writes each segment to the tunnel
    /// device `fd` as one VXLAN packet to `node`; the number of segments. For the rare frame
    /// that cannot go whole: segments of one flow must not take another way than the flow's
    /// other packets, or they would arrive out of order.
    pub fn segments_to_tunnel(
        &mut self,
        to: TunnelWay<'_>,
        frame: &[u8],
        mss: u16,
        vni: u32,
    ) -> Result<usize, SendError> {
        let TunnelWay {
            fd,
            encap,
            node,
            sport,
        } = to;
        let segs = self.cut(frame, mss, vni)?;
        let mut front = [0u8; tunnel::FRONT];
        for s in &segs {
            let len = s.header.len() + s.payload.len();
            if !encap.put_front(&mut front, node, sport, len, &VnetHdr::default()) {
                return Err(SendError::Uncuttable);
            }
            let parts = [
                iov(&front),
                iov(&self.headers[s.header.clone()]),
                iov(&frame[s.payload.clone()]),
            ];
            writev(fd, &parts)?;
        }
        Ok(segs.len())
    }

    /// Sends the iovecs in `self.iovs` to `node:port` on `udp`, as `gso`-byte datagrams if set.
    fn send_iovs(
        &mut self,
        udp: RawFd,
        node: Ipv4Addr,
        port: u16,
        gso: Option<u16>,
    ) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_in and msghdr.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = u32::from(node).to_be();
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = self.iovs.as_mut_ptr();
        msg.msg_iovlen = self.iovs.len();
        let mut control = [0u64; 4];
        if let Some(size) = gso {
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE of a u16 is 24 bytes, within `control` (32 bytes, aligned).
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize;
            // SAFETY: msg_control/msg_controllen describe `control`, which holds one cmsghdr
            // and its u16; CMSG_FIRSTHDR and CMSG_DATA stay inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size);
            }
        }
        // SAFETY: msg points at live locals and at iovecs over live buffers; sendmsg reads them.
        let n = unsafe { libc::sendmsg(udp, &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends one VXLAN datagram (`datagram`: header and frame) to `node`.
    pub fn to_node(
        &mut self,
        udp: RawFd,
        node: Ipv4Addr,
        port: u16,
        datagram: &[u8],
    ) -> io::Result<()> {
        self.iovs.clear();
        self.iovs.push(iov(datagram));
        self.send_iovs(udp, node, port, None)
    }

    /// Cuts `frame`, a TCP frame with `mss`-byte segments, into complete segments headed for
    /// VXLAN `vni`; their headers are in `self.headers`, their payloads in `frame`.
    fn cut(&mut self, frame: &[u8], mss: u16, vni: u32) -> Result<Vec<gso::Segment>, SendError> {
        self.headers.clear();
        gso::segment(frame, mss, vni, &mut self.headers).ok_or(SendError::Uncuttable)
    }

    /// Cuts `frame`, a TCP frame with `mss`-byte segments, and sends the segments in VXLAN
    /// `vni` to `node`, as few UDP GSO sends as the limits allow; the number of segments.
    pub fn segments_to_node(
        &mut self,
        udp: RawFd,
        node: Ipv4Addr,
        port: u16,
        frame: &[u8],
        mss: u16,
        vni: u32,
    ) -> Result<usize, SendError> {
        let segs = self.cut(frame, mss, vni)?;
        let Some(first) = segs.first() else {
            return Ok(0);
        };
        let size = first.header.len() + first.payload.len();
        let per_send = (MAX_UDP / size).clamp(1, MAX_SEGMENTS);
        for chunk in segs.chunks(per_send) {
            self.iovs.clear();
            for s in chunk {
                self.iovs.push(iov(&self.headers[s.header.clone()]));
                self.iovs.push(iov(&frame[s.payload.clone()]));
            }
            let gso = (chunk.len() > 1).then_some(size as u16);
            self.send_iovs(udp, node, port, gso)?;
        }
        Ok(segs.len())
    }

    /// Writes `deliveries` (frames in `buf`, in arrival order) to their TAPs, joining runs of
    /// TCP segments of one flow into one large frame; the writes that failed and the runs
    /// joined.
    pub fn deliver_joined(&mut self, buf: &[u8], deliveries: &[Delivery]) -> (u64, u64) {
        const PLAIN: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
        let (mut failed, mut joined) = (0, 0);
        let mut i = 0;
        while i < deliveries.len() {
            let d = &deliveries[i];
            let frame = &buf[d.frame.clone()];
            let tcp = gso::tcp_frame(frame)
                .filter(|t| t.payload_len > 0 && gso::tcp_checksum_ok(frame, t));
            // The run of segments that join onto this one.
            let mut end = i + 1;
            // The run's payload bytes, and whether its last segment has PSH.
            let (mut payload, mut psh) = (0, false);
            if let Some(first) = tcp {
                let mut last: (&[u8], TcpFrame) = (frame, first);
                let headers = first.header_len - crate::wire::ETH_LEN;
                payload = first.payload_len;
                while end < deliveries.len() && end - i < MAX_SEGMENTS {
                    let n = &deliveries[end];
                    let nf = &buf[n.frame.clone()];
                    let Some(nt) = gso::tcp_frame(nf) else { break };
                    if n.endpoint != d.endpoint
                        || headers + payload + nt.payload_len > MAX_IP
                        || !gso::joinable((frame, &first), (last.0, &last.1), (nf, &nt))
                        || !gso::tcp_checksum_ok(nf, &nt)
                    {
                        break;
                    }
                    payload += nt.payload_len;
                    last = (nf, nt);
                    end += 1;
                }
                psh = last.1.flags & 0x08 != 0;
            }
            let sent = match tcp {
                Some(first) if end - i > 1 => {
                    gso::joined_header(frame, &first, payload, psh, &mut self.joined);
                    joined += 1;
                    self.iovs.clear();
                    self.iovs.push(iov(&self.joined));
                    for x in &deliveries[i..end] {
                        let f = &buf[x.frame.clone()];
                        self.iovs.push(iov(&f[first.header_len..]));
                    }
                    writev(d.fd, &self.iovs).is_ok()
                }
                _ => self.to_tap(d.fd, &[&PLAIN, frame]).is_ok(),
            };
            if !sent {
                failed += 1;
            }
            i = end;
        }
        (failed, joined)
    }
}
