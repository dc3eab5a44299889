//! The `#[repr(C)]` types and constants of ABI version [`VERSION`].
//!
//! Numbers that Linux already defines (errno values, address families, socket types, socket
//! option levels and names, `shutdown` modes) are Linux's, so qkernel passes them through.

use core::sync::atomic::AtomicU32;

/// "QNRG" in little-endian: the first word of every region.
pub const MAGIC: u32 = 0x4752_4e51;
/// Bumped on any incompatible change to this file.
pub const VERSION: u32 = 4;

/// Size of the header page at offset 0 of the region.
pub const HEADER_SIZE: usize = 4096;

/// Written once by the stack when it creates the region; read by the client at attach time.
/// The stack never reads it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Geometry {
    pub magic: u32,
    pub version: u32,
    /// Total bytes of the region (header, queues, slots and data buffers).
    pub region_size: u64,
    pub sq_off: u32,
    /// Number of submission entries; a power of two.
    pub sq_entries: u32,
    pub cq_off: u32,
    /// Number of completion entries; a power of two.
    pub cq_entries: u32,
    pub ev_off: u32,
    /// Number of event entries; a power of two, at least `slot_count`.
    pub ev_entries: u32,
    pub slot_off: u32,
    /// Number of socket slots; slot indices are `0..slot_count`.
    pub slot_count: u32,
    pub buf_off: u64,
    /// Bytes in each slot's transmit (client -> stack) byte ring; a power of two.
    pub tx_buf_size: u32,
    /// Bytes in each slot's receive (stack -> client) byte ring; a power of two. It bounds the
    /// window a TCP socket advertises, so it is the larger of the two by default.
    pub rx_buf_size: u32,
}

/// Keeps a word that one side writes off the cache line of a word the other side writes.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct CacheLine<T>(pub T);

/// The header page. Each word names its single writer.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Header {
    pub geometry: Geometry,
    /// Stack: submission entries consumed (free-running).
    pub sq_head: CacheLine<AtomicU32>,
    /// Client: submission entries published (free-running).
    pub sq_tail: CacheLine<AtomicU32>,
    /// Client: completion entries consumed.
    pub cq_head: CacheLine<AtomicU32>,
    /// Stack: completion entries published.
    pub cq_tail: CacheLine<AtomicU32>,
    /// Client: event entries consumed.
    pub ev_head: CacheLine<AtomicU32>,
    /// Stack: event entries published.
    pub ev_tail: CacheLine<AtomicU32>,
    /// Stack: [`STACK_NEED_WAKEUP`], [`STACK_CLOSED`].
    pub stack_flags: CacheLine<AtomicU32>,
    /// Stack: bumped after publishing completions, events or data while `client_waiters` is
    /// non-zero; a shared futex word the client sleeps on.
    pub client_wake_seq: CacheLine<AtomicU32>,
    /// Client: number of client threads asleep (or about to sleep) on `client_wake_seq`.
    pub client_waiters: CacheLine<AtomicU32>,
    /// Client sets it (non-zero) before it sleeps on the client wake eventfd (an event loop's
    /// way to wait); the stack, after publishing, swaps it to 0 and, if it was set, writes the
    /// eventfd. One write per sleep.
    pub client_wake_armed: CacheLine<AtomicU32>,
}

/// The stack is about to sleep: a client that publishes work must ring the doorbell (write 1 to
/// the stack's eventfd).
pub const STACK_NEED_WAKEUP: u32 = 1 << 0;
/// The stack closed this client (it broke the protocol, or the stack is shutting down). Every
/// further operation fails with `ECONNABORTED` on the client side.
pub const STACK_CLOSED: u32 = 1 << 1;

/// One socket operation, client -> stack. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe {
    /// One of the `OP_*` values.
    pub opcode: u8,
    /// `SQE_F_*` bits.
    pub flags: u8,
    /// Address family of `addr`/`port` (`AF_INET`, `AF_INET6`), or the domain for `OP_SOCKET`.
    pub family: u16,
    /// The socket slot the operation is about (unused by `OP_SOCKET`).
    pub slot: u32,
    /// Echoed in the completion.
    pub user_data: u64,
    /// IPv4 in the first 4 bytes or IPv6, network byte order.
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    pub reserved: u16,
    /// `OP_SOCKET`: socket type; `OP_LISTEN`: backlog; `OP_SHUTDOWN`: how;
    /// `OP_SETSOCKOPT`/`OP_GETSOCKOPT`: `level << 16 | optname`.
    pub arg0: u32,
    /// `OP_SETSOCKOPT`: the option value.
    pub arg1: u64,
}

