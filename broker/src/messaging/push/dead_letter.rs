//! Dead-lettering: a message that used up its delivery attempts is copied to
//! the group's dead-letter topic and marked done.

use crate::messaging::error::Result;
use crate::messaging::groups::GroupConfig;
use crate::messaging::push::subscription::{QueueOffset, Subscription};
use crate::messaging::{Broker, properties};
use crate::store::{Message, now_millis};

impl Broker {
    /// Moves messages that used up their attempts to the group's dead-letter
    /// topic, then marks them done.
    pub(super) async fn dead_letter_all(
        &self,
        sub: &Subscription,
        group: &GroupConfig,
        jobs: Vec<QueueOffset>,
    ) {
        for at in jobs {
            if !self.writes_log() {
                // A replica writes nothing to its log (the master's copy): the
                // message comes again, and its master dead-letters it.
                let later = now_millis() + group.backoff(1).as_millis() as i64;
                sub.state.lock().retry_at(at, later);
                continue;
            }
            if let Err(e) = self.dead_letter(sub, group, at).await {
                tracing::error!(group = %group.name, queue_id = at.queue_id, offset = at.offset, error = %e, "dead-lettering failed; will retry");
                // Deliver it again later so it is neither lost nor stuck.
                sub.state
                    .lock()
                    .retry_at(at, now_millis() + group.backoff(1).as_millis() as i64);
            }
        }
    }

    /// Dead-letters one message (or drops it, when the group does not
    /// dead-letter) and marks it done.
    async fn dead_letter(
        &self,
        sub: &Subscription,
        group: &GroupConfig,
        at: QueueOffset,
    ) -> Result<()> {
        self.copy_to_dead_letter(sub, group, at).await?;
        sub.state.lock().mark_done(at);
        Ok(())
    }

    /// Writes the dead-letter copy of one message (nothing, when the group
    /// does not dead-letter); its progress is left to the caller.
    pub(super) async fn copy_to_dead_letter(
        &self,
        sub: &Subscription,
        group: &GroupConfig,
        at: QueueOffset,
    ) -> Result<()> {
        let QueueOffset { queue_id, offset } = at;
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
                .attempts(at)
                .unwrap_or(group.max_delivery_attempts);
            let dlq = group.dead_letter_topic();
            // The copy is not the producer's message: no dedupe identity.
            let mut properties: Vec<(String, String)> = rec
                .properties
                .iter()
                .filter(|(k, _)| !properties::PRODUCER_ID.is(k) && !properties::SEQUENCE.is(k))
                .cloned()
                .collect();
            properties.extend([
                properties::DLQ_ORIGIN_TOPIC.with(topic),
                properties::DLQ_ORIGIN_QUEUE.with(queue_id),
                properties::DLQ_ORIGIN_OFFSET.with(offset),
                properties::DLQ_ORIGIN_MESSAGE_ID.with(self.message_id_of(&rec)),
                properties::DLQ_DELIVERY_ATTEMPTS.with(attempts),
            ]);
            self.append_as_master(vec![Message {
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
        Ok(())
    }
}
