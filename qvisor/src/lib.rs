//! qvisor: the VMM. One KVM virtual machine per container: guest memory and page tables
//! ([`memory`]), the vCPU and its exit loop ([`vm`]); each exit is served by qkernel.

pub mod memory;
pub mod vm;

use anyhow::Context;

pub use vm::{Stop, Vm};

/// Default guest memory when the bundle sets no limit.
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// Loads a static executable into a fresh VM and runs it to the end.
pub fn run_static(
    image: &[u8],
    argv: &[String],
    envp: &[String],
    memory: u64,
) -> anyhow::Result<Stop> {
    let mut vm = Vm::new(memory)?;
    let loaded = {
        let mut machine = vm.machine();
        qkernel::load_static(&mut machine, image, argv, envp).context("loading the executable")?
    };
    let mut kernel = qkernel::Kernel::new(loaded.brk);
    vm.run(&mut kernel, loaded.entry, loaded.stack_pointer)
}
