//! The fleet loop: the operator owns the broker StatefulSet's `spec.replicas`,
//! the chart only declares the count it wants (annotation
//! `dduomq.io/desired-replicas`). Growing is immediate; shrinking first drains
//! the departing write units (the highest ordinals; one broker each with
//! replication factor 1, whole groups above it: every member drains, and a
//! group counts as drained when its serving master says so): they refuse new messages, the route publisher moves
//! their write queues away, and the replicas are lowered only once each
//! reports nothing left to consume and nothing staged (delayed or half
//! messages), so no acknowledged message is stranded on a volume nobody reads.
//!
//! A drain that cannot finish (a group nobody consumes, a delayed message due
//! next week, an unreachable broker) waits: a Warning Event `ScaleInBlocked` on
//! the StatefulSet names what is left, and the metrics
//! `dduomq_operator_scale_in_pending` and
//! `dduomq_operator_scale_in_remaining_messages` show it. Raising the count
//! again calls the scale-in off (the units are undrained);
//! `kubectl annotate statefulset … dduomq.io/force-scale-in=true` removes them
//! without waiting, leaving what they hold on their retained volumes.

pub mod plan;

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::brokers::BrokerCallError;
use crate::context::{Context, MANAGER};
use crate::placement::groups::unit_name;
use crate::replication::WriteUnits;
use crate::replication::group::GroupState;
use dduomq_replication::{GroupLayout, Placement};
use plan::{BadAnnotation, FORCE_SCALE_IN, FleetSpec, Plan, SCALE_IN_DRAINING, format_ordinals};

/// How often the StatefulSet and the departing brokers are checked.
const PERIOD: Duration = Duration::from_secs(2);
/// A drain that made no progress for this long is reported (Warning Event),
/// and again after each further period.
const STALL_WARNING: Duration = Duration::from_secs(120);
/// Waiting is logged at most this often (and whenever what is left changes).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Where a departing write unit stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitDrain {
    /// Draining, nothing left to consume, nothing staged.
    Drained,
    /// Still holds messages some group has not consumed, or staged ones.
    Pending { unconsumed: u64, staged: u64 },
    /// Its state is unknown (no endpoint, or it did not answer).
    Unreachable(String),
}

/// A departing unit and its drain state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepartingUnit {
    pub pod: String,
    pub drain: UnitDrain,
}

impl std::fmt::Display for DepartingUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.drain {
            UnitDrain::Drained => write!(f, "{}: drained", self.pod),
            UnitDrain::Pending { unconsumed, staged } => write!(
                f,
                "{}: {unconsumed} unconsumed, {staged} staged (delayed or half) messages",
                self.pod
            ),
            UnitDrain::Unreachable(why) => write!(f, "{}: unknown ({why})", self.pod),
        }
    }
}

/// Why a pass of the loop failed (retried at the next period).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Annotation(#[from] BadAnnotation),
    #[error(transparent)]
    Broker(#[from] BrokerCallError),
    #[error("no endpoint for broker {0}")]
    NoEndpoint(String),
    #[error("{desired} brokers wanted is not a whole number of groups of {factor}")]
    NotWholeGroups { desired: u32, factor: u32 },
}

/// Runs the fleet loop for the StatefulSet `name` in `namespace` until
/// `shutdown`; departing write units are brokers or whole groups, as `units`
/// says.
pub async fn run(
    ctx: Context,
    namespace: String,
    name: String,
    units: WriteUnits,
    shutdown: CancellationToken,
) {
    let mut fleet = Fleet {
        api: Api::namespaced(ctx.client.clone(), &namespace),
        ctx,
        name,
        units,
        progress: None,
    };
    tracing::info!(statefulset = %fleet.name, "fleet loop running");
    let work = async {
        loop {
            if let Err(e) = fleet.pass().await {
                tracing::warn!(statefulset = %fleet.name, error = %e, "fleet pass failed; retrying");
            }
            tokio::time::sleep(PERIOD).await;
        }
    };
    shutdown.run_until_cancelled(work).await;
    tracing::info!("fleet loop stopped");
}

struct Fleet {
    ctx: Context,
    api: Api<StatefulSet>,
    name: String,
    units: WriteUnits,
    /// How the scale-in under way progresses (`None` when none is).
    progress: Option<DrainProgress>,
}

/// Progress of one scale-in, to tell a slow drain from a stuck one.
struct DrainProgress {
    to: u32,
    /// The fewest messages left seen so far, and when.
    least_remaining: u64,
    improved_at: Instant,
    warned_at: Option<Instant>,
    logged: Option<(Instant, String)>,
}

