//! Sticky queue placement over write units. A joining or leaving unit moves only
//! the queues that must move for balance, so producers and consumers of the
//! other queues never notice a scale-out or scale-in.
//!
//! * Each unit gets `⌊q/n⌋` or `⌈q/n⌉` queues. The larger shares go to the units
//!   that already hold the most queues (ties by name), which keeps the most
//!   queues in place.
//! * A queue stays on its unit unless the unit left or holds more than its
//!   share (it then keeps its lowest queue ids).
//! * Queues that must move go, in queue order, to the least-loaded unit below
//!   its share (ties by name), so every operator replica decides the same.

use std::cmp::Reverse;
use std::collections::BTreeMap;

/// The unit that takes a queue's writes: one broker with replication factor 1,
/// a broker group (master and replicas) with replication.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteUnit {
    /// The unit's name: the broker's pod name with replication factor 1.
    pub name: String,
}

/// Queue id → name of the write unit taking its writes.
pub type Assignment = BTreeMap<u32, String>;

/// The balanced assignment of `queues` queues over `units` closest to
/// `previous` (see the module doc). Empty without units.
pub fn rebalance(previous: &Assignment, units: &[WriteUnit], queues: u32) -> Assignment {
    let mut held: BTreeMap<&str, Vec<u32>> = units
        .iter()
        .map(|u| (u.name.as_str(), Vec::new()))
        .collect();
    if held.is_empty() {
        return Assignment::new();
    }
    for (queue, unit) in previous.range(..queues) {
        if let Some(queues) = held.get_mut(unit.as_str()) {
            queues.push(*queue);
        }
    }
    let base = queues as usize / held.len();
    let larger = queues as usize % held.len();
    let mut by_holdings: Vec<&str> = held.keys().copied().collect();
    by_holdings.sort_by_key(|unit| (Reverse(held[unit].len()), *unit));
    let share: BTreeMap<&str, usize> = by_holdings
        .iter()
        .enumerate()
        .map(|(rank, unit)| (*unit, base + usize::from(rank < larger)))
        .collect();

    let mut out = Assignment::new();
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for (unit, queues) in &held {
        let kept = &queues[..queues.len().min(share[unit])];
        out.extend(kept.iter().map(|q| (*q, unit.to_string())));
        load.insert(unit, kept.len());
    }
    for queue in 0..queues {
        if out.contains_key(&queue) {
            continue;
        }
        let unit = load
            .iter()
            .filter(|(unit, n)| **n < share[**unit])
            .min_by_key(|(unit, n)| (**n, **unit))
            .map(|(unit, _)| *unit)
            .expect("the shares add up to the queue count");
        *load.get_mut(unit).expect("a unit") += 1;
        out.insert(queue, unit.to_string());
    }
    out
}

#[cfg(test)]
mod tests;
