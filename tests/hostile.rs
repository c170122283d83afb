//! Bad input against the real `chainlog node` binary: dozens of kinds of malformed or hostile
//! traffic, each on its own connection, while one well-behaved client on another connection
//! keeps appending and reading back. Every kind checks the exact answer PROTOCOL.md specifies
//! (code, arguments, whether the connection is closed: read to EOF where it must close); the
//! well-behaved client must never see an error and its LSNs must be dense at the end.
//!
//! Kinds run one after the other; a kind that fails is recorded and the rest still run, so one
//! run reports every deviation. The node bugs these kinds found (fixed since) keep minimal
//! regression tests at the end.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use chainlog::net::log_id_of;
use chainlog::net::{
    AppendHeader, CreditRequest, ErrorCode, HelloRequest, ListLogsRequest, ReadRequest, Request,
    SubscribeRequest, TrimRequest, UnsubscribeRequest, HELLO_MAGIC,
};
use common::raw::{frame, request, Answer, Raw};
use common::{Client, Node, SOCKET_TIMEOUT};

const NONE: u64 = u64::MAX;
/// The largest oversized frame whose bytes a node still reads (and drops) before it closes
/// (PROTOCOL.md 2.2).
const OVERSIZED_DISCARD_BYTES_MAX: usize = 64 << 20;
const OP_HELLO: u16 = 1;
const OP_APPEND: u16 = 2;
const OP_READ: u16 = 3;
const OP_SUBSCRIBE: u16 = 4;
const OP_CREDIT: u16 = 5;
const OP_UNSUBSCRIBE: u16 = 6;
const OP_CHECK_TAIL: u16 = 7;
const OP_TAIL_HINT: u16 = 8;
const OP_TRIM: u16 = 9;
const OP_CREATE_LOG: u16 = 10;
const OP_DESCRIBE_LOG: u16 = 11;
const OP_LIST_LOGS: u16 = 12;
const OP_DELETE_LOG: u16 = 13;

// ---------------------------------------------------------------------------------------------
// Frames built by hand, so that any field can be wrong.

fn hello_body(magic: u32, min: u16, max: u16) -> Vec<u8> {
    let mut b = magic.to_le_bytes().to_vec();
    b.extend_from_slice(&min.to_le_bytes());
    b.extend_from_slice(&max.to_le_bytes());
    b
}

/// A record as a client sends it: header (len, crc, zeros), payload, zero padding.
fn record(payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(40 + payload.len() + 7);
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    r.extend_from_slice(&[0; 32]);
    r.extend_from_slice(payload);
    r.resize(r.len().next_multiple_of(8), 0);
    r
}

