//! The whole cluster in one thread, from a seed: real shards (the node's own code, generic over
//! its environment) on simulated disks and a simulated network, clients speaking the wire
//! protocol, and a fault schedule; at the end every replica is read back and the history is
//! checked. A failing run names its seed, and the same seed replays it exactly (the run's
//! trace hash says so).
//!
//! What is simulated (ARCHITECTURE.md, "The simulator"): the disk of each node (latency, slow
//! periods, lost unflushed writes and a torn write on power loss, EIO), the network between
//! hosts (latency, slow links, short sends, partitions in one or both directions, between
//! nodes or between a writer and its head, connection resets, machines that lose power without
//! a word to their peers, bytes of closed connections delivered late), process crashes (kill
//! -9, power loss), pauses (SIGSTOP), restarts and steps of a machine's wall clock. The map
//! comes from the controller's pure state ([`crate::controller::ClusterState`]), logs created
//! during the run included. With [`Options::reconfigure`] (`chainlog sim --reconfigure`: four
//! nodes, logs of rf 3) a simulated controller (`controller.rs`) hears the nodes' heartbeats
//! and reconfigures the chains with the real controller's plan, seal and extend, learners and
//! their promotion, over the simulated network; faults then also aim at a log's head, a middle member and its tail
//! (kills long enough for its chain to move, pauses, partitions from everyone), and at the
//! controller (kills, also between the seal it recorded and the epoch it starts, pauses,
//! partitions from a node); clients follow the chains. The control thread's own code and
//! bit flips at rest are not simulated.
//!
//! The workload, per log: writers appending keyed batches (some conditional, some fenced), a
//! reader reading from every replica, a subscriber that moves between replicas, and a trimmer
//! that reads the log in order, trims below what it read and asks CHECK_TAIL.
//!
//! The checks ([`crate::history`]): no acknowledged record lost or moved, no LSN with two
//! values on two replicas (committed or not), dense LSNs from the trim point, no record at two
//! LSNs, no record that was never sent, indefinite batches present whole or not at all,
//! refused ones not at all, real-time order, every record served during the run (reads and
//! pushes, from any replica) the final history's at its LSN with the same stamp, conditional
//! appends (I6), fencing tokens (I7), linearizable tails, trim points, record stamps within
//! the stamping node's wall clock; and liveness: once the faults stop, every batch and trim is
//! answered, every subscriber catches up and the replicas agree byte for byte, within a
//! bounded (virtual) time (with a controller: it is idle with nothing to plan and no learner
//! to add or drop, every log is back at its replication factor, its learners promoted, and
//! every node has the newest map).

mod client;
mod conn;
mod controller;
mod env;
mod fixture;
mod hostile;
mod node;
mod reader;
#[cfg(test)]
mod tests;
mod world;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use chainlog_storage::{Clock, FatalPanic, SimClock, SimDisk, SimRng};

use crate::controller::{ClusterState, StateError};
use crate::history::{self, Outcome, Replica};
use crate::node::control::MapUpdate;
use client::{Mode, Writer, WriterCounts};
pub use controller::Reconfigurations;
use controller::{NodeView, SimController};
use env::{Shared, Slowdown};
pub use hostile::{fix_frame_checksums, hostile_client};
use node::{SimNode, StartFailure};
use reader::{LookCounts, Reader, Subscriber, Trimmer};
use world::{HostId, NetConfig, World};

/// What a replica stores of a log at the end of a run: its trim point, the LSN below which
/// it serves records as committed, and every record it stores (LSN, payload).
type StoredReplica = (u64, u64, crate::node::shard::StoredLog);

/// Where a replica of a log stands: (committed as the chain says, served as committed,
/// stored, trim point). A chain has settled when its replicas stand at the same place, with
/// everything stored committed and served.
type ReplicaTails = (u64, u64, u64, u64);

/// Where `shard`'s replica of `log_id` stands, and what it stores; `None` if it holds no such
/// log; an error if its store failed (the node stops at its next turn).
fn replica_tails(
    shard: &mut crate::node::shard::Shard<env::SimEnv>,
    log_id: u64,
) -> chainlog_storage::Result<(ReplicaTails, StoredReplica)> {
    let committed = shard.chain_committed(log_id);
    let replica = shard.stored_records(log_id)?.unwrap_or_default();
    let (trim, readable, records) = &replica;
    let end = records.last().map_or(*trim, |(lsn, _)| lsn + 1);
    Ok(((committed, *readable, end, *trim), replica))
}

/// What a run simulates.
#[derive(Clone, Debug)]
pub struct Options {
    /// Cluster nodes.
    pub nodes: usize,
    /// Shards per node.
    pub shards: u16,
    /// Logs created before the run, each of replication factor `rf`.
    pub logs: usize,
    /// Replicas per log (logs created during the run have 1 to `rf`).
    pub rf: u8,
    /// Logs created during the run (through the controller's state, the new map installed on
    /// every running node).
    pub created_logs: usize,
    /// Writers per log.
    pub writers: usize,
    /// Virtual time with load and faults, microseconds.
    pub active_us: u64,
    /// Virtual time the cluster has, once faults stop, to answer every request, catch every
    /// subscriber up and agree.
    pub settle_us: u64,
    /// Inject faults.
    pub faults: bool,
    /// A machine that loses power tells its peers nothing (as in production): a node's
    /// connection to it stays open until the node sends on it. Off by default until the
    /// node notices such peers by itself (see ARCHITECTURE.md, "The simulator"): a link
    /// waiting for an answer from one waits for ever.
    pub silent_power_loss: bool,
    /// A deliberately broken node, to show the checks bite (see [`Canary`]).
    pub canary: Option<Canary>,
    /// A controller reconfigures the chains (`controller::SimController`): nodes it does not
    /// hear from are sealed out of their chains, spares learn the short chains' logs and
    /// join them at the tail once caught up, and faults aim at
    /// the head, a middle or the tail of a log, and at the controller itself. Without it the
    /// chains never change.
    pub reconfigure: bool,
}

