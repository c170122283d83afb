//! The history harness, shared by tests/history (kill -9 and restart under load) and
//! tests/failover (reconfiguration under load): a standalone node, or a controller and member
//! nodes at fixed ports below the ephemeral range, that a test kills, pauses and restarts where
//! they were ([`Cluster`]); the keyed writers of `crate::workload` as the load; waits for
//! progress and for the map; a [`Watch`] on what a restarted node serves while it comes back;
//! and the end check ([`check_log`]): the log's chain settles, every node that serves the log
//! is read in full, and `chainlog::history::check` compares what was acknowledged, sent and
//! left indefinite with what they hold (the checker's header lists each check); records that a
//! node out of the chain, or a watched node, served must be those of the log.
//!
//! [`run`] is the nemesis of tests/history, in two kinds ([`Down`]): kill a chain member (by
//! its role at that moment) and restart it after a short seeded pause, or kill it and leave it
//! down for seconds, so that only a reconfiguration (a spare replacing it) restores service,
//! then restart it. Each test binary uses part of this module, hence `dead_code` is allowed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chainlog::controller::client::Client as ControllerClient;
use chainlog::history as checker;
use chainlog::net::cluster::{ClusterMap, MapLog};
use chainlog::net::{ErrorCode, Request, Response};
use chainlog::storage::SimRng;

use crate::common::{self, Controller, Node};
use crate::workload::{Load, Shape};

pub(crate) const SHARDS: u16 = 2;
/// The replication factor of a cluster's log.
pub(crate) const RF: usize = 3;
/// How long appends may stay stopped (after a restart, a failover), and how long the map
/// and the chain may take to change or settle: guards against hanging, not measurements.
pub(crate) const PROGRESS_DEADLINE: Duration = Duration::from_secs(30);
/// How long a chain may take to grow back to its length: a node that returns copies the log
/// as a learner while the load goes on (one keyed batch per round trip: tens of seconds for
/// the logs these runs grow in a debug build) before it joins. A guard, not a measurement.
pub(crate) const COPY_DEADLINE: Duration = Duration::from_secs(150);
/// Appends acknowledged after each (re)start before the next kill, so that each kill lands
/// under load.
pub(crate) const ACKS_BEFORE_KILL: u64 = 200;
/// How long unanswered appends are resent once the load stops (every process is up then),
/// and after a stall (when they are not expected to be answered).
pub(crate) const DRAIN: Duration = Duration::from_secs(30);
pub(crate) const DRAIN_STALLED: Duration = Duration::from_secs(5);
pub(crate) const SHAPE: Shape = Shape {
    writers_per_log: 6,
    in_flight: 8,
    batch_records_max: 3,
};
/// Pause between two looks at the map, a tail or a watched node.
const POLL: Duration = Duration::from_millis(20);

/// A place in a log's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Head,
    Middle,
    Tail,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Middle => "middle",
            Role::Tail => "tail",
        }
    }

    /// The node index in this place of `chain` (node indexes, head first, at least 3 for a
    /// middle).
    pub(crate) fn pick(self, chain: &[usize]) -> usize {
        match self {
            Role::Head => chain[0],
            Role::Middle => chain[1],
            Role::Tail => chain[chain.len() - 1],
        }
    }

    /// The role of the node at `position` of a chain of `len`.
    fn at(position: usize, len: usize) -> Role {
        if position == 0 {
            Role::Head
        } else if position + 1 == len {
            Role::Tail
        } else {
            Role::Middle
        }
    }
}

/// The processes under test: a standalone node, or a controller and member nodes (node `i`
/// has id `i + 1`), each at a fixed port below the ephemeral range so that it can be started
/// again where it was. A killed process's slot is empty until it is restarted.
pub(crate) struct Cluster {
    dir: PathBuf,
    controller: Option<Controller>,
    /// Where the controller listens, kept across its restarts.
    controller_addr: Option<SocketAddr>,
    nodes: Vec<Option<Node>>,
    /// Each node's shard 0 port, kept across restarts.
    ports: Vec<u16>,
}

