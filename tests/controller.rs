//! The real `chainlog controller` binary on loopback, driven by the blocking controller client
//! (`chainlog::controller::client`), by fake nodes that heartbeat from a thread, and by raw
//! frames (`common::raw`): registration and placement, creates that wait for the replicas to
//! apply the map (and time out when one does not), describe, list and delete, a restart that
//! keeps the map, hostile input that must not disturb a good client, a damaged state file that
//! must stop the controller with a clear error, a stop while a create waits, and bounded
//! connections that keep room for nodes while clients hold every other slot; and the CLI
//! against it (`log create --rf 2`, `status` with every node and its zone and rack, the log's
//! chain and each replica's lag); and a failure with fake replicas answering SEAL and
//! TAIL_HINT: the survivors' epoch, a learner, its promotion once it answers caught up. Each
//! test stops the controller it started, by PID.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chainlog::controller::client::{Client as ControllerClient, ClientError};
use chainlog::net::cluster::{ClusterMap, MapLog};
use chainlog::net::{ErrorCode, GetMapRequest, HelloRequest, Limits, Opcode, Request, Response};
use common::raw::{frame, request, Answer, Raw};
use common::{Controller, Node};

/// The blocking client's timeout: a guard against hanging, never a timing assertion.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(controller: &Controller) -> ControllerClient {
    ControllerClient::connect(controller.addr, CALL_TIMEOUT).expect("connect")
}

/// The code of a server ERROR.
fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Expects `raw` to get `code` as the answer to `request_id` (0: a connection-level error),
/// then to be closed.
fn expect_refused_and_closed(raw: &mut Raw, request_id: u64, code: ErrorCode) {
    match raw.next() {
        Some(Answer::Error {
            request_id: r,
            code: c,
            ..
        }) if (r, c) == (request_id, code) => {}
        other => panic!("expected {code} for request {request_id}, got {other:?}"),
    }
    raw.expect_closed();
}

#[test]
fn hostile_input_is_refused_and_a_good_client_keeps_being_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(&dir.path().join("controller"), &[]);
    let mut good = connect(&controller);
    assert_eq!(good.list_logs().expect("list"), []);

    // Garbage before HELLO: a framing error, answered at connection level.
    let mut raw = Raw::connect(controller.addr);
    raw.send(b"GET / HTTP/1.1\r\nHost: controller\r\n\r\n");
    expect_refused_and_closed(&mut raw, 0, ErrorCode::Malformed);
    // A well-formed frame that is not HELLO, first.
    let mut raw = Raw::connect(controller.addr);
    raw.send(&frame(Opcode::ListLogs as u16, 0, 7, &[0; 16]));
    expect_refused_and_closed(&mut raw, 7, ErrorCode::Malformed);
    // After HELLO: REGISTER_NODE without a node id, shards or a UTF-8 address, HEARTBEAT of
    // node 0, a bad CRC, a length above the limit, an unknown opcode, a short body, a second
    // HELLO.
    let list = Opcode::ListLogs as u16;
    let mut bad_crc = frame(list, 0, 2, &[0; 16]);
    bad_crc[30] ^= 1;
    let too_long = (Limits::DEFAULT.frame_bytes_max).to_le_bytes();
    // REGISTER_NODE bodies: node_id, shard_count, addr_len, reserved, addr.
    let register = |node_id: u64, shards: u16, addr: &[u8]| {
        let mut body = node_id.to_le_bytes().to_vec();
        body.extend_from_slice(&shards.to_le_bytes());
        body.extend_from_slice(&(addr.len() as u16).to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(addr);
        frame(Opcode::RegisterNode as u16, 0, 8, &body)
    };
    for (bytes, id) in [
        (register(0, 1, b"127.0.0.1:1"), 8),
        (register(1, 0, b"127.0.0.1:1"), 8),
        (register(1, 1, b""), 8),
        (register(1, 1, b"\xff:1"), 8),
        (frame(Opcode::Heartbeat as u16, 0, 8, &[0; 16]), 8),
        (bad_crc, 0),
        (too_long.to_vec(), 0),
        (frame(999, 0, 4, &[]), 4),
        (frame(list, 0, 5, &[0; 3]), 5),
        (request(6, &Request::Hello(HelloRequest::CURRENT)), 6),
    ] {
        let mut raw = Raw::greeted(controller.addr);
        raw.send(&bytes);
        expect_refused_and_closed(&mut raw, id, ErrorCode::Malformed);
        assert_eq!(good.list_logs().expect("still served"), []);
    }
    // A request only nodes serve: the HELLO answer said this is the controller, so a client
    // that sends it anyway is broken (MALFORMED, closed).
    let mut raw = Raw::greeted(controller.addr);
    let log_id = chainlog::client::log_id("a");
    raw.send(&request(9, &Request::CheckTail { log_id }));
    expect_refused_and_closed(&mut raw, 9, ErrorCode::Malformed);

    // A log needs live nodes; none has registered.
    assert_eq!(code(good.create_log("a", 1)), ErrorCode::TooLarge);
    assert_eq!(code(good.describe_log("a")), ErrorCode::UnknownLog);
    assert_eq!(code(good.delete_log(1)), ErrorCode::UnknownLog);
    assert!(matches!(
        good.create_log("", 1),
        Err(ClientError::Invalid(_))
    ));
    assert_eq!(good.list_logs().expect("list"), []);
    assert!(controller.terminate().success(), "exit 0 on SIGTERM");
}

