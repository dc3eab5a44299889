//! Nodes and pods for the VPC overlay's tests and benchmarks: an underlay (a namespace holding
//! a bridge), nodes (namespaces on it, each running its own qnetd) and pods (namespaces a
//! node's qnetd attaches), all on 192.168.77.0/24 inside the test's own namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{run, Netns};

/// The underlay's network; node N is 192.168.77.N.
pub fn underlay_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, n)
}

/// A namespace with a bridge that nodes join.
pub struct Underlay {
    pub ns: Netns,
}

impl Underlay {
    pub fn new() -> Underlay {
        let ns = Netns::new("ul");
        run(
            "ip",
            &["-n", &ns.name, "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", &ns.name, "link", "set", "br0", "up"]);
        Underlay { ns }
    }

    /// A namespace joined to the bridge as 192.168.77.`n` on its interface `u0`.
    pub fn join(&self, tag: &str, n: u8) -> Netns {
        let ns = Netns::new(tag);
        let port = format!("u{n}");
        run(
            "ip",
            &[
                "-n",
                &self.ns.name,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "u0",
                "netns",
                &ns.name,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &self.ns.name,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ],
        );
        let addr = format!("{}/24", underlay_ip(n));
        run("ip", &["-n", &ns.name, "addr", "add", &addr, "dev", "u0"]);
        run("ip", &["-n", &ns.name, "link", "set", "u0", "up"]);
        ns
    }

    /// A node running qnetd (the binary at `qnetd`) at 192.168.77.`n`.
    pub fn node(&self, qnetd: &str, n: u8) -> Node {
        self.node_with(qnetd, n, &[])
    }

    /// [`Underlay::node`] with more arguments for `qnetd run`.
    pub fn node_with(&self, qnetd: &str, n: u8, args: &[&str]) -> Node {
        let ns = self.join("node", n);
        // Nodes forward IPv4, as Kubernetes nodes do; qnetd's tunnel offload needs it (its
        // default, auto, uses it then).
        ns.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .expect("letting the node forward IPv4");
        let dir = std::env::temp_dir().join(format!("qnetd-{}", ns.name));
        std::fs::create_dir_all(&dir).expect("making the node's directory");
        let mut node = Node {
            ns,
            ip: underlay_ip(n),
            qnetd: qnetd.to_string(),
            dir,
            daemon: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        node.start();
        node
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay::new()
    }
}

/// One node: its namespace and its qnetd.
pub struct Node {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    qnetd: String,
    dir: PathBuf,
    daemon: Option<Child>,
    args: Vec<String>,
}

impl Node {
    pub fn api(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("qnetd.log")
    }

    /// Starts qnetd (again) and waits for its API.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("opening the node's log");
        let _ = std::fs::remove_file(self.api());
        let child = self
            .ns
            .cmd(&self.qnetd)
            .args([
                "--api",
                &self.api().display().to_string(),
                "run",
                "--underlay",
            ])
            .arg(self.ip.to_string())
            .arg("--state")
            .arg(self.dir.join("state.json"))
            .args(&self.args)
            .env("QNETD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting qnetd");
        self.daemon = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while !self.api().exists() {
            assert!(
                Instant::now() < end,
                "qnetd did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills qnetd with SIGKILL (no clean-up of its own can run).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops qnetd with SIGTERM and waits for it; whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.daemon.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        c.wait().is_ok_and(|s| s.success())
    }

    /// Whether qnetd is still running.
    pub fn alive(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Runs `qnetd --api SOCK ARGS...` (the CLI).
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.qnetd)
            .arg("--api")
            .arg(self.api())
            .args(args)
            .output()
            .expect("running the qnetd CLI")
    }

    /// Runs the CLI and returns its stdout, failing the test on an error.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "qnetd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn add_vpc(&self, name: &str, vni: u32, cidr: &str) {
        self.ok(&[
            "vpc",
            "add",
            name,
            "--vni",
            &vni.to_string(),
            "--cidr",
            cidr,
        ]);
    }

    /// Attaches `pod` here as endpoint `name` of `vpc` with address `ip`.
    pub fn attach(&self, name: &str, vpc: &str, ip: &str, pod: &Netns) {
        let netns = format!("/run/netns/{}", pod.name);
        self.ok(&[
            "endpoint", "add", name, "--vpc", vpc, "--ip", ip, "--netns", &netns,
        ]);
    }

    /// Tells this node that endpoint `name` (`ip`, `mac` or the default) is on `node`.
    pub fn remote(&self, name: &str, vpc: &str, ip: &str, node: Ipv4Addr, mac: Option<&str>) {
        let node = node.to_string();
        let mut args = vec![
            "endpoint", "add", name, "--vpc", vpc, "--ip", ip, "--node", &node,
        ];
        if let Some(mac) = mac {
            args.extend(["--mac", mac]);
        }
        self.ok(&args);
    }

