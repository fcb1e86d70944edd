//! Why a replicated broker refuses or fails a write, or serves no consumers.

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
    /// The member was made master and is still taking over (metadata applied,
    /// dedupe windows and staged messages rebuilt from the log).
    Promoting,
}

impl fmt::Display for NotMasterCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotMasterCause::Replica => "it is a replica",
            NotMasterCause::Unassigned => "no master is assigned yet",
            NotMasterCause::LeaseLapsed => "its master lease lapsed",
            NotMasterCause::Deposed => "it stopped being master before the write was acknowledged",
            NotMasterCause::Promoting => "it is taking over as master",
        })
    }
}

/// A refusal by the replication layer: of a write, or of a consumer.
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
        "member {member} of broker group {group} serves no consumers while it follows the master{}",
        master_hint(.master_address)
    )]
    ConsumersAtMaster {
        group: u32,
        member: u32,
        master_address: Option<String>,
    },
    #[error(
        "member {member} of broker group {group} serves no consumers until a master tells it which records are acknowledged"
    )]
    ConsumersNotReady { group: u32, member: u32 },
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
            ReplicationError::NotMaster {
                cause: NotMasterCause::Promoting,
                ..
            } => Reason::MasterTakingOver,
            ReplicationError::NotMaster { .. }
            | ReplicationError::ConsumersAtMaster { .. }
            | ReplicationError::ConsumersNotReady { .. } => Reason::NotMaster,
            ReplicationError::QuorumTimeout { .. } => Reason::QuorumTimeout,
        }
    }
}