#[test]
fn a_damaged_state_file_stops_the_controller_with_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("controller");
    let controller = Controller::start(&data, &[]);
    assert!(controller.terminate().success());
    let state = data.join("state");
    std::fs::write(&state, b"not a state file").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args(["controller", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&*state.to_string_lossy())
            && stderr.contains("not a chainlog controller state file"),
        "{stderr}"
    );
}

/// Fake nodes: a thread that heartbeats each node every few milliseconds on its own
/// connection, reporting as applied the version the previous heartbeat returned (a node
/// that applies every map at once), except for frozen nodes, which keep reporting what they
/// had applied when frozen.
struct FakeNodes {
    stop: Arc<AtomicBool>,
    frozen: Arc<Mutex<BTreeSet<u64>>>,
    /// Nodes that heartbeat no more (dead to the controller).
    silent: Arc<Mutex<BTreeSet<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeNodes {
    /// Heartbeats `ids` (registered already) at the controller at `addr`.
    fn start(addr: SocketAddr, ids: &[u64]) -> FakeNodes {
        let stop = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(Mutex::new(BTreeSet::new()));
        let silent = Arc::new(Mutex::new(BTreeSet::new()));
        let mut client = ControllerClient::connect(addr, CALL_TIMEOUT).expect("connect");
        let mut applied: BTreeMap<u64, u64> = ids.iter().map(|&id| (id, 0)).collect();
        let thread = {
            let (stop, frozen, silent) = (stop.clone(), frozen.clone(), silent.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for (&id, version) in applied.iter_mut() {
                        if silent.lock().expect("silent").contains(&id) {
                            continue;
                        }
                        let current = client.heartbeat(id, *version, 0).expect("heartbeat");
                        if !frozen.lock().expect("frozen").contains(&id) {
                            *version = current;
                        }
                    }
                    std::thread::sleep(HEARTBEAT_EVERY);
                }
            })
        };
        FakeNodes {
            stop,
            frozen,
            silent,
            thread: Some(thread),
        }
    }

    /// Node `id` heartbeats no more: the controller takes it for dead.
    fn silence(&self, id: u64) {
        self.silent.lock().expect("silent").insert(id);
    }

    /// Node `id` stops applying new maps (it still heartbeats).
    fn freeze(&self, id: u64) {
        self.frozen.lock().expect("frozen").insert(id);
    }

    /// Node `id` applies maps again.
    fn thaw(&self, id: u64) {
        self.frozen.lock().expect("frozen").remove(&id);
    }
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            if !std::thread::panicking() {
                joined.expect("the heartbeat thread ran without errors");
            }
        }
    }
}

