//! The syscall table: Linux semantics and errno values for what static programs need first.
//! Arguments are untrusted: every pointer goes through [`Machine`] accesses that fail with
//! `EFAULT`, every length is clamped before it sizes a host buffer.

use crate::cred::Ids;
use crate::elf::{STACK_SIZE, STACK_TOP, USER_END};
use crate::errno::*;
use crate::fs::FdTable;
use crate::machine::{FileAttr, Machine, PageFlags};

const PAGE: u64 = 4096;
/// Largest chunk copied through the host per step.
const CHUNK: usize = 64 << 10;
/// Where `mmap` without a hint starts placing mappings (grows down, like Linux).
const MMAP_TOP: u64 = STACK_TOP - STACK_SIZE - (1 << 30);

/// A syscall as the platform delivers it: `rax` and the six argument registers.
#[derive(Debug, Clone, Copy)]
pub struct SyscallArgs {
    pub nr: u64,
    pub args: [u64; 6],
}

/// What the platform does after a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallOutcome {
    /// Resume the app with this value in `rax`.
    Return(i64),
    /// The app (all of it) exited with this status.
    Exit(i32),
    /// The app was killed by this signal (it raised a signal whose action is to terminate).
    Killed(i32),
    /// Resume the app with the registers the kernel set (`Machine::set_user_regs`): another
    /// process, a new program, or a call to run again.
    Resume,
}

const PROT_NONE: u64 = 0;
/// Anonymous memory from mmap: writable and executable whatever `prot` says, since permissions
/// cannot be changed on a present page from the host here (the shadow MMU never sees it): a
/// PROT_READ mapping is writable, and a program that generates code (a JIT) maps memory
/// writable, writes the code and then mprotects it executable. The stack and heap stay NX.
const ANON: PageFlags = PageFlags {
    write: true,
    exec: true,
};

/// Reads a `struct timespec` as nanoseconds, refusing negative or malformed values.
/// The end of the pages `[addr, addr + len)` covers, rounded up to a page: EINVAL unless
/// `addr` is page-aligned and the range is user memory.
fn user_pages(addr: u64, len: u64) -> Result<u64, i64> {
    if addr % PAGE != 0 || addr.checked_add(len).is_none_or(|e| e > USER_END) {
        return Err(EINVAL);
    }
    Ok(addr + len.div_ceil(PAGE) * PAGE)
}

/// The smallest budget for pipe and socket buffers, whatever the memory (a few hundred
/// pipes).
const MIN_BUFFER_BUDGET: u64 = 32 << 20;

/// Whether `file` is an ELF image (a program or library, which the loader maps itself).
fn is_elf(m: &mut dyn Machine, file: crate::machine::HostFile) -> bool {
    let mut magic = [0u8; 4];
    matches!(m.fs_read(file, &mut magic, Some(0)), Ok(4)) && magic == *b"\x7fELF"
}

pub(crate) fn read_timespec(m: &dyn Machine, va: u64) -> Result<u64, i64> {
    let mut ts = [0u8; 16];
    m.read(va, &mut ts).map_err(|_| EFAULT)?;
    let word = |i: usize| i64::from_le_bytes(ts[i..i + 8].try_into().unwrap_or_default());
    crate::timers::to_ns(word(0), word(8), 1)
}

/// The timeout of ppoll, pselect6 or epoll_pwait2 (a `struct timespec`, none: forever) in the
/// milliseconds their waits take, rounded up: a wait never ends before its timeout (a 500 µs
/// ppoll returned at once when this truncated).
fn wait_timeout_ms(m: &dyn Machine, va: u64) -> Result<i64, i64> {
    if va == 0 {
        return Ok(-1);
    }
    read_timespec(m, va).map(|ns| i64::try_from(ns.div_ceil(1_000_000)).unwrap_or(i64::MAX))
}

/// Reads a `struct timeval` as milliseconds, rounded up (select never ends before its timeout).
fn read_timeval_ms(m: &dyn Machine, va: u64) -> Result<i64, i64> {
    let mut tv = [0u8; 16];
    m.read(va, &mut tv).map_err(|_| EFAULT)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(&tv[..8]);
    let secs = i64::from_le_bytes(w);
    w.copy_from_slice(&tv[8..]);
    let micros = i64::from_le_bytes(w);
    if secs < 0 || !(0..1_000_000).contains(&micros) {
        return Err(EINVAL);
    }
    Ok(secs
        .saturating_mul(1000)
        .saturating_add((micros + 999) / 1000))
}

/// chown's ids: -1 (as a 32-bit value) leaves one unchanged.
fn owner(uid: u64, gid: u64) -> FileAttr {
    FileAttr::Owner(uid as u32, gid as u32)
}

/// utimensat's `times`: NULL is "now" for both.
fn read_utimes(m: &dyn Machine, va: u64) -> Result<FileAttr, i64> {
    const UTIME_NOW: i64 = (1 << 30) - 1;
    if va == 0 {
        return Ok(FileAttr::Times([(0, UTIME_NOW), (0, UTIME_NOW)]));
    }
    let mut b = [0u8; 32];
    m.read(va, &mut b).map_err(|_| EFAULT)?;
    let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    Ok(FileAttr::Times([(w(0), w(1)), (w(2), w(3))]))
}

/// Writes zeros over `[va, va+len)` of the app's memory.
fn zero(m: &mut dyn Machine, va: u64, len: u64) -> Result<(), i64> {
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        m.write(va + done, &zeros[..n as usize])
            .map_err(|_| EFAULT)?;
        done += n;
    }
    Ok(())
}

/// The mmap area: which ranges are mapped (and whether their pages are present) and which
/// present ranges were unmapped and can be handed out again.
#[derive(Debug, Default, Clone)]
pub(crate) struct AddressSpace {
    /// start -> (end, pages present, what the range holds)
    regions: std::collections::BTreeMap<u64, (u64, bool, Backing)>,
    /// Unmapped ranges whose pages are still present, reused by later mmaps.
    free: Vec<(u64, u64)>,
}

/// What a mapped range holds, as far as syscall-site patching cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backing {
    /// Anonymous memory, or a file mapping that is not private and executable.
    Data,
    /// A private executable file mapping (a shared library's code): its trapped syscall sites
    /// may be patched, in this process's own copy of the pages.
    LibraryCode,
    /// The platform's jump slots ([`crate::machine::SYSCALL_SLOTS`]): munmap and mprotect
    /// leave them, mmap never places anything over them.
    JumpSlots,
    /// Shared anonymous memory (`MAP_SHARED | MAP_ANONYMOUS`, or of /dev/zero): the same
    /// pages in every process forked from the one that mapped it.
    SharedAnon,
    /// A shared file mapping (`MAP_SHARED` of a file): the container's pages of that file,
    /// the same in every process that maps it (the platform's page cache).
    SharedFile,
    /// A private read-only mapping of a data file: the page cache's pages (as
    /// [`Backing::SharedFile`]), mapped read-only. A present page cannot become writable or
    /// executable here, so mprotect asking for that is EACCES.
    CachedReadOnly,
    /// Shared memory (anonymous or a file's) this process unmapped: its pages stay in the process's tables
    /// (a present entry cannot be removed here) and may still be another process's, so the
    /// range is never handed out again; the pages go back when the last process exits.
    SharedGone,
}

impl Backing {
    /// Whether mmap must not place anything over the range (MAP_FIXED there is ENOMEM), and
    /// munmap and mprotect leave it as it is.
    fn pinned(self) -> bool {
        matches!(self, Backing::JumpSlots | Backing::SharedGone)
    }

    /// Memory other processes may map too: its contents are not this process's alone.
    pub(crate) fn shared(self) -> bool {
        matches!(
            self,
            Backing::SharedAnon | Backing::SharedFile | Backing::CachedReadOnly
        )
    }
}

impl AddressSpace {
    /// The mapped ranges, lowest first.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.mappings().map(|(s, e, _)| (s, e))
    }

    /// The mapped ranges with what they hold, lowest first (unmapped shared memory is not
    /// mapped any more, whatever its pages).
    pub(crate) fn mappings(&self) -> impl Iterator<Item = (u64, u64, Backing)> + '_ {
        self.regions
            .iter()
            .filter(|(_, (_, _, b))| *b != Backing::SharedGone)
            .map(|(s, (e, _, b))| (*s, *e, *b))
    }

    fn insert(&mut self, start: u64, end: u64, present: bool) {
        self.insert_backed(start, end, present, Backing::Data);
    }

    fn insert_backed(&mut self, start: u64, end: u64, present: bool, backing: Backing) {
        self.regions.insert(start, (end, present, backing));
    }

    /// The backing of the one region holding all of `[start, end)`, if one does.
    pub(crate) fn backing(&self, start: u64, end: u64) -> Option<Backing> {
        let (_, (e, _, b)) = self.regions.range(..=start).next_back()?;
        (*e >= end).then_some(*b)
    }

    /// Marks the platform's jump slots as mapped here (the first patch of this process).
    pub(crate) fn reserve_jump_slots(&mut self) {
        let slots = crate::machine::SYSCALL_SLOTS;
        self.insert_backed(slots.start, slots.end, true, Backing::JumpSlots);
    }

    /// Whether a fixed mapping may not replace `[start, end)`: it holds pinned ranges, or
    /// present shared pages (present entries cannot be replaced here, and zeroing them would
    /// zero another process's memory).
    fn fixed_mapping_refused(&self, start: u64, end: u64) -> bool {
        self.regions.range(..end).any(|(s, (e, present, b))| {
            *e > start && *s < end && (b.pinned() || (b.shared() && *present))
        })
    }

    /// Whether every page of `[start, end)` lies in mapped regions.
    fn covered(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for (s, e, _) in self.mappings() {
            if e <= at {
                continue;
            }
            if s > at {
                return false;
            }
            at = e;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// Whether any part of `[start, end)` is a region backed by `backing`.
    fn holds(&self, start: u64, end: u64, backing: Backing) -> bool {
        self.regions
            .range(..end)
            .any(|(s, (e, _, b))| *e > start && *s < end && *b == backing)
    }

    /// Every region with whether its pages are present (unmapped shared memory left out).
    pub(crate) fn regions_with_presence(
        &self,
    ) -> impl Iterator<Item = (u64, u64, bool, Backing)> + '_ {
        self.regions
            .iter()
            .filter(|(_, (_, _, b))| *b != Backing::SharedGone)
            .map(|(s, (e, p, b))| (*s, *e, *p, *b))
    }

    /// Whether any page of `[start, end)` is present (mapped, or unmapped and kept for reuse).
    fn any_present(&self, start: u64, end: u64) -> bool {
        self.regions
            .range(..end)
            .any(|(s, (e, present, _))| *e > start && *s < end && *present)
            || self.free.iter().any(|(s, e)| *e > start && *s < end)
    }

    /// Removes `[start, end)` from the regions, splitting those it cuts; returns the removed
    /// pieces (with their backing). The jump slots stay.
    fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64, bool, Backing)> {
        let hit: Vec<(u64, u64, bool, Backing)> = self
            .regions
            .range(..end)
            .filter(|(_, (e, _, b))| *e > start && !b.pinned())
            .map(|(s, (e, p, b))| (*s, *e, *p, *b))
            .collect();
        let mut removed = Vec::new();
        for (s, e, p, b) in hit {
            self.regions.remove(&s);
            if s < start {
                self.regions.insert(s, (start, p, b));
            }
            if e > end {
                self.regions.insert(end, (e, p, b));
            }
            removed.push((s.max(start), e.min(end), p, b));
        }
        // Freed pieces that overlap are no longer free.
        self.free.retain(|(s, e)| *e <= start || *s >= end);
        removed
    }

    fn free(&mut self, start: u64, end: u64) {
        self.free.push((start, end));
    }

    /// A free present range of at least `len` bytes (first fit; the rest stays free).
    fn take_free(&mut self, len: u64) -> Option<u64> {
        let i = self.free.iter().position(|(s, e)| e - s >= len)?;
        let (s, e) = self.free.swap_remove(i);
        if e - s > len {
            self.free.push((s + len, e));
        }
        Some(s)
    }
}

