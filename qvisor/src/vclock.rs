//! The guest's clocks without a syscall: a vDSO (`vdso/vdso.S`) and the data page it reads
//! (`vvar`), mapped read-only in the half every address space shares, and the host side that
//! keeps that page's curve on the host's `CLOCK_MONOTONIC`.
//!
//! The guest reads the TSC in user mode at native speed (on this PVM host the guest's TSC is
//! the host's), so `clock_gettime` and friends cost ~20 ns instead of a syscall (7 µs through
//! the `syscall` instruction of a static binary here). The curve is
//! `mono_ns + ((tsc - tsc_base) * mult) >> 32`, published under a seqlock; the preemption
//! timer's thread calls [`VClock::update`] every tick, which re-bases the curve where it is
//! (never a step back) and steers its slope so it meets the host clock by the next tick.
//! qkernel's own clock reads ([`VClock::monotonic_ns`]) go through the same curve, so a time
//! read in the vDSO and one from a syscall never disagree.
//!
//! Nothing flows from the guest to the host here: the page is read-only to the guest, and the
//! host never reads guest memory for it.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::memory::PAGE;
use crate::poll::STUB_VA;
use crate::vm::clock_ns as host_clock;

/// The data page, one page below the image (the image reaches it RIP-relative).
pub const VVAR_VA: u64 = STUB_VA + 0x20_0000;
/// The vDSO image: what AT_SYSINFO_EHDR points at.
pub const VDSO_VA: u64 = VVAR_VA + PAGE;
/// `vdso/vdso.S` built by `vdso/build.sh`; the test `vdso_image_matches_the_source` checks
/// the bytes are the source's.
pub const VDSO_IMAGE: &[u8] = include_bytes!("../vdso/vdso.so");
/// Host environment variable that turns the vDSO off for every container (`off`): the
/// operator's kill switch. Programs then make every time call as a syscall.
pub const VDSO_ENV: &str = "QUARK_VDSO";

/// Whether containers get the vDSO, given what the bundle or flag asked for.
pub fn vdso_wanted(asked: bool) -> bool {
    asked && std::env::var(VDSO_ENV).as_deref() != Ok("off")
}

/// Fixed-point shift of `mult` (ns per TSC cycle).
const SHIFT: u32 = 32;
/// A host clock this far ahead of the curve steps the curve forward instead of slewing.
const STEP_NS: i128 = 50_000_000;
/// Set in `flags` when the curve may be used; clear, every call makes its syscall.
const USABLE: u32 = 1;

/// The data page as the vDSO reads it (offsets `VV_*` in vdso.S).
#[repr(C)]
struct Vvar {
    /// Odd while the host writes.
    seq: AtomicU32,
    flags: AtomicU32,
    tsc_base: AtomicU64,
    mult: AtomicU64,
    mono_ns: AtomicU64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, ns (two's complement).
    real_off: AtomicU64,
}

const _: () = {
    assert!(std::mem::offset_of!(Vvar, seq) == 0);
    assert!(std::mem::offset_of!(Vvar, flags) == 4);
    assert!(std::mem::offset_of!(Vvar, tsc_base) == 8);
    assert!(std::mem::offset_of!(Vvar, mult) == 16);
    assert!(std::mem::offset_of!(Vvar, mono_ns) == 24);
    assert!(std::mem::offset_of!(Vvar, real_off) == 32);
};

/// CLOCK_MONOTONIC as a line of the TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Curve {
    tsc_base: u64,
    mult: u64,
    mono_ns: u64,
}

impl Curve {
    /// The curve at `tsc` (as the vDSO computes it: a TSC before the base counts as the base).
    fn at(&self, tsc: u64) -> u64 {
        let cycles = tsc.saturating_sub(self.tsc_base) as u128;
        self.mono_ns
            .wrapping_add(((cycles * self.mult as u128) >> SHIFT) as u64)
    }

