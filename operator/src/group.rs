//! The ConsumerGroup controller: creates the group on every ready broker, applies
//! a requested offset reset exactly once per `requestId`, and reports members and
//! lag.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use dduomq_client::ResetTo;
use dduomq_proto::v1 as pb;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::context::{
    BrokerNamespaced, Context, MANAGED, MANAGER, PAUSED, Previous, ReconcileError, StatusRecord,
    annotated, broker_namespace, readiness, stored_name,
};
use crate::controller::Reconciled;
use crate::crd::{
    AppliedReset, ConsumeMode, ConsumerGroup, ConsumerGroupStatus, ResetTarget, Subscription,
    TopicLag,
};
use dduomq_proto::namespace::MAX_STORED_GROUP_LEN;

impl BrokerNamespaced for ConsumerGroup {
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

impl Reconciled for ConsumerGroup {
    const KIND: &'static str = "ConsumerGroup";
    const FINALIZER: &'static str = "dduomq.io/group-cleanup";
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

/// The broker-side settings of a group; an `InvalidSpec` error for a
/// `retryBackoff` item the operator cannot parse.
pub fn broker_group(name: &str, g: &ConsumerGroup) -> Result<pb::Group, ReconcileError> {
    let backoff = g
        .spec
        .retry_backoff
        .iter()
        .enumerate()
        .map(|(i, d)| {
            humantime::parse_duration(d)
                .map(|d| d.as_millis() as u64)
                .map_err(|e| ReconcileError::invalid_spec(format!("retryBackoff[{i}]"), d, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pb::Group {
        name: name.to_string(),
        mode: match g.spec.consume_mode {
            ConsumeMode::Clustering => pb::ConsumeMode::Clustering,
            ConsumeMode::Broadcast => pb::ConsumeMode::Broadcast,
        } as i32,
        max_delivery_attempts: g.spec.max_delivery_attempts,
        retry_backoff_ms: backoff,
        disable_dead_letter: !g.spec.dead_letter,
        subscriptions: g
            .spec
            .subscriptions
            .iter()
            .map(broker_subscription)
            .collect(),
        ordered: g.spec.ordered,
    })
}

/// A subscription as the broker declares it: by tag, by SQL, or (neither)
/// everything.
fn broker_subscription(s: &Subscription) -> pb::GroupSubscription {
    let (filter_type, expression) = match (&s.sql, &s.tag) {
        (Some(sql), _) => (pb::FilterType::Sql, sql.clone()),
        (None, Some(tag)) => (pb::FilterType::Tag, tag.clone()),
        (None, None) => (pb::FilterType::Tag, String::new()),
    };
    pb::GroupSubscription {
        topic: s.topic.clone(),
        filter_type: filter_type as i32,
        filter_expression: expression,
    }
}

/// Where a requested offset reset moves the group's progress; an `InvalidSpec`
/// error for a timestamp the operator cannot parse.
fn reset_target(g: &ConsumerGroup) -> Result<Option<ResetTo>, ReconcileError> {
    let Some(r) = &g.spec.offset_reset else {
        return Ok(None);
    };
    let to = match r.to {
        ResetTarget::Earliest => ResetTo::Earliest,
        ResetTarget::Latest => ResetTo::Latest,
        ResetTarget::Timestamp => {
            let text = r.timestamp.as_deref().unwrap_or_default();
            let ts: k8s_openapi::jiff::Timestamp = text
                .parse()
                .map_err(|e| ReconcileError::invalid_spec("offsetReset.timestamp", text, e))?;
            ResetTo::Timestamp(ts.as_millisecond())
        }
    };
    Ok(Some(to))
}

async fn apply(
    group: &ConsumerGroup,
    api: &Api<ConsumerGroup>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    if annotated(group, PAUSED, "true") {
        return Ok(Action::requeue(ctx.resync));
    }
    let name = group.name_any();
    // The spec is checked whole before any broker is touched.
    let settings = broker_group(&name, group)?;
    let reset_to = reset_target(group)?;
    let name_problem = stored_name(group, MAX_STORED_GROUP_LEN).err();
    let managed = !annotated(group, MANAGED, "false") && name_problem.is_none();
    let pool = ctx.pool.for_resource(group);
    let ready = ctx.ready_brokers();
    let previous = group.status.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let mut applied = previous.last_applied_reset.clone();
    if managed && !ready.is_empty() {
        for b in &ready {
            if let Err(e) = pool.create_group(&b.address, settings.clone()).await {
                problems.push(e.to_string());
            }
        }
        let pending = group.spec.offset_reset.as_ref().filter(|r| {
            applied
                .as_ref()
                .is_none_or(|a| a.request_id != r.request_id)
        });
        if let (Some(r), Some(to), true) = (pending, reset_to, problems.is_empty()) {
            let mut reset_problems = Vec::new();
            for s in &group.spec.subscriptions {
                for b in &ready {
                    if let Err(e) = pool.reset_offset(&b.address, &name, &s.topic, to).await {
                        reset_problems.push(e.to_string());
                    }
                }
            }
            if reset_problems.is_empty() {
                applied = Some(AppliedReset {
                    request_id: r.request_id.clone(),
                    applied_at: k8s_openapi::jiff::Timestamp::now().to_string(),
                });
                ctx.event(
                    group,
                    false,
                    "OffsetReset",
                    format!("offsets reset ({:?}) for request {}", r.to, r.request_id),
                )
                .await;
            } else {
                problems.extend(reset_problems);
            }
        }
    }
    // Members and lag over every ready broker.
    let topics: BTreeSet<&str> = group
        .spec
        .subscriptions
        .iter()
        .map(|s| s.topic.as_str())
        .collect();
    let mut members = BTreeSet::new();
    let mut lag: BTreeMap<String, u64> = topics.iter().map(|t| (t.to_string(), 0)).collect();
    for b in &ready {
        if let Ok(d) = pool.describe_group(&b.address, &name).await {
            members.extend(d.members.into_iter().map(|m| m.client_id));
            for q in d
                .queues
                .iter()
                .filter(|q| topics.contains(q.topic.as_str()))
            {
                *lag.entry(q.topic.clone()).or_default() += q.lag;
            }
        }
    }
    let verdict = readiness(
        name_problem.as_deref(),
        managed,
        ready.is_empty(),
        &problems,
        || format!("on {} brokers", ready.len()),
    );
    let ok = verdict.ok;
    let condition = ctx
        .conclude(
            group,
            Previous {
                conditions: &previous.conditions,
                observed_generation: previous.observed_generation,
            },
            verdict,
        )
        .await;
    let lag: Vec<TopicLag> = lag
        .into_iter()
        .map(|(topic, lag)| TopicLag { topic, lag })
        .collect();
    let status = ConsumerGroupStatus {
        conditions: vec![condition],
        observed_generation: group.metadata.generation,
        broker_namespace: Some(broker_namespace(group)),
        member_count: members.len() as u32,
        members: members.into_iter().collect(),
        total_lag: lag.iter().map(|t| t.lag).sum(),
        lag,
        last_applied_reset: applied,
    };
    let patch = serde_json::json!({"apiVersion": "dduomq.io/v1alpha1", "kind": "ConsumerGroup", "status": status});
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(ctx.requeue(group, ok))
}

async fn cleanup(group: &ConsumerGroup, ctx: &Context) -> Result<Action, ReconcileError> {
    // A name too long for the brokers never reached them.
    if stored_name(group, MAX_STORED_GROUP_LEN).is_err() || annotated(group, MANAGED, "false") {
        return Ok(Action::await_change());
    }
    let ready = ctx.ready_brokers();
    if ready.is_empty() {
        ctx.event(
            group,
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
            .for_resource(group)
            .delete_group(&b.address, &group.name_any())
            .await
        {
            failed.push(e.to_string());
        }
    }
    if failed.is_empty() || ctx.namespace_terminating(group).await {
        return Ok(Action::await_change());
    }
    Err(ReconcileError::Cleanup(failed.join("; ")))
}

#[cfg(test)]
mod tests;
