//! `"mode": "ptp"`: a routed point-to-point link per pod, as the reference ptp plugin makes it
//! (a veth whose host end holds the gateway address; in the pod every destination goes through
//! the gateway), with IPAM delegated to the configured plugin on CNI_PATH. The commands and
//! IPAM here serve `"mode": "bridge"` too ([`crate::bridge`]), which wires the link otherwise.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use qnet_netns::{Ipv4Net, Netns, PtpLink};
use serde_json::{json, Value};

use crate::spec::{CniError, Code, Command, Env, NetConf};

/// The host end's name: stable for a (container, interface), at most 15 bytes, as the kernel
/// allows.
/// FNV-1a (64 bits) of `a`, a zero byte and `b`: a short name, stable across runs and builds,
/// for what this plugin makes per (network or container, container or interface).
pub(crate) fn pair_hash(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0]).chain(b.bytes()) {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(crate) fn host_ifname(env: &Env) -> String {
    // FNV-1a: small, stable across runs and builds.
    let mut h: u32 = 0x811c9dc5;
    for b in env.container_id.bytes().chain(env.ifname.bytes()) {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    format!("qv{h:08x}")
}

/// What the host end's alias says: this network's link of (container, interface). GC finds
/// the links of a network by it.
pub(crate) fn host_alias(conf: &NetConf, env: &Env) -> String {
    format!(
        "{ALIAS_TAG}/{}/{}/{}",
        conf.name, env.container_id, env.ifname
    )
}

const ALIAS_TAG: &str = "qnet-cni";

pub(crate) fn netns_err(what: &str) -> impl FnOnce(qnet_netns::NetnsError) -> CniError + '_ {
    move |e| CniError::new(Code::IO, what.to_string()).details(e)
}

/// The IPAM plugin named in the configuration, from CNI_PATH.
fn ipam_plugin(env: &Env, conf: &NetConf) -> Result<PathBuf, CniError> {
    let ty = conf
        .rest
        .get("ipam")
        .and_then(|i| i["type"].as_str())
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                "this mode needs \"ipam\" with a \"type\"",
            )
        })?;
    env.path
        .iter()
        .map(|dir| Path::new(dir).join(ty))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "IPAM plugin {ty:?} not found in CNI_PATH {}",
                    env.path.join(":")
                ),
            )
        })
}

/// Runs the IPAM plugin as a runtime runs a plugin: this call's environment, CNI_COMMAND set to
/// `command`, the whole configuration on stdin. Its error is returned as it gave it.
fn delegate(plugin: &Path, command: &str, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let mut child = Process::new(plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(Code::IO, format!("running {}", plugin.display())).details(e))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .map_err(|e| CniError::new(Code::IO, "writing to the IPAM plugin").details(e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(Code::IO, "waiting for the IPAM plugin").details(e))?;
    let json: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (code, msg) = json
            .as_ref()
            .and_then(|j| Some((j["code"].as_u64()? as u32, j["msg"].as_str()?.to_string())))
            .unwrap_or((
                Code::IO.0,
                format!(
                    "IPAM plugin {} failed: {}",
                    plugin.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        let mut e = CniError::new(Code(code), msg);
        if let Some(d) = json.as_ref().and_then(|j| j["details"].as_str()) {
            e = e.details(d);
        }
        return Err(e);
    }
    Ok(json)
}

fn parse_net(s: &str) -> Option<Ipv4Net> {
    let (a, p) = s.split_once('/')?;
    Some(Ipv4Net {
        addr: a.parse().ok()?,
        prefix: p.parse().ok().filter(|p: &u8| *p <= 32)?,
    })
}

pub(crate) fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Wires a pod given IPAM's result: ptp's [`wire`] or the bridge's.
pub(crate) type Wire = fn(&Env, &NetConf, &Value) -> Result<Value, CniError>;

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    run_with(env, conf, stdin, wire)
}

/// The commands of a main plugin that wires pods with `wire`.
pub(crate) fn run_with(
    env: &Env,
    conf: &NetConf,
    stdin: &[u8],
    wire: Wire,
) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Add => add(env, conf, stdin, wire).map(Some),
        Command::Del => del(env, conf, stdin).map(|()| None),
        Command::Check => {
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::new(Code::INVALID_CONFIG, "CHECK needs the prevResult of ADD")
            })?;
            crate::check_interface(env, prev).map(|()| None)
        }
        // No state of our own beyond links and IPAM's: STATUS is ready.
        Command::Status => Ok(None),
        Command::Gc => gc(env, conf, stdin).map(|()| None),
        Command::Version => Ok(Some(crate::spec::version_info())),
    }
}

