//! Limits on what clients control: names, identifiers and strings, counts, and
//! durations. A request over a limit is refused whole with INVALID_ARGUMENT
//! naming the field (docs/errors.md lists the limits), and the refusal shows
//! the input only briefly (see [`brief`]).

use std::time::Duration;

use super::SendMessage;
use super::error::{BrokerError, Result, brief};
use crate::config::MessagingConfig;
use crate::store::validate_topic_name;

/// Longest topic name: the store's rule (`store::record::MAX_TOPIC_LEN`, which
/// the store does not export), checked here first so a long name is not echoed.
pub const MAX_TOPIC_LEN: usize = dduomq_proto::namespace::MAX_STORED_TOPIC_LEN;

/// Prefix of a group's dead-letter topic.
pub const DEAD_LETTER_PREFIX: &str = "%DLQ%";
/// Longest group name: its dead-letter topic must fit the topic-name rule.
pub const MAX_GROUP_NAME_LEN: usize = MAX_TOPIC_LEN - DEAD_LETTER_PREFIX.len();
/// Longest client id (group members, broadcast progress, transaction checkers).
pub const MAX_CLIENT_ID_LEN: usize = 128;
/// Longest idempotent-producer id.
pub const MAX_PRODUCER_ID_LEN: usize = 128;
/// Longest gray-release lane.
pub const MAX_LANE_LEN: usize = 64;
/// Longest message id a RocketMQ client may give a message.
pub const MAX_CLIENT_MESSAGE_ID_LEN: usize = 128;
/// Longest sharding key.
pub const MAX_SHARDING_KEY_LEN: usize = 128;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 128;
/// Longest message key, and most keys on one message.
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_KEYS: usize = 32;
/// Most user properties on one message, and their names and values together
/// (RocketMQ's limits: 128 properties, 16 KiB).
pub const MAX_PROPERTIES: usize = 128;
pub const MAX_PROPERTIES_BYTES: usize = 16 << 10;
/// Most topics one heartbeat names.
pub const MAX_HEARTBEAT_TOPICS: usize = 64;
/// Most steps of a group's retry backoff, and the longest step.
pub const MAX_RETRY_STEPS: usize = 64;
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// A length refusal that shows the input briefly.
fn too_long(what: &'static str, value: &str, max: usize) -> BrokerError {
    BrokerError::invalid(
        what,
        format!(
            "{} is {} bytes; at most {max} are allowed",
            brief(value),
            value.len()
        ),
    )
}

/// A topic name: the store's rule, with the length checked first so a long
/// name is never echoed whole.
pub fn check_topic_name(name: &str) -> Result<()> {
    if name.len() > MAX_TOPIC_LEN {
        return Err(too_long("topic name", name, MAX_TOPIC_LEN));
    }
    Ok(validate_topic_name(name)?)
}

/// A group name (consumer or producer group): the topic-name rule, at most
/// [`MAX_GROUP_NAME_LEN`] characters.
pub fn check_group_name(what: &'static str, name: &str) -> Result<()> {
    if name.len() > MAX_GROUP_NAME_LEN {
        return Err(too_long(what, name, MAX_GROUP_NAME_LEN));
    }
    validate_topic_name(name).map_err(|e| match e {
        crate::store::StoreError::InvalidArgument { reason, .. } => {
            BrokerError::invalid(what, reason)
        }
        other => other.into(),
    })
}

/// A client-chosen identifier (client id, producer id, lane): at most `max`
/// bytes and no control characters; empty only when `optional`.
pub fn check_id(what: &'static str, value: &str, max: usize, optional: bool) -> Result<()> {
    if value.is_empty() && !optional {
        return Err(BrokerError::invalid(what, "must not be empty"));
    }
    check_len(what, value, max)?;
    if value.chars().any(char::is_control) {
        return Err(BrokerError::invalid(
            what,
            format!("{} contains a control character", brief(value)),
        ));
    }
    Ok(())
}

/// Free text (tags, keys, properties): at most `max` bytes.
pub fn check_len(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(too_long(what, value, max));
    }
    Ok(())
}