/// The state of one process: what fork copies and exec resets.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) fds: FdTable,
    pub(crate) epolls: Vec<Option<crate::epoll::EpollSet>>,
    /// Working directory and the program's path, absolute paths in the root.
    pub(crate) cwd: Vec<u8>,
    pub(crate) exe: Vec<u8>,
    /// The thread name (`comm`): the program's file name, up to 15 bytes.
    pub(crate) comm: Vec<u8>,
    /// The arguments it was started with, each ending in NUL (/proc/PID/cmdline).
    pub(crate) cmdline: Vec<u8>,
    /// Signal dispositions (`struct kernel_sigaction`, 32 bytes each), shared by its threads.
    pub(crate) sigactions: [[u8; 32]; 64],
    pub(crate) brk_start: u64,
    pub(crate) brk: u64,
    /// Heap pages are mapped up to here.
    pub(crate) brk_mapped: u64,
    pub(crate) mmap_next: u64,
    pub(crate) vm: AddressSpace,
    pub(crate) pid: i64,
    pub(crate) ppid: i64,
    pub(crate) pgid: i64,
    pub(crate) sid: i64,
    /// User and group ids.
    pub(crate) cred: crate::cred::Cred,
    /// A stop or a continue its parent's wait has not reported yet (as a wait status).
    pub(crate) wait_event: Option<i32>,
    /// The platform's address space of this process (0: the first one, not yet asked for).
    pub(crate) space: crate::machine::SpaceId,
    /// The space is its vfork parent's, lent until exec or exit: never released by this one.
    pub(crate) borrowed_space: bool,
    /// When it was created (monotonic ns; 0 for the container's first process).
    pub(crate) start_ns: u64,
    /// CPU time of its threads that ended (ns).
    pub(crate) exited_cpu_ns: u64,
    /// CPU time of its reaped children, theirs included (ns).
    pub(crate) children_cpu_ns: u64,
    /// alarm, setitimer and timer_create's timers.
    pub(crate) timers: crate::timers::Timers,
    /// The membarrier(2) commands it registered for (`MEMBARRIER_CMD_REGISTER_*` bits).
    pub(crate) membarrier: u32,
    /// Resource limits (getrlimit/setrlimit/prlimit64).
    pub(crate) limits: crate::rlimits::Limits,
}

impl Proc {
    /// Process `pid` running the program at `exe`, its heap starting at `brk`.
    pub(crate) fn new(pid: i64, brk: u64, exe: &[u8], cwd: Vec<u8>, fds: FdTable) -> Proc {
        Proc {
            fds,
            epolls: Vec::new(),
            cwd,
            exe: exe.to_vec(),
            comm: exe
                .rsplit(|b| *b == b'/')
                .next()
                .unwrap_or(exe)
                .iter()
                .take(15)
                .copied()
                .collect(),
            cmdline: [exe, b"\0"].concat(),
            sigactions: [[0; 32]; 64],
            brk_start: brk,
            brk,
            brk_mapped: brk,
            mmap_next: MMAP_TOP,
            start_ns: 0,
            exited_cpu_ns: 0,
            children_cpu_ns: 0,
            timers: Default::default(),
            membarrier: 0,
            limits: Default::default(),
            vm: AddressSpace::default(),
            pid,
            ppid: 0,
            pgid: pid,
            sid: pid,
            cred: Default::default(),
            wait_event: None,
            space: 0,
            borrowed_space: false,
        }
    }

    /// The child of a fork: a copy of this process as pid `pid` in address space `space`.
    pub(crate) fn fork_copy(&self, pid: i64, space: crate::machine::SpaceId) -> Proc {
        Proc {
            fds: self.fds.clone(),
            epolls: self.epolls.clone(),
            cwd: self.cwd.clone(),
            exe: self.exe.clone(),
            comm: self.comm.clone(),
            cmdline: self.cmdline.clone(),
            sigactions: self.sigactions,
            brk_start: self.brk_start,
            brk: self.brk,
            brk_mapped: self.brk_mapped,
            mmap_next: self.mmap_next,
            vm: self.vm.clone(),
            pid,
            ppid: self.pid,
            pgid: self.pgid,
            sid: self.sid,
            cred: self.cred.clone(),
            wait_event: None,
            space,
            borrowed_space: false,
            start_ns: 0, // set by fork, which knows the time
            exited_cpu_ns: 0,
            children_cpu_ns: 0,
            timers: Default::default(),  // a fork child has none
            membarrier: self.membarrier, // copied with the address space, as Linux's fork does
            limits: self.limits,
        }
    }

    /// What exec resets: the program, its heap and mappings, handled signals (back to their
    /// default; ignored ones stay ignored).
    pub(crate) fn exec_reset(&mut self, exe: &[u8], brk: u64) {
        let fresh = Proc::new(self.pid, brk, exe, Vec::new(), FdTable::default());
        self.exe = fresh.exe;
        self.comm = fresh.comm;
        self.cmdline = fresh.cmdline;
        self.brk_start = brk;
        self.brk = brk;
        self.brk_mapped = brk;
        self.mmap_next = fresh.mmap_next;
        self.vm = fresh.vm;
        self.membarrier = 0;
        self.timers.exec();
        const SIG_IGN: u64 = 1;
        for action in self.sigactions.iter_mut() {
            let handler = u64::from_le_bytes(action[..8].try_into().unwrap_or_default());
            if handler != SIG_IGN {
                *action = [0; 32];
            }
        }
    }
}

/// The kernel of one container: the running process, and (later) the others.
#[derive(Debug)]
pub struct Kernel {
    /// The process whose syscall is being served.
    pub(crate) p: Proc,
    /// Its thread that made the call.
    pub(crate) t: crate::process::Thread,
    /// The other processes.
    pub(crate) procs: crate::process::ProcTable,
    /// Most processes (zombies included, as a pids cgroup counts them) at once.
    pub(crate) max_processes: usize,
    /// Program images exec read recently.
    pub(crate) images: crate::process::ImageCache,
    /// eventfd counters, shared by every process holding one.
    pub(crate) eventfds: Vec<Option<crate::eventfd::EventFd>>,
    pub(crate) signalfds: Vec<Option<crate::signalfd::SignalFd>>,
    /// Advisory file locks between the container's processes.
    pub(crate) locks: crate::locks::Locks,
    pub(crate) timerfds: Vec<Option<crate::timers::TimerFd>>,
    /// When a read parked by [`crate::timers::ETIMERFD_WAIT`] wakes (monotonic ns).
    pub(crate) timerfd_wake: u64,
    /// Pipes, shared by every process holding an end.
    pub(crate) pipes: Vec<Option<crate::pipe::Pipe>>,
    /// Serving a call that must not wait (see [`Kernel::try_syscall_nowait`]).
    nowait: bool,
    /// In `nowait`, a blocking descriptor was treated as non-blocking.
    forced_nonblocking: bool,
    /// In `nowait`, the call would have had to wait; its result is discarded.
    would_block: bool,
    /// In `nowait`, the call finished but raised a signal only the vCPU thread can deliver
    /// (`would_block` is set too, so a poller hands it over): its result stands.
    finished_with_signal: bool,
    /// The futex wait the running thread is about to park in.
    pub(crate) futex_wait: Option<crate::futex::FutexWait>,
    /// In `nowait`, the sockets the call would have waited on, and its timeout if it is a
    /// poll with one (ms).
    io_wants: Vec<crate::process::IoWant>,
    io_timeout_ms: Option<i64>,
    /// Descriptors sent over socket pairs and not yet received.
    pub(crate) in_flight: crate::unix::InFlight,
    /// AF_UNIX sockets bound to names.
    pub(crate) unix: crate::unix::UnixNames,
    /// Processes started from outside (exec), with their request ids.
    pub(crate) outside: std::collections::BTreeMap<i64, u64>,
    /// A process killed from outside while it was running: (pid, signal).
    pub(crate) doomed: Option<(i64, i32)>,
    /// The platform may send requests ([`Kernel::accept_host_requests`]).
    pub(crate) host_requests: bool,
    /// Monotonic time of the first call served: the container's boot, for /proc.
    pub(crate) boot_ns: u64,
    /// A reads' and writes' data buffer kept between calls ([`Kernel::take_scratch`]).
    pub(crate) scratch: Vec<u8>,
    /// The vCPU's CPU time when the running thread was last charged with it.
    pub(crate) cpu_mark: u64,
    /// Bytes of pipe and socket buffers the container may hold ([`Kernel::reserve_buffers`]).
    pub(crate) buffer_budget: u64,
    /// The app's AF_INET6 sockets (carried on the IPv4 stack; see `net.rs`).
    pub(crate) inet6: std::collections::BTreeMap<u32, crate::net::Inet6>,
    /// SO_RCVTIMEO and SO_SNDTIMEO of the sockets that set one, in ns (0: none).
    pub(crate) sock_timeouts: std::collections::BTreeMap<u32, (u64, u64)>,
    /// The earliest expiry of any process's timers (monotonic ns; `u64::MAX`: none), so a
    /// call, a preemption tick or an idle wait knows at a glance whether one is due.
    pub(crate) next_timer: u64,
    /// Descriptors of the running process the platform's stub reads itself, with their
    /// sockets (`fastread.rs`).
    /// (descriptor, socket, blocking).
    pub(crate) fast_reads: Vec<(u64, crate::machine::SocketId, bool)>,
}

