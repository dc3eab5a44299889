//! What the daemon holds: VPCs and their endpoints, validated as they are added. This is the
//! state the store keeps and the API edits; the data plane sees it as [`crate::forward::Tables`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a change to the state was refused; each maps to an HTTP status in the API.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::Invalid(msg.into())
}

/// An IPv4 network, written `a.b.c.d/len`; the host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    fn mask(self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
    /// Whether `ip` may be given to a host: inside, and neither the network nor broadcast.
    pub fn is_host(self, ip: Ipv4Addr) -> bool {
        let host = u32::from(ip) & !self.mask();
        self.contains(ip) && host != 0 && host != !self.mask()
    }
    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (a.b.c.d/len)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{len:?} is not a prefix length (0-32)"))?;
        let cidr = Cidr {
            network: ip,
            prefix,
        };
        if u32::from(ip) & !cidr.mask() != 0 {
            return Err(format!("{s} has host bits set"));
        }
        Ok(cidr)
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The address Kubernetes CNI plugins derive from an IPv4 address: 0a:58 then the address,
    /// locally administered and unicast.
    pub fn for_ip(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2);
            *byte = part
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        Ok(Mac(mac))
    }
}

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Mac, String> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A tenant's private network: one VXLAN network identifier and one IPv4 network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    pub name: String,
    pub vni: u32,
    pub cidr: Cidr,
    /// The address the daemon answers at (ARP and ping) and pods route through.
    pub gateway: Ipv4Addr,
}

impl Vpc {
    /// The gateway's MAC: the same on every node, so a pod can move without its ARP cache
    /// going stale.
    pub fn gateway_mac(&self) -> Mac {
        Mac::for_ip(self.gateway)
    }
}

/// What the API takes to make a VPC.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcSpec {
    pub name: String,
    pub vni: u32,
    pub cidr: Cidr,
    /// Defaults to the network's first host address.
    pub gateway: Option<Ipv4Addr>,
}

/// The transport a security group rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
}

/// A port range, written `80` or `8000-8080`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl FromStr for Ports {
    type Err = String;
    fn from_str(s: &str) -> Result<Ports, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{s:?} is not a port or port range (1-65535, a-b)"))
        };
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            return Err(format!("port range {s:?} is backwards"));
        }
        Ok(Ports { first, last })
    }
}

impl TryFrom<String> for Ports {
    type Error = String;
    fn try_from(s: String) -> Result<Ports, String> {
        s.parse()
    }
}

impl From<Ports> for String {
    fn from(p: Ports) -> String {
        if p.first == p.last {
            p.first.to_string()
        } else {
            format!("{}-{}", p.first, p.last)
        }
    }
}

/// One ingress allow rule: traffic of `protocol` from `cidr` (default anywhere) to `ports`
/// (default all; TCP and UDP only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub protocol: Protocol,
    #[serde(default = "Cidr::anywhere")]
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
}

impl Cidr {
    pub fn anywhere() -> Cidr {
        Cidr {
            network: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        }
    }
}

/// A security group: what may reach the endpoints in it (in rule order; nothing else may,
/// except replies to what they sent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// Where an endpoint is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// Attached here through interface `ifname` of the network namespace `netns` (a path,
    /// such as /run/netns/NAME or /proc/PID/ns/net): one the daemon makes (a TAP), or with
    /// `existing` a link someone else made, which the daemon joins to a TAP of its own.
    Local {
        netns: PathBuf,
        ifname: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        existing: bool,
    },
    /// Attached here as a socket ring: the daemon runs the endpoint's TCP/IP stack (qnet) and
    /// serves its sockets to ring clients (a qvisor container) at `socket`; its socket
    /// buffers may hold at most `buffers_mib` MiB (the container's memory, say).
    Ring {
        socket: PathBuf,
        #[serde(default = "ring_buffers_mib")]
        buffers_mib: u32,
    },
    /// On another node, reached by VXLAN at that node's underlay address.
    Remote { node: Ipv4Addr },
}

impl Place {
    /// Whether the endpoint is attached on this node.
    pub fn is_local(&self) -> bool {
        !matches!(self, Place::Remote { .. })
    }
}

/// How a local endpoint is attached (the API's `attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// A TAP the daemon makes and addresses in `netns`.
    #[default]
    Tap,
    /// An existing link `ifname` in `netns` (the host end of a veth pair, a VM's TAP).
    Link,
    /// A socket ring (no namespace: the stack runs in the daemon).
    Ring,
}

