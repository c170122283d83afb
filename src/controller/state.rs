//! The cluster state as plain data, and its transitions as pure functions (no I/O, no clock
//! of their own: the time is passed in, so tests need no sleeping).
//!
//! [`ClusterState`] holds the registered nodes, the logs with their epochs and chains, and the
//! map version, which goes up by one with every change of what the map says (a node
//! registered or moved, a log created or deleted); heartbeats change only what is not
//! durable (when a node was last heard of, the newest map version it has applied). The
//! durable part is what [`super::store`] writes; the rest starts empty after a restart and
//! fills up with the next heartbeats.
//!
//! **Placement** ([`ClusterState::pick`]). A new log of replication factor R goes on R
//! distinct live, undrained nodes, picked one at a time: each in the zone that the nodes
//! picked before it hold the fewest of, then in the rack (of that zone) they hold the fewest
//! of, and among those the node in the fewest current chains, then with the fewest heads,
//! then the lowest id. So a chain spans min(R, zones) zones, and when R is larger its nodes
//! are spread over the zones as evenly as the zones' nodes allow. A node registered without a
//! zone is a zone of its own (and without a rack, a rack of its own): a cluster without labels
//! places exactly by load, as it did before zones existed. Its head is the placed node with
//! the fewest heads (ties: lowest id), the others follow in the order they were picked. So
//! heads and replicas spread evenly as logs are created. Learners are picked by the same rule
//! against the chain and learners a log has, so reconfiguration keeps the zones spread.
//!
//! **Reconfiguration** ([`super::reconfig`]): [`ClusterState::extend`] starts a log's next
//! epoch from the replicas that sealed the current one, with the chain the controller picks
//! (the survivors, after a failure or a drain; the survivors and learners that caught up, to
//! grow back to the replication factor) or one an operator asked for
//! ([`ClusterState::request`], kept durably until done). A **drained** node
//! ([`ClusterState::drain`]) gets no new chain, and the chains that hold it are moved off it.
//!
//! **Learners.** A log whose chain is short gets live spare nodes as learners
//! ([`ClusterState::add_learner`], in the map and durable): each copies the log's committed
//! records from the chain's tail outside the chain, so that copying a long log never holds
//! appends up. The controller finds out by asking (TAIL_HINT) when one has caught up
//! ([`ClusterState::set_ready`], not durable: asked again after a restart) and then promotes
//! it: a seal and an extend with it at the tail ([`Target::Promote`]), where it only has the
//! records of the sealed epoch's last moments to copy. A learner that dies, is drained or is
//! in the chain is dropped ([`ClusterState::remove_learner`]).
//!
//! [`ClusterState::map`] is what nodes and clients learn of the state
//! ([`chainlog_net::cluster::ClusterMap`]): the version, every node (address, shards, zone and
//! rack, whether it is alive or drained) and every log's current epoch, chain and learners.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use chainlog_net::cluster::{ClusterMap, MapLog, MapNode};
use chainlog_net::{log_id_of, ADDR_BYTES_MAX, HEARTBEAT_MS_NEVER, LABEL_BYTES_MAX};

/// How long after its last heartbeat a node still counts as alive, by default.
pub const LIVENESS_DEFAULT: Duration = Duration::from_millis(500);
/// A node a neighbour suspects is dead once silent for this fraction of the liveness timeout
/// (100 ms by default: nodes heartbeat every 50 ms).
const SUSPECT_FRACTION: u32 = 5;
/// The epoch every new log starts in (the one a standalone node serves every log in).
pub const EPOCH_FIRST: u64 = 1;
/// Nodes a cluster may register: a GET_MAP page carries every node, so this bounds the page
/// (with `list_max` logs) below the frame limit (`super::server`).
pub const NODES_MAX: usize = 1024;
/// Logs a cluster may hold: the state file is rewritten whole on every change, so this
/// bounds the rewrite (a few MiB).
pub const LOGS_MAX: usize = 65_536;

/// A registered node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Its id (nonzero).
    pub node_id: u64,
    /// `host:port` of its shard 0; shard `i` listens on port + `i`.
    pub addr: String,
    /// Its shards (a log is on shard `log_id % shard_count` of the node).
    pub shard_count: u16,
    /// When it last registered or heartbeated (not durable: `None` after a restart).
    #[serde(skip)]
    pub last_heartbeat: Option<Instant>,
    /// The newest map version it reported applied on every shard (not durable: 0 after a
    /// restart, or after the node registers again).
    #[serde(skip)]
    pub applied_version: u64,
    /// When a neighbour in a chain last named it in a heartbeat because their replication
    /// connection failed (not durable).
    #[serde(skip)]
    pub suspected: Option<Instant>,
    /// Drained by an operator: it gets no new chain, and the chains holding it are moved off
    /// it ([`ClusterState::drain`]).
    #[serde(default)]
    pub drained: bool,
    /// Its failure zone, as it registered (empty: none, a zone of its own); placement spreads
    /// a chain over zones (module documentation).
    #[serde(default)]
    pub zone: String,
    /// Its rack within its zone, as it registered (empty: none, a rack of its own).
    #[serde(default)]
    pub rack: String,
}

impl NodeState {
    /// True if `self` and `other` are in one zone: both name the same zone. A node without a
    /// zone shares it with nobody.
    fn same_zone(&self, other: &NodeState) -> bool {
        !self.zone.is_empty() && self.zone == other.zone
    }

    /// True if `self` and `other` are in one rack: in one zone, and both name the same rack.
    /// A rack is a rack of its zone: `r1` of two zones is two racks.
    fn same_rack(&self, other: &NodeState) -> bool {
        self.same_zone(other) && !self.rack.is_empty() && self.rack == other.rack
    }
}

/// One epoch of a log: which nodes replicate it, from which LSN on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// The epoch number (from [`EPOCH_FIRST`], increasing).
    pub epoch: u64,
    /// The chain's node ids, head first.
    pub chain: Vec<u64>,
    /// The first LSN of this epoch.
    pub start_lsn: u64,
    /// The log's trim point when this epoch began: every member trims at least to it before
    /// it installs the epoch, so that no acknowledged trim goes back (a learner that copied
    /// the log before a trim joins the chain without it). Never lower than the epoch
    /// before's.
    #[serde(default)]
    pub trim_lsn: u64,
}

/// A log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// Its id: FNV-1a 64 of the name ([`log_id_of`]).
    pub log_id: u64,
    /// Its name.
    pub name: String,
    /// Replicas per chain.
    pub replication_factor: u8,
    /// The map version that created it: the create is complete once every replica's node
    /// has applied it.
    pub created_version: u64,
    /// Its epochs, oldest first; never empty, the last is current.
    pub epochs: Vec<Epoch>,
    /// The current epoch while the controller seals it ([`ClusterState::begin_seal`], durable
    /// before the first SEAL goes out) until it is extended: a sealed epoch takes no more
    /// appends, so a controller that restarts in between finishes the reconfiguration even
    /// if every member is alive by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing: Option<u64>,
    /// A reconfiguration an operator asked for and that is not done yet (durable, so that a
    /// controller that restarts before it is done carries it out, with the chain asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Requested>,
    /// Nodes copying the log's committed records from its chain's tail, to join the chain
    /// once they have caught up (in the map, so that they know; durable, so that a restarted
    /// controller goes on with them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<u64>,
}

impl LogState {
    /// The current epoch.
    pub fn current(&self) -> &Epoch {
        self.epochs.last().expect("a log has at least one epoch")
    }

    /// The operator's request for the current epoch, if one is pending.
    pub fn pending_request(&self) -> Option<&Requested> {
        self.requested
            .as_ref()
            .filter(|r| r.epoch == self.current().epoch)
    }
}

/// A reconfiguration an operator asked for: seal `epoch` and start the next one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// The epoch to seal.
    pub epoch: u64,
    /// The next epoch's chain, head first; `None`: the controller's choice, as after a
    /// failure (`chainlog log seal`).
    pub chain: Option<Vec<u64>>,
}