impl Kernel {
    /// A kernel for the program at `exe` (a path in the root), loaded with its heap starting at
    /// `brk`, started in `cwd`.
    pub fn new(brk: u64, exe: &str, cwd: &str) -> Self {
        Kernel {
            p: Proc::new(
                1,
                brk,
                exe.as_bytes(),
                cwd.as_bytes().to_vec(),
                FdTable::default(),
            ),
            t: crate::process::Thread::new(1, 0),
            procs: Default::default(),
            max_processes: usize::MAX,
            pipes: Vec::new(),
            eventfds: Vec::new(),
            signalfds: Vec::new(),
            locks: Default::default(),
            timerfds: Vec::new(),
            timerfd_wake: 0,
            images: Default::default(),
            nowait: false,
            finished_with_signal: false,
            forced_nonblocking: false,
            would_block: false,
            futex_wait: None,
            io_wants: Vec::new(),
            io_timeout_ms: None,
            in_flight: Default::default(),
            unix: Default::default(),
            outside: Default::default(),
            doomed: None,
            host_requests: false,
            boot_ns: 0,
            scratch: Vec::new(),
            cpu_mark: 0,
            buffer_budget: MIN_BUFFER_BUDGET,
            inet6: Default::default(),
            sock_timeouts: Default::default(),
            next_timer: u64::MAX,
            fast_reads: Vec::new(),
        }
    }

    /// Whether a call may wait for something outside the app (a sleep, console input, a poll
    /// with a timeout): the platform serves those where waiting costs no spinning thread.
    pub fn may_block(&self, call: &SyscallArgs) -> bool {
        match call.nr {
            // Process calls switch registers and address spaces: only the vCPU can.
            15 | 34 | 56 | 57 | 58 | 59 | 60 | 61 | 62 | 130 | 200 | 231 | 234 | 247 | 322 => true,
            35 | 230 => true,              // nanosleep, clock_nanosleep
            202 => call.args[3] != 0,      // futex with a timeout
            7 => call.args[2] as i32 != 0, // poll with a timeout
            0 | 17 | 19 => {
                let fd = call.args[0];
                self.p.fds.is_console_input(fd)
                    || self.p.fds.is_socket(fd)
                    || self.p.fds.is_pipe(fd)
            }
            1 | 20 => self.p.fds.is_socket(call.args[0]) || self.p.fds.is_pipe(call.args[0]),
            // Everything on a socket may wait for the network.
            18 | 42 | 43 | 44 | 45 | 46 | 47 | 48 | 288 | 299 | 307 => {
                self.p.fds.is_socket(call.args[0])
            }
            _ => false,
        }
    }

    /// Serves a call that [`Kernel::may_block`] flagged, but only if it can finish without
    /// waiting (a socket with data or room, a poll with something ready); `None` means it
    /// would wait, and nothing was done. Most socket calls of a busy app finish at once, so the
    /// platform tries this on its fast path before paying for a path where waiting is cheap.
    pub fn try_syscall_nowait(
        &mut self,
        m: &mut dyn Machine,
        call: SyscallArgs,
    ) -> Option<SyscallOutcome> {
        match call.nr {
            // Sleeps and futex waits with a timeout always wait; a non-blocking connect is not
            // the same call as a blocking one (it starts the connection either way).
            35 | 230 | 42 => return None,
            202 if call.args[3] != 0 => return None,
            15 | 34 | 56 | 57 | 58 | 59 | 60 | 61 | 62 | 130 | 200 | 231 | 234 | 247 | 322 => {
                return None
            }
            _ => {}
        }
        // A pending signal is delivered on the vCPU thread, which sets registers.
        if self.t.deliverable().is_some() {
            return None;
        }
        match call.nr {
            // Console input has no readiness to ask the host about here.
            0 | 17 | 19 if self.p.fds.is_console_input(call.args[0]) => return None,
            _ => {}
        }
        // A call's own signal mask (ppoll, pselect6, epoll_pwait) applies to this try too;
        // the caller's comes back after it either way (a call served again on the vCPU thread
        // puts it in place again).
        let masked = match crate::signal::call_sigmask(m, &call) {
            Ok(Some(mask)) => {
                self.enter_call_mask(mask);
                true
            }
            Ok(None) => false,
            Err(_) => return None, // its error comes from the vCPU thread's serving
        };
        if masked && self.t.deliverable().is_some() {
            self.leave_call_mask();
            return None;
        }
        self.nowait = true;
        self.forced_nonblocking = false;
        self.would_block = false;
        let out = self.syscall(m, call);
        self.nowait = false;
        if masked {
            self.leave_call_mask();
        }
        if !self.would_block {
            // Done here: the deadline a parked call kept for its restart is over with it. Left
            // set, the thread's next wait found it expired and returned at once (nginx's
            // worker: "epoll_wait() returned no events without timeout").
            self.t.io_until = None;
        }
        (!self.would_block).then_some(out)
    }

    /// Whether a descriptor with these flags is served without waiting, noting when a blocking
    /// one is only because of `nowait`.
    pub(crate) fn without_waiting(&mut self, fd_nonblocking: bool) -> bool {
        if self.nowait && !fd_nonblocking {
            self.forced_nonblocking = true;
        }
        fd_nonblocking || self.nowait
    }

    /// The poll timeout to use: none in `nowait` (whose caller retries with the real one).
    pub(crate) fn poll_timeout(&self, timeout_ms: i64) -> i64 {
        if self.nowait {
            0
        } else {
            timeout_ms
        }
    }

    /// Whether the call is being tried without waiting, and if so, gives up the try: the call
    /// is served again where it may wait. For calls whose partial work cannot be undone.
    pub(crate) fn decline_nowait(&mut self) -> bool {
        if self.nowait {
            self.would_block = true;
        }
        self.nowait
    }

    /// Whether this call is a try without waiting that would have had to wait: its result is
    /// discarded, so it must leave the app's memory as it found it.
    pub(crate) fn try_would_wait(&self) -> bool {
        self.nowait && self.would_block
    }

    /// After a poll in `nowait` found nothing ready: it would have waited if it had a timeout.
    pub(crate) fn poll_found_nothing(&mut self, timeout_ms: i64) {
        if self.nowait && timeout_ms != 0 {
            self.would_block = true;
            self.io_timeout_ms = Some(timeout_ms);
        }
    }

    /// In `nowait`: notes a socket the call would wait on, and for what.
    pub(crate) fn note_socket_wait(
        &mut self,
        s: crate::machine::SocketId,
        read: bool,
        write: bool,
    ) {
        if self.nowait {
            self.io_wants.push((s, read, write));
        }
    }

    /// Whether `call` may wait on sockets (and nothing that switches threads).
    fn waits_on_sockets(&self, call: &SyscallArgs) -> bool {
        match call.nr {
            7 | 271 | 23 | 270 | 232 | 281 | 441 => true, // poll, ppoll, select, pselect, epoll_wait
            0 | 1 | 17 | 18 | 19 | 20 | 43 | 44 | 45 | 46 | 47 | 288 | 299 | 307 => {
                self.p.fds.is_socket(call.args[0])
            }
            40 => self.p.fds.is_socket(call.args[0]), // sendfile to a socket
            _ => false,
        }
    }

    /// A call on sockets that may wait, served on the vCPU thread while other threads exist:
    /// tried without waiting; if it would wait on sockets, its thread parks until one is
    /// ready (or its timeout) and the others run meanwhile. None: serve it as usual (it
    /// finished, or waits on something else). Alone, a thread waits on the host instead: that
    /// wakes it fastest.
    fn serve_socket_wait(
        &mut self,
        m: &mut dyn Machine,
        call: SyscallArgs,
    ) -> Option<SyscallOutcome> {
        let timeout = self.socket_call_timeout(&call);
        // Alone with nothing that could interrupt the wait (no host requests, no timeout, no
        // timer armed: an alarm's SIGALRM must end it with EINTR, as on Linux), it waits on
        // the host in one piece.
        if self.procs_alone()
            && !self.host_requests
            && timeout.is_none()
            && self.next_timer == u64::MAX
        {
            self.t.io_until = None;
            return None;
        }
        loop {
            let (socks, until, poll) = match self.try_socket_call(m, call, timeout) {
                Ok(out) => return out,
                Err(wait) => wait,
            };
            if !self.procs_alone() {
                return Some(self.park_on_sockets(m, socks, until, poll));
            }
            // Alone, but the platform may send requests: wait here (no switch, no restart of
            // the call) in slices, looking at them between slices.
            const SLICE_NS: u64 = 50_000_000;
            let now = m.monotonic_ns();
            let end = until.min(now.saturating_add(SLICE_NS)).min(self.next_timer);
            if socks.is_empty() {
                m.sleep_ns(end.saturating_sub(now));
            } else {
                let _ = m.net_poll(&socks, end.saturating_sub(now).div_ceil(1_000_000) as i64);
            }
            self.take_host_events(m);
            if let Some(sig) = self.doomed_now() {
                return Some(self.exit_process(m, sig));
            }
            if m.cancelled() {
                self.t.io_until = None;
                return Some(SyscallOutcome::Return(-EINTR));
            }
            if self.t.deliverable().is_some() {
                // A handler interrupts the wait: EINTR, or the call again with SA_RESTART
                // (never for a poll).
                self.t.io_until = None;
                if poll {
                    let out = SyscallOutcome::Return(-EINTR);
                    return Some(self.deliver_on_return(m, -EINTR).unwrap_or(out));
                }
                let mut regs = Self::restart_regs(m);
                self.deliver(m, &mut regs, true);
                m.set_user_regs(&regs);
                return Some(SyscallOutcome::Resume);
            }
        }
    }

    /// One try of a call on sockets without waiting: Ok with its outcome (None: serve it as
    /// usual), or Err with the sockets it would wait on and until when.
    fn try_socket_call(
        &mut self,
        m: &mut dyn Machine,
        call: SyscallArgs,
        timeout_ns: Option<u64>,
    ) -> Result<Option<SyscallOutcome>, (Vec<crate::process::IoWant>, u64, bool)> {
        let timed_out = self.t.io_until.is_some_and(|u| m.monotonic_ns() >= u);
        self.io_wants.clear();
        self.io_timeout_ms = None;
        self.nowait = true;
        self.forced_nonblocking = false;
        self.would_block = false;
        self.finished_with_signal = false;
        let out = self.syscall(m, call);
        self.nowait = false;
        let socks = std::mem::take(&mut self.io_wants);
        if self.t.deliverable().is_some() {
            // The call raised a signal: its handler runs now, the call done (a write to a
            // shut connection: EPIPE, then SIGPIPE's handler) or interrupted.
            self.t.io_until = None;
            let value = match out {
                SyscallOutcome::Return(_) if self.would_block && !self.finished_with_signal => {
                    -EINTR
                }
                SyscallOutcome::Return(v) => v,
                other => return Ok(Some(other)),
            };
            return Ok(Some(self.deliver_on_return(m, value).unwrap_or(out)));
        }
        if !self.would_block || (timed_out && self.io_timeout_ms.is_some()) {
            // Done, or a poll whose time is up: what it found is its answer.
            self.t.io_until = None;
            return Ok(Some(out));
        }
        if socks.is_empty() && self.io_timeout_ms.is_none() {
            // It waits on something else (a pipe, the console): served as usual.
            self.t.io_until = None;
            return Ok(None);
        }
        if let (Some(ns), None) = (timeout_ns, self.io_timeout_ms) {
            // SO_RCVTIMEO / SO_SNDTIMEO: the wait ends there with EAGAIN, as on Linux.
            if timed_out {
                self.t.io_until = None;
                // A write that sent part returns what it sent.
                let value = self
                    .t
                    .write_progress
                    .take()
                    .map_or(-EAGAIN, |w| w.sent as i64);
                return Ok(Some(SyscallOutcome::Return(value)));
            }
            let until = *self
                .t
                .io_until
                .get_or_insert_with(|| m.monotonic_ns().saturating_add(ns));
            return Err((socks, until, false));
        }
        // A poll may wait on no socket at all (pipes, eventfds, socket pairs): then only
        // their changes (which wake parked waiters) or its timeout end the wait.
        let until = match (self.t.io_until, self.io_timeout_ms) {
            (Some(u), _) => u,
            (None, Some(ms)) if ms >= 0 => {
                let u = m.monotonic_ns().saturating_add(ms as u64 * 1_000_000);
                self.t.io_until = Some(u);
                u
            }
            _ => u64::MAX,
        };
        Err((socks, until, self.io_timeout_ms.is_some()))
    }