/// How often the fake nodes heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(5);

/// The map without what changes by itself (liveness, time since the last heartbeat).
fn durable(map: &ClusterMap) -> (u64, Vec<(u64, String, u16)>, Vec<MapLog>) {
    let nodes = map
        .nodes()
        .iter()
        .map(|n| (n.node_id, n.addr.clone(), n.shard_count))
        .collect();
    (map.version(), nodes, map.logs().to_vec())
}

#[test]
fn nodes_register_logs_are_placed_and_a_restart_keeps_the_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("controller");
    // Liveness long enough that no node dies while the test runs on a slow machine; a short
    // create timeout for the create that must time out.
    let flags = ["--liveness-ms", "600000", "--create-timeout-ms", "500"];
    let controller = Controller::start(&data, &flags);
    let mut c = connect(&controller);

    // Three nodes register; registering again with the same address changes nothing, a new
    // address is a new map version.
    for id in 1..=3 {
        let version = c
            .register(id, &format!("127.0.0.1:{}", 17000 + id), 2, "", "")
            .expect("register");
        assert_eq!(version, id);
    }
    assert_eq!(
        c.register(3, "127.0.0.1:17003", 2, "", "").expect("again"),
        3
    );
    assert_eq!(
        c.register(3, "127.0.0.1:18003", 2, "", "").expect("moved"),
        4
    );
    assert_eq!(code(c.heartbeat(99, 0, 0)), ErrorCode::UnknownNode);
    let nodes = FakeNodes::start(controller.addr, &[1, 2, 3]);

    // Placement: fewest chains first, then fewest heads; the head has the fewest heads.
    let one = c.create_log("rf1", 1).expect("rf 1");
    let two = c.create_log("rf2", 2).expect("rf 2");
    let three = c.create_log("rf3", 3).expect("rf 3");
    assert_eq!(one, chainlog::client::log_id("rf1"));
    let map = c.map().expect("map");
    assert_eq!(map.version(), 7);
    assert_eq!(map.nodes().len(), 3);
    assert!(map.nodes().iter().all(|n| n.alive && n.shard_count == 2));
    assert_eq!(map.node(3).expect("node 3").addr, "127.0.0.1:18003");
    let chain = |id| map.log(id).expect("log").chain.clone();
    assert_eq!(
        [chain(one), chain(two), chain(three)],
        [vec![1], vec![2, 3], vec![3, 1, 2]]
    );
    let log = map.log_named("rf2").expect("rf2");
    assert_eq!(
        (log.epoch, log.start_lsn, log.replication_factor),
        (1, 0, 2)
    );
    assert_eq!(log.created_version, 6);

    // GET_MAP pages, one log at a time: every node on every page, ids ascending, then an
    // empty page.
    let mut pages = common::Client::connect(controller.addr);
    let mut ids = vec![one, two, three];
    ids.sort_unstable();
    let mut after = 0;
    for expected in ids.iter().map(|&id| vec![id]).chain([vec![]]) {
        let get = Request::GetMap(GetMapRequest {
            after_log_id: after,
            max: 1,
        });
        let page = pages.call(&get, |r| match r {
            Response::GetMap(page) => (
                page.version,
                page.nodes.len(),
                page.logs.iter().map(|l| l.log_id).collect::<Vec<_>>(),
            ),
            other => panic!("GET_MAP answered with {other:?}"),
        });
        assert_eq!(page, (7, 3, expected));
        after = page.2.first().copied().unwrap_or(after);
    }

    // Describe, list; a create retried is the same log, another rf is LOG_EXISTS; rf above
    // the live nodes is TOO_LARGE with the live count.
    let info = c.describe_log("rf2").expect("describe");
    assert_eq!(
        (info.log_id, info.epoch, info.replication_factor, info.shard),
        (two, 1, 2, (two % 2) as u16)
    );
    assert_eq!((info.tail, info.trim_point), (u64::MAX, u64::MAX));
    let listed: Vec<u64> = c
        .list_logs()
        .expect("list")
        .iter()
        .map(|l| l.log_id)
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(c.create_log("rf2", 2).expect("retried"), two);
    match c.create_log("rf2", 3) {
        Err(ClientError::Server(e)) => assert_eq!((e.code, e.arg0), (ErrorCode::LogExists, two)),
        other => panic!("{other:?}"),
    }
    match c.create_log("big", 4) {
        Err(ClientError::Server(e)) => assert_eq!((e.code, e.arg0), (ErrorCode::TooLarge, 3)),
        other => panic!("{other:?}"),
    }
    // rf 0 asks for the default, 1 without --default-rf: not rf2's 2, so LOG_EXISTS.
    match c.create_log("rf2", 0) {
        Err(ClientError::Server(e)) => assert_eq!((e.code, e.arg0), (ErrorCode::LogExists, two)),
        other => panic!("{other:?}"),
    }

    // Delete: gone from the map, a new version.
    c.delete_log(one).expect("delete");
    assert_eq!(code(c.delete_log(one)), ErrorCode::UnknownLog);
    assert_eq!(code(c.describe_log("rf1")), ErrorCode::UnknownLog);
    let map = c.map().expect("map");
    assert_eq!((map.version(), map.log(one)), (8, None));

    // A replica that does not apply the new map: the create times out (UNAVAILABLE), the log
    // stays placed; once the node applies, the same create completes.
    nodes.freeze(3);
    assert_eq!(code(c.create_log("slow", 3)), ErrorCode::Unavailable);
    let slow = chainlog::client::log_id("slow");
    assert_eq!(
        c.map().expect("map").log(slow).expect("placed").chain.len(),
        3
    );
    nodes.thaw(3);
    assert_eq!(c.create_log("slow", 3).expect("completes"), slow);

    // A restart: the same version, nodes and logs; no node has heartbeated since.
    let before = c.map().expect("map");
    drop(nodes);
    drop(c);
    assert!(controller.terminate().success(), "exit 0 on SIGTERM");
    let controller = Controller::start(&data, &flags);
    let after = connect(&controller).map().expect("map");
    assert_eq!(durable(&after), durable(&before));
    assert!(after
        .nodes()
        .iter()
        .all(|n| !n.alive && n.last_heartbeat_ms == u64::MAX));
    assert!(controller.terminate().success());
}

