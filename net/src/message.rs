//! Messages: the opcodes and the typed requests and responses, one struct per body. Types
//! that hold records, names or messages borrow them from the frame they were decoded from.
//! Wire sentinels (epoch 0 = current, `expected_lsn` `u64::MAX` = unconditional, ...) are
//! kept as they are on the wire; see the constants at the crate root. The entries of a
//! GET_MAP response (the cluster map) are in [`map`](crate::map).

use crate::error::ErrorCode;
use crate::keys::Keys;
use crate::map::{MapLogs, MapNodes};
use crate::records::Records;
use crate::{Limits, EPOCH_CURRENT, LSN_UNCONDITIONAL, PROTOCOL_VERSION, TOKEN_NONE, WRITER_NONE};

/// What a frame asks for (a response carries its request's opcode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// Version handshake; the first frame of every connection.
    Hello = 1,
    /// Append a batch of records to a log.
    Append = 2,
    /// Read committed records.
    Read = 3,
    /// Start a stream of pushed records.
    Subscribe = 4,
    /// Give a subscription more credit.
    Credit = 5,
    /// End a subscription.
    Unsubscribe = 6,
    /// The linearizable committed tail.
    CheckTail = 7,
    /// The tail as this node knows it (cheap, possibly stale).
    TailHint = 8,
    /// Trim a log's prefix.
    Trim = 9,
    /// Create a log.
    CreateLog = 10,
    /// A log's metadata and positions.
    DescribeLog = 11,
    /// A page of logs.
    ListLogs = 12,
    /// Delete a log.
    DeleteLog = 13,
    /// Node to node: this connection carries replication traffic from a node.
    Peer = 14,
    /// Node to node: records, a trim, a barrier or a commit point for a replica.
    Replicate = 15,
    /// Node to controller: a node joins the cluster (or rejoins after a restart).
    RegisterNode = 16,
    /// Node to controller: the node is alive and has applied a map version.
    Heartbeat = 17,
    /// To the controller: a page of the cluster map.
    GetMap = 18,
    /// Node to node: records a successor holds beyond the sender's next LSN, with the head's
    /// decisions about them (a restarted node takes back what it lost).
    Pull = 19,
    /// Controller (or admin) to a replica: seal a log's epoch there, for good, and say where
    /// it ends (reconfiguration).
    Seal = 20,
    /// Operator to controller: seal a log's current epoch and start the next one, with the
    /// controller's chain or a given one.
    ReconfigureLog = 21,
    /// Operator to controller: drain a node (move every chain off it, give it no new one),
    /// or undo that.
    DrainNode = 22,
}

impl Opcode {
    /// Every opcode, in wire order.
    pub const ALL: [Opcode; 22] = [
        Opcode::Hello,
        Opcode::Append,
        Opcode::Read,
        Opcode::Subscribe,
        Opcode::Credit,
        Opcode::Unsubscribe,
        Opcode::CheckTail,
        Opcode::TailHint,
        Opcode::Trim,
        Opcode::CreateLog,
        Opcode::DescribeLog,
        Opcode::ListLogs,
        Opcode::DeleteLog,
        Opcode::Peer,
        Opcode::Replicate,
        Opcode::RegisterNode,
        Opcode::Heartbeat,
        Opcode::GetMap,
        Opcode::Pull,
        Opcode::Seal,
        Opcode::ReconfigureLog,
        Opcode::DrainNode,
    ];

    /// Decodes an opcode; `None` if version 1 does not define it.
    pub fn from_u16(opcode: u16) -> Option<Opcode> {
        Opcode::ALL
            .get(usize::from(opcode).wrapping_sub(1))
            .copied()
    }

    /// The name PROTOCOL.md uses (`"CHECK_TAIL"`).
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Hello => "HELLO",
            Opcode::Append => "APPEND",
            Opcode::Read => "READ",
            Opcode::Subscribe => "SUBSCRIBE",
            Opcode::Credit => "CREDIT",
            Opcode::Unsubscribe => "UNSUBSCRIBE",
            Opcode::CheckTail => "CHECK_TAIL",
            Opcode::TailHint => "TAIL_HINT",
            Opcode::Trim => "TRIM",
            Opcode::CreateLog => "CREATE_LOG",
            Opcode::DescribeLog => "DESCRIBE_LOG",
            Opcode::ListLogs => "LIST_LOGS",
            Opcode::DeleteLog => "DELETE_LOG",
            Opcode::Peer => "PEER",
            Opcode::Replicate => "REPLICATE",
            Opcode::RegisterNode => "REGISTER_NODE",
            Opcode::Heartbeat => "HEARTBEAT",
            Opcode::GetMap => "GET_MAP",
            Opcode::Pull => "PULL",
            Opcode::Seal => "SEAL",
            Opcode::ReconfigureLog => "RECONFIGURE_LOG",
            Opcode::DrainNode => "DRAIN_NODE",
        }
    }

    /// True if the request names a log that must be sent to the shard owning it
    /// (`log_id % shard_count`); other requests may go to any shard of a node.
    pub fn is_routed(self) -> bool {
        matches!(
            self,
            Opcode::Append
                | Opcode::Read
                | Opcode::Subscribe
                | Opcode::CheckTail
                | Opcode::TailHint
                | Opcode::Trim
                | Opcode::Replicate
                | Opcode::Pull
                | Opcode::Seal
        )
    }
}

