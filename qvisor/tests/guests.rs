//! qvisor against real KVM: static programs (project-written, built with `gcc -static`, and
//! Debian's busybox) run in guest user mode with every syscall served by qkernel.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

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
        // Past the 8 MiB stack: below it nothing is mapped on a first touch.
        ("overflow", 139, "page fault at 0x7fffff7f"),
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
fn faults_go_to_handlers_on_the_alternate_stack_and_kill_only_their_process() {
    let cases = [
        (
            "recover",
            "recovered: handler on the alternate stack yes, fault below the stack yes\n",
        ),
        ("child", "child killed by signal 11\n"),
        ("ud2-handled", "went on past ud2\n"),
    ];
    for (mode, out) in cases {
        let o = qvisor(&["/bin/faults", mode]);
        assert_eq!(o.status.code(), Some(0), "{mode}: {}", stderr(&o));
        assert_eq!(stdout(&o), out, "{mode}");
    }
}

#[test]
fn the_stack_grows_on_first_touch_up_to_8_mib() {
    // Only the top of the stack is mapped at exec; 6 MiB of frames fault their pages in.
    let o = qvisor(&["/bin/faults", "deep"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
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
    // The shell's cd and pwd builtins.
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
fn tmp_and_dev_shm_are_private_scratch_space_even_on_a_read_only_root() {
    let script = "echo scratch > /tmp/note && read line < /tmp/note && echo got $line; \
                  echo shared > /dev/shm/seg && cat /dev/shm/seg && ls /dev/shm; \
                  cd /dev/shm/../.. && pwd; \
                  cd /tmp/.. && pwd; echo x > /tmp/../escape-attempt";
    let b = bundle("tmp", &["sh", "-c", script], true);
    let o = run_bundle(&b);
    assert!(
        stdout(&o).starts_with("got scratch\nshared\nseg\n/\n/\n"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    // "/tmp/.." is the root, which is read-only: the write fails instead of landing anywhere.
    assert_ne!(o.status.code(), Some(0));
    assert!(!root().join("tmp").exists() && !root().join("escape-attempt").exists());
    assert!(!root().join("dev").exists());
}

#[test]
fn a_broken_bundle_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("qvisor-bundle-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let o = run_bundle(&dir);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("qvisor: ") && stderr(&o).contains("config.json"),
        "{}",
        stderr(&o)
    );
    let o = run_bundle(Path::new("/nonexistent-bundle"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent-bundle"), "{}", stderr(&o));
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
        58,
        "{out}"
    );
}

#[test]
fn a_guest_spinning_or_sleeping_forever_is_stopped_by_sigterm() {
    require_kvm();
    for args in [&["/bin/faults", "spin"][..], &["sleep", "600"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qvisor"))
            .args(["launch", "--rootfs"])
            .arg(root())
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} should still run"
        );
        let sent = std::time::Instant::now();
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("stopped by the host (signal 15)"),
            "{}",
            stderr(&o)
        );
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(5),
            "{args:?} took {:?} to stop",
            sent.elapsed()
        );
    }
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
        .args(["launch", "--rootfs"])
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
    let (polled, trapped) = (getpid_exits("on", None), getpid_exits("off", None));
    assert!(
        trapped >= 3000,
        "every trapped syscall is an exit: {trapped}"
    );
    // Alone: a handful. With the other tests' VMs on both CPUs, each time the vCPU thread is
    // off its CPU for longer than the poller's budget (500 µs) the poller sleeps and the next
    // call traps: up to ~150 seen, so the bound is a tenth of the calls.
    assert!(polled < 300, "3000 polled getpids took {polled} exits");
}

#[test]
fn time_calls_are_answered_in_the_guest_by_the_vdso_and_agree_with_the_syscalls() {
    // Static (glibc finds the vDSO itself), dynamic (ld.so does) and musl static, with the
    // vDSO and without it (flag, and the host's kill switch overriding what the container
    // asks).
    for exe in ["/bin/vdso", "/bin/vdso-dyn", "/bin/vdso-musl"] {
        for mode in ["on", "off"] {
            let o = qvisor_with(&["--vdso", mode], &[exe, mode]);
            assert_eq!(o.status.code(), Some(0), "{exe} {mode}: {}", stderr(&o));
            assert!(
                stdout(&o).starts_with("vdso ok"),
                "{exe} {mode}: {}",
                stdout(&o)
            );
        }
        require_kvm();
        let o = Command::new(env!("CARGO_BIN_EXE_qvisor"))
            .env("QUARK_VDSO", "off")
            .args(["launch", "--vdso", "on", "--rootfs"])
            .arg(root())
            .args([exe, "off"])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{exe} QUARK_VDSO=off: {}",
            stdout(&o)
        );
    }
}

#[test]
fn time_calls_through_the_vdso_cost_no_exit() {
    // With every syscall trapped, exits count the calls that reached qkernel.
    let exits = |vdso: &str| {
        require_kvm();
        let o = Command::new(env!("CARGO_BIN_EXE_qvisor"))
            .env("QVISOR_LOG", "qvisor=debug")
            .args([
                "launch",
                "--syscall-poll",
                "off",
                "--vdso",
                vdso,
                "--rootfs",
            ])
            .arg(root())
            .args(["/bin/vdso", vdso, "spin", "20000"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(stdout(&o), "spun 20000\n");
        logged_count(&stderr(&o), "vcpu_exits")
    };
    let (with, without) = (exits("on"), exits("off"));
    assert!(
        without >= 20_000,
        "each clock_gettime is a syscall: {without} exits"
    );
    assert!(
        with < 200,
        "20,000 clock_gettime calls through the vDSO took {with} exits"
    );
}

/// The vCPU exits of 3000 getpids (qvisor logs them at debug level) with the polled path
/// `mode`, the VMM confined to `cpu` if given; calls the stub took back from a host thread
/// that was off its CPU (other tests keep the CPUs busy) are not counted.
fn getpid_exits(mode: &str, cpu: Option<u32>) -> u64 {
    require_kvm();
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), env!("CARGO_BIN_EXE_qvisor")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_qvisor")),
    };
    let o = cmd
        .env("QVISOR_LOG", "qvisor=debug")
        .args(["launch", "--rootfs"])
        .arg(root())
        .args(["--syscall-poll", mode, "/bin/syscost", "3000", "10"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    logged_count(&err, "vcpu_exits") - logged_count(&err, "taken_back")
}

#[test]
fn on_a_single_cpu_the_polled_path_steps_aside() {
    // The stub spins on the vCPU thread for the host thread's answer: with one CPU for both,
    // each call would wait for a scheduler tick. The host thread sees it may use one CPU and
    // leaves every call to the trap (a few may be polled before it first looks).
    let exits = getpid_exits("on", Some(0));
    assert!(
        exits >= 2900,
        "3000 getpids on one CPU took {exits} exits: the poller kept polling"
    );
}

#[test]
fn a_container_without_a_network_has_loopback() {
    let o = qvisor(&["/bin/tcp", "loop", "127.0.0.1", "8090"]);
    assert_eq!(
        stdout(&o),
        "over the guest's own stack from 127.0.0.1 (client bound the same)\n\
         FIONREAD 26, then FIONBIO read: EAGAIN\n\
         recvfrom 1 byte, address length 0; recvmsg 1 byte, name length 0\n",
        "{}",
        stderr(&o)
    );
    // Nothing else is reachable.
    let o = qvisor(&["/bin/tcp", "client", "10.1.2.3", "80"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("connect: Network is unreachable"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sendmsg_recvmsg_and_their_mmsg_forms_move_whole_datagrams() {
    let o = qvisor(&["/bin/udp", "msg", "5399"]);
    assert_eq!(
        stdout(&o),
        "recvmsg 17: [gathe][red datagram] from 127.0.0.1:5399 namelen 16\n\
         sendmmsg 2\n\
         recvmmsg 2: first/5 second/6\n\
         writev 12\n\
         readv 12: [on][e datagram]\n",
        "{}",
        stderr(&o)
    );
}

#[test]
fn abort_kills_the_app_with_sigabrt() {
    // busybox's `kill -ABRT` on itself: the signal's default action ends the container.
    let o = qvisor(&["busybox", "kill", "-ABRT", "1"]);
    assert_eq!(o.status.code(), Some(128 + 6), "{}", stderr(&o));
    assert!(stderr(&o).contains("signal 6"), "{}", stderr(&o));
    // Signal 0 only checks the target exists.
    let o = qvisor(&["busybox", "kill", "-0", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn pipes_made_without_end_are_refused_once_the_containers_buffer_budget_is_spent() {
    // Pipe buffers live in the VMM's heap, not in the guest's memory: 8 processes making pipes
    // until refused get ENFILE at the container's budget (half its memory: 64 MiB, 1,024 pipes
    // of 64 KiB, for a 128 MiB guest) instead of growing the VMM by 8 x 509 pipes.
    let o = qvisor_with(&["--memory-mib", "128"], &["/bin/pipehog"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = stdout(&o);
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{out}");
    let (pipes, refused): (usize, usize) = (fields[1].parse().unwrap(), fields[3].parse().unwrap());
    assert!((1000..=1024).contains(&pipes), "{out}");
    assert!(refused >= 1, "some process was refused with ENFILE: {out}");
}

/// A hostile app (tests/guests/hostile.c): bad pointers and lengths, the shared syscall stub
/// overwritten through read(2), the shared mailbox forged, privileged instructions, writes to
/// the kernel half and the stub page, a jump into the stub. Each attack runs in a child:
/// refused (the child's calls fail, exit 0) or killed (a signal), and the parent, its syscalls
/// and the VMM carry on.
#[test]
fn a_hostile_app_is_refused_or_killed_and_everything_else_carries_on() {
    let o = qvisor(&["/bin/hostile"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let verdict = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.split_once(": ").filter(|(n, _)| n.ends_with(name)))
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| panic!("no line for {name}: {out}"))
    };
    // Every call refused: no bad pointer was read or written.
    assert_eq!(verdict("bad-pointers"), "exit 0", "{out}");
    assert_eq!(
        verdict("overwrite-stub"),
        "exit 0",
        "read(2) into the stub: {out}"
    );
    let forged = verdict("forge-mailbox");
    assert!(forged == "exit 0" || forged.starts_with("signal"), "{out}");
    for name in [
        "cli",
        "hlt",
        "wrmsr",
        "out",
        "mov-cr3",
        "lidt",
        "write-kernel-half",
        "write-high-kernel",
        "write-stub-page",
        "write-gdt",
        "write-idt",
    ] {
        let v = verdict(name);
        assert!(v == "signal 11" || v == "signal 4", "{name}: {v}\n{out}");
    }
    // The stub runs for whichever process calls it: a jump into it kills that process only.
    assert!(verdict("jump-into-stub").starts_with("signal"), "{out}");
    // No door into another process's memory: process_vm_writev, ptrace, /proc/PID/mem.
    assert_eq!(verdict("write-parent-memory"), "exit 0", "{out}");
    assert_eq!(verdict("parent-secret"), "1234", "{out}");
    // Floods are answered call by call and fault by fault; a path flipped by another thread
    // during open resolves once, inside the root (never the host's /etc/shadow).
    for name in ["flood-syscalls", "flood-faults", "toctou-path"] {
        assert_eq!(verdict(name), "exit 0", "{name}: {out}");
    }
    assert!(out.ends_with("survived\n"), "{out}");
}

#[test]
fn files_are_made_renamed_and_removed_inside_the_root_only() {
    // Names of this test's own: the root is shared with tests running alongside.
    std::os::unix::fs::symlink("/etc/shadow", root().join("data/ops-link")).unwrap();
    let script = "mkdir /data/ops && echo one > /data/ops/a && mv /data/ops/a /data/ops/b \
                  && cat /data/ops/b && rm /data/ops/b && rmdir /data/ops && echo clean; \
                  rm /data/ops-link; echo two > /data/ops-src; mv /data/ops-src /../../ops-up; \
                  cat /ops-up; mv /ops-up /tmp/ops-x && cat /tmp/ops-x";
    let o = qvisor(&["sh", "-c", script]);
    // Root and /tmp are two file systems: rename says EXDEV, and mv copies, then unlinks.
    assert_eq!(stdout(&o), "one\nclean\ntwo\ntwo\n", "{}", stderr(&o));
    assert!(!root().join("data/ops").exists());
    // The symlink went, not what it pointed at; ".." stopped at the root.
    assert!(root().join("data/ops-link").symlink_metadata().is_err());
    assert!(Path::new("/etc/shadow").exists());
    assert!(!root().join("ops-up").exists(), "moved out to /tmp");
    assert!(!Path::new("/ops-up").exists());
    // A read-only root refuses all of it.
    let b = bundle(
        "rofs",
        &["sh", "-c", "mkdir /data/x; rm /data/lines.txt"],
        true,
    );
    let o = run_bundle(&b);
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert!(!root().join("data/x").exists());
    assert!(root().join("data/lines.txt").exists());
}

#[test]
fn pthreads_share_memory_lock_wait_signal_and_fork_on_qkernel_threads() {
    // glibc's pthreads: clone(CLONE_THREAD), futex waits and wakes, TLS, preemption between
    // spinning threads, sleeps and timed waits, pthread_kill, /proc counts, fork in a thread,
    // threads parked in accept, recv and poll while the others run.
    let o = qvisor(&["/bin/threads"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    for check in [
        "mutex",
        "tids",
        "condvar",
        "tls",
        "preemption",
        "sleep",
        "timedwait",
        "pthread_kill",
        "proc-threads",
        "fork-in-thread",
        "socket-threads",
        "poll-timeout-in-thread",
    ] {
        assert!(out.contains(&format!("ok {check}\n")), "{check}: {out}");
    }
    assert!(out.ends_with("threads: all ok\n"), "{out}");

    // exit() in a thread ends the whole process (exit_group), the main thread with it.
    let o = qvisor(&["/bin/threads", "exit-group"]);
    assert_eq!(o.status.code(), Some(33), "{}", stderr(&o));
}

/// A guest that maps and touches memory until refused gets no more than its limit, and the
/// VMM's own memory (PSS, what the host pays) stays within the limit and a small overhead.
#[test]
fn a_guest_never_holds_more_host_memory_than_its_limit() {
    require_kvm();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .args(["launch", "--memory-mib", "64", "--rootfs"])
        .arg(root())
        .arg("/bin/memhog")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running qvisor");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let pss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Pss in smaps_rollup");
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    let got: u64 = line
        .strip_prefix("got ")
        .and_then(|r| r.strip_suffix(" MiB\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?} {}", stderr(&o)));
    // Its program, stack and page tables come out of the same 64 MiB.
    assert!((32..64).contains(&got), "the guest got {got} MiB");
    assert!(
        pss_kib < (64 + 16) << 10,
        "the VMM holds {pss_kib} KiB for a 64 MiB guest"
    );
}

/// /tmp holds at most the container's memory size: beyond it, ENOSPC (as a full tmpfs).
#[test]
fn a_full_scratch_tree_is_enospc_at_the_memory_size() {
    let o = qvisor_with(
        &["--memory-mib", "32"],
        &[
            "busybox",
            "sh",
            "-c",
            "busybox dd if=/dev/zero of=/tmp/big bs=64k count=1000; busybox ls -l /tmp/big",
        ],
    );
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        stdout(&o).contains(&(32u64 << 20).to_string()),
        "{}",
        stdout(&o)
    );
}
