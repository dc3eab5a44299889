//! Wiring a pod the way the reference ptp plugin does: a veth pair whose host end holds the
//! gateway address (/32) with a /32 route to the pod, and whose pod end holds the pod's address
//! with every destination, its own subnet included, routed through the gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{is_exists, Ipv4Net, Netns, NetnsError, Result};

/// One routed point-to-point pod link.
#[derive(Clone, Debug)]
pub struct PtpLink {
    /// The host end's name (at most 15 bytes).
    pub host_ifname: String,
    /// The pod end's name (CNI_IFNAME).
    pub pod_ifname: String,
    pub mtu: Option<u32>,
    /// The pod's address and prefix.
    pub addr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// More routes in the pod: destination and gateway (`None`: the link's gateway).
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
    /// The host end's alias: what it belongs to, for garbage collection.
    pub alias: String,
}

/// One pod on a Linux bridge, as the reference bridge plugin wires it: a veth whose host end
/// is a port of the bridge (made on first use, shared by the node's pods, kept after DEL) and
/// whose pod end holds the pod's address with its subnet on the link.
#[derive(Clone, Debug)]
pub struct BridgeLink {
    pub bridge: String,
    /// The host end's name (at most 15 bytes).
    pub host_ifname: String,
    /// The pod end's name (CNI_IFNAME).
    pub pod_ifname: String,
    pub mtu: Option<u32>,
    /// The pod's address and prefix.
    pub addr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The bridge holds the gateway address (`isGateway`).
    pub is_gateway: bool,
    /// A default route through the gateway in the pod (`isDefaultGateway`).
    pub default_route: bool,
    /// The bridge is promiscuous (`promiscMode`).
    pub promisc: bool,
    /// More routes in the pod: destination and gateway (`None`: the link's gateway).
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
    /// The host end's alias: what it belongs to, for garbage collection.
    pub alias: String,
}

/// The MAC addresses of a link's two ends.
#[derive(Clone, Copy, Debug)]
pub struct Macs {
    pub host: [u8; 6],
    pub pod: [u8; 6],
}

async fn index_of(ns: &Netns, h: &Handle, name: &str) -> Result<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        _ => Err(NetnsError::NoSuchInterface {
            path: ns.path.display().to_string(),
            name: name.to_string(),
        }),
    }
}

/// A veth `host_ifname` here whose peer (`tmp`) goes into the namespace of `pod_fd`; the host
/// end's index.
/// The host end of a pod's veth: its name, alias and MTU.
pub(crate) struct HostEnd<'a> {
    name: &'a str,
    alias: &'a str,
    mtu: Option<u32>,
}

impl PtpLink {
    fn host_end(&self) -> HostEnd<'_> {
        HostEnd {
            name: &self.host_ifname,
            alias: &self.alias,
            mtu: self.mtu,
        }
    }
}

impl BridgeLink {
    fn host_end(&self) -> HostEnd<'_> {
        HostEnd {
            name: &self.host_ifname,
            alias: &self.alias,
            mtu: self.mtu,
        }
    }
}

async fn veth_to(
    ns: &Netns,
    h: &Handle,
    host: HostEnd<'_>,
    tmp: &str,
    pod_fd: std::os::fd::RawFd,
) -> Result<u32> {
    let host_ifname = host.name;
    let mut veth = LinkVeth::new(host_ifname, tmp);
    if let Some(mtu) = host.mtu {
        veth = veth.mtu(mtu);
    }
    h.link()
        .add(veth.build())
        .execute()
        .await
        .map_err(ns.err(format!("creating veth {host_ifname}")))?;
    let index = index_of(ns, h, host_ifname).await?;
    h.link()
        .set(LinkUnspec::new_with_index(index).alias(host.alias).build())
        .execute()
        .await
        .map_err(ns.err(format!("tagging {host_ifname}")))?;
    let peer = index_of(ns, h, tmp).await?;
    h.link()
        .set(LinkUnspec::new_with_index(peer).setns_by_fd(pod_fd).build())
        .execute()
        .await
        .map_err(ns.err("moving the pod end into the pod's namespace"))?;
    index_of(ns, h, host_ifname).await
}

/// In the pod: the veth end that arrived as `tmp` renamed `name` and up; its index.
async fn name_pod_end(pod: &Netns, h: &Handle, tmp: &str, name: &str) -> Result<u32> {
    let index = index_of(pod, h, tmp).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(name.to_string())
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(pod.err(format!("naming the pod end {name}")))?;
    Ok(index)
}