/// A member of a VPC: an address and a MAC, here or on another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub name: String,
    pub vpc: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    #[serde(flatten)]
    pub place: Place,
    /// The security group guarding its ingress, for a local endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<String>,
}

/// What the API takes to make an endpoint: `netns` (and optionally `ifname`) for a local one
/// on a TAP, `attach: "link"` with `netns`, `ifname` and `mac` for one on an existing link,
/// `attach: "ring"` alone for one on a socket ring, `node` for a remote one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    pub vpc: String,
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub node: Option<Ipv4Addr>,
    pub security_group: Option<String>,
    #[serde(default)]
    pub attach: Attach,
    /// A ring endpoint's socket buffers, MiB (default [`RING_BUFFERS_MIB`]).
    pub buffers_mib: Option<u32>,
}

/// What a ring endpoint's stack may hold in socket buffers unless told otherwise, and the
/// most it may be told.
pub const RING_BUFFERS_MIB: u32 = 512;
fn ring_buffers_mib() -> u32 {
    RING_BUFFERS_MIB
}
pub const MAX_RING_BUFFERS_MIB: u32 = 64 << 10;

/// Every VPC and endpoint of this node, keyed by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub vpcs: BTreeMap<String, Vpc>,
    pub endpoints: BTreeMap<String, Endpoint>,
    #[serde(default)]
    pub security_groups: BTreeMap<String, SecurityGroup>,
}

fn check_name(what: &str, name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} name {name:?} must be 1-63 characters of letters, digits, '-', '_' and '.'"
        )))
    }
}

impl State {
    /// Checks `spec` against this state; the VPC it describes.
    pub fn check_vpc(&self, spec: &VpcSpec) -> Result<Vpc, ModelError> {
        check_name("VPC", &spec.name)?;
        if !(1..=0x00ff_ffff).contains(&spec.vni) {
            return Err(invalid(format!(
                "VNI {} is outside 1-16777215 (24 bits)",
                spec.vni
            )));
        }
        if !(8..=30).contains(&spec.cidr.prefix) {
            return Err(invalid(format!(
                "{}: a VPC's prefix length is 8-30",
                spec.cidr
            )));
        }
        let gateway = spec.gateway.unwrap_or(spec.cidr.first_host());
        if !spec.cidr.is_host(gateway) {
            return Err(invalid(format!(
                "gateway {gateway} is not a host address of {}",
                spec.cidr
            )));
        }
        if self.vpcs.contains_key(&spec.name) {
            return Err(ModelError::Conflict(format!(
                "VPC {:?} exists already",
                spec.name
            )));
        }
        if let Some(other) = self.vpcs.values().find(|v| v.vni == spec.vni) {
            return Err(ModelError::Conflict(format!(
                "VNI {} belongs to VPC {:?} already",
                spec.vni, other.name
            )));
        }
        Ok(Vpc {
            name: spec.name.clone(),
            vni: spec.vni,
            cidr: spec.cidr,
            gateway,
        })
    }

