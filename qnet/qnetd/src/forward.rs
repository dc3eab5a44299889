//! The forwarding decision, apart from any I/O: given a frame and where it came from (a local
//! endpoint, or a VXLAN datagram from a node), where it goes. Frames are rewritten in place
//! (MACs, or the whole frame when the daemon answers). Every frame that is not forwarded is
//! dropped for a counted [`DropReason`]; a frame never leaves the VPC it arrived in.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::{Mac, Place, Protocol, Rule, State};
use crate::wire::{self, L4};

/// The data plane's handle for a local endpoint.
pub type EndpointId = u32;

/// Where an address of a VPC is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    Local(EndpointId),
    Remote(Ipv4Addr),
}

#[derive(Clone, Copy, Debug)]
struct Member {
    mac: Mac,
    dest: Dest,
}

#[derive(Clone, Copy, Debug)]
struct VpcView {
    gateway: Ipv4Addr,
    gw_mac: Mac,
}

#[derive(Clone, Debug)]
struct LocalView {
    vni: u32,
    ip: Ipv4Addr,
    mac: Mac,
    /// The rules of its security group: with one, ingress is denied unless a rule allows it
    /// or it answers a flow the endpoint started.
    rules: Option<Arc<[Rule]>>,
}

/// The state as the data plane looks it up, rebuilt whenever the state changes.
#[derive(Debug, Default)]
pub struct Tables {
    vpcs: HashMap<u32, VpcView>,
    members: HashMap<(u32, Ipv4Addr), Member>,
    locals: HashMap<EndpointId, LocalView>,
    /// The largest IP packet an endpoint may send (the overlay MTU).
    mtu: usize,
}

impl Tables {
    /// Builds the tables of `state`; `ids` names the data plane's id of each local endpoint
    /// that is attached (one that is not, is not reachable).
    pub fn new(state: &State, ids: &HashMap<String, EndpointId>, mtu: u32) -> Tables {
        let mut t = Tables {
            mtu: mtu as usize,
            ..Tables::default()
        };
        for v in state.vpcs.values() {
            t.vpcs.insert(
                v.vni,
                VpcView {
                    gateway: v.gateway,
                    gw_mac: v.gateway_mac(),
                },
            );
        }
        let groups: HashMap<&str, Arc<[Rule]>> = state
            .security_groups
            .values()
            .map(|g| (g.name.as_str(), Arc::from(g.rules.as_slice())))
            .collect();
        for e in state.endpoints.values() {
            let Some(vpc) = state.vpcs.get(&e.vpc) else {
                continue;
            };
            let dest = match &e.place {
                Place::Local { .. } | Place::Ring { .. } => match ids.get(&e.name) {
                    Some(id) => {
                        t.locals.insert(
                            *id,
                            LocalView {
                                vni: vpc.vni,
                                ip: e.ip,
                                mac: e.mac,
                                rules: e
                                    .security_group
                                    .as_deref()
                                    .and_then(|g| groups.get(g).cloned()),
                            },
                        );
                        Dest::Local(*id)
                    }
                    None => continue,
                },
                Place::Remote { node } => Dest::Remote(*node),
            };
            t.members
                .insert((vpc.vni, e.ip), Member { mac: e.mac, dest });
        }
        t
    }

    /// The VNI of local endpoint `id`, if it is attached.
    pub fn vni_of(&self, id: EndpointId) -> Option<u32> {
        self.locals.get(&id).map(|l| l.vni)
    }
}

