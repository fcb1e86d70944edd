//! How a member takes an AssignRole from the controller. The one subtle rule:
//! a member that was master of an epoch and restarted does not resume it —
//! it lost the bookkeeping of which members it waited for, and an old,
//! reordered AssignRole could hand it back a smaller in-sync set than the one
//! recorded. It refuses, and the controller elects again with a new epoch
//! (whose first record is unambiguous).

use crate::MemberId;
use crate::epochs::EpochHistory;

/// What the member currently does (volatile: lost on restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Just started (or never assigned): takes no writes, serves reads.
    Unassigned,
    Replica {
        master: MemberId,
    },
    Master,
}

/// A member's role in the newest epoch it knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRole {
    pub epoch: u64,
    pub role: Role,
}

impl MemberRole {
    /// The role of a member that just started on its data directory: no role,
    /// in the newest epoch its log has seen.
    pub fn at_start(history: &EpochHistory) -> Self {
        Self {
            epoch: history.latest_epoch(),
            role: Role::Unassigned,
        }
    }
}

/// The role the controller assigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignedRole {
    Master,
    Replica { master: MemberId },
}

/// What the member does with an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// An older epoch than the member knows: ignore it (no lease either).
    Stale,
    /// Still master of this epoch: apply the recorded in-sync set (if newer)
    /// and extend the lease from the receipt instant.
    RenewMaster,
    /// Become master: begin the epoch at the log end in the epoch history,
    /// start an `AckTracker` on the assigned in-sync set, take the lease.
    BecomeMaster,
    /// It was master of this epoch before it restarted: refuse (stay
    /// unassigned); the controller elects anew.
    RefuseMaster,
    /// Its epoch history is empty but the epoch is a later one than a new
    /// group's first: it lost its volume, and as master it would make the
    /// replicas cut every acknowledged message. Refuse; elect another.
    RefuseMasterWithoutHistory,
    /// Follow `master` in this epoch (reconnecting if it changed); a master
    /// steps down and drops its lease first.
    Follow { master: MemberId },
}

impl RoleChange {
    /// The role the member has after applying this change to `current`.
    pub fn apply(self, current: MemberRole, epoch: u64) -> MemberRole {
        match self {
            RoleChange::Stale
            | RoleChange::RefuseMaster
            | RoleChange::RefuseMasterWithoutHistory => MemberRole {
                epoch: current.epoch.max(epoch),
                role: current.role,
            },
            RoleChange::RenewMaster | RoleChange::BecomeMaster => MemberRole {
                epoch,
                role: Role::Master,
            },
            RoleChange::Follow { master } => MemberRole {
                epoch,
                role: Role::Replica { master },
            },
        }
    }
}

/// The rule: `assigned` for `epoch`, received by a member in `current` whose
/// log's epoch history is `history`. Only epoch 1 (a new group's first
/// election) may make a member with an empty history master: this holds even
/// if a controller errs.
pub fn role_change(
    current: MemberRole,
    history: &EpochHistory,
    epoch: u64,
    assigned: AssignedRole,
) -> RoleChange {
    if epoch < current.epoch {
        return RoleChange::Stale;
    }
    match assigned {
        AssignedRole::Master if current.role == Role::Master && epoch == current.epoch => {
            RoleChange::RenewMaster
        }
        AssignedRole::Master if history.latest_epoch() >= epoch => RoleChange::RefuseMaster,
        AssignedRole::Master if history.latest().is_none() && epoch > 1 => {
            RoleChange::RefuseMasterWithoutHistory
        }
        AssignedRole::Master => RoleChange::BecomeMaster,
        AssignedRole::Replica { .. } if current.role == Role::Master && epoch == current.epoch => {
            RoleChange::Stale
        }
        AssignedRole::Replica { master } => RoleChange::Follow { master },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epochs::EpochStart;

    fn history(latest_epoch: u64) -> EpochHistory {
        let starts = (1..=latest_epoch)
            .map(|epoch| EpochStart {
                epoch,
                start_offset: epoch * 10,
            })
            .collect();
        EpochHistory::from_starts(starts).unwrap()
    }

    #[test]
    fn a_new_epoch_makes_a_master_and_renewals_keep_it() {
        let start = MemberRole::at_start(&history(2));
        assert_eq!(
            start,
            MemberRole {
                epoch: 2,
                role: Role::Unassigned
            }
        );
        let change = role_change(start, &history(2), 3, AssignedRole::Master);
        assert_eq!(change, RoleChange::BecomeMaster);
        let master = change.apply(start, 3);
        assert_eq!(
            master,
            MemberRole {
                epoch: 3,
                role: Role::Master
            }
        );
        assert_eq!(
            role_change(master, &history(3), 3, AssignedRole::Master),
            RoleChange::RenewMaster
        );
    }

    #[test]
    fn a_restarted_master_does_not_resume_its_epoch() {
        let start = MemberRole::at_start(&history(3));
        assert_eq!(
            role_change(start, &history(3), 3, AssignedRole::Master),
            RoleChange::RefuseMaster
        );
        assert_eq!(RoleChange::RefuseMaster.apply(start, 3), start);
    }

    #[test]
    fn old_epochs_are_ignored_and_new_ones_demote() {
        let master = MemberRole {
            epoch: 3,
            role: Role::Master,
        };
        assert_eq!(
            role_change(master, &history(3), 2, AssignedRole::Master),
            RoleChange::Stale
        );
        assert_eq!(
            role_change(master, &history(3), 3, AssignedRole::Replica { master: 1 }),
            RoleChange::Stale,
            "one epoch has one master"
        );
        let change = role_change(master, &history(3), 4, AssignedRole::Replica { master: 1 });
        assert_eq!(change, RoleChange::Follow { master: 1 });
        assert_eq!(
            change.apply(master, 4),
            MemberRole {
                epoch: 4,
                role: Role::Replica { master: 1 }
            }
        );
    }

    #[test]
    fn an_empty_member_is_master_only_of_a_new_groups_first_epoch() {
        let start = MemberRole::at_start(&history(0));
        assert_eq!(
            role_change(start, &history(0), 1, AssignedRole::Master),
            RoleChange::BecomeMaster
        );
        assert_eq!(
            role_change(start, &history(0), 4, AssignedRole::Master),
            RoleChange::RefuseMasterWithoutHistory,
            "it lost its volume: its empty log would cut the replicas'"
        );
        assert_eq!(
            RoleChange::RefuseMasterWithoutHistory.apply(start, 4),
            MemberRole {
                epoch: 4,
                role: Role::Unassigned
            }
        );
        assert_eq!(
            role_change(start, &history(0), 4, AssignedRole::Replica { master: 1 }),
            RoleChange::Follow { master: 1 }
        );
    }
}