/// The name of a frame's opcode, for messages: the opcode's name, or what a frame with an
/// undefined one is.
pub(crate) fn opcode_name(opcode: u16) -> &'static str {
    match Opcode::from_u16(opcode) {
        Some(opcode) => opcode.name(),
        None if opcode == 0 => "connection-level ERROR",
        None => "unknown opcode",
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// HELLO.
    Hello(HelloRequest),
    /// APPEND.
    Append(AppendRequest<'a>),
    /// READ.
    Read(ReadRequest),
    /// SUBSCRIBE.
    Subscribe(SubscribeRequest),
    /// CREDIT.
    Credit(CreditRequest),
    /// UNSUBSCRIBE.
    Unsubscribe(UnsubscribeRequest),
    /// CHECK_TAIL of `log_id`.
    CheckTail {
        /// The log.
        log_id: u64,
    },
    /// TAIL_HINT of `log_id`.
    TailHint {
        /// The log.
        log_id: u64,
    },
    /// TRIM.
    Trim(TrimRequest),
    /// CREATE_LOG.
    CreateLog(CreateLogRequest<'a>),
    /// DESCRIBE_LOG.
    DescribeLog(DescribeLogRequest<'a>),
    /// LIST_LOGS.
    ListLogs(ListLogsRequest),
    /// DELETE_LOG of `log_id`.
    DeleteLog {
        /// The log.
        log_id: u64,
    },
    /// PEER.
    Peer(PeerRequest),
    /// REPLICATE.
    Replicate(ReplicateRequest<'a>),
    /// REGISTER_NODE.
    RegisterNode(RegisterNodeRequest<'a>),
    /// HEARTBEAT.
    Heartbeat(HeartbeatRequest),
    /// GET_MAP.
    GetMap(GetMapRequest),
    /// PULL.
    Pull(PullRequest),
    /// SEAL.
    Seal(SealRequest),
    /// RECONFIGURE_LOG.
    ReconfigureLog(ReconfigureLogRequest<'a>),
    /// DRAIN_NODE.
    DrainNode(DrainNodeRequest),
}

impl Request<'_> {
    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::Append(_) => Opcode::Append,
            Request::Read(_) => Opcode::Read,
            Request::Subscribe(_) => Opcode::Subscribe,
            Request::Credit(_) => Opcode::Credit,
            Request::Unsubscribe(_) => Opcode::Unsubscribe,
            Request::CheckTail { .. } => Opcode::CheckTail,
            Request::TailHint { .. } => Opcode::TailHint,
            Request::Trim(_) => Opcode::Trim,
            Request::CreateLog(_) => Opcode::CreateLog,
            Request::DescribeLog(_) => Opcode::DescribeLog,
            Request::ListLogs(_) => Opcode::ListLogs,
            Request::DeleteLog { .. } => Opcode::DeleteLog,
            Request::Peer(_) => Opcode::Peer,
            Request::Replicate(_) => Opcode::Replicate,
            Request::RegisterNode(_) => Opcode::RegisterNode,
            Request::Heartbeat(_) => Opcode::Heartbeat,
            Request::GetMap(_) => Opcode::GetMap,
            Request::Pull(_) => Opcode::Pull,
            Request::Seal(_) => Opcode::Seal,
            Request::ReconfigureLog(_) => Opcode::ReconfigureLog,
            Request::DrainNode(_) => Opcode::DrainNode,
        }
    }

    /// The log whose shard must serve this request, for routed requests
    /// ([`Opcode::is_routed`]).
    pub fn routed_log(&self) -> Option<u64> {
        match *self {
            Request::Append(AppendRequest { header, .. }) => Some(header.log_id),
            Request::Replicate(ReplicateRequest { header, .. }) => Some(header.log_id),
            Request::Pull(PullRequest { log_id, .. }) => Some(log_id),
            Request::Seal(SealRequest { log_id, .. }) => Some(log_id),
            Request::Read(ReadRequest { log_id, .. })
            | Request::Subscribe(SubscribeRequest { log_id, .. })
            | Request::CheckTail { log_id }
            | Request::TailHint { log_id }
            | Request::Trim(TrimRequest { log_id, .. }) => Some(log_id),
            _ => None,
        }
    }
}

/// HELLO request: the versions the client speaks (the magic is checked and not kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloRequest {
    /// The oldest version the client speaks.
    pub min_version: u16,
    /// The newest version the client speaks.
    pub max_version: u16,
}

impl HelloRequest {
    /// A HELLO for the version this build speaks.
    pub const CURRENT: HelloRequest = HelloRequest {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
    };
}

/// Size of an APPEND body before its records.
pub(crate) const APPEND_HEADER_BYTES: usize = 56;

/// The fixed part of an APPEND body (everything but `count` and the records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendHeader {
    /// The log.
    pub log_id: u64,
    /// The epoch the client believes current, or [`EPOCH_CURRENT`].
    pub epoch: u64,
    /// The LSN the batch must start at, or [`LSN_UNCONDITIONAL`].
    pub expected_lsn: u64,
    /// The writer's fencing token, or [`TOKEN_NONE`].
    pub fencing_token: u64,
    /// The idempotency key's writer, or [`WRITER_NONE`].
    pub writer_id: u64,
    /// The idempotency key's sequence number (0 without a writer).
    pub writer_seq: u64,
}

impl AppendHeader {
    /// An unconditional append to `log_id` in the current epoch, without fencing or
    /// idempotency.
    pub const fn new(log_id: u64) -> AppendHeader {
        AppendHeader {
            log_id,
            epoch: EPOCH_CURRENT,
            expected_lsn: LSN_UNCONDITIONAL,
            fencing_token: TOKEN_NONE,
            writer_id: WRITER_NONE,
            writer_seq: 0,
        }
    }
}

/// APPEND request: the header and a validated, zero-copy view of the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendRequest<'a> {
    /// Log, epoch, condition, token, idempotency key.
    pub header: AppendHeader,
    /// The records, in the storage layout, every CRC checked.
    pub records: Records<'a>,
}

