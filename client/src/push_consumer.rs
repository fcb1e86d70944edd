//! The push consumer: brokers stream leased messages; a handler runs for each
//! with bounded concurrency; `Ok` acks, `Err` nacks (redelivered after the group's
//! backoff). There is one stream per broker holding readable queues of the topic
//! (from the topic's route, refreshed periodically, so brokers that join are
//! picked up); a stream is reopened if it breaks (e.g. a broker restart).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::Reason;
use dduomq_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::connection::{Access, MessagingClient, client, with_deadline};
use crate::error::{ClientError, Result};
use crate::message::ReceivedMessage;
use crate::producer::retry_within;

/// How a group shares messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeMode {
    /// Each message goes to one member of the group.
    #[default]
    Clustering,
    /// Every member gets every message.
    Broadcast,
}

impl ConsumeMode {
    pub(crate) fn to_proto(self) -> pb::ConsumeMode {
        match self {
            ConsumeMode::Clustering => pb::ConsumeMode::Clustering,
            ConsumeMode::Broadcast => pb::ConsumeMode::Broadcast,
        }
    }
}

/// Settings of a [`PushConsumer`].
#[derive(Debug, Clone)]
pub struct PushConsumerBuilder {
    endpoint: String,
    group: String,
    topic: String,
    client_id: String,
    mode: ConsumeMode,
    concurrency: usize,
    max_in_flight: u32,
    max_in_flight_bytes: u64,
    invisible: Duration,
    request_timeout: Duration,
    route_refresh: Duration,
    filter: Filter,
    lane: String,
    access: Access,
}

/// A broker-side filter: a tag expression or SQL92 (see docs/architecture.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Filter {
    /// Everything.
    #[default]
    All,
    /// `TagA || TagB`.
    Tag(String),
    /// `region = 'eu' AND amount > 100` over user properties and `TAGS`.
    Sql(String),
}

impl Filter {
    pub(crate) fn to_proto(&self) -> (i32, String) {
        match self {
            Filter::All => (pb::FilterType::Tag as i32, String::new()),
            Filter::Tag(e) => (pb::FilterType::Tag as i32, e.clone()),
            Filter::Sql(e) => (pb::FilterType::Sql as i32, e.clone()),
        }
    }
}

/// A unique client id: host name, process id and a random suffix.
pub fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

impl PushConsumerBuilder {
    pub fn new(
        endpoint: impl Into<String>,
        group: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        PushConsumerBuilder {
            endpoint: endpoint.into(),
            group: group.into(),
            topic: topic.into(),
            client_id: default_client_id(),
            mode: ConsumeMode::Clustering,
            concurrency: 16,
            max_in_flight: 256,
            max_in_flight_bytes: 0,
            invisible: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            route_refresh: Duration::from_secs(5),
            filter: Filter::All,
            lane: String::new(),
            access: Access::default(),
        }
    }
    crate::connection::access_setters!();
    /// Consume on a gray-release lane: this consumer gets the lane's messages
    /// (and only those) while it is online.
    pub fn lane(mut self, lane: impl Into<String>) -> Self {
        self.lane = lane.into();
        self
    }
    /// Only messages passing `filter` are delivered; the rest still count as
    /// consumed for the group.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
    /// Stable id of this instance (its progress key in broadcast mode).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }
    pub fn mode(mut self, mode: ConsumeMode) -> Self {
        self.mode = mode;
        self
    }
    /// Handlers running at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Flow control: messages leased to this consumer at once.
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
    /// Flow control: bytes leased to this consumer at once (0 = broker default).
    pub fn max_in_flight_bytes(mut self, n: u64) -> Self {
        self.max_in_flight_bytes = n;
        self
    }
    /// How long a message may be handled before it is redelivered.
    pub fn invisible_duration(mut self, d: Duration) -> Self {
        self.invisible = d;
        self
    }

