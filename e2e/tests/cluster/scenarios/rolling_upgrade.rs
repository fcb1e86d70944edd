//! Scenarios 6 and 12: a `helm upgrade` that changes the broker pod template
//! (rolling restart) under load; every acknowledged message is consumed. With
//! replication (12) every group keeps a master throughout, so no send fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, eventually_every, secs};
use kube::ResourceExt;

use super::{Cluster, Layout};
use crate::groups::{wait_healthy, wait_routed_to_masters};
use crate::pods::{View, broker_pods};
use crate::routes::wait_balanced;
use crate::{LOAD, POLL};

impl Cluster {
    /// Scenario 6 (`Unreplicated`) or 12 (`Replicated`).
    pub async fn rolling_upgrade(&self, view: &Arc<View>, producer: &Producer, layout: Layout) {
        let step = match layout {
            Layout::Unreplicated { .. } => Step::start(
                &self.report,
                "6-rolling-upgrade",
                "helm upgrade changing the broker pod template under load (rolling restart): nothing acknowledged lost",
            ),
            Layout::Replicated { .. } => Step::start(
                &self.report,
                "12-replicated-rolling-upgrade",
                "helm upgrade changing the broker pod template of every group under quorum-acked load: no send fails, nothing acknowledged lost",
            ),
        };
        let brokers = layout.brokers();
        let before = broker_pods(&self.client).await.expect("broker pods");
        assert_eq!(before.len(), brokers as usize);
        let revision_before = self
            .statefulset()
            .await
            .status
            .and_then(|s| s.update_revision)
            .expect("updateRevision");
        let mut claims_before = BTreeMap::new();
        for p in &before {
            claims_before.insert(p.ordinal, self.claim(p.ordinal).await.expect("PVC").uid());
        }
        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 400).await;

        let rollme = format!("e2e-{}", chrono::Utc::now().timestamp());
        let t = Instant::now();
        let set = format!("broker.podAnnotations.rollme={rollme}");
        let helm = self.helm_upgrade(&["--set-string", &set]).await;
        let sts = eventually_every(
            POLL,
            Duration::from_secs(300),
            "the rollout to finish",
            async || {
                let sts = self.statefulset().await;
                let generation = sts.metadata.generation;
                let s = sts.status.clone()?;
                let done = s.observed_generation >= generation
                    && s.replicas == brokers as i32
                    && s.updated_replicas == Some(brokers as i32)
                    && s.ready_replicas == Some(brokers as i32)
                    && s.current_revision.is_some()
                    && s.current_revision == s.update_revision
                    && s.update_revision.as_deref() != Some(revision_before.as_str());
                done.then_some(sts)
            },
        )
        .await;
        let revision = sts
            .status
            .and_then(|s| s.update_revision)
            .expect("updateRevision");
        let after = eventually_every(
            POLL,
            Duration::from_secs(120),
            "every broker pod restarted with the new template and Ready",
            async || {
                let pods = broker_pods(&self.client).await.ok()?;
                let done = pods.len() == brokers as usize
                    && pods.iter().all(|p| {
                        p.serving()
                            && p.revision.as_deref() == Some(revision.as_str())
                            && p.rollme.as_deref() == Some(rollme.as_str())
                    });
                done.then_some(pods)
            },
        )
        .await;
        let rollout = t.elapsed();
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b.ordinal, a.ordinal);
            assert_ne!(b.uid, a.uid, "{} was not replaced", a.name);
            assert_eq!(
                self.claim(a.ordinal).await.expect("PVC").uid(),
                claims_before[&a.ordinal],
                "{} keeps its claim",
                a.name
            );
        }
        let balanced = Instant::now();
        match layout {
            Layout::Unreplicated { brokers } => {
                wait_balanced(view, brokers as usize, Duration::from_secs(120)).await;
            }
            Layout::Replicated { groups } => {
                for g in 0..groups {
                    wait_healthy(&self.client, view, g, Duration::from_secs(120)).await;
                }
                wait_routed_to_masters(&self.client, view, groups, Duration::from_secs(60)).await;
            }
        }
        let balanced = balanced.elapsed();
        acks_flowing(&self.ledger, 400).await;
        let stats = load.stop(&self.ledger).await;
        if let Layout::Replicated { .. } = layout {
            assert!(
                stats.failed.is_empty(),
                "{} sends failed during the rolling upgrade; first: {:?}",
                stats.failed.len(),
                stats
                    .failed
                    .iter()
                    .take(5)
                    .map(|f| &f.error)
                    .collect::<Vec<_>>()
            );
        }
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the rolling restart",
            Duration::from_secs(300),
        )
        .await;
        stats.record(&step);
        step.set("rollout_s", secs(rollout));
        step.set("helm_upgrade_s", secs(helm.took));
        step.set("route_balanced_after_s", secs(balanced));
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("duplicates_so_far", self.ledger.duplicates() as u64);
        step.set("repeats_so_far", self.ledger.repeats());
        step.set(
            "delivered_unacked_so_far",
            self.ledger.delivered_unacked() as u64,
        );
        step.done();
    }
}
