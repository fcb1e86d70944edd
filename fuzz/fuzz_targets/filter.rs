//! Fuzzes the filter parsers and the SQL evaluator. The checks live in the
//! broker library (`dduomq_broker::filter::fuzzing`), where `cargo test` also
//! replays this target's committed corpus (`fuzz/corpus/filter/`): UTF-8 input
//! is taken as filter text, anything else is decoded into a structured
//! expression that can nest and repeat far past the parser's limits.
//! Run: `make fuzz` (bounded), or `cargo +nightly fuzz run filter` from the
//! repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dduomq_broker::filter::fuzzing::check_filter_input(data);
});