    /// Subscribes and starts handling messages. Fails if a broker refuses the
    /// subscription (unknown group or topic, bad names); a broker that cannot
    /// be reached is subscribed to later, when it answers.
    pub async fn start<F, Fut, E>(self, handler: F) -> Result<PushConsumer>
    where
        F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let bootstrap = client(&self.endpoint, &self.access)?;
        let (stop, stopped) = watch::channel(false);
        let handler = Arc::new(handler);
        let mut streams = Streams::default();
        for address in readable_brokers(bootstrap.clone(), &self).await? {
            let broker = client(&address, &self.access)?;
            let first = match open_stream(broker.clone(), &self).await {
                Ok(first) => first,
                Err(e) if e.is_retryable() => {
                    tracing::warn!(broker = %address, error = %e, "broker unreachable; subscribing later");
                    continue;
                }
                Err(e) => return Err(e),
            };
            streams.start(address, broker, &self, &handler, first);
        }
        let supervisor = tokio::spawn(follow_route(bootstrap, self, handler, streams, stopped));
        Ok(PushConsumer { stop, supervisor })
    }
}

/// The stream task per broker address, each with its own stop signal.
#[derive(Debug, Default)]
struct Streams {
    running: BTreeMap<String, (watch::Sender<bool>, JoinHandle<()>)>,
    /// Consecutive route refreshes an address was missing from.
    absent: BTreeMap<String, u32>,
    /// Tasks told to stop, awaited at shutdown.
    stopping: Vec<JoinHandle<()>>,
}

/// Route refreshes a broker must be missing from before its stream stops (a
/// deleted pod's address never comes back; its new pod has a new one).
const ABSENT_REFRESHES: u32 = 3;

impl Streams {
    fn start<F, Fut, E>(
        &mut self,
        address: String,
        broker: MessagingClient,
        cfg: &PushConsumerBuilder,
        handler: &Arc<F>,
        first: Stream,
    ) where
        F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(broker, cfg.clone(), handler.clone(), first, stopped));
        self.running.insert(address, (stop, task));
    }

    /// Stops the streams of brokers missing from `route` for a while.
    fn retire_missing(&mut self, route: &BTreeSet<String>) {
        let known: Vec<String> = self.running.keys().cloned().collect();
        for address in known {
            if route.contains(&address) {
                self.absent.remove(&address);
                continue;
            }
            let n = self.absent.entry(address.clone()).or_default();
            *n += 1;
            if *n >= ABSENT_REFRESHES
                && let Some((stop, task)) = self.running.remove(&address)
            {
                tracing::info!(broker = %address, "broker left the route; its stream stops");
                stop.send_replace(true);
                self.stopping.push(task);
                self.absent.remove(&address);
            }
        }
    }

    /// Stops every stream; returns the tasks to await.
    fn stop_all(self) -> Vec<JoinHandle<()>> {
        let mut tasks = self.stopping;
        for (_, (stop, task)) in self.running {
            stop.send_replace(true);
            tasks.push(task);
        }
        tasks
    }
}

/// Addresses of the brokers holding readable queues of the topic.
async fn readable_brokers(
    bootstrap: MessagingClient,
    cfg: &PushConsumerBuilder,
) -> Result<BTreeSet<String>> {
    let route = with_deadline(
        cfg.request_timeout,
        bootstrap.clone().query_route(pb::QueryRouteRequest {
            topic: cfg.topic.clone(),
        }),
    )
    .await?;
    Ok(route
        .queues
        .into_iter()
        .filter(|q| q.readable)
        .map(|q| q.broker_address)
        .collect())
}

