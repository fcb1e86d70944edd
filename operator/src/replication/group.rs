//! One group's controller: each round reads the group's record, lets the pure
//! rules ([`dduomq_replication::decide`]) say what to do, writes the record by
//! compare-and-swap when the decision changes it (a conflict re-reads and
//! decides again), then sends every member its role with `AssignRole` — for
//! the master that call is its lease.
//!
//! Fencing: the end of every AssignRole attempt to the master (answered,
//! failed or timed out) moves the fencing deadline; a failed master is no
//! longer called (a call would move it again) and no successor is elected
//! before the deadline, nor before one full lease after this controller
//! started leading (its predecessor may have granted one just before).

use std::collections::BTreeMap;
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_replication::{
    Decision, ElectionTiming, GroupRecord, InSyncProposal, MasterContact, MemberId, MemberReport,
    MemberView, Monotonic, decide,
};
use futures::future::join_all;

use crate::brokers::BrokerPool;
use crate::registry::BrokerEndpoint;
use crate::replication::record::{ReadRecord, RecordError, RecordStore};

/// Compare-and-swap attempts per round: each conflict re-reads and decides
/// again; the next round tries again after that.
const CAS_ATTEMPTS: usize = 3;

/// A member of the group as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member: MemberId,
    pub endpoint: BrokerEndpoint,
}

/// What a round leaves the group with, for the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupState {
    /// The master takes writes (recorded, renewed by this controller).
    Serving { master: MemberId, epoch: u64 },
    /// No master that may take writes: never elected, fenced, or no
    /// candidate. Its queues are routed read-only on a replica.
    Masterless,
}

/// What a round did, for logs, metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    Renewed,
    Recorded(GroupRecord),
    Elected(GroupRecord),
    Fenced {
        elect_at: Monotonic,
    },
    NoCandidate,
    /// The record could not be read: the last one read was renewed.
    RenewedLastKnown,
    /// Every compare-and-swap of this round lost; the next round tries again.
    Contended,
}

/// The master this controller deals with, and its renewals.
#[derive(Debug, Clone)]
struct Contact {
    master: MemberId,
    epoch: u64,
    renewals: MasterContact,
}

/// The controller of one group.
#[derive(Debug)]
pub struct GroupController {
    group: u32,
    size: u32,
    store: RecordStore,
    pool: BrokerPool,
    /// The last record read or written.
    last: Option<ReadRecord>,
    contact: Option<Contact>,
    /// Each member's last AssignRole answer.
    reports: BTreeMap<MemberId, MemberReport>,
    state: GroupState,
}

/// Lease timing and the clock of a controller's rounds.
#[derive(Debug, Clone, Copy)]
pub struct RoundTiming {
    pub election: ElectionTiming,
    /// Bound of each AssignRole and BrokerInfo call.
    pub call_timeout: Duration,
}

impl GroupController {
    pub fn new(group: u32, size: u32, store: RecordStore, pool: BrokerPool) -> GroupController {
        GroupController {
            group,
            size,
            store,
            pool,
            last: None,
            contact: None,
            reports: BTreeMap::new(),
            state: GroupState::Masterless,
        }
    }

    pub fn state(&self) -> &GroupState {
        &self.state
    }

