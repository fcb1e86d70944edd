//! Everything a new master needs travels in the replicated log: broker A
//! (master) is copied chunk by chunk into broker B (a replica) as a follower
//! copies it, B applies the metadata records, A is abandoned and B promoted.
//! B then has A's topics and groups, resumes consumers from A's last
//! progress record, deduplicates A's idempotent producer, releases A's
//! delayed message once and commits A's half message.

mod common;

use std::time::Duration;

use common::api::{
    LONG_LEASE, ack, apply_replicated, bodies, body_of, committed_offsets, create_group,
    declare_group, end_transaction, flush_metadata_log, lease_all, lease_exactly, message, nack,
    promote, queue_bodies, queue_until, reset, save_metadata, send, send_bodies, subscribe,
    upsert_topic,
};
use common::broker::{Loops, Shutdown, TestBroker, messaging_config, wait_past};
use dduomq_broker::filter::FilterSpec;
use dduomq_broker::messaging::replicated::records::{
    MetaRecord, TableOp, decode_meta, decode_progress,
};
use dduomq_broker::messaging::replicated::{META_TOPIC, PROGRESS_TOPIC};
use dduomq_broker::messaging::staged::Resolution;
use dduomq_broker::messaging::topic_settings::TopicSettings;
use dduomq_broker::messaging::{AppliedMetadata, LogRole, ResetTarget, Schedule, SendMessage};
use dduomq_broker::store::{MessageType, Record, Store, now_millis};
use dduomq_proto::Reason;

const ORDERS: &str = "orders";
const PAYMENTS: &str = "payments";
const LATER: &str = "later";
const TRANSFERS: &str = "transfers";
const BILLING: &str = "billing";
const PRODUCER_GROUP: &str = "bank";

/// Copies `master`'s log into `replica` from the replica's end until it
/// reaches `until`, in chunks of about `chunk` bytes, as a follower does.
async fn copy_log(master: &Store, replica: &Store, until: u64, chunk: usize) {
    while replica.log_end() < until {
        let from = replica.log_end();
        // At most `until - from` bytes, so the copy stops at `until`.
        let max = chunk.min((until - from) as usize);
        let raw = master.read_log(from, max).expect("master's log read");
        replica
            .append_replicated(raw.start, raw.data)
            .await
            .expect("chunk appended to the replica");
    }
    assert_eq!(replica.log_end(), until, "copied up to a frame boundary");
}

/// Records a queue of the store holds.
fn queue_len(store: &Store, topic: &str) -> u64 {
    let (min, max) = store.queue_offsets(topic, 0);
    max - min
}

fn idempotent(sequence: u64) -> SendMessage {
    SendMessage {
        producer_id: "producer-1".into(),
        sequence,
        queue_id: Some(0),
        ..message(PAYMENTS, "pay-1")
    }
}

