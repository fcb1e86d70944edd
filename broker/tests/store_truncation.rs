//! Truncating the commit log (a follower dropping a tail its master's history
//! does not have), on real files: afterwards, and after following another
//! tail, the store equals one that never had the dropped tail; a truncation
//! interrupted by a crash at any step is finished on the next open.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::replica::{
    all_queues, assert_same_log, assert_same_reads, copy_log, fill, record_cut, replica_config, run,
};
use dduomq_broker::store::{Checkpoint, FlushMode, RawLogProblem, Store, StoreError};

const CHUNKS: [usize; 4] = [1, 9000, 65536, 200_000];

fn open(dir: &Path, flush: FlushMode) -> Store {
    Store::open(replica_config(dir, flush)).unwrap()
}

fn reopen(store: Store, dir: &Path) -> Store {
    let flush = store.config().flush;
    store.close().unwrap();
    drop(store);
    open(dir, flush)
}

fn begin_epochs(store: &Store, starts: &[(u64, u64)]) {
    for &(epoch, start) in starts {
        store.begin_epoch(epoch, start).unwrap();
    }
}

fn epochs(store: &Store) -> Vec<(u64, u64)> {
    store
        .epochs()
        .starts()
        .iter()
        .map(|s| (s.epoch, s.start_offset))
        .collect()
}

/// A master `a`, and `a2`: a store that has `a`'s log up to `cut` and then
/// its own tail (a new master's, after a failover).
struct Histories {
    dirs: Vec<tempfile::TempDir>,
    a: Store,
    a2: Store,
    cut: u64,
}

/// `a` with 150 messages; the cut is at the `cut_at`-th message.
fn histories(flush: FlushMode, cut_at: usize) -> Histories {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = open(dirs[0].path(), flush);
    let acks = fill(&a, 1, 150);
    let cut = acks[cut_at].physical_offset;
    let a2 = open(dirs[1].path(), flush);
    run(copy_log(&a, &a2, cut, &CHUNKS));
    Histories { dirs, a, a2, cut }
}

