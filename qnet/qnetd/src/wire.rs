//! Packet formats the daemon reads and writes itself: the VXLAN header (RFC 7348) and the few
//! frames it answers with, built in place over the frame they answer (ARP replies, ICMP echo
//! replies, ICMP fragmentation-needed). Parsing of Ethernet, ARP and IPv4 is smoltcp's.

use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
};

use crate::model::Mac;

/// Bytes of the VXLAN header in front of the inner frame.
pub const VXLAN_LEN: usize = 8;
/// What VXLAN over IPv4 adds to an inner frame on the underlay: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14), which the underlay MTU must carry.
pub const OVERLAY_OVERHEAD: u32 = 50;
pub const ETH_LEN: usize = 14;
const ARP_FRAME_LEN: usize = ETH_LEN + 28;

/// The VNI of a VXLAN header, if the header is valid (the I flag set, as RFC 7348 requires of
/// a sender; receivers must drop frames without it).
pub fn vxlan_vni(header: &[u8]) -> Option<u32> {
    if header.len() < VXLAN_LEN || header[0] & 0x08 == 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, header[4], header[5], header[6]]))
}

/// Writes a VXLAN header for `vni` into `header` (8 bytes).
pub fn put_vxlan(header: &mut [u8], vni: u32) {
    header[..VXLAN_LEN].copy_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 0]);
    header[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
}

fn eth(a: Mac) -> EthernetAddress {
    EthernetAddress(a.0)
}

/// An ARP request as the forwarder needs it.
pub struct ArpRequest {
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// The ARP request in `frame` (an Ethernet frame), if it is one.
pub fn arp_request(frame: &[u8]) -> Option<ArpRequest> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    let arp = ArpPacket::new_checked(eth.payload()).ok()?;
    match ArpRepr::parse(&arp).ok()? {
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => Some(ArpRequest {
            sender_mac: Mac(source_hardware_addr.0),
            sender_ip: source_protocol_addr,
            target_ip: target_protocol_addr,
        }),
        _ => None,
    }
}

/// Overwrites `frame` with the reply to `req` saying `req.target_ip` is at `mac`; the reply's
/// length.
pub fn make_arp_reply(frame: &mut [u8], req: &ArpRequest, mac: Mac) -> usize {
    let frame = &mut frame[..ARP_FRAME_LEN];
    let mut e = EthernetFrame::new_unchecked(&mut *frame);
    e.set_dst_addr(eth(req.sender_mac));
    e.set_src_addr(eth(mac));
    e.set_ethertype(EthernetProtocol::Arp);
    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: eth(mac),
        source_protocol_addr: req.target_ip,
        target_hardware_addr: eth(req.sender_mac),
        target_protocol_addr: req.sender_ip,
    };
    reply.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH_LEN..]));
    ARP_FRAME_LEN
}

/// The addresses of an IPv4 packet, checked as far as forwarding needs.
pub struct Ipv4Head {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Length of the IP packet (header and payload), as its header says.
    pub total_len: usize,
    pub dont_frag: bool,
    pub icmp_echo_request: bool,
    /// What a flow is told apart by beyond the addresses.
    pub l4: L4,
}

/// The transport of an IPv4 packet, as security groups and connection tracking see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    Tcp {
        src: u16,
        dst: u16,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    /// An echo request or reply and its identifier.
    IcmpEcho {
        request: bool,
        ident: u16,
    },
    /// Any other packet, or a fragment after the first (which has no transport header).
    Other {
        protocol: u8,
    },
}

fn l4_of(ip: &Ipv4Packet<&[u8]>) -> L4 {
    let protocol = ip.next_header();
    let other = L4::Other {
        protocol: protocol.into(),
    };
    if ip.frag_offset() != 0 {
        return other;
    }
    let p = ip.payload();
    let ports = || {
        (p.len() >= 4).then(|| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        })
    };
    match protocol {
        IpProtocol::Tcp => ports().map_or(other, |(src, dst)| L4::Tcp { src, dst }),
        IpProtocol::Udp => ports().map_or(other, |(src, dst)| L4::Udp { src, dst }),
        IpProtocol::Icmp => match Icmpv4Packet::new_checked(p) {
            Ok(icmp) if icmp.msg_type() == Icmpv4Message::EchoRequest => L4::IcmpEcho {
                request: true,
                ident: icmp.echo_ident(),
            },
            Ok(icmp) if icmp.msg_type() == Icmpv4Message::EchoReply => L4::IcmpEcho {
                request: false,
                ident: icmp.echo_ident(),
            },
            _ => other,
        },
        _ => other,
    }
}

