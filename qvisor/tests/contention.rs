//! The polled syscall path under CPU contention: busy threads on every CPU, so this binary
//! runs alone (cargo runs test binaries one after another) and disturbs no other test.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use quark_tests::cpu::{pin_thread, Hogs};

#[test]
fn a_request_the_poller_leaves_waiting_is_taken_back_and_trapped() {
    // The stub spins on the vCPU thread until the host thread picks its request up. When that
    // thread is off its CPU (here: busy threads on both CPUs, the vCPU thread pinned), the
    // stub takes the request back after a bounded spin and traps, instead of spinning through
    // whole time slices of the busy threads. Every call still returns (the container ends
    // well, each call served once) and some went the taken-back way.
    require_kvm();
    assert!(
        std::thread::available_parallelism().map_or(0, |n| n.get()) >= 2,
        "this test needs 2 CPUs"
    );
    // Whether the host thread is off its CPU at a call is up to the host's scheduler: a run
    // may (rarely) see none taken back. Every run must end well; one of three must take some
    // back.
    let taken_back: Vec<u64> = (0..3)
        .map(|_| run_beside_busy_threads())
        .take_while(|&n| n == 0)
        .collect();
    assert!(
        taken_back.len() < 3,
        "100,000 getpids beside busy threads, three times: the stub never took a call back"
    );
}

/// One run of 100,000 getpids with the vCPU thread pinned and both CPUs busy; how many calls
/// the stub took back. The container must end well.
fn run_beside_busy_threads() -> u64 {
    let child = Command::new(env!("CARGO_BIN_EXE_qvisor"))
        .env("QVISOR_LOG", "qvisor=debug")
        .args(["launch", "--rootfs"])
        .arg(root())
        .args(["--syscall-poll", "on", "/bin/syscost", "100000", "10"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let task = |name: &str| {
        let dir = format!("/proc/{}/task", child.id());
        std::fs::read_dir(dir).ok()?.flatten().find_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == name).then(|| t.file_name().to_str()?.parse::<i32>().ok())?
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let vcpu = loop {
        if let Some(t) = task("qvisor-vcpu") {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no vCPU thread appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    pin_thread(vcpu, 0);
    let hogs = Hogs::on(&[0, 1]);
    let out = child.wait_with_output().unwrap();
    drop(hogs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    logged_count(&err, "taken_back")
}
