//! The records metadata travels in: `%META%` (queue 0) holds every change of
//! the topic and group tables, and now and then a full snapshot of each;
//! `%PROGRESS%` (queue 0) holds snapshots of consumer progress. Bodies are
//! JSON:
//!
//! ```text
//! %META%      {"table": "topics", "put": {<TopicConfig>}}     a journal record
//!             {"table": "groups", "delete": "<name>"}          with its table
//!             {"table": "topics", "snapshot": [<entries>]}     the whole table
//! %PROGRESS%  {"retention_floor": <u64>, "offsets": <offsets.json>}
//! ```
//!
//! A change record is the journal record of the change (see
//! `super::super::journal`) with the table's name added, so a replica applies
//! exactly what the master journaled. `retention_floor` is the commit-log
//! position below which the master lets retention delete segments; a replica
//! pins its own retention there, so it keeps what a promotion will need.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::super::groups::GroupConfig;
use super::super::topics::TopicConfig;
use crate::store::{Message, now_millis};

/// Changes and snapshots of the topic and group tables.
pub const META_TOPIC: &str = "%META%";
/// Snapshots of consumer progress.
pub const PROGRESS_TOPIC: &str = "%PROGRESS%";

/// The journal tables replicated through `%META%`, by their journal names.
const TOPICS: &str = "topics";
const GROUPS: &str = "groups";

/// What a `%META%` record does to its table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableOp<T> {
    /// Creates or replaces the entry with this name.
    Put(T),
    /// Removes the entry with this name.
    Delete(String),
    /// The whole table: entries not in it are removed.
    Snapshot(Vec<T>),
}

/// A decoded `%META%` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaRecord {
    Topics(TableOp<TopicConfig>),
    Groups(TableOp<GroupConfig>),
}

#[derive(Deserialize)]
struct TableName {
    table: String,
}

#[derive(Serialize, Deserialize)]
struct Tagged<T> {
    table: String,
    #[serde(flatten)]
    op: TableOp<T>,
}

/// The `%PROGRESS%` record's body.
#[derive(Debug, Deserialize)]
pub struct ProgressRecord {
    pub retention_floor: u64,
    /// The master's `offsets.json`, as it wrote it.
    pub offsets: serde_json::Value,
}

fn record(topic: &str, body: Vec<u8>) -> Message {
    Message {
        topic: topic.to_string(),
        queue_id: 0,
        born_timestamp: now_millis(),
        body: Bytes::from(body),
        ..Message::default()
    }
}

/// The `%META%` record of a change journaled in `table` (`payload`: the
/// journal record, a JSON object).
pub fn change(table: &str, payload: &[u8]) -> Message {
    let name = serde_json::to_string(table).expect("a name serializes");
    let mut body = Vec::with_capacity(payload.len() + name.len() + 10);
    body.extend_from_slice(b"{\"table\":");
    body.extend_from_slice(name.as_bytes());
    body.push(b',');
    body.extend_from_slice(&payload[1..]);
    record(META_TOPIC, body)
}

/// The `%META%` record holding the whole of `table`.
pub fn snapshot<T: Serialize + Clone>(table: &str, entries: &BTreeMap<String, T>) -> Message {
    let tagged = Tagged {
        table: table.to_string(),
        op: TableOp::Snapshot(entries.values().cloned().collect()),
    };
    record(
        META_TOPIC,
        serde_json::to_vec(&tagged).expect("metadata serializes"),
    )
}

/// The `%PROGRESS%` record of `offsets_json` (the bytes of `offsets.json`).
pub fn progress(offsets_json: &[u8], retention_floor: u64) -> Message {
    let mut body = format!("{{\"retention_floor\":{retention_floor},\"offsets\":").into_bytes();
    body.extend_from_slice(offsets_json);
    body.push(b'}');
    record(PROGRESS_TOPIC, body)
}

fn op<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<TableOp<T>> {
    Ok(serde_json::from_slice::<Tagged<T>>(body)?.op)
}

/// Decodes a `%META%` record; the error says what is wrong with it.
pub fn decode_meta(body: &[u8]) -> Result<MetaRecord, String> {
    let name: TableName = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match name.table.as_str() {
        TOPICS => op(body).map(MetaRecord::Topics),
        GROUPS => op(body).map(MetaRecord::Groups),
        other => return Err(format!("unknown table {other:?}")),
    }
    .map_err(|e| e.to_string())
}

/// Decodes a `%PROGRESS%` record.
pub fn decode_progress(body: &[u8]) -> Result<ProgressRecord, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// The journal names of the replicated tables, in snapshot order.
pub const TABLES: [&str; 2] = [TOPICS, GROUPS];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::groups::ConsumeMode;
    use crate::messaging::topic_settings::TopicSettings;
    use crate::store::MessageType;

    fn topic(name: &str) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            queues: 4,
            message_type: MessageType::Delay,
            settings: TopicSettings::from_wire(1024, 60_000),
        }
    }

    #[test]
    fn change_records_carry_the_journal_record_and_its_table() {
        let put = serde_json::to_vec(&serde_json::json!({"put": topic("t")})).unwrap();
        let m = change("topics", &put);
        assert_eq!(m.topic, META_TOPIC);
        assert_eq!(m.queue_id, 0);
        assert_eq!(
            decode_meta(&m.body).unwrap(),
            MetaRecord::Topics(TableOp::Put(topic("t")))
        );
        let m = change("groups", br#"{"delete":"g"}"#);
        assert_eq!(&m.body[..], br#"{"table":"groups","delete":"g"}"#);
        assert_eq!(
            decode_meta(&m.body).unwrap(),
            MetaRecord::Groups(TableOp::Delete("g".into()))
        );
    }

    #[test]
    fn snapshots_and_progress_read_back() {
        let entries: BTreeMap<String, TopicConfig> =
            [("a".to_string(), topic("a")), ("b".to_string(), topic("b"))].into();
        assert_eq!(
            decode_meta(&snapshot("topics", &entries).body).unwrap(),
            MetaRecord::Topics(TableOp::Snapshot(vec![topic("a"), topic("b")]))
        );
        let p = progress(br#"{"entries": []}"#, 4096);
        assert_eq!(p.topic, PROGRESS_TOPIC);
        let back = decode_progress(&p.body).unwrap();
        assert_eq!(back.retention_floor, 4096);
        assert_eq!(back.offsets, serde_json::json!({"entries": []}));
    }

    #[test]
    fn damage_is_named() {
        let unknown = decode_meta(br#"{"table":"x","delete":"a"}"#).unwrap_err();
        assert!(unknown.contains("unknown table"), "{unknown}");
        assert!(decode_meta(b"{").is_err());
        let group = crate::messaging::groups::GroupConfig {
            name: "g".into(),
            mode: ConsumeMode::Broadcast,
            max_delivery_attempts: 3,
            retry_backoff_ms: vec![10],
            dead_letter: true,
            subscriptions: Vec::new(),
            ordered: true,
        };
        let put = serde_json::to_vec(&serde_json::json!({"put": group})).unwrap();
        assert_eq!(
            decode_meta(&change("groups", &put).body).unwrap(),
            MetaRecord::Groups(TableOp::Put(group))
        );
    }
}
