//! Guest memory and the app's page tables.
//!
//! Guest-physical memory is one anonymous mapping registered as one KVM slot (lazily backed:
//! an idle container costs only the pages it touched). Pages are handed out by a bump
//! allocator; page tables are built here, in guest memory that no guest-virtual address maps,
//! so the app can never read or write them. Only not-present -> present changes are made to
//! live tables: this host's shadow MMU does not see a host write to a present entry.
//!
//! Each process has an address space of its own: a root table whose user half (entries
//! 0-255) is its own and whose kernel half (256-511: descriptor tables, the syscall stub and
//! mailbox) points at the tables every root shares. A released space gives its data pages
//! back (zeroed when reused); its table pages are never reused, because the shadow MMU may
//! still hold them as page tables and would not see new contents written from the host.
//!
//! A few user-half pages belong to the VM, not to a space (the jump slots of patched syscall
//! sites, `patch.rs`): their entries carry the [`SHARED`] bit, a fork maps the same page
//! instead of copying it, a released space does not give it back, and qkernel's writes on
//! the app's behalf cannot reach it. Pages of the app's shared anonymous mappings
//! (`MAP_SHARED | MAP_ANONYMOUS`) carry [`COUNTED`]: a fork maps the same page too, and the
//! page is given back when the last space that maps it is released.

use std::io;
use std::ptr::NonNull;

use qkernel::{Fault, PageFlags};

pub const PAGE: u64 = 4096;
const P: u64 = 1;
const W: u64 = 2;
const U: u64 = 4;
const NX: u64 = 1 << 63;
/// A bit the MMU ignores (one of the leaf's "available" bits): the page is the VM's, shared
/// by every space that maps it.
const SHARED: u64 = 1 << 9;
/// Another ignored bit: the page is shared by the spaces that map it (a shared anonymous
/// mapping and its forks), counted in [`GuestMemory::sharers`].
const COUNTED: u64 = 1 << 10;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// A page-directory entry that maps a 2 MiB page rather than a table.
const PS: u64 = 1 << 7;
pub const HUGE_PAGE: u64 = 2 << 20;

pub struct GuestMemory {
    ptr: NonNull<u8>,
    size: u64,
    next_free: u64,
    /// The root of the address space accesses go through (the running process's).
    pub pml4: u64,
    /// The first root, whose kernel half every later root shares.
    kernel_root: u64,
    /// Data pages of released spaces, ready to be zeroed and reused.
    free: Vec<u64>,
    /// Table pages of released spaces, kept out of use for good (see the module doc).
    retired_tables: u64,
    /// How many spaces map each [`COUNTED`] page.
    sharers: std::collections::HashMap<u64, u32>,
}

