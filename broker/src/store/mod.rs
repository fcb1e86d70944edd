//! The storage engine: one commit log, per-queue consume queues, a key index.
//!
//! ```text
//!  <data_dir>/
//!    LOCK                                  flock: one process per data directory
//!    checkpoint                            where recovery starts (checkpoint.rs)
//!    commitlog/<20-digit base offset>      records (record.rs, commit_log.rs)
//!    consumequeue/<topic>/<queue>/<20-digit first offset>   32-byte entries
//!    index/<20-digit sequence>             key hash index (index.rs)
//! ```
//!
//! Appends go to a single writer thread ([`writer`]); reads go straight to the
//! memory-mapped files below the published watermarks. A housekeeping thread
//! flushes (in `async` mode), writes checkpoints and enforces retention.

mod checkpoint;
mod commit_log;
mod config;
mod consume_queue;
mod error;
mod index;
mod mapped_file;
mod message_id;
mod observer;
mod queues;
mod record;
mod recovery;
mod retention;
mod writer;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

pub use checkpoint::Checkpoint;
pub use config::{FlushMode, StoreConfig};
pub use consume_queue::tag_hash;
pub use error::{Result, StoreError};
pub use mapped_file::sync_dir;
pub use message_id::MessageId;
pub use observer::{NoObserver, StoreObserver};
pub use record::{
    Codec, Message, MessageType, Record, RecordFlags, TransactionState, validate_topic_name,
};
pub use recovery::RecoveryReport;
pub use retention::{RetentionReport, disk_usage_ratio};
pub use writer::{Appended, now_millis};

use commit_log::CommitLog;
use index::Index;
use queues::QueueTable;
use writer::{AppendRequest, Encoded, Writer};

/// Append requests that may wait for the writer before callers feel backpressure.
const REQUEST_QUEUE_DEPTH: usize = 4096;

/// State shared by the store handle, the writer and the housekeeper.
#[derive(Debug)]
pub(crate) struct Inner {
    config: StoreConfig,
    commit_log: CommitLog,
    queues: QueueTable,
    index: Mutex<Index>,
    /// The published commit-log end, for consumers waiting for new messages.
    arrivals: watch::Sender<u64>,
    observer: Arc<dyn StoreObserver>,
    /// Retention keeps every segment holding this commit-log position or later.
    retention_floor: std::sync::atomic::AtomicU64,
}

