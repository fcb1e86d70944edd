//! Delayed delivery: a loop that sleeps until the timing wheel's next
//! deadline, then copies every due message from `%DELAY%` into its topic in one
//! append (see [`super::staged`] for the records and their recovery).

use std::sync::Arc;
use std::time::Duration;

use super::Broker;
use super::properties;
use super::staged::{self, Position};
use crate::store::{Message, MessageId, Record, RecordFlags, TransactionState, now_millis};

/// Most due messages released in one append.
const RELEASE_BATCH: usize = 1024;
/// Longest the loop sleeps without a deadline (it is woken for earlier ones).
const IDLE: Duration = Duration::from_secs(60);
/// When releasing fails (e.g. the disk is full), the next try.
const RETRY_AFTER_MS: i64 = 1000;

/// How long the delivery loop sleeps at `now` when the next deadline is
/// `next` (ms): until it, at once if it passed, [`IDLE`] without one.
fn sleep_for(next: Option<i64>, now: i64) -> Duration {
    match next {
        Some(at) => Duration::from_millis(at.saturating_sub(now).max(0) as u64),
        None => IDLE,
    }
}

impl Broker {
    /// Releases delayed messages when they are due, until shutdown.
    pub async fn run_delayed_delivery(self: Arc<Self>) {
        let mut stop = self.shutdown_signal();
        loop {
            let due = self.staged.take_due(now_millis());
            for chunk in due.chunks(RELEASE_BATCH) {
                self.release_delayed(chunk).await;
            }
            let sleep = sleep_for(self.staged.sleep_until(), now_millis());
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.staged.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn release_delayed(&self, due: &[Position]) {
        let mut copies = Vec::with_capacity(due.len());
        let mut released = Vec::with_capacity(due.len());
        for &p in due {
            let id = self.staged_id(p);
            match self.store.lookup_by_id(&id) {
                Ok(rec) => {
                    copies.push(self.released_copy(rec, &id, TransactionState::None));
                    released.push(p);
                }
                Err(e) => {
                    // Pinned against retention, so only corruption gets here.
                    tracing::error!(id = %id, error = %e, "delayed message unreadable; dropped");
                    self.staged.delivered(p.physical);
                }
            }
        }
        if copies.is_empty() {
            return;
        }
        match self.append_as_master(copies).await {
            Ok(_) => {
                for p in released {
                    self.staged.delivered(p.physical);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, count = released.len(), "releasing delayed messages failed; retrying");
                for p in released {
                    self.staged.retry_delayed(p, now_millis() + RETRY_AFTER_MS);
                }
            }
        }
    }

    pub(super) fn staged_id(&self, p: Position) -> MessageId {
        MessageId {
            broker_id: self.store.config().broker_id,
            physical_offset: p.physical,
            crc: p.crc,
        }
    }

    /// The copy of a staged record that goes to its topic, or, when that topic
    /// was deleted meanwhile, a marker that resolves it.
    pub(super) fn released_copy(
        &self,
        rec: Record,
        origin: &MessageId,
        txn: TransactionState,
    ) -> Message {
        let (real_topic, queue_id) = properties::staged_target(&rec.properties).unwrap_or_default();
        let real_topic = real_topic.to_string();
        match self.topics.get(&real_topic) {
            Some(topic) if queue_id < topic.queues => Message {
                topic: real_topic,
                queue_id,
                flags: RecordFlags::new(
                    rec.flags.codec().unwrap_or_default(),
                    topic.message_type,
                    txn,
                ),
                born_timestamp: rec.born_timestamp,
                properties: staged::released_properties(&rec, origin),
                tag: rec.tag,
                keys: rec.keys,
                body: rec.body,
            },
            _ => {
                tracing::warn!(topic = real_topic, id = %origin, "staged message dropped: its topic no longer exists");
                staged::marker(origin, "dropped")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_sleeps_until_the_next_deadline_or_idles() {
        assert_eq!(sleep_for(Some(1_250), 1_000), Duration::from_millis(250));
        assert_eq!(sleep_for(Some(1_000), 1_000), Duration::ZERO);
        assert_eq!(
            sleep_for(Some(400), 1_000),
            Duration::ZERO,
            "overdue: at once"
        );
        assert_eq!(sleep_for(Some(i64::MIN), 1_000), Duration::ZERO);
        assert_eq!(sleep_for(None, 1_000), IDLE);
    }
}
