//! A push subscription: one group's progress on one topic (per member, for
//! broadcast groups), shared by every consumer stream of that group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::cursor::{Lease, LeaseEnd, QueueCursor, Released};
use crate::filter::Filter;
use crate::messaging::groups::GroupConfig;
use crate::messaging::offsets::{Progress, ProgressKey};

/// Identifies a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubKey {
    pub group: String,
    pub topic: String,
    /// Broadcast member; empty for clustering groups.
    pub member: String,
}

impl SubKey {
    pub fn progress(&self, queue_id: u32) -> ProgressKey {
        ProgressKey {
            group: self.group.clone(),
            topic: self.topic.clone(),
            member: self.member.clone(),
            queue_id,
        }
    }
}

/// Messages and bytes leased to one consumer stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u64,
    pub bytes: u64,
}

/// An offset of one of a subscription's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOffset {
    pub queue_id: u32,
    pub offset: u64,
}

/// Mutable state of a subscription. Its fields are the push module's; the rest
/// of the broker goes through the methods.
#[derive(Debug)]
pub struct SubState {
    pub(super) cursors: BTreeMap<u32, QueueCursor>,
    pub(super) usage: HashMap<u64, Usage>,
    /// Queue the next lease round starts at, so queues are served in turn.
    pub(super) round_robin: u32,
    /// The group's filter on this topic (see `messaging/subscriptions.rs`).
    pub(super) filter: Arc<Filter>,
    /// Gray-release lane of each consumer stream ("" = the base lane).
    /// Shared so each lease round reads it without copying.
    pub(super) lanes: Arc<HashMap<u64, String>>,
}

impl Default for SubState {
    fn default() -> Self {
        SubState {
            cursors: BTreeMap::new(),
            usage: HashMap::new(),
            round_robin: 0,
            filter: Arc::new(Filter::All),
            lanes: Arc::default(),
        }
    }
}

impl SubState {
    /// Accounts a new lease to its consumer.
    pub(super) fn charge(&mut self, lease: &Lease) {
        let u = self.usage.entry(lease.consumer).or_default();
        u.messages += 1;
        u.bytes += lease.bytes;
    }

    /// Returns a finished lease's share to its consumer.
    pub(super) fn refund(&mut self, lease: &Lease) {
        if let Some(u) = self.usage.get_mut(&lease.consumer) {
            u.messages = u.messages.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(lease.bytes);
        }
    }

    /// Registers a consumer stream of `lane`; `filter` is the group's.
    pub fn add_consumer(&mut self, consumer: u64, lane: String, filter: Arc<Filter>) {
        self.usage.insert(consumer, Usage::default());
        Arc::make_mut(&mut self.lanes).insert(consumer, lane);
        self.filter = filter;
    }

    /// Whether any consumer stream is open.
    pub fn has_consumers(&self) -> bool {
        !self.usage.is_empty()
    }

    /// Replaces the group's filter (its declaration changed).
    pub fn set_filter(&mut self, filter: Arc<Filter>) {
        self.filter = filter;
    }

    /// Unregisters a consumer stream; returns the offsets it still holds leases on.
    pub fn remove_consumer(&mut self, consumer: u64) -> Vec<QueueOffset> {
        self.usage.remove(&consumer);
        Arc::make_mut(&mut self.lanes).remove(&consumer);
        self.cursors
            .iter()
            .flat_map(|(q, c)| {
                c.leases()
                    .filter(|(_, l)| l.consumer == consumer)
                    .map(|(o, _)| QueueOffset {
                        queue_id: *q,
                        offset: *o,
                    })
            })
            .collect()
    }

    /// Unregisters a consumer stream but leaves its leases to their deadlines
    /// (a client that lost its connection may still ack what it holds).
    pub fn detach_consumer(&mut self, consumer: u64) {
        self.usage.remove(&consumer);
        Arc::make_mut(&mut self.lanes).remove(&consumer);
    }

    /// Renews the leases of `consumer` to `deadline` (see [`QueueCursor::renew`]).
    pub fn renew(&mut self, consumer: u64, now: i64, deadline: i64) {
        for cursor in self.cursors.values_mut() {
            cursor.renew(consumer, now, deadline);
        }
    }

    /// Leases that ran out by `now`.
    pub fn expired(&self, now: i64) -> Vec<QueueOffset> {
        self.cursors
            .iter()
            .flat_map(|(q, c)| {
                c.expired(now).into_iter().map(|offset| QueueOffset {
                    queue_id: *q,
                    offset,
                })
            })
            .collect()
    }

    /// Ends a lease without an ack: retried after the group's backoff, or (its
    /// attempts used up) to be dead-lettered. `None` if it is not leased.
    pub fn release(&mut self, at: QueueOffset, now: i64, group: &GroupConfig) -> Option<Released> {
        let cursor = self.cursors.get_mut(&at.queue_id)?;
        let (lease, released) =
            cursor.release(at.offset, now, group.max_delivery_attempts, |a| {
                group.backoff(a).as_millis() as i64
            })?;
        self.refund(&lease);
        Some(released)
    }

