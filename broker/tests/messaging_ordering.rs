//! Which consumer gets what, in which order: FIFO topics (one message in
//! flight per queue, order kept across nacks) and gray-release lanes.

mod common;

use common::api::{
    LONG_LEASE, ack, ack_one_at_a_time, bodies, body_of, create_group, create_topic, lease_all,
    lease_exactly, lease_round, message, nack, nack_for_retry, queue_bodies, send, subscribe,
    subscribe_with, unsubscribe,
};
use common::broker::{Loops, TestBroker, messaging_config};
use dduomq_broker::filter::FilterSpec;
use dduomq_broker::messaging::properties::{LANE, SHARDING_KEY};
use dduomq_broker::messaging::{NackOutcome, SendMessage};
use dduomq_broker::store::{MessageType, now_millis};

const GROUP: &str = "workers";

/// Sends `body` to `queue_id` of the FIFO topic `fifo` with a sharding key.
async fn send_ordered(b: &TestBroker, key: &str, queue_id: u32, body: &str) {
    let m = SendMessage {
        sharding_key: key.into(),
        queue_id: Some(queue_id),
        ..message("fifo", body)
    };
    send(&b.broker, m).await.unwrap();
}

#[tokio::test]
async fn a_fifo_queue_has_one_message_in_flight_and_keeps_its_order_across_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    create_topic(&b.broker, "fifo", 2, MessageType::Fifo);
    create_group(&b.broker, GROUP, 16, &[30]);
    for body in ["a1", "a2", "a3"] {
        send_ordered(&b, "a", 0, body).await;
    }
    for body in ["b1", "b2"] {
        send_ordered(&b, "b", 1, body).await;
    }
    let consumer = subscribe(&b.broker, GROUP, "fifo", "c1");
    // One per queue, however many are asked for.
    let mut first = lease_all(&b.broker, &consumer).await;
    first.sort_by_key(|d| d.record.queue_id);
    assert_eq!(bodies(&first), ["a1", "b1"]);
    let key_of = |d: &dduomq_broker::messaging::Delivery| {
        d.record
            .properties
            .iter()
            .find(|(k, _)| k == SHARDING_KEY.name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(key_of(&first[0]).as_deref(), Some("a"));
    assert!(lease_all(&b.broker, &consumer).await.is_empty());
    // The other queue is not held up by a1; a nacked a1 comes back before
    // anything after it in its queue.
    let (a1, b1) = (&first[0], &first[1]);
    ack(&b.broker, &consumer, b1).unwrap();
    let b2 = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&b2), ["b2"]);
    let redeliver_at = nack_for_retry(&b.broker, &consumer, a1).await;
    let again = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
    assert!(now_millis() >= redeliver_at);
    assert_eq!(bodies(&again), ["a1"]);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].message_id, a1.message_id);
    ack(&b.broker, &consumer, &b2[0]).unwrap();
    // The rest of queue 0, strictly one at a time.
    let head = again.into_iter().next().unwrap();
    let order = ack_one_at_a_time(&b.broker, &consumer, head).await;
    assert_eq!(order, ["a1", "a2", "a3"]);
    b.close().await;
}

#[tokio::test]
async fn a_fifo_message_held_by_an_expired_lease_blocks_its_queue_until_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    create_topic(&b.broker, "fifo", 1, MessageType::Fifo);
    create_group(&b.broker, GROUP, 16, &[30]);
    for body in ["k1", "k2"] {
        send_ordered(&b, "k", 0, body).await;
    }
    let consumer = subscribe(&b.broker, GROUP, "fifo", "c1");
    let short = std::time::Duration::from_millis(60);
    let first = lease_exactly(&b.broker, &consumer, short, 1).await;
    assert_eq!(bodies(&first), ["k1"]);
    // Until it expires and comes back, nothing after it is delivered.
    let again = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
    assert_eq!(bodies(&again), ["k1"]);
    assert_eq!(again[0].attempt, 2);
    assert!(lease_all(&b.broker, &consumer).await.is_empty());
    ack(&b.broker, &consumer, &again[0]).unwrap();
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["k2"]);
    b.close().await;
}

#[tokio::test]
async fn a_dead_lettered_fifo_message_lets_the_next_one_through() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Stopped);
    create_topic(&b.broker, "fifo", 1, MessageType::Fifo);
    create_group(&b.broker, GROUP, 1, &[30]);
    for body in ["poison", "next"] {
        send_ordered(&b, "k", 0, body).await;
    }
    let consumer = subscribe(&b.broker, GROUP, "fifo", "c1");
    let first = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&first), ["poison"]);
    assert_eq!(
        nack(&b.broker, &consumer, &first[0]).await.unwrap(),
        NackOutcome::DeadLettered
    );
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["next"]);
    assert_eq!(queue_bodies(&b.broker, "%DLQ%workers", 0).await, ["poison"]);
    b.close().await;
}

