//! A hierarchical timing wheel with millisecond ticks, for delayed messages.
//!
//! ```text
//!  level 7 | 256 slots x 2^56 ms  (the rest of u64 time)
//!    ...
//!  level 4 | 256 slots x 2^32 ms  (~49.7 days per slot)
//!  level 3 | 256 slots x 2^24 ms  (~4.66 hours per slot)
//!  level 2 | 256 slots x 2^16 ms  (~65.5 s per slot)
//!  level 1 | 256 slots x 2^8 ms   (256 ms per slot)
//!  level 0 | 256 slots x 1 ms
//! ```
//!
//! An entry due at `when` sits at the lowest level whose slot width covers the
//! highest bit in which `when` differs from the wheel's current time, so every
//! occupied slot of a level lies ahead of `now` within the current rotation of
//! the level above. Advancing jumps from one occupied slot start to the next
//! (never tick by tick): an expired level-0 slot fires, a higher slot is
//! cascaded into lower levels. Insert is O(1); advancing costs O(levels x
//! slots / 64) per occupied slot plus O(1) per entry and cascade, so 100,000
//! pending entries cost 16 bytes each plus the slot vectors.
//!
//! Hand-written rather than `tokio_util::time::DelayQueue`: entries are plain
//! values without per-entry keys or allocations, and the wheel is driven by an
//! explicit clock, which makes it deterministic to test.

const SLOT_BITS: u32 = 8;
const SLOTS: usize = 1 << SLOT_BITS;
/// Eight levels of eight bits cover every `u64` time.
const LEVELS: usize = 8;

#[derive(Debug)]
struct Level<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// Bit `s` is set when slot `s` holds entries.
    occupied: [u64; SLOTS / 64],
}

impl<T> Level<T> {
    fn new() -> Self {
        Level {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; SLOTS / 64],
        }
    }

    /// The first occupied slot at or after `from`.
    fn next_occupied(&self, from: usize) -> Option<usize> {
        let (mut word, bit) = (from / 64, from % 64);
        let mut bits = self.occupied[word] & (!0u64 << bit);
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            if word == self.occupied.len() {
                return None;
            }
            bits = self.occupied[word];
        }
    }

    fn push(&mut self, slot: usize, entry: (u64, T)) {
        self.slots[slot].push(entry);
        self.occupied[slot / 64] |= 1 << (slot % 64);
    }

    fn take(&mut self, slot: usize) -> Vec<(u64, T)> {
        self.occupied[slot / 64] &= !(1 << (slot % 64));
        std::mem::take(&mut self.slots[slot])
    }
}

/// Entries of type `T` due at millisecond times.
#[derive(Debug)]
pub struct TimingWheel<T> {
    levels: Vec<Level<T>>,
    now: u64,
    /// Entries inserted at or before `now`: due at the next advance.
    due: Vec<(u64, T)>,
    len: usize,
}

impl<T> TimingWheel<T> {
    /// An empty wheel whose clock reads `now`.
    pub fn new(now: u64) -> Self {
        TimingWheel {
            levels: (0..LEVELS).map(|_| Level::new()).collect(),
            now,
            due: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `value` at `when`; a time at or before the wheel's clock is due
    /// at the next advance.
    pub fn insert(&mut self, when: u64, value: T) {
        self.len += 1;
        self.place(when, value);
    }

    fn place(&mut self, when: u64, value: T) {
        if when <= self.now {
            self.due.push((when, value));
            return;
        }
        let level = level_for(self.now, when);
        self.levels[level].push(slot_of(when, level), (when, value));
    }

    /// The earliest time at which something may be due: exact for level 0, the
    /// slot start (when a cascade is due) above it.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(self.now);
        }
        // A level's slot holding `now` is never occupied (its entries would sit
        // lower), so searching from it finds only slots that start later.
        self.levels.iter().enumerate().find_map(|(level, l)| {
            let from = slot_of(self.now, level) + usize::from(level == 0);
            (from < SLOTS)
                .then(|| l.next_occupied(from))
                .flatten()
                .map(|slot| slot_start(self.now, level, slot))
        })
    }

