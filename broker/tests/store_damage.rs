//! The damaged-store suite: every kind of file of a data directory truncated,
//! flipped, zeroed and deleted. For each case the store either starts or
//! refuses with a message naming the file; no intact message is lost (each is
//! read back byte-exact at its offset, and found by id and key), no damaged one
//! is delivered, damaged ones are reported, appends continue after the last
//! offset given out, a second start finds nothing left to repair, and
//! `dduomq-storetool verify` reports exactly the damage (and exits 1).

mod common;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{body, config, message, verify};
use dduomq_broker::store::{MessageId, Store};
use tempfile::TempDir;

/// Queues of the fixture and how many messages each gets, interleaved in the log.
const QUEUES: [(&str, u32, u64); 3] = [("a", 0, 450), ("a", 1, 100), ("b", 0, 50)];
const MESSAGES: usize = 600;

/// One acknowledged message of the fixture.
#[derive(Debug, Clone)]
struct Sent {
    topic: &'static str,
    queue_id: u32,
    queue_offset: u64,
    id: MessageId,
    /// Commit-log bytes of its record.
    start: u64,
    end: u64,
    body: Vec<u8>,
    key: String,
}

/// A closed store with [`MESSAGES`] messages over several segments, consume-queue
/// files and an index file.
struct Fixture {
    dir: TempDir,
    sent: Vec<Sent>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path())).unwrap();
        let mut sent = Vec::new();
        for i in 0..MESSAGES {
            let (topic, queue_id, _) = QUEUES[match i % 12 {
                0..=8 => 0,
                9 | 10 => 1,
                _ => 2,
            }];
            let key = format!("k{i}");
            let body = body(i as u64, 300 + (i * 37) % 400);
            let ack = store
                .append_blocking(vec![message(topic, queue_id, &body, &[&key], "")])
                .unwrap()[0];
            let size = store.lookup_by_id(&ack.id).unwrap().size;
            sent.push(Sent {
                topic,
                queue_id,
                queue_offset: ack.queue_offset,
                id: ack.id,
                start: ack.physical_offset,
                end: ack.physical_offset + size as u64,
                body,
                key,
            });
        }
        for (topic, queue_id, count) in QUEUES {
            assert_eq!(store.queue_offsets(topic, queue_id), (0, count));
        }
        store.close().unwrap();
        Fixture { dir, sent }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn segment_size(&self) -> u64 {
        config(self.path()).segment_size_bytes
    }

    fn segments(&self) -> Vec<PathBuf> {
        files_in(&self.path().join("commitlog"))
    }

    fn queue_files(&self, topic: &str, queue_id: u32) -> Vec<PathBuf> {
        files_in(
            &self
                .path()
                .join("consumequeue")
                .join(topic)
                .join(queue_id.to_string()),
        )
    }

    /// The index files: the test configuration's hold 256 entries each.
    fn index_files(&self) -> Vec<PathBuf> {
        let files = files_in(&self.path().join("index"));
        assert_eq!(files.len(), 3, "600 keys in files of 256 entries");
        files
    }

    /// Messages whose records overlap commit-log bytes `[from, to)`.
    fn in_range(&self, from: u64, to: u64) -> Vec<usize> {
        (0..self.sent.len())
            .filter(|&i| self.sent[i].start < to && self.sent[i].end > from)
            .collect()
    }

    /// The first message stored in segment `n`, at least `room` bytes before its end.
    fn first_in_segment(&self, n: u64, room: u64) -> usize {
        let size = self.segment_size();
        (0..self.sent.len())
            .find(|&i| {
                let s = self.sent[i].start;
                s / size == n && s % size + room < size
            })
            .unwrap()
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn zero(path: &Path, at: u64, len: usize) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; len], at).unwrap();
}

fn zero_all(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    zero(path, 0, len as usize);
}

fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5A], at).unwrap();
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn remove(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}

/// What a case expects.
struct Expect<'a> {
    /// Messages whose records the damage destroyed: reported, never delivered.
    lost: Vec<usize>,
    /// Text that must appear in the store's findings and in `verify`'s.
    finding: &'a str,
}

