//! The controller's rules for one group (the operator runs them): keep the
//! record `{master, epoch, in-sync set}` true, record the master's in-sync
//! proposals, and elect a new master when the current one failed — never
//! before its lease has surely lapsed, and only among members that hold every
//! acknowledged message (the recorded in-sync set).
//!
//! The record also names the data directory (store identity) the master was
//! elected on, and every AssignRole carries it: a master whose volume was
//! replaced comes back empty with another identity, refuses to be master
//! (even before it reported anything: right after its restart the controller
//! renews it blind) and is elected away, instead of making the replicas cut
//! the messages it lost.
//!
//! The record also names the store each in-sync member was in sync on: a
//! replica whose volume was replaced comes back empty with another identity
//! and stays in the recorded set until the master proposes it out; if the
//! master and the others fail in that window, electing it would lose every
//! acknowledged message, so [`elect`] skips it.
//!
//! The record lives in the API server and every write is a compare-and-swap;
//! these functions only say what to write.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::acks::InSyncProposal;
use crate::lease::FenceDeadline;
use crate::{MemberId, Monotonic};

/// The controller's record of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    /// `None` until the first election.
    pub master: Option<MemberId>,
    /// Bumped by every election; 0 before the first.
    pub epoch: u64,
    /// Members holding every acknowledged message, sorted, master included.
    pub in_sync: Vec<MemberId>,
    /// Bumped by every write of the record (elections included): the master
    /// applies only newer versions and bases its proposals on one.
    pub in_sync_version: u64,
    /// The store identity of `master`'s data directory, from its report when
    /// it was elected; `None` in records written before identities (or
    /// electing a release that reports none) until the master reports one
    /// while acting ([`Decision::Record`] adds it then).
    pub master_store: Option<u64>,
    /// The store identity each member of `in_sync` had when the controller
    /// recorded it in sync (the master's included): a member reporting
    /// another one lost what it held and is not elected. A member without an
    /// entry (a record written before these, or a member that had not
    /// reported an identity) is not checked.
    pub in_sync_stores: BTreeMap<MemberId, u64>,
}

impl GroupRecord {
    /// A new group: no master yet, every (empty) member in sync.
    pub fn initial(group_size: u32) -> Self {
        Self {
            master: None,
            epoch: 0,
            in_sync: (0..group_size).collect(),
            in_sync_version: 0,
            master_store: None,
            in_sync_stores: BTreeMap::new(),
        }
    }
}

/// What a member said about itself in its last AssignRole reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberReport {
    /// It acts as master (of `epoch`).
    pub is_master: bool,
    pub epoch: u64,
    pub log_end: u64,
    /// Master only: the in-sync set it wants recorded.
    pub proposal: Option<InSyncProposal>,
    /// Its store identity (`None`: a release that reports none).
    pub store_id: Option<u64>,
}

/// The controller's view of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member: MemberId,
    /// Its pod is ready (the kubelet's view, no clock compared).
    pub ready: bool,
    /// Its last reply, if any since this controller started.
    pub report: Option<MemberReport>,
}

/// This controller's renewals of the recorded master, on its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterContact {
    /// When this controller started dealing with this master (it became
    /// leader, or the record named it): a master never renewed since is
    /// failed after one lease.
    pub since: Monotonic,
    /// The end of the last AssignRole that the master answered.
    pub last_success_end: Option<Monotonic>,
    /// The end of the last AssignRole attempt to the master, answered or not.
    pub fence: FenceDeadline,
    /// The previous master's fencing deadline: this one is not promoted
    /// before it (a record written late by a timed-out compare-and-swap, or
    /// by another controller, must not end a lease this controller granted).
    pub promote_not_before: Option<Monotonic>,
    /// This controller sent a record replacing this master and does not know
    /// whether it was written (the call failed or timed out): it may still
    /// land, so the master gets no new lease, which could outlive the
    /// election ([`MasterContact::replacement_attempted`]).
    pub replacement_pending: bool,
    /// This controller wrote the election naming this master and the master
    /// has not answered an AssignRole since: a report of an older epoch is
    /// the one it gave before the election, not a sign that it lost its log
    /// ([`MasterContact::election_written`]).
    pub untold_since_election: bool,
}

impl MasterContact {
    pub fn new(since: Monotonic) -> Self {
        Self {
            since,
            last_success_end: None,
            fence: FenceDeadline::default(),
            promote_not_before: None,
            replacement_pending: false,
            untold_since_election: false,
        }
    }

    /// This controller wrote the record naming this master.
    pub fn election_written(&mut self) {
        self.untold_since_election = true;
    }

    /// A write of a record replacing this master ended without an answer
    /// (a conflict is an answer: nothing was written).
    pub fn replacement_attempted(&mut self) {
        self.replacement_pending = true;
    }

