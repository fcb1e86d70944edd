//! Every call the messaging suites make to the `Broker` API, behind small
//! helpers with named results: when a signature changes, only this file does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dduomq_broker::filter::FilterSpec;
use dduomq_broker::messaging::error::BrokerError;
use dduomq_broker::messaging::groups::{ConsumeMode, GroupConfig, GroupSubscription};
use dduomq_broker::messaging::membership::MemberKind;
use dduomq_broker::messaging::push::subscription::Subscription;
use dduomq_broker::messaging::staged::{Resolution, TransactionCheck};
use dduomq_broker::messaging::topic_settings::{AckPolicyUpdate, TopicSettings};
use dduomq_broker::messaging::topics::TopicConfig;
use dduomq_broker::messaging::{
    AppliedMetadata, Broker, Claim, Delivery, GroupOffset, LeaseEnd, LeaseRound, NackOutcome,
    PullSpec, Pulled, QueueProgress, ReceiveLimits, ReceiveStream, ResetTarget, SendMessage,
    SendReceipt, TopicDescription,
};
use dduomq_broker::store::{MessageType, Record};
use tokio::sync::mpsc;

use super::broker::poll_until;

pub type Result<T> = std::result::Result<T, BrokerError>;

// ---- topics and groups --------------------------------------------------------

pub fn create_topic(broker: &Broker, name: &str, queues: u32, message_type: MessageType) {
    broker
        .create_topic(name, queues, message_type)
        .expect("topic created");
}

/// Creates or updates a topic with its own settings.
pub fn upsert_topic(
    broker: &Broker,
    name: &str,
    queues: u32,
    message_type: MessageType,
    settings: TopicSettings,
) -> Result<TopicConfig> {
    Ok(broker
        .upsert_topic(
            name,
            queues,
            message_type,
            settings,
            AckPolicyUpdate::Replace,
        )?
        .topic)
}

/// A topic and the offsets of its queues.
pub fn describe_topic(broker: &Broker, name: &str) -> TopicDescription {
    broker.describe_topic(name).expect("topic described")
}

/// A clustering group that dead-letters after `max_attempts` deliveries and
/// waits `backoff_ms[n - 1]` before redelivery n + 1.
pub fn create_group(broker: &Broker, name: &str, max_attempts: u32, backoff_ms: &[u64]) {
    broker
        .upsert_group(GroupConfig {
            name: name.to_string(),
            mode: ConsumeMode::Clustering,
            max_delivery_attempts: max_attempts,
            retry_backoff_ms: backoff_ms.to_vec(),
            dead_letter: true,
            subscriptions: Vec::new(),
            ordered: false,
        })
        .expect("group created");
}

/// A clustering group with default retries that declares `subscriptions`
/// (topic, filter) and whether it is `ordered`; creates or updates it.
pub fn declare_group(
    broker: &Broker,
    name: &str,
    subscriptions: &[(&str, FilterSpec)],
    ordered: bool,
) -> Result<bool> {
    broker.upsert_group(GroupConfig {
        subscriptions: subscriptions
            .iter()
            .map(|(topic, filter)| GroupSubscription {
                topic: topic.to_string(),
                filter: filter.clone(),
            })
            .collect(),
        ordered,
        ..broker.default_group(name, ConsumeMode::Clustering)
    })
}

/// The group's settings as the broker holds them.
pub fn group_config(broker: &Broker, name: &str) -> Option<GroupConfig> {
    broker.list_groups().into_iter().find(|g| g.name == name)
}

// ---- send -----------------------------------------------------------------------

