//! The rules of DduoMQ replication, shared by the broker (which replicates and
//! acknowledges) and the operator (which records the in-sync set and elects
//! masters), and driven by the seeded election-safety simulation in `tests/`.
//!
//! Everything here is pure and deterministic: no I/O, no clocks. Time is a
//! caller-supplied [`Monotonic`] reading (a `Duration` since a fixed origin of
//! the caller's own monotonic clock), so no rule ever compares two machines'
//! clocks. See `docs/architecture.md`, "Replication".

pub mod acks;
pub mod controller;
pub mod epochs;
pub mod layout;
pub mod lease;
pub mod role;

pub use acks::{AckTracker, FollowerProgress, InSyncProposal};
pub use controller::{
    Decision, ElectionTiming, GroupRecord, MasterContact, MemberReport, MemberView,
    ProposalRejected, decide, elect, reelect, validate_proposal,
};
pub use epochs::{EpochError, EpochHistory, EpochStart, FollowFrom};
pub use layout::{GroupLayout, Placement, majority};
pub use lease::{FenceDeadline, MasterLease};
pub use role::{AssignedRole, MemberRole, Role, RoleChange, StoreCheck, role_change};

/// A member's index inside its group (0-based; `ordinal % factor`).
pub type MemberId = u32;

/// A reading of the caller's monotonic clock: the time since a fixed origin
/// (e.g. process start). Readings are only ever compared with readings of the
/// same clock.
pub type Monotonic = std::time::Duration;
