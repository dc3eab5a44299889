//! qvisor against real KVM: static programs (project-written, built with `gcc -static`, and
//! Debian's busybox) run in guest user mode with every syscall served by qkernel.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

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

/// Builds the C guests once per test run.
fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("qvisor-guests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
        for name in ["exitcode", "faults"] {
            let out = Command::new("gcc")
                .args(["-static", "-O1", "-o"])
                .arg(dir.join(name))
                .arg(src.join(format!("{name}.c")))
                .output()
                .expect("gcc is needed to build the test guests (scripts/setup.sh)");
            assert!(
                out.status.success(),
                "gcc {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dir
    })
}

fn qvisor(args: &[&str]) -> Output {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .arg("exec")
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
    let exe = guests().join("exitcode");
    let exe = exe.to_str().unwrap();
    for code in [0, 1, 42] {
        let o = qvisor(&[exe, &code.to_string(), "two words"]);
        assert_eq!(o.status.code(), Some(code), "stderr: {}", stderr(&o));
        assert_eq!(
            stdout(&o),
            format!("argv[0]={exe}\nargv[1]={code}\nargv[2]=two words\nheap ok 1\n")
        );
    }
}

#[test]
fn guest_faults_kill_the_app_with_linux_signals_and_clear_messages() {
    let exe = guests().join("faults");
    let exe = exe.to_str().unwrap();
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

fn busybox() -> &'static str {
    let path = "/bin/busybox";
    assert!(
        Path::new(path).exists(),
        "Debian's busybox-static is needed (scripts/setup.sh)"
    );
    path
}

#[test]
fn busybox_echo_and_shell_run_unmodified() {
    let o = qvisor(&[busybox(), "echo", "hello", "from", "busybox"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello from busybox\n");

    let script = "x=0; for i in 1 2 3 4 5; do x=$((x + i * i)); done; echo sum=$x; \
                  f() { echo in-function $1; }; f arg; [ $x -eq 55 ] && exit 42";
    let o = qvisor(&[busybox(), "sh", "-c", script]);
    assert_eq!(stdout(&o), "sum=55\nin-function arg\n", "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(42));

    let o = qvisor(&[busybox(), "sh", "-c", "exit 1"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn the_app_clock_matches_the_host() {
    let o = qvisor(&[busybox(), "date", "+%s"]);
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
        stderr(&o).contains("reading /nonexistent/prog"),
        "{}",
        stderr(&o)
    );
    let o = qvisor(&["/etc/hostname"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("not an ELF file"), "{}", stderr(&o));
}