/// Why a frame was not forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not a well-formed Ethernet/ARP/IPv4 frame or VXLAN header.
    Malformed,
    /// A source that is not the sender's own: another MAC or IP than the endpoint's, or an
    /// overlay frame from a node that does not host its source.
    Spoofed,
    /// A VXLAN network identifier of no VPC here.
    UnknownVni,
    /// No endpoint has the destination in this VPC (or it is not on this node, for a frame
    /// from the overlay).
    NoRoute,
    /// Neither IPv4 nor ARP (IPv6, LLDP...), or a broadcast that is not ARP.
    Unsupported,
    /// An IPv4 packet over the overlay MTU that may be fragmented: the daemon does not
    /// fragment.
    TooBig,
    /// Frames the daemon takes note of and need no answer (ARP replies, probes, gratuitous
    /// ARP, anything to the gateway but ping).
    Ignored,
    /// The endpoint was detached while the frame was on its way.
    Detached,
    /// The destination's security group does not allow it.
    Denied,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::Spoofed,
        DropReason::UnknownVni,
        DropReason::NoRoute,
        DropReason::Unsupported,
        DropReason::TooBig,
        DropReason::Ignored,
        DropReason::Detached,
        DropReason::Denied,
    ];
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Spoofed => "spoofed",
            DropReason::UnknownVni => "unknown_vni",
            DropReason::NoRoute => "no_route",
            DropReason::Unsupported => "unsupported",
            DropReason::TooBig => "too_big",
            DropReason::Ignored => "ignored",
            DropReason::Detached => "detached",
            DropReason::Denied => "denied",
        }
    }
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to local endpoint `0`.
    Deliver(EndpointId),
    /// Send it in VXLAN with `vni` to the node at `node`.
    Encap {
        node: Ipv4Addr,
        vni: u32,
    },
    /// Send it back where it came from (the daemon answered it).
    Reply,
    Drop(DropReason),
}

fn drop(reason: DropReason) -> (Verdict, usize) {
    (Verdict::Drop(reason), 0)
}

/// Decides for `frame`, sent by local endpoint `from`; the verdict and the frame's length now.
/// `mss` is non-zero for a large TCP frame the kernel leaves to be cut into segments of that
/// payload size (TSO): then the segments, not the frame, must fit the MTU.
pub fn from_local(
    t: &Tables,
    ct: &mut Conntrack,
    from: EndpointId,
    frame: &mut [u8],
    mss: u16,
) -> (Verdict, usize) {
    let Some(me) = t.locals.get(&from).cloned() else {
        return drop(DropReason::Detached);
    };
    let Some(vpc) = t.vpcs.get(&me.vni).copied() else {
        return drop(DropReason::Detached);
    };
    if frame.len() < wire::ETH_LEN {
        return drop(DropReason::Malformed);
    }
    if frame[6..12] != me.mac.0 {
        return drop(DropReason::Spoofed);
    }
    if let Some(req) = wire::arp_request(frame) {
        if req.sender_mac != me.mac {
            return drop(DropReason::Spoofed);
        }
        if req.sender_ip != me.ip || req.target_ip == me.ip {
            // Address probes (sender 0.0.0.0) and announcements need no answer.
            return drop(
                if req.sender_ip.is_unspecified() || req.target_ip == me.ip {
                    DropReason::Ignored
                } else {
                    DropReason::Spoofed
                },
            );
        }
        let answer = if req.target_ip == vpc.gateway {
            vpc.gw_mac
        } else {
            match t.members.get(&(me.vni, req.target_ip)) {
                Some(m) => m.mac,
                None => return drop(DropReason::NoRoute),
            }
        };
        return (Verdict::Reply, wire::make_arp_reply(frame, &req, answer));
    }
    let Some(ip) = wire::ipv4_head(frame) else {
        return drop(
            if frame[12..14] == [0x08, 0x00] || frame[12..14] == [0x08, 0x06] {
                DropReason::Malformed
            } else {
                DropReason::Unsupported
            },
        );
    };
    if ip.src != me.ip {
        return drop(DropReason::Spoofed);
    }
    if mss > 0 {
        if let Err(reason) = segments_fit(t, frame, mss) {
            return drop(reason);
        }
    } else if ip.total_len > t.mtu {
        if !ip.dont_frag {
            return drop(DropReason::TooBig);
        }
        let mtu = t.mtu.min(usize::from(u16::MAX)) as u16;
        return (
            Verdict::Reply,
            wire::make_frag_needed(frame, vpc.gateway, vpc.gw_mac, mtu),
        );
    }
    let len = wire::ETH_LEN + ip.total_len;
    if ip.dst == vpc.gateway {
        if ip.icmp_echo_request {
            return (
                Verdict::Reply,
                wire::make_echo_reply(&mut frame[..len], vpc.gw_mac),
            );
        }
        return drop(DropReason::Ignored);
    }
    let Some(to) = t.members.get(&(me.vni, ip.dst)).copied() else {
        return drop(if ip.dst.is_broadcast() || ip.dst.is_multicast() {
            DropReason::Unsupported
        } else {
            DropReason::NoRoute
        });
    };
    if me.rules.is_some() {
        ct.note_egress(me.vni, me.ip, ip.dst, ip.l4);
    }
    if let Dest::Local(id) = to.dest {
        if !admits(t, ct, id, &ip) {
            return drop(DropReason::Denied);
        }
    }
    wire::set_macs(frame, to.mac, me.mac);
    match to.dest {
        Dest::Local(id) => (Verdict::Deliver(id), len),
        Dest::Remote(node) => (Verdict::Encap { node, vni: me.vni }, len),
    }
}

