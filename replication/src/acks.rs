//! The master's quorum bookkeeping: which members it waits for before it
//! acknowledges a write, and which in-sync set it asks the controller to
//! record.
//!
//! The rule that keeps every acknowledged message on every electable member:
//! the master waits for every member of the recorded in-sync set (the one the
//! controller elects from) and for every member it proposed to add; it stops
//! waiting for a member only when it receives a recorded set without it that
//! is newer than the one its proposals were based on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::{MemberId, Monotonic};

/// An in-sync set the master wants recorded, with the version of the recorded
/// set it was computed from: the controller records it only while the record
/// still has that version (so a late proposal never overwrites a newer
/// record), and bumps the version when it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InSyncProposal {
    /// Sorted, the master included.
    pub members: Vec<MemberId>,
    pub based_on: u64,
}

/// What the master knows about one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerProgress {
    /// Everything below is stored on the follower, per its flush policy.
    pub stored_end: u64,
    /// When it last held everything the master had (its lag in time is
    /// counted from here; a silent follower ages out).
    pub caught_up_at: Monotonic,
}

#[derive(Debug, Clone)]
pub struct AckTracker {
    master: MemberId,
    min_in_sync: u32,
    recorded: BTreeSet<MemberId>,
    recorded_version: u64,
    /// Proposed for the in-sync set, not yet in a recorded set: waited for.
    joining: BTreeSet<MemberId>,
    followers: BTreeMap<MemberId, FollowerProgress>,
}

impl AckTracker {
    /// The tracker of a member that became master at `now` with the recorded
    /// in-sync set `recorded` (version `recorded_version`). Followers start as
    /// caught up at `now` and with nothing stored, so none is dropped before it
    /// had `lag_max` to report.
    pub fn new(
        master: MemberId,
        group_size: u32,
        min_in_sync: u32,
        recorded: &[MemberId],
        recorded_version: u64,
        now: Monotonic,
    ) -> Self {
        let followers = (0..group_size)
            .filter(|&member| member != master)
            .map(|member| {
                let progress = FollowerProgress {
                    stored_end: 0,
                    caught_up_at: now,
                };
                (member, progress)
            })
            .collect();
        Self {
            master,
            min_in_sync,
            recorded: recorded.iter().copied().collect(),
            recorded_version,
            joining: BTreeSet::new(),
            followers,
        }
    }

    pub fn master(&self) -> MemberId {
        self.master
    }

    pub fn min_in_sync(&self) -> u32 {
        self.min_in_sync
    }

    /// The in-sync set the controller recorded last (as received).
    pub fn recorded(&self) -> Vec<MemberId> {
        self.recorded.iter().copied().collect()
    }

    pub fn recorded_version(&self) -> u64 {
        self.recorded_version
    }

    /// Members proposed for the in-sync set and not yet recorded.
    pub fn joining(&self) -> Vec<MemberId> {
        self.joining.iter().copied().collect()
    }

    /// Every member a write must reach before it is acknowledged: the
    /// recorded in-sync set and the joining members (master included).
    pub fn waiting(&self) -> Vec<MemberId> {
        let mut waiting: BTreeSet<MemberId> = self.recorded.union(&self.joining).copied().collect();
        waiting.insert(self.master);
        waiting.into_iter().collect()
    }

    pub fn follower(&self, member: MemberId) -> Option<FollowerProgress> {
        self.followers.get(&member).copied()
    }

