//! Scenario 3: scale 3 → 5; the operator places write queues on the new brokers
//! and a producer writes to them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::{ClientError, Message, SendReceipt};
use dduomq_operator::crd::Topic;
use dduomq_testkit::{Step, all_acked_consumed, body_of, broker_of, eventually_every, secs};
use futures::StreamExt;
use kube::Api;
use serde_json::json;

use super::{Cluster, ready_condition};
use crate::clients::{build_producer, service_address};
use crate::pods::{BrokerPod, View, pod_name};
use crate::routes::{stored_on, wait_balanced};
use crate::{NS, POLL, RELEASE, TOPIC};

impl Cluster {
    /// Scenario 3.
    pub async fn scale_out(&self, view: &Arc<View>) {
        let key = "3-scale-out";
        let step = Step::start(
            &self.report,
            key,
            "scale 3 → 5: write queues placed on the new brokers, and producers use them",
        );
        let t = Instant::now();
        let env = self.env.clone();
        let chart = env.chart();
        let helm = tokio::spawn(async move {
            env.helm_ok(&[
                "upgrade",
                RELEASE,
                &chart,
                "-n",
                NS,
                "--reuse-values",
                "--set",
                "broker.replicas=5",
                "--wait",
                "--timeout",
                "5m",
            ])
            .await
        });
        let (route, _, errors) = wait_balanced(view, 5, Duration::from_secs(300)).await;
        // From the scale command to a route that writes on all five brokers.
        let rebalance = t.elapsed();
        let helm_took = helm.await.expect("helm upgrade task").took;
        let per_ordinal: BTreeMap<u32, usize> = route
            .writable
            .iter()
            .map(|(a, qs)| (view.ordinal_of_addr(a).unwrap_or(u32::MAX), qs.len()))
            .collect();
        assert_eq!(
            per_ordinal.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4],
            "{route:?}"
        );
        let topics: Api<Topic> = Api::namespaced(self.client.clone(), NS);
        let status = eventually_every(
            POLL,
            Duration::from_secs(60),
            "the Topic status to assign queues to brokers 3 and 4",
            async || {
                let s = topics.get(TOPIC).await.ok()?.status?;
                let owners: BTreeSet<&str> =
                    s.assignment.iter().map(|a| a.broker.as_str()).collect();
                (s.broker_count == 5
                    && owners.contains(pod_name(3).as_str())
                    && owners.contains(pod_name(4).as_str()))
                .then_some(s)
            },
        )
        .await;
        assert!(ready_condition(&status.conditions), "{status:?}");
        for p in view.pods() {
            let claim = self.claim(p.ordinal).await.expect("PVC of a new broker");
            assert_eq!(
                claim.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Bound")
            );
        }

        // A producer writes to the new brokers.
        let new: Vec<String> = view
            .pods()
            .iter()
            .filter(|p| p.ordinal >= 3)
            .filter_map(BrokerPod::addr)
            .collect();
        let before: Vec<u64> = futures::future::join_all(new.iter().map(|a| stored_on(a))).await;
        let producer = build_producer(&service_address(&self.client).await);
        let ledger = &self.ledger;
        let receipts: Vec<(u64, Result<SendReceipt, ClientError>)> = futures::stream::iter(0..400)
            .map(|_| {
                let index = ledger.allocate();
                let producer = producer.clone();
                async move {
                    (
                        index,
                        producer.send(Message::new(TOPIC, body_of(index))).await,
                    )
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut per_broker: BTreeMap<u32, usize> = BTreeMap::new();
        for (index, r) in &receipts {
            ledger.record(*index, r, None);
            let receipt = r
                .as_ref()
                .unwrap_or_else(|e| panic!("a send after the scale-out failed: {e}"));
            *per_broker
                .entry(broker_of(&receipt.message_id).unwrap_or(u32::MAX))
                .or_default() += 1;
        }
        assert_eq!(
            per_broker.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4],
            "sends spread over all five brokers: {per_broker:?}"
        );
        let after: Vec<u64> = futures::future::join_all(new.iter().map(|a| stored_on(a))).await;
        for ((a, b), address) in after.iter().zip(&before).zip(&new) {
            assert!(
                a > b,
                "broker {address} stored none of the sends ({b} → {a})"
            );
        }
        let consumed = all_acked_consumed(
            &self.ledger,
            "messages on the new brokers",
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(self.ledger.duplicates(), 0, "no failure, no redelivery");

        step.set("rebalance_s", secs(rebalance));
        step.set("helm_upgrade_s", secs(helm_took));
        step.set("write_queues_per_broker_id", json!(per_ordinal));
        step.set("sends_per_broker_id", json!(per_broker));
        step.set("consumed_after_s", secs(consumed));
        step.set("route_errors_during_rebalance", json!(errors));
        step.done();
    }
}
