//! The route publisher: recomputes the cluster route table from the Topics and
//! the ready brokers, and pushes it to every ready broker with a new epoch when it
//! changes (and the current one to brokers that come back).
//!
//! It owns the queue placement: each topic's assignment is rebalanced from the
//! previous one (see [`placement::rebalance`]) and recorded in
//! `Topic.status.assignment` under its own field manager, so an operator
//! restart or failover starts from the recorded placement instead of
//! reshuffling every topic.

use std::collections::BTreeMap;
use std::time::Duration;

use dduomq_client::Reason;
use dduomq_proto::v1 as pb;
use futures::future::join_all;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::context::{Context, MANAGED, annotated, stored_name};
use crate::crd::{QueueAssignment, Topic};
use crate::placement::{self, Assignment, QueuesWithData};
use crate::replication::WriteUnits;
use crate::route_epoch::RouteEpochCounter;
use crate::topic::message_type;
use dduomq_proto::namespace::MAX_STORED_TOPIC_LEN;

/// How often routes are recomputed even without a trigger.
const PERIOD: Duration = Duration::from_secs(3);

/// The field manager of `Topic.status.assignment`: apart from the Topic
/// controller's, so neither status apply removes the other's fields.
pub const ROUTES_MANAGER: &str = "dduomq-operator-routes";

/// Topic (broker-side name) → its current placement.
pub type Placements = BTreeMap<String, Assignment>;

/// The placements recorded in the Topics' status, read before the controllers
/// start. Empty (each topic then seeds from its status when first routed) if
/// the Topics cannot be listed.
pub async fn recorded_placements(client: &Client) -> Placements {
    match Api::<Topic>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list
            .items
            .iter()
            .filter_map(|t| Some((stored_name(t, MAX_STORED_TOPIC_LEN).ok()?, recorded(t))))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the recorded placements failed");
            Placements::new()
        }
    }
}

fn recorded(topic: &Topic) -> Assignment {
    topic
        .status
        .iter()
        .flat_map(|s| &s.assignment)
        .map(|a| (a.queue, a.broker.clone()))
        .collect()
}

