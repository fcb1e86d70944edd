//! Runs the RocketMQ scenario matrix with the official Rust client (crate
//! `rocketmq` 5.0.0, from crates.io) against one endpoint. The crate has a
//! producer and a simple consumer without ChangeInvisibleDuration, so the
//! redelivery scenario is not here.
//!
//! It grades nothing itself: it prints one JSON line per message it sent,
//! received or acknowledged (scenario, message id, the body as hex, and what
//! the scenario needs to check); the Rust test that starts the broker checks
//! them.
//!
//! Usage: rocketmq-scenarios ENDPOINT RUN_ID SCENARIO...
//! Topics and groups are named <scenario>-<RUN_ID>; the test creates them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::{MessageBuilder, MessageView};
use rocketmq::model::transaction::{Transaction, TransactionResolution};
use rocketmq::{Producer, SimpleConsumer};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn emit(mut line: Value, event: &str, scenario: &str, id: &str, body: &[u8]) {
    line["event"] = json!(event);
    line["scenario"] = json!(scenario);
    line["id"] = json!(id);
    line["body"] = json!(hex(body));
    println!("{line}");
}

fn client_option(endpoint: &str) -> ClientOption {
    let mut o = ClientOption::default();
    o.set_access_url(endpoint);
    o.set_enable_tls(false);
    // Long polls of two seconds: long enough for the broker to answer one.
    o.set_long_polling_timeout(Duration::from_secs(2));
    o
}

async fn producer(endpoint: &str, topic: &str) -> Producer {
    let mut option = ProducerOption::default();
    option.set_topics(vec![topic]);
    let mut p = Producer::new(option, client_option(endpoint)).expect("producer");
    p.start().await.expect("start the producer");
    p
}

async fn consumer(endpoint: &str, group: &str, topic: &str) -> SimpleConsumer {
    let mut option = SimpleConsumerOption::default();
    option.set_topics(vec![topic]);
    option.set_consumer_group(group);
    let mut c = SimpleConsumer::new(option, client_option(endpoint)).expect("consumer");
    c.start().await.expect("start the consumer");
    c
}

async fn send(p: &Producer, scenario: &str, builder: MessageBuilder, body: &[u8], extra: Value) {
    let r = p
        .send(builder.build().expect("message"))
        .await
        .expect("send");
    emit(extra, "sent", scenario, r.message_id(), body);
}

/// Receives until `count` messages came (or `within` passed), acking each.
async fn receive_all(
    c: &SimpleConsumer,
    topic: &str,
    filter: &FilterExpression,
    scenario: &str,
    count: usize,
    within: Duration,
) {
    let mut got = 0;
    let deadline = Instant::now() + within;
    while got < count && Instant::now() < deadline {
        let messages: Vec<MessageView> = match c
            .receive_with(topic, filter, 32, Duration::from_secs(10))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                eprintln!("receive: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for m in messages {
            let line = json!({
                "tag": m.tag(),
                "keys": m.keys(),
                "properties": m.properties(),
                "group": m.message_group(),
                "attempt": m.delivery_attempt(),
                "at_ms": now_ms(),
            });
            emit(line, "received", scenario, m.message_id(), m.body());
            c.ack(&m).await.expect("ack");
            emit(json!({}), "acked", scenario, m.message_id(), m.body());
            got += 1;
        }
    }
}

fn all() -> FilterExpression {
    FilterExpression::new(FilterType::Tag, "*")
}

async fn normal(endpoint: &str, name: &str) {
    let p = producer(endpoint, name).await;
    for i in 0..20 {
        let body = format!("normal-{i}").repeat(i + 1).into_bytes();
        let props = HashMap::from([("n".to_string(), i.to_string())]);
        let b = MessageBuilder::builder()
            .set_topic(name)
            .set_body(body.clone())
            .set_tag("TagA")
            .set_keys(vec![format!("key-{i}")])
            .set_properties(props);
        send(&p, "normal", b, &body, json!({"tag": "TagA"})).await;
    }
    p.shutdown().await.expect("shutdown");
    let c = consumer(endpoint, name, name).await;
    receive_all(&c, name, &all(), "normal", 20, DEADLINE).await;
    c.shutdown().await.expect("shutdown");
}

async fn fifo(endpoint: &str, name: &str) {
    let p = producer(endpoint, name).await;
    for i in 0..5 {
        for g in ["g1", "g2", "g3"] {
            let body = format!("{g}-{i}").into_bytes();
            let b = MessageBuilder::fifo_message_builder(name, body.clone(), g);
            send(&p, "fifo", b, &body, json!({"group": g, "seq": i})).await;
        }
    }
    p.shutdown().await.expect("shutdown");
    let c = consumer(endpoint, name, name).await;
    receive_all(&c, name, &all(), "fifo", 15, DEADLINE).await;
    c.shutdown().await.expect("shutdown");
}

