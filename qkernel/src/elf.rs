//! Loading an x86-64 ELF executable (static, static-PIE, or dynamically linked with its
//! interpreter, `ld-linux-x86-64.so.2`) and building the initial stack Linux programs expect:
//! argc, argv, envp and the auxiliary vector.
//!
//! The image is untrusted input: every header field is bounds-checked before use.

use thiserror::Error;

use crate::machine::{Fault, Machine, PageFlags};

pub(crate) const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_PHDR: u32 = 6;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
/// Where a static-PIE image goes (Linux's ELF_ET_DYN_BASE for x86-64).
const PIE_BASE: u64 = 0x5555_5555_4000;
/// Where the interpreter of a dynamically linked program goes: far below the mmap area (which
/// grows down from under the stack) and far above any heap.
const INTERP_BASE: u64 = 0x7f00_0000_0000;
/// Longest interpreter path accepted.
const MAX_INTERP: u64 = 4096;
/// Highest user address + 1 of the stack, and its size (mapped up front).
pub const STACK_TOP: u64 = 0x7fff_ffff_f000;
pub const STACK_SIZE: u64 = 8 << 20;
/// Stack mapped at exec beyond what argv and envp take.
const STACK_EAGER: u64 = 128 << 10;
/// User addresses stop here (47-bit canonical lower half).
pub const USER_END: u64 = 0x7fff_ffff_f000;

const AT_NULL: u64 = 0;
const AT_PHDR: u64 = 3;
const AT_PHENT: u64 = 4;
const AT_PHNUM: u64 = 5;
const AT_PAGESZ: u64 = 6;
const AT_BASE: u64 = 7;
const AT_FLAGS: u64 = 8;
const AT_ENTRY: u64 = 9;
const AT_UID: u64 = 11;
const AT_EUID: u64 = 12;
const AT_GID: u64 = 13;
const AT_EGID: u64 = 14;
const AT_PLATFORM: u64 = 15;
const AT_HWCAP: u64 = 16;
const AT_CLKTCK: u64 = 17;
const AT_SECURE: u64 = 23;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_SYSINFO_EHDR: u64 = 33;
const AT_EXECFN: u64 = 31;

/// The most bytes of loadable segments an image may span, whatever the guest's memory size:
/// a bound on the host work of listing its pages.
const MAX_IMAGE_BYTES: u64 = 1 << 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian x86-64 executable")]
    WrongArch,
    #[error("ELF type {0} is not an executable")]
    NotExecutable(u16),
    #[error("dynamically linked, and its interpreter (PT_INTERP) was not given")]
    Dynamic,
    #[error("malformed ELF: {0}")]
    Malformed(&'static str),
    #[error("guest memory: {0}")]
    Memory(#[from] Fault),
}

/// Where the program starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    pub stack_pointer: u64,
    /// First address after the highest segment (the start of the heap).
    pub brk: u64,
}

