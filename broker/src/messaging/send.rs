//! The send path: validation, routing to a queue, staging of delayed and
//! transactional messages, idempotent-producer dedupe, and the append.
//!
//! A message is prepared into a [`Prepared`]: the record to append plus, typed,
//! what the broker must do once it is stored (the producer's identity for
//! dedupe, the stage for delayed and half messages). The same facts go into
//! the record's reserved properties, but they are read back only when
//! recovering from the log ([`Stage::of_record`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::error::{BrokerError, Result};
use super::properties::{self, ProducerSequence};
use super::replicated::WriteTerm;
use super::{Broker, dedupe, limits, run_to_completion, staged, topics};
use crate::store::{Message, MessageId, MessageType, now_millis};

/// The first bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// When a sent message becomes visible to consumers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// At once.
    #[default]
    Now,
    /// At this time (ms since the Unix epoch).
    At(i64),
    /// This many milliseconds after the broker receives it.
    After(u64),
}

impl Schedule {
    /// The schedule of the wire's two fields, of which at most one may be set.
    pub fn from_wire(deliver_at_ms: i64, delay_ms: u64) -> Result<Schedule> {
        match (deliver_at_ms, delay_ms) {
            (0, 0) => Ok(Schedule::Now),
            (at, 0) => Ok(Schedule::At(at)),
            (0, delay) => Ok(Schedule::After(delay)),
            _ => Err(BrokerError::invalid(
                "delivery time",
                "set deliver_at_ms or delay_ms, not both",
            )),
        }
    }

    /// The delivery time, if the message is delayed at all.
    fn deliver_at(self, now: i64) -> Option<i64> {
        match self {
            Schedule::Now => None,
            Schedule::At(at) => Some(at),
            Schedule::After(delay) => Some(now.saturating_add(delay.min(i64::MAX as u64) as i64)),
        }
    }
}

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
    /// Delayed messages: when to deliver it.
    pub schedule: Schedule,
    /// Transactional messages: stored as a half message of this producer
    /// group, whose checkers resolve it.
    pub transaction: Option<String>,
    /// Gray-release lane ("" = base).
    pub lane: String,
    /// The id a RocketMQ client gave the message ("" for our own clients):
    /// kept with it, and the id RocketMQ consumers see.
    pub client_message_id: String,
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

/// The topic and queue a staged message is released to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Target {
    pub topic: String,
    pub queue_id: u32,
}

/// Where a message is stored first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stage {
    /// Straight in its topic's queue.
    Direct,
    /// In `%DELAY%` until `deliver_at`.
    Delayed { target: Target, deliver_at: i64 },
    /// In `%HALF%` until its producer group commits or rolls it back.
    Half {
        target: Target,
        producer_group: String,
    },
}

impl Target {
    /// The reserved properties naming it on a staged record.
    fn properties(&self) -> [(String, String); 2] {
        [
            properties::REAL_TOPIC.with(&self.topic),
            properties::REAL_QUEUE.with(self.queue_id),
        ]
    }
}

