//! Crash tests: a child process (`dduomq-storetool append-stress`) appends from
//! several threads and prints every acknowledged message; the test SIGKILLs it at
//! random moments, reopens the store and checks that every acknowledged message is
//! there, byte-identical, and that each queue's offsets are dense (no gap, no
//! duplicate). A process crash keeps the page cache, so this must hold in `async`
//! mode as well as in `sync` mode.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use dduomq_broker::store::{Store, StoreConfig};
use rand::Rng;

const ROUNDS: usize = 20;
const QUEUES: u32 = 4;
const MAX_BODY: usize = 2048;
const SEGMENT: u64 = 65536;

/// `(queue, offset)` → `(crc32c of body, body length)` of every acknowledged message.
type Acks = HashMap<(u32, u64), (u32, usize)>;

fn run_child_until_killed(dir: &std::path::Path, flush: &str, acks: &mut Acks) -> usize {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dduomq-storetool"))
        .args(["append-stress", "--data-dir"])
        .arg(dir)
        .args(["--flush", flush, "--topic", "crash"])
        .args([
            "--queues",
            &QUEUES.to_string(),
            "--threads",
            "3",
            "--max-batch",
            "8",
        ])
        .args([
            "--max-body",
            &MAX_BODY.to_string(),
            "--segment-size",
            &SEGMENT.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dduomq-storetool");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        lines
    });
    let wait = rand::rng().random_range(50..400);
    std::thread::sleep(Duration::from_millis(wait));
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let lines = reader.join().unwrap();
    let mut n = 0;
    for line in lines {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], "ack", "unexpected output {line:?}");
        let key = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let value = (f[3].parse().unwrap(), f[4].parse().unwrap());
        assert!(
            acks.insert(key, value).is_none(),
            "offset {key:?} acknowledged twice"
        );
        n += 1;
    }
    n
}

fn verify(dir: &std::path::Path, acks: &Acks) {
    let mut cfg = StoreConfig::for_tests(dir);
    cfg.segment_size_bytes = SEGMENT;
    let store = Store::open(cfg).expect("reopen after SIGKILL");
    for queue in 0..QUEUES {
        let records = common::read_all(&store, "crash", queue);
        let (min, max) = store.queue_offsets("crash", queue);
        assert_eq!(min, 0);
        assert_eq!(records.len() as u64, max, "queue {queue}: dense offsets");
        for (i, rec) in records.iter().enumerate() {
            assert_eq!(
                rec.queue_offset, i as u64,
                "queue {queue}: no gap, no duplicate"
            );
        }
        for (&(q, offset), &(crc, len)) in acks.iter().filter(|((q, _), _)| *q == queue) {
            let rec = records
                .get(offset as usize)
                .unwrap_or_else(|| panic!("acknowledged {q}/{offset} lost (queue holds {max})"));
            assert_eq!(rec.body.len(), len, "{q}/{offset} length");
            assert_eq!(crc32c::crc32c(&rec.body), crc, "{q}/{offset} bytes");
        }
    }
    store.close().unwrap();
}

fn crash_cycles(flush: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut acks = Acks::new();
    let mut rounds_with_acks = 0;
    for _ in 0..ROUNDS {
        if run_child_until_killed(dir.path(), flush, &mut acks) > 0 {
            rounds_with_acks += 1;
        }
        verify(dir.path(), &acks);
    }
    assert!(
        rounds_with_acks >= ROUNDS / 2,
        "only {rounds_with_acks} of {ROUNDS} rounds acknowledged anything"
    );
    eprintln!(
        "{flush}: {} acknowledged messages survived {ROUNDS} SIGKILLs",
        acks.len()
    );
}

#[test]
fn sigkill_loses_nothing_acknowledged_in_sync_mode() {
    crash_cycles("sync");
}

#[test]
fn sigkill_loses_nothing_acknowledged_in_async_mode() {
    crash_cycles("async");
}
