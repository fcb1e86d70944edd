//! What a broker restart must keep: delayed messages (delivered once, at their
//! time, whether they were due before or after the restart) and the
//! idempotent producers' windows (a retried send gets its first receipt).
//! Each restart is tried both clean and without the metadata saved.

mod common;

use std::time::Duration;

use common::api::{
    LONG_LEASE, bodies, body_of, create_group, create_topic, lease_exactly, message, queue_bodies,
    queue_until, read_queue, send, send_batch, subscribe,
};
use common::broker::{Loops, Shutdown, TestBroker, messaging_config};
use dduomq_broker::messaging::properties::{DELIVER_AT, ORIGIN_ID};
use dduomq_broker::messaging::{Schedule, SendMessage};
use dduomq_broker::store::{MessageType, now_millis};

const DELAYED: &str = "reminders";
const GROUP: &str = "notifier";

fn delay_broker(dir: &std::path::Path, loops: Loops) -> TestBroker {
    let b = TestBroker::open(dir, messaging_config(), loops);
    create_topic(&b.broker, DELAYED, 2, MessageType::Delay);
    create_group(&b.broker, GROUP, 16, &[20]);
    b
}

fn delayed(body: &str, queue_id: u32, delay: Duration) -> SendMessage {
    SendMessage {
        queue_id: Some(queue_id),
        schedule: Schedule::After(delay.as_millis() as u64),
        properties: vec![("kind".into(), "reminder".into())],
        ..message(DELAYED, body)
    }
}

#[tokio::test]
async fn a_delayed_message_is_delivered_at_its_time_with_its_producers_id() {
    let dir = tempfile::tempdir().unwrap();
    let b = delay_broker(dir.path(), Loops::Running);
    let before = now_millis();
    let receipt = send(&b.broker, delayed("later", 1, Duration::from_millis(300)))
        .await
        .unwrap();
    let after = now_millis();
    assert!((before + 300..=after + 300).contains(&receipt.deliver_at));
    assert_eq!(
        (receipt.topic.as_str(), receipt.queue_id, receipt.offset),
        (DELAYED, 1, 0)
    );
    let consumer = subscribe(&b.broker, GROUP, DELAYED, "c1");
    let got = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
    let record = &got[0].record;
    assert!(
        record.store_timestamp >= receipt.deliver_at,
        "released early"
    );
    assert_eq!(got[0].message_id, receipt.message_id);
    assert_eq!(body_of(record), "later");
    assert_eq!(
        (record.topic.as_str(), record.queue_id, record.queue_offset),
        (DELAYED, 1, 0)
    );
    let expected: Vec<(String, String)> = vec![
        ("kind".into(), "reminder".into()),
        (DELIVER_AT.name.into(), receipt.deliver_at.to_string()),
        (ORIGIN_ID.name.into(), receipt.message_id.clone()),
    ];
    assert_eq!(record.properties, expected);
    b.close().await;
}

#[tokio::test]
async fn delayed_messages_are_released_in_the_order_of_their_times() {
    let dir = tempfile::tempdir().unwrap();
    let b = delay_broker(dir.path(), Loops::Running);
    let at = now_millis() + 300;
    for (body, offset) in [("third", 200), ("first", 0), ("second", 100)] {
        let m = SendMessage {
            schedule: Schedule::At(at + offset),
            ..delayed(body, 0, Duration::ZERO)
        };
        send(&b.broker, m).await.unwrap();
    }
    let records = queue_until(&b.broker, DELAYED, 0, 3).await;
    let got: Vec<String> = records.iter().map(body_of).collect();
    assert_eq!(got, ["first", "second", "third"]);
    for (record, offset) in records.iter().zip([0, 100, 200]) {
        assert!(record.store_timestamp >= at + offset);
    }
    b.close().await;
}