impl Options {
    /// The reconfiguration runs: four nodes for logs of three replicas (a spare to learn a
    /// failed member's log and take its place), a controller that reconfigures, and its
    /// faults.
    pub fn reconfiguration() -> Options {
        Options {
            nodes: 4,
            reconfigure: true,
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 3,
            shards: 1,
            logs: 2,
            rf: 3,
            created_logs: 1,
            writers: 2,
            active_us: 1_500_000,
            settle_us: 20_000_000,
            faults: true,
            silent_power_loss: false,
            canary: None,
            reconfigure: false,
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
    /// Power loss of a node's machine (unflushed writes lost, one torn, peers not told).
    pub power_losses: u64,
    /// SIGSTOP of a node for a while.
    pub pauses: u64,
    /// A node restarted with a failing disk (it stops on the first EIO).
    pub disk_errors: u64,
    /// Fatal storage errors that stopped a node.
    pub fatal_stops: u64,
    /// A node's disk slow for a while (its completions held longer).
    pub slow_disks: u64,
    /// Connections reset.
    pub resets: u64,
    /// Partitions (one direction, either, or both; between two nodes or a writer and its
    /// head).
    pub partitions: u64,
    /// Links between two nodes slow for a while.
    pub slow_links: u64,
    /// Steps of a node's wall clock.
    pub clock_jumps: u64,
    /// Closed connections whose bytes, held by a partition, arrived after it healed.
    pub late_deliveries: u64,
    /// Faults (kill -9, power loss, pause, partition from every other machine) aimed at the
    /// head, a middle member and the tail of a log's current chain (reconfiguration runs).
    pub head_faults: u64,
    pub middle_faults: u64,
    pub tail_faults: u64,
    /// Controller kills, those while it was sealing (between the seal it recorded and the
    /// epoch it started), pauses, and partitions between it and a node.
    pub controller_kills: u64,
    pub controller_kills_sealing: u64,
    pub controller_pauses: u64,
    pub controller_partitions: u64,
}

impl std::ops::AddAssign for FaultCounts {
    fn add_assign(&mut self, o: FaultCounts) {
        self.kills += o.kills;
        self.power_losses += o.power_losses;
        self.pauses += o.pauses;
        self.disk_errors += o.disk_errors;
        self.fatal_stops += o.fatal_stops;
        self.slow_disks += o.slow_disks;
        self.resets += o.resets;
        self.partitions += o.partitions;
        self.slow_links += o.slow_links;
        self.clock_jumps += o.clock_jumps;
        self.late_deliveries += o.late_deliveries;
        self.head_faults += o.head_faults;
        self.middle_faults += o.middle_faults;
        self.tail_faults += o.tail_faults;
        self.controller_kills += o.controller_kills;
        self.controller_kills_sealing += o.controller_kills_sealing;
        self.controller_pauses += o.controller_pauses;
        self.controller_partitions += o.controller_partitions;
    }
}

/// What the workload did in a run, besides acknowledged batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Logs created during the run.
    pub logs_created: u64,
    /// Conditional batches acknowledged, and refused with CONDITION_FAILED.
    pub conditional_acked: u64,
    pub condition_failed: u64,
    /// Fenced batches acknowledged, and refused with FENCED.
    pub fenced_acked: u64,
    pub fenced_out: u64,
    /// READs answered with records, and the records.
    pub reads: u64,
    pub records_read: u64,
    /// Subscription pushes, and the records pushed.
    pub pushes: u64,
    pub records_pushed: u64,
    /// Subscriptions resumed (after a lost connection or an unsubscribe).
    pub resumes: u64,
    /// TRIMMED answers to READs and subscriptions.
    pub trimmed: u64,
    /// CHECK_TAILs answered.
    pub tails: u64,
    /// TRIMs acknowledged.
    pub trims: u64,
}

impl Workload {
    fn add_writer(&mut self, c: WriterCounts) {
        self.conditional_acked += c.conditional_acked;
        self.condition_failed += c.condition_failed;
        self.fenced_acked += c.fenced_acked;
        self.fenced_out += c.fenced_out;
    }

