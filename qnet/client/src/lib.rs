//! Attach a host process to a qnet stack's socket ring and use its sockets like `std::net`.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! let client = qnet_client::Client::connect("/run/qnet/qnet.sock")?;
//! let mut s = qnet_client::TcpStream::connect(&client, "10.0.0.1:80".parse().unwrap())?;
//! s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
//! let mut reply = Vec::new();
//! s.read_to_end(&mut reply)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! [`nonblocking`] gives tokio code the same sockets without blocking its tasks.
//!
//! [`sys`] holds the OS pieces (shared mappings, futexes, fd passing) the stack side uses too.
// Guest and network input reach this crate: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod attach;
mod client;
pub mod nonblocking;
mod socket;
pub mod sys;

pub use client::{Client, Occupancy};
pub use nonblocking::{AsyncTcpListener, AsyncTcpStream};
pub use socket::{poll, Interest, TcpListener, TcpStream, UdpSocket};
