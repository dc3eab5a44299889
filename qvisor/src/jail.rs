//! The VMM confines itself before the app runs, as Firecracker's jailer and seccomp filters do
//! for theirs: what a guest that took over qvisor could do to the host is what these leave.
//!
//! - **rlimits**: no core dumps (a core of the VMM would be the guest's memory on the host's
//!   disk), a bounded descriptor table.
//! - **an empty root**: the VMM has a mount namespace of its own from its first instruction
//!   ([`enter_private_mount_namespace`]) and pivots into an empty read-only tmpfs, so no path
//!   names a host file; what it uses it holds as descriptors.
//! - **no new privileges**: nothing the VMM could exec gains privileges (and seccomp needs it).
//! - **capabilities**: every thread keeps only [`KEPT_CAPABILITIES`], for the rootfs's files;
//!   giving a pod interface back is the keeper's job (`keeper.rs`), not the VMM's.
//! - **seccomp**: an allow-list for the whole process (every thread, by TSYNC), and a narrower
//!   one each thread kind stacks on itself ([`ThreadKind`]): the vCPU and syscall-poller threads,
//!   which run qkernel on the guest's behalf, and the network thread, which parses frames from
//!   the pod network. A syscall outside them raises SIGSYS; the handler writes one line naming
//!   the thread and the syscall to stderr and the log, and ends the VMM with status 159 (128 +
//!   SIGSYS), as the shell reports a death by SIGSYS.
//!
//! `qvisor features` lists every filter ([`describe`]); docs/security.md says why each call is
//! there. `QVISOR_SECCOMP=log` (debugging only) makes a violation a kernel audit log line
//! instead of a kill, to find what a new code path needs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of threads the VMM runs, each with its own allow-list on top of the process's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Every thread: the union of what any of them does after boot, and teardown.
    Process,
    /// The vCPU thread: KVM_RUN and qkernel serving trapped syscalls and faults.
    Vcpu,
    /// The syscall poller: qkernel serving calls the guest posts in the mailbox.
    Poller,
    /// qnet's stack thread: frames from the pod network through io_uring.
    Network,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Process,
        ThreadKind::Vcpu,
        ThreadKind::Poller,
        ThreadKind::Network,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Process => "process",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Poller => "poller",
            ThreadKind::Network => "network",
        }
    }
}

/// How a syscall outside the lists is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SIGSYS: a line naming the syscall, then the VMM ends (the default).
    Enforce,
    /// Allowed, with a kernel audit line (debugging: finding what a code path needs).
    Log,
    /// No filter (debugging only; said in the log).
    Off,
}

impl Mode {
    /// From `QVISOR_SECCOMP` (`enforce`, `log`, `off`); enforce when unset.
    pub fn from_env() -> anyhow::Result<Mode> {
        match std::env::var("QVISOR_SECCOMP").as_deref() {
            Err(_) | Ok("enforce") | Ok("") => Ok(Mode::Enforce),
            Ok("log") => Ok(Mode::Log),
            Ok("off") => Ok(Mode::Off),
            Ok(other) => anyhow::bail!("QVISOR_SECCOMP={other:?}: expected enforce, log or off"),
        }
    }
}

/// Status the VMM ends with after a forbidden syscall: 128 + SIGSYS.
pub const VIOLATION_STATUS: i32 = 128 + libc::SIGSYS;

/// A rule: the syscall, and the argument values it is allowed with (empty: any).
struct Allow {
    nr: i64,
    /// Each entry: (argument index, allowed value); the call passes when any matches.
    only: &'static [(u8, u64)],
}

const fn any(nr: i64) -> Allow {
    Allow { nr, only: &[] }
}

const fn only(nr: i64, values: &'static [(u8, u64)]) -> Allow {
    Allow { nr, only: values }
}

/// Capabilities the VMM keeps for the app's file system: its root acts on files of any owner
/// in the rootfs, as a container's root does (qkernel checks the app's own credentials first).
/// gVisor's gofer keeps the same set.
const KEPT_CAPABILITIES: &[u32] = &[
    0, // CAP_CHOWN: chown(2) by the app's root
    1, // CAP_DAC_OVERRIDE: files of any mode in the rootfs
    2, // CAP_DAC_READ_SEARCH
    3, // CAP_FOWNER: chmod and utimes on files the VMM does not own
    4, // CAP_FSETID: keep set-id bits through writes and chown
];

