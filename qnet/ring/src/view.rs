//! [`RegionView`]: bounds-checked access to a mapped region.
//!
//! All shared words are atomics; queue entries and data bytes are copied in and out with raw
//! copies and never borrowed, because the other side may change them at any moment. Every
//! position that comes from the other side is reduced modulo a power-of-two capacity taken from
//! the view's own (trusted) geometry before it becomes an offset, so no index a peer writes can
//! move an access outside the region.

use core::mem::{offset_of, size_of};
use core::ptr::{self, NonNull};
use core::sync::atomic::AtomicU32;

use crate::abi::{ClientSlotWords, Cqe, Header, Slot, Sqe, StackSlotWords};
use crate::layout::{Geometry, LayoutError};

/// A view of one mapped region, with the geometry its holder trusts.
#[derive(Debug)]
pub struct RegionView {
    base: NonNull<u8>,
    len: usize,
    geometry: Geometry,
}

// SAFETY: the view only hands out atomics and copies; concurrent use from several threads is what
// shared memory is for.
unsafe impl Send for RegionView {}
// SAFETY: as above.
unsafe impl Sync for RegionView {}

impl RegionView {
    /// Creates a view using `geometry` (the creator's own, or one the caller read and will
    /// validate here).
    ///
    /// # Safety
    /// `base..base + len` must be a readable and writable mapping, aligned to 4096 bytes, that
    /// stays mapped for the life of the view.
    pub unsafe fn new(base: *mut u8, len: usize, geometry: Geometry) -> Result<Self, LayoutError> {
        let base = NonNull::new(base).ok_or(LayoutError::BadOffset("null base"))?;
        if (base.as_ptr() as usize) % 4096 != 0 {
            return Err(LayoutError::BadOffset("base not page aligned"));
        }
        geometry.validate(len as u64)?;
        Ok(RegionView {
            base,
            len,
            geometry,
        })
    }

    /// Reads the geometry a region's creator published, for the client side to validate.
    ///
    /// # Safety
    /// As for [`RegionView::new`], with `len >= HEADER_SIZE`.
    pub unsafe fn read_geometry(base: *const u8) -> Geometry {
        // SAFETY: the caller guarantees the header page is mapped; Geometry is plain integers.
        unsafe { ptr::read_volatile(base as *const Geometry) }
    }