#[test]
fn a_stop_answers_a_waiting_create_and_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(
        &dir.path().join("controller"),
        &["--liveness-ms", "600000", "--create-timeout-ms", "600000"],
    );
    let mut c = connect(&controller);
    c.register(1, "127.0.0.1:17001", 1, "", "")
        .expect("register");
    // Node 1 never heartbeats the new version: the create waits until the stop.
    let addr = controller.addr;
    let waiting = std::thread::spawn(move || {
        ControllerClient::connect(addr, CALL_TIMEOUT)
            .expect("connect")
            .create_log("waits", 1)
    });
    let id = chainlog::client::log_id("waits");
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while c.map().expect("map").log(id).is_none() {
        assert!(
            std::time::Instant::now() < end,
            "the waiting create never placed its log"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(controller.terminate().success(), "exit 0 on SIGTERM");
    match waiting.join().expect("the creating thread") {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.message.contains("stopping"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_client_refuses_a_node_for_the_controller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    match ControllerClient::connect(node.addr(0), CALL_TIMEOUT) {
        Err(ClientError::Protocol(reason)) => assert!(reason.contains("not the controller")),
        other => panic!("{other:?}"),
    }
    assert!(node.terminate().success());
}

/// Every slot is bounded: 8 for anyone, 2 more for nodes (the HELLO timeout far beyond the
/// test, so that the connections in the nodes' slots, which never show they are nodes, stay).
#[test]
fn connections_are_bounded_and_a_freed_slot_serves_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--connections-max",
        "8",
        "--node-connections-reserved",
        "2",
        "--hello-timeout-ms",
        "3600000",
    ];
    let controller = Controller::start(&dir.path().join("controller"), &args);
    let mut open: Vec<Raw> = (0..10).map(|_| Raw::greeted(controller.addr)).collect();
    // One more is answered OVERLOADED (retry after 100 ms) and closed, unread.
    let mut refused = Raw::connect(controller.addr);
    refused.expect_error(0, 0, ErrorCode::Overloaded, 100, 0);
    refused.expect_closed();
    // Once a client closes, its slot serves a new client (the controller notices the close
    // on its own time: try until it has).
    open.remove(0);
    let mut tries = 0;
    let mut raw = loop {
        let mut raw = Raw::connect(controller.addr);
        raw.send(&request(1, &Request::Hello(HelloRequest::CURRENT)));
        if let Some(Answer::Ok { .. }) = raw.next() {
            break raw;
        }
        tries += 1;
        assert!(tries < 1000, "a freed slot never served again");
        std::thread::sleep(Duration::from_millis(10));
    };
    let get = GetMapRequest {
        after_log_id: 0,
        max: 10,
    };
    raw.send(&request(2, &Request::GetMap(get)));
    assert!(
        matches!(raw.next(), Some(Answer::Ok { request_id: 2, .. })),
        "the new client is served"
    );
    drop(open);
    assert!(controller.terminate().success());
}

/// Issue 15: clients that hold every client slot do not lock the nodes out. With every
/// client slot held by a greeted, idle client (the idle timeout far beyond the test, so none
/// frees itself), a node still registers and heartbeats (the map shows it alive), and one
/// more client is refused OVERLOADED.
#[test]
fn a_node_gets_in_while_clients_hold_every_client_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--idle-timeout-ms", "3600000"];
    let controller = Controller::start(&dir.path().join("controller"), &args);
    let mut clients: Vec<ControllerClient> = (0..chainlog::controller::CONNECTIONS_MAX_DEFAULT)
        .map(|_| connect(&controller))
        .collect();
    let addr = controller.addr.to_string();
    let node_args = ["--controller", addr.as_str(), "--node-id", "1"];
    let node = Node::start_with(&dir.path().join("node"), 1, None, &node_args);
    let mut tries = 0;
    while !clients[0]
        .map()
        .expect("a held client is served")
        .node(1)
        .is_some_and(|n| n.alive)
    {
        tries += 1;
        assert!(tries < 1000, "the node never registered: it found no slot");
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused =
        ControllerClient::connect(controller.addr, CALL_TIMEOUT).and_then(|mut c| c.list_logs());
    assert_eq!(code(refused), ErrorCode::Overloaded);
    assert!(node.terminate().success());
    drop(clients);
    assert!(controller.terminate().success());
}

/// Issue 15: a connection that says no HELLO in time, or that idles, is closed, so idle
/// sockets cannot hold the controller's slots for ever (300 of them locked out every CLI,
/// bench and restarting node); a connection that keeps talking, as a node's heartbeats do,
/// stays.
#[test]
fn silent_connections_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--hello-timeout-ms", "500", "--idle-timeout-ms", "1000"];
    let controller = Controller::start(&dir.path().join("controller"), &args);
    let mut silent = Raw::connect(controller.addr);
    let mut idle = Raw::greeted(controller.addr);
    let mut talking = Raw::greeted(controller.addr);
    let closer = std::thread::spawn(move || {
        silent.expect_closed();
        idle.expect_closed();
    });
    let mut request_id = 2;
    while !closer.is_finished() {
        let get = GetMapRequest {
            after_log_id: 0,
            max: 10,
        };
        talking.send(&request(request_id, &Request::GetMap(get)));
        match talking.next() {
            Some(Answer::Ok { request_id: r, .. }) if r == request_id => {}
            other => panic!("the talking connection: {other:?}"),
        }
        request_id += 1;
    }
    closer
        .join()
        .expect("the silent and the idle connection were closed");
    drop(talking);
    assert!(controller.terminate().success());
}

