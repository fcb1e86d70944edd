//! Channels to brokers. Connections are lazy and shared: tonic multiplexes every
//! request of a client over one HTTP/2 connection per broker, and reconnects by
//! itself after a broker restart.

use std::time::Duration;

use dduomq_proto::namespace::{NAMESPACE_METADATA, Namespace};
use dduomq_proto::signature::{Credentials, Signer};
use dduomq_proto::v1::messaging_service_client::MessagingServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{ClientError, Result};

/// Largest gRPC message either way (a batch of maximum-size messages).
pub const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// HTTP/2 flow-control windows (both ends use the same).
pub const HTTP2_STREAM_WINDOW: u32 = 8 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;

/// Normalizes `host:port` to an `http://` URI (`https://` with TLS).
pub fn uri(address: &str, tls: bool) -> String {
    if address.contains("://") {
        address.to_string()
    } else if tls {
        format!("https://{address}")
    } else {
        format!("http://{address}")
    }
}

/// How a client verifies the brokers (TLS) and, for mutual TLS, proves who
/// it is with a certificate (whose common name is its user).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// The CA (PEM) that signs the brokers' certificates; `None`: the
    /// system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key (PEM).
    pub identity: Option<ClientIdentity>,
    /// The name the brokers' certificates must carry, when not the host the
    /// client dials.
    pub domain: Option<String>,
}

/// A client certificate and its private key, both PEM.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity(<hidden>)")
    }
}

impl TlsOptions {
    /// Options read from files: a CA (else the system's roots) and a client
    /// certificate with its key.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<TlsOptions> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                ClientError::InvalidArgument(format!("cannot read {}: {e}", p.display()))
            })
        };
        Ok(TlsOptions {
            ca_pem: ca.map(read).transpose()?,
            identity: match identity {
                Some((cert, key)) => Some(ClientIdentity {
                    cert_pem: read(cert)?,
                    key_pem: read(key)?,
                }),
                None => None,
            },
            domain: None,
        })
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some(id) = &self.identity {
            config = config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain);
        }
        config
    }
}

/// Default limit on establishing a connection to a broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Calls given up (reset) whose late answers are recognised, and for how
/// long; a few hundred bytes each (h2's default: 50, for 1 s).
const REMEMBERED_RESETS: usize = 4096;
const REMEMBER_RESETS_FOR: Duration = Duration::from_secs(30);

/// A lazily connected channel to `address`. Per-request deadlines are set by the
/// callers (a channel-wide timeout would cut long-lived Receive streams).
pub fn channel(address: &str, tls: Option<&TlsOptions>) -> Result<Channel> {
    channel_with_connect_timeout(address, CONNECT_TIMEOUT, tls)
}

/// [`channel`] with its own limit on establishing the connection.
pub fn channel_with_connect_timeout(
    address: &str,
    connect_timeout: Duration,
    tls: Option<&TlsOptions>,
) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(uri(address, tls.is_some()))
        .map_err(|e| ClientError::InvalidArgument(format!("bad broker address {address:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB windows let a Receive stream carry only 64
        // KiB before waiting a round trip for a window update.
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        // A call given up at its deadline is reset; the broker's late answer
        // to it is dropped quietly while the reset is remembered. Once
        // forgotten, the answer counts as a protocol error against a limit
        // that never resets over the connection's life, and reaching it
        // closes the connection with every call and Receive stream on it (a
        // consumer's leases are then redelivered). A loaded broker answers
        // late often, so: remember many resets, and do not count them.
        .http2_max_concurrent_reset_streams(REMEMBERED_RESETS)
        .http2_reset_stream_duration(REMEMBER_RESETS_FOR)
        .http2_max_local_error_reset_streams(None);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config())
            .map_err(|e| ClientError::InvalidArgument(format!("TLS settings: {e}")))?;
    }
    Ok(endpoint.connect_lazy())
}

/// Who a client is and how it reaches brokers: the namespace it names
/// things in, the credentials it signs with, and TLS. Builders keep it; it
/// is checked when a client is built.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub namespace: String,
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsOptions>,
}

impl Access {
    /// The headers of every request made with this access.
    pub fn headers(&self) -> Result<RequestHeaders> {
        RequestHeaders::new(&self.namespace, self.credentials.clone())
    }
}

/// The setters of a builder's [`Access`] (its field `access`): namespace,
/// credentials, TLS, or all three.
macro_rules! access_setters {
    () => {
        /// The namespace (tenant) of every name this client uses; `""` or
        /// `"default"` (the default) is the namespace of names made before
        /// namespaces existed. Checked when the client is built.
        pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
            self.access.namespace = namespace.into();
            self
        }
        /// The access key and secret key every request is signed with
        /// (brokers with authentication on refuse unsigned requests).
        pub fn credentials(mut self, credentials: dduomq_proto::signature::Credentials) -> Self {
            self.access.credentials = Some(credentials);
            self
        }
        /// TLS to the brokers (their listeners have TLS on), with a client
        /// certificate for mutual TLS if the options hold one.
        pub fn tls(mut self, tls: $crate::connection::TlsOptions) -> Self {
            self.access.tls = Some(tls);
            self
        }
        /// Namespace, credentials and TLS at once.
        pub fn access(mut self, access: $crate::connection::Access) -> Self {
            self.access = access;
            self
        }
    };
}
pub(crate) use access_setters;

/// What every request of a client carries: its namespace (nothing for the
/// default namespace, which is what a request without it means) and, when
/// the client has credentials, their signature.
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders {
    namespace: String,
    value: Option<MetadataValue<Ascii>>,
    signer: Signer,
}

impl RequestHeaders {
    /// The headers of `namespace` (`""` or `"default"`: the default
    /// namespace), signed with `credentials` if any.
    pub fn new(namespace: &str, credentials: Option<Credentials>) -> Result<RequestHeaders> {
        let parsed =
            Namespace::parse(namespace).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        if let Some(c) = &credentials
            && (c.access_key.is_empty() || !c.access_key.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ClientError::InvalidArgument(
                "an access key is printable ASCII without spaces".into(),
            ));
        }
        Ok(RequestHeaders {
            namespace: namespace.to_string(),
            // A valid namespace is ASCII letters, digits, '_' and '-'.
            value: parsed
                .metadata_value()
                .map(|v| v.parse().expect("a namespace is a valid header value")),
            signer: Signer::new(credentials),
        })
    }

    /// The same signer in another namespace.
    pub fn in_namespace(&self, namespace: &str) -> Result<RequestHeaders> {
        let mut other = RequestHeaders::new(namespace, None)?;
        other.signer = self.signer.clone();
        Ok(other)
    }

    /// The namespace as the client named it.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl Interceptor for RequestHeaders {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert(NAMESPACE_METADATA, value.clone());
        }
        self.signer.sign(request.metadata_mut())?;
        Ok(request)
    }
}

/// A channel whose requests carry the client's namespace and signature.
pub type Transport = InterceptedService<Channel, RequestHeaders>;
/// A messaging client in one namespace.
pub type MessagingClient = MessagingServiceClient<Transport>;

/// A messaging client for `address` (lazily connected) with `access`.
pub fn client(address: &str, access: &Access) -> Result<MessagingClient> {
    Ok(MessagingServiceClient::with_interceptor(
        channel(address, access.tls.as_ref())?,
        access.headers()?,
    )
    .max_decoding_message_size(MAX_GRPC_MESSAGE)
    .max_encoding_message_size(MAX_GRPC_MESSAGE))
}

/// Runs a unary call with a deadline.
pub async fn with_deadline<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(ClientError::Timeout(timeout)),
    }
}