    fn add_look(&mut self, c: LookCounts) {
        self.reads += c.reads;
        self.records_read += c.records_read;
        self.pushes += c.pushes;
        self.records_pushed += c.records_pushed;
        self.resumes += c.resumes;
        self.trimmed += c.trimmed;
        self.tails += c.tails;
        self.trims += c.trims;
    }
}

impl std::ops::AddAssign for Workload {
    fn add_assign(&mut self, o: Workload) {
        self.logs_created += o.logs_created;
        self.add_writer(WriterCounts {
            conditional_acked: o.conditional_acked,
            condition_failed: o.condition_failed,
            fenced_acked: o.fenced_acked,
            fenced_out: o.fenced_out,
        });
        self.add_look(LookCounts {
            reads: o.reads,
            records_read: o.records_read,
            pushes: o.pushes,
            records_pushed: o.records_pushed,
            resumes: o.resumes,
            trimmed: o.trimmed,
            tails: o.tails,
            trims: o.trims,
        });
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
    /// What the workload did.
    pub workload: Workload,
    /// What the controller reconfigured (reconfiguration runs).
    pub reconfigurations: Reconfigurations,
    /// Batches acknowledged.
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
             faults {:?}, workload {:?}, reconfigurations {:?}, trace {:016x}",
            self.seed,
            self.violations.len(),
            self.acked,
            self.indefinite,
            self.simulated_us as f64 / 1e6,
            self.faults,
            self.workload,
            self.reconfigurations,
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
    CreateLog,
    ControllerKill,
    ControllerRestart,
}

/// One log of the run: its chain and its clients.
struct LogRun {
    log_id: u64,
    /// Node indexes, head first (the current epoch's chain).
    chain: Vec<usize>,
    /// Every node that headed the log (they stamp its records).
    heads: Vec<usize>,
    writers: Vec<Writer>,
    /// When each writer invokes its next batch.
    next_invoke: Vec<u64>,
    reader: Reader,
    subscriber: Subscriber,
    trimmer: Trimmer,
}

struct Sim {
    world: Shared,
    clock: SimClock,
    seed: u64,
    options: Options,
    nodes: Vec<SimNode>,
    /// The controller's state (what it persists).
    state: ClusterState,
    /// The controller's time at virtual time 0: every node registered then (without a
    /// controller that reconfigures, it stays the controller's "now": every node alive).
    born: Instant,
    /// The controller that reconfigures, if the run has one.
    controller: Option<SimController>,
    map: MapUpdate,
    logs: Vec<LogRun>,
    rng: SimRng,
    actions: BTreeMap<u64, Action>,
    faults: FaultCounts,
    workload: Workload,
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
    /// What the workloads did, in all.
    pub workload: Workload,
    /// What the controllers reconfigured, in all.
    pub reconfigurations: Reconfigurations,
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
                let report = run_caught(seed, options);
                let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
                s.runs += 1;
                s.simulated_us += report.simulated_us;
                s.faults += report.faults;
                s.workload += report.workload;
                s.reconfigurations += report.reconfigurations;
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

/// Runs one seed; a panic (an assertion of the node's code) is the run's violation, so the
/// other seeds go on.
fn run_caught(seed: u64, options: &Options) -> Report {
    std::panic::catch_unwind(|| run(seed, options)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|m| m.to_string()))
            .or_else(|| {
                payload.downcast_ref::<FatalPanic>().map(|f| {
                    format!(
                        "a fatal error where the simulator does not expect one: {}",
                        f.0
                    )
                })
            })
            .unwrap_or_default();
        Report {
            seed,
            trace: 0,
            simulated_us: 0,
            faults: FaultCounts::default(),
            workload: Workload::default(),
            reconfigurations: Reconfigurations::default(),
            acked: 0,
            indefinite: 0,
            violations: vec![format!("panicked: {message}")],
        }
    })
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
            silent_power_loss: options.silent_power_loss,
        },
    )));
    let clock = world.borrow().clock.clone();
    let mut state = if options.reconfigure {
        ClusterState::new(std::time::Duration::from_micros(controller::LIVENESS_US))
    } else {
        ClusterState::default()
    };
    let born = Instant::now();
    let mut nodes = Vec::new();
    for i in 0..options.nodes {
        let disk = SimDisk::with_clock(clock.clone());
        let node = SimNode::new(i as u64 + 1, options.shards, disk);
        state
            .register(
                node.id,
                &node.addr.to_string(),
                options.shards,
                "",
                "",
                born,
            )
            .expect("a valid node");
        nodes.push(node);
    }
    let map = MapUpdate::of(state.map(born));
    let mut sim = Sim {
        world,
        clock,
        seed,
        options: options.clone(),
        nodes,
        state,
        born,
        controller: options.reconfigure.then(|| SimController::new(born)),
        map,
        logs: Vec::new(),
        rng: SimRng::new(seed ^ 0x5eed),
        actions: BTreeMap::new(),
        faults: FaultCounts::default(),
        workload: Workload::default(),
        violations: Vec::new(),
    };
    for _ in 0..options.logs {
        assert!(
            sim.create_log(options.rf),
            "every node is alive at the start"
        );
    }
    for _ in 0..options.created_logs {
        let at = 100_000
            + sim
                .rng
                .below(options.active_us.saturating_sub(400_000).max(1));
        sim.schedule(at, Action::CreateLog);
    }
    sim.start_all();
    sim.run();
    chainlog_storage::fatal_panics(false);
    crate::replication::canary_skip_settling(false);
    let simulated_us = sim.now();
    let trace = sim.world.borrow().trace_hash();
    sim.faults.late_deliveries = sim.world.borrow().late_deliveries;
    let (acked, indefinite) = sim.outcomes();
    let mut workload = sim.workload;
    for log in &sim.logs {
        for w in &log.writers {
            workload.add_writer(w.counts());
        }
        for look in [
            &log.reader.record,
            &log.subscriber.record,
            &log.trimmer.record,
        ] {
            workload.add_look(look.counts);
        }
    }
    Report {
        seed,
        trace,
        simulated_us,
        faults: sim.faults,
        workload,
        reconfigurations: sim
            .controller
            .as_ref()
            .map(|c| c.counts)
            .unwrap_or_default(),
        acked,
        indefinite,
        violations: sim.violations,
    }
}

