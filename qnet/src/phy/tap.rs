//! Creating and configuring a TAP device, optionally inside a named network namespace.
//!
//! The namespace switch happens on a short-lived helper thread, so no thread of the stack ever
//! changes namespace; the TAP file descriptor keeps working from the original one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use thiserror::Error;

use crate::config::Ipv4Cidr;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
/// GSO over UDP tunnels (Linux 6.17): the TAP passes VXLAN packets of up to 64 KiB whole.
const TUN_F_UDP_TUNNEL_GSO: libc::c_ulong = 0x80;

/// Size of `struct virtio_net_hdr` we ask the TAP for.
pub const VNET_HDR_LEN: usize = 10;
/// Size of `struct virtio_net_hdr_v1_hash_tunnel`, the header a TAP with UDP tunnel offload
/// uses: the plain header, `num_buffers`, the hash fields, and the outer transport and inner
/// network header offsets (little-endian u16s at 20 and 22).
pub const VNET_TUNNEL_HDR_LEN: usize = 24;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("network namespace {name:?} not found ({path})")]
    NoNamespace {
        name: String,
        path: String,
        source: io::Error,
    },
    #[error("entering network namespace {name:?}")]
    Setns { name: String, source: io::Error },
    #[error("interface name {0:?} is invalid (1-15 bytes, no '/' or whitespace)")]
    BadName(String),
    #[error("{what} on TAP {name}")]
    Ioctl {
        what: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("opening /dev/net/tun")]
    OpenTun(#[source] io::Error),
}

/// How to create the TAP.
#[derive(Clone, Debug)]
pub struct TapOptions {
    pub name: String,
    /// A namespace created by `ip netns add NAME` (a file under /run/netns), or `None` for the
    /// caller's namespace.
    pub netns: Option<String>,
    /// IP MTU set on the kernel side.
    pub mtu: u32,
    /// Address given to the kernel side of the TAP, if any (the peer the stack talks to).
    pub peer_addr: Option<Ipv4Cidr>,
    /// Checksum and TSO offloads: the kernel side then sends partial checksums and 64 KiB TCP
    /// frames, described in the virtio-net header. Off, every frame is complete and fits the MTU.
    pub offloads: bool,
    /// The device outlives its file descriptor, so a restarted daemon attaches to it again and
    /// the namespace never sees it vanish. [`Tap::set_persist`] undoes it.
    pub persist: bool,
}

/// An open TAP with a virtio-net header and checksum/TSO offloads enabled.
#[derive(Debug)]
pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(|c: char| c == '/' || c.is_whitespace() || c == '\0')
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }
    fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }
    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
    fn set_ipv4(&mut self, ip: std::net::Ipv4Addr) {
        // struct sockaddr_in: family, port, address.
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&ip.octets());
    }
}

