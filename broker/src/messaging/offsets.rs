//! Consumer progress: one [`Progress`] per (group, topic, member, queue).
//! Persisted in `<data_dir>/metadata/offsets.json` every `offsets_persist_interval`
//! (only when something changed since the last save) and on shutdown, so a
//! clean restart redelivers nothing that was acked.
//!
//! Each entry is a self-contained snapshot of one cursor whose size is bounded
//! by that cursor's leases and retries, never by how many messages were acked
//! (so an entry could as well be a record of a replicated log).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::metadata;
use crate::store::StoreError;

/// Whose progress: `member` is empty for clustering groups and the client id for
/// broadcast members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProgressKey {
    pub group: String,
    pub topic: String,
    pub member: String,
    pub queue_id: u32,
}

/// An offset below a push cursor's high mark that is not done yet (leased,
/// waiting for its redelivery, or being dead-lettered), and its deliveries so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOffset {
    pub offset: u64,
    pub attempts: u32,
}

/// One cursor's progress: every offset below `committed` is done; of those in
/// `[committed, high)` all are done except `open`; none from `high` on was
/// delivered. Pull progress has `high == committed` and nothing open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub committed: u64,
    pub high: u64,
    pub open: Vec<OpenOffset>,
}

impl Progress {
    /// Progress up to `committed` with nothing known above it.
    pub fn at(committed: u64) -> Progress {
        Progress {
            committed,
            high: committed,
            open: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    entries: Vec<Entry>,
}

/// A [`Progress`] as stored. `high` and `open` are left out when there is
/// nothing above `committed`.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: ProgressKey,
    committed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    high: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    open: Vec<OpenOffset>,
    /// The earlier format (done marks above `committed`), still read.
    #[serde(default, skip_serializing)]
    extras: Option<LegacyExtras>,
}

/// What files written before the `high`/`open` form hold: the done offsets
/// above `committed` (one per acked message) and delivery counts.
#[derive(Debug, Default, Deserialize)]
struct LegacyExtras {
    #[serde(default)]
    done: Vec<u64>,
    #[serde(default)]
    attempts: Vec<(u64, u32)>,
}

impl Entry {
    /// `None` for a legacy entry too wide to be real (damage).
    fn progress(self) -> Option<(ProgressKey, Progress)> {
        let committed = self.committed;
        let progress = match self.extras {
            Some(legacy) if self.high.is_none() => legacy.into_progress(committed)?,
            _ => Progress {
                committed,
                high: self.high.unwrap_or(committed).max(committed),
                open: self
                    .open
                    .into_iter()
                    .filter(|o| o.offset >= committed)
                    .collect(),
            },
        };
        Some((self.key, progress))
    }

    fn of(key: &ProgressKey, p: &Progress) -> Entry {
        Entry {
            key: key.clone(),
            committed: p.committed,
            high: (p.high > p.committed).then_some(p.high),
            open: p.open.clone(),
            extras: None,
        }
    }
}

impl LegacyExtras {
    /// Everything delivered lies below the highest done or counted offset;
    /// what in between is not done is open.
    fn into_progress(self, committed: u64) -> Option<Progress> {
        let attempts: BTreeMap<u64, u32> = self.attempts.into_iter().collect();
        let done: std::collections::BTreeSet<u64> =
            self.done.into_iter().filter(|o| *o >= committed).collect();
        let high = done
            .last()
            .into_iter()
            .chain(attempts.keys().last())
            .map(|o| o + 1)
            .max()
            .unwrap_or(committed)
            .max(committed);
        // Old files only held what was in flight above the committed offset; a
        // wider span is damage, not something to spell out offset by offset.
        if high - committed > MAX_LEGACY_SPAN {
            return None;
        }
        let open = (committed..high)
            .filter(|o| !done.contains(o))
            .map(|offset| OpenOffset {
                offset,
                attempts: attempts.get(&offset).copied().unwrap_or(0),
            })
            .collect();
        Some(Progress {
            committed,
            high,
            open,
        })
    }
}

/// The widest span of offsets a legacy entry may describe (see
/// [`LegacyExtras::into_progress`]).
const MAX_LEGACY_SPAN: u64 = 1 << 20;

/// All progress, and whether it changed since the last save.
#[derive(Debug)]
pub struct OffsetTable {
    path: PathBuf,
    progress: BTreeMap<ProgressKey, Progress>,
    changed: bool,
}

impl OffsetTable {
    pub fn open(path: PathBuf) -> Result<OffsetTable> {
        let snapshot: Snapshot = metadata::load(&path)?;
        let progress = snapshot
            .entries
            .into_iter()
            .map(Entry::progress)
            .collect::<Option<_>>()
            .ok_or_else(|| StoreError::Corrupt {
                offset: 0,
                reason: format!(
                    "{}: an entry spans more than {MAX_LEGACY_SPAN} offsets",
                    path.display()
                ),
            })?;
        Ok(OffsetTable {
            path,
            progress,
            changed: false,
        })
    }

