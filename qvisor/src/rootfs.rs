//! The container's root file system: the one host path a guest can reach files through.
//!
//! Every guest path is opened with `openat2(root, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! from a descriptor of the root directory. The host kernel then resolves "..", absolute paths
//! and symlinks as if the root were "/", atomically, so no race or link can name a host file
//! outside it; magic links (/proc/*/fd/...) are refused. A read-only root refuses any open that
//! could modify a file.
//!
//! `/tmp` and `/dev/shm` are the container's own scratch spaces (tmpfs mounts in its view):
//! each a tmpfs of its own, detached from every mount table as soon as it is open (no host
//! path reaches it), writable even when the root is read-only, gone when the container ends. Paths under them resolve inside that directory
//! the same confined way (its own "/"); a rename between two trees is EXDEV.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use qkernel::{HostFile, RawStat};

const EBADF: i64 = 9;
const EINVAL: i64 = 22;
const EROFS: i64 = 30;
const EIO: i64 = 5;

/// fchmodat2(2), Linux 6.6 (not in every libc's list yet).
pub const SYS_FCHMODAT2: libc::c_long = 452;

/// Most files the guest may hold open through this root.
const MAX_OPEN: usize = 4096;

pub struct RootFs {
    root: OwnedFd,
    readonly: bool,
    /// The scratch trees, in [`SCRATCH_MOUNTS`] order.
    scratch: [Scratch; 2],
    files: Vec<Option<OwnedFd>>,
    /// Files that are streams from outside (exec's pipes or terminal): reads ask first
    /// whether data is there, so none waits on the host.
    streams: std::collections::BTreeSet<HostFile>,
}

/// The guest paths whose trees are scratch space rather than the root.
const SCRATCH_MOUNTS: [&[u8]; 2] = [b"/tmp", b"/dev/shm"];

/// Where a guest path lives: the root, or a scratch tree (an index into SCRATCH_MOUNTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Root,
    Scratch(usize),
}

/// A file attribute the guest changes.
#[derive(Debug, Clone, Copy)]
pub enum Attr {
    /// chown: uid and gid (u32::MAX leaves one as it is).
    Owner(u32, u32),
    /// chmod: the permission bits.
    Mode(u32),
    /// utimensat: access and modification times (UTIME_NOW/UTIME_OMIT honoured by the host).
    Times([libc::timespec; 2]),
}