async fn add_addr(
    ns: &Netns,
    h: &Handle,
    index: u32,
    net: Ipv4Net,
    noprefixroute: bool,
) -> Result<()> {
    let mut add = h.address().add(index, IpAddr::V4(net.addr), net.prefix);
    if noprefixroute {
        add.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
    }
    match add.execute().await {
        Err(e) if !is_exists(&e) => Err(ns.err(format!("adding address {net}"))(e)),
        _ => Ok(()),
    }
}

async fn add_route(
    ns: &Netns,
    h: &Handle,
    index: u32,
    dst: Ipv4Net,
    via: Option<Ipv4Addr>,
    src: Option<Ipv4Addr>,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.addr, dst.prefix)
        .output_interface(index);
    if let Some(src) = src {
        b = b.pref_source(src);
    }
    b = match via {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    match h.route().add(b.build()).execute().await {
        Err(e) if !is_exists(&e) => Err(ns.err(format!("adding the route to {dst}"))(e)),
        _ => Ok(()),
    }
}

impl Netns {
    /// The caller's own network namespace (of the calling thread).
    pub fn current() -> Result<Netns> {
        Netns::open(std::path::Path::new("/proc/thread-self/ns/net"))
    }

    /// Creates `link` between this (the host's) namespace and `pod`. On failure nothing is
    /// left behind (the pair is deleted).
    pub fn add_ptp(&self, pod: &Netns, link: &PtpLink) -> Result<Macs> {
        self.add_pod_link(pod, &link.host_ifname, &link.pod_ifname, |tmp| {
            self.add_ptp_steps(pod, link, tmp)
        })
    }

    /// Makes a pod's veth with `steps` (given the temporary name of the pod end while it is
    /// still here, unique per host end); on an error deletes what they made. The MACs of the
    /// two ends.
    fn add_pod_link(
        &self,
        pod: &Netns,
        host_ifname: &str,
        pod_ifname: &str,
        steps: impl FnOnce(&str) -> Result<()>,
    ) -> Result<Macs> {
        let tmp = format!("{}p", &host_ifname[..host_ifname.len().min(14)]);
        let made = steps(&tmp);
        if made.is_err() {
            let _ = self.delete_link(host_ifname);
            let _ = self.delete_link(&tmp);
        }
        made?;
        let host = self.mac_of(host_ifname)?;
        let pod_mac = pod.mac_of(pod_ifname)?;
        Ok(Macs { host, pod: pod_mac })
    }

    fn add_ptp_steps(&self, pod: &Netns, link: &PtpLink, tmp: &str) -> Result<()> {
        let pod_fd = pod.file.as_raw_fd();
        self.netlink(|h| async move {
            let host = veth_to(self, &h, link.host_end(), tmp, pod_fd).await?;
            h.link()
                .set(LinkUnspec::new_with_index(host).up().build())
                .execute()
                .await
                .map_err(self.err(format!("bringing {} up", link.host_ifname)))?;
            let gw = Ipv4Net {
                addr: link.gateway,
                prefix: 32,
            };
            add_addr(self, &h, host, gw, true).await?;
            let to_pod = Ipv4Net {
                addr: link.addr.addr,
                prefix: 32,
            };
            add_route(self, &h, host, to_pod, None, None).await
        })?;
        pod.netlink(|h| async move {
            let index = name_pod_end(pod, &h, tmp, &link.pod_ifname).await?;
            // No prefix route: the subnet too goes through the gateway, as with ptp.
            add_addr(pod, &h, index, link.addr, true).await?;
            let gw = Ipv4Net {
                addr: link.gateway,
                prefix: 32,
            };
            // As ptp: the gateway and the subnet with the pod's address as source.
            let src = Some(link.addr.addr);
            add_route(pod, &h, index, gw, None, src).await?;
            add_route(pod, &h, index, link.addr.network(), Some(link.gateway), src).await?;
            for (dst, via) in &link.routes {
                let via = Some(via.unwrap_or(link.gateway));
                add_route(pod, &h, index, *dst, via, None).await?;
            }
            Ok(())
        })
    }

    /// Wires `pod` to the bridge of `link` here; the MACs of the veth's ends. On an error
    /// nothing of this pod is left (the bridge stays: other pods may use it).
    pub fn add_bridged(&self, pod: &Netns, link: &BridgeLink) -> Result<Macs> {
        self.add_pod_link(pod, &link.host_ifname, &link.pod_ifname, |tmp| {
            self.add_bridged_steps(pod, link, tmp)
        })
    }