/// A delayed message stored by a broker that went down `how` before its
/// time is delivered by the next one, once, at its time; one due much later
/// stays pending.
async fn delayed_survives_a_restart(how: Shutdown) {
    let dir = tempfile::tempdir().unwrap();
    // No delivery loop before the restart: nothing can be released early.
    let b = delay_broker(dir.path(), Loops::Stopped);
    let soon = send(&b.broker, delayed("soon", 0, Duration::from_millis(400)))
        .await
        .unwrap();
    let later = send(&b.broker, delayed("later", 0, Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(read_queue(&b.broker, DELAYED, 0).await.len(), 0);
    let b = b.restart(how, messaging_config(), Loops::Running).await;
    let consumer = subscribe(&b.broker, GROUP, DELAYED, "c1");
    let got = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
    assert_eq!(bodies(&got), ["soon"]);
    assert_eq!(got[0].message_id, soon.message_id);
    assert!(
        got[0].record.store_timestamp >= soon.deliver_at,
        "released early"
    );
    assert_eq!(queue_bodies(&b.broker, DELAYED, 0).await, ["soon"]);
    assert!(
        later.deliver_at > now_millis(),
        "the later one is still ahead"
    );
    b.close().await;
}

#[tokio::test]
async fn a_delayed_message_stored_before_a_clean_restart_is_delivered_after_it() {
    delayed_survives_a_restart(Shutdown::Clean).await;
}

#[tokio::test]
async fn a_delayed_message_stored_before_a_crash_is_delivered_after_it() {
    delayed_survives_a_restart(Shutdown::WithoutSaving).await;
}

/// A delayed message released before a restart is not released again after
/// it: the next broker releases only what came after.
async fn released_stays_released(how: Shutdown) {
    let dir = tempfile::tempdir().unwrap();
    let b = delay_broker(dir.path(), Loops::Running);
    send(&b.broker, delayed("before", 0, Duration::from_millis(50)))
        .await
        .unwrap();
    queue_until(&b.broker, DELAYED, 0, 1).await;
    let b = b.restart(how, messaging_config(), Loops::Running).await;
    // Released after anything still pending from before (that would be due
    // at once), so a repeat of "before" would come first.
    send(&b.broker, delayed("after", 0, Duration::from_millis(100)))
        .await
        .unwrap();
    queue_until(&b.broker, DELAYED, 0, 2).await;
    assert_eq!(
        queue_bodies(&b.broker, DELAYED, 0).await,
        ["before", "after"]
    );
    b.close().await;
}

#[tokio::test]
async fn a_delayed_message_released_before_a_clean_restart_is_not_released_again() {
    released_stays_released(Shutdown::Clean).await;
}

#[tokio::test]
async fn a_delayed_message_released_before_a_crash_is_not_released_again() {
    released_stays_released(Shutdown::WithoutSaving).await;
}

const PLAIN: &str = "payments";

fn idempotent(body: &str, sequence: u64) -> SendMessage {
    SendMessage {
        queue_id: Some(0),
        producer_id: "producer-7".into(),
        sequence,
        ..message(PLAIN, body)
    }
}

/// Sends of an idempotent producer, retried after the broker went down
/// `how`, get their first receipts and are stored once.
async fn dedupe_survives_a_restart(how: Shutdown) {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    create_topic(&b.broker, PLAIN, 1, MessageType::Normal);
    let mut first = Vec::new();
    for (sequence, body) in [(1, "x"), (2, "y"), (3, "z")] {
        first.push(send(&b.broker, idempotent(body, sequence)).await.unwrap());
    }
    // Before the restart too: a retry is not stored again.
    assert_eq!(send(&b.broker, idempotent("x", 1)).await.unwrap(), first[0]);
    let b = b.restart(how, messaging_config(), Loops::Stopped).await;
    // The retry's body does not matter: the sequence names the send.
    let retried = send(&b.broker, idempotent("y-retried", 2)).await.unwrap();
    assert_eq!(retried, first[1]);
    let retried_batch = send_batch(&b.broker, vec![idempotent("z", 3), idempotent("w", 4)])
        .await
        .unwrap();
    assert_eq!(retried_batch[0], first[2]);
    assert_eq!(retried_batch[1].offset, 3, "a new sequence is stored");
    assert_eq!(
        queue_bodies(&b.broker, PLAIN, 0).await,
        ["x", "y", "z", "w"]
    );
    b.close().await;
}

#[tokio::test]
async fn an_idempotent_retry_after_a_clean_restart_gets_the_first_receipt() {
    dedupe_survives_a_restart(Shutdown::Clean).await;
}

#[tokio::test]
async fn an_idempotent_retry_after_a_crash_gets_the_first_receipt() {
    dedupe_survives_a_restart(Shutdown::WithoutSaving).await;
}

#[tokio::test]
async fn an_idempotent_delayed_send_retried_after_a_restart_is_released_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = delay_broker(dir.path(), Loops::Stopped);
    let send_it = || SendMessage {
        producer_id: "producer-9".into(),
        sequence: 1,
        ..delayed("once", 0, Duration::from_millis(200))
    };
    let first = send(&b.broker, send_it()).await.unwrap();
    let b = b
        .restart(Shutdown::WithoutSaving, messaging_config(), Loops::Running)
        .await;
    let retried = send(&b.broker, send_it()).await.unwrap();
    assert_eq!(retried, first, "same id, same delivery time");
    // One copy, then nothing more: a second would be due at the same time.
    send(&b.broker, delayed("marker", 0, Duration::from_millis(300)))
        .await
        .unwrap();
    queue_until(&b.broker, DELAYED, 0, 2).await;
    assert_eq!(
        queue_bodies(&b.broker, DELAYED, 0).await,
        ["once", "marker"]
    );
    b.close().await;
}
