//! Maps broker errors to gRPC statuses: a status code plus a
//! `google.rpc.ErrorInfo` whose reason is the stable code from docs/errors.md.

use std::collections::HashMap;

use dduomq_proto::ERROR_DOMAIN;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::messaging::error::BrokerError;
use crate::store::StoreError;

/// The gRPC status for a broker error.
pub fn to_status(err: BrokerError) -> Status {
    to_status_shown(err, |message| message)
}

/// [`to_status`] with the message rewritten by `show` (names as the
/// client's namespace spells them).
pub fn to_status_shown(err: BrokerError, show: impl FnOnce(String) -> String) -> Status {
    let reason = err.code();
    let mut metadata = HashMap::new();
    if let BrokerError::Store(StoreError::OffsetOutOfRange { min, max, .. }) = &err {
        metadata.insert("min_offset".to_string(), min.to_string());
        metadata.insert("max_offset".to_string(), max.to_string());
    }
    if let BrokerError::StaleGeneration { current, .. } = &err {
        metadata.insert("generation".to_string(), current.to_string());
    }
    Status::with_error_details(
        err.grpc_code(),
        capped(show(err.to_string())),
        ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata),
    )
}

/// Longest status message. Messages show client input briefly where they are
/// built ([`crate::messaging::error::brief`]); this is the backstop for any
/// other (the message travels twice in the response headers).
const MAX_MESSAGE_BYTES: usize = 512;

/// `message`, cut at a character boundary to [`MAX_MESSAGE_BYTES`].
fn capped(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let full = message.len();
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(&format!("… ({full} bytes)"));
    }
    message
}

/// An INVALID_ARGUMENT status for a malformed request field.
pub fn invalid(what: &'static str, reason: impl Into<String>) -> Status {
    to_status(BrokerError::invalid(what, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn refusals_of_bad_input_are_invalid_argument() {
        let filter = crate::filter::Filter::sql("a =").unwrap_err();
        assert_eq!(
            to_status(BrokerError::InvalidFilter(filter)).code(),
            Code::InvalidArgument
        );
        let mismatch = BrokerError::MessageTypeMismatch {
            topic: "t".into(),
            reason: "r".into(),
        };
        assert_eq!(to_status(mismatch).code(), Code::InvalidArgument);
    }

    #[test]
    fn messages_are_capped() {
        let long = BrokerError::invalid("x", "é".repeat(5000));
        let status = to_status(long);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES + 32);
        assert!(
            status.message().ends_with("… (10011 bytes)"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn carries_reason_and_range() {
        let status = to_status(BrokerError::Store(StoreError::OffsetOutOfRange {
            topic: "t".into(),
            queue_id: 0,
            offset: 9,
            min: 2,
            max: 5,
        }));
        assert_eq!(status.code(), Code::OutOfRange);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "OFFSET_OUT_OF_RANGE");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["min_offset"], "2");
        assert_eq!(info.metadata["max_offset"], "5");
    }
}
