//! The smoltcp patches qnet's direct receive and transmit rest on
//! (`tcp::Socket::replace_rx_buffer`, `replace_tx_buffer`, `send_enqueued`;
//! third_party/README.md): two smoltcp interfaces joined by in-memory links, buffers replaced in
//! the middle of a stream, and every byte still arriving once and in order.

use std::collections::VecDeque;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    Ipv4Packet, TcpPacket,
};

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

    /// Starts connecting to 10.0.0.2:80 (the other host).
    fn connect_to_port_80(&mut self) {
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(self.socket)
            .connect(cx, (IpAddress::v4(10, 0, 0, 2), 80), 40000)
            .expect("connect");
    }

    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.socket)
    }

    /// Everything the socket has received, taken.
    fn received(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        while self.tcp().can_recv() {
            self.tcp()
                .recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .expect("recv");
        }
        got
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
    sender.connect_to_port_80();
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
    assert!(receiver.tcp().holds_out_of_order());

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
    assert!(!receiver.tcp().holds_out_of_order());
    let got = receiver.received();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes came out changed or out of order");
}

/// The window field and window-scale option of a TCP segment in an Ethernet frame (None for
/// another kind of frame, such as ARP).
fn window_of(frame: &[u8]) -> Option<(u16, Option<u8>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let mut scale = None;
    let mut options = tcp.options();
    // Kind 3 (window scale): kind, length 3, shift; kind 1 is one byte of padding, 0 ends.
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            0 => break,
            1 => options = rest,
            _ => {
                let len = usize::from(*rest.first().expect("option length")).max(2);
                if kind == 3 {
                    scale = Some(rest[1]);
                }
                options = &options[len..];
            }
        }
    }
    Some((tcp.window_len(), scale))
}

/// The last TCP segment `host` sent, as [`window_of`] reads it.
fn last_segment(host: &Host) -> (u16, Option<u8>) {
    host.link
        .sent
        .iter()
        .rev()
        .find_map(|f| window_of(f))
        .expect("a TCP segment")
}

/// A socket that starts on a 1 MiB buffer and is meant to grow to a 4 MiB ring scales its
/// window for the ring (Linux chooses the scale for tcp_rmem's maximum, too): without the
/// patch's `set_rx_window_max` the scale (5) caps the window at 2 MiB whatever the buffer.
#[test]
fn the_window_scale_fits_the_buffer_the_socket_may_grow_to() {
    let now = Instant::ZERO;
    for (max, scale) in [(None, 5), (Some(4usize << 20), 7)] {
        let mut sender = Host::new(1, 8192);
        let mut receiver = Host::new(2, 1 << 20);
        if let Some(max) = max {
            receiver.tcp().set_rx_window_max(max);
        }
        receiver.tcp().set_ack_delay(None);
        receiver.tcp().listen(80).expect("listen");
        sender.connect_to_port_80();
        // Until the receiver answers the SYN (ARP first).
        for _ in 0..10 {
            sender.poll(now);
            receiver.link.inbox.extend(sender.link.sent.drain(..));
            receiver.poll(now);
            if receiver.link.sent.iter().any(|f| window_of(f).is_some()) {
                break;
            }
            sender.link.inbox.extend(receiver.link.sent.drain(..));
        }
        assert_eq!(last_segment(&receiver).1, Some(scale), "max {max:?}");
        settle(&mut receiver, &mut sender, now);
        assert_eq!(receiver.tcp().state(), tcp::State::Established);

        // Grown to 4 MiB: the next ACK offers what the scale can say of it.
        let ring = tcp::SocketBuffer::new(vec![0u8; 4 << 20]);
        receiver.tcp().replace_rx_buffer(ring).expect("replace");
        assert_eq!(sender.tcp().send_slice(b"hello"), Ok(5));
        sender.poll(now);
        receiver.link.inbox.extend(sender.link.sent.drain(..));
        receiver.poll(now);
        let offered = usize::from(last_segment(&receiver).0) << scale;
        if max.is_some() {
            assert!(offered > (4 << 20) - 4096, "offered {offered}");
        } else {
            assert!(offered <= 2 << 20, "offered {offered}");
        }
    }
}

