//! Messages as the SDK sends and receives them.

use std::collections::HashMap;

use bytes::Bytes;
use dduomq_proto::v1 as pb;

/// A message to send. Build it with [`Message::new`] and the `with_*` methods.
///
/// ```
/// use dduomq_client::Message;
/// let m = Message::new("orders", "order #1")
///     .with_tag("created")
///     .with_key("order-1")
///     .with_property("region", "eu")
///     .with_sharding_key("customer-7");
/// assert_eq!(m.topic, "orders");
/// assert_eq!(&m.body[..], b"order #1");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub body: Bytes,
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: HashMap<String, String>,
    /// Messages with the same sharding key go to the same queue, in send order.
    pub sharding_key: String,
    /// Delayed messages (Delay topics): deliver at this time, ms since the Unix
    /// epoch (0: not set).
    pub deliver_at_ms: i64,
    /// Delayed messages: deliver this long after the broker receives it (the
    /// broker's clock, so producer clock skew does not matter).
    pub delay: Option<std::time::Duration>,
    /// Gray-release lane ("" = base).
    pub lane: String,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            body: body.into(),
            ..Message::default()
        }
    }
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = tag.into();
        self
    }
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }
    pub fn with_sharding_key(mut self, key: impl Into<String>) -> Self {
        self.sharding_key = key.into();
        self
    }
    /// Delivers the message this long after the broker stores it (Delay topics).
    pub fn with_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    /// Delivers the message at this time, ms since the Unix epoch (Delay topics).
    pub fn with_deliver_at_ms(mut self, at: i64) -> Self {
        self.deliver_at_ms = at;
        self
    }
    /// Sends the message on a gray-release lane (e.g. `canary`).
    pub fn with_lane(mut self, lane: impl Into<String>) -> Self {
        self.lane = lane.into();
        self
    }

    /// The wire form. Bodies of at least `compress_from` bytes (0: never) are
    /// zstd-compressed when that makes them smaller; `identity` is the
    /// idempotent producer's id and this message's sequence.
    pub(crate) fn into_proto(
        self,
        queue_id: Option<u32>,
        compress_from: usize,
        identity: Option<(&str, u64)>,
    ) -> pb::OutgoingMessage {
        let compressed = (compress_from > 0 && self.body.len() >= compress_from)
            .then(|| zstd::bulk::compress(&self.body, ZSTD_LEVEL).ok())
            .flatten()
            .filter(|c| c.len() < self.body.len());
        let (body, codec) = match compressed {
            Some(c) => (Bytes::from(c), pb::Codec::Zstd),
            None => (self.body, pb::Codec::None),
        };
        let (producer_id, sequence) =
            identity.map_or((String::new(), 0), |(p, s)| (p.to_string(), s));
        pb::OutgoingMessage {
            topic: self.topic,
            body,
            codec: codec as i32,
            producer_id,
            sequence,
            lane: self.lane,
            tag: self.tag,
            keys: self.keys,
            properties: self.properties,
            sharding_key: self.sharding_key,
            queue_id,
            born_timestamp_ms: now_millis(),
            deliver_at_ms: self.deliver_at_ms,
            // At least 1 ms: zero means "no delay" on the wire.
            delay_ms: self.delay.map_or(0, |d| (d.as_millis() as u64).max(1)),
            transactional: false,
            producer_group: String::new(),
        }
    }
}

/// zstd level for message bodies: fast, and most of the ratio.
const ZSTD_LEVEL: i32 = 3;

/// Where a sent message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    pub message_id: String,
    pub topic: String,
    pub queue_id: u32,
    /// 0 for delayed and transactional messages (assigned on release).
    pub offset: u64,
    pub store_timestamp_ms: i64,
    /// Delayed messages: when it will be delivered (ms since the Unix epoch).
    pub deliver_at_ms: i64,
    /// Transactional messages: the transaction's id.
    pub transaction_id: String,
}

impl From<pb::SendReceipt> for SendReceipt {
    fn from(r: pb::SendReceipt) -> Self {
        SendReceipt {
            message_id: r.message_id,
            topic: r.topic,
            queue_id: r.queue_id,
            offset: r.offset,
            store_timestamp_ms: r.store_timestamp_ms,
            deliver_at_ms: r.deliver_at_ms,
            transaction_id: r.transaction_id,
        }
    }
}

/// Set on a delivered message whose body failed to decompress, with the error.
/// Under the reserved `__` prefix (which producers cannot use), so it never
/// hides a property of the producer's. (Earlier SDKs named it
/// `DDUOMQ_DECODE_ERROR`.)
pub const DECODE_ERROR_PROPERTY: &str = "__DECODE_ERROR";

/// A message delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub body: Bytes,
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: HashMap<String, String>,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    /// 1 on first delivery.
    pub delivery_attempt: u32,
    /// Set on push deliveries; acks and nacks name it.
    pub receipt_handle: String,
    /// Delayed messages: when it was due (ms since the Unix epoch), else 0.
    pub deliver_at_ms: i64,
}

impl From<pb::Message> for ReceivedMessage {
    /// Decompresses the body. A body that fails to decompress (which the broker's
    /// frame check makes a corruption) is delivered as stored, with the error in
    /// the [`DECODE_ERROR_PROPERTY`].
    fn from(mut m: pb::Message) -> Self {
        let body = match pb::Codec::try_from(m.codec).unwrap_or(pb::Codec::None) {
            pb::Codec::None => m.body,
            pb::Codec::Zstd => match zstd::stream::decode_all(&m.body[..]) {
                Ok(plain) => Bytes::from(plain),
                Err(e) => {
                    m.properties
                        .insert(DECODE_ERROR_PROPERTY.into(), e.to_string());
                    m.body
                }
            },
        };
        ReceivedMessage {
            message_id: m.message_id,
            topic: m.topic,
            queue_id: m.queue_id,
            offset: m.offset,
            body,
            tag: m.tag,
            keys: m.keys,
            properties: m.properties,
            born_timestamp_ms: m.born_timestamp_ms,
            store_timestamp_ms: m.store_timestamp_ms,
            delivery_attempt: m.delivery_attempt,
            receipt_handle: m.receipt_handle,
            deliver_at_ms: m.deliver_at_ms,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
