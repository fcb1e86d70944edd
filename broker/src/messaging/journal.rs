//! Metadata tables (topics, groups) kept as a JSON snapshot plus an append-only
//! journal of changes, so a change writes one small record instead of the whole
//! table, and concurrent changes share one fsync (group commit).
//!
//! Files of a table `<name>` in `<data_dir>/metadata/`:
//!
//! ```text
//! <name>.json      snapshot: the whole table as a JSON array (the only file
//!                  before journals existed; such directories load unchanged)
//! <name>.log       journal: the changes made since the snapshot was written
//! <name>.log.old   the journal being compacted (only while a compaction runs,
//!                  or after a crash during one)
//!
//! journal:
//! +---------------------------+  header, 8 bytes
//! | magic "DQMJRNL1"          |
//! +---------------------------+  record, repeated
//! | len: u32 LE               |  payload length, 1..=MAX_RECORD
//! | crc: u32 LE               |  CRC32C of the payload
//! | payload: len bytes        |  JSON: {"put": <entry>} or {"delete": "<name>"}
//! +---------------------------+
//! ```
//!
//! Records hold whole entries, so replaying a journal over any snapshot taken
//! after its first record gives the same table: startup reads the snapshot,
//! then `<name>.log.old` and `<name>.log` in order. A record cut short at the
//! end of a journal (a crash during its write; it was never acknowledged) is
//! dropped; an invalid record followed by a valid one is damage, and the
//! broker refuses to start, naming the file and offset.
//!
//! A change is applied in memory and written to the journal (page cache) under
//! the table's write lock, then the writer waits for an fsync outside every
//! lock readers take; it is answered only once durable. When the journal
//! outgrows the snapshot (and at least [`COMPACT_MIN_BYTES`]) it is compacted:
//! renamed to `.log.old`, a fresh journal started, the snapshot rewritten, and
//! `.log.old` removed. The records are the unit a replicated log would carry.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{BrokerError, Result};
use super::metadata;
use crate::store::{StoreError, sync_dir};

/// First bytes of every journal file.
const MAGIC: &[u8; 8] = b"DQMJRNL1";
/// Record header: length and CRC32C.
const RECORD_HEADER: usize = 8;
/// Largest payload of one record; longer lengths are damage.
const MAX_RECORD: usize = 16 << 20;
/// A journal smaller than this is never compacted.
pub const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// An entry of a metadata table, keyed by its name.
pub trait Named: Serialize + DeserializeOwned + Clone {
    fn name(&self) -> &str;
}

/// One change of a table, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change<T> {
    /// Creates or replaces the entry with this name.
    Put(T),
    /// Removes the entry with this name.
    Delete(String),
}

impl<T: Named> Change<T> {
    fn apply(self, entries: &mut BTreeMap<String, T>) {
        match self {
            Change::Put(entry) => {
                entries.insert(entry.name().to_string(), entry);
            }
            Change::Delete(name) => {
                entries.remove(&name);
            }
        }
    }
}

/// What [`Table::update`] is told to do: a change (or none) and the answer
/// for the caller.
#[derive(Debug)]
pub struct Decision<T, R> {
    pub change: Option<Change<T>>,
    pub answer: R,
}

impl<T, R> Decision<T, R> {
    pub fn change(change: Change<T>, answer: R) -> Decision<T, R> {
        Decision {
            change: Some(change),
            answer,
        }
    }

    pub fn unchanged(answer: R) -> Decision<T, R> {
        Decision {
            change: None,
            answer,
        }
    }
}

/// The whole table as the JSON snapshot holds it.
fn snapshot<T: Serialize>(entries: &BTreeMap<String, T>) -> Vec<u8> {
    metadata::to_json(&entries.values().collect::<Vec<_>>())
}

/// A table of named entries, persisted as snapshot plus journal.
#[derive(Debug)]
pub struct Table<T> {
    entries: RwLock<BTreeMap<String, T>>,
    journal: Journal,
}

impl<T: Named> Table<T> {
    /// Loads table `name` from `dir`, creating its journal if there is none.
    pub fn open(dir: &Path, name: &str) -> Result<Table<T>> {
        Table::open_compacting_at(dir, name, COMPACT_MIN_BYTES)
    }