    /// Publishes this view's geometry into the header (done once by the creator).
    pub fn publish_geometry(&self) {
        // SAFETY: the header page is inside the mapping (validated) and aligned.
        unsafe { ptr::write_volatile(self.base.as_ptr() as *mut Geometry, self.geometry) }
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= self.len);
        // SAFETY: offsets come from offset_of! on the header or from validated slot offsets, so
        // the word is inside the mapping and 4-byte aligned; AtomicU32 has u32's layout.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off) as *mut u32) }
    }

    pub fn sq_head(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, sq_head))
    }
    pub fn sq_tail(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, sq_tail))
    }
    pub fn cq_head(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, cq_head))
    }
    pub fn cq_tail(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, cq_tail))
    }
    pub fn ev_head(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, ev_head))
    }
    pub fn ev_tail(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, ev_tail))
    }
    pub fn stack_flags(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, stack_flags))
    }
    pub fn client_wake_seq(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, client_wake_seq))
    }
    pub fn client_waiters(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, client_waiters))
    }
    pub fn client_wake_armed(&self) -> &AtomicU32 {
        self.word(offset_of!(Header, client_wake_armed))
    }

    /// Reads submission entry number `pos` (free-running; reduced modulo the queue size).
    pub fn read_sqe(&self, pos: u32) -> Sqe {
        let g = &self.geometry;
        let off = g.sq_off as usize + (pos & (g.sq_entries - 1)) as usize * size_of::<Sqe>();
        // SAFETY: off is inside the validated sq part; Sqe is plain integers (any bits valid).
        unsafe { ptr::read_volatile(self.base.as_ptr().add(off) as *const Sqe) }
    }

    pub fn write_sqe(&self, pos: u32, sqe: &Sqe) {
        let g = &self.geometry;
        let off = g.sq_off as usize + (pos & (g.sq_entries - 1)) as usize * size_of::<Sqe>();
        // SAFETY: as in read_sqe.
        unsafe { ptr::write_volatile(self.base.as_ptr().add(off) as *mut Sqe, *sqe) }
    }

    pub fn read_cqe(&self, pos: u32) -> Cqe {
        let g = &self.geometry;
        let off = g.cq_off as usize + (pos & (g.cq_entries - 1)) as usize * size_of::<Cqe>();
        // SAFETY: off is inside the validated cq part; Cqe is plain integers.
        unsafe { ptr::read_volatile(self.base.as_ptr().add(off) as *const Cqe) }
    }

    pub fn write_cqe(&self, pos: u32, cqe: &Cqe) {
        let g = &self.geometry;
        let off = g.cq_off as usize + (pos & (g.cq_entries - 1)) as usize * size_of::<Cqe>();
        // SAFETY: as in read_cqe.
        unsafe { ptr::write_volatile(self.base.as_ptr().add(off) as *mut Cqe, *cqe) }
    }

    pub fn read_event(&self, pos: u32) -> u32 {
        let g = &self.geometry;
        let off = g.ev_off as usize + (pos & (g.ev_entries - 1)) as usize * 4;
        // SAFETY: off is inside the validated ev part, 4-byte aligned.
        unsafe { ptr::read_volatile(self.base.as_ptr().add(off) as *const u32) }
    }

    pub fn write_event(&self, pos: u32, slot: u32) {
        let g = &self.geometry;
        let off = g.ev_off as usize + (pos & (g.ev_entries - 1)) as usize * 4;
        // SAFETY: as in read_event.
        unsafe { ptr::write_volatile(self.base.as_ptr().add(off) as *mut u32, slot) }
    }

    fn slot_ptr(&self, slot: u32) -> Option<*mut Slot> {
        if slot >= self.geometry.slot_count {
            return None;
        }
        let off = self.geometry.slot_off as usize + slot as usize * size_of::<Slot>();
        // SAFETY: slot < slot_count, so the slot lies inside the validated slots part.
        Some(unsafe { self.base.as_ptr().add(off) as *mut Slot })
    }

    /// The client-written words of `slot`, or `None` if the index is out of range.
    pub fn slot_client(&self, slot: u32) -> Option<&ClientSlotWords> {
        // SAFETY: the pointer is in bounds and 64-byte aligned; ClientSlotWords holds only
        // atomics, so a shared reference is sound while the peer writes it concurrently.
        self.slot_ptr(slot)
            .map(|p| unsafe { &*(ptr::addr_of!((*p).client.0)) })
    }

    /// The stack-written words of `slot`, or `None` if the index is out of range.
    pub fn slot_stack(&self, slot: u32) -> Option<&StackSlotWords> {
        // SAFETY: as in slot_client.
        self.slot_ptr(slot)
            .map(|p| unsafe { &*(ptr::addr_of!((*p).stack.0)) })
    }

    /// The client -> stack byte ring of `slot`.
    pub fn tx_ring(&self, slot: u32) -> Option<ByteRing<'_>> {
        (slot < self.geometry.slot_count).then(|| ByteRing {
            view: self,
            off: self.geometry.tx_buf_off(slot) as usize,
            size: self.geometry.tx_buf_size,
        })
    }

    /// The stack -> client byte ring of `slot`.
    pub fn rx_ring(&self, slot: u32) -> Option<ByteRing<'_>> {
        (slot < self.geometry.slot_count).then(|| ByteRing {
            view: self,
            off: self.geometry.rx_buf_off(slot) as usize,
            size: self.geometry.rx_buf_size,
        })
    }
}

/// One direction's byte buffer of a slot. Positions are free-running `u32`s; the buffer index is
/// `pos % size`. Copies wrap around the end.
#[derive(Clone, Copy, Debug)]
pub struct ByteRing<'a> {
    view: &'a RegionView,
    off: usize,
    size: u32,
}

