//! The runtimes the harness compares and how each runs a container: the same root (Debian's
//! iperf3 and nginx with their libraries, the static `netserve`, busybox) from the same OCI
//! bundle, in a network namespace joined by a veth pair to a peer namespace where the clients
//! run. Native is the program chrooted into that namespace (what runc gives, without runc).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use quark_tests::Netns;

/// Address of the container's end of the veth pair, and of the peer (client) end.
pub const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// Ports of the servers in the scenario container.
pub const IPERF_PORT: u16 = 5201;
pub const HTTP_PORT: u16 = 80;
pub const NETSERVE_PORT: u16 = 7001;
/// qhttp's port in front of the container's nginx (Quark only).
pub const QHTTP_PORT: u16 = 8080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Native,
    Runc,
    Quark,
    /// Quark with syscall-site patching off (every call through the `syscall` instruction).
    QuarkNoPatch,
    /// runsc with its own network stack (netstack) on the namespace's interface.
    Gvisor,
    /// runsc with `--network=host`: the sandbox's sockets are the host kernel's, in the
    /// container's namespace.
    GvisorHost,
}

impl Runtime {
    pub const ALL: [Runtime; 6] = [
        Runtime::Native,
        Runtime::Runc,
        Runtime::Quark,
        Runtime::QuarkNoPatch,
        Runtime::Gvisor,
        Runtime::GvisorHost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Native => "native",
            Runtime::Runc => "runc",
            Runtime::Quark => "quark",
            Runtime::QuarkNoPatch => "quark-nopatch",
            Runtime::Gvisor => "gvisor",
            Runtime::GvisorHost => "gvisor-host",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Runtime> {
        Runtime::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .with_context(|| {
                format!(
                    "unknown runtime {name:?} (native, runc, quark, quark-nopatch, gvisor, \
                     gvisor-host)"
                )
            })
    }

    /// The binary that drives this runtime's lifecycle (create, kill, delete), if any.
    fn binary(self) -> Option<PathBuf> {
        match self {
            Runtime::Native => None,
            Runtime::Runc => Some("runc".into()),
            Runtime::Quark | Runtime::QuarkNoPatch => Some(crate::runtime::qvisor()),
            Runtime::Gvisor | Runtime::GvisorHost => Some("runsc".into()),
        }
    }

    /// Quark, with or without syscall-site patching.
    pub fn is_quark(self) -> bool {
        matches!(self, Runtime::Quark | Runtime::QuarkNoPatch)
    }
}

/// What every runtime's notes say about how it was run.
pub const NOTES: &[&str] = &[
    "native: the program chrooted into a network namespace with a veth to the client's \
     namespace (the kernel path runc gives, without runc)",
    "runc: Debian's runc, `runc run` of the bundle, the pod namespace given in config.json",
    "quark: `qvisor run` of the same bundle; qnet takes the namespace's interface over",
    "quark-nopatch: the same with the bundle annotation dev.quark.syscall-patching=off (every \
     syscall through the `syscall` instruction and the polled stub)",
    "gvisor: Debian's runsc (ptrace platform) with its netstack on the namespace's interface; \
     this runsc predates the fix for kernels that show net sysctls in every namespace, so it is \
     run in a mount namespace that hides /proc/sys/net (its root-namespace check reads it)",
    "gvisor-host: the same runsc with --network=host, inside the container's namespace",
    "memory (PSS) counts every process the runtime's `run` command keeps for the container, \
     `run` itself included",
];

/// A root holding the servers, built once from this host's Debian packages.
pub struct Root {
    pub dir: PathBuf,
}

/// nginx in the container: one worker (Quark has one vCPU), files from /var/www.
const NGINX_CONF: &str = "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
error_log /dev/stderr warn;\npid /tmp/nginx.pid;\n\
events { worker_connections 1024; }\n\
http {\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path /tmp;\n  \
proxy_temp_path /tmp;\n  fastcgi_temp_path /tmp;\n  uwsgi_temp_path /tmp;\n  scgi_temp_path /tmp;\n  \
server {\n    listen 80 backlog=1024;\n    root /var/www;\n  }\n}\n";

impl Root {
    /// Builds the root under `dir` with scripts/debian-rootfs.sh, netserve and nginx's files.
    pub fn build(dir: &Path) -> anyhow::Result<Root> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-rootfs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .args(["/usr/bin/iperf3", "/usr/sbin/nginx"])
            .output()
            .context("running debian-rootfs.sh")?;
        if !out.status.success() {
            bail!(
                "debian-rootfs.sh (install iperf3 nginx-light busybox-static): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        crate::runtime::build_guest("netserve", &dir.join("bin"))?;
        for d in [
            "etc/nginx",
            "var/www",
            "var/log/nginx",
            "var/lib/nginx",
            "tmp",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::write(dir.join("etc/nginx/nginx.conf"), NGINX_CONF)?;
        std::fs::write(dir.join("var/www/1k"), vec![b'a'; 1024])?;
        std::fs::write(dir.join("var/www/100k"), vec![b'b'; 100 * 1024])?;
        Ok(Root { dir: dir.into() })
    }

    /// A copy of the root for one container, so no two share a writable file (nginx's pid).
    pub fn copy_to(&self, dir: &Path) -> anyhow::Result<Root> {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let out = Command::new("cp")
            .arg("-a")
            .arg(&self.dir)
            .arg(dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "copying the root to {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Root { dir: dir.into() })
    }
}

/// Docker's default capabilities: what nginx's master needs to drop its workers' privileges.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A bundle directory: config.json from `runc spec`, the process and namespaces set.
pub struct Bundle {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub args: Vec<String>,
    /// The network namespace (a name under /run/netns), or a fresh one when None.
    pub netns: Option<String>,
}

impl Bundle {
    pub fn write(
        dir: &Path,
        root: &Path,
        args: &[&str],
        netns: Option<&str>,
        runtime: Runtime,
    ) -> anyhow::Result<Bundle> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.json");
        let _ = std::fs::remove_file(&config);
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(dir)
            .output()
            .context("running runc spec (install runc)")?;
        if !out.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
        spec["root"]["path"] = root.to_string_lossy().into_owned().into();
        spec["root"]["readonly"] = false.into();
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
        for set in ["bounding", "effective", "permitted"] {
            spec["process"]["capabilities"][set] = CAPABILITIES.iter().copied().collect();
        }
        let namespaces = spec["linux"]["namespaces"]
            .as_array_mut()
            .context("runc spec without linux.namespaces")?;
        // gVisor's host network mode is the namespace runsc runs in, not one from the spec.
        namespaces.retain(|n| n["type"] != "network" || runtime != Runtime::GvisorHost);
        if let (Some(ns), true) = (netns, runtime != Runtime::GvisorHost) {
            for n in namespaces.iter_mut() {
                if n["type"] == "network" {
                    n["path"] = format!("/run/netns/{ns}").into();
                }
            }
        }
        if runtime.is_quark() {
            // qhttp in front of the container's nginx (docs/qhttp.md).
            spec["annotations"]["dev.quark.qhttp.routes"] =
                format!("{QHTTP_PORT}:/={HTTP_PORT}").into();
        }
        if runtime == Runtime::QuarkNoPatch {
            spec["annotations"][crate::runtime::PATCHING_ANNOTATION] = "off".into();
        }
        std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
        Ok(Bundle {
            dir: dir.into(),
            root: root.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            netns: netns.map(Into::into),
        })
    }
}

/// A running container (or native process group).
pub struct Container {
    pub runtime: Runtime,
    pub id: String,
    child: Child,
    state: PathBuf,
    log: PathBuf,
}

/// Native's container: `sh -c NATIVE_MOUNTS sh ROOT ARGS...`.
const NATIVE_MOUNTS: &str = "mount --make-rslave / && mount --rbind /dev \"$1/dev\" && \
     mount -t proc proc \"$1/proc\" && root=$1 && shift && exec chroot \"$root\" \"$@\"";

/// `runsc run` of a bundle (gVisor, its netstack), in a mount namespace that hides
/// /proc/sys/net from this runsc's root-namespace check (see [`NOTES`]).
pub(crate) fn runsc_run(state: &Path, bundle: &Path, id: &str) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-m", "sh", "-c"])
        .arg("mount --make-rprivate / && mount -t tmpfs none /proc/sys/net && exec runsc \"$@\"");
    c.arg("runsc").arg("--root").arg(state);
    c.args(["run", "--bundle"]).arg(bundle).arg(id);
    c
}

/// The command that runs the bundle's process in the foreground under `runtime`.
fn run_command(runtime: Runtime, bundle: &Bundle, id: &str, state: &Path) -> Command {
    let mut c;
    match runtime {
        Runtime::Native => {
            // A mount namespace of its own (ip netns exec makes one) with the host's /dev and a
            // /proc in the root, as a container has them; then chroot.
            c = match &bundle.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]);
                    c
                }
                None => {
                    let mut c = Command::new("unshare");
                    c.arg("-m");
                    c
                }
            };
            c.args(["sh", "-c", NATIVE_MOUNTS, "sh"]);
            c.arg(&bundle.root).args(&bundle.args);
        }
        Runtime::Runc | Runtime::Quark | Runtime::QuarkNoPatch => {
            c = Command::new(runtime.binary().unwrap_or_default());
            c.arg("--root").arg(state).args(["run", "--bundle"]);
            c.arg(&bundle.dir).arg(id);
        }
        Runtime::Gvisor => {
            c = runsc_run(state, &bundle.dir, id);
        }
        Runtime::GvisorHost => {
            c = match &bundle.netns {
                Some(ns) => {
                    let mut c = Command::new("nsenter");
                    c.arg(format!("--net=/run/netns/{ns}")).arg("runsc");
                    c
                }
                None => Command::new("runsc"),
            };
            c.arg("--root").arg(state);
            c.args(["--network=host", "run", "--bundle"])
                .arg(&bundle.dir)
                .arg(id);
        }
    }
    c
}