    fn open_compacting_at(dir: &Path, name: &str, compact_min: u64) -> Result<Table<T>> {
        let files = Files::new(dir, name);
        let list: Vec<T> = metadata::load(&files.snapshot)?;
        let mut entries: BTreeMap<String, T> = list
            .into_iter()
            .map(|e| (e.name().to_string(), e))
            .collect();
        let interrupted = files.old.exists();
        if interrupted {
            replay(&files.old, &mut entries)?;
        }
        let valid_end = replay(&files.log, &mut entries)?;
        let snapshot_len = std::fs::metadata(&files.snapshot).map_or(0, |m| m.len());
        let journal = Journal::open(files, valid_end, snapshot_len, compact_min)?;
        if interrupted {
            // Finish the compaction a crash interrupted: the snapshot must hold
            // what `.log.old` held before that file goes.
            journal.finish_compaction(&snapshot(&entries))?;
        }
        Ok(Table {
            entries: RwLock::new(entries),
            journal,
        })
    }

    pub fn get(&self, name: &str) -> Option<T> {
        self.entries.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<T> {
        self.entries.read().values().cloned().collect()
    }

    pub fn count(&self) -> usize {
        self.entries.read().len()
    }

    /// Makes the change `decide` picks from the current entries (or none),
    /// durably, and returns what it returns. `decide` runs under the write lock:
    /// it sees every earlier change and no later one.
    pub fn update<R>(
        &self,
        decide: impl FnOnce(&BTreeMap<String, T>) -> Result<Decision<T, R>>,
    ) -> Result<R> {
        let (written, answer) = {
            let mut entries = self.entries.write();
            let Decision { change, answer } = decide(&entries)?;
            match change {
                // Nothing changes, but what the caller saw may be a change
                // still on its way to disk.
                None => (self.journal.end(), answer),
                Some(change) => {
                    let written = self.journal.append(&encode(&change)?)?;
                    change.apply(&mut entries);
                    (written, answer)
                }
            }
        };
        self.journal.sync(written)?;
        if self.journal.wants_compaction() {
            self.journal.compact(|| snapshot(&self.entries.read()))?;
        }
        Ok(answer)
    }
}

/// The journal record of `change`; an entry too large to replay is refused.
fn encode<T: Serialize>(change: &Change<T>) -> Result<Vec<u8>> {
    let payload = serde_json::to_vec(change).expect("metadata serializes");
    if payload.len() > MAX_RECORD {
        return Err(BrokerError::invalid(
            "metadata entry",
            format!(
                "{} bytes as JSON; at most {MAX_RECORD} bytes",
                payload.len()
            ),
        ));
    }
    let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Ok(record)
}

/// The paths of one table.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    snapshot: PathBuf,
    log: PathBuf,
    old: PathBuf,
    /// A fresh journal before it replaces the current one.
    next: PathBuf,
}

impl Files {
    fn new(dir: &Path, name: &str) -> Files {
        Files {
            dir: dir.to_path_buf(),
            snapshot: dir.join(format!("{name}.json")),
            log: dir.join(format!("{name}.log")),
            old: dir.join(format!("{name}.log.old")),
            next: dir.join(format!("{name}.log.next")),
        }
    }
}

/// The payload of the record at `at`, if its header, length and CRC validate.
fn record_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let header = bytes.get(at..at + RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len)?;
    // Every payload is a JSON object with a quoted key; checking that first
    // keeps the search for valid records after damage cheap.
    (payload.starts_with(b"{\"") && crc32c::crc32c(payload) == crc).then_some(payload)
}

/// Applies the records of journal `path` to `entries`; returns the length of
/// its valid prefix (0 when it does not exist). A torn tail is left out; an
/// invalid record followed by a valid one is an error naming the file.
fn replay<T: Named>(path: &Path, entries: &mut BTreeMap<String, T>) -> Result<u64> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e).into()),
    };
    let corrupt = |offset: usize, reason: String| -> BrokerError {
        StoreError::Corrupt {
            offset: offset as u64,
            reason: format!(
                "metadata journal {}: {reason}; restore the file or remove the damaged records",
                path.display()
            ),
        }
        .into()
    };
    if bytes.len() < MAGIC.len() {
        // Created, header not yet written: no record was ever acknowledged.
        return Ok(0);
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(0, "not a metadata journal (bad magic)".into()));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let Some(payload) = record_at(&bytes, at) else {
            if let Some(later) = (at + 1..bytes.len()).find(|&o| record_at(&bytes, o).is_some()) {
                return Err(corrupt(
                    at,
                    format!("invalid record at byte {at}, valid records follow at byte {later}"),
                ));
            }
            tracing::warn!(
                path = %path.display(),
                offset = at,
                dropped_bytes = bytes.len() - at,
                "dropped a torn metadata journal tail (a change that was never acknowledged)"
            );
            return Ok(at as u64);
        };
        let change: Change<T> = serde_json::from_slice(payload)
            .map_err(|e| corrupt(at, format!("undecodable record at byte {at}: {e}")))?;
        change.apply(entries);
        at += RECORD_HEADER + payload.len();
    }
    Ok(at as u64)
}

