//! Helpers shared by the qvisor integration tests: the test root file system, running
//! qvisor, OCI bundles and network namespaces.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

pub fn require_kvm() {
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "these tests need read-write /dev/kvm (run as root on a KVM host)"
    );
}

/// A root file system shared by the tests: Debian's busybox with its applet links, the
/// project's C guests, and a few data files. Built once per test run.
pub fn root() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("qvisor-root-{}", std::process::id()));
        // A run that died before its clean-up may have left one under this (reused) pid.
        let _ = std::fs::remove_dir_all(&root);
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        assert!(
            Path::new("/bin/busybox").exists(),
            "Debian's busybox-static is needed (scripts/setup.sh)"
        );
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        std::fs::copy("/usr/bin/tini-static", bin.join("tini"))
            .expect("Debian's tini is needed (scripts/setup.sh)");
        std::fs::copy("/usr/bin/catatonit", bin.join("catatonit"))
            .expect("Debian's catatonit is needed (scripts/setup.sh)");
        for applet in [
            "sh",
            "echo",
            "cat",
            "ls",
            "wc",
            "sha256sum",
            "date",
            "true",
            "head",
            "pwd",
            "sleep",
            "wget",
            "seq",
            "sort",
            "find",
            "false",
            "yes",
            "kill",
            "tr",
            "expr",
            "free",
            "grep",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
        let build = |cc: &str, flags: &[&str], name: &str, src_name: &str| {
            let out = Command::new(cc)
                .args(flags)
                .arg("-o")
                .arg(bin.join(name))
                .arg(src.join(format!("{src_name}.c")))
                .output()
                .unwrap_or_else(|e| {
                    panic!("{cc} is needed to build the test guests (scripts/setup.sh): {e}")
                });
            assert!(
                out.status.success(),
                "{cc} {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for (name, src_name, flag) in [
            ("syscost", "../../../netbench/guests/syscost", "-static"),
            ("exitcode", "exitcode", "-static"),
            ("exitcode-pie", "exitcode", "-static-pie"),
            ("faults", "faults", "-static"),
            ("syscalls", "syscalls", "-static"),
            ("tcp", "tcp", "-static"),
            ("epoll", "epoll", "-static"),
            ("select", "select", "-static"),
            ("sockio", "sockio", "-static"),
            ("sigpipe", "sigpipe", "-static"),
            ("sendfile", "sendfile", "-static"),
            ("sockopts", "sockopts", "-static"),
            ("signalfd", "signalfd", "-static"),
            ("locks", "locks", "-static"),
            ("links", "links", "-static"),
            ("memfd", "memfd", "-static"),
            ("rlimits", "rlimits", "-static"),
            ("hostile", "hostile", "-static"),
            ("udp", "udp", "-static"),
            ("threads", "threads", "-static"),
            ("memhog", "memhog", "-static"),
            ("shared", "shared", "-static"),
            ("robust", "robust", "-static"),
            ("dgram", "dgram", "-static"),
            ("mapfile", "mapfile", "-static"),
            ("unixdgram", "unixdgram", "-static"),
            ("cputime", "cputime", "-static"),
            ("timers", "timers", "-static"),
            ("sigmask", "sigmask", "-static"),
            ("timerfd", "timerfd", "-static"),
            ("sigwait", "sigwait", "-static"),
            ("pipehog", "pipehog", "-static"),
            ("ipv6", "ipv6", "-static"),
            ("vdso", "vdso", "-static"),
            ("fastread", "fastread", "-static"),
            ("ringpeek", "ringpeek", "-static"),
            // Dynamically linked: the shared libc's syscall sites are the patchable ones.
            ("patching", "patching", "-pie"),
            ("vdso-dyn", "vdso", "-pie"),
            ("fastread-dyn", "fastread", "-pie"),
        ] {
            build("gcc", &[flag, "-O1", "-pthread"], name, src_name);
        }
        // musl, as in Alpine-based images: its own startup, vDSO lookup and time calls
        // (musl-gcc comes with scripts/setup.sh).
        build("musl-gcc", &["-static", "-O1"], "vdso-musl", "vdso");
        // The C library and loader the dynamically linked guests need, from this Debian host.
        for lib in [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ] {
            let to = root.join(&lib[1..]);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copying {lib}: {e}"));
        }
        std::fs::write(root.join("etc/hostname"), "inside-the-root\n").unwrap();
        // Name resolution as in any image: the TAP peer of the network tests by name, and a
        // DNS server there for everything else (a test runs one).
        std::fs::write(
            root.join("etc/hosts"),
            "127.0.0.1 localhost\n10.66.0.1 peer.test\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/resolv.conf"),
            "nameserver 10.66.0.1\noptions timeout:2 attempts:2\n",
        )
        .unwrap();
        let lines: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(root.join("data/lines.txt"), lines).unwrap();
        // Escape attempts: an absolute symlink to a host file, and a relative one climbing out.
        std::os::unix::fs::symlink("/etc/shadow", root.join("data/abs-escape")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/shadow", root.join("data/rel-escape"))
            .unwrap();
        root
    })
}

