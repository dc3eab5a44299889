//! The multi-node control plane on etcd. VPCs and endpoints are shared by every node under a
//! key prefix; each node publishes its local endpoints (as remote ones, at its underlay
//! address) attached to a lease it keeps alive, so a dead node's endpoints disappear when the
//! lease runs out; each node watches the prefix and learns the others' endpoints within the
//! watch's latency.
//!
//! Keys under the prefix (values are JSON):
//! `vpcs/NAME` (a [`Vpc`]), `vnis/VNI` (the VPC's name), `endpoints/NAME` (an [`Endpoint`]
//! placed at its node), `addrs/VPC/IP` (the endpoint's name). Creations are transactions that
//! fail when a name, VNI or address is taken.
//!
//! etcd is async; the daemon is not. An actor thread owns the client: the daemon sends it
//! requests and waits for the answer; what the watch sees goes out on a channel that a
//! thread of the daemon applies (so the actor never waits for the daemon's lock).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::Sender as EventSender;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use crate::model::{Endpoint, ModelError, Place, Vpc};

/// How long a node's endpoints outlive it (seconds); the lease is renewed every third of it.
pub const LEASE_TTL: i64 = 3;

/// What the watch saw, for the daemon to apply.
#[derive(Debug)]
pub enum Event {
    /// Everything under the prefix when the node (re)connected.
    Snapshot {
        vpcs: Vec<Vpc>,
        endpoints: Vec<Endpoint>,
    },
    VpcPut(Vpc),
    VpcGone(String),
    EndpointPut(Endpoint),
    EndpointGone(String),
    /// The lease was lost and a new one granted: the node's endpoints must be published again.
    Republish,
}

enum Request {
    CreateVpc(Vpc),
    DeleteVpc(Vpc),
    Publish { ep: Endpoint, leased: bool },
    Withdraw(Endpoint),
}

type Reply = Result<(), ModelError>;

/// The daemon's handle on the actor.
pub struct Cluster {
    tx: mpsc::UnboundedSender<(Request, std::sync::mpsc::Sender<Reply>)>,
}

fn internal(e: impl std::fmt::Display) -> ModelError {
    // A store that cannot be reached is not the caller's fault, but it is a refusal the
    // caller can retry.
    ModelError::Conflict(format!("etcd: {e}"))
}

impl Cluster {
    /// Connects to etcd at `endpoints` (URLs), takes a lease, sends the first
    /// [`Event::Snapshot`] and then every change on `events`.
    pub fn start(
        endpoints: Vec<String>,
        prefix: String,
        events: EventSender<Event>,
    ) -> anyhow::Result<Cluster> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("qnetd-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                rt.block_on(run(endpoints, prefix, events, rx, ready_tx));
            })
            .context("starting the etcd thread")?;
        ready_rx.recv().context("the etcd thread ended")??;
        Ok(Cluster { tx })
    }

    fn call(&self, req: Request) -> Reply {
        // A std channel: the caller may be a thread of another async runtime (the API's),
        // where blocking on a tokio channel is refused.
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .send((req, tx))
            .map_err(|_| internal("the etcd thread ended"))?;
        rx.recv().map_err(|_| internal("the etcd thread ended"))?
    }

    pub fn create_vpc(&self, vpc: &Vpc) -> Reply {
        self.call(Request::CreateVpc(vpc.clone()))
    }

    pub fn delete_vpc(&self, vpc: &Vpc) -> Reply {
        self.call(Request::DeleteVpc(vpc.clone()))
    }

    /// Publishes `ep` as the others see it (a remote endpoint at its node); `leased`: it goes
    /// with this node's lease (a local endpoint) rather than staying until deleted.
    pub fn publish(&self, ep: &Endpoint, leased: bool) -> Reply {
        self.call(Request::Publish {
            ep: ep.clone(),
            leased,
        })
    }

    pub fn withdraw(&self, ep: &Endpoint) -> Reply {
        self.call(Request::Withdraw(ep.clone()))
    }
}

struct Keys(String);

impl Keys {
    fn vpc(&self, name: &str) -> String {
        format!("{}/vpcs/{name}", self.0)
    }
    fn vni(&self, vni: u32) -> String {
        format!("{}/vnis/{vni}", self.0)
    }
    fn endpoint(&self, name: &str) -> String {
        format!("{}/endpoints/{name}", self.0)
    }
    fn addr(&self, vpc: &str, ip: Ipv4Addr) -> String {
        format!("{}/addrs/{vpc}/{ip}", self.0)
    }
}

