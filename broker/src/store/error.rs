//! Store errors. Every variant has a stable code (see [`StoreError::code`]) that the
//! gRPC layer turns into a documented reason, so clients can match on it.

use std::io;
use std::path::PathBuf;

use dduomq_proto::Reason;

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the storage engine can refuse or fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The encoded record is larger than `max_record_size`; nothing was written.
    #[error("record of {size} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },

    /// A topic name, key, tag or property breaks the naming rules; nothing was written.
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },

    /// A read asked for an offset that is not (or no longer) stored.
    #[error(
        "offset {offset} is out of range for {topic:?}/{queue_id}: valid offsets are {min}..={max} ({max} means 'next')"
    )]
    OffsetOutOfRange {
        topic: String,
        queue_id: u32,
        offset: u64,
        min: u64,
        max: u64,
    },

    /// The volume has no room for the next segment or index file; nothing was written.
    #[error("disk full while {context}: {source}")]
    DiskFull { context: String, source: io::Error },

    /// The volume is fuller than `disk_usage_limit` and `disk_full_policy` is
    /// `refuse`; nothing was written.
    #[error(
        "the data volume is {:.1}% full, above disk_usage_limit {:.1}%: new messages are refused until space is freed",
        usage * 100.0,
        limit * 100.0
    )]
    DiskUsageLimit { usage: f64, limit: f64 },

    /// A record failed validation (bad magic, length or CRC32C). Never returned as data.
    #[error("corrupt record at physical offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },

    /// The message id is malformed, or names another broker.
    #[error("invalid message id {id:?}: {reason}")]
    InvalidMessageId { id: String, reason: String },

    /// The message id is well-formed but no longer (or never) stored here.
    #[error("message {0} not found")]
    MessageNotFound(String),

    /// The configuration failed [`crate::store::StoreConfig::validate`].
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),

    /// The data directory's `FORMAT` file names a newer data format than this
    /// build reads, or is unreadable; nothing was written.
    #[error("{}: {problem}", path.display())]
    DataFormat { path: PathBuf, problem: String },

    /// A raw-log operation (replication: [`crate::store::Store::read_log`],
    /// `append_replicated`, `truncate_log`) named a position or carried bytes
    /// this log cannot take; nothing was changed.
    #[error("commit log at {position}: {problem}")]
    RawLog {
        position: u64,
        problem: RawLogProblem,
    },

    /// An epoch start that does not fit the epoch history; nothing was changed.
    #[error("epoch history: {0}")]
    Epoch(#[from] dduomq_replication::EpochError),

    /// The store is shutting down and takes no more appends.
    #[error("store is closed")]
    Closed,

    /// Any other I/O failure, with what the store was doing.
    #[error("I/O error while {context}: {source}")]
    Io { context: String, source: io::Error },
}

impl StoreError {
    /// A stable machine-readable code; documented in `docs/errors.md`.
    pub fn code(&self) -> Reason {
        match self {
            StoreError::RecordTooLarge { .. } => Reason::MessageTooLarge,
            StoreError::InvalidArgument { .. } => Reason::InvalidArgument,
            StoreError::OffsetOutOfRange { .. } => Reason::OffsetOutOfRange,
            StoreError::DiskFull { .. } | StoreError::DiskUsageLimit { .. } => Reason::DiskFull,
            StoreError::Corrupt { .. } => Reason::CorruptRecord,
            StoreError::InvalidMessageId { .. } => Reason::InvalidMessageId,
            StoreError::MessageNotFound(_) => Reason::MessageNotFound,
            StoreError::InvalidConfig(_) | StoreError::DataFormat { .. } => Reason::InvalidConfig,
            StoreError::RawLog { problem, .. } => problem.code(),
            StoreError::Epoch(_) => Reason::InvalidArgument,
            StoreError::Closed => Reason::StoreClosed,
            StoreError::Io { .. } => Reason::IoError,
        }
    }

    /// Wraps an I/O error with context, mapping `ENOSPC` to [`StoreError::DiskFull`].
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if is_disk_full(&source) {
            StoreError::DiskFull { context, source }
        } else {
            StoreError::Io { context, source }
        }
    }
}

/// What is wrong with a raw-log request, so that a follower can tell "start
/// elsewhere" from "the bytes are bad".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawLogProblem {
    /// The position is not stored: below the oldest segment or past the end.
    #[error("not stored here: the log holds {min}..{end}")]
    OutOfRange { min: u64, end: u64 },
    /// Replicated bytes must continue the log exactly where it ends.
    #[error("the log ends at {end}; replicated bytes must start there")]
    NotAtEnd { end: u64 },
    /// No valid frame starts at the position (it is inside a record, or the
    /// record there is damaged).
    #[error("not a frame boundary: {0}")]
    NotAFrame(String),
    /// A frame of a replicated chunk is invalid; the chunk was refused whole.
    #[error("invalid replicated frame: {0}")]
    BadFrame(String),
    /// Healing bytes must cover one range `Store::damaged_ranges` lists, or
    /// whole frames at its start.
    #[error("not a damaged range, or whole frames at the start of one")]
    NotDamaged,
    /// A truncation to this position failed part-way: nothing is written until
    /// a `truncate_log` to it (or below) succeeds, or the store is reopened.
    #[error("a truncation to here failed part-way; writes wait until it is finished")]
    TruncationUnfinished,
}

impl RawLogProblem {
    fn code(&self) -> Reason {
        match self {
            RawLogProblem::OutOfRange { .. } => Reason::OffsetOutOfRange,
            RawLogProblem::NotAtEnd { .. }
            | RawLogProblem::NotAFrame(_)
            | RawLogProblem::NotDamaged => Reason::InvalidArgument,
            RawLogProblem::BadFrame(_) => Reason::CorruptRecord,
            RawLogProblem::TruncationUnfinished => Reason::IoError,
        }
    }
}

fn is_disk_full(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || err.kind() == io::ErrorKind::StorageFull
}
