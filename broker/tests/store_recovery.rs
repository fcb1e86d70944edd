//! Damage on real segment files: torn tails, flipped bytes, retention and a full
//! disk. Each test builds a real store, damages copies of its files, and reopens.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{body, config, message, read_all};
use dduomq_broker::store::{Appended, DiskFullPolicy, Store, StoreConfig, StoreError};
use dduomq_proto::Reason;
use dduomq_testkit::copy_dir;

/// Appends `n` messages of 1000 bytes to queue 0 of topic `t`, closes the store,
/// and returns the acks.
fn populate(dir: &Path, n: u64) -> Vec<Appended> {
    let store = Store::open(config(dir)).unwrap();
    let mut acks = Vec::new();
    for i in 0..n {
        let key = format!("k{i}");
        acks.extend(
            store
                .append_blocking(vec![message("t", 0, &body(i, 1000), &[&key], "")])
                .unwrap(),
        );
    }
    store.close().unwrap();
    acks
}

fn segment_of(dir: &Path, physical_offset: u64, segment_size: u64) -> (PathBuf, u64) {
    let base = physical_offset - physical_offset % segment_size;
    (
        dir.join("commitlog").join(format!("{base:020}")),
        physical_offset - base,
    )
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn read_at(path: &Path, at: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, at).unwrap();
    buf
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let original = tempfile::tempdir().unwrap();
    let acks = populate(original.path(), 40);
    let seg_size = config(original.path()).segment_size_bytes;
    let last = acks.last().unwrap();
    let end = Store::open(config(original.path()))
        .unwrap()
        .stats()
        .commit_log_max;
    let size = (end - last.physical_offset) as usize;

    // The crash happened after the checkpoint: recovery must scan the tail.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(original.path(), copy.path());
    std::fs::remove_file(copy.path().join("checkpoint")).unwrap();
    let (seg, rel) = segment_of(copy.path(), last.physical_offset, seg_size);
    // Keep only the first 300 bytes of the last record, as a cut-short write would.
    patch(&seg, rel + 300, &vec![0u8; size - 300]);
    let left_behind = read_at(&seg, rel, 300).iter().filter(|b| **b != 0).count() as u64;

    let store = Store::open(config(copy.path())).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.end, last.physical_offset);
    assert_eq!(report.torn_bytes, left_behind);
    assert!(report.corrupt_ranges.is_empty());
    assert_eq!(read_at(&seg, rel, size), vec![0u8; size], "tail zeroed");
    let got = read_all(&store, "t", 0);
    assert_eq!(got.len(), 39);
    for (i, rec) in got.iter().enumerate() {
        assert_eq!(&rec.body[..], &body(i as u64, 1000)[..]);
    }
    // The next append takes the torn record's place and offset.
    let ack = store
        .append_blocking(vec![message("t", 0, b"after", &[], "")])
        .unwrap();
    assert_eq!(ack[0].queue_offset, 39);
    assert_eq!(ack[0].physical_offset, last.physical_offset);
    assert!(
        store
            .lookup_by_key("t", "k39", i64::MIN, i64::MAX, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .lookup_by_key("t", "k38", i64::MIN, i64::MAX, 10)
            .unwrap()
            .len(),
        1
    );
    store.close().unwrap();
    drop(store);
    let store = Store::open(config(copy.path())).unwrap();
    assert_eq!(read_all(&store, "t", 0).len(), 40);
}

#[test]
fn garbage_after_the_end_is_cleared() {
    let original = tempfile::tempdir().unwrap();
    let acks = populate(original.path(), 5);
    let seg_size = config(original.path()).segment_size_bytes;
    let copy = tempfile::tempdir().unwrap();
    copy_dir(original.path(), copy.path());
    let end = Store::open(config(original.path()))
        .unwrap()
        .stats()
        .commit_log_max;
    let (seg, rel) = segment_of(copy.path(), end, seg_size);
    patch(&seg, rel, &body(99, 500));
    let store = Store::open(config(copy.path())).unwrap();
    assert_eq!(store.recovery_report().end, end);
    assert!(store.recovery_report().torn_bytes > 400);
    assert_eq!(read_all(&store, "t", 0).len(), acks.len());
}

