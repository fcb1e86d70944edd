//! `MessagingService`: translates requests to the messaging layer. Each Receive
//! stream gets its own task, which ends when the client disconnects or the broker
//! shuts down; its unacked leases are then released for redelivery.

use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::v1 as pb;
use dduomq_proto::v1::messaging_service_server::MessagingService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::access;
use super::namespace::{self, Names};
use super::receive_streams::{ReceiveStreams, StreamSlot};
use super::status::invalid;
use super::{convert, observed};
use crate::auth::{Action, Caller, Resource, policy};
use crate::messaging::error::BrokerError;
use crate::messaging::limits;
use crate::messaging::membership::MemberKind;
use crate::messaging::push::subscription::Subscription;
use crate::messaging::staged::{Resolution, TransactionCheck};
use crate::messaging::{
    AssignedQueue, Broker, Claim, Delivery, LeaseEnd, LeaseRound, NackOutcome, PullSpec,
    ReceiveLimits, ReceiveStream, RouteAnswer, Schedule, SendMessage,
};
use dduomq_proto::Namespace;

/// Leased messages one stream may hold when the consumer sets no limit.
const DEFAULT_MAX_IN_FLIGHT: u64 = 1024;
const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Messages leased per round of a stream's loop.
const LEASE_BATCH: usize = 64;
/// Most messages one Pull returns, whatever the client asks for.
const MAX_PULL_MESSAGES: usize = 1024;
/// Longest a stream sleeps before it re-checks leases and retries.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// The gRPC face of the messaging layer.
#[derive(Debug, Clone)]
pub struct MessagingApi {
    pub broker: Arc<Broker>,
    pub streams: Arc<ReceiveStreams>,
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
            caller
                .pace_delivery(delivered_bytes(&pulled.deliveries))
                .await;
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
            access::require(
                &caller,
                &ns,
                Action::Publish,
                Resource::Group(&r.producer_group),
            )?;
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
            access::require(
                &caller,
                &ns,
                Action::Publish,
                Resource::Group(&r.producer_group),
            )?;
            let (id, checks) = self
                .broker
                .add_checker(&r.producer_group, &r.client_id)
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
                caller,
            ));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }
}

/// Serves one Receive stream: leases messages within the consumer's limits and
/// sends them; sleeps until new messages, acks, due retries or expiring leases.
/// `slot` holds the stream's place under the per-group and per-client limits.
/// What a Receive stream's loop serves.
struct PushStream {
    sub: Arc<Subscription>,
    consumer: u64,
    limits: ReceiveLimits,
    /// Its place under the stream limits, given back when the loop ends.
    slot: StreamSlot,
    /// Whose stream it is (consume quota).
    caller: Caller,
}

/// Body bytes of deliveries (what consume quotas count).
fn delivered_bytes(deliveries: &[Delivery]) -> u64 {
    deliveries.iter().map(|d| d.record.body.len() as u64).sum()
}

async fn push_loop(
    broker: Arc<Broker>,
    stream: PushStream,
    tx: mpsc::Sender<Result<pb::ReceiveResponse, Status>>,
    ns: Namespace,
) {
    let PushStream {
        sub,
        consumer,
        limits,
        slot,
        caller,
    } = stream;
    let mut arrivals = broker.store().subscribe();
    let mut stop = broker.shutdown_signal();
    // A replica that starts following its master ends its consumers' streams.
    let mut following = broker
        .replication()
        .map(|r| r.watch_streaming_from_master());
    loop {
        // Yield now and then even when there is always work, so a busy stream
        // never keeps the consumers it woke from running on this worker.
        tokio::task::coop::consume_budget().await;
        let notified = sub.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        arrivals.borrow_and_update();
        let LeaseRound {
            deliveries: batch,
            wake_at: wake,
        } = match broker.lease(&sub, consumer, limits, LEASE_BATCH).await {
            Ok(round) => round,
            Err(e) => {
                let _ = tx.send(Err(ns.refusal(e))).await;
                break;
            }
        };
        if !batch.is_empty() {
            let wait = caller.delivery_wait(delivered_bytes(&batch));
            // One response per lease round: fewer frames and writes per message.
            let response = pb::ReceiveResponse {
                messages: batch
                    .into_iter()
                    .map(|d| ns.message(convert::message(d)))
                    .collect(),
            };
            if tx.send(Ok(response)).await.is_err() {
                break; // the client went away
            }
            // Over the consume quota: nothing more until it is paid off.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = tx.closed() => break,
                _ = stop.wait_for(|s| *s) => break,
            }
            continue;
        }
        let idle = LeaseRound::idle(wake, MAX_IDLE);
        tokio::select! {
            _ = &mut notified => {}
            _ = arrivals.changed() => {}
            _ = tokio::time::sleep(idle) => {}
            _ = tx.closed() => break,
            _ = stop.wait_for(|s| *s) => break,
            // The next lease round refuses it.
            _ = async { following.as_mut()?.wait_for(|f| *f).await.ok() }, if following.is_some() => {}
        }
    }
    broker.close_receive(&sub, consumer).await;
    drop(slot);
    if let Some(m) = broker.metrics() {
        m.grpc_streams.dec();
    }
}

/// Serves one TransactionChecks stream: forwards the broker's checks until the
/// checker disconnects or the broker shuts down, then unregisters it.
async fn check_loop(
    broker: Arc<Broker>,
    group: String,
    id: u64,
    mut checks: mpsc::Receiver<TransactionCheck>,
    tx: mpsc::Sender<Result<pb::TransactionCheck, Status>>,
    ns: Namespace,
    caller: Caller,
) {
    let mut stop = broker.shutdown_signal();
    loop {
        let check = tokio::select! {
            check = checks.recv() => check,
            _ = tx.closed() => None,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(c) = check else { break };
        // A group's checkers see only the topics they may publish to (a
        // group name can be shared by producers of several topics).
        if !caller.may(Action::Publish, Resource::Topic(&c.message.record.topic)) {
            tracing::warn!(target: "dduomq::audit", group, user = caller.name(), "a transaction check of a topic the checker may not publish to was not sent to it");
            continue;
        }
        let msg = pb::TransactionCheck {
            transaction_id: c.transaction_id,
            message: Some(ns.message(convert::message(c.message))),
            check_attempt: c.attempt,
        };
        if tx.send(Ok(msg)).await.is_err() {
            break;
        }
    }
    broker.remove_checker(&group, id);
    tracing::info!(group, "transaction checker disconnected");
}
