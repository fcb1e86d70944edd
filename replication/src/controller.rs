//! The controller's rules for one group (the operator runs them): keep the
//! record `{master, epoch, in-sync set}` true, record the master's in-sync
//! proposals, and elect a new master when the current one failed — never
//! before its lease has surely lapsed, and only among members that hold every
//! acknowledged message (the recorded in-sync set).
//!
//! The record lives in the API server and every write is a compare-and-swap;
//! these functions only say what to write.

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
}

impl GroupRecord {
    /// A new group: no master yet, every (empty) member in sync.
    pub fn initial(group_size: u32) -> Self {
        Self {
            master: None,
            epoch: 0,
            in_sync: (0..group_size).collect(),
            in_sync_version: 0,
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
    /// Compare-and-swap this record (the master's proposal), then renew.
    RecordInSync(GroupRecord),
    /// Do not send the recorded master AssignRole before `elect_at` (each
    /// attempt would move its fencing deadline, and promoting it earlier
    /// could overlap a lease still held by its predecessor); keep assigning
    /// the others and reading the master's state (BrokerInfo), and decide
    /// again then.
    Fence { elect_at: Monotonic },
    /// Compare-and-swap this record (new master, next epoch), then assign
    /// every member its role.
    Elect(GroupRecord),
    /// The master failed and no other in-sync member is alive: keep renewing
    /// everyone (the master may come back) and wait. (While a replacement is
    /// pending, `Fence` instead: the master is not renewed.)
    NoCandidate,
}

/// Where the recorded master stands, from its last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MasterStatus {
    /// It acts as master of the recorded epoch.
    Acting,
    /// No report of the recorded epoch yet: assigning it would promote it.
    NotPromoted,
    /// It knows the epoch but does not act as its master (it restarted).
    Refused,
    /// It reports an older epoch than recorded, and not because this
    /// controller elected it and has not told it yet: it may have lost its
    /// volume, and as master it would make the replicas cut acknowledged
    /// messages. Not renewed; re-elected only if it reports some history.
    Behind,
}

fn master_status(
    record: &GroupRecord,
    report: Option<&MemberReport>,
    contact: &MasterContact,
) -> MasterStatus {
    match report {
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
            MasterStatus::Refused | MasterStatus::Behind => false,
        };
    if healthy {
        let group_size = members.len() as u32;
        return match validate_proposal(record, report, group_size) {
            Ok(next) => Decision::RecordInSync(next),
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
        None if status == MasterStatus::Behind => Decision::Fence { elect_at: now },
        // Renewing the master could overlap the pending election: try again.
        None if contact.replacement_pending => Decision::Fence { elect_at: now },
        None => Decision::NoCandidate,
    }
}

/// The record that makes the recorded master master again in a new epoch: for
/// a ready master that refused to resume its epoch after a restart,
/// when no other in-sync member is alive (it holds every acknowledged
/// message: it was in sync).
pub fn reelect(record: &GroupRecord) -> GroupRecord {
    GroupRecord {
        epoch: record.epoch + 1,
        in_sync_version: record.in_sync_version + 1,
        ..record.clone()
    }
}

/// The election rule alone: among alive (ready) members of the recorded
/// in-sync set other than the failed master, one reporting the recorded
/// epoch (a member that restarted without its volume reports less until it
/// is assigned a role), then the largest reported log end, then the lowest
/// member; the record it becomes master of
/// has the next epoch and the in-sync set without the old master. Callers
/// must have waited for the fencing deadline ([`decide`] does).
pub fn elect(record: &GroupRecord, members: &[MemberView]) -> Option<GroupRecord> {
    let candidate = members
        .iter()
        .filter(|view| view.ready)
        .filter(|view| record.in_sync.contains(&view.member))
        .filter(|view| Some(view.member) != record.master)
        .max_by_key(|view| {
            let report = view.report.as_ref();
            let knows_epoch = report.is_some_and(|report| report.epoch >= record.epoch);
            let log_end = report.map_or(0, |report| report.log_end);
            (knows_epoch, log_end, std::cmp::Reverse(view.member))
        })?;
    let in_sync = record
        .in_sync
        .iter()
        .copied()
        .filter(|&member| Some(member) != record.master)
        .collect();
    Some(GroupRecord {
        master: Some(candidate.member),
        epoch: record.epoch + 1,
        in_sync,
        in_sync_version: record.in_sync_version + 1,
    })
}

/// The record after the master's in-sync proposal, if it may be recorded:
/// it comes from the recorded master acting in the recorded epoch, is based
/// on the current version (a later record wins over an older proposal),
/// keeps the master, names only members of the group and changes the set.
pub fn validate_proposal(
    record: &GroupRecord,
    master_report: Option<&MemberReport>,
    group_size: u32,
) -> Result<GroupRecord, ProposalRejected> {
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
        in_sync,
        in_sync_version: record.in_sync_version + 1,
        ..record.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const TIMING: ElectionTiming = ElectionTiming {
        leader_since: ms(0),
        lease: ms(1000),
        margin: ms(200),
    };

    fn record(master: MemberId, in_sync: &[MemberId]) -> GroupRecord {
        GroupRecord {
            master: Some(master),
            epoch: 3,
            in_sync: in_sync.to_vec(),
            in_sync_version: 9,
        }
    }

    /// Member 0 is the recorded master in these tests.
    fn view(member: MemberId, ready: bool, log_end: u64) -> MemberView {
        let report = MemberReport {
            is_master: member == 0,
            epoch: 3,
            log_end,
            proposal: None,
        };
        MemberView {
            member,
            ready,
            report: Some(report),
        }
    }

    fn renewed_at(at: Monotonic) -> MasterContact {
        let mut contact = MasterContact::new(ms(0));
        contact.attempt_ended(at, true);
        contact
    }

    #[test]
    fn a_healthy_master_is_renewed() {
        let members = [view(0, true, 10), view(1, true, 10), view(2, true, 10)];
        let decision = decide(
            &record(0, &[0, 1, 2]),
            &members,
            &renewed_at(ms(5000)),
            &TIMING,
            ms(5500),
        );
        assert_eq!(decision, Decision::Renew);
    }

    #[test]
    fn a_current_proposal_is_recorded_with_the_next_version() {
        let mut members = [view(0, true, 10), view(1, true, 10), view(2, true, 3)];
        members[0].report = Some(MemberReport {
            is_master: true,
            epoch: 3,
            log_end: 10,
            proposal: Some(InSyncProposal {
                members: vec![1, 0],
                based_on: 9,
            }),
        });
        let decision = decide(
            &record(0, &[0, 1, 2]),
            &members,
            &renewed_at(ms(5000)),
            &TIMING,
            ms(5500),
        );
        let expected = GroupRecord {
            in_sync: vec![0, 1],
            in_sync_version: 10,
            ..record(0, &[0, 1, 2])
        };
        assert_eq!(decision, Decision::RecordInSync(expected));
    }

    #[test]
    fn stale_or_foreign_proposals_are_rejected() {
        let proposal = |members: Vec<MemberId>, based_on| MemberReport {
            is_master: true,
            epoch: 3,
            log_end: 10,
            proposal: Some(InSyncProposal { members, based_on }),
        };
        let current = record(0, &[0, 1, 2]);
        assert_eq!(
            validate_proposal(&current, Some(&proposal(vec![0, 1], 8)), 3),
            Err(ProposalRejected::StaleVersion {
                based_on: 8,
                current: 9
            })
        );
        assert_eq!(
            validate_proposal(&current, Some(&proposal(vec![1, 2], 9)), 3),
            Err(ProposalRejected::MissingMaster)
        );
        assert_eq!(
            validate_proposal(&current, Some(&proposal(vec![0, 3], 9)), 3),
            Err(ProposalRejected::UnknownMember(3))
        );
        assert_eq!(
            validate_proposal(&current, Some(&proposal(vec![0, 1, 2], 9)), 3),
            Err(ProposalRejected::Unchanged)
        );
        let mut old_epoch = proposal(vec![0, 1], 9);
        old_epoch.epoch = 2;
        assert_eq!(
            validate_proposal(&current, Some(&old_epoch), 3),
            Err(ProposalRejected::NotCurrentMaster)
        );
        assert_eq!(
            validate_proposal(&current, None, 3),
            Err(ProposalRejected::Absent)
        );
    }

    #[test]
    fn a_failed_master_is_fenced_until_its_lease_surely_lapsed() {
        let members = [view(0, false, 10), view(1, true, 8), view(2, true, 9)];
        let contact = renewed_at(ms(5000));
        let current = record(0, &[0, 1, 2]);
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(5100)),
            Decision::Fence { elect_at: ms(6200) }
        );
        let elected = GroupRecord {
            master: Some(2),
            epoch: 4,
            in_sync: vec![1, 2],
            in_sync_version: 10,
        };
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(6200)),
            Decision::Elect(elected)
        );
    }

    #[test]
    fn an_unanswered_attempt_moves_the_deadline() {
        let members = [view(0, true, 10), view(1, true, 8), view(2, true, 9)];
        let mut contact = renewed_at(ms(5000));
        contact.attempt_ended(ms(5900), false);
        assert_eq!(
            decide(
                &record(0, &[0, 1, 2]),
                &members,
                &contact,
                &TIMING,
                ms(6000)
            ),
            Decision::Fence { elect_at: ms(7100) },
            "ready, but not renewed for a lease"
        );
    }

    #[test]
    fn a_new_leader_waits_one_full_lease() {
        let members = [view(0, false, 10), view(1, true, 8), view(2, true, 9)];
        let timing = ElectionTiming {
            leader_since: ms(4000),
            ..TIMING
        };
        let contact = MasterContact::new(ms(4000));
        assert_eq!(
            decide(
                &record(0, &[0, 1, 2]),
                &members,
                &contact,
                &timing,
                ms(4100)
            ),
            Decision::Fence { elect_at: ms(5200) }
        );
    }

    #[test]
    fn only_alive_in_sync_members_are_elected() {
        let members = [view(0, false, 10), view(1, false, 8), view(2, true, 12)];
        let current = record(0, &[0, 1]);
        assert_eq!(elect(&current, &members), None);
        assert_eq!(
            decide(&current, &members, &renewed_at(ms(0)), &TIMING, ms(9000)),
            Decision::NoCandidate
        );
    }

    #[test]
    fn ties_go_to_the_lowest_member_and_the_first_election_keeps_everyone() {
        let members = [view(0, true, 0), view(1, true, 0), view(2, false, 0)];
        let first = decide(
            &GroupRecord::initial(3),
            &members,
            &MasterContact::new(ms(0)),
            &TIMING,
            ms(0),
        );
        let expected = GroupRecord {
            master: Some(0),
            epoch: 1,
            in_sync: vec![0, 1, 2],
            in_sync_version: 1,
        };
        assert_eq!(first, Decision::Elect(expected));
    }

    #[test]
    fn a_master_that_refused_its_epoch_is_replaced_or_reelected() {
        let mut members = [view(0, true, 10), view(1, true, 8), view(2, false, 9)];
        members[0].report = Some(MemberReport {
            is_master: false,
            epoch: 3,
            log_end: 10,
            proposal: None,
        });
        let contact = renewed_at(ms(5000));
        let current = record(0, &[0, 1, 2]);
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(5100)),
            Decision::Fence { elect_at: ms(6200) }
        );
        let replaced = GroupRecord {
            master: Some(1),
            epoch: 4,
            in_sync: vec![1, 2],
            in_sync_version: 10,
        };
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(6200)),
            Decision::Elect(replaced)
        );
        members[1].ready = false;
        let reelected = GroupRecord {
            epoch: 4,
            in_sync_version: 10,
            ..current.clone()
        };
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(6200)),
            Decision::Elect(reelected)
        );
    }

    #[test]
    fn a_master_named_late_is_promoted_only_after_its_predecessors_deadline() {
        // This controller renewed master 0 until 5000, then the record (written
        // late, e.g. by a timed-out compare-and-swap) names member 1.
        let mut previous = renewed_at(ms(5000));
        previous.replacement_attempted();
        let contact =
            MasterContact::succeeding(Some(&previous), ms(5100), TIMING.lease, TIMING.margin);
        let next = GroupRecord {
            master: Some(1),
            epoch: 4,
            in_sync: vec![1, 2],
            in_sync_version: 10,
        };
        let members = [view(0, true, 10), view(1, true, 10), view(2, true, 10)];
        assert_eq!(
            decide(&next, &members, &contact, &TIMING, ms(5100)),
            Decision::Fence { elect_at: ms(6200) }
        );
        assert_eq!(
            decide(&next, &members, &contact, &TIMING, ms(6200)),
            Decision::Renew
        );
        assert_eq!(
            decide(&next, &members, &contact, &TIMING, ms(7199)),
            Decision::Renew,
            "it has a full lease from the gate to answer"
        );
    }

    #[test]
    fn a_new_leader_renews_an_acting_master_at_once_but_holds_a_promotion() {
        let timing = ElectionTiming {
            leader_since: ms(4000),
            ..TIMING
        };
        let contact = MasterContact::new(ms(4000));
        let mut members = [view(0, true, 10), view(1, true, 10), view(2, true, 10)];
        assert_eq!(
            decide(
                &record(0, &[0, 1, 2]),
                &members,
                &contact,
                &timing,
                ms(4010)
            ),
            Decision::Renew
        );
        members[0].report = None;
        assert_eq!(
            decide(
                &record(0, &[0, 1, 2]),
                &members,
                &contact,
                &timing,
                ms(4010)
            ),
            Decision::Fence { elect_at: ms(5200) },
            "no report yet: it may not be master yet"
        );
    }

    #[test]
    fn a_master_whose_replacement_may_still_land_is_not_renewed() {
        let members = [view(0, true, 10), view(1, true, 10), view(2, false, 10)];
        let mut contact = renewed_at(ms(5000));
        contact.replacement_attempted();
        let current = record(0, &[0, 1, 2]);
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(5100)),
            Decision::Fence { elect_at: ms(6200) }
        );
        let elected = GroupRecord {
            master: Some(1),
            epoch: 4,
            in_sync: vec![1, 2],
            in_sync_version: 10,
        };
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(6200)),
            Decision::Elect(elected),
            "the election is tried again"
        );
        let alone = [view(0, true, 10), view(1, false, 10), view(2, false, 10)];
        assert_eq!(
            decide(&current, &alone, &contact, &TIMING, ms(6300)),
            Decision::Fence { elect_at: ms(6300) },
            "no candidate: still not renewed"
        );
    }

    /// What a member that lost its volume reports after its restart.
    fn empty_report() -> Option<MemberReport> {
        Some(MemberReport {
            is_master: false,
            epoch: 0,
            log_end: 0,
            proposal: None,
        })
    }

    #[test]
    fn a_master_that_lost_its_volume_is_replaced_not_renewed() {
        let mut members = [view(0, true, 10), view(1, true, 8), view(2, false, 9)];
        members[0].report = empty_report();
        let contact = renewed_at(ms(5000));
        let current = record(0, &[0, 1, 2]);
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(5100)),
            Decision::Fence { elect_at: ms(6200) }
        );
        let replaced = GroupRecord {
            master: Some(1),
            epoch: 4,
            in_sync: vec![1, 2],
            in_sync_version: 10,
        };
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(6200)),
            Decision::Elect(replaced)
        );
        members[1].ready = false;
        assert_eq!(
            decide(&current, &members, &contact, &TIMING, ms(6200)),
            Decision::Fence { elect_at: ms(6200) },
            "alone, it is neither renewed nor re-elected: wait for a member with the log"
        );
    }

    #[test]
    fn a_master_this_controller_just_elected_may_report_its_old_epoch() {
        let previous = renewed_at(ms(5000));
        let mut contact =
            MasterContact::succeeding(Some(&previous), ms(6200), TIMING.lease, TIMING.margin);
        contact.election_written();
        let next = GroupRecord {
            master: Some(1),
            epoch: 4,
            in_sync: vec![1, 2],
            in_sync_version: 10,
        };
        let members = [view(0, false, 10), view(1, true, 10), view(2, true, 10)];
        assert_eq!(
            decide(&next, &members, &contact, &TIMING, ms(6300)),
            Decision::Renew,
            "not told yet: assigning it promotes it"
        );
        contact.attempt_ended(ms(6400), true);
        assert_eq!(
            decide(&next, &members, &contact, &TIMING, ms(6500)),
            Decision::Fence { elect_at: ms(7600) },
            "it answered, yet still reports epoch 3: it lost its state since"
        );
        let by_another = MasterContact::succeeding(None, ms(6200), TIMING.lease, TIMING.margin);
        assert_eq!(
            decide(&next, &members, &by_another, &TIMING, ms(6300)),
            Decision::Elect(GroupRecord {
                master: Some(2),
                epoch: 5,
                in_sync: vec![2],
                in_sync_version: 11,
            }),
            "a record this controller did not write: an older epoch is not trusted"
        );
    }

    #[test]
    fn members_reporting_the_recorded_epoch_are_elected_first() {
        let mut members = [view(0, false, 10), view(1, true, 8), view(2, true, 9)];
        members[2].report = Some(MemberReport {
            epoch: 0,
            ..members[2].report.clone().unwrap()
        });
        let elected = elect(&record(0, &[0, 1, 2]), &members).unwrap();
        assert_eq!(elected.master, Some(1));
    }
}
