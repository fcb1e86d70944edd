//! The checks of the `record` fuzz target (`fuzz/fuzz_targets/record.rs`),
//! here so that `cargo test` replays its committed corpus
//! (`fuzz/corpus/record/`).
//!
//! An input is split by its first byte. Even: the rest is taken as bytes
//! found in a segment and decoded; whatever it is, decoding must not panic,
//! and a record it yields must decode the same again. Odd: the rest is a
//! [`FuzzMessage`] (via `arbitrary`) that is encoded, sealed and decoded
//! back, which must give exactly its fields; then one byte of the record is
//! changed, and decoding must refuse it or give the very same record (a
//! change the checksum does not cover, such as the offsets, is not
//! data).

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

use super::record::{Message, RecordFlags, decode, seal};

/// A message to store, as `arbitrary` builds it.
#[derive(Debug, Arbitrary)]
struct FuzzMessage {
    topic: String,
    queue_id: u32,
    flags: u32,
    born_timestamp: i64,
    tag: String,
    keys: Vec<String>,
    properties: Vec<(String, String)>,
    body: Vec<u8>,
    queue_offset: u64,
    physical_offset: u64,
    store_timestamp: i64,
    /// Which byte to change, and by what.
    flip_at: u32,
    flip_with: u8,
}

/// The largest record the checks build.
const MAX_RECORD: u32 = 1 << 20;

/// Runs every check on one fuzz input; panics on a violation.
pub fn check_record_input(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(record) = decode(rest, 0) {
            assert_eq!(decode(rest, 0).ok(), Some(record), "decoding is not stable");
        }
        return;
    }
    let Ok(m) = FuzzMessage::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let message = Message {
        topic: m.topic.clone(),
        queue_id: m.queue_id,
        flags: RecordFlags(m.flags),
        born_timestamp: m.born_timestamp,
        tag: m.tag.clone(),
        keys: m.keys.clone(),
        properties: m.properties.clone(),
        body: Bytes::from(m.body.clone()),
    };
    let Ok(mut buf) = message.encode(MAX_RECORD) else {
        return;
    };
    seal(
        &mut buf,
        m.queue_offset,
        m.physical_offset,
        m.store_timestamp,
    );
    let record = decode(&buf, m.physical_offset).expect("an encoded record decodes");
    assert_eq!(record.topic, m.topic);
    assert_eq!(record.queue_id, m.queue_id);
    assert_eq!(record.queue_offset, m.queue_offset);
    assert_eq!(record.flags, RecordFlags(m.flags));
    assert_eq!(record.born_timestamp, m.born_timestamp);
    assert_eq!(record.store_timestamp, m.store_timestamp);
    assert_eq!(record.tag, m.tag);
    assert_eq!(record.keys, m.keys);
    assert_eq!(record.properties, m.properties);
    assert_eq!(record.body.as_ref(), m.body.as_slice());
    if m.flip_with == 0 {
        return;
    }
    let at = m.flip_at as usize % buf.len();
    buf[at] ^= m.flip_with;
    if let Ok(changed) = decode(&buf, m.physical_offset) {
        let data_of = |r: &super::record::Record| {
            (
                r.topic.clone(),
                r.queue_id,
                r.flags,
                r.born_timestamp,
                r.tag.clone(),
                r.keys.clone(),
                r.properties.clone(),
                r.body.clone(),
            )
        };
        assert_eq!(
            data_of(&changed),
            data_of(&record),
            "a changed byte {at} went unnoticed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed seed corpus of the fuzz target, replayed.
    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        crate::fuzz_corpus::replay("record", 4, check_record_input);
    }
}