async fn run(
    endpoints: Vec<String>,
    prefix: String,
    events: EventSender<Event>,
    mut requests: mpsc::UnboundedReceiver<(Request, std::sync::mpsc::Sender<Reply>)>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let keys = Keys(prefix.trim_end_matches('/').to_string());
    let connected = async {
        let mut client = Client::connect(&endpoints, None)
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
        let lease = client
            .lease_grant(LEASE_TTL, None)
            .await
            .context("taking a lease from etcd")?
            .id();
        let snapshot = client
            .get(
                format!("{}/", keys.0),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .context("reading the cluster state from etcd")?;
        anyhow::Ok((client, lease, snapshot))
    }
    .await;
    let (mut client, lease, snapshot) = match connected {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let revision = snapshot.header().map_or(0, |h| h.revision());
    let (mut vpcs, mut eps) = (Vec::new(), Vec::new());
    for kv in snapshot.kvs() {
        match decode(&keys, kv.key_str().unwrap_or_default(), kv.value()) {
            Some(Event::VpcPut(v)) => vpcs.push(v),
            Some(Event::EndpointPut(e)) => eps.push(e),
            _ => {}
        }
    }
    let _ = events.send(Event::Snapshot {
        vpcs,
        endpoints: eps,
    });
    let _ = ready.send(Ok(()));
    let lease = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(lease));
    tokio::spawn(keep_alive(client.clone(), lease.clone(), events.clone()));
    tokio::spawn(watch(client.clone(), keys.0.clone(), revision + 1, events));
    while let Some((req, reply)) = requests.recv().await {
        let lease = lease.load(std::sync::atomic::Ordering::Relaxed);
        let _ = reply.send(serve(&mut client, &keys, lease, req).await);
    }
}

/// Keeps the lease alive; when it is lost (etcd unreachable longer than its TTL), takes a new
/// one and asks the daemon to publish its endpoints again.
async fn keep_alive(
    mut client: Client,
    lease: std::sync::Arc<std::sync::atomic::AtomicI64>,
    events: EventSender<Event>,
) {
    use std::sync::atomic::Ordering;
    let period = Duration::from_millis(LEASE_TTL as u64 * 1000 / 3);
    loop {
        let id = lease.load(Ordering::Relaxed);
        let alive = async {
            let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
            loop {
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Ok::<(), etcd_client::Error>(()),
                }
                tokio::time::sleep(period).await;
            }
        }
        .await;
        tracing::warn!(error = ?alive.err(), "the etcd lease lapsed; taking a new one");
        loop {
            match client.lease_grant(LEASE_TTL, None).await {
                Ok(r) => {
                    lease.store(r.id(), Ordering::Relaxed);
                    let _ = events.send(Event::Republish);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd unreachable");
                    tokio::time::sleep(period).await;
                }
            }
        }
    }
}

