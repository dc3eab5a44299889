//! qvisor against real KVM: static programs (project-written, built with `gcc -static`, and
//! Debian's busybox) run in guest user mode with every syscall served by qkernel.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

fn require_kvm() {
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
fn root() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("qvisor-root-{}", std::process::id()));
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        assert!(
            Path::new("/bin/busybox").exists(),
            "Debian's busybox-static is needed (scripts/setup.sh)"
        );
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
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
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
        for (name, src_name, flag) in [
            ("syscost", "../../../netbench/guests/syscost", "-static"),
            ("exitcode", "exitcode", "-static"),
            ("exitcode-pie", "exitcode", "-static-pie"),
            ("faults", "faults", "-static"),
            ("syscalls", "syscalls", "-static"),
            ("tcp", "tcp", "-static"),
            ("epoll", "epoll", "-static"),
            ("udp", "udp", "-static"),
        ] {
            let out = Command::new("gcc")
                .args([flag, "-O1", "-o"])
                .arg(bin.join(name))
                .arg(src.join(format!("{src_name}.c")))
                .output()
                .expect("gcc is needed to build the test guests (scripts/setup.sh)");
            assert!(
                out.status.success(),
                "gcc {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(root.join("etc/hostname"), "inside-the-root\n").unwrap();
        let lines: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(root.join("data/lines.txt"), lines).unwrap();
        // Escape attempts: an absolute symlink to a host file, and a relative one climbing out.
        std::os::unix::fs::symlink("/etc/shadow", root.join("data/abs-escape")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/shadow", root.join("data/rel-escape"))
            .unwrap();
        root
    })
}

fn qvisor(args: &[&str]) -> Output {
    qvisor_with(&[], args)
}

fn qvisor_with(options: &[&str], args: &[&str]) -> Output {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["exec", "--root"])
        .arg(root())
        .args(options)
        .args(args)
        .output()
        .expect("running qvisor")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn a_static_glibc_program_runs_and_its_exit_code_propagates() {
    for exe in ["/bin/exitcode", "/bin/exitcode-pie"] {
        for code in [0, 1, 42] {
            let o = qvisor(&[exe, &code.to_string(), "two words"]);
            assert_eq!(o.status.code(), Some(code), "{exe} stderr: {}", stderr(&o));
            assert_eq!(
                stdout(&o),
                format!("argv[0]={exe}\nargv[1]={code}\nargv[2]=two words\nheap ok 1\n")
            );
        }
    }
}

