//! The progress of one subscription on one queue under push consumption: which
//! offsets are done, which are leased to a consumer, which wait for redelivery.
//!
//! ```text
//!   committed                                   next
//!       │ done, except the open ones              │ never delivered
//!  ─────┼─────────────────────────────────────────┼────────────────▶ offsets
//!   all below are done                   max offset of the queue ─┘
//! ```
//! Between `committed` (the low watermark) and `next` only the open offsets
//! (leased, waiting for a retry, being dead-lettered) are tracked, so the state
//! grows with the leases and retries, not with the acked messages. It is
//! persisted as a [`Progress`]: after a crash everything from `committed` on
//! that is not known to be done is delivered again (at-least-once).

use std::collections::{BTreeSet, HashMap};

use crate::messaging::offsets::{OpenOffset, Progress};

/// A message handed to a consumer until `deadline` (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Random per delivery: a receipt handle is valid only for its delivery.
    pub delivery_id: u64,
    pub deadline: i64,
    /// The consumer stream holding it.
    pub consumer: u64,
    pub bytes: u64,
    /// How the delivery ends when the lease runs out.
    pub ending: LeaseEnd,
    /// When it was leased (ms): renewals stop [`MAX_RENEWED`] after.
    pub leased_at: i64,
}

/// What a lease that runs out leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeaseEnd {
    /// Redelivered after the group's backoff.
    #[default]
    Backoff,
    /// Due at once: the consumer timed it (a RocketMQ client's
    /// ChangeInvisibleDuration, which is also how it nacks with the backoff
    /// the broker gave it). Never renewed.
    AtDeadline,
}

/// The longest a renewed lease is held in all: past it, a message a client
/// holds (or a receive whose answer was lost) is delivered again.
pub const MAX_RENEWED: i64 = 3_600_000;

/// What happened to a lease that ended without an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Scheduled for redelivery at this time.
    Retry { offset: u64, at: i64 },
    /// Delivered the maximum number of times: must go to the dead-letter topic,
    /// then be marked done.
    DeadLetter { offset: u64, attempts: u32 },
}

/// Progress of one subscription on one queue.
#[derive(Debug, Clone, Default)]
pub struct QueueCursor {
    committed: u64,
    next: u64,
    /// Offsets in `[committed, next)` that are not done.
    open: BTreeSet<u64>,
    leases: HashMap<u64, Lease>,
    /// `(deadline, offset)` of every lease: expiry and wake-up without a scan.
    deadlines: BTreeSet<(i64, u64)>,
    retry: BTreeSet<(i64, u64)>,
    /// Gray lane of each retry entry that was passed over (so consumers of
    /// other lanes skip it without reading it).
    lanes: HashMap<u64, String>,
    attempts: HashMap<u64, u32>,
}

/// Whether a consumer leaves a due retry entry alone: `(offset, its lane if it
/// was passed over)`.
pub type Skip<'a> = &'a dyn Fn(u64, Option<&str>) -> bool;

impl QueueCursor {
    /// A cursor whose progress starts at `committed`.
    pub fn new(committed: u64) -> Self {
        QueueCursor {
            committed,
            next: committed,
            ..QueueCursor::default()
        }
    }

    /// A cursor restored from a snapshot: its open offsets lost their leases
    /// with the restart and are due for redelivery now. Nothing at or past
    /// `queue_end` was delivered, so a saved high mark beyond it (a damaged
    /// file) cannot make the cursor skip messages still to come.
    pub fn restore(progress: &Progress, queue_end: u64) -> Self {
        let mut c = QueueCursor::new(progress.committed);
        c.next = progress.high.min(queue_end).max(progress.committed);
        for o in progress
            .open
            .iter()
            .filter(|o| (c.committed..c.next).contains(&o.offset))
        {
            c.open.insert(o.offset);
            c.retry.insert((0, o.offset));
            if o.attempts > 0 {
                c.attempts.insert(o.offset, o.attempts);
            }
        }
        c.advance();
        c
    }

    /// What to persist: bounded by the open offsets.
    pub fn snapshot(&self) -> Progress {
        Progress {
            committed: self.committed,
            high: self.next,
            open: self
                .open
                .iter()
                .map(|&offset| OpenOffset {
                    offset,
                    attempts: self.attempts.get(&offset).copied().unwrap_or(0),
                })
                .collect(),
        }
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }
    pub fn in_flight(&self) -> usize {
        self.leases.len()
    }
    pub fn leases(&self) -> impl Iterator<Item = (&u64, &Lease)> {
        self.leases.iter()
    }
    /// Delivery counts of offsets not yet done.
    pub fn attempts(&self) -> &HashMap<u64, u32> {
        &self.attempts
    }