/// Runs `chainlog ARGS` to completion and returns its stdout, which must be a success.
fn cli_ok(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chainlog");
    assert!(
        output.status.success(),
        "chainlog {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// `chainlog ARGS --json`: one JSON object per line.
fn cli_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut args = args.to_vec();
    args.push("--json");
    cli_ok(&args)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn the_cli_creates_a_replicated_log_and_status_shows_nodes_zones_chains_and_replica_lag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(&dir.path().join("controller"), &[]);
    // Two standalone nodes stand in for cluster nodes: registered and heartbeating by hand,
    // each answers TAIL_HINT for the log once it is created on it.
    let nodes = [
        Node::start(&dir.path().join("node-1"), 1),
        Node::start(&dir.path().join("node-2"), 1),
    ];
    // Node 1 registers with a zone and a rack, node 2 with a zone alone.
    let labels = [("eu-west-1a", "r17"), ("eu-west-1b", "")];
    let mut client = connect(&controller);
    for ((node_id, node), (zone, rack)) in (1..).zip(&nodes).zip(labels) {
        let addr = node.addr(0).to_string();
        client
            .register(node_id, &addr, 1, zone, rack)
            .expect("register");
    }
    let heartbeats = FakeNodes::start(controller.addr, &[1, 2]);
    let target = controller.addr.to_string();
    let target = ["--target", target.as_str()];

    let created = cli_json(&[&["log", "create", "replicated", "--rf", "2"][..], &target].concat());
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["replication_factor"], 2);
    let chain: Vec<u64> = serde_json::from_value(created[0]["chain"].clone()).expect("a chain");
    assert_eq!(
        chain.iter().copied().collect::<BTreeSet<u64>>(),
        [1, 2].into()
    );

    // What the replicas hold (the stand-ins are fed directly): 3 records at the head, 1 at
    // the other.
    let id = chainlog::client::log_id("replicated");
    for (node_id, records) in [(chain[0], 3), (chain[1], 1)] {
        let mut node = nodes[node_id as usize - 1].connect(0);
        node.create("replicated");
        let payloads = vec![b"r".as_slice(); records];
        node.append(&chainlog::net::AppendHeader::new(id), &payloads)
            .expect("append");
    }

    let status = cli_json(&[&["status"][..], &target].concat());
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        status.iter().filter(|v| v["kind"] == kind).collect()
    };
    let listed = of_kind("node");
    assert_eq!(listed.len(), 2, "{status:?}");
    for ((node, listed), (zone, rack)) in nodes.iter().zip(&listed).zip(labels) {
        assert_eq!(listed["addr"], node.addr(0).to_string());
        assert_eq!(
            (listed["zone"].as_str(), listed["rack"].as_str()),
            (Some(zone), Some(rack))
        );
        assert_eq!(
            (listed["shard_count"].as_u64(), listed["alive"].as_bool()),
            (Some(1), Some(true))
        );
        assert!(listed["last_heartbeat_ms"].is_u64(), "{listed}");
    }
    let logs = of_kind("log");
    assert_eq!(logs.len(), 1, "{status:?}");
    let log = logs[0];
    assert_eq!(
        (log["name"].as_str(), log["log_id"].as_u64()),
        (Some("replicated"), Some(id))
    );
    assert_eq!(log["chain"], serde_json::json!(chain));
    let replicas: Vec<(u64, u64, u64)> = log["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
            (field("node_id"), field("tail"), field("lag"))
        })
        .collect();
    assert_eq!(replicas, [(chain[0], 3, 0), (chain[1], 1, 2)]);

    let text = cli_ok(&[&["status"][..], &target].concat());
    assert!(
        text.contains(&format!("chain {} -> {}", chain[0], chain[1])),
        "{text}"
    );
    for (node_id, labels) in [
        (1, "  zone eu-west-1a  rack r17  alive"),
        (2, "  zone eu-west-1b  alive"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("node {node_id}  ")))
            .unwrap_or_else(|| panic!("node {node_id} in {text}"));
        assert!(line.contains(labels), "{line}");
    }
    assert!(text.contains("lag 2"), "{text}");

    // A replica that does not answer: status shows the rest and exits 1, naming it.
    let [first, second] = nodes;
    let (stopped, running) = if chain[1] == 1 {
        (first, second)
    } else {
        (second, first)
    };
    assert!(stopped.terminate().success());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args([&["status"][..], &target].concat())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chainlog");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "did not answer (first: log replicated at node {}: ",
            chain[1]
        )),
        "{stderr}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("node {}  tail unknown", chain[1])),
        "{text}"
    );
    drop((running, heartbeats));
    assert!(controller.terminate().success());
}

