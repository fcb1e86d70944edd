//! Push consumption: consumer streams lease messages from a subscription's
//! cursors; acks, nacks and lease expiry settle them; messages that use up
//! their attempts are dead-lettered.

pub mod cursor;
mod dead_letter;
mod lease;

pub use cursor::LeaseEnd;
pub use lease::LeaseRound;
pub mod subscription;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::filter::{Filter, FilterSpec};
use crate::messaging::error::{BrokerError, Result, brief};
use crate::messaging::groups::{ConsumeMode, GroupConfig};
use crate::messaging::membership::MemberKind;
use crate::messaging::push::cursor::Released;
use crate::messaging::push::subscription::{QueueOffset, SubKey, SubState, Subscription};
use crate::messaging::receipt::ReceiptHandle;
use crate::messaging::{Broker, Delivery, limits};
use crate::store::now_millis;

/// Flow-control limits of one consumer stream.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveLimits {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub invisible: Duration,
}

/// A registered consumer stream: its subscription and its consumer id.
#[derive(Debug, Clone)]
pub struct ReceiveStream {
    pub subscription: Arc<Subscription>,
    pub consumer: u64,
}

/// What became of a nacked message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Delivered again at this time (ms), after the group's backoff.
    Redeliver { at: i64 },
    /// It had used up its attempts: moved to the dead-letter topic (or
    /// dropped, when the group does not dead-letter).
    DeadLettered,
}

/// What a receipt handle names: its subscription and group, and the handle.
struct Leased {
    sub: Arc<Subscription>,
    config: GroupConfig,
    handle: ReceiptHandle,
}

impl Broker {
    /// The subscription a consumer of `group` joins: one per group and topic,
    /// and per member for broadcast groups.
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

