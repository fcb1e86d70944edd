//! The messaging layer: topics, groups, routing of sends, push consumption with
//! leases, retries and dead-lettering, pull consumption with rebalanced
//! assignments, progress, replay and lookups. It sits between the gRPC services
//! (which only translate) and the store.
//!
//! The [`Broker`] is one struct whose methods live by concern:
//!
//! ```text
//! mod.rs         the struct, open (with staged/dedupe recovery), accessors, maintenance
//! catalog.rs     topics and groups: create, delete, list, auto-create on first use
//! send.rs        send: validate, route, stage (delay/half), dedupe, append
//! push/          push consumption: streams, lease rounds, ack/nack/expiry, dead-letters
//! pull.rs        pull, commit/query offset, heartbeats and membership
//! progress.rs    saving progress, describe group, reset
//! subscriptions.rs  a group's one filter per topic: declared or first subscriber's
//! delivery.rs    what consumers see; lookups by id and key
//! cluster.rs     routes, drain, gauges
//! properties.rs  every reserved property name
//! log_scan.rs    the scan that rebuilds dedupe windows and staged messages
//! replicated/    with replication: master or replica, metadata records in the log
//! ```

mod catalog;
mod cluster;
pub mod dedupe;
mod delayed;
mod delivery;
pub mod error;
mod expiry;
pub mod groups;
mod journal;
pub mod limits;
mod log_scan;
pub mod membership;
mod metadata;
pub mod offsets;
mod progress;
pub mod properties;
mod pull;
pub mod push;
pub mod receipt;
pub mod replicated;
pub mod routes;
mod send;
pub mod staged;
mod subscriptions;
pub mod timing_wheel;
pub mod topic_settings;
pub mod topics;
mod transactions;

pub use catalog::{CreatedTopic, QueueRange, TopicDescription};
pub use cluster::{DrainState, RouteAnswer, RouteUpdate};
pub use delivery::Delivery;
pub use membership::AssignedQueue;
pub use progress::{GroupDescription, GroupMember, QueueProgress, ResetTarget};
pub use pull::{Assignment, GroupOffset, PullSpec, Pulled};
pub use push::{LeaseEnd, LeaseRound, NackOutcome, ReceiveLimits, ReceiveStream};
pub use replicated::{AppliedMetadata, LogRole};
pub use send::{Schedule, SendMessage, SendReceipt};
pub use subscriptions::Claim;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::MessagingConfig;
use crate::metrics::Metrics;
use crate::store::Store;
use error::Result;
use groups::Groups;
use membership::Membership;
use offsets::OffsetTable;
use push::subscription::{SubKey, Subscription};
use routes::RouteTable;
use topics::{TopicLimits, Topics};

/// How often the periodic save rewrites the idempotent producers' windows
/// (restarts scan the log written since; shutdown always saves).
const DEDUPE_SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// Identity and sizes of this broker.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    pub broker_id: u32,
    pub flush_mode: String,
    pub uptime: Duration,
    pub store: crate::store::StoreStats,
    pub topics: usize,
    pub groups: usize,
}

/// The messaging core of a broker.
#[derive(Debug)]
pub struct Broker {
    config: MessagingConfig,
    store: Arc<Store>,
    topics: Topics,
    groups: Groups,
    offsets: Mutex<OffsetTable>,
    subscriptions: Mutex<HashMap<SubKey, Arc<Subscription>>>,
    members: Mutex<HashMap<String, Membership>>,
    /// First subscribers' filters of groups that declare none.
    claims: Mutex<HashMap<subscriptions::GroupTopic, crate::filter::FilterSpec>>,
    next_consumer: AtomicU64,
    round_robin: AtomicU64,
    started: Instant,
    shutdown: watch::Sender<bool>,
    metrics: Option<Arc<Metrics>>,
    routes: parking_lot::RwLock<RouteTable>,
    draining: std::sync::atomic::AtomicBool,
    /// Send requests between their start and their answer.
    sends_in_flight: std::sync::atomic::AtomicU64,
    dedupe: dedupe::Dedupe,
    staged: staged::Staged,
    /// One save of the metadata files at a time (they share temporary names,
    /// and a later snapshot must not be overwritten by an earlier one).
    persisting: Mutex<()>,
    /// Whether this broker writes its log or follows a master's, and the
    /// metadata records that travel in the log (see [`replicated`]).
    replicated: replicated::Replicated,
    /// Set when the broker is a member of a replicated group.
    replication: std::sync::OnceLock<Arc<crate::replication::Replication>>,
}

impl Broker {
    /// Topics whose messages the store holds but whose metadata is gone (a
    /// damaged or deleted `topics` journal) are created again with the queues
    /// found, so their messages stay consumable; the message type cannot be
    /// known and is reported. Internal `%` topics other than dead-letter
    /// topics have no metadata.
    fn restore_topics_from_store(&self) -> Result<()> {
        for name in self.store.topics() {
            if self.topics.get(&name).is_some()
                || (name.starts_with('%') && !name.starts_with(limits::DEAD_LETTER_PREFIX))
            {
                continue;
            }
            let queues = self.store.queue_ids(&name).last().map_or(1, |q| q + 1);
            tracing::error!(
                topic = %name,
                queues,
                "the store holds messages of a topic its metadata does not know; \
                 created it again as a normal topic (re-apply its type if it had another)"
            );
            self.topics
                .create(&name, queues, crate::store::MessageType::Normal)?;
        }
        Ok(())
    }

