//! The write path of a replicated group: only the master appends, in its
//! epoch and under a valid lease; a write under the `quorum` policy is
//! acknowledged once the committed end (every member the master waits for
//! stored it, and the recorded in-sync set is large enough) passes it, one
//! under `master` once the master stored it. The policy is the topic's own
//! or the broker's default; both kinds share one log and one committed end.

use std::time::{Duration, Instant};

use dduomq_replication::{MemberId, Role};

use super::{AckPolicy, Mastership, NotMasterCause, Replication, ReplicationError};
use crate::messaging::error::BrokerError;
use crate::store::{Appended, Message, StoreError};

/// What writes waiting for their acknowledgements see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acks {
    /// Not a master (any more): waits fail with NOT_MASTER.
    Closed,
    /// Master of `epoch`: everything below `committed_end` is acknowledged
    /// while the lease holds (until `lease_until`).
    Open {
        epoch: u64,
        committed_end: u64,
        lease_until: Instant,
    },
}

/// The epoch a write was appended in: its acknowledgement must come from the
/// same epoch (a log truncated and rewritten meanwhile holds other bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub(super) epoch: u64,
}

impl Mastership {
    /// Publishes the quorum point now that the master's own log ends at
    /// `master_end`: everything below it is on every member the master waits
    /// for. It is the committed end whatever the policies (the broker's
    /// default and each topic's own): replicas hide what lies past it from
    /// consumers of quorum topics and a failover keeps it, so it never claims
    /// a byte the quorum has not stored. A `master` write needs no point of
    /// its own: it is acknowledged once appended (see
    /// [`Replication::acknowledged`]).
    pub(super) fn advance(&mut self, master_end: u64) -> u64 {
        if let Some(c) = self.tracker.committed_end(master_end) {
            self.committed_end = self.committed_end.max(c);
        }
        self.committed_end
    }
}

impl Replication {
    /// The term for a write now: this member must be master with a valid
    /// lease.
    pub fn term(&self) -> Result<Term, ReplicationError> {
        let state = self.state.lock();
        match (&state.role.role, &state.master) {
            (Role::Master, Some(m)) if m.lease.valid(self.now()) => Ok(Term {
                epoch: state.role.epoch,
            }),
            (Role::Master, _) => Err(self.not_master(NotMasterCause::LeaseLapsed)),
            (Role::Replica { .. }, _) => Err(self.not_master(NotMasterCause::Replica)),
            (Role::Unassigned, _) => Err(self.not_master(NotMasterCause::Unassigned)),
        }
    }

    /// Whether this member is a master whose lease lapsed: it is cut off from
    /// the controller, so a successor may be elected while the route table
    /// it holds still names it.
    pub fn master_lease_lapsed(&self) -> bool {
        let state = self.state.lock();
        match (&state.role.role, &state.master) {
            (Role::Master, Some(m)) => !m.lease.valid(self.now()),
            (Role::Master, None) => true,
            _ => false,
        }
    }

    /// Appends `messages` as the master of `term`'s epoch (refused once it is
    /// not, so a deposed master never writes into its successor's log).
    pub async fn append(
        &self,
        term: Term,
        messages: Vec<Message>,
    ) -> Result<Vec<Appended>, AppendError> {
        let _writing = self.gate.read().await;
        let current = self.term()?;
        if current != term {
            return Err(self.not_master(NotMasterCause::Deposed).into());
        }
        let appended = self.store.append(messages).await?;
        self.master_advanced();
        Ok(appended)
    }

    /// The master stored more: recompute the committed end.
    fn master_advanced(&self) {
        let master_end = self.store.log_end();
        let mut state = self.state.lock();
        let epoch = state.role.epoch;
        if let Some(m) = state.master.as_mut() {
            let committed = m.advance(master_end);
            let lease_until = self.lease_until(m);
            self.publish_open(epoch, committed, lease_until);
        }
    }

