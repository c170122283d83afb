//! Chain replication with real processes on loopback: a `chainlog controller` and three
//! `chainlog node`s that are members of its cluster. Logs are created through the controller
//! with replication factor 3 (or 2), appended to at their head and read from every replica.
//!
//! - Several writers append; every replica holds the same records (a digest of the committed
//!   range), reads from head, middle and tail agree; conditional appends and idempotent
//!   retries work through the chain; other replicas send appends to the head (NOT_HEAD).
//! - Every process stops and starts again on the same directories and ports (fixed ports
//!   below the ephemeral range): everything committed is still there on every replica, and
//!   appends continue.
//! - Bad input on the replication port (no PEER, a node that is not the predecessor, a wrong
//!   epoch, a gap, a bad CRC, an unknown log) gets a typed error and writes nothing.
//!
//! Every process is stopped by PID when a test ends (the harness's `Drop`). Waits poll with
//! generous deadlines, as guards against hanging, never as timing assertions.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use chainlog::controller::client::Client as ControllerClient;
use chainlog::net::cluster::ClusterMap;
use chainlog::net::{
    log_id_of, AppendHeader, CreateLogRequest, ErrorCode, ListLogsRequest, Opcode, PeerRequest,
    RecordHeader, Records, ReplicateHeader, ReplicateKind, ReplicateRequest, Request, Response,
    Role, RECORD_HEADER_BYTES,
};
use common::raw::{request, Answer, Raw};
use common::{Client, Controller, Node};

/// How long anything may take before the test fails (a guard, not a measurement).
const DEADLINE: Duration = Duration::from_secs(120);
const SHARDS: u16 = 2;

/// Where a process of a [`Cluster`] listens.
#[derive(Clone, Copy, Debug)]
enum Ports {
    /// Ports it picks and prints.
    Any,
    /// A fixed port below the ephemeral range, where it can be started again.
    Fixed,
    /// This port (a restart).
    At(u16),
}

/// These tests are about a chain within one epoch (replication, restarts of its members,
/// backpressure): their controller counts a node alive for ten minutes after its last
/// heartbeat, so it never reconfigures a chain under them (tests/failover.rs does).
const IN_EPOCH: &[&str] = &["--liveness-ms", "600000"];

/// A controller and its member nodes (node `i` has id `i + 1`).
struct Cluster {
    controller: Controller,
    nodes: Vec<Node>,
    ports: Vec<u16>,
}

impl Cluster {
    /// Starts the controller and `nodes` nodes, on ports they pick.
    fn start(dir: &Path, nodes: usize) -> Cluster {
        Cluster::start_at(dir, nodes, Ports::Any)
    }

    /// As [`Cluster::start`], at fixed ports (below the ephemeral range, which outgoing
    /// connections never take), so that every process can be started again where it was.
    fn start_fixed(dir: &Path, nodes: usize) -> Cluster {
        Cluster::start_at(dir, nodes, Ports::Fixed)
    }

    fn start_at(dir: &Path, nodes: usize, ports: Ports) -> Cluster {
        let controller = match ports {
            Ports::Fixed => Controller::start_fixed(&dir.join("controller"), IN_EPOCH),
            Ports::Any | Ports::At(_) => Controller::start(&dir.join("controller"), IN_EPOCH),
        };
        let mut cluster = Cluster {
            controller,
            nodes: Vec::new(),
            ports: Vec::new(),
        };
        for i in 0..nodes {
            let node = cluster.start_node(dir, i, ports);
            cluster.ports.push(node.port);
            cluster.nodes.push(node);
        }
        cluster.wait_members(nodes);
        cluster
    }

    /// Starts node `i` on `ports`, or at `port` (a restart).
    fn start_node(&self, dir: &Path, i: usize, ports: Ports) -> Node {
        let controller = self.controller.addr.to_string();
        let id = (i + 1).to_string();
        let dir = dir.join(format!("node-{}", i + 1));
        let args = ["--controller", &controller, "--node-id", &id];
        match ports {
            Ports::Any => Node::start_with(&dir, SHARDS, None, &args),
            Ports::Fixed => Node::start_fixed(&dir, SHARDS, &args),
            Ports::At(port) => Node::start_with(&dir, SHARDS, Some(port), &args),
        }
    }

