//! How broker ordinals map to groups and members: with replication factor
//! `rf`, ordinal `o` is member `o % rf` of group `o / rf`, so scaling by whole
//! groups never moves an existing broker to another group.

use crate::MemberId;

/// The replication factor of a cluster: how many brokers form one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    factor: u32,
}

/// Where one broker sits: its group and its member index in that group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    pub group: u32,
    pub member: MemberId,
}

impl GroupLayout {
    /// A layout of groups of `factor` members; a factor of 0 is treated as 1
    /// (no replication), the default everywhere.
    pub fn new(factor: u32) -> Self {
        Self {
            factor: factor.max(1),
        }
    }

    pub fn factor(&self) -> u32 {
        self.factor
    }

    pub fn placement(&self, ordinal: u32) -> Placement {
        Placement {
            group: ordinal / self.factor,
            member: ordinal % self.factor,
        }
    }

    pub fn ordinal(&self, placement: Placement) -> u32 {
        placement.group * self.factor + placement.member
    }

    /// Whole groups served by `brokers` brokers (a partial trailing group is
    /// not counted: the operator scales by whole groups).
    pub fn groups(&self, brokers: u32) -> u32 {
        brokers / self.factor
    }

    /// The default minimum in-sync set size: a majority of the group.
    pub fn default_min_in_sync(&self) -> u32 {
        majority(self.factor)
    }
}

/// ⌊n/2⌋+1: the smallest set that intersects every other set of that size.
pub fn majority(group_size: u32) -> u32 {
    group_size / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_map_to_groups_and_members_and_back() {
        let layout = GroupLayout::new(3);
        let placements: Vec<Placement> = (0..7).map(|o| layout.placement(o)).collect();
        assert_eq!(
            placements,
            vec![
                Placement {
                    group: 0,
                    member: 0
                },
                Placement {
                    group: 0,
                    member: 1
                },
                Placement {
                    group: 0,
                    member: 2
                },
                Placement {
                    group: 1,
                    member: 0
                },
                Placement {
                    group: 1,
                    member: 1
                },
                Placement {
                    group: 1,
                    member: 2
                },
                Placement {
                    group: 2,
                    member: 0
                },
            ]
        );
        for ordinal in 0..7 {
            assert_eq!(layout.ordinal(layout.placement(ordinal)), ordinal);
        }
        assert_eq!(layout.groups(7), 2);
    }

    #[test]
    fn factor_one_is_one_broker_per_group() {
        let layout = GroupLayout::new(1);
        assert_eq!(
            layout.placement(5),
            Placement {
                group: 5,
                member: 0
            }
        );
        assert_eq!(layout.default_min_in_sync(), 1);
        assert_eq!(GroupLayout::new(0).factor(), 1);
    }

    #[test]
    fn majority_of_small_groups() {
        assert_eq!([1, 2, 3, 4, 5].map(majority), [1, 2, 2, 3, 3]);
    }
}
