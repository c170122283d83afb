//! Property tests: decoding arbitrary bytes, and arbitrary mutations of valid frames, never
//! panics; whatever decodes re-encodes to the very same bytes (the encoding is canonical);
//! arbitrary valid requests round-trip.

mod common;

use chainlog_net::*;
use common::*;
use proptest::prelude::*;

fn corpus() -> Vec<Vec<u8>> {
    let mut corpus = request_corpus();
    corpus.extend(response_corpus());
    corpus
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, value: u8 },
    Truncate { len: usize },
    Insert { at: usize, value: u8 },
    Remove { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Insert { at, value }),
        any::<usize>().prop_map(|at| Mutation::Remove { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match *mutation {
        Mutation::Flip { at, bit } => bytes[at % n] ^= 1 << bit,
        Mutation::Set { at, value } => bytes[at % n] = value,
        Mutation::Truncate { len } => bytes.truncate(len % n),
        Mutation::Insert { at, value } => bytes.insert(at % (n + 1), value),
        Mutation::Remove { at } => {
            bytes.remove(at % n);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_everything(&bytes, &Limits::DEFAULT);
        decode_everything(&bytes, &small_limits());
    }

    #[test]
    fn arbitrary_bodies_in_valid_frames_never_panic(
        // Every opcode, opcode 0 and the first undefined one.
        opcode in 0u16..=Opcode::ALL.len() as u16 + 1,
        flags in 0u16..16,
        request_id in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let bytes = raw_frame(opcode, flags, request_id, &body);
        decode_everything(&bytes, &Limits::DEFAULT);
        decode_everything(&bytes, &small_limits());
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        pick in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        fix_framing in any::<bool>(),
    ) {
        let corpus = corpus();
        let mut bytes = pick.get(&corpus).clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if fix_framing {
            reframe(&mut bytes);
        }
        decode_everything(&bytes, &Limits::DEFAULT);
        decode_everything(&bytes, &small_limits());
    }

    #[test]
    fn valid_appends_round_trip(
        log_id in any::<u64>(),
        epoch in any::<u64>(),
        expected_lsn in any::<u64>(),
        fencing_token in any::<u64>(),
        writer in proptest::option::of((1u64.., any::<u64>())),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
        request_id in any::<u64>(),
    ) {
        let (writer_id, writer_seq) = writer.unwrap_or((0, 0));
        let header = AppendHeader { log_id, epoch, expected_lsn, fencing_token, writer_id, writer_seq };
        let mut out = Vec::new();
        let mut batch = AppendBuilder::new(&mut out, request_id, &header, &Limits::DEFAULT);
        for p in &payloads {
            batch.push(p).unwrap();
        }
        batch.finish();
        let frame = parse_frame(&out, &Limits::DEFAULT).unwrap().unwrap();
        prop_assert_eq!(frame.request_id, request_id);
        let Request::Append(append) = decode_request(&frame, &Limits::DEFAULT).unwrap() else {
            panic!("not an append");
        };
        prop_assert_eq!(append.header, header);
        let got: Vec<&[u8]> = append.records.iter().map(|r| r.payload).collect();
        let want: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(decode_everything(&out, &Limits::DEFAULT), 1);
    }

    #[test]
    fn valid_replicates_round_trip(
        log_id in any::<u64>(),
        epoch in any::<u64>(),
        first_lsn in 0u64..u64::MAX - 8,
        committed_lsn in any::<u64>(),
        fencing_token in any::<u64>(),
        writer in proptest::option::of((1u64.., any::<u64>())),
        trim_before in any::<u64>(),
        kind in 1u8..=4,
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
        request_id in any::<u64>(),
    ) {
        let kind = ReplicateKind::from_u8(kind).unwrap();
        let base = ReplicateHeader::new(kind, log_id, epoch, first_lsn, committed_lsn);
        let (header, bytes) = match kind {
            ReplicateKind::Records => {
                let (writer_id, writer_seq) = writer.unwrap_or((0, 0));
                let payloads: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
                let header = ReplicateHeader { fencing_token, writer_id, writer_seq, ..base };
                (header, replicated(log_id, epoch, first_lsn, &payloads))
            }
            ReplicateKind::Trim => (ReplicateHeader { trim_before, ..base }, Vec::new()),
            ReplicateKind::Barrier | ReplicateKind::Commit => (base, Vec::new()),
        };
        let count = if bytes.is_empty() { 0 } else { payloads.len() as u32 };
        let form = RecordForm::Replicated { log_id, epoch, first_lsn };
        let records = Records::parse(&bytes, count, form, &Limits::DEFAULT).unwrap();
        let request = Request::Replicate(ReplicateRequest { header, records, keys: Keys::EMPTY });
        let mut out = Vec::new();
        encode_request(&mut out, request_id, &request);
        let frame = parse_frame(&out, &Limits::DEFAULT).unwrap().unwrap();
        prop_assert_eq!(decode_request(&frame, &Limits::DEFAULT).unwrap(), request);
        prop_assert_eq!(decode_everything(&out, &Limits::DEFAULT), 1);
    }

    #[test]
    fn valid_map_pages_round_trip(
        version in any::<u64>(),
        nodes in proptest::collection::btree_map(
            1u64..,
            (
                1u16..,
                any::<bool>(),
                any::<bool>(),
                any::<u64>(),
                "[a-z0-9.:\\[\\]-]{1,40}",
                "[a-z0-9\u{e0}-]{0,64}",
                "[a-z0-9-]{0,30}",
            ),
            0..6,
        ),
        logs in proptest::collection::btree_map(
            any::<u64>(),
            (
                any::<u64>(),
                any::<u64>(),
                1u8..,
                any::<u64>(),
                proptest::collection::vec(1u64.., 1..8),
                "[a-z0-9/._\u{e0}-\u{ff}-]{1,60}",
            ),
            0..6,
        ),
        request_id in any::<u64>(),
    ) {
        let nodes: Vec<MapNode<'_>> = nodes
            .iter()
            .map(|(&node_id, (shard_count, alive, drained, last_heartbeat_ms, addr, zone, rack))| {
                MapNode {
                    node_id,
                    shard_count: *shard_count,
                    alive: *alive,
                    drained: *drained,
                    last_heartbeat_ms: *last_heartbeat_ms,
                    addr,
                    zone: &zone[..zone.floor_char_boundary(64)],
                    rack,
                }
            })
            .collect();
        let logs: Vec<MapLog<'_>> = logs
            .iter()
            .map(|(&log_id, (epoch, start_lsn, rf, created_version, chain, name))| MapLog {
                log_id,
                epoch: *epoch,
                start_lsn: *start_lsn,
                trim_lsn: *start_lsn / 2,
                replication_factor: *rf,
                created_version: *created_version,
                chain: Chain::from_slice(chain),
                learners: Chain::from_slice(&[]),
                name,
            })
            .collect();
        let page = Response::GetMap(GetMapResponse {
            version,
            nodes: MapNodes::from_slice(&nodes),
            logs: MapLogs::from_slice(&logs),
        });
        let mut out = Vec::new();
        encode_response(&mut out, request_id, Opcode::GetMap, &page);
        let frame = parse_frame(&out, &Limits::DEFAULT).unwrap().unwrap();
        let decoded = decode_response(&frame, &Limits::DEFAULT).unwrap();
        prop_assert_eq!(decoded, page);
        let Response::GetMap(decoded) = decoded else { panic!("not a GET_MAP response") };
        prop_assert_eq!(decoded.nodes.iter().collect::<Vec<_>>(), nodes.clone());
        prop_assert_eq!(decoded.logs.iter().collect::<Vec<_>>(), logs.clone());
        prop_assert_eq!(decode_everything(&out, &Limits::DEFAULT), 1);
    }

    #[test]
    fn valid_small_requests_round_trip(
        a in any::<u64>(),
        b in any::<u64>(),
        c in any::<u32>(),
        d in any::<u32>(),
        name in "[a-z0-9/._\u{e0}-\u{ff}-]{1,60}",
        rf in any::<u8>(),
        request_id in any::<u64>(),
    ) {
        let requests = [
            Request::Read(ReadRequest { log_id: a, from_lsn: b, max_records: c, max_bytes: d }),
            Request::Subscribe(SubscribeRequest { log_id: a, from_lsn: b, credit_records: c }),
            Request::Credit(CreditRequest { subscription_id: a, records: c }),
            Request::Unsubscribe(UnsubscribeRequest { subscription_id: a }),
            Request::CheckTail { log_id: a },
            Request::TailHint { log_id: b },
            Request::Trim(TrimRequest { log_id: a, before_lsn: b }),
            Request::CreateLog(CreateLogRequest { replication_factor: rf, name: &name }),
            Request::DescribeLog(DescribeLogRequest { by: LogRef::Id(a) }),
            Request::DescribeLog(DescribeLogRequest { by: LogRef::Name(&name) }),
            Request::ListLogs(ListLogsRequest { after_log_id: a, max: c }),
            Request::DeleteLog { log_id: a },
            Request::Peer(PeerRequest { node_id: a.max(1) }),
            Request::RegisterNode(RegisterNodeRequest {
                node_id: a.max(1),
                shard_count: (c as u16).max(1),
                addr: &name,
                zone: &name[..name.floor_char_boundary(64)],
                rack: if rf % 2 == 0 { "" } else { "r1" },
            }),
            Request::Heartbeat(HeartbeatRequest { node_id: a.max(1), applied_version: b, suspect: u64::from(c) }),
            Request::GetMap(GetMapRequest { after_log_id: a, max: c }),
        ];
        for request in requests {
            let mut out = Vec::new();
            encode_request(&mut out, request_id, &request);
            let frame = parse_frame(&out, &Limits::DEFAULT).unwrap().unwrap();
            prop_assert_eq!(decode_request(&frame, &Limits::DEFAULT).unwrap(), request);
        }
    }
}
