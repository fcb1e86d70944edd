//! Truncating the commit log: a follower whose tail diverges from its master's
//! history drops it (`Store::truncate_log`), then appends the master's bytes.
//!
//! The cut must be a frame boundary, or the start of a range recovery found
//! damaged at this open (no frame to check there). Everything from the cut
//! on goes: log bytes are zeroed and later segments
//! deleted, consume-queue entries of records at or after it are dropped (the
//! queues end lower: a deliberate truncation gives the offsets out again, with
//! the master's records), key-index entries too, and epochs that start at or
//! after it (also when the cut is the log end: such epochs hold no records).
//! A cut that drops a topic deletion's marker undoes the deletion: the topic
//! is rebuilt from its records below the cut (undelete.rs). A truncation is
//! recorded first, with the topics whose deletion it undoes, so a crash
//! part-way is finished on the next open:
//!
//! ```text
//!  truncating   (little-endian; replaced atomically: tmp, fsync, rename)
//!  +-----------+--------+---------+------------+
//!  | magic u32 | to u64 | end u64 | crc32c u32 |   crc32c covers the first 20 bytes
//!  +-----------+--------+---------+------------+
//!  then, only when the cut undoes deletions:
//!  +-----------+---------------------------------+------------+
//!  | count u16 | count x (len u16, name: len B)  | crc32c u32 |   crc32c covers
//!  +-----------+---------------------------------+------------+   every byte before it
//!  magic 0xDD0A7C07; `end`: the log end when the truncation began; a record
//!  of exactly 24 bytes (the only form before undoing existed) undoes nothing
//! ```
//!
//! Order: record the cut; mark the truncation running (readers that meet it
//! wait and read again: `CommitLog::read_stable`); lower the watermarks; drop
//! queue entries; rebuild the topics whose deletion is undone; drop index
//! entries; zero the log bytes and delete later segments;
//! flush; drop the epochs; write a checkpoint (it never claims more than remains); delete the
//! record. On open, a recorded cut is applied to the log before recovery, and
//! recovery starts no later than the cut without comparing the derived files
//! with a checkpoint taken past it; the undone topics are rebuilt after
//! recovery; the record goes once the checkpoint after that is written. A truncation that fails part-way (an I/O error after
//! the cut was recorded) leaves the writer refusing every write until a
//! truncation to the cut or below succeeds (or the store is reopened): the
//! next open would otherwise zero what was written meanwhile.

use std::ops::Range;
use std::path::Path;

use super::Inner;
use super::checkpoint::Checkpoint;
use super::commit_log::CommitLog;
use super::consume_queue::ConsumeQueue;
use super::error::{Result, StoreError};
use super::mapped_file::{replace_file, sync_dir};
use super::rewrites::Rewriting;
use super::writer::Writer;

const FILE: &str = "truncating";
const MAGIC: u32 = 0xDD0A_7C07;
/// The fixed part of the record.
const HEAD_SIZE: usize = 24;

/// A truncation recorded before it is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cut {
    pub to: u64,
    /// The log end when it began: bytes up to here may need zeroing.
    pub end: u64,
    /// Topics whose deletion marker lies in the cut tail, sorted.
    pub undeleted: Vec<String>,
}

