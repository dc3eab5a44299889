//! containerd drives qvisor as it drives runc: Debian's containerd, started by the test with
//! state of its own, its runc shim (io.containerd.runc.v2) calling qvisor through
//! `--runc-binary`. Every step runs with runc first and then qvisor, side by side.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{require_kvm, stderr, stdout, unique_id};

const QVISOR: &str = env!("CARGO_BIN_EXE_qvisor");
const IMAGE: &str = quark_tests::containerd::BUSYBOX_IMAGE;

/// The shared harness, with test-style helpers that fail the test on error.
struct Containerd(quark_tests::containerd::Containerd);

impl Containerd {
    fn start() -> Containerd {
        require_kvm();
        let c = quark_tests::containerd::Containerd::start("qv").expect("starting containerd");
        c.import_busybox().expect("importing the busybox image");
        Containerd(c)
    }

    fn command(&self, args: &[&str]) -> Command {
        self.0.command(args)
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.0.ctr(args).unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.0.ok(args).unwrap()
    }

    /// The task's status as `ctr task ls` prints it.
    fn task_status(&self, id: &str) -> String {
        self.ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_string()
    }

    fn wait_task(&self, id: &str, want: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.task_status(id) != want {
            assert!(
                Instant::now() < end,
                "task {id} is {}, not {want}",
                self.task_status(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn runtime_args(c: &Containerd, runtime: &str) -> Vec<String> {
    c.0.runtime_args((runtime == "qvisor").then_some(Path::new(QVISOR)))
}

fn with<'a>(head: &[&'a str], runtime: &'a [String], tail: &[&'a str]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend(runtime.iter().map(String::as_str));
    v.extend_from_slice(tail);
    v
}

#[test]
fn containerd_runs_busybox_through_qvisor_as_through_runc() {
    let c = Containerd::start();
    let mut walls = Vec::new();
    for runtime in ["runc", "qvisor"] {
        let rt = runtime_args(&c, runtime);
        // ctr run --rm: create, start, wait, delete.
        let id = unique_id(&format!("echo-{runtime}"));
        let started = Instant::now();
        let out = c.ok(&with(&["run", "--rm"], &rt, &[IMAGE, &id, "echo", "hi"]));
        walls.push((runtime, started.elapsed()));
        assert_eq!(out, "hi\n", "{runtime}");
        let out = c.ok(&with(&["run", "--rm"], &rt, &[IMAGE, &id, "uname", "-r"]));
        if runtime == "qvisor" {
            assert!(out.contains("quark"), "not in a Quark VM: {out}");
        }

        // ctr run -d, then the task commands.
        let id = unique_id(&format!("bg-{runtime}"));
        c.ok(&with(&["run", "-d"], &rt, &[IMAGE, &id, "sleep", "60"]));
        assert_eq!(c.task_status(&id), "RUNNING", "{runtime}");
        let ps = c.ok(&["task", "ps", &id]);
        assert!(ps.lines().count() >= 2, "{runtime}: task ps {ps}");
        c.ok(&["task", "pause", &id]);
        c.wait_task(&id, "PAUSED");
        c.ok(&["task", "resume", &id]);
        c.wait_task(&id, "RUNNING");
        // exec: the shim runs `exec --process F --detach --pid-file P` and waits on that pid.
        let exec = c.ctr(&["task", "exec", "--exec-id", "e1", &id, "echo", "exec-ok"]);
        assert_eq!(stdout(&exec), "exec-ok\n", "{runtime}: {}", stderr(&exec));
        let exec = c.ctr(&["task", "exec", "--exec-id", "e2", &id, "sh", "-c", "exit 3"]);
        assert_eq!(exec.status.code(), Some(3), "{runtime}: {}", stderr(&exec));
        assert_eq!(c.task_status(&id), "RUNNING", "{runtime}");
        // SIGKILL: runc's container init ignores a SIGTERM it has no handler for.
        c.ok(&["task", "kill", "--signal", "KILL", &id]);
        c.wait_task(&id, "STOPPED");
        let del = c.ctr(&["task", "delete", &id]);
        assert!(del.status.success(), "{}", stderr(&del));
        assert!(
            stderr(&del).contains("exit code 137"),
            "{runtime}: SIGKILL's status: {}",
            stderr(&del)
        );
        c.ok(&["container", "delete", &id]);
    }
    eprintln!("ctr run --rm busybox echo hi: {walls:?} (one run each; netbench measures)");
}

/// `/etc/cni/net.d` and `/opt/cni/bin` (where ctr looks, fixed) with a conflist of the
/// test's own: Debian's bridge plugin, then qnet-cni chained. Removed on drop.
struct CniSetup {
    made: Vec<PathBuf>,
    bridge: String,
    ipam_dir: PathBuf,
}

impl CniSetup {
    fn install(dir: &Path) -> CniSetup {
        let conf_dir = Path::new("/etc/cni/net.d");
        if let Ok(entries) = std::fs::read_dir(conf_dir) {
            let others: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
            assert!(
                others.is_empty(),
                "/etc/cni/net.d holds {others:?}: this test needs it empty (ctr loads the first)"
            );
        }
        let qnet_cni = Path::new(QVISOR).with_file_name("qnet-cni");
        assert!(
            qnet_cni.exists(),
            "{} is missing: build the workspace (cargo build --workspace)",
            qnet_cni.display()
        );
        let mut made = Vec::new();
        std::fs::create_dir_all(conf_dir).unwrap();
        std::fs::create_dir_all("/opt/cni/bin").unwrap();
        let bridge = format!("qtb{}", std::process::id() % 100_000);
        let ipam_dir = dir.join("ipam");
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "quark-ctr-test",
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": "10.79.0.0/24" }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": ipam_dir,
                    }
                },
                { "type": "qnet-cni", "mode": "chained" }
            ]
        });
        let conf_file = conf_dir.join("10-quark-test.conflist");
        std::fs::write(&conf_file, conf.to_string()).unwrap();
        made.push(conf_file);
        for (name, target) in [
            ("bridge", PathBuf::from("/usr/lib/cni/bridge")),
            ("host-local", PathBuf::from("/usr/lib/cni/host-local")),
            ("loopback", PathBuf::from("/usr/lib/cni/loopback")),
            ("qnet-cni", qnet_cni),
        ] {
            let link = Path::new("/opt/cni/bin").join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(&target, &link).unwrap();
                made.push(link);
            }
        }
        CniSetup {
            made,
            bridge,
            ipam_dir,
        }
    }

    /// The address host-local gave container `id`, once it has.
    fn address_of(&self, id: &str) -> String {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let dir = self.ipam_dir.join("quark-ctr-test");
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                if text.contains(id) {
                    return e.file_name().to_string_lossy().to_string();
                }
            }
            assert!(Instant::now() < end, "no address allocated for {id}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CniSetup {
    fn drop(&mut self) {
        for p in &self.made {
            let _ = std::fs::remove_file(p);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

#[test]
fn ctr_run_cni_gives_the_container_a_reachable_address() {
    let c = Containerd::start();
    let cni = CniSetup::install(&c.0.dir);
    // runc first, as the reference; qnet-cni's chained mode checks what bridge made for both.
    for runtime in ["runc", "qvisor"] {
        cni_round_trip(&c, &cni, runtime);
    }
}

/// `ctr run --cni --rm` of nc in `runtime`: the host connects to the address CNI gave, both
/// ends talk, and --rm's CNI DEL frees the address.
fn cni_round_trip(c: &Containerd, cni: &CniSetup, runtime: &str) {
    let id = unique_id(&format!("cni-{runtime}"));
    let rt = runtime_args(c, runtime);
    // The guest's nc answers its client with its stdin and prints what the client sent.
    let mut run = c
        .command(&with(
            &["run", "--cni", "--rm"],
            &rt,
            &[IMAGE, &id, "nc", "-l", "-p", "8080"],
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    run.stdin
        .take()
        .unwrap()
        .write_all(b"from-guest\n")
        .unwrap();
    let ip = cni.address_of(&id);
    assert!(ip.starts_with("10.79.0."), "{ip}");
    // CNI is done once the task runs; only then does the bridge route the address (before,
    // a connection would leave the host by its default route).
    c.wait_task(&id, "RUNNING");
    let route = Command::new("ip")
        .args(["route", "get", &ip])
        .output()
        .unwrap();
    assert!(
        stdout(&route).contains(&format!("dev {} ", cni.bridge)),
        "{ip} is not routed to the test's bridge: {}",
        stdout(&route)
    );
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
    let end = Instant::now() + Duration::from_secs(15);
    let mut conn = loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < end,
                    "connecting to the {runtime} container at {addr}: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"from-host\n").unwrap();
    let mut got = [0u8; 11];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from-guest\n");
    drop(conn);
    let o = run.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "from-host\n", "{runtime}: {}", stderr(&o));
    // --rm ran CNI DEL: the address is free again.
    let ipam = cni.ipam_dir.join("quark-ctr-test").join(&ip);
    let end = Instant::now() + Duration::from_secs(5);
    while ipam.exists() {
        assert!(Instant::now() < end, "{} still allocated", ipam.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
