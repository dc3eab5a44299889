//! The narrow interface between qkernel and the machine it runs on.

use thiserror::Error;

/// A guest access that hit an address with no (suitable) mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("guest fault at {addr:#x}")]
pub struct Fault {
    pub addr: u64,
}

/// Permissions of a user mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFlags {
    pub write: bool,
    pub exec: bool,
}

/// What qkernel needs from the platform. Every address is a guest-virtual address of the app;
/// implementations check every access against the app's mappings and never reach memory
/// outside the guest.
pub trait Machine {
    /// Maps `len` bytes (page aligned) of fresh zeroed memory at `va` (page aligned), user
    /// accessible. Fails if any page is already mapped or memory is exhausted.
    fn map_zeroed(&mut self, va: u64, len: u64, flags: PageFlags) -> Result<(), Fault>;
    /// Copies guest memory at `va` into `buf`, as the app could read it.
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Fault>;
    /// Copies `buf` into guest memory at `va`, ignoring write protection (the kernel may write
    /// what the app may only read, e.g. when loading code).
    fn write(&mut self, va: u64, buf: &[u8]) -> Result<(), Fault>;
    /// Writes to the container's stdout (1) or stderr (2).
    fn console_write(&mut self, fd: i32, data: &[u8]) -> std::io::Result<usize>;
    /// Reads from the container's stdin.
    fn console_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Wall-clock time (CLOCK_REALTIME) and monotonic time, in nanoseconds.
    fn realtime_ns(&self) -> u64;
    fn monotonic_ns(&self) -> u64;
    /// Fills `buf` with cryptographically secure random bytes.
    fn random(&mut self, buf: &mut [u8]);
    /// Sets the thread pointer (the FS base) the app sees when it resumes.
    fn set_thread_pointer(&mut self, fs_base: u64);
}
