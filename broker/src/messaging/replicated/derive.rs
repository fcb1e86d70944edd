//! A replica keeps what a master derives from its log (idempotent
//! producers' windows, pending delayed and half messages) current as the
//! master's records arrive, so a promotion reads only the records since the
//! last pass instead of the whole log: failover must not take longer the
//! longer the log.
//!
//! A pass trusts what earlier passes fed only while the store's rewrite
//! count (truncations and heals, see `store/rewrites.rs`) is what they saw:
//! after a truncation (the replica followed a master whose tail the new
//! master did not have) it would hold records that are gone, after a heal it
//! would miss records that are back. Then, or when a pass fails or a rewrite
//! ran during it, everything is forgotten and derived again from the oldest
//! record. Records gone to retention are not a rewrite: what they fed stays.

use std::sync::Arc;
use std::time::Duration;

use super::super::Broker;
use super::super::error::Result;
use super::super::log_scan::{self, ScanFrom};
use super::LogRole;
use super::apply::AppliedMetadata;
use crate::store::now_millis;

/// How long a pass waits for a running truncation or heal before it looks again.
const REWRITE_WAIT: Duration = Duration::from_millis(5);

/// How far a replica derived from its log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Derived {
    /// Where the next pass starts.
    next: u64,
    /// The store's rewrite count every pass so far saw throughout; `None`
    /// before the first complete pass.
    rewrites: Option<u64>,
}

/// How far a pass reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PassEnd {
    /// The end of the log: a promotion needs every record.
    LogEnd,
    /// The end of the log, or sooner once the broker shuts down (the next
    /// start derives from its oldest record anyway).
    LogEndOrShutdown,
}

impl Broker {
    /// One pass over what arrived in a replica's log (a no-op otherwise):
    /// its metadata records applied (`apply.rs`), then every record fed to
    /// the dedupe windows and staged messages. Blocking: a pass after a
    /// restart or a rewrite reads the whole log.
    pub fn follow_replicated_log(&self) -> Result<AppliedMetadata> {
        let applied = self.apply_replicated_metadata();
        self.derive_from_log(PassEnd::LogEndOrShutdown, || ())?;
        applied
    }

    /// Feeds the records that arrived since the last pass to the dedupe
    /// windows and staged messages (replica only; a no-op otherwise), then
    /// runs `then` before another pass may start: a promotion becomes master
    /// there, so no pass reads the new master's own records afterwards.
    /// Lock order: this pass's lock, then the replication layer's state (in
    /// `then`); a step-down holds the state and takes this lock only through
    /// a demotion, which only a master (never one mid-promotion) goes through.
    pub(super) fn derive_from_log<T>(&self, end: PassEnd, then: impl FnOnce() -> T) -> Result<T> {
        let mut derived = self.replicated.derived.lock();
        if self.log_role() == LogRole::Replica {
            self.catch_up(&mut derived, end)?;
            // The master's releases arrived as records: their wheel entries go.
            self.staged.prune_released(now_millis());
        }
        Ok(then())
    }

    /// The staged messages a drain waits for: those the log holds
    /// unreleased, also on a member that does not write its log (a master
    /// still taking over is drained only once it has them all). While a pass
    /// runs, or before one completed, a replica cannot tell: at least one.
    pub(in crate::messaging) fn staged_to_drain(&self) -> usize {
        let unreleased = self.staged.unreleased();
        if self.writes_log() {
            return unreleased;
        }
        match self.replicated.derived.try_lock() {
            Some(derived) if derived.rewrites.is_some() => unreleased,
            _ => unreleased.max(1),
        }
    }

    /// Runs `become_replica` and forgets the derived state, with no pass in
    /// between (a demoted master: its state came from its own writes, not
    /// from passes); from then on only passes change it, and the next one
    /// derives it again from the oldest record.
    pub(super) fn forget_derived(&self, become_replica: impl FnOnce()) {
        let mut derived = self.replicated.derived.lock();
        become_replica();
        self.clear_derived(&mut derived);
    }

    /// Feeds what arrived since the last pass, or everything again after a
    /// rewrite of the log; returns after a pass no rewrite ran during.
    fn catch_up(&self, derived: &mut Derived, end: PassEnd) -> Result<()> {
        let check_after = self.config.transaction_check_after.as_millis() as i64;
        let stop = || end == PassEnd::LogEndOrShutdown && *self.shutdown.borrow();
        loop {
            let rewrites = self.store.rewrites();
            if derived.rewrites != Some(rewrites) {
                if derived.next > 0 {
                    tracing::warn!(
                        derived_to = derived.next,
                        "the log was truncated or healed since the dedupe windows and staged messages were derived from it; deriving them again from the oldest record"
                    );
                }
                self.clear_derived(derived);
            }
            if rewrites % 2 == 1 {
                std::thread::sleep(REWRITE_WAIT);
                continue;
            }
            let from = ScanFrom {
                dedupe: derived.next,
                staged: derived.next,
            };
            let scanned = log_scan::recover_from_log(
                &self.store,
                &self.dedupe,
                &self.staged,
                from,
                check_after,
                stop,
            );
            match scanned {
                // A read that failed because a rewrite ran is read again.
                _ if self.store.rewrites() != rewrites => self.clear_derived(derived),
                Ok(reached) => {
                    *derived = Derived {
                        next: reached,
                        rewrites: Some(rewrites),
                    };
                    return Ok(());
                }
                Err(e) => {
                    self.clear_derived(derived);
                    return Err(e);
                }
            }
        }
    }

    /// Until shutdown: a replica derives from each arrival (in a task of its
    /// own, so a pass over the whole log holds up neither the metadata
    /// records nor their retention floor).
    pub async fn run_replica_derive(self: Arc<Self>) {
        if self.log_role() == LogRole::Standalone {
            return;
        }
        let mut wakeups = self.wakeups();
        loop {
            if self.log_role() == LogRole::Replica {
                let this = self.clone();
                let derived = tokio::task::spawn_blocking(move || {
                    this.derive_from_log(PassEnd::LogEndOrShutdown, || ())
                })
                .await;
                if let Ok(Err(e)) = derived {
                    tracing::error!(error = %e, "deriving from the replicated log failed");
                }
            }
            let replica = self.log_role() == LogRole::Replica;
            if !wakeups.wait(replica, None).await {
                return;
            }
        }
    }

    fn clear_derived(&self, derived: &mut Derived) {
        self.dedupe.follow_log();
        self.staged.follow_log();
        *derived = Derived::default();
    }
}
