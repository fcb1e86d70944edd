//! Replays a fuzz target's committed seed corpus (`fuzz/corpus/<target>/`)
//! through its checks, so `cargo test` keeps every seed and past finding
//! passing.

/// Runs `check` on every seed of `target`, naming the seed that fails; at
/// least `at_least` seeds must be there.
pub fn replay(target: &str, at_least: usize, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let dir = format!("{}/../fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus") {
        let path = entry.expect("a corpus entry").path();
        let seed = std::fs::read(&path).expect("a seed");
        std::panic::catch_unwind(|| check(&seed))
            .unwrap_or_else(|_| panic!("the seed {} fails", path.display()));
        replayed += 1;
    }
    assert!(replayed >= at_least, "only {replayed} seeds in {dir}");
}