/// Which chain [`ClusterState::extend`] starts the next epoch with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// The controller's choice: the members that sealed, in order, less the drained ones
    /// (unless only a drained one holds the log), and nobody new: a node that joined inside
    /// the epoch would hold its appends up while it copies the whole log, so a short chain
    /// grows back through learners ([`Target::Promote`]) instead.
    Auto,
    /// As [`Target::Auto`], then these learners of the log at the tail (those still live,
    /// not drained and learners of it), up to the replication factor: they caught up
    /// outside the chain, and leave the log's learners.
    Promote(&'a [u64]),
    /// This chain, checked as [`ClusterState::request`] checks it and against the seals. A
    /// node new to the chain joins at the tail and copies the log inside the epoch.
    Chain(&'a [u64]),
}

/// Why a transition was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Node id 0 names no node.
    #[error("node id 0 is not a node id")]
    NodeIdZero,
    /// A node has at least one shard.
    #[error("node {node_id} registered with 0 shards")]
    NoShards {
        /// The node.
        node_id: u64,
    },
    /// The address is empty or longer than `ADDR_BYTES_MAX` (255).
    #[error("node {node_id}: an address of {len} bytes (1..={ADDR_BYTES_MAX})")]
    BadAddr {
        /// The node.
        node_id: u64,
        /// The address's length.
        len: usize,
    },
    /// A zone or rack label longer than `LABEL_BYTES_MAX` (64).
    #[error("node {node_id}: a zone or rack label of {len} bytes (0..={LABEL_BYTES_MAX})")]
    BadLabel {
        /// The node.
        node_id: u64,
        /// The label's length.
        len: usize,
    },
    /// [`NODES_MAX`] nodes are registered already.
    #[error("{max} nodes are registered, the most a cluster may have")]
    TooManyNodes {
        /// [`NODES_MAX`].
        max: usize,
    },
    /// [`LOGS_MAX`] logs exist already.
    #[error("{max} logs exist, the most a cluster may hold")]
    TooManyLogs {
        /// [`LOGS_MAX`].
        max: usize,
    },
    /// No node with this id registered.
    #[error("node {node_id} is not registered")]
    UnknownNode {
        /// The node.
        node_id: u64,
    },
    /// Fewer live nodes than the replication factor.
    #[error("replication factor {rf} needs {rf} live nodes; {live} are alive")]
    NotEnoughNodes {
        /// The replication factor asked for.
        rf: u8,
        /// Live nodes.
        live: usize,
    },
    /// The name cannot name a log.
    #[error("log name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// A log with this name (with another replication factor), or another log with the same
    /// id, exists.
    #[error("log {name:?} exists (id {log_id}, replication factor {replication_factor})")]
    LogExists {
        /// The existing log's id.
        log_id: u64,
        /// The existing log's name.
        name: String,
        /// The existing log's replication factor.
        replication_factor: u8,
    },
    /// No log with this id.
    #[error("no log {log_id}")]
    UnknownLog {
        /// The id asked for.
        log_id: u64,
    },
    /// A reconfiguration of an epoch that is not the log's current one (another
    /// reconfiguration won).
    #[error("log {log_id} is in epoch {current}, not {asked}")]
    StaleEpoch {
        /// The log.
        log_id: u64,
        /// The epoch the reconfiguration started from.
        asked: u64,
        /// The log's current epoch.
        current: u64,
    },
    /// A new epoch needs at least one replica of the old one that sealed it (it holds every
    /// acknowledged record).
    #[error("log {log_id}: no replica of epoch {epoch} sealed it")]
    NoSurvivor {
        /// The log.
        log_id: u64,
        /// The epoch.
        epoch: u64,
    },
    /// Every replica of the new chain that sealed the old epoch ended below the epoch's
    /// start: each is still copying older records (a replica that joined and had not caught
    /// up), so none holds every acknowledged record.
    #[error(
        "log {log_id}: no replica of the new chain that sealed epoch {epoch} holds every record \
         below its start LSN {start_lsn} (the longest ends at {longest}: still catching up)"
    )]
    Behind {
        /// The log.
        log_id: u64,
        /// The sealed epoch.
        epoch: u64,
        /// The sealed epoch's start.
        start_lsn: u64,
        /// The longest end among those replicas.
        longest: u64,
    },
    /// A chain asked for cannot replace the current one.
    #[error("log {log_id}: chain {chain:?} refused: {reason}")]
    ChainRefused {
        /// The log.
        log_id: u64,
        /// The chain asked for.
        chain: Vec<u64>,
        /// Why.
        reason: String,
    },
    /// A node cannot learn the log: it is in its chain or a learner of it already, not
    /// alive, or drained.
    #[error("log {log_id}: node {node_id} cannot learn it: {reason}")]
    LearnerRefused {
        /// The log.
        log_id: u64,
        /// The node.
        node_id: u64,
        /// Why.
        reason: &'static str,
    },
    /// A chain asked for is longer than the replication factor.
    #[error("log {log_id}: a chain of {len} nodes, above its replication factor {rf}")]
    ChainTooLong {
        /// The log.
        log_id: u64,
        /// The chain's length.
        len: usize,
        /// The log's replication factor.
        rf: u8,
    },
}

/// What [`ClusterState::create_log`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    /// The log's id.
    pub log_id: u64,
    /// True if the log was created now (the state changed and must be persisted); false if
    /// it existed with the same name and replication factor (a retried create).
    pub new: bool,
}

/// The nodes, logs and map version. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    version: u64,
    nodes: BTreeMap<u64, NodeState>,
    logs: BTreeMap<u64, LogState>,
    /// A setting, not state: how recent a heartbeat keeps a node alive.
    #[serde(skip, default = "liveness_default")]
    liveness: Duration,
    /// Learners found caught up with their log's chain ([`ClusterState::set_ready`]), by
    /// (log, node), with the epoch they were caught up in. Not durable: a restarted
    /// controller asks them again before it promotes any.
    #[serde(skip)]
    ready: BTreeMap<(u64, u64), u64>,
}

fn liveness_default() -> Duration {
    LIVENESS_DEFAULT
}

impl Default for ClusterState {
    fn default() -> ClusterState {
        ClusterState::new(LIVENESS_DEFAULT)
    }
}

impl ClusterState {
    /// An empty cluster (version 0) whose nodes are alive for `liveness` after a heartbeat.
    pub fn new(liveness: Duration) -> ClusterState {
        ClusterState {
            version: 0,
            nodes: BTreeMap::new(),
            logs: BTreeMap::new(),
            liveness,
            ready: BTreeMap::new(),
        }
    }

    /// This state with nodes alive for `liveness` after a heartbeat (the setting is not
    /// stored with the state).
    pub fn with_liveness(self, liveness: Duration) -> ClusterState {
        ClusterState { liveness, ..self }
    }

    /// The map version: 0 for an empty cluster, one more with every change of the map.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The node with this id.
    pub fn node(&self, node_id: u64) -> Option<&NodeState> {
        self.nodes.get(&node_id)
    }