/// An APPEND body: the 56-byte header and the given record bytes.
fn append_body(log_id: u64, epoch: u64, count: u32, records: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(56 + records.len());
    b.extend_from_slice(&log_id.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // expected_lsn: unconditional
    b.extend_from_slice(&0u64.to_le_bytes()); // fencing_token
    b.extend_from_slice(&0u64.to_le_bytes()); // writer_id
    b.extend_from_slice(&0u64.to_le_bytes()); // writer_seq
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(records);
    b
}

/// A valid APPEND frame of `payloads`.
fn append_frame(request_id: u64, log_id: u64, payloads: &[&[u8]]) -> Vec<u8> {
    let records: Vec<u8> = payloads.iter().flat_map(|p| record(p)).collect();
    frame(
        OP_APPEND,
        0,
        request_id,
        &append_body(log_id, 0, payloads.len() as u32, &records),
    )
}

fn list_logs(request_id: u64) -> Vec<u8> {
    request(
        request_id,
        &Request::ListLogs(ListLogsRequest {
            after_log_id: 0,
            max: 0,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// What this test adds to the raw connection (common::raw).

impl Raw {
    /// Expects a clean close: nothing more sent, then the end of the stream (not a reset,
    /// which could have destroyed the answers before it).
    fn expect_eof(&mut self) -> &'static str {
        assert!(self.input.is_empty(), "bytes after the last answer");
        let mut byte = [0; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => "closed cleanly",
            other => panic!("the node must close cleanly, but the socket gave {other:?}"),
        }
    }

    /// Expects the connection to be open and serving: a LIST_LOGS is answered.
    fn expect_open(&mut self, request_id: u64) -> &'static str {
        self.send(&list_logs(request_id));
        match self.next() {
            Some(Answer::Ok {
                opcode: OP_LIST_LOGS,
                request_id: r,
                ..
            }) if r == request_id => "open",
            other => panic!("the connection must stay open, but LIST_LOGS got {other:?}"),
        }
    }

    /// Expects a successful APPEND answer; returns (first_lsn, count) as text.
    fn expect_appended(&mut self, request_id: u64) -> String {
        match self.next() {
            Some(Answer::Ok {
                opcode: OP_APPEND,
                request_id: r,
                what,
            }) if r == request_id => what,
            other => panic!("expected APPEND {request_id} to succeed, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The well-behaved client.

fn good_payload(lsn: u64) -> Vec<u8> {
    format!("good record {lsn};")
        .repeat(1 + (lsn % 5) as usize)
        .into_bytes()
}

/// A name (with `prefix`) whose log lives on `shard` of `shards`.
fn name_on(prefix: &str, shard: u64, shards: u64) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|n| log_id_of(n) % shards == shard)
        .expect("some name")
}

/// Appends batches of 1..=3 records until `stop`, reading each batch back; sends the tail
/// after each acknowledged batch on `progress`. Returns the final tail after checking the
/// whole log.
fn good_client(addr: SocketAddr, stop: &AtomicBool, progress: &mpsc::Sender<u64>) -> u64 {
    let mut c = Client::connect(addr);
    let name = name_on("good", 0, u64::from(c.hello.shard_count));
    let id = c.create(&name);
    let mut next = 0u64;
    let mut batch = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let count = 1 + batch % 3;
        batch += 1;
        let payloads: Vec<Vec<u8>> = (next..next + count).map(good_payload).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(
            c.append(&AppendHeader::new(id), &refs),
            Ok(next),
            "the good client's append"
        );
        let (tail, records) = c.read(id, next).expect("the good client's read");
        assert!(tail >= next + count);
        assert_eq!(records.len() as u64, count, "read back the batch");
        for (lsn, bytes) in records {
            assert_eq!(bytes, good_payload(lsn));
        }
        next += count;
        let _ = progress.send(next);
    }
    let (tail, records) = c.read_all(id, 0).expect("the good client's final read");
    assert_eq!(tail, next, "dense LSNs: the tail is the number appended");
    assert_eq!(records.len() as u64, next);
    for (i, (lsn, bytes)) in records.into_iter().enumerate() {
        assert_eq!(lsn, i as u64, "dense LSNs from 0");
        assert_eq!(bytes, good_payload(lsn));
    }
    next
}

/// Waits (bounded by the socket timeout) until the good client acknowledged two more
/// batches: the second was sent after this call began, so the node served it after whatever
/// hostile traffic came before.
fn wait_good_progress(progress: &mpsc::Receiver<u64>) {
    while progress.try_recv().is_ok() {}
    for _ in 0..2 {
        progress
            .recv_timeout(SOCKET_TIMEOUT)
            .expect("the good client keeps making progress");
    }
}

// ---------------------------------------------------------------------------------------------
// The hostile kinds.

/// What a kind needs: the node's shards and two logs of shard 0 it may append to.
struct Env {
    shard0: SocketAddr,
    shard1: SocketAddr,
    /// A log of shard 0 for valid appends of hostile connections.
    scratch: u64,
    /// A log of shard 1 (for WRONG_SHARD).
    other_shard_log: u64,
    /// A log of shard 0 that a client floods with pipelined appends.
    flood: u64,
    record_bytes_max: u32,
    frame_bytes_max: u32,
    batch_records_max: u32,
    /// The good client's log (hostile subscribers follow it).
    good_log: u64,
    /// Hostile connections kept open until every kind ran.
    parked: Mutex<Vec<Raw>>,
}

impl Env {
    /// Keeps `raw` open until every kind ran (a kind that failed may have poisoned the lock:
    /// the list is still good).
    fn park(&self, raw: Raw) {
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(raw);
    }
}

/// A kind: its name and the code that sends it and checks the answer, returning the answer.
type Kind = (&'static str, Box<dyn Fn(&Env) -> String>);

fn kinds() -> Vec<Kind> {
    let mut k: Vec<Kind> = Vec::new();
    let mut add = |name: &'static str, f: Box<dyn Fn(&Env) -> String>| k.push((name, f));

    // --- Before and around the handshake.
    add(
        "garbage bytes before HELLO",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&[0xab; 64]);
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "an HTTP request instead of HELLO",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "a valid frame (LIST_LOGS) before HELLO",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&list_logs(5));
            let a = c.expect_error(OP_LIST_LOGS, 5, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "a valid APPEND before HELLO",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&append_frame(6, e.scratch, &[b"before hello"]));
            let a = c.expect_error(OP_APPEND, 6, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "a second HELLO",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&request(2, &Request::Hello(HelloRequest::CURRENT)));
            c.send(&list_logs(3));
            let a = c.expect_error(OP_HELLO, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "HELLO with a bad magic",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&frame(
                OP_HELLO,
                0,
                1,
                &hello_body(u32::from_le_bytes(*b"CHLX"), 1, 1),
            ));
            let a = c.expect_error(OP_HELLO, 1, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "HELLO with versions 2..=9 (excluding 1)",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&frame(OP_HELLO, 0, 1, &hello_body(HELLO_MAGIC, 2, 9)));
            c.send(&list_logs(2));
            let a = c.expect_error(OP_HELLO, 1, ErrorCode::UnsupportedVersion, 1, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "HELLO with versions 0..=0",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&frame(OP_HELLO, 0, 1, &hello_body(HELLO_MAGIC, 0, 0)));
            let a = c.expect_error(OP_HELLO, 1, ErrorCode::UnsupportedVersion, 1, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "HELLO with min_version > max_version",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&frame(OP_HELLO, 0, 1, &hello_body(HELLO_MAGIC, 2, 1)));
            let a = c.expect_error(OP_HELLO, 1, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "HELLO truncated (7-byte body) as the first frame",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            c.send(&frame(OP_HELLO, 0, 1, &hello_body(HELLO_MAGIC, 1, 1)[..7]));
            let a = c.expect_error(OP_HELLO, 1, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );

    // --- Framing.
    add(
        "length field 0..=19 (each on its own connection, after HELLO)",
        Box::new(|e| {
            let mut answers = Vec::new();
            for length in 0u32..20 {
                let mut c = Raw::greeted(e.shard0);
                // Only the length and a few bytes: it is refused as soon as it arrives.
                let mut bytes = length.to_le_bytes().to_vec();
                bytes.extend_from_slice(&[0; 4]);
                c.send(&bytes);
                answers.push(c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0));
                c.expect_closed();
            }
            format!("{}; closed (x20)", answers[0])
        }),
    );
    add(
        "length field 0xFFFFFFFF (only the 4 length bytes sent)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&u32::MAX.to_le_bytes());
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "frame of exactly frame_bytes_max + 1: MALFORMED once its header arrives, a clean close \
         once the rest has",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let frame_bytes = e.frame_bytes_max as usize + 1;
            let mut header = frame(OP_APPEND, 0, 2, &[]);
            header[..4].copy_from_slice(&(frame_bytes as u32 - 4).to_le_bytes());
            c.send(&header);
            // Answered at the length, before the body is sent (PROTOCOL.md 2.2).
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            c.stream
                .write_all(&vec![0; frame_bytes - header.len()])
                .expect("the node reads the rest of the refused frame");
            format!("{a}; {}", c.expect_eof())
        }),
    );
    add(
        "an oversized frame of 64 MiB (the most a node reads on) written whole before reading",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut f = vec![0; OVERSIZED_DISCARD_BYTES_MAX];
            f[..4].copy_from_slice(&(OVERSIZED_DISCARD_BYTES_MAX as u32 - 4).to_le_bytes());
            // No EPIPE: the node drops the frame's bytes as they come.
            c.stream
                .write_all(&f)
                .expect("the node reads the whole refused frame");
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_eof())
        }),
    );
    add(
        "an oversized frame announced above 64 MiB (header only sent): closed at once",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut header = frame(OP_APPEND, 0, 2, &[]);
            header[..4]
                .copy_from_slice(&(OVERSIZED_DISCARD_BYTES_MAX as u32 + 1 - 4).to_le_bytes());
            c.send(&header);
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "frame of exactly frame_bytes_max (an APPEND filling it) is accepted",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let big = vec![b'f'; e.record_bytes_max as usize];
            let mut records: Vec<u8> = Vec::new();
            let mut count = 0;
            while 24 + 56 + records.len() + 40 + big.len() <= e.frame_bytes_max as usize {
                records.extend(record(&big));
                count += 1;
            }
            let rest = e.frame_bytes_max as usize - 24 - 56 - records.len() - 40;
            records.extend(record(&vec![b'g'; rest / 8 * 8]));
            count += 1;
            let f = frame(OP_APPEND, 0, 2, &append_body(e.scratch, 0, count, &records));
            assert_eq!(f.len(), e.frame_bytes_max as usize);
            c.send(&f);
            let a = c.expect_appended(2);
            format!("{a} ({} records); {}", count, c.expect_open(3))
        }),
    );
    add(
        "bad frame CRC",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut f = list_logs(2);
            f[16] ^= 1;
            f.extend(list_logs(3));
            c.send(&f);
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "bad frame CRC (a body byte flipped in an APPEND)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut f = append_frame(2, e.scratch, &[b"flipped"]);
            let last = f.len() - 3;
            f[last] ^= 0x40;
            c.send(&f);
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "nonzero reserved header field",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut f = list_logs(2);
            f[20] = 1;
            c.send(&f);
            let a = c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "unknown flag bits (bit 4, bit 15)",
        Box::new(|e| {
            let mut answers = Vec::new();
            for flags in [1u16 << 4, 1 << 15] {
                let mut c = Raw::greeted(e.shard0);
                c.send(&frame(OP_LIST_LOGS, flags, 2, &[0; 16]));
                answers.push(c.expect_error(0, 0, ErrorCode::Malformed, NONE, 0));
                c.expect_closed();
            }
            format!("{}; closed (x2)", answers[0])
        }),
    );
    add(
        "RESPONSE flag on a request",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(OP_LIST_LOGS, 1, 2, &[0; 16]));
            let a = c.expect_error(OP_LIST_LOGS, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "RESPONSE|ERROR flags on a request",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(OP_CHECK_TAIL, 3, 2, &e.scratch.to_le_bytes()));
            let a = c.expect_error(OP_CHECK_TAIL, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "unknown opcode 99",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(99, 0, 7, &[0; 8]));
            let a = c.expect_error(0, 7, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "opcode 0 on a request",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(0, 0, 8, &[]));
            let a = c.expect_error(0, 8, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );

    // --- Bodies of the wrong size.
    add(
        "truncated body of each fixed-size request (and APPEND/CREATE_LOG/DESCRIBE_LOG headers)",
        Box::new(|e| {
            let fixed: [(u16, usize); 12] = [
                (OP_APPEND, 56),
                (OP_READ, 24),
                (OP_SUBSCRIBE, 24),
                (OP_CREDIT, 16),
                (OP_UNSUBSCRIBE, 8),
                (OP_CHECK_TAIL, 8),
                (OP_TAIL_HINT, 8),
                (OP_TRIM, 16),
                (OP_CREATE_LOG, 4),
                (OP_DESCRIBE_LOG, 12),
                (OP_LIST_LOGS, 16),
                (OP_DELETE_LOG, 8),
            ];
            let mut seen = Vec::new();
            for (opcode, size) in fixed {
                for body_bytes in [0, size - 1] {
                    let mut c = Raw::greeted(e.shard0);
                    c.send(&frame(opcode, 0, 9, &vec![0; body_bytes]));
                    c.expect_error(opcode, 9, ErrorCode::Malformed, NONE, 0);
                    c.expect_closed();
                }
                seen.push(opcode.to_string());
            }
            format!(
                "MALFORMED (the request's opcode and id, arg0 MAX); closed, for opcodes {} with \
                 0 and size-1 body bytes",
                seen.join(",")
            )
        }),
    );
    add(
        "trailing bytes after each fixed-size request body",
        Box::new(|e| {
            let fixed: [(u16, usize); 9] = [
                (OP_READ, 24),
                (OP_SUBSCRIBE, 24),
                (OP_CREDIT, 16),
                (OP_UNSUBSCRIBE, 8),
                (OP_CHECK_TAIL, 8),
                (OP_TAIL_HINT, 8),
                (OP_TRIM, 16),
                (OP_LIST_LOGS, 16),
                (OP_DELETE_LOG, 8),
            ];
            for (opcode, size) in fixed {
                let mut c = Raw::greeted(e.shard0);
                let mut body = vec![0; size + 1];
                body[..8].copy_from_slice(&e.scratch.to_le_bytes());
                c.send(&frame(opcode, 0, 9, &body));
                c.expect_error(opcode, 9, ErrorCode::Malformed, NONE, 0);
                c.expect_closed();
            }
            "MALFORMED (the request's opcode and id, arg0 MAX); closed, for 9 opcodes".into()
        }),
    );
    add(
        "trailing bytes after a HELLO body",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            let mut body = hello_body(HELLO_MAGIC, 1, 1);
            body.push(0);
            c.send(&frame(OP_HELLO, 0, 1, &body));
            let a = c.expect_error(OP_HELLO, 1, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "nonzero reserved body field (LIST_LOGS, APPEND)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = [0u8; 16];
            body[12] = 1;
            c.send(&frame(OP_LIST_LOGS, 0, 2, &body));
            let a = c.expect_error(OP_LIST_LOGS, 2, ErrorCode::Malformed, NONE, 0);
            c.expect_closed();
            let mut c = Raw::greeted(e.shard0);
            let mut body = append_body(e.scratch, 0, 1, &record(b"x"));
            body[52] = 1;
            c.send(&frame(OP_APPEND, 0, 2, &body));
            c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {} (both)", c.expect_closed())
        }),
    );

    // --- APPEND bodies.
    add(
        "APPEND with count 0",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(OP_APPEND, 0, 2, &append_body(e.scratch, 0, 0, &[])));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND count larger than the records",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let records = [record(b"one"), record(b"two")].concat();
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, 3, &records),
            ));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND record length running past the frame (record 1)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut second = record(b"0123456789abcdef");
            second[..4].copy_from_slice(&1000u32.to_le_bytes());
            let records = [record(b"first"), second].concat();
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, 2, &records),
            ));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, 1, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND record header cut short (record 0)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let records = &record(b"cut")[..20];
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, 1, records),
            ));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, 0, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND record over record_bytes_max (record 2), then a valid APPEND on the connection",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let big = vec![b'b'; e.record_bytes_max as usize + 1];
            let records = [record(b"a"), record(b"b"), record(&big)].concat();
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, 3, &records),
            ));
            let a = c.expect_error(
                OP_APPEND,
                2,
                ErrorCode::TooLarge,
                u64::from(e.record_bytes_max),
                2,
            );
            c.send(&append_frame(3, e.scratch, &[b"after too large"]));
            let ok = c.expect_appended(3);
            format!("{a}; open: then {ok}")
        }),
    );
    add(
        "APPEND with more than batch_records_max records, then a valid APPEND",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let count = e.batch_records_max + 1;
            let records: Vec<u8> = (0..count).flat_map(|_| record(b"")).collect();
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, count, &records),
            ));
            let a = c.expect_error(
                OP_APPEND,
                2,
                ErrorCode::TooLarge,
                u64::from(e.batch_records_max),
                NONE,
            );
            c.send(&append_frame(3, e.scratch, &[b"after too many"]));
            let ok = c.expect_appended(3);
            format!("{a}; open: then {ok}")
        }),
    );
    add(
        "APPEND with a bad record CRC (record 1)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut second = record(b"second");
            second[4] ^= 1;
            let records = [record(b"first"), second, record(b"third")].concat();
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, 3, &records),
            ));
            c.send(&list_logs(3));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, 1, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND record with a nonzero lsn field (record 0)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut r = record(b"stamped");
            r[16] = 5;
            c.send(&frame(OP_APPEND, 0, 2, &append_body(e.scratch, 0, 1, &r)));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, 0, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND record with nonzero padding (record 1)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut r = record(b"pad");
            let last = r.len() - 1;
            r[last] = 0xee;
            let records = [record(b"ok"), r].concat();
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, 2, &records),
            ));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, 1, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND with trailing bytes after the records",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut records = record(b"one");
            records.extend_from_slice(&[0; 8]);
            c.send(&frame(
                OP_APPEND,
                0,
                2,
                &append_body(e.scratch, 0, 1, &records),
            ));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND with writer_seq but no writer_id",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = append_body(e.scratch, 0, 1, &record(b"x"));
            body[40] = 1;
            c.send(&frame(OP_APPEND, 0, 2, &body));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "APPEND to an unknown log",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let unknown = (e.scratch / 2 + 1) * 2; // even: shard 0, never created
            c.send(&append_frame(2, unknown, &[b"nobody"]));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::UnknownLog, NONE, 0);
            format!("{a}; {}", c.expect_open(3))
        }),
    );
    add(
        "APPEND to log ids 0 (shard 0) and u64::MAX (shard 1)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&append_frame(2, 0, &[b"zero"]));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::UnknownLog, NONE, 0);
            c.expect_open(3);
            let mut c = Raw::greeted(e.shard1);
            c.send(&append_frame(2, u64::MAX, &[b"max"]));
            c.expect_error(OP_APPEND, 2, ErrorCode::UnknownLog, NONE, 0);
            format!("{a}; {} (both)", c.expect_open(3))
        }),
    );
    add(
        "APPEND to a log of another shard",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&append_frame(2, e.other_shard_log, &[b"elsewhere"]));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::WrongShard, 1, 0);
            format!("{a}; {}", c.expect_open(3))
        }),
    );
    add(
        "APPEND in a wrong epoch (2)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let body = append_body(e.scratch, 2, 1, &record(b"epoch 2"));
            c.send(&frame(OP_APPEND, 0, 2, &body));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::WrongEpoch, 1, 0);
            format!("{a}; {}", c.expect_open(3))
        }),
    );
    add(
        "APPEND with a fencing token below the log's",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = append_body(e.scratch, 0, 1, &record(b"leader 5"));
            body[24..32].copy_from_slice(&5u64.to_le_bytes());
            c.send(&frame(OP_APPEND, 0, 2, &body));
            let a = c.expect_appended(2);
            body[24..32].copy_from_slice(&1u64.to_le_bytes());
            c.send(&frame(OP_APPEND, 0, 3, &body));
            let f = c.expect_error(OP_APPEND, 3, ErrorCode::Fenced, 5, 0);
            format!("{a}; {f}; {}", c.expect_open(4))
        }),
    );
    add(
        "APPEND with a writer_seq below the writer's last and never appended",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = append_body(e.scratch, 0, 1, &record(b"writer"));
            body[32..40].copy_from_slice(&0xfeedu64.to_le_bytes());
            body[40..48].copy_from_slice(&10u64.to_le_bytes());
            c.send(&frame(OP_APPEND, 0, 2, &body));
            let a = c.expect_appended(2);
            body[40..48].copy_from_slice(&9u64.to_le_bytes());
            c.send(&frame(OP_APPEND, 0, 3, &body));
            let w = c.expect_error(OP_APPEND, 3, ErrorCode::WriterSeq, 10, 0);
            format!("{a}; {w}; {}", c.expect_open(4))
        }),
    );
    add(
        "APPEND with a stale expected_lsn",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = append_body(e.scratch, 0, 1, &record(b"stale"));
            body[16..24].copy_from_slice(&0u64.to_le_bytes());
            c.send(&frame(OP_APPEND, 0, 2, &body));
            match c.next() {
                Some(Answer::Error {
                    opcode: OP_APPEND,
                    request_id: 2,
                    code: ErrorCode::ConditionFailed,
                    arg0,
                    arg1: 0,
                    ..
                }) if arg0 > 0 => format!("CONDITION_FAILED arg0 {arg0} (the tail); {}", {
                    c.expect_open(3)
                }),
                other => panic!("expected CONDITION_FAILED with the tail, got {other:?}"),
            }
        }),
    );

    // --- Other requests.
    add(
        "READ, CHECK_TAIL, TAIL_HINT, TRIM, SUBSCRIBE, DELETE_LOG of an unknown log",
        Box::new(|e| {
            let unknown = (e.scratch / 2 + 1) * 2;
            let mut c = Raw::greeted(e.shard0);
            let requests = [
                (
                    OP_READ,
                    Request::Read(ReadRequest {
                        log_id: unknown,
                        from_lsn: 0,
                        max_records: 10,
                        max_bytes: 1000,
                    }),
                ),
                (OP_CHECK_TAIL, Request::CheckTail { log_id: unknown }),
                (OP_TAIL_HINT, Request::TailHint { log_id: unknown }),
                (
                    OP_TRIM,
                    Request::Trim(TrimRequest {
                        log_id: unknown,
                        before_lsn: 1,
                    }),
                ),
                (
                    OP_SUBSCRIBE,
                    Request::Subscribe(SubscribeRequest {
                        log_id: unknown,
                        from_lsn: 0,
                        credit_records: 1,
                    }),
                ),
                (OP_DELETE_LOG, Request::DeleteLog { log_id: unknown }),
            ];
            let mut first = String::new();
            for (i, (opcode, r)) in requests.iter().enumerate() {
                let rid = 10 + i as u64;
                c.send(&request(rid, r));
                let a = c.expect_error(*opcode, rid, ErrorCode::UnknownLog, NONE, 0);
                if i == 0 {
                    first = a;
                }
            }
            format!("{first}; open (all 6 the same); {}", c.expect_open(30))
        }),
    );
    add(
        "TRIM beyond the tail",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&request(2, &Request::CheckTail { log_id: e.scratch }));
            let tail = match c.next() {
                Some(Answer::Ok { what, .. }) => what
                    .rsplit(' ')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok())
                    .expect("a tail"),
                other => panic!("CHECK_TAIL: {other:?}"),
            };
            c.send(&request(
                3,
                &Request::Trim(TrimRequest {
                    log_id: e.scratch,
                    before_lsn: u64::MAX - 1,
                }),
            ));
            match c.next() {
                Some(Answer::Error {
                    opcode: OP_TRIM,
                    request_id: 3,
                    code: ErrorCode::ConditionFailed,
                    arg0,
                    arg1: 0,
                    ..
                }) if arg0 >= tail => format!(
                    "CONDITION_FAILED (opcode 9, request_id 3) arg0 {arg0} = the tail; {}",
                    c.expect_open(4)
                ),
                other => panic!("expected CONDITION_FAILED, got {other:?}"),
            }
        }),
    );
    add(
        "CREATE_LOG with an empty name",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(OP_CREATE_LOG, 0, 2, &[1, 0, 0, 0]));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "CREATE_LOG with a name that is not UTF-8",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(OP_CREATE_LOG, 0, 2, &[1, 0, 3, 0, 0xff, 0xfe, 0x80]));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "CREATE_LOG with a NUL in the name",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(OP_CREATE_LOG, 0, 2, &[1, 0, 3, 0, b'a', 0, b'b']));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "CREATE_LOG with a 256-byte name",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = vec![1, 0];
            body.extend_from_slice(&256u16.to_le_bytes());
            body.extend_from_slice(&[b'n'; 256]);
            c.send(&frame(OP_CREATE_LOG, 0, 2, &body));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::TooLarge, 255, NONE);
            format!("{a}; {}", c.expect_open(3))
        }),
    );
    add(
        "CREATE_LOG with name_len past the body",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&frame(OP_CREATE_LOG, 0, 2, &[1, 0, 10, 0, b'a', b'b']));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "CREATE_LOG with replication_factor 0 (the node's default, 1)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let name = name_on("rf0", 0, 2);
            let mut body = vec![0, 0];
            body.extend_from_slice(&(name.len() as u16).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            c.send(&frame(OP_CREATE_LOG, 0, 2, &body));
            let a = match c.next() {
                Some(Answer::Ok {
                    opcode: OP_CREATE_LOG,
                    request_id: 2,
                    what,
                }) => what,
                other => panic!("CREATE_LOG with replication factor 0: {other:?}"),
            };
            format!("{a}; {}", c.expect_open(3))
        }),
    );
    add(
        "DESCRIBE_LOG by id with a name",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = vec![0, 0, 3, 0];
            body.extend_from_slice(&e.scratch.to_le_bytes());
            body.extend_from_slice(b"abc");
            c.send(&frame(OP_DESCRIBE_LOG, 0, 2, &body));
            let a = c.expect_error(OP_DESCRIBE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "DESCRIBE_LOG by name with a log_id",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = vec![1, 0, 3, 0];
            body.extend_from_slice(&e.scratch.to_le_bytes());
            body.extend_from_slice(b"abc");
            c.send(&frame(OP_DESCRIBE_LOG, 0, 2, &body));
            let a = c.expect_error(OP_DESCRIBE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "DESCRIBE_LOG with by = 2",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut body = vec![2, 0, 0, 0];
            body.extend_from_slice(&e.scratch.to_le_bytes());
            c.send(&frame(OP_DESCRIBE_LOG, 0, 2, &body));
            let a = c.expect_error(OP_DESCRIBE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "CREDIT and UNSUBSCRIBE of a subscription that does not exist",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&request(
                2,
                &Request::Credit(CreditRequest {
                    subscription_id: 12345,
                    records: 10,
                }),
            ));
            c.send(&request(
                3,
                &Request::Unsubscribe(UnsubscribeRequest {
                    subscription_id: 12345,
                }),
            ));
            let mut got = Vec::new();
            for _ in 0..2 {
                match c.next() {
                    Some(Answer::Ok {
                        opcode, request_id, ..
                    }) => got.push((opcode, request_id)),
                    other => panic!("expected empty successes, got {other:?}"),
                }
            }
            got.sort();
            assert_eq!(got, [(OP_CREDIT, 2), (OP_UNSUBSCRIBE, 3)]);
            format!("both empty successes; {}", c.expect_open(4))
        }),
    );

    // --- Misbehaving peers.
    add(
        "a client that closes mid-frame (before and after HELLO)",
        Box::new(|e| {
            let f = append_frame(2, e.scratch, &[b"never finished"]);
            let mut c = Raw::connect(e.shard0);
            c.send(&request(1, &Request::Hello(HelloRequest::CURRENT))[..10]);
            drop(c);
            let mut c = Raw::greeted(e.shard0);
            c.send(&f[..f.len() / 2]);
            drop(c);
            "nothing to answer; the node keeps serving".into()
        }),
    );
    add(
        "a client that closes right after sending 100 pipelined appends",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut out = Vec::new();
            for i in 0..100u64 {
                out.extend(append_frame(2 + i, e.scratch, &[b"abandoned append"]));
            }
            c.send(&out);
            drop(c);
            "outcome unknown to the client; the node keeps serving".into()
        }),
    );
    add(
        "a client that subscribes and then disconnects",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&request(
                2,
                &Request::Subscribe(SubscribeRequest {
                    log_id: e.scratch,
                    from_lsn: 0,
                    credit_records: 1_000_000,
                }),
            ));
            match c.next() {
                Some(Answer::Ok {
                    opcode: OP_SUBSCRIBE,
                    request_id: 2,
                    ..
                }) => {}
                other => panic!("SUBSCRIBE: {other:?}"),
            }
            drop(c);
            "subscribed, then closed; the node keeps serving".into()
        }),
    );
    add(
        "a client that connects and disconnects 200 times",
        Box::new(|e| {
            for i in 0..200 {
                let mut c = Raw::connect(e.shard0);
                if i % 2 == 1 {
                    c.send(&request(1, &Request::Hello(HelloRequest::CURRENT)));
                }
                drop(c);
            }
            let mut c = Raw::greeted(e.shard0);
            format!("then a new connection is {}", c.expect_open(2))
        }),
    );
    add(
        "a client that pipelines 10,000 appends and never reads its responses",
        Box::new(|e| {
            let c = Raw::greeted(e.shard0);
            let mut writer = c.stream.try_clone().expect("clone");
            let flood = e.flood;
            let sent = std::thread::spawn(move || {
                let mut sent = 0u64;
                for i in 0..10_000u64 {
                    let f = append_frame(2 + i, flood, &[&flood_payload(i)]);
                    if writer.write_all(&f).is_err() {
                        break;
                    }
                    sent += 1;
                }
                sent
            });
            // The good client keeps being served while this one does not read (checked by
            // the caller after every kind, and here once more before closing).
            let mut probe = Client::connect(e.shard0);
            assert!(probe.read(e.scratch, 0).is_ok());
            // Close the flooder: the writer thread sees an error if it is still blocked.
            c.stream.shutdown(Shutdown::Both).expect("shutdown");
            let sent = sent.join().expect("writer thread");
            format!("the good client was served; {sent} appends fully written before close")
        }),
    );
    add(
        "APPEND of one record of exactly record_bytes_max",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let big = vec![b'm'; e.record_bytes_max as usize];
            c.send(&append_frame(2, e.scratch, &[&big]));
            let a = c.expect_appended(2);
            format!("{a}; {}", c.expect_open(3))
        }),
    );
    add(
        "APPENDs pipelined around one with too many records: answers in order",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let answers = pipelined_around_too_many(&mut c, e.scratch, e.batch_records_max);
            format!("{answers}; {}", c.expect_open(5))
        }),
    );
    add(
        "APPENDs pipelined before one with a bad record CRC: no answer overtakes",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut bad = record(b"bad crc");
            bad[4] ^= 1;
            let mut out = append_frame(2, e.scratch, &[b"before a bad one"]);
            out.extend(frame(OP_APPEND, 0, 3, &append_body(e.scratch, 0, 1, &bad)));
            c.send(&out);
            // The first APPEND may go unanswered (the connection closes), but its answer must
            // not come after the MALFORMED of the later one.
            let first = c.next().expect("an answer");
            let answer = match first {
                Answer::Ok {
                    opcode: OP_APPEND,
                    request_id: 2,
                    ..
                } => {
                    c.expect_error(OP_APPEND, 3, ErrorCode::Malformed, 0, 0);
                    "2 ok, then 3 MALFORMED arg0 0"
                }
                Answer::Error {
                    opcode: OP_APPEND,
                    request_id: 3,
                    code: ErrorCode::Malformed,
                    arg0: 0,
                    ..
                } => "3 MALFORMED arg0 0 (2 unanswered)",
                other => panic!("{other:?}"),
            };
            format!("{answer}; {}", c.expect_closed())
        }),
    );
    add(
        "an APPEND with a record over record_bytes_max as the first frame (before HELLO)",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            let big = vec![b'b'; e.record_bytes_max as usize + 1];
            c.send(&append_frame(2, e.scratch, &[&big]));
            c.send(&list_logs(3));
            let a = c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "a CREATE_LOG with a 256-byte name as the first frame (before HELLO)",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            let mut body = vec![1, 0];
            body.extend_from_slice(&256u16.to_le_bytes());
            body.extend_from_slice(&[b'n'; 256]);
            c.send(&frame(OP_CREATE_LOG, 0, 2, &body));
            c.send(&list_logs(3));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::Malformed, NONE, 0);
            format!("{a}; {}", c.expect_closed())
        }),
    );
    add(
        "CREATE_LOG with replication_factor 2 (above the single node's 1)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let name = name_on("rf2", 0, 2);
            c.send(&request(
                2,
                &Request::CreateLog(chainlog::net::CreateLogRequest {
                    replication_factor: 2,
                    name: &name,
                }),
            ));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::TooLarge, 1, NONE);
            format!("{a}; {}", c.expect_open(3))
        }),
    );
    add(
        "CREATE_LOG and DESCRIBE_LOG by name on the wrong shard",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let name = name_on("elsewhere", 1, 2);
            c.send(&request(
                2,
                &Request::CreateLog(chainlog::net::CreateLogRequest {
                    replication_factor: 1,
                    name: &name,
                }),
            ));
            let a = c.expect_error(OP_CREATE_LOG, 2, ErrorCode::WrongShard, 1, 0);
            c.send(&request(
                3,
                &Request::DescribeLog(chainlog::net::DescribeLogRequest {
                    by: chainlog::net::LogRef::Name(&name),
                }),
            ));
            c.expect_error(OP_DESCRIBE_LOG, 3, ErrorCode::WrongShard, 1, 0);
            format!("{a}; {} (both)", c.expect_open(4))
        }),
    );
    add(
        "65 subscriptions on one connection",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            for i in 0..65u64 {
                c.send(&request(
                    100 + i,
                    &Request::Subscribe(SubscribeRequest {
                        log_id: e.scratch,
                        from_lsn: u64::MAX,
                        credit_records: 0,
                    }),
                ));
            }
            let mut acks = 0;
            let mut refused = None;
            for _ in 0..65 {
                match c.next() {
                    Some(Answer::Ok {
                        opcode: OP_SUBSCRIBE,
                        ..
                    }) => acks += 1,
                    Some(Answer::Error {
                        opcode: OP_SUBSCRIBE,
                        request_id: 164,
                        code: ErrorCode::Overloaded,
                        arg0,
                        arg1: 0,
                        ..
                    }) => refused = Some(arg0),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(acks, 64);
            let arg0 = refused.expect("the 65th is refused");
            format!(
                "64 acknowledged, the 65th OVERLOADED arg0 {arg0} (ms); {}",
                { c.expect_open(3) }
            )
        }),
    );
    add(
        "HELLO sent one byte per write, then an APPEND in three uneven pieces",
        Box::new(|e| {
            let mut c = Raw::connect(e.shard0);
            for byte in request(1, &Request::Hello(HelloRequest::CURRENT)) {
                c.send(&[byte]);
            }
            let hello = c.next().expect("HELLO answered");
            assert!(
                matches!(
                    hello,
                    Answer::Ok {
                        opcode: OP_HELLO,
                        request_id: 1,
                        ..
                    }
                ),
                "{hello:?}"
            );
            let f = append_frame(2, e.scratch, &[b"in pieces", b"of a frame"]);
            c.send(&f[..3]);
            c.send(&f[3..29]);
            c.send(&f[29..]);
            let a = c.expect_appended(2);
            format!("HELLO ok, then {a}; {}", c.expect_open(3))
        }),
    );
    add(
        "request ids 0 and u64::MAX are echoed",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            for rid in [0, u64::MAX] {
                c.send(&list_logs(rid));
                match c.next() {
                    Some(Answer::Ok {
                        opcode: OP_LIST_LOGS,
                        request_id,
                        ..
                    }) if request_id == rid => {}
                    other => panic!("LIST_LOGS {rid}: {other:?}"),
                }
            }
            format!("both answered with their id; {}", c.expect_open(3))
        }),
    );
    add(
        "APPEND, TRIM, APPEND, CHECK_TAIL pipelined in one write",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut out = append_frame(2, e.scratch, &[b"p1"]);
            out.extend(request(
                3,
                &Request::Trim(TrimRequest {
                    log_id: e.scratch,
                    before_lsn: 1,
                }),
            ));
            out.extend(append_frame(4, e.scratch, &[b"p2"]));
            out.extend(request(5, &Request::CheckTail { log_id: e.scratch }));
            c.send(&out);
            let mut ordered = Vec::new();
            let mut tail_seen = false;
            for _ in 0..4 {
                match c.next() {
                    Some(Answer::Ok {
                        opcode: OP_CHECK_TAIL,
                        request_id: 5,
                        ..
                    }) => tail_seen = true,
                    Some(Answer::Ok {
                        opcode, request_id, ..
                    }) => ordered.push((opcode, request_id)),
                    other => panic!("{other:?}"),
                }
            }
            assert!(tail_seen);
            assert_eq!(
                ordered,
                [(OP_APPEND, 2), (OP_TRIM, 3), (OP_APPEND, 4)],
                "appends and trims answered in order, each with its own opcode"
            );
            format!("APPEND 2, TRIM 3, APPEND 4 in order, CHECK_TAIL 5; {}", {
                c.expect_open(6)
            })
        }),
    );
    add(
        "READ with max_bytes 0, max_records 0, from u64::MAX, below the trim point",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let read = |from_lsn, max_records, max_bytes| {
                Request::Read(ReadRequest {
                    log_id: e.scratch,
                    from_lsn,
                    max_records,
                    max_bytes,
                })
            };
            c.send(&request(2, &read(1, 1, 0)));
            let one = c.next();
            c.send(&request(3, &read(1, 0, 1 << 20)));
            let none = c.next();
            c.send(&request(4, &read(u64::MAX, 10, 1 << 20)));
            let past = c.next();
            let count = |a: &Option<Answer>| match a {
                Some(Answer::Ok {
                    opcode: OP_READ,
                    what,
                    ..
                }) => what
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("a count"),
                other => panic!("READ: {other:?}"),
            };
            assert_eq!(
                (count(&one), count(&none), count(&past)),
                (1, 0, 0),
                "max_bytes 0 still returns one record; max_records 0 and from past the tail none"
            );
            c.send(&request(5, &read(0, 10, 1 << 20)));
            let trimmed = c.expect_error(OP_READ, 5, ErrorCode::Trimmed, 1, 0);
            format!("1, 0 and 0 records; below the trim point {trimmed}; {}", {
                c.expect_open(6)
            })
        }),
    );
    add(
        "LIST_LOGS with max u32::MAX and after_log_id u64::MAX",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            for (rid, after) in [(2, 0), (3, u64::MAX)] {
                c.send(&request(
                    rid,
                    &Request::ListLogs(ListLogsRequest {
                        after_log_id: after,
                        max: u32::MAX,
                    }),
                ));
            }
            let first = c.next();
            let second = c.next();
            assert!(
                matches!(&second, Some(Answer::Ok { what, .. }) if what == "LIST_LOGS ok 0 entries"),
                "{second:?}"
            );
            let Some(Answer::Ok { what, .. }) = first else {
                panic!("{first:?}")
            };
            format!("{what}, then none after u64::MAX; {}", c.expect_open(4))
        }),
    );
    add(
        "SUBSCRIBE with credit u32::MAX, CREDIT u32::MAX twice, UNSUBSCRIBE twice",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&request(
                2,
                &Request::Subscribe(SubscribeRequest {
                    log_id: e.scratch,
                    from_lsn: u64::MAX,
                    credit_records: u32::MAX,
                }),
            ));
            for rid in [3, 4] {
                c.send(&request(
                    rid,
                    &Request::Credit(CreditRequest {
                        subscription_id: 2,
                        records: u32::MAX,
                    }),
                ));
            }
            for rid in [5, 6] {
                c.send(&request(
                    rid,
                    &Request::Unsubscribe(UnsubscribeRequest { subscription_id: 2 }),
                ));
            }
            // Pushes of records appended meanwhile by others may come before the END.
            let mut seen = Vec::new();
            while seen.last() != Some(&(OP_UNSUBSCRIBE, 6, false)) {
                match c.next() {
                    Some(Answer::Ok {
                        opcode,
                        request_id,
                        what,
                    }) => {
                        if !(opcode == OP_SUBSCRIBE
                            && request_id == 2
                            && what.starts_with("PUSH count"))
                        {
                            seen.push((opcode, request_id, what.starts_with("PUSH END")));
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(
                seen,
                [
                    (OP_SUBSCRIBE, 2, false),
                    (OP_CREDIT, 3, false),
                    (OP_CREDIT, 4, false),
                    (OP_SUBSCRIBE, 2, true),
                    (OP_UNSUBSCRIBE, 5, false),
                    (OP_UNSUBSCRIBE, 6, false),
                ],
                "ack, credits, END push before the first UNSUBSCRIBE's answer, second a no-op"
            );
            format!(
                "ack, 2 credits, END push, 2 unsubscribes; {}",
                c.expect_open(7)
            )
        }),
    );
    add(
        "APPEND to a log deleted on the same connection",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let name = name_on("doomed", 0, 2);
            c.send(&request(
                2,
                &Request::CreateLog(chainlog::net::CreateLogRequest {
                    replication_factor: 1,
                    name: &name,
                }),
            ));
            let log_id = log_id_of(&name);
            let mut out = append_frame(3, log_id, &[b"doomed"]);
            out.extend(request(4, &Request::DeleteLog { log_id }));
            out.extend(append_frame(5, log_id, &[b"too late"]));
            c.send(&out);
            let mut got = Vec::new();
            for _ in 0..4 {
                got.push(c.next().expect("an answer"));
            }
            let late = got.iter().find_map(|a| match a {
                Answer::Error {
                    opcode: OP_APPEND,
                    request_id: 5,
                    code,
                    arg0,
                    ..
                } => Some((*code, *arg0)),
                _ => None,
            });
            assert_eq!(late, Some((ErrorCode::UnknownLog, NONE)), "{got:?}");
            format!("the APPEND after DELETE_LOG: UNKNOWN_LOG arg0 MAX; {}", {
                c.expect_open(6)
            })
        }),
    );
    add(
        "a subscriber to the good client's log that never reads its pushes (parked)",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            c.send(&request(
                2,
                &Request::Subscribe(SubscribeRequest {
                    log_id: e.good_log,
                    from_lsn: 0,
                    credit_records: u32::MAX,
                }),
            ));
            match c.next() {
                Some(Answer::Ok {
                    opcode: OP_SUBSCRIBE,
                    request_id: 2,
                    ..
                }) => {}
                other => panic!("SUBSCRIBE: {other:?}"),
            }
            e.park(c);
            "acknowledged; never read again while the good client appends".into()
        }),
    );
    add(
        "500 idle connections after HELLO (parked)",
        Box::new(|e| {
            for _ in 0..500 {
                e.park(Raw::greeted(e.shard0));
            }
            let mut c = Raw::greeted(e.shard0);
            format!("all greeted; one more is {}", c.expect_open(2))
        }),
    );
    add(
        "a client that sends requests and then shuts down its writing side",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let mut out = append_frame(2, e.scratch, &[b"half-closed 1"]);
            out.extend(append_frame(3, e.scratch, &[b"half-closed 2"]));
            out.extend(list_logs(4));
            c.send(&out);
            c.stream.shutdown(Shutdown::Write).expect("shutdown");
            // Answers are optional after the client closed (outcome unknown), but those that
            // come are well-formed and APPENDs in order; then the node closes.
            let mut ids = Vec::new();
            while let Some(a) = c.next() {
                match a {
                    Answer::Ok {
                        opcode: OP_APPEND,
                        request_id,
                        ..
                    } => ids.push(request_id),
                    Answer::Ok {
                        opcode: OP_LIST_LOGS,
                        request_id: 4,
                        ..
                    } => {}
                    other => panic!("{other:?}"),
                }
            }
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            format!("{} of 2 APPENDs answered, in order; then closed", ids.len())
        }),
    );
    add(
        "READ with max_records and max_bytes u32::MAX over 8 MiB of records",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            let name = name_on("bigread", 0, 2);
            c.send(&request(
                2,
                &Request::CreateLog(chainlog::net::CreateLogRequest {
                    replication_factor: 1,
                    name: &name,
                }),
            ));
            assert!(matches!(
                c.next(),
                Some(Answer::Ok {
                    opcode: OP_CREATE_LOG,
                    ..
                })
            ));
            let log_id = log_id_of(&name);
            let mib = vec![b'r'; e.record_bytes_max as usize];
            for i in 0..8 {
                c.send(&append_frame(10 + i, log_id, &[&mib]));
                c.expect_appended(10 + i);
            }
            // Each answer is one frame within frame_bytes_max (Raw::next checks it with the
            // default limits) holding at least one record; together they hold all 8.
            let mut from = 0;
            let mut reads = Vec::new();
            while from < 8 {
                c.send(&request(
                    20 + from,
                    &Request::Read(ReadRequest {
                        log_id,
                        from_lsn: from,
                        max_records: u32::MAX,
                        max_bytes: u32::MAX,
                    }),
                ));
                let count = match c.next() {
                    Some(Answer::Ok {
                        opcode: OP_READ,
                        what,
                        ..
                    }) => what
                        .rsplit(' ')
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .expect("a count"),
                    other => panic!("READ: {other:?}"),
                };
                assert!(count >= 1, "a READ of committed records progresses");
                reads.push(count.to_string());
                from += count;
            }
            assert_eq!(from, 8);
            format!(
                "READs of {} records; {}",
                reads.join(", "),
                c.expect_open(40)
            )
        }),
    );
    add(
        "CREATE_LOG with a 255-byte multi-byte UTF-8 name (the maximum), then DESCRIBE_LOG",
        Box::new(|e| {
            let mut c = Raw::greeted(e.shard0);
            // 'é' is 2 bytes: 126 of them and a 3-byte suffix make 255 bytes.
            let name = (0..)
                .map(|i| format!("{}{:03}", "é".repeat(126), i))
                .find(|n| log_id_of(n).is_multiple_of(2))
                .expect("a name on shard 0");
            assert_eq!(name.len(), 255);
            c.send(&request(
                2,
                &Request::CreateLog(chainlog::net::CreateLogRequest {
                    replication_factor: 1,
                    name: &name,
                }),
            ));
            let created = c.next();
            assert!(
                matches!(
                    created,
                    Some(Answer::Ok {
                        opcode: OP_CREATE_LOG,
                        ..
                    })
                ),
                "{created:?}"
            );
            c.send(&request(
                3,
                &Request::DescribeLog(chainlog::net::DescribeLogRequest {
                    by: chainlog::net::LogRef::Name(&name),
                }),
            ));
            let described = c.next();
            assert!(
                matches!(
                    described,
                    Some(Answer::Ok {
                        opcode: OP_DESCRIBE_LOG,
                        ..
                    })
                ),
                "{described:?}"
            );
            format!("created and described; {}", c.expect_open(4))
        }),
    );
    k
}

