//! Helpers shared by the integration tests: raw frames with any header, record batches, and a
//! corpus of one valid frame of every request and response kind.
#![allow(dead_code, unreachable_pub)]

use chainlog_net::*;

/// A frame with exactly these header fields and body, length and CRC computed (so decoders
/// see whatever the body holds).
pub fn raw_frame(opcode: u16, flags: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(20 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(&opcode.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(body);
    fix_crc(&mut out);
    out
}

/// Recomputes the CRC of the frame at the start of `frame`.
pub fn fix_crc(frame: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[4..16]), &frame[24..]);
    frame[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// A record header followed by the payload and padding.
pub fn record(header: RecordHeader, payload: &[u8]) -> Vec<u8> {
    let mut bytes = bytemuck::bytes_of(&header).to_vec();
    bytes.extend_from_slice(payload);
    bytes.resize(bytes.len().next_multiple_of(8), 0);
    bytes
}

/// Unstamped records, as a client sends them.
pub fn unstamped(payloads: &[&[u8]]) -> Vec<u8> {
    payloads
        .iter()
        .flat_map(|p| {
            record(
                RecordHeader {
                    len: p.len() as u32,
                    crc: crc32c::crc32c(p),
                    ..RecordHeader::default()
                },
                p,
            )
        })
        .collect()
}

/// Stamped records of `log_id` from `first_lsn`, as a server returns them.
pub fn stamped(log_id: u64, first_lsn: u64, payloads: &[&[u8]]) -> Vec<u8> {
    payloads
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            record(
                RecordHeader {
                    len: p.len() as u32,
                    crc: crc32c::crc32c(p),
                    log_id,
                    lsn: first_lsn + i as u64,
                    epoch: 3,
                    timestamp_us: 1_700_000_000_000_000 + i as u64,
                },
                p,
            )
        })
        .collect()
}

/// Records of `log_id` in `epoch` from `first_lsn`, as a head replicates them.
pub fn replicated(log_id: u64, epoch: u64, first_lsn: u64, payloads: &[&[u8]]) -> Vec<u8> {
    payloads
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            record(
                RecordHeader {
                    len: p.len() as u32,
                    crc: crc32c::crc32c(p),
                    log_id,
                    lsn: first_lsn + i as u64,
                    epoch,
                    timestamp_us: 1_700_000_000_000_000 + i as u64,
                },
                p,
            )
        })
        .collect()
}

/// A REPLICATE body: the 72-byte header (count and kind byte as given) and `records`.
pub fn replicate_body(header: &ReplicateHeader, count: u32, kind: u8, records: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for field in [
        header.log_id,
        header.epoch,
        header.first_lsn,
        header.committed_lsn,
        header.fencing_token,
        header.writer_id,
        header.writer_seq,
        header.trim_before,
    ] {
        body.extend_from_slice(&field.to_le_bytes());
    }
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&[kind, 0, 0, 0]);
    body.extend_from_slice(records);
    body
}

/// An APPEND body: the 56-byte header (count as given) and `records`.
pub fn append_body(header: &AppendHeader, count: u32, records: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for field in [
        header.log_id,
        header.epoch,
        header.expected_lsn,
        header.fencing_token,
        header.writer_id,
        header.writer_seq,
    ] {
        body.extend_from_slice(&field.to_le_bytes());
    }
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(records);
    body
}

pub const PAYLOADS: [&[u8]; 4] = [
    b"hello",
    b"",
    b"exactly8",
    b"a longer payload of some bytes",
];

