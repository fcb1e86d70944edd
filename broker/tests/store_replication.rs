//! The store's raw-log API for replication, on real files: a replica that
//! copies its master's log with `read_log` / `append_replicated` holds the same
//! segments byte for byte and answers every read the same, also after a
//! restart and in both flush modes; a bad chunk is refused whole and changes
//! nothing. Truncation is in `store_truncation.rs`.

mod common;

use bytes::Bytes;
use common::replica::{
    all_queues, assert_same_log, assert_same_reads, copy_log, files, fill, replica_config, run,
};
use common::{body, message};
use dduomq_broker::store::{FlushMode, RawLogProblem, Store, StoreError};

/// Chunk sizes that cut the log at many places: one frame, less than a
/// segment, more than a segment.
const CHUNKS: [usize; 5] = [1, 7000, 300, 65536, 200_000];

fn open(dir: &std::path::Path, flush: FlushMode) -> Store {
    Store::open(replica_config(dir, flush)).unwrap()
}

#[test]
fn a_copied_log_is_byte_identical_and_reads_the_same_in_both_flush_modes() {
    for flush in [FlushMode::Async, FlushMode::Sync] {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = open(a_dir.path(), flush);
        let acks = fill(&a, 1, 150);
        assert!(a.stats().segments >= 4, "the log spans several segments");
        let b = open(b_dir.path(), flush);
        let arrivals = b.subscribe();
        run(copy_log(&a, &b, a.log_end(), &CHUNKS));
        assert!(arrivals.has_changed().unwrap(), "waiting readers are woken");
        assert_eq!(*arrivals.borrow(), a.log_end());
        assert_same_log(a_dir.path(), b_dir.path());
        assert_same_reads(&a, &b);
        for ack in &acks {
            assert_eq!(
                b.lookup_by_id(&ack.id).unwrap(),
                a.lookup_by_id(&ack.id).unwrap()
            );
        }

        // The replica recovers what it stored, unchanged, and keeps following.
        b.close().unwrap();
        drop(b);
        let b = open(b_dir.path(), flush);
        let report = b.recovery_report();
        assert!(report.repairs.is_empty(), "{:?}", report.repairs);
        assert!(report.corrupt_ranges.is_empty());
        assert_same_reads(&a, &b);
        fill(&a, 2, 40);
        run(copy_log(&a, &b, a.log_end(), &CHUNKS[1..]));
        assert_same_log(a_dir.path(), b_dir.path());
        assert_same_reads(&a, &b);
    }
}

#[test]
fn read_log_gives_whole_frames_from_a_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path(), FlushMode::Async);
    let acks = fill(&a, 3, 60);
    let end = a.log_end();
    let first = a.read_log(0, 1).unwrap();
    assert_eq!(first.start, 0);
    assert_eq!(first.end(), acks[1].physical_offset, "exactly one frame");
    assert!(a.read_log(end, 100).unwrap().data.is_empty());
    let not_a_frame = a.read_log(acks[1].physical_offset + 1, 100).unwrap_err();
    assert!(
        matches!(
            &not_a_frame,
            StoreError::RawLog { position, problem: RawLogProblem::NotAFrame(_) }
                if *position == acks[1].physical_offset + 1
        ),
        "{not_a_frame}"
    );
    let past_end = a.read_log(end + 8, 100).unwrap_err();
    assert!(
        matches!(
            past_end,
            StoreError::RawLog { problem: RawLogProblem::OutOfRange { min: 0, end: e }, .. } if e == end
        ),
        "{past_end}"
    );
    // Consecutive reads cover the log exactly, each within its budget unless
    // it is one frame.
    let mut log = Vec::new();
    let mut at = 0;
    while at < end {
        let chunk = a.read_log(at, 10_000).unwrap();
        assert_eq!(chunk.start, at);
        let one_frame = a.read_log(at, 1).unwrap();
        assert!(chunk.data.len() <= 10_000 || chunk == one_frame);
        log.extend_from_slice(&chunk.data);
        at = chunk.end();
    }
    let segments: Vec<u8> = files(dir.path(), "commitlog")
        .into_values()
        .flatten()
        .collect();
    assert_eq!(log, segments[..end as usize]);
}

