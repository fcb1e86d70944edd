//! Scenario 13: under quorum-acked load, `helm upgrade` adds one group (6 → 9
//! brokers): it elects a master, the route writes on it and it acknowledges
//! sends; then back to 6: the operator drains the departing group before it
//! removes it, and nothing acknowledged is lost. First, an upgrade that
//! changes the replication factor is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, eventually_every, secs};
use serde_json::json;

use super::Cluster;
use crate::groups::{FACTOR, wait_healthy, wait_routed_to_masters};
use crate::pods::{View, broker_pod};
use crate::{LOAD, NS, POLL, RELEASE};

impl Cluster {
    /// Scenario 13, from `groups` groups to one more and back.
    pub async fn group_scale(&self, view: &Arc<View>, producer: &Producer, groups: u32) {
        let step = Step::start(
            &self.report,
            "13-group-scale-out-and-in",
            "under load, helm upgrade adds a group (6 → 9 brokers): it gets a master and writes; back to 6: the group is drained first; nothing lost",
        );
        // The brokers' logs were written with replication factor 3: the chart
        // refuses to change it (the brokers would follow unrelated logs).
        let chart = self.env.chart();
        let refused = self
            .env
            .helm(&[
                "upgrade",
                RELEASE,
                &chart,
                "-n",
                NS,
                "--reuse-values",
                "--set",
                "broker.replicationFactor=1",
            ])
            .await;
        assert!(
            !refused.success && refused.stderr.contains("which cannot change"),
            "changing the replication factor of a release must fail: {}",
            refused.describe()
        );

        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 200).await;

        let t = Instant::now();
        let more = format!("broker.replicas={}", (groups + 1) * FACTOR);
        let helm_out = self.helm_upgrade(&["--set", &more]).await;
        let added = wait_healthy(&self.client, view, groups, Duration::from_secs(300)).await;
        wait_routed_to_masters(&self.client, view, groups + 1, Duration::from_secs(120)).await;
        let new_master = added
            .master_ordinal()
            .expect("a healthy group has a master");
        // Message ids of a replicated group carry the group.
        eventually_every(
            POLL,
            Duration::from_secs(60),
            "the new group to acknowledge sends",
            async || self.ledger.first_ack_by(groups, t),
        )
        .await;
        let scaled_out = t.elapsed();

        let t = Instant::now();
        let fewer = format!("broker.replicas={}", groups * FACTOR);
        let helm_in = self.helm_upgrade(&["--set", &fewer]).await;
        eventually_every(
            POLL,
            Duration::from_secs(300),
            "the added group's pods gone",
            async || {
                for member in 0..FACTOR {
                    if broker_pod(&self.client, groups * FACTOR + member)
                        .await
                        .is_some()
                    {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        wait_routed_to_masters(&self.client, view, groups, Duration::from_secs(120)).await;
        let scaled_in = t.elapsed();
        acks_flowing(&self.ledger, 400).await;
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the group scale-out and scale-in",
            Duration::from_secs(300),
        )
        .await;
        stats.record(&step);
        step.set("added_group_master", new_master);
        step.set("scale_out_to_first_ack_s", secs(scaled_out));
        step.set("scale_in_s", secs(scaled_in));
        step.set(
            "helm_upgrade_s",
            json!([secs(helm_out.took), secs(helm_in.took)]),
        );
        step.set("consumed_after_stop_s", secs(consumed));
        step.done();
    }
}