impl Cut {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEAD_SIZE);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&self.to.to_le_bytes());
        b.extend_from_slice(&self.end.to_le_bytes());
        b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
        if self.undeleted.is_empty() {
            return b;
        }
        b.extend_from_slice(&(self.undeleted.len() as u16).to_le_bytes());
        for topic in &self.undeleted {
            b.extend_from_slice(&(topic.len() as u16).to_le_bytes());
            b.extend_from_slice(topic.as_bytes());
        }
        b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
        b
    }

    /// The undeleted topics a whole record names, `None` if it is damaged.
    fn decode_undeleted(bytes: &[u8]) -> Option<Vec<String>> {
        if bytes.len() == HEAD_SIZE {
            return Some(Vec::new());
        }
        let (covered, crc) = bytes.split_last_chunk::<4>()?;
        if crc32c::crc32c(covered) != u32::from_le_bytes(*crc) {
            return None;
        }
        let mut rest = covered.get(HEAD_SIZE..)?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (taken, after) = rest.split_at_checked(n)?;
            rest = after;
            Some(taken)
        };
        let u16_of = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) as usize;
        let count = u16_of(take(2)?);
        let mut topics = Vec::with_capacity(count);
        for _ in 0..count {
            let len = u16_of(take(2)?);
            topics.push(String::from_utf8(take(len)?.to_vec()).ok()?);
        }
        rest.is_empty().then_some(topics)
    }

    fn load(dir: &Path) -> Result<Option<Cut>> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let head_valid = bytes.len() >= HEAD_SIZE
            && bytes[0..4] == MAGIC.to_le_bytes()
            && bytes[20..24] == crc32c::crc32c(&bytes[..20]).to_le_bytes();
        let undeleted = head_valid.then(|| Self::decode_undeleted(&bytes)).flatten();
        let Some(undeleted) = undeleted else {
            // Which bytes the interrupted truncation would have dropped (or
            // which deletions it undid) is unknown: guessing could keep a
            // divergent tail.
            return Err(StoreError::Corrupt {
                offset: 0,
                reason: format!(
                    "{} is damaged: an interrupted log truncation cannot be finished; \
                     rebuild this member's data directory from its group",
                    path.display()
                ),
            });
        };
        Ok(Some(Cut {
            to: u64_at(4),
            end: u64_at(12),
            undeleted,
        }))
    }
}

impl Writer {
    /// Drops the log from `to` (a frame boundary at or below the end) on.
    /// See the module documentation.
    pub fn truncate(&mut self, to: u64) -> Result<()> {
        let inner = self.inner.clone();
        // After a failed truncation, bytes up to where the log then ended may
        // still need zeroing; only a cut at or below it finishes it.
        let (end, zero_to, mut undeleted) = match &self.unfinished_cut {
            Some(cut) if to > cut.to => return self.check_no_unfinished_cut(),
            // Its undoing may have dropped tombstones already.
            Some(cut) => (self.write_pos, cut.end, cut.undeleted.clone()),
            None => (self.write_pos, self.write_pos, Vec::new()),
        };
        // Where this member's own bytes are damaged there is no frame to
        // check (the cut comes from the master's history); all from the cut
        // on goes anyway, and the damage before it stays healable.
        let damage = inner.damage.lock().unhealed.clone();
        let damage_starts_here =
            to >= inner.commit_log.min_offset() && damage.iter().any(|r| r.start == to);
        if !damage_starts_here {
            super::raw_log::check_boundary(&inner, to, end)?;
        }
        if to == zero_to {
            // Nothing to cut from the log; epochs begun at its end hold no
            // records (a master that wrote nothing) and go.
            return inner.epochs.truncate_from(to);
        }
        // Only a tombstone's marker lies at its position (deletion.rs).
        undeleted.extend(inner.queues.deleted_within(to, end));
        undeleted.sort();
        undeleted.dedup();
        let cut = Cut {
            to,
            end: zero_to,
            undeleted,
        };
        let mut checkpointed = inner.checkpointed.lock();
        let _rewriting = Rewriting::begin(&inner.rewrites);
        replace_file(&inner.config.data_dir, FILE, &cut.encode())?;
        let undeleted = cut.undeleted.clone();
        self.unfinished_cut = Some(cut);
        let _readers_wait = inner.commit_log.begin_truncation();
        inner.commit_log.lower_watermarks(to);
        self.write_pos = to;
        inner.arrivals.send_replace(to);
        for cq in inner.queues.all() {
            cq.truncate_to(queue_end_at_cut(&cq, to, &damage))?;
        }
        super::undelete::restore(&inner, &undeleted, to)?;
        inner.index.lock().truncate_from(to);
        cut_log(&inner.commit_log, to, zero_to)?;
        inner.epochs.truncate_from(to)?;
        inner.damage.lock().unhealed.retain(|range| range.end <= to);
        super::checkpoint_locked(&inner, &mut checkpointed, true)?;
        finished(&inner.config.data_dir)?;
        self.unfinished_cut = None;
        Ok(())
    }
}

