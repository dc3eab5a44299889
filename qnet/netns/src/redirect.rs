//! Steering traffic to a TAP with tc filters whose action is "mirred egress redirect":
//!
//! - one UDP port's datagrams, from the ingress of the link that holds an address: qnetd
//!   receives VXLAN this way as whole 64 KiB packets instead of through a UDP socket
//!   (docs/qnetd.md, "Tunnel offload");
//! - everything, both ways between an existing link and a TAP: qnetd attaches an endpoint it
//!   did not make (a veth end, a VM's TAP) this way, and a qnet stack of its own.

use std::net::Ipv4Addr;

use futures_util::stream::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use rtnetlink::LinkUnspec;

use crate::{ipv4_of, is_exists, read_raw, Netns, NetnsError, Result};

/// The UDP filter's priority on the ingress: one known value, so a daemon that died without
/// removing its filter has it replaced, and nobody else's filter is touched.
const PRIORITY: u16 = 0x4789;

/// The priority of the filters joining a link and a TAP, for the same reason.
const JOIN_PRIORITY: u16 = 0x5150;

/// A redirect in place; dropping it removes the filter.
#[derive(Debug)]
pub struct UdpRedirect {
    netns: Netns,
    index: u32,
}

impl Netns {
    /// Redirects IPv4 UDP datagrams to `addr:port` arriving on the link that holds `addr` to
    /// the device `tap`. Only unfragmented packets with a 20-byte IP header match (the u32
    /// filter reads the port at a fixed offset); the others reach the kernel's stack as before.
    pub fn redirect_udp(&self, addr: Ipv4Addr, port: u16, tap: &str) -> Result<UdpRedirect> {
        let index = self.netlink(|h| async move {
            let raw = read_raw(self, &h).await?;
            let index = raw
                .addrs
                .iter()
                .find(|a| ipv4_of(a).is_some_and(|(ip, _)| ip == addr))
                .map(|a| a.header.index)
                .ok_or_else(|| NetnsError::NoSuchInterface {
                    path: self.path.display().to_string(),
                    name: format!("with address {addr}"),
                })?;
            let tap_index = raw.link_named(self, tap)?.header.index;
            match h.qdisc().add(index as i32).ingress().execute().await {
                Err(e) if !is_exists(&e) => {
                    return Err(self.err(format!("adding an ingress qdisc to link {index}"))(e))
                }
                _ => {}
            }
            delete_filter(&h, index, PRIORITY, libc::ETH_P_IP).await;
            h.traffic_filter(index as i32)
                .add()
                .ingress()
                .priority(PRIORITY)
                .protocol((libc::ETH_P_IP as u16).to_be())
                .u32(&[
                    TcFilterU32Option::Selector(selector(addr, port)),
                    TcFilterU32Option::Action(vec![mirred_to(tap_index)]),
                ])
                .map_err(self.err("building the UDP redirect filter"))?
                .execute()
                .await
                .map_err(self.err(format!("redirecting UDP port {port} on link {index}")))?;
            Ok(index)
        })?;
        Ok(UdpRedirect {
            netns: self.try_clone()?,
            index,
        })
    }

    /// Joins link `link` and the TAP `tap` of this namespace: whatever arrives on either
    /// leaves through the other, so the TAP's reader has the link's traffic to itself (the
    /// kernel's stack never sees it). The link is brought up. A join a previous run left is
    /// replaced, not doubled.
    pub fn join_links(&self, link: &str, tap: &str) -> Result<LinkJoin> {
        let indexes = self.netlink(|h| async move {
            let raw = read_raw(self, &h).await?;
            let index = raw.link_named(self, link)?.header.index;
            let tap_index = raw.link_named(self, tap)?.header.index;
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(self.err(format!("bringing {link} up")))?;
            for from in [index, tap_index] {
                delete_filter(&h, from, JOIN_PRIORITY, libc::ETH_P_ALL).await;
            }
            redirect_each_other(self, &h, index, tap_index, Some(JOIN_PRIORITY)).await?;
            Ok([index, tap_index])
        })?;
        Ok(LinkJoin {
            netns: self.try_clone()?,
            indexes,
        })
    }
}

