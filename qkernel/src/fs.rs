//! File descriptors and the file syscalls.
//!
//! Regular files and directories come from the container's root through the platform's
//! confined `fs_*` calls; a few devices are served here. Paths from the app are read with a
//! length cap and joined with the working directory; the platform resolves them inside the
//! root (openat2 RESOLVE_IN_ROOT on the host), so no path can name a host file outside it.

use crate::errno::*;
use crate::machine::{HostFile, Machine, RawStat};
use crate::syscalls::Kernel;

pub const PATH_MAX: usize = 4096;
/// Most descriptors a process may hold (Linux's default soft RLIMIT_NOFILE).
pub const MAX_FDS: usize = 1024;
/// Descriptor arguments are C `int`s: only the low 32 bits of the register count.
const AT_FDCWD: i32 = -100;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_EMPTY_PATH: u64 = 0x1000;
const O_ACCMODE: i32 = 3;
const O_CLOEXEC: i32 = 0o2000000;
const O_NONBLOCK: i32 = 0o4000;
const O_APPEND: i32 = 0o2000;
const CHUNK: usize = 64 << 10;

/// A file the kernel makes up when it is opened (/proc): its bytes and the read position,
/// shared by descriptors dup'd from one open, as a file description's.
#[derive(Debug, Clone)]
pub struct Generated {
    data: std::sync::Arc<Vec<u8>>,
    pos: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// A directory: `data` is its `linux_dirent64` records.
    dir: bool,
}

impl PartialEq for Generated {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.pos, &other.pos)
    }
}

impl Eq for Generated {}

impl Generated {
    pub(crate) fn new(data: Vec<u8>) -> Generated {
        Generated {
            data: std::sync::Arc::new(data),
            pos: Default::default(),
            dir: false,
        }
    }

    /// A directory of the given `linux_dirent64` records.
    pub(crate) fn dir(records: Vec<u8>) -> Generated {
        Generated {
            dir: true,
            ..Generated::new(records)
        }
    }

    /// getdents64: the whole records from the position that fit in `buf`.
    fn read_dirents(&self, buf: &mut [u8]) -> Result<usize, i64> {
        use std::sync::atomic::Ordering::SeqCst;
        let at = self.pos.load(SeqCst) as usize;
        let mut end = at;
        while let Some(rec) = self.data.get(end + 16..end + 18) {
            let len = u16::from_le_bytes([rec[0], rec[1]]) as usize;
            if len == 0 || end + len - at > buf.len() {
                break;
            }
            end += len;
        }
        if end == at && at < self.data.len() {
            return Err(EINVAL); // not even one record fits
        }
        buf[..end - at].copy_from_slice(&self.data[at..end]);
        self.pos.store(end as u64, SeqCst);
        Ok(end - at)
    }

    fn read(&self, buf: &mut [u8], offset: Option<u64>) -> usize {
        use std::sync::atomic::Ordering::SeqCst;
        let at = offset.unwrap_or_else(|| self.pos.load(SeqCst)) as usize;
        let rest = self.data.get(at..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        if offset.is_none() {
            self.pos.store((at + n) as u64, SeqCst);
        }
        n
    }
}

/// An operation on an open file of the root.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileOp {
    Truncate(u64),
    Sync { data_only: bool },
}

/// Whether `path` is in /proc, which qkernel makes up (`procfs`).
fn is_proc(path: &[u8]) -> bool {
    path == b"/proc" || path.starts_with(b"/proc/")
}

/// The host terminal a descriptor may be: the console, or a stream from outside.
fn tty_of(kind: &FileKind) -> Option<crate::machine::Tty> {
    use crate::machine::Tty;
    match kind {
        FileKind::Stdin => Some(Tty::Console(0)),
        FileKind::Stdout => Some(Tty::Console(1)),
        FileKind::Stderr => Some(Tty::Console(2)),
        FileKind::Host { file, .. } => Some(Tty::File(*file)),
        _ => None,
    }
}

/// Internal errno: a read waits for input from outside (a console, exec's stdin); the
/// thread is parked and runs the read again. Never reaches the app.
pub const EINPUT: i64 = 516;
/// How often a thread waiting for input from outside looks again: such input has no event
/// that could wake it.
pub const INPUT_POLL_NS: u64 = 10_000_000;

/// What a descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Stdin,
    Stdout,
    Stderr,
    Null,
    Zero,
    Random,
    /// A file of the root, with the path it was opened by (for `*at` calls and /proc).
    Host {
        file: HostFile,
        path: Vec<u8>,
    },
    /// A socket on the container's network stack.
    Socket(crate::machine::SocketId),
    /// An epoll instance (an index into the kernel's epoll sets).
    Epoll(u32),
    /// A /proc file, made up at open.
    Generated(Generated),
    /// The read and the write end of a pipe (an index into the kernel's pipes).
    PipeRead(u32),
    PipeWrite(u32),
    /// An eventfd counter (an index into the kernel's eventfds).
    EventFd(u32),
    /// A timerfd (an index into the kernel's timerfds).
    TimerFd(u32),
    /// A signalfd (an index into the kernel's signalfds).
    SignalFd(u32),
    /// An end of an AF_UNIX socket pair: the pipe it reads and the pipe it writes.
    Unix {
        rx: u32,
        tx: u32,
    },
    /// An AF_UNIX stream socket not connected (yet): new, bound to a name, or listening (an
    /// index into the kernel's named sockets).
    UnixNamed(u32),
}

impl FileKind {
    /// Whether this refers to the open file, socket, pipe end or counter `other` names (an end
    /// of a socket pair holds a read end and a write end of two pipes).
    pub(crate) fn refers_to(&self, other: &FileKind) -> bool {
        match (self, other) {
            (FileKind::Host { file: a, .. }, FileKind::Host { file: b, .. }) => a == b,
            (FileKind::Socket(a), FileKind::Socket(b)) => a == b,
            (FileKind::PipeRead(a), FileKind::PipeRead(b)) => a == b,
            (FileKind::PipeWrite(a), FileKind::PipeWrite(b)) => a == b,
            (FileKind::Unix { rx, .. }, FileKind::PipeRead(b)) => rx == b,
            (FileKind::Unix { tx, .. }, FileKind::PipeWrite(b)) => tx == b,
            (FileKind::Unix { rx: a, .. }, FileKind::Unix { rx: b, .. }) => a == b,
            (FileKind::EventFd(a), FileKind::EventFd(b)) => a == b,
            (FileKind::TimerFd(a), FileKind::TimerFd(b)) => a == b,
            (FileKind::SignalFd(a), FileKind::SignalFd(b)) => a == b,
            (FileKind::UnixNamed(a), FileKind::UnixNamed(b)) => a == b,
            _ => false,
        }
    }
}

/// An open file without its descriptor: what SCM_RIGHTS carries between processes.
#[derive(Debug, Clone)]
pub(crate) struct OpenFile {
    pub(crate) kind: FileKind,
    status_flags: i32,
}

#[derive(Debug, Clone)]
struct Fd {
    kind: FileKind,
    cloexec: bool,
    status_flags: i32,
}

/// The descriptor table of a process.
#[derive(Debug, Clone)]
pub struct FdTable {
    fds: Vec<Option<Fd>>,
    /// New descriptors are numbered below this (the soft RLIMIT_NOFILE).
    limit: usize,
}

impl Default for FdTable {
    fn default() -> Self {
        let std = |kind, flags| {
            Some(Fd {
                kind,
                cloexec: false,
                status_flags: flags,
            })
        };
        FdTable {
            fds: vec![
                std(FileKind::Stdin, 0),
                std(FileKind::Stdout, 1),
                std(FileKind::Stderr, 1),
            ],
            limit: MAX_FDS,
        }
    }
}

impl FdTable {
    /// A table with `stdio` as descriptors 0, 1 and 2.
    pub(crate) fn with_stdio(stdio: [FileKind; 3]) -> FdTable {
        let [input, output, error] = stdio;
        FdTable {
            fds: vec![
                Some(Fd {
                    kind: input,
                    cloexec: false,
                    status_flags: 0,
                }),
                Some(Fd {
                    kind: output,
                    cloexec: false,
                    status_flags: 1,
                }),
                Some(Fd {
                    kind: error,
                    cloexec: false,
                    status_flags: 1,
                }),
            ],
            limit: MAX_FDS,
        }
    }

    /// A table with no descriptor at all (a dead process's).
    pub(crate) fn empty() -> FdTable {
        FdTable {
            fds: Vec::new(),
            limit: MAX_FDS,
        }
    }

    /// The soft RLIMIT_NOFILE: new descriptors are numbered below it.
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    fn get(&self, fd: u64) -> Result<&Fd, i64> {
        self.fds
            .get(fd as u32 as usize)
            .and_then(Option::as_ref)
            .ok_or(EBADF)
    }

    /// Installs at the lowest free number at or above `min`.
    fn install(&mut self, fd: Fd, min: usize) -> Result<usize, i64> {
        let free = (min..self.limit).find(|&i| self.fds.get(i).is_none_or(Option::is_none));
        let i = free.ok_or(EMFILE)?;
        if i >= self.fds.len() {
            self.fds.resize(i + 1, None);
        }
        self.fds[i] = Some(fd);
        Ok(i)
    }

    fn take(&mut self, fd: u64) -> Option<Fd> {
        self.fds.get_mut(fd as u32 as usize).and_then(Option::take)
    }

    /// Forgets a descriptor without closing what it refers to (undoing an install).
    pub(crate) fn take_fd(&mut self, fd: u64) -> Option<FileKind> {
        self.take(fd).map(|f| f.kind)
    }

