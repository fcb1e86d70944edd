//! Appending replicated bytes: a replica stores its master's commit log
//! verbatim, at the same positions, and dispatches it as a local append
//! would (consume-queue entries, key index, new queues), so its files are
//! the master's byte for byte and every read gives the same answer.
//!
//! A chunk is checked whole before anything is written: it must start at the
//! log end, and every frame must be valid where it lands (see `frames.rs`)
//! with each record's queue offset the next one of its queue. A bad chunk
//! changes nothing. Storing then goes as a local append: files are allocated
//! first (in runs whose keys fit one index file), the bytes written, entries
//! dispatched, the log flushed in `sync` mode, and the new end published.
//!
//! An empty store (no segment yet) may start at any segment base: a member
//! that joins after retention deleted its master's oldest segments. Where the
//! log does not begin at 0, a queue this store does not have yet starts at
//! its first record's offset; otherwise every queue starts at 0.

use std::collections::HashMap;
use std::sync::Arc;

use super::consume_queue::{ConsumeQueue, CqEntry, tag_hash};
use super::error::{RawLogProblem, Result, StoreError};
use super::frames::{self, FrameLimits, ValidFrame};
use super::index::{IndexHit, key_hash};
use super::record::Checked;
use super::writer::Writer;

/// A record of a chunk, with where it lands.
struct Landing<'a> {
    pos: u64,
    record: Checked<'a>,
    keys: Vec<&'a str>,
    /// The first record of a queue this store does not have yet, in a log
    /// that does not begin at 0: the queue starts at its offset.
    starts_queue: bool,
}

/// Consecutive frames of a validated chunk whose keys fit one index file:
/// allocated whole before it is written. Runs follow each other in log order.
struct Run<'a> {
    /// One past its last byte (it starts where the previous one ends).
    end: u64,
    records: Vec<Landing<'a>>,
}

impl Writer {
    /// Stores `bytes` (whole frames) at `start`, which must be the log end;
    /// returns the new end. See the module documentation.
    pub fn replicate(&mut self, start: u64, bytes: &[u8]) -> Result<u64> {
        self.check_no_unfinished_cut()?;
        super::refuse_if_full(&self.inner)?;
        let log = &self.inner.commit_log;
        let fresh = log.segment_count() == 0;
        let expected = if fresh && start.is_multiple_of(log.segment_size()) {
            start
        } else {
            self.write_pos
        };
        if start != expected {
            return Err(StoreError::RawLog {
                position: start,
                problem: RawLogProblem::NotAtEnd {
                    end: self.write_pos,
                },
            });
        }
        let log_begins_late = if fresh { start } else { log.min_offset() } > 0;
        let runs = self.validate(start, bytes, log_begins_late)?;
        self.write_pos = start;
        let mut touched: HashMap<*const ConsumeQueue, Arc<ConsumeQueue>> = HashMap::new();
        let stored = self.store_runs(start, bytes, runs, &mut touched);
        let flushed = match self.inner.config.flush {
            super::FlushMode::Sync => super::flush_log(&self.inner, self.write_pos),
            super::FlushMode::Async => Ok(()),
        };
        self.publish(touched.values());
        stored.and(flushed).map(|()| self.write_pos)
    }

