//! Socket reads and writes served in the guest's syscall stub: a `read(2)` of a connected TCP
//! socket whose receive ring holds data is copied from the ring into the app's buffer by the
//! stub itself, in guest user mode, without posting the call to a host thread or exiting; a
//! `write(2)` that fits its transmit ring is copied into the ring the same way. On this host a
//! polled call keeps two threads busy (the vCPU spinning in the stub while the syscall thread
//! copies); a bulk reader's calls were half of both cores (docs/benchmarks.md).
//!
//! What the guest sees (all in the kernel half every address space shares, user-visible):
//! - the ring region's slot table at [`SLOTS_VA`], read-write (the stub moves `rx_head`), a
//!   KVM memory slot over the client's mapping of those pages;
//! - a window of [`MAX_EXPOSED`] receive rings at [`RINGS_VA`], read-only, in 2 MiB pages
//!   of a second KVM memory slot over a host window of the same size. A socket's ring is
//!   mapped into a place of the window (the region's memfd, `MAP_FIXED`) only while a
//!   descriptor reads it fast, at most half the buffer budget's worth at once; the rest of
//!   the window is anonymous memory never written, so a read there gives zeros and costs no
//!   memory. A guest
//!   that reads the whole window so commits no more than that many rings of host memory,
//!   which the stack's grants bound anyway. (A window of every slot's ring, 4 GiB, made KVM
//!   spend 2.3 ms on the memory slot's metadata at every container's start.)
//! - beside it, a window of the same places' transmit rings at [`tx_rings_va`], read-write,
//!   through a third memory slot. A place not in use is anonymous memory the guest may
//!   write: at most the window's size (places x ring, a quarter of the buffer budget, as the
//!   stack's transmit grants) of host memory, given back when the place is next used.
//! - the descriptor table at [`poll::FAST_TABLE_VA`] (read-only): for each descriptor of the
//!   running process that qkernel offered (`qkernel/src/fastread.rs`), its slot + 1 (bits
//!   0-15), its ring's place in the window (16-30) and whether it blocks (31).
//!
//! The guest could always write anything into its own rings through qkernel's calls; what
//! it gains here is reading and writing its rings directly, and writing the words of its
//! slots.
//! Both are the container's own sockets: the stack already treats every word a client
//! writes as untrusted (docs/ring.md), and qnet-client adopts a moved `rx_head` only within
//! what the stack published. One process of the container can read the exposed rings of
//! another's sockets this way (docs/security.md).

use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use kvm_ioctls::{Cap, Kvm, VmFd};
use qnet_client::Client;

use crate::memory::{GuestMemory, HUGE_PAGE, PAGE};
use crate::poll::{self, Mailbox};

/// Where the slot table appears in the guest.
pub const SLOTS_VA: u64 = 0xffff_c000_0000_0000;
/// Where slot 0's receive ring appears; slot i's follows at i x the ring size.
pub const RINGS_VA: u64 = SLOTS_VA + (1 << 30);
/// The bit of a table entry that marks a blocking descriptor.
const BLOCKING: u32 = 1 << 31;
/// Most receive rings the window holds (the limit is also half the buffer budget's worth).
pub const MAX_EXPOSED: usize = 64;
/// The KVM memory slots of the slot table and of the rings' windows (0 is guest memory).
const SLOTS_MEMSLOT: u32 = 1;
const RINGS_MEMSLOT: u32 = 2;
const TX_RINGS_MEMSLOT: u32 = 3;

/// Environment variable with which the host turns the stub's socket reads and writes off
/// (`off`) for every container it starts: the operator's kill switch.
pub const FAST_READS_ENV: &str = "QUARK_FAST_READS";
/// Likewise for the stub's socket writes alone (`off`).
pub const FAST_WRITES_ENV: &str = "QUARK_FAST_WRITES";

/// Whether the stub may serve socket reads (and writes, unless [`FAST_WRITES_ENV`] says no).
pub fn wanted() -> bool {
    std::env::var(FAST_READS_ENV).as_deref() != Ok("off")
}

fn writes_wanted() -> bool {
    std::env::var(FAST_WRITES_ENV).as_deref() != Ok("off")
}

/// Where the transmit rings' window starts in the guest, after a receive window of
/// `rx_window` bytes (both in the shared kernel half, 1 GiB apart at least).
pub fn tx_rings_va(rx_window: u64) -> u64 {
    RINGS_VA + rx_window.next_multiple_of(1 << 30)
}

/// The host window the rings appear through: one ring's worth of address space per place.
struct Window {
    base: NonNull<u8>,
    len: usize,
    ring: usize,
    prot: libc::c_int,
}

// SAFETY: the mapping is owned by this struct and only changed under the Core's lock.
unsafe impl Send for Window {}

