//! Undoing topic deletions whose markers a log truncation cut (a master
//! deleted the topic, crashed before the marker was replicated, and came back
//! as a replica of a master that never had it). The records of the topic
//! below the marker are still in the log (a deletion only drops queues and
//! leaves a tombstone), so the topic is rebuilt from the log below the cut:
//! its queues and tombstone are dropped, then every record of it below the cut
//! is dispatched again, and every marker of it below the cut deletes it again
//! (so what remains is the topic as it was just before the cut marker). Done
//! from scratch each time, so finishing it on the next open after a crash is
//! idempotent. Deletions do not touch the key index: nothing to restore there.

use super::Inner;
use super::deletion;
use super::error::Result;
use super::recovery::{self, RecoveryReport, Step};

/// Rebuilds `topics` from the records of the log below `to`.
pub(super) fn restore(inner: &Inner, topics: &[String], to: u64) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    for topic in topics {
        inner.queues.forget_topic(topic)?;
    }
    let undone = |topic: &str| topics.iter().any(|t| t == topic);
    let log = &inner.commit_log;
    // Holes counted here were counted when the records were first dispatched.
    let mut uncounted = RecoveryReport::default();
    let mut pos = log.min_offset();
    while pos < to {
        let Some(seg) = log.segment(pos) else { break };
        let rel = (pos - seg.base()) as usize;
        let stop = (to.min(seg.end()) - seg.base()) as usize;
        // SAFETY: below the cut, where the writer (or recovery, running
        // alone) writes nothing while this runs.
        let bytes = unsafe { seg.slice(rel, stop - rel) };
        match recovery::step(bytes, pos) {
            Step::Record(rec, len) => {
                if undone(&rec.topic) {
                    recovery::dispatch_to_queue(inner, &rec, &mut uncounted)?;
                } else if let Ok(Some(topic)) = deletion::deleted_topic(&rec.topic, &rec.body)
                    && undone(topic)
                {
                    inner.queues.remove_topic(topic, pos)?;
                }
                pos += len;
            }
            Step::Blank(len) => pos += len,
            // Damage: its records stay holes, as recovery left them.
            Step::End | Step::Invalid => match recovery::next_frame(inner, pos + 1, to) {
                Some(next) => pos = next,
                None => break,
            },
        }
    }
    for topic in topics {
        for queue_id in inner.queues.queue_ids(topic) {
            if let Some(cq) = inner.queues.get(topic, queue_id) {
                cq.publish();
            }
        }
    }
    Ok(())
}