    /// The committed offset.
    pub fn get(&self, key: &ProgressKey) -> Option<u64> {
        self.progress.get(key).map(|p| p.committed)
    }

    /// The whole progress (for restoring a push cursor).
    pub fn cursor(&self, key: &ProgressKey) -> Option<&Progress> {
        self.progress.get(key)
    }

    pub fn set(&mut self, key: ProgressKey, progress: Progress) {
        if self.progress.get(&key) != Some(&progress) {
            self.progress.insert(key, progress);
            self.changed = true;
        }
    }

    /// Every entry of a group (optionally only one topic).
    pub fn of_group(&self, group: &str, topic: Option<&str>) -> Vec<(ProgressKey, u64)> {
        self.progress
            .iter()
            .filter(|(k, _)| k.group == group && topic.is_none_or(|t| k.topic == t))
            .map(|(k, p)| (k.clone(), p.committed))
            .collect()
    }

    /// Forgets everything matching `pred`.
    pub fn remove_where(&mut self, pred: impl Fn(&ProgressKey) -> bool) {
        let before = self.progress.len();
        self.progress.retain(|k, _| !pred(k));
        self.changed |= self.progress.len() != before;
    }

    /// The table as its file's bytes, and the file, when it changed since the
    /// last call: written by the caller after releasing the table's lock (see
    /// [`metadata::to_json`]), who calls [`Self::save_failed`] if that fails.
    pub fn changes(&mut self) -> Option<(PathBuf, Vec<u8>)> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        let snapshot = Snapshot {
            entries: self.progress.iter().map(|(k, p)| Entry::of(k, p)).collect(),
        };
        Some((self.path.clone(), metadata::to_json(&snapshot)))
    }

    /// The last [`Self::changes`] were not written: the next call returns them.
    pub fn save_failed(&mut self) {
        self.changed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(group: &str, queue_id: u32) -> ProgressKey {
        ProgressKey {
            group: group.into(),
            topic: "t".into(),
            member: String::new(),
            queue_id,
        }
    }

    fn save(t: &mut OffsetTable) -> bool {
        match t.changes() {
            Some((file, json)) => {
                metadata::save_bytes(&file, &json).unwrap();
                true
            }
            None => false,
        }
    }

    #[test]
    fn saves_and_restores_progress_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        let mut t = OffsetTable::open(path.clone()).unwrap();
        assert!(!save(&mut t), "nothing to save yet");
        let push = Progress {
            committed: 10,
            high: 15,
            open: vec![OpenOffset {
                offset: 13,
                attempts: 2,
            }],
        };
        t.set(key("g", 0), push.clone());
        t.set(key("g", 1), Progress::at(3));
        t.set(key("h", 0), Progress::at(7));
        assert!(save(&mut t));
        t.set(key("g", 1), Progress::at(3));
        assert!(!save(&mut t), "setting the same progress is no change");
        let mut t = OffsetTable::open(path).unwrap();
        assert_eq!(t.cursor(&key("g", 0)), Some(&push));
        assert_eq!(t.cursor(&key("g", 1)), Some(&Progress::at(3)));
        assert_eq!(t.of_group("g", Some("t")).len(), 2);
        t.remove_where(|k| k.group == "g");
        assert_eq!(t.of_group("g", None).len(), 0);
        assert_eq!(t.get(&key("h", 0)), Some(7));
        assert!(save(&mut t), "removing is a change");
        t.remove_where(|k| k.group == "g");
        assert!(!save(&mut t));
    }

    #[test]
    fn reads_the_earlier_done_marks_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        std::fs::write(
            &path,
            r#"{"entries": [
                {"group": "g", "topic": "t", "member": "", "queue_id": 0, "committed": 10,
                 "extras": {"done": [11, 12, 14], "attempts": [[13, 2]]}},
                {"group": "g", "topic": "t", "member": "", "queue_id": 1, "committed": 4}
            ]}"#,
        )
        .unwrap();
        let mut t = OffsetTable::open(path.clone()).unwrap();
        let expected = Progress {
            committed: 10,
            high: 15,
            open: vec![
                OpenOffset {
                    offset: 10,
                    attempts: 0,
                },
                OpenOffset {
                    offset: 13,
                    attempts: 2,
                },
            ],
        };
        assert_eq!(t.cursor(&key("g", 0)), Some(&expected));
        assert_eq!(t.cursor(&key("g", 1)), Some(&Progress::at(4)));
        // Rewritten in the new form, which reads back the same.
        t.save_failed();
        assert!(save(&mut t));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("done"), "{text}");
        let t = OffsetTable::open(path).unwrap();
        assert_eq!(t.cursor(&key("g", 0)), Some(&expected));
    }
}
