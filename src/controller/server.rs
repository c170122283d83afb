//! The controller's server: `chainlog controller --listen HOST:PORT --data-dir DIR`.
//!
//! **Threads, not tokio.** The controller is on the control path: a few nodes heartbeating
//! every few hundred milliseconds and the occasional create or delete, each change written to
//! disk with an fsync before it is answered. Blocking code says that directly: one thread per
//! connection (at most `connections_max` plus the nodes' reserve: below), reading whole
//! frames with the same decoders as the node, the cluster state behind one mutex, and a
//! condition variable that heartbeats signal so that a waiting CREATE_LOG wakes up when a
//! replica reports the new map. With
//! tokio the fsync would have to leave the runtime (`spawn_blocking`) and the wait would need
//! a notification primitive anyway; nothing here needs thousands of connections.
//!
//! **Ordering and durability.** Every change is applied to the state and written to
//! `DIR/state` under the mutex, before it is answered and before anyone else sees the state,
//! so the file's versions follow the order of the answers. A failed write is fatal
//! (`chainlog_storage::fatal`): after a failed fsync nothing about the file can be trusted.
//!
//! **Requests.** A connection's requests are handled in order: a CREATE_LOG holds its
//! connection until it completes (or times out), so nodes heartbeat on connections of their
//! own. Malformed frames are answered with MALFORMED and the connection is closed; nothing
//! a peer sends can panic the controller or stop it serving other connections.
//!
//! **Errors the controller chooses** (PROTOCOL.md 6.12 leaves them open):
//!
//! | request | answer |
//! |---|---|
//! | a node's request (APPEND, READ, SUBSCRIBE, CREDIT, UNSUBSCRIBE, CHECK_TAIL, TAIL_HINT, TRIM, PEER, REPLICATE) | MALFORMED, closes: no code says "this is not a node" (NOT_CONTROLLER says the reverse), and the HELLO answer's `role` 1 already told the client what it reached, so sending these is a client bug |
//! | CREATE_LOG with a replication factor above the live nodes | TOO_LARGE, `arg0` = the live nodes (the limit exceeded; terminal until nodes join) |
//! | REGISTER_NODE of a new node when [`NODES_MAX`] are registered; CREATE_LOG when `LOGS_MAX` logs exist | TOO_LARGE, `arg0` = the bound |
//! | CREATE_LOG whose replicas did not apply the map in time, or during a stop | UNAVAILABLE (retryable: the same create completes) |
//! | CREATE_LOG of an existing name with the same replication factor | success (a retry), with another one LOG_EXISTS |
//! | CREATE_LOG with replication factor 0 | the `--default-rf` (1 unless set), then as above |
//! | HEARTBEAT of a node that never registered | UNKNOWN_NODE, `arg0` = `u64::MAX` |
//! | RECONFIGURE_LOG of an epoch that is not the log's current one | WRONG_EPOCH, `arg0` = the current epoch |
//! | RECONFIGURE_LOG naming a node that is not registered; DRAIN_NODE of one | UNKNOWN_NODE, `arg0` = `u64::MAX` |
//! | RECONFIGURE_LOG with a chain longer than the replication factor | TOO_LARGE, `arg0` = the replication factor |
//! | RECONFIGURE_LOG with a chain that cannot follow the current one (before or after the seal), or while another request of the epoch is pending | CONDITION_FAILED, `arg0` = `u64::MAX`, the message says why (terminal: after a seal the controller's chain followed) |
//! | RECONFIGURE_LOG not done in time (no member answered the seal, none holds every record, the controller stops) | UNAVAILABLE (the request stands: sending it again waits again) |
//!
//! **Connection slots: clients cannot lock the nodes out.** A connection takes one of the
//! `connections_max` slots (256) if one is free, whoever it is; once all are held it takes one
//! of the `node_connections_reserved` (64) kept for nodes, on probation: the HELLO does not
//! say who the peer is, so its first request after the HELLO must be a node's (REGISTER_NODE
//! or HEARTBEAT, answered with success) and come within the HELLO timeout. Anything else is
//! answered OVERLOADED (retry after 100 ms) and the connection closed; a connection
//! beyond both is answered so at once and closed unread, as a node's shard does beyond its
//! `connections_max`. The reserve is a fixed count, so the threads stay bounded by the sum,
//! and it holds one connection per node of a cluster that size (a node holds one). Until
//! nodes prove who they are (TLS identities, issue 14) a peer that forges a node's
//! REGISTER_NODE or HEARTBEAT can use the reserve too; a client that merely idles cannot. A
//! connection that has not sent a whole HELLO within the HELLO timeout (10 s), or sends
//! nothing for the idle timeout (10 minutes; nodes heartbeat every 50 ms), is closed.
//!
//! **Operations.** RECONFIGURE_LOG records the operator's request durably in the state and
//! waits, as a create does, until the reconfiguring thread has carried it out (the same seal
//! and extend as after a failure, `super::reconfig`); DRAIN_NODE marks the node drained
//! durably and answers at once (the reconfiguring thread moves the chains off it; the map
//! shows where they are). With `--metrics HOST:PORT` a thread serves `/metrics`
//! (`super::metrics`), and another watches new members of chains catch up.
//!
//! **Learners.** The reconfiguring thread also adds and drops learners of short chains each
//! round (a map change, persisted and published like any other; no seal), and a learner
//! watch thread asks every learner and its chain's tail for their tails (TAIL_HINT) every
//! [`LEARNER_POLL`]; the learners found caught up are kept in memory in the state, and the
//! reconfiguring thread promotes them (`super::reconfig`, [`Why::Promote`]).
//!
//! **Stop.** SIGTERM or SIGINT (taken by the main thread, [`crate::signals`]): the listener
//! and every connection's reading side are shut down, waiting creates answer UNAVAILABLE,
//! every thread is joined, and [`run`] returns.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chainlog_net::{
    decode_request, encode_error, encode_response, parse_frame, Chain, CreateLogResponse,
    DescribeLogResponse, ErrorCode, ErrorResponse, Frame, GetMapResponse, HelloResponse, Limits,
    ListLogsResponse, LogEntries, LogEntry, LogRef, MapLogs, MapNodes, MapVersionResponse, Opcode,
    ReconfigureLogResponse, Request, Response, Role, ADDR_BYTES_MAX, ARG_NONE, CONNECTION_RETRY_MS,
    EPOCH_CURRENT, FRAME_HEADER_BYTES, LABEL_BYTES_MAX, LOG_ENTRY_HEADER_BYTES, MAP_HEADER_BYTES,
    NODE_ENTRY_HEADER_BYTES, PROTOCOL_VERSION, RF_DEFAULT,
};

use super::metrics::{Metrics, Phase};
use super::reconfig::{LearnerChange, Plan, Why};
use super::state::{ClusterState, Epoch, StateError, Target, NODES_MAX};
use super::store::{StateStore, StoreError};
use crate::signals::StopSignals;
use chainlog_net::cluster::{MapLog, MapNode};

