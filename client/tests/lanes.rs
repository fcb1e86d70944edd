//! Gray-release lanes: a canary consumer gets the canary lane's messages and only
//! those; base consumers get base messages, and the canary's while no canary
//! consumer is online.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::{Message, ProducerBuilder, PushConsumer, PushConsumerBuilder};
use dduomq_testkit::{Broker, eventually};
use parking_lot::Mutex;

type Got = Arc<Mutex<Vec<String>>>;

async fn consumer(b: &Broker, lane: Option<&str>, got: Got) -> PushConsumer {
    let mut builder =
        PushConsumerBuilder::new(&b.grpc, "shop", "orders").client_id(lane.unwrap_or("base"));
    if let Some(l) = lane {
        builder = builder.lane(l);
    }
    builder
        .start(move |m| {
            let got = got.clone();
            async move {
                got.lock().push(String::from_utf8(m.body.to_vec()).unwrap());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap()
}

fn set(v: &Got) -> BTreeSet<String> {
    v.lock().iter().cloned().collect()
}

#[tokio::test]
async fn canary_traffic_goes_to_canary_consumers_only_while_they_are_online() {
    let b = Broker::start();
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    producer
        .send(Message::new("orders", "warm-up"))
        .await
        .unwrap();
    let (base_got, canary_got): (Got, Got) = Default::default();
    let base = consumer(&b, None, base_got.clone()).await;
    let canary = consumer(&b, Some("canary"), canary_got.clone()).await;
    for i in 0..30 {
        producer
            .send(Message::new("orders", format!("base-{i}")))
            .await
            .unwrap();
        producer
            .send(Message::new("orders", format!("canary-{i}")).with_lane("canary"))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(20), "61 deliveries", async || {
        (base_got.lock().len() + canary_got.lock().len() >= 61).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut want_base: BTreeSet<String> = (0..30).map(|i| format!("base-{i}")).collect();
    want_base.insert("warm-up".into());
    assert_eq!(
        set(&base_got),
        want_base,
        "base consumers get base messages only"
    );
    assert_eq!(
        set(&canary_got),
        (0..30).map(|i| format!("canary-{i}")).collect(),
        "the canary gets its lane only"
    );
    assert_eq!(
        base_got.lock().len() + canary_got.lock().len(),
        61,
        "each message once"
    );

    // The canary goes away: its lane falls back to the base lane.
    canary.shutdown().await;
    for i in 0..10 {
        producer
            .send(Message::new("orders", format!("late-canary-{i}")).with_lane("canary"))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(20), "the fallback", async || {
        (base_got.lock().len() == 41).then_some(())
    })
    .await;
    base.shutdown().await;
    assert!((0..10).all(|i| set(&base_got).contains(&format!("late-canary-{i}"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_another_lane_does_not_starve_the_base_lane() {
    let b = Broker::start();
    dduomq_testkit::create_topics(
        &b,
        &[("orders", 1, dduomq_client::proto::MessageType::Normal)],
    )
    .await;
    let producer = ProducerBuilder::new(&b.grpc).build().unwrap();
    // A canary consumer that takes one message at a time, slowly: its lane's
    // messages pile up, passed over by the base consumer.
    let canary_got: Got = Default::default();
    let slow = canary_got.clone();
    let canary = PushConsumerBuilder::new(&b.grpc, "shop", "orders")
        .client_id("canary")
        .lane("canary")
        .max_in_flight(1)
        .start(move |m| {
            let slow = slow.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                slow.lock()
                    .push(String::from_utf8(m.body.to_vec()).unwrap());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    let base_got: Got = Default::default();
    let base = consumer(&b, None, base_got.clone()).await;
    for i in 0..600 {
        producer
            .send(Message::new("orders", format!("canary-{i}")).with_lane("canary"))
            .await
            .unwrap();
    }
    for i in 0..50 {
        producer
            .send(Message::new("orders", format!("base-{i}")))
            .await
            .unwrap();
    }
    // 600 canary messages take the canary 30 s; the base lane must not wait.
    eventually(Duration::from_secs(10), "every base message", async || {
        (base_got.lock().len() == 50).then_some(())
    })
    .await;
    assert_eq!(
        set(&base_got),
        (0..50).map(|i| format!("base-{i}")).collect(),
        "the base consumer gets base messages only"
    );
    assert!(canary_got.lock().iter().all(|m| m.starts_with("canary-")));
    base.shutdown().await;
    canary.shutdown().await;
}