    /// Serves one syscall.
    /// Serves one syscall, then runs a signal handler that became deliverable, if any.
    pub fn syscall(&mut self, m: &mut dyn Machine, call: SyscallArgs) -> SyscallOutcome {
        if self.nowait {
            return self.serve(m, call, false);
        }
        // A call with a signal mask of its own (ppoll, pselect6, epoll_pwait) waits under it;
        // the caller's mask comes back when it returns, or with the sigreturn of a handler
        // that interrupted it.
        let masked = match crate::signal::call_sigmask(m, &call) {
            Ok(Some(mask)) => {
                self.enter_call_mask(mask);
                true
            }
            Ok(None) => false,
            Err(e) => return SyscallOutcome::Return(-e),
        };
        let out = if masked && self.t.deliverable().is_some() {
            // A signal the mask lets through is already pending: the call ends at once.
            self.deliver_on_return(m, -EINTR)
                .unwrap_or(SyscallOutcome::Return(-EINTR))
        } else {
            self.serve(m, call, masked)
        };
        match out {
            SyscallOutcome::Return(value) if masked => {
                self.leave_call_mask();
                // What the caller's mask lets through runs as the call returns (a signal its
                // own mask held back during the wait).
                self.deliver_on_return(m, value).unwrap_or(out)
            }
            _ => out,
        }
    }

    /// [`Kernel::syscall`] once a call's own mask is in place (`masked`).
    fn serve(&mut self, m: &mut dyn Machine, call: SyscallArgs, masked: bool) -> SyscallOutcome {
        if !self.nowait {
            self.take_host_events(m);
            if let Some(sig) = self.doomed_now() {
                return self.exit_process(m, sig);
            }
            if self.waits_on_sockets(&call) && self.t.deliverable().is_none() {
                if let Some(out) = self.serve_socket_wait(m, call) {
                    return out;
                }
            }
        }
        let outcome = self.dispatch(m, call);
        if masked && matches!(outcome, SyscallOutcome::Return(v) if v >= 0) {
            // Done without a signal: the caller's mask is back before any is delivered, so
            // one only the call's mask let through stays pending (as Linux).
            self.leave_call_mask();
        }
        match outcome {
            SyscallOutcome::Return(value) if self.t.deliverable().is_some() => {
                if self.nowait {
                    // Only the vCPU thread can run a handler: it serves the call again.
                    self.finished_with_signal = !self.would_block;
                    self.would_block = true;
                    outcome
                } else {
                    self.deliver_on_return(m, value).unwrap_or(outcome)
                }
            }
            _ => outcome,
        }
    }

