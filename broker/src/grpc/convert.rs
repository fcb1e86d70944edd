//! Conversions between the protobuf contract and the messaging layer's types.

use dduomq_proto::v1 as pb;

use crate::filter::{FilterKind, FilterSpec};
use crate::messaging::error::BrokerError;
use crate::messaging::groups::{
    ConsumeMode, GroupConfig, GroupSubscription, MAX_GROUP_SUBSCRIPTIONS,
};
use crate::messaging::topic_settings::AckPolicyUpdate;
use crate::messaging::topics::TopicConfig;
use crate::messaging::{Delivery, QueueProgress};
use crate::messaging::{limits, properties};
use crate::replication::AckPolicy;
use crate::store::{Codec, MessageType};

pub fn message(d: Delivery) -> pb::Message {
    let r = d.record;
    let deliver_at_ms = properties::deliver_at(&r.properties);
    // Reserved properties are the broker's own (producer identity, lane,
    // staging), but for those that describe the message.
    let properties = properties::for_consumer(&r.topic, r.properties);
    pb::Message {
        deliver_at_ms,
        message_id: d.message_id,
        topic: r.topic,
        queue_id: r.queue_id,
        offset: r.queue_offset,
        body: r.body,
        tag: r.tag,
        keys: r.keys,
        properties: properties.into_iter().collect(),
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

/// A proto enum value this broker does not know: refused, never taken as the
/// default (it may mean something the client relies on).
fn unknown(field: &'static str, value: i32) -> BrokerError {
    BrokerError::invalid(field, format!("unknown value {value}"))
}

/// A topic's message type; unspecified means normal.
pub fn message_type_from_pb(t: i32) -> Result<MessageType, BrokerError> {
    Ok(
        match pb::MessageType::try_from(t).map_err(|_| unknown("message_type", t))? {
            pb::MessageType::Fifo => MessageType::Fifo,
            pb::MessageType::Delay => MessageType::Delay,
            pb::MessageType::Transaction => MessageType::Transaction,
            pb::MessageType::Normal | pb::MessageType::Unspecified => MessageType::Normal,
        },
    )
}

/// A CreateTopicRequest's acknowledgement policy: what an existing topic's
/// becomes, and the policy a new topic (or a replaced one) takes (`None`: the
/// broker's). Unspecified keeps an existing topic's (see admin.proto).
pub fn ack_policy_from_pb(p: i32) -> Result<(AckPolicyUpdate, Option<AckPolicy>), BrokerError> {
    Ok(
        match pb::AckPolicy::try_from(p).map_err(|_| unknown("ack_policy", p))? {
            pb::AckPolicy::Master => (AckPolicyUpdate::Replace, Some(AckPolicy::Master)),
            pb::AckPolicy::Quorum => (AckPolicyUpdate::Replace, Some(AckPolicy::Quorum)),
            pb::AckPolicy::BrokerDefault => (AckPolicyUpdate::Replace, None),
            pb::AckPolicy::Unspecified => (AckPolicyUpdate::Keep, None),
        },
    )
}

pub fn ack_policy_to_pb(p: AckPolicy) -> pb::AckPolicy {
    match p {
        AckPolicy::Master => pb::AckPolicy::Master,
        AckPolicy::Quorum => pb::AckPolicy::Quorum,
    }
}

/// A message body's codec.
pub fn codec_from_pb(c: i32) -> Result<Codec, BrokerError> {
    Ok(
        match pb::Codec::try_from(c).map_err(|_| unknown("codec", c))? {
            pb::Codec::Zstd => Codec::Zstd,
            pb::Codec::None => Codec::None,
        },
    )
}

/// A message's transaction: its producer group when it is transactional. A
/// producer group given on another message is unused, but still checked, so
/// a malformed one is refused rather than silently dropped.
pub fn transaction_from_pb(
    transactional: bool,
    producer_group: String,
) -> Result<Option<String>, BrokerError> {
    if !transactional && !producer_group.is_empty() {
        limits::check_group_name("producer_group", &producer_group)?;
    }
    Ok(transactional.then_some(producer_group))
}

pub fn topic(t: TopicConfig) -> pb::Topic {
    pb::Topic {
        name: t.name,
        queues: t.queues,
        message_type: message_type_to_pb(t.message_type) as i32,
        max_message_bytes: t.settings.max_message_bytes.unwrap_or(0),
        retention_ms: t.settings.retention_ms.unwrap_or(0),
        ack_policy: t
            .settings
            .ack_policy
            .map_or(pb::AckPolicy::Unspecified, ack_policy_to_pb) as i32,
    }
}

/// A group's consume mode; unspecified means clustering.
pub fn mode_from_pb(m: i32) -> Result<ConsumeMode, BrokerError> {
    Ok(
        match pb::ConsumeMode::try_from(m).map_err(|_| unknown("mode", m))? {
            pb::ConsumeMode::Broadcast => ConsumeMode::Broadcast,
            pb::ConsumeMode::Clustering | pb::ConsumeMode::Unspecified => ConsumeMode::Clustering,
        },
    )
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
        subscriptions: g
            .subscriptions
            .into_iter()
            .map(|s| pb::GroupSubscription {
                topic: s.topic,
                filter_type: match s.filter.kind {
                    FilterKind::Tag => pb::FilterType::Tag,
                    FilterKind::Sql => pb::FilterType::Sql,
                } as i32,
                filter_expression: s.filter.expression,
            })
            .collect(),
        ordered: g.ordered,
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

pub fn route_table(
    r: pb::UpdateRoutesRequest,
) -> Result<crate::messaging::routes::RouteTable, BrokerError> {
    use crate::messaging::routes::{QueueRoute, RouteTable, TopicRoute};
    Ok(RouteTable {
        epoch: r.epoch,
        topics: r
            .topics
            .into_iter()
            .map(|t| {
                let route = TopicRoute {
                    message_type: message_type_from_pb(t.message_type)?,
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
                Ok((t.topic, route))
            })
            .collect::<Result<_, BrokerError>>()?,
    })
}

/// The filter a consumer asked for, checked to parse.
pub fn filter(kind: i32, expression: &str) -> Result<FilterSpec, BrokerError> {
    let spec = filter_spec(kind, expression)?;
    spec.parse()?;
    Ok(spec)
}

/// A filter as written (parsed where it is used or stored).
fn filter_spec(kind: i32, expression: &str) -> Result<FilterSpec, BrokerError> {
    Ok(FilterSpec {
        kind: match pb::FilterType::try_from(kind).map_err(|_| unknown("filter_type", kind))? {
            pb::FilterType::Tag => FilterKind::Tag,
            pb::FilterType::Sql => FilterKind::Sql,
        },
        expression: expression.to_string(),
    })
}

/// A group's declared subscriptions; their filters are checked with the group.
pub fn subscriptions_from_pb(
    subs: Vec<pb::GroupSubscription>,
) -> Result<Vec<GroupSubscription>, BrokerError> {
    limits::check_count("subscriptions", subs.len(), MAX_GROUP_SUBSCRIPTIONS)?;
    subs.into_iter()
        .map(|s| {
            Ok(GroupSubscription {
                filter: filter_spec(s.filter_type, &s.filter_expression)?,
                topic: s.topic,
            })
        })
        .collect()
}
