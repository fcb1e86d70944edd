//! Push consumption in process: leases, acks, nacks, lease expiry, retry
//! backoff and dead-lettering, on a real broker over a tempdir store.

mod common;

use std::time::Duration;

use common::api::{
    LONG_LEASE, ack, bodies, body_of, change_invisible, create_group, create_topic, lease_all,
    lease_exactly, lease_round, lease_within, message, nack, nack_for_retry, query_offset,
    read_queue, send, send_bodies, subscribe, unsubscribe,
};
use common::broker::{Loops, TestBroker, messaging_config, wait_past};
use dduomq_broker::messaging::error::BrokerError;
use dduomq_broker::messaging::properties::{
    DLQ_DELIVERY_ATTEMPTS, DLQ_ORIGIN_MESSAGE_ID, DLQ_ORIGIN_OFFSET, DLQ_ORIGIN_QUEUE,
    DLQ_ORIGIN_TOPIC,
};
use dduomq_broker::messaging::{NackOutcome, ReceiveLimits, SendMessage};
use dduomq_broker::store::{MessageType, now_millis};

const TOPIC: &str = "orders";
const GROUP: &str = "billing";

/// A broker with a one-queue topic and a group that retries after `backoff_ms`
/// and dead-letters after `max_attempts` deliveries.
fn broker_with(dir: &std::path::Path, max_attempts: u32, backoff_ms: &[u64]) -> TestBroker {
    let b = TestBroker::open(dir, messaging_config(), Loops::Stopped);
    create_topic(&b.broker, TOPIC, 1, MessageType::Normal);
    create_group(&b.broker, GROUP, max_attempts, backoff_ms);
    b
}

fn is_stale_handle<T: std::fmt::Debug>(result: Result<T, BrokerError>) -> bool {
    matches!(result, Err(BrokerError::InvalidReceiptHandle(_)))
}

#[tokio::test]
async fn a_lease_hands_out_each_message_once_as_it_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 16, &[20]);
    let mut receipts = Vec::new();
    for i in 0..3 {
        let m = SendMessage {
            tag: format!("tag{i}"),
            keys: vec![format!("key{i}"), "shared".into()],
            properties: vec![("n".into(), i.to_string())],
            born_timestamp: 1000 + i,
            ..message(TOPIC, &format!("body-{i}"))
        };
        receipts.push(send(&b.broker, m).await.unwrap());
    }
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let before = now_millis();
    let leased = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&leased), ["body-0", "body-1", "body-2"]);
    for (i, (d, r)) in leased.iter().zip(&receipts).enumerate() {
        assert_eq!(d.message_id, r.message_id);
        assert_eq!(d.attempt, 1);
        assert_eq!(d.record.topic, TOPIC);
        assert_eq!(d.record.queue_id, 0);
        assert_eq!(d.record.queue_offset, i as u64);
        assert_eq!(r.offset, i as u64);
        assert_eq!(d.record.tag, format!("tag{i}"));
        assert_eq!(d.record.keys, [format!("key{i}"), "shared".to_string()]);
        assert_eq!(d.record.properties, [("n".to_string(), i.to_string())]);
        assert_eq!(d.record.born_timestamp, 1000 + i as i64);
        assert!(d.invisible_until >= before + LONG_LEASE.as_millis() as i64);
    }
    // Leased messages are nobody else's until their lease ends.
    let other = subscribe(&b.broker, GROUP, TOPIC, "c2");
    assert!(lease_all(&b.broker, &other).await.is_empty());
    assert!(lease_all(&b.broker, &consumer).await.is_empty());
    b.close().await;
}

#[tokio::test]
async fn a_round_takes_at_most_what_it_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 16, &[20]);
    send_bodies(&b.broker, TOPIC, 0, &["a", "b", "c", "d", "e"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let first = lease_round(&b.broker, &consumer, LONG_LEASE, 2).await;
    assert_eq!(bodies(&first.deliveries), ["a", "b"]);
    let second = lease_round(&b.broker, &consumer, LONG_LEASE, 2).await;
    assert_eq!(bodies(&second.deliveries), ["c", "d"]);
    let third = lease_round(&b.broker, &consumer, LONG_LEASE, 2).await;
    assert_eq!(bodies(&third.deliveries), ["e"]);
    b.close().await;
}

#[tokio::test]
async fn a_stream_holds_no_more_than_its_flow_control_limits() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 16, &[20]);
    // Bodies of 10, 10, 30 and 10 bytes.
    let sized = [
        "aaaaaaaaaa",
        "bbbbbbbbbb",
        "cccccccccccccccccccccccccccccc",
        "dddddddddd",
    ];
    send_bodies(&b.broker, TOPIC, 0, &sized).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let limits = |max_messages, max_bytes| ReceiveLimits {
        max_messages,
        max_bytes,
        invisible: LONG_LEASE,
    };
    let first = lease_within(&b.broker, &consumer, limits(2, u64::MAX), 10).await;
    assert_eq!(bodies(&first.deliveries), &sized[..2]);
    assert!(
        lease_within(&b.broker, &consumer, limits(2, u64::MAX), 10)
            .await
            .deliveries
            .is_empty()
    );
    ack(&b.broker, &consumer, &first.deliveries[0]).unwrap();
    // One message leased (10 bytes): c's 30 would pass 35 bytes.
    let capped = lease_within(&b.broker, &consumer, limits(10, 35), 10).await;
    assert!(capped.deliveries.is_empty());
    ack(&b.broker, &consumer, &first.deliveries[1]).unwrap();
    // Nothing leased: the first message is always allowed, whatever its size.
    let big = lease_within(&b.broker, &consumer, limits(10, 5), 10).await;
    assert_eq!(bodies(&big.deliveries), &sized[2..3]);
    b.close().await;
}

