//! Replicated bytes from a hostile or buggy master: whatever a chunk holds,
//! the replica refuses it with an error naming the problem, changes nothing
//! and does not panic. (Ordinary bad frames are in `store_replication.rs`.)

mod common;

use bytes::Bytes;
use common::message;
use common::replica::{files, replica_config, run};
use dduomq_broker::store::{DELETION_TOPIC, FlushMode, RawLogProblem, Store, StoreError};

/// Record layout facts (record.rs) a forger needs: where the CRC is stored,
/// where the bytes it covers start, where the topic starts.
const OFF_CRC: usize = 8;
const CRC_START: usize = 12;
const OFF_TOPIC: usize = 72;

fn open(dir: &std::path::Path) -> Store {
    Store::open(replica_config(dir, FlushMode::Sync)).unwrap()
}

/// The first record of a fresh store holding one message of `topic`.
fn first_record(topic: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .append_blocking(vec![message(topic, 0, b"payload", &[], "")])
        .unwrap();
    store.read_log(0, 1).unwrap().data.to_vec()
}

/// Seals a forged record as a master would: its CRC matches its bytes.
fn reseal(record: &mut [u8]) {
    let crc = crc32c::crc32c(&record[CRC_START..]);
    record[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

fn assert_bad_frame(err: StoreError, at: u64, says: &str) {
    match &err {
        StoreError::RawLog {
            position,
            problem: RawLogProblem::BadFrame(reason),
        } if *position == at && reason.contains(says) => {}
        _ => panic!("expected a bad frame at {at} saying {says:?}, got: {err}"),
    }
}

#[test]
fn a_record_whose_topic_is_not_a_valid_name_is_refused() {
    // A topic name becomes a directory name: "or/ers" would create a queue
    // under consumequeue/or/, and "../../" one outside the data directory.
    for forged in ["or/ers", "../../", ".rders"] {
        let mut record = first_record("orders");
        record[OFF_TOPIC..OFF_TOPIC + 6].copy_from_slice(forged.as_bytes());
        reseal(&mut record);
        let dir = tempfile::tempdir().unwrap();
        let replica_dir = dir.path().join("replica");
        let replica = open(&replica_dir);
        let err = run(replica.append_replicated(0, Bytes::from(record))).unwrap_err();
        assert_bad_frame(err, 0, "topic name");
        assert_eq!(replica.log_end(), 0);
        assert!(replica.topics().is_empty());
        assert!(files(&replica_dir, "consumequeue").is_empty(), "{forged}");
        let outside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, ["replica"], "{forged}");
    }
}

#[test]
fn positions_near_the_end_of_the_position_space_are_refused_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let replica = open(dir.path());
    let segment = replica.config().segment_size_bytes;
    let record = Bytes::from(first_record("orders"));
    // An empty replica may start at any segment base, also the last one.
    let last_base = u64::MAX - u64::MAX % segment;
    let err = run(replica.append_replicated(last_base, record.clone())).unwrap_err();
    assert_bad_frame(err, last_base, "past the largest log position");
    assert_eq!(replica.log_end(), 0);
    assert!(files(dir.path(), "commitlog").is_empty());
    let err = run(replica.heal(u64::MAX - 2, record.clone())).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::RawLog {
                problem: RawLogProblem::NotDamaged,
                ..
            }
        ),
        "{err}"
    );
    // Still usable from the start.
    assert_eq!(
        run(replica.append_replicated(0, record.clone())).unwrap(),
        record.len() as u64
    );
}

#[test]
fn a_late_queue_starting_at_an_offset_no_log_could_reach_is_refused() {
    const OFF_QUEUE_OFFSET: usize = 24;
    const OFF_PHYSICAL: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let replica = open(dir.path());
    // A replica joining late starts a queue it lacks at its first record's
    // offset; every lower offset was a record, at least a header long, earlier
    // in the log, so the offset is at most the position over a header's size.
    let segment = replica.config().segment_size_bytes;
    for offset in [u64::MAX, segment / 72 + 1] {
        let mut record = first_record("orders");
        record[OFF_QUEUE_OFFSET..OFF_QUEUE_OFFSET + 8].copy_from_slice(&offset.to_le_bytes());
        record[OFF_PHYSICAL..OFF_PHYSICAL + 8].copy_from_slice(&segment.to_le_bytes());
        reseal(&mut record);
        let err = run(replica.append_replicated(segment, Bytes::from(record))).unwrap_err();
        assert_bad_frame(err, segment, "than a log could hold");
        assert_eq!(replica.log_end(), 0);
        assert!(replica.topics().is_empty());
        assert!(files(dir.path(), "consumequeue").is_empty());
    }
    let mut record = first_record("orders");
    let reachable = segment / 72;
    record[OFF_QUEUE_OFFSET..OFF_QUEUE_OFFSET + 8].copy_from_slice(&reachable.to_le_bytes());
    record[OFF_PHYSICAL..OFF_PHYSICAL + 8].copy_from_slice(&segment.to_le_bytes());
    reseal(&mut record);
    run(replica.append_replicated(segment, Bytes::from(record))).unwrap();
    assert_eq!(
        replica.queue_offsets("orders", 0),
        (reachable, reachable + 1)
    );
}

#[test]
fn a_deletion_marker_naming_no_deletable_topic_is_refused() {
    for (body, says) in [(&b"or/ers"[..], "topic name"), (b"%DELETED%", "reserved")] {
        // A marker cannot be appended by a producer: forge one from a record
        // of a topic with a name as long as the marker topic's.
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("master"));
        store
            .append_blocking(vec![message("ADELETED%", 0, body, &[], "")])
            .unwrap();
        let mut record = store.read_log(0, 1).unwrap().data.to_vec();
        record[OFF_TOPIC..OFF_TOPIC + 9].copy_from_slice(DELETION_TOPIC.as_bytes());
        reseal(&mut record);
        let replica = open(&dir.path().join("replica"));
        let err = run(replica.append_replicated(0, Bytes::from(record))).unwrap_err();
        assert_bad_frame(err, 0, says);
        assert_eq!(replica.log_end(), 0);
        assert!(replica.topics().is_empty());
    }
}
