//! Leases that fence a master without comparing two machines' clocks: the
//! master counts its lease from when it RECEIVED the grant, the controller
//! counts its fencing deadline from when its last attempt to renew ENDED, plus
//! a margin, so the master's lease lapses first. The margin must cover how
//! late after the attempt ended a grant may still be received (assumed: at
//! most the call timeout; nothing enforces it) plus clock-rate differences.

use std::time::Duration;

use crate::Monotonic;

/// The master's side: it acknowledges writes only while the lease is valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MasterLease {
    expires_at: Option<Monotonic>,
}

impl MasterLease {
    /// Extend the lease by a grant of `lease` received at `received_at`. A
    /// grant never shortens the lease (a reordered older grant is harmless).
    pub fn grant(&mut self, received_at: Monotonic, lease: Duration) {
        let expires_at = received_at + lease;
        self.expires_at = Some(self.expires_at.map_or(expires_at, |e| e.max(expires_at)));
    }

    /// Drop the lease at once (the member was assigned another role or epoch).
    pub fn revoke(&mut self) {
        self.expires_at = None;
    }

    pub fn valid(&self, now: Monotonic) -> bool {
        self.expires_at.is_some_and(|expires_at| now < expires_at)
    }

    pub fn remaining(&self, now: Monotonic) -> Duration {
        self.expires_at
            .map_or(Duration::ZERO, |expires_at| expires_at.saturating_sub(now))
    }
}

/// The controller's side, per master: no successor is elected before
/// `end of the last renewal attempt + lease + margin`, the latest moment the
/// master's lease may still hold whatever happened to that attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FenceDeadline {
    last_attempt_end: Option<Monotonic>,
}

impl FenceDeadline {
    /// An AssignRole attempt to the master ended at `at`: a reply arrived, or
    /// it failed or timed out (it may still have been received).
    pub fn attempt_ended(&mut self, at: Monotonic) {
        self.last_attempt_end = Some(self.last_attempt_end.map_or(at, |last| last.max(at)));
    }

    pub fn last_attempt_end(&self) -> Option<Monotonic> {
        self.last_attempt_end
    }

    /// When the master's lease has surely lapsed (`None`: this controller
    /// never granted one; see [`crate::ElectionTiming::not_before`] for those
    /// granted by a previous controller).
    pub fn deadline(&self, lease: Duration, margin: Duration) -> Option<Monotonic> {
        self.last_attempt_end.map(|end| end + lease + margin)
    }

    pub fn passed(&self, now: Monotonic, lease: Duration, margin: Duration) -> bool {
        self.deadline(lease, margin)
            .is_none_or(|deadline| now >= deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lease_counts_from_receipt_and_never_shrinks() {
        let mut lease = MasterLease::default();
        assert!(!lease.valid(ms(0)));
        lease.grant(ms(100), ms(1000));
        assert!(lease.valid(ms(1099)));
        assert!(!lease.valid(ms(1100)));
        assert_eq!(lease.remaining(ms(600)), ms(500));
        lease.grant(ms(50), ms(1000));
        assert!(
            lease.valid(ms(1099)),
            "an older grant received late keeps the longer lease"
        );
        lease.revoke();
        assert!(!lease.valid(ms(101)));
        assert_eq!(lease.remaining(ms(101)), Duration::ZERO);
    }

    #[test]
    fn fence_deadline_counts_from_the_end_of_the_last_attempt() {
        let mut fence = FenceDeadline::default();
        assert!(fence.passed(ms(0), ms(1000), ms(200)));
        fence.attempt_ended(ms(300));
        fence.attempt_ended(ms(250));
        assert_eq!(fence.deadline(ms(1000), ms(200)), Some(ms(1500)));
        assert!(!fence.passed(ms(1499), ms(1000), ms(200)));
        assert!(fence.passed(ms(1500), ms(1000), ms(200)));
    }

    #[test]
    fn a_lease_received_before_the_attempt_ended_lapses_before_the_deadline() {
        let (lease_for, margin) = (ms(1000), ms(1));
        let mut lease = MasterLease::default();
        let mut fence = FenceDeadline::default();
        lease.grant(ms(40), lease_for);
        fence.attempt_ended(ms(40));
        let deadline = fence.deadline(lease_for, margin).unwrap();
        assert!(!lease.valid(deadline));
    }
}
