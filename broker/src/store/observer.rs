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
    /// Recovery repaired or rebuilt damaged files (or found data lost).
    fn repaired(&self, _count: u64) {}
    /// The store started (true) or stopped (false) refusing appends because the
    /// volume is above `disk_usage_limit`.
    fn refusing_writes(&self, _refusing: bool) {}
    /// Retention deleted a commit-log segment.
    fn segment_deleted(&self, _reason: DeleteReason) {}
}

/// Why retention deleted a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its newest record was older than the retention time.
    Expired,
    /// The volume was above `disk_usage_limit` (`delete_oldest` policy).
    DiskUsage,
}

impl DeleteReason {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Expired => "expired",
            DeleteReason::DiskUsage => "disk_usage",
        }
    }
}

/// Ignores every event.
#[derive(Debug, Default)]
pub struct NoObserver;

impl StoreObserver for NoObserver {}
