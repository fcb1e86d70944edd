//! `AdminService`: topics, groups, offsets, lookups and broker info.

use std::sync::Arc;

use dduomq_proto::v1 as pb;
use dduomq_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::access;
use super::namespace::{self, Names};
use super::status::{invalid, to_status};
use super::{convert, observed};
use crate::auth::{Action, Resource};
use crate::messaging::groups::GroupConfig;
use crate::messaging::membership::MemberKind;
use crate::messaging::topic_settings::TopicSettings;
use crate::messaging::topics::TopicConfig;
use crate::messaging::{
    Broker, CreatedTopic, GroupMember, QueueProgress, ResetTarget, TopicDescription,
};
use crate::store::StoreError;
use dduomq_proto::Namespace;

/// The gRPC face of broker administration.
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub broker: Arc<Broker>,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        req: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        observed(self.broker.metrics(), "CreateTopic", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let r = req.into_inner();
            let name = ns.topic(&r.name).map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Create, Resource::Topic(&name))?;
            // Creating an existing topic changes it.
            if self.broker.topic_type(&name).is_ok() {
                access::require(&caller, &ns, Action::Update, Resource::Topic(&name))?;
            }
            let message_type =
                convert::message_type_from_pb(r.message_type).map_err(|e| ns.refusal(e))?;
            let (ack, ack_policy) =
                convert::ack_policy_from_pb(r.ack_policy).map_err(|e| ns.refusal(e))?;
            let settings = TopicSettings {
                ack_policy,
                ..TopicSettings::from_wire(r.max_message_bytes, r.retention_ms)
            };
            let CreatedTopic { topic, created } = self
                .broker
                .acknowledged_change(Some(&name), |b| {
                    b.upsert_topic(&name, r.queues, message_type, settings, ack)
                })
                .await
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::CreateTopicResponse {
                topic: Some(shown_topic(&ns, topic)),
                created,
            }))
        })
        .await
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        observed(self.broker.metrics(), "DeleteTopic", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let name = ns
                .topic(&req.into_inner().name)
                .map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Delete, Resource::Topic(&name))?;
            caller.admin_action("DeleteTopic");
            self.broker
                .acknowledged_change(Some(&name), |b| b.delete_topic(&name))
                .await
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::DeleteTopicResponse {}))
        })
        .await
    }

    async fn list_topics(
        &self,
        req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        observed(self.broker.metrics(), "ListTopics", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            Ok(Response::new(pb::ListTopicsResponse {
                topics: self
                    .broker
                    .list_topics()
                    .into_iter()
                    .filter(|t| ns.holds(&t.name))
                    .filter(|t| caller.may(Action::Describe, Resource::Topic(&t.name)))
                    .map(|t| shown_topic(&ns, t))
                    .collect(),
            }))
        })
        .await
    }

    async fn describe_topic(
        &self,
        req: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::DescribeTopicResponse>, Status> {
        observed(self.broker.metrics(), "DescribeTopic", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let name = ns
                .topic(&req.into_inner().name)
                .map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Describe, Resource::Topic(&name))?;
            let TopicDescription { topic, queues } = self
                .broker
                .describe_topic(&name)
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::DescribeTopicResponse {
                topic: Some(shown_topic(&ns, topic)),
                queues: queues
                    .into_iter()
                    .map(|q| pb::QueueStatus {
                        queue_id: q.queue_id,
                        min_offset: q.min_offset,
                        max_offset: q.max_offset,
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn create_group(
        &self,
        req: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        observed(self.broker.metrics(), "CreateGroup", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut g = req
                .into_inner()
                .group
                .ok_or_else(|| invalid("group", "missing"))?;
            g.name = ns.group("group name", &g.name).map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Create, Resource::Group(&g.name))?;
            // Creating an existing group changes it.
            if self.broker.group_settings(&g.name).is_some() {
                access::require(&caller, &ns, Action::Update, Resource::Group(&g.name))?;
            }
            let mut config = self.broker.default_group(
                &g.name,
                convert::mode_from_pb(g.mode).map_err(|e| ns.refusal(e))?,
            );
            if g.max_delivery_attempts > 0 {
                config.max_delivery_attempts = g.max_delivery_attempts;
            }
            if !g.retry_backoff_ms.is_empty() {
                config.retry_backoff_ms = g.retry_backoff_ms;
            }
            config.dead_letter = !g.disable_dead_letter;
            for subscription in &mut g.subscriptions {
                subscription.topic = ns.topic(&subscription.topic).map_err(|e| ns.refusal(e))?;
            }
            config.subscriptions =
                convert::subscriptions_from_pb(g.subscriptions).map_err(|e| ns.refusal(e))?;
            config.ordered = g.ordered;
            let created = self
                .broker
                .acknowledged_change(None, |b| b.upsert_group(config.clone()))
                .await
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::CreateGroupResponse {
                group: Some(shown_group(&ns, config)),
                created,
            }))
        })
        .await
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        observed(self.broker.metrics(), "DeleteGroup", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let name = ns
                .group("group name", &req.into_inner().name)
                .map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Delete, Resource::Group(&name))?;
            caller.admin_action("DeleteGroup");
            self.broker
                .acknowledged_change(None, |b| b.delete_group(&name))
                .await
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::DeleteGroupResponse {}))
        })
        .await
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        observed(self.broker.metrics(), "ListGroups", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            Ok(Response::new(pb::ListGroupsResponse {
                groups: self
                    .broker
                    .list_groups()
                    .into_iter()
                    .filter(|g| ns.holds(&g.name))
                    .filter(|g| caller.may(Action::Describe, Resource::Group(&g.name)))
                    .map(|g| shown_group(&ns, g))
                    .collect(),
            }))
        })
        .await
    }

    async fn describe_group(
        &self,
        req: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        observed(self.broker.metrics(), "DescribeGroup", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let name = ns
                .group("group name", &req.into_inner().name)
                .map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Describe, Resource::Group(&name))?;
            let d = self
                .broker
                .describe_group(&name)
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::DescribeGroupResponse {
                group: Some(shown_group(&ns, d.config)),
                queues: d
                    .queues
                    .into_iter()
                    .map(|q| shown_progress(&ns, q))
                    .collect(),
                members: d
                    .members
                    .into_iter()
                    .map(|GroupMember { client_id, member }| pb::GroupMember {
                        client_id,
                        kind: match member.kind {
                            MemberKind::Push => pb::ConsumerKind::Push,
                            MemberKind::Pull => pb::ConsumerKind::Pull,
                            MemberKind::Producer => pb::ConsumerKind::Producer,
                        } as i32,
                        topics: member.topics.into_iter().map(|t| ns.shown(t)).collect(),
                        last_heartbeat_ms: member.last_seen_ms,
                    })
                    .collect(),
                generation: d.generation,
            }))
        })
        .await
    }

    async fn reset_offset(
        &self,
        req: Request<pb::ResetOffsetRequest>,
    ) -> Result<Response<pb::ResetOffsetResponse>, Status> {
        observed(self.broker.metrics(), "ResetOffset", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Admin, Resource::Group(&r.group))?;
            access::require(&caller, &ns, Action::Describe, Resource::Topic(&r.topic))?;
            caller.admin_action("ResetOffset");
            let to = match r.to {
                Some(pb::reset_offset_request::To::Earliest(_)) => ResetTarget::Earliest,
                Some(pb::reset_offset_request::To::Latest(_)) => ResetTarget::Latest,
                Some(pb::reset_offset_request::To::TimestampMs(ms)) => ResetTarget::Timestamp(ms),
                Some(pb::reset_offset_request::To::Offset(o)) => ResetTarget::Offset(o),
                None => {
                    return Err(invalid(
                        "to",
                        "one of earliest, latest, timestamp_ms, offset",
                    ));
                }
            };
            let queues = self
                .broker
                .reset_offset(&r.group, &r.topic, to)
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::ResetOffsetResponse {
                queues: queues.into_iter().map(|q| shown_progress(&ns, q)).collect(),
            }))
        })
        .await
    }

    async fn lookup_message(
        &self,
        req: Request<pb::LookupMessageRequest>,
    ) -> Result<Response<pb::LookupMessageResponse>, Status> {
        observed(self.broker.metrics(), "LookupMessage", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            let found = match r.by {
                Some(pb::lookup_message_request::By::MessageId(id)) => {
                    let found = self.broker.lookup_by_id(&id).map_err(|e| ns.refusal(e))?;
                    // A message of another namespace is not found from this one.
                    // A message of another namespace, or of a topic the
                    // caller may not read, is not found from here.
                    let topic = found.record.topic.as_str();
                    if !ns.holds(topic) || !caller.may(Action::Subscribe, Resource::Topic(topic)) {
                        return Err(ns.refusal(StoreError::MessageNotFound(id).into()));
                    }
                    vec![found]
                }
                Some(pb::lookup_message_request::By::Key(key)) => {
                    if r.topic.is_empty() {
                        return Err(invalid("topic", "required for lookups by key"));
                    }
                    access::require(&caller, &ns, Action::Subscribe, Resource::Topic(&r.topic))?;
                    let max = match r.max_results {
                        0 => 64,
                        n => n as usize,
                    };
                    self.broker
                        .lookup_by_key(&r.topic, &key, r.begin_ms, r.end_ms, max)
                        .map_err(|e| ns.refusal(e))?
                }
                None => return Err(invalid("by", "message_id or key")),
            };
            Ok(Response::new(pb::LookupMessageResponse {
                messages: found
                    .into_iter()
                    .map(|d| ns.message(convert::message(d)))
                    .collect(),
            }))
        })
        .await
    }

    async fn broker_info(
        &self,
        _: Request<pb::BrokerInfoRequest>,
    ) -> Result<Response<pb::BrokerInfoResponse>, Status> {
        observed(self.broker.metrics(), "BrokerInfo", async move {
            let i = self.broker.info();
            let drain = self.broker.drain_state();
            Ok(Response::new(pb::BrokerInfoResponse {
                version: env!("CARGO_PKG_VERSION").to_string(),
                broker_id: i.broker_id,
                flush_mode: i.flush_mode,
                uptime_ms: i.uptime.as_millis() as u64,
                commit_log_min: i.store.commit_log_min,
                commit_log_max: i.store.commit_log_max,
                segments: i.store.segments as u32,
                topics: i.topics as u32,
                groups: i.groups as u32,
                draining: drain.draining,
                unconsumed_messages: drain.unconsumed,
                route_epoch: self.broker.route_epoch(),
                staged_messages: drain.staged,
                replication: self.broker.replication().map(|r| r.report()),
            }))
        })
        .await
    }

    async fn update_routes(
        &self,
        req: Request<pb::UpdateRoutesRequest>,
    ) -> Result<Response<pb::UpdateRoutesResponse>, Status> {
        observed(self.broker.metrics(), "UpdateRoutes", async move {
            let routes = convert::route_table(req.into_inner()).map_err(to_status)?;
            let update = self.broker.update_routes(routes);
            Ok(Response::new(pb::UpdateRoutesResponse {
                epoch: update.epoch,
                applied: update.applied,
            }))
        })
        .await
    }

    async fn set_draining(
        &self,
        req: Request<pb::SetDrainingRequest>,
    ) -> Result<Response<pb::SetDrainingResponse>, Status> {
        observed(self.broker.metrics(), "SetDraining", async move {
            self.broker.set_draining(req.into_inner().draining);
            Ok(Response::new(pb::SetDrainingResponse {}))
        })
        .await
    }

    async fn assign_role(
        &self,
        req: Request<pb::AssignRoleRequest>,
    ) -> Result<Response<pb::AssignRoleResponse>, Status> {
        observed(self.broker.metrics(), "AssignRole", async move {
            let Some(replication) = self.broker.replication() else {
                return Err(Status::failed_precondition(
                    "this broker does not replicate ([replication] factor is 1)",
                ));
            };
            // A master's lease counts from receipt, before any waiting.
            let received = replication.clock();
            let state = self
                .broker
                .assign_role(replication, req.into_inner(), received)
                .await
                .map_err(to_status)?;
            Ok(Response::new(pb::AssignRoleResponse { state: Some(state) }))
        })
        .await
    }
}

/// A topic as the caller's namespace names it.
fn shown_topic(ns: &Namespace, mut topic: TopicConfig) -> pb::Topic {
    topic.name = ns.shown(topic.name);
    convert::topic(topic)
}

/// A group as the caller's namespace names it.
fn shown_group(ns: &Namespace, mut group: GroupConfig) -> pb::Group {
    group.name = ns.shown(group.name);
    for subscription in &mut group.subscriptions {
        subscription.topic = ns.shown(std::mem::take(&mut subscription.topic));
    }
    convert::group(group)
}

/// A queue's progress as the caller's namespace names its topic.
fn shown_progress(ns: &Namespace, mut progress: QueueProgress) -> pb::GroupQueueStatus {
    progress.topic = ns.shown(progress.topic);
    convert::progress(progress)
}
