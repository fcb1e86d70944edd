//! The commit-log record: encoding, validation and decoding.
//!
//! Every record is self-describing and checksummed, so the commit log alone is
//! enough to rebuild every consume queue and index. All integers are little-endian.
//!
//! ```text
//!  0             4             8             12            16
//!  +-------------+-------------+-------------+-------------+
//!  | total_size  | magic       | crc32c      | flags       |   crc32c covers bytes
//!  | u32         | 0xDD0AC0DE  | u32         | u32         |   [12, total_size)
//!  +-------------+-------------+-------------+-------------+
//!  | queue_id u32| body_len u32| queue_offset u64          |
//!  +-------------+-------------+---------------------------+
//!  | physical_offset u64       | born_timestamp i64 (ms)   |
//!  +---------------------------+---------------------------+
//!  | store_timestamp i64 (ms)  | topic_len   | tag_len     |
//!  |                           | u32         | u32         |
//!  +-------------+-------------+-------------+-------------+
//!  | keys_len u32| props_len u32   (72 bytes of header end here)
//!  +-------------+-------------+-----------------------------------------+
//!  | topic (topic_len) | tag (tag_len) | keys | props | body (body_len) |
//!  +------------------------------------------------------------------- +
//!
//!  keys  = repeated [len u16][utf-8 key]
//!  props = repeated [klen u16][utf-8 key][vlen u16][utf-8 value]
//!
//!  flags: bits 0-3 compression codec, 4-7 message type, 8-11 transaction state,
//!         12-31 reserved (zero).
//! ```
//!
//! When a record does not fit in the rest of a segment, a filler takes the rest:
//!
//! ```text
//!  +-------------+-------------+---------- zeros ----------+
//!  | total_size  | 0xDD0AB1A7  |  (rest of the segment)    |
//!  +-------------+-------------+---------------------------+
//! ```
//! A `total_size` of zero marks the end of written data (segments are zero-filled).

use bytes::Bytes;

use super::error::{Result, StoreError};

/// Magic of a message record.
pub const RECORD_MAGIC: u32 = 0xDD0A_C0DE;
/// Magic of a segment-end filler.
pub const BLANK_MAGIC: u32 = 0xDD0A_B1A7;
/// Size of the fixed record header.
pub const RECORD_HEADER_SIZE: usize = 72;
/// Size of a filler header; a segment always keeps room for one.
pub const BLANK_HEADER_SIZE: usize = 8;

const OFF_TOTAL: usize = 0;
const OFF_MAGIC: usize = 4;
const OFF_CRC: usize = 8;
const OFF_FLAGS: usize = 12;
const OFF_QUEUE_ID: usize = 16;
const OFF_BODY_LEN: usize = 20;
const OFF_QUEUE_OFFSET: usize = 24;
const OFF_PHYSICAL: usize = 32;
const OFF_BORN: usize = 40;
const OFF_STORE: usize = 48;
const OFF_TOPIC_LEN: usize = 56;
const OFF_TAG_LEN: usize = 60;
const OFF_KEYS_LEN: usize = 64;
const OFF_PROPS_LEN: usize = 68;
/// Bytes covered by the CRC start here (everything after the CRC field).
const CRC_START: usize = OFF_FLAGS;

/// Longest topic name; see [`validate_topic_name`].
pub const MAX_TOPIC_LEN: usize = 127;

/// Compression codec of the body (bits 0-3 of the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Codec {
    #[default]
    None = 0,
    Zstd = 1,
}

/// Message type (bits 4-7 of the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum MessageType {
    #[default]
    Normal = 0,
    Fifo = 1,
    Delay = 2,
    Transaction = 3,
}

/// Transaction state (bits 8-11 of the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum TransactionState {
    #[default]
    None = 0,
    Prepared = 1,
    Committed = 2,
    RolledBack = 3,
}

/// The packed flags word of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordFlags(pub u32);

