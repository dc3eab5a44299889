//! The polled syscall path: a host thread serves syscalls the guest posts in a mailbox, so a
//! syscall costs the `syscall` instruction's own trap (~19 µs on this host) instead of a full
//! exit to the VMM and back (~59 µs).
//!
//! `LSTAR` points at a 941-byte stub (`stub.S`, assembled bytes below) on a user-visible,
//! read-only page (this host runs the LSTAR target at CPL 3 and needs the U bit on its pages).
//! The stub saves the syscall registers in the mailbox page and claims it with
//! `lock cmpxchg` 0 -> 1; the host thread serves the call, writes the result and sets 2; the
//! stub returns to the app with `iretq`. The host thread spins only for [`BUDGET`] after its
//! last call, then marks the mailbox asleep (0 -> 3) and sleeps on a futex, so an idle container
//! costs no CPU. A stub that finds the mailbox asleep executes `ud2`: the vCPU exits and the
//! vCPU thread serves that call itself (the trapping path) and wakes the host thread. The
//! host thread picks a request up (1 -> 6) before serving it; a request not picked up within
//! 2,048 pauses (the host thread is off its CPU, say behind a busy neighbour) is taken back by
//! the stub (1 -> 5) and trapped the same way, so the vCPU never spins for a whole time slice.
//! While the VMM may use a single CPU (a pod's cpuset), polling would only take that CPU from
//! the vCPU thread the stub spins on: the host thread then leaves the mailbox asleep, every
//! call traps, and it looks again at the CPUs it may use every [`LONE_CPU_RECHECK`].
//!
//! The mailbox is app-writable by necessity: every word in it is untrusted, read once, and used
//! only as syscall arguments or as the user-mode return state the app could set itself.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use qkernel::{SyscallArgs, SyscallOutcome};
use qnet_client::sys::{futex_wait, futex_wake_all};

use crate::jail::{self, Mode, ThreadKind};
use crate::vm::{serve_polled, Core};

/// The stub's page and the mailbox page, in the top 2 GiB of the kernel half (so the stub can
/// address them with sign-extended 32-bit absolute addresses).
pub const STUB_VA: u64 = 0xffff_ffff_8000_0000;
pub const MAILBOX_VA: u64 = STUB_VA + 0x1000;
/// Where the stub traps when the host thread sleeps (offset of `slow` in stub.S).
pub const SLOW_RIP: u64 = STUB_VA + 0x3ab;
/// Where a patched syscall site's trampoline enters the stub (`jump_entry` in stub.S).
pub const JUMP_ENTRY: u64 = STUB_VA + 0x38c;
/// The fast read's body (`fast_body` up to `fast_commit` in stub.S): a fault the kernel cannot
/// resolve there (a bad buffer, a forged table) moves rip to [`FAST_RETREAT`], which undoes
/// the stub's pushes and makes the ordinary call, since nothing is consumed before the commit.
pub const FAST_BODY: std::ops::Range<u64> = STUB_VA + 0x94..STUB_VA + 0x203;
pub const FAST_RETREAT: u64 = STUB_VA + 0x277;
/// The fast reads' descriptor table (`FASTTAB`): 1,024 `u32`s, slot + 1 or 0.
pub const FAST_TABLE_VA: u64 = MAILBOX_VA + 0x1000;
pub const FAST_FDS: u64 = 1024;
/// How long the host thread keeps polling after a call: well above the trap cost, so a busy
/// app never pays the slow path, short enough that an idle one costs nothing.
pub const BUDGET: Duration = Duration::from_micros(500);
/// How often a host thread confined to one CPU looks whether it may use more.
pub const LONE_CPU_RECHECK: Duration = Duration::from_millis(100);

