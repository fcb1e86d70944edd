//! The `[tls]` table of the broker's configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Not asked for.
    None,
    /// Verified when presented: the certificate's common name is a user.
    Optional,
    /// A connection without a certificate signed by `client_ca_file` is refused.
    Required,
}

/// TLS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// TLS on every listener (gRPC, the RocketMQ door, HTTP).
    pub enabled: bool,
    /// The broker's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    /// The CA that signs client certificates (PEM).
    pub client_ca_file: PathBuf,
    /// The CA that signs other brokers' certificates: a replica verifies its
    /// master with it (and presents its own certificate).
    pub ca_file: PathBuf,
    /// How often the files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl TlsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::InvalidTls {
                key,
                reason: reason.to_string(),
            })
        };
        if !self.enabled {
            return Ok(());
        }
        if self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            return invalid("cert_file", "and key_file are required when enabled = true");
        }
        if self.client_auth != ClientAuth::None && self.client_ca_file.as_os_str().is_empty() {
            return invalid(
                "client_ca_file",
                "is required when client_auth is optional or required",
            );
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(24 * 3600))
            .contains(&self.reload_interval)
        {
            return invalid("reload_interval", "must be between 100ms and 24h");
        }
        Ok(())
    }
}