/// Every readable record of a queue by offset, and the offsets reported corrupt.
fn read_queue(store: &Store, topic: &str, queue_id: u32) -> (BTreeMap<u64, Vec<u8>>, Vec<u64>) {
    let (min, max) = store.queue_offsets(topic, queue_id);
    let (mut records, mut corrupt) = (BTreeMap::new(), Vec::new());
    let mut offset = min;
    for _ in 0..10_000 {
        if offset >= max {
            break;
        }
        let r = store.read(topic, queue_id, offset, 64, 1 << 20).unwrap();
        assert!(
            r.next_offset > offset,
            "{topic}/{queue_id}: stuck at {offset}"
        );
        for rec in r.records {
            assert!(
                records
                    .insert(rec.queue_offset, rec.body.to_vec())
                    .is_none()
            );
        }
        corrupt.extend(r.corrupt_offsets);
        offset = r.next_offset;
    }
    assert!(offset >= max, "{topic}/{queue_id}: read did not finish");
    (records, corrupt)
}

/// Opens the damaged store and checks every promise of the module doc.
fn check(fx: &Fixture, expect: Expect<'_>) {
    let cfg = config(fx.path());
    let (code, out) = verify(fx.path(), &cfg);
    assert_eq!(code, 1, "verify must fail on a damaged store:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("damage:") && l.contains(expect.finding)),
        "verify does not report {:?}:\n{out}",
        expect.finding
    );

    let store = Store::open(cfg.clone()).unwrap();
    let report = store.recovery_report().clone();
    let reported = format!("{report:?}");
    // Damage below the checkpoint shows up when it is read (corrupt offsets).
    let mut corrupt_seen = Vec::new();
    for (topic, queue_id, count) in QUEUES {
        let (records, corrupt) = read_queue(&store, topic, queue_id);
        assert_eq!(
            store.queue_offsets(topic, queue_id).1,
            count,
            "{topic}/{queue_id}: offsets given out are kept"
        );
        for (offset, got) in &records {
            let sent = fx
                .sent
                .iter()
                .find(|s| s.topic == topic && s.queue_id == queue_id && s.queue_offset == *offset)
                .unwrap();
            assert_eq!(
                got, &sent.body,
                "{topic}/{queue_id} offset {offset}: wrong bytes"
            );
        }
        corrupt_seen.extend(corrupt.iter().map(|&o| (topic, queue_id, o)));
    }
    for (i, sent) in fx.sent.iter().enumerate() {
        let place = (sent.topic, sent.queue_id, sent.queue_offset);
        if expect.lost.contains(&i) {
            assert!(
                corrupt_seen.contains(&place),
                "lost message {i} at {place:?} is not reported: {reported}"
            );
            continue;
        }
        assert!(
            !corrupt_seen.contains(&place),
            "intact message {i} at {place:?} is reported corrupt: {reported}"
        );
        if i % 7 == 0 {
            assert_eq!(
                &store.lookup_by_id(&sent.id).unwrap().body[..],
                &sent.body[..]
            );
            let hits = store
                .lookup_by_key(sent.topic, &sent.key, i64::MIN, i64::MAX, 10)
                .unwrap();
            assert_eq!(hits.len(), 1, "key {} of intact message {i}", sent.key);
            assert_eq!(&hits[0].body[..], &sent.body[..]);
        }
    }
    assert!(
        corrupt_seen.len() == expect.lost.len(),
        "reported {corrupt_seen:?}, expected the {} lost",
        expect.lost.len()
    );
    // A scan of the log (how the broker rebuilds its own state) goes on past
    // the damage and sees every intact record exactly once.
    let mut scanned = 0;
    store
        .scan(0, |_| {
            scanned += 1;
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(scanned, MESSAGES - expect.lost.len(), "scan of the log");
    // Appends continue after the last offset given out, also after one more
    // restart with nothing appended in between.
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg.clone()).unwrap();
    for (topic, queue_id, count) in QUEUES {
        let ack = store
            .append_blocking(vec![message(topic, queue_id, b"after", &["after"], "")])
            .unwrap();
        assert_eq!(ack[0].queue_offset, count, "{topic}/{queue_id}");
    }
    store.close().unwrap();
    drop(store);
    // Everything repairable was repaired for good.
    let store = Store::open(cfg).unwrap();
    assert!(
        !store.recovery_report().found_damage(),
        "{:?}",
        store.recovery_report()
    );
    for (topic, queue_id, count) in QUEUES {
        let (records, corrupt) = read_queue(&store, topic, queue_id);
        assert_eq!(records.len() + corrupt.len(), count as usize + 1);
        assert_eq!(records[&count], b"after");
    }
}

/// A damaged store that must not start: the error names the file.
fn check_refused(fx: &Fixture, file: &Path) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let err = Store::open(config(fx.path())).unwrap_err().to_string();
    assert!(err.contains(name), "{err:?} does not name {name}");
    let (code, out) = verify(fx.path(), &config(fx.path()));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(name), "{out}");
}