/// What a refused chunk must not have changed.
fn snapshot(dir: &std::path::Path) -> Vec<std::collections::BTreeMap<String, Vec<u8>>> {
    ["commitlog", "consumequeue", "index"]
        .iter()
        .map(|sub| files(dir, sub))
        .collect()
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
fn every_kind_of_bad_chunk_is_refused_and_changes_nothing() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path(), FlushMode::Sync);
    let acks = fill(&a, 4, 120);
    let b = open(b_dir.path(), FlushMode::Sync);
    let at = acks[70].physical_offset;
    run(copy_log(&a, &b, at, &CHUNKS));
    b.flush().unwrap();
    let before = snapshot(b_dir.path());
    let reads = all_queues(&b);
    let one = a.read_log(at, 1).unwrap().data;
    let several = a.read_log(at, 20_000).unwrap();
    let last_frame = acks
        .iter()
        .map(|ack| ack.physical_offset)
        .filter(|&p| p < several.end())
        .max()
        .unwrap();
    assert!(last_frame > at, "the chunk holds several frames");
    let refuse = |start: u64, bytes: Bytes| run(b.append_replicated(start, bytes)).unwrap_err();

    let mut bad_crc = one.to_vec();
    *bad_crc.last_mut().unwrap() ^= 1;
    assert_bad_frame(refuse(at, bad_crc.into()), at, "crc32c mismatch");

    let mut bad_last = several.data.to_vec();
    let in_last = (last_frame - at) as usize + 80;
    bad_last[in_last] ^= 0x10;
    assert_bad_frame(refuse(at, bad_last.into()), last_frame, "crc32c mismatch");

    let truncated = one.slice(..one.len() - 1);
    assert_bad_frame(refuse(at, truncated), at, "truncated frame");
    assert_bad_frame(refuse(at, one.slice(..5)), at, "truncated frame");

    let elsewhere = a.read_log(acks[71].physical_offset, 1).unwrap().data;
    assert_bad_frame(refuse(at, elsewhere), at, "record says it lives at");

    let mut short_filler = vec![0u8; 64];
    short_filler[0..4].copy_from_slice(&64u32.to_le_bytes());
    short_filler[4..8].copy_from_slice(&0xDD0A_B1A7u32.to_le_bytes());
    assert_bad_frame(refuse(at, short_filler.into()), at, "segment end");
    assert_bad_frame(refuse(at, Bytes::from(vec![0u8; 100])), at, "zeros");

    for start in [at + 1, at - 1, 0] {
        let err = refuse(start, one.clone());
        assert!(
            matches!(
                &err,
                StoreError::RawLog { position, problem: RawLogProblem::NotAtEnd { end } }
                    if *position == start && *end == at
            ),
            "{err}"
        );
    }

    assert_eq!(b.log_end(), at);
    assert!(
        snapshot(b_dir.path()) == before,
        "a refused chunk changed files"
    );
    assert_eq!(all_queues(&b), reads);
    // The right chunk is still taken.
    run(copy_log(&a, &b, a.log_end(), &CHUNKS));
    assert_same_log(a_dir.path(), b_dir.path());
    assert_same_reads(&a, &b);
}

