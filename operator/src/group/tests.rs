//! Reconcile tests of the ConsumerGroup controller: the operator's requests to a
//! fake API server, and real brokers.

use std::collections::BTreeMap;
use std::time::Duration;

use dduomq_client::{Message, ProducerBuilder, ResetTo, proto as pb};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Error as FinalizerError;
use serde_json::json;

use crate::context::{MANAGED, ReconcileError};
use crate::crd::{
    AppliedReset, ConsumeMode, ConsumerGroup, ConsumerGroupSpec, ConsumerGroupStatus, OffsetReset,
    ResetTarget, Subscription,
};
use crate::group::broker_group;
use crate::test_support::{
    NAMESPACE, Published, RESYNC, Requests, Stage, metadata, ready_broker, reconcile_once, release,
    tenant_admin,
};
use dduomq_testkit::Broker;

const FINALIZER: &str = "dduomq.io/group-cleanup";

/// Group `billing` on topic `orders`: 5 attempts, backoff 1 s then 5 s, no
/// dead-lettering.
fn billing(
    stage: Stage,
    retry_backoff: &[&str],
    offset_reset: Option<OffsetReset>,
) -> ConsumerGroup {
    ConsumerGroup {
        metadata: metadata("billing", FINALIZER, stage),
        spec: ConsumerGroupSpec {
            subscriptions: vec![Subscription {
                topic: "orders".into(),
                tag: None,
                sql: None,
            }],
            consume_mode: ConsumeMode::Clustering,
            ordered: false,
            max_delivery_attempts: 5,
            retry_backoff: retry_backoff.iter().map(|d| d.to_string()).collect(),
            dead_letter: false,
            offset_reset,
        },
        status: None,
    }
}

/// The broker-side group `billing` as [`billing`] describes it.
fn hosted() -> Vec<pb::Group> {
    vec![pb::Group {
        name: "billing".into(),
        mode: pb::ConsumeMode::Clustering as i32,
        max_delivery_attempts: 5,
        retry_backoff_ms: vec![1000, 5000],
        disable_dead_letter: true,
        subscriptions: vec![pb::GroupSubscription {
            topic: "orders".into(),
            filter_type: pb::FilterType::Tag as i32,
            filter_expression: String::new(),
        }],
        ordered: false,
    }]
}

#[test]
fn subscriptions_and_ordered_reach_the_broker_group() {
    let mut group = billing(Stage::Finalized, &[], None);
    group.spec.ordered = true;
    group.spec.subscriptions = vec![
        Subscription {
            topic: "by-tag".into(),
            tag: Some("A || B".into()),
            sql: None,
        },
        Subscription {
            topic: "by-sql".into(),
            tag: None,
            sql: Some("region = 'eu'".into()),
        },
        Subscription {
            topic: "all".into(),
            tag: None,
            sql: None,
        },
    ];
    let filter = |topic: &str, t: pb::FilterType, e: &str| pb::GroupSubscription {
        topic: topic.into(),
        filter_type: t as i32,
        filter_expression: e.into(),
    };
    let settings = crate::group::broker_group("billing", &group).unwrap();
    assert!(settings.ordered);
    assert_eq!(
        settings.subscriptions,
        [
            filter("by-tag", pb::FilterType::Tag, "A || B"),
            filter("by-sql", pb::FilterType::Sql, "region = 'eu'"),
            filter("all", pb::FilterType::Tag, ""),
        ]
    );
}

/// Creates topic `orders` (one queue) on `broker` and sends it `count` messages.
async fn orders_with_messages(broker: &Broker, count: usize) {
    tenant_admin(broker)
        .create_topic("orders", 1, pb::MessageType::Normal)
        .await
        .expect("create orders");
    send(broker, NAMESPACE, count).await;
}

/// Sends `count` messages to `orders` of broker namespace `namespace`.
async fn send(broker: &Broker, namespace: &str, count: usize) {
    let producer = ProducerBuilder::new(&broker.grpc)
        .namespace(namespace)
        .build()
        .expect("producer");
    for i in 0..count {
        producer
            .send(Message::new("orders", format!("m{i}")))
            .await
            .expect("send");
    }
}

/// The group's progress on queue 0 of `orders`.
fn progress(committed: u64, max: u64) -> Vec<pb::GroupQueueStatus> {
    vec![pb::GroupQueueStatus {
        topic: "orders".into(),
        queue_id: 0,
        committed_offset: committed,
        max_offset: max,
        lag: max - committed,
        ..Default::default()
    }]
}

