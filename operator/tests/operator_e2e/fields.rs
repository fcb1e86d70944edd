//! Topic fields that must reach every broker: `maxMessageBytes` (oversize
//! sends refused with the limit in the error, changes on the live Topic
//! applied) and `retention` (a message older than it is not delivered).

use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::proto::messaging_service_client::MessagingServiceClient;
use dduomq_client::{Message, ProducerBuilder, now_millis};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::eventually_every;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::env::*;

/// The topic as broker `i` has it.
async fn topic_on(env: &Env, i: usize, topic: &str) -> Option<pb::Topic> {
    env.admin(i).describe_topic(topic).await.ok()?.topic
}

/// Waits until every broker has `topic` with settings that `settled` accepts.
pub(crate) async fn settled_everywhere(
    env: &Env,
    topic: &str,
    what: &str,
    settled: impl Fn(&pb::Topic) -> bool,
) {
    eventually_every(POLL, Duration::from_secs(30), what, async || {
        for i in 0..env.ips.len() {
            if !topic_on(env, i, topic).await.is_some_and(|t| settled(&t)) {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Sends one message of `size` body bytes straight to broker `i` (not routed,
/// so every broker is asked); the refusal's message on error.
async fn send_to(env: &Env, i: usize, topic: &str, size: usize) -> Result<(), String> {
    let mut client = MessagingServiceClient::connect(format!("http://{}", env.grpc(i)))
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::SendRequest {
        messages: vec![pb::OutgoingMessage {
            topic: topic.into(),
            body: vec![b'x'; size].into(),
            born_timestamp_ms: now_millis(),
            ..Default::default()
        }],
    });
    request.metadata_mut().insert(
        dduomq_proto::namespace::NAMESPACE_METADATA,
        APP_NS.parse().expect("an ASCII namespace"),
    );
    client
        .send(request)
        .await
        .map(|_| ())
        .map_err(|status| status.message().to_string())
}

async fn patch_spec(topics: &Api<Topic>, name: &str, spec: serde_json::Value) {
    topics
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .unwrap();
}

/// `maxMessageBytes` and `retention` take effect on every broker.
pub(crate) async fn topic_fields_reach_the_brokers(env: &Env, client: &Client) {
    let topics: Api<Topic> = Api::namespaced(client.clone(), APP_NS);
    let groups: Api<ConsumerGroup> = Api::namespaced(client.clone(), APP_NS);

    step("maxMessageBytes: an oversize send is refused on every broker with the limit");
    kubectl_apply(env, &topic_yaml("sized", 3, "  maxMessageBytes: 1024\n"));
    settled_everywhere(env, "sized", "maxMessageBytes 1024 on every broker", |t| {
        t.max_message_bytes == 1024
    })
    .await;
    for i in 0..env.ips.len() {
        let refused = send_to(env, i, "sized", 2000).await.unwrap_err();
        assert!(
            refused.contains("takes at most 1024"),
            "broker {i}: {refused}"
        );
        send_to(env, i, "sized", 500).await.unwrap();
    }

    step("maxMessageBytes changed on the live Topic reaches the brokers");
    patch_spec(&topics, "sized", json!({"maxMessageBytes": 4096})).await;
    settled_everywhere(env, "sized", "maxMessageBytes 4096 on every broker", |t| {
        t.max_message_bytes == 4096
    })
    .await;
    for i in 0..env.ips.len() {
        send_to(env, i, "sized", 2000).await.unwrap();
    }

    step("retention: a message older than the topic's retention is not delivered");
    kubectl_apply(env, &topic_yaml("brief", 3, "  retention: 2s\n"));
    settled_everywhere(env, "brief", "retention 2s on every broker", |t| {
        t.retention_ms == 2000
    })
    .await;
    wait_routed(env, APP_NS, "brief").await;
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let old = producer.send(Message::new("brief", "old")).await.unwrap();
    let expired_at = old.store_timestamp_ms + 2000;
    tokio::time::sleep(Duration::from_millis(
        (expired_at - now_millis()).max(0) as u64 + 200,
    ))
    .await;
    // Every queue's minimum moved past it.
    for i in 0..env.ips.len() {
        let d = env.admin(i).describe_topic("brief").await.unwrap();
        assert!(
            d.queues.iter().all(|q| q.min_offset == q.max_offset),
            "broker {i}: {:?}",
            d.queues
        );
    }
    // A longer retention from now on keeps what comes next deliverable
    // however slow the machine; the expired message stays expired.
    patch_spec(&topics, "brief", json!({"retention": "1h"})).await;
    settled_everywhere(env, "brief", "retention 1h on every broker", |t| {
        t.retention_ms == 3_600_000
    })
    .await;
    kubectl_apply(
        env,
        &format!(
            "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: latecomers\n  namespace: {APP_NS}\nspec:\n  subscriptions:\n  - topic: brief\n"
        ),
    );
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "latecomers Ready",
        async || {
            let g = groups.get("latecomers").await.ok()?;
            g.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.status == "True"))
                .then_some(())
        },
    )
    .await;
    producer.send(Message::new("brief", "fresh")).await.unwrap();
    assert_eq!(consume(env, "latecomers", "brief", 1).await, ["fresh"]);

    // Later steps see the topics they made only.
    groups
        .delete("latecomers", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["sized", "brief"] {
        topics.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "sized and brief deleted",
        async || {
            for name in ["sized", "brief"] {
                if topics.get_opt(name).await.ok()?.is_some() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}
