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

use dduomq_client::proto as pb;
use dduomq_client::{Message, Producer};
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, eventually_every, secs};
use futures::StreamExt;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Cluster;
use crate::clients::{build_producer, service_address};
use crate::groups::{
    group_record, replica_state, wait_healthy, wait_routed_to_masters, wait_succession,
};
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

/// How a member that returned with an empty volume copied the log.
struct CatchUp {
    /// What the master held when the member returned.
    bytes: u64,
    /// From the moment its new pod had an address (the broker still
    /// starting) until it held all of that: an upper bound of the copy time
    /// (polled every 50 ms).
    took: Duration,
}

/// Watches the member at `member`, whose pod got its address at `since`,
/// copy the log of the master at `master`.
async fn catch_up(member: &str, master: &str, since: Instant) -> CatchUp {
    let bytes = replica_state(master)
        .await
        .expect("the new master reports its state")
        .log_end;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = replica_state(member).await
            && s.log_end >= bytes
        {
            return CatchUp {
                bytes,
                took: since.elapsed(),
            };
        }
        assert!(
            Instant::now() < deadline,
            "{member} did not copy the master's {bytes} bytes within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The topic that gives a returning member something to copy (no group
/// consumes it), and what is written to it before the volume is lost.
const FILL_TOPIC: &str = "e2e-catch-up";
const FILL_MESSAGES: usize = 1_600;
const FILL_MESSAGE_BYTES: usize = 64 * 1024;

impl Cluster {
    /// Writes [`FILL_MESSAGES`] of [`FILL_MESSAGE_BYTES`] (100 MiB, spread
    /// over both groups) to [`FILL_TOPIC`], every send acknowledged.
    async fn fill_for_catch_up(&self, groups: u32) {
        let manifest = format!(
            "apiVersion: dduomq.io/v1alpha1\nkind: Topic\nmetadata:\n  name: {FILL_TOPIC}\n  namespace: {NS}\n\
             spec:\n  queues: 8\n  messageType: Normal\n  deletionPolicy: Delete\n"
        );
        // Placed on every group before the fill, so each group's log grows.
        self.apply_placed(&manifest, FILL_TOPIC, 8, groups).await;
        let producer = build_producer(&service_address(&self.client).await);
        // Incompressible (the producer compresses large bodies): xorshift bytes.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let body: Vec<u8> = (0..FILL_MESSAGE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let sent = eventually_every(
            POLL,
            Duration::from_secs(60),
            "the fill topic routed",
            async || {
                producer
                    .send(Message::new(FILL_TOPIC, body.clone()))
                    .await
                    .ok()
            },
        )
        .await;
        drop(sent);
        let failed = futures::stream::iter(1..FILL_MESSAGES)
            .map(|_| producer.send(Message::new(FILL_TOPIC, body.clone())))
            .buffer_unordered(16)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        assert_eq!(failed, 0, "every send of the fill acknowledged");
    }

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

        if loss == MasterLoss::PodAndVolume {
            self.fill_for_catch_up(groups).await;
        }
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
        // The old master is gone.
        let next = wait_succession(&self.client, &self.ledger, &before).await;
        let elected = &next.record;
        let elected_after = next.seen - t;
        let new_master = next.master_ordinal();
        let first_ack = next.first_ack;
        let failover = first_ack - t;
        eprintln!(
            "    new master {new_master} (epoch {}) elected after {:.1}s, first ack after {:.1}s",
            elected.epoch,
            elected_after.as_secs_f64(),
            failover.as_secs_f64()
        );

        // The lost member returns; when it returns empty, how fast it copies
        // the log; then it rejoins the in-sync set.
        let returned = eventually_every(
            POLL,
            Duration::from_secs(300),
            "the lost member back",
            async || {
                let pod = broker_pod(&self.client, old).await?;
                let replaced = match loss {
                    MasterLoss::Process => pod.restarts > victim.restarts,
                    MasterLoss::PodAndVolume => pod.uid != victim.uid,
                };
                (replaced && pod.ip.is_some()).then_some(pod)
            },
        )
        .await;
        let back_at = Instant::now();
        let catch_up = match loss {
            MasterLoss::Process => None,
            MasterLoss::PodAndVolume => {
                let master = broker_pod(&self.client, new_master)
                    .await
                    .and_then(|p| p.addr())
                    .expect("the new master's address");
                Some(catch_up(&returned.addr().expect("pod IP"), &master, back_at).await)
            }
        };
        let record = eventually_every(
            POLL,
            Duration::from_secs(300),
            "the lost member back in sync",
            async || {
                let r = group_record(&self.client, group).await?;
                r.in_sync
                    .contains(&(old % crate::groups::FACTOR))
                    .then_some(r)
            },
        )
        .await;
        let in_sync_after = t.elapsed();
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
        if let Some(c) = catch_up {
            step.set("catch_up_bytes", c.bytes);
            step.set("catch_up_at_most_s", secs(c.took));
            step.set(
                "catch_up_mib_per_s_at_least",
                (c.bytes as f64 / 1048576.0 / c.took.as_secs_f64().max(0.05) * 10.0).round() / 10.0,
            );
        }
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("duplicates_so_far", self.ledger.duplicates() as u64);
        step.set("repeats_so_far", self.ledger.repeats());
        if loss == MasterLoss::PodAndVolume {
            self.env
                .kubectl_ok(
                    &["delete", "topic", FILL_TOPIC, "-n", NS, "--wait=true"],
                    None,
                )
                .await;
        }
        step.done();
    }
}
