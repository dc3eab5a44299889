//! Tunnel offload: VXLAN in and out through a TAP in the node's namespace that carries whole
//! 64 KiB packets (GSO over UDP tunnels, Linux 6.17), instead of through UDP sockets.
//!
//! Out, qnetd writes a pod's TSO frame behind an outer Ethernet, IPv4, UDP and VXLAN header,
//! with a virtio-net header that says "TCP segments of `mss` inside a UDP tunnel, inner checksum
//! partial"; the kernel forwards it from the TAP to the underlay (the node must forward IPv4)
//! and cuts it, or lets it travel whole through veths and bridges, as its own VXLAN device's
//! packets do. In, a tc filter on the underlay link redirects UDP to our VXLAN port to the TAP
//! (`qnet_netns::UdpRedirect`), so a packet that arrives whole is read whole. qnetd then
//! computes no checksum and cuts or joins nothing, and one packet is one system call each way.
//!
//! A read is parsed here with nothing trusted: the outer headers are checked as the kernel's
//! UDP stack would have, and a checksum nobody vouched for is verified.

use std::fs;
use std::net::Ipv4Addr;
use std::ops::Range;

use anyhow::{bail, Context};
use qnet::phy::tap::{Tap, TapOptions, VNET_TUNNEL_HDR_LEN};
use qnet::phy::vnet::{csum_add, csum_fold, VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4};
use qnet_netns::{Netns, UdpRedirect};

use crate::forward::DropReason;
use crate::wire::{ETH_LEN, VXLAN_LEN};

/// The virtio-net header of a tunnel TAP frame.
pub const VNET_LEN: usize = VNET_TUNNEL_HDR_LEN;
const IP_LEN: usize = 20;
const UDP_LEN: usize = 8;
/// Outer Ethernet, IPv4 and UDP headers.
const OUTER_LEN: usize = ETH_LEN + IP_LEN + UDP_LEN;
/// Everything in front of a VXLAN header in a tunnel TAP frame.
pub const FRONT: usize = VNET_LEN + OUTER_LEN;
/// From the outer Ethernet header to the inner one.
const ENCAP: usize = OUTER_LEN + VXLAN_LEN;
/// `gso_type` bits: a UDP tunnel over IPv4 / IPv6, and the TCP ECN bit.
const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
const GSO_UDP_TUNNEL_IPV6: u8 = 0x40;
const GSO_ECN: u8 = 0x80;
/// Outer frames must stay below a device's default GSO limit (64 KiB with the Ethernet
/// header): the kernel would otherwise segment one in software on its way out, which drops
/// tunnel packets from a TAP (measured: `validate_xmit_skb` freed them). Endpoints' TAPs are
/// limited so their frames fit; a larger frame is cut instead.
pub const MAX_FRAME: usize = 65_535;

/// Whether to use the tunnel device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Never: VXLAN goes through UDP sockets.
    Off,
    /// When the kernel and the node allow it; else (logged) through UDP sockets.
    Auto,
    /// Always; the daemon does not start without it.
    On,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "off" => Ok(Mode::Off),
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            _ => Err(format!("{s:?} is not one of off, auto, on")),
        }
    }
}

/// The tunnel device and the redirect that feeds it.
pub struct Tunnel {
    pub tap: Tap,
    pub encap: Encap,
    /// Dropping it removes the filter; the daemon takes it to remove it when it stops.
    redirect: Option<UdpRedirect>,
}

/// Builds and parses the outer headers of tunnel TAP frames.
pub struct Encap {
    /// The TAP's MAC: frames written to it must be addressed to it to be taken in.
    mac: [u8; 6],
    local: Ipv4Addr,
    port: u16,
    ip_id: u16,
}

/// Reads a sysctl of this namespace.
fn sysctl(path: &str) -> anyhow::Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

fn set_sysctl(path: &str, value: &str) -> anyhow::Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value} to {path}"))
}

