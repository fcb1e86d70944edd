//! Upgrading from an operator without namespaces: the Topics and
//! ConsumerGroups it reconciled keep their plain broker names in the default
//! namespace (routes, messages, progress and cleanup), while new resources get
//! their Kubernetes namespace.

use std::time::Duration;

use dduomq_client::proto as pb;
use dduomq_client::{Message, ProducerBuilder};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::eventually_every;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::env::*;

/// The broker namespace that holds every pre-namespace name.
const DEFAULT_NS: &str = "default";

/// A status as a pre-namespace operator wrote it: reconciled, no record of a
/// broker namespace.
fn status_before_namespaces(message: &str) -> Value {
    json!({"status": {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "Reconciled", "message": message,
            "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z",
        }],
        "observedGeneration": 1,
    }})
}

/// Topic `legacy` and group `legacy-readers` in [`APP_NS`] are made as a
/// pre-namespace operator left them (paused while their status is written by
/// hand; plain `legacy` on the brokers, with messages); once unpaused the
/// operator keeps them in the default namespace, where the messages are
/// consumed and from where deleting the Topic removes plain `legacy`. A new
/// Topic in the same namespace gets that namespace.
pub(crate) async fn resources_of_a_pre_namespace_operator_keep_their_names(
    env: &Env,
    client: &Client,
) {
    step(
        "an operator upgrade keeps pre-namespace Topics and groups on their default-namespace names",
    );
    let topics: Api<Topic> = Api::namespaced(client.clone(), APP_NS);
    let groups: Api<ConsumerGroup> = Api::namespaced(client.clone(), APP_NS);
    let paused = "  annotations: {dduomq.io/paused: \"true\"}\n";
    let topic = topic_yaml("legacy", 4, "").replace(
        &format!("  namespace: {APP_NS}\n"),
        &format!("  namespace: {APP_NS}\n{paused}"),
    );
    let group = format!(
        "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: legacy-readers\n  namespace: {APP_NS}\n{paused}spec:\n  subscriptions:\n  - topic: legacy\n"
    );
    let out = env.kubectl(
        &["apply", "-f", "-"],
        Some(&format!("{topic}\n---\n{group}")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let by_hand = PatchParams::default();
    topics
        .patch_status(
            "legacy",
            &by_hand,
            &Patch::Merge(status_before_namespaces("4 queues on 3 brokers")),
        )
        .await
        .unwrap();
    groups
        .patch_status(
            "legacy-readers",
            &by_hand,
            &Patch::Merge(status_before_namespaces("on 3 brokers")),
        )
        .await
        .unwrap();
    for i in 0..env.ips.len() {
        env.admin_in(i, DEFAULT_NS)
            .create_topic("legacy", 4, pb::MessageType::Normal)
            .await
            .unwrap();
    }

    let unpause = json!({"metadata": {"annotations": {"dduomq.io/paused": null}}});
    groups
        .patch("legacy-readers", &by_hand, &Patch::Merge(&unpause))
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "legacy-readers reconciled into the default namespace",
        async || {
            let s = groups.get("legacy-readers").await.ok()?.status?;
            (s.broker_namespace.as_deref() == Some(DEFAULT_NS)).then_some(())
        },
    )
    .await;
    for i in 0..env.ips.len() {
        assert!(
            env.admin_in(i, DEFAULT_NS)
                .describe_group("legacy-readers")
                .await
                .is_ok(),
            "broker {i}: plain legacy-readers exists"
        );
        assert!(
            env.admin(i).describe_group("legacy-readers").await.is_err(),
            "broker {i}: no legacy-readers in namespace {APP_NS}"
        );
    }

    // The backlog, sent through the route of plain `legacy` while the Topic
    // itself is still paused.
    let producer = ProducerBuilder::new(env.grpc(0)).build().unwrap();
    let sent: Vec<String> = (0..8).map(|i| format!("legacy-{i}")).collect();
    let (first, rest) = sent.split_first().unwrap();
    // The route publisher routes plain `legacy` from the status alone.
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "a route for plain legacy",
        async || {
            producer
                .send(Message::new("legacy", first.clone()))
                .await
                .ok()
        },
    )
    .await;
    for body in rest {
        producer
            .send(Message::new("legacy", body.clone()))
            .await
            .unwrap();
    }

    topics
        .patch("legacy", &by_hand, &Patch::Merge(&unpause))
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "legacy Ready in the default namespace",
        async || {
            let t = topics.get("legacy").await.ok()?;
            let kept = t.status.as_ref()?.broker_namespace.as_deref() == Some(DEFAULT_NS);
            (kept && ready(t.status.as_ref())).then_some(())
        },
    )
    .await;
    for i in 0..env.ips.len() {
        assert!(
            env.admin(i).describe_topic("legacy").await.is_err(),
            "broker {i}: no new empty legacy in namespace {APP_NS}"
        );
    }
    assert_eq!(
        route_on(env, "legacy").await,
        None,
        "no route for legacy in namespace {APP_NS}"
    );
    let mut got = consume_in(env, DEFAULT_NS, "legacy-readers", "legacy", sent.len()).await;
    got.sort();
    assert_eq!(got, sent, "the backlog of plain legacy, consumed exactly");

    step("a Topic created after the upgrade gets its Kubernetes namespace");
    kubectl_apply(env, &topic_yaml("fresh", 2, ""));
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "fresh Ready in its namespace",
        async || {
            let t = topics.get("fresh").await.ok()?;
            let own = t.status.as_ref()?.broker_namespace.as_deref() == Some(APP_NS);
            (own && ready(t.status.as_ref())).then_some(())
        },
    )
    .await;
    for i in 0..env.ips.len() {
        assert_eq!(queues_on(env, i, "fresh").await, Some(2), "broker {i}");
        assert!(
            env.admin_in(i, DEFAULT_NS)
                .describe_topic("fresh")
                .await
                .is_err(),
            "broker {i}: nothing named fresh in the default namespace"
        );
    }

    step("deleting the pre-namespace Topic deletes plain legacy");
    for name in ["legacy", "fresh"] {
        topics.delete(name, &DeleteParams::default()).await.unwrap();
    }
    groups
        .delete("legacy-readers", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the Topics deleted",
        async || {
            let gone = topics.get_opt("legacy").await.ok()?.is_none()
                && topics.get_opt("fresh").await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
    for i in 0..env.ips.len() {
        assert!(
            env.admin_in(i, DEFAULT_NS)
                .describe_topic("legacy")
                .await
                .is_err(),
            "broker {i}: plain legacy is deleted, not leaked"
        );
    }
}