/// READ request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The log.
    pub log_id: u64,
    /// The first LSN wanted.
    pub from_lsn: u64,
    /// At most this many records (the server also caps it at `batch_records_max`).
    pub max_records: u32,
    /// At most this many bytes of records (header and padding included), except that a first
    /// record larger than this is still returned alone.
    pub max_bytes: u32,
}

/// SUBSCRIBE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// The log.
    pub log_id: u64,
    /// The first LSN wanted, or [`LSN_FROM_TAIL`](crate::LSN_FROM_TAIL).
    pub from_lsn: u64,
    /// Records the server may push before the client sends CREDIT.
    pub credit_records: u32,
}

/// CREDIT request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditRequest {
    /// The request id of the SUBSCRIBE.
    pub subscription_id: u64,
    /// Records added to the subscription's credit.
    pub records: u32,
}

/// UNSUBSCRIBE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsubscribeRequest {
    /// The request id of the SUBSCRIBE.
    pub subscription_id: u64,
}

/// TRIM request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrimRequest {
    /// The log.
    pub log_id: u64,
    /// Records below this LSN are trimmed.
    pub before_lsn: u64,
}

/// CREATE_LOG request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateLogRequest<'a> {
    /// Replicas in each epoch's chain, or [`RF_DEFAULT`](crate::RF_DEFAULT): the server's
    /// default.
    pub replication_factor: u8,
    /// The name (checked: 1..=`name_bytes_max` bytes of UTF-8 without NUL).
    pub name: &'a str,
}

/// A log, by id or by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogRef<'a> {
    /// By id (`by` = 0).
    Id(u64),
    /// By name (`by` = 1).
    Name(&'a str),
}

/// DESCRIBE_LOG request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescribeLogRequest<'a> {
    /// The log.
    pub by: LogRef<'a>,
}

/// LIST_LOGS request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListLogsRequest {
    /// Only logs with a greater id are listed (0 for the first page).
    pub after_log_id: u64,
    /// At most this many entries (the server also caps it at `list_max`).
    pub max: u32,
}

/// PEER request: the connection carries replication traffic from `node_id` (sent once, after
/// HELLO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRequest {
    /// The sending node (nonzero).
    pub node_id: u64,
}

/// What a REPLICATE carries (its `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReplicateKind {
    /// Records the head sequenced, stamped, from `first_lsn` on.
    Records = 1,
    /// A trim to `trim_before`.
    Trim = 2,
    /// Answered once everything before it is durable down the chain (CHECK_TAIL).
    Barrier = 3,
    /// The commit point (`committed_lsn`) only; never answered on success.
    Commit = 4,
}

impl ReplicateKind {
    /// Decodes a kind; `None` if version 1 does not define it.
    pub fn from_u8(kind: u8) -> Option<ReplicateKind> {
        match kind {
            1 => Some(ReplicateKind::Records),
            2 => Some(ReplicateKind::Trim),
            3 => Some(ReplicateKind::Barrier),
            4 => Some(ReplicateKind::Commit),
            _ => None,
        }
    }
}

