//! Messages between the RocketMQ protocol and the store: what a RocketMQ
//! producer sends becomes a [`SendMessage`], what the store holds becomes the
//! protocol's `Message`, so both kinds of client read one store.
//!
//! Bodies are stored as the producer meant them: a GZIP body is inflated
//! first, and its digest (CRC32, MD5 or SHA1, as hex of any case and
//! padding) is checked on the bytes as sent. Deliveries carry an MD5 digest,
//! which every official client checks the same way (their CRC32 checks
//! disagree on zero padding).

use std::io::Read;

use bytes::Bytes;
use dduomq_proto::rocketmq::v2 as rmq;
use md5::Digest as _;

use super::names::Scope;
use crate::messaging::error::BrokerError;
use crate::messaging::{Delivery, Schedule, SendMessage, properties};
use crate::store::{Codec, MessageType, StoreError};

/// The producer group of a RocketMQ topic's transactions: the protocol names
/// none, so checks go to any producer that publishes the topic (as Apache
/// RocketMQ's proxy does).
pub fn transaction_group(topic: &str) -> String {
    topic.to_string()
}

/// A RocketMQ message as a send to `topic` (already a stored name). `queue_id`
/// is the queue the broker chose (see `send.rs`).
pub fn to_send(
    m: rmq::Message,
    topic: String,
    queue_id: Option<u32>,
    max_body: usize,
) -> Result<SendMessage, BrokerError> {
    let sys = m
        .system_properties
        .ok_or_else(|| BrokerError::invalid("system_properties", "missing"))?;
    if sys.message_id.is_empty() {
        return Err(BrokerError::invalid("message_id", "must not be empty"));
    }
    if let Some(digest) = &sys.body_digest {
        check_digest(digest, &m.body)?;
    }
    let body = match rmq::Encoding::try_from(sys.body_encoding) {
        Ok(rmq::Encoding::Gzip) => inflate(&m.body, max_body)?,
        Ok(rmq::Encoding::Identity | rmq::Encoding::Unspecified) => m.body,
        Err(_) => return Err(unknown("body_encoding", sys.body_encoding)),
    };
    let message_type = rmq::MessageType::try_from(sys.message_type)
        .map_err(|_| unknown("message_type", sys.message_type))?;
    let schedule = match sys.delivery_timestamp {
        Some(at) => Schedule::At(millis(&at).max(1)),
        None => Schedule::Now,
    };
    let transaction = match message_type {
        rmq::MessageType::Transaction => Some(transaction_group(&topic)),
        rmq::MessageType::Lite | rmq::MessageType::Priority => {
            return Err(BrokerError::invalid(
                "message_type",
                "LITE and PRIORITY messages are not supported",
            ));
        }
        _ => None,
    };
    Ok(SendMessage {
        topic,
        body,
        tag: sys.tag.unwrap_or_default(),
        keys: sys.keys,
        properties: m.user_properties.into_iter().collect(),
        sharding_key: sys.message_group.unwrap_or_default(),
        queue_id,
        born_timestamp: sys.born_timestamp.as_ref().map(millis).unwrap_or_default(),
        codec: Codec::None,
        producer_id: String::new(),
        sequence: 0,
        schedule,
        transaction,
        lane: String::new(),
        client_message_id: sys.message_id,
    })
}