    /// Every registered node, ascending id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values()
    }

    /// The log with this id.
    pub fn log(&self, log_id: u64) -> Option<&LogState> {
        self.logs.get(&log_id)
    }

    /// The log called `name`.
    pub fn log_named(&self, name: &str) -> Option<&LogState> {
        self.log(log_id_of(name)).filter(|log| log.name == name)
    }

    /// Logs with ids above `after`, ascending, at most `max`.
    pub fn logs_after(&self, after: u64, max: usize) -> impl Iterator<Item = &LogState> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.logs
            .range((Excluded(after), Unbounded))
            .map(|(_, log)| log)
            .take(max)
    }

    /// True if `node` registered or heartbeated within the liveness timeout before `now`.
    pub fn is_alive(&self, node: &NodeState, now: Instant) -> bool {
        node.last_heartbeat.is_some_and(|at| {
            let silent = now.saturating_duration_since(at);
            // A suspect (named by a neighbour after its heartbeat) is dead sooner: a live
            // one heartbeats again within a fifth of the timeout and clears the suspicion.
            let suspect = node.suspected.is_some_and(|s| s > at);
            silent <= self.liveness && !(suspect && silent > self.liveness / SUSPECT_FRACTION)
        })
    }

    /// Node `node_id` was named by a neighbour whose replication connection with it failed
    /// (a HEARTBEAT's `suspect`): unless it heartbeats again within a fifth of the liveness
    /// timeout since its last heartbeat, it is dead from then on ([`is_alive`](Self::is_alive)).
    /// Unknown ids are ignored (a neighbour may name a node the controller forgot).
    pub fn suspect(&mut self, node_id: u64, now: Instant) {
        if let Some(node) = self.nodes.get_mut(&node_id) {
            node.suspected = Some(now);
        }
    }

    /// Registers node `node_id`, in `zone` and `rack` (empty: none), (a registration is also
    /// a heartbeat, with nothing applied yet). The same id registering again, after a
    /// restart, replaces its address, shard count and labels; the chains it is in stay (a
    /// node that moved zones is not moved off them). Returns the map version (bumped if the
    /// map changed).
    pub fn register(
        &mut self,
        node_id: u64,
        addr: &str,
        shard_count: u16,
        zone: &str,
        rack: &str,
        now: Instant,
    ) -> Result<u64, StateError> {
        if node_id == 0 {
            return Err(StateError::NodeIdZero);
        }
        if shard_count == 0 {
            return Err(StateError::NoShards { node_id });
        }
        if addr.is_empty() || addr.len() > usize::from(ADDR_BYTES_MAX) {
            return Err(StateError::BadAddr {
                node_id,
                len: addr.len(),
            });
        }
        if let Some(label) = [zone, rack]
            .into_iter()
            .find(|label| label.len() > usize::from(LABEL_BYTES_MAX))
        {
            return Err(StateError::BadLabel {
                node_id,
                len: label.len(),
            });
        }
        if !self.nodes.contains_key(&node_id) && self.nodes.len() >= NODES_MAX {
            return Err(StateError::TooManyNodes { max: NODES_MAX });
        }
        let node = self.nodes.entry(node_id).or_insert_with(|| NodeState {
            node_id,
            addr: String::new(),
            shard_count: 0,
            last_heartbeat: None,
            applied_version: 0,
            suspected: None,
            drained: false,
            zone: String::new(),
            rack: String::new(),
        });
        node.last_heartbeat = Some(now);
        node.applied_version = 0;
        if node.addr != addr
            || node.shard_count != shard_count
            || node.zone != zone
            || node.rack != rack
        {
            node.addr = addr.to_string();
            node.shard_count = shard_count;
            node.zone = zone.to_string();
            node.rack = rack.to_string();
            self.version += 1;
        }
        Ok(self.version)
    }

    /// Records a heartbeat of `node_id`, which has applied map version `applied_version` on
    /// every shard. Returns the current map version (a node behind it fetches the map).
    pub fn heartbeat(
        &mut self,
        node_id: u64,
        applied_version: u64,
        now: Instant,
    ) -> Result<u64, StateError> {
        let node = self
            .nodes
            .get_mut(&node_id)
            .ok_or(StateError::UnknownNode { node_id })?;
        node.last_heartbeat = Some(now);
        node.applied_version = applied_version;
        Ok(self.version)
    }

    /// Creates the log `name` with `rf` replicas, placed over live nodes (module
    /// documentation), in epoch [`EPOCH_FIRST`] from LSN 0, and bumps the version. A log of
    /// that name and replication factor that exists already is not an error (a retried
    /// create): it is returned with `new` false, and nothing changes. `rf` is at least 1: the
    /// server replaces a CREATE_LOG's 0 (`RF_DEFAULT`) with its default before.
    pub fn create_log(&mut self, name: &str, rf: u8, now: Instant) -> Result<Created, StateError> {
        let invalid = |reason: String| StateError::InvalidName {
            name: name.to_string(),
            reason,
        };
        chainlog_net::check_name(name.as_bytes(), &chainlog_net::Limits::DEFAULT)
            .map_err(|e| invalid(e.to_string()))?;
        let log_id = log_id_of(name);
        if log_id == 0 || log_id == u64::MAX {
            return Err(invalid(format!("its id {log_id:#x} is reserved")));
        }
        assert!(
            rf >= 1,
            "the server resolves replication factor 0 (the default) first"
        );
        if let Some(log) = self.logs.get(&log_id) {
            if log.name == name && log.replication_factor == rf {
                return Ok(Created { log_id, new: false });
            }
            return Err(StateError::LogExists {
                log_id,
                name: log.name.clone(),
                replication_factor: log.replication_factor,
            });
        }
        if self.logs.len() >= LOGS_MAX {
            return Err(StateError::TooManyLogs { max: LOGS_MAX });
        }
        let chain = self.place(rf, now)?;
        self.version += 1;
        self.logs.insert(
            log_id,
            LogState {
                log_id,
                name: name.to_string(),
                replication_factor: rf,
                created_version: self.version,
                epochs: vec![Epoch {
                    epoch: EPOCH_FIRST,
                    chain,
                    start_lsn: 0,
                    trim_lsn: 0,
                }],
                sealing: None,
                requested: None,
                learners: Vec::new(),
            },
        );
        Ok(Created { log_id, new: true })
    }

    /// The chain for a new log of `rf` replicas (module documentation), head first.
    fn place(&self, rf: u8, now: Instant) -> Result<Vec<u64>, StateError> {
        let mut picked = self.pick(&[], usize::from(rf), now);
        if picked.len() < usize::from(rf) {
            return Err(StateError::NotEnoughNodes {
                rf,
                live: picked.len(),
            });
        }
        // The head: the picked node heading the fewest chains (then the lowest id).
        let heads = |node: u64| {
            self.logs
                .values()
                .filter(|log| log.current().chain.first() == Some(&node))
                .count()
        };
        let head = (0..picked.len())
            .min_by_key(|&i| (heads(picked[i]), picked[i]))
            .expect("rf is at least 1");
        let head = picked.remove(head);
        Ok(std::iter::once(head).chain(picked).collect())
    }

    /// Records that the controller is about to seal `epoch` of `log_id` (its current one):
    /// true if that is news (the state must be persisted before any SEAL is sent), false if
    /// it was recorded already. Refused if the epoch is not current (another
    /// reconfiguration won). Not part of the map: the version stays.
    pub fn begin_seal(&mut self, log_id: u64, epoch: u64) -> Result<bool, StateError> {
        let log = self
            .logs
            .get_mut(&log_id)
            .ok_or(StateError::UnknownLog { log_id })?;
        let current = log.current().epoch;
        if current != epoch {
            return Err(StateError::StaleEpoch {
                log_id,
                asked: epoch,
                current,
            });
        }
        Ok(log.sealing.replace(epoch).is_none())
    }

    /// Marks node `node_id` drained (`drained` true) or not, and bumps the version if that
    /// changed (the map shows it). A drained node gets no new chain (placement and spares
    /// skip it) and the reconfiguration moves the chains holding it off it
    /// ([`super::reconfig::plan`]). Returns the map version.
    pub fn drain(&mut self, node_id: u64, drained: bool) -> Result<u64, StateError> {
        let node = self
            .nodes
            .get_mut(&node_id)
            .ok_or(StateError::UnknownNode { node_id })?;
        if node.drained != drained {
            node.drained = drained;
            self.version += 1;
        }
        Ok(self.version)
    }

    /// Records an operator's request to seal `log_id`'s current epoch and start the next
    /// one, with `chain` or (`None`) the chain the controller picks; the reconfiguration
    /// carries it out ([`super::reconfig::plan`]). `epoch`, if given, must be the current
    /// one. The chain is checked now ([`ClusterState::check_chain`]), and again against the
    /// seals when the next epoch starts. Asking again for the same is not an error; asking
    /// for something else while a request of the epoch is pending is. Returns the request.
    pub fn request(
        &mut self,
        log_id: u64,
        epoch: Option<u64>,
        chain: Option<Vec<u64>>,
        now: Instant,
    ) -> Result<Requested, StateError> {
        let log = self
            .logs
            .get(&log_id)
            .ok_or(StateError::UnknownLog { log_id })?;
        let current = log.current().epoch;
        if let Some(asked) = epoch.filter(|&e| e != current) {
            return Err(StateError::StaleEpoch {
                log_id,
                asked,
                current,
            });
        }
        if let Some(chain) = &chain {
            self.check_chain(log, chain, now)?;
        }
        let requested = Requested {
            epoch: current,
            chain,
        };
        match log.pending_request() {
            Some(pending) if *pending == requested => {}
            Some(pending) => {
                return Err(StateError::ChainRefused {
                    log_id,
                    chain: requested.chain.unwrap_or_default(),
                    reason: format!(
                        "a reconfiguration of epoch {current} to {} is under way",
                        pending
                            .chain
                            .as_ref()
                            .map_or("the controller's chain".into(), |c| {
                                format!("chain {c:?}")
                            })
                    ),
                })
            }
            None => {
                self.logs.get_mut(&log_id).expect("found above").requested =
                    Some(requested.clone());
            }
        }
        Ok(requested)
    }

    /// Whether `chain` may follow `log`'s current epoch, before any seal: 1 to rf distinct
    /// registered nodes; at least one member of the current chain (every record is there),
    /// the current members it keeps alive (they must seal) and in their current order (the
    /// order in which they hold records); the nodes new to the chain after them, at the tail
    /// (they copy the log from their predecessor), alive and not drained.
    pub fn check_chain(
        &self,
        log: &LogState,
        chain: &[u64],
        now: Instant,
    ) -> Result<(), StateError> {
        let refuse = |reason: String| StateError::ChainRefused {
            log_id: log.log_id,
            chain: chain.to_vec(),
            reason,
        };
        if chain.len() > usize::from(log.replication_factor) {
            return Err(StateError::ChainTooLong {
                log_id: log.log_id,
                len: chain.len(),
                rf: log.replication_factor,
            });
        }
        let current = &log.current().chain;
        let mut kept = Vec::new();
        for (i, &node_id) in chain.iter().enumerate() {
            if chain[..i].contains(&node_id) {
                return Err(refuse(format!("node {node_id} is named twice")));
            }
            let node = self
                .nodes
                .get(&node_id)
                .ok_or(StateError::UnknownNode { node_id })?;
            if !self.is_alive(node, now) {
                return Err(refuse(format!("node {node_id} is not alive")));
            }
            match current.iter().position(|&n| n == node_id) {
                Some(position) => {
                    if kept.len() < i {
                        return Err(refuse(format!(
                            "node {node_id} of the current chain comes after a node new to it: \
                             new nodes join at the tail"
                        )));
                    }
                    if kept.last().is_some_and(|&last| last > position) {
                        return Err(refuse(format!(
                            "node {node_id} comes after a node it precedes in the current chain \
                             {current:?}: the members kept stay in their order"
                        )));
                    }
                    kept.push(position);
                }
                None if node.drained => {
                    return Err(refuse(format!("node {node_id} is drained")));
                }
                None => {}
            }
        }
        if kept.is_empty() {
            return Err(refuse(format!(
                "it keeps no member of the current chain {current:?}, which alone hold the \
                 log's records"
            )));
        }
        Ok(())
    }

    /// Starts `log_id`'s next epoch after its current one, `from_epoch`, was sealed at the
    /// replicas `sealed` (each with the end it sealed at), with the chain `target` says, and
    /// bumps the version; a pending request of `from_epoch` is done, and so is its seal
    /// ([`ClusterState::begin_seal`]).
    ///
    /// Every acknowledged record of the epoch is on every one of its replicas, so a replica
    /// that sealed holds them all, and so are the records below the epoch's start, unless
    /// the replica joined the chain in this epoch and is still copying them: its end is then
    /// below the start. So the members the new chain keeps (they must have sealed) must
    /// include one that ended at or above the start ([`StateError::Behind`] otherwise).
    /// Records above the shortest kept end may have been acknowledged, so the new epoch
    /// starts at the longest kept end (nothing acknowledged is dropped, nothing renumbered);
    /// records beyond it are only on members the chain leaves out, so none was acknowledged.
    /// Likewise every acknowledged trim of the epoch is at or below `trim_point`, the
    /// greatest trim point among the seals (`super::reconfig::UsableSeals`): the new epoch
    /// starts trimmed at it, or at the epoch before's trim point if that is greater.
    ///
    /// [`Target::Auto`] keeps the members that sealed, in order, less the drained ones (all
    /// of them if no other holds the records), and adds nobody: the log runs short until
    /// learners have copied it ([`ClusterState::add_learner`]) and are promoted
    /// ([`Target::Promote`]: the same, then the ready learners at the tail, up to the
    /// replication factor). A member of the old chain that did not seal is never kept: it
    /// may still hold (or take) records of the old epoch beyond its end, and comes back
    /// later, as a learner. A node in the new chain is no longer a learner of the log, and
    /// no learner is ready in the new epoch until it is asked again.
    ///
    /// Refused, with nothing changed: an epoch that is not the current one (another
    /// reconfiguration won), no sealed replica, none of the kept ones at the start, a
    /// [`Target::Chain`] that [`ClusterState::check_chain`] refuses or that keeps a member
    /// that did not seal.
    pub fn extend(
        &mut self,
        log_id: u64,
        from_epoch: u64,
        sealed: &[(u64, u64)],
        trim_point: u64,
        target: Target<'_>,
        now: Instant,
    ) -> Result<Epoch, StateError> {
        let log = self
            .logs
            .get(&log_id)
            .ok_or(StateError::UnknownLog { log_id })?;
        let current = log.current();
        if current.epoch != from_epoch {
            return Err(StateError::StaleEpoch {
                log_id,
                asked: from_epoch,
                current: current.epoch,
            });
        }
        let end_of = |node: u64| sealed.iter().find(|(s, _)| *s == node).map(|&(_, e)| e);
        let sealed_members: Vec<u64> = current
            .chain
            .iter()
            .copied()
            .filter(|&n| end_of(n).is_some())
            .collect();
        if sealed_members.is_empty() {
            return Err(StateError::NoSurvivor {
                log_id,
                epoch: from_epoch,
            });
        }
        let holds_all = |kept: &[u64]| {
            kept.iter()
                .filter_map(|&n| end_of(n))
                .any(|end| end >= current.start_lsn)
        };
        let chain = match target {
            Target::Chain(chain) => {
                self.check_chain(log, chain, now)?;
                if let Some(&missing) = chain
                    .iter()
                    .find(|&&n| current.chain.contains(&n) && end_of(n).is_none())
                {
                    return Err(StateError::ChainRefused {
                        log_id,
                        chain: chain.to_vec(),
                        reason: format!("node {missing} of the current chain did not seal it"),
                    });
                }
                chain.to_vec()
            }
            Target::Auto | Target::Promote(_) => {
                let undrained: Vec<u64> = sealed_members
                    .iter()
                    .copied()
                    .filter(|n| !self.nodes.get(n).is_some_and(|node| node.drained))
                    .collect();
                let mut chain = if holds_all(&undrained) {
                    undrained
                } else {
                    sealed_members.clone()
                };
                if let Target::Promote(learners) = target {
                    let wanted = usize::from(log.replication_factor).saturating_sub(chain.len());
                    let promoted: Vec<u64> = learners
                        .iter()
                        .copied()
                        .filter(|&n| {
                            log.learners.contains(&n)
                                && !current.chain.contains(&n)
                                && self.can_learn(n, now)
                        })
                        .take(wanted)
                        .collect();
                    chain.extend(promoted);
                }
                chain
            }
        };
        let kept: Vec<u64> = chain
            .iter()
            .copied()
            .filter(|n| current.chain.contains(n))
            .collect();
        let longest = kept.iter().filter_map(|&n| end_of(n)).max().unwrap_or(0);
        if !holds_all(&kept) {
            return Err(StateError::Behind {
                log_id,
                epoch: from_epoch,
                start_lsn: current.start_lsn,
                longest,
            });
        }
        let epoch = Epoch {
            epoch: from_epoch + 1,
            chain,
            start_lsn: longest,
            trim_lsn: current.trim_lsn.max(trim_point),
        };
        self.version += 1;
        let log = self.logs.get_mut(&log_id).expect("checked above");
        log.learners.retain(|n| !epoch.chain.contains(n));
        log.epochs.push(epoch.clone());
        log.sealing = None;
        log.requested = None;
        self.ready.retain(|&(log, _), _| log != log_id);
        Ok(epoch)
    }

    /// True if `node_id` is registered, alive at `now` and not drained: it may learn a log.
    fn can_learn(&self, node_id: u64, now: Instant) -> bool {
        self.nodes
            .get(&node_id)
            .is_some_and(|node| self.is_alive(node, now) && !node.drained)
    }

    /// Makes `node_id` a learner of `log_id` (module documentation) and bumps the version;
    /// returns the new version. Refused, with nothing changed, if it is in the log's current
    /// chain or a learner of it already, not alive or drained, or if the chain and learners
    /// would be more than the replication factor.
    pub fn add_learner(
        &mut self,
        log_id: u64,
        node_id: u64,
        now: Instant,
    ) -> Result<u64, StateError> {
        let log = self
            .logs
            .get(&log_id)
            .ok_or(StateError::UnknownLog { log_id })?;
        if !self.nodes.contains_key(&node_id) {
            return Err(StateError::UnknownNode { node_id });
        }
        let refuse = |reason| StateError::LearnerRefused {
            log_id,
            node_id,
            reason,
        };
        if log.current().chain.contains(&node_id) {
            return Err(refuse("it is in the chain"));
        }
        if log.learners.contains(&node_id) {
            return Err(refuse("it is a learner of it already"));
        }
        if !self.can_learn(node_id, now) {
            return Err(refuse("it is not alive, or drained"));
        }
        if log.current().chain.len() + log.learners.len() >= usize::from(log.replication_factor) {
            return Err(refuse(
                "the chain and its learners make the replication factor",
            ));
        }
        self.version += 1;
        let log = self.logs.get_mut(&log_id).expect("checked above");
        log.learners.push(node_id);
        Ok(self.version)
    }

    /// Drops `node_id` from `log_id`'s learners (the node deletes its copy) and bumps the
    /// version; returns the map version (unchanged if it was not one).
    pub fn remove_learner(&mut self, log_id: u64, node_id: u64) -> Result<u64, StateError> {
        let log = self
            .logs
            .get_mut(&log_id)
            .ok_or(StateError::UnknownLog { log_id })?;
        let before = log.learners.len();
        log.learners.retain(|&n| n != node_id);
        if log.learners.len() != before {
            self.version += 1;
        }
        self.ready.remove(&(log_id, node_id));
        Ok(self.version)
    }

    /// Records whether learner `node_id` of `log_id` has caught up with the log's chain in
    /// `epoch` (as the controller last found by asking them: TAIL_HINT), for
    /// [`ClusterState::ready_learners`]. Not part of the map, not durable. A node that is not
    /// a learner of the log is ignored.
    pub fn set_ready(&mut self, log_id: u64, node_id: u64, epoch: u64, ready: bool) {
        let learner = self
            .logs
            .get(&log_id)
            .is_some_and(|log| log.learners.contains(&node_id));
        if ready && learner {
            self.ready.insert((log_id, node_id), epoch);
        } else {
            self.ready.remove(&(log_id, node_id));
        }
    }

    /// The learners of `log` found caught up in its current epoch that are alive and not
    /// drained at `now`, in the order they became learners: those to promote.
    pub fn ready_learners(&self, log: &LogState, now: Instant) -> Vec<u64> {
        let epoch = log.current().epoch;
        log.learners
            .iter()
            .copied()
            .filter(|&n| {
                self.ready.get(&(log.log_id, n)) == Some(&epoch)
                    && !log.current().chain.contains(&n)
                    && self.can_learn(n, now)
            })
            .collect()
    }

    /// Up to `n` nodes to join a chain whose members (and learners) are `taken`, in the order
    /// picked: where a new log goes ([`ClusterState::create_log`], `taken` empty) and which
    /// nodes learn a short chain's log ([`super::reconfig`]). The module documentation has
    /// the rule: live, undrained nodes outside `taken`, one at a time, each in the zone (then
    /// the rack) that `taken` and the nodes picked before it hold the fewest of, the least
    /// loaded among those.
    pub fn pick(&self, taken: &[u64], n: usize, now: Instant) -> Vec<u64> {
        let mut candidates: Vec<&NodeState> = self
            .by_load(taken, now)
            .into_iter()
            .map(|id| &self.nodes[&id])
            .collect();
        let mut group: Vec<&NodeState> = taken.iter().filter_map(|id| self.nodes.get(id)).collect();
        let mut picked = Vec::with_capacity(n.min(candidates.len()));
        while picked.len() < n && !candidates.is_empty() {
            let sharing = |candidate: &NodeState| {
                let zone = group.iter().filter(|g| g.same_zone(candidate)).count();
                let rack = group.iter().filter(|g| g.same_rack(candidate)).count();
                (zone, rack)
            };
            // The first of the fewest sharing: `candidates` is in load order.
            let best = (0..candidates.len())
                .min_by_key(|&i| (sharing(candidates[i]), i))
                .expect("candidates is not empty");
            let node = candidates.remove(best);
            picked.push(node.node_id);
            group.push(node);
        }
        picked
    }

    /// Live nodes outside `taken` that are not drained, fewest chains first (a log a node
    /// learns counts as a chain: it copies that log), then fewest heads, then lowest id: the
    /// load order [`ClusterState::pick`] picks in, within the zone rule.
    fn by_load(&self, taken: &[u64], now: Instant) -> Vec<u64> {
        let mut load: BTreeMap<u64, (usize, usize)> = self
            .nodes
            .values()
            .filter(|node| {
                self.is_alive(node, now) && !node.drained && !taken.contains(&node.node_id)
            })
            .map(|node| (node.node_id, (0, 0)))
            .collect();
        for log in self.logs.values() {
            for (position, node_id) in log.current().chain.iter().enumerate() {
                if let Some((chains, heads)) = load.get_mut(node_id) {
                    *chains += 1;
                    *heads += usize::from(position == 0);
                }
            }
            for node_id in &log.learners {
                if let Some((chains, _)) = load.get_mut(node_id) {
                    *chains += 1;
                }
            }
        }
        let mut spares: Vec<(usize, usize, u64)> = load
            .into_iter()
            .map(|(node_id, (chains, heads))| (chains, heads, node_id))
            .collect();
        spares.sort_unstable();
        spares.into_iter().map(|(_, _, id)| id).collect()
    }

    /// Logs whose current chain is shorter than their replication factor.
    pub fn under_replicated(&self) -> impl Iterator<Item = &LogState> {
        self.logs
            .values()
            .filter(|log| log.current().chain.len() < usize::from(log.replication_factor))
    }

    /// The nodes of `log_id`'s current chain that have not yet reported applying the map
    /// version that created it, in chain order: the create is complete when there are none.
    pub fn pending_replicas(&self, log_id: u64) -> Result<Vec<u64>, StateError> {
        let log = self
            .logs
            .get(&log_id)
            .ok_or(StateError::UnknownLog { log_id })?;
        Ok(log
            .current()
            .chain
            .iter()
            .copied()
            .filter(|node_id| {
                self.nodes
                    .get(node_id)
                    .is_none_or(|node| node.applied_version < log.created_version)
            })
            .collect())
    }

    /// Deletes log `log_id` and bumps the version; returns the new version.
    pub fn delete_log(&mut self, log_id: u64) -> Result<u64, StateError> {
        self.logs
            .remove(&log_id)
            .ok_or(StateError::UnknownLog { log_id })?;
        self.ready.retain(|&(log, _), _| log != log_id);
        self.version += 1;
        Ok(self.version)
    }

    /// `node` as the map shows it at `now`.
    pub fn map_node(&self, node: &NodeState, now: Instant) -> MapNode {
        MapNode {
            node_id: node.node_id,
            addr: node.addr.clone(),
            shard_count: node.shard_count,
            alive: self.is_alive(node, now),
            drained: node.drained,
            last_heartbeat_ms: node.last_heartbeat.map_or(HEARTBEAT_MS_NEVER, |at| {
                u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
            }),
            zone: node.zone.clone(),
            rack: node.rack.clone(),
        }
    }

    /// The whole cluster map at `now`.
    pub fn map(&self, now: Instant) -> ClusterMap {
        ClusterMap::new(
            self.version,
            self.nodes().map(|node| self.map_node(node, now)).collect(),
            self.logs.values().map(MapLog::from).collect(),
        )
    }

    /// Checks what a loaded state must satisfy: ids match their keys and names, versions
    /// are not ahead of the map's, every log has epochs in increasing order whose chains are
    /// nonempty, within the replication factor, of distinct registered nodes, and learners
    /// that are distinct registered nodes outside its current chain.
    pub fn check(&self) -> Result<(), String> {
        for (&id, node) in &self.nodes {
            if id == 0 || node.node_id != id || node.shard_count == 0 {
                return Err(format!("node {id}: bad id or shard count"));
            }
            if node.addr.is_empty() || node.addr.len() > usize::from(ADDR_BYTES_MAX) {
                return Err(format!("node {id}: bad address"));
            }
            if node.zone.len().max(node.rack.len()) > usize::from(LABEL_BYTES_MAX) {
                return Err(format!("node {id}: a zone or rack label too long"));
            }
        }
        if self.nodes.len() > NODES_MAX || self.logs.len() > LOGS_MAX {
            return Err(format!(
                "{} nodes and {} logs, more than the {NODES_MAX} and {LOGS_MAX} allowed",
                self.nodes.len(),
                self.logs.len()
            ));
        }
        for (&id, log) in &self.logs {
            if log.log_id != id || log_id_of(&log.name) != id {
                return Err(format!(
                    "log {id}: the id is not its name's ({:?})",
                    log.name
                ));
            }
            if log.created_version == 0 || log.created_version > self.version {
                return Err(format!(
                    "log {id}: created by version {}, the map is at {}",
                    log.created_version, self.version
                ));
            }
            if log.epochs.is_empty() || log.epochs.windows(2).any(|w| w[0].epoch >= w[1].epoch) {
                return Err(format!("log {id}: no epochs, or not in increasing order"));
            }
            if log.sealing.is_some_and(|e| e != log.current().epoch) {
                return Err(format!(
                    "log {id}: sealing epoch {:?}, not its current one",
                    log.sealing
                ));
            }
            let learners = &log.learners;
            if learners
                .iter()
                .enumerate()
                .any(|(i, n)| learners[..i].contains(n) || log.current().chain.contains(n))
                || !learners.iter().all(|n| self.nodes.contains_key(n))
            {
                return Err(format!(
                    "log {id}: learners {learners:?} are not distinct registered nodes outside \
                     its chain"
                ));
            }
            for epoch in &log.epochs {
                let chain = &epoch.chain;
                let distinct = chain
                    .iter()
                    .enumerate()
                    .all(|(i, node)| !chain[..i].contains(node));
                if chain.is_empty()
                    || chain.len() > usize::from(log.replication_factor)
                    || !distinct
                    || !chain.iter().all(|node| self.nodes.contains_key(node))
                {
                    return Err(format!(
                        "log {id} epoch {}: chain {chain:?} is not of 1..={} distinct registered nodes",
                        epoch.epoch, log.replication_factor
                    ));
                }
            }
        }
        Ok(())
    }
}

