//! The soak (`make soak`, not part of `make test`): on the replicated
//! installation, continuous quorum-acked produce and consume for
//! `DDUOMQ_SOAK_MINUTES` minutes while a master is SIGKILLed every
//! `DDUOMQ_SOAK_KILL_EVERY_S` seconds, the groups taking turns. Reports lost
//! and duplicated messages, failed sends, every failover time (kill to the
//! first send the new master acknowledged) and the brokers' memory (RSS) at
//! the start and the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, secs};
use serde_json::json;

use super::Cluster;
use crate::LOAD;
use crate::groups::{wait_healthy, wait_routed_to_masters, wait_succession};
use crate::pods::{View, broker_pod, sigkill};

/// How long the soak runs and how often it kills a master.
#[derive(Debug, Clone, Copy)]
pub struct SoakSettings {
    pub duration: Duration,
    pub kill_every: Duration,
}

impl SoakSettings {
    /// From `DDUOMQ_SOAK_MINUTES` (default 30) and `DDUOMQ_SOAK_KILL_EVERY_S`
    /// (default 60, at least 30: a group needs that to fail over and have its
    /// old master back in sync).
    pub fn from_env() -> SoakSettings {
        let number = |name: &str, default: u64| -> u64 {
            std::env::var(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
            })
        };
        let settings = SoakSettings {
            duration: Duration::from_secs(60 * number("DDUOMQ_SOAK_MINUTES", 30)),
            kill_every: Duration::from_secs(number("DDUOMQ_SOAK_KILL_EVERY_S", 60)),
        };
        assert!(
            settings.kill_every >= Duration::from_secs(30),
            "DDUOMQ_SOAK_KILL_EVERY_S must be at least 30"
        );
        assert!(
            settings.duration >= settings.kill_every,
            "the soak must last at least one kill interval"
        );
        settings
    }
}

/// Resident memory of every broker pod's process, by ordinal.
fn rss_kib(view: &View) -> BTreeMap<u32, u64> {
    view.pods()
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).ok()?;
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some((p.ordinal, kib))
        })
        .collect()
}

impl Cluster {
    /// The soak over `groups` groups.
    pub async fn soak(
        &self,
        view: &Arc<View>,
        producer: &Producer,
        groups: u32,
        settings: SoakSettings,
    ) {
        let step = Step::start(
            &self.report,
            "soak",
            "quorum-acked produce and consume with a master SIGKILLed at every interval: lost, duplicated, failover times, RSS",
        );
        eprintln!(
            "    soak for {:?}, a master killed every {:?}",
            settings.duration, settings.kill_every
        );
        let load = Load::start(producer.clone(), self.ledger.clone(), LOAD);
        acks_flowing(&self.ledger, 200).await;
        let rss_start = rss_kib(view);
        let started = Instant::now();
        let mut failovers = Vec::new();
        let mut round = 0u32;
        while started.elapsed() + settings.kill_every <= settings.duration {
            let next = started + settings.kill_every * (round + 1);
            tokio::time::sleep_until(next.into()).await;
            let group = round % groups;
            round += 1;
            let before = wait_healthy(&self.client, view, group, Duration::from_secs(120)).await;
            let old = before
                .master_ordinal()
                .expect("a healthy group has a master");
            let victim = broker_pod(&self.client, old)
                .await
                .expect("the master's pod");
            let t = Instant::now();
            sigkill(&victim);
            let next = wait_succession(&self.client, &self.ledger, &before).await;
            let (elected, first_ack) = (&next.record, next.first_ack);
            let failover = first_ack - t;
            eprintln!(
                "    kill {round}: {} (group {group}, epoch {} → {}), first ack by the new master after {:.1}s",
                victim.name,
                before.epoch,
                elected.epoch,
                failover.as_secs_f64()
            );
            failovers.push(failover);
            wait_healthy(&self.client, view, group, Duration::from_secs(300)).await;
        }
        wait_routed_to_masters(&self.client, view, groups, Duration::from_secs(60)).await;
        let stats = load.stop(&self.ledger).await;
        let rss_end = rss_kib(view);
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message of the soak",
            Duration::from_secs(600),
        )
        .await;
        stats.record(&step);
        let mut sorted = failovers.clone();
        sorted.sort();
        let total = |m: &BTreeMap<u32, u64>| m.values().sum::<u64>();
        step.set("soak_s", secs(started.elapsed()));
        step.set("master_kills", failovers.len() as u64);
        step.set(
            "failover_s",
            json!(failovers.iter().map(|d| secs(*d)).collect::<Vec<_>>()),
        );
        if let (Some(min), Some(max)) = (sorted.first(), sorted.last()) {
            step.set("failover_min_s", secs(*min));
            step.set("failover_median_s", secs(sorted[sorted.len() / 2]));
            step.set("failover_max_s", secs(*max));
        }
        step.set("lost", self.ledger.missing().len() as u64);
        step.set("duplicates", self.ledger.duplicates() as u64);
        step.set("repeats", self.ledger.repeats());
        step.set(
            "delivered_although_send_failed",
            self.ledger.delivered_unacked() as u64,
        );
        step.set("rss_kib_start", json!(rss_start));
        step.set("rss_kib_end", json!(rss_end));
        step.set("rss_total_kib", json!([total(&rss_start), total(&rss_end)]));
        step.set("consumed_after_stop_s", secs(consumed));
        step.done();
        self.report.save();
        self.report.print_summary();
    }
}