/// Sends `body` to the one-queue topic `t` in `lane` ("" = base).
async fn send_in_lane(b: &TestBroker, lane: &str, body: &str) {
    let m = SendMessage {
        lane: lane.into(),
        ..message("t", body)
    };
    send(&b.broker, m).await.unwrap();
}

fn lanes_broker(dir: &std::path::Path) -> TestBroker {
    let b = TestBroker::open(dir, messaging_config(), Loops::Stopped);
    create_topic(&b.broker, "t", 1, MessageType::Normal);
    create_group(&b.broker, GROUP, 16, &[20]);
    b
}

#[tokio::test]
async fn a_lanes_messages_go_to_its_consumers_and_base_messages_to_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let b = lanes_broker(dir.path());
    let base = subscribe(&b.broker, GROUP, "t", "base");
    let gray = subscribe_with(&b.broker, GROUP, "t", "gray", FilterSpec::all(), "gray");
    for (lane, body) in [
        ("", "base1"),
        ("gray", "gray1"),
        ("", "base2"),
        ("gray", "gray2"),
    ] {
        send_in_lane(&b, lane, body).await;
    }
    // The base consumer leases first and passes the lane's messages over.
    let for_base = lease_all(&b.broker, &base).await;
    assert_eq!(bodies(&for_base), ["base1", "base2"]);
    let for_gray = lease_all(&b.broker, &gray).await;
    assert_eq!(bodies(&for_gray), ["gray1", "gray2"]);
    assert!(
        for_gray.iter().all(|d| d.attempt == 1),
        "a pass-over is no delivery"
    );
    assert!(
        for_gray[0]
            .record
            .properties
            .contains(&(LANE.name.to_string(), "gray".to_string()))
    );
    assert!(lease_all(&b.broker, &base).await.is_empty());
    assert!(lease_all(&b.broker, &gray).await.is_empty());
    b.close().await;
}

#[tokio::test]
async fn a_lane_consumer_takes_only_its_lane_even_leasing_first() {
    let dir = tempfile::tempdir().unwrap();
    let b = lanes_broker(dir.path());
    let base = subscribe(&b.broker, GROUP, "t", "base");
    let gray = subscribe_with(&b.broker, GROUP, "t", "gray", FilterSpec::all(), "gray");
    for (lane, body) in [("", "base1"), ("gray", "gray1"), ("", "base2")] {
        send_in_lane(&b, lane, body).await;
    }
    assert_eq!(bodies(&lease_all(&b.broker, &gray).await), ["gray1"]);
    assert_eq!(
        bodies(&lease_all(&b.broker, &base).await),
        ["base1", "base2"]
    );
    b.close().await;
}

#[tokio::test]
async fn a_lane_without_consumers_falls_back_to_the_base_lane() {
    let dir = tempfile::tempdir().unwrap();
    let b = lanes_broker(dir.path());
    let base = subscribe(&b.broker, GROUP, "t", "base");
    for (lane, body) in [("", "base1"), ("canary", "canary1")] {
        send_in_lane(&b, lane, body).await;
    }
    assert_eq!(
        bodies(&lease_all(&b.broker, &base).await),
        ["base1", "canary1"]
    );
    b.close().await;
}

#[tokio::test]
async fn a_lanes_leases_go_to_the_base_when_its_last_consumer_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let b = lanes_broker(dir.path());
    let base = subscribe(&b.broker, GROUP, "t", "base");
    let gray = subscribe_with(&b.broker, GROUP, "t", "gray", FilterSpec::all(), "gray");
    send_in_lane(&b, "gray", "gray1").await;
    send_in_lane(&b, "gray", "gray2").await;
    let held = lease_round(&b.broker, &gray, LONG_LEASE, 1)
        .await
        .deliveries;
    assert_eq!(bodies(&held), ["gray1"]);
    assert!(
        lease_all(&b.broker, &base).await.is_empty(),
        "gray2 waits for its lane"
    );
    unsubscribe(&b.broker, gray).await;
    let taken = lease_exactly(&b.broker, &base, LONG_LEASE, 2).await;
    let mut got: Vec<(String, u32)> = taken
        .iter()
        .map(|d| (body_of(&d.record), d.attempt))
        .collect();
    got.sort();
    assert_eq!(got, [("gray1".to_string(), 2), ("gray2".to_string(), 1)]);
    b.close().await;
}