impl Cluster {
    /// Each node's state (running or its exit status) and last log lines, and the
    /// controller's: what a stall is explained by.
    pub(crate) fn describe(&mut self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            match node {
                Some(node) => {
                    let state = node
                        .exited()
                        .map_or_else(|| "running".to_string(), |s| format!("exited: {s}"));
                    out.push_str(&format!(
                        "--- node {} ({state}), its last log lines:\n{}\n",
                        i + 1,
                        node.log_tail()
                    ));
                }
                None => out.push_str(&format!("--- node {}: down\n", i + 1)),
            }
        }
        if let Some(controller) = &self.controller {
            let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            out.push_str("--- the controller's last log lines:\n");
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// One node, no controller.
    pub(crate) fn standalone(dir: &Path) -> Cluster {
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            controller: None,
            controller_addr: None,
            nodes: Vec::new(),
            ports: Vec::new(),
        };
        cluster.add_node();
        cluster
    }

    /// A controller started with `controller_args` and `nodes` member nodes; returns once
    /// every node is alive in the map.
    pub(crate) fn start(dir: &Path, nodes: usize, controller_args: &[&str]) -> Cluster {
        let controller = Controller::start_fixed(&dir.join("controller"), controller_args);
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            controller_addr: Some(controller.addr),
            controller: Some(controller),
            nodes: Vec::new(),
            ports: Vec::new(),
        };
        for _ in 0..nodes {
            cluster.add_node();
        }
        cluster.wait_alive(nodes);
        cluster
    }

    fn add_node(&mut self) {
        let i = self.nodes.len();
        let node = self.start_node(i, None);
        self.ports.push(node.addr(0).port());
        self.nodes.push(Some(node));
    }

    /// Starts node `i`: the first time at a fixed port below the ephemeral range, then at
    /// `port`.
    fn start_node(&self, i: usize, port: Option<u16>) -> Node {
        let dir = self.node_dir(i);
        let controller = self.controller_addr.map(|a| a.to_string());
        let id = (i + 1).to_string();
        let args: Vec<&str> = match &controller {
            None => Vec::new(),
            Some(controller) => vec!["--controller", controller, "--node-id", &id],
        };
        match port {
            None => Node::start_fixed(&dir, SHARDS, &args),
            Some(port) => Node::start_with(&dir, SHARDS, Some(port), &args),
        }
    }

    /// A client of the controller (which must be running).
    pub(crate) fn controller(&self) -> ControllerClient {
        let addr = self.controller_addr.expect("a cluster");
        ControllerClient::connect(addr, Duration::from_secs(30)).expect("controller")
    }

    /// The map, or why it could not be had (the controller is down or restarting).
    pub(crate) fn try_map(&self) -> Result<ClusterMap, String> {
        let addr = self.controller_addr.expect("a cluster");
        let mut client =
            ControllerClient::connect(addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        client.map().map_err(|e| e.to_string())
    }

    /// The current map of `log_id`.
    pub(crate) fn log(&self, log_id: u64) -> MapLog {
        let map = self.try_map().expect("the map");
        map.log(log_id).expect("the log is in the map").clone()
    }

    /// Waits until the map's entry of `log_id` is as `wanted` says (`what` names it for the
    /// error), looking again while the controller is unreachable; the error says what the
    /// map held at the deadline.
    pub(crate) fn wait_log(
        &self,
        log_id: u64,
        what: &str,
        wanted: impl Fn(&MapLog) -> bool,
    ) -> Result<MapLog, String> {
        self.wait_log_within(log_id, what, PROGRESS_DEADLINE, wanted)
    }

    /// As [`wait_log`](Self::wait_log), for at most `deadline`.
    pub(crate) fn wait_log_within(
        &self,
        log_id: u64,
        what: &str,
        deadline: Duration,
        wanted: impl Fn(&MapLog) -> bool,
    ) -> Result<MapLog, String> {
        let end = Instant::now() + deadline;
        loop {
            let last = match self.try_map() {
                Ok(map) => match map.log(log_id) {
                    Some(log) if wanted(log) => return Ok(log.clone()),
                    Some(log) => format!("{log:?}"),
                    None => "the log is not in the map".into(),
                },
                Err(e) => e,
            };
            if Instant::now() >= end {
                return Err(format!(
                    "log {log_id:x}: {what}: not within {deadline:?}; last seen: {last}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the map shows `n` live nodes.
    pub(crate) fn wait_alive(&self, n: usize) -> ClusterMap {
        let end = Instant::now() + PROGRESS_DEADLINE;
        loop {
            if let Ok(map) = self.try_map() {
                if map.nodes().iter().filter(|node| node.alive).count() == n {
                    return map;
                }
                assert!(Instant::now() < end, "{n} nodes never alive: {map:?}");
            }
            assert!(Instant::now() < end, "the controller never answered");
            std::thread::sleep(POLL);
        }
    }

    /// Where clients connect: the controller, or the standalone node.
    pub(crate) fn target(&self) -> SocketAddr {
        match self.controller_addr {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], self.ports[0])),
        }
    }

    /// Node `i`'s shard that owns `log_id`.
    pub(crate) fn addr(&self, i: usize, log_id: u64) -> SocketAddr {
        let shard = (log_id % u64::from(SHARDS)) as u16;
        SocketAddr::from(([127, 0, 0, 1], self.ports[i] + shard))
    }

    /// Node `i`, which must be running.
    pub(crate) fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("a running node")
    }

    /// Node `i`'s data directory.
    pub(crate) fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{}", i + 1))
    }

    /// The nodes running now.
    pub(crate) fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    pub(crate) fn kill9(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("a running node");
        node.kill9();
    }

    /// SIGTERM: the node finishes what it can (its writes durable) and exits.
    pub(crate) fn terminate(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("a running node");
        let status = node.terminate();
        assert!(status.success(), "node {} stopped with {status}", i + 1);
    }

    /// Starts node `i` again on its data directory, at its port.
    pub(crate) fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {} is running", i + 1);
        let node = self.start_node(i, Some(self.ports[i]));
        self.nodes[i] = Some(node);
    }

    pub(crate) fn kill9_controller(&mut self) {
        let controller = self.controller.take().expect("a running controller");
        controller.kill9();
    }

    pub(crate) fn terminate_controller(&mut self) {
        let controller = self.controller.take().expect("a running controller");
        assert!(controller.terminate().success(), "the controller's stop");
    }

    /// Starts the controller again on its data directory, at its address, with `args`.
    pub(crate) fn restart_controller(&mut self, args: &[&str]) {
        assert!(self.controller.is_none(), "the controller is running");
        let addr = self.controller_addr.expect("a cluster").to_string();
        let controller = Controller::start_on(&self.dir.join("controller"), &addr, args);
        self.controller = Some(controller);
    }

    /// What the report calls node `i`, by its place in `chain` (node ids).
    fn name(i: usize, chain: &[u64]) -> String {
        let id = i as u64 + 1;
        match chain.iter().position(|&n| n == id) {
            Some(p) => format!("node {id} ({})", Role::at(p, chain.len()).name()),
            None => format!("node {id} (out of the chain)"),
        }
    }
}

