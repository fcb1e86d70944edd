//! Pull consumption: reads from an offset, committed progress under the
//! group's generation, and membership (heartbeats, expiry, assignments).

use std::collections::BTreeSet;
use std::time::Duration;

use super::error::{BrokerError, Result};
use super::groups::{ConsumeMode, GroupConfig};
use super::membership::{AssignedQueue, MemberKind};
use super::offsets::{Progress, ProgressKey};
use super::push::subscription::{QueueOffset, SubKey};
use super::subscriptions::Claim;
use super::topics::TopicConfig;
use super::{Broker, Delivery, limits};
use crate::filter::FilterSpec;
use crate::store::{StoreError, Visibility, now_millis};

/// Result of a pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub deliveries: Vec<Delivery>,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// What a pull asks for.
#[derive(Debug, Clone, Copy)]
pub struct PullSpec<'a> {
    /// For metrics only: pulls do not move the group's progress.
    pub group: &'a str,
    pub topic: &'a str,
    pub queue_id: u32,
    pub offset: u64,
    pub max_messages: usize,
    pub max_bytes: usize,
    pub wait: Duration,
    /// Messages that do not pass are skipped (the returned next offset moves
    /// past them). Must be the group's subscription on the topic (see
    /// `subscriptions.rs`).
    pub filter: &'a FilterSpec,
    /// Whether the pull claims the group's filter (see `subscriptions.rs`).
    pub claim: Claim,
}

/// A group's progress on a queue, if any, and the queue's range.
#[derive(Debug, Clone, Copy)]
struct QueuePosition {
    committed: Option<u64>,
    min_offset: u64,
    max_offset: u64,
}

/// What a member learns from a heartbeat.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub generation: u64,
    pub queues: Vec<AssignedQueue>,
}

/// A group's committed offset on a queue, and the offsets the queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOffset {
    pub committed: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

