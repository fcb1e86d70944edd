//! A count of the log's rewrites in place: truncations (a follower drops a
//! tail its new master does not have) and heals (damaged bytes replaced by a
//! group member's intact copy). State derived from the log outside the store
//! by a scan (a replica's dedupe windows and staged messages) may hold
//! records a truncation removed, or miss records a heal brought back, when
//! the count changed since, or was odd during, the scan: it is derived again.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Store;

/// A rewrite in progress: the count is odd from [`Rewriting::begin`] until
/// it drops (even on an error path).
pub(super) struct Rewriting<'a>(&'a AtomicU64);

impl<'a> Rewriting<'a> {
    pub(super) fn begin(count: &'a AtomicU64) -> Rewriting<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Rewriting(count)
    }
}

impl Drop for Rewriting<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

impl Store {
    /// Twice the number of rewrites since the store opened, plus one while
    /// one runs (see the module documentation).
    pub fn rewrites(&self) -> u64 {
        self.inner.rewrites.load(Ordering::Acquire)
    }
}
