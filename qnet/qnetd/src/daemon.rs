//! The control side of the daemon: it owns the state, checks and applies every change (attach
//! or detach a local endpoint, store the state, hand the data plane new tables), and brings the
//! node back as it was after a restart.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use qnet::phy::{Tap, TapOptions};
use qnet::runner::RunningStack;
use qnet_netns::{EndSetup, Ipv4Net, LinkJoin, Netns};
use thiserror::Error;

use crate::cluster::{self, Cluster, Event};
use crate::dataplane::{self, DataplaneHandle, Update};
use crate::forward::{Counters, CountersSnapshot, EndpointId, Tables};
use crate::model::{Endpoint, EndpointSpec, ModelError, Place, SecurityGroup, State, Vpc, VpcSpec};
use crate::store::StateFile;
use crate::tunnel::{self, Tunnel};
use crate::wire::OVERLAY_OVERHEAD;

/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN source ports in use: flows are spread over this many.
const SENDERS: usize = 8;
/// The tunnel device's name, in the node's namespace.
pub const TUNNEL_DEVICE: &str = "qnetd0";
/// Sockets one ring endpoint's stack may hold (a qvisor container's own stack has as many).
const RING_SLOTS: u32 = 1024;
/// The largest frame an endpoint is let send: with the 50 bytes VXLAN puts in front of it, it
/// stays below the underlay's 64 KiB GSO limit, so it crosses the tunnel device whole
/// ([`crate::tunnel`]).
const FRAME_GSO_MAX: u32 = tunnel::MAX_FRAME as u32 - OVERLAY_OVERHEAD;

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the state is kept.
    pub state: PathBuf,
    /// This node's address on the underlay; VXLAN is received and sent from it.
    pub underlay: Ipv4Addr,
    pub port: u16,
    /// The underlay's MTU; endpoints get this less the VXLAN overhead.
    pub underlay_mtu: u32,
    /// Whether VXLAN goes whole through a tunnel device ([`crate::tunnel`]).
    pub tunnel: tunnel::Mode,
    /// The cluster's etcd, when nodes share their VPCs and endpoints (else each node is told
    /// about the others' endpoints through its own API).
    pub etcd: Option<EtcdConfig>,
    /// Where ring endpoints' sockets are made.
    pub rings: PathBuf,
}

#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix; clusters sharing one etcd differ in it.
    pub prefix: String,
}

/// Why an API call failed.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

struct Inner {
    state: State,
    /// The data plane's id of each attached local endpoint, by name.
    ids: HashMap<String, EndpointId>,
    /// What an attached endpoint holds besides its TAP (which the data plane has), by name.
    holds: HashMap<String, Hold>,
    next_id: EndpointId,
}

/// What keeps an endpoint on an existing link or a socket ring attached; dropped on detach.
enum Hold {
    /// The link joined to the daemon's TAP.
    Link { _join: LinkJoin },
    /// The endpoint's stack, its TAP joined to the daemon's. Fields drop in order: the join
    /// goes before the stack (and its TAP).
    Ring {
        _join: LinkJoin,
        _stack: RunningStack,
    },
}

/// How long a starting daemon waits for the VXLAN port to come free.
const BIND_PATIENCE: Duration = Duration::from_secs(5);

