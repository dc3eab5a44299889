//! The link layer under smoltcp: a TAP device with virtio-net offloads, driven by io_uring.

pub mod rx;
pub mod tap;
pub mod uring;
pub mod vnet;

pub use tap::{Tap, TapError, TapOptions};
pub use uring::{DeviceStats, FrameQueues, LocalAddrs, RawRegion, Reaped, UringTap};
