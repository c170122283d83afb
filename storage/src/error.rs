//! `storage::Error`: every expected failure, typed, with what the caller needs to act.

use std::io;
use std::path::PathBuf;

/// An error from the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error outside the append path (opening, listing, reading).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A file in a shard directory that is not a chainlog segment. Nothing is deleted: move it.
    #[error("{}: unexpected file in the data directory (not a chainlog segment); move it away", path.display())]
    UnexpectedFile {
        /// The file.
        path: PathBuf,
    },
    /// A segment written by a newer format version than this build reads.
    #[error("{}: written in format version {found}; this build reads versions up to {supported}", path.display())]
    UnsupportedVersion {
        /// The segment.
        path: PathBuf,
        /// The version found.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// Committed data is damaged (never silently truncated).
    #[error("{}: corrupt at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment (or directory).
        path: PathBuf,
        /// Byte offset of the damage in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record (or a batch) over the configured limit.
    #[error("{len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The size asked for.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A record's payload does not match its CRC32C (end-to-end checksum).
    #[error("record {index} of the batch fails its checksum")]
    Checksum {
        /// The record's index in the batch.
        index: usize,
    },
    /// A conditional append whose expected LSN is not the log's next LSN.
    #[error("condition failed: the log's next LSN is {tail}")]
    ConditionFailed {
        /// The log's next LSN.
        tail: u64,
    },
    /// The append's fencing token is lower than the log's.
    #[error("fenced: the log's fencing token is {token}")]
    Fenced {
        /// The log's fencing token.
        token: u64,
    },
    /// The writer's sequence number is neither above its last batch's nor one of its
    /// remembered batches (a reordered or too old retry): appending it would reorder the
    /// writer's batches, and its original LSNs are not known.
    #[error("writer sequence number {seq} is out of order: the writer's last is {last}")]
    WriterSeq {
        /// The sequence number asked for.
        seq: u64,
        /// The writer's last sequence number.
        last: u64,
    },
    /// A replica append whose first LSN is not the log's next LSN: nothing was written. Send
    /// again from `expected` (records below it are here already, those from it on missing).
    #[error("gap: the log's next LSN is {expected}")]
    Gap {
        /// The log's next LSN.
        expected: u64,
    },
    /// Encoded records that do not add up (a caller bug or bad input).
    #[error("malformed batch: {0}")]
    Malformed(&'static str),
    /// An append with no records.
    #[error("a batch needs at least one record")]
    EmptyBatch,
    /// The log id is reserved for the store's own use.
    #[error("log id {0} is reserved")]
    ReservedLog(u64),
    /// No such log in this store.
    #[error("unknown log {0}")]
    UnknownLog(u64),
    /// The records asked for are below the log's trim point.
    #[error("records below {trim_point} are trimmed")]
    Trimmed {
        /// The first LSN still present.
        trim_point: u64,
    },
    /// A trim beyond the end of the log.
    #[error("cannot trim before {before}: the log's tail is {tail}")]
    TrimBeyondTail {
        /// The requested trim point.
        before: u64,
        /// The log's next LSN.
        tail: u64,
    },
    /// A truncation beyond the end of the log.
    #[error("cannot truncate from {from}: the log's tail is {tail}")]
    TruncateBeyondTail {
        /// The requested LSN.
        from: u64,
        /// The log's next LSN.
        tail: u64,
    },
    /// Every write buffer is in use, or every slot for a read waiting for the disk: retry
    /// after the next completion.
    #[error("overloaded: all write buffers or read slots are in use")]
    Overloaded,
    /// The shard has as many logs as it can hold.
    #[error("too many logs in this shard (limit {max})")]
    TooManyLogs {
        /// The limit.
        max: usize,
    },
    /// A write or flush failed: the store acknowledges nothing more. The process should stop
    /// ([`fatal`](crate::fatal::fatal)).
    #[error("storage failed, nothing more is acknowledged: {0}")]
    Fatal(String),
    /// The configuration is not usable.
    #[error("invalid storage configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Overloaded)
    }

    /// A stable snake_case name of the error's kind, for metrics and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::UnexpectedFile { .. } => "unexpected_file",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::Corrupt { .. } => "corrupt",
            Error::TooLarge { .. } => "too_large",
            Error::Checksum { .. } => "checksum",
            Error::ConditionFailed { .. } => "condition_failed",
            Error::Fenced { .. } => "fenced",
            Error::WriterSeq { .. } => "writer_seq",
            Error::Gap { .. } => "gap",
            Error::Malformed(_) => "malformed",
            Error::EmptyBatch => "empty_batch",
            Error::ReservedLog(_) => "reserved_log",
            Error::UnknownLog(_) => "unknown_log",
            Error::Trimmed { .. } => "trimmed",
            Error::TrimBeyondTail { .. } => "trim_beyond_tail",
            Error::TruncateBeyondTail { .. } => "truncate_beyond_tail",
            Error::Overloaded => "overloaded",
            Error::TooManyLogs { .. } => "too_many_logs",
            Error::Fatal(_) => "fatal",
            Error::Config(_) => "config",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
