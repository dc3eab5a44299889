//! Debian's dynamically linked programs, unmodified, from a root that
//! `scripts/debian-rootfs.sh` assembles with their shared-library closure: the kernel loads
//! ld-linux-x86-64.so.2, which maps the libraries with file-backed mmap.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// A root with coreutils' ls/true/false/cat and iperf3, built once per test run.
fn debian_root() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qvisor-debian-root-{}", std::process::id()));
        let o = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-rootfs.sh"))
            .arg(&dir)
            .args([
                "/usr/bin/ls",
                "/usr/bin/true",
                "/usr/bin/false",
                "/usr/bin/cat",
                "/usr/bin/iperf3",
            ])
            .output()
            .expect("running debian-rootfs.sh");
        assert!(o.status.success(), "debian-rootfs.sh: {}", stderr(&o));
        dir
    })
}

fn launch(args: &[&str]) -> std::process::Output {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(debian_root())
        .args(args)
        .output()
        .expect("running qvisor")
}

#[test]
fn dynamically_linked_coreutils_run() {
    let o = launch(&["/usr/bin/true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = launch(&["/usr/bin/false"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = launch(&["/usr/bin/ls", "-la", "/lib/x86_64-linux-gnu"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("libc.so.6"), "{}", stdout(&o));
    assert_eq!(stderr(&o), "");
    // The shell (static busybox) runs dynamic programs too, through fork and exec.
    let o = launch(&[
        "/bin/sh",
        "-c",
        "/usr/bin/cat /etc/group | /usr/bin/cat; /usr/bin/false || echo failed",
    ]);
    assert_eq!(
        stdout(&o),
        "root:x:0:\nnogroup:x:65534:\nfailed\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_missing_interpreter_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("qvisor-nointerp-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/usr/bin/true", dir.join("bin/true")).unwrap();
    require_kvm();
    let o = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(&dir)
        .arg("/bin/true")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("needs its interpreter /lib64/ld-linux-x86-64.so.2"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn debian_iperf3_serves_the_hosts_iperf3_client() {
    let ns = Netns::new("iperf");
    let mut server = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(debian_root())
        .args(net_options(&ns))
        .args(["/usr/bin/iperf3", "-s", "-1", "--forceflush"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Whatever happens, the server does not outlive a minute.
    let pid = server.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(60));
        // SAFETY: kill(2) of the server this test started (harmless if it is gone).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    // qnet's listener is not the kernel's (ss cannot see it): wait for iperf3 to say so.
    let out = server.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(out));
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("Server listening on 5201"))),
        "iperf3 did not start listening"
    );
    let client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "iperf3",
            "-c",
            "10.66.0.2",
            "-t",
            "3",
            "-J",
        ])
        .output()
        .unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let server_out = server.wait_with_output().unwrap();
    assert_eq!(client.status.code(), Some(0), "{}", stdout(&client));
    assert_eq!(
        server_out.status.code(),
        Some(0),
        "{}{}",
        rest.join("\n"),
        stderr(&server_out)
    );
    let report: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap();
    assert!(bps > 1e6, "{bps} bit/s");
    eprintln!("iperf3 into the guest: {:.2} Gbit/s", bps / 1e9);
}

/// nginx's configuration for the guest: a master and two workers in the foreground (the
/// workers drop to `nobody`, their channels are socket pairs), files from /var/www sent with
/// sendfile and TCP_CORK as Debian's and the nginx image's configurations do, on IPv4 and
/// `[::]` as Debian's default site listens (an IPv6-only socket: see docs/qvisor.md).
const NGINX_CONF: &str = "daemon off;\nmaster_process on;\nworker_processes 2;\n\
error_log /dev/stderr notice;\npid /tmp/nginx.pid;\nevents { worker_connections 256; }\n\
http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n\
  client_body_temp_path /tmp/body;\n  proxy_temp_path /tmp/proxy;\n\
  fastcgi_temp_path /tmp/fastcgi;\n  uwsgi_temp_path /tmp/uwsgi;\n  scgi_temp_path /tmp/scgi;\n\
  server { listen 8080; listen [::]:8080; root /var/www; }\n}\n";

