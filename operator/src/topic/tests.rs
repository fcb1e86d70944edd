//! Reconcile tests of the Topic controller: the operator's requests to a fake
//! API server, and real brokers.

use std::time::Duration;

use dduomq_client::proto as pb;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Error as FinalizerError;
use serde_json::json;

use crate::context::ReconcileError;
use crate::crd::{AckPolicy, DeletionPolicy, MessageType, Topic, TopicSpec, TopicStatus};
use crate::test_support::{
    NAMESPACE, Published, RESYNC, Requests, Stage, metadata, ready_broker, reconcile_against,
    reconcile_once, release, tenant_admin,
};
use dduomq_testkit::{Broker, free_port};

const FINALIZER: &str = "dduomq.io/topic-cleanup";

/// Topic `orders`: 4 FIFO queues.
fn orders(stage: Stage, deletion_policy: DeletionPolicy) -> Topic {
    Topic {
        metadata: metadata("orders", FINALIZER, stage),
        spec: TopicSpec {
            queues: 4,
            message_type: MessageType::Fifo,
            retention: None,
            max_message_bytes: None,
            ack_policy: None,
            deletion_policy,
        },
        status: None,
    }
}

fn hosted(queues: u32, message_type: pb::MessageType) -> Vec<pb::Topic> {
    vec![pb::Topic {
        name: "orders".into(),
        queues,
        message_type: message_type as i32,
        ..Default::default()
    }]
}

#[tokio::test]
async fn a_new_topic_first_gets_the_finalizer_and_no_broker_is_touched() {
    let r = Requests::new("topics", "orders");
    let broker = Broker::start();
    let topic = orders(Stage::New, DeletionPolicy::Delete);
    let out = reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;
    assert_eq!(out.action(), &Action::await_change());
    assert_eq!(out.request_lines(), [r.finalizers()]);
    assert_eq!(
        out.sent[0].content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        out.sent[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    assert_eq!(tenant_admin(&broker).list_topics().await.expect("list"), []);
}

#[tokio::test]
async fn apply_creates_the_topic_on_every_ready_broker_and_reports_readiness_without_the_placement()
{
    let r = Requests::new("topics", "orders");
    let (a, b) = (Broker::start(), Broker::start());
    let topic = orders(Stage::Finalized, DeletionPolicy::Delete);
    let brokers = vec![ready_broker(0, &a.grpc), ready_broker(1, &b.grpc)];
    let out = reconcile_once(&topic, vec![], brokers).await;

    assert_eq!(out.action(), &Action::requeue(RESYNC));
    for broker in [&a, &b] {
        assert_eq!(
            tenant_admin(broker).list_topics().await.expect("list"),
            hosted(4, pb::MessageType::Fifo)
        );
    }
    assert_eq!(out.request_lines(), [r.event(), r.status()]);
    assert_eq!(
        out.event(0),
        Published::normal("Reconciled", "4 queues on 2 brokers")
    );
    assert_eq!(
        out.sent[1].content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        out.status_patch(1),
        json!({
            "apiVersion": "dduomq.io/v1alpha1",
            "kind": "Topic",
            "status": {
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "Reconciled",
                    "message": "4 queues on 2 brokers", "observedGeneration": 1,
                }],
                "observedGeneration": 1,
                "brokerNamespace": "shop",
                "brokerCount": 2,
            },
        })
    );
    assert!(out.woke_routes());
}

/// `shop%` and 123 characters are 128, one more than the brokers store.
#[tokio::test]
async fn a_name_too_long_with_its_namespace_is_not_ready_and_touches_no_broker() {
    let long = "t".repeat(123);
    let r = Requests::new("topics", &long);
    let broker = Broker::start();
    let mut topic = orders(Stage::Finalized, DeletionPolicy::Delete);
    topic.metadata = metadata(&long, FINALIZER, Stage::Finalized);
    let out = reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert_eq!(out.action(), &Action::requeue(Duration::from_secs(5)));
    assert_eq!(tenant_admin(&broker).list_topics().await.expect("list"), []);
    let problem = format!(
        "\"{long}\" in namespace \"shop\" is stored as 128 characters (shop%{long}); \
         at most 127 are allowed"
    );
    assert_eq!(out.request_lines(), [r.event(), r.status()]);
    assert_eq!(out.event(0), Published::warning("NameTooLong", &problem));
    assert_eq!(
        out.status_patch(1)["status"]["conditions"],
        json!([{
            "type": "Ready", "status": "False", "reason": "NameTooLong",
            "message": problem, "observedGeneration": 1,
        }])
    );

    // Deleting it releases the finalizer without a broker call.
    topic.metadata = metadata(&long, FINALIZER, Stage::Deleting);
    let out = reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;
    assert_eq!(out.request_lines(), [r.finalizers()]);
}

