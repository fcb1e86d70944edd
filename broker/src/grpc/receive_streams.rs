//! Counts of open Receive streams on the broker, per consumer group and per
//! client id, so no client can open enough streams to slow every send (each
//! stream wakes on every new message) or exhaust memory.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::messaging::error::{BrokerError, Limit, Result};

/// The open streams, and how many each group and client id may have.
#[derive(Debug)]
pub struct ReceiveStreams {
    max_total: usize,
    max_per_group: usize,
    max_per_client: usize,
    open: Mutex<OpenStreams>,
}

/// Entries exist only for groups and clients with open streams.
#[derive(Debug, Default)]
struct OpenStreams {
    total: usize,
    per_group: HashMap<String, usize>,
    per_client: HashMap<String, usize>,
}

impl ReceiveStreams {
    pub fn new(
        max_total: usize,
        max_per_group: usize,
        max_per_client: usize,
    ) -> Arc<ReceiveStreams> {
        Arc::new(ReceiveStreams {
            max_total,
            max_per_group,
            max_per_client,
            open: Mutex::default(),
        })
    }

    /// A place for one more stream of `group` and `client_id`, held until the
    /// returned slot is dropped; TOO_MANY_STREAMS when either is at its limit.
    pub fn open(self: &Arc<Self>, group: &str, client_id: &str) -> Result<StreamSlot> {
        let mut open = self.open.lock();
        let refuse = |limit, max| Err(BrokerError::LimitReached { limit, max });
        if open.total >= self.max_total {
            return refuse(Limit::Streams, self.max_total);
        }
        if open.per_group.get(group).copied().unwrap_or(0) >= self.max_per_group {
            return refuse(Limit::StreamsPerGroup, self.max_per_group);
        }
        if open.per_client.get(client_id).copied().unwrap_or(0) >= self.max_per_client {
            return refuse(Limit::StreamsPerClient, self.max_per_client);
        }
        open.total += 1;
        *open.per_group.entry(group.to_string()).or_default() += 1;
        *open.per_client.entry(client_id.to_string()).or_default() += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            group: group.to_string(),
            client_id: client_id.to_string(),
        })
    }
}

/// One open stream's place under the limits.
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<ReceiveStreams>,
    group: String,
    client_id: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock();
        open.total -= 1;
        release(&mut open.per_group, &self.group);
        release(&mut open.per_client, &self.client_id);
    }
}

fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[test]
    fn streams_are_bounded_per_group_and_per_client() {
        let streams = ReceiveStreams::new(100, 3, 2);
        let a1 = streams.open("g", "a").unwrap();
        let _a2 = streams.open("g", "a").unwrap();
        let refused = streams.open("h", "a").unwrap_err();
        assert_eq!(refused.code(), Reason::TooManyStreams);
        assert!(
            refused
                .to_string()
                .contains("max_receive_streams_per_client")
        );
        let _b1 = streams.open("g", "b").unwrap();
        let refused = streams.open("g", "c").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("max_receive_streams_per_group")
        );
        drop(a1);
        let _c1 = streams.open("g", "c").unwrap();
        drop(_c1);
        drop(_b1);
        drop(_a2);
        let open = streams.open.lock();
        assert!(open.per_group.is_empty() && open.per_client.is_empty());
        assert_eq!(open.total, 0);
    }

    #[test]
    fn streams_are_bounded_on_the_broker_whatever_the_names() {
        let streams = ReceiveStreams::new(3, 10, 10);
        let slots: Vec<_> = (0..3)
            .map(|i| streams.open(&format!("g{i}"), &format!("c{i}")).unwrap())
            .collect();
        let refused = streams.open("g9", "c9").unwrap_err();
        assert!(
            refused.to_string().contains("max_receive_streams"),
            "{refused}"
        );
        drop(slots);
        streams.open("g9", "c9").unwrap();
    }
}