/// Size of a REPLICATE body before its records.
pub(crate) const REPLICATE_HEADER_BYTES: usize = 72;

/// The fixed part of a REPLICATE body (everything but `count` and the records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicateHeader {
    /// The log.
    pub log_id: u64,
    /// The log's epoch at the sender; the records' `epoch`.
    pub epoch: u64,
    /// RECORDS: the first record's LSN; other kinds: the log's next LSN at the sender.
    pub first_lsn: u64,
    /// Records below this LSN are committed (durable on every replica), as the sender knows.
    pub committed_lsn: u64,
    /// RECORDS: the log's fencing token after this batch if the batch raised it, else
    /// [`TOKEN_NONE`]; 0 for other kinds.
    pub fencing_token: u64,
    /// RECORDS: the batch's idempotency key's writer, or [`WRITER_NONE`]; 0 for other kinds.
    pub writer_id: u64,
    /// RECORDS: the key's sequence number (0 without a writer); 0 for other kinds.
    pub writer_seq: u64,
    /// TRIM: the new trim point; 0 for other kinds.
    pub trim_before: u64,
    /// What the REPLICATE carries.
    pub kind: ReplicateKind,
}

impl ReplicateHeader {
    /// A REPLICATE of `kind` for `log_id` in `epoch` at `first_lsn` with `committed_lsn`,
    /// without a fencing token, idempotency key or trim point.
    pub const fn new(
        kind: ReplicateKind,
        log_id: u64,
        epoch: u64,
        first_lsn: u64,
        committed_lsn: u64,
    ) -> ReplicateHeader {
        ReplicateHeader {
            log_id,
            epoch,
            first_lsn,
            committed_lsn,
            fencing_token: TOKEN_NONE,
            writer_id: WRITER_NONE,
            writer_seq: 0,
            trim_before: 0,
            kind,
        }
    }
}

/// REPLICATE request: the header and, for [`ReplicateKind::Records`], a validated, zero-copy
/// view of the stamped records ([`Records::EMPTY`] for the other kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicateRequest<'a> {
    /// Log, epoch, LSNs, the head's decisions, kind.
    pub header: ReplicateHeader,
    /// The records, in the storage layout, stamped as the header says, every CRC checked:
    /// [`Records::bytes`] can be stored as they are.
    pub records: Records<'a>,
    /// TRIM: the sender's idempotency keys of the batches below `trim_before`, for a
    /// successor that skips to it (else none); other kinds: none.
    pub keys: Keys<'a>,
}

/// REGISTER_NODE request: a node joins the cluster, or rejoins with a new address, shard
/// count or labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterNodeRequest<'a> {
    /// The node's id (nonzero).
    pub node_id: u64,
    /// Its shards (at least 1).
    pub shard_count: u16,
    /// `"host:port"` of its shard 0 (1..=[`ADDR_BYTES_MAX`](crate::ADDR_BYTES_MAX) bytes of
    /// UTF-8).
    pub addr: &'a str,
    /// Its failure zone (0..=[`LABEL_BYTES_MAX`](crate::LABEL_BYTES_MAX) bytes of UTF-8;
    /// empty: none). A body that ends after `addr` (a node that predates labels) has none.
    pub zone: &'a str,
    /// Its rack within the zone (the same bounds; empty: none).
    pub rack: &'a str,
}

/// HEARTBEAT request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// The node's id (nonzero).
    pub node_id: u64,
    /// The newest map version every shard of the node has applied.
    pub applied_version: u64,
    /// A node whose replication connection with this one failed (this node's successor or
    /// predecessor in a chain), that the controller should check at once; 0 for none.
    pub suspect: u64,
}

/// GET_MAP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetMapRequest {
    /// Only logs with a greater id are listed (0 for the first page).
    pub after_log_id: u64,
    /// At most this many logs (the controller also caps it at `list_max`).
    pub max: u32,
}