/// Messages read from one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    pub records: Vec<Record>,
    /// The offset to read next.
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    /// Queue offsets skipped because their records are corrupt (reported, never
    /// returned as data).
    pub corrupt_offsets: Vec<u64>,
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
    requests: Mutex<Option<mpsc::Sender<AppendRequest>>>,
    /// `async` mode: the writer itself, run by the appending thread under this
    /// lock. With nothing to share but an fsync-free write, handing each append
    /// to a thread and back only added two context switches (and, on a busy
    /// core, scheduler delays to the tail latency).
    inline: Mutex<Option<Writer>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stop_housekeeper: Mutex<Option<std_mpsc::Sender<()>>>,
    recovery: RecoveryReport,
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
        let checkpoint = Checkpoint::load(&dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring unreadable checkpoint; recovering from the oldest segment");
            None
        });
        let (arrivals, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            commit_log: CommitLog::open(dir.join("commitlog"), config.segment_size_bytes)?,
            queues: QueueTable::open(
                dir.join("consumequeue"),
                config.consume_queue_entries_per_file,
            )?,
            index: Mutex::new(Index::open(
                dir.join("index"),
                config.index_slots,
                config.index_entries,
            )?),
            arrivals,
            observer,
            config,
            retention_floor: std::sync::atomic::AtomicU64::new(u64::MAX),
        });
        let started = Instant::now();
        let recovery = recovery::recover(&inner, checkpoint)?;
        inner.observer.corrupt(recovery.corrupt_ranges.len() as u64);
        let min = inner.commit_log.min_offset();
        for cq in inner.queues.all() {
            cq.advance_min(min)?;
        }
        inner.arrivals.send_replace(recovery.end);
        write_checkpoint(&inner)?;
        tracing::info!(
            end = recovery.end,
            replayed = recovery.records_replayed,
            corrupt = recovery.corrupt_ranges.len(),
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

    fn encode(&self, messages: Vec<Message>) -> Result<Vec<Encoded>> {
        let max = self.inner.config.max_record_size_bytes;
        messages
            .into_iter()
            .map(|m| {
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
            })
            .collect()
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

    fn sender(&self) -> Result<mpsc::Sender<AppendRequest>> {
        self.requests.lock().clone().ok_or(StoreError::Closed)
    }

    /// Appends messages as one unit: all land, in order, or none does (a bad or
    /// oversized message, or a full disk, fails the whole call). Resolves per the
    /// flush mode.
    pub async fn append(&self, messages: Vec<Message>) -> Result<Vec<Appended>> {
        let messages = match self.append_inline(self.encode(messages)?) {
            Ok(result) => return result,
            Err(messages) => messages,
        };
        let (reply, done) = oneshot::channel();
        self.sender()?
            .send(AppendRequest {
                messages,
                reply,
                queued: Instant::now(),
            })
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
            .blocking_send(AppendRequest {
                messages,
                reply,
                queued: Instant::now(),
            })
            .map_err(|_| StoreError::Closed)?;
        done.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Reads up to `max_messages` (and about `max_bytes`, but at least one message)
    /// from a queue starting at `offset`. `offset == max_offset` returns nothing.
    pub fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<ReadResult> {
        let out_of_range = |min, max| StoreError::OffsetOutOfRange {
            topic: topic.to_string(),
            queue_id,
            offset,
            min,
            max,
        };
        let Some(cq) = self.inner.queues.get(topic, queue_id) else {
            return if offset == 0 {
                Ok(ReadResult::default())
            } else {
                Err(out_of_range(0, 0))
            };
        };
        let (min, max) = (cq.min_offset(), cq.max_offset());
        if offset < min || offset > max {
            return Err(out_of_range(min, max));
        }
        let mut out = ReadResult {
            next_offset: offset,
            min_offset: min,
            max_offset: max,
            ..ReadResult::default()
        };
        let mut bytes = 0usize;
        for (i, entry) in cq.read(offset, max_messages).into_iter().enumerate() {
            let queue_offset = offset + i as u64;
            if entry.is_hole() {
                out.corrupt_offsets.push(queue_offset);
                out.next_offset = queue_offset + 1;
                continue;
            }
            if !out.records.is_empty() && bytes + entry.size as usize > max_bytes {
                break;
            }
            match self
                .inner
                .commit_log
                .read(entry.physical_offset, entry.size)
            {
                Ok(rec)
                    if rec.topic == topic
                        && rec.queue_id == queue_id
                        && rec.queue_offset == queue_offset =>
                {
                    bytes += entry.size as usize;
                    out.records.push(rec);
                }
                Err(_) if entry.physical_offset < self.inner.commit_log.min_offset() => {
                    // Retention deleted it while we were reading.
                    if out.records.is_empty() {
                        return Err(out_of_range(cq.min_offset(), cq.max_offset()));
                    }
                    break;
                }
                Ok(_) | Err(StoreError::Corrupt { .. }) => {
                    self.inner.observer.corrupt(1);
                    tracing::error!(
                        topic,
                        queue_id,
                        queue_offset,
                        physical_offset = entry.physical_offset,
                        "corrupt record skipped"
                    );
                    out.corrupt_offsets.push(queue_offset);
                }
                Err(e) => return Err(e),
            }
            out.next_offset = queue_offset + 1;
        }
        Ok(out)
    }

    /// `(min, max)` offsets of a queue; `(0, 0)` for a queue never written.
    pub fn queue_offsets(&self, topic: &str, queue_id: u32) -> (u64, u64) {
        self.inner
            .queues
            .get(topic, queue_id)
            .map_or((0, 0), |cq| (cq.min_offset(), cq.max_offset()))
    }

    /// The first offset of a queue stored at or after `timestamp` (ms); the max
    /// offset when everything is older.
    pub fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp: i64) -> u64 {
        self.inner
            .queues
            .get(topic, queue_id)
            .map_or(0, |cq| cq.offset_for_timestamp(timestamp))
    }

    /// Reads the message an id names.
    pub fn lookup_by_id(&self, id: &MessageId) -> Result<Record> {
        if id.broker_id != self.inner.config.broker_id {
            return Err(StoreError::InvalidMessageId {
                id: id.to_string(),
                reason: format!(
                    "it belongs to broker {}, this is broker {}",
                    id.broker_id, self.inner.config.broker_id
                ),
            });
        }
        let log = &self.inner.commit_log;
        if id.physical_offset < log.min_offset() || id.physical_offset >= log.visible() {
            return Err(StoreError::MessageNotFound(id.to_string()));
        }
        let not_found = || StoreError::MessageNotFound(id.to_string());
        let prefix = log.read_bytes(id.physical_offset, record::BLANK_HEADER_SIZE as u32)?;
        let record::Frame::Record(size) = record::peek_frame(&prefix) else {
            return Err(not_found()); // no record starts there: a forged or mistyped id
        };
        let rec = log.read(id.physical_offset, size)?;
        if rec.crc == id.crc {
            Ok(rec)
        } else {
            Err(not_found())
        }
    }

    /// Every message of `topic` carrying `key`, newest first, stored within
    /// `[begin_ms, end_ms]`, at most `max`.
    pub fn lookup_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<Record>> {
        let log = &self.inner.commit_log;
        let hits = self.inner.index.lock().lookup(
            index::key_hash(topic, key),
            begin_ms,
            end_ms,
            log.visible(),
            max,
        );
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            if hit.physical_offset < log.min_offset() {
                continue;
            }
            match log.read(hit.physical_offset, hit.size) {
                Ok(rec) if rec.topic == topic && rec.keys.iter().any(|k| k == key) => out.push(rec),
                Ok(_) => {}
                Err(StoreError::Corrupt { offset, reason }) => {
                    tracing::error!(offset, %reason, "corrupt record skipped in key lookup");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Calls `f` with every readable record from physical offset `from` (a record
    /// boundary, e.g. an earlier [`StoreStats::commit_log_max`]) to the end of
    /// published data; returns that end. Used to rebuild state kept outside the
    /// store (such as producer dedupe windows) after a crash.
    pub fn scan(&self, from: u64, mut f: impl FnMut(&Record)) -> Result<u64> {
        let log = &self.inner.commit_log;
        let end = log.visible();
        let mut pos = from.max(log.min_offset());
        while pos < end {
            let prefix = log.read_bytes(pos, record::BLANK_HEADER_SIZE as u32)?;
            match record::peek_frame(&prefix) {
                record::Frame::Record(size) => {
                    if let Ok(rec) = log.read(pos, size) {
                        f(&rec);
                    }
                    pos += size as u64;
                }
                record::Frame::Blank(len) => pos += len as u64,
                // Unreadable framing: recovery has reported it; nothing after it
                // can be located without a resync, so stop here.
                _ => break,
            }
        }
        Ok(end)
    }

    /// Topics with stored queues, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.inner.queues.topic_names()
    }

    /// Deletes a topic's consume queues; its records age out with retention.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        self.inner.queues.remove_topic(topic)
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
            .store(position, std::sync::atomic::Ordering::Relaxed);
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
            write_checkpoint(&self.inner)?;
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

/// Takes an exclusive `flock` on `<dir>/LOCK`, so two brokers never share a store.
fn lock_dir(dir: &std::path::Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = File::create(&path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?;
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StoreError::InvalidConfig(format!(
            "data directory {} is in use by another process",
            dir.display()
        )));
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
/// may start at what was published before the flush.
fn write_checkpoint(inner: &Inner) -> Result<()> {
    let log = &inner.commit_log;
    let recover_from = log.visible();
    flush_log(inner, recover_from)?;
    for cq in inner.queues.all() {
        cq.flush()?;
    }
    let index_files = inner.index.lock().files_to_flush();
    for f in index_files {
        f.flush_range(0, f.len() as usize)?;
    }
    Checkpoint {
        commit_log_flushed: log.flushed(),
        recover_from,
    }
    .store(&inner.config.data_dir)
}

/// The housekeeping loop: checkpoint every `flush_interval` (which, in `async`
/// mode, is also the background flush), retention every `retention_check_interval`.
fn housekeep(inner: &Inner, stop: &std_mpsc::Receiver<()>) {
    let mut last_retention = Instant::now();
    while let Err(std_mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(inner.config.flush_interval)
    {
        if let Err(e) = write_checkpoint(inner) {
            tracing::error!(error = %e, "checkpoint failed");
        }
        if last_retention.elapsed() >= inner.config.retention_check_interval {
            last_retention = Instant::now();
            if let Err(e) = retention::enforce(inner, now_millis()) {
                tracing::error!(error = %e, "retention failed");
            }
        }
    }
}
