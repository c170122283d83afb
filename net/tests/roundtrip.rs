//! Valid frames: every request, response and error code survives encode → parse → decode and
//! re-encodes to the same bytes; the PROTOCOL.md examples are what the encoder writes; partial
//! frames ask for more bytes; pipelined frames split cleanly; the builders agree with the
//! encoders.

mod common;

use chainlog_net::*;
use common::*;

#[test]
fn every_request_round_trips_byte_for_byte() {
    let corpus = request_corpus();
    assert_eq!(corpus.len(), 33);
    let mut seen = std::collections::HashSet::new();
    for bytes in &corpus {
        let frame = frame(bytes);
        let request = decode_request(&frame, &Limits::DEFAULT).unwrap();
        assert_eq!(request.opcode() as u16, frame.opcode);
        seen.insert(request.opcode());
        let mut again = Vec::new();
        encode_request(&mut again, frame.request_id, &request);
        assert_eq!(&again, bytes, "{request:?}");
    }
    assert_eq!(seen.len(), Opcode::ALL.len(), "every opcode has a request");
}

/// REGISTER_NODE as a node that predates labels sends it (the body ends after the address):
/// no zone, no rack; with labels after the address: both; with empty labels spelled out: none,
/// and the encoder leaves them out again, so that an unlabelled node's body stays the old one.
#[test]
fn register_node_decodes_with_and_without_labels() {
    let mut old = 2u64.to_le_bytes().to_vec();
    old.extend_from_slice(&4u16.to_le_bytes());
    old.extend_from_slice(&3u16.to_le_bytes());
    old.extend_from_slice(&[0; 4]);
    old.extend_from_slice(b"h:1");
    let decodes_to = |body: &[u8], expected: Request<'_>| {
        let bytes = raw_frame(Opcode::RegisterNode as u16, 0, 1, body);
        assert_eq!(
            decode_request(&frame(&bytes), &Limits::DEFAULT),
            Ok(expected)
        );
    };
    let register = |zone, rack| {
        Request::RegisterNode(RegisterNodeRequest {
            node_id: 2,
            shard_count: 4,
            addr: "h:1",
            zone,
            rack,
        })
    };
    decodes_to(&old, register("", ""));
    let labelled = [&old[..], b"\x0aeu-west-1a\x03r17"].concat();
    decodes_to(&labelled, register("eu-west-1a", "r17"));
    let empty = [&old[..], &[0, 0]].concat();
    decodes_to(&empty, register("", ""));
    let mut out = Vec::new();
    encode_request(&mut out, 1, &register("", ""));
    assert_eq!(&out[24..], &old[..]);
    let mut out = Vec::new();
    encode_request(&mut out, 1, &register("eu-west-1a", "r17"));
    assert_eq!(&out[24..], &labelled[..]);
}

#[test]
fn request_fields_survive_decoding() {
    let corpus = request_corpus();
    let append = frame(&corpus[2]);
    let Request::Append(append) = decode_request(&append, &Limits::DEFAULT).unwrap() else {
        panic!("not an append");
    };
    assert_eq!(
        append.header,
        AppendHeader {
            log_id: 7,
            epoch: 2,
            expected_lsn: 100,
            fencing_token: 5,
            writer_id: 11,
            writer_seq: 12,
        }
    );
    assert_eq!(append.records.count(), 4);
    let payloads: Vec<&[u8]> = append.records.iter().map(|r| r.payload).collect();
    assert_eq!(payloads, PAYLOADS);
    for r in append.records {
        assert_eq!(r.header.crc, crc32c::crc32c(r.payload));
        assert_eq!(r.header.len as usize, r.payload.len());
    }
    // The records are the frame's bytes, ready for the disk.
    assert_eq!(append.records.bytes(), &corpus[2][24 + 56..]);

    let create = frame(&corpus[12]);
    assert_eq!(
        decode_request(&create, &Limits::DEFAULT).unwrap(),
        Request::CreateLog(CreateLogRequest {
            replication_factor: 1,
            name: "ünïcödé/журнал",
        })
    );
    assert_eq!(
        decode_request(&frame(&corpus[14]), &Limits::DEFAULT).unwrap(),
        Request::DescribeLog(DescribeLogRequest {
            by: LogRef::Name("orders")
        })
    );
    assert_eq!(
        decode_request(&frame(&corpus[5]), &Limits::DEFAULT)
            .unwrap()
            .routed_log(),
        Some(7)
    );
}