/// The limits the controller announces and enforces: the defaults (PROTOCOL.md 6.1).
const LIMITS: Limits = Limits::DEFAULT;
/// How long a write to a peer may block before the connection is dropped (a peer that does
/// not read its answers must not hold a thread for ever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After refusing a connection's frame and closing, how long the controller keeps reading
/// (and discarding) what the peer still sends, so that the peer gets the error instead of a
/// reset.
const LINGER: Duration = Duration::from_millis(500);
/// Bytes read from a socket at once.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// The largest GET_MAP page: every node (an entry, an address and labels padded to 8) and
/// `list_max` logs (an entry, a chain of up to 255 ids, a name padded to 8), after the frame
/// and page headers. It fits a frame, so a page never needs cutting by size.
const GET_MAP_PAGE_BYTES_MAX: usize = FRAME_HEADER_BYTES
    + MAP_HEADER_BYTES
    + NODES_MAX
        * (NODE_ENTRY_HEADER_BYTES
            + padded(ADDR_BYTES_MAX as usize + 2 * LABEL_BYTES_MAX as usize))
    + LIMITS.list_max as usize
        * (LOG_ENTRY_HEADER_BYTES + 8 * 255 + padded(LIMITS.name_bytes_max as usize));
const _: () = assert!(GET_MAP_PAGE_BYTES_MAX <= LIMITS.frame_bytes_max as usize);

const fn padded(n: usize) -> usize {
    n.next_multiple_of(8)
}

/// How often the reconfiguring thread looks for chains that lost a member.
const RECONFIGURE_EVERY: Duration = Duration::from_millis(20);
/// How long a SEAL may take before the node is left out of the next epoch.
const SEAL_TIMEOUT: Duration = Duration::from_millis(500);
/// After a reconfiguration that could not do what it was for (no replica holds every record
/// yet, or a drain had to keep the drained node), how long before the log is tried again:
/// each try seals an epoch, which costs the log's writers a pause.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the catch-up watch asks new members of chains for their tails.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// How long a TAIL_HINT of the catch-up watch may take.
const TAIL_HINT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a new member is watched at most.
const CATCH_UP_WATCH_MAX: Duration = Duration::from_secs(600);
/// How often the learner watch asks learners and their chains' tails for their tails.
const LEARNER_POLL: Duration = Duration::from_millis(20);

/// How often the main thread looks whether the accepting thread died while it waits for a
/// signal.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What `chainlog controller` runs with.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Data directory: the state file `DIR/state` and its lock.
    pub data_dir: PathBuf,
    /// Where to serve nodes and clients.
    pub listen: SocketAddr,
    /// A node is alive for this long after its last heartbeat.
    pub liveness: Duration,
    /// How long CREATE_LOG waits for every replica's node to apply the new map (and
    /// RECONFIGURE_LOG for its reconfiguration).
    pub create_timeout: Duration,
    /// The replication factor of a CREATE_LOG that asks for the default (0).
    pub default_rf: u8,
    /// Where to serve `GET /metrics`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// A connection that has not sent a whole HELLO this long after its accept is closed.
    pub hello_timeout: Duration,
    /// A connection that sends nothing for this long is closed (a node heartbeats far more
    /// often).
    pub idle_timeout: Duration,
    /// Connections served at once, whoever they are (client slots).
    pub connections_max: usize,
    /// Connections served beyond `connections_max`, for nodes only (module documentation).
    pub node_connections_reserved: usize,
}

/// Why the controller stopped other than by a signal, or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The state could not be loaded.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The listening socket could not be opened.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Signal handling or a thread could not be set up, or the accepting thread failed.
    #[error("{what}: {source}")]
    System {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// What the controller prints on stdout, followed by its address, once it serves.
pub const SERVING_AT: &str = "chainlog controller: serving at ";
/// What follows the address on that line when it serves metrics, then their address.
const METRICS_AT: &str = ", metrics at ";

/// The controller's address and, if it serves them, its metrics' address, from the line it
/// prints once it serves ([`run`]); `None` if the line is not that.
pub fn parse_serving(line: &str) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let rest = line.trim().strip_prefix(SERVING_AT)?;
    match rest.split_once(METRICS_AT) {
        Some((addr, metrics)) => Some((addr.parse().ok()?, Some(metrics.parse().ok()?))),
        None => Some((rest.parse().ok()?, None)),
    }
}

/// Runs the controller until SIGTERM or SIGINT, then stops gracefully. Prints
/// `chainlog controller: serving at ADDR` ([`SERVING_AT`]), followed by `, metrics at ADDR`
/// if it serves them, on stdout once it serves (scripts and tests read the addresses there,
/// e.g. after `--listen 127.0.0.1:0`; [`parse_serving`]).
pub fn run(config: ControllerConfig) -> Result<(), ControllerError> {
    assert!(config.default_rf >= 1, "settings refuse a default_rf of 0");
    assert!(
        config.connections_max >= 1,
        "settings refuse a connections_max of 0"
    );
    // Blocked before any thread starts, so that every thread inherits the block.
    let signals = StopSignals::block().map_err(|source| ControllerError::System {
        what: "blocking the stop signals",
        source,
    })?;
    let (store, state) = StateStore::open(&config.data_dir)?;
    let state = state.with_liveness(config.liveness);
    let listener = TcpListener::bind(config.listen).map_err(|source| ControllerError::Listen {
        addr: config.listen,
        source,
    })?;
    let local = listener
        .local_addr()
        .map_err(|source| ControllerError::Listen {
            addr: config.listen,
            source,
        })?;
    let metrics_listener = match config.metrics {
        Some(addr) => Some(
            TcpListener::bind(addr).map_err(|source| ControllerError::Listen { addr, source })?,
        ),
        None => None,
    };
    let metrics_at = match &metrics_listener {
        Some(listener) => {
            Some(
                listener
                    .local_addr()
                    .map_err(|source| ControllerError::Listen {
                        addr: config.metrics.unwrap_or(config.listen),
                        source,
                    })?,
            )
        }
        None => None,
    };
    tracing::info!(
        listen = %local,
        metrics = ?metrics_at,
        state = %store.path().display(),
        version = state.version(),
        nodes = state.nodes().count(),
        logs = state.logs_after(0, usize::MAX).count(),
        "controller serving"
    );
    // Shared with the metrics thread's server, whose connections outlive no scope.
    let controller = Arc::new(Controller {
        state: Mutex::new(state),
        changed: Condvar::new(),
        store,
        liveness: config.liveness,
        started: Instant::now(),
        create_timeout: config.create_timeout,
        default_rf: config.default_rf,
        hello_timeout: config.hello_timeout,
        idle_timeout: config.idle_timeout,
        stopping: AtomicBool::new(false),
        conns: Mutex::new(BTreeMap::new()),
        slots_max: [config.connections_max, config.node_connections_reserved],
        slots_held: [AtomicUsize::new(0), AtomicUsize::new(0)],
        next_conn: AtomicU64::new(1),
        metrics: Mutex::new(Metrics::new()),
        refusals: Mutex::new(BTreeMap::new()),
        watches: Mutex::new(Vec::new()),
        learning_since: Mutex::new(BTreeMap::new()),
    });
    match metrics_at {
        Some(metrics) => println!("{SERVING_AT}{local}{METRICS_AT}{metrics}"),
        None => println!("{SERVING_AT}{local}"),
    }
    // A closed stdout must not stop the controller.
    let _ = io::stdout().flush();
    std::thread::scope(|scope| {
        let acceptor = std::thread::Builder::new()
            .name("accept".into())
            .spawn_scoped(scope, || controller.accept(scope, &listener))
            .map_err(|source| ControllerError::System {
                what: "starting the accepting thread",
                source,
            })?;
        std::thread::Builder::new()
            .name("reconfigure".into())
            .spawn_scoped(scope, || controller.reconfigure_loop())
            .map_err(|source| ControllerError::System {
                what: "starting the reconfiguring thread",
                source,
            })?;
        std::thread::Builder::new()
            .name("catch-up".into())
            .spawn_scoped(scope, || controller.catch_up_loop())
            .map_err(|source| ControllerError::System {
                what: "starting the catch-up watch",
                source,
            })?;
        std::thread::Builder::new()
            .name("learners".into())
            .spawn_scoped(scope, || controller.learner_loop())
            .map_err(|source| ControllerError::System {
                what: "starting the learner watch",
                source,
            })?;
        if let Some(listener) = &metrics_listener {
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn_scoped(scope, || {
                    let controller = Arc::clone(&controller);
                    crate::prometheus::serve(listener, &["/metrics"], move |_| {
                        controller.render_metrics()
                    })
                })
                .map_err(|source| ControllerError::System {
                    what: "starting the metrics thread",
                    source,
                })?;
        }
        while !signals.wait(CHECK_EVERY) {
            if acceptor.is_finished() {
                break;
            }
        }
        tracing::info!("controller stopping");
        controller.stop(&listener, metrics_listener.as_ref());
        match acceptor.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(ControllerError::System {
                what: "accepting connections",
                source,
            }),
            Err(_) => Err(ControllerError::System {
                what: "accepting connections",
                source: io::Error::other("the accepting thread panicked"),
            }),
        }
    })
}

