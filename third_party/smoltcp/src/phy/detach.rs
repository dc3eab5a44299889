//! QUARK PATCH: detached TCP payloads, for a device that sends a frame's payload from where it
//! lies (scatter-gather) instead of from the frame.
//!
//! The device turns this on for the thread that polls the interface ([`set_detach_min`]).
//! `TcpRepr::emit` then leaves a payload of at least that many bytes out of the frame (those
//! bytes of the frame buffer are left as they were) and records where the payload is; the
//! device takes that record ([`take_detached_payload`]) in its `TxToken::consume`, right after
//! the frame was built, while the socket's buffer still holds the bytes unchanged. It must
//! then either copy the payload into the frame's last bytes or send it from there, keeping the
//! memory alive until the send is done. Only for devices whose TCP checksums are offloaded:
//! smoltcp does not compute a checksum over a detached payload.

use core::cell::Cell;

std::thread_local! {
    static MIN: Cell<usize> = const { Cell::new(0) };
    static LAST: Cell<Option<(*const u8, usize)>> = const { Cell::new(None) };
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
