//! The master's side: metadata records wait in an outbox, in the order the
//! changes were made, until they are appended to the log. Changes are queued
//! while the table's write lock is held (so the log has them in journal
//! order) and appended off that lock by [`Broker::flush_metadata_log`], which
//! the maintenance task runs whenever records are queued (and shutdown once
//! more), and a topic or group change from a client before it is answered
//! ([`Broker::acknowledged_change`]: once its record is acknowledged).
//!
//! Retention: old `%META%` records may go with their segment, because a
//! master appends a full snapshot of both tables when it is promoted and
//! again whenever its log grew by a segment since the last one, and pins
//! retention at the newest snapshot (and at the newest progress record,
//! rewritten as often): from the oldest retained record on, the log always
//! holds everything a replica needs. Pinning without snapshots would keep the
//! whole log; snapshots without a pin could lose the only snapshot to a
//! retention pass.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::super::Broker;
use super::super::error::Result;
use super::super::journal::ChangeObserver;
use super::{LogRole, WriteTerm, records};
use crate::store::{Appended, Message, StoreError};

/// No record of the kind was appended (yet) by this master.
const NONE: u64 = u64::MAX;

/// Records whose position the master keeps track of once they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    Untracked,
    /// The first table's snapshot (retention keeps both from there).
    SnapshotStart,
    Progress,
}

/// Records that go into the log together (one append: a snapshot's parts
/// stay contiguous).
#[derive(Debug)]
struct Unit {
    /// Its place in the outbox's order (1 for the first unit queued).
    seq: u64,
    tracked: Tracked,
    records: Vec<Message>,
}

/// Metadata records waiting for the log, and where the latest snapshots are.
#[derive(Debug)]
pub struct Outbox {
    pub(super) role: watch::Sender<LogRole>,
    pending: Mutex<Vec<Unit>>,
    /// Wakes the task that appends them.
    pub(super) wake: Notify,
    /// One append at a time, so the log keeps the outbox's order.
    appending: tokio::sync::Mutex<()>,
    /// Commit-log position of the newest snapshot start, and of the newest
    /// progress record (while queued: the log end when it was queued).
    last_snapshot: AtomicU64,
    last_progress: AtomicU64,
    /// An append of metadata records failed: the next save queues both
    /// snapshots, which carry every change that was lost.
    lost_records: AtomicBool,
    /// Units queued so far, the highest `seq` of a unit that did not reach
    /// the log (0: none), and where the last record appended begins: a
    /// change answers once its unit is appended and acknowledged.
    queued: AtomicU64,
    lost_through: AtomicU64,
    last_appended: AtomicU64,
}

impl ChangeObserver for Outbox {
    fn journaled(&self, table: &str, payload: &[u8]) {
        if self.is_master() {
            self.push(Tracked::Untracked, vec![records::change(table, payload)]);
        }
    }
}

impl Outbox {
    pub(super) fn new(role: LogRole) -> Outbox {
        Outbox {
            role: watch::channel(role).0,
            pending: Mutex::new(Vec::new()),
            wake: Notify::new(),
            appending: tokio::sync::Mutex::new(()),
            last_snapshot: AtomicU64::new(NONE),
            last_progress: AtomicU64::new(NONE),
            lost_records: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            lost_through: AtomicU64::new(0),
            last_appended: AtomicU64::new(NONE),
        }
    }

    pub(super) fn is_master(&self) -> bool {
        *self.role.borrow() == LogRole::Master
    }

    fn push(&self, tracked: Tracked, records: Vec<Message>) {
        let mut pending = self.pending.lock();
        let seq = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        pending.push(Unit {
            seq,
            tracked,
            records,
        });
        drop(pending);
        self.wake.notify_one();
    }

    /// Units that will not reach the log.
    fn lost(&self, units: &[Unit]) {
        if let Some(last) = units.iter().map(|u| u.seq).max() {
            self.lost_through.fetch_max(last, Ordering::Relaxed);
        }
    }

