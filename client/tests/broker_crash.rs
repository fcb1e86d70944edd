//! The broker is SIGKILLed repeatedly under concurrent produce and consume with
//! `--flush sync`. After each restart producers and consumers carry on (the SDK
//! retries and reconnects); in the end every acknowledged message has been
//! consumed, and every stored message too — offsets have no gap.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{Admin, Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_testkit::{Broker, Options, eventually};
use parking_lot::Mutex;
use rand::Rng;

const KILLS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let mut b = Broker::start_with(Options {
        flush: Some("sync"),
        ..Options::default()
    });
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("durable", 4, pb::MessageType::Normal)
        .await
        .unwrap();
    admin
        .create_group(pb::Group {
            name: "survivors".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // (queue, offset) → body of every acknowledged send.
    let acked: Arc<Mutex<BTreeMap<(u32, u64), String>>> = Arc::default();
    // (queue, offset) → body of every consumed message (duplicates allowed).
    let consumed: Arc<Mutex<BTreeMap<(u32, u64), String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let mut producers = Vec::new();
    for p in 0..2 {
        let (grpc, acked, stop) = (b.grpc.clone(), acked.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let producer = ProducerBuilder::new(&grpc)
                .send_timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut i = 0u64;
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = format!("p{p}-{i}");
                i += 1;
                match producer.send(Message::new("durable", body.clone())).await {
                    Ok(r) => {
                        let prev = acked.lock().insert((r.queue_id, r.offset), body);
                        assert!(
                            prev.is_none(),
                            "offset {}/{} acknowledged twice",
                            r.queue_id,
                            r.offset
                        );
                    }
                    Err(_) => failures += 1,
                }
            }
            failures
        }));
    }
    let sink = consumed.clone();
    let consumer = PushConsumerBuilder::new(&b.grpc, "survivors", "durable")
        .invisible_duration(Duration::from_secs(5))
        .start(move |m| {
            let sink = sink.clone();
            async move {
                sink.lock().insert(
                    (m.queue_id, m.offset),
                    String::from_utf8(m.body.to_vec()).unwrap(),
                );
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();

    for round in 0..KILLS {
        let wait = rand::rng().random_range(150..500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let before = acked.lock().len();
        b.kill();
        b.start_again();
        eprintln!("kill {round}: {before} acknowledged so far");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for p in producers {
        failures += p.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 100,
        "only {} messages acknowledged",
        acked.len()
    );

    // Every acknowledged message is consumed, with exactly its bytes.
    eventually(
        Duration::from_secs(60),
        "every acknowledged message consumed",
        async || {
            let c = consumed.lock();
            acked.keys().all(|k| c.contains_key(k)).then_some(())
        },
    )
    .await;
    // Every stored message is consumed: offsets are dense with no gap.
    let topic = admin.describe_topic("durable").await.unwrap();
    eventually(
        Duration::from_secs(30),
        "every stored message consumed",
        async || {
            let c = consumed.lock();
            topic
                .queues
                .iter()
                .all(|q| (0..q.max_offset).all(|o| c.contains_key(&(q.queue_id, o))))
                .then_some(())
        },
    )
    .await;
    consumer.shutdown().await;
    let c = consumed.lock();
    for (k, body) in &acked {
        assert_eq!(&c[k], body, "{k:?} bytes");
    }
    let stored: u64 = topic.queues.iter().map(|q| q.max_offset).sum();
    let queues: BTreeSet<u32> = acked.keys().map(|(q, _)| *q).collect();
    assert_eq!(queues.len(), 4);
    eprintln!(
        "{} acknowledged, {} stored, {} failed sends across {KILLS} SIGKILLs",
        acked.len(),
        stored,
        failures
    );
    assert!(stored >= acked.len() as u64);
}