/// One valid request of every kind (and a few variants), encoded, with request ids 1, 2, ...
pub fn request_corpus() -> Vec<Vec<u8>> {
    let records = unstamped(&PAYLOADS);
    let records = Records::parse(&records, 4, RecordForm::Unstamped, &Limits::DEFAULT).unwrap();
    let replicated = replicated(7, 3, 10, &PAYLOADS);
    let form = RecordForm::Replicated {
        log_id: 7,
        epoch: 3,
        first_lsn: 10,
    };
    let replicated = Records::parse(&replicated, 4, form, &Limits::DEFAULT).unwrap();
    // A TRIM that skips a successor to the trim point carries the batches' keys below it.
    let trim_keys = test_keys();
    let trim_keys = Keys::parse(trim_keys, 2).unwrap();
    let requests = [
        Request::Hello(HelloRequest::CURRENT),
        Request::Hello(HelloRequest {
            min_version: 0,
            max_version: 9,
        }),
        Request::Append(AppendRequest {
            header: AppendHeader {
                log_id: 7,
                epoch: 2,
                expected_lsn: 100,
                fencing_token: 5,
                writer_id: 11,
                writer_seq: 12,
            },
            records,
        }),
        Request::Append(AppendRequest {
            header: AppendHeader::new(u64::MAX - 1),
            records,
        }),
        Request::Read(ReadRequest {
            log_id: 7,
            from_lsn: 10,
            max_records: 100,
            max_bytes: 1 << 20,
        }),
        Request::Subscribe(SubscribeRequest {
            log_id: 7,
            from_lsn: LSN_FROM_TAIL,
            credit_records: 64,
        }),
        Request::Credit(CreditRequest {
            subscription_id: 6,
            records: 32,
        }),
        Request::Unsubscribe(UnsubscribeRequest { subscription_id: 6 }),
        Request::CheckTail { log_id: 7 },
        Request::TailHint { log_id: 8 },
        Request::Trim(TrimRequest {
            log_id: 7,
            before_lsn: 50,
        }),
        Request::CreateLog(CreateLogRequest {
            replication_factor: 3,
            name: "orders",
        }),
        Request::CreateLog(CreateLogRequest {
            replication_factor: 1,
            name: "ünïcödé/журнал",
        }),
        Request::DescribeLog(DescribeLogRequest { by: LogRef::Id(7) }),
        Request::DescribeLog(DescribeLogRequest {
            by: LogRef::Name("orders"),
        }),
        Request::ListLogs(ListLogsRequest {
            after_log_id: 0,
            max: 1000,
        }),
        Request::DeleteLog { log_id: 7 },
        Request::Peer(PeerRequest { node_id: 2 }),
        Request::Replicate(ReplicateRequest {
            header: ReplicateHeader {
                fencing_token: 5,
                writer_id: 11,
                writer_seq: 12,
                ..ReplicateHeader::new(ReplicateKind::Records, 7, 3, 10, 8)
            },
            records: replicated,
            keys: Keys::EMPTY,
        }),
        Request::Replicate(ReplicateRequest {
            header: ReplicateHeader {
                trim_before: 9,
                ..ReplicateHeader::new(ReplicateKind::Trim, 7, 3, 14, 14)
            },
            records: Records::EMPTY,
            keys: trim_keys,
        }),
        Request::Replicate(ReplicateRequest {
            header: ReplicateHeader::new(ReplicateKind::Barrier, 7, 3, 14, 12),
            records: Records::EMPTY,
            keys: Keys::EMPTY,
        }),
        Request::Replicate(ReplicateRequest {
            header: ReplicateHeader::new(ReplicateKind::Commit, 7, 3, 14, 14),
            records: Records::EMPTY,
            keys: Keys::EMPTY,
        }),
        // Without labels (the body of a node that predates them), with a zone and a rack, with
        // a rack alone.
        Request::RegisterNode(RegisterNodeRequest {
            node_id: 2,
            shard_count: 4,
            addr: "10.0.0.2:7400",
            zone: "",
            rack: "",
        }),
        Request::RegisterNode(RegisterNodeRequest {
            node_id: u64::MAX,
            shard_count: 1,
            addr: "[::1]:1",
            zone: "eu-west-1a",
            rack: "r17",
        }),
        Request::RegisterNode(RegisterNodeRequest {
            node_id: 3,
            shard_count: 1,
            addr: "h:1",
            zone: "",
            rack: "rack-\u{e9}",
        }),
        Request::Heartbeat(HeartbeatRequest {
            node_id: 2,
            applied_version: 41,
            suspect: 3,
        }),
        Request::GetMap(GetMapRequest {
            after_log_id: 7,
            max: 1000,
        }),
        Request::Pull(PullRequest {
            log_id: 7,
            epoch: 3,
            from_lsn: 10,
            max_records: 512,
            learner: true,
        }),
        Request::Seal(SealRequest {
            log_id: 7,
            epoch: 3,
        }),
        // The controller's choice of chain, then a given one.
        Request::ReconfigureLog(ReconfigureLogRequest {
            log_id: 7,
            epoch: 0,
            chain: Chain::from_slice(&[]),
        }),
        Request::ReconfigureLog(ReconfigureLogRequest {
            log_id: 7,
            epoch: 3,
            chain: Chain::from_slice(&[2, 3, 4]),
        }),
        Request::DrainNode(DrainNodeRequest {
            node_id: 3,
            drained: true,
        }),
        Request::DrainNode(DrainNodeRequest {
            node_id: 3,
            drained: false,
        }),
    ];
    requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            let mut out = Vec::new();
            encode_request(&mut out, i as u64 + 1, request);
            out
        })
        .collect()
}

