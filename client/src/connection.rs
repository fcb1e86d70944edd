//! Channels to brokers. Connections are lazy and shared: tonic multiplexes every
//! request of a client over one HTTP/2 connection per broker, and reconnects by
//! itself after a broker restart.

use std::time::Duration;

use dduomq_proto::namespace::{NAMESPACE_METADATA, Namespace};
use dduomq_proto::v1::messaging_service_client::MessagingServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, Result};

/// Largest gRPC message either way (a batch of maximum-size messages).
pub const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// HTTP/2 flow-control windows (both ends use the same).
pub const HTTP2_STREAM_WINDOW: u32 = 8 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;

/// Normalizes `host:port` to an `http://` URI.
pub fn uri(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
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
pub fn channel(address: &str) -> Result<Channel> {
    channel_with_connect_timeout(address, CONNECT_TIMEOUT)
}

/// [`channel`] with its own limit on establishing the connection.
pub fn channel_with_connect_timeout(address: &str, connect_timeout: Duration) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(uri(address))
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
    Ok(endpoint.connect_lazy())
}

/// Puts the client's namespace on every request (nothing for the default
/// namespace, which is what a request without it means).
#[derive(Debug, Clone, Default)]
pub struct NamespaceHeader {
    value: Option<MetadataValue<Ascii>>,
}

impl NamespaceHeader {
    /// The header of `namespace` (`""` or `"default"`: the default namespace).
    pub fn new(namespace: &str) -> Result<NamespaceHeader> {
        let parsed =
            Namespace::parse(namespace).map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok(NamespaceHeader {
            // A valid namespace is ASCII letters, digits, '_' and '-'.
            value: parsed
                .metadata_value()
                .map(|v| v.parse().expect("a namespace is a valid header value")),
        })
    }
}

impl Interceptor for NamespaceHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert(NAMESPACE_METADATA, value.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry the client's namespace.
pub type Transport = InterceptedService<Channel, NamespaceHeader>;
/// A messaging client in one namespace.
pub type MessagingClient = MessagingServiceClient<Transport>;

/// A messaging client for `address` (lazily connected) in `namespace`.
pub fn client(address: &str, namespace: &str) -> Result<MessagingClient> {
    Ok(MessagingServiceClient::with_interceptor(
        channel(address)?,
        NamespaceHeader::new(namespace)?,
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