/// The controller's shared state: the cluster state (and its file) behind one mutex.
#[derive(Debug)]
struct Controller {
    state: Mutex<ClusterState>,
    /// Signalled (under `state`) whenever a node reports what it applied, and at stop.
    changed: Condvar,
    /// Written under `state`'s lock.
    store: StateStore,
    /// A node is alive this long after its last heartbeat (also how long, after a start, the
    /// controller waits for heartbeats before it takes a silent node for a failed one).
    liveness: Duration,
    started: Instant,
    create_timeout: Duration,
    default_rf: u8,
    hello_timeout: Duration,
    idle_timeout: Duration,
    stopping: AtomicBool,
    /// A handle on every open connection, to shut them down at stop.
    conns: Mutex<BTreeMap<u64, TcpStream>>,
    /// How many connections each kind of [`Slot`] may hold (indexed by the slot)...
    slots_max: [usize; 2],
    /// ... and how many it holds (taken by the accepting thread only, given back by the
    /// connections' threads).
    slots_held: [AtomicUsize; 2],
    next_conn: AtomicU64,
    /// What `/metrics` counts.
    metrics: Mutex<Metrics>,
    /// Why an operator's chain was not installed, by log and sealed epoch, until the waiting
    /// RECONFIGURE_LOG takes it (taken after `state`'s lock when both are held).
    refusals: Mutex<BTreeMap<(u64, u64), String>>,
    /// New members of chains being watched until they have caught up.
    watches: Mutex<Vec<Watch>>,
    /// When this process made each (log, node) a learner, for the `learn` phase (not
    /// durable: a learner of a controller before a restart has no start, and records none).
    learning_since: Mutex<BTreeMap<(u64, u64), Instant>>,
}

/// New members of a log's new epoch, watched until each holds the log up to its start.
#[derive(Debug)]
struct Watch {
    log_id: u64,
    epoch: u64,
    start_lsn: u64,
    /// The members not yet caught up.
    joining: Vec<u64>,
    extended_at: Instant,
}

/// A log with learners, as the learner watch asks about it: (log, epoch, the chain's tail,
/// the learners).
type Learning = (u64, u64, u64, Vec<u64>);

/// A failed request's answer.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    arg0: u64,
    arg1: u64,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, arg0: u64, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            arg0,
            // TOO_LARGE's arg1 names an offending record; none does here (PROTOCOL.md 8).
            arg1: if code == ErrorCode::TooLarge {
                ARG_NONE
            } else {
                0
            },
            message: message.into(),
        }
    }

    /// The answer to a frame the decoder refused.
    fn of_decoding(e: &chainlog_net::Error) -> Refusal {
        Refusal {
            code: e.code(),
            arg0: e.arg0(),
            arg1: e.arg1(),
            message: e.to_string(),
        }
    }

    fn response(&self) -> ErrorResponse<'_> {
        ErrorResponse {
            code: self.code,
            arg0: self.arg0,
            arg1: self.arg1,
            message: &self.message,
        }
    }
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Refusal {
        let code = match e {
            StateError::UnknownLog { .. } => ErrorCode::UnknownLog,
            StateError::LogExists { log_id, .. } => {
                return Refusal::new(ErrorCode::LogExists, log_id, e.to_string())
            }
            StateError::UnknownNode { .. } => ErrorCode::UnknownNode,
            StateError::StaleEpoch { current, .. } => {
                return Refusal::new(ErrorCode::WrongEpoch, current, e.to_string())
            }
            StateError::NoSurvivor { .. } | StateError::Behind { .. } => ErrorCode::Unavailable,
            StateError::ChainRefused { .. } | StateError::LearnerRefused { .. } => {
                ErrorCode::ConditionFailed
            }
            StateError::ChainTooLong { rf, .. } => {
                return Refusal::new(ErrorCode::TooLarge, u64::from(rf), e.to_string())
            }
            // TOO_LARGE's arg0 is the limit: the live nodes, or the cluster's bound.
            StateError::NotEnoughNodes { live: max, .. }
            | StateError::TooManyNodes { max }
            | StateError::TooManyLogs { max } => {
                return Refusal::new(ErrorCode::TooLarge, max as u64, e.to_string())
            }
            // The decoder refuses these before the state sees them.
            StateError::NodeIdZero
            | StateError::NoShards { .. }
            | StateError::BadAddr { .. }
            | StateError::BadLabel { .. }
            | StateError::InvalidName { .. } => ErrorCode::Malformed,
        };
        Refusal::new(code, ARG_NONE, e.to_string())
    }
}

/// The kind of slot a connection holds (module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// One of the `connections_max`, whoever the peer is.
    Any = 0,
    /// One of the `node_connections_reserved`: the peer must show it is a node.
    Node = 1,
}