impl Tunnel {
    /// Sets the tunnel device `name` up for VXLAN to and from `local:port`, as `mode` says:
    /// `None` when it is off or (in `Auto`) the kernel or the node does not allow it.
    pub fn open(
        mode: Mode,
        name: &str,
        local: Ipv4Addr,
        port: u16,
        mtu: u32,
    ) -> anyhow::Result<Option<Tunnel>> {
        if mode == Mode::Off {
            return Ok(None);
        }
        match Tunnel::open_here(name, local, port, mtu) {
            Ok(t) => {
                tracing::info!(
                    device = name,
                    "tunnel offload on: VXLAN moves whole through {name}"
                );
                Ok(Some(t))
            }
            Err(e) if mode == Mode::Auto => {
                tracing::info!("tunnel offload off, VXLAN goes through UDP sockets: {e:#}");
                Ok(None)
            }
            Err(e) => Err(e.context("setting up tunnel offload (--tunnel-offload on)")),
        }
    }

    fn open_here(name: &str, local: Ipv4Addr, port: u16, mtu: u32) -> anyhow::Result<Tunnel> {
        // What leaves through the TAP is forwarded: a node that does not forward, or checks
        // source addresses strictly (our packets carry the node's own), would drop it.
        if sysctl("/proc/sys/net/ipv4/ip_forward")? != "1" {
            bail!("the node does not forward IPv4 (net.ipv4.ip_forward is 0)");
        }
        if sysctl("/proc/sys/net/ipv4/conf/all/rp_filter")? == "1" {
            bail!("strict reverse path filtering (net.ipv4.conf.all.rp_filter is 1)");
        }
        let tap = Tap::create(&TapOptions {
            name: name.to_string(),
            netns: None,
            mtu,
            peer_addr: None,
            offloads: true,
            persist: false,
        })
        .with_context(|| format!("creating the tunnel device {name}"))?;
        tap.enable_udp_tunnel_offload()
            .context("the kernel has no GSO over UDP tunnels on TAPs (Linux 6.17 or later)")?;
        let conf = format!("/proc/sys/net/ipv4/conf/{name}");
        set_sysctl(&format!("{conf}/accept_local"), "1")?;
        set_sysctl(&format!("{conf}/rp_filter"), "0")?;
        let here = Netns::current()?;
        // Nothing of the kernel's own should leave through it (IPv6 autoconfiguration would).
        here.disable_ipv6(name)?;
        if sysctl(&format!("{conf}/forwarding"))? != "1" {
            bail!("{name} does not forward IPv4");
        }
        let mac = tap.mac()?;
        let redirect = here
            .redirect_udp(local, port, name)
            .with_context(|| format!("redirecting VXLAN to {local}:{port} to {name}"))?;
        Ok(Tunnel {
            tap,
            encap: Encap::new(mac, local, port),
            redirect: Some(redirect),
        })
    }

    /// The redirect, for whoever removes it when the daemon stops: left in place, it would
    /// send the node's VXLAN to a device that no longer exists.
    pub fn take_redirect(&mut self) -> Option<UdpRedirect> {
        self.redirect.take()
    }
}

impl Encap {
    pub fn new(mac: [u8; 6], local: Ipv4Addr, port: u16) -> Encap {
        Encap {
            mac,
            local,
            port,
            ip_id: 0,
        }
    }