    /// Whether `fd` is an end of a pipe or an eventfd (its calls may wait for another
    /// process).
    pub fn is_pipe(&self, fd: u64) -> bool {
        self.get(fd).is_ok_and(|f| {
            matches!(
                f.kind,
                FileKind::PipeRead(_)
                    | FileKind::PipeWrite(_)
                    | FileKind::EventFd(_)
                    | FileKind::Unix { .. }
            )
        })
    }

    /// The root's file behind `fd`, and whether it was opened for reading and for writing
    /// (EINVAL for anything but a file of the root).
    pub(crate) fn host_file_access(&self, fd: u64) -> Result<(HostFile, bool, bool), i64> {
        let f = self.get(fd)?;
        let FileKind::Host { file, .. } = f.kind else {
            return Err(EINVAL);
        };
        let mode = f.status_flags & O_ACCMODE;
        Ok((file, mode != 1, mode != 0))
    }

    pub(crate) fn kind(&self, fd: u64) -> Result<&FileKind, i64> {
        self.get(fd).map(|f| &f.kind)
    }

    /// The access mode (O_RDONLY, O_WRONLY or O_RDWR) `fd` was opened with.
    pub(crate) fn access_mode(&self, fd: u64) -> Result<i32, i64> {
        self.get(fd).map(|f| f.status_flags & O_ACCMODE)
    }

    pub(crate) fn nonblocking(&self, fd: u64) -> bool {
        self.get(fd).is_ok_and(|f| f.status_flags & O_NONBLOCK != 0)
    }

    /// Installs a new descriptor for `kind` at the lowest free number.
    pub(crate) fn install_kind(
        &mut self,
        kind: FileKind,
        status_flags: i32,
        cloexec: bool,
    ) -> Result<i64, i64> {
        self.install(
            Fd {
                kind,
                cloexec,
                status_flags,
            },
            0,
        )
        .map(|i| i as i64)
    }

    /// Whether `fd` is a socket (its calls may wait on the network).
    pub fn is_socket(&self, fd: u64) -> bool {
        self.get(fd)
            .is_ok_and(|f| matches!(f.kind, FileKind::Socket(_)))
    }

    /// Whether `fd` reads the console (input that may never come).
    pub fn is_console_input(&self, fd: u64) -> bool {
        self.get(fd).is_ok_and(|f| f.kind == FileKind::Stdin)
    }

    /// Whether a descriptor refers to the open file or socket `kind` names.
    pub(crate) fn refers_to(&self, kind: &FileKind) -> bool {
        self.fds.iter().flatten().any(|f| f.kind.refers_to(kind))
    }

    /// Makes `fd` refer to `kind` (a socket that connects becomes its connected end).
    pub(crate) fn set_kind(&mut self, fd: u64, kind: FileKind) -> Result<(), i64> {
        match self
            .fds
            .get_mut(fd as u32 as usize)
            .and_then(Option::as_mut)
        {
            Some(f) => {
                f.kind = kind;
                Ok(())
            }
            None => Err(EBADF),
        }
    }

    /// The open file behind `fd`, to pass to another process (not an epoll instance: its
    /// interest list is its process's).
    pub(crate) fn open_file(&self, fd: u64) -> Result<OpenFile, i64> {
        let f = self.get(fd)?;
        if matches!(f.kind, FileKind::Epoll(_)) {
            return Err(EINVAL);
        }
        Ok(OpenFile {
            kind: f.kind.clone(),
            status_flags: f.status_flags,
        })
    }

    /// Installs a passed open file at the lowest free number.
    pub(crate) fn install_open_file(&mut self, f: OpenFile, cloexec: bool) -> Result<i64, i64> {
        self.install_kind(f.kind, f.status_flags, cloexec)
    }

    /// The numbers of every open descriptor.
    pub(crate) fn open_fds(&self) -> Vec<u64> {
        (0..self.fds.len() as u64)
            .filter(|&i| self.fds[i as usize].is_some())
            .collect()
    }

    /// The numbers of the descriptors exec closes.
    pub(crate) fn cloexec_fds(&self) -> Vec<u64> {
        (0..self.fds.len() as u64)
            .filter(|&i| self.fds[i as usize].as_ref().is_some_and(|f| f.cloexec))
            .collect()
    }
}

/// Reads a NUL-terminated path from the app, at most PATH_MAX bytes.
fn read_path(m: &dyn Machine, va: u64) -> Result<Vec<u8>, i64> {
    let mut out = Vec::new();
    let mut at = va;
    while out.len() < PATH_MAX {
        // Up to the end of the page, so a string ending before an unmapped page is fine.
        let n = (4096 - (at & 4095)) as usize;
        let mut chunk = vec![0u8; n.min(PATH_MAX - out.len())];
        m.read(at, &mut chunk).map_err(|_| EFAULT)?;
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
        at = at.checked_add(chunk.len() as u64).ok_or(EFAULT)?;
    }
    Err(ENAMETOOLONG)
}

fn join(base: &[u8], rel: &[u8]) -> Vec<u8> {
    if rel.first() == Some(&b'/') {
        return rel.to_vec();
    }
    let mut p = base.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
    p
}

