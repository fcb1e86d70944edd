//! Per-topic settings that override the broker's own: the largest message a
//! topic takes, how long its messages stay deliverable and, in a replicated
//! group, when a send to it is acknowledged.
//!
//! Sizes count what the broker-wide `max_record_size_bytes` counts: the
//! encoded record of the message in its own topic (a 72-byte header, topic
//! name, tag, keys, properties and body), so a topic limit is comparable with
//! the broker's.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{BrokerError, Result};
use crate::replication::AckPolicy;

/// Longest per-topic retention: ten years (keeps cutoffs far from overflow).
pub const MAX_TOPIC_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A topic's own settings; `None` means the broker's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    /// Largest encoded message the topic takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u32>,
    /// Messages stored longer ago than this are no longer delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// When a send is acknowledged (replicated groups; a standalone broker
    /// acknowledges what it stored either way). Absent in metadata written
    /// before topics had it: the broker's `[replication] ack_policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_policy: Option<AckPolicy>,
}

/// What an upsert does with an existing topic's ack policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicyUpdate {
    /// Keeps it, whatever the upsert's settings say (a new topic takes
    /// theirs): a request that leaves the policy out, such as one only adding
    /// queues, must not turn a quorum topic into one that follows a `master`
    /// default.
    Keep,
    /// Replaces it with the settings' (`None`: the topic follows the
    /// broker's).
    Replace,
}

impl TopicSettings {
    /// The settings of the wire's fields, where 0 means the broker's.
    pub fn from_wire(max_message_bytes: u32, retention_ms: u64) -> TopicSettings {
        TopicSettings {
            max_message_bytes: (max_message_bytes != 0).then_some(max_message_bytes),
            retention_ms: (retention_ms != 0).then_some(retention_ms),
            ack_policy: None,
        }
    }

    /// Refuses a size limit above the broker's own (`broker_max`, its
    /// `max_record_size_bytes`) and a retention of 0 or above
    /// [`MAX_TOPIC_RETENTION`].
    pub fn check(&self, broker_max: u32) -> Result<()> {
        if let Some(max) = self.max_message_bytes
            && max > broker_max
        {
            return Err(BrokerError::invalid(
                "max_message_bytes",
                format!(
                    "{max} is more than this broker takes: its max_record_size_bytes is {broker_max}"
                ),
            ));
        }
        let longest = MAX_TOPIC_RETENTION.as_millis() as u64;
        if let Some(ms) = self.retention_ms
            && !(1..=longest).contains(&ms)
        {
            return Err(BrokerError::invalid(
                "retention_ms",
                format!("{ms} ms; a topic's retention is 1 to {longest} ms (ten years)"),
            ));
        }
        Ok(())
    }

    /// Refuses a message of `size` encoded bytes larger than the topic's limit.
    pub fn check_size(&self, topic: &str, size: usize) -> Result<()> {
        match self.max_message_bytes {
            Some(max) if size > max as usize => Err(BrokerError::TopicMessageTooLarge {
                topic: topic.to_string(),
                size,
                max,
            }),
            _ => Ok(()),
        }
    }

    /// The store time before which the topic's messages are expired, if it has
    /// its own retention.
    pub fn expiry_cutoff(&self, now_ms: i64) -> Option<i64> {
        self.retention_ms
            .map(|ms| now_ms.saturating_sub(ms.min(i64::MAX as u64) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[test]
    fn limits_are_checked_against_the_broker() {
        let settings = TopicSettings::from_wire(2048, 0);
        settings.check(4096).unwrap();
        let refused = settings.check(1024).unwrap_err();
        assert_eq!(refused.code(), Reason::InvalidArgument);
        assert_eq!(
            refused.to_string(),
            "invalid max_message_bytes: 2048 is more than this broker takes: its max_record_size_bytes is 1024"
        );
        let too_long = TopicSettings {
            retention_ms: Some(MAX_TOPIC_RETENTION.as_millis() as u64 + 1),
            ..TopicSettings::default()
        };
        assert_eq!(
            too_long.check(4096).unwrap_err().code(),
            Reason::InvalidArgument
        );
        assert_eq!(TopicSettings::from_wire(0, 0), TopicSettings::default());
    }

    #[test]
    fn the_ack_policy_is_stored_by_name() {
        let master: TopicSettings = serde_json::from_str(r#"{"ack_policy":"master"}"#).unwrap();
        assert_eq!(master.ack_policy, Some(AckPolicy::Master));
        assert_eq!(
            serde_json::to_string(&master).unwrap(),
            r#"{"ack_policy":"master"}"#
        );
        assert_eq!(
            serde_json::to_string(&TopicSettings::default()).unwrap(),
            "{}"
        );
        let unknown = serde_json::from_str::<TopicSettings>(r#"{"ack_policy":"all"}"#);
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown variant `all`")
        );
    }

    #[test]
    fn oversize_names_size_and_limit() {
        let settings = TopicSettings::from_wire(1024, 0);
        settings.check_size("orders", 1024).unwrap();
        let refused = settings.check_size("orders", 2048).unwrap_err();
        assert_eq!(refused.code(), Reason::MessageTooLarge);
        assert_eq!(
            refused.to_string(),
            "message is 2048 bytes; topic \"orders\" takes at most 1024 (its max_message_bytes)"
        );
        TopicSettings::default()
            .check_size("orders", usize::MAX)
            .unwrap();
    }
}
