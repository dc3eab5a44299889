//! The narrow interface between qkernel and the machine it runs on.

use thiserror::Error;

/// A guest access that hit an address with no (suitable) mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("guest fault at {addr:#x}")]
pub struct Fault {
    pub addr: u64,
}

/// Permissions of a user mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFlags {
    pub write: bool,
    pub exec: bool,
}

/// A file the platform opened in the container's root file system (its handle, not a host fd).
pub type HostFile = u32;

/// A socket the platform created on the container's network stack (its handle).
pub type SocketId = u32;

/// Linux `struct stat` as x86-64 lays it out (144 bytes), copied to the app unchanged.
pub type RawStat = [u8; 144];

/// The app's user-mode registers at a syscall, as the platform saw them: `rip`, `rsp` and
/// `rflags` are where the app resumes (the instruction after `syscall`), `rax` the syscall
/// number, the argument registers untouched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub fs_base: u64,
}

/// A file attribute the app changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAttr {
    /// uid and gid; u32::MAX leaves one unchanged.
    Owner(u32, u32),
    /// Permission bits.
    Mode(u32),
    /// (seconds, nanoseconds) of access and modification; nanoseconds may be UTIME_NOW or
    /// UTIME_OMIT.
    Times([(i64, i64); 2]),
}

/// Where a platform that patches syscall sites maps its jump slots in a process that has any
/// (see [`Machine::syscall_site_jump`]); qkernel keeps every mapping of its own out of it.
/// The range is fixed by the patch's encoding (docs/qvisor.md, "Syscall-site patching"): a
/// slot's address ends in the bytes `0f 05`, so the last two bytes of a patched site are still
/// a `syscall` instruction.
pub const SYSCALL_SLOTS: std::ops::Range<u64> = 0x050f_0000..0x0510_0000;

/// Where a platform's vDSO lies: its ELF image (what AT_SYSINFO_EHDR points at) and the data
/// page its code reads. Both are the platform's, read-only to the app, in every address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vdso {
    pub image: u64,
    pub image_len: u64,
    pub data: u64,
}

/// An address space of the platform (one per process): an opaque handle.
pub type SpaceId = u64;

/// What qkernel needs from the platform. Every address is a guest-virtual address of the app;
/// implementations check every access against the app's mappings and never reach memory
/// outside the guest.
pub trait Machine {
    /// Maps `len` bytes (page aligned) of fresh zeroed memory at `va` (page aligned), user
    /// accessible. Fails if any page is already mapped or memory is exhausted.
    fn map_zeroed(&mut self, va: u64, len: u64, flags: PageFlags) -> Result<(), Fault>;
    /// Like [`Machine::map_zeroed`], for shared memory: address spaces copied from this one
    /// later (fork) map the same pages instead of copies. A platform without fork sharing
    /// maps them private.
    fn map_zeroed_shared(&mut self, va: u64, len: u64, flags: PageFlags) -> Result<(), Fault> {
        self.map_zeroed(va, len, flags)
    }
    /// Maps `[va, va + len)` (page aligned, nothing mapped there) to the container's shared
    /// pages of `file` from `offset` (page aligned): a `MAP_SHARED` file mapping, the same
    /// pages for every process that maps that part of the file, kept coherent with the file's
    /// reads and writes and written back to it (see [`Machine::sync_file_pages`]).
    /// `fd_writable`: the app's descriptor may write the file. ENODEV where the platform has
    /// no shared file pages.
    fn map_file_shared(
        &mut self,
        _at: (u64, u64),
        _file: HostFile,
        _offset_writable: (u64, bool),
        _flags: PageFlags,
    ) -> Result<(), i64> {
        Err(crate::errno::ENODEV)
    }
    /// Writes the shared file pages mapped in `[va, va + len)` back to their files (msync,
    /// munmap).
    fn sync_file_pages(&mut self, _va: u64, _len: u64) -> Result<(), i64> {
        Ok(())
    }
    /// A key for the word at `va` of shared memory that is the same in every address space
    /// mapping that memory, wherever (futexes of process-shared locks). The address itself
    /// where the platform cannot tell (processes forked from one another share the address).
    fn shared_memory_key(&self, va: u64) -> Option<u64> {
        Some(va)
    }
    /// Bytes of user memory present in address space `space` within `[start, end)` (what
    /// /proc reports as resident); 0 where the platform cannot tell.
    fn resident_bytes(&self, _space: SpaceId, _start: u64, _end: u64) -> u64 {
        0
    }
    /// Copies guest memory at `va` into `buf`, as the app could read it.
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Fault>;
    /// Copies `buf` into guest memory at `va`, ignoring write protection (the kernel may write
    /// what the app may only read, e.g. when loading code).
    fn write(&mut self, va: u64, buf: &[u8]) -> Result<(), Fault>;
    /// Writes to the container's stdout (1) or stderr (2).
    fn console_write(&mut self, fd: i32, data: &[u8]) -> std::io::Result<usize>;
    /// Reads from the container's stdin.
    fn console_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Whether a read of stdin would return at once (data, end of file or an error).
    fn console_readable(&mut self) -> bool {
        true
    }
    /// Whether the container is being stopped from outside: a long wait gives up (EINTR).
    fn cancelled(&self) -> bool {
        false
    }
    /// Signals sent to the container from outside since the last call (bit `sig - 1`), for
    /// its init.
    fn take_host_signals(&mut self) -> u64 {
        0
    }
    /// Wall-clock time (CLOCK_REALTIME) and monotonic time, in nanoseconds.
    fn realtime_ns(&self) -> u64;
    fn monotonic_ns(&self) -> u64;
    /// CPU time the guest's vCPU has used, in nanoseconds (what the kernel charges the
    /// running thread with); the monotonic clock where the platform cannot tell.
    fn cpu_time_ns(&self) -> u64 {
        self.monotonic_ns()
    }
    /// The vDSO the platform maps in every address space, if any: programs find it through
    /// AT_SYSINFO_EHDR, and its time calls cost no syscall.
    fn vdso(&self) -> Option<Vdso> {
        None
    }
    /// Fills `buf` with cryptographically secure random bytes.
    fn random(&mut self, buf: &mut [u8]);
    /// Sets the thread pointer (the FS base) the app sees when it resumes.
    fn set_thread_pointer(&mut self, fs_base: u64);
    /// Sleeps the calling app thread.
    fn sleep_ns(&mut self, ns: u64);