/// Nodes of a cluster map: addresses of odd and even lengths, one never heard from; with a
/// zone and rack, a zone alone, no labels.
pub const MAP_NODES: [MapNode<'static>; 3] = [
    MapNode {
        node_id: 1,
        shard_count: 2,
        alive: true,
        drained: false,
        last_heartbeat_ms: 150,
        addr: "node-1.example:7400",
        zone: "eu-west-1a",
        rack: "r1",
    },
    MapNode {
        node_id: 2,
        shard_count: 1,
        alive: false,
        drained: true,
        last_heartbeat_ms: 9_000,
        addr: "10.0.0.2:7400",
        zone: "eu-west-1b",
        rack: "",
    },
    MapNode {
        node_id: 5,
        shard_count: 4,
        alive: false,
        drained: false,
        last_heartbeat_ms: HEARTBEAT_MS_NEVER,
        addr: "h:1",
        zone: "",
        rack: "",
    },
];

/// Chains for [`map_logs`].
pub const MAP_CHAINS: [&[u64]; 3] = [&[1, 2, 5], &[5], &[2, 1]];
/// The learners of the second log (copying before they join its chain of one).
pub const MAP_LEARNERS: &[u64] = &[1, 2];

/// Logs of a cluster map page: chains of 3, 1 and 2 nodes, names of odd and even lengths.
pub fn map_logs() -> [MapLog<'static>; 3] {
    [
        MapLog {
            log_id: 3,
            epoch: 1,
            start_lsn: 0,
            trim_lsn: 0,
            replication_factor: 3,
            created_version: 4,
            chain: Chain::from_slice(MAP_CHAINS[0]),
            learners: Chain::from_slice(&[]),
            name: "a",
        },
        MapLog {
            log_id: 7,
            epoch: 4,
            start_lsn: 1_000,
            trim_lsn: 600,
            replication_factor: 3,
            created_version: 6,
            chain: Chain::from_slice(MAP_CHAINS[1]),
            learners: Chain::from_slice(MAP_LEARNERS),
            name: "orders",
        },
        MapLog {
            log_id: 9,
            epoch: 2,
            start_lsn: 17,
            trim_lsn: 17,
            replication_factor: 2,
            created_version: 9,
            chain: Chain::from_slice(MAP_CHAINS[2]),
            learners: Chain::from_slice(&[]),
            name: "exactly8",
        },
    ]
}