impl Broker {
    /// Reads a queue from an offset, waiting up to `wait` for a first message.
    pub async fn pull(&self, req: PullSpec<'_>) -> Result<Pulled> {
        let PullSpec {
            group,
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            wait,
            filter,
            claim,
        } = req;
        // The group names the metrics the pull is counted in.
        limits::check_group_name("group", group)?;
        let topic_config = self.require_queue(topic, queue_id)?;
        let filter = self.subscribe_as(group, topic, filter, claim, |group_filter| group_filter)?;
        let deadline = tokio::time::Instant::now() + wait.min(self.config.max_pull_wait);
        let mut arrivals = self.store.subscribe();
        loop {
            arrivals.borrow_and_update();
            self.expire_queue(&topic_config, queue_id, crate::store::now_millis())?;
            let r = self.store.read_visible(
                topic,
                queue_id,
                offset,
                max_messages.max(1),
                max_bytes.max(1),
                self.visibility(&topic_config.settings),
            )?;
            if !r.records.is_empty() || r.next_offset > offset {
                let deliveries: Vec<Delivery> = r
                    .records
                    .into_iter()
                    .filter(|record| filter.matches(record))
                    .map(|record| self.plain_delivery(record))
                    .collect();
                self.count_deliveries(&deliveries, group);
                return Ok(Pulled {
                    deliveries,
                    next_offset: r.next_offset,
                    min_offset: r.min_offset,
                    max_offset: r.max_offset,
                });
            }
            let mut stop = self.shutdown_signal();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(Pulled {
                    deliveries: Vec::new(), next_offset: offset, min_offset: r.min_offset, max_offset: r.max_offset,
                }),
                _ = arrivals.changed() => {}
                _ = stop.wait_for(|s| *s) => return Err(StoreError::Closed.into()),
            }
        }
    }

    /// Commits a pull member's progress on a queue it holds in the current
    /// generation.
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
        client_id: &str,
        generation: u64,
    ) -> Result<()> {
        self.require_group(group)?;
        self.require_queue(topic, queue_id)?;
        {
            let members = self.members.lock();
            let current = members.get(group).map_or(0, |m| m.generation());
            if generation != current {
                return Err(BrokerError::StaleGeneration {
                    group: group.to_string(),
                    got: generation,
                    current,
                });
            }
            if !members
                .get(group)
                .is_some_and(|m| m.is_assigned(client_id, topic, queue_id))
            {
                return Err(BrokerError::QueueNotAssigned {
                    group: group.to_string(),
                    topic: topic.to_string(),
                    queue_id,
                    client_id: client_id.to_string(),
                });
            }
        }
        self.oldest_committable(topic, queue_id, offset, self.visibility_of(topic))?;
        let key = ProgressKey {
            group: group.to_string(),
            topic: topic.to_string(),
            member: String::new(),
            queue_id,
        };
        self.offsets.lock().set(key, Progress::at(offset));
        Ok(())
    }

    /// A group's committed offset on a queue, with the queue's range; a group
    /// without progress starts at the oldest stored message.
    pub fn query_offset(&self, group: &str, topic: &str, queue_id: u32) -> Result<GroupOffset> {
        self.require_group(group)?;
        let t = self.topics.require(topic)?;
        let p = self.position(group, &t, queue_id);
        Ok(GroupOffset {
            committed: p.committed.unwrap_or(p.min_offset),
            min_offset: p.min_offset,
            max_offset: p.max_offset,
        })
    }

    /// A group's progress on a queue (live or saved, never below the oldest
    /// offset kept), with the queue's range.
    fn position(&self, group: &str, t: &TopicConfig, queue_id: u32) -> QueuePosition {
        let (min, max) =
            self.store
                .visible_offsets(&t.name, queue_id, self.visibility(&t.settings));
        let key = ProgressKey {
            group: group.to_string(),
            topic: t.name.clone(),
            member: String::new(),
            queue_id,
        };
        QueuePosition {
            committed: self.live_committed(&key).map(|c| c.max(min)),
            min_offset: min,
            max_offset: max,
        }
    }

    /// Stores a clustering group's progress on one queue, as a consumer that
    /// keeps its own position commits it (RocketMQ's UpdateOffset): the
    /// group's next message there is the one at `offset` (an offset below
    /// the oldest kept, which retention just passed, is taken as the
    /// oldest). A live cursor moves with it, its leases ended, unless it is
    /// there already. Saved with the other progress, on the next periodic
    /// save; refused on a member that does not write its log (its progress
    /// is the master's). The group is created on first use where that is on.
    pub fn store_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> Result<()> {
        self.write_term()?;
        let t = self.require_queue(topic, queue_id)?;
        let min = self.oldest_committable(topic, queue_id, offset, self.visibility(&t.settings))?;
        if self.progress_group(group)?.is_none() {
            self.group_for_use(group, ConsumeMode::Clustering)?;
        }
        let key = SubKey {
            group: group.to_string(),
            topic: topic.to_string(),
            member: String::new(),
        };
        let offset = offset.max(min);
        if self.live_committed(&key.progress(queue_id)) != Some(offset) {
            self.move_progress(&key, &[QueueOffset { queue_id, offset }]);
        }
        Ok(())
    }

    /// The oldest offset of a queue, checking that a commit of `offset` is
    /// not past its end (one below the oldest, which retention may pass at
    /// any time, is taken as the oldest).
    fn oldest_committable(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        visibility: Visibility,
    ) -> Result<u64> {
        let (min, max) = self.store.visible_offsets(topic, queue_id, visibility);
        if offset > max {
            return Err(StoreError::OffsetOutOfRange {
                topic: topic.to_string(),
                queue_id,
                offset,
                min,
                max,
            }
            .into());
        }
        Ok(min)
    }

    /// A clustering group's committed offset on one queue; `None` while the
    /// group has no progress there (also while it is still to be created on
    /// first use: nothing is created).
    pub fn committed_offset(&self, group: &str, topic: &str, queue_id: u32) -> Result<Option<u64>> {
        let t = self.require_queue(topic, queue_id)?;
        if self.progress_group(group)?.is_none() {
            return Ok(None);
        }
        Ok(self.position(group, &t, queue_id).committed)
    }

    /// A consumer group that exists, or `None` for one that does not yet and
    /// would be created on first use; refused when neither.
    pub fn group_known(&self, group: &str) -> Result<Option<GroupConfig>> {
        limits::check_group_name("group", group)?;
        match self.groups.get(group) {
            Some(config) => Ok(Some(config)),
            None if self.config.auto_create_topics => Ok(None),
            None => Err(BrokerError::GroupNotFound(group.to_string())),
        }
    }

    /// [`Broker::group_known`], for a group whose progress a client keeps:
    /// refused for a broadcast group (its members each keep their own).
    fn progress_group(&self, group: &str) -> Result<Option<GroupConfig>> {
        let known = self.group_known(group)?;
        if known
            .as_ref()
            .is_some_and(|g| g.mode != ConsumeMode::Clustering)
        {
            return Err(BrokerError::invalid(
                "group",
                format!("{group} consumes in broadcast mode: each member keeps its own progress"),
            ));
        }
        Ok(known)
    }

    /// The committed offset of a live cursor, else the saved one.
    pub(super) fn live_committed(&self, key: &ProgressKey) -> Option<u64> {
        let sub_key = SubKey {
            group: key.group.clone(),
            topic: key.topic.clone(),
            member: key.member.clone(),
        };
        let sub = self.subscriptions.lock().get(&sub_key).cloned();
        if let Some(sub) = sub
            && let Some(committed) = sub.state.lock().committed(key.queue_id)
        {
            return Some(committed);
        }
        self.offsets.lock().get(key)
    }

    pub(super) fn touch_member<const N: usize>(
        &self,
        group: &str,
        client_id: &str,
        kind: MemberKind,
        topics: [String; N],
    ) {
        let now = now_millis();
        let mut members = self.members.lock();
        let m = members.entry(group.to_string()).or_default();
        let mut all: BTreeSet<String> = m
            .members()
            .get(client_id)
            .map(|x| x.topics.clone())
            .unwrap_or_default();
        all.extend(topics);
        m.heartbeat(client_id, kind, all, now, |t| {
            self.topics.get(t).map_or(0, |t| t.queues)
        });
    }

    /// Records a heartbeat; returns the member's pull assignment.
    pub fn heartbeat(
        &self,
        group: &str,
        client_id: &str,
        kind: MemberKind,
        topics: Vec<String>,
    ) -> Result<Assignment> {
        // The same rules for every kind: producer members are kept (and
        // expire) like the others.
        limits::check_group_name("group", group)?;
        limits::check_id("client_id", client_id, limits::MAX_CLIENT_ID_LEN, false)?;
        limits::check_count("topics", topics.len(), limits::MAX_HEARTBEAT_TOPICS)?;
        for t in &topics {
            self.check_topic_for_use(t)?;
        }
        if kind != MemberKind::Producer {
            self.group_for_use(group, ConsumeMode::Clustering)?;
            for t in &topics {
                self.check_declared_topic(group, t)?;
            }
        }
        if kind == MemberKind::Pull {
            self.free_idle_claims(group, &topics);
        }
        for t in &topics {
            self.topic_for_use(t)?;
        }
        let now = now_millis();
        let mut members = self.members.lock();
        let m = members.entry(group.to_string()).or_default();
        m.heartbeat(client_id, kind, topics.into_iter().collect(), now, |t| {
            self.topics.get(t).map_or(0, |t| t.queues)
        });
        Ok(Assignment {
            generation: m.generation(),
            queues: m.assignment(client_id).to_vec(),
        })
    }

    /// Drops members whose session timed out (run periodically).
    pub fn expire_members(&self) {
        let now = now_millis();
        let timeout = self.config.session_timeout.as_millis() as i64;
        let mut members = self.members.lock();
        for (group, m) in members.iter_mut() {
            if m.expire(now, timeout, |t| self.topics.get(t).map_or(0, |t| t.queues)) {
                tracing::info!(
                    group,
                    generation = m.generation(),
                    "group rebalanced after members expired"
                );
            }
        }
        // Memberships of registered groups stay (their generation guards
        // commits); those of other names (producer groups) go with their
        // last member.
        members.retain(|group, m| !m.members().is_empty() || self.groups.get(group).is_some());
    }
}
