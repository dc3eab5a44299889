//! Syscall-site patching, the platform's half: the jump slots and trampolines that take a
//! patched site into the syscall stub without the `syscall` instruction.
//!
//! qkernel decides which sites may change (`qkernel/src/sites.rs`); for each it asks for the
//! seven bytes that replace `mov $nr, %eax; syscall`. They are `jmp *SLOT` (`ff 24 25` and a
//! 32-bit absolute address), SLOT one of 8-byte slots at [`qkernel::SYSCALL_SLOTS`], each
//! holding the address of a trampoline of its own:
//!
//! ```text
//! mov $nr, %eax          ; what the replaced mov did
//! movabs $ret, %rcx      ; what `syscall` would have put in rcx
//! jmp jump_entry         ; the stub: saves the flags in r11 itself, posts the call
//! ```
//!
//! The slot addresses all read `xx xx 0f 05` in memory, so the patched site still ends in a
//! `syscall` instruction (qkernel's module doc says why that matters). Slots are read-only
//! pages in the user half, the same physical pages in every address space that has any;
//! trampolines are read-only code pages in the half every space shares, next to the stub.
//! Nothing here is writable by the app; jumping into a trampoline directly only makes the
//! syscall it names and returns to the address it names, which the app can do anyway.
//! An entry is made once per (return address, number) and reused by every process that has
//! the same site (a fork, or the same library at the same address); when all are used, no
//! more sites are patched.

use std::collections::HashMap;

use qkernel::{Fault, PageFlags};

use crate::memory::{GuestMemory, PAGE};
use crate::poll::{JUMP_ENTRY, STUB_VA};

/// Pages of jump slots mapped in a space that has any (512 slots a page).
const SLOT_PAGES: u64 = 8;
/// Sites that can be patched in all.
pub const MAX_SITES: usize = (SLOT_PAGES * PAGE / 8) as usize;
/// The trampolines: in the top 2 GiB with the stub, so each reaches it with a `jmp rel32`.
pub const TRAMPOLINES_VA: u64 = STUB_VA + 0x10_0000;
const TRAMPOLINE_BYTES: u64 = 32;

/// The jump slots and trampolines of one VM.
pub struct SiteTable {
    /// Guest-physical pages of the slots (mapped into a space on its first patch).
    slot_pages: Vec<u64>,
    /// (return address, syscall number) -> entry index.
    entries: HashMap<(u64, u32), usize>,
}

impl SiteTable {
    /// Reserves the slot pages and maps the trampoline pages (in the shared half).
    pub fn new(mem: &mut GuestMemory) -> Result<SiteTable, Fault> {
        let slot_pages = mem.alloc_shared(SLOT_PAGES)?;
        let rx = PageFlags {
            write: false,
            exec: true,
        };
        let trampolines = (MAX_SITES as u64 * TRAMPOLINE_BYTES).div_ceil(PAGE) * PAGE;
        mem.map_user(TRAMPOLINES_VA, trampolines, rx)?;
        Ok(SiteTable {
            slot_pages,
            entries: HashMap::new(),
        })
    }

    /// Sites patched so far (entries made).
    pub fn patched(&self) -> usize {
        self.entries.len()
    }

    /// The bytes that make the site returning to `ret` jump to a trampoline for call `nr`
    /// (see the module doc), with the slots mapped in the current space; `None` if the
    /// slots' range is taken there or every entry is used.
    pub fn jump_for(&mut self, mem: &mut GuestMemory, ret: u64, nr: u32) -> Option<[u8; 7]> {
        self.map_slots(mem)?;
        let index = match self.entries.get(&(ret, nr)) {
            Some(&i) => i,
            None => {
                let i = self.entries.len();
                if i >= MAX_SITES {
                    return None;
                }
                let at = TRAMPOLINES_VA + i as u64 * TRAMPOLINE_BYTES;
                mem.write_supervisor(at, &trampoline(at, ret, nr)).ok()?;
                mem.write_supervisor(slot_va(i), &at.to_le_bytes()).ok()?;
                self.entries.insert((ret, nr), i);
                i
            }
        };
        let mut jump = [0xff, 0x24, 0x25, 0, 0, 0, 0];
        jump[3..].copy_from_slice(&(slot_va(index) as u32).to_le_bytes());
        Some(jump)
    }

