//! The scan that rebuilds what the broker derives from the commit log rather
//! than saving it whole: idempotent producers' windows and pending staged
//! (delayed / half) messages. Startup runs it from the positions the saved
//! files cover; a replica runs it as records arrive, from the start of its
//! log, whose records its own saves never covered (`replicated/derive.rs`).

use std::ops::ControlFlow;

use super::dedupe::Dedupe;
use super::send::{self, SendReceipt};
use super::staged::Staged;
use super::{error::Result, properties};
use crate::store::{MessageId, Store};

/// Where the scan starts for each kind of derived state.
#[derive(Debug, Clone, Copy)]
pub(super) struct ScanFrom {
    pub dedupe: u64,
    pub staged: u64,
}

/// Records fed between two looks at `stop`.
const STOP_CHECK_EVERY: u32 = 1024;

/// Feeds every record from `from` on to `dedupe` and `staged`; a half
/// message's first check is due `check_after_ms` after it was stored.
/// Returns where it ended: the end of the log, or, once `stop` says so (a
/// broker shutting down), the first record it did not feed.
pub(super) fn recover_from_log(
    store: &Store,
    dedupe: &Dedupe,
    staged: &Staged,
    from: ScanFrom,
    check_after_ms: i64,
    stop: impl Fn() -> bool,
) -> Result<u64> {
    let broker_id = store.config().broker_id;
    let mut fed = 0u32;
    let end = store.scan(from.dedupe.min(from.staged), |rec| {
        fed = fed.wrapping_add(1);
        if fed.is_multiple_of(STOP_CHECK_EVERY) && stop() {
            return ControlFlow::Break(());
        }
        if rec.physical_offset >= from.staged {
            staged.recover(rec, check_after_ms);
        }
        if rec.physical_offset >= from.dedupe
            && let Some(identity) = properties::producer_sequence(&rec.properties)
        {
            let id = MessageId {
                broker_id,
                physical_offset: rec.physical_offset,
                crc: rec.crc,
            };
            let receipt = SendReceipt::of(
                &send::Stage::of_record(&rec.topic, &rec.properties),
                send::Stored {
                    id: &id,
                    topic: &rec.topic,
                    queue_id: rec.queue_id,
                    offset: rec.queue_offset,
                    store_timestamp: rec.store_timestamp,
                },
            );
            dedupe.record(&identity.producer_id, identity.sequence, &receipt);
        }
        ControlFlow::Continue(())
    })?;
    Ok(end)
}
