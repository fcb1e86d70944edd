//! The producer. Concurrent sends are coalesced: each broker connection has a
//! batcher task that takes whatever is queued (up to the batch limits, waiting at
//! most `linger` for more) and sends it as one request, with several requests in
//! flight at once.
//!
//! Failover: a batch whose broker cannot be reached (at once, when another
//! broker can take it), refuses it as draining, or fails retryably for a fifth
//! of the send timeout (at least 1 s) is sent again through a fresh route, as
//! is every batch still queued for that broker, and that broker is avoided for
//! [`FAULT_ISOLATION`] (as RocketMQ's latency fault tolerance does). A batch
//! that may have been stored (unanswered, cut mid-request, or held
//! unacknowledged) keeps its queue, so the dedupe window that may hold it sees it again: the same
//! broker while it is slow, the group's new master after a failover. A route
//! that cannot be refreshed (the bootstrap broker is down) is used stale; so
//! is one whose refresh is older (a lower epoch: a restarted broker that has
//! not been pushed the route table again claims every queue), but only for a
//! bounded time (`route::LOWER_EPOCH_GRACE`), as epochs can go back for good.
//! Messages with a sharding key keep their queue: they wait for its broker
//! (and fail by their deadline). Their order holds for a sender that awaits
//! each send; concurrent sends of one key may be stored out of order when one
//! of them is retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dduomq_proto::Reason;
use dduomq_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::route::Route;

mod batcher;
mod routing;
#[cfg(test)]
mod tests;

use batcher::{RETRY_PAUSE, answer, deliver, run_batcher, send_with_retry};
pub(crate) use batcher::{retry, retry_within};

