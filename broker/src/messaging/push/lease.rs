//! One lease round of a consumer stream: expired leases are released, then
//! the queues are served in turn until the stream's limits or `max` are hit.

use std::collections::{BTreeSet, HashMap};

use crate::messaging::error::Result;
use crate::messaging::groups::ConsumeMode;
use crate::messaging::groups::GroupConfig;
use crate::messaging::push::cursor::{Lease, LeaseEnd, QueueCursor};
use crate::messaging::push::subscription::{QueueOffset, SubKey, SubState, Subscription};
use crate::messaging::receipt::ReceiptHandle;
use crate::messaging::topics::TopicConfig;
use crate::messaging::{Broker, Delivery, ReceiveLimits, properties};
use crate::store::{MessageType, StoreError, now_millis};

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

/// Most messages one lease round passes over per queue (gray lanes), so a
/// consumer facing a long backlog of another lane's messages holds the
/// subscription lock only briefly.
const MAX_PASSES: usize = 256;

/// What one lease round gave a consumer stream.
#[derive(Debug, Default)]
pub struct LeaseRound {
    pub deliveries: Vec<Delivery>,
    /// When to look again (ms) if nothing was leased: the next due retry, or
    /// (stopped by flow control) the next lease deadline. `None`: only an
    /// ack, a nack, a new message or a consumer change can bring work.
    pub wake_at: Option<i64>,
}

impl LeaseRound {
    /// How long a consumer that got nothing sleeps before its next round:
    /// until `wake_at`, at most `max` (new messages and acks wake it sooner).
    pub fn idle(wake_at: Option<i64>, max: std::time::Duration) -> std::time::Duration {
        wake_at
            .map(|at| std::time::Duration::from_millis((at - now_millis()).max(1) as u64))
            .unwrap_or(max)
            .min(max)
    }
}

/// What a lease round is for.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoundSpec<'a> {
    pub key: &'a SubKey,
    pub group: &'a GroupConfig,
    pub topic: &'a TopicConfig,
    pub consumer: u64,
    pub limits: ReceiveLimits,
    pub max: usize,
    pub now: i64,
}

/// A lease round and what it leaves to do once the subscription is unlocked.
#[derive(Debug)]
pub(super) struct RoundOutcome {
    pub round: LeaseRound,
    /// Messages whose expired lease was their last attempt.
    pub dead: Vec<QueueOffset>,
    /// Whether messages were newly passed over for other lanes' consumers.
    pub passed_over: bool,
}

impl SubState {
    /// A queue's cursor, loaded from the saved progress on first use.
    pub(super) fn cursor(
        &mut self,
        broker: &Broker,
        key: &SubKey,
        queue_id: u32,
    ) -> &mut QueueCursor {
        self.cursors.entry(queue_id).or_insert_with(|| {
            match broker.offsets.lock().cursor(&key.progress(queue_id)) {
                Some(progress) => QueueCursor::restore(
                    progress,
                    broker
                        .store
                        .visible_offsets(&key.topic, queue_id, broker.visibility_of(&key.topic))
                        .1,
                ),
                // New progress starts at the oldest stored message.
                None => QueueCursor::new(broker.store.queue_offsets(&key.topic, queue_id).0),
            }
        })
    }

