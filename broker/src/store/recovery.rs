//! Crash recovery. Consume queues and the key index are derived data: recovery
//! drops whatever they hold past the checkpoint and re-dispatches from the commit
//! log, scanning forward and validating every record. Derived files found damaged
//! (missing, short, zeroed, or not matching the checkpoint's record of them) are
//! deleted and rebuilt from the whole log in the same scan.
//!
//! The scan distinguishes two kinds of damage:
//! * a **torn tail** — the last write was cut short; no valid record follows
//!   anywhere in the log, so the log ends there and the leftover bytes are zeroed;
//! * **damage in the middle** — zeros or garbage followed, anywhere later in the
//!   log, by a valid record (one whose CRC and stored physical offset both check
//!   out); the bad bytes are reported and skipped, and the records after them are
//!   kept. The search for the next record only reads ranges the file system said
//!   held data (`SEEK_DATA`) before recovery read anything (see
//!   [`DataExtents`]), and only where a frame's magic occurs.
//!
//! Segments past the one holding the end hold no valid record (they are empty
//! spares or leftovers) and are deleted.

use std::collections::{HashMap, HashSet};

use super::Inner;
use super::checkpoint::{Checkpoint, QueueName};
use super::consume_queue::{CqEntry, tag_hash};
use super::data_extents::DataExtents;
use super::deletion;
use super::error::Result;
use super::index::{Index, IndexHit, IndexTip, key_hash};
use super::mapped_file::MappedFile;
use super::record::{self, Frame, RECORD_HEADER_SIZE};

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Where the scan started (the checkpoint's `recover_from`, or the start of
    /// the log when derived files were rebuilt).
    pub scanned_from: u64,
    /// End of valid data: the next append goes here.
    pub end: u64,
    /// Records re-dispatched to consume queues and index past the checkpoint.
    pub records_replayed: u64,
    /// `[start, end)` ranges of corrupt bytes that were skipped.
    pub corrupt_ranges: Vec<(u64, u64)>,
    /// Nonzero bytes past the end that were zeroed (a torn tail).
    pub torn_bytes: u64,
    /// Queue offsets left as holes because their records were unreadable.
    pub holes: u64,
    /// Bytes the last checkpoint recorded as durable that are no longer in the
    /// log (a truncated or damaged segment end).
    pub lost_bytes: u64,
    /// Damaged files found, each naming the file and what was done about it.
    pub repairs: Vec<String>,
}

impl RecoveryReport {
    /// True when recovery found damage (not counting an ordinary torn tail).
    pub fn found_damage(&self) -> bool {
        !self.corrupt_ranges.is_empty() || self.lost_bytes > 0 || !self.repairs.is_empty()
    }
}

pub(super) enum Step {
    Record(record::Record, u64),
    Blank(u64),
    End,
    Invalid,
}

/// What starts at `pos`, given the bytes from there to the end of its segment.
/// Any valid record counts, even one larger than today's `max_record_size`: the
/// limit may have been lowered since it was written.
pub(super) fn step(bytes: &[u8], pos: u64) -> Step {
    if bytes.len() < record::BLANK_HEADER_SIZE {
        return Step::Invalid;
    }
    match record::peek_frame(bytes) {
        Frame::End => Step::End,
        Frame::Blank(len) if len as usize == bytes.len() => Step::Blank(len as u64),
        // The stored position is checked before the CRC: a search for the next
        // record tries every magic-like pair of bytes, and most are in bodies.
        Frame::Record(len)
            if len as usize <= bytes.len()
                && len as usize >= RECORD_HEADER_SIZE
                && record::parse_header(bytes).physical_offset == pos =>
        {
            match record::decode(&bytes[..len as usize], pos) {
                Ok(rec) => Step::Record(rec, len as u64),
                Err(_) => Step::Invalid,
            }
        }
        _ => Step::Invalid,
    }
}

/// The last two bytes of both frame magics (little-endian `..0A DD`), at byte 6
/// of a frame: where a search for the next frame looks.
const MAGIC_TAIL: [u8; 2] = [0x0A, 0xDD];
const MAGIC_TAIL_AT: u64 = 6;

/// The position of the next valid record or filler at or after `from` and
/// before `limit`, anywhere in the log. Reads nothing at or past `limit`, so a
/// reader may call it with the published end as the limit.
pub(crate) fn next_frame(inner: &Inner, from: u64, limit: u64) -> Option<u64> {
    find_frame(inner, from, limit, |seg, rel| seg.next_data(rel))
}

