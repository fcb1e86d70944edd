//! The single commit-log writer. In `sync` mode it runs on its own thread and
//! takes append requests from a queue; everything waiting when it wakes up is
//! handled as one group: planned, written, dispatched, flushed once, published
//! and acknowledged. That is group commit: concurrent appends share one flush.
//! In `async` mode there is no flush to share, and appending threads run it
//! directly, one at a time (`Store::append`).
//!
//! Each request is planned before any byte is written: every segment, consume-queue
//! file and index file it needs is allocated first. Allocation is the only step that
//! can fail (disk full), so a request either lands whole or not at all.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::Inner;
use super::commit_log::CommitLog;
use super::config::FlushMode;
use super::consume_queue::{ConsumeQueue, CqEntry};
use super::error::{RawLogProblem, Result, StoreError};
use super::index::{Index, IndexHit};
use super::message_id::MessageId;
use super::record::{self, BLANK_HEADER_SIZE};
use super::truncate::Cut;

/// A message encoded by the caller's thread, ready for the writer.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub buf: Vec<u8>,
    pub topic: String,
    pub queue_id: u32,
    pub tag_hash: u64,
    pub key_hashes: Vec<u64>,
}

/// One append call: its messages land together or not at all.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub messages: Vec<Encoded>,
    pub reply: oneshot::Sender<Result<Vec<Appended>>>,
    /// When the caller queued it (append latency).
    pub queued: std::time::Instant,
}

impl AppendRequest {
    fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.buf.len()).sum()
    }
}

/// Everything that changes the commit log goes through the one writer, in
/// the order it was queued: local appends (grouped), replicated chunks and
/// truncations (each alone).
#[derive(Debug)]
pub(crate) enum WriterRequest {
    Append(AppendRequest),
    Replicate {
        start: u64,
        bytes: bytes::Bytes,
        reply: oneshot::Sender<Result<u64>>,
    },
    Truncate {
        to: u64,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Where an appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub id: MessageId,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub store_timestamp: i64,
}

/// Positions chosen for a request before anything is written.
struct Plan {
    /// `(position, length)` of segment-end fillers.
    fillers: Vec<(u64, u64)>,
    /// Per message: physical offset, its queue and queue offset.
    slots: Vec<(u64, Arc<ConsumeQueue>, u64)>,
    end: u64,
}

pub(crate) struct Writer {
    pub(super) inner: Arc<Inner>,
    /// Where the next byte goes: the log end once a request is done.
    pub(super) write_pos: u64,
    /// The newest store timestamp written; local appends never go below it,
    /// replicated ones raise it (so a promoted replica keeps time monotone).
    pub(super) last_timestamp: i64,
    /// A truncation that failed part-way (an I/O error after it was
    /// recorded): nothing is written until one finishes it, or the next open
    /// would cut what was written meanwhile.
    pub(super) unfinished_cut: Option<Cut>,
    /// Reused for every append (its buffer keeps its capacity).
    run: LogRun,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("write_pos", &self.write_pos)
            .finish()
    }
}

impl Writer {
    pub fn new(inner: Arc<Inner>) -> Writer {
        let write_pos = inner.commit_log.visible();
        Writer {
            inner,
            write_pos,
            last_timestamp: 0,
            unfinished_cut: None,
            run: LogRun::default(),
        }
    }

