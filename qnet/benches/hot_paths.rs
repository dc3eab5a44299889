//! Function-level benchmarks of qnet's hot paths, so a regression shows where it is and not only
//! end to end: the socket ring's queues and byte rings, smoltcp's poll as the number of
//! connections grows, and a batch of frames written to a real TAP through io_uring.
//!
//! `cargo bench -p qnet` (the TAP group needs root and /dev/net/tun; without them it says so
//! and is left out).

use std::hint::black_box;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use qnet_ring::{Geometry, RegionView, Sqe, OP_TX_KICK};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, Loopback, Medium, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

fn ring(c: &mut Criterion) {
    let geometry = Geometry::new(256, 256, 64, 64 << 10, 64 << 10).expect("geometry");
    let region = qnet::phy::RawRegion::new(geometry.region_size as usize).expect("mmap");
    // SAFETY: the region is a page-aligned read-write mapping of that size, alive while `view`.
    let view = unsafe { RegionView::new(region.as_ptr(), region.len(), geometry) }.expect("view");
    view.publish_geometry();
    let mut g = c.benchmark_group("ring");
    let sqe = Sqe {
        opcode: OP_TX_KICK,
        slot: 3,
        ..Sqe::default()
    };
    let mut pos = 0u32;
    g.bench_function("64 submissions enqueued and dequeued", |b| {
        b.iter(|| {
            for i in 0..64 {
                view.write_sqe(pos.wrapping_add(i), &sqe);
            }
            view.sq_tail()
                .store(pos.wrapping_add(64), std::sync::atomic::Ordering::Release);
            let tail = view.sq_tail().load(std::sync::atomic::Ordering::Acquire);
            while pos != tail {
                black_box(view.read_sqe(pos));
                pos = pos.wrapping_add(1);
            }
            view.sq_head()
                .store(pos, std::sync::atomic::Ordering::Release);
        })
    });
    let bytes = view.tx_ring(0).expect("slot 0");
    let src = vec![0x5a_u8; 16 << 10];
    let mut dst = vec![0u8; 16 << 10];
    let mut at = 0u32;
    g.throughput(criterion::Throughput::Bytes(src.len() as u64));
    g.bench_function("16 KiB through a byte ring (write, read)", |b| {
        b.iter(|| {
            bytes.write(at, &src);
            bytes.read(at, &mut dst);
            at = at.wrapping_add(src.len() as u32 + 1000); // wraps now and then
            black_box(&dst);
        })
    });
    g.finish();
}

/// An interface on a loopback device with `n` established connections over 127.0.0.1; their
/// (client, server) handles.
fn connected(
    n: usize,
) -> (
    Interface,
    Loopback,
    SocketSet<'static>,
    Vec<(SocketHandle, SocketHandle)>,
) {
    let mut dev = Loopback::new(Medium::Ethernet);
    let config = Config::new(EthernetAddress([2, 0, 0, 0, 0, 1]).into());
    let mut iface = Interface::new(config, &mut dev, Instant::ZERO);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8))
            .expect("an address");
    });
    let mut sockets = SocketSet::new(Vec::new());
    let buf = || tcp::SocketBuffer::new(vec![0; 4096]);
    let mut pairs = Vec::new();
    for i in 0..n {
        let port = 1000 + i as u16;
        // As qnet sets them: no Nagle, no delayed ACK (the benchmark's clock barely moves).
        let socket = || {
            let mut s = tcp::Socket::new(buf(), buf());
            s.set_nagle_enabled(false);
            s.set_ack_delay(None);
            s
        };
        let mut server = socket();
        server.listen(port).expect("listen");
        let server = sockets.add(server);
        let mut client = socket();
        client
            .connect(
                iface.context(),
                (IpAddress::v4(127, 0, 0, 1), port),
                20000 + i as u16,
            )
            .expect("connect");
        pairs.push((sockets.add(client), server));
    }
    let mut now = Instant::ZERO;
    for _ in 0..10_000 {
        iface.poll(now, &mut dev, &mut sockets);
        now += smoltcp::time::Duration::from_micros(10);
        let up = pairs
            .iter()
            .all(|(c, _)| sockets.get::<tcp::Socket>(*c).state() == tcp::State::Established);
        if up {
            return (iface, dev, sockets, pairs);
        }
    }
    panic!("{n} loopback connections did not establish");
}

