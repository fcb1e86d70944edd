//! Crash recovery. Consume queues and the key index are derived data: recovery
//! drops whatever they hold past the checkpoint and re-dispatches from the commit
//! log, scanning forward and validating every record.
//!
//! The scan distinguishes two kinds of damage:
//! * a **torn tail** — the last write was cut short; nothing valid follows, so the
//!   log ends there and the leftover bytes are zeroed;
//! * a **corrupt record in the middle** — a valid record (one whose CRC and stored
//!   physical offset both check out) starts within `max_record_size` after it; the
//!   bad bytes are reported and skipped, and the records after them are kept.
//!
//! Segments past the one holding the end are unacknowledged leftovers or empty
//! spares and are deleted.

use super::Inner;
use super::checkpoint::Checkpoint;
use super::consume_queue::{CqEntry, tag_hash};
use super::error::Result;
use super::index::{Index, IndexHit, key_hash};
use super::mapped_file::MappedFile;
use super::record::{self, Frame, RECORD_HEADER_SIZE};

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Where the scan started (the checkpoint's `recover_from`).
    pub scanned_from: u64,
    /// End of valid data: the next append goes here.
    pub end: u64,
    /// Records re-dispatched to consume queues and index.
    pub records_replayed: u64,
    /// `[start, end)` ranges of corrupt bytes that were skipped.
    pub corrupt_ranges: Vec<(u64, u64)>,
    /// Nonzero bytes past the end that were zeroed (a torn tail).
    pub torn_bytes: u64,
    /// Queue offsets left as holes because their records were unreadable.
    pub holes: u64,
}

enum Step {
    Record(record::Record, u64),
    Blank(u64),
    End,
    Invalid,
}

/// What starts at `pos`, given the bytes from there to the end of its segment.
/// Any valid record counts, even one larger than today's `max_record_size`: the
/// limit may have been lowered since it was written.
fn step(bytes: &[u8], pos: u64) -> Step {
    if bytes.len() < record::BLANK_HEADER_SIZE {
        return Step::Invalid;
    }
    match record::peek_frame(bytes) {
        Frame::End => Step::End,
        Frame::Blank(len) if len as usize == bytes.len() => Step::Blank(len as u64),
        Frame::Record(len) if len as usize <= bytes.len() => {
            match record::decode(&bytes[..len as usize], pos) {
                Ok(rec) => Step::Record(rec, len as u64),
                Err(_) => Step::Invalid,
            }
        }
        _ => Step::Invalid,
    }
}

/// The distance to the next valid record or filler within `window` bytes, if any.
fn resync(bytes: &[u8], pos: u64, window: u64) -> Option<u64> {
    let limit = (window as usize).min(bytes.len());
    (1..limit)
        .find(|&skip| {
            matches!(
                step(&bytes[skip..], pos + skip as u64),
                Step::Record(..) | Step::Blank(_)
            )
        })
        .map(|skip| skip as u64)
}

pub(crate) fn recover(inner: &Inner, checkpoint: Option<Checkpoint>) -> Result<RecoveryReport> {
    let log = &inner.commit_log;
    let max_record = inner.config.max_record_size_bytes as u64;
    let start = checkpoint
        .map_or(0, |c| c.recover_from)
        .max(log.min_offset());
    for cq in inner.queues.all() {
        cq.truncate_from_physical(start);
    }
    let mut index = inner.index.lock();
    index.truncate_from(start);

    let mut report = RecoveryReport {
        scanned_from: start,
        ..RecoveryReport::default()
    };
    let mut pos = start;
    while let Some(seg) = log.segment(pos) {
        let rel = (pos - seg.base()) as usize;
        // SAFETY: recovery runs before the writer and any reader exist.
        let bytes = unsafe { seg.slice(rel, seg.len() as usize - rel) };
        match step(bytes, pos) {
            Step::Record(rec, len) => {
                dispatch(inner, &mut index, &rec, &mut report)?;
                report.records_replayed += 1;
                pos += len;
            }
            Step::Blank(len) => pos += len,
            Step::End => break,
            Step::Invalid => match resync(bytes, pos, max_record + RECORD_HEADER_SIZE as u64) {
                Some(skip) => {
                    tracing::error!(
                        start = pos,
                        end = pos + skip,
                        "corrupt bytes in the commit log; skipping them"
                    );
                    dispatch_damaged(inner, &bytes[..skip as usize], pos)?;
                    report.corrupt_ranges.push((pos, pos + skip));
                    pos += skip;
                }
                // Nothing valid follows in this segment. If the next segment
                // starts with a valid record, the damage was the end of this one
                // (its last record or filler), not a torn tail: keep going there.
                None if next_segment_starts_valid(inner, &seg) => {
                    tracing::error!(
                        start = pos,
                        end = seg.end(),
                        "corrupt end of a segment; continuing with the next one"
                    );
                    report.corrupt_ranges.push((pos, seg.end()));
                    pos = seg.end();
                }
                None => break,
            },
        }
    }
    report.end = pos;
    if let Some(seg) = log.segment(pos) {
        report.torn_bytes = zero_tail(&seg, pos, max_record);
        if report.torn_bytes > 0 {
            tracing::warn!(
                at = pos,
                bytes = report.torn_bytes,
                "truncated a torn commit-log tail"
            );
        }
    }
    log.remove_segments_after(pos)?;
    log.reset_watermarks(pos, start);
    for cq in inner.queues.all() {
        cq.publish();
    }
    Ok(report)
}

