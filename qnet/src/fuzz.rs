//! Entry points for fuzzing what reaches the stack from outside, shared by the proptest
//! harnesses (under `cfg(test)`) and the libFuzzer targets in `tests/fuzz` (under
//! `cfg(fuzzing)`, which cargo-fuzz sets): frames from the pod network, and what a hostile
//! client writes into its socket ring. Whatever arrives must be dropped, refused or served,
//! never a panic.
// Harness code, never in a production build: a failed setup is a harness bug to panic on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;

use qnet_client::sys::{memfd, Mapping};
use qnet_ring::*;
use smoltcp::time::Instant;

use crate::config::StackConfig;
use crate::net::{Net, TcpOpts};
use crate::phy::{FrameQueues, LocalAddrs};
use crate::session::Session;

/// The stack at 10.9.0.2/24 over in-memory frame queues (no TAP), at time zero, and its MAC.
fn stack() -> (Net, FrameQueues, [u8; 6]) {
    let cfg = StackConfig::new("10.9.0.2/24".parse().expect("a valid address"));
    let mac = cfg.mac.0;
    let local = LocalAddrs {
        mac,
        ip: cfg.addr.addr,
        loopback: true,
    };
    let mut dev = FrameQueues::new(1500, local, true).expect("frame queues");
    let net = Net::new(cfg, &mut dev, Instant::ZERO);
    (net, dev, mac)
}

/// A valid frame from the peer 10.9.0.1 to the stack at 10.9.0.2: Ethernet, IPv4 and
/// `l4` (protocol `proto`), checksums left for the stack to find right or wrong.
pub fn frame_to_stack(mac: [u8; 6], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 9]);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0,
        0,
        64,
        proto,
        0,
        0,
    ]);
    f.extend_from_slice(&[10, 9, 0, 1, 10, 9, 0, 2]);
    let sum: u32 = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

/// Feeds the stack at 10.9.0.2 (a listener on TCP 80, a UDP socket on 53) two frames: `raw`
/// as it is, and a valid TCP SYN (`which` 0), UDP datagram (1) or ARP request (2) with the
/// bytes `flips` changed and cut to `cut` bytes; then runs its input and output for 400 ms of
/// its clock.
pub fn frames(raw: &[u8], which: usize, flips: &[(usize, u8)], cut: usize) {
    let (mut net, mut dev, mac) = stack();
    net.add_listener(None, 80, 16, TcpOpts::default())
        .expect("a listener");
    let udp = net.new_udp().expect("a UDP socket");
    let _ = net
        .sockets
        .get_mut::<smoltcp::socket::udp::Socket>(udp)
        .bind(53);
    let syn = [
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];
    let dgram = [0x9c, 0x41, 0, 53, 0, 12, 0, 0, b'h', b'i', b'!', b'!'];
    let mut arp = mac.to_vec();
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 9, 10, 9, 0, 1, 0, 0, 0, 0, 0, 0, 10, 9, 0, 2]);
    let mut mutated = match which % 3 {
        0 => frame_to_stack(mac, 6, &syn),
        1 => frame_to_stack(mac, 17, &dgram),
        _ => arp,
    };
    for &(at, b) in flips {
        if let Some(x) = mutated.get_mut(at) {
            *x = b;
        }
    }
    mutated.truncate(cut.max(1));
    dev.inject_received(raw);
    dev.inject_received(&mutated);
    let mut now = Instant::ZERO;
    for _ in 0..8 {
        while net
            .iface
            .poll_ingress_single(now, &mut dev, &mut net.sockets)
            != smoltcp::iface::PollIngressSingleResult::None
        {
            net.refill_listeners();
        }
        let _ = net.iface.poll_egress(now, &mut dev, &mut net.sockets);
        now += smoltcp::time::Duration::from_millis(50);
    }
}

/// Decodes fuzzer bytes for [`frames`]: a byte choosing the valid frame, a byte of length, up
/// to six (offset, byte) flips, the rest as the raw frame.
pub fn frame_bytes(data: &[u8]) {
    let [which, cut, nflips, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*nflips % 7).min(rest.len() / 2);
    let flips: Vec<(usize, u8)> = rest[..2 * n]
        .chunks_exact(2)
        .map(|f| (usize::from(f[0]) % 80, f[1]))
        .collect();
    frames(
        &rest[2 * n..],
        usize::from(*which),
        &flips,
        usize::from(*cut) % 90,
    );
}

