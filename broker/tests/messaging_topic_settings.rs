//! A topic's own settings: the largest message it takes (on every send path)
//! and its retention on the commit log it shares with other topics; both
//! survive a restart and can be changed on a live topic.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::api::{
    bodies, create_group, create_topic, describe_topic, lease_all, message, pull_filtered,
    save_metadata, send, send_batch, subscribe, unsubscribe, upsert_topic,
};
use common::broker::{Loops, Shutdown, TestBroker, messaging_config, wait_past};
use dduomq_broker::filter::FilterSpec;
use dduomq_broker::messaging::error::BrokerError;
use dduomq_broker::messaging::topic_settings::TopicSettings;
use dduomq_broker::messaging::{Broker, Schedule, SendMessage, SendReceipt};
use dduomq_broker::store::{MessageType, Store, StoreConfig, StoreError};
use dduomq_proto::Reason;

/// The record header every encoded message carries, counted by the limit.
const HEADER: usize = 72;

fn open(dir: &std::path::Path) -> TestBroker {
    TestBroker::open(dir, messaging_config(), Loops::Stopped)
}

fn limited(max_message_bytes: u32) -> TopicSettings {
    TopicSettings {
        max_message_bytes: Some(max_message_bytes),
        ..TopicSettings::default()
    }
}

fn retained(retention: Duration) -> TopicSettings {
    TopicSettings {
        retention_ms: Some(retention.as_millis() as u64),
        ..TopicSettings::default()
    }
}

/// A message to `topic` whose body is `len` bytes of `x`.
fn sized(topic: &str, len: usize) -> SendMessage {
    SendMessage {
        body: Bytes::from(vec![b'x'; len]),
        ..message(topic, "")
    }
}

/// The refusal of an oversize message, checked for its reason and text.
fn assert_too_large(refused: BrokerError, size: usize, topic: &str, max: u32) {
    assert_eq!(refused.code(), Reason::MessageTooLarge, "{refused}");
    assert_eq!(
        refused.to_string(),
        format!(
            "message is {size} bytes; topic {topic:?} takes at most {max} (its max_message_bytes)"
        )
    );
}

/// The max offset of every queue of `topic`.
fn max_offsets(broker: &Broker, topic: &str) -> Vec<u64> {
    describe_topic(broker, topic)
        .queues
        .iter()
        .map(|q| q.max_offset)
        .collect()
}

#[tokio::test]
async fn an_oversize_message_is_refused_on_every_send_path_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let broker = &b.broker;
    upsert_topic(broker, "small", 1, MessageType::Normal, limited(400)).unwrap();
    upsert_topic(broker, "later", 1, MessageType::Delay, limited(400)).unwrap();
    upsert_topic(broker, "pay", 1, MessageType::Transaction, limited(400)).unwrap();
    // The limit counts the encoded record: header, topic name and body here.
    let fits = 400 - HEADER - "small".len();
    send(broker, sized("small", fits)).await.unwrap();
    let refused = send(broker, sized("small", fits + 1)).await.unwrap_err();
    assert_too_large(refused, 401, "small", 400);
    // A batch holding one oversize message is refused whole.
    let refused = send_batch(broker, vec![sized("small", 10), sized("small", 500)])
        .await
        .unwrap_err();
    assert_too_large(refused, HEADER + 5 + 500, "small", 400);
    assert_eq!(max_offsets(broker, "small"), [1]);
    // Staged messages count as they are stored in their own topic.
    let delayed = SendMessage {
        schedule: Schedule::After(60_000),
        ..sized("later", 400 - HEADER - "later".len() + 1)
    };
    assert_too_large(send(broker, delayed).await.unwrap_err(), 401, "later", 400);
    let half = SendMessage {
        transaction: Some("payments".into()),
        ..sized("pay", 400 - HEADER - "pay".len() + 1)
    };
    assert_too_large(send(broker, half).await.unwrap_err(), 401, "pay", 400);
    let staged_tail = b.store().stats().commit_log_max;
    let fitting_half = SendMessage {
        transaction: Some("payments".into()),
        ..sized("pay", 400 - HEADER - "pay".len())
    };
    send(broker, fitting_half).await.unwrap();
    assert!(b.store().stats().commit_log_max > staged_tail);
    b.close().await;
}

#[tokio::test]
async fn the_limit_can_change_on_a_live_topic_and_never_exceeds_the_brokers() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let broker = &b.broker;
    upsert_topic(broker, "orders", 2, MessageType::Normal, limited(1024)).unwrap();
    let body = 2048;
    let size = HEADER + "orders".len() + body;
    assert_too_large(
        send(broker, sized("orders", body)).await.unwrap_err(),
        size,
        "orders",
        1024,
    );
    // Raised: the same message fits.
    let raised = upsert_topic(broker, "orders", 2, MessageType::Normal, limited(4096)).unwrap();
    assert_eq!(raised.settings, limited(4096));
    send(broker, sized("orders", body)).await.unwrap();
    // Back to the broker's limit (16 KiB in tests), which no topic may exceed.
    upsert_topic(
        broker,
        "orders",
        2,
        MessageType::Normal,
        TopicSettings::default(),
    )
    .unwrap();
    send(broker, sized("orders", 8192)).await.unwrap();
    let refused =
        upsert_topic(broker, "orders", 2, MessageType::Normal, limited(16385)).unwrap_err();
    assert_eq!(refused.code(), Reason::InvalidArgument);
    assert_eq!(
        refused.to_string(),
        "invalid max_message_bytes: 16385 is more than this broker takes: its max_record_size_bytes is 16384"
    );
    // A plain create (as auto-creation or growing does) keeps the settings.
    upsert_topic(broker, "orders", 2, MessageType::Normal, limited(512)).unwrap();
    create_topic(broker, "orders", 3, MessageType::Normal);
    assert_eq!(
        describe_topic(broker, "orders").topic.settings,
        limited(512)
    );
    b.close().await;
}

