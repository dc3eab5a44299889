//! `qnetd run` starts the node daemon; the other subcommands call a running one's API.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use qnetd::api;
use qnetd::daemon::{Config, Daemon, EtcdConfig, VXLAN_PORT};
use qnetd::tunnel::Mode;
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
    /// Security groups: add, set (replace the rules), del, list.
    Sg {
        #[command(subcommand)]
        cmd: SgCmd,
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
    /// The cluster's etcd (client URLs, comma-separated): nodes then share VPCs and learn each
    /// other's endpoints. Without it each node is told through its own API.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The key prefix in etcd.
    #[arg(long, default_value = "/qnetd")]
    etcd_prefix: String,
    /// VXLAN through a tunnel device that carries 64 KiB packets whole (Linux 6.17+, the node
    /// forwarding IPv4): off, auto (when possible, else UDP sockets), on (or fail).
    #[arg(long, default_value = "auto")]
    tunnel_offload: Mode,
    /// Where ring endpoints' sockets are made (default: `rings` beside the API socket).
    #[arg(long)]
    rings: Option<PathBuf>,
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
enum SgCmd {
    Add {
        name: String,
        /// An allow rule: PROTO[:PORTS][@CIDR], PROTO one of any, tcp, udp, icmp; e.g.
        /// tcp:8080@10.0.0.0/8, udp:5000-5010, icmp.
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    Set {
        name: String,
        #[arg(long = "rule")]
        rules: Vec<String>,
    },
    Del {
        name: String,
    },
    List,
}

/// `PROTO[:PORTS][@CIDR]` as the API's JSON rule.
fn rule_json(rule: &str) -> anyhow::Result<Value> {
    let (rest, cidr) = match rule.split_once('@') {
        Some((r, c)) => (r, Some(c)),
        None => (rule, None),
    };
    let (protocol, ports) = match rest.split_once(':') {
        Some((p, ports)) => (p, Some(ports)),
        None => (rest, None),
    };
    if protocol.is_empty() {
        anyhow::bail!("rule {rule:?}: give PROTO[:PORTS][@CIDR]");
    }
    let mut v = json!({ "protocol": protocol });
    if let Some(ports) = ports {
        v["ports"] = Value::from(ports);
    }
    if let Some(cidr) = cidr {
        v["cidr"] = Value::from(cidr);
    }
    Ok(v)
}

fn group_json(name: &str, rules: &[String]) -> anyhow::Result<Value> {
    let rules = rules
        .iter()
        .map(|r| rule_json(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(json!({ "name": name, "rules": rules }))
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
        /// The interface name in that namespace (default eth0; with --attach link, the
        /// existing link).
        #[arg(long, requires = "netns")]
        ifname: Option<String>,
        /// How a local endpoint is attached: tap (a TAP qnetd makes in --netns), link (the
        /// existing link --ifname in --netns; give --mac, the far end's), ring (a socket ring
        /// served by a stack in qnetd, for a qvisor container; no --netns).
        #[arg(long, value_parser = ["tap", "link", "ring"], conflicts_with = "node")]
        attach: Option<String>,
        /// A ring endpoint's socket buffers in MiB (default 512): the memory its stack may
        /// hold for the container's sockets.
        #[arg(long, requires = "attach")]
        buffers_mib: Option<u32>,
        /// The underlay address of the node hosting a remote endpoint.
        #[arg(long, required_unless_present_any = ["netns", "attach"])]
        node: Option<Ipv4Addr>,
        /// The security group guarding a local endpoint's ingress.
        #[arg(long, conflicts_with = "node")]
        security_group: Option<String>,
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
    // SIGTERM and SIGINT are taken by one thread (blocked here, before any other thread is
    // born, so all inherit the mask), which undoes the daemon's changes and exits.
    // SAFETY: sigset_t is plain data; the calls only fill and apply it.
    let stop_signals = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let rings = args.rings.unwrap_or_else(|| {
        api_socket
            .parent()
            .unwrap_or(std::path::Path::new("/run/qnetd"))
            .join("rings")
    });
    let daemon = Daemon::start(Config {
        rings,
        state: args.state,
        underlay: args.underlay,
        port: args.port,
        underlay_mtu: args.mtu,
        tunnel: args.tunnel_offload,
        etcd: (!args.etcd.is_empty()).then_some(EtcdConfig {
            endpoints: args.etcd,
            prefix: args.etcd_prefix,
        }),
    })?;
    let stopping = daemon.clone();
    std::thread::Builder::new()
        .name("qnetd-signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: waits for one of the blocked signals in the set built above.
            unsafe { libc::sigwait(&stop_signals, &mut signal) };
            tracing::info!(signal, "stopping");
            stopping.stop();
            std::process::exit(0);
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
                attach,
                buffers_mib,
                node,
                security_group,
            } => {
                let mut body = json!({ "name": name, "vpc": vpc, "ip": ip });
                let fields = [
                    ("attach", attach.map(Value::from)),
                    ("buffers_mib", buffers_mib.map(Value::from)),
                    ("mac", mac.map(Value::from)),
                    ("netns", netns.map(|p| Value::from(p.display().to_string()))),
                    ("ifname", ifname.map(Value::from)),
                    ("node", node.map(|n| Value::from(n.to_string()))),
                    ("security_group", security_group.map(Value::from)),
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
        Cmd::Sg { cmd } => match cmd {
            SgCmd::Add { name, rules } => (
                Method::POST,
                "/v1/security-groups".into(),
                Some(group_json(&name, &rules)?),
            ),
            SgCmd::Set { name, rules } => (
                Method::PUT,
                format!("/v1/security-groups/{name}"),
                Some(group_json(&name, &rules)?),
            ),
            SgCmd::Del { name } => (Method::DELETE, format!("/v1/security-groups/{name}"), None),
            SgCmd::List => (Method::GET, "/v1/security-groups".into(), None),
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
