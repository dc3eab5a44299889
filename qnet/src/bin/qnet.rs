//! `qnet`: run the stack on a TAP in a network namespace and serve demo services through it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use qnet::phy::TapOptions;
use qnet::runner::RunningStack;
use qnet::{demo, Ipv4Cidr, Mac, StackConfig};

#[derive(Parser)]
#[command(
    name = "qnet",
    version,
    about = "The Quark network stack (smoltcp over TAP + io_uring)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a TAP, run the stack on it, and accept ring clients on a Unix socket.
    Serve(ServeArgs),
}

#[derive(Parser)]
struct ServeArgs {
    /// Network namespace (from `ip netns add`) to create the TAP in.
    #[arg(long)]
    netns: Option<String>,
    /// TAP interface name.
    #[arg(long, default_value = "qtap0")]
    tap: String,
    /// The stack's address with prefix, e.g. 10.0.0.2/24.
    #[arg(long)]
    addr: String,
    /// Address (with prefix) for the kernel side of the TAP, e.g. 10.0.0.1/24.
    #[arg(long)]
    peer_addr: Option<String>,
    /// Default gateway.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// The stack's MAC address.
    #[arg(long)]
    mac: Option<String>,
    /// IP MTU of the link.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// TCP socket buffer size in bytes (each direction); sets the advertised window.
    #[arg(long)]
    tcp_buf: Option<usize>,
    /// Unix socket where ring clients attach.
    #[arg(long, default_value = "/run/qnet/qnet.sock")]
    socket: PathBuf,
    /// Serve a TCP echo on this port (0 disables).
    #[arg(long, default_value_t = 7)]
    echo_port: u16,
    /// Serve HTTP "hello" on this port (0 disables).
    #[arg(long, default_value_t = 80)]
    http_port: u16,
    /// Serve a UDP echo on this port (0 disables).
    #[arg(long, default_value_t = 7)]
    udp_echo_port: u16,
    /// Run qhttp, the HTTP proxy, on this stack with the JSON config in FILE (docs/qhttp.md).
    #[arg(long, value_name = "FILE")]
    http_proxy: Option<PathBuf>,
}

fn config(a: &ServeArgs) -> anyhow::Result<StackConfig> {
    let addr: Ipv4Cidr = a.addr.parse()?;
    let mut cfg = StackConfig::new(addr);
    cfg.gateway = a.gateway;
    cfg.mtu = a.mtu;
    if let Some(mac) = &a.mac {
        cfg.mac = mac.parse::<Mac>()?;
    }
    if let Some(b) = a.tcp_buf {
        cfg.tcp_rx_buf = b;
        cfg.tcp_tx_buf = b;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let cfg = config(&a)?;
    // Checked before anything is created, like the stack's own settings.
    let proxy_cfg = a
        .http_proxy
        .as_ref()
        .map(|path| -> anyhow::Result<qhttp::Config> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            qhttp::Config::from_json(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .transpose()?;
    let peer_addr = a
        .peer_addr
        .as_deref()
        .map(str::parse::<Ipv4Cidr>)
        .transpose()?;
    let stack = RunningStack::start(
        cfg.clone(),
        Some(&TapOptions {
            name: a.tap.clone(),
            netns: a.netns.clone(),
            mtu: cfg.mtu,
            peer_addr,
            offloads: true,
            persist: false,
        }),
        &a.socket,
    )?;
    let socket = a.socket.clone();
    let (echo, http, udp) = (a.echo_port, a.http_port, a.udp_echo_port);
    std::thread::spawn(move || {
        let run = || -> anyhow::Result<()> {
            let client = qnet_client::Client::connect(&socket)?;
            if echo != 0 {
                demo::tcp_echo(client.clone(), echo)?;
            }
            if http != 0 {
                demo::http_hello(client.clone(), http)?;
            }
            if udp != 0 {
                demo::udp_echo(client, udp)?;
            }
            Ok(())
        };
        if let Err(e) = run() {
            tracing::error!("starting demo services: {e:#}");
        }
    });
    let _proxy = match proxy_cfg {
        Some(pc) => {
            let client = qnet_client::Client::connect(&a.socket)?;
            let ports: Vec<u16> = pc.listeners.iter().map(|l| l.port).collect();
            let handle = qhttp::start(pc, client, Some(stack.http_counters()))?;
            println!("qnet: qhttp proxy on ports {ports:?}");
            Some(handle)
        }
        None => None,
    };
    println!(
        "qnet: {} on TAP {}{} (mtu {}), clients attach at {}; tcp echo :{echo}, http :{http}, udp echo :{udp}",
        cfg.addr,
        a.tap,
        a.netns.as_deref().map(|n| format!(" in netns {n}")).unwrap_or_default(),
        cfg.mtu,
        a.socket.display()
    );
    stack.wait()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qnet: {e:#}");
            ExitCode::from(2)
        }
    }
}