    // The root file system. Paths are absolute paths in the container's root; the platform
    // resolves them so that no symlink or ".." leaves the root, and refuses writes to a
    // read-only root. Errors are Linux errno values.

    /// Opens `path` with Linux `open` flags and mode.
    fn fs_open(&mut self, path: &[u8], flags: i32, mode: u32) -> Result<HostFile, i64>;
    fn fs_close(&mut self, file: HostFile);
    /// Reads at `offset`, or at the file position when `None`.
    fn fs_read(
        &mut self,
        file: HostFile,
        buf: &mut [u8],
        offset: Option<u64>,
    ) -> Result<usize, i64>;
    fn fs_write(&mut self, file: HostFile, buf: &[u8], offset: Option<u64>) -> Result<usize, i64>;
    /// A terminal ioctl (TCGETS, TCSETS/W/F, TIOCGWINSZ, TIOCSWINSZ) on a host terminal,
    /// `data` the `struct termios` (36 bytes) or `struct winsize` (8) read or written.
    /// ENOTTY when it is not a terminal.
    fn tty_ioctl(&mut self, _tty: Tty, _req: u64, _data: &mut [u8]) -> Result<(), i64> {
        Err(25)
    }
    /// Whether a read of `file` returns without waiting (a stream from outside, such as
    /// exec's stdin, may have nothing yet).
    fn fs_readable(&mut self, _file: HostFile) -> bool {
        true
    }
    fn fs_seek(&mut self, file: HostFile, offset: i64, whence: i32) -> Result<u64, i64>;
    fn fs_stat(&mut self, file: HostFile) -> Result<RawStat, i64>;
    fn fs_stat_path(&mut self, path: &[u8], follow_symlinks: bool) -> Result<RawStat, i64>;
    /// Fills `buf` with `linux_dirent64` records of a directory.
    fn fs_getdents(&mut self, file: HostFile, buf: &mut [u8]) -> Result<usize, i64>;
    fn fs_readlink(&mut self, path: &[u8]) -> Result<Vec<u8>, i64>;

    // The container's network (qnet, through the socket ring). IPv4 only; addresses are
    // host-order (ip, port). Calls may block unless `nonblocking`. A platform without a network
    // keeps these defaults.

