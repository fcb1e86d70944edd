//! The `[replication]` table: how many members a broker group has, when the
//! master acknowledges a write, and, for groups without an operator, a static
//! assignment of roles.

use std::time::Duration;

use dduomq_replication::GroupLayout;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// The shortest `replica_lag_max`: the master checks lag every half of it
/// and sends heartbeats every quarter, so it must leave those a usable
/// period (a zero period panics the timer; a tiny one spins).
const MIN_REPLICA_LAG_MAX: Duration = Duration::from_millis(10);

/// When the master acknowledges a write: the broker's default, and a
/// topic's own (its metadata stores it by these lowercase names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckPolicy {
    /// Once every member of the in-sync set stored it, and that set is at
    /// least `min_in_sync` members: no acknowledged write is lost on failover.
    Quorum,
    /// Once the master stored it; a failover can lose the unreplicated tail.
    Master,
}

impl AckPolicy {
    /// The safer of two policies: a record two policies apply to (a
    /// transaction's outcome under the broker's and its topic's) waits for
    /// the one that loses nothing if either does.
    pub fn stricter(self, other: AckPolicy) -> AckPolicy {
        if self == AckPolicy::Quorum || other == AckPolicy::Quorum {
            AckPolicy::Quorum
        } else {
            AckPolicy::Master
        }
    }
}

/// The `[replication]` table of the broker config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Members per group; 1 = no replication (every broker its own group).
    pub factor: u32,
    pub ack_policy: AckPolicy,
    /// Smallest recorded in-sync set with which the master acknowledges
    /// (quorum policy); 0 means a majority, `factor / 2 + 1`.
    pub min_in_sync: u32,
    /// A follower that has not held the master's end for this long (or is
    /// disconnected) is proposed out of the in-sync set.
    #[serde(with = "humantime_serde")]
    pub replica_lag_max: Duration,
    /// Longest a write waits for its acknowledgements; then it fails with
    /// QUORUM_TIMEOUT.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Static groups (no operator): every member's gRPC address, index =
    /// member. Empty: roles come from the controller (AssignRole).
    pub peers: Vec<String>,
    /// Static groups: the member that is master (epoch 1, a lease that never
    /// ends). No failover.
    pub static_master: Option<u32>,
}

impl ReplicationConfig {
    /// Whether this broker replicates at all.
    pub fn enabled(&self) -> bool {
        self.factor > 1
    }

    /// `min_in_sync` with 0 resolved to the majority.
    pub fn min_in_sync(&self) -> u32 {
        match self.min_in_sync {
            0 => self.layout().default_min_in_sync(),
            n => n,
        }
    }

    /// How broker ordinals form groups.
    pub fn layout(&self) -> GroupLayout {
        GroupLayout::new(self.factor)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| {
            Err(ConfigError::InvalidReplication { key, reason })
        };
        if self.factor == 0 {
            return invalid("factor", "must be at least 1".into());
        }
        if self.min_in_sync > self.factor {
            return invalid(
                "min_in_sync",
                format!("must be at most factor ({})", self.factor),
            );
        }
        if self.ack_timeout.is_zero() {
            return invalid("ack_timeout", "must be longer than 0s".into());
        }
        if self.replica_lag_max < MIN_REPLICA_LAG_MAX {
            return invalid(
                "replica_lag_max",
                format!("must be at least {MIN_REPLICA_LAG_MAX:?}"),
            );
        }
        if !self.peers.is_empty() && self.peers.len() != self.factor as usize {
            return invalid(
                "peers",
                format!(
                    "lists {} addresses; a static group lists one per member (factor {})",
                    self.peers.len(),
                    self.factor
                ),
            );
        }
        match self.static_master {
            Some(_) if self.peers.is_empty() => invalid(
                "static_master",
                "needs peers (the group's addresses)".into(),
            ),
            Some(m) if m >= self.factor => invalid(
                "static_master",
                format!("must be a member index below factor ({})", self.factor),
            ),
            None if !self.peers.is_empty() => invalid(
                "static_master",
                "must name the master of a static group (peers is set)".into(),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    #[test]
    fn defaults_are_no_replication() {
        let cfg = BrokerConfig::load(None).unwrap().replication;
        cfg.validate().unwrap();
        assert!(!cfg.enabled());
        assert_eq!(cfg.factor, 1);
        assert_eq!(cfg.ack_policy, AckPolicy::Quorum);
        assert_eq!(cfg.min_in_sync(), 1);
        assert!(cfg.peers.is_empty());
        assert_eq!(cfg.static_master, None);
    }

    #[test]
    fn the_majority_is_the_default_quorum() {
        let mut cfg = BrokerConfig::load(None).unwrap().replication;
        for (factor, majority) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            cfg.factor = factor;
            assert_eq!(cfg.min_in_sync(), majority, "factor {factor}");
        }
        cfg.min_in_sync = 3;
        assert_eq!(cfg.min_in_sync(), 3);
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        for (lines, key) in [
            ("factor = 0", "factor"),
            ("factor = 3\nmin_in_sync = 4", "min_in_sync"),
            ("ack_timeout = \"0s\"", "ack_timeout"),
            ("replica_lag_max = \"0s\"", "replica_lag_max"),
            ("replica_lag_max = \"1ns\"", "replica_lag_max"),
            ("replica_lag_max = \"9ms\"", "replica_lag_max"),
            ("factor = 3\npeers = [\"a:1\", \"b:1\"]", "peers"),
            ("factor = 2\npeers = [\"a:1\", \"b:1\"]", "static_master"),
            (
                "factor = 2\npeers = [\"a:1\", \"b:1\"]\nstatic_master = 2",
                "static_master",
            ),
            ("static_master = 0", "static_master"),
        ] {
            std::fs::write(&path, format!("[replication]\n{lines}\n")).unwrap();
            let cfg = BrokerConfig::load(Some(&path)).unwrap();
            let err = cfg.replication.validate().unwrap_err().to_string();
            assert!(
                err.contains(&format!("[replication] {key}")),
                "{lines}: {err}"
            );
        }
    }
}
