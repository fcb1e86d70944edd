//! Scenario 4: under continuous produce and consume, broker pods deleted and
//! broker processes SIGKILLed; each comes back on its volume and every
//! acknowledged message is consumed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, secs};
use kube::ResourceExt;
use kube::api::DeleteParams;
use serde_json::json;

use super::Cluster;
use crate::LOAD;
use crate::pods::{View, broker_pod, claim_name, pod_name, sigkill};
use crate::routes::{query_route, wait_balanced};

impl Cluster {
    /// Scenario 4.
    pub async fn disruptions(&self, view: &Arc<View>, producer: &Producer) {
        let key = "4-pod-delete-and-sigkill";
        let step = Step::start(
            &self.report,
            key,
            "under load: broker pods deleted and broker processes SIGKILLed → back on the same volume, nothing acknowledged lost",
        );
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Disruption {
            Delete,
            Kill,
        }
        let plan = [
            (Disruption::Delete, 1),
            (Disruption::Kill, 2),
            (Disruption::Delete, 3),
            (Disruption::Kill, 0),
        ];
        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 200).await;
        let mut rounds = Vec::new();
        for (round, (what, ordinal)) in plan.into_iter().enumerate() {
            let before = broker_pod(&self.client, ordinal)
                .await
                .unwrap_or_else(|| panic!("{} is missing", pod_name(ordinal)));
            assert!(before.serving(), "{before:?}");
            let victim = before.addr().expect("pod IP");
            let claim_before = self.claim(ordinal).await.expect("the broker's PVC");
            let observer = view
                .serving()
                .into_iter()
                .find(|a| *a != victim)
                .expect("another serving broker");

            eprintln!(
                "    round {}: {what:?} {} ({victim}, pid {:?})",
                round + 1,
                before.name,
                before.container_id
            );
            let t = Instant::now();
            match what {
                Disruption::Delete => {
                    self.pods()
                        .delete(&before.name, &DeleteParams::default())
                        .await
                        .unwrap_or_else(|e| panic!("deleting {}: {e}", before.name));
                }
                Disruption::Kill => sigkill(&before),
            }
            let mut left_route = false;
            let mut ips = BTreeSet::new();
            let after = loop {
                if let Ok(r) = query_route(&observer).await
                    && r.epoch > 0
                    && r.writes_on(&victim) == 0
                {
                    left_route = true;
                }
                if let Some(p) = broker_pod(&self.client, ordinal).await {
                    let back = match what {
                        Disruption::Delete => p.uid != before.uid,
                        Disruption::Kill => p.uid == before.uid && p.restarts > before.restarts,
                    };
                    if let Some(ip) = &p.ip {
                        ips.insert(ip.clone());
                    }
                    if back && p.serving() {
                        break p;
                    }
                }
                assert!(
                    t.elapsed() < Duration::from_secs(180),
                    "{} did not come back Ready within 180s after {what:?}",
                    before.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let downtime = t.elapsed();
            // Same volume: the same claim object, bound to the same volume.
            let claim_after = self.claim(ordinal).await.expect("the broker's PVC");
            assert_eq!(
                claim_after.uid(),
                claim_before.uid(),
                "{} got a new claim",
                after.name
            );
            assert_eq!(
                claim_after
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone()),
                claim_before
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone()),
                "{}'s claim was bound to another volume",
                after.name
            );
            assert_eq!(after.claim.as_deref(), Some(claim_name(ordinal).as_str()));
            if what == Disruption::Kill {
                assert_ne!(
                    after.container_id, before.container_id,
                    "a new process after SIGKILL"
                );
            }
            // Producers kept going while the broker was down.
            let acks_meanwhile = self.ledger.acks_between(t, t + downtime);
            if downtime >= Duration::from_secs(2) {
                assert!(
                    acks_meanwhile > 0,
                    "no send was acknowledged in the {downtime:?} {} was down",
                    after.name
                );
            }
            let (_, healed, _) = wait_balanced(view, 5, Duration::from_secs(120)).await;
            eprintln!(
                "    back Ready after {:.1}s (IP {:?}), route balanced again after {:.1}s, {acks_meanwhile} acks meanwhile, left the write route: {left_route}",
                downtime.as_secs_f64(),
                after.ip,
                healed.as_secs_f64()
            );
            rounds.push(json!({
                "disruption": format!("{what:?}"),
                "broker": after.name,
                "back_ready_s": secs(downtime),
                "route_balanced_after_s": secs(healed),
                "acks_while_down": acks_meanwhile,
                "left_write_route": left_route,
                "pod_ips": ips,
                "restart_count": after.restarts,
            }));
            // Let the load run on the healed cluster before the next disruption.
            acks_flowing(&self.ledger, 400).await;
        }
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the disruptions",
            Duration::from_secs(300),
        )
        .await;
        stats.record(&step);
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("duplicates_so_far", self.ledger.duplicates() as u64);
        step.set("repeats_so_far", self.ledger.repeats());
        step.set(
            "delivered_unacked_so_far",
            self.ledger.delivered_unacked() as u64,
        );
        step.set("rounds", json!(rounds));
        step.done();
    }
}
