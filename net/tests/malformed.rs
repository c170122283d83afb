//! Invalid input: each case is one specific way to get the protocol wrong, mapped to the exact
//! `Error` the decoder must return (and so to the ERROR a server answers with).

mod common;

use chainlog_net::*;
use common::*;

const REQ: u16 = 0;
const RESP: u16 = Flags::RESPONSE.bits();
const ERR: u16 = Flags::RESPONSE.bits() | Flags::ERROR.bits();
const APPEND: u16 = Opcode::Append as u16;
const PEER: u16 = Opcode::Peer as u16;
const REPLICATE: u16 = Opcode::Replicate as u16;
const REGISTER: u16 = Opcode::RegisterNode as u16;
const HEARTBEAT: u16 = Opcode::Heartbeat as u16;
const GET_MAP: u16 = Opcode::GetMap as u16;
const PULL: u16 = Opcode::Pull as u16;
const RECONFIGURE: u16 = Opcode::ReconfigureLog as u16;
const DRAIN: u16 = Opcode::DrainNode as u16;

/// A RECONFIGURE_LOG request body (or, with `start_lsn`, response body): the fields, the
/// chain's length and its ids.
fn reconfigure_body(fields: &[u64], chain_len: u8, chain: &[u64]) -> Vec<u8> {
    let mut body: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    body.push(chain_len);
    body.extend_from_slice(&[0; 7]);
    body.extend(chain.iter().flat_map(|id| id.to_le_bytes()));
    body
}

/// Which decoder a case goes through after framing.
#[derive(Clone, Copy, Debug)]
enum As {
    Request,
    Response,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    decoder: As,
    expected: Error,
}

fn decode(bytes: &[u8], decoder: As, limits: &Limits) -> Result<(), Error> {
    let frame = parse_frame(bytes, limits)?.expect("a whole frame");
    assert_eq!(frame.frame_bytes(), bytes.len());
    match decoder {
        As::Request => decode_request(&frame, limits).map(drop),
        As::Response => decode_response(&frame, limits).map(drop),
    }
}

fn request(name: &'static str, opcode: u16, body: &[u8], expected: Error) -> Case {
    Case {
        name,
        bytes: raw_frame(opcode, REQ, 1, body),
        decoder: As::Request,
        expected,
    }
}

fn response(name: &'static str, opcode: u16, flags: u16, body: &[u8], expected: Error) -> Case {
    Case {
        name,
        bytes: raw_frame(opcode, flags, 1, body),
        decoder: As::Response,
        expected,
    }
}

fn hello_body(magic: u32, min: u16, max: u16) -> Vec<u8> {
    let mut body = magic.to_le_bytes().to_vec();
    body.extend_from_slice(&min.to_le_bytes());
    body.extend_from_slice(&max.to_le_bytes());
    body
}

fn create_body(rf: u8, name: &[u8]) -> Vec<u8> {
    let mut body = vec![rf, 0];
    body.extend_from_slice(&(name.len() as u16).to_le_bytes());
    body.extend_from_slice(name);
    body
}

fn describe_body(by: u8, name_len: u16, log_id: u64, name: &[u8]) -> Vec<u8> {
    let mut body = vec![by, 0];
    body.extend_from_slice(&name_len.to_le_bytes());
    body.extend_from_slice(&log_id.to_le_bytes());
    body.extend_from_slice(name);
    body
}

fn error_body(code: u16, retryable: u8, message: &[u8]) -> Vec<u8> {
    let mut body = code.to_le_bytes().to_vec();
    body.extend_from_slice(&[retryable, 0]);
    body.extend_from_slice(&(message.len() as u32).to_le_bytes());
    body.extend_from_slice(&[0; 16]);
    body.extend_from_slice(message);
    body
}

fn read_body(tail: u64, count: u32, records: &[u8]) -> Vec<u8> {
    let mut body = tail.to_le_bytes().to_vec();
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(records);
    body
}

fn list_entry(log_id: u64, name: &[u8], pad_byte: u8) -> Vec<u8> {
    let mut entry = log_id.to_le_bytes().to_vec();
    entry.extend_from_slice(&(name.len() as u16).to_le_bytes());
    entry.extend_from_slice(&[0; 6]);
    entry.extend_from_slice(name);
    while !entry.len().is_multiple_of(8) {
        entry.push(pad_byte);
    }
    entry
}

fn list_body(count: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = count.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 4]);
    body.extend(entries.concat());
    body
}

