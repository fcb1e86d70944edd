//! Healing damage from the group, on real files: a replica whose log was
//! damaged in the middle (a flipped byte in a record, zeros over a record's
//! header) writes back the intact bytes its master reads out, and then holds
//! the master's log byte for byte and answers every read the same.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::replica::{
    all_queues, assert_same_log, assert_same_reads, copy_log, fill, replica_config, run,
};
use dduomq_broker::store::{FlushMode, RawLogProblem, Store, StoreError};

fn open(dir: &Path) -> Store {
    Store::open(replica_config(dir, FlushMode::Sync)).unwrap()
}

/// Overwrites `bytes` at log position `pos` of the (closed) store in `dir`.
fn damage(dir: &Path, segment_size: u64, pos: u64, bytes: &[u8]) {
    let base = pos - pos % segment_size;
    let path = dir.join("commitlog").join(format!("{base:020}"));
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, pos - base).unwrap();
}

fn assert_refused(err: StoreError, expected: &RawLogProblem) {
    match &err {
        StoreError::RawLog { problem, .. }
            if std::mem::discriminant(problem) == std::mem::discriminant(expected) => {}
        _ => panic!("expected {expected:?}, got: {err}"),
    }
}

#[test]
fn a_damaged_replica_heals_from_its_master() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path());
    let acks = fill(&a, 1, 150);
    let b = open(b_dir.path());
    run(copy_log(&a, &b, a.log_end(), &[65536]));
    let segment = b.config().segment_size_bytes;
    b.close().unwrap();
    drop(b);

    // A flipped body byte (the header still names its queue offset) and
    // zeros over a whole header (its offset becomes a hole); without a
    // checkpoint, recovery scans the whole log and finds both.
    let flipped = acks[40].physical_offset;
    let zeroed = acks[90].physical_offset;
    let len_at = |pos| a.read_log(pos, 1).unwrap().data.len() as u64;
    damage(b_dir.path(), segment, flipped + 100, &[0xFF]);
    damage(b_dir.path(), segment, zeroed, &[0u8; 80]);
    std::fs::remove_file(b_dir.path().join("checkpoint")).unwrap();
    let b = open(b_dir.path());
    let damaged = vec![
        flipped..flipped + len_at(flipped),
        zeroed..zeroed + len_at(zeroed),
    ];
    assert_eq!(b.damaged_ranges(), damaged);
    let lost: Vec<_> = [40, 90]
        .map(|i| ((acks[i].queue_id, acks[i].queue_offset), i))
        .to_vec();
    for ((queue, offset), i) in &lost {
        let topic = common::replica::TOPICS[i % 2].0;
        let read = b.read(topic, *queue, *offset, 1, 1 << 20).unwrap();
        assert_eq!(
            read.corrupt_offsets,
            [*offset],
            "message {i} is reported lost"
        );
    }

    // Bytes that do not fit a damaged range, or are not intact, change nothing.
    let range = damaged[0].clone();
    let intact = a
        .read_log(range.start, (range.end - range.start) as usize)
        .unwrap();
    assert_eq!(intact.end(), range.end);
    let refuse = |start, bytes| run(b.heal(start, bytes)).unwrap_err();
    let not_damaged = RawLogProblem::NotDamaged;
    assert_refused(refuse(range.start + 8, intact.data.clone()), &not_damaged);
    assert_refused(refuse(range.start, intact.data.slice(..100)), &not_damaged);
    let mut bad = intact.data.to_vec();
    bad[90] ^= 1;
    assert_refused(
        refuse(range.start, bad.into()),
        &RawLogProblem::BadFrame(String::new()),
    );
    assert_eq!(b.damaged_ranges(), damaged);
    assert_eq!(b.rewrites(), 0, "a refused heal rewrites nothing");

    for range in &damaged {
        let intact = a
            .read_log(range.start, (range.end - range.start) as usize)
            .unwrap();
        run(b.heal(range.start, intact.data)).unwrap();
    }
    assert!(b.damaged_ranges().is_empty());
    assert_eq!(b.rewrites(), 2 * damaged.len() as u64);
    assert_same_log(a_dir.path(), b_dir.path());
    assert_eq!(
        all_queues(&b),
        all_queues(&a),
        "the holes hold their records again"
    );

    // The next open finds nothing damaged and the key index has them too.
    b.close().unwrap();
    drop(b);
    let b = open(b_dir.path());
    let report = b.recovery_report();
    assert!(report.corrupt_ranges.is_empty(), "{report:?}");
    assert!(report.repairs.is_empty(), "{report:?}");
    assert_same_reads(&a, &b);
    // And it follows on.
    fill(&a, 2, 30);
    run(copy_log(&a, &b, a.log_end(), &[9000]));
    assert_same_log(a_dir.path(), b_dir.path());
    assert_same_reads(&a, &b);
}

