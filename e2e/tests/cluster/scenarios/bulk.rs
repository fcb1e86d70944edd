//! Scenario 2: a Topic and a ConsumerGroup → Ready; 100,000 messages produced and
//! consumed exactly once, byte-exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::{Message, PushConsumer};
use dduomq_operator::crd::{ConsumerGroup, Topic};
use dduomq_testkit::{Step, all_acked_consumed, body_of, eventually_every, secs};
use futures::StreamExt;
use kube::Api;
use serde_json::json;

use super::{Cluster, ready_condition};
use crate::clients::{build_producer, group_consumer, service_address};
use crate::pods::View;
use crate::routes::wait_balanced;
use crate::{BULK, BULK_CONCURRENCY, GROUP, NS, POLL, QUEUES, TOPIC};

impl Cluster {
    /// Scenario 2. Returns the group's consumer, which runs until scenario 7.
    pub async fn bulk(&self, view: &Arc<View>) -> PushConsumer {
        let key = "2-topic-and-100k";
        let step = Step::start(
            &self.report,
            key,
            "kubectl apply a Topic and a ConsumerGroup → Ready; 100k messages produced and consumed byte-exact",
        );
        let t = Instant::now();
        self.apply_topic_and_group(Some(3)).await;
        let (route, _, _) = wait_balanced(view, 3, Duration::from_secs(60)).await;
        let ready_s = t.elapsed();
        step.set("topic_and_group_ready_s", secs(ready_s));
        step.set("route", format!("{:?}", route.writable));

        let consumer =
            group_consumer(&service_address(&self.client).await, self.ledger.clone()).await;

        let producer = build_producer(&service_address(&self.client).await);
        let first = self.ledger.allocated();
        assert_eq!(first, 0);
        let t = Instant::now();
        let ledger = &self.ledger;
        let sends = futures::stream::iter(0..BULK)
            .map(|_| {
                let index = ledger.allocate();
                let producer = producer.clone();
                async move {
                    let result = producer.send(Message::new(TOPIC, body_of(index))).await;
                    (index, result)
                }
            })
            .buffer_unordered(BULK_CONCURRENCY)
            .for_each(|(index, result)| {
                ledger.record(index, &result, None);
                async {}
            });
        tokio::time::timeout(Duration::from_secs(600), sends)
            .await
            .expect("100k sends within 10 minutes");
        let produce = t.elapsed();
        let failed = self.ledger.failed_in(0..BULK);
        assert!(
            failed.is_empty(),
            "{} of {BULK} sends failed; first: {:?}",
            failed.len(),
            failed.iter().take(5).map(|f| &f.error).collect::<Vec<_>>()
        );
        all_acked_consumed(&self.ledger, "the 100k messages", Duration::from_secs(600)).await;
        let consumed = t.elapsed();
        // No failure happened: exactly once.
        self.ledger.assert_exactly_once(0..BULK);
        let per_broker = self.ledger.acked_per_broker();
        assert_eq!(
            per_broker.keys().copied().collect::<Vec<_>>(),
            vec![0, 1, 2],
            "every broker took writes: {per_broker:?}"
        );
        step.set("produce_s", secs(produce));
        step.set(
            "produce_msgs_per_s",
            (BULK as f64 / produce.as_secs_f64()).round(),
        );
        step.set("all_consumed_after_s", secs(consumed));
        step.set("acked_per_broker_id", json!(per_broker));
        step.done();
        consumer
    }

    /// `kubectl apply` the suite's Topic and ConsumerGroup; waits until both are
    /// Ready and every queue is placed (on `brokers` brokers, when given).
    pub(super) async fn apply_topic_and_group(&self, brokers: Option<u32>) {
        let manifest = format!(
            "apiVersion: dduomq.io/v1alpha1\nkind: Topic\nmetadata:\n  name: {TOPIC}\n  namespace: {NS}\n\
             spec:\n  queues: {QUEUES}\n  messageType: Normal\n  deletionPolicy: Delete\n---\n\
             apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: {GROUP}\n  namespace: {NS}\n\
             spec:\n  subscriptions:\n    - topic: {TOPIC}\n  consumeMode: Clustering\n  maxDeliveryAttempts: 16\n  retryBackoff: [\"1s\"]\n"
        );
        self.env
            .kubectl_ok(&["apply", "-f", "-"], Some(&manifest))
            .await;
        let topics: Api<Topic> = Api::namespaced(self.client.clone(), NS);
        let groups: Api<ConsumerGroup> = Api::namespaced(self.client.clone(), NS);
        eventually_every(
            POLL,
            Duration::from_secs(60),
            "the Topic Ready, every queue placed",
            async || {
                let s = topics.get(TOPIC).await.ok()?.status?;
                // Readiness is the Topic controller's, the placement the route
                // publisher's: both must show.
                (ready_condition(&s.conditions)
                    && brokers.is_none_or(|n| s.broker_count == n)
                    && s.assignment.len() == QUEUES as usize)
                    .then_some(())
            },
        )
        .await;
        eventually_every(
            POLL,
            Duration::from_secs(60),
            "the ConsumerGroup Ready",
            async || {
                let s = groups.get(GROUP).await.ok()?.status?;
                ready_condition(&s.conditions).then_some(())
            },
        )
        .await;
    }
}