impl RecordFlags {
    pub fn new(codec: Codec, kind: MessageType, txn: TransactionState) -> Self {
        RecordFlags(codec as u32 | (kind as u32) << 4 | (txn as u32) << 8)
    }
    pub fn codec(self) -> Option<Codec> {
        match self.0 & 0xF {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
    pub fn message_type(self) -> Option<MessageType> {
        match (self.0 >> 4) & 0xF {
            0 => Some(MessageType::Normal),
            1 => Some(MessageType::Fifo),
            2 => Some(MessageType::Delay),
            3 => Some(MessageType::Transaction),
            _ => None,
        }
    }
    pub fn transaction_state(self) -> Option<TransactionState> {
        match (self.0 >> 8) & 0xF {
            0 => Some(TransactionState::None),
            1 => Some(TransactionState::Prepared),
            2 => Some(TransactionState::Committed),
            3 => Some(TransactionState::RolledBack),
            _ => None,
        }
    }
}

/// A message as a producer hands it to the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub queue_id: u32,
    pub flags: RecordFlags,
    /// Milliseconds since the Unix epoch at the producer.
    pub born_timestamp: i64,
    /// Empty means "no tag".
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
}

/// A stored record, as read back and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub born_timestamp: i64,
    pub store_timestamp: i64,
    pub flags: RecordFlags,
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
    /// The record's CRC32C; also the last part of its message id.
    pub crc: u32,
    /// Encoded size in the commit log.
    pub size: u32,
}

