//! The container's network: a qnet stack running in qvisor on a TAP in the container's network
//! namespace, and the guest's sockets as clients of it over the socket ring.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use qnet::phy::TapOptions;
use qnet::runner::RunningStack;
use qnet::{Ipv4Cidr, Mac, StackConfig};
use qnet_client::{poll, Client, Interest, TcpListener, TcpStream, UdpSocket};
use qnet_netns::{Link, Netns, NetnsError, Route, Takeover};
use qnet_ring::{READY_ERR, READY_HUP, READY_IN, READY_OUT, READY_RDHUP};

use qkernel::{SocketId, SocketReady};

use crate::fastread::FastReads;

const EAGAIN: i64 = 11;
const EBADF: i64 = 9;
const EINVAL: i64 = 22;
const ENOTCONN: i64 = 107;
const EOPNOTSUPP: i64 = 95;
const EMFILE: i64 = 24;
const ENOBUFS: i64 = 105;
/// Most sockets one container may hold (qnet bounds its ring slots too).
const MAX_SOCKETS: usize = 1024;

/// Where the container's network comes from.
#[derive(Debug, Clone)]
pub enum NetSetup {
    /// No network namespace given: loopback (127.0.0.1) only, as in a fresh Linux namespace.
    Loopback,
    /// A new network namespace without a path: the VMM process gets one of its own, as runc
    /// gives a container, so whoever configures `/proc/PID/ns/net` between create and start
    /// (`ctr run --cni`, Docker's prestart hook) does it there. At start an interface found
    /// there is taken over as in `Pod`; with none the guest has loopback only.
    NewNamespace,
    /// Take over the interface a CNI plugin made in this network namespace (a path such as
    /// /run/netns/NAME or /proc/PID/ns/net, from config.json).
    Pod { netns: PathBuf },
    /// A new TAP in a namespace, addressed by hand (`qvisor launch --netns`, for development).
    Tap(TapNet),
    /// No stack of the container's own: its sockets are served over the socket ring at
    /// `socket` by a stack outside (a qnetd ring endpoint, docs/qnetd.md).
    Ring { socket: PathBuf },
}

/// A hand-made TAP network.
#[derive(Debug, Clone)]
pub struct TapNet {
    /// A network namespace (`ip netns add NAME`) to put the TAP in.
    pub netns: String,
    pub tap: String,
    /// The container's address.
    pub addr: Ipv4Cidr,
    /// An address for the kernel side of the TAP (the peer the container reaches), if any.
    pub peer: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
}

/// Name of the TAP qvisor creates next to the pod interface.
const POD_TAP: &str = "qtap0";

/// The stack configuration that makes qnet answer for `link` as the kernel did, given the
/// routes out of it. A subnet the kernel reached directly stays on-link; a subnet reached
/// through a gateway (the ptp plugin) or none (Calico's /32) makes the address a /32, so every
/// destination goes through a gateway, which is then on-link.
pub fn pod_stack_config(link: &Link, routes: &[&Route]) -> anyhow::Result<StackConfig> {
    let addr = *link
        .addrs
        .first()
        .with_context(|| format!("interface {} has no IPv4 address", link.name))?;
    let on_link = routes
        .iter()
        .any(|r| r.gateway.is_none() && r.dst == addr.network());
    let mut cfg = StackConfig::new(Ipv4Cidr {
        addr: addr.addr,
        prefix: if on_link { addr.prefix } else { 32 },
    });
    for r in routes {
        match (r.gateway, r.dst.prefix) {
            (Some(gw), 0) => cfg.gateway = Some(gw),
            (Some(gw), _) => cfg.routes.push(qnet::Route {
                dst: Ipv4Cidr {
                    addr: r.dst.addr,
                    prefix: r.dst.prefix,
                },
                via: gw,
            }),
            // Directly reached subnets: the address's own is above; others are not modelled.
            (None, _) => {}
        }
    }
    if let Some(mac) = link.mac {
        cfg.mac = Mac(mac);
    }
    cfg.mtu = link.mtu;
    // Frames leave through the pod interface: one at its gso_max_size or above would be
    // segmented in software on the way out (tc mirred to its egress).
    if let Some(max) = link.gso_max_size {
        cfg.gso_max = cfg.gso_max.min(max.saturating_sub(1));
    }
    cfg.validate()
        .with_context(|| format!("the network of interface {}", link.name))?;
    Ok(cfg)
}

