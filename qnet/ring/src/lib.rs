//! The socket ring: the shared-memory contract between a socket client and the qnet stack.
//!
//! One region per client holds a submission queue (client -> stack) of socket operations, a
//! completion queue (stack -> client), an event queue of sockets whose readiness changed, and a
//! table of socket slots, each with a byte ring per direction so bulk data moves without a queue
//! entry per write. `docs/ring.md` documents every field and the memory-ordering rules.
//!
//! This crate is `no_std` so qkernel can share it. It holds only `#[repr(C)]` plain-integer types
//! (any bit pattern is a valid value, so reading hostile memory into them is sound) and
//! [`RegionView`], the one place that touches the shared memory. The stack builds its view from the
//! geometry it chose itself and never re-reads geometry from the region, so a client can corrupt
//! indices and entries but never make the stack address memory outside the region.
#![no_std]
// Guest and network input reach this crate: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod abi;
mod layout;
mod view;

pub use abi::*;
pub use layout::{Geometry, LayoutError};
pub use view::{ByteRing, RegionView};
