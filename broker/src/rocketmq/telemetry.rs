//! The Telemetry stream. A client opens it at start and sends its Settings;
//! the broker answers with the settings the client is to use (the body size
//! limit, the group's retry policy and order, receive batch and long
//! polling), and keeps the stream open: it carries transaction check-backs
//! (`RecoverOrphanedTransactionCommand`) to producers of the topics they
//! publish, and its end tells the broker the client is gone.

use std::sync::Arc;

use dduomq_proto::rocketmq::v2 as rmq;
use rmq::telemetry_command::Command;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::RocketMqApi;
use super::clients::ClientRef;
use super::message::{self, duration_ms, transaction_group};
use super::names::Scope;
use super::status::{ok, refusal};
use crate::auth::Action;
use crate::messaging::error::BrokerError;
use crate::messaging::groups::ConsumeMode;
use crate::messaging::staged::TransactionCheck;
use crate::store::MessageType;

/// Messages per receive a push consumer is told to ask for.
const RECEIVE_BATCH: i32 = 32;
/// Long polling a push consumer is told to use.
const LONG_POLLING_MS: u64 = 20_000;
/// Attempts of a send, for a producer that names none.
const PRODUCER_ATTEMPTS: i32 = 3;
/// Topics one producer's settings may name, and transaction topics one
/// Telemetry stream checks.
const MAX_PUBLISHED_TOPICS: usize = 64;

pub type Outbound = mpsc::Sender<Result<rmq::TelemetryCommand, Status>>;