#[tokio::test]
async fn an_extended_lease_outlives_its_first_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 16, &[20]);
    send_bodies(&b.broker, TOPIC, 0, &["long-job"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let leased = lease_exactly(&b.broker, &consumer, Duration::from_millis(100), 1).await;
    let before = now_millis();
    let until = change_invisible(&b.broker, &consumer, &leased[0], LONG_LEASE).unwrap();
    assert!(until >= before + LONG_LEASE.as_millis() as i64);
    wait_past(leased[0].invisible_until + 20).await;
    let round = lease_round(&b.broker, &consumer, LONG_LEASE, 10).await;
    assert!(round.deliveries.is_empty(), "still leased");
    assert_eq!(round.wake_at, Some(until));
    ack(&b.broker, &consumer, &leased[0]).unwrap();
    b.close().await;
}

#[tokio::test]
async fn acks_finish_messages_and_move_the_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 16, &[20]);
    send_bodies(&b.broker, TOPIC, 0, &["a", "b", "c"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let leased = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&leased), ["a", "b", "c"]);
    let committed = || query_offset(&b.broker, GROUP, TOPIC, 0).committed;
    assert_eq!(committed(), 0);
    // Out of order: the committed offset waits for the oldest open message.
    ack(&b.broker, &consumer, &leased[1]).unwrap();
    assert_eq!(committed(), 0);
    ack(&b.broker, &consumer, &leased[0]).unwrap();
    assert_eq!(committed(), 2);
    // A handle is good for one ack.
    assert!(is_stale_handle(ack(&b.broker, &consumer, &leased[0])));
    ack(&b.broker, &consumer, &leased[2]).unwrap();
    let offsets = query_offset(&b.broker, GROUP, TOPIC, 0);
    assert_eq!(
        (offsets.committed, offsets.min_offset, offsets.max_offset),
        (3, 0, 3)
    );
    let after = lease_round(&b.broker, &consumer, LONG_LEASE, 10).await;
    assert!(after.deliveries.is_empty());
    assert_eq!(after.wake_at, None, "nothing is waiting");
    b.close().await;
}

#[tokio::test]
async fn a_nack_redelivers_after_each_configured_backoff() {
    let dir = tempfile::tempdir().unwrap();
    // Redelivery 2 after 150 ms, 3 after 300 ms, later ones after 300 ms too.
    let b = broker_with(dir.path(), 16, &[150, 300]);
    send_bodies(&b.broker, TOPIC, 0, &["retry-me"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let mut delivery = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1)
        .await
        .remove(0);
    let id = delivery.message_id.clone();
    for (attempt, backoff) in [(1, 150), (2, 300), (3, 300)] {
        assert_eq!(delivery.attempt, attempt);
        let before = now_millis();
        let redeliver_at = nack_for_retry(&b.broker, &consumer, &delivery).await;
        let after = now_millis();
        assert!(
            (before + backoff..=after + backoff).contains(&redeliver_at),
            "attempt {attempt}: redelivery at {redeliver_at} is not {backoff} ms after the nack ({before}..={after})"
        );
        // The nacked handle is spent.
        assert!(is_stale_handle(nack(&b.broker, &consumer, &delivery).await));
        let round = lease_round(&b.broker, &consumer, LONG_LEASE, 10).await;
        if round.deliveries.is_empty() {
            assert_eq!(round.wake_at, Some(redeliver_at));
        } else {
            // Only a machine stalled for the whole backoff gets here.
            assert!(now_millis() >= redeliver_at);
        }
        let mut again = round.deliveries;
        if again.is_empty() {
            again = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
        }
        assert!(
            now_millis() >= redeliver_at,
            "redelivered before its backoff ran out"
        );
        assert_eq!(again.len(), 1);
        delivery = again.remove(0);
        assert_eq!(delivery.message_id, id);
        assert_eq!(body_of(&delivery.record), "retry-me");
    }
    assert_eq!(delivery.attempt, 4);
    ack(&b.broker, &consumer, &delivery).unwrap();
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 1);
    b.close().await;
}