#[tokio::test]
async fn a_promoted_replica_continues_where_the_master_was() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestBroker::open_replica(dir_a.path(), messaging_config(), Loops::Stopped);
    promote(&a.broker).await;
    assert_eq!(a.broker.log_role(), LogRole::Master);

    // Topics with settings, groups with filters and settings, a deletion.
    let limited = TopicSettings::from_wire(2048, 3_600_000);
    upsert_topic(&a.broker, ORDERS, 2, MessageType::Normal, limited).unwrap();
    upsert_topic(&a.broker, "scratch", 1, MessageType::Normal, limited).unwrap();
    a.broker.delete_topic("scratch").unwrap();
    for (topic, kind) in [
        (PAYMENTS, MessageType::Normal),
        (LATER, MessageType::Delay),
        (TRANSFERS, MessageType::Transaction),
    ] {
        upsert_topic(&a.broker, topic, 1, kind, TopicSettings::default()).unwrap();
    }
    create_group(&a.broker, BILLING, 5, &[20, 40]);
    declare_group(
        &a.broker,
        "audit",
        &[(ORDERS, FilterSpec::sql("amount > 100"))],
        true,
    )
    .unwrap();
    flush_metadata_log(&a.broker).await;
    let setup_end = a.store().log_end();

    // A consumer acks some messages before the last progress record, one after.
    let sent: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    send_bodies(
        &a.broker,
        ORDERS,
        0,
        &sent.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let consumer = subscribe(&a.broker, BILLING, ORDERS, "c1");
    let leased = lease_all(&a.broker, &consumer).await;
    assert_eq!(bodies(&leased), sent);
    for i in [0, 1, 2, 3, 4, 7] {
        ack(&a.broker, &consumer, &leased[i]).unwrap();
    }
    let original = send(&a.broker, idempotent(1)).await.unwrap();
    let deliver_at = now_millis() + 2_000;
    let delayed = SendMessage {
        schedule: Schedule::At(deliver_at),
        ..message(LATER, "due-later")
    };
    send(&a.broker, delayed).await.unwrap();
    let half = SendMessage {
        transaction: Some(PRODUCER_GROUP.into()),
        ..message(TRANSFERS, "half")
    };
    let half = send(&a.broker, half).await.unwrap();
    save_metadata(&a.broker);
    flush_metadata_log(&a.broker).await;
    // Acked after the last progress record: redelivered by the new master.
    ack(&a.broker, &consumer, &leased[8]).unwrap();
    let (topics, groups) = (a.broker.list_topics(), a.broker.list_groups());
    assert!(
        topics
            .iter()
            .all(|t| t.name != META_TOPIC && t.name != PROGRESS_TOPIC),
        "metadata topics are not listed: {topics:?}"
    );

    // B follows: the setup first, applied, then a restart before the rest.
    let b = TestBroker::open_replica(dir_b.path(), messaging_config(), Loops::Running);
    assert_eq!(b.broker.log_role(), LogRole::Replica);
    copy_log(a.store(), b.store(), setup_end, 700).await;
    let first = apply_replicated(&b.broker);
    assert_eq!(first.meta_records as u64, queue_len(b.store(), META_TOPIC));
    assert_eq!(b.broker.list_topics(), topics);
    assert_eq!(b.broker.list_groups(), groups);
    b.shut_down(Shutdown::Clean).await;
    let b = TestBroker::open_replica(dir_b.path(), messaging_config(), Loops::Running);
    assert_eq!(
        apply_replicated(&b.broker),
        AppliedMetadata::default(),
        "a restarted replica resumes where it was"
    );
    copy_log(a.store(), b.store(), a.store().log_end(), 64 << 10).await;
    let meta_total = queue_len(a.store(), META_TOPIC);
    let progress_total = queue_len(a.store(), PROGRESS_TOPIC);
    assert_eq!(
        apply_replicated(&b.broker),
        AppliedMetadata {
            meta_records: (meta_total - first.meta_records as u64) as usize,
            progress_records: 1,
        }
    );
    a.kill().await;

    // A replica releases nothing, also once the message is due.
    wait_past(deliver_at).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        queue_bodies(&b.broker, LATER, 0).await,
        Vec::<String>::new()
    );

    // A consumer of the replica reads A's progress; what it does there is
    // not A's progress and does not count once B is promoted.
    let on_replica = subscribe(&b.broker, BILLING, ORDERS, "c0");
    let read = lease_all(&b.broker, &on_replica).await;
    assert_eq!(bodies(&read), ["m5", "m6", "m8", "m9"]);
    ack(&b.broker, &on_replica, &read[0]).unwrap();
    assert_eq!(committed_offsets(&b.broker, BILLING, ORDERS), [6, 0]);
    save_metadata(&b.broker);

    // A replica resolves no transaction (its master does): the producer is
    // sent to the master, and the half stays pending for the promotion.
    let refused = end_transaction(
        &b.broker,
        TRANSFERS,
        &half,
        PRODUCER_GROUP,
        Resolution::Rollback,
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Reason::NotMaster, "{refused}");

    promote(&b.broker).await;
    assert_eq!(b.broker.log_role(), LogRole::Master);
    assert_eq!(
        (
            queue_len(b.store(), META_TOPIC),
            queue_len(b.store(), PROGRESS_TOPIC)
        ),
        (meta_total + 2, progress_total + 1),
        "the new master snapshots both tables and its progress"
    );
    assert_eq!(b.broker.list_topics(), topics);
    assert_eq!(b.broker.list_groups(), groups);

    // Exactly what was not acked before the last progress record comes again.
    let consumer = subscribe(&b.broker, BILLING, ORDERS, "c2");
    let mut again = bodies(&lease_all(&b.broker, &consumer).await);
    again.sort();
    assert_eq!(again, ["m5", "m6", "m8", "m9"]);

    // The idempotent producer's retry gets the original receipt.
    assert_eq!(send(&b.broker, idempotent(1)).await.unwrap(), original);
    assert_eq!(queue_bodies(&b.broker, PAYMENTS, 0).await, ["pay-1"]);

    // The delayed message is released once: a later one released after it
    // finds it alone in the queue.
    let released = queue_until(&b.broker, LATER, 0, 1).await;
    assert_eq!(
        released.iter().map(body_of).collect::<Vec<_>>(),
        ["due-later"]
    );
    let next = SendMessage {
        schedule: Schedule::After(50),
        ..message(LATER, "next")
    };
    send(&b.broker, next).await.unwrap();
    let released = queue_until(&b.broker, LATER, 0, 2).await;
    assert_eq!(
        released.iter().map(body_of).collect::<Vec<_>>(),
        ["due-later", "next"]
    );

    // The half message is committed on the new master.
    end_transaction(
        &b.broker,
        TRANSFERS,
        &half,
        PRODUCER_GROUP,
        Resolution::Commit,
    )
    .await
    .unwrap();
    assert_eq!(queue_bodies(&b.broker, TRANSFERS, 0).await, ["half"]);
    b.close().await;
}