/// What a connection keeps between frames.
#[derive(Debug)]
struct Session {
    slot: Slot,
    greeted: bool,
    /// A REGISTER_NODE or HEARTBEAT succeeded on the connection: the peer is a node.
    node: bool,
    /// Answer what is queued, then close.
    closing: bool,
}

impl Session {
    fn new(slot: Slot) -> Session {
        Session {
            slot,
            greeted: false,
            node: false,
            closing: false,
        }
    }

    /// In a node's slot without having shown it is a node: its first request after the
    /// HELLO must be a node's, within the HELLO timeout.
    fn on_probation(&self) -> bool {
        self.slot == Slot::Node && !self.node
    }
}

impl Controller {
    fn lock(&self) -> MutexGuard<'_, ClusterState> {
        self.state
            .lock()
            .expect("no thread panics holding the state")
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The answer to a connection that finds no slot for it: OVERLOADED, retry after 100 ms,
    /// as a node's shard answers beyond its `connections_max`.
    fn overloaded(&self) -> Refusal {
        let [max, reserved] = self.slots_max;
        let message = format!(
            "too many connections: the controller serves {max}, and {reserved} more for nodes"
        );
        Refusal::new(ErrorCode::Overloaded, CONNECTION_RETRY_MS, message)
    }

    /// Writes the state; a failure is fatal (module documentation).
    fn persist(&self, state: &ClusterState) {
        if let Err(e) = self.store.save(state) {
            chainlog_storage::fatal(chainlog_storage::FatalReason::StateFile {
                error: format!("controller state: {e}"),
            });
        }
    }

