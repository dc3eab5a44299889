//! qvisor's runc command line, command by command, next to runc itself on the same bundle:
//! create/start/state/list/ps/pause/resume/kill/delete, exit statuses, hooks, cgroups, the
//! console socket, concurrency, and a VMM that crashes.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{require_kvm, stderr, stdout, unique_id};
use serde_json::Value;

const QVISOR: &str = env!("CARGO_BIN_EXE_qvisor");

/// A runtime binary with a state root of this test's own.
struct Runtime {
    bin: &'static str,
    root: PathBuf,
}

impl Runtime {
    fn qvisor() -> Runtime {
        require_kvm();
        Runtime::new(QVISOR)
    }

    fn runc() -> Runtime {
        assert!(
            Command::new("runc").arg("--version").output().is_ok(),
            "runc is needed as the reference runtime (scripts/setup.sh)"
        );
        Runtime::new("runc")
    }

    fn new(bin: &'static str) -> Runtime {
        let name = Path::new(bin).file_name().unwrap().to_string_lossy();
        let root = std::env::temp_dir().join(format!("oci-root-{name}-{}", unique_id("r")));
        Runtime { bin, root }
    }

    /// Runs a command to its end. Its output goes through files, not pipes: a container
    /// made by `create` keeps the descriptors it inherited, so a pipe would not end.
    fn cmd(&self, args: &[&str]) -> Output {
        let out = std::env::temp_dir().join(unique_id("oci-out"));
        let err = std::env::temp_dir().join(unique_id("oci-err"));
        let status = Command::new(self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .expect("running the runtime");
        let o = Output {
            status,
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&err).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        o
    }

    /// Runs a command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "{} {args:?}: {}{}",
            self.bin,
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state JSON")
    }

    fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap_or("").to_string()
    }

    /// Waits until the container exists and reaches `want`.
    fn wait_status(&self, id: &str, want: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self.cmd(&["state", id]);
            let now = serde_json::from_slice::<Value>(&o.stdout)
                .map(|v| v["status"].as_str().unwrap_or("").to_string())
                .unwrap_or_else(|_| stderr(&o));
            if now == want {
                return;
            }
            assert!(Instant::now() < end, "{id} stayed {now}, wanted {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Whatever a failed test left behind.
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let _ = self.cmd(&["delete", "--force", &id]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A bundle of `runc spec`'s shape around a busybox root of its own, edited by `edit`.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn new(args: &[&str], edit: impl FnOnce(&mut Value)) -> Bundle {
        let dir = std::env::temp_dir().join(format!("oci-bundle-{}", unique_id("b")));
        let bin = dir.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("Debian's busybox-static");
        std::os::unix::fs::symlink("busybox", bin.join("sh")).unwrap();
        let o = Command::new("runc")
            .arg("spec")
            .current_dir(&dir)
            .output()
            .expect("runc spec");
        assert!(o.status.success(), "runc spec: {}", stderr(&o));
        let path = dir.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        edit(&mut spec);
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        Bundle { dir }
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
}

#[test]
fn the_lifecycle_matches_runc_command_by_command() {
    let mut transcripts = Vec::new();
    for rt in [Runtime::runc(), Runtime::qvisor()] {
        let b = Bundle::new(&["busybox", "sleep", "30"], |_| {});
        let id = unique_id("life");
        let pid_file = b.dir.join("container.pid");
        let mut seen = Vec::new();

        rt.ok(&[
            "create",
            "--bundle",
            b.path(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ]);
        let pid: i64 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let st = rt.state(&id);
        assert_eq!(st["id"], id.as_str());
        assert_eq!(st["pid"], pid, "{}: state pid vs pid file", rt.bin);
        assert_eq!(st["bundle"], b.path());
        assert!(st["ociVersion"].is_string() && st["created"].is_string());
        seen.push(st["status"].as_str().unwrap().to_string());

        let listed: Value = serde_json::from_str(&rt.ok(&["list", "--format", "json"])).unwrap();
        assert_eq!(listed[0]["id"], id.as_str(), "{}", rt.bin);
        let table = rt.ok(&["list"]);
        assert!(table.starts_with("ID") && table.contains(&id), "{table}");

        rt.ok(&["start", &id]);
        seen.push(rt.status(&id));
        let o = rt.cmd(&["start", &id]);
        assert_eq!(o.status.code(), Some(1), "second start of {}", rt.bin);
        assert!(stderr(&o).contains("cannot start an already running container"));

        let pids: Value = serde_json::from_str(&rt.ok(&["ps", "--format", "json", &id])).unwrap();
        assert!(
            pids.as_array().unwrap().iter().any(|p| *p == pid),
            "{}: ps {pids}",
            rt.bin
        );

        rt.ok(&["pause", &id]);
        seen.push(rt.status(&id));
        rt.ok(&["resume", &id]);
        seen.push(rt.status(&id));

        let o = rt.cmd(&["delete", &id]);
        assert_eq!(o.status.code(), Some(1), "{}", rt.bin);
        assert!(
            stderr(&o).contains(&format!(
                "cannot delete container {id} that is not stopped: running"
            )),
            "{}: {}",
            rt.bin,
            stderr(&o)
        );

        rt.ok(&["kill", &id, "KILL"]);
        rt.wait_status(&id, "stopped");
        seen.push("stopped".into());
        let o = rt.cmd(&["kill", &id, "TERM"]);
        assert_eq!(o.status.code(), Some(1), "kill of a stopped container");
        assert!(
            stderr(&o).contains("container not running"),
            "{}",
            stderr(&o)
        );

        rt.ok(&["delete", &id]);
        let o = rt.cmd(&["state", &id]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
        assert!(rt.ok(&["list", "-q"]).trim().is_empty());
        rt.ok(&["delete", "--force", &id]); // a missing container with --force is fine
        transcripts.push(seen);
    }
    assert_eq!(
        transcripts[0],
        ["created", "running", "paused", "running", "stopped"]
    );
    assert_eq!(transcripts[0], transcripts[1], "runc vs qvisor");
}

#[test]
fn signals_reach_the_container_and_its_exit_status_is_the_vmms() {
    let rt = Runtime::qvisor();
    let b = Bundle::new(&["busybox", "sh", "-c", "exit 3"], |_| {});
    let o = rt.cmd(&["run", "--bundle", b.path(), &unique_id("exit")]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));

    // The app's init gets the runtime's signals: a handler runs (here the shell's trap, which
    // exits 7); without one a signal is ignored, as runc's init ignores it (pid 1 of its
    // namespace); SIGKILL always ends the container.
    let trap = "trap 'echo bye; exit 7' TERM; echo set; while true; do busybox sleep 1; done";
    let b = Bundle::new(&["busybox", "sh", "-c", trap], |_| {});
    let plain = Bundle::new(&["busybox", "sleep", "30"], |_| {});
    // tini (the usual container init) blocks what it forwards and takes it with sigtimedwait:
    // a blocked signal reaches even init.
    let tini = Bundle::new(&["/bin/tini", "--", "busybox", "sh", "-c", trap], |_| {});
    std::fs::copy("/usr/bin/tini-static", tini.dir.join("rootfs/bin/tini"))
        .expect("Debian's tini (scripts/setup.sh installs it)");
    for (bundle, signals, status) in [
        (&b, &["TERM"][..], 7),
        (&tini, &["TERM"][..], 7),
        (&plain, &["TERM", "SIGINT", "9"][..], 137),
    ] {
        let id = unique_id("sig");
        let out = std::env::temp_dir().join(unique_id("sig-out"));
        let mut run = Command::new(QVISOR)
            .arg("--root")
            .arg(&rt.root)
            .args(["run", "--bundle", bundle.path(), &id])
            .stdout(std::fs::File::create(&out).unwrap())
            .spawn()
            .unwrap();
        rt.wait_status(&id, "running");
        if status == 7 {
            // A signal before the trap is set is ignored (init without a handler), as in runc.
            let end = Instant::now() + Duration::from_secs(30);
            while std::fs::read_to_string(&out).unwrap_or_default() != "set\n" {
                assert!(Instant::now() < end, "the trap was never set");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for signal in signals {
            rt.ok(&["kill", &id, signal]);
            if *signal != "9" && status == 137 {
                std::thread::sleep(Duration::from_millis(300));
                assert_eq!(
                    rt.status(&id),
                    "running",
                    "{signal} without a handler is ignored"
                );
            }
        }
        // A signal that went nowhere leaves the container running: fail, do not hang.
        let end = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(s) = run.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > end {
                let _ = rt.cmd(&["kill", &id, "9"]);
                let _ = run.wait();
                panic!("{signals:?} did not end {:?}", bundle.path());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(code, Some(status), "{signals:?}");
        if status == 7 {
            assert_eq!(std::fs::read_to_string(&out).unwrap(), "set\nbye\n");
        }
        let _ = std::fs::remove_file(&out);
        // run deleted the container after it ended.
        assert_eq!(rt.cmd(&["state", &id]).status.code(), Some(1));
    }
}

#[test]
fn a_crashed_vmm_reads_as_stopped_and_delete_cleans_up() {
    let rt = Runtime::qvisor();
    let cgroup = format!("/quark-test-{}/crash", std::process::id());
    let b = Bundle::new(&["busybox", "sleep", "30"], |s| {
        s["linux"]["cgroupsPath"] = cgroup.clone().into();
    });
    let id = unique_id("crash");
    rt.ok(&["create", "--bundle", b.path(), &id]);
    rt.ok(&["start", &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap() as i32;
    let dirs = cgroup_dirs(&cgroup);
    assert!(dirs.iter().all(|d| d.exists()), "{dirs:?}");
    // SAFETY: kills the VMM process this test created.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    rt.wait_status(&id, "stopped");
    assert_eq!(rt.state(&id)["pid"], 0);
    rt.ok(&["delete", &id]);
    assert!(!rt.root.join(&id).exists());
    assert!(dirs.iter().all(|d| !d.exists()), "cgroup left: {dirs:?}");
    remove_cgroup_parents(&cgroup);
}

/// Where the host keeps the cgroup `path` (each v1 hierarchy qvisor uses, or the v2 one).
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let inner = path.trim_start_matches('/');
    let v1: Vec<PathBuf> = ["memory", "cpu", "pids"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c))
        .filter(|m| m.is_dir())
        .map(|m| m.join(inner))
        .collect();
    if v1.is_empty() {
        vec![Path::new("/sys/fs/cgroup").join(inner)]
    } else {
        v1
    }
}

fn remove_cgroup_parents(path: &str) {
    let parent = Path::new(path)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    for dir in cgroup_dirs(&parent) {
        let _ = std::fs::remove_dir(dir);
    }
    for ctrl in ["cpuacct", "freezer", "blkio"] {
        let _ = std::fs::remove_dir(
            Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(parent.trim_start_matches('/')),
        );
    }
}

#[test]
fn the_cgroup_carries_the_limits_of_the_spec() {
    let rt = Runtime::qvisor();
    let cgroup = format!("/quark-test-{}/limits", std::process::id());
    let b = Bundle::new(&["busybox", "sleep", "30"], |s| {
        s["linux"]["cgroupsPath"] = cgroup.clone().into();
        s["linux"]["resources"] = serde_json::json!({
            "memory": { "limit": 256 << 20 },
            "cpu": { "quota": 50000, "period": 100000, "shares": 512 },
            "pids": { "limit": 64 },
        });
    });
    let id = unique_id("cg");
    rt.ok(&["create", "--bundle", b.path(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap().to_string();
    let dirs = cgroup_dirs(&cgroup);
    let read = |d: &PathBuf, f: &str| {
        std::fs::read_to_string(d.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", d.join(f).display()))
            .trim()
            .to_string()
    };
    let memory = (256u64 << 20) + qvisor::oci::cgroup::VMM_OVERHEAD;
    if dirs[0].starts_with("/sys/fs/cgroup/memory") {
        assert_eq!(read(&dirs[0], "memory.limit_in_bytes"), memory.to_string());
        assert_eq!(read(&dirs[1], "cpu.cfs_quota_us"), "50000");
        assert_eq!(read(&dirs[1], "cpu.shares"), "512");
        assert_eq!(read(&dirs[2], "pids.max"), "64");
    } else {
        assert_eq!(read(&dirs[0], "memory.max"), memory.to_string());
        assert_eq!(read(&dirs[0], "cpu.max"), "50000 100000");
        assert_eq!(read(&dirs[0], "pids.max"), "64");
    }
    for d in &dirs {
        assert!(
            read(d, "cgroup.procs").lines().any(|l| l == pid),
            "{}",
            d.display()
        );
    }
    let stats: Value = serde_json::from_str(&rt.ok(&["events", "--stats", &id])).unwrap();
    assert_eq!(stats["type"], "stats");
    assert!(
        stats["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert_eq!(stats["data"]["memory"]["usage"]["limit"], memory);
    rt.ok(&["delete", &id]); // created: delete ends it
    assert!(dirs.iter().all(|d| !d.exists()));
    remove_cgroup_parents(&cgroup);
}

#[test]
fn twenty_containers_are_created_and_deleted_in_parallel() {
    let rt = Runtime::qvisor();
    let b = Bundle::new(&["busybox", "sleep", "30"], |_| {});
    let ids: Vec<String> = (0..20).map(|_| unique_id("par")).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let rt = &rt;
            let b = &b;
            s.spawn(move || rt.ok(&["create", "--bundle", b.path(), id]));
        }
    });
    let listed: Value = serde_json::from_str(&rt.ok(&["list", "--format", "json"])).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 20);
    assert!(listed.iter().all(|c| c["status"] == "created"));
    let pids: Vec<i32> = listed
        .iter()
        .map(|c| c["pid"].as_i64().unwrap() as i32)
        .collect();
    std::thread::scope(|s| {
        for id in &ids {
            let rt = &rt;
            s.spawn(move || rt.ok(&["delete", id]));
        }
    });
    assert!(rt.ok(&["list", "-q"]).trim().is_empty());
    assert!(pids.iter().all(|p| !pid_alive(*p)), "a VMM outlived delete");
}

#[test]
fn hooks_run_at_their_points_with_the_state_on_stdin() {
    let rt = Runtime::qvisor();
    let out = std::env::temp_dir().join(format!("oci-hooks-{}", unique_id("h")));
    std::fs::create_dir_all(&out).unwrap();
    let hook = |name: &str| {
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{name}", out.display())],
        })
    };
    let points = [
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ];
    let b = Bundle::new(&["busybox", "true"], |s| {
        s["hooks"] = points
            .iter()
            .map(|p| (p.to_string(), Value::Array(vec![hook(p)])))
            .collect::<serde_json::Map<_, _>>()
            .into();
    });
    let id = unique_id("hooks");
    let o = rt.cmd(&["run", "--bundle", b.path(), &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (point, status) in points
        .iter()
        .zip(["created", "created", "running", "running", "stopped"])
    {
        let text = std::fs::read_to_string(out.join(point))
            .unwrap_or_else(|e| panic!("{point} hook did not run: {e}"));
        let st: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(st["id"], id.as_str(), "{point}");
        assert_eq!(st["status"], status, "{point}");
    }

    // A failing createRuntime hook fails create and leaves nothing behind.
    let b = Bundle::new(&["busybox", "sleep", "30"], |s| {
        s["hooks"] = serde_json::json!({ "createRuntime": [{ "path": "/bin/false" }] });
    });
    let id = unique_id("badhook");
    let o = rt.cmd(&["create", "--bundle", b.path(), &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("createRuntime hook /bin/false"),
        "{}",
        stderr(&o)
    );
    assert!(!rt.root.join(&id).exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// Receives one descriptor sent with SCM_RIGHTS on `stream`.
fn receive_fd(stream: &std::os::unix::net::UnixStream) -> OwnedFd {
    let mut name = [0u8; 256];
    let mut iov = libc::iovec {
        iov_base: name.as_mut_ptr().cast(),
        iov_len: name.len(),
    };
    let mut control = [0u8; 64];
    // SAFETY: msghdr points at live buffers; the kernel writes at most their sizes.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        assert!(
            libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) > 0,
            "recvmsg"
        );
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        assert!(!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS);
        OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const i32))
    }
}

#[test]
fn a_terminal_goes_to_the_console_socket() {
    let rt = Runtime::qvisor();
    let b = Bundle::new(&["busybox", "echo", "tty-ok"], |s| {
        s["process"]["terminal"] = true.into();
    });
    let id = unique_id("tty");
    let o = rt.cmd(&["create", "--bundle", b.path(), &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("console socket"), "{}", stderr(&o));

    let sock = b.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        receive_fd(&stream)
    });
    rt.ok(&[
        "create",
        "--bundle",
        b.path(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    let master = std::fs::File::from(receiver.join().unwrap());
    rt.ok(&["start", &id]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("tty-ok") {
        // EIO once the slave is closed by the exiting VMM.
        match std::io::Read::read(&mut &master, &mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    assert_eq!(String::from_utf8_lossy(&seen), "tty-ok\r\n");
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
}

#[test]
fn exec_with_a_terminal_sends_its_master_to_the_console_socket_like_runc() {
    for rt in [Runtime::runc(), Runtime::qvisor()] {
        let name = rt.bin;
        let b = Bundle::new(&["busybox", "sleep", "60"], |_| {});
        let id = unique_id("exec-tty");
        rt.ok(&["create", "--bundle", b.path(), &id]);
        rt.ok(&["start", &id]);
        let sock = b.dir.join("exec-console.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let receiver = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            receive_fd(&stream)
        });
        let script = "[ -t 0 ] && [ -t 1 ] && echo tty-yes";
        rt.ok(&[
            "exec",
            "--tty",
            "--detach",
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
            "busybox",
            "sh",
            "-c",
            script,
        ]);
        let master = std::fs::File::from(receiver.join().unwrap());
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let end = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&seen).contains("tty-yes\r\n") && Instant::now() < end {
            // EIO once the last slave is closed.
            match std::io::Read::read(&mut &master, &mut buf) {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        // isatty on stdin and stdout, and the terminal's \n -> \r\n on the way out.
        assert!(text.starts_with("tty-yes\r\n"), "{name}: {text:?}");
        rt.ok(&["kill", &id, "KILL"]);
        rt.wait_status(&id, "stopped");
        rt.ok(&["delete", &id]);
    }
}

#[test]
fn bad_input_is_a_clear_error_that_leaves_nothing() {
    let rt = Runtime::qvisor();
    let b = Bundle::new(&["busybox", "true"], |_| {});
    std::fs::write(b.dir.join("config.json"), "{ not json").unwrap();
    let id = unique_id("bad");
    let o = rt.cmd(&["create", "--bundle", b.path(), &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("config.json"), "{}", stderr(&o));
    assert!(!rt.root.join(&id).exists());

    let o = rt.cmd(&["create", "--bundle", b.path(), "../escape"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid container id"),
        "{}",
        stderr(&o)
    );

    // A program the root lacks: the VMM reports it and exits; create fails with its reason.
    let b = Bundle::new(&["no-such-program"], |_| {});
    let o = rt.cmd(&["create", "--bundle", b.path(), &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("\"no-such-program\" not found"),
        "{}",
        stderr(&o)
    );
    assert!(!rt.root.join(&id).exists());

    let b = Bundle::new(&["busybox", "sleep", "30"], |_| {});
    rt.ok(&["create", "--bundle", b.path(), &id]);
    let o = rt.cmd(&["create", "--bundle", b.path(), &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("container with id exists"),
        "{}",
        stderr(&o)
    );
    // exec needs a running container: a clear refusal, and the container is untouched.
    let o = rt.cmd(&["exec", &id, "busybox", "true"]);
    assert_eq!(o.status.code(), Some(255));
    assert!(
        stderr(&o).contains("cannot exec in a created container"),
        "{}",
        stderr(&o)
    );
    assert_eq!(rt.status(&id), "created");
    rt.ok(&["delete", &id]);

    let features: Value = serde_json::from_str(&rt.ok(&["features"])).unwrap();
    assert_eq!(features["ociVersionMin"], "1.0.0");
}

#[test]
fn exec_starts_processes_in_the_running_container_like_runc() {
    for rt in [Runtime::runc(), Runtime::qvisor()] {
        let id = unique_id("exec");
        let b = Bundle::new(&["busybox", "sleep", "60"], |spec| {
            spec["process"]["env"] = serde_json::json!(["PATH=/bin", "FROM_SPEC=yes"]);
            spec["process"]["cwd"] = "/bin".into();
        });
        rt.ok(&["create", "--bundle", b.path(), &id]);
        rt.ok(&["start", &id]);
        let name = rt.bin;
        // Args with the container's own process as defaults: env, cwd.
        let out = rt.ok(&["exec", &id, "sh", "-c", "echo $FROM_SPEC $(busybox pwd)"]);
        assert_eq!(out, "yes /bin\n", "{name}");
        let out = rt.ok(&["exec", "--user", "1000:100", &id, "busybox", "id"]);
        assert!(out.starts_with("uid=1000 gid=100"), "{name}: {out}");
        let o = rt.cmd(&[
            "exec",
            "--env",
            "EXTRA=1",
            &id,
            "sh",
            "-c",
            "echo $EXTRA; exit 7",
        ]);
        assert_eq!(
            (o.status.code(), stdout(&o).as_str()),
            (Some(7), "1\n"),
            "{name}"
        );
        // A process JSON, as containerd's shim passes it.
        let process = b.dir.join("process.json");
        std::fs::write(
            &process,
            r#"{"args":["sh","-c","echo $P; busybox pwd"],"env":["P=json","PATH=/bin"],"cwd":"/","user":{"uid":0,"gid":0}}"#,
        )
        .unwrap();
        let out = rt.ok(&["exec", "--process", process.to_str().unwrap(), &id]);
        assert_eq!(out, "json\n/\n", "{name}");
        // Detached, with a pid file naming what to wait on; a signal to it reaches the process.
        let pid_file = b.dir.join("exec.pid");
        rt.ok(&[
            "exec",
            "--detach",
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
            "busybox",
            "sleep",
            "30",
        ]);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(pid_alive(pid), "{name}");
        // SAFETY: kill(2) of the process the runtime named.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while pid_alive(pid) {
            assert!(
                Instant::now() < end,
                "{name}: the exec'd process outlived SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // A process waiting for its stdin holds nothing up: another exec runs meanwhile.
        let out_file = b.dir.join("cat.out");
        let mut cat = Command::new(rt.bin)
            .arg("--root")
            .arg(&rt.root)
            .args(["exec", &id, "busybox", "cat"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(&out_file).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(
            rt.ok(&["exec", &id, "busybox", "echo", "meanwhile"]),
            "meanwhile\n"
        );
        let meanwhile = started.elapsed();
        {
            use std::io::Write;
            let mut stdin = cat.stdin.take().unwrap();
            stdin.write_all(b"typed later\n").unwrap();
        }
        assert!(cat.wait().unwrap().success(), "{name}");
        let typed = std::fs::read_to_string(&out_file).unwrap();
        assert_eq!(typed, "typed later\n", "{name}");
        assert!(meanwhile < Duration::from_secs(5), "{name}: {meanwhile:?}");
        // A program the root lacks.
        let o = rt.cmd(&["exec", &id, "no-such-program"]);
        assert_ne!(o.status.code(), Some(0), "{name}");
        assert_eq!(rt.status(&id), "running", "{name}");
        rt.ok(&["kill", &id, "KILL"]);
        rt.wait_status(&id, "stopped");
        let o = rt.cmd(&["exec", &id, "busybox", "true"]);
        assert_eq!(o.status.code(), Some(255), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("exec failed"), "{name}: {}", stderr(&o));
        rt.ok(&["delete", &id]);
    }
}

#[test]
fn the_log_file_gets_runc_style_json() {
    let rt = Runtime::qvisor();
    let b = Bundle::new(&["busybox", "true"], |_| {});
    std::fs::write(b.dir.join("config.json"), "{ not json").unwrap();
    let log = b.dir.join("log.json");
    let o = rt.cmd(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "create",
        "--bundle",
        b.path(),
        &unique_id("log"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(
        last["msg"].as_str().unwrap().contains("config.json"),
        "{text}"
    );
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn a_fork_bomb_is_held_by_the_pids_limit_and_kill_still_ends_it() {
    let rt = Runtime::qvisor();
    let limited = |script: &str| {
        Bundle::new(&["busybox", "sh", "-c", script], |s| {
            s["linux"]["resources"] = serde_json::json!({ "pids": { "limit": 16 } });
        })
    };
    // A bomb: fork fails with EAGAIN at 16 processes; the subshells that meet it give up and
    // the bomb ends by itself.
    // (Fork copies a process's memory here, so the bomb is kept small enough for the pids
    // limit, not the guest's memory, to be what stops it.)
    let b = limited("f() { f & f & wait; }; f");
    let o = rt.cmd(&["run", "--bundle", b.path(), &unique_id("bomb")]);
    assert!(matches!(o.status.code(), Some(0 | 2)), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("can't fork: Resource temporarily unavailable"),
        "{}",
        stderr(&o)
    );
    // Processes up to the limit, all waiting: the runtime stays responsive and KILL ends
    // the container at once.
    let b = limited("i=0; while [ $i -lt 14 ]; do busybox sleep 30 & i=$((i+1)); done; wait");
    let id = unique_id("many");
    let mut run = Command::new(QVISOR)
        .arg("--root")
        .arg(&rt.root)
        .args(["run", "--bundle", b.path(), &id])
        .spawn()
        .unwrap();
    rt.wait_status(&id, "running");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rt.status(&id), "running");
    let started = Instant::now();
    rt.ok(&["kill", &id, "KILL"]);
    assert_eq!(run.wait().unwrap().code(), Some(137));
    assert!(started.elapsed() < Duration::from_secs(5));
}