#[tokio::test]
async fn apply_creates_the_group_on_every_ready_broker_and_reports_members_and_lag() {
    let r = Requests::new("consumergroups", "billing");
    let (a, b) = (Broker::start(), Broker::start());
    let group = billing(Stage::Finalized, &["1s", "5s"], None);
    let brokers = vec![ready_broker(0, &a.grpc), ready_broker(1, &b.grpc)];
    let out = reconcile_once(&group, vec![], brokers).await;

    assert_eq!(out.action(), &Action::requeue(RESYNC));
    for broker in [&a, &b] {
        assert_eq!(
            tenant_admin(broker).list_groups().await.expect("list"),
            hosted()
        );
    }
    assert_eq!(out.request_lines(), [r.event(), r.status()]);
    assert_eq!(
        out.event(0),
        Published::normal("Reconciled", "on 2 brokers")
    );
    assert_eq!(
        out.status_patch(1),
        json!({
            "apiVersion": "dduomq.io/v1alpha1",
            "kind": "ConsumerGroup",
            "status": {
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "Reconciled",
                    "message": "on 2 brokers", "observedGeneration": 1,
                }],
                "observedGeneration": 1,
                "brokerNamespace": "shop",
                "members": [],
                "memberCount": 0,
                "lag": [{"topic": "orders", "lag": 0}],
                "totalLag": 0,
            },
        })
    );
}

#[tokio::test]
async fn an_offset_reset_is_applied_once_per_request_id() {
    let r = Requests::new("consumergroups", "billing");
    let broker = Broker::start();
    orders_with_messages(&broker, 3).await;
    let reset = OffsetReset {
        request_id: "r1".into(),
        to: ResetTarget::Latest,
        timestamp: None,
    };
    let mut group = billing(Stage::Finalized, &["1s", "5s"], Some(reset));
    let brokers = vec![ready_broker(0, &broker.grpc)];
    let first = reconcile_once(&group, vec![], brokers.clone()).await;

    assert_eq!(first.action(), &Action::requeue(RESYNC));
    let admin = tenant_admin(&broker);
    let described = admin.describe_group("billing").await.expect("describe");
    assert_eq!(
        described.queues,
        progress(3, 3),
        "moved past the 3 messages"
    );
    assert_eq!(first.request_lines(), [r.event(), r.event(), r.status()]);
    assert_eq!(
        first.event(0),
        Published::normal("OffsetReset", "offsets reset (Latest) for request r1")
    );
    assert_eq!(
        first.event(1),
        Published::normal("Reconciled", "on 1 brokers")
    );
    let status: ConsumerGroupStatus =
        serde_json::from_value(first.sent[2].body["status"].clone()).expect("status");
    let applied = status
        .last_applied_reset
        .clone()
        .expect("the reset is recorded");
    assert_eq!(applied.request_id, "r1");

    // The same request again, as the next reconcile sees it: no second reset.
    send(&broker, NAMESPACE, 2).await;
    group.status = Some(status);
    let again = reconcile_once(&group, vec![], brokers).await;

    assert_eq!(again.action(), &Action::requeue(RESYNC));
    let described = admin.describe_group("billing").await.expect("describe");
    assert_eq!(described.queues, progress(3, 5), "the 2 new messages wait");
    assert_eq!(
        again.request_lines(),
        [r.status()],
        "no reset and no event: nothing changed"
    );
    let status = &again.sent[0].body["status"];
    assert_eq!(status["lag"], json!([{"topic": "orders", "lag": 2}]));
    assert_eq!(status["totalLag"], json!(2));
    assert_eq!(
        serde_json::from_value::<AppliedReset>(status["lastAppliedReset"].clone())
            .expect("applied reset"),
        applied
    );
}

