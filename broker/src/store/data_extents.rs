//! Where the commit log held data when recovery began, so that recovery's
//! search for a record past damage reads only bytes that were ever written.
//!
//! `SEEK_DATA` alone cannot tell that once recovery reads: segments are
//! preallocated (`fallocate`), and in such unwritten extents a file system
//! reports as data every page the page cache holds. Each read through the
//! mapping reads ahead past what it touches, so a search that asks `SEEK_DATA`
//! as it goes finds the pages its own previous read brought in, and walks the
//! whole preallocated segment: a gigabyte of zeros after every crash, which
//! left a restarted broker unready for seconds (tens of seconds when the
//! machine is loaded). Taken before anything reads the log, the ranges hold
//! what the writer wrote, plus at most one read-ahead window of the crashed
//! process's readers.

use std::collections::HashMap;
use std::ops::Range;

use super::commit_log::CommitLog;
use super::mapped_file::MappedFile;

/// The data ranges (`SEEK_DATA` / `SEEK_HOLE`, relative to the segment) of
/// every segment of a log, as they were when taken.
#[derive(Debug, Default)]
pub(crate) struct DataExtents {
    by_segment_base: HashMap<u64, Vec<Range<u64>>>,
}

impl DataExtents {
    /// Records the data ranges of every segment of `log`; call it before
    /// anything reads the log.
    pub(crate) fn take(log: &CommitLog) -> DataExtents {
        let mut by_segment_base = HashMap::new();
        let mut pos = log.min_offset();
        while let Some(seg) = log.segment(pos) {
            let mut ranges = Vec::new();
            let mut rel = 0;
            while let Some(range) = seg.next_data(rel) {
                rel = range.end;
                ranges.push(range);
            }
            by_segment_base.insert(seg.base(), ranges);
            pos = seg.end();
        }
        DataExtents { by_segment_base }
    }

    /// The next range of `seg` at or after `rel` that held data when taken
    /// (as [`MappedFile::next_data`] said then). A segment that did not exist
    /// then is asked now.
    pub(crate) fn next_data(&self, seg: &MappedFile, rel: u64) -> Option<Range<u64>> {
        let Some(ranges) = self.by_segment_base.get(&seg.base()) else {
            return seg.next_data(rel);
        };
        ranges
            .iter()
            .find(|r| r.end > rel)
            .map(|r| r.start.max(rel)..r.end)
    }
}
