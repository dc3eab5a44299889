//! `"mode": "bridge"` with `"bridge": NAME`: each pod's veth is a port of a Linux bridge on the
//! node, as the reference bridge plugin wires it (`isGateway` gives the bridge the gateway
//! address, `isDefaultGateway` adds the pod's default route through it; `mtu`). IPAM, DEL and
//! CHECK are ptp mode's ([`crate::ptp`]); the bridge outlives its pods, as the reference
//! plugin leaves it.

use serde_json::{json, Value};

use crate::ptp::{
    addressing, host_ifname, ip_config, mac_string, netns_err, pass_on_ipam, pod_netns,
};
use crate::spec::{CniError, Code, Env, NetConf};
use qnet_netns::{BridgeLink, Netns};

/// The bridge the reference plugin makes when the configuration names none.
const DEFAULT_BRIDGE: &str = "cni0";

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    crate::ptp::run_with(env, conf, stdin, wire)
}

fn flag(conf: &NetConf, key: &str) -> bool {
    conf.rest.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn wire(env: &Env, conf: &NetConf, ipam: &Value) -> Result<Value, CniError> {
    let a = addressing(ipam)?;
    let bridge = conf
        .rest
        .get("bridge")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_BRIDGE)
        .to_string();
    if bridge.is_empty() || bridge.len() > 15 || bridge.contains('/') {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!("\"bridge\" {bridge:?} is not an interface name"),
        ));
    }
    let default_route = flag(conf, "isDefaultGateway");
    if let Some(key) = ["vlan", "vlanTrunk", "preserveDefaultVlan"]
        .into_iter()
        .find(|k| conf.rest.contains_key(*k))
    {
        // Better refused than ignored: a pod put on the untagged network instead of its VLAN
        // would reach what it must not.
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!("{key:?}: VLANs are not supported by qnet-cni's bridge mode"),
        ));
    }
    if flag(conf, "hairpinMode") && flag(conf, "promiscMode") {
        // As the reference plugin: a promiscuous bridge already sends a port its own frames.
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            "hairpinMode and promiscMode cannot both be set",
        ));
    }
    let link = BridgeLink {
        bridge: bridge.clone(),
        host_ifname: host_ifname(env),
        pod_ifname: env.ifname.clone(),
        mtu: conf
            .rest
            .get("mtu")
            .and_then(Value::as_u64)
            .map(|m| m as u32),
        addr: a.addr,
        gateway: a.gateway,
        // isDefaultGateway implies isGateway, as in the reference plugin.
        is_gateway: flag(conf, "isGateway") || default_route,
        default_route,
        promisc: flag(conf, "promiscMode"),
        routes: a.routes.clone(),
        alias: crate::ptp::host_alias(conf, env),
    };
    let (netns, pod) = pod_netns(env)?;
    let host = Netns::current().map_err(netns_err("opening this namespace"))?;
    let macs = host
        .add_bridged(&pod, &link)
        .map_err(netns_err("wiring the pod to the bridge"))?;
    let bridge_mac = host
        .mac_of(&bridge)
        .map_err(netns_err("reading the bridge"))?;
    if link.is_gateway {
        crate::ptp::enable_forwarding()?;
    }
    if flag(conf, "hairpinMode") {
        // The port reflects frames back where they came from: a pod reaches itself through
        // a service address that NAT sends back to it. (Through sysfs: this process runs in
        // the node's namespace, where the port is.)
        let knob = format!("/sys/class/net/{}/brport/hairpin_mode", link.host_ifname);
        std::fs::write(&knob, "1").map_err(|e| {
            CniError::new(Code::IO, format!("hairpin mode on {}", link.host_ifname)).details(e)
        })?;
    }
    let mut result = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [
            {"name": bridge, "mac": mac_string(bridge_mac)},
            {"name": link.host_ifname, "mac": mac_string(macs.host)},
            {"name": env.ifname, "mac": mac_string(macs.pod), "sandbox": netns},
        ],
        "ips": [ip_config(conf, &a, 2)],
    });
    pass_on_ipam(&mut result, ipam);
    Ok(result)
}