/// `stub.S` assembled (`scripts/stub.sh` writes these bytes and the offsets above after an
/// edit of the source); the test `stub_bytes_match_the_source` checks they match.
pub const STUB: [u8; 941] = [
    0x48, 0x89, 0x24, 0x25, 0x40, 0x10, 0x00, 0x80, 0x48, 0xc7, 0xc4, 0x00, 0x20, 0x00, 0x80, 0xc6,
    0x04, 0x25, 0x70, 0x10, 0x00, 0x80, 0x00, 0x48, 0x89, 0x04, 0x25, 0x08, 0x10, 0x00, 0x80, 0x48,
    0x83, 0xf8, 0x01, 0x76, 0x22, 0x48, 0x83, 0xf8, 0x2d, 0x74, 0x0a, 0x48, 0x83, 0xf8, 0x2c, 0x0f,
    0x85, 0x63, 0x02, 0x00, 0x00, 0x4d, 0x85, 0xd2, 0x0f, 0x85, 0x5a, 0x02, 0x00, 0x00, 0x4d, 0x85,
    0xc0, 0x0f, 0x85, 0x51, 0x02, 0x00, 0x00, 0x48, 0x81, 0xff, 0x00, 0x04, 0x00, 0x00, 0x0f, 0x83,
    0x44, 0x02, 0x00, 0x00, 0x8b, 0x04, 0xbd, 0x00, 0x20, 0x00, 0x80, 0x85, 0xc0, 0x0f, 0x84, 0x2d,
    0x02, 0x00, 0x00, 0x48, 0x85, 0xd2, 0x0f, 0x84, 0x24, 0x02, 0x00, 0x00, 0x48, 0x83, 0x3c, 0x25,
    0x78, 0x10, 0x00, 0x80, 0x00, 0x0f, 0x84, 0x15, 0x02, 0x00, 0x00, 0x48, 0x89, 0x0c, 0x25, 0x50,
    0x10, 0x00, 0x80, 0x4c, 0x89, 0x1c, 0x25, 0x58, 0x10, 0x00, 0x80, 0x56, 0x57, 0x52, 0x41, 0x50,
    0x41, 0x51, 0x41, 0x52, 0x48, 0x89, 0xf1, 0x48, 0x01, 0xd1, 0x0f, 0x82, 0xd7, 0x01, 0x00, 0x00,
    0x49, 0xbb, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x4c, 0x39, 0xd9, 0x0f, 0x87, 0xc4,
    0x01, 0x00, 0x00, 0x41, 0x89, 0xc2, 0x44, 0x0f, 0xb7, 0xc0, 0x41, 0xff, 0xc8, 0x4d, 0x89, 0xc1,
    0x49, 0xc1, 0xe1, 0x07, 0x4c, 0x03, 0x0c, 0x25, 0x78, 0x10, 0x00, 0x80, 0x48, 0x83, 0x3c, 0x25,
    0x08, 0x10, 0x00, 0x80, 0x01, 0x0f, 0x84, 0x8f, 0x00, 0x00, 0x00, 0x48, 0x83, 0x3c, 0x25, 0x08,
    0x10, 0x00, 0x80, 0x2c, 0x0f, 0x84, 0x80, 0x00, 0x00, 0x00, 0x41, 0x8b, 0x41, 0x44, 0x41, 0x2b,
    0x41, 0x04, 0x0f, 0x84, 0x72, 0x01, 0x00, 0x00, 0x3b, 0x04, 0x25, 0x90, 0x10, 0x00, 0x80, 0x0f,
    0x87, 0x72, 0x01, 0x00, 0x00, 0x48, 0x39, 0xd0, 0x76, 0x03, 0x48, 0x89, 0xd0, 0x45, 0x89, 0xd0,
    0x41, 0xc1, 0xe8, 0x10, 0x41, 0x81, 0xe0, 0xff, 0x7f, 0x00, 0x00, 0x4c, 0x0f, 0xaf, 0x04, 0x25,
    0x88, 0x10, 0x00, 0x80, 0x4c, 0x03, 0x04, 0x25, 0x80, 0x10, 0x00, 0x80, 0x41, 0x8b, 0x51, 0x04,
    0x8b, 0x0c, 0x25, 0x90, 0x10, 0x00, 0x80, 0xff, 0xc9, 0x21, 0xca, 0xff, 0xc1, 0x29, 0xd1, 0x48,
    0x39, 0xc1, 0x76, 0x03, 0x48, 0x89, 0xc1, 0xfc, 0x48, 0x89, 0xf7, 0x49, 0x8d, 0x34, 0x10, 0x48,
    0x89, 0xc2, 0x48, 0x29, 0xca, 0xf3, 0xa4, 0x48, 0x89, 0xd1, 0x4c, 0x89, 0xc6, 0xf3, 0xa4, 0x41,
    0x8b, 0x49, 0x04, 0x01, 0xc1, 0xe9, 0xb9, 0x00, 0x00, 0x00, 0x48, 0x83, 0x3c, 0x25, 0xa0, 0x10,
    0x00, 0x80, 0x00, 0x0f, 0x84, 0xfe, 0x00, 0x00, 0x00, 0x41, 0x8b, 0x41, 0x48, 0x83, 0xe0, 0x3a,
    0x83, 0xf8, 0x22, 0x0f, 0x85, 0xee, 0x00, 0x00, 0x00, 0x45, 0x8b, 0x19, 0x44, 0x89, 0xd9, 0x41,
    0x2b, 0x49, 0x40, 0x41, 0x8b, 0x41, 0x5c, 0x3b, 0x04, 0x25, 0xa8, 0x10, 0x00, 0x80, 0x0f, 0x87,
    0xd3, 0x00, 0x00, 0x00, 0x29, 0xc8, 0x0f, 0x82, 0xcb, 0x00, 0x00, 0x00, 0x48, 0x39, 0xd0, 0x0f,
    0x82, 0xb5, 0x00, 0x00, 0x00, 0x45, 0x89, 0xd0, 0x41, 0xc1, 0xe8, 0x10, 0x41, 0x81, 0xe0, 0xff,
    0x7f, 0x00, 0x00, 0x4c, 0x0f, 0xaf, 0x04, 0x25, 0xa8, 0x10, 0x00, 0x80, 0x4c, 0x03, 0x04, 0x25,
    0xa0, 0x10, 0x00, 0x80, 0x8b, 0x0c, 0x25, 0xa8, 0x10, 0x00, 0x80, 0xff, 0xc9, 0x44, 0x89, 0xd8,
    0x21, 0xc8, 0xff, 0xc1, 0x29, 0xc1, 0x48, 0x39, 0xd1, 0x76, 0x03, 0x48, 0x89, 0xd1, 0xfc, 0x49,
    0x8d, 0x3c, 0x00, 0x48, 0x89, 0xd0, 0x48, 0x29, 0xca, 0xf3, 0xa4, 0x48, 0x89, 0xd1, 0x4c, 0x89,
    0xc7, 0xf3, 0xa4, 0x41, 0x01, 0xc3, 0x45, 0x87, 0x19, 0xb9, 0x01, 0x00, 0x00, 0x00, 0x41, 0x87,
    0x49, 0x08, 0x48, 0xff, 0x04, 0x25, 0x98, 0x10, 0x00, 0x80, 0xff, 0xc9, 0xb9, 0x01, 0x51, 0x00,
    0x00, 0xeb, 0x16, 0x41, 0x87, 0x49, 0x04, 0x48, 0xff, 0x04, 0x25, 0x98, 0x10, 0x00, 0x80, 0x41,
    0x83, 0x79, 0x50, 0x00, 0xb9, 0x00, 0x51, 0x00, 0x00, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, 0x5a,
    0x5f, 0x5e, 0x0f, 0x84, 0x29, 0x01, 0x00, 0x00, 0x48, 0x89, 0x3c, 0x25, 0x10, 0x10, 0x00, 0x80,
    0x48, 0x89, 0x04, 0x25, 0x18, 0x10, 0x00, 0x80, 0x48, 0x89, 0x0c, 0x25, 0x08, 0x10, 0x00, 0x80,
    0xc6, 0x04, 0x25, 0x70, 0x10, 0x00, 0x80, 0x03, 0xeb, 0x76, 0x45, 0x85, 0xd2, 0x79, 0x08, 0xc6,
    0x04, 0x25, 0x70, 0x10, 0x00, 0x80, 0x02, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, 0x5a, 0x5f, 0x5e,
    0x48, 0x8b, 0x0c, 0x25, 0x50, 0x10, 0x00, 0x80, 0x4c, 0x8b, 0x1c, 0x25, 0x58, 0x10, 0x00, 0x80,
    0x48, 0x8b, 0x04, 0x25, 0x08, 0x10, 0x00, 0x80, 0x48, 0x89, 0x04, 0x25, 0x08, 0x10, 0x00, 0x80,
    0x48, 0x89, 0x3c, 0x25, 0x10, 0x10, 0x00, 0x80, 0x48, 0x89, 0x34, 0x25, 0x18, 0x10, 0x00, 0x80,
    0x48, 0x89, 0x14, 0x25, 0x20, 0x10, 0x00, 0x80, 0x4c, 0x89, 0x14, 0x25, 0x28, 0x10, 0x00, 0x80,
    0x4c, 0x89, 0x04, 0x25, 0x30, 0x10, 0x00, 0x80, 0x4c, 0x89, 0x0c, 0x25, 0x38, 0x10, 0x00, 0x80,
    0x48, 0x89, 0x0c, 0x25, 0x50, 0x10, 0x00, 0x80, 0x4c, 0x89, 0x1c, 0x25, 0x58, 0x10, 0x00, 0x80,
    0xb9, 0x01, 0x00, 0x00, 0x00, 0x31, 0xc0, 0xf0, 0x0f, 0xb1, 0x0c, 0x25, 0x00, 0x10, 0x00, 0x80,
    0x0f, 0x85, 0xb5, 0x00, 0x00, 0x00, 0xb9, 0x00, 0x08, 0x00, 0x00, 0xf3, 0x90, 0x83, 0x3c, 0x25,
    0x00, 0x10, 0x00, 0x80, 0x01, 0x75, 0x1d, 0xff, 0xc9, 0x75, 0xf0, 0xb8, 0x01, 0x00, 0x00, 0x00,
    0xb9, 0x05, 0x00, 0x00, 0x00, 0xf0, 0x0f, 0xb1, 0x0c, 0x25, 0x00, 0x10, 0x00, 0x80, 0x0f, 0x84,
    0x87, 0x00, 0x00, 0x00, 0x83, 0x3c, 0x25, 0x00, 0x10, 0x00, 0x80, 0x06, 0x75, 0x04, 0xf3, 0x90,
    0xeb, 0xf2, 0x83, 0x3c, 0x25, 0x00, 0x10, 0x00, 0x80, 0x04, 0x74, 0x6f, 0x83, 0x3c, 0x25, 0x60,
    0x10, 0x00, 0x80, 0x00, 0x74, 0x18, 0xc7, 0x04, 0x25, 0x60, 0x10, 0x00, 0x80, 0x00, 0x00, 0x00,
    0x00, 0x48, 0x8b, 0x04, 0x25, 0x68, 0x10, 0x00, 0x80, 0xf3, 0x48, 0x0f, 0xae, 0xd0, 0x48, 0x8b,
    0x04, 0x25, 0x48, 0x10, 0x00, 0x80, 0xc7, 0x04, 0x25, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0x00,
    0x00, 0x6a, 0x2b, 0xff, 0x34, 0x25, 0x40, 0x10, 0x00, 0x80, 0xff, 0x34, 0x25, 0x58, 0x10, 0x00,
    0x80, 0x6a, 0x33, 0xff, 0x34, 0x25, 0x50, 0x10, 0x00, 0x80, 0x48, 0xcf, 0x48, 0x89, 0x24, 0x25,
    0x40, 0x10, 0x00, 0x80, 0x48, 0xc7, 0xc4, 0x00, 0x20, 0x00, 0x80, 0x9c, 0x41, 0x5b, 0xc6, 0x04,
    0x25, 0x70, 0x10, 0x00, 0x80, 0x01, 0xe9, 0x6c, 0xfc, 0xff, 0xff, 0x0f, 0x0b,
];

