//! Topic deletion travels in the commit log: [`Store::delete_topic`](super::Store::delete_topic)
//! appends a marker record (topic [`DELETION_TOPIC`], queue 0, body = the
//! deleted topic's name) through the single writer, and whoever dispatches
//! that record deletes the topic at the marker's position: the master's writer
//! when it appends it, a replica's when it stores it from its master's log,
//! and recovery when it replays the log past the checkpoint. So a deletion is
//! ordered with the data on every member of a group: records of the topic
//! before the marker belong to the deleted topic (its tombstone is the
//! marker's position), records after it to a topic created again, whose
//! queues start at 0. A log truncation that cuts a marker undoes its
//! deletion (undelete.rs).

use super::error::{Result, StoreError};
use super::queues::QueueTable;
use super::record::{Message, validate_topic_name};

/// The reserved topic of deletion markers (internal, like every `%` topic).
pub const DELETION_TOPIC: &str = "%DELETED%";

/// The marker deleting `topic`.
pub(crate) fn marker(topic: &str) -> Result<Message> {
    validate_topic_name(topic)?;
    if topic == DELETION_TOPIC {
        return Err(reserved("topic name"));
    }
    Ok(Message {
        topic: DELETION_TOPIC.to_string(),
        body: bytes::Bytes::copy_from_slice(topic.as_bytes()),
        ..Message::default()
    })
}

/// What a record of `topic` with `body` deletes: `None` for a record of
/// another topic; an error for a marker that names no deletable topic.
pub(crate) fn deleted_topic<'a>(topic: &str, body: &'a [u8]) -> Result<Option<&'a str>> {
    if topic != DELETION_TOPIC {
        return Ok(None);
    }
    let name = std::str::from_utf8(body).map_err(|_| StoreError::InvalidArgument {
        what: "deletion marker",
        reason: "its body is not a topic name".into(),
    })?;
    validate_topic_name(name)?;
    if name == DELETION_TOPIC {
        return Err(reserved("deletion marker"));
    }
    Ok(Some(name))
}

/// Deletes `topic` as of the marker at `position`, unless a deletion at or
/// after it is already recorded (recovery replaying a marker whose deletion
/// was done before the crash).
pub(crate) fn apply(queues: &QueueTable, topic: &str, position: u64) -> Result<()> {
    if queues.is_deleted(topic, position) {
        return Ok(());
    }
    queues.remove_topic(topic, position)
}

/// Refuses a producer's message to the marker topic: only deletions write it.
pub(crate) fn refuse_reserved(message: &Message) -> Result<()> {
    if message.topic == DELETION_TOPIC {
        return Err(reserved("topic name"));
    }
    Ok(())
}

fn reserved(what: &'static str) -> StoreError {
    StoreError::InvalidArgument {
        what,
        reason: format!("{DELETION_TOPIC} is reserved for the store's deletion markers"),
    }
}