    /// Accepts connections until the listener is shut down, serving each on its own thread.
    fn accept<'scope>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, '_>,
        listener: &TcpListener,
    ) -> io::Result<()> {
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(_) if self.stopping() => return Ok(()),
                Err(e) if is_transient(&e) => {
                    // Out of descriptors or a connection that died while queued: back off.
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.stopping() {
                return Ok(());
            }
            let Some(slot) = [Slot::Any, Slot::Node].into_iter().find(|&slot| {
                self.slots_held[slot as usize].load(Ordering::SeqCst)
                    < self.slots_max[slot as usize]
            }) else {
                tracing::warn!(
                    max = self.slots_max[Slot::Any as usize],
                    reserved = self.slots_max[Slot::Node as usize],
                    "connection refused: too many connections"
                );
                refuse_connection(stream, &self.overloaded());
                continue;
            };
            let held = &self.slots_held[slot as usize];
            held.fetch_add(1, Ordering::SeqCst);
            let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("conn-{id}"))
                .spawn_scoped(scope, move || {
                    self.connection(id, stream, slot);
                    held.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                held.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "connection refused: no thread for it");
            }
        }
    }

    /// Stops: no more connections, no more reading, waiting creates give up, no more
    /// metrics.
    fn stop(&self, listener: &TcpListener, metrics: Option<&TcpListener>) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            // Under the lock, so that a create between its check and its wait cannot miss it.
            let _state = self.lock();
            self.changed.notify_all();
        }
        for listener in std::iter::once(listener).chain(metrics) {
            // SAFETY: shutdown(2) on the listener's open descriptor; it wakes the blocked
            // accept.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for stream in self.conns.lock().expect("connections lock").values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }

    /// Reconfigures the logs whose chains lost a member, have a learner ready to join, hold
    /// a drained node or that an operator asked for ([`reconfig`](super::reconfig)), and
    /// adds and drops learners ([`super::reconfig::learner_changes`]), every
    /// [`RECONFIGURE_EVERY`], until the controller stops. Nothing happens before the liveness
    /// timeout has passed since the start: until then a node's silence means it has not
    /// heartbeated to this process yet. A log whose reconfiguration could not do what it was
    /// for is left alone for [`RETRY_AFTER`] (each try seals an epoch, which pauses the log).
    fn reconfigure_loop(&self) {
        let mut retry_at: BTreeMap<u64, Instant> = BTreeMap::new();
        while !self.stopping() {
            std::thread::sleep(RECONFIGURE_EVERY);
            if self.started.elapsed() < self.liveness {
                continue;
            }
            let now = Instant::now();
            self.tend_learners(now);
            retry_at.retain(|_, at| *at > now);
            let plans = super::reconfig::plan(&self.lock(), now);
            for plan in plans {
                if self.stopping() {
                    return;
                }
                // An operator's request is tried again at once: someone waits for it.
                if retry_at.contains_key(&plan.log_id) && plan.why != Why::Requested {
                    continue;
                }
                if !self.reconfigure(&plan) {
                    retry_at.insert(plan.log_id, Instant::now() + RETRY_AFTER);
                }
            }
        }
    }

    /// Adds and drops the learners the state needs at `now` (a change of the map, no seal),
    /// durably before anyone sees them, and wakes those waiting on the state.
    fn tend_learners(&self, now: Instant) {
        let mut state = self.lock();
        let changes = super::reconfig::learner_changes(&state, now);
        if changes.is_empty() {
            return;
        }
        let mut since = self.learning_since.lock().expect("learning lock");
        for change in &changes {
            match change.apply(&mut state, now) {
                Ok(version) => {
                    match *change {
                        LearnerChange::Add { log_id, node_id } => {
                            since.insert((log_id, node_id), now);
                            tracing::info!(log_id, node = node_id, version, "learner added");
                        }
                        LearnerChange::Drop {
                            log_id,
                            node_id,
                            why,
                        } => {
                            since.remove(&(log_id, node_id));
                            tracing::info!(log_id, node = node_id, why, version, "learner dropped");
                        }
                    }
                    self.count().learner_changed(change);
                }
                Err(e) => panic!("a learner change planned under the same lock: {e}"),
            }
        }
        drop(since);
        self.persist(&state);
        self.changed.notify_all();
    }

    /// Seals `plan`'s epoch at its live members (at once, each within [`SEAL_TIMEOUT`]), then
    /// starts the next epoch from the members that sealed, durably (with the operator's chain
    /// if the seals allow it, else the controller's). That it seals the epoch is durable
    /// before the first SEAL goes out ([`ClusterState::begin_seal`]), whatever the
    /// reconfiguration is for. Records each phase's time and logs it. False if it should not
    /// be tried again at once: no replica holds every record yet, or a drain could not move
    /// the log.
    fn reconfigure(&self, plan: &Plan) -> bool {
        let decided = Instant::now();
        let detect = match (&plan.why, plan.last_heard) {
            (Why::Failed(_), Some(heard)) => Some(decided.saturating_duration_since(heard)),
            _ => None,
        };
        {
            let mut state = self.lock();
            match state.begin_seal(plan.log_id, plan.epoch) {
                Ok(true) => self.persist(&state),
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(log_id = plan.log_id, error = %e, "reconfiguration lost");
                    return true;
                }
            }
        }
        let targets: Vec<(u64, String, u16)> = {
            let state = self.lock();
            plan.seal_at
                .iter()
                .filter_map(|&id| state.node(id).map(|n| (id, n.addr.clone(), n.shard_count)))
                .collect()
        };
        let results: Vec<_> = std::thread::scope(|scope| {
            let calls: Vec<_> = targets
                .iter()
                .map(|(id, addr, shards)| {
                    let (id, addr, shards) = (*id, addr.clone(), *shards);
                    scope.spawn(move || {
                        let sealed = super::reconfig::seal(
                            &addr,
                            shards,
                            plan.log_id,
                            plan.epoch,
                            SEAL_TIMEOUT,
                        );
                        (id, sealed)
                    })
                })
                .collect();
            calls
                .into_iter()
                .filter_map(|call| call.join().ok())
                .collect()
        });
        let mut seals = Vec::new();
        for (id, result) in results {
            match result {
                Ok((end, trim)) => seals.push((id, end, trim)),
                Err(e) => {
                    self.count().seal_failed();
                    tracing::warn!(log_id = plan.log_id, epoch = plan.epoch, node = id, error = %e, "seal failed");
                }
            }
        }
        let usable = super::reconfig::usable_seals(&seals);
        let sealed = usable.ends;
        if sealed.is_empty() {
            return true; // Tried again on the next round (the seals' timeout paces it).
        }
        let seal = decided.elapsed();
        let extending = Instant::now();
        let mut state = self.lock();
        let now = Instant::now();
        // The controller's chain: the survivors, and for a promotion the learners at the tail.
        let own = match &plan.why {
            Why::Promote(learners) => Target::Promote(learners),
            _ => Target::Auto,
        };
        let extend_with = |state: &mut ClusterState, target: Target<'_>| {
            state.extend(
                plan.log_id,
                plan.epoch,
                &sealed,
                usable.trim_point,
                target,
                now,
            )
        };
        let result = match &plan.chain {
            Some(chain) => match extend_with(&mut state, Target::Chain(chain)) {
                Err(e) if !matches!(e, StateError::StaleEpoch { .. }) => {
                    // The epoch is sealed: it must be followed, by the controller's chain.
                    tracing::warn!(log_id = plan.log_id, epoch = plan.epoch, ?chain, error = %e, "the chain asked for cannot follow the sealed epoch; the controller picks one");
                    self.count().chain_refused();
                    self.refusals
                        .lock()
                        .expect("refusals lock")
                        .insert((plan.log_id, plan.epoch), e.to_string());
                    extend_with(&mut state, own)
                }
                other => other,
            },
            None => extend_with(&mut state, own),
        };
        match result {
            Ok(epoch) => {
                self.persist(&state);
                let extend = extending.elapsed();
                let drained_kept = epoch
                    .chain
                    .iter()
                    .any(|id| state.node(*id).is_some_and(|n| n.drained));
                let joining: Vec<u64> = epoch
                    .chain
                    .iter()
                    .copied()
                    .filter(|id| !sealed.iter().any(|(s, _)| s == id))
                    .collect();
                self.changed.notify_all();
                drop(state);
                let learned: Vec<Duration> = {
                    let mut since = self.learning_since.lock().expect("learning lock");
                    joining
                        .iter()
                        .filter_map(|&id| since.remove(&(plan.log_id, id)))
                        .map(|at| at.elapsed())
                        .collect()
                };
                {
                    let mut metrics = self.count();
                    metrics.reconfigured(plan.why.label());
                    if let Some(detect) = detect {
                        metrics.phase(Phase::Detect, detect);
                    }
                    metrics.phase(Phase::Seal, seal);
                    metrics.phase(Phase::Extend, extend);
                    for &took in &learned {
                        metrics.phase(Phase::Learn, took);
                    }
                }
                if !joining.is_empty() {
                    self.watches.lock().expect("watches lock").push(Watch {
                        log_id: plan.log_id,
                        epoch: epoch.epoch,
                        start_lsn: epoch.start_lsn,
                        joining: joining.clone(),
                        extended_at: Instant::now(),
                    });
                }
                let us = |d: Duration| d.as_micros() as u64;
                tracing::info!(
                    log_id = plan.log_id,
                    why = plan.why.label(),
                    failed = ?match &plan.why { Why::Failed(dead) => dead.clone(), _ => Vec::new() },
                    sealed = ?sealed,
                    epoch = epoch.epoch,
                    start_lsn = epoch.start_lsn,
                    chain = ?epoch.chain,
                    joining = ?joining,
                    detect_us = detect.map(us),
                    seal_us = us(seal),
                    extend_us = us(extend),
                    total_us = us(detect.unwrap_or_default() + decided.elapsed()),
                    "log reconfigured"
                );
                // A drain that had to keep the drained node waits before it tries again.
                !(matches!(plan.why, Why::Drain(_)) && drained_kept)
            }
            Err(e @ StateError::StaleEpoch { .. }) => {
                tracing::info!(log_id = plan.log_id, error = %e, "reconfiguration lost");
                true
            }
            Err(e) => {
                tracing::warn!(log_id = plan.log_id, epoch = plan.epoch, sealed = ?sealed, error = %e, "the sealed epoch cannot be followed yet");
                false
            }
        }
    }

    fn count(&self) -> MutexGuard<'_, Metrics> {
        self.metrics
            .lock()
            .expect("no thread panics holding the metrics")
    }

    /// Watches the new members of chains ([`Watch`]) every [`CATCH_UP_POLL`], until the
    /// controller stops: a member has caught up once its TAIL_HINT in the new epoch is at
    /// its start; when all of a watch's have, the catch-up time is recorded. A watch whose
    /// epoch is no longer the log's, or older than [`CATCH_UP_WATCH_MAX`], is dropped.
    fn catch_up_loop(&self) {
        while !self.stopping() {
            std::thread::sleep(CATCH_UP_POLL);
            let mut watches = std::mem::take(&mut *self.watches.lock().expect("watches lock"));
            if watches.is_empty() {
                continue;
            }
            let targets: BTreeMap<u64, (String, u16)> = {
                let state = self.lock();
                watches.retain(|w| {
                    w.extended_at.elapsed() < CATCH_UP_WATCH_MAX
                        && state
                            .log(w.log_id)
                            .is_some_and(|log| log.current().epoch == w.epoch)
                });
                state
                    .nodes()
                    .map(|n| (n.node_id, (n.addr.clone(), n.shard_count)))
                    .collect()
            };
            for watch in &mut watches {
                watch.joining.retain(|id| {
                    let Some((addr, shards)) = targets.get(id) else {
                        return false;
                    };
                    let tail = super::reconfig::tail_hint(
                        addr,
                        *shards,
                        watch.log_id,
                        TAIL_HINT_TIMEOUT,
                    );
                    !matches!(tail, Ok((tail, epoch)) if epoch == watch.epoch && tail >= watch.start_lsn)
                });
                if watch.joining.is_empty() {
                    let took = watch.extended_at.elapsed();
                    self.count().phase(Phase::CatchUp, took);
                    tracing::info!(
                        log_id = watch.log_id,
                        epoch = watch.epoch,
                        start_lsn = watch.start_lsn,
                        catch_up_us = took.as_micros() as u64,
                        "new replicas caught up"
                    );
                }
            }
            watches.retain(|w| !w.joining.is_empty());
            let mut kept = self.watches.lock().expect("watches lock");
            kept.extend(watches);
            let catching_up = kept.iter().map(|w| w.joining.len()).sum();
            drop(kept);
            self.count().catching_up = catching_up;
        }
    }

    /// Asks every learner and its log's chain tail for their tails (TAIL_HINT) every
    /// [`LEARNER_POLL`], until the controller stops, and records in the state which learners
    /// have caught up in the log's current epoch ([`super::reconfig::LearnerWatch`]): the
    /// reconfiguring thread promotes those. A learner or tail that does not answer is not
    /// ready.
    fn learner_loop(&self) {
        let mut watch = super::reconfig::LearnerWatch::default();
        while !self.stopping() {
            std::thread::sleep(LEARNER_POLL);
            let (logs, addrs): (Vec<Learning>, BTreeMap<u64, (String, u16)>) = {
                let state = self.lock();
                let logs = state
                    .logs_after(0, usize::MAX)
                    .filter(|log| !log.learners.is_empty())
                    .map(|log| {
                        let current = log.current();
                        let tail = *current.chain.last().expect("a chain is never empty");
                        (log.log_id, current.epoch, tail, log.learners.clone())
                    })
                    .collect();
                let addrs = state
                    .nodes()
                    .map(|n| (n.node_id, (n.addr.clone(), n.shard_count)))
                    .collect();
                (logs, addrs)
            };
            watch.keep(|log_id, node| {
                logs.iter()
                    .any(|(l, _, _, learners)| *l == log_id && learners.contains(&node))
            });
            for (log_id, epoch, tail, learners) in logs {
                if self.stopping() {
                    return;
                }
                let hint = |node: u64| {
                    let (addr, shards) = addrs.get(&node)?;
                    super::reconfig::tail_hint(addr, *shards, log_id, TAIL_HINT_TIMEOUT).ok()
                };
                let at_tail = hint(tail);
                let found: Vec<(u64, bool)> = learners
                    .iter()
                    .map(|&node| {
                        let ready = watch.ready(log_id, node, hint(node), at_tail, epoch);
                        (node, ready)
                    })
                    .collect();
                let mut state = self.lock();
                for (node, ready) in found {
                    state.set_ready(log_id, node, epoch, ready);
                }
            }
        }
    }

    /// The text of `/metrics`.
    fn render_metrics(&self) -> String {
        let state = self.lock();
        let metrics = self.count();
        // Both kinds of slot together: the bound beyond which a connection is refused unread.
        let connections = super::metrics::Connections {
            open: self
                .slots_held
                .iter()
                .map(|held| held.load(Ordering::SeqCst))
                .sum(),
            max: self.slots_max.iter().sum(),
        };
        super::metrics::render(&metrics, &state, connections, Instant::now())
    }

    /// Serves one connection, in `slot`, until it closes, breaks the protocol or the
    /// controller stops.
    fn connection(&self, id: u64, mut stream: TcpStream, slot: Slot) {
        let registered = stream.try_clone().map(|clone| {
            self.conns
                .lock()
                .expect("connections lock")
                .insert(id, clone);
        });
        if registered.is_err() || self.stopping() {
            self.conns.lock().expect("connections lock").remove(&id);
            return;
        }
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let closed_by_us = self.serve(&mut stream, Session::new(slot));
        self.conns.lock().expect("connections lock").remove(&id);
        if closed_by_us {
            linger(stream);
        }
    }

    /// The connection's read loop; true if the controller ended it (a refused frame), false
    /// if the peer did (or the socket failed, or the controller stops).
    fn serve(&self, stream: &mut TcpStream, mut session: Session) -> bool {
        let mut input = Vec::new();
        let mut out = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let hello_by = Instant::now() + self.hello_timeout;
        loop {
            let mut consumed = 0;
            while !session.closing && !self.stopping() {
                match parse_frame(&input[consumed..], &LIMITS) {
                    Ok(None) => break,
                    Ok(Some(frame)) => {
                        consumed += frame.frame_bytes();
                        self.handle(&frame, &mut session, &mut out);
                    }
                    Err(e) => {
                        // The framing is broken: answer once and close (PROTOCOL.md 2.2).
                        encode_error(&mut out, 0, None, &e.response(&e.to_string()));
                        session.closing = true;
                    }
                }
                // Answer each frame before the next: a waiting create must not hold the
                // answers before it.
                if stream.write_all(&out).is_err() {
                    return false;
                }
                out.clear();
            }
            if session.closing {
                return true;
            }
            if self.stopping() {
                return false;
            }
            input.drain(..consumed);
            // Until its HELLO (and in a node's slot, until it showed it is a node) a
            // connection has what is left of the HELLO timeout, then the idle timeout for
            // each read: a silent one is closed (a read that times out fails).
            let wait = if session.greeted && !session.on_probation() {
                self.idle_timeout
            } else {
                hello_by.saturating_duration_since(Instant::now())
            };
            if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
                return false;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => input.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Handles one whole frame, appending its answer to `out`.
    fn handle(&self, frame: &Frame<'_>, session: &mut Session, out: &mut Vec<u8>) {
        let request_id = frame.request_id;
        let opcode = Opcode::from_u16(frame.opcode);
        let request = match decode_request(frame, &LIMITS) {
            Ok(request) => request,
            Err(e) => {
                let refusal = if !session.greeted && opcode != Some(Opcode::Hello) {
                    // Whatever is wrong with it, a first frame that is not a HELLO is MALFORMED.
                    Refusal::new(
                        ErrorCode::Malformed,
                        ARG_NONE,
                        format!("the first frame of a connection must be HELLO ({e})"),
                    )
                } else {
                    Refusal::of_decoding(&e)
                };
                session.closing |= refusal.code.closes_connection();
                encode_error(out, request_id, opcode, &refusal.response());
                return;
            }
        };
        let opcode = request.opcode();
        let result = if !session.greeted && opcode != Opcode::Hello {
            Err(Refusal::new(
                ErrorCode::Malformed,
                ARG_NONE,
                "the first frame of a connection must be HELLO",
            ))
        } else {
            self.answer(request, session)
        };
        match result {
            Ok(answer) => answer.encode(out, request_id, opcode),
            Err(refusal) => {
                session.closing |= refusal.code.closes_connection();
                encode_error(out, request_id, Some(opcode), &refusal.response());
            }
        }
    }

    /// The answer to a decoded request.
    fn answer(&self, request: Request<'_>, session: &mut Session) -> Result<Answer, Refusal> {
        let a_nodes = matches!(
            request,
            Request::Hello(_) | Request::RegisterNode(_) | Request::Heartbeat(_)
        );
        if session.on_probation() && !a_nodes {
            // A client in a node's slot (every other slot was held): refused, which frees it.
            session.closing = true;
            return Err(self.overloaded());
        }
        match request {
            Request::Hello(_) => {
                if session.greeted {
                    return Err(Refusal::new(
                        ErrorCode::Malformed,
                        ARG_NONE,
                        "HELLO was already exchanged on this connection",
                    ));
                }
                session.greeted = true;
                Ok(Answer::Hello(HelloResponse {
                    version: PROTOCOL_VERSION,
                    shard_index: 0,
                    shard_count: 1,
                    frame_bytes_max: LIMITS.frame_bytes_max,
                    record_bytes_max: LIMITS.record_bytes_max,
                    batch_records_max: LIMITS.batch_records_max,
                    node_id: 0,
                    role: Role::Controller,
                }))
            }
            Request::RegisterNode(register) => {
                let mut state = self.lock();
                let before = state.version();
                let map_version = state.register(
                    register.node_id,
                    register.addr,
                    register.shard_count,
                    register.zone,
                    register.rack,
                    Instant::now(),
                )?;
                if map_version != before {
                    self.persist(&state);
                    tracing::info!(
                        node_id = register.node_id,
                        addr = register.addr,
                        shards = register.shard_count,
                        zone = register.zone,
                        rack = register.rack,
                        version = map_version,
                        "node registered"
                    );
                }
                // A node that registers again has applied nothing: waiting creates look again.
                self.changed.notify_all();
                session.node = true;
                Ok(Answer::Registered(MapVersionResponse { map_version }))
            }
            Request::Heartbeat(heartbeat) => {
                let mut state = self.lock();
                let now = Instant::now();
                let map_version =
                    state.heartbeat(heartbeat.node_id, heartbeat.applied_version, now)?;
                if heartbeat.suspect != 0 {
                    tracing::info!(
                        node = heartbeat.node_id,
                        suspect = heartbeat.suspect,
                        "a neighbour's replication connection failed"
                    );
                    state.suspect(heartbeat.suspect, now);
                }
                self.changed.notify_all();
                session.node = true;
                Ok(Answer::Heartbeat(MapVersionResponse { map_version }))
            }
            Request::GetMap(get) => Ok(self.map_page(get.after_log_id, get.max)),
            Request::CreateLog(create) => self.create_log(create.name, create.replication_factor),
            Request::DescribeLog(describe) => self.describe_log(describe.by),
            Request::ListLogs(list) => Ok(self.list_logs(list.after_log_id, list.max)),
            Request::DeleteLog { log_id } => {
                let mut state = self.lock();
                let version = state.delete_log(log_id)?;
                self.persist(&state);
                tracing::info!(log_id, version, "log deleted");
                Ok(Answer::DeleteLog)
            }
            Request::ReconfigureLog(reconfigure) => self.reconfigure_log(
                reconfigure.log_id,
                reconfigure.epoch,
                reconfigure.chain.iter().collect(),
            ),
            Request::DrainNode(drain) => {
                let mut state = self.lock();
                let before = state.version();
                let map_version = state.drain(drain.node_id, drain.drained)?;
                if map_version != before {
                    self.persist(&state);
                    tracing::info!(
                        node_id = drain.node_id,
                        drained = drain.drained,
                        version = map_version,
                        "node drained (or undrained) by an operator"
                    );
                }
                Ok(Answer::Drained(MapVersionResponse { map_version }))
            }
            // No code says "this is not a node" (NOT_CONTROLLER says the reverse); the HELLO
            // answer's role already said what this is, so a client sending these is broken.
            other => Err(Refusal::new(
                ErrorCode::Malformed,
                ARG_NONE,
                format!(
                    "{} is served by nodes; this is the controller (HELLO role 1)",
                    other.opcode()
                ),
            )),
        }
    }

    /// CREATE_LOG: places and persists the log (unless it exists: a retry), then waits until
    /// every replica's node reported applying the map version that created it.
    fn create_log(&self, name: &str, rf: u8) -> Result<Answer, Refusal> {
        let deadline = Instant::now() + self.create_timeout;
        let rf = match rf {
            RF_DEFAULT => self.default_rf,
            rf => rf,
        };
        let mut state = self.lock();
        let created = state.create_log(name, rf, Instant::now())?;
        if created.new {
            self.persist(&state);
            let log = state.log(created.log_id).expect("just created");
            tracing::info!(
                name,
                log_id = created.log_id,
                chain = ?log.current().chain,
                version = state.version(),
                "log created"
            );
        }
        loop {
            let pending = state.pending_replicas(created.log_id)?;
            if pending.is_empty() {
                let log = state
                    .log(created.log_id)
                    .expect("pending_replicas found it");
                return Ok(Answer::CreateLog(CreateLogResponse {
                    log_id: log.log_id,
                    shard: shard_at_head(&state, log.log_id, log.current().chain[0]),
                }));
            }
            let now = Instant::now();
            if self.stopping() || now >= deadline {
                let why = if self.stopping() {
                    "the controller is stopping".to_string()
                } else {
                    format!("within {:?}", self.create_timeout)
                };
                let version = state.log(created.log_id).map_or(0, |l| l.created_version);
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    ARG_NONE,
                    format!(
                        "log {name:?} is placed, but nodes {pending:?} did not report applying \
                         map version {version} ({why}); retry the create to wait again"
                    ),
                ));
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .expect("no thread panics holding the state")
                .0;
        }
    }

    /// RECONFIGURE_LOG: records the request durably ([`ClusterState::request`]: `epoch`
    /// [`EPOCH_CURRENT`] for the current one; an empty `chain` for the controller's), then
    /// waits until the reconfiguring thread has started the next epoch and every member of
    /// its chain has reported applying the map that says so (as a create waits: an append
    /// sent after the answer finds the new head serving the epoch), for up to the create
    /// timeout; answers with the new epoch, or with CONDITION_FAILED if the chain asked for
    /// could not follow the sealed epoch (another did).
    fn reconfigure_log(&self, log_id: u64, epoch: u64, chain: Vec<u64>) -> Result<Answer, Refusal> {
        let deadline = Instant::now() + self.create_timeout;
        let mut state = self.lock();
        let before = state.log(log_id).and_then(|log| log.requested.clone());
        let asked = state.request(
            log_id,
            (epoch != EPOCH_CURRENT).then_some(epoch),
            (!chain.is_empty()).then_some(chain),
            Instant::now(),
        )?;
        if before.as_ref() != Some(&asked) {
            self.persist(&state);
            tracing::info!(log_id, epoch = asked.epoch, chain = ?asked.chain, "reconfiguration requested");
        }
        // The map version the new epoch's members must apply, once it has started.
        let mut started_in: Option<u64> = None;
        loop {
            let log = state.log(log_id).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::UnknownLog,
                    ARG_NONE,
                    format!("log {log_id} was deleted"),
                )
            })?;
            let next = log.epochs.iter().find(|e| e.epoch == asked.epoch + 1);
            if let Some(next) = next {
                let refused = self
                    .refusals
                    .lock()
                    .expect("refusals lock")
                    .remove(&(log_id, asked.epoch));
                if let Some(why) = refused {
                    return Err(Refusal::new(
                        ErrorCode::ConditionFailed,
                        ARG_NONE,
                        format!(
                            "epoch {} was sealed, then {why}; the controller started epoch {} \
                             from LSN {} with chain {:?} instead",
                            asked.epoch, next.epoch, next.start_lsn, next.chain
                        ),
                    ));
                }
                let version = *started_in.get_or_insert(state.version());
                let applied = next.chain.iter().all(|id| {
                    state
                        .node(*id)
                        .is_some_and(|node| node.applied_version >= version)
                });
                if applied {
                    return Ok(Answer::Reconfigured {
                        log_id,
                        epoch: next.clone(),
                    });
                }
            }
            let now = Instant::now();
            if self.stopping() || now >= deadline {
                let why = match (next, started_in) {
                    (Some(next), Some(version)) => format!(
                        "epoch {} started (chain {:?}), but its nodes did not all report \
                         applying map version {version}",
                        next.epoch, next.chain
                    ),
                    _ => format!(
                        "epoch {} of log {log_id} is not followed yet (no member answered its \
                         seal, or none holds every record: the controller's log says); the \
                         request stands: send it again to wait again",
                        asked.epoch
                    ),
                };
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    ARG_NONE,
                    format!("within {:?}: {why}", self.create_timeout),
                ));
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .expect("no thread panics holding the state")
                .0;
        }
    }

    /// DESCRIBE_LOG from the map: positions are the head's to tell (u64::MAX).
    fn describe_log(&self, by: LogRef<'_>) -> Result<Answer, Refusal> {
        let state = self.lock();
        let log = match by {
            LogRef::Id(log_id) => state.log(log_id),
            LogRef::Name(name) => state.log_named(name),
        };
        let Some(log) = log.map(MapLog::from) else {
            return Err(Refusal::new(
                ErrorCode::UnknownLog,
                ARG_NONE,
                match by {
                    LogRef::Id(log_id) => format!("no log {log_id}"),
                    LogRef::Name(name) => format!("no log {name:?}"),
                },
            ));
        };
        let shard = shard_at_head(&state, log.log_id, log.head());
        Ok(Answer::DescribeLog { log, shard })
    }

    /// A GET_MAP page: every node, and the logs with ids above `after`, at most `max` (and
    /// `list_max`).
    fn map_page(&self, after: u64, max: u32) -> Answer {
        let max = max.min(LIMITS.list_max) as usize;
        let now = Instant::now();
        let state = self.lock();
        Answer::GetMap {
            version: state.version(),
            nodes: state
                .nodes()
                .map(|node| state.map_node(node, now))
                .collect(),
            logs: state.logs_after(after, max).map(MapLog::from).collect(),
        }
    }

    /// A LIST_LOGS page: ids above `after`, at most `max` (and `list_max`).
    fn list_logs(&self, after: u64, max: u32) -> Answer {
        let max = max.min(LIMITS.list_max) as usize;
        let state = self.lock();
        Answer::ListLogs(
            state
                .logs_after(after, max)
                .map(|log| (log.log_id, log.name.clone()))
                .collect(),
        )
    }
}