// Mailbox layout (stub.S).
const FLAG: usize = 0x00;
const NR: usize = 0x08;
const ARGS: usize = 0x10;
pub const URSP: usize = 0x40;
const RET: usize = 0x48;
pub const URIP: usize = 0x50;
pub const UFLAGS: usize = 0x58;
const SETFS: usize = 0x60;
const FSVAL: usize = 0x68;
/// 0: the call came from a `syscall` instruction; 1: from a patched site (`jump_entry`).
const VIA: usize = 0x70;
/// The fast reads' geometry (fastread.rs), guest addresses: the slot table (0: no fast reads),
/// slot 0's receive ring, the distance between two slots' rings, a ring's size.
pub const FAST_SLOTS: usize = 0x78;
pub const FAST_RINGS: usize = 0x80;
pub const FAST_STRIDE: usize = 0x88;
pub const FAST_RXSIZE: usize = 0x90;
/// Reads and writes the stub served (a statistic: app-writable).
pub const FAST_COUNT: usize = 0x98;
/// The fast writes' geometry: slot 0's place's transmit ring (0: no fast writes; a place's
/// transmit ring is at `FAST_TXRINGS + place * FAST_TXSIZE`) and a transmit ring's size.
pub const FAST_TXRINGS: usize = 0xa0;
pub const FAST_TXSIZE: usize = 0xa8;