/// Topic names: 1 to 127 characters of `A-Z a-z 0-9 _ - . %`, not starting with `.`.
/// They become directory names, so the rule keeps them file-system safe.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason: String| {
        Err(StoreError::InvalidArgument {
            what: "topic name",
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return bad(format!(
            "{name:?} must be 1 to {MAX_TOPIC_LEN} characters long"
        ));
    }
    if name.starts_with('.') {
        return bad(format!("{name:?} must not start with '.'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '%')))
    {
        return bad(format!(
            "{name:?} contains {c:?}; allowed are A-Z a-z 0-9 _ - . %"
        ));
    }
    Ok(())
}

fn check_short(what: &'static str, s: &str) -> Result<()> {
    if s.len() > u16::MAX as usize {
        return Err(StoreError::InvalidArgument {
            what,
            reason: format!("{} bytes is longer than {} bytes", s.len(), u16::MAX),
        });
    }
    Ok(())
}

impl Message {
    /// The size of the encoded record: what `max_record_size` limits.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_SIZE
            + self.topic.len()
            + self.tag.len()
            + self.keys_len()
            + self.properties_len()
            + self.body.len()
    }

    /// Encoded keys: a u16 length and the bytes of each.
    fn keys_len(&self) -> usize {
        self.keys.iter().map(|k| 2 + k.len()).sum()
    }

    /// Encoded properties: u16 lengths and the bytes of each name and value.
    fn properties_len(&self) -> usize {
        self.properties
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum()
    }

    /// Encodes the record with zeroed store-assigned fields (queue offset, physical
    /// offset, store timestamp, CRC); the writer fills them in with [`seal`].
    pub fn encode(&self, max_record_size: u32) -> Result<Vec<u8>> {
        validate_topic_name(&self.topic)?;
        check_short("tag", &self.tag)?;
        let keys_len = self.keys_len();
        let props_len = self.properties_len();
        for k in &self.keys {
            check_short("key", k)?;
            if k.is_empty() {
                return Err(StoreError::InvalidArgument {
                    what: "key",
                    reason: "keys must not be empty".into(),
                });
            }
        }
        for (k, v) in &self.properties {
            check_short("property name", k)?;
            check_short("property value", v)?;
        }
        let total = self.encoded_len();
        if total > max_record_size as usize {
            return Err(StoreError::RecordTooLarge {
                size: total,
                max: max_record_size as usize,
            });
        }
        let mut buf = Vec::with_capacity(total);
        buf.extend_from_slice(&(total as u32).to_le_bytes());
        buf.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes()); // crc, sealed by the writer
        buf.extend_from_slice(&self.flags.0.to_le_bytes());
        buf.extend_from_slice(&self.queue_id.to_le_bytes());
        buf.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&0u64.to_le_bytes()); // queue offset
        buf.extend_from_slice(&0u64.to_le_bytes()); // physical offset
        buf.extend_from_slice(&self.born_timestamp.to_le_bytes());
        buf.extend_from_slice(&0i64.to_le_bytes()); // store timestamp
        buf.extend_from_slice(&(self.topic.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(self.tag.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(keys_len as u32).to_le_bytes());
        buf.extend_from_slice(&(props_len as u32).to_le_bytes());
        debug_assert_eq!(buf.len(), RECORD_HEADER_SIZE);
        buf.extend_from_slice(self.topic.as_bytes());
        buf.extend_from_slice(self.tag.as_bytes());
        for k in &self.keys {
            buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
            buf.extend_from_slice(k.as_bytes());
        }
        for (k, v) in &self.properties {
            buf.extend_from_slice(&(k.len() as u16).to_le_bytes());
            buf.extend_from_slice(k.as_bytes());
            buf.extend_from_slice(&(v.len() as u16).to_le_bytes());
            buf.extend_from_slice(v.as_bytes());
        }
        buf.extend_from_slice(&self.body);
        debug_assert_eq!(buf.len(), total);
        Ok(buf)
    }
}

/// Fills the store-assigned fields of an encoded record and computes its CRC.
/// Returns the CRC.
pub fn seal(buf: &mut [u8], queue_offset: u64, physical_offset: u64, store_timestamp: i64) -> u32 {
    buf[OFF_QUEUE_OFFSET..OFF_QUEUE_OFFSET + 8].copy_from_slice(&queue_offset.to_le_bytes());
    buf[OFF_PHYSICAL..OFF_PHYSICAL + 8].copy_from_slice(&physical_offset.to_le_bytes());
    buf[OFF_STORE..OFF_STORE + 8].copy_from_slice(&store_timestamp.to_le_bytes());
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// The header of a filler that takes the last `total` bytes of a segment.
pub fn blank_header(total: u32) -> [u8; BLANK_HEADER_SIZE] {
    let mut buf = [0u8; BLANK_HEADER_SIZE];
    buf[OFF_TOTAL..OFF_TOTAL + 4].copy_from_slice(&total.to_le_bytes());
    buf[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&BLANK_MAGIC.to_le_bytes());
    buf
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What the first bytes at a commit-log position say is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Zero-filled: the end of written data.
    End,
    /// A segment-end filler of this many bytes.
    Blank(u32),
    /// A record claiming this many bytes (not yet validated).
    Record(u32),
    /// Not a valid frame start.
    Garbage,
}

/// Classifies the 8-byte frame prefix at a position.
pub fn peek_frame(prefix: &[u8]) -> Frame {
    let total = u32_at(prefix, OFF_TOTAL);
    let magic = u32_at(prefix, OFF_MAGIC);
    match (total, magic) {
        (0, 0) => Frame::End,
        (t, BLANK_MAGIC) if t as usize >= BLANK_HEADER_SIZE => Frame::Blank(t),
        (t, RECORD_MAGIC) if t as usize > RECORD_HEADER_SIZE => Frame::Record(t),
        _ => Frame::Garbage,
    }
}

/// The fixed header fields needed to dispatch a record, readable even when its CRC
/// is wrong (used to keep consume-queue offsets aligned around corruption).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub total_size: u32,
    pub crc: u32,
    pub flags: RecordFlags,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub store_timestamp: i64,
}

/// Parses the fixed header of a buffer that holds at least [`RECORD_HEADER_SIZE`] bytes.
pub fn parse_header(buf: &[u8]) -> Header {
    Header {
        total_size: u32_at(buf, OFF_TOTAL),
        crc: u32_at(buf, OFF_CRC),
        flags: RecordFlags(u32_at(buf, OFF_FLAGS)),
        queue_id: u32_at(buf, OFF_QUEUE_ID),
        queue_offset: u64_at(buf, OFF_QUEUE_OFFSET),
        physical_offset: u64_at(buf, OFF_PHYSICAL),
        store_timestamp: u64_at(buf, OFF_STORE) as i64,
    }
}

/// A whole record validated in place: its header and borrowed sections (keys
/// and properties go to the callbacks of [`check_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    pub header: Header,
    pub born_timestamp: i64,
    pub topic: &'a str,
    pub tag: &'a str,
    pub body: &'a [u8],
}

/// Validates a whole record found at `physical_offset` (magic, size, CRC32C,
/// stored position, section lengths, UTF-8) without copying it, handing each
/// key and property to the callbacks in order.
pub fn check_with<'a>(
    buf: &'a [u8],
    physical_offset: u64,
    mut on_key: impl FnMut(&'a str),
    mut on_property: impl FnMut(&'a str, &'a str),
) -> Result<Checked<'a>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        offset: physical_offset,
        reason,
    };
    if buf.len() < RECORD_HEADER_SIZE {
        return Err(corrupt(format!(
            "{} bytes is shorter than a header",
            buf.len()
        )));
    }
    let header = parse_header(buf);
    if u32_at(buf, OFF_MAGIC) != RECORD_MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    if header.total_size as usize != buf.len() {
        return Err(corrupt(format!(
            "size field {} does not match {} bytes",
            header.total_size,
            buf.len()
        )));
    }
    let actual = crc32c::crc32c(&buf[CRC_START..]);
    if actual != header.crc {
        return Err(corrupt(format!(
            "crc32c mismatch: stored {:08x}, computed {actual:08x}",
            header.crc
        )));
    }
    if header.physical_offset != physical_offset {
        return Err(corrupt(format!(
            "record says it lives at {}",
            header.physical_offset
        )));
    }
    let topic_len = u32_at(buf, OFF_TOPIC_LEN) as usize;
    let tag_len = u32_at(buf, OFF_TAG_LEN) as usize;
    let keys_len = u32_at(buf, OFF_KEYS_LEN) as usize;
    let props_len = u32_at(buf, OFF_PROPS_LEN) as usize;
    let body_len = u32_at(buf, OFF_BODY_LEN) as usize;
    let expected = RECORD_HEADER_SIZE + topic_len + tag_len + keys_len + props_len + body_len;
    if expected != buf.len() {
        return Err(corrupt("section lengths do not add up".into()));
    }
    let mut at = RECORD_HEADER_SIZE;
    let mut take = |n: usize| {
        let s = &buf[at..at + n];
        at += n;
        s
    };
    fn utf8<'a>(b: &'a [u8], what: &str, physical_offset: u64) -> Result<&'a str> {
        std::str::from_utf8(b).map_err(|_| StoreError::Corrupt {
            offset: physical_offset,
            reason: format!("{what} is not UTF-8"),
        })
    }
    let topic = utf8(take(topic_len), "topic", physical_offset)?;
    let tag = utf8(take(tag_len), "tag", physical_offset)?;
    let keys_buf = take(keys_len);
    let props_buf = take(props_len);
    let body = take(body_len);

    let mut p = 0;
    while p < keys_buf.len() {
        let len = read_len(keys_buf, p).ok_or_else(|| corrupt("truncated key".into()))?;
        let key = keys_buf
            .get(p + 2..p + 2 + len)
            .ok_or_else(|| corrupt("truncated key".into()))?;
        on_key(utf8(key, "key", physical_offset)?);
        p += 2 + len;
    }
    let mut p = 0;
    while p < props_buf.len() {
        let klen = read_len(props_buf, p).ok_or_else(|| corrupt("truncated property".into()))?;
        let k = props_buf
            .get(p + 2..p + 2 + klen)
            .ok_or_else(|| corrupt("truncated property".into()))?;
        p += 2 + klen;
        let vlen = read_len(props_buf, p).ok_or_else(|| corrupt("truncated property".into()))?;
        let v = props_buf
            .get(p + 2..p + 2 + vlen)
            .ok_or_else(|| corrupt("truncated property".into()))?;
        p += 2 + vlen;
        on_property(
            utf8(k, "property name", physical_offset)?,
            utf8(v, "property value", physical_offset)?,
        );
    }
    Ok(Checked {
        header,
        born_timestamp: u64_at(buf, OFF_BORN) as i64,
        topic,
        tag,
        body,
    })
}

