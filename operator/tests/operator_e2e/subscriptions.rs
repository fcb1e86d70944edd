//! A ConsumerGroup's subscriptions take effect on the brokers: a group that
//! declares `tag: A` never receives messages tagged B, and a client subscribing
//! to it with another filter is refused.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{Filter, Message, ProducerBuilder, PushConsumerBuilder, Reason};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::eventually_every;
use kube::api::DeleteParams;
use kube::{Api, Client};
use parking_lot::Mutex;

use crate::env::*;

const TOPIC: &str = "tagged";
const GROUP: &str = "only-a";
/// Messages sent, tagged A and B in turn.
const SENT: u32 = 30;

/// The subscription the ConsumerGroup declares, as every broker must hold it.
fn declared() -> Vec<pb::GroupSubscription> {
    vec![pb::GroupSubscription {
        topic: TOPIC.into(),
        filter_type: pb::FilterType::Tag as i32,
        filter_expression: "A".into(),
    }]
}

/// Whether every broker holds the group with its declared subscription.
async fn declared_everywhere(env: &Env) -> bool {
    for i in 0..env.ips.len() {
        let admin = env.admin(i);
        let held = admin
            .describe_group(GROUP)
            .await
            .ok()
            .and_then(|d| d.group)
            .map(|g| g.subscriptions);
        if held != Some(declared()) {
            return false;
        }
    }
    true
}

pub(crate) async fn a_declared_tag_filter_takes_effect(env: &Env, client: &Client) {
    step("a ConsumerGroup with tag A never receives B; a subscriber with tag B is refused");
    let topics: Api<Topic> = Api::namespaced(client.clone(), APP_NS);
    let groups: Api<ConsumerGroup> = Api::namespaced(client.clone(), APP_NS);
    kubectl_apply(env, &topic_yaml(TOPIC, 3, ""));
    let group = format!(
        "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: {GROUP}\n  namespace: {APP_NS}\nspec:\n  subscriptions:\n  - topic: {TOPIC}\n    tag: A\n"
    );
    kubectl_apply(env, &group);
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the topic and the group's subscription on every broker",
        async || {
            (queues_everywhere(env, TOPIC, 3).await && declared_everywhere(env).await).then_some(())
        },
    )
    .await;
    wait_routed(env, APP_NS, TOPIC).await;

    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(APP_NS)
        .build()
        .unwrap();
    let mut tagged_a = BTreeSet::new();
    for i in 0..SENT {
        let (tag, body) = if i % 2 == 0 {
            ("A", format!("a-{i}"))
        } else {
            ("B", format!("b-{i}"))
        };
        producer
            .send(Message::new(TOPIC, body.clone()).with_tag(tag))
            .await
            .unwrap();
        if tag == "A" {
            tagged_a.insert(body);
        }
    }

    let refused = PushConsumerBuilder::new(env.grpc(0), GROUP, TOPIC)
        .namespace(APP_NS)
        .filter(Filter::Tag("B".into()))
        .start(|_| async { Ok::<(), String>(()) })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        refused.reason(),
        Some(Reason::SubscriptionMismatch),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("the tag filter \"A\""),
        "{refused}"
    );

    // Everything that arrives until the group has consumed the whole topic
    // (messages tagged B count as done for it).
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(env.grpc(0), GROUP, TOPIC)
        .namespace(APP_NS)
        .filter(Filter::Tag("A".into()))
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
        "the group at the end of the topic",
        async || {
            let done = seen.lock().len() >= tagged_a.len() && total_lag(env, GROUP).await == 0;
            done.then_some(())
        },
    )
    .await;
    consumer.shutdown().await;
    let got = seen.lock().clone();
    assert_eq!(got.len(), tagged_a.len(), "each once: {got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), tagged_a);
    assert!(
        declared_everywhere(env).await,
        "the group's filter is unchanged"
    );

    groups
        .delete(GROUP, &DeleteParams::default())
        .await
        .unwrap();
    topics
        .delete(TOPIC, &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the group and topic deleted",
        async || {
            let gone = groups.get_opt(GROUP).await.ok()?.is_none()
                && topics.get_opt(TOPIC).await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
}
