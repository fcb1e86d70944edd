//! Messaging errors, each with a stable reason code (documented in docs/errors.md)
//! that the gRPC layer sends in a `google.rpc.ErrorInfo`.

use std::fmt;

use crate::store::StoreError;

/// Characters of client input an error message shows at most.
const SHOWN_CHARS: usize = 64;

/// Client input as an error message shows it: quoted, and cut after
/// [`SHOWN_CHARS`] characters with its full length, so a refusal of a huge
/// name never echoes it (gRPC clients reject oversized status headers).
#[derive(Debug, Clone, Copy)]
pub struct Brief<'a>(&'a str);

/// See [`Brief`].
pub fn brief(input: &str) -> Brief<'_> {
    Brief(input)
}

impl fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Everything a messaging request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic {} does not exist", brief(.0))]
    TopicNotFound(String),
    #[error("consumer group {} does not exist", brief(.0))]
    GroupNotFound(String),
    #[error("topic {} already exists with {queues} queues of type {message_type}; {reason}", brief(.name))]
    TopicConflict {
        name: String,
        queues: u32,
        message_type: String,
        reason: String,
    },
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    #[error("topic {} has no queue {queue_id} (it has {queues})", brief(.topic))]
    QueueNotFound {
        topic: String,
        queue_id: u32,
        queues: u32,
    },
    #[error("invalid receipt handle: {0}")]
    InvalidReceiptHandle(String),
    #[error("generation {got} is stale; the group {} is at generation {current}", brief(.group))]
    StaleGeneration {
        group: String,
        got: u64,
        current: u64,
    },
    #[error(
        "queue {}/{queue_id} is not assigned to member {} of group {}",
        brief(.topic), brief(.client_id), brief(.group)
    )]
    QueueNotAssigned {
        group: String,
        topic: String,
        queue_id: u32,
        client_id: String,
    },
    #[error(
        "sequence {sequence} of producer {} is being stored by another request; retry",
        brief(.producer)
    )]
    DuplicateInFlight { producer: String, sequence: u64 },
    #[error("this broker is draining and takes no new messages; send to another broker")]
    Draining,
    #[error("topic {} refuses this message: {reason}", brief(.topic))]
    MessageTypeMismatch { topic: String, reason: String },
    #[error(
        "delivery time is {requested_ms} ms ahead; the longest delay this broker accepts is {max_ms} ms"
    )]
    DelayTooLong { requested_ms: i64, max_ms: i64 },
    #[error("transaction {} does not exist on this broker", brief(.0))]
    TransactionNotFound(String),
    #[error("transaction {} is being resolved by another request; retry", brief(.0))]
    TransactionInProgress(String),
    #[error("transaction {} was already resolved: {resolution}", brief(.id))]
    TransactionResolved { id: String, resolution: String },
    #[error("{limit}: this broker allows at most {max} (broker setting {})", limit.setting())]
    LimitReached { limit: Limit, max: usize },
    #[error(
        "topic {} is reserved: only the broker writes to topics starting with '%' (dead letters, delayed and transactional messages); consumers may read dead-letter topics",
        brief(.0)
    )]
    ReservedTopic(String),
    #[error(transparent)]
    InvalidFilter(#[from] crate::filter::FilterError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BrokerError {
    /// The stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::TopicNotFound(_) => "TOPIC_NOT_FOUND",
            BrokerError::GroupNotFound(_) => "GROUP_NOT_FOUND",
            BrokerError::TopicConflict { .. } => "TOPIC_CONFLICT",
            BrokerError::InvalidArgument { .. } => "INVALID_ARGUMENT",
            BrokerError::QueueNotFound { .. } => "QUEUE_NOT_FOUND",
            BrokerError::InvalidReceiptHandle(_) => "INVALID_RECEIPT_HANDLE",
            BrokerError::StaleGeneration { .. } => "STALE_GENERATION",
            BrokerError::QueueNotAssigned { .. } => "QUEUE_NOT_ASSIGNED",
            BrokerError::InvalidFilter(_) => "INVALID_FILTER",
            BrokerError::MessageTypeMismatch { .. } => "MESSAGE_TYPE_MISMATCH",
            BrokerError::DuplicateInFlight { .. } => "DUPLICATE_IN_FLIGHT",
            BrokerError::Draining => "BROKER_DRAINING",
            BrokerError::DelayTooLong { .. } => "DELAY_TOO_LONG",
            BrokerError::TransactionNotFound(_) => "TRANSACTION_NOT_FOUND",
            BrokerError::TransactionResolved { .. } => "TRANSACTION_RESOLVED",
            BrokerError::TransactionInProgress(_) => "TRANSACTION_IN_PROGRESS",
            BrokerError::LimitReached { limit, .. } => limit.code(),
            BrokerError::ReservedTopic(_) => "RESERVED_TOPIC",
            BrokerError::Store(e) => e.code(),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        BrokerError::InvalidArgument {
            what,
            reason: reason.into(),
        }
    }
}

/// A count a broker bounds, so no client can exhaust its memory or files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Topics on the broker, dead-letter topics included.
    Topics,
    /// Consumer groups on the broker.
    Groups,
    /// Open Receive streams of one consumer group.
    StreamsPerGroup,
    /// Open Receive streams of one client id.
    StreamsPerClient,
    /// Open Receive streams on the broker (group names and client ids are
    /// chosen by clients, so they alone bound nothing).
    Streams,
}

impl Limit {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Limit::Topics => "TOO_MANY_TOPICS",
            Limit::Groups => "TOO_MANY_GROUPS",
            Limit::StreamsPerGroup | Limit::StreamsPerClient | Limit::Streams => "TOO_MANY_STREAMS",
        }
    }

    /// The `[broker]` configuration key that sets it.
    pub fn setting(self) -> &'static str {
        match self {
            Limit::Topics => "max_topics",
            Limit::Groups => "max_groups",
            Limit::StreamsPerGroup => "max_receive_streams_per_group",
            Limit::StreamsPerClient => "max_receive_streams_per_client",
            Limit::Streams => "max_receive_streams",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::Topics => "too many topics",
            Limit::Groups => "too many consumer groups",
            Limit::StreamsPerGroup => "too many open Receive streams for this group",
            Limit::StreamsPerClient => "too many open Receive streams for this client id",
            Limit::Streams => "too many open Receive streams on this broker",
        })
    }
}

/// Result alias for messaging operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_shown_briefly() {
        assert_eq!(brief("short").to_string(), "\"short\"");
        let long = "é".repeat(10_000);
        let shown = BrokerError::TopicNotFound(long).to_string();
        assert_eq!(
            shown,
            format!("topic {:?}… (20000 bytes) does not exist", "é".repeat(64))
        );
    }
}
