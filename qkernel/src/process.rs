//! Processes: fork, vfork and clone (process flags), execve with `#!` scripts, wait4/waitid,
//! exit, process groups and sessions.
//!
//! The running process lives in [`Kernel::p`]; the others are parked in `Kernel::procs` with
//! their registers and FPU state. The one vCPU runs one process at a time and switches only
//! when the running one exits or waits (wait4, vfork), the next runnable one taking its place:
//! cooperative scheduling (preemption by a host timer is a later step). A call that waits is
//! run again from its `syscall` instruction when its process resumes, so it sees the world as
//! it is then (Linux's restart of an interrupted call, without the signal).
//!
//! Memory: fork copies every user page into the child's own address space (the platform
//! cannot make pages copy-on-write on this host, see qvisor's memory module); exec builds a
//! new space and gives the old one back.

use std::collections::{BTreeMap, VecDeque};

use crate::errno::*;
use crate::machine::{Machine, SpaceId, UserRegs};
use crate::syscalls::{Kernel, Proc, SyscallOutcome};

const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SETTLS: u64 = 0x80000;
const CLONE_PARENT_SETTID: u64 = 0x100000;
const CLONE_CHILD_SETTID: u64 = 0x1000000;
const WNOHANG: u64 = 1;
const WEXITED: u64 = 4;
const WNOWAIT: u64 = 0x0100_0000;
const SIGCHLD: i32 = 17;
/// Largest program image exec reads.
const MAX_IMAGE: u64 = 512 << 20;
/// Largest argv + envp exec copies, in strings and in bytes (Linux: 2 MiB of strings).
const MAX_ARGS: usize = 65_536;
const MAX_ARG_BYTES: usize = 2 << 20;

/// Registers and FPU state of a process that is not running.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    regs: UserRegs,
    fpu: Vec<u8>,
    /// The registers run a waiting call again (a signal handler first decides: SA_RESTART
    /// keeps that, else the call returns EINTR).
    restart: bool,
}

#[derive(Debug)]
pub(crate) enum State {
    Runnable(Saved),
    /// In wait4/waitid: runs (the call again) once a child changes state.
    Waiting(Saved),
    /// In a read or write of a pipe: runs (the call again) once any pipe changes.
    Blocked(Saved),
    /// In sigsuspend/pause: runs (the call returning EINTR) once a signal comes.
    Suspended(Saved),
    /// In nanosleep: runs (the call returning 0) at `until` (monotonic ns), or returning
    /// EINTR when a signal comes first.
    Sleeping {
        saved: Saved,
        until: u64,
    },
    /// A vfork parent: runs once `child` has exec'd or exited.
    VforkParent {
        saved: Saved,
        child: i64,
    },
    /// Exited, with its wait status, until its parent reaps it.
    Zombie {
        status: i32,
    },
}

#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) proc: Proc,
    pub(crate) state: State,
}

/// The processes that are not running.
#[derive(Debug, Default)]
pub(crate) struct ProcTable {
    pub(crate) parked: BTreeMap<i64, Parked>,
    runq: VecDeque<i64>,
    next_pid: i64,
}

/// What runs after the running process stops: another one, or itself (its sleep ended
/// before any other process could run).
enum Next {
    Other(Box<(Proc, Saved)>),
    Me,
}

/// Which children a wait asks about.
#[derive(Debug, Clone, Copy)]
enum Which {
    Any,
    Pid(i64),
    Group(i64),
}

/// A child's state change that a wait reports.
struct Reaped {
    pid: i64,
    status: i32,
}

impl ProcTable {
    fn new_pid(&mut self) -> i64 {
        self.next_pid = self.next_pid.max(1) + 1;
        self.next_pid
    }

    fn make_runnable(&mut self, pid: i64) {
        let Some(p) = self.parked.get_mut(&pid) else {
            return;
        };
        let saved = match &p.state {
            State::Waiting(s)
            | State::Blocked(s)
            | State::Suspended(s)
            | State::Sleeping { saved: s, .. }
            | State::VforkParent { saved: s, .. } => s.clone(),
            _ => return,
        };
        p.state = State::Runnable(saved);
        self.runq.push_back(pid);
    }

    /// Every sleeper whose deadline is at or before `now` (monotonic ns) becomes runnable.
    fn wake_sleepers(&mut self, now: u64) {
        let due: Vec<i64> = self
            .parked
            .iter()
            .filter(|(_, p)| matches!(p.state, State::Sleeping { until, .. } if until <= now))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in due {
            self.make_runnable(pid);
        }
    }

    /// Every process blocked on a pipe runs its call again.
    pub(crate) fn wake_blocked(&mut self) {
        let blocked: Vec<i64> = self
            .parked
            .iter()
            .filter(|(_, p)| matches!(p.state, State::Blocked(_)))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in blocked {
            self.make_runnable(pid);
        }
    }

    /// Takes the next runnable process off the table.
    fn take_next(&mut self) -> Option<(Proc, Saved)> {
        while let Some(pid) = self.runq.pop_front() {
            if matches!(
                self.parked.get(&pid).map(|p| &p.state),
                Some(State::Runnable(_))
            ) {
                let p = self.parked.remove(&pid)?;
                let State::Runnable(saved) = p.state else {
                    unreachable!("checked just above")
                };
                return Some((p.proc, saved));
            }
        }
        None
    }
}

