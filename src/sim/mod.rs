//! The whole cluster in one thread, from a seed: real shards (the node's own code, generic over
//! its environment) on simulated disks and a simulated network, writers appending through the
//! wire protocol, and a fault schedule; at the end every replica is read back and the history
//! is checked. A failing run names its seed, and the same seed replays it exactly (the run's
//! trace hash says so).
//!
//! What is simulated (ARCHITECTURE.md, "The simulator"): the disk of each node (latency, lost
//! unflushed writes and a torn write on power loss, EIO), the network between hosts (latency,
//! short sends, partitions in one or both directions, connection resets, hosts that die or
//! stop), process crashes (kill -9, power loss), pauses (SIGSTOP) and restarts. The map comes
//! from the controller's pure state ([`crate::controller::state`]); the control thread, the
//! clock skew of separate machines and bit flips at rest are not simulated yet.
//!
//! The checks ([`crate::history`]): no acknowledged record lost or moved, no LSN with two
//! values on two replicas (committed or not), dense LSNs, no record at two LSNs, no record that
//! was never sent, indefinite batches present whole or not at all, real-time order, a batch
//! acknowledged twice only at the same LSNs; and liveness: once the faults stop, every writer's
//! batches are acknowledged within a bounded (virtual) time, and the replicas agree byte for
//! byte.

mod client;
mod env;
mod node;
mod world;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use chainlog_storage::{Clock, FatalPanic, SimDisk, SimRng};

use crate::controller::ClusterState;
use crate::history::{self, Outcome, Replica};
use crate::node::control::MapUpdate;
use client::Writer;
use env::Shared;
use node::{SimNode, StartFailure};
use world::{NetConfig, World};

/// What a run simulates.
#[derive(Clone, Debug)]
pub struct Options {
    /// Cluster nodes.
    pub nodes: usize,
    /// Shards per node.
    pub shards: u16,
    /// Logs, each of replication factor `rf`.
    pub logs: usize,
    /// Replicas per log.
    pub rf: u8,
    /// Writers per log.
    pub writers: usize,
    /// Virtual time with load and faults, microseconds.
    pub active_us: u64,
    /// Virtual time the cluster has, once faults stop, to acknowledge every batch and agree.
    pub settle_us: u64,
    /// Inject faults.
    pub faults: bool,
    /// A deliberately broken node, to show the checks bite (see [`Canary`]).
    pub canary: Option<Canary>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 3,
            shards: 1,
            logs: 2,
            rf: 3,
            writers: 2,
            active_us: 1_500_000,
            settle_us: 20_000_000,
            faults: true,
            canary: None,
        }
    }
}

/// A bug put in on purpose, which the checks must catch within a few hundred seeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canary {
    /// A restarted head sequences at once, without settling with its chain (the safety bug
    /// of issue 10).
    HeadSkipsSettling,
}

/// Faults injected in a run, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// kill -9 of a node's process.
    pub kills: u64,
    /// Power loss of a node's machine (unflushed writes lost, one torn).
    pub power_losses: u64,
    /// SIGSTOP of a node for a while.
    pub pauses: u64,
    /// A node restarted with a failing disk (it stops on the first EIO).
    pub disk_errors: u64,
    /// Fatal storage errors that stopped a node.
    pub fatal_stops: u64,
    /// Connections reset.
    pub resets: u64,
    /// Partitions (one direction or both, between two hosts).
    pub partitions: u64,
}

impl std::ops::AddAssign for FaultCounts {
    fn add_assign(&mut self, o: FaultCounts) {
        self.kills += o.kills;
        self.power_losses += o.power_losses;
        self.pauses += o.pauses;
        self.disk_errors += o.disk_errors;
        self.fatal_stops += o.fatal_stops;
        self.resets += o.resets;
        self.partitions += o.partitions;
    }
}