/// A plain message to `topic` with `body`; the other fields are set by the caller.
pub fn message(topic: &str, body: &str) -> SendMessage {
    SendMessage {
        topic: topic.to_string(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        born_timestamp: 1,
        ..SendMessage::default()
    }
}

/// Sends messages as one batch; one receipt each.
pub async fn send_batch(
    broker: &Arc<Broker>,
    messages: Vec<SendMessage>,
) -> Result<Vec<SendReceipt>> {
    let n = messages.len();
    let receipts = broker.send(messages).await?;
    assert_eq!(receipts.len(), n, "one receipt per message");
    Ok(receipts)
}

pub async fn send(broker: &Arc<Broker>, message: SendMessage) -> Result<SendReceipt> {
    Ok(send_batch(broker, vec![message]).await?.remove(0))
}

/// Sends each body to queue `queue_id` of `topic`, one send each, in order.
pub async fn send_bodies(broker: &Arc<Broker>, topic: &str, queue_id: u32, bodies: &[&str]) {
    for body in bodies {
        let m = SendMessage {
            queue_id: Some(queue_id),
            ..message(topic, body)
        };
        send(broker, m).await.expect("sent");
    }
}

// ---- push consumption -------------------------------------------------------------

/// One consumer stream of a group on a topic.
pub struct Consumer {
    pub group: String,
    pub topic: String,
    sub: Arc<Subscription>,
    id: u64,
}

/// Opens a consumer stream with a filter and a gray-release lane ("" = base).
pub fn subscribe_with(
    broker: &Broker,
    group: &str,
    topic: &str,
    client_id: &str,
    filter: FilterSpec,
    lane: &str,
) -> Consumer {
    try_subscribe(broker, group, topic, client_id, &filter, lane).expect("consumer stream opened")
}

/// Opens a consumer stream, or the broker's refusal.
pub fn try_subscribe(
    broker: &Broker,
    group: &str,
    topic: &str,
    client_id: &str,
    filter: &FilterSpec,
    lane: &str,
) -> Result<Consumer> {
    let ReceiveStream {
        subscription: sub,
        consumer: id,
    } = broker.open_receive(
        group,
        topic,
        client_id,
        ConsumeMode::Clustering,
        filter,
        lane.to_string(),
    )?;
    Ok(Consumer {
        group: group.to_string(),
        topic: topic.to_string(),
        sub,
        id,
    })
}

/// A base-lane consumer stream taking every message.
pub fn subscribe(broker: &Broker, group: &str, topic: &str, client_id: &str) -> Consumer {
    subscribe_with(broker, group, topic, client_id, FilterSpec::all(), "")
}

/// Ends a consumer stream (its leases end now).
pub async fn unsubscribe(broker: &Broker, consumer: Consumer) {
    broker.close_receive(&consumer.sub, consumer.id).await;
}

/// One lease round of up to `max` messages, leased for `invisible`, with no
/// flow-control limit in the way.
pub async fn lease_round(
    broker: &Broker,
    consumer: &Consumer,
    invisible: Duration,
    max: usize,
) -> LeaseRound {
    let limits = ReceiveLimits {
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
        invisible,
    };
    lease_within(broker, consumer, limits, max).await
}

/// One lease round of up to `max` messages within a stream's flow-control
/// `limits` (what it may hold leased at once).
pub async fn lease_within(
    broker: &Broker,
    consumer: &Consumer,
    limits: ReceiveLimits,
    max: usize,
) -> LeaseRound {
    broker
        .lease(&consumer.sub, consumer.id, limits, max)
        .await
        .expect("lease round")
}

/// A lease long enough that it never runs out during a test.
pub const LONG_LEASE: Duration = Duration::from_secs(600);

/// Everything due now, leased for [`LONG_LEASE`].
pub async fn lease_all(broker: &Broker, consumer: &Consumer) -> Vec<Delivery> {
    lease_round(broker, consumer, LONG_LEASE, 1000)
        .await
        .deliveries
}

/// Leases (for `invisible`) until `n` messages came, failing if more come
/// in the same round or none come in time.
pub async fn lease_exactly(
    broker: &Broker,
    consumer: &Consumer,
    invisible: Duration,
    n: usize,
) -> Vec<Delivery> {
    let mut got = Vec::new();
    poll_until(&format!("{n} deliveries"), async || {
        got.extend(
            lease_round(broker, consumer, invisible, 1000)
                .await
                .deliveries,
        );
        (got.len() >= n).then_some(())
    })
    .await;
    assert_eq!(got.len(), n, "more deliveries than expected");
    got
}

/// Acks `head`, then each delivery that follows it, checking that no round
/// leases more than one (an ordered queue); returns the bodies in delivery
/// order, `head` first.
pub async fn ack_one_at_a_time(
    broker: &Broker,
    consumer: &Consumer,
    head: Delivery,
) -> Vec<String> {
    let mut order = vec![body_of(&head.record)];
    let mut current = vec![head];
    while let Some(d) = current.pop() {
        ack(broker, consumer, &d).unwrap();
        current = lease_all(broker, consumer).await;
        assert!(
            current.len() <= 1,
            "more than one in flight: {:?}",
            bodies(&current)
        );
        order.extend(bodies(&current));
    }
    order
}

pub fn ack(broker: &Broker, consumer: &Consumer, delivery: &Delivery) -> Result<()> {
    let mut results = broker.ack(
        &consumer.group,
        &consumer.topic,
        std::slice::from_ref(&delivery.receipt_handle),
    );
    assert_eq!(results.len(), 1, "one result per handle");
    results.remove(0)
}

pub fn ack_all(broker: &Broker, consumer: &Consumer, deliveries: &[Delivery]) {
    for d in deliveries {
        ack(broker, consumer, d).expect("acked");
    }
}

/// Moves a lease's end to `invisible` from now; returns the new end.
pub fn change_invisible(
    broker: &Broker,
    consumer: &Consumer,
    delivery: &Delivery,
    invisible: Duration,
) -> Result<i64> {
    broker.change_invisible(
        &consumer.group,
        &consumer.topic,
        &delivery.receipt_handle,
        invisible.as_millis() as u64,
        LeaseEnd::Backoff,
    )
}

/// Nacks a message that has attempts left; returns when it is delivered again.
pub async fn nack_for_retry(broker: &Broker, consumer: &Consumer, delivery: &Delivery) -> i64 {
    match nack(broker, consumer, delivery).await.expect("nacked") {
        NackOutcome::Redeliver { at } => at,
        NackOutcome::DeadLettered => panic!("dead-lettered with attempts left"),
    }
}

pub async fn nack(
    broker: &Broker,
    consumer: &Consumer,
    delivery: &Delivery,
) -> Result<NackOutcome> {
    broker
        .nack(&consumer.group, &consumer.topic, &delivery.receipt_handle)
        .await
}

// ---- progress ----------------------------------------------------------------------

/// The group's committed offset per queue of `topic` (describe group).
pub fn committed_offsets(broker: &Broker, group: &str, topic: &str) -> Vec<u64> {
    broker
        .describe_group(group)
        .expect("group described")
        .queues
        .iter()
        .filter(|q| q.topic == topic)
        .map(|q| q.committed)
        .collect()
}

pub fn query_offset(broker: &Broker, group: &str, topic: &str, queue_id: u32) -> GroupOffset {
    broker
        .query_offset(group, topic, queue_id)
        .expect("offsets of a known group and topic")
}

pub fn try_reset(
    broker: &Broker,
    group: &str,
    topic: &str,
    to: ResetTarget,
) -> Result<Vec<QueueProgress>> {
    broker.reset_offset(group, topic, to)
}

pub fn reset(broker: &Broker, group: &str, topic: &str, to: ResetTarget) -> Vec<QueueProgress> {
    try_reset(broker, group, topic, to).expect("reset")
}

/// Saves progress, staged positions and producer windows now (as the
/// periodic save and a clean shutdown do).
pub fn save_metadata(broker: &Broker) {
    broker.persist_offsets().expect("metadata saved");
}

// ---- reading topics ----------------------------------------------------------------

/// One pull of up to 100 messages from `offset`, without waiting.
pub async fn pull_filtered(
    broker: &Broker,
    topic: &str,
    queue_id: u32,
    offset: u64,
    filter: &FilterSpec,
) -> Pulled {
    try_pull(broker, "reader", topic, queue_id, offset, filter)
        .await
        .expect("pull")
}

/// One pull of `group` of up to 100 messages from `offset`, or the refusal.
pub async fn try_pull(
    broker: &Broker,
    group: &str,
    topic: &str,
    queue_id: u32,
    offset: u64,
    filter: &FilterSpec,
) -> Result<Pulled> {
    broker
        .pull(PullSpec {
            group,
            topic,
            queue_id,
            offset,
            max_messages: 100,
            max_bytes: 1 << 20,
            wait: Duration::ZERO,
            filter,
            claim: Claim::Take,
        })
        .await
}

/// A pull member's heartbeat naming `topics`.
pub fn heartbeat(broker: &Broker, group: &str, client_id: &str, topics: &[&str]) -> Result<()> {
    broker
        .heartbeat(
            group,
            client_id,
            MemberKind::Pull,
            topics.iter().map(|t| t.to_string()).collect(),
        )
        .map(|_| ())
}

/// Every record of a queue, read with pull (which moves no group's progress).
pub async fn read_queue(broker: &Broker, topic: &str, queue_id: u32) -> Vec<Record> {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let pulled = pull_filtered(broker, topic, queue_id, offset, &FilterSpec::all()).await;
        records.extend(pulled.deliveries.into_iter().map(|d| d.record));
        if pulled.next_offset >= pulled.max_offset {
            return records;
        }
        offset = pulled.next_offset;
    }
}