/// Program images exec read, kept while their file is unchanged (same size and modification
/// time), so a shell loop does not read busybox from the host at every command.
#[derive(Debug, Default)]
pub(crate) struct ImageCache {
    /// Most recently used last.
    entries: Vec<CachedImage>,
}

/// (path, size and mtime as stat gave them, image).
type CachedImage = (Vec<u8>, [u8; 24], std::sync::Arc<Vec<u8>>);

impl ImageCache {
    const MAX_ENTRIES: usize = 8;
    const MAX_BYTES: usize = 128 << 20;

    fn get(&mut self, path: &[u8], key: &[u8; 24]) -> Option<std::sync::Arc<Vec<u8>>> {
        let i = self
            .entries
            .iter()
            .position(|(p, k, _)| p == path && k == key)?;
        let e = self.entries.remove(i);
        let image = e.2.clone();
        self.entries.push(e);
        Some(image)
    }

    fn put(&mut self, path: &[u8], key: [u8; 24], image: std::sync::Arc<Vec<u8>>) {
        self.entries.retain(|(p, _, _)| p != path);
        self.entries.push((path.to_vec(), key, image));
        while self.entries.len() > Self::MAX_ENTRIES
            || self.entries.iter().map(|e| e.2.len()).sum::<usize>() > Self::MAX_BYTES
        {
            self.entries.remove(0);
        }
    }
}

/// Reads a NULL-terminated array of C strings (argv, envp), bounded.
fn read_string_array(m: &dyn Machine, mut va: u64) -> Result<Vec<String>, i64> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    if va == 0 {
        return Ok(out);
    }
    loop {
        let mut p = [0u8; 8];
        m.read(va, &mut p).map_err(|_| EFAULT)?;
        let ptr = u64::from_le_bytes(p);
        if ptr == 0 {
            return Ok(out);
        }
        let s = read_c_string(m, ptr, MAX_ARG_BYTES - bytes)?;
        bytes += s.len() + 1;
        out.push(String::from_utf8_lossy(&s).into_owned());
        if out.len() > MAX_ARGS {
            return Err(E2BIG);
        }
        va = va.checked_add(8).ok_or(EFAULT)?;
    }
}

/// Reads a C string of at most `limit` bytes.
fn read_c_string(m: &dyn Machine, va: u64, limit: usize) -> Result<Vec<u8>, i64> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let at = va.checked_add(out.len() as u64).ok_or(EFAULT)?;
        // Never read past a page end in one go: the next page may be unmapped.
        let room = (4096 - (at & 4095)) as usize;
        let n = room.min(chunk.len());
        m.read(at, &mut chunk[..n]).map_err(|_| EFAULT)?;
        if let Some(end) = chunk[..n].iter().position(|b| *b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..n]);
        if out.len() > limit {
            return Err(E2BIG);
        }
    }
}