impl Window {
    /// A window of `places` rings of `ring` bytes, which the guest may write if `writable`.
    fn new(places: usize, ring: usize, writable: bool) -> anyhow::Result<Window> {
        let len = places * ring;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh private anonymous mapping that nothing else aliases.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            anyhow::bail!(
                "reserving the rings' window: {}",
                std::io::Error::last_os_error()
            );
        }
        let base = NonNull::new(p as *mut u8).ok_or_else(|| anyhow::anyhow!("mmap gave null"))?;
        Ok(Window {
            base,
            len,
            ring,
            prot,
        })
    }

    /// Maps `place` of the window to `fd` at `offset` (a slot's ring), or back to fresh
    /// anonymous memory (zeros) with None. KVM follows the host mapping.
    fn place(&mut self, place: usize, ring: Option<(&dyn AsRawFd, u64)>) -> std::io::Result<()> {
        let at = place * self.ring;
        if at + self.ring > self.len {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let (flags, fd, off) = match ring {
            Some((fd, off)) => (libc::MAP_SHARED, fd.as_raw_fd(), off as libc::off_t),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            ),
        };
        // SAFETY: replaces one ring's worth of our own window (bounds checked above) and
        // nothing else; nothing in this process holds references into the window.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().add(at) as *mut libc::c_void,
                self.ring,
                self.prot,
                flags | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the VM that mapped it is gone (see FastReads).
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// The stub's descriptor table and what it lists.
pub struct FastReads {
    table: *mut u32,
    /// (descriptor, slot) of every entry set.
    entries: Vec<(u32, u32)>,
    /// The slot whose ring is mapped at each place of the window.
    exposed: Vec<Option<u32>>,
    window: Window,
    /// The same places' transmit rings (None: no fast writes).
    tx_window: Option<Window>,
    /// Keeps the region mapped and its memfd open while the VM may use them.
    client: Client,
}

// SAFETY: the table page lives in guest memory owned by the Vm's Core, which owns this too and
// is only used under its lock.
unsafe impl Send for FastReads {}

impl FastReads {
    /// Maps `client`'s slot table and a window for its rings into the guest and turns the
    /// stub's fast reads on, with at most `limit` rings (and [`MAX_EXPOSED`]) exposed at
    /// once. Before the guest runs. None (with the reason logged) when the region's shape
    /// does not allow it: the stub then makes every read an ordinary call.
    ///
    /// The FastReads must be dropped after `vm` is closed (it lives in the Core, which the Vm
    /// drops after its VM fd): KVM maps its memory into the guest until then.
    pub fn enable(
        kvm: &Kvm,
        vm: &VmFd,
        mem: &mut GuestMemory,
        mailbox: Mailbox,
        client: &Client,
        limit: usize,
    ) -> anyhow::Result<Option<FastReads>> {
        let (base, len, g) = client.region();
        let rx = u64::from(g.rx_buf_size);
        let slots = u64::from(g.slot_count);
        let table_off = u64::from(g.slot_off);
        let table_len =
            (slots * std::mem::size_of::<qnet_ring::Slot>() as u64).next_multiple_of(PAGE);
        if table_off % PAGE != 0 || table_off + table_len > len as u64 || rx % HUGE_PAGE != 0 {
            tracing::debug!(?g, "ring region not in whole pages: no fast reads");
            return Ok(None);
        }
        if slots >= u64::from(u16::MAX) || table_len > RINGS_VA - SLOTS_VA {
            tracing::debug!(slots, "too many slots for the stub's table: no fast reads");
            return Ok(None);
        }
        let limit = limit.clamp(1, MAX_EXPOSED);
        let window = Window::new(limit, rx as usize, false)?;
        let tx = u64::from(g.tx_buf_size);
        let tx_window = if writes_wanted() && tx % HUGE_PAGE == 0 {
            Some(Window::new(limit, tx as usize, true)?)
        } else {
            None
        };
        let slots_gpa = mem.size().next_multiple_of(1 << 30);
        let rings_gpa = slots_gpa + (1 << 30);
        let tx_rings_va = tx_rings_va(window.len as u64);
        let tx_rings_gpa = rings_gpa + (tx_rings_va - RINGS_VA);
        let readonly = if kvm.check_extension(Cap::ReadonlyMem) {
            kvm_bindings::KVM_MEM_READONLY
        } else {
            0
        };
        let mut regions = vec![
            kvm_bindings::kvm_userspace_memory_region {
                slot: SLOTS_MEMSLOT,
                flags: 0,
                guest_phys_addr: slots_gpa,
                memory_size: table_len,
                // SAFETY (of the add): inside the client's mapping, checked above.
                userspace_addr: base as u64 + table_off,
            },
            kvm_bindings::kvm_userspace_memory_region {
                slot: RINGS_MEMSLOT,
                flags: readonly,
                guest_phys_addr: rings_gpa,
                memory_size: window.len as u64,
                userspace_addr: window.base.as_ptr() as u64,
            },
        ];
        if let Some(w) = &tx_window {
            regions.push(kvm_bindings::kvm_userspace_memory_region {
                slot: TX_RINGS_MEMSLOT,
                flags: 0,
                guest_phys_addr: tx_rings_gpa,
                memory_size: w.len as u64,
                userspace_addr: w.base.as_ptr() as u64,
            });
        }
        for region in regions {
            // SAFETY: each region is a mapping this FastReads keeps (the client's, through
            // its clone, and the window) for longer than the VM fd lives (see above).
            unsafe { vm.set_user_memory_region(region) }
                .map_err(|e| anyhow::anyhow!("registering the socket rings with KVM: {e}"))?;
        }
        let fault = |f: qkernel::Fault| anyhow::anyhow!("mapping the socket rings: {f}");
        mem.map_window(SLOTS_VA, slots_gpa, table_len, true, false)
            .map_err(fault)?;
        mem.map_window(RINGS_VA, rings_gpa, window.len as u64, false, true)
            .map_err(fault)?;
        if let Some(w) = &tx_window {
            mem.map_window(tx_rings_va, tx_rings_gpa, w.len as u64, true, true)
                .map_err(fault)?;
            mailbox.write(poll::FAST_TXRINGS, tx_rings_va);
            mailbox.write(poll::FAST_TXSIZE, tx);
        }
        let table = mem
            .host_page(poll::FAST_TABLE_VA)
            .ok_or_else(|| anyhow::anyhow!("the fast read table is not mapped"))?;
        mailbox.write(poll::FAST_RINGS, RINGS_VA);
        mailbox.write(poll::FAST_STRIDE, rx);
        mailbox.write(poll::FAST_RXSIZE, rx);
        mailbox.write(poll::FAST_SLOTS, SLOTS_VA);
        let writes = tx_window.is_some();
        tracing::debug!(slots, rx, tx, limit, writes, "fast socket reads on");
        Ok(Some(FastReads {
            table: table as *mut u32,
            entries: Vec::new(),
            exposed: vec![None; limit],
            window,
            tx_window,
            client: client.clone(),
        }))
    }

    /// Lets the stub read `fd` from `slot`'s ring; `blocking`: when it is empty the read
    /// waits. False if `fd` is beyond the table or no more rings may be exposed.
    pub fn set(&mut self, fd: u64, slot: u32, blocking: bool) -> bool {
        let Ok(i) = u32::try_from(fd) else {
            return false;
        };
        if u64::from(i) >= poll::FAST_FDS || slot >= u32::from(u16::MAX) {
            return false;
        }
        let Some(place) = self.expose(slot) else {
            return false;
        };
        self.clear(fd);
        let entry = (slot + 1) | (place as u32) << 16 | if blocking { BLOCKING } else { 0 };
        self.put(i, entry);
        self.entries.push((i, slot));
        true
    }

    /// `fd` reads through qkernel again.
    pub fn clear(&mut self, fd: u64) {
        let before = self.entries.len();
        self.entries.retain(|&(f, _)| u64::from(f) != fd);
        if self.entries.len() != before {
            self.put(fd as u32, 0);
        }
    }

    /// `slot`'s socket closed (the slot may be reused): no descriptor reads it, and its ring
    /// leaves the window.
    pub fn clear_slot(&mut self, slot: u32) {
        let gone: Vec<u32> = self
            .entries
            .iter()
            .filter(|&&(_, s)| s == slot)
            .map(|&(f, _)| f)
            .collect();
        for fd in gone {
            self.clear(u64::from(fd));
        }
        if let Some(place) = self.exposed.iter().position(|&s| s == Some(slot)) {
            let tx = self.tx_window.as_mut().map(|w| w.place(place, None));
            if let Err(e) = self.window.place(place, None).and(tx.unwrap_or(Ok(()))) {
                // The rings stay visible to the guest, and their place taken, for good.
                tracing::warn!(slot, "taking a ring out of the guest's window: {e}");
                return;
            }
            self.exposed[place] = None;
        }
    }

    /// The place of `slot`'s ring in the window, mapping it into a free one if it is not
    /// there yet. None: no place is free.
    fn expose(&mut self, slot: u32) -> Option<usize> {
        if let Some(place) = self.exposed.iter().position(|&s| s == Some(slot)) {
            return Some(place);
        }
        let place = self.exposed.iter().position(Option::is_none)?;
        let (_, _, g) = self.client.region();
        let fd = self.client.region_fd();
        let tx = self
            .tx_window
            .as_mut()
            .map(|w| w.place(place, Some((&fd, g.tx_buf_off(slot)))));
        match tx
            .unwrap_or(Ok(()))
            .and_then(|()| self.window.place(place, Some((&fd, g.rx_buf_off(slot)))))
        {
            Ok(()) => {
                self.exposed[place] = Some(slot);
                Some(place)
            }
            Err(e) => {
                tracing::warn!(slot, "mapping a ring into the guest's window: {e}");
                None
            }
        }
    }

    fn put(&mut self, fd: u32, value: u32) {
        debug_assert!(u64::from(fd) < poll::FAST_FDS);
        // SAFETY: the table is one page of FAST_FDS u32s in guest memory that lives as long as
        // the Core owning this; fd < FAST_FDS (checked by every caller). The stub reads it
        // with plain loads on the same vCPU only while no call is being served.
        unsafe { self.table.add(fd as usize).write_volatile(value) }
    }
}