    fn dispatch(&mut self, m: &mut dyn Machine, call: SyscallArgs) -> SyscallOutcome {
        if self.boot_ns == 0 {
            self.boot_ns = m.monotonic_ns();
            self.cpu_mark = m.cpu_time_ns(); // the VM's start is nobody's CPU time
            self.buffer_budget = (m.memory_info().0 / 2).max(MIN_BUFFER_BUDGET);
        }
        let [a0, a1, a2, a3, a4, _a5] = call.args;
        const AT_FDCWD: u64 = -100i64 as u64;
        let a5 = call.args[5];
        let r = match call.nr {
            0 => self.read(m, a0, a1, a2, None),
            1 => self.write(m, a0, a1, a2, None),
            2 => self.openat(m, AT_FDCWD, a0, a1, a2),
            3 => self.close(m, a0),
            4 => self.fstatat(m, AT_FDCWD, a0, a1, 0),
            5 => self.fstat(m, a0, a1),
            6 => self.fstatat(m, AT_FDCWD, a0, a1, 0x100),
            7 => self.poll(m, a0, a1, a2 as i32 as i64),
            // ppoll: a timespec (NULL: no limit); its signal mask is in place (`syscall`).
            271 => wait_timeout_ms(m, a2).and_then(|ms| self.poll(m, a0, a1, ms)),
            8 => self.lseek(m, a0, a1, a2),
            9 => self.mmap(m, a0, a1, a2, a3, a4, a5),
            10 => self.mprotect(m, a0, a1, a2),
            11 => self.munmap(m, a0, a1),
            28 => self.madvise(m, a0, a1, a2),
            26 => self.msync(m, a0, a1, a2),
            12 => Ok(self.brk(m, a0) as i64),
            13 => self.rt_sigaction(m, a0, a1, a2, a3),
            14 => self.rt_sigprocmask(m, a0, a1, a2, a3),
            127 => self.rt_sigpending(m, a0, a1),
            128 => self.rt_sigtimedwait(m, (a0, a1, a2), a3),
            16 => self.ioctl(m, a0, a1, a2),
            17 => self.read(m, a0, a1, a2, Some(a3)),
            18 => self.write(m, a0, a1, a2, Some(a3)),
            19 => self.vectored(m, a0, a1, a2, false),
            20 => self.vectored(m, a0, a1, a2, true),
            // preadv, pwritev (the offset is a0's 64 bits; pos_h is unused on x86-64), and
            // preadv2, pwritev2 with their flags.
            295 if (a3 as i64) < 0 => Err(EINVAL),
            296 if (a3 as i64) < 0 => Err(EINVAL),
            295 => self.vectored_positioned(m, a0, (a1, a2), a3, 0, false),
            296 => self.vectored_positioned(m, a0, (a1, a2), a3, 0, true),
            327 => self.vectored_positioned(m, a0, (a1, a2), a3, a5, false),
            328 => self.vectored_positioned(m, a0, (a1, a2), a3, a5, true),
            309 => self.getcpu(m, a0, a1),
            21 => self.faccessat(m, AT_FDCWD, a0, a1),
            24 => Ok(0),       // sched_yield
            25 => Err(ENOMEM), // mremap: callers fall back to map, copy, unmap
            87 => self.unlinkat(m, AT_FDCWD, a0, 0),
            84 => self.unlinkat(m, AT_FDCWD, a0, 0x200),
            263 => self.unlinkat(m, a0, a1, a2),
            83 => self.mkdirat(m, AT_FDCWD, a0, a1),
            258 => self.mkdirat(m, a0, a1, a2),
            82 => self.renameat(m, (AT_FDCWD, a0), (AT_FDCWD, a1), 0),
            264 => self.renameat(m, (a0, a1), (a2, a3), 0),
            316 => self.renameat(m, (a0, a1), (a2, a3), a4),
            77 => self.file_op(m, a0, crate::fs::FileOp::Truncate(a1)),
            40 => self.sendfile(m, a0, a1, a2, a3),
            282 => self.signalfd(m, a0, a1, a2, 0),
            86 => self.linkat(m, (AT_FDCWD, a0), (AT_FDCWD, a1), 0),
            265 => self.linkat(m, (a0, a1), (a2, a3), a4),
            88 => self.symlinkat(m, a0, (AT_FDCWD, a1)),
            266 => self.symlinkat(m, a0, (a1, a2)),
            436 => self.close_range(m, a0, a1, a2),
            319 => self.memfd_create(m, a0, a1),
            289 => self.signalfd(m, a0, a1, a2, a3),
            285 => self.fallocate(m, a0, a1 as i32 as u64, a2, a3),
            326 => self.copy_file_range(m, (a0, a1), (a2, a3), a4, a5),
            74 => self.file_op(m, a0, crate::fs::FileOp::Sync { data_only: false }),
            75 => self.file_op(m, a0, crate::fs::FileOp::Sync { data_only: true }),
            92 | 94 => {
                // chown, lchown
                let nofollow = if call.nr == 94 { 0x100 } else { 0 };
                self.set_attr(m, AT_FDCWD, Some(a0), nofollow, owner(a1, a2))
            }
            93 => self.set_attr(m, a0, None, 0, owner(a1, a2)), // fchown
            260 => self.set_attr(m, a0, Some(a1), a4, owner(a2, a3)), // fchownat
            90 => self.set_attr(m, AT_FDCWD, Some(a0), 0, FileAttr::Mode(a1 as u32)),
            91 => self.set_attr(m, a0, None, 0, FileAttr::Mode(a1 as u32)), // fchmod
            268 => self.set_attr(m, a0, Some(a1), 0, FileAttr::Mode(a2 as u32)), // fchmodat
            280 => match read_utimes(m, a2) {
                // utimensat(dirfd, NULL, ...) is futimens.
                Ok(t) if a1 == 0 => self.set_attr(m, a0, None, 0, t),
                Ok(t) => self.set_attr(m, a0, Some(a1), a3, t),
                Err(e) => Err(e),
            },
            204 => self.sched_getaffinity(m, a1, a2),
            137 => self.statfs(m, Some(a0), 0, a1),
            138 => self.statfs(m, None, a0, a1),
            191 | 192 => self.xattr(m, false, Some(a0)), // getxattr, lgetxattr
            193 => self.p.fds.kind(a0).and(Err(ENODATA)), // fgetxattr
            194 | 195 => self.xattr(m, true, Some(a0)),  // listxattr, llistxattr
            196 => self.p.fds.kind(a0).map(|_| 0),       // flistxattr
            283 => self.timerfd_create(a0, a1),
            286 => self.timerfd_settime(m, a0, a1, a2, a3),
            287 => self.timerfd_gettime(m, a0, a1),
            284 => self.eventfd(a0, 0),
            290 => self.eventfd(a0, a1),
            22 => self.pipe2(m, a0, 0),
            293 => self.pipe2(m, a0, a1),
            32 => self.dup(a0, 0, None, false),
            33 => self.dup(a0, 0, Some(a1), false),
            35 => self.nanosleep(m, a0),
            39 => Ok(self.p.pid),
            186 => Ok(self.t.tid), // gettid
            41 => self.socket(m, a0, a1),
            53 => self.socketpair(m, a0, a1, a3),
            42 => self.connect(m, a0, a1, a2),
            43 => self.accept(m, a0, a1, a2, 0),
            44 => self.sendto(m, a0, (a1, a2, a3), a4, a5),
            45 => self.recvfrom(m, a0, (a1, a2, a3), a4, a5),
            46 => self.sendmsg(m, a0, a1, a2),
            47 => self.recvmsg(m, a0, a1, a2),
            307 => self.mmsg(m, a0, a1, a2, a3, true),
            299 => self.mmsg(m, a0, a1, a2, a3, false),
            48 => self.shutdown(m, a0, a1),
            49 => self.bind(m, a0, a1, a2),
            50 => self.listen(m, a0, a1),
            51 => self.sockname(m, a0, a1, a2, false),
            52 => self.sockname(m, a0, a1, a2, true),
            54 => self.setsockopt(m, a0, (a1, a2), (a3, a4)),
            55 => self.getsockopt(m, a0, a1, a2, a3, a4),
            288 => self.accept(m, a0, a1, a2, a3),
            23 => match a4 {
                0 => self.select(m, a0, [a1, a2, a3], -1),
                tv => read_timeval_ms(m, tv).and_then(|ms| self.select(m, a0, [a1, a2, a3], ms)),
            },
            270 => wait_timeout_ms(m, a4).and_then(|ms| self.select(m, a0, [a1, a2, a3], ms)),
            213 => self.epoll_create(0),
            291 => self.epoll_create(a0),
            233 => self.epoll_ctl(m, a0, a1, a2, a3),
            232 | 281 => self.epoll_wait(m, a0, a1, a2, a3 as i32 as i64),
            // epoll_pwait2: epoll_pwait with a timespec timeout.
            441 => wait_timeout_ms(m, a3).and_then(|ms| self.epoll_wait(m, a0, a1, a2, ms)),
            60 => return self.exit_thread(m, ((a0 & 0xff) as i32) << 8),
            231 => return self.exit_process(m, ((a0 & 0xff) as i32) << 8),
            56 => return self.clone(m, a0, a1, a2, a3, a4),
            57 => return self.clone(m, 0, 0, 0, 0, 0),
            58 => return self.clone(m, 0x4000 | 0x100, 0, 0, 0, 0), // CLONE_VFORK | CLONE_VM
            59 => return self.execve(m, AT_FDCWD, a0, a1, a2),
            322 => return self.execve(m, a0, a1, a2, a3),
            61 => return self.wait4(m, a0 as i32 as i64, a1, a2, a3),
            247 => return self.waitid(m, a0, a1, a2, a3),
            109 => self.setpgid(a0 as i32 as i64, a1 as i32 as i64),
            121 => self.group_of(a0 as i32 as i64, false),
            124 => self.group_of(a0 as i32 as i64, true),
            112 => self.setsid(),
            63 => self.uname(m, a0),
            72 if crate::locks::is_lock_command(a1) => self.fcntl_lock(m, a0, a1, a2),
            72 => self.fcntl(a0, a1, a2),
            73 => self.flock(m, a0, a1),
            79 => self.getcwd(m, a0, a1),
            80 => self.chdir(m, a0),
            81 => self.fchdir(a0),
            89 => self.readlinkat(m, AT_FDCWD, a0, a1, a2),
            95 => Ok(0o022), // umask
            37 => self.alarm(m, a0 as u32 as u64),
            38 => self.setitimer(m, a0 as u32 as u64, a1, a2),
            36 => self.getitimer(m, a0 as u32 as u64, a1),
            222 => self.timer_create(m, a0, a1, a2),
            223 => self.timer_settime(m, a0 as u32 as u64, a1, a2, a3),
            224 => self.timer_gettime(m, a0 as u32 as u64, a1),
            225 => self.timer_getoverrun(a0 as u32 as u64),
            226 => self.timer_delete(a0 as u32 as u64),
            96 => self.gettimeofday(m, a0, a1),
            99 => self.sysinfo(m, a0),
            98 => self.getrusage(m, a0 as i32 as i64, a1),
            100 => self.times(m, a0),
            102 => Ok(self.p.cred.uid.into()),
            104 => Ok(self.p.cred.gid.into()),
            107 => Ok(self.p.cred.euid.into()),
            108 => Ok(self.p.cred.egid.into()),
            105 => self.p.cred.set_id(Ids::User, a0 as u32).map(|()| 0),
            106 => self.p.cred.set_id(Ids::Group, a0 as u32).map(|()| 0),
            113 => self
                .p
                .cred
                .set_re(Ids::User, a0 as u32, a1 as u32)
                .map(|()| 0),
            114 => self
                .p
                .cred
                .set_re(Ids::Group, a0 as u32, a1 as u32)
                .map(|()| 0),
            117 => (self.p.cred)
                .set_res(Ids::User, a0 as u32, a1 as u32, a2 as u32)
                .map(|()| 0),
            119 => (self.p.cred)
                .set_res(Ids::Group, a0 as u32, a1 as u32, a2 as u32)
                .map(|()| 0),
            118 => self.get_res(m, Ids::User, [a0, a1, a2]),
            120 => self.get_res(m, Ids::Group, [a0, a1, a2]),
            115 => self.getgroups(m, a0, a1),
            116 => self.setgroups(m, a0, a1),
            // setfsuid/setfsgid: file access does not go by the app's ids (see cred.rs); the
            // file-system id is the effective one.
            122 => Ok(self.p.cred.euid.into()),
            123 => Ok(self.p.cred.egid.into()),
            110 => Ok(self.p.ppid), // getppid (0 for the container's init)
            111 => Ok(self.p.pgid), // getpgrp
            157 => self.prctl(m, a0, a1),
            158 => self.arch_prctl(m, a0, a1),
            201 => self.time(m, a0),
            217 => self.getdents64(m, a0, a1, a2),
            218 => {
                self.t.clear_child_tid = a0; // set_tid_address
                Ok(self.t.tid)
            }
            228 => self.clock_gettime(m, a0, a1),
            229 => self.clock_getres(m, a0, a1),
            230 => self.clock_nanosleep(m, a0, a1, a2),
            257 => self.openat(m, a0, a1, a2, a3),
            262 => self.fstatat(m, a0, a1, a2, a3),
            267 => self.readlinkat(m, a0, a1, a2, a3),
            269 | 439 => self.faccessat(m, a0, a1, a2),
            273 => self.set_robust_list(a0, a1),
            274 => self.get_robust_list(m, a0, a1, a2),
            202 => self.futex(
                m,
                crate::futex::FutexArgs {
                    uaddr: a0,
                    op: a1,
                    val: a2,
                    timeout: a3,
                    uaddr2: a4,
                    val3: a5,
                },
            ),
            // kill; tkill and tgkill: a thread (of a process).
            62 => return self.kill(m, a0 as i32 as i64, a1),
            200 => return self.tkill(m, None, a0 as i32 as i64, a1),
            234 => return self.tkill(m, Some(a0 as i32 as i64), a1 as i32 as i64, a2),
            292 => self.dup(a0, 0, Some(a1), a2 & 0o2000000 != 0),
            302 => self.prlimit(m, a0 as i32 as i64, a1, (a2, a3)),
            97 => self.prlimit(m, 0, a0, (0, a1)), // getrlimit
            160 => self.prlimit(m, 0, a0, (a1, 0)), // setrlimit
            318 => self.getrandom(m, a0, a1),
            324 => self.membarrier(a0, a1),
            332 => self.statx(m, a0, a1, a2, a4),
            334 => Err(ENOSYS), // rseq: glibc falls back
            crate::fastread::QUARK_READ_DONE => self.fast_io_done(m, a0, a1, false),
            crate::fastread::QUARK_WRITE_DONE => self.fast_io_done(m, a0, a1, true),
            34 => return self.suspend(m, None),
            130 => return self.suspend(m, Some(a0)), // rt_sigsuspend
            15 => return self.sigreturn(m),
            131 => self.sigaltstack(m, a0, a1),
            _ => {
                tracing::debug!(
                    nr = call.nr,
                    name = crate::sysnames::name(call.nr),
                    "unimplemented syscall"
                );
                Err(ENOSYS)
            }
        };
        if self.nowait && self.forced_nonblocking && r == Err(EAGAIN) {
            self.would_block = true;
        }
        match r {
            // Switching processes is for the vCPU thread: a polled call goes there.
            Err(crate::pipe::ERESTART) if self.nowait => {
                self.would_block = true;
                return SyscallOutcome::Return(-EAGAIN);
            }
            // So is ending one; this call waits on no socket (a write to a connection nobody
            // reads would otherwise park until it became writable, forever).
            Err(crate::pipe::ESIGPIPE) if self.nowait => {
                self.io_wants.clear();
                self.would_block = true;
                return SyscallOutcome::Return(-EAGAIN);
            }
            Err(crate::pipe::ERESTART) => return self.block_on_pipe(m),
            Err(crate::process::ESLEEP) => return self.park_sleeping(m),
            Err(crate::futex::EFUTEX) if self.nowait => {
                self.futex_wait = None;
                self.would_block = true;
                return SyscallOutcome::Return(-EAGAIN);
            }
            Err(crate::futex::EFUTEX) => return self.park_on_futex(m),
            Err(crate::signal::ESIGWAIT) => {
                let until = self.t.io_until.unwrap_or(u64::MAX);
                return self.park_on_sockets(m, Vec::new(), until, true);
            }
            Err(crate::timers::ETIMERFD_WAIT) if self.nowait => {
                self.would_block = true;
                return SyscallOutcome::Return(-EAGAIN);
            }
            Err(crate::timers::ETIMERFD_WAIT) => {
                let until = self.timerfd_wake;
                return self.park_on_sockets(m, Vec::new(), until, false);
            }
            Err(crate::fs::EINPUT) if self.nowait => {
                self.would_block = true;
                return SyscallOutcome::Return(-EAGAIN);
            }
            Err(crate::fs::EINPUT) => {
                let until = m.monotonic_ns().saturating_add(crate::fs::INPUT_POLL_NS);
                return self.park_on_sockets(m, Vec::new(), until, false);
            }
            Err(crate::pipe::ESIGPIPE) => return self.sigpipe(m),
            _ => {}
        }
        let ret = r.unwrap_or_else(|e| -e);
        tracing::trace!(name = crate::sysnames::name(call.nr), args = ?call.args, ret, "syscall");
        SyscallOutcome::Return(ret)
    }