/// Truncates a full copy of `a` to the cut, checks it equals `a`'s prefix,
/// then follows `a2`'s own tail and checks it equals a store built from `a2`
/// directly.
fn truncate_then_follow(flush: FlushMode, cut_at: usize) {
    let h = histories(flush, cut_at);
    let (b_dir, c_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = open(b_dir.path(), flush);
    run(copy_log(&h.a, &b, h.a.log_end(), &CHUNKS));
    begin_epochs(&b, &[(1, 0), (2, h.cut - 1), (3, h.cut), (5, h.cut + 1)]);
    assert_eq!(b.rewrites(), 0);
    run(b.truncate_log(h.cut)).unwrap();
    assert_eq!(b.log_end(), h.cut);
    assert_eq!(b.rewrites(), 2, "one rewrite, ended");
    assert_eq!(
        epochs(&b),
        [(1, 0), (2, h.cut - 1)],
        "epochs from the cut on go"
    );
    assert_same_log(b_dir.path(), h.dirs[1].path());
    assert_same_reads(&b, &h.a2);
    let b = reopen(b, b_dir.path());
    assert!(
        b.recovery_report().repairs.is_empty(),
        "{:?}",
        b.recovery_report().repairs
    );
    assert_same_reads(&b, &h.a2);
    assert_eq!(epochs(&b), [(1, 0), (2, h.cut - 1)]);

    fill(&h.a2, 7, 60);
    run(copy_log(&h.a2, &b, h.a2.log_end(), &CHUNKS));
    let c = open(c_dir.path(), flush);
    run(copy_log(&h.a2, &c, h.a2.log_end(), &CHUNKS));
    assert_same_log(b_dir.path(), c_dir.path());
    assert_same_reads(&b, &c);
    let b = reopen(b, b_dir.path());
    assert!(
        b.recovery_report().repairs.is_empty(),
        "{:?}",
        b.recovery_report().repairs
    );
    assert_same_reads(&b, &c);
}

#[test]
fn truncating_in_the_middle_of_queues_then_following_another_tail() {
    truncate_then_follow(FlushMode::Async, 80);
    truncate_then_follow(FlushMode::Sync, 81);
}

#[test]
fn truncating_across_segment_boundaries() {
    let h = histories(FlushMode::Async, 5);
    assert!(h.a.stats().segments >= 4);
    assert!(
        h.cut < h.a.config().segment_size_bytes,
        "the cut is in the first segment"
    );
    truncate_then_follow(FlushMode::Async, 5);
}

#[test]
fn a_position_that_is_not_a_frame_boundary_is_refused() {
    let h = histories(FlushMode::Async, 40);
    let end = h.a.log_end();
    let not_a_frame = run(h.a.truncate_log(h.cut + 1)).unwrap_err();
    assert!(
        matches!(
            &not_a_frame,
            StoreError::RawLog { position, problem: RawLogProblem::NotAFrame(_) } if *position == h.cut + 1
        ),
        "{not_a_frame}"
    );
    let past_end = run(h.a.truncate_log(end + 8)).unwrap_err();
    assert!(
        matches!(
            past_end,
            StoreError::RawLog {
                problem: RawLogProblem::OutOfRange { .. },
                ..
            }
        ),
        "{past_end}"
    );
    let before = all_queues(&h.a);
    begin_epochs(&h.a, &[(1, 0), (4, end)]);
    let rewrites = h.a.rewrites();
    run(h.a.truncate_log(end)).unwrap();
    assert_eq!(h.a.log_end(), end);
    assert_eq!(all_queues(&h.a), before);
    assert_eq!(h.a.rewrites(), rewrites, "nothing was cut: no rewrite");
    assert_eq!(
        epochs(&h.a),
        [(1, 0)],
        "an epoch begun at the end holds no records"
    );
}

#[test]
fn epochs_are_durable_and_a_damaged_history_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), FlushMode::Sync);
    begin_epochs(&store, &[(1, 0), (2, 0), (7, 4096)]);
    store.begin_epoch(7, 4096).unwrap();
    let refused = store.begin_epoch(6, 8192).unwrap_err();
    assert_eq!(
        refused.code(),
        dduomq_proto::Reason::InvalidArgument,
        "{refused}"
    );
    assert!(
        store.begin_epoch(8, 100).is_err(),
        "starts before the latest"
    );
    let store = reopen(store, dir.path());
    assert_eq!(epochs(&store), [(1, 0), (2, 0), (7, 4096)]);
    store.close().unwrap();
    drop(store);
    let path = dir.path().join("epochs");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(replica_config(dir.path(), FlushMode::Sync)).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

/// How far an interrupted truncation got before the crash.
#[derive(Debug, Clone, Copy)]
enum CrashedAfter {
    /// Only the cut was recorded.
    Recording,
    /// Part of the log bytes were zeroed.
    ZeroingSome,
    /// The bytes were zeroed and the later segments deleted.
    DeletingSegments,
    /// All done and checkpointed; only the record was left.
    Checkpointing,
}