/// Sends, in one write, a valid APPEND (request 2), one declaring `batch_records_max + 1`
/// records (3: TOO_LARGE, the first check; its records are left out so that the three frames
/// are small and arrive together, while 2 waits for the disk) and a valid one (4); checks
/// that the answers come in the order sent (PROTOCOL.md 3.3: APPEND successes and errors).
fn pipelined_around_too_many(c: &mut Raw, log_id: u64, batch_records_max: u32) -> String {
    let mut out = append_frame(2, log_id, &[b"before"]);
    out.extend(frame(
        OP_APPEND,
        0,
        3,
        &append_body(log_id, 0, batch_records_max + 1, &[]),
    ));
    out.extend(append_frame(4, log_id, &[b"after"]));
    c.send(&out);
    let got: Vec<Answer> = (0..3).map(|_| c.next().expect("an answer")).collect();
    let order: Vec<u64> = got
        .iter()
        .map(|a| match a {
            Answer::Error { request_id, .. } | Answer::Ok { request_id, .. } => *request_id,
        })
        .collect();
    assert_eq!(
        order,
        [2, 3, 4],
        "APPEND answers (successes and errors) come in the order sent: {got:?}"
    );
    assert!(
        matches!(
            got[1],
            Answer::Error {
                code: ErrorCode::TooLarge,
                arg1: NONE,
                ..
            }
        ),
        "{got:?}"
    );
    "2 ok, 3 TOO_LARGE, 4 ok, in order".into()
}

