//! The Apache RocketMQ 5 front door: `apache.rocketmq.v2.MessagingService`,
//! served on the gRPC port beside `dduomq.v1` (or on a listener of its own),
//! so official RocketMQ 5 clients work against DduoMQ unmodified. Like
//! `grpc/`, it only translates: names (`names.rs`), messages (`message.rs`),
//! routes (`route.rs`), consuming (`consume.rs`, `clients.rs`,
//! `attempts.rs`), consuming by offset (`offsets.rs`) and the Telemetry
//! stream (`telemetry.rs`) go to the messaging core. Every response carries
//! the protocol's own status (`status.rs`); the gRPC status is OK unless the
//! request could not be read. What the core has no counterpart for answers
//! NOT_IMPLEMENTED (docs/rocketmq.md lists it).

mod attempts;
mod clients;
mod consume;
mod message;
mod names;
mod offsets;
mod route;
mod status;
mod telemetry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dduomq_proto::rocketmq::v2 as rmq;
use rmq::messaging_service_server::MessagingService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Action, policy};
use crate::grpc::observed;
use crate::grpc::receive_streams::ReceiveStreams;
use crate::messaging::Broker;
use crate::messaging::error::BrokerError;
use crate::messaging::staged::Resolution;
use clients::Clients;
use names::Scope;
use status::{Refusal, ok, refusal};

/// Most messages one SendMessage may carry.
const MAX_SEND_BATCH: usize = 1024;
/// Most body bytes one SendMessage may carry once GZIP bodies are inflated
/// (the largest gRPC message the broker reads).
const MAX_SEND_BYTES: usize = 64 << 20;

/// The RocketMQ face of the messaging layer.
#[derive(Debug, Clone)]
pub struct RocketMqApi {
    broker: Arc<Broker>,
    clients: Arc<Clients>,
    /// Picks the queue of each message without a message group.
    next_queue: Arc<AtomicU64>,
}

impl RocketMqApi {
    /// The door, and the task that renews and reaps its clients' consumers
    /// (it ends at the broker's shutdown). Its consumers count under `streams`' limits.
    pub fn new(broker: Arc<Broker>, streams: Arc<ReceiveStreams>) -> RocketMqApi {
        let clients = Clients::new(streams);
        tokio::spawn(clients.clone().maintain(broker.clone()));
        RocketMqApi {
            broker,
            clients,
            next_queue: Arc::default(),
        }
    }

    fn max_body(&self) -> usize {
        self.broker.store().config().max_record_size_bytes as usize
    }

    async fn send(
        &self,
        scope: &mut Scope,
        r: rmq::SendMessageRequest,
    ) -> Result<Vec<rmq::SendResultEntry>, BrokerError> {
        crate::messaging::limits::check_count("messages", r.messages.len(), MAX_SEND_BATCH)?;
        if r.messages.is_empty() {
            return Err(BrokerError::invalid("messages", "must not be empty"));
        }
        let max_body = self.max_body();
        let mut sends = Vec::with_capacity(r.messages.len());
        let mut inflated = 0;
        for m in r.messages {
            let topic = scope.topic(m.topic.as_ref(), &[Action::Publish])?;
            let group = m
                .system_properties
                .as_ref()
                .and_then(|s| s.message_group.as_deref())
                .unwrap_or_default();
            let queue_id = self.queue_for(&topic, group)?;
            let send = message::to_send(m, topic, queue_id, max_body)?;
            inflated += send.body.len();
            if inflated > MAX_SEND_BYTES {
                return Err(BrokerError::invalid(
                    "messages",
                    format!("bodies of more than {MAX_SEND_BYTES} bytes in one request"),
                ));
            }
            sends.push(send);
        }
        scope.caller.pace_send(inflated as u64).await?;
        let ids: Vec<String> = sends.iter().map(|s| s.client_message_id.clone()).collect();
        let receipts = self.broker.send(sends).await?;
        Ok(receipts
            .into_iter()
            .zip(ids)
            .map(|(r, message_id)| rmq::SendResultEntry {
                status: ok(),
                message_id,
                transaction_id: r.transaction_id,
                offset: r.offset as i64,
                recall_handle: String::new(),
            })
            .collect())
    }