/// A stored message as a RocketMQ client receives it.
pub fn to_rmq(
    scope: &Scope,
    d: Delivery,
    message_type: MessageType,
    store_host: &str,
    max_body: usize,
) -> Result<rmq::Message, BrokerError> {
    let r = d.record;
    let message_id = properties::CLIENT_MESSAGE_ID
        .get(&r.properties)
        .map(str::to_string)
        .unwrap_or(d.message_id);
    let message_group = properties::SHARDING_KEY
        .get(&r.properties)
        .map(str::to_string);
    let deliver_at = properties::deliver_at(&r.properties);
    let body = match r.flags.codec() {
        Some(Codec::Zstd) => zstd_inflate(&r.body, r.physical_offset, max_body)?,
        _ => r.body,
    };
    let user_properties = properties::for_consumer(&r.topic, r.properties)
        .into_iter()
        .filter(|(k, _)| !properties::SHARDING_KEY.is(k))
        .collect();
    let leased = !d.receipt_handle.is_empty();
    Ok(rmq::Message {
        topic: Some(scope.resource(r.topic)),
        user_properties,
        system_properties: Some(rmq::SystemProperties {
            tag: (!r.tag.is_empty()).then_some(r.tag),
            keys: r.keys,
            message_id,
            body_digest: Some(rmq::Digest {
                r#type: rmq::DigestType::Md5 as i32,
                checksum: hex_upper(&md5::Md5::digest(&body)),
            }),
            body_encoding: rmq::Encoding::Identity as i32,
            message_type: type_to_rmq(message_type) as i32,
            born_timestamp: Some(timestamp(r.born_timestamp)),
            born_host: String::new(),
            store_timestamp: Some(timestamp(r.store_timestamp)),
            store_host: store_host.to_string(),
            delivery_timestamp: (deliver_at > 0).then(|| timestamp(deliver_at)),
            receipt_handle: leased.then_some(d.receipt_handle),
            queue_id: r.queue_id as i32,
            queue_offset: Some(r.queue_offset as i64),
            invisible_duration: leased.then(|| {
                duration_ms((d.invisible_until - crate::store::now_millis()).max(0) as u64)
            }),
            delivery_attempt: Some(d.attempt.max(1) as i32),
            message_group,
            trace_context: None,
            orphaned_transaction_recovery_duration: None,
            dead_letter_queue: None,
            lite_topic: None,
            priority: None,
        }),
        body,
    })
}

/// The protocol's message type of a topic type.
pub fn type_to_rmq(t: MessageType) -> rmq::MessageType {
    match t {
        MessageType::Normal => rmq::MessageType::Normal,
        MessageType::Fifo => rmq::MessageType::Fifo,
        MessageType::Delay => rmq::MessageType::Delay,
        MessageType::Transaction => rmq::MessageType::Transaction,
    }
}

pub fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos / 1_000_000))
}

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protocol duration in milliseconds; negative ones are refused.
pub fn duration_millis(what: &'static str, d: &prost_types::Duration) -> Result<u64, BrokerError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(BrokerError::invalid(what, "must not be negative"));
    }
    Ok((d.seconds as u64)
        .saturating_mul(1000)
        .saturating_add(d.nanos as u64 / 1_000_000))
}

pub fn duration_ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn check_digest(digest: &rmq::Digest, body: &[u8]) -> Result<(), BrokerError> {
    let expected = digest.checksum.trim();
    let matches = match rmq::DigestType::try_from(digest.r#type) {
        Ok(rmq::DigestType::Crc32) => {
            u32::from_str_radix(expected, 16).is_ok_and(|sum| sum == crc32fast::hash(body))
        }
        Ok(rmq::DigestType::Md5) => {
            expected.eq_ignore_ascii_case(&hex_upper(&md5::Md5::digest(body)))
        }
        Ok(rmq::DigestType::Sha1) => {
            expected.eq_ignore_ascii_case(&hex_upper(&sha1::Sha1::digest(body)))
        }
        Ok(rmq::DigestType::Unspecified) => true,
        Err(_) => return Err(unknown("body_digest.type", digest.r#type)),
    };
    if !matches {
        return Err(BrokerError::invalid(
            "body_digest",
            "the body does not match its digest (corrupted in transit)",
        ));
    }
    Ok(())
}

/// A GZIP body inflated, refused when it would exceed `max` bytes.
fn inflate(body: &[u8], max: usize) -> Result<Bytes, BrokerError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BrokerError::invalid("body", format!("not a GZIP stream: {e}")))?;
    if out.len() > max {
        return Err(BrokerError::invalid(
            "body",
            format!("inflates to more than {max} bytes"),
        ));
    }
    Ok(out.into())
}

