//! The follower task: while this member is a replica, it follows the
//! assigned master on one Follow stream, stores every chunk at the same
//! positions, cuts a divergent tail when the master says so, and reports how
//! far it stored. It reconnects with backoff and stops when the role changes
//! or the broker shuts down.

use std::sync::Arc;
use std::time::Duration;

use dduomq_proto::v1 as pb;
use dduomq_proto::v1::replication_service_client::ReplicationServiceClient;
use dduomq_replication::MemberId;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::Replication;
use crate::store::StoreError;

/// First and longest pause before reconnecting to the master.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest silence that ends a Follow stream: long enough for one large
/// chunk on a slow link; a dead peer is found sooner by the keepalive.
const MIN_SILENCE: Duration = Duration::from_secs(10);
/// HTTP/2 PINGs on the Follow connection, and how long one may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Largest chunk a follower accepts (the master sends about 1 MiB, or one
/// record of up to the store's maximum record size).
const MAX_CHUNK_MESSAGE: usize = 64 << 20;

/// The master a replica follows in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FollowTarget {
    pub epoch: u64,
    pub master: MemberId,
    pub address: String,
}

/// Why one Follow stream ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum StreamEnd {
    /// The assignment changed: follow the new target at once.
    #[error("the assignment changed")]
    Reassigned,
    /// The tail was cut as the master asked: start again at once.
    #[error("truncated to the master's history")]
    Truncated,
    #[error("cannot reach the master: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("cannot dial the master over TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the master refused or ended the stream: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the master ended the stream")]
    Ended,
    /// Nothing arrived for twice `replica_lag_max` (an idle master sends a
    /// heartbeat at least four times per it), and at least [`MIN_SILENCE`]:
    /// a master stuck although its connection (and its PING answers) lives.
    #[error("the master sent nothing for {0:?}")]
    Silent(Duration),
    #[error("storing what the master sent failed: {0}")]
    Store(#[from] StoreError),
    /// This log holds records but no epoch: it was written without
    /// replication, so it shares no history with any master; following would
    /// mix the master's bytes into it or cut it.
    #[error(
        "this log ({log_end} bytes) was written without replication (it has no epoch history): \
         it shares nothing with the group's master; not following (run it with the replication \
         factor it was written with, or give this member an empty volume)"
    )]
    StandaloneLog { log_end: u64 },
    /// The master asked to cut records of its own current epoch: it holds
    /// less of the epoch than this member (it lost data, e.g. its volume).
    /// Nothing is cut; the stream is retried (a new election fixes it).
    #[error(
        "the master of epoch {epoch} asked to cut this log to {to} (it ends at {own_end}), \
         dropping records of the master's own epoch: the master lost data; not truncating"
    )]
    MasterLostItsEpoch { epoch: u64, to: u64, own_end: u64 },
    /// The master's retention deleted what this member lacks: it can never
    /// hold the master's log byte for byte from where it ends.
    #[error(
        "this log ends at {own_end}, before the oldest byte the master keeps ({oldest}): \
         retention there deleted what this member lacks, so it cannot catch up; give it an \
         empty volume and it copies the master from there"
    )]
    BehindMastersRetention { own_end: u64, oldest: u64 },
}