/// Binds the VXLAN port, waiting up to `patience` while it is in use: a predecessor
/// that was killed releases it only when the kernel has torn down its io_uring, which runs
/// after the process is reaped, so a restart right after a crash would otherwise fail.
fn bind_vxlan(at: SocketAddrV4, patience: Duration) -> std::io::Result<UdpSocket> {
    let end = Instant::now() + patience;
    let mut logged = false;
    loop {
        match UdpSocket::bind(at) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < end => {
                if !logged {
                    tracing::info!(%at, "VXLAN port in use, waiting for it to come free");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

pub struct Daemon {
    cfg: Config,
    overlay_mtu: u32,
    store: StateFile,
    inner: Mutex<Inner>,
    plane: DataplaneHandle,
    counters: Arc<Counters>,
    cluster: std::sync::OnceLock<Cluster>,
    /// The tunnel device's redirect on the underlay link, removed by [`Daemon::stop`].
    redirect: Mutex<Option<qnet_netns::UdpRedirect>>,
}

impl Daemon {
    /// Undoes what the daemon changed outside its own devices before the process ends (on
    /// SIGTERM or SIGINT): the underlay link's redirect to the tunnel device. Endpoints and
    /// their persistent TAPs stay, for the next start.
    pub fn stop(&self) {
        let redirect = self
            .redirect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(redirect);
        tracing::info!("stopped");
    }

    /// Binds the underlay socket, starts the data plane and re-attaches the stored endpoints.
    pub fn start(cfg: Config) -> anyhow::Result<Arc<Daemon>> {
        let overlay_mtu = cfg
            .underlay_mtu
            .checked_sub(OVERLAY_OVERHEAD)
            .filter(|m| *m >= 576)
            .with_context(|| format!("underlay MTU {} is too small", cfg.underlay_mtu))?;
        let store = StateFile::new(&cfg.state);
        let state = store.load()?;
        let udp = bind_vxlan(SocketAddrV4::new(cfg.underlay, cfg.port), BIND_PATIENCE)
            .with_context(|| format!("binding VXLAN to {}:{}", cfg.underlay, cfg.port))?;
        grow_buffers(&udp);
        // Senders on ephemeral ports: a flow's VXLAN source port is that of the sender its
        // inner addresses and ports hash to (RFC 7348 5), so the underlay spreads flows over
        // its paths (ECMP) and receivers over their queues (RSS).
        let senders = (0..SENDERS)
            .map(|_| {
                let s = UdpSocket::bind(SocketAddrV4::new(cfg.underlay, 0))
                    .with_context(|| format!("binding a VXLAN sender on {}", cfg.underlay))?;
                grow_buffers(&s);
                anyhow::Ok(s)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut tunnel = Tunnel::open(
            cfg.tunnel,
            TUNNEL_DEVICE,
            cfg.underlay,
            cfg.port,
            cfg.underlay_mtu,
        )?;
        let redirect = tunnel.as_mut().and_then(Tunnel::take_redirect);
        let counters = Arc::new(Counters::default());
        let plane = dataplane::spawn(udp, tunnel, senders, cfg.port, counters.clone())
            .context("starting the data plane")?;
        let daemon = Arc::new(Daemon {
            cfg,
            overlay_mtu,
            store,
            inner: Mutex::new(Inner {
                state,
                ids: HashMap::new(),
                holds: HashMap::new(),
                next_id: 1,
            }),
            plane,
            counters,
            cluster: std::sync::OnceLock::new(),
            redirect: Mutex::new(redirect),
        });
        {
            let mut inner = daemon.lock();
            let locals: Vec<Endpoint> = inner
                .state
                .endpoints
                .values()
                .filter(|e| e.place.is_local())
                .cloned()
                .collect();
            let mut attached = Vec::new();
            for ep in locals {
                let vpc = inner.state.vpcs[&ep.vpc].clone();
                match daemon.attach(&mut inner, &ep, &vpc) {
                    Ok(a) => {
                        attached.push(a);
                        tracing::info!(endpoint = %ep.name, "re-attached")
                    }
                    // Its namespace may be gone while we were down: keep it, unreachable,
                    // until it is deleted.
                    Err(e) => {
                        tracing::warn!(endpoint = %ep.name, error = %format!("{e:#}"), "cannot re-attach")
                    }
                }
            }
            daemon.publish(&inner);
            for (id, tap) in attached {
                daemon.plane.send(Update::Attach(id, tap));
            }
        }
        if let Some(etcd) = daemon.cfg.etcd.clone() {
            let (tx, rx) = crossbeam_channel::unbounded();
            let c = Cluster::start(etcd.endpoints, etcd.prefix, tx)?;
            let _ = daemon.cluster.set(c);
            let d = daemon.clone();
            std::thread::Builder::new()
                .name("qnetd-cluster".into())
                .spawn(move || {
                    for event in rx {
                        d.apply(event);
                    }
                })
                .context("starting the cluster thread")?;
        }
        Ok(daemon)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// The MTU endpoints get.
    pub fn overlay_mtu(&self) -> u32 {
        self.overlay_mtu
    }

    fn publish(&self, inner: &Inner) {
        let tables = Tables::new(&inner.state, &inner.ids, self.overlay_mtu);
        self.plane.send(Update::Tables(Arc::new(tables)));
    }

    fn save(&self, state: &State) -> Result<(), ApiError> {
        self.store.save(state).map_err(ApiError::Internal)
    }

    pub fn add_vpc(&self, spec: &VpcSpec) -> Result<Vpc, ApiError> {
        let mut inner = self.lock();
        let vpc = inner.state.check_vpc(spec)?;
        if let Some(c) = self.cluster.get() {
            c.create_vpc(&vpc)?;
        }
        let mut next = inner.state.clone();
        next.vpcs.insert(vpc.name.clone(), vpc.clone());
        self.save(&next)?;
        inner.state = next;
        self.publish(&inner);
        tracing::info!(vpc = %vpc.name, vni = vpc.vni, cidr = %vpc.cidr, "VPC added");
        Ok(vpc)
    }

    pub fn delete_vpc(&self, name: &str) -> Result<(), ApiError> {
        let mut inner = self.lock();
        inner.state.check_vpc_removal(name)?;
        if let (Some(c), Some(vpc)) = (self.cluster.get(), inner.state.vpcs.get(name)) {
            c.delete_vpc(vpc)?;
        }
        let mut next = inner.state.clone();
        next.vpcs.remove(name);
        self.save(&next)?;
        inner.state = next;
        self.publish(&inner);
        tracing::info!(vpc = %name, "VPC deleted");
        Ok(())
    }

    /// Adds `group`, or replaces the rules of the group of its name (`replace`); endpoints in
    /// it get the new rules at once.
    pub fn put_security_group(&self, group: &SecurityGroup, replace: bool) -> Result<(), ApiError> {
        let mut inner = self.lock();
        inner.state.check_security_group(group, replace)?;
        let mut next = inner.state.clone();
        next.security_groups
            .insert(group.name.clone(), group.clone());
        self.save(&next)?;
        inner.state = next;
        self.publish(&inner);
        tracing::info!(group = %group.name, rules = group.rules.len(), "security group set");
        Ok(())
    }

    pub fn delete_security_group(&self, name: &str) -> Result<(), ApiError> {
        let mut inner = self.lock();
        inner.state.check_security_group_removal(name)?;
        let mut next = inner.state.clone();
        next.security_groups.remove(name);
        self.save(&next)?;
        inner.state = next;
        self.publish(&inner);
        tracing::info!(group = %name, "security group deleted");
        Ok(())
    }

    pub fn add_endpoint(&self, spec: &EndpointSpec) -> Result<Endpoint, ApiError> {
        let mut inner = self.lock();
        let ep = inner
            .state
            .check_endpoint(spec, self.cfg.underlay, &self.cfg.rings)?;
        let vpc = inner.state.vpcs[&ep.vpc].clone();
        let attached = if ep.place.is_local() {
            Some(
                self.attach(&mut inner, &ep, &vpc)
                    .map_err(|e| ModelError::Invalid(format!("{e:#}")))?,
            )
        } else {
            None
        };
        // Undoes the attachment when a later step fails.
        let unattach = |inner: &mut Inner, attached: Option<(EndpointId, Tap)>| {
            inner.ids.remove(&ep.name);
            inner.holds.remove(&ep.name);
            if let Some((_, tap)) = attached {
                let _ = tap.set_persist(false);
            }
        };
        if let Some(c) = self.cluster.get() {
            let local = attached.is_some();
            if let Err(e) = c.publish(&cluster::published(&ep, self.cfg.underlay), local) {
                unattach(&mut inner, attached);
                return Err(e.into());
            }
        }
        let mut next = inner.state.clone();
        next.endpoints.insert(ep.name.clone(), ep.clone());
        if let Err(e) = self.save(&next) {
            unattach(&mut inner, attached);
            return Err(e);
        }
        inner.state = next;
        // Tables first: the endpoint's first frames (its ARP) find it there.
        self.publish(&inner);
        if let Some((id, tap)) = attached {
            self.plane.send(Update::Attach(id, tap));
        }
        tracing::info!(endpoint = %ep.name, vpc = %ep.vpc, ip = %ep.ip, "endpoint added");
        Ok(ep)
    }

    pub fn delete_endpoint(&self, name: &str) -> Result<(), ApiError> {
        let mut inner = self.lock();
        let Some(ep) = inner.state.endpoints.get(name) else {
            return Err(ModelError::NotFound(format!("no endpoint {name:?}")).into());
        };
        if let Some(c) = self.cluster.get() {
            c.withdraw(ep)?;
        }
        let mut next = inner.state.clone();
        next.endpoints.remove(name);
        self.save(&next)?;
        inner.state = next;
        self.detach(&mut inner, name);
        self.publish(&inner);
        tracing::info!(endpoint = %name, "endpoint deleted");
        Ok(())
    }

    /// Attaches local endpoint `ep` (or takes up what a previous run left) and gives it an
    /// id; the caller hands its TAP to the data plane.
    fn attach(
        &self,
        inner: &mut Inner,
        ep: &Endpoint,
        vpc: &Vpc,
    ) -> anyhow::Result<(EndpointId, Tap)> {
        let id = inner.next_id;
        let (tap, hold) = match &ep.place {
            Place::Local {
                netns,
                ifname,
                existing: false,
            } => (self.make_tap(ep, vpc, netns, ifname)?, None),
            Place::Local {
                netns,
                ifname,
                existing: true,
            } => {
                let (tap, join) = self.join_link(netns, ifname)?;
                (tap, Some(Hold::Link { _join: join }))
            }
            Place::Ring {
                socket,
                buffers_mib,
            } => {
                let budget = (*buffers_mib as usize) << 20;
                let (tap, join, stack) = self.start_ring(ep, vpc, id, socket, budget)?;
                (
                    tap,
                    Some(Hold::Ring {
                        _join: join,
                        _stack: stack,
                    }),
                )
            }
            Place::Remote { .. } => anyhow::bail!("endpoint {} is not local", ep.name),
        };
        inner.next_id += 1;
        inner.ids.insert(ep.name.clone(), id);
        if let Some(hold) = hold {
            inner.holds.insert(ep.name.clone(), hold);
        }
        Ok((id, tap))
    }

    /// An endpoint's TAP `name` in `netns` (None: the daemon's own): the overlay MTU, and
    /// checksum and TSO offloads (a pod's kernel hands over 64 KiB TCP frames).
    fn tap_options(
        &self,
        name: &str,
        netns: Option<&std::path::Path>,
        persist: bool,
    ) -> TapOptions {
        TapOptions {
            name: name.to_string(),
            netns: netns.map(|p| p.display().to_string()),
            mtu: self.overlay_mtu,
            peer_addr: None,
            offloads: true,
            persist,
        }
    }

    /// A TAP endpoint: the TAP `ifname` in `netns`, with the endpoint's MAC, address, route,
    /// overlay MTU and GSO size.
    fn make_tap(
        &self,
        ep: &Endpoint,
        vpc: &Vpc,
        netns: &std::path::Path,
        ifname: &str,
    ) -> anyhow::Result<Tap> {
        let tap = Tap::create(&self.tap_options(ifname, Some(netns), true))
            .with_context(|| format!("making {ifname} in {}", netns.display()))?;
        let set_up = Netns::open(netns).and_then(|ns| {
            ns.set_up_end(&EndSetup {
                ifname: ifname.to_string(),
                mac: ep.mac.0,
                mtu: self.overlay_mtu,
                addr: Ipv4Net {
                    addr: ep.ip,
                    prefix: vpc.cidr.prefix,
                },
                gateway: Some(vpc.gateway),
                gso_max_size: Some(FRAME_GSO_MAX),
            })
        });
        if let Err(e) = set_up {
            let _ = tap.set_persist(false);
            return Err(e).with_context(|| format!("setting up {ifname} in {}", netns.display()));
        }
        Ok(tap)
    }

    /// An endpoint on an existing link: a persistent TAP of the daemon's beside `ifname` in
    /// `netns`, named after the link's index (so a restart finds it again), joined to it. The
    /// far end's address, MTU and routes are its owner's.
    fn join_link(&self, netns: &std::path::Path, ifname: &str) -> anyhow::Result<(Tap, LinkJoin)> {
        let ns = Netns::open(netns)?;
        let index = ns
            .inspect()?
            .links
            .iter()
            .find(|l| l.name == ifname)
            .map(|l| l.index)
            .with_context(|| format!("{} has no link {ifname}", netns.display()))?;
        let name = format!("qe{index}");
        let tap = Tap::create(&self.tap_options(&name, Some(netns), true))
            .with_context(|| format!("making {name} in {}", netns.display()))?;
        quiet(&ns, &name);
        match ns.join_links(ifname, &name) {
            Ok(join) => Ok((tap, join)),
            Err(e) => {
                let _ = tap.set_persist(false);
                Err(e).with_context(|| format!("joining {ifname} to {name} in {}", netns.display()))
            }
        }
    }

    /// A ring endpoint: its own qnet stack (socket buffers within `budget` bytes), serving ring
    /// clients at `socket`, on a TAP `qrID` joined to the daemon's TAP `qsID`, both in the
    /// daemon's namespace and gone with it.
    fn start_ring(
        &self,
        ep: &Endpoint,
        vpc: &Vpc,
        id: EndpointId,
        socket: &std::path::Path,
        budget: usize,
    ) -> anyhow::Result<(Tap, LinkJoin, RunningStack)> {
        let mut cfg = qnet::StackConfig::new(qnet::Ipv4Cidr {
            addr: ep.ip,
            prefix: vpc.cidr.prefix,
        });
        cfg.gateway = Some(vpc.gateway);
        cfg.mac = qnet::Mac(ep.mac.0);
        cfg.mtu = self.overlay_mtu;
        cfg.gso_max = FRAME_GSO_MAX - 1;
        cfg.ring_slots = RING_SLOTS;
        cfg.buffer_budget = budget;
        let (stack_tap, our_tap) = (format!("qr{id}"), format!("qs{id}"));
        let stack = RunningStack::start(
            cfg,
            Some(&self.tap_options(&stack_tap, None, false)),
            socket,
        )
        .with_context(|| format!("starting the stack of ring endpoint {}", ep.name))?;
        let tap = Tap::create(&self.tap_options(&our_tap, None, false))
            .with_context(|| format!("making {our_tap}"))?;
        let here = Netns::current()?;
        quiet(&here, &stack_tap);
        quiet(&here, &our_tap);
        let join = here
            .join_links(&stack_tap, &our_tap)
            .with_context(|| format!("joining {stack_tap} to {our_tap}"))?;
        Ok((tap, join, stack))
    }

    /// Applies what the cluster's watch saw: VPCs, and the endpoints of other nodes (as
    /// remote ones); this node's own come back only as echoes and are left as they are.
    fn apply(&self, event: Event) {
        let me = self.cfg.underlay;
        let mut inner = self.lock();
        let mut next = inner.state.clone();
        let mut republish = false;
        let mut unknown_vpcs = Vec::new();
        let theirs = |e: &Endpoint| matches!(e.place, Place::Remote { node } if node != me);
        match event {
            Event::Snapshot { vpcs, endpoints } => {
                unknown_vpcs = next
                    .vpcs
                    .values()
                    .filter(|v| !vpcs.iter().any(|c| c.name == v.name))
                    .cloned()
                    .collect();
                for v in vpcs {
                    next.vpcs.insert(v.name.clone(), v);
                }
                // The cluster's view replaces the remote endpoints known before.
                next.endpoints.retain(|_, e| !theirs(e));
                for e in endpoints.into_iter().filter(|e| theirs(e)) {
                    self.admit(&mut next, e);
                }
                republish = true;
            }
            Event::VpcPut(v) => {
                next.vpcs.insert(v.name.clone(), v);
            }
            Event::VpcGone(name) => {
                if next.check_vpc_removal(&name).is_ok() {
                    next.vpcs.remove(&name);
                }
            }
            Event::EndpointPut(e) if theirs(&e) => self.admit(&mut next, e),
            Event::EndpointPut(_) => {}
            Event::EndpointGone(name) => match next.endpoints.get(&name).map(|e| &e.place) {
                Some(p) if p.is_local() => republish = true,
                Some(_) => {
                    next.endpoints.remove(&name);
                }
                None => {}
            },
            Event::Republish => republish = true,
        }
        if next != inner.state {
            if let Err(e) = self.save(&next) {
                tracing::warn!(error = %e, "storing the cluster's change");
            }
            inner.state = next;
            self.publish(&inner);
        }
        let Some(c) = self.cluster.get() else { return };
        for v in unknown_vpcs {
            if let Err(e) = c.create_vpc(&v) {
                tracing::warn!(vpc = %v.name, error = %e, "publishing a VPC to the cluster");
            }
        }
        if republish {
            for ep in inner.state.endpoints.values() {
                let local = ep.place.is_local();
                if local {
                    if let Err(e) = c.publish(&cluster::published(ep, me), local) {
                        tracing::warn!(endpoint = %ep.name, error = %e, "publishing to the cluster");
                    }
                }
            }
        }
    }

    /// Takes remote endpoint `e` into `next` if it fits (a local one of the same name stays).
    fn admit(&self, next: &mut State, e: Endpoint) {
        if matches!(next.endpoints.get(&e.name), Some(o) if o.place.is_local()) {
            tracing::warn!(endpoint = %e.name, "another node publishes an endpoint named as one here");
            return;
        }
        match next.check_remote(&e) {
            Ok(()) => {
                next.endpoints.insert(e.name.clone(), e);
            }
            Err(why) => tracing::warn!(endpoint = %e.name, why, "ignoring a cluster endpoint"),
        }
    }

    fn detach(&self, inner: &mut Inner, name: &str) {
        if let Some(id) = inner.ids.remove(name) {
            self.plane.send(Update::Detach(id));
        }
        inner.holds.remove(name);
    }
}

/// Keeps the kernel from sending its own IPv6 frames on device `name`, which only qnetd or a
/// stack of its should send on (they would be counted as spoofed); a failure costs only that.
fn quiet(ns: &Netns, name: &str) {
    if let Err(e) = ns.disable_ipv6(name) {
        tracing::warn!(device = name, error = %e, "turning IPv6 off");
    }
}

/// Gives the underlay socket room for bursts: a default-sized receive buffer (208 KiB) drops
/// datagrams whenever the data plane is a moment late, and every drop costs a TCP flow inside
/// the overlay a retransmission and half its window.
fn grow_buffers(udp: &UdpSocket) {
    use std::os::fd::AsRawFd;
    const BYTES: libc::c_int = 16 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                udp.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&BYTES as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "growing the underlay socket's buffers");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken() -> (UdpSocket, SocketAddrV4) {
        let holder = UdpSocket::bind("127.0.0.1:0").expect("binding a port");
        let at = match holder.local_addr().expect("its address") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not IPv4: {other}"),
        };
        (holder, at)
    }

    #[test]
    fn the_vxlan_port_is_taken_once_a_predecessor_lets_it_go() {
        let (holder, at) = taken();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(holder);
        });
        let udp = bind_vxlan(at, Duration::from_secs(5)).expect("binding after the release");
        assert_eq!(udp.local_addr().ok(), Some(at.into()));
        release.join().expect("the releasing thread");
    }

    #[test]
    fn a_port_held_past_the_patience_is_an_error() {
        let (_holder, at) = taken();
        let started = Instant::now();
        let err = bind_vxlan(at, Duration::from_millis(200)).expect_err("the port is held");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
