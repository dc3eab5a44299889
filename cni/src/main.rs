//! qnet-cni: the CNI plugin that wires Quark pods into pod networks.
//!
//! It speaks the CNI spec (0.3.0 to 1.1.0) exactly: the command and attachment in the
//! environment, the network configuration on stdin, a result or an error JSON on stdout.
//! `"mode": "ptp"` and `"mode": "bridge"` wire the pod themselves (a routed veth, or a veth on
//! a Linux bridge; IPAM delegated); `"mode": "chained"` runs after the plugin that made the
//! pod's interface (Debian's bridge or ptp, Calico...): it checks the interface qvisor will take
//! over and passes the result on. `"mode": "vpc"` makes the pod an endpoint of a tenant VPC of
//! the node's qnetd (docs/qnetd.md).
// Tenant configuration reaches this program: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod bridge;
mod masq;
mod ptp;
mod spec;
mod vpc;

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;
use spec::{result_addresses, version_info, CniError, Code, Command, Env, NetConf, LATEST};

const PLUGIN_TYPE: &str = "qnet-cni";

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = read
        .map_err(|e| CniError::new(Code::IO, "reading the configuration from stdin").details(e))
        .and_then(|_| Env::from_vars(|k| std::env::var(k).ok()))
        .and_then(|env| run(&env, &stdin));
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors are reported in the caller's version when the input says it.
            let version = serde_json::from_slice::<Value>(&stdin)
                .ok()
                .and_then(|v| v["cniVersion"].as_str().map(String::from))
                .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
                .unwrap_or_else(|| LATEST.to_string());
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

/// Serves one command; `Some` is the JSON to print.
fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    if conf.plugin_type != PLUGIN_TYPE {
        return Err(CniError::new(
            Code::INVALID_CONFIG,
            format!(
                "the configuration is for plugin {:?}, this is {PLUGIN_TYPE}",
                conf.plugin_type
            ),
        ));
    }
    check_args(env)?;
    if !conf.supports(env.command) {
        return Err(CniError::new(
            Code::INCOMPATIBLE_VERSION,
            format!(
                "{:?} is not part of CNI {} (CHECK needs 0.4.0, STATUS and GC 1.1.0)",
                env.command, conf.cni_version
            ),
        ));
    }
    match conf.mode.as_deref() {
        Some("chained") => chained(env, &conf),
        Some("ptp") => ptp::run(env, &conf, stdin),
        Some("bridge") => bridge::run(env, &conf, stdin),
        Some("vpc") => vpc::run(env, &conf, stdin),
        other => Err(CniError::new(
            Code::INVALID_CONFIG,
            format!("\"mode\" is {other:?}: expected one of ptp, bridge, chained, vpc"),
        )),
    }
}

/// CNI_ARGS: this plugin takes no arguments of its own; runtimes pass theirs (K8S_POD_NAME...)
/// with `IgnoreUnknown=1`, as the spec's convention says.
fn check_args(env: &Env) -> Result<(), CniError> {
    let ignore = env
        .args
        .iter()
        .any(|(k, v)| k == "IgnoreUnknown" && matches!(v.as_str(), "1" | "true" | "True"));
    match env.args.iter().find(|(k, _)| k != "IgnoreUnknown") {
        Some((k, _)) if !ignore => Err(CniError::new(
            Code::UNSUPPORTED_FIELD,
            format!("CNI_ARGS has {k:?}, which {PLUGIN_TYPE} does not know (pass IgnoreUnknown=1)"),
        )),
        _ => Ok(()),
    }
}

/// Chained mode: the interface exists (made by the plugin before us); qvisor takes it over when
/// the container starts and gives it back when it ends, so there is nothing to undo on DEL.
fn chained(env: &Env, conf: &NetConf) -> Result<Option<Value>, CniError> {
    match env.command {
        Command::Add | Command::Check => {
            let prev = conf.prev_result.as_ref().ok_or_else(|| {
                CniError::new(
                    Code::INVALID_CONFIG,
                    format!(
                        "chained mode needs a prevResult: list {PLUGIN_TYPE} after the plugin that \
                         creates the pod's interface"
                    ),
                )
            })?;
            check_interface(env, prev)?;
            if env.command == Command::Check {
                return Ok(None);
            }
            let mut out = prev.clone();
            out["cniVersion"] = conf.cni_version.clone().into();
            Ok(Some(out))
        }
        // Nothing of ours to remove: DEL (idempotent), STATUS and GC succeed.
        Command::Del | Command::Status | Command::Gc => Ok(None),
        Command::Version => Ok(Some(version_info())),
    }
}

/// The pod's interface is in its namespace with the IPv4 addresses the result lists.
pub(crate) fn check_interface(env: &Env, prev: &Value) -> Result<(), CniError> {
    let netns = env.netns.as_deref().unwrap_or_default();
    let ns = qnet_netns::Netns::open(Path::new(netns)).map_err(|e| {
        CniError::new(
            Code::CONTAINER_UNKNOWN,
            format!("the network namespace {netns} cannot be opened"),
        )
        .details(e)
    })?;
    let snap = ns
        .inspect()
        .map_err(|e| CniError::new(Code::IO, format!("reading the links of {netns}")).details(e))?;
    let link = snap
        .links
        .iter()
        .find(|l| l.name == env.ifname)
        .ok_or_else(|| {
            CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "container {}: {netns} has no interface {} (prevResult names it)",
                    env.container_id, env.ifname
                ),
            )
        })?;
    let have: Vec<String> = link.addrs.iter().map(ToString::to_string).collect();
    for want in result_addresses(prev, &env.ifname) {
        if !have.contains(&want) {
            return Err(CniError::new(
                Code::INVALID_CONFIG,
                format!(
                    "interface {} in {netns} lacks {want} from prevResult (has: {})",
                    env.ifname,
                    if have.is_empty() {
                        "none".to_string()
                    } else {
                        have.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}
