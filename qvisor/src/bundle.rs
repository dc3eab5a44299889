//! OCI bundles: `config.json` (through the oci-spec crate) turned into a [`Launch`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::net::NetSetup;
use crate::{Launch, DEFAULT_MEMORY};

/// Smallest and largest guest memory a bundle may ask for.
const MIN_MEMORY: u64 = 16 << 20;
const MAX_MEMORY: u64 = 64 << 30;

/// Annotation that turns the polled syscall path off (`"off"`) or on (`"on"`, the default).
pub const SYSCALL_POLL_ANNOTATION: &str = "dev.quark.syscall-poll";

/// Annotation that turns syscall-site patching off (`"off"`) or on (`"on"`, the default).
pub const SYSCALL_PATCHING_ANNOTATION: &str = "dev.quark.syscall-patching";
/// Annotation that turns the vDSO off (`"off"`: every time call is a syscall) or on (`"on"`,
/// the default).
pub const VDSO_ANNOTATION: &str = "dev.quark.vdso";

/// The annotation containerd's CRI plugin sets on every container of a pod: `sandbox` for the
/// pod's pause container, `container` for the app's.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The container's sockets are served by the stack at this socket ring (a qnetd ring
/// endpoint's socket) instead of a stack of its own; its network namespace, if any, is
/// then not used.
pub const NET_RING_ANNOTATION: &str = "dev.quark.net.ring";

/// The network a bundle asks for: a network namespace with a path (made by a CNI plugin)
/// is taken over; a new namespace (no path) is the VMM's own, whose interface (if someone
/// configures one before start) is taken over at start; none at all gives loopback only (the
/// guest never shares the host's network). A Kubernetes pod's sandbox (pause) container
/// names the pod's namespace too but never uses it: it gets loopback, leaving the interface
/// to the app container.
/// The qhttp proxy the bundle's annotations ask for. A pod's sandbox container never runs it:
/// pod annotations reach every container of the pod, and the app container holds the network.
fn http_proxy(spec: &Spec) -> anyhow::Result<Option<qhttp::Config>> {
    let Some(annotations) = spec.annotations() else {
        return Ok(None);
    };
    if annotations
        .get(CRI_CONTAINER_TYPE)
        .is_some_and(|t| t == "sandbox")
    {
        return Ok(None);
    }
    Ok(qhttp::Config::from_annotations(annotations)?)
}

/// An on/off annotation (absent: on).
fn on_off_annotation(spec: &Spec, name: &str) -> anyhow::Result<bool> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(name))
        .map(String::as_str)
    {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => bail!("annotation {name}={other:?}: expected on or off"),
    }
}

fn net_setup(spec: &Spec) -> anyhow::Result<NetSetup> {
    let sandbox = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CRI_CONTAINER_TYPE))
        .is_some_and(|t| t == "sandbox");
    if sandbox {
        return Ok(NetSetup::Loopback);
    }
    if let Some(ring) = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(NET_RING_ANNOTATION))
    {
        let socket = PathBuf::from(ring);
        if !socket.is_absolute() {
            bail!("annotation {NET_RING_ANNOTATION}={ring:?}: give an absolute socket path");
        }
        return Ok(NetSetup::Ring { socket });
    }
    let entry = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| {
            nss.iter()
                .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        });
    match entry.map(|ns| ns.path().clone()) {
        Some(Some(path)) if !path.is_absolute() => {
            bail!("linux.namespaces: network namespace path {path:?} is not absolute")
        }
        Some(Some(path)) => Ok(NetSetup::Pod { netns: path }),
        Some(None) => Ok(NetSetup::NewNamespace),
        None => Ok(NetSetup::Loopback),
    }
}

/// Reads `<bundle>/config.json` and checks what qvisor supports.
pub fn load(bundle: &Path) -> anyhow::Result<Launch> {
    read(bundle).map(|(_, launch)| launch)
}

/// Reads `<bundle>/config.json`: the spec itself (hooks, cgroups, terminal) and what to run.
pub fn read(bundle: &Path) -> anyhow::Result<(Spec, Launch)> {
    let config = bundle.join("config.json");
    let text = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
    // serde_json directly: its errors name the line, column and field.
    let spec: Spec = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a valid OCI runtime config", config.display()))?;
    let launch = launch_of(bundle, &spec)?;
    Ok((spec, launch))
}

