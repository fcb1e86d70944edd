//! Write units of a replicated cluster (factor > 1): a unit is a broker group,
//! named `group-<g>`, written through its master. The route publisher turns
//! the brokers it sees into one endpoint per group and places queues over
//! those exactly as over brokers; a failover changes only the endpoint, so
//! queues stay with their group.
//!
//! While a group has no master that may take writes (never elected, fenced,
//! no candidate), its endpoint is a ready replica and its queues are routed
//! readable, not writable, so consumers are not stranded.

use std::collections::BTreeMap;

use dduomq_replication::GroupLayout;

use super::QueuesWithData;
use crate::registry::BrokerEndpoint;
use crate::replication::GroupStates;
use crate::replication::group::GroupState;

/// The units of a replicated cluster, in the shapes the placement takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupUnits {
    /// One endpoint per group with a ready member: its master, or a replica.
    pub endpoints: Vec<BrokerEndpoint>,
    /// Units whose endpoint is draining.
    pub draining: Vec<String>,
    /// Each unit's data, as its endpoint broker reported it.
    pub data: BTreeMap<String, QueuesWithData>,
    /// Units routed readable only (no master).
    pub read_only: Vec<String>,
}

/// The name of group `g`'s write unit (as `Topic.status.assignment` records it).
pub fn unit_name(group: u32) -> String {
    format!("group-{group}")
}

/// The group units over the `ready` brokers, from each group's `states`,
/// the brokers that are `draining` and each broker's `data`.
pub fn group_units(
    layout: GroupLayout,
    states: &GroupStates,
    ready: &[&BrokerEndpoint],
    draining: &[String],
    data: &BTreeMap<String, QueuesWithData>,
) -> GroupUnits {
    let mut members: BTreeMap<u32, Vec<&BrokerEndpoint>> = BTreeMap::new();
    for b in ready {
        members
            .entry(layout.placement(b.broker_id).group)
            .or_default()
            .push(b);
    }
    let mut units = GroupUnits::default();
    for (group, brokers) in members {
        let master = match states.get(&group) {
            Some(GroupState::Serving { master, .. }) => brokers
                .iter()
                .find(|b| layout.placement(b.broker_id).member == *master),
            _ => None,
        };
        let name = unit_name(group);
        let endpoint = match master {
            Some(master) => *master,
            None => {
                units.read_only.push(name.clone());
                brokers[0]
            }
        };
        if draining.contains(&endpoint.name) {
            units.draining.push(name.clone());
        }
        units.data.insert(
            name.clone(),
            data.get(&endpoint.name).cloned().unwrap_or(None),
        );
        units.endpoints.push(BrokerEndpoint {
            name,
            address: endpoint.address.clone(),
            ready: true,
            broker_id: group,
        });
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(i: u32) -> BrokerEndpoint {
        BrokerEndpoint {
            name: format!("b-{i}"),
            address: format!("10.0.0.{i}:6086"),
            ready: true,
            broker_id: i,
        }
    }

    #[test]
    fn a_group_is_its_master_or_without_one_a_read_only_replica() {
        let layout = GroupLayout::new(3);
        let brokers: Vec<BrokerEndpoint> = (0..6).map(broker).collect();
        // Group 1's member 0 (b-3) is not ready.
        let ready: Vec<&BrokerEndpoint> = brokers.iter().filter(|b| b.broker_id != 3).collect();
        let states = GroupStates::from([
            (
                0,
                GroupState::Serving {
                    master: 2,
                    epoch: 4,
                },
            ),
            (1, GroupState::Masterless),
        ]);
        let data: BTreeMap<String, QueuesWithData> =
            (0..6).map(|i| (format!("b-{i}"), Some(vec![i]))).collect();
        let units = group_units(layout, &states, &ready, &["b-2".to_string()], &data);
        let endpoints: Vec<(&str, &str, u32)> = units
            .endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.address.as_str(), e.broker_id))
            .collect();
        assert_eq!(
            endpoints,
            vec![
                ("group-0", "10.0.0.2:6086", 0),
                ("group-1", "10.0.0.4:6086", 1)
            ]
        );
        assert_eq!(units.read_only, vec!["group-1".to_string()]);
        assert_eq!(units.draining, vec!["group-0".to_string()]);
        assert_eq!(
            units.data,
            BTreeMap::from([
                ("group-0".to_string(), Some(vec![2])),
                ("group-1".to_string(), Some(vec![4])),
            ])
        );
    }
}