    /// The data plane's counter `name` (a top-level one, or `dropped.REASON`).
    pub fn counter(&self, name: &str) -> u64 {
        let stats = self.ok(&["stats"]);
        let key = match name.split_once('.') {
            Some((_, reason)) => format!("\"{reason}\":"),
            None => format!("\"{name}\":"),
        };
        let from = stats
            .find(&key)
            .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
            + key.len();
        stats[from..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("counter {name} in {stats}"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An etcd server (Debian's) on the underlay at 192.168.77.`n`, its data in a temporary
/// directory; stopped and removed on drop.
pub struct Etcd {
    pub url: String,
    child: Child,
    dir: PathBuf,
    _ns: Netns,
}

impl Etcd {
    pub fn start(ul: &Underlay, n: u8) -> Etcd {
        let ns = ul.join("etcd", n);
        let ip = underlay_ip(n);
        let dir = std::env::temp_dir().join(format!("etcd-{}", ns.name));
        let client = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let child = ns
            .cmd("etcd")
            .args(["--name", "e", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting etcd (install etcd-server: scripts/setup.sh)");
        let end = Instant::now() + Duration::from_secs(20);
        let addr = std::net::SocketAddr::from((ip, 2379));
        while ns
            .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
            .is_err()
        {
            assert!(Instant::now() < end, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Etcd {
            url: client,
            child,
            dir,
            _ns: ns,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two nodes running qnetd with VPC `vpc` (VNI 42, 10.42.0.0/24) and a pod on each: `pa`
/// (10.42.0.2) on node `a`, `pb` (10.42.0.3) on node `b`, each known to the other node.
pub struct TwoNodes {
    pub a: Node,
    pub b: Node,
    pub pa: Netns,
    pub pb: Netns,
    pub ul: Underlay,
}

pub fn two_nodes(qnetd: &str, vpc: &str) -> TwoNodes {
    two_nodes_with(qnetd, vpc, &[])
}

/// [`two_nodes`] with more arguments for both nodes' `qnetd run`.
pub fn two_nodes_with(qnetd: &str, vpc: &str, args: &[&str]) -> TwoNodes {
    let ul = Underlay::new();
    let (a, b) = (ul.node_with(qnetd, 1, args), ul.node_with(qnetd, 2, args));
    let (pa, pb) = (Netns::new("pa"), Netns::new("pb"));
    for n in [&a, &b] {
        n.add_vpc(vpc, 42, "10.42.0.0/24");
    }
    a.attach("pa", vpc, "10.42.0.2", &pa);
    b.attach("pb", vpc, "10.42.0.3", &pb);
    a.remote("pb", vpc, "10.42.0.3", b.ip, None);
    b.remote("pa", vpc, "10.42.0.2", a.ip, None);
    TwoNodes { a, b, pa, pb, ul }
}

/// Whether `ns` gets an answer to one ping of `ip` within a second.
pub fn pings(ns: &Netns, ip: &str) -> bool {
    ns.cmd("ping")
        .args(["-c", "1", "-W", "1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A node that is the Linux kernel's own overlay, for comparison: a VXLAN device with `vni`
/// sending what it does not know to `peer` (another node's underlay address), a bridge, and a
/// pod on it by a veth with address `pod_ip`/24 and the overlay MTU. The node and the pod.
pub fn kernel_vxlan_node(
    ul: &Underlay,
    n: u8,
    vni: u32,
    peer: Ipv4Addr,
    pod_ip: &str,
) -> (Netns, Netns) {
    let node = ul.join("knode", n);
    let pod = Netns::new("kpod");
    let script = format!(
        "ip link add vx0 type vxlan id {vni} dstport 4789 local {me} dev u0 \
         && ip link add br1 type bridge && ip link set vx0 master br1 up && ip link set br1 up \
         && bridge fdb append 00:00:00:00:00:00 dev vx0 dst {peer} \
         && ip link add p0 type veth peer name eth0 netns {pod} && ip link set p0 master br1 up",
        me = underlay_ip(n),
        pod = pod.name,
    );
    let out = node.sh(&script);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = format!("{pod_ip}/24");
    run(
        "ip",
        &["-n", &pod.name, "addr", "add", &addr, "dev", "eth0"],
    );
    run(
        "ip",
        &["-n", &pod.name, "link", "set", "eth0", "mtu", "1450", "up"],
    );
    (node, pod)
}

/// Starts qnetd inside this process, its threads in the network namespace at `netns` (a
/// path), VXLAN on `underlay`, its state and API socket in `dir`; returns the API socket once
/// it answers. For tests of other crates, which cannot run qnetd's binary.
pub fn start_qnetd_in(netns: &str, underlay: Ipv4Addr, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("making qnetd's directory");
    let file = std::fs::File::open(netns).unwrap_or_else(|e| panic!("opening {netns}: {e}"));
    let socket = dir.join("api.sock");
    let (path, state) = (socket.clone(), dir.join("state.json"));
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, which then serves qnetd's API for good; the
        // daemon's own threads are born here and inherit the namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        // A child forked here is in the namespace too.
        run("ip", &["link", "set", "lo", "up"]);
        let daemon = qnetd::daemon::Daemon::start(qnetd::daemon::Config {
            state,
            underlay,
            port: 4789,
            underlay_mtu: 1500,
            // The tunnel device when the namespace forwards IPv4 (a new namespace takes the
            // host's setting), else sockets.
            tunnel: qnetd::tunnel::Mode::Auto,
            etcd: None,
            rings: dir.join("rings"),
        })
        .expect("starting qnetd");
        qnetd::api::serve(daemon, &path).expect("serving qnetd's API");
    });
    let end = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < end, "qnetd did not come up in {netns}");
        std::thread::sleep(Duration::from_millis(20));
    }
    socket
}

/// Calls the API of a qnetd at `socket`, failing the test unless it answers 2xx.
pub fn qnetd_call(socket: &Path, method: &str, path: &str, body: &str) -> String {
    let method = qnetd::api::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let body: Option<serde_json::Value> =
        (!body.is_empty()).then(|| serde_json::from_str(body).expect("a JSON body"));
    let (status, text) =
        qnetd::api::call(socket, method, path, body.as_ref()).expect("calling qnetd");
    assert!((200..300).contains(&status), "{path}: {status} {text}");
    text
}
