//! Transactional (half) messages across a broker restart: committed and
//! rolled back after it, checked with their producer group when left
//! unresolved, and rolled back after their last check.

mod common;

use std::time::Duration;

use common::api::{
    add_checker, body_of, create_group, create_topic, end_transaction, lease_all, message,
    queue_bodies, read_queue, save_metadata, send, subscribe,
};
use common::broker::{Loops, PATIENCE, Shutdown, TestBroker, messaging_config, poll_until};
use dduomq_broker::config::MessagingConfig;
use dduomq_broker::messaging::error::BrokerError;
use dduomq_broker::messaging::properties::{ORIGIN_ID, RESOLUTION};
use dduomq_broker::messaging::staged::{RESOLVED_TOPIC, Resolution, TransactionCheck};
use dduomq_broker::messaging::{SendMessage, SendReceipt};
use dduomq_broker::store::{MessageType, TransactionState};
use tokio::sync::mpsc;

const TOPIC: &str = "transfers";
const PRODUCERS: &str = "bank";
const GROUP: &str = "ledger";

/// Checks that come only when a test wants them.
fn config(check_after: Duration, check_interval: Duration, max_checks: u32) -> MessagingConfig {
    let mut c = messaging_config();
    c.transaction_check_after = check_after;
    c.transaction_check_interval = check_interval;
    c.transaction_max_checks = max_checks;
    c
}

fn no_checks() -> MessagingConfig {
    config(Duration::from_secs(3600), Duration::from_secs(3600), 15)
}

fn half(body: &str) -> SendMessage {
    SendMessage {
        queue_id: Some(0),
        transaction: Some(PRODUCERS.into()),
        properties: vec![("account".into(), body.to_uppercase())],
        ..message(TOPIC, body)
    }
}

/// A broker that stored half messages with `bodies`, restarted after going
/// down `how`, with `after` as its configuration.
async fn halves_across_restart(
    dir: &std::path::Path,
    bodies: &[&str],
    how: Shutdown,
    after: MessagingConfig,
) -> (TestBroker, Vec<SendReceipt>) {
    let b = TestBroker::open(dir, no_checks(), Loops::Stopped);
    create_topic(&b.broker, TOPIC, 1, MessageType::Transaction);
    create_group(&b.broker, GROUP, 16, &[20]);
    let mut receipts = Vec::new();
    for body in bodies {
        let r = send(&b.broker, half(body)).await.unwrap();
        assert_eq!((r.topic.as_str(), r.queue_id, r.offset), (TOPIC, 0, 0));
        assert_eq!(r.transaction_id, r.message_id);
        receipts.push(r);
    }
    // Half messages are no one's to consume.
    assert!(read_queue(&b.broker, TOPIC, 0).await.is_empty());
    let b = b.restart(how, after, Loops::Running).await;
    (b, receipts)
}

fn resolved_as(result: Result<(), BrokerError>, expected: &str) -> bool {
    matches!(result, Err(BrokerError::TransactionResolved { resolution, .. }) if resolution == expected)
}

async fn end(
    b: &TestBroker,
    receipt: &SendReceipt,
    producer_group: &str,
    resolution: Resolution,
) -> Result<(), BrokerError> {
    end_transaction(&b.broker, TOPIC, receipt, producer_group, resolution).await
}