/// PROTOCOL.md 6.7 (issue 16, F5): CREATE_LOG with replication factor 0 gets the
/// controller's `--default-rf`, then follows the rules of an explicit one (a retry with the
/// same factor is the same log, another one LOG_EXISTS).
#[test]
fn replication_factor_0_is_the_controllers_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--liveness-ms", "600000", "--default-rf", "2"];
    let controller = Controller::start(&dir.path().join("controller"), &flags);
    let mut c = connect(&controller);
    for id in 1..=3 {
        c.register(id, &format!("127.0.0.1:{}", 17100 + id), 1, "", "")
            .expect("register");
    }
    let nodes = FakeNodes::start(controller.addr, &[1, 2, 3]);
    let id = c
        .create_log("defaulted", 0)
        .expect("created at the default");
    let map = c.map().expect("map");
    let log = map.log(id).expect("the log");
    assert_eq!((log.replication_factor, log.chain.len()), (2, 2));
    assert_eq!(c.create_log("defaulted", 0).expect("again"), id);
    assert_eq!(c.create_log("defaulted", 2).expect("explicitly"), id);
    match c.create_log("defaulted", 1) {
        Err(ClientError::Server(e)) => assert_eq!((e.code, e.arg0), (ErrorCode::LogExists, id)),
        other => panic!("{other:?}"),
    }
    // An explicit factor is taken as it is.
    let one = c.create_log("explicit", 1).expect("rf 1");
    assert_eq!(
        c.map()
            .expect("map")
            .log(one)
            .expect("log")
            .replication_factor,
        1
    );
    // The heartbeats stop before the controller does (a heartbeat refused by a stopping
    // controller fails the thread).
    drop((c, nodes));
    assert!(controller.terminate().success());
}

