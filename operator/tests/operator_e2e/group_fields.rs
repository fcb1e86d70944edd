//! ConsumerGroup fields and a Topic's `messageType` take effect on the brokers:
//! an SQL subscription filters deliveries, `ordered` holds a queue while its
//! message is unacknowledged, `Broadcast` gives every member every message,
//! `maxDeliveryAttempts`/`retryBackoff`/`deadLetter` bound redeliveries and
//! decide between the dead-letter topic and a drop, and `FIFO` reaches every
//! broker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{ConsumeMode, Filter, Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::eventually_every;
use kube::api::DeleteParams;
use kube::{Api, Client};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::env::*;
use crate::fields::settled_everywhere;

/// A ConsumerGroup of one subscription to `topic`, with more spec lines.
fn group_yaml(name: &str, topic: &str, subscription: &str, extra: &str) -> String {
    format!(
        "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: {name}\n  namespace: {APP_NS}\nspec:\n  subscriptions:\n  - topic: {topic}\n{subscription}{extra}"
    )
}

/// Waits until every broker holds `group` with settings `settled` accepts.
async fn group_everywhere(
    env: &Env,
    group: &str,
    what: &str,
    settled: impl Fn(&pb::Group) -> bool,
) {
    eventually_every(POLL, Duration::from_secs(30), what, async || {
        for i in 0..env.ips.len() {
            let held = env.admin(i).describe_group(group).await.ok()?.group?;
            if !settled(&held) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Applies a topic of `queues` queues and waits for it on every broker.
async fn apply_topic(env: &Env, name: &str, queues: u32, extra: &str) {
    kubectl_apply(env, &topic_yaml(name, queues, extra));
    eventually_every(
        POLL,
        Duration::from_secs(30),
        &format!("{name} on every broker"),
        async || queues_everywhere(env, name, queues).await.then_some(()),
    )
    .await;
    wait_routed(env, APP_NS, name).await;
}

/// Whether the group has nothing left to deliver on any broker.
async fn group_done(env: &Env, group: &str) -> bool {
    for i in 0..env.ips.len() {
        let Ok(d) = env.admin(i).describe_group(group).await else {
            return false;
        };
        if d.queues.iter().any(|q| q.lag > 0 || q.in_flight > 0) {
            return false;
        }
    }
    true
}

/// Deletes the scenario's groups and topics and waits until they are gone, so
/// later steps see only what they make.
async fn delete_all(client: &Client, group_names: &[&str], topic_names: &[&str]) {
    let topics: Api<Topic> = Api::namespaced(client.clone(), APP_NS);
    let groups: Api<ConsumerGroup> = Api::namespaced(client.clone(), APP_NS);
    for name in group_names {
        groups.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in topic_names {
        topics.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the groups and topics deleted",
        async || {
            for name in group_names {
                groups.get_opt(name).await.ok()?.is_none().then_some(())?;
            }
            for name in topic_names {
                topics.get_opt(name).await.ok()?.is_none().then_some(())?;
            }
            Some(())
        },
    )
    .await;
}

pub(crate) async fn an_sql_subscription_filters_deliveries(env: &Env, client: &Client) {
    step("subscriptions[].sql: the group receives exactly the matching messages");
    const SQL: &str = "region = 'eu'";
    apply_topic(env, "regional", 3, "").await;
    kubectl_apply(
        env,
        &group_yaml("eu-only", "regional", &format!("    sql: \"{SQL}\"\n"), ""),
    );
    group_everywhere(
        env,
        "eu-only",
        "the SQL subscription on every broker",
        |g| {
            g.subscriptions
                == [pb::GroupSubscription {
                    topic: "regional".into(),
                    filter_type: pb::FilterType::Sql as i32,
                    filter_expression: SQL.into(),
                }]
        },
    )
    .await;
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let mut matching = BTreeSet::new();
    for i in 0..30 {
        let region = ["eu", "us", "apac"][i % 3];
        let body = format!("{region}-{i}");
        producer
            .send(Message::new("regional", body.clone()).with_property("region", region))
            .await
            .unwrap();
        if region == "eu" {
            matching.insert(body);
        }
    }
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(env.grpc(0), "eu-only", "regional")
        .namespace(APP_NS)
        .filter(Filter::Sql(SQL.into()))
        .start(move |m| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .push(String::from_utf8(m.body.to_vec()).unwrap());
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "eu-only at the end of the topic",
        async || {
            let done = seen.lock().len() >= matching.len() && group_done(env, "eu-only").await;
            done.then_some(())
        },
    )
    .await;
    consumer.shutdown().await;
    let got = seen.lock().clone();
    assert_eq!(got.len(), matching.len(), "each once: {got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), matching);
    delete_all(client, &["eu-only"], &["regional"]).await;
}

pub(crate) async fn an_ordered_group_holds_the_queue_until_the_ack(env: &Env, client: &Client) {
    step("ordered: one message in flight per queue until it is acked, then in order");
    apply_topic(env, "sequence", 1, "").await;
    kubectl_apply(
        env,
        &group_yaml("in-order", "sequence", "", "  ordered: true\n"),
    );
    group_everywhere(env, "in-order", "ordered on every broker", |g| g.ordered).await;
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let sent: Vec<String> = (0..3).map(|i| format!("step-{i}")).collect();
    for body in &sent {
        producer
            .send(Message::new("sequence", body.clone()))
            .await
            .unwrap();
    }
    // The first message's handler waits for the gate: its ack is held back.
    let gate = Arc::new(Notify::new());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (sink, held) = (seen.clone(), gate.clone());
    let consumer = PushConsumerBuilder::new(env.grpc(0), "in-order", "sequence")
        .namespace(APP_NS)
        .start(move |m| {
            let (sink, held) = (sink.clone(), held.clone());
            async move {
                let body = String::from_utf8(m.body.to_vec()).unwrap();
                let first = body == "step-0";
                sink.lock().push(body);
                if first {
                    held.notified().await;
                }
                Ok::<(), String>(())
            }
        })
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the first delivery",
        async || (!seen.lock().is_empty()).then_some(()),
    )
    .await;
    // Time for the rest to arrive if the broker did not hold the queue.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*seen.lock(), ["step-0"], "the queue was not held");
    gate.notify_one();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "every delivery",
        async || {
            (seen.lock().len() >= sent.len() && group_done(env, "in-order").await).then_some(())
        },
    )
    .await;
    consumer.shutdown().await;
    assert_eq!(*seen.lock(), sent);
    delete_all(client, &["in-order"], &["sequence"]).await;
}

pub(crate) async fn a_broadcast_group_gives_every_member_everything(env: &Env, client: &Client) {
    step("consumeMode Broadcast: two members each receive every message");
    apply_topic(env, "news", 3, "").await;
    kubectl_apply(
        env,
        &group_yaml("everyone", "news", "", "  consumeMode: Broadcast\n"),
    );
    group_everywhere(env, "everyone", "Broadcast on every broker", |g| {
        g.mode == pb::ConsumeMode::Broadcast as i32
    })
    .await;
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut members = Vec::new();
    for member in ["member-a", "member-b"] {
        let sink = seen.clone();
        let consumer = PushConsumerBuilder::new(env.grpc(0), "everyone", "news")
            .namespace(APP_NS)
            .mode(ConsumeMode::Broadcast)
            .client_id(member)
            .start(move |m| {
                let sink = sink.clone();
                async move {
                    let body = String::from_utf8(m.body.to_vec()).unwrap();
                    sink.lock().push((member.to_string(), body));
                    Ok::<(), String>(())
                }
            })
            .await
            .unwrap();
        members.push(consumer);
    }
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let sent: BTreeSet<String> = (0..20).map(|i| format!("news-{i}")).collect();
    for body in &sent {
        producer
            .send(Message::new("news", body.clone()))
            .await
            .unwrap();
    }
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "every member at the end of the topic",
        async || {
            let done = seen.lock().len() >= 2 * sent.len() && group_done(env, "everyone").await;
            done.then_some(())
        },
    )
    .await;
    for consumer in members {
        consumer.shutdown().await;
    }
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 2 * sent.len(), "each once per member: {seen:?}");
    for member in ["member-a", "member-b"] {
        let got: BTreeSet<String> = seen
            .iter()
            .filter(|(m, _)| m == member)
            .map(|(_, body)| body.clone())
            .collect();
        assert_eq!(got, sent, "{member}");
    }
    delete_all(client, &["everyone"], &["news"]).await;
}

/// The stored records with `key` in `topic`, from every broker (a topic a
/// broker does not have contributes none).
async fn records_by_key(env: &Env, topic: &str, key: &str) -> Vec<pb::Message> {
    let mut found = Vec::new();
    for i in 0..env.ips.len() {
        found.extend(
            env.admin(i)
                .lookup_by_key(topic, key)
                .await
                .unwrap_or_default(),
        );
    }
    found
}

/// Sends one message keyed `poison` to `topic` and has `group` fail every
/// delivery of it until the group is done with it; the delivery attempts seen.
async fn fail_every_delivery(
    env: &Env,
    group: &str,
    topic: &str,
    until: impl AsyncFn() -> bool,
) -> Vec<u32> {
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    producer
        .send(Message::new(topic, "poison").with_key("poison"))
        .await
        .unwrap();
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let log = attempts.clone();
    let consumer = PushConsumerBuilder::new(env.grpc(0), group, topic)
        .namespace(APP_NS)
        .start(move |m| {
            let log = log.clone();
            async move {
                log.lock().push(m.delivery_attempt);
                Err("cannot handle it".to_string())
            }
        })
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        &format!("{group} done with the poison message"),
        async || (until().await && group_done(env, group).await).then_some(()),
    )
    .await;
    consumer.shutdown().await;
    attempts.lock().clone()
}

pub(crate) async fn failed_messages_are_retried_then_dead_lettered_or_dropped(
    env: &Env,
    client: &Client,
) {
    step("maxDeliveryAttempts 2 + retryBackoff 200ms: two deliveries, then %DLQ%<group>");
    apply_topic(env, "fragile", 1, "").await;
    let retries = "  maxDeliveryAttempts: 2\n  retryBackoff: [\"200ms\"]\n";
    kubectl_apply(env, &group_yaml("fails", "fragile", "", retries));
    group_everywhere(env, "fails", "the retry settings on every broker", |g| {
        g.max_delivery_attempts == 2 && g.retry_backoff_ms == [200] && !g.disable_dead_letter
    })
    .await;
    let attempts = fail_every_delivery(env, "fails", "fragile", async || {
        !records_by_key(env, "%DLQ%fails", "poison").await.is_empty()
    })
    .await;
    assert_eq!(
        attempts,
        [1, 2],
        "delivered exactly maxDeliveryAttempts times"
    );
    let dead = records_by_key(env, "%DLQ%fails", "poison").await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(&dead[0].body[..], b"poison");
    assert_eq!(dead[0].properties["__DLQ_ORIGIN_TOPIC"], "fragile");
    assert_eq!(dead[0].properties["__DLQ_DELIVERY_ATTEMPTS"], "2");
    let mut stored = 0;
    for i in 0..env.ips.len() {
        stored += messages_on(env, i, "%DLQ%fails").await.unwrap_or(0);
    }
    assert_eq!(stored, 1, "one dead letter, seen as the drop check counts");

    step("deadLetter false: the message is dropped after its attempts");
    apply_topic(env, "fragile-too", 1, "").await;
    kubectl_apply(
        env,
        &group_yaml(
            "drops",
            "fragile-too",
            "",
            &format!("{retries}  deadLetter: false\n"),
        ),
    );
    group_everywhere(env, "drops", "deadLetter off on every broker", |g| {
        g.max_delivery_attempts == 2 && g.disable_dead_letter
    })
    .await;
    let attempts = fail_every_delivery(env, "drops", "fragile-too", async || true).await;
    assert_eq!(
        attempts,
        [1, 2],
        "delivered exactly maxDeliveryAttempts times"
    );
    for i in 0..env.ips.len() {
        let stored = messages_on(env, i, "%DLQ%drops").await.unwrap_or(0);
        assert_eq!(stored, 0, "broker {i} dead-lettered it");
    }
    delete_all(client, &["fails", "drops"], &["fragile", "fragile-too"]).await;
}

pub(crate) async fn a_fifo_topic_is_fifo_on_every_broker(env: &Env, client: &Client) {
    step("messageType FIFO: every broker holds the topic as FIFO");
    kubectl_apply(env, &topic_yaml("ledger", 2, "  messageType: FIFO\n"));
    settled_everywhere(env, "ledger", "FIFO on every broker", |t| {
        t.message_type == pb::MessageType::Fifo as i32
    })
    .await;
    delete_all(client, &[], &["ledger"]).await;
}