/// A failover with a lost tail: A (master) wrote metadata records that only
/// B got; C, which had them up to `cut`, is promoted. B, and A once demoted,
/// truncate their logs to `cut` and follow C: what the lost tail changed is
/// forgotten (applying starts again from the oldest record, whose snapshots
/// replace it) and both end with C's topics and groups.
#[tokio::test]
async fn members_that_lose_a_tail_forget_what_it_changed() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestBroker::open_replica(dirs[0].path(), messaging_config(), Loops::Running);
    promote(&a.broker).await;
    upsert_topic(
        &a.broker,
        "kept",
        1,
        MessageType::Normal,
        TopicSettings::default(),
    )
    .unwrap();
    create_group(&a.broker, "kept-group", 3, &[20]);
    flush_metadata_log(&a.broker).await;
    let cut = a.store().log_end();
    upsert_topic(
        &a.broker,
        "lost",
        1,
        MessageType::Normal,
        TopicSettings::default(),
    )
    .unwrap();
    create_group(&a.broker, "kept-group", 9, &[50]);
    a.broker.delete_topic("kept").unwrap();
    flush_metadata_log(&a.broker).await;

    let b = TestBroker::open_replica(dirs[1].path(), messaging_config(), Loops::Running);
    copy_log(a.store(), b.store(), a.store().log_end(), 64 << 10).await;
    apply_replicated(&b.broker);
    assert_eq!(b.broker.list_topics(), a.broker.list_topics());
    let c = TestBroker::open_replica(dirs[2].path(), messaging_config(), Loops::Running);
    copy_log(a.store(), c.store(), cut, 64 << 10).await;

    // C takes over and changes something of its own.
    promote(&c.broker).await;
    upsert_topic(
        &c.broker,
        "other",
        2,
        MessageType::Fifo,
        TopicSettings::default(),
    )
    .unwrap();
    flush_metadata_log(&c.broker).await;
    let names = |t: &TestBroker| -> Vec<String> {
        t.broker.list_topics().into_iter().map(|t| t.name).collect()
    };
    assert_eq!(names(&c), ["%DLQ%kept-group", "kept", "other"]);

    // The old master steps down; its own records count as applied.
    a.broker.demote().unwrap();
    assert_eq!(a.broker.log_role(), LogRole::Replica);
    assert_eq!(apply_replicated(&a.broker), AppliedMetadata::default());
    for follower in [&b, &a] {
        follower.store().truncate_log(cut).await.unwrap();
        copy_log(c.store(), follower.store(), c.store().log_end(), 700).await;
        apply_replicated(&follower.broker);
        assert_eq!(names(follower), names(&c));
        assert_eq!(follower.broker.list_topics(), c.broker.list_topics());
        assert_eq!(follower.broker.list_groups(), c.broker.list_groups());
    }
    for member in [a, b, c] {
        member.close().await;
    }
}

