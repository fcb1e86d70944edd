//! Compression: the SDK zstd-compresses large bodies, the broker stores them
//! compressed, consumers receive the original bytes.

use std::time::Duration;

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::{Admin, Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_testkit::{Broker, bodies_received};
use rand::RngCore;

fn compressible(i: usize) -> Vec<u8> {
    let mut s = String::new();
    while s.len() < 64 * 1024 {
        s.push_str(&format!(
            "{{\"order\":{i},\"sku\":\"SKU-{}\",\"qty\":{},\"note\":\"repeated text\"}}\n",
            s.len() % 97,
            s.len() % 7
        ));
    }
    s.into_bytes()
}

async fn stored_bytes(admin: &Admin) -> u64 {
    let i = admin.broker_info().await.unwrap();
    i.commit_log_max - i.commit_log_min
}

#[tokio::test]
async fn large_bodies_are_stored_compressed_and_delivered_exactly() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("docs", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    let mut sent: Vec<Vec<u8>> = (0..20).map(compressible).collect();
    let mut random = vec![0u8; 64 * 1024];
    rand::rng().fill_bytes(&mut random);
    sent.push(random); // incompressible: stored as is
    sent.push(b"small".to_vec()); // below the threshold
    let raw: usize = sent.iter().map(Vec::len).sum();
    let before = stored_bytes(&admin).await;
    for body in &sent {
        producer
            .send(Message::new("docs", body.clone()))
            .await
            .unwrap();
    }
    let stored = stored_bytes(&admin).await - before;
    eprintln!(
        "compression: {raw} bytes sent, {stored} bytes stored ({:.1}x)",
        raw as f64 / stored as f64
    );
    assert!(stored < (raw / 3) as u64, "{stored} of {raw} bytes stored");

    let consumer = PushConsumerBuilder::new(&b.grpc, "readers", "docs");
    let mut got = bodies_received(consumer, sent.len(), Duration::from_secs(20)).await;
    got.sort();
    sent.sort();
    assert!(got == sent, "bodies differ after the round trip");

    // Compression off: stored as sent.
    let plain = ProducerBuilder::new(&b.grpc)
        .compress_from(0)
        .build()
        .unwrap();
    let before = stored_bytes(&admin).await;
    plain
        .send(Message::new("docs", compressible(99)))
        .await
        .unwrap();
    assert!(stored_bytes(&admin).await - before > 64 * 1024);
}

#[tokio::test]
async fn a_body_claiming_zstd_must_be_a_zstd_frame() {
    let b = Broker::start();
    let mut raw =
        pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", b.grpc))
            .await
            .unwrap();
    let e = raw
        .send(pb::SendRequest {
            messages: vec![pb::OutgoingMessage {
                topic: "docs".into(),
                body: b"not zstd".to_vec().into(),
                codec: pb::Codec::Zstd as i32,
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        dduomq_client::ClientError::from(e).reason(),
        Some(Reason::InvalidArgument)
    );
}