/// A decoded response (or push).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response<'a> {
    /// HELLO response.
    Hello(HelloResponse),
    /// APPEND response.
    Append(AppendResponse),
    /// READ response.
    Read(ReadResponse<'a>),
    /// SUBSCRIBE acknowledgement (flags RESPONSE).
    Subscribe(SubscribeResponse),
    /// A subscription's stream item (flags RESPONSE|PUSH, and END on the last).
    Push(Push<'a>),
    /// CREDIT response (empty).
    Credit,
    /// UNSUBSCRIBE response (empty).
    Unsubscribe,
    /// CHECK_TAIL response.
    CheckTail(TailResponse),
    /// TAIL_HINT response.
    TailHint(TailResponse),
    /// TRIM response (empty).
    Trim,
    /// CREATE_LOG response.
    CreateLog(CreateLogResponse),
    /// DESCRIBE_LOG response.
    DescribeLog(DescribeLogResponse<'a>),
    /// LIST_LOGS response.
    ListLogs(ListLogsResponse<'a>),
    /// DELETE_LOG response (empty).
    DeleteLog,
    /// PEER response (empty).
    Peer,
    /// REPLICATE response (RECORDS, TRIM and BARRIER; COMMIT is not answered on success).
    Replicate(ReplicateResponse),
    /// REGISTER_NODE response.
    RegisterNode(MapVersionResponse),
    /// HEARTBEAT response.
    Heartbeat(MapVersionResponse),
    /// GET_MAP response.
    GetMap(GetMapResponse<'a>),
    /// PULL response.
    Pull(PullResponse<'a>),
    /// SEAL response.
    Seal(SealResponse),
    /// RECONFIGURE_LOG response.
    ReconfigureLog(ReconfigureLogResponse<'a>),
    /// DRAIN_NODE response.
    DrainNode(MapVersionResponse),
    /// The request failed (flags RESPONSE|ERROR).
    Error(ErrorResponse<'a>),
    /// A subscription ended because of this error: its last push (flags
    /// RESPONSE|PUSH|END|ERROR, opcode SUBSCRIBE).
    PushError(ErrorResponse<'a>),
}

impl Response<'_> {
    /// The opcode this response answers; `None` for [`Response::Error`], which answers any.
    pub fn opcode(&self) -> Option<Opcode> {
        Some(match self {
            Response::Hello(_) => Opcode::Hello,
            Response::Append(_) => Opcode::Append,
            Response::Read(_) => Opcode::Read,
            Response::Subscribe(_) | Response::Push(_) | Response::PushError(_) => {
                Opcode::Subscribe
            }
            Response::Credit => Opcode::Credit,
            Response::Unsubscribe => Opcode::Unsubscribe,
            Response::CheckTail(_) => Opcode::CheckTail,
            Response::TailHint(_) => Opcode::TailHint,
            Response::Trim => Opcode::Trim,
            Response::CreateLog(_) => Opcode::CreateLog,
            Response::DescribeLog(_) => Opcode::DescribeLog,
            Response::ListLogs(_) => Opcode::ListLogs,
            Response::DeleteLog => Opcode::DeleteLog,
            Response::Peer => Opcode::Peer,
            Response::Replicate(_) => Opcode::Replicate,
            Response::RegisterNode(_) => Opcode::RegisterNode,
            Response::Heartbeat(_) => Opcode::Heartbeat,
            Response::GetMap(_) => Opcode::GetMap,
            Response::Pull(_) => Opcode::Pull,
            Response::Seal(_) => Opcode::Seal,
            Response::ReconfigureLog(_) => Opcode::ReconfigureLog,
            Response::DrainNode(_) => Opcode::DrainNode,
            Response::Error(_) => return None,
        })
    }

    /// The flags of the frame carrying this response.
    pub fn flags(&self) -> crate::Flags {
        use crate::Flags;
        match self {
            Response::Error(_) => Flags::RESPONSE | Flags::ERROR,
            Response::Push(Push { end: false, .. }) => Flags::RESPONSE | Flags::PUSH,
            Response::Push(Push { end: true, .. }) => Flags::RESPONSE | Flags::PUSH | Flags::END,
            Response::PushError(_) => Flags::RESPONSE | Flags::PUSH | Flags::END | Flags::ERROR,
            _ => Flags::RESPONSE,
        }
    }
}

/// HELLO response: the agreed version, where this connection landed, and the server's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloResponse {
    /// The agreed version (the newest both speak).
    pub version: u16,
    /// The shard this connection is served by.
    pub shard_index: u16,
    /// The node's shards (a log lives on shard `log_id % shard_count`).
    pub shard_count: u16,
    /// The server's `frame_bytes_max`.
    pub frame_bytes_max: u32,
    /// The server's `record_bytes_max`.
    pub record_bytes_max: u32,
    /// The server's `batch_records_max`.
    pub batch_records_max: u32,
    /// The node's id (0 from the controller).
    pub node_id: u64,
    /// What answered: a node or the controller.
    pub role: Role,
}

/// What answered a HELLO (the response's `role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Role {
    /// A chainlog node, standalone or a cluster member (role 0).
    Node = 0,
    /// The cluster's controller (role 1): it answers HELLO with shard 0 of 1, the default
    /// limits and node id 0.
    Controller = 1,
}

impl Role {
    /// Decodes a role; `None` if version 1 does not define it.
    pub fn from_u16(role: u16) -> Option<Role> {
        match role {
            0 => Some(Role::Node),
            1 => Some(Role::Controller),
            _ => None,
        }
    }
}

impl HelloResponse {
    /// The limits to encode and decode with on this connection: the server's frame, record and
    /// batch limits, version 1's fixed name and listing limits, the default in-flight limit.
    pub fn limits(&self) -> Limits {
        Limits {
            frame_bytes_max: self.frame_bytes_max,
            record_bytes_max: self.record_bytes_max,
            batch_records_max: self.batch_records_max,
            ..Limits::DEFAULT
        }
    }

    /// The shard that owns `log_id`.
    pub fn shard_of(&self, log_id: u64) -> u16 {
        // The remainder is below shard_count, a u16.
        (log_id % u64::from(self.shard_count.max(1))) as u16
    }
}

/// APPEND response: the batch's LSNs are `first_lsn..first_lsn + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    /// The first record's LSN.
    pub first_lsn: u64,
    /// The batch's records.
    pub count: u32,
}

/// READ response, and the body of a push: committed records with every field stamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResponse<'a> {
    /// Records below this LSN are committed.
    pub tail: u64,
    /// Consecutive records of one log, all below `tail`, every CRC checked.
    pub records: Records<'a>,
}

/// A subscription's stream item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Push<'a> {
    /// The records (same body as a READ response).
    pub batch: ReadResponse<'a>,
    /// The last item: the subscription has ended (END flag).
    pub end: bool,
}

/// SUBSCRIBE acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeResponse {
    /// The LSN of the first record the stream will push.
    pub start_lsn: u64,
}

/// CHECK_TAIL and TAIL_HINT response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailResponse {
    /// Records below this LSN are committed.
    pub tail: u64,
    /// Records below this LSN are trimmed.
    pub trim_point: u64,
    /// The log's current epoch.
    pub epoch: u64,
}

