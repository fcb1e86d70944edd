//! The records metadata travels in: `%META%` (queue 0) holds every change of
//! the topic and group tables, and now and then a full snapshot of each;
//! `%PROGRESS%` (queue 0) holds snapshots of consumer progress. Bodies are
//! JSON:
//!
//! ```text
//! %META%      {"table": "topics", "put": {<TopicConfig>}}     a journal record
//!             {"table": "groups", "delete": "<name>"}          with its table
//!             {"table": "topics", "part": 1, "parts": 2,       the whole table, in
//!              "snapshot": [<entries>]}                        one record or more
//! %PROGRESS%  {"retention_floor": <u64>, "part": 1, "parts": 1,
//!              "offsets": {"entries": [<offsets.json entries>]}}
//! ```
//!
//! A change record is the journal record of the change (see
//! `super::super::journal`) with the table's name added, so a replica applies
//! exactly what the master journaled. A snapshot larger than a record may be
//! is split into parts (`part` of `parts`, 1-based; absent: one record), which
//! the master appends in one append, so they are contiguous in their queue.
//! `retention_floor` is the commit-log position below which the master lets
//! retention delete segments; a replica pins its own retention there, so it
//! keeps what a promotion will need.

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

/// A record's place among the records a snapshot is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Part {
    /// 1-based.
    pub part: u32,
    pub parts: u32,
}

impl Default for Part {
    fn default() -> Part {
        Part { part: 1, parts: 1 }
    }
}

impl Part {
    pub fn is_last(self) -> bool {
        self.part == self.parts
    }
}

/// A decoded `%META%` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaRecord {
    Topics(TableOp<TopicConfig>, Part),
    Groups(TableOp<GroupConfig>, Part),
}

impl MetaRecord {
    pub fn part(&self) -> Part {
        match self {
            MetaRecord::Topics(_, part) | MetaRecord::Groups(_, part) => *part,
        }
    }
}

#[derive(Deserialize)]
struct TableName {
    table: String,
}

#[derive(Deserialize)]
struct Tagged<T> {
    #[serde(flatten)]
    op: TableOp<T>,
    #[serde(flatten)]
    part: Part,
}

/// A `%PROGRESS%` record's body.
#[derive(Debug, Deserialize)]
pub struct ProgressRecord {
    pub retention_floor: u64,
    #[serde(flatten)]
    pub part: Part,
    /// Entries of the master's `offsets.json` (all of them, or this part's).
    pub offsets: ProgressEntries,
}

/// The `offsets.json` form: `{"entries": [...]}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ProgressEntries {
    pub entries: Vec<serde_json::Value>,
}

/// Room left in a record for a snapshot's entries: the largest record less
/// the record's header, topic, and the JSON around the entries.
const RECORD_OVERHEAD: usize = 1024;

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

/// Splits JSON `items` into groups of at most `budget` bytes (an item
/// larger than that goes alone); always at least one group.
fn pack(items: Vec<Vec<u8>>, budget: usize) -> Vec<Vec<Vec<u8>>> {
    let mut groups: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    let mut size = 0;
    for item in items {
        let last = groups.last_mut().expect("one group");
        if !last.is_empty() && size + item.len() + 1 > budget {
            groups.push(Vec::new());
            size = 0;
        }
        size += item.len() + 1;
        groups.last_mut().expect("one group").push(item);
    }
    groups
}

/// `[item,item,...]`
fn json_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    out
}

