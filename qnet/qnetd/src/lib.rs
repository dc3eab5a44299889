//! qnetd: the node daemon of Quark's VPC overlay. It holds tenants' VPCs (a VXLAN network
//! identifier and an IPv4 network each) and their endpoints (an interface it makes in a pod's
//! network namespace, or an address on another node), and forwards between them in user space:
//! L2/L3 within a VPC, ARP answered from its own table, the VPC gateway answering ping, VXLAN
//! (RFC 7348) to the node of a remote endpoint. A frame never leaves the VPC it arrived in.
//!
//! Layers: [`model`] (what is held, validated), [`store`] (where it is kept), [`wire`] and
//! [`forward`] (the forwarding decision, no I/O), [`dataplane`] (io_uring), [`daemon`] (applies
//! changes), [`api`] (HTTP/JSON on a Unix socket).
// Guest and network input reach this crate: a panic on it is a bug (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod cluster;
pub mod daemon;
pub mod dataplane;
pub mod forward;
pub mod gso;
pub mod model;
pub mod output;
pub mod store;
pub mod tunnel;
pub mod wire;
