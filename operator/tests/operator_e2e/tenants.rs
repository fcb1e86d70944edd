//! Namespaces as tenants: a Topic's Kubernetes namespace is its namespace on
//! the brokers, so the same name lives in two namespaces, each with its own
//! messages.

use std::time::Duration;

use dduomq_client::{Message, ProducerBuilder, PushConsumerBuilder};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::eventually_every;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use parking_lot::Mutex;
use serde_json::json;
use std::process::Command;
use std::sync::Arc;

use crate::env::*;

/// The second tenant's namespace.
const OTHER_NS: &str = "other";

/// Topic `orders` and ConsumerGroup `billing` (already Ready in [`APP_NS`],
/// the topic with 10 queues) are applied in a second namespace: all are Ready,
/// messages sent in one are consumed only there, and deleting one leaves the
/// other alone.
pub(crate) async fn same_name_in_two_namespaces(env: &Env, client: &Client) {
    step("the same topic name in two namespaces: both Ready, messages stay in their namespace");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": OTHER_NS}})).unwrap(),
        )
        .await
        .unwrap();
    let second =
        topic_yaml("orders", 3, "").replace(&format!("namespace: {APP_NS}"), "namespace: other");
    let group = format!(
        "apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: billing\n  namespace: {OTHER_NS}\nspec:\n  subscriptions:\n  - topic: orders\n"
    );
    let out = env.kubectl(
        &["apply", "-f", "-"],
        Some(&format!("{second}\n---\n{group}")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let others: Api<Topic> = Api::namespaced(client.clone(), OTHER_NS);
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "orders Ready in namespace other",
        async || {
            let t = others.get("orders").await.ok()?;
            ready(t.status.as_ref()).then_some(())
        },
    )
    .await;
    let other_groups: Api<ConsumerGroup> = Api::namespaced(client.clone(), OTHER_NS);
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "billing Ready in namespace other",
        async || {
            let g = other_groups.get("billing").await.ok()?;
            g.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    for i in 0..3 {
        let theirs = env.admin_in(i, OTHER_NS).describe_topic("orders").await;
        assert_eq!(
            theirs.unwrap().queues.len(),
            3,
            "broker {i}: namespace other's orders has its own 3 queues"
        );
        assert_eq!(
            queues_on(env, i, "orders").await,
            Some(10),
            "broker {i}: namespace apps' orders is untouched"
        );
    }
    let before: Vec<Option<u64>> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(messages_on(env, i, "orders").await);
        }
        v
    };

    wait_routed(env, OTHER_NS, "orders").await;
    let producer = ProducerBuilder::new(env.grpc(0))
        .namespace(OTHER_NS)
        .build()
        .unwrap();
    let sent: Vec<String> = (0..6).map(|i| format!("other-{i}")).collect();
    for body in &sent {
        producer
            .send(Message::new("orders", body.clone()))
            .await
            .unwrap();
    }
    for (i, count) in before.iter().enumerate() {
        assert_eq!(
            messages_on(env, i, "orders").await,
            *count,
            "broker {i}: nothing sent in namespace other lands in apps' orders"
        );
    }
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let consumer = PushConsumerBuilder::new(env.grpc(0), "billing", "orders")
        .namespace(OTHER_NS)
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
        "namespace other's 6 messages",
        async || (seen.lock().len() >= sent.len()).then_some(()),
    )
    .await;
    consumer.shutdown().await;
    let mut got = seen.lock().clone();
    got.sort();
    assert_eq!(
        got, sent,
        "namespace other consumes exactly its own messages"
    );
    assert_eq!(
        total_lag(env, "billing").await,
        0,
        "group billing of namespace apps has nothing new to consume"
    );

    other_groups
        .delete("billing", &DeleteParams::default())
        .await
        .unwrap();
    others
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "namespace other's Topic deleted",
        async || others.get_opt("orders").await.ok()?.is_none().then_some(()),
    )
    .await;
    for i in 0..3 {
        assert!(
            env.admin_in(i, OTHER_NS)
                .describe_topic("orders")
                .await
                .is_err(),
            "broker {i}: namespace other's orders is deleted"
        );
        assert_eq!(
            queues_on(env, i, "orders").await,
            Some(10),
            "broker {i}: namespace apps' orders is untouched"
        );
    }
}

/// A Topic whose namespace and name together are longer than the brokers store
/// (here `other%` + 122 characters = 128 > 127): without the chart's admission
/// policy the operator reports it Ready=False, reason NameTooLong, and leaves
/// the brokers alone; with the policy (rendered from the chart) the API server
/// refuses it at `kubectl apply` with the numbers.
pub(crate) async fn too_long_with_the_namespace(env: &Env, client: &Client) {
    step(
        "a namespace + name too long for the brokers: NameTooLong, then refused by the chart's policy",
    );
    let long = "t".repeat(122);
    let yaml =
        topic_yaml(&long, 1, "").replace(&format!("namespace: {APP_NS}"), "namespace: other");
    kubectl_apply(env, &yaml);
    let others: Api<Topic> = Api::namespaced(client.clone(), OTHER_NS);
    let message = eventually_every(
        POLL,
        Duration::from_secs(30),
        "a NameTooLong condition",
        async || {
            let t = others.get(&long).await.ok()?;
            t.status?
                .conditions
                .into_iter()
                .find(|c| c.reason == "NameTooLong" && c.status == "False")
                .map(|c| c.message)
        },
    )
    .await;
    assert!(
        message.contains("128 characters") && message.contains("at most 127"),
        "{message}"
    );
    for i in 0..3 {
        let listed = env.admin_in(i, OTHER_NS).list_topics().await.unwrap();
        assert!(
            listed.iter().all(|t| t.name != long),
            "broker {i}: the too-long topic is not created: {listed:?}"
        );
    }
    others
        .delete(&long, &DeleteParams::default())
        .await
        .unwrap();
    eventually_every(
        POLL,
        Duration::from_secs(30),
        "the too-long Topic deleted",
        async || others.get_opt(&long).await.ok()?.is_none().then_some(()),
    )
    .await;

    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../helm/dduomq");
    let rendered = Command::new(env.kubectl.with_file_name("helm"))
        .args([
            "template",
            "policy",
            chart,
            "-s",
            "templates/name-length-policy.yaml",
        ])
        .args([
            "--api-versions",
            "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let policy = String::from_utf8(rendered.stdout).unwrap();
    kubectl_apply(env, &policy);
    // The API server takes the new policy into effect shortly after.
    let refusal = eventually_every(
        POLL,
        Duration::from_secs(30),
        "the policy refuses the too-long Topic",
        async || {
            let out = env.kubectl(&["apply", "-f", "-"], Some(&yaml));
            if out.status.success() {
                // Applied before the policy took effect: remove it, try again.
                env.kubectl(&["delete", "-f", "-", "--wait=true"], Some(&yaml));
                return None;
            }
            Some(String::from_utf8_lossy(&out.stderr).into_owned())
        },
    )
    .await;
    assert!(
        refusal.contains("128 characters") && refusal.contains("at most 127"),
        "{refusal}"
    );
    let fits = topic_yaml(&"t".repeat(121), 1, "")
        .replace(&format!("namespace: {APP_NS}"), "namespace: other");
    let out = env.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&fits));
    assert!(
        out.status.success(),
        "127 characters fit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.kubectl(&["delete", "-f", "-"], Some(&policy));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