/// The IPv4 packet in Ethernet frame `frame`, if it is one and well formed: a valid header
/// checksum and a total length the frame holds.
pub fn ipv4_head(frame: &[u8]) -> Option<Ipv4Head> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.version() != 4 || !ip.verify_checksum() {
        return None;
    }
    let l4 = l4_of(&ip);
    let icmp_echo_request = !ip.more_frags() && matches!(l4, L4::IcmpEcho { request: true, .. });
    Some(Ipv4Head {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        total_len: usize::from(ip.total_len()),
        dont_frag: ip.dont_frag(),
        icmp_echo_request,
        l4,
    })
}

/// Sets the Ethernet addresses of `frame`.
pub fn set_macs(frame: &mut [u8], dst: Mac, src: Mac) {
    let mut e = EthernetFrame::new_unchecked(frame);
    e.set_dst_addr(eth(dst));
    e.set_src_addr(eth(src));
}

/// Turns the ICMP echo request in `frame` (checked by [`ipv4_head`]) into its reply from
/// `from_mac`; the reply's length.
pub fn make_echo_reply(frame: &mut [u8], from_mac: Mac) -> usize {
    let len = {
        let mut e = EthernetFrame::new_unchecked(&mut *frame);
        let to = e.src_addr();
        e.set_dst_addr(to);
        e.set_src_addr(eth(from_mac));
        let mut ip = Ipv4Packet::new_unchecked(e.payload_mut());
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(dst);
        ip.set_dst_addr(src);
        ip.set_hop_limit(64);
        ip.fill_checksum();
        let total = usize::from(ip.total_len());
        let mut icmp = Icmpv4Packet::new_unchecked(ip.payload_mut());
        icmp.set_msg_type(Icmpv4Message::EchoReply);
        icmp.fill_checksum();
        total
    };
    ETH_LEN + len
}

/// Overwrites `frame` (an IPv4 packet too big for `mtu`) with ICMP "fragmentation needed"
/// from `gateway` to its sender, carrying its header and 8 bytes as RFC 792 asks; the length.
pub fn make_frag_needed(frame: &mut [u8], gateway: Ipv4Addr, gw_mac: Mac, mtu: u16) -> usize {
    const QUOTE_MAX: usize = 60 + 8;
    let (sender_mac, sender_ip, quote, quote_len) = {
        let e = EthernetFrame::new_unchecked(&*frame);
        let ip = Ipv4Packet::new_unchecked(e.payload());
        let quote_len = (usize::from(ip.header_len()) + 8).min(QUOTE_MAX);
        let mut quote = [0u8; QUOTE_MAX];
        quote[..quote_len].copy_from_slice(&e.payload()[..quote_len]);
        (e.src_addr(), ip.src_addr(), quote, quote_len)
    };
    let icmp_len = 8 + quote_len;
    let ip_len = 20 + icmp_len;
    let mut e = EthernetFrame::new_unchecked(&mut frame[..ETH_LEN + ip_len]);
    e.set_dst_addr(sender_mac);
    e.set_src_addr(eth(gw_mac));
    e.set_ethertype(EthernetProtocol::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(e.payload_mut());
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(ip_len as u16);
    ip.set_ident(0);
    ip.clear_flags();
    ip.set_dont_frag(true);
    ip.set_frag_offset(0);
    ip.set_hop_limit(64);
    ip.set_next_header(IpProtocol::Icmp);
    ip.set_src_addr(gateway);
    ip.set_dst_addr(sender_ip);
    ip.fill_checksum();
    let mut icmp = Icmpv4Packet::new_unchecked(ip.payload_mut());
    icmp.set_msg_type(Icmpv4Message::DstUnreachable);
    icmp.set_msg_code(4);
    // Bytes 4-5 unused, 6-7 the next-hop MTU (RFC 1191).
    icmp.set_echo_ident(0);
    icmp.set_echo_seq_no(mtu);
    icmp.data_mut()[..quote_len].copy_from_slice(&quote[..quote_len]);
    icmp.fill_checksum();
    ETH_LEN + ip_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_headers_round_trip_and_need_the_i_flag() {
        let mut h = [0u8; 8];
        put_vxlan(&mut h, 0x12_3456);
        assert_eq!(h, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(vxlan_vni(&h), Some(0x12_3456));
        h[0] = 0;
        assert_eq!(vxlan_vni(&h), None);
        assert_eq!(vxlan_vni(&[0x08, 0, 0]), None);
    }
}
