//! Network namespace plumbing over rtnetlink: read the interface a CNI plugin set up in a pod's
//! namespace, hand its traffic to a TAP with tc mirred redirects (Kata's "tcfilter" mode), take
//! its addresses away from the kernel, and give everything back afterwards.
//!
//! Every operation runs on a short-lived helper thread that has entered the namespace with
//! `setns`, so the calling process (and its other threads) never change namespace.

mod pod;
mod redirect;

pub use pod::{BridgeLink, EndSetup, Macs, PtpLink};
pub use redirect::{LinkJoin, UdpRedirect};

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_core::{Emitable, Parseable};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::Handle;
use thiserror::Error;

/// The kernel's main routing table (the one CNI plugins write).
const MAIN_TABLE: u32 = 254;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}")]
    Setns {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} in network namespace {path}")]
    Netlink {
        what: String,
        path: String,
        source: rtnetlink::Error,
    },
    #[error("starting the netlink connection in {path}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("network namespace {path} has no interface with an IPv4 address besides lo (did the CNI plugin run?)")]
    NoInterface { path: String },
    #[error("network namespace {path} has no interface {name}")]
    NoSuchInterface { path: String, name: String },
    #[error("writing {what}")]
    Sysctl {
        what: String,
        source: std::io::Error,
    },
    #[error("the namespace helper thread panicked")]
    Panicked,
    #[error("a malformed takeover record for network namespace {path}")]
    BadRecord { path: String },
}

pub type Result<T> = std::result::Result<T, NetnsError>;

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(ip) & mask
    }

    /// The network itself (host bits cleared).
    pub fn network(&self) -> Ipv4Net {
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        Ipv4Net {
            addr: Ipv4Addr::from(u32::from(self.addr) & mask),
            prefix: self.prefix,
        }
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One link of the namespace.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Largest GSO packet the link sends without segmenting it in software
    /// (IFLA_GSO_MAX_SIZE; the skb, link-layer header included, must stay below it).
    pub gso_max_size: Option<u32>,
    pub up: bool,
    pub loopback: bool,
    pub addrs: Vec<Ipv4Net>,
    /// The link's alias (IFLA_IFALIAS), which CNI plugins use to tag what they made.
    pub alias: Option<String>,
}

/// One IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// The namespace's links and IPv4 unicast routes as the kernel reports them.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub links: Vec<Link>,
    pub routes: Vec<Route>,
}

impl Snapshot {
    /// The interface a CNI plugin gave the pod: the one holding the default route, else the
    /// first non-loopback one with an IPv4 address.
    pub fn pod_link(&self) -> Option<&Link> {
        let usable = |l: &&Link| !l.loopback && !l.addrs.is_empty();
        let default_oif = self
            .routes
            .iter()
            .find(|r| r.dst.prefix == 0)
            .and_then(|r| r.oif);
        self.links
            .iter()
            .filter(usable)
            .find(|l| Some(l.index) == default_oif)
            .or_else(|| self.links.iter().find(usable))
    }

    /// The routes out of link `index`.
    pub fn routes_of(&self, index: u32) -> impl Iterator<Item = &Route> {
        self.routes.iter().filter(move |r| r.oif == Some(index))
    }
}

/// An open network namespace (a file under /run/netns, or /proc/PID/ns/net).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