fn register_body(node_id: u64, shard_count: u16, addr_len: u16, addr: &[u8]) -> Vec<u8> {
    let mut body = node_id.to_le_bytes().to_vec();
    body.extend_from_slice(&shard_count.to_le_bytes());
    body.extend_from_slice(&addr_len.to_le_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(addr);
    body
}

/// A GET_MAP node entry, its padding made of `pad_byte`.
fn map_node_entry(node_id: u64, shard_count: u16, alive: u8, addr: &[u8], pad_byte: u8) -> Vec<u8> {
    let mut entry = node_id.to_le_bytes().to_vec();
    entry.extend_from_slice(&shard_count.to_le_bytes());
    entry.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    entry.extend_from_slice(&[alive, 0, 0, 0]);
    entry.extend_from_slice(&77u64.to_le_bytes());
    entry.extend_from_slice(addr);
    while !entry.len().is_multiple_of(8) {
        entry.push(pad_byte);
    }
    entry
}

/// A GET_MAP node entry with address `h:1` and these zone and rack labels, its padding made
/// of `pad_byte`.
fn map_node_labelled(node_id: u64, zone: &[u8], rack: &[u8], pad_byte: u8) -> Vec<u8> {
    let mut entry = map_node_entry(node_id, 1, 1, b"h:1", 0);
    entry.truncate(24 + 3);
    entry[14] = zone.len() as u8;
    entry[15] = rack.len() as u8;
    entry.extend_from_slice(zone);
    entry.extend_from_slice(rack);
    while !entry.len().is_multiple_of(8) {
        entry.push(pad_byte);
    }
    entry
}

/// A GET_MAP log entry (epoch 1 from LSN 0, created at version 1), its padding made of
/// `pad_byte`.
fn map_log_entry(log_id: u64, rf: u8, chain: &[u64], name: &[u8], pad_byte: u8) -> Vec<u8> {
    let mut entry = Vec::new();
    for v in [log_id, 1, 0] {
        entry.extend_from_slice(&v.to_le_bytes());
    }
    entry.extend_from_slice(&[rf, chain.len() as u8]);
    entry.extend_from_slice(&(name.len() as u16).to_le_bytes());
    entry.extend_from_slice(&[0; 4]);
    for v in [1u64, 0] {
        // created_version, trim_lsn
        entry.extend_from_slice(&v.to_le_bytes());
    }
    for id in chain {
        entry.extend_from_slice(&id.to_le_bytes());
    }
    entry.extend_from_slice(name);
    while !entry.len().is_multiple_of(8) {
        entry.push(pad_byte);
    }
    entry
}

fn map_body(node_count: u32, log_count: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut body = 9u64.to_le_bytes().to_vec();
    body.extend_from_slice(&node_count.to_le_bytes());
    body.extend_from_slice(&log_count.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    body.extend(entries.concat());
    body
}

fn hello_response_body(version: u16, index: u16, count: u16, frame_max: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for v in [version, index, count, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    for v in [frame_max, 1 << 20, 4096, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.extend_from_slice(&1u64.to_le_bytes());
    body
}

fn cases() -> Vec<Case> {
    let limits = Limits::DEFAULT;
    let valid_hello = request_corpus().swap_remove(0);
    let two = unstamped(&[b"first", b"second"]);
    let first_len = 48; // record_bytes(5)
    let header = AppendHeader::new(7);
    let append = |count: u32, records: &[u8]| append_body(&header, count, records);
    let mut cases = Vec::new();

    // Framing.
    let with_length = |length: u32| {
        let mut bytes = valid_hello.clone();
        bytes[..4].copy_from_slice(&length.to_le_bytes());
        bytes
    };
    for (name, length, expected) in [
        ("length 0", 0, Error::FrameTooShort { length: 0 }),
        ("length 19", 19, Error::FrameTooShort { length: 19 }),
        (
            "length u32::MAX",
            u32::MAX,
            Error::FrameTooLarge {
                frame_bytes: 4 + u64::from(u32::MAX),
                max: limits.frame_bytes_max,
            },
        ),
        (
            "length one over frame_bytes_max",
            limits.frame_bytes_max - 3,
            Error::FrameTooLarge {
                frame_bytes: u64::from(limits.frame_bytes_max) + 1,
                max: limits.frame_bytes_max,
            },
        ),
    ] {
        cases.push(Case {
            name,
            bytes: with_length(length),
            decoder: As::Request,
            expected,
        });
    }
    let mut flipped_body = valid_hello.clone();
    flipped_body[25] ^= 0x01;
    let mut flipped_id = valid_hello.clone();
    flipped_id[8] ^= 0x80;
    for (name, bytes) in [
        ("crc: flipped body bit", flipped_body),
        ("crc: flipped request_id bit", flipped_id),
    ] {
        let stored = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
        let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[4..16]), &bytes[24..]);
        cases.push(Case {
            name,
            bytes,
            decoder: As::Request,
            expected: Error::BadFrameCrc { stored, computed },
        });
    }
    let mut reserved = valid_hello.clone();
    reserved[20] = 1; // not covered by the crc
    cases.push(Case {
        name: "frame reserved nonzero",
        bytes: reserved,
        decoder: As::Request,
        expected: Error::FrameReservedNonzero { value: 1 },
    });
    let body = hello_body(HELLO_MAGIC, 1, 1);
    for flags in [1 << 4, 1 << 15] {
        cases.push(Case {
            name: "unknown flag bit",
            bytes: raw_frame(1, flags, 1, &body),
            decoder: As::Request,
            expected: Error::UnknownFlags { flags },
        });
    }

    // Request headers.
    cases.push(request(
        "opcode 0",
        0,
        &body,
        Error::UnknownOpcode { opcode: 0 },
    ));
    let past_the_last = Opcode::ALL.len() as u16 + 1;
    cases.push(request(
        "opcode past the last",
        past_the_last,
        &body,
        Error::UnknownOpcode {
            opcode: past_the_last,
        },
    ));
    for (name, flags) in [
        ("RESPONSE flag on a request", RESP),
        ("ERROR flags on a request", ERR),
        ("PUSH flag on a request", Flags::PUSH.bits()),
    ] {
        cases.push(Case {
            name,
            bytes: raw_frame(1, flags, 1, &body),
            decoder: As::Request,
            expected: Error::UnexpectedFlags { opcode: 1, flags },
        });
    }

    // HELLO.
    cases.push(request(
        "HELLO bad magic",
        1,
        &hello_body(u32::from_le_bytes(*b"GLHC"), 1, 1),
        Error::BadMagic {
            magic: u32::from_le_bytes(*b"GLHC"),
        },
    ));
    cases.push(request(
        "HELLO versions 2..=3",
        1,
        &hello_body(HELLO_MAGIC, 2, 3),
        Error::UnsupportedVersion { min: 2, max: 3 },
    ));
    cases.push(request(
        "HELLO versions 0..=0",
        1,
        &hello_body(HELLO_MAGIC, 0, 0),
        Error::UnsupportedVersion { min: 0, max: 0 },
    ));
    cases.push(request(
        "HELLO min > max",
        1,
        &hello_body(HELLO_MAGIC, 2, 1),
        Error::InvalidField {
            opcode: 1,
            field: "min_version",
            value: 2,
        },
    ));
    cases.push(request(
        "HELLO truncated",
        1,
        &body[..6],
        Error::BodyTruncated {
            opcode: 1,
            body_bytes: 6,
            needed_bytes: 8,
        },
    ));
    let mut long = body.clone();
    long.push(0);
    cases.push(request(
        "HELLO trailing byte",
        1,
        &long,
        Error::TrailingBytes {
            opcode: 1,
            extra_bytes: 1,
        },
    ));

    // APPEND.
    cases.push(request(
        "APPEND header truncated",
        APPEND,
        &append(2, &two)[..40],
        Error::BodyTruncated {
            opcode: APPEND,
            body_bytes: 40,
            needed_bytes: 56,
        },
    ));
    cases.push(request(
        "APPEND count 0",
        APPEND,
        &append(0, &[]),
        Error::InvalidField {
            opcode: APPEND,
            field: "count",
            value: 0,
        },
    ));
    let mut body = append(2, &two);
    body[52] = 1;
    cases.push(request(
        "APPEND reserved nonzero",
        APPEND,
        &body,
        Error::ReservedNonzero {
            opcode: APPEND,
            field: "reserved",
        },
    ));
    let no_writer = AppendHeader {
        writer_seq: 5,
        ..header
    };
    cases.push(request(
        "APPEND writer_seq without writer_id",
        APPEND,
        &append_body(&no_writer, 2, &two),
        Error::InvalidField {
            opcode: APPEND,
            field: "writer_seq",
            value: 5,
        },
    ));
    cases.push(request(
        "APPEND count over batch_records_max",
        APPEND,
        &append(4097, &two),
        Error::TooManyRecords {
            count: 4097,
            max: 4096,
        },
    ));
    let huge = RecordHeader {
        len: limits.record_bytes_max + 1,
        ..RecordHeader::default()
    };
    cases.push(request(
        "APPEND record len over record_bytes_max",
        APPEND,
        &append(1, bytemuck::bytes_of(&huge)),
        Error::RecordTooLarge {
            index: 0,
            len: u64::from(limits.record_bytes_max) + 1,
            max: limits.record_bytes_max,
        },
    ));
    cases.push(request(
        "APPEND record header truncated",
        APPEND,
        &append(2, &two[..first_len + 20]),
        Error::RecordTruncated { index: 1 },
    ));
    cases.push(request(
        "APPEND record payload truncated",
        APPEND,
        &append(2, &two[..two.len() - 8]),
        Error::RecordTruncated { index: 1 },
    ));
    cases.push(request(
        "APPEND fewer records than count",
        APPEND,
        &append(3, &two),
        Error::CountMismatch {
            declared: 3,
            found: 2,
        },
    ));
    cases.push(request(
        "APPEND more records than count",
        APPEND,
        &append(1, &two),
        Error::BytesAfterRecords {
            count: 1,
            extra_bytes: two.len() - first_len,
        },
    ));
    let mut bad_crc = two.clone();
    bad_crc[first_len + 40] ^= 0x20; // "second" -> "Second"
    cases.push(request(
        "APPEND bad record crc names the record",
        APPEND,
        &append(2, &bad_crc),
        Error::BadRecordCrc {
            index: 1,
            stored: crc32c::crc32c(b"second"),
            computed: crc32c::crc32c(b"Second"),
        },
    ));
    let mut stamped_lsn = two.clone();
    stamped_lsn[first_len + 16] = 9;
    cases.push(request(
        "APPEND record with an lsn",
        APPEND,
        &append(2, &stamped_lsn),
        Error::RecordFieldNonzero {
            index: 1,
            field: "lsn",
        },
    ));
    let mut stamped_time = two.clone();
    stamped_time[39] = 1;
    cases.push(request(
        "APPEND record with a timestamp",
        APPEND,
        &append(2, &stamped_time),
        Error::RecordFieldNonzero {
            index: 0,
            field: "timestamp_us",
        },
    ));
    let mut padding = two.clone();
    padding[first_len - 1] = 0xff;
    cases.push(request(
        "APPEND record padding nonzero",
        APPEND,
        &append(2, &padding),
        Error::RecordPaddingNonzero { index: 0 },
    ));

    // Other requests.
    let mut subscribe = [0u8; 24];
    subscribe[20] = 1;
    cases.push(request(
        "SUBSCRIBE reserved nonzero",
        4,
        &subscribe,
        Error::ReservedNonzero {
            opcode: 4,
            field: "reserved",
        },
    ));
    cases.push(request(
        "CREDIT truncated",
        5,
        &[0; 12],
        Error::BodyTruncated {
            opcode: 5,
            body_bytes: 12,
            needed_bytes: 16,
        },
    ));
    cases.push(request(
        "READ trailing bytes",
        3,
        &[0; 32],
        Error::TrailingBytes {
            opcode: 3,
            extra_bytes: 8,
        },
    ));
    cases.push(request(
        "CHECK_TAIL empty body",
        7,
        &[],
        Error::BodyTruncated {
            opcode: 7,
            body_bytes: 0,
            needed_bytes: 8,
        },
    ));
    cases.push(request(
        "CREATE_LOG empty name",
        10,
        &create_body(3, b""),
        Error::EmptyName,
    ));
    cases.push(request(
        "CREATE_LOG name too long",
        10,
        &create_body(3, &[b'n'; 256]),
        Error::NameTooLong { len: 256, max: 255 },
    ));
    cases.push(request(
        "CREATE_LOG name not UTF-8",
        10,
        &create_body(3, b"bad \xff name"),
        Error::NameNotUtf8,
    ));
    cases.push(request(
        "CREATE_LOG name with NUL",
        10,
        &create_body(3, b"a\0b"),
        Error::NameContainsNul,
    ));
    let mut short_name = create_body(3, b"orders");
    short_name.truncate(8);
    cases.push(request(
        "CREATE_LOG name_len past the body",
        10,
        &short_name,
        Error::BodyTruncated {
            opcode: 10,
            body_bytes: 8,
            needed_bytes: 10,
        },
    ));
    cases.push(request(
        "DESCRIBE_LOG by 2",
        11,
        &describe_body(2, 0, 7, b""),
        Error::InvalidField {
            opcode: 11,
            field: "by",
            value: 2,
        },
    ));
    cases.push(request(
        "DESCRIBE_LOG by id with a name",
        11,
        &describe_body(0, 3, 7, b"abc"),
        Error::InvalidField {
            opcode: 11,
            field: "name_len",
            value: 3,
        },
    ));
    cases.push(request(
        "DESCRIBE_LOG by name with a log id",
        11,
        &describe_body(1, 3, 7, b"abc"),
        Error::InvalidField {
            opcode: 11,
            field: "log_id",
            value: 7,
        },
    ));

    // PEER.
    cases.push(request(
        "PEER node_id 0",
        PEER,
        &0u64.to_le_bytes(),
        Error::InvalidField {
            opcode: PEER,
            field: "node_id",
            value: 0,
        },
    ));
    cases.push(request(
        "PEER truncated",
        PEER,
        &[1, 0, 0, 0],
        Error::BodyTruncated {
            opcode: PEER,
            body_bytes: 4,
            needed_bytes: 8,
        },
    ));
    cases.push(request(
        "PEER trailing bytes",
        PEER,
        &[1, 0, 0, 0, 0, 0, 0, 0, 0],
        Error::TrailingBytes {
            opcode: PEER,
            extra_bytes: 1,
        },
    ));

    // REPLICATE.
    let records_header = ReplicateHeader::new(ReplicateKind::Records, 7, 3, 10, 10);
    let two = replicated(7, 3, 10, &[b"first", b"second"]);
    let replicate = |count: u32, records: &[u8]| replicate_body(&records_header, count, 1, records);
    let invalid = |field: &'static str, value: u64| Error::InvalidField {
        opcode: REPLICATE,
        field,
        value,
    };
    cases.push(request(
        "REPLICATE header truncated",
        REPLICATE,
        &replicate(2, &two)[..64],
        Error::BodyTruncated {
            opcode: REPLICATE,
            body_bytes: 64,
            needed_bytes: 72,
        },
    ));
    for kind in [0, 5, 0xff] {
        cases.push(request(
            "REPLICATE bad kind",
            REPLICATE,
            &replicate_body(&records_header, 2, kind, &two),
            invalid("kind", u64::from(kind)),
        ));
    }
    for (name, at, field) in [
        ("REPLICATE reserved0 nonzero", 69, "reserved0"),
        ("REPLICATE reserved1 nonzero", 71, "reserved1"),
    ] {
        let mut body = replicate(2, &two);
        body[at] = 1;
        cases.push(request(
            name,
            REPLICATE,
            &body,
            Error::ReservedNonzero {
                opcode: REPLICATE,
                field,
            },
        ));
    }
    cases.push(request(
        "REPLICATE RECORDS count 0",
        REPLICATE,
        &replicate(0, &[]),
        invalid("count", 0),
    ));
    let trim = ReplicateHeader {
        trim_before: 5,
        ..ReplicateHeader::new(ReplicateKind::Trim, 7, 3, 12, 12)
    };
    cases.push(request(
        "REPLICATE TRIM with records (not keys)",
        REPLICATE,
        &replicate_body(&trim, 2, 2, &two),
        invalid("key_count", 2),
    ));
    for (name, key, field) in [
        (
            "REPLICATE TRIM with a key of writer 0",
            key_bytes(0, 0, 1),
            "writer_id",
        ),
        (
            "REPLICATE TRIM with a key of no records",
            key_bytes(4, 0, 0),
            "count",
        ),
    ] {
        let body = replicate_body(&trim, 1, 2, &key);
        cases.push(request(name, REPLICATE, &body, invalid(field, 0)));
    }
    let barrier = ReplicateHeader::new(ReplicateKind::Barrier, 7, 3, 12, 12);
    cases.push(request(
        "REPLICATE BARRIER with bytes after the header",
        REPLICATE,
        &replicate_body(&barrier, 0, 3, &two),
        Error::TrailingBytes {
            opcode: REPLICATE,
            extra_bytes: two.len(),
        },
    ));
    let commit = ReplicateHeader::new(ReplicateKind::Commit, 7, 3, 12, 12);
    cases.push(request(
        "REPLICATE COMMIT with trim_before",
        REPLICATE,
        &replicate_body(
            &ReplicateHeader {
                trim_before: 5,
                ..commit
            },
            0,
            4,
            &[],
        ),
        invalid("trim_before", 5),
    ));
    cases.push(request(
        "REPLICATE RECORDS with trim_before",
        REPLICATE,
        &replicate_body(
            &ReplicateHeader {
                trim_before: 5,
                ..records_header
            },
            2,
            1,
            &two,
        ),
        invalid("trim_before", 5),
    ));
    cases.push(request(
        "REPLICATE BARRIER with a fencing token",
        REPLICATE,
        &replicate_body(
            &ReplicateHeader {
                fencing_token: 4,
                ..barrier
            },
            0,
            3,
            &[],
        ),
        invalid("fencing_token", 4),
    ));
    cases.push(request(
        "REPLICATE TRIM with a writer",
        REPLICATE,
        &replicate_body(
            &ReplicateHeader {
                writer_id: 9,
                writer_seq: 1,
                ..trim
            },
            0,
            2,
            &[],
        ),
        invalid("writer_id", 9),
    ));
    cases.push(request(
        "REPLICATE writer_seq without writer_id",
        REPLICATE,
        &replicate_body(
            &ReplicateHeader {
                writer_seq: 3,
                ..records_header
            },
            2,
            1,
            &two,
        ),
        invalid("writer_seq", 3),
    ));
    let mismatch =
        |index: u32, field: &'static str, value: u64, expected: u64| Error::RecordStampMismatch {
            index,
            field,
            value,
            expected,
        };
    let mut wrong_lsn = replicated(7, 3, 10, &[b"first"]);
    wrong_lsn.extend(replicated(7, 3, 12, &[b"second"]));
    cases.push(request(
        "REPLICATE record with the wrong lsn",
        REPLICATE,
        &replicate(2, &wrong_lsn),
        mismatch(1, "lsn", 12, 11),
    ));
    cases.push(request(
        "REPLICATE records starting at another lsn",
        REPLICATE,
        &replicate(2, &replicated(7, 3, 0, &[b"first", b"second"])),
        mismatch(0, "lsn", 0, 10),
    ));
    let mut wrong_log = replicated(7, 3, 10, &[b"first"]);
    wrong_log.extend(replicated(8, 3, 11, &[b"second"]));
    cases.push(request(
        "REPLICATE record of another log",
        REPLICATE,
        &replicate(2, &wrong_log),
        mismatch(1, "log_id", 8, 7),
    ));
    cases.push(request(
        "REPLICATE record of a later epoch",
        REPLICATE,
        &replicate(2, &replicated(7, 4, 10, &[b"first", b"second"])),
        mismatch(0, "epoch", 4, 3),
    ));
    let mut two_epochs = replicated(7, 2, 10, &[b"first"]);
    two_epochs.extend(replicated(7, 3, 11, &[b"second"]));
    cases.push(request(
        "REPLICATE records of two epochs",
        REPLICATE,
        &replicate(2, &two_epochs),
        mismatch(1, "epoch", 3, 2),
    ));
    cases.push(request(
        "REPLICATE unstamped records",
        REPLICATE,
        &replicate(2, &unstamped(&[b"first", b"second"])),
        mismatch(0, "log_id", 0, 7),
    ));
    let at_the_end = ReplicateHeader::new(ReplicateKind::Records, 7, 3, u64::MAX, 0);
    cases.push(request(
        "REPLICATE records past the last lsn",
        REPLICATE,
        &replicate_body(
            &at_the_end,
            2,
            1,
            &[
                replicated(7, 3, u64::MAX, &[b"first"]),
                replicated(7, 3, 0, &[b"second"]),
            ]
            .concat(),
        ),
        Error::RecordOutOfSequence { index: 1 },
    ));
    let mut bad_crc = two.clone();
    bad_crc[first_len + 40] ^= 0x20; // "second" -> "Second"
    cases.push(request(
        "REPLICATE bad record crc names the record",
        REPLICATE,
        &replicate(2, &bad_crc),
        Error::BadRecordCrc {
            index: 1,
            stored: crc32c::crc32c(b"second"),
            computed: crc32c::crc32c(b"Second"),
        },
    ));
    let mut padding = two.clone();
    padding[first_len - 1] = 0xff;
    cases.push(request(
        "REPLICATE record padding nonzero",
        REPLICATE,
        &replicate(2, &padding),
        Error::RecordPaddingNonzero { index: 0 },
    ));
    cases.push(request(
        "REPLICATE count over batch_records_max",
        REPLICATE,
        &replicate(4097, &two),
        Error::TooManyRecords {
            count: 4097,
            max: 4096,
        },
    ));
    let huge = RecordHeader {
        len: limits.record_bytes_max + 1,
        log_id: 7,
        lsn: 10,
        epoch: 3,
        ..RecordHeader::default()
    };
    cases.push(request(
        "REPLICATE record len over record_bytes_max",
        REPLICATE,
        &replicate(1, bytemuck::bytes_of(&huge)),
        Error::RecordTooLarge {
            index: 0,
            len: u64::from(limits.record_bytes_max) + 1,
            max: limits.record_bytes_max,
        },
    ));
    cases.push(request(
        "REPLICATE record payload truncated",
        REPLICATE,
        &replicate(2, &two[..two.len() - 8]),
        Error::RecordTruncated { index: 1 },
    ));
    cases.push(request(
        "REPLICATE fewer records than count",
        REPLICATE,
        &replicate(3, &two),
        Error::CountMismatch {
            declared: 3,
            found: 2,
        },
    ));
    cases.push(request(
        "REPLICATE more records than count",
        REPLICATE,
        &replicate(1, &two),
        Error::BytesAfterRecords {
            count: 1,
            extra_bytes: two.len() - first_len,
        },
    ));

    // REGISTER_NODE, HEARTBEAT, GET_MAP.
    let addr = b"10.0.0.2:7400";
    let register = |node_id: u64, shard_count: u16, addr: &[u8]| {
        register_body(node_id, shard_count, addr.len() as u16, addr)
    };
    let invalid = |opcode: u16, field: &'static str, value: u64| Error::InvalidField {
        opcode,
        field,
        value,
    };
    cases.push(request(
        "REGISTER_NODE node_id 0",
        REGISTER,
        &register(0, 1, addr),
        invalid(REGISTER, "node_id", 0),
    ));
    cases.push(request(
        "REGISTER_NODE shard_count 0",
        REGISTER,
        &register(2, 0, addr),
        invalid(REGISTER, "shard_count", 0),
    ));
    cases.push(request(
        "REGISTER_NODE empty addr",
        REGISTER,
        &register(2, 1, b""),
        invalid(REGISTER, "addr_len", 0),
    ));
    cases.push(request(
        "REGISTER_NODE addr over 255 bytes",
        REGISTER,
        &register(2, 1, &[b'a'; 256]),
        invalid(REGISTER, "addr_len", 256),
    ));
    cases.push(request(
        "REGISTER_NODE addr not UTF-8",
        REGISTER,
        &register(2, 1, b"host\xff:1"),
        Error::AddrNotUtf8,
    ));
    let mut body = register(2, 1, addr);
    body[12] = 1;
    cases.push(request(
        "REGISTER_NODE reserved nonzero",
        REGISTER,
        &body,
        Error::ReservedNonzero {
            opcode: REGISTER,
            field: "reserved",
        },
    ));
    cases.push(request(
        "REGISTER_NODE truncated",
        REGISTER,
        &register(2, 1, addr)[..10],
        Error::BodyTruncated {
            opcode: REGISTER,
            body_bytes: 10,
            needed_bytes: 16,
        },
    ));
    cases.push(request(
        "REGISTER_NODE addr_len past the body",
        REGISTER,
        &register_body(2, 1, 16, addr),
        Error::BodyTruncated {
            opcode: REGISTER,
            body_bytes: 16 + addr.len(),
            needed_bytes: 32,
        },
    ));
    // After the address: zone_len, zone, rack_len, rack, or nothing (no labels).
    let labelled = |zone: &[u8], rack: &[u8]| {
        let mut body = register(2, 1, addr);
        body.push(zone.len() as u8);
        body.extend_from_slice(zone);
        body.push(rack.len() as u8);
        body.extend_from_slice(rack);
        body
    };
    cases.push(request(
        "REGISTER_NODE labels cut short after the zone",
        REGISTER,
        &labelled(b"z1", b"")[..16 + addr.len() + 3],
        Error::BodyTruncated {
            opcode: REGISTER,
            body_bytes: 16 + addr.len() + 3,
            needed_bytes: 16 + addr.len() + 4,
        },
    ));
    cases.push(request(
        "REGISTER_NODE zone_len past the body",
        REGISTER,
        &register_body(2, 1, 8, addr),
        Error::BodyTruncated {
            opcode: REGISTER,
            body_bytes: 16 + addr.len(),
            needed_bytes: 16 + 9 + usize::from(b':'),
        },
    ));
    cases.push(request(
        "REGISTER_NODE zone over 64 bytes",
        REGISTER,
        &labelled(&[b'z'; 65], b""),
        invalid(REGISTER, "zone_len", 65),
    ));
    cases.push(request(
        "REGISTER_NODE rack over 64 bytes",
        REGISTER,
        &labelled(b"z", &[b'r'; 65]),
        invalid(REGISTER, "rack_len", 65),
    ));
    cases.push(request(
        "REGISTER_NODE zone not UTF-8",
        REGISTER,
        &labelled(b"z\xff", b"r"),
        Error::LabelNotUtf8,
    ));
    cases.push(request(
        "REGISTER_NODE rack not UTF-8",
        REGISTER,
        &labelled(b"", b"\xc3"),
        Error::LabelNotUtf8,
    ));
    let mut body = labelled(b"z", b"r");
    body.push(0);
    cases.push(request(
        "REGISTER_NODE bytes after the rack",
        REGISTER,
        &body,
        Error::TrailingBytes {
            opcode: REGISTER,
            extra_bytes: 1,
        },
    ));
    let heartbeat = |node_id: u64| {
        let mut body = node_id.to_le_bytes().to_vec();
        body.extend_from_slice(&41u64.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body
    };
    cases.push(request(
        "HEARTBEAT node_id 0",
        HEARTBEAT,
        &heartbeat(0),
        invalid(HEARTBEAT, "node_id", 0),
    ));
    cases.push(request(
        "HEARTBEAT truncated",
        HEARTBEAT,
        &heartbeat(2)[..8],
        Error::BodyTruncated {
            opcode: HEARTBEAT,
            body_bytes: 8,
            needed_bytes: 24,
        },
    ));
    cases.push(request(
        "HEARTBEAT trailing bytes",
        HEARTBEAT,
        &[heartbeat(2), vec![0; 8]].concat(),
        Error::TrailingBytes {
            opcode: HEARTBEAT,
            extra_bytes: 8,
        },
    ));
    let mut get_map = [0u8; 16];
    get_map[15] = 1;
    cases.push(request(
        "GET_MAP reserved nonzero",
        GET_MAP,
        &get_map,
        Error::ReservedNonzero {
            opcode: GET_MAP,
            field: "reserved",
        },
    ));
    cases.push(request(
        "GET_MAP truncated",
        GET_MAP,
        &get_map[..12],
        Error::BodyTruncated {
            opcode: GET_MAP,
            body_bytes: 12,
            needed_bytes: 16,
        },
    ));

    // Responses.
    cases.push(response(
        "response without RESPONSE",
        2,
        REQ,
        &[0; 16],
        Error::UnexpectedFlags {
            opcode: 2,
            flags: 0,
        },
    ));
    let end_only = RESP | Flags::END.bits();
    cases.push(response(
        "END without PUSH",
        4,
        end_only,
        &read_body(0, 0, &[]),
        Error::UnexpectedFlags {
            opcode: 4,
            flags: end_only,
        },
    ));
    let push = RESP | Flags::PUSH.bits();
    cases.push(response(
        "PUSH on READ",
        3,
        push,
        &read_body(0, 0, &[]),
        Error::UnexpectedFlags {
            opcode: 3,
            flags: push,
        },
    ));
    let push_error = ERR | Flags::PUSH.bits();
    cases.push(response(
        "ERROR push without END",
        4,
        push_error,
        &error_body(3, 0, b""),
        Error::UnexpectedFlags {
            opcode: 4,
            flags: push_error,
        },
    ));
    cases.push(response(
        "opcode 0 without ERROR",
        0,
        RESP,
        &[],
        Error::UnknownOpcode { opcode: 0 },
    ));
    cases.push(response(
        "ERROR code 0",
        2,
        ERR,
        &error_body(0, 0, b""),
        Error::UnknownErrorCode { code: 0 },
    ));
    cases.push(response(
        "ERROR code 20",
        2,
        ERR,
        &error_body(20, 0, b""),
        Error::UnknownErrorCode { code: 20 },
    ));
    cases.push(response(
        "ERROR retryable disagrees with the code",
        2,
        ERR,
        &error_body(ErrorCode::Overloaded as u16, 0, b""),
        Error::InvalidField {
            opcode: 2,
            field: "retryable",
            value: 0,
        },
    ));
    cases.push(response(
        "ERROR message over 1024 bytes",
        2,
        ERR,
        &error_body(1, 0, &[b'm'; 1025]),
        Error::MessageTooLong { len: 1025 },
    ));
    cases.push(response(
        "ERROR message not UTF-8",
        2,
        ERR,
        &error_body(1, 0, b"\xc3\x28"),
        Error::MessageNotUtf8,
    ));
    let mut gap = stamped(7, 10, &[b"a"]);
    gap.extend(stamped(7, 12, &[b"b"]));
    cases.push(response(
        "READ records with a gap",
        3,
        RESP,
        &read_body(20, 2, &gap),
        Error::RecordOutOfSequence { index: 1 },
    ));
    let mut two_logs = stamped(7, 10, &[b"a"]);
    two_logs.extend(stamped(8, 11, &[b"b"]));
    cases.push(response(
        "READ records of two logs",
        3,
        RESP,
        &read_body(20, 2, &two_logs),
        Error::RecordOutOfSequence { index: 1 },
    ));
    cases.push(response(
        "READ record at the tail",
        3,
        RESP,
        &read_body(11, 2, &stamped(7, 10, &[b"a", b"b"])),
        Error::RecordOutOfSequence { index: 1 },
    ));
    cases.push(response(
        "LIST_LOGS over list_max",
        12,
        RESP,
        &list_body(1001, &[]),
        Error::TooManyEntries {
            count: 1001,
            max: 1000,
        },
    ));
    cases.push(response(
        "LIST_LOGS ids not ascending",
        12,
        RESP,
        &list_body(2, &[list_entry(7, b"b", 0), list_entry(7, b"c", 0)]),
        Error::EntryOutOfOrder { index: 1 },
    ));
    cases.push(response(
        "LIST_LOGS padding nonzero",
        12,
        RESP,
        &list_body(1, &[list_entry(7, b"abc", 1)]),
        Error::InvalidField {
            opcode: 12,
            field: "entry.padding",
            value: 0,
        },
    ));
    cases.push(response(
        "HELLO response shard_index >= shard_count",
        1,
        RESP,
        &hello_response_body(1, 2, 2, limits.frame_bytes_max),
        Error::InvalidField {
            opcode: 1,
            field: "shard_index",
            value: 2,
        },
    ));
    cases.push(response(
        "HELLO response version 2",
        1,
        RESP,
        &hello_response_body(2, 0, 1, limits.frame_bytes_max),
        Error::InvalidField {
            opcode: 1,
            field: "version",
            value: 2,
        },
    ));
    cases.push(response(
        "HELLO response frame too small for one record",
        1,
        RESP,
        &hello_response_body(1, 0, 1, 1 << 20),
        Error::InvalidField {
            opcode: 1,
            field: "frame_bytes_max",
            value: 1 << 20,
        },
    ));
    let mut bad_role = hello_response_body(1, 0, 1, limits.frame_bytes_max);
    bad_role[6] = 2;
    cases.push(response(
        "HELLO response role 2",
        1,
        RESP,
        &bad_role,
        Error::InvalidField {
            opcode: 1,
            field: "role",
            value: 2,
        },
    ));
    cases.push(response(
        "APPEND response count 0",
        2,
        RESP,
        &[0; 16],
        Error::InvalidField {
            opcode: 2,
            field: "count",
            value: 0,
        },
    ));
    cases.push(response(
        "PEER response with a body",
        PEER,
        RESP,
        &[0; 8],
        Error::TrailingBytes {
            opcode: PEER,
            extra_bytes: 8,
        },
    ));
    cases.push(response(
        "REPLICATE response of 24 bytes",
        REPLICATE,
        RESP,
        &[0; 24],
        Error::BodyTruncated {
            opcode: REPLICATE,
            body_bytes: 24,
            needed_bytes: 32,
        },
    ));
    cases.push(response(
        "REPLICATE response trailing bytes",
        REPLICATE,
        RESP,
        &[0; 40],
        Error::TrailingBytes {
            opcode: REPLICATE,
            extra_bytes: 8,
        },
    ));
    cases.push(response(
        "REGISTER_NODE response truncated",
        REGISTER,
        RESP,
        &[0; 4],
        Error::BodyTruncated {
            opcode: REGISTER,
            body_bytes: 4,
            needed_bytes: 8,
        },
    ));
    cases.push(response(
        "HEARTBEAT response trailing bytes",
        HEARTBEAT,
        RESP,
        &[0; 9],
        Error::TrailingBytes {
            opcode: HEARTBEAT,
            extra_bytes: 1,
        },
    ));
    let node = |node_id: u64| map_node_entry(node_id, 1, 1, b"h:1", 0);
    let log = |log_id: u64| map_log_entry(log_id, 3, &[1, 2], b"log", 0);
    let map_case = |name: &'static str, body: Vec<u8>, expected: Error| {
        response(name, GET_MAP, RESP, &body, expected)
    };
    let map_invalid = |field: &'static str, value: u64| invalid(GET_MAP, field, value);
    cases.push(map_case(
        "GET_MAP header truncated",
        map_body(0, 0, &[])[..16].to_vec(),
        Error::BodyTruncated {
            opcode: GET_MAP,
            body_bytes: 16,
            needed_bytes: 24,
        },
    ));
    let mut body = map_body(0, 0, &[]);
    body[23] = 1;
    cases.push(map_case(
        "GET_MAP reserved nonzero",
        body,
        Error::ReservedNonzero {
            opcode: GET_MAP,
            field: "reserved",
        },
    ));
    cases.push(map_case(
        "GET_MAP over list_max logs",
        map_body(0, 1001, &[]),
        Error::TooManyEntries {
            count: 1001,
            max: 1000,
        },
    ));
    cases.push(map_case(
        "GET_MAP fewer nodes than node_count",
        map_body(3, 0, &[node(1), node(2)]),
        Error::BodyTruncated {
            opcode: GET_MAP,
            body_bytes: 24 + 64,
            needed_bytes: 24 + 64 + 24,
        },
    ));
    cases.push(map_case(
        "GET_MAP fewer logs than log_count",
        map_body(1, 2, &[node(1), log(3)]),
        Error::BodyTruncated {
            opcode: GET_MAP,
            body_bytes: 24 + 32 + 72,
            needed_bytes: 24 + 32 + 72 + 48,
        },
    ));
    cases.push(map_case(
        "GET_MAP more entries than the counts",
        map_body(1, 1, &[node(1), log(3), log(4)]),
        Error::TrailingBytes {
            opcode: GET_MAP,
            extra_bytes: 72,
        },
    ));
    cases.push(map_case(
        "GET_MAP node ids not ascending",
        map_body(3, 0, &[node(1), node(5), node(2)]),
        Error::NodeOutOfOrder { index: 2 },
    ));
    cases.push(map_case(
        "GET_MAP node listed twice",
        map_body(2, 0, &[node(1), node(1)]),
        Error::NodeOutOfOrder { index: 1 },
    ));
    cases.push(map_case(
        "GET_MAP node id 0",
        map_body(1, 0, &[node(0)]),
        map_invalid("node.node_id", 0),
    ));
    cases.push(map_case(
        "GET_MAP node shard_count 0",
        map_body(1, 0, &[map_node_entry(1, 0, 1, b"h:1", 0)]),
        map_invalid("node.shard_count", 0),
    ));
    cases.push(map_case(
        "GET_MAP node alive 2",
        map_body(1, 0, &[map_node_entry(1, 1, 2, b"h:1", 0)]),
        map_invalid("node.alive", 2),
    ));
    cases.push(map_case(
        "GET_MAP node empty addr",
        map_body(1, 0, &[map_node_entry(1, 1, 1, b"", 0)]),
        map_invalid("node.addr_len", 0),
    ));
    cases.push(map_case(
        "GET_MAP node addr not UTF-8",
        map_body(1, 0, &[map_node_entry(1, 1, 1, b"h\xc3\x28:1", 0)]),
        Error::AddrNotUtf8,
    ));
    cases.push(map_case(
        "GET_MAP node padding nonzero",
        map_body(2, 0, &[node(1), map_node_entry(2, 1, 1, b"h:1", 9)]),
        map_invalid("node.padding", 1),
    ));
    let mut drained = node(1);
    drained[13] = 2;
    cases.push(map_case(
        "GET_MAP node drained 2",
        map_body(1, 0, &[drained]),
        map_invalid("node.drained", 2),
    ));
    let mut long_zone = map_node_labelled(1, &[b'z'; 64], b"", 0);
    long_zone[14] = 65;
    cases.push(map_case(
        "GET_MAP node zone over 64 bytes",
        map_body(1, 0, &[long_zone]),
        map_invalid("node.zone_len", 65),
    ));
    let mut long_rack = map_node_labelled(1, b"", &[b'r'; 64], 0);
    long_rack[15] = 65;
    cases.push(map_case(
        "GET_MAP node rack over 64 bytes",
        map_body(1, 0, &[long_rack]),
        map_invalid("node.rack_len", 65),
    ));
    cases.push(map_case(
        "GET_MAP node zone not UTF-8",
        map_body(1, 0, &[map_node_labelled(1, b"\xff", b"r", 0)]),
        Error::LabelNotUtf8,
    ));
    cases.push(map_case(
        "GET_MAP node padding after the labels nonzero",
        map_body(2, 0, &[node(1), map_node_labelled(2, b"zn", b"r", 9)]),
        map_invalid("node.padding", 1),
    ));
    cases.push(map_case(
        "GET_MAP log ids not ascending",
        map_body(1, 3, &[node(1), log(3), log(9), log(7)]),
        Error::EntryOutOfOrder { index: 2 },
    ));
    cases.push(map_case(
        "GET_MAP chain_len 0",
        map_body(1, 1, &[node(1), map_log_entry(3, 3, &[], b"log", 0)]),
        map_invalid("log.chain_len", 0),
    ));
    cases.push(map_case(
        "GET_MAP chain naming node 0",
        map_body(1, 1, &[node(1), map_log_entry(3, 3, &[1, 0], b"log", 0)]),
        map_invalid("log.chain", 0),
    ));
    cases.push(map_case(
        "GET_MAP replication_factor 0",
        map_body(1, 1, &[node(1), map_log_entry(3, 0, &[1], b"log", 0)]),
        map_invalid("log.replication_factor", 0),
    ));
    cases.push(map_case(
        "GET_MAP log padding nonzero",
        map_body(
            1,
            2,
            &[node(1), log(3), map_log_entry(4, 3, &[1], b"log", 1)],
        ),
        map_invalid("log.padding", 1),
    ));
    for (name, learner) in [
        ("GET_MAP learner naming node 0", 0u64),
        ("GET_MAP learner in the chain", 1),
    ] {
        // A chain of node 1 and one learner (learner_len at 28, the id after the chain).
        let mut entry = map_log_entry(3, 3, &[1], b"log", 0);
        entry[28] = 1;
        entry.splice(56..56, learner.to_le_bytes());
        cases.push(map_case(
            name,
            map_body(1, 1, &[node(1), entry]),
            map_invalid("log.learners", 0),
        ));
    }
    let mut reserved = log(3);
    reserved[29] = 1;
    cases.push(map_case(
        "GET_MAP log reserved nonzero",
        map_body(1, 1, &[node(1), reserved]),
        Error::ReservedNonzero {
            opcode: GET_MAP,
            field: "log.reserved",
        },
    ));
    for (name, log_name, expected) in [
        ("GET_MAP log name empty", &b""[..], Error::EmptyName),
        ("GET_MAP log name not UTF-8", b"\xff", Error::NameNotUtf8),
        ("GET_MAP log name with NUL", b"a\0b", Error::NameContainsNul),
        (
            "GET_MAP log name too long",
            &[b'n'; 256],
            Error::NameTooLong { len: 256, max: 255 },
        ),
    ] {
        cases.push(map_case(
            name,
            map_body(1, 1, &[node(1), map_log_entry(3, 3, &[1], log_name, 0)]),
            expected,
        ));
    }
    cases.push(response(
        "TRIM response with a body",
        9,
        RESP,
        &[0; 8],
        Error::TrailingBytes {
            opcode: 9,
            extra_bytes: 8,
        },
    ));

    // PULL.
    let pull_request = |max_records: u32, reserved: u32| {
        let mut body = Vec::new();
        for field in [7u64, 3, 10] {
            body.extend_from_slice(&field.to_le_bytes());
        }
        body.extend_from_slice(&max_records.to_le_bytes());
        body.extend_from_slice(&reserved.to_le_bytes());
        body
    };
    let pull_response = |fields: [u64; 7], count: u32, records: &[u8]| {
        let mut body = Vec::new();
        for field in fields {
            body.extend_from_slice(&field.to_le_bytes());
        }
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(records);
        body
    };
    let invalid = |field: &'static str, value: u64| Error::InvalidField {
        opcode: PULL,
        field,
        value,
    };
    cases.push(request(
        "PULL max_records 0",
        PULL,
        &pull_request(0, 0),
        invalid("max_records", 0),
    ));
    cases.push(request(
        "PULL max_records above batch_records_max",
        PULL,
        &pull_request(Limits::DEFAULT.batch_records_max + 1, 0),
        invalid(
            "max_records",
            u64::from(Limits::DEFAULT.batch_records_max) + 1,
        ),
    ));
    cases.push(request(
        "PULL learner neither 0 nor 1",
        PULL,
        &pull_request(1, 2),
        invalid("learner", 2),
    ));
    cases.push(request(
        "PULL reserved field set",
        PULL,
        &pull_request(1, 9 << 8),
        Error::ReservedNonzero {
            opcode: PULL,
            field: "reserved",
        },
    ));
    let one = replicated(7, 3, 10, &[b"first"]);
    cases.push(response(
        "PULL response writer_seq without writer_id",
        PULL,
        RESP,
        &pull_response([7, 3, 10, 11, 0, 0, 4], 1, &one),
        invalid("writer_seq", 4),
    ));
    cases.push(response(
        "PULL response with a key and no records",
        PULL,
        RESP,
        &pull_response([7, 3, 10, 10, 0, 2, 4], 0, &[]),
        invalid("count", 0),
    ));
    let mut empty_with_more = pull_response([7, 3, 10, 10, 0, 0, 0], 0, &[]);
    empty_with_more[60] = 1;
    cases.push(response(
        "PULL response with more to follow and no records",
        PULL,
        RESP,
        &empty_with_more,
        invalid("count", 0),
    ));
    let mut more_two = pull_response([7, 3, 10, 11, 0, 0, 0], 1, &one);
    more_two[60] = 2;
    cases.push(response(
        "PULL response more neither 0 nor 1",
        PULL,
        RESP,
        &more_two,
        invalid("more", 2),
    ));
    let mut keys_and_records = pull_response([7, 3, 10, 11, 0, 0, 0], 1, &one);
    keys_and_records[62] = 1;
    cases.push(response(
        "PULL response with records and keys",
        PULL,
        RESP,
        &keys_and_records,
        invalid("key_count", 1),
    ));
    let mut keys_missing = pull_response([7, 3, 10, 10, 0, 0, 0], 0, &[]);
    keys_missing[62] = 2;
    cases.push(response(
        "PULL response with fewer keys than key_count",
        PULL,
        RESP,
        &keys_missing,
        invalid("key_count", 2),
    ));
    let mut reserved = pull_response([7, 3, 10, 11, 0, 0, 0], 1, &one);
    reserved[61] = 1;
    cases.push(response(
        "PULL response reserved nonzero",
        PULL,
        RESP,
        &reserved,
        Error::ReservedNonzero {
            opcode: PULL,
            field: "reserved",
        },
    ));
    cases.push(response(
        "PULL response record at another lsn",
        PULL,
        RESP,
        &pull_response([7, 3, 11, 12, 0, 0, 0], 1, &one),
        Error::RecordStampMismatch {
            index: 0,
            field: "lsn",
            value: 10,
            expected: 11,
        },
    ));

    // RECONFIGURE_LOG and DRAIN_NODE.
    let invalid = |opcode: u16, field: &'static str, value: u64| Error::InvalidField {
        opcode,
        field,
        value,
    };
    cases.push(request(
        "RECONFIGURE_LOG chain naming node 0",
        RECONFIGURE,
        &reconfigure_body(&[7, 0], 2, &[2, 0]),
        invalid(RECONFIGURE, "chain", 0),
    ));
    cases.push(request(
        "RECONFIGURE_LOG chain shorter than chain_len",
        RECONFIGURE,
        &reconfigure_body(&[7, 0], 3, &[2, 3]),
        Error::BodyTruncated {
            opcode: RECONFIGURE,
            body_bytes: 24 + 16,
            needed_bytes: 24 + 24,
        },
    ));
    cases.push(request(
        "RECONFIGURE_LOG ids after the chain",
        RECONFIGURE,
        &reconfigure_body(&[7, 0], 1, &[2, 3]),
        Error::TrailingBytes {
            opcode: RECONFIGURE,
            extra_bytes: 8,
        },
    ));
    let mut reserved = reconfigure_body(&[7, 0], 1, &[2]);
    reserved[20] = 1;
    cases.push(request(
        "RECONFIGURE_LOG reserved nonzero",
        RECONFIGURE,
        &reserved,
        Error::ReservedNonzero {
            opcode: RECONFIGURE,
            field: "reserved2",
        },
    ));
    cases.push(response(
        "RECONFIGURE_LOG response with an empty chain",
        RECONFIGURE,
        RESP,
        &reconfigure_body(&[7, 4, 20], 0, &[]),
        invalid(RECONFIGURE, "chain_len", 0),
    ));
    let drain = |node_id: u64, drained: u8| {
        let mut body = node_id.to_le_bytes().to_vec();
        body.push(drained);
        body.extend_from_slice(&[0; 7]);
        body
    };
    cases.push(request(
        "DRAIN_NODE node_id 0",
        DRAIN,
        &drain(0, 1),
        invalid(DRAIN, "node_id", 0),
    ));
    cases.push(request(
        "DRAIN_NODE drain 2",
        DRAIN,
        &drain(3, 2),
        invalid(DRAIN, "drain", 2),
    ));
    cases
}

