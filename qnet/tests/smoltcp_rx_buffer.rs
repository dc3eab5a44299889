//! The smoltcp patch qnet's direct receive rests on (`tcp::Socket::replace_rx_buffer`,
//! third_party/README.md): two smoltcp interfaces joined by in-memory links, a segment held
//! back so the receiver holds data out of order, the buffer replaced in the middle, and every
//! byte still arriving once and in order.

use std::collections::VecDeque;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

/// One side of an Ethernet link kept in memory: what it sent waits in `sent` until the test
/// hands it to the other side's `inbox`, in any order it likes.
#[derive(Default)]
struct Link {
    inbox: VecDeque<Vec<u8>>,
    sent: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl phy::Device for Link {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.inbox.pop_front()?;
        Some((Rx(frame), Tx(&mut self.sent)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.sent))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

struct Host {
    iface: Interface,
    link: Link,
    sockets: SocketSet<'static>,
    socket: SocketHandle,
}

impl Host {
    fn new(last: u8, rx_buf: usize) -> Host {
        let mut link = Link::default();
        let mac = HardwareAddress::Ethernet(EthernetAddress([2, 0, 0, 0, 0, last]));
        let mut iface = Interface::new(Config::new(mac), &mut link, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 0, last), 24))
                .expect("room for an address");
        });
        let mut sockets = SocketSet::new(vec![]);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; rx_buf]),
            tcp::SocketBuffer::new(vec![0u8; 64 << 10]),
        );
        // The whole window at once (CUBIC would start with one segment).
        socket.set_congestion_control(tcp::CongestionControl::None);
        let socket = sockets.add(socket);
        Host {
            iface,
            link,
            sockets,
            socket,
        }
    }

    fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.link, &mut self.sockets);
    }

    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.socket)
    }
}

/// Polls both hosts, delivering everything sent, until neither sends anything more.
fn settle(a: &mut Host, b: &mut Host, now: Instant) {
    for _ in 0..50 {
        a.poll(now);
        b.poll(now);
        if a.link.sent.is_empty() && b.link.sent.is_empty() {
            return;
        }
        b.link.inbox.extend(a.link.sent.drain(..));
        a.link.inbox.extend(b.link.sent.drain(..));
    }
    panic!("the two hosts kept talking");
}

#[test]
fn replacing_the_receive_buffer_keeps_queued_and_out_of_order_bytes() {
    let now = Instant::ZERO;
    let mut sender = Host::new(1, 8192);
    let mut receiver = Host::new(2, 8192);
    receiver.tcp().listen(80).expect("listen");
    let cx = sender.iface.context();
    sender
        .sockets
        .get_mut::<tcp::Socket>(sender.socket)
        .connect(cx, (IpAddress::v4(10, 0, 0, 2), 80), 40000)
        .expect("connect");
    settle(&mut sender, &mut receiver, now);
    assert_eq!(receiver.tcp().state(), tcp::State::Established);

    // 5,000 bytes in four segments; the second is held back.
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(sender.tcp().send_slice(&data), Ok(data.len()));
    for _ in 0..8 {
        sender.poll(now);
    }
    let mut segments: Vec<Vec<u8>> = sender.link.sent.drain(..).collect();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    let held = segments.remove(1);
    receiver.link.inbox.extend(segments);
    receiver.poll(now);
    receiver.link.sent.clear(); // its duplicate ACKs
    let queued = receiver.tcp().recv_queue();
    assert!(queued > 0 && queued < data.len(), "queued {queued}");

    // Refused: smaller than the old buffer, or already holding data.
    let small = tcp::SocketBuffer::new(vec![0u8; 4096]);
    assert!(receiver.tcp().replace_rx_buffer(small).is_err());
    let mut busy = tcp::SocketBuffer::new(vec![0u8; 16384]);
    busy.enqueue_unallocated(1);
    assert!(receiver.tcp().replace_rx_buffer(busy).is_err());

    // Accepted: a larger buffer whose read position is moved to 15,000 first, so the bytes
    // land across its end and wrap (as a ring slot's position does).
    let mut bigger = tcp::SocketBuffer::new(vec![0u8; 16384]);
    bigger.enqueue_unallocated(15000);
    bigger.dequeue_allocated(15000);
    let old = receiver
        .tcp()
        .replace_rx_buffer(bigger)
        .expect("an empty, larger buffer is taken");
    assert_eq!(old.capacity(), 8192);
    assert_eq!(receiver.tcp().recv_capacity(), 16384);
    assert_eq!(receiver.tcp().recv_queue(), queued);

    // The held segment fills the hole: everything is there, in order, once.
    receiver.link.inbox.push_back(held);
    settle(&mut receiver, &mut sender, now);
    assert_eq!(receiver.tcp().recv_queue(), data.len());
    let mut got = Vec::new();
    while receiver.tcp().can_recv() {
        receiver
            .tcp()
            .recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .expect("recv");
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes came out changed or out of order");
}
