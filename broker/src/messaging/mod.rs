//! The messaging layer: topics, groups, routing of sends, push consumption with
//! leases, retries and dead-lettering, pull consumption with rebalanced
//! assignments, progress, replay and lookups. It sits between the gRPC services
//! (which only translate) and the store.

pub mod cursor;
pub mod dedupe;
mod delayed;
pub mod error;
pub mod groups;
mod journal;
pub mod limits;
pub mod membership;
mod metadata;
pub mod offsets;
pub mod receipt;
pub mod routes;
pub mod staged;
pub mod subscription;
pub mod timing_wheel;
pub mod topics;
mod transactions;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::MessagingConfig;
use crate::filter::Filter;
use crate::metrics::Metrics;
use crate::store::{Message, MessageId, MessageType, Record, Store, StoreError, now_millis};
use cursor::{Lease, QueueCursor, Released};
use error::{BrokerError, Result, brief};
use groups::{ConsumeMode, GroupConfig, Groups};
use membership::{MemberKind, Membership};
use offsets::{OffsetTable, Progress, ProgressKey};
use receipt::ReceiptHandle;
use routes::{QueueRoute, RouteTable, TopicRoute};
use subscription::{SubKey, SubState, Subscription, Usage};
use topics::{TopicConfig, TopicLimits, Topics};

/// The idempotent producer id and sequence a record carries, if any.
fn producer_sequence(properties: &[(String, String)]) -> Option<(String, u64)> {
    Some((
        staged::property(properties, dedupe::PRODUCER_ID)?.to_string(),
        staged::property(properties, dedupe::SEQUENCE)?
            .parse()
            .ok()?,
    ))
}

/// What a consumer's lease round leaves alone: offsets it passed over, and
/// messages of lanes that are not its to take.
fn lane_skip<'a>(
    lanes: &'a HashMap<u64, String>,
    consumer: u64,
    passed: &'a BTreeSet<u64>,
) -> impl Fn(u64, Option<&str>) -> bool + 'a {
    move |o, lane| passed.contains(&o) || lane.is_some_and(|l| !lane_ok(lanes, consumer, l))
}

/// Whether `consumer` may take a message of `lane`: a lane's messages go to its
/// consumers while any is online, else to the base lane; base-lane messages go
/// only to base-lane consumers.
fn lane_ok(lanes: &HashMap<u64, String>, consumer: u64, lane: &str) -> bool {
    let mine = lanes.get(&consumer).map_or("", String::as_str);
    if !lane.is_empty() && lanes.values().any(|l| l == lane) {
        mine == lane
    } else {
        mine.is_empty()
    }
}

/// The first bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// Most messages one lease round passes over per queue (gray lanes), so a
/// consumer facing a long backlog of another lane's messages holds the
/// subscription lock only briefly.
const MAX_PASSES: usize = 256;

/// System property carrying a message's gray-release lane.
pub const LANE_PROPERTY: &str = "__LANE";

/// How often the periodic save rewrites the idempotent producers' windows
/// (restarts scan the log written since; shutdown always saves).
const DEDUPE_SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// Property carrying a message's sharding key.
pub const SHARDING_KEY_PROPERTY: &str = "SHARDING_KEY";
/// Properties added to a dead-lettered message.
pub const DLQ_ORIGIN_TOPIC: &str = "DLQ_ORIGIN_TOPIC";
pub const DLQ_ORIGIN_QUEUE: &str = "DLQ_ORIGIN_QUEUE";
pub const DLQ_ORIGIN_OFFSET: &str = "DLQ_ORIGIN_OFFSET";
pub const DLQ_ORIGIN_MESSAGE_ID: &str = "DLQ_ORIGIN_MESSAGE_ID";
pub const DLQ_DELIVERY_ATTEMPTS: &str = "DLQ_DELIVERY_ATTEMPTS";

/// `(queue id, min offset, max offset)` of a queue.
pub type QueueRange = (u32, u64, u64);

/// A message as a producer sends it.
#[derive(Debug, Clone, Default)]
pub struct SendMessage {
    pub topic: String,
    pub body: Bytes,
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub sharding_key: String,
    pub queue_id: Option<u32>,
    pub born_timestamp: i64,
    pub codec: crate::store::Codec,
    /// Idempotent producers: the producer's id (empty: not idempotent) and this
    /// message's sequence number.
    pub producer_id: String,
    pub sequence: u64,
    /// Delayed messages: deliver at this time (ms), or this long after receipt.
    pub deliver_at: i64,
    pub delay_ms: u64,
    /// Transactional messages: stored as a half message of this producer group.
    pub transactional: bool,
    pub producer_group: String,
    /// Gray-release lane ("" = base).
    pub lane: String,
}

/// Where a sent message landed (also kept in the idempotent producers' saved
/// windows).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendReceipt {
    pub message_id: String,
    pub topic: String,
    pub queue_id: u32,
    /// 0 for a staged (delayed or transactional) message: its offset is
    /// assigned when it is released.
    pub offset: u64,
    pub store_timestamp: i64,
    /// Delayed messages: when it will be delivered.
    #[serde(default)]
    pub deliver_at: i64,
    /// Transactional messages: the id EndTransaction takes.
    #[serde(default)]
    pub transaction_id: String,
}

impl SendReceipt {
    /// The receipt of a stored record, staged records naming their real topic.
    fn of(
        topic: &str,
        properties: &[(String, String)],
        id: &MessageId,
        queue_id: u32,
        offset: u64,
        store_timestamp: i64,
    ) -> SendReceipt {
        let message_id = id.to_string();
        let staged_to = || {
            let (topic, queue) = staged::target(properties).unwrap_or_default();
            (topic.to_string(), queue)
        };
        let (topic, queue_id, offset, deliver_at, transaction_id) = match topic {
            staged::DELAY_TOPIC => {
                let (t, q) = staged_to();
                (t, q, 0, staged::deliver_at(properties), String::new())
            }
            staged::HALF_TOPIC => {
                let (t, q) = staged_to();
                (t, q, 0, 0, message_id.clone())
            }
            _ => (topic.to_string(), queue_id, offset, 0, String::new()),
        };
        SendReceipt {
            message_id,
            topic,
            queue_id,
            offset,
            store_timestamp,
            deliver_at,
            transaction_id,
        }
    }
}

/// What a send needs of each appended message after the append.
struct SentHead {
    topic: String,
    staged_properties: Vec<(String, String)>,
    bytes: usize,
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub record: Record,
    pub message_id: String,
    pub attempt: u32,
    /// Set for leased (push) deliveries.
    pub receipt_handle: String,
    pub invisible_until: i64,
}

/// Flow-control limits of one consumer stream.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLimits {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub invisible: Duration,
}

/// Per-queue progress of a group, for describe and reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueProgress {
    pub topic: String,
    pub queue_id: u32,
    pub member: String,
    pub committed: u64,
    pub max_offset: u64,
    pub in_flight: u32,
}

/// Where to move a group's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    Earliest,
    Latest,
    Timestamp(i64),
    Offset(i64),
}

/// Result of a pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub deliveries: Vec<Delivery>,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// What a pull asks for.
#[derive(Debug, Clone, Copy)]
pub struct PullSpec<'a> {
    /// For metrics only: pulls do not move the group's progress.
    pub group: &'a str,
    pub topic: &'a str,
    pub queue_id: u32,
    pub offset: u64,
    pub max_messages: usize,
    pub max_bytes: usize,
    pub wait: Duration,
    /// Messages that do not pass are skipped (the returned next offset moves
    /// past them).
    pub filter: &'a Filter,
}