/// The kept capabilities' names, for `qvisor features`.
pub fn kept_capability_names() -> Vec<&'static str> {
    const NAMES: [&str; 5] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
    ];
    KEPT_CAPABILITIES
        .iter()
        .filter_map(|&c| NAMES.get(c as usize).copied())
        .collect()
}

fn kept_mask() -> u64 {
    KEPT_CAPABILITIES.iter().fold(0, |m, c| m | 1 << c)
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Capabilities are per thread in Linux and the VMM's threads started at boot, so each one
/// drops its own: a signal makes every thread run [`drop_own_capabilities`] (libpsx's way).
const CAPS_SIGNAL: libc::c_int = 40; // SIGRTMIN + 6 on glibc; nothing else in qvisor uses it
static CAPS_LAST: AtomicI32 = AtomicI32::new(0);
/// The errno of the first thread that failed to drop its capabilities (0: none did).
static CAPS_FAILED: AtomicI32 = AtomicI32::new(0);
/// The threads that have dropped theirs: each handler writes its tid in the next slot.
const CAPS_SLOTS: usize = 256;
static CAPS_REPORTED: [AtomicI32; CAPS_SLOTS] = [const { AtomicI32::new(0) }; CAPS_SLOTS];
static CAPS_NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Drops the calling thread's capabilities to [`KEPT_CAPABILITIES`]: the bounding set, the
/// ambient set, then effective/permitted/inheritable. Async-signal-safe (raw syscalls only).
fn drop_own_capabilities() -> bool {
    let keep = kept_mask();
    let last = CAPS_LAST.load(Ordering::SeqCst);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments.
        let bounded = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        // A thread started by one that already dropped its capabilities inherits the drop,
        // CAP_SETPCAP included: dropping again would fail with EPERM.
        if keep & (1 << cap) == 0 && bounded == 1 {
            // SAFETY: prctl with integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                return false;
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let low = Data {
        effective: keep as u32,
        permitted: keep as u32,
        inheritable: 0,
    };
    let high = Data {
        effective: (keep >> 32) as u32,
        permitted: (keep >> 32) as u32,
        inheritable: 0,
    };
    let data = [low, high];
    // SAFETY: capset reads a v3 header and two data words, which live on this stack.
    unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) == 0 }
}

extern "C" fn on_caps_signal(_: libc::c_int) {
    if !drop_own_capabilities() {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        let _ = CAPS_FAILED.compare_exchange(0, errno, Ordering::SeqCst, Ordering::SeqCst);
    }
    let slot = CAPS_NEXT.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = CAPS_REPORTED.get(slot) {
        // SAFETY: gettid has no preconditions (and is async-signal-safe).
        r.store(unsafe { libc::gettid() }, Ordering::SeqCst);
    }
}