    /// The queue a message goes to: one this broker writes, by its message
    /// group's hash (FIFO) or in turn. The broker chooses, not the client:
    /// clients differ (some always send queue 0), and one rule keeps a message
    /// group on one queue whichever client sends it. `None`: the core chooses
    /// (this broker writes none of the topic's queues; the send is refused).
    fn queue_for(&self, topic: &str, message_group: &str) -> Result<Option<u32>, BrokerError> {
        let own = self.broker.own_writable_queues(topic)?;
        if own.is_empty() {
            return Ok(None);
        }
        let i = if message_group.is_empty() {
            (self.next_queue.fetch_add(1, Ordering::Relaxed) % own.len() as u64) as usize
        } else {
            dduomq_proto::queue_for_sharding_key(message_group, own.len() as u32) as usize
        };
        Ok(Some(own[i]))
    }

    async fn end_transaction(
        &self,
        scope: &mut Scope,
        r: rmq::EndTransactionRequest,
    ) -> Result<(), BrokerError> {
        let topic = scope.topic(r.topic.as_ref(), &[Action::Publish])?;
        let resolution = match rmq::TransactionResolution::try_from(r.resolution) {
            Ok(rmq::TransactionResolution::Commit) => Resolution::Commit,
            Ok(rmq::TransactionResolution::Rollback) => Resolution::Rollback,
            _ => {
                return Err(BrokerError::invalid(
                    "resolution",
                    "must be COMMIT or ROLLBACK",
                ));
            }
        };
        self.broker
            .end_transaction(
                &topic,
                &r.transaction_id,
                &message::transaction_group(&topic),
                resolution,
            )
            .await
    }
}

/// The scope of a request, or the status that refuses it.
fn scope_of<T>(req: &Request<T>) -> Result<Scope, Option<rmq::Status>> {
    let refused = |e: BrokerError| refusal(&Default::default(), e);
    let caller = crate::auth::caller(req.extensions()).map_err(|e| refused(e.clone().into()))?;
    Scope::of(req.metadata(), caller.clone()).map_err(refused)
}

fn not_implemented(what: &str) -> Option<rmq::Status> {
    status::status(
        rmq::Code::NotImplemented,
        format!("{what} is not supported by DduoMQ (see docs/rocketmq.md)"),
    )
}

/// A server stream of answers all known before the first is sent.
type Answers<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;

fn streamed<T>(answers: Response<Vec<T>>) -> Response<Answers<T>> {
    answers.map(|all| tokio_stream::iter(all.into_iter().map(Ok).collect::<Vec<_>>()))
}

/// Runs a handler as one observed request.
async fn answer<T>(
    api: &RocketMqApi,
    method: &'static str,
    handler: impl Future<Output = T>,
) -> Result<Response<T>, Status> {
    observed(api.broker.metrics(), method, async move {
        Ok(Response::new(handler.await))
    })
    .await
}

#[tonic::async_trait]
impl MessagingService for RocketMqApi {
    async fn query_route(
        &self,
        req: Request<rmq::QueryRouteRequest>,
    ) -> Result<Response<rmq::QueryRouteResponse>, Status> {
        answer(self, "rocketmq.QueryRoute", async move {
            let mut scope = match scope_of(&req) {
                Ok(s) => s,
                Err(status) => {
                    return rmq::QueryRouteResponse {
                        status,
                        message_queues: Vec::new(),
                    };
                }
            };
            match self.route(
                &mut scope,
                req.get_ref().topic.as_ref(),
                policy::ROUTE_READERS,
            ) {
                Ok(message_queues) => rmq::QueryRouteResponse {
                    status: ok(),
                    message_queues,
                },
                Err(e) => rmq::QueryRouteResponse {
                    status: refusal(&scope.ns, e),
                    message_queues: Vec::new(),
                },
            }
        })
        .await
    }

    async fn heartbeat(
        &self,
        req: Request<rmq::HeartbeatRequest>,
    ) -> Result<Response<rmq::HeartbeatResponse>, Status> {
        answer(self, "rocketmq.Heartbeat", async move {
            let checked = scope_of(&req).and_then(|mut scope| match &req.get_ref().group {
                Some(g) => scope
                    .group(Some(g), &[Action::Subscribe])
                    .map(drop)
                    .map_err(|e| refusal(&scope.ns, e)),
                None => Ok(()),
            });
            rmq::HeartbeatResponse {
                status: checked.map_or_else(|status| status, |()| ok()),
            }
        })
        .await
    }

