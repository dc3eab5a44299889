//! A flooded neighbour: two containers of one runtime (Quark unless told) side by side, each
//! in its own namespace; a kernel peer blasts SYNs (hping3, random sources) and UDP (iperf3 -u)
//! at one of them while the other's throughput and latency are measured, against rounds
//! without the flood, in alternation. The flooded container has a CPU limit of half a core, as
//! a pod would: its stack runs in its VMM, so the flood's cost is charged to it. Afterwards it
//! must still be serving.
//!
//! The generators run on this machine too. [`Layout::Pinned`] (the default) gives each side a
//! core of its own, as a node's CPU manager gives guaranteed pods and as a flood from another
//! machine would leave the bystander's cores alone: what it measures is isolation.
//! [`Layout::Shared`] lets everything share both cores: it measures CPU contention too.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use quark_tests::Netns;

use crate::containers::*;
use crate::scenarios::{iperf, start_lane, Lane, RemoveOnDrop};
use crate::workload::{percentile_us, ping_pong};
use crate::{alternate, figures, Column, Figure, RoundRows};

/// The suite's name in reports, and its two conditions (the baseline second).
pub const SUITE: &str = "flood";
pub const PATHS: (&str, &str) = ("neighbour flooded", "quiet");

/// Where the two sides of the flood run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// The bystander, its clients and netbench on core 0; the flooded container and the
    /// generators on core 1.
    Pinned,
    /// Every process on every core: the generators take CPU from the bystander.
    Shared,
}

pub fn suite(
    runtime: Runtime,
    layout: Layout,
    duration: f64,
    rounds: usize,
) -> anyhow::Result<Vec<Figure>> {
    let (names, (f, q)) = measure(runtime, layout, duration, rounds)?;
    Ok(figures(&names, &f, &q))
}

/// Every round of both conditions, as report rows.
pub fn rows(duration: f64, rounds: usize) -> anyhow::Result<Vec<crate::report::Row>> {
    let (names, (f, q)) = measure(Runtime::Quark, Layout::Pinned, duration, rounds)?;
    Ok(crate::report::paired_rows(SUITE, &names, PATHS, &f, &q))
}

/// The cores of each side in [`Layout::Pinned`].
const BYSTANDER_CPU: usize = 0;
const FLOOD_CPU: usize = 1;

/// Sets the CPU affinity of every thread of `pid` (threads it starts later inherit it).
fn pin_process(pid: u32, set: &libc::cpu_set_t) -> anyhow::Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: passes a valid cpu_set_t of its own size; a thread gone meanwhile fails
        // with ESRCH, which is fine.
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    }
    Ok(())
}

fn one_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain bits; CPU_SET writes inside it (cpu < CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins every process of the tree under `root` to `cpu`.
fn pin_tree(root: u32, cpu: usize) -> anyhow::Result<()> {
    let set = one_cpu(cpu);
    for pid in process_tree(root)? {
        pin_process(pid, &set)?;
    }
    Ok(())
}

/// netbench's own threads on one core until dropped (its iperf3 clients and the
/// request/response thread inherit it); the affinity they had comes back on drop.
struct PinnedSelf(libc::cpu_set_t);

impl PinnedSelf {
    fn to(cpu: usize) -> anyhow::Result<PinnedSelf> {
        // SAFETY: reads this thread's affinity into a cpu_set_t of its own size.
        let old = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
            }
            set
        };
        pin_process(std::process::id(), &one_cpu(cpu))?;
        Ok(PinnedSelf(old))
    }
}

impl Drop for PinnedSelf {
    fn drop(&mut self) {
        let _ = pin_process(std::process::id(), &self.0);
    }
}

/// The flooded container's processes in a CPU cgroup of their own, as a pod's CPU limit:
/// qnet runs in the VMM, so the work a flood makes is charged to the container it is aimed
/// at. Removed on drop (after the container has stopped).
struct CpuLimit(PathBuf);