/// A chain as node indexes, head first.
pub(crate) fn indexes(log: &MapLog) -> Vec<usize> {
    log.chain.iter().map(|&id| id as usize - 1).collect()
}

/// Waits until `n` more appends were acknowledged; false if they were not within
/// [`PROGRESS_DEADLINE`].
pub(crate) fn progress(load: &Load, n: u64) -> bool {
    let target = load.acked() + n;
    let end = Instant::now() + PROGRESS_DEADLINE;
    while load.acked() < target {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The committed tail and epoch node `addr` reports for `log_id` (TAIL_HINT), or its refusal.
fn tail_hint(addr: SocketAddr, log_id: u64) -> Result<(u64, u64), ErrorCode> {
    common::Client::connect(addr).call(&Request::TailHint { log_id }, |r| match r {
        Response::TailHint(t) => Ok((t.tail, t.epoch)),
        Response::Error(e) => Err(e.code),
        other => panic!("TAIL_HINT at {addr}: {other:?}"),
    })
}

/// Waits until every replica at `addrs` reports the same committed tail twice in a row, in
/// `epoch` if given (the map's: a node that has not installed it yet may still change), at
/// most [`PROGRESS_DEADLINE`]; replicas that still differ then are reported by the checker.
fn settle(addrs: &[SocketAddr], log_id: u64, epoch: Option<u64>) {
    let end = Instant::now() + PROGRESS_DEADLINE;
    let mut last = Vec::new();
    while Instant::now() < end {
        let tails: Vec<Result<(u64, u64), ErrorCode>> =
            addrs.iter().map(|&addr| tail_hint(addr, log_id)).collect();
        let agreed = tails.iter().all(|t| {
            t.as_ref()
                .is_ok_and(|&(_, e)| epoch.is_none_or(|want| e == want))
        });
        if agreed && tails.windows(2).all(|w| w[0] == w[1]) && tails == last {
            return;
        }
        last = tails;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every record node `addr` serves of `log_id`, READ by READ from LSN 0, and the committed
/// tail it reports; or its refusal (e.g. UNKNOWN_LOG: the node holds no replica of it).
pub(crate) fn read_log(addr: SocketAddr, log_id: u64) -> Result<common::ReadAnswer, ErrorCode> {
    common::Client::connect(addr).read_all(log_id, 0)
}

/// A log's records from LSN 0 as the end check holds them: (LSN, payload), a payload shared
/// between replicas that hold the same bytes.
pub(crate) type Log = Vec<(u64, Arc<[u8]>)>;

/// Reads a replica of `log_id` at `addr` in full: (tail, records). A record with the same
/// bytes as `like`'s at its LSN shares its payload, so replicas that agree cost one copy.
fn read_replica(
    addr: SocketAddr,
    log_id: u64,
    like: Option<&Log>,
) -> Result<(u64, Log), ErrorCode> {
    let mut records = Log::new();
    let tail = common::Client::connect(addr).read_each(log_id, 0, &mut |batch| {
        for (lsn, bytes) in batch {
            let same = like
                .and_then(|l| l.get(lsn as usize))
                .filter(|(at, p)| *at == lsn && **p == *bytes);
            let payload = same.map_or_else(|| bytes.into(), |(_, p)| Arc::clone(p));
            records.push((lsn, payload));
        }
    })?;
    Ok((tail, records))
}

/// The (LSN, record) pairs of a READ, as a [`Watch`] remembers them.
fn seen_of(batch: Vec<(u64, Vec<u8>)>) -> impl Iterator<Item = (u64, (u32, usize, String))> {
    batch.into_iter().map(|(lsn, payload)| {
        let start = String::from_utf8_lossy(&payload[..payload.len().min(32)]).into_owned();
        (lsn, (crc32c::crc32c(&payload), payload.len(), start))
    })
}

/// What a node served while a [`Watch`] looked: per LSN, each distinct record (its CRC32C,
/// length and first bytes).
type Seen = BTreeMap<u64, Vec<(u32, usize, String)>>;

/// Reads a log at one node again and again (from LSN 0 up as it grows), from the moment it
/// was (re)started until [`Watch::finish`], and remembers every record it served: a node
/// coming back must never serve a record that is not the log's (a suffix of an epoch it was
/// sealed out of, records it holds before it caught up).
pub(crate) struct Watch {
    name: String,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Watch {
    /// Starts watching `log_id` at `addr` (a running node), called `name` in reports.
    pub(crate) fn start(addr: SocketAddr, log_id: u64, name: String) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut client = common::Client::connect(addr);
            let mut seen = Seen::new();
            let mut next = 0;
            while !stopped.load(Ordering::Relaxed) {
                match client.read(log_id, next) {
                    Ok((tail, records)) => {
                        if records.is_empty() {
                            // Served less than before (the log started again here): look
                            // again from the start.
                            if tail < next {
                                next = 0;
                            }
                            std::thread::sleep(POLL);
                        }
                        for (lsn, record) in seen_of(records) {
                            let at = seen.entry(lsn).or_default();
                            if !at.contains(&record) {
                                at.push(record);
                            }
                            next = lsn + 1;
                        }
                    }
                    Err(_) => {
                        // Not served here now (no replica of it yet, or any more).
                        next = 0;
                        std::thread::sleep(POLL);
                    }
                }
            }
            seen
        });
        Watch { name, stop, thread }
    }

    /// Stops watching; what was served.
    pub(crate) fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.join().map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        Watched {
            name: self.name,
            seen,
        }
    }
}

/// What a finished [`Watch`] saw (or why it failed).
pub(crate) struct Watched {
    name: String,
    seen: Result<Seen, String>,
}

impl Watched {
    /// Records served in all.
    pub(crate) fn records(&self) -> usize {
        self.seen
            .as_ref()
            .map_or(0, |seen| seen.values().map(Vec::len).sum())
    }

    /// What it served that is not the log's `log` (its records from LSN 0), or why the watch
    /// failed, one line each.
    pub(crate) fn wrong<P: AsRef<[u8]>>(&self, log: &[(u64, P)]) -> Vec<String> {
        match &self.seen {
            Ok(seen) => served_wrong(&self.name, seen, log),
            Err(panic) => vec![format!("the watch of {} failed: {panic}", self.name)],
        }
    }
}

/// The report lines for records `what` served that are not the log's `log` (its records
/// from LSN 0, as its chain serves them at the end).
fn served_wrong<P: AsRef<[u8]>>(what: &str, served: &Seen, log: &[(u64, P)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (&lsn, records) in served {
        for record @ (_, len, start) in records {
            if differs(log, lsn, record) {
                wrong.push(format!(
                    "{what} served LSN {lsn} as {start:?}.. ({len} bytes), which the log {}",
                    match log.get(lsn as usize).map(|(_, p)| p.as_ref()) {
                        Some(p) => format!(
                            "holds as {:?}..",
                            String::from_utf8_lossy(&p[..p.len().min(32)])
                        ),
                        None => "does not hold".to_string(),
                    }
                ));
            }
        }
    }
    wrong
}

/// Whether `record` (as a [`Watch`] remembers one) is not what `log` holds at `lsn`.
fn differs<P: AsRef<[u8]>>(
    log: &[(u64, P)],
    lsn: u64,
    (crc, len, _): &(u32, usize, String),
) -> bool {
    log.get(lsn as usize)
        .map(|(_, p)| (crc32c::crc32c(p.as_ref()), p.as_ref().len()))
        != Some((*crc, *len))
}

/// The end check of `log_id` after the load stopped: waits until the chain is back at its
/// replication factor (or as long as the running nodes allow) and settled, reads every
/// running node in full, checks the history `ops` against the chain's replicas, and checks
/// that nodes out of the chain and `watched` nodes served only the log's records. Prints a
/// summary; returns the report (empty if nothing is wrong) and the chain's records.
pub(crate) fn check_log(
    cluster: &Cluster,
    log_id: u64,
    ops: &[checker::Op<Instant>],
    watched: &[Watched],
) -> (String, Log) {
    let mut report = String::new();
    let running = cluster.running();
    let (chain, members, epoch) = match cluster.controller_addr {
        None => (vec![1], vec![0], None),
        Some(_) => {
            let want = RF.min(running.len());
            let log = cluster
                .wait_log_within(
                    log_id,
                    "a chain of running nodes at full length",
                    COPY_DEADLINE,
                    |l| {
                        l.chain.len() == want
                            && l.chain
                                .iter()
                                .all(|&id| running.contains(&(id as usize - 1)))
                    },
                )
                .unwrap_or_else(|e| {
                    report.push_str(&format!("  {e}\n"));
                    cluster.log(log_id)
                });
            let members = indexes(&log)
                .into_iter()
                .filter(|i| running.contains(i))
                .collect();
            (log.chain, members, Some(log.epoch))
        }
    };
    let addrs: Vec<SocketAddr> = members.iter().map(|&i| cluster.addr(i, log_id)).collect();
    settle(&addrs, log_id, epoch);
    let mut replicas = Vec::new();
    for &i in &members {
        let name = Cluster::name(i, &chain);
        let like = replicas.first().map(|r: &checker::Replica| &r.records);
        match read_replica(cluster.addr(i, log_id), log_id, like) {
            Ok((tail, records)) => replicas.push(checker::Replica {
                name,
                trim_point: 0,
                tail,
                records,
            }),
            Err(code) => report.push_str(&format!("  {name} does not serve the log: {code:?}\n")),
        }
    }
    let anomalies = checker::check(log_id, ops, &replicas, &[]);
    if !anomalies.is_empty() {
        report.push_str(&checker::report(&anomalies, 5));
    }
    let log = replicas
        .first()
        .map(|r| r.records.clone())
        .unwrap_or_default();
    // Nodes out of the chain hold no replica (or one that serves only the log's records).
    let mut wrong = Vec::new();
    for i in running.into_iter().filter(|i| !members.contains(i)) {
        let name = Cluster::name(i, &chain);
        let mut client = common::Client::connect(cluster.addr(i, log_id));
        let mut served = Seen::new();
        match client.read_each(log_id, 0, &mut |batch| {
            // Only what differs is kept: the log's records are held once already.
            for (lsn, record) in seen_of(batch) {
                if differs(&log, lsn, &record) {
                    served.entry(lsn).or_default().push(record);
                }
            }
        }) {
            Ok(_) => wrong.extend(served_wrong(&name, &served, &log)),
            Err(ErrorCode::UnknownLog) => {}
            Err(code) => wrong.push(format!("{name} answered a READ with {code:?}")),
        }
    }
    for w in watched {
        wrong.extend(w.wrong(&log));
    }
    if !wrong.is_empty() {
        report.push_str(&format!(
            "  served what the log does not hold: {}\n",
            wrong.len()
        ));
        for line in wrong.iter().take(5) {
            report.push_str(&format!("    {line}\n"));
        }
    }
    let acked = ops
        .iter()
        .filter(|op| matches!(op.outcome, checker::Outcome::Acked { .. }))
        .count();
    println!(
        "  log {log_id:x}: {} appends, {acked} acknowledged, {} indefinite; chain {chain:?}; \
         committed tails {}; {} watched records; {} anomalies",
        ops.len(),
        ops.len() - acked,
        replicas
            .iter()
            .map(|r| format!("{} {}", r.name, r.tail))
            .collect::<Vec<_>>()
            .join(", "),
        watched.iter().map(Watched::records).sum::<usize>(),
        anomalies.len() + wrong.len()
    );
    (report, log)
}

/// What a run's victim is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Victim {
    /// The only node, standalone.
    Standalone,
    /// The chain member in this place when the kill lands.
    Chain(Role),
}

impl Victim {
    fn name(self) -> &'static str {
        match self {
            Victim::Standalone => "standalone node",
            Victim::Chain(role) => role.name(),
        }
    }
}

