//! Helpers shared by the integration tests: the store suites use the
//! functions here; the in-process messaging suites use [`broker`] (a real
//! broker on a tempdir store, closed and reopened like the binary does) and
//! [`api`] (every call they make to the `Broker` API).
#![allow(dead_code)] // each test binary uses its own subset

pub mod api;
pub mod broker;
pub mod replica;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use dduomq_broker::store::{Message, Record, Store, StoreConfig};
use dduomq_testkit::copy_dir;

/// A small-segment store configuration in `dir`.
pub fn config(dir: &Path) -> StoreConfig {
    StoreConfig::for_tests(dir)
}

/// A message with the given body, keys and tag.
pub fn message(topic: &str, queue_id: u32, body: &[u8], keys: &[&str], tag: &str) -> Message {
    Message {
        topic: topic.into(),
        queue_id,
        born_timestamp: 1,
        tag: tag.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        properties: vec![("p".into(), format!("{}", body.len()))],
        body: Bytes::copy_from_slice(body),
        ..Message::default()
    }
}

/// Every readable record of a queue, asserting there is no corruption.
pub fn read_all(store: &Store, topic: &str, queue_id: u32) -> Vec<Record> {
    let (min, max) = store.queue_offsets(topic, queue_id);
    let mut out = Vec::new();
    let mut offset = min;
    while offset < max {
        let r = store.read(topic, queue_id, offset, 100, 1 << 20).unwrap();
        assert!(
            r.corrupt_offsets.is_empty(),
            "corrupt: {:?}",
            r.corrupt_offsets
        );
        assert!(r.next_offset > offset, "no progress at {offset}");
        out.extend(r.records);
        offset = r.next_offset;
    }
    out
}

/// Deterministic pseudo-random body of `len` bytes.
pub fn body(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `dduomq-storetool verify` on a copy of `dir`: its exit code and output.
pub fn verify(dir: &Path, cfg: &StoreConfig) -> (i32, String) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir, copy.path());
    let conf = copy.path().join("broker.toml");
    std::fs::write(
        &conf,
        format!(
            "[store]\nsegment_size_bytes = {}\nmax_record_size_bytes = {}\n\
             consume_queue_entries_per_file = {}\nindex_slots = {}\nindex_entries = {}\n",
            cfg.segment_size_bytes,
            cfg.max_record_size_bytes,
            cfg.consume_queue_entries_per_file,
            cfg.index_slots,
            cfg.index_entries
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dduomq-storetool"))
        .args(["verify", "--data-dir"])
        .arg(copy.path())
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
