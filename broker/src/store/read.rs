//! Reads: from a queue (through its consume queue), by message id, by key, and
//! scans of the log. Readers never lock against the writer: they read below the
//! watermarks it publishes.

use std::ops::ControlFlow;

use super::Store;
use super::commit_log::CommitLog;
use super::consume_queue::ConsumeQueue;
use super::error::{Result, StoreError};
use super::index;
use super::message_id::MessageId;
use super::record::{self, Record};
use super::recovery::next_frame;

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
    /// Queue offsets whose consume-queue entry was damaged; their records were
    /// found in the commit log and returned.
    pub repaired_offsets: Vec<u64>,
}

/// How far the log is walked for the record of a damaged consume-queue entry
/// (headers only; about 50 ms for 1 KiB records): beyond it the entry is
/// reported corrupt.
const MAX_DISPLACED_WALK: u64 = 256 << 20;

/// The header of the record that starts at `pos`, if a record frame starts
/// there and its whole header is published.
fn record_header_at(log: &CommitLog, pos: u64) -> Option<record::Header> {
    let available = log.visible().checked_sub(pos)?;
    if available < record::RECORD_HEADER_SIZE as u64 {
        return None;
    }
    let bytes = log
        .read_bytes(pos, record::RECORD_HEADER_SIZE as u32)
        .ok()?;
    matches!(record::peek_frame(&bytes), record::Frame::Record(_))
        .then(|| record::parse_header(&bytes))
}

/// The length of the segment-end filler that starts at `pos`, if one does.
fn blank_at(log: &CommitLog, pos: u64) -> Option<u32> {
    let available = log.visible().checked_sub(pos)?;
    if available < record::BLANK_HEADER_SIZE as u64 {
        return None;
    }
    let bytes = log.read_bytes(pos, record::BLANK_HEADER_SIZE as u32).ok()?;
    match record::peek_frame(&bytes) {
        record::Frame::Blank(len) => Some(len),
        _ => None,
    }
}

impl Store {
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
        // A truncation (a replica's) that began meanwhile may have zeroed what
        // was read, which would look like corrupt records: read again.
        self.inner.commit_log.read_stable(|| {
            self.read_once(topic, queue_id, offset, max_messages, max_bytes, u64::MAX)
        })
    }

    /// [`Store::read`] of the records below position `limit` (`u64::MAX`:
    /// all published ones), unless a truncation ran meanwhile.
    pub(super) fn read_once(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
        limit: u64,
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
        let (min, max) = match limit {
            u64::MAX => (cq.min_offset(), cq.max_offset()),
            limit => (cq.min_offset(), cq.end_below(limit)),
        };
        if offset < min || offset > max {
            return Err(out_of_range(min, max));
        }
        // Limited, entries published past `max` stay unread.
        let max_messages = match limit {
            u64::MAX => max_messages,
            _ => max_messages.min((max - offset) as usize),
        };
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
            // An entry claiming more than any record may hold is damaged: it
            // must not make a read copy a whole segment.
            let stored = if entry.size <= self.inner.config.max_record_size_bytes {
                self.inner
                    .commit_log
                    .read(entry.physical_offset, entry.size)
            } else {
                Err(StoreError::Corrupt {
                    offset: entry.physical_offset,
                    reason: format!("consume-queue entry of {} bytes", entry.size),
                })
            };
            match stored {
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
                    if let Some(rec) = self.find_displaced(&cq, topic, queue_id, queue_offset) {
                        tracing::warn!(
                            topic,
                            queue_id,
                            queue_offset,
                            "damaged consume-queue entry; read the record it names from the commit log"
                        );
                        bytes += rec.size as usize;
                        out.records.push(rec);
                        out.repaired_offsets.push(queue_offset);
                        out.next_offset = queue_offset + 1;
                        continue;
                    }
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

    /// The record of `queue_offset` when its consume-queue entry does not lead
    /// to it: the entry itself may be the damaged part. The record lies between
    /// the records of the neighbouring entries, so the log is walked there,
    /// frame by frame, reading headers only until it is found.
    fn find_displaced(
        &self,
        cq: &ConsumeQueue,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
    ) -> Option<Record> {
        let log = &self.inner.commit_log;
        let visible = log.visible();
        // Neighbours are trusted only as far as they point inside the log.
        let usable = |offset: u64| {
            cq.entry(offset).filter(|e| {
                !e.is_hole()
                    && e.size != 0
                    && e.physical_offset
                        .checked_add(e.size as u64)
                        .is_some_and(|end| end <= visible)
            })
        };
        let from = queue_offset
            .checked_sub(1)
            .and_then(usable)
            .map_or(log.min_offset(), |e| e.physical_offset + e.size as u64);
        let mut pos = from.max(log.min_offset());
        let to = usable(queue_offset + 1)
            .map_or(visible, |e| e.physical_offset)
            .min(pos.saturating_add(MAX_DISPLACED_WALK));
        while pos < to {
            let header = record_header_at(log, pos);
            match header {
                Some(h) => {
                    if h.queue_id == queue_id
                        && h.queue_offset == queue_offset
                        && h.physical_offset == pos
                    {
                        let rec = log.read(pos, h.total_size).ok()?;
                        return (rec.topic == topic).then_some(rec);
                    }
                    pos = pos.checked_add(h.total_size as u64)?;
                }
                None => match blank_at(log, pos) {
                    Some(len) => pos += len as u64,
                    None => return None,
                },
            }
        }
        None
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
        // The header alone must agree with the id before the record is read: an id
        // forged to point into a body costs one small read, not a large copy.
        let Some(header) = record_header_at(log, id.physical_offset) else {
            return Err(not_found()); // no record starts there: a forged or mistyped id
        };
        let size = header.total_size;
        if header.physical_offset != id.physical_offset
            || header.crc != id.crc
            || size > self.inner.config.max_record_size_bytes
        {
            return Err(not_found());
        }
        log.read(id.physical_offset, size)
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
        // A truncation meanwhile would make the records it zeroes look corrupt.
        self.inner
            .commit_log
            .read_stable(|| self.lookup_by_key_once(topic, key, begin_ms, end_ms, max))
    }

    /// [`Store::lookup_by_key`], unless a truncation runs meanwhile.
    fn lookup_by_key_once(
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
    /// published data, or until `f` breaks; returns where it ended (that end,
    /// or the record `f` broke at, which a later scan starts from). Used to
    /// rebuild state kept outside the store (such as producer dedupe windows).
    pub fn scan(&self, from: u64, mut f: impl FnMut(&Record) -> ControlFlow<()>) -> Result<u64> {
        let log = &self.inner.commit_log;
        let end = log.visible();
        let mut pos = from.max(log.min_offset());
        while pos < end {
            let prefix = log.read_bytes(pos, record::BLANK_HEADER_SIZE as u32)?;
            let next = match record::peek_frame(&prefix) {
                record::Frame::Record(size) => match log.read(pos, size) {
                    Ok(rec) => {
                        if f(&rec).is_break() {
                            return Ok(pos);
                        }
                        Some(pos + size as u64)
                    }
                    Err(_) => next_frame(&self.inner, pos + 1, end),
                },
                record::Frame::Blank(len) => Some(pos + len as u64),
                // Damage (recovery reported it): go on at the next valid record.
                _ => next_frame(&self.inner, pos + 1, end),
            };
            match next {
                Some(next) => pos = next,
                None => break,
            }
        }
        Ok(end)
    }
}
