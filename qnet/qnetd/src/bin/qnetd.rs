//! `qnetd run` starts the node daemon; the other subcommands call a running one's API.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use qnetd::api;
use qnetd::daemon::{Config, Daemon, VXLAN_PORT};
use serde_json::{json, Value};

const DEFAULT_API: &str = "/run/qnetd/api.sock";

#[derive(Parser)]
#[command(
    name = "qnetd",
    about = "Quark's VPC overlay daemon (VXLAN, multi-tenant)"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, default_value = DEFAULT_API)]
    api: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the daemon.
    Run(RunArgs),
    /// VPCs: add, del, list.
    Vpc {
        #[command(subcommand)]
        cmd: VpcCmd,
    },
    /// Endpoints: add, del, list.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// The data plane's counters.
    Stats,
}

#[derive(Args)]
struct RunArgs {
    /// This node's underlay address (VXLAN is sent and received there).
    #[arg(long)]
    underlay: Ipv4Addr,
    /// The VXLAN UDP port.
    #[arg(long, default_value_t = VXLAN_PORT)]
    port: u16,
    /// The underlay's MTU; endpoints get 50 bytes less.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// The state file.
    #[arg(long, default_value = "/var/lib/qnetd/state.json")]
    state: PathBuf,
}

#[derive(Subcommand)]
enum VpcCmd {
    Add {
        name: String,
        #[arg(long)]
        vni: u32,
        #[arg(long)]
        cidr: String,
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
    },
    Del {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum EndpointCmd {
    Add {
        name: String,
        #[arg(long)]
        vpc: String,
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long)]
        mac: Option<String>,
        /// The network namespace of a local endpoint (a path).
        #[arg(long, conflicts_with = "node")]
        netns: Option<PathBuf>,
        /// The interface name in that namespace (default eth0).
        #[arg(long, requires = "netns")]
        ifname: Option<String>,
        /// The underlay address of the node hosting a remote endpoint.
        #[arg(long, required_unless_present = "netns")]
        node: Option<Ipv4Addr>,
    },
    Del {
        name: String,
    },
    List,
}

fn run(args: RunArgs, api_socket: PathBuf) -> anyhow::Result<()> {
    if let Some(dir) = api_socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let daemon = Daemon::start(Config {
        state: args.state,
        underlay: args.underlay,
        port: args.port,
        underlay_mtu: args.mtu,
    })?;
    api::serve(daemon, &api_socket)
}

fn client(api_socket: &std::path::Path, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let (method, path, body): (Method, String, Option<Value>) = match cmd {
        Cmd::Run(_) => unreachable!("handled by main"),
        Cmd::Vpc { cmd } => match cmd {
            VpcCmd::Add {
                name,
                vni,
                cidr,
                gateway,
            } => (
                Method::POST,
                "/v1/vpcs".into(),
                Some(json!({ "name": name, "vni": vni, "cidr": cidr, "gateway": gateway })),
            ),
            VpcCmd::Del { name } => (Method::DELETE, format!("/v1/vpcs/{name}"), None),
            VpcCmd::List => (Method::GET, "/v1/vpcs".into(), None),
        },
        Cmd::Endpoint { cmd } => match cmd {
            EndpointCmd::Add {
                name,
                vpc,
                ip,
                mac,
                netns,
                ifname,
                node,
            } => {
                let mut body = json!({ "name": name, "vpc": vpc, "ip": ip });
                let fields = [
                    ("mac", mac.map(Value::from)),
                    ("netns", netns.map(|p| Value::from(p.display().to_string()))),
                    ("ifname", ifname.map(Value::from)),
                    ("node", node.map(|n| Value::from(n.to_string()))),
                ];
                for (k, v) in fields {
                    if let Some(v) = v {
                        body[k] = v;
                    }
                }
                (Method::POST, "/v1/endpoints".into(), Some(body))
            }
            EndpointCmd::Del { name } => (Method::DELETE, format!("/v1/endpoints/{name}"), None),
            EndpointCmd::List => (Method::GET, "/v1/endpoints".into(), None),
        },
        Cmd::Stats => (Method::GET, "/v1/stats".into(), None),
    };
    let (status, text) = api::call(api_socket, method, &path, body.as_ref())?;
    if (200..300).contains(&status) {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or(text);
    eprintln!("qnetd: {msg}");
    Ok(ExitCode::FAILURE)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QNETD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run(args, cli.api).map(|()| ExitCode::SUCCESS),
        cmd => client(&cli.api, cmd),
    };
    result.unwrap_or_else(|e| {
        eprintln!("qnetd: {e:#}");
        ExitCode::FAILURE
    })
}
