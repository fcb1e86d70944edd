//! Fuzzes what a client reaches before it is authenticated: the
//! `authorization` and `x-mq-date-time` headers, the users file, and
//! signatures made and verified. The checks live in the broker library
//! (`dduomq_broker::auth::fuzzing`), where `cargo test` also replays this
//! target's committed corpus (`fuzz/corpus/auth/`).
//! Run: `make fuzz FUZZ_TARGETS=auth`, or `cargo +nightly fuzz run auth`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    dduomq_broker::auth::fuzzing::check_auth_input(data);
});