/// The REPLICATE requests of `corpus`, decoded, with their frames.
fn replicates(corpus: &[Vec<u8>]) -> Vec<(&[u8], ReplicateRequest<'_>)> {
    corpus
        .iter()
        .filter_map(
            |bytes| match decode_request(&frame(bytes), &Limits::DEFAULT) {
                Ok(Request::Replicate(replicate)) => Some((&bytes[..], replicate)),
                _ => None,
            },
        )
        .collect()
}

#[test]
fn replicate_fields_survive_decoding() {
    let corpus = request_corpus();
    let replicates = replicates(&corpus);
    let (bytes, replicate) = replicates[0];
    assert_eq!(
        replicate.header,
        ReplicateHeader {
            log_id: 7,
            epoch: 3,
            first_lsn: 10,
            committed_lsn: 8,
            fencing_token: 5,
            writer_id: 11,
            writer_seq: 12,
            trim_before: 0,
            kind: ReplicateKind::Records,
        }
    );
    // The stamped records are the frame's bytes, ready to be stored as they are.
    assert_eq!(replicate.records.bytes(), &bytes[24 + 72..]);
    let stamps: Vec<(u64, u64, u64)> = replicate
        .records
        .iter()
        .map(|r| (r.header.log_id, r.header.lsn, r.header.epoch))
        .collect();
    assert_eq!(stamps, [(7, 10, 3), (7, 11, 3), (7, 12, 3), (7, 13, 3)]);
    let payloads: Vec<&[u8]> = replicate.records.iter().map(|r| r.payload).collect();
    assert_eq!(payloads, PAYLOADS);

    let request = Request::Replicate(replicate);
    assert!(request.opcode().is_routed());
    assert_eq!(request.routed_log(), Some(7));
    let peer = Request::Peer(PeerRequest { node_id: 2 });
    assert!(!peer.opcode().is_routed());
    assert_eq!(peer.routed_log(), None);

    let kinds: Vec<ReplicateKind> = replicates.iter().map(|(_, r)| r.header.kind).collect();
    use ReplicateKind::*;
    assert_eq!(kinds, [Records, Trim, Barrier, Commit]);
}

#[test]
fn a_replicate_head_followed_by_its_records_is_the_whole_frame() {
    let corpus = request_corpus();
    // A TRIM's keys go in the frame itself ([`encode_request`]): only records are sent apart.
    let without_keys = replicates(&corpus)
        .into_iter()
        .filter(|(_, r)| r.keys.count() == 0);
    for (bytes, replicate) in without_keys {
        let request_id = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        let mut head = Vec::new();
        encode_replicate_head(
            &mut head,
            request_id,
            &replicate.header,
            replicate.records.count(),
            replicate.records.bytes(),
        );
        assert_eq!(head.len(), 24 + 72, "the head holds no record");
        head.extend_from_slice(replicate.records.bytes());
        assert_eq!(head, bytes, "{:?}", replicate.header.kind);
    }
}

#[test]
fn records_skip_drops_the_first_ones() {
    let corpus = request_corpus();
    let (_, replicate) = replicates(&corpus)[0];
    let all = replicate.records;
    assert_eq!(all.skip(0), all);
    let rest = all.skip(2);
    assert_eq!(rest.count(), 2);
    let lsns: Vec<u64> = rest.iter().map(|r| r.header.lsn).collect();
    assert_eq!(lsns, [12, 13]);
    assert!(all.skip(4).is_empty() && all.skip(9).bytes().is_empty());
}

