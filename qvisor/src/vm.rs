//! The KVM virtual machine of one container: one vCPU running the app in 64-bit user mode,
//! and the loop that turns its exits into qkernel calls.
//!
//! There is no guest kernel code at all. `LSTAR` points at a canonical address that is never
//! mapped and the IDT is empty (limit 0), so the app's `syscall` faults on its first fetch, the
//! fault cannot be delivered, and KVM reports a triple fault (`KVM_EXIT_SHUTDOWN`) with every
//! register intact: `rip` = LSTAR, `rcx` = the return address, `r11` = the flags. Any other
//! exception of the app ends the same way. Measured on this host (PVM, ../shared/probes
//! kvm-hostsys): ~81 µs per syscall, the cheapest of the exit variants tried, and no ring-0
//! code to emulate or to protect. Registers travel through `kvm_run`'s sync-regs area, which
//! saves two ioctls per exit (~27 µs measured).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use kvm_bindings::{kvm_msr_entry, kvm_segment, kvm_xcrs, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};

use qkernel::{
    Fault, HostFile, Kernel, Machine, PageFlags, RawStat, SpaceId, SyscallArgs, SyscallOutcome,
    UserRegs,
};

use crate::fastread::{self, FastReads};
use crate::jail::{self, Mode, ThreadKind};
use crate::memory::{GuestMemory, PAGE};
use crate::net::GuestNet;
use crate::pagecache::SharedFilePages;
use crate::patch::SiteTable;
use crate::poll::{self, Mailbox, Poller, MAILBOX_VA, SLOW_RIP, STUB_VA};
use crate::rootfs::RootFs;
use crate::vclock::{VClock, VDSO_IMAGE, VDSO_VA, VVAR_VA};

/// The syscall entry point: canonical, never mapped (kernel half).
pub const LSTAR: u64 = 0xffff_8000_0000_0000;
/// Where the app's half of the address space ends (canonical addresses below it).
const USER_HALF_END: u64 = 0x0000_8000_0000_0000;
/// Descriptor tables live here, mapped supervisor-only.
const GDT_VA: u64 = 0xffff_ff00_0000_0000;
const TSS_VA: u64 = GDT_VA + 0x800;
/// Written to CR2 before each resume: non-canonical, so no page fault can report it, and a
/// fault that leaves it in place was not a page fault.
const CR2_NONE: u64 = 0x8000_0000_0000_0000;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;

fn user_code() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x33,
        type_: 0xb,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    }
}

fn user_data() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x2b,
        type_: 0x3,
        present: 1,
        dpl: 3,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

/// The signal that asked qvisor to stop the container (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// `kvm_run.immediate_exit` of the running vCPU, so a stop signal that lands just before
/// KVM_RUN still makes it return at once.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

/// The running Vm's cancel flag, so a stop signal also frees a thread parked in a socket call
/// (the trapping path serves syscalls on the vCPU thread itself).
static CANCEL: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

/// Host signals for the guest's init, not yet handed over (bit `sig - 1`), when
/// [`forward_signals`] is on.
static HOST_SIGNALS: AtomicU64 = AtomicU64::new(0);
/// Signals from the host go to the guest's init (OCI containers) rather than stop the VM.
static FORWARD_SIGNALS: AtomicBool = AtomicBool::new(false);

/// Makes the stop signals go to the guest's init, as a container runtime's `kill` does: its
/// handler runs, or (without one) the signal is ignored, as Linux shields a pid namespace's
/// init from what it has no handler for. SIGKILL still ends the VMM.
pub fn forward_signals() {
    FORWARD_SIGNALS.store(true, Ordering::SeqCst);
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    if FORWARD_SIGNALS.load(Ordering::SeqCst) && (1..=64).contains(&sig) {
        HOST_SIGNALS.fetch_or(1 << (sig - 1), Ordering::SeqCst);
        on_kick(sig);
        return;
    }
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    let cancel = CANCEL.load(Ordering::SeqCst);
    if !cancel.is_null() {
        // SAFETY: points at the Vm's cancel flag, kept alive by the Vm while installed
        // (cleared before run returns); an atomic store is async-signal-safe.
        unsafe { (*cancel).store(true, Ordering::SeqCst) };
    }
    let p = IMMEDIATE_EXIT.load(Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: p points into the vCPU's kvm_run mapping, which outlives the handler's
        // installation (cleared before the Vm is dropped); a byte store is async-signal-safe.
        unsafe { p.write_volatile(1) };
    }
    relay_to_vcpu_thread();
}

extern "C" fn on_kick(_sig: libc::c_int) {
    let p = IMMEDIATE_EXIT.load(Ordering::SeqCst);
    if !p.is_null() {
        // SAFETY: as in on_stop_signal.
        unsafe { p.write_volatile(1) };
    }
    relay_to_vcpu_thread();
}

/// A signal sent to the process lands on any thread that does not hold it, but only an
/// interrupted vCPU thread leaves KVM_RUN: a handler on another thread (one started before
/// [`install_stop_signals`] held them) passes the kick on. Async-signal-safe.
fn relay_to_vcpu_thread() {
    let thread = VCPU_THREAD.load(Ordering::SeqCst);
    // SAFETY: pthread_self has no preconditions.
    if thread != 0 && thread != unsafe { libc::pthread_self() } as u64 {
        // SAFETY: the vCPU thread's id, set while it runs (cleared before it leaves run);
        // the kick handler is installed then. pthread_kill is async-signal-safe.
        unsafe { libc::pthread_kill(thread as libc::pthread_t, KICK_SIGNAL) };
    }
}

/// The signal the syscall thread sends the vCPU thread to get it out of KVM_RUN.
const KICK_SIGNAL: libc::c_int = libc::SIGUSR2;

/// The signals a runtime sends the VMM process: each stops the container or goes to its init.
const PROCESS_SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
];