    fn brk(&mut self, m: &mut dyn Machine, want: u64) -> u64 {
        if want < self.p.brk_start || want >= MMAP_TOP {
            return self.p.brk;
        }
        let need = want.div_ceil(PAGE) * PAGE;
        if need > self.p.brk_mapped {
            let rw = PageFlags {
                write: true,
                exec: false,
            };
            if m.map_zeroed(self.p.brk_mapped, need - self.p.brk_mapped, rw)
                .is_err()
            {
                return self.p.brk; // Linux reports failure by returning the old break.
            }
            self.p.brk_mapped = need;
        }
        self.p.brk = want;
        want
    }

    /// Fresh address space for a mapping of `len` bytes, below the previous one with a guard
    /// page between, and well above the heap.
    fn mmap_area(&mut self, len: u64) -> Result<u64, i64> {
        let va = self.p.mmap_next.checked_sub(len).ok_or(ENOMEM)?;
        if va <= self.p.brk_mapped + (64 << 20) {
            return Err(ENOMEM);
        }
        self.p.mmap_next = va - PAGE;
        Ok(va)
    }

    #[allow(clippy::too_many_arguments)] // mmap's six arguments, and the machine
    fn mmap(
        &mut self,
        m: &mut dyn Machine,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        fd: u64,
        offset: u64,
    ) -> Result<i64, i64> {
        const MAP_SHARED: u64 = 0x01;
        const MAP_FIXED: u64 = 0x10;
        const MAP_ANONYMOUS: u64 = 0x20;
        if flags & MAP_ANONYMOUS == 0 {
            match self.p.fds.kind(fd)? {
                crate::fs::FileKind::Host { file, .. } => {
                    let file = (*file, self.p.fds.access_mode(fd)?);
                    return self.mmap_file(m, addr, len, prot, flags, file, offset);
                }
                // /dev/zero maps as anonymous memory.
                crate::fs::FileKind::Zero => {}
                _ => return Err(ENODEV),
            }
        }
        if len == 0 || len > USER_END {
            return Err(EINVAL);
        }
        let len = len.div_ceil(PAGE) * PAGE;
        let populate = prot != PROT_NONE;
        if flags & MAP_SHARED != 0 {
            return self.mmap_shared_anon(m, addr, len, populate, flags & MAP_FIXED != 0);
        }
        if flags & MAP_FIXED != 0 {
            let end = user_pages(addr, len)?;
            if self.p.vm.fixed_mapping_refused(addr, end) {
                return Err(ENOMEM);
            }
            self.p.vm.remove(addr, end);
            if populate {
                self.populate(m, addr, len)?;
            }
            self.p.vm.insert(addr, addr + len, populate);
            return Ok(addr as i64);
        }
        if populate {
            if let Some(va) = self.p.vm.take_free(len) {
                // Pages that were unmapped keep their (present) entries; zero them for reuse.
                zero(m, va, len)?;
                self.p.vm.insert(va, va + len, true);
                return Ok(va as i64);
            }
        }
        let va = self.mmap_area(len)?;
        if populate {
            m.map_zeroed(va, len, ANON).map_err(|_| ENOMEM)?;
        }
        self.p.vm.insert(va, va + len, populate);
        Ok(va as i64)
    }

    /// Where a shared mapping goes: at `addr` for a fixed one, which may replace no present
    /// page (present entries cannot be replaced here, and another process may share them:
    /// ENOMEM), else fresh address space.
    fn shared_mapping_area(&mut self, addr: u64, len: u64, fixed: bool) -> Result<u64, i64> {
        if !fixed {
            return self.mmap_area(len);
        }
        let end = user_pages(addr, len)?;
        if self.p.vm.fixed_mapping_refused(addr, end) || self.p.vm.any_present(addr, end) {
            return Err(ENOMEM);
        }
        self.p.vm.remove(addr, end);
        Ok(addr)
    }

    /// Shared anonymous memory: fresh pages that processes forked from this one share (never
    /// reused pages, which are this process's own). A fixed mapping over present pages is
    /// ENOMEM: they cannot be replaced by shared ones here.
    fn mmap_shared_anon(
        &mut self,
        m: &mut dyn Machine,
        addr: u64,
        len: u64,
        populate: bool,
        fixed: bool,
    ) -> Result<i64, i64> {
        let va = self.shared_mapping_area(addr, len, fixed)?;
        if populate {
            m.map_zeroed_shared(va, len, ANON).map_err(|_| ENOMEM)?;
        }
        self.p
            .vm
            .insert_backed(va, va + len, populate, Backing::SharedAnon);
        Ok(va as i64)
    }

    /// A shared file mapping: the platform's pages of the file. Writable when the descriptor
    /// is (a later mprotect could not make them so). A fixed mapping over present pages is
    /// ENOMEM, as for shared anonymous memory.
    fn mmap_file_shared(
        &mut self,
        m: &mut dyn Machine,
        addr: u64,
        len: u64,
        fixed: bool,
        file: crate::machine::HostFile,
        (offset, writable): (u64, bool),
    ) -> Result<i64, i64> {
        let va = self.shared_mapping_area(addr, len, fixed)?;
        offset.checked_add(len).ok_or(EINVAL)?;
        let flags = PageFlags {
            write: writable,
            exec: true,
        };
        m.map_file_shared((va, len), file, (offset, writable), flags)?;
        self.p
            .vm
            .insert_backed(va, va + len, true, Backing::SharedFile);
        Ok(va as i64)
    }

    /// A private read-only mapping of a data file (ld.so.cache, locale archives, a program's
    /// data): the page cache's pages, shared with every process that maps that part of the
    /// file, mapped read-only (as Linux shares them until a process writes, which a read-only
    /// mapping never does). Programs and libraries keep copies of their own: the loader maps
    /// parts of them again over the first mapping, and their code may be patched.
    fn mmap_file_cached(
        &mut self,
        m: &mut dyn Machine,
        len: u64,
        file: crate::machine::HostFile,
        offset: u64,
    ) -> Result<i64, i64> {
        offset.checked_add(len).ok_or(EINVAL)?;
        let va = self.mmap_area(len)?;
        let read_only = PageFlags {
            write: false,
            exec: false,
        };
        m.map_file_shared((va, len), file, (offset, false), read_only)?;
        self.p
            .vm
            .insert_backed(va, va + len, true, Backing::CachedReadOnly);
        Ok(va as i64)
    }

    /// msync(2): the range's shared file pages go back to their files now (MS_ASYNC as well:
    /// writing them at once is one way of scheduling it).
    fn msync(&mut self, m: &mut dyn Machine, addr: u64, len: u64, flags: u64) -> Result<i64, i64> {
        const MS_ASYNC: u64 = 1;
        const MS_INVALIDATE: u64 = 2;
        const MS_SYNC: u64 = 4;
        if flags & !(MS_ASYNC | MS_INVALIDATE | MS_SYNC) != 0
            || flags & (MS_ASYNC | MS_SYNC) == (MS_ASYNC | MS_SYNC)
        {
            return Err(EINVAL);
        }
        let end = user_pages(addr, len)?;
        let in_heap = addr >= self.p.brk_start && end <= self.p.brk_mapped;
        let in_stack = addr >= STACK_TOP - STACK_SIZE && end <= STACK_TOP;
        if !(in_heap || in_stack || self.p.vm.covered(addr, end)) {
            return Err(ENOMEM);
        }
        m.sync_file_pages(addr, end - addr)?;
        Ok(0)
    }

