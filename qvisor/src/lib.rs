//! qvisor: the VMM. One KVM virtual machine per container: guest memory and page tables
//! ([`memory`]), the vCPU and its exit loop ([`vm`]), the confined root file system
//! ([`rootfs`]) and OCI bundles ([`bundle`]); each exit is served by qkernel.

pub mod bundle;
pub mod memory;
pub mod net;
pub mod poll;
pub mod rootfs;
pub mod vm;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

pub use rootfs::RootFs;
pub use vm::{Stop, Vm};

/// Default guest memory when the bundle sets no limit.
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// What to run: a program in a root file system.
#[derive(Debug, Clone)]
pub struct Launch {
    pub root: std::path::PathBuf,
    pub readonly: bool,
    /// argv[0] is a path in the root (or a name looked up in PATH).
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub memory: u64,
    /// Serve syscalls on the polled path (a host thread) rather than by trapping every one.
    pub polled_syscalls: bool,
    /// The container's network.
    pub net: net::NetSetup,
}

/// Finds `name` in the root: a path containing '/' as is, else each directory of PATH.
fn find_program(
    root: &mut RootFs,
    name: &str,
    env: &[String],
) -> anyhow::Result<(String, Vec<u8>)> {
    let candidates: Vec<String> = if name.contains('/') {
        vec![name.to_string()]
    } else {
        let path = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':').map(|d| format!("{d}/{name}")).collect()
    };
    for c in &candidates {
        if let Ok(image) = root.read_all(c.as_bytes()) {
            return Ok((c.clone(), image));
        }
    }
    anyhow::bail!("executable {name:?} not found in the container's root")
}

/// Boots a VM for `launch` and runs its program to the end.
pub fn run(launch: &Launch) -> anyhow::Result<Stop> {
    let mut rootfs = RootFs::open(&launch.root, launch.readonly)
        .with_context(|| format!("opening the root {}", launch.root.display()))?;
    let name = launch
        .argv
        .first()
        .context("no program to run (empty args)")?;
    let (exe, image) = find_program(&mut rootfs, name, &launch.env)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let net = Some(net::GuestNet::new(
        launch.net.clone(),
        cancel.clone(),
        launch.memory,
    )?);
    let mut vm = Vm::new(launch.memory, rootfs, net, launch.polled_syscalls, cancel)?;
    let loaded = vm
        .with_machine(|m| qkernel::load_static(m, &image, &launch.argv, &launch.env))
        .with_context(|| format!("loading {exe}"))?;
    let kernel = qkernel::Kernel::new(loaded.brk, &exe, &launch.cwd);
    let stop = vm.run(kernel, loaded.entry, loaded.stack_pointer);
    tracing::debug!(
        vcpu_exits = vm.exits,
        polled = launch.polled_syscalls,
        "container ended"
    );
    stop
}

/// Whether `path` is a usable root directory (for clear errors before booting).
pub fn check_root(path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(path.is_dir(), "root {} is not a directory", path.display());
    Ok(())
}
