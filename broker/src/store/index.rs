//! The key index: hash-index files that map `(topic, key)` to commit-log positions,
//! so that every message carrying a key can be found, optionally within a time range.
//!
//! ```text
//!  index/<20-digit sequence number>
//!
//!  +------------------------------- header (64 bytes) -------------------------------+
//!  | magic u32 | version u32 | slot_count u32 | entry_capacity u32 | entry_count u32 |
//!  | reserved u32 | begin_ts i64 | end_ts i64 | begin_phys u64 | end_phys u64 | pad  |
//!  +------------------------------ slots (slot_count × u32) -------------------------+
//!  | newest entry number in the slot's chain (1-based; 0 = empty)                    |
//!  +---------------------------- entries (entry_capacity × 32) ----------------------+
//!  | key_hash u64 | physical_offset u64 | store_timestamp i64 | prev u32 | size u32   |
//!  +---------------------------------------------------------------------------------+
//! ```
//!
//! Entries are appended in commit-log order; each slot heads a singly linked chain
//! through `prev`. Files grow: the first holds 4,096 entries, each next one twice
//! its predecessor up to `index_entries` (slots in proportion, up to
//! `index_slots`), so a few keyed messages cost little space. The index is derived
//! data: a file that is short, zeroed or inconsistent makes recovery delete the
//! index and rebuild it from the commit log. Hash collisions are resolved by the caller, which reads the
//! record and compares the real topic and key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use super::error::{Result, StoreError};
use super::mapped_file::{self, MappedFile};

const MAGIC: u32 = 0xDD0A_1DE5;
const VERSION: u32 = 1;
const HEADER_SIZE: usize = 64;
const ENTRY_SIZE: usize = 32;
/// Entries of the first index file.
const FIRST_FILE_ENTRIES: u32 = 4096;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_SLOTS: usize = 8;
const H_CAPACITY: usize = 12;
const H_COUNT: usize = 16;
const H_BEGIN_TS: usize = 24;
const H_END_TS: usize = 32;
const H_BEGIN_PHYS: usize = 40;
const H_END_PHYS: usize = 48;

/// The stable 64-bit hash of a message key within a topic.
pub fn key_hash(topic: &str, key: &str) -> u64 {
    let mut h = Xxh3::new();
    h.update(topic.as_bytes());
    h.update(&[0]);
    h.update(key.as_bytes());
    h.digest()
}

/// The length of an index file with this many slots and entries.
fn file_len(slots: u32, capacity: u32) -> u64 {
    (HEADER_SIZE + slots as usize * 4 + capacity as usize * ENTRY_SIZE) as u64
}

/// The newest index file with entries below a position (its sequence + 1; 0
/// for none) and its entry count there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexTip {
    pub file: u64,
    pub entries: u64,
}

/// A position the index found for a key hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHit {
    pub physical_offset: u64,
    pub size: u32,
    pub store_timestamp: i64,
}

#[derive(Debug)]
struct IndexFile {
    file: Arc<MappedFile>,
    slots: u32,
    capacity: u32,
}

impl IndexFile {
    fn bytes(&self, pos: usize, len: usize) -> &[u8] {
        // SAFETY: the index is only touched under the `Index` mutex.
        unsafe { self.file.slice(pos, len) }
    }
    fn put_bytes(&self, pos: usize, data: &[u8]) {
        // SAFETY: the index is only touched under the `Index` mutex.
        unsafe { self.file.write(pos, data) }
    }
    fn u32_at(&self, pos: usize) -> u32 {
        u32::from_le_bytes(self.bytes(pos, 4).try_into().expect("4 bytes"))
    }
    fn u64_at(&self, pos: usize) -> u64 {
        u64::from_le_bytes(self.bytes(pos, 8).try_into().expect("8 bytes"))
    }
    fn count(&self) -> u32 {
        self.u32_at(H_COUNT)
    }
    fn begin_ts(&self) -> i64 {
        self.u64_at(H_BEGIN_TS) as i64
    }
    fn end_ts(&self) -> i64 {
        self.u64_at(H_END_TS) as i64
    }
    fn end_phys(&self) -> u64 {
        self.u64_at(H_END_PHYS)
    }
    fn slot_pos(&self, hash: u64) -> usize {
        HEADER_SIZE + (hash % self.slots as u64) as usize * 4
    }
    fn entry_pos(&self, number: u32) -> usize {
        HEADER_SIZE + self.slots as usize * 4 + (number as usize - 1) * ENTRY_SIZE
    }
    fn entry(&self, number: u32) -> (u64, IndexHit, u32) {
        let p = self.entry_pos(number);
        let hit = IndexHit {
            physical_offset: self.u64_at(p + 8),
            store_timestamp: self.u64_at(p + 16) as i64,
            size: self.u32_at(p + 28),
        };
        (self.u64_at(p), hit, self.u32_at(p + 24))
    }