/// Flips one byte of record `victim` and returns the directory copy.
fn flipped_copy(
    original: &Path,
    acks: &[Appended],
    victim: usize,
    at: u64,
    keep_checkpoint: bool,
) -> tempfile::TempDir {
    let seg_size = config(original).segment_size_bytes;
    let copy = tempfile::tempdir().unwrap();
    copy_dir(original, copy.path());
    if !keep_checkpoint {
        std::fs::remove_file(copy.path().join("checkpoint")).unwrap();
        std::fs::remove_dir_all(copy.path().join("consumequeue")).unwrap();
        std::fs::remove_dir_all(copy.path().join("index")).unwrap();
    }
    let (seg, rel) = segment_of(copy.path(), acks[victim].physical_offset, seg_size);
    let mut b = read_at(&seg, rel + at, 1);
    b[0] ^= 0x5A;
    patch(&seg, rel + at, &b);
    copy
}

fn assert_only_victim_lost(store: &Store, victim: u64, n: u64) {
    let r = store.read("t", 0, 0, 1000, usize::MAX).unwrap();
    assert_eq!(r.corrupt_offsets, vec![victim]);
    assert_eq!(r.next_offset, n);
    let offsets: Vec<u64> = r.records.iter().map(|r| r.queue_offset).collect();
    assert_eq!(offsets, (0..n).filter(|o| *o != victim).collect::<Vec<_>>());
    for rec in &r.records {
        assert_eq!(&rec.body[..], &body(rec.queue_offset, 1000)[..]);
    }
}

