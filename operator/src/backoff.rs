//! Requeue delays of resources whose reconcile keeps failing: a spec that
//! cannot be applied, or a broker that keeps refusing, should not cost an API
//! write and a broker round trip every few seconds forever.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;

/// The delay after the first failure; it doubles with each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest delay between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// Consecutive failures per resource (keyed by uid).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records one more failure of `key`; returns how long to wait before
    /// retrying: 5 s, 10 s, 20 s, … at most 5 min.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock();
        let count = failures.entry(key.to_string()).or_default();
        let delay = FIRST_RETRY.saturating_mul(1 << (*count).min(16));
        *count = count.saturating_add(1);
        delay.min(MAX_RETRY)
    }

    /// Forgets the failures of `key`: it reconciled (or is gone).
    pub fn succeeded(&self, key: &str) {
        self.failures.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_a_success() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| backoff.failed("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff.failed("b"), FIRST_RETRY, "per resource");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a"), FIRST_RETRY);
    }
}