/// Starts a stream on every broker that appears in the topic's route later.
async fn follow_route<F, Fut, E>(
    bootstrap: MessagingClient,
    cfg: PushConsumerBuilder,
    handler: Arc<F>,
    mut streams: Streams,
    mut stopped: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>>
where
    F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.route_refresh) => {}
            _ = stopped.changed() => return streams.stop_all(),
        }
        // The bootstrap broker first; if it is gone (a pod address that no
        // longer exists), any broker already consumed from: all hold the route.
        let mut addresses = readable_brokers(bootstrap.clone(), &cfg).await.ok();
        for known_address in streams.running.keys() {
            if addresses.is_some() {
                break;
            }
            if let Ok(c) = client(known_address, &cfg.access) {
                addresses = readable_brokers(c, &cfg).await.ok();
            }
        }
        let Some(addresses) = addresses else {
            continue;
        };
        streams.retire_missing(&addresses);
        for address in &addresses {
            if streams.running.contains_key(address) {
                continue;
            }
            let Ok(broker) = client(address, &cfg.access) else {
                continue;
            };
            match open_stream(broker.clone(), &cfg).await {
                Ok(first) => {
                    tracing::info!(broker = %address, "consuming from a new broker");
                    streams.start(address.clone(), broker, &cfg, &handler, first);
                }
                Err(e) => {
                    tracing::warn!(broker = %address, error = %e, "cannot subscribe on a new broker yet")
                }
            }
        }
    }
}

/// A running push consumer. Dropping it without [`PushConsumer::shutdown`]
/// leaves the task running until the process ends.
#[derive(Debug)]
pub struct PushConsumer {
    stop: watch::Sender<bool>,
    /// Follows the route; owns the stream tasks and hands them back at shutdown.
    supervisor: JoinHandle<Vec<JoinHandle<()>>>,
}

impl PushConsumer {
    /// Stops receiving, waits for running handlers (and their acks), and closes
    /// the streams; unacked leases go back to the group.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let tasks = self.supervisor.await.unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
    }
}

type Stream = tonic::Streaming<pb::ReceiveResponse>;

async fn open_stream(mut client: MessagingClient, cfg: &PushConsumerBuilder) -> Result<Stream> {
    let request = pb::ReceiveRequest {
        group: cfg.group.clone(),
        topic: cfg.topic.clone(),
        client_id: cfg.client_id.clone(),
        mode: cfg.mode.to_proto() as i32,
        invisible_duration_ms: cfg.invisible.as_millis() as u32,
        max_in_flight_messages: cfg.max_in_flight,
        max_in_flight_bytes: cfg.max_in_flight_bytes,
        filter_type: cfg.filter.to_proto().0,
        filter_expression: cfg.filter.to_proto().1,
        lane: cfg.lane.clone(),
        // Brokers of the previous release batch only when asked; this SDK
        // reads nothing else (see the field's comment).
        batched: true,
    };
    match tokio::time::timeout(cfg.request_timeout, client.receive(request)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(ClientError::Timeout(cfg.request_timeout)),
    }
}