/// Collapses repeated slashes and "." components (not "..": that is the root's business,
/// resolved with symlinks by the platform).
fn tidy(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for part in path.split(|&b| b == b'/') {
        if part.is_empty() || part == b"." {
            continue;
        }
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Converts x86-64 `struct stat` to `struct statx` (256 bytes), basic fields only.
fn statx_from_stat(st: &RawStat) -> [u8; 256] {
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&st[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |o: usize| u32::from_le_bytes([st[o], st[o + 1], st[o + 2], st[o + 3]]);
    let mut x = [0u8; 256];
    let mut put = |o: usize, b: &[u8]| x[o..o + b.len()].copy_from_slice(b);
    const STATX_BASIC_STATS: u32 = 0x7ff;
    put(0, &STATX_BASIC_STATS.to_le_bytes());
    put(4, &(u64_at(56) as u32).to_le_bytes()); // blksize
    put(16, &(u64_at(16) as u32).to_le_bytes()); // nlink
    put(20, &u32_at(28).to_le_bytes()); // uid
    put(24, &u32_at(32).to_le_bytes()); // gid
    put(28, &(u32_at(24) as u16).to_le_bytes()); // mode
    put(32, &u64_at(8).to_le_bytes()); // ino
    put(40, &u64_at(48).to_le_bytes()); // size
    put(48, &u64_at(64).to_le_bytes()); // blocks
                                        // atime, ctime, mtime: {i64 sec, u32 nsec, pad}
    for (dst, src) in [(64, 72), (96, 104), (112, 88)] {
        put(dst, &u64_at(src).to_le_bytes());
        put(dst + 8, &(u64_at(src + 8) as u32).to_le_bytes());
    }
    let split = |dev: u64| -> (u32, u32) {
        (
            (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)) as u32,
            ((dev & 0xff) | ((dev >> 12) & !0xff)) as u32,
        )
    };
    let (rmaj, rmin) = split(u64_at(40));
    let (dmaj, dmin) = split(u64_at(0));
    put(128, &rmaj.to_le_bytes());
    put(132, &rmin.to_le_bytes());
    put(136, &dmaj.to_le_bytes());
    put(140, &dmin.to_le_bytes());
    x
}

fn device(path: &[u8]) -> Option<FileKind> {
    match path {
        b"/dev/null" => Some(FileKind::Null),
        b"/dev/zero" => Some(FileKind::Zero),
        b"/dev/urandom" | b"/dev/random" => Some(FileKind::Random),
        b"/dev/stdin" => Some(FileKind::Stdin),
        b"/dev/stdout" => Some(FileKind::Stdout),
        b"/dev/stderr" => Some(FileKind::Stderr),
        _ => None,
    }
}

impl Kernel {
    /// The absolute path for `path` relative to `dirfd`.
    pub(crate) fn at_path(&self, m: &dyn Machine, dirfd: u64, path: u64) -> Result<Vec<u8>, i64> {
        let rel = read_path(m, path)?;
        if rel.is_empty() {
            return Err(ENOENT);
        }
        let base = if rel.first() == Some(&b'/') || dirfd as i32 == AT_FDCWD {
            self.p.cwd.clone()
        } else {
            match &self.p.fds.get(dirfd)?.kind {
                FileKind::Host { path, .. } => path.clone(),
                _ => return Err(ENOTDIR),
            }
        };
        Ok(tidy(&join(&base, &rel)))
    }

    /// Resolves the /proc links (`self/exe`, `self/fd/N` naming a file of the root) to their
    /// target; other paths pass unchanged.
    fn alias(&self, path: Vec<u8>) -> Vec<u8> {
        match self.proc_readlink(&path) {
            Some(Ok(target)) if target.starts_with(b"/") => target,
            _ => path,
        }
    }

    /// memfd_create(2): an unnamed file in the container's shared memory (an O_TMPFILE of
    /// its /dev/shm tree, so it counts against that tree's size like any shared memory),
    /// named `/memfd:NAME (deleted)` in /proc as on Linux. Sealing (MFD_ALLOW_SEALING) and
    /// huge pages are not offered: EINVAL.
    pub(crate) fn memfd_create(
        &mut self,
        m: &mut dyn Machine,
        name: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        const MFD_CLOEXEC: u64 = 1;
        const MFD_NOEXEC_SEAL: u64 = 8;
        const MFD_EXEC: u64 = 0x10;
        const O_RDWR: i32 = 2;
        const O_TMPFILE: i32 = 0o20200000;
        if flags & !(MFD_CLOEXEC | MFD_NOEXEC_SEAL | MFD_EXEC) != 0 {
            return Err(EINVAL);
        }
        let name = read_path(m, name)?;
        if name.len() > 249 {
            return Err(EINVAL);
        }
        let file = m.fs_open(b"/dev/shm", O_TMPFILE | O_RDWR, 0o600)?;
        let mut path = b"/memfd:".to_vec();
        path.extend_from_slice(&name);
        path.extend_from_slice(b" (deleted)");
        self.p
            .fds
            .install_kind(
                FileKind::Host { file, path },
                O_RDWR,
                flags & MFD_CLOEXEC != 0,
            )
            .inspect_err(|_| m.fs_close(file))
    }

    pub(crate) fn openat(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        flags: u64,
        mode: u64,
    ) -> Result<i64, i64> {
        let flags = flags as i32;
        let path = self.alias(self.at_path(m, dirfd, path)?);
        let kind = match device(&path) {
            Some(k) => k,
            None if is_proc(&path) => self.proc_open(m, &path)?,
            None => FileKind::Host {
                file: m.fs_open(&path, flags & !O_CLOEXEC, mode as u32)?,
                path,
            },
        };
        let fd = Fd {
            kind: kind.clone(),
            cloexec: flags & O_CLOEXEC != 0,
            status_flags: flags & !O_CLOEXEC,
        };
        match self.p.fds.install(fd, 0) {
            Ok(i) => Ok(i as i64),
            Err(e) => {
                if let FileKind::Host { file, .. } = kind {
                    m.fs_close(file);
                }
                Err(e)
            }
        }
    }

    /// close_range(2): every open descriptor from `first` to `last` closed, or (with
    /// CLOSE_RANGE_CLOEXEC) marked close-on-exec. CLOSE_RANGE_UNSHARE changes nothing here:
    /// the table is the process's own.
    pub(crate) fn close_range(
        &mut self,
        m: &mut dyn Machine,
        first: u64,
        last: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        const UNSHARE: u64 = 2;
        const CLOEXEC: u64 = 4;
        let (first, last) = (first as u32, last as u32);
        if flags & !(UNSHARE | CLOEXEC) != 0 || first > last {
            return Err(EINVAL);
        }
        for fd in self.p.fds.open_fds() {
            if !(u64::from(first)..=u64::from(last)).contains(&fd) {
                continue;
            }
            if flags & CLOEXEC != 0 {
                if let Some(Some(f)) = self.p.fds.fds.get_mut(fd as usize) {
                    f.cloexec = true;
                }
            } else {
                self.close(m, fd)?;
            }
        }
        Ok(0)
    }

    pub(crate) fn close(&mut self, m: &mut dyn Machine, fd: u64) -> Result<i64, i64> {
        let f = self.p.fds.take(fd).ok_or(EBADF)?;
        self.release_file(m, f.kind);
        self.forget_in_epolls(fd as i32);
        Ok(0)
    }

    /// What closing the last reference to `kind` frees, unless another descriptor (of this
    /// process, another one, or one in flight) still refers to it.
    pub(crate) fn release_file(&mut self, m: &mut dyn Machine, kind: FileKind) {
        let elsewhere = self.p.fds.refers_to(&kind) || self.held_elsewhere(&kind);
        match kind {
            FileKind::Host { file, .. } => {
                self.locks_on_close(m, file, !elsewhere);
                if !elsewhere {
                    m.fs_close(file);
                }
            }
            FileKind::Socket(s) if !elsewhere => {
                self.inet6.remove(&s);
                self.sock_timeouts.remove(&s);
                m.net_close(s)
            }
            FileKind::Epoll(id)
                if !self
                    .p
                    .fds
                    .fds
                    .iter()
                    .flatten()
                    .any(|f| f.kind == FileKind::Epoll(id)) =>
            {
                self.drop_epoll(id)
            }
            FileKind::PipeRead(id) | FileKind::PipeWrite(id) => {
                self.pipe_end_closed(id);
            }
            FileKind::Unix { rx, tx } => self.unix_end_closed(m, rx, tx),
            FileKind::UnixNamed(id) if !elsewhere => self.unix_named_closed(m, id),
            FileKind::EventFd(id) => self.eventfd_closed(id),
            FileKind::TimerFd(id) => self.timerfd_closed(id),
            FileKind::SignalFd(id) => self.signalfd_closed(id),
            _ => {}
        }
    }

    /// Reads from a descriptor into a host buffer.
    fn read_fd(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        buf: &mut [u8],
        offset: Option<u64>,
    ) -> Result<usize, i64> {
        let f = self.p.fds.get(fd)?;
        if f.status_flags & O_ACCMODE == 1 {
            return Err(EBADF);
        }
        match &f.kind {
            FileKind::Stdin => {
                // Input that may never come is waited for parked, unless nothing else could
                // run meanwhile (then on the host: the fastest wake-up).
                let nonblocking = f.status_flags & O_NONBLOCK != 0;
                if !m.console_readable() && (!self.procs_alone() || self.host_requests) {
                    return Err(self.input_wait(nonblocking));
                }
                m.console_read(buf)
                    .map_err(|e| e.raw_os_error().unwrap_or(5) as i64)
            }
            FileKind::Null | FileKind::Stdout | FileKind::Stderr => Ok(0),
            FileKind::Zero => {
                buf.fill(0);
                Ok(buf.len())
            }
            FileKind::Random => {
                m.random(buf);
                Ok(buf.len())
            }
            FileKind::Host { file, .. } => {
                let (file, nonblocking) = (*file, f.status_flags & O_NONBLOCK != 0);
                if !m.fs_readable(file) {
                    return Err(self.input_wait(nonblocking));
                }
                m.fs_read(file, buf, offset)
            }
            FileKind::Socket(s) => {
                let (s, nonblocking) = (*s, f.status_flags & O_NONBLOCK != 0);
                self.note_socket_wait(s, true, false);
                m.net_recv(s, buf, self.without_waiting(nonblocking))
            }
            FileKind::PipeRead(id) | FileKind::Unix { rx: id, .. } => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                self.pipe_read(id, buf, nonblocking)
            }
            FileKind::EventFd(id) => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                self.eventfd_read(id, buf, nonblocking)
            }
            FileKind::TimerFd(id) => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                self.timerfd_read(m, id, buf, nonblocking)
            }
            FileKind::SignalFd(id) => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                self.signalfd_read(m, id, buf, nonblocking)
            }
            FileKind::Generated(g) if g.dir => Err(EISDIR),
            FileKind::Generated(g) => Ok(g.read(buf, offset)),
            FileKind::UnixNamed(id) => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                let got = self.unix_dgram_recv(id, buf.len(), nonblocking)?;
                buf[..got.data.len()].copy_from_slice(&got.data);
                Ok(got.data.len())
            }
            FileKind::Epoll(_) | FileKind::PipeWrite(_) => Err(EINVAL),
        }
    }

    /// A read of input from outside with nothing there yet: EAGAIN for a non-blocking
    /// descriptor, else [`EINPUT`] (its thread waits parked, looking again every
    /// [`INPUT_POLL_NS`]).
    fn input_wait(&mut self, nonblocking: bool) -> i64 {
        if self.without_waiting(nonblocking) {
            EAGAIN
        } else {
            EINPUT
        }
    }

    /// Writes a host buffer to a descriptor.
    fn write_fd(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        buf: &[u8],
        offset: Option<u64>,
    ) -> Result<usize, i64> {
        let f = self.p.fds.get(fd)?;
        if f.status_flags & O_ACCMODE == 0 && !matches!(f.kind, FileKind::Stdout | FileKind::Stderr)
        {
            return Err(EBADF);
        }
        match &f.kind {
            FileKind::Stdout => m
                .console_write(1, buf)
                .map_err(|e| e.raw_os_error().unwrap_or(5) as i64),
            FileKind::Stderr => m
                .console_write(2, buf)
                .map_err(|e| e.raw_os_error().unwrap_or(5) as i64),
            FileKind::Stdin => Err(EBADF),
            FileKind::Null | FileKind::Zero | FileKind::Random => Ok(buf.len()),
            FileKind::Host { file, .. } => m.fs_write(*file, buf, offset),
            FileKind::Socket(s) => {
                let (s, nonblocking) = (*s, f.status_flags & O_NONBLOCK != 0);
                self.note_socket_wait(s, false, true);
                m.net_send(s, buf, self.without_waiting(nonblocking))
            }
            FileKind::PipeWrite(id) | FileKind::Unix { tx: id, .. } => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                self.pipe_write(id, buf, nonblocking)?
                    .ok_or(crate::pipe::ESIGPIPE)
            }
            FileKind::EventFd(id) => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                self.eventfd_write(id, buf, nonblocking)
            }
            FileKind::Epoll(_)
            | FileKind::PipeRead(_)
            | FileKind::TimerFd(_)
            | FileKind::SignalFd(_) => Err(EINVAL),
            FileKind::Generated(_) => Err(EACCES),
            FileKind::UnixNamed(id) => {
                let (id, nonblocking) = (*id, f.status_flags & O_NONBLOCK != 0);
                self.unix_dgram_send(id, buf, None, nonblocking)
            }
        }
    }

    /// read/pread64: chunked through a host buffer into the app's memory.
    pub(crate) fn read(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        buf: u64,
        len: u64,
        offset: Option<u64>,
    ) -> Result<i64, i64> {
        if offset.is_none() && self.p.fds.is_socket(fd) {
            return self.socket_io(m, fd, &[(buf, len)], 0, false);
        }
        let n = (len as usize).min(CHUNK);
        let mut tmp = self.take_scratch(n);
        let got = self.read_fd(m, fd, &mut tmp[..n], offset);
        let copied = got.and_then(|got| match m.write(buf, &tmp[..got]) {
            Ok(()) => Ok(got as i64),
            Err(_) => {
                // What a pipe gave goes back: a bad buffer loses nothing (as on Linux).
                if let Ok(FileKind::PipeRead(id) | FileKind::Unix { rx: id, .. }) =
                    self.p.fds.kind(fd)
                {
                    let id = *id;
                    self.pipe_unread(id, &tmp[..got]);
                }
                Err(EFAULT)
            }
        });
        self.put_scratch(tmp);
        copied
    }

    /// A buffer of at least `n` bytes for one call's data, kept between calls: a read or
    /// write would otherwise allocate and zero up to a MiB each time. Only the part a call
    /// fills is ever copied out.
    pub(crate) fn take_scratch(&mut self, n: usize) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.scratch);
        if b.len() < n {
            b.resize(n, 0);
        }
        b
    }

    pub(crate) fn put_scratch(&mut self, b: Vec<u8>) {
        self.scratch = b;
    }

    /// write/pwrite64: chunked from the app's memory.
    pub(crate) fn write(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        buf: u64,
        len: u64,
        offset: Option<u64>,
    ) -> Result<i64, i64> {
        self.p.fds.get(fd)?;
        if offset.is_none() && self.p.fds.is_socket(fd) {
            return self.socket_io(m, fd, &[(buf, len)], 0, true);
        }
        if let Some((_, tx)) = self.unix_of(fd) {
            if self.is_message_pipe(tx) {
                // One datagram, whole (an empty one too), never split into chunks.
                let mut msg = vec![0u8; usize::try_from(len).map_err(|_| EINVAL)?.min(1 << 20)];
                if (msg.len() as u64) < len {
                    return Err(90); // EMSGSIZE: larger than any datagram
                }
                m.read(buf, &mut msg).map_err(|_| EFAULT)?;
                return self.write_fd(m, fd, &msg, None).map(|n| n as i64);
            }
        }
        let mut tmp = self.take_scratch((len as usize).min(CHUNK));
        let written = self.write_chunks(m, fd, (buf, len), offset, &mut tmp);
        self.put_scratch(tmp);
        written
    }

    /// [`Kernel::write`]'s loop: the app's bytes through `tmp`, a chunk at a time.
    fn write_chunks(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        (buf, len): (u64, u64),
        offset: Option<u64>,
        tmp: &mut [u8],
    ) -> Result<i64, i64> {
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(CHUNK);
            m.read(buf.wrapping_add(done), &mut tmp[..n])
                .map_err(|_| EFAULT)?;
            let at = offset.map(|o| o + done);
            let w = match self.write_fd(m, fd, &tmp[..n], at) {
                Ok(w) => w,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            };
            done += w as u64;
            if w < n {
                break;
            }
        }
        Ok(done as i64)
    }

    /// readv/writev: each iovec in turn, stopping at the first short transfer.
    pub(crate) fn vectored(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        iov: u64,
        count: u64,
        write: bool,
    ) -> Result<i64, i64> {
        self.vectored_at(m, fd, (iov, count), write, None)
    }

    /// preadv/pwritev (`flags` 0) and preadv2/pwritev2: [`Kernel::vectored`] at `offset`
    /// (preadv2's -1: at the file position, as readv). RWF_HIPRI, RWF_DSYNC, RWF_SYNC and
    /// RWF_NOWAIT change nothing here (file I/O never waits on a queue); RWF_APPEND and unknown
    /// flags are EOPNOTSUPP.
    pub(crate) fn vectored_positioned(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        iov: (u64, u64),
        offset: u64,
        flags: u64,
        write: bool,
    ) -> Result<i64, i64> {
        const HARMLESS: u64 = 0x1 | 0x2 | 0x4 | 0x8; // HIPRI, DSYNC, SYNC, NOWAIT
        if flags & !HARMLESS != 0 {
            return Err(EOPNOTSUPP);
        }
        match offset as i64 {
            -1 => self.vectored_at(m, fd, iov, write, None),
            o if o < 0 => Err(EINVAL),
            o => self.vectored_at(m, fd, iov, write, Some(o as u64)),
        }
    }

    fn vectored_at(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        (iov, count): (u64, u64),
        write: bool,
        offset: Option<u64>,
    ) -> Result<i64, i64> {
        if count > 1024 {
            return Err(EINVAL);
        }
        let iov = crate::net::read_iovecs(m, iov, count)?;
        let seekless =
            self.p.fds.is_socket(fd) || self.p.fds.is_pipe(fd) || self.unix_of(fd).is_some();
        if offset.is_some() && (seekless || self.unix_dgram_of(fd).is_some()) {
            return Err(ESPIPE);
        }
        if self.p.fds.is_socket(fd) || self.unix_dgram_of(fd).is_some() {
            return self.socket_vectored(m, fd, iov, write);
        }
        if let Some((rx, tx)) = self.unix_of(fd) {
            if self.is_message_pipe(if write { tx } else { rx }) {
                return self.message_vectored(m, fd, &iov, write);
            }
        }
        let mut total = 0i64;
        for (base, len) in iov {
            let at = offset.map(|o| o.saturating_add(total as u64));
            let r = if write {
                self.write(m, fd, base, len, at)
            } else {
                self.read(m, fd, base, len, at)
            };
            match r {
                Ok(n) => {
                    total += n;
                    if (n as u64) < len {
                        break;
                    }
                }
                Err(e) if total == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(total)
    }

    /// readv/writev on a datagram socket pair: the iovecs are one message.
    fn message_vectored(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        iov: &[(u64, u64)],
        write: bool,
    ) -> Result<i64, i64> {
        const MAX: u64 = 1 << 20; // above any datagram (EMSGSIZE beyond)
        let total = iov
            .iter()
            .try_fold(0u64, |t, (_, len)| {
                t.checked_add(*len).filter(|t| *t <= MAX)
            })
            .ok_or(90)?; // EMSGSIZE
        let mut data = vec![0u8; total as usize];
        if write {
            let mut at = 0usize;
            for (base, len) in iov {
                let len = *len as usize;
                m.read(*base, &mut data[at..at + len]).map_err(|_| EFAULT)?;
                at += len;
            }
            return self.write_fd(m, fd, &data, None).map(|n| n as i64);
        }
        let got = self.read_fd(m, fd, &mut data, None)?;
        let mut at = 0usize;
        for (base, len) in iov {
            let n = (*len as usize).min(got - at);
            m.write(*base, &data[at..at + n]).map_err(|_| EFAULT)?;
            at += n;
        }
        Ok(got as i64)
    }

    pub(crate) fn lseek(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        off: u64,
        whence: u64,
    ) -> Result<i64, i64> {
        match &self.p.fds.get(fd)?.kind {
            FileKind::Host { file, .. } => m
                .fs_seek(*file, off as i64, whence as i32)
                .map(|p| p as i64),
            FileKind::Null | FileKind::Zero | FileKind::Random => Ok(0),
            _ => Err(ESPIPE),
        }
    }

    fn put_stat(&self, m: &mut dyn Machine, out: u64, st: &[u8]) -> Result<i64, i64> {
        m.write(out, st).map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// A stat for the descriptors served here: a character device, like Linux's.
    fn char_device_stat(rdev: u64) -> [u8; 144] {
        let mut st = [0u8; 144];
        st[24..28].copy_from_slice(&0o020666u32.to_le_bytes()); // st_mode
        st[16..24].copy_from_slice(&1u64.to_le_bytes()); // st_nlink
        st[40..48].copy_from_slice(&rdev.to_le_bytes()); // st_rdev
        st[56..64].copy_from_slice(&4096u64.to_le_bytes()); // st_blksize
        st
    }

    /// The stat of a descriptor served here that is not a device: `st_mode` says what it is.
    pub(crate) fn stat_with_mode(mode: u32) -> [u8; 144] {
        let mut st = Self::char_device_stat(0);
        st[24..28].copy_from_slice(&mode.to_le_bytes());
        st
    }

    pub(crate) fn stat_fd(&self, m: &mut dyn Machine, fd: u64) -> Result<[u8; 144], i64> {
        match &self.p.fds.get(fd)?.kind {
            FileKind::Host { file, .. } => m.fs_stat(*file),
            FileKind::Null => Ok(Self::char_device_stat((1 << 8) | 3)),
            FileKind::Zero => Ok(Self::char_device_stat((1 << 8) | 5)),
            FileKind::Random => Ok(Self::char_device_stat((1 << 8) | 9)),
            FileKind::Stdin | FileKind::Stdout | FileKind::Stderr => Ok(Self::char_device_stat(0)),
            FileKind::Socket(_) => Ok(Self::stat_with_mode(0o140777)), // S_IFSOCK
            FileKind::Epoll(_)
            | FileKind::EventFd(_)
            | FileKind::TimerFd(_)
            | FileKind::SignalFd(_) => {
                Ok(Self::stat_with_mode(0o000600)) // anonymous inode
            }
            FileKind::PipeRead(_) | FileKind::PipeWrite(_) => Ok(Self::stat_with_mode(0o010600)), // S_IFIFO
            FileKind::Unix { .. } | FileKind::UnixNamed(_) => Ok(Self::stat_with_mode(0o140777)), // S_IFSOCK
            FileKind::Generated(g) if g.dir => Ok(Self::stat_with_mode(0o040555)), // S_IFDIR
            FileKind::Generated(_) => Ok(Self::stat_with_mode(0o100444)),          // a regular file
        }
    }

    /// statfs(2) and fstatfs(2): the root's file system as the host reports it (devices and
    /// sockets report it too).
    pub(crate) fn statfs(
        &mut self,
        m: &mut dyn Machine,
        path: Option<u64>,
        fd: u64,
        out: u64,
    ) -> Result<i64, i64> {
        let at = match path {
            Some(va) => self.at_path(m, AT_FDCWD as u64, va)?,
            None => match &self.p.fds.get(fd)?.kind {
                FileKind::Host { path, .. } => path.clone(),
                _ => b"/".to_vec(),
            },
        };
        let st = m.fs_statfs(&at)?;
        m.write(out, &st).map_err(|_| EFAULT)?;
        Ok(0)
    }

    /// unlinkat(2) (rmdir with AT_REMOVEDIR).
    pub(crate) fn unlinkat(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        const AT_REMOVEDIR: u64 = 0x200;
        if flags & !AT_REMOVEDIR != 0 {
            return Err(EINVAL);
        }
        let p = self.alias(self.at_path(m, dirfd, path)?);
        if device(&p).is_some() {
            return Err(EPERM);
        }
        m.fs_unlink(&p, flags & AT_REMOVEDIR != 0).map(|()| 0)
    }

    /// mkdirat(2).
    pub(crate) fn mkdirat(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        mode: u64,
    ) -> Result<i64, i64> {
        let p = self.alias(self.at_path(m, dirfd, path)?);
        m.fs_mkdir(&p, (mode as u32) & !0o022).map(|()| 0)
    }

    /// renameat2(2).
    pub(crate) fn renameat(
        &mut self,
        m: &mut dyn Machine,
        (olddir, old): (u64, u64),
        (newdir, new): (u64, u64),
        flags: u64,
    ) -> Result<i64, i64> {
        const RENAME_NOREPLACE: u64 = 1;
        const RENAME_EXCHANGE: u64 = 2;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return Err(EINVAL);
        }
        let from = self.alias(self.at_path(m, olddir, old)?);
        let to = self.alias(self.at_path(m, newdir, new)?);
        m.fs_rename(&from, &to, flags as u32).map(|()| 0)
    }

    /// linkat(2) (and link(2)): AT_SYMLINK_FOLLOW resolves a final symlink here, inside the
    /// root, before the platform links what it names.
    pub(crate) fn linkat(
        &mut self,
        m: &mut dyn Machine,
        (olddir, old): (u64, u64),
        (newdir, new): (u64, u64),
        flags: u64,
    ) -> Result<i64, i64> {
        const AT_SYMLINK_FOLLOW: u64 = 0x400;
        if flags & !AT_SYMLINK_FOLLOW != 0 {
            return Err(EINVAL); // AT_EMPTY_PATH too: linking an open file is not offered
        }
        let mut from = self.alias(self.at_path(m, olddir, old)?);
        let to = self.alias(self.at_path(m, newdir, new)?);
        if flags & AT_SYMLINK_FOLLOW != 0 {
            from = self.follow_symlinks(m, from)?;
        }
        m.fs_link(&from, &to).map(|()| 0)
    }

    /// `path` with its final symlinks followed (inside the root: the platform resolves every
    /// path there); ELOOP past 40.
    fn follow_symlinks(&self, m: &mut dyn Machine, mut path: Vec<u8>) -> Result<Vec<u8>, i64> {
        const S_IFMT: u32 = 0o170000;
        const S_IFLNK: u32 = 0o120000;
        for _ in 0..40 {
            let st = m.fs_stat_path(&path, false)?;
            let mode = u32::from_le_bytes(st[24..28].try_into().unwrap_or_default());
            if mode & S_IFMT != S_IFLNK {
                return Ok(path);
            }
            let target = m.fs_readlink(&path)?;
            path = if target.starts_with(b"/") {
                target
            } else {
                let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
                let mut p = path[..cut].to_vec();
                p.push(b'/');
                p.extend_from_slice(&target);
                p
            };
        }
        Err(40) // ELOOP
    }

    /// symlinkat(2) (and symlink(2)): the target is kept as the app wrote it.
    pub(crate) fn symlinkat(
        &mut self,
        m: &mut dyn Machine,
        target: u64,
        (dir, path): (u64, u64),
    ) -> Result<i64, i64> {
        let target = read_path(m, target)?;
        if target.is_empty() {
            return Err(ENOENT);
        }
        let path = self.alias(self.at_path(m, dir, path)?);
        m.fs_symlink(&target, &path).map(|()| 0)
    }

    /// sendfile(2): up to `count` bytes of the file `in_fd` (at `*offp`, which is updated,
    /// else at its position, which moves) to `out_fd` (a socket, pipe or file). nginx and
    /// most static file servers send their files this way.
    pub(crate) fn sendfile(
        &mut self,
        m: &mut dyn Machine,
        out_fd: u64,
        in_fd: u64,
        offp: u64,
        count: u64,
    ) -> Result<i64, i64> {
        let input = self.p.fds.get(in_fd)?;
        // Only what has a position (a socket or pipe has none; Linux says EINVAL).
        if !matches!(
            input.kind,
            FileKind::Host { .. } | FileKind::Generated(_) | FileKind::Zero
        ) {
            return Err(EINVAL);
        }
        let output = self.p.fds.get(out_fd)?;
        if output.status_flags & O_APPEND != 0 && matches!(output.kind, FileKind::Host { .. }) {
            return Err(EINVAL);
        }
        let start = self.offset_or_position(m, offp, in_fd)?;
        let moved = self.copy_range(m, (in_fd, start, offp == 0), (out_fd, None), count);
        if let (Ok(n), true) = (&moved, offp != 0) {
            m.write(offp, &(start + n).to_le_bytes())
                .map_err(|_| EFAULT)?;
        }
        moved.map(|n| n as i64)
    }

    /// copy_file_range(2): up to `len` bytes between two files of the root, each at its
    /// offset (updated) or its position (moved).
    pub(crate) fn copy_file_range(
        &mut self,
        m: &mut dyn Machine,
        (in_fd, in_offp): (u64, u64),
        (out_fd, out_offp): (u64, u64),
        len: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        let (input, output) = (self.p.fds.get(in_fd)?, self.p.fds.get(out_fd)?);
        if input.status_flags & O_ACCMODE == 1
            || output.status_flags & O_ACCMODE == 0
            || output.status_flags & O_APPEND != 0
        {
            return Err(EBADF);
        }
        let (FileKind::Host { file: fin, .. }, FileKind::Host { file: fout, .. }) =
            (&input.kind, &output.kind)
        else {
            return Err(EINVAL);
        };
        let (fin, fout) = (*fin, *fout);
        if flags != 0 {
            return Err(EINVAL);
        }
        let from = self.offset_or_position(m, in_offp, in_fd)?;
        let to = self.offset_or_position(m, out_offp, out_fd)?;
        // Within one file the ranges may not overlap (Linux: EINVAL).
        let (a, b) = (m.fs_stat(fin)?, m.fs_stat(fout)?);
        let same = a[..16] == b[..16]; // st_dev, st_ino
        if same && from < to.saturating_add(len) && to < from.saturating_add(len) {
            return Err(EINVAL);
        }
        let moved = self.copy_range(
            m,
            (in_fd, from, in_offp == 0),
            (out_fd, (out_offp != 0).then_some(to)),
            len,
        )?;
        for (p, base) in [(in_offp, from), (out_offp, to)] {
            if p != 0 {
                m.write(p, &(base + moved).to_le_bytes())
                    .map_err(|_| EFAULT)?;
            }
        }
        Ok(moved as i64)
    }

    /// The `loff_t` the app passes at `p`, or (`p` null) the file position of `fd`.
    fn offset_or_position(&mut self, m: &mut dyn Machine, p: u64, fd: u64) -> Result<u64, i64> {
        match p {
            0 => self.lseek(m, fd, 0, 1).map(|o| o as u64), // SEEK_CUR
            p => read_offset(m, p),
        }
    }

    /// The loop of sendfile and copy_file_range: up to `count` bytes from `input` at `start`
    /// (`moves`: its file position, which then moves by what was moved) to `output` (at its
    /// offset, else as a write), a chunk at a time, stopping at the first short write. An
    /// error is returned only if nothing moved (a socket or pipe that would block, which
    /// waits as a write does).
    fn copy_range(
        &mut self,
        m: &mut dyn Machine,
        (in_fd, start, moves): (u64, u64, bool),
        (out_fd, out_at): (u64, Option<u64>),
        count: u64,
    ) -> Result<u64, i64> {
        const MAX_RW_COUNT: u64 = 0x7fff_f000;
        let count = count.min(MAX_RW_COUNT);
        let socket_out = self.p.fds.is_socket(out_fd);
        let mut tmp = self.take_scratch(CHUNK);
        let mut done = 0u64;
        let mut failed = None;
        while done < count {
            let n = ((count - done) as usize).min(CHUNK);
            let got = match self.read_fd(m, in_fd, &mut tmp[..n], Some(start + done)) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            match self.write_fd(m, out_fd, &tmp[..got], out_at.map(|o| o + done)) {
                Ok(w) => {
                    done += w as u64;
                    if w < got {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.put_scratch(tmp);
        if moves && done > 0 {
            self.lseek(m, in_fd, start + done, 0)?; // SEEK_SET
        }
        match failed {
            Some(EPIPE) if done == 0 && socket_out => Err(self.broken_pipe()),
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// fallocate(2) on a file of the root: space allocated, a hole punched, a range zeroed.
    /// Collapsing or inserting a range would shift data under the app's shared mappings:
    /// EOPNOTSUPP, as on file systems that cannot.
    pub(crate) fn fallocate(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        mode: u64,
        offset: u64,
        len: u64,
    ) -> Result<i64, i64> {
        const KEEP_SIZE: u64 = 0x1;
        const ZERO_RANGE: u64 = 0x10;
        let f = self.p.fds.get(fd)?;
        if f.status_flags & O_ACCMODE == 0 {
            return Err(EBADF);
        }
        let file = match &f.kind {
            FileKind::Host { file, .. } => *file,
            FileKind::PipeRead(_) | FileKind::PipeWrite(_) | FileKind::Unix { .. } => {
                return Err(ESPIPE)
            }
            _ => return Err(ENODEV),
        };
        if (offset as i64) < 0 || (len as i64) <= 0 || offset.checked_add(len).is_none() {
            return Err(EINVAL);
        }
        match mode {
            0 | KEEP_SIZE | ZERO_RANGE | 0x11 => {}
            0x3 => {} // PUNCH_HOLE | KEEP_SIZE (a hole never changes the size)
            _ => return Err(EOPNOTSUPP), // PUNCH_HOLE alone too, as Linux's
        }
        m.fs_allocate(file, mode as i32, offset, len).map(|()| 0)
    }

    /// ftruncate(2), fsync(2) and fdatasync(2) on a descriptor: files of the root only.
    pub(crate) fn file_op(&mut self, m: &mut dyn Machine, fd: u64, op: FileOp) -> Result<i64, i64> {
        let FileKind::Host { file, .. } = self.p.fds.kind(fd)? else {
            return Err(EINVAL);
        };
        let file = *file;
        match op {
            FileOp::Truncate(len) => {
                if (len as i64) < 0 {
                    return Err(EINVAL);
                }
                m.fs_truncate(file, len)
            }
            FileOp::Sync { data_only } => m.fs_sync(file, data_only),
        }
        .map(|()| 0)
    }

    /// chown/lchown/fchownat, chmod/fchmodat, utimensat on a path (`path` set) or on the
    /// descriptor `fd` (fchown, fchmod, futimens, or AT_EMPTY_PATH).
    pub(crate) fn set_attr(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: Option<u64>,
        flags: u64,
        attr: crate::machine::FileAttr,
    ) -> Result<i64, i64> {
        let on_fd = match path {
            None => true,
            Some(va) => flags & AT_EMPTY_PATH != 0 && read_path(m, va)?.is_empty(),
        };
        if on_fd {
            return match self.p.fds.kind(dirfd)? {
                FileKind::Host { file, .. } => {
                    let file = *file;
                    m.fs_set_attr(None, Some(file), true, attr).map(|()| 0)
                }
                // Devices, sockets and pipes: accepted and not kept.
                _ => Ok(0),
            };
        }
        let p = self.alias(self.at_path(m, dirfd, path.unwrap_or(0))?);
        if device(&p).is_some() {
            return Ok(0);
        }
        let follow = flags & AT_SYMLINK_NOFOLLOW == 0;
        m.fs_set_attr(Some(&p), None, follow, attr).map(|()| 0)
    }

    /// Extended attributes: none are kept (getxattr finds none, listxattr lists none), which
    /// is what ls and cp ask about.
    pub(crate) fn xattr(
        &mut self,
        m: &mut dyn Machine,
        list: bool,
        path: Option<u64>,
    ) -> Result<i64, i64> {
        if let Some(va) = path {
            let p = self.at_path(m, AT_FDCWD as u64, va)?;
            m.fs_stat_path(&p, true)?;
        }
        if list {
            Ok(0)
        } else {
            Err(ENODATA)
        }
    }

    pub(crate) fn fstat(&mut self, m: &mut dyn Machine, fd: u64, out: u64) -> Result<i64, i64> {
        let st = self.stat_fd(m, fd)?;
        self.put_stat(m, out, &st)
    }

    /// The stat of `path` relative to `dirfd` (or of `dirfd` itself with AT_EMPTY_PATH).
    fn stat_at(
        &self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        flags: u64,
    ) -> Result<RawStat, i64> {
        if flags & AT_EMPTY_PATH != 0 && read_path(m, path)?.is_empty() {
            return self.stat_fd(m, dirfd);
        }
        let follow = flags & AT_SYMLINK_NOFOLLOW == 0;
        let path = self.at_path(m, dirfd, path)?;
        if is_proc(&path) {
            if let Some(st) = self.proc_stat(m, &path, follow) {
                return st;
            }
        }
        let path = self.alias(path);
        Ok(match device(&path) {
            Some(FileKind::Null) => Self::char_device_stat((1 << 8) | 3),
            Some(_) => Self::char_device_stat(0),
            None => m.fs_stat_path(&path, follow)?,
        })
    }

    pub(crate) fn fstatat(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        out: u64,
        flags: u64,
    ) -> Result<i64, i64> {
        let st = self.stat_at(m, dirfd, path, flags)?;
        self.put_stat(m, out, &st)
    }

    /// statx(2), filled from the same stat (the basic fields; no birth time).
    pub(crate) fn statx(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        flags: u64,
        out: u64,
    ) -> Result<i64, i64> {
        let st = self.stat_at(m, dirfd, path, flags)?;
        m.write(out, &statx_from_stat(&st)).map_err(|_| EFAULT)?;
        Ok(0)
    }

    pub(crate) fn getdents64(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        buf: u64,
        len: u64,
    ) -> Result<i64, i64> {
        let mut tmp = vec![0u8; (len as usize).min(CHUNK)];
        let n = match &self.p.fds.get(fd)?.kind {
            FileKind::Host { file, .. } => m.fs_getdents(*file, &mut tmp)?,
            FileKind::Generated(g) if g.dir => g.read_dirents(&mut tmp)?,
            _ => return Err(ENOTDIR),
        };
        m.write(buf, &tmp[..n]).map_err(|_| EFAULT)?;
        Ok(n as i64)
    }

    pub(crate) fn readlinkat(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        buf: u64,
        len: u64,
    ) -> Result<i64, i64> {
        let path = self.at_path(m, dirfd, path)?;
        let target = match self.proc_readlink(&path) {
            Some(target) => target?,
            None => m.fs_readlink(&path)?,
        };
        let n = target.len().min(len as usize);
        m.write(buf, &target[..n]).map_err(|_| EFAULT)?;
        Ok(n as i64)
    }

    pub(crate) fn faccessat(
        &mut self,
        m: &mut dyn Machine,
        dirfd: u64,
        path: u64,
        mode: u64,
    ) -> Result<i64, i64> {
        const X_OK: u64 = 1;
        let path = self.alias(self.at_path(m, dirfd, path)?);
        if device(&path).is_some() {
            return Ok(0);
        }
        let st = m.fs_stat_path(&path, true)?;
        let st_mode = u32::from_le_bytes([st[24], st[25], st[26], st[27]]);
        // The app runs as root in its container: only execute needs an x bit (or a directory).
        if mode & X_OK != 0 && st_mode & 0o111 == 0 && st_mode & 0o170000 != 0o040000 {
            return Err(EACCES);
        }
        Ok(0)
    }

    pub(crate) fn getcwd(&mut self, m: &mut dyn Machine, buf: u64, size: u64) -> Result<i64, i64> {
        let mut cwd = self.p.cwd.clone();
        cwd.push(0);
        if (size as usize) < cwd.len() {
            return Err(ERANGE);
        }
        m.write(buf, &cwd).map_err(|_| EFAULT)?;
        Ok(cwd.len() as i64)
    }

    pub(crate) fn chdir(&mut self, m: &mut dyn Machine, path: u64) -> Result<i64, i64> {
        let path = self.at_path(m, AT_FDCWD as i64 as u64, path)?;
        let st = m.fs_stat_path(&path, true)?;
        let st_mode = u32::from_le_bytes([st[24], st[25], st[26], st[27]]);
        if st_mode & 0o170000 != 0o040000 {
            return Err(ENOTDIR);
        }
        self.p.cwd = path;
        Ok(0)
    }

    pub(crate) fn fchdir(&mut self, fd: u64) -> Result<i64, i64> {
        match &self.p.fds.get(fd)?.kind {
            FileKind::Host { path, .. } => {
                self.p.cwd = path.clone();
                Ok(0)
            }
            _ => Err(ENOTDIR),
        }
    }

    pub(crate) fn dup(
        &mut self,
        old: u64,
        min: usize,
        new: Option<u64>,
        cloexec: bool,
    ) -> Result<i64, i64> {
        let mut f = self.p.fds.get(old)?.clone();
        f.cloexec = cloexec;
        match new {
            Some(n) if n as usize >= self.p.fds.limit() => Err(EBADF),
            Some(n) => {
                if n == old {
                    return Ok(n as i64);
                }
                // dup2 closes the target silently; a host file it held stays open if shared.
                let _ = self.p.fds.take(n);
                if self.p.fds.fds.len() <= n as usize {
                    self.p.fds.fds.resize(n as usize + 1, None);
                }
                self.p.fds.fds[n as usize] = Some(f);
                Ok(n as i64)
            }
            None => self.p.fds.install(f, min).map(|i| i as i64),
        }
    }

    pub(crate) fn fcntl(&mut self, fd: u64, cmd: u64, arg: u64) -> Result<i64, i64> {
        const F_DUPFD: u64 = 0;
        const F_GETFD: u64 = 1;
        const F_SETFD: u64 = 2;
        const F_GETFL: u64 = 3;
        const F_SETFL: u64 = 4;
        const F_DUPFD_CLOEXEC: u64 = 1030;
        const F_SETOWN: u64 = 8;
        const F_GETOWN: u64 = 9;
        const F_ADD_SEALS: u64 = 1033;
        const F_GET_SEALS: u64 = 1034;
        const F_SEAL_SEAL: i64 = 1;
        match cmd {
            // A memfd takes no seals (it is made without MFD_ALLOW_SEALING): F_SEAL_SEAL.
            F_GET_SEALS | F_ADD_SEALS => match self.p.fds.kind(fd)? {
                FileKind::Host { path, .. } if path.starts_with(b"/memfd:") => {
                    if cmd == F_GET_SEALS {
                        Ok(F_SEAL_SEAL)
                    } else {
                        Err(EPERM)
                    }
                }
                _ => Err(EINVAL),
            },
            // SIGIO is never sent (see ioctl FIOASYNC): the owner is accepted and reads 0.
            F_SETOWN | F_GETOWN => self.p.fds.get(fd).map(|_| 0),
            // At or past RLIMIT_NOFILE no descriptor can be had: EINVAL, as on Linux.
            F_DUPFD | F_DUPFD_CLOEXEC if arg >= self.p.fds.limit() as u64 => {
                self.p.fds.get(fd).and(Err(EINVAL))
            }
            F_DUPFD => self.dup(fd, arg as usize, None, false),
            F_DUPFD_CLOEXEC => self.dup(fd, arg as usize, None, true),
            F_GETFD => Ok(self.p.fds.get(fd)?.cloexec as i64),
            F_SETFD => {
                self.p.fds.get(fd)?;
                if let Some(Some(f)) = self.p.fds.fds.get_mut(fd as usize) {
                    f.cloexec = arg & 1 != 0;
                }
                Ok(0)
            }
            F_GETFL => Ok(self.p.fds.get(fd)?.status_flags as i64),
            F_SETFL => {
                self.p.fds.get(fd)?;
                if let Some(Some(f)) = self.p.fds.fds.get_mut(fd as u32 as usize) {
                    // Only O_NONBLOCK (and O_APPEND) change after open.
                    let changeable = O_NONBLOCK | O_APPEND;
                    f.status_flags = (f.status_flags & !changeable) | (arg as i32 & changeable);
                }
                Ok(0)
            }
            _ => Err(EINVAL),
        }
    }

    /// The readiness of `(fd, events)` pairs in poll(2) bits. Files and devices never block,
    /// so each is ready for what it asks; console input is ready when the host's stdin is;
    /// sockets report qnet's readiness. Waits (up to `timeout_ms`, negative for ever) only
    /// when nothing is ready. A negative fd is skipped (0); a bad one is POLLNVAL.
    pub(crate) fn readiness(
        &mut self,
        m: &mut dyn Machine,
        items: &[(i32, u16)],
        timeout_ms: i64,
    ) -> Result<Vec<u16>, i64> {
        // The host's stdin cannot join qnet's wait: with console input in the set, wait in
        // slices this long and look at it again between them.
        const CONSOLE_SLICE_MS: i64 = 20;
        let requested_timeout = timeout_ms;
        let timeout_ms = self.poll_timeout(timeout_ms);
        // A timeout of years (ppoll's timespec can say so) saturates rather than wraps.
        let deadline = (timeout_ms >= 0).then(|| {
            m.monotonic_ns()
                .saturating_add((timeout_ms as u64).saturating_mul(1_000_000))
        });
        let watches_console = items
            .iter()
            .any(|&(fd, ev)| fd >= 0 && ev & 0x1 != 0 && self.p.fds.is_console_input(fd as u64));
        // Signalfds: a post of their signals wakes this thread parked (below); a wait in
        // place looks again at every slice.
        let signals = self.signalfd_masks(items.iter().map(|(fd, _)| *fd));
        self.t.sigwait = 0;
        loop {
            let now = m.monotonic_ns();
            // Rounded up: a wait never ends before its timeout (5 ms asked gave 4.2 ms).
            let ms_to = |d: u64| d.saturating_sub(now).div_ceil(1_000_000) as i64;
            let left_ms = deadline.map_or(-1, ms_to);
            // A timerfd among the items becomes readable at its next expiry, which nothing
            // signals: the wait ends there and looks again.
            let timer_ms = self
                .timerfd_deadline(items.iter().map(|(fd, _)| *fd))
                .map(ms_to);
            let console_ms = (watches_console || signals != 0).then_some(CONSOLE_SLICE_MS);
            let wait_ms = [timer_ms, console_ms]
                .into_iter()
                .flatten()
                .fold(left_ms, earliest_timeout);
            let revents = self.readiness_once(m, items, wait_ms)?;
            if m.cancelled() {
                return Err(crate::errno::EINTR);
            }
            let slices = watches_console || timer_ms.is_some() || signals != 0;
            if revents.iter().any(|r| *r != 0) || left_ms == 0 || !slices {
                if revents.iter().all(|r| *r == 0) {
                    let until_timer = timer_ms.map_or(-1, |t| t.max(1));
                    self.poll_found_nothing(earliest_timeout(requested_timeout, until_timer));
                    if self.try_would_wait() {
                        self.t.sigwait = signals; // it parks: a post of one wakes it
                    }
                }
                return Ok(revents);
            }
        }
    }

    /// One look at the readiness of `items`, waiting up to `timeout_ms` if nothing is ready.
    fn readiness_once(
        &mut self,
        m: &mut dyn Machine,
        items: &[(i32, u16)],
        timeout_ms: i64,
    ) -> Result<Vec<u16>, i64> {
        const POLLIN: u16 = 0x1;
        const POLLOUT: u16 = 0x4;
        const POLLERR: u16 = 0x8;
        const POLLHUP: u16 = 0x10;
        const POLLNVAL: u16 = 0x20;
        const READY: u16 = POLLIN | POLLOUT | 0x40 | 0x100; // and POLLRDNORM POLLWRNORM
        let mut revents = vec![0u16; items.len()];
        let mut socks = Vec::new();
        for (i, &(fd, events)) in items.iter().enumerate() {
            if fd < 0 {
                continue;
            }
            revents[i] = match self.p.fds.kind(fd as u64) {
                Err(_) => POLLNVAL,
                // A bound v6-only socket never becomes ready here (see net.rs).
                Ok(FileKind::Socket(s)) if self.is_idle_v6(*s) => 0,
                Ok(FileKind::Socket(s)) => {
                    socks.push((i, (*s, events & POLLIN != 0, events & POLLOUT != 0)));
                    0
                }
                Ok(FileKind::Epoll(_)) => 0, // nested epoll sets report nothing yet
                Ok(FileKind::TimerFd(id)) => {
                    let id = *id;
                    if self.timerfd_ready(m.monotonic_ns(), id) {
                        events & (POLLIN | 0x40)
                    } else {
                        0
                    }
                }
                Ok(FileKind::SignalFd(id)) if self.signalfd_ready(*id) => events & (POLLIN | 0x40),
                Ok(FileKind::SignalFd(_)) => 0,
                Ok(FileKind::EventFd(id)) => {
                    let (readable, writable) = self.eventfd_state(*id);
                    let mut r = 0;
                    if readable {
                        r |= events & (POLLIN | 0x40);
                    }
                    if writable {
                        r |= events & (POLLOUT | 0x100);
                    }
                    r
                }
                Ok(FileKind::UnixNamed(id)) => {
                    let (datagram, writable) = self.unix_dgram_ready(*id);
                    let mut r = 0;
                    if self.unix_pending(*id) || datagram {
                        r |= events & (POLLIN | 0x40);
                    }
                    if writable {
                        r |= events & (POLLOUT | 0x100);
                    }
                    r
                }
                Ok(FileKind::Unix { rx, tx }) => {
                    let (readable, _, peer_gone) = self.pipe_state(&FileKind::PipeRead(*rx));
                    let (_, writable, _) = self.pipe_state(&FileKind::PipeWrite(*tx));
                    let mut r = 0;
                    if readable {
                        r |= events & (POLLIN | 0x40);
                    }
                    if writable {
                        r |= events & (POLLOUT | 0x100);
                    }
                    if peer_gone {
                        r |= POLLHUP;
                    }
                    r
                }
                Ok(k @ (FileKind::PipeRead(_) | FileKind::PipeWrite(_))) => {
                    let (readable, writable, hangup) = self.pipe_state(k);
                    let mut r = 0;
                    if readable {
                        r |= events & (POLLIN | 0x40);
                    }
                    if writable {
                        r |= events & (POLLOUT | 0x100);
                    }
                    if hangup {
                        r |= if matches!(k, FileKind::PipeRead(_)) {
                            POLLHUP
                        } else {
                            POLLERR
                        };
                    }
                    r
                }
                Ok(FileKind::Stdin) if !m.console_readable() => events & !(POLLIN | 0x40) & READY,
                Ok(_) => events & READY,
            };
        }
        let ready_now = revents.iter().any(|r| *r != 0);
        if !socks.is_empty() {
            let wait = if ready_now { 0 } else { timeout_ms };
            let list: Vec<_> = socks.iter().map(|(_, s)| *s).collect();
            for &(s, read, write) in &list {
                self.note_socket_wait(s, read, write);
            }
            let states = m.net_poll(&list, wait)?;
            for ((i, (_, want_in, want_out)), st) in socks.iter().zip(states) {
                let mut r = 0;
                if st.readable && *want_in {
                    r |= POLLIN;
                }
                if st.writable && *want_out {
                    r |= POLLOUT;
                }
                if st.hangup {
                    r |= POLLHUP;
                }
                if st.error {
                    r |= POLLERR;
                }
                revents[*i] = r;
            }
        } else if !ready_now && timeout_ms > 0 {
            // A timer's signal ends the wait early, as any signal does (EINTR).
            let end = m
                .monotonic_ns()
                .saturating_add((timeout_ms as u64).saturating_mul(1_000_000));
            loop {
                let now = m.monotonic_ns();
                if now >= end || m.cancelled() {
                    break;
                }
                m.sleep_ns(end.min(self.next_timer).saturating_sub(now));
                self.take_host_events(m);
                if self.t.deliverable().is_some() {
                    return Err(EINTR);
                }
            }
        }
        Ok(revents)
    }

    /// select(2)/pselect6(2): fd_set bitmaps (read, write, except) over the same readiness.
    pub(crate) fn select(
        &mut self,
        m: &mut dyn Machine,
        nfds: u64,
        sets: [u64; 3],
        timeout_ms: i64,
    ) -> Result<i64, i64> {
        const FD_SETSIZE: u64 = 1024;
        if nfds > FD_SETSIZE {
            return Err(EINVAL);
        }
        let bytes = (nfds as usize).div_ceil(64) * 8;
        let mut maps = [vec![0u8; bytes], vec![0u8; bytes], vec![0u8; bytes]];
        for (map, &va) in maps.iter_mut().zip(&sets) {
            if va != 0 {
                m.read(va, map).map_err(|_| EFAULT)?;
            }
        }
        let bit = |map: &[u8], fd: usize| map[fd / 8] & (1 << (fd % 8)) != 0;
        let mut items = Vec::new();
        for fd in 0..nfds as usize {
            let events = (bit(&maps[0], fd) as u16) | ((bit(&maps[1], fd) as u16) << 2);
            if events != 0 || bit(&maps[2], fd) {
                items.push((fd as i32, events));
            }
        }
        let revents = self.readiness(m, &items, timeout_ms)?;
        if self.try_would_wait() {
            // A try without waiting found nothing: the call runs again where it may wait, and
            // reads the app's sets again then, so they stay as the app wrote them.
            return Ok(0);
        }
        if revents.iter().any(|r| r & 0x20 != 0) {
            return Err(EBADF); // select refuses a closed descriptor outright
        }
        for map in maps.iter_mut() {
            map.fill(0);
        }
        let mut count = 0;
        for (&(fd, events), r) in items.iter().zip(&revents) {
            let fd = fd as usize;
            // Hang-up and error count as readable (and writable), as on Linux.
            let ready_in = events & 1 != 0 && r & (0x1 | 0x8 | 0x10) != 0;
            let ready_out = events & 4 != 0 && r & (0x4 | 0x8) != 0;
            for (map, on) in maps.iter_mut().zip([ready_in, ready_out]) {
                if on {
                    map[fd / 8] |= 1 << (fd % 8);
                    count += 1;
                }
            }
        }
        for (map, &va) in maps.iter().zip(&sets) {
            if va != 0 {
                m.write(va, map).map_err(|_| EFAULT)?;
            }
        }
        Ok(count)
    }

    /// poll(2) over the app's `struct pollfd` array.
    pub(crate) fn poll(
        &mut self,
        m: &mut dyn Machine,
        fds: u64,
        nfds: u64,
        timeout_ms: i64,
    ) -> Result<i64, i64> {
        if nfds > self.p.fds.limit() as u64 {
            return Err(EINVAL);
        }
        let mut raw = vec![0u8; nfds as usize * 8];
        m.read(fds, &mut raw).map_err(|_| EFAULT)?;
        let items: Vec<(i32, u16)> = raw
            .chunks(8)
            .map(|e| {
                (
                    i32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                    u16::from_le_bytes([e[4], e[5]]),
                )
            })
            .collect();
        let revents = self.readiness(m, &items, timeout_ms)?;
        for (entry, r) in raw.chunks_mut(8).zip(&revents) {
            entry[6..8].copy_from_slice(&r.to_le_bytes());
        }
        m.write(fds, &raw).map_err(|_| EFAULT)?;
        Ok(revents.iter().filter(|r| **r != 0).count() as i64)
    }

    /// ioctl: the descriptor-level requests (FIONBIO, FIOCLEX/FIONCLEX) and FIONREAD on
    /// sockets; no descriptor is a terminal (process.terminal is false), so the rest is ENOTTY.
    pub(crate) fn ioctl(
        &mut self,
        m: &mut dyn Machine,
        fd: u64,
        req: u64,
        arg: u64,
    ) -> Result<i64, i64> {
        const FIONREAD: u64 = 0x541b;
        const FIONBIO: u64 = 0x5421;
        const FIONCLEX: u64 = 0x5450;
        const FIOCLEX: u64 = 0x5451;
        const FIOASYNC: u64 = 0x5452;
        const TCGETS: u64 = 0x5401;
        const TCSETS: u64 = 0x5402;
        const TCSETSW: u64 = 0x5403;
        const TCSETSF: u64 = 0x5404;
        const TIOCSCTTY: u64 = 0x540e;
        const TIOCGPGRP: u64 = 0x540f;
        const TIOCSPGRP: u64 = 0x5410;
        const TIOCGWINSZ: u64 = 0x5413;
        const TIOCSWINSZ: u64 = 0x5414;
        const TIOCGSID: u64 = 0x5429;
        const F_SETFD: u64 = 2;
        const F_SETFL: u64 = 4;
        let f = self.p.fds.get(fd)?;
        let (kind, flags) = (f.kind.clone(), f.status_flags);
        match req & 0xffff_ffff {
            FIONBIO => {
                let mut v = [0u8; 4];
                m.read(arg, &mut v).map_err(|_| EFAULT)?;
                let on = i32::from_le_bytes(v) != 0;
                let flags = if on {
                    flags | O_NONBLOCK
                } else {
                    flags & !O_NONBLOCK
                };
                self.fcntl(fd, F_SETFL, flags as u64)
            }
            TCGETS | TCSETS | TCSETSW | TCSETSF | TIOCGWINSZ | TIOCSWINSZ => {
                let tty = tty_of(&kind).ok_or(ENOTTY)?;
                let mut data = vec![0u8; if req & 0xffff >= TIOCGWINSZ { 8 } else { 36 }];
                let reads = matches!(req & 0xffff_ffff, TCGETS | TIOCGWINSZ);
                if !reads {
                    m.read(arg, &mut data).map_err(|_| EFAULT)?;
                }
                m.tty_ioctl(tty, req & 0xffff_ffff, &mut data)?;
                if reads {
                    m.write(arg, &data).map_err(|_| EFAULT)?;
                }
                Ok(0)
            }
            // The foreground group and session of a terminal: the caller's own (a terminal
            // from outside knows nothing of the container's processes).
            TIOCGPGRP | TIOCGSID | TIOCSPGRP | TIOCSCTTY => {
                let tty = tty_of(&kind).ok_or(ENOTTY)?;
                m.tty_ioctl(tty, TCGETS, &mut [0u8; 36])?;
                let id = match req & 0xffff_ffff {
                    TIOCGPGRP => self.p.pgid,
                    TIOCGSID => self.p.sid,
                    _ => return Ok(0),
                };
                m.write(arg, &(id as i32).to_le_bytes())
                    .map_err(|_| EFAULT)?;
                Ok(0)
            }
            FIOCLEX => self.fcntl(fd, F_SETFD, 1),
            // Signal-driven I/O is accepted but SIGIO is never sent: nginx sets it on its
            // channels and reads them from epoll anyway.
            FIOASYNC => Ok(0),
            FIONCLEX => self.fcntl(fd, F_SETFD, 0),
            FIONREAD => match kind {
                FileKind::Socket(s) => {
                    let n = m.net_pending(s)?.min(i32::MAX as usize) as i32;
                    m.write(arg, &n.to_le_bytes()).map_err(|_| EFAULT)?;
                    Ok(0)
                }
                FileKind::PipeRead(id) | FileKind::Unix { rx: id, .. } => {
                    let n = self.pipe_pending(id).min(i32::MAX as usize) as i32;
                    m.write(arg, &n.to_le_bytes()).map_err(|_| EFAULT)?;
                    Ok(0)
                }
                FileKind::UnixNamed(id) => {
                    let n = self.unix_dgram_pending(id) as i32;
                    m.write(arg, &n.to_le_bytes()).map_err(|_| EFAULT)?;
                    Ok(0)
                }
                _ => Err(ENOTTY),
            },
            _ => Err(ENOTTY),
        }
    }
}

/// The earlier of two poll timeouts in ms, a negative one meaning none.
fn earliest_timeout(a: i64, b: i64) -> i64 {
    match (a < 0, b < 0) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

/// A `loff_t` the app passes by pointer: EFAULT if unreadable, EINVAL if negative.
fn read_offset(m: &mut dyn Machine, p: u64) -> Result<u64, i64> {
    let mut b = [0u8; 8];
    m.read(p, &mut b).map_err(|_| EFAULT)?;
    let v = i64::from_le_bytes(b);
    if v < 0 {
        return Err(EINVAL);
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_timeout_treats_negative_as_none() {
        assert_eq!(earliest_timeout(-1, -1), -1);
        assert_eq!(earliest_timeout(-1, 30), 30);
        assert_eq!(earliest_timeout(40, -1), 40);
        assert_eq!(earliest_timeout(40, 30), 30);
        assert_eq!(earliest_timeout(0, 30), 0);
    }

    #[test]
    fn paths_join_and_tidy_without_resolving_dotdot() {
        assert_eq!(tidy(&join(b"/", b"etc//passwd")), b"/etc/passwd");
        assert_eq!(tidy(&join(b"/home/x", b"./a/../b")), b"/home/x/a/../b");
        assert_eq!(tidy(&join(b"/home", b"/abs/.")), b"/abs");
        assert_eq!(tidy(b""), b"/");
    }

    #[test]
    fn descriptors_fill_the_lowest_slot_and_run_out() {
        let mut t = FdTable::default();
        let fd = |k| Fd {
            kind: k,
            cloexec: false,
            status_flags: 0,
        };
        assert_eq!(t.install(fd(FileKind::Null), 0), Ok(3));
        t.take(1);
        assert_eq!(t.install(fd(FileKind::Zero), 0), Ok(1));
        for _ in 4..MAX_FDS {
            t.install(fd(FileKind::Null), 0).unwrap();
        }
        assert_eq!(t.install(fd(FileKind::Null), 0), Err(EMFILE));
    }
}