/// How long a killed node stays down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Down {
    /// 100 ms to 1.5 s (seeded).
    Brief,
    /// This long: the log must be reconfigured around it (back at its replication factor
    /// with a spare that learned the log) and take appends again before it returns.
    For(Duration),
}

/// One run's settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) victim: Victim,
    pub(crate) kills: usize,
    pub(crate) seed: u64,
    /// Member nodes (a cluster run).
    pub(crate) nodes: usize,
    pub(crate) down: Down,
}

impl Settings {
    /// The CI run: a few kills with brief pauses, 3 nodes (HISTORY_SEED, default 1).
    pub(crate) fn short(victim: Victim) -> Settings {
        Settings {
            victim,
            kills: 3,
            seed: env_u64("HISTORY_SEED").unwrap_or(1),
            nodes: 3,
            down: Down::Brief,
        }
    }

    /// The long run: HISTORY_KILLS kills (else `kills`).
    pub(crate) fn long(victim: Victim, kills: usize) -> Settings {
        Settings {
            kills: env_u64("HISTORY_KILLS").map_or(kills, |k| k as usize),
            ..Settings::short(victim)
        }
    }

    /// Failover: 4 nodes (a spare), the victim down for `down` after each of `kills` kills
    /// (HISTORY_KILLS overrides).
    pub(crate) fn failover(role: Role, kills: usize, down: Duration) -> Settings {
        Settings {
            nodes: 4,
            down: Down::For(down),
            ..Settings::long(Victim::Chain(role), kills)
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

/// Creates the run's logs: one per shard on a standalone node, one rf-3 log in a cluster.
fn create_logs(cluster: &Cluster) -> Vec<u64> {
    if cluster.controller_addr.is_some() {
        let log_id = cluster
            .controller()
            .create_log("history", RF as u8)
            .expect("create");
        assert_eq!(cluster.log(log_id).chain.len(), RF, "distinct replicas");
        return vec![log_id];
    }
    let mut logs: Vec<u64> = Vec::new();
    for n in 0.. {
        let name = format!("history-{n}");
        let log_id = chainlog::client::log_id(&name);
        if logs
            .iter()
            .any(|id| id % u64::from(SHARDS) == log_id % u64::from(SHARDS))
        {
            continue;
        }
        let created = common::Client::connect(cluster.addr(0, log_id)).create(&name);
        assert_eq!(created, log_id);
        logs.push(log_id);
        if logs.len() == usize::from(SHARDS) {
            break;
        }
    }
    logs
}

/// Runs the load and the nemesis as `settings` say, then checks every log; returns the
/// report (empty if nothing is wrong) after printing what the run did.
pub(crate) fn run(settings: Settings) -> String {
    let started = Instant::now();
    let Settings {
        victim,
        kills,
        seed,
        nodes,
        down,
    } = settings;
    println!(
        "history: {kills} kill -9s of the {} ({down:?} down; seed {seed}; HISTORY_SEED={seed} \
         replays the nemesis's choices)",
        victim.name()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = match victim {
        Victim::Standalone => Cluster::standalone(dir.path()),
        Victim::Chain(_) => Cluster::start(dir.path(), nodes, &[]),
    };
    let logs = create_logs(&cluster);
    let load = Load::start(cluster.target(), &logs, SHAPE, seed);

    let mut rng = SimRng::new(seed);
    let mut stalls = Vec::new();
    let mut watches: Vec<Watch> = Vec::new();
    let mut watched = Vec::new();
    for k in 1..=kills {
        if !progress(&load, ACKS_BEFORE_KILL) {
            stalls.push(format!(
                "no {ACKS_BEFORE_KILL} appends acknowledged within {PROGRESS_DEADLINE:?} \
                 before kill {k}"
            ));
            break;
        }
        let (node, before) = match victim {
            Victim::Standalone => (0, None),
            Victim::Chain(role) => {
                match cluster.wait_log_within(
                    logs[0],
                    "a full chain before a kill",
                    COPY_DEADLINE,
                    |l| l.chain.len() == RF,
                ) {
                    Ok(log) => (role.pick(&indexes(&log)), Some(log)),
                    Err(e) => {
                        stalls.push(e);
                        break;
                    }
                }
            }
        };
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        watched.extend(watches.drain(..).map(Watch::finish));
        cluster.kill9(node);
        match (down, before) {
            (Down::For(down), Some(before)) => {
                let killed = Instant::now();
                let id = node as u64 + 1;
                // The spare copies the log as a learner before it joins: as long as a
                // chain growing back may take.
                let replaced = cluster.wait_log_within(
                    logs[0],
                    &format!("a chain of {RF} without node {id}"),
                    COPY_DEADLINE,
                    |l| l.epoch > before.epoch && l.chain.len() == RF && !l.chain.contains(&id),
                );
                match replaced {
                    Ok(log) => println!(
                        "  kill {k}: node {id} ({}) of epoch {} {:?}; epoch {} {:?} from \
                         LSN {}",
                        victim.name(),
                        before.epoch,
                        before.chain,
                        log.epoch,
                        log.chain,
                        log.start_lsn
                    ),
                    Err(e) => {
                        stalls.push(e);
                        break;
                    }
                }
                if !progress(&load, ACKS_BEFORE_KILL) {
                    stalls.push(format!(
                        "no {ACKS_BEFORE_KILL} appends acknowledged within \
                         {PROGRESS_DEADLINE:?} after node {id} was replaced"
                    ));
                    break;
                }
                std::thread::sleep((killed + down).saturating_duration_since(Instant::now()));
            }
            _ => std::thread::sleep(Duration::from_millis(100 + rng.below(1400))),
        }
        cluster.restart(node);
        if victim != Victim::Standalone {
            let name = format!("node {} restarted after kill {k}", node + 1);
            watches.push(Watch::start(cluster.addr(node, logs[0]), logs[0], name));
        }
    }
    if stalls.is_empty() && !progress(&load, ACKS_BEFORE_KILL) {
        stalls.push(format!(
            "no {ACKS_BEFORE_KILL} appends acknowledged within {PROGRESS_DEADLINE:?} after the \
             last restart"
        ));
    }
    let history = load.finish(if stalls.is_empty() {
        DRAIN
    } else {
        DRAIN_STALLED
    });
    watched.extend(watches.drain(..).map(Watch::finish));

    let mut report = String::new();
    for stall in &stalls {
        report.push_str(&format!("  stalled: {stall}\n"));
    }
    for (&log_id, ops) in logs.iter().zip(&history.ops) {
        let (found, _) = check_log(&cluster, log_id, ops, &watched);
        if !found.is_empty() {
            report.push_str(&format!("  log {log_id:x}:\n{found}"));
        }
    }
    if !report.is_empty() {
        println!("{}", cluster.describe());
    }
    println!("  errors seen by the writers: {:?}", history.errors);
    println!("  took {:.1} s", started.elapsed().as_secs_f64());
    if !report.is_empty() {
        println!(
            "ANOMALIES ({kills} kill -9s of the {}):\n{report}",
            victim.name()
        );
    }
    report
}

/// Runs `settings` and fails on any anomaly or stall.
pub(crate) fn run_and_check(settings: Settings) {
    let report = run(settings);
    assert!(
        report.is_empty(),
        "{} kill -9s of the {} (seed {}):\n{report}",
        settings.kills,
        settings.victim.name(),
        settings.seed
    );
}
