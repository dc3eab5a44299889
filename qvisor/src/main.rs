//! `qvisor`: run a container's program in its own KVM virtual machine.

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
    /// Run a static x86-64 Linux executable from the host file system in a fresh VM
    /// (a development entry point; bundles come with `run --bundle`).
    Exec {
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory_mib: u64,
        /// The executable and its arguments.
        #[arg(required = true, trailing_var_arg = true)]
        argv: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QVISOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Exec { memory_mib, argv } = Cli::parse().cmd;
    let result = std::fs::read(&argv[0])
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", argv[0]))
        .and_then(|image| {
            let envp = vec!["PATH=/bin:/usr/bin".to_string(), "HOME=/".to_string()];
            qvisor::run_static(&image, &argv, &envp, memory_mib << 20)
        });
    match result {
        Ok(qvisor::Stop::Exited(code)) => ExitCode::from(code as u8),
        Ok(stop @ qvisor::Stop::Killed { .. }) => {
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