/// Whether each `mss`-byte segment of the large TCP frame `frame` fits the overlay MTU.
fn segments_fit(t: &Tables, frame: &[u8], mss: u16) -> Result<(), DropReason> {
    // IP and TCP headers (at most 60 each) and one segment's payload.
    let segment =
        crate::gso::tcp_frame(frame).map(|f| f.header_len - wire::ETH_LEN + usize::from(mss));
    match segment {
        Some(len) if len <= t.mtu => Ok(()),
        Some(_) => Err(DropReason::TooBig),
        None => Err(DropReason::Unsupported),
    }
}

/// Decides for `frame`, which arrived in VXLAN with `vni` from the node at `node`; the verdict
/// and the frame's length now. A reply goes back to `node` with the same VNI. `mss` is
/// non-zero for a large TCP frame that arrived whole (tunnel offload), as in [`from_local`].
pub fn from_overlay(
    t: &Tables,
    ct: &mut Conntrack,
    node: Ipv4Addr,
    vni: u32,
    frame: &mut [u8],
    mss: u16,
) -> (Verdict, usize) {
    let Some(vpc) = t.vpcs.get(&vni).copied() else {
        return drop(DropReason::UnknownVni);
    };
    if frame.len() < wire::ETH_LEN {
        return drop(DropReason::Malformed);
    }
    // The source must be a member that this node hosts, with its own MAC.
    let sender_is = |ip: Ipv4Addr, mac: &[u8]| {
        t.members
            .get(&(vni, ip))
            .is_some_and(|m| m.dest == Dest::Remote(node) && m.mac.0 == mac)
    };
    if let Some(req) = wire::arp_request(frame) {
        if !sender_is(req.sender_ip, &req.sender_mac.0) {
            return drop(DropReason::Spoofed);
        }
        let answer = match t.members.get(&(vni, req.target_ip)) {
            Some(m) if matches!(m.dest, Dest::Local(_)) => m.mac,
            // Kernel VXLAN nodes flood requests to every node: only the owner answers.
            _ => return drop(DropReason::NoRoute),
        };
        return (Verdict::Reply, wire::make_arp_reply(frame, &req, answer));
    }
    let Some(ip) = wire::ipv4_head(frame) else {
        return drop(if frame[12..14] == [0x08, 0x00] {
            DropReason::Malformed
        } else if frame[12..14] == [0x08, 0x06] {
            DropReason::Ignored
        } else {
            DropReason::Unsupported
        });
    };
    if !sender_is(ip.src, &frame[6..12]) {
        return drop(DropReason::Spoofed);
    }
    if mss > 0 {
        if let Err(reason) = segments_fit(t, frame, mss) {
            return drop(reason);
        }
    } else if ip.total_len > t.mtu {
        return drop(DropReason::TooBig);
    }
    let len = wire::ETH_LEN + ip.total_len;
    if ip.dst == vpc.gateway && ip.icmp_echo_request {
        return (
            Verdict::Reply,
            wire::make_echo_reply(&mut frame[..len], vpc.gw_mac),
        );
    }
    match t.members.get(&(vni, ip.dst)).copied() {
        Some(Member {
            mac,
            dest: Dest::Local(id),
        }) => {
            if !admits(t, ct, id, &ip) {
                return drop(DropReason::Denied);
            }
            frame[..6].copy_from_slice(&mac.0);
            (Verdict::Deliver(id), len)
        }
        _ => drop(DropReason::NoRoute),
    }
}

/// Whether local endpoint `id` may receive the packet `ip`: always without a security group;
/// with one, if a rule allows it or it answers a flow the endpoint started.
fn admits(t: &Tables, ct: &mut Conntrack, id: EndpointId, ip: &wire::Ipv4Head) -> bool {
    let Some(to) = t.locals.get(&id) else {
        return false;
    };
    let Some(rules) = &to.rules else {
        return true;
    };
    rules.iter().any(|r| rule_allows(r, ip.src, ip.l4))
        || ct.is_reply(to.vni, ip.dst, ip.src, ip.l4)
}

