//! The producer. Concurrent sends are coalesced: each broker connection has a
//! batcher task that takes whatever is queued (up to the batch limits, waiting at
//! most `linger` for more) and sends it as one request, with several requests in
//! flight at once. Retryable failures are retried until the send deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dduomq_proto::v1 as pb;
use dduomq_proto::v1::messaging_service_client::MessagingServiceClient;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Channel;

use crate::connection::{MAX_GRPC_MESSAGE, channel, with_deadline};
use crate::error::{ClientError, Result};
use crate::message::{Message, SendReceipt};

/// Settings of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    endpoint: String,
    linger: Duration,
    max_batch_messages: usize,
    max_batch_bytes: usize,
    max_in_flight_batches: usize,
    send_timeout: Duration,
    route_ttl: Duration,
    compress_from: usize,
    idempotent: bool,
}

impl ProducerBuilder {
    /// A producer bootstrapping from the broker at `endpoint` (`host:port`).
    pub fn new(endpoint: impl Into<String>) -> Self {
        ProducerBuilder {
            endpoint: endpoint.into(),
            linger: Duration::ZERO,
            max_batch_messages: 512,
            max_batch_bytes: 4 << 20,
            max_in_flight_batches: 4,
            send_timeout: Duration::from_secs(10),
            route_ttl: Duration::from_secs(30),
            compress_from: 4096,
            idempotent: true,
        }
    }
    /// Give every message a producer id and sequence number, so that a retried
    /// send is stored once (default on).
    pub fn idempotent(mut self, on: bool) -> Self {
        self.idempotent = on;
        self
    }
    /// Bodies of at least this many bytes are zstd-compressed (default 4 KiB;
    /// 0 turns compression off). Consumers receive the original bytes.
    pub fn compress_from(mut self, bytes: usize) -> Self {
        self.compress_from = bytes;
        self
    }
    /// How long a batch waits for more messages (default 0: send what is queued).
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }
    pub fn max_batch_messages(mut self, n: usize) -> Self {
        self.max_batch_messages = n.max(1);
        self
    }
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = n.max(1);
        self
    }
    /// Requests in flight per broker connection.
    pub fn max_in_flight_batches(mut self, n: usize) -> Self {
        self.max_in_flight_batches = n.max(1);
        self
    }
    /// Deadline of a send, retries included.
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.send_timeout = d;
        self
    }
    /// How long a topic's route is cached.
    pub fn route_ttl(mut self, d: Duration) -> Self {
        self.route_ttl = d;
        self
    }

    /// Creates the producer (connections are made lazily).
    pub fn build(self) -> Result<Producer> {
        let bootstrap = client(&self.endpoint)?;
        Ok(Producer {
            inner: Arc::new(Inner {
                bootstrap,
                links: Mutex::new(HashMap::new()),
                routes: Mutex::new(HashMap::new()),
                round_robin: AtomicU64::new(0),
                producer_id: format!(
                    "{:016x}{:016x}",
                    rand::random::<u64>(),
                    rand::random::<u64>()
                ),
                sequence: AtomicU64::new(0),
                config: self,
            }),
        })
    }
}

pub(crate) fn client(address: &str) -> Result<MessagingServiceClient<Channel>> {
    Ok(MessagingServiceClient::new(channel(address)?)
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE))
}

/// A message waiting for its batch, and who to tell the outcome.
struct Pending {
    message: pb::OutgoingMessage,
    reply: Option<oneshot::Sender<Result<SendReceipt>>>,
}

/// A cached route: which queues are writable and where they live.
#[derive(Debug, Clone)]
struct Route {
    fetched: Instant,
    queues: Vec<pb::QueueRoute>,
}

#[derive(Debug)]
struct Inner {
    config: ProducerBuilder,
    bootstrap: MessagingServiceClient<Channel>,
    /// Batcher queue per broker address.
    links: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
    routes: Mutex<HashMap<String, Route>>,
    round_robin: AtomicU64,
    /// Idempotence: this producer's id and its next sequence number.
    producer_id: String,
    sequence: AtomicU64,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("topic", &self.message.topic)
            .finish()
    }
}

/// Sends messages. Cheap to clone; clones share connections and batchers.
///
/// ```no_run
/// # async fn demo() -> dduomq_client::Result<()> {
/// use dduomq_client::{Message, ProducerBuilder};
/// let producer = ProducerBuilder::new("127.0.0.1:6086").build()?;
/// let receipt = producer.send(Message::new("orders", "hello")).await?;
/// println!("stored as {} at {}/{}", receipt.message_id, receipt.queue_id, receipt.offset);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