/// The VMM's threads that run user code (by /proc/self/task): KVM's kernel workers listed
/// there (kvm-nx-lpage-recovery) take no signals and run no code of ours.
fn threads() -> anyhow::Result<Vec<i32>> {
    const PF_USER_WORKER: u64 = 0x4000;
    const PF_KTHREAD: u64 = 0x20_0000;
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").context("listing the VMM's threads")? {
        let name = entry.context("listing the VMM's threads")?.file_name();
        let Some(tid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Some(stat) = task_stat(tid) else {
            continue; // ended meanwhile
        };
        // The flags are field 9 of stat, the 7th after the name.
        let flags = stat.get(6).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        if flags & (PF_USER_WORKER | PF_KTHREAD) == 0 {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// The fields of /proc/self/task/TID/stat after the command name (the state first), or
/// `None` when the thread is gone.
fn task_stat(tid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether thread `tid` of this process still runs code (not gone, not a zombie).
fn thread_alive(tid: i32) -> bool {
    task_stat(tid).is_some_and(|f| !matches!(f.first().map(String::as_str), Some("Z" | "X" | "x")))
}

/// Drops the capabilities of every thread but the calling one to [`KEPT_CAPABILITIES`].
fn drop_capabilities_of_other_threads() -> anyhow::Result<()> {
    CAPS_LAST.store(last_capability() as i32, Ordering::SeqCst);
    // SAFETY: installs an async-signal-safe handler (raw syscalls and atomics).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_caps_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(CAPS_SIGNAL, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("sigaction for the caps signal");
        }
    }
    // SAFETY: getpid and gettid have no preconditions.
    let (pid, me) = unsafe { (libc::getpid(), libc::gettid()) };
    // A thread started while we signal is caught on the next pass (threads inherit the
    // capabilities of the thread that starts them, so one already dropped passes them on).
    let mut done = std::collections::BTreeSet::from([me]);
    for _ in 0..10 {
        let pending: Vec<i32> = threads()?
            .into_iter()
            .filter(|t| !done.contains(t))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        for &tid in &pending {
            // SAFETY: tgkill to a thread of this process; the handler is installed. A thread
            // that ended meanwhile fails it (ESRCH) or never runs the handler: see below.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, CAPS_SIGNAL) };
            done.insert(tid);
        }
        // Each target either reports or turns out to have ended (a joined thread can still be
        // on its way out when listed).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let reported: Vec<i32> = CAPS_REPORTED
                .iter()
                .map(|r| r.load(Ordering::SeqCst))
                .collect();
            let waiting = pending
                .iter()
                .filter(|t| !reported.contains(t) && thread_alive(**t))
                .count();
            if waiting == 0 {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{waiting} thread(s) did not drop their capabilities within 5 s"
            );
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let errno = CAPS_FAILED.load(Ordering::SeqCst);
        anyhow::ensure!(
            errno == 0,
            "a thread failed to drop its capabilities: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
    anyhow::bail!("threads kept starting while the VMM dropped its capabilities")
}

/// Where the violation line goes besides stderr: the `--log` file, if any (set by the log).
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Tells the SIGSYS handler to write its line to `fd` too (the VMM's log file).
pub fn set_log_fd(fd: i32) {
    LOG_FD.store(fd, Ordering::SeqCst);
}

std::thread_local! {
    /// The kind of the current thread, for the violation line.
    static KIND: std::cell::Cell<ThreadKind> = const { std::cell::Cell::new(ThreadKind::Process) };
}

/// A line in a fixed buffer, for the signal handler (no allocation).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }
    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// SIGSYS from seccomp: one line naming the thread and the syscall, then the VMM ends.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS its union holds (call address,
    // syscall number, arch) at offset 16 (struct siginfo's _sigsys).
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let mut comm = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `comm`.
    unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr(), 0, 0, 0) };
    let comm_len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    line.push(b"qvisor: seccomp: thread ");
    line.push(&comm[..comm_len]);
    line.push(b" (");
    line.push(KIND.with(|k| k.get()).name().as_bytes());
    line.push(b") made the forbidden syscall ");
    line.push(qkernel::sysnames::name(nr as u64).as_bytes());
    line.push(b" (");
    line.push_number(nr as u64);
    line.push(b"); the VMM stops\n");
    for fd in [2, LOG_FD.load(Ordering::SeqCst)] {
        if fd >= 0 {
            // SAFETY: write from a buffer of `len` bytes.
            unsafe { libc::write(fd, line.buf.as_ptr().cast(), line.len) };
        }
    }
    // SAFETY: _exit ends the process at once, which is what a violation must do.
    unsafe { libc::_exit(VIOLATION_STATUS) };
}

fn install_sigsys_handler() -> anyhow::Result<()> {
    // SAFETY: the handler only formats into a stack buffer, writes and exits.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("sigaction for SIGSYS");
        }
    }
    Ok(())
}

/// The allow-list of `kind`.
fn rules(kind: ThreadKind) -> Vec<Allow> {
    match kind {
        ThreadKind::Process => process_rules(),
        ThreadKind::Vcpu => vcpu_rules(),
        ThreadKind::Poller => poller_rules(),
        ThreadKind::Network => network_rules(),
    }
}

