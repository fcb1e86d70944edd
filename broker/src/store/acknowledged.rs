//! What consumers see of a replicated group's log: of a topic under quorum
//! acks, only acknowledged records (Kafka's high watermark). A record past the
//! committed end may be cut by a failover; a consumer that processed it would
//! have processed a message whose send failed. Topics under ack policy
//! `master` see every published record (their sends are acknowledged once
//! stored; a failover can cut both alike). Internal readers (metadata
//! tailing, rebuilds on promotion) read everything. Without a limit (a
//! standalone store) consumers see every published record, at the cost of one
//! atomic load per read.

use std::sync::atomic::Ordering;

use super::Store;
use super::error::Result;
use super::read::ReadResult;

/// No limit: consumers see every published record.
const UNLIMITED: u64 = u64::MAX;

/// Which records of a queue its consumers see (the topic's ack policy picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Those below the acknowledged end.
    Acknowledged,
    /// Every published record.
    Stored,
}

impl Store {
    /// From now on consumers see only records below an acknowledged end,
    /// none until [`Store::acknowledged_to`] raises it (replication under
    /// quorum acks calls this at startup).
    pub fn hide_unacknowledged(&self) {
        self.inner.acknowledged_end.store(0, Ordering::Release);
    }

    /// Everything below `end` is acknowledged (the master's committed end, or
    /// the one a replica received): consumers may see it, and those waiting
    /// for arrivals ([`Store::subscribe`]) wake. The end never moves back
    /// here; a truncation lowers it. No effect without a limit.
    pub fn acknowledged_to(&self, end: u64) {
        let before = self.inner.acknowledged_end.fetch_max(end, Ordering::AcqRel);
        if before < end {
            // The log end stays as published: only the wake-up matters.
            self.inner.arrivals.send_modify(|_| {});
        }
    }

    /// A truncation to `to` cut what lay past it: consumers see nothing there
    /// until the new master acknowledges it again.
    pub(super) fn unacknowledge_from(&self, to: u64) {
        let _ =
            self.inner
                .acknowledged_end
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |end| {
                    (end != UNLIMITED && end > to).then_some(to)
                });
    }

    /// Whether consumers see anything under quorum acks: a limit was raised
    /// since [`Store::hide_unacknowledged`] (or there is none).
    pub fn knows_acknowledged_end(&self) -> bool {
        self.acknowledged_end() > 0
    }

    /// The position consumers see records below (`u64::MAX`: all).
    pub(super) fn acknowledged_end(&self) -> u64 {
        self.inner.acknowledged_end.load(Ordering::Acquire)
    }

    /// The position consumers under `visibility` see records below.
    fn visible_end(&self, visibility: Visibility) -> u64 {
        match visibility {
            Visibility::Acknowledged => self.acknowledged_end(),
            Visibility::Stored => UNLIMITED,
        }
    }

    /// `(min, max)` offsets of a queue as consumers see them: `max` is one past
    /// its last visible record.
    pub fn visible_offsets(
        &self,
        topic: &str,
        queue_id: u32,
        visibility: Visibility,
    ) -> (u64, u64) {
        let limit = self.visible_end(visibility);
        if limit == UNLIMITED {
            return self.queue_offsets(topic, queue_id);
        }
        self.inner
            .queues
            .get(topic, queue_id)
            .map_or((0, 0), |cq| (cq.min_offset(), cq.end_below(limit)))
    }

    /// [`Store::read`] as consumers see the queue: visible records only.
    pub fn read_visible(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max_messages: usize,
        max_bytes: usize,
        visibility: Visibility,
    ) -> Result<ReadResult> {
        let limit = self.visible_end(visibility);
        self.inner
            .commit_log
            .read_stable(|| self.read_once(topic, queue_id, offset, max_messages, max_bytes, limit))
    }
}