#[tokio::test]
async fn a_broker_refusal_makes_the_group_not_ready_and_holds_the_reset_back() {
    let r = Requests::new("consumergroups", "billing");
    let broker = Broker::start();
    let reset = OffsetReset {
        request_id: "r1".into(),
        to: ResetTarget::Earliest,
        timestamp: None,
    };
    let group = billing(Stage::Finalized, &["48h"], Some(reset));
    let out = reconcile_once(&group, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert_eq!(out.action(), &Action::requeue(Duration::from_secs(5)));
    assert_eq!(tenant_admin(&broker).list_groups().await.expect("list"), []);
    let refusal = format!(
        "broker {}: invalid retry_backoff_ms: a step of 172800000 ms; \
         each step is 1 to 86400000 ms [INVALID_ARGUMENT]",
        broker.grpc
    );
    assert_eq!(out.request_lines(), [r.event(), r.status()]);
    assert_eq!(out.event(0), Published::warning("BrokerError", &refusal));
    assert_eq!(
        out.status_patch(1)["status"],
        json!({
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "BrokerError",
                "message": refusal, "observedGeneration": 1,
            }],
            "observedGeneration": 1,
            "brokerNamespace": "shop",
            "members": [],
            "memberCount": 0,
            "lag": [{"topic": "orders", "lag": 0}],
            "totalLag": 0,
        }),
        "no lastAppliedReset: the reset waits for the group"
    );
}