    /// Checks `spec` against this state; the endpoint it describes. `underlay` is this node's
    /// own underlay address (a remote endpoint cannot be on it); a ring endpoint's socket is
    /// made in `rings`.
    pub fn check_endpoint(
        &self,
        spec: &EndpointSpec,
        underlay: Ipv4Addr,
        rings: &Path,
    ) -> Result<Endpoint, ModelError> {
        check_name("endpoint", &spec.name)?;
        if self.endpoints.contains_key(&spec.name) {
            return Err(ModelError::Conflict(format!(
                "endpoint {:?} exists already",
                spec.name
            )));
        }
        let vpc = self
            .vpcs
            .get(&spec.vpc)
            .ok_or_else(|| ModelError::NotFound(format!("no VPC {:?}", spec.vpc)))?;
        if !vpc.cidr.is_host(spec.ip) || spec.ip == vpc.gateway {
            return Err(invalid(format!(
                "{} is not a free host address of VPC {:?} ({}, gateway {})",
                spec.ip, vpc.name, vpc.cidr, vpc.gateway
            )));
        }
        let mac = spec.mac.unwrap_or(Mac::for_ip(spec.ip));
        if !mac.is_unicast() || mac == vpc.gateway_mac() {
            return Err(invalid(format!("{mac} is not a usable unicast MAC")));
        }
        for other in self.endpoints.values().filter(|e| e.vpc == vpc.name) {
            if other.ip == spec.ip {
                return Err(ModelError::Conflict(format!(
                    "{} is endpoint {:?}'s in VPC {:?}",
                    spec.ip, other.name, vpc.name
                )));
            }
            if other.mac == mac {
                return Err(ModelError::Conflict(format!(
                    "MAC {mac} is endpoint {:?}'s in VPC {:?}",
                    other.name, vpc.name
                )));
            }
        }
        let place = match (spec.attach, &spec.netns, spec.node) {
            (Attach::Tap | Attach::Link, Some(netns), None) => {
                let existing = spec.attach == Attach::Link;
                let ifname = match (&spec.ifname, existing) {
                    (Some(i), _) => i.clone(),
                    (None, false) => "eth0".into(),
                    (None, true) => return Err(invalid("attach link needs ifname, the existing link")),
                };
                if existing && spec.mac.is_none() {
                    return Err(invalid(
                        "attach link needs mac, the address of the interface at the link's far end",
                    ));
                }
                qnet::phy::tap::check_ifname(&ifname).map_err(|e| invalid(e.to_string()))?;
                if let Some(other) = self.endpoints.values().find(|e| {
                    matches!(&e.place, Place::Local { netns: n, ifname: i, .. } if n == netns && *i == ifname)
                }) {
                    return Err(ModelError::Conflict(format!(
                        "{} in {} is endpoint {:?}'s",
                        ifname,
                        netns.display(),
                        other.name
                    )));
                }
                Place::Local {
                    netns: netns.clone(),
                    ifname,
                    existing,
                }
            }
            (Attach::Ring, None, None) if spec.ifname.is_none() => {
                let buffers_mib = spec.buffers_mib.unwrap_or(RING_BUFFERS_MIB);
                if !(1..=MAX_RING_BUFFERS_MIB).contains(&buffers_mib) {
                    return Err(invalid(format!(
                        "buffers_mib {buffers_mib}: give 1 to {MAX_RING_BUFFERS_MIB}"
                    )));
                }
                Place::Ring {
                    socket: rings.join(format!("{}.sock", spec.name)),
                    buffers_mib,
                }
            }
            (Attach::Tap, None, Some(node)) if spec.ifname.is_none() => {
                if node == underlay {
                    return Err(invalid(format!(
                        "node {node} is this node: give netns for a local endpoint"
                    )));
                }
                Place::Remote { node }
            }
            _ => {
                return Err(invalid(
                    "give netns (and optionally ifname) for a local endpoint, attach link with netns and ifname for one on an existing link, attach ring alone for one on a socket ring, or node for a remote one",
                ))
            }
        };
        if spec.buffers_mib.is_some() && spec.attach != Attach::Ring {
            return Err(invalid("buffers_mib is for a ring endpoint (attach ring)"));
        }
        if let Some(group) = &spec.security_group {
            if !self.security_groups.contains_key(group) {
                return Err(ModelError::NotFound(format!("no security group {group:?}")));
            }
            if matches!(place, Place::Remote { .. }) {
                return Err(invalid(
                    "a security group guards a local endpoint (its own node enforces it)",
                ));
            }
        }
        Ok(Endpoint {
            name: spec.name.clone(),
            vpc: vpc.name.clone(),
            ip: spec.ip,
            mac,
            place,
            security_group: spec.security_group.clone(),
        })
    }

    /// Checks `group`, new (`replace` false) or replacing the one of its name.
    pub fn check_security_group(
        &self,
        group: &SecurityGroup,
        replace: bool,
    ) -> Result<(), ModelError> {
        check_name("security group", &group.name)?;
        match (self.security_groups.contains_key(&group.name), replace) {
            (true, false) => Err(ModelError::Conflict(format!(
                "security group {:?} exists already",
                group.name
            ))),
            (false, true) => Err(ModelError::NotFound(format!(
                "no security group {:?}",
                group.name
            ))),
            _ if group.rules.len() > 256 => Err(invalid("at most 256 rules in a group")),
            _ => {
                match group.rules.iter().find(|r| {
                    r.ports.is_some() && !matches!(r.protocol, Protocol::Tcp | Protocol::Udp)
                }) {
                    Some(r) => Err(invalid(format!(
                        "ports apply to tcp and udp rules, not {:?}",
                        r.protocol
                    ))),
                    None => Ok(()),
                }
            }
        }
    }

