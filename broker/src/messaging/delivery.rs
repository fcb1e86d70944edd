//! A message as a consumer sees it, lookups by id and key, and the delivery
//! metrics.

use super::error::Result;
use super::{Broker, properties, staged};
use crate::store::{MessageId, Record, now_millis};

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

impl Broker {
    /// The id consumers see: a released copy keeps its origin's, the id the
    /// producer got.
    pub(super) fn message_id_of(&self, rec: &Record) -> String {
        if let Some(origin) = properties::ORIGIN_ID.get(&rec.properties) {
            return origin.to_string();
        }
        MessageId {
            broker_id: self.store.config().broker_id,
            physical_offset: rec.physical_offset,
            crc: rec.crc,
        }
        .to_string()
    }

    pub(super) fn count_deliveries(&self, deliveries: &[Delivery], group: &str) {
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

    /// The message a message id names (staged messages show their real topic).
    pub fn lookup_by_id(&self, id: &str) -> Result<Delivery> {
        let id: MessageId = id.parse()?;
        let record = self.store.lookup_by_id(&id)?;
        Ok(self.plain_delivery(record))
    }

    /// Messages of a topic with `key`, stored between `begin_ms` and `end_ms`
    /// (0: unbounded), at most `max`.
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
    pub(super) fn plain_delivery(&self, mut record: Record) -> Delivery {
        if staged::is_staged(&record.topic)
            && let Some((topic, queue)) = properties::staged_target(&record.properties)
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
}