#[test]
fn debian_nginx_master_and_workers_serve_wrk_for_30_s_without_errors() {
    let dir = std::env::temp_dir().join(format!("qvisor-nginx-root-{}", std::process::id()));
    let o = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-rootfs.sh"))
        .arg(&dir)
        .arg("/usr/sbin/nginx")
        .output()
        .expect("running debian-rootfs.sh");
    assert!(
        o.status.success(),
        "debian-rootfs.sh (install nginx-light): {}",
        stderr(&o)
    );
    for d in ["etc/nginx", "var/www", "var/log/nginx", "var/lib/nginx"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/nginx/nginx.conf"), NGINX_CONF).unwrap();
    std::fs::write(
        dir.join("var/www/index.html"),
        "hello from nginx in Quark\n",
    )
    .unwrap();
    // A file larger than a socket's ring, sent with sendfile in several calls.
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + (i >> 12)) as u8)
        .collect();
    std::fs::write(dir.join("var/www/big.bin"), &big).unwrap();
    let ns = Netns::new("nginx");
    require_kvm();
    let server = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(&dir)
        .args(net_options(&ns))
        .args(["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let in_ns = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .args(args)
            .output()
            .unwrap()
    };
    // qnet's listener is invisible to ss: ask until nginx answers.
    let mut body = String::new();
    for _ in 0..100 {
        let o = in_ns(&["curl", "-s", "-m", "2", "http://10.66.0.2:8080/"]);
        if o.status.success() {
            body = stdout(&o);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let fetched = in_ns(&["curl", "-s", "-m", "20", "http://10.66.0.2:8080/big.bin"]);
    let wrk = in_ns(&[
        "wrk",
        "-t1",
        "-c4",
        "-d30s",
        // A request answered late is not an error here: with the test suite's other VMs on
        // the same two cores the tail reaches seconds (a performance matter, measured apart);
        // connection, read and write errors and non-2xx answers still fail the test.
        "--timeout",
        "10s",
        "http://10.66.0.2:8080/index.html",
    ]);
    // SAFETY: kill(2) of the server this test started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let out = server.wait_with_output().unwrap();
    let log = stderr(&out);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(body, "hello from nginx in Quark\n", "{log}");
    assert!(
        fetched.stdout == big,
        "big.bin came back as {} bytes: {log}",
        fetched.stdout.len()
    );
    for worker in ["start worker process 2", "start worker process 3"] {
        assert!(log.contains(worker), "{log}");
    }
    assert!(
        !log.contains("[alert]") && !log.contains("[emerg]"),
        "{log}"
    );
    let report = stdout(&wrk);
    assert!(wrk.status.success(), "{report}{}", stderr(&wrk));
    assert!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "{report}"
    );
    // A functional check: many requests answered on kept-alive connections. How many per
    // second is netbench's business (the project measures speed by benchmarks, not tests):
    // with the suite's other VMs on the two cores it fell to 43 requests/s once (one
    // process, 3 s runs).
    let served: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(served >= 200, "{report}");
    eprintln!("nginx in the guest: {served} requests in 30 s");
}

#[test]
fn debian_python3_runs_threads_sockets_and_a_child_like_linux() {
    // Debian's python3 with its standard library, running a script of threads (an echo
    // server thread per connection and four client threads), subprocess, concurrent sleeps,
    // a thread pool and SQLite shared by two processes (its file locks). Its output must
    // match the host's python3 running the same script.
    let dir = std::env::temp_dir().join(format!("qvisor-python-root-{}", std::process::id()));
    let o = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-rootfs.sh"))
        .arg(&dir)
        .args(["/usr/bin/python3.11", "/usr/lib/python3.11"])
        .output()
        .expect("running debian-rootfs.sh");
    assert!(
        o.status.success(),
        "debian-rootfs.sh (install python3): {}",
        stderr(&o)
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/threads_and_sockets.py");
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::copy(&script, dir.join("app/script.py")).unwrap();
    let host = Command::new("/usr/bin/python3.11")
        .arg(&script)
        .output()
        .unwrap();
    assert!(host.status.success(), "{}", stderr(&host));
    require_kvm();
    let guest = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--rootfs"])
        .arg(&dir)
        .args(["/usr/bin/python3.11", "/app/script.py"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(guest.status.code(), Some(0), "{}", stderr(&guest));
    assert_eq!(stdout(&guest), stdout(&host), "{}", stderr(&guest));
    assert!(stdout(&guest).contains("echo: ['HELLO 0', 'HELLO 1', 'HELLO 2', 'HELLO 3']"));
}
