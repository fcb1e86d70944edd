//! The broker in a cluster: routes, draining, and the gauges the operator and
//! dashboards read.

use std::sync::atomic::Ordering;

use super::Broker;
use super::error::{BrokerError, Result};
use super::routes::{QueueRoute, RouteTable, TopicRoute};
use crate::replication::NotMasterCause;

/// A topic's route and the epoch of the table it comes from (0: standalone).
#[derive(Debug, Clone)]
pub struct RouteAnswer {
    pub route: TopicRoute,
    pub epoch: u64,
}

/// The route table epoch held after an update, and whether the update applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteUpdate {
    pub epoch: u64,
    pub applied: bool,
}

/// Whether the broker is draining, how many stored messages some group has
/// not consumed yet (with sends still being stored), and how many staged
/// (delayed or half) messages have yet to reach their topic here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainState {
    pub draining: bool,
    pub unconsumed: u64,
    pub staged: u64,
}

impl Broker {
    /// The route of a topic and the table's epoch: from the pushed route table in
    /// a cluster, else (standalone) every queue on this broker.
    ///
    /// A master whose lease lapsed answers NOT_MASTER instead: cut off from
    /// the operator, its table may still name it after a successor was
    /// elected, under the same epoch, which clients would take; refused, they
    /// ask the other brokers of the route they hold.
    pub fn route(&self, topic: &str) -> Result<RouteAnswer> {
        if let Some(r) = self.replication.get()
            && r.master_lease_lapsed()
        {
            return Err(r.not_master(NotMasterCause::LeaseLapsed).into());
        }
        let table = self.routes.read();
        if table.epoch > 0 {
            return table
                .topics
                .get(topic)
                .map(|r| RouteAnswer {
                    route: r.clone(),
                    epoch: table.epoch,
                })
                .ok_or_else(|| BrokerError::TopicNotFound(topic.to_string()));
        }
        drop(table);
        let t = self.topic_for_use(topic)?;
        let writable = !self.draining.load(Ordering::Relaxed);
        let route = TopicRoute {
            message_type: t.message_type,
            queues: (0..t.queues)
                .map(|queue_id| QueueRoute {
                    queue_id,
                    broker_id: self.store.config().broker_id,
                    broker_address: self.config.advertised_address(),
                    writable,
                    readable: true,
                })
                .collect(),
        };
        Ok(RouteAnswer { route, epoch: 0 })
    }

    /// Installs a pushed route table if it is newer; returns the epoch now held
    /// and whether the table was applied.
    pub fn update_routes(&self, table: RouteTable) -> RouteUpdate {
        let mut current = self.routes.write();
        let applied = current.replace_if_newer(table);
        if applied {
            tracing::info!(
                epoch = current.epoch,
                topics = current.topics.len(),
                "route table updated"
            );
        }
        RouteUpdate {
            epoch: current.epoch,
            applied,
        }
    }

    /// Starts or stops draining this broker.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
        tracing::info!(draining, "drain state changed");
    }

    /// Whether this broker is draining, how many stored messages some group has
    /// not consumed yet and how many staged ones wait (a drained broker reports
    /// 0 for both).
    pub fn drain_state(&self) -> DrainState {
        let unconsumed = self
            .groups
            .list()
            .iter()
            .filter_map(|g| self.describe_group(&g.name).ok())
            .flat_map(|d| d.queues)
            .map(|q| q.max_offset.saturating_sub(q.committed))
            .sum::<u64>();
        // Sends still being stored count as unconsumed: they may land after
        // the groups' progress was read.
        let in_flight = self.sends_in_flight.load(Ordering::SeqCst);
        DrainState {
            draining: self.draining.load(Ordering::SeqCst),
            unconsumed: unconsumed + in_flight,
            staged: self.staged_to_drain() as u64,
        }
    }

    /// The queues of `topic` this broker takes sends for: those the route
    /// names it the writer of (standalone: all of them).
    pub fn own_writable_queues(&self, topic: &str) -> Result<Vec<u32>> {
        let table = self.routes.read();
        if table.epoch > 0 {
            let me = self.store.config().broker_id;
            return table
                .topics
                .get(topic)
                .map(|r| {
                    r.queues
                        .iter()
                        .filter(|q| q.writable && q.broker_id == me)
                        .map(|q| q.queue_id)
                        .collect()
                })
                .ok_or_else(|| BrokerError::TopicNotFound(topic.to_string()));
        }
        drop(table);
        Ok((0..self.topic_for_use(topic)?.queues).collect())
    }

    /// The epoch of the route table held (0 = standalone).
    pub fn route_epoch(&self) -> u64 {
        self.routes.read().epoch
    }

    /// Refreshes the gauges computed from live state (called at scrape time).
    pub fn update_gauges(&self) {
        let Some(m) = &self.metrics else { return };
        let stats = self.store.stats();
        m.commit_log_bytes
            .set((stats.commit_log_max - stats.commit_log_min) as i64);
        m.segments.set(stats.segments as i64);
        if let Some(r) = self.replication.get() {
            r.update_gauges();
        }
        if let Ok(ratio) = crate::store::disk_usage_ratio(&self.store.config().data_dir) {
            m.disk_usage_ratio.set(ratio);
        }
        m.queue_max_offset.reset();
        for t in self.topics.list() {
            for q in 0..t.queues {
                let max = self.store.queue_offsets(&t.name, q).1;
                m.queue_max_offset
                    .with_label_values(&[&t.name, &q.to_string()])
                    .set(max as i64);
            }
        }
        m.group_committed.reset();
        m.group_lag.reset();
        m.group_in_flight.reset();
        let mut pending = 0;
        for g in self.groups.list() {
            let Ok(d) = self.describe_group(&g.name) else {
                continue;
            };
            // Broadcast members: the group's progress is its slowest member's.
            let mut per_queue: std::collections::BTreeMap<(String, u32), (u64, u64)> =
                Default::default();
            let mut in_flight: std::collections::BTreeMap<String, u64> = Default::default();
            for q in d.queues {
                let e = per_queue
                    .entry((q.topic.clone(), q.queue_id))
                    .or_insert((u64::MAX, q.max_offset));
                e.0 = e.0.min(q.committed);
                *in_flight.entry(q.topic).or_default() += q.in_flight as u64;
            }
            for ((topic, queue), (committed, max)) in per_queue {
                let labels = [g.name.as_str(), topic.as_str(), &queue.to_string()];
                m.group_committed
                    .with_label_values(&labels)
                    .set(committed as i64);
                m.group_lag
                    .with_label_values(&labels)
                    .set(max.saturating_sub(committed) as i64);
            }
            for (topic, n) in in_flight {
                m.group_in_flight
                    .with_label_values(&[&g.name, &topic])
                    .set(n as i64);
            }
        }
        for sub in self.subscriptions.lock().values() {
            pending += sub.state.lock().retry_pending();
        }
        m.delayed_pending
            .set((pending + self.staged.delayed_pending()) as i64);
        m.transactions_pending
            .set(self.staged.halves_pending() as i64);
    }
}