#[test]
fn flipped_body_byte_is_reported_never_returned() {
    let original = tempfile::tempdir().unwrap();
    let acks = populate(original.path(), 30);
    // Before the checkpoint: found by the read path's CRC check.
    let copy = flipped_copy(original.path(), &acks, 12, 500, true);
    let store = Store::open(config(copy.path())).unwrap();
    assert!(store.recovery_report().corrupt_ranges.is_empty());
    assert_only_victim_lost(&store, 12, 30);
    let err = store.lookup_by_id(&acks[12].id).unwrap_err();
    assert_eq!(err.code(), Reason::CorruptRecord);
    assert_eq!(store.lookup_by_id(&acks[13].id).unwrap().queue_offset, 13);
    drop(store);

    // Rebuilt from scratch (no checkpoint, no consume queues): found by recovery,
    // which keeps every record after it.
    let copy = flipped_copy(original.path(), &acks, 12, 500, false);
    let store = Store::open(config(copy.path())).unwrap();
    let report = store.recovery_report();
    let size = acks[13].physical_offset - acks[12].physical_offset;
    assert_eq!(
        report.corrupt_ranges,
        vec![(acks[12].physical_offset, acks[12].physical_offset + size)]
    );
    assert_eq!(report.records_replayed, 29);
    assert_only_victim_lost(&store, 12, 30);
    assert!(
        store
            .lookup_by_key("t", "k12", i64::MIN, i64::MAX, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .lookup_by_key("t", "k13", i64::MIN, i64::MAX, 10)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn flipped_length_field_is_resynchronised() {
    let original = tempfile::tempdir().unwrap();
    let acks = populate(original.path(), 30);
    // Byte 1 of the record's total_size: the scan cannot trust the length and must
    // find the next record by itself.
    let copy = flipped_copy(original.path(), &acks, 7, 1, false);
    let store = Store::open(config(copy.path())).unwrap();
    let report = store.recovery_report();
    assert_eq!(report.corrupt_ranges.len(), 1);
    assert_eq!(report.corrupt_ranges[0].0, acks[7].physical_offset);
    assert_eq!(report.corrupt_ranges[0].1, acks[8].physical_offset);
    assert_eq!(report.holes, 1);
    assert_only_victim_lost(&store, 7, 30);
}

#[test]
fn retention_deletes_old_segments_and_reads_below_report_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.retention = Duration::from_millis(300);
    let store = Store::open(cfg.clone()).unwrap();
    for i in 0..200 {
        store
            .append_blocking(vec![message("t", 0, &body(i, 1000), &[], "")])
            .unwrap();
    }
    let segments_before = store.stats().segments;
    assert!(segments_before >= 3, "{segments_before} segments");
    // Nothing is old enough yet.
    assert_eq!(store.enforce_retention().unwrap().segments_deleted, 0);
    std::thread::sleep(Duration::from_millis(400));
    let tail = store
        .append_blocking(vec![message("t", 0, b"new", &[], "")])
        .unwrap();
    let report = store.enforce_retention().unwrap();
    // Every segment but the one holding the newest data goes.
    assert_eq!(report.segments_deleted, segments_before - 1);
    assert_eq!(store.stats().segments, 1);
    let (min, max) = store.queue_offsets("t", 0);
    assert_eq!(max, 201);
    assert!(min > 0 && min <= 200);
    match store.read("t", 0, 0, 10, 1 << 20).unwrap_err() {
        StoreError::OffsetOutOfRange {
            min: m,
            max: x,
            offset,
            ..
        } => {
            assert_eq!((m, x, offset), (min, 201, 0));
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(
        store.read("t", 0, 202, 10, 1 << 20).unwrap_err().code(),
        Reason::OffsetOutOfRange
    );
    let rest = read_all(&store, "t", 0);
    assert_eq!(rest.last().unwrap().queue_offset, tail[0].queue_offset);
    // The old files are gone from disk, and the state survives a reopen.
    let files = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .count();
    assert_eq!(files, 1);
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.queue_offsets("t", 0), (min, 201));
    let ack = store
        .append_blocking(vec![message("t", 0, b"x", &[], "")])
        .unwrap();
    assert_eq!(ack[0].queue_offset, 201);
}

#[test]
fn disk_usage_limit_deletes_oldest_first_under_delete_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Any real volume is fuller than this, so only the newest segment survives.
    cfg.disk_usage_limit = 1e-9;
    cfg.disk_full_policy = DiskFullPolicy::DeleteOldest;
    let store = Store::open(cfg).unwrap();
    for i in 0..200 {
        store
            .append_blocking(vec![message("t", 1, &body(i, 1000), &[], "")])
            .unwrap();
    }
    let before = store.stats().segments;
    let report = store.enforce_retention().unwrap();
    assert_eq!(report.segments_deleted, before - 1);
    assert_eq!(read_all(&store, "t", 1).last().unwrap().queue_offset, 199);
}

/// The default policy refuses new messages above the limit and deletes nothing
/// that is not expired (audit: 1,014 of 7,600 unconsumed messages were deleted).
#[test]
fn disk_usage_limit_refuses_writes_and_deletes_nothing_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    assert_eq!(cfg.disk_full_policy, DiskFullPolicy::Refuse);
    let store = Store::open(cfg.clone()).unwrap();
    for i in 0..200 {
        store
            .append_blocking(vec![message("t", 1, &body(i, 1000), &[], "")])
            .unwrap();
    }
    let segments = store.stats().segments;
    store.close().unwrap();
    drop(store);
    // Any real volume is fuller than this.
    let store = Store::open(StoreConfig {
        disk_usage_limit: 1e-9,
        ..cfg.clone()
    })
    .unwrap();
    let err = store
        .append_blocking(vec![message("t", 1, b"refused", &[], "")])
        .unwrap_err();
    assert_eq!(err.code(), Reason::DiskFull);
    assert!(err.to_string().contains("above disk_usage_limit"), "{err}");
    assert_eq!(store.enforce_retention().unwrap().segments_deleted, 0);
    assert_eq!(store.stats().segments, segments);
    let got = read_all(&store, "t", 1);
    assert_eq!(got.len(), 200, "every unconsumed message is still readable");
    store.close().unwrap();
    drop(store);
    // Below the limit again, appends continue at the next offset.
    let store = Store::open(cfg).unwrap();
    let ack = store
        .append_blocking(vec![message("t", 1, b"taken", &[], "")])
        .unwrap();
    assert_eq!(ack[0].queue_offset, 200);
}

const TMPFS_ENV: &str = "DDUOMQ_TEST_TMPFS_DIR";

/// Runs the disk-full scenario on a 512 KiB tmpfs mounted in a private mount
/// namespace (re-executing this test under `unshare`), so no real volume fills up.
#[test]
fn disk_full_fails_cleanly_and_recovers_when_space_is_freed() {
    if let Ok(dir) = std::env::var(TMPFS_ENV) {
        return disk_full_scenario(Path::new(&dir));
    }
    let mount_point = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=512k dduomq-test "$0" && exec "$@""#)
        .arg(mount_point.path())
        .arg(exe)
        .args([
            "--exact",
            "disk_full_fails_cleanly_and_recovers_when_space_is_freed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(TMPFS_ENV, mount_point.path())
        .output()
        .expect("`unshare` (util-linux) is required for the disk-full test");
    assert!(
        out.status.success(),
        "disk-full scenario failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Appends batches until one fails; the failure.
fn fill_until_full(
    store: &Store,
    acked: &mut Vec<Appended>,
    batch: &dyn Fn(usize) -> Vec<dduomq_broker::store::Message>,
) -> StoreError {
    loop {
        match store.append_blocking(batch(acked.len())) {
            Ok(acks) => acked.extend(acks),
            Err(e) => return e,
        }
        assert!(acked.len() < 10_000, "the tmpfs never filled up");
    }
}

fn disk_full_scenario(dir: &Path) {
    let ballast = dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 160 * 1024]).unwrap();
    let cfg = StoreConfig {
        data_dir: dir.join("data"),
        ..config(dir)
    };
    let store = Store::open(cfg.clone()).unwrap();
    let mut acked = Vec::new();
    let batch = |first: usize| {
        (0..4)
            .map(|i| message("t", 0, &body((first + i) as u64, 3000), &[], ""))
            .collect::<Vec<_>>()
    };
    let err = fill_until_full(&store, &mut acked, &batch);
    assert_eq!(err.code(), Reason::DiskFull, "{err}");
    assert!(
        err.to_string().starts_with("disk full while allocating ")
            && !err.to_string().contains("allocating allocating"),
        "{err}"
    );
    assert!(!acked.is_empty());
    // The failed batch left nothing visible.
    assert_eq!(store.queue_offsets("t", 0).1, acked.len() as u64);
    let before = store.stats();
    assert_eq!(
        store
            .append_blocking(batch(acked.len()))
            .unwrap_err()
            .code(),
        Reason::DiskFull
    );
    assert_eq!(store.stats().commit_log_max, before.commit_log_max);
    // Free space: appends succeed again, with the next offsets.
    std::fs::remove_file(&ballast).unwrap();
    let ack = store.append_blocking(batch(acked.len())).unwrap();
    assert_eq!(ack[0].queue_offset, acked.len() as u64);
    acked.extend(ack);
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg.clone()).unwrap();
    let got = read_all(&store, "t", 0);
    assert_eq!(got.len(), acked.len());
    for (i, rec) in got.iter().enumerate() {
        assert_eq!(&rec.body[..], &body(i as u64, 3000)[..]);
    }
    // Audit item 6: a 100%-full volume must not keep the broker from starting
    // (it wrote a new checkpoint first), or retention could never free space.
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while f.write_all(&[7u8; 4096]).is_ok() {}
        let _ = f.sync_all();
    }
    let _ = store.close();
    drop(store);
    let store = Store::open(cfg).expect("a full volume does not stop the store from starting");
    assert_eq!(read_all(&store, "t", 0).len(), acked.len());
    // Appends fill what the segment had reserved, then fail cleanly.
    let err = fill_until_full(&store, &mut acked, &batch);
    assert_eq!(err.code(), Reason::DiskFull, "{err}");
    std::fs::remove_file(&filler).unwrap();
    let ack = store.append_blocking(batch(acked.len())).unwrap();
    assert_eq!(ack[0].queue_offset, acked.len() as u64);
}

#[test]
fn a_corrupt_segment_end_does_not_cut_off_later_segments() {
    let original = tempfile::tempdir().unwrap();
    let acks = populate(original.path(), 150);
    let seg_size = config(original.path()).segment_size_bytes;
    // The first record of segment 1; the filler of segment 0 ends right before it.
    let first_in_1 = acks
        .iter()
        .position(|a| a.physical_offset >= seg_size)
        .unwrap();
    assert!(acks[first_in_1 - 1].physical_offset < seg_size);
    let copy = flipped_copy(original.path(), &acks, first_in_1 - 1, 0, false);
    // Also break the filler header (the record's last bytes are followed by it).
    let end_of_last = Store::open(config(original.path()))
        .unwrap()
        .lookup_by_id(&acks[first_in_1 - 1].id)
        .unwrap();
    let filler = end_of_last.physical_offset + end_of_last.size as u64;
    if filler < seg_size {
        let (seg, rel) = segment_of(copy.path(), filler, seg_size);
        patch(&seg, rel + 4, &[0xFF]);
    }
    let store = Store::open(config(copy.path())).unwrap();
    let report = store.recovery_report();
    assert_eq!(
        report.corrupt_ranges.last().unwrap().1,
        seg_size,
        "{report:?}"
    );
    assert_eq!(
        report.end,
        Store::open(config(original.path()))
            .unwrap()
            .stats()
            .commit_log_max
    );
    let r = store.read("t", 0, 0, 1000, usize::MAX).unwrap();
    assert_eq!(r.corrupt_offsets, vec![(first_in_1 - 1) as u64]);
    assert_eq!(
        r.records.len(),
        149,
        "every other record, including later segments, survives"
    );
}

/// One process per data directory: a second open waits for the lock, then
/// refuses with a clear message (the first store keeps working).
#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(config(dir.path())).unwrap();
    let err = Store::open(config(dir.path())).unwrap_err();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    first
        .append_blocking(vec![message("t", 0, b"still mine", &[], "")])
        .unwrap();
    first.close().unwrap();
    drop(first);
    Store::open(config(dir.path())).unwrap();
}