    /// Writes into `front` (the [`FRONT`] bytes before a VXLAN datagram of `datagram_len`
    /// bytes: its header and inner frame) the virtio-net header and outer headers that send it
    /// to `node` from source port `sport`. `inner` is the inner frame's virtio-net header as
    /// its TAP gave it: a TSO frame stays one, a partial checksum stays partial. It must not
    /// be TSO with one segment's payload or less (the kernel would take its options for payload,
    /// count two segments and fail to cut it: measured, every such frame dropped). False when
    /// the frame cannot go whole (too large, or TSO without a partial checksum): the caller
    /// cuts it.
    pub fn put_front(
        &mut self,
        front: &mut [u8],
        node: Ipv4Addr,
        sport: u16,
        datagram_len: usize,
        inner: &VnetHdr,
    ) -> bool {
        let ip_len = IP_LEN + UDP_LEN + datagram_len;
        if front.len() != FRONT || ETH_LEN + ip_len > MAX_FRAME {
            return false;
        }
        let vnet = if inner.gso_type == GSO_TCPV4 || inner.gso_type == GSO_TCPV4 | GSO_ECN {
            if inner.flags & F_NEEDS_CSUM == 0 || inner.gso_size == 0 {
                return false;
            }
            let shift = ENCAP as u16;
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: inner.gso_type | GSO_UDP_TUNNEL_IPV4,
                hdr_len: inner.hdr_len.saturating_add(shift),
                gso_size: inner.gso_size,
                csum_start: inner.csum_start.saturating_add(shift),
                csum_offset: inner.csum_offset,
            }
        } else if inner.gso_type == 0 {
            // A partial checksum stays partial, moved to where the inner frame now starts.
            let partial = inner.flags & F_NEEDS_CSUM != 0;
            VnetHdr {
                flags: inner.flags & F_NEEDS_CSUM,
                csum_start: if partial {
                    inner.csum_start.saturating_add(ENCAP as u16)
                } else {
                    0
                },
                csum_offset: if partial { inner.csum_offset } else { 0 },
                ..VnetHdr::default()
            }
        } else {
            return false;
        };
        front.fill(0);
        vnet.write(&mut front[..VNET_LEN]);
        if vnet.gso_type != 0 {
            // Where the outer UDP and the inner IP headers start, from the outer Ethernet one.
            front[20..22].copy_from_slice(&((ETH_LEN + IP_LEN) as u16).to_le_bytes());
            front[22..24].copy_from_slice(&((ENCAP + ETH_LEN) as u16).to_le_bytes());
        }
        let eth = &mut front[VNET_LEN..VNET_LEN + ETH_LEN];
        eth[..6].copy_from_slice(&self.mac);
        // Any other unicast source: the TAP's own address with the last bit flipped.
        eth[6..12].copy_from_slice(&self.mac);
        eth[11] ^= 1;
        eth[12..14].copy_from_slice(&[0x08, 0x00]);
        self.ip_id = self.ip_id.wrapping_add(1);
        let ip = &mut front[VNET_LEN + ETH_LEN..VNET_LEN + ETH_LEN + IP_LEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        // Don't fragment (RFC 7348 section 4.3: VTEPs must not fragment).
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&self.local.octets());
        ip[16..20].copy_from_slice(&node.octets());
        let sum = !csum_fold(csum_add(0, ip));
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let udp = &mut front[VNET_LEN + ETH_LEN + IP_LEN..];
        udp[..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&self.port.to_be_bytes());
        // The outer UDP checksum stays zero, as Linux's VXLAN sends over IPv4 by default
        // (RFC 7348 section 5); the inner frame carries its own.
        udp[4..6].copy_from_slice(&((UDP_LEN + datagram_len) as u16).to_be_bytes());
        true
    }

    /// Parses a read from the tunnel TAP (`buf`: virtio-net header and frame).
    pub fn parse(&self, buf: &[u8]) -> Result<Arrival, DropReason> {
        parse(buf, self.local, self.port)
    }
}