/// A replica derives an idempotent producer's window and a delayed message
/// from records its log then loses (it followed a master whose tail the new
/// master did not have). Promoted later, it forgets both: the producer's
/// retry of that sequence is stored, not answered with the lost record's
/// receipt, and nothing is released for the lost delayed message.
#[tokio::test]
async fn a_replica_forgets_what_it_derived_from_a_lost_tail() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = TestBroker::open_replica(dirs[0].path(), messaging_config(), Loops::Stopped);
    promote(&a.broker).await;
    for (topic, kind) in [(PAYMENTS, MessageType::Normal), (LATER, MessageType::Delay)] {
        upsert_topic(&a.broker, topic, 1, kind, TopicSettings::default()).unwrap();
    }
    flush_metadata_log(&a.broker).await;
    let cut = a.store().log_end();
    let lost = send(&a.broker, idempotent(1)).await.unwrap();
    let deliver_at = now_millis() + 1_000;
    let delayed = SendMessage {
        schedule: Schedule::At(deliver_at),
        ..message(LATER, "lost-later")
    };
    send(&a.broker, delayed).await.unwrap();

    let b = TestBroker::open_replica(dirs[1].path(), messaging_config(), Loops::Running);
    copy_log(a.store(), b.store(), a.store().log_end(), 64 << 10).await;
    apply_replicated(&b.broker);
    let c = TestBroker::open_replica(dirs[2].path(), messaging_config(), Loops::Stopped);
    copy_log(a.store(), c.store(), cut, 64 << 10).await;
    a.kill().await;
    promote(&c.broker).await;
    flush_metadata_log(&c.broker).await;

    b.store().truncate_log(cut).await.unwrap();
    copy_log(c.store(), b.store(), c.store().log_end(), 64 << 10).await;
    apply_replicated(&b.broker);
    c.kill().await;
    promote(&b.broker).await;

    let stored = send(&b.broker, idempotent(1)).await.unwrap();
    assert_ne!(
        stored, lost,
        "the retry is stored, not answered from the lost tail"
    );
    assert_eq!(queue_bodies(&b.broker, PAYMENTS, 0).await, ["pay-1"]);
    wait_past(deliver_at).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        queue_bodies(&b.broker, LATER, 0).await,
        Vec::<String>::new()
    );
    b.close().await;
}

/// Every record of queue 0 of `topic`.
fn all_records(store: &Store, topic: &str) -> Vec<Record> {
    let (min, max) = store.queue_offsets(topic, 0);
    let read = store.read(topic, 0, min, (max - min) as usize, 64 << 20);
    let records = read.unwrap().records;
    assert_eq!(records.len() as u64, max - min);
    records
}

