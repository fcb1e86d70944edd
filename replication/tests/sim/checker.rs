//! The invariants, checked as the simulation runs:
//! 1. every acknowledged record is in the log of every master when it begins
//!    its epoch;
//! 2. two members never acknowledge in the same epoch;
//! 3. a follower streams only from a point below which its log equals the
//!    master's (a returning former master truncated to the epoch boundary);
//! 4. fencing: no master acknowledges once a master of a newer epoch began.

use std::collections::BTreeMap;

use dduomq_replication::MemberId;

use super::net::{Entry, Time};

#[derive(Debug, Clone, Copy)]
struct Acked {
    offset: u64,
    id: u64,
}

#[derive(Debug, Default)]
pub struct Checker {
    acked: Vec<Acked>,
    acking_member: BTreeMap<u64, MemberId>,
    newest_begun_epoch: u64,
    pub violation: Option<String>,
}

impl Checker {
    pub fn acked(&self) -> usize {
        self.acked.len()
    }

    fn fail(&mut self, at: Time, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("at {at} ms: {what}"));
        }
    }

    /// Invariant 1, and the start of epoch `epoch` for invariant 4.
    pub fn master_begins(&mut self, at: Time, member: MemberId, epoch: u64, log: &[Entry]) {
        let missing = self
            .acked
            .iter()
            .find(|acked| log.get(acked.offset as usize).map(|e| e.id) != Some(acked.id))
            .copied();
        if let Some(acked) = missing {
            self.fail(
                at,
                format!(
                    "invariant 1: member {member} begins epoch {epoch} without acknowledged record {} at offset {}",
                    acked.id, acked.offset
                ),
            );
        }
        self.newest_begun_epoch = self.newest_begun_epoch.max(epoch);
    }

    /// Invariants 2 and 4 for one acknowledgement.
    pub fn acknowledged(&mut self, at: Time, member: MemberId, epoch: u64, offset: u64, id: u64) {
        let first = *self.acking_member.entry(epoch).or_insert(member);
        if first != member {
            self.fail(
                at,
                format!(
                    "invariant 2: members {first} and {member} both acknowledged in epoch {epoch}"
                ),
            );
        }
        if self.newest_begun_epoch > epoch {
            self.fail(
                at,
                format!(
                    "invariant 4: member {member} acknowledged record {id} in epoch {epoch} after epoch {} began",
                    self.newest_begun_epoch
                ),
            );
        }
        self.acked.push(Acked { offset, id });
    }

    /// Invariant 3: the master streams to `follower` from `from`.
    pub fn streams(
        &mut self,
        at: Time,
        follower: MemberId,
        from: u64,
        follower_log: &[Entry],
        master_log: &[Entry],
    ) {
        let from = from as usize;
        if follower_log.get(..from) != master_log.get(..from) {
            self.fail(
                at,
                format!("invariant 3: member {follower} follows from {from} but its log differs from the master's below"),
            );
        }
    }

    /// Something the rules promise never happens (e.g. an epoch history
    /// rejecting what the master sent).
    pub fn broken(&mut self, at: Time, what: String) {
        self.fail(at, what);
    }
}
