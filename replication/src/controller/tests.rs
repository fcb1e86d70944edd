//! The controller rules' unit tests (member `m` reports store `100 + m`).

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
        master_store: Some(100 + u64::from(master)),
        in_sync_stores: stores(in_sync),
    }
}

/// The stores of `members` as recorded in sync: their own (`100 + m`).
fn stores(members: &[MemberId]) -> BTreeMap<MemberId, u64> {
    members.iter().map(|&m| (m, 100 + u64::from(m))).collect()
}

/// Member 0 is the recorded master in these tests.
fn view(member: MemberId, ready: bool, log_end: u64) -> MemberView {
    let report = MemberReport {
        is_master: member == 0,
        epoch: 3,
        log_end,
        proposal: None,
        store_id: Some(100 + u64::from(member)),
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
        store_id: Some(100),
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
        in_sync_stores: stores(&[0, 1]),
        ..record(0, &[0, 1, 2])
    };
    assert_eq!(decision, Decision::Record(expected));
}

#[test]
fn stale_or_foreign_proposals_are_rejected() {
    let proposal = |members: Vec<MemberId>, based_on| MemberReport {
        is_master: true,
        epoch: 3,
        log_end: 10,
        proposal: Some(InSyncProposal { members, based_on }),
        store_id: Some(100),
    };
    let current = record(0, &[0, 1, 2]);
    let members = [view(0, true, 10), view(1, true, 10), view(2, true, 10)];
    assert_eq!(
        validate_proposal(&current, &members, Some(&proposal(vec![0, 1], 8))),
        Err(ProposalRejected::StaleVersion {
            based_on: 8,
            current: 9
        })
    );
    assert_eq!(
        validate_proposal(&current, &members, Some(&proposal(vec![1, 2], 9))),
        Err(ProposalRejected::MissingMaster)
    );
    assert_eq!(
        validate_proposal(&current, &members, Some(&proposal(vec![0, 3], 9))),
        Err(ProposalRejected::UnknownMember(3))
    );
    assert_eq!(
        validate_proposal(&current, &members, Some(&proposal(vec![0, 1, 2], 9))),
        Err(ProposalRejected::Unchanged)
    );
    let mut old_epoch = proposal(vec![0, 1], 9);
    old_epoch.epoch = 2;
    assert_eq!(
        validate_proposal(&current, &members, Some(&old_epoch)),
        Err(ProposalRejected::NotCurrentMaster)
    );
    assert_eq!(
        validate_proposal(&current, &members, None),
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
        master_store: Some(102),
        in_sync_stores: stores(&[1, 2]),
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
        master_store: Some(100),
        in_sync_stores: stores(&[0, 1, 2]),
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
        store_id: Some(100),
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
        master_store: Some(101),
        in_sync_stores: stores(&[1, 2]),
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
    let contact = MasterContact::succeeding(Some(&previous), ms(5100), TIMING.lease, TIMING.margin);
    let next = GroupRecord {
        master: Some(1),
        epoch: 4,
        in_sync: vec![1, 2],
        in_sync_version: 10,
        master_store: Some(101),
        in_sync_stores: stores(&[1, 2]),
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
        master_store: Some(101),
        in_sync_stores: stores(&[1, 2]),
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

/// What a member that lost its volume reports after its restart, from a
/// release without store identities: only the epoch tells.
fn empty_report() -> Option<MemberReport> {
    Some(MemberReport {
        is_master: false,
        epoch: 0,
        log_end: 0,
        proposal: None,
        store_id: None,
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
        master_store: Some(101),
        in_sync_stores: stores(&[1, 2]),
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
        master_store: Some(101),
        in_sync_stores: stores(&[1, 2]),
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
            master_store: Some(102),
            in_sync_stores: stores(&[2]),
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

/// The master of epoch 1 lost its volume: it restarted empty, on a new
/// store, and reports nothing of the group yet.
fn first_epoch(master_store: Option<u64>) -> GroupRecord {
    GroupRecord {
        master: Some(0),
        epoch: 1,
        in_sync: vec![0, 1, 2],
        in_sync_version: 1,
        in_sync_stores: match master_store {
            Some(_) => stores(&[0, 1, 2]),
            None => BTreeMap::new(),
        },
        master_store,
    }
}

#[test]
fn a_master_on_another_store_is_not_renewed_and_elected_away_after_the_fence() {
    let mut members = [view(0, true, 0), view(1, true, 400), view(2, true, 405)];
    for member in &mut members {
        member.report.as_mut().unwrap().epoch = 1;
    }
    members[0].report = Some(MemberReport {
        is_master: false,
        epoch: 0,
        log_end: 0,
        proposal: None,
        store_id: Some(999),
    });
    let contact = renewed_at(ms(5000));
    let current = first_epoch(Some(100));
    assert_eq!(
        decide(&current, &members, &contact, &TIMING, ms(5100)),
        Decision::Fence { elect_at: ms(6200) },
        "not renewed: its empty log would make the replicas cut epoch 1"
    );
    assert_eq!(
        decide(&current, &members, &contact, &TIMING, ms(6200)),
        Decision::Elect(GroupRecord {
            master: Some(2),
            epoch: 2,
            in_sync: vec![1, 2],
            in_sync_version: 2,
            master_store: Some(102),
            in_sync_stores: stores(&[1, 2]),
        })
    );
    members[1].ready = false;
    members[2].ready = false;
    members[0].report.as_mut().unwrap().epoch = 1;
    assert_eq!(
        decide(&current, &members, &contact, &TIMING, ms(6200)),
        Decision::Fence { elect_at: ms(6200) },
        "alone, it is not re-elected even with an epoch: wait for a member with the log"
    );
}

#[test]
fn a_master_without_a_report_is_renewed_with_the_recorded_store() {
    // Right after its restart the controller has no report: it renews blind,
    // and the AssignRole carries `master_store` for the member to check.
    let mut members = [view(0, true, 0), view(1, true, 400), view(2, true, 405)];
    members[0].report = None;
    let contact = renewed_at(ms(5000));
    assert_eq!(
        decide(
            &first_epoch(Some(100)),
            &members,
            &contact,
            &TIMING,
            ms(5100)
        ),
        Decision::Renew
    );
}

#[test]
fn an_acting_master_under_a_record_without_a_store_gets_it_recorded() {
    let mut members = [view(0, true, 10), view(1, true, 10), view(2, true, 10)];
    members[0].report.as_mut().unwrap().epoch = 1;
    let contact = renewed_at(ms(5000));
    assert_eq!(
        decide(&first_epoch(None), &members, &contact, &TIMING, ms(5100)),
        Decision::Record(GroupRecord {
            in_sync_version: 2,
            ..first_epoch(Some(100))
        })
    );
    for member in &mut members {
        member.report.as_mut().unwrap().store_id = None;
    }
    assert_eq!(
        decide(&first_epoch(None), &members, &contact, &TIMING, ms(5100)),
        Decision::Renew,
        "a release that reports no identity: nothing to record"
    );
    members[0].report.as_mut().unwrap().is_master = false;
    for (m, member) in members.iter_mut().enumerate() {
        member.report.as_mut().unwrap().store_id = Some(100 + m as u64);
    }
    assert_eq!(
        elect(&first_epoch(None), &members).map(|next| next.master_store),
        Some(Some(101)),
        "an election records the candidate's store"
    );
    members[1].report = None;
    members[2].report = None;
    assert_eq!(
        elect(&first_epoch(None), &members),
        None,
        "a member that has not reported is not elected: its store is unknown"
    );
    let reelected = reelect(&first_epoch(Some(100)));
    assert_eq!(reelected.master_store, Some(100));
}

#[test]
fn a_replica_on_a_replaced_store_is_not_elected() {
    // Member 1 came back empty on a new volume: the master has not proposed
    // it out yet, then the master and member 2 failed.
    let mut members = [view(0, false, 10), view(1, true, 0), view(2, false, 10)];
    members[1].report.as_mut().unwrap().store_id = Some(901);
    let current = record(0, &[0, 1, 2]);
    assert_eq!(elect(&current, &members), None);
    assert_eq!(
        decide(&current, &members, &renewed_at(ms(0)), &TIMING, ms(9000)),
        Decision::NoCandidate,
        "wait for a member with the log"
    );
    members[2].ready = true;
    let elected = elect(&current, &members).unwrap();
    assert_eq!(elected.master, Some(2));
    assert_eq!(
        elected.in_sync_stores,
        stores(&[1, 2]),
        "member 1 keeps the store it was in sync on"
    );
    members[2].ready = false;
    members[1].report.as_mut().unwrap().store_id = Some(101);
    assert_eq!(
        elect(&current, &members).map(|next| next.master),
        Some(Some(1)),
        "on the same store it holds what it held"
    );
}

#[test]
fn recorded_stores_are_kept_and_new_members_take_their_reported_one() {
    let proposal = |members: Vec<MemberId>| MemberReport {
        is_master: true,
        epoch: 3,
        log_end: 10,
        proposal: Some(InSyncProposal {
            members,
            based_on: 9,
        }),
        store_id: Some(100),
    };
    let mut members = [view(0, true, 10), view(1, true, 10), view(2, true, 10)];
    members[1].report.as_mut().unwrap().store_id = Some(901);
    let next = validate_proposal(
        &record(0, &[0, 1]),
        &members,
        Some(&proposal(vec![0, 1, 2])),
    );
    assert_eq!(next.unwrap().in_sync_stores, stores(&[0, 1, 2]));
    let before_stores = GroupRecord {
        in_sync_stores: BTreeMap::new(),
        ..record(0, &[0, 1])
    };
    members[1].report.as_mut().unwrap().store_id = Some(101);
    members[2].report = None;
    let next = validate_proposal(&before_stores, &members, Some(&proposal(vec![0, 1, 2])));
    assert_eq!(
        next.unwrap().in_sync_stores,
        stores(&[0, 1]),
        "a member that has not reported is recorded unchecked"
    );
}

#[test]
fn an_acting_master_gets_its_in_sync_members_stores_recorded() {
    let members = [view(0, true, 10), view(1, true, 10), view(2, true, 10)];
    let before_stores = GroupRecord {
        in_sync_stores: BTreeMap::new(),
        ..record(0, &[0, 1])
    };
    assert_eq!(
        decide(
            &before_stores,
            &members,
            &renewed_at(ms(5000)),
            &TIMING,
            ms(5100)
        ),
        Decision::Record(GroupRecord {
            in_sync_version: 10,
            ..record(0, &[0, 1])
        })
    );
}
