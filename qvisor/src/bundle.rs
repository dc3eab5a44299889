//! OCI bundles: `config.json` (through the oci-spec crate) turned into a [`Launch`].

use std::path::Path;

use anyhow::{bail, Context};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::net::NetSetup;
use crate::{Launch, DEFAULT_MEMORY};

/// Smallest and largest guest memory a bundle may ask for.
const MIN_MEMORY: u64 = 16 << 20;
const MAX_MEMORY: u64 = 64 << 30;

/// Annotation that turns the polled syscall path off (`"off"`) or on (`"on"`, the default).
pub const SYSCALL_POLL_ANNOTATION: &str = "dev.quark.syscall-poll";

/// The network a bundle asks for: a network namespace with a path (made by a CNI plugin)
/// is taken over; a new namespace (no path) or none at all gives loopback only, as a fresh
/// namespace would (the guest never shares the host's network).
fn net_setup(spec: &Spec) -> anyhow::Result<NetSetup> {
    let netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| {
            nss.iter()
                .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        })
        .and_then(|ns| ns.path().clone());
    match netns {
        Some(path) if !path.is_absolute() => {
            bail!("linux.namespaces: network namespace path {path:?} is not absolute")
        }
        Some(path) => Ok(NetSetup::Pod { netns: path }),
        None => Ok(NetSetup::Loopback),
    }
}

/// Reads `<bundle>/config.json` and checks what qvisor supports.
pub fn load(bundle: &Path) -> anyhow::Result<Launch> {
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let process = spec
        .process()
        .as_ref()
        .context("config.json has no process")?;
    if process.terminal().unwrap_or(false) {
        bail!("process.terminal is true: terminals are not supported yet");
    }
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
    let polled_syscalls = match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(SYSCALL_POLL_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => bail!("annotation {SYSCALL_POLL_ANNOTATION}={other:?}: expected on or off"),
    };
    Ok(Launch {
        net: net_setup(&spec)?,
        polled_syscalls,
        root: root_path,
        readonly: root.readonly().unwrap_or(false),
        argv,
        env: process.env().clone().unwrap_or_default(),
        cwd,
        memory: memory.div_ceil(4096) * 4096,
    })
}
