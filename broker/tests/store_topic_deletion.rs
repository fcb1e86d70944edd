//! Deleting a topic travels in the commit log as a marker record: a replica
//! that copies its master's log deletes the topic at the same place, so a topic
//! created again under the deleted name replicates from offset 0 whatever the
//! chunking; recovery replays a marker the last checkpoint did not cover.

mod common;

use std::path::Path;

use common::replica::{
    all_queues, assert_same_log, assert_same_reads, copy_log, files, fill, record_cut,
    replica_config, restart_clean, run,
};
use common::{message, read_all};
use dduomq_broker::store::{DELETION_TOPIC, FlushMode, Store, StoreError};

/// Whole log in one chunk (marker, old and new records together), one frame
/// per chunk (marker apart), and cuts at many places.
const CHUNKINGS: [&[usize]; 3] = [&[usize::MAX], &[1], &[1, 7000, 300, 65536, 200_000]];

fn open(dir: &Path, flush: FlushMode) -> Store {
    Store::open(replica_config(dir, flush)).unwrap()
}

/// Fills, deletes `orders`, fills again (creating it again): returns the
/// position of the deletion marker.
fn fill_delete_fill(store: &Store) -> u64 {
    fill(store, 1, 40);
    let marker = store.log_end();
    store.delete_topic("orders").unwrap();
    assert!(!store.topics().contains(&"orders".to_string()));
    fill(store, 2, 40);
    marker
}

/// The created-again `orders` holds only what was written after the
/// deletion, from offset 0.
fn assert_orders_start_afresh(store: &Store, marker: u64) {
    for queue in store.queue_ids("orders") {
        let records = read_all(store, "orders", queue);
        assert_eq!(store.queue_offsets("orders", queue).0, 0);
        assert!(!records.is_empty());
        assert!(records.iter().all(|r| r.physical_offset > marker));
        let offsets: Vec<u64> = records.iter().map(|r| r.queue_offset).collect();
        assert_eq!(offsets, (0..records.len() as u64).collect::<Vec<_>>());
    }
}

#[test]
fn a_replica_deletes_at_the_marker_in_every_chunking_and_flush_mode() {
    for flush in [FlushMode::Async, FlushMode::Sync] {
        for chunks in CHUNKINGS {
            let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let a = open(a_dir.path(), flush);
            let marker = fill_delete_fill(&a);
            assert_orders_start_afresh(&a, marker);
            let b = open(b_dir.path(), flush);
            run(copy_log(&a, &b, a.log_end(), chunks));
            assert_same_log(a_dir.path(), b_dir.path());
            assert_same_reads(&a, &b);
            assert_eq!(
                files(a_dir.path(), "consumequeue"),
                files(b_dir.path(), "consumequeue"),
                "consume queues and tombstones differ ({chunks:?}, {flush:?})"
            );
            let deletions = read_all(&b, DELETION_TOPIC, 0);
            assert_eq!(deletions.len(), 1);
            assert_eq!(deletions[0].physical_offset, marker);
            assert_eq!(&deletions[0].body[..], b"orders");

            // The replica restarts with what it stored, and keeps following
            // a second deletion of the same topic.
            let b = restart_clean(b, b_dir.path(), flush, &a);
            let second = a.log_end();
            // Called from a runtime thread, as the admin service does.
            run(async { a.delete_topic("orders") }).unwrap();
            fill(&a, 3, 30);
            run(copy_log(&a, &b, a.log_end(), chunks));
            assert_same_log(a_dir.path(), b_dir.path());
            assert_same_reads(&a, &b);
            assert_orders_start_afresh(&b, second);
        }
    }
}

#[test]
fn recovery_replays_a_deletion_the_checkpoint_did_not_cover() {
    for flush in [FlushMode::Async, FlushMode::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), flush);
        fill(&a, 1, 40);
        a.close().unwrap();
        drop(a);
        // The checkpoint from before the deletion is what a crash right
        // after the marker (before the next checkpoint) leaves.
        let before = std::fs::read(dir.path().join("checkpoint")).unwrap();
        let a = open(dir.path(), flush);
        let marker = a.log_end();
        a.delete_topic("orders").unwrap();
        fill(&a, 2, 40);
        let expected = all_queues(&a);
        a.close().unwrap();
        drop(a);

        // Crashed after the deletion was applied (tombstone written).
        std::fs::write(dir.path().join("checkpoint"), &before).unwrap();
        let a = open(dir.path(), flush);
        let report = a.recovery_report();
        assert!(report.repairs.is_empty(), "{:?}", report.repairs);
        assert_eq!(report.holes, 0);
        assert_eq!(report.scanned_from, marker);
        assert_eq!(
            report.records_replayed,
            1 + 40,
            "the marker and what followed"
        );
        assert_eq!(all_queues(&a), expected);
        assert_orders_start_afresh(&a, marker);
        a.close().unwrap();
        drop(a);

        // Crashed between the marker and its deletion (no tombstone yet):
        // recovery deletes the topic at the marker itself.
        std::fs::write(dir.path().join("checkpoint"), &before).unwrap();
        std::fs::remove_file(dir.path().join("consumequeue/orders/deleted")).unwrap();
        let a = open(dir.path(), flush);
        assert_eq!(all_queues(&a), expected);
        assert_orders_start_afresh(&a, marker);
        let ack = a
            .append_blocking(vec![message("orders", 0, b"later", &[], "")])
            .unwrap();
        assert_eq!(ack[0].queue_offset, expected[&("orders".to_string(), 0)].1);
    }
}