    /// A follower reports that it stored everything below `stored_end`;
    /// `sent_all` is where the last chunk that held everything the master
    /// had ended. A member the master waits for counts as caught up when it
    /// stored that much (under steady writes it never holds the very end); a
    /// member outside the waiting set joins only when it holds the very end.
    /// The master's end is read under the state lock: a write appended
    /// after a stale reading could otherwise be acknowledged without a member
    /// that then joins the waiting set as if it held it (review finding 5).
    pub(super) fn follower_stored(&self, member: MemberId, stored_end: u64, sent_all: u64) {
        let now = self.now();
        let mut state = self.state.lock();
        let master_end = self.store.log_end();
        let epoch = state.role.epoch;
        if let Some(m) = state.master.as_mut() {
            // 0: no chunk reached the end yet (the follower is catching up).
            let caught_up_at = if sent_all > 0 && m.tracker.waiting().contains(&member) {
                sent_all.min(master_end)
            } else {
                master_end
            };
            m.tracker
                .follower_stored(member, stored_end, caught_up_at, now);
            let committed = m.advance(master_end);
            let lease_until = self.lease_until(m);
            self.publish_open(epoch, committed, lease_until);
        }
    }

    /// When the master's lease lapses, on the `Instant` clock timers use.
    pub(super) fn lease_until(&self, m: &Mastership) -> Instant {
        Instant::now() + m.lease.remaining(self.now())
    }

    pub(super) fn publish_open(&self, epoch: u64, committed_end: u64, lease_until: Instant) {
        self.store.acknowledged_to(committed_end);
        self.acks.send_if_modified(|acks| {
            let open = Acks::Open {
                epoch,
                committed_end,
                lease_until,
            };
            let changed = *acks != open;
            *acks = open;
            changed
        });
    }

    /// Waits until the write that ends past `through` (the position of its
    /// last record, appended in `term`) is acknowledged under `policy`:
    /// `quorum` once the committed end passes it, `master` at once (the
    /// master stored it, per the store's flush policy) while this member is
    /// still master of that epoch with a valid lease. Fails with
    /// QUORUM_TIMEOUT after `ack_timeout`, and with NOT_MASTER when the member
    /// stops being master of that epoch or its lease lapses first.
    pub async fn acknowledged(
        &self,
        term: Term,
        through: u64,
        policy: AckPolicy,
    ) -> Result<(), ReplicationError> {
        let started = Instant::now();
        let deadline = started + self.config.ack_timeout;
        let mut acks = self.acks.subscribe();
        loop {
            let current = *acks.borrow_and_update();
            let lease_until = match current {
                Acks::Closed => return Err(self.not_master(NotMasterCause::Deposed)),
                Acks::Open { epoch, .. } if epoch != term.epoch => {
                    return Err(self.not_master(NotMasterCause::Deposed));
                }
                Acks::Open { lease_until, .. } if lease_until <= Instant::now() => {
                    return Err(self.not_master(NotMasterCause::LeaseLapsed));
                }
                Acks::Open { .. } if policy == AckPolicy::Master => return Ok(()),
                Acks::Open { committed_end, .. } if committed_end > through => return Ok(()),
                Acks::Open { lease_until, .. } => lease_until,
            };
            tokio::select! {
                changed = acks.changed() => {
                    if changed.is_err() {
                        return Err(self.not_master(NotMasterCause::Deposed));
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return Err(ReplicationError::QuorumTimeout {
                        group: self.placement.group,
                        waited: started.elapsed(),
                    });
                }
                // Re-checked: a renewal may have extended it meanwhile.
                _ = tokio::time::sleep_until(lease_until.into()) => {}
            }
        }
    }

    /// How long a write may wait for its acknowledgements.
    pub fn ack_timeout(&self) -> Duration {
        self.config.ack_timeout
    }
}

/// Why a master's append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Refused(#[from] ReplicationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AppendError> for BrokerError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Refused(e) => BrokerError::Replication(e),
            AppendError::Store(e) => BrokerError::Store(e),
        }
    }
}
