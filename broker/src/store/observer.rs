//! Hooks through which the store reports timings and events (the broker turns
//! them into metrics; the store itself stays free of any metrics library).

use std::fmt::Debug;
use std::time::Duration;

/// Receives store events. Every method has a no-op default.
pub trait StoreObserver: Send + Sync + Debug {
    /// A commit-log flush (msync/fdatasync) took `took`.
    fn flushed(&self, _took: Duration) {}
    /// An append request was acknowledged `took` after it was queued.
    fn appended(&self, _took: Duration) {}
    /// A corrupt record was detected (recovery or read).
    fn corrupt(&self, _count: u64) {}
}

/// Ignores every event.
#[derive(Debug, Default)]
pub struct NoObserver;

impl StoreObserver for NoObserver {}
