//! What one client or one small message may cost the store: consume-queue
//! and index files that start small (audit items 8 and 11), and lookups by a
//! forged id that read one header (audit item 9).

mod common;

use std::path::Path;

use common::{config, message};
use dduomq_broker::store::{MessageId, Store, StoreConfig};
use dduomq_proto::Reason;

/// A topic of 1,024 queues with one small message each, and one keyed
/// message, with the default configuration: consume-queue files start at one
/// 4 KiB block (they were 9.2 MiB each) and the index at about 135 KiB (it was
/// 132 MiB, read whole on every start).
#[test]
fn small_queues_and_one_key_take_little_space() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = dduomq_broker::config::BrokerConfig::load(None)
        .unwrap()
        .store;
    let cfg = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        segment_size_bytes: 64 << 20,
        // The test measures file sizes, not the shared machine's free space.
        disk_usage_limit: 1.0,
        ..defaults
    };
    let store = Store::open(cfg.clone()).unwrap();
    for queue_id in 0..1024 {
        store
            .append_blocking(vec![message("wide", queue_id, b"x", &[], "")])
            .unwrap();
    }
    store
        .append_blocking(vec![message("wide", 0, b"keyed", &["order-1"], "")])
        .unwrap();
    store.close().unwrap();
    drop(store);
    let size_of = |sub: &str| {
        fn walk(p: &Path) -> u64 {
            if p.is_dir() {
                std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| walk(&e.unwrap().path()))
                    .sum()
            } else {
                std::fs::metadata(p).unwrap().len()
            }
        }
        walk(&dir.path().join(sub))
    };
    assert_eq!(size_of("consumequeue"), 1024 * 4096);
    assert!(size_of("index") < 160 * 1024, "{}", size_of("index"));
    let store = Store::open(cfg).unwrap();
    let hits = store
        .lookup_by_key("wide", "order-1", i64::MIN, i64::MAX, 10)
        .unwrap();
    assert_eq!(&hits[0].body[..], b"keyed");
    assert_eq!(store.queue_offsets("wide", 1023), (0, 1));
}

/// Audit item 9: an id forged to point at a fake header inside a body (with
/// the position and CRC the id names) is refused as not found after reading
/// the header alone.
#[test]
fn forged_id_into_a_body_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let fake_len = 72;
    // A message of the same shape tells where the next one's body will start.
    let probe = store
        .append_blocking(vec![message("t", 0, &vec![7u8; fake_len], &[], "")])
        .unwrap()[0];
    let size = store.lookup_by_id(&probe.id).unwrap().size as u64;
    let next = store.stats().commit_log_max;
    let body_at = next + size - fake_len as u64;
    // A fake record header claiming 10 MiB at exactly that position.
    let mut fake = vec![0u8; fake_len];
    fake[0..4].copy_from_slice(&(10u32 << 20).to_le_bytes());
    fake[4..8].copy_from_slice(&0xDD0A_C0DEu32.to_le_bytes());
    fake[8..12].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    fake[32..40].copy_from_slice(&body_at.to_le_bytes());
    let ack = store
        .append_blocking(vec![message("t", 0, &fake, &[], "")])
        .unwrap()[0];
    assert_eq!(ack.physical_offset, next);
    let forged = MessageId {
        broker_id: ack.id.broker_id,
        physical_offset: body_at,
        crc: 0x1234_5678,
    };
    let err = store.lookup_by_id(&forged).unwrap_err();
    assert_eq!(err.code(), Reason::MessageNotFound, "{err}");
    // Ids just below the end of the log, where no header fits.
    let end = store.stats().commit_log_max;
    for back in 1..=72 {
        let near_end = MessageId {
            physical_offset: end - back,
            ..forged
        };
        let err = store.lookup_by_id(&near_end).unwrap_err();
        assert_eq!(
            err.code(),
            Reason::MessageNotFound,
            "{back} bytes before the end: {err}"
        );
    }
}