    /// Makes `[va, va+len)` present and zeroed: fresh pages are mapped, pages already present
    /// (left by an earlier mapping) are zeroed.
    /// A file mapping (`file`: the file and its descriptor's access mode). MAP_SHARED maps the
    /// platform's shared pages of the file. MAP_PRIVATE gets pages of its own, filled from the
    /// file, mapped writable and executable whatever `prot` says: permissions of a present
    /// page cannot change later here, and the dynamic loader maps a library read-only first
    /// and its code over it afterwards.
    #[allow(clippy::too_many_arguments)]
    fn mmap_file(
        &mut self,
        m: &mut dyn Machine,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        (file, access): (crate::machine::HostFile, i32),
        offset: u64,
    ) -> Result<i64, i64> {
        const MAP_SHARED: u64 = 0x01;
        const MAP_FIXED: u64 = 0x10;
        const PROT_WRITE: u64 = 2;
        const O_WRONLY: i32 = 1;
        const O_RDWR: i32 = 2;
        const RWX: PageFlags = PageFlags {
            write: true,
            exec: true,
        };
        if len == 0 || len > USER_END || offset % PAGE != 0 {
            return Err(EINVAL);
        }
        // Linux: every file mapping reads the file; a shared one that writes needs O_RDWR.
        if access == O_WRONLY
            || (flags & MAP_SHARED != 0 && prot & PROT_WRITE != 0 && access != O_RDWR)
        {
            return Err(EACCES);
        }
        const PROT_EXEC: u64 = 4;
        if prot != PROT_NONE
            && prot & (PROT_WRITE | PROT_EXEC) == 0
            && flags & (MAP_SHARED | MAP_FIXED) == 0
            && !is_elf(m, file)
        {
            return self.mmap_file_cached(m, len.div_ceil(PAGE) * PAGE, file, offset);
        }
        if flags & MAP_SHARED != 0 {
            let len = len.div_ceil(PAGE) * PAGE;
            return self.mmap_file_shared(
                m,
                addr,
                len,
                flags & MAP_FIXED != 0,
                file,
                (offset, access == O_RDWR),
            );
        }
        let len = len.div_ceil(PAGE) * PAGE;
        let va = if flags & MAP_FIXED != 0 {
            let end = user_pages(addr, len)?;
            if self.p.vm.fixed_mapping_refused(addr, end) {
                return Err(ENOMEM);
            }
            self.p.vm.remove(addr, end);
            addr
        } else {
            self.mmap_area(len)?
        };
        let mut page = va;
        while page < va + len {
            if m.map_zeroed(page, PAGE, RWX).is_err() {
                zero(m, page, PAGE)?; // MAP_FIXED over a present page
            }
            page += PAGE;
        }
        // A private copy of executable code: its syscall sites may be patched (they change in
        // this copy only).
        let backing = if flags & MAP_SHARED == 0 && prot & PROT_EXEC != 0 {
            Backing::LibraryCode
        } else {
            Backing::Data
        };
        self.p.vm.insert_backed(va, va + len, true, backing);
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(CHUNK);
            let got = m.fs_read(file, &mut buf[..n], Some(offset + done))?;
            if got == 0 {
                break; // past the end of the file: zeros
            }
            m.write(va + done, &buf[..got]).map_err(|_| EFAULT)?;
            done += got as u64;
        }
        Ok(va as i64)
    }

    fn populate(&mut self, m: &mut dyn Machine, va: u64, len: u64) -> Result<(), i64> {
        let mut page = va;
        while page < va + len {
            if m.map_zeroed(page, PAGE, ANON).is_err() {
                zero(m, page, PAGE)?;
            }
            page += PAGE;
        }
        Ok(())
    }

    fn munmap(&mut self, m: &mut dyn Machine, addr: u64, len: u64) -> Result<i64, i64> {
        if len == 0 {
            return Err(EINVAL);
        }
        let end = user_pages(addr, len)?;
        for (s, e, present, backing) in self.p.vm.remove(addr, end) {
            match (present, backing) {
                // Its pages may be another process's too: kept out of use (see SharedGone).
                (true, Backing::SharedAnon) => {
                    self.p.vm.insert_backed(s, e, true, Backing::SharedGone)
                }
                // The file gets what was stored in it now, as Linux's unmap makes it dirty
                // in the page cache (a failure here is the file's, not munmap's).
                (true, Backing::SharedFile) => {
                    let _ = m.sync_file_pages(s, e - s);
                    self.p.vm.insert_backed(s, e, true, Backing::SharedGone)
                }
                (true, Backing::CachedReadOnly) => {
                    self.p.vm.insert_backed(s, e, true, Backing::SharedGone)
                }
                (true, _) => self.p.vm.free(s, e),
                (false, _) => {}
            }
        }
        Ok(0)
    }

    /// madvise(2): MADV_DONTNEED gives the range's private pages back as zeros (what malloc
    /// relies on after trimming an arena); every other advice is a hint, taken as given.
    fn madvise(
        &mut self,
        m: &mut dyn Machine,
        addr: u64,
        len: u64,
        advice: u64,
    ) -> Result<i64, i64> {
        const MADV_DONTNEED: u64 = 4;
        let end = user_pages(addr, len)?;
        if advice == MADV_DONTNEED {
            let zeros = [0u8; PAGE as usize];
            for page in (addr..end).step_by(PAGE as usize) {
                // Shared memory keeps its contents (Linux drops only this process's view of
                // it, and the next touch finds the same data).
                if self
                    .p
                    .vm
                    .backing(page, page + PAGE)
                    .is_some_and(Backing::shared)
                {
                    continue;
                }
                // A page not there yet reads as zeros already.
                let _ = m.write(page, &zeros);
            }
        }
        Ok(0)
    }

    fn mprotect(
        &mut self,
        m: &mut dyn Machine,
        addr: u64,
        len: u64,
        prot: u64,
    ) -> Result<i64, i64> {
        let end = user_pages(addr, len)?;
        if prot == PROT_NONE {
            return Ok(0); // present pages stay present (see docs/qvisor.md, Memory)
        }
        const PROT_WRITE_OR_EXEC: u64 = 2 | 4;
        if prot & PROT_WRITE_OR_EXEC != 0 && self.p.vm.holds(addr, end, Backing::CachedReadOnly) {
            return Err(EACCES); // read-only page cache pages cannot change (see the backing)
        }
        // Reserved (PROT_NONE) parts become real memory now; the rest keeps its pages.
        for (s, e, present, backing) in self.p.vm.remove(addr, end) {
            if !present {
                let mapped = if backing == Backing::SharedAnon {
                    m.map_zeroed_shared(s, e - s, ANON)
                } else {
                    m.map_zeroed(s, e - s, ANON)
                };
                mapped.map_err(|_| ENOMEM)?;
            }
            self.p.vm.insert_backed(s, e, true, backing);
        }
        Ok(0)
    }

    /// sched_getaffinity(2): the VM has one vCPU, so the mask names CPU 0.
    fn sched_getaffinity(&mut self, m: &mut dyn Machine, size: u64, mask: u64) -> Result<i64, i64> {
        if size < 8 || size % 8 != 0 {
            return Err(EINVAL);
        }
        m.write(mask, &1u64.to_le_bytes()).map_err(|_| EFAULT)?;
        Ok(8)
    }

    fn uname(&mut self, m: &mut dyn Machine, buf: u64) -> Result<i64, i64> {
        let mut u = [0u8; 65 * 6];
        for (i, f) in [
            "Linux",
            "quark",
            "6.1.0-quark",
            "#1 SMP",
            "x86_64",
            "(none)",
        ]
        .iter()
        .enumerate()
        {
            u[i * 65..i * 65 + f.len()].copy_from_slice(f.as_bytes());
        }
        m.write(buf, &u).map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// prctl: the thread name (PR_SET_NAME/PR_GET_NAME) and the no-op flags apps set.
    fn prctl(&mut self, m: &mut dyn Machine, option: u64, arg: u64) -> Result<i64, i64> {
        const PR_SET_PDEATHSIG: u64 = 1;
        const PR_SET_DUMPABLE: u64 = 4;
        const PR_SET_NAME: u64 = 15;
        const PR_GET_NAME: u64 = 16;
        const PR_SET_NO_NEW_PRIVS: u64 = 38;
        match option {
            PR_SET_NAME => {
                let mut name = [0u8; 16];
                m.read(arg, &mut name).map_err(|_| EFAULT)?;
                let end = name.iter().position(|&b| b == 0).unwrap_or(15).min(15);
                self.p.comm = name[..end].to_vec();
                Ok(0)
            }
            PR_GET_NAME => {
                let mut name = [0u8; 16];
                let n = self.p.comm.len().min(15);
                name[..n].copy_from_slice(&self.p.comm[..n]);
                m.write(arg, &name).map_err(|_| EFAULT)?;
                Ok(0)
            }
            PR_SET_PDEATHSIG | PR_SET_DUMPABLE | PR_SET_NO_NEW_PRIVS => Ok(0),
            _ => Err(EINVAL),
        }
    }

    fn arch_prctl(&mut self, m: &mut dyn Machine, code: u64, addr: u64) -> Result<i64, i64> {
        const ARCH_SET_FS: u64 = 0x1002;
        if code != ARCH_SET_FS {
            return Err(EINVAL);
        }
        if addr >= USER_END {
            return Err(EPERM);
        }
        m.set_thread_pointer(addr);
        Ok(0)
    }

    /// clock_getres(2): 1 ns for the clocks clock_gettime serves (host clocks), a tick (4 ms,
    /// Linux's at HZ=250) for the coarse ones.
    fn clock_getres(&mut self, m: &mut dyn Machine, clock: u64, res: u64) -> Result<i64, i64> {
        let ns: u64 = match clock {
            5 | 6 => 4_000_000, // REALTIME_COARSE, MONOTONIC_COARSE
            0..=4 | 7..=9 | 11 => 1,
            // A CPU clock by id: glibc's clock_getcpuclockid asks here whether the pid exists.
            _ => self.cpu_clock_ns(m, clock).map(|_| 1).ok_or(EINVAL)?,
        };
        if res != 0 {
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&ns.to_le_bytes());
            m.write(res, &b).map_err(|_| EFAULT)?;
        }
        Ok(0)
    }

    fn clock_gettime(&mut self, m: &mut dyn Machine, clock: u64, ts: u64) -> Result<i64, i64> {
        let ns = match clock {
            0 | 5 | 8 | 11 => m.realtime_ns(), // REALTIME and its coarse/alarm/tai variants
            1 | 4 | 6 | 7 | 9 => m.monotonic_ns(), // MONOTONIC, RAW, COARSE, BOOTTIME
            2 => self.process_cpu_ns(m),       // CLOCK_PROCESS_CPUTIME_ID
            3 => self.thread_cpu_ns(m),        // CLOCK_THREAD_CPUTIME_ID
            _ => self.cpu_clock_ns(m, clock).ok_or(EINVAL)?,
        };
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
        b[8..].copy_from_slice(&(ns % 1_000_000_000).to_le_bytes());
        m.write(ts, &b).map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// membarrier(2). The VM has one vCPU and every thread reaches it through an exit or the
    /// syscall stub, each a full barrier and a serializing instruction, so every barrier
    /// command is done by the time the call returns; registrations are kept per process (as
    /// Linux keeps them with the address space: a fork child has its parent's, exec drops
    /// them) so the private commands fail as Linux's do without one. RSEQ commands are not offered (no
    /// rseq here).
    fn membarrier(&mut self, cmd: u64, flags: u64) -> Result<i64, i64> {
        const QUERY: u64 = 0;
        const GLOBAL: u64 = 1;
        const GLOBAL_EXPEDITED: u64 = 2;
        const REGISTER_GLOBAL_EXPEDITED: u64 = 4;
        const PRIVATE_EXPEDITED: u64 = 8;
        const REGISTER_PRIVATE_EXPEDITED: u64 = 16;
        const PRIVATE_EXPEDITED_SYNC_CORE: u64 = 32;
        const REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: u64 = 64;
        const GET_REGISTRATIONS: u64 = 512;
        const SUPPORTED: u64 = GLOBAL
            | GLOBAL_EXPEDITED
            | REGISTER_GLOBAL_EXPEDITED
            | PRIVATE_EXPEDITED
            | REGISTER_PRIVATE_EXPEDITED
            | PRIVATE_EXPEDITED_SYNC_CORE
            | REGISTER_PRIVATE_EXPEDITED_SYNC_CORE
            | GET_REGISTRATIONS;
        if flags != 0 {
            return Err(EINVAL);
        }
        let registered = u64::from(self.p.membarrier);
        match cmd {
            QUERY => Ok(SUPPORTED as i64),
            GLOBAL | GLOBAL_EXPEDITED => Ok(0),
            REGISTER_GLOBAL_EXPEDITED
            | REGISTER_PRIVATE_EXPEDITED
            | REGISTER_PRIVATE_EXPEDITED_SYNC_CORE => {
                self.p.membarrier |= cmd as u32;
                Ok(0)
            }
            PRIVATE_EXPEDITED if registered & REGISTER_PRIVATE_EXPEDITED != 0 => Ok(0),
            PRIVATE_EXPEDITED_SYNC_CORE
                if registered & REGISTER_PRIVATE_EXPEDITED_SYNC_CORE != 0 =>
            {
                Ok(0)
            }
            PRIVATE_EXPEDITED | PRIVATE_EXPEDITED_SYNC_CORE => Err(EPERM),
            GET_REGISTRATIONS => Ok(registered as i64),
            _ => Err(EINVAL),
        }
    }

    /// getcpu(2): the one vCPU, node 0.
    fn getcpu(&mut self, m: &mut dyn Machine, cpu: u64, node: u64) -> Result<i64, i64> {
        for at in [cpu, node].into_iter().filter(|a| *a != 0) {
            m.write(at, &0u32.to_le_bytes()).map_err(|_| EFAULT)?;
        }
        Ok(0)
    }

    fn time(&mut self, m: &mut dyn Machine, out: u64) -> Result<i64, i64> {
        let secs = (m.realtime_ns() / 1_000_000_000) as i64;
        if out != 0 {
            m.write(out, &secs.to_le_bytes()).map_err(|_| EFAULT)?;
        }
        Ok(secs)
    }

    fn rt_sigaction(
        &mut self,
        m: &mut dyn Machine,
        sig: u64,
        act: u64,
        old: u64,
        size: u64,
    ) -> Result<i64, i64> {
        const SIGKILL: u64 = 9;
        const SIGSTOP: u64 = 19;
        if size != 8 || !(1..=64).contains(&sig) {
            return Err(EINVAL);
        }
        let slot = (sig - 1) as usize;
        let previous = self.p.sigactions[slot];
        if act != 0 {
            if sig == SIGKILL || sig == SIGSTOP {
                return Err(EINVAL);
            }
            let mut new = [0u8; 32];
            m.read(act, &mut new).map_err(|_| EFAULT)?;
            self.p.sigactions[slot] = new;
        }
        if old != 0 {
            m.write(old, &previous).map_err(|_| EFAULT)?;
        }
        Ok(0)
    }

    fn rt_sigprocmask(
        &mut self,
        m: &mut dyn Machine,
        how: u64,
        set: u64,
        old: u64,
        size: u64,
    ) -> Result<i64, i64> {
        // SIGKILL and SIGSTOP can never be blocked.
        const UNBLOCKABLE: u64 = (1 << 8) | (1 << 18);
        if size != 8 {
            return Err(EINVAL);
        }
        let previous = self.t.sigmask;
        if set != 0 {
            let mut b = [0u8; 8];
            m.read(set, &mut b).map_err(|_| EFAULT)?;
            let v = u64::from_le_bytes(b);
            self.t.sigmask = match how {
                0 => self.t.sigmask | v,
                1 => self.t.sigmask & !v,
                2 => v,
                _ => return Err(EINVAL),
            } & !UNBLOCKABLE;
        }
        if old != 0 {
            m.write(old, &previous.to_le_bytes()).map_err(|_| EFAULT)?;
        }
        Ok(0)
    }

    fn nanosleep(&mut self, m: &mut dyn Machine, req: u64) -> Result<i64, i64> {
        let ns = read_timespec(m, req)?;
        self.sleep_for(m, ns)
    }

    /// clock_nanosleep: relative, or until an absolute time of the clock (TIMER_ABSTIME).
    fn clock_nanosleep(
        &mut self,
        m: &mut dyn Machine,
        clock: u64,
        flags: u64,
        req: u64,
    ) -> Result<i64, i64> {
        const TIMER_ABSTIME: u64 = 1;
        if flags & TIMER_ABSTIME == 0 {
            return self.nanosleep(m, req);
        }
        let target = read_timespec(m, req)?;
        let now = match clock {
            0 => m.realtime_ns(),
            1 | 7 => m.monotonic_ns(),
            _ => return Err(EINVAL),
        };
        self.sleep_for(m, target.saturating_sub(now))
    }

    fn gettimeofday(&mut self, m: &mut dyn Machine, tv: u64, tz: u64) -> Result<i64, i64> {
        if tv != 0 {
            let ns = m.realtime_ns();
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
            b[8..].copy_from_slice(&((ns % 1_000_000_000) / 1000).to_le_bytes());
            m.write(tv, &b).map_err(|_| EFAULT)?;
        }
        if tz != 0 {
            // struct timezone: UTC, no DST (Linux's sys_tz unless settimeofday set it).
            m.write(tz, &[0u8; 8]).map_err(|_| EFAULT)?;
        }
        Ok(0)
    }

    fn sysinfo(&mut self, m: &mut dyn Machine, out: u64) -> Result<i64, i64> {
        // struct sysinfo: uptime, loads[3], totalram, freeram, ... mem_unit at 104.
        // The container's: its uptime, its memory (as /proc/meminfo), its threads.
        let mut b = [0u8; 112];
        let uptime = m.monotonic_ns().saturating_sub(self.boot_ns) / 1_000_000_000;
        let (total, used) = m.memory_info();
        let (_, threads) = self.procs.thread_counts();
        b[..8].copy_from_slice(&uptime.to_le_bytes());
        b[32..40].copy_from_slice(&total.to_le_bytes());
        b[40..48].copy_from_slice(&total.saturating_sub(used).to_le_bytes());
        let procs = (threads + 1).min(u16::MAX as usize) as u16;
        b[80..82].copy_from_slice(&procs.to_le_bytes());
        b[104..108].copy_from_slice(&1u32.to_le_bytes()); // mem_unit
        m.write(out, &b).map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// getrusage(2): CPU time (as user time: the vCPU's, while the process's threads ran) and
    /// the resident size; the other counters are not kept (0).
    fn getrusage(&mut self, m: &mut dyn Machine, who: i64, out: u64) -> Result<i64, i64> {
        const RUSAGE_SELF: i64 = 0;
        const RUSAGE_CHILDREN: i64 = -1;
        const RUSAGE_THREAD: i64 = 1;
        let (cpu, rss) = match who {
            RUSAGE_SELF => {
                let space = m.space_current();
                let rss = m.resident_bytes(space, 0, USER_END) >> 10;
                (self.process_cpu_ns(m), rss)
            }
            RUSAGE_THREAD => (self.thread_cpu_ns(m), 0),
            RUSAGE_CHILDREN => (self.p.children_cpu_ns, 0),
            _ => return Err(EINVAL),
        };
        let bytes = crate::process::rusage_bytes(cpu, rss);
        m.write(out, &bytes).map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// times(2): the process's and its reaped children's CPU time in clock ticks (100 a
    /// second, as user time); returns the ticks since the container started.
    fn times(&mut self, m: &mut dyn Machine, out: u64) -> Result<i64, i64> {
        const TICK_NS: u64 = 10_000_000;
        let mine = self.process_cpu_ns(m) / TICK_NS;
        let children = self.p.children_cpu_ns / TICK_NS;
        if out != 0 {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&mine.to_le_bytes());
            b[16..24].copy_from_slice(&children.to_le_bytes());
            m.write(out, &b).map_err(|_| EFAULT)?;
        }
        Ok((m.monotonic_ns().saturating_sub(self.boot_ns) / TICK_NS) as i64)
    }

    fn getrandom(&mut self, m: &mut dyn Machine, buf: u64, len: u64) -> Result<i64, i64> {
        let n = (len as usize).min(CHUNK);
        let mut tmp = vec![0u8; n];
        m.random(&mut tmp);
        m.write(buf, &tmp).map_err(|_| EFAULT)?;
        Ok(n as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_finished_without_waiting_ends_the_deadline_of_a_restarted_wait() {
        // A call parked with a timeout keeps its deadline in io_until for its restart; if the
        // restart is served on the fast path, that deadline must not outlive it, or the
        // thread's next wait without a timeout would count as timed out and return nothing.
        let mut k = Kernel::new(0x100_0000, "/bin/app", "/");
        let m = &mut crate::test_machine::TestMachine::accepting();
        k.t.io_until = Some(1);
        let getpid = SyscallArgs {
            nr: 39,
            args: [0; 6],
        };
        assert_eq!(
            k.try_syscall_nowait(m, getpid),
            Some(SyscallOutcome::Return(1))
        );
        assert_eq!(k.t.io_until, None);
    }

    #[test]
    fn the_jump_slots_survive_munmap_and_refuse_fixed_mappings_over_them() {
        let m = &mut crate::test_machine::TestMachine::accepting();
        let mut k = Kernel::new(0x100_0000, "/bin/app", "/");
        k.p.vm.reserve_jump_slots();
        let slots = crate::machine::SYSCALL_SLOTS;
        const MAP_FIXED_ANON: u64 = 0x10 | 0x20 | 0x02;
        let over = k.mmap(
            m,
            slots.start - 0x1000,
            0x4000,
            3,
            MAP_FIXED_ANON,
            u64::MAX,
            0,
        );
        assert_eq!(over, Err(ENOMEM));
        assert_eq!(k.munmap(m, slots.start, 0x10000), Ok(0));
        assert_eq!(
            k.p.vm.backing(slots.start, slots.end),
            Some(Backing::JumpSlots),
            "munmap leaves them"
        );
        assert_eq!(k.mprotect(m, slots.start, 0x1000, 3), Ok(0));
        assert_eq!(
            k.p.vm.backing(slots.start, slots.end),
            Some(Backing::JumpSlots)
        );
    }

    #[test]
    fn unmapped_shared_memory_is_never_handed_out_again() {
        let m = &mut crate::test_machine::TestMachine::accepting();
        let mut k = Kernel::new(0x100_0000, "/bin/app", "/");
        const MAP_SHARED_ANON: u64 = 0x01 | 0x20;
        const MAP_FIXED_ANON: u64 = 0x10 | 0x20 | 0x02;
        let va = k
            .mmap(m, 0, 0x4000, 3, MAP_SHARED_ANON, u64::MAX, 0)
            .unwrap() as u64;
        assert_eq!(k.p.vm.backing(va, va + 0x4000), Some(Backing::SharedAnon));
        // Its present pages cannot be replaced by a fixed mapping (another process's too).
        let over = k.mmap(m, va, 0x1000, 3, MAP_FIXED_ANON, u64::MAX, 0);
        assert_eq!(over, Err(ENOMEM));
        assert_eq!(k.munmap(m, va, 0x4000), Ok(0));
        assert_eq!(k.p.vm.backing(va, va + 0x4000), Some(Backing::SharedGone));
        assert!(
            k.p.vm.mappings().all(|(s, _, _)| s != va),
            "not listed as mapped"
        );
        // Neither reused by a later mmap nor replaced by a fixed one.
        let next = k.mmap(m, 0, 0x4000, 3, 0x02 | 0x20, u64::MAX, 0).unwrap() as u64;
        assert_ne!(next, va);
        let over = k.mmap(m, va, 0x1000, 3, MAP_FIXED_ANON, u64::MAX, 0);
        assert_eq!(over, Err(ENOMEM));
    }

    #[test]
    fn regions_split_and_free_ranges_are_reused_first_fit() {
        let mut a = AddressSpace::default();
        a.insert_backed(0x10000, 0x20000, true, Backing::LibraryCode);
        let cut = a.remove(0x14000, 0x18000);
        assert_eq!(cut, vec![(0x14000, 0x18000, true, Backing::LibraryCode)]);
        let code = Some(&(0x14000, true, Backing::LibraryCode));
        assert_eq!(a.regions.get(&0x10000), code, "pieces keep their backing");
        assert_eq!(
            a.regions.get(&0x18000),
            Some(&(0x20000, true, Backing::LibraryCode))
        );
        assert_eq!(a.backing(0x10000, 0x14000), Some(Backing::LibraryCode));
        assert_eq!(a.backing(0x13ff8, 0x14001), None, "spans a hole");
        a.free(0x14000, 0x18000);
        assert_eq!(a.take_free(0x5000), None, "too small");
        assert_eq!(a.take_free(0x1000), Some(0x14000));
        assert_eq!(a.take_free(0x3000), Some(0x15000));
        assert_eq!(a.take_free(0x1000), None);
        // A fixed mapping over a free range takes it out of the free list.
        a.free(0x30000, 0x40000);
        a.remove(0x38000, 0x39000);
        assert_eq!(a.free, vec![]);
    }
}
