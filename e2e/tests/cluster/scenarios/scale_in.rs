//! Scenario 5: a plain `helm upgrade --set broker.replicas=4` under 2,000 msg/s,
//! no drain command: the operator drains broker 4 before it lowers the
//! StatefulSet's replicas, and no acknowledged message is lost.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, eventually_every, secs};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use super::Cluster;
use crate::pods::{View, broker_pod};
use crate::routes::{stored_on, wait_balanced};
use crate::{NS, POLL, SCALE_IN_LOAD, STS};

/// The departing broker.
const DEPARTING: u32 = 4;

impl Cluster {
    /// `dduomq broker info` of the broker at `address`; `None` while it does
    /// not answer.
    async fn broker_info(&self, address: &str) -> Option<Value> {
        let out = self
            .env
            .cli(&["--server", address, "-o", "json", "broker", "info"])
            .await;
        out.success
            .then(|| serde_json::from_str(out.stdout.trim()).expect("broker info JSON"))
    }

    /// The reasons of the Events about the broker StatefulSet.
    async fn statefulset_event_reasons(&self) -> BTreeSet<String> {
        Api::<Event>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default().fields(&format!(
                "involvedObject.kind=StatefulSet,involvedObject.name={STS}"
            )))
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Scenario 5.
    pub async fn scale_in(&self, view: &Arc<View>, producer: &Producer) {
        let key = "5-scale-in";
        let step = Step::start(
            &self.report,
            key,
            "helm upgrade 5 → 4 under 2,000 msg/s, no drain command: the operator drains broker 4 first; nothing lost",
        );
        let departing = broker_pod(&self.client, DEPARTING)
            .await
            .expect("dduomq-broker-4")
            .addr()
            .expect("pod IP");
        let acked_before = self.ledger.acked_per_broker();
        let load_started = Instant::now();
        let load = Load::start(producer.clone(), self.ledger.clone(), SCALE_IN_LOAD);
        acks_flowing(&self.ledger, 2000).await;
        // The departing broker takes writes right up to the scale-in.
        let stored_before = stored_on(&departing).await;
        eventually_every(
            POLL,
            Duration::from_secs(30),
            "broker 4 to store messages of the load",
            async || (stored_on(&departing).await > stored_before).then_some(()),
        )
        .await;

        let t = Instant::now();
        let helm = self.helm_upgrade(&["--set", "broker.replicas=4"]).await;
        let sts = self.statefulset().await;
        assert_eq!(
            sts.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("dduomq.io/desired-replicas"))
                .map(String::as_str),
            Some("4"),
            "the chart declares the count"
        );
        let info = eventually_every(
            POLL,
            Duration::from_secs(60),
            "the operator to make broker 4 drain",
            async || {
                let info = self.broker_info(&departing).await?;
                (info["draining"] == true).then_some(info)
            },
        )
        .await;
        let draining_after = t.elapsed();
        eventually_every(
            POLL,
            Duration::from_secs(180),
            "dduomq-broker-4 gone",
            async || {
                broker_pod(&self.client, DEPARTING)
                    .await
                    .is_none()
                    .then_some(())
            },
        )
        .await;
        let gone_after = t.elapsed();
        let window_acks = self.ledger.acks_between(t, Instant::now());
        assert_eq!(
            self.statefulset().await.spec.and_then(|s| s.replicas),
            Some(4)
        );
        assert!(
            self.claim(DEPARTING).await.is_some(),
            "whenScaled: Retain keeps data-dduomq-broker-4"
        );
        let reasons = self.statefulset_event_reasons().await;
        for reason in ["ScaleInDraining", "ScaledIn"] {
            assert!(
                reasons.contains(reason),
                "Event {reason} on the StatefulSet: {reasons:?}"
            );
        }
        assert!(
            !reasons.contains("ScaleInForced"),
            "the scale-in waited for the drain: {reasons:?}"
        );
        let (_, balanced, _) = wait_balanced(view, 4, Duration::from_secs(120)).await;
        acks_flowing(&self.ledger, 2000).await;
        let stats = load.stop(&self.ledger).await;
        let load_took = load_started.elapsed();
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the scale-in",
            Duration::from_secs(180),
        )
        .await;
        // Acknowledged by broker 4 during this load, and consumed (above).
        let acked_on_departing = self
            .ledger
            .acked_per_broker()
            .get(&DEPARTING)
            .copied()
            .unwrap_or(0)
            - acked_before.get(&DEPARTING).copied().unwrap_or(0);
        assert!(
            acked_on_departing > 0,
            "broker 4 held messages of the load before it left"
        );
        let acked_per_s = stats.acked as f64 / load_took.as_secs_f64();
        stats.record(&step);
        let timeline: Vec<usize> = (0..load_took.as_secs())
            .map(|s| {
                let from = load_started + Duration::from_secs(s);
                self.ledger
                    .acks_between(from, from + Duration::from_secs(1))
            })
            .collect();
        step.set("acks_per_second_timeline", json!(timeline));
        step.set("acked_per_s", json!(acked_per_s.round()));
        step.set("acked_on_departing_broker", acked_on_departing as u64);
        step.set("helm_upgrade_s", secs(helm.took));
        step.set("draining_after_s", secs(draining_after));
        step.set(
            "unconsumed_when_draining_seen",
            info["unconsumed_messages"].clone(),
        );
        step.set("broker_gone_after_s", secs(gone_after));
        step.set(
            "acked_per_s_during_scale_in",
            json!((window_acks as f64 / gone_after.as_secs_f64()).round()),
        );
        step.set("route_over_4_after_s", secs(balanced));
        step.set("consumed_after_stop_s", secs(consumed));
        assert!(
            acked_per_s >= f64::from(SCALE_IN_LOAD.messages_per_second) * 0.95,
            "the load acknowledged {acked_per_s:.0} msg/s, below {} msg/s",
            SCALE_IN_LOAD.messages_per_second
        );
        step.done();
    }
}
