//! Compiles the .proto files with protox (pure Rust, no system protoc) and
//! generates tonic clients and servers plus a descriptor set for reflection:
//! DduoMQ's own API and the Apache RocketMQ 5 protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/dduomq/v1/common.proto",
        "proto/dduomq/v1/messaging.proto",
        "proto/dduomq/v1/replication.proto",
        "proto/dduomq/v1/admin.proto",
        // The Apache RocketMQ 5 protocol, served beside dduomq.v1.
        "proto/apache/rocketmq/v2/definition.proto",
        "proto/apache/rocketmq/v2/service.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("dduomq_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Message bodies as `bytes::Bytes`: the broker hands stored bodies to
        // the encoder and received bodies to the store without copying them.
        .bytes(".dduomq.v1.Message.body")
        .bytes(".dduomq.v1.OutgoingMessage.body")
        .bytes(".dduomq.v1.LogChunk.data")
        .bytes(".apache.rocketmq.v2.Message.body")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