impl From<&LogState> for MapLog {
    fn from(log: &LogState) -> MapLog {
        let epoch = log.current();
        MapLog {
            log_id: log.log_id,
            name: log.name.clone(),
            replication_factor: log.replication_factor,
            epoch: epoch.epoch,
            start_lsn: epoch.start_lsn,
            trim_lsn: epoch.trim_lsn,
            chain: epoch.chain.clone(),
            learners: log.learners.clone(),
            created_version: log.created_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A state with nodes `1..=n` registered (and so alive) at `t0`.
    fn cluster(n: u64, t0: Instant) -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=n {
            state
                .register(id, &format!("10.0.0.{id}:7400"), 2, "", "", t0)
                .expect("register");
        }
        state
    }

    /// A node a neighbour names is dead once silent for a fifth of the liveness timeout,
    /// unless it heartbeats again after the report; nobody else is touched.
    #[test]
    fn a_suspect_that_stays_silent_is_dead_early_and_one_that_heartbeats_is_not() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut state = cluster(3, t0); // liveness 500 ms
        let alive = |state: &ClusterState, id: u64, at: Instant| {
            state.is_alive(state.node(id).expect("registered"), at)
        };
        state.suspect(1, t0 + ms(20));
        state.suspect(2, t0 + ms(20));
        state.suspect(99, t0 + ms(20)); // unknown: ignored
        state.heartbeat(2, 0, t0 + ms(50)).expect("heartbeat");
        assert!(
            alive(&state, 1, t0 + ms(100)),
            "within a fifth of the timeout"
        );
        assert!(!alive(&state, 1, t0 + ms(101)), "silent past it: dead");
        assert!(
            alive(&state, 2, t0 + ms(400)),
            "it heartbeated after the report"
        );
        assert!(
            alive(&state, 3, t0 + ms(500)),
            "not suspected: the full timeout"
        );
        assert!(!alive(&state, 3, t0 + ms(501)));
    }