/// The running network: the stack and the guest's attachment to it.
struct Live {
    client: Client,
    // Dropped after the client: the proxy and the stack outlive the guest's client, and the
    // pod interface is given back only after the stack (and its TAP) are gone.
    _proxy: Option<qhttp::ProxyHandle>,
    /// The container's own stack (none when another process serves its ring).
    stack: Option<RunningStack>,
    takeover: Option<Takeover>,
}

impl Live {
    fn start(
        setup: &NetSetup,
        cancel: &Arc<AtomicBool>,
        budget: usize,
        http_proxy: Option<&qhttp::Config>,
    ) -> anyhow::Result<Live> {
        if let NetSetup::Ring { socket } = setup {
            return Live::attach_ring(socket, cancel, http_proxy);
        }
        let socket: PathBuf =
            std::env::temp_dir().join(format!("qvisor-net-{}.sock", std::process::id()));
        // What the stack serves, on which TAP, and (for a pod) the interface to take over.
        let (mut cfg, tap, pod) = match setup {
            // A link-less stack: only 127.0.0.1 exists.
            NetSetup::Loopback | NetSetup::NewNamespace => {
                (StackConfig::new(qnet::net::LOOPBACK), None, None)
            }
            NetSetup::Tap(t) => {
                let mut cfg = StackConfig::new(t.addr);
                cfg.gateway = t.gateway;
                let tap = TapOptions {
                    name: t.tap.clone(),
                    netns: Some(t.netns.clone()),
                    mtu: cfg.mtu,
                    peer_addr: t.peer,
                    offloads: true,
                    persist: false,
                };
                (cfg, Some(tap), None)
            }
            NetSetup::Ring { .. } => unreachable!("attached above"),
            NetSetup::Pod { netns } => {
                let ns = Netns::open(netns)?;
                let snapshot = ns.inspect()?;
                let link = snapshot.pod_link().ok_or_else(|| NetnsError::NoInterface {
                    path: netns.display().to_string(),
                })?;
                let routes: Vec<&Route> = snapshot.routes_of(link.index).collect();
                let cfg = pod_stack_config(link, &routes)?;
                tracing::info!(
                    link = %link.name,
                    addr = %cfg.addr,
                    gateway = ?cfg.gateway,
                    routes = cfg.routes.len(),
                    "taking over the pod interface"
                );
                let tap = TapOptions {
                    name: POD_TAP.into(),
                    netns: Some(netns.display().to_string()),
                    mtu: cfg.mtu,
                    peer_addr: None,
                    offloads: true,
                    persist: false,
                };
                let link_name = link.name.clone();
                (cfg, Some(tap), Some((ns, link_name)))
            }
        };
        // Every guest's stack: a ring slot per guest socket, buffers charged to the container.
        cfg.ring_slots = MAX_SOCKETS as u32;
        cfg.buffer_budget = budget;
        let stack = RunningStack::start(cfg, tap.as_ref(), &socket)?;
        // The kernel lets go of the pod interface only once qnet is there to answer for it.
        let takeover = pod
            .map(|(ns, link)| ns.take_over(&link, POD_TAP))
            .transpose()?;
        let client = Client::connect_cancellable(&socket, cancel.clone())
            .context("attaching to the network stack")?;
        // qhttp is a ring client of its own, so its sockets never count against the guest's.
        let proxy = http_proxy
            .map(|cfg| {
                let ring = Client::connect(&socket).context("attaching qhttp to the stack")?;
                qhttp::start(cfg.clone(), ring, Some(stack.http_counters()))
            })
            .transpose()?;
        // Every client of this stack is attached: the socket's name goes, so no other host
        // process can attach later (and a confined VMM could not remove it at the end).
        let _ = std::fs::remove_file(&socket);
        Ok(Live {
            client,
            _proxy: proxy,
            stack: Some(stack),
            takeover,
        })
    }

    /// Attaches the guest (and qhttp, if asked) to a stack another process serves at `socket`.
    /// The socket stays: it is that process's, and the container may be started again.
    fn attach_ring(
        socket: &std::path::Path,
        cancel: &Arc<AtomicBool>,
        http_proxy: Option<&qhttp::Config>,
    ) -> anyhow::Result<Live> {
        let client = Client::connect_cancellable(socket, cancel.clone())
            .with_context(|| format!("attaching to the socket ring at {}", socket.display()))?;
        let proxy = http_proxy
            .map(|cfg| {
                let ring = Client::connect(socket).context("attaching qhttp to the ring")?;
                qhttp::start(cfg.clone(), ring, None)
            })
            .transpose()?;
        tracing::info!(socket = %socket.display(), "attached to an outside stack");
        Ok(Live {
            client,
            _proxy: proxy,
            stack: None,
            takeover: None,
        })
    }
}

