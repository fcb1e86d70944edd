//! Broker configuration: `config/dduomq.toml` (embedded) is the single source of
//! defaults; a user file overrides any subset of it; flags and environment
//! variables override both (applied by the binary).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::auth::AuthConfig;
use crate::replication::ReplicationConfig;
use crate::store::StoreConfig;
use crate::tls::TlsConfig;

/// The embedded default configuration file.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/dduomq.toml");

/// Everything the broker reads from its configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub broker: MessagingConfig,
    pub store: StoreConfig,
    pub replication: ReplicationConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
}

/// The `[broker]` table: network endpoints and messaging defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingConfig {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (health, readiness, metrics).
    pub http_addr: SocketAddr,
    /// Address clients are told to use; empty means `grpc_addr`.
    pub advertised_address: String,
    /// A listener of its own for the RocketMQ 5 protocol; unset, it is served
    /// on `grpc_addr` beside ours.
    #[serde(default)]
    pub rocketmq_addr: Option<SocketAddr>,
    /// Create unknown topics and groups on first use.
    pub auto_create_topics: bool,
    /// Queues of an auto-created topic.
    pub default_queues: u32,
    /// A member without a heartbeat for this long leaves its group.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Lease length when a consumer does not choose one.
    #[serde(with = "humantime_serde")]
    pub default_invisible_duration: Duration,
    /// Longest lease a consumer may ask for (Receive, ChangeInvisibleDuration).
    #[serde(with = "humantime_serde")]
    pub max_invisible_duration: Duration,
    /// Deliveries before a message is dead-lettered, for new groups.
    pub max_delivery_attempts: u32,
    /// Redelivery backoff schedule for new groups.
    #[serde(deserialize_with = "durations")]
    pub retry_backoff: Vec<Duration>,
    /// How often consumer progress is saved.
    #[serde(with = "humantime_serde")]
    pub offsets_persist_interval: Duration,
    /// After SIGTERM, how long in-flight requests may take before connections are
    /// closed anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Record and serve Prometheus metrics.
    pub metrics: bool,
    /// Longest long-poll a pull may ask for.
    #[serde(with = "humantime_serde")]
    pub max_pull_wait: Duration,
    /// Furthest ahead a delayed message may be scheduled.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// A transaction unresolved this long after its half message was stored is
    /// checked with its producer group.
    #[serde(with = "humantime_serde")]
    pub transaction_check_after: Duration,
    /// Time between checks of the same transaction.
    #[serde(with = "humantime_serde")]
    pub transaction_check_interval: Duration,
    /// Checks before an unresolved transaction is rolled back.
    pub transaction_max_checks: u32,
    /// Most open connections on the gRPC port; more are closed at once.
    pub max_connections: usize,
    /// Most open connections on the HTTP port; more are closed at once.
    pub max_http_connections: usize,
    /// A connection without an open request or stream (gRPC), or without
    /// traffic (HTTP), for this long is closed.
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
    /// HTTP/2 PING interval on gRPC connections, and how long an answer may
    /// take before the connection is taken as dead and closed.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Most open Receive streams on this broker, of one consumer group, and of
    /// one client id.
    pub max_receive_streams: usize,
    pub max_receive_streams_per_group: usize,
    pub max_receive_streams_per_client: usize,
    /// Most queues of one topic.
    pub max_queues_per_topic: u32,
    /// Most topics (dead-letter topics included) and groups on this broker.
    pub max_topics: usize,
    pub max_groups: usize,
}

/// Largest `max_queues_per_topic`: each queue has its own consume-queue files.
pub const MAX_QUEUES_PER_TOPIC: u32 = 65536;

