//! Signal handlers: a signal with a handler becomes pending on its process and is delivered
//! on its way back to user space, through the frame Linux builds on x86-64 (`rt_sigframe`:
//! the return address `sa_restorer`, a `ucontext` holding the interrupted registers and mask,
//! a `siginfo`); `rt_sigreturn` reads the registers back.
//!
//! Delivery happens where the kernel sets the app's registers: at the end of a call served on
//! the vCPU thread, and when a parked process is switched in. The polled path never returns
//! to the app with a deliverable signal (it hands the call to the vCPU thread). The frame is
//! in app memory and untrusted on the way back: only the general registers, the user flags and
//! the mask are taken from it. The FPU state of the interrupted code stays in the kernel
//! (`fpstate` is 0 in the frame) and comes back at `rt_sigreturn`.

use crate::errno::*;
use crate::machine::{Machine, UserRegs};
use crate::syscalls::{Kernel, Proc, SyscallArgs, SyscallOutcome};

const SIG_DFL: u64 = 0;
/// Asks the caller to park the running thread in rt_sigtimedwait until its deadline (its
/// `io_until`) or one of the signals it waits for.
pub(crate) const ESIGWAIT: i64 = 518;
const SIG_IGN: u64 = 1;
const SA_SIGINFO: u64 = 4;
const SA_ONSTACK: u64 = 0x0800_0000;
const SS_ONSTACK: u32 = 1;
const SS_DISABLE: u32 = 2;
const SS_AUTODISARM: u32 = 1 << 31;
/// Smallest alternate stack (Linux's MINSIGSTKSZ on x86-64).
const MINSIGSTKSZ: u64 = 2048;
/// Offset of `uc_stack` (a `stack_t`: sp, flags, size) in `struct ucontext`.
const UC_STACK: u64 = 16;
const SA_RESTART: u64 = 0x1000_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
pub const SIGCHLD: u64 = 17;
/// Offsets in `struct ucontext` and `struct sigcontext` (x86-64).
const UC_MCONTEXT: u64 = 40;
const UC_SIGMASK: u64 = 296;
const UC_SIZE: u64 = 304;
const SIGINFO_SIZE: u64 = 128;
/// Nested handlers a process may be in at once.
const MAX_DEPTH: usize = 64;
/// The flags an app may set (as Linux's FIX_EFLAGS), and IF, always on.
const USER_FLAGS: u64 = 0x3c_7fd7;

/// Why a signal is pending: what its siginfo says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigInfo {
    pub code: i32,
    pub pid: i64,
    /// SIGCHLD's status (exit code or signal).
    pub status: i32,
    /// The faulting address of SIGSEGV, SIGBUS, SIGILL, SIGFPE (si_addr, where si_pid is).
    pub addr: u64,
    /// A timer's signal (`SI_TIMER`): `pid` is the timer's id (si_timerid), these are
    /// si_overrun and si_value.
    pub overrun: i32,
    pub value: u64,
}

/// si_code of a POSIX timer's expiry, and of a signal the kernel sends (ITIMER_REAL's SIGALRM).
pub const SI_TIMER: i32 = -2;
pub const SI_KERNEL: i32 = 0x80;

/// A thread's handlers' side: what is pending, the FPU states of handlers it is in, its
/// alternate signal stack.
#[derive(Debug, Default, Clone)]
pub(crate) struct SignalState {
    pending: u64,
    info: std::collections::BTreeMap<u64, SigInfo>,
    fpu: Vec<SavedFpu>,
    /// The mask sigsuspend, or a ppoll, pselect6 or epoll_pwait with a mask of its own,
    /// replaced: restored when the call returns, or by the sigreturn of a handler that
    /// interrupted it (its frame holds this mask).
    pub(crate) suspend_mask: Option<u64>,
    /// sigaltstack(2): where SA_ONSTACK handlers run.
    pub(crate) altstack: AltStack,
}

/// The FPU state a handler's frame will give back at sigreturn, by the frame's address (and
/// whether it is on the alternate stack): a handler left by siglongjmp never returns, so its
/// entry is found dead by position (see [`SignalState::forget_abandoned`]).
#[derive(Debug, Clone)]
struct SavedFpu {
    frame: u64,
    on_altstack: bool,
    state: Vec<u8>,
}

