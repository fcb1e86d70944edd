//! Reserved message properties: every name the broker sets on a record, all
//! under the reserved prefix `__` that producers may not use, so no user
//! property can collide with one.
//!
//! Two names were outside the prefix before (`SHARDING_KEY`, `DLQ_*`); records
//! stored then carry the old names. [`Reserved::get`] reads both, filters'
//! [`lookup`] finds either name on old and new records, and
//! [`for_consumer`] shows the old dead-letter names under the new ones.

use std::str::FromStr;

/// Names starting with this are the broker's own.
pub const RESERVED_PREFIX: &str = "__";

/// A reserved property: its name, and the name records of earlier releases
/// carry it under, if it was renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    pub name: &'static str,
    pub legacy: Option<&'static str>,
}

impl Reserved {
    const fn new(name: &'static str) -> Reserved {
        Reserved { name, legacy: None }
    }

    const fn renamed(name: &'static str, legacy: &'static str) -> Reserved {
        Reserved {
            name,
            legacy: Some(legacy),
        }
    }

    /// The value in `properties`, under the current name or else the legacy one.
    pub fn get(self, properties: &[(String, String)]) -> Option<&str> {
        value(properties, self.name).or_else(|| value(properties, self.legacy?))
    }

    /// The value parsed; `None` when absent or malformed.
    pub fn parse<T: FromStr>(self, properties: &[(String, String)]) -> Option<T> {
        self.get(properties)?.parse().ok()
    }

    /// The property with `value`, under the current name.
    pub fn with(self, value: impl ToString) -> (String, String) {
        (self.name.to_string(), value.to_string())
    }

    /// Whether `name` is this property under either name.
    pub fn is(self, name: &str) -> bool {
        name == self.name || Some(name) == self.legacy
    }
}

/// The message's sharding key (shown to consumers).
pub const SHARDING_KEY: Reserved = Reserved::renamed("__SHARDING_KEY", "SHARDING_KEY");
/// The message's gray-release lane.
pub const LANE: Reserved = Reserved::new("__LANE");
/// Idempotent producers: the producer's id.
pub const PRODUCER_ID: Reserved = Reserved::new("__PRODUCER_ID");
/// Idempotent producers: the message's sequence number.
pub const SEQUENCE: Reserved = Reserved::new("__SEQUENCE");
/// Staged records: the topic and queue they are released to.
pub const REAL_TOPIC: Reserved = Reserved::new("__REAL_TOPIC");
pub const REAL_QUEUE: Reserved = Reserved::new("__REAL_QUEUE");
/// Delayed records: when they are due (ms).
pub const DELIVER_AT: Reserved = Reserved::new("__DELIVER_AT");
/// Half (transactional) records: the producer group whose checkers resolve them.
pub const PRODUCER_GROUP: Reserved = Reserved::new("__PRODUCER_GROUP");
/// Released copies and markers: the message id of the staged record.
pub const ORIGIN_ID: Reserved = Reserved::new("__ORIGIN_ID");
/// The id a RocketMQ client gave the message.
pub const CLIENT_MESSAGE_ID: Reserved = Reserved::new("__CLIENT_MESSAGE_ID");
/// Markers: how the staged record was resolved.
pub const RESOLUTION: Reserved = Reserved::new("__RESOLUTION");
/// Dead-lettered copies: where the message came from and how often it was
/// delivered (shown to consumers).
pub const DLQ_ORIGIN_TOPIC: Reserved = Reserved::renamed("__DLQ_ORIGIN_TOPIC", "DLQ_ORIGIN_TOPIC");
pub const DLQ_ORIGIN_QUEUE: Reserved = Reserved::renamed("__DLQ_ORIGIN_QUEUE", "DLQ_ORIGIN_QUEUE");
pub const DLQ_ORIGIN_OFFSET: Reserved =
    Reserved::renamed("__DLQ_ORIGIN_OFFSET", "DLQ_ORIGIN_OFFSET");