    /// The curve re-based at `now` (its value there unchanged, so time never steps back) and
    /// steered by `sample` of the host clock: its slope becomes the host's `rate` plus
    /// whatever closes the gap to the host over the next `horizon` cycles. A host far ahead
    /// (the curve was starved) is caught up at once instead.
    fn retarget(&self, now: u64, sample: Sample, rate: u64, horizon: u64) -> Curve {
        let here = self.at(now);
        let gap = sample.mono as i128 - self.at(sample.tsc) as i128;
        if gap > STEP_NS {
            let host_now = sample.mono
                + ((now.saturating_sub(sample.tsc) as u128 * rate as u128) >> SHIFT) as u64;
            return Curve {
                tsc_base: now,
                mult: rate,
                mono_ns: host_now.max(here),
            };
        }
        let steer = (gap << SHIFT) / horizon.max(1) as i128;
        let mult = (rate as i128 + steer).clamp(rate as i128 / 2, rate as i128 * 2);
        Curve {
            tsc_base: now,
            mult: mult as u64,
            mono_ns: here,
        }
    }
}

/// The host's CLOCK_MONOTONIC and the TSC read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    tsc: u64,
    mono: u64,
}

impl Sample {
    /// The host's ns-per-cycle between two samples (fixed point), if they are far enough apart.
    fn rate_since(&self, earlier: Sample) -> Option<u64> {
        let cycles = self.tsc.checked_sub(earlier.tsc)?;
        let ns = self.mono.checked_sub(earlier.mono)?;
        if cycles < 1_000_000 || ns == 0 {
            return None;
        }
        u64::try_from(((ns as u128) << SHIFT) / cycles as u128).ok()
    }
}

/// The TSC, not read before earlier loads are done (as Linux's `rdtsc_ordered`).
pub(crate) fn tsc() -> u64 {
    // SAFETY: lfence and rdtsc have no memory effects; every x86_64 CPU has both.
    unsafe {
        std::arch::x86_64::_mm_lfence();
        std::arch::x86_64::_rdtsc()
    }
}

