//! Helpers of the replication store suites: fill a master, copy its log to a
//! replica through the raw-log API, and compare two stores file by file and
//! read by read.

use std::collections::BTreeMap;
use std::path::Path;

use dduomq_broker::store::{Appended, FlushMode, Record, Store, StoreConfig};

use super::{body, message, read_all};

/// Topics and queue counts [`fill`] writes to.
pub const TOPICS: [(&str, u32); 2] = [("orders", 3), ("audit", 2)];
/// Keys [`fill`] spreads over its messages.
pub const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];

/// A small-segment store configuration in `dir` with the given flush mode.
pub fn replica_config(dir: &Path, flush: FlushMode) -> StoreConfig {
    StoreConfig {
        flush,
        ..StoreConfig::for_tests(dir)
    }
}

/// Appends `n` messages (seeded by `seed`) over [`TOPICS`], some with keys
/// and tags, bodies up to 6 KB so that 64 KiB segments end in fillers; some
/// appends are batches. Returns what the store answered.
pub fn fill(store: &Store, seed: u64, n: usize) -> Vec<Appended> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let batch = 1 + (i % 3).min(n - i - 1);
        let messages = (i..i + batch)
            .map(|j| {
                let (topic, queues) = TOPICS[j % TOPICS.len()];
                let seed = seed * 1000 + j as u64;
                let len = 100 + (seed as usize * 2654435761) % 6000;
                let keys: &[&str] = match j % 4 {
                    0 => &[],
                    1 => &KEYS[j % 4..j % 4 + 1],
                    _ => &KEYS[j % 2..j % 2 + 2],
                };
                message(
                    topic,
                    j as u32 % queues,
                    &body(seed, len),
                    keys,
                    ["", "red", "blue"][j % 3],
                )
            })
            .collect();
        out.extend(store.append_blocking(messages).unwrap());
        i += batch;
    }
    out
}

/// Runs a future to completion outside any runtime (the store's blocking
/// appends must not run inside one).
pub fn run<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Copies `from`'s log into `to` from `to`'s end up to `until`, in chunks of
/// the sizes in `chunk_sizes` (cycled; each is at least one frame).
pub async fn copy_log(from: &Store, to: &Store, until: u64, chunk_sizes: &[usize]) {
    let mut sizes = chunk_sizes.iter().cycle();
    while to.log_end() < until {
        let at = to.log_end();
        let max = (*sizes.next().unwrap()).min((until - at) as usize);
        let chunk = from.read_log(at, max).unwrap();
        assert_eq!(chunk.start, at);
        assert!(chunk.end() <= until, "read past {until}: {}", chunk.end());
        let end = to.append_replicated(at, chunk.data.clone()).await.unwrap();
        assert_eq!(end, chunk.end());
        assert_eq!(to.log_end(), end);
    }
}

/// The files of one subdirectory of a store (`commitlog`, `consumequeue`,
/// `index`), by relative path, with their bytes.
pub fn files(dir: &Path, sub: &str) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.join(sub)];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Asserts that the commit-log segments of two stores are byte-identical.
pub fn assert_same_log(a: &Path, b: &Path) {
    let (a, b) = (files(a, "commitlog"), files(b, "commitlog"));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "segment files differ"
    );
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs");
    }
}

/// Every record of every queue, by topic and queue.
pub fn all_queues(store: &Store) -> BTreeMap<(String, u32), (u64, u64, Vec<Record>)> {
    let mut out = BTreeMap::new();
    for topic in store.topics() {
        for queue in store.queue_ids(&topic) {
            let (min, max) = store.queue_offsets(&topic, queue);
            out.insert(
                (topic.clone(), queue),
                (min, max, read_all(store, &topic, queue)),
            );
        }
    }
    out
}

/// Every record each key of [`KEYS`] finds in each topic, newest first.
pub fn all_keys(store: &Store) -> Vec<Vec<Record>> {
    let mut out = Vec::new();
    for (topic, _) in TOPICS {
        for key in KEYS {
            out.push(
                store
                    .lookup_by_key(topic, key, i64::MIN, i64::MAX, 1000)
                    .unwrap(),
            );
        }
    }
    out
}

/// Asserts that two stores give the same answers: the same log end, queues
/// with the same bounds and records, the same key lookups.
pub fn assert_same_reads(a: &Store, b: &Store) {
    assert_eq!(a.log_end(), b.log_end(), "log ends differ");
    assert_eq!(a.topics(), b.topics());
    let queues = all_queues(a);
    assert!(!queues.is_empty());
    assert_eq!(queues, all_queues(b), "queue reads differ");
    assert_eq!(all_keys(a), all_keys(b), "key lookups differ");
}
