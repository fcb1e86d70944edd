//! `MessagingService`: translates requests to the messaging layer. Its server
//! streams are served by tasks of their own (`stream_tasks.rs`).

use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::v1 as pb;
use dduomq_proto::v1::messaging_service_server::MessagingService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::access;
use super::namespace::{self, Names};
use super::receive_streams::ReceiveStreams;
use super::status::invalid;
use super::stream_tasks::{LEASE_BATCH, PushStream, check_loop, delivered_bytes, push_loop};
use super::{convert, observed};
use crate::auth::{Action, Resource, policy};
use crate::messaging::error::BrokerError;
use crate::messaging::limits;
use crate::messaging::membership::MemberKind;
use crate::messaging::staged::Resolution;
use crate::messaging::{
    AssignedQueue, Broker, Claim, LeaseEnd, NackOutcome, PullSpec, ReceiveLimits, ReceiveStream,
    RouteAnswer, Schedule, SendMessage,
};

/// Leased messages one stream may hold when the consumer sets no limit.
const DEFAULT_MAX_IN_FLIGHT: u64 = 1024;
const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Most messages one Pull returns, whatever the client asks for.
const MAX_PULL_MESSAGES: usize = 1024;

/// The gRPC face of the messaging layer.
#[derive(Debug, Clone)]
pub struct MessagingApi {
    pub broker: Arc<Broker>,
    pub streams: Arc<ReceiveStreams>,
}

/// A (producer) group as a resource.
fn group(name: &str) -> Resource<'_> {
    Resource::Group(name)
}