#[tokio::test]
async fn a_broker_refusal_makes_the_topic_not_ready_with_the_brokers_reason() {
    let r = Requests::new("topics", "orders");
    let (a, b) = (Broker::start(), Broker::start());
    tenant_admin(&b)
        .create_topic("orders", 4, pb::MessageType::Normal)
        .await
        .expect("a NORMAL topic of the same name on b");
    let topic = orders(Stage::Finalized, DeletionPolicy::Delete);
    let brokers = vec![ready_broker(0, &a.grpc), ready_broker(1, &b.grpc)];
    let out = reconcile_once(&topic, vec![], brokers).await;

    assert_eq!(out.action(), &Action::requeue(Duration::from_secs(5)));
    let refusal = format!(
        "broker {}: topic \"orders\" already exists with 4 queues of type normal; \
         the message type of a topic cannot change [TOPIC_CONFLICT]",
        b.grpc
    );
    assert_eq!(
        tenant_admin(&a).list_topics().await.expect("list a"),
        hosted(4, pb::MessageType::Fifo)
    );
    assert_eq!(
        tenant_admin(&b).list_topics().await.expect("list b"),
        hosted(4, pb::MessageType::Normal),
        "the refusing broker keeps its topic"
    );
    assert_eq!(out.request_lines(), [r.event(), r.status()]);
    assert_eq!(out.event(0), Published::warning("BrokerError", &refusal));
    let status = &out.status_patch(1)["status"];
    assert_eq!(
        status["conditions"],
        json!([{
            "type": "Ready", "status": "False", "reason": "BrokerError",
            "message": refusal, "observedGeneration": 1,
        }])
    );
    assert_eq!(status["brokerCount"], json!(2));
}

#[tokio::test]
async fn cleanup_deletes_the_topic_from_every_broker_and_releases_the_finalizer() {
    let r = Requests::new("topics", "orders");
    let (a, b) = (Broker::start(), Broker::start());
    tenant_admin(&a)
        .create_topic("orders", 4, pb::MessageType::Fifo)
        .await
        .expect("create on a");
    // b never got the topic: already gone counts as deleted.
    let topic = orders(Stage::Deleting, DeletionPolicy::Delete);
    let brokers = vec![ready_broker(0, &a.grpc), ready_broker(1, &b.grpc)];
    let out = reconcile_once(&topic, vec![], brokers).await;

    assert_eq!(out.action(), &Action::await_change());
    for broker in [&a, &b] {
        assert_eq!(tenant_admin(broker).list_topics().await.expect("list"), []);
    }
    assert_eq!(out.request_lines(), [r.finalizers()]);
    assert_eq!(out.sent[0].body, release(FINALIZER));
    assert!(out.woke_routes());
}

#[tokio::test]
async fn cleanup_with_the_retain_policy_keeps_the_topic_and_releases_the_finalizer() {
    let r = Requests::new("topics", "orders");
    let broker = Broker::start();
    tenant_admin(&broker)
        .create_topic("orders", 4, pb::MessageType::Fifo)
        .await
        .expect("create");
    let topic = orders(Stage::Deleting, DeletionPolicy::Retain);
    let out = reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert_eq!(out.action(), &Action::await_change());
    assert_eq!(
        tenant_admin(&broker).list_topics().await.expect("list"),
        hosted(4, pb::MessageType::Fifo)
    );
    assert_eq!(out.request_lines(), [r.finalizers()]);
    assert_eq!(out.sent[0].body, release(FINALIZER));
}

