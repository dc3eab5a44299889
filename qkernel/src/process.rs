//! Processes and threads: fork, vfork and clone (threads too), execve with `#!` scripts,
//! wait4/waitid, exit and exit_group, process groups and sessions, and the scheduler.
//!
//! The running process lives in [`Kernel::p`] and its running thread in [`Kernel::t`]; the
//! other processes are parked in `Kernel::procs` and every other thread (of any process) with
//! its registers and FPU state. A process ([`Proc`]) holds what its threads share: memory,
//! descriptors, signal handlers, ids; a [`Thread`] holds its tid, signal mask and pending
//! signals. The one vCPU runs one thread at a time and switches when the running one exits,
//! waits (wait4, vfork, a pipe, a futex, a sleep) or is preempted by the platform's timer, the
//! next runnable one taking its place. A call that waits is run again from its `syscall`
//! instruction when its thread resumes, so it sees the world as it is then (Linux's restart of
//! an interrupted call, without the signal).
//!
//! Memory: fork copies every user page into the child's own address space (the platform
//! cannot make pages copy-on-write on this host, see qvisor's memory module); exec builds a
//! new space and gives the old one back. Threads share their process's space.

use std::collections::{BTreeMap, VecDeque};

use crate::errno::*;
use crate::machine::{Machine, SpaceId, UserRegs};
use crate::syscalls::{Kernel, Proc, SyscallOutcome};

const CLONE_VM: u64 = 0x100;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_VFORK: u64 = 0x4000;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SETTLS: u64 = 0x80000;
const CLONE_PARENT_SETTID: u64 = 0x100000;
const CLONE_CHILD_CLEARTID: u64 = 0x200000;
const CLONE_CHILD_SETTID: u64 = 0x1000000;
const WNOHANG: u64 = 1;
/// WUNTRACED for wait4, WSTOPPED for waitid.
const WSTOPPED: u64 = 2;
const WEXITED: u64 = 4;
const WCONTINUED: u64 = 8;
const SIGCONT: u64 = 18;
/// Wait status of a continued process.
const CONTINUED: i32 = 0xffff;
const WNOWAIT: u64 = 0x0100_0000;
const SIGCHLD: i32 = 17;
/// Largest program image exec reads.
const MAX_IMAGE: u64 = 512 << 20;
/// Largest argv + envp exec copies, in strings and in bytes (Linux: 2 MiB of strings).
const MAX_ARGS: usize = 65_536;
const MAX_ARG_BYTES: usize = 2 << 20;

/// One thread of a process: what is its own. Memory, descriptors and signal handlers are
/// its process's ([`Proc`]), shared by all its threads.
#[derive(Debug)]
pub(crate) struct Thread {
    pub(crate) tid: i64,
    pub(crate) sigmask: u64,
    /// Signals pending for it and the handlers it is in.
    pub(crate) signals: crate::signal::SignalState,
    /// When a parked sleep ends (monotonic ns).
    pub(crate) sleep_until: u64,
    /// Where its tid is cleared, and a futex waiter there woken, when it exits
    /// (set_tid_address, CLONE_CHILD_CLEARTID): how pthread_join learns of the exit.
    pub(crate) clear_child_tid: u64,
    /// When the socket call it is parked in (and runs again) times out (monotonic ns).
    pub(crate) io_until: Option<u64>,
    /// What the blocking socket write it is parked in has sent so far: the write goes on
    /// from there when it runs again (Linux returns from a blocking write only when all of
    /// it is in, after a signal or a timeout with what is).
    pub(crate) write_progress: Option<crate::net::WriteProgress>,
    /// The head of its robust futex list (set_robust_list), walked when it dies.
    pub(crate) robust_list: u64,
    /// CPU time it has used (ns), up to when it was last charged ([`Kernel::charge_cpu`]).
    pub(crate) cpu_ns: u64,
    /// The signals it waits for in rt_sigtimedwait (0: none): one of them posted wakes it,
    /// blocked as it is.
    pub(crate) sigwait: u64,
}

impl Saved {
    /// A thread that has not run yet: it starts at `regs` with FPU state `fpu`.
    pub(crate) fn fresh(regs: UserRegs, fpu: Vec<u8>) -> Saved {
        Saved {
            regs,
            fpu,
            restart: false,
        }
    }
}

impl Thread {
    pub(crate) fn new(tid: i64, sigmask: u64) -> Thread {
        Thread {
            tid,
            sigmask,
            signals: Default::default(),
            sleep_until: 0,
            clear_child_tid: 0,
            io_until: None,
            write_progress: None,
            robust_list: 0,
            cpu_ns: 0,
            sigwait: 0,
        }
    }
}

/// `struct rusage` (144 bytes) with `user_ns` as its user time and `max_rss_kib`; the
/// counters qkernel does not keep are 0.
pub(crate) fn rusage_bytes(user_ns: u64, max_rss_kib: u64) -> [u8; 144] {
    let mut b = [0u8; 144];
    b[..8].copy_from_slice(&(user_ns / 1_000_000_000).to_le_bytes());
    b[8..16].copy_from_slice(&(user_ns % 1_000_000_000 / 1000).to_le_bytes());
    b[32..40].copy_from_slice(&max_rss_kib.to_le_bytes());
    b
}

/// Registers and FPU state of a thread that is not running.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    pub(crate) regs: UserRegs,
    fpu: Vec<u8>,
    /// The registers run a waiting call again (a signal handler first decides: SA_RESTART
    /// keeps that, else the call returns EINTR).
    restart: bool,
}

/// Why a thread is not running.
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
    /// In a futex wait on `addr` of its process: runs (returning 0) when woken with a bitset
    /// meeting `bitset`, ETIMEDOUT at `until`, EINTR on a signal. `seq` orders the waiters.
    Futex {
        saved: Saved,
        addr: u64,
        bitset: u32,
        until: u64,
        seq: u64,
        /// The word's machine-wide key when it is in shared memory: a wake from another
        /// process on the same key counts.
        shared: Option<u64>,
    },
    /// A vfork parent: runs once `child` has exec'd or exited.
    VforkParent {
        saved: Saved,
        child: i64,
    },
    /// In a call on sockets that would wait (recv, accept, poll...): runs the call again once
    /// one of `socks` is ready, at `until` (its timeout), on a signal, or a pipe's change.
    Io {
        saved: Saved,
        socks: Vec<IoWant>,
        until: u64,
        /// A poll, select or epoll_wait: a handler ends it with EINTR, never restarts it
        /// (Linux's ERESTARTNOHAND), whatever SA_RESTART says.
        poll: bool,
    },
}

impl State {
    fn saved_mut(&mut self) -> &mut Saved {
        match self {
            State::Runnable(s)
            | State::Waiting(s)
            | State::Blocked(s)
            | State::Suspended(s)
            | State::Sleeping { saved: s, .. }
            | State::Futex { saved: s, .. }
            | State::Io { saved: s, .. }
            | State::VforkParent { saved: s, .. } => s,
        }
    }

    /// When it runs without being woken (a sleep's or timed futex wait's end).
    fn deadline(&self) -> Option<u64> {
        match self {
            State::Sleeping { until, .. }
            | State::Futex { until, .. }
            | State::Io { until, .. } => (*until != u64::MAX).then_some(*until),
            _ => None,
        }
    }

    /// A signal ends the wait (EINTR, or the call runs again after the handler).
    fn interruptible(&self) -> bool {
        !matches!(self, State::Runnable(_) | State::VforkParent { .. })
    }
}

/// The process or thread a CPU clock id names ([`Kernel::cpu_clock_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CpuClockId {
    Process(i64),
    Thread(i64),
}

/// A process none of whose threads runs.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) proc: Proc,
    /// Exited, with its wait status, until its parent reaps it (it has no threads left).
    pub(crate) zombie: Option<i32>,
}

/// A thread that is not running, of process `pid`.
#[derive(Debug)]
pub(crate) struct ParkedThread {
    pid: i64,
    thread: Thread,
    state: State,
}