/// `kind`'s filter, compiled to BPF.
pub fn filter(kind: ThreadKind, mode: Mode) -> anyhow::Result<BpfProgram> {
    // Per syscall: `None` when some rule allows any arguments (lists share groups, so a call
    // may be named more than once), else every allowed (argument, value), once.
    let mut allowed: BTreeMap<i64, Option<std::collections::BTreeSet<(u8, u64)>>> = BTreeMap::new();
    for allow in rules(kind) {
        let entry = allowed
            .entry(allow.nr)
            .or_insert_with(|| Some(Default::default()));
        match entry {
            Some(_) if allow.only.is_empty() => *entry = None,
            Some(values) => values.extend(allow.only.iter().copied()),
            None => {}
        }
    }
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, values) in allowed {
        let mut conditions = Vec::new();
        for (arg, value) in values.unwrap_or_default() {
            let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
                .context("a seccomp condition")?;
            conditions.push(SeccompRule::new(vec![cond]).context("a seccomp rule")?);
        }
        map.insert(nr, conditions);
    }
    let mismatch = match mode {
        Mode::Enforce | Mode::Off => SeccompAction::Trap,
        Mode::Log => SeccompAction::Log,
    };
    let filter = SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .with_context(|| format!("the {} seccomp filter", kind.name()))?;
    BpfProgram::try_from(filter).with_context(|| format!("compiling the {} filter", kind.name()))
}

/// Confines the whole VMM: rlimits, capabilities (every thread), an empty root (when the VMM
/// has a mount namespace of its own), no new privileges and the process filter (every
/// thread, by TSYNC). Call once boot is done, before the app runs.
pub fn confine_process(mode: Mode) -> anyhow::Result<()> {
    set_rlimits()?;
    // The other threads first: listing them needs /proc, and the pivot needs this thread's
    // CAP_SYS_ADMIN; no thread starts in between.
    drop_capabilities_of_other_threads()?;
    if PRIVATE_MOUNTS.load(Ordering::SeqCst) {
        pivot_into_empty_root().context("making the VMM's root empty")?;
    } else {
        tracing::warn!("the VMM has no mount namespace of its own: host paths stay visible to it");
    }
    anyhow::ensure!(
        drop_own_capabilities(),
        "dropping capabilities: {}",
        std::io::Error::last_os_error()
    );
    if mode == Mode::Off {
        tracing::warn!("QVISOR_SECCOMP=off: the VMM runs without its seccomp filters");
        return Ok(());
    }
    install_sigsys_handler()?;
    // glibc installs its SIGSETXID handler (rt_sigaction, which the filter forbids) when the
    // process creates its first thread; a VMM whose network runs elsewhere (a ring endpoint)
    // has made none yet, and the vCPU thread comes after the filter.
    std::thread::Builder::new()
        .name("qvisor-prime".into())
        .spawn(|| {})
        .context("starting a thread before confinement")?
        .join()
        .map_err(|_| anyhow::anyhow!("the priming thread panicked"))?;
    let program = filter(ThreadKind::Process, mode)?;
    seccompiler::apply_filter_all_threads(&program).context("installing the process filter")?;
    tracing::debug!(?mode, "VMM confined");
    Ok(())
}

/// Set once the process has a mount namespace of its own.
static PRIVATE_MOUNTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Gives the VMM a mount namespace of its own, where nothing propagates to or from the
/// host's. Call first thing in the VMM process: with more than one thread, unshare moves
/// only the calling thread.
pub fn enter_private_mount_namespace() -> anyhow::Result<()> {
    // SAFETY: unshare and mount with NUL-terminated strings; no memory is handed over.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("making the VMM's mount namespace (unshare)");
        }
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("making the VMM's mounts private");
        }
    }
    PRIVATE_MOUNTS.store(true, Ordering::SeqCst);
    Ok(())
}

/// Makes an empty read-only tmpfs the root of the VMM (and its keeper, which shares its mount
/// namespace): no path resolves to a host file any more. Everything the VMM uses from here
/// on is a descriptor it already holds: the rootfs and scratch trees, /dev/kvm, the TAP, the
/// log, the exec socket.
fn pivot_into_empty_root() -> anyhow::Result<()> {
    let os = |what: &'static str| move || format!("{what}: {}", std::io::Error::last_os_error());
    // /tmp exists on every host; the tmpfs covers it in this namespace only.
    let target = c"/tmp";
    // SAFETY: mount, chdir, pivot_root and umount2 with NUL-terminated strings; the process
    // has a private mount namespace (PRIVATE_MOUNTS), so none of it reaches the host's.
    unsafe {
        anyhow::ensure!(
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=4k,mode=0555".as_ptr().cast(),
            ) == 0,
            os("mounting the empty root")()
        );
        anyhow::ensure!(
            libc::chdir(target.as_ptr()) == 0,
            os("entering the empty root")()
        );
        // pivot_root(".", "."): the old root is stacked under the new one, then detached.
        anyhow::ensure!(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) == 0,
            os("pivot_root")()
        );
        anyhow::ensure!(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH) == 0,
            os("detaching the host's root")()
        );
        anyhow::ensure!(libc::chdir(c"/".as_ptr()) == 0, os("chdir /")());
        anyhow::ensure!(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ) == 0,
            os("making the empty root read-only")()
        );
    }
    Ok(())
}