/// One completion, stack -> client. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    pub user_data: u64,
    /// 0 or a positive value on success, `-errno` on failure.
    pub result: i32,
    /// `OP_SOCKET`, `OP_ACCEPT`: the new socket's slot.
    pub slot: u32,
    /// Address family of `addr`/`port` for operations that return an address.
    pub family: u16,
    pub port: u16,
    pub reserved: u32,
    pub addr: [u8; 16],
    /// `OP_GETSOCKOPT`: the option value.
    pub value: u64,
}

/// One socket slot's control words: 128 bytes, two cache lines, one per writer.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Slot {
    pub client: CacheLine<ClientSlotWords>,
    pub stack: CacheLine<StackSlotWords>,
}

/// The words of a slot the client writes.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ClientSlotWords {
    /// Bytes (or records) published into the transmit ring (free-running).
    pub tx_tail: AtomicU32,
    /// Bytes consumed from the receive ring (free-running).
    pub rx_head: AtomicU32,
    /// Set to 1 by the client before it submits `OP_TX_KICK`; cleared by the stack when it takes
    /// the kick, so a burst of writes costs one kick per stack pass.
    pub tx_kick: AtomicU32,
}

/// The words of a slot the stack writes.
#[repr(C)]
#[derive(Debug, Default)]
pub struct StackSlotWords {
    /// Bytes consumed from the transmit ring.
    pub tx_head: AtomicU32,
    /// Bytes published into the receive ring.
    pub rx_tail: AtomicU32,
    /// `READY_*` bits.
    pub readiness: AtomicU32,
    /// 1 while the slot index sits in the event queue; the client clears it when it pops the
    /// entry, so each slot is queued at most once and the queue never overflows.
    pub event_queued: AtomicU32,
    /// 1 when the stack holds received data it could not fit into a full receive ring; the
    /// client that frees space swaps it to 0 and submits `OP_RX_KICK`.
    pub rx_wanted: AtomicU32,
    /// Pending socket error (a positive errno), reported as `SO_ERROR` and by reads/writes.
    pub error: AtomicU32,
    /// Bumped each time the slot is handed out, so stale handles can be told apart.
    pub generation: AtomicU32,
    /// The most bytes the client may have in the transmit ring (published, not consumed):
    /// `tx_tail - tx_head <= tx_limit`. Set when the slot is handed out; it only grows while
    /// the client owns the slot (version 4).
    pub tx_limit: AtomicU32,
}

/// Readable: data in the receive ring, a connection to accept, or end of stream.
pub const READY_IN: u32 = 1 << 0;
/// Writable: connected (or a datagram socket) and the transmit ring has room.
pub const READY_OUT: u32 = 1 << 1;
/// The peer finished sending and the receive ring holds all that is left.
pub const READY_RDHUP: u32 = 1 << 2;
/// Both directions are finished (reset, or closed both ways).
pub const READY_HUP: u32 = 1 << 3;
/// `error` holds a pending error.
pub const READY_ERR: u32 = 1 << 4;
/// A connection attempt finished (successfully or not).
pub const READY_CONNECTED: u32 = 1 << 5;

/// Header of one datagram in a datagram socket's byte ring; the payload follows and the next
/// record starts at the next multiple of [`DATAGRAM_ALIGN`]. Records may wrap around the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatagramHeader {
    /// Payload bytes.
    pub len: u32,
    pub family: u16,
    pub port: u16,
    /// Peer (receive ring) or destination (transmit ring); all zero on transmit means the
    /// connected peer.
    pub addr: [u8; 16],
}
pub const DATAGRAM_ALIGN: u32 = 8;
/// Largest datagram payload the ring carries (the IPv4 UDP maximum).
pub const DATAGRAM_MAX: u32 = 65_507;

/// Bytes a datagram of `len` payload bytes takes in a ring, header and padding included.
pub const fn datagram_record_size(len: u32) -> u32 {
    let raw = core::mem::size_of::<DatagramHeader>() as u32 + len;
    (raw + DATAGRAM_ALIGN - 1) & !(DATAGRAM_ALIGN - 1)
}