fn no_checkpoint(fx: &Fixture) {
    remove(&fx.path().join("checkpoint"));
}

#[test]
fn an_intact_store_verifies_clean() {
    let fx = Fixture::new();
    let (code, out) = verify(fx.path(), &config(fx.path()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no damage found"), "{out}");
    assert!(!out.contains("damage:"), "{out}");
}

// ---- commit-log segments ----

/// Audit item 2: zeros at a record boundary in a middle segment, no checkpoint:
/// damage to skip and report, never the end of the log.
#[test]
fn zeroed_block_in_a_middle_segment_without_checkpoint() {
    let fx = Fixture::new();
    let first = fx.first_in_segment(2, 8192);
    let at = fx.sent[first].start;
    let (seg, rel) = (&fx.segments()[2], at % fx.segment_size());
    zero(seg, rel, 4096);
    no_checkpoint(&fx);
    check(
        &fx,
        Expect {
            lost: fx.in_range(at, at + 4096),
            finding: "corrupt commit-log bytes",
        },
    );
}

#[test]
fn zeroed_block_in_a_middle_segment_below_the_checkpoint() {
    let fx = Fixture::new();
    let first = fx.first_in_segment(2, 8192);
    let at = fx.sent[first].start;
    zero(&fx.segments()[2], at % fx.segment_size(), 4096);
    check(
        &fx,
        Expect {
            lost: fx.in_range(at, at + 4096),
            finding: "corrupt or lost record",
        },
    );
}

#[test]
fn flipped_byte_in_a_record_without_checkpoint() {
    let fx = Fixture::new();
    let victim = fx.first_in_segment(1, 4096) + 3;
    let at = fx.sent[victim].end - 10;
    flip(&fx.segments()[1], at % fx.segment_size());
    no_checkpoint(&fx);
    check(
        &fx,
        Expect {
            lost: vec![victim],
            finding: "corrupt commit-log bytes",
        },
    );
}

#[test]
fn flipped_byte_in_a_record_below_the_checkpoint() {
    let fx = Fixture::new();
    let victim = fx.first_in_segment(1, 4096) + 3;
    flip(
        &fx.segments()[1],
        (fx.sent[victim].start + 100) % fx.segment_size(),
    );
    check(
        &fx,
        Expect {
            lost: vec![victim],
            finding: "corrupt or lost record",
        },
    );
}

/// Audit item 4: a truncated segment is damage, not a configuration change.
#[test]
fn truncated_middle_segment() {
    let fx = Fixture::new();
    let seg = fx.segments()[1].clone();
    let half = fx.segment_size() / 2;
    truncate(&seg, half);
    let base = fx.segment_size();
    check(
        &fx,
        Expect {
            lost: fx.in_range(base + half, 2 * base),
            finding: seg.file_name().unwrap().to_str().unwrap(),
        },
    );
}

#[test]
fn truncated_last_segment() {
    let fx = Fixture::new();
    let segments = fx.segments();
    let seg = segments.last().unwrap().clone();
    truncate(&seg, 4096);
    let base = (segments.len() as u64 - 1) * fx.segment_size();
    check(
        &fx,
        Expect {
            lost: fx.in_range(base + 4096, u64::MAX),
            finding: seg.file_name().unwrap().to_str().unwrap(),
        },
    );
}

#[test]
fn deleted_last_segment() {
    let fx = Fixture::new();
    let segments = fx.segments();
    remove(segments.last().unwrap());
    let base = (segments.len() as u64 - 1) * fx.segment_size();
    check(
        &fx,
        Expect {
            lost: fx.in_range(base, u64::MAX),
            finding: "its last segments are missing",
        },
    );
}

#[test]
fn deleted_middle_segment_is_refused_naming_the_gap() {
    let fx = Fixture::new();
    let segments = fx.segments();
    remove(&segments[1]);
    check_refused(&fx, &segments[2]);
}

// ---- consume queues (audit item 3) ----

#[test]
fn deleted_middle_consume_queue_file() {
    let fx = Fixture::new();
    let files = fx.queue_files("a", 0);
    assert_eq!(files.len(), 3, "128 + 256 + 256 entries");
    remove(&files[1]);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "consume queue a/0 rebuilt",
        },
    );
}

#[test]
fn deleted_last_consume_queue_file() {
    let fx = Fixture::new();
    remove(fx.queue_files("a", 0).last().unwrap());
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "consume queue a/0 rebuilt",
        },
    );
}