/// The `#!` line of a script: the interpreter and its optional argument.
fn shebang(image: &[u8]) -> Option<(String, Option<String>)> {
    let rest = image.strip_prefix(b"#!")?;
    let line_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let line = String::from_utf8_lossy(&rest[..line_end.min(255)]);
    let line = line.trim();
    let (interp, arg) = match line.split_once([' ', '\t']) {
        Some((i, a)) => (i, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    (!interp.is_empty()).then(|| (interp.to_string(), arg))
}

impl Kernel {
    /// The running process's address space (the platform's first one until a fork or exec
    /// names it).
    fn space(&mut self, m: &dyn Machine) -> SpaceId {
        if self.p.space == 0 {
            self.p.space = m.space_current();
        }
        self.p.space
    }

    /// sigsuspend(2)/pause(2): parks the running process until a child changes state (its
    /// SIGCHLD), then returns EINTR. With nothing else that could run, EINTR at once: no
    /// signal could ever come.
    pub(crate) fn suspend(&mut self, m: &mut dyn Machine, mask_va: Option<u64>) -> SyscallOutcome {
        if let Some(va) = mask_va {
            let mut b = [0u8; 8];
            if m.read(va, &mut b).is_err() {
                return SyscallOutcome::Return(-EFAULT);
            }
            // The mask while suspended; the old one comes back with the handler's return.
            self.p.signals.suspend_mask = Some(self.p.sigmask);
            self.p.sigmask = u64::from_le_bytes(b) & !((1 << 8) | (1 << 18));
        }
        if self.p.deliverable().is_some() {
            if let Some(outcome) = self.deliver_on_return(m, -EINTR) {
                return outcome;
            }
        }
        let mut regs = m.user_regs();
        regs.rax = (-EINTR) as u64;
        match self.switch_away(m, regs, false, State::Suspended) {
            SyscallOutcome::Return(_) => {
                // Nothing else can run, so no signal can come.
                if let Some(old) = self.p.signals.suspend_mask.take() {
                    self.p.sigmask = old;
                }
                SyscallOutcome::Return(-EINTR)
            }
            other => other,
        }
    }

    /// Parks the running process until a pipe changes; its call runs again then.
    pub(crate) fn block_on_pipe(&mut self, m: &mut dyn Machine) -> SyscallOutcome {
        let regs = Self::restart_regs(m);
        self.switch_away(m, regs, true, State::Blocked)
    }

    /// A sleep of `ns`: in place when the running process is alone, else parked
    /// ([`ESLEEP`]) so the others run meanwhile.
    pub(crate) fn sleep_for(&mut self, m: &mut dyn Machine, ns: u64) -> Result<i64, i64> {
        let alone = self
            .procs
            .parked
            .values()
            .all(|p| matches!(p.state, State::Zombie { .. }));
        if alone || ns == 0 {
            // In place; a signal from the host wakes the host sleep early: a handler for it
            // interrupts the sleep (EINTR, the handler runs on return), else sleep on.
            let end = m.monotonic_ns().saturating_add(ns);
            loop {
                let now = m.monotonic_ns();
                if now >= end || m.cancelled() {
                    return Ok(0);
                }
                m.sleep_ns(end - now);
                self.take_host_signals(m);
                if self.p.deliverable().is_some() {
                    return Err(EINTR);
                }
            }
        }
        self.p.sleep_until = m.monotonic_ns().saturating_add(ns);
        Err(ESLEEP)
    }

    /// Parks the running process until its sleep ends.
    pub(crate) fn park_sleeping(&mut self, m: &mut dyn Machine) -> SyscallOutcome {
        let mut regs = m.user_regs();
        regs.rax = 0;
        let until = self.p.sleep_until;
        tracing::trace!(pid = self.p.pid, until, "sleep");
        self.switch_away(m, regs, false, |saved| State::Sleeping { saved, until })
    }

    /// The next process to run: a runnable one, else (after sleeping on the host until the
    /// earliest deadline, `own` being the running process's if it is going to sleep) a
    /// sleeper whose time has come, or the running process itself. None when every process
    /// waits on another.
    fn next_runnable(&mut self, m: &mut dyn Machine, own: Option<u64>) -> Option<Next> {
        loop {
            if let Some((next, saved)) = self.procs.take_next() {
                return Some(Next::Other(Box::new((next, saved))));
            }
            let others = self
                .procs
                .parked
                .values()
                .filter_map(|p| match p.state {
                    State::Sleeping { until, .. } => Some(until),
                    _ => None,
                })
                .min();
            let earliest = match (others, own) {
                (Some(o), Some(me)) => o.min(me),
                (o, me) => o.or(me)?,
            };
            let now = m.monotonic_ns();
            if earliest > now {
                tracing::trace!(
                    ns = earliest - now,
                    "idle: nothing runs until the next sleeper"
                );
                m.sleep_ns(earliest - now);
            }
            if own.is_some_and(|me| me <= earliest) {
                return Some(Next::Me);
            }
            // A signal from the host may have made init runnable.
            self.take_host_signals(m);
            // Stopped from outside meanwhile: everyone wakes, the vCPU loop ends the container.
            let now = if m.cancelled() {
                u64::MAX
            } else {
                m.monotonic_ns().max(earliest)
            };
            self.procs.wake_sleepers(now);
        }
    }

    /// Hands signals sent from outside to the container's init: its handler gets them; without
    /// one they are ignored, as Linux ignores what a pid namespace's init has no handler for.
    pub(crate) fn take_host_signals(&mut self, m: &mut dyn Machine) {
        let mut sigs = m.take_host_signals();
        while sigs != 0 {
            let sig = u64::from(sigs.trailing_zeros()) + 1;
            sigs &= sigs - 1;
            let init = if self.p.pid == 1 {
                Some(&self.p)
            } else {
                self.procs.parked.get(&1).map(|p| &p.proc)
            };
            if init.is_some_and(|p| crate::signal::has_handler(p, sig)) {
                let info = crate::signal::SigInfo {
                    code: 0, // SI_USER, from outside the container: pid 0
                    pid: 0,
                    status: 0,
                };
                self.post_signal(1, sig, info);
            } else {
                tracing::debug!(sig, "a host signal init has no handler for is ignored");
            }
        }
    }

    /// A page fault of the app at `addr` that the kernel resolves: a first touch of the stack
    /// below what exec mapped gets a zeroed page (true: the app runs the instruction again).
    /// Anything else is the app's fault (false: SIGSEGV).
    pub fn page_fault(&mut self, m: &mut dyn Machine, addr: u64) -> bool {
        use crate::elf::{STACK_SIZE, STACK_TOP};
        let page = addr & !4095;
        let rw = crate::machine::PageFlags {
            write: true,
            exec: false,
        };
        (STACK_TOP - STACK_SIZE..STACK_TOP).contains(&page) && m.map_zeroed(page, 4096, rw).is_ok()
    }

    /// The most processes the container may have at once (the OCI pids limit).
    pub fn set_max_processes(&mut self, max: usize) {
        self.max_processes = max.max(1);
    }

    /// Whether another process could use the CPU (one is runnable, or a sleeper's time has
    /// come): the platform then preempts the running one with [`Kernel::preempt`].
    pub fn wants_preemption(&self, now_ns: u64) -> bool {
        self.procs.parked.values().any(|p| match p.state {
            State::Runnable(_) => true,
            State::Sleeping { until, .. } => until <= now_ns,
            _ => false,
        })
    }

    /// Preemption: the running process, stopped by the platform at an arbitrary instruction
    /// (its exact registers in `Machine::user_regs`), goes to the back of the run queue and
    /// the next runnable one runs. `None` (nothing else to run): it goes on.
    pub fn preempt(&mut self, m: &mut dyn Machine) -> Option<SyscallOutcome> {
        self.take_host_signals(m);
        if self.p.deliverable().is_some() {
            // A signal for the running process (from the host): its handler runs now.
            let mut regs = m.user_regs();
            if self.deliver(m, &mut regs, false) {
                m.set_user_regs(&regs);
                return Some(SyscallOutcome::Resume);
            }
        }
        let now = m.monotonic_ns();
        self.procs.wake_sleepers(now);
        let (next, saved) = self.procs.take_next()?;
        let fpu = match m.fpu_state() {
            Ok(f) => f,
            Err(_) => {
                // Put it back: the next one waits for another chance.
                let pid = next.pid;
                self.procs.parked.insert(
                    pid,
                    Parked {
                        proc: next,
                        state: State::Runnable(saved),
                    },
                );
                self.procs.runq.push_front(pid);
                return None;
            }
        };
        let regs = m.user_regs();
        self.space(m);
        let prev = std::mem::replace(&mut self.p, next);
        let pid = prev.pid;
        self.procs.parked.insert(
            pid,
            Parked {
                proc: prev,
                state: State::Runnable(Saved {
                    regs,
                    fpu,
                    restart: false,
                }),
            },
        );
        self.procs.runq.push_back(pid);
        Some(self.resume(m, saved))
    }

    /// Registers that run the current call again when the process resumes.
    fn restart_regs(m: &dyn Machine) -> UserRegs {
        let mut r = m.user_regs();
        r.rip = r.rip.wrapping_sub(2); // back onto the `syscall` instruction
        r
    }

    /// Parks the running process in `state` (built from its saved registers, which run the
    /// call again if `restart`) and runs the next runnable one.
    fn switch_away(
        &mut self,
        m: &mut dyn Machine,
        regs: UserRegs,
        restart: bool,
        state: impl FnOnce(Saved) -> State,
    ) -> SyscallOutcome {
        let fpu = match m.fpu_state() {
            Ok(f) => f,
            Err(e) => return SyscallOutcome::Return(-e),
        };
        // A sleeper's own deadline counts when the others sleep longer.
        let own_deadline = (self.p.sleep_until != 0).then_some(self.p.sleep_until);
        self.p.sleep_until = 0;
        let (next, saved) = match self.next_runnable(m, own_deadline) {
            Some(Next::Other(next)) => *next,
            Some(Next::Me) => {
                // Its sleep ended first: it goes on, nothing switched.
                m.set_user_regs(&regs);
                return SyscallOutcome::Resume;
            }
            // Every other process waits: nothing could wake this one.
            None => return SyscallOutcome::Return(-EDEADLK_OR_CHILD),
        };
        self.space(m);
        let prev = std::mem::replace(&mut self.p, next);
        self.procs.parked.insert(
            prev.pid,
            Parked {
                proc: prev,
                state: state(Saved { regs, fpu, restart }),
            },
        );
        self.resume(m, saved)
    }

    /// Loads the now-current process's saved state into the machine, running a pending
    /// signal's handler first.
    fn resume(&mut self, m: &mut dyn Machine, saved: Saved) -> SyscallOutcome {
        m.space_switch(self.p.space);
        if let Err(e) = m.set_fpu_state(&saved.fpu) {
            tracing::warn!(errno = e, "restoring FPU state");
        }
        let mut regs = saved.regs;
        self.deliver(m, &mut regs, saved.restart);
        m.set_user_regs(&regs);
        SyscallOutcome::Resume
    }

    /// A signal with a handler for process `pid` (running or parked): pending, and a parked
    /// process that waits is woken to take it.
    pub(crate) fn post_signal(&mut self, pid: i64, sig: u64, info: crate::signal::SigInfo) {
        if pid == self.p.pid {
            self.p.post(sig, info);
            return;
        }
        let Some(p) = self.procs.parked.get_mut(&pid) else {
            return;
        };
        p.proc.post(sig, info);
        if let State::Sleeping { saved, .. } = &mut p.state {
            saved.regs.rax = (-EINTR) as u64; // the sleep ends early
        }
        if matches!(
            p.state,
            State::Waiting(_) | State::Blocked(_) | State::Suspended(_) | State::Sleeping { .. }
        ) {
            self.procs.make_runnable(pid);
        }
    }

    /// fork, vfork, and clone without CLONE_VM: a new process with a copy of this one.
    pub(crate) fn fork(
        &mut self,
        m: &mut dyn Machine,
        flags: u64,
        stack: u64,
        parent_tid: u64,
        child_tid: u64,
        tls: u64,
    ) -> SyscallOutcome {
        let vfork = flags & CLONE_VFORK != 0;
        if flags & CLONE_THREAD != 0 || (flags & CLONE_VM != 0 && !vfork) {
            // Threads come with the thread model; until then glibc reports EAGAIN.
            return SyscallOutcome::Return(-ENOSYS);
        }
        if self.procs.parked.len() + 1 >= self.max_processes {
            return SyscallOutcome::Return(-EAGAIN); // the pids limit, as fork(2) reports it
        }
        let parent_space = self.space(m);
        // A vfork child borrows its parent's memory, as on Linux: the parent waits until the
        // child execs or exits, so nothing is copied.
        let child_space = if vfork {
            parent_space
        } else {
            match m.space_clone() {
                Ok(s) => s,
                Err(e) => return SyscallOutcome::Return(-e),
            }
        };
        let fpu = match m.fpu_state() {
            Ok(f) => f,
            Err(e) => {
                if !vfork {
                    m.space_release(child_space);
                }
                return SyscallOutcome::Return(-e);
            }
        };
        let pid = self.procs.new_pid();
        let mut child = self.p.fork_copy(pid, child_space);
        let mut regs = m.user_regs();
        regs.rax = 0;
        if stack != 0 {
            regs.rsp = stack;
        }
        if flags & CLONE_SETTLS != 0 {
            regs.fs_base = tls;
        }
        if flags & CLONE_PARENT_SETTID != 0 && parent_tid != 0 {
            let _ = m.write(parent_tid, &(pid as i32).to_le_bytes());
        }
        if flags & CLONE_CHILD_SETTID != 0 && child_tid != 0 {
            m.space_switch(child_space);
            let _ = m.write(child_tid, &(pid as i32).to_le_bytes());
            m.space_switch(parent_space);
        }
        child.ppid = self.p.pid;
        child.borrowed_space = vfork;
        tracing::debug!(parent = self.p.pid, child = pid, vfork, "fork");
        let saved = Saved {
            regs,
            fpu,
            restart: false,
        };
        if vfork {
            // The child runs first; the parent resumes with the child's pid once it has
            // exec'd or exited.
            let mut parent_regs = m.user_regs();
            parent_regs.rax = pid as u64;
            let parent_fpu = saved.fpu.clone();
            let prev = std::mem::replace(&mut self.p, child);
            self.procs.parked.insert(
                prev.pid,
                Parked {
                    proc: prev,
                    state: State::VforkParent {
                        saved: Saved {
                            regs: parent_regs,
                            fpu: parent_fpu,
                            restart: false,
                        },
                        child: pid,
                    },
                },
            );
            return self.resume(m, saved);
        }
        self.procs.parked.insert(
            pid,
            Parked {
                proc: child,
                state: State::Runnable(saved),
            },
        );
        self.procs.runq.push_back(pid);
        SyscallOutcome::Return(pid)
    }

    /// The parent of `pid` learns that it changed state (to wait `status`): a waiting parent
    /// runs again, a vfork parent of it too, and a SIGCHLD handler gets its signal.
    fn child_changed(&mut self, ppid: i64, pid: i64, status: i32) {
        let handler = self
            .procs
            .parked
            .get(&ppid)
            .is_some_and(|p| crate::signal::has_handler(&p.proc, crate::signal::SIGCHLD));
        if handler {
            let (code, value) = match status & 0x7f {
                0 => (1, (status >> 8) & 0xff), // CLD_EXITED
                sig => (2, sig),                // CLD_KILLED
            };
            let info = crate::signal::SigInfo {
                code,
                pid,
                status: value,
            };
            self.post_signal(ppid, crate::signal::SIGCHLD, info);
        }
        self.notify_parent(ppid, pid);
    }

    /// The parent of `pid` learns that it changed state: a waiting parent runs again, a vfork
    /// parent of it too.
    fn notify_parent(&mut self, ppid: i64, pid: i64) {
        let wake = match self.procs.parked.get(&ppid).map(|p| &p.state) {
            Some(State::Waiting(_) | State::Suspended(_)) => true,
            Some(State::VforkParent { child, .. }) => *child == pid,
            _ => false,
        };
        if wake {
            self.procs.make_runnable(ppid);
        }
    }

    /// The vfork parent of the running process, if any, may run again (exec or exit).
    fn release_vfork_parent(&mut self) {
        let (ppid, me) = (self.p.ppid, self.p.pid);
        if matches!(
            self.procs.parked.get(&ppid).map(|p| &p.state),
            Some(State::VforkParent { child, .. }) if *child == me
        ) {
            self.procs.make_runnable(ppid);
        }
    }

    /// Ends the running process with wait status `status`. The container's init ending ends
    /// the container (Linux kills the rest of a pid namespace with its init).
    pub(crate) fn exit_process(&mut self, m: &mut dyn Machine, status: i32) -> SyscallOutcome {
        if self.p.pid == 1 {
            return match status & 0x7f {
                0 => SyscallOutcome::Exit((status >> 8) & 0xff),
                sig => SyscallOutcome::Killed(sig),
            };
        }
        tracing::debug!(pid = self.p.pid, status, "exit");
        self.close_all(m);
        let me = self.p.pid;
        self.reparent_orphans(me);
        self.release_vfork_parent();
        self.child_changed(self.p.ppid, me, status);
        let Some(Next::Other(next)) = self.next_runnable(m, None) else {
            tracing::error!(pid = me, "no process left to run after an exit");
            return SyscallOutcome::Exit(125);
        };
        let (next, saved) = *next;
        let old_space = self.space(m);
        let borrowed = self.p.borrowed_space;
        let prev = std::mem::replace(&mut self.p, next);
        let outcome = self.resume(m, saved);
        if !borrowed {
            m.space_release(old_space);
        }
        self.procs.parked.insert(
            prev.pid,
            Parked {
                proc: prev,
                state: State::Zombie { status },
            },
        );
        outcome
    }

    /// The children of `dead` (the running process among them, if it is one) go to init, which
    /// is told if it has zombies among them to reap.
    fn reparent_orphans(&mut self, dead: i64) {
        if self.p.ppid == dead {
            self.p.ppid = 1;
        }
        let mut adopted_zombie = false;
        for p in self.procs.parked.values_mut() {
            if p.proc.ppid == dead {
                p.proc.ppid = 1;
                adopted_zombie |= matches!(p.state, State::Zombie { .. });
            }
        }
        if adopted_zombie {
            self.notify_parent(1, 0);
        }
    }

    /// Closes every descriptor of the running process.
    fn close_all(&mut self, m: &mut dyn Machine) {
        for fd in self.p.fds.open_fds() {
            let _ = self.close(m, fd);
        }
    }

    /// Whether a process other than the running one holds `kind` open (so closing it here
    /// must not release it).
    pub(crate) fn held_elsewhere(&self, kind: &crate::fs::FileKind) -> bool {
        self.procs
            .parked
            .values()
            .any(|p| p.proc.fds.refers_to(kind))
    }

    /// The zombie child matching `which`, if any; `Err(ECHILD)` if no child matches at all.
    fn find_child(&self, which: Which) -> Result<Option<Reaped>, i64> {
        let me = self.p.pid;
        let mut any = false;
        for (pid, p) in &self.procs.parked {
            let matches = p.proc.ppid == me
                && match which {
                    Which::Any => true,
                    Which::Pid(want) => *pid == want,
                    Which::Group(g) => p.proc.pgid == g,
                };
            if !matches {
                continue;
            }
            any = true;
            if let State::Zombie { status } = p.state {
                return Ok(Some(Reaped { pid: *pid, status }));
            }
        }
        if any {
            Ok(None)
        } else {
            Err(ECHILD)
        }
    }

    fn which(&self, pid: i64) -> Which {
        match pid {
            -1 => Which::Any,
            0 => Which::Group(self.p.pgid),
            p if p < -1 => Which::Group(-p),
            p => Which::Pid(p),
        }
    }

    /// wait4(2).
    pub(crate) fn wait4(
        &mut self,
        m: &mut dyn Machine,
        pid: i64,
        status_va: u64,
        options: u64,
        rusage: u64,
    ) -> SyscallOutcome {
        match self.find_child(self.which(pid)) {
            Err(e) => SyscallOutcome::Return(-e),
            Ok(Some(r)) => {
                if status_va != 0 && m.write(status_va, &r.status.to_le_bytes()).is_err() {
                    return SyscallOutcome::Return(-EFAULT);
                }
                if rusage != 0 && m.write(rusage, &[0u8; 144]).is_err() {
                    return SyscallOutcome::Return(-EFAULT);
                }
                self.procs.parked.remove(&r.pid);
                SyscallOutcome::Return(r.pid)
            }
            Ok(None) if options & WNOHANG != 0 => SyscallOutcome::Return(0),
            Ok(None) => {
                let regs = Self::restart_regs(m);
                self.switch_away(m, regs, true, State::Waiting)
            }
        }
    }

    /// waitid(2) for exited children (P_ALL, P_PID, P_PGID).
    pub(crate) fn waitid(
        &mut self,
        m: &mut dyn Machine,
        idtype: u64,
        id: u64,
        info: u64,
        options: u64,
    ) -> SyscallOutcome {
        if options & WEXITED == 0 {
            return SyscallOutcome::Return(-EINVAL);
        }
        let which = match idtype {
            0 => Which::Any,
            1 => Which::Pid(id as i32 as i64),
            2 => Which::Group(id as i32 as i64),
            _ => return SyscallOutcome::Return(-EINVAL),
        };
        match self.find_child(which) {
            Err(e) => SyscallOutcome::Return(-e),
            Ok(Some(r)) => {
                let mut si = [0u8; 128];
                si[0..4].copy_from_slice(&SIGCHLD.to_le_bytes());
                let (code, value) = match r.status & 0x7f {
                    0 => (1i32, (r.status >> 8) & 0xff), // CLD_EXITED
                    sig => (2, sig),                     // CLD_KILLED
                };
                si[8..12].copy_from_slice(&code.to_le_bytes());
                si[16..20].copy_from_slice(&(r.pid as i32).to_le_bytes());
                si[24..28].copy_from_slice(&value.to_le_bytes());
                if info != 0 && m.write(info, &si).is_err() {
                    return SyscallOutcome::Return(-EFAULT);
                }
                if options & WNOWAIT == 0 {
                    self.procs.parked.remove(&r.pid);
                }
                SyscallOutcome::Return(0)
            }
            Ok(None) if options & WNOHANG != 0 => {
                if info != 0 && m.write(info, &[0u8; 128]).is_err() {
                    return SyscallOutcome::Return(-EFAULT);
                }
                SyscallOutcome::Return(0)
            }
            Ok(None) => {
                let regs = Self::restart_regs(m);
                self.switch_away(m, regs, true, State::Waiting)
            }
        }
    }

    /// Reads a whole file of the root (a program image), or takes it from the cache.
    fn read_image(
        &mut self,
        m: &mut dyn Machine,
        path: &[u8],
    ) -> Result<std::sync::Arc<Vec<u8>>, i64> {
        let file = m.fs_open(path, 0, 0)?;
        let mut key = [0u8; 24];
        match m.fs_stat(file) {
            Ok(st) => {
                key[..8].copy_from_slice(&st[48..56]); // st_size
                key[8..].copy_from_slice(&st[88..104]); // st_mtime, st_mtime_nsec
            }
            Err(e) => {
                m.fs_close(file);
                return Err(e);
            }
        }
        if let Some(image) = self.images.get(path, &key) {
            m.fs_close(file);
            return Ok(image);
        }
        let mut image = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let result = loop {
            match m.fs_read(file, &mut buf, Some(image.len() as u64)) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    image.extend_from_slice(&buf[..n]);
                    if image.len() as u64 > MAX_IMAGE {
                        break Err(ENOMEM);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        m.fs_close(file);
        result?;
        let image = std::sync::Arc::new(image);
        self.images.put(path, key, image.clone());
        Ok(image)
    }

    /// execve(2)/execveat(2): replaces the running process's program.
    pub(crate) fn execve(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path_va: u64,
        argv_va: u64,
        envp_va: u64,
    ) -> SyscallOutcome {
        match self.exec_inner(m, dirfd, path_va, argv_va, envp_va) {
            Ok(outcome) => outcome,
            Err(e) => SyscallOutcome::Return(-e),
        }
    }

    fn exec_inner(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path_va: u64,
        argv_va: u64,
        envp_va: u64,
    ) -> Result<SyscallOutcome, i64> {
        let path = self.at_path(m, dirfd, path_va)?;
        let mut argv = read_string_array(m, argv_va)?;
        let envp = read_string_array(m, envp_va)?;
        let mut exe = path.clone();
        let mut image = self.read_image(m, &path)?;
        if let Some((interp, arg)) = shebang(&image) {
            let script = String::from_utf8_lossy(&path).into_owned();
            let mut new_argv = vec![interp.clone()];
            new_argv.extend(arg);
            new_argv.push(script);
            new_argv.extend(argv.into_iter().skip(1));
            argv = new_argv;
            exe = interp.into_bytes();
            image = self.read_image(m, &exe)?;
        }
        if argv.is_empty() {
            // Linux gives argv[0] = "" to a program started without arguments.
            argv.push(String::new());
        }
        let old_space = self.space(m);
        let new_space = m.space_new()?;
        m.space_switch(new_space);
        // A dynamically linked program starts in its interpreter, read from the root too.
        let interp = match crate::elf::interpreter(&image) {
            Ok(Some(path)) => Some(self.read_image(m, path.as_bytes())?),
            Ok(None) => None,
            Err(_) => return Err(ENOEXEC),
        };
        let loaded = match crate::elf::load(
            m,
            &image,
            interp.as_deref().map(|v| v.as_slice()),
            &argv,
            &envp,
        ) {
            Ok(l) => l,
            Err(e) => {
                m.space_switch(old_space);
                m.space_release(new_space);
                tracing::debug!(path = %String::from_utf8_lossy(&exe), "exec: {e}");
                return Err(match e {
                    crate::ElfError::Memory(_) => ENOMEM,
                    _ => ENOEXEC,
                });
            }
        };
        if !std::mem::take(&mut self.p.borrowed_space) {
            m.space_release(old_space);
        }
        self.p.space = new_space;
        self.p.exec_reset(&exe, loaded.brk);
        for fd in self.p.fds.cloexec_fds() {
            let _ = self.close(m, fd);
        }
        self.release_vfork_parent();
        tracing::debug!(pid = self.p.pid, exe = %String::from_utf8_lossy(&exe), "exec");
        m.set_user_regs(&UserRegs {
            rip: loaded.entry,
            rsp: loaded.stack_pointer,
            rflags: 0x202,
            ..UserRegs::default()
        });
        Ok(SyscallOutcome::Resume)
    }

    /// Whether `sig` (with no handler in `proc`) ends it: Some(true) terminate, Some(false)
    /// ignored, None for no such signal.
    fn terminates(proc: &Proc, sig: u64) -> Option<bool> {
        // SIGCHLD, SIGCONT, SIGURG, SIGWINCH are ignored by default; stop signals are treated
        // as ignored (nobody would continue the process).
        const IGNORED: [u64; 8] = [17, 18, 23, 28, 19, 20, 21, 22];
        if sig == 0 || sig > 64 {
            return None;
        }
        let slot = &proc.sigactions[(sig - 1) as usize];
        let handler = u64::from_le_bytes(slot[..8].try_into().unwrap_or_default());
        if sig == 9 {
            return Some(true); // SIGKILL is neither caught nor ignored
        }
        Some(handler == 0 && !IGNORED.contains(&sig))
    }

    /// kill(2): `target` > 0 a process, 0 the caller's group, -1 every process but init and
    /// the caller, < -1 the group -target. A handler gets the signal; without one the default
    /// action is taken. Init (pid 1) is shielded
    /// from signals it has no handler for, as Linux shields a pid namespace's init.
    pub(crate) fn kill(&mut self, m: &mut dyn Machine, target: i64, sig: u64) -> SyscallOutcome {
        if sig > 64 {
            return SyscallOutcome::Return(-EINVAL);
        }
        let me = self.p.pid;
        let mut pids: Vec<i64> = std::iter::once(&self.p)
            .chain(
                self.procs
                    .parked
                    .values()
                    .filter(|p| !matches!(p.state, State::Zombie { .. }))
                    .map(|p| &p.proc),
            )
            .filter(|p| match target {
                t if t > 0 => p.pid == t,
                0 => p.pgid == self.p.pgid,
                -1 => p.pid != 1 && p.pid != me,
                t => p.pgid == -t,
            })
            .map(|p| p.pid)
            .collect();
        if pids.is_empty() {
            return SyscallOutcome::Return(-ESRCH);
        }
        if sig == 0 {
            return SyscallOutcome::Return(0);
        }
        // Others first: the caller may be among the dead.
        pids.sort_by_key(|p| *p == me);
        for pid in pids {
            let proc = if pid == me {
                &self.p
            } else {
                match self.procs.parked.get(&pid) {
                    Some(p) => &p.proc,
                    None => continue,
                }
            };
            let (handler, terminates) = (
                crate::signal::has_handler(proc, sig),
                Self::terminates(proc, sig),
            );
            if pid == 1 && me != 1 && !handler {
                continue; // init without a handler ignores what its namespace sends it
            }
            if handler {
                let info = crate::signal::SigInfo {
                    code: 0, // SI_USER
                    pid: me,
                    status: 0,
                };
                self.post_signal(pid, sig, info);
                continue;
            }
            if terminates != Some(true) {
                continue;
            }
            if pid == me {
                return self.exit_process(m, sig as i32);
            }
            self.kill_parked(m, pid, sig as i32);
        }
        SyscallOutcome::Return(0)
    }

    /// Ends parked process `pid` with wait status `status`.
    fn kill_parked(&mut self, m: &mut dyn Machine, pid: i64, status: i32) {
        let Some(target) = self.procs.parked.remove(&pid) else {
            return;
        };
        tracing::debug!(pid, status, "killed");
        // Close its descriptors as if it ran, the caller parked meanwhile (so files it holds
        // too stay open).
        let me = self.p.pid;
        let caller = std::mem::replace(&mut self.p, target.proc);
        self.procs.parked.insert(
            me,
            Parked {
                proc: caller,
                state: State::Zombie { status: 0 },
            },
        );
        self.close_all(m);
        let Some(caller) = self.procs.parked.remove(&me) else {
            unreachable!("parked just above")
        };
        let mut dead = std::mem::replace(&mut self.p, caller.proc);
        if !dead.borrowed_space {
            m.space_release(dead.space);
        }
        self.reparent_orphans(pid);
        if self.p.pid != dead.ppid {
            // A vfork parent of it may go on; a waiting parent learns of it.
            if matches!(
                self.procs.parked.get(&dead.ppid).map(|p| &p.state),
                Some(State::VforkParent { child, .. }) if *child == pid
            ) {
                self.procs.make_runnable(dead.ppid);
            }
            self.child_changed(dead.ppid, pid, status);
        } else if crate::signal::has_handler(&self.p, crate::signal::SIGCHLD) {
            let info = crate::signal::SigInfo {
                code: 2, // CLD_KILLED
                pid,
                status,
            };
            self.p.post(crate::signal::SIGCHLD, info);
        }
        dead.fds = crate::fs::FdTable::empty();
        self.procs.parked.insert(
            pid,
            Parked {
                proc: dead,
                state: State::Zombie { status },
            },
        );
    }

    /// setpgid(2): the running process or a child of it.
    pub(crate) fn setpgid(&mut self, pid: i64, pgid: i64) -> Result<i64, i64> {
        if pgid < 0 {
            return Err(EINVAL);
        }
        let target = if pid == 0 { self.p.pid } else { pid };
        let pgid = if pgid == 0 { target } else { pgid };
        if target == self.p.pid {
            self.p.pgid = pgid;
            return Ok(0);
        }
        match self.procs.parked.get_mut(&target) {
            Some(p) if p.proc.ppid == self.p.pid => {
                p.proc.pgid = pgid;
                Ok(0)
            }
            _ => Err(ESRCH),
        }
    }

    /// getpgid(2) and getsid(2).
    pub(crate) fn group_of(&self, pid: i64, session: bool) -> Result<i64, i64> {
        let p = if pid == 0 || pid == self.p.pid {
            &self.p
        } else {
            &self.procs.parked.get(&pid).ok_or(ESRCH)?.proc
        };
        Ok(if session { p.sid } else { p.pgid })
    }

    /// setsid(2).
    pub(crate) fn setsid(&mut self) -> Result<i64, i64> {
        if self.p.pgid == self.p.pid {
            return Err(EPERM);
        }
        self.p.sid = self.p.pid;
        self.p.pgid = self.p.pid;
        Ok(self.p.pid)
    }
}

/// Internal errno: a sleep parks the process (its deadline in `Proc::sleep_until`) so others
/// run meanwhile. Never reaches the app.
pub const ESLEEP: i64 = 514;

/// errno when a process would wait with nothing left to wake it: EDEADLK.
const EDEADLK_OR_CHILD: i64 = 35;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang(b"#!/bin/sh\necho hi\n"),
            Some(("/bin/sh".into(), None))
        );
        assert_eq!(
            shebang(b"#! /usr/bin/env  python3 \n"),
            Some(("/usr/bin/env".into(), Some("python3".into())))
        );
        assert_eq!(shebang(b"#!\n"), None);
        assert_eq!(shebang(b"\x7fELF"), None);
    }
}