impl Replication {
    /// Follows whichever master is assigned, until `shutdown` turns true.
    pub async fn run_follower(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut targets = self.target.subscribe();
        let mut retry = RETRY_FIRST;
        loop {
            let target = targets.borrow_and_update().clone();
            let Some(target) = target else {
                tokio::select! {
                    changed = targets.changed() => if changed.is_err() { return },
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                continue;
            };
            let end = tokio::select! {
                end = self.follow(&target, &mut targets, &mut retry) => end,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match end {
                StreamEnd::Reassigned | StreamEnd::Truncated => retry = RETRY_FIRST,
                failure => {
                    tracing::warn!(master = target.address, error = %failure, ?retry, "following the master failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = targets.changed() => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One Follow stream to `target`'s master.
    async fn follow(
        &self,
        target: &FollowTarget,
        targets: &mut watch::Receiver<Option<FollowTarget>>,
        retry: &mut Duration,
    ) -> StreamEnd {
        let end = match self.follow_stream(target, targets, retry).await {
            Ok(end) | Err(end) => end,
        };
        self.streaming_from_master.send_replace(false);
        end
    }

    async fn follow_stream(
        &self,
        target: &FollowTarget,
        targets: &mut watch::Receiver<Option<FollowTarget>>,
        retry: &mut Duration,
    ) -> Result<StreamEnd, StreamEnd> {
        let held = self.store.log_end();
        if held > 0 && self.store.epochs().latest().is_none() {
            return Err(StreamEnd::StandaloneLog { log_end: held });
        }
        let tls = crate::tls::peer_tls(&self.peering.tls)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", target.address))?
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_INTERVAL);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint.connect().await?;
        let mut client =
            ReplicationServiceClient::with_interceptor(channel, self.peering.signer.clone())
                .max_decoding_message_size(MAX_CHUNK_MESSAGE);
        let log_end = self.store.log_end();
        let start = pb::FollowStart {
            group: self.placement.group,
            member: self.placement.member,
            epoch: target.epoch,
            log_end,
            last_record_epoch: self.store.epochs().last_record_epoch(log_end),
        };
        let (progress, requests) = mpsc::channel(4);
        let _ = progress
            .send(pb::FollowRequest {
                kind: Some(pb::follow_request::Kind::Start(start)),
            })
            .await;
        let mut responses = client
            .follow(ReceiverStream::new(requests))
            .await?
            .into_inner();
        let mut first_answer = true;
        loop {
            let silence = (self.config().replica_lag_max * 2).max(MIN_SILENCE);
            let response = tokio::select! {
                r = tokio::time::timeout(silence, responses.message()) => {
                    r.map_err(|_| StreamEnd::Silent(silence))??
                }
                _ = targets.changed() => return Ok(StreamEnd::Reassigned),
            };
            let Some(pb::FollowResponse { kind: Some(kind) }) = response else {
                return Err(StreamEnd::Ended);
            };
            // Streaming (not truncating) means this log is a prefix of the
            // master's: its damaged ranges are intact there.
            let streaming = !matches!(kind, pb::follow_response::Kind::Truncate(_));
            if streaming
                && self
                    .streaming_from_master
                    .send_if_modified(|f| !std::mem::replace(f, true))
            {
                tracing::info!(
                    master = target.address,
                    "streaming from the master; consumers read there"
                );
            }
            if first_answer
                && streaming
                && let Err(e) = self.heal_from(&mut client).await
            {
                // Following goes on; the holes stay (reads skip them).
                tracing::error!(error = %e, "healing damaged log ranges from the master failed");
            }
            match kind {
                pb::follow_response::Kind::Truncate(t) => {
                    self.truncate(target, t).await?;
                    return Ok(StreamEnd::Truncated);
                }
                pb::follow_response::Kind::Chunk(chunk) => {
                    let stored_end = self.store_chunk(target, chunk, first_answer).await?;
                    first_answer = false;
                    *retry = RETRY_FIRST;
                    let report = pb::FollowRequest {
                        kind: Some(pb::follow_request::Kind::Progress(pb::FollowProgress {
                            log_end: stored_end,
                        })),
                    };
                    if progress.send(report).await.is_err() {
                        return Err(StreamEnd::Ended);
                    }
                }
                pb::follow_response::Kind::Heartbeat(h) => {
                    first_answer = false;
                    // Idle, it still holds everything: saying so keeps it in sync.
                    self.note_upstream(h.committed_end);
                    let report = pb::FollowRequest {
                        kind: Some(pb::follow_request::Kind::Progress(pb::FollowProgress {
                            log_end: self.store.log_end(),
                        })),
                    };
                    if progress.send(report).await.is_err() {
                        return Err(StreamEnd::Ended);
                    }
                }
            }
        }
    }

    /// Cuts the tail the master's history does not share.
    async fn truncate(&self, target: &FollowTarget, t: pb::Truncate) -> Result<(), StreamEnd> {
        let _applying = self.gate.read().await;
        if self.target.borrow().as_ref() != Some(target) {
            return Err(StreamEnd::Reassigned);
        }
        let own_end = self.store.log_end();
        let to = self
            .store
            .epochs()
            .truncation_end(t.offset, t.epoch, own_end);
        // 0: a master from before this check.
        if t.master_epoch != 0
            && t.epoch == t.master_epoch
            && self.store.epochs().cuts_epoch(t.epoch, to, own_end)
        {
            let refusal = StreamEnd::MasterLostItsEpoch {
                epoch: t.epoch,
                to,
                own_end,
            };
            tracing::error!(master = target.address, error = %refusal, "refusing to truncate");
            return Err(refusal);
        }
        tracing::warn!(
            from = to,
            own_end,
            master_epoch = t.epoch,
            "truncating the log's divergent tail"
        );
        self.store.truncate_log(to).await?;
        Ok(())
    }

    /// Stores a chunk (and the epochs beginning in it); returns the log end.
    async fn store_chunk(
        &self,
        target: &FollowTarget,
        chunk: pb::LogChunk,
        first: bool,
    ) -> Result<u64, StreamEnd> {
        // Not cancelled halfway: the role switch waits for the gate.
        let _applying = self.gate.read().await;
        if self.target.borrow().as_ref() != Some(target) {
            return Err(StreamEnd::Reassigned);
        }
        // The master streams from where this log ends (or, to an empty one,
        // from its oldest segment): epochs this member began at its end (as a
        // master that wrote nothing) are not the master's.
        let own_end = self.store.log_end();
        if first
            && (chunk.start == own_end || own_end == 0)
            && self
                .store
                .epochs()
                .latest()
                .is_some_and(|e| e.start_offset >= own_end)
        {
            self.store.truncate_log(own_end).await?;
        }
        let mut end = self.store.log_end();
        if end > 0 && chunk.start > end {
            return Err(StreamEnd::BehindMastersRetention {
                own_end: end,
                oldest: chunk.start,
            });
        }
        if !chunk.data.is_empty() {
            end = self
                .store
                .append_replicated(chunk.start, chunk.data)
                .await?;
        }
        for e in chunk.epoch_starts {
            self.store.begin_epoch(e.epoch, e.start_offset)?;
        }
        self.note_upstream(chunk.committed_end);
        Ok(end)
    }

    /// Remembers the master's committed end (reported in ReplicaState); this
    /// member's consumers may see the records below it.
    fn note_upstream(&self, committed_end: u64) {
        self.store.acknowledged_to(committed_end);
        self.state.lock().upstream_committed = Some(committed_end);
    }
}