    async fn send_message(
        &self,
        req: Request<rmq::SendMessageRequest>,
    ) -> Result<Response<rmq::SendMessageResponse>, Status> {
        answer(self, "rocketmq.SendMessage", async move {
            let mut scope = match scope_of(&req) {
                Ok(s) => s,
                Err(status) => {
                    return rmq::SendMessageResponse {
                        status,
                        entries: Vec::new(),
                    };
                }
            };
            let r = req.into_inner();
            let count = r.messages.len().min(MAX_SEND_BATCH);
            match self.send(&mut scope, r).await {
                Ok(entries) => rmq::SendMessageResponse {
                    status: ok(),
                    entries,
                },
                Err(e) => {
                    let status = refusal(&scope.ns, e);
                    rmq::SendMessageResponse {
                        entries: vec![
                            rmq::SendResultEntry {
                                status: status.clone(),
                                ..Default::default()
                            };
                            count
                        ],
                        status,
                    }
                }
            }
        })
        .await
    }

    async fn query_assignment(
        &self,
        req: Request<rmq::QueryAssignmentRequest>,
    ) -> Result<Response<rmq::QueryAssignmentResponse>, Status> {
        answer(self, "rocketmq.QueryAssignment", async move {
            let mut scope = match scope_of(&req) {
                Ok(s) => s,
                Err(status) => {
                    return rmq::QueryAssignmentResponse {
                        status,
                        assignments: Vec::new(),
                    };
                }
            };
            match self.assignments(&mut scope, req.get_ref()) {
                Ok(assignments) => rmq::QueryAssignmentResponse {
                    status: ok(),
                    assignments,
                },
                Err(e) => rmq::QueryAssignmentResponse {
                    status: refusal(&scope.ns, e),
                    assignments: Vec::new(),
                },
            }
        })
        .await
    }