enum Sock {
    Fresh {
        bound: Option<SocketAddr>,
        /// Options set before the ring socket exists, given to it when it does.
        opts: FreshOpts,
    },
    Stream(TcpStream),
    Listener(TcpListener),
    /// A datagram socket not yet bound (bound on bind, connect or the first send).
    FreshDgram,
    Dgram(UdpSocket),
}

/// A fresh stream socket's options (the ring's socket is made by listen or connect).
#[derive(Default, Clone, Copy)]
struct FreshOpts {
    nodelay: bool,
    keepalive: bool,
    reuseaddr: bool,
}

const SOL_SOCKET: u32 = 1;
const SO_REUSEADDR: u32 = 2;
const SO_TYPE: u32 = 3;
const SO_SNDBUF: u32 = 7;
const SO_RCVBUF: u32 = 8;
const SO_KEEPALIVE: u32 = 9;
const SO_REUSEPORT: u32 = 15;
const SO_ACCEPTCONN: u32 = 30;
const SO_PROTOCOL: u32 = 38;
const IPPROTO_TCP: u32 = 6;
const TCP_NODELAY: u32 = 1;
const ENOPROTOOPT: i64 = 92;

pub struct GuestNet {
    setup: NetSetup,
    cancel: Arc<AtomicBool>,
    /// Bytes of socket buffers the container's stack may hold (its memory limit).
    budget: usize,
    http_proxy: Option<qhttp::Config>,
    socks: Vec<Option<Sock>>,
    live: Option<Live>,
    /// The syscall stub's socket reads (`fastread`), when on. Dropped after `live`: it keeps
    /// the rings mapped, and KVM maps them into the guest until the VM is gone.
    fast: Option<FastReads>,
}

fn errno(e: io::Error) -> i64 {
    match (e.raw_os_error(), e.kind()) {
        (Some(n), _) => n as i64,
        (None, io::ErrorKind::WouldBlock) => EAGAIN,
        (None, io::ErrorKind::TimedOut) => 110,
        (None, io::ErrorKind::BrokenPipe) => 32,
        _ => 5,
    }
}

/// Gives a ring socket made from a fresh one the options set on it meanwhile.
fn give_options(opts: FreshOpts, set: impl Fn(u32, u32, u64) -> io::Result<()>) -> Result<(), i64> {
    if opts.nodelay {
        set(IPPROTO_TCP, TCP_NODELAY, 1).map_err(errno)?;
    }
    if opts.keepalive {
        set(SOL_SOCKET, SO_KEEPALIVE, 1).map_err(errno)?;
    }
    Ok(())
}

