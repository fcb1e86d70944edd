//! The master's side of a Follow stream: it answers the follower's start
//! with a truncation point when the follower's tail diverges from its epoch
//! history, otherwise streams its log from where the follower ends, with the
//! epochs that begin in each chunk; the follower's progress reports feed the
//! quorum bookkeeping.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dduomq_proto::v1 as pb;
use dduomq_replication::{EpochStart, FollowFrom, MemberId};
use tokio::sync::mpsc;
use tonic::Status;

use super::{NotMasterCause, Replication, Term};
use crate::messaging::error::BrokerError;

/// About this many log bytes per chunk (at least one frame).
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks in flight to one follower before the master waits for the stream.
const CHUNKS_IN_FLIGHT: usize = 8;
/// An idle stream carries a heartbeat this often (the follower's sign that
/// the master lives, and its view of the committed end; its answer keeps it
/// in sync), and at least four times per `replica_lag_max`.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// What the Follow RPC answers with.
pub type FollowResponses = mpsc::Receiver<Result<pb::FollowResponse, Status>>;

impl Replication {
    /// Serves the Follow stream of the follower that sent `start`; its
    /// further requests (progress reports) arrive on `progress`.
    pub fn serve_follow(
        self: &Arc<Self>,
        start: pb::FollowStart,
        progress: tonic::Streaming<pb::FollowRequest>,
    ) -> Result<FollowResponses, BrokerError> {
        let member = start.member;
        if start.group != self.placement.group
            || member >= self.config.factor
            || member == self.placement.member
        {
            return Err(BrokerError::invalid(
                "follow",
                format!(
                    "member {member} of group {} cannot follow member {} of group {}",
                    start.group, self.placement.member, self.placement.group
                ),
            ));
        }
        let term = self.term()?;
        if start.epoch > term.epoch {
            return Err(self.not_master(NotMasterCause::Deposed).into());
        }
        let history = self.store.epochs();
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        match history.follow_from(start.last_record_epoch, start.log_end, self.store.log_end()) {
            FollowFrom::Truncate { offset, epoch } => {
                tracing::info!(
                    member,
                    offset,
                    epoch,
                    "follower's tail diverges: truncating it"
                );
                let truncate = pb::follow_response::Kind::Truncate(pb::Truncate {
                    offset,
                    epoch,
                    master_epoch: term.epoch,
                });
                // The follower truncates and starts again on a new stream.
                let _ = tx.try_send(Ok(pb::FollowResponse {
                    kind: Some(truncate),
                }));
            }
            FollowFrom::Stream { from } => {
                // An empty follower starts at the oldest byte the master keeps,
                // in the middle of an epoch when retention took its start.
                let oldest = self.store.stats().commit_log_min;
                let epochs = if from < oldest {
                    history.starts_for_log_beginning_at(oldest)
                } else {
                    history.starts_within(from, u64::MAX)
                }
                .into();
                let from = from.max(oldest);
                tracing::info!(member, from, "follower connected");
                let sent = Arc::new(AtomicU64::new(0));
                tokio::spawn(
                    self.clone()
                        .stream_log(term, from, epochs, tx, sent.clone()),
                );
                tokio::spawn(self.clone().read_progress(member, progress, sent));
            }
        }
        Ok(rx)
    }

    /// Sends the log from `pos` on until the follower goes away or this
    /// member stops being master of `term`. `sent_all` is the end of the
    /// last chunk that held everything the master had when it was read.
    async fn stream_log(
        self: Arc<Self>,
        term: Term,
        mut pos: u64,
        mut epochs: VecDeque<EpochStart>,
        tx: mpsc::Sender<Result<pb::FollowResponse, Status>>,
        sent_all: Arc<AtomicU64>,
    ) {
        let mut arrivals = self.store.subscribe();
        let mut stopping = self.stopping.subscribe();
        let heartbeat = HEARTBEAT_INTERVAL.min(self.config.replica_lag_max / 4);
        loop {
            if *stopping.borrow() {
                return;
            }
            if self.term() != Ok(term) {
                let refusal = BrokerError::from(self.not_master(NotMasterCause::Deposed));
                let _ = tx.send(Err(crate::grpc::status::to_status(refusal))).await;
                return;
            }
            let raw = match self.store.read_log(pos, CHUNK_BYTES) {
                Ok(raw) => raw,
                Err(e) => {
                    tracing::error!(pos, error = %e, "reading the log for a follower failed");
                    let _ = tx.send(Err(crate::grpc::status::to_status(e.into()))).await;
                    return;
                }
            };
            let end = raw.end();
            if end >= self.store.log_end() {
                sent_all.fetch_max(end, Ordering::Relaxed);
            }
            let mut starts = Vec::new();
            while epochs.front().is_some_and(|e| e.start_offset <= end) {
                let e = epochs.pop_front().expect("checked above");
                starts.push(pb::EpochStart {
                    epoch: e.epoch,
                    start_offset: e.start_offset,
                });
            }
            let committed_end = self.committed_end();
            let kind = if !raw.data.is_empty() || !starts.is_empty() {
                pos = end;
                pb::follow_response::Kind::Chunk(pb::LogChunk {
                    start: raw.start,
                    data: raw.data,
                    epoch_starts: starts,
                    committed_end,
                })
            } else {
                tokio::select! {
                    _ = arrivals.changed() => continue,
                    _ = tokio::time::sleep(heartbeat) => {}
                    _ = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
                pb::follow_response::Kind::Heartbeat(pb::Heartbeat {
                    committed_end,
                    master_log_end: self.store.log_end(),
                })
            };
            if tx
                .send(Ok(pb::FollowResponse { kind: Some(kind) }))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Feeds the follower's progress reports to the quorum bookkeeping.
    async fn read_progress(
        self: Arc<Self>,
        member: MemberId,
        mut requests: tonic::Streaming<pb::FollowRequest>,
        sent_all: Arc<AtomicU64>,
    ) {
        loop {
            match requests.message().await {
                Ok(Some(pb::FollowRequest {
                    kind: Some(pb::follow_request::Kind::Progress(p)),
                })) => self.follower_stored(member, p.log_end, sent_all.load(Ordering::Relaxed)),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(member, error = %e, "follower stream failed");
                    break;
                }
            }
        }
        tracing::info!(member, "follower disconnected");
    }

    /// The master's committed end (0 when not master).
    fn committed_end(&self) -> u64 {
        self.state
            .lock()
            .master
            .as_ref()
            .map_or(0, |m| m.committed_end)
    }
}