async fn commit_and_rollback_after_a_restart(how: Shutdown) {
    let dir = tempfile::tempdir().unwrap();
    let (b, r) = halves_across_restart(dir.path(), &["t1", "t2", "t3"], how, no_checks()).await;
    end(&b, &r[0], PRODUCERS, Resolution::Commit).await.unwrap();
    end(&b, &r[1], PRODUCERS, Resolution::Rollback)
        .await
        .unwrap();
    // Ending again the same way is a no-op; the other way is refused.
    end(&b, &r[0], PRODUCERS, Resolution::Commit).await.unwrap();
    assert!(resolved_as(
        end(&b, &r[0], PRODUCERS, Resolution::Rollback).await,
        "commit"
    ));
    assert!(resolved_as(
        end(&b, &r[1], PRODUCERS, Resolution::Commit).await,
        "rollback"
    ));
    // Only its producer group ends a transaction.
    assert!(matches!(
        end(&b, &r[2], "intruders", Resolution::Commit).await,
        Err(BrokerError::TransactionNotFound(_))
    ));
    end(&b, &r[2], PRODUCERS, Resolution::Commit).await.unwrap();

    assert_eq!(queue_bodies(&b.broker, TOPIC, 0).await, ["t1", "t3"]);
    let consumer = subscribe(&b.broker, GROUP, TOPIC, "c1");
    let got = lease_all(&b.broker, &consumer).await;
    assert_eq!(got.len(), 2);
    for (d, receipt) in got.iter().zip([&r[0], &r[2]]) {
        assert_eq!(d.message_id, receipt.message_id);
        assert_eq!(
            d.record.flags.transaction_state(),
            Some(TransactionState::Committed)
        );
        let account = body_of(&d.record).to_uppercase();
        let expected: Vec<(String, String)> = vec![
            ("account".into(), account),
            (ORIGIN_ID.name.into(), receipt.message_id.clone()),
        ];
        assert_eq!(d.record.properties, expected);
    }
    b.close().await;
}

#[tokio::test]
async fn halves_stored_before_a_clean_restart_are_committed_and_rolled_back_after_it() {
    commit_and_rollback_after_a_restart(Shutdown::Clean).await;
}

#[tokio::test]
async fn halves_stored_before_a_crash_are_committed_and_rolled_back_after_it() {
    commit_and_rollback_after_a_restart(Shutdown::WithoutSaving).await;
}

/// Transactions ended before a restart are answered after it as before it,
/// however the broker went down: ending one again the same way succeeds, the
/// other way is refused with how it ended. The metadata is saved after the
/// ends (as the maintenance loop does), so the startup scan begins after the
/// resolved halves and the answer must come from what the log recorded.
async fn repeated_ends_after_a_restart(how: Shutdown) {
    let dir = tempfile::tempdir().unwrap();
    let (b, r) =
        halves_across_restart(dir.path(), &["t1", "t2"], Shutdown::Clean, no_checks()).await;
    end(&b, &r[0], PRODUCERS, Resolution::Commit).await.unwrap();
    end(&b, &r[1], PRODUCERS, Resolution::Rollback)
        .await
        .unwrap();
    save_metadata(&b.broker);
    let b = b.restart(how, no_checks(), Loops::Running).await;
    end(&b, &r[0], PRODUCERS, Resolution::Commit).await.unwrap();
    end(&b, &r[1], PRODUCERS, Resolution::Rollback)
        .await
        .unwrap();
    assert!(resolved_as(
        end(&b, &r[0], PRODUCERS, Resolution::Rollback).await,
        "commit"
    ));
    assert!(resolved_as(
        end(&b, &r[1], PRODUCERS, Resolution::Commit).await,
        "rollback"
    ));
    assert_eq!(queue_bodies(&b.broker, TOPIC, 0).await, ["t1"]);
    b.close().await;
}

#[tokio::test]
async fn transactions_ended_before_a_clean_restart_answer_a_repeated_end_as_before() {
    repeated_ends_after_a_restart(Shutdown::Clean).await;
}

#[tokio::test]
async fn transactions_ended_before_a_crash_answer_a_repeated_end_as_before() {
    repeated_ends_after_a_restart(Shutdown::WithoutSaving).await;
}

/// Whether every way a stranger could ask about `receipt` (another producer
/// group, another topic, either resolution) is answered "not found", as for
/// an unknown id: how a transaction ended is its owner's to learn.
async fn hidden_from_strangers(b: &TestBroker, receipt: &SendReceipt) -> bool {
    let mut answers = Vec::new();
    for resolution in [Resolution::Commit, Resolution::Rollback] {
        answers.push(end(b, receipt, "intruders", resolution).await);
        answers.push(end_transaction(&b.broker, "elsewhere", receipt, PRODUCERS, resolution).await);
    }
    answers
        .into_iter()
        .all(|a| matches!(a, Err(BrokerError::TransactionNotFound(_))))
}

