//! The soak (`make soak`, not part of `make test`): on the replicated
//! installation, continuous quorum-acked produce and consume for
//! `DDUOMQ_SOAK_MINUTES` minutes while a master is SIGKILLed every
//! `DDUOMQ_SOAK_KILL_EVERY_S` seconds, the groups taking turns. Reports lost
//! and duplicated messages, failed sends, every failover time (kill to the
//! first send the new master acknowledged) and the brokers' resident memory
//! (anonymous and file-backed) at the start and the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Producer;
use dduomq_testkit::{Load, Step, acks_flowing, all_acked_consumed, secs};
use serde::Serialize;
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

/// A broker process's resident memory: anonymous (heap, caches) and
/// file-backed (its mapped log segments and queue files, which the kernel
/// reclaims as needed).
#[derive(Debug, Clone, Copy, Serialize)]
struct Memory {
    pid: i32,
    anon_kib: u64,
    file_kib: u64,
}

/// The resident memory of every broker pod's process, by ordinal.
fn memory(view: &View) -> BTreeMap<u32, Memory> {
    view.pods()
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).ok()?;
            let kib = |field: &str| -> Option<u64> {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(field))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            };
            let memory = Memory {
                pid: p.pid(),
                anon_kib: kib("RssAnon:")?,
                file_kib: kib("RssFile:")?,
            };
            Some((p.ordinal, memory))
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
        let memory_start = memory(view);
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
        let memory_end = memory(view);
        let consumed = all_acked_consumed(
            &self.ledger,
            "every acknowledged message of the soak",
            Duration::from_secs(600),
        )
        .await;
        stats.record(&step);
        let mut sorted = failovers.clone();
        sorted.sort();
        let total =
            |m: &BTreeMap<u32, Memory>, of: fn(&Memory) -> u64| m.values().map(of).sum::<u64>();
        // Kills restart processes: only one that ran the whole soak shows drift.
        let anon_growth: BTreeMap<u32, i64> = memory_end
            .iter()
            .filter_map(|(ordinal, end)| {
                let start = memory_start.get(ordinal).filter(|s| s.pid == end.pid)?;
                Some((*ordinal, end.anon_kib as i64 - start.anon_kib as i64))
            })
            .collect();
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
        step.set("memory_start", json!(memory_start));
        step.set("memory_end", json!(memory_end));
        step.set(
            "anon_total_kib",
            json!([
                total(&memory_start, |m| m.anon_kib),
                total(&memory_end, |m| m.anon_kib)
            ]),
        );
        step.set(
            "file_total_kib",
            json!([
                total(&memory_start, |m| m.file_kib),
                total(&memory_end, |m| m.file_kib)
            ]),
        );
        step.set(
            "anon_growth_kib_of_processes_never_killed",
            json!(anon_growth),
        );
        step.set("consumed_after_stop_s", secs(consumed));
        step.done();
        self.report.save();
        self.report.print_summary();
    }
}
