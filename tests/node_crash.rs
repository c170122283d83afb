//! kill -9 under load: a node with 2 shards and 4 logs, 4 client threads appending pipelined
//! batches (several in flight each) whose payloads follow from (log, LSN); after some
//! thousands of acknowledged records the node gets SIGKILL, is reaped and restarted on the
//! same data directory, and a history checker reads every log back:
//!
//! - every acknowledged record is there, byte-identical, at its LSN;
//! - LSNs are dense from 0, with no duplicates;
//! - records beyond the acknowledged ones (in flight at the crash) carry the payload of their
//!   LSN, and none lies beyond what was sent.
//!
//! Three rounds on the same directory: appending continues from the recovered tails.

mod common;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use chainlog::net::{
    decode_response, encode_request, parse_frame, AppendBuilder, AppendHeader, HelloRequest,
    Limits, Request, Response,
};
use common::{Client, Node, SOCKET_TIMEOUT};

const SHARDS: u16 = 2;
const LOGS: usize = 4;
const ROUNDS: usize = 3;
/// Appends each writer keeps in flight.
const IN_FLIGHT: usize = 8;
/// Records acknowledged (all writers together) in a round before the kill.
const ACKED_BEFORE_KILL: u64 = 4000;

/// The payload of `log`'s record at `lsn`: anyone can tell what belongs where. Mostly small,
/// every 16th one a few KiB, so that the kill can land inside a large write.
fn payload(log: u64, lsn: u64) -> Vec<u8> {
    let unit = format!("{log:016x}:{lsn};");
    let len = if lsn.is_multiple_of(16) {
        4096 + (lsn.wrapping_mul(131) % 12288) as usize
    } else {
        8 + (lsn.wrapping_mul(37) % 300) as usize
    };
    unit.bytes().cycle().take(len).collect()
}

/// What one writer did in a round.
#[derive(Debug)]
struct Outcome {
    log: u64,
    /// Records below this LSN are acknowledged.
    acked_end: u64,
    /// Records below this LSN were sent (acknowledged or in flight at the crash).
    sent_end: u64,
    acked_records: u64,
}

/// Appends to `log` from `start_lsn` with `IN_FLIGHT` pipelined batches of 1..=4 records, each
/// conditional on its expected first LSN, until the node dies (the connection fails after
/// `killed` was set; a failure before that is a test failure). Sends each acknowledged batch's
/// record count on `acks`.
fn write_until_killed(
    addr: SocketAddr,
    log: u64,
    start_lsn: u64,
    killed: &AtomicBool,
    acks: &mpsc::Sender<u64>,
) -> Outcome {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(SOCKET_TIMEOUT))
        .expect("read timeout");
    let mut input = Vec::new();
    let limits = Limits::DEFAULT;
    let mut out = Vec::new();
    encode_request(&mut out, 1, &Request::Hello(HelloRequest::CURRENT));
    stream.write_all(&out).expect("HELLO");
    let mut outcome = Outcome {
        log,
        acked_end: start_lsn,
        sent_end: start_lsn,
        acked_records: 0,
    };
    // (request id, first LSN, count) of the batches sent and not yet answered; the HELLO is
    // request 1, answered first.
    let mut in_flight: VecDeque<(u64, u64, u64)> = VecDeque::new();
    let mut hello_answered = false;
    let mut next_id = 2u64;
    let dead = |e: &dyn std::fmt::Display| {
        assert!(
            killed.load(Ordering::SeqCst),
            "log {log}: the connection failed before the kill: {e}"
        );
    };
    loop {
        while hello_answered && in_flight.len() < IN_FLIGHT {
            let count = 1 + next_id % 4;
            let first = outcome.sent_end;
            let header = AppendHeader {
                expected_lsn: first,
                ..AppendHeader::new(log)
            };
            out.clear();
            let mut b = AppendBuilder::new(&mut out, next_id, &header, &limits);
            for lsn in first..first + count {
                b.push(&payload(log, lsn)).expect("within limits");
            }
            b.finish();
            if let Err(e) = stream.write_all(&out) {
                dead(&e);
                return outcome;
            }
            in_flight.push_back((next_id, first, count));
            outcome.sent_end += count;
            next_id += 1;
        }
        // One answer.
        loop {
            if let Some(frame) = parse_frame(&input, &limits).expect("a valid frame") {
                let len = frame.frame_bytes();
                match decode_response(&frame, &limits).expect("a decodable response") {
                    Response::Hello(_) => {
                        assert!(!hello_answered && frame.request_id == 1);
                        hello_answered = true;
                    }
                    Response::Append(a) => {
                        let (id, first, count) = in_flight.pop_front().expect("an answer owed");
                        assert_eq!(
                            (frame.request_id, a.first_lsn, u64::from(a.count)),
                            (id, first, count),
                            "log {log}: APPEND answers in order, at the expected LSNs"
                        );
                        assert_eq!(first, outcome.acked_end, "acks are contiguous");
                        outcome.acked_end = first + count;
                        outcome.acked_records += count;
                        let _ = acks.send(count);
                    }
                    other => panic!("log {log}: unexpected answer {other:?}"),
                }
                input.drain(..len);
                break;
            }
            let mut chunk = [0u8; 64 << 10];
            match stream.read(&mut chunk) {
                Ok(0) => {
                    dead(&"EOF");
                    return outcome;
                }
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::TimedOut => {
                    dead(&e);
                    return outcome;
                }
                Err(e) => panic!("log {log}: the node stopped answering: {e}"),
            }
        }
    }
}

