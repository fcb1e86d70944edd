use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn units(names: &BTreeSet<String>) -> Vec<WriteUnit> {
    names
        .iter()
        .map(|name| WriteUnit { name: name.clone() })
        .collect()
}

fn numbered(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("dduomq-broker-{i}")).collect()
}

/// Queues below `queues` of `before` that are written elsewhere in `after`.
fn moves(before: &Assignment, after: &Assignment) -> usize {
    before
        .iter()
        .filter(|(q, unit)| after.get(q).is_some_and(|u| u != *unit))
        .count()
}

fn per_unit(a: &Assignment) -> BTreeMap<&str, usize> {
    a.values().fold(BTreeMap::new(), |mut m, u| {
        *m.entry(u.as_str()).or_default() += 1;
        m
    })
}

/// Every queue assigned, only to `eligible` units, each with ⌊q/n⌋ or ⌈q/n⌉.
fn assert_balanced(a: &Assignment, eligible: &BTreeSet<String>, queues: u32, context: &str) {
    assert_eq!(
        a.keys().copied().collect::<Vec<_>>(),
        (0..queues).collect::<Vec<_>>(),
        "{context}"
    );
    let per = per_unit(a);
    let base = queues as usize / eligible.len();
    for unit in eligible {
        let n = per.get(unit.as_str()).copied().unwrap_or(0);
        assert!(n == base || n == base + 1, "{context}: {unit} has {n}");
    }
    assert!(per.keys().all(|u| eligible.contains(*u)), "{context}");
}

/// The fewest moves that reach balance from `before` over `eligible`, by
/// trying every choice of units for the larger shares (independent of the
/// greedy choice in `rebalance`).
fn minimum_moves(before: &Assignment, eligible: &BTreeSet<String>, queues: u32) -> usize {
    let held: Vec<usize> = eligible
        .iter()
        .map(|u| before.range(..queues).filter(|(_, v)| *v == u).count())
        .collect();
    let n = held.len();
    let (base, larger) = (queues as usize / n, queues as usize % n);
    let best_kept = (0u32..1 << n)
        .filter(|set| set.count_ones() as usize == larger)
        .map(|set| {
            held.iter()
                .enumerate()
                .map(|(i, h)| (*h).min(base + usize::from(set & (1 << i) != 0)))
                .sum::<usize>()
        })
        .max()
        .expect("some choice");
    before
        .range(..queues)
        .filter(|(_, u)| eligible.contains(*u))
        .count()
        - best_kept
        + before
            .range(..queues)
            .filter(|(_, u)| !eligible.contains(*u))
            .count()
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Join,
    Leave,
    GrowQueues,
}

