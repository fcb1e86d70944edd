//! Scenario 9b: the official RocketMQ Java client on the replicated
//! installation, through the brokers' RocketMQ door. A Topic and a
//! ConsumerGroup made with `kubectl apply`; the client bootstraps through the
//! client Service, sends while a group's master is SIGKILLed, then receives:
//! every send it saw acknowledged is received, byte-exact. QueryRoute keeps
//! answering through the failover and leads the client to the new master.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_testkit::{Step, eventually_every, rocketmq, secs};
use serde_json::Value;

use super::Cluster;
use crate::clients::service_address;
use crate::groups::{group_record, wait_healthy};
use crate::pods::{View, broker_pod, sigkill};
use crate::{NS, POLL};

/// The topic and group of the scenario (`failover-<run>` in the program).
const NAME: &str = "failover-e2e";
/// Sends of the run, one every 5 ms or so.
const MESSAGES: u32 = 3000;
/// Acknowledged sends before the master is killed.
const KILL_AFTER: usize = 600;

impl Cluster {
    /// Scenario 9b, on `group`'s master.
    pub async fn rocketmq_java_failover(&self, view: &Arc<View>, group: u32) {
        let step = Step::start(
            &self.report,
            "9b-rocketmq-java-failover",
            "the official RocketMQ Java client sends through a master SIGKILL and receives every acknowledged message",
        );
        let manifest = format!(
            "apiVersion: dduomq.io/v1alpha1\nkind: Topic\nmetadata:\n  name: {NAME}\n  namespace: {NS}\n\
             spec:\n  queues: 8\n  messageType: Normal\n  deletionPolicy: Delete\n---\n\
             apiVersion: dduomq.io/v1alpha1\nkind: ConsumerGroup\nmetadata:\n  name: {NAME}\n  namespace: {NS}\n\
             spec:\n  subscriptions:\n  - topic: {NAME}\n"
        );
        let groups = view.pods().len() as u32 / crate::groups::FACTOR;
        self.apply_placed(&manifest, NAME, 8, groups).await;
        let before = wait_healthy(&self.client, view, group, Duration::from_secs(120)).await;
        let master = before
            .master_ordinal()
            .expect("a healthy group has a master");
        let victim = broker_pod(&self.client, master)
            .await
            .expect("the master's pod");

        let work = tempfile::tempdir().expect("temp dir");
        let mut java = rocketmq::java_scenarios(work.path());
        let mut child = java
            .arg(service_address(&self.client).await)
            .arg("e2e")
            .arg("failover")
            .env("DDUOMQ_NAMESPACE", NS)
            .env("FAILOVER_MESSAGES", MESSAGES.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the Java client");
        let stdout = child.stdout.take().expect("piped");
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = lines_tx.send(v);
                }
            }
        });

        let started = Instant::now();
        let mut sent: BTreeMap<String, String> = BTreeMap::new();
        let mut received: BTreeMap<String, String> = BTreeMap::new();
        let mut failed = 0;
        let mut killed_at = None;
        let mut first_ack_after_kill = None;
        let mut done = false;
        while let Some(l) = tokio::time::timeout(Duration::from_secs(300), lines.recv())
            .await
            .expect("the Java client prints within 300 s")
        {
            let id = l["id"].as_str().unwrap_or_default().to_string();
            let body = l["body"].as_str().unwrap_or_default().to_string();
            match l["event"].as_str() {
                Some("sent") => {
                    sent.insert(id, body);
                    if let Some(t) = killed_at
                        && first_ack_after_kill.is_none()
                        && sent.len() > KILL_AFTER + 50
                    {
                        first_ack_after_kill = Some(Instant::now() - t);
                    }
                    if killed_at.is_none() && sent.len() == KILL_AFTER {
                        eprintln!("    SIGKILL master {} of group {group}", victim.name);
                        sigkill(&victim);
                        killed_at = Some(Instant::now());
                    }
                }
                Some("failed") => failed += 1,
                Some("received") => {
                    received.insert(id, body);
                }
                Some("done") => done = true,
                _ => {}
            }
        }
        let status = child.wait().expect("the Java client exits");
        assert!(status.success() && done, "the Java client failed: {status}");
        assert!(killed_at.is_some(), "the master was killed mid-run");
        let missing: Vec<&String> = sent
            .keys()
            .filter(|id| !received.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged messages not received, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        for (id, body) in &sent {
            assert_eq!(&received[id], body, "message {id} byte-exact");
        }
        let after = eventually_every(
            POLL,
            Duration::from_secs(120),
            "a new master recorded",
            async || {
                group_record(&self.client, group)
                    .await
                    .filter(|r| r.epoch > before.epoch)
            },
        )
        .await;
        eprintln!(
            "    {} acknowledged and received, {failed} sends failed; new master {:?} (epoch {}); {:.1}s in all",
            sent.len(),
            after.master_ordinal(),
            after.epoch,
            started.elapsed().as_secs_f64()
        );
        step.set("acknowledged", sent.len());
        step.set("received", received.len());
        step.set("failed_sends", failed);
        step.set("kill_after_acks", KILL_AFTER);
        if let Some(d) = first_ack_after_kill {
            step.set("fifty_acks_after_kill_s", secs(d));
        }
        step.set("new_master_epoch", after.epoch);
        step.done();
    }
}