impl Stage {
    /// The stage of a stored record, read back from its reserved properties
    /// (recovery only: a send keeps the stage it prepared).
    pub(super) fn of_record(topic: &str, properties: &[(String, String)]) -> Stage {
        let target = || {
            properties::staged_target(properties)
                .map(|(topic, queue_id)| Target {
                    topic: topic.to_string(),
                    queue_id,
                })
                .unwrap_or_default()
        };
        match topic {
            staged::DELAY_TOPIC => Stage::Delayed {
                target: target(),
                deliver_at: properties::deliver_at(properties),
            },
            staged::HALF_TOPIC => Stage::Half {
                target: target(),
                producer_group: properties::PRODUCER_GROUP
                    .get(properties)
                    .unwrap_or_default()
                    .to_string(),
            },
            _ => Stage::Direct,
        }
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stored<'a> {
    pub id: &'a MessageId,
    pub topic: &'a str,
    pub queue_id: u32,
    pub offset: u64,
    pub store_timestamp: i64,
}

impl SendReceipt {
    /// The receipt of a stored record; a staged record names its real topic.
    pub(super) fn of(stage: &Stage, stored: Stored<'_>) -> SendReceipt {
        let message_id = stored.id.to_string();
        let (target, deliver_at, transaction_id) = match stage {
            Stage::Direct => {
                return SendReceipt {
                    message_id,
                    topic: stored.topic.to_string(),
                    queue_id: stored.queue_id,
                    offset: stored.offset,
                    store_timestamp: stored.store_timestamp,
                    deliver_at: 0,
                    transaction_id: String::new(),
                };
            }
            Stage::Delayed { target, deliver_at } => (target, *deliver_at, String::new()),
            Stage::Half { target, .. } => (target, 0, message_id.clone()),
        };
        SendReceipt {
            message_id,
            topic: target.topic.clone(),
            queue_id: target.queue_id,
            offset: 0,
            store_timestamp: stored.store_timestamp,
            deliver_at,
            transaction_id,
        }
    }
}

/// A validated message: the record to append, and what to do once it is
/// stored.
#[derive(Debug)]
struct Prepared {
    message: Message,
    /// Idempotent producers: the message's identity, for dedupe.
    identity: Option<ProducerSequence>,
    stage: Stage,
}

/// A dedupe claim a send holds until its append settles it.
#[derive(Debug)]
struct Claim {
    slot: usize,
    identity: ProducerSequence,
}

/// A message of a send that is not a retry of a stored one.
#[derive(Debug)]
struct Fresh {
    slot: usize,
    prepared: Prepared,
}

/// What a send needs of each appended message after the append.
#[derive(Debug)]
struct Head {
    slot: usize,
    topic: String,
    bytes: usize,
    stage: Stage,
}

impl Broker {
    /// Validates a message and turns it into a store record for its queue.
    fn prepare(&self, m: SendMessage) -> Result<Prepared> {
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
        let deliver_at = m.schedule.deliver_at(now);
        let transactional = m.transaction.is_some();
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
            MessageType::Transaction if !transactional => {
                return mismatch("a Transaction topic takes transactional messages only");
            }
            t if t != MessageType::Delay && deliver_at.is_some() => {
                return mismatch(
                    "only Delay topics take delayed messages; create the topic with type delay",
                );
            }
            t if t != MessageType::Transaction && transactional => {
                return mismatch(
                    "only Transaction topics take transactional messages; create the topic with type transaction",
                );
            }
            _ => {}
        }
        if m.transaction.as_ref().is_some_and(String::is_empty) {
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
        let mut props = m.properties;
        if props.iter().any(|(k, _)| properties::is_reserved(k)) {
            return Err(BrokerError::invalid(
                "property",
                "names starting with '__' are reserved",
            ));
        }
        if !m.sharding_key.is_empty() {
            props.push(properties::SHARDING_KEY.with(m.sharding_key));
        }
        if !m.lane.is_empty() {
            props.push(properties::LANE.with(m.lane));
        }
        if !m.client_message_id.is_empty() {
            limits::check_id(
                "message_id",
                &m.client_message_id,
                limits::MAX_CLIENT_MESSAGE_ID_LEN,
                false,
            )?;
            props.push(properties::CLIENT_MESSAGE_ID.with(m.client_message_id));
        }
        let identity = (!m.producer_id.is_empty()).then_some(ProducerSequence {
            producer_id: m.producer_id,
            sequence: m.sequence,
        });
        if let Some(id) = &identity {
            props.push(properties::PRODUCER_ID.with(&id.producer_id));
            props.push(properties::SEQUENCE.with(id.sequence));
        }
        let mut message = Message {
            topic: topic.name.clone(),
            queue_id,
            born_timestamp: m.born_timestamp,
            tag: m.tag,
            keys: m.keys,
            properties: props,
            body: m.body,
            flags: crate::store::RecordFlags::new(
                m.codec,
                topic.message_type,
                if transactional {
                    crate::store::TransactionState::Prepared
                } else {
                    crate::store::TransactionState::None
                },
            ),
        };
        // Measured as stored in its own topic, so a staged message counts the
        // same as a direct one.
        topic
            .settings
            .check_size(&topic.name, message.encoded_len())?;
        // Delayed (unless already due) and transactional messages are staged.
        let target = Target {
            topic: topic.name,
            queue_id,
        };
        let stage = match (deliver_at, m.transaction) {
            (Some(at), _) if at > now => Stage::Delayed {
                target: target.clone(),
                deliver_at: at,
            },
            (_, Some(producer_group)) => Stage::Half {
                target: target.clone(),
                producer_group,
            },
            _ => Stage::Direct,
        };
        match &stage {
            Stage::Direct => {}
            Stage::Delayed { deliver_at, .. } => {
                message
                    .properties
                    .push(properties::DELIVER_AT.with(deliver_at));
                message.properties.extend(target.properties());
                message.topic = staged::DELAY_TOPIC.to_string();
                message.queue_id = 0;
            }
            Stage::Half { producer_group, .. } => {
                message
                    .properties
                    .push(properties::PRODUCER_GROUP.with(producer_group));
                message.properties.extend(target.properties());
                message.topic = staged::HALF_TOPIC.to_string();
                message.queue_id = 0;
            }
        }
        Ok(Prepared {
            message,
            identity,
            stage,
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
        // A member that takes no writes says so first, whatever else is
        // wrong with the send: its tables may lag the master's, and only
        // NOT_MASTER sends the producer on to the master.
        let term = self.write_term()?;
        let batch = messages
            .into_iter()
            .map(|m| self.prepare(m))
            .collect::<Result<Vec<_>>>()?;
        // Which messages are new; a duplicate in flight asks the producer to retry.
        let log_end = self.store.stats().commit_log_max;
        let mut receipts: Vec<Option<SendReceipt>> = vec![None; batch.len()];
        let mut fresh = Vec::with_capacity(batch.len());
        let mut claimed: Vec<Claim> = Vec::new();
        for (slot, prepared) in batch.into_iter().enumerate() {
            let Some(identity) = prepared.identity.clone() else {
                fresh.push(Fresh { slot, prepared });
                continue;
            };
            match self
                .dedupe
                .check(&identity.producer_id, identity.sequence, log_end)
            {
                dedupe::Seen::New => {
                    claimed.push(Claim { slot, identity });
                    fresh.push(Fresh { slot, prepared });
                }
                dedupe::Seen::Stored(r) => receipts[slot] = Some(r),
                dedupe::Seen::InFlight => {
                    self.release_claims(&claimed);
                    return Err(BrokerError::DuplicateInFlight {
                        producer: identity.producer_id,
                        sequence: identity.sequence,
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
                run_to_completion(
                    async move { this.store_fresh(term, fresh, claimed, started).await },
                )
                .await?;
            for (slot, receipt) in stored {
                receipts[slot] = Some(receipt);
            }
        }
        let receipts: Vec<SendReceipt> = receipts
            .into_iter()
            .map(|r| r.expect("every slot answered"))
            .collect();
        self.receipts_acknowledged(term, &receipts).await?;
        Ok(receipts)
    }

    /// Gives up the dedupe claims of a send that stored nothing.
    fn release_claims(&self, claimed: &[Claim]) {
        for c in claimed {
            self.dedupe
                .finish(&c.identity.producer_id, c.identity.sequence, None);
        }
    }

    /// Appends the new messages of a send and settles their dedupe claims;
    /// returns `(slot, receipt)` per message.
    async fn store_fresh(
        &self,
        term: WriteTerm,
        fresh: Vec<Fresh>,
        claimed: Vec<Claim>,
        started: Instant,
    ) -> Result<Vec<(usize, SendReceipt)>> {
        let mut batch = Vec::with_capacity(fresh.len());
        // What each message needs after the append.
        let mut heads = Vec::with_capacity(fresh.len());
        for Fresh { slot, prepared } in fresh {
            heads.push(Head {
                slot,
                topic: prepared.message.topic.clone(),
                bytes: prepared.message.body.len(),
                stage: prepared.stage,
            });
            batch.push(prepared.message);
        }
        // A staged append keeps the saved scan position at or below its records.
        // (Only then is the log end read: it costs locks on every send.)
        let staging = heads
            .iter()
            .any(|h| h.stage != Stage::Direct)
            .then(|| self.store.stats().commit_log_max);
        if let Some(log_end) = staging {
            self.staged.begin_append(log_end);
        }
        let appended = self.append_in(term, batch).await;
        let acks = match appended {
            Ok(acks) => acks,
            Err(e) => {
                if let Some(log_end) = staging {
                    self.staged.end_append(log_end);
                }
                self.release_claims(&claimed);
                return Err(e);
            }
        };
        let mut sizes: Vec<(String, usize)> = Vec::with_capacity(acks.len());
        let stored: Vec<(usize, SendReceipt)> = heads
            .into_iter()
            .zip(acks)
            .map(|(head, a)| {
                let receipt = SendReceipt::of(
                    &head.stage,
                    Stored {
                        id: &a.id,
                        topic: &head.topic,
                        queue_id: a.queue_id,
                        offset: a.queue_offset,
                        store_timestamp: a.store_timestamp,
                    },
                );
                let position = staged::Position {
                    physical: a.id.physical_offset,
                    crc: a.id.crc,
                };
                match head.stage {
                    Stage::Direct => {}
                    Stage::Delayed { deliver_at, .. } => {
                        self.staged.add_delayed(position, deliver_at)
                    }
                    Stage::Half {
                        target,
                        producer_group,
                    } => self.staged.add_half(staged::Half::new(
                        position,
                        &target.topic,
                        &producer_group,
                        a.store_timestamp + self.config.transaction_check_after.as_millis() as i64,
                    )),
                }
                sizes.push((receipt.topic.clone(), head.bytes));
                (head.slot, receipt)
            })
            .collect();
        if let Some(log_end) = staging {
            self.staged.end_append(log_end);
        }
        self.count_sends(&sizes, started);
        for c in &claimed {
            let receipt = stored.iter().find(|(s, _)| *s == c.slot).map(|(_, r)| r);
            self.dedupe
                .finish(&c.identity.producer_id, c.identity.sequence, receipt);
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
