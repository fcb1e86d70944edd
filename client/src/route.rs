//! The producer's cached topic route, and when an answer with a lower epoch
//! may replace it.

use std::time::{Duration, Instant};

use dduomq_proto::v1 as pb;

/// How long a cached route is kept against answers with a lower epoch since
/// one last confirmed it (at least; see [`Route::lower_epoch_grace`]). A
/// lower epoch mostly means a restarted broker that has not been pushed the
/// route table again, but epochs also go back for good: the operator was
/// removed (brokers answer standalone, epoch 0), or its leader moved to a pod
/// whose clock is behind (epochs are based on the time).
pub(crate) const LOWER_EPOCH_GRACE: Duration = Duration::from_secs(30);

/// A cached route: which queues are writable and where they live.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// When it was last fetched or kept: it is used for `route_ttl` after.
    pub(crate) fetched: Instant,
    /// When an answer last had its epoch (or it was first fetched).
    pub(crate) confirmed: Instant,
    /// When it was fetched or last refreshed in the background because it
    /// named a broker avoided as faulty.
    pub(crate) revalidated: Instant,
    /// Set after a send failed: refresh before the next use.
    pub(crate) expired: bool,
    /// The route table's epoch (0: a standalone broker's own view).
    pub(crate) epoch: u64,
    pub(crate) queues: Vec<pb::QueueRoute>,
}

impl Route {
    /// The grace for a producer refreshing every `route_ttl`: at least two
    /// refreshes, so one answer from a just restarted broker is never taken.
    pub(crate) fn lower_epoch_grace(route_ttl: Duration) -> Duration {
        LOWER_EPOCH_GRACE.max(2 * route_ttl)
    }

    /// Whether an answer at `epoch`, received at `now`, replaces this route:
    /// one at least as new always does; an older one once this route has gone
    /// unconfirmed for `grace`.
    pub(crate) fn accepts(&self, epoch: u64, grace: Duration, now: Instant) -> bool {
        epoch >= self.epoch || now.saturating_duration_since(self.confirmed) >= grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(epoch: u64, confirmed: Instant) -> Route {
        Route {
            fetched: confirmed,
            confirmed,
            revalidated: confirmed,
            expired: false,
            epoch,
            queues: Vec::new(),
        }
    }

    #[test]
    fn a_newer_or_equal_epoch_is_always_accepted() {
        let t = Instant::now();
        let cached = route(7, t);
        assert!(cached.accepts(7, LOWER_EPOCH_GRACE, t));
        assert!(cached.accepts(8, LOWER_EPOCH_GRACE, t));
    }

    #[test]
    fn a_lower_epoch_is_refused_only_within_the_grace() {
        let t = Instant::now();
        let cached = route(7, t);
        let grace = Duration::from_secs(30);
        assert!(!cached.accepts(0, grace, t));
        assert!(!cached.accepts(0, grace, t + grace - Duration::from_millis(1)));
        assert!(cached.accepts(0, grace, t + grace));
        assert!(cached.accepts(6, grace, t + grace + Duration::from_secs(5)));
    }

    #[test]
    fn keeping_a_stale_route_does_not_extend_the_grace() {
        let t = Instant::now();
        let mut cached = route(7, t);
        cached.fetched = t + Duration::from_secs(29);
        assert!(cached.accepts(0, LOWER_EPOCH_GRACE, t + LOWER_EPOCH_GRACE));
    }

    #[test]
    fn the_grace_spans_at_least_two_refreshes() {
        assert_eq!(
            Route::lower_epoch_grace(Duration::from_millis(200)),
            LOWER_EPOCH_GRACE
        );
        assert_eq!(
            Route::lower_epoch_grace(Duration::from_secs(60)),
            Duration::from_secs(120)
        );
    }
}