pub const DLQ_ORIGIN_MESSAGE_ID: Reserved =
    Reserved::renamed("__DLQ_ORIGIN_MESSAGE_ID", "DLQ_ORIGIN_MESSAGE_ID");
pub const DLQ_DELIVERY_ATTEMPTS: Reserved =
    Reserved::renamed("__DLQ_DELIVERY_ATTEMPTS", "DLQ_DELIVERY_ATTEMPTS");

/// The dead-letter properties, which old records carry under their legacy names.
const DEAD_LETTER: [Reserved; 5] = [
    DLQ_ORIGIN_TOPIC,
    DLQ_ORIGIN_QUEUE,
    DLQ_ORIGIN_OFFSET,
    DLQ_ORIGIN_MESSAGE_ID,
    DLQ_DELIVERY_ATTEMPTS,
];

/// The properties renamed since earlier releases.
const RENAMED: [Reserved; 6] = [
    SHARDING_KEY,
    DLQ_ORIGIN_TOPIC,
    DLQ_ORIGIN_QUEUE,
    DLQ_ORIGIN_OFFSET,
    DLQ_ORIGIN_MESSAGE_ID,
    DLQ_DELIVERY_ATTEMPTS,
];

/// Reserved properties consumers see: they describe the message to its
/// handler; the others are the broker's bookkeeping.
const SHOWN: [Reserved; 6] = [
    SHARDING_KEY,
    DLQ_ORIGIN_TOPIC,
    DLQ_ORIGIN_QUEUE,
    DLQ_ORIGIN_OFFSET,
    DLQ_ORIGIN_MESSAGE_ID,
    DLQ_DELIVERY_ATTEMPTS,
];

/// Whether producers may not set `name`.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// The value of the property `name`, if present.
fn value<'a>(properties: &'a [(String, String)], name: &str) -> Option<&'a str> {
    properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The value of the property `name` as a filter sees it: a renamed reserved
/// property under either of its names is found on records stored before and
/// after the rename, so a group's filter keeps matching across an upgrade.
pub fn lookup<'a>(properties: &'a [(String, String)], name: &str) -> Option<&'a str> {
    value(properties, name).or_else(|| RENAMED.iter().find(|p| p.is(name))?.get(properties))
}

/// An idempotent producer's identity of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerSequence {
    pub producer_id: String,
    pub sequence: u64,
}

/// The idempotent producer id and sequence a stored record carries, if any.
pub fn producer_sequence(properties: &[(String, String)]) -> Option<ProducerSequence> {
    Some(ProducerSequence {
        producer_id: PRODUCER_ID.get(properties)?.to_string(),
        sequence: SEQUENCE.parse(properties)?,
    })
}

/// Where a staged record belongs: its real topic and queue.
pub fn staged_target(properties: &[(String, String)]) -> Option<(&str, u32)> {
    Some((REAL_TOPIC.get(properties)?, REAL_QUEUE.parse(properties)?))
}

/// The delivery time of a delayed record (0: none).
pub fn deliver_at(properties: &[(String, String)]) -> i64 {
    DELIVER_AT.parse(properties).unwrap_or_default()
}

/// A record's gray-release lane ("" = the base lane).
pub fn lane(properties: &[(String, String)]) -> &str {
    LANE.get(properties).unwrap_or_default()
}

