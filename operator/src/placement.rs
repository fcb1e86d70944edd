//! Placement: which write unit takes writes for each queue, and the route table
//! that follows. Pure functions, so the decisions are unit-tested.
//!
//! * Write queues are placed by [`rebalance`] over the eligible write units
//!   (ready, not draining, hosting the topic): balanced, and sticky, so a unit
//!   joining or leaving moves only the queues that must move.
//! * A queue is readable on every ready broker where it is writable or still
//!   holds messages (a queue that moved away keeps being consumed where it was).

pub mod groups;
mod sticky;

use std::collections::BTreeMap;

use dduomq_proto::v1 as pb;

use crate::registry::BrokerEndpoint;
pub use sticky::{Assignment, WriteUnit, rebalance};

/// What the operator knows of one broker for one topic: which queue ids hold
/// messages there (`None`: the topic is not on that broker).
pub type QueuesWithData = Option<Vec<u32>>;

/// The write units eligible for a topic's writes: the ready brokers that are
/// not `draining` and host the topic (a broker that just joined takes no
/// writes until the Topic controller has created the topic there).
pub fn write_units(
    ready: &[&BrokerEndpoint],
    draining: &[String],
    data: &BTreeMap<String, QueuesWithData>,
) -> Vec<WriteUnit> {
    ready
        .iter()
        .filter(|b| !draining.contains(&b.name))
        .filter(|b| data.get(&b.name).is_some_and(Option::is_some))
        .map(|b| WriteUnit {
            name: b.name.clone(),
        })
        .collect()
}

/// The route of a topic over the ready brokers (or group units): queues are
/// writable where `assignment` puts them, except on `read_only` units (a
/// group without a master), where they are only readable. With no writer at
/// all (every broker draining), the queues that hold messages stay readable.
/// Returns `None` when no broker has the topic.
pub fn topic_route(
    topic: &str,
    message_type: pb::MessageType,
    queues: u32,
    ready: &[&BrokerEndpoint],
    read_only: &[String],
    assignment: &Assignment,
    data: &BTreeMap<String, QueuesWithData>,
) -> Option<pb::TopicRoute> {
    let mut entries = Vec::new();
    for b in ready {
        let has = data.get(&b.name).cloned().flatten();
        let assigned: Vec<u32> = assignment
            .iter()
            .filter(|(_, owner)| **owner == b.name)
            .map(|(q, _)| *q)
            .collect();
        let takes_writes = !read_only.contains(&b.name);
        for q in 0..queues {
            let writable = takes_writes && assigned.contains(&q);
            let readable = assigned.contains(&q) || has.as_ref().is_some_and(|h| h.contains(&q));
            if writable || readable {
                entries.push(pb::QueueRoute {
                    queue_id: q,
                    broker_id: b.broker_id,
                    broker_address: b.address.clone(),
                    writable,
                    readable,
                });
            }
        }
    }
    if entries.is_empty()
        && !ready
            .iter()
            .any(|b| data.get(&b.name).is_some_and(Option::is_some))
    {
        return None;
    }
    Some(pb::TopicRoute {
        topic: topic.to_string(),
        message_type: message_type as i32,
        queues: entries,
    })
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

    /// The route with a fresh placement over the eligible units.
    fn route(
        queues: u32,
        ready: &[&BrokerEndpoint],
        draining: &[String],
        data: &BTreeMap<String, QueuesWithData>,
    ) -> Option<pb::TopicRoute> {
        let units = write_units(ready, draining, data);
        let assignment = rebalance(&Assignment::new(), &units, queues);
        topic_route(
            "t",
            pb::MessageType::Normal,
            queues,
            ready,
            &[],
            &assignment,
            data,
        )
    }

    #[test]
    fn routes_keep_old_data_readable_and_skip_draining_writers() {
        let bs: Vec<BrokerEndpoint> = (0..2).map(broker).collect();
        let refs: Vec<&BrokerEndpoint> = bs.iter().collect();
        let mut data = BTreeMap::new();
        data.insert("b-0".to_string(), Some(vec![1, 3]));
        data.insert("b-1".to_string(), Some(vec![]));
        // b-0 drains: every queue is written on b-1; b-0's queues 1 and 3 stay readable.
        let r = route(4, &refs, &["b-0".into()], &data).unwrap();
        let on = |name: &str| -> Vec<(u32, bool, bool)> {
            r.queues
                .iter()
                .filter(|q| {
                    q.broker_address
                        .starts_with(&format!("10.0.0.{}", &name[2..]))
                })
                .map(|q| (q.queue_id, q.writable, q.readable))
                .collect()
        };
        assert_eq!(on("b-0"), vec![(1, false, true), (3, false, true)]);
        assert_eq!(
            on("b-1"),
            (0..4).map(|q| (q, true, true)).collect::<Vec<_>>()
        );
        // A broker without the topic yet takes no writes (and is not in the
        // route).
        data.insert("b-1".to_string(), None);
        let r = route(4, &refs, &[], &data).unwrap();
        assert!(r.queues.iter().all(|q| q.broker_address == "10.0.0.0:6086"));
        assert_eq!(r.queues.iter().filter(|q| q.writable).count(), 4);
        // Every broker with the topic draining: its data stays readable.
        let draining = ["b-0".to_string()];
        let r = route(4, &refs, &draining, &data).unwrap();
        let entries: Vec<_> = r
            .queues
            .iter()
            .map(|q| (q.queue_id, q.writable, q.readable))
            .collect();
        assert_eq!(entries, vec![(1, false, true), (3, false, true)]);
        // No broker has it: no route.
        data.insert("b-0".to_string(), None);
        assert!(route(4, &refs, &[], &data).is_none());
    }
}