    /// Checks every frame of the chunk; cuts it into runs.
    fn validate<'a>(
        &self,
        start: u64,
        bytes: &'a [u8],
        log_begins_late: bool,
    ) -> Result<Vec<Run<'a>>> {
        let inner = &self.inner;
        let limits = FrameLimits {
            segment_size: inner.commit_log.segment_size(),
            max_record_size: inner.config.max_record_size_bytes,
        };
        let index_capacity = inner.config.index_entries as usize;
        let mut next_offsets: HashMap<(&str, u32), u64> = HashMap::new();
        let mut runs = Vec::new();
        let mut run = Vec::new();
        let mut run_keys = 0;
        let mut at = 0usize;
        while at < bytes.len() {
            let pos = start + at as u64;
            let bad = |problem: String| StoreError::RawLog {
                position: pos,
                problem: RawLogProblem::BadFrame(problem),
            };
            let frame = frames::check(&bytes[at..], pos, limits).map_err(bad)?;
            let len = frame.len();
            if let ValidFrame::Record { record, keys } = frame {
                let h = &record.header;
                if keys.len() > index_capacity {
                    return Err(bad(format!(
                        "{} keys, more than index_entries {index_capacity}",
                        keys.len()
                    )));
                }
                let queue = (record.topic, h.queue_id);
                let mut starts_queue = false;
                let next = match next_offsets.get(&queue) {
                    Some(&next) => next,
                    None => match inner.queues.get(record.topic, h.queue_id) {
                        Some(cq) => cq.next_offset(),
                        None if log_begins_late => {
                            starts_queue = true;
                            h.queue_offset
                        }
                        None => 0,
                    },
                };
                if h.queue_offset != next {
                    return Err(bad(format!(
                        "record has offset {} in {}/{}, whose next offset is {next}",
                        h.queue_offset, record.topic, h.queue_id
                    )));
                }
                next_offsets.insert(queue, next + 1);
                if run_keys + keys.len() > index_capacity {
                    runs.push(Run {
                        end: pos,
                        records: std::mem::take(&mut run),
                    });
                    run_keys = 0;
                }
                run_keys += keys.len();
                run.push(Landing {
                    pos,
                    record,
                    keys,
                    starts_queue,
                });
            }
            at += len as usize;
        }
        runs.push(Run {
            end: start + bytes.len() as u64,
            records: run,
        });
        Ok(runs)
    }

    /// Allocates, writes and dispatches run after run. On a failure (disk
    /// full) the runs before stay stored: `write_pos` ends after the last.
    fn store_runs(
        &mut self,
        start: u64,
        bytes: &[u8],
        runs: Vec<Run<'_>>,
        touched: &mut HashMap<*const ConsumeQueue, Arc<ConsumeQueue>>,
    ) -> Result<()> {
        let inner = self.inner.clone();
        let log = &inner.commit_log;
        let mut index = inner.index.lock();
        for Run { end, records } in runs {
            let from = self.write_pos;
            if end > from {
                let mut base = log.segment_base(from);
                while base < end {
                    log.ensure_segment(base)?;
                    base += log.segment_size();
                }
            }
            let mut slots = Vec::with_capacity(records.len());
            for landing in &records {
                let h = &landing.record.header;
                let cq = inner
                    .queues
                    .get_or_create(landing.record.topic, h.queue_id)?;
                if landing.starts_queue {
                    cq.start_at(h.queue_offset);
                }
                cq.ensure_capacity(h.queue_offset)?;
                slots.push(cq);
            }
            index.ensure_capacity(records.iter().map(|l| l.keys.len()).sum())?;
            let run_bytes = &bytes[(from - start) as usize..(end - start) as usize];
            // SAFETY: the writer owns everything past `visible` (= write_pos
            // once published), and the segments were ensured above.
            unsafe { log.write_run(from, run_bytes) }?;
            for (landing, cq) in records.iter().zip(slots) {
                let record = &landing.record;
                let h = &record.header;
                cq.write(
                    h.queue_offset,
                    &CqEntry {
                        physical_offset: landing.pos,
                        size: h.total_size,
                        tag_hash: tag_hash(record.tag),
                        store_timestamp: h.store_timestamp,
                    },
                );
                for key in &landing.keys {
                    index.put(
                        key_hash(record.topic, key),
                        IndexHit {
                            physical_offset: landing.pos,
                            size: h.total_size,
                            store_timestamp: h.store_timestamp,
                        },
                    );
                }
                self.last_timestamp = self.last_timestamp.max(h.store_timestamp);
                touched.entry(Arc::as_ptr(&cq)).or_insert(cq);
            }
            self.write_pos = end;
        }
        Ok(())
    }
}
