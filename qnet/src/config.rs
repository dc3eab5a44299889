//! Stack configuration: addresses, link parameters, buffer sizes, and their validation.
//!
//! Every value a user types is checked here, so a bad configuration is one clear error before any
//! device or socket exists.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

/// A configuration value that cannot work, with the reason.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("address {0:?} needs a prefix length, like 10.0.0.2/24")]
    MissingPrefix(String),
    #[error("invalid IPv4 address {0:?}")]
    BadAddress(String),
    #[error("invalid prefix length in {0:?} (0-32)")]
    BadPrefix(String),
    #[error("invalid MAC address {0:?} (expected six hex bytes like 02:00:00:00:00:01, unicast)")]
    BadMac(String),
    #[error("MTU {0} out of range (576-65535)")]
    BadMtu(u32),
    #[error("gateway {gateway} is not inside {cidr} (only a /32 address has gateways outside its subnet, on-link)")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, cidr: String },
    #[error("at most {max} routes are supported, {count} given")]
    TooManyRoutes { count: usize, max: usize },
    #[error("{name} {value} out of range ({range})")]
    OutOfRange {
        name: &'static str,
        value: u64,
        range: &'static str,
    },
}

/// An IPv4 address with its prefix length, as `ip addr` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        };
        u32::from(self.addr) & mask == u32::from(ip) & mask
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| ConfigError::MissingPrefix(s.to_string()))?;
        let addr = addr
            .parse()
            .map_err(|_| ConfigError::BadAddress(s.to_string()))?;
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| ConfigError::BadPrefix(s.to_string()))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() || out[0] & 1 != 0 || out == [0; 6] {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A route through a gateway on the link, as `ip route add DST via GW` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Cidr,
    pub via: Ipv4Addr,
}

/// Most routes besides the default one (smoltcp's route table is fixed-size).
pub const MAX_ROUTES: usize = 15;

/// Everything the stack needs to serve one interface.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The stack's own address on the link.
    pub addr: Ipv4Cidr,
    /// The default route's gateway.
    pub gateway: Option<Ipv4Addr>,
    /// More specific routes through gateways (a CNI plugin may install several).
    pub routes: Vec<Route>,
    /// Answer 127.0.0.0/8 inside the stack, as every Linux network namespace does.
    pub loopback: bool,
    pub mac: Mac,
    /// IP MTU of the link.
    pub mtu: u32,
    /// Largest frame (Ethernet header included) the stack hands the TAP for segmentation
    /// offload: below the `gso_max_size` of the link the frames leave by, or the kernel
    /// segments them in software (qvisor sets it from the pod interface it takes over).
    pub gso_max: u32,
    /// Per-socket smoltcp buffers. The receive buffer sets the advertised window (with window
    /// scaling), so it bounds throughput at a given round-trip time.
    pub tcp_rx_buf: usize,
    pub tcp_tx_buf: usize,
    /// Datagram socket buffers (payload bytes; 64 packets of metadata each).
    pub udp_buf: usize,
    /// Per-client ring geometry: slots, and each slot's transmit and receive byte rings. A
    /// connected TCP socket receives straight into its receive ring, so that ring is its
    /// advertised window: 4 MiB by default, where Linux's receive autotuning tops out at 6 MiB
    /// (a 1 MiB window held a BBR sender at 0.41-0.49x of the kernel path, 4 MiB at 0.49-0.52x).
    /// Sending goes through smoltcp's send buffer, so a 1 MiB transmit ring is enough.
    pub ring_slots: u32,
    pub ring_tx_buf: u32,
    pub ring_rx_buf: u32,
    /// Delayed-ACK timeout; smoltcp's 10 ms default is made for slow links.
    pub ack_delay: Duration,
    /// How long the service loop keeps polling after its last work before it sleeps.
    pub busy_poll: Duration,
    /// Stack-wide cap on TCP/UDP sockets, so one client cannot exhaust host memory.
    pub max_sockets: usize,
    /// Stack-wide bytes of socket buffers. Past half of it new TCP sockets get
    /// [`MIN_TCP_BUF`] buffers instead of the configured ones; past all of it, ENOBUFS. qvisor
    /// sets it to the container's memory limit, so buffers are charged to the container.
    pub buffer_budget: usize,
}

/// TCP buffer per direction for sockets created once half the buffer budget is in use.
pub const MIN_TCP_BUF: usize = 64 << 10;