/// CREATE_LOG response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateLogResponse {
    /// The new log's id.
    pub log_id: u64,
    /// The shard that owns it.
    pub shard: u16,
}

/// DESCRIBE_LOG response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescribeLogResponse<'a> {
    /// The log's id.
    pub log_id: u64,
    /// Records below this LSN are committed.
    pub tail: u64,
    /// Records below this LSN are trimmed.
    pub trim_point: u64,
    /// The current epoch.
    pub epoch: u64,
    /// The shard that owns the log.
    pub shard: u16,
    /// Replicas per chain.
    pub replication_factor: u8,
    /// The log's name.
    pub name: &'a str,
}

/// A DESCRIBE_LOG answer kept beyond its frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogInfo {
    /// The id.
    pub log_id: u64,
    /// The name.
    pub name: String,
    /// Records below this LSN are committed.
    pub tail: u64,
    /// Records below this LSN are trimmed.
    pub trim_point: u64,
    /// The current epoch.
    pub epoch: u64,
    /// The shard that owns it.
    pub shard: u16,
    /// Replicas per chain.
    pub replication_factor: u8,
}

impl From<&DescribeLogResponse<'_>> for LogInfo {
    fn from(d: &DescribeLogResponse<'_>) -> LogInfo {
        LogInfo {
            log_id: d.log_id,
            name: d.name.to_string(),
            tail: d.tail,
            trim_point: d.trim_point,
            epoch: d.epoch,
            shard: d.shard,
            replication_factor: d.replication_factor,
        }
    }
}

/// REPLICATE response: how far the log is durable on the receiver and every node after it in
/// the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicateResponse {
    /// The log.
    pub log_id: u64,
    /// Every record below this LSN is durable on this node and every node after it
    /// (cumulative).
    pub durable_lsn: u64,
    /// The trim point durable on this node and every node after it.
    pub trim_point: u64,
    /// The receiver's own next LSN for the log.
    pub next_lsn: u64,
}

/// Bytes of a PULL request body.
pub(crate) const PULL_REQUEST_BYTES: usize = 32;
/// Bytes of a PULL response body before its records.
pub(crate) const PULL_RESPONSE_HEADER_BYTES: usize = 64;
// A PULL's answer carries what a REPLICATE does, and its header is no larger: the records of
// one APPEND fit one answer under the replication limits.
const _: () = assert!(PULL_RESPONSE_HEADER_BYTES <= REPLICATE_HEADER_BYTES);

/// PULL request (node to node, on a replication connection): the receiver's records of
/// `log_id` from `from_lsn` on, one run of them (PROTOCOL.md 6.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// The log.
    pub log_id: u64,
    /// The log's epoch at the sender; MUST be the receiver's (else WRONG_EPOCH).
    pub epoch: u64,
    /// The first LSN wanted: the sender's next LSN.
    pub from_lsn: u64,
    /// At most this many records (1..=`batch_records_max`).
    pub max_records: u32,
    /// The sender is one of the log's learners, copying it before it joins the chain (not
    /// the receiver's predecessor taking back records it lost): the receiver answers with
    /// committed records only, and from its trim point if `from_lsn` is below it.
    pub learner: bool,
}

