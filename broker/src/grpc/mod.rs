//! The gRPC server: `MessagingService`, `AdminService`, `grpc.health.v1` and
//! server reflection (so `grpcurl` works without .proto files).

mod admin;
mod convert;
mod messaging;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use dduomq_proto::v1::admin_service_server::AdminServiceServer;
use dduomq_proto::v1::messaging_service_server::MessagingServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::messaging::Broker;

/// Largest gRPC message either way: a batch of maximum-size messages.
const MAX_GRPC_MESSAGE: usize = 64 << 20;

/// Serves the gRPC API on `listener` until `shutdown` resolves, then finishes
/// in-flight requests.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
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
    let messaging = MessagingServiceServer::new(messaging::MessagingApi {
        broker: broker.clone(),
    })
    .max_decoding_message_size(MAX_GRPC_MESSAGE)
    .max_encoding_message_size(MAX_GRPC_MESSAGE);
    let admin = AdminServiceServer::new(admin::AdminApi { broker })
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(messaging)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
