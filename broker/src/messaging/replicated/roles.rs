//! Role changes: a replica opens without deriving anything from its log, and
//! is promoted to master or demoted back to replica when the replication layer
//! changes its role ([`Broker::assign_role`], the one place that joins them).

use std::sync::Arc;

use dduomq_proto::v1 as pb;
use dduomq_replication::Monotonic;

use super::super::Broker;
use super::super::error::Result;
use super::super::log_scan::{self, ScanFrom};
use super::LogRole;
use crate::config::MessagingConfig;
use crate::metrics::Metrics;
use crate::replication::Replication;
use crate::store::Store;

impl Broker {
    /// Applies the controller's AssignRole received at `received` (a master's
    /// lease counts from it) to this broker's `replication`: the replication layer switches this member's
    /// role, then the messaging layer follows it. A new master takes writes
    /// only once promoted (until then they are refused with NOT_MASTER).
    pub async fn assign_role(
        self: &Arc<Self>,
        replication: &Replication,
        req: pb::AssignRoleRequest,
        received: Monotonic,
    ) -> Result<pb::ReplicaState> {
        let _one_at_a_time = self.replicated.switching.lock().await;
        let state = replication.assign_role(req, received).await?;
        self.follow_replication_role().await?;
        Ok(state)
    }

    /// Makes the messaging layer's role the replication layer's: promoted
    /// when this member is master, demoted when it follows or is unassigned.
    /// Called on every assignment and once at startup (a static group's
    /// master is master at once).
    pub async fn follow_replication_role(self: &Arc<Self>) -> Result<()> {
        match self.replication() {
            Some(r) if r.is_master() => self.promote().await,
            Some(_) => self.demote(),
            None => Ok(()),
        }
    }

    /// [`Broker::open`] for a member of a replicated group: it starts as a
    /// replica (no writes; metadata applied from the log) until promoted.
    pub fn open_replica(
        config: MessagingConfig,
        store: Arc<Store>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Broker> {
        Broker::open_as(config, store, metrics, LogRole::Replica)
    }

    /// Makes a replica the master: applies the metadata records left, then
    /// rebuilds what the broker derives from its log exactly as startup does
    /// (topics whose metadata is missing, idempotent producers' windows,
    /// pending delayed and half messages), scanning from the log's start
    /// since no save of this broker covers the master's records; then takes
    /// writes and appends full snapshots. Consumers resume from the applied
    /// progress. Nothing comes from the network. A master is left as it is.
    pub async fn promote(self: &Arc<Self>) -> Result<()> {
        if self.log_role() != LogRole::Replica {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.rebuild_for_promotion()).await??;
        self.staged.wake.notify_one();
        self.flush_metadata_log().await
    }

    fn rebuild_for_promotion(&self) -> Result<()> {
        self.apply_replicated_metadata()?;
        self.reload_progress()?;
        let subscriptions: Vec<_> = self.subscriptions.lock().values().cloned().collect();
        for sub in subscriptions {
            sub.state.lock().forget_cursors();
            sub.notify.notify_waiters();
        }
        self.restore_topics_from_store()?;
        self.dedupe.clear();
        self.staged.clear();
        let check_after = self.config.transaction_check_after.as_millis() as i64;
        let from = ScanFrom {
            dedupe: 0,
            staged: 0,
        };
        log_scan::recover_from_log(&self.store, &self.dedupe, &self.staged, from, check_after)?;
        self.replicated.outbox.role.send_replace(LogRole::Master);
        self.queue_metadata_snapshot();
        // The progress record follows the snapshot; saving also records the
        // dedupe and staged positions this scan covered.
        self.offsets.lock().save_failed();
        self.persist_offsets()
    }

    /// Makes a master a replica (another member was promoted): it stops
    /// writing metadata records, forgets its staged messages and dedupe
    /// windows (rebuilt if it is promoted again), and counts the metadata
    /// records of its log as applied. A replica is left as it is.
    pub fn demote(&self) -> Result<()> {
        if self.log_role() != LogRole::Master {
            return Ok(());
        }
        self.replicated.outbox.role.send_replace(LogRole::Replica);
        self.replicated.outbox.reset();
        self.dedupe.clear();
        self.staged.clear();
        self.applied_to_end()
    }
}