    /// The subscription of `key`, created on first use.
    fn subscription(&self, key: SubKey) -> Arc<Subscription> {
        self.subscriptions
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Subscription::new(key)))
            .clone()
    }

    /// Registers a consumer stream; returns its subscription and consumer id.
    /// A `filter` other than the group's subscription on the topic is refused.
    pub fn open_receive(
        &self,
        group: &str,
        topic: &str,
        client_id: &str,
        mode: ConsumeMode,
        filter: &FilterSpec,
        lane: String,
    ) -> Result<ReceiveStream> {
        limits::check_id("client_id", client_id, limits::MAX_CLIENT_ID_LEN, false)?;
        limits::check_id("lane", &lane, limits::MAX_LANE_LEN, true)?;
        if let Some(r) = self.replication() {
            r.serves_consumers()?;
        }
        // Both names first: a refusal must not leave an auto-created group.
        limits::check_group_name("group", group)?;
        self.check_topic_for_use(topic)?;
        filter.parse()?;
        let group = self.group_for_use(group, mode)?;
        let topic = self.topic_for_use(topic)?;
        let consumer = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        // A refused consumer leaves no subscription behind.
        let sub = self.subscribe(&group.name, &topic.name, filter, |checked| {
            self.join_stream(&group, &topic.name, client_id, consumer, lane, checked)
        })?;
        Ok(ReceiveStream {
            subscription: sub,
            consumer,
        })
    }

    /// Registers consumer stream `consumer` on its subscription, once
    /// [`Broker::subscribe`] accepted it with the group's filter `checked`.
    pub(super) fn join_stream(
        &self,
        group: &GroupConfig,
        topic: &str,
        client_id: &str,
        consumer: u64,
        lane: String,
        checked: Arc<Filter>,
    ) -> Arc<Subscription> {
        let sub = self.subscription(Self::sub_key(group, topic, client_id));
        {
            let mut state = sub.state.lock();
            let filter = self.filter_to_install(&group.name, topic, checked);
            state.add_consumer(consumer, lane, filter);
        }
        self.touch_member(
            &group.name,
            client_id,
            MemberKind::Push,
            [topic.to_string()],
        );
        sub
    }

    /// Ends a consumer stream: its leases end now and are redelivered per backoff.
    pub async fn close_receive(&self, sub: &Subscription, consumer: u64) {
        let Some(group) = self.groups.get(&sub.key.group) else {
            return;
        };
        let dead: Vec<QueueOffset> = {
            let mut st = sub.state.lock();
            let now = now_millis();
            st.remove_consumer(consumer)
                .into_iter()
                .filter_map(|at| self.end_lease(&mut st, &group, &sub.key.topic, at, now))
                .collect()
        };
        sub.notify.notify_waiters();
        self.dead_letter_all(sub, &group, dead).await;
    }

    /// Unregisters a consumer stream but leaves its leases to their
    /// deadlines: its client may come back and ack what it holds.
    pub fn detach_receive(&self, sub: &Subscription, consumer: u64) {
        sub.state.lock().detach_consumer(consumer);
        sub.notify.notify_waiters();
    }

    /// Moves the end of the leases `consumer` holds to `now + invisible` (a
    /// client that asked the broker to renew what it holds; see
    /// [`cursor::QueueCursor::renew`] for those left alone).
    pub fn renew_leases(&self, sub: &Subscription, consumer: u64, invisible: Duration) {
        let now = now_millis();
        sub.state
            .lock()
            .renew(consumer, now, now + invisible.as_millis() as i64);
    }

    /// Ends a lease without an ack (counting the retry); returns the offset
    /// when the message has used up its attempts and is to be dead-lettered.
    fn end_lease(
        &self,
        st: &mut SubState,
        group: &GroupConfig,
        topic: &str,
        at: QueueOffset,
        now: i64,
    ) -> Option<QueueOffset> {
        match st.release(at, now, group)? {
            Released::Retry { .. } => {
                if let Some(m) = &self.metrics {
                    m.retries.with_label_values(&[&group.name, topic]).inc();
                }
                None
            }
            Released::DeadLetter { offset, .. } => Some(QueueOffset {
                queue_id: at.queue_id,
                offset,
            }),
        }
    }

    /// The live subscription a receipt handle's lease belongs to.
    /// Ends every lease and drops every cursor of every subscription, so
    /// each is loaded again from the saved progress on its next use: a
    /// promoted replica's progress is the master's, and so is the one a
    /// replica just applied (cursors a replica made while it served consumers
    /// without a master are stale once the master's progress moves on; kept,
    /// they redelivered up to 19,000 messages per failover in the soak).
    pub(in crate::messaging) fn forget_push_cursors(&self) {
        let subscriptions: Vec<_> = self.subscriptions.lock().values().cloned().collect();
        for sub in subscriptions {
            sub.state.lock().forget_cursors();
            sub.notify.notify_waiters();
        }
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
                if !sub.state.lock().ack(handle.at(), handle.delivery_id) {
                    return Err(stale_handle(h));
                }
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
    /// dead-lettered.
    pub async fn nack(&self, group: &str, topic: &str, handle: &str) -> Result<NackOutcome> {
        let Leased {
            sub,
            config,
            handle: h,
        } = self.leased(group, topic, handle)?;
        let now = now_millis();
        let dead = {
            let mut st = sub.state.lock();
            if !st.holds(h.at(), h.delivery_id) {
                return Err(stale_handle(handle));
            }
            self.end_lease(&mut st, &config, topic, h.at(), now)
        };
        sub.notify.notify_waiters();
        match dead {
            Some(job) => {
                self.dead_letter_all(&sub, &config, vec![job]).await;
                Ok(NackOutcome::DeadLettered)
            }
            None => {
                let attempts = sub.state.lock().attempts(h.at()).unwrap_or(1);
                Ok(NackOutcome::Redeliver {
                    at: now + config.backoff(attempts).as_millis() as i64,
                })
            }
        }
    }

    /// Dead-letters a leased message now, whatever attempts it has left (a
    /// client that gave up on it, as RocketMQ push consumers do). The copy is
    /// written while the lease is held, then the lease ends as with an ack;
    /// refused on a member that does not write its log, and when the copy
    /// could not be written (the lease is then kept, and the client may try
    /// again).
    pub async fn dead_letter_now(&self, group: &str, topic: &str, handle: &str) -> Result<()> {
        self.write_term()?;
        let Leased {
            sub,
            config,
            handle: h,
        } = self.leased(group, topic, handle)?;
        if !sub.state.lock().holds(h.at(), h.delivery_id) {
            return Err(stale_handle(handle));
        }
        self.copy_to_dead_letter(&sub, &config, h.at()).await?;
        // Its lease ran out meanwhile: it comes again, and may be
        // dead-lettered twice (at-least-once).
        sub.state.lock().ack(h.at(), h.delivery_id);
        sub.notify.notify_waiters();
        Ok(())
    }

    /// The subscription and group a receipt handle belongs to.
    fn leased(&self, group: &str, topic: &str, handle: &str) -> Result<Leased> {
        let h = ReceiptHandle::parse(handle)?;
        Ok(Leased {
            sub: self.find_subscription(group, topic, &h.member)?,
            config: self.require_group(group)?,
            handle: h,
        })
    }

    /// The message a current lease of `consumer` holds, as that consumer
    /// received it (its `attempt`, which the lease does not keep, as it was
    /// answered): for a client that lost the answer and asks for it again
    /// (RocketMQ's `attempt_id`). Refused when the handle names no current
    /// lease of that consumer, or one past its deadline.
    pub fn held_delivery(
        &self,
        stream: &ReceiveStream,
        handle: &str,
        attempt: u32,
    ) -> Result<Delivery> {
        let h = ReceiptHandle::parse(handle)?;
        let sub = &stream.subscription;
        let lease = if sub.key.member == h.member {
            sub.state.lock().lease(h.at(), h.delivery_id)
        } else {
            None
        };
        let now = now_millis();
        let Some(lease) = lease.filter(|l| l.consumer == stream.consumer && l.deadline > now)
        else {
            return Err(stale_handle(handle));
        };
        let r = self
            .store
            .read(&sub.key.topic, h.queue_id, h.offset, 1, usize::MAX)?;
        let record = r
            .records
            .into_iter()
            .next()
            .ok_or_else(|| stale_handle(handle))?;
        Ok(Delivery {
            message_id: self.message_id_of(&record),
            receipt_handle: handle.to_string(),
            invisible_until: lease.deadline,
            attempt,
            record,
        })
    }

    /// Moves a lease's end to `now + invisible_ms`; returns the new end.
    /// `ending`: what follows when it runs out.
    pub fn change_invisible(
        &self,
        group: &str,
        topic: &str,
        handle: &str,
        invisible_ms: u64,
        ending: LeaseEnd,
    ) -> Result<i64> {
        let invisible = limits::check_invisible(invisible_ms, self.config.max_invisible_duration)?;
        let h = ReceiptHandle::parse(handle)?;
        let sub = self.find_subscription(group, topic, &h.member)?;
        let deadline = now_millis() + invisible.as_millis() as i64;
        if !sub
            .state
            .lock()
            .extend(h.at(), h.delivery_id, deadline, ending)
        {
            return Err(stale_handle(handle));
        }
        sub.notify.notify_waiters();
        Ok(deadline)
    }
}

fn stale_handle(handle: &str) -> BrokerError {
    BrokerError::InvalidReceiptHandle(format!(
        "{} does not name a current lease (already acked, expired, or forged)",
        brief(handle)
    ))
}

#[cfg(test)]
mod tests;