/// The properties a consumer sees of a record of `topic`: the user's and the
/// [`SHOWN`] reserved ones. A dead-letter record stored before the rename
/// shows its origin under the current names (only the broker writes to
/// dead-letter topics, so there the legacy names can only be its own).
pub fn for_consumer(topic: &str, properties: Vec<(String, String)>) -> Vec<(String, String)> {
    let dead_letter = topic.starts_with(super::limits::DEAD_LETTER_PREFIX);
    let legacy_dead_letter = dead_letter
        && DEAD_LETTER
            .iter()
            .all(|p| value(&properties, p.name).is_none());
    properties
        .into_iter()
        .filter_map(|(k, v)| {
            if legacy_dead_letter
                && let Some(p) = DEAD_LETTER.iter().find(|p| p.legacy == Some(k.as_str()))
            {
                return Some((p.name.to_string(), v));
            }
            (!is_reserved(&k) || SHOWN.iter().any(|p| p.name == k)).then_some((k, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_name_is_under_the_reserved_prefix() {
        for p in [
            SHARDING_KEY,
            LANE,
            PRODUCER_ID,
            SEQUENCE,
            REAL_TOPIC,
            REAL_QUEUE,
            DELIVER_AT,
            PRODUCER_GROUP,
            ORIGIN_ID,
            RESOLUTION,
        ]
        .iter()
        .chain(&DEAD_LETTER)
        {
            assert!(is_reserved(p.name), "{}", p.name);
        }
    }

    #[test]
    fn legacy_names_are_read_when_the_current_one_is_absent() {
        let old = props(&[("DLQ_ORIGIN_TOPIC", "payments")]);
        assert_eq!(DLQ_ORIGIN_TOPIC.get(&old), Some("payments"));
        let both = props(&[("DLQ_ORIGIN_TOPIC", "user's"), ("__DLQ_ORIGIN_TOPIC", "t")]);
        assert_eq!(DLQ_ORIGIN_TOPIC.get(&both), Some("t"));
    }

    #[test]
    fn lookups_find_a_renamed_property_under_either_name() {
        let old = props(&[("SHARDING_KEY", "k"), ("DLQ_DELIVERY_ATTEMPTS", "3")]);
        let new = props(&[("__SHARDING_KEY", "k"), ("__DLQ_DELIVERY_ATTEMPTS", "3")]);
        for record in [&old, &new] {
            assert_eq!(lookup(record, "SHARDING_KEY"), Some("k"));
            assert_eq!(lookup(record, "__SHARDING_KEY"), Some("k"));
            assert_eq!(lookup(record, "DLQ_DELIVERY_ATTEMPTS"), Some("3"));
            assert_eq!(lookup(record, "__DLQ_DELIVERY_ATTEMPTS"), Some("3"));
        }
        let user = props(&[("region", "eu")]);
        assert_eq!(lookup(&user, "region"), Some("eu"));
        assert_eq!(lookup(&user, "SHARDING_KEY"), None);
        assert_eq!(lookup(&user, "__LANE"), None);
    }

    #[test]
    fn consumers_see_user_and_descriptive_properties_only() {
        let stored = props(&[
            ("region", "eu"),
            ("__SHARDING_KEY", "k"),
            ("__LANE", "gray"),
            ("__PRODUCER_ID", "p"),
            ("__DLQ_ORIGIN_TOPIC", "t"),
        ]);
        assert_eq!(
            for_consumer("orders", stored),
            props(&[
                ("region", "eu"),
                ("__SHARDING_KEY", "k"),
                ("__DLQ_ORIGIN_TOPIC", "t")
            ])
        );
    }

    #[test]
    fn an_old_dead_letter_record_shows_its_origin_under_the_current_names() {
        let old = props(&[
            ("region", "eu"),
            ("SHARDING_KEY", "k"),
            ("DLQ_ORIGIN_TOPIC", "payments"),
            ("DLQ_ORIGIN_QUEUE", "2"),
            ("DLQ_ORIGIN_OFFSET", "7"),
            ("DLQ_ORIGIN_MESSAGE_ID", "id"),
            ("DLQ_DELIVERY_ATTEMPTS", "3"),
        ]);
        assert_eq!(
            for_consumer("%DLQ%billing", old.clone()),
            props(&[
                ("region", "eu"),
                ("SHARDING_KEY", "k"),
                ("__DLQ_ORIGIN_TOPIC", "payments"),
                ("__DLQ_ORIGIN_QUEUE", "2"),
                ("__DLQ_ORIGIN_OFFSET", "7"),
                ("__DLQ_ORIGIN_MESSAGE_ID", "id"),
                ("__DLQ_DELIVERY_ATTEMPTS", "3"),
            ])
        );
        // Outside dead-letter topics the old names are the user's.
        assert_eq!(for_consumer("orders", old.clone()), old);
    }
}
