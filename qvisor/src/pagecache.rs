//! Shared file pages: the page cache of the app's `MAP_SHARED` file mappings.
//!
//! A page of a file mapped shared is one guest-physical page for every mapping of it in the
//! container (any process, any descriptor, forks included), so processes see each other's
//! stores at once, as on Linux. While mapped, that page *is* the file's data: `read`/`pread`
//! of the file see it, `write`/`pwrite` and `ftruncate` change it too, and it is written back
//! to the host file on `msync`, `munmap`, `fsync`, when the last process mapping it goes and
//! when the VM ends. Private file mappings (a library's code and data) keep copies of their
//! own: docs/qvisor.md, "Memory", says why.
//!
//! Pages are the memory's [`COUNTED`](crate::memory) pages; this module only remembers which
//! file page each one holds, and keeps a descriptor of each file for writing back (the app may
//! close its own right after `mmap`).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use qkernel::PageFlags;

use crate::memory::{GuestMemory, PAGE};

/// A host file: device and inode number.
type InodeKey = (u64, u64);

/// A cached page: its file, its index in the file, its guest-physical page.
type FilePage = (InodeKey, u64, u64);

const ENOMEM: i64 = 12;
const EIO: i64 = 5;
const ENFILE: i64 = 23;

/// Most files with shared pages at once: each holds a descriptor of the VMM's, which a guest
/// mapping and closing file after file must not exhaust (as RootFs caps open files).
const MAX_FILES: usize = 4096;

struct Inode {
    /// A descriptor of the file (the most capable one the app mapped it through).
    fd: OwnedFd,
    /// `fd` may write: some mapping may have changed pages, which go back to the file.
    writable: bool,
    /// File page index -> guest-physical page.
    pages: BTreeMap<u64, u64>,
}

#[derive(Default)]
pub struct SharedFilePages {
    inodes: HashMap<InodeKey, Inode>,
    /// Guest-physical page -> the file page it holds.
    owners: HashMap<u64, (InodeKey, u64)>,
    /// The file of each open descriptor asked about, so a read or write of a file with no
    /// pages costs no fstat after the first (forgotten when the descriptor closes).
    fd_files: HashMap<RawFd, InodeKey>,
}

fn last_errno() -> i64 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .map_or(EIO, i64::from)
}

/// (device, inode, size) of an open host file.
fn identify(fd: RawFd) -> Result<(InodeKey, u64), i64> {
    // SAFETY: libc::stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid stat buffer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(last_errno());
    }
    Ok(((st.st_dev, st.st_ino), st.st_size.max(0) as u64))
}

impl SharedFilePages {
    /// Whether no file page is mapped shared (the common case: file I/O pays nothing).
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Whether reads of the file open as `fd` must see its pages: some mapping of it may
    /// write them (pages only ever read equal the file, which writes keep them equal to).
    pub fn reads_through(&mut self, fd: RawFd) -> bool {
        self.cached_inode(fd).is_some_and(|i| i.writable)
    }

    /// Whether writes to the file open as `fd` must reach its pages (it has some).
    pub fn writes_through(&mut self, fd: RawFd) -> bool {
        self.cached_inode(fd).is_some()
    }

    /// The descriptor `fd` closes: its number may name another file next.
    pub fn forget_fd(&mut self, fd: RawFd) {
        self.fd_files.remove(&fd);
    }

    /// The cached pages of the file open as `fd`, if it has any, identified once per
    /// descriptor.
    fn cached_inode(&mut self, fd: RawFd) -> Option<&Inode> {
        if self.is_empty() {
            return None;
        }
        let key = match self.fd_files.get(&fd) {
            Some(key) => *key,
            None => {
                let (key, _) = identify(fd).ok()?;
                self.fd_files.insert(fd, key);
                key
            }
        };
        self.inodes.get(&key)
    }