/// Follows every change under the prefix from `revision` on.
async fn watch(mut client: Client, prefix: String, mut revision: i64, events: EventSender<Event>) {
    let keys = Keys(prefix);
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        let streamed = async {
            let mut stream = client.watch(format!("{}/", keys.0), Some(opts)).await?;
            while let Some(resp) = stream.message().await? {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    revision = revision.max(kv.mod_revision() + 1);
                    let key = kv.key_str().unwrap_or_default();
                    let event = match ev.event_type() {
                        EventType::Put => decode(&keys, key, kv.value()),
                        EventType::Delete => gone(&keys, key),
                    };
                    if let Some(event) = event {
                        if events.send(event).is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            Ok::<(), etcd_client::Error>(())
        }
        .await;
        tracing::warn!(error = ?streamed.err(), "the etcd watch ended; watching again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The event a put of `key` with `value` means; None for keys of no interest or bad values
/// (logged: another node, or someone else, wrote them).
fn decode(keys: &Keys, key: &str, value: &[u8]) -> Option<Event> {
    let rest = key.strip_prefix(&keys.0)?.strip_prefix('/')?;
    let parsed = if rest.starts_with("vpcs/") {
        serde_json::from_slice::<Vpc>(value).map(Event::VpcPut)
    } else if rest.starts_with("endpoints/") {
        serde_json::from_slice::<Endpoint>(value).map(Event::EndpointPut)
    } else {
        return None;
    };
    parsed
        .map_err(|e| tracing::warn!(key, error = %e, "ignoring a malformed cluster entry"))
        .ok()
}

fn gone(keys: &Keys, key: &str) -> Option<Event> {
    let rest = key.strip_prefix(&keys.0)?.strip_prefix('/')?;
    if let Some(name) = rest.strip_prefix("vpcs/") {
        Some(Event::VpcGone(name.to_string()))
    } else {
        rest.strip_prefix("endpoints/")
            .map(|name| Event::EndpointGone(name.to_string()))
    }
}

async fn serve(client: &mut Client, keys: &Keys, lease: i64, req: Request) -> Reply {
    match req {
        Request::CreateVpc(vpc) => {
            let (k, vk) = (keys.vpc(&vpc.name), keys.vni(vpc.vni));
            let txn = Txn::new()
                .when([
                    Compare::version(k.clone(), CompareOp::Equal, 0),
                    Compare::version(vk.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(k.clone(), to_json(&vpc), None),
                    TxnOp::put(vk, vpc.name.clone(), None),
                ]);
            if client.txn(txn).await.map_err(internal)?.succeeded() {
                return Ok(());
            }
            // The same VPC made on another node is no conflict.
            let existing = client.get(k, None).await.map_err(internal)?;
            match existing
                .kvs()
                .first()
                .map(|kv| serde_json::from_slice::<Vpc>(kv.value()))
            {
                Some(Ok(v)) if v == vpc => Ok(()),
                Some(_) => Err(ModelError::Conflict(format!(
                    "VPC {:?} exists in the cluster with other settings",
                    vpc.name
                ))),
                None => Err(ModelError::Conflict(format!(
                    "VNI {} belongs to another VPC in the cluster",
                    vpc.vni
                ))),
            }
        }
        Request::DeleteVpc(vpc) => {
            let members = client
                .get(
                    format!("{}/addrs/{}/", keys.0, vpc.name),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(internal)?
                .count();
            if members > 0 {
                return Err(ModelError::Conflict(format!(
                    "VPC {:?} still has {members} endpoint(s) in the cluster",
                    vpc.name
                )));
            }
            let txn = Txn::new().and_then([
                TxnOp::delete(keys.vpc(&vpc.name), None),
                TxnOp::delete(keys.vni(vpc.vni), None),
            ]);
            client.txn(txn).await.map_err(internal)?;
            Ok(())
        }
        Request::Publish { ep, leased } => {
            let (k, ak) = (keys.endpoint(&ep.name), keys.addr(&ep.vpc, ep.ip));
            let opts = || leased.then(|| PutOptions::new().with_lease(lease));
            let puts = [
                TxnOp::put(k.clone(), to_json(&ep), opts()),
                TxnOp::put(ak.clone(), ep.name.clone(), opts()),
            ];
            let txn = Txn::new()
                .when([
                    Compare::version(k.clone(), CompareOp::Equal, 0),
                    Compare::version(ak.clone(), CompareOp::Equal, 0),
                ])
                .and_then(puts.clone());
            if client.txn(txn).await.map_err(internal)?.succeeded() {
                return Ok(());
            }
            // Ours already (published before a restart, or again after a lost lease): renew.
            let existing = client.get(k, None).await.map_err(internal)?;
            let owner = client.get(ak, None).await.map_err(internal)?;
            let same = existing
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<Endpoint>(kv.value()).ok())
                .is_some_and(|e| e.place == ep.place && e.ip == ep.ip && e.vpc == ep.vpc);
            let addr_free_or_ours = owner
                .kvs()
                .first()
                .is_none_or(|kv| kv.value() == ep.name.as_bytes());
            if same && addr_free_or_ours {
                client
                    .txn(Txn::new().and_then(puts))
                    .await
                    .map_err(internal)?;
                return Ok(());
            }
            Err(ModelError::Conflict(format!(
                "endpoint {:?} or address {} of VPC {:?} is taken in the cluster",
                ep.name, ep.ip, ep.vpc
            )))
        }
        Request::Withdraw(ep) => {
            let txn = Txn::new().and_then([
                TxnOp::delete(keys.endpoint(&ep.name), None),
                TxnOp::delete(keys.addr(&ep.vpc, ep.ip), None),
            ]);
            client.txn(txn).await.map_err(internal)?;
            Ok(())
        }
    }
}

/// `ep` as other nodes see it: at `node`, in no security group (those are the node's own).
pub fn published(ep: &Endpoint, node: Ipv4Addr) -> Endpoint {
    let mut e = ep.clone();
    if e.place.is_local() {
        e.place = Place::Remote { node };
    }
    e.security_group = None;
    e
}

/// A value for etcd (our own types: serializing cannot fail).
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
