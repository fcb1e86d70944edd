//! Passes of the fleet loop: the StatefulSet as a fake API server holds it (the
//! patches are recorded, not applied: each test runs one state), and real
//! brokers.

use dduomq_client::{Message, ProducerBuilder, ResetTo, proto as pb};
use dduomq_testkit::Broker;
use serde_json::{Value, json};

use super::plan::{DESIRED_REPLICAS, FORCE_SCALE_IN, SCALE_IN_DRAINING};
use super::{Fleet, FleetError};
use crate::replication::group::GroupState;
use crate::replication::{GroupStates, WriteUnits};
use crate::test_support::fake_api::{FakeApi, Sent};
use crate::test_support::{NAMESPACE, context, ready_broker};
use dduomq_replication::GroupLayout;

const STS: &str = "dduomq-broker";

/// The StatefulSet with `replicas` and `annotations`.
fn statefulset(replicas: u32, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": STS, "namespace": NAMESPACE, "uid": "uid-sts", "annotations": annotations},
        "spec": {"replicas": replicas, "selector": {}, "template": {}, "serviceName": STS},
    })
}

/// The API requests and the metrics of one pass over `sts`, whose brokers
/// `dduomq-broker-0..` are `brokers`.
struct Pass {
    sent: Vec<Sent>,
    result: Result<(), FleetError>,
    pending: i64,
    remaining: i64,
}

impl Pass {
    async fn run(sts: Value, brokers: &[&Broker]) -> Pass {
        Pass::run_over(sts, brokers, WriteUnits::Brokers).await
    }

    /// [`Pass::run`] with departing write units `units`.
    async fn run_over(sts: Value, brokers: &[&Broker], units: WriteUnits) -> Pass {
        let api = FakeApi::new(vec![sts]);
        let registry = brokers
            .iter()
            .enumerate()
            .map(|(i, b)| ready_broker(i as u32, &b.grpc))
            .collect();
        let ctx = context(api.client(), registry);
        let mut fleet = Fleet {
            api: kube::Api::namespaced(ctx.client.clone(), NAMESPACE),
            ctx: ctx.clone(),
            name: STS.into(),
            units,
            progress: None,
        };
        let result = fleet.pass().await;
        Pass {
            sent: api.sent(),
            result,
            pending: ctx.metrics.scale_in_pending.get(),
            remaining: ctx.metrics.scale_in_remaining_messages.get(),
        }
    }

    /// The bodies of the StatefulSet patches, in order.
    fn patches(&self) -> Vec<Value> {
        assert!(self.result.is_ok(), "the pass failed: {:?}", self.result);
        self.sent
            .iter()
            .filter(|s| s.method == "PATCH")
            .inspect(|s| {
                assert_eq!(
                    s.content_type.as_deref(),
                    Some("application/merge-patch+json")
                );
                assert!(
                    s.target.contains("fieldManager=dduomq-operator"),
                    "{}",
                    s.target
                );
            })
            .map(|s| s.body.clone())
            .collect()
    }

