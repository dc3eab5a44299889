//! Offloads between the TAPs and the underlay. A pod's kernel hands its TAP 64 KiB TCP frames
//! (TSO) with partial checksums; the underlay carries MTU-sized VXLAN datagrams. Here a large
//! frame is cut into complete segments once its VXLAN verdict is known ([`segment`]), sent in
//! one UDP GSO `sendmsg`; and segments that arrive together (UDP GRO) are joined back into one
//! large frame for the TAP ([`joinable`], [`joined_header`]) after their checksums are checked,
//! so a pod's stack sees what it would see on the kernel's own path: few, large packets.
//!
//! Only TCP over IPv4 without IP options is cut or joined; anything else travels as it is.

use std::ops::Range;

use qnet::phy::tap::VNET_HDR_LEN;
use qnet::phy::vnet::{csum_add, csum_fold, VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};

use crate::wire::{put_vxlan, ETH_LEN, VXLAN_LEN};

const TCP: u8 = 6;
const IP_HDR: usize = 20;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;

/// Where the parts of a TCP/IPv4 frame (no IP options) are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFrame {
    /// Ethernet + IP + TCP header bytes.
    pub header_len: usize,
    pub payload_len: usize,
    pub seq: u32,
    pub flags: u8,
}

/// Parses `frame` as Ethernet + IPv4 (no options, not a fragment) + TCP; its total length as
/// the IP header says must fit in `frame`.
pub fn tcp_frame(frame: &[u8]) -> Option<TcpFrame> {
    if frame.len() < ETH_LEN + IP_HDR + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH_LEN..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] != 0x45 || ip[9] != TCP || fragment || total > ip.len() {
        return None;
    }
    let tcp = &ip[IP_HDR..];
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || IP_HDR + doff > total {
        return None;
    }
    Some(TcpFrame {
        header_len: ETH_LEN + IP_HDR + doff,
        payload_len: total - IP_HDR - doff,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        flags: tcp[13],
    })
}

/// The sum of the TCP pseudo-header for a segment of `tcp_len` bytes (header and payload).
fn pseudo(frame: &[u8], tcp_len: usize) -> u64 {
    let ip = &frame[ETH_LEN..];
    csum_add(0, &ip[12..20]) + u64::from(TCP) + tcp_len as u64
}

