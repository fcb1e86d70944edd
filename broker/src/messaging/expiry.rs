//! Per-topic retention on the shared commit log.
//!
//! A topic with its own retention hides messages stored longer ago than it:
//! each of its consume queues' minimum offset moves past them, so no consumer
//! is handed one (push, pull, reads by offset) and lag and `describe` count
//! from the new minimum. Queues are expired when a consumer reads them (one
//! consume-queue entry is compared when nothing expired), when a topic is
//! described, and by the maintenance pass for queues nobody reads.
//!
//! Segments stay until every topic is done with them: the store keeps them for
//! the longest retention any topic has, never less than the broker's own
//! `retention` (topics without one, dead-letter topics and records of deleted
//! topics follow it). The disk-pressure policy still applies on top.

use std::time::Duration;

use super::Broker;
use super::error::Result;
use super::topics::TopicConfig;
use crate::store::now_millis;

impl Broker {
    /// Moves a queue's minimum offset past the messages its topic's retention
    /// expired by `now` (ms).
    pub(super) fn expire_queue(&self, topic: &TopicConfig, queue_id: u32, now: i64) -> Result<()> {
        match topic.settings.expiry_cutoff(now) {
            Some(cutoff) => Ok(self.store.expire_queue(&topic.name, queue_id, cutoff)?),
            None => Ok(()),
        }
    }

    /// Expires every queue of `topic`.
    pub(super) fn expire_topic(&self, topic: &TopicConfig, now: i64) -> Result<()> {
        (0..topic.queues).try_for_each(|q| self.expire_queue(topic, q, now))
    }

    /// The maintenance pass: expires every topic with its own retention.
    pub(super) fn expire_topics(&self) -> Result<()> {
        let now = now_millis();
        self.topics
            .list()
            .iter()
            .filter(|t| t.settings.retention_ms.is_some())
            .try_for_each(|t| self.expire_topic(t, now))
    }

    /// Tells the store how long segments must stay: the longest retention of
    /// any topic, at least the broker's own.
    pub(super) fn refresh_log_retention(&self) {
        let longest_ms = self
            .topics
            .list()
            .iter()
            .filter_map(|t| t.settings.retention_ms)
            .max()
            .unwrap_or(0);
        let retention = self
            .store
            .config()
            .retention
            .max(Duration::from_millis(longest_ms));
        self.store.set_log_retention(retention);
    }
}