    /// The next offset to deliver, if any is due now: a due retry first (except
    /// those this consumer `passed_over`), then the oldest never-delivered offset
    /// below `max_offset`. `ordered` (FIFO) delivers
    /// one message of the queue at a time: nothing new while a message is leased
    /// or waiting for its redelivery, so a queue's messages (and thus each
    /// sharding key's) are handled strictly in order.
    pub fn candidate(
        &mut self,
        now: i64,
        max_offset: u64,
        ordered: bool,
        skip: Skip,
    ) -> Option<u64> {
        if ordered && !self.leases.is_empty() {
            return None;
        }
        for &(due, offset) in &self.retry {
            if due > now {
                if ordered {
                    return None;
                }
                break;
            }
            if !skip(offset, self.lanes.get(&offset).map(String::as_str)) {
                return Some(offset);
            }
        }
        (self.next < max_offset).then_some(self.next)
    }

    /// Leaves a candidate for another consumer (gray lanes): it becomes due now
    /// for everyone, without counting a delivery. True when it was not waiting
    /// already (so the others need waking).
    pub fn pass_over(&mut self, offset: u64, now: i64, lane: &str) -> bool {
        self.take(offset);
        self.lanes.insert(offset, lane.to_string());
        if self.retry.iter().any(|(_, o)| *o == offset) {
            return false;
        }
        self.retry.insert((now, offset));
        true
    }

    /// Leases `offset` (a [`Self::candidate`]); returns its delivery attempt (1-based).
    pub fn lease(&mut self, offset: u64, lease: Lease) -> u32 {
        self.retry.retain(|(_, o)| *o != offset);
        self.lanes.remove(&offset);
        self.take(offset);
        let attempts = self.attempts.entry(offset).or_insert(0);
        *attempts += 1;
        let attempt = *attempts;
        self.insert_lease(offset, lease);
        attempt
    }

    /// Moves the never-delivered position past `offset`; what it passes is open.
    fn take(&mut self, offset: u64) {
        while self.next <= offset {
            self.open.insert(self.next);
            self.next += 1;
        }
    }

    fn insert_lease(&mut self, offset: u64, lease: Lease) {
        if let Some(old) = self.leases.insert(offset, lease) {
            self.deadlines.remove(&(old.deadline, offset));
        }
        self.deadlines.insert((lease.deadline, offset));
    }

    fn remove_lease(&mut self, offset: u64) -> Option<Lease> {
        let lease = self.leases.remove(&offset)?;
        self.deadlines.remove(&(lease.deadline, offset));
        Some(lease)
    }

    /// Skips an offset that can no longer be read (deleted by retention, corrupt).
    pub fn skip(&mut self, offset: u64) {
        self.retry.retain(|(_, o)| *o != offset);
        self.take(offset);
        self.mark_done(offset);
    }

    /// Moves the never-delivered position up to `min` (older offsets are gone);
    /// returns the leases that ended with them.
    pub fn skip_below(&mut self, min: u64) -> Vec<Lease> {
        let mut dropped = Vec::new();
        if self.committed < min {
            let kept = self.open.split_off(&min);
            for o in std::mem::replace(&mut self.open, kept) {
                dropped.extend(self.remove_lease(o));
                self.attempts.remove(&o);
            }
            self.retry.retain(|(_, o)| *o >= min);
            self.lanes.retain(|o, _| *o >= min);
            self.committed = min;
            self.next = self.next.max(min);
            self.advance();
        }
        dropped
    }

    /// The lease for `offset` if `delivery_id` matches it.
    pub fn lease_of(&self, offset: u64, delivery_id: u64) -> Option<&Lease> {
        self.leases
            .get(&offset)
            .filter(|l| l.delivery_id == delivery_id)
    }

    /// Ends a lease with an ack. Returns the lease, or `None` if the handle is
    /// not (or no longer) valid.
    pub fn ack(&mut self, offset: u64, delivery_id: u64) -> Option<Lease> {
        self.lease_of(offset, delivery_id)?;
        let lease = self.remove_lease(offset);
        self.mark_done(offset);
        lease
    }

