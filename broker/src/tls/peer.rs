//! The client side of TLS between brokers: a replica dials its master with
//! the cluster CA (`ca_file`) and presents its own certificate, read afresh
//! for each connection so renewed files are used.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::{TlsConfig, TlsError};

/// How a replica dials its master; `None` without TLS.
pub fn peer_tls(config: &TlsConfig) -> Result<Option<ClientTlsConfig>, TlsError> {
    if !config.enabled {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    Ok(Some(
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&config.ca_file)?))
            .identity(Identity::from_pem(
                read(&config.cert_file)?,
                read(&config.key_file)?,
            )),
    ))
}
