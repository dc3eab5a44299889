//! qhttp: the HTTP stack in the hypervisor, an L7 proxy in front of the guest.
//!
//! It listens on sockets of the container's qnet stack (so it answers at the pod's own
//! address), routes each request by Host and path prefix to a port the guest listens on, and
//! forwards it over pooled keep-alive connections through the socket ring. Clients speak
//! HTTP/1.1 or h2c; bodies stream both ways. It enforces timeouts and limits before anything
//! reaches the guest, logs one access line per request and serves Prometheus metrics.
//!
//! Layers: [`config`] (what to serve), [`route`], [`headers`] (hop-by-hop, forwarding),
//! [`body`] (limits and counting), [`upstream`] (the guest side), [`metrics`], and
//! [`proxy`], which runs them.
// Guest and network input reach this crate: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod body;
pub mod config;
pub mod headers;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use metrics::{StackCounters, StackSample};
pub use proxy::{start, ProxyHandle};
