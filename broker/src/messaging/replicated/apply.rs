//! The replica's side: it applies the metadata records of its log (the
//! master's) in order, through the normal read path, to its own metadata
//! files, and saves how far it got in `metadata/replica.json`, so a restart
//! resumes there and a promotion needs nothing from the network.
//!
//! Applying is idempotent (records hold whole entries, progress records whole
//! snapshots): a crash between applying and saving the position applies some
//! records twice, to the same result. A log truncated below what was applied
//! (the replica followed a master whose tail a new master did not have) is
//! noticed by the applied tail no longer being in the log; applying then
//! starts again from the oldest record, and the snapshots the log always
//! holds (see `outbox.rs`) replace whatever the lost tail had changed.

use serde::{Deserialize, Serialize};

use super::super::error::Result;
use super::super::journal::{Change, Decision, Named, Table};
use super::super::offsets::OffsetTable;
use super::super::{Broker, metadata};
use super::records::{
    self, META_TOPIC, MetaRecord, PROGRESS_TOPIC, Part, ProgressEntries, ProgressRecord, TableOp,
};
use crate::store::Record;

/// Records read per pass of the apply loop.
const APPLY_BATCH: usize = 256;

/// A record's identity in the log: a record at the same queue offset with
/// another identity replaced the one applied (the log was truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    physical: u64,
    crc: u32,
}

/// How far one queue of metadata records was applied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct QueueTail {
    /// The queue offset to apply next.
    next: u64,
    /// The record at `next - 1`, when one was applied.
    last: Option<Applied>,
}

/// What `replica.json` holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ApplyPosition {
    meta: QueueTail,
    progress: QueueTail,
    /// The master's retention floor from its newest progress record.
    pub(super) retention_floor: u64,
}

/// A snapshot split over several records, gathered until its last part.
struct Gathering {
    /// Where applying resumes when a pass ends before the last part is in
    /// the log: the parts are read again from the first.
    resume: QueueTail,
    records: usize,
    /// The parts so far, as one snapshot (its part: the last one added).
    snapshot: MetaRecord,
}

impl Gathering {
    /// Adds the next part of the same snapshot; false when `record` is not it.
    fn add(&mut self, record: MetaRecord) -> bool {
        let follows =
            |seen: &Part, part: &Part| part.parts == seen.parts && part.part == seen.part + 1;
        match (&mut self.snapshot, record) {
            (
                MetaRecord::Topics(TableOp::Snapshot(all), seen),
                MetaRecord::Topics(TableOp::Snapshot(more), part),
            ) if follows(seen, &part) => {
                all.extend(more);
                *seen = part;
            }
            (
                MetaRecord::Groups(TableOp::Snapshot(all), seen),
                MetaRecord::Groups(TableOp::Snapshot(more), part),
            ) if follows(seen, &part) => {
                all.extend(more);
                *seen = part;
            }
            _ => return false,
        }
        self.records += 1;
        true
    }
}

/// What one [`Broker::apply_replicated_metadata`] pass applied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppliedMetadata {
    /// `%META%` records (changes and snapshots).
    pub meta_records: usize,
    /// Progress snapshots loaded (only the newest of a pass counts).
    pub progress_records: usize,
}

impl ApplyPosition {
    /// A damaged file counts as missing: applying starts again from the
    /// oldest record, which gives the same tables (see the module doc).
    pub(super) fn load(path: &std::path::Path) -> Result<ApplyPosition> {
        Ok(metadata::load_derived(path)?)
    }
}

/// Applies `op` to `table`, journaling only what differs; returns the names
/// it removed.
fn apply_op<T: Named + PartialEq>(table: &Table<T>, op: TableOp<T>) -> Result<Vec<String>> {
    let changes: Vec<Change<T>> = table.read_locked(|entries| match op {
        TableOp::Put(entry) => (entries.get(entry.name()) != Some(&entry))
            .then_some(Change::Put(entry))
            .into_iter()
            .collect(),
        TableOp::Delete(name) => entries
            .contains_key(&name)
            .then_some(Change::Delete(name))
            .into_iter()
            .collect(),
        TableOp::Snapshot(list) => {
            let keep: std::collections::HashSet<&str> = list.iter().map(|e| e.name()).collect();
            let gone = entries
                .keys()
                .filter(|name| !keep.contains(name.as_str()))
                .map(|name| Change::Delete(name.clone()));
            let differing = list
                .iter()
                .filter(|e| entries.get(e.name()) != Some(*e))
                .map(|e| Change::Put(e.clone()));
            gone.collect::<Vec<_>>()
                .into_iter()
                .chain(differing)
                .collect()
        }
    });
    let mut removed = Vec::new();
    for change in changes {
        if let Change::Delete(name) = &change {
            removed.push(name.clone());
        }
        table.update(|_| Ok(Decision::change(change, ())))?;
    }
    Ok(removed)
}