/// The shard of `log_id` on its head node `head` (where a client sends its appends).
fn shard_at_head(state: &ClusterState, log_id: u64, head: u64) -> u16 {
    let shards = state.node(head).map_or(1, |node| node.shard_count.max(1));
    // The remainder is below the shard count, a u16.
    (log_id % u64::from(shards)) as u16
}

/// A successful answer, owning what it says (the state's lock is released before encoding).
#[derive(Debug)]
enum Answer {
    Hello(HelloResponse),
    CreateLog(CreateLogResponse),
    DescribeLog {
        log: MapLog,
        shard: u16,
    },
    ListLogs(Vec<(u64, String)>),
    DeleteLog,
    Registered(MapVersionResponse),
    Heartbeat(MapVersionResponse),
    Reconfigured {
        log_id: u64,
        epoch: Epoch,
    },
    Drained(MapVersionResponse),
    GetMap {
        version: u64,
        nodes: Vec<MapNode>,
        logs: Vec<MapLog>,
    },
}

impl Answer {
    /// Appends the response frame answering `request_id` (the wire types borrow from the
    /// answer).
    fn encode(&self, out: &mut Vec<u8>, request_id: u64, opcode: Opcode) {
        let entries: Vec<LogEntry<'_>>;
        let map_nodes: Vec<chainlog_net::MapNode<'_>>;
        let map_logs: Vec<chainlog_net::MapLog<'_>>;
        let response = match self {
            Answer::Hello(hello) => Response::Hello(*hello),
            Answer::CreateLog(create) => Response::CreateLog(*create),
            Answer::DescribeLog { log, shard } => Response::DescribeLog(DescribeLogResponse {
                log_id: log.log_id,
                tail: u64::MAX,
                trim_point: u64::MAX,
                epoch: log.epoch,
                shard: *shard,
                replication_factor: log.replication_factor,
                name: &log.name,
            }),
            Answer::ListLogs(logs) => {
                entries = logs
                    .iter()
                    .map(|(log_id, name)| LogEntry {
                        log_id: *log_id,
                        name,
                    })
                    .collect();
                Response::ListLogs(ListLogsResponse {
                    entries: LogEntries::from_slice(&entries),
                })
            }
            Answer::DeleteLog => Response::DeleteLog,
            Answer::Registered(version) => Response::RegisterNode(*version),
            Answer::Heartbeat(version) => Response::Heartbeat(*version),
            Answer::Reconfigured { log_id, epoch } => {
                Response::ReconfigureLog(ReconfigureLogResponse {
                    log_id: *log_id,
                    epoch: epoch.epoch,
                    start_lsn: epoch.start_lsn,
                    chain: Chain::from_slice(&epoch.chain),
                })
            }
            Answer::Drained(version) => Response::DrainNode(*version),
            Answer::GetMap {
                version,
                nodes,
                logs,
            } => {
                map_nodes = nodes.iter().map(MapNode::wire).collect();
                map_logs = logs.iter().map(MapLog::wire).collect();
                Response::GetMap(GetMapResponse {
                    version: *version,
                    nodes: MapNodes::from_slice(&map_nodes),
                    logs: MapLogs::from_slice(&map_logs),
                })
            }
        };
        encode_response(out, request_id, opcode, &response);
    }
}

/// True for accept errors that say nothing about the listener (it keeps working).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::ECONNABORTED)
    ) || e.kind() == io::ErrorKind::Interrupted
}

/// Answers a connection over every slot with `refusal` (OVERLOADED, [`Controller::overloaded`])
/// and closes it, unread, without holding up the accepting thread.
fn refuse_connection(mut stream: TcpStream, refusal: &Refusal) {
    let mut out = Vec::new();
    encode_error(&mut out, 0, None, &refusal.response());
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = stream.write_all(&out);
}

/// Closes a connection the controller refused: sends what is queued, then reads and drops
/// what the peer still sends for a moment, so that closing with unread input does not reset
/// the connection before the peer read the error.
fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
