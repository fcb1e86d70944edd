//! Messaging over real gRPC against a real broker process: send modes, routing,
//! clustering and broadcast consumption, leases, retries, dead letters, flow
//! control and bad input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::{
    Admin, ConsumeMode, Message, ProducerBuilder, PushConsumerBuilder, ReceivedMessage,
};
use dduomq_testkit::{Broker, Options, eventually};
use parking_lot::Mutex;

type Seen = Arc<Mutex<Vec<(String, ReceivedMessage)>>>;
/// A delivery's body and attempt number.
type Attempt = (Vec<u8>, u32);

mod leases;

/// A push consumer that records (consumer name, message) and acks.
async fn recording_consumer(
    b: &Broker,
    group: &str,
    topic: &str,
    name: &str,
    mode: ConsumeMode,
    seen: Seen,
) -> dduomq_client::PushConsumer {
    let name = name.to_string();
    PushConsumerBuilder::new(&b.grpc, group, topic)
        .client_id(name.clone())
        .mode(mode)
        .start(move |m| {
            let (seen, name) = (seen.clone(), name.clone());
            async move {
                seen.lock().push((name, m));
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap()
}

async fn create_group(
    admin: &Admin,
    name: &str,
    mode: pb::ConsumeMode,
    attempts: u32,
    backoff_ms: Vec<u64>,
) {
    admin
        .create_group(pb::Group {
            name: name.into(),
            mode: mode as i32,
            max_delivery_attempts: attempts,
            retry_backoff_ms: backoff_ms,
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn every_send_mode_stores_exactly_the_bytes_sent() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("modes", 4, pb::MessageType::Normal)
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();

    let sync = producer
        .send(
            Message::new("modes", "sync")
                .with_key("k-sync")
                .with_tag("A")
                .with_property("p", "1"),
        )
        .await
        .unwrap();
    let pending = producer.send_async(Message::new("modes", "async").with_key("k-async"));
    let batch = producer
        .send_batch(
            (0..10)
                .map(|i| Message::new("modes", format!("batch-{i}")).with_key("k-batch"))
                .collect(),
        )
        .await
        .unwrap();
    producer
        .send_oneway(Message::new("modes", "oneway").with_key("k-oneway"))
        .await
        .unwrap();
    let asynced = pending.await.unwrap().unwrap();

    // A batch is atomic and contiguous on one queue.
    let q = batch[0].queue_id;
    for (i, r) in batch.iter().enumerate() {
        assert_eq!(r.queue_id, q);
        assert_eq!(r.offset, batch[0].offset + i as u64);
    }
    // Lookups return exactly the stored bytes and metadata.
    let by_id = admin.lookup_by_id(&sync.message_id).await.unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(&by_id[0].body[..], b"sync");
    assert_eq!(by_id[0].tag, "A");
    assert_eq!(by_id[0].properties["p"], "1");
    assert_eq!(
        (by_id[0].queue_id, by_id[0].offset),
        (sync.queue_id, sync.offset)
    );
    assert_eq!(
        &admin.lookup_by_id(&asynced.message_id).await.unwrap()[0].body[..],
        b"async"
    );
    let batch_hits = admin.lookup_by_key("modes", "k-batch").await.unwrap();
    let mut bodies: Vec<String> = batch_hits
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        (0..10)
            .map(|i| format!("batch-{i}"))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    // The one-way message is stored too.
    let oneway = eventually(Duration::from_secs(5), "one-way message", async || {
        let hits = admin.lookup_by_key("modes", "k-oneway").await.unwrap();
        (hits.len() == 1).then(|| hits[0].clone())
    })
    .await;
    assert_eq!(&oneway.body[..], b"oneway");
    // 13 messages in all across the queues.
    let d = admin.describe_topic("modes").await.unwrap();
    assert_eq!(d.queues.iter().map(|q| q.max_offset).sum::<u64>(), 13);
}

#[tokio::test]
async fn sharding_keys_pin_queues_and_order() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("sharded", 8, pb::MessageType::Normal)
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    let mut queue_of: HashMap<String, BTreeSet<u32>> = HashMap::new();
    let mut offsets: HashMap<String, Vec<u64>> = HashMap::new();
    for i in 0..200 {
        let key = format!("customer-{}", i % 10);
        let r = producer
            .send(Message::new("sharded", format!("{i}")).with_sharding_key(key.clone()))
            .await
            .unwrap();
        queue_of.entry(key.clone()).or_default().insert(r.queue_id);
        offsets.entry(key).or_default().push(r.offset);
    }
    for (key, queues) in &queue_of {
        assert_eq!(queues.len(), 1, "{key} went to {queues:?}");
        let o = &offsets[key];
        assert!(
            o.windows(2).all(|w| w[0] < w[1]),
            "{key} offsets not increasing"
        );
    }
    let used: BTreeSet<u32> = queue_of.values().flatten().copied().collect();
    assert!(used.len() > 1, "10 keys all hashed to one queue");
    // Without a key, sends spread over every queue.
    let mut spread = BTreeSet::new();
    for i in 0..16 {
        spread.insert(
            producer
                .send(Message::new("sharded", format!("{i}")))
                .await
                .unwrap()
                .queue_id,
        );
    }
    assert_eq!(spread.len(), 8);
}

#[tokio::test]
async fn clustering_delivers_each_message_to_one_member_and_keeps_all_busy() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    // One queue, three consumers: per-message leases keep all three busy.
    admin
        .create_topic("work", 1, pb::MessageType::Normal)
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let mut consumers = Vec::new();
    for name in ["c1", "c2", "c3"] {
        let seen = seen.clone();
        let name = name.to_string();
        consumers.push(
            PushConsumerBuilder::new(&b.grpc, "workers", "work")
                .client_id(name.clone())
                .max_in_flight(4)
                .concurrency(4)
                .start(move |m| {
                    let (seen, name) = (seen.clone(), name.clone());
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        seen.lock().push((name, m));
                        Ok::<(), String>(())
                    }
                })
                .await
                .unwrap(),
        );
    }
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    for i in 0..300 {
        producer
            .send(Message::new("work", format!("job-{i}")))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(30), "300 deliveries", async || {
        (seen.lock().len() >= 300).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in consumers {
        c.shutdown().await;
    }
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 300, "each message exactly once");
    let bodies: BTreeSet<Vec<u8>> = seen.iter().map(|(_, m)| m.body.to_vec()).collect();
    assert_eq!(bodies.len(), 300);
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, m) in seen.iter() {
        *per.entry(name).or_default() += 1;
        assert_eq!(m.delivery_attempt, 1);
    }
    assert_eq!(per.len(), 3, "every consumer got work: {per:?}");
    let d = admin.describe_group("workers").await.unwrap();
    assert_eq!(d.queues.len(), 1);
    assert_eq!((d.queues[0].committed_offset, d.queues[0].lag), (300, 0));
}

#[tokio::test]
async fn broadcast_delivers_every_message_to_every_member() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("news", 3, pb::MessageType::Normal)
        .await
        .unwrap();
    create_group(&admin, "readers", pb::ConsumeMode::Broadcast, 16, vec![]).await;
    let seen: Seen = Arc::default();
    let a = recording_consumer(
        &b,
        "readers",
        "news",
        "a",
        ConsumeMode::Broadcast,
        seen.clone(),
    )
    .await;
    let bb = recording_consumer(
        &b,
        "readers",
        "news",
        "b",
        ConsumeMode::Broadcast,
        seen.clone(),
    )
    .await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    for i in 0..50 {
        producer
            .send(Message::new("news", format!("n{i}")))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(20), "100 deliveries", async || {
        (seen.lock().len() >= 100).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.shutdown().await;
    bb.shutdown().await;
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 100);
    for member in ["a", "b"] {
        let got: BTreeSet<Vec<u8>> = seen
            .iter()
            .filter(|(n, _)| n == member)
            .map(|(_, m)| m.body.to_vec())
            .collect();
        assert_eq!(
            got.len(),
            50,
            "{member} got {} distinct messages",
            got.len()
        );
    }
    // Each member has its own progress.
    let d = admin.describe_group("readers").await.unwrap();
    let members: BTreeSet<&str> = d.queues.iter().map(|q| q.client_id.as_str()).collect();
    assert_eq!(members, BTreeSet::from(["a", "b"]));
    assert!(d.queues.iter().all(|q| q.lag == 0));
}

#[tokio::test]
async fn bad_input_gets_a_typed_status_and_changes_nothing() {
    let b = Broker::start_with(Options {
        auto_create_topics: Some(false),
        ..Options::default()
    });
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("real", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    // Uncompressed, so that a 5 MiB body really is 5 MiB on the wire.
    let producer = ProducerBuilder::new(&b.grpc)
        .compress_from(0)
        .build()
        .unwrap();
    producer.send(Message::new("real", "ok")).await.unwrap();
    let before = admin.describe_topic("real").await.unwrap();

    let too_big = producer
        .send(Message::new("real", vec![0u8; 5 << 20]))
        .await
        .unwrap_err();
    assert_eq!(too_big.reason(), Some(Reason::MessageTooLarge), "{too_big}");
    let batch = producer
        .send_batch(vec![
            Message::new("real", "fine"),
            Message::new("real", vec![1u8; 5 << 20]),
        ])
        .await
        .unwrap_err();
    assert_eq!(batch.reason(), Some(Reason::MessageTooLarge));
    assert_eq!(
        admin.describe_topic("real").await.unwrap(),
        before,
        "nothing stored"
    );

    for bad in ["", "has space", "a/b", "%system", &"x".repeat(128)] {
        let e = admin
            .create_topic(bad, 1, pb::MessageType::Normal)
            .await
            .unwrap_err();
        assert_eq!(e.reason(), Some(Reason::InvalidArgument), "{bad:?}: {e}");
    }
    assert_eq!(
        admin
            .create_topic("q0", 0, pb::MessageType::Normal)
            .await
            .unwrap_err()
            .reason(),
        Some(Reason::InvalidArgument)
    );
    assert_eq!(admin.list_topics().await.unwrap().len(), 1);

    let e = producer
        .send(Message::new("missing", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::TopicNotFound));
    assert_eq!(
        admin.describe_group("nobody").await.unwrap_err().reason(),
        Some(Reason::GroupNotFound)
    );
    let e = PushConsumerBuilder::new(&b.grpc, "nobody", "real")
        .start(|_| async { Ok::<(), String>(()) })
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::GroupNotFound));

    // Forged and malformed receipt handles.
    let mut raw =
        pb::messaging_service_client::MessagingServiceClient::connect(format!("http://{}", b.grpc))
            .await
            .unwrap();
    create_group(&admin, "g", pb::ConsumeMode::Clustering, 16, vec![]).await;
    use base64::Engine;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1|0|0|deadbeef|");
    for handle in [forged.as_str(), "not-a-handle"] {
        let r = raw
            .ack(pb::AckRequest {
                group: "g".into(),
                topic: "real".into(),
                receipt_handles: vec![handle.into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.results[0].error_reason,
            Reason::InvalidReceiptHandle.as_str()
        );
        let e = raw
            .nack(pb::NackRequest {
                group: "g".into(),
                topic: "real".into(),
                receipt_handle: handle.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            dduomq_client::ClientError::from(e).reason(),
            Some(Reason::InvalidReceiptHandle)
        );
    }
    // A reset to a negative offset, or past the end, changes nothing.
    let e = admin
        .reset_offset("g", "real", dduomq_client::ResetTo::Offset(-1))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::InvalidArgument));
    let e = admin
        .reset_offset("g", "real", dduomq_client::ResetTo::Offset(99))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::OffsetOutOfRange));
    let g = admin.describe_group("g").await.unwrap();
    assert!(
        g.queues.iter().all(|q| q.committed_offset == 0),
        "{:?}",
        g.queues
    );
    assert_eq!(
        admin.lookup_by_id("00").await.unwrap_err().reason(),
        Some(Reason::InvalidMessageId)
    );
    assert_eq!(
        admin
            .lookup_by_id(&"0".repeat(32))
            .await
            .unwrap_err()
            .reason(),
        Some(Reason::MessageNotFound)
    );
}

#[tokio::test]
async fn health_and_reflection_answer_like_grpcurl_expects() {
    let b = Broker::start();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", b.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "dduomq.v1.MessagingService", "dduomq.v1.AdminService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected {resp:?}")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for s in [
        "dduomq.v1.MessagingService",
        "dduomq.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(s), "{s} missing from {names:?}");
    }
    assert_eq!(
        dduomq_testkit::http_get(&b.http, "/healthz").unwrap().0,
        200
    );
}
