//! The storage engine: one commit log, per-queue consume queues, a key index.
//!
//! ```text
//!  <data_dir>/
//!    LOCK                                  flock: one process per data directory
//!    FORMAT                                data-format version (format.rs)
//!    checkpoint                            where recovery starts (checkpoint.rs)
//!    epochs                                where each master's epoch began (epochs.rs)
//!    STORE_ID                              this directory's random identity (identity.rs)
//!    truncating                            a log truncation in progress (truncate.rs; the
//!                                          deletions it undoes: undelete.rs)
//!    commitlog/<20-digit base offset>      records (record.rs, commit_log.rs)
//!    consumequeue/<topic>/<queue>/<20-digit first offset>   32-byte entries
//!    consumequeue/<topic>/deleted          tombstone of a deleted topic (queues.rs)
//!    consumequeue/%DELETED%/0/...          deletion markers' queue (deletion.rs)
//!    index/<20-digit sequence>             key hash index (index.rs)
//! ```
//!
//! Appends go to a single writer thread ([`writer`]); reads go straight to the
//! memory-mapped files below the published watermarks. A housekeeping thread
//! flushes (in `async` mode), writes checkpoints and enforces retention.

mod acknowledged;
mod checkpoint;
mod commit_log;
mod config;
mod consume_queue;
mod data_extents;
mod deletion;
mod epochs;
mod error;
mod format;
mod frames;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod heal;
mod identity;
mod index;
mod mapped_file;
mod message_id;
mod observer;
mod queues;
mod raw_log;
mod read;
mod record;
mod recovery;
mod replica_append;
mod retention;
mod rewrites;
mod truncate;
mod undelete;
mod writer;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

pub use acknowledged::Visibility;
pub use checkpoint::{Checkpoint, QueueName};
pub use config::{DiskFullPolicy, FlushMode, StoreConfig};
pub use consume_queue::tag_hash;
pub use deletion::DELETION_TOPIC;
pub use error::{RawLogProblem, Result, StoreError};
pub use format::{DATA_FORMAT, OpenedFormat, UNVERSIONED_FORMAT};
pub use mapped_file::sync_dir;
pub use message_id::MessageId;
pub use observer::{DeleteReason, NoObserver, StoreObserver};
pub use raw_log::RawLog;
pub use read::ReadResult;
pub use record::{
    Codec, Message, MessageType, Record, RecordFlags, TransactionState, validate_topic_name,
};
pub use recovery::RecoveryReport;
pub use retention::{RetentionReport, disk_usage_ratio};
pub use writer::{Appended, now_millis};

use commit_log::CommitLog;
use index::Index;
use queues::QueueTable;
use writer::{AppendRequest, Encoded, Writer, WriterRequest};

/// Append requests that may wait for the writer before callers feel backpressure.
const REQUEST_QUEUE_DEPTH: usize = 4096;

/// State shared by the store handle, the writer and the housekeeper.
#[derive(Debug)]
pub(crate) struct Inner {
    config: StoreConfig,
    commit_log: CommitLog,
    queues: QueueTable,
    index: Mutex<Index>,
    epochs: epochs::Epochs,
    /// Damage recovery skipped at this open, and what was healed since.
    damage: Mutex<heal::Damage>,
    /// The published commit-log end, for consumers waiting for new messages.
    arrivals: watch::Sender<u64>,
    observer: Arc<dyn StoreObserver>,
    /// Retention keeps every segment holding this commit-log position or later.
    retention_floor: AtomicU64,
    /// Consumers see records below this position only (`u64::MAX`: all); see
    /// acknowledged.rs.
    acknowledged_end: AtomicU64,
    /// Segments whose newest record is older than this (ms) are deleted: the
    /// configured retention, raised by topics that keep messages longer.
    log_retention_ms: AtomicU64,
    /// The volume is above `disk_usage_limit` and the policy is to refuse writes.
    refusing_writes: AtomicBool,
    /// Truncations and heals, counted for scans outside the store (rewrites.rs).
    rewrites: AtomicU64,
    /// One checkpoint at a time (the housekeeper, topic deletion, close); holds
    /// the position the last one recorded.
    checkpointed: Mutex<Option<u64>>,
}

/// Sizes and positions, for metrics and admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub commit_log_min: u64,
    pub commit_log_max: u64,
    pub commit_log_flushed: u64,
    pub segments: usize,
}