/// Records `assignment` in the Topic's status when it differs from what is
/// there (failures are retried on the next round).
async fn record(ctx: &Context, topic: &Topic, assignment: &Assignment) {
    if recorded(topic) == *assignment {
        return;
    }
    let status: Vec<QueueAssignment> = assignment
        .iter()
        .map(|(queue, unit)| QueueAssignment {
            queue: *queue,
            broker: unit.clone(),
        })
        .collect();
    let patch = serde_json::json!({
        "apiVersion": "dduomq.io/v1alpha1",
        "kind": "Topic",
        "status": {"assignment": status},
    });
    let api: Api<Topic> =
        Api::namespaced(ctx.client.clone(), &topic.namespace().unwrap_or_default());
    if let Err(e) = api
        .patch_status(
            &topic.name_any(),
            &PatchParams::apply(ROUTES_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        tracing::warn!(topic = %topic.name_any(), error = %e, "recording the placement failed");
    }
}

/// Runs until the caller drops it (at shutdown), starting from the `placed`
/// assignments over `units`; each new table takes its epoch from `epochs`.
pub async fn run(
    mut ctx: Context,
    mut placed: Placements,
    epochs: RouteEpochCounter,
    units: WriteUnits,
) {
    let mut epoch = 0u64;
    let mut last: Option<Vec<pb::TopicRoute>> = None;
    // (broker, topic) → queues with data, as last described: a broker that
    // fails to answer keeps its place instead of looking as if it had no topic.
    let mut known: BTreeMap<(String, String), QueuesWithData> = BTreeMap::new();
    // Broker → whether it was draining when it last answered: one failed call
    // must not hand a draining broker its queues back.
    let mut draining_known: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = ctx.routes_changed.notified() => {}
            _ = ctx.brokers.changed() => {}
        }
        let ready = ctx.ready_brokers();
        ctx.metrics.brokers_ready.set(ready.len() as i64);
        if ready.is_empty() {
            continue;
        }
        let topics = match Api::<Topic>::all(ctx.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing topics failed");
                continue;
            }
        };
        let mut draining = Vec::new();
        // The highest epoch any broker holds: a new one must exceed it.
        let mut held_epoch = epoch;
        for b in &ready {
            let was = draining_known.get(&b.name).copied().unwrap_or(false);
            let is = match ctx.pool.broker_info(&b.address).await {
                Ok(info) => {
                    held_epoch = held_epoch.max(info.route_epoch);
                    info.draining
                }
                Err(e) => {
                    tracing::debug!(broker = %b.name, error = %e, "broker info failed; keeping what was known");
                    was
                }
            };
            draining_known.insert(b.name.clone(), is);
            if is {
                draining.push(b.name.clone());
            }
        }
        draining_known.retain(|name, _| ready.iter().any(|b| b.name == *name));
        let mut seen = std::collections::BTreeSet::new();
        let refs: Vec<_> = ready.iter().collect();
        let mut routes = Vec::new();
        for t in topics
            .iter()
            .filter(|t| t.metadata.deletion_timestamp.is_none() && !annotated(*t, MANAGED, "false"))
        {
            let name = t.name_any();
            // Routes carry stored names; one too long for the brokers has none
            // (its Topic says so).
            let Ok(stored) = stored_name(t, MAX_STORED_TOPIC_LEN) else {
                continue;
            };
            seen.insert(stored.clone());
            let pool = ctx.pool.for_resource(t);
            let mut data: BTreeMap<String, QueuesWithData> = BTreeMap::new();
            for b in &ready {
                let key = (b.name.clone(), stored.clone());
                let queues = match pool.describe_topic(&b.address, &name).await {
                    Ok(d) => Some(
                        d.queues
                            .iter()
                            .filter(|q| q.max_offset > 0)
                            .map(|q| q.queue_id)
                            .collect(),
                    ),
                    Err(e) if e.reason() == Some(Reason::TopicNotFound) => None,
                    // Not known yet (an operator that just started): count
                    // it as hosting the topic, so one failed call does not
                    // move its queues away.
                    Err(e) => {
                        tracing::debug!(broker = %b.name, topic = %name, error = %e, "describe failed; keeping what was known");
                        known.get(&key).cloned().unwrap_or(Some(Vec::new()))
                    }
                };
                known.insert(key, queues.clone());
                data.insert(b.name.clone(), queues);
            }
            let view = units.over(&refs, &draining, &data);
            let unit_refs: Vec<_> = view.endpoints.iter().collect();
            let eligible = placement::write_units(&unit_refs, &view.draining, &view.data);
            let previous = placed.entry(stored.clone()).or_insert_with(|| recorded(t));
            let assignment = placement::rebalance(previous, &eligible, t.spec.queues);
            // Without any write unit, remember where the queues were.
            if !assignment.is_empty() {
                *previous = assignment.clone();
            }
            record(&ctx, t, &assignment).await;
            if let Some(route) = placement::topic_route(
                &stored,
                message_type(t.spec.message_type),
                t.spec.queues,
                &unit_refs,
                &view.read_only,
                &assignment,
                &view.data,
            ) {
                routes.push(route);
            }
        }
        known.retain(|(broker, topic), _| {
            ready.iter().any(|b| b.name == *broker) && seen.contains(topic)
        });
        placed.retain(|topic, _| seen.contains(topic));
        routes.sort_by(|a, b| a.topic.cmp(&b.topic));
        if last.as_ref() != Some(&routes) {
            epoch = match epochs.advance(held_epoch).await {
                Ok(next) => next,
                // The table stays unpublished; the next round tries again.
                Err(e) => {
                    tracing::warn!(error = %e, "advancing the route epoch failed");
                    continue;
                }
            };
            tracing::info!(
                epoch,
                topics = routes.len(),
                draining = draining.len(),
                "route table changed"
            );
            last = Some(routes.clone());
        }
        // Pushed to every broker at once: one that does not answer (cut off
        // from the operator, yet still Ready) must not hold back the others
        // for a call timeout (it delayed a failover's new route by 5 s).
        let pushed = join_all(
            ready
                .iter()
                .map(|b| ctx.pool.update_routes(&b.address, epoch, routes.clone())),
        )
        .await;
        let mut republish_above = epoch;
        for (b, pushed) in ready.iter().zip(pushed) {
            match pushed {
                // The broker holds a newer epoch than this table's (one this
                // operator did not know of): publish the table again above it.
                Ok(held) if held.epoch > epoch => {
                    tracing::info!(broker = %b.name, held = held.epoch, epoch, "a broker holds a newer route epoch; republishing");
                    republish_above = republish_above.max(held.epoch);
                    last = None;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(broker = %b.name, error = %e, "pushing routes failed"),
            }
        }
        epoch = republish_above;
    }
}