    /// Remembers where a tracked unit landed.
    fn stored(&self, unit: &Unit, appended: &[Appended]) {
        if let Some(last) = appended.last() {
            self.last_appended
                .store(last.physical_offset, Ordering::Relaxed);
        }
        let Some(first) = appended.first() else {
            return;
        };
        match unit.tracked {
            Tracked::SnapshotStart => &self.last_snapshot,
            Tracked::Progress => &self.last_progress,
            Tracked::Untracked => return,
        }
        .store(first.physical_offset, Ordering::Relaxed);
    }

    /// The lowest position this master's retention must keep: its newest
    /// snapshot and progress record.
    pub(super) fn floor(&self) -> u64 {
        self.last_snapshot
            .load(Ordering::Relaxed)
            .min(self.last_progress.load(Ordering::Relaxed))
    }

    /// Forgets what is queued and where the snapshots were (no longer master).
    pub(super) fn reset(&self) {
        let mut pending = self.pending.lock();
        pending.clear();
        // What it appended is not acknowledged by this member any more.
        self.lost_through
            .fetch_max(self.queued.load(Ordering::Relaxed), Ordering::Relaxed);
        self.last_appended.store(NONE, Ordering::Relaxed);
        drop(pending);
        self.lost_records.store(false, Ordering::Relaxed);
        self.last_snapshot.store(NONE, Ordering::Relaxed);
        self.last_progress.store(NONE, Ordering::Relaxed);
    }

    /// Whether the newest record of `position` is more than `distance` behind
    /// `log_end` (or missing).
    fn stale(position: &AtomicU64, log_end: u64, distance: u64) -> bool {
        match position.load(Ordering::Relaxed) {
            NONE => true,
            p => log_end.saturating_sub(p) >= distance,
        }
    }
}

impl Broker {
    /// Queues a full snapshot of the topic and group tables (master only).
    /// Each table is read under its lock, so no change falls between the
    /// snapshot and the change records queued around it.
    pub(in crate::messaging) fn queue_metadata_snapshot(&self) {
        let outbox = &self.replicated.outbox;
        if !outbox.is_master() {
            return;
        }
        let log_end = self.store.stats().commit_log_max;
        outbox.last_snapshot.store(log_end, Ordering::Relaxed);
        let max_record = self.store.config().max_record_size_bytes as usize;
        let [topics, groups] = records::TABLES;
        self.topics.table().read_locked(|entries| {
            let snapshot = records::snapshot(topics, entries, max_record);
            outbox.push(Tracked::SnapshotStart, snapshot);
        });
        self.groups.table().read_locked(|entries| {
            let snapshot = records::snapshot(groups, entries, max_record);
            outbox.push(Tracked::Untracked, snapshot);
        });
    }

    /// Called by the progress saver before it looks for changes: a master
    /// whose newest snapshot (or progress record) is a segment behind its log
    /// end queues a new one, so retention may move on.
    pub(in crate::messaging) fn refresh_replicated_snapshots(&self) {
        let outbox = &self.replicated.outbox;
        if !outbox.is_master() {
            return;
        }
        let log_end = self.store.stats().commit_log_max;
        let segment = self.store.config().segment_size_bytes;
        let lost = outbox.lost_records.swap(false, Ordering::Relaxed);
        if lost || Outbox::stale(&outbox.last_snapshot, log_end, segment) {
            self.queue_metadata_snapshot();
        }
        if lost || Outbox::stale(&outbox.last_progress, log_end, segment) {
            // Written again even unchanged, as after a failed save.
            self.offsets.lock().save_failed();
        }
    }