    /// Checks that security group `name` exists and guards no endpoint.
    pub fn check_security_group_removal(&self, name: &str) -> Result<(), ModelError> {
        if !self.security_groups.contains_key(name) {
            return Err(ModelError::NotFound(format!("no security group {name:?}")));
        }
        match self
            .endpoints
            .values()
            .find(|e| e.security_group.as_deref() == Some(name))
        {
            Some(e) => Err(ModelError::Conflict(format!(
                "security group {name:?} guards endpoint {:?}",
                e.name
            ))),
            None => Ok(()),
        }
    }

    /// Checks an endpoint another node published: its VPC is known here, its address a free
    /// host address of it, its MAC unicast. (The name may be known: it is then replaced.)
    pub fn check_remote(&self, e: &Endpoint) -> Result<(), String> {
        let vpc = self
            .vpcs
            .get(&e.vpc)
            .ok_or_else(|| format!("no VPC {:?}", e.vpc))?;
        if !vpc.cidr.is_host(e.ip) || e.ip == vpc.gateway || !e.mac.is_unicast() {
            return Err(format!(
                "{} / {} does not fit VPC {:?}",
                e.ip, e.mac, vpc.name
            ));
        }
        match self
            .endpoints
            .values()
            .find(|o| o.vpc == e.vpc && o.ip == e.ip && o.name != e.name)
        {
            Some(o) => Err(format!("{} is endpoint {:?}'s here", e.ip, o.name)),
            None => Ok(()),
        }
    }

