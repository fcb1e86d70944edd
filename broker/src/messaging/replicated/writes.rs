//! The messaging layer's one door to replication. Every append on behalf of
//! a client or of the broker itself goes through here: a broker without
//! replication appends as before (no waiting, nothing allocated); a member of
//! a replicated group appends only as master, and what it acknowledges to a
//! client waits per the topic's ack policy (its own, else the broker's
//! `ack_policy`): under `quorum` until its in-sync set stored it, under
//! `master` only until the master did. The broker's own records follow the
//! broker's policy, or the stricter of it and their topic's when a client
//! relies on them as on a send to it (a transaction's outcome, a topic's
//! metadata): otherwise a quorum topic under a `master` default could lose a
//! commit it acknowledged.

use std::sync::{Arc, Weak};

use super::super::Broker;
use super::super::error::{BrokerError, Result};
use super::super::send::SendReceipt;
use super::super::topic_settings::TopicSettings;
use super::LogRole;
use crate::replication::{
    AckPolicy, NotMasterCause, Replication, ReplicationError, SteppingDown, Term,
};
use crate::store::{Appended, Message, MessageId, Visibility};

/// Under which rule a write is appended and acknowledged.
#[derive(Debug, Clone, Copy)]
pub(in crate::messaging) enum WriteTerm {
    /// No replication: stored is acknowledged.
    Standalone,
    /// Appended by the master of this term's epoch.
    Master(Term),
}

impl Broker {
    /// Makes this broker a member of a replicated group (once, at startup);
    /// it is demoted as the replication layer steps down.
    pub fn attach_replication(self: &Arc<Self>, replication: Arc<Replication>) {
        let observer: Weak<dyn SteppingDown> = Arc::downgrade(self) as Weak<Broker>;
        replication.observe_stepping_down(observer);
        if self.replication.set(replication).is_err() {
            tracing::error!("replication attached twice; keeping the first");
        }
    }

    /// The broker's group membership, when it replicates.
    pub fn replication(&self) -> Option<&Arc<Replication>> {
        self.replication.get()
    }

    /// The broker's own policy: the `[replication] ack_policy` (standalone:
    /// `master`, which is what it does, acknowledging what it stored).
    pub(in crate::messaging) fn default_ack_policy(&self) -> AckPolicy {
        self.replication
            .get()
            .map_or(AckPolicy::Master, |r| r.config().ack_policy)
    }

    /// When a send to a topic with `settings` is acknowledged.
    pub(in crate::messaging) fn ack_policy(&self, settings: &TopicSettings) -> AckPolicy {
        settings
            .ack_policy
            .unwrap_or_else(|| self.default_ack_policy())
    }

    /// The policy a record the broker writes about the topic `name` waits
    /// for: the stricter of the broker's and the topic's (see the module).
    pub(in crate::messaging) fn strictest_ack_policy(&self, name: &str) -> AckPolicy {
        self.ack_policy(&self.topics.settings(name))
            .stricter(self.default_ack_policy())
    }

    /// What consumers of a topic with `settings` see: under `master` every
    /// stored record (as its sends were acknowledged), under `quorum` those
    /// below the committed end only.
    pub(in crate::messaging) fn visibility(&self, settings: &TopicSettings) -> Visibility {
        match self.ack_policy(settings) {
            AckPolicy::Master => Visibility::Stored,
            AckPolicy::Quorum => Visibility::Acknowledged,
        }
    }

    /// [`Self::visibility`] of the topic `name`.
    pub(in crate::messaging) fn visibility_of(&self, name: &str) -> Visibility {
        self.visibility(&self.topics.settings(name))
    }