    /// The reasons of the events published, in order.
    fn events(&self) -> Vec<String> {
        self.sent
            .iter()
            .filter(|s| s.method == "POST" && s.target.contains("/events"))
            .map(|s| s.body["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Topic `orders` with `count` messages that group `billing` has not consumed.
async fn unconsumed(broker: &Broker, count: usize) {
    let admin = broker.admin();
    admin
        .create_topic("orders", 1, pb::MessageType::Normal)
        .await
        .expect("create orders");
    admin
        .create_group(pb::Group {
            name: "billing".into(),
            mode: pb::ConsumeMode::Clustering as i32,
            max_delivery_attempts: 5,
            ..Default::default()
        })
        .await
        .expect("create billing");
    let producer = ProducerBuilder::new(&broker.grpc)
        .build()
        .expect("producer");
    for i in 0..count {
        producer
            .send(Message::new("orders", format!("m{i}")))
            .await
            .expect("send");
    }
    admin
        .reset_offset("billing", "orders", ResetTo::Earliest)
        .await
        .expect("billing starts at the first message");
    let info = admin.broker_info().await.expect("broker info");
    assert_eq!(info.unconsumed_messages, count as u64);
}

async fn draining(broker: &Broker) -> bool {
    broker.admin().broker_info().await.expect("info").draining
}

#[tokio::test]
async fn a_lower_count_first_records_and_drains_the_departing_broker() {
    let (a, b) = (Broker::start(), Broker::start());
    let pass = Pass::run(statefulset(2, &[(DESIRED_REPLICAS, "1")]), &[&a, &b]).await;
    assert_eq!(
        pass.patches(),
        [json!({"metadata": {"annotations": {SCALE_IN_DRAINING: "1"}}})],
        "the mark comes first; the replicas stay"
    );
    assert!(draining(&b).await);
    assert!(!draining(&a).await);
    assert_eq!(pass.events(), ["ScaleInDraining"]);
    assert_eq!(pass.pending, 1, "just made to drain: not drained yet");
}

#[tokio::test]
async fn the_replicas_are_lowered_only_once_the_departing_broker_is_drained() {
    let (a, b) = (Broker::start(), Broker::start());
    unconsumed(&b, 3).await;
    b.admin().set_draining(true).await.expect("drain");
    let sts = statefulset(2, &[(DESIRED_REPLICAS, "1"), (SCALE_IN_DRAINING, "1")]);
    let waiting = Pass::run(sts.clone(), &[&a, &b]).await;
    assert_eq!(waiting.patches(), Vec::<Value>::new());
    assert_eq!((waiting.pending, waiting.remaining), (1, 3));

    b.admin()
        .reset_offset("billing", "orders", ResetTo::Latest)
        .await
        .expect("consumed (skipped)");
    let done = Pass::run(sts, &[&a, &b]).await;
    assert_eq!(
        done.patches(),
        [json!({
            "metadata": {"annotations": {SCALE_IN_DRAINING: null, FORCE_SCALE_IN: null}},
            "spec": {"replicas": 1},
        })]
    );
    assert_eq!(done.events(), ["ScaledIn"]);
    assert_eq!((done.pending, done.remaining), (0, 0));
}

#[tokio::test]
async fn forcing_lowers_the_replicas_without_waiting() {
    let (a, b) = (Broker::start(), Broker::start());
    unconsumed(&b, 2).await;
    b.admin().set_draining(true).await.expect("drain");
    let sts = statefulset(
        2,
        &[
            (DESIRED_REPLICAS, "1"),
            (SCALE_IN_DRAINING, "1"),
            (FORCE_SCALE_IN, "true"),
        ],
    );
    let pass = Pass::run(sts, &[&a, &b]).await;
    assert_eq!(
        pass.patches(),
        [json!({
            "metadata": {"annotations": {SCALE_IN_DRAINING: null, FORCE_SCALE_IN: null}},
            "spec": {"replicas": 1},
        })]
    );
    assert_eq!(pass.events(), ["ScaleInForced"]);
}

#[tokio::test]
async fn raising_the_count_again_undrains_the_broker() {
    let (a, b) = (Broker::start(), Broker::start());
    b.admin().set_draining(true).await.expect("drain");
    let sts = statefulset(2, &[(DESIRED_REPLICAS, "2"), (SCALE_IN_DRAINING, "1")]);
    let pass = Pass::run(sts, &[&a, &b]).await;
    assert_eq!(
        pass.patches(),
        [json!({"metadata": {"annotations": {SCALE_IN_DRAINING: null}}})]
    );
    assert!(!draining(&b).await);
    assert_eq!(pass.events(), ["ScaleInCancelled"]);
}

#[tokio::test]
async fn a_higher_count_raises_the_replicas_and_no_count_leaves_them_alone() {
    let a = Broker::start();
    let grow = Pass::run(statefulset(1, &[(DESIRED_REPLICAS, "3")]), &[&a]).await;
    assert_eq!(grow.patches(), [json!({"spec": {"replicas": 3}})]);
    assert_eq!(grow.events(), ["ScaleOut"]);
    let unmanaged = Pass::run(statefulset(3, &[]), &[&a]).await;
    assert_eq!(unmanaged.patches(), Vec::<Value>::new());
}

/// Groups of two, group 1 (brokers 2 and 3) departing, its master member 1
/// (broker 3) serving.
fn departing_group() -> WriteUnits {
    let states = GroupStates::from([
        (
            0,
            GroupState::Serving {
                master: 0,
                epoch: 1,
            },
        ),
        (
            1,
            GroupState::Serving {
                master: 1,
                epoch: 3,
            },
        ),
    ]);
    WriteUnits::Groups {
        layout: GroupLayout::new(2),
        states: tokio::sync::watch::channel(states).1,
    }
}

#[tokio::test]
async fn with_replication_a_whole_group_drains_and_its_master_says_when_it_is_drained() {
    let brokers: Vec<Broker> = (0..4).map(|_| Broker::start()).collect();
    let refs: Vec<&Broker> = brokers.iter().collect();
    unconsumed(&brokers[3], 2).await;
    let sts = statefulset(4, &[(DESIRED_REPLICAS, "2"), (SCALE_IN_DRAINING, "2,3")]);
    let waiting = Pass::run_over(sts.clone(), &refs, departing_group()).await;
    assert_eq!(waiting.patches(), Vec::<Value>::new());
    assert!(draining(&brokers[2]).await && draining(&brokers[3]).await);
    assert!(!draining(&brokers[0]).await && !draining(&brokers[1]).await);
    // Broker 2 alone holds nothing unconsumed; the group waits for its master.
    assert_eq!((waiting.pending, waiting.remaining), (1, 2));

    brokers[3]
        .admin()
        .reset_offset("billing", "orders", ResetTo::Latest)
        .await
        .expect("consumed (skipped)");
    let done = Pass::run_over(sts, &refs, departing_group()).await;
    assert_eq!(
        done.patches(),
        [json!({
            "metadata": {"annotations": {SCALE_IN_DRAINING: null, FORCE_SCALE_IN: null}},
            "spec": {"replicas": 2},
        })]
    );
    assert_eq!((done.pending, done.remaining), (0, 0));
}

#[tokio::test]
async fn with_replication_a_count_that_is_not_whole_groups_is_refused() {
    let a = Broker::start();
    let pass = Pass::run_over(
        statefulset(4, &[(DESIRED_REPLICAS, "3")]),
        &[&a],
        departing_group(),
    )
    .await;
    assert_eq!(
        pass.result.map_err(|e| e.to_string()),
        Err("3 brokers wanted is not a whole number of groups of 2".to_string())
    );
    assert!(
        pass.sent.iter().all(|s| s.method == "GET"),
        "nothing written"
    );
}
