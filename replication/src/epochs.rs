//! The epoch history of a member's log: where each master's epoch began. It
//! is how a follower finds where its log diverges from its master's (Kafka's
//! OffsetsForLeaderEpoch): offsets written in the same epoch hold the same
//! bytes on every member, because one epoch has one master.

/// The first log position written in an epoch (mirrors the wire type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpochStart {
    pub epoch: u64,
    pub start_offset: u64,
}

/// Epochs in increasing order with non-decreasing start offsets. An epoch whose
/// successor starts at the same offset holds no records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    starts: Vec<EpochStart>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("epoch {epoch} is not newer than the latest epoch {latest}")]
    NotNewer { epoch: u64, latest: u64 },
    #[error("epoch {epoch} starts at {start_offset}, before epoch {latest} at {latest_start}")]
    StartsBeforeLatest {
        epoch: u64,
        start_offset: u64,
        latest: u64,
        latest_start: u64,
    },
    #[error("epoch 0 means \"no epoch\" and cannot begin")]
    ZeroEpoch,
}

/// The master's answer to a follower that says where its log ends and the
/// epoch of its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowFrom {
    /// The follower's log is a prefix of the master's: stream from `from`.
    /// The follower first drops its epochs starting at `from` or later
    /// ([`EpochHistory::truncate_from`]): they hold no records (it began them
    /// as a master that wrote nothing) and the chunks carry the master's.
    Stream { from: u64 },
    /// The follower's tail may diverge: `epoch` is the newest epoch of the
    /// master's history not newer than the follower's, and `offset` where it
    /// ends (capped at the follower's end). The follower truncates with
    /// [`EpochHistory::truncation_end`] and starts again; each round lowers its
    /// last epoch, so this converges.
    Truncate { offset: u64, epoch: u64 },
}

