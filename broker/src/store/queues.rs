//! The table of consume queues, by topic and queue id, as found under
//! `consumequeue/<topic>/<queue_id>/`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use super::checkpoint::QueueName;
use super::consume_queue::ConsumeQueue;
use super::error::{Result, StoreError};
use super::record::validate_topic_name;

type TopicQueues = BTreeMap<u32, Arc<ConsumeQueue>>;

/// Every consume queue of the store.
#[derive(Debug)]
pub struct QueueTable {
    root: PathBuf,
    entries_per_file: u32,
    topics: RwLock<HashMap<String, TopicQueues>>,
}

impl QueueTable {
    /// Opens every queue directory under `root`.
    pub fn open(root: PathBuf, entries_per_file: u32) -> Result<QueueTable> {
        let table = QueueTable {
            root,
            entries_per_file,
            topics: RwLock::new(HashMap::new()),
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
            for (queue, _) in list(&topic_dir)? {
                if let Ok(queue_id) = queue.parse::<u32>() {
                    table.get_or_create(&topic, queue_id)?;
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
    /// commit log until retention removes them).
    pub fn remove_topic(&self, topic: &str) -> Result<()> {
        let removed = self.topics.write().remove(topic);
        for cq in removed.into_iter().flat_map(|q| q.into_values()) {
            cq.destroy()?;
        }
        let _ = std::fs::remove_dir(self.root.join(topic));
        Ok(())
    }
}