#[tokio::test]
async fn expired_messages_are_not_delivered_while_a_longer_retention_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(dir.path());
    let hour = retained(Duration::from_secs(3600));
    upsert_topic(&b.broker, "short", 1, MessageType::Normal, hour).unwrap();
    upsert_topic(&b.broker, "long", 1, MessageType::Normal, hour).unwrap();
    create_group(&b.broker, "audit", 16, &[20]);
    let mut last: Option<SendReceipt> = None;
    for (topic, body) in [("short", "a"), ("long", "x"), ("short", "b"), ("long", "y")] {
        last = Some(send(&b.broker, message(topic, body)).await.unwrap());
    }
    // Both topics share the log; after the shortened retention has passed
    // for every message, only "short" loses them.
    wait_past(last.unwrap().store_timestamp + 100).await;
    upsert_topic(
        &b.broker,
        "short",
        1,
        MessageType::Normal,
        retained(Duration::from_millis(100)),
    )
    .unwrap();
    let assert_expired = |b: &TestBroker| {
        let short = describe_topic(&b.broker, "short").queues[0];
        assert_eq!((short.min_offset, short.max_offset), (2, 2));
        let long = describe_topic(&b.broker, "long").queues[0];
        assert_eq!((long.min_offset, long.max_offset), (0, 2));
    };
    // Push: a new group gets nothing of "short", everything of "long".
    let short = subscribe(&b.broker, "audit", "short", "c1");
    assert!(lease_all(&b.broker, &short).await.is_empty());
    let long = subscribe(&b.broker, "audit", "long", "c1");
    assert_eq!(bodies(&lease_all(&b.broker, &long).await), ["x", "y"]);
    // Pull: the expired offsets are out of range.
    let pulled = b
        .broker
        .pull(dduomq_broker::messaging::PullSpec {
            group: "reader",
            topic: "short",
            queue_id: 0,
            offset: 0,
            max_messages: 10,
            max_bytes: 1 << 20,
            wait: Duration::ZERO,
            filter: &FilterSpec::all(),
            claim: dduomq_broker::messaging::Claim::Take,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            pulled,
            BrokerError::Store(StoreError::OffsetOutOfRange { min: 2, max: 2, .. })
        ),
        "{pulled}"
    );
    assert!(
        pull_filtered(&b.broker, "short", 0, 2, &FilterSpec::all())
            .await
            .deliveries
            .is_empty()
    );
    assert_expired(&b);
    unsubscribe(&b.broker, short).await;
    unsubscribe(&b.broker, long).await;

    // Settings survive a restart, and expired messages stay hidden.
    let b = b
        .restart(Shutdown::Clean, messaging_config(), Loops::Stopped)
        .await;
    assert_eq!(
        describe_topic(&b.broker, "short").topic.settings,
        retained(Duration::from_millis(100))
    );
    assert_eq!(describe_topic(&b.broker, "long").topic.settings, hour);
    assert_expired(&b);
    create_group(&b.broker, "audit2", 16, &[20]);
    let fresh = subscribe(&b.broker, "audit2", "short", "c2");
    assert!(lease_all(&b.broker, &fresh).await.is_empty());
    unsubscribe(&b.broker, fresh).await;
    b.close().await;
}

#[tokio::test]
async fn segments_stay_until_the_longest_retention_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's own retention is short; one topic keeps messages longer.
    let config = StoreConfig {
        retention: Duration::from_millis(50),
        ..StoreConfig::for_tests(dir.path())
    };
    let store = Arc::new(Store::open(config).unwrap());
    let broker = Arc::new(Broker::open(messaging_config(), store.clone(), None).unwrap());
    let hour = retained(Duration::from_secs(3600));
    upsert_topic(&broker, "keep", 1, MessageType::Normal, hour).unwrap();
    // About three 64 KiB segments.
    let mut last = None;
    for _ in 0..180 {
        last = Some(send(&broker, sized("keep", 1000)).await.unwrap());
    }
    assert!(store.stats().segments >= 3);
    wait_past(last.unwrap().store_timestamp + 50).await;
    // As the maintenance loop does: nothing staged holds the log back.
    save_metadata(&broker);
    assert_eq!(store.enforce_retention().unwrap().segments_deleted, 0);
    assert_eq!(describe_topic(&broker, "keep").queues[0].min_offset, 0);
    // Once no topic needs them, the broker's retention deletes them.
    upsert_topic(
        &broker,
        "keep",
        1,
        MessageType::Normal,
        retained(Duration::from_millis(10)),
    )
    .unwrap();
    let segments = store.stats().segments;
    let report = store.enforce_retention().unwrap();
    assert_eq!(report.segments_deleted, segments - 1);
    let keep = describe_topic(&broker, "keep").queues[0];
    assert_eq!((keep.min_offset, keep.max_offset), (180, 180));
}