/// `n` bytes at `off`, or an error if they run past the image (or the offset overflows).
fn field(b: &[u8], off: usize, n: usize) -> Result<&[u8], ElfError> {
    off.checked_add(n)
        .and_then(|end| b.get(off..end))
        .ok_or(ElfError::Malformed("truncated header"))
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    field(b, off, 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    field(b, off, 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(field(b, off, 8)?);
    Ok(u64::from_le_bytes(a))
}

struct Segment {
    ty: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

fn segments(image: &[u8]) -> Result<(u16, u64, Vec<Segment>, u64), ElfError> {
    if image.len() < 64 || &image[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if image[4] != 2 || image[5] != 1 || u16_at(image, 18)? != 62 {
        return Err(ElfError::WrongArch);
    }
    let ty = u16_at(image, 16)?;
    if ty != ET_EXEC && ty != ET_DYN {
        return Err(ElfError::NotExecutable(ty));
    }
    let entry = u64_at(image, 24)?;
    let phoff = u64_at(image, 32)?;
    let phentsize = u16_at(image, 54)? as u64;
    let phnum = u16_at(image, 56)? as u64;
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return Err(ElfError::Malformed("program header table"));
    }
    let mut out = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(ElfError::Malformed("program header offset"))?;
        let ph = field(image, at, 56)?;
        out.push(Segment {
            ty: u32_at(ph, 0)?,
            flags: u32_at(ph, 4)?,
            offset: u64_at(ph, 8)?,
            vaddr: u64_at(ph, 16)?,
            filesz: u64_at(ph, 32)?,
            memsz: u64_at(ph, 40)?,
        });
    }
    Ok((ty, entry, out, phoff))
}

/// The interpreter a dynamically linked image names (PT_INTERP), if any.
pub fn interpreter(image: &[u8]) -> Result<Option<String>, ElfError> {
    let (_, _, segs, _) = segments(image)?;
    let Some(s) = segs.iter().find(|s| s.ty == PT_INTERP) else {
        return Ok(None);
    };
    if s.filesz == 0 || s.filesz > MAX_INTERP {
        return Err(ElfError::Malformed("interpreter path"));
    }
    let raw = field(image, s.offset as usize, s.filesz as usize)
        .map_err(|_| ElfError::Malformed("interpreter path"))?;
    let path = raw.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8(path.to_vec())
        .map(Some)
        .map_err(|_| ElfError::Malformed("interpreter path"))
}

/// Loads a static `image` into `m` and builds the initial stack; returns where to start.
pub fn load_static(
    m: &mut dyn Machine,
    image: &[u8],
    argv: &[String],
    envp: &[String],
) -> Result<Loaded, ElfError> {
    load(m, image, None, argv, envp)
}

/// Loads `image`, and `interp` (its interpreter's image) if it is dynamically linked, and
/// builds the initial stack: the program starts in the interpreter, which finds the program
/// through AT_PHDR/AT_ENTRY and itself through AT_BASE.
pub fn load(
    m: &mut dyn Machine,
    image: &[u8],
    interp: Option<&[u8]>,
    argv: &[String],
    envp: &[String],
) -> Result<Loaded, ElfError> {
    let main = map_image(m, image, None)?;
    let (start, base) = match (main.dynamic, interp) {
        (false, _) => (main.entry, 0),
        (true, None) => return Err(ElfError::Dynamic),
        (true, Some(interp)) => {
            let i = map_image(m, interp, Some(INTERP_BASE))?;
            if i.dynamic {
                return Err(ElfError::Malformed("the interpreter has an interpreter"));
            }
            (i.entry, i.bias)
        }
    };
    let aux = Aux {
        phdr: main.phdr,
        phnum: main.phnum,
        entry: main.entry,
        base,
    };
    let sp = build_stack(m, argv, envp, &aux)?;
    Ok(Loaded {
        entry: start,
        stack_pointer: sp,
        brk: main.end,
    })
}

/// What mapping one image gave.
struct Mapped {
    entry: u64,
    phdr: u64,
    phnum: u64,
    /// First page after the image.
    end: u64,
    bias: u64,
    /// It names an interpreter.
    dynamic: bool,
}

/// Maps the PT_LOAD segments of `image`, position-independent ones at `base` (or PIE_BASE).
fn map_image(m: &mut dyn Machine, image: &[u8], base: Option<u64>) -> Result<Mapped, ElfError> {
    let (ty, entry, segs, phoff) = segments(image)?;
    let dynamic = segs.iter().any(|s| s.ty == PT_INTERP);
    let bias = match (ty, base) {
        (ET_DYN, Some(b)) => b,
        (ET_DYN, None) => PIE_BASE,
        (_, Some(_)) => {
            return Err(ElfError::Malformed(
                "the interpreter is not position-independent",
            ))
        }
        _ => 0,
    };
    // Pages of all PT_LOAD segments with the union of their permissions (segments may share
    // a page), in order.
    let mut pages: std::collections::BTreeMap<u64, PageFlags> = Default::default();
    let mut end = 0u64;
    let mut phdr_va = None;
    // Segments that could never fit in guest memory are refused before their pages are
    // listed: a memsz of a terabyte would otherwise cost the host that many page entries.
    let (guest_bytes, _) = m.memory_info();
    let max_pages = match guest_bytes {
        0 => MAX_IMAGE_BYTES,
        n => n.min(MAX_IMAGE_BYTES),
    } / PAGE;
    let mut span_pages = 0u64;
    for s in segs.iter().filter(|s| s.ty == PT_LOAD) {
        let file_end = s.offset.checked_add(s.filesz);
        let lo = s.vaddr.checked_add(bias);
        let hi = lo.and_then(|lo| lo.checked_add(s.memsz));
        let (Some(file_end), Some(lo), Some(hi)) = (file_end, lo, hi) else {
            return Err(ElfError::Malformed("segment overflows"));
        };
        if s.filesz > s.memsz || file_end > image.len() as u64 || hi > USER_END || lo < PAGE {
            return Err(ElfError::Malformed(
                "segment outside the file or user space",
            ));
        }
        span_pages += hi.div_ceil(PAGE) - lo / PAGE;
        if span_pages > max_pages {
            return Err(ElfError::Malformed("segments larger than guest memory"));
        }
        let flags = PageFlags {
            write: s.flags & PF_W != 0,
            exec: s.flags & PF_X != 0,
        };
        let mut page = lo & !(PAGE - 1);
        while page < hi {
            let e = pages.entry(page).or_insert(PageFlags {
                write: false,
                exec: false,
            });
            e.write |= flags.write;
            e.exec |= flags.exec;
            page += PAGE;
        }
        end = end.max(hi.div_ceil(PAGE) * PAGE);
        if s.offset <= phoff && phoff < file_end {
            phdr_va = Some(lo + (phoff - s.offset));
        }
    }
    if pages.is_empty() {
        return Err(ElfError::Malformed("no loadable segment"));
    }
    if let Some(p) = segs.iter().find(|s| s.ty == PT_PHDR) {
        let va = p.vaddr.checked_add(bias);
        phdr_va = Some(va.ok_or(ElfError::Malformed("program headers outside memory"))?);
    }
    for (&page, &flags) in &pages {
        m.map_zeroed(page, PAGE, flags)?;
    }
    for s in segs.iter().filter(|s| s.ty == PT_LOAD && s.filesz > 0) {
        let data = &image[s.offset as usize..(s.offset + s.filesz) as usize];
        m.write(s.vaddr + bias, data)?;
    }
    let entry = entry
        .checked_add(bias)
        .filter(|e| pages.contains_key(&(e & !(PAGE - 1))))
        .ok_or(ElfError::Malformed("entry point outside the image"))?;
    Ok(Mapped {
        entry,
        phdr: phdr_va.unwrap_or(0),
        phnum: segs.len() as u64,
        end,
        bias,
        dynamic,
    })
}

/// The auxiliary vector's program-specific entries.
struct Aux {
    phdr: u64,
    phnum: u64,
    entry: u64,
    /// Where the interpreter was loaded (0: none).
    base: u64,
}

/// Maps the stack and lays out strings, AT_RANDOM bytes, argv, envp and auxv on it.
fn build_stack(
    m: &mut dyn Machine,
    argv: &[String],
    envp: &[String],
    aux: &Aux,
) -> Result<u64, Fault> {
    // Only the top of the stack is mapped now, enough for the strings and vectors below
    // with room to start; the rest of STACK_SIZE is mapped page by page as the program
    // touches it (Kernel::page_fault), so fork copies, and memory holds, only what is used.
    let strings: usize = argv.iter().chain(envp).map(|s| s.len() + 1 + 8).sum();
    let eager = ((strings as u64 + STACK_EAGER).div_ceil(PAGE) * PAGE).min(STACK_SIZE);
    m.map_zeroed(
        STACK_TOP - eager,
        eager,
        PageFlags {
            write: true,
            exec: false,
        },
    )?;
    let mut sp = STACK_TOP;
    let mut push_bytes = |m: &mut dyn Machine, bytes: &[u8]| -> Result<u64, Fault> {
        sp -= bytes.len() as u64;
        m.write(sp, bytes)?;
        Ok(sp)
    };
    let mut cstr = |m: &mut dyn Machine, s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        push_bytes(m, &v)
    };
    let execfn = cstr(m, argv.first().map_or("", String::as_str))?;
    let platform = cstr(m, "x86_64")?;
    let argv_ptrs = argv
        .iter()
        .map(|a| cstr(m, a))
        .collect::<Result<Vec<_>, _>>()?;
    let env_ptrs = envp
        .iter()
        .map(|e| cstr(m, e))
        .collect::<Result<Vec<_>, _>>()?;
    let mut random = [0u8; 16];
    m.random(&mut random);
    let random_at = push_bytes(m, &random)?;
    let mut auxv: Vec<(u64, u64)> = vec![
        (AT_PHDR, aux.phdr),
        (AT_PHENT, 56),
        (AT_PHNUM, aux.phnum),
        (AT_PAGESZ, PAGE),
        (AT_BASE, aux.base),
        (AT_FLAGS, 0),
        (AT_ENTRY, aux.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_SECURE, 0),
        (AT_RANDOM, random_at),
        (AT_HWCAP, 0),
        (AT_HWCAP2, 0),
        (AT_CLKTCK, 100),
        (AT_PLATFORM, platform),
    ];
    if let Some(vdso) = m.vdso() {
        auxv.push((AT_SYSINFO_EHDR, vdso.image));
    }
    let mut words: Vec<u64> = Vec::new();
    words.push(argv_ptrs.len() as u64);
    words.extend(&argv_ptrs);
    words.push(0);
    words.extend(&env_ptrs);
    words.push(0);
    for (k, v) in auxv {
        words.extend([k, v]);
    }
    words.extend([AT_EXECFN, execfn, AT_NULL, 0]);
    // The ABI wants rsp 16-byte aligned at the entry point, pointing at argc.
    let mut top = sp & !15;
    top -= words.len() as u64 * 8;
    top &= !15;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    m.write(top, &bytes)?;
    Ok(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An x86-64 image of type `ty` starting at `entry`, whose program headers are
    /// `(type, vaddr, memsz)` each, with no file contents.
    fn image(ty: u16, entry: u64, headers: &[(u32, u64, u64)]) -> Vec<u8> {
        let mut img = vec![0u8; 64 + 56 * headers.len()];
        img[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        img[16] = ty as u8;
        img[18] = 62;
        img[24..32].copy_from_slice(&entry.to_le_bytes());
        img[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        img[54] = 56; // phentsize
        img[56] = headers.len() as u8; // phnum
        for (i, &(kind, vaddr, memsz)) in headers.iter().enumerate() {
            let ph = &mut img[64 + 56 * i..64 + 56 * (i + 1)];
            ph[0..4].copy_from_slice(&kind.to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
        }
        img
    }

    /// Found by the elf fuzz target (tests/fuzz/corpus/elf/huge-memsz): one PT_LOAD of a
    /// terabyte made the loader list 2^28 pages (gigabytes of host memory) before mapping any.
    #[test]
    fn a_segment_larger_than_memory_is_refused_before_its_pages_are_listed() {
        let m = &mut crate::test_machine::TestMachine::accepting();
        let img = image(ET_EXEC, 0x40_1000, &[(PT_LOAD, 0x40_0000, 1 << 40)]);
        assert_eq!(
            load_static(m, &img, &[], &[]),
            Err(ElfError::Malformed("segments larger than guest memory"))
        );
    }

    /// Found by the elf fuzz target (tests/fuzz/corpus/elf/phdr-overflow): a position-
    /// independent image whose PT_PHDR address overflowed when its load bias was added.
    #[test]
    fn program_headers_beyond_the_address_space_are_refused() {
        let m = &mut crate::test_machine::TestMachine::accepting();
        let headers = [(PT_LOAD, 0x1000, 0x1000), (PT_PHDR, u64::MAX - 8, 0)];
        let img = image(ET_DYN, 0x1000, &headers);
        assert_eq!(
            load_static(m, &img, &[], &[]),
            Err(ElfError::Malformed("program headers outside memory"))
        );
    }

    #[test]
    fn rejects_garbage_and_foreign_binaries() {
        let m = &mut crate::test_machine::TestMachine::accepting();
        assert_eq!(load_static(m, b"hello", &[], &[]), Err(ElfError::NotElf));
        let mut hdr = vec![0u8; 64];
        hdr[..4].copy_from_slice(b"\x7fELF");
        hdr[4] = 1; // 32-bit
        assert_eq!(load_static(m, &hdr, &[], &[]), Err(ElfError::WrongArch));
        hdr[4] = 2;
        hdr[5] = 1;
        hdr[18] = 62;
        hdr[16] = 1; // ET_REL
        assert_eq!(
            load_static(m, &hdr, &[], &[]),
            Err(ElfError::NotExecutable(1))
        );
        hdr[16] = 2;
        // phentsize 0: malformed, and huge offsets never index out of bounds.
        assert!(matches!(
            load_static(m, &hdr, &[], &[]),
            Err(ElfError::Malformed(_))
        ));
        hdr[54] = 56;
        hdr[56] = 1;
        hdr[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            load_static(m, &hdr, &[], &[]),
            Err(ElfError::Malformed(_))
        ));
    }

    proptest::proptest! {
        /// Hostile images: any bytes after a valid-looking ident never panic the loader.
        #[test]
        fn arbitrary_images_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), ty in 0u16..5) {
            crate::fuzz::elf_image(ty, &body);
        }
    }
}