fn mask_process_signals(how: libc::c_int) {
    // SAFETY: builds a signal set on the stack and changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in PROCESS_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Keeps [`PROCESS_SIGNALS`] off the calling thread and every thread it starts from now on:
/// they stay pending for the one thread that takes them ([`take_process_signals`]). Landing on
/// a helper thread, a handler would end whatever blocking call it was in with EINTR (a ring
/// attach, an exec request) and leave the vCPU to a relay.
pub fn hold_process_signals() {
    mask_process_signals(libc::SIG_BLOCK);
}

/// Lets [`PROCESS_SIGNALS`] reach the calling thread (the vCPU thread, or the thread waiting
/// for `start`); pending ones are handled at once.
pub fn take_process_signals() {
    mask_process_signals(libc::SIG_UNBLOCK);
}

/// Makes the signals whose default action ends a process ([`PROCESS_SIGNALS`]) stop the
/// container cleanly (a vCPU in a guest loop is kicked out of KVM_RUN, the pod network is given
/// back) instead of killing qvisor mid-exit, and holds them on the calling thread (see
/// [`hold_process_signals`]). Idempotent.
pub fn install_stop_signals() {
    let mut handlers: Vec<(libc::c_int, extern "C" fn(libc::c_int))> = PROCESS_SIGNALS
        .iter()
        .map(|&sig| (sig, on_stop_signal as extern "C" fn(libc::c_int)))
        .collect();
    handlers.push((KICK_SIGNAL, on_kick));
    for (sig, handler) in handlers {
        // SAFETY: a plain sigaction with an async-signal-safe handler and no SA_RESTART, so
        // KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    hold_process_signals();
}

/// The stop signal received since [`install_stop_signals`], if any.
pub fn stop_signal() -> Option<i32> {
    Some(STOP_SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// How the app ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `exit`/`exit_group` with this status.
    Exited(i32),
    /// Killed by a signal the kernel raised for a fault it could not resolve.
    Killed { signal: i32, reason: String },
}

impl Stop {
    /// The exit status a shell would report (128 + signal for a kill).
    pub fn status(&self) -> i32 {
        match self {
            Stop::Exited(c) => *c,
            Stop::Killed { signal, .. } => 128 + signal,
        }
    }

    /// How a syscall ended the app, if it did.
    fn of(outcome: SyscallOutcome) -> Option<Stop> {
        match outcome {
            SyscallOutcome::Return(_) | SyscallOutcome::Resume => None,
            SyscallOutcome::Exit(code) => Some(Stop::Exited(code)),
            SyscallOutcome::Killed(signal) => Some(Stop::Killed {
                signal,
                reason: format!("the app raised signal {signal}, whose action is to terminate"),
            }),
        }
    }
}

/// How the app's syscalls reach qkernel.
#[derive(Debug, Clone, Copy)]
pub struct SyscallPath {
    /// Through the stub and a polling host thread (else every call traps).
    pub polled: bool,
    /// Trapped syscall sites of shared libraries become jumps into the stub (polled only).
    pub patching: bool,
    /// Time calls are answered in guest user mode by a vDSO (`vclock`).
    pub vdso: bool,
    /// Socket reads with data waiting are served by the stub itself (`fastread`; polled only).
    pub fast_reads: bool,
}

/// What both the vCPU thread and the syscall thread work on.
pub struct Core {
    pub mem: GuestMemory,
    /// Jump slots and trampolines of patched syscall sites (none: patching is off).
    sites: Option<SiteTable>,
    pub rootfs: RootFs,
    /// The pages of the app's shared file mappings.
    pages: SharedFilePages,
    pub net: Option<GuestNet>,
    kernel: Option<Kernel>,
    /// The Vm's stop flag (see `Vm::cancel`): ends sleeps early.
    cancel: Arc<AtomicBool>,
    /// Requests from outside for the kernel, and who waits for their events.
    host: Arc<HostQueue>,
    /// The vCPU's FPU state before the app ran: what a new program starts with.
    initial_fpu: Vec<u8>,
    /// The CPU-time clock of the vCPU thread: the guest's CPU, readable from any thread.
    vcpu_clock: Option<libc::clockid_t>,
    /// The guest's wall and monotonic clocks, shared with its vDSO (none: the host's).
    clock: Option<Arc<VClock>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // The VM ends: what the app stored in shared file mappings reaches the files (as
        // Linux writes dirty pages back however the process ends).
        self.pages.write_back_all(&self.mem);
    }
}

/// The CPU-time clock of the calling thread (the vCPU thread's, called there).
fn vcpu_thread_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the calling thread's own handle and a valid out-pointer.
    let r = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (r == 0).then_some(clock)
}

/// Where in the file a read or write of `n` bytes done at `offset` (or at the file position,
/// which it moved) began.
fn file_offset(fd: std::os::fd::RawFd, offset: Option<u64>, n: usize) -> u64 {
    offset.unwrap_or_else(|| {
        // SAFETY: lseek on a descriptor of ours, without moving it.
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        (pos.max(0) as u64).saturating_sub(n as u64)
    })
}

/// A request from outside the container, as the runtime sends it.
pub enum HostRequest {
    /// Start a process (exec) with these descriptors as its stdin, stdout and stderr.
    Spawn {
        spec: qkernel::SpawnRequest,
        stdio: [std::os::fd::OwnedFd; 3],
    },
    Signal {
        pid: i64,
        sig: i32,
    },
}

/// Requests from outside the container (exec) on their way to qkernel, and the events it
/// reports back, each to the waiter of its request. Apart from [`Core`], whose lock a call
/// that waits holds, so a request never waits for the app.
#[derive(Default)]
pub struct HostQueue {
    requests: Mutex<std::collections::VecDeque<HostRequest>>,
    waiters: Mutex<std::collections::BTreeMap<u64, std::sync::mpsc::Sender<qkernel::HostEvent>>>,
}

/// Set while requests wait in a [`HostChannel`]: sleeps end, the vCPU is kicked.
static HOST_REQUESTS: AtomicBool = AtomicBool::new(false);
/// The vCPU thread of the running Vm (0: none), to kick it out of the guest.
static VCPU_THREAD: AtomicU64 = AtomicU64::new(0);

/// Queues `request` for qkernel and gets the vCPU to look at it soon; events about it go to
/// `events` (for a spawn: keyed by its id).
pub fn send_host_request(
    host: &HostQueue,
    request: HostRequest,
    events: Option<(u64, std::sync::mpsc::Sender<qkernel::HostEvent>)>,
) {
    if let Some((id, tx)) = events {
        lock(&host.waiters).insert(id, tx);
    }
    lock(&host.requests).push_back(request);
    HOST_REQUESTS.store(true, Ordering::SeqCst);
    let thread = VCPU_THREAD.load(Ordering::SeqCst);
    if thread != 0 {
        // SAFETY: the id of the vCPU thread, set while it runs the Vm (cleared before it
        // leaves run); the kick handler is installed then.
        unsafe { libc::pthread_kill(thread as libc::pthread_t, KICK_SIGNAL) };
    }
}

/// What serving a syscall on the vCPU thread gave.
pub struct Served {
    pub outcome: SyscallOutcome,
    /// A new thread pointer, if the call set one.
    pub fs_base: Option<u64>,
    /// With [`SyscallOutcome::Resume`]: the registers to resume with.
    pub resume: Option<UserRegs>,
    /// The address space (CR3) to run.
    pub space: SpaceId,
}

/// Runs `f` on the kernel and a machine over `core` (`regs`/`vcpu` for the vCPU thread's
/// calls, which may switch processes); `None` if there is no kernel yet or `f` gives nothing.
fn with_kernel<R>(
    core: &Mutex<Core>,
    regs: UserRegs,
    vcpu: Option<&VcpuFd>,
    f: impl FnOnce(&mut Kernel, &mut GuestMachine) -> Option<R>,
) -> Option<(R, GuestOutput)> {
    let mut guard = core.lock().unwrap_or_else(|p| p.into_inner());
    let Core {
        mem,
        sites,
        rootfs,
        pages,
        net,
        kernel,
        cancel,
        host,
        initial_fpu,
        vcpu_clock,
        clock,
    } = &mut *guard;
    let kernel = kernel.as_mut()?;
    let mut machine = GuestMachine {
        mem,
        sites: sites.as_mut(),
        rootfs,
        pages,
        net: net.as_mut(),
        fs_base: None,
        cancel,
        regs,
        resume: None,
        vcpu,
        host: Some((host, initial_fpu)),
        vcpu_clock: *vcpu_clock,
        clock: clock.as_deref(),
    };
    let r = f(kernel, &mut machine);
    // Before the app runs again: the stub's reads must match the running process's table.
    kernel.sync_fast_reads(&mut machine);
    let r = r?;
    let out = GuestOutput {
        fs_base: machine.fs_base,
        resume: machine.resume,
        space: machine.mem.pml4,
    };
    Some((r, out))
}

/// What a call left for the vCPU: a thread pointer, registers to resume with, the space.
struct GuestOutput {
    fs_base: Option<u64>,
    resume: Option<UserRegs>,
    space: SpaceId,
}

impl Served {
    fn of(outcome: SyscallOutcome, out: GuestOutput) -> Served {
        Served {
            outcome,
            fs_base: out.fs_base,
            resume: out.resume,
            space: out.space,
        }
    }
}

/// Serves one syscall on `core` from the vCPU thread, which can switch processes: `regs` are
/// the app's registers at the call and `vcpu` holds its FPU state.
/// `site`: the call came from a `syscall` instruction returning there, which qkernel may patch
/// first (the app is stopped in this call, so no thread runs the bytes as they change).
pub fn serve(
    core: &Mutex<Core>,
    call: SyscallArgs,
    regs: UserRegs,
    vcpu: &VcpuFd,
    site: Option<u64>,
) -> Served {
    let served = with_kernel(core, regs, Some(vcpu), |k, m| {
        if let Some(ret) = site {
            k.patch_syscall_site(m, ret, call.nr);
        }
        Some(k.syscall(m, call))
    });
    match served {
        Some((outcome, out)) => Served::of(outcome, out),
        None => Served {
            outcome: SyscallOutcome::Exit(125),
            fs_base: None,
            resume: None,
            space: 0,
        },
    }
}

/// Preempts the running process at `regs` (exact: stopped between two instructions) if
/// another can run; `None` leaves it running.
pub fn preempt(core: &Mutex<Core>, regs: UserRegs, vcpu: &VcpuFd) -> Option<Served> {
    with_kernel(core, regs, Some(vcpu), |k, m| k.preempt(m))
        .map(|(outcome, out)| Served::of(outcome, out))
}

/// The running process took a fault it cannot go on from (`signal` at `addr`, its exact
/// registers `regs`): a handler of it runs, or it dies.
/// `in_stub`: the fault was in the syscall stub, on the stub's stack, where no handler can
/// run: the process dies of it.
fn fault_signal(
    core: &Mutex<Core>,
    regs: UserRegs,
    vcpu: &VcpuFd,
    signal: i32,
    addr: u64,
    in_stub: bool,
) -> Option<Served> {
    with_kernel(core, regs, Some(vcpu), |k, m| {
        Some(if in_stub {
            k.fatal_fault(m, signal, addr)
        } else {
            k.user_fault(m, signal, addr)
        })
    })
    .map(|(outcome, out)| Served::of(outcome, out))
}

/// The app's registers as KVM holds them when it stopped between two instructions.
fn exact_user_regs(regs: &kvm_bindings::kvm_regs, sregs: &kvm_bindings::kvm_sregs) -> UserRegs {
    UserRegs {
        rax: regs.rax,
        rbx: regs.rbx,
        rcx: regs.rcx,
        rdx: regs.rdx,
        rsi: regs.rsi,
        rdi: regs.rdi,
        rbp: regs.rbp,
        rsp: regs.rsp,
        r8: regs.r8,
        r9: regs.r9,
        r10: regs.r10,
        r11: regs.r11,
        r12: regs.r12,
        r13: regs.r13,
        r14: regs.r14,
        r15: regs.r15,
        rip: regs.rip,
        rflags: regs.rflags,
        fs_base: sregs.fs.base,
    }
}

/// Whether the kernel wants the running process preempted (checked by the timer without
/// waiting for the lock: a busy lock means a call is being served anyway).
fn wants_preemption(core: &Mutex<Core>) -> bool {
    let Ok(guard) = core.try_lock() else {
        return false;
    };
    guard
        .kernel
        .as_ref()
        .is_some_and(|k| k.wants_preemption(clock_ns(libc::CLOCK_MONOTONIC)))
}

/// The host's first /proc/cpuinfo entry (the vCPU has the host CPU's CPUID), read once at
/// boot: a confined VMM opens no host path ([`jail`]).
fn host_cpu_entry() -> &'static [u8] {
    static ENTRY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ENTRY.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let first = host.split("\n\n").next().unwrap_or_default();
        format!("{first}\n\n").into_bytes()
    })
}