fn add(env: &Env, conf: &NetConf, stdin: &[u8], wire: Wire) -> Result<Value, CniError> {
    let plugin = ipam_plugin(env, conf)?;
    let ipam = delegate(&plugin, "ADD", stdin)?.unwrap_or_default();
    // From here on a failure gives the address back, so a retried ADD starts clean.
    let wired = wire(env, conf, &ipam);
    if wired.is_err() {
        let _ = delegate(&plugin, "DEL", stdin);
        return wired;
    }
    if crate::masq::wanted(conf) {
        let masq = addressing(&ipam).and_then(|a| crate::masq::setup(conf, env, a.addr));
        if let Err(e) = masq {
            let _ = del(env, conf, stdin);
            return Err(e);
        }
    }
    wired
}

/// Lets the node forward for its pods (net.ipv4.ip_forward, in this namespace), as the
/// reference ptp plugin and the bridge plugin as a gateway do.
pub(crate) fn enable_forwarding() -> Result<(), CniError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| CniError::new(Code::IO, "enabling net.ipv4.ip_forward").details(e))
}

/// What IPAM gave for the pod: its address, the gateway, and more routes.
pub(crate) struct Addressing {
    pub(crate) addr: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

pub(crate) fn addressing(ipam: &Value) -> Result<Addressing, CniError> {
    let ip = ipam["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ip| ip["address"].as_str().is_some_and(|a| !a.contains(':')))
        .ok_or_else(|| CniError::new(Code::INVALID_CONFIG, "IPAM gave no IPv4 address"))?;
    let addr = ip["address"]
        .as_str()
        .and_then(parse_net)
        .ok_or_else(|| CniError::new(Code::INVALID_CONFIG, "IPAM gave a malformed address"))?;
    let gateway: Ipv4Addr = match ip["gateway"].as_str() {
        Some(g) => g.parse().map_err(|_| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!("IPAM gave a malformed gateway {g:?}"),
            )
        })?,
        // host-local's default: the subnet's first address.
        None => Ipv4Addr::from(u32::from(addr.network().addr) + 1),
    };
    let routes = ipam["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let dst = parse_net(r["dst"].as_str()?)?;
            let gw = r["gw"].as_str().and_then(|g| g.parse().ok());
            Some((dst, gw))
        })
        .collect();
    Ok(Addressing {
        addr,
        gateway,
        routes,
    })
}

/// The pod's namespace, opened.
pub(crate) fn pod_netns(env: &Env) -> Result<(String, Netns), CniError> {
    let netns = env.netns.clone().unwrap_or_default();
    let pod = Netns::open(Path::new(&netns)).map_err(|e| {
        CniError::new(Code::CONTAINER_UNKNOWN, format!("opening {netns}")).details(e)
    })?;
    Ok((netns, pod))
}

/// The result's `ips` entry for the pod's address, `interface` its index in `interfaces`.
pub(crate) fn ip_config(conf: &NetConf, a: &Addressing, interface: usize) -> Value {
    let mut ipconf = json!({
        "address": a.addr.to_string(),
        "gateway": a.gateway.to_string(),
        "interface": interface,
    });
    if conf.cni_version.starts_with("0.") {
        ipconf["version"] = "4".into();
    }
    ipconf
}

/// Routes and DNS from IPAM go into the result as IPAM gave them.
pub(crate) fn pass_on_ipam(result: &mut Value, ipam: &Value) {
    for key in ["routes", "dns"] {
        if let Some(v) = ipam.get(key) {
            result[key] = v.clone();
        }
    }
}

