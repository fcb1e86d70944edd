//! The topic registry, persisted in `<data_dir>/metadata/` as `topics.json`
//! plus the journal `topics.log` (see [`super::journal`]).
//!
//! Topic names follow the store's rule (1-127 of `A-Z a-z 0-9 _ - . %`, not
//! starting with `.`); names starting with `%` are reserved for system topics
//! such as dead-letter topics (`%DLQ%<group>`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{BrokerError, Limit, Result};
use super::journal::{Change, Decision, Named, Table};
use super::topic_settings::{AckPolicyUpdate, TopicSettings};
use crate::store::{MessageType, validate_topic_name};

/// Prefix of broker-owned topics.
pub const SYSTEM_PREFIX: char = '%';

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub name: String,
    pub queues: u32,
    #[serde(with = "message_type_name")]
    pub message_type: MessageType,
    /// Absent in metadata written before topics had settings.
    #[serde(flatten)]
    pub settings: TopicSettings,
}

impl Named for TopicConfig {
    fn name(&self) -> &str {
        &self.name
    }
}

/// How many topics, and queues per topic, a broker takes.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    /// Topics, dead-letter topics included.
    pub max_topics: usize,
    pub max_queues: u32,
    /// The broker's `max_record_size_bytes`: no topic may take more.
    pub max_message_bytes: u32,
}

/// The lowercase name users see (`normal`, `fifo`, `delay`, `transaction`).
pub fn message_type_str(t: MessageType) -> &'static str {
    match t {
        MessageType::Normal => "normal",
        MessageType::Fifo => "fifo",
        MessageType::Delay => "delay",
        MessageType::Transaction => "transaction",
    }
}

mod message_type_name {
    use super::*;
    pub fn serialize<S: serde::Serializer>(t: &MessageType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(message_type_str(*t))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MessageType, D::Error> {
        match String::deserialize(d)?.as_str() {
            "normal" => Ok(MessageType::Normal),
            "fifo" => Ok(MessageType::Fifo),
            "delay" => Ok(MessageType::Delay),
            "transaction" => Ok(MessageType::Transaction),
            other => Err(serde::de::Error::custom(format!(
                "unknown message type {other}"
            ))),
        }
    }
}

/// All topics of this broker.
#[derive(Debug)]
pub struct Topics {
    table: Table<TopicConfig>,
    limits: TopicLimits,
}

/// Checks a user-supplied topic name.
pub fn validate_user_topic(name: &str) -> Result<()> {
    super::limits::check_topic_name(name)?;
    if name.starts_with(SYSTEM_PREFIX) {
        return Err(BrokerError::invalid(
            "topic name",
            format!(
                "{}: names starting with '%' are reserved for system topics",
                super::error::brief(name)
            ),
        ));
    }
    Ok(())
}

impl Topics {
    /// Loads the topics saved in `dir`.
    pub fn open(dir: &Path, limits: TopicLimits) -> Result<Topics> {
        Ok(Topics {
            table: Table::open(dir, "topics")?,
            limits,
        })
    }

    /// Creates a topic, or grows an existing one's queues, keeping its
    /// settings. Returns the topic and whether anything changed. Shrinking or
    /// changing the type is refused.
    pub fn create(
        &self,
        name: &str,
        queues: u32,
        message_type: MessageType,
    ) -> Result<(TopicConfig, bool)> {
        self.put(name, queues, message_type, None)
    }

    /// [`Self::create`] that also replaces the topic's settings (its ack
    /// policy per `ack`).
    pub fn upsert(
        &self,
        name: &str,
        queues: u32,
        message_type: MessageType,
        settings: TopicSettings,
        ack: AckPolicyUpdate,
    ) -> Result<(TopicConfig, bool)> {
        settings.check(self.limits.max_message_bytes)?;
        self.put(name, queues, message_type, Some((settings, ack)))
    }