/// Ended transactions, answered from memory and (after a restart) from their
/// markers, tell only their own producer group and topic how they ended.
#[tokio::test]
async fn how_a_transaction_ended_is_not_told_to_another_producer_group_or_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (b, r) =
        halves_across_restart(dir.path(), &["t1", "t2"], Shutdown::Clean, no_checks()).await;
    end(&b, &r[0], PRODUCERS, Resolution::Commit).await.unwrap();
    end(&b, &r[1], PRODUCERS, Resolution::Rollback)
        .await
        .unwrap();
    assert!(hidden_from_strangers(&b, &r[0]).await);
    assert!(hidden_from_strangers(&b, &r[1]).await);
    save_metadata(&b.broker);
    let b = b
        .restart(Shutdown::Clean, no_checks(), Loops::Running)
        .await;
    assert!(hidden_from_strangers(&b, &r[0]).await);
    assert!(hidden_from_strangers(&b, &r[1]).await);
    // The owner still gets its answers.
    end(&b, &r[0], PRODUCERS, Resolution::Commit).await.unwrap();
    assert!(resolved_as(
        end(&b, &r[1], PRODUCERS, Resolution::Commit).await,
        "rollback"
    ));
    b.close().await;
}

/// Waits for the next check, failing after [`PATIENCE`].
async fn next_check(checks: &mut mpsc::Receiver<TransactionCheck>) -> TransactionCheck {
    tokio::time::timeout(PATIENCE, checks.recv())
        .await
        .expect("a check in time")
        .expect("the broker keeps the checker")
}

async fn unresolved_is_checked_after_a_restart(how: Shutdown) {
    let dir = tempfile::tempdir().unwrap();
    let after = config(Duration::from_millis(100), Duration::from_secs(3600), 15);
    let (b, r) = halves_across_restart(dir.path(), &["pending"], how, after).await;
    // The check loop runs on this test's single-threaded runtime, so not
    // before the test awaits: the checker is there for the first check.
    let mut checks = add_checker(&b.broker, PRODUCERS);
    let check = next_check(&mut checks).await;
    assert_eq!(check.transaction_id, r[0].transaction_id);
    assert_eq!(check.attempt, 1);
    assert_eq!(check.message.message_id, r[0].message_id);
    assert_eq!(body_of(&check.message.record), "pending");
    assert_eq!(
        check.message.record.topic, TOPIC,
        "the check names the real topic"
    );
    end(&b, &r[0], PRODUCERS, Resolution::Commit).await.unwrap();
    assert_eq!(queue_bodies(&b.broker, TOPIC, 0).await, ["pending"]);
    b.close().await;
}

#[tokio::test]
async fn a_half_left_unresolved_before_a_clean_restart_is_checked_after_it() {
    unresolved_is_checked_after_a_restart(Shutdown::Clean).await;
}

#[tokio::test]
async fn a_half_left_unresolved_before_a_crash_is_checked_after_it() {
    unresolved_is_checked_after_a_restart(Shutdown::WithoutSaving).await;
}

#[tokio::test]
async fn a_half_unresolved_after_its_last_check_is_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let after = config(Duration::from_millis(50), Duration::from_millis(50), 2);
    let (b, r) = halves_across_restart(dir.path(), &["abandoned"], Shutdown::Clean, after).await;
    // Registered before the check loop first runs (see above).
    let mut checks = add_checker(&b.broker, PRODUCERS);
    for attempt in [1, 2] {
        let check = next_check(&mut checks).await;
        assert_eq!(
            (check.transaction_id.as_str(), check.attempt),
            (r[0].transaction_id.as_str(), attempt)
        );
    }
    let markers = poll_until("the rollback marker", async || {
        let markers = common::read_all(b.store(), RESOLVED_TOPIC, 0);
        (!markers.is_empty()).then_some(markers)
    })
    .await;
    assert_eq!(markers.len(), 1);
    let expected: Vec<(String, String)> = vec![
        (ORIGIN_ID.name.into(), r[0].message_id.clone()),
        (RESOLUTION.name.into(), "rollback".into()),
    ];
    assert_eq!(markers[0].properties, expected);
    assert!(checks.try_recv().is_err(), "no check after the last one");
    assert!(resolved_as(
        end(&b, &r[0], PRODUCERS, Resolution::Commit).await,
        "rollback"
    ));
    assert!(read_queue(&b.broker, TOPIC, 0).await.is_empty());
    b.close().await;
}
