//! Why a replicated broker refuses or fails a write.

use std::fmt;
use std::time::Duration;

use dduomq_proto::Reason;

/// Why a member cannot take or acknowledge a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotMasterCause {
    /// A replica follows the master; writes go there.
    Replica,
    /// No controller has assigned a role yet (a replicated broker starts so).
    Unassigned,
    /// The master's lease lapsed before the controller renewed it: a successor
    /// may be elected, so it acknowledges nothing.
    LeaseLapsed,
    /// The member stopped being master (a newer epoch) while the write waited
    /// for its acknowledgements.
    Deposed,
}

impl fmt::Display for NotMasterCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotMasterCause::Replica => "it is a replica",
            NotMasterCause::Unassigned => "no master is assigned yet",
            NotMasterCause::LeaseLapsed => "its master lease lapsed",
            NotMasterCause::Deposed => "it stopped being master before the write was acknowledged",
        })
    }
}

/// A refusal of a write by the replication layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    #[error(
        "member {member} of broker group {group} takes no writes: {cause}{}",
        master_hint(.master_address)
    )]
    NotMaster {
        group: u32,
        member: u32,
        cause: NotMasterCause,
        master_address: Option<String>,
    },
    #[error(
        "broker group {group} did not store the write on its in-sync set within {waited:?}; it was not acknowledged (retry)"
    )]
    QuorumTimeout { group: u32, waited: Duration },
}

fn master_hint(address: &Option<String>) -> String {
    match address {
        Some(a) => format!("; the master is at {a}"),
        None => String::new(),
    }
}

impl ReplicationError {
    /// The stable reason code.
    pub fn code(&self) -> Reason {
        match self {
            ReplicationError::NotMaster { .. } => Reason::NotMaster,
            ReplicationError::QuorumTimeout { .. } => Reason::QuorumTimeout,
        }
    }
}