/// A body our SDK stored zstd-compressed, inflated for a client that only
/// knows GZIP and identity.
fn zstd_inflate(body: &[u8], offset: u64, max: usize) -> Result<Bytes, BrokerError> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(body)
        .and_then(|d| d.take(max as u64 + 1).read_to_end(&mut out))
        .map_err(|e| StoreError::Corrupt {
            offset,
            reason: format!("zstd body unreadable: {e}"),
        })?;
    if out.len() > max {
        return Err(StoreError::Corrupt {
            offset,
            reason: format!("zstd body inflates to more than {max} bytes"),
        }
        .into());
    }
    Ok(out.into())
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn unknown(what: &'static str, value: i32) -> BrokerError {
    BrokerError::invalid(what, format!("unknown value {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn message(body: &[u8], digest: Option<rmq::Digest>, encoding: rmq::Encoding) -> rmq::Message {
        rmq::Message {
            topic: None,
            user_properties: [("k".to_string(), "v".to_string())].into(),
            system_properties: Some(rmq::SystemProperties {
                message_id: "01ABC".to_string(),
                tag: Some("TagA".to_string()),
                keys: vec!["key1".to_string()],
                body_digest: digest,
                body_encoding: encoding as i32,
                message_type: rmq::MessageType::Normal as i32,
                ..Default::default()
            }),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn crc(checksum: String) -> Option<rmq::Digest> {
        Some(rmq::Digest {
            r#type: rmq::DigestType::Crc32 as i32,
            checksum,
        })
    }

    #[test]
    fn crc32_digests_match_padded_or_not() {
        // A body whose CRC32 starts with a zero nibble.
        let body = (0u32..)
            .map(|i| i.to_string().into_bytes())
            .find(|b| crc32fast::hash(b) < 0x1000_0000)
            .unwrap();
        let sum = crc32fast::hash(&body);
        for checksum in [format!("{sum:08X}"), format!("{sum:X}"), format!("{sum:x}")] {
            let m = message(&body, crc(checksum), rmq::Encoding::Identity);
            assert!(to_send(m, "t".into(), None, 1024).is_ok());
        }
        let bad = message(
            &body,
            crc(format!("{:X}", sum ^ 1)),
            rmq::Encoding::Identity,
        );
        assert!(to_send(bad, "t".into(), None, 1024).is_err());
    }

    #[test]
    fn gzip_bodies_are_stored_inflated_and_bounded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[7u8; 4000]).unwrap();
        let packed = gz.finish().unwrap();
        let digest = crc(format!("{:X}", crc32fast::hash(&packed)));
        let m = message(&packed, digest.clone(), rmq::Encoding::Gzip);
        let sent = to_send(m, "t".into(), None, 4000).unwrap();
        assert_eq!(sent.body.as_ref(), &[7u8; 4000][..]);
        assert_eq!(sent.client_message_id, "01ABC");
        assert_eq!(sent.tag, "TagA");
        let m = message(&packed, digest, rmq::Encoding::Gzip);
        assert!(to_send(m, "t".into(), None, 3999).is_err());
        let not_gzip = message(b"plain", None, rmq::Encoding::Gzip);
        assert!(to_send(not_gzip, "t".into(), None, 100).is_err());
    }

    #[test]
    fn a_message_needs_an_id() {
        let mut m = message(b"x", None, rmq::Encoding::Identity);
        m.system_properties.as_mut().unwrap().message_id.clear();
        assert!(to_send(m, "t".into(), None, 10).is_err());
    }

    #[test]
    fn times_convert_both_ways() {
        assert_eq!(millis(&timestamp(1_700_000_000_123)), 1_700_000_000_123);
        assert_eq!(duration_millis("d", &duration_ms(15_250)).unwrap(), 15_250);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(duration_millis("d", &negative).is_err());
    }
}
