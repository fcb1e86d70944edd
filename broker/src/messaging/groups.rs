//! The consumer-group registry, persisted in `<data_dir>/metadata/` as
//! `groups.json` plus the journal `groups.log` (see [`super::journal`]).
//! Group names follow the topic-name rule.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{BrokerError, Limit, Result, brief};
use super::journal::{Change, Decision, Named, Table};
use super::limits;
use crate::filter::FilterSpec;

/// How a group shares messages among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsumeMode {
    /// Each message goes to one member.
    #[default]
    Clustering,
    /// Every member gets every message, with its own progress.
    Broadcast,
}

/// A group's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub name: String,
    pub mode: ConsumeMode,
    /// Deliveries before a message moves to `%DLQ%<group>`.
    pub max_delivery_attempts: u32,
    /// Delay before redelivery n is `retry_backoff_ms[min(n, len) - 1]`.
    pub retry_backoff_ms: Vec<u64>,
    /// Move messages that used up their attempts to `%DLQ%<group>`; when false
    /// they are dropped (logged and counted).
    #[serde(default = "enabled")]
    pub dead_letter: bool,
    /// The group's filter per topic, as declared (see `subscriptions.rs`);
    /// empty: each topic's first subscriber sets it.
    #[serde(default)]
    pub subscriptions: Vec<GroupSubscription>,
    /// Clustering deliveries in queue order, one message in flight per queue.
    #[serde(default)]
    pub ordered: bool,
}

/// A group's declared filter on one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSubscription {
    pub topic: String,
    pub filter: FilterSpec,
}

/// The most subscriptions a group declares (a heartbeat names at most as many
/// topics).
pub const MAX_GROUP_SUBSCRIPTIONS: usize = limits::MAX_HEARTBEAT_TOPICS;

impl Named for GroupConfig {
    fn name(&self) -> &str {
        &self.name
    }
}

fn enabled() -> bool {
    true
}

impl GroupConfig {
    /// The delay before redelivering a message that has been delivered `attempts`
    /// times.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) as usize - 1).min(self.retry_backoff_ms.len().saturating_sub(1));
        Duration::from_millis(self.retry_backoff_ms.get(i).copied().unwrap_or(1000))
    }

    /// The dead-letter topic of this group.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}{}", limits::DEAD_LETTER_PREFIX, self.name)
    }

    pub fn validate(&self) -> Result<()> {
        limits::check_group_name("group name", &self.name)?;
        if self.max_delivery_attempts == 0 {
            return Err(BrokerError::invalid(
                "max_delivery_attempts",
                "must be at least 1",
            ));
        }
        limits::check_retry_backoff(&self.retry_backoff_ms)?;
        limits::check_count(
            "subscriptions",
            self.subscriptions.len(),
            MAX_GROUP_SUBSCRIPTIONS,
        )?;
        let mut topics = std::collections::HashSet::new();
        for s in &self.subscriptions {
            limits::check_topic_name(&s.topic)?;
            if !topics.insert(s.topic.as_str()) {
                return Err(BrokerError::invalid(
                    "subscriptions",
                    format!("topic {} is declared twice", brief(&s.topic)),
                ));
            }
            s.filter.parse().map_err(|e| crate::filter::FilterError {
                message: format!("{} (subscription on topic {})", e.message, brief(&s.topic)),
                ..e
            })?;
        }
        Ok(())
    }

    /// The declared subscription on `topic`, if any.
    pub fn declared(&self, topic: &str) -> Option<&GroupSubscription> {
        self.subscriptions.iter().find(|s| s.topic == topic)
    }
}

/// All groups of this broker.
#[derive(Debug)]
pub struct Groups {
    table: Table<GroupConfig>,
    max_groups: usize,
}

impl Groups {
    /// Loads the groups saved in `dir`; at most `max_groups` may exist.
    pub fn open(dir: &Path, max_groups: usize) -> Result<Groups> {
        Ok(Groups {
            table: Table::open(dir, "groups")?,
            max_groups,
        })
    }

    /// Refuses what [`Groups::upsert`] would refuse, changing nothing: checked
    /// before the group's dead-letter topic is created.
    pub fn check(&self, group: &GroupConfig) -> Result<()> {
        group.validate()?;
        if self.table.count() >= self.max_groups && self.get(&group.name).is_none() {
            return Err(self.full());
        }
        Ok(())
    }

    fn full(&self) -> BrokerError {
        BrokerError::LimitReached {
            limit: Limit::Groups,
            max: self.max_groups,
        }
    }

    /// Creates or updates a group. Returns whether anything changed.
    pub fn upsert(&self, group: GroupConfig) -> Result<bool> {
        group.validate()?;
        self.table.update(|groups| match groups.get(&group.name) {
            Some(existing) if *existing == group => Ok(Decision::unchanged(false)),
            None if groups.len() >= self.max_groups => Err(self.full()),
            _ => Ok(Decision::change(Change::Put(group), true)),
        })
    }

    pub fn get(&self, name: &str) -> Option<GroupConfig> {
        self.table.get(name)
    }

    pub fn delete(&self, name: &str) -> Result<GroupConfig> {
        self.table.update(|groups| {
            let removed = groups
                .get(name)
                .cloned()
                .ok_or_else(|| BrokerError::GroupNotFound(name.to_string()))?;
            Ok(Decision::change(Change::Delete(name.to_string()), removed))
        })
    }

    pub fn list(&self) -> Vec<GroupConfig> {
        self.table.list()
    }

    /// The table itself, for replicating it (see `super::replicated`).
    pub(super) fn table(&self) -> &Table<GroupConfig> {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[test]
    fn backoff_uses_the_schedule_then_its_last_step() {
        let g = GroupConfig {
            name: "g".into(),
            mode: ConsumeMode::Clustering,
            max_delivery_attempts: 16,
            retry_backoff_ms: vec![10, 20, 30],
            dead_letter: true,
            subscriptions: Vec::new(),
            ordered: false,
        };
        let ms: Vec<u64> = (1..=5).map(|a| g.backoff(a).as_millis() as u64).collect();
        assert_eq!(ms, vec![10, 20, 30, 30, 30]);
        assert_eq!(g.dead_letter_topic(), "%DLQ%g");
    }

    #[test]
    fn upsert_persists_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::open(dir.path(), 1).unwrap();
        let g = GroupConfig {
            name: "g".into(),
            mode: ConsumeMode::Broadcast,
            max_delivery_attempts: 3,
            retry_backoff_ms: vec![100],
            dead_letter: true,
            subscriptions: vec![GroupSubscription {
                topic: "t".into(),
                filter: FilterSpec::tags("A"),
            }],
            ordered: true,
        };
        assert!(groups.upsert(g.clone()).unwrap());
        assert!(!groups.upsert(g.clone()).unwrap());
        let bad = GroupConfig {
            max_delivery_attempts: 0,
            ..g.clone()
        };
        assert_eq!(
            groups.upsert(bad).unwrap_err().code(),
            Reason::InvalidArgument
        );
        let other = GroupConfig {
            name: "h".into(),
            ..g.clone()
        };
        assert_eq!(
            groups.check(&other).unwrap_err().code(),
            Reason::TooManyGroups
        );
        assert_eq!(
            groups.upsert(other).unwrap_err().code(),
            Reason::TooManyGroups
        );
        drop(groups);
        assert_eq!(Groups::open(dir.path(), 1).unwrap().get("g"), Some(g));
    }
}