    /// The rule for a write (a send, a release, a topic or group change)
    /// starting now: NOT_MASTER unless this member may write (a replica's
    /// tables follow the master's `%META%` records; a change of its own would
    /// diverge from them, a deleted topic would wedge its follower); a master
    /// still taking over refuses with MASTER_TAKING_OVER, so nothing is
    /// written before its metadata, dedupe windows and staged messages are
    /// complete.
    pub(in crate::messaging) fn write_term(&self) -> Result<WriteTerm> {
        match self.replication.get() {
            None if self.log_role() == LogRole::Replica => Err(self.unreplicated_replica()),
            None => Ok(WriteTerm::Standalone),
            Some(r) => {
                let term = r.term()?;
                if self.log_role() != LogRole::Master {
                    // Made master but still taking over, or stepped down
                    // since `term()` (then a replica, not taking over).
                    let cause = match r.master_epoch() {
                        Some(_) => NotMasterCause::Promoting,
                        None => NotMasterCause::Replica,
                    };
                    return Err(r.not_master(cause).into());
                }
                Ok(WriteTerm::Master(term))
            }
        }
    }

    /// NOT_MASTER from a replica with no replication layer (one a test
    /// feeds by hand): it takes no writes either.
    fn unreplicated_replica(&self) -> BrokerError {
        ReplicationError::NotMaster {
            group: self.store.config().broker_id,
            member: 0,
            cause: NotMasterCause::Replica,
            master_address: None,
        }
        .into()
    }

    /// Appends `messages` under `term`.
    pub(in crate::messaging) async fn append_in(
        &self,
        term: WriteTerm,
        messages: Vec<Message>,
    ) -> Result<Vec<Appended>> {
        match (term, self.replication.get()) {
            (WriteTerm::Master(term), Some(r)) => Ok(r.append(term, messages).await?),
            (WriteTerm::Standalone, None) => Ok(self.store.append(messages).await?),
            // Never appended directly: a standalone term meeting replication
            // (attached after the term was taken) checked no role.
            _ => Err(BrokerError::WriteTermMismatch),
        }
    }

    /// Appends records the broker writes itself (released delayed messages,
    /// dead letters): only a master does.
    pub(in crate::messaging) async fn append_as_master(
        &self,
        messages: Vec<Message>,
    ) -> Result<Vec<Appended>> {
        let term = self.write_term()?;
        self.append_in(term, messages).await
    }

    /// Appends the broker's own `messages` and waits until they are
    /// acknowledged under `policy`.
    pub(in crate::messaging) async fn append_acknowledged(
        &self,
        messages: Vec<Message>,
        policy: AckPolicy,
    ) -> Result<()> {
        let term = self.write_term()?;
        let appended = self.append_in(term, messages).await?;
        let positions = appended.iter().map(|a| a.id.physical_offset);
        self.acknowledged(term, positions, policy).await
    }

    /// Waits until the records at `positions` are acknowledged under `term`
    /// and `policy`.
    pub(in crate::messaging) async fn acknowledged(
        &self,
        term: WriteTerm,
        positions: impl IntoIterator<Item = u64>,
        policy: AckPolicy,
    ) -> Result<()> {
        let (WriteTerm::Master(term), Some(r)) = (term, self.replication.get()) else {
            return Ok(());
        };
        match positions.into_iter().max() {
            Some(last) => Ok(r.acknowledged(term, last, policy).await?),
            None => Ok(()),
        }
    }

    /// Waits until the records the receipts name are acknowledged under
    /// `term`, each per its topic's policy (a retry answered from the dedupe
    /// window waits too: its first attempt may not have been acknowledged).
    /// One wait for the last quorum record is enough: it also checks the
    /// term, which is all the master's records need.
    pub(in crate::messaging) async fn receipts_acknowledged(
        &self,
        term: WriteTerm,
        receipts: &[SendReceipt],
    ) -> Result<()> {
        if let WriteTerm::Standalone = term {
            return Ok(());
        }
        let position = |r: &SendReceipt| {
            r.message_id
                .parse::<MessageId>()
                .ok()
                .map(|id| id.physical_offset)
        };
        let quorum: Vec<u64> = receipts
            .iter()
            .filter(|r| self.ack_policy(&self.topics.settings(&r.topic)) == AckPolicy::Quorum)
            .filter_map(position)
            .collect();
        if quorum.is_empty() {
            let positions = receipts.iter().filter_map(position);
            self.acknowledged(term, positions, AckPolicy::Master).await
        } else {
            self.acknowledged(term, quorum, AckPolicy::Quorum).await
        }
    }
}
