//! One group's rounds on a task of their own, every `RENEW_EVERY` on the
//! group's own ticker: a group whose master hangs (its calls run to their
//! timeouts) or whose record read stalls delays only its own next round,
//! never another group's renewal, whose master would otherwise lose its
//! lease and be replaced for no reason.

use std::time::Instant;

use dduomq_replication::GroupLayout;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::replication::group::{GroupController, RoundOutcome, RoundTiming};
use crate::replication::record::RecordError;
use crate::replication::{GroupStates, groups_of, timing};

/// Everything one group's task needs.
#[derive(Debug)]
pub struct GroupRounds {
    pub group: u32,
    pub layout: GroupLayout,
    pub controller: GroupController,
    pub timing: RoundTiming,
    /// Zero of the controller's monotonic clock (shared by all groups).
    pub origin: Instant,
    pub ctx: Context,
    pub states: watch::Sender<GroupStates>,
    /// Cancelled when the group is stopped; its state is then no longer
    /// published.
    pub stop: CancellationToken,
}

impl GroupRounds {
    /// Runs rounds until the task is cancelled.
    pub async fn run(mut self) {
        let origin = self.origin;
        let now = move || origin.elapsed();
        let mut ticker = tokio::time::interval(timing::RENEW_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let members = groups_of(self.layout, &self.ctx.brokers.borrow())
                .remove(&self.group)
                .unwrap_or_default();
            let outcome = self.controller.round(&members, &self.timing, &now).await;
            self.report(outcome);
            self.publish();
        }
    }

    fn report(&self, outcome: Result<RoundOutcome, RecordError>) {
        let group = self.group;
        match outcome {
            Ok(RoundOutcome::Elected(record)) => {
                self.ctx.metrics.elections.inc();
                tracing::info!(group, master = ?record.master, epoch = record.epoch, "group master elected");
            }
            Ok(RoundOutcome::Fenced { elect_at }) => {
                tracing::info!(
                    group,
                    ?elect_at,
                    "group master failed; fenced until its lease surely lapsed"
                );
            }
            Ok(RoundOutcome::Contended) => {
                tracing::warn!(
                    group,
                    "the group record kept changing under this round; trying again next round"
                );
            }
            Ok(RoundOutcome::NoCandidate) => {
                tracing::warn!(group, "group master failed and no in-sync member is ready");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(group, error = %e, "group round failed"),
        }
    }

    /// Publishes this group's state; a change wakes the route publisher.
    fn publish(&self) {
        let state = self.controller.state();
        let changed = self.states.send_if_modified(|s| {
            if self.stop.is_cancelled() || s.get(&self.group) == Some(state) {
                return false;
            }
            s.insert(self.group, state.clone());
            true
        });
        if changed {
            self.ctx.routes_changed.notify_one();
        }
    }
}