/// What a member learns from a heartbeat.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub generation: u64,
    pub queues: Vec<(String, u32)>,
}

/// A group and its live state, for describe.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    pub config: GroupConfig,
    pub queues: Vec<QueueProgress>,
    pub members: Vec<(String, membership::Member)>,
    pub generation: u64,
}

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
    /// recorded when `metrics` is given.
    pub fn open(
        config: MessagingConfig,
        store: Arc<Store>,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Broker> {
        let meta = store.config().data_dir.join("metadata");
        // Idempotent producers: the saved windows, plus what was stored after them.
        let (dedupe, dedupe_from) = dedupe::Dedupe::open(meta.join("producers.json"))?;
        // Staged messages: those stored after the saved position, minus those
        // whose release or rollback marker follows them.
        let (staged, staged_from) = staged::Staged::open(meta.join("staged.json"))?;
        // Nothing the scan may need goes while it runs.
        store.pin_retention(staged_from);
        let broker_id = store.config().broker_id;
        let check_after = config.transaction_check_after.as_millis() as i64;
        store.scan(dedupe_from.min(staged_from), |rec| {
            if rec.physical_offset >= staged_from {
                staged.recover(rec, check_after);
            }
            if rec.physical_offset >= dedupe_from
                && let Some((pid, seq)) = producer_sequence(&rec.properties)
            {
                let id = MessageId {
                    broker_id,
                    physical_offset: rec.physical_offset,
                    crc: rec.crc,
                };
                let receipt = SendReceipt::of(
                    &rec.topic,
                    &rec.properties,
                    &id,
                    rec.queue_id,
                    rec.queue_offset,
                    rec.store_timestamp,
                );
                dedupe.record(&pid, seq, &receipt);
            }
        })?;
        store.pin_retention(staged.floor(store.stats().commit_log_max));
        let broker = Broker {
            dedupe,
            staged,
            persisting: Mutex::new(()),
            topics: Topics::open(
                &meta,
                TopicLimits {
                    max_topics: config.max_topics,
                    max_queues: config.max_queues_per_topic,
                },
            )?,
            groups: Groups::open(&meta, config.max_groups)?,
            offsets: Mutex::new(OffsetTable::open(meta.join("offsets.json"))?),
            subscriptions: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
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
        broker.restore_topics_from_store()?;
        Ok(broker)
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
    pub fn config(&self) -> &MessagingConfig {
        &self.config
    }

    // ---- topics -------------------------------------------------------------

    /// Creates (or grows) a user topic.
    pub fn create_topic(
        &self,
        name: &str,
        queues: u32,
        message_type: MessageType,
    ) -> Result<(TopicConfig, bool)> {
        topics::validate_user_topic(name)?;
        self.topics.create(name, queues, message_type)
    }

    /// Deletes a topic, its queues and every group's progress on it.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.topics.delete(name)?;
        self.store.delete_topic(name)?;
        self.subscriptions.lock().retain(|k, _| k.topic != name);
        self.offsets.lock().remove_where(|k| k.topic == name);
        self.persist_offsets()
    }

    pub fn list_topics(&self) -> Vec<TopicConfig> {
        self.topics.list()
    }

    /// A topic and `(queue, min, max)` offsets of each queue.
    pub fn describe_topic(&self, name: &str) -> Result<(TopicConfig, Vec<QueueRange>)> {
        let topic = self.topics.require(name)?;
        let queues = (0..topic.queues)
            .map(|q| {
                let (min, max) = self.store.queue_offsets(name, q);
                (q, min, max)
            })
            .collect();
        Ok((topic, queues))
    }

    /// The topic, auto-created (when enabled) on first use.
    fn topic_for_use(&self, name: &str) -> Result<TopicConfig> {
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        if !self.config.auto_create_topics {
            return Err(BrokerError::TopicNotFound(name.to_string()));
        }
        topics::validate_user_topic(name)?;
        Ok(self
            .topics
            .create(name, self.config.default_queues, MessageType::Normal)?
            .0)
    }

    /// Refuses a topic name [`Self::topic_for_use`] would refuse, without
    /// creating anything.
    fn check_topic_for_use(&self, name: &str) -> Result<()> {
        if self.topics.get(name).is_some() {
            return Ok(());
        }
        topics::validate_user_topic(name)
    }

    // ---- groups -------------------------------------------------------------

    /// Defaults for a group created implicitly or without settings.
    pub fn default_group(&self, name: &str, mode: ConsumeMode) -> GroupConfig {
        GroupConfig {
            name: name.to_string(),
            mode,
            max_delivery_attempts: self.config.max_delivery_attempts,
            retry_backoff_ms: self
                .config
                .retry_backoff
                .iter()
                .map(|d| d.as_millis() as u64)
                .collect(),
            dead_letter: true,
        }
    }

    /// Creates or updates a group, and its dead-letter topic, so the latter can
    /// be subscribed to and inspected before anything is dead-lettered.
    pub fn upsert_group(&self, group: GroupConfig) -> Result<bool> {
        // Refusals first, so a refused group leaves no dead-letter topic.
        self.groups.check(&group)?;
        self.topics
            .create(&group.dead_letter_topic(), 1, MessageType::Normal)?;
        self.groups.upsert(group)
    }

    pub fn delete_group(&self, name: &str) -> Result<()> {
        self.groups.delete(name)?;
        self.subscriptions.lock().retain(|k, _| k.group != name);
        self.members.lock().remove(name);
        self.offsets.lock().remove_where(|k| k.group == name);
        self.persist_offsets()
    }

    pub fn list_groups(&self) -> Vec<GroupConfig> {
        self.groups.list()
    }

    /// The group, auto-created (when enabled) on first use.
    fn group_for_use(&self, name: &str, mode: ConsumeMode) -> Result<GroupConfig> {
        if let Some(g) = self.groups.get(name) {
            return Ok(g);
        }
        if !self.config.auto_create_topics {
            return Err(BrokerError::GroupNotFound(name.to_string()));
        }
        let g = self.default_group(name, mode);
        self.upsert_group(g.clone())?;
        Ok(g)
    }

    /// The topic, if it has queue `queue_id`.
    fn require_queue(&self, topic: &str, queue_id: u32) -> Result<TopicConfig> {
        let t = self.topics.require(topic)?;
        if queue_id >= t.queues {
            return Err(BrokerError::QueueNotFound {
                topic: t.name,
                queue_id,
                queues: t.queues,
            });
        }
        Ok(t)
    }

    fn require_group(&self, name: &str) -> Result<GroupConfig> {
        self.groups
            .get(name)
            .ok_or_else(|| BrokerError::GroupNotFound(name.to_string()))
    }

    // ---- send ---------------------------------------------------------------

    /// Validates a message and turns it into a store record for its queue.
    fn prepare(&self, m: SendMessage) -> Result<Message> {
        if m.topic.starts_with(topics::SYSTEM_PREFIX) {
            return Err(BrokerError::ReservedTopic(m.topic));
        }
        limits::check_send(&m)?;
        let topic = self.topic_for_use(&m.topic)?;
        let queue_id = match m.queue_id {
            Some(q) => self.require_queue(&topic.name, q).map(|_| q)?,
            None if !m.sharding_key.is_empty() => {
                dduomq_proto::queue_for_sharding_key(&m.sharding_key, topic.queues)
            }
            None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % topic.queues as u64) as u32,
        };
        if m.codec == crate::store::Codec::Zstd && !m.body.starts_with(&ZSTD_MAGIC) {
            return Err(BrokerError::invalid(
                "body",
                "codec is zstd but the body is not a zstd frame",
            ));
        }
        let now = now_millis();
        let deliver_at = match (m.deliver_at, m.delay_ms) {
            (0, 0) => None,
            (at, 0) => Some(at),
            (0, delay) => Some(now.saturating_add(delay.min(i64::MAX as u64) as i64)),
            _ => {
                return Err(BrokerError::invalid(
                    "delivery time",
                    "set deliver_at_ms or delay_ms, not both",
                ));
            }
        };
        let mismatch = |reason: &str| {
            Err(BrokerError::MessageTypeMismatch {
                topic: topic.name.clone(),
                reason: reason.to_string(),
            })
        };
        match topic.message_type {
            MessageType::Fifo if m.sharding_key.is_empty() => {
                return mismatch("a FIFO topic needs a sharding key on every message");
            }
            MessageType::Delay if deliver_at.is_none() => {
                return mismatch(
                    "a Delay topic needs a delivery time (delay or deliver-at) on every message",
                );
            }
            MessageType::Transaction if !m.transactional => {
                return mismatch("a Transaction topic takes transactional messages only");
            }
            t if t != MessageType::Delay && deliver_at.is_some() => {
                return mismatch(
                    "only Delay topics take delayed messages; create the topic with type delay",
                );
            }
            t if t != MessageType::Transaction && m.transactional => {
                return mismatch(
                    "only Transaction topics take transactional messages; create the topic with type transaction",
                );
            }
            _ => {}
        }
        if m.transactional && m.producer_group.is_empty() {
            return Err(BrokerError::invalid(
                "producer_group",
                "a transactional message needs its producer group (whose checkers resolve it)",
            ));
        }
        if let Some(at) = deliver_at {
            let max = self.config.max_delay.as_millis() as i64;
            let ahead = at.saturating_sub(now);
            if ahead > max {
                return Err(BrokerError::DelayTooLong {
                    requested_ms: ahead,
                    max_ms: max,
                });
            }
        }
        let mut properties = m.properties;
        if properties.iter().any(|(k, _)| k.starts_with("__")) {
            return Err(BrokerError::invalid(
                "property",
                "names starting with '__' are reserved",
            ));
        }
        if !m.sharding_key.is_empty() {
            properties.push((SHARDING_KEY_PROPERTY.into(), m.sharding_key));
        }
        if !m.lane.is_empty() {
            properties.push((LANE_PROPERTY.into(), m.lane));
        }
        if !m.producer_id.is_empty() {
            properties.push((dedupe::PRODUCER_ID.into(), m.producer_id));
            properties.push((dedupe::SEQUENCE.into(), m.sequence.to_string()));
        }
        // Delayed (unless already due) and transactional messages are staged.
        let stage = match deliver_at {
            Some(at) if at > now => {
                properties.push((staged::DELIVER_AT.into(), at.to_string()));
                Some(staged::DELAY_TOPIC)
            }
            _ if m.transactional => {
                properties.push((staged::PRODUCER_GROUP.into(), m.producer_group));
                Some(staged::HALF_TOPIC)
            }
            _ => None,
        };
        let (topic_name, queue_id) = match stage {
            Some(system) => {
                properties.push((staged::REAL_TOPIC.into(), topic.name));
                properties.push((staged::REAL_QUEUE.into(), queue_id.to_string()));
                (system.to_string(), 0)
            }
            None => (topic.name, queue_id),
        };
        Ok(Message {
            topic: topic_name,
            queue_id,
            born_timestamp: m.born_timestamp,
            tag: m.tag,
            keys: m.keys,
            properties,
            body: m.body,
            flags: crate::store::RecordFlags::new(
                m.codec,
                topic.message_type,
                if m.transactional {
                    crate::store::TransactionState::Prepared
                } else {
                    crate::store::TransactionState::None
                },
            ),
        })
    }

    /// Stores messages as one atomic batch. Messages of idempotent producers that
    /// were already stored (a retry) are not stored again: they get their
    /// original receipts.
    pub async fn send(self: &Arc<Self>, messages: Vec<SendMessage>) -> Result<Vec<SendReceipt>> {
        let started = Instant::now();
        if messages.is_empty() {
            return Err(BrokerError::invalid("send", "no messages"));
        }
        // Counted before the drain check, so a drain that starts meanwhile
        // sees this send in `drain_state` until it is stored.
        let _in_flight = InFlight::enter(&self.sends_in_flight);
        let batch = messages
            .into_iter()
            .map(|m| self.prepare(m))
            .collect::<Result<Vec<_>>>()?;
        // Which messages are new; a duplicate in flight asks the producer to retry.
        let log_end = self.store.stats().commit_log_max;
        let mut receipts: Vec<Option<SendReceipt>> = vec![None; batch.len()];
        let mut fresh = Vec::with_capacity(batch.len());
        let mut claimed: Vec<(usize, String, u64)> = Vec::new();
        for (i, m) in batch.into_iter().enumerate() {
            let Some((pid, seq)) = producer_sequence(&m.properties) else {
                fresh.push((i, m));
                continue;
            };
            match self.dedupe.check(&pid, seq, log_end) {
                dedupe::Seen::New => {
                    claimed.push((i, pid, seq));
                    fresh.push((i, m));
                }
                dedupe::Seen::Stored(r) => receipts[i] = Some(r),
                dedupe::Seen::InFlight => {
                    self.release_claims(&claimed);
                    return Err(BrokerError::DuplicateInFlight {
                        producer: pid,
                        sequence: seq,
                    });
                }
            }
        }
        // A draining broker must end up with nothing to consume: it stores
        // nothing new (producers fail over; the operator moves writes away),
        // but a retry of what it stored still gets its receipt.
        if !fresh.is_empty() && self.draining.load(Ordering::SeqCst) {
            self.release_claims(&claimed);
            return Err(BrokerError::Draining);
        }
        if !fresh.is_empty() {
            // The append and the dedupe bookkeeping run to completion in their
            // own task even if the caller goes away (a client timeout cancels the
            // RPC): a claimed sequence is always either recorded or released.
            let this = self.clone();
            let stored =
                run_to_completion(async move { this.store_fresh(fresh, claimed, started).await })
                    .await?;
            for (slot, receipt) in stored {
                receipts[slot] = Some(receipt);
            }
        }
        Ok(receipts
            .into_iter()
            .map(|r| r.expect("every slot answered"))
            .collect())
    }

    /// Gives up the dedupe claims of a send that stored nothing.
    fn release_claims(&self, claimed: &[(usize, String, u64)]) {
        for (_, producer, sequence) in claimed {
            self.dedupe.finish(producer, *sequence, None);
        }
    }

    /// Appends the new messages of a send and settles their dedupe claims;
    /// returns `(slot, receipt)` per message.
    async fn store_fresh(
        &self,
        fresh: Vec<(usize, Message)>,
        claimed: Vec<(usize, String, u64)>,
        started: Instant,
    ) -> Result<Vec<(usize, SendReceipt)>> {
        let (slots, batch): (Vec<usize>, Vec<Message>) = fresh.into_iter().unzip();
        // Per message: its topic, its properties when staged (for the receipt
        // and the scheduling), and its size.
        let heads: Vec<SentHead> = batch
            .iter()
            .map(|m| SentHead {
                topic: m.topic.clone(),
                staged_properties: if m.topic.starts_with(topics::SYSTEM_PREFIX) {
                    m.properties.clone()
                } else {
                    Vec::new()
                },
                bytes: m.body.len(),
            })
            .collect();
        // A staged append keeps the saved scan position at or below its records.
        // (Only then is the log end read: it costs locks on every send.)
        let staging = heads
            .iter()
            .any(|h| !h.staged_properties.is_empty())
            .then(|| self.store.stats().commit_log_max);
        if let Some(log_end) = staging {
            self.staged.begin_append(log_end);
        }
        let appended = self.store.append(batch).await;
        let acks = match appended {
            Ok(acks) => acks,
            Err(e) => {
                if let Some(log_end) = staging {
                    self.staged.end_append(log_end);
                }
                self.release_claims(&claimed);
                return Err(e.into());
            }
        };
        let stored: Vec<(usize, SendReceipt)> = slots
            .into_iter()
            .zip(acks)
            .zip(&heads)
            .map(|((slot, a), head)| {
                let (topic, properties) = (&head.topic, &head.staged_properties);
                let receipt = SendReceipt::of(
                    topic,
                    properties,
                    &a.id,
                    a.queue_id,
                    a.queue_offset,
                    a.store_timestamp,
                );
                let position = staged::Position {
                    physical: a.id.physical_offset,
                    crc: a.id.crc,
                };
                match topic.as_str() {
                    staged::DELAY_TOPIC => self.staged.add_delayed(position, receipt.deliver_at),
                    staged::HALF_TOPIC => {
                        let group = staged::property(properties, staged::PRODUCER_GROUP);
                        self.staged.add_half(staged::Half::new(
                            position,
                            &receipt.topic,
                            group.unwrap_or_default(),
                            a.store_timestamp
                                + self.config.transaction_check_after.as_millis() as i64,
                        ));
                    }
                    _ => {}
                }
                (slot, receipt)
            })
            .collect();
        if let Some(log_end) = staging {
            self.staged.end_append(log_end);
        }
        let sizes: Vec<(String, usize)> = stored
            .iter()
            .zip(&heads)
            .map(|((_, r), head)| (r.topic.clone(), head.bytes))
            .collect();
        self.count_sends(&sizes, started);
        for (slot, pid, seq) in &claimed {
            let receipt = stored.iter().find(|(s, _)| s == slot).map(|(_, r)| r);
            self.dedupe.finish(pid, *seq, receipt);
        }
        Ok(stored)
    }

    fn count_sends(&self, sizes: &[(String, usize)], started: Instant) {
        let Some(m) = &self.metrics else { return };
        // One label lookup per run of a topic, not per message: batches are
        // usually one topic.
        for run in sizes.chunk_by(|a, b| a.0 == b.0) {
            let bytes: usize = run.iter().map(|(_, b)| b).sum();
            m.messages_in
                .with_label_values(&[&run[0].0])
                .inc_by(run.len() as u64);
            m.bytes_in
                .with_label_values(&[&run[0].0])
                .inc_by(bytes as u64);
        }
        m.produce_latency.observe(started.elapsed().as_secs_f64());
    }

    // ---- push consumption -----------------------------------------------------

    /// The id consumers see: a released copy keeps its origin's, the id the
    /// producer got.
    fn message_id_of(&self, rec: &Record) -> String {
        if let Some(origin) = staged::property(&rec.properties, staged::ORIGIN_ID) {
            return origin.to_string();
        }
        MessageId {
            broker_id: self.store.config().broker_id,
            physical_offset: rec.physical_offset,
            crc: rec.crc,
        }
        .to_string()
    }

    fn sub_key(group: &GroupConfig, topic: &str, client_id: &str) -> SubKey {
        SubKey {
            group: group.name.clone(),
            topic: topic.to_string(),
            member: match group.mode {
                ConsumeMode::Clustering => String::new(),
                ConsumeMode::Broadcast => client_id.to_string(),
            },
        }
    }

    fn subscription(&self, key: SubKey) -> Arc<Subscription> {
        self.subscriptions
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Subscription::new(key)))
            .clone()
    }

    /// Registers a consumer stream; returns its subscription and consumer id.
    pub fn open_receive(
        &self,
        group: &str,
        topic: &str,
        client_id: &str,
        mode: ConsumeMode,
        filter: Filter,
        lane: String,
    ) -> Result<(Arc<Subscription>, u64)> {
        limits::check_id("client_id", client_id, limits::MAX_CLIENT_ID_LEN, false)?;
        limits::check_id("lane", &lane, limits::MAX_LANE_LEN, true)?;
        // Both names first: a refusal must not leave an auto-created group.
        limits::check_group_name("group", group)?;
        self.check_topic_for_use(topic)?;
        let group = self.group_for_use(group, mode)?;
        let topic = self.topic_for_use(topic)?;
        let sub = self.subscription(Self::sub_key(&group, &topic.name, client_id));
        let consumer = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = sub.state.lock();
            st.usage.insert(consumer, Usage::default());
            Arc::make_mut(&mut st.lanes).insert(consumer, lane);
            st.filter = Arc::new(filter);
        }
        self.touch_member(&group.name, client_id, MemberKind::Push, [topic.name]);
        Ok((sub, consumer))
    }

    /// Ends a consumer stream: its leases end now and are redelivered per backoff.
    pub async fn close_receive(&self, sub: &Subscription, consumer: u64) {
        let Some(group) = self.groups.get(&sub.key.group) else {
            return;
        };
        let dead = {
            let mut st = sub.state.lock();
            st.usage.remove(&consumer);
            Arc::make_mut(&mut st.lanes).remove(&consumer);
            let now = now_millis();
            let mut dead = Vec::new();
            let queues: Vec<u32> = st.cursors.keys().copied().collect();
            for q in queues {
                let mine: Vec<u64> = st.cursors[&q]
                    .leases()
                    .filter(|(_, l)| l.consumer == consumer)
                    .map(|(o, _)| *o)
                    .collect();
                for offset in mine {
                    dead.extend(self.release_locked(
                        &mut st,
                        &group,
                        &sub.key.topic,
                        q,
                        offset,
                        now,
                    ));
                }
            }
            dead
        };
        sub.notify.notify_waiters();
        self.dead_letter_all(sub, &group, dead).await;
    }

    /// Ends a lease without an ack; returns a dead-letter job when the message has
    /// used up its attempts.
    fn release_locked(
        &self,
        st: &mut SubState,
        group: &GroupConfig,
        topic: &str,
        queue_id: u32,
        offset: u64,
        now: i64,
    ) -> Option<(u32, u64)> {
        let cursor = st.cursors.get_mut(&queue_id)?;
        let (lease, released) = cursor.release(offset, now, group.max_delivery_attempts, |a| {
            group.backoff(a).as_millis() as i64
        })?;
        st.refund(&lease);
        match released {
            Released::Retry { .. } => {
                if let Some(m) = &self.metrics {
                    m.retries.with_label_values(&[&group.name, topic]).inc();
                }
                None
            }
            Released::DeadLetter { offset, .. } => Some((queue_id, offset)),
        }
    }

    fn cursor_for<'a>(
        &self,
        st: &'a mut SubState,
        key: &SubKey,
        queue_id: u32,
    ) -> &'a mut QueueCursor {
        st.cursors.entry(queue_id).or_insert_with(|| {
            match self.offsets.lock().cursor(&key.progress(queue_id)) {
                Some(progress) => {
                    QueueCursor::restore(progress, self.store.queue_offsets(&key.topic, queue_id).1)
                }
                // New progress starts at the oldest stored message.
                None => QueueCursor::new(self.store.queue_offsets(&key.topic, queue_id).0),
            }
        })
    }

    /// Leases up to `max` messages to a consumer within its limits. Returns the
    /// deliveries and when to look again if nothing was due.
    pub async fn lease(
        &self,
        sub: &Subscription,
        consumer: u64,
        limits: ReceiveLimits,
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<i64>)> {
        let group = self.require_group(&sub.key.group)?;
        let topic = self.topics.require(&sub.key.topic)?;
        let now = now_millis();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        let mut passed_any = false;
        let wake = {
            let mut st = sub.state.lock();
            // Leases that ran out are released first.
            let expired: Vec<(u32, u64)> = st
                .cursors
                .iter()
                .flat_map(|(q, c)| c.expired(now).into_iter().map(move |o| (*q, o)))
                .collect();
            for (q, offset) in expired {
                dead.extend(self.release_locked(&mut st, &group, &sub.key.topic, q, offset, now));
            }
            let start = st.round_robin;
            st.round_robin = st.round_robin.wrapping_add(1);
            let filter = st.filter.clone();
            let lanes = st.lanes.clone();
            // Stopped by flow control: only an ack, a nack (both notify) or an
            // expiring lease frees room, so due retries are no reason to wake.
            let mut capped = false;
            // Offsets this consumer left for other lanes, per queue.
            let mut passed_by_queue: HashMap<u32, BTreeSet<u64>> = HashMap::new();
            // FIFO topics, clustering groups: one message per queue at a time.
            let ordered =
                topic.message_type == MessageType::Fifo && group.mode == ConsumeMode::Clustering;
            'queues: for i in 0..topic.queues {
                let q = (start + i) % topic.queues;
                let (min, max_offset) = self.store.queue_offsets(&topic.name, q);
                let passed = passed_by_queue.entry(q).or_default();
                for lease in self.cursor_for(&mut st, &sub.key, q).skip_below(min) {
                    st.refund(&lease);
                }
                while out.len() < max && passed.len() < MAX_PASSES {
                    let usage = st.usage.get(&consumer).copied().unwrap_or_default();
                    if usage.messages >= limits.max_messages {
                        capped = true;
                        break 'queues;
                    }
                    let cursor = self.cursor_for(&mut st, &sub.key, q);
                    let skip = lane_skip(&lanes, consumer, passed);
                    let candidate = cursor.candidate(now, max_offset, ordered, &skip);
                    drop(skip);
                    let Some(offset) = candidate else {
                        break;
                    };
                    let record = match self.store.read(&topic.name, q, offset, 1, usize::MAX) {
                        Ok(r) if r.records.len() == 1 => r.records.into_iter().next().expect("one"),
                        Ok(_) => {
                            cursor.skip(offset); // corrupt: reported by the store
                            continue;
                        }
                        Err(StoreError::OffsetOutOfRange { min, .. }) => {
                            for lease in cursor.skip_below(min) {
                                st.refund(&lease);
                            }
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if !filter.matches(&record) {
                        cursor.skip(offset); // filtered out: done for this group
                        continue;
                    }
                    let lane = staged::property(&record.properties, LANE_PROPERTY).unwrap_or("");
                    if !lane_ok(&lanes, consumer, lane) {
                        // Another consumer's lane: leave it for them.
                        passed_any |= self
                            .cursor_for(&mut st, &sub.key, q)
                            .pass_over(offset, now, lane);
                        passed.insert(offset);
                        continue;
                    }
                    let cursor = self.cursor_for(&mut st, &sub.key, q);
                    let bytes = record.body.len() as u64;
                    if usage.messages > 0 && usage.bytes + bytes > limits.max_bytes {
                        capped = true;
                        break 'queues;
                    }
                    let lease = Lease {
                        delivery_id: rand::random(),
                        deadline: now + limits.invisible.as_millis() as i64,
                        consumer,
                        bytes,
                    };
                    let attempt = cursor.lease(offset, lease);
                    st.charge(&lease);
                    out.push(Delivery {
                        message_id: self.message_id_of(&record),
                        receipt_handle: ReceiptHandle {
                            queue_id: q,
                            offset,
                            delivery_id: lease.delivery_id,
                            member: sub.key.member.clone(),
                        }
                        .encode(),
                        invisible_until: lease.deadline,
                        attempt,
                        record,
                    });
                }
            }
            let no_passes = BTreeSet::new();
            st.cursors
                .iter()
                .filter_map(|(q, c)| {
                    if capped {
                        c.lease_deadline()
                    } else {
                        let passed = passed_by_queue.get(q).unwrap_or(&no_passes);
                        c.next_wake_except(&lane_skip(&lanes, consumer, passed))
                    }
                })
                .min()
        };
        if passed_any {
            // Wake the consumers they were left for. Only for new passes: a
            // stream's own wait is armed before it leases, so notifying on every
            // pass would wake the passer itself again and again.
            sub.notify.notify_waiters();
        }
        self.dead_letter_all(sub, &group, dead).await;
        self.count_deliveries(&out, &group.name);
        Ok((out, wake))
    }

    fn count_deliveries(&self, deliveries: &[Delivery], group: &str) {
        let Some(m) = &self.metrics else { return };
        let now = now_millis();
        for run in deliveries.chunk_by(|a, b| a.record.topic == b.record.topic) {
            let labels = [run[0].record.topic.as_str(), group];
            let bytes: usize = run.iter().map(|d| d.record.body.len()).sum();
            m.messages_out
                .with_label_values(&labels)
                .inc_by(run.len() as u64);
            m.bytes_out.with_label_values(&labels).inc_by(bytes as u64);
            for d in run {
                m.consume_latency
                    .observe((now - d.record.store_timestamp).max(0) as f64 / 1000.0);
            }
        }
    }

    /// Moves messages that used up their attempts to the group's dead-letter
    /// topic, then marks them done.
    async fn dead_letter_all(
        &self,
        sub: &Subscription,
        group: &GroupConfig,
        jobs: Vec<(u32, u64)>,
    ) {
        for (queue_id, offset) in jobs {
            if let Err(e) = self.dead_letter(sub, group, queue_id, offset).await {
                tracing::error!(group = %group.name, queue_id, offset, error = %e, "dead-lettering failed; will retry");
                // Deliver it again later so it is neither lost nor stuck.
                if let Some(c) = sub.state.lock().cursors.get_mut(&queue_id) {
                    c.retry_at(offset, now_millis() + group.backoff(1).as_millis() as i64);
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        sub: &Subscription,
        group: &GroupConfig,
        queue_id: u32,
        offset: u64,
    ) -> Result<()> {
        let topic = &sub.key.topic;
        let read = self.store.read(topic, queue_id, offset, 1, usize::MAX);
        if !group.dead_letter {
            tracing::warn!(group = %group.name, topic, queue_id, offset, "message dropped after its last attempt (dead-lettering is off)");
        } else if let Ok(r) = read
            && let Some(rec) = r.records.into_iter().next()
        {
            let attempts = sub
                .state
                .lock()
                .cursors
                .get(&queue_id)
                .and_then(|c| c.attempts().get(&offset).copied())
                .unwrap_or(group.max_delivery_attempts);
            let dlq = group.dead_letter_topic();
            // The copy is not the producer's message: no dedupe identity.
            let mut properties: Vec<(String, String)> = rec
                .properties
                .iter()
                .filter(|(k, _)| k != dedupe::PRODUCER_ID && k != dedupe::SEQUENCE)
                .cloned()
                .collect();
            properties.extend([
                (DLQ_ORIGIN_TOPIC.to_string(), topic.clone()),
                (DLQ_ORIGIN_QUEUE.to_string(), queue_id.to_string()),
                (DLQ_ORIGIN_OFFSET.to_string(), offset.to_string()),
                (DLQ_ORIGIN_MESSAGE_ID.to_string(), self.message_id_of(&rec)),
                (DLQ_DELIVERY_ATTEMPTS.to_string(), attempts.to_string()),
            ]);
            self.store
                .append(vec![Message {
                    topic: dlq,
                    queue_id: 0,
                    flags: rec.flags,
                    born_timestamp: rec.born_timestamp,
                    tag: rec.tag,
                    keys: rec.keys,
                    properties,
                    body: rec.body,
                }])
                .await?;
            tracing::info!(group = %group.name, topic, queue_id, offset, attempts, "message dead-lettered");
            if let Some(m) = &self.metrics {
                m.dead_lettered
                    .with_label_values(&[&group.name, topic])
                    .inc();
            }
        }
        if let Some(c) = sub.state.lock().cursors.get_mut(&queue_id) {
            c.mark_done(offset);
        }
        Ok(())
    }

    fn find_subscription(
        &self,
        group: &str,
        topic: &str,
        member: &str,
    ) -> Result<Arc<Subscription>> {
        let key = SubKey {
            group: group.to_string(),
            topic: topic.to_string(),
            member: member.to_string(),
        };
        self.subscriptions.lock().get(&key).cloned().ok_or_else(|| {
            BrokerError::InvalidReceiptHandle(format!(
                "no lease of group {} on topic {}",
                brief(group),
                brief(topic)
            ))
        })
    }

    /// Acks leased messages; one result per handle.
    pub fn ack(&self, group: &str, topic: &str, handles: &[String]) -> Vec<Result<()>> {
        let mut touched = Vec::new();
        let results = handles
            .iter()
            .map(|h| {
                let handle = ReceiptHandle::parse(h)?;
                let sub = self.find_subscription(group, topic, &handle.member)?;
                let mut st = sub.state.lock();
                let lease = st
                    .cursors
                    .get_mut(&handle.queue_id)
                    .and_then(|c| c.ack(handle.offset, handle.delivery_id))
                    .ok_or_else(|| stale_handle(h))?;
                st.refund(&lease);
                drop(st);
                touched.push(sub);
                Ok(())
            })
            .collect();
        for sub in touched {
            sub.notify.notify_waiters();
        }
        results
    }

    /// Nacks a leased message: redelivered after the group's backoff, or
    /// dead-lettered. Returns `(redeliver_at, dead_lettered)`.
    pub async fn nack(&self, group: &str, topic: &str, handle: &str) -> Result<(i64, bool)> {
        let h = ReceiptHandle::parse(handle)?;
        let sub = self.find_subscription(group, topic, &h.member)?;
        let config = self.require_group(group)?;
        let now = now_millis();
        let dead = {
            let mut st = sub.state.lock();
            st.cursors
                .get(&h.queue_id)
                .and_then(|c| c.lease_of(h.offset, h.delivery_id))
                .ok_or_else(|| stale_handle(handle))?;
            self.release_locked(&mut st, &config, topic, h.queue_id, h.offset, now)
        };
        sub.notify.notify_waiters();
        match dead {
            Some(job) => {
                self.dead_letter_all(&sub, &config, vec![job]).await;
                Ok((0, true))
            }
            None => {
                let attempts = sub
                    .state
                    .lock()
                    .cursors
                    .get(&h.queue_id)
                    .and_then(|c| c.attempts().get(&h.offset).copied())
                    .unwrap_or(1);
                Ok((now + config.backoff(attempts).as_millis() as i64, false))
            }
        }
    }

    /// Moves a lease's end to `now + invisible_ms`; returns the new end.
    pub fn change_invisible(
        &self,
        group: &str,
        topic: &str,
        handle: &str,
        invisible_ms: u64,
    ) -> Result<i64> {
        let invisible = limits::check_invisible(invisible_ms, self.config.max_invisible_duration)?;
        let h = ReceiptHandle::parse(handle)?;
        let sub = self.find_subscription(group, topic, &h.member)?;
        let deadline = now_millis() + invisible.as_millis() as i64;
        let mut st = sub.state.lock();
        st.cursors
            .get_mut(&h.queue_id)
            .and_then(|c| c.extend(h.offset, h.delivery_id, deadline))
            .ok_or_else(|| stale_handle(handle))?;
        drop(st);
        sub.notify.notify_waiters();
        Ok(deadline)
    }

    /// A receiver that turns true when the broker shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Ends every consumer stream (graceful shutdown).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    // ---- pull consumption -----------------------------------------------------

    /// Reads a queue from an offset, waiting up to `wait` for a first message.
    pub async fn pull(&self, req: PullSpec<'_>) -> Result<Pulled> {
        let PullSpec {
            group,
            topic,
            queue_id,
            offset,
            max_messages,
            max_bytes,
            wait,
            filter,
        } = req;
        // The group names the metrics the pull is counted in.
        limits::check_group_name("group", group)?;
        self.require_queue(topic, queue_id)?;
        let deadline = tokio::time::Instant::now() + wait.min(self.config.max_pull_wait);
        let mut arrivals = self.store.subscribe();
        loop {
            arrivals.borrow_and_update();
            let r = self.store.read(
                topic,
                queue_id,
                offset,
                max_messages.max(1),
                max_bytes.max(1),
            )?;
            if !r.records.is_empty() || r.next_offset > offset {
                let deliveries: Vec<Delivery> = r
                    .records
                    .into_iter()
                    .filter(|record| filter.matches(record))
                    .map(|record| self.plain_delivery(record))
                    .collect();
                self.count_deliveries(&deliveries, group);
                return Ok(Pulled {
                    deliveries,
                    next_offset: r.next_offset,
                    min_offset: r.min_offset,
                    max_offset: r.max_offset,
                });
            }
            let mut stop = self.shutdown_signal();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(Pulled {
                    deliveries: Vec::new(), next_offset: offset, min_offset: r.min_offset, max_offset: r.max_offset,
                }),
                _ = arrivals.changed() => {}
                _ = stop.wait_for(|s| *s) => return Err(StoreError::Closed.into()),
            }
        }
    }

    /// Commits a pull member's progress on a queue it holds in the current
    /// generation.
    pub fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
        client_id: &str,
        generation: u64,
    ) -> Result<()> {
        self.require_group(group)?;
        self.require_queue(topic, queue_id)?;
        {
            let members = self.members.lock();
            let current = members.get(group).map_or(0, |m| m.generation());
            if generation != current {
                return Err(BrokerError::StaleGeneration {
                    group: group.to_string(),
                    got: generation,
                    current,
                });
            }
            if !members
                .get(group)
                .is_some_and(|m| m.is_assigned(client_id, topic, queue_id))
            {
                return Err(BrokerError::QueueNotAssigned {
                    group: group.to_string(),
                    topic: topic.to_string(),
                    queue_id,
                    client_id: client_id.to_string(),
                });
            }
        }
        let (min, max) = self.store.queue_offsets(topic, queue_id);
        if offset > max {
            return Err(StoreError::OffsetOutOfRange {
                topic: topic.to_string(),
                queue_id,
                offset,
                min,
                max,
            }
            .into());
        }
        let key = ProgressKey {
            group: group.to_string(),
            topic: topic.to_string(),
            member: String::new(),
            queue_id,
        };
        self.offsets.lock().set(key, Progress::at(offset));
        Ok(())
    }

    /// `(committed, min, max)` of a group on a queue; a group without progress
    /// starts at the oldest stored message.
    pub fn query_offset(&self, group: &str, topic: &str, queue_id: u32) -> Result<(u64, u64, u64)> {
        self.require_group(group)?;
        self.topics.require(topic)?;
        let (min, max) = self.store.queue_offsets(topic, queue_id);
        let key = ProgressKey {
            group: group.to_string(),
            topic: topic.to_string(),
            member: String::new(),
            queue_id,
        };
        let committed = self.live_committed(&key).unwrap_or(min).max(min);
        Ok((committed, min, max))
    }

    fn live_committed(&self, key: &ProgressKey) -> Option<u64> {
        let sub_key = SubKey {
            group: key.group.clone(),
            topic: key.topic.clone(),
            member: key.member.clone(),
        };
        let sub = self.subscriptions.lock().get(&sub_key).cloned();
        if let Some(sub) = sub
            && let Some(c) = sub.state.lock().cursors.get(&key.queue_id)
        {
            return Some(c.committed());
        }
        self.offsets.lock().get(key)
    }

    fn touch_member<const N: usize>(
        &self,
        group: &str,
        client_id: &str,
        kind: MemberKind,
        topics: [String; N],
    ) {
        let now = now_millis();
        let mut members = self.members.lock();
        let m = members.entry(group.to_string()).or_default();
        let mut all: BTreeSet<String> = m
            .members()
            .get(client_id)
            .map(|x| x.topics.clone())
            .unwrap_or_default();
        all.extend(topics);
        m.heartbeat(client_id, kind, all, now, |t| {
            self.topics.get(t).map_or(0, |t| t.queues)
        });
    }

    /// Records a heartbeat; returns the member's pull assignment.
    pub fn heartbeat(
        &self,
        group: &str,
        client_id: &str,
        kind: MemberKind,
        topics: Vec<String>,
    ) -> Result<Assignment> {
        // The same rules for every kind: producer members are kept (and
        // expire) like the others.
        limits::check_group_name("group", group)?;
        limits::check_id("client_id", client_id, limits::MAX_CLIENT_ID_LEN, false)?;
        limits::check_count("topics", topics.len(), limits::MAX_HEARTBEAT_TOPICS)?;
        for t in &topics {
            self.check_topic_for_use(t)?;
        }
        if kind != MemberKind::Producer {
            self.group_for_use(group, ConsumeMode::Clustering)?;
        }
        for t in &topics {
            self.topic_for_use(t)?;
        }
        let now = now_millis();
        let mut members = self.members.lock();
        let m = members.entry(group.to_string()).or_default();
        m.heartbeat(client_id, kind, topics.into_iter().collect(), now, |t| {
            self.topics.get(t).map_or(0, |t| t.queues)
        });
        Ok(Assignment {
            generation: m.generation(),
            queues: m.assignment(client_id).to_vec(),
        })
    }

    /// Drops members whose session timed out (run periodically).
    pub fn expire_members(&self) {
        let now = now_millis();
        let timeout = self.config.session_timeout.as_millis() as i64;
        let mut members = self.members.lock();
        for (group, m) in members.iter_mut() {
            if m.expire(now, timeout, |t| self.topics.get(t).map_or(0, |t| t.queues)) {
                tracing::info!(
                    group,
                    generation = m.generation(),
                    "group rebalanced after members expired"
                );
            }
        }
        // Memberships of registered groups stay (their generation guards
        // commits); those of other names (producer groups) go with their
        // last member.
        members.retain(|group, m| !m.members().is_empty() || self.groups.get(group).is_some());
    }

    // ---- progress -------------------------------------------------------------

    /// Copies every live cursor into the offset table.
    fn sync_offsets(&self) {
        let subs: Vec<Arc<Subscription>> = self.subscriptions.lock().values().cloned().collect();
        // Snapshot first: the offsets lock is never held while taking a
        // subscription's lock (`lease` takes them the other way round).
        let mut snapshot = Vec::new();
        for sub in subs {
            let st = sub.state.lock();
            for (q, c) in &st.cursors {
                snapshot.push((sub.key.progress(*q), c.snapshot()));
            }
        }
        let mut table = self.offsets.lock();
        for (key, progress) in snapshot {
            table.set(key, progress);
        }
    }

    /// Saves consumer progress (every live cursor) and the idempotent
    /// producers' windows.
    pub fn persist_offsets(&self) -> Result<()> {
        self.persist_progress(Duration::ZERO)
    }

    /// [`Broker::persist_offsets`], saving the dedupe windows only when the last
    /// save is older than `dedupe_interval`.
    fn persist_progress(&self, dedupe_interval: Duration) -> Result<()> {
        let _one_at_a_time = self.persisting.lock();
        self.sync_offsets();
        // Rewritten only when some progress moved since the last save.
        let changes = self.offsets.lock().changes();
        if let Some((path, json)) = changes
            && let Err(e) = metadata::save_bytes(&path, &json)
        {
            self.offsets.lock().save_failed();
            return Err(e.into());
        }
        let stats = self.store.stats();
        self.store
            .pin_retention(self.staged.floor(stats.commit_log_max));
        // Saved positions never pass what is durable: after a power loss the
        // records beyond it may be gone, and what they resolved with them.
        self.staged.save(stats.commit_log_flushed)?;
        self.dedupe
            .save_every(stats.commit_log_flushed, dedupe_interval)
    }

    /// Progress of a group on every queue of its topics.
    pub fn describe_group(&self, name: &str) -> Result<GroupDescription> {
        let config = self.require_group(name)?;
        self.sync_offsets();
        let mut keys: BTreeSet<(String, String)> = self
            .offsets
            .lock()
            .of_group(name, None)
            .into_iter()
            .map(|(k, _)| (k.topic, k.member))
            .collect();
        keys.extend(
            self.subscriptions
                .lock()
                .keys()
                .filter(|k| k.group == name)
                .map(|k| (k.topic.clone(), k.member.clone())),
        );
        let (generation, members) = {
            let members = self.members.lock();
            members.get(name).map_or((0, Vec::new()), |m| {
                (
                    m.generation(),
                    m.members()
                        .iter()
                        .map(|(id, m)| (id.clone(), m.clone()))
                        .collect(),
                )
            })
        };
        for (_, m) in &members {
            for t in &m.topics {
                if config.mode == ConsumeMode::Clustering {
                    keys.insert((t.clone(), String::new()));
                }
            }
        }
        let mut queues = Vec::new();
        for (topic, member) in keys {
            let Some(t) = self.topics.get(&topic) else {
                continue;
            };
            let sub = self
                .subscriptions
                .lock()
                .get(&SubKey {
                    group: name.to_string(),
                    topic: topic.clone(),
                    member: member.clone(),
                })
                .cloned();
            for q in 0..t.queues {
                let key = ProgressKey {
                    group: name.to_string(),
                    topic: topic.clone(),
                    member: member.clone(),
                    queue_id: q,
                };
                let (min, max) = self.store.queue_offsets(&topic, q);
                let committed = self.offsets.lock().get(&key).unwrap_or(min).max(min);
                let in_flight = sub
                    .as_ref()
                    .and_then(|s| s.state.lock().cursors.get(&q).map(|c| c.in_flight() as u32))
                    .unwrap_or(0);
                queues.push(QueueProgress {
                    topic: topic.clone(),
                    queue_id: q,
                    member: member.clone(),
                    committed,
                    max_offset: max,
                    in_flight,
                });
            }
        }
        Ok(GroupDescription {
            config,
            queues,
            members,
            generation,
        })
    }

    /// Moves a group's progress on a topic for every queue (and every broadcast
    /// member). Validates every queue first: a bad request changes nothing.
    pub fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTarget,
    ) -> Result<Vec<QueueProgress>> {
        let config = self.require_group(group)?;
        let t = self.topics.require(topic)?;
        let mut targets = Vec::with_capacity(t.queues as usize);
        for q in 0..t.queues {
            let (min, max) = self.store.queue_offsets(topic, q);
            let target = match to {
                ResetTarget::Earliest => min,
                ResetTarget::Latest => max,
                ResetTarget::Timestamp(ms) => self.store.offset_for_timestamp(topic, q, ms),
                ResetTarget::Offset(o) if o < 0 => {
                    return Err(BrokerError::invalid(
                        "offset",
                        format!("{o}: offsets are not negative"),
                    ));
                }
                ResetTarget::Offset(o) if (o as u64) < min || (o as u64) > max => {
                    return Err(StoreError::OffsetOutOfRange {
                        topic: topic.to_string(),
                        queue_id: q,
                        offset: o as u64,
                        min,
                        max,
                    }
                    .into());
                }
                ResetTarget::Offset(o) => o as u64,
            };
            targets.push((q, target, max));
        }
        let mut members: BTreeSet<String> = self
            .offsets
            .lock()
            .of_group(group, Some(topic))
            .into_iter()
            .map(|(k, _)| k.member)
            .collect();
        members.extend(
            self.subscriptions
                .lock()
                .keys()
                .filter(|k| k.group == group && k.topic == topic)
                .map(|k| k.member.clone()),
        );
        if config.mode == ConsumeMode::Clustering {
            members.insert(String::new());
        }
        let mut out = Vec::new();
        for member in members {
            let key = SubKey {
                group: group.to_string(),
                topic: topic.to_string(),
                member: member.clone(),
            };
            if let Some(sub) = self.subscriptions.lock().get(&key).cloned() {
                let mut st = sub.state.lock();
                for &(q, target, _) in &targets {
                    let cursor = st.cursors.entry(q).or_default();
                    for lease in cursor.reset(target) {
                        st.refund(&lease);
                    }
                }
                drop(st);
                sub.notify.notify_waiters();
            }
            let mut table = self.offsets.lock();
            for &(q, target, max) in &targets {
                table.set(key.progress(q), Progress::at(target));
                out.push(QueueProgress {
                    topic: topic.to_string(),
                    queue_id: q,
                    member: member.clone(),
                    committed: target,
                    max_offset: max,
                    in_flight: 0,
                });
            }
        }
        if let Some(m) = self.members.lock().get_mut(group) {
            m.bump();
        }
        self.persist_offsets()?;
        tracing::info!(group, topic, ?to, "group offsets reset");
        Ok(out)
    }

    // ---- lookups and info -------------------------------------------------------

    pub fn lookup_by_id(&self, id: &str) -> Result<Delivery> {
        let id: MessageId = id.parse()?;
        let record = self.store.lookup_by_id(&id)?;
        Ok(self.plain_delivery(record))
    }

    pub fn lookup_by_key(
        &self,
        topic: &str,
        key: &str,
        begin_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<Delivery>> {
        self.topics.require(topic)?;
        let begin = if begin_ms == 0 { i64::MIN } else { begin_ms };
        let end = if end_ms == 0 { i64::MAX } else { end_ms };
        Ok(self
            .store
            .lookup_by_key(topic, key, begin, end, max)?
            .into_iter()
            .map(|r| self.plain_delivery(r))
            .collect())
    }

    /// A record as a consumer sees it; a staged record shows its real topic.
    fn plain_delivery(&self, mut record: Record) -> Delivery {
        if (record.topic == staged::DELAY_TOPIC || record.topic == staged::HALF_TOPIC)
            && let Some((topic, queue)) = staged::target(&record.properties)
        {
            record.topic = topic.to_string();
            record.queue_id = queue;
            record.queue_offset = 0;
        }
        Delivery {
            message_id: self.message_id_of(&record),
            attempt: 1,
            receipt_handle: String::new(),
            invisible_until: 0,
            record,
        }
    }

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

    /// The route of a topic and the table's epoch: from the pushed route table in
    /// a cluster, else (standalone) every queue on this broker.
    pub fn route(&self, topic: &str) -> Result<(TopicRoute, u64)> {
        let table = self.routes.read();
        if table.epoch > 0 {
            return table
                .topics
                .get(topic)
                .map(|r| (r.clone(), table.epoch))
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
        Ok((route, 0))
    }

    /// Installs a pushed route table if it is newer; returns the epoch now held
    /// and whether the table was applied.
    pub fn update_routes(&self, table: RouteTable) -> (u64, bool) {
        let mut current = self.routes.write();
        let applied = current.replace_if_newer(table);
        if applied {
            tracing::info!(
                epoch = current.epoch,
                topics = current.topics.len(),
                "route table updated"
            );
        }
        (current.epoch, applied)
    }

    /// Starts or stops draining this broker.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
        tracing::info!(draining, "drain state changed");
    }

    /// Whether this broker is draining, and how many stored messages some group
    /// has not consumed yet (a drained broker reports 0).
    pub fn drain_state(&self) -> (bool, u64) {
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
        (self.draining.load(Ordering::SeqCst), unconsumed + in_flight)
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
            pending += sub
                .state
                .lock()
                .cursors
                .values()
                .map(|c| c.retry_pending())
                .sum::<usize>();
        }
        m.delayed_pending
            .set((pending + self.staged.delayed_pending()) as i64);
        m.transactions_pending
            .set(self.staged.halves_pending() as i64);
    }

    /// Background work until shutdown: delayed delivery, transaction checks,
    /// and periodically expiring silent members and persisting progress.
    pub async fn run_maintenance(self: Arc<Self>) {
        let delayed = tokio::spawn(self.clone().run_delayed_delivery());
        let checks = tokio::spawn(self.clone().run_transaction_checks());
        let mut stop = self.shutdown_signal();
        let mut tick = tokio::time::interval(self.config.offsets_persist_interval);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                let _ = tokio::join!(delayed, checks);
                return;
            }
            // Serializing and fsyncing the metadata files takes milliseconds:
            // not on a runtime worker, which would stall every request.
            let this = self.clone();
            let saved = tokio::task::spawn_blocking(move || {
                this.expire_members();
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
async fn run_to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work).await?
}

fn stale_handle(handle: &str) -> BrokerError {
    BrokerError::InvalidReceiptHandle(format!(
        "{} does not name a current lease (already acked, expired, or forged)",
        brief(handle)
    ))
}

/// Counts a request in flight while it lives.
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicU64) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
