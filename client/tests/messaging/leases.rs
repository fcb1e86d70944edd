//! Leases that run out, retries, dead letters and flow control.

use super::*;

#[tokio::test]
async fn an_expired_lease_is_redelivered() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    create_group(&admin, "slow", pb::ConsumeMode::Clustering, 16, vec![100]).await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    producer.send(Message::new("leases", "only")).await.unwrap();
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let log = attempts.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, "slow", "leases")
        .invisible_duration(Duration::from_millis(300))
        .start(move |m| {
            let log = log.clone();
            async move {
                log.lock().push(m.delivery_attempt);
                if m.delivery_attempt == 1 {
                    // Outlive the lease: the ack will be refused and the message redelivered.
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "a second delivery", async || {
        (attempts.lock().len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    consumer.shutdown().await;
    assert_eq!(*attempts.lock(), vec![1, 2]);
    let d = admin.describe_group("slow").await.unwrap();
    let q: Vec<_> = d.queues.iter().filter(|q| q.max_offset > 0).collect();
    assert_eq!((q[0].committed_offset, q[0].in_flight), (1, 0));
}

#[tokio::test]
async fn failing_messages_go_to_the_dead_letter_topic_after_exactly_max_attempts() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("payments", 2, pb::MessageType::Normal)
        .await
        .unwrap();
    create_group(
        &admin,
        "billing",
        pb::ConsumeMode::Clustering,
        3,
        vec![50, 100],
    )
    .await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    let poison = producer
        .send(
            Message::new("payments", "poison")
                .with_key("bad")
                .with_property("k", "v"),
        )
        .await
        .unwrap();
    let good = producer
        .send(Message::new("payments", "fine"))
        .await
        .unwrap();
    let deliveries: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let log = deliveries.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, "billing", "payments")
        .start(move |m| {
            let log = log.clone();
            async move {
                log.lock().push((m.body.to_vec(), m.delivery_attempt));
                if &m.body[..] == b"poison" {
                    Err("cannot handle".to_string())
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    // The dead-letter topic receives it; consume it like any topic.
    let dlq: Seen = Arc::default();
    let dlq_consumer = recording_consumer(
        &b,
        "dlq-inspector",
        "%DLQ%billing",
        "x",
        ConsumeMode::Clustering,
        dlq.clone(),
    )
    .await;
    eventually(Duration::from_secs(15), "the dead letter", async || {
        (!dlq.lock().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    consumer.shutdown().await;
    dlq_consumer.shutdown().await;
    let d = deliveries.lock().clone();
    let poison_attempts: Vec<u32> = d
        .iter()
        .filter(|(b, _)| b == b"poison")
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(
        poison_attempts,
        vec![1, 2, 3],
        "delivered exactly max_delivery_attempts times"
    );
    assert_eq!(d.iter().filter(|(b, _)| b == b"fine").count(), 1);
    let dlq = dlq.lock().clone();
    assert_eq!(dlq.len(), 1);
    let dead = &dlq[0].1;
    assert_eq!(&dead.body[..], b"poison");
    assert_eq!(dead.keys, vec!["bad".to_string()]);
    assert_eq!(dead.properties["k"], "v");
    assert_eq!(dead.properties["__DLQ_ORIGIN_TOPIC"], "payments");
    assert_eq!(
        dead.properties["__DLQ_ORIGIN_QUEUE"],
        poison.queue_id.to_string()
    );
    assert_eq!(
        dead.properties["__DLQ_ORIGIN_OFFSET"],
        poison.offset.to_string()
    );
    assert_eq!(
        dead.properties["__DLQ_ORIGIN_MESSAGE_ID"],
        poison.message_id
    );
    assert_eq!(dead.properties["__DLQ_DELIVERY_ATTEMPTS"], "3");
    // Both messages are done for the group.
    let g = admin.describe_group("billing").await.unwrap();
    assert!(
        g.queues.iter().all(|q| q.lag == 0 && q.in_flight == 0),
        "{:?}",
        g.queues
    );
    let _ = good;
}

#[tokio::test]
async fn with_dead_lettering_off_exhausted_messages_are_dropped() {
    let b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_group(pb::Group {
            name: "strict".into(),
            max_delivery_attempts: 2,
            retry_backoff_ms: vec![50],
            disable_dead_letter: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    producer.send(Message::new("jobs", "poison")).await.unwrap();
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let log = attempts.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, "strict", "jobs")
        .start(move |m| {
            let log = log.clone();
            async move {
                log.lock().push(m.delivery_attempt);
                Err::<(), _>("always fails")
            }
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the group to finish the message",
        async || {
            let d = admin.describe_group("strict").await.unwrap();
            d.queues
                .iter()
                .all(|q| q.lag == 0 && q.in_flight == 0)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    assert_eq!(*attempts.lock(), vec![1, 2]);
    let dlq = admin.describe_topic("%DLQ%strict").await.unwrap();
    assert_eq!(
        dlq.queues.iter().map(|q| q.max_offset).sum::<u64>(),
        0,
        "nothing dead-lettered"
    );
}

/// Consumes `expected` messages of `topic` with 50 handler slots, each holding
/// its message for 30 ms; returns the most handlers that ever ran at once.
async fn peak_in_flight(
    b: &Broker,
    topic: &str,
    expected: usize,
    builder: PushConsumerBuilder,
) -> usize {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (r, p, d) = (running.clone(), peak.clone(), done.clone());
    let consumer = builder
        .concurrency(50)
        .start(move |_m| {
            let (r, p, d) = (r.clone(), p.clone(), d.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        &format!("{expected} handled on {topic} ({})", b.grpc),
        async || (done.load(Ordering::SeqCst) == expected).then_some(()),
    )
    .await;
    consumer.shutdown().await;
    peak.load(Ordering::SeqCst)
}

#[tokio::test]
async fn flow_control_caps_messages_in_flight_per_consumer() {
    let b = Broker::start();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    for i in 0..60 {
        producer
            .send(Message::new("flow", format!("{i}")))
            .await
            .unwrap();
    }
    let builder = PushConsumerBuilder::new(&b.grpc, "capped", "flow").max_in_flight(5);
    assert_eq!(
        peak_in_flight(&b, "flow", 60, builder).await,
        5,
        "50 handler slots, but only 5 messages may be in flight"
    );
    // A byte limit: 3 KiB in flight with 1 KiB bodies → at most 3 at once.
    for i in 0..30 {
        producer
            .send(Message::new("flow-bytes", vec![i as u8; 1024]))
            .await
            .unwrap();
    }
    let builder = PushConsumerBuilder::new(&b.grpc, "capped", "flow-bytes")
        .max_in_flight(100)
        .max_in_flight_bytes(3 * 1024);
    assert_eq!(peak_in_flight(&b, "flow-bytes", 30, builder).await, 3);
}