    pub fn followers(&self) -> impl Iterator<Item = (MemberId, FollowerProgress)> + '_ {
        self.followers
            .iter()
            .map(|(&member, &progress)| (member, progress))
    }

    /// How long ago `member` last held everything the master had.
    pub fn lag(&self, member: MemberId, now: Monotonic) -> Option<Duration> {
        self.follower(member)
            .map(|progress| now.saturating_sub(progress.caught_up_at))
    }

    /// A follower reports what it has stored, while the master's log ends at
    /// `master_end`. Only ends the master checked are a prefix of its own log
    /// count (`FollowFrom::Stream`, and the progress of that stream). A member outside the waiting set that caught up joins it
    /// at once (and is proposed), before the master appends anything more.
    pub fn follower_stored(
        &mut self,
        member: MemberId,
        stored_end: u64,
        master_end: u64,
        now: Monotonic,
    ) {
        let Some(progress) = self.followers.get_mut(&member) else {
            return;
        };
        progress.stored_end = stored_end;
        if stored_end >= master_end {
            progress.caught_up_at = now;
            if !self.recorded.contains(&member) {
                self.joining.insert(member);
            }
        }
    }

    /// The controller sent the recorded in-sync set `members` of version
    /// `version`. An older or equal version changes nothing (a reordered or
    /// repeated message); a newer one replaces the recorded set, and joining
    /// members it does not contain stop being waited for: their proposal lost
    /// to the one that made this version. Returns whether it applied.
    pub fn apply_recorded(&mut self, members: &[MemberId], version: u64) -> bool {
        if version <= self.recorded_version {
            return false;
        }
        self.recorded = members.iter().copied().collect();
        self.recorded_version = version;
        self.joining.clear();
        true
    }

    /// Everything below this may be acknowledged: stored by every member the
    /// master waits for (`master_end` is what the master itself stored). `None`
    /// while the recorded set is smaller than `min_in_sync`: nothing new may
    /// be acknowledged then. Callers keep the highest value they saw.
    pub fn committed_end(&self, master_end: u64) -> Option<u64> {
        if (self.recorded.len() as u32) < self.min_in_sync {
            return None;
        }
        let end = self
            .waiting()
            .into_iter()
            .filter(|&member| member != self.master)
            .map(|member| self.followers.get(&member).map_or(0, |p| p.stored_end))
            .fold(master_end, u64::min);
        Some(end)
    }

    /// The in-sync set to ask the controller for, if it differs from the
    /// recorded one: recorded and joining members that held the master's end
    /// within `lag_max`, and the master. Below `min_in_sync` it keeps the
    /// recorded members instead of removing them: a smaller set could not
    /// acknowledge anything either, and a larger one leaves more members to
    /// elect.
    pub fn proposal(&self, now: Monotonic, lag_max: Duration) -> Option<InSyncProposal> {
        let candidates: BTreeSet<MemberId> = self.waiting().into_iter().collect();
        let mut members: BTreeSet<MemberId> = candidates
            .iter()
            .copied()
            .filter(|&member| {
                member == self.master || self.lag(member, now).is_some_and(|lag| lag <= lag_max)
            })
            .collect();
        if (members.len() as u32) < self.min_in_sync {
            members.extend(self.recorded.iter().copied());
        }
        (members != self.recorded).then(|| InSyncProposal {
            members: members.into_iter().collect(),
            based_on: self.recorded_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const LAG_MAX: Duration = ms(500);

    fn tracker_of_three() -> AckTracker {
        AckTracker::new(0, 3, 2, &[0, 1, 2], 7, ms(0))
    }

    #[test]
    fn acknowledges_what_every_waited_member_stored() {
        let mut tracker = tracker_of_three();
        assert_eq!(tracker.committed_end(100), Some(0));
        tracker.follower_stored(1, 80, 100, ms(10));
        tracker.follower_stored(2, 60, 100, ms(10));
        assert_eq!(tracker.committed_end(100), Some(60));
        tracker.follower_stored(2, 100, 100, ms(20));
        assert_eq!(tracker.committed_end(100), Some(80));
        assert_eq!(tracker.committed_end(70), Some(70));
    }

    #[test]
    fn nothing_is_acknowledged_below_min_in_sync() {
        let mut tracker = AckTracker::new(0, 3, 2, &[0], 3, ms(0));
        tracker.follower_stored(1, 100, 100, ms(1));
        assert_eq!(tracker.committed_end(100), None);
        assert_eq!(tracker.waiting(), vec![0, 1]);
    }

    #[test]
    fn a_laggard_is_proposed_out_but_waited_for_until_recorded() {
        let mut tracker = tracker_of_three();
        tracker.follower_stored(1, 100, 100, ms(600));
        tracker.follower_stored(2, 40, 100, ms(600));
        let proposal = tracker.proposal(ms(600), LAG_MAX).unwrap();
        assert_eq!(
            proposal,
            InSyncProposal {
                members: vec![0, 1],
                based_on: 7
            }
        );
        assert_eq!(tracker.committed_end(100), Some(40), "still waits for 2");
        assert!(!tracker.apply_recorded(&[0, 1], 7), "same version: stale");
        assert_eq!(tracker.committed_end(100), Some(40));
        assert!(tracker.apply_recorded(&[0, 1], 8));
        assert_eq!(tracker.committed_end(100), Some(100));
        assert_eq!(tracker.proposal(ms(600), LAG_MAX), None);
    }

    #[test]
    fn never_proposes_below_min_in_sync() {
        let mut tracker = tracker_of_three();
        tracker.follower_stored(1, 10, 100, ms(1000));
        tracker.follower_stored(2, 10, 100, ms(1000));
        assert_eq!(tracker.proposal(ms(1000), LAG_MAX), None);
    }

    #[test]
    fn a_lagging_joiner_is_not_proposed_to_keep_min_in_sync() {
        let mut tracker = AckTracker::new(0, 3, 2, &[0, 1], 4, ms(0));
        tracker.follower_stored(2, 100, 100, ms(10));
        tracker.follower_stored(1, 50, 100, ms(700));
        tracker.follower_stored(2, 50, 100, ms(700));
        assert_eq!(tracker.waiting(), vec![0, 1, 2]);
        assert_eq!(
            tracker.proposal(ms(700), LAG_MAX),
            None,
            "keeps {{0, 1}}, adds no laggard"
        );
    }

    #[test]
    fn a_caught_up_member_is_waited_for_at_once_and_proposed() {
        let mut tracker = AckTracker::new(0, 3, 2, &[0, 1], 4, ms(0));
        tracker.follower_stored(1, 100, 100, ms(5));
        tracker.follower_stored(2, 90, 100, ms(5));
        assert_eq!(tracker.waiting(), vec![0, 1]);
        tracker.follower_stored(2, 100, 100, ms(6));
        assert_eq!(tracker.waiting(), vec![0, 1, 2]);
        assert_eq!(tracker.joining(), vec![2]);
        assert_eq!(tracker.committed_end(120), Some(100));
        let proposal = tracker.proposal(ms(6), LAG_MAX).unwrap();
        assert_eq!(proposal.members, vec![0, 1, 2]);
        assert!(tracker.apply_recorded(&[0, 1, 2], 5));
        assert_eq!(tracker.joining(), Vec::<MemberId>::new());
        assert_eq!(tracker.recorded(), vec![0, 1, 2]);
    }

    #[test]
    fn a_joiner_whose_proposal_lost_stops_being_waited_for() {
        let mut tracker = AckTracker::new(0, 3, 2, &[0, 1], 4, ms(0));
        tracker.follower_stored(1, 100, 100, ms(5));
        tracker.follower_stored(2, 100, 100, ms(5));
        assert!(tracker.apply_recorded(&[0, 1], 5));
        assert_eq!(tracker.waiting(), vec![0, 1]);
        tracker.follower_stored(2, 100, 100, ms(6));
        assert_eq!(tracker.waiting(), vec![0, 1, 2], "caught up again: rejoins");
    }

    #[test]
    fn a_silent_follower_ages_out() {
        let tracker = tracker_of_three();
        assert_eq!(tracker.lag(2, ms(700)), Some(ms(700)));
        assert_eq!(
            tracker.lag(0, ms(700)),
            None,
            "the master is not a follower"
        );
        assert_eq!(tracker.proposal(ms(500), LAG_MAX), None);
    }
}
