//! A push subscription: one group's progress on one topic (per member, for
//! broadcast groups), shared by every consumer stream of that group.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::cursor::{Lease, QueueCursor};
use super::offsets::ProgressKey;
use crate::filter::Filter;

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

/// Mutable state of a subscription.
#[derive(Debug)]
pub struct SubState {
    pub cursors: BTreeMap<u32, QueueCursor>,
    pub usage: HashMap<u64, Usage>,
    /// Queue the next lease round starts at, so queues are served in turn.
    pub round_robin: u32,
    /// The group's filter on this topic, as its consumers last subscribed.
    pub filter: Arc<Filter>,
    /// Gray-release lane of each consumer stream ("" = the base lane).
    /// Shared so each lease round reads it without copying.
    pub lanes: Arc<HashMap<u64, String>>,
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
    pub fn charge(&mut self, lease: &Lease) {
        let u = self.usage.entry(lease.consumer).or_default();
        u.messages += 1;
        u.bytes += lease.bytes;
    }

    /// Returns a finished lease's share to its consumer.
    pub fn refund(&mut self, lease: &Lease) {
        if let Some(u) = self.usage.get_mut(&lease.consumer) {
            u.messages = u.messages.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(lease.bytes);
        }
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