pub(crate) fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// A namespace already open (a descriptor passed by another process); `label` names it
    /// in errors.
    pub fn from_file(file: File, label: &Path) -> Netns {
        Netns {
            file,
            path: label.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> Result<Netns> {
        Ok(Netns {
            file: self.file.try_clone().map_err(|source| NetnsError::Open {
                path: self.path.display().to_string(),
                source,
            })?,
            path: self.path.clone(),
        })
    }

    pub(crate) fn err(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> NetnsError + '_ {
        let what = what.into();
        move |source| NetnsError::Netlink {
            what,
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Runs `f` with a netlink handle on a helper thread inside the namespace.
    pub(crate) fn netlink<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(Handle) -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let path = self.path.display().to_string();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this helper thread only (it ends with the scope); the fd is
                // an open namespace file.
                if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(NetnsError::Setns {
                        path,
                        source: std::io::Error::last_os_error(),
                    });
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|source| NetnsError::Connect {
                        path: path.clone(),
                        source,
                    })?;
                rt.block_on(async {
                    let (conn, handle, _) = rtnetlink::new_connection()
                        .map_err(|source| NetnsError::Connect { path, source })?;
                    tokio::spawn(conn);
                    f(handle).await
                })
            })
            .join()
            .unwrap_or(Err(NetnsError::Panicked))
        })
    }

    /// Reads the links, their IPv4 addresses and the main table's IPv4 unicast routes.
    pub fn inspect(&self) -> Result<Snapshot> {
        self.netlink(|h| async move {
            let raw = read_raw(self, &h).await?;
            Ok(raw.snapshot())
        })
    }

    /// Redirects all traffic of link `name` to and from the TAP `tap` (which must exist in the
    /// namespace) and removes the link's IPv4 addresses from the kernel. The returned
    /// [`Takeover`] puts them back on [`Takeover::restore`] (or drop).
    pub fn take_over(&self, name: &str, tap: &str) -> Result<Takeover> {
        let (saved, tap_index) = self.netlink(|h| async move {
            let raw = read_raw(self, &h).await?;
            let index = raw.link_named(self, name)?.header.index;
            let tap_index = raw.link_named(self, tap)?.header.index;
            let saved = Saved {
                index,
                addrs: raw
                    .addrs
                    .iter()
                    .filter(|a| a.header.index == index && ipv4_of(a).is_some())
                    .cloned()
                    .collect(),
                routes: raw
                    .routes
                    .iter()
                    .filter(|r| route_oif(r) == Some(index))
                    .cloned()
                    .collect(),
            };
            Ok((saved, tap_index))
        })?;
        let index = saved.index;
        let addrs = saved.addrs.clone();
        // From here on, a failure drops the takeover, which undoes what was done.
        let takeover = Takeover {
            netns: self.try_clone()?,
            saved: Some(saved),
        };
        self.netlink(|h| async move {
            // The pod link's frames leave through the TAP (to qnet) and qnet's frames leave
            // through the pod link.
            redirect::redirect_each_other(self, &h, index, tap_index, None).await?;
            // Without addresses the kernel neither answers ARP for the pod's address nor
            // sends from it; everything on the link is qnet's.
            for a in addrs {
                h.address()
                    .del(a)
                    .execute()
                    .await
                    .map_err(self.err(format!("removing an address of {name}")))?;
            }
            Ok(())
        })?;
        tracing::info!(
            netns = %self.path.display(),
            link = name,
            tap,
            "took over the pod interface"
        );
        Ok(takeover)
    }
}

/// What a takeover changed, to undo.
#[derive(Debug)]
struct Saved {
    index: u32,
    addrs: Vec<AddressMessage>,
    routes: Vec<RouteMessage>,
}

/// A pod interface redirected to a TAP. Restored on [`Takeover::restore`] or drop, so a
/// container that exits leaves the namespace as the CNI plugin made it (and `CNI DEL` finds
/// what it expects).
#[derive(Debug)]
pub struct Takeover {
    netns: Netns,
    saved: Option<Saved>,
}

impl Takeover {
    /// Removes the redirect and gives the addresses and routes back to the kernel.
    pub fn restore(mut self) -> Result<()> {
        self.restore_inner()
    }

    fn restore_inner(&mut self) -> Result<()> {
        let Some(saved) = self.saved.take() else {
            return Ok(());
        };
        let ns = &self.netns;
        ns.netlink(|h| async move {
            // Deleting the ingress qdisc deletes its filters; the TAP's goes with the TAP.
            let mut del = h.qdisc().del(saved.index as i32);
            del.message_mut().header.parent = TcHandle::INGRESS;
            del.message_mut().header.handle = TcHandle::from(0xffff_0000);
            if let Err(e) = del.execute().await {
                tracing::warn!("removing the ingress qdisc of link {}: {e}", saved.index);
            }
            for a in saved.addrs {
                let Some((ip, prefix)) = ipv4_of(&a) else {
                    continue;
                };
                let mut add = h.address().add(saved.index, IpAddr::V4(ip), prefix);
                // The saved routes are restored exactly as they were, the prefix route among
                // them if the plugin left it (ptp replaces it with one through the gateway).
                add.message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
                match add.execute().await {
                    Err(e) if !is_exists(&e) => {
                        return Err(ns.err(format!("restoring address {ip}/{prefix}"))(e))
                    }
                    _ => {}
                }
            }

            // Link routes first: a route through a gateway needs the gateway's subnet.
            let mut routes = saved.routes;
            routes.sort_by_key(|r| route_v4(r, gateway_attr).is_some());
            for r in routes {
                match h.route().add(r).execute().await {
                    Err(e) if !is_exists(&e) => return Err(ns.err("restoring a route")(e)),
                    _ => {}
                }
            }
            Ok(())
        })
    }
}