const IDLE: u32 = 0;
const REQUEST: u32 = 1;
const ANSWER: u32 = 2;
const ASLEEP: u32 = 3;
/// The call may block (a sleep, a read of the console): the stub traps and the vCPU thread
/// serves it, so neither the vCPU nor this thread spins while it waits.
const TRAP: u32 = 4;
/// The stub took its request back (this thread did not pick it up within 2,048 pauses, some
/// 50 µs here: it is off its CPU) and trapped; the vCPU thread serves the call and resumes
/// polling. Only the stub sets it.
const TAKEN_BACK: u32 = 5;
/// This thread picked the request up: the stub waits for the answer however long it takes.
const PICKED_UP: u32 = 6;

/// The mailbox page, through its host address.
#[derive(Clone, Copy)]
pub struct Mailbox(*mut u8);

// SAFETY: the page lives in guest memory owned by the Vm, which joins the poller before it
// drops; all access is by atomics or volatile copies of plain integers.
unsafe impl Send for Mailbox {}

impl Mailbox {
    /// # Safety
    /// `page` must be the host address of the mailbox page, valid while the Mailbox is used.
    pub unsafe fn new(page: *mut u8) -> Self {
        Mailbox(page)
    }

    fn flag(&self) -> &AtomicU32 {
        // SAFETY: offset 0 of a live, page-aligned page.
        unsafe { AtomicU32::from_ptr(self.0.add(FLAG) as *mut u32) }
    }