#[test]
fn a_batch_that_fits_an_append_frame_fits_a_replicate_frame_on_a_peer_connection() {
    let limits = Limits {
        record_bytes_max: 64,
        frame_bytes_max: 24 + 56 + 40 + 64,
        ..Limits::DEFAULT
    };
    assert!(limits.is_consistent());
    let payload = [0x42; 64];
    let mut append = Vec::new();
    let mut batch = AppendBuilder::new(&mut append, 1, &AppendHeader::new(7), &limits);
    batch.push(&payload).unwrap();
    batch.finish();
    assert_eq!(append.len(), limits.frame_bytes_max as usize);

    let stored = replicated(7, 1, 0, &[&payload]);
    let form = RecordForm::Replicated {
        log_id: 7,
        epoch: 1,
        first_lsn: 0,
    };
    let records = Records::parse(&stored, 1, form, &limits).unwrap();
    let request = Request::Replicate(ReplicateRequest {
        header: ReplicateHeader::new(ReplicateKind::Records, 7, 1, 0, 0),
        records,
        keys: Keys::EMPTY,
    });
    let mut replicate = Vec::new();
    encode_request(&mut replicate, 2, &request);
    assert_eq!(
        replicate.len(),
        append.len() + REPLICATE_EXTRA_BYTES as usize
    );
    assert!(matches!(
        parse_frame(&replicate, &limits),
        Err(Error::FrameTooLarge { .. })
    ));
    let peer = limits.replication();
    let frame = parse_frame(&replicate, &peer).unwrap().unwrap();
    assert_eq!(decode_request(&frame, &peer).unwrap(), request);
}

#[test]
fn cluster_map_pages_survive_decoding() {
    let corpus = response_corpus();
    let pages: Vec<GetMapResponse<'_>> = corpus
        .iter()
        .filter_map(
            |bytes| match decode_response(&frame(bytes), &Limits::DEFAULT) {
                Ok(Response::GetMap(page)) => Some(page),
                _ => None,
            },
        )
        .collect();
    assert_eq!(pages.len(), 3);
    let page = pages[0];
    assert_eq!(page.version, 42);
    let nodes: Vec<MapNode<'_>> = page.nodes.iter().collect();
    assert_eq!(nodes, MAP_NODES);
    assert_eq!(page.nodes.len(), 3);
    assert_eq!(page.nodes.iter().len(), 3);
    let logs: Vec<MapLog<'_>> = page.logs.into_iter().collect();
    assert_eq!(logs, map_logs());
    for (log, chain) in logs.iter().zip(MAP_CHAINS) {
        assert_eq!(log.chain.iter().collect::<Vec<u64>>(), chain);
        assert_eq!(log.chain.len(), chain.len());
        assert!(!log.chain.is_empty());
    }
    // A decoded page equals the page it was encoded from.
    let logs = map_logs();
    let given = GetMapResponse {
        version: 42,
        nodes: MapNodes::from_slice(&MAP_NODES),
        logs: MapLogs::from_slice(&logs),
    };
    assert_eq!(page, given);
    assert_eq!(pages[1].nodes, given.nodes);
    assert!(pages[1].logs.is_empty());
    assert!(pages[2].nodes.is_empty() && pages[2].logs.is_empty());

    let versions: Vec<Response<'_>> = corpus
        .iter()
        .filter_map(|bytes| {
            let response = decode_response(&frame(bytes), &Limits::DEFAULT).unwrap();
            matches!(response, Response::RegisterNode(_) | Response::Heartbeat(_))
                .then_some(response)
        })
        .collect();
    assert_eq!(
        versions,
        [
            Response::RegisterNode(MapVersionResponse { map_version: 41 }),
            Response::Heartbeat(MapVersionResponse { map_version: 42 }),
        ]
    );
}

#[test]
fn every_response_and_error_code_round_trips_byte_for_byte() {
    let corpus = response_corpus();
    let mut codes = Vec::new();
    let mut kinds = std::collections::HashSet::new();
    for bytes in &corpus {
        let frame = frame(bytes);
        let response = decode_response(&frame, &Limits::DEFAULT).unwrap();
        assert_eq!(response.flags(), frame.flags, "{response:?}");
        kinds.insert(std::mem::discriminant(&response));
        if let Response::Error(error) = response {
            codes.push(error.code);
            if frame.opcode != 0 {
                assert_eq!(error.message, error.code.name());
                assert_eq!((error.arg0, error.arg1), (error.code as u64 * 1000, 17));
            }
            assert_eq!(error.retryable(), error.code.is_retryable());
        }
        assert_eq!(&reencode_response(&frame, &response), bytes, "{response:?}");
    }
    assert_eq!(kinds.len(), 25, "every Response variant");
    // Every code, then the connection-level MALFORMED.
    let mut expected = ErrorCode::ALL.to_vec();
    expected.push(ErrorCode::Malformed);
    assert_eq!(codes, expected);
}

