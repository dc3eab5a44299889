//! qkernel's syscall decoding against a hostile app: any syscall number with any arguments
//! (pointers anywhere, lengths that overflow, bad descriptors and flags) gets an answer (a
//! value, an error, an exit) and never panics the kernel. Property-tested, on a machine whose
//! memory is one small region, so most pointers are bad.

use proptest::prelude::*;

use crate::test_machine::{TestMachine, BASE, SIZE};
use crate::{Kernel, SyscallArgs};

/// An argument: mostly pointers into or around the region, sometimes anything.
fn arg() -> impl Strategy<Value = u64> {
    prop_oneof![
        (BASE..BASE + SIZE),
        (BASE + SIZE - 64..BASE + SIZE + 64),
        0u64..4096,
        Just(u64::MAX),
        Just(u64::MAX - 4095),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// One call with any number and arguments, after a few ordinary ones (so descriptors,
    /// memory and a socket pair exist to be abused).
    #[test]
    fn any_syscall_with_any_arguments_is_answered(
        calls in proptest::collection::vec(
            (0u64..crate::fuzz::MAX_NR, proptest::array::uniform6(arg())),
            1..6,
        )
    ) {
        crate::fuzz::hostile_calls(&calls);
    }
}

/// The harness reaches the kernel's real work: ordinary calls succeed on this machine and bad
/// pointers are EFAULT, so the property above exercises decoding, not an early refusal.
#[test]
fn ordinary_calls_work_and_bad_pointers_are_efault() {
    let mut m = TestMachine::region();
    let mut k = Kernel::new(BASE + SIZE, "/bin/app", "/");
    let mut call = |nr: u64, args: [u64; 6]| match k.syscall(&mut m, SyscallArgs { nr, args }) {
        crate::SyscallOutcome::Return(v) => v,
        other => panic!("call {nr}: {other:?}"),
    };
    assert_eq!(call(39, [0; 6]), 1, "getpid");
    assert_eq!(call(1, [1, BASE, 5, 0, 0, 0]), 5, "write to the console");
    let efault = -14;
    assert_eq!(call(1, [1, BASE + SIZE - 2, 5, 0, 0, 0]), efault);
    assert_eq!(call(1, [1, u64::MAX - 1, 5, 0, 0, 0]), efault);
    assert_eq!(call(22, [BASE + SIZE + 8, 0, 0, 0, 0, 0]), efault, "pipe");
    assert_eq!(call(22, [BASE, 0, 0, 0, 0, 0]), 0, "pipe");
    assert_eq!(
        call(1, [4, BASE + 100, 3, 0, 0, 0]),
        3,
        "write into the pipe"
    );
    assert_eq!(call(0, [3, BASE + 200, 3, 0, 0, 0]), 3, "read it back");
    assert_eq!(call(1, [4, BASE + 100, 3, 0, 0, 0]), 3, "write again");
    assert_eq!(
        call(0, [3, u64::MAX - 1, 3, 0, 0, 0]),
        efault,
        "read into a bad buffer"
    );
}