#[test]
fn a_crash_right_after_healing_keeps_what_was_healed() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path());
    let acks = fill(&a, 3, 150);
    let b = open(b_dir.path());
    run(copy_log(&a, &b, a.log_end(), &[65536]));
    let segment = b.config().segment_size_bytes;
    b.close().unwrap();
    drop(b);
    // Message 90 has keys: after the crash, looking them up must find it.
    let zeroed = acks[90].physical_offset;
    damage(b_dir.path(), segment, zeroed, &[0u8; 80]);
    std::fs::remove_file(b_dir.path().join("checkpoint")).unwrap();
    let b = open(b_dir.path());
    let [range] = b.damaged_ranges().try_into().unwrap();
    let intact = a
        .read_log(range.start, (range.end - range.start) as usize)
        .unwrap();
    run(b.heal(range.start, intact.data)).unwrap();
    // The process dies before anything else is written: its files as they
    // are now (page cache included) are what the next open finds.
    let crashed = tempfile::tempdir().unwrap();
    dduomq_testkit::copy_dir(b_dir.path(), crashed.path());
    drop(b);
    std::fs::remove_file(crashed.path().join("LOCK")).ok();
    let c = open(crashed.path());
    let report = c.recovery_report();
    assert!(report.corrupt_ranges.is_empty(), "{report:?}");
    assert!(report.repairs.is_empty(), "{report:?}");
    assert_same_log(a_dir.path(), crashed.path());
    assert_same_reads(&a, &c);
}

/// A damaged range heals in pieces of whole frames (a replica never holds a
/// whole range, up to a segment, at once): each piece leaves the rest
/// damaged; a piece ending inside a frame changes nothing.
#[test]
fn a_damaged_range_heals_in_pieces() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path());
    let acks = fill(&a, 1, 150);
    let b = open(b_dir.path());
    run(copy_log(&a, &b, a.log_end(), &[65536]));
    let segment = b.config().segment_size_bytes;
    b.close().unwrap();
    drop(b);

    // Zeros over two neighbours' headers: one damaged range of both.
    let (first, second, after) = (
        acks[90].physical_offset,
        acks[91].physical_offset,
        acks[92].physical_offset,
    );
    damage(b_dir.path(), segment, first, &[0u8; 80]);
    damage(b_dir.path(), segment, second, &[0u8; 80]);
    std::fs::remove_file(b_dir.path().join("checkpoint")).unwrap();
    let b = open(b_dir.path());
    assert_eq!(b.damaged_ranges(), vec![first..after]);

    let piece = a.read_log(first, 1).unwrap();
    assert_eq!(piece.end(), second, "one frame");
    assert_refused(
        run(b.heal(first, piece.data.slice(..100))).unwrap_err(),
        &RawLogProblem::NotDamaged,
    );
    assert_eq!(b.damaged_ranges(), vec![first..after]);
    run(b.heal(first, piece.data)).unwrap();
    assert_eq!(b.damaged_ranges(), vec![second..after]);
    let rest = a.read_log(second, (after - second) as usize).unwrap();
    run(b.heal(second, rest.data)).unwrap();
    assert!(b.damaged_ranges().is_empty());
    assert_eq!(
        b.rewrites(),
        4,
        "two heals; the refused piece rewrote nothing"
    );
    assert_same_log(a_dir.path(), b_dir.path());
    assert_eq!(
        all_queues(&b),
        all_queues(&a),
        "the holes hold their records again"
    );
}