impl Container {
    /// Starts the bundle's process under `runtime`; it keeps running until [`Container::stop`].
    pub fn start(runtime: Runtime, bundle: &Bundle, id: &str) -> anyhow::Result<Container> {
        let state = bundle.dir.join(format!("state-{id}"));
        std::fs::create_dir_all(&state)?;
        let log = bundle.dir.join(format!("{id}.log"));
        let out = File::create(&log)?;
        let child = run_command(runtime, bundle, id, &state)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: native's servers are killed as one.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", runtime.name()))?;
        Ok(Container {
            runtime,
            id: id.into(),
            child,
            state,
            log,
        })
    }

    /// Runs the bundle's process under `runtime` to its end; the wall time, start to exit.
    pub fn run_to_end(runtime: Runtime, bundle: &Bundle, id: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut c = Container::start(runtime, bundle, id)?;
        let status = c.child.wait()?;
        let took = start.elapsed();
        if !status.success() {
            let log = c.log_text();
            c.stop();
            bail!("{} run: {status}: {log}", runtime.name());
        }
        c.stop();
        Ok(took)
    }

    /// Whether the container's command still runs; its log when it has ended.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("exited ({status}): {}", self.log_text()),
        }
    }

    /// The pid of the command that runs the container (the root of its process tree).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the runtime printed so far (for errors).
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits until every port accepts a TCP connection from the peer namespace; fails early
    /// when the container exits.
    pub fn wait_ready(&mut self, peer: &Netns, ports: &[u16]) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        for &port in ports {
            let addr = SocketAddr::from((CONTAINER_IP, port));
            loop {
                let up = peer.enter(|| {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                });
                if up {
                    break;
                }
                if let Some(status) = self.child.try_wait()? {
                    bail!("exited ({status}) before serving: {}", self.log_text());
                }
                if Instant::now() >= end {
                    bail!("port {port} not served after 30 s: {}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Kills the container and removes what the runtime kept of it.
    pub fn stop(mut self) {
        match self.runtime.binary() {
            None => {
                // SAFETY: kill(2) of the process group this container's command leads.
                unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            }
            Some(bin) => {
                let _ = Command::new(&bin)
                    .arg("--root")
                    .arg(&self.state)
                    .args(["kill", &self.id, "KILL"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let end = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever of the group is left goes.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        if let Some(bin) = self.runtime.binary() {
            let _ = Command::new(&bin)
                .arg("--root")
                .arg(&self.state)
                .args(["delete", "--force", &self.id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// PSS in KiB of a process and all its descendants.
pub fn tree_pss_kib(root: u32) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for pid in process_tree(root)? {
        // A process may exit between listing and reading; it then holds no memory.
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            total += text
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// A process and all its descendants.
pub fn process_tree(root: u32) -> anyhow::Result<Vec<u32>> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the command name (which may hold spaces).
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    Ok(tree)
}