#[tonic::async_trait]
impl MessagingService for MessagingApi {
    async fn query_route(
        &self,
        req: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        observed(self.broker.metrics(), "QueryRoute", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let topic = req.into_inner().topic;
            let stored = ns.topic(&topic).map_err(|e| ns.refusal(e))?;
            access::require_any(
                &caller,
                &ns,
                policy::ROUTE_READERS,
                Resource::Topic(&stored),
            )?;
            let RouteAnswer { route, epoch } =
                self.broker.route(&stored).map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::QueryRouteResponse {
                message_type: convert::message_type_to_pb(route.message_type) as i32,
                queues: route.queues.into_iter().map(convert::queue_route).collect(),
                topic,
                epoch,
            }))
        })
        .await
    }

    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        observed(self.broker.metrics(), "Send", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let messages = req
                .into_inner()
                .messages
                .into_iter()
                .map(|m| {
                    Ok(SendMessage {
                        topic: ns.topic(&m.topic)?,
                        body: m.body,
                        tag: m.tag,
                        keys: m.keys,
                        properties: m.properties.into_iter().collect(),
                        sharding_key: m.sharding_key,
                        queue_id: m.queue_id,
                        born_timestamp: m.born_timestamp_ms,
                        codec: convert::codec_from_pb(m.codec)?,
                        producer_id: m.producer_id,
                        sequence: m.sequence,
                        schedule: Schedule::from_wire(m.deliver_at_ms, m.delay_ms)?,
                        transaction: convert::transaction_from_pb(
                            m.transactional,
                            ns.group("producer_group", &m.producer_group)?,
                        )?,
                        lane: m.lane,
                        client_message_id: String::new(),
                    })
                })
                .collect::<Result<Vec<_>, BrokerError>>()
                .map_err(|e| ns.refusal(e))?;
            for m in &messages {
                access::require(&caller, &ns, Action::Publish, Resource::Topic(&m.topic))?;
                // A transactional message is checked back with its producer
                // group's checkers: the sender must be one of them.
                if let Some(group) = &m.transaction {
                    access::require(&caller, &ns, Action::Publish, Resource::Group(group))?;
                }
            }
            let bytes = messages.iter().map(|m| m.body.len() as u64).sum();
            caller
                .pace_send(bytes)
                .await
                .map_err(|e| ns.refusal(e.into()))?;
            let receipts = self
                .broker
                .send(messages)
                .await
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::SendResponse {
                receipts: receipts
                    .into_iter()
                    .map(|r| pb::SendReceipt {
                        message_id: r.message_id,
                        topic: ns.shown(r.topic),
                        queue_id: r.queue_id,
                        offset: r.offset,
                        store_timestamp_ms: r.store_timestamp,
                        deliver_at_ms: r.deliver_at,
                        transaction_id: r.transaction_id,
                    })
                    .collect(),
            }))
        })
        .await
    }

    type ReceiveStream = ReceiverStream<Result<pb::ReceiveResponse, Status>>;

    async fn receive(
        &self,
        req: Request<pb::ReceiveRequest>,
    ) -> Result<Response<Self::ReceiveStream>, Status> {
        observed(self.broker.metrics(), "Receive", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            access::consume(&caller, &ns, &r.group, &r.topic)?;
            // Everything is checked before the stream joins its group.
            let filter =
                convert::filter(r.filter_type, &r.filter_expression).map_err(|e| ns.refusal(e))?;
            let mode = convert::mode_from_pb(r.mode).map_err(|e| ns.refusal(e))?;
            let limits = ReceiveLimits {
                max_messages: match r.max_in_flight_messages {
                    0 => DEFAULT_MAX_IN_FLIGHT,
                    n => n as u64,
                },
                max_bytes: caller.delivery_window(match r.max_in_flight_bytes {
                    0 => DEFAULT_MAX_IN_FLIGHT_BYTES,
                    n => n,
                }),
                invisible: limits::receive_invisible(r.invisible_duration_ms, self.broker.config())
                    .map_err(|e| ns.refusal(e))?,
            };
            let slot = self
                .streams
                .open(&r.group, &r.client_id)
                .map_err(|e| ns.refusal(e))?;
            let ReceiveStream {
                subscription: sub,
                consumer,
            } = self
                .broker
                .open_receive(&r.group, &r.topic, &r.client_id, mode, &filter, r.lane)
                .map_err(|e| ns.refusal(e))?;
            let (tx, rx) = mpsc::channel(LEASE_BATCH);
            if let Some(m) = self.broker.metrics() {
                m.grpc_streams.inc();
            }
            tokio::spawn(push_loop(
                self.broker.clone(),
                PushStream {
                    sub,
                    consumer,
                    limits,
                    slot,
                    caller,
                },
                tx,
                ns,
            ));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        observed(self.broker.metrics(), "Ack", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            access::consume(&caller, &ns, &r.group, &r.topic)?;
            let results = self.broker.ack(&r.group, &r.topic, &r.receipt_handles);
            Ok(Response::new(pb::AckResponse {
                results: r
                    .receipt_handles
                    .into_iter()
                    .zip(results)
                    .map(|(h, res)| {
                        let (error_reason, error_message) = match res {
                            Ok(()) => (String::new(), String::new()),
                            Err(e) => (e.code().to_string(), ns.shown_message(e.to_string())),
                        };
                        pb::AckResult {
                            receipt_handle: h,
                            error_reason,
                            error_message,
                        }
                    })
                    .collect(),
            }))
        })
        .await
    }

    async fn change_invisible_duration(
        &self,
        req: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        observed(
            self.broker.metrics(),
            "ChangeInvisibleDuration",
            async move {
                let ns = namespace::of_request(&req)?;
                let caller = access::caller(&req)?;
                let mut r = req.into_inner();
                r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
                r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
                access::consume(&caller, &ns, &r.group, &r.topic)?;
                let until = self
                    .broker
                    .change_invisible(
                        &r.group,
                        &r.topic,
                        &r.receipt_handle,
                        r.invisible_duration_ms.into(),
                        LeaseEnd::Backoff,
                    )
                    .map_err(|e| ns.refusal(e))?;
                Ok(Response::new(pb::ChangeInvisibleDurationResponse {
                    invisible_until_ms: until,
                }))
            },
        )
        .await
    }

    async fn nack(
        &self,
        req: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        observed(self.broker.metrics(), "Nack", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            access::consume(&caller, &ns, &r.group, &r.topic)?;
            let outcome = self
                .broker
                .nack(&r.group, &r.topic, &r.receipt_handle)
                .await
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(match outcome {
                NackOutcome::Redeliver { at } => pb::NackResponse {
                    redeliver_at_ms: at,
                    dead_lettered: false,
                },
                NackOutcome::DeadLettered => pb::NackResponse {
                    redeliver_at_ms: 0,
                    dead_lettered: true,
                },
            }))
        })
        .await
    }

    async fn pull(
        &self,
        req: Request<pb::PullRequest>,
    ) -> Result<Response<pb::PullResponse>, Status> {
        observed(self.broker.metrics(), "Pull", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            access::consume(&caller, &ns, &r.group, &r.topic)?;
            let filter =
                convert::filter(r.filter_type, &r.filter_expression).map_err(|e| ns.refusal(e))?;
            // Nothing while the user's consume quota is in debt.
            caller.pace_delivery().await;
            let pulled = self
                .broker
                .pull(PullSpec {
                    filter: &filter,
                    group: &r.group,
                    topic: &r.topic,
                    queue_id: r.queue_id,
                    offset: r.offset,
                    max_messages: match r.max_messages {
                        0 => 32,
                        n => (n as usize).min(MAX_PULL_MESSAGES),
                    },
                    max_bytes: match r.max_bytes {
                        0 => 4 << 20,
                        n => n as usize,
                    },
                    wait: Duration::from_millis(r.wait_ms as u64),
                    // Our pull members' pulls set their group's filter.
                    claim: Claim::Take,
                })
                .await
                .map_err(|e| ns.refusal(e))?;
            caller.charge_delivery(delivered_bytes(&pulled.deliveries));
            Ok(Response::new(pb::PullResponse {
                messages: pulled
                    .deliveries
                    .into_iter()
                    .map(|d| ns.message(convert::message(d)))
                    .collect(),
                next_offset: pulled.next_offset,
                min_offset: pulled.min_offset,
                max_offset: pulled.max_offset,
            }))
        })
        .await
    }

    async fn commit_offset(
        &self,
        req: Request<pb::CommitOffsetRequest>,
    ) -> Result<Response<pb::CommitOffsetResponse>, Status> {
        observed(self.broker.metrics(), "CommitOffset", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            access::consume(&caller, &ns, &r.group, &r.topic)?;
            self.broker
                .commit_offset(
                    &r.group,
                    &r.topic,
                    r.queue_id,
                    r.offset,
                    &r.client_id,
                    r.generation,
                )
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::CommitOffsetResponse {}))
        })
        .await
    }

    async fn query_offset(
        &self,
        req: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, Status> {
        observed(self.broker.metrics(), "QueryOffset", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            access::consume(&caller, &ns, &r.group, &r.topic)?;
            let offset = self
                .broker
                .query_offset(&r.group, &r.topic, r.queue_id)
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::QueryOffsetResponse {
                committed_offset: offset.committed,
                min_offset: offset.min_offset,
                max_offset: offset.max_offset,
            }))
        })
        .await
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        observed(self.broker.metrics(), "Heartbeat", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let r = req.into_inner();
            let group = ns.group("group", &r.group).map_err(|e| ns.refusal(e))?;
            let topics = r
                .topics
                .iter()
                .map(|t| ns.topic(t))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ns.refusal(e))?;
            let kind =
                match pb::ConsumerKind::try_from(r.kind).unwrap_or(pb::ConsumerKind::Unspecified) {
                    pb::ConsumerKind::Push => MemberKind::Push,
                    pb::ConsumerKind::Pull => MemberKind::Pull,
                    pb::ConsumerKind::Producer => MemberKind::Producer,
                    pb::ConsumerKind::Unspecified => {
                        return Err(invalid("kind", "must be PUSH, PULL or PRODUCER"));
                    }
                };
            // Producers join their producer group; consumers their group.
            let action = match kind {
                MemberKind::Producer => Action::Publish,
                MemberKind::Push | MemberKind::Pull => Action::Subscribe,
            };
            if !group.is_empty() {
                access::require(&caller, &ns, action, Resource::Group(&group))?;
            }
            for topic in &topics {
                access::require(&caller, &ns, action, Resource::Topic(topic))?;
            }
            let a = self
                .broker
                .heartbeat(&group, &r.client_id, kind, topics)
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::HeartbeatResponse {
                generation: a.generation,
                assignments: a
                    .queues
                    .into_iter()
                    .map(|AssignedQueue { topic, queue_id }| pb::QueueAssignment {
                        topic: ns.shown(topic),
                        queue_id,
                    })
                    .collect(),
                session_timeout_ms: self.broker.config().session_timeout.as_millis() as u32,
            }))
        })
        .await
    }

    async fn end_transaction(
        &self,
        req: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        observed(self.broker.metrics(), "EndTransaction", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.topic = ns.topic(&r.topic).map_err(|e| ns.refusal(e))?;
            r.producer_group = ns
                .group("producer_group", &r.producer_group)
                .map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Publish, Resource::Topic(&r.topic))?;
            access::require(&caller, &ns, Action::Publish, group(&r.producer_group))?;
            let resolution = match pb::TransactionResolution::try_from(r.resolution)
                .unwrap_or(pb::TransactionResolution::Unspecified)
            {
                pb::TransactionResolution::Commit => Resolution::Commit,
                pb::TransactionResolution::Rollback => Resolution::Rollback,
                pb::TransactionResolution::Unspecified => {
                    return Err(invalid("resolution", "must be COMMIT or ROLLBACK"));
                }
            };
            self.broker
                .end_transaction(&r.topic, &r.transaction_id, &r.producer_group, resolution)
                .await
                .map_err(|e| ns.refusal(e))?;
            Ok(Response::new(pb::EndTransactionResponse {}))
        })
        .await
    }

    type TransactionChecksStream = ReceiverStream<Result<pb::TransactionCheck, Status>>;

    async fn transaction_checks(
        &self,
        req: Request<pb::TransactionChecksRequest>,
    ) -> Result<Response<Self::TransactionChecksStream>, Status> {
        observed(self.broker.metrics(), "TransactionChecks", async move {
            let ns = namespace::of_request(&req)?;
            let caller = access::caller(&req)?;
            let mut r = req.into_inner();
            r.producer_group = ns
                .group("producer_group", &r.producer_group)
                .map_err(|e| ns.refusal(e))?;
            access::require(&caller, &ns, Action::Publish, group(&r.producer_group))?;
            let (id, checks) = self
                .broker
                .add_checker(&r.producer_group, &r.client_id, caller.sees_topic())
                .map_err(|e| ns.refusal(e))?;
            let (tx, rx) = mpsc::channel(LEASE_BATCH);
            tracing::info!(
                group = r.producer_group,
                client_id = r.client_id,
                "transaction checker connected"
            );
            tokio::spawn(check_loop(
                self.broker.clone(),
                r.producer_group,
                id,
                checks,
                tx,
                ns,
            ));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }
}