/// PULL response: one run of the receiver's stored records (durable or not) from the
/// request's `from_lsn`, with the head's decisions about it as a REPLICATE of them would
/// carry, and the receiver's next LSN. `records` is empty when the receiver holds nothing
/// from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullResponse<'a> {
    /// The log.
    pub log_id: u64,
    /// The epoch the records were appended in.
    pub epoch: u64,
    /// The first record's LSN (the request's `from_lsn`).
    pub first_lsn: u64,
    /// The receiver's next LSN for the log.
    pub next_lsn: u64,
    /// The log's fencing token after the run if its last batch raised it, else 0.
    pub fencing_token: u64,
    /// The run's idempotency key if it is exactly one keyed batch (0, 0: none).
    pub writer_id: u64,
    /// The key's sequence number (0 when `writer_id` is 0).
    pub writer_seq: u64,
    /// Another PULL response to the same request follows, with the run after this one (a
    /// learner's PULL is answered with several runs; PROTOCOL.md 6.13a).
    pub more: bool,
    /// The records, stamped (record `i` has `lsn` `first_lsn + i` and `epoch`).
    pub records: Records<'a>,
    /// A learner's answer at the trim point (no records): the receiver's idempotency keys of
    /// the batches below it; else none.
    pub keys: Keys<'a>,
}

/// SEAL request: seal `log_id`'s epoch `epoch` at the receiving replica (PROTOCOL.md 6.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealRequest {
    /// The log.
    pub log_id: u64,
    /// The epoch to seal: the replica's current one.
    pub epoch: u64,
}

/// SEAL response: the epoch is sealed at the replica, which holds its records below
/// `end_lsn`, every one durable, and will never take another in that epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealResponse {
    /// The log.
    pub log_id: u64,
    /// The sealed epoch.
    pub epoch: u64,
    /// The replica's next LSN when it sealed (its records below are durable).
    pub end_lsn: u64,
    /// The replica's trim point.
    pub trim_point: u64,
}

/// Size of a RECONFIGURE_LOG request before its chain.
pub(crate) const RECONFIGURE_REQUEST_HEADER_BYTES: usize = 24;
/// Size of a RECONFIGURE_LOG response before its chain.
pub(crate) const RECONFIGURE_RESPONSE_HEADER_BYTES: usize = 32;

/// RECONFIGURE_LOG request: seal `log_id`'s epoch and start the next one (PROTOCOL.md 6.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconfigureLogRequest<'a> {
    /// The log.
    pub log_id: u64,
    /// The epoch to seal: the log's current one, or [`EPOCH_CURRENT`] (0) for whichever is.
    pub epoch: u64,
    /// The next epoch's chain, head first; empty: the controller's choice.
    pub chain: crate::map::Chain<'a>,
}

/// RECONFIGURE_LOG response: the epoch that followed the sealed one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconfigureLogResponse<'a> {
    /// The log.
    pub log_id: u64,
    /// The new epoch.
    pub epoch: u64,
    /// Its first LSN (where the sealed one ended).
    pub start_lsn: u64,
    /// Its chain, head first (never empty).
    pub chain: crate::map::Chain<'a>,
}

/// DRAIN_NODE request: drain node `node_id` or undo it (PROTOCOL.md 6.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainNodeRequest {
    /// The node.
    pub node_id: u64,
    /// True: drain it; false: undo a drain.
    pub drained: bool,
}

/// REGISTER_NODE, HEARTBEAT and DRAIN_NODE response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapVersionResponse {
    /// The controller's current map version (a node that has applied less fetches the map).
    pub map_version: u64,
}

/// GET_MAP response: a page of the cluster map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetMapResponse<'a> {
    /// The map's version (if it changes between pages, start again).
    pub version: u64,
    /// Every node, on every page, ascending by id.
    pub nodes: MapNodes<'a>,
    /// This page's logs, ascending by id, all above the request's `after_log_id`.
    pub logs: MapLogs<'a>,
}

/// LIST_LOGS response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListLogsResponse<'a> {
    /// The entries, ascending by log id.
    pub entries: LogEntries<'a>,
}

/// One LIST_LOGS entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry<'a> {
    /// The log's id.
    pub log_id: u64,
    /// The log's name.
    pub name: &'a str,
}

/// A LIST_LOGS entry kept beyond its frame.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogName {
    /// The id.
    pub log_id: u64,
    /// The name.
    pub name: String,
}

impl From<LogEntry<'_>> for LogName {
    fn from(e: LogEntry<'_>) -> LogName {
        LogName {
            log_id: e.log_id,
            name: e.name.to_string(),
        }
    }
}

/// The entries of a LIST_LOGS response: decoded (a validated view of the frame's bytes) or
/// given by a server as a slice, to encode.
#[derive(Clone, Copy, Debug)]
pub struct LogEntries<'a>(EntriesRepr<'a>);