impl RocketMqApi {
    /// Serves one Telemetry stream until the client ends it or the broker
    /// shuts down; then drops its transaction checkers.
    pub(super) async fn run_telemetry(
        self,
        scope: Scope,
        mut inbound: Streaming<rmq::TelemetryCommand>,
        tx: Outbound,
    ) {
        let client = ClientRef {
            owner: scope.caller.name().to_string(),
            id: scope.client_id.clone(),
        };
        self.clients.telemetry_opened(&client);
        let mut checkers: Vec<(String, u64)> = Vec::new();
        let mut stop = self.broker.shutdown_signal();
        loop {
            let command = tokio::select! {
                c = inbound.message() => c,
                _ = tx.closed() => break,
                _ = stop.wait_for(|s| *s) => break,
            };
            let Ok(Some(command)) = command else { break };
            let Some(Command::Settings(settings)) = command.command else {
                continue; // thread stacks and verify results: nothing to do
            };
            let reply = match self.settings(scope.clone(), settings, &mut checkers, &tx) {
                Ok(settings) => rmq::TelemetryCommand {
                    status: ok(),
                    command: Some(Command::Settings(settings)),
                },
                Err(e) => rmq::TelemetryCommand {
                    status: refusal(&scope.ns, e),
                    command: None,
                },
            };
            tokio::select! {
                sent = tx.send(Ok(reply)) => if sent.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (group, id) in checkers {
            self.broker.remove_checker(&group, id);
        }
        // The client's consumers stay: it may reconnect (see `clients.rs`).
        self.clients.telemetry_closed(&client);
    }

    /// The settings a client is to use; a producer's checkers are registered.
    fn settings(
        &self,
        mut scope: Scope,
        asked: rmq::Settings,
        checkers: &mut Vec<(String, u64)>,
        tx: &Outbound,
    ) -> Result<rmq::Settings, BrokerError> {
        let client_type = rmq::ClientType::try_from(asked.client_type.unwrap_or_default())
            .unwrap_or(rmq::ClientType::Unspecified);
        let mut reply = rmq::Settings {
            client_type: asked.client_type,
            access_point: asked.access_point,
            backoff_policy: asked.backoff_policy,
            request_timeout: asked.request_timeout,
            pub_sub: None,
            user_agent: asked.user_agent,
            metric: Some(rmq::Metric {
                on: false,
                endpoints: None,
            }),
        };
        match (client_type, asked.pub_sub) {
            (rmq::ClientType::Producer, Some(rmq::settings::PubSub::Publishing(p))) => {
                crate::messaging::limits::check_count(
                    "publishing.topics",
                    p.topics.len(),
                    MAX_PUBLISHED_TOPICS,
                )?;
                // Every topic checked before any checker is registered.
                let stored = p
                    .topics
                    .iter()
                    .map(|topic| scope.topic(Some(topic), &[Action::Publish]))
                    .collect::<Result<Vec<_>, _>>()?;
                for stored in stored {
                    if self.broker.topic_type(&stored).ok() == Some(MessageType::Transaction) {
                        self.check_transactions(&scope, &stored, checkers, tx);
                    }
                }
                // Every client reads a retry policy from the reply (the
                // Node.js one fails without one): the producer's own, or
                // exponential from 10 ms to 1 s.
                reply.backoff_policy = reply.backoff_policy.or(Some(rmq::RetryPolicy {
                    max_attempts: PRODUCER_ATTEMPTS,
                    strategy: Some(rmq::retry_policy::Strategy::ExponentialBackoff(
                        rmq::ExponentialBackoff {
                            initial: Some(duration_ms(10)),
                            max: Some(duration_ms(1000)),
                            multiplier: 2.0,
                        },
                    )),
                }));
                reply.pub_sub = Some(rmq::settings::PubSub::Publishing(rmq::Publishing {
                    topics: p.topics,
                    max_body_size: self.max_body() as i32,
                    validate_message_type: true,
                }));
            }
            (
                rmq::ClientType::PushConsumer | rmq::ClientType::SimpleConsumer,
                Some(rmq::settings::PubSub::Subscription(s)),
            ) => {
                let group = scope.group(s.group.as_ref(), &[Action::Subscribe])?;
                let config = self
                    .broker
                    .group_settings(&group)
                    .unwrap_or_else(|| self.broker.default_group(&group, ConsumeMode::Clustering));
                let steps = match config.retry_backoff_ms.as_slice() {
                    [] => vec![duration_ms(1000)],
                    steps => steps.iter().map(|ms| duration_ms(*ms)).collect(),
                };
                reply.backoff_policy = Some(rmq::RetryPolicy {
                    max_attempts: config.max_delivery_attempts as i32,
                    strategy: Some(rmq::retry_policy::Strategy::CustomizedBackoff(
                        rmq::CustomizedBackoff { next: steps },
                    )),
                });
                reply.pub_sub = Some(rmq::settings::PubSub::Subscription(rmq::Subscription {
                    group: s.group,
                    subscriptions: s.subscriptions,
                    fifo: Some(config.ordered),
                    receive_batch_size: Some(RECEIVE_BATCH),
                    long_polling_timeout: Some(duration_ms(LONG_POLLING_MS)),
                    lite_subscription_quota: None,
                    max_lite_topic_size: None,
                }));
            }
            _ => {
                return Err(BrokerError::invalid(
                    "settings",
                    "client_type must be PRODUCER with publishing, or PUSH_CONSUMER or SIMPLE_CONSUMER with a subscription",
                ));
            }
        }
        Ok(reply)
    }

    /// Registers this stream's client as a checker of `topic`'s transactions
    /// (once per stream) and forwards the checks on the stream.
    fn check_transactions(
        &self,
        scope: &Scope,
        topic: &str,
        checkers: &mut Vec<(String, u64)>,
        tx: &Outbound,
    ) {
        let group = transaction_group(topic);
        if checkers.len() >= MAX_PUBLISHED_TOPICS || checkers.iter().any(|(g, _)| *g == group) {
            return;
        }
        let Ok((id, checks)) =
            self.broker
                .add_checker(&group, &scope.client_id, scope.caller.sees_topic())
        else {
            return;
        };
        checkers.push((group, id));
        tokio::spawn(forward_checks(
            self.broker.clone(),
            scope.clone(),
            checks,
            tx.clone(),
            self.max_body(),
        ));
    }
}

/// Sends each check as a RecoverOrphanedTransactionCommand until the checker
/// is removed or the stream ends.
async fn forward_checks(
    broker: Arc<crate::messaging::Broker>,
    scope: Scope,
    mut checks: mpsc::Receiver<TransactionCheck>,
    tx: Outbound,
    max_body: usize,
) {
    let host = broker.config().advertised_address();
    let mut stop = broker.shutdown_signal();
    while let Some(check) = checks.recv().await {
        let command = match message::to_rmq(
            &scope,
            check.message,
            MessageType::Transaction,
            &host,
            max_body,
        ) {
            Ok(m) => rmq::TelemetryCommand {
                status: ok(),
                command: Some(Command::RecoverOrphanedTransactionCommand(
                    rmq::RecoverOrphanedTransactionCommand {
                        message: Some(m),
                        transaction_id: check.transaction_id,
                    },
                )),
            },
            Err(e) => {
                tracing::warn!(error = %e, "transaction check not sent");
                continue;
            }
        };
        tokio::select! {
            sent = tx.send(Ok(command)) => if sent.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