#[test]
fn response_fields_survive_decoding() {
    let corpus = response_corpus();
    let Response::Read(read) = decode_response(&frame(&corpus[2]), &Limits::DEFAULT).unwrap()
    else {
        panic!("not a read");
    };
    assert_eq!(read.tail, 20);
    let lsns: Vec<u64> = read.records.iter().map(|r| r.header.lsn).collect();
    assert_eq!(lsns, [10, 11, 12, 13]);
    assert!(read
        .records
        .iter()
        .all(|r| r.header.log_id == 7 && r.header.epoch == 3));

    let Response::ListLogs(list) = decode_response(&frame(&corpus[15]), &Limits::DEFAULT).unwrap()
    else {
        panic!("not a list");
    };
    let names: Vec<(u64, &str)> = list.entries.iter().map(|e| (e.log_id, e.name)).collect();
    assert_eq!(names, [(3, "a"), (7, "orders"), (9, "exactly8")]);
    assert_eq!(list.entries.len(), 3);

    let Response::Hello(hello) = decode_response(&frame(&corpus[0]), &Limits::DEFAULT).unwrap()
    else {
        panic!("not a hello");
    };
    assert_eq!(hello.limits(), Limits::DEFAULT);
    assert_eq!(hello.shard_of(7), 1);
    assert_eq!(hello.shard_of(8), 0);

    // A node's and a controller's HELLO answers.
    let roles: Vec<Role> = corpus
        .iter()
        .filter_map(
            |bytes| match decode_response(&frame(bytes), &Limits::DEFAULT) {
                Ok(Response::Hello(hello)) => Some(hello.role),
                _ => None,
            },
        )
        .collect();
    assert_eq!(roles, [Role::Node, Role::Controller]);

    let connection_level = frame(corpus.last().unwrap());
    assert_eq!(connection_level.opcode, 0);
    assert_eq!(connection_level.request_id, 0);
}

/// The blocks after `<!-- golden: NAME -->` in PROTOCOL.md, as bytes. Each line is
/// `0xOFFSET: hex bytes | comment`; the offsets are checked too.
fn golden(name: &str) -> Vec<u8> {
    let doc = include_str!("../../PROTOCOL.md");
    let marker = format!("<!-- golden: {name} -->\n```text\n");
    let start = doc.find(&marker).expect("golden block in PROTOCOL.md") + marker.len();
    let block = &doc[start..start + doc[start..].find("```").unwrap()];
    let mut bytes = Vec::new();
    for line in block.lines() {
        let (offset, rest) = line.split_once(':').unwrap();
        let offset = usize::from_str_radix(offset.trim_start_matches("0x"), 16).unwrap();
        assert_eq!(offset, bytes.len(), "{name}: offset of {line:?}");
        let hex = rest.split('|').next().unwrap();
        bytes.extend(
            hex.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap()),
        );
    }
    bytes
}

#[test]
fn protocol_md_hello_example_is_what_the_encoder_writes() {
    let mut request = Vec::new();
    encode_request(&mut request, 1, &Request::Hello(HelloRequest::CURRENT));
    assert_eq!(request, golden("hello-request"));
    assert_eq!(
        decode_request(&frame(&request), &Limits::DEFAULT).unwrap(),
        Request::Hello(HelloRequest {
            min_version: 1,
            max_version: 1
        })
    );

    let hello = HelloResponse {
        version: 1,
        shard_index: 1,
        shard_count: 2,
        frame_bytes_max: 4_198_400,
        record_bytes_max: 1_048_576,
        batch_records_max: 4096,
        node_id: 1,
        role: Role::Node,
    };
    let mut response = Vec::new();
    encode_response(&mut response, 1, Opcode::Hello, &Response::Hello(hello));
    assert_eq!(response, golden("hello-response"));
    assert_eq!(
        decode_response(&frame(&response), &Limits::DEFAULT).unwrap(),
        Response::Hello(hello)
    );
}

