//! TLS on the broker's listeners (gRPC, the RocketMQ door, HTTP), with
//! optional client certificates (mutual TLS: a verified certificate's common
//! name is a user, see `crate::auth`), and on replicas' connections to their
//! master. Certificate, key and CA files are re-read when they change, so a
//! renewed certificate is served without a restart; connections already
//! open keep the certificate they began with.

mod config;
mod peer;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub use config::{ClientAuth, TlsConfig};
pub use peer::peer_tls;
pub use stream::{MaybeTls, SecuredHttp, secured};

/// Why TLS cannot be set up; the file at fault is named.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM")]
    Empty { path: String, what: &'static str },
    #[error("{path}: {source}")]
    Rustls { path: String, source: rustls::Error },
    #[error("client CA {path}: {reason}")]
    ClientCa { path: String, reason: String },
}

/// Which listener a configuration serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// gRPC and the RocketMQ door: client certificates as configured.
    Grpc,
    /// HTTP: never asks for client certificates (kubelet probes present
    /// none; `/metrics` has basic authentication).
    Http,
}

/// The current configurations of both listeners.
#[derive(Debug)]
struct Current {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

impl Current {
    fn build(config: &TlsConfig, files: &Files) -> Result<Current, TlsError> {
        Ok(Current {
            grpc: Arc::new(build(config, files, config.client_auth)?),
            http: Arc::new(build(config, files, ClientAuth::None)?),
        })
    }
}

/// The contents of the files a configuration is built from, read once.
#[derive(Debug, PartialEq, Eq)]
struct Files {
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig) -> Files {
        let read = |p: &std::path::Path| std::fs::read(p).ok();
        Files {
            cert: read(&config.cert_file),
            key: read(&config.key_file),
            client_ca: read(&config.client_ca_file),
        }
    }
}

/// The server side: the current configuration, rebuilt when a file changes.
#[derive(Debug)]
pub struct TlsServer {
    config: TlsConfig,
    current: RwLock<Current>,
    /// The files' contents the current configuration was built from.
    seen: Mutex<Files>,
}

impl TlsServer {
    /// Loads the certificate, key and client CA of `config`.
    pub fn open(config: &TlsConfig) -> Result<Arc<TlsServer>, TlsError> {
        let files = Files::read(config);
        let server = TlsServer {
            current: RwLock::new(Current::build(config, &files)?),
            seen: Mutex::new(files),
            config: config.clone(),
        };
        Ok(Arc::new(server))
    }

    /// The configuration new connections to `served` are accepted with.
    pub fn current(&self, served: Served) -> Arc<ServerConfig> {
        let current = self.current.read();
        match served {
            Served::Grpc => current.grpc.clone(),
            Served::Http => current.http.clone(),
        }
    }

    /// Rebuilds the configuration if a file changed; a change that does not
    /// load (a key written before its certificate, say) leaves the current
    /// one, and is tried again at the next check.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let now = Files::read(&self.config);
        if *self.seen.lock() == now {
            return Ok(false);
        }
        let rebuilt = Current::build(&self.config, &now)?;
        *self.current.write() = rebuilt;
        *self.seen.lock() = now;
        tracing::info!(cert = %self.config.cert_file.display(), "TLS certificate reloaded");
        Ok(true)
    }

    /// Checks the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let server = self.clone();
            match tokio::task::spawn_blocking(move || server.reload()).await {
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "TLS files changed but do not load; the previous certificate stays");
                }
                Ok(Ok(_)) => failing = false,
                _ => {}
            }
        }
    }
}

/// Longest a TLS handshake may take before its connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(
    config: &TlsConfig,
    files: &Files,
    client_auth: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    let certs = certificates(&config.cert_file, files.cert.as_deref())?;
    let key = private_key(&config.key_file, files.key.as_deref())?;
    let rustls_error = |source| TlsError::Rustls {
        path: config.cert_file.display().to_string(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let path = config.client_ca_file.display().to_string();
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(&config.client_ca_file, files.client_ca.as_deref())? {
                roots.add(cert).map_err(|source| TlsError::Rustls {
                    path: path.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|e| TlsError::ClientCa {
                path,
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(rustls_error)?;
    // gRPC needs HTTP/2 (official clients insist on ALPN); HTTP takes both.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

/// The certificates of the PEM file at `path` (its contents, `None` when it
/// could not be read), in order.
fn certificates(
    path: &std::path::Path,
    contents: Option<&[u8]>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let text = contents.ok_or_else(|| unreadable(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(text)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Empty {
            path: shown.clone(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: shown,
            what: "certificate",
        });
    }
    Ok(certs)
}

fn private_key(
    path: &std::path::Path,
    contents: Option<&[u8]>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    let text = contents.ok_or_else(|| unreadable(path))?;
    PrivateKeyDer::from_pem_slice(text).map_err(|_| TlsError::Empty {
        path: shown,
        what: "private key",
    })
}

/// A file that could not be read, with the reason read again.
fn unreadable(path: &std::path::Path) -> TlsError {
    TlsError::Read {
        path: path.display().to_string(),
        source: std::fs::read(path)
            .err()
            .unwrap_or_else(|| std::io::Error::other("it changed while it was read")),
    }
}

/// The common name of a verified client certificate (its first CN).
fn common_name(cert: &CertificateDer<'_>) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}
