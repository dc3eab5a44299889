//! The control side of the daemon: it owns the state, checks and applies every change (attach
//! or detach a local endpoint, store the state, hand the data plane new tables), and brings the
//! node back as it was after a restart.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use qnet::phy::{Tap, TapOptions};
use qnet_netns::{EndSetup, Ipv4Net, Netns};
use thiserror::Error;

use crate::dataplane::{self, DataplaneHandle, Update};
use crate::forward::{Counters, CountersSnapshot, EndpointId, Tables};
use crate::model::{Endpoint, EndpointSpec, ModelError, Place, SecurityGroup, State, Vpc, VpcSpec};
use crate::store::StateFile;
use crate::wire::OVERLAY_OVERHEAD;

/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;

#[derive(Clone, Debug)]
pub struct Config {
    /// Where the state is kept.
    pub state: PathBuf,
    /// This node's address on the underlay; VXLAN is received and sent from it.
    pub underlay: Ipv4Addr,
    pub port: u16,
    /// The underlay's MTU; endpoints get this less the VXLAN overhead.
    pub underlay_mtu: u32,
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
    next_id: EndpointId,
}

pub struct Daemon {
    cfg: Config,
    overlay_mtu: u32,
    store: StateFile,
    inner: Mutex<Inner>,
    plane: DataplaneHandle,
    counters: Arc<Counters>,
}

impl Daemon {
    /// Binds the underlay socket, starts the data plane and re-attaches the stored endpoints.
    pub fn start(cfg: Config) -> anyhow::Result<Arc<Daemon>> {
        let overlay_mtu = cfg
            .underlay_mtu
            .checked_sub(OVERLAY_OVERHEAD)
            .filter(|m| *m >= 576)
            .with_context(|| format!("underlay MTU {} is too small", cfg.underlay_mtu))?;
        let store = StateFile::new(&cfg.state);
        let state = store.load()?;
        let udp = UdpSocket::bind(SocketAddrV4::new(cfg.underlay, cfg.port))
            .with_context(|| format!("binding VXLAN to {}:{}", cfg.underlay, cfg.port))?;
        grow_buffers(&udp);
        let counters = Arc::new(Counters::default());
        let plane =
            dataplane::spawn(udp, cfg.port, counters.clone()).context("starting the data plane")?;
        let daemon = Arc::new(Daemon {
            cfg,
            overlay_mtu,
            store,
            inner: Mutex::new(Inner {
                state,
                ids: HashMap::new(),
                next_id: 1,
            }),
            plane,
            counters,
        });
        {
            let mut inner = daemon.lock();
            let locals: Vec<Endpoint> = inner
                .state
                .endpoints
                .values()
                .filter(|e| matches!(e.place, Place::Local { .. }))
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
        let ep = inner.state.check_endpoint(spec, self.cfg.underlay)?;
        let vpc = inner.state.vpcs[&ep.vpc].clone();
        let attached = match ep.place {
            Place::Local { .. } => Some(
                self.attach(&mut inner, &ep, &vpc)
                    .map_err(|e| ModelError::Invalid(format!("{e:#}")))?,
            ),
            Place::Remote { .. } => None,
        };
        let mut next = inner.state.clone();
        next.endpoints.insert(ep.name.clone(), ep.clone());
        if let Err(e) = self.save(&next) {
            inner.ids.remove(&ep.name);
            if let Some((_, tap)) = attached {
                let _ = tap.set_persist(false);
            }
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
        if !inner.state.endpoints.contains_key(name) {
            return Err(ModelError::NotFound(format!("no endpoint {name:?}")).into());
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

    /// Makes local endpoint `ep`'s interface in its namespace (or takes up the one a previous
    /// run left) and gives it an id; the caller hands it to the data plane.
    fn attach(
        &self,
        inner: &mut Inner,
        ep: &Endpoint,
        vpc: &Vpc,
    ) -> anyhow::Result<(EndpointId, Tap)> {
        let Place::Local { netns, ifname } = &ep.place else {
            anyhow::bail!("endpoint {} is not local", ep.name);
        };
        let tap = Tap::create(&TapOptions {
            name: ifname.clone(),
            netns: Some(netns.display().to_string()),
            mtu: self.overlay_mtu,
            peer_addr: None,
            // Checksum and TSO offloads: the pod's kernel hands over 64 KiB TCP frames.
            offloads: true,
            persist: true,
        })
        .with_context(|| format!("making {ifname} in {}", netns.display()))?;
        let set_up = Netns::open(netns).and_then(|ns| {
            ns.set_up_end(&EndSetup {
                ifname: ifname.clone(),
                mac: ep.mac.0,
                mtu: self.overlay_mtu,
                addr: Ipv4Net {
                    addr: ep.ip,
                    prefix: vpc.cidr.prefix,
                },
                gateway: Some(vpc.gateway),
            })
        });
        if let Err(e) = set_up {
            let _ = tap.set_persist(false);
            return Err(e).with_context(|| format!("setting up {ifname} in {}", netns.display()));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.ids.insert(ep.name.clone(), id);
        Ok((id, tap))
    }

    fn detach(&self, inner: &mut Inner, name: &str) {
        if let Some(id) = inner.ids.remove(name) {
            self.plane.send(Update::Detach(id));
        }
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