#[test]
fn protocol_md_append_example_is_what_the_encoder_and_builder_write() {
    let expected = golden("append-request");
    let mut built = Vec::new();
    let mut batch = AppendBuilder::new(&mut built, 2, &AppendHeader::new(7), &Limits::DEFAULT);
    batch.push(b"hello").unwrap();
    batch.finish();
    assert_eq!(built, expected);

    let frame = frame(&expected);
    let Request::Append(append) = decode_request(&frame, &Limits::DEFAULT).unwrap() else {
        panic!("not an append");
    };
    assert_eq!(append.header, AppendHeader::new(7));
    assert_eq!(append.header.expected_lsn, LSN_UNCONDITIONAL);
    let record = append.records.iter().next().unwrap();
    assert_eq!(record.payload, b"hello");
    assert_eq!(record.header.crc, 0x9a71_bb4c);
    let mut encoded = Vec::new();
    encode_request(&mut encoded, 2, &Request::Append(append));
    assert_eq!(encoded, expected);

    let mut response = Vec::new();
    let ack = Response::Append(AppendResponse {
        first_lsn: 0,
        count: 1,
    });
    encode_response(&mut response, 2, Opcode::Append, &ack);
    assert_eq!(response, golden("append-response"));

    let mut error = Vec::new();
    let wrong_shard = ErrorResponse::new(ErrorCode::WrongShard, 1, "log 7 is on shard 1");
    encode_error(&mut error, 2, Some(Opcode::Append), &wrong_shard);
    assert_eq!(error, golden("append-wrong-shard"));
    let decoded = decode_response(&crate::frame(&error), &Limits::DEFAULT).unwrap();
    assert_eq!(decoded, Response::Error(wrong_shard));
}

#[test]
fn protocol_md_replicate_example_is_what_the_encoder_writes() {
    let expected = golden("replicate-request");
    let stored = replicated(7, 1, 0, &[b"hello"]);
    let form = RecordForm::Replicated {
        log_id: 7,
        epoch: 1,
        first_lsn: 0,
    };
    let records = Records::parse(&stored, 1, form, &Limits::DEFAULT).unwrap();
    let request = Request::Replicate(ReplicateRequest {
        header: ReplicateHeader::new(ReplicateKind::Records, 7, 1, 0, 0),
        records,
        keys: Keys::EMPTY,
    });
    let mut encoded = Vec::new();
    encode_request(&mut encoded, 3, &request);
    assert_eq!(encoded, expected);

    let frame = frame(&expected);
    let decoded = decode_request(&frame, &Limits::DEFAULT).unwrap();
    assert_eq!(decoded, request);
    let Request::Replicate(replicate) = decoded else {
        panic!("not a replicate");
    };
    let record = replicate.records.iter().next().unwrap();
    assert_eq!(record.payload, b"hello");
    assert_eq!(record.header.crc, 0x9a71_bb4c);
    assert_eq!(record.header.timestamp_us, 1_700_000_000_000_000);
    // The record is the APPEND example's, stamped: its len and crc travel unchanged.
    let append = golden("append-request");
    assert_eq!(
        &replicate.records.bytes()[..8],
        &append[24 + 56..24 + 56 + 8]
    );

    let mut response = Vec::new();
    let ack = Response::Replicate(ReplicateResponse {
        log_id: 7,
        durable_lsn: 1,
        trim_point: 0,
        next_lsn: 1,
    });
    encode_response(&mut response, 3, Opcode::Replicate, &ack);
    assert_eq!(response, golden("replicate-response"));
    assert_eq!(
        decode_response(&crate::frame(&response), &Limits::DEFAULT).unwrap(),
        ack
    );
}

#[test]
fn every_prefix_of_a_valid_frame_asks_for_more() {
    for bytes in request_corpus().iter().chain(&response_corpus()) {
        for len in 0..bytes.len() {
            assert_eq!(
                parse_frame(&bytes[..len], &Limits::DEFAULT),
                Ok(None),
                "prefix {len} of {}",
                bytes.len()
            );
        }
        assert!(parse_frame(bytes, &Limits::DEFAULT).unwrap().is_some());
    }
}

#[test]
fn pipelined_frames_in_one_buffer_parse_one_after_another() {
    let corpus = request_corpus();
    let stream: Vec<u8> = corpus.concat();
    let mut rest = &stream[..];
    let mut ids = Vec::new();
    while let Some(frame) = parse_frame(rest, &Limits::DEFAULT).unwrap() {
        decode_request(&frame, &Limits::DEFAULT).unwrap();
        ids.push(frame.request_id);
        rest = &rest[frame.frame_bytes()..];
    }
    assert!(rest.is_empty());
    assert_eq!(ids, (1..=corpus.len() as u64).collect::<Vec<_>>());
}

