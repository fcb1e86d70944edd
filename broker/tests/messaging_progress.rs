//! A group's progress: resetting it (earliest, latest, a timestamp, an
//! offset), and keeping it across a restart of the broker.

mod common;

use common::api::{
    LONG_LEASE, ack, ack_all, bodies, create_group, create_topic, lease_all, lease_round,
    query_offset, reset, save_metadata, send_bodies, subscribe, try_reset,
};
use common::broker::{Loops, TestBroker, messaging_config, wait_past};
use dduomq_broker::messaging::{QueueProgress, ResetTarget};
use dduomq_broker::store::{MessageType, now_millis};

const TOPIC: &str = "ledger";
const GROUP: &str = "replica";

fn open(dir: &std::path::Path) -> TestBroker {
    TestBroker::open(dir, messaging_config(), Loops::Stopped)
}

fn setup(dir: &std::path::Path) -> TestBroker {
    let b = open(dir);
    create_topic(&b.broker, TOPIC, 1, MessageType::Normal);
    create_group(&b.broker, GROUP, 16, &[20]);
    b
}

fn progress(committed: u64, max_offset: u64) -> Vec<QueueProgress> {
    vec![QueueProgress {
        topic: TOPIC.into(),
        queue_id: 0,
        member: String::new(),
        committed,
        max_offset,
        in_flight: 0,
    }]
}

#[tokio::test]
async fn a_reset_moves_progress_to_earliest_latest_a_timestamp_or_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    send_bodies(&b.broker, TOPIC, 0, &["a", "b", "c"]).await;
    // Every later message is stored at or after `split`, every earlier one
    // before it.
    wait_past(now_millis()).await;
    let split = now_millis();
    send_bodies(&b.broker, TOPIC, 0, &["d", "e"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let all = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&all), ["a", "b", "c", "d", "e"]);
    ack_all(&b.broker, &consumer, &all);
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 5);

    let moved = reset(&b.broker, GROUP, TOPIC, ResetTarget::Timestamp(split));
    assert_eq!(moved, progress(3, 5));
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 3);
    let again = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&again), ["d", "e"]);
    assert!(
        again.iter().all(|d| d.attempt == 1),
        "a reset starts counting anew"
    );

    // Leases held across a reset end with it.
    assert_eq!(
        reset(&b.broker, GROUP, TOPIC, ResetTarget::Earliest),
        progress(0, 5)
    );
    assert!(matches!(
        ack(&b.broker, &consumer, &again[0]),
        Err(dduomq_broker::messaging::error::BrokerError::InvalidReceiptHandle(_))
    ));
    let from_start = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&from_start), ["a", "b", "c", "d", "e"]);

    assert_eq!(
        reset(&b.broker, GROUP, TOPIC, ResetTarget::Latest),
        progress(5, 5)
    );
    assert!(lease_all(&b.broker, &consumer).await.is_empty());
    send_bodies(&b.broker, TOPIC, 0, &["f"]).await;
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["f"]);

    assert_eq!(
        reset(&b.broker, GROUP, TOPIC, ResetTarget::Offset(2)),
        progress(2, 6)
    );
    assert_eq!(
        bodies(&lease_all(&b.broker, &consumer).await),
        ["c", "d", "e", "f"]
    );
    b.close().await;
}

#[tokio::test]
async fn a_reset_outside_the_queue_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    send_bodies(&b.broker, TOPIC, 0, &["a", "b"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let first = lease_round(&b.broker, &consumer, LONG_LEASE, 1)
        .await
        .deliveries;
    ack_all(&b.broker, &consumer, &first);
    for bad in [ResetTarget::Offset(3), ResetTarget::Offset(-1)] {
        assert!(try_reset(&b.broker, GROUP, TOPIC, bad).is_err(), "{bad:?}");
    }
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 1);
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["b"]);
    b.close().await;
}

#[tokio::test]
async fn progress_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    send_bodies(&b.broker, TOPIC, 0, &["a", "b", "c", "d"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let leased = lease_round(&b.broker, &consumer, LONG_LEASE, 3)
        .await
        .deliveries;
    assert_eq!(bodies(&leased), ["a", "b", "c"]);
    ack(&b.broker, &consumer, &leased[0]).unwrap();
    ack(&b.broker, &consumer, &leased[2]).unwrap();
    b.close().await;

    let b = open(dir.path());
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 1);
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let after = lease_all(&b.broker, &consumer).await;
    // The lease on b ended with the restart: its delivery counted.
    let seen: Vec<(String, u32)> = after
        .iter()
        .map(|d| (common::api::body_of(&d.record), d.attempt))
        .collect();
    assert_eq!(seen, [("b".to_string(), 2), ("d".to_string(), 1)]);
    ack_all(&b.broker, &consumer, &after);
    assert_eq!(query_offset(&b.broker, GROUP, TOPIC, 0).committed, 4);
    b.close().await;
}

#[tokio::test]
async fn progress_not_saved_before_a_crash_is_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    send_bodies(&b.broker, TOPIC, 0, &["a", "b"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    ack_all(&b.broker, &consumer, &lease_all(&b.broker, &consumer).await);
    save_metadata(&b.broker);
    send_bodies(&b.broker, TOPIC, 0, &["c"]).await;
    ack_all(&b.broker, &consumer, &lease_all(&b.broker, &consumer).await);
    b.kill().await;

    // At least once: what was saved stays done, the rest comes again.
    let b = open(dir.path());
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["c"]);
    b.close().await;
}

#[tokio::test]
async fn a_reset_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = setup(dir.path());
    send_bodies(&b.broker, TOPIC, 0, &["a", "b", "c"]).await;
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    ack_all(&b.broker, &consumer, &lease_all(&b.broker, &consumer).await);
    reset(&b.broker, GROUP, TOPIC, ResetTarget::Offset(1));
    b.close().await;

    let b = open(dir.path());
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    assert_eq!(bodies(&lease_all(&b.broker, &consumer).await), ["b", "c"]);
    b.close().await;
}
