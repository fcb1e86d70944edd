//! The operator as the replication controller (replication factor > 1): for
//! each broker group it keeps the record `{master, epoch, in-sync set}` in a
//! ConfigMap (compare-and-swap only), elects a master when the recorded one
//! fails, and sends every member its role with `AssignRole` every renewal
//! interval. The rules themselves are the pure ones of `dduomq-replication`;
//! this module observes, records and calls. Runs on the leader only, started
//! and stopped with the other controllers.

pub mod group;
pub mod record;
pub mod rounds;
pub mod timing;

use std::collections::BTreeMap;
use std::time::Instant;

use dduomq_replication::{ElectionTiming, GroupLayout};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::placement::QueuesWithData;
use crate::placement::groups::{GroupUnits, group_units};
use crate::registry::BrokerEndpoint;
use group::{GroupController, GroupState, Member, RoundTiming};
use record::RecordStore;
use rounds::GroupRounds;

/// Each group's state after its last round, by group id: the route
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

/// Runs every group's controller on its own task with its own ticker
/// ([`rounds`]), so one group's slow calls never delay another's renewals,
/// and publishes each group's state on `states`. Starts a group's task when
/// its first member appears in the registry and stops it when its last one
/// leaves (scaled in); on `shutdown` stops them all and returns once none
/// runs, so a successor never runs a controller while this one does.
pub async fn run(
    ctx: Context,
    settings: ReplicationSettings,
    states: watch::Sender<GroupStates>,
    shutdown: CancellationToken,
) {
    let origin = Instant::now();
    let timing = RoundTiming {
        election: ElectionTiming {
            leader_since: origin.elapsed(),
            lease: timing::LEASE,
            margin: timing::MARGIN,
        },
        call_timeout: timing::CALL_TIMEOUT,
    };
    let mut tasks: BTreeMap<u32, GroupTask> = BTreeMap::new();
    let mut ticker = tokio::time::interval(timing::RENEW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let groups = groups_of(settings.layout, &ctx.brokers.borrow());
        tasks.retain(|g, task| {
            if groups.contains_key(g) {
                return true;
            }
            // Cancelled before its state is removed: a stopped task never
            // publishes again (it checks under the same lock).
            task.stop.cancel();
            task.handle.abort();
            if states.send_if_modified(|s| s.remove(g).is_some()) {
                ctx.routes_changed.notify_one();
            }
            false
        });
        for g in groups.keys() {
            tasks.entry(*g).or_insert_with(|| {
                let stop = shutdown.child_token();
                let rounds = GroupRounds {
                    group: *g,
                    layout: settings.layout,
                    controller: GroupController::new(
                        *g,
                        settings.layout.factor(),
                        RecordStore::new(
                            ctx.client.clone(),
                            &settings.namespace,
                            &settings.statefulset,
                            *g,
                            settings.layout.factor(),
                        ),
                        ctx.pool.clone(),
                    ),
                    timing,
                    origin,
                    ctx: ctx.clone(),
                    states: states.clone(),
                    stop: stop.clone(),
                };
                let handle = tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        stop.run_until_cancelled(rounds.run()).await;
                    }
                });
                GroupTask { stop, handle }
            });
        }
    }
    for task in tasks.into_values() {
        task.stop.cancel();
        let _ = task.handle.await;
    }
}

/// A running group controller's task.
struct GroupTask {
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

#[cfg(test)]
mod tests;
