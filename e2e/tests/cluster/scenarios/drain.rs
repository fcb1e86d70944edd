//! Scenario 5: drain broker 4, then scale 5 → 4; no unconsumed message is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::{Admin, Producer};
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, eventually_every, secs};
use serde_json::Value;

use super::Cluster;
use crate::pods::{View, broker_pod};
use crate::routes::{query_route, stored_on, wait_balanced};
use crate::{LOAD, POLL};

impl Cluster {
    async fn drain(&self, broker: &str, args: &[&str]) -> Value {
        let mut cli = vec!["--server", broker, "-o", "json", "broker", "drain"];
        cli.extend_from_slice(args);
        let out = self.env.cli(&cli).await.ok();
        serde_json::from_str(out.stdout.trim()).expect("drain JSON")
    }

    /// Scenario 5.
    pub async fn drain_and_scale_in(&self, view: &Arc<View>, producer: &Producer) {
        let key = "5-drain-scale-in";
        let step = Step::start(
            &self.report,
            key,
            "drain broker 4, then scale 5 → 4: no unconsumed message lost",
        );
        let draining = broker_pod(&self.client, 4)
            .await
            .expect("dduomq-broker-4")
            .addr()
            .expect("pod IP");
        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 400).await;

        let t = Instant::now();
        let answer = self.drain(&draining, &["--no-wait"]).await;
        assert_eq!(answer["draining"], true, "{answer}");
        // The operator moves the write queues off the draining broker.
        let others: Vec<String> = view
            .serving()
            .into_iter()
            .filter(|a| *a != draining)
            .collect();
        let observer = others[0].clone();
        let route = eventually_every(
            POLL,
            Duration::from_secs(60),
            "the write queues to leave the draining broker",
            async || {
                let r = query_route(&observer).await.ok()?;
                (r.writes_on(&draining) == 0 && r.balanced_over(&others)).then_some(r)
            },
        )
        .await;
        let moved = t.elapsed();
        // Producers refresh their routes every second; sends to broker 4 already
        // in flight finish within moments.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stored_drained = stored_on(&draining).await;
        let answer = self.drain(&draining, &["--timeout", "180s"]).await;
        assert_eq!(answer["drained"], true, "{answer}");
        assert_eq!(answer["unconsumed_messages"], 0, "{answer}");
        let drained = t.elapsed();
        let info = Admin::connect(&draining)
            .expect("admin client")
            .broker_info()
            .await
            .expect("BrokerInfo of the drained broker");
        assert!(info.draining);
        assert_eq!(info.unconsumed_messages, 0);
        assert_eq!(
            stored_on(&draining).await,
            stored_drained,
            "a draining broker takes no writes"
        );

        let t_scale = Instant::now();
        self.helm_upgrade(&["--set", "broker.replicas=4"]).await;
        eventually_every(
            POLL,
            Duration::from_secs(120),
            "dduomq-broker-4 gone",
            async || broker_pod(&self.client, 4).await.is_none().then_some(()),
        )
        .await;
        let scaled = t_scale.elapsed();
        assert!(
            self.claim(4).await.is_some(),
            "whenScaled: Retain keeps data-dduomq-broker-4"
        );
        let (_, balanced, _) = wait_balanced(view, 4, Duration::from_secs(120)).await;
        acks_flowing(&self.ledger, 400).await;
        let stats = load.stop(&self.ledger).await;
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message after the scale-in",
            Duration::from_secs(180),
        )
        .await;
        stats.record(&step);
        step.set("write_route_moved_after_s", secs(moved));
        step.set("drained_after_s", secs(drained));
        step.set("stored_on_drained_broker", stored_drained);
        step.set("scale_in_s", secs(scaled));
        step.set("route_over_4_after_s", secs(balanced));
        step.set("consumed_after_stop_s", secs(consumed));
        step.set("route_while_draining", format!("{:?}", route.writable));
        step.done();
    }
}