// Operations.
pub const OP_NOP: u8 = 0;
/// family = domain, arg0 = type (`SOCK_STREAM`/`SOCK_DGRAM`); completes with the new slot.
pub const OP_SOCKET: u8 = 1;
pub const OP_BIND: u8 = 2;
/// arg0 = backlog.
pub const OP_LISTEN: u8 = 3;
/// Completes at once with a new slot and the peer address, or `-EAGAIN`; wait for `READY_IN`.
pub const OP_ACCEPT: u8 = 4;
/// Completes at once with 0 (started; wait for `READY_CONNECTED`), or an error. Datagram
/// sockets: sets the default peer.
pub const OP_CONNECT: u8 = 5;
/// arg0 = `SHUT_RD`/`SHUT_WR`/`SHUT_RDWR`.
pub const OP_SHUTDOWN: u8 = 6;
/// Data already in the transmit ring is still sent. The slot must not be used afterwards.
pub const OP_CLOSE: u8 = 7;
pub const OP_SETSOCKOPT: u8 = 8;
pub const OP_GETSOCKOPT: u8 = 9;
pub const OP_GETSOCKNAME: u8 = 10;
pub const OP_GETPEERNAME: u8 = 11;
/// New bytes are in the slot's transmit ring. Always sent with `SQE_F_NO_CQE`.
pub const OP_TX_KICK: u8 = 12;
/// The client freed space in the slot's receive ring. Always sent with `SQE_F_NO_CQE`.
pub const OP_RX_KICK: u8 = 13;

/// The client wants no completion for this entry.
pub const SQE_F_NO_CQE: u8 = 1 << 0;

// Linux numbers used in the ABI.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SHUT_RD: u32 = 0;
pub const SHUT_WR: u32 = 1;
pub const SHUT_RDWR: u32 = 2;
pub const SOL_SOCKET: u32 = 1;
pub const SO_REUSEADDR: u32 = 2;
pub const SO_TYPE: u32 = 3;
pub const SO_ERROR: u32 = 4;
pub const SO_SNDBUF: u32 = 7;
pub const SO_RCVBUF: u32 = 8;
pub const SO_KEEPALIVE: u32 = 9;
pub const SO_REUSEPORT: u32 = 15;
pub const IPPROTO_TCP: u32 = 6;
pub const TCP_NODELAY: u32 = 1;

/// Packs a socket option's level and name into `Sqe::arg0`.
pub const fn sockopt(level: u32, name: u32) -> u32 {
    (level << 16) | (name & 0xffff)
}

/// Linux errno values the stack returns (as `-errno`).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const EINTR: i32 = 4;
    pub const EBADF: i32 = 9;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EINVAL: i32 = 22;
    pub const EMFILE: i32 = 24;
    pub const EPIPE: i32 = 32;
    pub const ENOTSOCK: i32 = 88;
    pub const EDESTADDRREQ: i32 = 89;
    pub const EMSGSIZE: i32 = 90;
    pub const EPROTOTYPE: i32 = 91;
    pub const ENOPROTOOPT: i32 = 92;
    pub const EPROTONOSUPPORT: i32 = 93;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EAFNOSUPPORT: i32 = 97;
    pub const EADDRINUSE: i32 = 98;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
    pub const ECONNABORTED: i32 = 103;
    pub const ECONNRESET: i32 = 104;
    pub const ENOBUFS: i32 = 105;
    pub const EISCONN: i32 = 106;
    pub const ENOTCONN: i32 = 107;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EALREADY: i32 = 114;
    pub const EINPROGRESS: i32 = 115;
}

const _: () = {
    assert!(core::mem::size_of::<Geometry>() == 64);
    assert!(core::mem::size_of::<Sqe>() == 48);
    assert!(core::mem::size_of::<Cqe>() == 48);
    assert!(core::mem::size_of::<Slot>() == 128);
    assert!(core::mem::size_of::<DatagramHeader>() == 24);
    assert!(core::mem::size_of::<Header>() <= HEADER_SIZE);
    // Offsets docs/ring.md promises.
    use core::mem::offset_of;
    assert!(offset_of!(Header, sq_head) == 64);
    assert!(offset_of!(Header, sq_tail) == 128);
    assert!(offset_of!(Header, cq_head) == 192);
    assert!(offset_of!(Header, cq_tail) == 256);
    assert!(offset_of!(Header, ev_head) == 320);
    assert!(offset_of!(Header, ev_tail) == 384);
    assert!(offset_of!(Header, stack_flags) == 448);
    assert!(offset_of!(Header, client_wake_seq) == 512);
    assert!(offset_of!(Header, client_waiters) == 576);
    assert!(offset_of!(Header, client_wake_armed) == 640);
    assert!(offset_of!(Slot, stack) == 64);
    assert!(offset_of!(StackSlotWords, generation) == 24);
    assert!(offset_of!(StackSlotWords, tx_limit) == 28);
    assert!(offset_of!(Sqe, arg0) == 36 && offset_of!(Sqe, arg1) == 40);
    assert!(offset_of!(Cqe, addr) == 24 && offset_of!(Cqe, value) == 40);
    assert!(offset_of!(Geometry, buf_off) == 48 && offset_of!(Geometry, tx_buf_size) == 56);
    assert!(offset_of!(Geometry, rx_buf_size) == 60);
};
