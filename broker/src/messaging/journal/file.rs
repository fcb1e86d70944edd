//! The journal file of a table: the paths, replay on open, appends with
//! group-committed syncs, and compaction.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::super::error::{BrokerError, Result};
use super::super::metadata;
use super::{Change, MAGIC, MAX_RECORD, Named, RECORD_HEADER, off_the_runtime};
use crate::store::{StoreError, sync_dir};

/// The paths of one table.
#[derive(Debug)]
pub(super) struct Files {
    pub(super) dir: PathBuf,
    pub(super) snapshot: PathBuf,
    pub(super) log: PathBuf,
    pub(super) old: PathBuf,
    /// A fresh journal before it replaces the current one.
    pub(super) next: PathBuf,
}

impl Files {
    pub(super) fn new(dir: &Path, name: &str) -> Files {
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
pub(super) fn replay<T: Named>(path: &Path, entries: &mut BTreeMap<String, T>) -> Result<u64> {
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
pub(super) struct Journal {
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
pub(super) struct Writer {
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
pub(super) fn open_file(path: &Path, valid_len: u64) -> Result<(File, u64, bool)> {
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
    pub(super) fn open(
        files: Files,
        valid_len: u64,
        snapshot_len: u64,
        compact_min: u64,
    ) -> Result<Journal> {
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
    pub(super) fn end(&self) -> u64 {
        self.writer.lock().end
    }

    /// Writes `record` to the page cache; returns the position to sync to.
    pub(super) fn append(&self, record: &[u8]) -> Result<u64> {
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
    pub(super) fn sync(&self, position: u64) -> Result<()> {
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

    pub(super) fn wants_compaction(&self) -> bool {
        let w = self.writer.lock();
        w.len > self.compact_min.max(w.snapshot_len)
    }

    /// Starts a fresh journal and rewrites the snapshot with `snapshot()`, which
    /// must see every change appended so far.
    pub(super) fn compact(&self, snapshot: impl FnOnce() -> Vec<u8>) -> Result<()> {
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
    pub(super) fn finish_compaction(&self, snapshot: &[u8]) -> Result<()> {
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