    fn create(dir: &Path, seq: u64, slots: u32, capacity: u32) -> Result<IndexFile> {
        let file = Arc::new(MappedFile::create(dir, seq, file_len(slots, capacity))?);
        let f = IndexFile {
            file,
            slots,
            capacity,
        };
        f.put_bytes(H_MAGIC, &MAGIC.to_le_bytes());
        f.put_bytes(H_VERSION, &VERSION.to_le_bytes());
        f.put_bytes(H_SLOTS, &slots.to_le_bytes());
        f.put_bytes(H_CAPACITY, &capacity.to_le_bytes());
        Ok(f)
    }

    /// Opens a file, reading only its header (the rest is mapped), and checks
    /// that the header is consistent with the file. `Ok(Err(reason))` is damage.
    fn open(path: &Path, seq: u64) -> Result<std::result::Result<IndexFile, String>> {
        use std::os::unix::fs::FileExt;
        let damaged = |reason: String| Ok(Err(format!("{}: {reason}", path.display())));
        let file = std::fs::File::open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let actual = file
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
            .len();
        let mut header = [0u8; HEADER_SIZE];
        if actual < HEADER_SIZE as u64 {
            return damaged(format!("{actual} bytes, shorter than its header"));
        }
        file.read_exact_at(&mut header, 0)
            .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4"));
        if u32_at(H_MAGIC) != MAGIC || u32_at(H_VERSION) != VERSION {
            return damaged("bad magic or version".into());
        }
        let (slots, capacity) = (u32_at(H_SLOTS), u32_at(H_CAPACITY));
        let len = file_len(slots, capacity);
        if slots == 0 || actual != len || u32_at(H_COUNT) > capacity {
            return damaged(format!(
                "{actual} bytes with {slots} slots, {capacity} entries and a count of {}",
                u32_at(H_COUNT)
            ));
        }
        Ok(Ok(IndexFile {
            file: Arc::new(MappedFile::open(path, seq, len)?),
            slots,
            capacity,
        }))
    }

    fn put(&self, hash: u64, hit: IndexHit) {
        let number = self.count() + 1;
        debug_assert!(number <= self.capacity);
        let slot = self.slot_pos(hash);
        let prev = self.u32_at(slot);
        let mut e = [0u8; ENTRY_SIZE];
        e[0..8].copy_from_slice(&hash.to_le_bytes());
        e[8..16].copy_from_slice(&hit.physical_offset.to_le_bytes());
        e[16..24].copy_from_slice(&hit.store_timestamp.to_le_bytes());
        e[24..28].copy_from_slice(&prev.to_le_bytes());
        e[28..32].copy_from_slice(&hit.size.to_le_bytes());
        self.put_bytes(self.entry_pos(number), &e);
        self.put_bytes(slot, &number.to_le_bytes());
        if number == 1 {
            self.put_bytes(H_BEGIN_TS, &hit.store_timestamp.to_le_bytes());
            self.put_bytes(H_BEGIN_PHYS, &hit.physical_offset.to_le_bytes());
        }
        self.put_bytes(H_END_TS, &hit.store_timestamp.to_le_bytes());
        self.put_bytes(H_END_PHYS, &hit.physical_offset.to_le_bytes());
        self.put_bytes(H_COUNT, &number.to_le_bytes());
    }

    /// Forgets entries at or past `physical_offset` and unlinks them from the
    /// chains; returns whether it changed anything.
    fn truncate_from(&self, physical_offset: u64) -> bool {
        let written = self.count();
        let mut count = written;
        while count > 0 && self.entry(count).1.physical_offset >= physical_offset {
            count -= 1;
        }
        if count == self.count() {
            return false;
        }
        for s in 0..self.slots as usize {
            let pos = HEADER_SIZE + s * 4;
            let mut head = self.u32_at(pos);
            while head > count {
                // A damaged link (past the written entries, or not going back)
                // drops the rest of the chain instead of looping or reading
                // outside the file.
                let prev = if head <= written {
                    self.entry(head).2
                } else {
                    0
                };
                head = if prev < head { prev } else { 0 };
            }
            self.put_bytes(pos, &head.to_le_bytes());
        }
        if count > 0 {
            let last = self.entry(count).1;
            self.put_bytes(H_END_TS, &last.store_timestamp.to_le_bytes());
            self.put_bytes(H_END_PHYS, &last.physical_offset.to_le_bytes());
        }
        self.put_bytes(H_COUNT, &count.to_le_bytes());
        true
    }
}

