//! qnet's input from the pod network: any frame is dropped or answered.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| qnet::fuzz::frame_bytes(data));
