//! The per-broker batcher: coalesces queued sends into requests, sends them
//! with retries, and hands a batch to failover when its broker cannot take it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dduomq_proto::Reason;
use dduomq_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Inner, Pending, ProducerBuilder};
use crate::connection::{MessagingClient, with_deadline};
use crate::error::{ClientError, Result};
use crate::message::SendReceipt;

/// How long a batch that no other broker can take waits before it is sent to
/// its failed broker again.
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Tells a message's sender the outcome (one-way sends only log failures).
pub(super) fn answer(p: Pending, result: Result<SendReceipt>) {
    match p.reply {
        Some(reply) => {
            let _ = reply.send(result);
        }
        None => {
            if let Err(e) = result {
                tracing::warn!(error = %e, "one-way send failed");
            }
        }
    }
}

/// Collects queued messages into batches and sends them, several at a time.
pub(super) async fn run_batcher(
    client: MessagingClient,
    address: String,
    producer: Weak<Inner>,
    config: ProducerBuilder,
    mut rx: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight_batches));
    while let Some(first) = rx.recv().await {
        let mut bytes = first.message.body.len();
        let mut batch = vec![first];
        let linger_until = tokio::time::Instant::now() + config.linger;
        while batch.len() < config.max_batch_messages && bytes < config.max_batch_bytes {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Empty) if !config.linger.is_zero() => {
                    tokio::time::timeout_at(linger_until, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(p) = next else { break };
            bytes += p.message.body.len();
            batch.push(p);
        }
        let Some(inner) = producer.upgrade() else {
            batch
                .into_iter()
                .for_each(|p| answer(p, Err(ClientError::Closed)));
            continue;
        };
        // Wait for a request slot, unless the broker is found faulty meanwhile
        // (the requests holding the slots hang on it): then fail over at once
        // instead of queueing behind them.
        let topic = batch[0].message.topic.clone();
        let permit = loop {
            let fault = inner.faults.notified();
            if inner.is_faulty(&address) && inner.has_alternative(&topic, &address) {
                break None;
            }
            tokio::select! {
                permit = in_flight.clone().acquire_owned() => break Some(permit.expect("never closed")),
                _ = fault => {}
            }
        };
        let Some(permit) = permit else {
            let error = ClientError::Connect {
                endpoint: address.clone(),
                message: "failed recently; avoided".into(),
            };
            let address = address.clone();
            tokio::spawn(async move { Inner::fail_over(&inner, &address, batch, error).await });
            continue;
        };
        drop(inner);
        tokio::spawn(deliver(
            client.clone(),
            address.clone(),
            producer.clone(),
            batch,
            config.per_broker(),
            Some(permit),
        ));
    }
}

/// Sends a coalesced batch and answers each sender. If the broker refuses the
/// batch for a reason that may concern one message only, each is sent alone, so
/// one bad message does not fail its neighbours. If the broker stays
/// unreachable for `per_broker`, the batch fails over (while its deadline
/// allows), keeping its queues when it may have been stored (see
/// [`Inner::fail_over`]).
pub(super) async fn deliver(
    client: MessagingClient,
    address: String,
    producer: Weak<Inner>,
    batch: Vec<Pending>,
    per_broker: Duration,
    permit: Option<OwnedSemaphorePermit>,
) {
    let deadline = batch
        .iter()
        .map(|p| p.deadline)
        .min()
        .expect("a batch is never empty");
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .min(per_broker);
    let messages: Vec<pb::OutgoingMessage> = batch.iter().map(|p| p.message.clone()).collect();
    // With another broker to go to, an unreachable one is not waited for.
    let fail_fast = producer
        .upgrade()
        .is_some_and(|i| i.has_alternative(&messages[0].topic, &address));
    match send_with_retry(client.clone(), messages, timeout, fail_fast).await {
        Ok(receipts) => {
            for (p, r) in batch.into_iter().zip(receipts) {
                answer(p, Ok(r.into()));
            }
        }
        Err(e) if batch.len() > 1 && !e.is_retryable() => {
            for p in batch {
                let result =
                    send_with_retry(client.clone(), vec![p.message.clone()], timeout, false)
                        .await
                        .map(|mut r| r.remove(0).into());
                answer(p, result);
            }
        }
        Err(e) if e.is_retryable() && Instant::now() + Duration::from_millis(50) < deadline => {
            // The slot goes back first: failing over may queue behind it.
            drop(permit);
            match producer.upgrade() {
                Some(inner) => {
                    inner.mark_faulty(&address, &e);
                    Inner::fail_over(&inner, &address, batch, e).await
                }
                None => batch.into_iter().for_each(|p| answer(p, Err(e.clone()))),
            }
        }
        Err(e) => batch.into_iter().for_each(|p| answer(p, Err(e.clone()))),
    }
}

/// One Send request, retried on retryable errors until `timeout` has passed;
/// with `fail_fast`, an unreachable broker is given up at once (the caller
/// fails over).
pub(super) async fn send_with_retry(
    client: MessagingClient,
    messages: Vec<pb::OutgoingMessage>,
    timeout: Duration,
    fail_fast: bool,
) -> Result<Vec<pb::SendReceipt>> {
    let request = pb::SendRequest { messages };
    // A draining broker will not take the request later either, nor will a
    // replica of a replicated group (the route names its master once the
    // controller republishes it): the caller fails over at once.
    let give_up = |e: &ClientError| {
        matches!(e.reason(), Some(Reason::BrokerDraining | Reason::NotMaster))
            || (fail_fast && e.is_unreachable())
    };
    retry_unless(timeout, timeout, give_up, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.send(request).await }
    })
    .await
    .map(|r| r.receipts)
}

/// Runs a unary call, retrying retryable failures with backoff until `timeout`.
pub(crate) async fn retry<T, F, Fut>(timeout: Duration, call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    retry_unless(timeout, timeout, |_| false, call).await
}

/// [`retry`], each attempt given at most `per_attempt`.
pub(crate) async fn retry_within<T, F, Fut>(
    timeout: Duration,
    per_attempt: Duration,
    call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    retry_unless(timeout, per_attempt, |_| false, call).await
}

/// [`retry`], except for failures `give_up` picks.
async fn retry_unless<T, F, Fut>(
    timeout: Duration,
    per_attempt: Duration,
    give_up: impl Fn(&ClientError) -> bool,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match with_deadline(remaining.min(per_attempt), call()).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() && !give_up(&e) && Instant::now() + backoff < deadline => {
                tracing::debug!(error = %e, "request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}