impl ByteRing<'_> {
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The two (offset, length) pieces of `len` bytes at `pos`; `len` is clamped to the size.
    fn pieces(&self, pos: u32, len: usize) -> [(usize, usize); 2] {
        let len = len.min(self.size as usize);
        let start = (pos & (self.size - 1)) as usize;
        let first = len.min(self.size as usize - start);
        [(self.off + start, first), (self.off, len - first)]
    }

    /// Copies `dst.len()` bytes (at most the ring size) starting at `pos` out of the ring.
    pub fn read(&self, pos: u32, dst: &mut [u8]) {
        let mut done = 0;
        for (off, n) in self.pieces(pos, dst.len()) {
            // SAFETY: pieces() keeps [off, off+n) inside this slot's validated buffer; the bytes
            // are opaque data (any value is fine) and are copied, never borrowed.
            unsafe {
                ptr::copy_nonoverlapping(
                    self.view.base.as_ptr().add(off),
                    dst[done..].as_mut_ptr(),
                    n,
                )
            };
            done += n;
        }
    }

    /// Where the `len` bytes at `pos` lie in this process: up to two pieces (the second empty
    /// unless they wrap), for a reader or writer whose other end is not a slice (guest memory
    /// in qvisor). Each piece is valid for reads and writes of its length while the view
    /// lives; the same rules as [`ByteRing::read`] and [`ByteRing::write`] hold for whoever
    /// goes through them (opaque bytes, copied, never borrowed).
    pub fn raw_pieces(&self, pos: u32, len: usize) -> [(*mut u8, usize); 2] {
        self.pieces(pos, len).map(|(off, n)| {
            // SAFETY: pieces() keeps [off, off+n) inside this slot's validated buffer.
            (unsafe { self.view.base.as_ptr().add(off) }, n)
        })
    }

    /// Where the ring's `size()` bytes start in this process, for a writer that fills it in
    /// place (the stack's receive path). Whoever writes through it owns the same rules as
    /// [`ByteRing::write`]: the bytes are opaque data the other side may change at any time.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        // SAFETY: `off` is a validated buffer offset inside the mapping.
        unsafe { self.view.base.as_ptr().add(self.off) }
    }

    /// Copies `src` (at most the ring size) into the ring at `pos`.
    pub fn write(&self, pos: u32, src: &[u8]) {
        let mut done = 0;
        for (off, n) in self.pieces(pos, src.len()) {
            // SAFETY: as in read.
            unsafe {
                ptr::copy_nonoverlapping(src[done..].as_ptr(), self.view.base.as_ptr().add(off), n)
            };
            done += n;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn region(g: &Geometry) -> vec::Vec<Page> {
        (0..g.region_size.div_ceil(4096))
            .map(|_| Page([0; 4096]))
            .collect()
    }

    #[test]
    fn byte_ring_wraps() {
        let g = Geometry::new(4, 4, 2, 4096, 8192).unwrap();
        let mut mem = region(&g);
        // SAFETY: mem is page aligned and outlives the view.
        let v =
            unsafe { RegionView::new(mem.as_mut_ptr() as *mut u8, mem.len() * 4096, g).unwrap() };
        let ring = v.tx_ring(1).unwrap();
        let data: vec::Vec<u8> = (0..100u8).collect();
        ring.write(4050, &data);
        let mut out = [0u8; 100];
        ring.read(4050, &mut out);
        assert_eq!(&out[..], &data[..]);
        assert!(v.tx_ring(2).is_none());
        assert!(v.slot_client(2).is_none());
        // The receive ring has a size of its own and wraps within it, not into its neighbours.
        let rx = v.rx_ring(0).unwrap();
        rx.write(8150, &data);
        rx.read(8150, &mut out);
        assert_eq!(&out[..], &data[..]);
        // Slot 1's transmit ring follows; it holds only the tail of the first write.
        let mut neighbour = [0u8; 100];
        v.tx_ring(1).unwrap().read(0, &mut neighbour);
        assert_eq!(&neighbour[..54], &data[46..]);
        assert_eq!(&neighbour[54..], &[0u8; 46][..]);
    }

    #[test]
    fn queue_positions_wrap() {
        let g = Geometry::new(4, 8, 2, 4096, 8192).unwrap();
        let mut mem = region(&g);
        // SAFETY: as above.
        let v =
            unsafe { RegionView::new(mem.as_mut_ptr() as *mut u8, mem.len() * 4096, g).unwrap() };
        let sqe = Sqe {
            opcode: 3,
            user_data: 77,
            ..Default::default()
        };
        v.write_sqe(u32::MAX, &sqe);
        assert_eq!(v.read_sqe(3), sqe);
        v.publish_geometry();
        // SAFETY: the header page is mapped.
        assert_eq!(unsafe { RegionView::read_geometry(v.base()) }, g);
    }
}
