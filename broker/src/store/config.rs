//! Store configuration. Defaults live in `config/dduomq.toml` (the single source of
//! defaults, embedded into the binary); this type only describes and validates them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::{Result, StoreError};
use super::record::{BLANK_HEADER_SIZE, RECORD_HEADER_SIZE};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Acknowledge once the record is in the page cache; a background task flushes
    /// every `flush_interval`. Survives a process crash, not a power loss.
    Async,
    /// Acknowledge only after the commit log is durably flushed past the record.
    /// Concurrent appends share one flush (group commit).
    Sync,
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "async" => Ok(FlushMode::Async),
            "sync" => Ok(FlushMode::Sync),
            other => Err(format!(
                "unknown flush mode {other:?}: expected async or sync"
            )),
        }
    }
}

/// What the broker does when the data volume is fuller than `disk_usage_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFullPolicy {
    /// Refuse new messages (DISK_FULL) until time-based retention or an
    /// operator frees space; never deletes a message before its retention.
    Refuse,
    /// Delete the oldest segments, consumed or not, until the volume is below
    /// the limit (each deletion is logged and counted).
    DeleteOldest,
}

/// Storage-engine settings (the `[store]` table of the broker config).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory holding `commitlog/`, `consumequeue/`, `index/` and `checkpoint`.
    pub data_dir: PathBuf,
    /// Numeric id of this broker; part of every message id.
    pub broker_id: u32,
    /// Size of each preallocated commit-log segment file.
    pub segment_size_bytes: u64,
    /// Largest encoded record accepted.
    pub max_record_size_bytes: u32,
    /// When appends are acknowledged.
    pub flush: FlushMode,
    /// Background flush period (async mode) and checkpoint period.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Upper bound of bytes one writer round takes from the queue (group commit).
    pub max_group_bytes: usize,
    /// Entries per consume-queue file (each entry is 32 bytes).
    pub consume_queue_entries_per_file: u32,
    /// Hash slots per key-index file.
    pub index_slots: u32,
    /// Entries per key-index file.
    pub index_entries: u32,
    /// Segments whose newest record is older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Above this used fraction of the volume, `disk_full_policy` applies.
    pub disk_usage_limit: f64,
    /// Refuse writes, or delete the oldest segments, above `disk_usage_limit`.
    pub disk_full_policy: DiskFullPolicy,
    /// How often retention is checked.
    #[serde(with = "humantime_serde")]
    pub retention_check_interval: Duration,
}

impl StoreConfig {
    /// Checks invariants the engine relies on.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(StoreError::InvalidConfig(msg));
        if self.segment_size_bytes < 4096 || !self.segment_size_bytes.is_multiple_of(4096) {
            return fail(format!(
                "segment_size_bytes must be a multiple of 4096 and at least 4096, got {}",
                self.segment_size_bytes
            ));
        }
        if (self.max_record_size_bytes as usize) < RECORD_HEADER_SIZE + 1 {
            return fail(format!(
                "max_record_size_bytes must be at least {}, got {}",
                RECORD_HEADER_SIZE + 1,
                self.max_record_size_bytes
            ));
        }
        if self.max_record_size_bytes as u64 + BLANK_HEADER_SIZE as u64 > self.segment_size_bytes {
            return fail(format!(
                "max_record_size_bytes ({}) must leave room for a filler record in a segment of {} bytes",
                self.max_record_size_bytes, self.segment_size_bytes
            ));
        }
        if self.flush_interval.is_zero() {
            return fail("flush_interval must be positive".into());
        }
        if self.max_group_bytes < self.max_record_size_bytes as usize {
            return fail("max_group_bytes must be at least max_record_size_bytes".into());
        }
        if self.consume_queue_entries_per_file < 128 {
            return fail("consume_queue_entries_per_file must be at least 128".into());
        }
        if self.index_slots == 0 || self.index_entries < 16 {
            return fail("index_slots must be positive and index_entries at least 16".into());
        }
        if !(self.disk_usage_limit > 0.0 && self.disk_usage_limit <= 1.0) {
            return fail(format!(
                "disk_usage_limit must be in (0, 1], got {}",
                self.disk_usage_limit
            ));
        }
        if self.retention_check_interval.is_zero() {
            return fail("retention_check_interval must be positive".into());
        }
        Ok(())
    }

    /// A small configuration for tests: tiny segments so rolls happen quickly.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            broker_id: 1,
            segment_size_bytes: 64 * 1024,
            max_record_size_bytes: 16 * 1024,
            flush: FlushMode::Async,
            flush_interval: Duration::from_millis(50),
            max_group_bytes: 1024 * 1024,
            consume_queue_entries_per_file: 256,
            index_slots: 64,
            index_entries: 256,
            retention: Duration::from_secs(72 * 3600),
            disk_usage_limit: 1.0,
            disk_full_policy: DiskFullPolicy::Refuse,
            retention_check_interval: Duration::from_secs(3600),
        }
    }
}
