//! `"mode": "vpc"` with `"vpc": NAME`: the pod joins a tenant VPC of the node's qnetd
//! (docs/qnetd.md). IPAM (delegated, as in ptp mode) picks the address within the VPC's network;
//! qnetd makes the pod's interface (a TAP it forwards for) with the VPC's gateway and MTU.
//! `"qnetdSocket"` names qnetd's API socket (default /run/qnetd/api.sock); `"securityGroup"`
//! puts the pod in one of qnetd's security groups.

use std::path::PathBuf;

use qnetd::api;
use serde_json::{json, Value};

use crate::ptp::{addressing, pass_on_ipam, pod_netns, Addressing};
use crate::spec::{CniError, Code, Command, Env, NetConf};

const DEFAULT_SOCKET: &str = "/run/qnetd/api.sock";

pub fn run(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    match env.command {
        // DEL gives the address back first (through ptp's IPAM handling), then the endpoint.
        Command::Del => {
            crate::ptp::release_ipam(env, conf, stdin)?;
            let path = format!("/v1/endpoints/{}", endpoint_name(env));
            let (status, body) = call(conf, api::Method::DELETE, &path, None)?;
            match status {
                204 | 404 => Ok(None),
                _ => Err(qnetd_error(status, &body)),
            }
        }
        Command::Gc => gc(env, conf, stdin).map(|()| None),
        _ => crate::ptp::run_with(env, conf, stdin, wire),
    }
}

/// GC: deletes this network's endpoints on the node (in its VPC, named by this plugin) whose
/// attachment is not among `cni.dev/valid-attachments`, and passes GC on to IPAM.
fn gc(env: &Env, conf: &NetConf, stdin: &[u8]) -> Result<(), CniError> {
    let valid: Vec<String> = crate::ptp::valid_attachments(conf)
        .map(|(id, ifname)| endpoint_name_of(id, ifname))
        .collect();
    crate::ptp::gc_ipam(env, conf, stdin)?;
    let vpc = conf
        .rest
        .get("vpc")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (status, body) = call(conf, api::Method::GET, "/v1/endpoints", None)?;
    if status != 200 {
        return Err(qnetd_error(status, &body));
    }
    let endpoints: Value = serde_json::from_str(&body)
        .map_err(|e| CniError::new(Code::IO, "qnetd's endpoint list is not JSON").details(e))?;
    for ep in endpoints.as_array().into_iter().flatten() {
        let name = ep["name"].as_str().unwrap_or_default();
        let ours = name.starts_with("cni-") && ep["vpc"] == vpc && ep.get("local").is_some();
        if ours && !valid.iter().any(|v| v == name) {
            let path = format!("/v1/endpoints/{name}");
            let (status, body) = call(conf, api::Method::DELETE, &path, None)?;
            if status != 204 && status != 404 {
                return Err(qnetd_error(status, &body));
            }
        }
    }
    Ok(())
}

/// The endpoint's name in qnetd: stable for a (container, interface).
fn endpoint_name(env: &Env) -> String {
    endpoint_name_of(&env.container_id, &env.ifname)
}

fn endpoint_name_of(container_id: &str, ifname: &str) -> String {
    // Container IDs are long; the name must stay short.
    format!("cni-{:016x}", crate::ptp::pair_hash(container_id, ifname))
}

fn socket(conf: &NetConf) -> PathBuf {
    PathBuf::from(
        conf.rest
            .get("qnetdSocket")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_SOCKET),
    )
}

fn call(
    conf: &NetConf,
    method: api::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String), CniError> {
    api::call(&socket(conf), method, path, body).map_err(|e| {
        CniError::new(Code::TRY_AGAIN_LATER, "qnetd is not reachable").details(format!("{e:#}"))
    })
}

fn qnetd_error(status: u16, body: &str) -> CniError {
    let msg = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| body.trim().to_string());
    let code = if status == 400 || status == 404 || status == 409 {
        Code::INVALID_CONFIG
    } else {
        Code::IO
    };
    CniError::new(code, format!("qnetd: {msg}"))
}

fn wire(env: &Env, conf: &NetConf, ipam: &Value) -> Result<Value, CniError> {
    let vpc_name = conf
        .rest
        .get("vpc")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                "mode \"vpc\" needs \"vpc\": the VPC's name",
            )
        })?;
    let Addressing { addr, .. } = addressing(ipam)?;
    let (netns, _pod) = pod_netns(env)?;
    let (status, body) = call(conf, api::Method::GET, "/v1/vpcs", None)?;
    if status != 200 {
        return Err(qnetd_error(status, &body));
    }
    let vpcs: Value = serde_json::from_str(&body)
        .map_err(|e| CniError::new(Code::IO, "qnetd's VPC list is not JSON").details(e))?;
    let vpc = vpcs
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == vpc_name)
        .ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!("qnetd has no VPC {vpc_name:?}"),
            )
        })?;
    let prefix = vpc["cidr"]
        .as_str()
        .and_then(|c| c.split_once('/'))
        .and_then(|(_, p)| p.parse::<u8>().ok())
        .ok_or_else(|| CniError::new(Code::IO, "qnetd gave a VPC without a network"))?;
    let gateway = vpc["gateway"].as_str().unwrap_or_default().to_string();
    let mut spec = json!({
        "name": endpoint_name(env),
        "vpc": vpc_name,
        "ip": addr.addr.to_string(),
        "netns": netns,
        "ifname": env.ifname,
    });
    if let Some(group) = conf.rest.get("securityGroup").and_then(Value::as_str) {
        spec["security_group"] = group.into();
    }
    let (status, body) = call(conf, api::Method::POST, "/v1/endpoints", Some(&spec))?;
    if status != 201 {
        return Err(qnetd_error(status, &body));
    }
    let ep: Value = serde_json::from_str(&body)
        .map_err(|e| CniError::new(Code::IO, "qnetd's endpoint is not JSON").details(e))?;
    let mut ipconf = json!({
        "address": format!("{}/{prefix}", addr.addr),
        "gateway": gateway,
        "interface": 0,
    });
    if conf.cni_version.starts_with("0.") {
        ipconf["version"] = "4".into();
    }
    let mut result = json!({
        "cniVersion": conf.cni_version,
        "interfaces": [{"name": env.ifname, "mac": ep["mac"], "sandbox": netns}],
        "ips": [ipconf],
    });
    pass_on_ipam(&mut result, ipam);
    Ok(result)
}