/// At most `max` items of a list.
pub fn check_count(what: &'static str, count: usize, max: usize) -> Result<()> {
    if count > max {
        return Err(BrokerError::invalid(
            what,
            format!("{count} of them; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// The client-chosen strings of a message to send.
pub fn check_send(m: &SendMessage) -> Result<()> {
    check_len("tag", &m.tag, MAX_TAG_LEN)?;
    check_count("keys", m.keys.len(), MAX_KEYS)?;
    for k in &m.keys {
        check_len("key", k, MAX_KEY_LEN)?;
    }
    check_properties(&m.properties)?;
    check_len("sharding_key", &m.sharding_key, MAX_SHARDING_KEY_LEN)?;
    check_id("lane", &m.lane, MAX_LANE_LEN, true)?;
    check_id("producer_id", &m.producer_id, MAX_PRODUCER_ID_LEN, true)?;
    if let Some(group) = &m.transaction
        && !group.is_empty()
    {
        check_group_name("producer_group", group)?;
    }
    Ok(())
}

/// A message's user properties.
fn check_properties(properties: &[(String, String)]) -> Result<()> {
    check_count("properties", properties.len(), MAX_PROPERTIES)?;
    let bytes: usize = properties.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_PROPERTIES_BYTES {
        return Err(BrokerError::invalid(
            "properties",
            format!(
                "{bytes} bytes of names and values; at most {MAX_PROPERTIES_BYTES} are allowed"
            ),
        ));
    }
    if properties.iter().any(|(k, _)| k.is_empty()) {
        return Err(BrokerError::invalid("property", "names must not be empty"));
    }
    Ok(())
}

/// A lease length a consumer asks for: at most `max` (the broker's
/// `max_invisible_duration`; RocketMQ caps invisible time at 12 hours too).
pub fn check_invisible(ms: u64, max: Duration) -> Result<Duration> {
    let asked = Duration::from_millis(ms);
    if asked > max {
        return Err(BrokerError::invalid(
            "invisible_duration_ms",
            format!(
                "{ms} ms is longer than the broker's max_invisible_duration of {} ms",
                max.as_millis()
            ),
        ));
    }
    Ok(asked)
}

/// The lease length a Receive asks for: the default for 0, refused above
/// `max_invisible_duration`.
pub fn receive_invisible(ms: u32, config: &MessagingConfig) -> Result<Duration> {
    match ms {
        0 => Ok(config.default_invisible_duration),
        ms => check_invisible(ms.into(), config.max_invisible_duration),
    }
}

/// A group's retry backoff schedule: at most [`MAX_RETRY_STEPS`] steps (none:
/// one second), each from 1 ms to [`MAX_RETRY_BACKOFF`].
pub fn check_retry_backoff(steps_ms: &[u64]) -> Result<()> {
    if steps_ms.len() > MAX_RETRY_STEPS {
        return Err(BrokerError::invalid(
            "retry_backoff_ms",
            format!(
                "{} steps; at most {MAX_RETRY_STEPS} are allowed",
                steps_ms.len()
            ),
        ));
    }
    let max = MAX_RETRY_BACKOFF.as_millis() as u64;
    if let Some(bad) = steps_ms.iter().find(|ms| !(1..=max).contains(*ms)) {
        return Err(BrokerError::invalid(
            "retry_backoff_ms",
            format!("a step of {bad} ms; each step is 1 to {max} ms"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[test]
    fn refusals_name_the_field_and_show_input_briefly() {
        let huge = "g".repeat(1 << 20);
        let err = check_group_name("producer_group", &huge).unwrap_err();
        assert_eq!(err.code(), Reason::InvalidArgument);
        let text = err.to_string();
        assert!(text.starts_with("invalid producer_group: \"ggg"), "{text}");
        assert!(text.len() < 200, "{text}");
        check_group_name("group", &"g".repeat(MAX_GROUP_NAME_LEN)).unwrap();
        assert!(check_group_name("group", "a b").is_err());
        assert!(
            check_topic_name(&"t".repeat(10_000))
                .unwrap_err()
                .to_string()
                .len()
                < 200
        );
        check_id("client_id", "host-1-0a0b", MAX_CLIENT_ID_LEN, false).unwrap();
        assert!(check_id("client_id", "", MAX_CLIENT_ID_LEN, false).is_err());
        assert!(check_id("client_id", "a\nb", MAX_CLIENT_ID_LEN, false).is_err());
        check_id("lane", "", MAX_LANE_LEN, true).unwrap();
    }

    #[test]
    fn durations_are_capped() {
        let max = Duration::from_secs(12 * 3600);
        assert_eq!(check_invisible(1000, max).unwrap(), Duration::from_secs(1));
        assert!(check_invisible(u32::MAX as u64, max).is_err());
        check_retry_backoff(&[1000, 5000]).unwrap();
        for bad in [&[0][..], &[i64::MAX as u64], &[1; MAX_RETRY_STEPS + 1]] {
            assert_eq!(
                check_retry_backoff(bad).unwrap_err().code(),
                Reason::InvalidArgument
            );
        }
    }
}