    pub fn read(&self, off: usize) -> u64 {
        // SAFETY: off is one of the fixed fields inside the page, 8-byte aligned.
        unsafe { (self.0.add(off) as *const u64).read_volatile() }
    }

    pub(crate) fn write(&self, off: usize, v: u64) {
        // SAFETY: as in read.
        unsafe { (self.0.add(off) as *mut u64).write_volatile(v) }
    }

    /// Whether the stub took its call back (it trapped because no host thread picked it up).
    pub fn taken_back(&self) -> bool {
        self.flag().load(Ordering::Acquire) == TAKEN_BACK
    }

    /// Whether the posted call came from a `syscall` instruction (its site is a candidate for
    /// patching), not from a patched site's jump. App-writable like the rest: only a hint.
    pub fn via_syscall_instruction(&self) -> bool {
        // SAFETY: VIA is a byte inside the live page.
        unsafe { self.0.add(VIA).read_volatile() == 0 }
    }

    /// Whether the stub posted this call for a fast read (`fastread`: a blocking read of an
    /// empty ring, or the note after a read). App-writable like the rest: only a hint.
    fn posted_by_fast_read(&self) -> bool {
        // SAFETY: VIA is a byte inside the live page.
        unsafe { self.0.add(VIA).read_volatile() >= 2 }
    }

    /// Whether a trapped call came from a fast read while the host thread slept: serving it
    /// wakes nothing, so a bulk reader's waits do not keep that thread spinning (a call it
    /// handed over, or one the stub took back, still wakes it: it waits for that). At worst
    /// (a forged VIA) the host thread sleeps until the next trapped call.
    pub fn quiet_trap(&self) -> bool {
        self.posted_by_fast_read() && self.flag().load(Ordering::Acquire) == ASLEEP
    }

    /// The call the stub posted.
    pub fn call(&self) -> SyscallArgs {
        let mut args = [0u64; 6];
        for (i, a) in args.iter_mut().enumerate() {
            *a = self.read(ARGS + 8 * i);
        }
        SyscallArgs {
            nr: self.read(NR),
            args,
        }
    }

    /// Publishes a result for the spinning stub.
    fn answer(&self, value: i64, fs_base: Option<u64>) {
        self.write(RET, value as u64);
        // Always written: the page is shared by every process and writable by all of them, so
        // a flag left from before could be any process's forgery (and the stub would load a
        // forged FS base into the caller).
        if let Some(fs) = fs_base {
            self.write(FSVAL, fs);
        }
        self.write(SETFS, u64::from(fs_base.is_some()));
        self.flag().store(ANSWER, Ordering::Release);
    }
}

struct Control {
    stop: AtomicBool,
    /// Futex word the sleeping host thread waits on (1: wake up).
    wake: AtomicU32,
    /// How the app ended, if it ended through the polled path.
    exit: Mutex<Option<SyscallOutcome>>,
    /// The VMM may use one CPU only: the mailbox stays asleep, every call traps.
    lone_cpu: AtomicBool,
}