/// Records of `topic` holding `items` as JSON arrays, each at most
/// `max_record` bytes (unless one item is larger): part `i` of `n` is
/// `head(i, n).0`, the array, then `head(i, n).1`.
fn in_parts(
    topic: &str,
    items: Vec<Vec<u8>>,
    max_record: usize,
    head: impl Fn(usize, usize) -> (String, &'static str),
) -> Vec<Message> {
    let groups = pack(items, max_record.saturating_sub(RECORD_OVERHEAD));
    let parts = groups.len();
    groups
        .iter()
        .enumerate()
        .map(|(i, group)| {
            let (open, close) = head(i + 1, parts);
            let mut body = open.into_bytes();
            body.extend_from_slice(&json_array(group));
            body.extend_from_slice(close.as_bytes());
            record(topic, body)
        })
        .collect()
}

/// The `%META%` records holding the whole of `table`, each at most
/// `max_record` bytes (unless one entry is larger).
pub fn snapshot<T: Serialize>(
    table: &str,
    entries: &BTreeMap<String, T>,
    max_record: usize,
) -> Vec<Message> {
    let items = entries
        .values()
        .map(|e| serde_json::to_vec(e).expect("metadata serializes"))
        .collect();
    let name = serde_json::to_string(table).expect("a name serializes");
    in_parts(META_TOPIC, items, max_record, |part, parts| {
        (
            format!("{{\"table\":{name},\"part\":{part},\"parts\":{parts},\"snapshot\":"),
            "}",
        )
    })
}

/// The `%PROGRESS%` records of `offsets_json` (the bytes of `offsets.json`),
/// each at most `max_record` bytes (unless one entry is larger).
pub fn progress(offsets_json: &[u8], retention_floor: u64, max_record: usize) -> Vec<Message> {
    let all: ProgressEntries = serde_json::from_slice(offsets_json).expect("offsets.json as saved");
    let items = all
        .entries
        .iter()
        .map(|e| serde_json::to_vec(e).expect("progress serializes"))
        .collect();
    in_parts(PROGRESS_TOPIC, items, max_record, |part, parts| {
        (
            format!(
                "{{\"retention_floor\":{retention_floor},\"part\":{part},\"parts\":{parts},\"offsets\":{{\"entries\":"
            ),
            "}}",
        )
    })
}

fn op<T: DeserializeOwned>(body: &[u8]) -> serde_json::Result<(TableOp<T>, Part)> {
    let tagged: Tagged<T> = serde_json::from_slice(body)?;
    Ok((tagged.op, tagged.part))
}

/// Decodes a `%META%` record; the error says what is wrong with it.
pub fn decode_meta(body: &[u8]) -> Result<MetaRecord, String> {
    let name: TableName = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    match name.table.as_str() {
        TOPICS => op(body).map(|(op, part)| MetaRecord::Topics(op, part)),
        GROUPS => op(body).map(|(op, part)| MetaRecord::Groups(op, part)),
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
    use crate::replication::AckPolicy;
    use crate::store::MessageType;

    fn topic(name: &str) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            queues: 4,
            message_type: MessageType::Delay,
            settings: TopicSettings {
                ack_policy: Some(AckPolicy::Master),
                ..TopicSettings::from_wire(1024, 60_000)
            },
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
            MetaRecord::Topics(TableOp::Put(topic("t")), Part::default())
        );
        let m = change("groups", br#"{"delete":"g"}"#);
        assert_eq!(&m.body[..], br#"{"table":"groups","delete":"g"}"#);
        assert_eq!(
            decode_meta(&m.body).unwrap(),
            MetaRecord::Groups(TableOp::Delete("g".into()), Part::default())
        );
    }

    #[test]
    fn a_topic_record_of_an_older_broker_has_no_ack_policy() {
        let old = br#"{"table":"topics","put":{"name":"t","queues":1,"message_type":"normal","retention_ms":5}}"#;
        let MetaRecord::Topics(TableOp::Put(t), _) = decode_meta(old).unwrap() else {
            panic!("a topic record");
        };
        assert_eq!(t.settings.ack_policy, None);
        assert_eq!(t.settings.retention_ms, Some(5));
    }

    #[test]
    fn snapshots_are_split_into_records_that_fit() {
        let entries: BTreeMap<String, TopicConfig> = (0..40)
            .map(|i| (format!("t{i:02}"), topic(&format!("t{i:02}"))))
            .collect();
        let one = snapshot("topics", &entries, 1 << 20);
        assert_eq!(one.len(), 1);
        assert_eq!(
            decode_meta(&one[0].body).unwrap(),
            MetaRecord::Topics(
                TableOp::Snapshot(entries.values().cloned().collect()),
                Part::default()
            )
        );
        let max = 2048;
        let parts = snapshot("topics", &entries, max);
        assert!(parts.len() > 2, "{} parts", parts.len());
        let mut back = Vec::new();
        for (i, m) in parts.iter().enumerate() {
            assert!(
                m.body.len() <= max - RECORD_OVERHEAD + 64,
                "{}",
                m.body.len()
            );
            let MetaRecord::Topics(TableOp::Snapshot(list), part) = decode_meta(&m.body).unwrap()
            else {
                panic!("a topics snapshot");
            };
            assert_eq!(
                part,
                Part {
                    part: i as u32 + 1,
                    parts: parts.len() as u32
                }
            );
            back.extend(list);
        }
        assert_eq!(back, entries.values().cloned().collect::<Vec<_>>());
        let empty: BTreeMap<String, TopicConfig> = BTreeMap::new();
        assert_eq!(
            decode_meta(&snapshot("topics", &empty, max)[0].body).unwrap(),
            MetaRecord::Topics(TableOp::Snapshot(Vec::new()), Part::default())
        );
    }

    #[test]
    fn progress_is_split_into_records_that_fit() {
        let entries: Vec<serde_json::Value> = (0..100)
            .map(|q| serde_json::json!({"group": "g", "topic": "t", "member": "", "queue_id": q, "committed": q * 7}))
            .collect();
        let json = serde_json::to_vec_pretty(&serde_json::json!({"entries": entries})).unwrap();
        let records = progress(&json, 4096, 2048);
        assert!(records.len() > 2, "{} parts", records.len());
        let mut back = Vec::new();
        for (i, m) in records.iter().enumerate() {
            assert_eq!(m.topic, PROGRESS_TOPIC);
            let p = decode_progress(&m.body).unwrap();
            assert_eq!(p.retention_floor, 4096);
            assert_eq!(
                p.part,
                Part {
                    part: i as u32 + 1,
                    parts: records.len() as u32
                }
            );
            back.extend(p.offsets.entries);
        }
        assert_eq!(back, entries);
    }

    #[test]
    fn damage_is_named() {
        let unknown = decode_meta(br#"{"table":"x","delete":"a"}"#).unwrap_err();
        assert!(unknown.contains("unknown table"), "{unknown}");
        assert!(decode_meta(b"{").is_err());
        assert!(decode_progress(br#"{"offsets": {"entries": []}}"#).is_err());
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
            MetaRecord::Groups(TableOp::Put(group), Part::default())
        );
    }
}