/// The host's monotonic clock with the TSC at the middle of the read.
fn sample() -> Sample {
    let before = tsc();
    let mono = host_clock(libc::CLOCK_MONOTONIC);
    let after = tsc();
    Sample {
        tsc: before + (after.saturating_sub(before)) / 2,
        mono,
    }
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC now, ns (the monotonic clock read on both sides).
fn realtime_offset() -> u64 {
    let a = host_clock(libc::CLOCK_MONOTONIC);
    let real = host_clock(libc::CLOCK_REALTIME);
    let b = host_clock(libc::CLOCK_MONOTONIC);
    real.wrapping_sub(a + b.saturating_sub(a) / 2)
}

/// The realtime offset moves only when the host's wall clock is set; smaller differences
/// are the jitter of reading two clocks and would make CLOCK_REALTIME wobble.
const REALTIME_JITTER_NS: u64 = 1_000;

struct Tracker {
    curve: Curve,
    last: Sample,
    real_off: u64,
    /// The host's last measured slope (None until two samples were far enough apart).
    rate: Option<u64>,
}

/// The guest's clock: the data page and the state that keeps it.
pub struct VClock {
    page: *const Vvar,
    usable: bool,
    tracker: Mutex<Tracker>,
}

// SAFETY: the page is guest memory the Vm owns for as long as the VClock lives (the Vm drops
// its VClock handles before its memory); all access to it is atomic.
unsafe impl Send for VClock {}
// SAFETY: as above; writers serialise on the tracker's lock, readers use the seqlock.
unsafe impl Sync for VClock {}

impl VClock {
    /// Starts the clock on the data page at host address `page`. `tsc_khz`: the TSC's rate as
    /// KVM reports it (the first slope until the host's own is measured); `usable`: whether
    /// the guest's TSC reads what the host's does (else every time call makes its syscall).
    ///
    /// # Safety
    /// `page` must be the host address of the zeroed, page-aligned data page, valid for as long
    /// as the VClock lives and written by nothing else.
    pub unsafe fn new(page: *mut u8, tsc_khz: Option<u32>, usable: bool) -> VClock {
        let first = sample();
        let rate = tsc_khz
            .filter(|k| *k > 0)
            .and_then(|k| u64::try_from((1_000_000u128 << SHIFT) / k as u128).ok());
        let clock = VClock {
            page: page as *const Vvar,
            usable: usable && rate.is_some(),
            tracker: Mutex::new(Tracker {
                curve: Curve {
                    tsc_base: first.tsc,
                    mult: rate.unwrap_or(0),
                    mono_ns: first.mono,
                },
                last: first,
                real_off: realtime_offset(),
                rate: None,
            }),
        };
        let mut t = clock.tracker.lock().unwrap_or_else(|p| p.into_inner());
        clock.publish(&mut t, None);
        drop(t);
        clock
    }

    fn vvar(&self) -> &Vvar {
        // SAFETY: `new`'s contract: a live page, at least size_of::<Vvar>() bytes, aligned.
        unsafe { &*self.page }
    }

    /// Writes the tracker's curve to the page under the seqlock, first re-basing it on
    /// `steer` (a host sample, the host's rate, the horizon) if given. The re-base happens
    /// inside the write section, at a TSC no reader of the old curve can have passed (it would
    /// see the sequence change), so no reading ever steps back.
    fn publish(&self, t: &mut Tracker, steer: Option<(Sample, u64, u64)>) {
        let v = self.vvar();
        let seq = v.seq.load(Ordering::Relaxed);
        v.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if let Some((sample, rate, horizon)) = steer {
            t.curve = t.curve.retarget(tsc(), sample, rate, horizon);
        }
        v.tsc_base.store(t.curve.tsc_base, Ordering::Relaxed);
        v.mult.store(t.curve.mult, Ordering::Relaxed);
        v.mono_ns.store(t.curve.mono_ns, Ordering::Relaxed);
        v.real_off.store(t.real_off, Ordering::Relaxed);
        v.flags
            .store(if self.usable { USABLE } else { 0 }, Ordering::Relaxed);
        fence(Ordering::Release);
        v.seq.store(seq.wrapping_add(2), Ordering::Relaxed);
    }

    /// Re-bases the curve and steers it towards the host clock (every timer tick).
    pub fn update(&self) {
        if !self.usable {
            return;
        }
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let s = sample();
        let Some(rate) = s.rate_since(t.last).or(t.rate) else {
            return;
        };
        let horizon = s.tsc.saturating_sub(t.last.tsc);
        let real = realtime_offset();
        if (real.wrapping_sub(t.real_off) as i64).unsigned_abs() > REALTIME_JITTER_NS {
            t.real_off = real;
        }
        self.publish(&mut t, Some((s, rate, horizon)));
        t.last = s;
        t.rate = Some(rate);
    }

    /// CLOCK_MONOTONIC and the realtime offset as the guest sees them now.
    fn read(&self) -> (u64, u64) {
        if !self.usable {
            let mono = host_clock(libc::CLOCK_MONOTONIC);
            return (mono, host_clock(libc::CLOCK_REALTIME).wrapping_sub(mono));
        }
        let v = self.vvar();
        loop {
            let seq = v.seq.load(Ordering::Acquire);
            if seq & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let curve = Curve {
                tsc_base: v.tsc_base.load(Ordering::Relaxed),
                mult: v.mult.load(Ordering::Relaxed),
                mono_ns: v.mono_ns.load(Ordering::Relaxed),
            };
            let real_off = v.real_off.load(Ordering::Relaxed);
            let now = tsc();
            fence(Ordering::Acquire);
            if v.seq.load(Ordering::Relaxed) == seq {
                return (curve.at(now), real_off);
            }
        }
    }

    /// CLOCK_MONOTONIC as the guest's vDSO reads it now.
    pub fn monotonic_ns(&self) -> u64 {
        self.read().0
    }

    /// CLOCK_REALTIME as the guest's vDSO reads it now.
    pub fn realtime_ns(&self) -> u64 {
        let (mono, off) = self.read();
        mono.wrapping_add(off)
    }

    /// Whether the vDSO answers from the page (else it makes the syscalls).
    pub fn usable(&self) -> bool {
        self.usable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE_2_1_GHZ: u64 = ((1_000_000u128 << SHIFT) / 2_100_000) as u64;

    #[test]
    fn a_curve_counts_nanoseconds_from_its_base() {
        let c = Curve {
            tsc_base: 1000,
            mult: 1 << SHIFT,
            mono_ns: 5,
        };
        assert_eq!(c.at(1000), 5);
        assert_eq!(c.at(1010), 15);
        assert_eq!(c.at(10), 5, "a TSC before the base counts as the base");
        let ghz = Curve {
            tsc_base: 0,
            mult: RATE_2_1_GHZ,
            mono_ns: 0,
        };
        let second = ghz.at(2_100_000_000);
        assert!(second.abs_diff(1_000_000_000) <= 1, "{second}");
    }

    #[test]
    fn retargeting_never_steps_back_and_meets_the_host_by_the_horizon() {
        let tick = 21_000_000; // 10 ms at 2.1 GHz
                               // The host runs 300 ppm faster than the TSC's nominal rate; the curve starts nominal.
        let host_rate = RATE_2_1_GHZ + RATE_2_1_GHZ / 3333;
        let host = |tsc: u64| ((tsc as u128 * host_rate as u128) >> SHIFT) as u64;
        let mut c = Curve {
            tsc_base: 0,
            mult: RATE_2_1_GHZ,
            mono_ns: 0,
        };
        let mut worst_late = 0u64;
        for k in 1..200u64 {
            let at = k * tick;
            let s = Sample {
                tsc: at,
                mono: host(at),
            };
            let now = at + 500; // re-based a little after the sample
            let before = c.at(now);
            let next = c.retarget(now, s, host_rate, tick);
            assert_eq!(next.at(now), before, "re-basing keeps the curve's value");
            assert!(next.at(now + 1) >= before);
            if k > 3 {
                worst_late = worst_late.max(host(now + tick).abs_diff(next.at(now + tick)));
            }
            c = next;
        }
        assert!(
            worst_late < 1_000,
            "the curve stays within 1 µs of the host: {worst_late}"
        );
    }

    #[test]
    fn a_starved_curve_catches_up_at_once_but_a_fast_one_only_slows() {
        let c = Curve {
            tsc_base: 0,
            mult: RATE_2_1_GHZ,
            mono_ns: 0,
        };
        let at = 2_100_000_000u64; // the curve says 1 s here
        let ahead = Sample {
            tsc: at,
            mono: 3_000_000_000,
        };
        let next = c.retarget(at, ahead, RATE_2_1_GHZ, 21_000_000);
        assert_eq!(next.at(at), 3_000_000_000);
        let behind = Sample {
            tsc: at,
            mono: 900_000_000,
        };
        let next = c.retarget(at, behind, RATE_2_1_GHZ, 21_000_000);
        assert_eq!(next.at(at), c.at(at), "never back");
        assert_eq!(next.mult, RATE_2_1_GHZ / 2, "the slowest slope");
    }

    #[test]
    fn the_host_clock_follows_the_published_curve() {
        let mut page = vec![0u64; 512];
        // SAFETY: a zeroed, 8-byte aligned page owned by this test for the clock's life.
        let clock = unsafe { VClock::new(page.as_mut_ptr() as *mut u8, Some(2_100_000), true) };
        let mut last = clock.monotonic_ns();
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            clock.update();
            let now = clock.monotonic_ns();
            assert!(now >= last);
            last = now;
        }
        let host = host_clock(libc::CLOCK_MONOTONIC);
        assert!(
            host.abs_diff(clock.monotonic_ns()) < 200_000,
            "within 200 µs of the host after 40 ms"
        );
        let real = host_clock(libc::CLOCK_REALTIME);
        assert!(real.abs_diff(clock.realtime_ns()) < 200_000);
    }

    /// The address of `name` in an image loaded at `base`: the lookup a libc makes (the
    /// dynamic section's symbol and string tables, the symbol count from DT_HASH).
    fn symbol(image: &[u8], base: usize, name: &str) -> usize {
        let u64_at = |off: usize| u64::from_le_bytes(image[off..off + 8].try_into().unwrap());
        let u32_at = |off: usize| u32::from_le_bytes(image[off..off + 4].try_into().unwrap());
        let phoff = u64_at(32) as usize;
        let phnum = u16::from_le_bytes([image[56], image[57]]) as usize;
        let dynamic = (0..phnum)
            .map(|i| phoff + i * 56)
            .find(|ph| u32_at(*ph) == 2) // PT_DYNAMIC
            .map(|ph| u64_at(ph + 8) as usize)
            .expect("PT_DYNAMIC");
        let (mut symtab, mut strtab, mut hash) = (0, 0, 0);
        for entry in (dynamic..).step_by(16) {
            match u64_at(entry) {
                0 => break,
                4 => hash = u64_at(entry + 8) as usize,
                5 => strtab = u64_at(entry + 8) as usize,
                6 => symtab = u64_at(entry + 8) as usize,
                _ => {}
            }
        }
        let count = u32_at(hash + 4) as usize;
        (0..count)
            .map(|i| symtab + i * 24)
            .find(|sym| {
                let at = strtab + u32_at(*sym) as usize;
                image[at..].split(|b| *b == 0).next() == Some(name.as_bytes())
            })
            .map(|sym| base + u64_at(sym + 8) as usize)
            .unwrap_or_else(|| panic!("no {name} in the vDSO"))
    }

    /// A mapping of the data page and the image right above it, run on the host (whose TSC
    /// is the guest's): the vDSO's own code, checked against the host's clocks.
    struct Loaded {
        // Declared after the clock, which writes into it.
        clock: VClock,
        region: qnet::phy::uring::RawRegion,
    }

    impl Loaded {
        fn new(usable: bool) -> Loaded {
            let page = PAGE as usize;
            let region =
                qnet::phy::uring::RawRegion::new(page + VDSO_IMAGE.len().div_ceil(page) * page)
                    .unwrap();
            // SAFETY: the image fits in the pages above the data page, inside the mapping,
            // which nothing else uses; the text pages become read + execute.
            unsafe {
                let text = region.as_ptr().add(page);
                std::ptr::copy_nonoverlapping(VDSO_IMAGE.as_ptr(), text, VDSO_IMAGE.len());
                let r = libc::mprotect(
                    text as *mut libc::c_void,
                    region.len() - page,
                    libc::PROT_READ | libc::PROT_EXEC,
                );
                assert_eq!(r, 0);
            }
            // SAFETY: the first page of the mapping, zeroed, alive as long as the clock.
            let clock = unsafe { VClock::new(region.as_ptr(), Some(2_100_000), usable) };
            for _ in 0..3 {
                std::thread::sleep(std::time::Duration::from_millis(2));
                clock.update();
            }
            Loaded { clock, region }
        }

        fn func(&self, name: &str) -> usize {
            symbol(
                VDSO_IMAGE,
                self.region.as_ptr() as usize + PAGE as usize,
                name,
            )
        }

        fn clock_gettime(&self, clock: i32) -> (i64, i64) {
            type F = unsafe extern "C" fn(i32, *mut libc::timespec) -> i32;
            // SAFETY: the address of that function in the executable image.
            let f: F = unsafe { std::mem::transmute(self.func("__vdso_clock_gettime")) };
            let mut ts = libc::timespec {
                tv_sec: -1,
                tv_nsec: -1,
            };
            // SAFETY: a valid timespec; the function follows the C ABI.
            assert_eq!(unsafe { f(clock, &mut ts) }, 0);
            assert!((0..1_000_000_000).contains(&ts.tv_nsec));
            (ts.tv_sec, ts.tv_nsec)
        }
    }

    fn ns((s, n): (i64, i64)) -> u64 {
        s as u64 * 1_000_000_000 + n as u64
    }

    #[test]
    fn the_vdso_answers_as_the_host_clocks_do() {
        for usable in [true, false] {
            let v = Loaded::new(usable);
            assert_eq!(v.clock.usable(), usable);
            for (id, host) in [
                (libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC),
                (libc::CLOCK_BOOTTIME, libc::CLOCK_MONOTONIC),
                (libc::CLOCK_MONOTONIC_COARSE, libc::CLOCK_MONOTONIC),
                (libc::CLOCK_REALTIME, libc::CLOCK_REALTIME),
                (libc::CLOCK_TAI, libc::CLOCK_REALTIME),
            ] {
                let t = ns(v.clock_gettime(id));
                let h = host_clock(host);
                // TAI differs from the wall clock on a host that knows leap seconds, and the
                // host's coarse clock (the syscall the unusable page falls back to) lags by
                // up to a tick.
                let slack = match id {
                    libc::CLOCK_TAI => 40_000_000_000,
                    libc::CLOCK_MONOTONIC_COARSE => 10_000_000,
                    _ => 500_000,
                };
                assert!(
                    t.abs_diff(h) < slack,
                    "clock {id} (usable: {usable}): {t} vs {h}"
                );
            }
            // A clock the page does not serve makes the real syscall.
            let cpu = ns(v.clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID));
            assert!(cpu > 0 && cpu < host_clock(libc::CLOCK_MONOTONIC));
            // One reading after another never goes back, across updates.
            let mut last = ns(v.clock_gettime(libc::CLOCK_MONOTONIC));
            for i in 0..200_000 {
                if i % 20_000 == 0 {
                    v.clock.update();
                }
                let now = ns(v.clock_gettime(libc::CLOCK_MONOTONIC));
                assert!(now >= last, "{now} after {last}");
                last = now;
            }

            type Gtod = unsafe extern "C" fn(*mut libc::timeval, *mut [i32; 2]) -> i32;
            // SAFETY: the function's address in the executable image.
            let gtod: Gtod = unsafe { std::mem::transmute(v.func("__vdso_gettimeofday")) };
            let mut tv = libc::timeval {
                tv_sec: 0,
                tv_usec: -1,
            };
            let mut tz = [7i32, 7];
            // SAFETY: valid out-pointers.
            assert_eq!(unsafe { gtod(&mut tv, &mut tz) }, 0);
            let us = tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
            assert!((0..1_000_000).contains(&tv.tv_usec));
            assert!(us.abs_diff(host_clock(libc::CLOCK_REALTIME) / 1000) < 500);
            assert_eq!(tz, [0, 0]);
            // SAFETY: null pointers are allowed.
            assert_eq!(
                unsafe { gtod(std::ptr::null_mut(), std::ptr::null_mut()) },
                0
            );

            type Time = unsafe extern "C" fn(*mut i64) -> i64;
            // SAFETY: as above.
            let time: Time = unsafe { std::mem::transmute(v.func("__vdso_time")) };
            let mut out = 0i64;
            // SAFETY: a valid out-pointer, or null.
            let (a, b) = unsafe { (time(&mut out), time(std::ptr::null_mut())) };
            let host = (host_clock(libc::CLOCK_REALTIME) / 1_000_000_000) as i64;
            assert!(a == out && (host - a).abs() <= 1 && (host - b).abs() <= 1);

            type Res = unsafe extern "C" fn(i32, *mut libc::timespec) -> i32;
            // SAFETY: as above.
            let res: Res = unsafe { std::mem::transmute(v.func("__vdso_clock_getres")) };
            for (id, want) in [
                (libc::CLOCK_MONOTONIC, 1),
                (libc::CLOCK_REALTIME, 1),
                (libc::CLOCK_MONOTONIC_COARSE, 4_000_000),
            ] {
                let mut ts = libc::timespec {
                    tv_sec: 9,
                    tv_nsec: 9,
                };
                // SAFETY: a valid out-pointer.
                assert_eq!(unsafe { res(id, &mut ts) }, 0);
                assert_eq!((ts.tv_sec, ts.tv_nsec), (0, want), "clock {id}");
            }
            // An unknown clock reaches the syscall, and its error.
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid out-pointer.
            assert_eq!(unsafe { res(99, &mut ts) }, -libc::EINVAL);

            type Getcpu = unsafe extern "C" fn(*mut u32, *mut u32, *mut u8) -> i32;
            // SAFETY: as above.
            let getcpu: Getcpu = unsafe { std::mem::transmute(v.func("__vdso_getcpu")) };
            let (mut cpu, mut node) = (7u32, 7u32);
            // SAFETY: valid out-pointers.
            assert_eq!(
                unsafe { getcpu(&mut cpu, &mut node, std::ptr::null_mut()) },
                0
            );
            assert_eq!((cpu, node), (0, 0));
        }
    }

    #[test]
    fn the_libc_names_are_in_the_vdso_too() {
        for (alias, name) in [
            ("clock_gettime", "__vdso_clock_gettime"),
            ("gettimeofday", "__vdso_gettimeofday"),
            ("time", "__vdso_time"),
            ("clock_getres", "__vdso_clock_getres"),
            ("getcpu", "__vdso_getcpu"),
        ] {
            assert_eq!(symbol(VDSO_IMAGE, 0, alias), symbol(VDSO_IMAGE, 0, name));
        }
    }

    #[test]
    fn vdso_image_matches_the_source() {
        let dir = std::env::temp_dir().join(format!("qvisor-vdso-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("vdso.so");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vdso/build.sh");
        let built = std::process::Command::new("sh")
            .arg(&script)
            .arg(&out)
            .status()
            .expect("sh, gcc and binutils are needed to check the vDSO");
        assert!(built.success());
        let fresh = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            fresh == VDSO_IMAGE,
            "qvisor/vdso/vdso.so is not what vdso.S builds: run qvisor/vdso/build.sh"
        );
        let relocations = std::process::Command::new("readelf")
            .args(["-r", "-W"])
            .arg(script.with_file_name("vdso.so"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&relocations.stdout).contains("no relocations"),
            "the image is mapped as it is: it must need no relocation"
        );
    }
}
