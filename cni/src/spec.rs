//! The CNI specification's wire types (versions 0.3.0 to 1.1.0): the runtime's environment,
//! the network configuration on stdin, results and errors on stdout.
//!
//! Fields this plugin does not interpret are kept as raw JSON (`serde_json::Value`) so a result
//! passes through a chain unchanged, as the spec asks of chained plugins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every version this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version reported when none can be taken from the input.
pub const LATEST: &str = "1.1.0";

/// A CNI error code: the spec's well-known ones, or a delegated plugin's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(pub u32);

impl Code {
    pub const INCOMPATIBLE_VERSION: Code = Code(1);
    pub const UNSUPPORTED_FIELD: Code = Code(2);
    pub const CONTAINER_UNKNOWN: Code = Code(3);
    pub const INVALID_ENVIRONMENT: Code = Code(4);
    pub const IO: Code = Code(5);
    pub const DECODING: Code = Code(6);
    pub const INVALID_CONFIG: Code = Code(7);
    /// Transient: the runtime may retry (the spec's code 11).
    pub const TRY_AGAIN_LATER: Code = Code(11);
}

/// A CNI error: what the plugin prints on stdout before exiting non-zero.
#[derive(Debug, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, details: impl std::fmt::Display) -> CniError {
        self.details = details.to_string();
        self
    }

    /// The error JSON, in the caller's version where it is known.
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = serde_json::json!({
            "cniVersion": version,
            "code": self.code.0,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

/// CNI_COMMAND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    Code::INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                    ),
                ))
            }
        })
    }
}

/// The runtime's environment for one call.
#[derive(Clone, Debug)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// Absent for DEL when the namespace is already gone.
    pub netns: Option<String>,
    pub ifname: String,
    /// CNI_PATH: where delegated plugins (IPAM) are found.
    pub path: Vec<String>,
    /// CNI_ARGS as key/value pairs.
    pub args: Vec<(String, String)>,
}

impl Env {
    /// Reads the environment through `get`, checking what the command needs.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command =
            Command::parse(&get("CNI_COMMAND").ok_or_else(|| {
                CniError::new(Code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set")
            })?)?;
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |name: &str| -> Result<String, CniError> {
            match get(name).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if needs_attachment => Err(CniError::new(
                    Code::INVALID_ENVIRONMENT,
                    format!("{name} is not set (required for {command:?})"),
                )),
                None => Ok(String::new()),
            }
        };
        let container_id = required("CNI_CONTAINERID")?;
        let ifname = required("CNI_IFNAME")?;
        let netns = match get("CNI_NETNS").filter(|v| !v.is_empty()) {
            Some(ns) => Some(ns),
            // DEL must succeed when the namespace is gone; ADD and CHECK need it.
            None if matches!(command, Command::Add | Command::Check) => {
                return Err(CniError::new(
                    Code::INVALID_ENVIRONMENT,
                    format!("CNI_NETNS is not set (required for {command:?})"),
                ))
            }
            None => None,
        };
        let path = required("CNI_PATH")?
            .split(':')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            path,
            args,
        })
    }
}

/// CNI_ARGS: `K1=V1;K2=V2`.
fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::new(
                        Code::INVALID_ENVIRONMENT,
                        format!("CNI_ARGS entry {kv:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

/// The network configuration on stdin (one plugin's entry of a conflist, with the runtime's
/// additions such as `prevResult`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// qnet-cni's own key: ptp, bridge, chained or vpc.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// Every other key, kept for delegation and pass-through.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

impl NetConf {
    /// Parses and checks the configuration: JSON errors are decoding failures, an unknown
    /// version is incompatible.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(Code::DECODING, "the network configuration is not valid").details(e)
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                Code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported (supported: {})",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(
                Code::INVALID_CONFIG,
                "the network has no name",
            ));
        }
        Ok(conf)
    }

    /// Whether the configured version knows CHECK (0.4.0 on) and STATUS/GC (1.1.0).
    pub fn supports(&self, command: Command) -> bool {
        let v = self.cni_version.as_str();
        match command {
            Command::Check => !v.starts_with("0.3."),
            Command::Status | Command::Gc => v == "1.1.0",
            _ => true,
        }
    }
}

/// The VERSION answer.
pub fn version_info() -> Value {
    serde_json::json!({
        "cniVersion": LATEST,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// The IPv4 addresses (with prefix) a result lists for the interface named `ifname`: entries
/// whose `interface` index points at it, or that name no interface.
pub fn result_addresses(result: &Value, ifname: &str) -> Vec<String> {
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let index_of = ifaces
        .iter()
        .position(|i| i["name"].as_str() == Some(ifname));
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| match (ip["interface"].as_u64(), index_of) {
            (Some(i), Some(want)) => i as usize == want,
            (None, _) => true,
            (Some(_), None) => false,
        })
        .filter_map(|ip| ip["address"].as_str().map(String::from))
        .filter(|a| !a.contains(':'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_environment_is_checked_per_command() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .unwrap_err();
        assert_eq!(e.code, Code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_CONTAINERID"), "{e}");
        // DEL without a namespace is fine (it may be gone); VERSION needs nothing.
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .unwrap();
        assert!(del.netns.is_none());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code,
            Code::INVALID_ENVIRONMENT
        );
        let args = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"),
        ])
        .unwrap()
        .args;
        assert_eq!(args[1], ("K8S_POD_NAME".into(), "web".into()));
    }

    #[test]
    fn configurations_are_decoded_and_versions_checked() {
        let c = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"n","type":"qnet-cni","mode":"chained","extra":{"a":1}}"#).unwrap();
        assert_eq!(c.mode.as_deref(), Some("chained"));
        assert!(c.rest.contains_key("extra"));
        assert!(c.supports(Command::Check) && !c.supports(Command::Gc));
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, Code::DECODING);
        let e =
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n","type":"qnet-cni"}"#).unwrap_err();
        assert_eq!(e.code, Code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn result_addresses_follow_the_interface_index() {
        let r = serde_json::json!({
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.1.0.5/24", "interface": 2}, {"address": "fd00::5/64", "interface": 2}],
        });
        assert_eq!(
            result_addresses(&r, "eth0"),
            vec!["10.1.0.5/24".to_string()]
        );
        assert!(result_addresses(&r, "eth1").is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// Hostile configuration: any bytes, or a valid ptp configuration with fields replaced
        /// or removed, is parsed or refused with a CNI error, and what the plugin reads from a
        /// parsed one (masquerading, GC attachments) never panics.
        #[test]
        fn any_configuration_is_parsed_or_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            doc in quark_tests::hostile::mutated_json(serde_json::json!({
                "cniVersion": "1.1.0",
                "name": "pods",
                "type": "qnet-cni",
                "mode": "ptp",
                "ipMasq": true,
                "mtu": 1500,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/16"}]],
                         "routes": [{"dst": "0.0.0.0/0"}]},
                "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
                "prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
                               "ips": [{"address": "10.22.0.5/16", "interface": 0}]}
            })),
            args in "\\PC{0,64}",
        ) {
            let _ = NetConf::parse(&bytes);
            let _ = parse_args(&args);
            let text = serde_json::to_vec(&doc).unwrap();
            if let Ok(conf) = NetConf::parse(&text) {
                let _ = crate::masq::wanted(&conf);
                let _ = crate::ptp::valid_attachments(&conf).count();
            }
        }
    }
}