/// [`next_frame`], reading only the ranges `next_data(segment, at)` names.
fn find_frame(
    inner: &Inner,
    from: u64,
    limit: u64,
    next_data: impl Fn(&MappedFile, u64) -> Option<std::ops::Range<u64>>,
) -> Option<u64> {
    let log = &inner.commit_log;
    let mut pos = from;
    while let Some(seg) = log.segment(pos).filter(|_| pos < limit) {
        let seg_limit = (limit.min(seg.end()) - seg.base()) as usize;
        let mut rel = pos - seg.base();
        while let Some(data) = next_data(&seg, rel).filter(|d| (d.start as usize) < seg_limit) {
            let data_end = (data.end as usize).min(seg_limit);
            // SAFETY: below `limit`: either recovery runs alone, or the caller
            // passed the published end, below which nothing is written.
            let bytes = unsafe { seg.slice(data.start as usize, data_end - data.start as usize) };
            for hit in memchr::memmem::find_iter(bytes, &MAGIC_TAIL) {
                let Some(at) = (data.start + hit as u64).checked_sub(MAGIC_TAIL_AT) else {
                    continue;
                };
                if at < rel {
                    continue;
                }
                // SAFETY: as above.
                let frame = unsafe { seg.slice(at as usize, seg_limit - at as usize) };
                if matches!(
                    step(frame, seg.base() + at),
                    Step::Record(..) | Step::Blank(_)
                ) {
                    return Some(seg.base() + at);
                }
            }
            rel = data_end as u64;
        }
        pos = seg.end();
    }
    None
}

/// The most holes one record may open in its queue (records lost to damage
/// before it): a frame forged inside a body, found after damage, cannot make
/// recovery write entries without bound.
const MAX_HOLES_PER_RECORD: u64 = 1 << 20;

/// Derived data rebuilt from the start of the log.
#[derive(Debug, Default)]
struct Rebuild {
    queues: HashSet<QueueName>,
    index: bool,
}

impl Rebuild {
    fn is_empty(&self) -> bool {
        self.queues.is_empty() && !self.index
    }
}

/// Where dispatching one record goes.
#[derive(Debug, Clone, Copy)]
struct Targets {
    queue: bool,
    index: bool,
}

pub(crate) fn recover(
    inner: &Inner,
    checkpoint: Option<&Checkpoint>,
    repairs: Vec<String>,
) -> Result<RecoveryReport> {
    let log = &inner.commit_log;
    let mut report = RecoveryReport {
        repairs,
        ..RecoveryReport::default()
    };
    // Before anything below reads the log (and reads ahead past its end).
    let extents = DataExtents::take(log);
    let recover_from = checkpoint.map_or(0, |c| c.recover_from);
    let stored_end = log.stored_end();
    if recover_from > stored_end {
        report.repairs.push(format!(
            "the commit log in {} ends at {stored_end}, before the checkpoint's position \
             {recover_from}: its last segments are missing, with their records",
            log.dir().display()
        ));
    }
    let start = recover_from.min(stored_end).max(log.min_offset());
    // What the checkpoint recorded of the derived files is comparable only when
    // the scan starts where it was taken.
    let recorded = checkpoint.filter(|c| c.recover_from == start);
    let queue_ends = recorded.and_then(|c| c.queue_ends.as_ref());
    let rebuild = check_queues(inner, start, queue_ends, &mut report)?;
    let mut index = inner.index.lock();
    let index_tip = recorded
        .filter(|c| c.queue_ends.is_some())
        .map(|c| c.index_tip);
    let rebuild = Rebuild {
        index: check_index(&mut index, start, index_tip, &mut report)?,
        ..rebuild
    };
    let scan_from = if rebuild.is_empty() {
        start
    } else {
        log.min_offset()
    };
    report.scanned_from = scan_from;
    let mut pos = scan_from;
    while let Some(seg) = log.segment(pos) {
        let rel = (pos - seg.base()) as usize;
        // SAFETY: recovery runs before the writer and any reader exist.
        let bytes = unsafe { seg.slice(rel, seg.len() as usize - rel) };
        match step(bytes, pos) {
            Step::Record(rec, len) => {
                let targets = if pos >= start {
                    report.records_replayed += 1;
                    Targets {
                        queue: true,
                        index: true,
                    }
                } else {
                    Targets {
                        queue: rebuild.queues.contains(&QueueName {
                            topic: rec.topic.clone(),
                            queue_id: rec.queue_id,
                        }),
                        index: rebuild.index,
                    }
                };
                dispatch(inner, &mut index, &rec, targets, &mut report)?;
                // A marker below the checkpoint was applied before it was taken.
                if pos >= start {
                    replay_deletion(inner, &rec)?;
                }
                pos += len;
            }
            Step::Blank(len) => pos += len,
            Step::End | Step::Invalid => match find_frame(inner, pos + 1, u64::MAX, |seg, rel| {
                extents.next_data(seg, rel)
            }) {
                Some(next) => {
                    tracing::error!(
                        start = pos,
                        end = next,
                        "damaged bytes in the commit log; skipping them"
                    );
                    let in_segment = (next.min(seg.end()) - pos) as usize;
                    dispatch_damaged(inner, &bytes[..in_segment], pos)?;
                    report.corrupt_ranges.push((pos, next));
                    pos = next;
                }
                None => break,
            },
        }
    }
    keep_checkpointed_offsets(inner, checkpoint, &mut report)?;
    report.end = pos;
    if let Some(seg) = log.segment(pos) {
        report.torn_bytes = zero_tail(&seg, pos, inner.config.max_record_size_bytes as u64);
        if report.torn_bytes > 0 {
            tracing::warn!(
                at = pos,
                bytes = report.torn_bytes,
                "truncated a torn commit-log tail"
            );
        }
    }
    if let Some(durable) = checkpoint.map(|c| c.commit_log_flushed)
        && durable > pos
    {
        report.lost_bytes = durable - pos;
        tracing::error!(
            end = pos,
            durable,
            "the commit log ends before data the last checkpoint recorded as durable: \
             damage destroyed the bytes in between"
        );
    }
    log.remove_segments_after(pos)?;
    log.reset_watermarks(pos, start);
    for cq in inner.queues.all() {
        cq.publish();
    }
    Ok(report)
}