impl EpochHistory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A history read back from disk, checked for order.
    pub fn from_starts(starts: Vec<EpochStart>) -> Result<Self, EpochError> {
        let mut history = Self::new();
        for start in starts {
            history.begin(start.epoch, start.start_offset)?;
        }
        Ok(history)
    }

    pub fn starts(&self) -> &[EpochStart] {
        &self.starts
    }

    pub fn latest(&self) -> Option<EpochStart> {
        self.starts.last().copied()
    }

    /// The newest epoch in the history (0 when empty).
    pub fn latest_epoch(&self) -> u64 {
        self.latest().map_or(0, |start| start.epoch)
    }

    /// Record that `epoch` begins at `start_offset`. Repeating the latest entry
    /// is a no-op, so a follower may apply a chunk's epoch starts twice.
    pub fn begin(&mut self, epoch: u64, start_offset: u64) -> Result<(), EpochError> {
        if epoch == 0 {
            return Err(EpochError::ZeroEpoch);
        }
        if let Some(latest) = self.latest() {
            if latest
                == (EpochStart {
                    epoch,
                    start_offset,
                })
            {
                return Ok(());
            }
            if epoch <= latest.epoch {
                return Err(EpochError::NotNewer {
                    epoch,
                    latest: latest.epoch,
                });
            }
            if start_offset < latest.start_offset {
                return Err(EpochError::StartsBeforeLatest {
                    epoch,
                    start_offset,
                    latest: latest.epoch,
                    latest_start: latest.start_offset,
                });
            }
        }
        self.starts.push(EpochStart {
            epoch,
            start_offset,
        });
        Ok(())
    }

    /// Forget the epochs that start at or after `offset`, after the log was
    /// truncated to end there (they hold no records any more).
    pub fn truncate_from(&mut self, offset: u64) {
        self.starts.retain(|start| start.start_offset < offset);
    }

    /// The epoch of the record at `offset` (0 before the first epoch).
    pub fn epoch_at(&self, offset: u64) -> u64 {
        self.starts
            .iter()
            .take_while(|start| start.start_offset <= offset)
            .last()
            .map_or(0, |start| start.epoch)
    }

    /// The epoch of the last record of a log ending at `log_end` (0 when empty).
    pub fn last_record_epoch(&self, log_end: u64) -> u64 {
        match log_end {
            0 => 0,
            end => self.epoch_at(end - 1),
        }
    }

    /// Where `epoch` ends in this history: the start of the first newer epoch,
    /// or `log_end` when no newer epoch began. For an epoch this history never
    /// saw, that is where the next one it did see begins.
    pub fn end_of(&self, epoch: u64, log_end: u64) -> u64 {
        self.starts
            .iter()
            .find(|start| start.epoch > epoch)
            .map_or(log_end, |start| start.start_offset)
    }

    /// Master side: how a follower whose last record is of
    /// `follower_last_record_epoch` and whose log ends at `follower_end`
    /// continues on this (the master's) history.
    pub fn follow_from(
        &self,
        follower_last_record_epoch: u64,
        follower_end: u64,
        master_log_end: u64,
    ) -> FollowFrom {
        if follower_end == 0 {
            return FollowFrom::Stream { from: 0 };
        }
        let shared_epoch = self
            .starts
            .iter()
            .take_while(|start| start.epoch <= follower_last_record_epoch)
            .last()
            .map_or(0, |start| start.epoch);
        let shared_end = self.end_of(follower_last_record_epoch, master_log_end);
        if shared_epoch == follower_last_record_epoch && follower_end <= shared_end {
            FollowFrom::Stream { from: follower_end }
        } else {
            FollowFrom::Truncate {
                offset: follower_end.min(shared_end),
                epoch: shared_epoch,
            }
        }
    }

    /// Master side: the offset the follower keeps its log up to (the shared
    /// decision's min(follower end, end of that epoch on the master)).
    pub fn truncation_point(
        &self,
        follower_last_record_epoch: u64,
        follower_end: u64,
        master_log_end: u64,
    ) -> u64 {
        match self.follow_from(follower_last_record_epoch, follower_end, master_log_end) {
            FollowFrom::Stream { from } => from,
            FollowFrom::Truncate { offset, .. } => offset,
        }
    }

    /// Follower side: where its log must end after the master answered
    /// `Truncate { offset, epoch }`: also cut its own records of epochs newer
    /// than `epoch` below `offset`, which the master never had.
    pub fn truncation_end(&self, offset: u64, master_epoch: u64, own_end: u64) -> u64 {
        own_end.min(offset).min(self.end_of(master_epoch, own_end))
    }

    /// Follower side: whether cutting this log (ending at `own_end`) to end
    /// at `to` drops records of `epoch`. For the master's current epoch that
    /// must never happen: within one epoch only its master appends and its
    /// log only grows, so the followers hold a prefix of it; a master holding
    /// less of its own epoch than a follower lost data (e.g. its volume).
    pub fn cuts_epoch(&self, epoch: u64, to: u64, own_end: u64) -> bool {
        self.starts
            .iter()
            .find(|start| start.epoch == epoch)
            .is_some_and(|start| start.start_offset.max(to) < self.end_of(epoch, own_end))
    }

    /// The epochs that begin in `start..=end`: what a log chunk covering that
    /// range carries so the follower's history matches the master's.
    pub fn starts_within(&self, start: u64, end: u64) -> Vec<EpochStart> {
        self.starts
            .iter()
            .filter(|epoch| (start..=end).contains(&epoch.start_offset))
            .copied()
            .collect()
    }

    /// What a follower whose log begins at `offset` (it was empty, and the
    /// master no longer keeps what came before) needs: the epoch of the record
    /// there, with its true start, and every epoch beginning after it.
    /// Without the first, that follower's history would hold no epoch for
    /// its records until the next election.
    pub fn starts_for_log_beginning_at(&self, offset: u64) -> Vec<EpochStart> {
        let after = self.starts.partition_point(|s| s.start_offset <= offset);
        self.starts[after.saturating_sub(1)..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_beginning_late_gets_the_epoch_of_its_first_record() {
        let h = history(&[(1, 0), (3, 4096), (4, 9000)]);
        let starts = |offset| -> Vec<(u64, u64)> {
            h.starts_for_log_beginning_at(offset)
                .iter()
                .map(|s| (s.epoch, s.start_offset))
                .collect()
        };
        assert_eq!(starts(8192), vec![(3, 4096), (4, 9000)]);
        assert_eq!(starts(4096), vec![(3, 4096), (4, 9000)]);
        assert_eq!(starts(0), vec![(1, 0), (3, 4096), (4, 9000)]);
        assert_eq!(starts(20000), vec![(4, 9000)]);
        assert!(
            EpochHistory::new()
                .starts_for_log_beginning_at(4096)
                .is_empty()
        );
    }

    fn history(starts: &[(u64, u64)]) -> EpochHistory {
        let starts = starts
            .iter()
            .map(|&(epoch, start_offset)| EpochStart {
                epoch,
                start_offset,
            })
            .collect();
        EpochHistory::from_starts(starts).unwrap()
    }

    #[test]
    fn begin_checks_order_and_is_idempotent_for_the_latest() {
        let mut epochs = history(&[(1, 0), (3, 50)]);
        assert_eq!(epochs.begin(3, 50), Ok(()));
        assert_eq!(
            epochs.begin(2, 60),
            Err(EpochError::NotNewer {
                epoch: 2,
                latest: 3
            })
        );
        assert_eq!(
            epochs.begin(4, 40),
            Err(EpochError::StartsBeforeLatest {
                epoch: 4,
                start_offset: 40,
                latest: 3,
                latest_start: 50
            })
        );
        assert_eq!(epochs.begin(0, 60), Err(EpochError::ZeroEpoch));
        assert_eq!(epochs.begin(4, 50), Ok(()));
        assert_eq!(epochs.latest_epoch(), 4);
        assert_eq!(EpochHistory::new().latest_epoch(), 0);
    }

    #[test]
    fn epochs_of_records_and_ends_of_epochs() {
        let epochs = history(&[(1, 0), (3, 50), (4, 50), (6, 80)]);
        assert_eq!(epochs.epoch_at(49), 1);
        assert_eq!(epochs.epoch_at(50), 4, "epoch 3 holds no records");
        assert_eq!(epochs.last_record_epoch(80), 4);
        assert_eq!(epochs.last_record_epoch(81), 6);
        assert_eq!(epochs.last_record_epoch(0), 0);
        assert_eq!(epochs.end_of(1, 100), 50);
        assert_eq!(
            epochs.end_of(2, 100),
            50,
            "unknown epoch: where the next begins"
        );
        assert_eq!(epochs.end_of(4, 100), 80);
        assert_eq!(epochs.end_of(6, 100), 100);
        assert_eq!(epochs.starts_within(50, 80).len(), 3);
    }

    #[test]
    fn truncate_from_forgets_epochs_without_records() {
        let mut epochs = history(&[(1, 0), (3, 50), (4, 70)]);
        epochs.truncate_from(70);
        assert_eq!(epochs, history(&[(1, 0), (3, 50)]));
        epochs.truncate_from(20);
        assert_eq!(epochs, history(&[(1, 0)]));
    }

    #[test]
    fn a_follower_with_a_prefix_streams_on() {
        let master = history(&[(1, 0), (2, 50)]);
        assert_eq!(
            master.follow_from(1, 40, 90),
            FollowFrom::Stream { from: 40 }
        );
        assert_eq!(
            master.follow_from(1, 50, 90),
            FollowFrom::Stream { from: 50 }
        );
        assert_eq!(
            master.follow_from(2, 90, 90),
            FollowFrom::Stream { from: 90 }
        );
        assert_eq!(master.follow_from(0, 0, 90), FollowFrom::Stream { from: 0 });
    }

    #[test]
    fn a_former_master_truncates_to_the_new_epoch_boundary() {
        // Old master wrote epoch 1 up to 70; the new master's epoch 2 began at 50.
        let master = history(&[(1, 0), (2, 50)]);
        let former = history(&[(1, 0)]);
        let answer = master.follow_from(1, 70, 90);
        assert_eq!(
            answer,
            FollowFrom::Truncate {
                offset: 50,
                epoch: 1
            }
        );
        assert_eq!(master.truncation_point(1, 70, 90), 50);
        assert_eq!(former.truncation_end(50, 1, 70), 50);
    }

    #[test]
    fn a_follower_with_an_epoch_the_master_never_saw_cuts_it_whole() {
        // The follower was master of epoch 2 from 50 (wrote to 60); the master
        // kept epoch 1 records to 70 and began epoch 3 there.
        let master = history(&[(1, 0), (3, 70)]);
        let follower = history(&[(1, 0), (2, 50)]);
        let FollowFrom::Truncate { offset, epoch } = master.follow_from(2, 60, 90) else {
            panic!("epoch 2 is not the master's");
        };
        assert_eq!((offset, epoch), (60, 1));
        let end = follower.truncation_end(offset, epoch, 60);
        assert_eq!(end, 50);
        let mut follower = follower;
        follower.truncate_from(end);
        assert_eq!(
            master.follow_from(follower.last_record_epoch(end), end, 90),
            FollowFrom::Stream { from: 50 }
        );
    }

    #[test]
    fn a_follower_ahead_of_the_master_in_the_same_epoch_truncates_to_its_end() {
        let master = history(&[(1, 0)]);
        assert_eq!(
            master.follow_from(1, 120, 100),
            FollowFrom::Truncate {
                offset: 100,
                epoch: 1
            }
        );
    }

    #[test]
    fn a_cut_into_an_epoch_is_seen() {
        let h = history(&[(1, 0), (2, 100), (4, 300)]);
        assert!(h.cuts_epoch(1, 50, 400), "inside epoch 1");
        assert!(!h.cuts_epoch(1, 100, 400), "at its end: epoch 1 kept whole");
        assert!(h.cuts_epoch(2, 0, 400), "epoch 2 lies above the cut");
        assert!(!h.cuts_epoch(3, 0, 400), "an epoch this log never saw");
        assert!(h.cuts_epoch(4, 350, 400));
        assert!(!h.cuts_epoch(4, 400, 400), "nothing cut");
        // The lost-volume case: the master of epoch 1 holds 405 bytes, the
        // follower 1,600,000 of epoch 1.
        let follower = history(&[(1, 0)]);
        let to = follower.truncation_end(405, 1, 1_600_000);
        assert_eq!(to, 405);
        assert!(follower.cuts_epoch(1, to, 1_600_000));
        // A master re-elected at a new epoch after a restart that lost an
        // unflushed tail: the follower cuts only the old epoch's tail.
        let master = history(&[(1, 0), (2, 900)]);
        let FollowFrom::Truncate { offset, epoch } = master.follow_from(1, 1000, 950) else {
            panic!("the follower's tail diverges");
        };
        assert_eq!((offset, epoch), (900, 1));
        let to = follower.truncation_end(offset, epoch, 1000);
        assert!(
            !follower.cuts_epoch(2, to, 1000),
            "epoch 2 is the master's current one"
        );
    }
}