impl StackConfig {
    /// A configuration with defaults sized for a data-centre link.
    pub fn new(addr: Ipv4Cidr) -> Self {
        StackConfig {
            addr,
            gateway: None,
            routes: Vec::new(),
            loopback: true,
            mac: Mac([0x02, 0x51, 0x4e, 0x00, 0x00, 0x01]),
            mtu: 1500,
            gso_max: crate::phy::uring::GSO_MAX as u32,
            tcp_rx_buf: 1 << 20,
            tcp_tx_buf: 1 << 20,
            udp_buf: 256 << 10,
            ring_slots: 2048,
            ring_tx_buf: 2 << 20,
            ring_rx_buf: 4 << 20,
            ack_delay: Duration::from_millis(1),
            busy_poll: Duration::from_micros(50),
            max_sockets: 16384,
            buffer_budget: 8 << 30,
        }
    }

    /// Checks the whole configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(576..=65535).contains(&self.mtu) {
            return Err(ConfigError::BadMtu(self.mtu));
        }
        let gateways = self
            .gateway
            .into_iter()
            .chain(self.routes.iter().map(|r| r.via));
        for gw in gateways {
            // A /32 address (Calico, or a point-to-point link) reaches its gateway on-link.
            if self.addr.prefix != 32 && !self.addr.contains(gw) {
                return Err(ConfigError::GatewayOutsideSubnet {
                    gateway: gw,
                    cidr: self.addr.to_string(),
                });
            }
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(ConfigError::TooManyRoutes {
                count: self.routes.len(),
                max: MAX_ROUTES,
            });
        }
        let range = |name, value: u64, lo: u64, hi: u64, range| {
            if value < lo || value > hi {
                Err(ConfigError::OutOfRange { name, value, range })
            } else {
                Ok(())
            }
        };
        range(
            "tcp receive buffer",
            self.tcp_rx_buf as u64,
            4096,
            1 << 30,
            "4 KiB-1 GiB",
        )?;
        range(
            "tcp send buffer",
            self.tcp_tx_buf as u64,
            4096,
            1 << 30,
            "4 KiB-1 GiB",
        )?;
        range(
            "udp buffer",
            self.udp_buf as u64,
            65536,
            1 << 30,
            "64 KiB-1 GiB",
        )?;
        range("ring slots", self.ring_slots as u64, 1, 65536, "1-65536")?;
        for (name, size) in [
            ("ring transmit buffer", self.ring_tx_buf),
            ("ring receive buffer", self.ring_rx_buf),
        ] {
            if !size.is_power_of_two() {
                return Err(ConfigError::OutOfRange {
                    name,
                    value: size as u64,
                    range: "a power of two",
                });
            }
            range(name, size as u64, 4096, 1 << 26, "4 KiB-64 MiB")?;
        }
        range(
            "socket buffer budget",
            self.buffer_budget as u64,
            4 * MIN_TCP_BUF as u64,
            1 << 40,
            "256 KiB-1 TiB",
        )?;
        range(
            "max sockets",
            self.max_sockets as u64,
            1,
            1 << 20,
            "1-1048576",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidr_and_rejects_missing_prefix() {
        let c: Ipv4Cidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!(c.addr, Ipv4Addr::new(10, 1, 2, 3));
        assert!(c.contains(Ipv4Addr::new(10, 1, 2, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 1, 3, 1)));
        assert_eq!(
            "10.1.2.3".parse::<Ipv4Cidr>(),
            Err(ConfigError::MissingPrefix("10.1.2.3".into()))
        );
        assert!("10.1.2.3/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.1.2/8".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn parses_mac() {
        let m: Mac = "02:aa:bb:cc:dd:0e".parse().unwrap();
        assert_eq!(m.to_string(), "02:aa:bb:cc:dd:0e");
        assert!("01:aa:bb:cc:dd:0e".parse::<Mac>().is_err(), "multicast");
        assert!("02:aa:bb:cc:dd".parse::<Mac>().is_err());
        assert!("02:aa:bb:cc:dd:0e:ff".parse::<Mac>().is_err());
    }

    #[test]
    fn validates_mtu_and_gateway() {
        let mut c = StackConfig::new("10.0.0.2/24".parse().unwrap());
        assert!(c.validate().is_ok());
        c.mtu = 100;
        assert_eq!(c.validate(), Err(ConfigError::BadMtu(100)));
        c.mtu = 1500;
        c.gateway = Some(Ipv4Addr::new(10, 0, 1, 1));
        assert!(c.validate().is_err());
        // A /32 address reaches any gateway on-link.
        c.addr = "10.0.0.2/32".parse().unwrap();
        assert!(c.validate().is_ok());
        c.routes = vec![
            Route {
                dst: "10.9.0.0/16".parse().unwrap(),
                via: Ipv4Addr::new(10, 0, 1, 1),
            };
            MAX_ROUTES + 1
        ];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyRoutes { .. })
        ));
    }
}