/// One of the terminal ioctls the guest may make on a host terminal (TCGETS, TCSETS/W/F,
/// TIOCGWINSZ, TIOCSWINSZ), with `data` exactly the size of its argument; anything else is
/// ENOTTY, so no other request reaches a host descriptor.
pub fn terminal_ioctl(fd: RawFd, req: u64, data: &mut [u8]) -> Result<(), i64> {
    const ENOTTY: i64 = 25;
    let size = match req {
        0x5401..=0x5404 => 36, // struct termios (the kernel's)
        0x5413 | 0x5414 => 8,  // struct winsize
        _ => return Err(ENOTTY),
    };
    if data.len() != size {
        return Err(EINVAL);
    }
    // SAFETY: a request from the list above, whose argument is `size` bytes, which `data`
    // holds exactly.
    if unsafe { libc::ioctl(fd, req as libc::Ioctl, data.as_mut_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// A scratch tree: a tmpfs of its own, mounted on a temporary directory only long enough to
/// open it, then detached. Nothing of it is reachable by a host path; it lives as long as
/// the descriptor (the container's end frees its memory, however the VMM ends).
struct Scratch {
    fd: OwnedFd,
}

impl Scratch {
    fn create(size: u64) -> io::Result<Scratch> {
        let template = std::env::temp_dir().join("qvisor-scratch-XXXXXX");
        let mut bytes = template.into_os_string().into_encoded_bytes();
        bytes.push(0);
        // SAFETY: bytes is a NUL-terminated template that mkdtemp rewrites in place.
        let p = unsafe { libc::mkdtemp(bytes.as_mut_ptr() as *mut libc::c_char) };
        if p.is_null() {
            return Err(io::Error::last_os_error());
        }
        bytes.pop();
        // SAFETY: mkdtemp wrote a valid path of the same length.
        let dir = std::path::PathBuf::from(unsafe {
            std::ffi::OsString::from_encoded_bytes_unchecked(bytes)
        });
        let mounted = mount_detached_tmpfs(&dir, size);
        let _ = std::fs::remove_dir(&dir);
        Ok(Scratch { fd: mounted? })
    }
}

/// Mounts a tmpfs of at most `size` bytes on `dir`, opens it, and detaches it again.
fn mount_detached_tmpfs(dir: &Path, size: u64) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    let options = CString::new(format!("mode=1777,size={size}")).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings; tmpfs takes a text option string.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = open_dir(dir);
    // SAFETY: umount2 of the mount just made; MNT_DETACH keeps it alive for open descriptors.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    fd
}

/// `path` with "." and ".." resolved as names (no symlinks), never above "/".
fn lexical(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::new();
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: c is a valid C string; the result is checked and owned at once.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn errno() -> i64 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(EIO as i32) as i64
}

impl RootFs {
    /// The root at `path`; its scratch trees may each hold up to `scratch_bytes` (the
    /// container's memory size: what a tmpfs of the guest's own could hold).
    pub fn open(path: &Path, readonly: bool, scratch_bytes: u64) -> io::Result<RootFs> {
        Ok(RootFs {
            root: open_dir(path)?,
            readonly,
            scratch: [
                Scratch::create(scratch_bytes)?,
                Scratch::create(scratch_bytes)?,
            ],
            files: Vec::new(),
            streams: Default::default(),
        })
    }

    /// Which tree a guest path lives in, and the path inside it: /tmp, /dev/shm and below go
    /// to their scratch directories.
    fn tree(&self, path: &[u8]) -> (RawFd, Vec<u8>, Tree) {
        // "/tmp/.." is the root: a ".." that would climb out of a mount point is resolved
        // here, lexically, before choosing the tree (a scratch tree holds no symlink of ours).
        let mounted = SCRATCH_MOUNTS.iter().any(|m| path.starts_with(m));
        let path = if mounted && path.split(|&b| b == b'/').any(|c| c == b"..") {
            lexical(path)
        } else {
            path.to_vec()
        };
        for (i, mount) in SCRATCH_MOUNTS.iter().enumerate() {
            match path.strip_prefix(*mount) {
                Some(rest) if rest.is_empty() || rest[0] == b'/' => {
                    let rest = if rest.is_empty() {
                        b"/".to_vec()
                    } else {
                        rest.to_vec()
                    };
                    return (self.scratch[i].fd.as_raw_fd(), rest, Tree::Scratch(i));
                }
                _ => {}
            }
        }
        (self.root.as_raw_fd(), path, Tree::Root)
    }

    /// openat2 inside the root. `path` is absolute in the guest's view.
    fn resolve(&self, path: &[u8], flags: i32, mode: u32) -> Result<OwnedFd, i64> {
        let (dir, path, _) = self.tree(path);
        let c = CString::new(path).map_err(|_| EINVAL)?;
        // open_how is non-exhaustive in libc: start from zeroes (its "no extension" value).
        // SAFETY: open_how is plain integers; all-zero is valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC) as u64 & !(libc::O_NOCTTY as u64);
        if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            how.mode = (mode & 0o7777) as u64;
        }
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: how and c live across the call; the result is checked and owned at once.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: fd is fresh and ours.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn writes(flags: i32) -> bool {
        flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_CREAT | libc::O_TRUNC | libc::O_TMPFILE) != 0
    }

    pub fn open_file(&mut self, path: &[u8], flags: i32, mode: u32) -> Result<HostFile, i64> {
        let scratch = self.tree(path).2 != Tree::Root;
        if self.readonly && !scratch && Self::writes(flags) {
            return Err(EROFS);
        }
        let fd = self.resolve(path, flags, mode)?;
        self.adopt(fd)
    }

    /// Makes a descriptor the runtime opened (an exec'd process's stdio) a file the guest
    /// can use.
    pub fn adopt(&mut self, fd: OwnedFd) -> Result<HostFile, i64> {
        let slot = match self.files.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.files.len() < MAX_OPEN => {
                self.files.push(None);
                self.files.len() - 1
            }
            None => return Err(24), // EMFILE
        };
        self.files[slot] = Some(fd);
        Ok(slot as HostFile)
    }

    pub(crate) fn fd(&self, file: HostFile) -> Result<RawFd, i64> {
        self.files
            .get(file as usize)
            .and_then(Option::as_ref)
            .map(AsRawFd::as_raw_fd)
            .ok_or(EBADF)
    }

    /// [`RootFs::adopt`] for a stream (a pipe or terminal from outside).
    pub fn adopt_stream(&mut self, fd: OwnedFd) -> Result<HostFile, i64> {
        let file = self.adopt(fd)?;
        self.streams.insert(file);
        Ok(file)
    }

    /// A terminal ioctl on `file` (see [`terminal_ioctl`]).
    pub fn tty_ioctl(&self, file: HostFile, req: u64, data: &mut [u8]) -> Result<(), i64> {
        terminal_ioctl(self.fd(file)?, req, data)
    }

    /// Whether a read of `file` returns at once: always for files of the root; for a stream,
    /// when it has data, an end of file or an error.
    pub fn readable_now(&self, file: HostFile) -> bool {
        if !self.streams.contains(&file) {
            return true;
        }
        let Ok(fd) = self.fd(file) else {
            return true; // the read reports the bad descriptor
        };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
    }

    pub fn close(&mut self, file: HostFile) {
        self.streams.remove(&file);
        if let Some(f) = self.files.get_mut(file as usize) {
            *f = None;
        }
    }

    pub fn read(
        &mut self,
        file: HostFile,
        buf: &mut [u8],
        offset: Option<u64>,
    ) -> Result<usize, i64> {
        let fd = self.fd(file)?;
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe {
            match offset {
                Some(o) => libc::pread(fd, buf.as_mut_ptr() as *mut _, buf.len(), o as i64),
                None => libc::read(fd, buf.as_mut_ptr() as *mut _, buf.len()),
            }
        };
        if n < 0 {
            Err(errno())
        } else {
            Ok(n as usize)
        }
    }

    pub fn write(&mut self, file: HostFile, buf: &[u8], offset: Option<u64>) -> Result<usize, i64> {
        // A file opened for writing passed the read-only check at open; the host enforces the
        // access mode it was opened with.
        let fd = self.fd(file)?;
        // SAFETY: buf is a valid readable buffer of buf.len() bytes.
        let n = unsafe {
            match offset {
                Some(o) => libc::pwrite(fd, buf.as_ptr() as *const _, buf.len(), o as i64),
                None => libc::write(fd, buf.as_ptr() as *const _, buf.len()),
            }
        };
        if n < 0 {
            Err(errno())
        } else {
            Ok(n as usize)
        }
    }

    pub fn seek(&mut self, file: HostFile, offset: i64, whence: i32) -> Result<u64, i64> {
        let fd = self.fd(file)?;
        // SAFETY: plain lseek on our descriptor.
        let r = unsafe { libc::lseek(fd, offset, whence) };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as u64)
        }
    }

    fn fstat_raw(fd: RawFd) -> Result<RawStat, i64> {
        // SAFETY: libc::stat is plain data; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: st is a valid stat buffer.
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return Err(errno());
        }
        let mut raw = [0u8; 144];
        // SAFETY: on x86-64 struct stat is exactly 144 bytes, the layout the guest expects.
        unsafe {
            std::ptr::copy_nonoverlapping(&st as *const _ as *const u8, raw.as_mut_ptr(), 144)
        };
        Ok(raw)
    }

    pub fn stat(&mut self, file: HostFile) -> Result<RawStat, i64> {
        Self::fstat_raw(self.fd(file)?)
    }

    /// The directory holding `path` (opened inside the root) and its last component, for the
    /// calls that change names. The component is a plain name, so the call on it cannot leave
    /// the directory, and the directory was resolved inside the root. Fails with EROFS for a
    /// read-only root outside /tmp.
    fn parent_of(&self, path: &[u8]) -> Result<(OwnedFd, CString, Tree), i64> {
        let path = lexical(path);
        let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let (dir, name) = (&path[..cut.max(1)], &path[cut + 1..]);
        if name.is_empty() {
            return Err(16); // EBUSY: "/" itself
        }
        let tree = self.tree(&path).2;
        if self.readonly && tree == Tree::Root {
            return Err(EROFS);
        }
        let fd = self.resolve(dir, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let name = CString::new(name).map_err(|_| EINVAL)?;
        Ok((fd, name, tree))
    }

    /// unlink(2), or rmdir(2) with `dir`.
    pub fn unlink(&mut self, path: &[u8], dir: bool) -> Result<(), i64> {
        let (parent, name, _) = self.parent_of(path)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: a directory fd we own and a NUL-terminated single-component name.
        if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// mkdir(2).
    pub fn mkdir(&mut self, path: &[u8], mode: u32) -> Result<(), i64> {
        let (parent, name, _) = self.parent_of(path)?;
        // SAFETY: as in unlink.
        if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode & 0o7777) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// rename(2)/renameat2(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE). Between two
    /// trees (the root, /tmp, /dev/shm) it is EXDEV, as between two mounts.
    pub fn rename(&mut self, from: &[u8], to: &[u8], flags: u32) -> Result<(), i64> {
        let (a, an, a_tree) = self.parent_of(from)?;
        let (b, bn, b_tree) = self.parent_of(to)?;
        if a_tree != b_tree {
            return Err(18); // EXDEV
        }
        // SAFETY: directory fds we own and single-component names.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                a.as_raw_fd(),
                an.as_ptr(),
                b.as_raw_fd(),
                bn.as_ptr(),
                flags,
            )
        };
        if r != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// link(2): a new name `to` for the file named `from` itself (a final symlink is linked,
    /// not followed; the kernel resolves AT_SYMLINK_FOLLOW itself). Between two trees it is
    /// EXDEV, as between two mounts.
    pub fn link(&mut self, from: &[u8], to: &[u8]) -> Result<(), i64> {
        let (a, an, a_tree) = self.parent_of(from)?;
        let (b, bn, b_tree) = self.parent_of(to)?;
        if a_tree != b_tree {
            return Err(18); // EXDEV
        }
        // SAFETY: directory fds we own and single-component names; flags 0 follows nothing.
        let r = unsafe { libc::linkat(a.as_raw_fd(), an.as_ptr(), b.as_raw_fd(), bn.as_ptr(), 0) };
        if r != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// symlink(2): `path` made a symlink holding `target` as is (it is only ever followed
    /// inside the root, by `resolve`).
    pub fn symlink(&mut self, target: &[u8], path: &[u8]) -> Result<(), i64> {
        let (dir, name, _) = self.parent_of(path)?;
        let target = CString::new(target).map_err(|_| EINVAL)?;
        // SAFETY: NUL-terminated strings and a directory fd we own.
        if unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// The attributes calls (chown, chmod, utimensat) on `path`, resolved inside the root
    /// (`follow`: through a final symlink, else on the symlink itself), acting through the
    /// resolved descriptor's /proc/self/fd link so they touch exactly that inode.
    pub fn set_attr(&mut self, path: &[u8], follow: bool, attr: Attr) -> Result<(), i64> {
        if self.readonly && self.tree(path).2 == Tree::Root {
            return Err(EROFS);
        }
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        let fd = self.resolve(path, libc::O_PATH | nofollow, 0)?;
        Self::apply(fd.as_raw_fd(), attr)
    }

    /// The same on an open file.
    pub fn set_attr_fd(&mut self, file: HostFile, attr: Attr) -> Result<(), i64> {
        let fd = self.fd(file)?;
        Self::apply(fd, attr)
    }

    /// Changes an attribute of the file open (O_PATH) at `fd`, through the descriptor itself
    /// (AT_EMPTY_PATH; a confined VMM has no /proc to name it by).
    fn apply(fd: RawFd, attr: Attr) -> Result<(), i64> {
        // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH names `fd` itself; the times
        // array (if any) is two valid timespecs.
        let r = unsafe {
            match attr {
                Attr::Owner(uid, gid) => {
                    libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH)
                }
                // fchmodat2 (Linux 6.6): fchmod and fchmodat refuse O_PATH descriptors.
                Attr::Mode(mode) => libc::syscall(
                    SYS_FCHMODAT2,
                    fd,
                    c"".as_ptr(),
                    mode & 0o7777,
                    libc::AT_EMPTY_PATH,
                ) as i32,
                Attr::Times(t) => {
                    libc::utimensat(fd, c"".as_ptr(), t.as_ptr(), libc::AT_EMPTY_PATH)
                }
            }
        };
        if r != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// ftruncate(2) of an open file (the host enforces that it was opened for writing).
    pub fn truncate(&mut self, file: HostFile, len: u64) -> Result<(), i64> {
        let fd = self.fd(file)?;
        // SAFETY: plain ftruncate on our descriptor.
        if unsafe { libc::ftruncate(fd, len as i64) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// fallocate(2), `mode` checked by the kernel.
    pub fn allocate(
        &mut self,
        file: HostFile,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> Result<(), i64> {
        let fd = self.fd(file)?;
        let (offset, len) = (
            i64::try_from(offset).map_err(|_| EINVAL)?,
            i64::try_from(len).map_err(|_| EINVAL)?,
        );
        // SAFETY: plain fallocate on our descriptor.
        if unsafe { libc::fallocate(fd, mode, offset, len) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// fsync(2)/fdatasync(2).
    pub fn sync(&mut self, file: HostFile, data_only: bool) -> Result<(), i64> {
        let fd = self.fd(file)?;
        // SAFETY: plain fsync on our descriptor.
        let r = unsafe {
            if data_only {
                libc::fdatasync(fd)
            } else {
                libc::fsync(fd)
            }
        };
        if r != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// statfs(2) of the file system holding `path` (inside the root), as Linux lays it out.
    pub fn statfs_path(&mut self, path: &[u8]) -> Result<[u8; 120], i64> {
        let fd = self.resolve(path, libc::O_PATH, 0)?;
        // SAFETY: fstatfs fills a zeroed struct statfs for a descriptor we own.
        let st = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::fstatfs(fd.as_raw_fd(), &mut st) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(5) as i64);
            }
            st
        };
        // SAFETY: struct statfs is plain data of exactly 120 bytes on x86-64 Linux.
        Ok(unsafe { std::mem::transmute::<libc::statfs, [u8; 120]>(st) })
    }

    pub fn stat_path(&mut self, path: &[u8], follow: bool) -> Result<RawStat, i64> {
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        let fd = self.resolve(path, libc::O_PATH | nofollow, 0)?;
        Self::fstat_raw(fd.as_raw_fd())
    }

    pub fn getdents(&mut self, file: HostFile, buf: &mut [u8]) -> Result<usize, i64> {
        let fd = self.fd(file)?;
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            Err(errno())
        } else {
            Ok(n as usize)
        }
    }

    pub fn readlink(&mut self, path: &[u8]) -> Result<Vec<u8>, i64> {
        let fd = self.resolve(path, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let mut buf = vec![0u8; 4096];
        let empty = c"";
        // SAFETY: an empty path with an O_PATH descriptor of a symlink reads that link.
        let n = unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                empty.as_ptr(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
            )
        };
        if n < 0 {
            return Err(errno());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Reads a whole file of the root (the program image), confined like every other open.
    pub fn read_all(&mut self, path: &[u8]) -> Result<Vec<u8>, i64> {
        let fd = self.resolve(path, libc::O_RDONLY, 0)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            // SAFETY: buf is a valid writable buffer.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len()) };
            if n < 0 {
                return Err(errno());
            }
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }
}
