//! Truncating the commit log: a follower whose tail diverges from its master's
//! history drops it (`Store::truncate_log`), then appends the master's bytes.
//!
//! Everything from the cut on goes: log bytes are zeroed and later segments
//! deleted, consume-queue entries of records at or after it are dropped (the
//! queues end lower: a deliberate truncation gives the offsets out again, with
//! the master's records), key-index entries too, and epochs that start at or
//! after it (also when the cut is the log end: such epochs hold no records). A truncation is recorded first, so a crash part-way is finished
//! on the next open:
//!
//! ```text
//!  truncating   (little-endian, 24 bytes; replaced atomically: tmp, fsync, rename)
//!  +-----------+--------+---------+------------+
//!  | magic u32 | to u64 | end u64 | crc32c u32 |   crc32c covers the first 20 bytes
//!  +-----------+--------+---------+------------+
//!  magic 0xDD0A7C07; `end`: the log end when the truncation began
//! ```
//!
//! Order: record the cut; lower the watermarks (readers stop before it); drop
//! queue and index entries; zero the log bytes and delete later segments;
//! flush; drop the epochs; write a checkpoint (it never claims more than remains); delete the
//! record. On open, a recorded cut is applied to the log before recovery, and
//! recovery starts no later than the cut without comparing the derived files
//! with a checkpoint taken past it; the record goes once the checkpoint after
//! recovery is written. A truncation that fails part-way (an I/O error after
//! the cut was recorded) leaves the writer refusing every write until a
//! truncation to the cut or below succeeds (or the store is reopened): the
//! next open would otherwise zero what was written meanwhile.

use std::path::Path;

use super::Inner;
use super::checkpoint::Checkpoint;
use super::commit_log::CommitLog;
use super::error::{Result, StoreError};
use super::mapped_file::{replace_file, sync_dir};
use super::writer::Writer;

const FILE: &str = "truncating";
const MAGIC: u32 = 0xDD0A_7C07;
const SIZE: usize = 24;

/// A truncation recorded before it is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    pub to: u64,
    /// The log end when it began: bytes up to here may need zeroing.
    pub end: u64,
}

impl Cut {
    fn encode(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.to.to_le_bytes());
        b[12..20].copy_from_slice(&self.end.to_le_bytes());
        let crc = crc32c::crc32c(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn load(dir: &Path) -> Result<Option<Cut>> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let valid = bytes.len() == SIZE
            && bytes[0..4] == MAGIC.to_le_bytes()
            && bytes[20..24] == crc32c::crc32c(&bytes[..20]).to_le_bytes();
        if !valid {
            // Which bytes the interrupted truncation would have dropped is
            // unknown: guessing could keep a divergent tail.
            return Err(StoreError::Corrupt {
                offset: 0,
                reason: format!(
                    "{} is damaged: an interrupted log truncation cannot be finished; \
                     rebuild this member's data directory from its group",
                    path.display()
                ),
            });
        }
        Ok(Some(Cut {
            to: u64_at(4),
            end: u64_at(12),
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
        let (end, zero_to) = match self.unfinished_cut {
            Some(cut) if to > cut.to => return self.check_no_unfinished_cut(),
            Some(cut) => (self.write_pos, cut.end),
            None => (self.write_pos, self.write_pos),
        };
        super::raw_log::check_boundary(&inner, to, end)?;
        if to == zero_to {
            // Nothing to cut from the log; epochs begun at its end hold no
            // records (a master that wrote nothing) and go.
            return inner.epochs.truncate_from(to);
        }
        let cut = Cut { to, end: zero_to };
        let mut checkpointed = inner.checkpointed.lock();
        replace_file(&inner.config.data_dir, FILE, &cut.encode())?;
        self.unfinished_cut = Some(cut);
        inner.commit_log.lower_watermarks(to);
        self.write_pos = to;
        inner.arrivals.send_replace(to);
        for cq in inner.queues.all() {
            cq.truncate_from_physical(to);
        }
        inner.index.lock().truncate_from(to);
        cut_log(&inner.commit_log, to, cut.end)?;
        inner.epochs.truncate_from(to)?;
        super::checkpoint_locked(&inner, &mut checkpointed, true)?;
        finished(&inner.config.data_dir)?;
        self.unfinished_cut = None;
        Ok(())
    }
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
    /// A cut was recorded: [`finished`] once a checkpoint after it is written.
    pub pending: bool,
}

/// Open, before recovery: carries out a recorded truncation on the log.
pub(crate) fn resume(inner: &Inner, checkpoint: Option<Checkpoint>) -> Result<Resumed> {
    let Some(cut) = Cut::load(&inner.config.data_dir)? else {
        return Ok(Resumed {
            checkpoint,
            pending: false,
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
            return c;
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
        pending: true,
    })
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
