//! Consumer progress: committed offsets per (group, topic, member, queue), plus
//! the push cursors' done marks and delivery counts above the committed offset.
//! Persisted in `<data_dir>/metadata/offsets.json` every `offsets_persist_interval`
//! and on shutdown, so a clean restart redelivers nothing that was acked.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::metadata;

/// Whose progress: `member` is empty for clustering groups and the client id for
/// broadcast members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProgressKey {
    pub group: String,
    pub topic: String,
    pub member: String,
    pub queue_id: u32,
}

/// Push-cursor detail above the committed offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorExtras {
    pub done: Vec<u64>,
    pub attempts: Vec<(u64, u32)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    entries: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    key: ProgressKey,
    committed: u64,
    #[serde(default, skip_serializing_if = "is_default")]
    extras: CursorExtras,
}

fn is_default(e: &CursorExtras) -> bool {
    e == &CursorExtras::default()
}

/// All committed progress.
#[derive(Debug)]
pub struct OffsetTable {
    path: PathBuf,
    committed: BTreeMap<ProgressKey, u64>,
    extras: HashMap<ProgressKey, CursorExtras>,
}

impl OffsetTable {
    pub fn open(path: PathBuf) -> Result<OffsetTable> {
        let snapshot: Snapshot = metadata::load(&path)?;
        let mut table = OffsetTable {
            path,
            committed: BTreeMap::new(),
            extras: HashMap::new(),
        };
        for e in snapshot.entries {
            if !is_default(&e.extras) {
                table.extras.insert(e.key.clone(), e.extras);
            }
            table.committed.insert(e.key, e.committed);
        }
        Ok(table)
    }

    pub fn get(&self, key: &ProgressKey) -> Option<u64> {
        self.committed.get(key).copied()
    }

    /// The committed offset and, for push cursors, what is known above it.
    pub fn cursor(&self, key: &ProgressKey) -> Option<(u64, CursorExtras)> {
        let committed = self.get(key)?;
        Some((committed, self.extras.get(key).cloned().unwrap_or_default()))
    }

    pub fn set(&mut self, key: ProgressKey, committed: u64, extras: CursorExtras) {
        if is_default(&extras) {
            self.extras.remove(&key);
        } else {
            self.extras.insert(key.clone(), extras);
        }
        self.committed.insert(key, committed);
    }

    /// Every entry of a group (optionally only one topic).
    pub fn of_group(&self, group: &str, topic: Option<&str>) -> Vec<(ProgressKey, u64)> {
        self.committed
            .iter()
            .filter(|(k, _)| k.group == group && topic.is_none_or(|t| k.topic == t))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Forgets everything matching `pred`.
    pub fn remove_where(&mut self, pred: impl Fn(&ProgressKey) -> bool) {
        self.committed.retain(|k, _| !pred(k));
        self.extras.retain(|k, _| !pred(k));
    }

    /// Writes the table atomically.
    /// The table as its file's bytes, and the file: written by the caller
    /// after releasing the table's lock (see [`metadata::to_json`]).
    pub fn serialized(&self) -> (PathBuf, Vec<u8>) {
        let snapshot = Snapshot {
            entries: self
                .committed
                .iter()
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    committed: *v,
                    extras: self.extras.get(k).cloned().unwrap_or_default(),
                })
                .collect(),
        };
        (self.path.clone(), metadata::to_json(&snapshot))
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

    #[test]
    fn saves_and_restores_progress_and_extras() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets.json");
        let mut t = OffsetTable::open(path.clone()).unwrap();
        let extras = CursorExtras {
            done: vec![12, 14],
            attempts: vec![(13, 2)],
        };
        t.set(key("g", 0), 10, extras.clone());
        t.set(key("g", 1), 3, CursorExtras::default());
        t.set(key("h", 0), 7, CursorExtras::default());
        let (file, json) = t.serialized();
        assert_eq!(file, path);
        metadata::save_bytes(&file, &json).unwrap();
        let mut t = OffsetTable::open(path).unwrap();
        assert_eq!(t.cursor(&key("g", 0)), Some((10, extras)));
        assert_eq!(t.get(&key("g", 1)), Some(3));
        assert_eq!(t.of_group("g", Some("t")).len(), 2);
        t.remove_where(|k| k.group == "g");
        assert_eq!(t.of_group("g", None).len(), 0);
        assert_eq!(t.get(&key("h", 0)), Some(7));
    }
}
