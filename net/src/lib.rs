//! chainlog-net: the wire protocol, as pure functions over byte slices.
//!
//! A connection carries **frames**: a 24-byte [`FrameHeader`] and a body. [`parse_frame`] finds
//! a whole frame at the start of a buffer (or says that more bytes are needed) and checks its
//! framing; [`decode_request`] and [`decode_response`] turn a frame into a typed [`Request`] or
//! [`Response`] that borrows from the buffer; [`encode_request`], [`encode_response`] and
//! [`encode_error`] append whole frames to a `Vec<u8>`. [`AppendBuilder`] and [`ReadBuilder`]
//! lay records out directly in an output buffer, in the storage layout
//! ([`RecordHeader`], payload, zero padding to 8 bytes), which is also the disk layout: the
//! [`Records::bytes`] of an APPEND, and the stamped ones of a REPLICATE between nodes, can be
//! copied to disk as they are.
//!
//! What every party keeps of the protocol beyond one frame is here too, so that the client,
//! the controller and the node depend on this crate and not on each other: the owned cluster
//! map ([`cluster`]) and its reading from GET_MAP pages ([`pages`]), [`log_id_of`], and owned
//! copies of answers ([`ServerError`], [`LogInfo`], [`LogName`]).
//!
//! Nothing here does I/O, blocks or allocates while decoding; every decoder returns a precise
//! [`Error`] for bad input and never panics. `PROTOCOL.md` at the workspace root is the
//! specification this crate implements.

pub mod cluster;
mod decode;
mod encode;
pub mod error;
pub mod frame;
pub mod keys;
pub mod map;
pub mod message;
pub mod pages;
pub mod records;

pub use chainlog_storage::format::{RecordHeader, RecordView, RECORD_HEADER_BYTES};
pub use cluster::log_id_of;
pub use decode::{check_name, decode_request, decode_response};
pub use encode::{encode_error, encode_replicate_head, encode_request, encode_response};
pub use error::{Error, ErrorCode};
pub use frame::{parse_frame, Flags, Frame, FrameHeader, FRAME_HEADER_BYTES, FRAME_LENGTH_MIN};
pub use keys::{Keys, KEYS_MAX, KEY_BYTES};
pub use map::{
    Chain, ChainIter, MapEntries, MapEntriesIter, MapLog, MapLogs, MapNode, MapNodes,
    LOG_ENTRY_HEADER_BYTES, MAP_HEADER_BYTES, NODE_ENTRY_HEADER_BYTES,
};
pub use message::{
    AppendHeader, AppendRequest, AppendResponse, CreateLogRequest, CreateLogResponse,
    CreditRequest, DescribeLogRequest, DescribeLogResponse, DrainNodeRequest, ErrorResponse,
    GetMapRequest, GetMapResponse, HeartbeatRequest, HelloRequest, HelloResponse, ListLogsRequest,
    ListLogsResponse, LogEntries, LogEntriesIter, LogEntry, LogInfo, LogName, LogRef,
    MapVersionResponse, Opcode, PeerRequest, PullRequest, PullResponse, Push, ReadRequest,
    ReadResponse, ReconfigureLogRequest, ReconfigureLogResponse, RegisterNodeRequest,
    ReplicateHeader, ReplicateKind, ReplicateRequest, ReplicateResponse, Request, Response, Role,
    SealRequest, SealResponse, ServerError, SubscribeRequest, SubscribeResponse, TailResponse,
    TrimRequest, UnsubscribeRequest,
};
pub use records::{AppendBuilder, ReadBuilder, ReadKind, RecordForm, RecordIter, Records};

// Headers are read and written with bytemuck (here and in chainlog-storage), which uses the
// machine's byte order; the wire is little-endian.
#[cfg(not(target_endian = "little"))]
compile_error!("chainlog-net supports little-endian targets only");

