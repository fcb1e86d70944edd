//! A consume queue: the per-(topic, queue) index of commit-log positions, one fixed
//! 32-byte entry per message, so that queue offset `n` is found at byte `32 * n`.
//!
//! ```text
//!  consumequeue/<topic>/<queue_id>/<20-digit first queue offset of the file>
//!
//!  files grow: a queue's first file holds 128 entries (4 KiB), each next one
//!  twice its predecessor, up to `consume_queue_entries_per_file`; a file's
//!  capacity is its length / 32, and file n+1 starts where file n ends
//!
//!  entry (32 bytes, little-endian)
//!  +---------------------+------------+------------+---------------------+---------------------+
//!  | physical_offset u64 | size u32   | reserved   | tag_hash u64        | store_timestamp i64 |
//!  +---------------------+------------+------------+---------------------+---------------------+
//! ```
//!
//! A zero entry (size 0) has never been written. A hole — a queue offset whose record
//! was lost to corruption — is stored as size `u32::MAX` so that offsets stay aligned.
//!
//! Watermarks (all in queue offsets): `min` (older entries are deleted by retention)
//! ≤ `max` (published: readers may read below it) ≤ `written` (written by the single
//! writer, not yet published). `flushed` tracks what is durable.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::error::{Result, StoreError};
use super::mapped_file::{self, MappedFile};

/// Size of one consume-queue entry.
pub const ENTRY_SIZE: usize = 32;
/// Entries of a queue's first file (one 4 KiB block): a topic with many queues
/// that hold few messages costs little space. Later files double up to the
/// configured maximum.
pub const FIRST_FILE_ENTRIES: u64 = 128;
const HOLE_SIZE: u32 = u32::MAX;

/// The hash of a tag stored in consume-queue entries (0 = no tag), so that tag
/// filters can skip messages without reading the commit log.
pub fn tag_hash(tag: &str) -> u64 {
    if tag.is_empty() {
        0
    } else {
        xxhash_rust::xxh3::xxh3_64(tag.as_bytes()).max(1)
    }
}

/// One entry of a consume queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CqEntry {
    pub physical_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
    pub store_timestamp: i64,
}

impl CqEntry {
    /// The placeholder for a queue offset whose record was lost to corruption.
    pub const HOLE: CqEntry = CqEntry {
        physical_offset: u64::MAX,
        size: HOLE_SIZE,
        tag_hash: 0,
        store_timestamp: 0,
    };

    pub fn is_hole(&self) -> bool {
        self.size == HOLE_SIZE
    }

