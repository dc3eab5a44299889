//! qkernel's syscall decoding: any sequence of calls with any arguments is answered.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| qkernel::fuzz::syscalls(data));
