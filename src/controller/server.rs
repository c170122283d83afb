//! The controller's server: `chainlog controller --listen HOST:PORT --data-dir DIR`.
//!
//! **Threads, not tokio.** The controller is on the control path: a few nodes heartbeating
//! every few hundred milliseconds and the occasional create or delete, each change written to
//! disk with an fsync before it is answered. Blocking code says that directly: one thread per
//! connection (at most [`CONNECTIONS_MAX`]), reading whole frames with the same decoders as
//! the node, the cluster state behind one mutex, and a condition variable that heartbeats
//! signal so that a waiting CREATE_LOG wakes up when a replica reports the new map. With
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
//! | HEARTBEAT of a node that never registered | UNKNOWN_NODE, `arg0` = `u64::MAX` |
//!
//! Connections beyond [`CONNECTIONS_MAX`] are closed at once, unanswered (as a node does with
//! connections beyond its slots).
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
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chainlog_net::{
    decode_request, encode_error, encode_response, parse_frame, CreateLogResponse,
    DescribeLogResponse, ErrorCode, ErrorResponse, Frame, GetMapResponse, HelloResponse, Limits,
    ListLogsResponse, LogEntries, LogEntry, LogRef, MapLogs, MapNodes, MapVersionResponse, Opcode,
    Request, Response, Role, ADDR_BYTES_MAX, ARG_NONE, FRAME_HEADER_BYTES, PROTOCOL_VERSION,
};

use super::state::{ClusterState, MapLog, MapNode, StateError, NODES_MAX};
use super::store::{StateStore, StoreError};
use crate::signals::StopSignals;

/// Connections served at once; more are closed at once (a warning is logged).
pub const CONNECTIONS_MAX: usize = 256;
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
/// The largest GET_MAP page: every node (each entry 24 bytes and an address padded to 8)
/// and `list_max` logs (40 bytes, a chain of up to 255 ids, a name padded to 8), after the
/// frame and page headers. It fits a frame, so a page never needs cutting by size.
const GET_MAP_PAGE_BYTES_MAX: usize = FRAME_HEADER_BYTES
    + 24
    + NODES_MAX * (24 + padded(ADDR_BYTES_MAX as usize))
    + LIMITS.list_max as usize * (40 + 8 * 255 + padded(LIMITS.name_bytes_max as usize));
const _: () = assert!(GET_MAP_PAGE_BYTES_MAX <= LIMITS.frame_bytes_max as usize);

const fn padded(n: usize) -> usize {
    n.next_multiple_of(8)
}

/// How often the reconfiguring thread looks for chains that lost a member.
const RECONFIGURE_EVERY: Duration = Duration::from_millis(20);
/// How long a SEAL may take before the node is left out of the next epoch.
const SEAL_TIMEOUT: Duration = Duration::from_millis(500);

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
    /// How long CREATE_LOG waits for every replica's node to apply the new map.
    pub create_timeout: Duration,
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

/// Runs the controller until SIGTERM or SIGINT, then stops gracefully. Prints
/// `chainlog controller: serving at ADDR` ([`SERVING_AT`]) on stdout once it serves (scripts
/// and tests read the address there, e.g. after `--listen 127.0.0.1:0`).
pub fn run(config: ControllerConfig) -> Result<(), ControllerError> {
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
    tracing::info!(
        listen = %local,
        state = %store.path().display(),
        version = state.version(),
        nodes = state.nodes().count(),
        logs = state.logs_after(0, usize::MAX).count(),
        "controller serving"
    );
    let controller = Controller {
        state: Mutex::new(state),
        changed: Condvar::new(),
        store,
        liveness: config.liveness,
        started: Instant::now(),
        create_timeout: config.create_timeout,
        stopping: AtomicBool::new(false),
        conns: Mutex::new(BTreeMap::new()),
        conn_count: AtomicUsize::new(0),
        next_conn: AtomicU64::new(1),
    };
    println!("{SERVING_AT}{local}");
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
        while !signals.wait(CHECK_EVERY) {
            if acceptor.is_finished() {
                break;
            }
        }
        tracing::info!("controller stopping");
        controller.stop(&listener);
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
    stopping: AtomicBool,
    /// A handle on every open connection, to shut them down at stop.
    conns: Mutex<BTreeMap<u64, TcpStream>>,
    conn_count: AtomicUsize,
    next_conn: AtomicU64,
}

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
            StateError::NoSurvivor { .. } => ErrorCode::Unavailable,
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
            | StateError::ZeroReplicationFactor
            | StateError::InvalidName { .. } => ErrorCode::Malformed,
        };
        Refusal::new(code, ARG_NONE, e.to_string())
    }
}

/// What a connection keeps between frames.
#[derive(Debug, Default)]
struct Session {
    greeted: bool,
    /// Answer what is queued, then close.
    closing: bool,
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

