//! Steering one UDP port's traffic to a TAP: a tc u32 filter on the ingress of the link that
//! holds an address, whose action is "mirred egress redirect" to the TAP. qnetd receives VXLAN
//! this way as whole 64 KiB packets instead of through a UDP socket (docs/qnetd.md, "Tunnel
//! offload").

use std::net::Ipv4Addr;

use futures_util::stream::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::{ipv4_of, is_exists, read_raw, Netns, NetnsError, Result};

/// The filter's priority on the ingress: one known value, so a daemon that died without
/// removing its filter has it replaced, and nobody else's filter is touched.
const PRIORITY: u16 = 0x4789;

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
            delete_filter(&h, index).await;
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
        let netns = Netns {
            file: self.file.try_clone().map_err(|source| NetnsError::Open {
                path: self.path.display().to_string(),
                source,
            })?,
            path: self.path.clone(),
        };
        Ok(UdpRedirect { netns, index })
    }
}

impl Drop for UdpRedirect {
    fn drop(&mut self) {
        let index = self.index;
        let _ = self.netns.netlink(|h| async move {
            delete_filter(&h, index).await;
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

/// Deletes our filter from link `index`'s ingress, if there is one. rtnetlink's delete request
/// cannot name a priority (without one the kernel deletes every filter), so the message is
/// built here.
async fn delete_filter(h: &rtnetlink::Handle, index: u32) {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_INGRESS,
    };
    msg.header.info = u32::from(PRIORITY) << 16 | u32::from((libc::ETH_P_IP as u16).to_be());
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut h = h.clone();
    if let Ok(mut response) = h.request(req) {
        // ENOENT when there was none: nothing to do.
        while response.next().await.is_some() {}
    }
}
