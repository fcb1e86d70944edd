//! Client errors. A broker refusal carries the stable reason code from the
//! status's `google.rpc.ErrorInfo` (see docs/errors.md).

use std::collections::HashMap;
use std::time::Duration;

use dduomq_proto::Reason;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Everything an SDK call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The broker answered with an error status.
    #[error("{message} [{reason}]")]
    Broker {
        code: Code,
        /// The raw reason code, e.g. `TOPIC_NOT_FOUND`, as the broker sent it
        /// (kept as a string, so a code from a newer broker is still shown);
        /// empty if the broker sent none. [`ClientError::reason`] parses it.
        reason: String,
        message: String,
        metadata: HashMap<String, String>,
    },
    /// The broker could not be reached.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// No answer within the deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request was refused before it was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The client was shut down.
    #[error("client is closed")]
    Closed,
}

/// Result alias for SDK calls.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// Why the broker refused the request; `None` for client-side errors and
    /// for a code this SDK does not know (see [`ClientError::reason_code`]).
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason_code())
    }

    /// The broker's raw reason code, for logs (`""` for client-side errors).
    pub fn reason_code(&self) -> &str {
        match self {
            ClientError::Broker { reason, .. } => reason,
            _ => "",
        }
    }

    /// Whether retrying the same request may succeed (the broker was unreachable
    /// or restarting, or the call timed out). An INTERNAL status without a
    /// reason code comes from the HTTP/2 transport (a connection the broker
    /// closed mid-request while shutting down), not from the broker, which
    /// gives every refusal a reason.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Broker {
                code: Code::Internal,
                reason,
                ..
            } if reason.is_empty() => true,
            ClientError::Broker { code, .. } => {
                matches!(
                    code,
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
                )
            }
            ClientError::Connect { .. } | ClientError::Timeout(_) => true,
            ClientError::InvalidArgument(_) | ClientError::Closed => false,
        }
    }

    /// Whether a failed send may have been stored all the same: it went
    /// unanswered (timed out, or the connection broke mid-request), or the
    /// broker holds it unacknowledged (still storing an earlier try of it;
    /// stored without its quorum), rather than refused or never sent (a
    /// connection that could not be made, a call still queued when the
    /// connection closed).
    pub fn may_have_been_stored(&self) -> bool {
        match self {
            ClientError::Timeout(_) => true,
            ClientError::Broker { code, reason, .. } if reason.is_empty() => {
                matches!(code, Code::Internal | Code::Unknown)
            }
            ClientError::Broker { .. } => matches!(
                self.reason(),
                Some(Reason::DuplicateInFlight | Reason::QuorumTimeout)
            ),
            _ => false,
        }
    }

    /// Whether the broker could not be reached or dropped the connection (as
    /// opposed to answering): a reason-less transport failure.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Broker { code, reason, .. } => {
                reason.is_empty()
                    && matches!(
                        code,
                        Code::Unavailable | Code::Internal | Code::Unknown | Code::Cancelled
                    )
            }
            _ => false,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let info = status.get_error_details().error_info().cloned();
        ClientError::Broker {
            code: status.code(),
            reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
            message: status.message().to_string(),
            metadata: info.map(|i| i.metadata).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn transport_failures_are_retryable_and_refusals_are_not() {
        let transport = ClientError::from(Status::internal("h2 protocol error: http2 error"));
        assert!(transport.is_retryable(), "{transport}");
        // Cut mid-request or unanswered: maybe stored; not connected: not.
        assert!(transport.may_have_been_stored());
        assert!(ClientError::Timeout(Duration::from_secs(2)).may_have_been_stored());
        let not_connected = ClientError::from(Status::unavailable("tcp connect error"));
        assert!(not_connected.is_retryable() && !not_connected.may_have_been_stored());
        let refusal = ClientError::from(Status::with_error_details(
            Code::Internal,
            "corrupt",
            ErrorDetails::with_error_info(
                Reason::CorruptRecord.as_str(),
                "dduomq.io",
                HashMap::new(),
            ),
        ));
        assert!(!refusal.is_retryable(), "{refusal}");
        let draining = ClientError::from(Status::with_error_details(
            Code::Unavailable,
            "draining",
            ErrorDetails::with_error_info(
                Reason::BrokerDraining.as_str(),
                "dduomq.io",
                HashMap::new(),
            ),
        ));
        assert!(draining.is_retryable());
        assert_eq!(draining.reason(), Some(Reason::BrokerDraining));
        // A replicated group's refusals: retried (a replica's after a route
        // refresh; an unacknowledged write's retry is stored once).
        for reason in [
            Reason::NotMaster,
            Reason::MasterTakingOver,
            Reason::QuorumTimeout,
        ] {
            let refusal = ClientError::from(Status::with_error_details(
                reason.grpc_code(),
                "replication",
                ErrorDetails::with_error_info(reason.as_str(), "dduomq.io", HashMap::new()),
            ));
            assert!(refusal.is_retryable(), "{reason}");
            assert_eq!(refusal.reason(), Some(reason));
            // Stored without its quorum: maybe there after a failover.
            assert_eq!(
                refusal.may_have_been_stored(),
                reason == Reason::QuorumTimeout,
                "{reason}"
            );
        }
        assert!(!draining.may_have_been_stored() && !refusal.may_have_been_stored());
        // A call still queued when its connection closed was never written.
        assert!(!ClientError::from(Status::cancelled("connection closed")).may_have_been_stored());
    }

    #[test]
    fn unknown_codes_keep_their_raw_string() {
        let newer = ClientError::from(Status::with_error_details(
            Code::FailedPrecondition,
            "from a newer broker",
            ErrorDetails::with_error_info("SOME_FUTURE_REASON", "dduomq.io", HashMap::new()),
        ));
        assert_eq!(newer.reason(), None);
        assert_eq!(newer.reason_code(), "SOME_FUTURE_REASON");
        assert_eq!(ClientError::Closed.reason(), None);
        assert_eq!(ClientError::Closed.reason_code(), "");
    }
}