/// The journal file of a table: appends, group-committed syncs, compaction.
#[derive(Debug)]
struct Journal {
    files: Files,
    writer: Mutex<Writer>,
    /// Logical position up to which everything is durable. Held while syncing,
    /// so waiters for the same sync queue here and find their record covered.
    synced: Mutex<u64>,
    /// One compaction at a time (the snapshot's temporary file is shared, and
    /// an older snapshot must not replace a newer one).
    compacting: Mutex<()>,
    compact_min: u64,
}

/// The file being appended to.
#[derive(Debug)]
struct Writer {
    file: Arc<File>,
    /// Bytes in the current file (header included).
    len: u64,
    /// Logical position: bytes ever appended, over every file.
    end: u64,
    /// Size of the snapshot last written.
    snapshot_len: u64,
    /// A new file's directory entry is not durable yet.
    dir_dirty: bool,
}

/// Opens (or creates) a journal file and cuts it to `valid_len`.
fn open_file(path: &Path, valid_len: u64) -> Result<(File, u64, bool)> {
    let ctx = |e| StoreError::io(format!("opening {}", path.display()), e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(ctx)?;
    let on_disk = file.metadata().map_err(ctx)?.len();
    if valid_len < MAGIC.len() as u64 {
        file.set_len(0).map_err(ctx)?;
        file.write_all_at(MAGIC, 0).map_err(ctx)?;
        file.sync_data().map_err(ctx)?;
        return Ok((file, MAGIC.len() as u64, true));
    }
    if on_disk != valid_len {
        file.set_len(valid_len).map_err(ctx)?;
        file.sync_data().map_err(ctx)?;
    }
    Ok((file, valid_len, false))
}

impl Journal {
    fn open(files: Files, valid_len: u64, snapshot_len: u64, compact_min: u64) -> Result<Journal> {
        std::fs::create_dir_all(&files.dir)
            .map_err(|e| StoreError::io(format!("creating {}", files.dir.display()), e))?;
        // Left by a crash during a rotation: it never held a record.
        let _ = std::fs::remove_file(&files.next);
        let (file, len, dir_dirty) = open_file(&files.log, valid_len)?;
        Ok(Journal {
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                len,
                end: 0,
                snapshot_len,
                dir_dirty,
            }),
            synced: Mutex::new(0),
            compacting: Mutex::new(()),
            compact_min,
            files,
        })
    }

    /// The logical position after the last record appended.
    fn end(&self) -> u64 {
        self.writer.lock().end
    }

    /// Writes `record` to the page cache; returns the position to sync to.
    fn append(&self, record: &[u8]) -> Result<u64> {
        let mut w = self.writer.lock();
        if let Err(e) = w.file.write_all_at(record, w.len) {
            // A partial record must not stay in front of the next one.
            let _ = w.file.set_len(w.len);
            let context = format!("writing {}", self.files.log.display());
            return Err(StoreError::io(context, e).into());
        }
        w.len += record.len() as u64;
        w.end += record.len() as u64;
        Ok(w.end)
    }

    /// Waits until everything up to `position` is durable. Whoever finds it
    /// not yet synced syncs everything appended so far, for every waiter.
    fn sync(&self, position: u64) -> Result<()> {
        off_the_runtime(|| {
            let mut synced = self.synced.lock();
            if *synced >= position {
                return Ok(());
            }
            let (file, end, dir_dirty) = {
                let mut w = self.writer.lock();
                (w.file.clone(), w.end, std::mem::take(&mut w.dir_dirty))
            };
            let synced_now = file
                .sync_data()
                .map_err(|e| StoreError::io(format!("syncing {}", self.files.log.display()), e))
                .and_then(|()| {
                    if dir_dirty {
                        sync_dir(&self.files.dir)
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = synced_now {
                self.writer.lock().dir_dirty |= dir_dirty;
                return Err(e.into());
            }
            *synced = end;
            Ok(())
        })
    }

    fn wants_compaction(&self) -> bool {
        let w = self.writer.lock();
        w.len > self.compact_min.max(w.snapshot_len)
    }

    /// Starts a fresh journal and rewrites the snapshot with `snapshot()`, which
    /// must see every change appended so far.
    fn compact(&self, snapshot: impl FnOnce() -> Vec<u8>) -> Result<()> {
        off_the_runtime(|| {
            let _one_at_a_time = self.compacting.lock();
            {
                // No sync runs meanwhile: each covers a single file.
                let mut synced = self.synced.lock();
                if !self.wants_compaction() {
                    return Ok(()); // another writer just compacted
                }
                let (old, old_end) = self.rotate()?;
                old.sync_data().map_err(|e| {
                    StoreError::io(format!("syncing {}", self.files.old.display()), e)
                })?;
                *synced = (*synced).max(old_end);
            }
            self.finish_compaction(&snapshot())
        })
    }

    /// Renames the journal to `.log.old` and continues in a fresh one; returns
    /// the old file and the logical position where it ends.
    fn rotate(&self) -> Result<(Arc<File>, u64)> {
        let f = &self.files;
        let io = |what: &str, p: &Path| {
            let context = format!("{what} {}", p.display());
            move |e| BrokerError::from(StoreError::io(context, e))
        };
        let mut w = self.writer.lock();
        let next = File::create(&f.next).map_err(io("creating", &f.next))?;
        next.write_all_at(MAGIC, 0)
            .map_err(io("writing", &f.next))?;
        std::fs::rename(&f.log, &f.old).map_err(io("renaming", &f.log))?;
        if let Err(e) = std::fs::rename(&f.next, &f.log) {
            let _ = std::fs::rename(&f.old, &f.log);
            return Err(io("renaming", &f.next)(e));
        }
        let old = std::mem::replace(&mut w.file, Arc::new(next));
        w.len = MAGIC.len() as u64;
        w.dir_dirty = true;
        Ok((old, w.end))
    }

    /// Writes the snapshot, then removes `.log.old`, whose records it holds.
    fn finish_compaction(&self, snapshot: &[u8]) -> Result<()> {
        metadata::save_bytes(&self.files.snapshot, snapshot)?;
        self.writer.lock().snapshot_len = snapshot.len() as u64;
        match std::fs::remove_file(&self.files.old) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let context = format!("removing {}", self.files.old.display());
                return Err(StoreError::io(context, e).into());
            }
        }
        Ok(sync_dir(&self.files.dir)?)
    }
}