    /// Moves a lease's deadline; `None` if the handle is not valid.
    pub fn extend(
        &mut self,
        offset: u64,
        delivery_id: u64,
        deadline: i64,
        ending: LeaseEnd,
    ) -> Option<Lease> {
        let mut lease = *self.lease_of(offset, delivery_id)?;
        lease.deadline = deadline;
        lease.ending = ending;
        self.insert_lease(offset, lease);
        Some(lease)
    }

    /// Moves the end of the leases `consumer` holds to `deadline` (a client
    /// asked the broker to renew what it holds): not those it timed itself,
    /// nor those already run out or held for [`MAX_RENEWED`].
    pub fn renew(&mut self, consumer: u64, now: i64, deadline: i64) {
        let held: Vec<(u64, Lease)> = self
            .leases
            .iter()
            .filter(|(_, l)| {
                l.consumer == consumer
                    && l.ending == LeaseEnd::Backoff
                    && l.deadline > now
                    && l.deadline < deadline
                    && now - l.leased_at < MAX_RENEWED
            })
            .map(|(o, l)| (*o, *l))
            .collect();
        for (offset, mut lease) in held {
            lease.deadline = deadline;
            self.insert_lease(offset, lease);
        }
    }

    /// Ends a lease without an ack (nack, expiry, consumer gone): schedules a retry
    /// after `backoff_ms(attempts)`, or asks for dead-lettering after
    /// `max_attempts` deliveries.
    pub fn release(
        &mut self,
        offset: u64,
        now: i64,
        max_attempts: u32,
        backoff_ms: impl Fn(u32) -> i64,
    ) -> Option<(Lease, Released)> {
        let lease = self.remove_lease(offset)?;
        let attempts = self.attempts.get(&offset).copied().unwrap_or(1);
        if attempts >= max_attempts {
            return Some((lease, Released::DeadLetter { offset, attempts }));
        }
        let at = if lease.ending == LeaseEnd::AtDeadline && lease.deadline <= now {
            now // ran out at the time the consumer chose
        } else {
            now + backoff_ms(attempts)
        };
        self.retry.insert((at, offset));
        Some((lease, Released::Retry { offset, at }))
    }

    /// Schedules a released offset for (re)delivery at `at` (e.g. after a failed
    /// dead-letter write).
    pub fn retry_at(&mut self, offset: u64, at: i64) {
        self.retry.insert((at, offset));
    }

    /// Offsets waiting for a scheduled redelivery.
    pub fn retry_pending(&self) -> usize {
        self.retry.len()
    }

