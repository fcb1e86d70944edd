//! Message ids: the id itself says where the message lives, so a lookup by id is a
//! single read with no index.
//!
//! ```text
//!  16 bytes, printed as 32 upper-case hex digits
//!  +----------------+--------------------------+----------------+
//!  | broker_id u32  | physical_offset u64      | crc32c u32     |
//!  +----------------+--------------------------+----------------+
//! ```
//! The CRC of the record makes a mistyped or forged id fail instead of returning a
//! different message.

use std::fmt;
use std::str::FromStr;

use super::error::StoreError;

/// Identifies one stored message across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub broker_id: u32,
    pub physical_offset: u64,
    pub crc: u32,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:08X}{:016X}{:08X}",
            self.broker_id, self.physical_offset, self.crc
        )
    }
}

impl FromStr for MessageId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| StoreError::InvalidMessageId {
            id: s.to_string(),
            reason: reason.to_string(),
        };
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("expected 32 hexadecimal digits"));
        }
        let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&s[r], 16);
        Ok(MessageId {
            broker_id: hex(0..8).map_err(|_| bad("bad broker id"))? as u32,
            physical_offset: hex(8..24).map_err(|_| bad("bad offset"))?,
            crc: hex(24..32).map_err(|_| bad("bad checksum"))? as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[test]
    fn round_trips_through_text() {
        let id = MessageId {
            broker_id: 7,
            physical_offset: 0x1234_5678_9ABC,
            crc: 0xDEAD_BEEF,
        };
        let text = id.to_string();
        assert_eq!(text, "000000070000123456789ABCDEADBEEF");
        assert_eq!(text.parse::<MessageId>().unwrap(), id);
        assert_eq!(text.to_lowercase().parse::<MessageId>().unwrap(), id);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in ["", "xyz", &"0".repeat(31), &"G".repeat(32), &"0".repeat(33)] {
            let err = bad.parse::<MessageId>().unwrap_err();
            assert_eq!(err.code(), Reason::InvalidMessageId);
        }
    }
}