impl Producer {
    /// Sends one message and waits until it is stored (per the broker's flush
    /// policy).
    pub async fn send(&self, message: Message) -> Result<SendReceipt> {
        let (reply, done) = oneshot::channel();
        self.enqueue(message, Some(reply)).await?;
        done.await.map_err(|_| ClientError::Closed)?
    }

    /// Starts a send and returns at once; await the handle for the receipt.
    pub fn send_async(&self, message: Message) -> tokio::task::JoinHandle<Result<SendReceipt>> {
        let producer = self.clone();
        tokio::spawn(async move { producer.send(message).await })
    }

    /// Queues a message without waiting for the broker (fire and forget): fails
    /// only if the message cannot be routed.
    pub async fn send_oneway(&self, message: Message) -> Result<()> {
        self.enqueue(message, None).await
    }

    /// Sends messages as one atomic batch: all are stored, in order, or none is.
    /// All messages must be for the same topic.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendReceipt>> {
        let Some(first) = messages.first() else {
            return Ok(Vec::new());
        };
        let topic = first.topic.clone();
        if messages.iter().any(|m| m.topic != topic) {
            return Err(ClientError::InvalidArgument(
                "a batch holds one topic".into(),
            ));
        }
        let route = self.route(&topic).await?;
        let queue = self.pick_queue(&route, first);
        let address = queue.broker_address.clone();
        let batch: Vec<pb::OutgoingMessage> = messages
            .into_iter()
            .map(|m| {
                m.into_proto(
                    Some(queue.queue_id),
                    self.inner.config.compress_from,
                    self.identity().as_ref().map(|(p, s)| (p.as_str(), *s)),
                )
            })
            .collect();
        send_with_retry(client(&address)?, batch, self.inner.config.send_timeout)
            .await
            .map(|r| r.into_iter().map(SendReceipt::from).collect())
    }

    /// Sends one message unbatched, reshaped by `shape` on the wire, to the
    /// broker holding its queue; returns the receipt and that broker's address.
    pub(crate) async fn send_direct(
        &self,
        message: Message,
        shape: impl FnOnce(&mut pb::OutgoingMessage),
    ) -> Result<(SendReceipt, String)> {
        let route = self.route(&message.topic).await?;
        let queue = self.pick_queue(&route, &message);
        let mut wire = message.into_proto(
            Some(queue.queue_id),
            self.inner.config.compress_from,
            self.identity().as_ref().map(|(p, s)| (p.as_str(), *s)),
        );
        shape(&mut wire);
        let mut receipts = send_with_retry(
            client(&queue.broker_address)?,
            vec![wire],
            self.inner.config.send_timeout,
        )
        .await?;
        Ok((receipts.remove(0).into(), queue.broker_address))
    }

    /// Every broker address in a topic's route.
    pub(crate) async fn brokers_of(&self, topic: &str) -> Result<Vec<String>> {
        let route = self.route(topic).await?;
        let mut addresses: Vec<String> =
            route.queues.into_iter().map(|q| q.broker_address).collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.inner.config.endpoint
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        self.inner.config.send_timeout
    }

    /// The producer id and a fresh sequence number, when idempotent.
    fn identity(&self) -> Option<(String, u64)> {
        self.inner.config.idempotent.then(|| {
            (
                self.inner.producer_id.clone(),
                self.inner.sequence.fetch_add(1, Ordering::Relaxed),
            )
        })
    }

    async fn enqueue(
        &self,
        message: Message,
        reply: Option<oneshot::Sender<Result<SendReceipt>>>,
    ) -> Result<()> {
        if message.topic.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a message needs a topic".into(),
            ));
        }
        let route = self.route(&message.topic).await?;
        let queue = self.pick_queue(&route, &message);
        let link = self.link(&queue.broker_address)?;
        let pending = Pending {
            message: message.into_proto(
                Some(queue.queue_id),
                self.inner.config.compress_from,
                self.identity().as_ref().map(|(p, s)| (p.as_str(), *s)),
            ),
            reply,
        };
        link.send(pending).await.map_err(|_| ClientError::Closed)
    }

    /// Same sharding key → same queue (stable hash over all queues); otherwise
    /// round robin over the writable queues.
    fn pick_queue(&self, route: &Route, message: &Message) -> pb::QueueRoute {
        if !message.sharding_key.is_empty() {
            // Hash over queue ids (not route entries, which repeat a queue on
            // several brokers), then take that queue's writable entry.
            let queues = route
                .queues
                .iter()
                .map(|q| q.queue_id + 1)
                .max()
                .unwrap_or(1);
            let h = xxhash_rust::xxh3::xxh3_64(message.sharding_key.as_bytes());
            let queue_id = (h % queues as u64) as u32;
            let mut entries = route.queues.iter().filter(|q| q.queue_id == queue_id);
            if let Some(q) = entries
                .clone()
                .find(|q| q.writable)
                .or_else(|| entries.next())
            {
                return q.clone();
            }
        }
        let writable: Vec<&pb::QueueRoute> = route.queues.iter().filter(|q| q.writable).collect();
        let candidates = if writable.is_empty() {
            route.queues.iter().collect()
        } else {
            writable
        };
        let n = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);
        candidates[(n % candidates.len() as u64) as usize].clone()
    }

    async fn route(&self, topic: &str) -> Result<Route> {
        if let Some(r) = self.inner.routes.lock().get(topic)
            && r.fetched.elapsed() < self.inner.config.route_ttl
        {
            return Ok(r.clone());
        }
        let response = retry(self.inner.config.send_timeout, || {
            let mut client = self.inner.bootstrap.clone();
            let request = pb::QueryRouteRequest {
                topic: topic.to_string(),
            };
            async move { client.query_route(request).await }
        })
        .await?;
        if response.queues.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "topic {topic:?} has no queues"
            )));
        }
        let route = Route {
            fetched: Instant::now(),
            queues: response.queues,
        };
        self.inner
            .routes
            .lock()
            .insert(topic.to_string(), route.clone());
        Ok(route)
    }

    /// The batcher queue for a broker, started on first use.
    fn link(&self, address: &str) -> Result<mpsc::Sender<Pending>> {
        let mut links = self.inner.links.lock();
        if let Some(tx) = links.get(address) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel(4 * self.inner.config.max_batch_messages);
        tokio::spawn(run_batcher(client(address)?, self.inner.config.clone(), rx));
        links.insert(address.to_string(), tx.clone());
        Ok(tx)
    }
}