    type ReceiveMessageStream = Answers<rmq::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        req: Request<rmq::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let responses = answer(self, "rocketmq.ReceiveMessage", async move {
            match scope_of(&req) {
                Ok(scope) => self.receive(scope, req.into_inner()).await,
                Err(status) => vec![rmq::ReceiveMessageResponse {
                    content: status.map(rmq::receive_message_response::Content::Status),
                }],
            }
        })
        .await?;
        Ok(streamed(responses))
    }

    async fn ack_message(
        &self,
        req: Request<rmq::AckMessageRequest>,
    ) -> Result<Response<rmq::AckMessageResponse>, Status> {
        answer(self, "rocketmq.AckMessage", async move {
            match scope_of(&req) {
                Ok(scope) => self.ack(scope, req.into_inner()),
                Err(status) => rmq::AckMessageResponse {
                    status,
                    entries: Vec::new(),
                },
            }
        })
        .await
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<rmq::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<rmq::ForwardMessageToDeadLetterQueueResponse>, Status> {
        answer(
            self,
            "rocketmq.ForwardMessageToDeadLetterQueue",
            async move {
                let status = match scope_of(&req) {
                    Ok(scope) => self.forward_to_dead_letter(scope, req.into_inner()).await,
                    Err(status) => status,
                };
                rmq::ForwardMessageToDeadLetterQueueResponse { status }
            },
        )
        .await
    }

    type PullMessageStream = Answers<rmq::PullMessageResponse>;

    async fn pull_message(
        &self,
        req: Request<rmq::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        let responses = answer(self, "rocketmq.PullMessage", async move {
            match scope_of(&req) {
                Ok(scope) => self.pull(scope, req.into_inner()).await,
                Err(status) => vec![rmq::PullMessageResponse {
                    content: status.map(rmq::pull_message_response::Content::Status),
                }],
            }
        })
        .await?;
        Ok(streamed(responses))
    }

    async fn update_offset(
        &self,
        req: Request<rmq::UpdateOffsetRequest>,
    ) -> Result<Response<rmq::UpdateOffsetResponse>, Status> {
        answer(self, "rocketmq.UpdateOffset", async move {
            let status = match scope_of(&req) {
                Ok(scope) => self.update_offset(scope, req.into_inner()),
                Err(status) => status,
            };
            rmq::UpdateOffsetResponse { status }
        })
        .await
    }

    async fn get_offset(
        &self,
        req: Request<rmq::GetOffsetRequest>,
    ) -> Result<Response<rmq::GetOffsetResponse>, Status> {
        answer(self, "rocketmq.GetOffset", async move {
            match scope_of(&req) {
                Ok(scope) => self.get_offset(scope, req.into_inner()),
                Err(status) => rmq::GetOffsetResponse { status, offset: 0 },
            }
        })
        .await
    }

    async fn query_offset(
        &self,
        req: Request<rmq::QueryOffsetRequest>,
    ) -> Result<Response<rmq::QueryOffsetResponse>, Status> {
        answer(self, "rocketmq.QueryOffset", async move {
            match scope_of(&req) {
                Ok(scope) => self.query_offset(scope, req.into_inner()),
                Err(status) => rmq::QueryOffsetResponse { status, offset: 0 },
            }
        })
        .await
    }

    async fn end_transaction(
        &self,
        req: Request<rmq::EndTransactionRequest>,
    ) -> Result<Response<rmq::EndTransactionResponse>, Status> {
        answer(self, "rocketmq.EndTransaction", async move {
            let status = match scope_of(&req) {
                Ok(mut scope) => match self.end_transaction(&mut scope, req.into_inner()).await {
                    Ok(()) => ok(),
                    Err(e) => refusal(&scope.ns, e),
                },
                Err(status) => status,
            };
            rmq::EndTransactionResponse { status }
        })
        .await
    }

    type TelemetryStream = ReceiverStream<Result<rmq::TelemetryCommand, Status>>;

    async fn telemetry(
        &self,
        req: Request<Streaming<rmq::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        observed(self.broker.metrics(), "rocketmq.Telemetry", async move {
            let (tx, rx) = mpsc::channel(64);
            match scope_of(&req).and_then(|s| match s.client_id() {
                Ok(_) => Ok(s),
                Err(e) => Err(Refusal::Broker(e).status(&s.ns)),
            }) {
                Ok(scope) => {
                    tokio::spawn(self.clone().run_telemetry(scope, req.into_inner(), tx));
                }
                Err(status) => {
                    let _ = tx.try_send(Ok(rmq::TelemetryCommand {
                        status,
                        command: None,
                    }));
                }
            }
            Ok(Response::new(ReceiverStream::new(rx)))
        })
        .await
    }

    async fn notify_client_termination(
        &self,
        req: Request<rmq::NotifyClientTerminationRequest>,
    ) -> Result<Response<rmq::NotifyClientTerminationResponse>, Status> {
        answer(self, "rocketmq.NotifyClientTermination", async move {
            let status = match scope_of(&req) {
                Ok(scope) => match scope.client() {
                    Ok(client) => {
                        self.clients.close_client(&self.broker, &client).await;
                        ok()
                    }
                    Err(e) => refusal(&scope.ns, e),
                },
                Err(status) => status,
            };
            rmq::NotifyClientTerminationResponse { status }
        })
        .await
    }

    async fn change_invisible_duration(
        &self,
        req: Request<rmq::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<rmq::ChangeInvisibleDurationResponse>, Status> {
        answer(self, "rocketmq.ChangeInvisibleDuration", async move {
            match scope_of(&req) {
                Ok(scope) => self.change_invisible(scope, req.into_inner()),
                Err(status) => rmq::ChangeInvisibleDurationResponse {
                    status,
                    receipt_handle: String::new(),
                },
            }
        })
        .await
    }

    async fn recall_message(
        &self,
        _req: Request<rmq::RecallMessageRequest>,
    ) -> Result<Response<rmq::RecallMessageResponse>, Status> {
        answer(self, "rocketmq.RecallMessage", async {
            rmq::RecallMessageResponse {
                status: not_implemented("RecallMessage"),
                message_id: String::new(),
            }
        })
        .await
    }

    async fn sync_lite_subscription(
        &self,
        _req: Request<rmq::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<rmq::SyncLiteSubscriptionResponse>, Status> {
        answer(self, "rocketmq.SyncLiteSubscription", async {
            rmq::SyncLiteSubscriptionResponse {
                status: not_implemented("SyncLiteSubscription"),
            }
        })
        .await
    }
}
