//! Everything a new master needs travels in the replicated log. With
//! replication, a broker is the group's master or one of its replicas
//! ([`LogRole`]); a broker without replication is standalone and behaves as
//! before (nothing here runs).
//!
//! ```text
//!  master                                            replica (same log bytes)
//!  topic/group change ─ journal ─┐                    ┌─ apply.rs: tails %META% and
//!  progress save ────────────────┼─ outbox.rs ─▶ %META%, %PROGRESS% (queue 0) ─▶ %PROGRESS% through
//!  snapshots (promotion, every   ┘  (appended in order)   Store::read; own metadata files,
//!  segment of log growth)                                  position in metadata/replica.json
//!
//!  derive.rs: a replica feeds arriving records to its dedupe windows and
//!  staged messages (the startup scan, log_scan.rs), from its log's start.
//!  promote (roles.rs, one owned task per epoch): apply and derive what is
//!  left, become master if still master of that epoch, queue snapshots.
//!  demote (told by the replication layer as it steps down, before it
//!  follows anyone): stop writing; its own records count as applied; what
//!  it derived is derived again from its log.
//!  Broker::assign_role (roles.rs) starts promotions; writes.rs is the one
//!  door of every append.
//! ```
//!
//! The two topics have no metadata entry, so they stay out of listings,
//! routes, drains and lag. A replica writes nothing to the log: it does not
//! run delayed releases or transaction checks (the master's releases arrive
//! through the log), and saves no progress, dedupe or staged positions of its
//! own (its log is the master's: a promotion reloads progress from it, and the
//! rest was derived from it as it arrived).

mod apply;
mod derive;
mod outbox;
pub mod records;
mod roles;
mod writes;

pub use apply::AppliedMetadata;
pub use records::{META_TOPIC, PROGRESS_TOPIC};
pub(super) use writes::WriteTerm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::Broker;
use super::error::Result;
use apply::ApplyPosition;
use derive::Derived;
use outbox::Outbox;

/// How a broker relates to the log it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRole {
    /// No replication: the broker writes its log and keeps no metadata
    /// records in it (replication factor 1).
    Standalone,
    /// Writes the group's log, metadata records included.
    Master,
    /// Holds a copy of the master's log: takes no writes, applies the
    /// metadata records.
    Replica,
}

/// A broker's role and its replicated-metadata state.
#[derive(Debug)]
pub(super) struct Replicated {
    outbox: Arc<Outbox>,
    /// How far a replica applied the metadata records.
    applied: Mutex<ApplyPosition>,
    applied_path: PathBuf,
    offsets_path: PathBuf,
    /// The epoch whose promotion was started (and not failed): later
    /// assignments of that epoch find it rather than start another.
    promotion: Mutex<Option<u64>>,
    /// One rebuild at a time: a promotion of a later epoch waits for an
    /// earlier one to finish (or find its epoch gone).
    rebuilding: tokio::sync::Mutex<()>,
    /// How far a replica fed its log to the dedupe windows and staged
    /// messages (`derive.rs`); in memory, so a restart derives from the start.
    derived: Mutex<Derived>,
}

impl Replicated {
    /// The state of a broker with metadata directory `meta`, starting in `role`.
    pub(super) fn open(meta: &Path, role: LogRole) -> Result<Replicated> {
        let applied_path = meta.join("replica.json");
        Ok(Replicated {
            outbox: Arc::new(Outbox::new(role)),
            applied: Mutex::new(ApplyPosition::load(&applied_path)?),
            applied_path,
            offsets_path: meta.join("offsets.json"),
            promotion: Mutex::new(None),
            rebuilding: tokio::sync::Mutex::new(()),
            derived: Mutex::new(Derived::default()),
        })
    }
}

impl Broker {
    /// The broker's role now.
    pub fn log_role(&self) -> LogRole {
        *self.replicated.outbox.role.borrow()
    }

    /// Whether this broker appends to its log (master or standalone).
    pub(super) fn writes_log(&self) -> bool {
        self.log_role() != LogRole::Replica
    }

    /// Waits until the broker writes its log; false when it shuts down first.
    pub(super) async fn wait_until_writer(&self, stop: &mut watch::Receiver<bool>) -> bool {
        let mut role = self.replicated.outbox.role.subscribe();
        tokio::select! {
            r = role.wait_for(|r| *r != LogRole::Replica) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// Makes the topic and group tables tell the outbox of their changes.
    pub(super) fn observe_metadata_changes(&self) {
        self.topics.table().observe(self.replicated.outbox.clone());
        self.groups.table().observe(self.replicated.outbox.clone());
    }

    /// The commit-log position retention must keep: unresolved staged
    /// messages, and with replication the newest metadata snapshots (a
    /// master's) or the master's own floor (a replica's).
    pub(super) fn retention_floor(&self, log_end: u64) -> u64 {
        let staged = self.staged.floor(log_end);
        match self.log_role() {
            LogRole::Standalone => staged,
            LogRole::Master => staged.min(self.replicated.outbox.floor()),
            LogRole::Replica => self.replicated.applied.lock().retention_floor,
        }
    }

    /// Until shutdown: a master appends its queued metadata records, a
    /// replica applies those arriving in its log (`derive.rs` derives the
    /// rest). Nothing for a standalone broker.
    pub async fn run_replicated_metadata(self: Arc<Self>) {
        if self.log_role() == LogRole::Standalone {
            return;
        }
        let mut wakeups = self.wakeups();
        loop {
            match self.log_role() {
                LogRole::Master => {
                    if let Err(e) = self.flush_metadata_log().await {
                        tracing::error!(error = %e, "appending metadata records failed");
                    }
                }
                LogRole::Replica => {
                    let this = self.clone();
                    let applied =
                        tokio::task::spawn_blocking(move || this.apply_replicated_metadata()).await;
                    if let Ok(Err(e)) = applied {
                        tracing::error!(error = %e, "applying the replicated log failed");
                    }
                }
                LogRole::Standalone => {}
            }
            let replica = self.log_role() == LogRole::Replica;
            if !wakeups
                .wait(replica, Some(&self.replicated.outbox.wake))
                .await
            {
                return;
            }
        }
    }

    fn wakeups(&self) -> Wakeups {
        Wakeups {
            stop: self.shutdown_signal(),
            arrivals: self.store.subscribe(),
            role: self.replicated.outbox.role.subscribe(),
        }
    }
}

/// What the replicated log's background loops wake for.
struct Wakeups {
    stop: watch::Receiver<bool>,
    arrivals: watch::Receiver<u64>,
    role: watch::Receiver<LogRole>,
}

impl Wakeups {
    /// Waits for a role change, records arriving (when `arrivals`) or
    /// `notify`; false once the broker shuts down.
    async fn wait(&mut self, arrivals: bool, notify: Option<&tokio::sync::Notify>) -> bool {
        let notified = async {
            match notify {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notified => true,
            _ = self.arrivals.changed(), if arrivals => true,
            _ = self.role.changed() => true,
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }
}
