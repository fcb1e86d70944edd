//! The operator as the replication controller (replication factor > 1): for
//! each broker group it keeps the record `{master, epoch, in-sync set}` in a
//! ConfigMap (compare-and-swap only), elects a master when the recorded one
//! fails, and sends every member its role with `AssignRole` every renewal
//! interval. The rules themselves are the pure ones of `dduomq-replication`;
//! this module observes, records and calls. Runs on the leader only, started
//! and stopped with the other controllers.

pub mod group;
pub mod record;
pub mod timing;

use std::collections::BTreeMap;
use std::time::Instant;

use dduomq_replication::{ElectionTiming, GroupLayout};
use tokio::sync::watch;

use crate::context::Context;
use crate::placement::QueuesWithData;
use crate::placement::groups::{GroupUnits, group_units};
use crate::registry::BrokerEndpoint;
use group::{GroupController, GroupState, Member, RoundOutcome, RoundTiming};
use record::RecordStore;

/// Each group's state after the last round, by group id: the route
/// publisher routes a group's queues to its master only while it serves.
pub type GroupStates = BTreeMap<u32, GroupState>;

/// What queues are placed over.
#[derive(Debug, Clone)]
pub enum WriteUnits {
    /// Each broker (replication factor 1).
    Brokers,
    /// Each replication group, through its master, as the replication
    /// controller last left it.
    Groups {
        layout: GroupLayout,
        states: watch::Receiver<GroupStates>,
    },
}

impl WriteUnits {
    /// The units over the ready brokers, with their draining state and data.
    pub fn over(
        &self,
        ready: &[&BrokerEndpoint],
        draining: &[String],
        data: &BTreeMap<String, QueuesWithData>,
    ) -> GroupUnits {
        match self {
            WriteUnits::Brokers => GroupUnits {
                endpoints: ready.iter().map(|b| (*b).clone()).collect(),
                draining: draining.to_vec(),
                data: data.clone(),
                read_only: Vec::new(),
            },
            WriteUnits::Groups { layout, states } => {
                group_units(*layout, &states.borrow(), ready, draining, data)
            }
        }
    }
}

/// Where the controller keeps its records and how groups are formed.
#[derive(Debug, Clone)]
pub struct ReplicationSettings {
    pub layout: GroupLayout,
    /// The brokers' namespace (the records live there).
    pub namespace: String,
    /// The broker StatefulSet's name: records are `<it>-group-<g>`.
    pub statefulset: String,
}

/// The members of each group present in the registry, by group id.
pub fn groups_of(layout: GroupLayout, brokers: &[BrokerEndpoint]) -> BTreeMap<u32, Vec<Member>> {
    let mut groups: BTreeMap<u32, Vec<Member>> = BTreeMap::new();
    for b in brokers {
        let at = layout.placement(b.broker_id);
        groups.entry(at.group).or_default().push(Member {
            member: at.member,
            endpoint: b.clone(),
        });
    }
    groups
}

/// Runs the rounds until the caller drops it (at shutdown), publishing each
/// group's state on `states`; a change wakes the route publisher at once.
pub async fn run(ctx: Context, settings: ReplicationSettings, states: watch::Sender<GroupStates>) {
    let origin = Instant::now();
    let now = move || origin.elapsed();
    let timing = RoundTiming {
        election: ElectionTiming {
            leader_since: now(),
            lease: timing::LEASE,
            margin: timing::MARGIN,
        },
        call_timeout: timing::CALL_TIMEOUT,
    };
    let factor = settings.layout.factor();
    let mut controllers: BTreeMap<u32, GroupController> = BTreeMap::new();
    let mut ticker = tokio::time::interval(timing::RENEW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let brokers = ctx.brokers.borrow().clone();
        let groups = groups_of(settings.layout, &brokers);
        // A group whose members all left the registry (scaled in) is dropped.
        controllers.retain(|g, _| groups.contains_key(g));
        for g in groups.keys() {
            controllers.entry(*g).or_insert_with(|| {
                let store = RecordStore::new(
                    ctx.client.clone(),
                    &settings.namespace,
                    &settings.statefulset,
                    *g,
                    factor,
                );
                GroupController::new(*g, factor, store, ctx.pool.clone())
            });
        }
        let rounds = controllers.iter_mut().map(|(g, controller)| {
            let members = &groups[g];
            let (timing, now) = (&timing, &now);
            async move { (*g, controller.round(members, timing, now).await) }
        });
        for (group, outcome) in futures::future::join_all(rounds).await {
            match outcome {
                Ok(RoundOutcome::Elected(record)) => {
                    ctx.metrics.elections.inc();
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
        let current: GroupStates = controllers
            .iter()
            .map(|(g, c)| (*g, c.state().clone()))
            .collect();
        if states.send_if_modified(|s| {
            let changed = *s != current;
            *s = current;
            changed
        }) {
            ctx.routes_changed.notify_one();
        }
    }
}
