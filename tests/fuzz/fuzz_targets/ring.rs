//! The stack side of the socket ring: whatever a client writes into its region, the stack
//! serves it or closes that client.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| qnet::fuzz::ring_bytes(data));