    /// Writes the state; a failure is fatal (module documentation).
    fn persist(&self, state: &ClusterState) {
        if let Err(e) = self.store.save(state) {
            chainlog_storage::fatal(&format!("controller state: {e}"));
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
            if self.conn_count.load(Ordering::SeqCst) >= CONNECTIONS_MAX {
                tracing::warn!(
                    max = CONNECTIONS_MAX,
                    "connection refused: too many connections"
                );
                continue;
            }
            self.conn_count.fetch_add(1, Ordering::SeqCst);
            let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("conn-{id}"))
                .spawn_scoped(scope, move || {
                    self.connection(id, stream);
                    self.conn_count.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.conn_count.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "connection refused: no thread for it");
            }
        }
    }

    /// Stops: no more connections, no more reading, waiting creates give up.
    fn stop(&self, listener: &TcpListener) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            // Under the lock, so that a create between its check and its wait cannot miss it.
            let _state = self.lock();
            self.changed.notify_all();
        }
        // SAFETY: shutdown(2) on the listener's open descriptor; it wakes the blocked accept.
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
        for stream in self.conns.lock().expect("connections lock").values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }

    /// Reconfigures the logs whose chains lost a member or can get one back
    /// ([`reconfig`](super::reconfig)), every [`RECONFIGURE_EVERY`], until the controller
    /// stops. Nothing happens before the liveness timeout has passed since the start: until
    /// then a node's silence means it has not heartbeated to this process yet.
    fn reconfigure_loop(&self) {
        while !self.stopping() {
            std::thread::sleep(RECONFIGURE_EVERY);
            if self.started.elapsed() < self.liveness {
                continue;
            }
            let plans = super::reconfig::plan(&self.lock(), Instant::now());
            for plan in plans {
                if self.stopping() {
                    return;
                }
                self.reconfigure(&plan);
            }
        }
    }

    /// Seals `plan`'s epoch at its live members (at once, each within [`SEAL_TIMEOUT`]), then
    /// starts the next epoch from the members that sealed, durably. That it seals the epoch
    /// is durable before the first SEAL goes out.
    fn reconfigure(&self, plan: &super::reconfig::Plan) {
        let started = Instant::now();
        {
            let mut state = self.lock();
            match state.begin_seal(plan.log_id, plan.epoch) {
                Ok(true) => self.persist(&state),
                Ok(false) => {}
                Err(e) => {
                    tracing::info!(log_id = plan.log_id, error = %e, "reconfiguration lost");
                    return;
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
        let mut sealed = Vec::new();
        for (id, result) in results {
            match result {
                Ok((end, _trim)) => sealed.push((id, end)),
                Err(e) => {
                    tracing::warn!(log_id = plan.log_id, epoch = plan.epoch, node = id, error = %e, "seal failed")
                }
            }
        }
        if sealed.is_empty() {
            return; // Tried again on the next round.
        }
        let seal_us = started.elapsed().as_micros() as u64;
        let mut state = self.lock();
        match state.extend(plan.log_id, plan.epoch, &sealed, Instant::now()) {
            Ok(epoch) => {
                self.persist(&state);
                self.changed.notify_all();
                tracing::info!(
                    log_id = plan.log_id,
                    why = ?plan.why,
                    sealed = ?sealed,
                    epoch = epoch.epoch,
                    start_lsn = epoch.start_lsn,
                    chain = ?epoch.chain,
                    seal_us,
                    total_us = started.elapsed().as_micros() as u64,
                    "log reconfigured"
                );
            }
            Err(e) => tracing::info!(log_id = plan.log_id, error = %e, "reconfiguration lost"),
        }
    }

    /// Serves one connection until it closes, breaks the protocol or the controller stops.
    fn connection(&self, id: u64, mut stream: TcpStream) {
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
        let closed_by_us = self.serve(&mut stream);
        self.conns.lock().expect("connections lock").remove(&id);
        if closed_by_us {
            linger(stream);
        }
    }

    /// The connection's read loop; true if the controller ended it (a refused frame), false
    /// if the peer did (or the socket failed, or the controller stops).
    fn serve(&self, stream: &mut TcpStream) -> bool {
        let mut input = Vec::new();
        let mut out = Vec::new();
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let mut session = Session::default();
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
                    Instant::now(),
                )?;
                if map_version != before {
                    self.persist(&state);
                    tracing::info!(
                        node_id = register.node_id,
                        addr = register.addr,
                        shards = register.shard_count,
                        version = map_version,
                        "node registered"
                    );
                }
                // A node that registers again has applied nothing: waiting creates look again.
                self.changed.notify_all();
                Ok(Answer::Registered(MapVersionResponse { map_version }))
            }
            Request::Heartbeat(heartbeat) => {
                let mut state = self.lock();
                let map_version = state.heartbeat(
                    heartbeat.node_id,
                    heartbeat.applied_version,
                    Instant::now(),
                )?;
                self.changed.notify_all();
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
