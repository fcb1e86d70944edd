//! Group membership and the assignment of queues to pull consumers.
//!
//! Members announce themselves with heartbeats and expire after the session
//! timeout. Pull members split each topic's queues round-robin in client-id
//! order. Every change of the assignment (and every offset reset) bumps the
//! generation; a commit must carry the current generation, so a member that missed
//! a rebalance cannot overwrite the progress of the queue's new owner.

use std::collections::{BTreeMap, BTreeSet};

/// What kind of client a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    Push,
    Pull,
    Producer,
}

/// A live member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub kind: MemberKind,
    pub topics: BTreeSet<String>,
    pub last_seen_ms: i64,
}

/// A queue assigned to a pull member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedQueue {
    pub topic: String,
    pub queue_id: u32,
}

/// The members of one group and their pull assignment.
#[derive(Debug, Default)]
pub struct Membership {
    generation: u64,
    members: BTreeMap<String, Member>,
    assignment: BTreeMap<String, Vec<AssignedQueue>>,
}

impl Membership {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// The queues assigned to a member.
    pub fn assignment(&self, client_id: &str) -> &[AssignedQueue] {
        self.assignment.get(client_id).map_or(&[], |v| v.as_slice())
    }

    pub fn is_assigned(&self, client_id: &str, topic: &str, queue_id: u32) -> bool {
        self.assignment(client_id)
            .iter()
            .any(|q| q.topic == topic && q.queue_id == queue_id)
    }

    /// Records a heartbeat and rebalances if the membership or queue counts changed.
    pub fn heartbeat(
        &mut self,
        client_id: &str,
        kind: MemberKind,
        topics: BTreeSet<String>,
        now_ms: i64,
        queues_of: impl Fn(&str) -> u32,
    ) {
        self.members.insert(
            client_id.to_string(),
            Member {
                kind,
                topics,
                last_seen_ms: now_ms,
            },
        );
        self.rebalance(queues_of);
    }

    /// Drops members silent for longer than `timeout_ms`; returns whether any went.
    pub fn expire(
        &mut self,
        now_ms: i64,
        timeout_ms: i64,
        queues_of: impl Fn(&str) -> u32,
    ) -> bool {
        let before = self.members.len();
        self.members
            .retain(|_, m| now_ms - m.last_seen_ms <= timeout_ms);
        let changed = self.members.len() != before;
        if changed {
            self.rebalance(queues_of);
        }
        changed
    }

    /// Removes a member at once (it said goodbye).
    pub fn leave(&mut self, client_id: &str, queues_of: impl Fn(&str) -> u32) {
        if self.members.remove(client_id).is_some() {
            self.rebalance(queues_of);
        }
    }

    /// Forces every member to re-read its offsets (after an offset reset).
    pub fn bump(&mut self) {
        self.generation += 1;
    }

    fn rebalance(&mut self, queues_of: impl Fn(&str) -> u32) {
        let mut by_topic: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, m) in &self.members {
            if m.kind == MemberKind::Pull {
                for t in &m.topics {
                    by_topic.entry(t).or_default().push(id);
                }
            }
        }
        let mut assignment: BTreeMap<String, Vec<AssignedQueue>> = BTreeMap::new();
        for (topic, members) in by_topic {
            for q in 0..queues_of(topic) {
                let owner = members[q as usize % members.len()];
                assignment
                    .entry(owner.to_string())
                    .or_default()
                    .push(AssignedQueue {
                        topic: topic.to_string(),
                        queue_id: q,
                    });
            }
        }
        if assignment != self.assignment {
            self.assignment = assignment;
            self.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(t: &[&str]) -> BTreeSet<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn queues_of_t(ids: &[u32]) -> Vec<AssignedQueue> {
        ids.iter()
            .map(|&queue_id| AssignedQueue {
                topic: "t".into(),
                queue_id,
            })
            .collect()
    }

    #[test]
    fn queues_are_split_and_rebalanced_with_new_generations() {
        let mut m = Membership::default();
        let q = |_: &str| 4;
        m.heartbeat("a", MemberKind::Pull, topics(&["t"]), 0, q);
        let g1 = m.generation();
        assert_eq!(m.assignment("a").len(), 4);
        m.heartbeat("a", MemberKind::Pull, topics(&["t"]), 10, q);
        assert_eq!(m.generation(), g1, "no change, no new generation");
        m.heartbeat("b", MemberKind::Pull, topics(&["t"]), 20, q);
        let g2 = m.generation();
        assert!(g2 > g1);
        assert_eq!(m.assignment("a"), queues_of_t(&[0, 2]));
        assert_eq!(m.assignment("b"), queues_of_t(&[1, 3]));
        assert!(m.is_assigned("b", "t", 3) && !m.is_assigned("a", "t", 3));
        // A push member does not take queues.
        m.heartbeat("c", MemberKind::Push, topics(&["t"]), 20, q);
        assert_eq!(m.generation(), g2);
        // b goes silent and expires.
        assert!(m.expire(1000, 500, q));
        assert_eq!(m.members().len(), 0, "a and c were silent too");
        m.heartbeat("a", MemberKind::Pull, topics(&["t"]), 1000, q);
        assert!(m.generation() > g2);
        assert_eq!(m.assignment("a").len(), 4);
    }
}