fn launch_of(bundle: &Path, spec: &Spec) -> anyhow::Result<Launch> {
    let process = spec
        .process()
        .as_ref()
        .context("config.json has no process")?;
    let argv = process.args().clone().unwrap_or_default();
    if argv.is_empty() {
        bail!("process.args is empty");
    }
    let root = spec.root().as_ref().context("config.json has no root")?;
    let root_path = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    crate::check_root(&root_path)?;
    let cwd = process.cwd().to_string_lossy().to_string();
    if !cwd.starts_with('/') {
        bail!("process.cwd {cwd:?} is not absolute");
    }
    let memory = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map_or(DEFAULT_MEMORY, |l| (l as u64).clamp(MIN_MEMORY, MAX_MEMORY));
    let polled_syscalls = on_off_annotation(spec, SYSCALL_POLL_ANNOTATION)?;
    let syscall_patching = on_off_annotation(spec, SYSCALL_PATCHING_ANNOTATION)?;
    let vdso = on_off_annotation(spec, VDSO_ANNOTATION)?;
    let user = process.user();
    Ok(Launch {
        user: (
            user.uid(),
            user.gid(),
            user.additional_gids().clone().unwrap_or_default(),
        ),
        net: net_setup(spec)?,
        http_proxy: http_proxy(spec)?,
        polled_syscalls,
        syscall_patching,
        vdso,
        root: root_path,
        readonly: root.readonly().unwrap_or(false),
        argv,
        env: process.env().clone().unwrap_or_default(),
        cwd,
        memory: memory.div_ceil(4096) * 4096,
        max_processes: spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit())
            .filter(|l| *l > 0)
            .map_or(crate::DEFAULT_MAX_PROCESSES, |l| l as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: &str, annotations: &str) -> Spec {
        let json = format!(
            r#"{{"ociVersion": "1.0.2", "annotations": {{{annotations}}},
                "linux": {{"namespaces": [{namespaces}]}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn the_network_mode_follows_the_namespace_entry() {
        let pod = r#"{"type": "network", "path": "/run/netns/cni-1"}"#;
        assert!(matches!(
            net_setup(&spec(pod, "")).unwrap(),
            NetSetup::Pod { netns } if netns == Path::new("/run/netns/cni-1")
        ));
        assert!(matches!(
            net_setup(&spec(r#"{"type": "network"}"#, "")).unwrap(),
            NetSetup::NewNamespace
        ));
        assert!(matches!(
            net_setup(&spec(r#"{"type": "pid"}"#, "")).unwrap(),
            NetSetup::Loopback
        ));
        assert!(net_setup(&spec(r#"{"type": "network", "path": "rel"}"#, "")).is_err());
        // A pod's pause container leaves the pod interface to the app container.
        let sandbox = r#""io.kubernetes.cri.container-type": "sandbox""#;
        assert!(matches!(
            net_setup(&spec(pod, sandbox)).unwrap(),
            NetSetup::Loopback
        ));
        // A ring endpoint's socket wins over the namespace; it must be absolute.
        let ring = r#""dev.quark.net.ring": "/run/qnetd/rings/q.sock""#;
        assert!(matches!(
            net_setup(&spec(pod, ring)).unwrap(),
            NetSetup::Ring { socket } if socket == Path::new("/run/qnetd/rings/q.sock")
        ));
        let relative = r#""dev.quark.net.ring": "q.sock""#;
        assert!(net_setup(&spec(pod, relative)).is_err());
    }

    #[test]
    fn the_syscall_path_annotations_are_on_unless_off_and_nothing_else() {
        let net = r#"{"type": "network"}"#;
        assert!(on_off_annotation(&spec(net, ""), SYSCALL_PATCHING_ANNOTATION).unwrap());
        let off = r#""dev.quark.syscall-patching": "off""#;
        assert!(!on_off_annotation(&spec(net, off), SYSCALL_PATCHING_ANNOTATION).unwrap());
        assert!(on_off_annotation(&spec(net, off), SYSCALL_POLL_ANNOTATION).unwrap());
        let typo = r#""dev.quark.syscall-patching": "no""#;
        let err = on_off_annotation(&spec(net, typo), SYSCALL_PATCHING_ANNOTATION)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dev.quark.syscall-patching"), "{err}");
    }

    #[test]
    fn qhttp_comes_from_annotations_except_in_a_sandbox() {
        let net = r#"{"type": "network"}"#;
        assert_eq!(http_proxy(&spec(net, "")).unwrap(), None);
        let routes = r#""dev.quark.qhttp.routes": "80:/=8080""#;
        let cfg = http_proxy(&spec(net, routes)).unwrap().unwrap();
        assert_eq!(cfg.listeners[0].port, 80);
        let sandbox = format!(r#"{routes}, "io.kubernetes.cri.container-type": "sandbox""#);
        assert_eq!(http_proxy(&spec(net, &sandbox)).unwrap(), None);
        let bad = r#""dev.quark.qhttp.routes": "80:/=nowhere""#;
        let err = http_proxy(&spec(net, bad)).unwrap_err().to_string();
        assert!(err.contains("dev.quark.qhttp.routes"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 400, ..Default::default() })]

        /// Hostile bundles: a config.json of any bytes, or a valid one with fields replaced or
        /// removed (at any depth), is read or refused with an error, never a panic.
        #[test]
        fn any_config_json_is_read_or_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            doc in quark_tests::hostile::mutated_json(serde_json::json!({
                "ociVersion": "1.0.2",
                "process": {"terminal": false, "user": {"uid": 0, "gid": 0},
                            "args": ["/bin/sh", "-c", "true"], "env": ["PATH=/bin"], "cwd": "/",
                            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
                "root": {"path": "rootfs", "readonly": false},
                "hostname": "q",
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
                "annotations": {"dev.quark.qhttp.routes": "8080:/=80",
                                "dev.quark.syscall-poll": "on",
                                "dev.quark.syscall-patching": "off"},
                "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}],
                          "resources": {"memory": {"limit": 268435456}, "pids": {"limit": 64}}}
            })),
        ) {
            let dir = std::env::temp_dir().join(format!("qvisor-hostile-bundle-{}", std::process::id()));
            std::fs::create_dir_all(dir.join("rootfs")).unwrap();
            for text in [bytes, serde_json::to_vec(&doc).unwrap()] {
                std::fs::write(dir.join("config.json"), &text).unwrap();
                if let Ok((spec, _)) = read(&dir) {
                    let _ = net_setup(&spec);
                    let _ = http_proxy(&spec);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
