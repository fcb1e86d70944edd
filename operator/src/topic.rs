//! The Topic controller: makes every ready broker host the topic, reports the
//! queue → broker assignment, and (finalizer) deletes the topic from the brokers
//! per `deletionPolicy`.

use std::future::Future;
use std::time::Duration;

use dduomq_proto::v1 as pb;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::context::{
    Context, MANAGED, MANAGER, PAUSED, ReconcileError, annotated, readiness, ready_condition,
    stored_name,
};
use crate::controller::Reconciled;
use crate::crd::{DeletionPolicy, MessageType, QueueAssignment, Topic, TopicStatus};
use crate::placement;
use dduomq_proto::namespace::MAX_STORED_TOPIC_LEN;

pub fn message_type(t: MessageType) -> pb::MessageType {
    match t {
        MessageType::Normal => pb::MessageType::Normal,
        MessageType::Fifo => pb::MessageType::Fifo,
        MessageType::Delay => pb::MessageType::Delay,
        MessageType::Transaction => pb::MessageType::Transaction,
    }
}

impl Reconciled for Topic {
    const KIND: &'static str = "Topic";
    const FINALIZER: &'static str = "dduomq.io/topic-cleanup";
    fn apply<'a>(
        &'a self,
        api: &'a Api<Self>,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send + 'a {
        apply(self, api, ctx)
    }
    fn cleanup<'a>(
        &'a self,
        ctx: &'a Context,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send + 'a {
        cleanup(self, ctx)
    }
}

async fn apply(topic: &Topic, api: &Api<Topic>, ctx: &Context) -> Result<Action, ReconcileError> {
    if annotated(topic, PAUSED, "true") {
        return Ok(Action::requeue(ctx.resync));
    }
    let name = topic.name_any();
    let name_problem = stored_name(topic, MAX_STORED_TOPIC_LEN).err();
    let managed = !annotated(topic, MANAGED, "false") && name_problem.is_none();
    let pool = ctx.pool.for_resource(topic);
    let ready = ctx.ready_brokers();
    let mut problems = Vec::new();
    if managed {
        for b in &ready {
            if let Err(e) = pool
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
        name_problem.as_deref(),
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
    // A name too long for the brokers never reached them.
    if stored_name(topic, MAX_STORED_TOPIC_LEN).is_err()
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
        if let Err(e) = ctx
            .pool
            .for_resource(topic)
            .delete_topic(&b.address, &name)
            .await
        {
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

#[cfg(test)]
mod tests;
