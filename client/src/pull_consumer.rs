//! The pull consumer: reads its assigned queues from explicit offsets and commits
//! progress itself. The broker assigns the group's queues across live members;
//! heartbeats (sent in the background) carry the assignment and its generation.
//! When the generation changes (rebalance or offset reset) positions are reloaded
//! from the committed offsets; a commit from an old generation is refused.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::v1 as pb;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::connection::{Access, MessagingClient, client, with_deadline};
use crate::error::Result;
use crate::message::ReceivedMessage;
use crate::push_consumer::{Filter, default_client_id};

/// Settings of a [`PullConsumer`].
#[derive(Debug, Clone)]
pub struct PullConsumerBuilder {
    endpoint: String,
    group: String,
    topics: Vec<String>,
    client_id: String,
    request_timeout: Duration,
    filter: Filter,
    access: Access,
}

impl PullConsumerBuilder {
    pub fn new(endpoint: impl Into<String>, group: impl Into<String>, topics: Vec<String>) -> Self {
        PullConsumerBuilder {
            endpoint: endpoint.into(),
            group: group.into(),
            topics,
            client_id: default_client_id(),
            request_timeout: Duration::from_secs(10),
            filter: Filter::All,
            access: Access::default(),
        }
    }
    crate::connection::access_setters!();
    /// Only messages passing `filter` are returned; positions move past the rest.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Joins the group (first heartbeat) and starts heartbeating.
    pub async fn build(self) -> Result<PullConsumer> {
        let client = client(&self.endpoint, &self.access)?;
        let shared = Arc::new(Shared {
            client,
            cfg: self,
            state: Mutex::new(State::default()),
        });
        let interval = shared.heartbeat().await?;
        let beat = shared.clone();
        let heartbeats = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = beat.heartbeat().await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        });
        Ok(PullConsumer { shared, heartbeats })
    }
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    /// Next offset to read per assigned queue.
    positions: BTreeMap<(String, u32), u64>,
    round_robin: usize,
}

#[derive(Debug)]
struct Shared {
    client: MessagingClient,
    cfg: PullConsumerBuilder,
    state: Mutex<State>,
}

impl Shared {
    /// Sends a heartbeat; on a new generation reloads positions from the
    /// committed offsets. Returns the heartbeat interval.
    async fn heartbeat(&self) -> Result<Duration> {
        let r = with_deadline(
            self.cfg.request_timeout,
            self.client.clone().heartbeat(pb::HeartbeatRequest {
                group: self.cfg.group.clone(),
                client_id: self.cfg.client_id.clone(),
                kind: pb::ConsumerKind::Pull as i32,
                topics: self.cfg.topics.clone(),
            }),
        )
        .await?;
        let mut st = self.state.lock().await;
        if r.generation != st.generation || st.positions.len() != r.assignments.len() {
            let mut positions = BTreeMap::new();
            for a in &r.assignments {
                let q = with_deadline(
                    self.cfg.request_timeout,
                    self.client.clone().query_offset(pb::QueryOffsetRequest {
                        group: self.cfg.group.clone(),
                        topic: a.topic.clone(),
                        queue_id: a.queue_id,
                    }),
                )
                .await?;
                positions.insert((a.topic.clone(), a.queue_id), q.committed_offset);
            }
            st.positions = positions;
            st.generation = r.generation;
        }
        Ok(Duration::from_millis(
            (r.session_timeout_ms / 3).max(100) as u64
        ))
    }
}

/// A running pull consumer.
#[derive(Debug)]
pub struct PullConsumer {
    shared: Arc<Shared>,
    heartbeats: JoinHandle<()>,
}

impl Drop for PullConsumer {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

impl PullConsumer {
    /// The current generation and assigned queues.
    pub async fn assignment(&self) -> (u64, Vec<(String, u32)>) {
        let st = self.shared.state.lock().await;
        (st.generation, st.positions.keys().cloned().collect())
    }

    /// Sends a heartbeat now (picks up a rebalance or reset at once).
    pub async fn refresh(&self) -> Result<()> {
        self.shared.heartbeat().await.map(|_| ())
    }

    /// Reads up to `max` messages from the assigned queues, waiting up to `wait`
    /// when none is available. Advances the local positions; call
    /// [`PullConsumer::commit`] to make them durable.
    pub async fn poll(&self, max: u32, wait: Duration) -> Result<Vec<ReceivedMessage>> {
        let queues: Vec<((String, u32), u64)> = {
            let mut st = self.shared.state.lock().await;
            let mut qs: Vec<_> = st.positions.iter().map(|(k, v)| (k.clone(), *v)).collect();
            if !qs.is_empty() {
                let n = st.round_robin % qs.len();
                qs.rotate_left(n);
                st.round_robin += 1;
            }
            qs
        };
        // A quick pass over every queue, then a long poll on all of them at once.
        for wait_ms in [0, wait.as_millis() as u32] {
            let mut pulls: FuturesUnordered<_> = queues
                .iter()
                .map(|((topic, queue_id), offset)| {
                    let mut client = self.shared.client.clone();
                    let req = pb::PullRequest {
                        group: self.shared.cfg.group.clone(),
                        topic: topic.clone(),
                        queue_id: *queue_id,
                        offset: *offset,
                        max_messages: max,
                        max_bytes: 0,
                        wait_ms,
                        filter_type: self.shared.cfg.filter.to_proto().0,
                        filter_expression: self.shared.cfg.filter.to_proto().1,
                    };
                    let timeout =
                        self.shared.cfg.request_timeout + Duration::from_millis(wait_ms as u64);
                    async move {
                        with_deadline(timeout, client.pull(req))
                            .await
                            .map(|r| (topic.clone(), *queue_id, *offset, r))
                    }
                })
                .collect();
            let mut out = Vec::new();
            while let Some(result) = pulls.next().await {
                let (topic, queue_id, from, r) = result?;
                let mut st = self.shared.state.lock().await;
                // Only advance if nobody moved the position meanwhile (rebalance).
                if let Some(pos) = st.positions.get_mut(&(topic, queue_id))
                    && *pos == from
                {
                    *pos = r.next_offset;
                    out.extend(r.messages.into_iter().map(ReceivedMessage::from));
                }
                if out.len() >= max as usize || (wait_ms > 0 && !out.is_empty()) {
                    break;
                }
            }
            if !out.is_empty() || wait.is_zero() {
                return Ok(out);
            }
        }
        Ok(Vec::new())
    }

    /// Moves the local position of an assigned queue.
    pub async fn seek(&self, topic: &str, queue_id: u32, offset: u64) {
        if let Some(pos) = self
            .shared
            .state
            .lock()
            .await
            .positions
            .get_mut(&(topic.to_string(), queue_id))
        {
            *pos = offset;
        }
    }

    /// Commits the positions of every assigned queue with the current generation.
    pub async fn commit(&self) -> Result<()> {
        let (generation, positions) = {
            let st = self.shared.state.lock().await;
            (st.generation, st.positions.clone())
        };
        for ((topic, queue_id), offset) in positions {
            with_deadline(
                self.shared.cfg.request_timeout,
                self.shared
                    .client
                    .clone()
                    .commit_offset(pb::CommitOffsetRequest {
                        group: self.shared.cfg.group.clone(),
                        topic,
                        queue_id,
                        offset,
                        client_id: self.shared.cfg.client_id.clone(),
                        generation,
                    }),
            )
            .await?;
        }
        Ok(())
    }
}