#[tokio::test]
async fn cleanup_keeps_the_finalizer_while_a_broker_cannot_be_reached() {
    let r = Requests::new("topics", "orders");
    let live = Broker::start();
    tenant_admin(&live)
        .create_topic("orders", 4, pb::MessageType::Fifo)
        .await
        .expect("create");
    let dead = format!("127.0.0.1:{}", free_port());
    let topic = orders(Stage::Deleting, DeletionPolicy::Delete);
    let namespace =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    let brokers = vec![ready_broker(0, &live.grpc), ready_broker(1, &dead)];
    let out = reconcile_once(&topic, vec![namespace], brokers).await;

    let failed = match &out.result {
        Err(FinalizerError::CleanupFailed(ReconcileError::Cleanup(failed))) => failed.clone(),
        other => panic!("expected a failed cleanup, got {other:?}"),
    };
    assert!(
        failed.starts_with(&format!("broker {dead}: ")) && failed.ends_with(" []"),
        "one failure, of the dead broker, without a reason code: {failed}"
    );
    assert_eq!(tenant_admin(&live).list_topics().await.expect("list"), []);
    assert_eq!(
        out.request_lines(),
        [r.namespace(), r.event(), r.status()],
        "the namespace is not terminating: no finalizer patch, the failure reported"
    );
    let message = format!("cleanup on the brokers failed: {failed}");
    assert_eq!(out.event(1), Published::warning("CleanupFailed", &message));
    assert_eq!(
        out.status_patch(2),
        json!({
            "apiVersion": "dduomq.io/v1alpha1",
            "kind": "Topic",
            "status": {
                "conditions": [{
                    "type": "Ready", "status": "False", "reason": "CleanupFailed",
                    "message": message, "observedGeneration": 1,
                }],
                "observedGeneration": 1,
                "brokerNamespace": "shop",
            },
        })
    );
}

#[tokio::test]
async fn a_failed_status_write_is_reported_as_a_kubernetes_api_error() {
    let r = Requests::new("topics", "orders");
    let broker = Broker::start();
    let topic = orders(Stage::Finalized, DeletionPolicy::Delete);
    // The API server no longer holds the topic: its status writes fail.
    let out = reconcile_against(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    let error = match &out.result {
        Err(FinalizerError::ApplyFailed(e @ ReconcileError::Kube(_))) => e.to_string(),
        other => panic!("expected a Kubernetes API error, got {other:?}"),
    };
    assert_eq!(
        tenant_admin(&broker).list_topics().await.expect("list"),
        hosted(4, pb::MessageType::Fifo)
    );
    assert_eq!(
        out.request_lines(),
        [r.event(), r.status(), r.event(), r.status()],
        "the failed status write, then the failure's event and status"
    );
    assert_eq!(
        out.event(0),
        Published::normal("Reconciled", "4 queues on 1 brokers")
    );
    assert_eq!(
        out.event(2),
        Published::warning("KubernetesApiError", &error)
    );
    assert_eq!(
        out.status_patch(3)["status"]["conditions"],
        json!([{
            "type": "Ready", "status": "False", "reason": "KubernetesApiError",
            "message": error, "observedGeneration": 1,
        }])
    );
}

#[test]
fn the_spec_settings_reach_the_broker_topic_and_a_bad_retention_is_an_error() {
    let mut topic = orders(Stage::New, DeletionPolicy::Delete);
    topic.spec.max_message_bytes = Some(1024);
    topic.spec.retention = Some("1h30m".into());
    let settings = super::broker_topic("orders", &topic).unwrap();
    assert_eq!(settings.max_message_bytes, Some(1024));
    assert_eq!(settings.retention, Some(Duration::from_secs(5400)));
    assert_eq!(settings.message_type, pb::MessageType::Fifo);
    assert_eq!(
        settings.ack_policy,
        Some(pb::AckPolicy::BrokerDefault),
        "unset: the brokers' policy, sent as such"
    );
    topic.spec.retention = Some("1fortnight".into());
    let refused = super::broker_topic("orders", &topic).unwrap_err();
    assert!(
        refused
            .to_string()
            .starts_with("spec.retention \"1fortnight\": "),
        "{refused}"
    );
}

/// A status as an operator from before namespaces wrote it: reconciled at
/// generation 1, without a record of the broker namespace.
#[tokio::test]
async fn the_ack_policy_reaches_the_brokers_and_an_unknown_one_is_refused() {
    let broker = Broker::start();
    let mut topic = orders(Stage::Finalized, DeletionPolicy::Delete);
    topic.spec.ack_policy = Some(AckPolicy::Master);
    reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;
    let hosted = tenant_admin(&broker).list_topics().await.expect("list");
    assert_eq!(hosted[0].ack_policy(), pb::AckPolicy::Master);
    // Removed from the spec: the topic follows the brokers' again.
    topic.spec.ack_policy = None;
    reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;
    let hosted = tenant_admin(&broker).list_topics().await.expect("list");
    assert_eq!(hosted[0].ack_policy(), pb::AckPolicy::Unspecified);

    let spec = json!({"queues": 1, "ackPolicy": "Quorum"});
    let parsed: TopicSpec = serde_json::from_value(spec).unwrap();
    assert_eq!(parsed.ack_policy, Some(AckPolicy::Quorum));
    let unknown = json!({"queues": 1, "ackPolicy": "All"});
    let refused = serde_json::from_value::<TopicSpec>(unknown).unwrap_err();
    assert!(
        refused.to_string().contains("unknown variant `All`"),
        "{refused}"
    );
}

fn reconciled_before_namespaces() -> TopicStatus {
    serde_json::from_value(json!({
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "Reconciled",
            "message": "4 queues on 1 brokers", "observedGeneration": 1,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }],
        "observedGeneration": 1,
        "brokerCount": 1,
    }))
    .expect("status")
}