/// The vCPU thread's stack: qkernel's deepest paths (ELF loading, path walks) run on it, as
/// on the main thread before (8 MiB, the usual main-thread size).
const VCPU_STACK: usize = 8 << 20;

/// The time slice: how long a process runs before another runnable one gets the vCPU.
const TIME_SLICE: Duration = Duration::from_millis(10);

/// Set while the vCPU thread is inside KVM_RUN, so the timer kicks only a running guest.
static IN_GUEST: AtomicBool = AtomicBool::new(false);

/// The timer asked for a switch: if the kick found the app in a syscall (the stub), the
/// switch happens when that call is done, on the vCPU thread.
pub(crate) static PREEMPT_REQUESTED: AtomicBool = AtomicBool::new(false);

/// The preemption timer: every time slice, kicks the vCPU out of the guest when another
/// process could run.
struct Timer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Timer {
    fn start(
        core: Arc<Mutex<Core>>,
        clock: Option<Arc<VClock>>,
        kick: impl Fn() + Send + 'static,
    ) -> Timer {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("qvisor-timer".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    // Parked rather than slept, so stopping it does not wait a slice.
                    std::thread::park_timeout(TIME_SLICE);
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(clock) = &clock {
                        clock.update();
                    }
                    if IN_GUEST.load(Ordering::SeqCst) && wants_preemption(&core) {
                        PREEMPT_REQUESTED.store(true, Ordering::SeqCst);
                        kick();
                    }
                }
            })
            .ok();
        Timer { stop, thread }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Serves a call on the polled path, under one lock, only if it need not wait, switch
/// processes or run a signal handler ([`Kernel::try_syscall_nowait`]). `None` sends it to the
/// vCPU thread, where waiting costs no spinning thread and registers can be set.
/// `site` as for [`serve`]: patched before the call is served (an exec would replace the
/// code it is in).
pub fn serve_polled(
    core: &Mutex<Core>,
    call: SyscallArgs,
    site: Option<u64>,
) -> Option<(SyscallOutcome, Option<u64>)> {
    if PREEMPT_REQUESTED.load(Ordering::Relaxed) {
        return None; // the vCPU thread serves it and switches after
    }
    // Every call is served as one that must not wait nor switch: those go to the vCPU.
    with_kernel(core, UserRegs::default(), None, |k, m| {
        if let Some(ret) = site {
            k.patch_syscall_site(m, ret, call.nr);
        }
        k.try_syscall_nowait(m, call)
    })
    .map(|(outcome, out)| (outcome, out.fs_base))
}

pub struct Vm {
    vcpu: VcpuFd,
    _vm: VmFd,
    _kvm: Kvm,
    core: Arc<Mutex<Core>>,
    /// The polled syscall path is set up (stub and mailbox mapped, LSTAR at the stub).
    polled: bool,
    /// The stub may serve socket reads (`fastread`), once the network is up.
    fast_reads: bool,
    pub exits: u64,
    /// Calls the stub took back from a host thread that did not pick them up in time.
    pub taken_back: u64,
    /// Set when the container is stopped from outside, so socket calls parked on the
    /// syscall thread give up (EINTR) and the network can be torn down.
    cancel: Arc<AtomicBool>,
}

/// qkernel's view of the machine during one exit.
struct GuestMachine<'a> {
    mem: &'a mut GuestMemory,
    sites: Option<&'a mut SiteTable>,
    rootfs: &'a mut RootFs,
    pages: &'a mut SharedFilePages,
    net: Option<&'a mut GuestNet>,
    fs_base: Option<u64>,
    cancel: &'a AtomicBool,
    /// The app's registers at the call (vCPU thread only).
    regs: UserRegs,
    /// Registers to resume with instead of returning a value.
    resume: Option<UserRegs>,
    /// The vCPU, for its FPU state (vCPU thread only: the polled path never switches).
    vcpu: Option<&'a VcpuFd>,
    /// Requests from outside and the initial FPU state (none while loading the first
    /// program).
    host: Option<(&'a HostQueue, &'a [u8])>,
    /// The vCPU thread's CPU-time clock (see `Core::vcpu_clock`).
    vcpu_clock: Option<libc::clockid_t>,
    /// See `Core::clock`.
    clock: Option<&'a VClock>,
}

/// The app's buffers (iovecs, in order) that a socket call's bytes are copied into or out of,
/// through the same checks as every copy on the app's behalf (and, as for its writes, nothing
/// at or above `USER_HALF_END`).
struct UserIovecs<'a> {
    mem: &'a mut GuestMemory,
    iov: &'a [(u64, u64)],
    /// Bytes moved so far, over all the iovecs.
    at: u64,
}

impl UserIovecs<'_> {
    /// Copies up to `n` bytes from `src` into the buffers after those filled; says how many
    /// it took. A bad page ends it there: what came before is the call's result, as Linux's
    /// TCP returns it, and the rest stays with the stack.
    ///
    /// # Safety
    /// `src` is valid for reads of `n` bytes and outside guest memory.
    unsafe fn take(&mut self, src: *const u8, n: usize) -> usize {
        self.walk(n, |mem, va, done, len| {
            // SAFETY: [done, done + len) lies inside the caller's `n` readable bytes.
            unsafe { mem.write_user_from(va, src.add(done), len) }
        })
    }

    /// Copies up to `n` bytes of the buffers after those sent into `dst`; says how many it
    /// gave (fewer at a bad page).
    ///
    /// # Safety
    /// `dst` is valid for writes of `n` bytes and outside guest memory.
    unsafe fn give(&mut self, dst: *mut u8, n: usize) -> usize {
        self.walk(n, |mem, va, done, len| {
            // SAFETY: [done, done + len) lies inside the caller's `n` writable bytes.
            unsafe { mem.read_user_into(va, dst.add(done), len) }
        })
    }

    /// Runs `copy(mem, va, done, len)` over the next `n` bytes of the buffers, piece by piece
    /// (`done`: bytes of this call before the piece); stops at the first piece it cannot copy
    /// whole. Returns the bytes copied.
    fn walk(
        &mut self,
        n: usize,
        mut copy: impl FnMut(&mut GuestMemory, u64, usize, usize) -> Result<(), Fault>,
    ) -> usize {
        let mut moved = 0usize;
        let mut skip = self.at;
        for &(base, len) in self.iov {
            if moved == n {
                break;
            }
            if skip >= len {
                skip -= len;
                continue;
            }
            let va = base.wrapping_add(skip);
            let want = (len - skip).min((n - moved) as u64);
            let room = want.min(USER_HALF_END.saturating_sub(va)) as usize;
            skip = 0;
            let done = match copy(self.mem, va, moved, room) {
                Ok(()) => room,
                Err(f) => (f.addr.saturating_sub(va) as usize).min(room),
            };
            moved += done;
            if (done as u64) < want {
                break; // a bad page, or the kernel half
            }
        }
        self.at += moved as u64;
        moved
    }
}

/// Size of the legacy XSAVE area KVM_GET_XSAVE fills (XCR0 = x87|SSE|AVX needs 832 bytes).
const XSAVE_BYTES: usize = 4096;

impl GuestMachine<'_> {
    fn net(&mut self) -> Result<&mut GuestNet, i64> {
        self.net.as_deref_mut().ok_or(97) // EAFNOSUPPORT: no network configured
    }
}