    /// Moves the clock to `to` and returns every entry due at or before it, in
    /// time order.
    pub fn advance(&mut self, to: u64) -> Vec<(u64, T)> {
        let mut fired = std::mem::take(&mut self.due);
        while let Some(deadline) = self.next_deadline().filter(|d| *d <= to) {
            self.now = deadline;
            fired.append(&mut self.due);
            // The slot starting at `deadline` on the lowest occupied level.
            let level = (0..LEVELS)
                .find(|&l| {
                    let slot = slot_of(deadline, l);
                    self.levels[l].occupied[slot / 64] & (1 << (slot % 64)) != 0
                        && slot_start(deadline, l, slot) == deadline
                })
                .expect("a deadline names an occupied slot");
            for (when, value) in self.levels[level].take(slot_of(deadline, level)) {
                if when <= self.now {
                    fired.push((when, value));
                } else {
                    self.place(when, value);
                }
            }
        }
        self.now = self.now.max(to);
        self.len -= fired.len();
        fired.sort_by_key(|(when, _)| *when);
        fired
    }
}

/// The level for `when` seen from `now` (`when > now`).
fn level_for(now: u64, when: u64) -> usize {
    let differing = (now ^ when) | (SLOTS as u64 - 1);
    let highest = 63 - differing.leading_zeros();
    (highest / SLOT_BITS) as usize
}

fn slot_of(time: u64, level: usize) -> usize {
    ((time >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1)
}

/// Start time of `slot` at `level` in the rotation containing `now`.
fn slot_start(now: u64, level: usize, slot: usize) -> u64 {
    let shift = level as u32 * SLOT_BITS;
    let rotation = shift + SLOT_BITS;
    let base = if rotation >= 64 {
        0
    } else {
        (now >> rotation) << rotation
    };
    base + ((slot as u64) << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_each_entry_once_at_its_time() {
        let mut w = TimingWheel::new(1_000);
        w.insert(1_005, "a");
        w.insert(1_300, "b");
        w.insert(1_000 + 70_000, "c");
        w.insert(900, "late");
        assert_eq!(w.len(), 4);
        assert_eq!(w.advance(1_000), vec![(900, "late")]);
        assert_eq!(w.advance(1_004), vec![]);
        assert_eq!(w.next_deadline(), Some(1_005));
        assert_eq!(w.advance(1_299), vec![(1_005, "a")]);
        assert_eq!(w.advance(1_300), vec![(1_300, "b")]);
        assert_eq!(w.advance(71_000), vec![(71_000, "c")]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn forty_days_ahead_fires_exactly_then() {
        let start = 1_764_000_000_000; // a realistic epoch-ms clock
        let forty_days = 40 * 24 * 3600 * 1000;
        let mut w = TimingWheel::new(start);
        w.insert(start + forty_days, 1);
        assert!(w.advance(start + forty_days - 1).is_empty());
        assert_eq!(w.advance(start + forty_days), vec![(start + forty_days, 1)]);
    }

    proptest! {
        /// Against a sorted-list oracle: whatever the insert times and advance
        /// steps, each advance returns exactly the entries due by then.
        #[test]
        fn matches_a_sorted_oracle(
            start in 0u64..1u64 << 45,
            ops in proptest::collection::vec(
                prop_oneof![
                    (0u64..1u64 << 34).prop_map(|d| (true, d)),
                    (0u64..1u64 << 20).prop_map(|d| (false, d)),
                    (0u64..1u64 << 34).prop_map(|d| (false, d)),
                ],
                1..200,
            ),
        ) {
            let mut w = TimingWheel::new(start);
            let mut oracle: Vec<(u64, usize)> = Vec::new();
            let mut now = start;
            for (i, (insert, amount)) in ops.into_iter().enumerate() {
                if insert {
                    // Some entries land in the past.
                    let when = (now + amount).saturating_sub(1 << 10);
                    w.insert(when, i);
                    oracle.push((when, i));
                } else {
                    now += amount;
                    let mut expected: Vec<(u64, usize)> =
                        oracle.iter().copied().filter(|(t, _)| *t <= now).collect();
                    oracle.retain(|(t, _)| *t > now);
                    expected.sort();
                    let mut got = w.advance(now);
                    got.sort();
                    prop_assert_eq!(got, expected);
                    prop_assert_eq!(w.len(), oracle.len());
                    if let Some(next) = oracle.iter().map(|(t, _)| *t).min() {
                        let d = w.next_deadline().expect("entries pending");
                        prop_assert!(d > now && d <= next, "deadline {} for next {}", d, next);
                    }
                }
            }
        }
    }
}