    #[test]
    fn placement_spreads_heads_and_replicas_evenly() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        for i in 0..9 {
            state
                .create_log(&format!("log-{i}"), 2, t0)
                .expect("create");
        }
        for node in 1..=3 {
            let chains = state
                .logs
                .values()
                .filter(|l| l.current().chain.contains(&node));
            let heads = state.logs.values().filter(|l| l.current().chain[0] == node);
            assert_eq!((chains.count(), heads.count()), (6, 3), "node {node}");
        }
        // The first three follow the rule step by step: [1,2], then node 3 (in no chain)
        // with node 2 (in one, heading none) led by 2, then 3 and 1 led by 3.
        let chains: Vec<Vec<u64>> = ["log-0", "log-1", "log-2"]
            .iter()
            .map(|name| state.log_named(name).expect("log").current().chain.clone())
            .collect();
        assert_eq!(chains, [vec![1, 2], vec![2, 3], vec![3, 1]]);
    }

    /// A state with nodes `1..` registered at `t0` in these (zone, rack)s.
    fn zoned(labels: &[(&str, &str)], t0: Instant) -> ClusterState {
        let mut state = ClusterState::default();
        for (id, (zone, rack)) in (1..).zip(labels) {
            state
                .register(id, &format!("10.0.0.{id}:7400"), 2, zone, rack, t0)
                .expect("register");
        }
        state
    }

    /// Creates `log-0 .. log-(n-1)` with `rf` replicas; returns their chains, in order.
    fn create_chains(state: &mut ClusterState, n: usize, rf: u8, t0: Instant) -> Vec<Vec<u64>> {
        (0..n)
            .map(|i| {
                let id = state
                    .create_log(&format!("log-{i}"), rf, t0)
                    .expect("create")
                    .log_id;
                state.logs[&id].current().chain.clone()
            })
            .collect()
    }

    /// The zones of `chain`'s nodes, in chain order.
    fn zones_of<'a>(state: &'a ClusterState, chain: &[u64]) -> Vec<&'a str> {
        chain
            .iter()
            .map(|id| state.node(*id).expect("registered").zone.as_str())
            .collect()
    }

    /// (chains, heads) of every node, by id.
    fn load(state: &ClusterState) -> BTreeMap<u64, (usize, usize)> {
        let mut load: BTreeMap<u64, (usize, usize)> =
            state.nodes().map(|n| (n.node_id, (0, 0))).collect();
        for log in state.logs.values() {
            for (i, id) in log.current().chain.iter().enumerate() {
                let (chains, heads) = load.get_mut(id).expect("registered");
                *chains += 1;
                *heads += usize::from(i == 0);
            }
        }
        load
    }

    #[test]
    fn three_zones_of_two_nodes_put_every_chain_of_three_in_three_zones_evenly() {
        let t0 = Instant::now();
        let labels = [
            ("a", ""),
            ("a", ""),
            ("b", ""),
            ("b", ""),
            ("c", ""),
            ("c", ""),
        ];
        let mut state = zoned(&labels, t0);
        for (i, chain) in create_chains(&mut state, 12, 3, t0).iter().enumerate() {
            let mut zones = zones_of(&state, chain);
            zones.sort_unstable();
            assert_eq!(zones, ["a", "b", "c"], "log-{i}");
        }
        // 36 replicas and 12 heads over 6 nodes: 6 and 2 each.
        assert!(
            load(&state).values().all(|&l| l == (6, 2)),
            "{:?}",
            load(&state)
        );
    }

    #[test]
    fn two_zones_and_rf_3_put_two_in_one_zone_in_distinct_racks() {
        let t0 = Instant::now();
        let labels = [
            ("a", "r1"),
            ("a", "r1"),
            ("a", "r2"),
            ("b", "r1"),
            ("b", "r1"),
            ("b", "r2"),
        ];
        let mut state = zoned(&labels, t0);
        for (i, chain) in create_chains(&mut state, 12, 3, t0).iter().enumerate() {
            let zones = zones_of(&state, chain);
            let in_a = zones.iter().filter(|&&z| z == "a").count();
            assert!(in_a == 1 || in_a == 2, "log-{i}: {zones:?}");
            // The two in one zone are in its two racks (rack r1 of a is not rack r1 of b).
            let mut racks: Vec<(&str, &str)> = chain
                .iter()
                .map(|id| {
                    let node = state.node(*id).expect("registered");
                    (node.zone.as_str(), node.rack.as_str())
                })
                .collect();
            racks.sort_unstable();
            racks.dedup();
            assert_eq!(racks.len(), 3, "log-{i}: {racks:?}");
        }
    }

    #[test]
    fn nodes_without_a_zone_are_each_a_zone_of_their_own() {
        let t0 = Instant::now();
        // Zone a has three nodes, node 4 and 5 have none: rf 3 takes one of a, 4 and 5.
        let labels = [("a", ""), ("a", ""), ("a", ""), ("", "r1"), ("", "r1")];
        let mut state = zoned(&labels, t0);
        for (i, mut chain) in create_chains(&mut state, 6, 3, t0).into_iter().enumerate() {
            chain.sort_unstable();
            assert!(chain[0] <= 3 && chain[1..] == [4, 5], "log-{i}: {chain:?}");
        }
    }

    #[test]
    fn picking_several_spreads_them_over_the_zones_the_chain_lacks() {
        let t0 = Instant::now();
        let labels = [
            ("a", ""),
            ("a", ""),
            ("b", ""),
            ("b", ""),
            ("c", ""),
            ("c", ""),
        ];
        let state = zoned(&labels, t0);
        // A chain left with node 1 (zone a) gets one of b and one of c, not two of one zone,
        // nor node 2 before them.
        let picked = state.pick(&[1], 2, t0);
        let mut zones = zones_of(&state, &picked);
        zones.sort_unstable();
        assert_eq!(zones, ["b", "c"], "{picked:?}");
        // A second node in a zone only once every zone has one: [b, c], then the rest.
        assert_eq!(state.pick(&[1], 5, t0), [3, 5, 2, 4, 6]);
        // Drained and dead nodes are not picked: zone b has only node 4 then.
        let mut state = state;
        state.drain(3, true).expect("drain");
        assert_eq!(zones_of(&state, &state.pick(&[1, 5], 1, t0)), ["b"]);
        assert_eq!(state.pick(&[1, 5], 1, t0), [4]);
    }

    /// Random clusters (a seeded loop: the seed is in every message): zones, racks, nodes
    /// with no labels, drained nodes, replication factors. Every chain placed is as spread
    /// as the eligible (live, undrained) nodes allow: (a) it spans min(rf, eligible zones)
    /// zones, and more exactly, no zone holds two more of it than another zone that still
    /// had an eligible node left out (the greedy pick takes the zone it holds fewest of
    /// while one has a node to offer). When the cluster is uniform (every zone has the same
    /// racks, every rack the same number of nodes, none drained), (b) no node holds more
    /// than 1.1 times the mean number of chains per node, and (c) no node heads more than
    /// 1.1 times the mean number of heads plus one. Why (b) and (c) hold: every zone is
    /// alike, so the zone rule leaves every node equally often among the candidates of a
    /// pick, and within the candidates the least loaded is taken (the head: the fewest
    /// heads), which keeps any two alike nodes within a small constant of each other; with
    /// a mean of at least 40 chains and 20 heads a node, 1.1 times the mean leaves room for
    /// that constant.
    #[test]
    fn placement_spreads_zones_and_balances_over_random_clusters() {
        use chainlog_storage::SimRng;
        let t0 = Instant::now();
        for seed in 0..100 {
            let mut rng = SimRng::new(seed);
            let zone_count = 1 + rng.below(4) as usize;
            let rack_count = 1 + rng.below(3) as usize;
            let uniform = rng.one_in(2);
            let mut labels: Vec<(String, String)> = Vec::new();
            let mut drained = Vec::new();
            if uniform {
                let per_rack = 1 + rng.below(2) as usize;
                for zone in 0..zone_count {
                    for rack in 0..rack_count {
                        for _ in 0..per_rack {
                            labels.push((format!("z{zone}"), format!("r{rack}")));
                        }
                    }
                }
            } else {
                for id in 1..=(2 + rng.below(14)) {
                    // A tenth without a zone; a rack for some.
                    let zone = if rng.one_in(10) {
                        String::new()
                    } else {
                        format!("z{}", rng.below(zone_count as u64))
                    };
                    let rack = if rng.one_in(3) {
                        String::new()
                    } else {
                        format!("r{}", rng.below(rack_count as u64))
                    };
                    labels.push((zone, rack));
                    if rng.one_in(8) {
                        drained.push(id);
                    }
                }
            }
            let refs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(z, r)| (z.as_str(), r.as_str()))
                .collect();
            let mut state = zoned(&refs, t0);
            for &id in &drained {
                state.drain(id, true).expect("drain");
            }
            let eligible: Vec<NodeState> = state.nodes().filter(|n| !n.drained).cloned().collect();
            // A zone as placement counts them: a node without one is a zone of its own.
            let zone_of = |node: &NodeState| {
                if node.zone.is_empty() {
                    format!("node {}", node.node_id)
                } else {
                    node.zone.clone()
                }
            };
            let mut zones: Vec<String> = eligible.iter().map(&zone_of).collect();
            zones.sort_unstable();
            zones.dedup();
            if eligible.is_empty() {
                continue;
            }
            let rf = 1 + rng.below(eligible.len().min(5) as u64) as usize;
            let logs = (40 * eligible.len()).div_ceil(rf).max(20 * eligible.len());
            for i in 0..logs {
                let name = format!("log-{i}");
                let id = state
                    .create_log(&name, rf as u8, t0)
                    .unwrap_or_else(|e| panic!("seed {seed}: {name}: {e}"))
                    .log_id;
                let chain = &state.logs[&id].current().chain;
                let count = |zone: &str| {
                    chain
                        .iter()
                        .filter(|n| zone_of(&state.nodes[n]) == zone)
                        .count()
                };
                let spanned = zones.iter().filter(|z| count(z) > 0).count();
                assert_eq!(
                    spanned,
                    rf.min(zones.len()),
                    "seed {seed}: {name} on {chain:?}, zones {zones:?}"
                );
                for fuller in &zones {
                    for emptier in &zones {
                        let left_out = eligible
                            .iter()
                            .any(|n| zone_of(n) == *emptier && !chain.contains(&n.node_id));
                        assert!(
                            count(fuller) <= count(emptier) + 1 || !left_out,
                            "seed {seed}: {name} on {chain:?}: {fuller} holds {}, {emptier} {}                              and had a node to spare",
                            count(fuller),
                            count(emptier)
                        );
                    }
                }
            }
            if !uniform {
                continue;
            }
            let load = load(&state);
            let nodes = load.len() as f64;
            let (chains_max, heads_max) = load.values().fold((0, 0), |(c, h), &(chains, heads)| {
                (c.max(chains), h.max(heads))
            });
            let chains_mean = (logs * rf) as f64 / nodes;
            let heads_mean = logs as f64 / nodes;
            assert!(
                chains_max as f64 <= 1.1 * chains_mean,
                "seed {seed}: {zone_count} zones of {rack_count} racks, rf {rf}: a node in                  {chains_max} chains, the mean is {chains_mean}: {load:?}"
            );
            assert!(
                heads_max as f64 <= 1.1 * heads_mean + 1.0,
                "seed {seed}: {zone_count} zones of {rack_count} racks, rf {rf}: a node heads                  {heads_max}, the mean is {heads_mean}: {load:?}"
            );
        }
    }

    #[test]
    fn placement_uses_live_nodes_only_and_refuses_rf_above_them() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let later = t0 + 3 * SECOND;
        state.heartbeat(2, 0, later).expect("heartbeat");
        state.heartbeat(3, 0, later).expect("heartbeat");
        assert!(!state.is_alive(state.node(1).expect("node"), later));
        let created = state.create_log("a", 2, later).expect("two are alive");
        let log = state.log(created.log_id).expect("log");
        assert_eq!(log.current().chain, [2, 3]);
        let before = state.clone();
        assert_eq!(
            state.create_log("b", 3, later),
            Err(StateError::NotEnoughNodes { rf: 3, live: 2 })
        );
        assert_eq!(state, before, "a refused create changes nothing");
    }

    #[test]
    fn liveness_is_a_heartbeat_within_the_timeout() {
        let t0 = Instant::now();
        let mut state = cluster(1, t0).with_liveness(SECOND);
        let node = |s: &ClusterState| s.node(1).expect("node").clone();
        assert!(state.is_alive(&node(&state), t0 + SECOND));
        assert!(!state.is_alive(&node(&state), t0 + SECOND + Duration::from_millis(1)));
        let map = state.map(t0 + 2 * SECOND);
        assert_eq!(map.node(1).expect("node").last_heartbeat_ms, 2000);
        assert!(!map.node(1).expect("node").alive);
        state.heartbeat(1, 0, t0 + 2 * SECOND).expect("heartbeat");
        assert!(state.is_alive(&node(&state), t0 + 2 * SECOND));
        assert_eq!(
            state.heartbeat(9, 0, t0),
            Err(StateError::UnknownNode { node_id: 9 })
        );
    }

    #[test]
    fn registering_again_replaces_the_address_and_bumps_only_on_change() {
        let t0 = Instant::now();
        let mut state = cluster(2, t0);
        assert_eq!(state.version(), 2);
        assert_eq!(
            state.register(1, "10.0.0.1:7400", 2, "", "", t0),
            Ok(2),
            "no change"
        );
        assert_eq!(state.register(1, "10.0.0.9:8000", 4, "", "", t0), Ok(3));
        let node = state.node(1).expect("node");
        assert_eq!((node.addr.as_str(), node.shard_count), ("10.0.0.9:8000", 4));
        // Labels are part of the map: a new zone or rack is a new version, the same is not.
        assert_eq!(state.register(1, "10.0.0.9:8000", 4, "a", "r1", t0), Ok(4));
        assert_eq!(state.register(1, "10.0.0.9:8000", 4, "a", "r1", t0), Ok(4));
        assert_eq!(state.register(1, "10.0.0.9:8000", 4, "a", "r2", t0), Ok(5));
        let node = state.map(t0).node(1).expect("node").clone();
        assert_eq!((node.zone.as_str(), node.rack.as_str()), ("a", "r2"));
        let long = "z".repeat(65);
        assert_eq!(
            state.register(1, "10.0.0.9:8000", 4, &long, "", t0),
            Err(StateError::BadLabel {
                node_id: 1,
                len: 65
            })
        );
        assert_eq!(
            state.register(0, "x:1", 1, "", "", t0),
            Err(StateError::NodeIdZero)
        );
        assert_eq!(
            state.register(5, "x:1", 0, "", "", t0),
            Err(StateError::NoShards { node_id: 5 })
        );
        assert_eq!(
            state.register(5, "", 1, "", "", t0),
            Err(StateError::BadAddr { node_id: 5, len: 0 })
        );
        assert_eq!(state.nodes().count(), 2);
    }

    #[test]
    fn creates_wait_for_every_replica_to_apply_their_version() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let created = state.create_log("orders", 3, t0).expect("create");
        assert!(created.new);
        let version = state.version();
        assert_eq!(
            state.log(created.log_id).expect("log").created_version,
            version
        );
        assert_eq!(state.pending_replicas(created.log_id), Ok(vec![1, 2, 3]));
        state.heartbeat(1, version, t0).expect("heartbeat");
        state.heartbeat(3, version + 5, t0).expect("heartbeat");
        assert_eq!(state.pending_replicas(created.log_id), Ok(vec![2]));
        state.heartbeat(2, version, t0).expect("heartbeat");
        assert_eq!(state.pending_replicas(created.log_id), Ok(vec![]));
        // A node that registers again (restarted) has applied nothing yet.
        state
            .register(2, "10.0.0.2:7400", 2, "", "", t0)
            .expect("register");
        assert_eq!(state.pending_replicas(created.log_id), Ok(vec![2]));
    }

    #[test]
    fn a_retried_create_is_the_same_log_and_another_rf_is_log_exists() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let first = state.create_log("orders", 2, t0).expect("create");
        let version = state.version();
        let again = state.create_log("orders", 2, t0).expect("retry");
        assert_eq!((again.log_id, again.new), (first.log_id, false));
        assert_eq!(state.version(), version, "a retry changes nothing");
        assert_eq!(
            state.create_log("orders", 3, t0),
            Err(StateError::LogExists {
                log_id: first.log_id,
                name: "orders".into(),
                replication_factor: 2
            })
        );
        assert!(matches!(
            state.create_log("", 1, t0),
            Err(StateError::InvalidName { .. })
        ));
    }

    #[test]
    fn delete_removes_the_log_and_bumps_the_version() {
        let t0 = Instant::now();
        let mut state = cluster(1, t0);
        let created = state.create_log("a", 1, t0).expect("create");
        let version = state.version();
        assert_eq!(state.delete_log(created.log_id), Ok(version + 1));
        assert_eq!(state.log(created.log_id), None);
        assert_eq!(
            state.delete_log(created.log_id),
            Err(StateError::UnknownLog {
                log_id: created.log_id
            })
        );
        assert_eq!(state.version(), version + 1);
        // Heartbeats never bump the version.
        assert_eq!(state.heartbeat(1, version + 1, t0), Ok(version + 1));
    }

    #[test]
    fn the_map_shows_current_chains_and_pages_in_id_order() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let names = ["a", "b", "c", "d"];
        for name in names {
            state.create_log(name, 3, t0).expect("create");
        }
        let map = state.map(t0);
        assert_eq!(map.version(), state.version());
        assert_eq!(map.nodes().len(), 3);
        assert_eq!(map.logs().len(), 4);
        assert!(map.logs().windows(2).all(|w| w[0].log_id < w[1].log_id));
        let b = map.log_named("b").expect("b");
        assert_eq!((b.epoch, b.start_lsn, b.chain.len()), (EPOCH_FIRST, 0, 3));
        assert_eq!(b.successor(b.head()), Some(b.chain[1]));
        assert_eq!(b.predecessor(b.chain[2]), Some(b.chain[1]));
        assert_eq!(
            (b.predecessor(b.head()), b.successor(b.chain[2])),
            (None, None)
        );
        assert_eq!(map.log(log_id_of("e")), None);
        let first = map.logs()[1].log_id;
        let page: Vec<u64> = state.logs_after(first, 2).map(|l| l.log_id).collect();
        assert_eq!(page, [map.logs()[2].log_id, map.logs()[3].log_id]);
    }

    #[test]
    fn check_finds_inconsistent_states() {
        let t0 = Instant::now();
        let mut state = cluster(2, t0);
        state.create_log("a", 2, t0).expect("create");
        assert_eq!(state.check(), Ok(()));
        let mut bad = state.clone();
        bad.logs
            .values_mut()
            .for_each(|l| l.epochs[0].chain = vec![1, 1]);
        assert!(bad.check().is_err());
        let mut bad = state.clone();
        bad.version = 0;
        assert!(bad.check().is_err());
        let mut bad = state.clone();
        bad.nodes.remove(&2);
        assert!(bad.check().is_err());
        // Learners: registered, distinct, outside the chain.
        for learners in [vec![1], vec![9], vec![3, 3]] {
            let mut bad = state.clone();
            bad.register(3, "10.0.0.3:7400", 2, "", "", t0)
                .expect("register");
            bad.logs
                .values_mut()
                .for_each(|l| l.learners = learners.clone());
            assert!(bad.check().is_err(), "{learners:?}");
        }
    }
}
