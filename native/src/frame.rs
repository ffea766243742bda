//! The yamux frame header (hashicorp/yamux `spec.md`).
//!
//! ```text
//! version:u8 (0) | type:u8 | flags:u16 | stream_id:u32 | length:u32     (big-endian, 12 bytes)
//! ```

use crate::error::Error;

/// Length of every frame header.
pub const HEADER_LEN: usize = 12;
/// The only protocol version.
pub const PROTO_VERSION: u8 = 0;
/// The spec's initial per-stream window (256 KiB), known to both sides without negotiation.
pub const DEFAULT_WINDOW: u32 = 256 * 1024;

/// The four frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Data = 0,
    WindowUpdate = 1,
    Ping = 2,
    GoAway = 3,
}

impl FrameType {
    /// The type for a wire byte, `None` if unknown.
    pub fn from_u8(v: u8) -> Option<FrameType> {
        match v {
            0 => Some(FrameType::Data),
            1 => Some(FrameType::WindowUpdate),
            2 => Some(FrameType::Ping),
            3 => Some(FrameType::GoAway),
            _ => None,
        }
    }
}

/// Header flags. Unknown bits are carried (so a header round-trips) but ignored by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    pub const SYN: Flags = Flags(1);
    pub const ACK: Flags = Flags(2);
    pub const FIN: Flags = Flags(4);
    pub const RST: Flags = Flags(8);

    pub const fn from_bits(bits: u16) -> Flags {
        Flags(bits)
    }
    pub const fn bits(self) -> u16 {
        self.0
    }
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

impl core::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub typ: FrameType,
    pub flags: Flags,
    pub stream_id: u32,
    /// Payload length (Data), credit (WindowUpdate), opaque value (Ping) or code (GoAway).
    pub length: u32,
}

impl Header {
    pub const fn new(typ: FrameType, flags: Flags, stream_id: u32, length: u32) -> Header {
        Header {
            typ,
            flags,
            stream_id,
            length,
        }
    }

    /// The 12 wire bytes.
    #[inline]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = PROTO_VERSION;
        b[1] = self.typ as u8;
        b[2..4].copy_from_slice(&self.flags.bits().to_be_bytes());
        b[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Append the 12 wire bytes to `out`.
    #[inline]
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.encode());
    }

    /// Decode a header. Fails on a nonzero version or an unknown type.
    #[inline]
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, Error> {
        if b[0] != PROTO_VERSION {
            return Err(Error::InvalidVersion(b[0]));
        }
        let typ = FrameType::from_u8(b[1]).ok_or(Error::UnknownFrameType(b[1]))?;
        Ok(Header {
            typ,
            flags: Flags(u16::from_be_bytes([b[2], b[3]])),
            stream_id: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            length: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }

    /// Decode from the first 12 bytes of `b` (`None` if shorter).
    pub fn decode_prefix(b: &[u8]) -> Option<Result<Header, Error>> {
        let arr: &[u8; HEADER_LEN] = b.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header::decode(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_big_endian_on_the_wire() {
        let h = Header::new(
            FrameType::WindowUpdate,
            Flags::SYN | Flags::ACK,
            0x0102_0304,
            0x0a0b_0c0d,
        );
        assert_eq!(h.encode(), [0, 1, 0, 3, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn nonzero_version_is_invalid_version() {
        let mut b = Header::new(FrameType::Data, Flags::NONE, 1, 0).encode();
        b[0] = 1;
        assert_eq!(Header::decode(&b), Err(Error::InvalidVersion(1)));
    }

    #[test]
    fn unknown_type_is_unknown_frame_type() {
        let mut b = Header::new(FrameType::Data, Flags::NONE, 1, 0).encode();
        b[1] = 4;
        assert_eq!(Header::decode(&b), Err(Error::UnknownFrameType(4)));
    }

    #[test]
    fn flags_contains_and_union() {
        let f = Flags::SYN | Flags::FIN;
        assert!(f.contains(Flags::SYN) && f.contains(Flags::FIN));
        assert!(!f.contains(Flags::ACK));
        assert_eq!(f.bits(), 5);
        assert!(Flags::NONE.is_empty());
    }

    #[test]
    fn decode_prefix_needs_twelve_bytes() {
        assert!(Header::decode_prefix(&[0u8; 11]).is_none());
        assert!(Header::decode_prefix(&[0u8; 12]).unwrap().is_ok());
    }
}
