//! Conversions between the protobuf contract and the messaging layer's types.

use dduomq_proto::v1 as pb;

use crate::messaging::groups::{ConsumeMode, GroupConfig};
use crate::messaging::topics::TopicConfig;
use crate::messaging::{Delivery, QueueProgress};
use crate::store::MessageType;

pub fn message(d: Delivery) -> pb::Message {
    let r = d.record;
    let deliver_at_ms = crate::messaging::staged::deliver_at(&r.properties);
    pb::Message {
        deliver_at_ms,
        message_id: d.message_id,
        topic: r.topic,
        queue_id: r.queue_id,
        offset: r.queue_offset,
        body: r.body,
        tag: r.tag,
        keys: r.keys,
        // `__`-prefixed properties are the broker's own (producer identity,
        // lane, staging).
        properties: r
            .properties
            .into_iter()
            .filter(|(k, _)| !k.starts_with("__"))
            .collect(),
        born_timestamp_ms: r.born_timestamp,
        store_timestamp_ms: r.store_timestamp,
        delivery_attempt: d.attempt,
        receipt_handle: d.receipt_handle,
        invisible_until_ms: d.invisible_until,
        codec: match r.flags.codec() {
            Some(crate::store::Codec::Zstd) => pb::Codec::Zstd,
            _ => pb::Codec::None,
        } as i32,
    }
}

pub fn message_type_to_pb(t: MessageType) -> pb::MessageType {
    match t {
        MessageType::Normal => pb::MessageType::Normal,
        MessageType::Fifo => pb::MessageType::Fifo,
        MessageType::Delay => pb::MessageType::Delay,
        MessageType::Transaction => pb::MessageType::Transaction,
    }
}

pub fn message_type_from_pb(t: i32) -> MessageType {
    match pb::MessageType::try_from(t).unwrap_or(pb::MessageType::Unspecified) {
        pb::MessageType::Fifo => MessageType::Fifo,
        pb::MessageType::Delay => MessageType::Delay,
        pb::MessageType::Transaction => MessageType::Transaction,
        pb::MessageType::Normal | pb::MessageType::Unspecified => MessageType::Normal,
    }
}

pub fn topic(t: TopicConfig) -> pb::Topic {
    pb::Topic {
        name: t.name,
        queues: t.queues,
        message_type: message_type_to_pb(t.message_type) as i32,
    }
}

pub fn mode_from_pb(m: i32) -> ConsumeMode {
    match pb::ConsumeMode::try_from(m).unwrap_or(pb::ConsumeMode::Unspecified) {
        pb::ConsumeMode::Broadcast => ConsumeMode::Broadcast,
        _ => ConsumeMode::Clustering,
    }
}

pub fn mode_to_pb(m: ConsumeMode) -> pb::ConsumeMode {
    match m {
        ConsumeMode::Clustering => pb::ConsumeMode::Clustering,
        ConsumeMode::Broadcast => pb::ConsumeMode::Broadcast,
    }
}

pub fn group(g: GroupConfig) -> pb::Group {
    pb::Group {
        name: g.name,
        mode: mode_to_pb(g.mode) as i32,
        max_delivery_attempts: g.max_delivery_attempts,
        retry_backoff_ms: g.retry_backoff_ms,
        disable_dead_letter: !g.dead_letter,
    }
}

pub fn progress(p: QueueProgress) -> pb::GroupQueueStatus {
    pb::GroupQueueStatus {
        lag: p.max_offset.saturating_sub(p.committed),
        topic: p.topic,
        queue_id: p.queue_id,
        committed_offset: p.committed,
        max_offset: p.max_offset,
        in_flight: p.in_flight,
        client_id: p.member,
    }
}

pub fn queue_route(q: crate::messaging::routes::QueueRoute) -> pb::QueueRoute {
    pb::QueueRoute {
        queue_id: q.queue_id,
        broker_id: q.broker_id,
        broker_address: q.broker_address,
        writable: q.writable,
        readable: q.readable,
    }
}

pub fn route_table(r: pb::UpdateRoutesRequest) -> crate::messaging::routes::RouteTable {
    use crate::messaging::routes::{QueueRoute, RouteTable, TopicRoute};
    RouteTable {
        epoch: r.epoch,
        topics: r
            .topics
            .into_iter()
            .map(|t| {
                let route = TopicRoute {
                    message_type: message_type_from_pb(t.message_type),
                    queues: t
                        .queues
                        .into_iter()
                        .map(|q| QueueRoute {
                            queue_id: q.queue_id,
                            broker_id: q.broker_id,
                            broker_address: q.broker_address,
                            writable: q.writable,
                            readable: q.readable,
                        })
                        .collect(),
                };
                (t.topic, route)
            })
            .collect(),
    }
}

/// The filter a consumer asked for.
pub fn filter(
    kind: i32,
    expression: &str,
) -> Result<crate::filter::Filter, crate::messaging::error::BrokerError> {
    use crate::filter::Filter;
    Ok(
        match pb::FilterType::try_from(kind).unwrap_or(pb::FilterType::Tag) {
            pb::FilterType::Tag => Filter::tags(expression)?,
            pb::FilterType::Sql => Filter::sql(expression)?,
        },
    )
}