    /// Maps the slot pages in the current space unless they are there already.
    fn map_slots(&self, mem: &mut GuestMemory) -> Option<()> {
        let start = qkernel::SYSCALL_SLOTS.start;
        let first = *self.slot_pages.first()?;
        if mem.maps_shared(start, first) {
            return Some(());
        }
        mem.map_shared(start, &self.slot_pages).ok()
    }
}

fn slot_va(index: usize) -> u64 {
    qkernel::SYSCALL_SLOTS.start + index as u64 * 8
}

/// `mov $nr, %eax; movabs $ret, %rcx; jmp JUMP_ENTRY`, padded with `int3`, placed at `at`.
fn trampoline(at: u64, ret: u64, nr: u32) -> [u8; TRAMPOLINE_BYTES as usize] {
    let mut code = [0xcc; TRAMPOLINE_BYTES as usize];
    code[0] = 0xb8;
    code[1..5].copy_from_slice(&nr.to_le_bytes());
    code[5..7].copy_from_slice(&[0x48, 0xb9]);
    code[7..15].copy_from_slice(&ret.to_le_bytes());
    code[15] = 0xe9;
    // Both ends lie in the top 2 GiB, so the distance fits in 32 bits.
    let rel = JUMP_ENTRY.wrapping_sub(at + 20) as i64 as i32;
    code[16..20].copy_from_slice(&rel.to_le_bytes());
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trampoline_disassembles_to_the_three_instructions_it_should() {
        let at = TRAMPOLINES_VA + 5 * TRAMPOLINE_BYTES;
        let code = trampoline(at, 0x7f12_3456_789a, 39);
        let dir = std::env::temp_dir().join(format!("qvisor-tramp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("t.bin");
        std::fs::write(&bin, &code[..20]).unwrap();
        let out = std::process::Command::new("objdump")
            .args(["-D", "-b", "binary", "-m", "i386:x86-64"])
            .arg(format!("--adjust-vma={at:#x}"))
            .arg(&bin)
            .output()
            .expect("objdump (binutils) is needed to check the trampoline");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("mov    $0x27,%eax"), "{text}");
        assert!(text.contains("movabs $0x7f123456789a,%rcx"), "{text}");
        assert!(text.contains(&format!("jmp    0x{JUMP_ENTRY:x}")), "{text}");
    }

    #[test]
    fn entries_are_shared_by_equal_sites_and_run_out_cleanly() {
        let mut mem = GuestMemory::new(8 << 20).unwrap();
        let mut table = SiteTable::new(&mut mem).unwrap();
        let a = table.jump_for(&mut mem, 0x7f00_0000_1007, 1).unwrap();
        assert_eq!(&a[..3], &[0xff, 0x24, 0x25]);
        assert_eq!(
            &a[5..],
            &[0x0f, 0x05],
            "still ends in a syscall instruction"
        );
        assert_eq!(table.jump_for(&mut mem, 0x7f00_0000_1007, 1), Some(a));
        assert_ne!(table.jump_for(&mut mem, 0x7f00_0000_2007, 1), Some(a));
        // The slot holds the trampoline's address, which the app can read but not write.
        let slot = u32::from_le_bytes(a[3..7].try_into().unwrap()) as u64;
        let mut ptr = [0u8; 8];
        mem.read_user(slot, &mut ptr).unwrap();
        assert_eq!(u64::from_le_bytes(ptr), TRAMPOLINES_VA);
        assert!(mem.write_user(slot, &[0; 8]).is_err());
        for i in table.patched()..MAX_SITES {
            assert!(table.jump_for(&mut mem, 0x1000 + i as u64, 3).is_some());
        }
        assert_eq!(table.jump_for(&mut mem, 0x9999, 3), None, "full");
        assert!(table.jump_for(&mut mem, 0x7f00_0000_1007, 1).is_some());
    }

    #[test]
    fn a_space_with_something_at_the_slots_gets_no_jumps() {
        let mut mem = GuestMemory::new(8 << 20).unwrap();
        let mut table = SiteTable::new(&mut mem).unwrap();
        let rw = PageFlags {
            write: true,
            exec: false,
        };
        mem.map_user(qkernel::SYSCALL_SLOTS.start, PAGE, rw)
            .unwrap();
        assert_eq!(table.jump_for(&mut mem, 0x7f00_0000_1007, 1), None);
    }
}