fn set_ip_checksum(ip: &mut [u8]) {
    ip[10..12].fill(0);
    let sum = !csum_fold(csum_add(0, &ip[..IP_HDR]));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Completes the checksum that a frame with `F_NEEDS_CSUM` left partial (the TAP's kernel
/// side computes none with checksum offload on). False if the header points outside.
pub fn finish_checksum(frame: &mut [u8], hdr: &VnetHdr) -> bool {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return true;
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > frame.len() || start > frame.len() {
        return false;
    }
    let sum = !csum_fold(csum_add(0, &frame[start..]));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Whether the TCP checksum of `frame` (a [`tcp_frame`]) is right.
pub fn tcp_checksum_ok(frame: &[u8], t: &TcpFrame) -> bool {
    let start = ETH_LEN + IP_HDR;
    let end = t.header_len + t.payload_len;
    csum_fold(csum_add(pseudo(frame, end - start), &frame[start..end])) == 0xffff
}

/// One segment cut from a large frame: its headers (VXLAN, Ethernet, IP, TCP) in the header
/// buffer, and its payload in the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub header: Range<usize>,
    pub payload: Range<usize>,
}

/// Cuts `frame`, a TCP frame with `mss`-byte segments, into complete segments with checksums,
/// each headed for VXLAN `vni`; their headers are appended to `headers`. None if the frame is
/// not one this module cuts.
pub fn segment(frame: &[u8], mss: u16, vni: u32, headers: &mut Vec<u8>) -> Option<Vec<Segment>> {
    let t = tcp_frame(frame)?;
    let mss = usize::from(mss);
    if mss == 0 || t.flags & (SYN | RST) != 0 {
        return None;
    }
    let hl = t.header_len;
    let ip_id = u16::from_be_bytes([frame[ETH_LEN + 4], frame[ETH_LEN + 5]]);
    let count = t.payload_len.div_ceil(mss).max(1);
    let mut segs = Vec::with_capacity(count);
    for i in 0..count {
        let from = hl + i * mss;
        let to = (from + mss).min(hl + t.payload_len);
        let at = headers.len();
        headers.resize(at + VXLAN_LEN + hl, 0);
        let h = &mut headers[at..];
        put_vxlan(&mut h[..VXLAN_LEN], vni);
        let f = &mut h[VXLAN_LEN..];
        f.copy_from_slice(&frame[..hl]);
        let tcp_len = hl - ETH_LEN - IP_HDR + (to - from);
        {
            let ip = &mut f[ETH_LEN..];
            ip[2..4].copy_from_slice(&((IP_HDR + tcp_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
            set_ip_checksum(ip);
        }
        let tcp_at = ETH_LEN + IP_HDR;
        let seq = t.seq.wrapping_add((i * mss) as u32);
        f[tcp_at + 4..tcp_at + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = t.flags;
        if i + 1 != count {
            flags &= !(FIN | PSH);
        }
        if i != 0 {
            flags &= !CWR;
        }
        f[tcp_at + 13] = flags;
        f[tcp_at + 16..tcp_at + 18].fill(0);
        let sum = csum_add(pseudo(f, tcp_len), &f[tcp_at..hl]);
        let sum = !csum_fold(csum_add(sum, &frame[from..to]));
        f[tcp_at + 16..tcp_at + 18].copy_from_slice(&sum.to_be_bytes());
        segs.push(Segment {
            header: at..at + VXLAN_LEN + hl,
            payload: from..to,
        });
    }
    Some(segs)
}

/// Whether `next` may follow `last` in a joined frame whose first segment is `first` (all three
/// [`tcp_frame`]s of checked checksums): same flow and headers but sequence numbers, payload
/// contiguous, every segment but the last `first`'s size, only ACK (and PSH on the last).
pub fn joinable(
    first: (&[u8], &TcpFrame),
    last: (&[u8], &TcpFrame),
    next: (&[u8], &TcpFrame),
) -> bool {
    let (ff, f) = first;
    let (lf, l) = last;
    let (nf, n) = next;
    let ip = ETH_LEN;
    let tcp = ETH_LEN + IP_HDR;
    n.header_len == f.header_len
        && l.flags & PSH == 0
        && l.payload_len == f.payload_len
        && n.payload_len <= f.payload_len
        && n.payload_len > 0
        && f.flags & !PSH == ACK
        && n.flags & !PSH == ACK
        && n.seq == l.seq.wrapping_add(l.payload_len as u32)
        // Ethernet addresses, TOS, TTL, protocol, DF, addresses.
        && ff[..12] == nf[..12]
        && ff[ip + 1] == nf[ip + 1]
        && ff[ip + 6..ip + 10] == nf[ip + 6..ip + 10]
        && ff[ip + 12..ip + 20] == nf[ip + 12..ip + 20]
        // Ports, ack, offset, window, urgent pointer and options alike.
        && lf[tcp..tcp + 4] == nf[tcp..tcp + 4]
        && lf[tcp + 8..tcp + 12] == nf[tcp + 8..tcp + 12]
        && ff[tcp + 14..tcp + 16] == nf[tcp + 14..tcp + 16]
        && ff[tcp + 18..f.header_len] == nf[tcp + 18..n.header_len]
}

/// The virtio-net header and packet headers of `count` joined segments whose first is
/// `first` and whose payloads total `payload` bytes (at most 64 KiB with the headers); the
/// TAP's kernel side gets them as one TSO frame with a partial checksum.
pub fn joined_header(first: &[u8], f: &TcpFrame, payload: usize, psh: bool, out: &mut Vec<u8>) {
    out.clear();
    out.resize(VNET_HDR_LEN, 0);
    out.extend_from_slice(&first[..f.header_len]);
    let h = &mut out[VNET_HDR_LEN..];
    let tcp_len = f.header_len - ETH_LEN - IP_HDR + payload;
    {
        let ip = &mut h[ETH_LEN..];
        ip[2..4].copy_from_slice(&((IP_HDR + tcp_len) as u16).to_be_bytes());
        set_ip_checksum(ip);
    }
    let tcp_at = ETH_LEN + IP_HDR;
    if psh {
        h[tcp_at + 13] |= PSH;
    }
    // With NEEDS_CSUM the checksum field holds the pseudo-header sum, not inverted.
    let partial = csum_fold(pseudo(h, tcp_len));
    h[tcp_at + 16..tcp_at + 18].copy_from_slice(&partial.to_be_bytes());
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: f.header_len as u16,
        gso_size: f.payload_len as u16,
        csum_start: tcp_at as u16,
        csum_offset: 16,
    }
    .write(&mut out[..VNET_HDR_LEN]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large TCP frame: Ethernet, IPv4 (id 7), TCP with 12 bytes of options, `len` bytes of
    /// payload, flags ACK|PSH, checksums complete.
    fn large_frame(len: usize) -> Vec<u8> {
        let doff = 32;
        let mut f = vec![0u8; ETH_LEN + IP_HDR + doff + len];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = (IP_HDR + doff + len) as u16;
        let ip = &mut f[ETH_LEN..];
        ip[..IP_HDR].copy_from_slice(&[
            0x45, 0, 0, 0, 0, 7, 0x40, 0, 64, TCP, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ]);
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        set_ip_checksum(ip);
        let tcp = &mut ip[IP_HDR..];
        tcp[..4].copy_from_slice(&[0x9c, 0x40, 0x13, 0x89]);
        tcp[4..8].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // wraps while cut
        tcp[8..12].copy_from_slice(&77u32.to_be_bytes());
        tcp[12] = (doff as u8 / 4) << 4;
        tcp[13] = ACK | PSH;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5]);
        for (i, b) in tcp[doff..].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let tcp_len = doff + len;
        let sum = !csum_fold(csum_add(pseudo(&f, tcp_len), &f[ETH_LEN + IP_HDR..]));
        f[ETH_LEN + IP_HDR + 16..ETH_LEN + IP_HDR + 18].copy_from_slice(&sum.to_be_bytes());
        f
    }

    #[test]
    fn a_large_frame_is_cut_into_checked_segments_and_joined_back_as_it_was() {
        let original = large_frame(10_000);
        let t = tcp_frame(&original).unwrap();
        assert!(tcp_checksum_ok(&original, &t));
        let mut headers = Vec::new();
        let segs = segment(&original, 1400, 42, &mut headers).unwrap();
        assert_eq!(segs.len(), 8); // 7 x 1400 + 200
        let frames: Vec<Vec<u8>> = segs
            .iter()
            .map(|s| {
                [
                    &headers[s.header.start + VXLAN_LEN..s.header.end],
                    &original[s.payload.clone()],
                ]
                .concat()
            })
            .collect();
        let mut seq = t.seq;
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(
                crate::wire::vxlan_vni(&headers[segs[i].header.clone()]),
                Some(42)
            );
            let s = tcp_frame(f).expect("a segment is a TCP frame");
            assert!(tcp_checksum_ok(f, &s), "segment {i}");
            assert!(
                crate::wire::ipv4_head(f).is_some(),
                "segment {i}'s IP header checks"
            );
            assert_eq!(s.seq, seq);
            seq = seq.wrapping_add(s.payload_len as u32);
            assert_eq!(s.flags & PSH != 0, i == 7, "PSH on the last segment only");
            assert!(f.len() <= ETH_LEN + 1500);
        }
        for (i, pair) in frames.windows(2).enumerate() {
            let first = tcp_frame(&frames[0]).unwrap();
            let (a, b) = (tcp_frame(&pair[0]).unwrap(), tcp_frame(&pair[1]).unwrap());
            assert!(
                joinable((&frames[0], &first), (&pair[0], &a), (&pair[1], &b)),
                "after {i}"
            );
        }
        // Out of order, or another flow, does not join.
        let (f0, f2) = (
            tcp_frame(&frames[0]).unwrap(),
            tcp_frame(&frames[2]).unwrap(),
        );
        assert!(!joinable(
            (&frames[0], &f0),
            (&frames[0], &f0),
            (&frames[2], &f2)
        ));
        let mut other = frames[1].clone();
        other[ETH_LEN + IP_HDR + 1] ^= 1; // another source port
        let o = tcp_frame(&other).unwrap();
        assert!(!joinable(
            (&frames[0], &f0),
            (&frames[0], &f0),
            (&other, &o)
        ));

        // Joined: the header says 10,000 bytes in 1400-byte segments with a partial checksum,
        // which completes to the original frame's.
        let mut out = Vec::new();
        joined_header(&frames[0], &f0, 10_000, true, &mut out);
        let hdr = VnetHdr::parse(&out).unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.gso_size, hdr.flags),
            (GSO_TCPV4, 1400, F_NEEDS_CSUM)
        );
        let mut rebuilt = out[VNET_HDR_LEN..].to_vec();
        for f in &frames {
            rebuilt.extend_from_slice(&f[t.header_len..]);
        }
        assert!(finish_checksum(&mut rebuilt, &hdr));
        assert!(
            rebuilt == original,
            "the joined frame is the frame that was cut"
        );
    }

    #[test]
    fn what_is_not_plain_tcp_is_not_cut() {
        let mut f = large_frame(3000);
        f[ETH_LEN] = 0x46; // IP options
        assert!(segment(&f, 1400, 1, &mut Vec::new()).is_none());
        let mut f = large_frame(3000);
        f[ETH_LEN + IP_HDR + 13] = SYN | ACK;
        assert!(segment(&f, 1400, 1, &mut Vec::new()).is_none());
        assert!(segment(&large_frame(3000), 0, 1, &mut Vec::new()).is_none());
        assert!(tcp_frame(&[0u8; 10]).is_none());
    }
}
