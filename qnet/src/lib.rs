//! qnet: the TCP/IP stack that lives in the hypervisor.
//!
//! smoltcp runs over a TAP device driven by io_uring ([`phy`]), with TCP segmentation and
//! checksum offload through the virtio-net header. Clients (qkernel inside qvisor, or any host
//! process through `qnet-client`) reach it over the shared-memory socket ring (`qnet-ring`):
//! [`session`] executes their operations and moves their data, [`net`] holds the shared
//! interface, ports and listen queues, and [`stack`] is the single-threaded service loop.
// Guest and network input reach this crate: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod attach;
pub mod config;
pub mod conn;
pub mod demo;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod hot;
pub mod net;
pub mod phy;
pub mod runner;
pub mod session;
pub mod stack;

pub use attach::Attacher;
pub use config::{ConfigError, Ipv4Cidr, Mac, Route, StackConfig};
pub use stack::{Stack, StackHandle, StackStats};
