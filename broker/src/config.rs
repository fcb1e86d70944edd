//! Broker configuration: `config/dduomq.toml` (embedded) is the single source of
//! defaults; a user file overrides any subset of it; flags and environment
//! variables override both (applied by the binary).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::store::StoreConfig;

/// The embedded default configuration file.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/dduomq.toml");

/// Everything the broker reads from its configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub broker: MessagingConfig,
    pub store: StoreConfig,
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
}

impl MessagingConfig {
    /// What clients should dial to reach this broker.
    pub fn advertised_address(&self) -> String {
        if self.advertised_address.is_empty() {
            self.grpc_addr.to_string()
        } else {
            self.advertised_address.clone()
        }
    }
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
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
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "[store]\nflsh = \"sync\"\n").unwrap();
        let err = BrokerConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("flsh"), "{err}");
    }
}