#[derive(Clone, Copy, Debug)]
enum EntriesRepr<'a> {
    Encoded { bytes: &'a [u8], count: u32 },
    Slice(&'a [LogEntry<'a>]),
}

/// Size of a LIST_LOGS entry before its name.
pub(crate) const ENTRY_HEADER_BYTES: usize = 16;

impl<'a> LogEntries<'a> {
    /// Entries to encode.
    pub fn from_slice(entries: &'a [LogEntry<'a>]) -> LogEntries<'a> {
        LogEntries(EntriesRepr::Slice(entries))
    }

    /// Entries already checked by the decoder.
    pub(crate) fn encoded(bytes: &'a [u8], count: u32) -> LogEntries<'a> {
        LogEntries(EntriesRepr::Encoded { bytes, count })
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        match self.0 {
            EntriesRepr::Encoded { count, .. } => count as usize,
            EntriesRepr::Slice(entries) => entries.len(),
        }
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> LogEntriesIter<'a> {
        LogEntriesIter(match self.0 {
            EntriesRepr::Encoded { bytes, count } => IterRepr::Encoded {
                rest: bytes,
                remaining: count,
            },
            EntriesRepr::Slice(entries) => IterRepr::Slice(entries.iter()),
        })
    }
}

impl PartialEq for LogEntries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for LogEntries<'_> {}

impl<'a> IntoIterator for LogEntries<'a> {
    type Item = LogEntry<'a>;
    type IntoIter = LogEntriesIter<'a>;

    fn into_iter(self) -> LogEntriesIter<'a> {
        self.iter()
    }
}

/// Iterator over [`LogEntries`].
#[derive(Clone, Debug)]
pub struct LogEntriesIter<'a>(IterRepr<'a>);

#[derive(Clone, Debug)]
enum IterRepr<'a> {
    Encoded { rest: &'a [u8], remaining: u32 },
    Slice(std::slice::Iter<'a, LogEntry<'a>>),
}

impl<'a> Iterator for LogEntriesIter<'a> {
    type Item = LogEntry<'a>;

    fn next(&mut self) -> Option<LogEntry<'a>> {
        match &mut self.0 {
            IterRepr::Slice(entries) => entries.next().copied(),
            IterRepr::Encoded { rest, remaining } => {
                if *remaining == 0 {
                    return None;
                }
                *remaining -= 1;
                // The decoder checked every entry, so none of this can fail.
                let (head, tail) = rest.split_at(ENTRY_HEADER_BYTES);
                let log_id = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
                let name_len = usize::from(u16::from_le_bytes([head[8], head[9]]));
                let name = std::str::from_utf8(&tail[..name_len]).expect("checked at decode");
                *rest = &tail[padded(name_len)..];
                Some(LogEntry { log_id, name })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = match &self.0 {
            IterRepr::Slice(entries) => entries.len(),
            IterRepr::Encoded { remaining, .. } => *remaining as usize,
        };
        (len, Some(len))
    }
}

impl ExactSizeIterator for LogEntriesIter<'_> {}

/// `n` rounded up to a multiple of 8.
pub(crate) const fn padded(n: usize) -> usize {
    (n + 7) & !7
}

/// An ERROR body. Whether it is retryable follows from the code
/// ([`ErrorCode::is_retryable`]); the wire carries that bit too, for clients without a code
/// table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorResponse<'a> {
    /// What went wrong.
    pub code: ErrorCode,
    /// The code's first argument (see [`ErrorCode`]).
    pub arg0: u64,
    /// The code's second argument (0 unless the code defines it).
    pub arg1: u64,
    /// For people, not programs (at most 1024 bytes of UTF-8).
    pub message: &'a str,
}

impl<'a> ErrorResponse<'a> {
    /// An error with `arg0`, `arg1` = 0 and `message`.
    pub fn new(code: ErrorCode, arg0: u64, message: &'a str) -> ErrorResponse<'a> {
        ErrorResponse {
            code,
            arg0,
            arg1: 0,
            message,
        }
    }

    /// True if the request can be retried unchanged ([`ErrorCode::is_retryable`]).
    pub fn retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

/// An ERROR answer kept beyond its frame: the request did not take effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// What went wrong.
    pub code: ErrorCode,
    /// The code's first argument (PROTOCOL.md section 8), `u64::MAX` when it does not apply.
    pub arg0: u64,
    /// The code's second argument.
    pub arg1: u64,
    /// For people.
    pub message: String,
}

impl From<&ErrorResponse<'_>> for ServerError {
    fn from(error: &ErrorResponse<'_>) -> ServerError {
        ServerError {
            code: error.code,
            arg0: error.arg0,
            arg1: error.arg1,
            message: error.message.to_string(),
        }
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}