    /// One round: decide, record, assign. `now` reads the controller's
    /// monotonic clock.
    pub async fn round(
        &mut self,
        members: &[Member],
        timing: &RoundTiming,
        now: &(impl Fn() -> Monotonic + Sync),
    ) -> Result<RoundOutcome, RecordError> {
        for _ in 0..CAS_ATTEMPTS {
            let read = match self.store.read().await {
                Ok(read) => read,
                Err(e) => {
                    // Only the leader writes records, and it stops leading
                    // (exits) before a successor could elect: renewing what
                    // it last read keeps the group serving through a slow
                    // API server (the read fails or times out, bounded by
                    // `RECORD_CALL_TIMEOUT`).
                    let Some(last) = self.last.clone() else {
                        return Err(e);
                    };
                    tracing::warn!(group = self.group, error = %e, "reading the group record failed; renewing the last one read");
                    // Not while an election write of unknown outcome may
                    // still land: that record would replace this master.
                    let replacing = self
                        .contact
                        .as_ref()
                        .is_some_and(|c| c.renewals.replacement_pending);
                    if self.state != GroupState::Masterless && !replacing {
                        self.assign(&last.record, members, true, timing, now).await;
                    }
                    return Ok(RoundOutcome::RenewedLastKnown);
                }
            };
            self.follow_record(&read.record, timing, now());
            let views = self.views(members);
            let contact = self
                .contact
                .as_ref()
                .map_or(MasterContact::new(timing.election.leader_since), |c| {
                    c.renewals
                });
            match decide(&read.record, &views, &contact, &timing.election, now()) {
                Decision::Renew => {
                    self.serve(read, members, timing, now).await;
                    return Ok(RoundOutcome::Renewed);
                }
                Decision::Record(next) => {
                    let Some(written) = self.store.write(&read, &next).await? else {
                        continue;
                    };
                    self.serve(written, members, timing, now).await;
                    return Ok(RoundOutcome::Recorded(next));
                }
                Decision::Elect(next) => {
                    let written = match self.store.write(&read, &next).await {
                        Ok(Some(written)) => written,
                        Ok(None) => continue,
                        Err(e) => {
                            // The write may still land: the old master gets
                            // no new lease until the record is read again.
                            if let Some(contact) = self.contact.as_mut() {
                                contact.renewals.replacement_attempted();
                            }
                            return Err(e);
                        }
                    };
                    tracing::info!(group = self.group, master = ?next.master, epoch = next.epoch, in_sync = ?next.in_sync, "elected a master");
                    self.follow_record(&next, timing, now());
                    if let Some(contact) = self.contact.as_mut() {
                        contact.renewals.election_written();
                    }
                    self.serve(written, members, timing, now).await;
                    return Ok(RoundOutcome::Elected(next));
                }
                Decision::Fence { elect_at } => {
                    // The replicas keep answering, so their log ends are
                    // known when the election comes; the master is only
                    // asked what it is.
                    self.state = GroupState::Masterless;
                    self.assign(&read.record, members, false, timing, now).await;
                    if let Some(master) = read.record.master {
                        let acting = |reports: &BTreeMap<MemberId, MemberReport>| {
                            reports
                                .get(&master)
                                .is_some_and(|r| r.is_master && r.epoch == read.record.epoch)
                        };
                        let was_acting = acting(&self.reports);
                        self.query(master, members, timing.call_timeout).await;
                        // A controller that just took over finds the master
                        // acting: renew it now, not a round later, so its
                        // lease does not lapse in the handover.
                        if !was_acting && acting(&self.reports) {
                            continue;
                        }
                    }
                    self.last = Some(read);
                    return Ok(RoundOutcome::Fenced { elect_at });
                }
                Decision::NoCandidate => {
                    // The recorded master is still the only one that may
                    // serve: should it come back, its renewal resumes.
                    self.state = GroupState::Masterless;
                    self.assign(&read.record, members, true, timing, now).await;
                    // Only members that reported are elected (their store
                    // identity is recorded): a new group's members are told
                    // nothing before, so ask them.
                    for member in members.iter().filter(|m| m.endpoint.ready) {
                        if !self.reports.contains_key(&member.member) {
                            self.query(member.member, members, timing.call_timeout)
                                .await;
                        }
                    }
                    self.last = Some(read);
                    return Ok(RoundOutcome::NoCandidate);
                }
            }
        }
        Ok(RoundOutcome::Contended)
    }

    /// Renews the record's master and assigns the replicas.
    async fn serve(
        &mut self,
        read: ReadRecord,
        members: &[Member],
        timing: &RoundTiming,
        now: &(impl Fn() -> Monotonic + Sync),
    ) {
        self.assign(&read.record, members, true, timing, now).await;
        self.state = match read.record.master {
            Some(master) => GroupState::Serving {
                master,
                epoch: read.record.epoch,
            },
            None => GroupState::Masterless,
        };
        self.last = Some(read);
    }

