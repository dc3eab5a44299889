//! qkernel's ELF loader: any image (after a valid-looking identification) loads or is refused.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let [a, b, body @ ..] = data {
        qkernel::fuzz::elf_image(u16::from_le_bytes([*a, *b]) % 5, body);
    }
});
