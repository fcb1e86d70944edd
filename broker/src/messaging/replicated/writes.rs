//! The messaging layer's one door to replication. Every append on behalf of
//! a client or of the broker itself goes through here: a broker without
//! replication appends as before (no waiting, nothing allocated); a member of
//! a replicated group appends only as master, and what it acknowledges to a
//! client waits until its in-sync set stored it (`ack_policy`).

use std::sync::{Arc, Weak};

use super::super::Broker;
use super::super::error::{BrokerError, Result};
use super::super::send::SendReceipt;
use super::LogRole;
use crate::replication::{NotMasterCause, Replication, ReplicationError, SteppingDown, Term};
use crate::store::{Appended, Message, MessageId};

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

    /// The rule for a write starting now (NOT_MASTER unless this member may
    /// write; a master still taking over refuses too, so nothing is written
    /// before its metadata, dedupe windows and staged messages are rebuilt).
    pub(in crate::messaging) fn write_term(&self) -> Result<WriteTerm> {
        match self.replication.get() {
            None => Ok(WriteTerm::Standalone),
            Some(r) => {
                let term = r.term()?;
                if self.log_role() != LogRole::Master {
                    return Err(r.not_master(NotMasterCause::Promoting).into());
                }
                Ok(WriteTerm::Master(term))
            }
        }
    }

    /// The rule for a topic or group change starting now: a replica refuses
    /// it with NOT_MASTER (its tables follow the master's `%META%` records; a
    /// change of its own would diverge from them, a deleted topic would wedge
    /// its follower), as does a master still taking over.
    pub(in crate::messaging) fn change_term(&self) -> Result<WriteTerm> {
        match (self.log_role(), self.replication.get()) {
            (LogRole::Replica, None) => Err(ReplicationError::NotMaster {
                group: self.store.config().broker_id,
                member: 0,
                cause: NotMasterCause::Replica,
                master_address: None,
            }
            .into()),
            _ => self.write_term(),
        }
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

    /// Appends `messages` and waits until they are acknowledged.
    pub(in crate::messaging) async fn append_acknowledged(
        &self,
        messages: Vec<Message>,
    ) -> Result<()> {
        let term = self.write_term()?;
        let appended = self.append_in(term, messages).await?;
        self.acknowledged(term, appended.iter().map(|a| a.id.physical_offset))
            .await
    }

    /// Waits until the records at `positions` are acknowledged under `term`.
    pub(in crate::messaging) async fn acknowledged(
        &self,
        term: WriteTerm,
        positions: impl IntoIterator<Item = u64>,
    ) -> Result<()> {
        let (WriteTerm::Master(term), Some(r)) = (term, self.replication.get()) else {
            return Ok(());
        };
        match positions.into_iter().max() {
            Some(last) => Ok(r.acknowledged(term, last).await?),
            None => Ok(()),
        }
    }

    /// Waits until the records the receipts name are acknowledged under
    /// `term` (a retry answered from the dedupe window waits too: its first
    /// attempt may not have been acknowledged).
    pub(in crate::messaging) async fn receipts_acknowledged(
        &self,
        term: WriteTerm,
        receipts: &[SendReceipt],
    ) -> Result<()> {
        if let WriteTerm::Standalone = term {
            return Ok(());
        }
        let positions = receipts.iter().filter_map(|r| {
            r.message_id
                .parse::<MessageId>()
                .ok()
                .map(|id| id.physical_offset)
        });
        self.acknowledged(term, positions).await
    }
}