/// Truncates every intact queue to the checkpoint and compares it with what the
/// checkpoint recorded; a queue whose files are damaged or disagree is reset,
/// to be rebuilt from the log. Queues the checkpoint knows but whose directory
/// is gone are rebuilt too.
fn check_queues(
    inner: &Inner,
    start: u64,
    queue_ends: Option<&HashMap<QueueName, u64>>,
    report: &mut RecoveryReport,
) -> Result<Rebuild> {
    let mut rebuild = Rebuild::default();
    for (name, &end) in queue_ends.into_iter().flatten() {
        if end > 0
            && inner.queues.get(&name.topic, name.queue_id).is_none()
            && !inner.queues.deleted_since(&name.topic, start)
        {
            inner.queues.get_or_create(&name.topic, name.queue_id)?;
        }
    }
    for (name, cq) in inner.queues.named() {
        let damage = match cq.damage() {
            Some(damage) => Some(damage),
            None => {
                cq.truncate_from_physical(start)?;
                // A topic deleted at or past the checkpoint: what it recorded was
                // the deleted topic's; a topic created again starts empty.
                let recorded_deleted = inner.queues.deleted_since(&name.topic, start);
                let expected = queue_ends.map(|ends| {
                    ends.get(&name)
                        .copied()
                        .filter(|_| !recorded_deleted)
                        .unwrap_or_else(|| cq.min_offset())
                });
                expected.filter(|&end| end != cq.next_offset()).map(|end| {
                    format!(
                        "it holds {} entries below the checkpoint, which recorded {end}",
                        cq.next_offset()
                    )
                })
            }
        };
        if let Some(damage) = damage {
            let repair = format!(
                "consume queue {}/{} rebuilt from the commit log: {damage}",
                name.topic, name.queue_id
            );
            tracing::error!("{repair}");
            report.repairs.push(repair);
            cq.reset()?;
            rebuild.queues.insert(name);
        }
    }
    Ok(rebuild)
}

/// Truncates the index to the checkpoint and compares its newest file with
/// what the checkpoint recorded, or resets a damaged index; returns whether it
/// must be rebuilt from the log.
fn check_index(
    index: &mut Index,
    start: u64,
    recorded: Option<IndexTip>,
    report: &mut RecoveryReport,
) -> Result<bool> {
    let damage = match index.damage() {
        Some(damage) => Some(damage.to_string()),
        None => {
            index.truncate_from(start);
            let tip = index.tip(start);
            recorded.filter(|&r| r != tip).map(|r| {
                format!(
                    "its newest file holds {} entries below the checkpoint, which recorded \
                     {} entries in file {} (a file deleted or emptied)",
                    tip.entries,
                    r.entries,
                    r.file.saturating_sub(1)
                )
            })
        }
    };
    let Some(damage) = damage else {
        return Ok(false);
    };
    let repair = format!("key index rebuilt from the commit log: {damage}");
    tracing::error!("{repair}");
    report.repairs.push(repair);
    index.reset()?;
    Ok(true)
}