fn flood_payload(i: u64) -> Vec<u8> {
    format!("flood {i:05}").into_bytes()
}

#[test]
fn hostile_traffic_does_not_disturb_a_good_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    let mut admin = node.connect(0);
    let limits = admin.hello;
    let scratch = admin.create(&name_on("scratch", 0, 2));
    let flood = admin.create(&name_on("flood", 0, 2));
    let mut admin1 = node.connect(1);
    let other_shard_log = admin1.create(&name_on("other", 1, 2));
    let env = Env {
        shard0: node.addr(0),
        shard1: node.addr(1),
        scratch,
        other_shard_log,
        flood,
        record_bytes_max: limits.record_bytes_max,
        frame_bytes_max: limits.frame_bytes_max,
        batch_records_max: limits.batch_records_max,
        good_log: log_id_of(&name_on("good", 0, 2)),
        parked: Mutex::new(Vec::new()),
    };

    // The well-behaved client, on its own connection, throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (progress_tx, progress) = mpsc::channel();
    let good = {
        let (stop, addr) = (stop.clone(), node.addr(0));
        std::thread::spawn(move || good_client(addr, &stop, &progress_tx))
    };
    wait_good_progress(&progress);

    // Half a frame, then silence, until the end.
    let mut silent = Raw::greeted(env.shard0);
    let half = append_frame(2, scratch, &[b"half a frame"]);
    silent.send(&half[..half.len() / 2]);

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (name, kind) in kinds() {
        match catch_unwind(AssertUnwindSafe(|| kind(&env))) {
            Ok(answer) => report.push(format!("ok   {name}: {answer}")),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.push(format!("FAIL {name}: {why}"));
                failures.push(name);
            }
        }
        wait_good_progress(&progress);
    }
    // The parked connections are still open; close them.
    let parked = std::mem::take(&mut *env.parked.lock().unwrap_or_else(|p| p.into_inner()));
    let parked_count = parked.len();
    for raw in parked {
        let _ = raw.stream.shutdown(Shutdown::Both);
    }
    wait_good_progress(&progress);
    report.push(format!(
        "ok   {parked_count} parked hostile connections (idle, non-reading subscriber) closed at \
         the end; the good client kept going"
    ));
    // The silent client is still connected and unanswered; the node served everyone else.
    silent.stream.shutdown(Shutdown::Both).expect("shutdown");
    drop(silent);
    wait_good_progress(&progress);
    report.push(
        "ok   a client that sends half a frame and goes silent: unanswered while every kind \
         above ran, closed by the client at the end"
            .to_string(),
    );

    stop.store(true, Ordering::Relaxed);
    let appended = good.join();
    eprintln!("hostile kinds ({}):", report.len());
    for line in &report {
        eprintln!("  {line}");
    }
    let appended = appended.expect("the good client saw no error");
    eprintln!("the good client appended {appended} records, dense from 0, all read back");

    // The logs hostile clients appended to are dense and hold only what was sent.
    let (tail, records) = admin.read_all(flood, 0).expect("read the flood log");
    assert_eq!(records.len() as u64, tail);
    for (i, (lsn, bytes)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64);
        assert_eq!(bytes, &flood_payload(i as u64), "flood records in order");
    }
    eprintln!("the flooded log holds {tail} records, in order");
    // (A kind trimmed it before LSN 1.)
    let (tail, records) = admin.read_all(scratch, 1).expect("read the scratch log");
    assert_eq!(records.len() as u64, tail - 1);
    assert!(records.iter().enumerate().all(|(i, r)| r.0 == 1 + i as u64));
    assert!(
        failures.is_empty(),
        "{} hostile kinds got a wrong answer: {failures:?}",
        failures.len()
    );
    drop((admin, admin1));
    assert!(node.terminate().success(), "a clean stop after all that");
}