impl Drop for Takeover {
    fn drop(&mut self) {
        if let Err(e) = self.restore_inner() {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            tracing::warn!("giving the pod interface back: {msg}");
        }
    }
}

/// A takeover handed to another process, which gives the interface back once the one that
/// made it is gone: qvisor's keeper, so the VMM itself needs no capability to undo it. The
/// record is the link index and the saved addresses and routes as netlink messages, each
/// length-prefixed (u32, native endian).
impl Takeover {
    /// Ends this takeover's own duty to restore (nothing happens on drop) and returns the
    /// namespace and the record for [`restore_handed_off`]. On error nothing has changed.
    pub fn hand_off(&mut self) -> std::io::Result<(File, Vec<u8>)> {
        let file = self.netns.file.try_clone()?;
        let mut record = Vec::new();
        if let Some(saved) = self.saved.take() {
            record.extend_from_slice(&saved.index.to_ne_bytes());
            put_messages(&mut record, &saved.addrs);
            put_messages(&mut record, &saved.routes);
        }
        Ok((file, record))
    }
}

fn put_messages<M: Emitable>(out: &mut Vec<u8>, messages: &[M]) {
    out.extend_from_slice(&(messages.len() as u32).to_ne_bytes());
    for m in messages {
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        out.extend_from_slice(&(buf.len() as u32).to_ne_bytes());
        out.extend_from_slice(&buf);
    }
}

/// Reads one u32 off the front of `rest`.
fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    Some(u32::from_ne_bytes(*head))
}

fn take_messages<M: Parseable<[u8]>>(rest: &mut &[u8]) -> Option<Vec<M>> {
    let count = take_u32(rest)?;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = take_u32(rest)? as usize;
        if rest.len() < len {
            return None;
        }
        let (msg, tail) = rest.split_at(len);
        out.push(M::parse(msg).ok()?);
        *rest = tail;
    }
    Some(out)
}

/// Gives back the interface of a takeover handed off with [`Takeover::hand_off`], in `netns`.
pub fn restore_handed_off(netns: Netns, record: &[u8]) -> Result<()> {
    let saved = decode_record(record).ok_or_else(|| NetnsError::BadRecord {
        path: netns.path.display().to_string(),
    })?;
    Takeover { netns, saved }.restore()
}

/// The saved state in a hand-off record (`None` inside: nothing to restore); `None` when the
/// record is malformed.
fn decode_record(record: &[u8]) -> Option<Option<Saved>> {
    if record.is_empty() {
        return Some(None);
    }
    let mut rest = record;
    let index = take_u32(&mut rest)?;
    let addrs = take_messages(&mut rest)?;
    let routes = take_messages(&mut rest)?;
    rest.is_empty().then_some(Some(Saved {
        index,
        addrs,
        routes,
    }))
}

/// Netlink dumps, before they are turned into a [`Snapshot`].
struct Raw {
    links: Vec<LinkMessage>,
    addrs: Vec<AddressMessage>,
    routes: Vec<RouteMessage>,
}

async fn read_raw(ns: &Netns, h: &Handle) -> Result<Raw> {
    let links = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(ns.err("listing links"))?;
    let addrs = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(ns.err("listing addresses"))?;
    let routes = h
        .route()
        .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(ns.err("listing routes"))?
        .into_iter()
        .filter(|r| route_table(r) == MAIN_TABLE && r.header.kind == RouteType::Unicast)
        .collect();
    Ok(Raw {
        links,
        addrs,
        routes,
    })
}

