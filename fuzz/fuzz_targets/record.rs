//! Fuzzes the commit-log record decoder: bytes as found in a segment, and
//! messages encoded, sealed, decoded back and damaged. The checks live in
//! the broker library (`dduomq_broker::store::fuzzing`), where `cargo test`
//! also replays this target's committed corpus (`fuzz/corpus/record/`).
//! Run: `make fuzz FUZZ_TARGETS=record`, or `cargo +nightly fuzz run record`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dduomq_broker::store::fuzzing::check_record_input(data);
});