/// Stacks `kind`'s filter on the calling thread (and the threads it starts later).
pub fn confine_thread(kind: ThreadKind, mode: Mode) -> anyhow::Result<()> {
    KIND.with(|k| k.set(kind));
    if mode == Mode::Off {
        return Ok(());
    }
    // The soft denials first: the kind's own list need not allow seccomp itself.
    let soft = soft_denial_filter()?;
    seccompiler::apply_filter(&soft)
        .with_context(|| format!("installing the {} soft denials", kind.name()))?;
    let program = filter(kind, mode)?;
    seccompiler::apply_filter(&program)
        .with_context(|| format!("installing the {} filter", kind.name()))
}

/// Calls a thread kind fails with EACCES rather than dies of: glibc's malloc opens
/// /proc/sys/vm/overcommit_memory the first time a thread's arena grows, and copes with the
/// failure. Paths are out of a filter's reach, so no thread of a kind opens host paths at all
/// (qkernel's files go through openat2, confined to the root, in [`guest_files`]).
const SOFT_DENIALS: &[i64] = &[libc::SYS_openat, libc::SYS_open];

/// A filter stacked on each thread kind's: the soft denials return EACCES. (With stacked
/// filters the strictest answer wins, so the kind's own list allows these calls.)
fn soft_denial_filter() -> anyhow::Result<BpfProgram> {
    let map = SOFT_DENIALS.iter().map(|&nr| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .context("the soft-denial filter")?;
    BpfProgram::try_from(filter).context("compiling the soft-denial filter")
}

/// Most descriptors the VMM may hold: the rootfs's own limit, the page cache's (4,096 each), the
/// network's, and its own few.
const MAX_DESCRIPTORS: u64 = 16_384;

fn set_rlimits() -> anyhow::Result<()> {
    for (resource, value, what) in [
        // A core of the VMM would be the guest's memory written to the host's disk.
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
        (libc::RLIMIT_NOFILE, MAX_DESCRIPTORS, "RLIMIT_NOFILE"),
    ] {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads one rlimit.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("setting {what}"));
        }
    }
    Ok(())
}

/// Each filter's syscalls, by name, for `qvisor features` and the docs.
pub fn describe() -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for kind in ThreadKind::ALL {
        let mut names: Vec<String> = rules(kind)
            .iter()
            .map(|a| {
                let name = qkernel::sysnames::name(a.nr as u64);
                if a.only.is_empty() {
                    name.to_string()
                } else {
                    let values: Vec<String> = a
                        .only
                        .iter()
                        .map(|(i, v)| format!("arg{i}={v:#x}"))
                        .collect();
                    format!("{name}({})", values.join("|"))
                }
            })
            .collect();
        names.sort();
        names.dedup();
        out.insert(kind.name().into(), names.into());
    }
    out.into()
}

// The lists. A group is named for what needs it; docs/security.md ("The VMM's seccomp
// filters") says why each call is there.

use libc::{
    SYS_brk, SYS_capset, SYS_clock_getres, SYS_clock_gettime, SYS_clock_nanosleep, SYS_close,
    SYS_dup, SYS_dup3, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_wait,
    SYS_eventfd2, SYS_exit, SYS_exit_group, SYS_fallocate, SYS_fchmod, SYS_fchmodat, SYS_fchown,
    SYS_fchownat, SYS_fcntl, SYS_fdatasync, SYS_fstat, SYS_fstatfs, SYS_fsync, SYS_ftruncate,
    SYS_futex, SYS_getdents64, SYS_getpid, SYS_getrandom, SYS_gettid, SYS_io_uring_enter,
    SYS_ioctl, SYS_linkat, SYS_lseek, SYS_madvise, SYS_mkdirat, SYS_mmap, SYS_mprotect, SYS_mremap,
    SYS_munmap, SYS_nanosleep, SYS_newfstatat, SYS_openat2, SYS_poll, SYS_ppoll, SYS_prctl,
    SYS_pread64, SYS_preadv, SYS_pwrite64, SYS_pwritev, SYS_read, SYS_readlinkat, SYS_readv,
    SYS_recvmsg, SYS_renameat2, SYS_restart_syscall, SYS_rseq, SYS_rt_sigprocmask,
    SYS_rt_sigreturn, SYS_sched_getaffinity, SYS_sched_yield, SYS_sendmsg, SYS_set_robust_list,
    SYS_sigaltstack, SYS_statfs, SYS_statx, SYS_symlinkat, SYS_tgkill, SYS_unlinkat, SYS_utimensat,
    SYS_wait4, SYS_write, SYS_writev,
};

