//! The commit log: one append-only sequence of records across fixed-size segment
//! files, addressed by a global byte position (the physical offset).
//!
//! ```text
//!  commitlog/00000000000000000000   segment 0: physical offsets [0, S)
//!  commitlog/00000000001073741824   segment 1: physical offsets [S, 2S)   (S = segment size)
//!
//!  segment: | record | record | ... | record | filler (rest of segment) |
//! ```
//! A segment's base is always a multiple of the segment size, so the segment of a
//! position is found by division. The single writer appends; readers read below the
//! `visible` watermark, which the writer moves only after a record is fully written
//! and dispatched to the consume queues and index.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::error::{Result, StoreError};
use super::mapped_file::{self, MappedFile};
use super::record::{self, Record};

/// The segment files and the read/flush watermarks.
#[derive(Debug)]
pub struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    segments: RwLock<Vec<Arc<MappedFile>>>,
    visible: AtomicU64,
    flushed: AtomicU64,
    flush_lock: Mutex<()>,
}

impl CommitLog {
    /// Maps the existing segments. They must be contiguous (retention only ever
    /// removes the oldest). A segment shorter than `segment_size` (truncated) is
    /// extended with zeros, so recovery reports the lost bytes as damage; what
    /// was done is added to `repairs`. `written_with` is the segment size the
    /// checkpoint recorded; without one, segments that all share another size
    /// mean the configured size changed, which is refused.
    pub fn open(
        dir: PathBuf,
        segment_size: u64,
        written_with: Option<u64>,
        repairs: &mut Vec<String>,
    ) -> Result<CommitLog> {
        let size_changed = |path: &Path, len: u64| {
            StoreError::InvalidConfig(format!(
                "segment {} is {len} bytes but segment_size_bytes is {segment_size}; \
                 the segment size cannot change for an existing store",
                path.display()
            ))
        };
        let found = mapped_file::list_dir(&dir)?;
        let mut lens = Vec::with_capacity(found.len());
        for (_, path) in &found {
            let len = std::fs::metadata(path)
                .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
                .len();
            lens.push(len);
        }
        if let Some((path, &len)) = found.first().map(|f| &f.1).zip(lens.first())
            && written_with.is_none_or(|w| w != segment_size)
            && len != segment_size
            && len % 4096 == 0
            && lens.iter().all(|&l| l == len)
        {
            return Err(size_changed(path, len));
        }
        let mut segments = Vec::new();
        for ((base, path), len) in found.into_iter().zip(lens) {
            if base % segment_size != 0 || len > segment_size {
                return Err(size_changed(&path, len));
            }
            if len < segment_size {
                MappedFile::extend_to(&path, segment_size)?;
                let repair = format!(
                    "segment {} was truncated to {len} of {segment_size} bytes; \
                     extended with zeros, records past byte {len} are lost",
                    path.display()
                );
                tracing::error!("{repair}");
                repairs.push(repair);
            }
            segments.push(Arc::new(MappedFile::open(&path, base, segment_size)?));
        }
        for pair in segments.windows(2) {
            if pair[0].end() != pair[1].base() {
                return Err(StoreError::Corrupt {
                    offset: pair[0].end(),
                    reason: format!(
                        "commit log has a missing segment before {}",
                        pair[1].path().display()
                    ),
                });
            }
        }
        Ok(CommitLog {
            dir,
            segment_size,
            segments: RwLock::new(segments),
            visible: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Oldest physical offset still stored.
    pub fn min_offset(&self) -> u64 {
        self.segments.read().first().map_or(0, |s| s.base())
    }

    /// One past the last byte of the newest segment file (0 without segments).
    pub fn stored_end(&self) -> u64 {
        self.segments.read().last().map_or(0, |s| s.end())
    }

    /// End of published data.
    pub fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// Durably flushed up to here.
    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// Number of segment files and their total size.
    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// The base of the segment holding `pos`.
    pub fn segment_base(&self, pos: u64) -> u64 {
        pos - pos % self.segment_size
    }

    /// The segment holding `pos`, if it exists.
    pub fn segment(&self, pos: u64) -> Option<Arc<MappedFile>> {
        let segments = self.segments.read();
        let first = segments.first()?.base();
        if pos < first {
            return None;
        }
        segments
            .get(((pos - first) / self.segment_size) as usize)
            .cloned()
    }

    /// Snapshot of the segment list.
    pub fn segments(&self) -> Vec<Arc<MappedFile>> {
        self.segments.read().clone()
    }

    /// Makes sure the segment starting at `base` exists, creating it (and any before
    /// it) preallocated. Writer only; fails with disk full before anything is written.
    pub fn ensure_segment(&self, base: u64) -> Result<Arc<MappedFile>> {
        if let Some(seg) = self.segment(base) {
            return Ok(seg);
        }
        let next = self.segments.read().last().map_or(base, |s| s.end());
        let mut created = None;
        let mut at = next.min(base);
        while at <= base {
            let seg = Arc::new(MappedFile::create(&self.dir, at, self.segment_size)?);
            self.segments.write().push(seg.clone());
            created = Some(seg);
            at += self.segment_size;
        }
        Ok(created.expect("loop runs at least once"))
    }

    /// Writes a contiguous run of bytes at `pos` through the files (see
    /// [`MappedFile::write_through`]), split at segment ends.
    ///
    /// # Safety
    /// Writer only, at or past `visible`, within existing segments.
    pub unsafe fn write_run(&self, mut pos: u64, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let seg = self.segment(pos).expect("segment ensured before write");
            let n = data.len().min((seg.end() - pos) as usize);
            // SAFETY: the region is past `visible` (caller contract), so unread.
            unsafe { seg.write_through((pos - seg.base()) as usize, &data[..n]) }?;
            pos += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    /// Publishes everything below `pos` to readers.
    pub fn publish(&self, pos: u64) {
        self.visible.store(pos, Ordering::Release);
    }

    /// Reads the record at `pos` whose size is known (from a consume queue or index).
    pub fn read(&self, pos: u64, size: u32) -> Result<Record> {
        let buf = self.read_bytes(pos, size)?;
        record::decode(&buf, pos)
    }

    /// Copies `size` published bytes at `pos`.
    pub fn read_bytes(&self, pos: u64, size: u32) -> Result<Vec<u8>> {
        let end = pos.saturating_add(size as u64);
        let not_stored = || StoreError::Corrupt {
            offset: pos,
            reason: format!(
                "{size} bytes at {pos} are not in the stored range {}..{}",
                self.min_offset(),
                self.visible()
            ),
        };
        if end > self.visible() {
            return Err(not_stored());
        }
        let seg = self.segment(pos).ok_or_else(not_stored)?;
        if end > seg.end() {
            return Err(not_stored());
        }
        // SAFETY: the range is below `visible`, so the writer no longer touches it.
        Ok(unsafe { seg.slice((pos - seg.base()) as usize, size as usize) }.to_vec())
    }

    /// Durably flushes the log up to `to`. Concurrent callers serialize; a caller
    /// whose range was flushed by another returns at once (group commit).
    pub fn flush_to(&self, to: u64) -> Result<()> {
        if self.flushed() >= to {
            return Ok(());
        }
        let _guard = self.flush_lock.lock();
        let from = self.flushed();
        if from >= to {
            return Ok(());
        }
        let mut at = from;
        while at < to {
            let Some(seg) = self.segment(at) else { break };
            let stop = to.min(seg.end());
            seg.flush_range((at - seg.base()) as usize, (stop - at) as usize)?;
            at = stop;
        }
        self.flushed.store(to, Ordering::Release);
        Ok(())
    }

    /// Recovery: sets the watermarks once the end of valid data is known.
    pub fn reset_watermarks(&self, visible: u64, flushed: u64) {
        self.visible.store(visible, Ordering::Release);
        self.flushed.store(flushed.min(visible), Ordering::Release);
    }

    /// Truncation: moves the end back to `to`, so readers stop before it, and
    /// the flushed mark with it. Waits for a flush in progress, which would
    /// otherwise set the flushed mark past the new end afterwards.
    pub fn lower_watermarks(&self, to: u64) {
        let _guard = self.flush_lock.lock();
        self.visible.fetch_min(to, Ordering::AcqRel);
        self.flushed.fetch_min(to, Ordering::AcqRel);
    }

    /// Recovery and truncation: deletes segments that start after the segment holding `end`; they
    /// can only hold unacknowledged leftovers (or be empty spares).
    pub fn remove_segments_after(&self, end: u64) -> Result<()> {
        let keep_base = self.segment_base(end);
        let doomed: Vec<_> = {
            let mut segments = self.segments.write();
            let keep = segments
                .iter()
                .position(|s| s.base() > keep_base)
                .unwrap_or(segments.len());
            segments.drain(keep..).collect()
        };
        for seg in doomed {
            seg.remove()?;
        }
        Ok(())
    }

    /// Retention: deletes the oldest segment. Never the one holding `visible`.
    pub fn remove_oldest(&self) -> Result<Option<u64>> {
        let seg = {
            let mut segments = self.segments.write();
            match segments.first() {
                Some(s) if s.end() <= self.segment_base(self.visible()) => segments.remove(0),
                _ => return Ok(None),
            }
        };
        seg.remove()?;
        Ok(Some(seg.base()))
    }
}