impl Machine for GuestMachine<'_> {
    fn map_zeroed(&mut self, va: u64, len: u64, flags: PageFlags) -> Result<(), Fault> {
        self.mem.map_user(va, len, flags)
    }
    fn map_zeroed_shared(&mut self, va: u64, len: u64, flags: PageFlags) -> Result<(), Fault> {
        self.mem.map_user_shared(va, len, flags)
    }
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Fault> {
        self.mem.read_user(va, buf)
    }
    fn write(&mut self, va: u64, buf: &[u8]) -> Result<(), Fault> {
        // The syscall stub and the trampolines of patched sites are pages every address
        // space shares, user-visible because this host runs them at CPL 3: a syscall writing
        // into them (read(2) into STUB_VA) would let one process break every other's syscalls.
        // Nothing in the kernel half is the app's to have written, so EFAULT, as on Linux.
        let end = va.saturating_add(buf.len() as u64);
        if end > USER_HALF_END {
            return Err(Fault {
                addr: va.max(USER_HALF_END),
            });
        }
        self.mem.write_user(va, buf)
    }
    fn syscall_site_jump(&mut self, ret: u64, nr: u32) -> Option<[u8; 7]> {
        self.sites.as_deref_mut()?.jump_for(self.mem, ret, nr)
    }
    fn console_write(&mut self, fd: i32, data: &[u8]) -> std::io::Result<usize> {
        use std::io::Write;
        match fd {
            2 => std::io::stderr().write(data),
            _ => {
                let mut out = std::io::stdout();
                let n = out.write(data)?;
                out.flush()?;
                Ok(n)
            }
        }
    }
    fn console_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        std::io::stdin().read(buf)
    }
    fn console_readable(&mut self) -> bool {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        // An error or a closed stdin: a read returns at once too.
        n != 0
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
    fn take_host_signals(&mut self) -> u64 {
        HOST_SIGNALS.swap(0, Ordering::SeqCst)
    }
    fn realtime_ns(&self) -> u64 {
        self.clock
            .map_or_else(|| clock_ns(libc::CLOCK_REALTIME), VClock::realtime_ns)
    }
    fn monotonic_ns(&self) -> u64 {
        self.clock
            .map_or_else(|| clock_ns(libc::CLOCK_MONOTONIC), VClock::monotonic_ns)
    }
    fn vdso(&self) -> Option<qkernel::Vdso> {
        self.clock.map(|_| qkernel::Vdso {
            image: VDSO_VA,
            image_len: VDSO_IMAGE.len() as u64,
            data: VVAR_VA,
        })
    }
    fn cpu_time_ns(&self) -> u64 {
        self.vcpu_clock
            .map_or_else(|| clock_ns(libc::CLOCK_MONOTONIC), clock_ns)
    }
    fn random(&mut self, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            // SAFETY: writes at most buf.len() - done bytes into buf[done..].
            let n = unsafe {
                libc::getrandom(
                    buf[done..].as_mut_ptr() as *mut libc::c_void,
                    buf.len() - done,
                    0,
                )
            };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
    }
    fn set_thread_pointer(&mut self, fs_base: u64) {
        self.fs_base = Some(fs_base);
    }
    fn sleep_ns(&mut self, ns: u64) {
        // In slices, so a container stopped from outside does not finish its sleep first.
        const SLICE: Duration = Duration::from_millis(50);
        let end = std::time::Instant::now() + Duration::from_nanos(ns);
        // A host signal or request for the guest ends the sleep too: the kernel looks at it.
        while !self.cancel.load(Ordering::Relaxed)
            && HOST_SIGNALS.load(Ordering::Relaxed) == 0
            && !HOST_REQUESTS.load(Ordering::Relaxed)
        {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let slice = left.min(SLICE);
            let ts = libc::timespec {
                tv_sec: slice.as_secs() as libc::time_t,
                tv_nsec: slice.subsec_nanos() as libc::c_long,
            };
            // SAFETY: a valid timespec; no remainder wanted. Not std's sleep, which sleeps on
            // after a signal: a kick (a request from outside) ends this one at once.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        }
    }
    fn user_regs(&self) -> UserRegs {
        self.regs
    }
    fn set_user_regs(&mut self, regs: &UserRegs) {
        self.resume = Some(*regs);
    }
    fn fpu_state(&mut self) -> Result<Vec<u8>, i64> {
        xsave_bytes(self.vcpu.ok_or(38i64)?)
    }
    fn fpu_initial(&self) -> Result<Vec<u8>, i64> {
        match self.host {
            Some((_, fpu)) if !fpu.is_empty() => Ok(fpu.to_vec()),
            _ => Err(38),
        }
    }
    fn take_host_requests(&mut self) -> Vec<qkernel::HostRequest> {
        let Some((host, _)) = self.host else {
            return Vec::new();
        };
        HOST_REQUESTS.store(false, Ordering::SeqCst);
        let pending: Vec<HostRequest> = lock(&host.requests).drain(..).collect();
        let mut out = Vec::new();
        for request in pending {
            match request {
                HostRequest::Signal { pid, sig } => {
                    out.push(qkernel::HostRequest::Signal { pid, sig })
                }
                HostRequest::Spawn { mut spec, stdio } => {
                    // The descriptors become files of the root's table, as the guest uses.
                    let mut files = Vec::new();
                    for fd in stdio {
                        match self.rootfs.adopt_stream(fd) {
                            Ok(f) => files.push(f),
                            Err(errno) => {
                                for f in files.drain(..) {
                                    self.rootfs.close(f);
                                }
                                let id = spec.id;
                                self.host_event(qkernel::HostEvent::Started {
                                    id,
                                    pid: Err(errno),
                                });
                                break;
                            }
                        }
                    }
                    if let [a, b, c] = files[..] {
                        spec.stdio = [a, b, c];
                        out.push(qkernel::HostRequest::Spawn(spec));
                    }
                }
            }
        }
        out
    }
    fn host_event(&mut self, event: qkernel::HostEvent) {
        let Some((host, _)) = self.host else {
            return;
        };
        let (id, last) = match event {
            qkernel::HostEvent::Started { id, pid } => (id, pid.is_err()),
            qkernel::HostEvent::Exited { id, .. } => (id, true),
        };
        let tx = {
            let mut waiters = lock(&host.waiters);
            if last {
                waiters.remove(&id)
            } else {
                waiters.get(&id).cloned()
            }
        };
        if let Some(tx) = tx {
            let _ = tx.send(event); // a waiter gone away has nothing to learn
        }
    }
    fn set_fpu_state(&mut self, state: &[u8]) -> Result<(), i64> {
        let vcpu = self.vcpu.ok_or(38i64)?;
        if state.len() != XSAVE_BYTES {
            return Err(22);
        }
        let mut x = kvm_bindings::kvm_xsave::default();
        for (w, b) in x.region.iter_mut().zip(state.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        // SAFETY: XCR0 is x87|SSE|AVX (set in Vm::new), whose state fits the 4 KiB legacy
        // area, so KVM reads no further than the struct.
        unsafe { vcpu.set_xsave(&x) }.map_err(|e| e.errno() as i64)
    }
    fn space_current(&self) -> SpaceId {
        self.mem.pml4
    }
    fn space_clone(&mut self) -> Result<SpaceId, i64> {
        self.mem.clone_space(self.mem.pml4).map_err(|_| 12) // ENOMEM
    }
    fn space_new(&mut self) -> Result<SpaceId, i64> {
        self.mem.new_space().map_err(|_| 12)
    }
    fn space_switch(&mut self, space: SpaceId) {
        self.mem.pml4 = space;
    }
    fn space_release(&mut self, space: SpaceId) {
        let last = self.mem.release_space(space);
        // Before anything is allocated again: the freed pages still hold the files' data.
        self.pages.released(self.mem, &last);
    }
    fn map_file_shared(
        &mut self,
        (va, len): (u64, u64),
        file: HostFile,
        (offset, fd_writable): (u64, bool),
        flags: PageFlags,
    ) -> Result<(), i64> {
        let fd = self.rootfs.fd(file)?;
        self.pages
            .map(self.mem, fd, fd_writable, (va, len, offset), flags)
    }
    fn resident_bytes(&self, space: SpaceId, start: u64, end: u64) -> u64 {
        self.mem.resident_bytes(space, start, end)
    }
    fn shared_memory_key(&self, va: u64) -> Option<u64> {
        self.mem.translate(va).map(|(gpa, _)| gpa) // one guest-physical page for all
    }
    fn sync_file_pages(&mut self, va: u64, len: u64) -> Result<(), i64> {
        self.pages.write_back_range(self.mem, va, len)
    }
    fn fs_open(&mut self, path: &[u8], flags: i32, mode: u32) -> Result<HostFile, i64> {
        let file = self.rootfs.open_file(path, flags, mode)?;
        if flags & libc::O_TRUNC != 0 && !self.pages.is_empty() {
            // Truncated to nothing: a shared mapping of it reads zeros from now on.
            self.pages.truncated(self.mem, self.rootfs.fd(file)?, 0);
        }
        Ok(file)
    }
    fn fs_close(&mut self, file: HostFile) {
        if let Ok(fd) = self.rootfs.fd(file) {
            self.pages.forget_fd(fd);
        }
        self.rootfs.close(file)
    }
    fn fs_read(
        &mut self,
        file: HostFile,
        buf: &mut [u8],
        offset: Option<u64>,
    ) -> Result<usize, i64> {
        let n = self.rootfs.read(file, buf, offset)?;
        let fd = self.rootfs.fd(file)?;
        if self.pages.reads_through(fd) {
            // While a file is mapped shared and writable, its pages are its data.
            let at = file_offset(fd, offset, n);
            self.pages.read_through(self.mem, fd, at, &mut buf[..n]);
        }
        Ok(n)
    }
    fn tty_ioctl(&mut self, tty: qkernel::Tty, req: u64, data: &mut [u8]) -> Result<(), i64> {
        match tty {
            qkernel::Tty::Console(fd) => crate::rootfs::terminal_ioctl(fd, req, data),
            qkernel::Tty::File(file) => self.rootfs.tty_ioctl(file, req, data),
        }
    }
    fn fs_readable(&mut self, file: HostFile) -> bool {
        self.rootfs.readable_now(file)
    }
    fn fs_write(&mut self, file: HostFile, buf: &[u8], offset: Option<u64>) -> Result<usize, i64> {
        let n = self.rootfs.write(file, buf, offset)?;
        let fd = self.rootfs.fd(file)?;
        if self.pages.writes_through(fd) {
            let at = file_offset(fd, offset, n);
            self.pages.write_through(self.mem, fd, at, &buf[..n]);
        }
        Ok(n)
    }
    fn fs_seek(&mut self, file: HostFile, offset: i64, whence: i32) -> Result<u64, i64> {
        self.rootfs.seek(file, offset, whence)
    }
    fn fs_stat(&mut self, file: HostFile) -> Result<RawStat, i64> {
        self.rootfs.stat(file)
    }
    fn memory_info(&self) -> (u64, u64) {
        (self.mem.size(), self.mem.used())
    }
    fn cpuinfo(&self) -> Vec<u8> {
        host_cpu_entry().to_vec()
    }
    fn fs_unlink(&mut self, path: &[u8], dir: bool) -> Result<(), i64> {
        self.rootfs.unlink(path, dir)
    }
    fn fs_mkdir(&mut self, path: &[u8], mode: u32) -> Result<(), i64> {
        self.rootfs.mkdir(path, mode)
    }
    fn fs_rename(&mut self, from: &[u8], to: &[u8], flags: u32) -> Result<(), i64> {
        self.rootfs.rename(from, to, flags)
    }
    fn fs_link(&mut self, from: &[u8], to: &[u8]) -> Result<(), i64> {
        self.rootfs.link(from, to)
    }
    fn fs_symlink(&mut self, target: &[u8], path: &[u8]) -> Result<(), i64> {
        self.rootfs.symlink(target, path)
    }
    fn fs_set_attr(
        &mut self,
        path: Option<&[u8]>,
        file: Option<HostFile>,
        follow: bool,
        attr: qkernel::FileAttr,
    ) -> Result<(), i64> {
        use crate::rootfs::Attr;
        let attr = match attr {
            qkernel::FileAttr::Owner(u, g) => Attr::Owner(u, g),
            qkernel::FileAttr::Mode(m) => Attr::Mode(m),
            qkernel::FileAttr::Times(t) => Attr::Times(t.map(|(s, ns)| libc::timespec {
                tv_sec: s,
                tv_nsec: ns,
            })),
        };
        match (path, file) {
            (Some(p), _) => self.rootfs.set_attr(p, follow, attr),
            (None, Some(f)) => self.rootfs.set_attr_fd(f, attr),
            (None, None) => Err(22),
        }
    }
    fn fs_truncate(&mut self, file: HostFile, len: u64) -> Result<(), i64> {
        self.rootfs.truncate(file, len)?;
        self.pages.truncated(self.mem, self.rootfs.fd(file)?, len);
        Ok(())
    }
    fn fs_allocate(&mut self, file: HostFile, mode: i32, offset: u64, len: u64) -> Result<(), i64> {
        self.rootfs.allocate(file, mode, offset, len)?;
        const PUNCH_HOLE: i32 = 0x2;
        const ZERO_RANGE: i32 = 0x10;
        if mode & (PUNCH_HOLE | ZERO_RANGE) != 0 {
            // Mapped shared pages are the file's data: they read as the zeros it now has.
            self.pages
                .zeroed(self.mem, self.rootfs.fd(file)?, offset, len);
        }
        Ok(())
    }
    fn fs_sync(&mut self, file: HostFile, data_only: bool) -> Result<(), i64> {
        self.pages
            .write_back_file(self.mem, self.rootfs.fd(file)?)?;
        self.rootfs.sync(file, data_only)
    }
    fn fs_statfs(&mut self, path: &[u8]) -> Result<[u8; 120], i64> {
        self.rootfs.statfs_path(path)
    }
    fn fs_stat_path(&mut self, path: &[u8], follow_symlinks: bool) -> Result<RawStat, i64> {
        self.rootfs.stat_path(path, follow_symlinks)
    }
    fn fs_getdents(&mut self, file: HostFile, buf: &mut [u8]) -> Result<usize, i64> {
        self.rootfs.getdents(file, buf)
    }
    fn fs_readlink(&mut self, path: &[u8]) -> Result<Vec<u8>, i64> {
        self.rootfs.readlink(path)
    }
    fn net_socket(&mut self, stream: bool) -> Result<qkernel::SocketId, i64> {
        self.net()?.socket(stream)
    }
    fn net_sendto(
        &mut self,
        s: qkernel::SocketId,
        buf: &[u8],
        ip: u32,
        port: u16,
        nonblocking: bool,
    ) -> Result<usize, i64> {
        self.net()?.sendto(s, buf, ip, port, nonblocking)
    }
    fn net_recvfrom(
        &mut self,
        s: qkernel::SocketId,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<(usize, Option<(u32, u16)>), i64> {
        self.net()?.recvfrom(s, buf, nonblocking)
    }
    fn net_bind(&mut self, s: qkernel::SocketId, ip: u32, port: u16) -> Result<(), i64> {
        self.net()?.bind(s, ip, port)
    }
    fn net_listen(&mut self, s: qkernel::SocketId, backlog: u32) -> Result<(), i64> {
        self.net()?.listen(s, backlog)
    }
    fn net_accept(
        &mut self,
        s: qkernel::SocketId,
        nonblocking: bool,
    ) -> Result<(qkernel::SocketId, u32, u16), i64> {
        self.net()?.accept(s, nonblocking)
    }
    fn net_connect(
        &mut self,
        s: qkernel::SocketId,
        ip: u32,
        port: u16,
        nonblocking: bool,
    ) -> Result<(), i64> {
        self.net()?.connect(s, ip, port, nonblocking)
    }
    fn net_take_error(&mut self, s: qkernel::SocketId) -> Result<i64, i64> {
        self.net()?.take_error(s)
    }
    fn net_set_option(
        &mut self,
        s: qkernel::SocketId,
        level: u32,
        name: u32,
        value: u64,
    ) -> Result<(), i64> {
        self.net()?.set_option(s, level, name, value)
    }
    fn net_option(&mut self, s: qkernel::SocketId, level: u32, name: u32) -> Result<u64, i64> {
        self.net()?.option(s, level, name)
    }
    fn net_pending(&mut self, s: qkernel::SocketId) -> Result<usize, i64> {
        self.net()?.pending(s)
    }
    fn net_send(
        &mut self,
        s: qkernel::SocketId,
        buf: &[u8],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        self.net()?.send(s, buf, nonblocking)
    }
    fn net_recv(
        &mut self,
        s: qkernel::SocketId,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        self.net()?.recv(s, buf, nonblocking)
    }
    fn net_recv_user(
        &mut self,
        s: qkernel::SocketId,
        iov: &[(u64, u64)],
        nonblocking: bool,
    ) -> Result<(usize, Option<(u32, u16)>), i64> {
        // A stream's bytes go from the ring straight into the app's buffers.
        let max = usize::try_from(qkernel::iov_len(iov)).unwrap_or(usize::MAX);
        let mut into = UserIovecs {
            mem: &mut *self.mem,
            iov,
            at: 0,
        };
        let net = self.net.as_deref_mut().ok_or(97)?; // EAFNOSUPPORT: no network
        let copy = |src: *const u8, n: usize| {
            // SAFETY: the ring hands out pieces valid for reads of `n` bytes, in its own
            // mapping (not guest memory).
            unsafe { into.take(src, n) }
        };
        match net.recv_raw(s, max, nonblocking, copy) {
            Some(r) => r.map(|n| (n, None)),
            None => qkernel::net_recv_through_buffer(self, s, iov, nonblocking),
        }
    }
    fn net_send_user(
        &mut self,
        s: qkernel::SocketId,
        iov: &[(u64, u64)],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        // A stream's bytes go from the app's buffers straight into the ring.
        let max = usize::try_from(qkernel::iov_len(iov)).unwrap_or(usize::MAX);
        let mut from = UserIovecs {
            mem: &mut *self.mem,
            iov,
            at: 0,
        };
        let net = self.net.as_deref_mut().ok_or(97)?; // EAFNOSUPPORT: no network
        let fill = |dst: *mut u8, n: usize| {
            // SAFETY: the ring hands out transmit space valid for writes of `n` bytes, in its
            // own mapping (not guest memory).
            unsafe { from.give(dst, n) }
        };
        match net.send_raw(s, max, nonblocking, fill) {
            Some(r) => r,
            None => qkernel::net_send_through_buffer(self, s, iov, nonblocking),
        }
    }
    fn net_shutdown(&mut self, s: qkernel::SocketId, how: u32) -> Result<(), i64> {
        self.net()?.shutdown(s, how)
    }
    fn net_name(&mut self, s: qkernel::SocketId, peer: bool) -> Result<(u32, u16), i64> {
        self.net()?.name(s, peer)
    }
    fn net_poll(
        &mut self,
        socks: &[(qkernel::SocketId, bool, bool)],
        timeout_ms: i64,
    ) -> Result<Vec<qkernel::SocketReady>, i64> {
        self.net()?.poll(socks, timeout_ms)
    }
    fn net_close(&mut self, s: qkernel::SocketId) {
        if let Ok(n) = self.net() {
            n.close(s)
        }
    }
    fn net_fast_read(&mut self, fd: u64, s: qkernel::SocketId, blocking: bool) -> bool {
        self.net().is_ok_and(|n| n.fast_read(fd, s, blocking))
    }
    fn net_fast_forget(&mut self, fd: u64) {
        if let Ok(n) = self.net() {
            n.fast_forget(fd)
        }
    }
    fn net_read_done(&mut self, s: qkernel::SocketId) {
        if let Ok(n) = self.net() {
            n.read_done(s)
        }
    }
    fn net_write_done(&mut self, s: qkernel::SocketId) {
        if let Ok(n) = self.net() {
            n.write_done(s)
        }
    }
}

/// A lock that a thread panicking while it held it does not poison for the others.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The vCPU's XSAVE area as bytes (what qkernel keeps as a thread's FPU state).
fn xsave_bytes(vcpu: &VcpuFd) -> Result<Vec<u8>, i64> {
    let x = vcpu.get_xsave().map_err(|e| e.errno() as i64)?;
    Ok(x.region.iter().flat_map(|w| w.to_le_bytes()).collect())
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether `rip` is in the vDSO's code: the app's own code as far as signals and preemption
/// go (it runs on the app's stack with no handshake to finish).
fn in_vdso(rip: u64) -> bool {
    (VDSO_VA..VDSO_VA + VDSO_IMAGE.len() as u64).contains(&rip)
}

/// Whether the guest reads the host's TSC: KVM's view of the guest's TSC MSR falls between
/// two host readings around it.
fn guest_tsc_is_host_tsc(vcpu: &VcpuFd) -> bool {
    const MSR_IA32_TSC: u32 = 0x10;
    let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }]) else {
        return false;
    };
    let before = crate::vclock::tsc();
    let read = vcpu.get_msrs(&mut msrs);
    let after = crate::vclock::tsc();
    let guest = msrs.as_slice()[0].data;
    matches!(read, Ok(1)) && (before..=after).contains(&guest)
}

impl Vm {
    /// Creates the VM with `mem_size` bytes of guest memory and one vCPU, its files from
    /// `rootfs`.
    pub fn new(
        mem_size: u64,
        rootfs: RootFs,
        net: Option<GuestNet>,
        path: SyscallPath,
        cancel: Arc<AtomicBool>,
    ) -> anyhow::Result<Vm> {
        let polled = path.polled;
        let kvm = Kvm::new().context("opening /dev/kvm")?;
        host_cpu_entry(); // now, while host paths may be opened
        let vm = kvm.create_vm().context("creating the VM")?;
        let mut mem = GuestMemory::new(mem_size).context("reserving guest memory")?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mem.host_address(),
        };
        // SAFETY: the region is our own anonymous mapping of exactly that size, and it lives in
        // `mem`, which the Vm owns and drops after the VM fd.
        unsafe { vm.set_user_memory_region(region) }.context("registering guest memory")?;
        let mut vcpu = vm.create_vcpu(0).context("creating the vCPU")?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context("reading supported CPUID")?;
        vcpu.set_cpuid2(&cpuid).context("setting CPUID")?;
        Self::descriptor_tables(&mut mem)?;
        let mut sites = None;
        if polled {
            Self::syscall_stub(&mut mem)?;
            // Before any address space copies the kernel half: the socket rings' window.
            mem.share_kernel_table(fastread::SLOTS_VA)
                .map_err(|f| anyhow::anyhow!("making the socket rings' table: {f}"))?;
            if path.patching {
                sites = Some(
                    SiteTable::new(&mut mem)
                        .map_err(|f| anyhow::anyhow!("mapping the syscall trampolines: {f}"))?,
                );
            }
        }
        let clock = if path.vdso {
            Some(Arc::new(Self::vdso(&mut mem, &vcpu)?))
        } else {
            None
        };
        let msrs = Msrs::from_entries(&[
            kvm_msr_entry {
                index: MSR_STAR,
                data: (0x23 << 48) | (0x10 << 32),
                ..Default::default()
            },
            kvm_msr_entry {
                index: MSR_LSTAR,
                data: if polled { STUB_VA } else { LSTAR },
                ..Default::default()
            },
            // SFMASK: clear TF, DF, IF, IOPL, AC, NT on syscall.
            kvm_msr_entry {
                index: MSR_SFMASK,
                data: 0x47700,
                ..Default::default()
            },
        ])
        .map_err(|e| anyhow::anyhow!("building MSRs: {e:?}"))?;
        let n = vcpu.set_msrs(&msrs).context("setting MSRs")?;
        if n != 3 {
            bail!("KVM accepted {n} of 3 syscall MSRs");
        }
        let mut sregs = vcpu.get_sregs().context("reading sregs")?;
        sregs.cr0 = 0x8005_0033; // PG WP NE ET MP PE
        sregs.cr3 = mem.pml4;
        sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10) | (1 << 16) | (1 << 18); // PAE OSFXSR OSXMMEXCPT FSGSBASE OSXSAVE
        sregs.efer = 0xd01; // SCE LME LMA NXE
        sregs.cs = user_code();
        sregs.ss = user_data();
        let mut null = user_data();
        null.selector = 0;
        sregs.ds = null;
        sregs.es = null;
        sregs.fs = null;
        sregs.gs = null;
        sregs.ldt = kvm_segment {
            unusable: 1,
            ..Default::default()
        };
        sregs.tr = kvm_segment {
            base: TSS_VA,
            limit: 0x67,
            selector: 0x40,
            type_: 11,
            present: 1,
            ..Default::default()
        };
        sregs.gdt.base = GDT_VA;
        sregs.gdt.limit = 10 * 8 - 1;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr2 = CR2_NONE;
        vcpu.set_sregs(&sregs).context("setting sregs")?;
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = 7; // x87, SSE, AVX state
        vcpu.set_xcrs(&xcrs).context("setting XCR0")?;
        vcpu.set_sync_valid_reg(SyncReg::Register);
        vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
        Ok(Vm {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            core: Arc::new(Mutex::new(Core {
                mem,
                sites,
                rootfs,
                pages: SharedFilePages::default(),
                net,
                kernel: None,
                cancel: cancel.clone(),
                host: Arc::new(HostQueue::default()),
                initial_fpu: Vec::new(),
                vcpu_clock: None,
                clock,
            })),
            polled,
            fast_reads: path.fast_reads,
            exits: 0,
            taken_back: 0,
            cancel,
        })
    }

    /// A GDT with the selectors `syscall`/`sysret` imply, and a TSS, on supervisor-only pages.
    fn descriptor_tables(mem: &mut GuestMemory) -> anyhow::Result<()> {
        mem.map_supervisor(GDT_VA, PAGE)
            .map_err(|f| anyhow::anyhow!("mapping the GDT: {f}"))?;
        let mut gdt = [0u64; 10];
        gdt[2] = 0x00af_9b00_0000_ffff; // 0x10 kernel code
        gdt[3] = 0x00cf_9300_0000_ffff; // 0x18 kernel data
        gdt[4] = 0x00cf_fb00_0000_ffff; // 0x20 user code (32-bit)
        gdt[5] = 0x00cf_f300_0000_ffff; // 0x28 user data
        gdt[6] = 0x00af_fb00_0000_ffff; // 0x30 user code (64-bit)
        gdt[8] =
            0x67 | ((TSS_VA & 0xff_ffff) << 16) | (0x89 << 40) | (((TSS_VA >> 24) & 0xff) << 56);
        gdt[9] = TSS_VA >> 32;
        let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
        mem.write_supervisor(GDT_VA, &bytes)
            .map_err(|f| anyhow::anyhow!("writing the GDT: {f}"))?;
        // The TSS: I/O bitmap offset past its end (no port access).
        let mut tss = [0u8; 104];
        tss[102..104].copy_from_slice(&104u16.to_le_bytes());
        mem.write_supervisor(TSS_VA, &tss)
            .map_err(|f| anyhow::anyhow!("writing the TSS: {f}"))?;
        Ok(())
    }

    /// The vDSO and its data page (both read-only to the guest), and the clock that keeps the
    /// page. The page's curve is used only if the guest's TSC is the host's (this PVM host:
    /// guest user mode reads the host's TSC); otherwise the vDSO makes the syscalls.
    fn vdso(mem: &mut GuestMemory, vcpu: &VcpuFd) -> anyhow::Result<VClock> {
        let ro = PageFlags {
            write: false,
            exec: false,
        };
        let rx = PageFlags {
            write: false,
            exec: true,
        };
        let image_len = (VDSO_IMAGE.len() as u64).div_ceil(PAGE) * PAGE;
        mem.map_user(VVAR_VA, PAGE, ro)
            .and_then(|()| mem.map_user(VDSO_VA, image_len, rx))
            .and_then(|()| mem.write_user(VDSO_VA, VDSO_IMAGE))
            .map_err(|f| anyhow::anyhow!("mapping the vDSO: {f}"))?;
        let page = mem
            .host_page(VVAR_VA)
            .context("the vDSO data page has no host address")?;
        let same_tsc = guest_tsc_is_host_tsc(vcpu);
        if !same_tsc {
            tracing::debug!("the guest's TSC is not the host's: time calls make syscalls");
        }
        // SAFETY: the data page was just mapped, zeroed, and lives in guest memory as long
        // as the VM's Core, which holds the clock; only the clock writes it.
        Ok(unsafe { VClock::new(page, vcpu.get_tsc_khz().ok(), same_tsc) })
    }

    /// The polled path's stub (read-only, user-visible: this host runs the LSTAR target at
    /// CPL 3 and needs the U bit on its pages) and its mailbox page.
    fn syscall_stub(mem: &mut GuestMemory) -> anyhow::Result<()> {
        let rx = PageFlags {
            write: false,
            exec: true,
        };
        let rw = PageFlags {
            write: true,
            exec: false,
        };
        mem.map_user(STUB_VA, PAGE, rx)
            .and_then(|()| mem.write_user(STUB_VA, &poll::STUB))
            .and_then(|()| mem.map_user(MAILBOX_VA, PAGE, rw))
            .and_then(|()| {
                let ro = PageFlags {
                    write: false,
                    exec: false,
                };
                mem.map_user(poll::FAST_TABLE_VA, PAGE, ro)
            })
            .map_err(|f| anyhow::anyhow!("mapping the syscall stub: {f}"))
    }

    /// Lets the stub serve socket reads from the network's rings (`fastread`), if this VM
    /// polls and asked for it. Once the network is up and before the app runs.
    pub fn enable_fast_reads(&mut self) -> anyhow::Result<()> {
        if !(self.polled && self.fast_reads) {
            return Ok(());
        }
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let Core { mem, net, .. } = &mut *core;
        let Some(net) = net.as_mut() else {
            return Ok(());
        };
        let Some(client) = net.live_client() else {
            return Ok(());
        };
        let page = mem
            .host_page(MAILBOX_VA)
            .context("the mailbox page is not mapped")?;
        // SAFETY: the mailbox page lives in guest memory, which the Core owns.
        let mailbox = unsafe { Mailbox::new(page) };
        let limit = net.fast_ring_limit(client.recv_buffer_size());
        if let Some(fast) = FastReads::enable(&self._kvm, &self._vm, mem, mailbox, &client, limit)?
        {
            net.set_fast_reads(fast);
        }
        Ok(())
    }

    /// How many socket reads and writes the stub served itself (its own count, which the app
    /// could change: a statistic).
    pub fn stub_socket_io(&self) -> u64 {
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        match core.mem.host_page(MAILBOX_VA) {
            // SAFETY: the mailbox page lives in guest memory, which the Core owns.
            Some(page) if self.polled => unsafe { Mailbox::new(page) }.read(poll::FAST_COUNT),
            _ => 0,
        }
    }

    /// How many syscall sites were patched (0 with patching off).
    pub fn patched_sites(&self) -> usize {
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        core.sites.as_ref().map_or(0, SiteTable::patched)
    }

    /// Replaces the container's network (before the app runs: nothing uses the old one yet).
    pub fn attach_net(&mut self, setup: crate::net::NetSetup, memory: u64) -> anyhow::Result<()> {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        // The old network goes first: the new one reuses its attach socket's path.
        let old = core.net.take();
        let proxy = old.as_ref().and_then(|n| n.http_proxy().cloned());
        drop(old);
        core.net = Some(GuestNet::new(setup, self.cancel.clone(), memory, proxy)?);
        Ok(())
    }

    /// Works on the container's network, if it has one.
    pub fn with_net<R>(&mut self, f: impl FnOnce(&mut GuestNet) -> R) -> Option<R> {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        core.net.as_mut().map(f)
    }

    /// Where requests from outside (exec) go.
    pub fn host_queue(&self) -> Arc<HostQueue> {
        self.core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .host
            .clone()
    }

    /// Lets qkernel work on the machine outside of a run (loading the program).
    pub fn with_machine<R>(&mut self, f: impl FnOnce(&mut dyn Machine) -> R) -> R {
        let mut guard = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let Core {
            mem,
            rootfs,
            pages,
            cancel,
            clock,
            ..
        } = &mut *guard;
        let mut machine = GuestMachine {
            mem,
            sites: None,
            rootfs,
            pages,
            net: None,
            fs_base: None,
            cancel,
            regs: UserRegs::default(),
            resume: None,
            vcpu: None,
            host: None,
            vcpu_clock: None,
            clock: clock.as_deref(),
        };
        f(&mut machine)
    }

    /// Runs the app from `entry` with stack `sp` until it exits or is killed (call
    /// [`install_stop_signals`] first, while sigaction is allowed), on a thread of
    /// its own that stacks the vCPU's seccomp filter (`mode`) before the app's first
    /// instruction; the calling thread waits, and tears down afterwards under the process's
    /// filter alone.
    pub fn run(&mut self, kernel: Kernel, entry: u64, sp: u64, mode: Mode) -> anyhow::Result<Stop> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("qvisor-vcpu".into())
                .stack_size(VCPU_STACK)
                .spawn_scoped(s, || self.run_on_this_thread(kernel, entry, sp, mode))
                .context("starting the vCPU thread")?
                .join()
                .map_err(|_| anyhow::anyhow!("the vCPU thread panicked"))?
        })
    }

    fn run_on_this_thread(
        &mut self,
        kernel: Kernel,
        entry: u64,
        sp: u64,
        mode: Mode,
    ) -> anyhow::Result<Stop> {
        {
            let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
            core.kernel = Some(kernel);
            core.vcpu_clock = vcpu_thread_clock();
            // Before the app runs, the vCPU's FPU is in its reset state.
            core.initial_fpu = xsave_bytes(&self.vcpu).unwrap_or_default();
        }
        {
            let s = self.vcpu.sync_regs_mut();
            s.regs = Default::default();
            s.regs.rip = entry;
            s.regs.rsp = sp;
            s.regs.rflags = 0x202;
        }
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        IMMEDIATE_EXIT.store(
            &mut self.vcpu.get_kvm_run().immediate_exit as *mut u8,
            Ordering::SeqCst,
        );
        CANCEL.store(Arc::as_ptr(&self.cancel).cast_mut(), Ordering::SeqCst);
        let poller = if self.polled {
            let page = self
                .core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .mem
                .host_page(MAILBOX_VA)
                .context("the mailbox page is not mapped")?;
            // SAFETY: the page belongs to guest memory, which outlives the poller (joined at
            // the end of this function).
            let mailbox = unsafe { Mailbox::new(page) };
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            let kick = move || {
                // SAFETY: signals this (still running) vCPU thread; the handler is installed.
                unsafe { libc::pthread_kill(me, KICK_SIGNAL) };
            };
            Some((
                Poller::start(self.core.clone(), mailbox, kick, mode)?,
                mailbox,
            ))
        } else {
            None
        };
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let clock = self
            .core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clock
            .clone();
        let timer = Timer::start(self.core.clone(), clock, move || {
            // SAFETY: signals this (still running) vCPU thread; the handler is installed and
            // the timer is joined before the thread leaves run.
            unsafe { libc::pthread_kill(me, KICK_SIGNAL) };
        });
        VCPU_THREAD.store(me as u64, Ordering::SeqCst);
        // The runtime's signals come here from now on (the poller and timer, started above,
        // keep holding them).
        take_process_signals();
        let stop = jail::confine_thread(ThreadKind::Vcpu, mode)
            .context("confining the vCPU thread")
            .and_then(|()| self.run_loop(poller.as_ref()));
        VCPU_THREAD.store(0, Ordering::SeqCst);
        drop(timer);
        drop(poller);
        IMMEDIATE_EXIT.store(std::ptr::null_mut(), Ordering::SeqCst);
        CANCEL.store(std::ptr::null_mut(), Ordering::SeqCst);
        stop
    }

    fn run_loop(&mut self, poller: Option<&(Poller, Mailbox)>) -> anyhow::Result<Stop> {
        loop {
            if let Some(stop) = poller.and_then(|(p, _)| p.exited()).and_then(Stop::of) {
                return Ok(stop);
            }
            let sig = STOP_SIGNAL.load(Ordering::SeqCst);
            if sig != 0 {
                self.cancel.store(true, Ordering::SeqCst);
                return Ok(Stop::Killed {
                    signal: sig,
                    reason: format!("stopped by the host (signal {sig})"),
                });
            }
            IN_GUEST.store(true, Ordering::SeqCst);
            let ran = self.vcpu.run();
            IN_GUEST.store(false, Ordering::SeqCst);
            match ran {
                Ok(VcpuExit::Shutdown) => {}
                Ok(VcpuExit::Hlt) => {}
                Ok(other) => bail!("unexpected vCPU exit: {other:?}"),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // A kick: stop and poller exits are looked at on top of the loop; the
                    // timer's asks for a switch to another process.
                    self.vcpu.set_kvm_immediate_exit(0);
                    if HOST_SIGNALS.load(Ordering::SeqCst) != 0
                        || HOST_REQUESTS.load(Ordering::SeqCst)
                    {
                        // A signal for the guest: the in-flight call (if the app is in the
                        // stub) goes to the vCPU thread, which hands it over at its end.
                        PREEMPT_REQUESTED.store(true, Ordering::SeqCst);
                    }
                    self.preempt_if_due()?;
                    continue;
                }
                Err(e) => return Err(e).context("KVM_RUN"),
            }
            self.exits += 1;
            let sync = self.vcpu.sync_regs();
            let (regs, sregs) = (sync.regs, sync.sregs);
            // A trapped syscall: straight from the registers, or (polled path, host thread
            // asleep) from the mailbox the stub filled before it trapped.
            let (call, rip, rsp, rflags, site) = match (regs.rip, poller) {
                (LSTAR, _) => (
                    SyscallArgs {
                        nr: regs.rax,
                        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
                    },
                    regs.rcx,
                    regs.rsp,
                    regs.r11,
                    None, // no stub to jump to: nothing is patched
                ),
                (SLOW_RIP, Some((_, mb))) => (
                    {
                        self.taken_back += u64::from(mb.taken_back());
                        mb.call()
                    },
                    mb.read(poll::URIP),
                    mb.read(poll::URSP),
                    mb.read(poll::UFLAGS),
                    mb.via_syscall_instruction().then(|| mb.read(poll::URIP)),
                ),
                _ if sregs.cr2 != CR2_NONE && self.resolve_page_fault(sregs.cr2) => {
                    // Mapped now: the app runs the faulting instruction again.
                    let s = self.vcpu.sync_regs_mut();
                    s.sregs.cr2 = CR2_NONE;
                    self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
                    continue;
                }
                _ if poll::FAST_BODY.contains(&regs.rip) => {
                    // A fast read that cannot go on (a bad buffer, a forged table): the stub
                    // makes the ordinary call instead, which reports what Linux would.
                    let s = self.vcpu.sync_regs_mut();
                    s.regs.rip = poll::FAST_RETREAT;
                    s.sregs.cr2 = CR2_NONE;
                    self.vcpu.set_sync_dirty_reg(SyncReg::Register);
                    self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
                    continue;
                }
                _ => {
                    if let Some(stop) = self.deliver_fault(regs.rip, sregs.cr2)? {
                        return Ok(stop);
                    }
                    continue;
                }
            };
            let app = UserRegs {
                rax: call.nr,
                rbx: regs.rbx,
                rcx: rip,
                rdx: regs.rdx,
                rsi: regs.rsi,
                rdi: regs.rdi,
                rbp: regs.rbp,
                rsp,
                r8: regs.r8,
                r9: regs.r9,
                r10: regs.r10,
                r11: rflags,
                r12: regs.r12,
                r13: regs.r13,
                r14: regs.r14,
                r15: regs.r15,
                rip,
                rflags,
                fs_base: sregs.fs.base,
            };
            // A fast read's trap while the host thread sleeps (a wait, or the note after a
            // read) does not wake it: a bulk reader's calls are all such traps.
            let quiet = regs.rip == SLOW_RIP && poller.is_some_and(|(_, mb)| mb.quiet_trap());
            let served = serve(&self.core, call, app, &self.vcpu, site);
            if let Some(stop) = Stop::of(served.outcome) {
                return Ok(stop);
            }
            if let Some((p, _)) = poller.filter(|_| !quiet) {
                p.resume();
            }
            match (served.outcome, served.resume) {
                // Another process, a new program, or the call again: every register.
                (SyscallOutcome::Resume, Some(r)) => self.load_regs(&r, sregs, served.space),
                // Back to user mode where `syscall` left it: rip = rcx, rflags = r11.
                (SyscallOutcome::Return(value), _) => {
                    let r = UserRegs {
                        rax: value as u64,
                        fs_base: served.fs_base.unwrap_or(app.fs_base),
                        ..app
                    };
                    self.load_regs(&r, sregs, served.space);
                    if PREEMPT_REQUESTED.load(Ordering::SeqCst) {
                        // The timer found the app in this call: switch now it is done.
                        self.preempt_if_due()?;
                    }
                }
                (other, _) => bail!("qkernel gave {other:?} without registers"),
            }
        }
    }

    /// Switches to another process if one is waiting for the vCPU and the app was stopped in
    /// its own code (not in the syscall stub, whose mailbox handshake must finish first).
    fn preempt_if_due(&mut self) -> anyhow::Result<()> {
        let sync = self.vcpu.sync_regs();
        let (regs, sregs) = (sync.regs, sync.sregs);
        if (regs.rip >= LSTAR && !in_vdso(regs.rip)) || sregs.cs.selector != 0x33 {
            return Ok(());
        }
        let app = exact_user_regs(&regs, &sregs);
        PREEMPT_REQUESTED.store(false, Ordering::SeqCst);
        let Some(served) = preempt(&self.core, app, &self.vcpu) else {
            return Ok(());
        };
        if let Some(stop) = Stop::of(served.outcome) {
            bail!("preemption ended the app: {stop:?}");
        }
        let Some(r) = served.resume else {
            return Ok(());
        };
        self.load_regs(&r, sregs, served.space);
        Ok(())
    }

    /// A fault of the app the kernel did not resolve at `rip` (`cr2`: the address of a page
    /// fault): the faulting process takes the signal Linux would send (its handler runs, or
    /// it dies and another process runs). Some: the container ends (its init died of it, or
    /// the fault was in the syscall stub, the kernel's own code).
    fn deliver_fault(&mut self, rip: u64, cr2: u64) -> anyhow::Result<Option<Stop>> {
        let stop = self.fault(rip, cr2);
        let Stop::Killed { signal, reason } = &stop else {
            return Ok(Some(stop));
        };
        let sync = self.vcpu.sync_regs();
        let (regs, sregs) = (sync.regs, sync.sregs);
        // The stub runs in user mode on behalf of whichever process called it: a fault there
        // (a mailbox another process forged, a jump into the stub) is that process's, not the
        // kernel's.
        let in_stub = (STUB_VA..STUB_VA + PAGE).contains(&regs.rip);
        if (regs.rip >= LSTAR && !in_stub && !in_vdso(regs.rip)) || sregs.cs.selector != 0x33 {
            return Ok(Some(stop));
        }
        tracing::debug!(signal, reason = %reason, "fault in the app");
        let addr = if cr2 != CR2_NONE { cr2 } else { rip };
        let app = exact_user_regs(&regs, &sregs);
        let Some(served) = fault_signal(&self.core, app, &self.vcpu, *signal, addr, in_stub) else {
            return Ok(Some(stop));
        };
        if Stop::of(served.outcome).is_some() {
            return Ok(Some(stop)); // init died of it: the fault's own message
        }
        let Some(r) = served.resume else {
            bail!(
                "qkernel gave {:?} for a fault without registers",
                served.outcome
            );
        };
        self.load_regs(&r, sregs, served.space);
        Ok(None)
    }

    /// Resumes the app with `r` in address space `space`.
    fn load_regs(&mut self, r: &UserRegs, mut sregs: kvm_bindings::kvm_sregs, space: SpaceId) {
        let s = self.vcpu.sync_regs_mut();
        s.regs.rax = r.rax;
        s.regs.rbx = r.rbx;
        s.regs.rcx = r.rcx;
        s.regs.rdx = r.rdx;
        s.regs.rsi = r.rsi;
        s.regs.rdi = r.rdi;
        s.regs.rbp = r.rbp;
        s.regs.rsp = r.rsp;
        s.regs.r8 = r.r8;
        s.regs.r9 = r.r9;
        s.regs.r10 = r.r10;
        s.regs.r11 = r.r11;
        s.regs.r12 = r.r12;
        s.regs.r13 = r.r13;
        s.regs.r14 = r.r14;
        s.regs.r15 = r.r15;
        s.regs.rip = r.rip;
        s.regs.rflags = (r.rflags & 0x3c_7fd7) | 0x202;
        sregs.fs.base = r.fs_base;
        sregs.cr3 = space;
        sregs.cs = user_code();
        sregs.ss = user_data();
        sregs.cr2 = CR2_NONE;
        s.sregs = sregs;
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
    }

    /// Asks qkernel to resolve a page fault at `addr` (a first touch of the stack).
    fn resolve_page_fault(&mut self, addr: u64) -> bool {
        with_kernel(&self.core, UserRegs::default(), None, |k, m| {
            Some(k.page_fault(m, addr))
        })
        .is_some_and(|(mapped, _)| mapped)
    }

    /// Names the fault that stopped the app at `rip`, as the signal Linux would send.
    fn fault(&self, rip: u64, cr2: u64) -> Stop {
        const SIGILL: i32 = 4;
        const SIGTRAP: i32 = 5;
        const SIGSEGV: i32 = 11;
        if cr2 != CR2_NONE {
            return Stop::Killed {
                signal: SIGSEGV,
                reason: format!("page fault at {cr2:#x}, rip {rip:#x}"),
            };
        }
        let mut insn = [0u8; 2];
        let readable = self
            .core
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mem
            .read_user(rip, &mut insn)
            .is_ok();
        match (readable, insn) {
            (true, [0x0f, 0x0b]) => Stop::Killed {
                signal: SIGILL,
                reason: format!("invalid instruction (ud2) at rip {rip:#x}"),
            },
            (true, [0xcc, _]) => Stop::Killed {
                signal: SIGTRAP,
                reason: format!("breakpoint at rip {rip:#x}"),
            },
            (true, _) => Stop::Killed {
                signal: SIGSEGV,
                reason: format!(
                    "general protection fault at rip {rip:#x} (instruction bytes {:02x} {:02x})",
                    insn[0], insn[1]
                ),
            },
            (false, _) => Stop::Killed {
                signal: SIGSEGV,
                reason: format!("execution at unmapped address {rip:#x}"),
            },
        }
    }
}