    /// Maps `[va, va + len)` (page aligned, not mapped yet) to the shared pages of the file
    /// open as `fd` from `offset` (page aligned); a page no one maps yet is read from the file
    /// (zeros past its end). `fd_writable`: the app opened it for writing.
    pub fn map(
        &mut self,
        mem: &mut GuestMemory,
        fd: RawFd,
        fd_writable: bool,
        (va, len, offset): (u64, u64, u64),
        flags: PageFlags,
    ) -> Result<(), i64> {
        let (key, _) = identify(fd)?;
        let needs_fd = self
            .inodes
            .get(&key)
            .is_none_or(|inode| fd_writable && !inode.writable);
        if needs_fd && !self.inodes.contains_key(&key) && self.inodes.len() >= MAX_FILES {
            return Err(ENFILE);
        }
        if needs_fd {
            // SAFETY: dup of a descriptor open in this process; the new one is ours alone.
            let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return Err(last_errno());
            }
            // SAFETY: dup is a fresh descriptor nothing else owns.
            let dup = unsafe { OwnedFd::from_raw_fd(dup) };
            match self.inodes.get_mut(&key) {
                // Mapped before through a read-only descriptor: this one can write back.
                Some(inode) => {
                    inode.fd = dup;
                    inode.writable = true;
                }
                None => {
                    let inode = Inode {
                        fd: dup,
                        writable: fd_writable,
                        pages: BTreeMap::new(),
                    };
                    self.inodes.insert(key, inode);
                }
            }
        }
        let mapped = self.map_pages(mem, key, (va, len, offset), flags);
        if self.inodes.get(&key).is_some_and(|i| i.pages.is_empty()) {
            self.inodes.remove(&key);
        }
        mapped
    }

    fn map_pages(
        &mut self,
        mem: &mut GuestMemory,
        key: InodeKey,
        (va, len, offset): (u64, u64, u64),
        flags: PageFlags,
    ) -> Result<(), i64> {
        let first = offset / PAGE;
        let mut buf = vec![0u8; PAGE as usize];
        for i in 0..len / PAGE {
            let (page_va, index) = (va + i * PAGE, first + i);
            let inode = self.inodes.get_mut(&key).ok_or(EIO)?;
            if let Some(&gpa) = inode.pages.get(&index) {
                mem.map_user_counted(page_va, gpa, flags)
                    .map_err(|_| ENOMEM)?;
                continue;
            }
            mem.map_user_shared(page_va, PAGE, flags)
                .map_err(|_| ENOMEM)?;
            let (gpa, _) = mem.translate(page_va).ok_or(ENOMEM)?;
            inode.pages.insert(index, gpa);
            self.owners.insert(gpa, (key, index));
            // SAFETY: buf is a writable buffer of PAGE bytes.
            let n = unsafe {
                libc::pread(
                    inode.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    (index * PAGE) as i64,
                )
            };
            if n < 0 {
                return Err(last_errno());
            }
            mem.write_page(gpa, 0, &buf[..n as usize])
                .map_err(|_| EIO)?;
        }
        Ok(())
    }

    /// Writes the shared file pages mapped in `[va, va + len)` of the current space back to
    /// their files (msync, munmap).
    pub fn write_back_range(&mut self, mem: &GuestMemory, va: u64, len: u64) -> Result<(), i64> {
        if self.is_empty() {
            return Ok(());
        }
        let pages: Vec<FilePage> = mem
            .counted_pages(va, len)
            .into_iter()
            .filter_map(|(_, gpa)| self.owners.get(&gpa).map(|&(key, index)| (key, index, gpa)))
            .collect();
        self.write_back(mem, &pages)
    }

    /// Writes every shared page of the file open as `fd` back to it (fsync).
    pub fn write_back_file(&mut self, mem: &GuestMemory, fd: RawFd) -> Result<(), i64> {
        if self.is_empty() {
            return Ok(());
        }
        let (key, _) = identify(fd)?;
        let pages: Vec<FilePage> = match self.inodes.get(&key) {
            Some(inode) => inode.pages.iter().map(|(&i, &g)| (key, i, g)).collect(),
            None => return Ok(()),
        };
        self.write_back(mem, &pages)
    }

    /// Writes every shared page back (the VM ends).
    pub fn write_back_all(&mut self, mem: &GuestMemory) {
        let pages: Vec<FilePage> = self
            .owners
            .iter()
            .map(|(&gpa, &(key, index))| (key, index, gpa))
            .collect();
        let _ = self.write_back(mem, &pages); // logged
    }

    /// Pages no space maps any more (from [`GuestMemory::release_space`], before anything
    /// else is allocated): written back and forgotten; a file with none left is closed.
    pub fn released(&mut self, mem: &GuestMemory, gpas: &[u64]) {
        // Shared anonymous memory has no owner here.
        let pages: Vec<FilePage> = gpas
            .iter()
            .filter_map(|gpa| self.owners.get(gpa).map(|&(key, index)| (key, index, *gpa)))
            .collect();
        let _ = self.write_back(mem, &pages); // logged
        for (key, index, gpa) in pages {
            self.owners.remove(&gpa);
            if let Some(inode) = self.inodes.get_mut(&key) {
                inode.pages.remove(&index);
                if inode.pages.is_empty() {
                    self.inodes.remove(&key);
                }
            }
        }
    }

    /// Copies the shared pages of `fd`'s file over what a read of `buf.len()` bytes at
    /// `offset` got from the host file: while mapped, the pages are the file's data.
    pub fn read_through(&mut self, mem: &GuestMemory, fd: RawFd, offset: u64, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        let Some(inode) = self.cached_inode(fd) else {
            return;
        };
        for (start, (from, to)) in overlaps(inode, offset, buf.len()) {
            let _ = mem.read_page(start.1, start.0, &mut buf[from..to]);
        }
    }

    /// Copies what a write of `data` at `offset` put into `fd`'s file into its shared pages.
    pub fn write_through(&mut self, mem: &mut GuestMemory, fd: RawFd, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let Some(inode) = self.cached_inode(fd) else {
            return;
        };
        for (start, (from, to)) in overlaps(inode, offset, data.len()) {
            let _ = mem.write_page(start.1, start.0, &data[from..to]);
        }
    }

    /// The file of `fd` was truncated to `len`: its shared pages read as zeros past the end
    /// (as Linux's do when the file grows again).
    pub fn truncated(&mut self, mem: &mut GuestMemory, fd: RawFd, len: u64) {
        let Some(inode) = self.cached_inode(fd) else {
            return;
        };
        let zeros = [0u8; PAGE as usize];
        for (&index, &gpa) in inode.pages.range(len / PAGE..) {
            let from = len.saturating_sub(index * PAGE).min(PAGE);
            let _ = mem.write_page(gpa, from, &zeros[from as usize..]);
        }
    }

    /// A range of `fd`'s file became zeros (a hole punched, a range zeroed): so do the
    /// shared pages over it.
    pub fn zeroed(&mut self, mem: &mut GuestMemory, fd: RawFd, offset: u64, len: u64) {
        let Some(inode) = self.cached_inode(fd) else {
            return;
        };
        let zeros = [0u8; PAGE as usize];
        let end = offset.saturating_add(len);
        for (&index, &gpa) in inode.pages.range(offset / PAGE..end.div_ceil(PAGE)) {
            let page = index * PAGE;
            let (from, to) = (offset.max(page) - page, end.min(page + PAGE) - page);
            let _ = mem.write_page(gpa, from, &zeros[from as usize..to as usize]);
        }
    }

    /// Writes `pages` back to their files, each up to its file's end (a mapping cannot grow a
    /// file; one fstat a file, not a page). Every page is tried; the first error is returned.
    fn write_back(&self, mem: &GuestMemory, pages: &[FilePage]) -> Result<(), i64> {
        let mut sizes: HashMap<InodeKey, u64> = HashMap::new();
        let mut result = Ok(());
        for &(key, index, gpa) in pages {
            let Some(inode) = self.inodes.get(&key) else {
                continue;
            };
            if !inode.writable {
                continue; // mapped read-only everywhere: nothing can have changed
            }
            let size = match sizes.get(&key) {
                Some(&size) => size,
                None => match identify(inode.fd.as_raw_fd()) {
                    Ok((_, size)) => *sizes.entry(key).or_insert(size),
                    Err(e) => {
                        result = result.and(Err(e));
                        continue;
                    }
                },
            };
            result = result.and(write_page_back(mem, inode, index, gpa, size));
        }
        result
    }
}