/// Snapshots larger than a record travel in parts. A replica that joins
/// late (its log starts at the segment of the master's newest snapshot, as
/// after retention deleted what came before) gets the first parts before
/// the last (each copy is smaller than a part), applies the snapshot once
/// it is whole, and ends with the master's tables and progress.
#[tokio::test]
async fn snapshots_larger_than_a_record_travel_in_parts() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestBroker::open_replica(dir_a.path(), messaging_config(), Loops::Stopped);
    promote(&a.broker).await;
    for i in 0..300 {
        let name = format!("topic-with-a-long-name-{i:03}");
        upsert_topic(
            &a.broker,
            &name,
            1,
            MessageType::Normal,
            TopicSettings::default(),
        )
        .unwrap();
    }
    const WIDE: &str = "wide";
    upsert_topic(
        &a.broker,
        WIDE,
        300,
        MessageType::Normal,
        TopicSettings::default(),
    )
    .unwrap();
    create_group(&a.broker, BILLING, 5, &[20]);
    let body = "x".repeat(1000);
    for q in 0..300 {
        send_bodies(&a.broker, WIDE, q, &[&body]).await;
    }
    // The log grew by segments: the save snapshots both tables and progress.
    reset(&a.broker, BILLING, WIDE, ResetTarget::Latest);
    flush_metadata_log(&a.broker).await;
    let snapshot_start = all_records(a.store(), META_TOPIC)
        .iter()
        .filter(|r| {
            let record = decode_meta(&r.body).unwrap();
            matches!(record, MetaRecord::Topics(TableOp::Snapshot(_), part) if part.part == 1 && part.parts > 1)
        })
        .map(|r| r.physical_offset)
        .max()
        .expect("a topics snapshot in parts");
    assert!(
        all_records(a.store(), PROGRESS_TOPIC)
            .iter()
            .any(|r| decode_progress(&r.body).unwrap().part.parts > 1)
    );

    let b = TestBroker::open_replica(dir_b.path(), messaging_config(), Loops::Stopped);
    let segment = b.store().config().segment_size_bytes;
    let mut from = snapshot_start - snapshot_start % segment;
    while from < a.store().log_end() {
        let raw = a.store().read_log(from, 700).unwrap();
        from = b
            .store()
            .append_replicated(raw.start, raw.data)
            .await
            .unwrap();
        apply_replicated(&b.broker);
    }
    let (mine, masters) = (b.broker.list_topics(), a.broker.list_topics());
    assert!(
        mine == masters,
        "the replica has {} topics, the master {}",
        mine.len(),
        masters.len()
    );
    assert_eq!(b.broker.list_groups(), a.broker.list_groups());
    assert_eq!(committed_offsets(&b.broker, BILLING, WIDE), vec![1; 300]);
    a.close().await;
    b.close().await;
}

/// Without replication nothing of this runs: a standalone broker's log holds
/// no metadata records, whatever it changes and saves.
#[tokio::test]
async fn a_standalone_broker_writes_no_metadata_records() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::open(dir.path(), messaging_config(), Loops::Running);
    assert_eq!(b.broker.log_role(), LogRole::Standalone);
    upsert_topic(
        &b.broker,
        ORDERS,
        2,
        MessageType::Normal,
        TopicSettings::default(),
    )
    .unwrap();
    create_group(&b.broker, BILLING, 5, &[20]);
    send_bodies(&b.broker, ORDERS, 0, &["m0"]).await;
    let consumer = subscribe(&b.broker, BILLING, ORDERS, "c1");
    let leased = lease_all(&b.broker, &consumer).await;
    ack(&b.broker, &consumer, &leased[0]).unwrap();
    save_metadata(&b.broker);
    flush_metadata_log(&b.broker).await;
    promote(&b.broker).await;
    assert_eq!(b.broker.log_role(), LogRole::Standalone);
    assert_eq!(b.store().topics(), [ORDERS]);
    b.close().await;
}

/// A replica writes nothing to its log: a message that used up its attempts
/// with a consumer of the replica is not dead-lettered there but comes again
/// (the master dead-letters it).
#[tokio::test]
async fn a_replica_dead_letters_nothing() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestBroker::open_replica(dir_a.path(), messaging_config(), Loops::Stopped);
    promote(&a.broker).await;
    upsert_topic(
        &a.broker,
        ORDERS,
        1,
        MessageType::Normal,
        TopicSettings::default(),
    )
    .unwrap();
    create_group(&a.broker, BILLING, 1, &[20]);
    send_bodies(&a.broker, ORDERS, 0, &["m0"]).await;
    flush_metadata_log(&a.broker).await;
    let b = TestBroker::open_replica(dir_b.path(), messaging_config(), Loops::Stopped);
    copy_log(a.store(), b.store(), a.store().log_end(), 64 << 10).await;
    apply_replicated(&b.broker);

    let end = b.store().log_end();
    let consumer = subscribe(&b.broker, BILLING, ORDERS, "c1");
    let leased = lease_all(&b.broker, &consumer).await;
    assert_eq!(bodies(&leased), ["m0"]);
    nack(&b.broker, &consumer, &leased[0]).await.unwrap();
    let again = lease_exactly(&b.broker, &consumer, LONG_LEASE, 1).await;
    assert_eq!(bodies(&again), ["m0"]);
    assert_eq!(b.store().log_end(), end, "nothing appended");
    a.close().await;
    b.close().await;
}