/// What a fake replica answers about the one log of a test: TAIL_HINT its (tail, epoch), SEAL
/// its tail as the end; `None`: UNKNOWN_LOG.
type Answers = Arc<Mutex<BTreeMap<u64, Option<(u64, u64)>>>>;

/// Fake replicas: each node's one shard a listener on loopback answering HELLO, SEAL and
/// TAIL_HINT from `answers`, one request per connection (as the controller calls them).
struct FakeReplicas {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FakeReplicas {
    /// Listeners for `ids`; returns them with each one's address.
    fn start(ids: &[u64], answers: &Answers) -> (FakeReplicas, BTreeMap<u64, SocketAddr>) {
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = BTreeMap::new();
        let mut threads = Vec::new();
        for &id in ids {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            addrs.insert(id, listener.local_addr().expect("addr"));
            let (stop, answers) = (stop.clone(), answers.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => serve_fake(id, stream, &answers),
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            }));
        }
        (FakeReplicas { stop, threads }, addrs)
    }
}

impl Drop for FakeReplicas {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Answers one connection of the controller's as fake node `id`.
fn serve_fake(id: u64, mut stream: std::net::TcpStream, answers: &Answers) {
    use chainlog::net::{
        decode_request, encode_error, encode_response, parse_frame, ErrorResponse, HelloResponse,
        Role, SealResponse, TailResponse, PROTOCOL_VERSION,
    };
    use std::io::{Read, Write};
    let limits = Limits::DEFAULT;
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut out = Vec::new();
        let mut consumed = 0;
        while let Ok(Some(frame)) = parse_frame(&input[consumed..], &limits) {
            consumed += frame.frame_bytes();
            let request = decode_request(&frame, &limits).expect("a request");
            let opcode = request.opcode();
            let answer = *answers.lock().expect("answers").get(&id).unwrap_or(&None);
            let response = match (request, answer) {
                (Request::Hello(_), _) => Response::Hello(HelloResponse {
                    version: PROTOCOL_VERSION,
                    shard_index: 0,
                    shard_count: 1,
                    frame_bytes_max: limits.frame_bytes_max,
                    record_bytes_max: limits.record_bytes_max,
                    batch_records_max: limits.batch_records_max,
                    node_id: id,
                    role: Role::Node,
                }),
                (Request::Seal(seal), Some((tail, _))) => Response::Seal(SealResponse {
                    log_id: seal.log_id,
                    epoch: seal.epoch,
                    end_lsn: tail,
                    trim_point: 0,
                }),
                (Request::TailHint { .. }, Some((tail, epoch))) => {
                    Response::TailHint(TailResponse {
                        tail,
                        trim_point: 0,
                        epoch,
                    })
                }
                _ => {
                    let error = ErrorResponse {
                        code: ErrorCode::UnknownLog,
                        arg0: 0,
                        arg1: 0,
                        message: "not here",
                    };
                    encode_error(&mut out, frame.request_id, Some(opcode), &error);
                    continue;
                }
            };
            encode_response(&mut out, frame.request_id, opcode, &response);
        }
        input.drain(..consumed);
        if stream.write_all(&out).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    }
}