/// Writes file page `index` (guest-physical `gpa`) of `inode`, whose file is `size` bytes,
/// back to the file.
fn write_page_back(
    mem: &GuestMemory,
    inode: &Inode,
    index: u64,
    gpa: u64,
    size: u64,
) -> Result<(), i64> {
    let start = index * PAGE;
    if start >= size {
        return Ok(());
    }
    let n = (size - start).min(PAGE) as usize;
    let mut buf = vec![0u8; n];
    mem.read_page(gpa, 0, &mut buf).map_err(|_| EIO)?;
    // SAFETY: buf is a readable buffer of n bytes.
    let w = unsafe {
        libc::pwrite(
            inode.fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            n,
            start as i64,
        )
    };
    if w < 0 || w as usize != n {
        let errno = if w < 0 { last_errno() } else { EIO };
        tracing::error!(index, errno, "writing a shared file page back failed");
        return Err(errno);
    }
    Ok(())
}

/// The cached pages of `inode` that `[offset, offset + len)` touches: ((offset in the page,
/// page), (from, to) in the caller's buffer).
fn overlaps(inode: &Inode, offset: u64, len: usize) -> Vec<((u64, u64), (usize, usize))> {
    let end = offset.saturating_add(len as u64);
    let first = offset / PAGE;
    let last = (end - 1) / PAGE;
    inode
        .pages
        .range(first..=last)
        .map(|(&index, &gpa)| {
            let page_start = index * PAGE;
            let lo = offset.max(page_start);
            let hi = end.min(page_start + PAGE);
            (
                (lo - page_start, gpa),
                ((lo - offset) as usize, (hi - offset) as usize),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    const RW: PageFlags = PageFlags {
        write: true,
        exec: false,
    };

    fn file_with(pages: &[u8]) -> std::fs::File {
        let mut f = tempfile_in_tmp();
        for &b in pages {
            f.write_all(&[b; PAGE as usize]).unwrap();
        }
        f
    }

    fn tempfile_in_tmp() -> std::fs::File {
        let path = std::env::temp_dir().join(format!(
            "qvisor-pagecache-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn contents(f: &mut std::fs::File) -> Vec<u8> {
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn two_spaces_map_one_page_which_goes_back_to_the_file_with_the_last_of_them() {
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        let mut pages = SharedFilePages::default();
        let mut f = file_with(b"ab");
        let fd = f.as_raw_fd();
        pages
            .map(&mut mem, fd, true, (0x40_0000, 2 * PAGE, 0), RW)
            .unwrap();
        let first = mem.pml4;
        let second = mem.new_space().unwrap();
        mem.pml4 = second;
        // The second space maps only the file's second page, elsewhere.
        pages
            .map(&mut mem, fd, true, (0x90_0000, PAGE, PAGE), RW)
            .unwrap();
        mem.write_user(0x90_0000, b"from the second").unwrap();
        mem.pml4 = first;
        let mut b = [0u8; 15];
        mem.read_user(0x40_1000, &mut b).unwrap();
        assert_eq!(&b, b"from the second", "one page for both");
        mem.read_user(0x40_0000, &mut b[..1]).unwrap();
        assert_eq!(b[0], b'a', "filled from the file");
        // read(2) sees the page; pwrite(2) reaches it.
        let mut read = [0u8; 15];
        pages.read_through(&mem, fd, PAGE, &mut read);
        assert_eq!(&read, b"from the second");
        pages.write_through(&mut mem, fd, PAGE + 5, b"THE");
        mem.read_user(0x40_1000, &mut b).unwrap();
        assert_eq!(&b, b"from THE second");
        assert_eq!(
            contents(&mut f)[PAGE as usize],
            b'b',
            "not written back yet"
        );
        // The first space goes: the page stays (the second maps it).
        let other = mem.new_space().unwrap();
        mem.pml4 = other;
        let last = mem.release_space(first);
        pages.released(&mem, &last);
        assert_eq!(pages.owners.len(), 1, "the second page is still mapped");
        let last = mem.release_space(second);
        pages.released(&mem, &last);
        assert!(
            pages.is_empty() && pages.inodes.is_empty(),
            "forgotten and closed"
        );
        let data = contents(&mut f);
        assert_eq!(data.len(), 2 * PAGE as usize, "never grown");
        assert_eq!(&data[PAGE as usize..PAGE as usize + 15], b"from THE second");
    }

    #[test]
    fn reads_pass_through_only_writable_mappings_and_a_reused_descriptor_names_its_new_file() {
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        let mut pages = SharedFilePages::default();
        let ro = PageFlags {
            write: false,
            exec: false,
        };
        let mapped = file_with(b"m");
        let fd = mapped.as_raw_fd();
        pages
            .map(&mut mem, fd, false, (0x40_0000, PAGE, 0), ro)
            .unwrap();
        assert!(
            pages.writes_through(fd),
            "writes reach read-only mappings' pages"
        );
        assert!(!pages.reads_through(fd), "pages only read equal the file");
        pages
            .map(&mut mem, fd, true, (0x50_0000, PAGE, 0), RW)
            .unwrap();
        assert!(
            pages.reads_through(fd),
            "a writable mapping's stores are the file's data"
        );
        // The descriptor closes and its number comes back for another file (dup2 onto it,
        // so no other test's descriptor can take the number in between).
        pages.forget_fd(fd);
        let other = file_with(b"o");
        // SAFETY: both descriptors are open and ours; `mapped` owns `fd` and closes it.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), fd) }, fd);
        assert!(!pages.writes_through(fd), "the new file has no pages");
        drop(mapped);
    }

    #[test]
    fn a_guest_cannot_make_the_vmm_hold_unbounded_descriptors() {
        let mut mem = GuestMemory::new(64 << 20).unwrap();
        let mut pages = SharedFilePages::default();
        let dir =
            std::env::temp_dir().join(format!("qvisor-pagecache-many-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ro = PageFlags {
            write: false,
            exec: false,
        };
        let mut refused = None;
        for i in 0..=MAX_FILES {
            let path = dir.join(i.to_string());
            std::fs::write(&path, b"x").unwrap();
            let f = std::fs::File::open(&path).unwrap();
            let va = 0x4000_0000 + i as u64 * PAGE;
            if let Err(e) = pages.map(&mut mem, f.as_raw_fd(), false, (va, PAGE, 0), ro) {
                refused = Some((i, e));
                break;
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(refused, Some((MAX_FILES, ENFILE)));
        assert_eq!(pages.inodes.len(), MAX_FILES);
    }

    #[test]
    fn read_only_mappings_never_write_and_truncation_zeroes_past_the_end() {
        let mut mem = GuestMemory::new(16 << 20).unwrap();
        let mut pages = SharedFilePages::default();
        let mut f = file_with(b"x");
        let fd = f.as_raw_fd();
        let ro = PageFlags {
            write: false,
            exec: false,
        };
        pages
            .map(&mut mem, fd, false, (0x40_0000, PAGE, 0), ro)
            .unwrap();
        // Only the VMM can store here (the app's page is read-only): nothing goes back.
        mem.write_user(0x40_0000, b"changed").unwrap();
        pages.write_back_range(&mem, 0x40_0000, PAGE).unwrap();
        assert_eq!(&contents(&mut f)[..7], b"xxxxxxx");
        pages.truncated(&mut mem, fd, 100);
        let mut b = [1u8; 2];
        mem.read_user(0x40_0000 + 99, &mut b).unwrap();
        assert_eq!(b, [b'x', 0]);
    }
}
