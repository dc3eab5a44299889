//! QUARK PATCH: detached TCP payloads, for a device that sends a frame's payload from where it
//! lies (scatter-gather) instead of from the frame, and attached ones, for a device that
//! received a frame's payload straight into the receiving socket's buffer.
//!
//! The device turns this on for the thread that polls the interface ([`set_detach_min`]).
//! `TcpRepr::emit` then leaves a payload of at least that many bytes out of the frame (those
//! bytes of the frame buffer are left as they were) and records where the payload is; the
//! device takes that record ([`take_detached_payload`]) in its `TxToken::consume`, right after
//! the frame was built, while the socket's buffer still holds the bytes unchanged. It must
//! then either copy the payload into the frame's last bytes or send it from there, keeping the
//! memory alive until the send is done. Only for devices whose TCP checksums are offloaded:
//! smoltcp does not compute a checksum over a detached payload.
//!
//! Receiving, the device may read a frame's headers into one buffer and its TCP payload
//! straight to where the socket stores its next in-order byte (`tcp::Socket::rx_landing`). It
//! hands smoltcp the headers alone (the IP length saying so) and names the payload with
//! [`set_attached_payload`]; `TcpRepr::parse` takes it as the segment's payload, and the
//! socket's buffer then finds the bytes already in place and does not copy them. Only for
//! devices that verify TCP checksums themselves (smoltcp verifies none of an attached
//! payload).

use core::cell::Cell;

std::thread_local! {
    static MIN: Cell<usize> = const { Cell::new(0) };
    static LAST: Cell<Option<(*const u8, usize)>> = const { Cell::new(None) };
    static ATTACHED: Cell<Option<(*const u8, usize)>> = const { Cell::new(None) };
}

/// The TCP payload of the frame this thread is about to hand the interface lies at `ptr`,
/// `len` bytes, not in the frame (whose IP length covers the headers only).
///
/// # Safety
/// The bytes must stay valid and unchanged, and nothing else may write them, until
/// [`clear_attached_payload`] is called, right after the frame has been processed. They lie
/// either outside the receiving socket's buffer or exactly where it stores the segment's
/// first byte (`tcp::Socket::rx_landing`, the segment's sequence number the one it gave).
#[allow(unsafe_code)]
pub unsafe fn set_attached_payload(ptr: *const u8, len: usize) {
    ATTACHED.with(|a| a.set(Some((ptr, len))));
}

/// Ends what [`set_attached_payload`] started.
pub fn clear_attached_payload() {
    ATTACHED.with(|a| a.set(None));
}

/// The attached payload of the frame being processed, if the device named one.
#[allow(unsafe_code)]
pub(crate) fn attached_payload<'a>() -> Option<&'a [u8]> {
    let (ptr, len) = ATTACHED.with(|a| a.get())?;
    // SAFETY: `set_attached_payload`'s caller keeps the bytes valid and unchanged while the
    // frame is processed, which is as long as a `TcpRepr` parsed from it lives.
    Some(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Payloads of at least `min` bytes emitted on this thread are detached (0: none, the
/// default).
pub fn set_detach_min(min: usize) {
    MIN.with(|m| m.set(min));
    LAST.with(|l| l.set(None));
}

/// The payload the last frame built on this thread left out, if any: its address and length,
/// valid until the socket set is next touched.
pub fn take_detached_payload() -> Option<(*const u8, usize)> {
    LAST.with(|l| l.take())
}

/// Whether `payload` is detached (recorded, not to be copied into the frame).
pub(crate) fn detach_payload(payload: &[u8]) -> bool {
    let min = MIN.with(|m| m.get());
    if min == 0 || payload.len() < min {
        return false;
    }
    LAST.with(|l| l.set(Some((payload.as_ptr(), payload.len()))));
    true
}