/// The processes and threads that are not running.
#[derive(Debug, Default)]
pub(crate) struct ProcTable {
    /// Every process but the running one, by pid.
    pub(crate) parked: BTreeMap<i64, Parked>,
    /// Every thread but the running one, by tid (tids and pids are one number space).
    threads: BTreeMap<i64, ParkedThread>,
    runq: VecDeque<i64>,
    next_pid: i64,
    futex_seq: u64,
    /// Processes stopped by a stop signal: their threads do not run until SIGCONT.
    stopped: std::collections::BTreeSet<i64>,
}

/// The thread that runs next, with its process's pid.
type NextThread = (i64, Thread, Saved);

/// A socket a thread waits on, and for what: (socket, readable, writable).
pub(crate) type IoWant = (crate::machine::SocketId, bool, bool);

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
    /// A stop or a continue (the child lives on), not an exit.
    event: bool,
}

/// What a signal does to a process that has no handler for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultAction {
    Terminate,
    Ignore,
    Stop,
    Continue,
}

/// SIGCHLD's si_code and si_status for a wait status.
fn child_code(status: i32) -> (i32, i32) {
    match status {
        CONTINUED => (6, SIGCONT as i32),              // CLD_CONTINUED
        s if s & 0xff == 0x7f => (5, (s >> 8) & 0xff), // CLD_STOPPED
        s if s & 0x7f == 0 => (1, (s >> 8) & 0xff),    // CLD_EXITED
        s => (2, s & 0x7f),                            // CLD_KILLED
    }
}

impl ProcTable {
    pub(crate) fn new_pid(&mut self) -> i64 {
        self.next_pid = self.next_pid.max(1) + 1;
        while self.parked.contains_key(&self.next_pid) || self.threads.contains_key(&self.next_pid)
        {
            self.next_pid += 1;
        }
        self.next_pid
    }

    /// CPU time of process `pid`'s parked threads (ns).
    pub(crate) fn threads_cpu_ns(&self, pid: i64) -> u64 {
        self.threads
            .values()
            .filter(|t| t.pid == pid)
            .map(|t| t.thread.cpu_ns)
            .sum()
    }

    /// The last pid handed out (/proc/loadavg), 1 before any fork.
    pub(crate) fn last_pid(&self) -> i64 {
        self.next_pid.max(1)
    }

    /// (runnable, all) threads besides the running one.
    pub(crate) fn thread_counts(&self) -> (usize, usize) {
        let runnable = self
            .threads
            .values()
            .filter(|t| matches!(t.state, State::Runnable(_)))
            .count();
        (runnable, self.threads.len())
    }

    /// Tasks (threads and zombies) besides the running thread, as a pids cgroup counts them.
    pub(crate) fn tasks(&self) -> usize {
        self.threads.len() + self.parked.values().filter(|p| p.zombie.is_some()).count()
    }

    /// Whether process `pid` is stopped (SIGSTOP and its kind).
    pub(crate) fn is_stopped(&self, pid: i64) -> bool {
        self.stopped.contains(&pid)
    }

    /// The parked threads of process `pid`, for their signal state.
    pub(crate) fn parked_threads_mut(
        &mut self,
        pid: i64,
    ) -> impl Iterator<Item = (i64, &mut Thread)> {
        self.threads
            .iter_mut()
            .filter(move |(_, t)| t.pid == pid)
            .map(|(tid, t)| (*tid, &mut t.thread))
    }

    /// The parked threads of process `pid`, for their signal state.
    pub(crate) fn parked_threads(&self, pid: i64) -> impl Iterator<Item = &Thread> {
        self.threads
            .values()
            .filter(move |t| t.pid == pid)
            .map(|t| &t.thread)
    }

    /// The parked threads of process `pid`.
    pub(crate) fn threads_of(&self, pid: i64) -> Vec<i64> {
        self.threads
            .iter()
            .filter(|(_, t)| t.pid == pid)
            .map(|(tid, _)| *tid)
            .collect()
    }

    /// Drops every parked thread of process `pid` (it exits or execs).
    /// The robust futex lists of process `pid`'s parked threads: (tid, head).
    pub(crate) fn robust_lists_of(&self, pid: i64) -> Vec<(i64, u64)> {
        self.threads
            .iter()
            .filter(|(_, t)| t.pid == pid && t.thread.robust_list != 0)
            .map(|(tid, t)| (*tid, t.thread.robust_list))
            .collect()
    }

    fn remove_threads(&mut self, pid: i64) {
        self.threads.retain(|_, t| t.pid != pid);
    }