    fn net_socket(&mut self, _stream: bool) -> Result<SocketId, i64> {
        Err(97) // EAFNOSUPPORT
    }
    fn net_bind(&mut self, _s: SocketId, _ip: u32, _port: u16) -> Result<(), i64> {
        Err(9)
    }
    fn net_listen(&mut self, _s: SocketId, _backlog: u32) -> Result<(), i64> {
        Err(9)
    }
    fn net_accept(
        &mut self,
        _s: SocketId,
        _nonblocking: bool,
    ) -> Result<(SocketId, u32, u16), i64> {
        Err(9)
    }
    /// Connects; a non-blocking stream answers EINPROGRESS and finishes in the background
    /// (POLLOUT or POLLERR, then `net_take_error`).
    fn net_connect(
        &mut self,
        _s: SocketId,
        _ip: u32,
        _port: u16,
        _nonblocking: bool,
    ) -> Result<(), i64> {
        Err(9)
    }
    /// SO_ERROR: the pending error (0 for none), cleared by reading it.
    fn net_take_error(&mut self, _s: SocketId) -> Result<i64, i64> {
        Ok(0)
    }
    fn net_send(&mut self, _s: SocketId, _buf: &[u8], _nonblocking: bool) -> Result<usize, i64> {
        Err(9)
    }
    fn net_recv(
        &mut self,
        _s: SocketId,
        _buf: &mut [u8],
        _nonblocking: bool,
    ) -> Result<usize, i64> {
        Err(9)
    }
    fn net_shutdown(&mut self, _s: SocketId, _how: u32) -> Result<(), i64> {
        Err(9)
    }
    /// The local (`peer` false) or remote address.
    fn net_name(&mut self, _s: SocketId, _peer: bool) -> Result<(u32, u16), i64> {
        Err(9)
    }
    /// Sends one datagram to `ip:port` (or, on a stream, sends bytes and ignores the address).
    fn net_sendto(
        &mut self,
        _s: SocketId,
        _buf: &[u8],
        _ip: u32,
        _port: u16,
        _nonblocking: bool,
    ) -> Result<usize, i64> {
        Err(9)
    }
    /// Receives (one datagram) and says where it came from; a stream names no sender (as
    /// Linux's TCP leaves the address empty), which also spares a question to the stack.
    fn net_recvfrom(
        &mut self,
        _s: SocketId,
        _buf: &mut [u8],
        _nonblocking: bool,
    ) -> Result<(usize, Option<(u32, u16)>), i64> {
        Err(9)
    }
    /// [`Machine::net_recvfrom`] straight into the app's memory: one receive scattered over
    /// `iov` (base, length pairs, in order). A platform that copies from the stack's buffers
    /// into guest memory saves a copy a byte; this default goes through a buffer. EFAULT when
    /// the app's memory takes none of the bytes.
    fn net_recv_user(
        &mut self,
        s: SocketId,
        iov: &[(u64, u64)],
        nonblocking: bool,
    ) -> Result<(usize, Option<(u32, u16)>), i64> {
        net_recv_through_buffer(self, s, iov, nonblocking)
    }
    /// [`Machine::net_send`] straight from the app's memory: one send gathered from `iov`
    /// (base, length pairs, in order); a stream may take less than all. A platform that
    /// copies from guest memory into the stack's buffers saves a copy a byte; this default
    /// goes through a buffer. EFAULT when the app's memory gives none of the bytes.
    fn net_send_user(
        &mut self,
        s: SocketId,
        iov: &[(u64, u64)],
        nonblocking: bool,
    ) -> Result<usize, i64> {
        net_send_through_buffer(self, s, iov, nonblocking)
    }
    /// Bytes waiting to be read on a stream socket (FIONREAD).
    /// setsockopt of an option the stack keeps (`level`, `name` as Linux numbers them).
    fn net_set_option(
        &mut self,
        _s: SocketId,
        _level: u32,
        _name: u32,
        _value: u64,
    ) -> Result<(), i64> {
        Err(92) // ENOPROTOOPT
    }
    /// getsockopt of an option the stack keeps.
    fn net_option(&mut self, _s: SocketId, _level: u32, _name: u32) -> Result<u64, i64> {
        Err(92) // ENOPROTOOPT
    }
    fn net_pending(&mut self, _s: SocketId) -> Result<usize, i64> {
        Err(9)
    }
    fn net_close(&mut self, _s: SocketId) {}
    /// The platform's syscall stub may serve reads and writes of `fd` (socket `s`, in the
    /// running process's table; `blocking`: not O_NONBLOCK) from the socket's rings itself
    /// (`fastread.rs`); false: it cannot (no such path, not a connected stream, no room).
    fn net_fast_read(&mut self, _fd: u64, _s: SocketId, _blocking: bool) -> bool {
        false
    }
    /// `fd` is read through qkernel again.
    fn net_fast_forget(&mut self, _fd: u64) {}
    /// The stub read from `s`'s ring: take its position and tell the stack of the room.
    fn net_read_done(&mut self, _s: SocketId) {}
    /// The stub wrote into `s`'s transmit ring: take its position and kick the stack.
    fn net_write_done(&mut self, _s: SocketId) {}