/// A VXLAN packet read from the tunnel device.
#[derive(Debug, PartialEq, Eq)]
pub struct Arrival {
    /// The node that sent it (the outer source address).
    pub node: Ipv4Addr,
    /// The VXLAN header and inner frame, in the buffer read.
    pub datagram: Range<usize>,
    /// The virtio-net header to give the inner frame to a TAP: a TSO frame's segmentation and
    /// partial checksum moved to the inner frame, or nothing.
    pub inner: VnetHdr,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Parses `buf` (a tunnel TAP read) as a VXLAN packet to `local:port`.
pub fn parse(buf: &[u8], local: Ipv4Addr, port: u16) -> Result<Arrival, DropReason> {
    use DropReason::{Malformed, Unsupported};
    let vnet = VnetHdr::parse(buf).ok_or(Malformed)?;
    let frame = buf.get(VNET_LEN..).ok_or(Malformed)?;
    if frame.len() < ETH_LEN || frame[12..14] != [0x08, 0x00] {
        // The kernel's own traffic out of the device (IPv6 neighbour discovery, should it
        // be enabled there), not ours.
        return Err(DropReason::Ignored);
    }
    if frame.len() < ENCAP {
        return Err(Malformed);
    }
    let ip = &frame[ETH_LEN..];
    let udp = &ip[IP_LEN..];
    // The redirect matches only these; anything else did not come through it.
    if ip[0] != 0x45
        || ip[9] != 17
        || u16_at(ip, 6) & 0x3fff != 0
        || ip[16..20] != local.octets()
        || u16_at(udp, 2) != port
    {
        return Err(Malformed);
    }
    let node = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let at = VNET_LEN + OUTER_LEN;
    let tunnel = vnet.gso_type & (GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6);
    if tunnel != 0 {
        // Segments of a TCP frame inside: only TCP/IPv4 in IPv4, with the partial checksum
        // in the inner frame (virtio requires NEEDS_CSUM for tunnel GSO).
        let inner_type = vnet.gso_type & !(GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6 | GSO_ECN);
        if tunnel != GSO_UDP_TUNNEL_IPV4 || inner_type != GSO_TCPV4 {
            return Err(Unsupported);
        }
        let shift = ENCAP as u16;
        if vnet.flags & F_NEEDS_CSUM == 0
            || vnet.gso_size == 0
            || vnet.csum_start < shift + (ETH_LEN + IP_LEN) as u16
        {
            return Err(Malformed);
        }
        return Ok(Arrival {
            node,
            datagram: at..buf.len(),
            inner: VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: vnet.gso_type & !GSO_UDP_TUNNEL_IPV4,
                hdr_len: vnet.hdr_len.saturating_sub(shift),
                gso_size: vnet.gso_size,
                csum_start: vnet.csum_start - shift,
                csum_offset: vnet.csum_offset,
            },
        });
    }
    if vnet.gso_type != 0 {
        return Err(Unsupported);
    }
    // One packet: its lengths must hold (a short frame may carry Ethernet padding).
    let ip_len = usize::from(u16_at(ip, 2));
    let udp_len = usize::from(u16_at(udp, 4));
    if ip_len > ip.len()
        || ip_len < IP_LEN + UDP_LEN + VXLAN_LEN
        || udp_len < UDP_LEN + VXLAN_LEN
        || udp_len > ip_len - IP_LEN
    {
        return Err(Malformed);
    }
    let end = at + udp_len - UDP_LEN;
    let partial_inner = vnet.flags & F_NEEDS_CSUM != 0 && usize::from(vnet.csum_start) >= ENCAP;
    let vouched = vnet.flags & (F_NEEDS_CSUM | F_DATA_VALID) != 0;
    let sum = u16_at(udp, 6);
    if !vouched && sum != 0 {
        // Nobody checked the outer checksum: a damaged VXLAN header could name another VNI.
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&ip[12..20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
        let s = csum_add(csum_add(0, &pseudo), &udp[..udp_len]);
        if csum_fold(s) != 0xffff {
            return Err(Malformed);
        }
    }
    let inner = if partial_inner {
        // A local sender left the inner checksum partial: the receiving TAP's kernel ends it.
        VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: vnet.csum_start - ENCAP as u16,
            csum_offset: vnet.csum_offset,
            ..VnetHdr::default()
        }
    } else {
        VnetHdr::default()
    };
    Ok(Arrival {
        node,
        datagram: at..end,
        inner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

    /// A VXLAN datagram (header and a frame of `inner_len` bytes) behind a front built by
    /// node NODE's Encap for LOCAL.
    fn sent(inner: &VnetHdr, inner_len: usize) -> Option<Vec<u8>> {
        let mut e = Encap::new(MAC, NODE, 4789);
        let mut buf = vec![0u8; FRONT + VXLAN_LEN + inner_len];
        crate::wire::put_vxlan(&mut buf[FRONT..FRONT + VXLAN_LEN], 42);
        for (i, b) in buf[FRONT + VXLAN_LEN..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let len = VXLAN_LEN + inner_len;
        e.put_front(&mut buf[..FRONT], LOCAL, 50_000, len, inner)
            .then_some(buf)
    }

    #[test]
    fn a_plain_frame_goes_out_with_valid_outer_headers_and_parses_back() {
        let buf = sent(&VnetHdr::default(), 100).expect("fits");
        assert_eq!(&buf[..VNET_LEN], &[0u8; VNET_LEN]);
        let ip = &buf[VNET_LEN + ETH_LEN..];
        assert_eq!(csum_fold(csum_add(0, &ip[..IP_LEN])), 0xffff, "IP checksum");
        assert_eq!(u16_at(ip, 2) as usize, IP_LEN + UDP_LEN + VXLAN_LEN + 100);
        // The receiving node parses what this node sent.
        let a = parse(&buf, LOCAL, 4789).expect("parses");
        assert_eq!(a.node, NODE);
        assert_eq!(a.datagram, FRONT..buf.len());
        assert_eq!(a.inner, VnetHdr::default());
        assert_eq!(crate::wire::vxlan_vni(&buf[a.datagram]), Some(42));
    }

    #[test]
    fn a_tso_frame_keeps_its_segmentation_and_partial_checksum_both_ways() {
        let inner = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        let buf = sent(&inner, 60_000).expect("fits");
        let out = VnetHdr::parse(&buf).expect("header");
        assert_eq!(out.gso_type, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4);
        assert_eq!(out.csum_start, 34 + ENCAP as u16);
        assert_eq!(u16::from_le_bytes([buf[20], buf[21]]), 34);
        assert_eq!(
            u16::from_le_bytes([buf[22], buf[23]]),
            64,
            "the inner IP header"
        );
        let a = parse(&buf, LOCAL, 4789).expect("parses");
        assert_eq!(
            a.inner, inner,
            "the receiving TAP gets the sender's header back"
        );
    }

    #[test]
    fn what_cannot_go_whole_is_refused() {
        let tso = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert!(
            sent(&tso, MAX_FRAME - OUTER_LEN - VXLAN_LEN).is_some(),
            "just fits"
        );
        assert!(
            sent(&tso, MAX_FRAME - OUTER_LEN - VXLAN_LEN + 1).is_none(),
            "over the GSO limit"
        );
        let no_csum = VnetHdr { flags: 0, ..tso };
        assert!(
            sent(&no_csum, 1000).is_none(),
            "TSO without a partial checksum"
        );
        let partial = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let buf = sent(&partial, 1000).expect("a plain frame with a partial checksum");
        assert_eq!(
            parse(&buf, LOCAL, 4789).expect("parses").inner,
            partial,
            "the partial checksum reaches the receiving TAP"
        );
    }

    #[test]
    fn reads_that_did_not_come_through_the_redirect_are_refused() {
        let good = sent(&VnetHdr::default(), 100).expect("fits");
        assert!(parse(&good, NODE, 4789).is_err(), "another address");
        assert!(parse(&good, LOCAL, 4790).is_err(), "another port");
        let mut frag = good.clone();
        frag[VNET_LEN + ETH_LEN + 6] |= 0x20;
        assert_eq!(parse(&frag, LOCAL, 4789), Err(DropReason::Malformed));
        let mut long = good.clone();
        let at = VNET_LEN + ETH_LEN + IP_LEN + 4;
        long[at..at + 2].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&long, LOCAL, 4789), Err(DropReason::Malformed));
        assert_eq!(parse(&good[..40], LOCAL, 4789), Err(DropReason::Malformed));
        let mut v6 = good.clone();
        v6[VNET_LEN + 12..VNET_LEN + 14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(
            parse(&v6, LOCAL, 4789),
            Err(DropReason::Ignored),
            "the kernel's own"
        );
    }

    #[test]
    fn an_outer_checksum_nobody_checked_is_verified() {
        let mut buf = sent(&VnetHdr::default(), 100).expect("fits");
        let ip = VNET_LEN + ETH_LEN;
        let udp = ip + IP_LEN;
        let len = usize::from(u16_at(&buf, udp + 4));
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&buf[ip + 12..ip + 20]);
        pseudo[9] = 17;
        pseudo[10..12].copy_from_slice(&(len as u16).to_be_bytes());
        let sum = !csum_fold(csum_add(csum_add(0, &pseudo), &buf[udp..udp + len]));
        buf[udp + 6..udp + 8].copy_from_slice(&sum.to_be_bytes());
        assert!(parse(&buf, LOCAL, 4789).is_ok(), "a right checksum");
        // The VNI damaged on the way: the checksum catches it.
        buf[FRONT + 5] ^= 1;
        assert_eq!(parse(&buf, LOCAL, 4789), Err(DropReason::Malformed));
        // Vouched for by the kernel (DATA_VALID): not verified again.
        buf[0] = F_DATA_VALID;
        assert!(parse(&buf, LOCAL, 4789).is_ok());
    }

    #[test]
    fn arbitrary_reads_never_panic() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..200))| {
            let _ = parse(&bytes, LOCAL, 4789);
        });
    }
}
