//! Healing damage from the group: recovery skips damaged bytes in the middle
//! of the log (their records' queue offsets become holes); a member of a
//! replicated group fetches the intact bytes of such a range from another
//! member (`Store::read_log` there) and writes them back with `Store::heal`.
//!
//! The bytes must cover one range recovery reported at this open
//! (`Store::damaged_ranges`), or a piece of whole frames at its start (the
//! rest stays damaged, so a large range heals in bounded pieces), and are checked as replicated bytes are (see
//! `frames.rs`), each record's queue offset being a hole (or the placeholder
//! of the damaged record) in its queue. They are written in place, durably,
//! and the holes get their entries back. The key index learns the healed
//! records' keys at the next open: from the checkpoint a heal writes before
//! it returns until then, every checkpoint starts recovery no later than the
//! healed range, so that open scans it again, in order, and also fills any
//! hole whose entry a crash kept from being stored. (A crash during the heal,
//! before that checkpoint, can leave the healed records' holes and keys
//! missing: what the damage had lost stays lost, as if not healed.)
//!
//! Damage found at an open is known until the store closes: a member that
//! restarts before healing finds its holes when they are read (as without
//! replication).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::Store;
use super::consume_queue::{ConsumeQueue, CqEntry, tag_hash};
use super::error::{RawLogProblem, Result, StoreError};
use super::frames::{self, FrameLimits, ValidFrame};
use super::record::{self, Frame};
use super::rewrites::Rewriting;
use super::writer::{Writer, WriterRequest};

/// Damage this open found in the middle of the log, and what was healed.
#[derive(Debug, Default)]
pub(crate) struct Damage {
    /// Ranges recovery skipped that no heal has covered yet.
    pub unhealed: Vec<Range<u64>>,
    /// The start of the oldest healed range: checkpoints start recovery no
    /// later than here until the store is reopened (see the module docs).
    pub rescan_from: Option<u64>,
}

/// A hole a healed record fills.
struct Fill {
    queue: Arc<ConsumeQueue>,
    offset: u64,
    entry: CqEntry,
}

impl Writer {
    /// Writes the intact bytes of a damaged range back; see the module docs.
    pub fn heal(&mut self, start: u64, bytes: &[u8]) -> Result<()> {
        self.check_no_unfinished_cut()?;
        let inner = self.inner.clone();
        let end = start.saturating_add(bytes.len() as u64);
        let range = inner
            .damage
            .lock()
            .unhealed
            .iter()
            .find(|r| r.start == start && start < end && end <= r.end)
            .cloned();
        let Some(range) = range.filter(|r| end == r.end || ends_on_a_frame(bytes)) else {
            return Err(StoreError::RawLog {
                position: start,
                problem: RawLogProblem::NotDamaged,
            });
        };
        let limits = FrameLimits {
            segment_size: inner.commit_log.segment_size(),
            max_record_size: inner.config.max_record_size_bytes,
        };
        let mut fills = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            let pos = start + at as u64;
            let bad = |problem: String| StoreError::RawLog {
                position: pos,
                problem: RawLogProblem::BadFrame(problem),
            };
            let frame = frames::check(&bytes[at..], pos, limits, |_| {}).map_err(bad)?;
            if let ValidFrame::Record(record) = &frame
                && !inner.queues.is_deleted(record.topic, pos)
            {
                let h = &record.header;
                let queue = inner
                    .queues
                    .get(record.topic, h.queue_id)
                    .filter(|cq| cq.holds_placeholder(h.queue_offset, pos))
                    .ok_or_else(|| {
                        bad(format!(
                            "offset {} of {}/{} is not a hole the damage left",
                            h.queue_offset, record.topic, h.queue_id
                        ))
                    })?;
                fills.push(Fill {
                    queue,
                    offset: h.queue_offset,
                    entry: CqEntry {
                        physical_offset: pos,
                        size: h.total_size,
                        tag_hash: tag_hash(record.tag),
                        store_timestamp: h.store_timestamp,
                    },
                });
            }
            at += frame.len() as usize;
        }
        let log = &inner.commit_log;
        let _rewriting = Rewriting::begin(&inner.rewrites);
        let mut pos = start;
        while pos < end {
            // Retention may have deleted it meanwhile.
            let seg = log.segment(pos).ok_or(StoreError::RawLog {
                position: pos,
                problem: RawLogProblem::NotDamaged,
            })?;
            let n = end.min(seg.end()) - pos;
            let rel = (pos - seg.base()) as usize;
            let chunk = &bytes[(pos - start) as usize..(pos - start + n) as usize];
            // SAFETY: the range holds no readable record (it is damaged): a
            // reader looking at it fails its CRC check, before or after.
            unsafe { seg.write_through(rel, chunk) }?;
            seg.flush_range(rel, n as usize)?;
            pos += n;
        }
        for fill in fills {
            fill.queue.fill_hole(fill.offset, &fill.entry)?;
        }
        {
            let mut damage = inner.damage.lock();
            if let Some(i) = damage.unhealed.iter().position(|r| *r == range) {
                if end == range.end {
                    damage.unhealed.remove(i);
                } else {
                    damage.unhealed[i] = end..range.end;
                }
            }
            damage.rescan_from = Some(damage.rescan_from.map_or(start, |s| s.min(start)));
        }
        // Durable on return: the checkpoint on disk starts the next open's
        // recovery no later than the range, so it gives the key index the
        // healed keys even after a crash.
        super::write_checkpoint(&inner, true)
    }
}

/// Whether `bytes` are whole frames by their claimed sizes (a piece of a
/// damaged range ends where a frame does; the frames are validated after).
fn ends_on_a_frame(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while at < bytes.len() {
        if bytes.len() - at < record::BLANK_HEADER_SIZE {
            return false;
        }
        let len = match record::peek_frame(&bytes[at..]) {
            Frame::Blank(len) | Frame::Record(len) => len as usize,
            Frame::End | Frame::Garbage => return false,
        };
        at += len;
    }
    at == bytes.len()
}

impl Store {
    /// The ranges of the log recovery found damaged at this open and skipped,
    /// not yet healed (and not yet deleted by retention).
    pub fn damaged_ranges(&self) -> Vec<Range<u64>> {
        let min = self.inner.commit_log.min_offset();
        self.inner
            .damage
            .lock()
            .unhealed
            .iter()
            .filter(|range| range.start >= min)
            .cloned()
            .collect()
    }

    /// Writes back the intact bytes of a damaged range (fetched from another
    /// member with [`Store::read_log`]): they must cover one range of
    /// [`Store::damaged_ranges`], or whole frames at its start (the rest
    /// stays damaged); they are validated as replicated bytes are,
    /// written in place durably, and the queues' holes get their records
    /// back. Key lookups find the healed records after the next open.
    pub async fn heal(&self, start: u64, bytes: Bytes) -> Result<()> {
        let queued = bytes.clone();
        self.with_writer(
            |writer| writer.heal(start, &bytes),
            |reply| WriterRequest::Heal {
                start,
                bytes: queued,
                reply,
            },
        )
        .await
    }
}