impl SignalState {
    /// Before a frame at `sp`: the frames at or below it on the same stack belong to handlers
    /// the app left without sigreturn (siglongjmp out of a SIGSEGV handler, say), since a live
    /// older frame lies above any newer one. Their saved states go.
    fn forget_abandoned(&mut self, sp: u64, on_altstack: bool) {
        self.fpu
            .retain(|s| s.on_altstack != on_altstack || s.frame > sp);
    }
}

/// An alternate signal stack; `size` 0 when there is none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AltStack {
    sp: u64,
    size: u64,
    /// SS_AUTODISARM: cleared while a handler runs on it.
    autodisarm: bool,
}

impl AltStack {
    fn contains(&self, sp: u64) -> bool {
        self.size != 0 && sp > self.sp && sp - self.sp <= self.size
    }

    /// The `stack_t` that describes it to a thread whose stack pointer is `sp`.
    fn to_stack_t(self, sp: u64) -> [u8; 24] {
        let mut flags = if self.size == 0 {
            SS_DISABLE
        } else if self.contains(sp) {
            SS_ONSTACK
        } else {
            0
        };
        if self.autodisarm {
            flags |= SS_AUTODISARM;
        }
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.sp.to_le_bytes());
        out[8..12].copy_from_slice(&flags.to_le_bytes());
        out[16..].copy_from_slice(&self.size.to_le_bytes());
        out
    }

    /// The stack a `stack_t` asks for.
    fn from_stack_t(b: &[u8; 24]) -> Result<AltStack, i64> {
        let sp = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(b[8..12].try_into().unwrap_or_default());
        let size = u64::from_le_bytes(b[16..].try_into().unwrap_or_default());
        let autodisarm = flags & SS_AUTODISARM != 0;
        // SS_ONSTACK is accepted as 0, as Linux does for old programs.
        match flags & !SS_AUTODISARM {
            SS_DISABLE => Ok(AltStack::default()),
            0 | SS_ONSTACK if size < MINSIGSTKSZ => Err(ENOMEM),
            0 | SS_ONSTACK => Ok(AltStack {
                sp,
                size,
                autodisarm,
            }),
            _ => Err(EINVAL),
        }
    }
}