/// Whether the segment after `seg` exists and begins with a valid record.
fn next_segment_starts_valid(inner: &Inner, seg: &MappedFile) -> bool {
    let Some(next) = inner.commit_log.segment(seg.end()) else {
        return false;
    };
    // SAFETY: recovery runs before the writer and any reader exist.
    let bytes = unsafe { next.slice(0, next.len() as usize) };
    matches!(step(bytes, next.base()), Step::Record(..))
}

/// Rebuilds the consume-queue entry and index entries of a valid record.
fn dispatch(
    inner: &Inner,
    index: &mut Index,
    rec: &record::Record,
    report: &mut RecoveryReport,
) -> Result<()> {
    let cq = inner.queues.get_or_create(&rec.topic, rec.queue_id)?;
    if cq.is_empty() && rec.queue_offset > cq.next_offset() {
        cq.start_at(rec.queue_offset);
    }
    if rec.queue_offset < cq.next_offset() {
        tracing::error!(
            topic = %rec.topic,
            queue = rec.queue_id,
            offset = rec.queue_offset,
            "record repeats a queue offset; ignoring it"
        );
        return Ok(());
    }
    report.holes += cq.fill_holes_until(rec.queue_offset)?;
    cq.ensure_capacity(rec.queue_offset)?;
    cq.write(
        rec.queue_offset,
        &CqEntry {
            physical_offset: rec.physical_offset,
            size: rec.size,
            tag_hash: tag_hash(&rec.tag),
            store_timestamp: rec.store_timestamp,
        },
    );
    for key in &rec.keys {
        index.ensure_capacity(1)?;
        index.put(
            key_hash(&rec.topic, key),
            IndexHit {
                physical_offset: rec.physical_offset,
                size: rec.size,
                store_timestamp: rec.store_timestamp,
            },
        );
    }
    Ok(())
}

/// A corrupt record whose header still names its queue and exact next offset gets a
/// consume-queue entry, so that reading it reports the corruption at that offset.
fn dispatch_damaged(inner: &Inner, bytes: &[u8], pos: u64) -> Result<()> {
    if bytes.len() < RECORD_HEADER_SIZE {
        return Ok(());
    }
    let header = record::parse_header(bytes);
    let Some(topic) = record::topic_of(bytes) else {
        return Ok(());
    };
    if header.physical_offset != pos || header.total_size as usize != bytes.len() {
        return Ok(());
    }
    if let Some(cq) = inner.queues.get(topic, header.queue_id)
        && cq.next_offset() == header.queue_offset
    {
        cq.ensure_capacity(header.queue_offset)?;
        cq.write(
            header.queue_offset,
            &CqEntry {
                physical_offset: pos,
                size: header.total_size,
                tag_hash: 0,
                store_timestamp: header.store_timestamp,
            },
        );
    }
    Ok(())
}

/// Zeroes leftover bytes after the end of valid data: everything up to the first
/// all-zero chunk past the resync window. Returns how many nonzero bytes it cleared.
fn zero_tail(seg: &MappedFile, end: u64, window: u64) -> u64 {
    const CHUNK: usize = 64 * 1024;
    let zeros = vec![0u8; CHUNK];
    let mut rel = (end - seg.base()) as usize;
    let must_clear_to = rel.saturating_add(window as usize + RECORD_HEADER_SIZE);
    let mut cleared = 0u64;
    while rel < seg.len() as usize {
        let len = CHUNK.min(seg.len() as usize - rel);
        // SAFETY: recovery runs before the writer and any reader exist.
        let chunk = unsafe { seg.slice(rel, len) };
        let dirty = chunk.iter().filter(|&&b| b != 0).count() as u64;
        if dirty == 0 && rel >= must_clear_to {
            break;
        }
        if dirty > 0 {
            // SAFETY: as above.
            unsafe { seg.write(rel, &zeros[..len]) };
            cleared += dirty;
        }
        rel += len;
    }
    cleared
}
