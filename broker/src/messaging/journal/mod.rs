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
use std::path::Path;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{BrokerError, Result};
use super::metadata;

mod file;
use file::{Files, Journal, replay};

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

/// Told of every change a table journals, in journal order (while the
/// table's write lock is held): a master copies them into its replicated log.
pub trait ChangeObserver: std::fmt::Debug + Send + Sync {
    /// `payload` is the journal record's JSON (`{"put": ...}` or
    /// `{"delete": ...}`) of table `table`.
    fn journaled(&self, table: &str, payload: &[u8]);
}

/// A table of named entries, persisted as snapshot plus journal.
#[derive(Debug)]
pub struct Table<T> {
    name: String,
    entries: RwLock<BTreeMap<String, T>>,
    journal: Journal,
    observer: OnceLock<Arc<dyn ChangeObserver>>,
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
            name: name.to_string(),
            entries: RwLock::new(entries),
            journal,
            observer: OnceLock::new(),
        })
    }

    /// Tells `observer` of every change from now on (set once).
    pub fn observe(&self, observer: Arc<dyn ChangeObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Runs `f` on the entries while no change can be made (nor observed).
    pub fn read_locked<R>(&self, f: impl FnOnce(&BTreeMap<String, T>) -> R) -> R {
        f(&self.entries.read())
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
                    let record = encode(&change)?;
                    let written = self.journal.append(&record)?;
                    if let Some(observer) = self.observer.get() {
                        observer.journaled(&self.name, &record[RECORD_HEADER..]);
                    }
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
mod tests;