#[test]
fn append_builder_and_encoder_agree() {
    let header = AppendHeader {
        log_id: 9,
        epoch: 4,
        expected_lsn: 33,
        fencing_token: 2,
        writer_id: 5,
        writer_seq: 6,
    };
    let mut built = Vec::new();
    let mut batch = AppendBuilder::new(&mut built, 77, &header, &Limits::DEFAULT);
    for (i, payload) in PAYLOADS.iter().enumerate() {
        if i % 2 == 0 {
            batch.push(payload).unwrap();
        } else {
            batch
                .push_with(payload.len(), |slot| slot.copy_from_slice(payload))
                .unwrap();
        }
    }
    assert_eq!(batch.count(), 4);
    let frame_bytes = batch.frame_bytes();
    batch.finish();
    assert_eq!(built.len(), frame_bytes);

    let records = unstamped(&PAYLOADS);
    let records = Records::parse(&records, 4, RecordForm::Unstamped, &Limits::DEFAULT).unwrap();
    let mut encoded = Vec::new();
    encode_request(
        &mut encoded,
        77,
        &Request::Append(AppendRequest { header, records }),
    );
    assert_eq!(built, encoded);
}

#[test]
fn read_builder_writes_what_decoders_accept() {
    let payloads: [&[u8]; 3] = [b"one", b"two", b"three"];
    for kind in [ReadKind::Read, ReadKind::Push, ReadKind::PushEnd] {
        let mut out = Vec::new();
        let mut batch = ReadBuilder::new(&mut out, 5, kind, 103, &Limits::DEFAULT);
        for (i, payload) in payloads.iter().enumerate() {
            let header = RecordHeader {
                len: payload.len() as u32,
                crc: crc32c::crc32c(payload),
                log_id: 7,
                lsn: 100 + i as u64,
                epoch: 2,
                timestamp_us: 9,
            };
            batch.push(&header, payload).unwrap();
        }
        assert_eq!(batch.count(), 3);
        batch.finish();
        let frame = frame(&out);
        let batch = match decode_response(&frame, &Limits::DEFAULT).unwrap() {
            Response::Read(read) => {
                assert_eq!(kind, ReadKind::Read);
                read
            }
            Response::Push(push) => {
                assert_eq!(push.end, kind == ReadKind::PushEnd);
                push.batch
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(batch.tail, 103);
        assert_eq!(batch.records.bytes(), &stamped_like(&payloads)[..]);
        let got: Vec<&[u8]> = batch.records.iter().map(|r| r.payload).collect();
        assert_eq!(got, payloads);
    }

    fn stamped_like(payloads: &[&[u8]]) -> Vec<u8> {
        payloads
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                record(
                    RecordHeader {
                        len: p.len() as u32,
                        crc: crc32c::crc32c(p),
                        log_id: 7,
                        lsn: 100 + i as u64,
                        epoch: 2,
                        timestamp_us: 9,
                    },
                    p,
                )
            })
            .collect()
    }
}

#[test]
fn an_empty_read_response_is_valid() {
    let mut out = Vec::new();
    ReadBuilder::new(&mut out, 1, ReadKind::Read, 0, &Limits::DEFAULT).finish();
    let response = decode_response(&frame(&out), &Limits::DEFAULT).unwrap();
    assert_eq!(
        response,
        Response::Read(ReadResponse {
            tail: 0,
            records: Records::EMPTY
        })
    );
}

