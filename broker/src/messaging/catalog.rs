//! Topics and groups as the broker manages them: creation, deletion, listing,
//! auto-creation on first use, and the lookups that refuse unknown names.
//! In a replicated group only the master changes topics and groups
//! ([`Broker::write_term`]); [`Broker::acknowledged_change`] answers once the
//! change's metadata record is acknowledged.

use super::error::{BrokerError, Result};
use super::groups::{ConsumeMode, GroupConfig};
use super::topic_settings::{AckPolicyUpdate, TopicSettings};
use super::topics::TopicConfig;
use super::{Broker, topics};
use crate::store::MessageType;

/// The offsets a queue holds: `min_offset..max_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRange {
    pub queue_id: u32,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// A topic and the offsets of each of its queues.
#[derive(Debug, Clone)]
pub struct TopicDescription {
    pub topic: TopicConfig,
    pub queues: Vec<QueueRange>,
}

/// A topic after a create: `created` is false when it existed (it may have grown).
#[derive(Debug, Clone)]
pub struct CreatedTopic {
    pub topic: TopicConfig,
    pub created: bool,
}

impl Broker {
    // ---- topics -------------------------------------------------------------

    /// Creates (or grows) a user topic.
    pub fn create_topic(
        &self,
        name: &str,
        queues: u32,
        message_type: MessageType,
    ) -> Result<CreatedTopic> {
        topics::validate_user_topic(name)?;
        self.write_term()?;
        let (topic, created) = self.topics.create(name, queues, message_type)?;
        Ok(CreatedTopic { topic, created })
    }

    /// Creates a user topic or updates it: queues may grow, `settings`
    /// replace the topic's, its ack policy per `ack` (the message type never
    /// changes).
    pub fn upsert_topic(
        &self,
        name: &str,
        queues: u32,
        message_type: MessageType,
        settings: TopicSettings,
        ack: AckPolicyUpdate,
    ) -> Result<CreatedTopic> {
        topics::validate_user_topic(name)?;
        self.write_term()?;
        let (topic, created) = self
            .topics
            .upsert(name, queues, message_type, settings, ack)?;
        self.refresh_log_retention();
        Ok(CreatedTopic { topic, created })
    }

    /// Deletes a topic, its queues and every group's progress on it.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.write_term()?;
        self.topics.delete(name)?;
        self.refresh_log_retention();
        self.store.delete_topic(name)?;
        self.subscriptions.lock().retain(|k, _| k.topic != name);
        self.offsets.lock().remove_where(|k| k.topic == name);
        self.persist_offsets()
    }

    /// Every topic with metadata, user and dead-letter topics alike.
    pub fn list_topics(&self) -> Vec<TopicConfig> {
        self.topics.list()
    }

    /// A topic and the offsets of each queue (expired messages excluded).
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let topic = self.topics.require(name)?;
        self.expire_topic(&topic, crate::store::now_millis())?;
        let queues = (0..topic.queues)
            .map(|queue_id| {
                let (min_offset, max_offset) =
                    self.store
                        .visible_offsets(name, queue_id, self.visibility(&topic.settings));
                QueueRange {
                    queue_id,
                    min_offset,
                    max_offset,
                }
            })
            .collect();
        Ok(TopicDescription { topic, queues })
    }

    /// The topic, auto-created (when enabled) on first use.
    pub(super) fn topic_for_use(&self, name: &str) -> Result<TopicConfig> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        if !self.config.auto_create_topics {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        topics::validate_user_topic(name)?;
        self.write_term()?;
        Ok(self
            .topics
            .create(name, self.config.default_queues, MessageType::Normal)?
            .0)
    }

    /// Refuses a topic name [`Self::topic_for_use`] would refuse, without
    /// creating anything.
    pub(super) fn check_topic_for_use(&self, name: &str) -> Result<()> {
        if self.topics.get(name).is_some() {
            return Ok(());
        }
        topics::validate_user_topic(name)
    }

    // ---- groups -------------------------------------------------------------

    /// Defaults for a group created implicitly or without settings.
    pub fn default_group(&self, name: &str, mode: ConsumeMode) -> GroupConfig {
        GroupConfig {
            name: name.to_string(),
            mode,
            max_delivery_attempts: self.config.max_delivery_attempts,
            retry_backoff_ms: self
                .config
                .retry_backoff
                .iter()
                .map(|d| d.as_millis() as u64)
                .collect(),
            dead_letter: true,
            subscriptions: Vec::new(),
            ordered: false,
        }
    }

    /// Creates or updates a group, and its dead-letter topic, so the latter can
    /// be subscribed to and inspected before anything is dead-lettered.
    pub fn upsert_group(&self, group: GroupConfig) -> Result<bool> {
        // Refusals first, so a refused group leaves no dead-letter topic.
        self.groups.check(&group)?;
        self.write_term()?;
        self.topics
            .create(&group.dead_letter_topic(), 1, MessageType::Normal)?;
        let before = self.groups.get(&group.name);
        let changed = self.groups.upsert(group.clone())?;
        self.apply_declared_subscriptions(before.as_ref(), &group);
        Ok(changed)
    }

    /// Deletes a group, its live subscriptions, members and progress.
    pub fn delete_group(&self, name: &str) -> Result<()> {
        self.write_term()?;
        self.groups.delete(name)?;
        self.subscriptions.lock().retain(|k, _| k.group != name);
        self.forget_claims(name);
        self.members.lock().remove(name);
        self.offsets.lock().remove_where(|k| k.group == name);
        self.persist_offsets()
    }

    /// Every group.
    pub fn list_groups(&self) -> Vec<GroupConfig> {
        self.groups.list()
    }

    /// The group, auto-created (when enabled) on first use.
    pub(super) fn group_for_use(&self, name: &str, mode: ConsumeMode) -> Result<GroupConfig> {
        if let Some(g) = self.groups.get(name) {
            return Ok(g);
        }
        if !self.config.auto_create_topics {
            return Err(BrokerError::GroupNotFound(name.to_string()));
        }
        let g = self.default_group(name, mode);
        self.upsert_group(g.clone())?;
        Ok(g)
    }

    /// The topic, if it has queue `queue_id`.
    pub(super) fn require_queue(&self, topic: &str, queue_id: u32) -> Result<TopicConfig> {
        let t = self.topics.require(topic)?;
        if queue_id >= t.queues {
            return Err(BrokerError::QueueNotFound {
                topic: t.name,
                queue_id,
                queues: t.queues,
            });
        }
        Ok(t)
    }

    /// A topic's message type; the topic must exist.
    pub fn topic_type(&self, name: &str) -> Result<MessageType> {
        Ok(self.topics.require(name)?.message_type)
    }

    /// A group's settings, if it exists.
    pub fn group_settings(&self, name: &str) -> Option<GroupConfig> {
        self.groups.get(name)
    }

    /// The group, which must exist.
    pub(super) fn require_group(&self, name: &str) -> Result<GroupConfig> {
        self.groups
            .get(name)
            .ok_or_else(|| BrokerError::GroupNotFound(name.to_string()))
    }
}