    pub(crate) fn make_runnable(&mut self, tid: i64) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        if matches!(t.state, State::Runnable(_)) {
            return;
        }
        let saved = t.state.saved_mut().clone();
        t.state = State::Runnable(saved);
        self.runq.push_back(tid);
    }

    /// Every thread whose deadline is at or before `now` (monotonic ns) becomes runnable.
    fn wake_sleepers(&mut self, now: u64) {
        let due: Vec<i64> = self
            .threads
            .iter()
            .filter(|(_, t)| t.state.deadline().is_some_and(|until| until <= now))
            .map(|(tid, _)| *tid)
            .collect();
        for tid in due {
            self.make_runnable(tid);
        }
    }

    /// What the threads parked on sockets wait for, each socket once.
    fn io_sockets(&self) -> Vec<IoWant> {
        let mut all: Vec<IoWant> = Vec::new();
        for t in self.threads.values() {
            if let State::Io { socks, .. } = &t.state {
                for &(s, want_in, want_out) in socks {
                    match all.iter_mut().find(|w| w.0 == s) {
                        Some(w) => {
                            w.1 |= want_in;
                            w.2 |= want_out;
                        }
                        None => all.push((s, want_in, want_out)),
                    }
                }
            }
        }
        all
    }

    /// The threads parked on any of `ready` run their calls again.
    fn wake_io(&mut self, ready: &[crate::machine::SocketId]) {
        let woken: Vec<i64> = self
            .threads
            .iter()
            .filter(|(_, t)| match &t.state {
                State::Io { socks, .. } => socks.iter().any(|w| ready.contains(&w.0)),
                _ => false,
            })
            .map(|(tid, _)| *tid)
            .collect();
        for tid in woken {
            self.make_runnable(tid);
        }
    }

    /// Every thread parked on sockets runs its call again.
    fn wake_all_io(&mut self) {
        let woken: Vec<i64> = self
            .threads
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Io { .. }))
            .map(|(tid, _)| *tid)
            .collect();
        for tid in woken {
            self.make_runnable(tid);
        }
    }

    /// Every thread blocked on a pipe runs its call again, and those parked on sockets too
    /// (a poll may watch pipes and sockets at once).
    pub(crate) fn wake_blocked(&mut self) {
        let blocked: Vec<i64> = self
            .threads
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Blocked(_) | State::Io { .. }))
            .map(|(tid, _)| *tid)
            .collect();
        for tid in blocked {
            self.make_runnable(tid);
        }
    }

    /// Whether a thread of `t`'s process may run (its process is not stopped) and is ready.
    fn ready(&self, t: &ParkedThread) -> bool {
        matches!(t.state, State::Runnable(_)) && !self.stopped.contains(&t.pid)
    }

    /// Takes the next runnable thread off the table (a stopped process's runnable threads
    /// leave the queue; SIGCONT puts them back).
    fn take_next(&mut self) -> Option<NextThread> {
        while let Some(tid) = self.runq.pop_front() {
            if self.threads.get(&tid).is_some_and(|t| self.ready(t)) {
                let t = self.threads.remove(&tid)?;
                let State::Runnable(saved) = t.state else {
                    unreachable!("checked just above")
                };
                return Some((t.pid, t.thread, saved));
            }
        }
        None
    }

    pub(crate) fn next_futex_seq(&mut self) -> u64 {
        self.futex_seq += 1;
        self.futex_seq
    }

    /// The threads of process `pid` waiting on the futex at `addr` with a bitset meeting
    /// `bitset`, longest waiting first.
    /// The threads waiting on `addr` of process `pid` with a bitset meeting `bitset`, longest
    /// waiting first; with `shared` (the word is in shared memory), also the threads of other
    /// processes waiting on the same word of shared memory (`shared`: its machine-wide key),
    /// wherever they map it.
    pub(crate) fn futex_waiters(
        &self,
        pid: i64,
        addr: u64,
        bitset: u32,
        shared: Option<u64>,
    ) -> Vec<i64> {
        let mut w: Vec<(u64, i64)> = self
            .threads
            .iter()
            .filter_map(|(tid, t)| match t.state {
                State::Futex {
                    addr: a,
                    bitset: b,
                    seq,
                    shared: s,
                    ..
                } if b & bitset != 0
                    && ((t.pid == pid && a == addr) || (shared.is_some() && s == shared)) =>
                {
                    Some((seq, *tid))
                }
                _ => None,
            })
            .collect();
        w.sort_unstable();
        w.into_iter().map(|(_, tid)| tid).collect()
    }

    /// A futex waiter's wait ends with 0.
    pub(crate) fn wake_futex_waiter(&mut self, tid: i64) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.state.saved_mut().regs.rax = 0;
        }
        self.make_runnable(tid);
    }

    /// A futex waiter waits on `to` instead.
    pub(crate) fn requeue_futex_waiter(&mut self, tid: i64, to: u64, to_key: Option<u64>) {
        if let Some(ParkedThread {
            state: State::Futex { addr, shared, .. },
            ..
        }) = self.threads.get_mut(&tid)
        {
            *addr = to;
            *shared = to_key;
        }
    }

    /// A new runnable thread of process `pid`, last in line.
    pub(crate) fn add_runnable(&mut self, pid: i64, thread: Thread, saved: Saved) {
        let tid = self.park(pid, thread, State::Runnable(saved));
        self.runq.push_back(tid);
    }

    /// Puts a thread taken by [`ProcTable::take_next`] back, first in line.
    fn put_back(&mut self, (pid, thread, saved): NextThread) {
        let tid = self.park(pid, thread, State::Runnable(saved));
        self.runq.push_front(tid);
    }

    /// Parks `thread` of process `pid` in `state` (a runnable one is not queued here); its
    /// tid.
    fn park(&mut self, pid: i64, thread: Thread, state: State) -> i64 {
        let tid = thread.tid;
        self.threads
            .insert(tid, ParkedThread { pid, thread, state });
        tid
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

/// /proc/PID/cmdline of a program started with `argv`: each argument ending in NUL.
pub(crate) fn cmdline_of(argv: &[String]) -> Vec<u8> {
    argv.iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect()
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
    pub(crate) fn space(&mut self, m: &dyn Machine) -> SpaceId {
        if self.p.space == 0 {
            self.p.space = m.space_current();
        }
        self.p.space
    }

    /// sigsuspend(2)/pause(2): parks the running thread until a signal comes, then returns
    /// EINTR. With nothing else that could run, EINTR at once: no signal could ever come.
    pub(crate) fn suspend(&mut self, m: &mut dyn Machine, mask_va: Option<u64>) -> SyscallOutcome {
        if let Some(va) = mask_va {
            let mut b = [0u8; 8];
            if m.read(va, &mut b).is_err() {
                return SyscallOutcome::Return(-EFAULT);
            }
            // The mask while suspended; the old one comes back with the handler's return.
            self.enter_call_mask(u64::from_le_bytes(b));
        }
        if self.t.deliverable().is_some() {
            if let Some(outcome) = self.deliver_on_return(m, -EINTR) {
                return outcome;
            }
        }
        let mut regs = m.user_regs();
        regs.rax = (-EINTR) as u64;
        match self.switch_away(m, regs, false, State::Suspended) {
            SyscallOutcome::Return(_) => {
                // Nothing else can run, so no signal can come.
                self.leave_call_mask();
                SyscallOutcome::Return(-EINTR)
            }
            other => other,
        }
    }

    /// Whether the running thread is the only one: nothing else could run while it waits.
    pub(crate) fn procs_alone(&self) -> bool {
        self.procs.threads.is_empty()
    }

    /// Parks the running thread until one of `socks` is ready or `until`; its call runs
    /// again then.
    pub(crate) fn park_on_sockets(
        &mut self,
        m: &mut dyn Machine,
        socks: Vec<IoWant>,
        until: u64,
        poll: bool,
    ) -> SyscallOutcome {
        let regs = Self::restart_regs(m);
        self.switch_away(m, regs, !poll, move |saved| State::Io {
            saved,
            socks,
            until,
            poll,
        })
    }

    /// Parks the running thread until a pipe changes; its call runs again then.
    pub(crate) fn block_on_pipe(&mut self, m: &mut dyn Machine) -> SyscallOutcome {
        let regs = Self::restart_regs(m);
        self.switch_away(m, regs, true, State::Blocked)
    }

    /// A sleep of `ns`: in place when the running thread is alone, else parked ([`ESLEEP`])
    /// so the others run meanwhile.
    pub(crate) fn sleep_for(&mut self, m: &mut dyn Machine, ns: u64) -> Result<i64, i64> {
        let alone = self.procs_alone();
        if alone || ns == 0 {
            // In place; a signal from the host wakes the host sleep early: a handler for it
            // interrupts the sleep (EINTR, the handler runs on return), else sleep on.
            let end = m.monotonic_ns().saturating_add(ns);
            loop {
                let now = m.monotonic_ns();
                if now >= end || m.cancelled() {
                    return Ok(0);
                }
                m.sleep_ns(end.min(self.next_timer).saturating_sub(now));
                self.take_host_events(m);
                if self.t.deliverable().is_some() {
                    return Err(EINTR);
                }
                if !self.procs_alone() {
                    // A process started from outside meanwhile: sleep parked, so it runs.
                    self.t.sleep_until = end;
                    return Err(ESLEEP);
                }
            }
        }
        self.t.sleep_until = m.monotonic_ns().saturating_add(ns);
        Err(ESLEEP)
    }

    /// Parks the running thread until its sleep ends.
    pub(crate) fn park_sleeping(&mut self, m: &mut dyn Machine) -> SyscallOutcome {
        let mut regs = m.user_regs();
        regs.rax = 0;
        let until = self.t.sleep_until;
        tracing::trace!(tid = self.t.tid, until, "sleep");
        self.switch_away(m, regs, false, |saved| State::Sleeping { saved, until })
    }

    /// The next thread to run: a runnable one, else, after waiting on the host until the
    /// earliest deadline or until a socket a thread waits on is ready, one whose wait is over
    /// (the thread that just parked may be it). None when every thread waits on another.
    fn next_runnable(&mut self, m: &mut dyn Machine) -> Option<NextThread> {
        // How long one host wait lasts at most, so signals from outside and a stop are seen.
        const IDLE_SLICE_NS: u64 = 50_000_000;
        loop {
            if let Some(next) = self.procs.take_next() {
                return Some(next);
            }
            let timer = (self.next_timer != u64::MAX).then_some(self.next_timer);
            let earliest = self
                .procs
                .threads
                .values()
                .filter_map(|t| t.state.deadline())
                .chain(timer)
                .min();
            let socks = self.procs.io_sockets();
            // With nothing that could wake a thread, it is a deadlock, unless the platform
            // may still start a process or send a signal: then wait for that, as Linux would.
            if earliest.is_none() && socks.is_empty() && (!self.host_requests || m.cancelled()) {
                return None;
            }
            let now = m.monotonic_ns();
            let until = earliest.unwrap_or(u64::MAX).min(now + IDLE_SLICE_NS);
            if socks.is_empty() {
                if until > now {
                    tracing::trace!(
                        ns = until - now,
                        "idle: nothing runs until the next deadline"
                    );
                    m.sleep_ns(until - now);
                }
            } else {
                let ms = (until.saturating_sub(now)).div_ceil(1_000_000) as i64;
                self.wake_ready_io(m, &socks, ms);
            }
            // A signal from the host may have made init runnable.
            self.take_host_events(m);
            // Stopped from outside meanwhile: everyone wakes, the vCPU loop ends the container.
            let now = if m.cancelled() {
                self.procs.wake_all_io();
                u64::MAX
            } else {
                m.monotonic_ns()
            };
            self.procs.wake_sleepers(now);
        }
    }

    /// Waits up to `timeout_ms` for one of `socks` (what the threads parked on sockets wait
    /// for) to be ready, and makes the threads waiting on a ready one runnable.
    fn wake_ready_io(&mut self, m: &mut dyn Machine, socks: &[IoWant], timeout_ms: i64) {
        match m.net_poll(socks, timeout_ms) {
            Ok(states) => {
                let ready: Vec<crate::machine::SocketId> = socks
                    .iter()
                    .zip(states)
                    .filter(|((_, want_in, want_out), st)| {
                        (*want_in && st.readable)
                            || (*want_out && st.writable)
                            || st.hangup
                            || st.error
                    })
                    .map(|((s, _, _), _)| *s)
                    .collect();
                self.procs.wake_io(&ready);
            }
            // A socket went away meanwhile: every waiter runs its call again and learns.
            Err(_) => self.procs.wake_all_io(),
        }
    }

    /// Process `pid`, running or parked.
    pub(crate) fn proc_of(&self, pid: i64) -> Option<&Proc> {
        if pid == self.p.pid {
            Some(&self.p)
        } else {
            self.procs.parked.get(&pid).map(|p| &p.proc)
        }
    }

    /// What came from outside since the last look: first the platform's requests (processes
    /// to start, signals for them), then signals for the container's init: its handler gets
    /// them, or they wait while it blocks them; else they are ignored, as Linux ignores what a
    /// pid namespace's init has no handler for.
    pub(crate) fn take_host_events(&mut self, m: &mut dyn Machine) {
        self.serve_host_requests(m);
        self.fire_timers(m);
        let mut sigs = m.take_host_signals();
        while sigs != 0 {
            let sig = u64::from(sigs.trailing_zeros()) + 1;
            sigs &= sigs - 1;
            // Linux never ignores a blocked signal, even init's (tini blocks everything and
            // takes its signals with sigtimedwait).
            let handled = self
                .proc_of(1)
                .is_some_and(|p| crate::signal::has_handler(p, sig));
            if handled || (sig != 9 && sig != 19 && self.blocked_everywhere(1, sig)) {
                let info = crate::signal::SigInfo {
                    code: 0, // SI_USER, from outside the container: pid 0
                    pid: 0,
                    status: 0,
                    addr: 0,
                    overrun: 0,
                    value: 0,
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

    /// The most tasks (processes and threads) the container may have at once (the OCI pids
    /// limit).
    pub fn set_max_processes(&mut self, max: usize) {
        self.max_processes = max.max(1);
    }

    /// Whether another thread could use the CPU (one is runnable, or a deadline has come,
    /// or one waits on sockets, which only a look can tell): the platform then preempts the
    /// running one with [`Kernel::preempt`].
    pub fn wants_preemption(&self, now_ns: u64) -> bool {
        now_ns >= self.next_timer
            || self.p.timers.cpu_armed() // only a look at its CPU time can tell
            || self.procs.threads.values().any(|t| {
                self.procs.ready(t)
                    || matches!(t.state, State::Io { .. })
                    || t.state.deadline().is_some_and(|u| u <= now_ns)
            })
    }

    /// Preemption: the running thread, stopped by the platform at an arbitrary instruction
    /// (its exact registers in `Machine::user_regs`), goes to the back of the run queue and
    /// the next runnable one runs. `None` (nothing else to run): it goes on.
    pub fn preempt(&mut self, m: &mut dyn Machine) -> Option<SyscallOutcome> {
        self.take_host_events(m);
        if self.t.deliverable().is_some() {
            // A signal for the running thread (from the host): its handler runs now.
            let mut regs = m.user_regs();
            if self.deliver(m, &mut regs, false) {
                m.set_user_regs(&regs);
                return Some(SyscallOutcome::Resume);
            }
        }
        let now = m.monotonic_ns();
        self.procs.wake_sleepers(now);
        let socks = self.procs.io_sockets();
        if !socks.is_empty() {
            self.wake_ready_io(m, &socks, 0);
        }
        let next = self.procs.take_next()?;
        let fpu = match m.fpu_state() {
            Ok(f) => f,
            Err(_) => {
                // Put it back: the next one waits for another chance.
                self.procs.put_back(next);
                return None;
            }
        };
        let saved = Saved {
            regs: m.user_regs(),
            fpu,
            restart: false,
        };
        let tid = self.t.tid;
        let next_saved = self.install(m, next, Some(State::Runnable(saved)));
        self.procs.runq.push_back(tid);
        Some(self.resume(m, next_saved))
    }

    /// Registers that run the current call again when the thread resumes.
    pub(crate) fn restart_regs(m: &dyn Machine) -> UserRegs {
        let mut r = m.user_regs();
        r.rip = r.rip.wrapping_sub(2); // back onto the `syscall` instruction
        r
    }

    /// Makes `next` the running thread and its process the running process; the thread that
    /// ran goes into the table in `prev`'s state (None: it is gone), its process with it if
    /// that changes. Returns what to resume `next` with ([`Kernel::resume`]).
    fn install(&mut self, m: &mut dyn Machine, next: NextThread, prev: Option<State>) -> Saved {
        let (pid, thread, saved) = next;
        let old = std::mem::replace(&mut self.t, thread);
        let me = self.p.pid;
        if let Some(state) = prev {
            self.procs.park(me, old, state);
        }
        if pid != me {
            self.space(m);
            match self.procs.parked.remove(&pid) {
                Some(next_proc) => {
                    let prev_proc = std::mem::replace(&mut self.p, next_proc.proc);
                    self.procs.parked.insert(
                        me,
                        Parked {
                            proc: prev_proc,
                            zombie: None,
                        },
                    );
                }
                None => tracing::error!(pid, tid = self.t.tid, "a thread of no process"),
            }
        }
        self.cpu_mark = m.cpu_time_ns(); // the new thread's CPU time starts now
        saved
    }

    /// Parks the running thread in `state` (built from its saved registers, which run the
    /// call again if `restart`) and runs the next runnable one, which may be itself once its
    /// wait is over.
    pub(crate) fn switch_away(
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
        self.charge_cpu(m);
        self.t.sleep_until = 0;
        self.space(m);
        let me = std::mem::replace(&mut self.t, Thread::new(0, 0));
        let tid = self
            .procs
            .park(self.p.pid, me, state(Saved { regs, fpu, restart }));
        let Some(next) = self.next_runnable(m) else {
            // Every thread waits: nothing could wake this one.
            if let Some(t) = self.procs.threads.remove(&tid) {
                self.t = t.thread;
            }
            return SyscallOutcome::Return(-EDEADLK_OR_CHILD);
        };
        let saved = self.install(m, next, None);
        self.resume(m, saved)
    }

    /// Loads the now-current thread's saved state into the machine, running a pending
    /// signal's handler first.
    fn resume(&mut self, m: &mut dyn Machine, saved: Saved) -> SyscallOutcome {
        if let Some(sig) = self.doomed_now() {
            return self.exit_process(m, sig);
        }
        let space = self.space(m);
        m.space_switch(space);
        if let Err(e) = m.set_fpu_state(&saved.fpu) {
            tracing::warn!(errno = e, "restoring FPU state");
        }
        let mut regs = saved.regs;
        if !self.deliver(m, &mut regs, saved.restart) {
            // No handler takes the mask a waiting call replaced: the call returns or runs
            // again, and one that runs again puts its mask back in place.
            self.leave_call_mask();
        }
        m.set_user_regs(&regs);
        SyscallOutcome::Resume
    }

    /// A signal with a handler for process `pid` (running or parked): pending on a thread of
    /// it that does not block it (the running one first), which is woken if it waits.
    pub(crate) fn post_signal(&mut self, pid: i64, sig: u64, info: crate::signal::SigInfo) {
        let bit = 1u64 << (sig - 1);
        // While a switch looks for the next thread, the one that ran is parked in the table
        // and `self.t` holds no thread (tid 0): the table has it then.
        let running = pid == self.p.pid && self.t.tid != 0;
        if running && self.t.sigmask & bit == 0 {
            self.t.post(sig, info);
            return;
        }
        let parked = self.procs.threads_of(pid);
        let parked_where = |ok: &dyn Fn(&Thread) -> bool| {
            parked
                .iter()
                .copied()
                .find(|tid| self.procs.threads.get(tid).is_some_and(|t| ok(&t.thread)))
        };
        // Blocked everywhere: it waits on a thread that will unblock it when its call ends (a
        // ppoll or sigsuspend whose own mask blocks it), else on the running one.
        let later = |t: &Thread| t.signals.suspend_mask.is_some_and(|old| old & bit == 0);
        let unblocked = parked_where(&|t| t.sigwait & bit != 0)
            .or_else(|| parked_where(&|t| t.sigmask & bit == 0));
        let unblocked = match unblocked {
            None if running && later(&self.t) => {
                self.t.post(sig, info);
                return;
            }
            None => parked_where(&later),
            some => some,
        };
        match unblocked.or(if running {
            None
        } else {
            parked.first().copied()
        }) {
            Some(tid) => self.post_to_thread(tid, sig, info),
            None if running => self.t.post(sig, info),
            None => {}
        }
    }

    /// A signal pending on thread `tid` (running or parked), woken if it waits.
    pub(crate) fn post_to_thread(&mut self, tid: i64, sig: u64, info: crate::signal::SigInfo) {
        if tid == self.t.tid {
            self.t.post(sig, info);
            return;
        }
        let Some(t) = self.procs.threads.get_mut(&tid) else {
            return;
        };
        t.thread.post(sig, info);
        if t.thread.sigwait & (1 << (sig - 1)) != 0 {
            // Its rt_sigtimedwait runs again and takes it.
            self.procs.make_runnable(tid);
            return;
        }
        if t.thread.deliverable().is_none() || !t.state.interruptible() {
            return;
        }
        match &mut t.state {
            State::Sleeping { saved, .. } | State::Futex { saved, .. } => {
                saved.regs.rax = (-EINTR) as u64; // the wait ends early
            }
            State::Io {
                saved, poll: true, ..
            } => {
                // Past the call, which returns EINTR after the handler.
                saved.regs.rip = saved.regs.rip.wrapping_add(2);
                saved.regs.rax = (-EINTR) as u64;
            }
            _ => {}
        }
        self.procs.make_runnable(tid);
    }

    /// clone(2), fork(2), vfork(2): a thread of the running process with CLONE_THREAD, else
    /// a new process with a copy of this one (sharing its memory until exec or exit with
    /// CLONE_VFORK).
    pub(crate) fn clone(
        &mut self,
        m: &mut dyn Machine,
        flags: u64,
        stack: u64,
        parent_tid: u64,
        child_tid: u64,
        tls: u64,
    ) -> SyscallOutcome {
        let vfork = flags & CLONE_VFORK != 0;
        if flags & CLONE_THREAD != 0 {
            // A thread shares everything a process has: Linux demands the flags that say so.
            const SHARED: u64 = CLONE_VM | CLONE_SIGHAND;
            if flags & SHARED != SHARED || vfork {
                return SyscallOutcome::Return(-EINVAL);
            }
        } else if flags & CLONE_VM != 0 && !vfork {
            // A second process in the same memory (not a thread): not supported.
            return SyscallOutcome::Return(-ENOSYS);
        }
        if self.procs.tasks() + 1 >= self.max_processes {
            return SyscallOutcome::Return(-EAGAIN); // the pids limit, as fork(2) reports it
        }
        let fpu = match m.fpu_state() {
            Ok(f) => f,
            Err(e) => return SyscallOutcome::Return(-e),
        };
        let mut regs = m.user_regs();
        regs.rax = 0;
        if stack != 0 {
            regs.rsp = stack;
        }
        if flags & CLONE_SETTLS != 0 {
            regs.fs_base = tls;
        }
        let saved = Saved {
            regs,
            fpu,
            restart: false,
        };
        if flags & CLONE_THREAD != 0 {
            // CLONE_FS and CLONE_FILES are taken as given: a thread shares its process's.
            return self.new_thread(m, flags, saved, parent_tid, child_tid);
        }
        self.fork(m, flags, saved, parent_tid, child_tid)
    }

    /// A new thread of the running process, runnable with `saved`; returns its tid.
    fn new_thread(
        &mut self,
        m: &mut dyn Machine,
        flags: u64,
        saved: Saved,
        parent_tid: u64,
        child_tid: u64,
    ) -> SyscallOutcome {
        let tid = self.procs.new_pid();
        let mut thread = Thread::new(tid, self.t.sigmask);
        if flags & CLONE_CHILD_CLEARTID != 0 {
            thread.clear_child_tid = child_tid;
        }
        // Same memory: both tid stores land in the one space.
        if flags & CLONE_PARENT_SETTID != 0 && parent_tid != 0 {
            let _ = m.write(parent_tid, &(tid as i32).to_le_bytes());
        }
        if flags & CLONE_CHILD_SETTID != 0 && child_tid != 0 {
            let _ = m.write(child_tid, &(tid as i32).to_le_bytes());
        }
        tracing::debug!(pid = self.p.pid, tid, "new thread");
        self.procs.add_runnable(self.p.pid, thread, saved);
        SyscallOutcome::Return(tid)
    }

    /// A new process, a copy of the running one of which only the calling thread goes on.
    fn fork(
        &mut self,
        m: &mut dyn Machine,
        flags: u64,
        saved: Saved,
        parent_tid: u64,
        child_tid: u64,
    ) -> SyscallOutcome {
        let vfork = flags & CLONE_VFORK != 0;
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
        let pid = self.procs.new_pid();
        let mut child = self.p.fork_copy(pid, child_space);
        child.start_ns = m.monotonic_ns();
        if flags & CLONE_PARENT_SETTID != 0 && parent_tid != 0 {
            let _ = m.write(parent_tid, &(pid as i32).to_le_bytes());
        }
        let mut thread = Thread::new(pid, self.t.sigmask);
        thread.signals.altstack = self.t.signals.altstack; // a fork keeps it; a thread has none
        if flags & CLONE_CHILD_SETTID != 0 && child_tid != 0 {
            m.space_switch(child_space);
            let _ = m.write(child_tid, &(pid as i32).to_le_bytes());
            m.space_switch(parent_space);
        }
        if flags & CLONE_CHILD_CLEARTID != 0 {
            thread.clear_child_tid = child_tid;
        }
        child.ppid = self.p.pid;
        child.borrowed_space = vfork;
        tracing::debug!(parent = self.p.pid, child = pid, vfork, "fork");
        self.procs.parked.insert(
            pid,
            Parked {
                proc: child,
                zombie: None,
            },
        );
        if vfork {
            // The child runs first; the parent resumes with the child's pid once it has
            // exec'd or exited.
            let mut parent_regs = m.user_regs();
            parent_regs.rax = pid as u64;
            let parent = Saved {
                regs: parent_regs,
                fpu: saved.fpu.clone(),
                restart: false,
            };
            let state = State::VforkParent {
                saved: parent,
                child: pid,
            };
            let saved = self.install(m, (pid, thread, saved), Some(state));
            return self.resume(m, saved);
        }
        self.procs.add_runnable(pid, thread, saved);
        SyscallOutcome::Return(pid)
    }

    /// The parent of `pid` learns that it changed state (to wait `status`): a waiting parent
    /// runs again, a vfork parent of it too, and a SIGCHLD handler gets its signal.
    fn child_changed(&mut self, ppid: i64, pid: i64, status: i32) {
        let (code, value) = child_code(status);
        let stop_or_continue = matches!(code, 5 | 6);
        let handler = self.proc_of(ppid).is_some_and(|p| {
            crate::signal::has_handler(p, crate::signal::SIGCHLD)
                && !(stop_or_continue && crate::signal::no_child_stop(p))
        });
        // Blocked, it waits for the parent (an init that reaps in rt_sigtimedwait, as tini).
        let blocked = !stop_or_continue && self.blocked_everywhere(ppid, crate::signal::SIGCHLD);
        if handler || blocked {
            let info = crate::signal::SigInfo {
                code,
                pid,
                status: value,
                addr: 0,
                overrun: 0,
                value: 0,
            };
            self.post_signal(ppid, crate::signal::SIGCHLD, info);
        }
        self.notify_parent(ppid, pid);
    }

    /// The parent of `pid` learns that it changed state: its threads waiting for a child run
    /// again, a vfork parent of it too.
    fn notify_parent(&mut self, ppid: i64, pid: i64) {
        for tid in self.procs.threads_of(ppid) {
            let wake = match self.procs.threads.get(&tid).map(|t| &t.state) {
                Some(State::Waiting(_) | State::Suspended(_)) => true,
                Some(State::VforkParent { child, .. }) => *child == pid,
                _ => false,
            };
            if wake {
                self.procs.make_runnable(tid);
            }
        }
    }

    /// Charges the running thread with the vCPU's CPU time since it was last charged (or
    /// began to run).
    pub(crate) fn charge_cpu(&mut self, m: &dyn Machine) {
        let now = m.cpu_time_ns();
        self.t.cpu_ns += now.saturating_sub(self.cpu_mark);
        self.cpu_mark = now;
    }

    /// CPU time of the running process: its threads' and its ended threads' (ns).
    pub(crate) fn process_cpu_ns(&mut self, m: &dyn Machine) -> u64 {
        self.charge_cpu(m);
        self.cpu_of(m, &self.p)
    }

    /// CPU time of the running thread (ns).
    pub(crate) fn thread_cpu_ns(&mut self, m: &dyn Machine) -> u64 {
        self.charge_cpu(m);
        self.t.cpu_ns
    }

    /// CPU time of thread `tid` of the running process as last charged, None when it has no
    /// such thread.
    pub(crate) fn own_thread_cpu_ns(&self, tid: i64) -> Option<u64> {
        if tid == self.t.tid {
            return Some(self.t.cpu_ns);
        }
        let t = self.procs.threads.get(&tid)?;
        (t.pid == self.p.pid).then_some(t.thread.cpu_ns)
    }

    /// What a clock id made by clock_getcpuclockid or pthread_getcpuclockid names
    /// (`~id << 3 | type`, bit 2 for a thread, id 0 for the caller; the three types, sched,
    /// prof and virt, all name the one CPU time kept), the caller's id filled in. None for
    /// any other clock id.
    pub(crate) fn cpu_clock_of(&self, clock: u64) -> Option<CpuClockId> {
        let clock = clock as i32;
        if clock >= 0 || clock & 3 == 3 {
            return None;
        }
        let id = i64::from(!(clock >> 3));
        Some(match (clock & 4 != 0, id) {
            (true, 0) => CpuClockId::Thread(self.t.tid),
            (true, tid) => CpuClockId::Thread(tid),
            (false, 0) => CpuClockId::Process(self.p.pid),
            (false, pid) => CpuClockId::Process(pid),
        })
    }

    /// The CPU time a clock id ([`Kernel::cpu_clock_of`]) reads: any process of the
    /// container, a thread of the caller's own process (as Linux). None when no such process
    /// or thread exists.
    pub(crate) fn cpu_clock_ns(&mut self, m: &dyn Machine, clock: u64) -> Option<u64> {
        let id = self.cpu_clock_of(clock)?;
        self.charge_cpu(m);
        match id {
            CpuClockId::Thread(tid) => self.own_thread_cpu_ns(tid),
            CpuClockId::Process(pid) => {
                let p = self.proc_of(pid)?; // a zombie's too, until it is reaped
                Some(self.cpu_of(m, p))
            }
        }
    }

    /// The vfork parent of the running process, if any, may run again (exec or exit).
    fn release_vfork_parent(&mut self) {
        let (ppid, me) = (self.p.ppid, self.p.pid);
        for tid in self.procs.threads_of(ppid) {
            if matches!(
                self.procs.threads.get(&tid).map(|t| &t.state),
                Some(State::VforkParent { child, .. }) if *child == me
            ) {
                self.procs.make_runnable(tid);
            }
        }
    }

    /// exit(2): ends the running thread; the last one to go ends its process.
    pub(crate) fn exit_thread(&mut self, m: &mut dyn Machine, status: i32) -> SyscallOutcome {
        if self.procs.threads_of(self.p.pid).is_empty() {
            return self.exit_process(m, status);
        }
        let (tid, robust) = (self.t.tid, std::mem::take(&mut self.t.robust_list));
        self.release_robust_list(m, tid, robust);
        self.clear_child_tid(m);
        self.charge_cpu(m);
        self.p.exited_cpu_ns += self.t.cpu_ns;
        tracing::debug!(pid = self.p.pid, tid = self.t.tid, "thread exit");
        let Some(next) = self.next_runnable(m) else {
            tracing::error!(pid = self.p.pid, "every thread left waits for another");
            return SyscallOutcome::Exit(125);
        };
        let saved = self.install(m, next, None);
        self.resume(m, saved)
    }

    /// What a thread's end tells pthread_join: 0 at its clear_child_tid, and a futex waiter
    /// there woken.
    fn clear_child_tid(&mut self, m: &mut dyn Machine) {
        let at = std::mem::take(&mut self.t.clear_child_tid);
        if at != 0 && m.write(at, &0u32.to_le_bytes()).is_ok() {
            self.futex_wake(m, at, 1, u32::MAX);
        }
    }

    /// exit_group(2), and a fatal signal: ends the running process and all its threads with
    /// wait status `status`. The container's init ending ends the container (Linux kills the
    /// rest of a pid namespace with its init).
    pub(crate) fn exit_process(&mut self, m: &mut dyn Machine, status: i32) -> SyscallOutcome {
        if self.p.pid == 1 {
            return match status & 0x7f {
                0 => SyscallOutcome::Exit((status >> 8) & 0xff),
                sig => SyscallOutcome::Killed(sig),
            };
        }
        tracing::debug!(pid = self.p.pid, status, "exit");
        let me = self.p.pid;
        let mut robust = self.procs.robust_lists_of(me);
        robust.push((self.t.tid, std::mem::take(&mut self.t.robust_list)));
        for (tid, head) in robust {
            self.release_robust_list(m, tid, head);
        }
        self.charge_cpu(m);
        self.p.exited_cpu_ns += self.t.cpu_ns + self.procs.threads_cpu_ns(me);
        self.procs.remove_threads(me);
        self.procs.stopped.remove(&me);
        self.close_all(m);
        self.reparent_orphans(me);
        self.release_vfork_parent();
        self.child_changed(self.p.ppid, me, status);
        // Told now: the next thread to run may be a while coming.
        let outside = self.tell_outside(m, me, status);
        let Some(next) = self.next_runnable(m) else {
            tracing::error!(pid = me, "no process left to run after an exit");
            return SyscallOutcome::Exit(125);
        };
        let old_space = self.space(m);
        let borrowed = self.p.borrowed_space;
        let saved = self.install(m, next, None);
        let outcome = self.resume(m, saved);
        if !borrowed {
            m.space_release(old_space);
        }
        if outside {
            self.procs.parked.remove(&me); // reaped: no parent in the container waits
        } else if let Some(p) = self.procs.parked.get_mut(&me) {
            p.zombie = Some(status);
        }
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
                adopted_zombie |= p.zombie.is_some();
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
        self.in_flight_refers_to(kind)
            || self.queued_refers_to(kind)
            || self
                .procs
                .parked
                .values()
                .any(|p| p.proc.fds.refers_to(kind))
    }

    /// The change of a child matching `which` that a wait with `options` reports (an exit with
    /// WEXITED, a stop with WSTOPPED, a continue with WCONTINUED), if any; `Err(ECHILD)` if no
    /// child matches at all.
    fn find_child(&self, which: Which, options: u64) -> Result<Option<Reaped>, i64> {
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
            if let (Some(status), true) = (p.zombie, options & WEXITED != 0) {
                return Ok(Some(Reaped {
                    pid: *pid,
                    status,
                    event: false,
                }));
            }
            let wanted = match p.proc.wait_event {
                Some(CONTINUED) => options & WCONTINUED != 0,
                Some(_) => options & WSTOPPED != 0,
                None => false,
            };
            if let (Some(status), true) = (p.proc.wait_event, wanted) {
                return Ok(Some(Reaped {
                    pid: *pid,
                    status,
                    event: true,
                }));
            }
        }
        if any {
            Ok(None)
        } else {
            Err(ECHILD)
        }
    }

    /// A reported change is gone (unless `keep`, WNOWAIT): the zombie reaped, or the stop or
    /// continue reported.
    fn consume(&mut self, r: &Reaped, keep: bool) {
        if keep {
            return;
        }
        if r.event {
            if let Some(p) = self.procs.parked.get_mut(&r.pid) {
                p.proc.wait_event = None;
            }
        } else if let Some(child) = self.procs.parked.remove(&r.pid) {
            // A reaped child's CPU time (and its reaped children's) becomes this one's.
            self.p.children_cpu_ns += child.proc.exited_cpu_ns + child.proc.children_cpu_ns;
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
        match self.find_child(self.which(pid), options | WEXITED) {
            Err(e) => SyscallOutcome::Return(-e),
            Ok(Some(r)) => {
                if status_va != 0 && m.write(status_va, &r.status.to_le_bytes()).is_err() {
                    return SyscallOutcome::Return(-EFAULT);
                }
                let child_cpu = self
                    .procs
                    .parked
                    .get(&r.pid)
                    .map_or(0, |c| c.proc.exited_cpu_ns + c.proc.children_cpu_ns);
                if rusage != 0 && m.write(rusage, &rusage_bytes(child_cpu, 0)).is_err() {
                    return SyscallOutcome::Return(-EFAULT);
                }
                self.consume(&r, false);
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
        if options & (WEXITED | WSTOPPED | WCONTINUED) == 0 {
            return SyscallOutcome::Return(-EINVAL);
        }
        let which = match idtype {
            0 => Which::Any,
            1 => Which::Pid(id as i32 as i64),
            2 => Which::Group(id as i32 as i64),
            _ => return SyscallOutcome::Return(-EINVAL),
        };
        match self.find_child(which, options) {
            Err(e) => SyscallOutcome::Return(-e),
            Ok(Some(r)) => {
                let mut si = [0u8; 128];
                si[0..4].copy_from_slice(&SIGCHLD.to_le_bytes());
                let (code, value) = child_code(r.status);
                si[8..12].copy_from_slice(&code.to_le_bytes());
                si[16..20].copy_from_slice(&(r.pid as i32).to_le_bytes());
                si[24..28].copy_from_slice(&value.to_le_bytes());
                if info != 0 && m.write(info, &si).is_err() {
                    return SyscallOutcome::Return(-EFAULT);
                }
                self.consume(&r, options & WNOWAIT != 0);
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
        let argv = read_string_array(m, argv_va)?;
        let envp = read_string_array(m, envp_va)?;
        let old_space = self.space(m);
        let cmdline = cmdline_of(&argv);
        let (loaded, exe, new_space) = self.load_program(m, path, argv, &envp)?;
        // Every thread's robust futexes are left by it (Linux releases them at exec, and the
        // other threads end): walked in the old memory they live in.
        let mut robust = self.procs.robust_lists_of(self.p.pid);
        robust.push((self.t.tid, std::mem::take(&mut self.t.robust_list)));
        robust.retain(|&(_, head)| head != 0);
        if !robust.is_empty() {
            m.space_switch(old_space);
            for (tid, head) in robust {
                self.release_robust_list(m, tid, head);
            }
            m.space_switch(new_space);
        }
        if !std::mem::take(&mut self.p.borrowed_space) {
            m.space_release(old_space);
        }
        // The other threads end; the caller goes on as the process's main thread.
        self.p.exited_cpu_ns += self.procs.threads_cpu_ns(self.p.pid);
        self.procs.remove_threads(self.p.pid);
        self.t.tid = self.p.pid;
        self.t.clear_child_tid = 0;
        self.t.signals.altstack = Default::default();
        self.p.space = new_space;
        self.p.exec_reset(&exe, loaded.brk);
        self.p.cmdline = cmdline;
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

    /// Loads the program at `path` (a `#!` script through its interpreter, a dynamically
    /// linked one with its own) into a new address space with `argv` and `envp`, and leaves
    /// that space current: (where it starts, the program's path, the space). On an error the
    /// current space is as it was.
    pub(crate) fn load_program(
        &mut self,
        m: &mut dyn Machine,
        path: Vec<u8>,
        mut argv: Vec<String>,
        envp: &[String],
    ) -> Result<(crate::Loaded, Vec<u8>, SpaceId), i64> {
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
        // A dynamically linked program starts in its interpreter, read from the root too.
        let interp = match crate::elf::interpreter(&image) {
            Ok(Some(path)) => Some(self.read_image(m, path.as_bytes())?),
            Ok(None) => None,
            Err(_) => return Err(ENOEXEC),
        };
        let old_space = self.space(m);
        let new_space = m.space_new()?;
        m.space_switch(new_space);
        let interp = interp.as_deref().map(|v| v.as_slice());
        match crate::elf::load(m, &image, interp, &argv, envp) {
            Ok(loaded) => Ok((loaded, exe, new_space)),
            Err(e) => {
                m.space_switch(old_space);
                m.space_release(new_space);
                tracing::debug!(path = %String::from_utf8_lossy(&exe), "exec: {e}");
                Err(match e {
                    crate::ElfError::Memory(_) => ENOMEM,
                    _ => ENOEXEC,
                })
            }
        }
    }

    /// What `sig` does to `proc` when it has no handler for it (SIG_IGN: nothing, but for
    /// SIGKILL and SIGSTOP, which can be neither caught nor ignored).
    fn default_action(proc: &Proc, sig: u64) -> DefaultAction {
        const SIGKILL: u64 = 9;
        const SIGSTOP: u64 = 19;
        // SIGCHLD, SIGURG and SIGWINCH are ignored by default; SIGTSTP, SIGTTIN, SIGTTOU stop.
        const IGNORED: [u64; 3] = [17, 23, 28];
        const STOPS: [u64; 3] = [20, 21, 22];
        let slot = &proc.sigactions[(sig - 1) as usize];
        let ignored = u64::from_le_bytes(slot[..8].try_into().unwrap_or_default()) == 1;
        match sig {
            SIGKILL => DefaultAction::Terminate,
            SIGSTOP => DefaultAction::Stop,
            SIGCONT => DefaultAction::Continue,
            _ if ignored || IGNORED.contains(&sig) => DefaultAction::Ignore,
            s if STOPS.contains(&s) => DefaultAction::Stop,
            _ => DefaultAction::Terminate,
        }
    }

    /// `sig` for process `pid`: its handler runs, or its default action is taken. True when
    /// that action ends the running process, which the caller then does.
    pub(crate) fn signal_process(
        &mut self,
        m: &mut dyn Machine,
        pid: i64,
        sig: u64,
        info: crate::signal::SigInfo,
    ) -> bool {
        let Some(proc) = self.proc_of(pid) else {
            return false;
        };
        let (handler, action) = (
            crate::signal::has_handler(proc, sig),
            Self::default_action(proc, sig),
        );
        if sig == SIGCONT {
            self.continue_process(pid); // even with a handler, which then runs
        }
        // A signal every thread blocks waits, whatever its action (Linux never ignores a
        // blocked signal: its handler may change before it is unblocked); SIGKILL and
        // SIGSTOP cannot be blocked.
        if handler || (sig != 9 && sig != 19 && self.blocked_everywhere(pid, sig)) {
            self.post_signal(pid, sig, info);
            return false;
        }
        match action {
            DefaultAction::Terminate if pid == self.p.pid => return true,
            DefaultAction::Terminate => self.kill_parked(m, pid, sig as i32),
            DefaultAction::Stop => self.stop_process(pid, sig),
            DefaultAction::Ignore | DefaultAction::Continue => {}
        }
        false
    }

    /// The default action of `sig` for the running process, pending while it was blocked
    /// and let through now: it ends (at once for sure: see [`Kernel::doomed`]), stops, or
    /// nothing happens. Init ignores what it has no handler for, as a pid namespace's.
    pub(crate) fn default_action_now(&mut self, sig: u64) {
        if self.p.pid == 1 {
            return;
        }
        match Self::default_action(&self.p, sig) {
            DefaultAction::Terminate => self.doomed = Some((self.p.pid, sig as i32)),
            DefaultAction::Stop => self.stop_process(self.p.pid, sig),
            DefaultAction::Ignore | DefaultAction::Continue => {}
        }
    }

    /// Whether every thread of process `pid` blocks `sig` (a thread waiting for it in
    /// rt_sigtimedwait blocks it too: the wait takes it).
    pub(crate) fn blocked_everywhere(&self, pid: i64, sig: u64) -> bool {
        let bit = 1u64 << (sig - 1);
        let running = pid == self.p.pid && self.t.tid != 0;
        if running && self.t.sigmask & bit == 0 {
            return false;
        }
        self.procs.threads_of(pid).iter().all(|tid| {
            self.procs
                .threads
                .get(tid)
                .is_none_or(|t| t.thread.sigmask & bit != 0)
        }) && (running || !self.procs.threads_of(pid).is_empty())
    }

    /// Stops process `pid` (a stop signal's default action): its threads run no more until
    /// SIGCONT; its parent learns of it (SIGCHLD unless SA_NOCLDSTOP, a WUNTRACED wait).
    fn stop_process(&mut self, pid: i64, sig: u64) {
        if !self.procs.stopped.insert(pid) {
            return;
        }
        tracing::debug!(pid, sig, "stopped");
        let status = ((sig as i32) << 8) | 0x7f;
        let ppid = if pid == self.p.pid {
            self.p.wait_event = Some(status);
            self.p.ppid
        } else {
            match self.procs.parked.get_mut(&pid) {
                Some(p) => {
                    p.proc.wait_event = Some(status);
                    p.proc.ppid
                }
                None => return,
            }
        };
        self.child_changed(ppid, pid, status);
    }

    /// SIGCONT: a stopped process `pid` runs again; its parent learns of it.
    fn continue_process(&mut self, pid: i64) {
        if !self.procs.stopped.remove(&pid) {
            return;
        }
        tracing::debug!(pid, "continued");
        for tid in self.procs.threads_of(pid) {
            if self
                .procs
                .threads
                .get(&tid)
                .is_some_and(|t| matches!(t.state, State::Runnable(_)))
            {
                self.procs.runq.push_back(tid);
            }
        }
        let Some(p) = self.procs.parked.get_mut(&pid) else {
            return;
        };
        p.proc.wait_event = Some(CONTINUED);
        let ppid = p.proc.ppid;
        self.child_changed(ppid, pid, CONTINUED);
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
                    .filter(|p| p.zombie.is_none())
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
        // Others first: the caller may be among the dead, or stopped.
        pids.sort_by_key(|p| *p == me);
        let info = crate::signal::SigInfo {
            code: 0, // SI_USER
            pid: me,
            status: 0,
            addr: 0,
            overrun: 0,
            value: 0,
        };
        for pid in pids {
            let handler = self
                .proc_of(pid)
                .is_some_and(|p| crate::signal::has_handler(p, sig));
            if pid == 1 && me != 1 && !handler && !self.blocked_everywhere(1, sig) {
                continue; // init without a handler ignores what its namespace sends it
            }
            if self.signal_process(m, pid, sig, info) {
                return self.exit_process(m, sig as i32);
            }
        }
        if self.procs.stopped.contains(&me) {
            // The caller stopped itself: it returns 0 from kill once continued.
            let mut regs = m.user_regs();
            regs.rax = 0;
            return match self.switch_away(m, regs, false, State::Runnable) {
                SyscallOutcome::Return(_) => SyscallOutcome::Return(0), // nothing else to run
                other => other,
            };
        }
        SyscallOutcome::Return(0)
    }

    /// tkill(2)/tgkill(2): `sig` for thread `tid` (of process `tgid`, if given). A handler
    /// runs on that thread; without one the signal's default action is the whole process's.
    pub(crate) fn tkill(
        &mut self,
        m: &mut dyn Machine,
        tgid: Option<i64>,
        tid: i64,
        sig: u64,
    ) -> SyscallOutcome {
        if sig > 64 || tid <= 0 || tgid.is_some_and(|g| g <= 0) {
            return SyscallOutcome::Return(-EINVAL);
        }
        let pid = if tid == self.t.tid {
            self.p.pid
        } else {
            match self.procs.threads.get(&tid) {
                Some(t) => t.pid,
                None => return SyscallOutcome::Return(-ESRCH),
            }
        };
        if tgid.is_some_and(|g| g != pid) {
            return SyscallOutcome::Return(-ESRCH);
        }
        if sig == 0 {
            return SyscallOutcome::Return(0);
        }
        if self
            .proc_of(pid)
            .is_some_and(|p| crate::signal::has_handler(p, sig))
        {
            let info = crate::signal::SigInfo {
                code: -6, // SI_TKILL
                pid: self.p.pid,
                status: 0,
                addr: 0,
                overrun: 0,
                value: 0,
            };
            self.post_to_thread(tid, sig, info);
            return SyscallOutcome::Return(0);
        }
        self.kill(m, pid, sig)
    }

    /// Ends parked process `pid` and its threads with wait status `status`.
    fn kill_parked(&mut self, m: &mut dyn Machine, pid: i64, status: i32) {
        let Some(target) = self.procs.parked.remove(&pid) else {
            return;
        };
        if target.zombie.is_some() {
            self.procs.parked.insert(pid, target);
            return;
        }
        tracing::debug!(pid, status, "killed");
        let robust = self.procs.robust_lists_of(pid);
        let mut target = target;
        target.proc.exited_cpu_ns += self.procs.threads_cpu_ns(pid);
        self.procs.remove_threads(pid);
        self.procs.stopped.remove(&pid);
        // Close its descriptors as if it ran, the caller set aside meanwhile (so files it
        // holds too stay open).
        let me = self.p.pid;
        let caller = std::mem::replace(&mut self.p, target.proc);
        if !robust.is_empty() {
            // Its robust futexes live in its memory: walked in its address space.
            let mine = m.space_current();
            m.space_switch(self.p.space);
            for (tid, head) in robust {
                self.release_robust_list(m, tid, head);
            }
            m.space_switch(mine);
        }
        self.procs.parked.insert(
            me,
            Parked {
                proc: caller,
                zombie: None,
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
        let ppid = dead.ppid;
        dead.fds = crate::fs::FdTable::empty();
        self.procs.parked.insert(
            pid,
            Parked {
                proc: dead,
                zombie: Some(status),
            },
        );
        // A vfork parent of it may go on; a waiting parent learns of it.
        self.child_changed(ppid, pid, status);
        if self.tell_outside(m, pid, status) {
            self.procs.parked.remove(&pid);
        }
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