/// The protocol version this build speaks (the only one so far).
pub const PROTOCOL_VERSION: u16 = 1;
/// OVERLOADED's `arg0` for a connection refused because the server holds as many as it may
/// (PROTOCOL.md 3.5): milliseconds to wait before connecting again.
pub const CONNECTION_RETRY_MS: u64 = 100;
/// `"CHLG"` read as a little-endian u32 (0x474C4843): the first field of a HELLO request.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"CHLG");
/// APPEND `epoch`: append in whatever epoch is current.
pub const EPOCH_CURRENT: u64 = 0;
/// APPEND `expected_lsn`: no condition.
pub const LSN_UNCONDITIONAL: u64 = u64::MAX;
/// SUBSCRIBE `from_lsn`: start at the log's tail (only records committed from now on).
pub const LSN_FROM_TAIL: u64 = u64::MAX;
/// APPEND `fencing_token`: no fencing.
pub const TOKEN_NONE: u64 = 0;
/// APPEND `writer_id`: no idempotency (then `writer_seq` must be 0).
pub const WRITER_NONE: u64 = 0;
/// CREATE_LOG `replication_factor`: the server's default (a standalone node's is 1, the
/// controller's its `--default-rf`).
pub const RF_DEFAULT: u8 = 0;
/// The largest ERROR message, in bytes of UTF-8. Longer messages are cut by [`encode_error`].
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// ERROR `arg0`/`arg1` when the argument does not apply (e.g. MALFORMED about no one record).
pub const ARG_NONE: u64 = u64::MAX;
/// The longest node address (REGISTER_NODE, GET_MAP), in bytes of UTF-8. Fixed by version 1.
pub const ADDR_BYTES_MAX: u16 = 255;
/// The longest zone or rack label of a node (REGISTER_NODE, GET_MAP), in bytes of UTF-8; an
/// empty label is no label.
pub const LABEL_BYTES_MAX: u8 = 64;
/// GET_MAP `last_heartbeat_ms` of a node that never heartbeated.
pub const HEARTBEAT_MS_NEVER: u64 = u64::MAX;

/// The limits a peer enforces. Decoders take them as a parameter; a client learns the server's
/// frame, record and batch limits from the HELLO response ([`HelloResponse::limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame, header included. Larger frames are malformed.
    pub frame_bytes_max: u32,
    /// The largest record payload.
    pub record_bytes_max: u32,
    /// The most records in one APPEND, READ response or push.
    pub batch_records_max: u32,
    /// The longest log name, in bytes of UTF-8. Fixed at 255 by version 1.
    pub name_bytes_max: u16,
    /// The most entries in one LIST_LOGS response. Fixed at 1000 by version 1.
    pub list_max: u32,
    /// Unanswered requests per connection beyond which a server stops reading it
    /// (backpressure). Not used by decoding.
    pub in_flight_max: u32,
}

impl Limits {
    /// The defaults (and version 1's fixed values for names and listings).
    pub const DEFAULT: Limits = Limits {
        frame_bytes_max: (4 << 20) + (4 << 10),
        record_bytes_max: 1 << 20,
        batch_records_max: 4096,
        name_bytes_max: 255,
        list_max: 1000,
        in_flight_max: 1024,
    };

    /// True if a frame of `frame_bytes_max` holds an APPEND of one record of
    /// `record_bytes_max` (and so a READ response or push of one such record), and the other
    /// limits are at least 1. A server's limits must be consistent.
    pub const fn is_consistent(&self) -> bool {
        let one_record = FRAME_HEADER_BYTES
            + message::APPEND_HEADER_BYTES
            + chainlog_storage::format::record_bytes(self.record_bytes_max as usize);
        self.frame_bytes_max as usize >= one_record
            && self.batch_records_max >= 1
            && self.name_bytes_max >= 1
            && self.list_max >= 1
            && self.in_flight_max >= 1
    }

    /// Bytes of records (headers, payloads, padding) the largest APPEND frame carries; a
    /// REPLICATE or a PULL's answer of that many fits a frame of the
    /// [`replication`](Self::replication) limits.
    pub const fn records_bytes_max(&self) -> usize {
        (self.frame_bytes_max as usize)
            .saturating_sub(FRAME_HEADER_BYTES + message::APPEND_HEADER_BYTES)
    }

    /// The limits a node reads a connection with once it declared PEER: `frame_bytes_max`
    /// grows by [`REPLICATE_EXTRA_BYTES`], so a batch that fit an APPEND frame is forwarded in
    /// one REPLICATE frame.
    pub const fn replication(&self) -> Limits {
        Limits {
            frame_bytes_max: self.frame_bytes_max.saturating_add(REPLICATE_EXTRA_BYTES),
            ..*self
        }
    }
}

/// How much larger a REPLICATE frame is than the APPEND frame of the same records: its header
/// is 72 bytes, an APPEND's 56.
pub const REPLICATE_EXTRA_BYTES: u32 =
    (message::REPLICATE_HEADER_BYTES - message::APPEND_HEADER_BYTES) as u32;

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

const _: () = assert!(Limits::DEFAULT.is_consistent());
const _: () = assert!(HELLO_MAGIC == 0x474C_4843);
const _: () = assert!(REPLICATE_EXTRA_BYTES == 16);
