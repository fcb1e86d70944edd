//! `AdminService`: topics, groups, offsets, lookups and broker info.

use std::sync::Arc;

use dduomq_proto::v1 as pb;
use dduomq_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::status::{invalid, to_status};
use super::{convert, observed};
use crate::messaging::membership::MemberKind;
use crate::messaging::{Broker, CreatedTopic, GroupMember, ResetTarget, TopicDescription};

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
            let r = req.into_inner();
            let CreatedTopic { topic, created } = self
                .broker
                .create_topic(
                    &r.name,
                    r.queues,
                    convert::message_type_from_pb(r.message_type).map_err(to_status)?,
                )
                .map_err(to_status)?;
            Ok(Response::new(pb::CreateTopicResponse {
                topic: Some(convert::topic(topic)),
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
            self.broker
                .delete_topic(&req.into_inner().name)
                .map_err(to_status)?;
            Ok(Response::new(pb::DeleteTopicResponse {}))
        })
        .await
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        observed(self.broker.metrics(), "ListTopics", async move {
            Ok(Response::new(pb::ListTopicsResponse {
                topics: self
                    .broker
                    .list_topics()
                    .into_iter()
                    .map(convert::topic)
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
            let TopicDescription { topic, queues } = self
                .broker
                .describe_topic(&req.into_inner().name)
                .map_err(to_status)?;
            Ok(Response::new(pb::DescribeTopicResponse {
                topic: Some(convert::topic(topic)),
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
            let g = req
                .into_inner()
                .group
                .ok_or_else(|| invalid("group", "missing"))?;
            let mut config = self
                .broker
                .default_group(&g.name, convert::mode_from_pb(g.mode).map_err(to_status)?);
            if g.max_delivery_attempts > 0 {
                config.max_delivery_attempts = g.max_delivery_attempts;
            }
            if !g.retry_backoff_ms.is_empty() {
                config.retry_backoff_ms = g.retry_backoff_ms;
            }
            config.dead_letter = !g.disable_dead_letter;
            let created = self
                .broker
                .upsert_group(config.clone())
                .map_err(to_status)?;
            Ok(Response::new(pb::CreateGroupResponse {
                group: Some(convert::group(config)),
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
            self.broker
                .delete_group(&req.into_inner().name)
                .map_err(to_status)?;
            Ok(Response::new(pb::DeleteGroupResponse {}))
        })
        .await
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        observed(self.broker.metrics(), "ListGroups", async move {
            Ok(Response::new(pb::ListGroupsResponse {
                groups: self
                    .broker
                    .list_groups()
                    .into_iter()
                    .map(convert::group)
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
            let d = self
                .broker
                .describe_group(&req.into_inner().name)
                .map_err(to_status)?;
            Ok(Response::new(pb::DescribeGroupResponse {
                group: Some(convert::group(d.config)),
                queues: d.queues.into_iter().map(convert::progress).collect(),
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
                        topics: member.topics.into_iter().collect(),
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
            let r = req.into_inner();
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
                .map_err(to_status)?;
            Ok(Response::new(pb::ResetOffsetResponse {
                queues: queues.into_iter().map(convert::progress).collect(),
            }))
        })
        .await
    }

    async fn lookup_message(
        &self,
        req: Request<pb::LookupMessageRequest>,
    ) -> Result<Response<pb::LookupMessageResponse>, Status> {
        observed(self.broker.metrics(), "LookupMessage", async move {
            let r = req.into_inner();
            let found = match r.by {
                Some(pb::lookup_message_request::By::MessageId(id)) => {
                    vec![self.broker.lookup_by_id(&id).map_err(to_status)?]
                }
                Some(pb::lookup_message_request::By::Key(key)) => {
                    if r.topic.is_empty() {
                        return Err(invalid("topic", "required for lookups by key"));
                    }
                    let max = match r.max_results {
                        0 => 64,
                        n => n as usize,
                    };
                    self.broker
                        .lookup_by_key(&r.topic, &key, r.begin_ms, r.end_ms, max)
                        .map_err(to_status)?
                }
                None => return Err(invalid("by", "message_id or key")),
            };
            Ok(Response::new(pb::LookupMessageResponse {
                messages: found.into_iter().map(convert::message).collect(),
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
}