#[test]
fn deleted_consume_queue_file_without_checkpoint() {
    let fx = Fixture::new();
    remove(&fx.queue_files("a", 0)[1]);
    no_checkpoint(&fx);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "consume queue a/0 rebuilt",
        },
    );
}

#[test]
fn zeroed_middle_consume_queue_file() {
    let fx = Fixture::new();
    zero_all(&fx.queue_files("a", 0)[1]);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "consume queue a/0 rebuilt",
        },
    );
}

#[test]
fn zeroed_last_consume_queue_file() {
    let fx = Fixture::new();
    zero_all(fx.queue_files("a", 1).last().unwrap());
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "consume queue a/1 rebuilt",
        },
    );
}

#[test]
fn truncated_consume_queue_files() {
    let fx = Fixture::new();
    let files = fx.queue_files("a", 0);
    truncate(&files[1], 256 * 32 / 2);
    truncate(&files[2], 100);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "consume queue a/0 rebuilt",
        },
    );
}

#[test]
fn flipped_consume_queue_entry_still_finds_its_record() {
    let fx = Fixture::new();
    // Entry 200 of a/0 is entry 72 of the second file; byte 2 of its position.
    flip(&fx.queue_files("a", 0)[1], 72 * 32 + 2);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "a/0 offset 200: damaged consume-queue entry",
        },
    );
}

#[test]
fn deleted_consume_queue_directory() {
    let fx = Fixture::new();
    remove(&fx.path().join("consumequeue"));
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "rebuilt from the commit log",
        },
    );
}

// ---- key index ----

#[test]
fn truncated_index_file() {
    let fx = Fixture::new();
    truncate(&fx.index_files()[0], 100);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "key index rebuilt",
        },
    );
}

#[test]
fn zeroed_index_file() {
    let fx = Fixture::new();
    zero_all(&fx.index_files()[1]);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "key index rebuilt",
        },
    );
}

#[test]
fn flipped_index_header() {
    let fx = Fixture::new();
    flip(&fx.index_files()[2], 9);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "key index rebuilt",
        },
    );
}

#[test]
fn deleted_index_files() {
    for victim in [1, 2] {
        let fx = Fixture::new();
        remove(&fx.index_files()[victim]);
        check(
            &fx,
            Expect {
                lost: vec![],
                finding: "key index rebuilt",
            },
        );
    }
}

// ---- checkpoint ----

#[test]
fn deleted_checkpoint() {
    let fx = Fixture::new();
    no_checkpoint(&fx);
    check(
        &fx,
        Expect {
            lost: vec![],
            finding: "checkpoint is missing",
        },
    );
}

#[test]
fn flipped_truncated_and_zeroed_checkpoint() {
    for damage in [
        |p: &Path| flip(p, 20),
        |p: &Path| truncate(p, 10),
        |p: &Path| zero_all(p),
    ] {
        let fx = Fixture::new();
        damage(&fx.path().join("checkpoint"));
        check(
            &fx,
            Expect {
                lost: vec![],
                finding: "checkpoint",
            },
        );
    }
}

/// A deleted topic stays deleted when recovery rebuilds from the whole log
/// (no checkpoint), and a topic created again under its name starts afresh.
#[test]
fn a_deleted_topic_stays_deleted_through_a_full_rebuild() {
    let fx = Fixture::new();
    let cfg = config(fx.path());
    let store = Store::open(cfg.clone()).unwrap();
    store.delete_topic("b").unwrap();
    store.close().unwrap();
    drop(store);
    no_checkpoint(&fx);
    let store = Store::open(cfg.clone()).unwrap();
    assert!(
        !store.topics().contains(&"b".to_string()),
        "{:?}",
        store.topics()
    );
    assert_eq!(store.queue_offsets("b", 0), (0, 0));
    assert_eq!(store.queue_offsets("a", 0), (0, 450));
    let ack = store
        .append_blocking(vec![message("b", 0, b"again", &[], "")])
        .unwrap();
    assert_eq!(ack[0].queue_offset, 0);
    store.close().unwrap();
    drop(store);
    no_checkpoint(&fx);
    let store = Store::open(cfg).unwrap();
    let (records, corrupt) = read_queue(&store, "b", 0);
    assert!(corrupt.is_empty());
    assert_eq!(
        records.into_values().collect::<Vec<_>>(),
        vec![b"again".to_vec()]
    );
}
