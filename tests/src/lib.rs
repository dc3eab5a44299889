//! Test harness: network namespaces, a qnet stack on a TAP inside one, and kernel peers run with
//! `ip netns exec`. Everything is created per test and removed on drop.
//!
//! Tests need root, /dev/net/tun and the tools `scripts/setup.sh` installs; [`require_env`]
//! fails with a clear message when they are missing (never a silent pass).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use qnet::phy::TapOptions;
use qnet::runner::RunningStack;
use qnet::StackConfig;

/// Fails the test with a clear message unless it runs as root with TAP support and the tools.
pub fn require_env(tools: &[&str]) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "these tests create network namespaces and TAPs: run them as root (scripts/test.sh)"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: load the tun module"
    );
    for t in tools.iter().chain(&["ip"]) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "tool {t:?} not found: run scripts/setup.sh");
    }
}

pub mod containerd;
pub mod cpu;
pub mod hostile;
pub mod overlay;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number no other call in this process gets (for unique names).
pub fn unique_suffix() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh, uniquely named network namespace with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = unique_suffix();
        let name = format!("qt-{tag}-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a shell snippet in the namespace and returns its output (panics on spawn failure).
    pub fn sh(&self, script: &str) -> Output {
        self.cmd("sh")
            .args(["-c", script])
            .output()
            .unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates live there (and
    /// keep working from any thread afterwards).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("opening namespace {}: {e}", self.name));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this scoped thread only, with a valid namespace fd.
                let rc = unsafe {
                    libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET)
                };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }

    /// Joins this namespace to `other` with a veth pair addressed `a` (here) and `b` (there).
    pub fn veth_to(&self, other: &Netns, a: &str, b: &str) {
        let (ia, ib) = ("veth-a", "veth-b");
        run(
            "ip",
            &[
                "-n",
                &self.name,
                "link",
                "add",
                ia,
                "type",
                "veth",
                "peer",
                "name",
                ib,
                "netns",
                &other.name,
            ],
        );
        run("ip", &["-n", &self.name, "addr", "add", a, "dev", ia]);
        run("ip", &["-n", &other.name, "addr", "add", b, "dev", ib]);
        run("ip", &["-n", &self.name, "link", "set", ia, "up"]);
        run("ip", &["-n", &other.name, "link", "set", ib, "up"]);
    }

    /// Runs a python3 script in the namespace to the end; returns its trimmed stdout, with its
    /// stderr appended after a newline when it wrote any (so assertion messages show it).
    pub fn python_output(&self, script: &str, args: &[&str]) -> String {
        let out = self
            .python(script, args)
            .wait_with_output()
            .expect("waiting for python3");
        let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.trim().is_empty() {
            text.push_str("\nstderr: ");
            text.push_str(err.trim());
        }
        text
    }

    /// Starts a python3 script in the namespace.
    pub fn python(&self, script: &str, args: &[&str]) -> Child {
        self.cmd("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning python3")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kernel side of the TAP.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The stack's address.
pub const STACK_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// A qnet stack serving a TAP in its own namespace, running on a thread of the test.
pub struct TestStack {
    // Declared first: stopped before the namespace goes.
    stack: RunningStack,
    pub ns: Netns,
    pub socket: PathBuf,
}

impl TestStack {
    pub fn start(tag: &str) -> TestStack {
        Self::start_with(tag, |_| {})
    }

    pub fn start_with(tag: &str, tune: impl FnOnce(&mut StackConfig)) -> TestStack {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("QNET_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let ns = Netns::new(tag);
        let (stack, socket) = start_stack_in(&ns, tune);
        TestStack { stack, ns, socket }
    }

    pub fn client(&self) -> qnet_client::Client {
        qnet_client::Client::connect(&self.socket).expect("attaching to the stack")
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((STACK_IP, port))
    }

    pub fn peer(&self, port: u16) -> SocketAddr {
        SocketAddr::from((PEER_IP, port))
    }

    /// The stack's counters, fresh: waits for the report after this call (they are published
    /// once every [`qnet::stack::STATS_EVERY`]).
    pub fn fresh_stats(&self) -> qnet::StackStats {
        std::thread::sleep(qnet::stack::STATS_EVERY + std::time::Duration::from_millis(200));
        self.stack.stats()
    }

    /// Stops the stack, failing if its loop ended with an error.
    pub fn stop(self) {
        self.stack.stop().expect("the stack failed");
    }
}

/// Starts a stack at [`STACK_IP`] on a TAP `qtap0` in `ns`, whose kernel side is [`PEER_IP`].
pub fn start_stack_in(ns: &Netns, tune: impl FnOnce(&mut StackConfig)) -> (RunningStack, PathBuf) {
    let mut cfg = StackConfig::new(qnet::Ipv4Cidr {
        addr: STACK_IP,
        prefix: 24,
    });
    tune(&mut cfg);
    let socket = std::env::temp_dir().join(format!("{}.sock", ns.name));
    let tap = TapOptions {
        name: "qtap0".into(),
        netns: Some(ns.name.clone()),
        mtu: cfg.mtu,
        peer_addr: Some(qnet::Ipv4Cidr {
            addr: PEER_IP,
            prefix: 24,
        }),
        offloads: true,
        persist: false,
    };
    let stack = RunningStack::start(cfg, Some(&tap), &socket).expect("starting the stack");
    (stack, socket)
}

/// Deterministic pseudo-random bytes (xorshift), so large transfers need no stored data.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// Writes `bytes` of the pattern seeded with `bytes` to `w` (the caller closes it); their
/// SHA-256.
pub fn send_pattern(w: &mut impl std::io::Write, bytes: usize) -> Vec<u8> {
    use sha2::Digest;
    let mut pattern = Pattern::new(bytes as u64);
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        w.write_all(&buf[..n]).expect("sending");
        left -= n;
    }
    hash.finalize().to_vec()
}

/// Everything `r` gives until its end: how many bytes, and their SHA-256.
pub fn receive_all(r: &mut impl std::io::Read) -> (usize, Vec<u8>) {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).expect("receiving");
        if n == 0 {
            return (total, hash.finalize().to_vec());
        }
        hash.update(&buf[..n]);
        total += n;
    }
}

/// Waits until a TCP port is listening in the namespace (for kernel servers started by a test).
pub fn wait_listening(ns: &Netns, port: u16) {
    wait_bound(ns, "-Hltn", port)
}

/// Waits until a UDP port is bound in the namespace.
pub fn wait_bound_udp(ns: &Netns, port: u16) {
    wait_bound(ns, "-Hlun", port)
}

fn wait_bound(ns: &Netns, ss_flags: &str, port: u16) {
    for _ in 0..200 {
        let out = ns.sh(&format!("ss {ss_flags} 'sport = :{port}'"));
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("nothing listens on port {port} in {}", ns.name);
}