/// Reads `log` back through `c` and checks it against what was acknowledged and sent;
/// returns (tail, records beyond the acknowledged ones).
fn check_history(c: &mut Client, log: u64, acked_end: u64, sent_end: u64) -> (u64, u64) {
    let (tail, records) = c.read_all(log, 0).expect("read the log back");
    assert_eq!(
        records.len() as u64,
        tail,
        "log {log}: every LSN below the tail is there once"
    );
    for (i, (lsn, bytes)) in records.iter().enumerate() {
        assert_eq!(
            *lsn, i as u64,
            "log {log}: LSNs dense from 0, no duplicates"
        );
        assert!(
            *bytes == payload(log, *lsn),
            "log {log}: record {lsn} is not the one appended at that LSN"
        );
    }
    assert!(
        tail >= acked_end,
        "log {log}: acknowledged records lost: tail {tail} < acknowledged {acked_end}"
    );
    assert!(
        tail <= sent_end,
        "log {log}: records that were never sent: tail {tail} > sent {sent_end}"
    );
    (tail, tail - acked_end)
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::start(dir.path(), SHARDS);
    let mut admin: Vec<Client> = (0..SHARDS).map(|s| node.connect(s)).collect();
    let logs: Vec<(u64, u16)> = (0..LOGS)
        .map(|i| {
            let name = format!("crash-{i}");
            let shard = admin[0].hello.shard_of(chainlog::net::log_id_of(&name));
            (admin[usize::from(shard)].create(&name), shard)
        })
        .collect();
    drop(admin);
    // Per log: the recovered tail (where appending continues) and everything acknowledged.
    let mut tails = [0u64; LOGS];
    let mut acked = [0u64; LOGS];
    for round in 1..=ROUNDS {
        let killed = Arc::new(AtomicBool::new(false));
        let (ack_tx, ack_rx) = mpsc::channel();
        let writers: Vec<_> = logs
            .iter()
            .zip(&tails)
            .map(|(&(log, shard), &start)| {
                let (addr, killed, acks) = (node.addr(shard), killed.clone(), ack_tx.clone());
                std::thread::spawn(move || write_until_killed(addr, log, start, &killed, &acks))
            })
            .collect();
        drop(ack_tx);
        let mut acked_this_round = 0;
        while acked_this_round < ACKED_BEFORE_KILL {
            acked_this_round += ack_rx
                .recv_timeout(SOCKET_TIMEOUT)
                .expect("the writers keep being acknowledged");
        }
        killed.store(true, Ordering::SeqCst);
        let pid = node.pid();
        let status = node.kill9();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the node (pid {pid}) died of SIGKILL"
        );
        let outcomes: Vec<Outcome> = writers
            .into_iter()
            .map(|w| w.join().expect("a writer failed"))
            .collect();

        node = Node::start(dir.path(), SHARDS);
        let mut readers: Vec<Client> = (0..SHARDS).map(|s| node.connect(s)).collect();
        let mut line = Vec::new();
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(o.log, logs[i].0);
            acked[i] = acked[i].max(o.acked_end);
            let reader = &mut readers[usize::from(logs[i].1)];
            let (tail, beyond) = check_history(reader, o.log, acked[i], o.sent_end);
            line.push(format!(
                "log {i}: {} acked this round, tail {tail} ({beyond} beyond the acks, {} in \
                 flight lost)",
                o.acked_records,
                o.sent_end - tail
            ));
            tails[i] = tail;
        }
        eprintln!(
            "round {round}: SIGKILL after {acked_this_round}+ acknowledged records; restarted; \
             history checked: {}",
            line.join("; ")
        );
    }
    assert!(node.terminate().success());
}