fn smoltcp_poll(c: &mut Criterion) {
    let mut g = c.benchmark_group("smoltcp poll");
    for n in [1usize, 64, 512] {
        let (mut iface, mut dev, mut sockets, pairs) = connected(n);
        let mut now = Instant::from_secs(1);
        g.bench_with_input(BenchmarkId::new("idle", n), &n, |b, _| {
            b.iter(|| {
                now += smoltcp::time::Duration::from_micros(1);
                black_box(iface.poll(now, &mut dev, &mut sockets))
            })
        });
        let (client, server) = pairs[0];
        g.bench_with_input(BenchmarkId::new("1-byte exchange on one", n), &n, |b, _| {
            b.iter(|| {
                now += smoltcp::time::Duration::from_micros(1);
                sockets
                    .get_mut::<tcp::Socket>(client)
                    .send_slice(b"x")
                    .expect("send");
                // Sent on one poll, received on the next (the loopback queue is in between).
                let mut byte = [0u8; 1];
                for _ in 0..4 {
                    iface.poll(now, &mut dev, &mut sockets);
                    let server = sockets.get_mut::<tcp::Socket>(server);
                    if server.recv_slice(&mut byte).expect("recv") == 1 {
                        return;
                    }
                }
                panic!("the byte did not arrive in four polls");
            })
        });
    }
    g.finish();
}

/// A 1500-byte IPv4/UDP frame from the stack's address to the kernel side of the TAP.
fn udp_frame(buf: &mut [u8]) {
    buf.fill(0);
    buf[..6].copy_from_slice(&[0xff; 6]); // broadcast: the kernel takes it without ARP
    buf[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut buf[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&1500u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 91, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 91, 0, 1]);
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut buf[34..42];
    udp[0..2].copy_from_slice(&4000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&1480u16.to_be_bytes()); // checksum 0: none, allowed on IPv4
}

fn tap_batch(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("tap batch: needs root and /dev/net/tun; not measured");
        return;
    }
    let ns = quark_tests::Netns::new("bench-tap");
    let tap = qnet::phy::Tap::create(&qnet::phy::TapOptions {
        name: "qbench0".into(),
        netns: Some(ns.name.clone()),
        mtu: 1500,
        peer_addr: Some("10.91.0.1/24".parse().expect("cidr")),
        offloads: true,
        persist: false,
    })
    .expect("creating the TAP");
    // A socket that takes the datagrams (and drops them once its buffer is full), so the
    // kernel answers with no ICMP.
    let _sink = ns.enter(|| std::net::UdpSocket::bind("10.91.0.1:9").expect("bind"));
    // SAFETY: eventfd(2) returns a new descriptor we own, or -1 (checked).
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let doorbell = unsafe { OwnedFd::from_raw_fd(fd) };
    let local = qnet::phy::LocalAddrs {
        mac: [2, 0, 0, 0, 0, 2],
        ip: "10.91.0.2".parse().expect("ip"),
        loopback: false,
    };
    let mut dev = qnet::phy::UringTap::new(Some(tap.fd), doorbell, 1500, local).expect("io_uring");
    let mut g = c.benchmark_group("tap");
    const BATCH: usize = 32;
    g.throughput(criterion::Throughput::Elements(BATCH as u64));
    g.bench_function("32 frames of 1500 bytes written through io_uring", |b| {
        b.iter_batched(
            || (),
            |()| {
                for _ in 0..BATCH {
                    let token = dev.queues.transmit(Instant::ZERO).expect("a tx buffer");
                    token.consume(1514, udp_frame);
                }
                dev.arm().expect("arm");
                dev.submit().expect("submit");
                while dev.queues.tx_outstanding() > 0 {
                    dev.wait(Some(Duration::from_millis(100))).expect("wait");
                    dev.reap();
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ring, smoltcp_poll, tap_batch);
criterion_main!(benches);
