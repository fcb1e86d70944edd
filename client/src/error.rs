//! Client errors. A broker refusal carries the stable reason code from the
//! status's `google.rpc.ErrorInfo` (see docs/errors.md).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Everything an SDK call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with an error status.
    #[error("{message} [{reason}]")]
    Broker {
        code: Code,
        /// Stable reason code, e.g. `TOPIC_NOT_FOUND`; empty if the broker sent none.
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
    /// The broker's reason code (`""` for client-side errors).
    pub fn reason(&self) -> &str {
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
        let refusal = ClientError::from(Status::with_error_details(
            Code::Internal,
            "corrupt",
            ErrorDetails::with_error_info("CORRUPT_RECORD", "dduomq.io", HashMap::new()),
        ));
        assert!(!refusal.is_retryable(), "{refusal}");
        let draining = ClientError::from(Status::with_error_details(
            Code::Unavailable,
            "draining",
            ErrorDetails::with_error_info("BROKER_DRAINING", "dduomq.io", HashMap::new()),
        ));
        assert!(draining.is_retryable());
        assert_eq!(draining.reason(), "BROKER_DRAINING");
    }
}
