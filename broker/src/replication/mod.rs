//! Replication inside a broker group: one master and its replicas hold the
//! same commit log byte for byte (see docs/architecture.md, "Replication").
//!
//! ```text
//! config.rs    the [replication] table; group and member of a broker
//! error.rs     NOT_MASTER and QUORUM_TIMEOUT refusals
//! ```

mod config;
mod error;

pub use config::{AckPolicy, Placement, ReplicationConfig};
pub use error::{NotMasterCause, ReplicationError};