fn rule_allows(r: &Rule, src: Ipv4Addr, l4: L4) -> bool {
    let in_ports = |port: u16| r.ports.is_none_or(|p| (p.first..=p.last).contains(&port));
    r.cidr.contains(src)
        && match (r.protocol, l4) {
            (Protocol::Any, _) => true,
            (Protocol::Tcp, L4::Tcp { dst, .. }) | (Protocol::Udp, L4::Udp { dst, .. }) => {
                in_ports(dst)
            }
            (Protocol::Icmp, L4::IcmpEcho { .. } | L4::Other { protocol: 1 }) => true,
            _ => false,
        }
}

/// A flow as its endpoint sees it: protocol, its own port, the peer's port (for ICMP echo,
/// the identifier and 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    vni: u32,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    protocol: u8,
    local_port: u16,
    remote_port: u16,
}

/// How long a flow is remembered without traffic.
const FLOW_IDLE: Duration = Duration::from_secs(300);
/// Flows remembered at most; beyond it new flows get no reply path until old ones expire.
const MAX_FLOWS: usize = 1 << 18;

/// Connection tracking for security groups: the flows that guarded endpoints started, so
/// their replies pass.
#[derive(Debug)]
pub struct Conntrack {
    flows: HashMap<FlowKey, Instant>,
    sweep_at: Instant,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            flows: HashMap::new(),
            sweep_at: Instant::now() + FLOW_IDLE,
        }
    }
}

impl Conntrack {
    fn key(vni: u32, local: Ipv4Addr, remote: Ipv4Addr, l4: L4, outgoing: bool) -> Option<FlowKey> {
        let (protocol, local_port, remote_port) = match l4 {
            L4::Tcp { src, dst } if outgoing => (6, src, dst),
            L4::Tcp { src, dst } => (6, dst, src),
            L4::Udp { src, dst } if outgoing => (17, src, dst),
            L4::Udp { src, dst } => (17, dst, src),
            L4::IcmpEcho { request, ident } if request == outgoing => (1, ident, 0),
            _ => return None,
        };
        Some(FlowKey {
            vni,
            local,
            remote,
            protocol,
            local_port,
            remote_port,
        })
    }

    /// Notes that `local` sent `l4` to `remote`.
    fn note_egress(&mut self, vni: u32, local: Ipv4Addr, remote: Ipv4Addr, l4: L4) {
        let Some(key) = Self::key(vni, local, remote, l4, true) else {
            return;
        };
        let now = Instant::now();
        if now >= self.sweep_at || self.flows.len() >= MAX_FLOWS {
            self.flows
                .retain(|_, seen| now.duration_since(*seen) < FLOW_IDLE);
            self.sweep_at = now + Duration::from_secs(10);
        }
        if self.flows.len() < MAX_FLOWS || self.flows.contains_key(&key) {
            self.flows.insert(key, now);
        }
    }

