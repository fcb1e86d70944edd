//! The DduoMQ gRPC contract, generated from `proto/dduomq/v1/*.proto`.

/// Version 1 of the API.
#[allow(clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("dduomq.v1");
}

/// The Apache RocketMQ 5 protocol (`apache.rocketmq.v2`), which the broker also
/// serves so that official RocketMQ 5 clients work against it.
pub mod rocketmq {
    /// Version 2 of the RocketMQ gRPC protocol.
    #[allow(clippy::all, missing_debug_implementations)]
    pub mod v2 {
        tonic::include_proto!("apache.rocketmq.v2");
    }
}

/// The encoded `FileDescriptorSet` of every DduoMQ proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/dduomq_descriptor.bin"));

/// The path (`/package.Service/Method`) of every method the broker serves:
/// those of [`FILE_DESCRIPTOR_SET`], gRPC health and server reflection.
pub fn served_methods() -> Vec<String> {
    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(FILE_DESCRIPTOR_SET)
        .expect("the built-in descriptor set decodes");
    let mut paths: Vec<String> = [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ]
    .map(String::from)
    .into();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    paths
}

pub mod namespace;
mod reason;
mod sharding;
pub mod signature;

pub use namespace::Namespace;
pub use reason::Reason;
pub use sharding::queue_for_sharding_key;
pub use signature::Credentials;

/// The `google.rpc.ErrorInfo` domain of every DduoMQ error.
pub const ERROR_DOMAIN: &str = "dduomq.io";