/// The map once `done` holds for log `log_id` in it (a guard deadline, not a timing
/// assertion).
fn wait_log(
    c: &mut ControllerClient,
    log_id: u64,
    what: &str,
    done: impl Fn(&MapLog) -> bool,
) -> MapLog {
    let deadline = std::time::Instant::now() + CALL_TIMEOUT;
    loop {
        let map = c.map().expect("map");
        let log = map.log(log_id).expect("the log").clone();
        if done(&log) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never {what}: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_dead_member_is_sealed_out_and_a_learner_joins_the_tail_once_it_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("controller");
    let controller = Controller::start(&data, &["--liveness-ms", "300"]);
    let mut c = connect(&controller);
    let answers: Answers = Arc::new(Mutex::new(BTreeMap::new()));
    let ids = [1, 2, 3, 4];
    let (_replicas, addrs) = FakeReplicas::start(&ids, &answers);
    for id in ids {
        c.register(id, &addrs[&id].to_string(), 1, "", "")
            .expect("register");
    }
    let nodes = FakeNodes::start(controller.addr, &ids);
    let log_id = c.create_log("learned", 3).expect("create");
    let chain = c
        .map()
        .expect("map")
        .log(log_id)
        .expect("log")
        .chain
        .clone();
    let spare = ids
        .into_iter()
        .find(|id| !chain.contains(id))
        .expect("a spare");
    for &id in &chain {
        answers.lock().expect("answers").insert(id, Some((10, 1)));
    }
    // The head dies: the survivors carry the log on alone, and the spare learns it.
    nodes.silence(chain[0]);
    let sealed_out = wait_log(&mut c, log_id, "sealed out", |l| l.epoch == 2);
    assert_eq!(sealed_out.chain, chain[1..], "the survivors only");
    assert_eq!(sealed_out.start_lsn, 10);
    let learning = wait_log(&mut c, log_id, "a learner", |l| !l.learners.is_empty());
    assert_eq!(learning.learners, [spare]);
    assert_eq!(
        (learning.epoch, &learning.chain),
        (2, &sealed_out.chain),
        "a learner that has not copied the log is not promoted"
    );
    // It catches up (within the lag of the tail, in the current epoch): it joins at the tail.
    {
        let mut answers = answers.lock().expect("answers");
        for &id in &chain[1..] {
            answers.insert(id, Some((10, 2)));
        }
        answers.insert(spare, Some((9, 2)));
    }
    let promoted = wait_log(&mut c, log_id, "promoted", |l| l.epoch == 3);
    assert_eq!(promoted.chain, [chain[1], chain[2], spare]);
    assert!(promoted.learners.is_empty(), "{:?}", promoted.learners);
    assert_eq!(promoted.start_lsn, 10);
    drop(nodes);
    assert!(controller.terminate().success());
}