#[test]
fn the_marker_topic_is_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), FlushMode::Async);
    let refused = a
        .append_blocking(vec![message(DELETION_TOPIC, 0, b"orders", &[], "")])
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::InvalidArgument { .. }),
        "{refused}"
    );
    let refused = a.delete_topic(DELETION_TOPIC).unwrap_err();
    assert!(
        matches!(refused, StoreError::InvalidArgument { .. }),
        "{refused}"
    );
    assert_eq!(a.log_end(), 0);
}

/// What happens to `orders` between the state a cut must bring back and the
/// cut (at the deletion's marker).
#[derive(Debug, Clone, Copy)]
enum AfterSnapshot {
    /// Deleted; nothing written after.
    Deleted,
    /// Deleted, then created again by writing to it.
    DeletedAndRecreated,
}

/// Whether `orders` was deleted (and created again) before the snapshot too,
/// so the cut must bring back that earlier deletion's tombstone.
#[derive(Debug, Clone, Copy)]
enum BeforeSnapshot {
    Filled,
    DeletedOnce,
}

/// Fills as `before` says, snapshots every queue but the markers', deletes
/// `orders` and goes on as `after` says. Returns the snapshot and the
/// position of the last deletion's marker.
fn delete_after_snapshot(
    store: &Store,
    before: BeforeSnapshot,
    after: AfterSnapshot,
) -> (Queues, u64) {
    fill(store, 1, 40);
    if let BeforeSnapshot::DeletedOnce = before {
        store.delete_topic("orders").unwrap();
        fill(store, 2, 40);
    }
    let snapshot = queues_but_markers(store);
    let marker = store.log_end();
    store.delete_topic("orders").unwrap();
    if let AfterSnapshot::DeletedAndRecreated = after {
        fill(store, 3, 40);
    }
    (snapshot, marker)
}

type Queues =
    std::collections::BTreeMap<(String, u32), (u64, u64, Vec<dduomq_broker::store::Record>)>;

/// Every queue's records except the deletion markers' queue.
fn queues_but_markers(store: &Store) -> Queues {
    let mut queues = all_queues(store);
    queues.retain(|(topic, _), _| topic != DELETION_TOPIC);
    queues
}

/// The store holds exactly `snapshot` and takes writes to `orders` after it.
fn assert_restored(store: &Store, snapshot: &Queues, marker: u64, case: &str) {
    assert_eq!(store.log_end(), marker, "{case}");
    assert_eq!(&queues_but_markers(store), snapshot, "{case}");
    let markers = read_all(store, DELETION_TOPIC, 0);
    assert!(markers.iter().all(|m| m.physical_offset < marker), "{case}");
    assert!(store.topics().contains(&"orders".to_string()), "{case}");
}

fn every_case() -> Vec<(BeforeSnapshot, AfterSnapshot)> {
    let mut cases = Vec::new();
    for before in [BeforeSnapshot::Filled, BeforeSnapshot::DeletedOnce] {
        for after in [AfterSnapshot::Deleted, AfterSnapshot::DeletedAndRecreated] {
            cases.push((before, after));
        }
    }
    cases
}

#[test]
fn a_truncation_that_drops_a_deletion_undoes_it() {
    for (before, after) in every_case() {
        let case = format!("{before:?}, {after:?}");
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), FlushMode::Sync);
        let (snapshot, marker) = delete_after_snapshot(&a, before, after);
        run(a.truncate_log(marker)).unwrap();
        assert_restored(&a, &snapshot, marker, &case);
        assert!(!dir.path().join("truncating").exists(), "{case}");
        // Writes go on where the restored queue ended, and the restored
        // state survives a reopen.
        let next = snapshot[&("orders".to_string(), 0)].1;
        let ack = a
            .append_blocking(vec![message("orders", 0, b"later", &[], "")])
            .unwrap();
        assert_eq!(ack[0].queue_offset, next, "{case}");
        a.close().unwrap();
        drop(a);
        let a = open(dir.path(), FlushMode::Sync);
        assert!(a.recovery_report().repairs.is_empty(), "{case}");
        let orders_0 = read_all(&a, "orders", 0);
        assert_eq!(orders_0.last().unwrap().queue_offset, next, "{case}");
        assert_eq!(
            orders_0[..orders_0.len() - 1],
            snapshot[&("orders".to_string(), 0)].2[..],
            "{case}"
        );
    }
}

/// How far an interrupted undoing truncation got before the crash.
#[derive(Debug, Clone, Copy)]
enum CrashedAfter {
    /// Only the cut was recorded.
    Recording,
    /// The deleted topic's queues and tombstone were dropped.
    Forgetting,
}

#[test]
fn an_interrupted_truncation_that_drops_a_deletion_is_undone_on_open() {
    for (before, after) in every_case() {
        for crash in [CrashedAfter::Recording, CrashedAfter::Forgetting] {
            let case = format!("{before:?}, {after:?}, {crash:?}");
            let dir = tempfile::tempdir().unwrap();
            let a = open(dir.path(), FlushMode::Sync);
            let (snapshot, marker) = delete_after_snapshot(&a, before, after);
            let end = a.log_end();
            a.close().unwrap();
            drop(a);
            record_cut(dir.path(), marker, end, &["orders"]);
            if let CrashedAfter::Forgetting = crash {
                std::fs::remove_dir_all(dir.path().join("consumequeue/orders")).unwrap();
            }
            let a = open(dir.path(), FlushMode::Sync);
            let report = a.recovery_report();
            assert!(report.repairs.is_empty(), "{case}: {:?}", report.repairs);
            assert_eq!((report.holes, report.lost_bytes), (0, 0), "{case}");
            assert_restored(&a, &snapshot, marker, &case);
            assert!(!dir.path().join("truncating").exists(), "{case}");
            a.close().unwrap();
            drop(a);
            let a = open(dir.path(), FlushMode::Sync);
            assert_restored(&a, &snapshot, marker, &case);
        }
    }
}
