//! The gRPC server: `MessagingService`, `AdminService`, `ReplicationService`,
//! the RocketMQ 5 protocol's `MessagingService` (`crate::rocketmq`, on a
//! listener of its own where configured), `grpc.health.v1` and server
//! reflection (so `grpcurl` works without .proto files).

mod access;
mod admin;
pub(crate) mod convert;
mod messaging;
pub(crate) mod namespace;
pub(crate) mod receive_streams;
mod replication;
pub mod status;
mod stream_tasks;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use dduomq_proto::rocketmq::v2::messaging_service_server::MessagingServiceServer as RocketMqServer;
use dduomq_proto::v1::admin_service_server::AdminServiceServer;
use dduomq_proto::v1::messaging_service_server::MessagingServiceServer;
use dduomq_proto::v1::replication_service_server::ReplicationServiceServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::transport::Server;
use tonic::{Code, Response, Status};
use tower_layer::{Identity, Stack};
use tracing::Instrument;

use crate::auth::Auth;
use crate::auth::layer::AuthLayer;
use crate::config::MessagingConfig;
use crate::connections::{Gate, GatedListener, Listener, TrackRequestsLayer, accepted};
use crate::messaging::Broker;
use crate::metrics::Metrics;
use crate::tls::{MaybeTls, Served, TlsServer, secured};

/// Largest gRPC message either way: a batch of maximum-size messages.
const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// Most requests and streams a connection has open at once (more wait in the
/// client for a place).
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// The listeners gRPC is served on.
#[derive(Debug)]
pub struct GrpcListeners {
    /// Every service; the RocketMQ protocol's too unless it has its own.
    pub main: TcpListener,
    /// The RocketMQ protocol's own listener (`rocketmq_addr`), if configured.
    pub rocketmq: Option<TcpListener>,
}

/// Serves the gRPC API on `listeners` until `shutdown` resolves, then
/// finishes in-flight requests.
pub async fn serve(
    broker: Arc<Broker>,
    auth: Arc<Auth>,
    tls: Option<Arc<TlsServer>>,
    listeners: GrpcListeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<MessagingServiceServer<messaging::MessagingApi>>()
        .await;
    health
        .set_serving::<AdminServiceServer<admin::AdminApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dduomq_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let config = broker.config().clone();
    // RocketMQ clients' consumers count under the same limits as our streams.
    let streams = receive_streams::ReceiveStreams::new(
        config.max_receive_streams,
        config.max_receive_streams_per_group,
        config.max_receive_streams_per_client,
    );
    let rocketmq = RocketMqServer::new(crate::rocketmq::RocketMqApi::new(
        broker.clone(),
        streams.clone(),
    ))
    .max_decoding_message_size(MAX_GRPC_MESSAGE)
    .max_encoding_message_size(MAX_GRPC_MESSAGE);
    let messaging = MessagingServiceServer::new(messaging::MessagingApi {
        broker: broker.clone(),
        streams,
    })
    .max_decoding_message_size(MAX_GRPC_MESSAGE)
    .max_encoding_message_size(MAX_GRPC_MESSAGE);
    // One limit on connections, whichever listener they come to.
    let gate = Gate::new(
        Listener::Grpc,
        config.max_connections,
        config.connection_idle_timeout,
        broker.metrics().cloned(),
    );
    let replication = ReplicationServiceServer::new(replication::ReplicationApi {
        broker: broker.clone(),
    })
    .max_decoding_message_size(MAX_GRPC_MESSAGE)
    .max_encoding_message_size(MAX_GRPC_MESSAGE);
    let admin = AdminServiceServer::new(admin::AdminApi { broker })
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let main = server(&config, &auth)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(messaging)
        .add_service(admin)
        .add_service(replication);
    let servers = async {
        match listeners.rocketmq {
            None => {
                main.add_service(rocketmq)
                    .serve_with_incoming_shutdown(
                        admitted(listeners.main, gate, &tls),
                        until_stopped(),
                    )
                    .await
            }
            Some(own) => {
                let door = server(&config, &auth)
                    .add_service(rocketmq)
                    .serve_with_incoming_shutdown(
                        admitted(own, gate.clone(), &tls),
                        until_stopped(),
                    );
                let main = main.serve_with_incoming_shutdown(
                    admitted(listeners.main, gate, &tls),
                    until_stopped(),
                );
                tokio::try_join!(main, door).map(drop)
            }
        }
    };
    tokio::pin!(servers);
    tokio::select! {
        served = &mut servers => return Ok(served?),
        () = shutdown => {
            stop.send_replace(true);
        }
    }
    servers.await?;
    Ok(())
}

/// A gRPC server configured as every listener of the broker is.
fn server(
    config: &MessagingConfig,
    auth: &Arc<Auth>,
) -> Server<Stack<AuthLayer, Stack<TrackRequestsLayer, Identity>>> {
    Server::builder()
        // Large HTTP/2 windows: with the 64 KiB default a client's batched
        // sends wait a round trip per 64 KiB.
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        // Dead peers (no PING answer) are closed, releasing their streams.
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        // A client's open requests are bounded; so are those it opened and
        // cancelled before this broker took them up. A loaded broker takes
        // requests up late, and a client whose deadlines pass cancels many
        // at once: h2's default of 20 of the latter would close the
        // connection, and with it the client's other calls and streams.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_pending_accept_reset_streams(Some(MAX_STREAMS_PER_CONNECTION as usize))
        .layer(TrackRequestsLayer)
        // Inside the request tracking: a refused request is counted too.
        .layer(AuthLayer { auth: auth.clone() })
}

/// A listener's connections, those over the limit closed as soon as
/// accepted, with TLS when configured.
fn admitted(
    listener: TcpListener,
    gate: Gate,
    tls: &Option<Arc<TlsServer>>,
) -> impl tokio_stream::Stream<Item = std::io::Result<MaybeTls>> + use<> {
    secured(
        accepted(GatedListener { listener, gate }),
        tls.clone(),
        Served::Grpc,
    )
    .map(Ok)
}

/// Runs one request in a tracing span and records its status and duration.
pub(crate) async fn observed<T>(
    metrics: Option<&Arc<Metrics>>,
    method: &'static str,
    handler: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = handler
        .instrument(tracing::info_span!("grpc", method))
        .await;
    if let Some(m) = metrics {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        m.grpc_requests
            .with_label_values(&[method, code_name(code)])
            .inc();
        m.grpc_duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
    if let Err(status) = &result {
        tracing::debug!(method, code = ?status.code(), message = status.message(), "request refused");
    }
    result
}

/// The canonical name of a gRPC status code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
