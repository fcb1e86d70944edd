//! The commit log as raw bytes, for replication: a master reads whole frames
//! ([`Store::read_log`]) and a replica stores them at the same positions
//! ([`Store::append_replicated`], see `replica_append.rs`) or cuts a divergent
//! tail ([`Store::truncate_log`], see `truncate.rs`). Positions are physical
//! offsets; every member of a group holds the same bytes at the same ones.

use bytes::Bytes;

use super::error::{RawLogProblem, Result, StoreError};
use super::frames::{self, FrameLimits};
use super::writer::WriterRequest;
use super::{Inner, Store};

/// Whole frames (records and segment-end fillers) of the log, verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLog {
    /// The position of the first byte.
    pub start: u64,
    pub data: Bytes,
}

impl RawLog {
    /// One past the last byte: where the next read starts.
    pub fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

fn limits(inner: &Inner) -> FrameLimits {
    FrameLimits {
        segment_size: inner.commit_log.segment_size(),
        max_record_size: inner.config.max_record_size_bytes,
    }
}

fn out_of_range(inner: &Inner, position: u64, end: u64) -> StoreError {
    StoreError::RawLog {
        position,
        problem: RawLogProblem::OutOfRange {
            min: inner.commit_log.min_offset(),
            end,
        },
    }
}

/// The length of the valid frame at `pos`, read below `end` (published, or
/// owned by the caller, the writer).
fn frame_len(inner: &Inner, pos: u64, end: u64) -> Result<u64> {
    let seg = inner
        .commit_log
        .segment(pos)
        .ok_or_else(|| out_of_range(inner, pos, end))?;
    let stop = end.min(seg.end());
    // SAFETY: below `end`, which nothing writes any more (see above).
    let bytes = unsafe { seg.slice((pos - seg.base()) as usize, (stop - pos) as usize) };
    frames::check(bytes, pos, limits(inner), |_| {})
        .map(|frame| frame.len())
        .map_err(|reason| StoreError::RawLog {
            position: pos,
            problem: RawLogProblem::NotAFrame(reason),
        })
}

/// Checks that the log ending at `end` can be cut at `to`: a frame boundary
/// between the oldest stored byte and `end` (`end` itself included).
pub(crate) fn check_boundary(inner: &Inner, to: u64, end: u64) -> Result<()> {
    if to == end {
        return Ok(());
    }
    if to > end || to < inner.commit_log.min_offset() {
        return Err(out_of_range(inner, to, end));
    }
    frame_len(inner, to, end).map(|_| ())
}

/// [`Store::read_log`], unless a truncation runs meanwhile.
fn read_frames(inner: &Inner, from: u64, max_bytes: usize) -> Result<RawLog> {
    let end = inner.commit_log.visible();
    if from == end {
        return Ok(RawLog {
            start: from,
            data: Bytes::new(),
        });
    }
    if from > end || from < inner.commit_log.min_offset() {
        return Err(out_of_range(inner, from, end));
    }
    let mut stop = from + frame_len(inner, from, end)?;
    while stop < end {
        match frame_len(inner, stop, end) {
            Ok(len) if stop + len - from <= max_bytes as u64 => stop += len,
            _ => break,
        }
    }
    let mut data = Vec::with_capacity((stop - from) as usize);
    let mut pos = from;
    while pos < stop {
        let seg = inner
            .commit_log
            .segment(pos)
            .ok_or_else(|| out_of_range(inner, pos, end))?;
        let run = stop.min(seg.end()) - pos;
        // SAFETY: below the published end read above.
        data.extend_from_slice(unsafe { seg.slice((pos - seg.base()) as usize, run as usize) });
        pos += run;
    }
    Ok(RawLog {
        start: from,
        data: Bytes::from(data),
    })
}

impl Store {
    /// The end of the published log: where the next byte goes.
    pub fn log_end(&self) -> u64 {
        self.inner.commit_log.visible()
    }

    /// Whole frames from `from` (a frame boundary) up to the published end:
    /// about `max_bytes`, but at least one frame. Each frame is validated
    /// first; the read stops before a damaged one (which, at `from`, is an
    /// error naming it). `from` at the end gives no bytes. One copy.
    pub fn read_log(&self, from: u64, max_bytes: usize) -> Result<RawLog> {
        // A truncation (a replica's) running meanwhile may zero what is copied.
        self.inner
            .commit_log
            .read_stable(|| read_frames(&self.inner, from, max_bytes))
    }

    /// Stores a chunk of a master's log (whole frames, as [`Store::read_log`]
    /// gave them) at `start`, which must be this log's end, through the single
    /// writer; returns the new end. Every frame is checked before anything is
    /// written (a bad chunk changes nothing and the error names the position);
    /// the bytes land verbatim and are dispatched as a local append's; in `sync`
    /// flush mode they are durable before this returns. An empty store may
    /// start at any segment base. On a disk-full failure, a prefix of whole
    /// frames may be stored: [`Store::log_end`] says how far.
    pub async fn append_replicated(&self, start: u64, bytes: Bytes) -> Result<u64> {
        let queued = bytes.clone();
        self.with_writer(
            |writer| writer.replicate(start, &bytes),
            |reply| WriterRequest::Replicate {
                start,
                bytes: queued,
                reply,
            },
        )
        .await
    }

    /// Drops the log from `to` (a frame boundary at or below the end) on,
    /// through the single writer: log bytes, consume-queue and key-index
    /// entries, and epochs starting at or after it. Durable and crash-safe:
    /// an interrupted truncation is finished on the next open.
    pub async fn truncate_log(&self, to: u64) -> Result<()> {
        self.unacknowledge_from(to);
        self.with_writer(
            |writer| writer.truncate(to),
            |reply| WriterRequest::Truncate { to, reply },
        )
        .await
    }
}
