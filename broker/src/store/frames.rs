//! Frames of raw commit-log bytes, as replication ships them: a record or a
//! segment-end filler (see `record.rs`), validated where it stands before it
//! is sent (`Store::read_log`), stored (`Store::append_replicated`) or cut at
//! (`Store::truncate_log`).
//!
//! A frame at log position `pos` in a segment ending at `segment_end` is valid when:
//! - a record: magic, size, CRC32C and section lengths check out, its stored
//!   physical offset is `pos`, it is at most `max_record_size_bytes`, and it
//!   ends at `segment_end` or leaves room for a filler header after it (as the
//!   writer always does);
//! - a filler: it ends exactly at `segment_end`. What follows its header is
//!   copied verbatim, not checked: recovery does not read it either, and a
//!   write that failed before the filler took its place may have left bytes
//!   there, which must not stop replication.

use super::record::{self, BLANK_HEADER_SIZE, Checked, Frame};

/// A frame found valid at its position.
#[derive(Debug)]
pub(crate) enum ValidFrame<'a> {
    Record {
        record: Checked<'a>,
        keys: Vec<&'a str>,
    },
    Filler(u32),
}

impl ValidFrame<'_> {
    /// Its length in the log.
    pub fn len(&self) -> u64 {
        match self {
            ValidFrame::Record { record, .. } => record.header.total_size as u64,
            ValidFrame::Filler(len) => *len as u64,
        }
    }
}

/// The limits a frame is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameLimits {
    pub segment_size: u64,
    pub max_record_size: u32,
}

/// Validates the frame at the start of `bytes` (the log from `pos` on, as far
/// as available); the error says what is wrong, for a message naming `pos`.
pub(crate) fn check(bytes: &[u8], pos: u64, limits: FrameLimits) -> Result<ValidFrame<'_>, String> {
    let segment_end = pos - pos % limits.segment_size + limits.segment_size;
    let room = segment_end - pos;
    if bytes.len() < BLANK_HEADER_SIZE {
        return Err(format!(
            "truncated frame: {} bytes, shorter than any frame header",
            bytes.len()
        ));
    }
    let whole = |len: u32| {
        bytes.get(..len as usize).ok_or_else(|| {
            format!(
                "truncated frame: {len} bytes claimed, {} present",
                bytes.len()
            )
        })
    };
    match record::peek_frame(bytes) {
        Frame::End => Err("zeros: no frame starts here".into()),
        Frame::Garbage => Err("no frame magic and size here".into()),
        Frame::Blank(len) => {
            if len as u64 != room {
                return Err(format!(
                    "filler of {len} bytes does not end at the segment end {segment_end}"
                ));
            }
            whole(len)?;
            Ok(ValidFrame::Filler(len))
        }
        Frame::Record(len) => {
            if len > limits.max_record_size {
                return Err(format!(
                    "record of {len} bytes exceeds max_record_size_bytes {}",
                    limits.max_record_size
                ));
            }
            let after = room.checked_sub(len as u64).ok_or_else(|| {
                format!("record of {len} bytes crosses the segment end {segment_end}")
            })?;
            if after != 0 && after < BLANK_HEADER_SIZE as u64 {
                return Err(format!(
                    "record leaves {after} bytes before the segment end, too few for a filler"
                ));
            }
            let mut keys = Vec::new();
            record::check_with(whole(len)?, pos, |k| keys.push(k), |_, _| {})
                .map(|record| ValidFrame::Record { record, keys })
                .map_err(|e| match e {
                    super::StoreError::Corrupt { reason, .. } => reason,
                    other => other.to_string(),
                })
        }
    }
}