// ---------------------------------------------------------------------------------------------
// Minimal reproductions of the node bugs the kinds above found (each failed before the fix).

/// A node with one shard and one log on it; a greeted raw connection.
fn one_log(dir: &std::path::Path, name: &str) -> (Node, u64, Raw) {
    let node = Node::start(dir, 1);
    let mut admin = node.connect(0);
    let log_id = admin.create(name);
    let raw = Raw::greeted(node.addr(0));
    (node, log_id, raw)
}

/// PROTOCOL.md 3.3: APPEND answers, successes and errors, come in the order the APPENDs were
/// sent. A TOO_LARGE found by the decoder was answered at once, ahead of an earlier APPEND
/// still waiting for the disk.
#[test]
fn too_large_append_is_answered_after_earlier_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, log_id, mut c) = one_log(dir.path(), "ordered");
    pipelined_around_too_many(&mut c, log_id, 4096);
    drop(c);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 3.3 again, for a MALFORMED APPEND (bad record CRC): its MALFORMED may be the
/// last answer on the connection, but must not come before the answer of an earlier APPEND.
#[test]
fn malformed_append_is_answered_after_earlier_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, log_id, mut c) = one_log(dir.path(), "ordered");
    let mut bad = record(b"bad crc");
    bad[4] ^= 1;
    let mut out = append_frame(2, log_id, &[b"good"]);
    out.extend(frame(OP_APPEND, 0, 3, &append_body(log_id, 0, 1, &bad)));
    c.send(&out);
    let mut order = Vec::new();
    while let Some(answer) = c.next() {
        order.push(answer);
    }
    let ids: Vec<u64> = order
        .iter()
        .map(|a| match a {
            Answer::Error { request_id, .. } | Answer::Ok { request_id, .. } => *request_id,
        })
        .collect();
    assert!(
        ids == [2, 3] || ids == [3],
        "APPEND 2's answer, if any, comes before APPEND 3's MALFORMED: {order:?}"
    );
    drop(c);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 3.1: a first frame that is not HELLO is MALFORMED and closes the connection.