    /// The contact with the master a new record names, after `previous` (the
    /// contact with the master before it, if this controller had one). If
    /// `previous` had a replacement pending, the record is taken as that
    /// replacement, written late.
    pub fn succeeding(
        previous: Option<&MasterContact>,
        now: Monotonic,
        lease: Duration,
        margin: Duration,
    ) -> Self {
        Self {
            promote_not_before: previous.and_then(|p| p.fence.deadline(lease, margin)),
            untold_since_election: previous.is_some_and(|p| p.replacement_pending),
            ..Self::new(now)
        }
    }

    /// An AssignRole call to the master ended at `at`, `answered` or not.
    pub fn attempt_ended(&mut self, at: Monotonic, answered: bool) {
        self.fence.attempt_ended(at);
        if answered {
            self.untold_since_election = false;
            self.last_success_end = Some(self.last_success_end.map_or(at, |last| last.max(at)));
        }
    }

    /// The master's lease, as granted by this controller, has lapsed (or, if
    /// it was never granted one, it did not answer within a lease of
    /// `not_before`).
    pub fn lapsed(&self, now: Monotonic, lease: Duration) -> bool {
        now >= self.last_success_end.unwrap_or(self.since) + lease
    }
}

/// Lease timing of the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTiming {
    /// When this controller became leader.
    pub leader_since: Monotonic,
    /// The lease granted with each AssignRole.
    pub lease: Duration,
    /// Added to every deadline, for clock rate differences and scheduling.
    pub margin: Duration,
}

impl ElectionTiming {
    /// A new leader does not know when its predecessor last renewed a master:
    /// no election before one full lease (and margin) after it took over.
    pub fn not_before(&self) -> Monotonic {
        self.leader_since + self.lease + self.margin
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The master is healthy (or due to be promoted): send the record
    /// (AssignRole) to every member.
    Renew,
    /// Compare-and-swap this record (the master's in-sync proposal, or the
    /// store identities of an acting master and its in-sync members that a
    /// record written before them lacked), then renew.
    Record(GroupRecord),
    /// Do not send the recorded master AssignRole before `elect_at` (each
    /// attempt would move its fencing deadline, and promoting it earlier
    /// could overlap a lease still held by its predecessor); keep assigning
    /// the others and reading the master's state (BrokerInfo), and decide
    /// again then.
    Fence { elect_at: Monotonic },
    /// Compare-and-swap this record (new master, next epoch), then assign
    /// every member its role.
    Elect(GroupRecord),
    /// The master failed and no other in-sync member is alive (or has
    /// reported): keep renewing everyone (the master may come back), read
    /// the state of members that have not reported, and wait. (While a
    /// replacement is pending, `Fence` instead: the master is not renewed.)
    NoCandidate,
}

/// Where the recorded master stands, from its last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MasterStatus {
    /// It acts as master of the recorded epoch.
    Acting,
    /// No report of the recorded epoch yet: assigning it would promote it.
    /// Also a master that restarted and has not reported since: if it came
    /// back on an empty volume, the AssignRole carries the recorded store
    /// identity and it refuses (`RefuseMasterOfReplacedStore`) instead of
    /// becoming master; its next report shows it `Replaced`.
    NotPromoted,
    /// It knows the epoch but does not act as its master (it restarted).
    Refused,
    /// It reports an older epoch than recorded, and not because this
    /// controller elected it and has not told it yet: it may have lost its
    /// volume, and as master it would make the replicas cut acknowledged
    /// messages. Not renewed; re-elected only if it reports some history.
    Behind,
    /// It runs on another data directory than the record's: its volume was
    /// replaced and it lost the epoch's messages. Like `Behind`, but never
    /// re-elected (its history, if any, is not the group's).
    Replaced,
}

fn master_status(
    record: &GroupRecord,
    report: Option<&MemberReport>,
    contact: &MasterContact,
) -> MasterStatus {
    match report {
        Some(report)
            if record
                .master_store
                .zip(report.store_id)
                .is_some_and(|(recorded, own)| recorded != own) =>
        {
            MasterStatus::Replaced
        }
        Some(report) if report.is_master && report.epoch == record.epoch => MasterStatus::Acting,
        Some(report) if report.epoch >= record.epoch => MasterStatus::Refused,
        Some(_) if !contact.untold_since_election => MasterStatus::Behind,
        _ => MasterStatus::NotPromoted,
    }
}