#[test]
fn a_socket_sends_from_storage_it_is_given_and_moves_unacknowledged_bytes_out() {
    let now = Instant::ZERO;
    let mut sender = Host::new(1, 8192);
    let mut receiver = Host::new(2, 65536);
    receiver.tcp().listen(80).expect("listen");
    sender.connect_to_port_80();
    settle(&mut sender, &mut receiver, now);

    // The sender's send buffer becomes storage the test fills itself ("the ring"), its read
    // position at 15,000 of 16,384 so the data wraps.
    let mut ring = tcp::SocketBuffer::new(vec![0u8; 16384]);
    ring.enqueue_unallocated(15000);
    ring.dequeue_allocated(15000);
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 13 % 251) as u8).collect();
    assert_eq!(ring.write_unallocated(0, &data), data.len());
    let busy = {
        let mut b = tcp::SocketBuffer::new(vec![0u8; 16384]);
        b.enqueue_unallocated(1);
        b
    };
    assert!(sender.tcp().replace_tx_buffer(busy).is_err(), "holds data");
    let own = sender
        .tcp()
        .replace_tx_buffer(ring)
        .expect("an empty buffer");
    assert_eq!(own.capacity(), 64 << 10);
    // Written but not handed over: nothing goes out. Then handed over in two steps.
    sender.poll(now);
    assert!(sender.link.sent.is_empty());
    assert_eq!(sender.tcp().send_enqueued(2000), Ok(2000));
    assert_eq!(sender.tcp().send_enqueued(4000), Ok(4000));
    assert_eq!(
        sender.tcp().send_enqueued(1 << 20),
        Ok(16384 - 6000),
        "at most what fits"
    );
    assert_eq!(sender.tcp().send_queue(), 16384);
    sender.tcp().abort();

    // A new connection given storage holding just the data.
    let mut exact = tcp::SocketBuffer::new(vec![0u8; 16384]);
    exact.enqueue_unallocated(15000);
    exact.dequeue_allocated(15000);
    assert_eq!(exact.write_unallocated(0, &data), data.len());
    let mut sender = Host::new(1, 8192);
    let mut receiver = Host::new(2, 65536);
    receiver.tcp().listen(80).expect("listen");
    sender.connect_to_port_80();
    settle(&mut sender, &mut receiver, now);
    sender
        .tcp()
        .replace_tx_buffer(exact)
        .expect("an empty buffer");
    assert_eq!(sender.tcp().send_enqueued(data.len()), Ok(data.len()));
    // The first segments leave, unacknowledged; the bytes still held move to a buffer of the
    // socket's own (as when a slot closes), and the rest of the stream goes on from there.
    sender.poll(now);
    let first: Vec<Vec<u8>> = sender.link.sent.drain(..).collect();
    assert!(!first.is_empty());
    let held = sender.tcp().send_queue();
    assert_eq!(held, data.len(), "nothing acknowledged yet");
    let ring = sender
        .tcp()
        .replace_tx_buffer(tcp::SocketBuffer::new(vec![0u8; 8192]))
        .expect("room for what is held");
    assert_eq!(ring.capacity(), 16384);
    assert_eq!(sender.tcp().send_queue(), held);
    receiver.link.inbox.extend(first);
    settle(&mut sender, &mut receiver, now);
    let got = receiver.received();
    assert!(got == data, "the bytes came out changed or out of order");
}

/// The scaled window field rounds the free space down, so an ACK can pull the window's right
/// edge back by a few bytes; a sender that had already sent up to the earlier edge must have
/// those bytes taken (patch 9), not cut off into a hole it must retransmit (and take as loss).
#[test]
fn bytes_up_to_an_edge_already_advertised_are_taken_when_rounding_pulls_it_back() {
    let now = Instant::ZERO;
    let mut sender = Host::new(1, 8192);
    let mut receiver = Host::new(2, 8192);
    receiver.tcp().set_rx_window_max(1 << 20); // scale 5: the window counts 32-byte units
    receiver.tcp().set_ack_delay(None);
    receiver.tcp().listen(80).expect("listen");
    sender.connect_to_port_80();
    sender.tcp().set_nagle_enabled(false);
    settle(&mut sender, &mut receiver, now);
    assert_eq!(receiver.tcp().state(), tcp::State::Established);

    // 1,000 bytes in: the receiver's ACK offers 7,192 bytes rounded down to 7,168, so its edge
    // moves 24 bytes back. The sender never sees that ACK and fills the edge it knows.
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 11 % 251) as u8).collect();
    assert_eq!(sender.tcp().send_slice(&data[..1000]), Ok(1000));
    sender.poll(now);
    receiver.link.inbox.extend(sender.link.sent.drain(..));
    receiver.poll(now);
    assert_eq!(last_segment(&receiver), (7168 >> 5, None));
    receiver.link.sent.clear();
    assert_eq!(sender.tcp().send_slice(&data[1000..]), Ok(7192));
    for _ in 0..8 {
        sender.poll(now);
    }
    receiver.link.inbox.extend(sender.link.sent.drain(..));
    receiver.poll(now);
    assert_eq!(
        receiver.tcp().recv_queue(),
        data.len(),
        "bytes were cut off"
    );
    assert!(!receiver.tcp().holds_out_of_order());
    assert!(receiver.received() == data);
}
