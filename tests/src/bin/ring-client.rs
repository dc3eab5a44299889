//! A ring client for tests that need a separate process: one that streams until it is killed,
//! and hostile ones that corrupt their ring in a chosen way.
//!
//! `ring-client stream SOCKET ADDR` | `ring-client hostile SOCKET MODE`
//! Hostile modes print `closed` and exit 0 once the stack has closed them, or exit 1.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use qnet_client::attach::{Hello, Welcome};
use qnet_client::sys::{eventfd_signal, recv_with_fds, Mapping};
use qnet_ring::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some("stream") if args.len() == 4 => stream(&args[2], &args[3]),
        Some("hostile") if args.len() == 4 => hostile(&args[2], &args[3]),
        _ => {
            eprintln!("usage: ring-client stream SOCKET ADDR | hostile SOCKET MODE");
            2
        }
    };
    std::process::exit(code);
}

fn stream(socket: &str, addr: &str) -> i32 {
    let client = qnet_client::Client::connect(socket).expect("attach");
    let addr = addr.parse().expect("address");
    let mut s = qnet_client::TcpStream::connect(&client, addr).expect("connect");
    let buf = vec![0x5au8; 64 << 10];
    println!("streaming");
    loop {
        if s.write_all(&buf).is_err() {
            return 1;
        }
    }
}

fn hostile(socket: &str, mode: &str) -> i32 {
    let stream = UnixStream::connect(socket).expect("connect");
    (&stream)
        .write_all(&Hello::current().encode())
        .expect("hello");
    let mut buf = [0u8; Welcome::LEN];
    let mut fds = recv_with_fds(&stream, &mut buf, 3).expect("welcome");
    let welcome = Welcome::decode(&buf);
    let _client_wake = fds.pop().expect("client wake eventfd");
    let doorbell = fds.pop().expect("doorbell");
    let memfd = fds.pop().expect("memfd");
    let map = Mapping::map_shared(&memfd, welcome.region_size as usize).expect("mmap");
    // SAFETY: the mapping is page aligned and outlives the view.
    let view = unsafe {
        let g = RegionView::read_geometry(map.as_ptr());
        RegionView::new(map.as_ptr(), map.len(), g).expect("view")
    };
    let g = *view.geometry();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let bell = std::os::fd::AsRawFd::as_raw_fd(&doorbell);
    let mut tail = 0u32;
    let mut push = |sqe: Sqe| {
        view.write_sqe(tail, &sqe);
        tail = tail.wrapping_add(1);
        view.sq_tail().store(tail, SeqCst);
        eventfd_signal(bell);
    };
    // Waits for the first completion (the socket the corrupting modes open) and returns its slot.
    let first_slot = || {
        let start = Instant::now();
        while view.cq_tail().load(SeqCst) == 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        view.read_cqe(0).slot
    };
    match mode {
        // A tail far beyond the queue.
        "sq-tail" => view.sq_tail().store(g.sq_entries * 4 + 3, SeqCst),
        // A completion head beyond what the stack published.
        "cq-head" => {
            view.cq_head().store(1000, SeqCst);
            push(Sqe {
                opcode: OP_NOP,
                ..Default::default()
            });
        }
        // A datagram socket whose transmit ring is corrupted: a tail claiming more bytes than
        // the ring holds, or a record whose length runs past what was published.
        "tx-tail" | "dgram-len" => {
            push(Sqe {
                opcode: OP_SOCKET,
                family: AF_INET,
                arg0: SOCK_DGRAM,
                ..Default::default()
            });
            let slot = first_slot();
            if let (Some(ring), Some(c)) = (view.tx_ring(slot), view.slot_client(slot)) {
                if mode == "tx-tail" {
                    c.tx_tail.store(g.tx_buf_size + 1, SeqCst);
                } else {
                    let mut hdr = [0u8; 24];
                    hdr[..4].copy_from_slice(&60_000u32.to_ne_bytes());
                    ring.write(0, &hdr);
                    c.tx_tail.store(64, SeqCst);
                }
            }
            push(Sqe {
                opcode: OP_TX_KICK,
                slot,
                flags: SQE_F_NO_CQE,
                ..Default::default()
            });
        }
        // Random operations on random slots, then random words all over the header and slots:
        // the stack must answer or close us, never crash.
        "garbage" => {
            for _ in 0..2000 {
                let r = next();
                let mut sqe = Sqe {
                    opcode: (r % 16) as u8,
                    flags: (r >> 8) as u8,
                    family: if r & (1 << 20) != 0 {
                        AF_INET
                    } else {
                        (r >> 24) as u16
                    },
                    slot: if r & (1 << 21) != 0 {
                        (r >> 32) as u32 % 8
                    } else {
                        (r >> 32) as u32
                    },
                    arg0: (next() % 70_000) as u32,
                    arg1: next(),
                    port: next() as u16,
                    ..Default::default()
                };
                sqe.addr[..4].copy_from_slice(&[10, 77, 0, (next() % 4) as u8]);
                push(sqe);
                if next() % 64 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let base = map.as_ptr();
            let span = g.buf_off as usize;
            for _ in 0..5000 {
                let off = (next() as usize % span) & !3;
                // SAFETY: off < buf_off <= mapping length, 4-byte aligned.
                unsafe { (base.add(off) as *mut u32).write_volatile(next() as u32) };
            }
        }
        other => {
            eprintln!("unknown mode {other}");
            return 2;
        }
    }
    eventfd_signal(bell);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if view.stack_flags().load(SeqCst) & STACK_CLOSED != 0 {
            println!("closed");
            return 0;
        }
        eventfd_signal(bell);
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("not closed");
    1
}
