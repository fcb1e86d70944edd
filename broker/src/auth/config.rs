//! The `[auth]` table of the broker's configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Authentication and authorization settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Off: every client may do everything (a standalone broker's default).
    pub enabled: bool,
    /// The users file (see `auth::users`); re-read when it changes.
    pub users_file: PathBuf,
    /// The key that opens the users' sealed secret keys.
    pub sealing_key_file: PathBuf,
    /// The user this broker signs its own requests to other brokers with
    /// (replication); it needs `admin` on `cluster`.
    pub broker_user: String,
    /// How far a signature's time may be from the broker's clock.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// `/metrics` answers only HTTP basic authentication of a user allowed to
    /// `describe` the `cluster` (access key and secret key as user and password).
    pub protect_metrics: bool,
    /// How often the users file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::InvalidAuth {
                key,
                reason: reason.to_string(),
            })
        };
        if !self.enabled {
            if self.protect_metrics {
                return invalid("protect_metrics", "needs enabled = true");
            }
            return Ok(());
        }
        if self.users_file.as_os_str().is_empty() {
            return invalid("users_file", "is required when enabled = true");
        }
        if self.sealing_key_file.as_os_str().is_empty() {
            return invalid("sealing_key_file", "is required when enabled = true");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&self.max_clock_skew)
        {
            return invalid("max_clock_skew", "must be between 1s and 24h");
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&self.reload_interval)
        {
            return invalid("reload_interval", "must be between 100ms and 1h");
        }
        Ok(())
    }
}
