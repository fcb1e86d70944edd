//! The Topic controller: makes every ready broker host the topic, reports its
//! readiness, and (finalizer) deletes the topic from the brokers per
//! `deletionPolicy`. The queue → write unit assignment in its status is the
//! route publisher's (`routes.rs`).

use std::future::Future;

use dduomq_client::TopicSettings;
use dduomq_proto::v1 as pb;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::context::{
    BrokerNamespaced, Context, MANAGED, MANAGER, PAUSED, Previous, ReconcileError, StatusRecord,
    annotated, broker_namespace, readiness, stored_name,
};
use crate::controller::Reconciled;
use crate::crd::{AckPolicy, DeletionPolicy, MessageType, Topic, TopicStatus};
use dduomq_proto::namespace::MAX_STORED_TOPIC_LEN;

pub fn message_type(t: MessageType) -> pb::MessageType {
    match t {
        MessageType::Normal => pb::MessageType::Normal,
        MessageType::Fifo => pb::MessageType::Fifo,
        MessageType::Delay => pb::MessageType::Delay,
        MessageType::Transaction => pb::MessageType::Transaction,
    }
}

pub fn ack_policy(p: AckPolicy) -> pb::AckPolicy {
    match p {
        AckPolicy::Master => pb::AckPolicy::Master,
        AckPolicy::Quorum => pb::AckPolicy::Quorum,
    }
}

/// The topic as the brokers take it, from its spec.
pub fn broker_topic(name: &str, topic: &Topic) -> Result<TopicSettings, ReconcileError> {
    let mut settings = TopicSettings::new(
        name,
        topic.spec.queues,
        message_type(topic.spec.message_type),
    );
    settings.max_message_bytes = topic.spec.max_message_bytes;
    // Unset is sent as "the brokers'": left out, the brokers would keep the
    // topic's policy, and removing ackPolicy from the spec would not reset it.
    settings.ack_policy = Some(
        topic
            .spec
            .ack_policy
            .map_or(pb::AckPolicy::BrokerDefault, ack_policy),
    );
    settings.retention = topic
        .spec
        .retention
        .as_deref()
        .map(|text| match humantime::parse_duration(text) {
            // The brokers read 0 as "their default": not what was asked for.
            Ok(d) if d.is_zero() => Err(ReconcileError::invalid_spec(
                "retention",
                text,
                "must be longer than 0",
            )),
            Ok(d) => Ok(d),
            Err(e) => Err(ReconcileError::invalid_spec("retention", text, e)),
        })
        .transpose()?;
    Ok(settings)
}

impl BrokerNamespaced for Topic {
    fn status_record(&self) -> StatusRecord<'_> {
        StatusRecord {
            observed_generation: self.status.as_ref().and_then(|s| s.observed_generation),
            broker_namespace: self
                .status
                .as_ref()
                .and_then(|s| s.broker_namespace.as_deref()),
        }
    }
}

impl Reconciled for Topic {
    const KIND: &'static str = "Topic";
    const FINALIZER: &'static str = "dduomq.io/topic-cleanup";
    /// The queue → write unit assignment is the route publisher's.
    const STATUS_OWNED_ELSEWHERE: &'static [&'static str] = &["assignment"];
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
        let settings = broker_topic(&name, topic)?;
        for b in &ready {
            if let Err(e) = pool.create_topic(&b.address, &settings).await {
                problems.push(e.to_string());
            }
        }
    }
    let verdict = readiness(
        name_problem.as_deref(),
        managed,
        ready.is_empty(),
        &problems,
        || format!("{} queues on {} brokers", topic.spec.queues, ready.len()),
    );
    let previous = topic.status.clone().unwrap_or_default();
    let ok = verdict.ok;
    let condition = ctx
        .conclude(
            topic,
            Previous {
                conditions: &previous.conditions,
                observed_generation: previous.observed_generation,
            },
            verdict,
        )
        .await;
    let status = TopicStatus {
        conditions: vec![condition],
        observed_generation: topic.metadata.generation,
        broker_namespace: Some(broker_namespace(topic)),
        assignment: Vec::new(),
        broker_count: ready.len() as u32,
    };
    let mut status = serde_json::to_value(status).expect("a status serializes");
    let fields = status.as_object_mut().expect("a status is an object");
    for field in Topic::STATUS_OWNED_ELSEWHERE {
        fields.remove(*field);
    }
    let patch =
        serde_json::json!({"apiVersion": "dduomq.io/v1alpha1", "kind": "Topic", "status": status});
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.routes_changed.notify_one();
    Ok(ctx.requeue(topic, ok))
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
    Err(ReconcileError::Cleanup(failed.join("; ")))
}

#[cfg(test)]
mod tests;
