//! The route table: where each queue of each topic is written and read. The
//! operator computes it from the ready brokers and pushes it to every broker with
//! an increasing epoch; brokers answer `QueryRoute` from it and ignore a table
//! older than the one they hold. A broker that never received one is standalone:
//! all of a topic's queues are on itself.

use std::collections::HashMap;

use crate::store::MessageType;

/// One (broker, queue) of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRoute {
    pub queue_id: u32,
    pub broker_id: u32,
    pub broker_address: String,
    pub writable: bool,
    pub readable: bool,
}

/// The route of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    pub message_type: MessageType,
    pub queues: Vec<QueueRoute>,
}

/// The cluster's routes, as last pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// 0 until the operator pushes a table (standalone mode).
    pub epoch: u64,
    pub topics: HashMap<String, TopicRoute>,
}

impl RouteTable {
    /// Installs `next` if it is newer; returns whether it was.
    pub fn replace_if_newer(&mut self, next: RouteTable) -> bool {
        if next.epoch <= self.epoch {
            return false;
        }
        *self = next;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_newer_tables_replace() {
        let mut t = RouteTable::default();
        let table = |epoch| RouteTable {
            epoch,
            topics: HashMap::new(),
        };
        assert!(t.replace_if_newer(table(5)));
        assert!(!t.replace_if_newer(table(5)));
        assert!(!t.replace_if_newer(table(3)));
        assert_eq!(t.epoch, 5);
        assert!(t.replace_if_newer(table(6)));
    }
}