    fn controller(&self) -> ControllerClient {
        ControllerClient::connect(self.controller.addr, Duration::from_secs(30))
            .expect("controller")
    }

    /// Waits until the map shows `n` live nodes.
    fn wait_members(&self, n: usize) -> ClusterMap {
        let end = Instant::now() + DEADLINE;
        loop {
            let map = self.controller().map().expect("map");
            if map.nodes().iter().filter(|node| node.alive).count() == n {
                return map;
            }
            assert!(Instant::now() < end, "{n} nodes never registered: {map:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log's chain, head first, as node indexes.
    fn chain(&self, log_id: u64) -> Vec<usize> {
        let map = self.controller().map().expect("map");
        let log = map.log(log_id).expect("the log is in the map");
        log.chain.iter().map(|&id| id as usize - 1).collect()
    }

    /// A client of node `i`'s shard that holds `log_id`.
    fn client(&self, i: usize, log_id: u64) -> Client {
        self.nodes[i].connect((log_id % u64::from(SHARDS)) as u16)
    }
}

fn payload(writer: u64, n: u64) -> Vec<u8> {
    let len = 8 + ((writer * 31 + n * 17) % 300) as usize;
    let mut p = format!("w{writer}-{n}-").into_bytes();
    p.resize(len, b'a' + (n % 26) as u8);
    p
}

/// Every committed record of `log_id` as node `i` serves it, once it knows `tail` is
/// committed (a replica learns the committed LSN from the head shortly after the head does).
fn records_at(cluster: &Cluster, i: usize, log_id: u64, tail: u64) -> Vec<(u64, Vec<u8>)> {
    let mut client = cluster.client(i, log_id);
    let end = Instant::now() + DEADLINE;
    loop {
        let (known, records) = client.read_all(log_id, 0).expect("read");
        if known >= tail {
            return records;
        }
        assert!(
            Instant::now() < end,
            "node {} knows records up to {known} committed, not {tail}",
            i + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_tail(client: &mut Client, log_id: u64) -> u64 {
    client.call(&Request::CheckTail { log_id }, |r| match r {
        Response::CheckTail(t) => t.tail,
        other => panic!("CHECK_TAIL: {other:?}"),
    })
}

fn digest(records: &[(u64, Vec<u8>)]) -> u32 {
    let mut crc = 0;
    for (lsn, payload) in records {
        crc = crc32c::crc32c_append(crc, &lsn.to_le_bytes());
        crc = crc32c::crc32c_append(crc, payload);
    }
    crc
}

#[test]
fn three_replicas_agree_and_conditions_hold_through_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path(), 3);
    let log_id = cluster
        .controller()
        .create_log("chained", 3)
        .expect("create rf 3");
    let chain = cluster.chain(log_id);
    assert_eq!(chain.len(), 3, "three distinct replicas");
    let (head, middle, tail) = (chain[0], chain[1], chain[2]);

    // Four writers append at the head at once, each its own connection.
    const WRITERS: u64 = 4;
    const APPENDS: u64 = 150;
    let acked: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let mut client = cluster.client(head, log_id);
                s.spawn(move || {
                    (0..APPENDS)
                        .map(|n| {
                            let p = payload(w, n);
                            let lsn = client
                                .append(&AppendHeader::new(log_id), &[&p])
                                .expect("append at the head");
                            (lsn, p)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect()
    });
    let mut expected: Vec<(u64, Vec<u8>)> = acked.into_iter().flatten().collect();
    expected.sort();
    let committed = WRITERS * APPENDS;
    assert_eq!(
        expected.iter().map(|(lsn, _)| *lsn).collect::<Vec<_>>(),
        (0..committed).collect::<Vec<_>>(),
        "acknowledged LSNs are dense"
    );
    let mut at_head = cluster.client(head, log_id);
    assert_eq!(check_tail(&mut at_head, log_id), committed);

    // Every replica serves exactly what was acknowledged.
    for i in [head, middle, tail] {
        let records = records_at(&cluster, i, log_id, committed);
        assert_eq!(
            digest(&records),
            digest(&expected),
            "node {} differs from what was acknowledged",
            i + 1
        );
        assert_eq!(records, expected);
    }

    // Conditional appends through the chain.
    let next = at_head
        .append(
            &AppendHeader {
                expected_lsn: committed,
                ..AppendHeader::new(log_id)
            },
            &[b"conditional"],
        )
        .expect("the condition holds");
    assert_eq!(next, committed);
    let refused = at_head.append(
        &AppendHeader {
            expected_lsn: committed + 7,
            ..AppendHeader::new(log_id)
        },
        &[b"never"],
    );
    assert_eq!(refused, Err((ErrorCode::ConditionFailed, committed + 1)));

    // An idempotent retry gets the original LSN and appends nothing.
    let keyed = AppendHeader {
        writer_id: 99,
        writer_seq: 1,
        ..AppendHeader::new(log_id)
    };
    let first = at_head.append(&keyed, &[b"once"]).expect("keyed append");
    let again = at_head.append(&keyed, &[b"once"]).expect("retry");
    assert_eq!((first, again), (committed + 1, committed + 1));
    let end = check_tail(&mut at_head, log_id);
    assert_eq!(end, committed + 2, "the retry appended nothing");
    for i in [middle, tail] {
        let records = records_at(&cluster, i, log_id, end);
        assert_eq!(records.len() as u64, end);
        assert_eq!(records[committed as usize].1, b"conditional");
        assert_eq!(records[committed as usize + 1].1, b"once");
    }

    // The other replicas send writers to the head.
    let head_id = head as u64 + 1;
    for i in [middle, tail] {
        let mut client = cluster.client(i, log_id);
        let answer = client.append(&AppendHeader::new(log_id), &[b"not here"]);
        assert_eq!(answer, Err((ErrorCode::NotHead, head_id)));
    }
    // Trims travel down the chain.
    at_head.call(
        &Request::Trim(chainlog::net::TrimRequest {
            log_id,
            before_lsn: 10,
        }),
        |r| assert!(matches!(r, Response::Trim), "{r:?}"),
    );
    for i in [middle, tail] {
        let mut client = cluster.client(i, log_id);
        let end = Instant::now() + DEADLINE;
        while client.read(log_id, 0) != Err(ErrorCode::Trimmed) {
            assert!(
                Instant::now() < end,
                "the trim never reached node {}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn stopping_and_restarting_every_process_keeps_what_was_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start_fixed(dir.path(), 3);
    let logs = [
        cluster.controller().create_log("three", 3).expect("rf 3"),
        cluster.controller().create_log("two", 2).expect("rf 2"),
    ];
    let mut written = Vec::new();
    for &log_id in &logs {
        let head = cluster.chain(log_id)[0];
        let mut client = cluster.client(head, log_id);
        let mut records = Vec::new();
        for n in 0..100 {
            let p = payload(log_id % 7, n);
            let lsn = client
                .append(&AppendHeader::new(log_id), &[&p])
                .expect("append");
            records.push((lsn, p));
        }
        written.push(records);
    }

    // Stop everything (nodes, then the controller), start it all again where it was.
    let controller_addr = cluster.controller.addr;
    for node in std::mem::take(&mut cluster.nodes) {
        let status = node.terminate();
        assert!(status.success(), "a node's graceful stop: {status}");
    }
    let Cluster {
        controller, ports, ..
    } = cluster;
    assert!(controller.terminate().success());
    let controller = Controller::start_on(
        &dir.path().join("controller"),
        &controller_addr.to_string(),
        IN_EPOCH,
    );
    let mut cluster = Cluster {
        controller,
        nodes: Vec::new(),
        ports: ports.clone(),
    };
    for (i, &port) in ports.iter().enumerate() {
        let node = cluster.start_node(dir.path(), i, Ports::At(port));
        cluster.nodes.push(node);
    }
    cluster.wait_members(3);

    for (&log_id, records) in logs.iter().zip(&written) {
        let chain = cluster.chain(log_id);
        let head = chain[0];
        // Appends continue after the restart (the head's links come back).
        let mut client = cluster.client(head, log_id);
        let end = Instant::now() + DEADLINE;
        let lsn = loop {
            match client.append(&AppendHeader::new(log_id), &[b"after the restart"]) {
                Ok(lsn) => break lsn,
                Err((code, _)) if code.is_retryable() && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("append after the restart: {e:?}"),
            }
        };
        assert_eq!(lsn, 100, "the log continues where it stopped");
        let mut expected = records.clone();
        expected.push((100, b"after the restart".to_vec()));
        for &i in &chain {
            assert_eq!(
                records_at(&cluster, i, log_id, 101),
                expected,
                "node {} after the restart",
                i + 1
            );
        }
    }
}

/// A REPLICATE of records `payloads` stamped for `log_id` at `first` in `epoch`.
fn replicate_frame(
    request_id: u64,
    log_id: u64,
    epoch: u64,
    first: u64,
    payloads: &[&[u8]],
) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let header = RecordHeader {
            len: p.len() as u32,
            crc: crc32c::crc32c(p),
            log_id,
            lsn: first + i as u64,
            epoch,
            timestamp_us: 1,
        };
        bytes.extend_from_slice(bytemuck::bytes_of(&header));
        bytes.extend_from_slice(p);
        bytes.resize(bytes.len().next_multiple_of(8), 0);
    }
    let records = Records::parse(
        &bytes,
        payloads.len() as u32,
        chainlog::net::RecordForm::Replicated {
            log_id,
            epoch,
            first_lsn: first,
        },
        &chainlog::net::Limits::DEFAULT,
    )
    .expect("well-formed records");
    let header = ReplicateHeader::new(ReplicateKind::Records, log_id, epoch, first, 0);
    request(
        request_id,
        &Request::Replicate(ReplicateRequest {
            header,
            records,
            keys: chainlog::net::Keys::EMPTY,
        }),
    )
}

/// A connection to `addr` past HELLO and PEER as `node_id`.
fn peer(addr: std::net::SocketAddr, node_id: u64) -> Raw {
    let mut raw = Raw::greeted(addr);
    raw.send(&request(2, &Request::Peer(PeerRequest { node_id })));
    match raw.next() {
        Some(Answer::Ok { request_id: 2, .. }) => raw,
        other => panic!("PEER answered with {other:?}"),
    }
}

#[test]
fn the_replication_port_refuses_bad_forwards_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path(), 3);
    let log_id = cluster
        .controller()
        .create_log("guarded", 3)
        .expect("create");
    let chain = cluster.chain(log_id);
    let (head, middle, tail) = (chain[0], chain[1], chain[2]);
    let map = cluster.controller().map().expect("map");
    let epoch = map.log(log_id).expect("log").epoch;
    let mut at_head = cluster.client(head, log_id);
    for n in 0..5 {
        at_head
            .append(&AppendHeader::new(log_id), &[&payload(1, n)])
            .expect("append");
    }
    let before = records_at(&cluster, middle, log_id, 5);
    let addr = cluster.nodes[middle].addr((log_id % u64::from(SHARDS)) as u16);
    let op = Opcode::Replicate as u16;
    let head_id = head as u64 + 1;

    // No PEER on the connection.
    let mut raw = Raw::greeted(addr);
    raw.send(&replicate_frame(5, log_id, epoch, 5, &[b"x"]));
    raw.expect_error(op, 5, ErrorCode::UnknownNode, head_id, 0);
    // A node that is not the middle's predecessor (the tail).
    let mut raw = peer(addr, tail as u64 + 1);
    raw.send(&replicate_frame(6, log_id, epoch, 5, &[b"x"]));
    raw.expect_error(op, 6, ErrorCode::UnknownNode, head_id, 0);
    // From the predecessor's id: a wrong epoch, a gap, an unknown log.
    let mut raw = peer(addr, head_id);
    raw.send(&replicate_frame(7, log_id, epoch + 1, 5, &[b"x"]));
    raw.expect_error(op, 7, ErrorCode::WrongEpoch, epoch, 0);
    raw.send(&replicate_frame(8, log_id, epoch, 50, &[b"x"]));
    raw.expect_error(op, 8, ErrorCode::Gap, 5, 0);
    let unknown = log_id + u64::from(SHARDS) * 1000;
    raw.send(&replicate_frame(9, unknown, epoch, 0, &[b"x"]));
    raw.expect_error(op, 9, ErrorCode::UnknownLog, u64::MAX, 0);
    // A bad record CRC: MALFORMED, and the connection closes.
    let mut bad = replicate_frame(10, log_id, epoch, 5, &[b"corrupt me"]);
    let at = 24 + 72 + RECORD_HEADER_BYTES;
    bad[at] ^= 0x55;
    common::raw::fix_crc(&mut bad);
    raw.send(&bad);
    raw.expect_error(op, 10, ErrorCode::Malformed, 0, 0);
    raw.expect_closed();

    // Nothing of it was written, and the chain keeps working.
    let lsn = at_head
        .append(&AppendHeader::new(log_id), &[b"still fine"])
        .expect("append after the hostile traffic");
    assert_eq!(lsn, 5);
    let mut expected = before;
    expected.push((5, b"still fine".to_vec()));
    for i in [head, middle, tail] {
        assert_eq!(
            records_at(&cluster, i, log_id, 6),
            expected,
            "node {}",
            i + 1
        );
    }
}

/// Sends `n` APPENDs of `batch` small records each on `client` without reading answers.
fn send_appends(client: &mut Client, log_id: u64, n: usize, batch: usize) {
    let payloads: Vec<Vec<u8>> = (0..batch).map(|i| payload(9, i as u64)).collect();
    let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    for _ in 0..n {
        client.send_append(&AppendHeader::new(log_id), &payloads);
    }
}

/// Reads `n` APPEND answers: the first LSNs of those that succeeded, and how many were
/// OVERLOADED.
fn append_answers(client: &mut Client, n: usize) -> (Vec<u64>, usize) {
    let mut lsns = Vec::new();
    let mut overloaded = 0;
    for _ in 0..n {
        client.receive(|_, r| match r {
            Response::Append(a) => lsns.push(a.first_lsn),
            Response::Error(e) if e.code == ErrorCode::Overloaded => overloaded += 1,
            other => panic!("APPEND answered with {other:?}"),
        });
    }
    (lsns, overloaded)
}

#[test]
fn a_stopped_replica_makes_appends_overloaded_and_the_chain_catches_up_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path(), 3);
    let log_id = cluster.controller().create_log("slow", 3).expect("create");
    let chain = cluster.chain(log_id);
    let (head, tail) = (chain[0], chain[2]);
    let tail_pid = cluster.nodes[tail].pid() as libc::pid_t;
    // SAFETY: kill(2) on our own child (not reaped, so the pid is ours).
    unsafe { libc::kill(tail_pid, libc::SIGSTOP) };
    // With the tail stopped nothing commits. Two writers pipeline 2 x 600 APPENDs of 64
    // records: once 65,536 records wait for the rest of the chain, the head refuses more
    // with OVERLOADED instead of piling them up. (Answers come in order per connection, so
    // they are read once the tail is back.)
    const APPENDS: usize = 600;
    const BATCH: usize = 64;
    let mut writers = [cluster.client(head, log_id), cluster.client(head, log_id)];
    for w in &mut writers {
        send_appends(w, log_id, APPENDS, BATCH);
        // A TAIL_HINT behind them is handled after them, and its answer does not wait for
        // theirs: once it arrives, the head has taken or refused every one of them.
        let id = w.next_id;
        w.next_id += 1;
        w.send(&request(id, &Request::TailHint { log_id }));
        w.receive(|rid, r| match r {
            Response::TailHint(t) if rid == id => {
                assert_eq!(t.tail, 0, "nothing commits while the tail is stopped")
            }
            other => panic!("before the TAIL_HINT's answer: {other:?}"),
        });
    }
    // SAFETY: as above.
    unsafe { libc::kill(tail_pid, libc::SIGCONT) };
    let mut accepted = Vec::new();
    let mut overloaded = 0;
    for w in &mut writers {
        let (lsns, refused) = append_answers(w, APPENDS);
        accepted.extend(lsns);
        overloaded += refused;
    }
    assert!(
        overloaded > 0,
        "the head took every append while nothing committed"
    );
    let accepted_records = (accepted.len() * BATCH) as u64;
    assert!(
        accepted_records <= 1 << 16,
        "{accepted_records} records accepted while nothing could commit"
    );
    accepted.sort_unstable();
    let dense: Vec<u64> = (0..accepted.len() as u64)
        .map(|i| i * BATCH as u64)
        .collect();
    assert_eq!(accepted, dense, "the accepted appends got dense LSNs");

    // Everything accepted commits, every replica agrees, and appends are taken again.
    let mut at_head = cluster.client(head, log_id);
    let lsn = at_head
        .append(&AppendHeader::new(log_id), &[b"after"])
        .expect("appends are taken again");
    assert_eq!(lsn, accepted_records);
    let committed = check_tail(&mut at_head, log_id);
    assert_eq!(committed, lsn + 1);
    let expected = records_at(&cluster, head, log_id, committed);
    for &i in &chain[1..] {
        assert_eq!(
            digest(&records_at(&cluster, i, log_id, committed)),
            digest(&expected),
            "node {}",
            i + 1
        );
    }
}

/// Every committed record of `log_id` as the client's chosen replica serves it, once it knows
/// `tail` is committed.
async fn read_through(
    client: &chainlog::client::Client,
    log_id: u64,
    tail: u64,
) -> Vec<(u64, Vec<u8>)> {
    let end = Instant::now() + DEADLINE;
    loop {
        let mut records = Vec::new();
        let mut next = 0;
        let known = loop {
            let batch = client
                .read(log_id, next, 1000, 1 << 20)
                .await
                .expect("read");
            if batch.records.is_empty() {
                break batch.tail;
            }
            next = batch.records.last().expect("nonempty").lsn + 1;
            records.extend(batch.records.into_iter().map(|r| (r.lsn, r.payload)));
        };
        if known >= tail {
            return records;
        }
        assert!(
            Instant::now() < end,
            "the replica knows {known} committed, not {tail}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_dev_cluster_through_the_client_library_replicates_and_survives_a_restart() {
    use chainlog::client::{AppendOptions, Client as Lib, ClientConfig, ReadFrom};
    use chainlog::dev::{DevCluster, DevOptions, Launcher};
    let dir = tempfile::tempdir().expect("tempdir");
    let options = DevOptions {
        nodes: 3,
        rf: 3,
        shards: 2,
        data_dir: Some(dir.path().to_path_buf()),
        ..DevOptions::new(Launcher {
            program: env!("CARGO_BIN_EXE_chainlog").into(),
            node_prefix: vec!["node".into()],
            controller_prefix: vec!["controller".into()],
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dev = DevCluster::start(options.clone())
            .await
            .expect("dev cluster");
        let client = Lib::connect(dev.target()).await.expect("connect");
        let log_id = client.create_log_with("library", 3).await.expect("create");
        // Eight tasks append at once through one cluster client (routed to the head).
        let tasks: Vec<_> = (0..8u64)
            .map(|w| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for n in 0..50 {
                        let p = payload(w, n);
                        let lsns = client.append(log_id, &[&p]).await.expect("append");
                        acked.push((lsns.start, p));
                    }
                    acked
                })
            })
            .collect();
        let mut expected = Vec::new();
        for t in tasks {
            expected.extend(t.await.expect("task"));
        }
        expected.sort();
        assert_eq!(expected.len(), 400);
        // Conditional and idempotent appends through the chain.
        let tail = client.check_tail(log_id).await.expect("check_tail").tail;
        assert_eq!(tail, 400);
        let at = AppendOptions {
            expected_lsn: Some(400),
            ..AppendOptions::default()
        };
        assert_eq!(
            client
                .append_with(log_id, &[b"cond"], &at)
                .await
                .expect("cond")
                .start,
            400
        );
        let refused = client.append_with(log_id, &[b"cond"], &at).await;
        assert!(refused.is_err(), "the condition no longer holds");
        let keyed = AppendOptions {
            idempotency: Some((5, 1)),
            ..AppendOptions::default()
        };
        let first = client
            .append_with(log_id, &[b"key"], &keyed)
            .await
            .expect("keyed");
        let again = client
            .append_with(log_id, &[b"key"], &keyed)
            .await
            .expect("retry");
        assert_eq!((first.start, again.start), (401, 401));
        expected.push((400, b"cond".to_vec()));
        expected.push((401, b"key".to_vec()));
        let committed = client.check_tail(log_id).await.expect("check_tail").tail;
        assert_eq!(committed, 402);
        // Reads from the head, the tail and round robin all agree with what was acked, and
        // every node, asked directly, holds the same records.
        for read_from in [ReadFrom::Head, ReadFrom::Tail, ReadFrom::Any] {
            let config = ClientConfig {
                read_from,
                ..ClientConfig::default()
            };
            let reader = Lib::connect_with(dev.target(), config)
                .await
                .expect("reader");
            assert_eq!(
                read_through(&reader, log_id, committed).await,
                expected,
                "{read_from:?}"
            );
        }
        for node in dev.nodes() {
            let direct = Lib::connect(node.process().addr()).await.expect("node");
            let records = read_through(&direct, log_id, committed).await;
            assert_eq!(digest(&records), digest(&expected), "node {}", node.id());
        }
        dev.stop();

        // Every process starts again on the same directory (on new ports): everything
        // committed is there, and appends continue where they stopped.
        let dev = DevCluster::start(options).await.expect("dev cluster again");
        let client = Lib::connect(dev.target()).await.expect("connect again");
        let end = Instant::now() + DEADLINE;
        let next = loop {
            match client.append(log_id, &[b"again"]).await {
                Ok(lsns) => break lsns.start,
                Err(e) if Instant::now() < end => {
                    // The nodes reconnect to each other at their new addresses.
                    tracing::debug!(error = %e, "not yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("append after the restart: {e}"),
            }
        };
        assert_eq!(next, 402);
        expected.push((402, b"again".to_vec()));
        for node in dev.nodes() {
            let direct = Lib::connect(node.process().addr()).await.expect("node");
            assert_eq!(
                read_through(&direct, log_id, 403).await,
                expected,
                "node {}",
                node.id()
            );
        }
        dev.stop();
    });
}

/// Copies a directory tree (a node's data directory, stopped).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Appends with an idempotency key at node `i`, retrying what is retryable (a restarted head
/// is UNAVAILABLE until it settles); returns the LSN.
fn keyed_append(
    cluster: &Cluster,
    i: usize,
    log_id: u64,
    (writer_id, writer_seq): (u64, u64),
    payload: &[u8],
) -> u64 {
    let header = AppendHeader {
        writer_id,
        writer_seq,
        ..AppendHeader::new(log_id)
    };
    let end = Instant::now() + DEADLINE;
    loop {
        let mut client = cluster.client(i, log_id);
        match client.append(&header, &[payload]) {
            Ok(lsn) => return lsn,
            Err((code, _)) if code.is_retryable() && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("append {writer_id}/{writer_seq} at node {}: {e:?}", i + 1),
        }
    }
}

/// The head forwards records before its own write is durable, so after a crash its
/// successors may hold records it lost. Here the head comes back on a copy of its data taken
/// before its last records (what a crash that lost unsynced writes leaves, made certain):
/// it must take those records back from its successor, with their idempotency keys, before
/// it sequences anything, so no acknowledged LSN gets another record and a retry gets its
/// original LSN.
#[test]
fn a_head_that_lost_records_it_forwarded_takes_them_back_before_appending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(dir.path(), 3);
    let log_id = cluster
        .controller()
        .create_log("lost-at-the-head", 3)
        .expect("create rf 3");
    let head = cluster.chain(log_id)[0];
    const WRITER: u64 = 77;
    let mut acked = Vec::new();
    for seq in 1..=20 {
        let p = payload(WRITER, seq);
        acked.push((keyed_append(&cluster, head, log_id, (WRITER, seq), &p), p));
    }
    // The head's data as it is now, kept aside (the node stopped, so the copy is whole).
    let head_dir = dir.path().join(format!("node-{}", head + 1));
    let saved = dir.path().join("saved-head");
    let stopped = cluster.nodes.remove(head);
    assert!(stopped.terminate().success());
    copy_dir(&head_dir, &saved);
    cluster
        .nodes
        .insert(head, cluster.start_node(dir.path(), head, Ports::Any));
    cluster.wait_members(3);
    for seq in 21..=30 {
        let p = payload(WRITER, seq);
        acked.push((keyed_append(&cluster, head, log_id, (WRITER, seq), &p), p));
    }
    // The head crashes and comes back without its last ten records.
    let crashed = cluster.nodes.remove(head);
    crashed.kill9();
    std::fs::remove_dir_all(&head_dir).expect("rm");
    copy_dir(&saved, &head_dir);
    cluster
        .nodes
        .insert(head, cluster.start_node(dir.path(), head, Ports::Any));
    cluster.wait_members(3);

    // A new writer's append goes after everything the chain holds, not over it.
    let fresh = b"after the head came back".to_vec();
    let lsn = keyed_append(&cluster, head, log_id, (WRITER + 1, 1), &fresh);
    assert_eq!(
        lsn, 30,
        "the head sequenced over records its successors hold"
    );
    // Retries of the lost batches find their keys: the original LSNs, nothing appended.
    for (seq, (lsn, p)) in (1..=30).zip(&acked) {
        assert_eq!(
            keyed_append(&cluster, head, log_id, (WRITER, seq), p),
            *lsn,
            "a retry of batch {seq} got another LSN"
        );
    }
    acked.push((lsn, fresh));
    let committed = acked.len() as u64;
    let mut at_head = cluster.client(head, log_id);
    assert_eq!(check_tail(&mut at_head, log_id), committed);
    for i in cluster.chain(log_id) {
        assert_eq!(
            records_at(&cluster, i, log_id, committed),
            acked,
            "node {} differs from what was acknowledged",
            i + 1
        );
    }
}

/// PROTOCOL.md 6.1, 6.7, 6.9 and 6.12, as a client that knows one node meets them: each node
/// names itself by its `--node-id` in HELLO (the controller by 0); the controller answers
/// CREATE_LOG with the log's shard at its head; a node refuses CREATE_LOG (NOT_CONTROLLER: a
/// client is configured with the controller's address); a node's LIST_LOGS lists the logs
/// its shard holds a replica of, the controller's every log.
#[test]
fn cluster_nodes_name_themselves_list_the_logs_they_hold_and_send_creates_to_the_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(dir.path(), 3);
    let mut at_controller = Client::connect(cluster.controller.addr);
    let hello = at_controller.hello;
    assert_eq!((hello.node_id, hello.role), (0, Role::Controller));
    for (i, node) in cluster.nodes.iter().enumerate() {
        let hello = node.connect(0).hello;
        assert_eq!((hello.node_id, hello.role), (i as u64 + 1, Role::Node));
    }
    let create = |c: &mut Client, name: &str, replication_factor| {
        c.call(
            &Request::CreateLog(CreateLogRequest {
                replication_factor,
                name,
            }),
            |r| match r {
                Response::CreateLog(c) => Ok((c.log_id, c.shard)),
                Response::Error(e) => Err((e.code, e.arg0)),
                other => panic!("{other:?}"),
            },
        )
    };
    let shard_of = |log_id: u64| (log_id % u64::from(SHARDS)) as u16;
    let (pair, all) = (log_id_of("pair"), log_id_of("all"));
    assert_eq!(
        create(&mut at_controller, "pair", 2),
        Ok((pair, shard_of(pair)))
    );
    assert_eq!(
        create(&mut at_controller, "all", 3),
        Ok((all, shard_of(all)))
    );
    let mut at_node = cluster.nodes[0].connect(shard_of(log_id_of("elsewhere")));
    assert_eq!(
        create(&mut at_node, "elsewhere", 1),
        Err((ErrorCode::NotController, u64::MAX))
    );

    let list = |c: &mut Client| {
        c.call(
            &Request::ListLogs(ListLogsRequest {
                after_log_id: 0,
                max: u32::MAX,
            }),
            |r| match r {
                Response::ListLogs(l) => l.entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            },
        )
    };
    let at_node = |i: usize| {
        let mut ids: Vec<u64> = (0..SHARDS)
            .flat_map(|shard| list(&mut cluster.nodes[i].connect(shard)))
            .collect();
        ids.sort_unstable();
        ids
    };
    let mut both = vec![pair, all];
    both.sort_unstable();
    let outside = (0..3)
        .find(|i| !cluster.chain(pair).contains(i))
        .expect("an rf 2 chain leaves one of three nodes out");
    // Once a node lists `all` (created after `pair`), it applied a map that holds both.
    let end = Instant::now() + DEADLINE;
    let listed = loop {
        let listed: Vec<Vec<u64>> = (0..3).map(at_node).collect();
        if listed.iter().all(|ids| ids.contains(&all)) {
            break listed;
        }
        assert!(
            Instant::now() < end,
            "the nodes never installed the logs: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for (i, ids) in listed.iter().enumerate() {
        let held = if i == outside {
            vec![all]
        } else {
            both.clone()
        };
        assert_eq!(ids, &held, "node {} lists the logs it holds", i + 1);
    }
    assert_eq!(
        list(&mut at_controller),
        both,
        "the controller lists every log"
    );
}
