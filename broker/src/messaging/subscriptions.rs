//! A group's one subscription per topic: the filter every consumer of the
//! group on that topic must use, so no member can change which messages the
//! others get (a filter decides what is done for the whole group).
//!
//! - A group that declares subscriptions (CreateGroup, the operator's
//!   ConsumerGroup) has exactly those: a consumer with another filter, or on a
//!   topic the group declares none for, is refused with
//!   `SUBSCRIPTION_MISMATCH`. Refusing undeclared topics is the safe choice:
//!   a declared group says what it consumes.
//! - A group that declares none gets each topic's filter from its first
//!   subscriber, held while that topic has live consumers of the group: open
//!   push streams and unexpired pull members (heartbeats) naming the topic.
//!   Then it is free for the next first subscriber. Push members count by
//!   their streams, not their membership entry, so closing the last stream
//!   frees the filter at once; pull requests are stateless, so heartbeats are
//!   what keeps a pull consumer's filter.
//! - A changed declaration reaches the live streams, and a stream joining
//!   meanwhile installs the declaration as stored when it registers, not as
//!   it was when its filter was checked.
//!
//! Filters are compared by what they match (`*` and empty are the same tag
//! filter; tag order and spacing do not matter; SQL by its parse).

use std::fmt;
use std::sync::Arc;

use super::Broker;
use super::error::{BrokerError, Result, brief};
use super::groups::GroupConfig;
use super::membership::MemberKind;
use crate::filter::{Filter, FilterKind, FilterSpec};
use crate::store::now_millis;

/// A group's filter on one topic, for the claims of groups without
/// declarations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupTopic {
    pub group: String,
    pub topic: String,
}

/// What a refused consumer's group has on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldSubscription {
    /// The group's filter (declared, or held by its first subscriber).
    Filter(FilterSpec),
    /// The group declares subscriptions, none on this topic.
    Undeclared,
}

impl fmt::Display for HeldSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldSubscription::Filter(spec) => {
                let kind = match spec.kind {
                    FilterKind::Tag => "tag",
                    FilterKind::Sql => "SQL",
                };
                write!(
                    f,
                    "subscribes with the {kind} filter {}",
                    brief(spec.expression.trim())
                )
            }
            HeldSubscription::Undeclared => f.write_str("declares no subscription"),
        }
    }
}

/// Whether a subscriber claims the group's filter on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A consumer (or a pull member): its filter is the group's while the
    /// group has consumers.
    Take,
    /// A reader that is no member (a RocketMQ pull): checked against the
    /// group's filter, it leaves no claim behind.
    CheckOnly,
}

impl Broker {
    /// The filter a consumer of `group` on `topic` asking for `wanted` gets:
    /// the group's, if `wanted` matches the same; refused otherwise. `join`
    /// registers the consumer before another first subscriber can claim the
    /// topic.
    pub(super) fn subscribe<T>(
        &self,
        group: &str,
        topic: &str,
        wanted: &FilterSpec,
        join: impl FnOnce(Arc<Filter>) -> T,
    ) -> Result<T> {
        self.subscribe_as(group, topic, wanted, Claim::Take, join)
    }

    /// [`Broker::subscribe`], claiming the group's filter or only checking
    /// against it.
    pub(super) fn subscribe_as<T>(
        &self,
        group: &str,
        topic: &str,
        wanted: &FilterSpec,
        claim: Claim,
        join: impl FnOnce(Arc<Filter>) -> T,
    ) -> Result<T> {
        let filter = wanted.parse()?;
        let mismatch = |held| BrokerError::SubscriptionMismatch {
            group: group.to_string(),
            topic: topic.to_string(),
            held,
        };
        if let Some(config) = self.groups.get(group)
            && !config.subscriptions.is_empty()
        {
            let declared = config
                .declared(topic)
                .ok_or_else(|| mismatch(HeldSubscription::Undeclared))?;
            if declared.filter.parse()? != filter {
                return Err(mismatch(HeldSubscription::Filter(declared.filter.clone())));
            }
            return Ok(join(Arc::new(filter)));
        }
        let key = GroupTopic {
            group: group.to_string(),
            topic: topic.to_string(),
        };
        let mut claims = self.claims.lock();
        if let Some(held) = claims.get(&key)
            && held.parse()? != filter
            && self.has_consumers(&key)
        {
            return Err(mismatch(HeldSubscription::Filter(held.clone())));
        }
        if claim == Claim::Take {
            claims.insert(key, wanted.clone());
        }
        Ok(join(Arc::new(filter)))
    }