/// An APPEND whose record is over record_bytes_max, sent first, was answered TOO_LARGE and the
/// connection stayed open (so did a CREATE_LOG with a 256-byte name).
#[test]
fn too_large_request_before_hello_is_malformed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, log_id, c) = one_log(dir.path(), "first");
    drop(c);
    let mut c = Raw::connect(node.addr(0));
    let big = vec![b'b'; 1_048_577];
    c.send(&append_frame(2, log_id, &[&big]));
    c.expect_error(OP_APPEND, 2, ErrorCode::Malformed, NONE, 0);
    c.expect_closed();
    drop(c);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 4 and 6.2: an APPEND within every limit the node advertises (frame_bytes_max
/// 4198400, record_bytes_max 1 MiB, batch_records_max 4096) was refused TOO_LARGE with an
/// unadvertised limit (arg0 2097088, the store's batch size) once its records passed 2 MiB,
/// and with arg1 0 instead of u64::MAX (no record is at fault).
#[test]
fn append_within_the_advertised_limits_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, log_id, mut c) = one_log(dir.path(), "big");
    let mib = vec![b'm'; 1 << 20];
    c.send(&append_frame(2, log_id, &[&mib, &mib]));
    let answer = c.expect_appended(2);
    assert_eq!(answer, "APPEND ok first_lsn 0 count 2");
    drop(c);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 8: TOO_LARGE's arg1 is the offending record's index or u64::MAX. CREATE_LOG
