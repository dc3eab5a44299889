//! Syscall-site patching, qkernel's half: which trapped `syscall` instructions become jumps.
//!
//! On this platform the `syscall` instruction is the expensive part of a call (a transition
//! the hypervisor handles), while jumping into the syscall stub costs a tenth of it. When a
//! call arrives from a `syscall` instruction, the platform offers the site here before serving
//! it. A site is patched only if all of this holds:
//!
//! - it is the pair `mov $nr, %eax; syscall` (`b8 imm32 0f 05`), the immediate being the
//!   number of this very call, and the byte before it is not a REX prefix (which would make
//!   `b8` part of a `mov` to another register);
//! - the seven bytes lie in one private, executable file mapping made by `mmap`: a shared
//!   library's code, in this process's own copy. The program's own image, anonymous memory
//!   (JIT code) and shared mappings are never changed, so a program that checksums its own
//!   code, or generates code at run time, sees exactly the bytes it expects;
//! - the platform gives the jump ([`Machine::syscall_site_jump`]): `jmp *slot` with a slot
//!   address ending in `0f 05`, so the last two bytes are still the `syscall` instruction. A
//!   thread that was stopped between the `mov` and the `syscall`, a jump from elsewhere to
//!   the `syscall`, and a restarted call (rip - 2) all still find it there.
//!
//! The platform asks while the app is stopped in this call (one vCPU: no app code runs), so
//! no thread can see a half-written site. The bytes read are the app's and untrusted: they
//! only decide whether seven bytes of the app's own private memory are rewritten.

use crate::machine::{Machine, SYSCALL_SLOTS};
use crate::syscalls::{Backing, Kernel};

const MOV_EAX: u8 = 0xb8;
const SYSCALL: [u8; 2] = [0x0f, 0x05];
/// Length of the `mov $imm32, %eax; syscall` pair a jump replaces.
const PAIR: u64 = 7;

impl Kernel {
    /// Patches the syscall site that returns to `ret` (a call with number `nr` that came from
    /// a `syscall` instruction), if it may be (see the module doc). Returns whether it did.
    pub fn patch_syscall_site(&mut self, m: &mut dyn Machine, ret: u64, nr: u64) -> bool {
        let Ok(nr32) = u32::try_from(nr) else {
            return false;
        };
        let Some(before) = ret.checked_sub(PAIR + 1) else {
            return false;
        };
        let site = before + 1;
        if self.p.vm.backing(before, ret) != Some(Backing::LibraryCode) {
            return false;
        }
        let mut bytes = [0u8; 8];
        if m.read(before, &mut bytes).is_err() || !is_mov_syscall_pair(&bytes, nr32) {
            return false;
        }
        let slots_taken = self
            .p
            .vm
            .backing(SYSCALL_SLOTS.start, SYSCALL_SLOTS.end)
            .is_some_and(|b| b == Backing::JumpSlots);
        if !slots_taken
            && self
                .p
                .vm
                .ranges()
                .any(|(s, e)| s < SYSCALL_SLOTS.end && e > SYSCALL_SLOTS.start)
        {
            return false; // the app mapped something there: this process goes unpatched
        }
        let Some(jump) = m.syscall_site_jump(ret, nr32) else {
            return false;
        };
        if !slots_taken {
            self.p.vm.reserve_jump_slots();
        }
        if jump[5..7] != SYSCALL {
            // The platform broke the contract that keeps a jump into the pair's tail working.
            tracing::error!(
                site,
                "syscall site jump does not end in a syscall instruction"
            );
            return false;
        }
        m.write(site, &jump).is_ok()
    }
}

/// Whether `bytes` (the byte before a site, then its seven) are `mov $nr, %eax; syscall`.
fn is_mov_syscall_pair(bytes: &[u8; 8], nr: u32) -> bool {
    let is_rex = (0x40..=0x4f).contains(&bytes[0]);
    !is_rex && bytes[1] == MOV_EAX && bytes[2..6] == nr.to_le_bytes() && bytes[6..8] == SYSCALL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mov_of_this_calls_number_right_before_syscall_is_a_pair() {
        // glibc's write(): ...; mov $1, %eax; syscall
        let write = [0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05];
        assert!(is_mov_syscall_pair(&write, 1));
        assert!(!is_mov_syscall_pair(&write, 2), "another number in rax");
        // mov $1, %r8d (41 b8 ...) leaves eax as it was.
        let mut r8 = write;
        r8[0] = 0x41;
        assert!(!is_mov_syscall_pair(&r8, 1));
        // xor %eax, %eax; syscall (glibc's read) has no room for the jump.
        let read = [0x00, 0x00, 0x00, 0x00, 0x31, 0xc0, 0x0f, 0x05];
        assert!(!is_mov_syscall_pair(&read, 0));
        let mut int80 = write;
        int80[6..8].copy_from_slice(&[0xcd, 0x80]);
        assert!(!is_mov_syscall_pair(&int80, 1));
    }

    #[test]
    fn the_slots_range_ends_every_slot_address_in_a_syscall_instruction() {
        for slot in (SYSCALL_SLOTS.start..SYSCALL_SLOTS.end).step_by(8) {
            assert_eq!((slot as u32).to_le_bytes()[2..4], SYSCALL);
        }
    }
}