/// The bodies of every record of a queue, in order.
pub async fn queue_bodies(broker: &Broker, topic: &str, queue_id: u32) -> Vec<String> {
    read_queue(broker, topic, queue_id)
        .await
        .iter()
        .map(body_of)
        .collect()
}

/// Waits until queue `queue_id` of `topic` holds `n` records; returns them.
pub async fn queue_until(broker: &Broker, topic: &str, queue_id: u32, n: usize) -> Vec<Record> {
    poll_until(&format!("{n} records in {topic}/{queue_id}"), async || {
        let records = read_queue(broker, topic, queue_id).await;
        (records.len() >= n).then_some(records)
    })
    .await
}

pub fn body_of(record: &Record) -> String {
    String::from_utf8(record.body.to_vec()).expect("utf-8 body")
}

pub fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| body_of(&d.record)).collect()
}

// ---- transactions ------------------------------------------------------------------

pub async fn end_transaction(
    broker: &Arc<Broker>,
    topic: &str,
    receipt: &SendReceipt,
    producer_group: &str,
    resolution: Resolution,
) -> Result<()> {
    broker
        .end_transaction(topic, &receipt.transaction_id, producer_group, resolution)
        .await
}

/// A checker stream of a producer group.
pub fn add_checker(broker: &Broker, producer_group: &str) -> mpsc::Receiver<TransactionCheck> {
    broker
        .add_checker(
            producer_group,
            "checker",
            std::sync::Arc::new(|_: &str| true),
        )
        .expect("checker registered")
        .1
}

// ---- replicated metadata -------------------------------------------------------------

/// Makes a replica the master (as `AssignRole` does).
pub async fn promote(broker: &Arc<Broker>) {
    broker.promote().await.expect("promoted");
}

/// Appends a master's queued metadata records to its log now.
pub async fn flush_metadata_log(broker: &Broker) {
    broker
        .flush_metadata_log()
        .await
        .expect("metadata records appended");
}

/// Applies the metadata records a replica's log holds beyond what it
/// applied, and derives dedupe windows and staged messages from its records.
pub fn apply_replicated(broker: &Broker) -> AppliedMetadata {
    broker
        .follow_replicated_log()
        .expect("replicated log applied")
}