impl Broker {
    /// Applies the metadata records the log holds beyond what was applied
    /// (replica only; a no-op otherwise): topic and group changes in order,
    /// then the newest progress snapshot. Saves the position it reached.
    pub(super) fn apply_replicated_metadata(&self) -> Result<AppliedMetadata> {
        let mut done = AppliedMetadata::default();
        if *self.replicated.outbox.role.borrow() != super::LogRole::Replica {
            return Ok(done);
        }
        let mut position = self.replicated.applied.lock();
        let before = *position;
        let mut next = self.resume_at(META_TOPIC, &position.meta)?;
        let (_, end) = self.store.queue_offsets(META_TOPIC, 0);
        let mut topics_changed = false;
        let mut gathering: Option<Gathering> = None;
        while next < end {
            let read = self.store.read(META_TOPIC, 0, next, APPLY_BATCH, 1 << 20)?;
            for offset in &read.corrupt_offsets {
                tracing::error!(offset, "damaged metadata record skipped");
            }
            for rec in &read.records {
                let before_it = QueueTail {
                    next: rec.queue_offset,
                    last: position.meta.last,
                };
                done.meta_records += 1;
                position.meta.last = Some(Applied {
                    physical: rec.physical_offset,
                    crc: rec.crc,
                });
                let record = match records::decode_meta(&rec.body) {
                    Ok(r) => r,
                    Err(reason) => {
                        tracing::error!(offset = rec.queue_offset, %reason, "undecodable metadata record skipped");
                        continue;
                    }
                };
                let part = record.part();
                if part.parts == 1 {
                    topics_changed |= self.apply_meta(record)?;
                } else if part.part == 1 {
                    gathering = Some(Gathering {
                        resume: before_it,
                        records: 1,
                        snapshot: record,
                    });
                } else if gathering.as_mut().is_some_and(|g| g.add(record)) {
                    if part.is_last() {
                        let g = gathering.take().expect("gathering");
                        topics_changed |= self.apply_meta(g.snapshot)?;
                    }
                } else {
                    tracing::warn!(
                        offset = rec.queue_offset,
                        "part of a snapshot without its first part skipped"
                    );
                    gathering = None;
                }
            }
            next = read.next_offset;
            position.meta.next = next;
        }
        if let Some(g) = gathering {
            // Its last part is not in the log yet: read it again from the first.
            position.meta = g.resume;
            done.meta_records -= g.records;
        }
        let from = self.resume_at(PROGRESS_TOPIC, &position.progress)?;
        if from < self.store.queue_offsets(PROGRESS_TOPIC, 0).1 {
            done.progress_records += usize::from(self.load_newest_progress(&mut position)?);
        }
        if topics_changed {
            self.refresh_log_retention();
        }
        if *position != before {
            metadata::save(&self.replicated.applied_path, &*position)?;
        }
        self.store.pin_retention(position.retention_floor);
        Ok(done)
    }

    /// Loads the newest progress snapshot (each is whole, so only the
    /// newest counts) and counts every progress record as applied; false when
    /// the log holds none.
    fn load_newest_progress(&self, position: &mut ApplyPosition) -> Result<bool> {
        let (min, end) = self.store.queue_offsets(PROGRESS_TOPIC, 0);
        if end == min {
            return Ok(false);
        }
        let read = self.store.read(PROGRESS_TOPIC, 0, end - 1, 1, 1 << 20)?;
        let Some(last) = read.records.first() else {
            return Ok(false);
        };
        position.progress = QueueTail {
            next: end,
            last: Some(Applied {
                physical: last.physical_offset,
                crc: last.crc,
            }),
        };
        let Some(progress) = self.progress_ending_with(last)? else {
            return Ok(false);
        };
        let path = self.replicated.offsets_path.clone();
        metadata::save(&path, &progress.offsets)?;
        *self.offsets.lock() = OffsetTable::open(path)?;
        self.forget_push_cursors();
        position.retention_floor = progress.retention_floor;
        Ok(true)
    }