/// One valid response of every kind (and every error code), encoded.
pub fn response_corpus() -> Vec<Vec<u8>> {
    let records = stamped(7, 10, &PAYLOADS);
    let records = Records::parse(&records, 4, RecordForm::Stamped, &Limits::DEFAULT).unwrap();
    let pulled = replicated(7, 3, 10, &PAYLOADS);
    let form = RecordForm::Replicated {
        log_id: 7,
        epoch: 3,
        first_lsn: 10,
    };
    let pulled = Records::parse(&pulled, 4, form, &Limits::DEFAULT).unwrap();
    let pull_keys = Keys::parse(test_keys(), 2).unwrap();
    let entries = [
        LogEntry {
            log_id: 3,
            name: "a",
        },
        LogEntry {
            log_id: 7,
            name: "orders",
        },
        LogEntry {
            log_id: 9,
            name: "exactly8",
        },
    ];
    let read = ReadResponse { tail: 20, records };
    let map_logs = map_logs();
    let tail = TailResponse {
        tail: 20,
        trim_point: 5,
        epoch: 3,
    };
    let responses = [
        Response::Hello(HelloResponse {
            version: 1,
            shard_index: 1,
            shard_count: 2,
            frame_bytes_max: Limits::DEFAULT.frame_bytes_max,
            record_bytes_max: Limits::DEFAULT.record_bytes_max,
            batch_records_max: Limits::DEFAULT.batch_records_max,
            node_id: 42,
            role: Role::Node,
        }),
        Response::Append(AppendResponse {
            first_lsn: 10,
            count: 4,
        }),
        Response::Read(read),
        Response::Read(ReadResponse {
            tail: 0,
            records: Records::EMPTY,
        }),
        Response::Subscribe(SubscribeResponse { start_lsn: 10 }),
        Response::Push(Push {
            batch: read,
            end: false,
        }),
        Response::Push(Push {
            batch: ReadResponse {
                tail: 20,
                records: Records::EMPTY,
            },
            end: true,
        }),
        Response::PushError(ErrorResponse::new(
            ErrorCode::UnknownLog,
            ARG_NONE,
            "deleted",
        )),
        Response::Credit,
        Response::Unsubscribe,
        Response::CheckTail(tail),
        Response::TailHint(tail),
        Response::Trim,
        Response::CreateLog(CreateLogResponse {
            log_id: 7,
            shard: 1,
        }),
        Response::DescribeLog(DescribeLogResponse {
            log_id: 7,
            tail: 20,
            trim_point: 5,
            epoch: 3,
            shard: 1,
            replication_factor: 3,
            name: "orders",
        }),
        Response::ListLogs(ListLogsResponse {
            entries: LogEntries::from_slice(&entries),
        }),
        Response::ListLogs(ListLogsResponse {
            entries: LogEntries::from_slice(&[]),
        }),
        Response::DeleteLog,
        Response::Peer,
        Response::Replicate(ReplicateResponse {
            log_id: 7,
            durable_lsn: 14,
            trim_point: 9,
            next_lsn: 15,
        }),
        Response::RegisterNode(MapVersionResponse { map_version: 41 }),
        Response::Heartbeat(MapVersionResponse { map_version: 42 }),
        Response::GetMap(GetMapResponse {
            version: 42,
            nodes: MapNodes::from_slice(&MAP_NODES),
            logs: MapLogs::from_slice(&map_logs),
        }),
        // The last page: every node, no more logs.
        Response::GetMap(GetMapResponse {
            version: 42,
            nodes: MapNodes::from_slice(&MAP_NODES),
            logs: MapLogs::from_slice(&[]),
        }),
        // A cluster without nodes yet.
        Response::GetMap(GetMapResponse {
            version: 0,
            nodes: MapNodes::from_slice(&[]),
            logs: MapLogs::from_slice(&[]),
        }),
        // A controller's HELLO answer.
        Response::Hello(HelloResponse {
            version: 1,
            shard_index: 0,
            shard_count: 1,
            frame_bytes_max: Limits::DEFAULT.frame_bytes_max,
            record_bytes_max: Limits::DEFAULT.record_bytes_max,
            batch_records_max: Limits::DEFAULT.batch_records_max,
            node_id: 0,
            role: Role::Controller,
        }),
        // A PULL's answer: one keyed batch that raised the token, more to follow; and a
        // learner's at the trim point (no records, the log's token).
        Response::Pull(PullResponse {
            log_id: 7,
            epoch: 3,
            first_lsn: 10,
            next_lsn: 20,
            fencing_token: 9,
            writer_id: 4,
            writer_seq: 5,
            more: true,
            records: pulled,
            keys: Keys::EMPTY,
        }),
        Response::Seal(SealResponse {
            log_id: 7,
            epoch: 3,
            end_lsn: 20,
            trim_point: 4,
        }),
        Response::ReconfigureLog(ReconfigureLogResponse {
            log_id: 7,
            epoch: 4,
            start_lsn: 20,
            chain: Chain::from_slice(&[2, 3, 4]),
        }),
        Response::DrainNode(MapVersionResponse { map_version: 12 }),
        Response::Pull(PullResponse {
            log_id: 7,
            epoch: 3,
            first_lsn: 20,
            next_lsn: 20,
            fencing_token: 9,
            writer_id: 0,
            writer_seq: 0,
            more: false,
            records: Records::EMPTY,
            keys: pull_keys,
        }),
    ];
    let mut frames: Vec<Vec<u8>> = responses
        .iter()
        .enumerate()
        .map(|(i, response)| {
            let mut out = Vec::new();
            let opcode = response.opcode().unwrap();
            encode_response(&mut out, i as u64 + 1, opcode, response);
            out
        })
        .collect();
    for code in ErrorCode::ALL {
        let mut out = Vec::new();
        let error = ErrorResponse {
            code,
            arg0: code as u64 * 1000,
            arg1: 17,
            message: code.name(),
        };
        encode_error(&mut out, 100 + code as u64, Some(Opcode::Append), &error);
        frames.push(out);
    }
    let mut out = Vec::new();
    encode_error(
        &mut out,
        0,
        None,
        &ErrorResponse::new(ErrorCode::Malformed, ARG_NONE, "bad frame crc"),
    );
    frames.push(out);
    frames
}