// SAFETY: the mapping is owned by this struct; the vCPU thread is its only user.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Reserves `size` bytes of guest-physical memory (no host memory until touched).
    pub fn new(size: u64) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; nothing else aliases it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p as *mut u8).ok_or_else(|| io::Error::other("mmap gave null"))?;
        let mut mem = GuestMemory {
            ptr,
            size,
            // Guest-physical page 0 stays unused, so a zero entry never looks like a table.
            next_free: PAGE,
            pml4: 0,
            kernel_root: 0,
            free: Vec::new(),
            retired_tables: 0,
            sharers: std::collections::HashMap::new(),
        };
        mem.pml4 = mem
            .alloc_page()
            .map_err(|_| io::Error::other("guest memory too small"))?;
        mem.kernel_root = mem.pml4;
        Ok(mem)
    }

    pub fn host_address(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of guest-physical memory handed out so far.
    pub fn used(&self) -> u64 {
        self.next_free
    }

    /// Bytes of guest-physical memory holding table pages of released spaces.
    pub fn retired_tables(&self) -> u64 {
        self.retired_tables * PAGE
    }

    fn alloc_page(&mut self) -> Result<u64, Fault> {
        if let Some(gpa) = self.free.pop() {
            let p = self.phys(gpa, PAGE).ok_or(Fault { addr: 0 })?;
            // SAFETY: one whole page inside the mapping; a reused page must read as zero.
            unsafe { std::ptr::write_bytes(p, 0, PAGE as usize) };
            return Ok(gpa);
        }
        if self.next_free + PAGE > self.size {
            return Err(Fault { addr: 0 });
        }
        let gpa = self.next_free;
        self.next_free += PAGE;
        Ok(gpa) // fresh anonymous memory is zero
    }

    /// A new address space with an empty user half; accesses still go to the current one.
    pub fn new_space(&mut self) -> Result<u64, Fault> {
        let root = self.alloc_page()?;
        for i in 256..512 {
            let e = self.entry(self.kernel_root + i * 8);
            self.set_entry(root + i * 8, e);
        }
        Ok(root)
    }

    /// The present user leaves of `root`: (virtual address, entry).
    fn user_leaves(&self, root: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let table_of = |e: u64| (e & P != 0).then_some(e & ADDR);
        for i4 in 0..256u64 {
            let Some(pdpt) = table_of(self.entry(root + i4 * 8)) else {
                continue;
            };
            for i3 in 0..512u64 {
                let Some(pd) = table_of(self.entry(pdpt + i3 * 8)) else {
                    continue;
                };
                for i2 in 0..512u64 {
                    let Some(pt) = table_of(self.entry(pd + i2 * 8)) else {
                        continue;
                    };
                    for i1 in 0..512u64 {
                        let e = self.entry(pt + i1 * 8);
                        if e & P != 0 {
                            let va = (i4 << 39) | (i3 << 30) | (i2 << 21) | (i1 << 12);
                            out.push((va, e));
                        }
                    }
                }
            }
        }
        out
    }

    /// Bytes of the app's pages present in `[start, end)` of address space `root` (the VM's
    /// own shared pages left out).
    pub fn resident_bytes(&self, root: u64, start: u64, end: u64) -> u64 {
        let pages = self
            .user_leaves(root)
            .iter()
            .filter(|(va, e)| *va >= start && *va < end && e & SHARED == 0)
            .count() as u64;
        pages * PAGE
    }

    /// A copy of address space `src`: every user page copied into a page of its own (fork;
    /// the shadow MMU rules out copy-on-write, see the module doc).
    pub fn clone_space(&mut self, src: u64) -> Result<u64, Fault> {
        let root = self.new_space()?;
        let current = std::mem::replace(&mut self.pml4, root);
        let copied = (|| {
            for (va, e) in self.user_leaves(src) {
                let leaf = self.leaf(va, true)?.ok_or(Fault { addr: va })?;
                if e & SHARED != 0 {
                    self.set_entry(leaf, e); // the VM's page: the same one in the copy
                    continue;
                }
                if e & COUNTED != 0 {
                    // A shared mapping: the copy maps the same page.
                    *self.sharers.entry(e & ADDR).or_insert(1) += 1;
                    self.set_entry(leaf, e);
                    continue;
                }
                let gpa = self.alloc_page()?;
                let (from, to) = (
                    self.phys(e & ADDR, PAGE).ok_or(Fault { addr: va })?,
                    self.phys(gpa, PAGE).ok_or(Fault { addr: va })?,
                );
                // SAFETY: two distinct whole pages inside the mapping.
                unsafe { std::ptr::copy_nonoverlapping(from, to, PAGE as usize) };
                self.set_entry(leaf, gpa | (e & !ADDR));
            }
            Ok(())
        })();
        self.pml4 = current;
        if let Err(f) = copied {
            self.release_space(root);
            return Err(f);
        }
        Ok(root)
    }

    /// Gives back the pages of address space `root`, which no vCPU runs any more. The first
    /// root may go too (its process exec'd): only its user half is given back; the kernel
    /// half every root shares stays. Returns the [`COUNTED`] pages given back (no space maps
    /// them any more); they keep their contents until the next allocation, so the caller can
    /// still write a file's shared pages back (`pagecache.rs`).
    pub fn release_space(&mut self, root: u64) -> Vec<u64> {
        let mut last_counted = Vec::new();
        if root == self.pml4 {
            tracing::error!(root, "not releasing the address space in use");
            return last_counted;
        }
        let leaves = self.user_leaves(root);
        for (_, e) in &leaves {
            let gpa = e & ADDR;
            if e & SHARED != 0 {
                continue; // the VM's, for good
            }
            if e & COUNTED != 0 {
                let left = self.sharers.get_mut(&gpa).map(|n| {
                    *n = n.saturating_sub(1);
                    *n
                });
                if left.unwrap_or(0) > 0 {
                    continue; // another space still maps it
                }
                self.sharers.remove(&gpa);
                last_counted.push(gpa);
            }
            self.free.push(gpa);
        }
        // Count the tables retired with it: the root and every table under its user half.
        let mut tables = 1;
        for i4 in 0..256u64 {
            let e4 = self.entry(root + i4 * 8);
            if e4 & P == 0 {
                continue;
            }
            tables += 1;
            for i3 in 0..512u64 {
                let e3 = self.entry((e4 & ADDR) + i3 * 8);
                if e3 & P == 0 {
                    continue;
                }
                tables += 1;
                for i2 in 0..512u64 {
                    if self.entry((e3 & ADDR) + i2 * 8) & P != 0 {
                        tables += 1;
                    }
                }
            }
        }
        self.retired_tables += tables;
        last_counted
    }

    /// The host bytes of guest-physical `[gpa, gpa + len)`, bounds-checked.
    fn phys(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let end = gpa.checked_add(len)?;
        // SAFETY: [gpa, end) lies inside the mapping, checked just above.
        (end <= self.size).then(|| unsafe { self.ptr.as_ptr().add(gpa as usize) })
    }

    fn entry(&self, gpa: u64) -> u64 {
        // Table addresses come from our allocator (inside memory, 8-byte aligned).
        self.phys(gpa, 8)
            .map_or(0, |p| unsafe { (p as *const u64).read_volatile() })
    }

    fn set_entry(&self, gpa: u64, v: u64) {
        if let Some(p) = self.phys(gpa, 8) {
            // SAFETY: inside the mapping and aligned (see entry).
            unsafe { (p as *mut u64).write_volatile(v) }
        }
    }

    /// The address of `va`'s leaf entry, creating intermediate tables when asked.
    fn leaf(&mut self, va: u64, create: bool) -> Result<Option<u64>, Fault> {
        let mut table = self.pml4;
        for level in (1..4).rev() {
            let at = table + ((va >> (12 + 9 * level)) & 511) * 8;
            let e = self.entry(at);
            table = if e & P != 0 {
                e & ADDR
            } else if create {
                let t = self.alloc_page()?;
                self.set_entry(at, t | P | W | U);
                t
            } else {
                return Ok(None);
            };
        }
        Ok(Some(table + ((va >> 12) & 511) * 8))
    }

    /// Maps `va..va+len` (page aligned) to fresh pages for the app.
    pub fn map_user(&mut self, va: u64, len: u64, flags: PageFlags) -> Result<(), Fault> {
        self.map(va, len, flags, true)
    }

    /// Maps `va..va+len` to fresh pages that the spaces forked from this one will share
    /// (a `MAP_SHARED | MAP_ANONYMOUS` mapping) rather than copy.
    pub fn map_user_shared(&mut self, va: u64, len: u64, flags: PageFlags) -> Result<(), Fault> {
        self.map_bits(va, len, flags, true, COUNTED)
    }

    /// Maps the [`COUNTED`] page `gpa` (one of [`Self::map_user_shared`]'s, still mapped by
    /// some space) at `va` in the current space too: one more space shares it. Fails if `va`
    /// is mapped already or `gpa` is not a counted page.
    pub fn map_user_counted(&mut self, va: u64, gpa: u64, flags: PageFlags) -> Result<(), Fault> {
        if va % PAGE != 0 || !self.sharers.contains_key(&gpa) {
            return Err(Fault { addr: va });
        }
        let leaf = self.leaf(va, true)?.ok_or(Fault { addr: va })?;
        if self.entry(leaf) & P != 0 {
            return Err(Fault { addr: va });
        }
        let mut bits = P | U | COUNTED;
        if flags.write {
            bits |= W;
        }
        if !flags.exec {
            bits |= NX;
        }
        self.set_entry(leaf, gpa | bits);
        *self.sharers.entry(gpa).or_insert(0) += 1;
        Ok(())
    }

    /// The [`COUNTED`] pages mapped in `[va, va + len)` of the current space: (virtual
    /// address, guest-physical page).
    pub fn counted_pages(&self, va: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut page = va & !(PAGE - 1);
        while page < va.saturating_add(len) {
            if let Some(e) = self.leaf_entry(page) {
                if e & COUNTED != 0 {
                    out.push((page, e & ADDR));
                }
            }
            page += PAGE;
        }
        out
    }

    /// Copies `buf.len()` bytes of guest-physical page `gpa` from `offset` into `buf`.
    pub fn read_page(&self, gpa: u64, offset: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let p = self.page_bytes(gpa, offset, buf.len())?;
        // SAFETY: p covers buf.len() bytes inside one page of the mapping (page_bytes).
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into guest-physical page `gpa` at `offset`.
    pub fn write_page(&mut self, gpa: u64, offset: u64, data: &[u8]) -> Result<(), Fault> {
        let p = self.page_bytes(gpa, offset, data.len())?;
        // SAFETY: p covers data.len() bytes inside one page of the mapping (page_bytes).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// The host address of `[gpa + offset, gpa + offset + len)`, which must lie in one page.
    fn page_bytes(&self, gpa: u64, offset: u64, len: usize) -> Result<*mut u8, Fault> {
        let fault = Fault { addr: gpa };
        if gpa % PAGE != 0 || offset.saturating_add(len as u64) > PAGE {
            return Err(fault);
        }
        self.phys(gpa + offset, len as u64).ok_or(fault)
    }

    /// Maps pages only supervisor code may touch (descriptor tables).
    pub fn map_supervisor(&mut self, va: u64, len: u64) -> Result<(), Fault> {
        let rw = PageFlags {
            write: true,
            exec: false,
        };
        self.map(va, len, rw, false)
    }

    fn map(&mut self, va: u64, len: u64, flags: PageFlags, user: bool) -> Result<(), Fault> {
        self.map_bits(va, len, flags, user, 0)
    }

    fn map_bits(
        &mut self,
        va: u64,
        len: u64,
        flags: PageFlags,
        user: bool,
        extra: u64,
    ) -> Result<(), Fault> {
        if va % PAGE != 0 || len % PAGE != 0 {
            return Err(Fault { addr: va });
        }
        let mut bits = P | extra | if user { U } else { 0 };
        if flags.write {
            bits |= W;
        }
        if !flags.exec {
            bits |= NX;
        }
        let mut page = va;
        while page < va + len {
            let leaf = self.leaf(page, true)?.ok_or(Fault { addr: page })?;
            if self.entry(leaf) & P != 0 {
                return Err(Fault { addr: page });
            }
            let gpa = self.alloc_page()?;
            self.set_entry(leaf, gpa | bits);
            if extra & COUNTED != 0 {
                self.sharers.insert(gpa, 1);
            }
            page += PAGE;
        }
        Ok(())
    }

    /// Fresh pages that belong to the VM rather than to one space, for [`Self::map_shared`].
    pub fn alloc_shared(&mut self, pages: u64) -> Result<Vec<u64>, Fault> {
        (0..pages).map(|_| self.alloc_page()).collect()
    }

    /// Maps the VM's pages `gpas` (from [`Self::alloc_shared`]) at `va` in the current space,
    /// user-readable and read-only (the app cannot write them, nor qkernel for it). Fails if
    /// any page there is mapped already.
    pub fn map_shared(&mut self, va: u64, gpas: &[u64]) -> Result<(), Fault> {
        let pages = || (0..gpas.len() as u64).map(|i| va + i * PAGE);
        // All or nothing: a page of the app's in the range leaves the range alone.
        if let Some(taken) = pages().find(|p| self.leaf_entry(*p).is_some()) {
            return Err(Fault { addr: taken });
        }
        for (page, gpa) in pages().zip(gpas) {
            let leaf = self.leaf(page, true)?.ok_or(Fault { addr: page })?;
            self.set_entry(leaf, gpa | P | U | NX | SHARED);
        }
        Ok(())
    }

    /// Whether `va` maps the VM's shared page `gpa` in the current space.
    pub fn maps_shared(&self, va: u64, gpa: u64) -> bool {
        self.leaf_entry(va)
            .is_some_and(|e| e & SHARED != 0 && e & ADDR == gpa)
    }

    /// The present leaf entry of `va` in the current space (none for the 2 MiB pages of a
    /// window: those are not guest memory, see [`Self::map_window`]).
    fn leaf_entry(&self, va: u64) -> Option<u64> {
        let mut table = self.pml4;
        for level in (1..4).rev() {
            let e = self.entry(table + ((va >> (12 + 9 * level)) & 511) * 8);
            if e & P == 0 || e & PS != 0 {
                return None;
            }
            table = e & ADDR;
        }
        let e = self.entry(table + ((va >> 12) & 511) * 8);
        (e & P != 0).then_some(e)
    }

    /// Makes the kernel-half table that maps `va` now, in the first root, so every space
    /// made from here on shares what is later mapped under it ([`Self::map_window`]); roots
    /// copy the kernel half's top entries when they are made.
    pub fn share_kernel_table(&mut self, va: u64) -> Result<(), Fault> {
        if va < 1 << 63 {
            return Err(Fault { addr: va });
        }
        self.walk(self.kernel_root, va, 1).map(|_| ())
    }

    /// Maps `[va, va + len)` of the kernel half, user-visible, to guest-physical
    /// `[gpa, gpa + len)` outside guest memory (another KVM slot: the socket rings qvisor's
    /// stub reads), in 2 MiB pages when `huge`. qkernel never reaches these through
    /// [`Self::translate`]: their frames are not guest memory. The table under `va`'s top
    /// entry must have been shared first ([`Self::share_kernel_table`]).
    pub fn map_window(
        &mut self,
        va: u64,
        gpa: u64,
        len: u64,
        write: bool,
        huge: bool,
    ) -> Result<(), Fault> {
        let page = if huge { HUGE_PAGE } else { PAGE };
        let fault = Fault { addr: va };
        if va < 1 << 63 || va % page != 0 || gpa % page != 0 || len % page != 0 {
            return Err(fault);
        }
        if gpa.checked_add(len).is_none() || gpa < self.size {
            return Err(fault);
        }
        if self.entry(self.kernel_root + ((va >> 39) & 511) * 8) & P == 0 {
            return Err(fault);
        }
        let bits = P | U | NX | if write { W } else { 0 } | if huge { PS } else { 0 };
        let mut off = 0;
        while off < len {
            let at = self.walk(self.kernel_root, va + off, if huge { 2 } else { 3 })?;
            if self.entry(at) & P != 0 {
                return Err(Fault { addr: va + off });
            }
            self.set_entry(at, (gpa + off) | bits);
            off += page;
        }
        Ok(())
    }

    /// The address of `va`'s entry `depth` levels below `root` (1: in the PDPT, 2: the page
    /// directory, 3: the page table), making missing tables on the way.
    fn walk(&mut self, root: u64, va: u64, depth: u32) -> Result<u64, Fault> {
        let mut table = root;
        for level in ((4 - depth)..4).rev() {
            let at = table + ((va >> (12 + 9 * level)) & 511) * 8;
            let e = self.entry(at);
            table = if e & P != 0 && e & PS == 0 {
                e & ADDR
            } else if e & P != 0 {
                return Err(Fault { addr: va });
            } else {
                let t = self.alloc_page()?;
                self.set_entry(at, t | P | W | U);
                t
            };
        }
        Ok(table + ((va >> (12 + 9 * (3 - depth))) & 511) * 8)
    }

    /// Guest-physical address and user-visibility of a mapped `va`.
    pub fn translate(&self, va: u64) -> Option<(u64, bool)> {
        let e = self.leaf_entry(va)?;
        Some(((e & ADDR) + (va & (PAGE - 1)), e & U != 0))
    }

    /// The host address of a mapped page-aligned guest page (for the VMM's own shared pages).
    pub fn host_page(&self, va: u64) -> Option<*mut u8> {
        let (gpa, _) = self.translate(va)?;
        self.phys(gpa & !(PAGE - 1), PAGE)
    }

    /// Copies user-visible guest memory into `buf`.
    pub fn read_user(&self, va: u64, buf: &mut [u8]) -> Result<(), Fault> {
        // SAFETY: buf is valid for writes of its length and is not guest memory.
        unsafe { self.read_user_into(va, buf.as_mut_ptr(), buf.len()) }
    }

    /// [`GuestMemory::read_user`] into memory that is not a slice of ours: a qnet ring's
    /// transmit space, filled straight from the app's buffer. On a fault, the pages before it
    /// have been copied.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes for the length of the call, outside
    /// guest memory.
    pub unsafe fn read_user_into(&self, va: u64, dst: *mut u8, len: usize) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < len {
            let at = va.checked_add(done as u64).ok_or(Fault { addr: va })?;
            let (gpa, user) = self.translate(at).ok_or(Fault { addr: at })?;
            if !user {
                return Err(Fault { addr: at });
            }
            let n = ((PAGE - (at & (PAGE - 1))) as usize).min(len - done);
            let src = self.phys(gpa, n as u64).ok_or(Fault { addr: at })?;
            // SAFETY: src covers n bytes inside guest memory; dst[done..done+n] is writable
            // (the caller's promise) and outside it.
            unsafe { std::ptr::copy_nonoverlapping(src, dst.add(done), n) };
            done += n;
        }
        Ok(())
    }

    /// Copies `buf` into user-visible guest memory (write protection is the app's, not ours).
    pub fn write_user(&mut self, va: u64, buf: &[u8]) -> Result<(), Fault> {
        // SAFETY: buf is valid for reads of its length and is not guest memory.
        unsafe { self.write_any(va, buf.as_ptr(), buf.len(), true) }
    }

    /// [`GuestMemory::write_user`] from bytes that are not a slice of ours: a qnet ring's
    /// received data, copied straight into the app's buffer.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes for the length of the call, outside guest
    /// memory.
    pub unsafe fn write_user_from(
        &mut self,
        va: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), Fault> {
        // SAFETY: the caller's promise.
        unsafe { self.write_any(va, src, len, true) }
    }

    /// Writes memory the VMM owns: supervisor pages, and its own pages the app may only read.
    pub fn write_supervisor(&mut self, va: u64, buf: &[u8]) -> Result<(), Fault> {
        // SAFETY: as in write_user.
        unsafe { self.write_any(va, buf.as_ptr(), buf.len(), false) }
    }

    /// # Safety
    /// `src` is valid for reads of `len` bytes and does not overlap guest memory.
    unsafe fn write_any(
        &mut self,
        va: u64,
        src: *const u8,
        len: usize,
        user_only: bool,
    ) -> Result<(), Fault> {
        let mut done = 0usize;
        while done < len {
            let at = va.checked_add(done as u64).ok_or(Fault { addr: va })?;
            let e = self.leaf_entry(at).ok_or(Fault { addr: at })?;
            // A shared page is the VM's: no write on the app's behalf may reach it.
            if user_only && (e & U == 0 || e & SHARED != 0) {
                return Err(Fault { addr: at });
            }
            let gpa = (e & ADDR) + (at & (PAGE - 1));
            let n = ((PAGE - (at & (PAGE - 1))) as usize).min(len - done);
            let dst = self.phys(gpa, n as u64).ok_or(Fault { addr: at })?;
            // SAFETY: dst covers n bytes inside guest memory; src[done..done+n] is readable
            // (the caller's promise) and outside it.
            unsafe { std::ptr::copy_nonoverlapping(src.add(done), dst, n) };
            done += n;
        }
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in new(); the VM using it is dropped first.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: PageFlags = PageFlags {
        write: true,
        exec: false,
    };

    #[test]
    fn maps_translates_and_refuses_double_maps_and_supervisor_pages() {
        let mut m = GuestMemory::new(16 << 20).unwrap();
        m.map_user(0x40_0000, 2 * PAGE, RW).unwrap();
        assert_eq!(
            m.map_user(0x40_1000, PAGE, RW),
            Err(Fault { addr: 0x40_1000 })
        );
        m.write_user(0x40_0ffe, b"abcd").unwrap();
        let mut b = [0u8; 4];
        m.read_user(0x40_0ffe, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        assert!(m.read_user(0x40_2000, &mut b).is_err(), "unmapped");
        assert!(m.read_user(u64::MAX - 1, &mut b).is_err(), "wraps");
        m.map_supervisor(0xffff_ff00_0000_0000, PAGE).unwrap();
        assert!(
            m.read_user(0xffff_ff00_0000_0000, &mut b).is_err(),
            "U=0 is not user memory"
        );
    }

    #[test]
    fn a_cloned_space_is_a_private_copy_and_released_pages_come_back_zeroed() {
        let mut m = GuestMemory::new(16 << 20).unwrap();
        m.map_supervisor(0xffff_ff00_0000_0000, PAGE).unwrap();
        m.map_user(0x40_0000, 2 * PAGE, RW).unwrap();
        m.write_user(0x40_0000, b"parent").unwrap();
        let parent = m.pml4;
        let child = m.clone_space(parent).unwrap();
        m.pml4 = child;
        let mut b = [0u8; 6];
        m.read_user(0x40_0000, &mut b).unwrap();
        assert_eq!(&b, b"parent");
        m.write_user(0x40_0000, b"child!").unwrap();
        assert!(
            m.translate(0xffff_ff00_0000_0000).is_some(),
            "kernel half shared"
        );
        m.pml4 = parent;
        m.read_user(0x40_0000, &mut b).unwrap();
        assert_eq!(&b, b"parent", "the parent's page is its own");
        m.release_space(child);
        assert!(m.retired_tables() >= 4 * PAGE);
        // The child's two pages come back, zeroed.
        let fresh = m.new_space().unwrap();
        m.pml4 = fresh;
        m.map_user(0x80_0000, PAGE, RW).unwrap();
        m.read_user(0x80_0000, &mut b).unwrap();
        assert_eq!(b, [0; 6]);
    }

    #[test]
    fn a_shared_page_is_the_same_in_a_fork_outlives_spaces_and_is_not_the_apps_to_write() {
        let mut m = GuestMemory::new(16 << 20).unwrap();
        let pages = m.alloc_shared(2).unwrap();
        m.map_user(0x40_0000, PAGE, RW).unwrap();
        assert!(m.map_shared(0x3f_f000, &pages).is_err(), "overlaps a page");
        assert!(m.translate(0x3f_f000).is_none(), "all or nothing");
        m.map_shared(0x80_0000, &pages).unwrap();
        assert!(m.maps_shared(0x80_0000, pages[0]));
        m.write_supervisor(0x80_0000, b"vm").unwrap();
        assert!(m.write_user(0x80_0000, b"app").is_err());
        let parent = m.pml4;
        let child = m.clone_space(parent).unwrap();
        m.pml4 = child;
        assert!(
            m.maps_shared(0x80_1000, pages[1]),
            "the same page in the fork"
        );
        let mut b = [0u8; 2];
        m.read_user(0x80_0000, &mut b).unwrap();
        assert_eq!(&b, b"vm");
        m.pml4 = parent;
        m.release_space(child);
        assert!(!m.free.contains(&pages[0]), "not given back with a space");
    }

    #[test]
    fn a_shared_mapping_is_one_page_for_its_forks_and_freed_with_the_last_of_them() {
        let mut m = GuestMemory::new(16 << 20).unwrap();
        m.map_user_shared(0x40_0000, PAGE, RW).unwrap();
        m.map_user(0x50_0000, PAGE, RW).unwrap();
        let parent = m.pml4;
        let child = m.clone_space(parent).unwrap();
        m.pml4 = child;
        m.write_user(0x40_0000, b"shared").unwrap();
        m.write_user(0x50_0000, b"child!").unwrap();
        m.pml4 = parent;
        let mut b = [0u8; 6];
        m.read_user(0x40_0000, &mut b).unwrap();
        assert_eq!(&b, b"shared", "the child's write is the parent's too");
        m.read_user(0x50_0000, &mut b).unwrap();
        assert_eq!(b, [0; 6], "private memory stays private");
        let (shared, _) = m.translate(0x40_0000).unwrap();
        m.release_space(child);
        assert!(!m.free.contains(&shared), "the parent still maps it");
        let other = m.new_space().unwrap();
        m.pml4 = other;
        m.release_space(parent);
        assert!(m.free.contains(&shared), "given back with the last space");
        assert!(m.sharers.is_empty());
    }

    #[test]
    fn running_out_of_memory_is_an_error() {
        let mut m = GuestMemory::new(64 * PAGE).unwrap();
        assert!(m.map_user(0x40_0000, 128 * PAGE, RW).is_err());
    }
}
