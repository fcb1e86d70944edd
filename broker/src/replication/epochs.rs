//! This member's epoch history, next to its log.
//!
//! Kept in memory until the store persists it (`store/epochs.rs`, helper
//! `replstore`): these three calls then become the store's.

use dduomq_replication::EpochHistory;

use super::Replication;
use crate::store::{Result, StoreError};

impl Replication {
    /// Where each epoch began in this member's log.
    pub(super) fn epochs(&self) -> EpochHistory {
        self.history.lock().clone()
    }

    /// Records that `epoch` begins at `start_offset`.
    pub(super) fn begin_epoch(&self, epoch: u64, start_offset: u64) -> Result<()> {
        self.history
            .lock()
            .begin(epoch, start_offset)
            .map_err(|e| StoreError::InvalidConfig(format!("epoch history: {e}")))
    }

    /// Drops the log from `to` on, and the epochs beginning there or later.
    pub(super) async fn truncate_log(&self, to: u64) -> Result<()> {
        self.store.truncate_log(to).await?;
        self.history.lock().truncate_from(to);
        Ok(())
    }
}
