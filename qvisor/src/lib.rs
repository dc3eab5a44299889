//! qvisor: the VMM. One KVM virtual machine per container: guest memory and page tables
//! ([`memory`]), the vCPU and its exit loop ([`vm`]), the confined root file system
//! ([`rootfs`]) and OCI bundles ([`bundle`]); each exit is served by qkernel.
// Guest and network input reach this crate: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bundle;
pub mod exec;
pub mod fastread;
pub mod jail;
pub mod keeper;
pub mod memory;
pub mod net;
pub mod oci;
pub mod pagecache;
pub mod patch;
pub mod poll;
pub mod rootfs;
pub mod vclock;
pub mod vm;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

pub use rootfs::RootFs;
pub use vm::{Stop, Vm};

/// Default guest memory when the bundle sets no limit.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Most processes a container may have when the bundle sets no pids limit (a fork bomb stops
/// there, well before the guest's memory runs out).
pub const DEFAULT_MAX_PROCESSES: usize = 4096;

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
    /// Most processes the container may have at once (`linux.resources.pids.limit`).
    pub max_processes: usize,
    /// Serve syscalls on the polled path (a host thread) rather than by trapping every one.
    pub polled_syscalls: bool,
    /// Patch the trapped syscall sites of shared libraries into jumps to the polled path's
    /// stub (needs `polled_syscalls`; see [`syscall_patching_wanted`] for the host's say).
    pub syscall_patching: bool,
    /// Map a vDSO, so time calls cost no syscall (see [`vclock::vdso_wanted`] for the host's
    /// say).
    pub vdso: bool,
    /// The container's network.
    pub net: net::NetSetup,
    /// qhttp in front of the guest, on the container's stack (annotations, docs/qhttp.md).
    pub http_proxy: Option<qhttp::Config>,
    /// The app's user: uid, gid and supplementary groups (`process.user`).
    pub user: (u32, u32, Vec<u32>),
}

/// Environment variable with which the host turns syscall-site patching off for every
/// container it starts (`off`), whatever bundles and flags ask: the operator's kill switch.
pub const SYSCALL_PATCHING_ENV: &str = "QUARK_SYSCALL_PATCHING";