fn action(p: &Proc, sig: u64) -> (u64, u64, u64, u64) {
    let a = &p.sigactions[(sig - 1) as usize];
    let w = |i: usize| u64::from_le_bytes(a[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    (w(0), w(1), w(2), w(3)) // handler, flags, restorer, mask
}

/// Whether `p` asked (SA_NOCLDSTOP) not to get SIGCHLD when a child stops or continues.
pub(crate) fn no_child_stop(p: &Proc) -> bool {
    const SA_NOCLDSTOP: u64 = 1;
    action(p, SIGCHLD).1 & SA_NOCLDSTOP != 0
}

/// Whether `sig` has a handler (neither default nor ignored) in `p`.
pub(crate) fn has_handler(p: &Proc, sig: u64) -> bool {
    (1..=64).contains(&sig) && !matches!(action(p, sig).0, SIG_DFL | SIG_IGN)
}

impl crate::process::Thread {
    /// Marks `sig` pending (it has a handler).
    pub(crate) fn post(&mut self, sig: u64, info: SigInfo) {
        self.signals.pending |= 1 << (sig - 1);
        self.signals.info.insert(sig, info);
    }

    /// The signal of timer `id` still pending here: it is not queued twice (POSIX); its
    /// overrun grows by `by` instead. Returns the overrun it now carries.
    pub(crate) fn add_timer_overrun(&mut self, sig: u64, id: i64, by: i32) -> Option<i32> {
        if self.signals.pending & (1 << (sig - 1)) == 0 {
            return None;
        }
        let info = self.signals.info.get_mut(&sig)?;
        if info.code != SI_TIMER || info.pid != id {
            return None;
        }
        info.overrun = info.overrun.saturating_add(by);
        Some(info.overrun)
    }

    /// The signals pending on this thread.
    pub(crate) fn pending(&self) -> u64 {
        self.signals.pending
    }

    /// Takes the lowest pending signal of `set`, with its siginfo.
    pub(crate) fn take_pending(&mut self, set: u64) -> Option<(u64, Option<SigInfo>)> {
        let ready = self.signals.pending & set;
        if ready == 0 {
            return None;
        }
        let sig = u64::from(ready.trailing_zeros()) + 1;
        self.signals.pending &= !(1 << (sig - 1));
        Some((sig, self.signals.info.remove(&sig)))
    }

    /// The lowest pending signal not blocked, if any.
    pub(crate) fn deliverable(&self) -> Option<u64> {
        let ready = self.signals.pending & !self.sigmask;
        (ready != 0).then(|| u64::from(ready.trailing_zeros()) + 1)
    }
}

impl Kernel {
    /// Builds the frame of the next deliverable signal on the running process's stack and
    /// points `regs` at its handler. `regs` are what the app would resume with otherwise (a
    /// finished call's return, or a waiting call: `restart` says how to resume it, by running
    /// it again after the handler with SA_RESTART, else with EINTR). Returns whether it did.
    pub(crate) fn deliver(
        &mut self,
        m: &mut dyn Machine,
        regs: &mut UserRegs,
        restart: bool,
    ) -> bool {
        let Some(sig) = self.t.deliverable() else {
            return false;
        };
        let bit = 1 << (sig - 1);
        self.t.signals.pending &= !bit;
        let info = self.t.signals.info.remove(&sig);
        // A socket wait it interrupts is over: the next one starts with its own timeout.
        self.t.io_until = None;
        self.t.sigwait = 0;
        let (handler, flags, restorer, mask) = action(&self.p, sig);
        if handler == SIG_DFL {
            // Pending while blocked, now let through: its default action, as on Linux.
            self.default_action_now(sig);
            return false;
        }
        if handler == SIG_IGN {
            return false;
        }
        let mut interrupted = *regs;
        let progress = self.t.write_progress.take();
        if let (true, Some(w)) = (restart, progress) {
            // A blocking write that sent part ends with what it sent (as Linux), restarted
            // or not.
            interrupted.rip = interrupted.rip.wrapping_add(2);
            interrupted.rax = w.sent;
        } else if restart && flags & SA_RESTART == 0 {
            // The waiting call ends with EINTR instead of running again.
            interrupted.rip = interrupted.rip.wrapping_add(2);
            interrupted.rax = (-EINTR) as u64;
        }
        let old_mask = self.t.signals.suspend_mask.take().unwrap_or(self.t.sigmask);
        // The frame, below the red zone (or at the top of the alternate stack), 16-byte
        // aligned, then 8 down (as after a call).
        let alt = self.t.signals.altstack;
        let on_alt = flags & SA_ONSTACK != 0 && alt.size != 0 && !alt.contains(regs.rsp);
        let top = if on_alt {
            alt.sp.wrapping_add(alt.size)
        } else {
            regs.rsp.wrapping_sub(128)
        };
        let frame_size = 8 + UC_SIZE + SIGINFO_SIZE;
        let sp = (top.wrapping_sub(frame_size) & !15).wrapping_sub(8);
        let frame_on_altstack = alt.size != 0 && alt.contains(sp);
        self.t.signals.forget_abandoned(sp, frame_on_altstack);
        if self.t.signals.fpu.len() >= MAX_DEPTH {
            return false; // nested too deep: the caller treats it as unhandled
        }
        let mut frame = vec![0u8; frame_size as usize];
        let put = |f: &mut [u8], at: u64, v: u64| {
            f[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut frame, 0, restorer);
        let mc = 8 + UC_MCONTEXT;
        let r = &interrupted;
        for (i, v) in [
            r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx,
            r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.rflags,
        ]
        .into_iter()
        .enumerate()
        {
            put(&mut frame, mc + 8 * i as u64, v);
        }
        frame[(mc + 144) as usize..(mc + 146) as usize].copy_from_slice(&0x33u16.to_le_bytes());
        frame[(mc + 150) as usize..(mc + 152) as usize].copy_from_slice(&0x2bu16.to_le_bytes());
        put(&mut frame, mc + 168, old_mask); // oldmask
        put(&mut frame, 8 + UC_SIGMASK, old_mask);
        let uc_stack = (8 + UC_STACK) as usize;
        frame[uc_stack..uc_stack + 24].copy_from_slice(&alt.to_stack_t(regs.rsp));
        let si = 8 + UC_SIZE;
        frame[si as usize..(si + SIGINFO_SIZE) as usize].copy_from_slice(&siginfo_bytes(sig, info));
        let fpu = m.fpu_state().unwrap_or_default();
        if m.write(sp, &frame).is_err() {
            // No stack to run the handler on (Linux would force SIGSEGV): the signal is lost.
            tracing::warn!(
                pid = self.p.pid,
                sig,
                sp,
                rsp = regs.rsp,
                rip = regs.rip,
                "no room for a signal frame"
            );
            return false;
        }
        self.t.signals.fpu.push(SavedFpu {
            frame: sp,
            on_altstack: frame_on_altstack,
            state: fpu,
        });
        if on_alt && alt.autodisarm {
            self.t.signals.altstack = AltStack::default(); // back at sigreturn (uc_stack)
        }
        self.t.sigmask |= mask;
        if flags & SA_NODEFER == 0 {
            self.t.sigmask |= bit;
        }
        self.t.sigmask &= !((1 << 8) | (1 << 18));
        if flags & SA_RESETHAND != 0 {
            self.p.sigactions[(sig - 1) as usize] = [0; 32];
        }
        *regs = UserRegs {
            rip: handler,
            rsp: sp,
            rdi: sig,
            rsi: if flags & SA_SIGINFO != 0 { sp + si } else { 0 },
            rdx: if flags & SA_SIGINFO != 0 { sp + 8 } else { 0 },
            rax: 0,
            rflags: (interrupted.rflags & USER_FLAGS) | 0x202,
            fs_base: interrupted.fs_base,
            ..interrupted
        };
        tracing::debug!(pid = self.p.pid, sig, handler, "signal delivered");
        true
    }

    /// rt_sigtimedwait(2) (sigwaitinfo, sigtimedwait, sigwait): takes the lowest pending
    /// signal of `set` (blocked, as callers keep them), its siginfo written to `info`; waits
    /// for one until the timeout (EAGAIN), or until a signal outside the set runs its handler
    /// (EINTR). Waiting alone it sleeps here; beside other processes or threads it parks
    /// ([`ESIGWAIT`]) and the call runs again when one of `set` is posted to it.
    pub(crate) fn rt_sigtimedwait(
        &mut self,
        m: &mut dyn Machine,
        (set, info, timeout): (u64, u64, u64),
        size: u64,
    ) -> Result<i64, i64> {
        if size != 8 {
            return Err(EINVAL);
        }
        let mut b = [0u8; 8];
        m.read(set, &mut b).map_err(|_| EFAULT)?;
        let set = u64::from_le_bytes(b) & !((1 << 8) | (1 << 18));
        self.t.sigwait = 0;
        // The deadline, kept across the call's runs after parks.
        let until = match self.t.io_until {
            Some(u) => u,
            None => {
                let u = match timeout {
                    0 => u64::MAX,
                    va => m
                        .monotonic_ns()
                        .saturating_add(crate::syscalls::read_timespec(m, va)?),
                };
                self.t.io_until = Some(u);
                u
            }
        };
        loop {
            if let Some((sig, got)) = self.t.take_pending(set) {
                self.t.io_until = None;
                if info != 0 {
                    m.write(info, &siginfo_bytes(sig, got))
                        .map_err(|_| EFAULT)?;
                }
                return Ok(sig as i64);
            }
            let now = m.monotonic_ns();
            if now >= until {
                self.t.io_until = None;
                return Err(EAGAIN);
            }
            if self.t.deliverable().is_some() || m.cancelled() {
                self.t.io_until = None;
                return Err(EINTR); // its handler runs as the call returns
            }
            if self.decline_nowait() {
                return Err(EAGAIN); // served again where it may wait
            }
            self.t.sigwait = set;
            if !self.procs_alone() || self.host_requests {
                return Err(ESIGWAIT);
            }
            m.sleep_ns(until.min(self.next_timer).saturating_sub(now));
            self.take_host_events(m);
            self.t.sigwait = 0;
        }
    }

    /// rt_sigpending(2): the signals raised while blocked, waiting on this thread.
    pub(crate) fn rt_sigpending(
        &mut self,
        m: &mut dyn Machine,
        set: u64,
        size: u64,
    ) -> Result<i64, i64> {
        if size != 8 {
            return Err(EINVAL);
        }
        let pending = self.t.signals.pending & self.t.sigmask;
        m.write(set, &pending.to_le_bytes()).map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// Puts a call's own signal mask in place for its length (ppoll, pselect6, epoll_pwait,
    /// epoll_pwait2). A call that runs again after a park keeps the mask it first replaced.
    pub(crate) fn enter_call_mask(&mut self, mask: u64) {
        if self.t.signals.suspend_mask.is_none() {
            self.t.signals.suspend_mask = Some(self.t.sigmask);
        }
        self.t.sigmask = mask & !((1 << 8) | (1 << 18));
    }

    /// Gives the thread back the mask a call (or sigsuspend) replaced, unless a handler's
    /// frame took it already.
    pub(crate) fn leave_call_mask(&mut self) {
        if let Some(old) = self.t.signals.suspend_mask.take() {
            self.t.sigmask = old;
        }
    }

    /// Delivers a pending signal as the running process returns `value` from a call.
    pub(crate) fn deliver_on_return(
        &mut self,
        m: &mut dyn Machine,
        value: i64,
    ) -> Option<SyscallOutcome> {
        self.t.deliverable()?;
        let mut regs = m.user_regs();
        regs.rax = value as u64;
        if self.deliver(m, &mut regs, false) {
            m.set_user_regs(&regs);
            return Some(SyscallOutcome::Resume);
        }
        None
    }

    /// rt_sigreturn(2): the registers and mask the frame at the stack pointer holds.
    pub(crate) fn sigreturn(&mut self, m: &mut dyn Machine) -> SyscallOutcome {
        let sp = m.user_regs().rsp; // the restorer's `ret` popped the return address
        let mut mc = [0u8; 256];
        let mut mask = [0u8; 8];
        let mut stack = [0u8; 24];
        if m.read(sp + UC_MCONTEXT, &mut mc).is_err()
            || m.read(sp + UC_SIGMASK, &mut mask).is_err()
            || m.read(sp + UC_STACK, &mut stack).is_err()
        {
            return self.exit_process(m, 11); // SIGSEGV, as Linux
        }
        let w = |i: usize| u64::from_le_bytes(mc[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let current = m.user_regs();
        let regs = UserRegs {
            r8: w(0),
            r9: w(1),
            r10: w(2),
            r11: w(3),
            r12: w(4),
            r13: w(5),
            r14: w(6),
            r15: w(7),
            rdi: w(8),
            rsi: w(9),
            rbp: w(10),
            rbx: w(11),
            rdx: w(12),
            rax: w(13),
            rcx: w(14),
            rsp: w(15),
            rip: w(16),
            rflags: (w(17) & USER_FLAGS) | 0x202,
            fs_base: current.fs_base,
        };
        self.t.sigmask = u64::from_le_bytes(mask) & !((1 << 8) | (1 << 18));
        // The alternate stack as the frame says (Linux's restore_altstack): a bad one, or a
        // change while on the stack, is ignored.
        if let Ok(alt) = AltStack::from_stack_t(&stack) {
            if !self.t.signals.altstack.contains(regs.rsp) {
                self.t.signals.altstack = alt;
            }
        }
        // The state saved for this frame (the restorer's `ret` popped its first word); any
        // saved above it in the list belong to frames below it, left without sigreturn.
        let frame = sp.wrapping_sub(8);
        if let Some(at) = self.t.signals.fpu.iter().rposition(|s| s.frame == frame) {
            if let Some(saved) = self.t.signals.fpu.split_off(at).into_iter().next() {
                let _ = m.set_fpu_state(&saved.state);
            }
        }
        let mut regs = regs;
        // Another signal may have become deliverable with the mask restored.
        self.deliver(m, &mut regs, false);
        m.set_user_regs(&regs);
        SyscallOutcome::Resume
    }

    /// sigaltstack(2) of the running thread.
    pub(crate) fn sigaltstack(
        &mut self,
        m: &mut dyn Machine,
        new: u64,
        old: u64,
    ) -> Result<i64, i64> {
        let sp = m.user_regs().rsp;
        let current = self.t.signals.altstack;
        let want = if new != 0 {
            let mut b = [0u8; 24];
            m.read(new, &mut b).map_err(|_| EFAULT)?;
            Some(AltStack::from_stack_t(&b)?)
        } else {
            None
        };
        if old != 0 {
            m.write(old, &current.to_stack_t(sp)).map_err(|_| EFAULT)?;
        }
        if let Some(alt) = want {
            if current.contains(sp) {
                return Err(EPERM); // not while running on it
            }
            self.t.signals.altstack = alt;
        }
        Ok(0)
    }

    /// A fault of the running thread the platform could not resolve (`sig` SIGSEGV, SIGBUS,
    /// SIGILL, SIGTRAP or SIGFPE, at `addr`): its handler runs, unless the signal is blocked or
    /// has none, or the thread faults again while it is in one; then the fault ends its
    /// process, as Linux forces such signals.
    pub fn user_fault(&mut self, m: &mut dyn Machine, sig: i32, addr: u64) -> SyscallOutcome {
        let sig64 = sig as u64;
        let bit = 1u64 << (sig64 - 1);
        let handled =
            (1..=31).contains(&sig) && has_handler(&self.p, sig64) && self.t.sigmask & bit == 0;
        if handled {
            let info = SigInfo {
                code: 1, // SEGV_MAPERR, ILL_ILLOPC, TRAP_BRKPT: the first code of each
                pid: 0,
                status: 0,
                addr,
                overrun: 0,
                value: 0,
            };
            self.t.post(sig64, info);
            let mut regs = m.user_regs();
            if self.t.deliverable() == Some(sig64) && self.deliver(m, &mut regs, false) {
                m.set_user_regs(&regs);
                return SyscallOutcome::Resume;
            }
        }
        self.fatal_fault(m, sig, addr)
    }

    /// A fault no handler may see (one in the platform's syscall stub, which runs on the
    /// stub's own stack): the running process dies of `sig`, as of an unhandled fault.
    pub fn fatal_fault(&mut self, m: &mut dyn Machine, sig: i32, addr: u64) -> SyscallOutcome {
        tracing::info!(
            pid = self.p.pid,
            tid = self.t.tid,
            sig,
            addr,
            "killed by a fault"
        );
        self.exit_process(m, sig)
    }
}

/// The signal mask a call carries for its own length: ppoll's and epoll_pwait(2)'s
/// `sigmask, sigsetsize` arguments, pselect6's `{sigmask, size}` pair. None: the call has
/// none (or is another call). EINVAL for a size other than a sigset's 8 bytes, EFAULT for a
/// mask (or pselect6 pair) that cannot be read.
pub(crate) fn call_sigmask(m: &mut dyn Machine, call: &SyscallArgs) -> Result<Option<u64>, i64> {
    let (ptr, size) = match call.nr {
        271 => (call.args[3], call.args[4]),       // ppoll
        281 | 441 => (call.args[4], call.args[5]), // epoll_pwait, epoll_pwait2
        270 => {
            // pselect6
            if call.args[5] == 0 {
                return Ok(None);
            }
            let mut pair = [0u8; 16];
            m.read(call.args[5], &mut pair).map_err(|_| EFAULT)?;
            let (ptr, size) = pair.split_at(8);
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            (word(ptr), word(size))
        }
        _ => return Ok(None),
    };
    if ptr == 0 {
        return Ok(None);
    }
    if size != 8 {
        return Err(EINVAL);
    }
    let mut mask = [0u8; 8];
    m.read(ptr, &mut mask).map_err(|_| EFAULT)?;
    Ok(Some(u64::from_le_bytes(mask)))
}

/// A `siginfo_t` (128 bytes) for signal `sig`: code, sender (or fault address), and a
/// child's status or a timer's overrun and value.
pub(crate) fn siginfo_bytes(sig: u64, info: Option<SigInfo>) -> [u8; SIGINFO_SIZE as usize] {
    let mut b = [0u8; SIGINFO_SIZE as usize];
    let info = info.unwrap_or(SigInfo {
        code: 0,
        pid: 0,
        status: 0,
        addr: 0,
        overrun: 0,
        value: 0,
    });
    b[0..4].copy_from_slice(&(sig as i32).to_le_bytes());
    b[8..12].copy_from_slice(&info.code.to_le_bytes());
    if info.addr != 0 {
        b[16..24].copy_from_slice(&info.addr.to_le_bytes());
    } else {
        b[16..20].copy_from_slice(&(info.pid as i32).to_le_bytes());
    }
    if info.code == SI_TIMER {
        b[20..24].copy_from_slice(&info.overrun.to_le_bytes());
        b[24..32].copy_from_slice(&info.value.to_le_bytes());
    } else {
        b[24..28].copy_from_slice(&info.status.to_le_bytes());
    }
    b
}