pub fn qvisor(args: &[&str]) -> Output {
    qvisor_with(&[], args)
}

/// [`qvisor`] with these environment variables set for the VMM.
pub fn qvisor_env(env: &[(&str, &str)], args: &[&str]) -> Output {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(root())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("running qvisor")
}

pub fn qvisor_with(options: &[&str], args: &[&str]) -> Output {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(root())
        .args(options)
        .args(args)
        .output()
        .expect("running qvisor")
}

/// Runs `program` in the test root: it exits 0 having printed exactly `expected`.
pub fn prints_and_succeeds(program: &str, expected: &str) {
    prints_and_succeeds_with(&[program], expected);
}

/// [`prints_and_succeeds`] for a command line.
pub fn prints_and_succeeds_with(argv: &[&str], expected: &str) {
    let o = qvisor(argv);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(stdout(&o), expected);
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A count qvisor logged at debug level as `name=N` (its "container ended" line: vcpu_exits,
/// taken_back) in `log`.
pub fn logged_count(log: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    log.lines()
        .find_map(|l| l.split(key.as_str()).nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {key} in {log}"))
}

pub fn bundle(tag: &str, args: &[&str], readonly: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qvisor-bundle-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    // The shape `runc spec` writes.
    let config = format!(
        r#"{{
  "ociVersion": "1.0.2-dev",
  "process": {{
    "terminal": false,
    "user": {{ "uid": 0, "gid": 0 }},
    "args": [{}],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
    "cwd": "/data",
    "capabilities": {{ "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"] }},
    "rlimits": [{{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }}],
    "noNewPrivileges": true
  }},
  "root": {{ "path": "{}", "readonly": {readonly} }},
  "hostname": "runc",
  "mounts": [{{ "destination": "/proc", "type": "proc", "source": "proc" }}],
  "linux": {{
    "resources": {{ "memory": {{ "limit": 268435456 }} }},
    "namespaces": [{{ "type": "pid" }}, {{ "type": "network" }}, {{ "type": "ipc" }}, {{ "type": "uts" }}, {{ "type": "mount" }}]
  }}
}}"#,
        args.join(", "),
        root().display()
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    dir
}

/// This test process's state root (`--root`), apart from the host's /run/qvisor.
pub fn state_root() -> PathBuf {
    std::env::temp_dir().join(format!("qvisor-state-{}", std::process::id()))
}

/// A container id unique to this test process.
pub fn unique_id(tag: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

/// `qvisor run` of a bundle (create, start, wait, delete), as `runc run` would.
pub fn run_bundle(dir: &Path) -> Output {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .arg("--root")
        .arg(state_root())
        .args(["run", "--bundle"])
        .arg(dir)
        .arg(unique_id("run"))
        .output()
        .expect("running qvisor")
}

/// A namespace of the test's own, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("qv-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add (run as root)");
        Netns(name)
    }

    pub fn sh(&self, script: &str) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Netns {
    /// Waits until something listens on `port` (`ss` flags pick TCP or UDP).
    pub fn wait_for_port(&self, ss_flags: &str, port: u16) {
        for _ in 0..200 {
            let o = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.0,
                    "ss",
                    ss_flags,
                    &format!("sport = :{port}"),
                ])
                .output()
                .unwrap();
            if !o.stdout.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("nothing listens on port {port} in {}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Starts a networked guest in the background with its stdout and stderr piped.
pub fn spawn_guest(opts: &[String], args: &[&str]) -> std::process::Child {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(root())
        .args(opts)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running qvisor")
}

pub fn net_options(ns: &Netns) -> Vec<String> {
    [
        "--netns",
        &ns.0,
        "--net-addr",
        "10.66.0.2/24",
        "--net-peer",
        "10.66.0.1/24",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The first line a running guest wrote to its (piped) stdout.
pub fn first_line(child: &mut std::process::Child) -> String {
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("the guest's stdout is piped");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)
        .expect("reading the guest's stdout");
    line
}