async fn run<F, Fut, E>(
    client: MessagingClient,
    cfg: PushConsumerBuilder,
    handler: Arc<F>,
    first: Stream,
    mut stopped: watch::Receiver<bool>,
) where
    F: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    let acks = spawn_ack_batcher(client.clone(), cfg.clone());
    let mut stream = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut refusals = 0u32;
    while !*stopped.borrow() {
        let mut s = match stream.take() {
            Some(s) => s,
            None => match open_stream(client.clone(), &cfg).await {
                Ok(s) => {
                    backoff = Duration::from_millis(100);
                    refusals = 0;
                    s
                }
                Err(e) => {
                    // A replica refuses while its master answers: expected
                    // until the route retires it, so a warning only every
                    // tenth refusal in a row (one that lasts).
                    if e.reason() == Some(Reason::NotMaster) {
                        refusals += 1;
                        if refusals.is_multiple_of(10) {
                            tracing::warn!(error = %e, refusals, "receive stream still refused; retrying");
                        } else {
                            tracing::debug!(error = %e, "receive stream refused; retrying");
                        }
                    } else {
                        tracing::warn!(error = %e, "receive stream unavailable; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        loop {
            let next = tokio::select! {
                m = s.message() => m,
                _ = stopped.changed() => {
                    // Keep the stream open until running handlers have acked:
                    // closing it hands this consumer's leases back to the group.
                    let _ = permits.acquire_many(cfg.concurrency as u32).await;
                    return;
                }
            };
            let batch = match next {
                Ok(Some(r)) => r.messages,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(error = %status, "receive stream broke; reopening");
                    break;
                }
            };
            for m in batch {
                let msg = ReceivedMessage::from(m);
                let permit = permits.clone().acquire_owned().await.expect("never closed");
                let (handler, mut client, group) =
                    (handler.clone(), client.clone(), cfg.group.clone());
                let timeout = cfg.request_timeout;
                let acks = acks.clone();
                tokio::spawn(async move {
                    let topic = msg.topic.clone();
                    let handle = msg.receipt_handle.clone();
                    let outcome = handler(msg).await;
                    let result = match outcome {
                        // The permit is held until the ack is answered, so a
                        // shutdown waits for it.
                        Ok(()) => {
                            let (done, answer) = oneshot::channel();
                            match acks.send((handle, done)) {
                                Ok(()) => answer.await.unwrap_or(Err(ClientError::Closed)),
                                Err(_) => Err(ClientError::Closed),
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "handler failed; nacking");
                            with_deadline(
                                timeout,
                                client.nack(pb::NackRequest {
                                    group,
                                    topic,
                                    receipt_handle: handle,
                                }),
                            )
                            .await
                            .map(|_| ())
                        }
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "ack/nack failed; the message will be redelivered");
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// An ack waiting for its batch, and who to tell the outcome.
type PendingAck = (String, oneshot::Sender<Result<()>>);

/// Most acks in one Ack request.
const MAX_ACK_BATCH: usize = 1024;
/// Ack requests in flight per stream.
const ACKS_IN_FLIGHT: usize = 2;

/// Acks of one stream's handlers, sent in batches: whatever has queued up while
/// earlier requests were in flight goes in the next request, so a busy consumer
/// sends few large requests and an idle one acks at once.
fn spawn_ack_batcher(
    client: MessagingClient,
    cfg: PushConsumerBuilder,
) -> mpsc::UnboundedSender<PendingAck> {
    let (tx, mut rx) = mpsc::unbounded_channel::<PendingAck>();
    tokio::spawn(async move {
        let in_flight = Arc::new(Semaphore::new(ACKS_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let permit = in_flight.clone().acquire_owned().await.expect("open");
            let mut batch = vec![first];
            while batch.len() < MAX_ACK_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let (client, group, topic) = (client.clone(), cfg.group.clone(), cfg.topic.clone());
            // An ack that failed in transport (a loaded broker answering
            // late, a connection lost) is sent again until the leases end:
            // giving up early would redeliver messages that were handled.
            let patience = cfg.invisible.max(cfg.request_timeout);
            let per_attempt = cfg.request_timeout;
            tokio::spawn(async move {
                let (handles, waiters): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
                let request = pb::AckRequest {
                    group,
                    topic,
                    receipt_handles: handles,
                };
                let mut attempts = 0;
                let answer = retry_within(patience, per_attempt, || {
                    attempts += 1;
                    let (mut client, request) = (client.clone(), request.clone());
                    async move { client.ack(request).await }
                })
                .await;
                // After a lost answer, a handle the broker no longer knows
                // was most likely acked by the attempt that got no answer
                // (else its lease ended, and it is redelivered either way).
                let settled =
                    |reason: &str| attempts > 1 && reason == Reason::InvalidReceiptHandle.as_str();
                match answer {
                    Ok(r) => {
                        for (i, waiter) in waiters.into_iter().enumerate() {
                            let result = match r.results.get(i) {
                                Some(res)
                                    if !res.error_reason.is_empty()
                                        && !settled(&res.error_reason) =>
                                {
                                    Err(ClientError::Broker {
                                        code: tonic::Code::InvalidArgument,
                                        reason: res.error_reason.clone(),
                                        message: res.error_message.clone(),
                                        metadata: Default::default(),
                                    })
                                }
                                _ => Ok(()),
                            };
                            let _ = waiter.send(result);
                        }
                    }
                    Err(e) => {
                        for waiter in waiters {
                            let _ = waiter.send(Err(e.clone()));
                        }
                    }
                }
                drop(permit);
            });
        }
    });
    tx
}