/// Every thread: its own stack and signals, locks, clocks, the allocator's memory, and the
/// capability drop ([`drop_capabilities`] signals threads that may already be filtered).
fn thread_basics() -> Vec<Allow> {
    vec![
        any(SYS_futex),
        any(SYS_sched_yield),
        any(SYS_rt_sigreturn),
        any(SYS_rt_sigprocmask),
        any(SYS_restart_syscall),
        any(SYS_sigaltstack),
        any(SYS_exit),
        // Ending the VMM (also how the SIGSYS handler ends it).
        any(SYS_exit_group),
        any(SYS_gettid),
        any(SYS_getpid),
        any(SYS_clock_gettime),
        any(SYS_clock_getres),
        any(SYS_clock_nanosleep),
        any(SYS_nanosleep),
        any(SYS_getrandom),
        any(SYS_mmap),
        any(SYS_munmap),
        any(SYS_mprotect),
        any(SYS_madvise),
        any(SYS_mremap),
        any(SYS_brk),
        any(SYS_close),
        // Writes: logs, eventfd doorbells.
        any(SYS_write),
        any(SYS_read),
        any(SYS_capset),
        // F_GETFD on a descriptor's drop (std's debug check) and F_GETFL/F_SETFL.
        any(SYS_fcntl),
        // Answered EACCES by the soft-denial filter on a thread kind (see SOFT_DENIALS).
        any(libc::SYS_openat),
        any(libc::SYS_open),
        only(
            SYS_prctl,
            &[
                (0, libc::PR_GET_NAME as u64),
                (0, libc::PR_SET_NAME as u64),
                (0, libc::PR_CAPBSET_READ as u64),
                (0, libc::PR_CAPBSET_DROP as u64),
                (0, libc::PR_CAP_AMBIENT as u64),
                (0, libc::PR_SET_NO_NEW_PRIVS as u64),
            ],
        ),
    ]
}

/// qkernel's file access through the rootfs (`rootfs.rs`: openat2 confined to the root) and
/// the streams from outside (exec's pipes and terminal).
fn guest_files() -> Vec<Allow> {
    [
        SYS_openat2,
        SYS_pread64,
        SYS_pwrite64,
        SYS_readv,
        SYS_writev,
        SYS_preadv,
        SYS_pwritev,
        SYS_lseek,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_fstatfs,
        SYS_getdents64,
        SYS_unlinkat,
        SYS_mkdirat,
        SYS_renameat2,
        SYS_symlinkat,
        SYS_linkat,
        SYS_readlinkat,
        SYS_fchownat,
        SYS_fchown,
        SYS_fchmodat,
        SYS_fchmod,
        // chmod of an O_PATH descriptor (rootfs.rs: fchmod refuses them).
        crate::rootfs::SYS_FCHMODAT2,
        SYS_utimensat,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_fsync,
        SYS_fdatasync,
        SYS_dup,
        SYS_ppoll,
        SYS_poll,
    ]
    .into_iter()
    .map(any)
    .collect()
}

/// The terminal ioctls qkernel passes to a host terminal (`rootfs::terminal_ioctl`).
const TERMINAL_IOCTLS: &[(u8, u64)] = &[
    (1, 0x5401), // TCGETS
    (1, 0x5402), // TCSETS
    (1, 0x5403), // TCSETSW
    (1, 0x5404), // TCSETSF
    (1, 0x5413), // TIOCGWINSZ
    (1, 0x5414), // TIOCSWINSZ
];