    /// Creates or updates a topic; `settings: None` keeps an existing topic's.
    fn put(
        &self,
        name: &str,
        queues: u32,
        message_type: MessageType,
        settings: Option<(TopicSettings, AckPolicyUpdate)>,
    ) -> Result<(TopicConfig, bool)> {
        validate_topic_name(name)?;
        let max_queues = self.limits.max_queues;
        if queues == 0 || queues > max_queues {
            return Err(BrokerError::invalid(
                "queue count",
                format!(
                    "{queues}: a topic has 1 to {max_queues} queues on this broker (max_queues_per_topic)"
                ),
            ));
        }
        self.table.update(|topics| {
            let existing = topics.get(name);
            // Resolved under the table's lock: a concurrent upsert's policy
            // is kept, not one read before it.
            let settings = settings.map(|(s, ack)| match (ack, existing) {
                (AckPolicyUpdate::Keep, Some(e)) => TopicSettings {
                    ack_policy: e.settings.ack_policy,
                    ..s
                },
                _ => s,
            });
            if let Some(existing) = existing {
                let conflict = |reason: &str| BrokerError::TopicConflict {
                    name: name.to_string(),
                    queues: existing.queues,
                    message_type: message_type_str(existing.message_type).into(),
                    reason: reason.into(),
                };
                if existing.message_type != message_type {
                    return Err(conflict("the message type of a topic cannot change"));
                }
                if queues < existing.queues {
                    return Err(conflict("the queue count of a topic cannot shrink"));
                }
                if queues == existing.queues && settings.is_none_or(|s| s == existing.settings) {
                    return Ok(Decision::unchanged((existing.clone(), false)));
                }
            } else if topics.len() >= self.limits.max_topics {
                return Err(BrokerError::LimitReached {
                    limit: Limit::Topics,
                    max: self.limits.max_topics,
                });
            }
            let topic = TopicConfig {
                name: name.to_string(),
                queues,
                message_type,
                settings: settings
                    .or(existing.map(|e| e.settings))
                    .unwrap_or_default(),
            };
            Ok(Decision::change(Change::Put(topic.clone()), (topic, true)))
        })
    }

    pub fn get(&self, name: &str) -> Option<TopicConfig> {
        self.table.get(name)
    }

    /// A topic's own settings (the broker's for a topic without metadata),
    /// without copying its config.
    pub fn settings(&self, name: &str) -> TopicSettings {
        self.table
            .read_locked(|topics| topics.get(name).map(|t| t.settings))
            .unwrap_or_default()
    }

