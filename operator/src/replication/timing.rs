//! The controller's lease timing, sized from the API server's latency
//! measured under load on the CI machine (`examples/api_latency.rs`; the
//! figures are in docs/architecture.md, "Replication: the controller"): a
//! round's GET took at most 150 ms (p99.9 75 ms) with `stress-ng --cpu 1`
//! on top of the other builds, so a round (GET + AssignRole bounded by
//! [`CALL_TIMEOUT`]) fits in [`RENEW_EVERY`], and a lease of four rounds
//! survives three slow or lost ones in a row without the master stepping
//! down, while a failed master is replaced within about lease + margin +
//! one round.
//!
//! A master is renewed every [`RENEW_EVERY`]; each round first reads the
//! group's record (one GET), so a master stays renewed as long as a round
//! completes within the lease. The lease covers several rounds plus the
//! slowest API answers seen under load, so a loaded API server does not make
//! masters flap.
//!
//! The margin covers a grant received after the controller's attempt ended
//! (a timed-out call whose request still arrives) plus clock-rate
//! differences. The broker cannot tell how old a request is without
//! comparing clocks, so this is an assumption, not enforced: an AssignRole is
//! received within [`CALL_TIMEOUT`] of being sent, or never. Hence the margin
//! exceeds the call timeout (checked at compile time below); the rest of it
//! (200 ms over a 4 s lease) is for clock rates.

use std::time::Duration;

/// How often every group's master is renewed (and replicas re-assigned).
pub const RENEW_EVERY: Duration = Duration::from_millis(1000);
/// The lease granted with each AssignRole to a master.
pub const LEASE: Duration = Duration::from_millis(4000);
/// Added to every fencing deadline.
pub const MARGIN: Duration = Duration::from_millis(1000);
/// Bound of one AssignRole call: a dead member costs a round at most this.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(800);
/// Bound of one read or compare-and-swap of a group's record: a stalled API
/// server costs a round this much, and the round then renews the record it
/// last read (a GET) or tries again next round (a write). Over three times
/// the slowest answer measured under load.
pub const RECORD_CALL_TIMEOUT: Duration = Duration::from_millis(500);

const _: () = assert!(
    MARGIN.as_millis() >= CALL_TIMEOUT.as_millis(),
    "a grant received up to a call timeout late must still lapse before the fencing deadline"
);