/// with a replication factor above the node's (1) got arg1 0.
#[test]
fn replication_factor_too_large_has_no_record_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _, mut c) = one_log(dir.path(), "rf");
    c.send(&request(
        2,
        &Request::CreateLog(chainlog::net::CreateLogRequest {
            replication_factor: 2,
            name: "rf2",
        }),
    ));
    c.expect_error(OP_CREATE_LOG, 2, ErrorCode::TooLarge, 1, NONE);
    c.expect_open(3);
    drop(c);
    assert!(node.terminate().success());
}

/// The node's resident memory, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb << 10
}

/// Issue 15: an idle connection costs kilobytes, and closing it gives them back. Each
/// accepted connection got a receive buffer of two frames (8 MiB) at once; once one had been
/// freed the allocator served the next ones from its heap, zeroed page by page, and kept
/// them after their connections closed: 300 connections that only said HELLO took the
/// node's RSS up by 350 MB, the second time round. Now 2,000 of them and 2,000 that sent half
/// a HELLO, twice (with a 2 MiB append between, whose buffer grows to its frame and shrinks
/// back), stay within 64 MB of the start, and the good connection appends throughout.
#[test]
fn idle_connections_cost_kilobytes_and_give_their_memory_back() {
    const IDLE: usize = 2_000;
    const BOUND: u64 = 64 << 20;
    // Room for the idle sockets, here and in the node (which inherits the limit).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit for this process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let wanted = (4 * IDLE as libc::rlim_t + 256).min(limit.rlim_max);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, log_id, mut c) = one_log(dir.path(), "idle");
    let start = rss_bytes(node.pid());
    let mib = vec![b'm'; 1 << 20];
    for round in 0..2u64 {
        let idle: Vec<Raw> = (0..IDLE).map(|_| Raw::greeted(node.addr(0))).collect();
        let hello = request(1, &Request::Hello(HelloRequest::CURRENT));
        let half_sent: Vec<Raw> = (0..IDLE)
            .map(|_| {
                let mut r = Raw::connect(node.addr(0));
                r.send(&hello[..hello.len() / 2]);
                r
            })
            .collect();
        c.send(&append_frame(10 + round, log_id, &[&mib, &mib]));
        c.expect_appended(10 + round);
        let grown = rss_bytes(node.pid()).saturating_sub(start);
        assert!(
            grown < BOUND,
            "round {round}: {IDLE} idle connections and {IDLE} half HELLOs took {} MB",
            grown >> 20
        );
        drop((idle, half_sent));
    }
    // Closed: the node lets them go as it sees them close (a guard, not a measurement).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rss_bytes(node.pid()).saturating_sub(start) > 16 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the memory of closed connections did not come back: {} MB above the start",
            (rss_bytes(node.pid()) - start) >> 20
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(c);
    assert!(node.terminate().success());
}