#[test]
fn each_malformed_input_gets_its_precise_error() {
    let cases = cases();
    assert!(cases.len() >= 140, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let got = decode(&case.bytes, case.decoder, &Limits::DEFAULT);
        if got != Err(case.expected) {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.name, case.expected
            ));
        }
        // Every error has a message for people.
        assert!(!case.expected.to_string().is_empty());
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_errors_map_to_the_documented_codes() {
    for case in cases() {
        let code = case.expected.code();
        let expected = match case.expected {
            Error::TooManyRecords { .. }
            | Error::RecordTooLarge { .. }
            | Error::NameTooLong { .. }
            | Error::TooManyEntries { .. } => ErrorCode::TooLarge,
            Error::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::Malformed,
        };
        assert_eq!(code, expected, "{}", case.name);
        assert_eq!(
            case.expected.response("").arg0,
            case.expected.arg0(),
            "{}",
            case.name
        );
    }
    let bad_crc = Error::BadRecordCrc {
        index: 1,
        stored: 0,
        computed: 0,
    };
    assert_eq!((bad_crc.code(), bad_crc.arg0()), (ErrorCode::Malformed, 1));
}

#[test]
fn an_oversized_length_is_refused_before_the_frame_arrives() {
    let limits = Limits::DEFAULT;
    let length = limits.frame_bytes_max; // 4 + length is one byte over
    let prefix = length.to_le_bytes();
    assert_eq!(
        parse_frame(&prefix, &limits),
        Err(Error::FrameTooLarge {
            frame_bytes: u64::from(limits.frame_bytes_max) + 4,
            max: limits.frame_bytes_max
        })
    );
    assert_eq!(
        parse_frame(&7u32.to_le_bytes(), &limits),
        Err(Error::FrameTooShort { length: 7 })
    );
    // Fewer than 4 bytes: nothing to judge yet.
    assert_eq!(parse_frame(&[0xff; 3], &limits), Ok(None));
}

