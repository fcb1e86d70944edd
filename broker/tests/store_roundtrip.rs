//! Property tests: whatever is appended is read back byte-equal, with dense ordered
//! offsets, across segment rolls and reopen; ids and keys find exactly their
//! messages.

mod common;

use std::collections::HashMap;

use common::{body, config, message, read_all};
use dduomq_broker::store::{Appended, Store};
use dduomq_proto::Reason;
use proptest::prelude::*;

/// What was appended to a queue: body, key, tag and the store's answer.
type Sent = (Vec<u8>, Option<String>, String, Appended);

#[derive(Debug, Clone)]
struct Spec {
    queue: u32,
    len: usize,
    key: Option<u8>,
    tag: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u32..3, 0usize..6000, proptest::option::of(0u8..6), 0u8..3).prop_map(
        |(queue, len, key, tag)| Spec {
            queue,
            len,
            key,
            tag,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn appended_batches_read_back_exactly(
        batches in proptest::collection::vec(proptest::collection::vec(spec(), 1..12), 1..30),
        reopen_after in 0usize..30,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(config(dir.path())).unwrap();
        // expected[queue] = (body, key, tag, ack) in append order
        let mut expected: HashMap<u32, Vec<Sent>> = HashMap::new();
        let mut seed = 0;
        for (i, batch) in batches.iter().enumerate() {
            if i == reopen_after {
                store.close().unwrap();
                drop(store);
                store = Store::open(config(dir.path())).unwrap();
            }
            let mut msgs = Vec::new();
            let mut meta = Vec::new();
            for s in batch {
                seed += 1;
                let b = body(seed, s.len);
                let key = s.key.map(|k| format!("key-{k}"));
                let tag = format!("tag{}", s.tag);
                let keys: Vec<&str> = key.iter().map(|k| k.as_str()).collect();
                msgs.push(message("prop", s.queue, &b, &keys, &tag));
                meta.push((s.queue, b, key, tag));
            }
            let acks = store.append_blocking(msgs).unwrap();
            prop_assert_eq!(acks.len(), meta.len());
            for ((queue, b, key, tag), ack) in meta.into_iter().zip(acks) {
                prop_assert_eq!(ack.queue_id, queue);
                expected.entry(queue).or_default().push((b, key, tag, ack));
            }
        }
        // Reopen once more so the final check also covers recovery.
        store.close().unwrap();
        drop(store);
        let store = Store::open(config(dir.path())).unwrap();
        prop_assert!(store.recovery_report().corrupt_ranges.is_empty());
        for (queue, want) in &expected {
            let got = read_all(&store, "prop", *queue);
            prop_assert_eq!(got.len(), want.len());
            for (i, (rec, (b, key, tag, ack))) in got.iter().zip(want).enumerate() {
                prop_assert_eq!(rec.queue_offset, i as u64, "offsets dense and ordered");
                prop_assert_eq!(rec.queue_offset, ack.queue_offset);
                prop_assert_eq!(rec.physical_offset, ack.physical_offset);
                prop_assert_eq!(&rec.body[..], &b[..]);
                prop_assert_eq!(&rec.tag, tag);
                prop_assert_eq!(rec.keys.first(), key.as_ref());
                let by_id = store.lookup_by_id(&ack.id).unwrap();
                prop_assert_eq!(&by_id, rec);
            }
        }
        // Key lookups return exactly the messages carrying the key.
        for k in 0..6u8 {
            let key = format!("key-{k}");
            let mut want: Vec<u64> = expected
                .values()
                .flatten()
                .filter(|(_, kk, _, _)| kk.as_deref() == Some(key.as_str()))
                .map(|(_, _, _, ack)| ack.physical_offset)
                .collect();
            want.sort();
            let mut got: Vec<u64> = store
                .lookup_by_key("prop", &key, i64::MIN, i64::MAX, 100_000)
                .unwrap()
                .iter()
                .map(|r| r.physical_offset)
                .collect();
            got.sort();
            prop_assert_eq!(got, want);
        }
        prop_assert!(store.lookup_by_key("other-topic", "key-0", i64::MIN, i64::MAX, 10).unwrap().is_empty());
    }
}

#[test]
fn readers_are_woken_by_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mut arrivals = store.subscribe();
    let before = *arrivals.borrow_and_update();
    store
        .append_blocking(vec![message("t", 0, b"x", &[], "")])
        .unwrap();
    assert!(arrivals.has_changed().unwrap());
    assert!(*arrivals.borrow() > before);
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(config(dir.path())).unwrap();
    let err = Store::open(config(dir.path())).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn oversized_and_invalid_messages_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let max = store.config().max_record_size_bytes as usize;
    store
        .append_blocking(vec![message("t", 0, b"ok", &[], "")])
        .unwrap();
    let before = store.stats();
    let big = message("t", 0, &vec![7u8; max], &[], "");
    let err = store
        .append_blocking(vec![message("t", 0, b"fine", &[], ""), big])
        .unwrap_err();
    assert_eq!(err.code(), Reason::MessageTooLarge);
    let err = store
        .append_blocking(vec![message("bad/name", 0, b"x", &[], "")])
        .unwrap_err();
    assert_eq!(err.code(), Reason::InvalidArgument);
    assert_eq!(store.stats(), before);
    assert_eq!(store.queue_offsets("t", 0), (0, 1));
    assert!(store.topics() == vec!["t".to_string()]);
}

#[test]
fn store_timestamps_never_go_backwards_and_seek_by_time_finds_bursts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    let mut firsts = Vec::new();
    for burst in 0..3 {
        let msgs = (0..20)
            .map(|i| message("t", 0, &body(i, 100), &[], ""))
            .collect();
        let acks = store.append_blocking(msgs).unwrap();
        firsts.push((acks[0].store_timestamp, acks[0].queue_offset));
        if burst < 2 {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
    let all = read_all(&store, "t", 0);
    assert!(
        all.windows(2)
            .all(|w| w[0].store_timestamp <= w[1].store_timestamp)
    );
    for (ts, offset) in &firsts {
        assert_eq!(store.offset_for_timestamp("t", 0, *ts), *offset);
    }
    assert_eq!(store.offset_for_timestamp("t", 0, 0), 0);
    assert_eq!(store.offset_for_timestamp("t", 0, i64::MAX), 60);
    assert_eq!(store.offset_for_timestamp("missing", 0, 0), 0);
}