/// What a run did and found.
#[derive(Clone, Debug)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// A hash of every event of the run: equal for two runs of one seed.
    pub trace: u64,
    /// Virtual time simulated, microseconds.
    pub simulated_us: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Batches acknowledged, and batches whose outcome stayed unknown.
    pub acked: u64,
    /// Batches whose outcome stayed unknown.
    pub indefinite: u64,
    /// Everything the checks found wrong (empty: the run is correct).
    pub violations: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} violation(s), {} batches acknowledged, {} indefinite, {:.2} s simulated, \
             faults {:?}, trace {:016x}",
            self.seed,
            self.violations.len(),
            self.acked,
            self.indefinite,
            self.simulated_us as f64 / 1e6,
            self.faults,
            self.trace
        )?;
        for v in self.violations.iter().take(20) {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// A scheduled action of the run.
#[derive(Clone, Copy, Debug)]
enum Action {
    Restart { node: usize },
    Heal,
}

struct Sim {
    world: Shared,
    clock: Arc<dyn Clock>,
    seed: u64,
    options: Options,
    nodes: Vec<SimNode>,
    map: MapUpdate,
    /// The logs, and each one's chain (node indexes).
    logs: Vec<(u64, Vec<usize>)>,
    writers: Vec<Writer>,
    /// When each writer invokes its next batch.
    next_invoke: Vec<u64>,
    rng: SimRng,
    actions: BTreeMap<u64, Action>,
    faults: FaultCounts,
    violations: Vec<String>,
}

/// What [`run_seeds`] found.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub runs: u64,
    /// Virtual time simulated, microseconds, in all.
    pub simulated_us: u64,
    /// Faults injected, in all.
    pub faults: FaultCounts,
    /// Batches acknowledged, in all.
    pub acked: u64,
    /// The runs that found something wrong.
    pub failures: Vec<Report>,
}

/// Runs `count` seeds from `from` on `threads` threads (each run is one thread's, start to
/// end), calling `progress` after each run with the summary so far.
pub fn run_seeds(
    from: u64,
    count: u64,
    options: &Options,
    threads: usize,
    progress: &(dyn Fn(&Summary) + Sync),
) -> Summary {
    let next = std::sync::atomic::AtomicU64::new(from);
    let summary = std::sync::Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= from + count {
                    return;
                }
                let report = run(seed, options);
                let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
                s.runs += 1;
                s.simulated_us += report.simulated_us;
                s.faults += report.faults;
                s.acked += report.acked;
                if !report.violations.is_empty() {
                    s.failures.push(report);
                }
                progress(&s);
            });
        }
    });
    let mut summary = summary.into_inner().unwrap_or_else(|e| e.into_inner());
    summary.failures.sort_by_key(|r| r.seed);
    summary
}

/// Keeps the panics a simulated fatal error raises (caught: the simulated process stops)
/// out of the output; every other panic is reported as usual.
fn quiet_fatal_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<FatalPanic>().is_none() {
                previous(info);
            }
        }));
    });
}

