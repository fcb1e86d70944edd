//! The election-safety simulation in `cargo test`: the product's rules keep
//! every invariant over 1,000 seeded fault schedules, and each deliberately
//! broken rule is caught. `make sim` runs many more schedules.

mod sim;

use sim::{Variant, run_schedules};

const SCHEDULES: u64 = 1000;
/// Seeds tried per broken rule before giving up on finding its violation.
const BROKEN_SEEDS: u64 = 1000;

#[test]
fn every_acknowledged_record_survives_1000_fault_schedules() {
    let summary = run_schedules(0, SCHEDULES, Variant::Correct, false);
    println!("correct rules: {summary}");
    assert_eq!(summary.schedules, SCHEDULES);
    assert_eq!(summary.first_failure, None, "{summary}");
    assert!(
        summary.elections >= SCHEDULES,
        "every schedule elects at least once: {summary}"
    );
    assert!(summary.acked > 0, "{summary}");
}

#[test]
fn each_broken_rule_is_caught() {
    for variant in Variant::ALL.into_iter().filter(|&v| v != Variant::Correct) {
        let summary = run_schedules(0, BROKEN_SEEDS, variant, true);
        println!("{}: {summary}", variant.name());
        assert!(
            summary.first_failure.is_some(),
            "the checker missed the broken rule {}: {summary}",
            variant.name()
        );
    }
}

#[test]
fn every_rule_set_is_named_on_the_command_line() {
    for variant in Variant::ALL {
        assert_eq!(Variant::parse(variant.name()), Some(variant));
    }
    assert_eq!(Variant::parse("no-such-rule"), None);
}