fn v4(ip: u32, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

fn split(a: SocketAddr) -> (u32, u16) {
    match a {
        SocketAddr::V4(v) => (u32::from(*v.ip()), v.port()),
        SocketAddr::V6(v) => (0, v.port()),
    }
}

impl GuestNet {
    /// Sets up the container's network. A pod or TAP network starts now (so a broken one
    /// fails the container before it boots, and the kernel stops answering for the pod at
    /// once); loopback starts with the first socket, so programs without sockets pay nothing.
    /// Socket buffers are charged to `memory`, the container's memory limit: a guest cannot
    /// make its stack hold more than that on the host.
    ///
    /// With `http_proxy`, the network starts at once and qhttp listens on it before the guest
    /// runs.
    pub fn new(
        setup: NetSetup,
        cancel: Arc<AtomicBool>,
        memory: u64,
        http_proxy: Option<qhttp::Config>,
    ) -> anyhow::Result<GuestNet> {
        let budget = usize::try_from(memory).unwrap_or(usize::MAX);
        let now =
            http_proxy.is_some() || !matches!(setup, NetSetup::Loopback | NetSetup::NewNamespace);
        let live = if now {
            Some(
                Live::start(&setup, &cancel, budget, http_proxy.as_ref())
                    .context("starting the container's network")?,
            )
        } else {
            None
        };
        Ok(GuestNet {
            setup,
            cancel,
            budget,
            http_proxy,
            socks: Vec::new(),
            live,
            fast: None,
        })
    }

    /// Starts the network now if it is not running yet: before the VMM confines itself, so
    /// the threads that serve the app never create threads or sockets (the filters forbid it).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.live.is_none() {
            self.live = Some(
                Live::start(
                    &self.setup,
                    &self.cancel,
                    self.budget,
                    self.http_proxy.as_ref(),
                )
                .context("starting the container's network")?,
            );
        }
        Ok(())
    }

    /// The pod interface this network took over, if any (for the keeper).
    pub fn takeover_mut(&mut self) -> Option<&mut Takeover> {
        self.live.as_mut().and_then(|l| l.takeover.as_mut())
    }

    /// Stacks the network thread's seccomp filter on qnet's stack thread.
    pub fn confine_stack(&self, mode: crate::jail::Mode) -> anyhow::Result<()> {
        let Some(stack) = self.live.as_ref().and_then(|l| l.stack.as_ref()) else {
            return Ok(());
        };
        stack
            .on_stack_thread(move || {
                crate::jail::confine_thread(crate::jail::ThreadKind::Network, mode)
                    .map_err(|e| format!("{e:#}"))
            })
            .context("the network stack ended before it was confined")?
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// The proxy this network runs, if any.
    pub fn http_proxy(&self) -> Option<&qhttp::Config> {
        self.http_proxy.as_ref()
    }

    /// The ring client, starting the network first if it is not running yet.
    fn client(&mut self) -> Result<Client, i64> {
        if let Err(e) = self.start() {
            tracing::error!("{e:#}");
            return Err(ENOBUFS);
        }
        match &self.live {
            Some(l) => Ok(l.client.clone()),
            None => Err(ENOBUFS),
        }
    }

    fn get(&mut self, s: SocketId) -> Result<&mut Sock, i64> {
        self.socks
            .get_mut(s as usize)
            .and_then(Option::as_mut)
            .ok_or(EBADF)
    }

    fn insert(&mut self, sock: Sock) -> Result<SocketId, i64> {
        let i = match self.socks.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.socks.len() < MAX_SOCKETS => {
                self.socks.push(None);
                self.socks.len() - 1
            }
            None => return Err(EMFILE),
        };
        self.socks[i] = Some(sock);
        Ok(i as SocketId)
    }

    pub fn socket(&mut self, stream: bool) -> Result<SocketId, i64> {
        self.insert(if stream {
            Sock::Fresh {
                bound: None,
                opts: FreshOpts::default(),
            }
        } else {
            Sock::FreshDgram
        })
    }

    /// The datagram socket behind `s`, bound to `at` (any port) if it was not yet.
    fn dgram(&mut self, s: SocketId, at: SocketAddr) -> Result<&mut UdpSocket, i64> {
        let client = self.client()?;
        let sock = self.get(s)?;
        if let Sock::FreshDgram = sock {
            *sock = Sock::Dgram(UdpSocket::bind(&client, at).map_err(errno)?);
        }
        match sock {
            Sock::Dgram(u) => Ok(u),
            _ => Err(EINVAL),
        }
    }

    pub fn sendto(
        &mut self,
        s: SocketId,
        buf: &[u8],
        ip: u32,
        port: u16,
        nonblocking: bool,
    ) -> Result<usize, i64> {
        if let Sock::Stream(_) = self.get(s)? {
            return self.send(s, buf, nonblocking);
        }
        let u = self.dgram(s, v4(0, 0))?;
        u.set_nonblocking(nonblocking).map_err(errno)?;
        u.send_to(buf, v4(ip, port)).map_err(errno)
    }

    pub fn recvfrom(
        &mut self,
        s: SocketId,
        buf: &mut [u8],
        nonblocking: bool,
    ) -> Result<(usize, Option<(u32, u16)>), i64> {
        if let Sock::Stream(_) = self.get(s)? {
            return Ok((self.recv(s, buf, nonblocking)?, None));
        }
        let u = self.dgram(s, v4(0, 0))?;
        u.set_nonblocking(nonblocking).map_err(errno)?;
        let (n, from) = u.recv_from(buf).map_err(errno)?;
        Ok((n, Some(split(from))))
    }

    pub fn bind(&mut self, s: SocketId, ip: u32, port: u16) -> Result<(), i64> {
        if let Sock::FreshDgram = self.get(s)? {
            return self.dgram(s, v4(ip, port)).map(|_| ());
        }
        match self.get(s)? {
            Sock::Fresh { bound, .. } if bound.is_none() => {
                *bound = Some(v4(ip, port));
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    pub fn listen(&mut self, s: SocketId, backlog: u32) -> Result<(), i64> {
        let client = self.client()?;
        let sock = self.get(s)?;
        let Sock::Fresh { bound, opts } = sock else {
            return match sock {
                Sock::Listener(_) => Ok(()),
                _ => Err(EINVAL),
            };
        };
        let (addr, opts) = (bound.unwrap_or(v4(0, 0)), *opts);
        let listener = TcpListener::bind(&client, addr, backlog).map_err(errno)?;
        // What connections it accepts inherit, as on Linux.
        give_options(opts, |level, name, v| listener.set_option(level, name, v))?;
        *sock = Sock::Listener(listener);
        Ok(())
    }

    pub fn accept(&mut self, s: SocketId, nonblocking: bool) -> Result<(SocketId, u32, u16), i64> {
        let Sock::Listener(l) = self.get(s)? else {
            return Err(EINVAL);
        };
        l.set_nonblocking(nonblocking).map_err(errno)?;
        let (stream, peer) = l.accept().map_err(errno)?;
        let (ip, port) = split(peer);
        Ok((self.insert(Sock::Stream(stream))?, ip, port))
    }

    pub fn connect(
        &mut self,
        s: SocketId,
        ip: u32,
        port: u16,
        nonblocking: bool,
    ) -> Result<(), i64> {
        const EINPROGRESS: i64 = 115;
        let client = self.client()?;
        let sock = self.get(s)?;
        match sock {
            Sock::Fresh { opts, .. } => {
                let opts = *opts;
                let stream = if nonblocking {
                    TcpStream::start_connect(&client, v4(ip, port))
                } else {
                    TcpStream::connect(&client, v4(ip, port))
                }
                .map_err(errno)?;
                give_options(opts, |level, name, v| stream.set_option(level, name, v))?;
                *sock = Sock::Stream(stream);
                if nonblocking {
                    return Err(EINPROGRESS);
                }
                Ok(())
            }
            Sock::Stream(_) => Err(106), // EISCONN
            Sock::Listener(_) => Err(EINVAL),
            Sock::FreshDgram | Sock::Dgram(_) => {
                let u = self.dgram(s, v4(0, 0))?;
                u.connect(v4(ip, port)).map_err(errno)
            }
        }
    }

    fn stream(&mut self, s: SocketId) -> Result<&mut TcpStream, i64> {
        match self.get(s)? {
            Sock::Stream(t) => Ok(t),
            Sock::Listener(_) => Err(EOPNOTSUPP),
            _ => Err(ENOTCONN),
        }
    }

    pub fn send(&mut self, s: SocketId, buf: &[u8], nonblocking: bool) -> Result<usize, i64> {
        if let Sock::Dgram(u) = self.get(s)? {
            u.set_nonblocking(nonblocking).map_err(errno)?;
            return u.send(buf).map_err(errno);
        }
        let t = self.stream(s)?;
        t.set_nonblocking(nonblocking).map_err(errno)?;
        t.write(buf).map_err(errno)
    }

    pub fn recv(&mut self, s: SocketId, buf: &mut [u8], nonblocking: bool) -> Result<usize, i64> {
        if let Sock::Dgram(u) = self.get(s)? {
            u.set_nonblocking(nonblocking).map_err(errno)?;
            return u.recv(buf).map_err(errno);
        }
        let t = self.stream(s)?;
        t.set_nonblocking(nonblocking).map_err(errno)?;
        t.read(buf).map_err(errno)
    }

    /// Receives up to `max` bytes of a stream, handing them to `copy` where they lie in the
    /// ring (see `TcpStream::read_raw`). None: `s` is not a stream (the caller receives
    /// through a buffer).
    pub fn recv_raw(
        &mut self,
        s: SocketId,
        max: usize,
        nonblocking: bool,
        copy: impl FnMut(*const u8, usize) -> usize,
    ) -> Option<Result<usize, i64>> {
        let Ok(Sock::Stream(t)) = self.get(s) else {
            return None;
        };
        Some(
            t.set_nonblocking(nonblocking)
                .and_then(|()| t.read_raw(max, copy))
                .map_err(errno),
        )
    }

    /// Sends up to `max` bytes on a stream that `fill` writes where they go in the ring (see
    /// `TcpStream::write_raw`). None: `s` is not a stream (the caller sends through a buffer).
    pub fn send_raw(
        &mut self,
        s: SocketId,
        max: usize,
        nonblocking: bool,
        fill: impl FnMut(*mut u8, usize) -> usize,
    ) -> Option<Result<usize, i64>> {
        let Ok(Sock::Stream(t)) = self.get(s) else {
            return None;
        };
        Some(
            t.set_nonblocking(nonblocking)
                .and_then(|()| t.write_raw(max, fill))
                .map_err(errno),
        )
    }

    pub fn shutdown(&mut self, s: SocketId, how: u32) -> Result<(), i64> {
        let how = match how {
            0 => Shutdown::Read,
            1 => Shutdown::Write,
            2 => Shutdown::Both,
            _ => return Err(EINVAL),
        };
        self.stream(s)?.shutdown(how).map_err(errno)
    }

    pub fn name(&mut self, s: SocketId, peer: bool) -> Result<(u32, u16), i64> {
        let addr = match self.get(s)? {
            Sock::Fresh { bound, .. } if !peer => bound.unwrap_or(v4(0, 0)),
            Sock::Fresh { .. } => return Err(ENOTCONN),
            Sock::Listener(l) if !peer => l.local_addr().map_err(errno)?,
            Sock::Listener(_) => return Err(ENOTCONN),
            Sock::Stream(t) if peer => t.peer_addr().map_err(errno)?,
            Sock::Stream(t) => t.local_addr().map_err(errno)?,
            Sock::FreshDgram if !peer => v4(0, 0),
            Sock::FreshDgram => return Err(ENOTCONN),
            Sock::Dgram(u) if peer => u.peer_addr().map_err(errno)?,
            Sock::Dgram(u) => u.local_addr().map_err(errno)?,
        };
        Ok(split(addr))
    }

    /// Bytes ready to read: a stream's received data; 0 for a listener or a fresh socket.
    /// (Linux gives a datagram socket's next datagram size; the ring does not say it.)
    pub fn pending(&mut self, s: SocketId) -> Result<usize, i64> {
        match self.get(s)? {
            Sock::Stream(t) => Ok(t.bytes_available()),
            Sock::Dgram(_) | Sock::FreshDgram => Err(EOPNOTSUPP),
            _ => Ok(0),
        }
    }

    /// setsockopt of an option the ring carries (`SO_REUSEADDR`, `SO_REUSEPORT`,
    /// `SO_KEEPALIVE`, `SO_RCVBUF`, `SO_SNDBUF`, `TCP_NODELAY`); a fresh stream keeps it for
    /// the ring socket that listen or connect makes.
    pub fn set_option(
        &mut self,
        s: SocketId,
        level: u32,
        name: u32,
        value: u64,
    ) -> Result<(), i64> {
        match self.get(s)? {
            Sock::Fresh { opts, .. } => {
                let on = value != 0;
                match (level, name) {
                    (IPPROTO_TCP, TCP_NODELAY) => opts.nodelay = on,
                    (SOL_SOCKET, SO_KEEPALIVE) => opts.keepalive = on,
                    (SOL_SOCKET, SO_REUSEADDR | SO_REUSEPORT) => opts.reuseaddr = on,
                    (SOL_SOCKET, SO_RCVBUF | SO_SNDBUF) => {}
                    _ => return Err(ENOPROTOOPT),
                }
                Ok(())
            }
            // Bound when first used: its options have nothing to change yet.
            Sock::FreshDgram => Ok(()),
            Sock::Stream(t) => t.set_option(level, name, value).map_err(errno),
            Sock::Listener(l) => l.set_option(level, name, value).map_err(errno),
            Sock::Dgram(u) => u.set_option(level, name, value).map_err(errno),
        }
    }

    /// getsockopt of an option the ring carries, and `SO_TYPE`, `SO_PROTOCOL`,
    /// `SO_ACCEPTCONN`.
    pub fn option(&mut self, s: SocketId, level: u32, name: u32) -> Result<u64, i64> {
        let (sndbuf, rcvbuf) = self
            .client()
            .map_or((0, 0), |c| (c.send_buffer_size(), c.recv_buffer_size()));
        let buffer = |name| if name == SO_SNDBUF { sndbuf } else { rcvbuf };
        let sock = self.get(s)?;
        let dgram = matches!(sock, Sock::Dgram(_) | Sock::FreshDgram);
        match (level, name) {
            (SOL_SOCKET, SO_TYPE) => return Ok(if dgram { 2 } else { 1 }),
            (SOL_SOCKET, SO_PROTOCOL) => return Ok(if dgram { 17 } else { 6 }),
            (SOL_SOCKET, SO_ACCEPTCONN) => return Ok(matches!(sock, Sock::Listener(_)).into()),
            _ => {}
        }
        match sock {
            Sock::Fresh { opts, .. } => match (level, name) {
                (IPPROTO_TCP, TCP_NODELAY) => Ok(opts.nodelay.into()),
                (SOL_SOCKET, SO_KEEPALIVE) => Ok(opts.keepalive.into()),
                (SOL_SOCKET, SO_REUSEADDR | SO_REUSEPORT) => Ok(opts.reuseaddr.into()),
                (SOL_SOCKET, SO_RCVBUF | SO_SNDBUF) => Ok(buffer(name).into()),
                _ => Err(ENOPROTOOPT),
            },
            Sock::FreshDgram => match (level, name) {
                (SOL_SOCKET, SO_RCVBUF | SO_SNDBUF) => Ok(buffer(name).into()),
                _ => Ok(0),
            },
            Sock::Stream(t) => t.option(level, name).map_err(errno),
            Sock::Listener(l) => l.option(level, name).map_err(errno),
            Sock::Dgram(u) => u.option(level, name).map_err(errno),
        }
    }

    /// SO_ERROR of a stream (0 for others or none).
    pub fn take_error(&mut self, s: SocketId) -> Result<i64, i64> {
        match self.get(s)? {
            Sock::Stream(t) => Ok(t.take_error().map_err(errno)?.map_or(0, errno)),
            Sock::Dgram(u) => Ok(u.take_error().map_err(errno)?.map_or(0, errno)),
            _ => Ok(0),
        }
    }

    /// Waits (up to `timeout_ms`; negative: no limit) until a socket is ready for what it
    /// wants, and reports every socket's state.
    pub fn poll(
        &mut self,
        socks: &[(SocketId, bool, bool)],
        timeout_ms: i64,
    ) -> Result<Vec<SocketReady>, i64> {
        // Slots to wait on; an unconnected socket is "writable and hung up" at once, as on Linux.
        let mut slots = Vec::new();
        let mut fresh = false;
        for &(s, want_in, want_out) in socks {
            let mut interest = READY_HUP | READY_ERR;
            if want_in {
                interest |= Interest::READABLE;
            }
            if want_out {
                interest |= Interest::WRITABLE;
            }
            match self.get(s)? {
                Sock::Stream(t) => slots.push((t.slot(), interest)),
                Sock::Listener(l) => slots.push((l.slot(), interest)),
                Sock::Dgram(u) => slots.push((u.slot(), interest)),
                Sock::Fresh { .. } | Sock::FreshDgram => {
                    fresh = true;
                    slots.push((u32::MAX, 0));
                }
            }
        }
        let timeout = if fresh {
            Some(std::time::Duration::ZERO)
        } else if timeout_ms < 0 {
            None
        } else {
            Some(std::time::Duration::from_millis(timeout_ms as u64))
        };
        let live: Vec<(u32, u32)> = slots
            .iter()
            .copied()
            .filter(|(s, _)| *s != u32::MAX)
            .collect();
        let bits = if live.is_empty() {
            Vec::new()
        } else {
            poll(&self.client()?, &live, timeout).map_err(errno)?
        };
        let mut bits = bits.into_iter();
        Ok(slots
            .iter()
            .map(|(slot, _)| {
                if *slot == u32::MAX {
                    return SocketReady {
                        writable: true,
                        hangup: true,
                        ..Default::default()
                    };
                }
                let b = bits.next().unwrap_or(0);
                SocketReady {
                    readable: b & (READY_IN | READY_RDHUP | READY_HUP | READY_ERR) != 0,
                    writable: b & READY_OUT != 0,
                    hangup: b & READY_HUP != 0,
                    error: b & READY_ERR != 0,
                }
            })
            .collect())
    }

    pub fn close(&mut self, s: SocketId) {
        if let (Some(fast), Some(Some(Sock::Stream(t)))) =
            (self.fast.as_mut(), self.socks.get(s as usize))
        {
            fast.clear_slot(t.slot());
        }
        if let Some(slot) = self.socks.get_mut(s as usize) {
            *slot = None;
        }
    }

    /// The ring client, if the network is up (for mapping its rings into the guest).
    pub fn live_client(&self) -> Option<Client> {
        self.live.as_ref().map(|l| l.client.clone())
    }

    /// How many receive rings the stub may read at once: half the socket-buffer budget, as
    /// the stack grants whole rings against (at least one).
    pub fn fast_ring_limit(&self, ring: u32) -> usize {
        (self.budget / 2 / ring.max(1) as usize).max(1)
    }

    /// The stub's socket reads, set up on this network's rings.
    pub fn set_fast_reads(&mut self, fast: FastReads) {
        self.fast = Some(fast);
    }

    /// Lets the stub read `fd` if `s` is a connected stream and the stub reads sockets
    /// (`blocking`: an empty ring traps at once, the read will wait).
    pub fn fast_read(&mut self, fd: u64, s: SocketId, blocking: bool) -> bool {
        let Some(fast) = self.fast.as_mut() else {
            return false;
        };
        match self.socks.get(s as usize) {
            Some(Some(Sock::Stream(t))) => fast.set(fd, t.slot(), blocking),
            _ => false,
        }
    }

    /// `fd` no longer reads through the stub.
    pub fn fast_forget(&mut self, fd: u64) {
        if let Some(fast) = self.fast.as_mut() {
            fast.clear(fd);
        }
    }

    /// The stub read from `s`'s ring (see `TcpStream::rx_consumed_elsewhere`).
    pub fn read_done(&mut self, s: SocketId) {
        if let Some(Some(Sock::Stream(t))) = self.socks.get(s as usize) {
            t.rx_consumed_elsewhere();
        }
    }

    /// The stub wrote into `s`'s transmit ring (see `TcpStream::tx_published_elsewhere`).
    pub fn write_done(&mut self, s: SocketId) {
        if let Some(Some(Sock::Stream(t))) = self.socks.get(s as usize) {
            t.tx_published_elsewhere();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qnet_netns::Ipv4Net;

    fn net(s: &str) -> Ipv4Net {
        let (a, p) = s.split_once('/').unwrap();
        Ipv4Net {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn link(addr: &str) -> Link {
        Link {
            index: 2,
            name: "eth0".into(),
            mac: Some([0x0a, 0x58, 0x0a, 0x00, 0x00, 0x05]),
            mtu: 1450,
            gso_max_size: Some(65536),
            up: true,
            loopback: false,
            addrs: vec![net(addr)],
            alias: None,
        }
    }

    fn route(dst: &str, gw: Option<&str>) -> Route {
        Route {
            dst: net(dst),
            gateway: gw.map(|g| g.parse().unwrap()),
            oif: Some(2),
        }
    }

    #[test]
    fn a_bridge_pod_keeps_its_subnet_on_link() {
        let routes = [
            route("0.0.0.0/0", Some("10.0.0.1")),
            route("10.0.0.0/24", None),
        ];
        let cfg =
            pod_stack_config(&link("10.0.0.5/24"), &routes.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(cfg.addr.to_string(), "10.0.0.5/24");
        assert_eq!(cfg.gateway, Some("10.0.0.1".parse().unwrap()));
        assert!(cfg.routes.is_empty());
        assert_eq!(cfg.mac.0, [0x0a, 0x58, 0x0a, 0x00, 0x00, 0x05]);
        assert_eq!(cfg.mtu, 1450);
        assert_eq!(cfg.gso_max, 65535, "below a veth's 64 KiB gso_max_size");
        let small = Link {
            gso_max_size: Some(16384),
            ..link("10.0.0.5/24")
        };
        let cfg = pod_stack_config(&small, &routes.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(cfg.gso_max, 16383);
    }

    #[test]
    fn a_ptp_or_calico_pod_sends_everything_through_its_gateway() {
        // ptp: the subnet is routed through the gateway, which is a link-scope /32.
        let routes = [
            route("0.0.0.0/0", Some("10.0.0.1")),
            route("10.0.0.0/24", Some("10.0.0.1")),
            route("10.0.0.1/32", None),
        ];
        let cfg =
            pod_stack_config(&link("10.0.0.5/24"), &routes.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(cfg.addr.to_string(), "10.0.0.5/32");
        assert_eq!(cfg.routes.len(), 1);
        // Calico: a /32 address and a gateway outside every subnet.
        let routes = [
            route("169.254.1.1/32", None),
            route("0.0.0.0/0", Some("169.254.1.1")),
        ];
        let cfg =
            pod_stack_config(&link("192.168.7.9/32"), &routes.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(cfg.addr.to_string(), "192.168.7.9/32");
        assert_eq!(cfg.gateway, Some("169.254.1.1".parse().unwrap()));
    }

    #[test]
    fn an_interface_without_an_address_is_an_error() {
        let mut l = link("10.0.0.5/24");
        l.addrs.clear();
        let e = pod_stack_config(&l, &[]).unwrap_err();
        assert!(e.to_string().contains("no IPv4 address"), "{e}");
    }
}