#[test]
fn smaller_limits_are_enforced() {
    let limits = Limits {
        record_bytes_max: 4,
        batch_records_max: 1,
        name_bytes_max: 3,
        ..Limits::DEFAULT
    };
    let two = unstamped(&[b"ab", b"cd"]);
    let header = AppendHeader::new(1);
    assert_eq!(
        decode(
            &raw_frame(APPEND, REQ, 1, &append_body(&header, 2, &two)),
            As::Request,
            &limits
        ),
        Err(Error::TooManyRecords { count: 2, max: 1 })
    );
    let big = unstamped(&[b"abcde"]);
    assert_eq!(
        decode(
            &raw_frame(APPEND, REQ, 1, &append_body(&header, 1, &big)),
            As::Request,
            &limits
        ),
        Err(Error::RecordTooLarge {
            index: 0,
            len: 5,
            max: 4
        })
    );
    assert_eq!(
        decode(
            &raw_frame(10, REQ, 1, &create_body(1, b"abcd")),
            As::Request,
            &limits
        ),
        Err(Error::NameTooLong { len: 4, max: 3 })
    );
}

/// One idempotency key laid out by hand (PROTOCOL.md 6.11a; sequence number 1), valid or not.
fn key_bytes(writer_id: u64, first_lsn: u64, count: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for field in [writer_id, 1, first_lsn] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}