#[test]
fn guest_faults_kill_the_app_with_linux_signals_and_clear_messages() {
    let exe = "/bin/faults";
    let cases = [
        ("null", 139, "page fault at 0x0"),
        ("kernel", 139, "page fault at 0xffff800000001000"),
        ("ud2", 132, "invalid instruction (ud2)"),
        ("hlt", 139, "general protection fault"),
        ("jump", 139, "page fault at 0x123456789000"),
    ];
    for (mode, status, message) in cases {
        let o = qvisor(&[exe, mode]);
        assert_eq!(o.status.code(), Some(status), "{mode}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("qvisor: container killed by signal") && err.contains(message),
            "{mode}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn busybox_echo_and_shell_run_unmodified() {
    let o = qvisor(&["echo", "hello", "from", "busybox"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello from busybox\n");

    let script = "x=0; for i in 1 2 3 4 5; do x=$((x + i * i)); done; echo sum=$x; \
                  f() { echo in-function $1; }; f arg; [ $x -eq 55 ] && exit 42";
    let o = qvisor(&["sh", "-c", script]);
    assert_eq!(stdout(&o), "sum=55\nin-function arg\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(42));

    let o = qvisor(&["sh", "-c", "exit 1"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn the_app_clock_matches_the_host() {
    let o = qvisor(&["date", "+%s"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let guest: i64 = stdout(&o).trim().parse().expect("date printed seconds");
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((guest - host).abs() <= 1, "guest {guest} host {host}");
}

#[test]
fn a_missing_or_foreign_executable_is_a_clear_error() {
    let o = qvisor(&["/nonexistent/prog"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("\"/nonexistent/prog\" not found"),
        "{}",
        stderr(&o)
    );
    let o = qvisor(&["/etc/hostname"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("not an ELF file"), "{}", stderr(&o));
}

#[test]
fn files_come_from_the_root_cat_ls_wc() {
    let o = qvisor(&["cat", "/etc/hostname"]);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "inside-the-root\n"),
        "{}",
        stderr(&o)
    );
    let o = qvisor(&["wc", "-l", "/data/lines.txt"]);
    assert_eq!(
        stdout(&o).split_whitespace().next(),
        Some("100"),
        "{}",
        stderr(&o)
    );
    let o = qvisor(&["head", "-n", "2", "/data/lines.txt"]);
    assert_eq!(stdout(&o), "line 1\nline 2\n");
    let o = qvisor(&["ls", "-l", "/"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let listing = stdout(&o);
    for name in ["bin", "data", "etc"] {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with('d') && l.ends_with(name)),
            "{listing}"
        );
    }
    // The shell's cd and pwd (builtins: running other programs from a script needs fork, which
    // comes with the process model).
    let o = qvisor(&["sh", "-c", "cd /data/../bin && pwd"]);
    assert_eq!(stdout(&o), "/bin\n", "{}", stderr(&o));
}

#[test]
fn no_path_leaves_the_root() {
    // Host files that exist: /etc/shadow, /etc/hostname (a different one), /proc.
    for path in [
        "/data/abs-escape",
        "/data/rel-escape",
        "/../../../../etc/shadow",
        "../../etc/shadow",
    ] {
        let o = qvisor(&["cat", path]);
        assert_ne!(o.status.code(), Some(0), "{path}: read {:?}", stdout(&o));
        assert!(stdout(&o).is_empty(), "{path}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("No such file"),
            "{path}: {}",
            stderr(&o)
        );
    }
    // ".." at the root stays at the root, as on Linux.
    let o = qvisor(&["cat", "/../../etc/hostname"]);
    assert_eq!(stdout(&o), "inside-the-root\n", "{}", stderr(&o));
}

#[test]
fn sha256sum_of_a_64_mib_file_matches_the_host() {
    let data = root().join("data/big.bin");
    if !data.exists() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let bytes: Vec<u8> = (0..(64 << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        std::fs::write(&data, bytes).unwrap();
    }
    let host = Command::new("sha256sum").arg(&data).output().unwrap();
    let o = qvisor(&["sha256sum", "/data/big.bin"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).split_whitespace().next(),
        String::from_utf8_lossy(&host.stdout)
            .split_whitespace()
            .next()
    );
}

fn bundle(tag: &str, args: &[&str], readonly: bool) -> PathBuf {
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

fn run_bundle(dir: &Path) -> Output {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["run", "--bundle"])
        .arg(dir)
        .arg("test-container")
        .output()
        .expect("running qvisor")
}

#[test]
fn an_oci_bundle_runs_with_its_args_env_cwd_and_exit_code() {
    let b = bundle("ok", &["sh", "-c", "echo $TERM in $PWD; exit 7"], true);
    let o = run_bundle(&b);
    assert_eq!(stdout(&o), "xterm in /data\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(7));
    // A relative path resolves against process.cwd.
    let b = bundle("cwd", &["head", "-n", "1", "lines.txt"], true);
    let o = run_bundle(&b);
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "line 1\n"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_read_only_root_refuses_writes() {
    let b = bundle("ro", &["sh", "-c", "echo x > /data/new-file"], true);
    let o = run_bundle(&b);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert!(!root().join("data/new-file").exists());
}

#[test]
fn tmp_is_private_scratch_space_even_on_a_read_only_root() {
    let script = "echo scratch > /tmp/note && read line < /tmp/note && echo got $line; \
                  cd /tmp/.. && pwd; echo x > /tmp/../escape-attempt";
    let b = bundle("tmp", &["sh", "-c", script], true);
    let o = run_bundle(&b);
    assert!(
        stdout(&o).starts_with("got scratch\n/\n"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    // "/tmp/.." is the root, which is read-only: the write fails instead of landing anywhere.
    assert_ne!(o.status.code(), Some(0));
    assert!(!root().join("tmp").exists() && !root().join("escape-attempt").exists());
}

#[test]
fn a_broken_bundle_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("qvisor-bundle-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let o = run_bundle(&dir);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).starts_with("qvisor: ") && stderr(&o).contains("config.json"),
        "{}",
        stderr(&o)
    );
    let o = run_bundle(Path::new("/nonexistent-bundle"));
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
}

#[test]
fn file_and_process_syscalls_behave_as_on_linux_polled_or_trapped() {
    for mode in ["on", "off"] {
        check_syscalls(mode);
    }
}

fn check_syscalls(mode: &str) {
    let o = qvisor_with(&["--syscall-poll", mode], &["/bin/syscalls"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    let failed: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("ok ") && *l != "writev-ok")
        .collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}\n{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        31,
        "{out}"
    );
}

#[test]
fn a_guest_spinning_forever_is_stopped_by_sigterm() {
    require_kvm();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["exec", "--root"])
        .arg(root())
        .args(["/bin/faults", "spin"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the spinning guest should still run"
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("stopped by the host (signal 15)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn runc_spec_output_runs_unchanged_but_for_args_and_terminal() {
    let dir = std::env::temp_dir().join(format!("qvisor-runc-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("config.json"));
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&dir)
        .output()
        .expect("Debian's runc is needed for this test (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    // runc spec says `"terminal": true`, `"args": ["sh"]` and `"path": "rootfs"`.
    let config = config
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"sh\"", "\"sh\", \"-c\", \"echo from runc spec; exit 5\"");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let _ = std::fs::remove_file(dir.join("rootfs"));
    std::os::unix::fs::symlink(root(), dir.join("rootfs")).unwrap();
    let o = run_bundle(&dir);
    assert_eq!(stdout(&o), "from runc spec\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(5));
}

/// CPU time (user + system) a finished child used, and its exit code.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also returns its resource usage"
)]
fn run_measuring_cpu(options: &[&str], args: &[&str]) -> (Duration, Option<i32>) {
    require_kvm();
    let child = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["exec", "--root"])
        .arg(root())
        .args(options)
        .args(args)
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data filled by wait4 for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child and fills status and usage.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let tv =
        |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (tv(usage.ru_utime) + tv(usage.ru_stime), code)
}

#[test]
fn a_sleeping_container_spins_no_cpu_on_the_polled_path() {
    let (cpu, code) = run_measuring_cpu(&["--syscall-poll", "on"], &["sleep", "1"]);
    assert_eq!(code, Some(0));
    assert!(
        cpu < Duration::from_millis(250),
        "a 1 s sleep cost {cpu:?} of CPU"
    );
}

#[test]
fn polled_syscalls_do_not_exit_the_vcpu() {
    // Counts vCPU exits (qvisor logs them at debug level) rather than timing anything.
    let exits = |mode| {
        require_kvm();
        let o = Command::new(env!("CARGO_BIN_EXE_qvisor"))
            .env("QVISOR_LOG", "qvisor=debug")
            .args(["exec", "--root"])
            .arg(root())
            .args(["--syscall-poll", mode, "/bin/syscost", "3000", "10"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let err = stderr(&o);
        err.lines()
            .find_map(|l| l.split("vcpu_exits=").nth(1))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no vcpu_exits in {err}"))
    };
    let (polled, trapped) = (exits("on"), exits("off"));
    assert!(
        trapped >= 3000,
        "every trapped syscall is an exit: {trapped}"
    );
    assert!(polled < 100, "3000 polled getpids took {polled} exits");
}

/// A namespace of the test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("qv-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add (run as root)");
        Netns(name)
    }

    fn sh(&self, script: &str) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "sh", "-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Netns {
    /// Waits until something listens on `port` (`ss` flags pick TCP or UDP).
    fn wait_for_port(&self, ss_flags: &str, port: u16) {
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
fn spawn_guest(opts: &[String], args: &[&str]) -> std::process::Child {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["exec", "--root"])
        .arg(root())
        .args(opts)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running qvisor")
}

fn net_options(ns: &Netns) -> Vec<String> {
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

#[test]
fn a_guest_tcp_client_reaches_a_kernel_server_through_qnet() {
    let ns = Netns::new("cli");
    // The kernel side: a python server that answers once, started after the TAP exists.
    let server = r#"
import socket, time
for _ in range(100):
    try:
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        l.bind(("10.66.0.1", 7070)); break
    except OSError:
        time.sleep(0.05)
l.listen(1)
c, a = l.accept()
data = b""
while True:
    d = c.recv(100)
    if not d: break
    data += d
c.sendall(b"kernel got: " + data)
c.close()
"#;
    let mut py = ns.sh(&format!("python3 -c '{server}'"));
    let opts = net_options(&ns);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["/bin/tcp", "client", "10.66.0.1", "7070"]);
    // The server binds once the TAP (created by qvisor) has its address: retry the client.
    let mut last = None;
    for _ in 0..20 {
        let o = qvisor_with(&args[..args.len() - 4], &args[args.len() - 4..]);
        if o.status.code() == Some(0) {
            last = Some(o);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        last = Some(o);
    }
    let o = last.unwrap();
    let _ = py.kill();
    let _ = py.wait();
    assert_eq!(
        stdout(&o),
        "reply: kernel got: ping from the guest\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_guest_tcp_server_serves_a_kernel_client_through_qnet() {
    let ns = Netns::new("srv");
    let opts = net_options(&ns);
    let mut child = spawn_guest(&opts, &["/bin/tcp", "server", "8081"]);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "listening\n");
    let client = ns.sh("printf hello-guest | nc -q1 -w5 10.66.0.2 8081");
    let out = client.wait_with_output().unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pong to 10.66.0.1:hello-guest",
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn busybox_wget_in_the_guest_fetches_from_a_kernel_http_server() {
    let ns = Netns::new("wget");
    let www = std::env::temp_dir().join(format!("qvisor-www-{}", std::process::id()));
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "served by the kernel's python\n").unwrap();
    // Bound to any address, so it listens before qvisor creates the TAP and its address.
    let mut server = ns.sh(&format!(
        "exec python3 -m http.server 8000 --bind 0.0.0.0 -d {} 2>/dev/null",
        www.display()
    ));
    ns.wait_for_port("-Hltn", 8000);
    let opts = net_options(&ns);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["wget", "-O", "-", "http://10.66.0.1:8000/index.html"]);
    let o = qvisor(&args);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&www);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "served by the kernel's python\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn poll_reports_socket_readiness_in_the_guest() {
    let ns = Netns::new("poll");
    let opts = net_options(&ns);
    let mut child = spawn_guest(&opts, &["/bin/tcp", "pollserver", "8082"]);
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for expect in ["idle poll: 0\n", "listening\n"] {
        line.clear();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, expect);
    }
    // Connect, wait, then send: the guest sees the connection, then data, through poll.
    let client = ns.sh("(sleep 0.3; printf polled) | nc -q1 -w5 10.66.0.2 8082");
    let reply = client.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        rest,
        "poll before accept: 1 POLLIN\nselect agrees: 1 readable\nwritable: 1 POLLOUT\npoll before read: 1 POLLIN\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout),
        "pong to 10.66.0.1:polled"
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn an_epoll_server_in_the_guest_serves_many_kernel_clients_at_once() {
    let ns = Netns::new("epoll");
    let opts = net_options(&ns);
    let mut child = spawn_guest(&opts, &["/bin/epoll", "8083", "50"]);
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "listening\n");
    // 50 clients connect first, then each sends and reads its own echo.
    let clients = r#"
import socket
socks = [socket.create_connection(("10.66.0.2", 8083), timeout=10) for _ in range(50)]
ok = 0
for i, s in enumerate(socks):
    msg = b"client %d " % i * 20
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += s.recv(65536)
    ok += got == msg
for s in socks:
    s.close()
print(ok)
"#;
    let py = ns.sh(&format!("python3 -c '{clients}'"));
    let res = py.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&res.stdout).trim(),
        "50",
        "{}",
        stderr(&o)
    );
    assert_eq!(rest, "served 50\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn udp_both_ways_between_the_guest_and_the_kernel() {
    let ns = Netns::new("udp");
    let opts = net_options(&ns);
    // Guest echo server, kernel client.
    let mut child = spawn_guest(&opts, &["/bin/udp", "echo", "5300", "3"]);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "bound\n");
    let client = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
ok = 0
for i in range(3):
    msg = b"datagram %d" % i
    s.sendto(msg, ("10.66.0.2", 5300))
    ok += s.recvfrom(100)[0] == msg
print(ok)
"#;
    let out = ns
        .sh(&format!("python3 -c '{client}'"))
        .wait_with_output()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3",
        "{}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Kernel echo server (bound to any address, so it exists before the TAP), guest client.
    let server = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5301))
d, a = s.recvfrom(100)
s.sendto(d.upper(), a)
"#;
    let mut py = ns.sh(&format!("python3 -c '{server}'"));
    ns.wait_for_port("-Hlun", 5301);
    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
    args.extend(["/bin/udp", "ask", "10.66.0.1", "5301"]);
    let o = qvisor(&args);
    let _ = py.wait();
    assert_eq!(
        stdout(&o),
        "QUESTION FROM THE GUEST from 10.66.0.1:5301\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn non_blocking_connect_reports_through_poll_and_so_error() {
    let ns = Netns::new("nbc");
    // A listener on any address for the success case; nothing on port 1 for the refusal.
    let mut server = ns.sh("exec python3 -c 'import socket,time; l=socket.socket(); l.bind((\"0.0.0.0\", 7400)); l.listen(); time.sleep(10)'");
    ns.wait_for_port("-Hltn", 7400);
    let opts = net_options(&ns);
    let run = |port: &str| {
        let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
        args.extend(["/bin/tcp", "nbconnect", "10.66.0.1", port]);
        qvisor(&args)
    };
    let ok = run("7400");
    let refused = run("1");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        stdout(&ok),
        "connect EINPROGRESS, poll 1 POLLOUT, SO_ERROR 0\n",
        "{}",
        stderr(&ok)
    );
    assert_eq!(
        stdout(&refused),
        // Linux too reports a failed connect as writable with an error.
        "connect EINPROGRESS, poll 1 POLLOUT POLLERR/HUP, SO_ERROR Connection refused\n",
        "{}",
        stderr(&refused)
    );
}
