//! Property tests of the stack side of the socket ring: whatever a client writes into its
//! region, the stack either serves it or closes it with a `Violation`; it never panics, and
//! tearing the session down afterwards is always clean.

use std::os::unix::net::UnixStream;

use proptest::prelude::*;
use qnet::net::Net;
use qnet::phy::{FrameQueues, LocalAddrs};
use qnet::session::Session;
use qnet::StackConfig;
use qnet_client::sys::{memfd, Mapping};
use qnet_ring::*;
use smoltcp::time::Instant;

const SLOTS: u32 = 8;
const BUF: u32 = 4096;

struct Harness {
    net: Net,
    dev: FrameQueues,
    session: Session,
    base: *mut u8,
    geometry: Geometry,
    tail: u32,
    _peer: UnixStream,
}

fn harness() -> Harness {
    let cfg = StackConfig::new("10.9.0.2/24".parse().unwrap());
    let local = LocalAddrs {
        mac: cfg.mac.0,
        ip: cfg.addr.addr,
        loopback: true,
    };
    let mut dev = FrameQueues::new(1500, local, true).unwrap();
    let net = Net::new(cfg, &mut dev, Instant::ZERO);
    let geometry = Geometry::new(16, 16, SLOTS, BUF).unwrap();
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

#[derive(Debug, Clone)]
enum Action {
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

impl Harness {
    fn store_u32(&self, off: usize, value: u32) {
        assert!(off % 4 == 0 && off + 4 <= self.geometry.region_size as usize);
        // SAFETY: checked to be inside the mapping and aligned.
        unsafe { (self.base.add(off) as *mut u32).write_volatile(value) }
    }

    fn load_u32(&self, off: usize) -> u32 {
        assert!(off % 4 == 0 && off + 4 <= self.geometry.region_size as usize);
        // SAFETY: checked to be inside the mapping and aligned.
        unsafe { (self.base.add(off) as *const u32).read_volatile() }
    }

    /// Applies one client action and one stack pass; false once the stack refuses the client.
    fn apply(&mut self, a: &Action, now: Instant) -> bool {
        match a {
            Action::Poke { word, value } => {
                let words = self.geometry.buf_off as u32 / 4;
                self.store_u32((word % words) as usize * 4, *value);
            }
            Action::PokeData { at, value } => {
                let len = (SLOTS * 2 * BUF) as u64;
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
        ok
    }

    /// Submits one operation and returns its completion.
    fn call(&mut self, s: Sqe) -> Cqe {
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hostile_region_contents_never_panic(actions in proptest::collection::vec(action(), 1..120)) {
        let mut h = harness();
        for (i, a) in actions.iter().enumerate() {
            if !h.apply(a, Instant::from_millis(i as i64)) {
                break; // the stack closes this client here
            }
        }
        h.session.teardown(&mut h.net, Instant::from_millis(1000));
        h.net.reap_lingering(Instant::from_secs(100));
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
