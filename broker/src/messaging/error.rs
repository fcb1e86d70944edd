//! Messaging errors, each with a stable reason code (documented in docs/errors.md)
//! that the gRPC layer sends in a `google.rpc.ErrorInfo`.

use std::fmt;

use dduomq_proto::Reason;

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
#[non_exhaustive]
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
    #[error(
        "message is {size} bytes; topic {} takes at most {max} (its max_message_bytes)",
        brief(.topic)
    )]
    TopicMessageTooLarge {
        topic: String,
        size: usize,
        max: u32,
    },
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
    #[error(
        "group {} {held} on topic {}; its consumers must subscribe with that filter",
        brief(.group), brief(.topic)
    )]
    SubscriptionMismatch {
        group: String,
        topic: String,
        held: super::subscriptions::HeldSubscription,
    },
    #[error(transparent)]
    InvalidFilter(#[from] crate::filter::FilterError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replication(#[from] crate::replication::ReplicationError),
    /// A write's term was taken under another replication setup than the
    /// broker's now (the broker's fault: replication is attached at startup).
    #[error("a write's term does not match this broker's replication; nothing was written")]
    WriteTermMismatch,
    /// A request's task failed (it panicked or was cancelled at shutdown): the
    /// broker's fault, not the request's.
    #[error("a request's task failed: {0}")]
    TaskFailed(#[from] tokio::task::JoinError),
}

impl BrokerError {
    /// The stable reason code.
    pub fn code(&self) -> Reason {
        match self {
            BrokerError::TopicNotFound(_) => Reason::TopicNotFound,
            BrokerError::GroupNotFound(_) => Reason::GroupNotFound,
            BrokerError::TopicConflict { .. } => Reason::TopicConflict,
            BrokerError::InvalidArgument { .. } => Reason::InvalidArgument,
            BrokerError::QueueNotFound { .. } => Reason::QueueNotFound,
            BrokerError::InvalidReceiptHandle(_) => Reason::InvalidReceiptHandle,
            BrokerError::StaleGeneration { .. } => Reason::StaleGeneration,
            BrokerError::QueueNotAssigned { .. } => Reason::QueueNotAssigned,
            BrokerError::InvalidFilter(_) => Reason::InvalidFilter,
            BrokerError::SubscriptionMismatch { .. } => Reason::SubscriptionMismatch,
            BrokerError::MessageTypeMismatch { .. } => Reason::MessageTypeMismatch,
            BrokerError::TopicMessageTooLarge { .. } => Reason::MessageTooLarge,
            BrokerError::DuplicateInFlight { .. } => Reason::DuplicateInFlight,
            BrokerError::Draining => Reason::BrokerDraining,
            BrokerError::DelayTooLong { .. } => Reason::DelayTooLong,
            BrokerError::TransactionNotFound(_) => Reason::TransactionNotFound,
            BrokerError::TransactionResolved { .. } => Reason::TransactionResolved,
            BrokerError::TransactionInProgress(_) => Reason::TransactionInProgress,
            BrokerError::LimitReached { limit, .. } => limit.code(),
            BrokerError::ReservedTopic(_) => Reason::ReservedTopic,
            BrokerError::Auth(e) => e.code(),
            BrokerError::Store(e) => e.code(),
            BrokerError::Replication(e) => e.code(),
            BrokerError::TaskFailed(_) | BrokerError::WriteTermMismatch => Reason::Internal,
        }
    }

    /// The gRPC status code a refusal with this error carries.
    pub fn grpc_code(&self) -> tonic::Code {
        self.code().grpc_code()
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
    pub fn code(self) -> Reason {
        match self {
            Limit::Topics => Reason::TooManyTopics,
            Limit::Groups => Reason::TooManyGroups,
            Limit::StreamsPerGroup | Limit::StreamsPerClient | Limit::Streams => {
                Reason::TooManyStreams
            }
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

    #[tokio::test]
    async fn a_failed_task_is_internal_not_io() {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let failed = BrokerError::from(task.await.unwrap_err());
        assert_eq!(failed.code(), Reason::Internal);
        assert_eq!(failed.grpc_code(), tonic::Code::Internal);
    }
}