/// All index files of the store. Guarded by a mutex in the store: the writer appends
/// under it and lookups (rare, administrative) walk under it.
#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    slots: u32,
    capacity: u32,
    files: Vec<IndexFile>,
    /// Files from this position on may hold unflushed entries.
    unflushed_from: usize,
    /// A damaged file found at open (recovery rebuilds the index).
    damage: Option<String>,
}

impl Index {
    pub fn open(dir: PathBuf, slots: u32, capacity: u32) -> Result<Index> {
        let mut files = Vec::new();
        let mut damage = None;
        for (seq, path) in mapped_file::list_dir(&dir)? {
            if let Some(prev) = files.last().map(|f: &IndexFile| f.file.base())
                && prev + 1 != seq
            {
                damage.get_or_insert(format!(
                    "index files {} to {} are missing before {}",
                    prev + 1,
                    seq - 1,
                    path.display()
                ));
            }
            match IndexFile::open(&path, seq)? {
                Ok(file) => files.push(file),
                Err(reason) => {
                    damage.get_or_insert(reason);
                }
            }
        }
        Ok(Index {
            dir,
            slots,
            capacity,
            files,
            unflushed_from: 0,
            damage,
        })
    }

    /// Why the index cannot be trusted, if a file was found damaged at open.
    pub fn damage(&self) -> Option<&str> {
        self.damage.as_deref()
    }

