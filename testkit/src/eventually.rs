//! Waiting for a condition that other processes make true.

use std::time::{Duration, Instant};

/// How often [`eventually`] checks: local processes answer at once.
const LOCAL_POLL: Duration = Duration::from_millis(25);

/// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    check: impl AsyncFnMut() -> Option<T>,
) -> T {
    eventually_every(LOCAL_POLL, timeout, what, check).await
}

/// [`eventually`], checking every `pause`: suites whose checks go to an API
/// server or a cluster poll less often, so the polling does not load it (and
/// keeps the pace their steps were written for).
pub async fn eventually_every<T>(
    pause: Duration,
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
    }
}