    /// Releases expired leases, then leases up to `spec.max` messages to the
    /// consumer within its limits.
    pub(super) fn lease_round(
        &mut self,
        broker: &Broker,
        spec: &RoundSpec<'_>,
    ) -> Result<RoundOutcome> {
        let mut out = Vec::new();
        let mut dead = Vec::new();
        let mut passed_any = false;
        // Leases that ran out are released first.
        for at in self.expired(spec.now) {
            dead.extend(broker.end_lease(self, spec.group, &spec.key.topic, at, spec.now));
        }
        let start = self.round_robin;
        self.round_robin = self.round_robin.wrapping_add(1);
        let filter = self.filter.clone();
        let lanes = self.lanes.clone();
        // Stopped by flow control: only an ack, a nack (both notify) or an
        // expiring lease frees room, so due retries are no reason to wake.
        let mut capped = false;
        // Offsets this consumer left for other lanes, per queue.
        let mut passed_by_queue: HashMap<u32, BTreeSet<u64>> = HashMap::new();
        // FIFO topics and ordered groups, clustering: one message per queue
        // at a time.
        let ordered = (spec.topic.message_type == MessageType::Fifo || spec.group.ordered)
            && spec.group.mode == ConsumeMode::Clustering;
        'queues: for i in 0..spec.topic.queues {
            let q = (start + i) % spec.topic.queues;
            // Checked each round, so nothing is leased after its expiry.
            broker.expire_queue(spec.topic, q, spec.now)?;
            let (min, max_offset) = broker.store.visible_offsets(
                &spec.topic.name,
                q,
                broker.visibility(&spec.topic.settings),
            );
            let passed = passed_by_queue.entry(q).or_default();
            for lease in self.cursor(broker, spec.key, q).skip_below(min) {
                self.refund(&lease);
            }
            while out.len() < spec.max && passed.len() < MAX_PASSES {
                // A consumer closed while its round was on the way leases nothing.
                let Some(usage) = self.usage.get(&spec.consumer).copied() else {
                    break 'queues;
                };
                if usage.messages >= spec.limits.max_messages {
                    capped = true;
                    break 'queues;
                }
                let cursor = self.cursor(broker, spec.key, q);
                let skip = lane_skip(&lanes, spec.consumer, passed);
                let candidate = cursor.candidate(spec.now, max_offset, ordered, &skip);
                drop(skip);
                let Some(offset) = candidate else {
                    break;
                };
                let record = match broker
                    .store
                    .read(&spec.topic.name, q, offset, 1, usize::MAX)
                {
                    Ok(r) if r.records.len() == 1 => r.records.into_iter().next().expect("one"),
                    Ok(_) => {
                        cursor.skip(offset); // corrupt: reported by the store
                        continue;
                    }
                    Err(StoreError::OffsetOutOfRange { min, .. }) => {
                        for lease in cursor.skip_below(min) {
                            self.refund(&lease);
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if !filter.matches(&record) {
                    cursor.skip(offset); // filtered out: done for this group
                    continue;
                }
                let lane = properties::lane(&record.properties);
                if !lane_ok(&lanes, spec.consumer, lane) {
                    // Another consumer's lane: leave it for them.
                    passed_any |= self
                        .cursor(broker, spec.key, q)
                        .pass_over(offset, spec.now, lane);
                    passed.insert(offset);
                    continue;
                }
                let cursor = self.cursor(broker, spec.key, q);
                let bytes = record.body.len() as u64;
                if usage.messages > 0 && usage.bytes + bytes > spec.limits.max_bytes {
                    capped = true;
                    break 'queues;
                }
                let lease = Lease {
                    delivery_id: rand::random(),
                    deadline: spec.now + spec.limits.invisible.as_millis() as i64,
                    consumer: spec.consumer,
                    bytes,
                    ending: LeaseEnd::Backoff,
                    leased_at: spec.now,
                };
                let attempt = cursor.lease(offset, lease);
                self.charge(&lease);
                out.push(Delivery {
                    message_id: broker.message_id_of(&record),
                    receipt_handle: ReceiptHandle {
                        queue_id: q,
                        offset,
                        delivery_id: lease.delivery_id,
                        member: spec.key.member.clone(),
                    }
                    .encode(),
                    invisible_until: lease.deadline,
                    attempt,
                    record,
                });
            }
        }
        let no_passes = BTreeSet::new();
        let wake = self
            .cursors
            .iter()
            .filter_map(|(q, c)| {
                if capped {
                    c.lease_deadline()
                } else {
                    let passed = passed_by_queue.get(q).unwrap_or(&no_passes);
                    c.next_wake_except(&lane_skip(&lanes, spec.consumer, passed))
                }
            })
            .min();
        Ok(RoundOutcome {
            round: LeaseRound {
                deliveries: out,
                wake_at: wake,
            },
            dead,
            passed_over: passed_any,
        })
    }
}

impl Broker {
    /// Leases up to `max` messages to a consumer within its limits.
    pub async fn lease(
        &self,
        sub: &Subscription,
        consumer: u64,
        limits: ReceiveLimits,
        max: usize,
    ) -> Result<LeaseRound> {
        if let Some(r) = self.replication() {
            r.serves_consumers()?;
        }
        let group = self.require_group(&sub.key.group)?;
        let topic = self.topics.require(&sub.key.topic)?;
        let spec = RoundSpec {
            key: &sub.key,
            group: &group,
            topic: &topic,
            consumer,
            limits,
            max,
            now: now_millis(),
        };
        let outcome = sub.state.lock().lease_round(self, &spec)?;
        if outcome.passed_over {
            // Wake the consumers they were left for. Only for new passes: a
            // stream's own wait is armed before it leases, so notifying on every
            // pass would wake the passer itself again and again.
            sub.notify.notify_waiters();
        }
        self.dead_letter_all(sub, &group, outcome.dead).await;
        self.count_deliveries(&outcome.round.deliveries, &group.name);
        Ok(outcome.round)
    }
}
