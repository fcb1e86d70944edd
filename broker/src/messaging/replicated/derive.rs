//! A replica keeps what a master derives from its log (idempotent
//! producers' windows, pending delayed and half messages) current as the
//! master's records arrive, so a promotion reads only the records since the
//! last pass instead of the whole log: failover must not take longer the
//! longer the log.
//!
//! Each pass first checks that the log still holds the last record the
//! previous one fed. A log truncated below it (the replica followed a master
//! whose tail the new master did not have) makes the pass forget everything
//! and derive again from the oldest record. A record gone to retention is
//! not a truncation: what it fed stays.

use super::super::Broker;
use super::super::error::Result;
use super::super::log_scan::{self, ScanFrom, ScanTail};
use super::LogRole;
use super::apply::AppliedMetadata;

impl Broker {
    /// One pass over what arrived in a replica's log (a no-op otherwise):
    /// its metadata records applied (`apply.rs`), then every record fed to
    /// the dedupe windows and staged messages.
    pub fn follow_replicated_log(&self) -> Result<AppliedMetadata> {
        let applied = self.apply_replicated_metadata()?;
        self.derive_from_log(|| ())?;
        Ok(applied)
    }

    /// Feeds the records that arrived since the last pass to the dedupe
    /// windows and staged messages (replica only; a no-op otherwise), then
    /// runs `then` before another pass may start: a promotion becomes master
    /// there, so no pass reads the new master's own records afterwards.
    /// Lock order: this pass's lock, then the replication layer's state (in
    /// `then`); a step-down holds the state and takes this lock only through
    /// a demotion, which only a master (never one mid-promotion) goes through.
    pub(super) fn derive_from_log<T>(&self, then: impl FnOnce() -> T) -> Result<T> {
        let mut tail = self.replicated.derived.lock();
        if self.log_role() == LogRole::Replica {
            if !self.log_holds(&tail) {
                tracing::warn!(
                    derived_to = tail.next,
                    "the log no longer holds the records the dedupe windows and staged messages came from; deriving them again from the oldest"
                );
                self.dedupe.clear();
                self.staged.clear();
                *tail = ScanTail::default();
            }
            let check_after = self.config.transaction_check_after.as_millis() as i64;
            let from = ScanFrom {
                dedupe: tail.next,
                staged: tail.next,
            };
            let scanned = log_scan::recover_from_log(
                &self.store,
                &self.dedupe,
                &self.staged,
                from,
                check_after,
            )?;
            tail.next = scanned.next;
            tail.last = scanned.last.or(tail.last);
        }
        Ok(then())
    }

    /// Forgets the derived state (a demoted master: its log may lose a tail
    /// and it was derived by its own writes, not by a pass); the next pass
    /// derives it again from the oldest record.
    pub(super) fn forget_derived(&self) {
        let mut tail = self.replicated.derived.lock();
        self.dedupe.clear();
        self.staged.clear();
        *tail = ScanTail::default();
    }

    /// Whether the log still holds everything the last pass fed.
    fn log_holds(&self, tail: &ScanTail) -> bool {
        let stats = self.store.stats();
        if tail.next > stats.commit_log_max {
            return false;
        }
        match tail.last {
            None => true,
            Some(last) if last.physical < stats.commit_log_min => true,
            Some(last) => self.store.lookup_by_id(&self.staged_id(last)).is_ok(),
        }
    }
}
