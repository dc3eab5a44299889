//! Where each part of a region lives, computed from a few sizes, and the checks that a geometry
//! fits the memory it describes.

use core::fmt;
use core::mem::size_of;

pub use crate::abi::Geometry;
use crate::abi::{Cqe, Slot, Sqe, HEADER_SIZE, MAGIC, VERSION};

const PAGE: u64 = 4096;
/// A 2 MiB page: where the data buffers start.
const HUGE_PAGE: u64 = 2 << 20;

/// Largest number of entries in any queue, and of slots: keeps every offset well inside `u32`.
pub const MAX_ENTRIES: u32 = 1 << 16;
/// Smallest and largest per-direction byte ring.
pub const MIN_BUF_SIZE: u32 = 4096;
pub const MAX_BUF_SIZE: u32 = 1 << 26;

/// Why a geometry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    BadMagic,
    BadVersion(u32),
    /// A count or size that is zero, not a power of two, or beyond the limits.
    BadSize(&'static str),
    /// Parts overlap, are misaligned, or run past the region's end.
    BadOffset(&'static str),
    /// The mapping is smaller than the geometry says.
    TooSmall {
        need: u64,
        have: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::BadMagic => write!(f, "not a qnet ring (bad magic)"),
            LayoutError::BadVersion(v) => write!(f, "ring ABI version {v}, expected {VERSION}"),
            LayoutError::BadSize(what) => write!(f, "invalid ring size: {what}"),
            LayoutError::BadOffset(what) => write!(f, "invalid ring layout: {what}"),
            LayoutError::TooSmall { need, have } => {
                write!(f, "ring mapping too small: need {need} bytes, have {have}")
            }
        }
    }
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn pow2_in(v: u32, lo: u32, hi: u32) -> bool {
    v.is_power_of_two() && v >= lo && v <= hi
}

impl Geometry {
    /// Lays out a region for `slot_count` sockets, each with a `tx_buf_size`-byte transmit ring
    /// and an `rx_buf_size`-byte receive ring.
    pub fn new(
        sq_entries: u32,
        cq_entries: u32,
        slot_count: u32,
        tx_buf_size: u32,
        rx_buf_size: u32,
    ) -> Result<Self, LayoutError> {
        if !pow2_in(sq_entries, 2, MAX_ENTRIES) {
            return Err(LayoutError::BadSize("sq_entries"));
        }
        if !pow2_in(cq_entries, 2, MAX_ENTRIES) {
            return Err(LayoutError::BadSize("cq_entries"));
        }
        if slot_count == 0 || slot_count > MAX_ENTRIES {
            return Err(LayoutError::BadSize("slot_count"));
        }
        if !pow2_in(tx_buf_size, MIN_BUF_SIZE, MAX_BUF_SIZE) {
            return Err(LayoutError::BadSize("tx_buf_size"));
        }
        if !pow2_in(rx_buf_size, MIN_BUF_SIZE, MAX_BUF_SIZE) {
            return Err(LayoutError::BadSize("rx_buf_size"));
        }
        let ev_entries = slot_count.next_power_of_two();
        let sq_off = HEADER_SIZE as u64;
        let cq_off = round_up(sq_off + sq_entries as u64 * size_of::<Sqe>() as u64, 64);
        let ev_off = round_up(cq_off + cq_entries as u64 * size_of::<Cqe>() as u64, 64);
        // The slot table starts a page and the buffers a 2 MiB page, so a VMM can map the
        // table and each receive ring into its guest on their own (qvisor's stub reads).
        let slot_off = round_up(ev_off + ev_entries as u64 * 4, PAGE);
        let buf_off = round_up(
            slot_off + slot_count as u64 * size_of::<Slot>() as u64,
            HUGE_PAGE,
        );
        let region_size = buf_off + slot_count as u64 * (tx_buf_size as u64 + rx_buf_size as u64);
        let geometry = Geometry {
            magic: MAGIC,
            version: VERSION,
            region_size,
            sq_off: sq_off as u32,
            sq_entries,
            cq_off: cq_off as u32,
            cq_entries,
            ev_off: ev_off as u32,
            ev_entries,
            slot_off: slot_off as u32,
            slot_count,
            buf_off,
            tx_buf_size,
            rx_buf_size,
        };
        geometry.validate(region_size)?;
        Ok(geometry)
    }

    /// Checks a geometry read from a region (or made by [`Geometry::new`]) against a mapping of
    /// `mapped` bytes: every part aligned, in order, not overlapping and inside the mapping.
    pub fn validate(&self, mapped: u64) -> Result<(), LayoutError> {
        if self.magic != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        if self.version != VERSION {
            return Err(LayoutError::BadVersion(self.version));
        }
        if !pow2_in(self.sq_entries, 2, MAX_ENTRIES) {
            return Err(LayoutError::BadSize("sq_entries"));
        }
        if !pow2_in(self.cq_entries, 2, MAX_ENTRIES) {
            return Err(LayoutError::BadSize("cq_entries"));
        }
        if self.slot_count == 0 || self.slot_count > MAX_ENTRIES {
            return Err(LayoutError::BadSize("slot_count"));
        }
        if !self.ev_entries.is_power_of_two() || self.ev_entries < self.slot_count {
            return Err(LayoutError::BadSize("ev_entries"));
        }
        if !pow2_in(self.tx_buf_size, MIN_BUF_SIZE, MAX_BUF_SIZE) {
            return Err(LayoutError::BadSize("tx_buf_size"));
        }
        if !pow2_in(self.rx_buf_size, MIN_BUF_SIZE, MAX_BUF_SIZE) {
            return Err(LayoutError::BadSize("rx_buf_size"));
        }
        // Each part: (offset, length, alignment, name), in region order.
        let parts = [
            (
                self.sq_off as u64,
                self.sq_entries as u64 * size_of::<Sqe>() as u64,
                64,
                "sq",
            ),
            (
                self.cq_off as u64,
                self.cq_entries as u64 * size_of::<Cqe>() as u64,
                64,
                "cq",
            ),
            (self.ev_off as u64, self.ev_entries as u64 * 4, 64, "ev"),
            (
                self.slot_off as u64,
                self.slot_count as u64 * size_of::<Slot>() as u64,
                64,
                "slots",
            ),
            (
                self.buf_off,
                self.slot_count as u64 * self.slot_buf_stride(),
                PAGE,
                "buffers",
            ),
        ];
        let mut end = HEADER_SIZE as u64;
        for (off, len, align, name) in parts {
            if off % align != 0 || off < end {
                return Err(LayoutError::BadOffset(name));
            }
            end = off.checked_add(len).ok_or(LayoutError::BadOffset(name))?;
        }
        if end > self.region_size {
            return Err(LayoutError::BadOffset("region_size"));
        }
        if self.region_size > mapped {
            return Err(LayoutError::TooSmall {
                need: self.region_size,
                have: mapped,
            });
        }
        Ok(())
    }

    /// Bytes of one slot's two byte rings, which lie side by side.
    pub fn slot_buf_stride(&self) -> u64 {
        self.tx_buf_size as u64 + self.rx_buf_size as u64
    }

    /// Offset of slot `slot`'s transmit (client -> stack) byte ring; its receive ring follows.
    pub fn tx_buf_off(&self, slot: u32) -> u64 {
        self.buf_off + slot as u64 * self.slot_buf_stride()
    }

    pub fn rx_buf_off(&self, slot: u32) -> u64 {
        self.tx_buf_off(slot) + self.tx_buf_size as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_geometry_validates_and_is_page_aligned() {
        let g = Geometry::new(256, 512, 100, 65536, 1 << 20).unwrap();
        assert_eq!(g.ev_entries, 128);
        assert_eq!(g.buf_off % 4096, 0);
        assert_eq!(g.region_size, g.buf_off + 100 * (65536 + (1 << 20)));
        assert_eq!(g.rx_buf_off(1) - g.tx_buf_off(1), 65536);
        assert_eq!(g.tx_buf_off(2) - g.rx_buf_off(1), 1 << 20);
        assert_eq!(
            g.validate(g.region_size - 1),
            Err(LayoutError::TooSmall {
                need: g.region_size,
                have: g.region_size - 1
            })
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(Geometry::new(3, 4, 1, 4096, 4096).is_err());
        assert!(Geometry::new(4, 4, 0, 4096, 4096).is_err());
        assert!(Geometry::new(4, 4, 1, 1000, 4096).is_err());
        assert!(Geometry::new(4, 4, 1, 4096, 1000).is_err());
        assert!(Geometry::new(4, 4, 1, 4096, MAX_BUF_SIZE * 2).is_err());
        assert!(Geometry::new(4, 4, MAX_ENTRIES + 1, 4096, 4096).is_err());
    }

    #[test]
    fn rejects_overlapping_parts() {
        let mut g = Geometry::new(4, 4, 4, 4096, 8192).unwrap();
        g.cq_off = g.sq_off;
        assert_eq!(g.validate(u64::MAX), Err(LayoutError::BadOffset("cq")));
        let mut g = Geometry::new(4, 4, 4, 4096, 8192).unwrap();
        g.buf_off = u64::MAX - 10;
        assert!(g.validate(u64::MAX).is_err());
    }
}