/// Runs one simulation from `seed`.
pub fn run(seed: u64, options: &Options) -> Report {
    quiet_fatal_panics();
    chainlog_storage::fatal_panics(true);
    crate::replication::canary_skip_settling(options.canary == Some(Canary::HeadSkipsSettling));
    let world = Rc::new(RefCell::new(World::new(
        seed,
        NetConfig {
            latency_us: (20, 400),
            short_send_one_in: 7,
        },
    )));
    let clock: Arc<dyn Clock> = Arc::new(world.borrow().clock.clone());
    let mut state = ClusterState::default();
    let now = Instant::now();
    let mut nodes = Vec::new();
    for i in 0..options.nodes {
        let disk = SimDisk::with_clock(world.borrow().clock.clone());
        let node = SimNode::new(i as u64 + 1, options.shards, disk);
        state
            .register(node.id, &node.addr.to_string(), options.shards, now)
            .expect("a valid node");
        nodes.push(node);
    }
    let mut logs = Vec::new();
    for l in 0..options.logs {
        let created = state
            .create_log(&format!("log-{l}"), options.rf, now)
            .expect("enough nodes");
        let chain = state
            .log(created.log_id)
            .expect("created")
            .current()
            .chain
            .iter()
            .map(|&id| id as usize - 1)
            .collect();
        logs.push((created.log_id, chain));
    }
    let map = MapUpdate::of(state.map(now));
    let mut writers = Vec::new();
    for (l, &(log_id, _)) in logs.iter().enumerate() {
        for w in 0..options.writers {
            let id = (l * 100 + w + 1) as u64;
            writers.push(Writer::new(&mut world.borrow_mut(), id, log_id, 4));
        }
    }
    let mut sim = Sim {
        next_invoke: vec![0; writers.len()],
        world,
        clock,
        seed,
        options: options.clone(),
        nodes,
        map,
        logs,
        writers,
        rng: SimRng::new(seed ^ 0x5eed),
        actions: BTreeMap::new(),
        faults: FaultCounts::default(),
        violations: Vec::new(),
    };
    sim.start_all();
    sim.run();
    chainlog_storage::fatal_panics(false);
    crate::replication::canary_skip_settling(false);
    let simulated_us = sim.now();
    let trace = sim.world.borrow().trace_hash();
    let (acked, indefinite) = sim.outcomes();
    Report {
        seed,
        trace,
        simulated_us,
        faults: sim.faults,
        acked,
        indefinite,
        violations: sim.violations,
    }
}

impl Sim {
    fn now(&self) -> u64 {
        self.clock.monotonic_us()
    }

    fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.down.is_none() {
            return;
        }
        let seed = self.seed;
        match node.start(&self.world, self.clock.clone(), &self.map, seed) {
            Ok(()) => {}
            Err(StartFailure::Disk(reason)) => self.stopped(i, &reason),
            Err(StartFailure::Refused(reason)) => self
                .violations
                .push(format!("node {} does not start: {reason}", node.id)),
        }
    }

    /// Node `i`'s process stopped on a fatal storage error, as in production: it restarts a
    /// little later, on a good disk.
    fn stopped(&mut self, i: usize, reason: &str) {
        self.faults.fatal_stops += 1;
        tracing::debug!(node = self.nodes[i].id, reason, "simulated node stopped");
        self.nodes[i].kill(&self.world, None);
        self.nodes[i].eio_one_in = 0;
        let at = self.now() + 10_000 + self.rng.below(100_000);
        self.schedule(at, Action::Restart { node: i });
    }

    fn schedule(&mut self, at_us: u64, action: Action) {
        let mut at = at_us;
        while self.actions.contains_key(&at) {
            at += 1;
        }
        self.actions.insert(at, action);
    }

    /// The run: load and faults for `active_us`, then no faults until every batch is answered
    /// and the replicas agree (or `settle_us` ran out: a liveness failure).
    fn run(&mut self) {
        let active_end = self.options.active_us;
        let deadline = active_end + self.options.settle_us;
        let mut next_fault = if self.options.faults {
            50_000
        } else {
            u64::MAX
        };
        let mut healed = false;
        loop {
            let now = self.now();
            if now >= active_end && !healed {
                self.heal_everything();
                healed = true;
            }
            if now >= next_fault && now < active_end {
                self.inject_fault();
                next_fault = now + 20_000 + self.rng.below(200_000);
            }
            while let Some((&at, &action)) = self.actions.iter().next() {
                if at > now {
                    break;
                }
                self.actions.remove(&at);
                self.act(action);
            }
            self.world.borrow_mut().run_due();
            let mut progress = false;
            for i in 0..self.nodes.len() {
                match self.nodes[i].step(now) {
                    Ok(ran) => progress |= ran,
                    Err(reason) => self.stopped(i, &reason),
                }
            }
            self.drive_writers(now, now < active_end);
            if healed && self.settled() {
                return;
            }
            if now >= deadline {
                let pending: usize = self.writers.iter().map(Writer::pending).sum();
                self.violations.push(format!(
                    "liveness: {} s after the faults stopped, {pending} batch(es) are unanswered",
                    self.options.settle_us / 1_000_000
                ));
                let logs = self.logs.clone();
                for (log_id, chain) in &logs {
                    for &i in chain {
                        let id = self.nodes[i].id;
                        let state = self.nodes[i]
                            .shard_of(*log_id)
                            .map_or("down".into(), |s| s.describe(*log_id));
                        self.violations
                            .push(format!("  log {log_id} on node {id}: {state}"));
                    }
                }
                return;
            }
            if progress
                || self
                    .world
                    .borrow()
                    .next_event_us()
                    .is_some_and(|t| t <= now)
            {
                continue;
            }
            // Nothing more happens now: move to the next time something does.
            let mut next = deadline;
            if let Some(t) = self.world.borrow().next_event_us() {
                next = next.min(t);
            }
            for node in &self.nodes {
                if let Some(t) = node.next_us() {
                    next = next.min(t);
                }
            }
            if let Some((&t, _)) = self.actions.iter().next() {
                next = next.min(t);
            }
            if now < active_end {
                next = next.min(next_fault).min(active_end);
                for &t in &self.next_invoke {
                    next = next.min(t);
                }
            }
            next = next.min(now + 5_000); // writers' timers (retries, timeouts)
            self.world.borrow().clock.advance_to(next.max(now + 1));
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Restart { node } => self.start(node),
            Action::Heal => self.world.borrow_mut().heal(),
        }
    }

    fn drive_writers(&mut self, now: u64, active: bool) {
        for w in 0..self.writers.len() {
            if active && now >= self.next_invoke[w] {
                let records = 1 + self.rng.below(3) as u32;
                self.writers[w].invoke(now, records);
                self.next_invoke[w] = now + 1_000 + self.rng.below(20_000);
            }
            let log_id = self.writers[w].log_id;
            let head = self
                .logs
                .iter()
                .find(|(id, _)| *id == log_id)
                .map(|(_, chain)| chain[0])
                .expect("a writer's log");
            let addr = self.nodes[head].addr_of(log_id);
            self.writers[w].step(&mut self.world.borrow_mut(), addr);
        }
    }

    fn inject_fault(&mut self) {
        let n = self.nodes.len() as u64;
        let now = self.now();
        let node = self.rng.below(n) as usize;
        match self.rng.below(100) {
            0..=24 => {
                if self.nodes[node].down.is_none() {
                    self.faults.kills += 1;
                    self.nodes[node].kill(&self.world, None);
                    let at = now + 5_000 + self.rng.below(300_000);
                    self.schedule(at, Action::Restart { node });
                }
            }
            25..=39 => {
                if self.nodes[node].down.is_none() {
                    self.faults.power_losses += 1;
                    let crash_seed = self.rng.next_u64();
                    self.nodes[node].kill(&self.world, Some(crash_seed));
                    let at = now + 5_000 + self.rng.below(300_000);
                    self.schedule(at, Action::Restart { node });
                }
            }
            40..=49 => {
                if self.nodes[node].down.is_none() {
                    self.faults.pauses += 1;
                    let until = now + 10_000 + self.rng.below(400_000);
                    self.nodes[node].paused_until = Some(until);
                }
            }
            50..=54 => {
                if self.nodes[node].down.is_none() {
                    // The next life of this node has a failing disk.
                    self.faults.disk_errors += 1;
                    self.nodes[node].kill(&self.world, None);
                    self.nodes[node].eio_one_in = 20 + self.rng.below(200) as u32;
                    let at = now + 5_000 + self.rng.below(50_000);
                    self.schedule(at, Action::Restart { node });
                }
            }
            55..=79 => {
                let conns = self.world.borrow().connections();
                if !conns.is_empty() {
                    self.faults.resets += 1;
                    let c = conns[self.rng.below(conns.len() as u64) as usize];
                    self.world.borrow_mut().reset_connection(c);
                }
            }
            _ => {
                let other = self.rng.below(n) as usize;
                if other != node {
                    self.faults.partitions += 1;
                    let (a, b) = (self.nodes[node].host, self.nodes[other].host);
                    self.world.borrow_mut().block(a, b);
                    if self.rng.one_in(2) {
                        self.world.borrow_mut().block(b, a);
                    }
                    let at = now + 10_000 + self.rng.below(400_000);
                    self.schedule(at, Action::Heal);
                }
            }
        }
    }

    /// The end of the faults: every node runs again on a good disk, nothing is partitioned.
    fn heal_everything(&mut self) {
        self.world.borrow_mut().heal();
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until = None;
            self.nodes[i].eio_one_in = 0;
        }
        self.actions
            .retain(|_, a| matches!(a, Action::Restart { .. }));
        let now = self.now();
        for i in 0..self.nodes.len() {
            if self.nodes[i].down.is_some() {
                self.schedule(now, Action::Restart { node: i });
            }
        }
    }

    /// Every batch answered, every node up, and every log's replicas agreeing on what is
    /// committed (checked for real once this holds).
    fn settled(&mut self) -> bool {
        if self.writers.iter().any(|w| w.pending() > 0) || !self.actions.is_empty() {
            return false;
        }
        if self.nodes.iter().any(|n| n.down.is_some()) {
            return false;
        }
        let logs = self.logs.clone();
        for (log_id, chain) in &logs {
            let mut tails = Vec::new();
            for &i in chain {
                match self.nodes[i]
                    .shard_of(*log_id)
                    .and_then(|s| s.stored_records(*log_id))
                {
                    Some((readable, records)) => tails.push((readable, records.len() as u64)),
                    None => tails.push((0, 0)),
                }
            }
            let first = tails[0];
            if tails.iter().any(|&t| t != first) || first.0 != first.1 {
                return false;
            }
        }
        self.check();
        true
    }

    /// Reads every log on every replica and checks the history (module documentation).
    fn check(&mut self) {
        let logs = self.logs.clone();
        for (log_id, chain) in &logs {
            let ops: Vec<history::Op<u64>> = self
                .writers
                .iter()
                .filter(|w| w.log_id == *log_id)
                .flat_map(|w| w.ops.values().cloned())
                .collect();
            let mut replicas = Vec::new();
            let mut stored = Vec::new();
            for &i in chain {
                let id = self.nodes[i].id;
                let (readable, records) = self.nodes[i]
                    .shard_of(*log_id)
                    .and_then(|s| s.stored_records(*log_id))
                    .unwrap_or_default();
                replicas.push(Replica {
                    name: format!("node {id}"),
                    tail: readable,
                    records: records
                        .iter()
                        .filter(|(lsn, _)| *lsn < readable)
                        .cloned()
                        .collect(),
                });
                stored.push((id, records));
            }
            for anomaly in history::check(*log_id, &ops, &replicas) {
                self.violations.push(format!("log {log_id}: {anomaly}"));
            }
            // Byte-identical replicas, including anything not (yet) committed.
            for pair in stored.windows(2) {
                let ((a, ra), (b, rb)) = (&pair[0], &pair[1]);
                if ra != rb {
                    self.violations.push(format!(
                        "log {log_id}: nodes {a} and {b} store different records ({} and {})",
                        ra.len(),
                        rb.len()
                    ));
                }
            }
        }
        for w in &self.writers {
            for u in &w.unexpected {
                self.violations.push(format!("writer {}: {u}", w.writer_id));
            }
        }
    }

    fn outcomes(&self) -> (u64, u64) {
        let mut acked = 0;
        let mut indefinite = 0;
        for w in &self.writers {
            for op in w.ops.values() {
                match op.outcome {
                    Outcome::Acked { .. } => acked += 1,
                    Outcome::Indefinite { .. } => indefinite += 1,
                }
            }
        }
        (acked, indefinite)
    }
}
