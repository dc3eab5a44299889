//! qkernel: the Linux-compatible kernel dedicated to one container.
//!
//! It never touches the host directly. Everything it needs (guest memory and page mappings, the
//! console, the clock, randomness) comes through [`Machine`], which qvisor implements on top of
//! a KVM virtual machine; that trait is the boundary to audit. The platform delivers each
//! syscall of the app as a call to [`Kernel::syscall`] with the guest's registers, in the style
//! of gVisor's Sentry.
// Guest and network input reach this crate: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cred;
mod elf;
mod epoll;
mod eventfd;
mod fastread;
mod fs;
mod futex;
mod host;
mod locks;
mod machine;
mod net;
mod pipe;
mod process;
mod procfs;
mod rlimits;
mod signal;
mod signalfd;
mod sites;
mod syscalls;
pub mod sysnames;
mod timers;
mod unix;
mod unix_dgram;

#[cfg(any(test, fuzzing))]
pub mod fuzz;
#[cfg(test)]
mod hostile_tests;
#[cfg(any(test, fuzzing))]
mod test_machine;

pub use elf::{interpreter, load, load_static, ElfError, Loaded};
pub use fastread::{QUARK_READ_DONE, QUARK_WRITE_DONE};
pub use host::{HostEvent, HostRequest, SpawnRequest};
pub use machine::{
    iov_len, net_recv_through_buffer, net_send_through_buffer, Fault, FileAttr, HostFile, Machine,
    PageFlags, RawStat, SocketId, SocketReady, SpaceId, Tty, UserRegs, Vdso, SYSCALL_SLOTS,
};
pub use syscalls::{Kernel, SyscallArgs, SyscallOutcome};

/// Puts `value` in the first empty entry of `table` (appending one if there is none) and
/// returns its index: the ids of pipes, eventfds, epoll sets... are indices that get reused.
pub(crate) fn put_in_vacancy<T>(table: &mut Vec<Option<T>>, value: T) -> usize {
    let id = match table.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            table.push(None);
            table.len() - 1
        }
    };
    table[id] = Some(value);
    id
}

/// Linux errno values returned to the app (as `-errno`).
pub mod errno {
    pub const EPERM: i64 = 1;
    pub const ENOENT: i64 = 2;
    pub const ESRCH: i64 = 3;
    pub const E2BIG: i64 = 7;
    pub const ENOEXEC: i64 = 8;
    pub const ECHILD: i64 = 10;
    pub const EINTR: i64 = 4;
    pub const EIO: i64 = 5;
    pub const EBADF: i64 = 9;
    pub const EAGAIN: i64 = 11;
    pub const ENOMEM: i64 = 12;
    pub const EACCES: i64 = 13;
    pub const EFAULT: i64 = 14;
    pub const ENODEV: i64 = 19;
    pub const ENOTDIR: i64 = 20;
    pub const EISDIR: i64 = 21;
    pub const EINVAL: i64 = 22;
    pub const EMFILE: i64 = 24;
    pub const ENOTTY: i64 = 25;
    pub const ESPIPE: i64 = 29;
    pub const EROFS: i64 = 30;
    pub const EPIPE: i64 = 32;
    pub const ERANGE: i64 = 34;
    pub const ENAMETOOLONG: i64 = 36;
    pub const ENOSYS: i64 = 38;
    pub const ENODATA: i64 = 61;
    pub const EOPNOTSUPP: i64 = 95;
    pub const ENOTCONN: i64 = 107;
    pub const ETIMEDOUT: i64 = 110;
}