/// The storage engine handle. Cheap to share behind an `Arc`; [`Store::close`]
/// (or drop) stops the threads, flushes and checkpoints.
#[derive(Debug)]
pub struct Store {
    inner: Arc<Inner>,
    /// `sync` mode: the writer thread's queue (group commit shares fsyncs).
    requests: Mutex<Option<mpsc::Sender<WriterRequest>>>,
    /// `async` mode: the writer itself, run by the appending thread under this
    /// lock. With nothing to share but an fsync-free write, handing each append
    /// to a thread and back only added two context switches (and, on a busy
    /// core, scheduler delays to the tail latency).
    inline: Mutex<Option<Writer>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_housekeeper: Mutex<Option<std_mpsc::Sender<()>>>,
    recovery: RecoveryReport,
    opened_format: OpenedFormat,
    store_id: u64,
    _lock: File,
}

impl Store {
    /// Opens (or creates) the store, recovering from any crash, and starts the
    /// writer and housekeeping threads.
    pub fn open(config: StoreConfig) -> Result<Store> {
        Store::open_observed(config, Arc::new(NoObserver))
    }

    /// [`Store::open`], reporting timings and events to `observer`.
    pub fn open_observed(config: StoreConfig, observer: Arc<dyn StoreObserver>) -> Result<Store> {
        config.validate()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let lock = lock_dir(&dir)?;
        let opened_format = format::read(&dir)?;
        let mut repairs = Vec::new();
        let checkpoint = Checkpoint::load(&dir).unwrap_or_else(|e| {
            let repair = format!("{e}; ignored, recovering from the oldest segment");
            tracing::warn!("{repair}");
            repairs.push(repair);
            None
        });
        let written_with = checkpoint
            .as_ref()
            .map(|c| c.segment_size)
            .filter(|&size| size != 0);
        if let Some(size) = written_with
            && size != config.segment_size_bytes
        {
            return Err(StoreError::InvalidConfig(format!(
                "the store in {} was written with segment_size_bytes {size}, the configuration \
                 says {}; the segment size cannot change for an existing store",
                dir.display(),
                config.segment_size_bytes
            )));
        }
        let epochs = epochs::Epochs::load(&dir)?;
        let stored_id = identity::read(&dir)?;
        // The read-only checks passed; recovery below is the first write.
        format::stamp(&dir, opened_format)?;
        let store_id = identity::establish(&dir, stored_id)?;
        let commit_log = CommitLog::open(
            dir.join("commitlog"),
            config.segment_size_bytes,
            written_with,
            &mut repairs,
        )?;
        if checkpoint.is_none() && repairs.is_empty() && commit_log.segment_count() > 0 {
            let repair = format!(
                "{} is missing; recovered from the oldest segment",
                dir.join("checkpoint").display()
            );
            tracing::warn!("{repair}");
            repairs.push(repair);
        }
        let (arrivals, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            commit_log,
            queues: QueueTable::open(
                dir.join("consumequeue"),
                config.consume_queue_entries_per_file,
            )?,
            index: Mutex::new(Index::open(
                dir.join("index"),
                config.index_slots,
                config.index_entries,
            )?),
            epochs,
            damage: Mutex::new(heal::Damage::default()),
            arrivals,
            observer,
            log_retention_ms: AtomicU64::new(config.retention.as_millis() as u64),
            config,
            retention_floor: AtomicU64::new(u64::MAX),
            acknowledged_end: AtomicU64::new(u64::MAX),
            rewrites: AtomicU64::new(0),
            refusing_writes: AtomicBool::new(false),
            checkpointed: Mutex::new(None),
        });
        let started = Instant::now();
        let resumed = truncate::resume(&inner, checkpoint)?;
        let recovery = recovery::recover(&inner, resumed.checkpoint.as_ref(), repairs)?;
        if let Some(cut) = &resumed.pending {
            truncate::finish_undeletions(&inner, cut)?;
        }
        inner.observer.corrupt(recovery.corrupt_ranges.len() as u64);
        inner.damage.lock().unhealed = recovery
            .corrupt_ranges
            .iter()
            .map(|&(start, end)| start..end)
            .collect();
        inner.observer.repaired(recovery.repairs.len() as u64);
        let min = inner.commit_log.min_offset();
        for cq in inner.queues.all() {
            cq.advance_min(min)?;
        }
        inner.arrivals.send_replace(recovery.end);
        // A full volume must not keep the broker down (retention could never
        // free space then): the previous checkpoint stays valid, only older.
        match write_checkpoint(&inner, true) {
            Ok(()) if resumed.pending.is_some() => truncate::finished(&dir)?,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not write a checkpoint after recovery; continuing")
            }
        }
        check_disk_usage(&inner);
        tracing::info!(
            end = recovery.end,
            replayed = recovery.records_replayed,
            corrupt = recovery.corrupt_ranges.len(),
            repairs = recovery.repairs.len(),
            lost_bytes = recovery.lost_bytes,
            torn_bytes = recovery.torn_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "store recovered"
        );

        let writer = Writer::new(inner.clone());
        let mut threads = Vec::new();
        let (requests, inline) = match inner.config.flush {
            FlushMode::Async => (None, Some(writer)),
            FlushMode::Sync => {
                let (tx, rx) = mpsc::channel(REQUEST_QUEUE_DEPTH);
                threads.push(
                    std::thread::Builder::new()
                        .name("store-writer".into())
                        .spawn(move || writer.run(rx))
                        .map_err(|e| StoreError::io("starting the writer thread", e))?,
                );
                (Some(tx), None)
            }
        };
        let (stop_tx, stop_rx) = std_mpsc::channel();
        let hk_inner = inner.clone();
        let housekeeper = std::thread::Builder::new()
            .name("store-housekeeper".into())
            .spawn(move || housekeep(&hk_inner, &stop_rx))
            .map_err(|e| StoreError::io("starting the housekeeping thread", e))?;
        threads.push(housekeeper);
        Ok(Store {
            inner,
            requests: Mutex::new(requests),
            inline: Mutex::new(inline),
            threads: Mutex::new(threads),
            stop_housekeeper: Mutex::new(Some(stop_tx)),
            recovery,
            opened_format,
            store_id,
            _lock: lock,
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// What recovery found when this store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The data format the directory was in when opened (it is
    /// [`DATA_FORMAT`] now).
    pub fn opened_format(&self) -> OpenedFormat {
        self.opened_format
    }

    /// This data directory's random identity (identity.rs): a replaced
    /// volume has another one.
    pub fn store_id(&self) -> u64 {
        self.store_id
    }

    fn encode(&self, messages: Vec<Message>) -> Result<Vec<Encoded>> {
        refuse_if_full(&self.inner)?;
        messages
            .into_iter()
            .map(|m| {
                deletion::refuse_reserved(&m)?;
                self.encode_one(m)
            })
            .collect()
    }

    fn encode_one(&self, m: Message) -> Result<Encoded> {
        let max = self.inner.config.max_record_size_bytes;
        Ok(Encoded {
            buf: m.encode(max)?,
            tag_hash: tag_hash(&m.tag),
            key_hashes: m
                .keys
                .iter()
                .map(|k| index::key_hash(&m.topic, k))
                .collect(),
            topic: m.topic,
            queue_id: m.queue_id,
        })
    }

    /// `async` mode: appends on the calling thread. Gives the messages back in
    /// `sync` mode (they go to the writer thread).
    fn append_inline(
        &self,
        messages: Vec<Encoded>,
    ) -> std::result::Result<Result<Vec<Appended>>, Vec<Encoded>> {
        if self.inner.config.flush != FlushMode::Async {
            return Err(messages);
        }
        Ok(match self.inline.lock().as_mut() {
            Some(writer) => writer.append_now(messages),
            None => Err(StoreError::Closed),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<WriterRequest>> {
        self.requests.lock().clone().ok_or(StoreError::Closed)
    }

    /// Runs `work` on the writer: on this thread in `async` mode, queued to
    /// the writer thread (as the request `queued` makes) in `sync` mode.
    async fn with_writer<T>(
        &self,
        work: impl FnOnce(&mut Writer) -> Result<T>,
        queued: impl FnOnce(oneshot::Sender<Result<T>>) -> WriterRequest,
    ) -> Result<T> {
        if self.inner.config.flush == FlushMode::Async {
            return match self.inline.lock().as_mut() {
                Some(writer) => work(writer),
                None => Err(StoreError::Closed),
            };
        }
        let (reply, done) = oneshot::channel();
        self.sender()?
            .send(queued(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends messages as one unit: all land, in order, or none does (a bad or
    /// oversized message, or a full disk, fails the whole call). Resolves per the
    /// flush mode.
    pub async fn append(&self, messages: Vec<Message>) -> Result<Vec<Appended>> {
        self.append_encoded(self.encode(messages)?).await
    }

    /// [`Store::append`] of encoded messages.
    async fn append_encoded(&self, messages: Vec<Encoded>) -> Result<Vec<Appended>> {
        let messages = match self.append_inline(messages) {
            Ok(result) => return result,
            Err(messages) => messages,
        };
        let (reply, done) = oneshot::channel();
        self.sender()?
            .send(WriterRequest::Append(AppendRequest {
                messages,
                reply,
                queued: Instant::now(),
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::append`] for threads outside an async runtime.
    pub fn append_blocking(&self, messages: Vec<Message>) -> Result<Vec<Appended>> {
        let messages = match self.append_inline(self.encode(messages)?) {
            Ok(result) => return result,
            Err(messages) => messages,
        };
        let (reply, done) = oneshot::channel();
        self.sender()?
            .blocking_send(WriterRequest::Append(AppendRequest {
                messages,
                reply,
                queued: Instant::now(),
            }))
            .map_err(|_| StoreError::Closed)?;
        done.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// The queue ids of a topic with stored queues, ascending.
    pub fn queue_ids(&self, topic: &str) -> Vec<u32> {
        self.inner.queues.queue_ids(topic)
    }

    /// Topics with stored queues, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.inner.queues.topic_names()
    }

    /// Deletes a topic's consume queues; its records age out with retention.
    /// The deletion is a marker record in the log (deletion.rs), so replicas
    /// and recovery delete it at the same place: only a master (or a store
    /// without replication) calls this; a replica learns it from the log.
    /// Blocks until the marker is stored (callable inside a runtime too).
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let marker = self.encode_one(deletion::marker(topic)?)?;
        // The writer deletes the topic when it appends the marker: records
        // of the topic appended after it belong to a new topic of that name.
        futures::executor::block_on(self.append_encoded(vec![marker]))?;
        // The checkpoint names every queue it expects: a crash before the next
        // one would otherwise bring the deleted queues back as damaged.
        write_checkpoint(&self.inner, true)
    }

    /// A receiver that changes whenever new messages become readable.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.arrivals.subscribe()
    }

    /// Flushes the commit log durably up to everything published.
    pub fn flush(&self) -> Result<()> {
        flush_log(&self.inner, self.inner.commit_log.visible())
    }

    /// Keeps retention from deleting data at or after `position` (messages the
    /// broker still has to release, such as delayed ones).
    pub fn pin_retention(&self, position: u64) {
        self.inner
            .retention_floor
            .store(position, Ordering::Relaxed);
    }

    /// Keeps segments until their newest record is older than `retention`
    /// (the longest any topic needs; starts at the configured retention).
    pub fn set_log_retention(&self, retention: std::time::Duration) {
        self.inner
            .log_retention_ms
            .store(retention.as_millis() as u64, Ordering::Relaxed);
    }

    /// Hides a queue's messages stored before `timestamp` (ms): its minimum
    /// offset moves past them (per-topic retention on the shared log).
    pub fn expire_queue(&self, topic: &str, queue_id: u32, timestamp: i64) -> Result<()> {
        match self.inner.queues.get(topic, queue_id) {
            Some(cq) => cq.expire_before(timestamp),
            None => Ok(()),
        }
    }

    /// Runs one retention pass now.
    pub fn enforce_retention(&self) -> Result<RetentionReport> {
        retention::enforce(&self.inner, now_millis())
    }

    pub fn stats(&self) -> StoreStats {
        let log = &self.inner.commit_log;
        StoreStats {
            commit_log_min: log.min_offset(),
            commit_log_max: log.visible(),
            commit_log_flushed: log.flushed(),
            segments: log.segment_count(),
        }
    }

    /// Stops taking appends, lets queued ones finish, flushes and checkpoints.
    /// Idempotent.
    pub fn close(&self) -> Result<()> {
        let had_writer =
            self.requests.lock().take().is_some() | self.inline.lock().take().is_some();
        self.stop_housekeeper.lock().take();
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
        if had_writer {
            write_checkpoint(&self.inner, false)?;
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}

/// How long opening a store waits for its lock before saying it is in use.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes an exclusive `flock` on `<dir>/LOCK`, so two brokers never share a
/// store. The lock may still be held for a moment after its holder closed the
/// store: a process that forked meanwhile (a supervisor or test harness
/// starting another program) holds a copy of the descriptor until the child
/// calls exec; and a broker that is restarted may still be exiting. So the
/// open waits up to [`LOCK_WAIT`] before refusing.
fn lock_dir(dir: &std::path::Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = File::create(&path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    let deadline = Instant::now() + LOCK_WAIT;
    // SAFETY: plain syscall on an fd we own.
    while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if Instant::now() >= deadline {
            return Err(StoreError::InvalidConfig(format!(
                "data directory {} is in use by another process",
                dir.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(file)
}

/// Flushes the commit log up to `to`, reporting the time taken when there was
/// anything to flush.
pub(crate) fn flush_log(inner: &Inner, to: u64) -> Result<()> {
    if inner.commit_log.flushed() >= to {
        return Ok(());
    }
    let started = Instant::now();
    inner.commit_log.flush_to(to)?;
    inner.observer.flushed(started.elapsed());
    Ok(())
}

/// Flushes the commit log, consume queues and index, then records that recovery
/// may start at what was published before the flush, with each consume queue's
/// end there (so recovery can tell a damaged queue).
/// Nothing is written when nothing was appended since the last one, unless
/// `force` (the set of queues changed).
fn write_checkpoint(inner: &Inner, force: bool) -> Result<()> {
    checkpoint_locked(inner, &mut inner.checkpointed.lock(), force)
}

/// [`write_checkpoint`] for a caller holding the checkpoint lock (a
/// truncation keeps it, so no checkpoint is taken half-way through).
fn checkpoint_locked(inner: &Inner, checkpointed: &mut Option<u64>, force: bool) -> Result<()> {
    let log = &inner.commit_log;
    let rescan_from = inner.damage.lock().rescan_from;
    let recover_from = rescan_from.map_or(log.visible(), |at| at.min(log.visible()));
    if !force && *checkpointed == Some(recover_from) {
        return Ok(());
    }
    // Until this one is written, the next must be written too.
    *checkpointed = None;
    flush_log(inner, recover_from)?;
    let queues = inner.queues.named();
    for (_, cq) in &queues {
        cq.flush()?;
    }
    let (index_files, index_tip) = {
        let mut index = inner.index.lock();
        (index.files_to_flush(), index.tip(recover_from))
    };
    for f in index_files {
        f.flush_range(0, f.len() as usize)?;
    }
    let queue_ends = queues
        .into_iter()
        .map(|(name, cq)| {
            let end = cq.end_before(recover_from);
            (name, end)
        })
        .collect();
    Checkpoint {
        commit_log_flushed: log.flushed(),
        recover_from,
        segment_size: inner.config.segment_size_bytes,
        index_tip,
        queue_ends: Some(queue_ends),
    }
    .store(&inner.config.data_dir)?;
    *checkpointed = Some(recover_from);
    Ok(())
}

/// Refuses new data while the volume is above `disk_usage_limit` under the
/// `refuse` policy.
fn refuse_if_full(inner: &Inner) -> Result<()> {
    if inner.refusing_writes.load(Ordering::Relaxed) {
        return Err(StoreError::DiskUsageLimit {
            usage: disk_usage_ratio(&inner.config.data_dir).unwrap_or(1.0),
            limit: inner.config.disk_usage_limit,
        });
    }
    Ok(())
}

/// Under the `refuse` policy, stops (or resumes) taking appends as the volume
/// crosses `disk_usage_limit`, saying so once per change.
fn check_disk_usage(inner: &Inner) {
    let usage = match disk_usage_ratio(&inner.config.data_dir) {
        Ok(usage) => usage,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the data volume's usage");
            return;
        }
    };
    let limit = inner.config.disk_usage_limit;
    let refuse = inner.config.disk_full_policy == DiskFullPolicy::Refuse && usage > limit;
    if inner.refusing_writes.swap(refuse, Ordering::Relaxed) != refuse {
        if refuse {
            tracing::error!(
                usage,
                limit,
                "the data volume is above disk_usage_limit: refusing new messages \
                 (disk_full_policy = refuse) until retention or an operator frees space"
            );
        } else {
            tracing::warn!(
                usage,
                limit,
                "the data volume is below disk_usage_limit again: taking new messages"
            );
        }
        inner.observer.refusing_writes(refuse);
    }
}

/// The housekeeping loop: checkpoint every `flush_interval` (which, in `async`
/// mode, is also the background flush), retention every `retention_check_interval`.
fn housekeep(inner: &Inner, stop: &std_mpsc::Receiver<()>) {
    let mut last_retention = Instant::now();
    while let Err(std_mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(inner.config.flush_interval)
    {
        if let Err(e) = write_checkpoint(inner, false) {
            tracing::error!(error = %e, "checkpoint failed");
        }
        check_disk_usage(inner);
        if last_retention.elapsed() >= inner.config.retention_check_interval {
            last_retention = Instant::now();
            if let Err(e) = retention::enforce(inner, now_millis()) {
                tracing::error!(error = %e, "retention failed");
            }
        }
    }
}