/// Queue offsets the checkpoint recorded as given out are never given out again: a
/// queue that ends below its recorded end after recovery lost records to damage
/// (or retention, for a rebuilt queue); its missing offsets become holes,
/// reported to readers as corrupt, and an empty queue starts after them.
fn keep_checkpointed_offsets(
    inner: &Inner,
    checkpoint: Option<&Checkpoint>,
    report: &mut RecoveryReport,
) -> Result<()> {
    let Some(checkpoint) = checkpoint else {
        return Ok(());
    };
    // Queues of a topic deleted after the checkpoint are not kept: the topic
    // starts again from 0 if it is created again.
    let taken = checkpoint.recover_from;
    for (name, &end) in checkpoint
        .queue_ends
        .iter()
        .flatten()
        .filter(|(name, end)| **end > 0 && !inner.queues.deleted_since(&name.topic, taken))
    {
        let cq = inner.queues.get_or_create(&name.topic, name.queue_id)?;
        if cq.next_offset() >= end {
            continue;
        }
        if cq.is_empty() {
            cq.start_at(end);
            continue;
        }
        let from = cq.next_offset();
        report.holes += cq.fill_holes_until(end)?;
        let repair = format!(
            "consume queue {}/{}: offsets {from}..{end} have no record left in the commit log",
            name.topic, name.queue_id
        );
        tracing::error!("{repair}");
        report.repairs.push(repair);
    }
    Ok(())
}

/// Deletes the topic a replayed deletion marker names, as the writer did
/// (or, after a crash, did not get to do) when it appended it.
fn replay_deletion(inner: &Inner, rec: &record::Record) -> Result<()> {
    match deletion::deleted_topic(&rec.topic, &rec.body) {
        Ok(Some(topic)) => deletion::apply(&inner.queues, topic, rec.physical_offset),
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::error!(at = rec.physical_offset, error = %e, "ignoring a bad deletion marker");
            Ok(())
        }
    }
}

/// Rebuilds the consume-queue entry and index entries of a valid record.
fn dispatch(
    inner: &Inner,
    index: &mut Index,
    rec: &record::Record,
    targets: Targets,
    report: &mut RecoveryReport,
) -> Result<()> {
    if targets.queue {
        dispatch_to_queue(inner, rec, report)?;
    }
    if targets.index {
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
    }
    Ok(())
}

pub(super) fn dispatch_to_queue(
    inner: &Inner,
    rec: &record::Record,
    report: &mut RecoveryReport,
) -> Result<()> {
    if inner.queues.is_deleted(&rec.topic, rec.physical_offset) {
        return Ok(());
    }
    let cq = inner.queues.get_or_create(&rec.topic, rec.queue_id)?;
    if cq.is_empty() && rec.queue_offset > cq.next_offset() {
        cq.start_at(rec.queue_offset);
    }
    if rec.queue_offset > cq.next_offset().saturating_add(MAX_HOLES_PER_RECORD) {
        tracing::error!(
            topic = %rec.topic,
            queue = rec.queue_id,
            offset = rec.queue_offset,
            end = cq.next_offset(),
            "record claims a queue offset far past its queue's end; ignoring it"
        );
        return Ok(());
    }
    let entry = CqEntry {
        physical_offset: rec.physical_offset,
        size: rec.size,
        tag_hash: tag_hash(&rec.tag),
        store_timestamp: rec.store_timestamp,
    };
    if rec.queue_offset < cq.next_offset() {
        // A record healed from the group after damage left a hole for it is
        // found again here when the scan starts before it (heal.rs).
        if !cq.fill_hole(rec.queue_offset, &entry)? {
            tracing::error!(
                topic = %rec.topic,
                queue = rec.queue_id,
                offset = rec.queue_offset,
                "record repeats a queue offset; ignoring it"
            );
        }
        return Ok(());
    }
    report.holes += cq.fill_holes_until(rec.queue_offset)?;
    cq.ensure_capacity(rec.queue_offset)?;
    cq.write(rec.queue_offset, &entry);
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
