//! A shard's catalog at scale: 100,000 logs created on one shard (pipelined CREATE_LOGs on one
//! connection) while another connection appends to a log of the same shard. The appender
//! sees no error; every created log is listed, after a clean restart and after kill -9 in the
//! middle of the creates (every create that was answered is there: a create is answered only
//! once its catalog record is durable), and the appender's records read back.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use chainlog::net::{
    encode_request, log_id_of, AppendHeader, CreateLogRequest, ListLogsRequest, Request, Response,
};
use common::{Client, Node};

const LOGS: u64 = 100_000;
/// CREATE_LOGs the creator keeps in flight.
const IN_FLIGHT: u64 = 256;

/// The payload of the appender's record `n`.
fn payload(n: u64) -> Vec<u8> {
    format!("appended-{n}").into_bytes()
}

/// Appends to log `appended` one record at a time until `stop`; returns how many (every one
/// acknowledged: an error fails the test).
fn append_until(client: &mut Client, log_id: u64, stop: &AtomicBool) -> u64 {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let lsn = client
            .append(&AppendHeader::new(log_id), &[&payload(n)])
            .unwrap_or_else(|e| panic!("append {n} during the creates: {e:?}"));
        assert_eq!(lsn, n);
        n += 1;
    }
    n
}

/// Creates `log-{i}` for `i` in `range` with [`IN_FLIGHT`] CREATE_LOGs outstanding, until
/// `answers` were answered (the rest of the range, up to [`IN_FLIGHT`] of it in flight, may
/// be sent but not yet answered); returns the indexes answered.
fn create_logs(client: &mut Client, range: Range<u64>, answers: u64) -> BTreeSet<u64> {
    let (mut next, mut answered) = (range.start, BTreeSet::new());
    let mut in_flight = HashMap::new();
    while (answered.len() as u64) < answers {
        let mut out = Vec::new();
        while next < range.end && (in_flight.len() as u64) < IN_FLIGHT {
            let name = format!("log-{next}");
            let request = Request::CreateLog(CreateLogRequest {
                replication_factor: 1,
                name: &name,
            });
            let id = client.next_id;
            client.next_id += 1;
            in_flight.insert(id, next);
            encode_request(&mut out, id, &request);
            next += 1;
        }
        client.send(&out);
        client.receive(|rid, r| match r {
            Response::CreateLog(c) => {
                let i = in_flight.remove(&rid).expect("a request in flight");
                assert_eq!(c.log_id, log_id_of(&format!("log-{i}")));
                answered.insert(i);
            }
            other => panic!("CREATE_LOG answered with {other:?}"),
        });
    }
    answered
}

/// Every log the node's shard 0 lists, by name.
fn listed(node: &Node) -> BTreeSet<String> {
    let mut client = node.connect(0);
    let mut names = BTreeSet::new();
    let mut after = 0;
    loop {
        let page: Vec<(u64, String)> = client.call(
            &Request::ListLogs(ListLogsRequest {
                after_log_id: after,
                max: 10_000,
            }),
            |r| match r {
                Response::ListLogs(l) => l
                    .entries
                    .iter()
                    .map(|e| (e.log_id, e.name.to_string()))
                    .collect(),
                other => panic!("LIST_LOGS answered with {other:?}"),
            },
        );
        let Some(&(last, _)) = page.last() else {
            return names;
        };
        after = last;
        names.extend(page.into_iter().map(|(_, name)| name));
    }
}

/// The appender's records, all there and in order.
fn check_appended(node: &Node, appended: u64) {
    let mut client = node.connect(0);
    let (tail, records) = client
        .read_all(log_id_of("appended"), 0)
        .expect("the appender's log");
    assert!(tail >= appended, "tail {tail}, {appended} acknowledged");
    for (lsn, bytes) in records {
        assert_eq!(bytes, payload(lsn), "record {lsn}");
    }
}

#[test]
fn a_hundred_thousand_logs_beside_an_appender_survive_a_restart_and_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let stop = Arc::new(AtomicBool::new(false));
    let mut appender_client = node.connect(0);
    let appended_id = appender_client.create("appended");
    let appender = {
        let stop = stop.clone();
        thread::spawn(move || append_until(&mut appender_client, appended_id, &stop))
    };
    let answered = create_logs(&mut node.connect(0), 0..LOGS, LOGS);
    stop.store(true, Ordering::Relaxed);
    let appended = appender.join().expect("the appender");
    assert!(appended > 0, "the appender appended during the creates");
    assert_eq!(answered.len() as u64, LOGS);

    // A clean restart: every log, and the appender's records.
    node.terminate();
    let node = Node::start(dir.path(), 1);
    assert_eq!(
        listed(&node).len() as u64,
        LOGS + 1,
        "the logs and the appender's"
    );
    check_appended(&node, appended);

    // kill -9 while more are created (up to IN_FLIGHT of them in flight): every one that was
    // answered survives it.
    let answered = create_logs(&mut node.connect(0), LOGS..2 * LOGS, LOGS / 10);
    node.kill9();
    let node = Node::start(dir.path(), 1);
    let names = listed(&node);
    for i in &answered {
        assert!(
            names.contains(&format!("log-{i}")),
            "answered create log-{i}"
        );
    }
    let created = names.len() as u64 - (LOGS + 1);
    assert!(
        (LOGS / 10..=LOGS / 10 + IN_FLIGHT).contains(&created),
        "{created} logs of the second round"
    );
    check_appended(&node, appended);
    node.terminate();
}