impl CpuLimit {
    fn apply(pids: &[u32], cores: f64) -> anyhow::Result<CpuLimit> {
        let period = 100_000u64;
        let quota = (cores * period as f64) as u64;
        let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"));
        let (dir, file, value) = if v2 {
            let dir = PathBuf::from(format!(
                "/sys/fs/cgroup/netbench-flood-{}",
                std::process::id()
            ));
            (dir, "cpu.max", format!("{quota} {period}"))
        } else {
            let dir = PathBuf::from(format!(
                "/sys/fs/cgroup/cpu/netbench-flood-{}",
                std::process::id()
            ));
            (dir, "cpu.cfs_quota_us", quota.to_string())
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let limit = CpuLimit(dir.clone());
        std::fs::write(dir.join(file), value).with_context(|| format!("writing {file}"))?;
        for pid in pids {
            // A process that ended meanwhile needs no limit.
            let _ = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
        }
        Ok(limit)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The CPU the flooded container may use: half a core, a common pod limit.
const VICTIM_CORES: f64 = 0.5;

/// The flood's rates: 20,000 SYNs/s from random sources and 100 Mbit/s of 64-byte UDP
/// datagrams (about 195,000 a second). The generators run on this machine too: at full rate
/// (`hping3 --flood`) the SYN generator alone takes a whole core of the two, and what is left
/// measures the machine, not the containers' isolation.
const SYN_INTERVAL: &str = "u50";
const UDP_RATE: &str = "100M";

/// A flood of SYNs and UDP at the victim's address from its peer namespace; stopped on drop.
struct Flood(Vec<Child>);

impl Flood {
    /// The flood from `peer`, its generators on `cpu` if given.
    fn start(peer: &Netns, secs: u64, cpu: Option<usize>) -> anyhow::Result<Flood> {
        let ip = CONTAINER_IP.to_string();
        let generator = |program: &str| match cpu {
            Some(cpu) => {
                let mut c = peer.cmd("taskset");
                c.args(["-c", &cpu.to_string(), program]);
                c
            }
            None => peer.cmd(program),
        };
        let syn = generator("hping3")
            .args([
                "-i",
                SYN_INTERVAL,
                "--rand-source",
                "-S",
                "-p",
                "80",
                "-q",
                &ip,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting hping3 (Debian's hping3)")?;
        let udp = generator("iperf3")
            .args([
                "-c",
                &ip,
                "-p",
                &IPERF_PORT.to_string(),
                "-u",
                "-b",
                UDP_RATE,
            ])
            .args(["-l", "64", "-t", &(secs + 5).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the UDP flood (iperf3 -u)")?;
        // Let both reach full rate first.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Flood(vec![syn, udp]))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The bystander's iperf3 (1 stream into it) and 1-byte request/response p50 and p99.
fn bystander_round(b: &Lane, d: Duration) -> anyhow::Result<[f64; 3]> {
    let gbits = iperf(&b.peer, 1, false, d)?;
    let addr = SocketAddr::from((CONTAINER_IP, NETSERVE_PORT));
    let s = b
        .peer
        .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut rtts = ping_pong(s, d).context("1-byte request/response")?;
    Ok([
        gbits,
        percentile_us(&mut rtts, 50.0),
        percentile_us(&mut rtts, 99.0),
    ])
}

fn running(lane: &mut Lane, what: &str) -> anyhow::Result<()> {
    match lane.container.as_mut() {
        Some(c) => c
            .check_running()
            .with_context(|| format!("the {what} container")),
        None => bail!(
            "the {what} container did not start: {}",
            lane.error.clone().unwrap_or_default()
        ),
    }
}

/// The figures' names, and each round's figures with the neighbour flooded and quiet.
fn measure(
    runtime: Runtime,
    layout: Layout,
    duration: f64,
    rounds: usize,
) -> anyhow::Result<([Column; 3], RoundRows<3>)> {
    quark_tests::require_env(&["iperf3", "hping3", "nginx", "gcc", "taskset"]);
    if layout == Layout::Pinned {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        anyhow::ensure!(
            cores > FLOOD_CPU,
            "the pinned layout needs two cores, this machine has {cores} (try --layout shared)"
        );
    }
    let d = Duration::from_secs_f64(duration);
    let secs = d.as_secs_f64().ceil() as u64 + 1;
    let work = std::env::temp_dir().join(format!("netbench-flood-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(work.clone());
    let root = Root::build(&work.join("root"))?;
    let mut victim = start_lane(runtime, &root, &work, "victim");
    let mut bystander = start_lane(runtime, &root, &work, "bystander");
    running(&mut victim, "flooded")?;
    running(&mut bystander, "bystander")?;
    let victim_pid = victim.container.as_ref().map_or(0, |c| c.pid());
    let _limit = CpuLimit::apply(&process_tree(victim_pid)?, VICTIM_CORES)?;
    let (_pinned, flood_cpu) = match layout {
        Layout::Pinned => {
            let bystander_pid = bystander.container.as_ref().map_or(0, |c| c.pid());
            pin_tree(bystander_pid, BYSTANDER_CPU)?;
            pin_tree(victim_pid, FLOOD_CPU)?;
            (Some(PinnedSelf::to(BYSTANDER_CPU)?), Some(FLOOD_CPU))
        }
        Layout::Shared => (None, None),
    };
    let result = alternate(
        rounds,
        || {
            let _flood = Flood::start(&victim.peer, secs, flood_cpu)?;
            bystander_round(&bystander, d)
        },
        || bystander_round(&bystander, d),
    );
    // The flooded container lived through it and still answers.
    let alive = running(&mut victim, "flooded").and_then(|()| {
        let addr = SocketAddr::from((CONTAINER_IP, NETSERVE_PORT));
        let s = victim
            .peer
            .enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(3)))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        ping_pong(s, Duration::from_millis(200))
            .context("the flooded container no longer answers")?;
        Ok(())
    });
    for lane in [victim, bystander] {
        if let Some(c) = lane.container {
            c.stop();
        }
    }
    let (f, q) = result?;
    alive?;
    let names: [Column; 3] = [
        (
            "bystander container, iperf3 1 stream in",
            "throughput",
            "Gbit/s",
        ),
        ("bystander container, tcp rr 1 byte", "p50 latency", "us"),
        ("bystander container, tcp rr 1 byte", "p99 latency", "us"),
    ];
    Ok((names, (f, q)))
}