    /// unlink(2) of a file, or rmdir(2) of a directory with `dir`, in the root.
    fn fs_unlink(&mut self, _path: &[u8], _dir: bool) -> Result<(), i64> {
        Err(30)
    }
    /// mkdir(2) in the root.
    fn fs_mkdir(&mut self, _path: &[u8], _mode: u32) -> Result<(), i64> {
        Err(30)
    }
    /// renameat2(2) within the root, with RENAME_* `flags`.
    fn fs_rename(&mut self, _from: &[u8], _to: &[u8], _flags: u32) -> Result<(), i64> {
        Err(30)
    }
    /// link(2): `to` names the file `from` names (a final symlink itself, not followed).
    fn fs_link(&mut self, _from: &[u8], _to: &[u8]) -> Result<(), i64> {
        Err(30)
    }
    /// symlink(2): `path` becomes a symlink holding `target`.
    fn fs_symlink(&mut self, _target: &[u8], _path: &[u8]) -> Result<(), i64> {
        Err(30)
    }
    /// chown/chmod/utimensat of `path` in the root (`follow`: through a final symlink), or of
    /// an open file (`file`).
    fn fs_set_attr(
        &mut self,
        _path: Option<&[u8]>,
        _file: Option<HostFile>,
        _follow: bool,
        _attr: FileAttr,
    ) -> Result<(), i64> {
        Err(30)
    }
    /// ftruncate(2) of an open file.
    fn fs_truncate(&mut self, _file: HostFile, _len: u64) -> Result<(), i64> {
        Err(30)
    }
    /// fallocate(2) of an open file, `mode` one the kernel checked (allocate, keep size,
    /// punch a hole, zero a range).
    fn fs_allocate(
        &mut self,
        _file: HostFile,
        _mode: i32,
        _offset: u64,
        _len: u64,
    ) -> Result<(), i64> {
        Err(95) // EOPNOTSUPP
    }
    /// fsync(2), or fdatasync(2) with `data_only`.
    fn fs_sync(&mut self, _file: HostFile, _data_only: bool) -> Result<(), i64> {
        Ok(())
    }
    /// Guest memory: its size and how much of it is in use, in bytes (for /proc/meminfo).
    fn memory_info(&self) -> (u64, u64) {
        (0, 0)
    }
    /// /proc/cpuinfo for the one vCPU (the host CPU it runs on).
    fn cpuinfo(&self) -> Vec<u8> {
        Vec::new()
    }
    /// statfs(2) of the file system holding `path` in the root (`struct statfs`, 120 bytes).
    fn fs_statfs(&mut self, _path: &[u8]) -> Result<[u8; 120], i64> {
        Err(38)
    }

    // Processes. A platform that runs one program only keeps the defaults: fork and exec
    // then fail with ENOSYS.