/// Where a queue ends once the log is cut at `to`: entries of records at or
/// past it go, and so do holes before a dropped entry when no damage this
/// open found lies between the record before them and the cut, since their
/// records were past it (left, they would shift every offset the master's
/// records bring). Otherwise they may stand for records before the cut, and
/// stay, as recovery keeps holes.
fn queue_end_at_cut(cq: &ConsumeQueue, to: u64, damage: &[Range<u64>]) -> u64 {
    let min = cq.min_offset();
    let mut end = cq.next_offset();
    while end > min {
        let Some(entry) = cq.entry(end - 1) else {
            break;
        };
        if !entry.is_hole() {
            if entry.physical_offset < to {
                break;
            }
            end -= 1;
            continue;
        }
        let mut holes_from = end - 1;
        while holes_from > min && cq.entry(holes_from - 1).is_some_and(|e| e.is_hole()) {
            holes_from -= 1;
        }
        let after_previous = (holes_from > min)
            .then(|| cq.entry(holes_from - 1))
            .flatten()
            .map(|e| e.physical_offset + e.size as u64);
        let maybe_before_cut =
            after_previous.is_none_or(|from| damage.iter().any(|r| r.start < to && r.end > from));
        if maybe_before_cut {
            break;
        }
        end = holes_from;
    }
    end
}

/// Zeroes the log bytes in `to..end`, durably, and deletes the segments after
/// the one holding `to`.
fn cut_log(log: &CommitLog, to: u64, end: u64) -> Result<()> {
    const CHUNK: usize = 64 * 1024;
    let zeros = vec![0u8; CHUNK];
    let mut pos = to;
    while pos < end {
        let Some(seg) = log.segment(pos) else { break };
        let stop = end.min(seg.end());
        let from = (pos - seg.base()) as usize;
        let mut at = from;
        while at < (stop - seg.base()) as usize {
            let len = CHUNK.min((stop - seg.base()) as usize - at);
            // SAFETY: at or past `visible` (lowered to `to` before), so no
            // reader looks at it; the writer (or recovery) runs alone.
            unsafe { seg.write_through(at, &zeros[..len]) }?;
            at += len;
        }
        seg.flush_range(from, at - from)?;
        pos = stop;
    }
    log.remove_segments_after(to)
}

/// What open found of an interrupted truncation.
#[derive(Debug)]
pub(crate) struct Resumed {
    /// The checkpoint recovery may use: never one that claims data past the cut.
    pub checkpoint: Option<Checkpoint>,
    /// The recorded cut: once recovery ran, [`finish_undeletions`], and
    /// [`finished`] once a checkpoint after that is written.
    pub pending: Option<Cut>,
}

/// Open, before recovery: carries out a recorded truncation on the log.
pub(crate) fn resume(inner: &Inner, checkpoint: Option<Checkpoint>) -> Result<Resumed> {
    let Some(cut) = Cut::load(&inner.config.data_dir)? else {
        return Ok(Resumed {
            checkpoint,
            pending: None,
        });
    };
    tracing::warn!(
        to = cut.to,
        end = cut.end,
        "finishing a commit-log truncation interrupted by a crash"
    );
    let log = &inner.commit_log;
    cut_log(log, cut.to, cut.end.min(log.stored_end()))?;
    inner.epochs.truncate_from(cut.to)?;
    let checkpoint = checkpoint.map(|c| {
        if c.recover_from <= cut.to {
            // It may call the log durable past the cut (flushed on after the
            // point it recovers from): bytes the cut dropped are not lost.
            return Checkpoint {
                commit_log_flushed: c.commit_log_flushed.min(cut.to),
                ..c
            };
        }
        // What it recorded of the derived files was past the cut: recovery
        // truncates them to the cut and does not compare.
        Checkpoint {
            commit_log_flushed: c.commit_log_flushed.min(cut.to),
            recover_from: cut.to,
            segment_size: c.segment_size,
            index_tip: Default::default(),
            queue_ends: None,
        }
    });
    Ok(Resumed {
        checkpoint,
        pending: Some(cut),
    })
}

/// Open, after recovery: rebuilds the topics whose deletion the recorded cut
/// undoes (recovery left them as the tombstones the cut tail set said).
pub(crate) fn finish_undeletions(inner: &Inner, cut: &Cut) -> Result<()> {
    super::undelete::restore(inner, &cut.undeleted, cut.to)
}

/// Deletes the record of a truncation that is complete.
pub(crate) fn finished(dir: &Path) -> Result<()> {
    let path = dir.join(FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("deleting {}", path.display()), e)),
    }
}
