//! The Topic controller: makes every ready broker host the topic, reports the
//! queue → broker assignment, and (finalizer) deletes the topic from the brokers
//! per `deletionPolicy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dduomq_proto::v1 as pb;
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::context::{
    Context, MANAGED, MANAGER, PAUSED, ReconcileError, annotated, readiness, ready_condition,
};
use crate::crd::{DeletionPolicy, MessageType, QueueAssignment, Topic, TopicStatus};
use crate::placement;

const FINALIZER: &str = "dduomq.io/topic-cleanup";

pub fn message_type(t: MessageType) -> pb::MessageType {
    match t {
        MessageType::Normal => pb::MessageType::Normal,
        MessageType::Fifo => pb::MessageType::Fifo,
        MessageType::Delay => pb::MessageType::Delay,
        MessageType::Transaction => pb::MessageType::Transaction,
    }
}

/// Runs the controller until the process stops.
pub async fn run(ctx: Context) {
    let api: Api<Topic> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "topic reconcile failed");
            }
        })
        .await;
}

async fn reconcile(
    topic: Arc<Topic>,
    ctx: Arc<Context>,
) -> Result<Action, FinalizerError<ReconcileError>> {
    let started = Instant::now();
    let ns = topic.namespace().unwrap_or_default();
    let api: Api<Topic> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, topic, |event| async {
        match event {
            Finalizer::Apply(t) => apply(&t, &api, &ctx).await,
            Finalizer::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await;
    ctx.metrics
        .reconciled("Topic", result.is_ok(), started.elapsed().as_secs_f64());
    result
}

fn error_policy(_: Arc<Topic>, err: &FinalizerError<ReconcileError>, _: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "topic reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn apply(topic: &Topic, api: &Api<Topic>, ctx: &Context) -> Result<Action, ReconcileError> {
    if annotated(topic, PAUSED, "true") {
        return Ok(Action::requeue(ctx.resync));
    }
    let name = topic.name_any();
    let owner = ctx.name_taken_elsewhere(topic).await;
    let managed = !annotated(topic, MANAGED, "false") && owner.is_none();
    let ready = ctx.ready_brokers();
    let mut problems = Vec::new();
    if managed {
        for b in &ready {
            if let Err(e) = ctx
                .pool
                .create_topic(
                    &b.address,
                    &name,
                    topic.spec.queues,
                    message_type(topic.spec.message_type),
                )
                .await
            {
                problems.push(e.to_string());
            }
        }
    }
    let writers: Vec<_> = ready.iter().collect();
    let assignment = placement::assign(topic.spec.queues, &writers)
        .into_iter()
        .map(|(queue, broker)| QueueAssignment { queue, broker })
        .collect();
    let (ok, reason, message) = readiness(
        owner.as_deref(),
        managed,
        ready.is_empty(),
        &problems,
        || format!("{} queues on {} brokers", topic.spec.queues, ready.len()),
    );
    let previous = topic.status.clone().unwrap_or_default();
    let generation = topic.metadata.generation;
    if previous.observed_generation != generation
        || previous.conditions.iter().all(|c| c.reason != reason)
    {
        ctx.event(topic, !ok, reason, message.clone()).await;
    }
    let status = TopicStatus {
        conditions: vec![ready_condition(
            &previous.conditions,
            ok,
            reason,
            message,
            generation,
        )],
        observed_generation: generation,
        assignment,
        broker_count: ready.len() as u32,
    };
    let patch =
        serde_json::json!({"apiVersion": "dduomq.io/v1alpha1", "kind": "Topic", "status": status});
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.routes_changed.notify_one();
    Ok(Action::requeue(if ok {
        ctx.resync
    } else {
        Duration::from_secs(5)
    }))
}

/// Deletes the topic from the brokers (policy `Delete`). When no broker is left,
/// or the namespace is being torn down, gives up instead of blocking deletion.
async fn cleanup(topic: &Topic, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = topic.name_any();
    let conflict = ctx.name_taken_elsewhere(topic).await.is_some();
    if conflict
        || annotated(topic, MANAGED, "false")
        || topic.spec.deletion_policy == DeletionPolicy::Retain
    {
        ctx.routes_changed.notify_one();
        return Ok(Action::await_change());
    }
    let ready = ctx.ready_brokers();
    if ready.is_empty() {
        ctx.event(
            topic,
            true,
            "NoBrokers",
            "no broker left to clean up; releasing the finalizer".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let mut failed = Vec::new();
    for b in &ready {
        if let Err(e) = ctx.pool.delete_topic(&b.address, &name).await {
            failed.push(e.to_string());
        }
    }
    ctx.routes_changed.notify_one();
    if failed.is_empty() {
        return Ok(Action::await_change());
    }
    if ctx.namespace_terminating(topic).await {
        ctx.event(
            topic,
            true,
            "NamespaceTerminating",
            format!(
                "cleanup incomplete ({}); releasing the finalizer",
                failed.join("; ")
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    Err(ReconcileError::Other(failed.join("; ")))
}
