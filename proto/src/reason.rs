//! The stable reason codes of broker refusals (docs/errors.md), shared by the
//! broker, which sends them in a `google.rpc.ErrorInfo`, and the SDK, CLI and
//! operator, which match on them: one list, so no side compares a misspelt
//! string.

use std::fmt;

use tonic::Code;

/// Declares [`Reason`] from one table (variant, code string, gRPC status), so
/// the code strings, the status codes and [`Reason::ALL`] cannot drift apart.
macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal => $grpc:ident, )*) => {
        /// Why the broker refused a request. Newer brokers may send codes this
        /// build does not know; [`Reason::from_code`] returns `None` for them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, in the order of docs/errors.md.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];

            /// The stable code string, e.g. `TOPIC_NOT_FOUND`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }

            /// The gRPC status code a refusal with this reason carries.
            pub fn grpc_code(self) -> Code {
                match self {
                    $(Reason::$variant => Code::$grpc,)*
                }
            }

            /// The reason with this code string; `None` for a code this build
            /// does not know (one from a newer broker).
            pub fn from_code(code: &str) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// The topic does not exist (and auto-creation is off).
    TopicNotFound = "TOPIC_NOT_FOUND" => NotFound,
    /// The consumer group does not exist (and auto-creation is off).
    GroupNotFound = "GROUP_NOT_FOUND" => NotFound,
    /// A queue id beyond the topic's queue count.
    QueueNotFound = "QUEUE_NOT_FOUND" => NotFound,
    /// The topic exists with another type, or with more queues.
    TopicConflict = "TOPIC_CONFLICT" => AlreadyExists,
    /// A receipt handle that is malformed, forged, already acked or expired.
    InvalidReceiptHandle = "INVALID_RECEIPT_HANDLE" => InvalidArgument,
    /// A pull commit from a generation before the latest rebalance or reset.
    StaleGeneration = "STALE_GENERATION" => FailedPrecondition,
    /// A pull commit for a queue the member does not hold.
    QueueNotAssigned = "QUEUE_NOT_ASSIGNED" => FailedPrecondition,
    /// The message does not fit the topic's type.
    MessageTypeMismatch = "MESSAGE_TYPE_MISMATCH" => InvalidArgument,
    /// A delivery time further ahead than the broker's `max_delay`.
    DelayTooLong = "DELAY_TOO_LONG" => InvalidArgument,
    /// The transaction id names no half message on this broker.
    TransactionNotFound = "TRANSACTION_NOT_FOUND" => NotFound,
    /// Another request is storing this transaction's outcome; retry.
    TransactionInProgress = "TRANSACTION_IN_PROGRESS" => Unavailable,
    /// The transaction was already resolved the other way.
    TransactionResolved = "TRANSACTION_RESOLVED" => FailedPrecondition,
    /// The broker is draining and takes no new messages.
    BrokerDraining = "BROKER_DRAINING" => Unavailable,
    /// An idempotent producer's retry arrived while the first attempt is stored.
    DuplicateInFlight = "DUPLICATE_IN_FLIGHT" => Unavailable,
    /// A write to a member of a replicated group that is not its master (a
    /// replica, one without a master yet, or a master whose lease lapsed).
    NotMaster = "NOT_MASTER" => Unavailable,
    /// A write to a member just made master of its group that is still
    /// taking over (rebuilding what it derives from its log); retry it.
    MasterTakingOver = "MASTER_TAKING_OVER" => Unavailable,
    /// A write the group could not store on its quorum before the deadline;
    /// it was not acknowledged.
    QuorumTimeout = "QUORUM_TIMEOUT" => Unavailable,
    /// A tag or SQL92 filter that does not parse or passes a limit.
    InvalidFilter = "INVALID_FILTER" => InvalidArgument,
    /// A consumer's filter differs from its group's subscription on the
    /// topic, or the group declares no subscription on the topic.
    SubscriptionMismatch = "SUBSCRIPTION_MISMATCH" => FailedPrecondition,
    /// The broker's `max_topics` is reached.
    TooManyTopics = "TOO_MANY_TOPICS" => ResourceExhausted,
    /// The broker's `max_groups` is reached.
    TooManyGroups = "TOO_MANY_GROUPS" => ResourceExhausted,
    /// A limit on open Receive streams is reached.
    TooManyStreams = "TOO_MANY_STREAMS" => ResourceExhausted,
    /// A send to a topic only the broker writes (`%` first).
    ReservedTopic = "RESERVED_TOPIC" => InvalidArgument,
    /// An encoded message exceeds `max_record_size_bytes`.
    MessageTooLarge = "MESSAGE_TOO_LARGE" => InvalidArgument,
    /// A bad name, count, key, tag, property, offset or missing field.
    InvalidArgument = "INVALID_ARGUMENT" => InvalidArgument,
    /// An offset outside the queue's stored range.
    OffsetOutOfRange = "OFFSET_OUT_OF_RANGE" => OutOfRange,
    /// No room on the data volume, or it is above `disk_usage_limit`.
    DiskFull = "DISK_FULL" => ResourceExhausted,
    /// A record failed validation; never returned as data.
    CorruptRecord = "CORRUPT_RECORD" => DataLoss,
    /// A message id that is not 32 hex digits, or names another broker.
    InvalidMessageId = "INVALID_MESSAGE_ID" => InvalidArgument,
    /// A well-formed message id whose message is not (or no longer) stored.
    MessageNotFound = "MESSAGE_NOT_FOUND" => NotFound,
    /// The configuration failed validation, or the data directory is in use.
    InvalidConfig = "INVALID_CONFIG" => Internal,
    /// The broker is shutting down.
    StoreClosed = "STORE_CLOSED" => Unavailable,
    /// Another I/O failure.
    IoError = "IO_ERROR" => Internal,
    /// A failure inside the broker that is not the request's fault, such as a
    /// request's task that panicked.
    Internal = "INTERNAL" => Internal,
    /// The request is not signed, and the broker requires it.
    MissingCredentials = "MISSING_CREDENTIALS" => Unauthenticated,
    /// An unknown access key, a wrong signature or a malformed header.
    BadCredentials = "BAD_CREDENTIALS" => Unauthenticated,
    /// The request's signed time is missing or too far from the broker's clock.
    RequestExpired = "REQUEST_EXPIRED" => Unauthenticated,
    /// The user may not do this to this resource.
    PermissionDenied = "PERMISSION_DENIED" => PermissionDenied,
    /// A user's quota: a send larger than 30 s of its byte rate, or more
    /// connections than it may open.
    QuotaExceeded = "QUOTA_EXCEEDED" => ResourceExhausted,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_to_its_reason() {
        for &reason in Reason::ALL {
            assert_eq!(Reason::from_code(reason.as_str()), Some(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
    }

    #[test]
    fn unknown_codes_are_none() {
        assert_eq!(Reason::from_code("SOME_FUTURE_REASON"), None);
        assert_eq!(Reason::from_code(""), None);
        assert_eq!(Reason::from_code("topic_not_found"), None);
    }
}