/// Whether syscall sites are patched, given what the bundle or flag asked for.
pub fn syscall_patching_wanted(asked: bool) -> bool {
    asked && std::env::var(SYSCALL_PATCHING_ENV).as_deref() != Ok("off")
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

/// A VM with its program loaded and its network up, not yet running: what `create` leaves
/// waiting for `start`.
pub struct Booted {
    vm: Vm,
    kernel: qkernel::Kernel,
    entry: u64,
    stack_pointer: u64,
    polled: bool,
    memory: u64,
    net: net::NetSetup,
}

/// Boots a VM for `launch`: memory, program, network. Nothing of the app runs yet.
pub fn boot(launch: &Launch) -> anyhow::Result<Booted> {
    let mut rootfs = RootFs::open(&launch.root, launch.readonly, launch.memory)
        .with_context(|| format!("opening the root {}", launch.root.display()))?;
    let name = launch
        .argv
        .first()
        .context("no program to run (empty args)")?;
    let (exe, image) = find_program(&mut rootfs, name, &launch.env)?;
    // A dynamically linked program starts in its interpreter (ld-linux), read from the root.
    let interp = match qkernel::interpreter(&image).with_context(|| format!("loading {exe}"))? {
        Some(path) => Some(
            rootfs
                .read_all(path.as_bytes())
                .map_err(|e| anyhow::anyhow!("errno {e}"))
                .with_context(|| format!("{exe} needs its interpreter {path}"))?,
        ),
        None => None,
    };
    if let net::NetSetup::NewNamespace = launch.net {
        // This thread's namespace is inherited by every thread it starts from here on (vCPU,
        // network stack, poller): the whole VMM lives in the new one.
        // SAFETY: unshare has no memory-safety preconditions.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("making the container's network namespace (unshare)");
        }
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let net = Some(net::GuestNet::new(
        launch.net.clone(),
        cancel.clone(),
        launch.memory,
        launch.http_proxy.clone(),
    )?);
    let patching = launch.polled_syscalls && syscall_patching_wanted(launch.syscall_patching);
    let mut vm = Vm::new(
        launch.memory,
        rootfs,
        net,
        vm::SyscallPath {
            polled: launch.polled_syscalls,
            patching,
            vdso: vclock::vdso_wanted(launch.vdso),
            fast_reads: fastread::wanted(),
        },
        cancel,
    )?;
    let loaded = vm
        .with_machine(|m| qkernel::load(m, &image, interp.as_deref(), &launch.argv, &launch.env))
        .with_context(|| format!("loading {exe}"))?;
    let mut kernel = qkernel::Kernel::new(loaded.brk, &exe, &launch.cwd);
    kernel.set_max_processes(launch.max_processes);
    kernel.set_user(launch.user.0, launch.user.1, launch.user.2.clone());
    kernel.set_args(&launch.argv);
    Ok(Booted {
        vm,
        kernel,
        entry: loaded.entry,
        stack_pointer: loaded.stack_pointer,
        polled: launch.polled_syscalls,
        memory: launch.memory,
        net: launch.net.clone(),
    })
}

impl Booted {
    /// For a container in a namespace of its own ([`net::NetSetup::NewNamespace`]): takes over
    /// the interface configured there since boot, if any (`ctr run --cni` runs the CNI plugins
    /// on `/proc/PID/ns/net` between create and start). Call just before [`Booted::run`].
    pub fn adopt_configured_interface(&mut self) -> anyhow::Result<()> {
        if !matches!(self.net, net::NetSetup::NewNamespace) {
            return Ok(());
        }
        let own = std::path::PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        let snapshot = qnet_netns::Netns::open(&own)?.inspect()?;
        if snapshot.pod_link().is_none() {
            tracing::debug!("no interface configured in the container's namespace: loopback only");
            return Ok(());
        }
        self.vm
            .attach_net(net::NetSetup::Pod { netns: own }, self.memory)
            .context("taking over the interface configured in the container's namespace")
    }

    /// Lets the runtime start processes in the container (`exec`) through a socket at `path`.
    pub fn serve_exec(&mut self, path: &Path) -> anyhow::Result<()> {
        self.kernel.accept_host_requests();
        exec::listen(path, self.vm.host_queue())
    }

    /// Confines the VMM ([`jail`]) and runs the program to its end.
    pub fn run(self) -> anyhow::Result<Stop> {
        let Booted {
            mut vm,
            kernel,
            entry,
            stack_pointer,
            polled,
            ..
        } = self;
        let mode = jail::Mode::from_env()?;
        vm::install_stop_signals();
        let keeper = prepare_confinement(&mut vm)?;
        let stop = jail::confine_process(mode)
            .context("confining the VMM")
            .and_then(|()| vm.with_net(|n| n.confine_stack(mode)).transpose())
            .and_then(|_| vm.run(kernel, entry, stack_pointer, mode));
        tracing::debug!(
            vcpu_exits = vm.exits,
            taken_back = vm.taken_back,
            patched_sites = vm.patched_sites(),
            stub_socket_io = vm.stub_socket_io(),
            polled,
            "container ended"
        );
        // The TAP goes with the VM; then the keeper gives the pod interface back (also when
        // confinement failed).
        drop(vm);
        if let Some(k) = keeper {
            k.finish();
        }
        stop
    }
}

/// What only an unconfined VMM can do: start the network (threads, sockets, the TAP) and hand
/// a taken-over pod interface to the keeper, which gives it back when the VMM is gone.
fn prepare_confinement(vm: &mut Vm) -> anyhow::Result<Option<keeper::Keeper>> {
    let keeper = vm
        .with_net(|net| {
            net.start()?;
            net.takeover_mut().map(keeper::Keeper::start).transpose()
        })
        .transpose()
        .map(Option::flatten)?;
    vm.enable_fast_reads()
        .context("letting the syscall stub read sockets")?;
    Ok(keeper)
}

/// Boots a VM for `launch` and runs its program to the end.
pub fn run(launch: &Launch) -> anyhow::Result<Stop> {
    // Before boot starts the helper threads, so they hold the runtime's signals too.
    vm::install_stop_signals();
    boot(launch)?.run()
}

/// Whether `path` is a usable root directory (for clear errors before booting).
pub fn check_root(path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(path.is_dir(), "root {} is not a directory", path.display());
    Ok(())
}