/// Issue 15: a shard holds at most `connections_max` connections (one more is answered
/// OVERLOADED, retry after 100 ms, and closed), closes a connection that says no HELLO in
/// time and a client connection that idles with nothing pending, and keeps serving a client
/// that appends; the slots they held take new connections. Before, connections were
/// neither capped nor timed out: idle sockets held their slots and buffers for ever.
#[test]
fn connections_are_capped_and_silent_ones_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--connections-max",
        "3",
        "--hello-timeout-ms",
        "500",
        "--idle-timeout-ms",
        "1000",
    ];
    let node = Node::start_with(dir.path(), 1, None, &args);
    let mut good = node.connect(0);
    let log_id = good.create("capped");
    let mut silent = Raw::connect(node.addr(0));
    let mut idle = Raw::greeted(node.addr(0));
    let mut fourth = Raw::connect(node.addr(0));
    fourth.expect_error(0, 0, ErrorCode::Overloaded, 100, 0);
    fourth.expect_closed();
    // The good client appends back to back while the others are closed: it is never idle,
    // however busy the machine.
    let closer = std::thread::spawn(move || {
        silent.expect_closed();
        idle.expect_closed();
    });
    let mut appended = 0;
    while !closer.is_finished() {
        let header = AppendHeader::new(log_id);
        assert_eq!(good.append(&header, &[b"again"]), Ok(appended));
        appended += 1;
    }
    closer
        .join()
        .expect("the silent and the idle connection were closed");
    // Their slots take new connections.
    let mut another = Raw::greeted(node.addr(0));
    another.send(&append_frame(2, log_id, &[b"another"]));
    another.expect_appended(2);
    drop((good, another));
    assert!(appended > 0);
    assert!(node.terminate().success());
}