    /// Frees the claims on `topics` that no consumer holds, before a pull
    /// member joins: its heartbeat names no filter, so it must not keep one
    /// its predecessors left; its first pull sets the filter.
    pub(super) fn free_idle_claims(&self, group: &str, topics: &[String]) {
        let mut claims = self.claims.lock();
        for topic in topics {
            let key = GroupTopic {
                group: group.to_string(),
                topic: topic.clone(),
            };
            if claims.contains_key(&key) && !self.has_consumers(&key) {
                claims.remove(&key);
            }
        }
    }

    /// Refuses a topic a group that declares subscriptions does not declare.
    pub(super) fn check_declared_topic(&self, group: &str, topic: &str) -> Result<()> {
        match self.groups.get(group) {
            Some(config)
                if !config.subscriptions.is_empty() && config.declared(topic).is_none() =>
            {
                Err(BrokerError::SubscriptionMismatch {
                    group: group.to_string(),
                    topic: topic.to_string(),
                    held: HeldSubscription::Undeclared,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether the group has live consumers on the topic: open push streams
    /// or unexpired pull members naming it.
    fn has_consumers(&self, key: &GroupTopic) -> bool {
        let subs: Vec<_> = self
            .subscriptions
            .lock()
            .iter()
            .filter(|(k, _)| k.group == key.group && k.topic == key.topic)
            .map(|(_, s)| s.clone())
            .collect();
        if subs.iter().any(|s| s.state.lock().has_consumers()) {
            return true;
        }
        let oldest = now_millis() - self.config.session_timeout.as_millis() as i64;
        self.members.lock().get(&key.group).is_some_and(|m| {
            m.members().values().any(|member| {
                member.kind == MemberKind::Pull
                    && member.last_seen_ms >= oldest
                    && member.topics.contains(&key.topic)
            })
        })
    }

    /// Gives the live subscriptions of `group` its declared filters (after
    /// CreateGroup changed them), and forgets its first-subscriber claims. A
    /// group that stops declaring keeps its former filters as claims, held
    /// while its live consumers last (they were subscribed with them).
    pub(super) fn apply_declared_subscriptions(
        &self,
        before: Option<&GroupConfig>,
        group: &GroupConfig,
    ) {
        if group.subscriptions.is_empty() {
            let mut claims = self.claims.lock();
            for s in before.map_or(&[][..], |b| &b.subscriptions) {
                let key = GroupTopic {
                    group: group.name.clone(),
                    topic: s.topic.clone(),
                };
                claims.insert(key, s.filter.clone());
            }
            return;
        }
        self.claims.lock().retain(|k, _| k.group != group.name);
        let subs: Vec<_> = self
            .subscriptions
            .lock()
            .values()
            .filter(|s| s.key.group == group.name)
            .cloned()
            .collect();
        for sub in subs {
            let Some(declared) = group.declared(&sub.key.topic) else {
                continue;
            };
            if let Ok(filter) = declared.filter.parse() {
                sub.state.lock().set_filter(Arc::new(filter));
                sub.notify.notify_waiters();
            }
        }
    }

    /// The filter a joining push consumer installs, asked while it holds its
    /// subscription's lock: the group's declaration as stored now, else the
    /// `checked` one [`Broker::subscribe`] accepted it with. A CreateGroup
    /// between that check and the install stored its declaration before its
    /// [`Broker::apply_declared_subscriptions`] took the lock (or missed the
    /// not yet registered consumer), so the install cannot put back the
    /// filter that declaration replaced.
    pub(super) fn filter_to_install(
        &self,
        group: &str,
        topic: &str,
        checked: Arc<Filter>,
    ) -> Arc<Filter> {
        self.groups
            .get(group)
            .and_then(|config| config.declared(topic)?.filter.parse().ok())
            .map_or(checked, Arc::new)
    }

    /// Forgets the first-subscriber claims of a deleted group.
    pub(super) fn forget_claims(&self, group: &str) {
        self.claims.lock().retain(|k, _| k.group != group);
    }
}