/// Collects queued messages into batches and sends them, several at a time.
async fn run_batcher(
    client: MessagingServiceClient<Channel>,
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
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let client = client.clone();
        let timeout = config.send_timeout;
        tokio::spawn(async move {
            deliver(client, batch, timeout).await;
            drop(permit);
        });
    }
}

/// Sends a coalesced batch and answers each sender. If the broker refuses the
/// batch for a reason that may concern one message only, each is sent alone, so
/// one bad message does not fail its neighbours.
async fn deliver(client: MessagingServiceClient<Channel>, batch: Vec<Pending>, timeout: Duration) {
    let messages: Vec<pb::OutgoingMessage> = batch.iter().map(|p| p.message.clone()).collect();
    match send_with_retry(client.clone(), messages, timeout).await {
        Ok(receipts) => {
            for (p, r) in batch.into_iter().zip(receipts) {
                if let Some(reply) = p.reply {
                    let _ = reply.send(Ok(r.into()));
                }
            }
        }
        Err(e) if batch.len() > 1 && !e.is_retryable() => {
            for p in batch {
                let result = send_with_retry(client.clone(), vec![p.message], timeout)
                    .await
                    .map(|mut r| r.remove(0).into());
                if let Some(reply) = p.reply {
                    let _ = reply.send(result);
                } else if let Err(e) = result {
                    tracing::warn!(error = %e, "one-way send failed");
                }
            }
        }
        Err(e) => {
            for p in batch {
                match p.reply {
                    Some(reply) => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    None => tracing::warn!(error = %e, "one-way send failed"),
                }
            }
        }
    }
}

/// One Send request, retried on retryable errors until `timeout` has passed.
async fn send_with_retry(
    client: MessagingServiceClient<Channel>,
    messages: Vec<pb::OutgoingMessage>,
    timeout: Duration,
) -> Result<Vec<pb::SendReceipt>> {
    let request = pb::SendRequest { messages };
    retry(timeout, || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.send(request).await }
    })
    .await
    .map(|r| r.receipts)
}

/// Runs a unary call, retrying retryable failures with backoff until `timeout`.
pub(crate) async fn retry<T, F, Fut>(timeout: Duration, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(20);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match with_deadline(remaining, call()).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() && Instant::now() + backoff < deadline => {
                tracing::debug!(error = %e, "request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}