impl Fleet {
    async fn pass(&mut self) -> Result<(), FleetError> {
        let Some(sts) = self.api.get_opt(&self.name).await? else {
            self.idle();
            return Ok(());
        };
        let current = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) as u32;
        let spec = FleetSpec::read(current, |k| sts.annotations().get(k).cloned())?;
        if let (WriteUnits::Groups { layout, .. }, Some(desired)) = (&self.units, spec.desired)
            && desired % layout.factor() != 0
        {
            return Err(FleetError::NotWholeGroups {
                desired,
                factor: layout.factor(),
            });
        }
        match spec.plan() {
            Plan::Unmanaged => self.idle(),
            Plan::Grow { to, undrain } => {
                if !undrain.is_empty() {
                    self.undrain(current, &spec.marked, &undrain).await?;
                    self.ctx
                        .event(
                            &sts,
                            false,
                            "ScaleInCancelled",
                            format!(
                                "{to} brokers wanted again: brokers {undrain:?} take writes again"
                            ),
                        )
                        .await;
                }
                if to > current {
                    self.patch(json!({"spec": {"replicas": to}})).await?;
                    tracing::info!(from = current, to, "scaling out");
                    self.ctx
                        .event(
                            &sts,
                            false,
                            "ScaleOut",
                            format!("replicas {current} → {to}"),
                        )
                        .await;
                }
                self.idle();
            }
            Plan::ScaleIn {
                to,
                undrain,
                newly_departing,
                departing,
                force,
            } => {
                let mut marked = spec.marked.clone();
                if !undrain.is_empty() {
                    marked = self.undrain(current, &marked, &undrain).await?;
                }
                if !newly_departing.is_empty() {
                    // Recorded before the first SetDraining, so a restart
                    // still knows whom to undrain.
                    marked.extend(&newly_departing);
                    self.patch(json!({"metadata": {"annotations": {
                        SCALE_IN_DRAINING: format_ordinals(&marked)
                    }}}))
                    .await?;
                    let pods = self.pods(&newly_departing);
                    tracing::info!(from = current, to, draining = ?pods, "scale-in: draining the departing brokers");
                    self.ctx
                        .event(
                            &sts,
                            false,
                            "ScaleInDraining",
                            format!("replicas {current} → {to}: draining {}", pods.join(", ")),
                        )
                        .await;
                }
                self.scale_in(&sts, current, to, departing, force).await?;
            }
        }
        Ok(())
    }

    /// Drains the departing units; lowers the replicas once all are drained
    /// (or when forced).
    async fn scale_in(
        &mut self,
        sts: &StatefulSet,
        current: u32,
        to: u32,
        departing: Range<u32>,
        force: bool,
    ) -> Result<(), FleetError> {
        let mut units = Vec::new();
        match &self.units {
            WriteUnits::Brokers => {
                for ordinal in departing {
                    units.push(DepartingUnit {
                        pod: self.pod(ordinal),
                        drain: self.drain_unit(ordinal).await,
                    });
                }
            }
            WriteUnits::Groups { layout, states } => {
                let factor = layout.factor();
                for group in departing.start / factor..departing.end.div_ceil(factor) {
                    let master = match states.borrow().get(&group) {
                        Some(GroupState::Serving { master, .. }) => Some(*master),
                        _ => None,
                    };
                    units.push(DepartingUnit {
                        pod: unit_name(group),
                        drain: self.drain_group(*layout, group, master).await,
                    });
                }
            }
        }
        let pending = units
            .iter()
            .filter(|u| u.drain != UnitDrain::Drained)
            .count();
        let remaining: u64 = units
            .iter()
            .map(|u| match u.drain {
                UnitDrain::Pending { unconsumed, staged } => unconsumed + staged,
                _ => 0,
            })
            .sum();
        self.ctx.metrics.scale_in_pending.set(pending as i64);
        self.ctx
            .metrics
            .scale_in_remaining_messages
            .set(remaining as i64);
        let summary = units
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if pending == 0 || force {
            self.patch(json!({
                "metadata": {"annotations": {SCALE_IN_DRAINING: Value::Null, FORCE_SCALE_IN: Value::Null}},
                "spec": {"replicas": to},
            }))
            .await?;
            let (warning, reason) = if pending == 0 {
                (false, "ScaledIn")
            } else {
                (true, "ScaleInForced")
            };
            tracing::info!(from = current, to, forced = pending > 0, %summary, "scale-in: replicas lowered");
            self.ctx
                .event(
                    sts,
                    warning,
                    reason,
                    format!("replicas {current} → {to}: {summary}"),
                )
                .await;
            self.idle();
            return Ok(());
        }
        self.report_waiting(sts, to, remaining, pending, &summary)
            .await;
        Ok(())
    }

    /// Logs the wait (rate-limited) and raises a Warning Event when the drain
    /// has made no progress for [`STALL_WARNING`].
    async fn report_waiting(
        &mut self,
        sts: &StatefulSet,
        to: u32,
        remaining: u64,
        pending: usize,
        summary: &str,
    ) {
        let now = Instant::now();
        let progress = match &mut self.progress {
            Some(p) if p.to == to => p,
            other => other.insert(DrainProgress {
                to,
                least_remaining: remaining,
                improved_at: now,
                warned_at: None,
                logged: None,
            }),
        };
        if remaining < progress.least_remaining {
            progress.least_remaining = remaining;
            progress.improved_at = now;
        }
        let log_due = progress
            .logged
            .as_ref()
            .is_none_or(|(at, last)| last != summary && now.duration_since(*at) >= LOG_EVERY);
        if log_due {
            tracing::info!(to, pending, remaining, %summary, "scale-in: waiting for the departing brokers to drain");
            progress.logged = Some((now, summary.to_string()));
        }
        let stalled = now.duration_since(progress.improved_at) >= STALL_WARNING;
        let warn_due = progress
            .warned_at
            .is_none_or(|at| now.duration_since(at) >= STALL_WARNING);
        if stalled && warn_due {
            progress.warned_at = Some(now);
            let note = format!(
                "no drain progress for {}s: {summary}. Consume what is left, raise broker.replicas again to call the scale-in off, or `kubectl annotate statefulset {} {FORCE_SCALE_IN}=true` to remove the brokers anyway (their messages stay on their retained volumes)",
                now.duration_since(progress.improved_at).as_secs(),
                self.name
            );
            tracing::warn!(to, %note, "scale-in blocked");
            self.ctx.event(sts, true, "ScaleInBlocked", note).await;
        }
    }

    /// Makes the unit drain (again, if it restarted since) and reads its state.
    async fn drain_unit(&self, ordinal: u32) -> UnitDrain {
        let pod = self.pod(ordinal);
        let Some(address) = self.address(&pod) else {
            return UnitDrain::Unreachable("no endpoint".into());
        };
        let info = match self.ctx.pool.broker_info(&address).await {
            Ok(info) => info,
            Err(e) => return UnitDrain::Unreachable(e.error.to_string()),
        };
        if !info.draining {
            if let Err(e) = self.ctx.pool.set_draining(&address, true).await {
                return UnitDrain::Unreachable(e.error.to_string());
            }
        } else if info.unconsumed_messages == 0 && info.staged_messages == 0 {
            return UnitDrain::Drained;
        }
        UnitDrain::Pending {
            unconsumed: info.unconsumed_messages,
            staged: info.staged_messages,
        }
    }

    /// Makes every member of `group` drain (so a master elected during the
    /// drain drains too) and reads the group's state from its serving
    /// `master`: replicas keep no consumer progress of their own.
    async fn drain_group(&self, layout: GroupLayout, group: u32, master: Option<u32>) -> UnitDrain {
        let mut drain = UnitDrain::Unreachable("no serving master".into());
        for member in 0..layout.factor() {
            let state = self
                .drain_unit(layout.ordinal(Placement { group, member }))
                .await;
            if master == Some(member) {
                drain = state;
            }
        }
        drain
    }

    /// Undrains `undrain` (those still running) and drops them from the marks;
    /// returns the marks left.
    async fn undrain(
        &self,
        current: u32,
        marked: &BTreeSet<u32>,
        undrain: &[u32],
    ) -> Result<BTreeSet<u32>, FleetError> {
        for &ordinal in undrain.iter().filter(|o| **o < current) {
            let pod = self.pod(ordinal);
            let address = self
                .address(&pod)
                .ok_or_else(|| FleetError::NoEndpoint(pod.clone()))?;
            self.ctx.pool.set_draining(&address, false).await?;
            tracing::info!(broker = %pod, "undrained: it stays in the fleet");
        }
        let left: BTreeSet<u32> = marked
            .iter()
            .copied()
            .filter(|o| !undrain.contains(o))
            .collect();
        let value = if left.is_empty() {
            Value::Null
        } else {
            Value::String(format_ordinals(&left))
        };
        self.patch(json!({"metadata": {"annotations": {SCALE_IN_DRAINING: value}}}))
            .await?;
        Ok(left)
    }

    /// A JSON merge patch of the StatefulSet: it changes only the fields named,
    /// so Helm's own fields stay Helm's.
    async fn patch(&self, patch: Value) -> Result<(), FleetError> {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        self.api
            .patch(&self.name, &params, &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// No scale-in under way.
    fn idle(&mut self) {
        self.progress = None;
        self.ctx.metrics.scale_in_pending.set(0);
        self.ctx.metrics.scale_in_remaining_messages.set(0);
    }

    fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    fn pods(&self, ordinals: &[u32]) -> Vec<String> {
        ordinals.iter().map(|o| self.pod(*o)).collect()
    }

    /// The gRPC address of `pod` in the registry, ready or not.
    fn address(&self, pod: &str) -> Option<String> {
        self.ctx
            .brokers
            .borrow()
            .iter()
            .find(|b| b.name == pod)
            .map(|b| b.address.clone())
    }
}

#[cfg(test)]
mod tests;