fn ioctl(fd: &impl AsRawFd, req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is the pointed-to type (an IfReq or an
    // integer passed by value), valid for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Creates (or attaches to) the TAP named in `opts`, inside its namespace.
    pub fn create(opts: &TapOptions) -> Result<Tap, TapError> {
        if !valid_ifname(&opts.name) {
            return Err(TapError::BadName(opts.name.clone()));
        }
        let ns = match &opts.netns {
            Some(name) => {
                let path = if name.contains('/') {
                    PathBuf::from(name)
                } else {
                    PathBuf::from("/run/netns").join(name)
                };
                let file = File::open(&path).map_err(|source| TapError::NoNamespace {
                    name: name.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                Some((name.clone(), file))
            }
            None => None,
        };
        let opts = opts.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                if let Some((name, file)) = &ns {
                    // SAFETY: setns on this helper thread only; the fd is a valid namespace file.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                        return Err(TapError::Setns {
                            name: name.clone(),
                            source: io::Error::last_os_error(),
                        });
                    }
                }
                Self::create_here(&opts)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(TapError::OpenTun(io::Error::other(
                    "TAP helper thread panicked",
                )))
            })
        })
    }

    fn create_here(opts: &TapOptions) -> Result<Tap, TapError> {
        let name = opts.name.clone();
        let err = |what| {
            let name = name.clone();
            move |source| TapError::Ioctl { what, name, source }
        };
        // Opened blocking; the stack's device (uring.rs) makes it non-blocking: its thread
        // reads frames itself and must find the queue empty, not wait.
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new(&opts.name);
        req.set_short(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
        // A TAP of the same name whose last user just exited is torn down asynchronously and
        // reports EBUSY meanwhile: wait for it a little.
        let mut tries = 0;
        loop {
            match ioctl(&tun, TUNSETIFF, &mut req as *mut _ as *mut _) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.map_err(err("TUNSETIFF"))?,
            }
        }
        let mut hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl(&tun, TUNSETVNETHDRSZ, &mut hdr_len as *mut _ as *mut _)
            .map_err(err("TUNSETVNETHDRSZ"))?;
        let offloads = if opts.offloads {
            TUN_F_CSUM | TUN_F_TSO4
        } else {
            0
        };
        ioctl(&tun, TUNSETOFFLOAD, offloads as *mut _).map_err(err("TUNSETOFFLOAD"))?;

        // Kernel-side configuration goes through an ordinary socket in this namespace.
        // SAFETY: plain socket(2); the result is checked and owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(err("socket")(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::new(&opts.name);
        req.set_int(opts.mtu as libc::c_int);
        ioctl(&sock, libc::SIOCSIFMTU, &mut req as *mut _ as *mut _).map_err(err("SIOCSIFMTU"))?;
        if let Some(peer) = opts.peer_addr {
            let mut req = IfReq::new(&opts.name);
            req.set_ipv4(peer.addr);
            ioctl(&sock, libc::SIOCSIFADDR, &mut req as *mut _ as *mut _)
                .map_err(err("SIOCSIFADDR"))?;
            let mask = if peer.prefix == 0 {
                0
            } else {
                u32::MAX << (32 - peer.prefix)
            };
            let mut req = IfReq::new(&opts.name);
            req.set_ipv4(mask.into());
            ioctl(&sock, libc::SIOCSIFNETMASK, &mut req as *mut _ as *mut _)
                .map_err(err("SIOCSIFNETMASK"))?;
        }
        let mut req = IfReq::new(&opts.name);
        ioctl(&sock, libc::SIOCGIFFLAGS, &mut req as *mut _ as *mut _)
            .map_err(err("SIOCGIFFLAGS"))?;
        let flags = i16::from_ne_bytes([req.data[0], req.data[1]]);
        req.set_short(flags | libc::IFF_UP as libc::c_short);
        ioctl(&sock, libc::SIOCSIFFLAGS, &mut req as *mut _ as *mut _)
            .map_err(err("SIOCSIFFLAGS"))?;
        let tap = Tap {
            fd: tun.into(),
            name: opts.name.clone(),
        };
        if opts.persist {
            tap.set_persist(true)?;
        }
        Ok(tap)
    }
}

impl Tap {
    /// Switches the TAP to whole UDP tunnel packets: a 24-byte header
    /// ([`VNET_TUNNEL_HDR_LEN`]) and GSO over UDP tunnels on top of checksum and TSO offloads.
    /// Fails with EINVAL on kernels before 6.17, which do not know the offload.
    pub fn enable_udp_tunnel_offload(&self) -> Result<(), TapError> {
        let err = |what| {
            let name = self.name.clone();
            move |source| TapError::Ioctl { what, name, source }
        };
        let mut hdr_len = VNET_TUNNEL_HDR_LEN as libc::c_int;
        ioctl(&self.fd, TUNSETVNETHDRSZ, &mut hdr_len as *mut _ as *mut _)
            .map_err(err("TUNSETVNETHDRSZ"))?;
        let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_UDP_TUNNEL_GSO;
        ioctl(&self.fd, TUNSETOFFLOAD, offloads as *mut _).map_err(err("TUNSETOFFLOAD"))
    }

    /// The device's MAC address, asked of the kernel in the calling thread's namespace (which
    /// must be the device's).
    pub fn mac(&self) -> Result<[u8; 6], TapError> {
        let err = |what| {
            let name = self.name.clone();
            move |source| TapError::Ioctl { what, name, source }
        };
        // SAFETY: plain socket(2); the result is checked and owned at once.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(err("socket")(io::Error::last_os_error()));
        }
        // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq::new(&self.name);
        ioctl(&sock, libc::SIOCGIFHWADDR, &mut req as *mut _ as *mut _)
            .map_err(err("SIOCGIFHWADDR"))?;
        // struct sockaddr: the family, then the address.
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&req.data[2..8]);
        Ok(mac)
    }

    /// Makes the device persistent or not; a device that is not goes away with its last
    /// descriptor.
    pub fn set_persist(&self, persist: bool) -> Result<(), TapError> {
        ioctl(&self.fd, TUNSETPERSIST, persist as usize as *mut _).map_err(|source| {
            TapError::Ioctl {
                what: "TUNSETPERSIST",
                name: self.name.clone(),
                source,
            }
        })
    }
}

/// Checks that `name` is a usable interface name (for configuration errors up front).
pub fn check_ifname(name: &str) -> Result<(), TapError> {
    if valid_ifname(name) {
        Ok(())
    } else {
        Err(TapError::BadName(name.to_string()))
    }
}