impl Sim {
    fn now(&self) -> u64 {
        self.clock.monotonic_us()
    }

    /// The controller's time now.
    fn instant(&self) -> Instant {
        match &self.controller {
            Some(c) => c.instant(self.now()),
            None => self.born,
        }
    }

    /// Creates a log of `rf` replicas in the controller's state, installs the new map on every
    /// node (a down node gets it when it starts), and gives the log its clients (they start
    /// once every replica has the log, as a create is answered then). False if the
    /// controller does not run or has too few live nodes for it: the create is tried again.
    fn create_log(&mut self, rf: u8) -> bool {
        let index = self.logs.len();
        let name = format!("log-{index}");
        let now = self.now();
        if self
            .controller
            .as_ref()
            .is_some_and(|c| !c.up || c.paused_until.is_some_and(|t| t > now))
        {
            return false;
        }
        let created = match self.state.create_log(&name, rf, self.instant()) {
            Ok(created) => created,
            Err(StateError::NotEnoughNodes { .. }) if self.controller.is_some() => return false,
            Err(e) => panic!("creating {name}: {e}"),
        };
        let chain: Vec<usize> = self
            .state
            .log(created.log_id)
            .expect("created")
            .current()
            .chain
            .iter()
            .map(|&id| id as usize - 1)
            .collect();
        self.map = MapUpdate::of(self.state.map(self.instant()));
        for i in 0..self.nodes.len() {
            if let Err(reason) = self.nodes[i].map_changed(&self.map, now) {
                self.stopped(i, &reason);
            }
        }
        let log_id = created.log_id;
        let world = &mut self.world.borrow_mut();
        let base = (index * 100) as u64;
        let mut writers = Vec::new();
        for w in 0..self.options.writers {
            let mode = Mode {
                conditional: self.rng.one_in(3),
                fenced: self.rng.one_in(3),
            };
            let token = 1 + self.rng.below(3);
            // Impatient writers give up on an answer (and resend on a new connection) sooner
            // than a partition or a slow disk lasts.
            let timeout_us = 50_000 + self.rng.below(1_000_000);
            writers.push(Writer::new(
                world,
                base + w as u64 + 1,
                log_id,
                mode,
                4,
                token,
                timeout_us,
            ));
        }
        let window = 4 + self.rng.below(60) as u32;
        self.logs.push(LogRun {
            log_id,
            writers,
            next_invoke: vec![now; self.options.writers],
            reader: Reader::new(world, base + 50, log_id, chain.len()),
            subscriber: Subscriber::new(world, base + 51, log_id, window),
            trimmer: Trimmer::new(world, base + 52, log_id, now),
            heads: vec![chain[0]],
            chain,
        });
        true
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
        match node.start(&self.world, &self.map, seed) {
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
        tracing::debug!(
            at_us = self.now(),
            node = self.nodes[i].id,
            reason,
            "simulated node stopped"
        );
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

    /// The run: load and faults for `active_us`, then no faults until every request is
    /// answered, every subscriber caught up and the replicas agree (or `settle_us` ran out: a
    /// liveness failure).
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
                match self.nodes[i].step(now, &self.map) {
                    Ok(ran) => progress |= ran,
                    Err(reason) => self.stopped(i, &reason),
                }
            }
            self.step_controller(now);
            self.drive_clients(now, now < active_end);
            if healed && self.settled() {
                return;
            }
            if now >= deadline {
                self.liveness_failure();
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
                for log in &self.logs {
                    for &t in &log.next_invoke {
                        next = next.min(t);
                    }
                }
            }
            next = next.min(now + 5_000); // clients' timers (retries, timeouts, pacing)
            self.clock.advance_to(next.max(now + 1));
        }
    }

    /// What was still waiting when the settling time ran out.
    fn liveness_failure(&mut self) {
        let now = self.now();
        if let Some(c) = &self.controller {
            let plans = crate::controller::reconfig::plan(&self.state, c.instant(now));
            let versions: Vec<(u64, u64)> =
                self.nodes.iter().map(|n| (n.id, n.map_version)).collect();
            self.violations.push(format!(
                "liveness: {}; map version {}, applied by the nodes {versions:?}; plans {plans:?}",
                c.describe(now),
                self.state.version(),
            ));
        }
        let pending: usize = self
            .logs
            .iter()
            .flat_map(|l| &l.writers)
            .map(Writer::pending)
            .sum();
        let trims = self.logs.iter().filter(|l| l.trimmer.pending()).count();
        self.violations.push(format!(
            "liveness: {} s after the faults stopped, {pending} batch(es) and {trims} trim(s) \
             are unanswered",
            self.options.settle_us / 1_000_000
        ));
        for l in 0..self.logs.len() {
            let (log_id, chain) = (self.logs[l].log_id, self.logs[l].chain.clone());
            let subscriber = self.logs[l].subscriber.describe();
            self.violations
                .push(format!("  log {log_id}: the subscriber is {subscriber}"));
            if let Some(log) = self.state.log(log_id) {
                let (epoch, sealing) = (log.current().clone(), log.sealing);
                self.violations.push(format!(
                    "  log {log_id}: the controller's epoch {epoch:?}, learners {:?}, sealing \
                     {sealing:?}",
                    log.learners
                ));
            }
            for i in chain {
                let id = self.nodes[i].id;
                let state = self.nodes[i].shard_of(log_id).map_or("down".into(), |s| {
                    let stands = match replica_tails(s, log_id) {
                        Ok(((committed, readable, end, trim), _)) => format!(
                            "stores to {end} from trim point {trim}, committed {committed}, \
                             serves to {readable}"
                        ),
                        Err(e) => format!("its store failed: {e}"),
                    };
                    format!("{stands}; {}", s.describe(log_id))
                });
                self.violations
                    .push(format!("  log {log_id} on node {id}: {state}"));
            }
        }
    }

    /// One step of the controller, if the run has one: it hears the nodes, the nodes behind
    /// the map fetch it, a new epoch's chain goes to the clients. Now and then a seal it begins
    /// is cut short by its own death (within the SEALs' round trip).
    fn step_controller(&mut self, now: u64) {
        let Some(c) = &mut self.controller else {
            return;
        };
        let views: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|n| NodeView {
                id: n.id,
                host: n.host,
                running: n.down.is_none() && n.paused_until.is_none_or(|t| t <= now),
                applied: n.map_version,
                addr: n.addr,
                shards: self.options.shards,
            })
            .collect();
        let step = c.step(&mut self.world.borrow_mut(), &mut self.state, &views, now);
        if step.began && self.options.faults && now < self.options.active_us && self.rng.one_in(4) {
            let at = now + self.rng.below(2_000);
            self.schedule(at, Action::ControllerKill);
        }
        if step.changed {
            self.publish();
        }
        for id in step.fetch {
            let i = id as usize - 1;
            if let Err(reason) = self.nodes[i].map_changed(&self.map, now) {
                self.stopped(i, &reason);
            }
        }
    }

    /// The controller's map changed (a new epoch): the map nodes fetch, and the chains the
    /// clients follow.
    fn publish(&mut self) {
        self.map = MapUpdate::of(self.state.map(self.instant()));
        for log in &mut self.logs {
            let chain: Vec<usize> = self
                .state
                .log(log.log_id)
                .expect("logs are never deleted")
                .current()
                .chain
                .iter()
                .map(|&id| id as usize - 1)
                .collect();
            if !log.heads.contains(&chain[0]) {
                log.heads.push(chain[0]);
            }
            log.chain = chain;
        }
    }

    /// kill -9 of the controller (during the active phase), restarted a little later.
    fn kill_controller(&mut self) {
        let now = self.now();
        let Some(c) = &mut self.controller else {
            return;
        };
        if !c.up || now >= self.options.active_us {
            return;
        }
        self.faults.controller_kills += 1;
        if c.busy() {
            self.faults.controller_kills_sealing += 1;
        }
        tracing::debug!(at_us = now, sealing = c.busy(), "fault: controller kill -9");
        c.kill(&mut self.world.borrow_mut());
        let at = now + 10_000 + self.rng.below(800_000);
        self.schedule(at, Action::ControllerRestart);
    }

    /// A fault of a reconfiguration run: at a log's head, middle or tail, or at the controller.
    fn inject_reconfiguration_fault(&mut self) {
        let now = self.now();
        match self.rng.below(10) {
            0..=5 => self.role_fault(now),
            6 | 7 => self.kill_controller(),
            8 => {
                let Some(c) = &mut self.controller else {
                    return;
                };
                if c.up && c.paused_until.is_none() {
                    self.faults.controller_pauses += 1;
                    let until = now + 50_000 + self.rng.below(700_000);
                    tracing::debug!(at_us = now, until, "fault: controller SIGSTOP");
                    c.paused_until = Some(until);
                }
            }
            _ => {
                let node = self.nodes[self.rng.below(self.nodes.len() as u64) as usize].host;
                let both = self.rng.one_in(2);
                let (a, b) = if self.rng.one_in(2) {
                    (node, controller::HOST)
                } else {
                    (controller::HOST, node)
                };
                self.faults.controller_partitions += 1;
                tracing::debug!(
                    at_us = now,
                    from = a,
                    to = b,
                    both,
                    "fault: controller partition"
                );
                self.world.borrow_mut().block(a, b);
                if both {
                    self.world.borrow_mut().block(b, a);
                }
                let at = now + 50_000 + self.rng.below(800_000);
                self.schedule(at, Action::Heal);
            }
        }
    }

    /// A fault at the head, a middle member or the tail of a log's current chain: kill -9 or
    /// power loss (restarted after long enough, often, for its chain to be reconfigured), a
    /// pause, or a partition from every other node and the controller (its clients still
    /// reach it).
    fn role_fault(&mut self, now: u64) {
        let l = self.rng.below(self.logs.len() as u64) as usize;
        let chain = self.logs[l].chain.clone();
        let role = self.rng.below(3);
        let position = match role {
            0 => 0,
            1 if chain.len() >= 3 => 1 + self.rng.below(chain.len() as u64 - 2) as usize,
            1 => return,
            _ => chain.len() - 1,
        };
        let node = chain[position];
        if self.nodes[node].down.is_some() {
            return;
        }
        match role {
            0 => self.faults.head_faults += 1,
            1 => self.faults.middle_faults += 1,
            _ => self.faults.tail_faults += 1,
        }
        let (id, log_id) = (self.nodes[node].id, self.logs[l].log_id);
        match self.rng.below(4) {
            0 | 1 => {
                let power_loss = self.rng.one_in(2);
                tracing::debug!(
                    at_us = now,
                    node = id,
                    log_id,
                    role,
                    power_loss,
                    "fault: kill of a chain member"
                );
                if power_loss {
                    self.faults.power_losses += 1;
                    let crash_seed = self.rng.next_u64();
                    self.nodes[node].kill(&self.world, Some(crash_seed));
                } else {
                    self.faults.kills += 1;
                    self.nodes[node].kill(&self.world, None);
                }
                let at = now + 20_000 + self.rng.below(1_500_000);
                self.schedule(at, Action::Restart { node });
            }
            2 => {
                self.faults.pauses += 1;
                let until = now + 50_000 + self.rng.below(900_000);
                tracing::debug!(
                    at_us = now,
                    node = id,
                    log_id,
                    role,
                    until,
                    "fault: SIGSTOP of a chain member"
                );
                self.nodes[node].paused_until = Some(until);
            }
            _ => {
                self.faults.partitions += 1;
                tracing::debug!(
                    at_us = now,
                    node = id,
                    log_id,
                    role,
                    "fault: partition of a chain member"
                );
                let host = self.nodes[node].host;
                let others: Vec<HostId> = self
                    .nodes
                    .iter()
                    .map(|n| n.host)
                    .filter(|&h| h != host)
                    .chain([controller::HOST])
                    .collect();
                for other in others {
                    self.world.borrow_mut().block(host, other);
                    self.world.borrow_mut().block(other, host);
                }
                let at = now + 50_000 + self.rng.below(900_000);
                self.schedule(at, Action::Heal);
            }
        }
    }

    fn act(&mut self, action: Action) {
        tracing::debug!(at_us = self.now(), ?action, "scheduled");
        match action {
            Action::Restart { node } => self.start(node),
            Action::Heal => self.world.borrow_mut().heal(),
            Action::CreateLog => {
                let rf = 1 + self.rng.below(u64::from(self.options.rf)) as u8;
                if self.create_log(rf) {
                    self.workload.logs_created += 1;
                } else {
                    let at = self.now() + 50_000;
                    self.schedule(at, Action::CreateLog);
                }
            }
            Action::ControllerKill => self.kill_controller(),
            Action::ControllerRestart => {
                let now = self.now();
                if let Some(c) = &mut self.controller {
                    if !c.up {
                        tracing::debug!(at_us = now, "controller restarts");
                        c.restart(&mut self.state, now);
                    }
                }
            }
        }
    }

    /// The replicas of log `l`: (node id, where the log's shard serves), in chain order.
    fn replicas(&self, l: usize) -> Vec<(u64, SocketAddr)> {
        let log_id = self.logs[l].log_id;
        self.logs[l]
            .chain
            .iter()
            .map(|&i| (self.nodes[i].id, self.nodes[i].addr_of(log_id)))
            .collect()
    }

    fn drive_clients(&mut self, now: u64, active: bool) {
        for l in 0..self.logs.len() {
            let replicas = self.replicas(l);
            let head = replicas[0];
            let world = &mut self.world.borrow_mut();
            let log = &mut self.logs[l];
            for w in 0..log.writers.len() {
                if active && now >= log.next_invoke[w] {
                    let records = 1 + self.rng.below(3) as u32;
                    log.writers[w].invoke(now, records);
                    log.next_invoke[w] = now + 1_000 + self.rng.below(20_000);
                }
                log.writers[w].step(world, head.1);
            }
            log.reader.step(world, &mut self.rng, &replicas, active);
            log.subscriber.step(world, &mut self.rng, &replicas, active);
            log.trimmer.step(world, &mut self.rng, head, active);
        }
    }

    fn inject_fault(&mut self) {
        if self.controller.is_some() && self.rng.one_in(2) {
            return self.inject_reconfiguration_fault();
        }
        let n = self.nodes.len() as u64;
        let now = self.now();
        let node = self.rng.below(n) as usize;
        let up = self.nodes[node].down.is_none();
        match self.rng.below(100) {
            0..=19 if up => {
                tracing::debug!(at_us = now, node = node + 1, "fault: kill -9");
                self.faults.kills += 1;
                self.nodes[node].kill(&self.world, None);
                let at = now + 5_000 + self.rng.below(300_000);
                self.schedule(at, Action::Restart { node });
            }
            20..=31 if up => {
                tracing::debug!(at_us = now, node = node + 1, "fault: power loss");
                self.faults.power_losses += 1;
                let crash_seed = self.rng.next_u64();
                self.nodes[node].kill(&self.world, Some(crash_seed));
                let at = now + 5_000 + self.rng.below(300_000);
                self.schedule(at, Action::Restart { node });
            }
            32..=39 if up => {
                self.faults.pauses += 1;
                let until = now + 10_000 + self.rng.below(400_000);
                tracing::debug!(at_us = now, node = node + 1, until, "fault: SIGSTOP");
                self.nodes[node].paused_until = Some(until);
            }
            40..=44 if up => {
                // The next life of this node has a failing disk.
                tracing::debug!(
                    at_us = now,
                    node = node + 1,
                    "fault: kill -9, restarts on a failing disk"
                );
                self.faults.disk_errors += 1;
                self.nodes[node].kill(&self.world, None);
                self.nodes[node].eio_one_in = 20 + self.rng.below(200) as u32;
                let at = now + 5_000 + self.rng.below(50_000);
                self.schedule(at, Action::Restart { node });
            }
            45..=51 => {
                self.faults.slow_disks += 1;
                let slow = Slowdown {
                    until_us: now + 20_000 + self.rng.below(400_000),
                    extra_us: 1_000 + self.rng.below(50_000),
                    reads_until_us: 0,
                };
                tracing::debug!(at_us = now, node = node + 1, ?slow, "fault: slow disk");
                self.nodes[node].speed.set(slow);
            }
            52..=56 => {
                // A step of the wall clock (NTP, an operator): up to a minute either way.
                self.faults.clock_jumps += 1;
                let by = 1_000 + self.rng.below(60_000_000) as i64;
                let by = if self.rng.one_in(2) { -by } else { by };
                tracing::debug!(at_us = now, node = node + 1, by, "fault: wall clock step");
                self.nodes[node].jump_clock(now, by);
            }
            57..=74 => {
                let conns = self.world.borrow().connections();
                if !conns.is_empty() {
                    self.faults.resets += 1;
                    let c = conns[self.rng.below(conns.len() as u64) as usize];
                    tracing::debug!(at_us = now, socket = c, "fault: connection reset");
                    self.world.borrow_mut().reset_connection(c);
                }
            }
            75..=81 => {
                let other = self.rng.below(n) as usize;
                if other != node {
                    self.faults.slow_links += 1;
                    let (a, b) = (self.nodes[node].host, self.nodes[other].host);
                    let until = now + 20_000 + self.rng.below(400_000);
                    let extra = 1_000 + self.rng.below(30_000);
                    tracing::debug!(
                        at_us = now,
                        from = a,
                        to = b,
                        until,
                        extra,
                        "fault: slow link"
                    );
                    self.world.borrow_mut().slow_down(a, b, until, extra);
                    if self.rng.one_in(2) {
                        self.world.borrow_mut().slow_down(b, a, until, extra);
                    }
                }
            }
            82..=99 => {
                // Between two nodes, or (one in three) between a writer and its head; one way
                // (either) or both. One way towards the node is what holds a client's
                // requests while its answers still come: it goes on sending into the
                // partition, gives up, and its held requests arrive after it resent them.
                let (node_host, other) = if self.rng.one_in(3) {
                    // A writer and the head it writes to.
                    let log = &self.logs[self.rng.below(self.logs.len() as u64) as usize];
                    let writer = &log.writers[self.rng.below(log.writers.len() as u64) as usize];
                    (
                        self.nodes[log.chain[0]].host,
                        1000 + writer.writer_id as HostId,
                    )
                } else {
                    let other = self.nodes[self.rng.below(n) as usize].host;
                    (self.nodes[node].host, other)
                };
                let (a, b) = if self.rng.one_in(2) {
                    (node_host, other)
                } else {
                    (other, node_host)
                };
                if a != b {
                    self.faults.partitions += 1;
                    let both = self.rng.one_in(2);
                    tracing::debug!(at_us = now, from = a, to = b, both, "fault: partition");
                    self.world.borrow_mut().block(a, b);
                    if both {
                        self.world.borrow_mut().block(b, a);
                    }
                    let at = now + 10_000 + self.rng.below(400_000);
                    self.schedule(at, Action::Heal);
                }
            }
            _ => {} // A process fault drawn for a node that is down.
        }
    }

    /// The end of the faults: every node runs again on a good disk, nothing is partitioned or
    /// slow.
    fn heal_everything(&mut self) {
        self.world.borrow_mut().heal();
        self.world.borrow_mut().speed_up();
        for i in 0..self.nodes.len() {
            self.nodes[i].paused_until = None;
            self.nodes[i].eio_one_in = 0;
            self.nodes[i].speed.set(Slowdown::default());
        }
        self.actions
            .retain(|_, a| !matches!(a, Action::Heal | Action::ControllerKill));
        let now = self.now();
        if let Some(c) = &mut self.controller {
            c.paused_until = None;
            if !c.up {
                self.schedule(now, Action::ControllerRestart);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].down.is_some() {
                self.schedule(now, Action::Restart { node: i });
            }
        }
    }

    /// Every batch and trim answered, every node up, every log's replicas agreeing on what
    /// is committed (as the chain told them, not only as they serve it), on their trim
    /// point, and every subscriber caught up with it (checked for real once this holds).
    fn settled(&mut self) -> bool {
        let waiting = self
            .logs
            .iter()
            .any(|l| l.writers.iter().any(|w| w.pending() > 0) || l.trimmer.pending());
        if waiting || !self.actions.is_empty() {
            return false;
        }
        if self.nodes.iter().any(|n| n.down.is_some()) {
            return false;
        }
        if let Some(c) = &self.controller {
            // The controller is done: no reconfiguration to make and no learner to add or
            // drop (every log back at its replication factor, every node being alive), and
            // every node has the map.
            let now = self.now();
            let version = self.state.version();
            if !c.idle(now)
                || !crate::controller::reconfig::plan(&self.state, c.instant(now)).is_empty()
                || !crate::controller::reconfig::learner_changes(&self.state, c.instant(now))
                    .is_empty()
                || self.state.under_replicated().next().is_some()
                || self.nodes.iter().any(|n| n.map_version != version)
            {
                return false;
            }
        }
        let mut stored = Vec::new();
        for l in 0..self.logs.len() {
            let (log_id, chain) = (self.logs[l].log_id, self.logs[l].chain.clone());
            let mut tails = Vec::new();
            let mut replicas = Vec::new();
            for i in chain {
                let Some(shard) = self.nodes[i].shard_of(log_id) else {
                    tails.push((0, 0, 0, 0));
                    replicas.push((i, StoredReplica::default()));
                    continue;
                };
                let Ok((at, replica)) = replica_tails(shard, log_id) else {
                    return false; // Its store failed: the node stops at its next turn.
                };
                tails.push(at);
                replicas.push((i, replica));
            }
            let first = tails[0];
            if tails.iter().any(|&t| t != first) || first.0 != first.2 || first.1 != first.2 {
                return false;
            }
            if self.logs[l].subscriber.next < first.0 {
                return false;
            }
            stored.push(replicas);
        }
        self.check(stored);
        true
    }

    /// Checks the history of every log against what each of its replicas stores (`logs`: per
    /// log, per chain member, the node's index and what it stores; module documentation).
    fn check(&mut self, logs: Vec<Vec<(usize, StoredReplica)>>) {
        let base_wall_us = self.clock.wall_us() - self.clock.monotonic_us();
        let end_us = self.now();
        for (l, members) in logs.into_iter().enumerate() {
            let log_id = self.logs[l].log_id;
            let mut replicas = Vec::new();
            let mut stored = Vec::new();
            for (i, (trim_point, readable, records)) in members {
                let id = self.nodes[i].id;
                replicas.push(Replica {
                    name: format!("node {id}"),
                    trim_point,
                    tail: readable,
                    records: records
                        .iter()
                        .filter(|(lsn, _)| *lsn < readable)
                        .map(|(lsn, p)| (*lsn, p.as_slice().into()))
                        .collect(),
                });
                stored.push((id, trim_point, records));
            }
            let log = &self.logs[l];
            let ops: Vec<history::Op<u64>> =
                log.writers.iter().flat_map(|w| w.ops().cloned()).collect();
            let seen: Vec<history::Seen<u64>> = [
                &log.reader.record,
                &log.subscriber.record,
                &log.trimmer.record,
            ]
            .iter()
            .flat_map(|r| r.seen.iter().cloned())
            .collect();
            let mut anomalies = history::check(log_id, &ops, &replicas, &seen);
            // Only a head stamps records (the others store them as they are): the wall clock
            // of one of the log's heads while the append was in flight.
            let heads: Vec<&SimNode> = self.logs[l].heads.iter().map(|&i| &self.nodes[i]).collect();
            anomalies.extend(history::check_stamps(&ops, &seen, |op| {
                let end = match op.outcome {
                    Outcome::Acked { at, .. } => at,
                    _ => end_us,
                };
                let (lo, hi) = heads
                    .iter()
                    .map(|h| offsets_between(&h.offsets, op.invoked, end))
                    .fold((i64::MAX, i64::MIN), |(lo, hi), (a, b)| {
                        (lo.min(a), hi.max(b))
                    });
                let lo = (base_wall_us + op.invoked).saturating_add_signed(lo);
                let hi = (base_wall_us + end).saturating_add_signed(hi);
                lo..hi + 1
            }));
            for anomaly in anomalies {
                self.violations.push(format!("log {log_id}: {anomaly}"));
            }
            // Byte-identical replicas, including anything not (yet) committed, above every
            // replica's trim point.
            let trimmed = stored.iter().map(|(_, t, _)| *t).max().unwrap_or(0);
            let above = |records: &[(u64, Vec<u8>)]| -> Vec<(u64, Vec<u8>)> {
                records
                    .iter()
                    .filter(|(lsn, _)| *lsn >= trimmed)
                    .cloned()
                    .collect()
            };
            for pair in stored.windows(2) {
                let ((a, _, ra), (b, _, rb)) = (&pair[0], &pair[1]);
                let (ra, rb) = (above(ra), above(rb));
                if ra != rb {
                    self.violations.push(format!(
                        "log {log_id}: nodes {a} and {b} store different records above {trimmed} \
                         ({} and {})",
                        ra.len(),
                        rb.len()
                    ));
                }
            }
            let log = &self.logs[l];
            let unexpected = log
                .writers
                .iter()
                .flat_map(|w| w.unexpected().iter())
                .chain(&log.reader.record.unexpected)
                .chain(&log.subscriber.record.unexpected)
                .chain(&log.trimmer.record.unexpected);
            for u in unexpected {
                self.violations.push(format!("log {log_id}: {u}"));
            }
        }
    }

    fn outcomes(&self) -> (u64, u64) {
        let mut acked = 0;
        let mut indefinite = 0;
        for op in self
            .logs
            .iter()
            .flat_map(|l| &l.writers)
            .flat_map(|w| w.ops())
        {
            match op.outcome {
                Outcome::Acked { .. } => acked += 1,
                Outcome::Indefinite { .. } => indefinite += 1,
                Outcome::Refused { .. } => {}
            }
        }
        (acked, indefinite)
    }
}

/// The lowest and highest wall-clock offsets a machine had between `from_us` and `to_us`, from
/// its offsets over time ((since when, offset), in order, the first since 0).
fn offsets_between(offsets: &[(u64, i64)], from_us: u64, to_us: u64) -> (i64, i64) {
    let start = offsets.partition_point(|&(at, _)| at <= from_us).max(1) - 1;
    let end = offsets.partition_point(|&(at, _)| at <= to_us);
    let during = offsets[start..end.max(start + 1)].iter().map(|&(_, o)| o);
    let lo = during.clone().min().unwrap_or(0);
    let hi = during.max().unwrap_or(0);
    (lo, hi)
}
