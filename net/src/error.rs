//! Errors: the error codes an ERROR response carries ([`ErrorCode`], with whether each is
//! retryable) and why bytes could not be decoded ([`Error`], with the code a server answers it
//! with).

use crate::message::{opcode_name, ErrorResponse};
use crate::{ARG_NONE, PROTOCOL_VERSION};

/// The `code` of an ERROR response. See PROTOCOL.md for each code's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request broke the protocol. `arg0`: the index of the offending record, or
    /// [`ARG_NONE`]. The server closes the connection after sending it.
    Malformed = 1,
    /// No version in the HELLO's range is spoken. `arg0`: the newest version the server
    /// speaks. The server closes the connection after sending it.
    UnsupportedVersion = 2,
    /// No such log.
    UnknownLog = 3,
    /// The APPEND named an epoch that is not current. `arg0`: the current epoch.
    WrongEpoch = 4,
    /// This node is not the head of the log's chain. `arg0`: the head's node id.
    NotHead = 5,
    /// The epoch is sealed. `arg0`: its end LSN.
    Sealed = 6,
    /// `expected_lsn` was not the tail. `arg0`: the tail.
    ConditionFailed = 7,
    /// The fencing token is lower than the log's. `arg0`: the log's token.
    Fenced = 8,
    /// The LSN is below the trim point. `arg0`: the trim point.
    Trimmed = 9,
    /// Over a limit. `arg0`: the limit; `arg1`: the offending record's index or [`ARG_NONE`].
    TooLarge = 10,
    /// Too busy. `arg0`: milliseconds to wait before retrying.
    Overloaded = 11,
    /// The log lives on another shard. `arg0`: that shard's index.
    WrongShard = 12,
    /// A log with that name exists. `arg0`: its id.
    LogExists = 13,
    /// The node is shutting down or its storage has stopped.
    Unavailable = 14,
    /// The APPEND's `writer_seq` is neither above the writer's last nor one of its remembered
    /// batches: a retry too old to resolve, or out of order. `arg0`: the writer's last
    /// `writer_seq`.
    WriterSeq = 15,
    /// A REPLICATE starts above the replica's next LSN: nothing was written. `arg0`: the LSN
    /// the replica expects next (resend from there).
    Gap = 16,
    /// The REPLICATE's connection declared no PEER, or its PEER node is not the receiver's
    /// predecessor in the log's chain; or a HEARTBEAT from a node that never registered.
    /// `arg0`: the node id expected (the predecessor), or [`ARG_NONE`].
    UnknownNode = 17,
    /// Only the controller serves this request (a controller verb sent to a node, or a
    /// CREATE_LOG or DELETE_LOG sent to a cluster node): send it to the controller.
    NotController = 18,
    /// A REPLICATE (or a PULL's answer) carries records at LSNs where the receiver holds
    /// different ones: the replicas diverged, which the protocol never produces (damaged
    /// state). Nothing was written. `arg0`: the first LSN that differs.
    Diverged = 19,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::Malformed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownLog,
        ErrorCode::WrongEpoch,
        ErrorCode::NotHead,
        ErrorCode::Sealed,
        ErrorCode::ConditionFailed,
        ErrorCode::Fenced,
        ErrorCode::Trimmed,
        ErrorCode::TooLarge,
        ErrorCode::Overloaded,
        ErrorCode::WrongShard,
        ErrorCode::LogExists,
        ErrorCode::Unavailable,
        ErrorCode::WriterSeq,
        ErrorCode::Gap,
        ErrorCode::UnknownNode,
        ErrorCode::NotController,
        ErrorCode::Diverged,
    ];

    /// Decodes a wire code; `None` if version 1 does not define it.
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL
            .get(usize::from(code).wrapping_sub(1))
            .copied()
    }

    /// True if the same request, sent again unchanged (after `arg0` milliseconds for
    /// OVERLOADED; to the shard or node `arg0` names for WRONG_SHARD and NOT_HEAD; from the
    /// LSN `arg0` names for GAP), can succeed. The request did not take effect. Terminal codes
    /// need the caller to change something first (or to give up).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotHead
                | ErrorCode::Overloaded
                | ErrorCode::WrongShard
                | ErrorCode::Unavailable
                | ErrorCode::Gap
        )
    }

    /// True if the server closes the connection after sending this code.
    pub fn closes_connection(self) -> bool {
        matches!(self, ErrorCode::Malformed | ErrorCode::UnsupportedVersion)
    }

    /// The name PROTOCOL.md uses (`"WRONG_SHARD"`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnknownLog => "UNKNOWN_LOG",
            ErrorCode::WrongEpoch => "WRONG_EPOCH",
            ErrorCode::NotHead => "NOT_HEAD",
            ErrorCode::Sealed => "SEALED",
            ErrorCode::ConditionFailed => "CONDITION_FAILED",
            ErrorCode::Fenced => "FENCED",
            ErrorCode::Trimmed => "TRIMMED",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::WrongShard => "WRONG_SHARD",
            ErrorCode::LogExists => "LOG_EXISTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::WriterSeq => "WRITER_SEQ",
            ErrorCode::Gap => "GAP",
            ErrorCode::UnknownNode => "UNKNOWN_NODE",
            ErrorCode::NotController => "NOT_CONTROLLER",
            ErrorCode::Diverged => "DIVERGED",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a valid frame or message. Each maps to the ERROR a server answers with