    /// Deletes every index file, to be rebuilt from the commit log. Recovery only.
    pub fn reset(&mut self) -> Result<()> {
        self.files.clear();
        self.unflushed_from = 0;
        self.damage = None;
        for (_, path) in mapped_file::list_dir(&self.dir)? {
            std::fs::remove_file(&path)
                .map_err(|e| StoreError::io(format!("deleting {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Makes sure `n` more entries fit, starting a new file if needed (may fail with
    /// disk full, before anything is written).
    pub fn ensure_capacity(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if n > self.capacity as usize {
            return Err(StoreError::InvalidArgument {
                what: "keys",
                reason: format!(
                    "{n} keys in one append exceed the index file capacity {}",
                    self.capacity
                ),
            });
        }
        let fits = self
            .files
            .last()
            .is_some_and(|f| (f.capacity - f.count()) as usize >= n);
        if !fits {
            let seq = self.files.last().map_or(0, |f| f.file.base() + 1);
            let capacity = self
                .files
                .last()
                .map_or(FIRST_FILE_ENTRIES, |f| f.capacity.saturating_mul(2));
            let capacity = capacity.min(self.capacity).max(n as u32);
            let slots = (self.slots as u64 * capacity as u64 / self.capacity as u64).max(1) as u32;
            self.files
                .push(IndexFile::create(&self.dir, seq, slots, capacity)?);
        }
        Ok(())
    }

    /// Appends an entry; capacity must have been ensured.
    pub fn put(&mut self, hash: u64, hit: IndexHit) {
        self.files
            .last()
            .expect("ensure_capacity is called before put")
            .put(hash, hit);
    }

    /// Positions whose key hash is `hash`, newest first, within `[begin_ts, end_ts]`
    /// and below `visible`, at most `max`.
    pub fn lookup(
        &self,
        hash: u64,
        begin_ts: i64,
        end_ts: i64,
        visible: u64,
        max: usize,
    ) -> Vec<IndexHit> {
        let mut out = Vec::new();
        for f in self.files.iter().rev() {
            if f.count() == 0 || f.end_ts() < begin_ts || f.begin_ts() > end_ts {
                continue;
            }
            let mut number = f.u32_at(f.slot_pos(hash));
            // Chains only go back to older entries; a damaged link ends the walk.
            let mut bound = f.count() + 1;
            while number != 0 && number < bound && out.len() < max {
                bound = number;
                let (h, hit, prev) = f.entry(number);
                if h == hash
                    && hit.store_timestamp >= begin_ts
                    && hit.store_timestamp <= end_ts
                    && hit.physical_offset < visible
                {
                    out.push(hit);
                }
                number = prev;
            }
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// The newest file holding entries that point below `physical_offset`, and
    /// how many it holds: what a checkpoint records, so that recovery notices
    /// a deleted or emptied index file. `(0, 0)` when there is none.
    pub fn tip(&self, physical_offset: u64) -> IndexTip {
        for f in self.files.iter().rev() {
            let mut n = f.count();
            while n > 0 && f.entry(n).1.physical_offset >= physical_offset {
                n -= 1;
            }
            if n > 0 {
                return IndexTip {
                    file: f.file.base() + 1,
                    entries: n as u64,
                };
            }
        }
        IndexTip::default()
    }

    /// Drops entries at or past `physical_offset` (recovery, log truncation);
    /// the files changed are flushed by the next checkpoint.
    pub fn truncate_from(&mut self, physical_offset: u64) {
        for (i, f) in self.files.iter().enumerate() {
            if f.truncate_from(physical_offset) {
                self.unflushed_from = self.unflushed_from.min(i);
            }
        }
    }

    /// Durably flushes every index file touched since the previous flush.
    /// The files a checkpoint must flush (the newest, and any filled since the
    /// last call). The caller flushes them after releasing the index's lock:
    /// appends take that lock, and a flush ends with an fsync.
    pub fn files_to_flush(&mut self) -> Vec<Arc<MappedFile>> {
        let files = self
            .files
            .iter()
            .skip(self.unflushed_from)
            .map(|f| f.file.clone())
            .collect();
        self.unflushed_from = self.files.len().saturating_sub(1);
        files
    }

    /// Retention: deletes files whose newest entry points below `commit_log_min`.
    pub fn remove_below(&mut self, commit_log_min: u64) -> Result<()> {
        while self.files.len() > 1 && self.files[0].end_phys() < commit_log_min {
            let f = self.files.remove(0);
            self.unflushed_from = self.unflushed_from.saturating_sub(1);
            f.file.remove()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(phys: u64, ts: i64) -> IndexHit {
        IndexHit {
            physical_offset: phys,
            size: 10,
            store_timestamp: ts,
        }
    }

    #[test]
    fn finds_all_hits_newest_first_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(dir.path().to_path_buf(), 4, 16).unwrap();
        let a = key_hash("t", "a");
        let b = key_hash("t", "b");
        for i in 0..40u64 {
            idx.ensure_capacity(1).unwrap();
            idx.put(if i % 2 == 0 { a } else { b }, hit(i, i as i64));
        }
        let got = idx.lookup(a, i64::MIN, i64::MAX, u64::MAX, 100);
        let offs: Vec<u64> = got.iter().map(|h| h.physical_offset).collect();
        assert_eq!(
            offs,
            (0..40).rev().filter(|i| i % 2 == 0).collect::<Vec<_>>()
        );
        // Time range and visibility bounds.
        let got = idx.lookup(a, 10, 20, 18, 100);
        assert_eq!(
            got.iter().map(|h| h.physical_offset).collect::<Vec<_>>(),
            vec![16, 14, 12, 10]
        );
        assert_eq!(idx.lookup(a, i64::MIN, i64::MAX, u64::MAX, 3).len(), 3);
    }

    #[test]
    fn truncation_unlinks_chains_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = Index::open(dir.path().to_path_buf(), 2, 64).unwrap();
        let h = key_hash("t", "k");
        for i in 0..10 {
            idx.ensure_capacity(1).unwrap();
            idx.put(h, hit(i * 10, i as i64));
        }
        idx.truncate_from(55);
        for f in idx.files_to_flush() {
            f.flush_range(0, f.len() as usize).unwrap();
        }
        drop(idx);
        let mut idx = Index::open(dir.path().to_path_buf(), 2, 64).unwrap();
        let got = idx.lookup(h, i64::MIN, i64::MAX, u64::MAX, 100);
        assert_eq!(
            got.iter().map(|h| h.physical_offset).collect::<Vec<_>>(),
            vec![50, 40, 30, 20, 10, 0]
        );
        idx.ensure_capacity(1).unwrap();
        idx.put(h, hit(60, 6));
        assert_eq!(
            idx.lookup(h, i64::MIN, i64::MAX, u64::MAX, 1)[0].physical_offset,
            60
        );
    }
}