#[test]
fn a_queue_offset_that_does_not_continue_its_queue_is_refused() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let [x, y, b] = [0, 1, 2].map(|i| open(dirs[i].path(), FlushMode::Async));
    // Same sizes, different queues: x has t/0 at offsets 0 and 1; y has u/0 first.
    let payload = body(9, 500);
    x.append_blocking(vec![message("t", 0, &payload, &[], "")])
        .unwrap();
    x.append_blocking(vec![message("t", 0, &payload, &[], "")])
        .unwrap();
    y.append_blocking(vec![message("u", 0, &payload, &[], "")])
        .unwrap();
    run(copy_log(&y, &b, y.log_end(), &[1]));
    let second = x.read_log(b.log_end(), 1).unwrap();
    assert_eq!(second.start, b.log_end());
    let before = snapshot(dirs[2].path());
    let err = run(b.append_replicated(second.start, second.data)).unwrap_err();
    assert_bad_frame(
        err,
        second.start,
        "record has offset 1 in t/0, whose next offset is 0",
    );
    assert!(snapshot(dirs[2].path()) == before);
    // A repeated offset too: y's record of u/0 offset 0 again, at x's position.
    let z_dir = tempfile::tempdir().unwrap();
    let z = open(z_dir.path(), FlushMode::Async);
    z.append_blocking(vec![message("v", 0, &payload, &[], "")])
        .unwrap();
    z.append_blocking(vec![message("u", 0, &payload, &[], "")])
        .unwrap();
    let repeat = z.read_log(b.log_end(), 1).unwrap();
    let err = run(b.append_replicated(repeat.start, repeat.data)).unwrap_err();
    assert_bad_frame(
        err,
        repeat.start,
        "record has offset 0 in u/0, whose next offset is 1",
    );
}

#[test]
fn an_empty_replica_may_start_at_a_segment_base() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path(), FlushMode::Async);
    fill(&a, 5, 120);
    let segment = a.config().segment_size_bytes;
    let b = open(b_dir.path(), FlushMode::Async);
    let first = run(b.append_replicated(segment, a.read_log(segment, 1).unwrap().data)).unwrap();
    assert!(first > segment);
    run(copy_log(&a, &b, a.log_end(), &CHUNKS));
    let later_segments = |dir| {
        let mut f = files(dir, "commitlog");
        f.pop_first();
        f
    };
    assert!(later_segments(a_dir.path()) == files(b_dir.path(), "commitlog"));
    b.close().unwrap();
    drop(b);
    let b = open(b_dir.path(), FlushMode::Async);
    assert!(b.recovery_report().repairs.is_empty());
    // Each queue holds the master's records from the segment on, at their offsets.
    let on_a = all_queues(&a);
    let on_b = all_queues(&b);
    assert_eq!(
        on_a.keys().collect::<Vec<_>>(),
        on_b.keys().collect::<Vec<_>>()
    );
    for (queue, (_, max, records)) in on_a {
        let kept: Vec<_> = records
            .into_iter()
            .filter(|r| r.physical_offset >= segment)
            .collect();
        let (b_min, b_max, b_records) = &on_b[&queue];
        assert_eq!((*b_min, *b_max), (kept[0].queue_offset, max), "{queue:?}");
        assert_eq!(b_records, &kept, "{queue:?}");
    }
}

#[test]
fn copying_while_the_master_appends_and_readers_read_the_replica() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path(), FlushMode::Sync);
    let b = open(b_dir.path(), FlushMode::Sync);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for seed in 0..8 {
                fill(&a, 10 + seed, 40);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        s.spawn(|| {
            // Every read of the replica sees whole, valid records: a prefix of
            // what the master holds.
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for ((topic, queue), (_, _, records)) in all_queues(&b) {
                    for (i, r) in records.iter().enumerate() {
                        assert_eq!(r.queue_offset, i as u64, "{topic}/{queue}");
                    }
                }
            }
        });
        run(async {
            let mut sizes = CHUNKS.iter().cycle();
            while !done.load(std::sync::atomic::Ordering::SeqCst) || b.log_end() < a.log_end() {
                let at = b.log_end();
                let chunk = a.read_log(at, *sizes.next().unwrap()).unwrap();
                if chunk.data.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                b.append_replicated(at, chunk.data).await.unwrap();
            }
        });
    });
    assert_same_log(a_dir.path(), b_dir.path());
    assert_same_reads(&a, &b);
}