/// Why a master's proposal is not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalRejected {
    #[error("the proposing member is not the recorded master of the current epoch")]
    NotCurrentMaster,
    #[error("the proposal is based on in-sync version {based_on}, the record is at {current}")]
    StaleVersion { based_on: u64, current: u64 },
    #[error("the proposal leaves out the master")]
    MissingMaster,
    #[error("the proposal names member {0}, outside the group")]
    UnknownMember(MemberId),
    #[error("the proposal equals the recorded in-sync set")]
    Unchanged,
    #[error("no proposal")]
    Absent,
}

/// The next step for one group. `members` holds every member of the group;
/// `contact` is this controller's contact with the recorded master.
pub fn decide(
    record: &GroupRecord,
    members: &[MemberView],
    contact: &MasterContact,
    timing: &ElectionTiming,
    now: Monotonic,
) -> Decision {
    let Some(master) = record.master else {
        return elect(record, members).map_or(Decision::NoCandidate, Decision::Elect);
    };
    let view = members.iter().find(|view| view.member == master);
    let ready = view.is_some_and(|view| view.ready);
    let report = view.and_then(|view| view.report.as_ref());
    let status = master_status(record, report, contact);
    let promote_at = contact
        .promote_not_before
        .map_or(timing.not_before(), |at| at.max(timing.not_before()));
    let healthy = !contact.replacement_pending
        && match status {
            MasterStatus::Acting => ready && !contact.lapsed(now, timing.lease),
            MasterStatus::NotPromoted if now < promote_at => {
                return Decision::Fence {
                    elect_at: promote_at,
                };
            }
            MasterStatus::NotPromoted => {
                let since = contact
                    .last_success_end
                    .unwrap_or(contact.since)
                    .max(promote_at);
                ready && now < since + timing.lease
            }
            MasterStatus::Refused | MasterStatus::Behind | MasterStatus::Replaced => false,
        };
    if healthy {
        if let Some(next) = adopt_stores(record, members, report, status) {
            return Decision::Record(next);
        }
        return match validate_proposal(record, members, report) {
            Ok(next) => Decision::Record(next),
            Err(_) => Decision::Renew,
        };
    }
    let elect_at = contact
        .fence
        .deadline(timing.lease, timing.margin)
        .map_or(promote_at, |deadline| deadline.max(promote_at));
    if now < elect_at {
        return Decision::Fence { elect_at };
    }
    match elect(record, members) {
        Some(next) => Decision::Elect(next),
        None if ready && status == MasterStatus::Refused => Decision::Elect(reelect(record)),
        // An empty member must not become master: wait for one with the log.
        None if ready && status == MasterStatus::Behind && report.is_some_and(|r| r.epoch > 0) => {
            Decision::Elect(reelect(record))
        }
        None if matches!(status, MasterStatus::Behind | MasterStatus::Replaced) => {
            Decision::Fence { elect_at: now }
        }
        // Renewing the master could overlap the pending election: try again.
        None if contact.replacement_pending => Decision::Fence { elect_at: now },
        None => Decision::NoCandidate,
    }
}

/// A record written before store identities (or electing a member of a
/// release that reports none) names no master store: the first time the
/// master reports one while acting in the recorded epoch, it is recorded (a
/// compare-and-swap like a proposal's, bumping the version like every write;
/// the master of the epoch holds the epoch's log, so its identity is the one
/// to keep). Until then AssignRole carries none and the member cannot check
/// it; the followers' guard against cutting records of the master's own
/// epoch still holds. In-sync members without a recorded store get their
/// reported one the same way, so an upgraded group does not wait for its
/// next election or proposal to be checked.
fn adopt_stores(
    record: &GroupRecord,
    members: &[MemberView],
    report: Option<&MemberReport>,
    status: MasterStatus,
) -> Option<GroupRecord> {
    if status != MasterStatus::Acting {
        return None;
    }
    let master_store = record.master_store.or(report?.store_id);
    let in_sync_stores = recorded_stores(record, &record.in_sync, members);
    if master_store == record.master_store && in_sync_stores == record.in_sync_stores {
        return None;
    }
    Some(GroupRecord {
        master_store,
        in_sync_stores,
        in_sync_version: record.in_sync_version + 1,
        ..record.clone()
    })
}

/// The store identities to record for `in_sync`. A member keeps the one
/// already recorded for it: it was in sync on that directory, and its
/// current report may come from a replacement the master has not proposed
/// out yet (overwriting it would make the empty member eligible). A member
/// without one takes its reported identity, or none (unchecked).
fn recorded_stores(
    record: &GroupRecord,
    in_sync: &[MemberId],
    members: &[MemberView],
) -> BTreeMap<MemberId, u64> {
    in_sync
        .iter()
        .filter_map(|&member| {
            let reported = || {
                let view = members.iter().find(|view| view.member == member)?;
                view.report.as_ref()?.store_id
            };
            let store = record.in_sync_stores.get(&member).copied();
            Some((member, store.or_else(reported)?))
        })
        .collect()
}