fn wire(env: &Env, conf: &NetConf, ipam: &Value) -> Result<Value, CniError> {
    let Addressing {
        addr,
        gateway,
        routes,
    } = addressing(ipam)?;
    let mtu = conf
        .rest
        .get("mtu")
        .and_then(Value::as_u64)
        .map(|m| m as u32);
    let (netns, pod) = pod_netns(env)?;
    let host = Netns::current().map_err(netns_err("opening this namespace"))?;
    let link = PtpLink {
        host_ifname: host_ifname(env),
        pod_ifname: env.ifname.clone(),
        mtu,
        addr,
        gateway,
        routes,
        alias: host_alias(conf, env),
    };
    let macs = host
        .add_ptp(&pod, &link)
        .map_err(netns_err("wiring the pod"))?;
    enable_forwarding()?;
    let ipconf = ip_config(
        conf,
        &Addressing {
            addr,
            gateway,
            routes: Vec::new(),
        },
        1,
    );
    let mut result = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": link.host_ifname, "mac": mac_string(macs.host)},
            {"name": env.ifname, "mac": mac_string(macs.pod), "sandbox": netns},
        ],
        "ips": [ipconf],
    });
    pass_on_ipam(&mut result, ipam);
    Ok(result)
}

/// GC: deletes this network's host links (found by their alias) whose attachment is not among
/// `cni.dev/valid-attachments` (the pod end goes with them), and passes GC on to IPAM.
fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let valid: Vec<String> = valid_attachments(conf)
        .map(|(id, ifname)| format!("{ALIAS_TAG}/{}/{id}/{ifname}", conf.name))
        .collect();
    gc_ipam(env, conf, stdin)?;
    if crate::masq::wanted(conf) {
        for id in crate::masq::containers(&conf.name)? {
            if !valid_attachments(conf).any(|(valid, _)| valid == id) {
                crate::masq::teardown(&conf.name, &id)?;
            }
        }
    }
    let host = Netns::current().map_err(netns_err("opening this namespace"))?;
    let snapshot = host
        .inspect()
        .map_err(netns_err("reading this namespace's links"))?;
    let ours = format!("{ALIAS_TAG}/{}/", conf.name);
    for link in snapshot.links {
        let Some(alias) = &link.alias else { continue };
        if alias.starts_with(&ours) && !valid.contains(alias) {
            host.delete_link(&link.name)
                .map_err(netns_err("deleting a stale pod link"))?;
        }
    }
    Ok(())
}

/// The (container ID, interface) pairs of `cni.dev/valid-attachments`.
pub(crate) fn valid_attachments(conf: &NetConf) -> impl Iterator<Item = (&str, &str)> {
    conf.rest
        .get("cni.dev/valid-attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["containerID"].as_str()?, a["ifname"].as_str()?)))
}

/// Passes GC on to IPAM if it knows GC: a plugin whose VERSION does not list CNI 1.1.0
/// (Debian's host-local) has no GC to run, which is not this GC's failure.
pub(crate) fn gc_ipam(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let Ok(plugin) = ipam_plugin(env, conf) else {
        return Ok(());
    };
    let versions = delegate(&plugin, "VERSION", stdin)?.unwrap_or_default();
    let knows_gc = versions["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v == "1.1.0"));
    if knows_gc {
        delegate(&plugin, "GC", stdin)?;
    }
    Ok(())
}

/// Gives the pod's address back to IPAM (DEL's first step: an address is never leaked even if
/// the links are already gone).
pub(crate) fn release_ipam(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    if let Ok(plugin) = ipam_plugin(env, conf) {
        delegate(&plugin, "DEL", stdin)?;
    }
    Ok(())
}

fn del(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    release_ipam(env, conf, stdin)?;
    if crate::masq::wanted(conf) {
        crate::masq::teardown(&conf.name, &env.container_id)?;
    }
    // Deleting either end of the veth deletes both; either may be gone already.
    if let Some(netns) = &env.netns {
        if let Ok(pod) = Netns::open(Path::new(netns)) {
            pod.delete_link(&env.ifname)
                .map_err(netns_err("deleting the pod's interface"))?;
        }
    }
    let host = Netns::current().map_err(netns_err("opening this namespace"))?;
    host.delete_link(&host_ifname(env))
        .map_err(netns_err("deleting the host end"))?;
    Ok(())
}