/// The KVM ioctls the vCPU thread makes on its vCPU (`vm.rs`), with the terminal ones.
const VCPU_IOCTLS: &[(u8, u64)] = &[
    (1, 0x5401),
    (1, 0x5402),
    (1, 0x5403),
    (1, 0x5404),
    (1, 0x5413),
    (1, 0x5414),
    (1, 0xae80),      // KVM_RUN
    (1, 0x8090_ae81), // KVM_GET_REGS
    (1, 0x4090_ae82), // KVM_SET_REGS
    (1, 0x8138_ae83), // KVM_GET_SREGS
    (1, 0x4138_ae84), // KVM_SET_SREGS
    (1, 0x9000_aea4), // KVM_GET_XSAVE
    (1, 0x5000_aea5), // KVM_SET_XSAVE
];

fn vcpu_rules() -> Vec<Allow> {
    guest_serving_rules(VCPU_IOCTLS)
}

fn poller_rules() -> Vec<Allow> {
    let mut rules = guest_serving_rules(TERMINAL_IOCTLS);
    // How many CPUs it may use: on one, polling would take it from the vCPU.
    rules.push(any(libc::SYS_sched_getaffinity));
    rules
}

/// The threads that run qkernel for the app (vCPU, poller): its files, the `ioctls` of
/// their kind, and kicks (the vCPU's own from the timer and stop signals; the poller's when
/// it hands a call to the vCPU thread).
fn guest_serving_rules(ioctls: &'static [(u8, u64)]) -> Vec<Allow> {
    let mut rules = thread_basics();
    rules.extend(guest_files());
    rules.push(only(SYS_ioctl, ioctls));
    rules.push(any(SYS_tgkill));
    rules
}

/// qnet's stack thread: io_uring on the TAP, eventfds to and from its clients.
fn network_rules() -> Vec<Allow> {
    let mut rules = thread_basics();
    rules.extend([
        any(SYS_io_uring_enter),
        any(SYS_epoll_wait),
        any(SYS_epoll_pwait),
        any(SYS_ppoll),
        any(SYS_poll),
        // The ring memfds' resident size, for the stack's report (qnet's Session::resident_bytes).
        any(SYS_fstat),
        // The TAP's frames, read by the stack thread, a stream's payload straight to its
        // socket's storage (qnet's phy/rx.rs).
        any(SYS_readv),
    ]);
    rules
}

