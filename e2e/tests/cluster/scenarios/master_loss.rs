//! Scenarios 9 and 10: a group's master lost under continuous quorum-acked
//! produce and consume, either its process SIGKILLed (9) or its pod and its
//! PVC deleted, as when its node and volume are gone (10). The operator elects
//! another member with a higher epoch; the time from the loss to the first
//! send the new master acknowledges is reported; the lost member returns (on
//! its volume, or empty and catching up from the new master) as a replica of
//! the new epoch and rejoins the in-sync set; every acknowledged message is
//! consumed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_client::proto as pb;
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, eventually_every, secs};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Cluster;
use crate::groups::{group_record, replica_state, wait_healthy, wait_routed_to_masters};
use crate::pods::{View, broker_pod, claim_name, sigkill};
use crate::{LOAD, NS, POLL};

/// How a master is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterLoss {
    /// SIGKILL of its process; the pod restarts it on the same volume.
    Process,
    /// Its pod and its PVC deleted: it returns with an empty volume.
    PodAndVolume,
}

impl Cluster {
    /// Scenario 9 (`Process`, group 0) or 10 (`PodAndVolume`, group 1).
    pub async fn lose_master(
        &self,
        view: &Arc<View>,
        producer: &Producer,
        group: u32,
        loss: MasterLoss,
    ) {
        let (key, title) = match loss {
            MasterLoss::Process => (
                "9-master-sigkill",
                "SIGKILL a master under quorum-acked load → a new master; time to its first ack; nothing acknowledged lost",
            ),
            MasterLoss::PodAndVolume => (
                "10-master-pod-and-volume-lost",
                "delete a master's pod and PVC under load → failover; the member returns empty and catches up; nothing acknowledged lost",
            ),
        };
        let step = Step::start(&self.report, key, title);
        let groups = view.pods().len() as u32 / crate::groups::FACTOR;
        let before = wait_healthy(&self.client, view, group, Duration::from_secs(120)).await;
        let old = before
            .master_ordinal()
            .expect("a healthy group has a master");
        let victim = broker_pod(&self.client, old)
            .await
            .expect("the master's pod");
        let claim_before = self.claim(old).await.expect("the master's PVC");

        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 200).await;
        // Message ids of a replicated group carry the group, not the member.
        let since = Instant::now();
        eventually_every(
            POLL,
            Duration::from_secs(30),
            "the group to acknowledge sends",
            async || self.ledger.first_ack_by(group, since),
        )
        .await;
        eprintln!(
            "    {loss:?}: master {} of group {group}, epoch {}",
            victim.name, before.epoch
        );
        let t = Instant::now();
        match loss {
            MasterLoss::Process => sigkill(&victim),
            MasterLoss::PodAndVolume => {
                // The claim goes once no pod uses it (pvc-protection); the
                // StatefulSet then makes a new, empty one for the new pod.
                Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), NS)
                    .delete(&claim_name(old), &DeleteParams::background())
                    .await
                    .expect("delete the master's PVC");
                sigkill(&victim);
                self.pods()
                    .delete(&victim.name, &DeleteParams::default().grace_period(0))
                    .await
                    .expect("delete the master's pod");
            }
        }
        let elected = eventually_every(POLL, Duration::from_secs(60), "a new master", async || {
            let r = group_record(&self.client, group).await?;
            (r.epoch > before.epoch && r.master.is_some() && r.master != before.master).then_some(r)
        })
        .await;
        let elected_seen = Instant::now();
        let elected_after = t.elapsed();
        let new_master = elected.master_ordinal().expect("elected");
        // The old master is gone, so what the group acknowledges from here on
        // is the new master's (counted from when the new record was seen: at
        // most one poll late).
        let first_ack = eventually_every(
            POLL,
            Duration::from_secs(60),
            "the new master to acknowledge a send",
            async || self.ledger.first_ack_by(group, elected_seen),
        )
        .await;
        let failover = first_ack - t;
        eprintln!(
            "    new master {new_master} (epoch {}) elected after {:.1}s, first ack after {:.1}s",
            elected.epoch,
            elected_after.as_secs_f64(),
            failover.as_secs_f64()
        );

        // The lost member returns and rejoins; when it returns empty, how fast
        // it copies the log.
        let mut running_at = None;
        let rejoined = eventually_every(
            POLL,
            Duration::from_secs(300),
            "the lost member back in sync",
            async || {
                let pod = broker_pod(&self.client, old).await?;
                let replaced = match loss {
                    MasterLoss::Process => pod.restarts > victim.restarts,
                    MasterLoss::PodAndVolume => pod.uid != victim.uid,
                };
                if !replaced || pod.ip.is_none() {
                    return None;
                }
                running_at.get_or_insert_with(Instant::now);
                let r = group_record(&self.client, group).await?;
                r.in_sync
                    .contains(&(old % crate::groups::FACTOR))
                    .then_some((r, pod))
            },
        )
        .await;
        let (record, returned) = rejoined;
        let in_sync_after = t.elapsed();
        let catch_up = running_at.map_or(Duration::ZERO, |at| at.elapsed());
        let state = eventually_every(
            POLL,
            Duration::from_secs(60),
            "the returned member to follow",
            async || {
                let s = replica_state(&returned.addr()?).await?;
                (s.role == pb::ReplicaRole::Replica as i32 && s.epoch >= record.epoch).then_some(s)
            },
        )
        .await;
        let claim_after = self.claim(old).await.expect("the returned member's PVC");
        match loss {
            MasterLoss::Process => assert_eq!(claim_after.uid(), claim_before.uid(), "same volume"),
            MasterLoss::PodAndVolume => {
                assert_ne!(claim_after.uid(), claim_before.uid(), "a new, empty volume")
            }
        }
        wait_healthy(&self.client, view, group, Duration::from_secs(120)).await;
        wait_routed_to_masters(&self.client, view, groups, Duration::from_secs(60)).await;
        acks_flowing(&self.ledger, 400).await;
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the master loss",
            Duration::from_secs(300),
        )
        .await;
        stats.record(&step);
        step.set("old_master", old);
        step.set("new_master", new_master);
        step.set("epochs", json!([before.epoch, elected.epoch]));
        step.set("elected_after_s", secs(elected_after));
        step.set("kill_to_first_ack_by_new_master_s", secs(failover));
        step.set("lost_member_in_sync_after_s", secs(in_sync_after));
        step.set("rejoined_log_bytes", state.log_end);
        if loss == MasterLoss::PodAndVolume {
            // From the new pod's start to the in-sync record (polled every 250 ms).
            step.set("catch_up_s", secs(catch_up));
            step.set(
                "catch_up_mib_per_s",
                (state.log_end as f64 / 1048576.0 / catch_up.as_secs_f64().max(0.25) * 10.0)
                    .round()
                    / 10.0,
            );
        }
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("duplicates_so_far", self.ledger.duplicates() as u64);
        step.done();
    }
}
