//! Role changes: a replica opens with nothing derived from its log (its
//! derive passes start from the oldest record), and is promoted to master or demoted back to replica when the replication layer
//! changes its role. A promotion applies and derives what the replica had not
//! yet (the records of its last moments), which can take longer than an
//! AssignRole call may: it runs as one task of its own per
//! epoch, which no cancelled call stops and later calls (renewals) find
//! rather than repeat; the new master takes writes once it finished. A
//! demotion happens inside the replication layer's switch ([`SteppingDown`]).

use std::sync::Arc;

use dduomq_proto::v1 as pb;
use dduomq_replication::Monotonic;
use tokio::task::JoinHandle;

use super::super::Broker;
use super::super::error::Result;
use super::LogRole;
use super::derive::PassEnd;
use crate::config::MessagingConfig;
use crate::metrics::Metrics;
use crate::replication::{Replication, SteppingDown};
use crate::store::Store;

impl Broker {
    /// Applies the controller's AssignRole received at `received` (a master's
    /// lease counts from it) to this broker's `replication`: the replication
    /// layer switches, then the messaging layer follows it.
    pub async fn assign_role(
        self: &Arc<Self>,
        replication: &Replication,
        req: pb::AssignRoleRequest,
        received: Monotonic,
    ) -> Result<pb::ReplicaState> {
        let state = replication.assign_role(req, received).await?;
        self.follow_replication_role().await?;
        Ok(state)
    }

    /// Promotes the messaging layer when the replication layer made this
    /// member master (on every assignment, and at startup for a static
    /// master). The call that starts a promotion answers once it finished;
    /// the promotion is a task of its own, so a caller that gives up (the
    /// controller's call timeout) does not stop it, and later calls, which
    /// find it started, answer at once. A demotion happens in the
    /// replication layer's switch ([`SteppingDown`]).
    pub async fn follow_replication_role(self: &Arc<Self>) -> Result<()> {
        match self.start_promotion() {
            Some(promotion) => promotion.await?,
            None => Ok(()),
        }
    }

    /// Starts the promotion of this master's epoch, unless the messaging
    /// layer is master already or that epoch's promotion was started.
    fn start_promotion(self: &Arc<Self>) -> Option<JoinHandle<Result<()>>> {
        let epoch = self.replication()?.master_epoch()?;
        if self.log_role() == LogRole::Master {
            return None;
        }
        {
            let mut started = self.replicated.promotion.lock();
            if *started == Some(epoch) {
                return None;
            }
            *started = Some(epoch);
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let promoted = this.promote().await;
            if let Err(e) = &promoted {
                tracing::error!(epoch, error = %e, "promotion failed; the next assignment retries");
                let mut started = this.replicated.promotion.lock();
                if *started == Some(epoch) {
                    *started = None;
                }
            }
            promoted
        }))
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

    /// Makes a replica the master: applies the metadata records left,
    /// reloads consumer progress, restores topics whose metadata is missing
    /// and feeds the records its derive passes had not read to the dedupe
    /// windows and staged messages (`derive.rs`); then takes writes and
    /// appends full snapshots. Consumers resume from the applied progress.
    /// Nothing comes from the network. A master is left as it is; with
    /// replication, only the epoch this member is master of when the rebuild
    /// starts is promoted, and only if it still is at the end.
    pub async fn promote(self: &Arc<Self>) -> Result<()> {
        let _one_rebuild = self.replicated.rebuilding.lock().await;
        if self.log_role() != LogRole::Replica {
            return Ok(());
        }
        let epoch = match self.replication() {
            Some(r) => match r.master_epoch() {
                Some(epoch) => Some(epoch),
                None => return Ok(()),
            },
            None => None,
        };
        let this = self.clone();
        let promoted =
            tokio::task::spawn_blocking(move || this.rebuild_for_promotion(epoch)).await??;
        if !promoted {
            return Ok(());
        }
        self.staged.wake.notify_one();
        self.flush_metadata_log().await
    }

    /// The rebuild; false when this member stopped being master of `epoch`
    /// meanwhile (it stays a replica, holding nothing of a master).
    fn rebuild_for_promotion(&self, epoch: Option<u64>) -> Result<bool> {
        self.apply_replicated_metadata()?;
        self.reload_progress()?;
        self.forget_push_cursors();
        self.restore_topics_from_store()?;
        let become_master = || {
            self.dedupe.keep_own_writes();
            self.staged.keep_own_writes();
            self.replicated.outbox.role.send_replace(LogRole::Master);
        };
        let promoted =
            self.derive_from_log(PassEnd::LogEnd, || match (epoch, self.replication()) {
                (Some(epoch), Some(r)) => r.while_master_of(epoch, become_master),
                _ => {
                    become_master();
                    true
                }
            })?;
        if !promoted {
            // Still a replica: what it derived stays right for its log.
            tracing::info!(?epoch, "promotion abandoned: no longer master of its epoch");
            return Ok(false);
        }
        self.queue_metadata_snapshot();
        // The progress record follows the snapshot; saving also records the
        // dedupe and staged positions this scan covered.
        self.offsets.lock().save_failed();
        self.persist_offsets()?;
        Ok(true)
    }

    /// Makes a master a replica (another member was promoted): it stops
    /// writing metadata records, forgets its staged messages and dedupe
    /// windows (derived again from its log as a replica), and counts the metadata
    /// records of its log as applied. With replication it runs inside the
    /// step-down, before the follower stores the new master's records (which
    /// must not count as applied). A replica is left as it is.
    pub fn demote(&self) -> Result<()> {
        if self.log_role() != LogRole::Master {
            return Ok(());
        }
        self.forget_derived(|| {
            self.replicated.outbox.role.send_replace(LogRole::Replica);
            self.replicated.outbox.reset();
        });
        self.applied_to_end()
    }
}

impl SteppingDown for Broker {
    fn stepping_down(&self) {
        if let Err(e) = self.demote() {
            tracing::error!(error = %e, "demoting the messaging layer failed");
        }
    }
}