#[tokio::test]
async fn an_unparsable_retry_backoff_is_an_invalid_spec_and_no_broker_is_touched() {
    let r = Requests::new("consumergroups", "billing");
    let broker = Broker::start();
    let group = billing(Stage::Finalized, &["1s", "soon"], None);
    let out = reconcile_once(&group, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    match &out.result {
        Err(FinalizerError::ApplyFailed(ReconcileError::InvalidSpec { field, value, .. })) => {
            assert_eq!(
                (field.as_str(), value.as_str()),
                ("retryBackoff[1]", "soon")
            );
        }
        other => panic!("expected an invalid spec, got {other:?}"),
    }
    assert_eq!(tenant_admin(&broker).list_groups().await.expect("list"), []);
    let message = "spec.retryBackoff[1] \"soon\": expected number at 0";
    assert_eq!(
        out.request_lines(),
        [r.event(), r.status()],
        "checked before anything else: no name lookup, no broker"
    );
    assert_eq!(out.event(0), Published::warning("InvalidSpec", message));
    assert_eq!(
        out.status_patch(1),
        json!({
            "apiVersion": "dduomq.io/v1alpha1",
            "kind": "ConsumerGroup",
            "status": {
                "conditions": [{
                    "type": "Ready", "status": "False", "reason": "InvalidSpec",
                    "message": message, "observedGeneration": 1,
                }],
                "observedGeneration": 1,
                "brokerNamespace": "shop",
            },
        })
    );
}

#[tokio::test]
async fn a_bad_offset_reset_timestamp_keeps_the_rest_of_the_status_and_is_announced_once() {
    let r = Requests::new("consumergroups", "billing");
    let broker = Broker::start();
    let reset = OffsetReset {
        request_id: "r2".into(),
        to: ResetTarget::Timestamp,
        // Ten fractional digits: stored before the CRD refused them (CEL rules
        // apply on writes only), and more than the operator's parser takes.
        timestamp: Some("2026-01-01T00:00:00.0000000001Z".into()),
    };
    let mut group = billing(Stage::Finalized, &["1s", "5s"], Some(reset));
    // The last status already reports an invalid spec of this generation.
    group.status = Some(
        serde_json::from_value(json!({
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "InvalidSpec",
                "message": "spec.offsetReset.timestamp \"yesterday\": bad",
                "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
            "observedGeneration": 1,
            "brokerNamespace": "shop",
            "members": ["c1"],
            "memberCount": 1,
            "lag": [{"topic": "orders", "lag": 7}],
            "totalLag": 7,
            "lastAppliedReset": {"requestId": "r1", "appliedAt": "2026-01-01T00:00:00Z"},
        }))
        .expect("status"),
    );
    let out = reconcile_once(&group, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert!(
        matches!(
            &out.result,
            Err(FinalizerError::ApplyFailed(ReconcileError::InvalidSpec { field, .. }))
                if field == "offsetReset.timestamp"
        ),
        "{:?}",
        out.result
    );
    assert_eq!(tenant_admin(&broker).list_groups().await.expect("list"), []);
    assert_eq!(
        out.request_lines(),
        [r.status()],
        "no event: the reason has not changed"
    );
    let message = "spec.offsetReset.timestamp \"2026-01-01T00:00:00.0000000001Z\": \
                   parsed value '2026-01-01T00:00:00', but unparsed input \"1Z\" remains \
                   (expected no unparsed input)";
    assert_eq!(
        out.status_patch(0)["status"],
        json!({
            "conditions": [{
                "type": "Ready", "status": "False", "reason": "InvalidSpec",
                "message": message, "observedGeneration": 1,
            }],
            "observedGeneration": 1,
            "brokerNamespace": "shop",
            "members": ["c1"],
            "memberCount": 1,
            "lag": [{"topic": "orders", "lag": 7}],
            "totalLag": 7,
            "lastAppliedReset": {"requestId": "r1", "appliedAt": "2026-01-01T00:00:00Z"},
        }),
        "the rest of the status stays as it was"
    );
}

#[test]
fn the_durations_the_crd_accepts_are_the_ones_the_operator_reads() {
    let group = billing(Stage::Finalized, &["500ms", "10s", "1m30s", "24h"], None);
    let settings = broker_group("billing", &group).expect("parsed");
    assert_eq!(settings.retry_backoff_ms, [500, 10_000, 90_000, 86_400_000]);
}

#[tokio::test]
async fn cleanup_deletes_the_group_from_every_broker_and_releases_the_finalizer() {
    let r = Requests::new("consumergroups", "billing");
    let (a, b) = (Broker::start(), Broker::start());
    let group = billing(Stage::Deleting, &["1s", "5s"], None);
    tenant_admin(&a)
        .create_group(hosted().remove(0))
        .await
        .expect("create on a");
    // b never got the group: already gone counts as deleted.
    let brokers = vec![ready_broker(0, &a.grpc), ready_broker(1, &b.grpc)];
    let out = reconcile_once(&group, vec![], brokers).await;

    assert_eq!(out.action(), &Action::await_change());
    for broker in [&a, &b] {
        assert_eq!(tenant_admin(broker).list_groups().await.expect("list"), []);
    }
    assert_eq!(out.request_lines(), [r.finalizers()]);
    assert_eq!(out.sent[0].body, release(FINALIZER));
}

#[tokio::test]
async fn cleanup_of_an_unmanaged_group_leaves_the_brokers_alone() {
    let r = Requests::new("consumergroups", "billing");
    let broker = Broker::start();
    tenant_admin(&broker)
        .create_group(hosted().remove(0))
        .await
        .expect("create");
    let mut group = billing(Stage::Deleting, &["1s", "5s"], None);
    group.metadata.annotations = Some(BTreeMap::from([(MANAGED.to_string(), "false".into())]));
    let out = reconcile_once(&group, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert_eq!(out.action(), &Action::await_change());
    assert_eq!(
        tenant_admin(&broker).list_groups().await.expect("list"),
        hosted()
    );
    assert_eq!(out.request_lines(), [r.finalizers()]);
    assert_eq!(out.sent[0].body, release(FINALIZER));
}

#[tokio::test]
async fn a_group_reconciled_before_namespaces_keeps_its_default_namespace_progress() {
    let r = Requests::new("consumergroups", "billing");
    let broker = Broker::start();
    // What the pre-namespace operator made: plain `orders`, and progress of
    // plain `billing` with a backlog of 2.
    broker
        .admin()
        .create_topic("orders", 1, pb::MessageType::Normal)
        .await
        .expect("create orders");
    let mut group = billing(Stage::Finalized, &["1s", "5s"], None);
    broker
        .admin()
        .create_group(broker_group("billing", &group).expect("settings"))
        .await
        .expect("create billing");
    send(&broker, "default", 2).await;
    broker
        .admin()
        .reset_offset("billing", "orders", ResetTo::Earliest)
        .await
        .expect("progress of billing");
    // Its status as that operator wrote it: no record of a broker namespace.
    group.status = Some(
        serde_json::from_value(json!({
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Reconciled",
                "message": "on 1 brokers", "observedGeneration": 1,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
            "observedGeneration": 1,
            "lag": [{"topic": "orders", "lag": 0}],
        }))
        .expect("status"),
    );
    let out = reconcile_once(&group, vec![], vec![ready_broker(0, &broker.grpc)]).await;

    assert_eq!(out.action(), &Action::requeue(RESYNC));
    assert_eq!(broker.admin().list_groups().await.expect("list"), hosted());
    assert_eq!(
        tenant_admin(&broker).list_groups().await.expect("list"),
        [],
        "no new group without progress in the Kubernetes namespace"
    );
    assert_eq!(out.request_lines(), [r.status()], "no event: nothing new");
    assert_eq!(
        out.status_patch(0)["status"],
        json!({
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Reconciled",
                "message": "on 1 brokers", "observedGeneration": 1,
            }],
            "observedGeneration": 1,
            "brokerNamespace": "default",
            "members": [],
            "memberCount": 0,
            "lag": [{"topic": "orders", "lag": 2}],
            "totalLag": 2,
        })
    );
}