    /// The progress snapshot whose last part is `last`, its parts joined;
    /// `None` (logged) when one is damaged or missing.
    fn progress_ending_with(&self, last: &Record) -> Result<Option<ProgressRecord>> {
        let damaged = |reason: String| {
            tracing::error!(offset = last.queue_offset, %reason, "progress record skipped");
            Ok(None)
        };
        let newest = match records::decode_progress(&last.body) {
            Ok(p) => p,
            Err(reason) => return damaged(reason),
        };
        let parts = u64::from(newest.part.parts);
        if !newest.part.is_last() || parts == 0 || last.queue_offset + 1 < parts {
            return damaged(format!("part {:?} ends the queue", newest.part));
        }
        let mut records = Vec::new();
        let mut at = last.queue_offset + 1 - parts;
        while at < last.queue_offset {
            let read = self
                .store
                .read(PROGRESS_TOPIC, 0, at, APPLY_BATCH, 16 << 20)?;
            records.extend(read.records);
            at = read.next_offset;
        }
        let mut entries = Vec::new();
        for (i, rec) in records.iter().take((parts - 1) as usize).enumerate() {
            match records::decode_progress(&rec.body) {
                Ok(p) if p.part.part as usize == i + 1 && p.part.parts == newest.part.parts => {
                    entries.extend(p.offsets.entries)
                }
                Ok(p) => return damaged(format!("part {:?} where part {} belongs", p.part, i + 1)),
                Err(reason) => return damaged(reason),
            }
        }
        if entries.len() + newest.offsets.entries.len() == 0 && parts > 1 {
            return damaged("a split snapshot without entries".into());
        }
        entries.extend(newest.offsets.entries);
        Ok(Some(ProgressRecord {
            offsets: ProgressEntries { entries },
            ..newest
        }))
    }

    /// Loads the newest progress record again, whatever was applied: what
    /// the broker's own consumers did as a replica does not count.
    pub(super) fn reload_progress(&self) -> Result<()> {
        let mut position = self.replicated.applied.lock();
        if self.load_newest_progress(&mut position)? {
            metadata::save(&self.replicated.applied_path, &*position)?;
        }
        Ok(())
    }

    /// Counts every metadata record of the log as applied (a demoted master
    /// wrote them).
    pub(super) fn applied_to_end(&self) -> Result<()> {
        let mut position = self.replicated.applied.lock();
        position.meta = self.tail_at_end(META_TOPIC)?;
        position.progress = self.tail_at_end(PROGRESS_TOPIC)?;
        metadata::save(&self.replicated.applied_path, &*position)?;
        Ok(())
    }

    fn tail_at_end(&self, topic: &str) -> Result<QueueTail> {
        let (_, end) = self.store.queue_offsets(topic, 0);
        let last = match end {
            0 => None,
            _ => self
                .store
                .read(topic, 0, end - 1, 1, 1 << 20)?
                .records
                .first()
                .map(|r| Applied {
                    physical: r.physical_offset,
                    crc: r.crc,
                }),
        };
        Ok(QueueTail { next: end, last })
    }

    /// Where applying `topic` goes on: after its applied tail, or from the
    /// oldest record when that tail is no longer in the log.
    fn resume_at(&self, topic: &str, tail: &QueueTail) -> Result<u64> {
        let (min, max) = self.store.queue_offsets(topic, 0);
        let intact = match tail.last {
            None => tail.next == 0,
            Some(last) => {
                tail.next > min
                    && tail.next <= max
                    && self
                        .store
                        .read(topic, 0, tail.next - 1, 1, 1 << 20)?
                        .records
                        .first()
                        .is_some_and(|r| r.physical_offset == last.physical && r.crc == last.crc)
            }
        };
        if !intact && tail.last.is_some() {
            tracing::warn!(
                topic,
                applied_to = tail.next,
                "the applied metadata records are no longer in the log; applying from the oldest"
            );
        }
        Ok(if intact { tail.next.max(min) } else { min })
    }

    /// Applies one `%META%` record (a whole snapshot, once gathered); returns
    /// whether it changed topics.
    fn apply_meta(&self, record: MetaRecord) -> Result<bool> {
        match record {
            MetaRecord::Topics(op, _) => {
                // The topic's queues go when the store stores the master's
                // deletion marker (`store::DELETION_TOPIC`), at its place in
                // the log; a replica never deletes them on its own.
                for name in apply_op(self.topics.table(), op)? {
                    self.subscriptions.lock().retain(|k, _| k.topic != name);
                }
                Ok(true)
            }
            MetaRecord::Groups(op, _) => {
                for name in apply_op(self.groups.table(), op)? {
                    self.subscriptions.lock().retain(|k, _| k.group != name);
                    self.forget_claims(&name);
                    self.members.lock().remove(&name);
                }
                Ok(false)
            }
        }
    }
}