/// `member` reports another store than the one it was recorded in sync on:
/// its volume was replaced and it may hold nothing.
fn store_replaced(record: &GroupRecord, member: MemberId, report: &MemberReport) -> bool {
    record
        .in_sync_stores
        .get(&member)
        .zip(report.store_id)
        .is_some_and(|(&recorded, own)| recorded != own)
}

/// The record that makes the recorded master master again in a new epoch: for
/// a ready master that refused to resume its epoch after a restart,
/// when no other in-sync member is alive (it holds every acknowledged
/// message: it was in sync). It keeps the recorded store identities: the
/// member must still run on that data directory, and the in-sync set does
/// not change.
pub fn reelect(record: &GroupRecord) -> GroupRecord {
    GroupRecord {
        epoch: record.epoch + 1,
        in_sync_version: record.in_sync_version + 1,
        ..record.clone()
    }
}

/// The election rule alone: among alive (ready) members of the recorded
/// in-sync set other than the failed master that have reported, one
/// reporting the recorded epoch (a member that restarted without its volume
/// reports less until it is assigned a role), then the largest reported log
/// end, then the lowest member; the record it becomes master of has the next
/// epoch, the in-sync set without the old master and the candidate's
/// reported store identity (none from a release that reports none). Callers
/// must have waited for the fencing deadline ([`decide`] does).
///
/// A member reporting another store than the one it was recorded in sync on
/// is not a candidate: its volume was replaced, and until the master
/// proposes it out it is in the set without the messages.
///
/// Only reported members: a master acknowledges writes from its promotion
/// on, so the record must name its store by then, or a restart on an empty
/// volume could make it master of the same epoch again (the seeded
/// simulation found this with a first election taken before any report).
/// While no member reported, the controller reads their state.
pub fn elect(record: &GroupRecord, members: &[MemberView]) -> Option<GroupRecord> {
    let candidate = members
        .iter()
        .filter(|view| view.ready)
        .filter(|view| record.in_sync.contains(&view.member))
        .filter(|view| Some(view.member) != record.master)
        .filter_map(|view| Some((view.member, view.report.as_ref()?)))
        .filter(|&(member, report)| !store_replaced(record, member, report))
        .max_by_key(|&(member, report)| {
            let knows_epoch = report.epoch >= record.epoch;
            (knows_epoch, report.log_end, std::cmp::Reverse(member))
        })?;
    let in_sync: Vec<MemberId> = record
        .in_sync
        .iter()
        .copied()
        .filter(|&member| Some(member) != record.master)
        .collect();
    let (candidate, report) = candidate;
    Some(GroupRecord {
        master: Some(candidate),
        epoch: record.epoch + 1,
        in_sync_stores: recorded_stores(record, &in_sync, members),
        in_sync,
        in_sync_version: record.in_sync_version + 1,
        master_store: report.store_id,
    })
}

/// The record after the master's in-sync proposal, if it may be recorded:
/// it comes from the recorded master acting in the recorded epoch, is based
/// on the current version (a later record wins over an older proposal),
/// keeps the master, names only members of the group (`members` holds every
/// member) and changes the set. The new set's stores are recorded as
/// [`recorded_stores`] says.
pub fn validate_proposal(
    record: &GroupRecord,
    members: &[MemberView],
    master_report: Option<&MemberReport>,
) -> Result<GroupRecord, ProposalRejected> {
    let group_size = members.len() as u32;
    let report = master_report.ok_or(ProposalRejected::Absent)?;
    let proposal = report.proposal.as_ref().ok_or(ProposalRejected::Absent)?;
    if !report.is_master || report.epoch != record.epoch {
        return Err(ProposalRejected::NotCurrentMaster);
    }
    if proposal.based_on != record.in_sync_version {
        return Err(ProposalRejected::StaleVersion {
            based_on: proposal.based_on,
            current: record.in_sync_version,
        });
    }
    let Some(master) = record.master else {
        return Err(ProposalRejected::NotCurrentMaster);
    };
    if !proposal.members.contains(&master) {
        return Err(ProposalRejected::MissingMaster);
    }
    if let Some(&outside) = proposal.members.iter().find(|&&m| m >= group_size) {
        return Err(ProposalRejected::UnknownMember(outside));
    }
    let mut in_sync = proposal.members.clone();
    in_sync.sort_unstable();
    in_sync.dedup();
    if in_sync == record.in_sync {
        return Err(ProposalRejected::Unchanged);
    }
    Ok(GroupRecord {
        in_sync_stores: recorded_stores(record, &in_sync, members),
        in_sync,
        in_sync_version: record.in_sync_version + 1,
        ..record.clone()
    })
}

#[cfg(test)]
mod tests;
