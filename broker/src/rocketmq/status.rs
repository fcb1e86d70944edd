//! The protocol's result codes. A RocketMQ response carries its outcome in a
//! `Status` of its own (the gRPC status stays OK), mapped here from the
//! broker's stable reasons (docs/errors.md) with the reason in the message.

use dduomq_proto::Reason;
use dduomq_proto::rocketmq::v2::{Code, Status};

use crate::grpc::namespace::Names;
use crate::messaging::error::BrokerError;
use dduomq_proto::Namespace;

/// Longest status message (client input in it is already shown briefly).
const MAX_MESSAGE_BYTES: usize = 512;

/// Why a request was refused: a broker error, or a condition with a protocol
/// code of its own.
#[derive(Debug)]
pub enum Refusal {
    Coded(Code, String),
    Broker(BrokerError),
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Refusal {
        Refusal::Broker(e)
    }
}

impl Refusal {
    pub fn status(self, ns: &Namespace) -> Option<Status> {
        match self {
            Refusal::Coded(code, message) => status(code, message),
            Refusal::Broker(e) => refusal(ns, e),
        }
    }
}

pub fn ok() -> Option<Status> {
    Some(Status {
        code: Code::Ok as i32,
        message: "OK".to_string(),
    })
}

/// A status of `code` with `message`, cut to a bounded length.
pub fn status(code: Code, message: impl Into<String>) -> Option<Status> {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    Some(Status {
        code: code as i32,
        message,
    })
}

/// The status of a refusal, its names as the client's namespace spells them.
pub fn refusal(ns: &Namespace, e: BrokerError) -> Option<Status> {
    let reason = e.code();
    status(
        code_of(reason),
        format!("{}: {}", reason.as_str(), ns.shown_message(e.to_string())),
    )
}

/// The protocol code closest to a broker reason. Codes the clients retry on
/// (HA_NOT_AVAILABLE, TOO_MANY_REQUESTS, the persistence timeouts) are used
/// only for conditions that pass.
pub fn code_of(reason: Reason) -> Code {
    match reason {
        Reason::TopicNotFound => Code::TopicNotFound,
        Reason::GroupNotFound => Code::ConsumerGroupNotFound,
        Reason::QueueNotFound | Reason::TransactionNotFound => Code::NotFound,
        Reason::MessageNotFound => Code::MessageNotFound,
        Reason::InvalidReceiptHandle => Code::InvalidReceiptHandle,
        Reason::MessageTypeMismatch => Code::MessagePropertyConflictWithType,
        Reason::DelayTooLong => Code::IllegalDeliveryTime,
        Reason::InvalidFilter => Code::IllegalFilterExpression,
        Reason::ReservedTopic => Code::IllegalTopic,
        Reason::MessageTooLarge => Code::MessageBodyTooLarge,
        Reason::InvalidMessageId => Code::IllegalMessageId,
        Reason::OffsetOutOfRange => Code::IllegalOffset,
        Reason::InvalidArgument | Reason::TopicConflict => Code::BadRequest,
        Reason::StaleGeneration
        | Reason::QueueNotAssigned
        | Reason::SubscriptionMismatch
        | Reason::TransactionResolved => Code::PreconditionFailed,
        Reason::TooManyTopics
        | Reason::TooManyGroups
        | Reason::TooManyStreams
        | Reason::DuplicateInFlight
        | Reason::TransactionInProgress
        | Reason::QuotaExceeded => Code::TooManyRequests,
        Reason::NotMaster | Reason::MasterTakingOver | Reason::BrokerDraining => {
            Code::HaNotAvailable
        }
        Reason::QuorumTimeout => Code::SlavePersistenceTimeout,
        Reason::MissingCredentials | Reason::BadCredentials | Reason::RequestExpired => {
            Code::Unauthorized
        }
        Reason::PermissionDenied => Code::Forbidden,
        Reason::DiskFull
        | Reason::CorruptRecord
        | Reason::InvalidConfig
        | Reason::StoreClosed
        | Reason::IoError
        | Reason::Internal => Code::InternalServerError,
        // A reason added later than this door: generic until mapped.
        _ => Code::InternalServerError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_reason_and_stay_short() {
        let s = refusal(
            &Namespace::default(),
            BrokerError::invalid("x", "é".repeat(5000)),
        )
        .unwrap();
        assert_eq!(s.code, Code::BadRequest as i32);
        assert!(s.message.starts_with("INVALID_ARGUMENT: "), "{}", s.message);
        assert!(s.message.len() <= MAX_MESSAGE_BYTES + 3);
    }

    #[test]
    fn lookups_map_to_the_protocols_not_found_codes() {
        assert_eq!(code_of(Reason::TopicNotFound), Code::TopicNotFound);
        assert_eq!(code_of(Reason::GroupNotFound), Code::ConsumerGroupNotFound);
        assert_eq!(
            code_of(Reason::InvalidReceiptHandle),
            Code::InvalidReceiptHandle
        );
    }
}