    fn encode(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.physical_offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[16..24].copy_from_slice(&self.tag_hash.to_le_bytes());
        b[24..32].copy_from_slice(&self.store_timestamp.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> CqEntry {
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        CqEntry {
            physical_offset: u64_at(0),
            size: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            tag_hash: u64_at(16),
            store_timestamp: u64_at(24) as i64,
        }
    }
}

/// The consume queue of one (topic, queue id).
#[derive(Debug)]
pub struct ConsumeQueue {
    dir: PathBuf,
    /// A file found at open that cannot be mapped as entries (see [`Self::damage`]).
    bad_file: Option<String>,
    max_entries_per_file: u64,
    /// Files by first queue offset; the `MappedFile` base is that queue offset.
    files: RwLock<Vec<Arc<MappedFile>>>,
    min: AtomicU64,
    max: AtomicU64,
    written: AtomicU64,
    flushed: AtomicU64,
    flush_lock: Mutex<()>,
}

impl ConsumeQueue {
    /// Opens (or starts) the queue stored in `dir`, finding its written end.
    /// A file whose length is not a whole number of entries is opened as it is;
    /// [`Self::damage`] reports it.
    pub fn open(dir: PathBuf, max_entries_per_file: u32) -> Result<Self> {
        let mut files = Vec::new();
        let mut bad_file = None;
        for (base, path) in mapped_file::list_dir(&dir)? {
            let len = std::fs::metadata(&path)
                .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
                .len();
            if len == 0 || len % ENTRY_SIZE as u64 != 0 {
                bad_file.get_or_insert(format!(
                    "{} is {len} bytes, not a whole number of {ENTRY_SIZE}-byte entries",
                    path.display()
                ));
                continue;
            }
            files.push(Arc::new(MappedFile::open(&path, base, len)?));
        }
        let cq = ConsumeQueue {
            dir,
            bad_file,
            max_entries_per_file: max_entries_per_file as u64,
            files: RwLock::new(files),
            min: AtomicU64::new(0),
            max: AtomicU64::new(0),
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
        };
        if cq.damage().is_none() {
            let (min, end) = cq.scan_bounds();
            cq.set_watermarks(min, end);
        }
        Ok(cq)
    }

    fn set_watermarks(&self, min: u64, end: u64) {
        self.min.store(min, Ordering::Release);
        for watermark in [&self.max, &self.written, &self.flushed] {
            watermark.store(end, Ordering::Release);
        }
    }

    /// What is structurally wrong with the queue's files, if anything: a file
    /// that is not a whole number of entries, a gap between files (a file
    /// deleted or truncated), a full file with unwritten (zero) entries at its
    /// start or end, or positions that go backwards across files. Such a queue
    /// is rebuilt from the commit log. Cheap: a few entries per file.
    pub fn damage(&self) -> Option<String> {
        if self.bad_file.is_some() {
            return self.bad_file.clone();
        }
        let files = self.files.read();
        for (i, file) in files.iter().enumerate() {
            let path = file.path().display();
            let Some(next) = files.get(i + 1) else { break };
            if self.end_of(file) != next.base() {
                return Some(format!(
                    "entries {}..{} are missing before {} (a file deleted or truncated)",
                    self.end_of(file),
                    next.base(),
                    next.path().display()
                ));
            }
            let (first, last) = (
                Self::entry_in(file, 0),
                Self::entry_in(file, self.capacity(file) - 1),
            );
            if first.size == 0 || last.size == 0 {
                return Some(format!(
                    "{path} has unwritten (zero) entries but is not the last file"
                ));
            }
            let next_first = Self::entry_in(next, 0);
            if !last.is_hole()
                && !next_first.is_hole()
                && next_first.physical_offset <= last.physical_offset
            {
                return Some(format!(
                    "{} does not continue {path}: commit-log positions go backwards",
                    next.path().display()
                ));
            }
        }
        None
    }

    /// Deletes every file and starts the queue empty at offset 0, to be rebuilt
    /// from the commit log. Recovery only.
    pub fn reset(&self) -> Result<()> {
        self.files.write().clear();
        for (_, path) in mapped_file::list_dir(&self.dir)? {
            std::fs::remove_file(&path)
                .map_err(|e| StoreError::io(format!("deleting {}", path.display()), e))?;
        }
        self.set_watermarks(0, 0);
        Ok(())
    }

    #[cfg(test)]
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Smallest readable queue offset.
    pub fn min_offset(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }
    /// One past the newest published queue offset (the next offset to be assigned
    /// once the writer publishes).
    pub fn max_offset(&self) -> u64 {
        self.max.load(Ordering::Acquire)
    }
    /// The next queue offset the writer assigns. Writer only.
    pub fn next_offset(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// First file's base (or 0) and the end of written entries (first zero entry).
    fn scan_bounds(&self) -> (u64, u64) {
        let files = self.files.read();
        let Some(first) = files.first() else {
            return (0, 0);
        };
        let min = first.base();
        for file in files.iter().rev() {
            // Written entries are a prefix of each file: binary search the first zero.
            let (mut lo, mut hi) = (0u64, self.capacity(file));
            while lo < hi {
                let mid = (lo + hi) / 2;
                if Self::entry_in(file, mid).size == 0 {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            if lo > 0 || file.base() == min {
                return (min, file.base() + lo);
            }
        }
        (min, min)
    }

    fn entry_in(file: &MappedFile, index: u64) -> CqEntry {
        // SAFETY: callers only look at published entries, or are the writer/recovery.
        CqEntry::decode(unsafe { file.slice(index as usize * ENTRY_SIZE, ENTRY_SIZE) })
    }

    /// Entries a file holds.
    fn capacity(&self, file: &MappedFile) -> u64 {
        file.len() / ENTRY_SIZE as u64
    }

    /// One past the last queue offset a file covers.
    fn end_of(&self, file: &MappedFile) -> u64 {
        file.base() + self.capacity(file)
    }

    fn file_for(&self, offset: u64) -> Option<Arc<MappedFile>> {
        let files = self.files.read();
        let idx = files
            .partition_point(|f| f.base() <= offset)
            .checked_sub(1)?;
        let file = &files[idx];
        (offset < self.end_of(file)).then(|| file.clone())
    }

    /// Makes sure the file holding `offset` exists (may fail with disk full),
    /// creating files that continue the last one, each twice its size up to the
    /// maximum. Writer only.
    pub fn ensure_capacity(&self, offset: u64) -> Result<()> {
        while self.file_for(offset).is_none() {
            let (base, entries) = match self.files.read().last() {
                Some(last) if self.end_of(last) <= offset => (
                    self.end_of(last),
                    (self.capacity(last) * 2).min(self.max_entries_per_file),
                ),
                Some(_) => {
                    return Err(StoreError::Corrupt {
                        offset,
                        reason: format!(
                            "{} has no file for queue offset {offset}",
                            self.dir.display()
                        ),
                    });
                }
                None => (offset, FIRST_FILE_ENTRIES.min(self.max_entries_per_file)),
            };
            let file = MappedFile::create(&self.dir, base, entries * ENTRY_SIZE as u64)?;
            self.files.write().push(Arc::new(file));
        }
        Ok(())
    }

    /// Writes the entry for `offset` (which must be [`Self::next_offset`]; capacity
    /// ensured). Not visible to readers until [`Self::publish`]. Writer only.
    pub fn write(&self, offset: u64, entry: &CqEntry) {
        debug_assert_eq!(offset, self.next_offset());
        let Some(file) = self.file_for(offset) else {
            // Only when the queue was destroyed (its topic deleted) between the
            // writer's planning and this write: the entry has nowhere to go.
            tracing::warn!(dir = %self.dir.display(), offset, "queue deleted during an append; entry dropped");
            return;
        };
        let pos = (offset - file.base()) as usize * ENTRY_SIZE;
        // SAFETY: `offset` is at or past `written`, so no reader looks at it yet,
        // and there is a single writer.
        unsafe { file.write(pos, &entry.encode()) };
        self.written.store(offset + 1, Ordering::Release);
    }

    /// Makes everything written so far readable.
    pub fn publish(&self) {
        self.max
            .store(self.written.load(Ordering::Acquire), Ordering::Release);
    }

    /// Reads up to `max_entries` published entries starting at `offset`.
    pub fn read(&self, offset: u64, max_entries: usize) -> Vec<CqEntry> {
        let end = self
            .max_offset()
            .min(offset.saturating_add(max_entries as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset.max(self.min_offset());
        while at < end {
            let Some(file) = self.file_for(at) else { break };
            let stop = end.min(self.end_of(&file));
            let from = (at - file.base()) as usize * ENTRY_SIZE;
            let len = (stop - at) as usize * ENTRY_SIZE;
            // SAFETY: [at, stop) is below the published `max`, so no longer written.
            let bytes = unsafe { file.slice(from, len) };
            out.extend(bytes.chunks_exact(ENTRY_SIZE).map(CqEntry::decode));
            at = stop;
        }
        out
    }

    /// The published entry at `offset`, if any.
    pub fn entry(&self, offset: u64) -> Option<CqEntry> {
        if offset < self.min_offset() || offset >= self.max_offset() {
            return None;
        }
        let file = self.file_for(offset)?;
        Some(Self::entry_in(&file, offset - file.base()))
    }

    /// The first published non-hole entry at or after `offset`. Holes carry no
    /// position or time, so searches judge them by the next real entry; that keeps
    /// the binary searches below monotone.
    fn real_entry_from(&self, offset: u64) -> Option<CqEntry> {
        (offset..self.max_offset())
            .filter_map(|o| self.entry(o))
            .find(|e| !e.is_hole())
    }

    /// The smallest offset in `[min, max)` for which `pred` holds of the next real
    /// entry (`max` when none), assuming `pred` is monotone over queue order.
    fn partition_point(&self, pred: impl Fn(&CqEntry) -> bool) -> u64 {
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.real_entry_from(mid).is_none_or(|e| pred(&e)) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// The first queue offset whose store timestamp is at or after `timestamp`
    /// (binary search); `max_offset` when every message is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> u64 {
        let at = self.partition_point(|e| e.store_timestamp >= timestamp);
        // Trailing holes hold nothing newer.
        if self.real_entry_from(at).is_none() {
            self.max_offset()
        } else {
            at
        }
    }

    /// Durably flushes written entries.
    pub fn flush(&self) -> Result<()> {
        let _guard = self.flush_lock.lock();
        let from = self.flushed.load(Ordering::Acquire);
        let to = self.written.load(Ordering::Acquire);
        let mut at = from;
        while at < to {
            let Some(file) = self.file_for(at) else { break };
            let stop = to.min(self.end_of(&file));
            let pos = (at - file.base()) as usize * ENTRY_SIZE;
            file.flush_range(pos, (stop - at) as usize * ENTRY_SIZE)?;
            at = stop;
        }
        self.flushed.store(to, Ordering::Release);
        Ok(())
    }

    /// How many entries the queue has for records below `physical_offset`:
    /// written entries from the end back, dropping those at or past it. A hole
    /// stays: it stands for an offset already given out, which must never be
    /// given out again. Recovery truncates to exactly this, so a checkpoint
    /// records it to recognise a damaged queue.
    pub fn end_before(&self, physical_offset: u64) -> u64 {
        let mut end = self.written.load(Ordering::Acquire);
        let min = self.min_offset();
        while end > min {
            let Some(file) = self.file_for(end - 1) else {
                break;
            };
            let entry = Self::entry_in(&file, end - 1 - file.base());
            if entry.is_hole() || entry.physical_offset < physical_offset {
                break;
            }
            end -= 1;
        }
        end
    }

    /// One past the last published entry whose record lies below
    /// `physical_offset` (records lie in queue order in the log, so a binary
    /// search; holes are judged by the next real entry).
    pub fn end_below(&self, physical_offset: u64) -> u64 {
        let max = self.max_offset();
        match max.checked_sub(1).and_then(|last| self.entry(last)) {
            Some(last) if !last.is_hole() && last.physical_offset < physical_offset => max,
            _ => self.partition_point(|e| e.physical_offset >= physical_offset),
        }
    }

    /// Drops entries that point at or past `physical_offset`: in recovery
    /// (they are re-dispatched from the commit log), and when the writer
    /// truncates the log (readers stop before them first).
    /// The zeroed entries are flushed: `flush` covers only written ones, and
    /// stale entries past the end, back after a power loss, would make the
    /// next recovery rebuild the queue.
    pub fn truncate_from_physical(&self, physical_offset: u64) -> Result<()> {
        self.truncate_to(self.end_before(physical_offset))
    }

    /// Drops the entries from queue offset `end` on (see
    /// [`Self::truncate_from_physical`]).
    pub fn truncate_to(&self, end: u64) -> Result<()> {
        self.max.fetch_min(end, Ordering::AcqRel);
        let written = self.written.load(Ordering::Relaxed);
        let mut at = end;
        while at < written {
            let Some(file) = self.file_for(at) else {
                break;
            };
            let stop = written.min(self.end_of(&file));
            let pos = (at - file.base()) as usize * ENTRY_SIZE;
            let len = (stop - at) as usize * ENTRY_SIZE;
            // SAFETY: past `max` (lowered above), so no reader looks at it;
            // the caller is the writer or recovery.
            unsafe { file.write(pos, &vec![0u8; len]) };
            file.flush_range(pos, len)?;
            at = stop;
        }
        self.written.store(end, Ordering::Release);
        self.flushed.store(
            end.min(self.flushed.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// True when the queue holds no entry (new, or rebuilt from scratch).
    pub fn is_empty(&self) -> bool {
        self.next_offset() == self.min_offset()
    }

    /// Recovery: an empty queue whose first surviving record has queue offset
    /// `offset` (older ones are gone) starts there.
    pub fn start_at(&self, offset: u64) {
        debug_assert!(self.is_empty());
        for watermark in [&self.min, &self.max, &self.written, &self.flushed] {
            watermark.store(offset, Ordering::Release);
        }
    }

    /// Whether the written entry at `offset` stands for a lost record: a hole,
    /// or the placeholder recovery wrote for the damaged record at
    /// `physical_offset`.
    pub fn holds_placeholder(&self, offset: u64, physical_offset: u64) -> bool {
        if offset < self.min_offset() || offset >= self.written.load(Ordering::Acquire) {
            return false;
        }
        self.file_for(offset).is_some_and(|file| {
            let current = Self::entry_in(&file, offset - file.base());
            current.is_hole() || current.physical_offset == physical_offset
        })
    }

    /// Puts the entry of a record found again (healed from another member,
    /// or re-read by recovery) where [`Self::holds_placeholder`]; durable on
    /// return. Returns whether it did. A reader racing it sees the offset
    /// corrupt, as before, or the record.
    pub fn fill_hole(&self, offset: u64, entry: &CqEntry) -> Result<bool> {
        if !self.holds_placeholder(offset, entry.physical_offset) {
            return Ok(false);
        }
        let Some(file) = self.file_for(offset) else {
            return Ok(false);
        };
        let pos = (offset - file.base()) as usize * ENTRY_SIZE;
        // SAFETY: the entry names no readable record; the writer (or
        // recovery) is the only one writing entries.
        unsafe { file.write(pos, &entry.encode()) };
        file.flush_range(pos, ENTRY_SIZE)?;
        Ok(true)
    }

    /// Recovery: writes holes up to (not including) `offset`, so that the next
    /// entry lands at its recorded queue offset.
    pub fn fill_holes_until(&self, offset: u64) -> Result<u64> {
        let mut filled = 0;
        while self.next_offset() < offset {
            let at = self.next_offset();
            self.ensure_capacity(at)?;
            self.write(at, &CqEntry::HOLE);
            filled += 1;
        }
        Ok(filled)
    }

    /// Retention: moves `min` to the first entry whose record is still in the
    /// commit log (at or past `commit_log_min`) and deletes files entirely below it.
    pub fn advance_min(&self, commit_log_min: u64) -> Result<()> {
        self.move_min_to(self.partition_point(|e| e.physical_offset >= commit_log_min))
    }

    /// Per-topic retention: moves `min` past every entry stored before
    /// `timestamp` (ms) and deletes files entirely below it. Costs one entry
    /// read when nothing expired, a binary search otherwise.
    pub fn expire_before(&self, timestamp: i64) -> Result<()> {
        if self
            .real_entry_from(self.min_offset())
            .is_none_or(|oldest| oldest.store_timestamp >= timestamp)
        {
            return Ok(());
        }
        self.move_min_to(self.partition_point(|e| e.store_timestamp >= timestamp))
    }

    /// Raises `min` to `lo` (never lowers it) and deletes the files below it.
    fn move_min_to(&self, lo: u64) -> Result<()> {
        // Retention and expiry may race: the higher minimum wins.
        if self.min.fetch_max(lo, Ordering::AcqRel) >= lo {
            return Ok(());
        }
        let doomed: Vec<Arc<MappedFile>> = {
            let mut files = self.files.write();
            // The last file always stays: it remembers where the queue ends.
            let keep_from = files
                .iter()
                .position(|f| self.end_of(f) > lo)
                .unwrap_or(files.len())
                .min(files.len().saturating_sub(1));
            files.drain(..keep_from).collect()
        };
        for file in doomed {
            file.remove()?;
        }
        Ok(())
    }

    /// Deletes every file of this queue (topic deletion).
    pub fn destroy(&self) -> Result<()> {
        let files: Vec<_> = self.files.write().drain(..).collect();
        for file in files {
            file.remove()?;
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> CqEntry {
        CqEntry {
            physical_offset: i * 100,
            size: 100,
            tag_hash: i,
            store_timestamp: 1000 + i as i64 * 10,
        }
    }

    fn filled(dir: &std::path::Path, n: u64) -> ConsumeQueue {
        let cq = ConsumeQueue::open(dir.join("t/0"), 128).unwrap();
        for i in 0..n {
            cq.ensure_capacity(i).unwrap();
            cq.write(i, &entry(i));
        }
        cq.publish();
        cq
    }

    #[test]
    fn write_read_reopen_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let cq = filled(dir.path(), 300);
        assert_eq!(cq.max_offset(), 300);
        let got = cq.read(120, 20);
        assert_eq!(got, (120..140).map(entry).collect::<Vec<_>>());
        cq.flush().unwrap();
        drop(cq);
        let cq = ConsumeQueue::open(dir.path().join("t/0"), 128).unwrap();
        assert_eq!((cq.min_offset(), cq.max_offset()), (0, 300));
        assert_eq!(cq.read(0, 1000).len(), 300);
        assert_eq!(cq.entry(299), Some(entry(299)));
        assert_eq!(cq.entry(300), None);
    }

    #[test]
    fn reopen_at_exact_file_boundary() {
        let dir = tempfile::tempdir().unwrap();
        drop(filled(dir.path(), 256));
        let cq = ConsumeQueue::open(dir.path().join("t/0"), 128).unwrap();
        assert_eq!(cq.max_offset(), 256);
    }

    #[test]
    fn time_seek_is_a_binary_search_over_store_time() {
        let dir = tempfile::tempdir().unwrap();
        let cq = filled(dir.path(), 300);
        assert_eq!(cq.offset_for_timestamp(0), 0);
        assert_eq!(cq.offset_for_timestamp(1000), 0);
        assert_eq!(cq.offset_for_timestamp(1001), 1);
        assert_eq!(cq.offset_for_timestamp(1000 + 10 * 150), 150);
        assert_eq!(cq.offset_for_timestamp(i64::MAX), 300);
    }

    #[test]
    fn retention_advances_min_and_deletes_files() {
        let dir = tempfile::tempdir().unwrap();
        let cq = filled(dir.path(), 300);
        cq.advance_min(130 * 100).unwrap();
        assert_eq!(cq.min_offset(), 130);
        assert_eq!(cq.read(130, 5), (130..135).map(entry).collect::<Vec<_>>());
        let files = mapped_file::list_dir(cq.dir()).unwrap();
        assert_eq!(
            files.iter().map(|f| f.0).collect::<Vec<_>>(),
            vec![128, 256]
        );
    }

    #[test]
    fn truncate_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let cq = filled(dir.path(), 10);
        cq.truncate_from_physical(700).unwrap();
        assert_eq!(cq.max_offset(), 7);
        assert_eq!(cq.fill_holes_until(9).unwrap(), 2);
        cq.ensure_capacity(9).unwrap();
        cq.write(9, &entry(9));
        cq.publish();
        let got = cq.read(6, 10);
        assert_eq!(got[0], entry(6));
        assert!(got[1].is_hole() && got[2].is_hole());
        assert_eq!(got[3], entry(9));
        // Trailing holes stand for offsets given out: truncation keeps them.
        cq.truncate_from_physical(900).unwrap();
        assert_eq!(cq.next_offset(), 9);
        assert_eq!(cq.end_before(900), 9);
    }
}