    fn add_bridged_steps(&self, pod: &Netns, link: &BridgeLink, tmp: &str) -> Result<()> {
        let pod_fd = pod.file.as_raw_fd();
        self.netlink(|h| async move {
            let bridge = match index_of(self, &h, &link.bridge).await {
                Ok(i) => i,
                Err(_) => {
                    let mut b = LinkBridge::new(&link.bridge);
                    if let Some(mtu) = link.mtu {
                        b = b.mtu(mtu);
                    }
                    match h.link().add(b.build()).execute().await {
                        Err(e) if !is_exists(&e) => {
                            return Err(self.err(format!("creating bridge {}", link.bridge))(e))
                        }
                        _ => {}
                    }
                    index_of(self, &h, &link.bridge).await?
                }
            };
            // Promiscuity is only ever turned on: another network may share the bridge.
            let mut up = LinkUnspec::new_with_index(bridge).up();
            if link.promisc {
                up = up.promiscuous(true);
            }
            h.link()
                .set(up.build())
                .execute()
                .await
                .map_err(self.err(format!("bringing {} up", link.bridge)))?;
            if link.is_gateway {
                let gw = Ipv4Net {
                    addr: link.gateway,
                    prefix: link.addr.prefix,
                };
                add_addr(self, &h, bridge, gw, false).await?;
            }
            let host = veth_to(self, &h, link.host_end(), tmp, pod_fd).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(host)
                        .controller(bridge)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(self.err(format!("attaching {} to {}", link.host_ifname, link.bridge)))
        })?;
        pod.netlink(|h| async move {
            let index = name_pod_end(pod, &h, tmp, &link.pod_ifname).await?;
            // The subnet is on the link: the pod reaches its neighbours through the bridge.
            add_addr(pod, &h, index, link.addr, false).await?;
            if link.default_route {
                let any = Ipv4Net {
                    addr: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                };
                add_route(pod, &h, index, any, Some(link.gateway), None).await?;
            }
            for (dst, via) in &link.routes {
                let via = Some(via.unwrap_or(link.gateway));
                add_route(pod, &h, index, *dst, via, None).await?;
            }
            Ok(())
        })
    }

    /// Deletes link `name` here; `Ok(false)` if there is none (DEL must be idempotent).
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        self.netlink(|h| async move {
            let Ok(index) = index_of(self, &h, name).await else {
                return Ok(false);
            };
            h.link()
                .del(index)
                .execute()
                .await
                .map_err(self.err(format!("deleting link {name}")))?;
            Ok(true)
        })
    }

    /// The MAC of link `name` here.
    pub fn mac_of(&self, name: &str) -> Result<[u8; 6]> {
        let snap = self.inspect()?;
        snap.links
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.mac)
            .ok_or_else(|| NetnsError::NoSuchInterface {
                path: self.path.display().to_string(),
                name: name.to_string(),
            })
    }
}

/// The pod end of an attachment that exists already in the namespace (a TAP made there by
/// qnetd): its MAC, MTU and address, and the default route through the gateway.
#[derive(Clone, Debug)]
pub struct EndSetup {
    pub ifname: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The address with the prefix of the network it is on (the link route comes with it).
    pub addr: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The largest frame the kernel may hand to the device for segmentation (TSO), when it
    /// must be below the default 64 KiB.
    pub gso_max_size: Option<u32>,
}

impl Netns {
    /// Sets up `end` here; repeating it is harmless (a restarted daemon re-applies it).
    pub fn set_up_end(&self, end: &EndSetup) -> Result<()> {
        self.netlink(|h| async move {
            let index = index_of(self, &h, &end.ifname).await?;
            let mut link = LinkUnspec::new_with_index(index)
                .address(end.mac.to_vec())
                .mtu(end.mtu);
            if let Some(max) = end.gso_max_size {
                link = link.append_extra_attribute(LinkAttribute::GsoMaxSize(max));
            }
            h.link()
                .set(link.up().build())
                .execute()
                .await
                .map_err(self.err(format!("setting up {}", end.ifname)))?;
            add_addr(self, &h, index, end.addr, false).await?;
            if let Some(gateway) = end.gateway {
                let any = Ipv4Net {
                    addr: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                };
                add_route(self, &h, index, any, Some(gateway), None).await?;
            }
            Ok(())
        })
    }
}
