//! Scenario 8: `helm install` with the chart's default replication factor (3)
//! and 6 brokers → 2 groups, each with a recorded master and all 3 members in
//! sync; 2 operators; the write route names exactly the 2 masters; messages
//! sent with quorum acks are consumed exactly once, byte-exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::proto as pb;
use dduomq_client::{Message, PushConsumer};
use dduomq_testkit::{Step, all_acked_consumed, body_of, secs};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::json;

use super::Cluster;
use crate::clients::{build_producer, group_consumer, service_address};
use crate::groups::{FACTOR, replica_state, wait_healthy, wait_routed_to_masters};
use crate::pods::View;
use crate::{NS, OPERATOR, REPLICATED_BROKERS, VALUES};

/// Messages sent once the groups serve.
const FIRST_SENDS: u64 = 5_000;

impl Cluster {
    /// Scenario 8. Returns the pod view and the group's consumer of the
    /// replicated installation.
    pub async fn replicated_install(&self) -> (Arc<View>, PushConsumer) {
        let step = Step::start(
            &self.report,
            "8-replicated-install",
            "helm install, replication factor 3 (the default), 6 brokers → 2 groups of 3 in sync, 2 operators; quorum-acked sends consumed exactly once",
        );
        let t = Instant::now();
        let replicas = format!("broker.replicas={REPLICATED_BROKERS}");
        self.helm_install(VALUES, &["--set", &replicas]).await;
        let view = View::start(self.client.clone()).await;
        let groups = REPLICATED_BROKERS / FACTOR;
        let mut records = Vec::new();
        for g in 0..groups {
            records.push(wait_healthy(&self.client, &view, g, Duration::from_secs(120)).await);
        }
        let operator = Api::<Deployment>::namespaced(self.client.clone(), NS)
            .get(OPERATOR)
            .await
            .expect("the operator Deployment");
        assert_eq!(
            operator.status.as_ref().and_then(|s| s.available_replicas),
            Some(2),
            "replication runs 2 operators: {:?}",
            operator.status
        );
        // Every member knows its place, and every one acknowledges in quorum.
        for p in view.pods() {
            let state = replica_state(&p.addr().expect("pod IP"))
                .await
                .unwrap_or_else(|| panic!("{} reports no replication state", p.name));
            assert_eq!(
                (state.group, state.member),
                (p.ordinal / FACTOR, p.ordinal % FACTOR),
                "{}",
                p.name
            );
            assert_eq!(state.ack_policy, pb::AckPolicy::Quorum as i32, "{}", p.name);
        }
        self.apply_topic_and_group(None).await;
        let masters =
            wait_routed_to_masters(&self.client, &view, groups, Duration::from_secs(60)).await;
        step.set("installed_and_routed_s", secs(t.elapsed()));

        let consumer =
            group_consumer(&service_address(&self.client).await, self.ledger.clone()).await;
        let producer = build_producer(&service_address(&self.client).await);
        let ledger = &self.ledger;
        assert_eq!(ledger.allocated(), 0, "a new ledger");
        let t = Instant::now();
        futures::stream::iter(0..FIRST_SENDS)
            .map(|_| {
                let index = ledger.allocate();
                let producer = producer.clone();
                async move {
                    (
                        index,
                        producer
                            .send(Message::new(ledger.topic(), body_of(index)))
                            .await,
                    )
                }
            })
            .buffer_unordered(256)
            .for_each(|(index, result)| {
                ledger.record(index, &result, None);
                async {}
            })
            .await;
        let produce = t.elapsed();
        let failed = ledger.failed_in(0..FIRST_SENDS);
        assert!(
            failed.is_empty(),
            "{} sends failed; first: {:?}",
            failed.len(),
            failed.iter().take(5).map(|f| &f.error).collect::<Vec<_>>()
        );
        all_acked_consumed(ledger, "the first sends", Duration::from_secs(120)).await;
        ledger.assert_exactly_once(0..FIRST_SENDS);
        // A replicated group's message ids carry the group, valid on every
        // member: both groups took writes.
        let per_group = ledger.acked_per_broker();
        assert_eq!(
            per_group.keys().copied().collect::<Vec<_>>(),
            (0..groups).collect::<Vec<_>>(),
            "both groups took writes: {per_group:?}"
        );
        step.set(
            "records",
            json!(
                records
                    .iter()
                    .map(|r| json!({"group": r.group, "master": r.master, "epoch": r.epoch}))
                    .collect::<Vec<_>>()
            ),
        );
        step.set("masters", json!(masters));
        step.set(
            "quorum_sends_per_s",
            (FIRST_SENDS as f64 / produce.as_secs_f64()).round(),
        );
        step.done();
        (view, consumer)
    }
}
