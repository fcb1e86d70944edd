//! Consumer progress: saving it, describing a group's position on every
//! queue, and resetting it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::error::{BrokerError, Result};
use super::groups::{ConsumeMode, GroupConfig};
use super::offsets::{Progress, ProgressKey};
use super::push::subscription::{QueueOffset, SubKey, Subscription};
use super::topics::TopicConfig;
use super::{Broker, membership, metadata};
use crate::store::StoreError;

/// Per-queue progress of a group, for describe and reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgress {
    pub topic: String,
    pub queue_id: u32,
    pub member: String,
    pub committed: u64,
    pub max_offset: u64,
    pub in_flight: u32,
}

/// Where to move a group's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    Earliest,
    Latest,
    Timestamp(i64),
    Offset(i64),
}

/// Where a reset moves one queue's progress, and the queue's end.
#[derive(Debug, Clone, Copy)]
struct QueueTarget {
    queue_id: u32,
    offset: u64,
    max_offset: u64,
}

/// A live member of a group, for describe.
#[derive(Debug, Clone)]
pub struct GroupMember {
    pub client_id: String,
    pub member: membership::Member,
}

/// A group and its live state, for describe.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub config: GroupConfig,
    pub queues: Vec<QueueProgress>,
    pub members: Vec<GroupMember>,
    pub generation: u64,
}

impl Broker {
    /// Copies every live cursor into the offset table.
    pub(super) fn sync_offsets(&self) {
        let subs: Vec<Arc<Subscription>> = self.subscriptions.lock().values().cloned().collect();
        // Snapshot first: the offsets lock is never held while taking a
        // subscription's lock (`lease` takes them the other way round).
        let mut snapshot = Vec::new();
        for sub in subs {
            for (q, progress) in sub.state.lock().snapshot() {
                snapshot.push((sub.key.progress(q), progress));
            }
        }
        let mut table = self.offsets.lock();
        for (key, progress) in snapshot {
            table.set(key, progress);
        }
    }

    /// Saves consumer progress (every live cursor) and the idempotent
    /// producers' windows.
    pub fn persist_offsets(&self) -> Result<()> {
        self.persist_progress(Duration::ZERO)
    }

    /// [`Broker::persist_offsets`], saving the dedupe windows only when the last
    /// save is older than `dedupe_interval`.
    pub(super) fn persist_progress(&self, dedupe_interval: Duration) -> Result<()> {
        if !self.writes_log() {
            // A replica's progress, staged and dedupe state are the master's,
            // from its log (see `replicated/`).
            return Ok(());
        }
        let _one_at_a_time = self.persisting.lock();
        self.sync_offsets();
        self.refresh_replicated_snapshots();
        // Rewritten only when some progress moved since the last save.
        let changes = self.offsets.lock().changes();
        if let Some((path, json)) = changes {
            if let Err(e) = metadata::save_bytes(&path, &json) {
                self.offsets.lock().save_failed();
                return Err(e.into());
            }
            self.queue_progress(&json);
        }
        let stats = self.store.stats();
        self.store
            .pin_retention(self.retention_floor(stats.commit_log_max));
        // Saved positions never pass what is durable: after a power loss the
        // records beyond it may be gone, and what they resolved with them.
        self.staged.save(stats.commit_log_flushed)?;
        self.dedupe
            .save_every(stats.commit_log_flushed, dedupe_interval)
    }

    /// Progress of a group on every queue of its topics.
    pub fn describe_group(&self, name: &str) -> Result<GroupDescription> {
        let config = self.require_group(name)?;
        self.sync_offsets();
        let mut keys: BTreeSet<(String, String)> = self
            .offsets
            .lock()
            .of_group(name, None)
            .into_iter()
            .map(|(k, _)| (k.topic, k.member))
            .collect();
        keys.extend(
            self.subscriptions
                .lock()
                .keys()
                .filter(|k| k.group == name)
                .map(|k| (k.topic.clone(), k.member.clone())),
        );
        let (generation, members) = {
            let members = self.members.lock();
            members.get(name).map_or((0, Vec::new()), |m| {
                (
                    m.generation(),
                    m.members()
                        .iter()
                        .map(|(id, m)| GroupMember {
                            client_id: id.clone(),
                            member: m.clone(),
                        })
                        .collect(),
                )
            })
        };
        if config.mode == ConsumeMode::Clustering {
            // A declared subscription counts before anyone consumed: its
            // backlog is lag, and keeps a draining broker from being drained.
            let declared = config.subscriptions.iter().map(|s| &s.topic);
            let joined = members.iter().flat_map(|m| &m.member.topics);
            for t in declared.chain(joined) {
                keys.insert((t.clone(), String::new()));
            }
        }
        let mut queues = Vec::new();
        for (topic, member) in keys {
            let Some(t) = self.topics.get(&topic) else {
                continue;
            };
            let sub = self
                .subscriptions
                .lock()
                .get(&SubKey {
                    group: name.to_string(),
                    topic: topic.clone(),
                    member: member.clone(),
                })
                .cloned();
            let visibility = self.visibility(&t.settings);
            for q in 0..t.queues {
                let key = ProgressKey {
                    group: name.to_string(),
                    topic: topic.clone(),
                    member: member.clone(),
                    queue_id: q,
                };
                let (min, max) = self.store.visible_offsets(&topic, q, visibility);
                let committed = self.offsets.lock().get(&key).unwrap_or(min).max(min);
                let in_flight = sub
                    .as_ref()
                    .and_then(|s| s.state.lock().in_flight(q).map(|n| n as u32))
                    .unwrap_or(0);
                queues.push(QueueProgress {
                    topic: topic.clone(),
                    queue_id: q,
                    member: member.clone(),
                    committed,
                    max_offset: max,
                    in_flight,
                });
            }
        }
        Ok(GroupDescription {
            config,
            queues,
            members,
            generation,
        })
    }

