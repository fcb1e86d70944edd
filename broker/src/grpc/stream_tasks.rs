//! The tasks behind `MessagingService`'s server streams: one per Receive
//! stream and one per TransactionChecks stream. Each ends when its client
//! disconnects or the broker shuts down; a Receive stream's unacked leases
//! are then released for redelivery.

use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::Namespace;
use dduomq_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::convert;
use super::namespace::Names;
use super::receive_streams::StreamSlot;
use crate::auth::Caller;
use crate::auth::quota::Direction;
use crate::messaging::push::subscription::Subscription;
use crate::messaging::staged::TransactionCheck;
use crate::messaging::{Broker, Delivery, LeaseRound, ReceiveLimits};

/// Messages leased per round of a stream's loop.
pub(super) const LEASE_BATCH: usize = 64;
/// Longest a stream sleeps before it re-checks leases and retries.
const MAX_IDLE: Duration = Duration::from_secs(1);

/// What a Receive stream's loop serves.
pub(super) struct PushStream {
    pub sub: Arc<Subscription>,
    pub consumer: u64,
    pub limits: ReceiveLimits,
    /// Its place under the per-group and per-client stream limits, given
    /// back when the loop ends.
    pub slot: StreamSlot,
    /// Whose stream it is (consume quota).
    pub caller: Caller,
}

/// Body bytes of deliveries (what consume quotas count).
pub(super) fn delivered_bytes(deliveries: &[Delivery]) -> u64 {
    deliveries.iter().map(|d| d.record.body.len() as u64).sum()
}

/// Serves one Receive stream: leases messages within the consumer's limits and
/// sends them; sleeps until new messages, acks, due retries or expiring
/// leases, and while the user's consume quota is in debt.
pub(super) async fn push_loop(
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
            caller.charge_delivery(delivered_bytes(&batch));
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
            let debt = caller.delivery_debt();
            if !debt.is_zero() {
                tokio::select! {
                    () = caller.waited(Direction::Consume, debt) => {}
                    _ = tx.closed() => break,
                    _ = stop.wait_for(|s| *s) => break,
                    // The next lease round refuses it.
                    _ = async { following.as_mut()?.wait_for(|f| *f).await.ok() }, if following.is_some() => {}
                }
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
pub(super) async fn check_loop(
    broker: Arc<Broker>,
    group: String,
    id: u64,
    mut checks: mpsc::Receiver<TransactionCheck>,
    tx: mpsc::Sender<Result<pb::TransactionCheck, Status>>,
    ns: Namespace,
) {
    let mut stop = broker.shutdown_signal();
    loop {
        let check = tokio::select! {
            check = checks.recv() => check,
            _ = tx.closed() => None,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(c) = check else { break };
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