// ---- The socket ring, from the stack's side ------------------------------------------------

/// The ring client the stack serves in [`Harness`]: that many slots of that many buffer bytes.
pub const SLOTS: u32 = 8;
pub const BUF: u32 = 4096;

/// One session of the stack over a region this process writes as a hostile client would.
pub struct Harness {
    pub net: Net,
    dev: FrameQueues,
    pub session: Session,
    base: *mut u8,
    geometry: Geometry,
    tail: u32,
    _peer: UnixStream,
}

pub fn harness() -> Harness {
    let (net, dev, _) = stack();
    let geometry = Geometry::new(16, 16, SLOTS, BUF, 2 * BUF).unwrap();
    let fd = memfd("fuzz", geometry.region_size).unwrap();
    let map = Mapping::map_shared(&fd, geometry.region_size as usize).unwrap();
    let base = map.as_ptr();
    // SAFETY: the mapping is page aligned and lives inside the session with the view.
    let view = unsafe { RegionView::new(base, map.len(), geometry) }.unwrap();
    view.publish_geometry();
    let (a, b) = UnixStream::pair().unwrap();
    Harness {
        net,
        dev,
        session: Session::new(1, view, map, a, qnet_client::sys::eventfd().unwrap()),
        base,
        geometry,
        tail: 0,
        _peer: b,
    }
}

/// What a hostile client does to its region, one step at a time.
#[derive(Debug, Clone)]
pub enum Action {
    /// A raw 32-bit store anywhere in the header, queues or slots (a word index).
    Poke {
        word: u32,
        value: u32,
    },
    /// A raw byte store anywhere in the data buffers (an offset from their start).
    PokeData {
        at: u32,
        value: u8,
    },
    Submit(Sqe),
    Pass,
}

impl Harness {
    pub fn store_u32(&self, off: usize, value: u32) {
        assert!(off % 4 == 0 && off + 4 <= self.geometry.region_size as usize);
        // SAFETY: checked to be inside the mapping and aligned.
        unsafe { (self.base.add(off) as *mut u32).write_volatile(value) }
    }

    pub fn load_u32(&self, off: usize) -> u32 {
        assert!(off % 4 == 0 && off + 4 <= self.geometry.region_size as usize);
        // SAFETY: checked to be inside the mapping and aligned.
        unsafe { (self.base.add(off) as *const u32).read_volatile() }
    }

    /// Applies one client action and one stack pass; false once the stack refuses the client.
    pub fn apply(&mut self, a: &Action, now: Instant) -> bool {
        match a {
            Action::Poke { word, value } => {
                let words = self.geometry.buf_off as u32 / 4;
                self.store_u32((word % words) as usize * 4, *value);
            }
            Action::PokeData { at, value } => {
                let len = SLOTS as u64 * self.geometry.slot_buf_stride();
                let off = self.geometry.buf_off + (*at as u64 % len);
                // SAFETY: off is inside the buffers part of the mapping.
                unsafe { self.base.add(off as usize).write_volatile(*value) }
            }
            Action::Submit(s) => {
                let off = self.geometry.sq_off as usize
                    + (self.tail & (self.geometry.sq_entries - 1)) as usize
                        * std::mem::size_of::<Sqe>();
                // SAFETY: inside the sq part of the mapping.
                unsafe { (self.base.add(off) as *mut Sqe).write_volatile(*s) };
                self.tail = self.tail.wrapping_add(1);
                self.store_u32(std::mem::offset_of!(Header, sq_tail), self.tail);
            }
            Action::Pass => {}
        }
        let ok = self.session.process_submissions(&mut self.net, now).is_ok()
            && self.session.service(&mut self.net, now).is_ok();
        self.net
            .iface
            .poll(now, &mut self.dev, &mut self.net.sockets);
        self.net.reap_lingering(now);
        self.session.wake_client();
        // As the stack after a pass: no TAP write is in flight here.
        self.session.give_back_released();
        ok
    }