    /// Checks that VPC `name` exists and has no endpoints left.
    pub fn check_vpc_removal(&self, name: &str) -> Result<(), ModelError> {
        if !self.vpcs.contains_key(name) {
            return Err(ModelError::NotFound(format!("no VPC {name:?}")));
        }
        let members = self.endpoints.values().filter(|e| e.vpc == name).count();
        if members > 0 {
            return Err(ModelError::Conflict(format!(
                "VPC {name:?} still has {members} endpoint(s)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vpc(name: &str, vni: u32, cidr: &str) -> VpcSpec {
        VpcSpec {
            name: name.into(),
            vni,
            cidr: cidr.parse().unwrap(),
            gateway: None,
        }
    }

    fn ep(name: &str, ip: &str) -> EndpointSpec {
        EndpointSpec {
            name: name.into(),
            vpc: "red".into(),
            ip: ip.parse().unwrap(),
            mac: None,
            netns: None,
            ifname: None,
            node: Some("192.168.0.2".parse().unwrap()),
            security_group: None,
            attach: Attach::Tap,
            buffers_mib: None,
        }
    }

    #[test]
    fn attachments_take_what_they_need() {
        let underlay = "192.168.0.1".parse().unwrap();
        let rings = Path::new("/run/qnetd/rings");
        let mut s = State::default();
        s.vpcs.insert(
            "red".into(),
            s.check_vpc(&vpc("red", 7, "10.0.0.0/24")).unwrap(),
        );
        let local = |name: &str, ip: &str, attach| EndpointSpec {
            netns: Some("/run/netns/p".into()),
            node: None,
            attach,
            ..ep(name, ip)
        };

        // A link needs its name and the far end's MAC; a TAP defaults to eth0.
        let mut link = local("l", "10.0.0.2", Attach::Link);
        assert!(s.check_endpoint(&link, underlay, rings).is_err());
        link.ifname = Some("veth-l".into());
        assert!(s.check_endpoint(&link, underlay, rings).is_err());
        link.mac = Some("02:00:00:00:00:02".parse().unwrap());
        let l = s.check_endpoint(&link, underlay, rings).unwrap();
        assert_eq!(
            l.place,
            Place::Local {
                netns: "/run/netns/p".into(),
                ifname: "veth-l".into(),
                existing: true
            }
        );
        s.endpoints.insert("l".into(), l);
        // The same link cannot carry two endpoints.
        let mut again = link.clone();
        again.name = "l2".into();
        again.ip = "10.0.0.5".parse().unwrap();
        again.mac = Some("02:00:00:00:00:05".parse().unwrap());
        assert!(matches!(
            s.check_endpoint(&again, underlay, rings),
            Err(ModelError::Conflict(_))
        ));
        let t = s
            .check_endpoint(&local("t", "10.0.0.3", Attach::Tap), underlay, rings)
            .unwrap();
        assert!(
            matches!(&t.place, Place::Local { ifname, existing: false, .. } if ifname == "eth0")
        );

        // A ring takes neither a namespace nor a node; its socket is named after it.
        let ring = EndpointSpec {
            node: None,
            attach: Attach::Ring,
            ..ep("r", "10.0.0.4")
        };
        let r = s.check_endpoint(&ring, underlay, rings).unwrap();
        assert_eq!(
            r.place,
            Place::Ring {
                socket: rings.join("r.sock"),
                buffers_mib: RING_BUFFERS_MIB,
            }
        );
        let small = EndpointSpec {
            buffers_mib: Some(64),
            ..ring.clone()
        };
        assert!(matches!(
            s.check_endpoint(&small, underlay, rings).unwrap().place,
            Place::Ring {
                buffers_mib: 64,
                ..
            }
        ));
        assert!(r.place.is_local());
        for bad in [
            EndpointSpec {
                netns: Some("/run/netns/p".into()),
                ..ring.clone()
            },
            EndpointSpec {
                node: Some("192.168.0.2".parse().unwrap()),
                ..ring.clone()
            },
            EndpointSpec {
                attach: Attach::Link,
                ..ep("x", "10.0.0.6")
            },
            EndpointSpec {
                buffers_mib: Some(0),
                ..ring.clone()
            },
            EndpointSpec {
                buffers_mib: Some(MAX_RING_BUFFERS_MIB + 1),
                ..ring.clone()
            },
            EndpointSpec {
                buffers_mib: Some(64),
                ..local("t2", "10.0.0.7", Attach::Tap)
            },
        ] {
            assert!(s.check_endpoint(&bad, underlay, rings).is_err(), "{bad:?}");
        }

        // The stored form of a plain TAP endpoint is what it was before attachments had kinds.
        let json = serde_json::to_value(&t).unwrap();
        assert!(json["local"].get("existing").is_none(), "{json}");
        let back: Endpoint = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn cidrs_and_macs_parse_strictly() {
        assert!("10.0.0.0/24".parse::<Cidr>().is_ok());
        assert!("10.0.0.1/24".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert_eq!(
            "0a:58:0a:00:00:02".parse::<Mac>().unwrap(),
            Mac::for_ip("10.0.0.2".parse().unwrap())
        );
        assert!("0a:58:0a:00:00".parse::<Mac>().is_err());
        assert!("0a:58:0a:00:00:02:03".parse::<Mac>().is_err());
        assert!("0a:58:0a:00:00:zz".parse::<Mac>().is_err());
    }

    #[test]
    fn vpcs_and_endpoints_are_checked() {
        let underlay = "192.168.0.1".parse().unwrap();
        let mut s = State::default();
        let red = s.check_vpc(&vpc("red", 7, "10.0.0.0/24")).unwrap();
        assert_eq!(red.gateway, "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        s.vpcs.insert("red".into(), red);
        assert!(matches!(
            s.check_vpc(&vpc("red", 8, "10.1.0.0/24")),
            Err(ModelError::Conflict(_))
        ));
        assert!(matches!(
            s.check_vpc(&vpc("blue", 7, "10.0.0.0/24")),
            Err(ModelError::Conflict(_))
        ));
        // Another tenant may use the same network.
        assert!(s.check_vpc(&vpc("blue", 8, "10.0.0.0/24")).is_ok());
        assert!(s.check_vpc(&vpc("x", 0, "10.0.0.0/24")).is_err());
        assert!(s.check_vpc(&vpc("x", 1 << 24, "10.0.0.0/24")).is_err());
        assert!(s.check_vpc(&vpc("bad name", 9, "10.0.0.0/24")).is_err());

        let rings = Path::new("/run/qnetd/rings");
        let a = s
            .check_endpoint(&ep("a", "10.0.0.2"), underlay, rings)
            .unwrap();
        s.endpoints.insert("a".into(), a);
        for bad in ["10.0.0.2", "10.0.0.1", "10.0.0.0", "10.0.0.255", "10.0.1.2"] {
            assert!(
                s.check_endpoint(&ep("b", bad), underlay, rings).is_err(),
                "{bad}"
            );
        }
        let mut here = ep("b", "10.0.0.3");
        here.node = Some(underlay);
        assert!(s.check_endpoint(&here, underlay, rings).is_err());
        let mut both = ep("b", "10.0.0.3");
        both.netns = Some("/run/netns/x".into());
        assert!(s.check_endpoint(&both, underlay, rings).is_err());
        assert_eq!(s.check_vpc_removal("red").map_err(|_| ()), Err(()));
        assert!(matches!(
            s.check_vpc_removal("nope"),
            Err(ModelError::NotFound(_))
        ));
    }
}