    /// Loads topics, groups and progress from `<data_dir>/metadata/`. Metrics are
    /// recorded when `metrics` is given. The broker writes its log alone (no
    /// replication; see [`Broker::open_replica`] for a replicated one).
    pub fn open(
        config: MessagingConfig,
        store: Arc<Store>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Broker> {
        Broker::open_as(config, store, metrics, LogRole::Standalone)
    }

    /// [`Broker::open`] in `role`. A replica derives its dedupe windows and
    /// staged messages from its log as records arrive (`replicated/derive.rs`)
    /// and restores topics without metadata at its promotion: its log is the
    /// master's, not what its own saves covered.
    fn open_as(
        config: MessagingConfig,
        store: Arc<Store>,
        metrics: Option<Arc<Metrics>>,
        role: LogRole,
    ) -> Result<Broker> {
        let meta = store.config().data_dir.join("metadata");
        // Idempotent producers: the saved windows, plus what was stored after them.
        let (dedupe, dedupe_from) = dedupe::Dedupe::open(meta.join("producers.json"))?;
        // Staged messages: those stored after the saved position, minus those
        // whose release or rollback marker follows them.
        let (staged, staged_from) = staged::Staged::open(meta.join("staged.json"))?;
        if role != LogRole::Replica {
            // Nothing the scan may need goes while it runs.
            store.pin_retention(staged_from);
            let from = log_scan::ScanFrom {
                dedupe: dedupe_from,
                staged: staged_from,
            };
            let check_after = config.transaction_check_after.as_millis() as i64;
            log_scan::recover_from_log(&store, &dedupe, &staged, from, check_after, || false)?;
        } else {
            // Its own saves may cover a tail the group has since replaced:
            // a replica derives both from its log as records arrive.
            dedupe.follow_log();
            staged.follow_log();
        }
        let broker = Broker {
            dedupe,
            staged,
            persisting: Mutex::new(()),
            replicated: replicated::Replicated::open(&meta, role)?,
            replication: Default::default(),
            topics: Topics::open(
                &meta,
                TopicLimits {
                    max_topics: config.max_topics,
                    max_queues: config.max_queues_per_topic,
                    max_message_bytes: store.config().max_record_size_bytes,
                },
            )?,
            groups: Groups::open(&meta, config.max_groups)?,
            offsets: Mutex::new(OffsetTable::open(meta.join("offsets.json"))?),
            subscriptions: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            next_consumer: AtomicU64::new(1),
            round_robin: AtomicU64::new(0),
            started: Instant::now(),
            shutdown: watch::channel(false).0,
            metrics,
            routes: Default::default(),
            draining: Default::default(),
            sends_in_flight: Default::default(),
            config,
            store,
        };
        broker.observe_metadata_changes();
        broker
            .store
            .pin_retention(broker.retention_floor(broker.store.stats().commit_log_max));
        if role != LogRole::Replica {
            broker.restore_topics_from_store()?;
        }
        broker.refresh_log_retention();
        // Queue minimums are not saved: expired messages stay hidden after a
        // restart because every topic is expired before the broker serves.
        broker.expire_topics()?;
        Ok(broker)
    }

    /// The metrics registry, when metrics are recorded.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// The store below.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
    /// The messaging settings the broker runs with.
    pub fn config(&self) -> &MessagingConfig {
        &self.config
    }

    /// A receiver that turns true when the broker shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Ends every consumer stream (graceful shutdown).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Identity, uptime and sizes of this broker.
    pub fn info(&self) -> BrokerInfo {
        let cfg = self.store.config();
        BrokerInfo {
            broker_id: cfg.broker_id,
            flush_mode: format!("{:?}", cfg.flush).to_lowercase(),
            uptime: self.started.elapsed(),
            store: self.store.stats(),
            topics: self.topics.count(),
            groups: self.groups.list().len(),
        }
    }

    /// Background work until shutdown: delayed delivery, transaction checks,
    /// and periodically expiring silent members and messages past their
    /// topic's retention, and persisting progress.
    pub async fn run_maintenance(self: Arc<Self>) {
        let delayed = tokio::spawn(self.clone().run_delayed_delivery());
        let checks = tokio::spawn(self.clone().run_transaction_checks());
        let replicated = tokio::spawn(self.clone().run_replicated_metadata());
        let derive = tokio::spawn(self.clone().run_replica_derive());
        let mut stop = self.shutdown_signal();
        let mut tick = tokio::time::interval(self.config.offsets_persist_interval);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                let _ = tokio::join!(delayed, checks, replicated, derive);
                return;
            }
            // Serializing and fsyncing the metadata files takes milliseconds:
            // not on a runtime worker, which would stall every request.
            let this = self.clone();
            let saved = tokio::task::spawn_blocking(move || {
                this.expire_members();
                if let Err(e) = this.expire_topics() {
                    tracing::error!(error = %e, "expiring messages past their topic's retention failed");
                }
                this.persist_progress(DEDUPE_SAVE_INTERVAL)
            })
            .await;
            if let Ok(Err(e)) = saved {
                tracing::error!(error = %e, "persisting consumer progress failed");
            }
        }
    }
}

/// Runs `work` in its own task and waits for it: a caller that goes away (a
/// client timeout cancels its RPC) cannot stop it halfway, so bookkeeping that
/// must follow a store write always does.
pub(crate) async fn run_to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work).await?
}