    /// Serves requests until every sender is gone.
    pub fn run(mut self, mut requests: mpsc::Receiver<WriterRequest>) {
        let max_group = self.inner.config.max_group_bytes;
        let mut next = None;
        while let Some(request) = next.take().or_else(|| requests.blocking_recv()) {
            let first = match request {
                WriterRequest::Append(first) => first,
                other => {
                    self.serve_alone(other);
                    continue;
                }
            };
            let mut bytes = first.bytes();
            let mut group = vec![first];
            while bytes < max_group {
                match requests.try_recv() {
                    Ok(WriterRequest::Append(req)) => {
                        bytes += req.bytes();
                        group.push(req);
                    }
                    Ok(other) => {
                        next = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.process(group);
        }
    }

    /// Serves a request that is not grouped with others.
    pub fn serve_alone(&mut self, request: WriterRequest) {
        match request {
            WriterRequest::Append(req) => self.process(vec![req]),
            WriterRequest::Replicate {
                start,
                bytes,
                reply,
            } => {
                let _ = reply.send(self.replicate(start, &bytes));
            }
            WriterRequest::Truncate { to, reply } => {
                let _ = reply.send(self.truncate(to));
            }
        }
    }

    /// Appends one request on the calling thread (`async` mode).
    pub fn append_now(&mut self, messages: Vec<Encoded>) -> Result<Vec<Appended>> {
        let (reply, mut done) = oneshot::channel();
        self.process(vec![AppendRequest {
            messages,
            reply,
            queued: std::time::Instant::now(),
        }]);
        done.try_recv().map_err(|_| StoreError::Closed)?
    }

    fn process(&mut self, group: Vec<AppendRequest>) {
        if let Err(e) = self.check_no_unfinished_cut() {
            let text = e.to_string();
            for req in group {
                let _ = req.reply.send(Err(StoreError::Io {
                    context: "appending".into(),
                    source: std::io::Error::other(text.clone()),
                }));
            }
            return;
        }
        let mut outcomes = Vec::with_capacity(group.len());
        let mut touched: HashMap<*const ConsumeQueue, Arc<ConsumeQueue>> = HashMap::new();
        {
            let inner = self.inner.clone();
            let mut index = inner.index.lock();
            for req in group {
                let result = self
                    .plan(&req.messages, &mut index)
                    .and_then(|plan| self.commit(req.messages, plan, &mut index, &mut touched));
                outcomes.push((req.reply, req.queued, result));
            }
        }
        let must_flush = self.inner.config.flush == FlushMode::Sync
            && outcomes.iter().any(|(_, _, r)| r.is_ok());
        if must_flush && let Err(e) = super::flush_log(&self.inner, self.write_pos) {
            // The records are written and will be visible; the producers learn
            // that durability is not confirmed and may retry (at-least-once).
            let text = e.to_string();
            for (_, _, result) in outcomes.iter_mut().filter(|(_, _, r)| r.is_ok()) {
                *result = Err(StoreError::Io {
                    context: "flushing the commit log".into(),
                    source: std::io::Error::other(text.clone()),
                });
            }
        }
        self.publish(touched.values());
        for (reply, queued, result) in outcomes {
            self.inner.observer.appended(queued.elapsed());
            let _ = reply.send(result);
        }
    }

    /// Refuses to write while a truncation is unfinished (see
    /// `unfinished_cut`).
    pub(super) fn check_no_unfinished_cut(&self) -> Result<()> {
        match self.unfinished_cut {
            Some(cut) => Err(StoreError::RawLog {
                position: cut.to,
                problem: RawLogProblem::TruncationUnfinished,
            }),
            None => Ok(()),
        }
    }

    /// Makes everything written so far readable: the log up to `write_pos`,
    /// the consume queues written to, and wakes waiting readers.
    pub(super) fn publish<'a>(&self, touched: impl IntoIterator<Item = &'a Arc<ConsumeQueue>>) {
        self.inner.commit_log.publish(self.write_pos);
        for cq in touched {
            cq.publish();
        }
        self.inner.arrivals.send_replace(self.write_pos);
    }

    /// Chooses positions and allocates every file the request needs.
    fn plan(&self, messages: &[Encoded], index: &mut Index) -> Result<Plan> {
        let log = &self.inner.commit_log;
        let mut pos = self.write_pos;
        let mut fillers = Vec::new();
        let mut slots = Vec::with_capacity(messages.len());
        let mut next_offsets: Vec<(*const ConsumeQueue, u64)> = Vec::new();
        let mut keys = 0;
        for m in messages {
            let size = m.buf.len() as u64;
            let segment_end = log.segment_base(pos) + log.segment_size();
            let remaining = segment_end - pos;
            if size != remaining && size + BLANK_HEADER_SIZE as u64 > remaining {
                fillers.push((pos, remaining));
                pos = segment_end;
            }
            log.ensure_segment(log.segment_base(pos))?;
            let cq = self.inner.queues.get_or_create(&m.topic, m.queue_id)?;
            let key = Arc::as_ptr(&cq);
            let offset = match next_offsets.iter_mut().find(|(p, _)| *p == key) {
                Some((_, next)) => {
                    *next += 1;
                    *next - 1
                }
                None => {
                    next_offsets.push((key, cq.next_offset() + 1));
                    cq.next_offset()
                }
            };
            cq.ensure_capacity(offset)?;
            keys += m.key_hashes.len();
            slots.push((pos, cq, offset));
            pos += size;
        }
        index.ensure_capacity(keys)?;
        Ok(Plan {
            fillers,
            slots,
            end: pos,
        })
    }

    /// Writes a planned request: first every record to the log (so a failed
    /// write leaves nothing pointing at it and the positions are reused), then
    /// the consume-queue and index entries. Nothing is published here.
    fn commit(
        &mut self,
        messages: Vec<Encoded>,
        plan: Plan,
        index: &mut Index,
        touched: &mut HashMap<*const ConsumeQueue, Arc<ConsumeQueue>>,
    ) -> Result<Vec<Appended>> {
        let log = &self.inner.commit_log;
        // The request's bytes go to the log in contiguous runs, one write each.
        let run = &mut self.run;
        run.clear();
        for (pos, len) in plan.fillers {
            run.push(log, pos, &record::blank_header(len as u32))?;
        }
        let timestamp = now_millis().max(self.last_timestamp);
        let broker_id = self.inner.config.broker_id;
        let mut sealed = Vec::with_capacity(messages.len());
        for (mut m, (pos, cq, queue_offset)) in messages.into_iter().zip(plan.slots) {
            let crc = record::seal(&mut m.buf, queue_offset, pos, timestamp);
            run.push(log, pos, &m.buf)?;
            sealed.push((m, pos, cq, queue_offset, crc));
        }
        run.flush(log)?;
        self.last_timestamp = timestamp;
        let mut out = Vec::with_capacity(sealed.len());
        for (m, pos, cq, queue_offset, crc) in sealed {
            let size = m.buf.len() as u32;
            cq.write(
                queue_offset,
                &CqEntry {
                    physical_offset: pos,
                    size,
                    tag_hash: m.tag_hash,
                    store_timestamp: timestamp,
                },
            );
            for hash in m.key_hashes {
                index.put(
                    hash,
                    IndexHit {
                        physical_offset: pos,
                        size,
                        store_timestamp: timestamp,
                    },
                );
            }
            out.push(Appended {
                id: MessageId {
                    broker_id,
                    physical_offset: pos,
                    crc,
                },
                queue_id: m.queue_id,
                queue_offset,
                physical_offset: pos,
                store_timestamp: timestamp,
            });
            touched.entry(Arc::as_ptr(&cq)).or_insert(cq);
        }
        self.write_pos = plan.end;
        Ok(out)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Bytes bound for consecutive commit-log positions, written in one go.
#[derive(Default)]
struct LogRun {
    start: u64,
    bytes: Vec<u8>,
}

impl LogRun {
    fn clear(&mut self) {
        self.start = 0;
        self.bytes.clear();
    }

    /// Adds `data` at `pos`; a gap first writes what was collected.
    fn push(&mut self, log: &CommitLog, pos: u64, data: &[u8]) -> Result<()> {
        if pos != self.start + self.bytes.len() as u64 {
            self.flush(log)?;
            self.start = pos;
        }
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self, log: &CommitLog) -> Result<()> {
        if !self.bytes.is_empty() {
            // SAFETY: the writer owns everything past `visible`.
            unsafe { log.write_run(self.start, &self.bytes) }?;
            self.start += self.bytes.len() as u64;
            self.bytes.clear();
        }
        Ok(())
    }
}
