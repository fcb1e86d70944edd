//! Runs the election-safety simulation over many seeded schedules (`make sim`):
//!
//! ```sh
//! cargo run --release -p dduomq-replication --example election_sim -- --schedules 100000 --seed 0
//! cargo run --release -p dduomq-replication --example election_sim -- --schedules 1 --seed 4711   # replay one
//! cargo run --release -p dduomq-replication --example election_sim -- --variant ack-before-recorded
//! ```
//!
//! Prints schedules run, faults injected, elections, acknowledged records
//! and the first failing seed; exits with 1 when a schedule failed.

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::process::ExitCode;

use sim::{Variant, run_schedules};

fn main() -> ExitCode {
    let mut schedules = 10_000;
    let mut seed = 0;
    let mut variant = Variant::Correct;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--schedules" => schedules = value.parse().expect("--schedules takes a number"),
            "--seed" => seed = value.parse().expect("--seed takes a number"),
            "--variant" => {
                let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
                variant = Variant::parse(&value).unwrap_or_else(|| {
                    panic!("unknown variant {value:?}, one of {}", names.join(", "))
                })
            }
            other => panic!("unknown flag {other:?} (--schedules N, --seed S, --variant NAME)"),
        }
    }
    let summary = run_schedules(seed, schedules, variant, false);
    println!(
        "{} rules, seeds {seed}..{}: {summary}",
        variant.name(),
        seed + schedules
    );
    if summary.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