#[test]
fn limits_at_the_edge_are_accepted() {
    let limits = Limits::DEFAULT;
    // A record of exactly record_bytes_max, and a batch of exactly batch_records_max.
    let big = vec![0x5a; limits.record_bytes_max as usize];
    let mut out = Vec::new();
    let mut batch = AppendBuilder::new(&mut out, 1, &AppendHeader::new(1), &limits);
    batch.push(&big).unwrap();
    batch.finish();
    let frame = frame(&out);
    assert!(decode_request(&frame, &limits).is_ok());

    let mut out = Vec::new();
    let mut batch = AppendBuilder::new(&mut out, 1, &AppendHeader::new(1), &limits);
    for _ in 0..limits.batch_records_max {
        batch.push(b"x").unwrap();
    }
    assert!(matches!(
        batch.push(b"x"),
        Err(Error::TooManyRecords { .. })
    ));
    batch.finish();
    let Request::Append(append) = decode_request(&crate::frame(&out), &limits).unwrap() else {
        panic!();
    };
    assert_eq!(append.records.count(), limits.batch_records_max);

    // A name of exactly name_bytes_max.
    let name = "n".repeat(255);
    let mut out = Vec::new();
    let create = Request::CreateLog(CreateLogRequest {
        replication_factor: 3,
        name: &name,
    });
    encode_request(&mut out, 1, &create);
    assert_eq!(
        decode_request(&crate::frame(&out), &limits).unwrap(),
        create
    );
    assert_eq!(check_name(name.as_bytes(), &limits), Ok(name.as_str()));

    // An address of exactly ADDR_BYTES_MAX, labels of exactly LABEL_BYTES_MAX, a chain of
    // 255 nodes, a page of list_max logs.
    let addr = "a".repeat(usize::from(ADDR_BYTES_MAX));
    let label = "z".repeat(usize::from(LABEL_BYTES_MAX));
    let register = Request::RegisterNode(RegisterNodeRequest {
        node_id: 1,
        shard_count: u16::MAX,
        addr: &addr,
        zone: &label,
        rack: &label,
    });
    let mut out = Vec::new();
    encode_request(&mut out, 1, &register);
    assert_eq!(
        decode_request(&crate::frame(&out), &limits).unwrap(),
        register
    );
    let node_ids: Vec<u64> = (1..=255).collect();
    let nodes: Vec<MapNode<'_>> = node_ids
        .iter()
        .map(|&node_id| MapNode {
            node_id,
            shard_count: 1,
            alive: true,
            drained: false,
            last_heartbeat_ms: 0,
            addr: &addr,
            zone: &label,
            rack: &label,
        })
        .collect();
    let logs: Vec<MapLog<'_>> = (1..=u64::from(limits.list_max))
        .map(|log_id| MapLog {
            log_id,
            epoch: 1,
            start_lsn: 0,
            trim_lsn: log_id,
            replication_factor: 255,
            created_version: log_id,
            chain: Chain::from_slice(if log_id == 1 {
                &node_ids
            } else {
                &node_ids[..1]
            }),
            learners: Chain::from_slice(if log_id == 2 { &node_ids[1..] } else { &[] }),
            name: if log_id == 1 { &name } else { "n" },
        })
        .collect();
    let page = Response::GetMap(GetMapResponse {
        version: 1,
        nodes: MapNodes::from_slice(&nodes),
        logs: MapLogs::from_slice(&logs),
    });
    let mut out = Vec::new();
    encode_response(&mut out, 1, Opcode::GetMap, &page);
    assert_eq!(decode_response(&crate::frame(&out), &limits).unwrap(), page);
}

#[test]
fn decode_errors_become_the_documented_error_responses() {
    let mut out = Vec::new();
    let error = Error::BadRecordCrc {
        index: 2,
        stored: 1,
        computed: 3,
    };
    let message = error.to_string();
    encode_error(&mut out, 9, Some(Opcode::Append), &error.response(&message));
    let Response::Error(decoded) = decode_response(&frame(&out), &Limits::DEFAULT).unwrap() else {
        panic!();
    };
    assert_eq!(decoded.code, ErrorCode::Malformed);
    assert!(decoded.code.closes_connection());
    assert_eq!(decoded.arg0, 2);
    assert_eq!(decoded.message, message);

    // Overlong messages are cut to 1024 bytes and still decode.
    let long = "x".repeat(5000);
    let mut out = Vec::new();
    encode_error(
        &mut out,
        9,
        None,
        &ErrorResponse::new(ErrorCode::Unavailable, ARG_NONE, &long),
    );
    let Response::Error(decoded) = decode_response(&frame(&out), &Limits::DEFAULT).unwrap() else {
        panic!();
    };
    assert_eq!(decoded.message.len(), ERROR_MESSAGE_BYTES_MAX);
    assert!(decoded.retryable());
}
