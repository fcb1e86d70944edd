//! FIFO topics: messages with the same sharding key are consumed in send order by
//! a group of concurrent consumers, with random nacks and a broker restart in the
//! middle, and a key never has two messages in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dduomq_client::Reason;
use dduomq_client::proto as pb;
use dduomq_client::{Admin, Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_testkit::{Broker, eventually};
use parking_lot::Mutex;
use rand::Rng;

const KEYS: u32 = 16;
const PER_KEY: u32 = 20;

#[derive(Default)]
struct Log {
    /// Messages of each key being handled right now.
    in_flight: HashMap<u32, u32>,
    /// (global success order, seq) of each key's first successful handling.
    first_success: HashMap<(u32, u32), u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharding_keys_are_consumed_in_order_across_nacks_and_a_restart() {
    let mut b = Broker::start();
    let admin = Admin::connect(&b.grpc).unwrap();
    admin
        .create_topic("ledger", 4, pb::MessageType::Fifo)
        .await
        .unwrap();
    admin
        .create_group(pb::Group {
            name: "auditors".into(),
            max_delivery_attempts: 50,
            retry_backoff_ms: vec![20],
            ..Default::default()
        })
        .await
        .unwrap();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    // A FIFO topic refuses messages without a sharding key.
    let e = producer
        .send(Message::new("ledger", "no key"))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), Some(Reason::MessageTypeMismatch), "{e}");
    for seq in 0..PER_KEY {
        for key in 0..KEYS {
            producer
                .send(
                    Message::new("ledger", format!("{key}:{seq}"))
                        .with_sharding_key(format!("account-{key}")),
                )
                .await
                .unwrap();
        }
    }

    let log: Arc<Mutex<Log>> = Arc::default();
    let order = Arc::new(AtomicU64::new(0));
    let overlap = Arc::new(AtomicBool::new(false));
    let start_consumer = |name: &str| {
        let (log, order, overlap) = (log.clone(), order.clone(), overlap.clone());
        PushConsumerBuilder::new(&b.grpc, "auditors", "ledger")
            .client_id(name)
            .concurrency(8)
            .start(move |m| {
                let (log, order, overlap) = (log.clone(), order.clone(), overlap.clone());
                async move {
                    let text = String::from_utf8(m.body.to_vec()).unwrap();
                    let (key, seq) = text.split_once(':').unwrap();
                    let (key, seq): (u32, u32) = (key.parse().unwrap(), seq.parse().unwrap());
                    {
                        let mut l = log.lock();
                        let n = l.in_flight.entry(key).or_default();
                        *n += 1;
                        if *n > 1 {
                            overlap.store(true, Ordering::SeqCst);
                        }
                    }
                    let (pause, fail) = {
                        let mut rng = rand::rng();
                        (rng.random_range(0..3), rng.random_bool(0.15))
                    };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    let mut l = log.lock();
                    *l.in_flight.get_mut(&key).unwrap() -= 1;
                    if fail {
                        return Err("random nack");
                    }
                    let at = order.fetch_add(1, Ordering::SeqCst);
                    l.first_success.entry((key, seq)).or_insert(at);
                    Ok(())
                }
            })
    };
    let c1 = start_consumer("c1").await.unwrap();
    let c2 = start_consumer("c2").await.unwrap();
    let c3 = start_consumer("c3").await.unwrap();
    let total = (KEYS * PER_KEY) as usize;
    eventually(
        Duration::from_secs(60),
        "half of the messages",
        async || (log.lock().first_success.len() >= total / 2).then_some(()),
    )
    .await;
    b.restart();
    eventually(Duration::from_secs(90), "every message", async || {
        (log.lock().first_success.len() == total).then_some(())
    })
    .await;
    for c in [c1, c2, c3] {
        c.shutdown().await;
    }
    assert!(
        !overlap.load(Ordering::SeqCst),
        "a key had two messages in flight"
    );
    let l = log.lock();
    for key in 0..KEYS {
        let orders: Vec<u64> = (0..PER_KEY)
            .map(|seq| l.first_success[&(key, seq)])
            .collect();
        assert!(
            orders.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {orders:?}"
        );
    }
}