fn ipv4_of(a: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    a.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
            Some((*ip, a.header.prefix_len))
        }
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table as u32)
}

fn gateway_attr(a: &RouteAttribute) -> Option<&RouteAddress> {
    match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    }
}

fn route_v4(
    r: &RouteMessage,
    want: fn(&RouteAttribute) -> Option<&RouteAddress>,
) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match want(a) {
        Some(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

impl Raw {
    fn link_named(&self, ns: &Netns, name: &str) -> Result<&LinkMessage> {
        self.links
            .iter()
            .find(|l| link_name(l) == Some(name))
            .ok_or_else(|| NetnsError::NoSuchInterface {
                path: ns.path.display().to_string(),
                name: name.to_string(),
            })
    }

    fn snapshot(&self) -> Snapshot {
        let links = self
            .links
            .iter()
            .map(|l| Link {
                index: l.header.index,
                name: link_name(l).unwrap_or_default().to_string(),
                mac: l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(m) => m.as_slice().try_into().ok(),
                    _ => None,
                }),
                mtu: l
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    })
                    .unwrap_or(1500),
                gso_max_size: l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::GsoMaxSize(m) => Some(*m),
                    _ => None,
                }),
                alias: l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfAlias(s) => Some(s.clone()),
                    _ => None,
                }),
                up: l.header.flags.contains(LinkFlags::Up),
                loopback: l.header.flags.contains(LinkFlags::Loopback),
                addrs: self
                    .addrs
                    .iter()
                    .filter(|a| a.header.index == l.header.index)
                    .filter_map(ipv4_of)
                    .map(|(addr, prefix)| Ipv4Net { addr, prefix })
                    .collect(),
            })
            .collect();
        let routes = self
            .routes
            .iter()
            .map(|r| Route {
                dst: Ipv4Net {
                    addr: route_v4(r, |a| match a {
                        RouteAttribute::Destination(d) => Some(d),
                        _ => None,
                    })
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
                    prefix: r.header.destination_prefix_length,
                },
                gateway: route_v4(r, gateway_attr),
                oif: route_oif(r),
            })
            .collect();
        Snapshot { links, routes }
    }
}

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_contain_and_normalise() {
        let n = Ipv4Net {
            addr: Ipv4Addr::new(10, 1, 2, 3),
            prefix: 24,
        };
        assert!(n.contains(Ipv4Addr::new(10, 1, 2, 200)));
        assert!(!n.contains(Ipv4Addr::new(10, 1, 3, 1)));
        assert_eq!(n.network().to_string(), "10.1.2.0/24");
        let all = Ipv4Net {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
        };
        assert!(all.contains(Ipv4Addr::new(192, 0, 2, 1)));
    }

    fn a_takeover() -> Takeover {
        let mut addr = AddressMessage::default();
        addr.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        addr.header.prefix_len = 24;
        addr.header.index = 7;
        addr.attributes
            .push(AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(
                10, 1, 2, 3,
            ))));
        let mut route = RouteMessage::default();
        route.header.address_family = rtnetlink::packet_route::AddressFamily::Inet;
        route.header.destination_prefix_length = 24;
        route.attributes.push(RouteAttribute::Oif(7));
        Takeover {
            netns: Netns::open(Path::new("/proc/self/ns/net")).unwrap(),
            saved: Some(Saved {
                index: 7,
                addrs: vec![addr],
                routes: vec![route],
            }),
        }
    }

    #[test]
    fn a_handed_off_record_reads_back_and_leaves_nothing_to_restore() {
        let mut takeover = a_takeover();
        let expected = format!("{:?}", takeover.saved);
        let (_ns, record) = takeover.hand_off().unwrap();
        assert!(takeover.saved.is_none(), "the takeover is the keeper's now");
        let saved = decode_record(&record).unwrap();
        assert_eq!(format!("{saved:?}"), expected);
        // Every strict prefix and any trailing byte is malformed.
        for cut in 1..record.len() {
            assert!(decode_record(&record[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(decode_record(&longer).is_none());
        assert!(matches!(decode_record(&[]), Some(None)));
    }

    proptest::proptest! {
        #[test]
        fn any_record_is_read_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode_record(&bytes);
        }
    }
}