#[test]
fn a_truncation_interrupted_at_any_step_is_finished_on_open() {
    for crash in [
        CrashedAfter::Recording,
        CrashedAfter::ZeroingSome,
        CrashedAfter::DeletingSegments,
        CrashedAfter::Checkpointing,
    ] {
        let h = histories(FlushMode::Async, 70);
        let b_dir = tempfile::tempdir().unwrap();
        let b = open(b_dir.path(), FlushMode::Async);
        run(copy_log(&h.a, &b, h.a.log_end(), &CHUNKS));
        let end = b.log_end();
        let segment = b.config().segment_size_bytes;
        begin_epochs(&b, &[(1, 0), (2, h.cut), (3, h.cut + 1)]);
        if let CrashedAfter::Checkpointing = crash {
            run(b.truncate_log(h.cut)).unwrap();
        }
        b.close().unwrap();
        drop(b);
        record_cut(b_dir.path(), h.cut, end, &[]);
        let log = b_dir.path().join("commitlog");
        let segment_file = |base: u64| log.join(format!("{base:020}"));
        let cut_base = h.cut - h.cut % segment;
        match crash {
            CrashedAfter::Recording | CrashedAfter::Checkpointing => {}
            CrashedAfter::ZeroingSome => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(segment_file(cut_base))
                    .unwrap();
                file.write_all_at(&[0u8; 700], h.cut - cut_base).unwrap();
            }
            CrashedAfter::DeletingSegments => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(segment_file(cut_base))
                    .unwrap();
                let zeros = vec![0u8; (segment - (h.cut - cut_base)) as usize];
                file.write_all_at(&zeros, h.cut - cut_base).unwrap();
                let mut base = cut_base + segment;
                while base < end {
                    std::fs::remove_file(segment_file(base)).unwrap();
                    base += segment;
                }
            }
        }
        let b = open(b_dir.path(), FlushMode::Async);
        let report = b.recovery_report();
        assert!(report.repairs.is_empty(), "{crash:?}: {:?}", report.repairs);
        assert!(report.corrupt_ranges.is_empty(), "{crash:?}");
        assert_eq!((report.holes, report.lost_bytes), (0, 0), "{crash:?}");
        assert_eq!(b.log_end(), h.cut, "{crash:?}");
        assert!(!b_dir.path().join("truncating").exists(), "{crash:?}");
        assert_eq!(epochs(&b), [(1, 0)], "{crash:?}");
        assert_same_log(b_dir.path(), h.dirs[1].path());
        assert_same_reads(&b, &h.a2);
        // Nothing comes back on the next open, and following goes on.
        let b = reopen(b, b_dir.path());
        assert_same_reads(&b, &h.a2);
        fill(&h.a2, 8, 30);
        run(copy_log(&h.a2, &b, h.a2.log_end(), &CHUNKS));
        assert_same_log(b_dir.path(), h.dirs[1].path());
        assert_same_reads(&b, &h.a2);
    }
}

#[test]
fn readers_racing_truncations_never_see_cut_bytes() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path(), FlushMode::Async);
    let acks = fill(&a, 7, 150);
    let b = open(b_dir.path(), FlushMode::Async);
    run(copy_log(&a, &b, a.log_end(), &CHUNKS));
    let cut = acks[60].physical_offset;
    let expected = all_queues(&a);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // The replica is cut and given the same bytes again, over and
            // over: a read sees a queue end lower or not, never a record the
            // cut zeroed (reported corrupt, so a consumer would skip it).
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for ((topic, queue), (_, _, records)) in &expected {
                    let mut offset = 0;
                    while let Ok(read) = b.read(topic, *queue, offset, 100, 1 << 20) {
                        assert!(
                            read.corrupt_offsets.is_empty(),
                            "{topic}/{queue}: corrupt {:?}",
                            read.corrupt_offsets
                        );
                        for record in &read.records {
                            assert_eq!(record, &records[record.queue_offset as usize]);
                        }
                        if read.next_offset == offset {
                            break;
                        }
                        offset = read.next_offset;
                    }
                }
            }
        });
        for _ in 0..200 {
            run(b.truncate_log(cut)).unwrap();
            run(copy_log(&a, &b, a.log_end(), &[200_000]));
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert_same_reads(&a, &b);
}