/// Validates and decodes a whole record found at `physical_offset`.
pub fn decode(buf: &[u8], physical_offset: u64) -> Result<Record> {
    let mut keys = Vec::new();
    let mut properties = Vec::new();
    let c = check_with(
        buf,
        physical_offset,
        |k| keys.push(k.to_string()),
        |k, v| properties.push((k.to_string(), v.to_string())),
    )?;
    Ok(Record {
        topic: c.topic.to_string(),
        queue_id: c.header.queue_id,
        queue_offset: c.header.queue_offset,
        physical_offset,
        born_timestamp: c.born_timestamp,
        store_timestamp: c.header.store_timestamp,
        flags: c.header.flags,
        tag: c.tag.to_string(),
        keys,
        properties,
        body: Bytes::copy_from_slice(c.body),
        crc: c.header.crc,
        size: c.header.total_size,
    })
}

fn read_len(buf: &[u8], at: usize) -> Option<usize> {
    (at + 2 <= buf.len()).then(|| u16_at(buf, at) as usize)
}

/// The topic of an encoded record, read without validation (for dispatch of records
/// whose CRC failed); `None` when the header cannot be trusted.
pub fn topic_of(buf: &[u8]) -> Option<&str> {
    let topic_len = u32_at(buf, OFF_TOPIC_LEN) as usize;
    let bytes = buf.get(RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + topic_len)?;
    let topic = std::str::from_utf8(bytes).ok()?;
    validate_topic_name(topic).ok().map(|_| topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    fn sample() -> Message {
        Message {
            topic: "orders".into(),
            queue_id: 3,
            flags: RecordFlags::new(Codec::Zstd, MessageType::Fifo, TransactionState::Prepared),
            born_timestamp: 1_700_000_000_123,
            tag: "TagA".into(),
            keys: vec!["k1".into(), "key two".into()],
            properties: vec![("a".into(), "1".into()), ("".into(), "".into())],
            body: Bytes::from_static(b"hello world"),
        }
    }

    #[test]
    fn round_trip_preserves_every_field() {
        let msg = sample();
        let mut buf = msg.encode(4096).unwrap();
        let crc = seal(&mut buf, 42, 4096, 1_700_000_000_999);
        let rec = decode(&buf, 4096).unwrap();
        assert_eq!(rec.topic, msg.topic);
        assert_eq!(rec.queue_id, 3);
        assert_eq!(rec.queue_offset, 42);
        assert_eq!(rec.physical_offset, 4096);
        assert_eq!(rec.born_timestamp, msg.born_timestamp);
        assert_eq!(rec.store_timestamp, 1_700_000_000_999);
        assert_eq!(rec.flags.codec(), Some(Codec::Zstd));
        assert_eq!(rec.flags.message_type(), Some(MessageType::Fifo));
        assert_eq!(
            rec.flags.transaction_state(),
            Some(TransactionState::Prepared)
        );
        assert_eq!(rec.tag, "TagA");
        assert_eq!(rec.keys, msg.keys);
        assert_eq!(rec.properties, msg.properties);
        assert_eq!(rec.body, msg.body);
        assert_eq!(rec.crc, crc);
        assert_eq!(rec.size as usize, buf.len());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut buf = sample().encode(4096).unwrap();
        seal(&mut buf, 1, 0, 5);
        for i in 0..buf.len() {
            let mut copy = buf.clone();
            copy[i] ^= 0x40;
            assert!(decode(&copy, 0).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn too_large_is_refused() {
        let mut msg = sample();
        msg.body = Bytes::from(vec![0u8; 5000]);
        let err = msg.encode(4096).unwrap_err();
        assert_eq!(err.code(), Reason::MessageTooLarge);
    }

    #[test]
    fn topic_names_follow_the_rule() {
        for ok in ["a", "orders-v2", "%DLQ%group_1", "a.b", &"x".repeat(127)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "..",
            "a/b",
            "with space",
            "ü",
            &"x".repeat(128),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn frames_are_classified() {
        assert_eq!(peek_frame(&[0; 8]), Frame::End);
        assert_eq!(peek_frame(&blank_header(64)), Frame::Blank(64));
        let mut buf = sample().encode(4096).unwrap();
        seal(&mut buf, 0, 0, 0);
        assert_eq!(peek_frame(&buf), Frame::Record(buf.len() as u32));
        assert_eq!(peek_frame(&[1, 2, 3, 4, 5, 6, 7, 8]), Frame::Garbage);
    }
}