#[test]
fn random_joins_leaves_and_growth_stay_balanced_and_move_only_what_must_move() {
    let mut checked = 0;
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut eligible = numbered(rng.random_range(1..=5));
        let mut next_unit = eligible.len();
        let mut queues: u32 = rng.random_range(1..=40);
        let mut current = rebalance(&Assignment::new(), &units(&eligible), queues);
        assert_balanced(&current, &eligible, queues, &format!("seed {seed} start"));
        for round in 0..25 {
            let change = match rng.random_range(0..3) {
                0 if eligible.len() < 7 => Change::Join,
                1 if eligible.len() > 1 => Change::Leave,
                _ => Change::GrowQueues,
            };
            let context = format!("seed {seed} round {round} {change:?}");
            let before = current.clone();
            let mut leaving = None;
            match change {
                Change::Join => {
                    eligible.insert(format!("dduomq-broker-{next_unit}"));
                    next_unit += 1;
                }
                Change::Leave => {
                    let unit = eligible
                        .iter()
                        .nth(rng.random_range(0..eligible.len()))
                        .cloned()
                        .expect("a unit");
                    eligible.remove(&unit);
                    leaving = Some(unit);
                }
                Change::GrowQueues => queues += rng.random_range(1..=8),
            }
            current = rebalance(&before, &units(&eligible), queues);
            assert_balanced(&current, &eligible, queues, &context);
            assert_eq!(
                rebalance(&current, &units(&eligible), queues),
                current,
                "{context}: a balanced assignment is kept as is"
            );
            let moved = moves(&before, &current);
            assert_eq!(
                moved,
                minimum_moves(&before, &eligible, queues),
                "{context}: only the queues that must move do"
            );
            match change {
                // The bound: N → N+1 moves at most the minimum for
                // balance (⌊q/(N+1)⌋ for the new unit) plus one queue.
                Change::Join => assert!(
                    moved <= queues as usize / eligible.len() + 1,
                    "{context}: {moved} moves"
                ),
                Change::Leave => {
                    let leaving = leaving.expect("set on Leave");
                    for (q, unit) in &before {
                        if *unit != leaving {
                            assert_eq!(current[q], *unit, "{context}: queue {q} moved");
                        }
                    }
                }
                Change::GrowQueues => assert_eq!(moved, 0, "{context}"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 300 * 25);
}

#[test]
fn new_queues_and_departures_go_to_the_least_loaded_units_in_name_order() {
    let two = numbered(2);
    let a = rebalance(&Assignment::new(), &units(&two), 5);
    let owners: Vec<&str> = a.values().map(String::as_str).collect();
    assert_eq!(
        owners,
        [
            "dduomq-broker-0",
            "dduomq-broker-1",
            "dduomq-broker-0",
            "dduomq-broker-1",
            "dduomq-broker-0"
        ]
    );
    // broker-2 joins: shares 2, 2, 1. Only broker-0 holds more than its share
    // and gives up its highest queue id.
    let three = numbered(3);
    let b = rebalance(&a, &units(&three), 5);
    let owners: Vec<&str> = b.values().map(String::as_str).collect();
    assert_eq!(
        owners,
        [
            "dduomq-broker-0",
            "dduomq-broker-1",
            "dduomq-broker-0",
            "dduomq-broker-1",
            "dduomq-broker-2"
        ]
    );
    assert!(rebalance(&b, &[], 5).is_empty());
}

/// The old placement, for the comparison below: queue q on the (q mod n)-th
/// unit by name.
fn round_robin(eligible: &BTreeSet<String>, queues: u32) -> Assignment {
    let names: Vec<&String> = eligible.iter().collect();
    (0..queues)
        .map(|q| (q, names[q as usize % names.len()].clone()))
        .collect()
}

/// Queue moves of a fleet change, summed over `topics` (their queue counts).
fn fleet_moves(topics: &[u32], steps: &[usize]) -> (usize, usize) {
    let (mut old, mut new) = (0, 0);
    for &queues in topics {
        let mut sticky = round_robin(&numbered(steps[0]), queues);
        for pair in steps.windows(2) {
            let (from, to) = (numbered(pair[0]), numbered(pair[1]));
            old += moves(&round_robin(&from, queues), &round_robin(&to, queues));
            let next = rebalance(&sticky, &units(&to), queues);
            new += moves(&sticky, &next);
            sticky = next;
        }
    }
    (old, new)
}

/// The figures for the note: `cargo test -p dduomq-operator placement_moves --
/// --nocapture` prints them. Scale-in removes the highest ordinal, as a
/// StatefulSet does; 3 → 5 is shown at once and one broker at a time.
#[test]
fn placement_moves_for_3_to_5_and_5_to_4_brokers() {
    let eight_by_eight = [8u32; 8];
    let mixed: Vec<u32> = (1..=16).collect();
    let mut table = Vec::new();
    for (fleet, topics) in [
        ("8 topics x 8 queues", &eight_by_eight[..]),
        ("16 topics x 1..16 queues", &mixed[..]),
    ] {
        let total: u32 = topics.iter().sum();
        for (label, steps) in [
            ("3 -> 5", &[3, 5][..]),
            ("3 -> 4 -> 5", &[3, 4, 5][..]),
            ("5 -> 4", &[5, 4][..]),
        ] {
            let (old, new) = fleet_moves(topics, steps);
            println!(
                "{fleet} ({total} queues), {label}: round robin moves {old}, sticky moves {new}"
            );
            table.push((fleet, label, old, new));
        }
    }
    assert_eq!(
        table,
        [
            ("8 topics x 8 queues", "3 -> 5", 40, 16),
            ("8 topics x 8 queues", "3 -> 4 -> 5", 72, 24),
            ("8 topics x 8 queues", "5 -> 4", 32, 8),
            ("16 topics x 1..16 queues", "3 -> 5", 90, 45),
            ("16 topics x 1..16 queues", "3 -> 4 -> 5", 160, 49),
            ("16 topics x 1..16 queues", "5 -> 4", 78, 21),
        ]
    );
}