#[tokio::test]
async fn a_topic_reconciled_before_namespaces_keeps_its_default_namespace_name_to_the_end() {
    let r = Requests::new("topics", "orders");
    let broker = Broker::start();
    // What the pre-namespace operator made: plain `orders`.
    broker
        .admin()
        .create_topic("orders", 4, pb::MessageType::Fifo)
        .await
        .expect("create orders");
    let mut topic = orders(Stage::Finalized, DeletionPolicy::Delete);
    topic.status = Some(reconciled_before_namespaces());
    let out = reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert_eq!(out.action(), &Action::requeue(RESYNC));
    assert_eq!(
        broker.admin().list_topics().await.expect("list"),
        hosted(4, pb::MessageType::Fifo)
    );
    assert_eq!(
        tenant_admin(&broker).list_topics().await.expect("list"),
        [],
        "no new empty topic in the Kubernetes namespace"
    );
    assert_eq!(out.request_lines(), [r.status()], "no event: nothing new");
    let status = out.sent[0].body["status"].clone();
    assert_eq!(status["brokerNamespace"], json!("default"));

    // With the record in its status, deleting it deletes plain `orders`.
    topic.metadata = metadata("orders", FINALIZER, Stage::Deleting);
    topic.status = Some(serde_json::from_value(status).expect("status"));
    let out = reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;
    assert_eq!(out.request_lines(), [r.finalizers()]);
    assert_eq!(broker.admin().list_topics().await.expect("list"), []);
}

#[tokio::test]
async fn a_new_topic_never_takes_over_a_default_namespace_topic_of_its_name() {
    let broker = Broker::start();
    broker
        .admin()
        .create_topic("orders", 2, pb::MessageType::Normal)
        .await
        .expect("create orders");
    let topic = orders(Stage::Finalized, DeletionPolicy::Delete);
    let out = reconcile_once(&topic, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert_eq!(out.action(), &Action::requeue(RESYNC));
    assert_eq!(
        broker.admin().list_topics().await.expect("list"),
        hosted(2, pb::MessageType::Normal),
        "the default namespace's topic is left alone"
    );
    assert_eq!(
        tenant_admin(&broker).list_topics().await.expect("list"),
        hosted(4, pb::MessageType::Fifo)
    );
    assert_eq!(
        out.status_patch(1)["status"]["brokerNamespace"],
        json!(NAMESPACE)
    );
}
