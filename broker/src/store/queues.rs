//! The table of consume queues, by topic and queue id, as found under
//! `consumequeue/<topic>/<queue_id>/`, and the tombstones of deleted topics
//! (`consumequeue/<topic>/deleted`: the commit-log position at deletion, as
//! decimal text): records of the topic below it belong to the deleted topic and
//! are never dispatched again, even when recovery rebuilds from the whole log.
//! A tombstone goes when retention has deleted every segment below it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use super::checkpoint::QueueName;
use super::consume_queue::ConsumeQueue;
use super::error::{Result, StoreError};
use super::mapped_file::sync_dir;
use super::record::validate_topic_name;

type TopicQueues = BTreeMap<u32, Arc<ConsumeQueue>>;

/// Every consume queue of the store.
#[derive(Debug)]
pub struct QueueTable {
    root: PathBuf,
    entries_per_file: u32,
    topics: RwLock<HashMap<String, TopicQueues>>,
    tombstones: RwLock<HashMap<String, u64>>,
}

/// The tombstone file in a deleted topic's directory.
const TOMBSTONE: &str = "deleted";

impl QueueTable {
    /// Opens every queue directory under `root`.
    pub fn open(root: PathBuf, entries_per_file: u32) -> Result<QueueTable> {
        let table = QueueTable {
            root,
            entries_per_file,
            topics: RwLock::new(HashMap::new()),
            tombstones: RwLock::new(HashMap::new()),
        };
        let list = |dir: &PathBuf| -> Result<Vec<(String, PathBuf)>> {
            match std::fs::read_dir(dir) {
                Ok(entries) => entries
                    .map(|e| {
                        let e =
                            e.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
                        Ok((e.file_name().to_string_lossy().into_owned(), e.path()))
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(StoreError::io(format!("listing {}", dir.display()), e)),
            }
        };
        for (topic, topic_dir) in list(&table.root)? {
            if validate_topic_name(&topic).is_err() {
                continue;
            }
            for (entry, path) in list(&topic_dir)? {
                if let Ok(queue_id) = entry.parse::<u32>() {
                    table.get_or_create(&topic, queue_id)?;
                } else if entry == TOMBSTONE {
                    // An unreadable tombstone covers everything: the topic was
                    // deleted, and nothing of it is dispatched until re-created.
                    let at = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                        .unwrap_or(u64::MAX);
                    table.tombstones.write().insert(topic.clone(), at);
                }
            }
        }
        Ok(table)
    }

    /// The queue, if it exists.
    pub fn get(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.topics.read().get(topic)?.get(&queue_id).cloned()
    }

    /// The queue, opened or started on first use.
    pub fn get_or_create(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
        if let Some(cq) = self.get(topic, queue_id) {
            return Ok(cq);
        }
        let mut topics = self.topics.write();
        let queues = topics.entry(topic.to_string()).or_default();
        if let Some(cq) = queues.get(&queue_id) {
            return Ok(cq.clone());
        }
        let dir = self.root.join(topic).join(queue_id.to_string());
        let cq = Arc::new(ConsumeQueue::open(dir, self.entries_per_file)?);
        queues.insert(queue_id, cq.clone());
        Ok(cq)
    }

    /// Every queue with its name.
    pub fn named(&self) -> Vec<(QueueName, Arc<ConsumeQueue>)> {
        self.topics
            .read()
            .iter()
            .flat_map(|(topic, queues)| {
                queues.iter().map(|(&queue_id, cq)| {
                    let name = QueueName {
                        topic: topic.clone(),
                        queue_id,
                    };
                    (name, cq.clone())
                })
            })
            .collect()
    }

    /// Every queue.
    pub fn all(&self) -> Vec<Arc<ConsumeQueue>> {
        self.topics
            .read()
            .values()
            .flat_map(|q| q.values().cloned())
            .collect()
    }

    /// The queue ids of a topic, ascending.
    pub fn queue_ids(&self, topic: &str) -> Vec<u32> {
        self.topics
            .read()
            .get(topic)
            .map(|q| q.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Names of every topic with stored queues.
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Forgets a topic and deletes its consume queues (the records stay in the
    /// commit log until retention removes them), leaving a tombstone at `at`,
    /// the end of the log when it was deleted.
    pub fn remove_topic(&self, topic: &str, at: u64) -> Result<()> {
        self.destroy_queues(topic)?;
        let dir = self.root.join(topic);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(TOMBSTONE);
        std::fs::write(&path, at.to_string())
            .and_then(|()| std::fs::File::open(&path)?.sync_all())
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
        sync_dir(&dir)?;
        self.tombstones.write().insert(topic.to_string(), at);
        Ok(())
    }

    /// Drops a topic's queues and its tombstone (a truncation undoing its
    /// deletion rebuilds it from the log: undelete.rs).
    pub fn forget_topic(&self, topic: &str) -> Result<()> {
        self.destroy_queues(topic)?;
        let dir = self.root.join(topic);
        match std::fs::remove_file(dir.join(TOMBSTONE)) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::io(
                    format!("deleting the tombstone in {}", dir.display()),
                    e,
                ));
            }
        }
        self.tombstones.write().remove(topic);
        Ok(())
    }

    fn destroy_queues(&self, topic: &str) -> Result<()> {
        let removed = self.topics.write().remove(topic);
        for cq in removed.into_iter().flat_map(|q| q.into_values()) {
            cq.destroy()?;
        }
        Ok(())
    }

    /// Whether a record of `topic` at `physical_offset` belongs to a deleted
    /// incarnation of the topic.
    pub fn is_deleted(&self, topic: &str, physical_offset: u64) -> bool {
        self.tombstones
            .read()
            .get(topic)
            .is_some_and(|&at| physical_offset < at)
    }

    /// Whether `topic` was deleted at or after `physical_offset`: a
    /// checkpoint taken there predates the deletion (its marker lies at or
    /// past it), so what it recorded of the topic's queues is the deleted
    /// topic's.
    pub fn deleted_since(&self, topic: &str, physical_offset: u64) -> bool {
        self.tombstones
            .read()
            .get(topic)
            .is_some_and(|&at| at >= physical_offset)
    }

    /// Topics last deleted at or after `from` and before `end`, sorted.
    pub fn deleted_within(&self, from: u64, end: u64) -> Vec<String> {
        let mut topics: Vec<String> = self
            .tombstones
            .read()
            .iter()
            .filter(|&(_, &at)| at >= from && at < end)
            .map(|(topic, _)| topic.clone())
            .collect();
        topics.sort();
        topics
    }

    /// Retention: drops tombstones below which no segment is left.
    pub fn drop_tombstones_below(&self, commit_log_min: u64) {
        self.tombstones.write().retain(|topic, at| {
            if *at > commit_log_min {
                return true;
            }
            let dir = self.root.join(topic.as_str());
            let _ = std::fs::remove_file(dir.join(TOMBSTONE));
            let _ = std::fs::remove_dir(&dir);
            false
        });
    }
}