impl MessagingConfig {
    /// Checks the limits: each must allow something.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        let counts = [
            ("max_connections", self.max_connections),
            ("max_http_connections", self.max_http_connections),
            ("max_receive_streams", self.max_receive_streams),
            (
                "max_receive_streams_per_group",
                self.max_receive_streams_per_group,
            ),
            (
                "max_receive_streams_per_client",
                self.max_receive_streams_per_client,
            ),
            ("max_topics", self.max_topics),
            ("max_groups", self.max_groups),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return invalid(key, "must be at least 1");
        }
        let durations = [
            ("connection_idle_timeout", self.connection_idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        if let Some((key, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return invalid(key, "must be longer than 0s");
        }
        if !(1..=MAX_QUEUES_PER_TOPIC).contains(&self.max_queues_per_topic) {
            return invalid("max_queues_per_topic", "must be 1 to 65536");
        }
        if !(1..=self.max_queues_per_topic).contains(&self.default_queues) {
            return invalid("default_queues", "must be 1 to max_queues_per_topic");
        }
        // Every group has a dead-letter topic.
        if self.max_topics < self.max_groups {
            return invalid("max_topics", "must be at least max_groups");
        }
        // Clients dial it as given (routes name it, and RocketMQ clients need
        // its port spelled out).
        if !self.advertised_address.is_empty() && !is_host_and_port(&self.advertised_address) {
            return invalid("advertised_address", "must be host:port (port 1 to 65535)");
        }
        if self.rocketmq_addr.is_some_and(|a| a.port() == 0) {
            return invalid("rocketmq_addr", "needs a port (routes name it)");
        }
        if self.rocketmq_addr == Some(self.grpc_addr) {
            return invalid(
                "rocketmq_addr",
                "must differ from grpc_addr (leave it out to serve both there)",
            );
        }
        Ok(())
    }

    /// What clients should dial to reach this broker.
    pub fn advertised_address(&self) -> String {
        if self.advertised_address.is_empty() {
            self.grpc_addr.to_string()
        } else {
            self.advertised_address.clone()
        }
    }
}

/// `host:port` with a host and a port from 1 to 65535 (an IPv6 host is
/// taken bracketed or not: the port is what follows the last colon).
fn is_host_and_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {source}")]
    Parse {
        origin: String,
        source: toml::de::Error,
    },
    #[error("invalid config: [broker] {key} {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("invalid config: [replication] {key} {reason}")]
    InvalidReplication { key: &'static str, reason: String },
    #[error("invalid config: [auth] {key} {reason}")]
    InvalidAuth { key: &'static str, reason: String },
    #[error("invalid config: [tls] {key} {reason}")]
    InvalidTls { key: &'static str, reason: String },
}

impl BrokerConfig {
    /// The defaults, overlaid with `file` when given.
    pub fn load(file: Option<&Path>) -> Result<BrokerConfig, ConfigError> {
        let parse = |text: &str, origin: &str| {
            text.parse::<toml::Table>()
                .map_err(|source| ConfigError::Parse {
                    origin: origin.to_string(),
                    source,
                })
        };
        let mut table = parse(DEFAULT_CONFIG, "defaults")?;
        if let Some(path) = file {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: origin.clone(),
                source,
            })?;
            merge(&mut table, parse(&text, &origin)?);
        }
        toml::Value::Table(table)
            .try_into()
            .map_err(|source| ConfigError::Parse {
                origin: file.map_or("defaults".into(), |p| p.display().to_string()),
                source,
            })
    }
}

/// Deep-merges `over` into `base`: tables merge, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FlushMode;

    #[test]
    fn defaults_parse_and_validate() {
        let cfg = BrokerConfig::load(None).unwrap();
        cfg.store.validate().unwrap();
        cfg.broker.validate().unwrap();
        cfg.auth.validate().unwrap();
        cfg.tls.validate().unwrap();
        assert!(!cfg.tls.enabled);
        assert!(!cfg.auth.enabled);
        assert_eq!(cfg.broker.max_queues_per_topic, 1024);
        assert_eq!(cfg.broker.max_topics, 10_000);
        assert_eq!(cfg.store.segment_size_bytes, 1 << 30);
        assert_eq!(cfg.store.max_record_size_bytes, 4 << 20);
        assert_eq!(cfg.store.flush, FlushMode::Async);
        assert_eq!(cfg.store.retention.as_secs(), 72 * 3600);
        assert_eq!(cfg.broker.grpc_addr.port(), 6086);
        assert_eq!(cfg.broker.http_addr.port(), 7654);
        assert_eq!(cfg.broker.max_delivery_attempts, 16);
        let backoff: Vec<u64> = cfg
            .broker
            .retry_backoff
            .iter()
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(
            backoff,
            vec![
                1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600,
                7200
            ]
        );
    }

    #[test]
    fn a_file_overrides_a_subset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(
            &path,
            "[store]\nflush = \"sync\"\nsegment_size_bytes = 65536\n",
        )
        .unwrap();
        let cfg = BrokerConfig::load(Some(&path)).unwrap();
        assert_eq!(cfg.store.flush, FlushMode::Sync);
        assert_eq!(cfg.store.segment_size_bytes, 65536);
        assert_eq!(cfg.store.retention.as_secs(), 72 * 3600);
    }

    #[test]
    fn limits_that_allow_nothing_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        for (line, key) in [
            ("max_connections = 0", "max_connections"),
            (
                "connection_idle_timeout = \"0s\"",
                "connection_idle_timeout",
            ),
            ("max_queues_per_topic = 70000", "max_queues_per_topic"),
            ("max_queues_per_topic = 2", "default_queues"),
            ("max_topics = 10", "max_topics"),
            (
                "advertised_address = \"broker-0.example\"",
                "advertised_address",
            ),
            (
                "advertised_address = \"broker-0.example:0\"",
                "advertised_address",
            ),
            ("rocketmq_addr = \"127.0.0.1:6086\"", "rocketmq_addr"),
            ("rocketmq_addr = \"127.0.0.1:0\"", "rocketmq_addr"),
        ] {
            std::fs::write(&path, format!("[broker]\n{line}\n")).unwrap();
            let cfg = BrokerConfig::load(Some(&path)).unwrap();
            let err = cfg.broker.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "[store]\nflsh = \"sync\"\n").unwrap();
        let err = BrokerConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("flsh"), "{err}");
    }
}
