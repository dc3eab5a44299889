//! A machine for qkernel's own tests: no files, no network, a clock that advances on every look
//! and sleep (so no wait loop runs for ever), and either one small memory region (accesses
//! outside it fault) or memory that accepts everything and stores nothing (for the loader).

use crate::machine::{Fault, HostFile, Machine, PageFlags, RawStat};

/// Start and size of the region of [`TestMachine::region`].
pub const BASE: u64 = 0x40_0000;
pub const SIZE: u64 = 64 << 10;

pub struct TestMachine {
    /// `None`: every access succeeds (reads give zeros) and nothing is stored.
    mem: Option<Vec<u8>>,
    clock: std::cell::Cell<u64>,
}

impl TestMachine {
    /// Memory that accepts every map, read and write.
    pub fn accepting() -> TestMachine {
        TestMachine {
            mem: None,
            clock: std::cell::Cell::new(1_000_000_000),
        }
    }

    /// 64 KiB of memory at [`BASE`]; everything else faults.
    pub fn region() -> TestMachine {
        TestMachine {
            mem: Some(vec![0; SIZE as usize]),
            ..TestMachine::accepting()
        }
    }

    fn range(va: u64, len: usize) -> Result<std::ops::Range<usize>, Fault> {
        let end = va.checked_add(len as u64).ok_or(Fault { addr: va })?;
        if va < BASE || end > BASE + SIZE {
            return Err(Fault { addr: va });
        }
        Ok((va - BASE) as usize..(end - BASE) as usize)
    }
}

impl Machine for TestMachine {
    fn map_zeroed(&mut self, va: u64, len: u64, _: PageFlags) -> Result<(), Fault> {
        if let Some(mem) = &mut self.mem {
            let r = Self::range(va, len.min(SIZE + 1) as usize)?;
            mem[r].fill(0);
        }
        Ok(())
    }
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), Fault> {
        match &self.mem {
            Some(mem) => buf.copy_from_slice(&mem[Self::range(va, buf.len())?]),
            None => buf.fill(0),
        }
        Ok(())
    }
    fn write(&mut self, va: u64, buf: &[u8]) -> Result<(), Fault> {
        if let Some(mem) = &mut self.mem {
            mem[Self::range(va, buf.len())?].copy_from_slice(buf);
        }
        Ok(())
    }
    fn console_write(&mut self, _: i32, d: &[u8]) -> std::io::Result<usize> {
        Ok(d.len())
    }
    fn console_read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
    fn realtime_ns(&self) -> u64 {
        self.monotonic_ns()
    }
    fn monotonic_ns(&self) -> u64 {
        let t = self.clock.get().saturating_add(1_000);
        self.clock.set(t);
        t
    }
    fn memory_info(&self) -> (u64, u64) {
        // A small guest, as the tests' VMs are: bounds what a loaded image may span.
        (64 << 20, 0)
    }
    fn random(&mut self, buf: &mut [u8]) {
        buf.fill(4);
    }
    fn set_thread_pointer(&mut self, _: u64) {}
    fn sleep_ns(&mut self, ns: u64) {
        // The whole sleep at once: a sleep of years passes in one call, not millions.
        self.clock.set(self.clock.get().saturating_add(ns));
    }
    fn fs_open(&mut self, _: &[u8], _: i32, _: u32) -> Result<HostFile, i64> {
        Err(2)
    }
    fn fs_close(&mut self, _: HostFile) {}
    fn fs_read(&mut self, _: HostFile, _: &mut [u8], _: Option<u64>) -> Result<usize, i64> {
        Err(9)
    }
    fn fs_write(&mut self, _: HostFile, _: &[u8], _: Option<u64>) -> Result<usize, i64> {
        Err(9)
    }
    fn fs_seek(&mut self, _: HostFile, _: i64, _: i32) -> Result<u64, i64> {
        Err(9)
    }
    fn fs_stat(&mut self, _: HostFile) -> Result<RawStat, i64> {
        Err(9)
    }
    fn fs_stat_path(&mut self, _: &[u8], _: bool) -> Result<RawStat, i64> {
        Err(2)
    }
    fn fs_getdents(&mut self, _: HostFile, _: &mut [u8]) -> Result<usize, i64> {
        Err(9)
    }
    fn fs_readlink(&mut self, _: &[u8]) -> Result<Vec<u8>, i64> {
        Err(2)
    }
}
