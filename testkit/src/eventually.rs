//! Waiting for a condition that other processes make true.

use std::time::{Duration, Instant};

/// The first pause between checks; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(25);
/// Long waits (a cluster rolling out) check at most this often, so the polling
/// itself does not load the API server or the brokers.
const MAX_POLL: Duration = Duration::from_millis(250);

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_POLL;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}