use crate::connection::{Access, MessagingClient, client};
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
    access: Access,
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
            access: Access::default(),
        }
    }
    crate::connection::access_setters!();
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

    /// How long a send tries one broker before failing over: a fifth of the
    /// send timeout, at least 1 s.
    fn per_broker(&self) -> Duration {
        (self.send_timeout / 5).max(Duration::from_secs(1))
    }

    /// Creates the producer (connections are made lazily).
    pub fn build(self) -> Result<Producer> {
        let bootstrap = client(&self.endpoint, &self.access)?;
        Ok(Producer {
            inner: Arc::new(Inner {
                bootstrap,
                links: Mutex::new(HashMap::new()),
                routes: Mutex::new(HashMap::new()),
                faulty: Mutex::new(HashMap::new()),
                faults: tokio::sync::Notify::new(),
                revalidating: AtomicBool::new(false),
                fetching: Mutex::new(HashMap::new()),
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

/// Why new sends avoid a broker, and until when.
#[derive(Debug, Clone, Copy)]
struct Fault {
    until: Instant,
    /// The newest route epoch the producer knew when the broker failed: a
    /// newer route that names it a queue's writer ends the avoidance.
    route_epoch: u64,
}

/// Whether new sends avoid `address` at `now`.
fn avoided(faulty: &HashMap<String, Fault>, address: &str, now: Instant) -> bool {
    faulty.get(address).is_some_and(|f| f.until > now)
}

/// How long a broker that failed a send is avoided by new sends.
pub const FAULT_ISOLATION: Duration = Duration::from_secs(5);

/// A message waiting for its batch, and who to tell the outcome.
struct Pending {
    message: pb::OutgoingMessage,
    reply: Option<oneshot::Sender<Result<SendReceipt>>>,
    /// The send's deadline, failovers included.
    deadline: Instant,
}

#[derive(Debug)]
struct Inner {
    config: ProducerBuilder,
    bootstrap: MessagingClient,
    /// Batcher queue per broker address.
    links: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
    routes: Mutex<HashMap<String, Route>>,
    /// Broker address → why and until when new sends avoid it.
    faulty: Mutex<HashMap<String, Fault>>,
    /// Signalled when a broker is found faulty.
    faults: tokio::sync::Notify,
    /// A background refresh of a route naming a faulty broker is running
    /// (one at a time: a refresh may take seconds when brokers are down).
    revalidating: AtomicBool,
    /// Topic → the foreground route fetch in flight, shared by the sends
    /// waiting for it.
    fetching: Mutex<HashMap<String, routing::SharedFetch>>,
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
        let sharding_key = first.sharding_key.clone();
        let batch: Vec<pb::OutgoingMessage> =
            messages.into_iter().map(|m| self.wire(m, None)).collect();
        let (receipts, _) = self.send_request(&topic, &sharding_key, batch).await?;
        Ok(receipts.into_iter().map(SendReceipt::from).collect())
    }

    /// Sends `messages` (of one topic) as one request to a writable queue; on
    /// a retryable failure that broker is avoided and another queue picked
    /// (a sharding key keeps its queue), until the send timeout. Returns the
    /// receipts and the broker that stored them.
    async fn send_request(
        &self,
        topic: &str,
        sharding_key: &str,
        mut messages: Vec<pb::OutgoingMessage>,
    ) -> Result<(Vec<pb::SendReceipt>, String)> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.send_timeout;
        // After a failure that may have stored them, the queue they went to.
        let mut kept = None;
        loop {
            let route = self.inner.route(topic).await?;
            let queue = match kept.and_then(|q| queue_writer(&route, q)) {
                Some(queue) => queue,
                None => self.inner.pick_queue(&route, sharding_key),
            };
            for m in &mut messages {
                m.queue_id = Some(queue.queue_id);
            }
            let budget = deadline
                .saturating_duration_since(Instant::now())
                .min(config.per_broker());
            let address = queue.broker_address;
            let fail_fast = sharding_key.is_empty() && self.inner.has_alternative(topic, &address);
            match send_with_retry(
                client(&address, &config.access)?,
                messages.clone(),
                budget,
                fail_fast,
            )
            .await
            {
                Ok(receipts) => return Ok((receipts, address)),
                Err(e) if e.is_retryable() && Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(broker = %address, error = %e, "send failed; failing over");
                    // As `fail_over` does: maybe stored, so the same queue.
                    kept = e.may_have_been_stored().then_some(queue.queue_id);
                    self.inner.mark_faulty(&address, &e);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one message unbatched, reshaped by `shape` on the wire, to the
    /// broker holding its queue; returns the receipt and that broker's address.
    pub(crate) async fn send_direct(
        &self,
        message: Message,
        shape: impl FnOnce(&mut pb::OutgoingMessage),
    ) -> Result<(SendReceipt, String)> {
        let (topic, sharding_key) = (message.topic.clone(), message.sharding_key.clone());
        let mut wire = self.wire(message, None);
        shape(&mut wire);
        let (mut receipts, address) = self.send_request(&topic, &sharding_key, vec![wire]).await?;
        Ok((receipts.remove(0).into(), address))
    }

    /// Every broker address in a topic's route.
    pub(crate) async fn brokers_of(&self, topic: &str) -> Result<Vec<String>> {
        let route = self.inner.route(topic).await?;
        let mut addresses: Vec<String> =
            route.queues.into_iter().map(|q| q.broker_address).collect();
        addresses.sort();
        addresses.dedup();
        Ok(addresses)
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.inner.config.endpoint
    }

    pub(crate) fn access(&self) -> &Access {
        &self.inner.config.access
    }

    pub(crate) fn send_timeout(&self) -> Duration {
        self.inner.config.send_timeout
    }

    /// The producer id and a fresh sequence number, when idempotent.
    fn identity(&self) -> Option<(&str, u64)> {
        self.inner.config.idempotent.then(|| {
            (
                self.inner.producer_id.as_str(),
                self.inner.sequence.fetch_add(1, Ordering::Relaxed),
            )
        })
    }

    /// A message as sent: compressed per the settings, with its identity.
    fn wire(&self, message: Message, queue_id: Option<u32>) -> pb::OutgoingMessage {
        message.into_proto(queue_id, self.inner.config.compress_from, self.identity())
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
        let route = self.inner.route(&message.topic).await?;
        let queue = self.inner.pick_queue(&route, &message.sharding_key);
        let pending = Pending {
            message: self.wire(message, Some(queue.queue_id)),
            reply,
            deadline: Instant::now() + self.inner.config.send_timeout,
        };
        Inner::link(&self.inner, &queue.broker_address)?
            .send(pending)
            .await
            .map_err(|_| ClientError::Closed)
    }
}

/// The route entry of `queue_id` that takes writes, else any of its entries
/// (its broker refuses the send until the route moves on).
fn queue_writer(route: &Route, queue_id: u32) -> Option<pb::QueueRoute> {
    let mut entries = route.queues.iter().filter(|q| q.queue_id == queue_id);
    entries
        .clone()
        .find(|q| q.writable)
        .or_else(|| entries.next())
        .cloned()
}

impl Inner {
    /// Same sharding key → same queue (stable hash over all queues); otherwise
    /// round robin over the writable queues.
    fn pick_queue(&self, route: &Route, sharding_key: &str) -> pb::QueueRoute {
        if !sharding_key.is_empty() {
            // Hash over queue ids (not route entries, which repeat a queue on
            // several brokers), then take that queue's writable entry.
            let queues = route
                .queues
                .iter()
                .map(|q| q.queue_id + 1)
                .max()
                .unwrap_or(1);
            let queue_id = dduomq_proto::queue_for_sharding_key(sharding_key, queues);
            if let Some(q) = queue_writer(route, queue_id) {
                return q;
            }
        }
        let writable: Vec<&pb::QueueRoute> = route.queues.iter().filter(|q| q.writable).collect();
        // Most of the time no broker is faulty: then there is nothing to filter.
        let healthy: Vec<&pb::QueueRoute> = {
            let faulty = self.faulty.lock();
            if faulty.is_empty() {
                Vec::new()
            } else {
                let now = Instant::now();
                writable
                    .iter()
                    .copied()
                    .filter(|q| !avoided(&faulty, &q.broker_address, now))
                    .collect()
            }
        };
        let candidates = if !healthy.is_empty() {
            healthy
        } else if !writable.is_empty() {
            writable
        } else {
            route.queues.iter().collect()
        };
        let n = self.round_robin.fetch_add(1, Ordering::Relaxed);
        candidates[(n % candidates.len() as u64) as usize].clone()
    }

    fn is_faulty(&self, address: &str) -> bool {
        avoided(&self.faulty.lock(), address, Instant::now())
    }

    /// Whether the cached route of `topic` has a writable queue on a healthy
    /// broker other than `address` (failing over is pointless otherwise).
    fn has_alternative(&self, topic: &str, address: &str) -> bool {
        let routes = self.routes.lock();
        let Some(route) = routes.get(topic) else {
            return false;
        };
        let (faulty, now) = (self.faulty.lock(), Instant::now());
        route.queues.iter().any(|q| {
            q.writable && q.broker_address != address && !avoided(&faulty, &q.broker_address, now)
        })
    }

    /// The batcher queue for a broker, started on first use. Batchers hold the
    /// producer weakly: dropping the last `Producer` ends them.
    fn link(inner: &Arc<Inner>, address: &str) -> Result<mpsc::Sender<Pending>> {
        let mut links = inner.links.lock();
        if let Some(tx) = links.get(address) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel(4 * inner.config.max_batch_messages);
        tokio::spawn(run_batcher(
            client(address, &inner.config.access)?,
            address.to_string(),
            Arc::downgrade(inner),
            inner.config.clone(),
            rx,
        ));
        links.insert(address.to_string(), tx.clone());
        Ok(tx)
    }

    /// After a send to `address` failed with `error`: marks `address` faulty
    /// for [`FAULT_ISOLATION`] (or until a route newer than every cached one
    /// names it a writer) and expires the routes (they may be out of date).
    /// A master still taking over is neither: the route is right, and it
    /// takes writes within moments.
    fn mark_faulty(&self, address: &str, error: &ClientError) {
        if error.reason() == Some(Reason::MasterTakingOver) {
            return;
        }
        let route_epoch = self.routes.lock().values().map(|r| r.epoch).max();
        let now = Instant::now();
        let mut faulty = self.faulty.lock();
        faulty.retain(|_, f| f.until > now);
        let fault = Fault {
            until: now + FAULT_ISOLATION,
            route_epoch: route_epoch.unwrap_or(0),
        };
        faulty.insert(address.to_string(), fault);
        drop(faulty);
        self.faults.notify_waiters();
        for route in self.routes.lock().values_mut() {
            route.expired = true;
        }
    }

    /// Sends each message of a batch that failed on `address` again, through
    /// a fresh route: to another broker's batcher, or — when no other broker
    /// takes it (a single broker, or a sharding key's queue) — to `address`
    /// again after a pause. Every message is answered by its deadline. Runs
    /// without a request slot of any batcher, so it never waits on itself.
    ///
    /// A batch that may have been stored (see
    /// [`ClientError::may_have_been_stored`]) keeps its queue: sent to that queue's writer again — the same broker
    /// while it is slow, the group's new master once the route names it —
    /// the idempotent producer's sequence finds it in the dedupe window there
    /// (replicated with the group) and it is stored once. Sent to another
    /// queue, it would be stored twice. Once that broker refuses connections
    /// (it is gone), the batch goes to any queue, as availability comes
    /// first then: a broker killed mid-request may hold it (at least once).
    async fn fail_over(inner: &Arc<Inner>, address: &str, batch: Vec<Pending>, error: ClientError) {
        tracing::debug!(broker = address, error = %error, messages = batch.len(), "send failed; failing over");
        let keep_queue = error.may_have_been_stored();
        let mut stay = Vec::new();
        for mut p in batch {
            let remaining = p.deadline.saturating_duration_since(Instant::now());
            let route = match tokio::time::timeout(remaining, inner.route(&p.message.topic)).await {
                Ok(Ok(route)) => route,
                Ok(Err(e)) if !e.is_retryable() => {
                    answer(p, Err(e));
                    continue;
                }
                _ => {
                    answer(p, Err(error.clone()));
                    continue;
                }
            };
            let kept = p.message.queue_id.filter(|_| keep_queue);
            let queue = match kept.and_then(|q| queue_writer(&route, q)) {
                Some(queue) => queue,
                None => inner.pick_queue(&route, &p.message.sharding_key),
            };
            p.message.queue_id = Some(queue.queue_id);
            if queue.broker_address == address {
                stay.push(p);
                continue;
            }
            match Inner::link(inner, &queue.broker_address) {
                Ok(link) => {
                    if let Err(mpsc::error::SendError(p)) = link.send(p).await {
                        answer(p, Err(ClientError::Closed));
                    }
                }
                Err(e) => answer(p, Err(e)),
            }
        }
        let Some(earliest) = stay.iter().map(|p| p.deadline).min() else {
            return;
        };
        tokio::time::sleep(RETRY_PAUSE.min(earliest.saturating_duration_since(Instant::now())))
            .await;
        // Those out of time are answered with what went wrong.
        let now = Instant::now();
        let (expired, stay): (Vec<Pending>, Vec<Pending>) =
            stay.into_iter().partition(|p| p.deadline <= now);
        for p in expired {
            answer(p, Err(error.clone()));
        }
        if stay.is_empty() {
            return;
        }
        match client(address, &inner.config.access) {
            Ok(c) => {
                let (weak, per_broker) = (Arc::downgrade(inner), inner.config.per_broker());
                Box::pin(deliver(
                    c,
                    address.to_string(),
                    weak,
                    stay,
                    per_broker,
                    None,
                ))
                .await
            }
            Err(e) => stay.into_iter().for_each(|p| answer(p, Err(e.clone()))),
        }
    }
}
