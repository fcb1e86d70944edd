//! The topic registry, persisted in `<data_dir>/metadata/topics.json`.
//!
//! Topic names follow the store's rule (1-127 of `A-Z a-z 0-9 _ - . %`, not
//! starting with `.`); names starting with `%` are reserved for system topics
//! such as dead-letter topics (`%DLQ%<group>`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::error::{BrokerError, Result};
use super::metadata;
use crate::store::{MessageType, validate_topic_name};

/// Most queues a topic may have.
pub const MAX_QUEUES: u32 = 4096;

/// Prefix of broker-owned topics.
pub const SYSTEM_PREFIX: char = '%';

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub name: String,
    pub queues: u32,
    #[serde(with = "message_type_name")]
    pub message_type: MessageType,
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
    path: PathBuf,
    topics: RwLock<BTreeMap<String, TopicConfig>>,
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
    pub fn open(path: PathBuf) -> Result<Topics> {
        let list: Vec<TopicConfig> = metadata::load(&path)?;
        Ok(Topics {
            path,
            topics: RwLock::new(list.into_iter().map(|t| (t.name.clone(), t)).collect()),
        })
    }

    fn persist(&self, topics: &BTreeMap<String, TopicConfig>) -> Result<()> {
        let list: Vec<&TopicConfig> = topics.values().collect();
        Ok(metadata::save(&self.path, &list)?)
    }

    /// Creates a topic, or grows an existing one's queues. Returns the topic and
    /// whether anything changed. Shrinking or changing the type is refused.
    pub fn create(
        &self,
        name: &str,
        queues: u32,
        message_type: MessageType,
    ) -> Result<(TopicConfig, bool)> {
        validate_topic_name(name)?;
        if queues == 0 || queues > MAX_QUEUES {
            return Err(BrokerError::invalid(
                "queue count",
                format!("{queues}: a topic has 1 to {MAX_QUEUES} queues"),
            ));
        }
        let mut topics = self.topics.write();
        if let Some(existing) = topics.get(name).cloned() {
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
            if queues == existing.queues {
                return Ok((existing, false));
            }
        }
        let topic = TopicConfig {
            name: name.to_string(),
            queues,
            message_type,
        };
        topics.insert(name.to_string(), topic.clone());
        self.persist(&topics)?;
        Ok((topic, true))
    }

    pub fn get(&self, name: &str) -> Option<TopicConfig> {
        self.topics.read().get(name).cloned()
    }

    /// The topic, or TOPIC_NOT_FOUND.
    pub fn require(&self, name: &str) -> Result<TopicConfig> {
        self.get(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))
    }

    pub fn delete(&self, name: &str) -> Result<TopicConfig> {
        let mut topics = self.topics.write();
        let removed = topics
            .remove(name)
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_string()))?;
        self.persist(&topics)?;
        Ok(removed)
    }

    pub fn list(&self) -> Vec<TopicConfig> {
        self.topics.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_grow_conflict_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topics.json");
        let topics = Topics::open(path.clone()).unwrap();
        assert!(topics.create("a", 4, MessageType::Normal).unwrap().1);
        assert!(!topics.create("a", 4, MessageType::Normal).unwrap().1);
        assert!(topics.create("a", 8, MessageType::Normal).unwrap().1);
        assert_eq!(
            topics
                .create("a", 2, MessageType::Normal)
                .unwrap_err()
                .code(),
            "TOPIC_CONFLICT"
        );
        assert_eq!(
            topics.create("a", 8, MessageType::Fifo).unwrap_err().code(),
            "TOPIC_CONFLICT"
        );
        assert_eq!(
            topics
                .create("b", 0, MessageType::Normal)
                .unwrap_err()
                .code(),
            "INVALID_ARGUMENT"
        );
        assert_eq!(
            topics
                .create("b c", 1, MessageType::Normal)
                .unwrap_err()
                .code(),
            "INVALID_ARGUMENT"
        );
        drop(topics);
        let topics = Topics::open(path).unwrap();
        assert_eq!(topics.require("a").unwrap().queues, 8);
        assert_eq!(topics.delete("a").unwrap().name, "a");
        assert_eq!(topics.require("a").unwrap_err().code(), "TOPIC_NOT_FOUND");
        assert_eq!(
            validate_user_topic("%DLQ%x").unwrap_err().code(),
            "INVALID_ARGUMENT"
        );
    }
}