/// Runs blocking file work without stalling the other tasks of a runtime
/// worker (request handlers call into tables directly).
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Entry {
        name: String,
        value: u32,
    }

    impl Named for Entry {
        fn name(&self) -> &str {
            &self.name
        }
    }

    fn put(table: &Table<Entry>, name: &str, value: u32) {
        let entry = Entry {
            name: name.into(),
            value,
        };
        table
            .update(|_| Ok(Decision::change(Change::Put(entry), ())))
            .unwrap();
    }

    fn delete(table: &Table<Entry>, name: &str) {
        table
            .update(|_| Ok(Decision::change(Change::Delete(name.to_string()), ())))
            .unwrap();
    }

    fn values(table: &Table<Entry>) -> Vec<(String, u32)> {
        table
            .list()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect()
    }

    #[test]
    fn changes_replay_after_reopen_and_write_one_record_each() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        for i in 0..100 {
            put(&table, &format!("e{i:03}"), i);
        }
        put(&table, "e000", 7);
        delete(&table, "e001");
        drop(table);
        let log = std::fs::metadata(dir.path().join("t.log")).unwrap().len();
        assert!(
            log < 102 * 64,
            "journal of 102 small changes is {log} bytes"
        );
        assert!(!dir.path().join("t.json").exists());
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        assert_eq!(table.count(), 99);
        assert_eq!(table.get("e000").unwrap().value, 7);
        assert_eq!(table.get("e001"), None);
        assert_eq!(table.get("e099").unwrap().value, 99);
    }

    #[test]
    fn a_snapshot_without_journal_loads_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.json"),
            r#"[{"name":"a","value":1},{"name":"b","value":2}]"#,
        )
        .unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        assert_eq!(values(&table), vec![("a".into(), 1), ("b".into(), 2)]);
        put(&table, "c", 3);
        delete(&table, "a");
        drop(table);
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        assert_eq!(values(&table), vec![("b".into(), 2), ("c".into(), 3)]);
    }

    #[test]
    fn compaction_moves_the_journal_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::<Entry>::open_compacting_at(dir.path(), "t", 1024).unwrap();
        for i in 0..200 {
            put(&table, &format!("e{i:03}"), i);
            put(&table, &format!("e{i:03}"), i + 1);
        }
        let log = std::fs::metadata(dir.path().join("t.log")).unwrap().len();
        let snapshot = std::fs::metadata(dir.path().join("t.json")).unwrap().len();
        assert!(
            log <= snapshot.max(1024) + 64,
            "log {log}, snapshot {snapshot}"
        );
        assert!(!dir.path().join("t.log.old").exists());
        drop(table);
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        assert_eq!(table.count(), 200);
        assert_eq!(table.get("e199").unwrap().value, 200);
    }

    #[test]
    fn an_interrupted_compaction_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        put(&table, "a", 1);
        put(&table, "b", 2);
        drop(table);
        // A crash after the rotation, before the snapshot was written.
        std::fs::rename(dir.path().join("t.log"), dir.path().join("t.log.old")).unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        put(&table, "c", 3);
        assert!(!dir.path().join("t.log.old").exists());
        drop(table);
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        assert_eq!(
            values(&table),
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]
        );
    }

    #[test]
    fn a_torn_tail_is_dropped_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        put(&table, "a", 1);
        put(&table, "b", 2);
        drop(table);
        let path = dir.path().join("t.log");
        let full = std::fs::read(&path).unwrap();
        // The last record cut in the middle, then the same with a zeroed tail.
        for torn in [
            full[..full.len() - 5].to_vec(),
            [&full[..full.len() - 5], &[0u8; 64][..]].concat(),
        ] {
            std::fs::write(&path, &torn).unwrap();
            let table = Table::<Entry>::open(dir.path(), "t").unwrap();
            assert_eq!(values(&table), vec![("a".into(), 1)]);
            put(&table, "c", 3);
            drop(table);
            let table = Table::<Entry>::open(dir.path(), "t").unwrap();
            assert_eq!(values(&table), vec![("a".into(), 1), ("c".into(), 3)]);
            drop(table);
            std::fs::write(&path, &full).unwrap();
        }
    }

    #[test]
    fn a_damaged_middle_record_refuses_to_open_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        put(&table, "a", 1);
        put(&table, "b", 2);
        put(&table, "c", 3);
        drop(table);
        let path = dir.path().join("t.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + RECORD_HEADER + 3] ^= 0x55; // in the first payload
        std::fs::write(&path, &bytes).unwrap();
        let err = Table::<Entry>::open(dir.path(), "t")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.log") && err.contains("valid records follow"),
            "{err}"
        );
        std::fs::write(&path, b"not a journal at all").unwrap();
        let err = Table::<Entry>::open(dir.path(), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.log") && err.contains("bad magic"), "{err}");
    }

    #[test]
    fn an_entry_too_large_to_replay_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::<Entry>::open(dir.path(), "t").unwrap();
        let huge = Entry {
            name: "x".repeat(MAX_RECORD),
            value: 1,
        };
        let err = table
            .update(|_| Ok(Decision::change(Change::Put(huge), ())))
            .unwrap_err();
        assert_eq!(err.code(), Reason::InvalidArgument);
        assert!(err.to_string().len() < 200, "{err}");
        assert_eq!(table.count(), 0);
    }

    #[test]
    fn concurrent_changes_share_syncs_and_all_survive() {
        let dir = tempfile::tempdir().unwrap();
        let table = Arc::new(Table::<Entry>::open(dir.path(), "t").unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let table = table.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        put(&table, &format!("t{t}-{i}"), i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(table);
        assert_eq!(Table::<Entry>::open(dir.path(), "t").unwrap().count(), 400);
    }
}