/// The running host thread.
pub struct Poller {
    control: Arc<Control>,
    mailbox: Mailbox,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts serving `mailbox`, once the thread has stacked its seccomp filter (`mode`);
    /// `kick` makes the vCPU leave KVM_RUN (when the app exits).
    pub fn start(
        core: Arc<Mutex<Core>>,
        mailbox: Mailbox,
        kick: impl Fn() + Send + 'static,
        mode: Mode,
    ) -> anyhow::Result<Poller> {
        let control = Arc::new(Control {
            stop: AtomicBool::new(false),
            wake: AtomicU32::new(0),
            exit: Mutex::new(None),
            lone_cpu: AtomicBool::new(false),
        });
        let c = control.clone();
        let (confined_tx, confined) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("qvisor-syscalls".into())
            .spawn(move || {
                let confined = jail::confine_thread(ThreadKind::Poller, mode);
                let ok = confined.is_ok();
                let _ = confined_tx.send(confined);
                if ok {
                    serve_loop(&core, mailbox, &c, kick);
                }
            })
            .context("starting the syscall poller")?;
        confined
            .recv()
            .context("the syscall poller ended at its start")?
            .context("confining the syscall poller")?;
        Ok(Poller {
            control,
            mailbox,
            thread: Some(thread),
        })
    }

