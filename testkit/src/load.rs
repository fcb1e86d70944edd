//! Continuous produce at a steady rate while a scenario disrupts the brokers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dduomq_client::{Message, Producer};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::eventually_every;
use crate::ledger::{FailedSend, Ledger, body_of};
use crate::report::{Step, secs};

/// Continuous produce at a steady rate, every outcome in the ledger.
#[derive(Debug)]
pub struct Load {
    rate: LoadRate,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
    started: Instant,
    first: u64,
}

/// How fast a [`Load`] sends.
#[derive(Debug, Clone, Copy)]
pub struct LoadRate {
    pub messages_per_second: u32,
    /// Sends in flight at most (more wait: a stall).
    pub max_in_flight: usize,
}

/// What a [`Load`] saw, from its start to its stop.
#[derive(Debug)]
pub struct LoadStats {
    rate: LoadRate,
    pub sent: u64,
    pub acked: usize,
    pub failed: Vec<FailedSend>,
    pub longest_ack_gap: Duration,
    pub slowest_ack: Duration,
    pub took: Duration,
}

impl LoadStats {
    /// Distinct error texts with their counts.
    pub fn errors(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = BTreeMap::new();
        for f in &self.failed {
            *out.entry(f.error.clone()).or_default() += 1;
        }
        out
    }

    /// Prints the figures and records them in the step's report section.
    pub fn record(&self, step: &Step<'_>) {
        step.set("load_msgs_per_s", self.rate.messages_per_second);
        step.set("sent", self.sent);
        step.set("acked", self.acked as u64);
        step.set("failed_sends", self.failed.len() as u64);
        // The stall a producer saw: the longest a send waited for its ack
        // (failovers included); and the longest time without any ack.
        step.set("longest_produce_stall_s", secs(self.slowest_ack));
        step.set("longest_ack_gap_s", secs(self.longest_ack_gap));
        step.set("load_s", secs(self.took));
        if !self.failed.is_empty() {
            step.set("send_errors", json!(self.errors()));
        }
    }
}

impl Load {
    /// Starts sending [`body_of`] each next index to the ledger's topic.
    pub fn start(producer: Producer, ledger: Arc<Ledger>, rate: LoadRate) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let first = ledger.allocated();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut in_flight = tokio::task::JoinSet::new();
            // Each tick sends what is due since the start, so late ticks (a busy
            // machine) do not lower the rate below `messages_per_second`.
            let paced_from = Instant::now();
            let mut started_sends = 0u64;
            while !flag.load(Ordering::SeqCst) {
                tick.tick().await;
                while let Some(done) = in_flight.try_join_next() {
                    done.expect("send task");
                }
                let due = (paced_from.elapsed().as_secs_f64() * f64::from(rate.messages_per_second))
                    as u64;
                while started_sends < due {
                    if in_flight.len() >= rate.max_in_flight {
                        // A stall: what was due meanwhile is skipped, not
                        // sent in a burst afterwards.
                        started_sends = due;
                        break;
                    }
                    started_sends += 1;
                    let index = ledger.allocate();
                    let producer = producer.clone();
                    let ledger = ledger.clone();
                    in_flight.spawn(async move {
                        let sent = Instant::now();
                        let message = Message::new(ledger.topic(), body_of(index));
                        let result = producer.send(message).await;
                        ledger.record(index, &result, Some(sent.elapsed()));
                    });
                }
            }
            while let Some(done) = in_flight.join_next().await {
                done.expect("send task");
            }
        });
        Load {
            rate,
            stop,
            task,
            started: Instant::now(),
            first,
        }
    }

    /// Stops producing and waits for the sends in flight (each ends within the
    /// send timeout).
    pub async fn stop(self, ledger: &Ledger) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        let stopped = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the load's sends end within 60s")
            .expect("load task");
        let last = ledger.allocated();
        LoadStats {
            rate: self.rate,
            sent: last - self.first,
            acked: ledger.acked_in(self.first..last),
            failed: ledger.failed_in(self.first..last),
            longest_ack_gap: ledger.longest_stall(self.started, stopped),
            slowest_ack: ledger.slowest_ack(self.first..last),
            took: stopped - self.started,
        }
    }
}

/// How often [`acks_flowing`] counts: four times a second is plenty for a load
/// of hundreds of messages a second.
const ACKS_POLL: Duration = Duration::from_millis(250);

/// Waits until `n` acks more than now.
pub async fn acks_flowing(ledger: &Ledger, n: usize) {
    let base = ledger.acked_count();
    eventually_every(
        ACKS_POLL,
        Duration::from_secs(30),
        "acknowledged sends of the load",
        async || (ledger.acked_count() >= base + n).then_some(()),
    )
    .await;
}
