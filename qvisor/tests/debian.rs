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
        "/usr/bin/cat /etc/passwd | /usr/bin/cat; /usr/bin/false || echo failed",
    ]);
    assert_eq!(
        stdout(&o),
        "root:x:0:0:root:/root:/bin/sh\nfailed\n",
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
            "1",
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