    /// Moves a group's progress on a topic for every queue (and every broadcast
    /// member). Validates every queue first: a bad request changes nothing.
    pub fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTarget,
    ) -> Result<Vec<QueueProgress>> {
        let config = self.require_group(group)?;
        let t = self.topics.require(topic)?;
        let targets = (0..t.queues)
            .map(|q| self.target_on(&t, q, to))
            .collect::<Result<Vec<_>>>()?;
        let mut members: BTreeSet<String> = self
            .offsets
            .lock()
            .of_group(group, Some(topic))
            .into_iter()
            .map(|(k, _)| k.member)
            .collect();
        members.extend(
            self.subscriptions
                .lock()
                .keys()
                .filter(|k| k.group == group && k.topic == topic)
                .map(|k| k.member.clone()),
        );
        if config.mode == ConsumeMode::Clustering {
            members.insert(String::new());
        }
        let mut out = Vec::new();
        for member in members {
            let key = SubKey {
                group: group.to_string(),
                topic: topic.to_string(),
                member: member.clone(),
            };
            let moves: Vec<QueueOffset> = targets
                .iter()
                .map(|t| QueueOffset {
                    queue_id: t.queue_id,
                    offset: t.offset,
                })
                .collect();
            self.move_progress(&key, &moves);
            out.extend(targets.iter().map(|target| QueueProgress {
                topic: topic.to_string(),
                queue_id: target.queue_id,
                member: member.clone(),
                committed: target.offset,
                max_offset: target.max_offset,
                in_flight: 0,
            }));
        }
        if let Some(m) = self.members.lock().get_mut(group) {
            m.bump();
        }
        self.persist_offsets()?;
        tracing::info!(group, topic, ?to, "group offsets reset");
        Ok(out)
    }

    /// The offset `to` names on one queue (an explicit offset must lie in the
    /// queue's range).
    pub fn locate_offset(&self, topic: &str, queue_id: u32, to: ResetTarget) -> Result<u64> {
        let t = self.require_queue(topic, queue_id)?;
        Ok(self.target_on(&t, queue_id, to)?.offset)
    }

    /// Where `to` lies on queue `q` of topic `t`.
    fn target_on(&self, t: &TopicConfig, q: u32, to: ResetTarget) -> Result<QueueTarget> {
        let (min, max) = self
            .store
            .visible_offsets(&t.name, q, self.visibility(&t.settings));
        let offset = match to {
            ResetTarget::Earliest => min,
            ResetTarget::Latest => max,
            ResetTarget::Timestamp(ms) => self.store.offset_for_timestamp(&t.name, q, ms).min(max),
            ResetTarget::Offset(o) if o < 0 => {
                return Err(BrokerError::invalid(
                    "offset",
                    format!("{o}: offsets are not negative"),
                ));
            }
            ResetTarget::Offset(o) if (o as u64) < min || (o as u64) > max => {
                return Err(StoreError::OffsetOutOfRange {
                    topic: t.name.clone(),
                    queue_id: q,
                    offset: o as u64,
                    min,
                    max,
                }
                .into());
            }
            ResetTarget::Offset(o) => o as u64,
        };
        Ok(QueueTarget {
            queue_id: q,
            offset,
            max_offset: max,
        })
    }

    /// Moves one member's progress (its live cursor, whose leases end, and
    /// its saved offsets) to `targets`.
    pub(super) fn move_progress(&self, key: &SubKey, targets: &[QueueOffset]) {
        // The subscriptions lock is not held while waiting for the state's.
        let sub = self.subscriptions.lock().get(key).cloned();
        if let Some(sub) = sub {
            let mut st = sub.state.lock();
            for target in targets {
                st.reset(target.queue_id, target.offset);
            }
            drop(st);
            sub.notify.notify_waiters();
        }
        let mut table = self.offsets.lock();
        for target in targets {
            table.set(key.progress(target.queue_id), Progress::at(target.offset));
        }
    }
}
