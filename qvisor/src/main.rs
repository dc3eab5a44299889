//! `qvisor`: run a container's program in its own KVM virtual machine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qvisor",
    version,
    about = "Quark's VMM: each container in its own KVM virtual machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the container of an OCI bundle to completion (like `runc run`).
    Run {
        /// The bundle directory (holding config.json).
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// The container id.
        id: String,
    },
    /// Run a program from a root directory without a bundle (for development).
    Exec {
        /// The root file system.
        #[arg(long)]
        root: PathBuf,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory_mib: u64,
        /// Serve syscalls on the polled path (on) or trap every one (off).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        syscall_poll: String,
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
        /// The program (a path in the root, or a name found in /bin, /usr/bin...) and its
        /// arguments.
        #[arg(required = true, trailing_var_arg = true)]
        argv: Vec<String>,
    },
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QVISOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let launch = match Cli::parse().cmd {
        Cmd::Run { bundle, id } => {
            if id.is_empty() || id.contains('/') {
                eprintln!("qvisor: invalid container id {id:?}");
                return ExitCode::from(125);
            }
            qvisor::bundle::load(&bundle)
        }
        Cmd::Exec {
            root,
            memory_mib,
            syscall_poll,
            netns,
            net_addr,
            net_peer,
            argv,
        } => net_setup(netns, net_addr, net_peer).and_then(|net| {
            qvisor::check_root(&root)?;
            Ok(qvisor::Launch {
                net,
                polled_syscalls: syscall_poll == "on",
                root,
                readonly: false,
                argv,
                env: vec!["PATH=/bin:/usr/bin:/sbin:/usr/sbin".into(), "HOME=/".into()],
                cwd: "/".into(),
                memory: memory_mib << 20,
            })
        }),
    };
    match launch.and_then(|l| qvisor::run(&l)) {
        Ok(qvisor::Stop::Exited(code)) => ExitCode::from(code as u8),
        Ok(stop) => {
            if let qvisor::Stop::Killed { signal, reason } = &stop {
                eprintln!("qvisor: container killed by signal {signal}: {reason}");
            }
            ExitCode::from(stop.status() as u8)
        }
        Err(e) => {
            eprintln!("qvisor: {e:#}");
            ExitCode::from(125)
        }
    }
}
