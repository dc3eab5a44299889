//! Entry points for fuzzing qkernel's guest-facing decoding, shared by the proptest harnesses
//! (under `cfg(test)`) and the libFuzzer targets in `tests/fuzz` (under `cfg(fuzzing)`, which
//! cargo-fuzz sets). Each takes whatever bytes the fuzzer made and must never panic.

use crate::test_machine::{TestMachine, BASE, SIZE};
use crate::{load_static, Kernel, SyscallArgs};

/// Calls that hand the CPU to another program or block the one thread for good (execve,
/// fork and friends, pause): they need a platform that switches address spaces, which the
/// test machine is not; the guest tests cover them on real KVM.
fn platform_only(nr: u64) -> bool {
    matches!(nr, 34 | 56 | 57 | 58 | 59 | 61 | 247 | 322 | 435)
}

/// The highest syscall number tried (a little past Linux's last).
pub const MAX_NR: u64 = 460;

/// Runs `calls` (number, arguments) on a fresh kernel over a machine whose memory is one small
/// region at [`BASE`], after a few ordinary calls (so descriptors, memory and a socket pair
/// exist to be abused).
pub fn hostile_calls(calls: &[(u64, [u64; 6])]) {
    let mut m = TestMachine::region();
    let mut k = Kernel::new(BASE + SIZE, "/bin/app", "/");
    let setup = [
        SyscallArgs {
            nr: 53,
            args: [1, 1, 0, BASE, 0, 0],
        }, // socketpair -> fds at BASE
        SyscallArgs {
            nr: 22,
            args: [BASE + 8, 0, 0, 0, 0, 0],
        }, // pipe
        SyscallArgs {
            nr: 291,
            args: [0; 6],
        }, // epoll_create1
    ];
    for call in setup {
        let _ = k.syscall(&mut m, call);
    }
    for &(nr, args) in calls {
        if platform_only(nr) {
            continue;
        }
        let _ = k.syscall(&mut m, SyscallArgs { nr, args });
    }
}

/// Decodes fuzzer bytes into calls for [`hostile_calls`]: per call, two bytes of number and six
/// arguments of a kind byte and eight value bytes; the kind makes most arguments pointers into
/// or around the region, as an app's would be.
pub fn syscalls(data: &[u8]) {
    const CALL: usize = 2 + 6 * 9;
    let calls: Vec<(u64, [u64; 6])> = data
        .chunks_exact(CALL)
        .take(8)
        .map(|c| {
            let nr = u64::from(u16::from_le_bytes([c[0], c[1]])) % MAX_NR;
            let mut args = [0u64; 6];
            for (a, raw) in args.iter_mut().zip(c[2..].chunks_exact(9)) {
                let mut v = [0u8; 8];
                v.copy_from_slice(&raw[1..]);
                let v = u64::from_le_bytes(v);
                *a = match raw[0] % 6 {
                    0 => BASE + v % SIZE,
                    1 => BASE + SIZE - 64 + v % 128,
                    2 => v % 4096,
                    3 => u64::MAX,
                    4 => u64::MAX - 4095,
                    _ => v,
                };
            }
            (nr, args)
        })
        .collect();
    hostile_calls(&calls);
}

/// Loads an ELF image of type `ty` for x86-64 whose header from `e_version` on, program
/// headers and segments are `body` (so the fuzzer spends its time past the identification).
pub fn elf_image(ty: u16, body: &[u8]) {
    let mut img = b"\x7fELF\x02\x01\x01\x00".to_vec();
    img.resize(16, 0);
    img.extend_from_slice(&ty.to_le_bytes());
    img.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    img.extend_from_slice(body);
    let mut m = TestMachine::accepting();
    let _ = load_static(&mut m, &img, &["a".into()], &[]);
}
