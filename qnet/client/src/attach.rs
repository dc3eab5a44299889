//! The attach handshake on the stack's Unix socket.
//!
//! The client sends [`Hello`]; the stack answers with [`Welcome`] and two descriptors: the
//! region's memfd and the stack's doorbell eventfd. Both messages are fixed-size, little-endian.

use qnet_ring::{MAGIC, VERSION};

/// Client -> stack: 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub magic: u32,
    pub version: u32,
}

/// Stack -> client: 16 bytes, sent with `[memfd, doorbell]`. A `version` other than the
/// client's means the stack refused (no descriptors follow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub magic: u32,
    pub version: u32,
    pub region_size: u64,
}

impl Hello {
    pub const LEN: usize = 8;

    pub fn current() -> Self {
        Hello {
            magic: MAGIC,
            version: VERSION,
        }
    }

    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..].copy_from_slice(&self.version.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; 8]) -> Self {
        Hello {
            magic: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            version: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

impl Welcome {
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..].copy_from_slice(&self.region_size.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; 16]) -> Self {
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[8..]);
        Welcome {
            magic: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            version: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            region_size: u64::from_le_bytes(size),
        }
    }
}