    /// Acks the delivery `delivery_id` of `at`; false if it is not the current one.
    pub fn ack(&mut self, at: QueueOffset, delivery_id: u64) -> bool {
        let Some(lease) = self
            .cursors
            .get_mut(&at.queue_id)
            .and_then(|c| c.ack(at.offset, delivery_id))
        else {
            return false;
        };
        self.refund(&lease);
        true
    }

    /// Whether `delivery_id` is the current lease of `at`.
    pub fn holds(&self, at: QueueOffset, delivery_id: u64) -> bool {
        self.lease(at, delivery_id).is_some()
    }

    /// The current lease `delivery_id` of `at`, if it is current.
    pub fn lease(&self, at: QueueOffset, delivery_id: u64) -> Option<Lease> {
        self.cursors
            .get(&at.queue_id)
            .and_then(|c| c.lease_of(at.offset, delivery_id))
            .copied()
    }

    /// Moves the end of the current lease `delivery_id` of `at`; false if it is
    /// not the current one.
    pub fn extend(
        &mut self,
        at: QueueOffset,
        delivery_id: u64,
        deadline: i64,
        ending: LeaseEnd,
    ) -> bool {
        self.cursors
            .get_mut(&at.queue_id)
            .and_then(|c| c.extend(at.offset, delivery_id, deadline, ending))
            .is_some()
    }

    /// Deliveries of `at` so far, if it is open.
    pub fn attempts(&self, at: QueueOffset) -> Option<u32> {
        self.cursors
            .get(&at.queue_id)
            .and_then(|c| c.attempts().get(&at.offset).copied())
    }

    /// Schedules `at` for another delivery at `when`.
    pub fn retry_at(&mut self, at: QueueOffset, when: i64) {
        if let Some(c) = self.cursors.get_mut(&at.queue_id) {
            c.retry_at(at.offset, when);
        }
    }

    /// Marks `at` done (acked, dead-lettered or dropped).
    pub fn mark_done(&mut self, at: QueueOffset) {
        if let Some(c) = self.cursors.get_mut(&at.queue_id) {
            c.mark_done(at.offset);
        }
    }

    /// The committed offset of a queue whose cursor is live.
    pub fn committed(&self, queue_id: u32) -> Option<u64> {
        self.cursors.get(&queue_id).map(QueueCursor::committed)
    }

    /// Messages leased on a queue whose cursor is live.
    pub fn in_flight(&self, queue_id: u32) -> Option<usize> {
        self.cursors.get(&queue_id).map(QueueCursor::in_flight)
    }

    /// The progress of every live cursor, to be saved.
    pub fn snapshot(&self) -> Vec<(u32, Progress)> {
        self.cursors
            .iter()
            .map(|(q, c)| (*q, c.snapshot()))
            .collect()
    }

    /// Moves a queue's progress to `offset`, ending its leases.
    pub fn reset(&mut self, queue_id: u32, offset: u64) {
        let leases = self.cursors.entry(queue_id).or_default().reset(offset);
        for lease in leases {
            self.refund(&lease);
        }
    }

    /// Ends every lease and drops every cursor, so each is loaded again from
    /// the saved progress on its next use (a promoted replica's progress is
    /// the master's, not what its own consumers did).
    pub fn forget_cursors(&mut self) {
        for (_, mut cursor) in std::mem::take(&mut self.cursors) {
            for lease in cursor.reset(0) {
                self.refund(&lease);
            }
        }
    }

    /// Messages waiting for a retry.
    pub fn retry_pending(&self) -> usize {
        self.cursors.values().map(QueueCursor::retry_pending).sum()
    }
}

/// A subscription and the wake-up signal of its consumer streams.
#[derive(Debug)]
pub struct Subscription {
    pub key: SubKey,
    pub state: Mutex<SubState>,
    /// Woken on acks, nacks, resets and consumer changes.
    pub notify: Notify,
}

impl Subscription {
    pub fn new(key: SubKey) -> Subscription {
        Subscription {
            key,
            state: Mutex::new(SubState::default()),
            notify: Notify::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(consumer: u64, bytes: u64) -> Lease {
        Lease {
            delivery_id: 1,
            deadline: 0,
            consumer,
            bytes,
            ending: LeaseEnd::Backoff,
            leased_at: 0,
        }
    }

    #[test]
    fn leases_are_charged_to_their_consumer_and_refunded_once() {
        let mut st = SubState::default();
        st.usage.insert(1, Usage::default());
        st.charge(&lease(1, 100));
        st.charge(&lease(1, 20));
        assert_eq!(
            st.usage[&1],
            Usage {
                messages: 2,
                bytes: 120
            }
        );
        st.refund(&lease(1, 100));
        assert_eq!(
            st.usage[&1],
            Usage {
                messages: 1,
                bytes: 20
            }
        );
        // More refunds than charges (a lease ended twice) stop at zero.
        st.refund(&lease(1, 100));
        st.refund(&lease(1, 100));
        assert_eq!(st.usage[&1], Usage::default());
        // A closed stream's leases ending later change nobody's usage.
        st.refund(&lease(2, 5));
        assert!(!st.usage.contains_key(&2));
    }
}