    /// Pages of slot `slot`'s two byte rings in memory now (mincore).
    pub fn resident_buffer_pages(&self, slot: u32) -> usize {
        let off = self.geometry.tx_buf_off(slot) as usize;
        let len = self.geometry.slot_buf_stride() as usize;
        assert!(off + len <= self.geometry.region_size as usize);
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: a page-aligned range inside the mapping; `vec` holds a byte per page.
        let r = unsafe { libc::mincore(self.base.add(off).cast(), len, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        vec.iter().filter(|b| *b & 1 != 0).count()
    }

    /// Submits one operation and returns its completion.
    pub fn call(&mut self, s: Sqe) -> Cqe {
        let head = self.load_u32(std::mem::offset_of!(Header, cq_head));
        assert!(self.apply(&Action::Submit(s), Instant::ZERO));
        let off = self.geometry.cq_off as usize
            + (head & (self.geometry.cq_entries - 1)) as usize * std::mem::size_of::<Cqe>();
        // SAFETY: inside the cq part of the mapping.
        let c = unsafe { (self.base.add(off) as *const Cqe).read_volatile() };
        self.store_u32(std::mem::offset_of!(Header, cq_head), head.wrapping_add(1));
        c
    }
}

/// Decodes fuzzer bytes into client actions (a tag byte, then the action's bytes) and plays
/// them on a fresh session until the stack refuses the client; then tears the session down.
pub fn ring_bytes(data: &[u8]) {
    let mut actions = Vec::new();
    let mut rest = data;
    while let [tag, tail @ ..] = rest {
        let take = |n: usize| tail.get(..n);
        let (action, used) = match tag % 4 {
            0 => match take(8) {
                Some(b) => (
                    Action::Poke {
                        word: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    },
                    8,
                ),
                None => break,
            },
            1 => match take(5) {
                Some(b) => (
                    Action::PokeData {
                        at: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        value: b[4],
                    },
                    5,
                ),
                None => break,
            },
            2 => match take(std::mem::size_of::<Sqe>()) {
                Some(b) => (Action::Submit(sqe_of(b)), b.len()),
                None => break,
            },
            _ => (Action::Pass, 0),
        };
        actions.push(action);
        rest = &tail[used..];
    }
    play(&actions);
}

/// A submission from fuzzer bytes: the opcode folded onto the ones that exist (so most reach
/// an operation), the family mostly a real one, the rest as given.
fn sqe_of(b: &[u8]) -> Sqe {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
    let mut s = Sqe {
        opcode: b[0] % 16,
        flags: b[1],
        family: match b[2] % 3 {
            0 => AF_INET,
            1 => AF_INET6,
            _ => u16::from_le_bytes([b[3], b[4]]),
        },
        slot: if b[5] & 1 == 0 {
            u32_at(6) % 10
        } else {
            u32_at(6)
        },
        arg0: u32_at(10),
        arg1: u64_at(14),
        port: u16::from_le_bytes([b[22], b[23]]),
        ..Default::default()
    };
    s.addr[..4].copy_from_slice(&b[24..28]);
    s
}

/// Plays `actions` on a fresh session until the stack refuses the client, then tears it down:
/// whatever the client did, teardown is clean.
pub fn play(actions: &[Action]) {
    let mut h = harness();
    for (i, a) in actions.iter().enumerate() {
        if !h.apply(a, Instant::from_millis(i as i64)) {
            break; // the stack closes this client here
        }
    }
    h.session.teardown(&mut h.net, Instant::from_millis(1000));
    h.net.reap_lingering(Instant::from_secs(100));
}

#[cfg(test)]
mod tests {
    //! Property tests of the stack side of the socket ring: whatever a client writes into its
    //! region, the stack either serves it or closes it with a `Violation`; it never panics, and
    //! tearing the session down afterwards is always clean.

    use proptest::prelude::*;
    use qnet_ring::*;

    use super::{harness, play, Action, BUF, SLOTS};

    fn sqe() -> impl Strategy<Value = Sqe> {
        (
            0u8..16,
            any::<u8>(),
            prop_oneof![Just(AF_INET), Just(AF_INET6), any::<u16>()],
            prop_oneof![0u32..10, any::<u32>()],
            prop_oneof![0u32..3, any::<u32>()],
            any::<u64>(),
            any::<u16>(),
            prop_oneof![
                Just([10u8, 9, 0, 1]),
                Just([10u8, 9, 0, 2]),
                Just([0u8, 0, 0, 0]),
                any::<[u8; 4]>()
            ],
        )
            .prop_map(|(opcode, flags, family, slot, arg0, arg1, port, ip)| {
                let mut s = Sqe {
                    opcode,
                    flags,
                    family,
                    slot,
                    arg0,
                    arg1,
                    port,
                    ..Default::default()
                };
                s.addr[..4].copy_from_slice(&ip);
                s
            })
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            3 => (any::<u32>(), any::<u32>()).prop_map(|(word, value)| Action::Poke { word, value }),
            1 => (any::<u32>(), any::<u8>()).prop_map(|(at, value)| Action::PokeData { at, value }),
            4 => sqe().prop_map(Action::Submit),
            2 => Just(Action::Pass),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn hostile_region_contents_never_panic(actions in proptest::collection::vec(action(), 1..120)) {
            play(&actions);
        }
    }

    fn op(opcode: u8, slot: u32) -> Sqe {
        Sqe {
            opcode,
            slot,
            family: AF_INET,
            ..Default::default()
        }
    }

    #[test]
    fn operations_report_linux_errors() {
        let mut h = harness();
        assert_eq!(h.call(op(OP_BIND, 5)).result, -errno::EBADF);
        let v6 = Sqe {
            family: AF_INET6,
            arg0: SOCK_STREAM,
            ..op(OP_SOCKET, 0)
        };
        assert_eq!(h.call(v6).result, -errno::EAFNOSUPPORT);
        let raw = Sqe {
            arg0: 3,
            ..op(OP_SOCKET, 0)
        };
        assert_eq!(h.call(raw).result, -errno::EPROTONOSUPPORT);
        let s = h.call(Sqe {
            arg0: SOCK_STREAM,
            ..op(OP_SOCKET, 0)
        });
        assert_eq!(s.result, 0);
        let mut foreign = Sqe {
            port: 80,
            ..op(OP_BIND, s.slot)
        };
        foreign.addr[..4].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(h.call(foreign).result, -errno::EADDRNOTAVAIL);
        assert_eq!(h.call(op(OP_GETPEERNAME, s.slot)).result, -errno::ENOTCONN);
        let bad_opt = Sqe {
            arg0: sockopt(SOL_SOCKET, 999),
            ..op(OP_SETSOCKOPT, s.slot)
        };
        assert_eq!(h.call(bad_opt).result, -errno::ENOPROTOOPT);
        // 127.0.0.1 is served inside the stack; the rest of 127/8 is not.
        let mut loopback = Sqe {
            port: 80,
            ..op(OP_CONNECT, s.slot)
        };
        loopback.addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        assert_eq!(h.call(loopback).result, -errno::ENETUNREACH);
        // Exhausting the slots gives EMFILE, never a panic or memory beyond the region.
        let mut last = 0;
        for _ in 0..SLOTS {
            last = h
                .call(Sqe {
                    arg0: SOCK_DGRAM,
                    ..op(OP_SOCKET, 0)
                })
                .result;
        }
        assert_eq!(last, -errno::EMFILE);
        assert_eq!(h.call(op(OP_CLOSE, s.slot)).result, 0);
        assert_eq!(h.call(op(OP_CLOSE, s.slot)).result, -errno::EBADF);
    }

    #[test]
    fn a_freed_slot_gives_its_ring_pages_back() {
        let mut h = harness();
        let c = h.call(Sqe {
            opcode: OP_SOCKET,
            family: AF_INET,
            arg0: SOCK_STREAM,
            ..Default::default()
        });
        assert_eq!(c.result, 0);
        let slot = c.slot;
        // The client writes over both of its rings: their pages are in memory.
        let off = h.geometry.tx_buf_off(slot) as usize;
        for at in (0..3 * BUF as usize).step_by(4) {
            h.store_u32(off + at, 0xdead_beef);
        }
        assert_eq!(h.resident_buffer_pages(slot), 3);
        let c = h.call(Sqe {
            opcode: OP_CLOSE,
            slot,
            ..Default::default()
        });
        assert_eq!(c.result, 0);
        assert_eq!(
            h.resident_buffer_pages(slot),
            0,
            "the closed slot's pages stayed"
        );
        assert_eq!(h.load_u32(off), 0, "a freed ring reads as zeros");
    }
}
