//! `qvisor`: run a container's program in its own KVM virtual machine. The command line is
//! runc's (create, start, state, kill, delete, run, ...), so containerd's runc shim and Docker
//! drive it as they drive runc; `launch` runs a program from a directory for development.
// Tenant configuration reaches this program: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qvisor::oci::{self, CreateOptions, Global};

#[derive(Parser)]
#[command(
    name = "qvisor",
    version,
    about = "Quark's VMM: each container in its own KVM virtual machine"
)]
struct Cli {
    /// Directory of the containers' state.
    #[arg(long, global = true, default_value = oci::state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Log to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the log file.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Log debug messages.
    #[arg(long, global = true)]
    debug: bool,
    /// cgroupsPath is systemd's slice:prefix:name.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The bundle directory (holding config.json).
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's pid (the VMM process) here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Send the pty master here when process.terminal is true.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (the VM has its own root).
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility (the guest has no host keyring).
    #[arg(long)]
    no_new_keyring: bool,
    /// Accepted for runc compatibility; extra descriptors are not passed to the guest.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// The container id.
    id: String,
}

impl CreateArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.as_ref().map(|p| absolute(p)),
            console_socket: self.console_socket.as_ref().map(|p| absolute(p)),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the container's VM; the app waits for `start`.
    Create(CreateArgs),
    /// Run the app of a created container.
    Start { id: String },
    /// Print the OCI state of a container.
    State { id: String },
    /// Send a signal to the container (default SIGTERM).
    Kill {
        /// Accepted for runc compatibility: the container is one process.
        #[arg(long, short)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container (stopped, or created; --force for a running one).
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it and delete it (like `runc run`).
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once started.
        #[arg(long, short)]
        detach: bool,
        /// Accepted for runc compatibility.
        #[arg(long)]
        keep: bool,
    },
    /// List containers.
    List {
        #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show the container's processes (its VMM).
    Ps {
        #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        id: String,
        /// Options for ps (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Run a new process in a running container.
    Exec {
        /// The process as OCI `process` JSON (else ARGS with the container's defaults).
        #[arg(long, short)]
        process: Option<PathBuf>,
        #[arg(long, short)]
        detach: bool,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Give the process a terminal (its master goes to --console-socket).
        #[arg(long, short)]
        tty: bool,
        /// Working directory in the container.
        #[arg(long)]
        cwd: Option<String>,
        /// Extra environment (NAME=VALUE), repeatable.
        #[arg(long, short)]
        env: Vec<String>,
        /// The user to run as: UID[:GID] (numbers, as runc's).
        #[arg(long, short)]
        user: Option<String>,
        /// Where the terminal's master goes (with --tty), as for create.
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Waits for a process `exec` started (started by exec).
    #[command(hide = true)]
    ExecProxy {
        #[arg(long)]
        sync_fd: i32,
        #[arg(long)]
        tty: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
        spec: String,
    },
    /// Stop the container's vCPU and network stack.
    Pause { id: String },
    /// Continue a paused container.
    Resume { id: String },
    /// Print resource usage.
    Events {
        /// One stats line and exit.
        #[arg(long)]
        stats: bool,
        /// Seconds between stats lines.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Print what the runtime supports (JSON).
    Features,
    /// The VMM process itself (started by create).
    #[command(hide = true)]
    Vmm {
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        sync_fd: i32,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        id: String,
    },
    /// Gives a taken-over pod interface back once the VMM that started it is gone.
    #[command(hide = true)]
    Keeper,
    /// Run a program from a root directory without a bundle or state (for development).
    Launch {
        /// The root file system.
        #[arg(long)]
        rootfs: PathBuf,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory_mib: u64,
        /// Serve syscalls on the polled path (on) or trap every one (off).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        syscall_poll: String,
        /// Patch trapped syscall sites of shared libraries into jumps (on), or leave every
        /// program's code as it is (off). Only with --syscall-poll on.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        syscall_patching: String,
        /// Answer time calls (clock_gettime, gettimeofday, time, getcpu) in the guest with a
        /// vDSO (on), or make them syscalls (off).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        vdso: String,
        /// Give the container a network in this namespace (a name from `ip netns add`, or a
        /// path): with --net-addr a new TAP with that address; without, the interface a CNI
        /// plugin made there is taken over.
        #[arg(long)]
        netns: Option<String>,
        /// The container's address with prefix, e.g. 10.0.0.2/24.
        #[arg(long, requires = "netns")]
        net_addr: Option<String>,
        /// Address with prefix for the kernel side of the TAP.
        #[arg(long, requires = "netns")]
        net_peer: Option<String>,
        /// Serve the container's sockets by the stack at this socket ring (a qnetd ring
        /// endpoint's socket) instead of a stack of its own.
        #[arg(long, conflicts_with = "netns")]
        net_ring: Option<PathBuf>,
        /// Run qhttp in front of the guest with the JSON config in FILE (docs/qhttp.md).
        #[arg(long, value_name = "FILE")]
        http_proxy: Option<PathBuf>,
        /// The program (a path in the root, or a name found in /bin, /usr/bin...) and its
        /// arguments.
        #[arg(required = true, trailing_var_arg = true)]
        argv: Vec<String>,
    },
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn net_setup(
    netns: Option<String>,
    addr: Option<String>,
    peer: Option<String>,
) -> anyhow::Result<qvisor::net::NetSetup> {
    use qvisor::net::{NetSetup, TapNet};
    Ok(match (netns, addr) {
        (Some(netns), Some(addr)) => NetSetup::Tap(TapNet {
            netns,
            tap: "qtap0".into(),
            addr: addr.parse()?,
            peer: peer.as_deref().map(str::parse).transpose()?,
            gateway: None,
        }),
        // A namespace without an address: take over what a CNI plugin made there.
        (Some(netns), None) => NetSetup::Pod {
            netns: if netns.contains('/') {
                netns.into()
            } else {
                std::path::Path::new("/run/netns").join(netns)
            },
        },
        _ => NetSetup::Loopback,
    })
}

/// Seconds from Go-style durations runc takes ("5s", "500ms", "1m") or a bare number.
fn parse_interval(s: &str) -> anyhow::Result<std::time::Duration> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid interval {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => anyhow::bail!("invalid interval {s:?}"),
    };
    anyhow::ensure!(secs > 0.0, "invalid interval {s:?}");
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn print(text: anyhow::Result<String>) -> anyhow::Result<i32> {
    print!("{}", text?);
    Ok(0)
}

/// The development `launch`: one VM in this process, no state.
fn launch(cmd: Cmd) -> anyhow::Result<i32> {
    let Cmd::Launch {
        rootfs,
        memory_mib,
        syscall_poll,
        syscall_patching,
        vdso,
        netns,
        net_addr,
        net_peer,
        net_ring,
        http_proxy,
        argv,
    } = cmd
    else {
        unreachable!("called for launch only")
    };
    let net = match net_ring {
        Some(socket) => qvisor::net::NetSetup::Ring {
            socket: absolute(&socket),
        },
        None => net_setup(netns, net_addr, net_peer)?,
    };
    let http_proxy = http_proxy
        .map(|path| -> anyhow::Result<qhttp::Config> {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            qhttp::Config::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .transpose()?;
    qvisor::check_root(&rootfs)?;
    let stop = qvisor::run(&qvisor::Launch {
        net,
        http_proxy,
        polled_syscalls: syscall_poll == "on",
        syscall_patching: syscall_patching == "on",
        vdso: vdso == "on",
        root: rootfs,
        readonly: false,
        argv,
        env: vec!["PATH=/bin:/usr/bin:/sbin:/usr/sbin".into(), "HOME=/".into()],
        cwd: "/".into(),
        memory: memory_mib << 20,
        max_processes: qvisor::DEFAULT_MAX_PROCESSES,
        user: (0, 0, Vec::new()),
    })?;
    if let qvisor::Stop::Killed { signal, reason } = &stop {
        eprintln!("qvisor: container killed by signal {signal}: {reason}");
    }
    Ok(stop.status())
}

fn dispatch(g: &Global, cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Create(c) => oci::create(g, &c.id, &c.options()).map(|()| 0),
        Cmd::Start { id } => oci::start(g, &id).map(|()| 0),
        Cmd::State { id } => print(oci::state(g, &id).map(|s| s + "\n")),
        Cmd::Kill { id, signal, .. } => oci::kill(g, &id, oci::parse_signal(&signal)?).map(|()| 0),
        Cmd::Delete { id, force } => oci::delete(g, &id, force).map(|()| 0),
        Cmd::Run { create, detach, .. } => oci::run(g, &create.id, &create.options(), detach),
        Cmd::List { format, quiet } => print(oci::list(g, format == "json", quiet)),
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => print(oci::ps(g, &id, format == "json", &ps_args)),
        Cmd::Exec {
            process,
            detach,
            pid_file,
            tty,
            cwd,
            env,
            user,
            console_socket,
            id,
            args,
        } => {
            let opts = oci::exec::ExecOptions {
                process,
                detach,
                pid_file,
                tty,
                console_socket,
                cwd,
                env,
                user,
                args,
            };
            oci::exec::exec(g, &id, &opts)
        }
        Cmd::ExecProxy {
            sync_fd,
            tty,
            console_socket,
            spec,
            ..
        } => Ok(oci::exec::proxy(
            sync_fd,
            &spec,
            tty,
            console_socket.as_deref(),
        )),
        Cmd::Pause { id } => oci::pause(g, &id).map(|()| 0),
        Cmd::Resume { id } => oci::resume(g, &id).map(|()| 0),
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            if stats {
                return print(oci::stats(g, &id));
            }
            let every = parse_interval(&interval)?;
            // Until the container stops (stats then fails with "container not running").
            while let Ok(line) = oci::stats(g, &id) {
                print!("{line}");
                std::thread::sleep(every);
            }
            Ok(0)
        }
        Cmd::Features => print(Ok(oci::features())),
        Cmd::Vmm {
            bundle,
            sync_fd,
            console_socket,
            id,
        } => Ok(oci::vmm(
            g,
            &id,
            &bundle,
            sync_fd,
            console_socket.as_deref(),
        )),
        Cmd::Keeper => Ok(qvisor::keeper::run()),
        launch_cmd @ Cmd::Launch { .. } => launch(launch_cmd),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = Global {
        root: absolute(&cli.root),
        log: cli.log.as_deref().map(absolute),
        log_json: cli.log_format == "json",
        debug: cli.debug,
        systemd_cgroup: cli.systemd_cgroup,
    };
    // The VMM gets a mount namespace of its own while it still has one thread (it pivots into
    // an empty root before the app runs, qvisor::jail).
    if matches!(cli.cmd, Cmd::Vmm { .. } | Cmd::Launch { .. }) {
        if let Err(e) = qvisor::jail::enter_private_mount_namespace() {
            eprintln!("qvisor: {e:#}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = oci::log::init(g.log.as_deref(), g.log_json, g.debug) {
        eprintln!("qvisor: {e:#}");
        return ExitCode::from(1);
    }
    // runc's commands fail with 1, but exec with 255 (any other code is the process's);
    // `launch` with 125, apart from any status of the app.
    let error_code = match cli.cmd {
        Cmd::Launch { .. } => 125,
        Cmd::Exec { .. } => 255,
        _ => 1,
    };
    match dispatch(&g, cli.cmd) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if g.log.is_some() {
                tracing::error!("{e:#}");
            }
            eprintln!("qvisor: {e:#}");
            ExitCode::from(error_code)
        }
    }
}