#[test]
fn an_interrupted_truncation_below_what_a_checkpoint_called_durable_loses_nothing() {
    // A checkpoint may record the log flushed past where it starts recovery
    // (a sync writer flushed on meanwhile): a cut between the two, interrupted,
    // is deliberate, not bytes damage destroyed.
    let h = histories(FlushMode::Async, 70);
    let b_dir = tempfile::tempdir().unwrap();
    let b = open(b_dir.path(), FlushMode::Async);
    run(copy_log(&h.a, &b, h.a.log_end(), &CHUNKS));
    let end = b.log_end();
    b.close().unwrap();
    drop(b);
    Checkpoint {
        commit_log_flushed: end,
        recover_from: 0,
        segment_size: replica_config(b_dir.path(), FlushMode::Async).segment_size_bytes,
        index_tip: Default::default(),
        queue_ends: None,
    }
    .store(b_dir.path())
    .unwrap();
    record_cut(b_dir.path(), h.cut, end, &[]);
    let b = open(b_dir.path(), FlushMode::Async);
    let report = b.recovery_report();
    assert_eq!((report.lost_bytes, report.holes), (0, 0));
    assert!(report.repairs.is_empty(), "{:?}", report.repairs);
    assert!(report.corrupt_ranges.is_empty());
    assert_eq!(b.log_end(), h.cut);
    assert_same_log(b_dir.path(), h.dirs[1].path());
    assert_same_reads(&b, &h.a2);
}

/// Overwrites `len` bytes at log position `pos` of the (closed) store in `dir`
/// with zeros.
fn zero(dir: &Path, segment_size: u64, pos: u64, len: usize) {
    let base = pos - pos % segment_size;
    let path = dir.join("commitlog").join(format!("{base:020}"));
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![0u8; len], pos - base).unwrap();
}

#[test]
fn a_cut_where_this_members_damage_starts_is_taken() {
    // The divergence point comes from the master's history; where this
    // member's own bytes there are damaged, it has no frame to check, but
    // everything from the cut on goes anyway, the holes the damage left
    // included (else the master's records would not fit its queues). A cut
    // inside a damaged range is refused: the holes before it cannot be told
    // from those after it.
    let h = histories(FlushMode::Async, 90);
    let mut before_cut = 0;
    while h.a.read_log(before_cut, 1).unwrap().end() < h.cut {
        before_cut = h.a.read_log(before_cut, 1).unwrap().end();
    }
    fill(&h.a2, 9, 40);
    // Damage at the cut, past it (a cut at a frame before it), and across it.
    let after_cut = h.a.read_log(h.cut, 1).unwrap().end();
    for damaged_from in [h.cut, after_cut, before_cut] {
        let b_dir = tempfile::tempdir().unwrap();
        let b = open(b_dir.path(), FlushMode::Async);
        run(copy_log(&h.a, &b, h.a.log_end(), &CHUNKS));
        let segment = b.config().segment_size_bytes;
        b.close().unwrap();
        drop(b);
        zero(b_dir.path(), segment, damaged_from, 80);
        if damaged_from < h.cut {
            zero(b_dir.path(), segment, h.cut, 80);
        }
        std::fs::remove_file(b_dir.path().join("checkpoint")).unwrap();
        let b = open(b_dir.path(), FlushMode::Async);
        let [damage] = b.damaged_ranges().try_into().unwrap();
        assert_eq!(damage.start, damaged_from);
        assert!(damage.end > h.cut);
        if damaged_from < h.cut {
            let err = run(b.truncate_log(h.cut)).unwrap_err();
            assert!(
                matches!(&err, StoreError::RawLog { position, problem: RawLogProblem::NotAFrame(_) }
                    if *position == h.cut),
                "{err}"
            );
            assert_eq!(b.damaged_ranges(), [damage]);
            continue;
        }
        run(b.truncate_log(h.cut)).unwrap();
        assert_eq!(b.log_end(), h.cut);
        assert!(b.damaged_ranges().is_empty());
        run(copy_log(&h.a2, &b, h.a2.log_end(), &CHUNKS));
        assert_same_log(b_dir.path(), h.dirs[1].path());
        assert_same_reads(&b, &h.a2);
        let b = reopen(b, b_dir.path());
        assert!(b.recovery_report().repairs.is_empty());
        assert_same_reads(&b, &h.a2);
    }
}