#[tokio::test]
async fn an_expired_lease_is_redelivered_with_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 16, &[50]);
    send_bodies(&b.broker, TOPIC, 0, &["slow"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let invisible = Duration::from_millis(100);
    let first = lease_exactly(&b.broker, &consumer, invisible, 1)
        .await
        .remove(0);
    assert_eq!(first.attempt, 1);
    let second = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1)
        .await
        .remove(0);
    // The lease ran out, then the group's backoff for a first delivery passed.
    assert!(now_millis() >= first.invisible_until + 50);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(body_of(&second.record), "slow");
    assert_ne!(second.receipt_handle, first.receipt_handle);
    // The expired handle no longer acks; the new one does, once.
    assert!(is_stale_handle(ack(&b.broker, &consumer, &first)));
    ack(&b.broker, &consumer, &second).unwrap();
    assert!(is_stale_handle(ack(&b.broker, &consumer, &second)));
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 1);
    b.close().await;
}

#[tokio::test]
async fn a_closed_stream_gives_its_leases_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 16, &[20]);
    send_bodies(&b.broker, TOPIC, 0, &["a", "b"]).await;
    let leaving = subscribe(&b.broker, GROUP, TOPIC, "leaving");
    let staying = subscribe(&b.broker, GROUP, TOPIC, "staying");
    let held = lease_all(&b.broker, &leaving).await;
    assert_eq!(bodies(&held), ["a", "b"]);
    assert!(lease_all(&b.broker, &staying).await.is_empty());
    unsubscribe(&b.broker, leaving).await;
    let taken = lease_exactly(&b.broker, &staying, LONG_LEASE, 2).await;
    assert_eq!(bodies(&taken), ["a", "b"]);
    assert!(taken.iter().all(|d| d.attempt == 2));
    b.close().await;
}

#[tokio::test]
async fn the_last_nack_moves_the_message_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 3, &[10]);
    let m = SendMessage {
        tag: "t".into(),
        keys: vec!["k1".into()],
        properties: vec![("color".into(), "blue".into())],
        born_timestamp: 42,
        ..message(TOPIC, "poison")
    };
    let receipt = send(&b.broker, m).await.unwrap();
    send_bodies(&b.broker, TOPIC, 0, &["fine"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let mut leased = lease_exactly(&b.broker, &consumer, LONG_LEASE, 2).await;
    ack(&b.broker, &consumer, &leased.remove(1)).unwrap();
    let mut delivery = leased.remove(0);
    for attempt in 1..=3 {
        assert_eq!(delivery.attempt, attempt);
        let outcome = nack(&b.broker, &consumer, &delivery).await.unwrap();
        if attempt < 3 {
            assert!(matches!(outcome, NackOutcome::Redeliver { .. }));
            delivery = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1)
                .await
                .remove(0);
        } else {
            assert_eq!(outcome, NackOutcome::DeadLettered);
        }
    }
    let dlq = read_queue(&b.broker, "%DLQ%billing", 0).await;
    assert_eq!(dlq.len(), 1);
    let copy = &dlq[0];
    assert_eq!(body_of(copy), "poison");
    assert_eq!(copy.tag, "t");
    assert_eq!(copy.keys, ["k1"]);
    assert_eq!(copy.born_timestamp, 42);
    let expected: Vec<(String, String)> = [
        ("color", "blue"),
        (DLQ_ORIGIN_TOPIC.name, TOPIC),
        (DLQ_ORIGIN_QUEUE.name, "0"),
        (DLQ_ORIGIN_OFFSET.name, "0"),
        (DLQ_ORIGIN_MESSAGE_ID.name, receipt.message_id.as_str()),
        (DLQ_DELIVERY_ATTEMPTS.name, "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(copy.properties, expected);
    // Done for the group: nothing more to deliver, progress past it.
    let after = lease_round(&b.broker, &consumer, LONG_LEASE, 10).await;
    assert!(after.deliveries.is_empty());
    assert_eq!(after.wake_at, None);
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 2);
    assert_eq!(
        read_queue(&b.broker, TOPIC, 0).await.len(),
        2,
        "the original stays"
    );
    b.close().await;
}

#[tokio::test]
async fn a_lease_expiring_on_the_last_attempt_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_with(dir.path(), 1, &[10]);
    send_bodies(&b.broker, TOPIC, 0, &["never-acked"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let leased = lease_exactly(&b.broker, &consumer, Duration::from_millis(50), 1).await;
    assert_eq!(leased[0].attempt, 1);
    // Expired leases are handled by the next lease round.
    let dlq = common::broker::poll_until("the expired message in the DLQ", async || {
        let round = lease_round(&b.broker, &consumer, LONG_LEASE, 10).await;
        assert!(
            round.deliveries.is_empty(),
            "no redelivery after the last attempt"
        );
        let dlq = read_queue(&b.broker, "%DLQ%billing", 0).await;
        (!dlq.is_empty()).then_some(dlq)
    })
    .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(body_of(&dlq[0]), "never-acked");
    assert!(
        dlq[0]
            .properties
            .contains(&(DLQ_DELIVERY_ATTEMPTS.name.to_string(), "1".to_string()))
    );
    assert!(is_stale_handle(ack(&b.broker, &consumer, &leased[0])));
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 1);
    b.close().await;
}
