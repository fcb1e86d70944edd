//! Fuzzes the filter parsers and the SQL evaluator: any input must parse or fail
//! with a position inside the input, and evaluating a parsed filter against a
//! message built from the same bytes must not panic.
//! Run: `cargo +nightly fuzz run filter` (from the repository root).
#![no_main]

use dduomq_broker::filter::Filter;
use dduomq_broker::store::{Record, RecordFlags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let record = Record {
        topic: "t".into(),
        queue_id: 0,
        queue_offset: 0,
        physical_offset: 0,
        born_timestamp: 0,
        store_timestamp: 0,
        flags: RecordFlags::default(),
        tag: text.chars().take(8).collect(),
        keys: vec![],
        properties: text
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| (w.to_string(), i.to_string()))
            .collect(),
        body: bytes::Bytes::new(),
        crc: 0,
        size: 0,
    };
    for parsed in [Filter::sql(text), Filter::tags(text)] {
        match parsed {
            Ok(f) => {
                let _ = f.matches(&record);
            }
            Err(e) => assert!(e.position <= text.chars().count(), "{e}"),
        }
    }
});