    /// Whether `l4` from `remote` to `local` answers a flow `local` started.
    fn is_reply(&mut self, vni: u32, local: Ipv4Addr, remote: Ipv4Addr, l4: L4) -> bool {
        let Some(key) = Self::key(vni, local, remote, l4, false) else {
            return false;
        };
        match self.flows.get_mut(&key) {
            Some(seen) if seen.elapsed() < FLOW_IDLE => {
                *seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// What the data plane counts; read by the API's stats.
#[derive(Debug, Default)]
pub struct Counters {
    pub from_endpoints: AtomicU64,
    pub from_overlay: AtomicU64,
    pub delivered: AtomicU64,
    pub encapsulated: AtomicU64,
    pub replied: AtomicU64,
    pub send_errors: AtomicU64,
    /// Large TCP frames cut into segments for the underlay, and runs of received segments
    /// joined into one frame for a TAP (see [`crate::gso`]).
    pub cut: AtomicU64,
    pub joined: AtomicU64,
    /// VXLAN packets sent and received whole through the tunnel device ([`crate::tunnel`]).
    pub tunnel_out: AtomicU64,
    pub tunnel_in: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self, verdict: Verdict) {
        let c = match verdict {
            Verdict::Deliver(_) => &self.delivered,
            Verdict::Encap { .. } => &self.encapsulated,
            Verdict::Reply => &self.replied,
            Verdict::Drop(reason) => return self.count_drop(reason),
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            from_endpoints: get(&self.from_endpoints),
            from_overlay: get(&self.from_overlay),
            delivered: get(&self.delivered),
            encapsulated: get(&self.encapsulated),
            replied: get(&self.replied),
            send_errors: get(&self.send_errors),
            cut: get(&self.cut),
            joined: get(&self.joined),
            tunnel_out: get(&self.tunnel_out),
            tunnel_in: get(&self.tunnel_in),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (r.name(), get(&self.drops[*r as usize])))
                .collect(),
        }
    }
}

/// The counters at one moment, as the API shows them.
#[derive(Debug, Serialize)]
pub struct CountersSnapshot {
    pub from_endpoints: u64,
    pub from_overlay: u64,
    pub delivered: u64,
    pub encapsulated: u64,
    pub replied: u64,
    pub send_errors: u64,
    pub cut: u64,
    pub joined: u64,
    pub tunnel_out: u64,
    pub tunnel_in: u64,
    pub dropped: std::collections::BTreeMap<&'static str, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Vpc};
    use proptest::prelude::*;
    use smoltcp::wire::{EthernetFrame, Icmpv4Message, Icmpv4Packet, Ipv4Packet};

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);

    /// Red (VNI 1) and blue (VNI 2) share 10.0.0.0/24: red's .2 is local endpoint 1 and its
    /// .3 remote on NODE; blue's .2 is local endpoint 2 and its .3 remote on NODE too.
    fn tables() -> Tables {
        let mut s = State::default();
        for (name, vni) in [("red", 1), ("blue", 2)] {
            s.vpcs.insert(
                name.into(),
                Vpc {
                    name: name.into(),
                    vni,
                    cidr: "10.0.0.0/24".parse().unwrap(),
                    gateway: "10.0.0.1".parse().unwrap(),
                },
            );
            for (last, place) in [
                (
                    2,
                    Place::Local {
                        netns: "/x".into(),
                        ifname: format!("{name}0"),
                        existing: false,
                    },
                ),
                (3, Place::Remote { node: NODE }),
            ] {
                let ip = Ipv4Addr::new(10, 0, 0, last);
                let ep = format!("{name}{last}");
                s.endpoints.insert(
                    ep.clone(),
                    Endpoint {
                        name: ep,
                        vpc: name.into(),
                        ip,
                        mac: Mac([0x0a, vni as u8, 0, 0, 0, last]),
                        place,
                        security_group: None,
                    },
                );
            }
        }
        let ids = HashMap::from([("red2".to_string(), 1), ("blue2".to_string(), 2)]);
        Tables::new(&s, &ids, 1450)
    }

    fn red_mac(last: u8) -> [u8; 6] {
        [0x0a, 1, 0, 0, 0, last]
    }

    fn ipv4_frame(
        src_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        payload: &[u8],
        df: bool,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + payload.len()];
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + payload.len()) as u16);
        ip.set_dont_frag(df);
        ip.set_hop_limit(64);
        ip.set_next_header(smoltcp::wire::IpProtocol::Icmp);
        ip.set_src_addr(src.into());
        ip.set_dst_addr(dst.into());
        ip.payload_mut().copy_from_slice(payload);
        ip.fill_checksum();
        f
    }

    fn echo_request() -> Vec<u8> {
        let mut p = vec![0u8; 16];
        let mut icmp = Icmpv4Packet::new_unchecked(&mut p);
        icmp.set_msg_type(Icmpv4Message::EchoRequest);
        icmp.set_echo_ident(7);
        icmp.fill_checksum();
        p
    }

    #[test]
    fn within_a_vpc_frames_go_to_their_endpoint_and_the_gateway_answers() {
        let t = tables();
        // To the remote .3 of red: encapsulated with red's VNI, MACs set.
        let mut f = ipv4_frame(
            red_mac(2),
            [10, 0, 0, 2],
            [10, 0, 0, 3],
            &echo_request(),
            false,
        );
        let (v, len) = from_local(&t, &mut Conntrack::default(), 1, &mut f, 0);
        assert_eq!(v, Verdict::Encap { node: NODE, vni: 1 });
        assert_eq!(len, f.len());
        assert_eq!(f[..6], red_mac(3));
        // Ping of the gateway: an echo reply from the gateway's MAC with valid checksums.
        let mut f = ipv4_frame(
            red_mac(2),
            [10, 0, 0, 2],
            [10, 0, 0, 1],
            &echo_request(),
            false,
        );
        let (v, len) = from_local(&t, &mut Conntrack::default(), 1, &mut f, 0);
        assert_eq!(v, Verdict::Reply);
        let e = EthernetFrame::new_checked(&f[..len]).unwrap();
        assert_eq!(e.dst_addr().0, red_mac(2));
        let ip = Ipv4Packet::new_checked(e.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Icmpv4Message::EchoReply);
        assert!(icmp.verify_checksum());
        // Too big with DF: fragmentation needed, carrying the MTU.
        let mut f = ipv4_frame(red_mac(2), [10, 0, 0, 2], [10, 0, 0, 3], &[0u8; 1500], true);
        let (v, len) = from_local(&t, &mut Conntrack::default(), 1, &mut f, 0);
        assert_eq!(v, Verdict::Reply);
        let e = EthernetFrame::new_checked(&f[..len]).unwrap();
        let ip = Ipv4Packet::new_checked(e.payload()).unwrap();
        assert!(ip.verify_checksum());
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
        assert_eq!(icmp.msg_code(), 4);
        assert_eq!(icmp.echo_seq_no(), 1450);
        assert!(icmp.verify_checksum());
        // Without DF it is dropped, as are foreign sources.
        let mut f = ipv4_frame(
            red_mac(2),
            [10, 0, 0, 2],
            [10, 0, 0, 3],
            &[0u8; 1500],
            false,
        );
        assert_eq!(
            from_local(&t, &mut Conntrack::default(), 1, &mut f, 0).0,
            Verdict::Drop(DropReason::TooBig)
        );
        let mut f = ipv4_frame(red_mac(2), [10, 0, 0, 9], [10, 0, 0, 3], &[0u8; 8], false);
        assert_eq!(
            from_local(&t, &mut Conntrack::default(), 1, &mut f, 0).0,
            Verdict::Drop(DropReason::Spoofed)
        );
        // From the overlay: red's .3 on NODE reaches red's local .2, never blue's.
        let mut f = ipv4_frame(red_mac(3), [10, 0, 0, 3], [10, 0, 0, 2], &[0u8; 8], false);
        assert_eq!(
            from_overlay(&t, &mut Conntrack::default(), NODE, 1, &mut f.clone(), 0).0,
            Verdict::Deliver(1)
        );
        let other = Ipv4Addr::new(192, 168, 77, 3);
        assert_eq!(
            from_overlay(&t, &mut Conntrack::default(), other, 1, &mut f, 0).0,
            Verdict::Drop(DropReason::Spoofed)
        );
    }

    fn arbitrary_frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            // Valid Ethernet/IPv4 headers from red's .2 with random addresses and payload.
            (
                any::<[u8; 4]>(),
                proptest::collection::vec(any::<u8>(), 0..100),
                any::<bool>()
            )
                .prop_map(|(dst, payload, df)| ipv4_frame(
                    red_mac(2),
                    [10, 0, 0, 2],
                    dst,
                    &payload,
                    df
                )),
            (
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
                proptest::collection::vec(any::<u8>(), 0..100)
            )
                .prop_map(|(src, dst, payload)| ipv4_frame(
                    red_mac(3),
                    src,
                    dst,
                    &payload,
                    false
                )),
        ]
    }

    proptest! {
        /// Whatever a red endpoint or red's VNI carries, it never panics the forwarder and
        /// never reaches blue.
        #[test]
        fn no_frame_crosses_vpcs_or_panics(mut frame in arbitrary_frame(), arp in any::<bool>()) {
            let t = tables();
            if arp && frame.len() >= 14 {
                frame[12..14].copy_from_slice(&[0x08, 0x06]);
            }
            let (v, len) = from_local(&t, &mut Conntrack::default(), 1, &mut frame.clone(), 0);
            prop_assert!(len <= frame.len());
            prop_assert!(!matches!(v, Verdict::Deliver(2) | Verdict::Encap { vni: 2, .. }), "{v:?}");
            let (v, len) = from_overlay(&t, &mut Conntrack::default(), NODE, 1, &mut frame.clone(), 0);
            prop_assert!(len <= frame.len());
            prop_assert!(!matches!(v, Verdict::Deliver(2) | Verdict::Encap { .. }), "{v:?}");
        }
    }
}