/// ([`code`](Error::code), [`arg0`](Error::arg0), [`arg1`](Error::arg1)); most are MALFORMED
/// and close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The frame's `length` is below 20 (the rest of the header).
    #[error("frame length {length} is below the minimum of 20")]
    FrameTooShort {
        /// The `length` field.
        length: u32,
    },
    /// The frame (header included) is larger than `frame_bytes_max`.
    #[error("frame of {frame_bytes} bytes exceeds frame_bytes_max {max}")]
    FrameTooLarge {
        /// The whole frame's size.
        frame_bytes: u64,
        /// The limit.
        max: u32,
    },
    /// The frame CRC does not match its bytes.
    #[error("frame crc {stored:#010x} does not match the computed {computed:#010x}")]
    BadFrameCrc {
        /// The `crc` field.
        stored: u32,
        /// CRC32C of header bytes 4..16 and the body.
        computed: u32,
    },
    /// The frame header's reserved field is not zero.
    #[error("frame header reserved field is {value:#x}, not 0")]
    FrameReservedNonzero {
        /// The field.
        value: u32,
    },
    /// Flag bits that version 1 does not define are set.
    #[error("unknown flag bits in {flags:#06x}")]
    UnknownFlags {
        /// The `flags` field.
        flags: u16,
    },
    /// The opcode is not defined (or is 0 on anything but a connection-level ERROR).
    #[error("unknown opcode {opcode}")]
    UnknownOpcode {
        /// The `opcode` field.
        opcode: u16,
    },
    /// The flags are defined but not allowed here: response flags on a request, a request
    /// without RESPONSE decoded as a response, PUSH on another opcode than SUBSCRIBE, END
    /// without PUSH, ERROR|PUSH without END.
    #[error("flags {flags:#06x} are not allowed on this frame (opcode {opcode})")]
    UnexpectedFlags {
        /// The `opcode` field.
        opcode: u16,
        /// The `flags` field.
        flags: u16,
    },
    /// The body is shorter than its fixed part or than its own length fields say.
    #[error("{} body of {body_bytes} bytes is truncated: {needed_bytes} needed", opcode_name(*opcode))]
    BodyTruncated {
        /// The frame's opcode.
        opcode: u16,
        /// The body's size.
        body_bytes: usize,
        /// The size its fields need.
        needed_bytes: usize,
    },
    /// Bytes follow the end of the message.
    #[error("{} body has {extra_bytes} bytes past its end", opcode_name(*opcode))]
    TrailingBytes {
        /// The frame's opcode.
        opcode: u16,
        /// How many.
        extra_bytes: usize,
    },
    /// A reserved body field is not zero.
    #[error("{} field {field} is reserved and must be 0", opcode_name(*opcode))]
    ReservedNonzero {
        /// The frame's opcode.
        opcode: u16,
        /// The field's name in PROTOCOL.md.
        field: &'static str,
    },
    /// A field has a value the protocol does not allow (see PROTOCOL.md for each).
    #[error("{} field {field} has the invalid value {value}", opcode_name(*opcode))]
    InvalidField {
        /// The frame's opcode.
        opcode: u16,
        /// The field's name in PROTOCOL.md.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A HELLO whose magic is not `"CHLG"`.
    #[error("HELLO magic {magic:#010x} is not \"CHLG\" (0x474c4843)")]
    BadMagic {
        /// The `magic` field.
        magic: u32,
    },
    /// A HELLO whose version range does not contain a version this build speaks.
    #[error("HELLO versions {min}..={max} do not include version 1")]
    UnsupportedVersion {
        /// `min_version`.
        min: u16,
        /// `max_version`.
        max: u16,
    },
    /// More records than `batch_records_max`.
    #[error("{count} records exceed batch_records_max {max}")]
    TooManyRecords {
        /// The count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// A record's header or payload runs past the end of the body.
    #[error("record {index} is truncated")]
    RecordTruncated {
        /// The record's index in its batch.
        index: u32,
    },
    /// A record's payload is longer than `record_bytes_max`.
    #[error("record {index} of {len} bytes exceeds record_bytes_max {max}")]
    RecordTooLarge {
        /// The record's index in its batch.
        index: u32,
        /// Its `len`.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A field the server stamps (log_id, lsn, epoch, timestamp_us) is not zero in an APPEND.
    #[error("record {index}: {field} must be 0 in an APPEND (the server stamps it)")]
    RecordFieldNonzero {
        /// The record's index in its batch.
        index: u32,
        /// The field.
        field: &'static str,
    },
    /// The padding after a record's payload is not zero.
    #[error("record {index}: the padding after the payload is not zero")]
    RecordPaddingNonzero {
        /// The record's index in its batch.
        index: u32,
    },
    /// A record's payload does not match its CRC.
    #[error(
        "record {index}: payload crc {computed:#010x} does not match the record's {stored:#010x}"
    )]
    BadRecordCrc {
        /// The record's index in its batch.
        index: u32,
        /// The record's `crc`.
        stored: u32,
        /// CRC32C of the payload.
        computed: u32,
    },
    /// In a READ response or push, a record is not the next one (another log, a gap in LSNs,
    /// or an LSN at or past the batch's `tail`); in a REPLICATE, `first_lsn + index` is past
    /// `u64::MAX`.
    #[error("record {index} is out of sequence")]
    RecordOutOfSequence {
        /// The record's index in its batch.
        index: u32,
    },
    /// In a REPLICATE, a record's `log_id`, `lsn` or `epoch` is not the one the header says
    /// (record `i` is of the header's log, at `first_lsn + i`, in its epoch).
    #[error("record {index}: {field} is {value}, the REPLICATE header says {expected}")]
    RecordStampMismatch {
        /// The record's index in its batch.
        index: u32,
        /// The field.
        field: &'static str,
        /// The record's value.
        value: u64,
        /// The value the header says.
        expected: u64,
    },
    /// The body ends before `count` records.
    #[error("count says {declared} records but the body holds {found}")]
    CountMismatch {
        /// The `count` field.
        declared: u32,
        /// Whole records found.
        found: u32,
    },
    /// Bytes follow the last of `count` records.
    #[error("{extra_bytes} bytes follow the last of {count} records")]
    BytesAfterRecords {
        /// The `count` field.
        count: u32,
        /// How many.
        extra_bytes: usize,
    },
    /// A log name of 0 bytes.
    #[error("log name is empty")]
    EmptyName,
    /// A log name longer than `name_bytes_max`.
    #[error("log name of {len} bytes exceeds name_bytes_max {max}")]
    NameTooLong {
        /// Its length.
        len: u16,
        /// The limit.
        max: u16,
    },
    /// A log name that is not UTF-8.
    #[error("log name is not valid UTF-8")]
    NameNotUtf8,
    /// A log name containing a NUL byte.
    #[error("log name contains a NUL byte")]
    NameContainsNul,
    /// A LIST_LOGS or GET_MAP response with more (log) entries than `list_max`.
    #[error("{count} entries exceed list_max {max}")]
    TooManyEntries {
        /// The count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// A LIST_LOGS entry or GET_MAP log entry whose id is not above the previous entry's.
    #[error("entry {index} is out of order (log ids must ascend)")]
    EntryOutOfOrder {
        /// The entry's index.
        index: u32,
    },
    /// A GET_MAP node entry whose id is not above the previous node's.
    #[error("node entry {index} is out of order (node ids must ascend)")]
    NodeOutOfOrder {
        /// The node entry's index.
        index: u32,
    },
    /// A node address (REGISTER_NODE, GET_MAP) that is not UTF-8.
    #[error("node address is not valid UTF-8")]
    AddrNotUtf8,
    /// A node's zone or rack label (REGISTER_NODE, GET_MAP) that is not UTF-8.
    #[error("node zone or rack label is not valid UTF-8")]
    LabelNotUtf8,
    /// An ERROR with a code version 1 does not define.
    #[error("unknown error code {code}")]
    UnknownErrorCode {
        /// The `code` field.
        code: u16,
    },
    /// An ERROR message longer than 1024 bytes.
    #[error("error message of {len} bytes exceeds 1024")]
    MessageTooLong {
        /// The `message_len` field.
        len: u32,
    },
    /// An ERROR message that is not UTF-8.
    #[error("error message is not valid UTF-8")]
    MessageNotUtf8,
}

impl Error {
    /// The ERROR code a server answers this with: TOO_LARGE for a well-framed request over a
    /// record, batch or name limit (the connection stays open), UNSUPPORTED_VERSION for a HELLO
    /// without version 1, MALFORMED (the connection is closed) for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::TooManyRecords { .. }
            | Error::RecordTooLarge { .. }
            | Error::NameTooLong { .. }
            | Error::TooManyEntries { .. } => ErrorCode::TooLarge,
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::Malformed,
        }
    }

    /// The index of the record this is about, if it is about one.
    pub fn record_index(&self) -> Option<u32> {
        match *self {
            Error::RecordTruncated { index }
            | Error::RecordTooLarge { index, .. }
            | Error::RecordFieldNonzero { index, .. }
            | Error::RecordPaddingNonzero { index }
            | Error::BadRecordCrc { index, .. }
            | Error::RecordOutOfSequence { index }
            | Error::RecordStampMismatch { index, .. } => Some(index),
            _ => None,
        }
    }

    /// The ERROR's `arg0`: for MALFORMED the record index or [`ARG_NONE`]; for TOO_LARGE the
    /// limit; for UNSUPPORTED_VERSION the newest version spoken.
    pub fn arg0(&self) -> u64 {
        match *self {
            Error::TooManyRecords { max, .. }
            | Error::RecordTooLarge { max, .. }
            | Error::TooManyEntries { max, .. } => u64::from(max),
            Error::NameTooLong { max, .. } => u64::from(max),
            Error::UnsupportedVersion { .. } => u64::from(PROTOCOL_VERSION),
            _ => self.record_index().map_or(ARG_NONE, u64::from),
        }
    }

    /// The ERROR's `arg1`: for TOO_LARGE the offending record's index or [`ARG_NONE`]; 0
    /// otherwise.
    pub fn arg1(&self) -> u64 {
        match self.code() {
            ErrorCode::TooLarge => self.record_index().map_or(ARG_NONE, u64::from),
            _ => 0,
        }
    }

    /// The ERROR a server answers this with, carrying `message` (typically this error's
    /// `Display`, formatted into a reused buffer).
    pub fn response<'m>(&self, message: &'m str) -> ErrorResponse<'m> {
        ErrorResponse {
            code: self.code(),
            arg0: self.arg0(),
            arg1: self.arg1(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_only_defined_codes_decode() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as u16 as usize, i + 1);
            assert_eq!(ErrorCode::from_u16(*code as u16), Some(*code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(ErrorCode::ALL.len() as u16 + 1), None);
        assert_eq!(ErrorCode::from_u16(u16::MAX), None);
    }

    #[test]
    fn retryable_codes_are_the_documented_five() {
        let retryable: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.is_retryable())
            .map(|c| c.name())
            .collect();
        assert_eq!(
            retryable,
            [
                "NOT_HEAD",
                "OVERLOADED",
                "WRONG_SHARD",
                "UNAVAILABLE",
                "GAP"
            ]
        );
    }

    #[test]
    fn only_malformed_and_unsupported_version_close() {
        let closing: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.closes_connection())
            .map(|c| c.name())
            .collect();
        assert_eq!(closing, ["MALFORMED", "UNSUPPORTED_VERSION"]);
    }

    #[test]
    fn decode_errors_map_to_wire_errors() {
        let crc = Error::BadRecordCrc {
            index: 3,
            stored: 1,
            computed: 2,
        };
        assert_eq!(crc.code(), ErrorCode::Malformed);
        assert_eq!((crc.arg0(), crc.arg1()), (3, 0));
        let big = Error::RecordTooLarge {
            index: 2,
            len: 10,
            max: 5,
        };
        assert_eq!(big.code(), ErrorCode::TooLarge);
        assert_eq!((big.arg0(), big.arg1()), (5, 2));
        let many = Error::TooManyRecords { count: 9, max: 8 };
        assert_eq!((many.arg0(), many.arg1()), (8, ARG_NONE));
        let version = Error::UnsupportedVersion { min: 2, max: 3 };
        assert_eq!(version.code(), ErrorCode::UnsupportedVersion);
        assert_eq!(version.arg0(), 1);
        let crc = Error::BadFrameCrc {
            stored: 0,
            computed: 1,
        };
        assert_eq!((crc.code(), crc.arg0()), (ErrorCode::Malformed, ARG_NONE));
        assert_eq!(crc.response("m").message, "m");
        let stamp = Error::RecordStampMismatch {
            index: 4,
            field: "lsn",
            value: 9,
            expected: 8,
        };
        assert_eq!(stamp.code(), ErrorCode::Malformed);
        assert_eq!((stamp.arg0(), stamp.arg1()), (4, 0));
        for error in [
            Error::AddrNotUtf8,
            Error::LabelNotUtf8,
            Error::NodeOutOfOrder { index: 1 },
        ] {
            assert_eq!(
                (error.code(), error.arg0()),
                (ErrorCode::Malformed, ARG_NONE)
            );
        }
    }
}