    /// Leases whose deadline has passed.
    pub fn expired(&self, now: i64) -> Vec<u64> {
        self.deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, o)| *o)
            .collect()
    }

    /// Marks an offset finished (acked or dead-lettered).
    pub fn mark_done(&mut self, offset: u64) {
        self.attempts.remove(&offset);
        self.lanes.remove(&offset);
        if self.open.remove(&offset) {
            self.advance();
        }
    }

    /// The watermark moves up to the first open offset.
    fn advance(&mut self) {
        self.committed = self.open.first().copied().unwrap_or(self.next);
    }

    /// The earliest future moment something becomes due (retry or lease end).
    pub fn next_wake(&self) -> Option<i64> {
        self.next_wake_except(&|_, _| false)
    }

    /// When the first lease runs out.
    pub fn lease_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    /// [`Self::next_wake`] ignoring retries the asking consumer passed over
    /// (they wait for other consumers, not for time).
    pub fn next_wake_except(&self, skip: Skip) -> Option<i64> {
        let retry = self
            .retry
            .iter()
            .find(|(_, o)| !skip(*o, self.lanes.get(o).map(String::as_str)))
            .map(|(at, _)| *at);
        retry.into_iter().chain(self.lease_deadline()).min()
    }

    /// Starts over at `offset`, forgetting leases, retries and done marks.
    pub fn reset(&mut self, offset: u64) -> Vec<Lease> {
        let leases = self.leases.drain().map(|(_, l)| l).collect();
        *self = QueueCursor {
            committed: offset,
            next: offset,
            ..QueueCursor::default()
        };
        leases
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: u64) -> Lease {
        Lease {
            delivery_id: id,
            deadline: 1000,
            consumer: 1,
            bytes: 10,
            ending: LeaseEnd::Backoff,
            leased_at: 0,
        }
    }

    #[test]
    fn acks_out_of_order_move_the_watermark_only_over_a_done_prefix() {
        let mut c = QueueCursor::new(0);
        for o in 0..3 {
            assert_eq!(c.candidate(0, 10, false, &|_, _| false), Some(o));
            assert_eq!(c.lease(o, lease(o + 100)), 1);
        }
        assert!(c.ack(1, 101).is_some());
        assert_eq!(c.committed(), 0);
        assert!(c.ack(1, 101).is_none(), "second ack of the same handle");
        assert!(c.ack(0, 999).is_none(), "wrong delivery id");
        assert!(c.ack(0, 100).is_some());
        assert_eq!(c.committed(), 2);
        assert!(c.ack(2, 102).is_some());
        assert_eq!(c.committed(), 3);
        assert_eq!(c.candidate(0, 3, false, &|_, _| false), None);
    }

    #[test]
    fn a_lease_the_consumer_timed_is_due_when_it_runs_out_and_renewals_skip_it() {
        let backoff = |_| 1000;
        let mut c = QueueCursor::new(0);
        c.candidate(0, 2, false, &|_, _| false);
        c.lease(0, lease(1));
        c.candidate(0, 2, false, &|_, _| false);
        c.lease(
            1,
            Lease {
                consumer: 2,
                deadline: 5000,
                ..lease(2)
            },
        );
        // Extended to 1500, it runs out then: due at once, no backoff on top.
        assert!(c.extend(0, 1, 1500, LeaseEnd::AtDeadline).is_some());
        assert_eq!(c.expired(1500), vec![0]);
        let (_, r) = c.release(0, 1500, 5, backoff).unwrap();
        assert_eq!(
            r,
            Released::Retry {
                offset: 0,
                at: 1500
            }
        );
        // Nacked before it runs out: the backoff applies.
        c.candidate(1500, 2, false, &|_, _| false);
        c.lease(0, lease(3));
        assert!(c.extend(0, 3, 5000, LeaseEnd::AtDeadline).is_some());
        let (_, r) = c.release(0, 2000, 5, backoff).unwrap();
        assert_eq!(
            r,
            Released::Retry {
                offset: 0,
                at: 3000
            }
        );
        // Renewal moves consumer 2's lease only, and never backwards.
        c.renew(2, 2000, 9000);
        assert_eq!(c.lease_of(1, 2).unwrap().deadline, 9000);
        c.renew(2, 2000, 10);
        assert_eq!(c.lease_of(1, 2).unwrap().deadline, 9000);
        // Not a lease the consumer timed, nor one run out, nor one held too long.
        assert!(c.extend(1, 2, 9500, LeaseEnd::AtDeadline).is_some());
        c.renew(2, 2000, 20_000);
        assert_eq!(c.lease_of(1, 2).unwrap().deadline, 9500);
        assert!(c.extend(1, 2, 9500, LeaseEnd::Backoff).is_some());
        c.renew(2, 9600, 20_000);
        assert_eq!(c.lease_of(1, 2).unwrap().deadline, 9500, "run out");
        assert!(
            c.extend(1, 2, MAX_RENEWED + 5000, LeaseEnd::Backoff)
                .is_some()
        );
        c.renew(2, MAX_RENEWED + 1, MAX_RENEWED + 9000);
        assert_eq!(
            c.lease_of(1, 2).unwrap().deadline,
            MAX_RENEWED + 5000,
            "held too long"
        );
    }

    #[test]
    fn release_retries_with_backoff_then_dead_letters() {
        let mut c = QueueCursor::new(0);
        let backoff = |a: u32| a as i64 * 100;
        assert_eq!(c.candidate(0, 1, false, &|_, _| false), Some(0));
        c.lease(0, lease(1));
        let (_, r) = c.release(0, 50, 3, backoff).unwrap();
        assert_eq!(r, Released::Retry { offset: 0, at: 150 });
        assert_eq!(
            c.candidate(149, 1, false, &|_, _| false),
            None,
            "not due yet"
        );
        assert_eq!(c.next_wake(), Some(150));
        assert_eq!(c.candidate(150, 1, false, &|_, _| false), Some(0));
        assert_eq!(c.lease(0, lease(2)), 2);
        c.release(0, 200, 3, backoff).unwrap();
        assert_eq!(c.candidate(400, 1, false, &|_, _| false), Some(0));
        assert_eq!(c.lease(0, lease(3)), 3);
        let (_, r) = c.release(0, 500, 3, backoff).unwrap();
        assert_eq!(
            r,
            Released::DeadLetter {
                offset: 0,
                attempts: 3
            }
        );
        assert_eq!(
            c.candidate(10_000, 1, false, &|_, _| false),
            None,
            "dead-lettering is in progress"
        );
        c.mark_done(0);
        assert_eq!(c.committed(), 1);
    }

    #[test]
    fn passed_over_messages_go_to_the_next_consumer_without_an_attempt() {
        let mut c = QueueCursor::new(0);
        assert_eq!(c.candidate(0, 3, false, &|_, _| false), Some(0));
        c.pass_over(0, 5, "canary");
        assert_eq!(
            c.candidate(5, 3, false, &|_, lane| lane == Some("canary")),
            Some(1),
            "a consumer of another lane moves on without reading it"
        );
        assert_eq!(
            c.candidate(5, 3, false, &|_, _| false),
            Some(0),
            "others get it first"
        );
        assert_eq!(c.lease(0, lease(1)), 1, "passing over is not a delivery");
    }

    #[test]
    fn ordered_queues_hold_one_message_at_a_time() {
        let mut c = QueueCursor::new(0);
        assert_eq!(c.candidate(0, 5, true, &|_, _| false), Some(0));
        c.lease(0, lease(1));
        assert_eq!(
            c.candidate(0, 5, true, &|_, _| false),
            None,
            "0 is in flight"
        );
        c.release(0, 10, 16, |_| 100).unwrap();
        assert_eq!(
            c.candidate(50, 5, true, &|_, _| false),
            None,
            "0 waits for its redelivery; 1 must not overtake it"
        );
        assert_eq!(c.candidate(110, 5, true, &|_, _| false), Some(0));
        c.lease(0, lease(2));
        c.ack(0, 2).unwrap();
        assert_eq!(c.candidate(110, 5, true, &|_, _| false), Some(1));
    }

    #[test]
    fn snapshot_holds_only_open_offsets_and_restores_them_due() {
        let mut c = QueueCursor::new(0);
        for o in 0..1000 {
            assert_eq!(c.candidate(0, 1000, false, &|_, _| false), Some(o));
            c.lease(o, lease(o + 1));
        }
        for o in (0..1000).filter(|o| *o != 2 && *o != 7) {
            c.ack(o, o + 1).unwrap();
        }
        c.release(7, 0, 16, |_| 100).unwrap();
        let snapshot = c.snapshot();
        assert_eq!(
            snapshot,
            Progress {
                committed: 2,
                high: 1000,
                open: vec![
                    OpenOffset {
                        offset: 2,
                        attempts: 1
                    },
                    OpenOffset {
                        offset: 7,
                        attempts: 1
                    },
                ],
            }
        );
        let mut c = QueueCursor::restore(&snapshot, u64::MAX);
        assert_eq!((c.committed(), c.in_flight()), (2, 0));
        assert_eq!(c.candidate(0, 1001, false, &|_, _| false), Some(2));
        assert_eq!(c.lease(2, lease(5)), 2, "attempts carried over");
        assert_eq!(c.candidate(0, 1001, false, &|_, _| false), Some(7));
        c.lease(7, lease(6));
        assert_eq!(
            c.candidate(0, 1001, false, &|_, _| false),
            Some(1000),
            "everything else below the high mark is done"
        );
        c.ack(2, 5).unwrap();
        assert_eq!(c.committed(), 7);
        c.ack(7, 6).unwrap();
        assert_eq!(c.committed(), 1000);
    }

    #[test]
    fn reset_and_skip_below() {
        let mut c = QueueCursor::new(0);
        c.lease(0, lease(1));
        assert_eq!(c.reset(10).len(), 1);
        assert_eq!((c.committed(), c.in_flight()), (10, 0));
        assert_eq!(c.candidate(0, 12, false, &|_, _| false), Some(10));
        c.lease(10, lease(2));
        c.skip_below(20);
        assert_eq!((c.committed(), c.in_flight()), (20, 0));
        assert_eq!(c.candidate(0, 25, false, &|_, _| false), Some(20));
    }
}
