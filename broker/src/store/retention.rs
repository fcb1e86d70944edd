//! Retention: whole commit-log segments are deleted, oldest first, when their newest
//! record is older than the log's retention time (the configured `retention`,
//! raised to the longest per-topic retention; see [`super::Store::set_log_retention`]) or, only under `disk_full_policy =
//! delete_oldest`, while the volume is fuller than the disk-usage limit (under
//! the default `refuse`, the store refuses appends instead; see `mod.rs`). The segment holding the newest data is never deleted, nor
//! one at or after the pinned floor (staged messages not yet released). Consume
//! queues' minimum offsets then move past the deleted data, and index files that
//! only point into it are deleted too.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::Inner;
use super::config::DiskFullPolicy;
use super::error::{Result, StoreError};
use super::observer::DeleteReason;
use super::record::{self, Frame, RECORD_HEADER_SIZE};
use super::recovery::next_frame;

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub commit_log_min: u64,
}

/// The used fraction of the volume holding `path`, as `df` computes it.
pub fn disk_usage_ratio(path: &Path) -> Result<f64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StoreError::InvalidConfig(format!("{} has a NUL byte", path.display())))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(StoreError::io(
            format!("statvfs {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    let used = st.f_blocks.saturating_sub(st.f_bfree) as f64;
    let total = used + st.f_bavail as f64;
    Ok(if total == 0.0 { 0.0 } else { used / total })
}

/// The store timestamp of the first valid record of the segment at `base`
/// (damage at its start is skipped, so it cannot keep older segments forever).
fn first_timestamp(inner: &Inner, base: u64) -> Option<i64> {
    let log = &inner.commit_log;
    let end = log.visible().min(base.saturating_add(log.segment_size()));
    let at = next_frame(inner, base, end)?;
    let header = log.read_bytes(at, RECORD_HEADER_SIZE as u32).ok()?;
    matches!(record::peek_frame(&header), Frame::Record(_))
        .then(|| record::parse_header(&header).store_timestamp)
}

pub(crate) fn enforce(inner: &Inner, now_millis: i64) -> Result<RetentionReport> {
    let log = &inner.commit_log;
    let retention_ms = inner
        .log_retention_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let cutoff = now_millis.saturating_sub(retention_ms.min(i64::MAX as u64) as i64);
    let mut deleted = 0;
    loop {
        let segments = log.segments();
        let [_, next, ..] = segments.as_slice() else {
            break;
        };
        if next.base() >= log.visible() {
            break; // the oldest segment holds the newest data
        }
        let floor = inner
            .retention_floor
            .load(std::sync::atomic::Ordering::Relaxed);
        if next.base() > floor {
            // The oldest segment holds data the broker must still release.
            break;
        }
        // Every record of the oldest segment is older than the next one's first.
        let expired = first_timestamp(inner, next.base()).is_some_and(|ts| ts < cutoff);
        let too_full = inner.config.disk_full_policy == DiskFullPolicy::DeleteOldest
            && disk_usage_ratio(log.dir())? > inner.config.disk_usage_limit;
        if !expired && !too_full {
            break;
        }
        match log.remove_oldest()? {
            Some(base) => {
                if expired {
                    tracing::info!(base, "retention deleted an expired commit-log segment");
                } else {
                    tracing::warn!(
                        base,
                        "the data volume is above disk_usage_limit: deleted the oldest \
                         commit-log segment before its retention (disk_full_policy = delete_oldest); \
                         unconsumed messages in it are gone"
                    );
                }
                inner.observer.segment_deleted(if expired {
                    DeleteReason::Expired
                } else {
                    DeleteReason::DiskUsage
                });
                deleted += 1;
            }
            None => break,
        }
    }
    let min = log.min_offset();
    if deleted > 0 {
        for cq in inner.queues.all() {
            cq.advance_min(min)?;
        }
        inner.index.lock().remove_below(min)?;
        inner.queues.drop_tombstones_below(min);
    }
    Ok(RetentionReport {
        segments_deleted: deleted,
        commit_log_min: min,
    })
}