/// Parses one whole frame that must be valid framing.
pub fn frame(bytes: &[u8]) -> Frame<'_> {
    let frame = parse_frame(bytes, &Limits::DEFAULT)
        .expect("valid framing")
        .expect("a whole frame");
    assert_eq!(frame.frame_bytes(), bytes.len());
    frame
}

/// Encodes a decoded response again, as the server would have.
pub fn reencode_response(frame: &Frame<'_>, response: &Response<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    match response {
        Response::Error(error) => encode_error(
            &mut out,
            frame.request_id,
            Opcode::from_u16(frame.opcode),
            error,
        ),
        _ => encode_response(
            &mut out,
            frame.request_id,
            Opcode::from_u16(frame.opcode).unwrap(),
            response,
        ),
    }
    out
}

/// Two idempotency keys in the wire layout, for the messages that carry them.
fn test_keys() -> &'static [u8] {
    static KEYS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let mut out = Vec::new();
        let key = |writer_id, first_lsn| chainlog_storage::WriterKey {
            writer_id,
            writer_seq: 3,
            first_lsn,
            count: 2,
        };
        Keys::encode(&mut out, &[key(4, 0), key(5, 2)]);
        out
    })
}

/// Runs every decoder over `bytes` under `limits`; checks that a successful decode re-encodes
/// to the same frame. Returns how many frames decoded.
pub fn decode_everything(bytes: &[u8], limits: &Limits) -> usize {
    let mut decoded = 0;
    let mut rest = bytes;
    // Framing errors end the stream, as they end a connection.
    while let Ok(Some(frame)) = parse_frame(rest, limits) {
        let this = &rest[..frame.frame_bytes()];
        if let Ok(request) = decode_request(&frame, limits) {
            let mut again = Vec::new();
            encode_request(&mut again, frame.request_id, &request);
            if again != this && without_labels(&request) {
                // The one message with two encodings (PROTOCOL.md): REGISTER_NODE's empty
                // labels may be two zero lengths or nothing; the encoder writes nothing.
                assert_eq!(again.len() + 2, this.len(), "{request:?}");
                let mut shorter = this[..this.len() - 2].to_vec();
                reframe(&mut shorter);
                assert_eq!(again, shorter, "{request:?}");
            } else {
                assert_eq!(again, this, "{request:?}");
            }
            decoded += 1;
        }
        if let Ok(response) = decode_response(&frame, limits) {
            assert_eq!(reencode_response(&frame, &response), this, "{response:?}");
            decoded += 1;
        }
        rest = &rest[frame.frame_bytes()..];
    }
    decoded
}

/// A REGISTER_NODE without a zone or a rack.
fn without_labels(request: &Request<'_>) -> bool {
    matches!(request, Request::RegisterNode(r) if r.zone.is_empty() && r.rack.is_empty())
}

/// Sets `length` to the buffer's size and recomputes the CRC, so mutations reach the message
/// decoders instead of stopping at framing.
pub fn reframe(bytes: &mut [u8]) {
    if bytes.len() >= 24 {
        let length = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&length.to_le_bytes());
        fix_crc(bytes);
    }
}

/// Limits small enough that short inputs reach every limit check.
pub fn small_limits() -> Limits {
    Limits {
        frame_bytes_max: 512,
        record_bytes_max: 64,
        batch_records_max: 3,
        name_bytes_max: 8,
        list_max: 2,
        in_flight_max: 1,
    }
}