    /// The topic, or TOPIC_NOT_FOUND.
    pub fn require(&self, name: &str) -> Result<TopicConfig> {
        self.get(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
    }

    pub fn delete(&self, name: &str) -> Result<TopicConfig> {
        self.table.update(|topics| {
            let removed = topics
                .get(name)
                .cloned()
                .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
            Ok(Decision::change(Change::Delete(name.to_string()), removed))
        })
    }

    pub fn list(&self) -> Vec<TopicConfig> {
        self.table.list()
    }

    pub fn count(&self) -> usize {
        self.table.count()
    }

    /// The table itself, for replicating it (see `super::replicated`).
    pub(super) fn table(&self) -> &Table<TopicConfig> {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    const LIMITS: TopicLimits = TopicLimits {
        max_topics: 3,
        max_queues: 16,
        max_message_bytes: 4096,
    };
    const REPLACE: AckPolicyUpdate = AckPolicyUpdate::Replace;

    #[test]
    fn create_grow_conflict_persist() {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::open(dir.path(), LIMITS).unwrap();
        assert!(topics.create("a", 4, MessageType::Normal).unwrap().1);
        assert!(!topics.create("a", 4, MessageType::Normal).unwrap().1);
        assert!(topics.create("a", 8, MessageType::Normal).unwrap().1);
        assert_eq!(
            topics
                .create("a", 2, MessageType::Normal)
                .unwrap_err()
                .code(),
            Reason::TopicConflict
        );
        assert_eq!(
            topics.create("a", 8, MessageType::Fifo).unwrap_err().code(),
            Reason::TopicConflict
        );
        assert_eq!(
            topics
                .create("b", 0, MessageType::Normal)
                .unwrap_err()
                .code(),
            Reason::InvalidArgument
        );
        assert_eq!(
            topics
                .create("b c", 1, MessageType::Normal)
                .unwrap_err()
                .code(),
            Reason::InvalidArgument
        );
        drop(topics);
        let topics = Topics::open(dir.path(), LIMITS).unwrap();
        assert_eq!(topics.require("a").unwrap().queues, 8);
        assert_eq!(topics.delete("a").unwrap().name, "a");
        assert_eq!(
            topics.require("a").unwrap_err().code(),
            Reason::TopicNotFound
        );
        assert_eq!(
            validate_user_topic("%DLQ%x").unwrap_err().code(),
            Reason::InvalidArgument
        );
    }

    #[test]
    fn topic_and_queue_counts_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::open(dir.path(), LIMITS).unwrap();
        let refused = topics.create("a", 17, MessageType::Normal).unwrap_err();
        assert_eq!(refused.code(), Reason::InvalidArgument);
        assert!(refused.to_string().contains("1 to 16"), "{refused}");
        for name in ["a", "b", "c"] {
            topics.create(name, 16, MessageType::Normal).unwrap();
        }
        let refused = topics.create("d", 1, MessageType::Normal).unwrap_err();
        assert_eq!(refused.code(), Reason::TooManyTopics);
        assert_eq!(topics.count(), 3);
        // Existing topics are still answered; a deleted one makes room.
        assert!(!topics.create("a", 16, MessageType::Normal).unwrap().1);
        topics.delete("a").unwrap();
        assert!(topics.create("d", 1, MessageType::Normal).unwrap().1);
    }

    #[test]
    fn settings_are_upserted_kept_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::open(dir.path(), LIMITS).unwrap();
        let limited = TopicSettings::from_wire(1024, 60_000);
        let (t, changed) = topics
            .upsert("a", 4, MessageType::Normal, limited, REPLACE)
            .unwrap();
        assert!(changed);
        assert_eq!(t.settings, limited);
        // The same settings again change nothing; new ones replace them.
        assert!(
            !topics
                .upsert("a", 4, MessageType::Normal, limited, REPLACE)
                .unwrap()
                .1
        );
        let wider = TopicSettings::from_wire(2048, 0);
        assert!(
            topics
                .upsert("a", 4, MessageType::Normal, wider, REPLACE)
                .unwrap()
                .1
        );
        // A plain create (auto-create, growing) keeps them.
        assert_eq!(
            topics
                .create("a", 8, MessageType::Normal)
                .unwrap()
                .0
                .settings,
            wider
        );
        let refused = topics
            .upsert(
                "a",
                8,
                MessageType::Normal,
                TopicSettings::from_wire(4097, 0),
                REPLACE,
            )
            .unwrap_err();
        assert_eq!(refused.code(), Reason::InvalidArgument);
        assert!(refused.to_string().contains("4097"), "{refused}");
        assert!(refused.to_string().contains("4096"), "{refused}");
        drop(topics);
        let topics = Topics::open(dir.path(), LIMITS).unwrap();
        let reopened = topics.require("a").unwrap();
        assert_eq!((reopened.queues, reopened.settings), (8, wider));
    }

    #[test]
    fn an_upsert_without_an_ack_policy_keeps_the_topics() {
        use crate::replication::AckPolicy;
        let dir = tempfile::tempdir().unwrap();
        let topics = Topics::open(dir.path(), LIMITS).unwrap();
        let keep = AckPolicyUpdate::Keep;
        let with = |p| TopicSettings {
            ack_policy: p,
            ..TopicSettings::from_wire(1024, 0)
        };
        // A new topic takes the settings' policy either way.
        let (t, _) = topics
            .upsert(
                "a",
                4,
                MessageType::Normal,
                with(Some(AckPolicy::Quorum)),
                keep,
            )
            .unwrap();
        assert_eq!(t.settings.ack_policy, Some(AckPolicy::Quorum));
        // Growing it without one keeps quorum (the other settings replace).
        let (t, changed) = topics
            .upsert("a", 8, MessageType::Normal, TopicSettings::default(), keep)
            .unwrap();
        assert!(changed);
        let quorum_only = TopicSettings {
            ack_policy: Some(AckPolicy::Quorum),
            ..TopicSettings::default()
        };
        assert_eq!(t.settings, quorum_only);
        // Replacing it clears it: the broker's again.
        let (t, _) = topics
            .upsert("a", 8, MessageType::Normal, with(None), REPLACE)
            .unwrap();
        assert_eq!(t.settings.ack_policy, None);
    }

    #[test]
    fn metadata_without_settings_loads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("topics.json"),
            r#"[{"name": "old", "queues": 4, "message_type": "fifo"}]"#,
        )
        .unwrap();
        let topics = Topics::open(dir.path(), LIMITS).unwrap();
        let old = topics.require("old").unwrap();
        assert_eq!(old.message_type, MessageType::Fifo);
        assert_eq!(old.settings, TopicSettings::default());
    }
}