    /// Queues the progress just saved as `offsets_json` (master only).
    pub(in crate::messaging) fn queue_progress(&self, offsets_json: &[u8]) {
        let outbox = &self.replicated.outbox;
        if !outbox.is_master() {
            return;
        }
        let log_end = self.store.stats().commit_log_max;
        outbox.last_progress.store(log_end, Ordering::Relaxed);
        let floor = self.retention_floor(log_end);
        let max_record = self.store.config().max_record_size_bytes as usize;
        let progress = records::progress(offsets_json, floor, max_record);
        outbox.push(Tracked::Progress, progress);
    }

    /// Runs `change` (a topic or group change, refused on a replica); the
    /// master of a replicated group answers only once the change's metadata
    /// record is appended and acknowledged (QUORUM_TIMEOUT or NOT_MASTER
    /// otherwise, the change then may or may not survive a failover, as an
    /// unacknowledged send). It waits under the broker's policy, or under
    /// quorum when the changed `topic` is a quorum topic before or after the
    /// change: a lost change could otherwise turn a quorum topic into a
    /// `master` one, or bring back a deleted one. Metadata does not always
    /// wait for quorum: under a `master` default, with the replicas down,
    /// `master` topics and groups can still be changed. Without replication:
    /// `change` as it was.
    pub async fn acknowledged_change<T>(
        &self,
        topic: Option<&str>,
        change: impl FnOnce(&Broker) -> Result<T>,
    ) -> Result<T> {
        let WriteTerm::Master(term) = self.write_term()? else {
            return change(self);
        };
        let policy_of =
            |b: &Broker| topic.map_or(b.default_ack_policy(), |t| b.strictest_ack_policy(t));
        let policy_before = policy_of(self);
        let outbox = &self.replicated.outbox;
        let before = outbox.queued.load(Ordering::Relaxed);
        let answer = change(self)?;
        let policy = policy_before.stricter(policy_of(self));
        // Every unit queued so far is appended (or lost) once this returns:
        // a concurrent flush holding some of them finishes first.
        self.flush_metadata_log().await?;
        if outbox.lost_through.load(Ordering::Relaxed) > before {
            self.write_term()?;
            return Err(StoreError::Io {
                context: "appending a metadata record".into(),
                source: io::Error::other("it was not stored; full snapshots follow"),
            }
            .into());
        }
        match outbox.last_appended.load(Ordering::Relaxed) {
            NONE => {}
            last => {
                self.acknowledged(WriteTerm::Master(term), [last], policy)
                    .await?
            }
        }
        Ok(answer)
    }

    /// Appends the queued metadata records to the log, in order, in one
    /// append (or, if that fails, one per change or snapshot, so one that
    /// cannot be stored does not take the others with it), through the
    /// replication layer's door, so a member it deposed meanwhile appends
    /// nothing into its successor's log. Not master: they are dropped (a replica's log is the master's). What could not be
    /// stored makes the next progress save queue full snapshots, which carry
    /// every change it held.
    pub async fn flush_metadata_log(&self) -> Result<()> {
        let outbox = &self.replicated.outbox;
        let _in_order = outbox.appending.lock().await;
        let batch = std::mem::take(&mut *outbox.pending.lock());
        if batch.is_empty() || !outbox.is_master() {
            outbox.lost(&batch);
            return Ok(());
        }
        let all: Vec<Message> = batch.iter().flat_map(|u| u.records.clone()).collect();
        if let Ok(appended) = self.append_as_master(all).await {
            let mut at = 0;
            for unit in &batch {
                let end = at + unit.records.len();
                outbox.stored(unit, &appended[at..end]);
                at = end;
            }
            return Ok(());
        }
        let mut failed = None;
        for unit in &batch {
            match self.append_as_master(unit.records.clone()).await {
                Ok(appended) => outbox.stored(unit, &appended),
                Err(e) => {
                    outbox.lost(std::slice::from_ref(unit));
                    tracing::error!(error = %e, records = unit.records.len(), "appending metadata records failed; full snapshots follow");
                    outbox.lost_records.store(true, Ordering::Relaxed);
                    failed = Some(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }
}
