//! Receipt handles: what a consumer passes back to ack or nack a leased message.
//!
//! A handle names the queue, offset, broadcast member and a random delivery id.
//! It is valid only while that exact delivery is leased: a forged handle, one of
//! an earlier delivery, or one whose lease already ended is refused with
//! INVALID_RECEIPT_HANDLE.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::{BrokerError, brief};
use super::push::subscription::QueueOffset;

/// A parsed receipt handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptHandle {
    pub queue_id: u32,
    pub offset: u64,
    pub delivery_id: u64,
    /// Broadcast member, empty for clustering groups.
    pub member: String,
}

const VERSION: &str = "1";

impl ReceiptHandle {
    /// The queue offset the handle names.
    pub fn at(&self) -> QueueOffset {
        QueueOffset {
            queue_id: self.queue_id,
            offset: self.offset,
        }
    }

    pub fn encode(&self) -> String {
        let text = format!(
            "{VERSION}|{}|{}|{:x}|{}",
            self.queue_id, self.offset, self.delivery_id, self.member
        );
        URL_SAFE_NO_PAD.encode(text)
    }

    pub fn parse(handle: &str) -> Result<ReceiptHandle, BrokerError> {
        let bad =
            |why: &str| BrokerError::InvalidReceiptHandle(format!("{}: {why}", brief(handle)));
        let bytes = URL_SAFE_NO_PAD
            .decode(handle)
            .map_err(|_| bad("not a receipt handle"))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not a receipt handle"))?;
        let mut parts = text.splitn(5, '|');
        let mut next = || parts.next().ok_or_else(|| bad("truncated"));
        if next()? != VERSION {
            return Err(bad("unknown version"));
        }
        Ok(ReceiptHandle {
            queue_id: next()?.parse().map_err(|_| bad("bad queue"))?,
            offset: next()?.parse().map_err(|_| bad("bad offset"))?,
            delivery_id: u64::from_str_radix(next()?, 16).map_err(|_| bad("bad delivery"))?,
            member: next()?.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dduomq_proto::Reason;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let h = ReceiptHandle {
            queue_id: 3,
            offset: 42,
            delivery_id: 0xDEAD_BEEF,
            member: "client|with|bars".into(),
        };
        assert_eq!(ReceiptHandle::parse(&h.encode()).unwrap(), h);
        for bad in ["", "!!!", "MXwy", &URL_SAFE_NO_PAD.encode("2|1|1|1|")] {
            assert_eq!(
                ReceiptHandle::parse(bad).unwrap_err().code(),
                Reason::InvalidReceiptHandle
            );
        }
    }
}