async fn delay(endpoint: &str, name: &str) {
    let p = producer(endpoint, name).await;
    // The crate takes the delivery time in whole seconds.
    let due_s = now_ms() / 1000 + 3;
    for i in 0..3 {
        let body = format!("delay-{i}").into_bytes();
        let b = MessageBuilder::delay_message_builder(name, body.clone(), due_s);
        send(&p, "delay", b, &body, json!({"due_ms": due_s * 1000})).await;
    }
    p.shutdown().await.expect("shutdown");
    let c = consumer(endpoint, name, name).await;
    receive_all(&c, name, &all(), "delay", 3, DEADLINE).await;
    c.shutdown().await.expect("shutdown");
}

async fn transaction(endpoint: &str, name: &str) {
    let checked = Arc::new(AtomicBool::new(false));
    let seen = checked.clone();
    let mut option = ProducerOption::default();
    option.set_topics(vec![name]);
    let checker = Box::new(move |_transaction_id: String, m: MessageView| {
        emit(
            json!({}),
            "checked",
            "transaction",
            m.message_id(),
            m.body(),
        );
        seen.store(true, Ordering::SeqCst);
        TransactionResolution::COMMIT
    });
    let mut p = Producer::new_transaction_producer(option, client_option(endpoint), checker)
        .expect("transaction producer");
    p.start().await.expect("start the producer");
    for outcome in ["commit", "rollback", "check"] {
        let body = format!("tx-{outcome}").into_bytes();
        let m = MessageBuilder::transaction_message_builder(name, body.clone())
            .build()
            .expect("message");
        let t = p.send_transaction_message(m).await.expect("send");
        emit(
            json!({"outcome": outcome}),
            "sent",
            "transaction",
            t.message_id(),
            &body,
        );
        match outcome {
            "commit" => t.commit().await.expect("commit"),
            "rollback" => t.rollback().await.expect("rollback"),
            _ => {} // stays open until the broker checks it back
        }
    }
    let deadline = Instant::now() + DEADLINE;
    while !checked.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = consumer(endpoint, name, name).await;
    receive_all(&c, name, &all(), "transaction", 2, DEADLINE).await;
    // Nothing else arrives: the rolled-back one never does.
    receive_all(&c, name, &all(), "transaction", 1, Duration::from_secs(3)).await;
    c.shutdown().await.expect("shutdown");
    p.shutdown().await.expect("shutdown");
}

async fn filters(endpoint: &str, name: &str) {
    let p = producer(endpoint, name).await;
    for i in 0..6 {
        let tag = if i % 2 == 0 { "TagA" } else { "TagB" };
        let body = format!("filter-{i}").into_bytes();
        let props = HashMap::from([("n".to_string(), i.to_string())]);
        let b = MessageBuilder::builder()
            .set_topic(name)
            .set_body(body.clone())
            .set_tag(tag)
            .set_properties(props);
        send(&p, "filters", b, &body, json!({"tag": tag, "n": i})).await;
    }
    p.shutdown().await.expect("shutdown");
    let tags = consumer(endpoint, &format!("{name}-tag"), name).await;
    let tag_b = FilterExpression::new(FilterType::Tag, "TagB");
    receive_all(&tags, name, &tag_b, "filters-tag", 3, DEADLINE).await;
    tags.shutdown().await.expect("shutdown");
    let sql = consumer(endpoint, &format!("{name}-sql"), name).await;
    let n_over_3 = FilterExpression::new(FilterType::Sql, "n > 3");
    receive_all(&sql, name, &n_over_3, "filters-sql", 2, DEADLINE).await;
    sql.shutdown().await.expect("shutdown");
}

/// Sends for our SDK to receive.
async fn interop_send(endpoint: &str, name: &str) {
    let p = producer(endpoint, name).await;
    for i in 0..5u8 {
        let body: Vec<u8> = (0..200u32).map(|j| (u32::from(i) + j) as u8).collect();
        let props = HashMap::from([("lang".to_string(), "rust".to_string())]);
        let b = MessageBuilder::builder()
            .set_topic(name)
            .set_body(body.clone())
            .set_tag("FromRustCrate")
            .set_keys(vec![format!("crate-{i}")])
            .set_properties(props);
        send(&p, "interop-send", b, &body, json!({})).await;
    }
    p.shutdown().await.expect("shutdown");
}

/// Receives what our SDK sent (the test sent 5 first).
async fn interop_receive(endpoint: &str, name: &str) {
    let c = consumer(endpoint, name, name).await;
    receive_all(&c, name, &all(), "interop-receive", 5, DEADLINE).await;
    c.shutdown().await.expect("shutdown");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (endpoint, run) = (&args[1], &args[2]);
    for scenario in &args[3..] {
        let name = format!("{scenario}-{run}");
        match scenario.as_str() {
            "normal" => normal(endpoint, &name).await,
            "fifo" => fifo(endpoint, &name).await,
            "delay" => delay(endpoint, &name).await,
            "transaction" => transaction(endpoint, &name).await,
            "filters" => filters(endpoint, &name).await,
            "interop-send" => interop_send(endpoint, &name).await,
            "interop-receive" => interop_receive(endpoint, &name).await,
            other => panic!("unknown scenario {other}"),
        }
        println!("{}", json!({"event": "done", "scenario": scenario}));
    }
}