    /// How the app ended, if it ended through the polled path.
    pub fn exited(&self) -> Option<SyscallOutcome> {
        *self.control.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After the vCPU thread served a call the stub could not post: polling resumes, unless
    /// the VMM may use one CPU only (then the next call traps too).
    pub fn resume(&self) {
        if self.control.lone_cpu.load(Ordering::SeqCst) {
            // The app is out of the stub (it trapped): no stub waits on the flag.
            self.mailbox.flag().store(ASLEEP, Ordering::Release);
            return;
        }
        self.mailbox.flag().store(IDLE, Ordering::Release);
        self.control.wake.store(1, Ordering::SeqCst);
        futex_wake_all(&self.control.wake);
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        self.control.wake.store(1, Ordering::SeqCst);
        futex_wake_all(&self.control.wake);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_loop(core: &Mutex<Core>, mb: Mailbox, c: &Control, kick: impl Fn()) {
    let mut last = Instant::now();
    let mut spins = 0u32;
    while !c.stop.load(Ordering::Relaxed) {
        if mb.flag().load(Ordering::Acquire) == REQUEST {
            // Picked up first, so a stub that gives up waiting cannot take back a call this
            // thread serves (it would run twice).
            if mb
                .flag()
                .compare_exchange(REQUEST, PICKED_UP, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let call = mb.call();
            let site = mb.via_syscall_instruction().then(|| mb.read(URIP));
            // A fast read's calls (fastread.rs) do not keep this thread polling: a bulk
            // reader's only calls are its waits.
            let renews = !mb.posted_by_fast_read();
            // A call that may wait is served here only if it need not (a socket with data or
            // room); one that would wait goes to the vCPU thread, where waiting spins nothing.
            let served = serve_polled(core, call, site);
            let Some((outcome, fs_base)) = served else {
                // A resume meant for an earlier call (one the stub took back) must not end
                // this sleep: only the resume after this trap may.
                c.wake.store(0, Ordering::SeqCst);
                mb.flag().store(TRAP, Ordering::Release);
                sleep_until_resumed(c);
                if renews {
                    last = Instant::now();
                }
                continue;
            };
            match outcome {
                SyscallOutcome::Return(v) => mb.answer(v, fs_base),
                end => {
                    *c.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
                    kick();
                    return;
                }
            }
            if renews {
                last = Instant::now();
            }
            continue;
        }
        spins = spins.wrapping_add(1);
        if spins % 64 != 0 || last.elapsed() < BUDGET {
            std::hint::spin_loop();
            continue;
        }
        if cpus_allowed() < 2 {
            idle_while_alone(mb, c);
            last = Instant::now();
            continue;
        }
        // Idle: tell the stub (it will trap instead of waiting), then sleep until woken (by
        // the resume after that trap, not one left from a call the stub took back).
        c.wake.store(0, Ordering::SeqCst);
        match mb
            .flag()
            .compare_exchange(IDLE, ASLEEP, Ordering::SeqCst, Ordering::SeqCst)
        {
            // Asleep already: a resume that still saw the lone-CPU mode put it there. Or the
            // stub took a call back and the vCPU thread serves it, maybe for long (a sleep):
            // its resume wakes this thread, which must not spin meanwhile.
            Ok(_) | Err(ASLEEP) | Err(TAKEN_BACK) => {}
            Err(_) => continue, // a request arrived (or the app scribbled): look again
        }
        sleep_until_resumed(c);
        last = Instant::now();
    }
}

/// The CPUs this thread may run on (1 if that cannot be read).
fn cpus_allowed() -> usize {
    // SAFETY: fills a cpu_set_t of its own size; CPU_COUNT only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

/// While this thread may use one CPU only: the mailbox stays asleep (every call traps, served
/// by the vCPU thread) and the CPUs are looked at again every [`LONE_CPU_RECHECK`]. Returns
/// when more CPUs are allowed or the poller stops.
fn idle_while_alone(mb: Mailbox, c: &Control) {
    c.lone_cpu.store(true, Ordering::SeqCst);
    while !c.stop.load(Ordering::Relaxed) {
        // Asleep, so the stub traps. The mailbox may also be idle again (a resume that ran
        // before lone_cpu was seen), claimed, or still holding an answer.
        match mb
            .flag()
            .compare_exchange(IDLE, ASLEEP, Ordering::SeqCst, Ordering::SeqCst)
        {
            // Handed to the vCPU thread like a call that may block: the stub traps, and the
            // resume after it leaves the mailbox asleep. (If the stub took it back meanwhile,
            // it traps all the same.)
            Err(REQUEST) => {
                let _ =
                    mb.flag()
                        .compare_exchange(REQUEST, TRAP, Ordering::SeqCst, Ordering::SeqCst);
            }
            // The stub has yet to take its answer, which needs this CPU.
            Err(ANSWER) => {
                std::thread::yield_now();
                continue;
            }
            // Asleep (or whatever the app wrote there: the stub traps on it too).
            _ => {}
        }
        futex_wait(&c.wake, 0, Some(LONE_CPU_RECHECK));
        c.wake.store(0, Ordering::SeqCst);
        if cpus_allowed() > 1 {
            break;
        }
    }
    c.lone_cpu.store(false, Ordering::SeqCst);
    // Polling again: only a mailbox asleep is handed back (a request is served next; no
    // trap is in flight, as only this thread hands calls to the vCPU).
    let _ = mb
        .flag()
        .compare_exchange(ASLEEP, IDLE, Ordering::SeqCst, Ordering::SeqCst);
}

/// Sleeps until the vCPU thread has served a trapped call and called [`Poller::resume`].
fn sleep_until_resumed(c: &Control) {
    while !c.stop.load(Ordering::Relaxed) && c.wake.swap(0, Ordering::SeqCst) == 0 {
        futex_wait(&c.wake, 0, Some(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_bytes_match_the_source() {
        let dir = std::env::temp_dir().join(format!("qvisor-stub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/stub.S");
        let obj = dir.join("stub.o");
        let bin = dir.join("stub.bin");
        let cc = std::process::Command::new("gcc")
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .expect("gcc (binutils) is needed to check the stub");
        assert!(cc.success());
        let oc = std::process::Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin)
            .status()
            .unwrap();
        assert!(oc.success());
        assert_eq!(std::fs::read(&bin).unwrap(), STUB.to_vec());
        let nm = std::process::Command::new("nm").arg(&obj).output().unwrap();
        let symbols = String::from_utf8_lossy(&nm.stdout);
        let offset_of = |name: &str| {
            symbols
                .lines()
                .find_map(|l| l.strip_suffix(&format!(" T {name}")))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or_else(|| panic!("no {name} in {symbols}"))
        };
        assert_eq!(offset_of("entry"), 0, "LSTAR is the stub's first byte");
        assert_eq!(STUB_VA + offset_of("jump_entry"), JUMP_ENTRY);
        assert_eq!(STUB_VA + offset_of("slow"), SLOW_RIP);
        assert_eq!(
            STUB_VA + offset_of("fast_body")..STUB_VA + offset_of("fast_commit"),
            FAST_BODY
        );
        assert_eq!(STUB_VA + offset_of("fast_retreat"), FAST_RETREAT);
        assert_eq!(
            STUB[(SLOW_RIP - STUB_VA) as usize..],
            [0x0f, 0x0b],
            "slow is the final ud2"
        );
    }
}
