//! How a member takes an AssignRole from the controller. The one subtle rule:
//! a member that was master of an epoch and restarted does not resume it —
//! it lost the bookkeeping of which members it waited for, and an old,
//! reordered AssignRole could hand it back a smaller in-sync set than the one
//! recorded. It refuses, and the controller elects again with a new epoch
//! (whose first record is unambiguous). And a member named master of an
//! epoch on another data directory than the controller recorded for it (its
//! volume was replaced) refuses: its log lacks the epoch's messages.

use crate::MemberId;
use crate::epochs::EpochHistory;

/// What the member currently does (volatile: lost on restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Just started (or never assigned): takes no writes and, until a master
    /// tells it what is acknowledged, serves no consumers.
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

/// How the store identity an AssignRole expects of its master compares with
/// the member's own (the identity is drawn when a data directory is first
/// initialised, so a replaced volume has a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCheck {
    /// The controller's record predates identities (expected 0 on the wire).
    Unchecked,
    Matches,
    Differs,
}

impl StoreCheck {
    /// `expected` as sent (0: not checked) against the member's `own`.
    pub fn of(expected: u64, own: u64) -> Self {
        match expected {
            0 => StoreCheck::Unchecked,
            e if e == own => StoreCheck::Matches,
            _ => StoreCheck::Differs,
        }
    }
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
    /// It is named master on another data directory than the one the
    /// controller recorded for the master (its volume was replaced, maybe
    /// before it wrote any epoch history of its own): refuse; elect another.
    RefuseMasterOfReplacedStore,
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
            | RoleChange::RefuseMasterWithoutHistory
            | RoleChange::RefuseMasterOfReplacedStore => MemberRole {
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
/// log's epoch history is `history`, with `store` comparing the identity the
/// controller recorded for the master with the member's. Only epoch 1 (a new
/// group's first election) may make a member with an empty history master:
/// this holds even if a controller errs. A master of epoch 1 that lost its
/// volume also has an empty history; the store identity tells it apart.
pub fn role_change(
    current: MemberRole,
    history: &EpochHistory,
    epoch: u64,
    assigned: AssignedRole,
    store: StoreCheck,
) -> RoleChange {
    if epoch < current.epoch {
        return RoleChange::Stale;
    }
    match assigned {
        AssignedRole::Master if store == StoreCheck::Differs => {
            RoleChange::RefuseMasterOfReplacedStore
        }
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
        let change = role_change(
            start,
            &history(2),
            3,
            AssignedRole::Master,
            StoreCheck::Matches,
        );
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
            role_change(
                master,
                &history(3),
                3,
                AssignedRole::Master,
                StoreCheck::Matches
            ),
            RoleChange::RenewMaster
        );
    }

    #[test]
    fn a_restarted_master_does_not_resume_its_epoch() {
        let start = MemberRole::at_start(&history(3));
        assert_eq!(
            role_change(
                start,
                &history(3),
                3,
                AssignedRole::Master,
                StoreCheck::Matches
            ),
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
            role_change(
                master,
                &history(3),
                2,
                AssignedRole::Master,
                StoreCheck::Matches
            ),
            RoleChange::Stale
        );
        assert_eq!(
            role_change(
                master,
                &history(3),
                3,
                AssignedRole::Replica { master: 1 },
                StoreCheck::Matches
            ),
            RoleChange::Stale,
            "one epoch has one master"
        );
        let change = role_change(
            master,
            &history(3),
            4,
            AssignedRole::Replica { master: 1 },
            StoreCheck::Matches,
        );
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
            role_change(
                start,
                &history(0),
                1,
                AssignedRole::Master,
                StoreCheck::Matches
            ),
            RoleChange::BecomeMaster
        );
        assert_eq!(
            role_change(
                start,
                &history(0),
                4,
                AssignedRole::Master,
                StoreCheck::Matches
            ),
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
            role_change(
                start,
                &history(0),
                4,
                AssignedRole::Replica { master: 1 },
                StoreCheck::Matches
            ),
            RoleChange::Follow { master: 1 }
        );
    }

    #[test]
    fn a_master_on_a_replaced_store_refuses_even_epoch_1() {
        let start = MemberRole::at_start(&history(0));
        let replaced = StoreCheck::of(7, 8);
        assert_eq!(replaced, StoreCheck::Differs);
        assert_eq!(
            role_change(start, &history(0), 1, AssignedRole::Master, replaced),
            RoleChange::RefuseMasterOfReplacedStore,
            "the recorded master of epoch 1 lost its volume"
        );
        assert_eq!(
            RoleChange::RefuseMasterOfReplacedStore.apply(start, 1),
            MemberRole {
                epoch: 1,
                role: Role::Unassigned
            }
        );
        assert_eq!(
            role_change(
                start,
                &history(0),
                1,
                AssignedRole::Master,
                StoreCheck::of(0, 8)
            ),
            RoleChange::BecomeMaster,
            "a record from before identities is not checked"
        );
        assert_eq!(
            role_change(
                start,
                &history(0),
                1,
                AssignedRole::Replica { master: 1 },
                replaced
            ),
            RoleChange::Follow { master: 1 },
            "a replica's own store is not checked: it copies the master's log"
        );
    }
}