/// Everything any thread does after boot, and teardown: the union of the kinds, and the
/// threads that have no kind of their own (timer, exec listener, qnet's attach, qhttp).
fn process_rules() -> Vec<Allow> {
    let mut rules = thread_basics();
    rules.extend(guest_files());
    rules.extend(network_rules());
    rules.extend([
        any(SYS_ioctl),
        any(SYS_tgkill),
        any(SYS_statfs),
        any(SYS_dup3),
        any(SYS_writev),
        // Threads (qhttp's runtime, exec's per-request threads).
        any(libc::SYS_clone3),
        any(libc::SYS_clone),
        any(SYS_set_robust_list),
        any(SYS_rseq),
        any(SYS_sched_getaffinity),
        // Event loops (qhttp, the exec socket, ring clients).
        any(SYS_epoll_create1),
        any(SYS_epoll_ctl),
        any(SYS_eventfd2),
        // The exec socket (Unix): requests and their descriptors; ring attach.
        any(libc::SYS_accept4),
        any(SYS_recvmsg),
        any(SYS_sendmsg),
        any(libc::SYS_recvfrom),
        any(libc::SYS_sendto),
        any(libc::SYS_shutdown),
        any(libc::SYS_getsockopt),
        any(libc::SYS_setsockopt),
        any(libc::SYS_memfd_create),
        // Teardown: the ring's attach socket file; the state's advisory lock.
        any(libc::SYS_unlink),
        any(libc::SYS_flock),
        // Stacking a thread kind's filter (only ever narrows what a thread may do).
        any(libc::SYS_seccomp),
        // The keeper, waited for at the end.
        any(SYS_wait4),
    ]);
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process of the violation test: its log file.
    const CHILD: &str = "QVISOR_JAIL_TEST_CHILD";

    #[test]
    fn every_filter_compiles_in_every_mode() {
        for kind in ThreadKind::ALL {
            for mode in [Mode::Enforce, Mode::Log] {
                let program = filter(kind, mode).unwrap();
                assert!(!program.is_empty(), "{kind:?}");
            }
        }
        assert!(!soft_denial_filter().unwrap().is_empty());
    }

    #[test]
    fn no_thread_kind_allows_what_the_process_filter_forbids() {
        // The process filter is on every thread: a kind's list naming more would mislead.
        let process: std::collections::BTreeSet<i64> =
            process_rules().iter().map(|a| a.nr).collect();
        for kind in [ThreadKind::Vcpu, ThreadKind::Poller, ThreadKind::Network] {
            for allow in rules(kind) {
                assert!(
                    process.contains(&allow.nr),
                    "{} allows {}, which the process filter forbids",
                    kind.name(),
                    qkernel::sysnames::name(allow.nr as u64)
                );
            }
        }
    }

    #[test]
    fn the_guest_facing_threads_cannot_exec_open_sockets_or_change_namespaces() {
        for kind in ThreadKind::ALL {
            let allowed: Vec<i64> = rules(kind).iter().map(|a| a.nr).collect();
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_socket,
                libc::SYS_connect,
                libc::SYS_setns,
                libc::SYS_unshare,
                libc::SYS_mount,
                libc::SYS_ptrace,
                libc::SYS_process_vm_writev,
                libc::SYS_bpf,
                libc::SYS_kexec_load,
                libc::SYS_init_module,
                libc::SYS_rt_sigaction,
            ] {
                assert!(
                    !allowed.contains(&nr),
                    "{} allows {}",
                    kind.name(),
                    qkernel::sysnames::name(nr as u64)
                );
            }
        }
    }

    #[test]
    fn the_features_list_names_every_kind() {
        let d = describe();
        for kind in ThreadKind::ALL {
            let list = d[kind.name()].as_array().unwrap();
            assert!(list.iter().any(|n| n == "futex"), "{kind:?}: {list:?}");
        }
        assert!(d["vcpu"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("arg1=0xae80|")));
    }

    /// A thread started by one that already dropped its capabilities (the exec server's
    /// connection threads, started during the drop) inherits the drop and can run the
    /// handler's drop again: it once failed there with EPERM (no CAP_SETPCAP left).
    #[test]
    fn a_thread_that_inherited_the_drop_drops_again() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
        CAPS_LAST.store(last_capability() as i32, Ordering::SeqCst);
        // Capabilities are per thread: only these two test threads lose theirs.
        let (first, second) = std::thread::spawn(|| {
            let first = drop_own_capabilities();
            let second = std::thread::spawn(drop_own_capabilities).join().unwrap();
            (first, second)
        })
        .join()
        .unwrap();
        assert!(
            first && second,
            "first drop {first}, inherited drop {second}"
        );
    }

    /// In a child process (this test binary again): a network thread's filter, then an open
    /// (refused softly), then a socket (forbidden: the process ends with a line naming it, on
    /// stderr and in its log file).
    #[test]
    fn a_forbidden_syscall_ends_the_process_with_a_line_naming_it() {
        if let Some(log) = std::env::var_os(CHILD) {
            let log = std::fs::File::create(log).unwrap();
            set_log_fd(std::os::fd::IntoRawFd::into_raw_fd(log));
            install_sigsys_handler().unwrap();
            confine_thread(ThreadKind::Network, Mode::Enforce).unwrap();
            // SAFETY: open with a NUL-terminated path.
            let fd = unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            eprintln!("open: {fd} errno {errno:?}");
            // SAFETY: socket has no memory-safety preconditions.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            eprintln!("still alive after socket()");
            return;
        }
        let log = std::env::temp_dir().join(format!("qvisor-jail-test-{}.log", std::process::id()));
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "jail::tests::a_forbidden_syscall_ends_the_process_with_a_line_naming_it",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &log)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        assert!(
            logged.contains("made the forbidden syscall socket (41)"),
            "the log file: {logged:?}"
        );
        assert_eq!(out.status.code(), Some(VIOLATION_STATUS), "{stderr}");
        assert!(stderr.contains("open: -1 errno Some(13)"), "{stderr}");
        assert!(
            stderr.contains("(network) made the forbidden syscall socket (41); the VMM stops"),
            "{stderr}"
        );
        assert!(!stderr.contains("still alive"), "{stderr}");
    }
}