    /// Starts a new contact when the record names another master or epoch
    /// than the one this controller dealt with; it is not promoted before
    /// the previous master's fencing deadline.
    fn follow_record(&mut self, record: &GroupRecord, timing: &RoundTiming, now: Monotonic) {
        let Some(master) = record.master else {
            return;
        };
        if self
            .contact
            .as_ref()
            .is_some_and(|c| c.master == master && c.epoch == record.epoch)
        {
            return;
        }
        let previous = self.contact.as_ref().map(|c| c.renewals);
        self.contact = Some(Contact {
            master,
            epoch: record.epoch,
            renewals: MasterContact::succeeding(
                previous.as_ref(),
                now,
                timing.election.lease,
                timing.election.margin,
            ),
        });
    }

    fn views(&self, members: &[Member]) -> Vec<MemberView> {
        (0..self.size)
            .map(|member| MemberView {
                member,
                ready: members
                    .iter()
                    .any(|m| m.member == member && m.endpoint.ready),
                report: self.reports.get(&member).cloned(),
            })
            .collect()
    }

    /// Reads what a member says of itself (BrokerInfo): the fenced master,
    /// without calling AssignRole, which would move its fencing deadline, or
    /// a member that has not reported. Bounded by `timeout` like AssignRole,
    /// not by the pool's longer admin deadline: a stopped member must not
    /// hold up the round.
    async fn query(&mut self, member: MemberId, members: &[Member], timeout: Duration) {
        let Some(m) = members.iter().find(|m| m.member == member) else {
            return;
        };
        match tokio::time::timeout(timeout, self.pool.broker_info(&m.endpoint.address)).await {
            Err(_) => {
                tracing::debug!(group = self.group, member, ?timeout, "BrokerInfo timed out")
            }
            Ok(Ok(info)) => {
                if let Some(state) = info.replication {
                    self.reports.insert(member, report(&state));
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(group = self.group, member, error = %e, "BrokerInfo failed")
            }
        }
    }

    /// Sends every listed member its role under `record`, at once; the
    /// master only with `to_master`. Calls to the master move the fencing
    /// deadline.
    async fn assign(
        &mut self,
        record: &GroupRecord,
        members: &[Member],
        to_master: bool,
        timing: &RoundTiming,
        now: &(impl Fn() -> Monotonic + Sync),
    ) {
        let Some(master) = record.master else {
            return;
        };
        let master_address = members
            .iter()
            .find(|m| m.member == master)
            .map(|m| m.endpoint.address.clone())
            .unwrap_or_default();
        let lease_ms = timing.election.lease.as_millis() as u64;
        let calls = members
            .iter()
            .filter(|m| to_master || m.member != master)
            .map(|m| {
                let role = if m.member == master {
                    pb::ReplicaRole::Master
                } else {
                    pb::ReplicaRole::Replica
                };
                let request = pb::AssignRoleRequest {
                    group: self.group,
                    epoch: record.epoch,
                    role: role as i32,
                    master_member: master,
                    master_address: master_address.clone(),
                    in_sync: record.in_sync.clone(),
                    lease_ms,
                    group_size: self.size,
                    in_sync_version: record.in_sync_version,
                    master_store: record.master_store.unwrap_or(0),
                };
                let pool = self.pool.clone();
                async move {
                    let answer = pool
                        .assign_role(&m.endpoint.address, request, timing.call_timeout)
                        .await;
                    (m.member, answer, now())
                }
            });
        for (member, answer, ended) in join_all(calls).await {
            if member == master
                && let Some(contact) = self.contact.as_mut()
            {
                contact.renewals.attempt_ended(ended, answer.is_ok());
            }
            match answer {
                Ok(state) => {
                    self.reports.insert(member, report(&state));
                }
                Err(e) => {
                    tracing::debug!(group = self.group, member, error = %e, "AssignRole failed");
                }
            }
        }
    }
}

/// A member's answer (AssignRole or BrokerInfo) as the rules read it.
fn report(state: &pb::ReplicaState) -> MemberReport {
    let is_master = state.role() == pb::ReplicaRole::Master;
    MemberReport {
        is_master,
        epoch: state.epoch,
        log_end: state.log_end,
        store_id: (state.store_id != 0).then_some(state.store_id),
        proposal: (is_master && !state.proposed_in_sync.is_empty()).then(|| {
            let mut members = state.proposed_in_sync.clone();
            members.sort_unstable();
            InSyncProposal {
                members,
                based_on: state.proposal_based_on,
            }
        }),
    }
}

#[cfg(test)]
mod tests;