    /// The registers of the app at the syscall being served.
    fn user_regs(&self) -> UserRegs {
        UserRegs::default()
    }
    /// Resumes the app with `regs` (another process's, or a call to run again) instead of
    /// returning a value; the kernel returns [`crate::SyscallOutcome::Resume`].
    fn set_user_regs(&mut self, _regs: &UserRegs) {}
    /// Requests from outside the container queued since the last call (exec).
    fn take_host_requests(&mut self) -> Vec<crate::HostRequest> {
        Vec::new()
    }
    /// Tells the platform what became of one of its requests.
    fn host_event(&mut self, _event: crate::HostEvent) {}
    /// The FPU state a new program starts with (opaque, as [`Machine::fpu_state`]).
    fn fpu_initial(&self) -> Result<Vec<u8>, i64> {
        Err(38)
    }
    /// The app's FPU/SSE/AVX state, opaque to the kernel, and putting one back.
    fn fpu_state(&mut self) -> Result<Vec<u8>, i64> {
        Err(38)
    }
    fn set_fpu_state(&mut self, _state: &[u8]) -> Result<(), i64> {
        Err(38)
    }
    /// The 7 bytes that replace a `mov $nr, %eax; syscall` pair whose `syscall` returns to
    /// `ret`, in the current address space: a jump the platform routes into its syscall entry
    /// with `nr` in rax and `ret` in rcx, as the `syscall` instruction would have. The platform
    /// maps its jump slots ([`SYSCALL_SLOTS`]) in the current space first. `None`: no patching
    /// (turned off, not supported, no room left, or the slots' range is taken in this space).
    fn syscall_site_jump(&mut self, _ret: u64, _nr: u32) -> Option<[u8; 7]> {
        None
    }
    /// The address space accesses and the app use now.
    fn space_current(&self) -> SpaceId {
        0
    }
    /// A copy of the current address space (fork), not switched to.
    fn space_clone(&mut self) -> Result<SpaceId, i64> {
        Err(38)
    }
    /// A new empty address space (exec), not switched to.
    fn space_new(&mut self) -> Result<SpaceId, i64> {
        Err(38)
    }
    /// Makes `space` the current one, for the kernel's accesses and for the app.
    fn space_switch(&mut self, _space: SpaceId) {}
    /// Gives back an address space that is not current.
    fn space_release(&mut self, _space: SpaceId) {}
    /// Waits until one of `socks` is ready for what it wants (`want_in`, `want_out`), or
    /// `timeout_ms` passes (0: just look; negative: no limit). Returns each socket's state.
    fn net_poll(
        &mut self,
        socks: &[(SocketId, bool, bool)],
        _timeout_ms: i64,
    ) -> Result<Vec<SocketReady>, i64> {
        Ok(vec![SocketReady::default(); socks.len()])
    }
}

/// A host file that may be a terminal: the console (0, 1, 2) or a file from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tty {
    Console(i32),
    File(HostFile),
}

/// What a socket is ready for (poll's view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketReady {
    pub readable: bool,
    pub writable: bool,
    pub hangup: bool,
    pub error: bool,
}

/// [`Machine::net_recv_user`] through a buffer (of at most 64 KiB): received, then written
/// over the iovecs (EFAULT if the first cannot take its part).
pub fn net_recv_through_buffer<M: Machine + ?Sized>(
    m: &mut M,
    s: SocketId,
    iov: &[(u64, u64)],
    nonblocking: bool,
) -> Result<(usize, Option<(u32, u16)>), i64> {
    let capacity = iov_len(iov);
    let mut tmp = vec![0u8; capacity.min(BUFFERED_IO) as usize];
    let (n, from) = m.net_recvfrom(s, &mut tmp, nonblocking)?;
    let mut done = 0;
    for &(base, len) in iov {
        if done == n {
            break;
        }
        let k = (len as usize).min(n - done);
        m.write(base, &tmp[done..done + k])
            .map_err(|_| crate::errno::EFAULT)?;
        done += k;
    }
    Ok((n, from))
}

/// [`Machine::net_send_user`] through a buffer (of at most 64 KiB): the iovecs gathered, then
/// sent (EFAULT if one cannot be read).
pub fn net_send_through_buffer<M: Machine + ?Sized>(
    m: &mut M,
    s: SocketId,
    iov: &[(u64, u64)],
    nonblocking: bool,
) -> Result<usize, i64> {
    let capacity = iov_len(iov);
    let mut data = vec![0u8; capacity.min(BUFFERED_IO) as usize];
    let mut at = 0;
    for &(base, len) in iov {
        let n = (len as usize).min(data.len() - at);
        m.read(base, &mut data[at..at + n])
            .map_err(|_| crate::errno::EFAULT)?;
        at += n;
    }
    m.net_send(s, &data, nonblocking)
}

/// The bytes iovecs (base, length pairs) hold together, saturating.
pub fn iov_len(iov: &[(u64, u64)]) -> u64 {
    iov.iter().fold(0u64, |t, (_, len)| t.saturating_add(*len))
}

/// The most the buffered socket paths move in one call.
const BUFFERED_IO: u64 = 64 << 10;
