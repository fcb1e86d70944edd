//! Scenario 9b: the official RocketMQ Java client on the replicated
//! installation, through the brokers' RocketMQ door. A Topic and a
//! ConsumerGroup made with `kubectl apply`; the client bootstraps through the
//! client Service, sends while a group's master is SIGKILLed (and keeps
//! having sends acknowledged after it), then a new consumer receives: every
//! send the client saw acknowledged is received, byte-exact. The consumer
//! starts after the failover, so the routes QueryRoute gave it led to the new
//! master for the messages the old one had stored.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_client::Message;
use dduomq_testkit::{Step, eventually_every, rocketmq, secs};
use serde_json::Value;

use super::Cluster;
use crate::clients::{build_producer, service_address};
use crate::groups::{group_record, wait_healthy};
use crate::pods::{View, broker_pod, sigkill};
use crate::{NS, POLL};

/// The topic and group of the scenario (`failover-<run>` in the program).
const NAME: &str = "failover-e2e";
/// Sends of the run, one every 5 ms or so.
const MESSAGES: u32 = 1500;
/// Acknowledged sends before the master is killed.
const KILL_AFTER: usize = 400;

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

        // The brokers have the topic's route (the Topic's status is
        // recorded before the route reaches them): a send through the
        // Service is acknowledged. That message is received with the rest.
        let producer = build_producer(&service_address(&self.client).await);
        eventually_every(
            POLL,
            Duration::from_secs(60),
            "the topic routed",
            async || producer.send(Message::new(NAME, "routed")).await.ok(),
        )
        .await;

        let work = tempfile::tempdir().expect("temp dir");
        let errors = work.path().join("java.stderr");
        let mut java = rocketmq::java_scenarios(work.path());
        let mut child = Killed(
            java.arg(service_address(&self.client).await)
                .arg("e2e")
                .arg("failover")
                .env("DDUOMQ_NAMESPACE", NS)
                .env("FAILOVER_MESSAGES", MESSAGES.to_string())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&errors).expect("stderr file"))
                .spawn()
                .expect("run the Java client"),
        );
        let stderr_tail = || {
            let text = std::fs::read_to_string(&errors).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let stdout = child.0.stdout.take().expect("piped");
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
            .unwrap_or_else(|_| {
                panic!(
                    "the Java client printed nothing for 300 s:\n{}",
                    stderr_tail()
                )
            })
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
        let status = child.0.wait().expect("the Java client exits");
        assert!(
            status.success() && done,
            "the Java client failed ({status}):\n{}",
            stderr_tail()
        );
        assert!(killed_at.is_some(), "the master was killed mid-run");
        assert!(
            sent.len() > KILL_AFTER + 100,
            "sends were acknowledged after the kill: {} in all",
            sent.len()
        );
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
        // Clean up, and leave the group whole for the next scenario.
        self.env
            .kubectl_ok(&["delete", "-f", "-"], Some(&manifest))
            .await;
        wait_healthy(&self.client, view, group, Duration::from_secs(300)).await;
        step.done();
    }
}

/// Kills the child process when dropped (a failed scenario leaves no client
/// sending).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