impl Netns {
    /// Turns IPv6 off on `link` (if the kernel has IPv6), so the kernel sends nothing of its
    /// own (router solicitations, MLD reports) through a device only its reader should send on.
    pub fn disable_ipv6(&self, link: &str) -> Result<()> {
        let path = format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6");
        self.netlink(|_| async move {
            // /proc/sys/net is the namespace of the thread that opens it: this helper's.
            match std::fs::write(&path, "1") {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetnsError::Sysctl {
                    what: path,
                    source: e,
                }),
                _ => Ok(()),
            }
        })
    }
}

/// Adds an ingress qdisc to links `a` and `b` (if they have none) and a match-everything
/// filter on each whose action redirects to the other's egress.
pub(crate) async fn redirect_each_other(
    ns: &Netns,
    h: &rtnetlink::Handle,
    a: u32,
    b: u32,
    priority: Option<u16>,
) -> Result<()> {
    for (from, to) in [(a, b), (b, a)] {
        match h.qdisc().add(from as i32).ingress().execute().await {
            Err(e) if !is_exists(&e) => {
                return Err(ns.err(format!("adding an ingress qdisc to link {from}"))(e))
            }
            _ => {}
        }
        let mut add = h.traffic_filter(from as i32).add().ingress();
        // The priority first: rtnetlink's `priority` rewrites the protocol's half of the
        // message too.
        if let Some(p) = priority {
            add = add.priority(p);
        }
        add.protocol((libc::ETH_P_ALL as u16).to_be())
            .redirect(to)
            .map_err(ns.err("building the redirect filter"))?
            .execute()
            .await
            .map_err(ns.err(format!("redirecting link {from} to link {to}")))?;
    }
    Ok(())
}

impl Drop for UdpRedirect {
    fn drop(&mut self) {
        let index = self.index;
        let _ = self.netns.netlink(|h| async move {
            delete_filter(&h, index, PRIORITY, libc::ETH_P_IP).await;
            Ok(())
        });
    }
}

/// A link joined to a TAP ([`Netns::join_links`]); dropping it removes both filters (the
/// TAP's is gone already if the TAP is).
#[derive(Debug)]
pub struct LinkJoin {
    netns: Netns,
    indexes: [u32; 2],
}

impl Drop for LinkJoin {
    fn drop(&mut self) {
        let indexes = self.indexes;
        let _ = self.netns.netlink(|h| async move {
            for index in indexes {
                delete_filter(&h, index, JOIN_PRIORITY, libc::ETH_P_ALL).await;
            }
            Ok(())
        });
    }
}

/// Matches an IPv4 header of 20 bytes, not a fragment, protocol UDP, to `addr:port`. Offsets
/// are from the IP header; values and masks are in host order (the library swaps them).
fn selector(addr: Ipv4Addr, port: u16) -> TcU32Selector {
    let key = |off: i32, mask: u32, val: u32| {
        let mut k = TcU32Key::default();
        k.off = off;
        k.mask = mask;
        k.val = val;
        k
    };
    let keys = vec![
        // Version 4, IHL 5.
        key(0, 0xff00_0000, 0x4500_0000),
        // Neither more fragments nor an offset.
        key(4, 0x0000_3fff, 0),
        // Protocol.
        key(8, 0x00ff_0000, u32::from(libc::IPPROTO_UDP as u8) << 16),
        key(16, u32::MAX, u32::from(addr)),
        // The destination port, right after a 20-byte header.
        key(20, 0x0000_ffff, u32::from(port)),
    ];
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = keys.len() as u8;
    sel.keys = keys;
    sel
}

fn mirred_to(index: u32) -> TcAction {
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = index;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    action
}

/// Deletes our filter (`priority`, `protocol`) from link `index`'s ingress, if there is one.
/// rtnetlink's delete request cannot name a priority (without one the kernel deletes every
/// filter), so the message is built here.
async fn delete_filter(h: &rtnetlink::Handle, index: u32, priority: u16, protocol: i32) {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_INGRESS,
    };
    msg.header.info = u32::from(priority) << 16 | u32::from((protocol as u16).to_be());
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut h = h.clone();
    if let Ok(mut response) = h.request(req) {
        // ENOENT when there was none: nothing to do.
        while response.next().await.is_some() {}
    }
}
