//! One shard: a thread that owns a store, a listener and its connections, and drives all of
//! them from its environment ([`Net`], which is also the store's `Io`). Each turn of the loop
//! is one `Store::poll` (on the real backend one `io_uring_enter` for disk and network
//! together), then the reads that waited for the disk (to their owners, [`super::reads`]),
//! then the network completions, then the acknowledgements of durable appends, then the sends
//! they produced. [`Shard`] is generic over the environment: [`run`] drives it on the
//! real one ([`RealEnv`]) in a thread; the simulator drives it turn by turn on a simulated one,
//! telling it of a stop or a new cluster map directly instead of through eventfds.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use chainlog_storage::io::Completion;
use chainlog_storage::{
    fatal, Ack, Clock, Error, FatalReason, ReadDone, Store, StoreConfig, SystemClock, UringIo,
};

use super::catalog::{Catalog, StoreLogs};
use super::chain::Chain;
use super::conn::{ack_token, conn_of, Conn, ConnLimits};
use super::control::{ControlInbox, MapUpdate};
use super::env::{Net, RawSlice, RealEnv, Sock};
use super::metrics::{self, Board, Snapshot};
use super::ops::{NetOp, NetToken, GENERATION_MASK, SLOTS_MAX};
use super::protocol::{self, Identity, OUTPUT_MAX};
use super::reads::{Owner, Reads};
use super::Startup;

/// Submission queue entries of a shard's ring.
const RING_ENTRIES: u32 = 4096;
/// Period of the replication timer (link reconnects, held logs) of a cluster member.
const REPLICATION_TICK_US: u64 = 20_000;
/// Period of the metrics tick.
const METRICS_TICK_US: u64 = 1_000_000;
/// How long a stopping shard waits for appends that wait on the rest of their chain, before
/// it closes their connections unanswered (their outcome is unknown to the clients).
const STOP_WAIT_US: u64 = 5_000_000;
/// A traced append whose answer has not been sent this long after it was queued is published
/// unsent (its connection closed, or its client stopped reading).
const TRACE_SEND_GIVE_UP_US: u64 = 1_000_000;
/// How long a stopping shard waits for its links' operations to finish before it cancels
/// them (a connect to a host that does not answer).
const LINKS_CLOSE_WAIT_US: u64 = 2_000_000;

/// What a shard is started with.
#[derive(Debug)]
pub(crate) struct ShardContext {
    pub(crate) index: u16,
    pub(crate) count: u16,
    pub(crate) dir: PathBuf,
    pub(crate) store: StoreConfig,
    pub(crate) recv_bytes: usize,
    pub(crate) in_flight_max: usize,
    pub(crate) conn_limits: ConnLimits,
    pub(crate) limits: chainlog_net::Limits,
    pub(crate) node_id: u64,
    pub(crate) core: Option<usize>,
    /// Where the shard publishes its metrics once a second.
    pub(crate) board: Board,
    /// Readable when the node stops.
    pub(crate) stop: OwnedFd,
    /// A cluster member's news from the control thread (`None`: standalone).
    pub(crate) control: Option<ControlInbox>,
    /// Told once the shard serves.
    pub(crate) startup: Arc<Startup>,
}

/// Runs a shard, accepting on `listener` (bound by the main thread), until it is stopped (Ok)
/// or cannot go on (Err). A storage failure ends the process through `fatal` (nothing more
/// may be acknowledged). A store or catalog that cannot be served as it is (damaged, or
/// disagreeing) is logged at ERROR and the shard does not start, which stops the node: it
/// never serves its logs emptied or shorter.
pub(crate) fn run(ctx: ShardContext, listener: TcpListener) -> Result<(), String> {
    if let Some(core) = ctx.core {
        pin_to(core);
    }
    let store_dir = ctx.dir.join("store");
    let io = UringIo::new(RING_ENTRIES).map_err(|e| format!("io_uring: {e}"))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let store = match Store::open(
        RealEnv::new(io),
        &store_dir,
        ctx.store.clone(),
        clock.clone(),
    ) {
        Ok(store) => store,
        Err(Error::Fatal(reason)) => fatal(FatalReason::store(Some(ctx.index), reason)),
        Err(e) => {
            let reason = format!("opening the store in {}: {e}", store_dir.display());
            return Err(refuse_to_start(ctx.index, e.kind(), reason));
        }
    };
    let store_logs = StoreLogs {
        new: store.recovery_report().segments == 0,
        log_ids: store.log_ids().collect(),
    };
    let catalog = match Catalog::open(&ctx.dir, &store_logs) {
        Ok(catalog) => catalog,
        Err(e) => {
            // Leave the store as it was found: stopped cleanly (recovery removed the record).
            if let Err(e) = store.close(&mut Vec::new()) {
                fatal(FatalReason::store(Some(ctx.index), e));
            }
            return Err(refuse_to_start(ctx.index, "catalog", e.to_string()));
        }
    };
    let listen = listener
        .local_addr()
        .map_err(|e| format!("the listener's address: {e}"))?;
    tracing::info!(shard = ctx.index, %listen, durability = ?store.durability(), "shard serving");
    ctx.startup.shard_serving();
    let params = ShardParams {
        identity: Identity {
            shard_index: ctx.index,
            shard_count: ctx.count,
            node_id: ctx.node_id,
            limits: ctx.limits,
            cluster: ctx.control.is_some(),
        },
        recv_bytes: ctx.recv_bytes,
        in_flight_max: ctx.in_flight_max,
        conn_limits: ctx.conn_limits,
    };
    let mut store = store;
    let listener = store.io_mut().adopt(OwnedFd::from(listener));
    let signals = Signals {
        stop: Some(ctx.stop),
        control: ctx.control,
    };
    let mut shard = Shard::new(params, store, catalog, clock, listener, ctx.board, signals);
    shard.start();
    while shard.turn(true) {}
    shard.finish();
    Ok(())
}

/// Reports why shard `shard` does not start (at ERROR, `kind` naming the error's kind) and
/// returns the reason for the node's exit message. Repairing a damaged store from a peer
/// replica is not done yet: the operator restores the data or replaces the node.
fn refuse_to_start(shard: u16, kind: &str, reason: String) -> String {
    tracing::error!(shard, kind, %reason, "the shard's data cannot be served as it is: the shard does not start and the node stops");
    format!("{reason} (the shard's data is not served as it is: restore it, or replace the node)")
}

/// A log's records as a shard stores them: (LSN, payload), in order.
pub(crate) type StoredLog = Vec<(u64, Vec<u8>)>;

/// What a shard is, whatever its environment: its identity and its limits per connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShardParams {
    pub(crate) identity: Identity,
    /// Receive buffer per connection (at least the largest frame).
    pub(crate) recv_bytes: usize,
    /// Requests a connection may have unanswered before the shard stops reading it.
    pub(crate) in_flight_max: usize,
    /// How many connections, and how long a silent one is kept.
    pub(crate) conn_limits: ConnLimits,
}

/// How a shard running in its own thread hears of a stop and of new cluster maps: eventfds
/// read through its ring. A simulated shard has none: it is told directly.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    /// Readable when the node stops.
    pub(crate) stop: Option<OwnedFd>,
    /// A cluster member's news from the control thread.
    pub(crate) control: Option<ControlInbox>,
}

/// A shard over its environment `E`: the store, the listener, the connections, the
/// protocol's state and the replication links.
#[derive(Debug)]
pub(crate) struct Shard<E: Net> {
    params: ShardParams,
    protocol: protocol::Server,
    store: Store<E>,
    listener: Option<Sock>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    next_generation: u32,
    acks: Vec<Ack>,
    /// The tokens of a turn's acks, whose connections are answered.
    acked: Vec<u64>,
    external: Vec<Completion>,
    /// Catch-up and subscription reads waiting for the disk, and a turn's finished ones.
    reads: Reads,
    reads_done: Vec<ReadDone>,
    stopping: bool,
    /// Slots of connections with subscriptions, pumped every turn.
    subscribed: Vec<u32>,
    /// Replication links and forwarding.
    chain: Chain,
    /// When a stopping shard gives up on appends still waiting for their chain.
    stop_deadline_us: Option<u64>,
    /// Where the shard publishes its metrics once a second.
    board: Board,
    signals: Signals,
}

impl<E: Net> Shard<E> {
    /// A shard over an opened store and catalog, listening on `listener`.
    pub(crate) fn new(
        params: ShardParams,
        store: Store<E>,
        catalog: Catalog,
        clock: Arc<dyn Clock>,
        listener: Sock,
        board: Board,
        signals: Signals,
    ) -> Shard<E> {
        let id = params.identity;
        Shard {
            protocol: protocol::Server::new(id, catalog, &store, clock),
            chain: Chain::new(id.node_id, id.limits, params.recv_bytes),
            params,
            store,
            listener: Some(listener),
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 1,
            acks: Vec::new(),
            acked: Vec::new(),
            external: Vec::new(),
            reads: Reads::default(),
            reads_done: Vec::new(),
            stopping: false,
            subscribed: Vec::new(),
            stop_deadline_us: None,
            board,
            signals,
        }
    }

    fn index(&self) -> u16 {
        self.params.identity.shard_index
    }

    /// The environment (a simulator asks it when the shard has work next).
    pub(crate) fn env(&self) -> &E {
        self.store.io()
    }

    /// The replication state of `log_id` here, in one line, and the states of the links.
    pub(crate) fn describe(&self, log_id: u64) -> String {
        format!(
            "{} | links {}",
            self.protocol
                .replicas
                .get(log_id)
                .map_or("no replica".into(), |r| r.summary()),
            self.chain.describe()
        )
    }

    /// What the chain has told this shard's replica of `log_id` is committed (and is durable
    /// here), leaving aside what it knew from before its epoch
    /// ([`Replica::knows_committed`](crate::replication::Replica::knows_committed)); 0 if
    /// the shard holds no replica of it. For a simulator: a chain has settled once every
    /// replica learned its committed tail again.
    pub(crate) fn chain_committed(&self, log_id: u64) -> u64 {
        self.protocol
            .replicas
            .get(log_id)
            .map_or(0, |r| r.committed().min(r.durable_lsn()))
    }

    /// Whether this shard keeps a replication link to `peer` (for a simulator's scenarios).
    #[cfg(test)]
    pub(crate) fn has_link_to(&self, peer: u64) -> bool {
        self.chain.has_link_to(peer)
    }

    /// Whether this shard's replica of `log_id` waits for the answer to a PULL (for a
    /// simulator's scenarios).
    #[cfg(test)]
    pub(crate) fn awaits_pull(&self, log_id: u64) -> bool {
        self.protocol
            .replicas
            .get(log_id)
            .is_some_and(crate::replication::Replica::awaits_pull)
    }

    /// Every record of `log_id` this shard stores (durable or not), as (LSN, payload), from
    /// its trim point, with that trim point and the LSN below which it serves them as
    /// committed; `None` if the shard has no such log. For a simulator's checks at the end of
    /// a run. An error if the store failed (a write's failure can surface in this read): the
    /// node stops at its next turn.
    pub(crate) fn stored_records(
        &mut self,
        log_id: u64,
    ) -> chainlog_storage::Result<Option<(u64, u64, StoredLog)>> {
        let Some(tail) = self.store.tail(log_id) else {
            return Ok(None);
        };
        let readable = self.protocol.replicas.readable(log_id);
        let mut out = Vec::new();
        let mut next = tail.trim_point;
        while next < tail.next_lsn {
            let records = self.store.read_stored(log_id, next, usize::MAX, 1 << 20)?;
            if records.is_empty() {
                break;
            }
            for r in records {
                next = r.lsn + 1;
                out.push((r.lsn, r.payload));
            }
        }
        Ok(Some((tail.trim_point, readable, out)))
    }

    /// Arms what runs for the shard's whole life: the accept, the timers, the signals.
    pub(crate) fn start(&mut self) {
        let listener = self.listener.expect("a new shard listens");
        let accept = NetToken::of(NetOp::Accept);
        self.store.io_mut().accept(listener, accept);
        self.store
            .io_mut()
            .timeout(METRICS_TICK_US, NetToken::of(NetOp::Tick));
        if let Some(stop) = &self.signals.stop {
            let fd = stop.as_raw_fd();
            self.store
                .io_mut()
                .read_event(fd, NetToken::of(NetOp::Stop));
        }
        if self.params.identity.cluster {
            self.arm_control();
            self.store
                .io_mut()
                .timeout(REPLICATION_TICK_US, NetToken::of(NetOp::Timer));
        }
    }

    /// One turn of the loop: waits for completions (if `wait`; otherwise takes those that
    /// are ready), handles them, acknowledges what became durable, sends. Returns false once
    /// the shard has stopped serving (then [`finish`](Self::finish) it).
    pub(crate) fn turn(&mut self, wait: bool) -> bool {
        // What the store reaped while it was waited on within the last turn (installing a
        // map syncs the store) is handled now, not after a wait: the accept or timer those
        // completions finish is armed again only once handled, and with them the ring may
        // hold nothing to end a wait (a node back in a chain then left new connections
        // unanswered until the next map).
        // So are the reads it finished then.
        self.store.take_reads(&mut self.reads_done);
        let wait = wait
            && !self.protocol.has_taken_acks()
            && !self.store.has_external()
            && self.reads_done.is_empty();
        if let Err(e) = self.store.poll(wait, &mut self.acks) {
            fatal(FatalReason::store(Some(self.index()), e));
        }
        self.protocol.start_turn();
        // Before anything else of the turn changes the store: a read's records are what the
        // log holds now, which is what its owner's state says too (each owner checks that
        // its state still matches the read, whenever the read finished).
        self.store.take_reads(&mut self.reads_done);
        for done in std::mem::take(&mut self.reads_done) {
            self.on_read(done);
        }
        self.store.take_external(&mut self.external);
        for completion in std::mem::take(&mut self.external) {
            self.on_completion(completion);
        }
        self.protocol.store_acked(&self.acks, &mut self.acked);
        self.acks.clear();
        for token in self.acked.drain(..) {
            if let Some(conn) = conn_of(&mut self.conns, token) {
                self.protocol.acknowledge(&mut conn.session, &self.store);
            }
        }
        self.flush();
        !(self.stopping && self.conns.iter().all(Option::is_none))
    }

    /// After the last turn: closes the links and the store (everything durable, and the
    /// clean-stop record written: the next start checks the store against it).
    pub(crate) fn finish(mut self) {
        self.close_links();
        let index = self.index();
        if let Err(e) = self.store.close(&mut Vec::new()) {
            fatal(FatalReason::store(Some(index), e));
        }
        tracing::info!(shard = index, "shard stopped");
    }

    fn on_completion(&mut self, completion: Completion) {
        let Some(token) = NetToken::decode(completion.token) else {
            unreachable!("the store hands back only external completions");
        };
        match token.op {
            NetOp::Accept => self.on_accept(completion.result),
            NetOp::Stop => self.on_stop(),
            NetOp::Tick => {
                self.publish();
                self.close_expired();
                self.store
                    .io_mut()
                    .timeout(METRICS_TICK_US, NetToken::of(NetOp::Tick));
            }
            NetOp::Timer => {
                // Waking is the point: the end of the turn retries links and held logs.
                self.store
                    .io_mut()
                    .timeout(REPLICATION_TICK_US, NetToken::of(NetOp::Timer));
            }
            NetOp::Control => self.on_control(),
            NetOp::Cancel => {}
            NetOp::LinkConnect | NetOp::LinkRecv | NetOp::LinkSend => {
                self.on_link(token, completion.result)
            }
            NetOp::Recv | NetOp::Send => {
                let slot = token.slot as usize;
                let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                    return;
                };
                if conn.generation != token.generation {
                    return;
                }
                if token.op == NetOp::Recv {
                    conn.recv_in_flight = false;
                    match completion.result {
                        Ok(0) | Err(_) => {
                            conn.session.closing = true;
                            conn.session.discard_bytes = 0;
                            // A predecessor's replication connection ended: it may be dead.
                            if let (Some(peer), Some(control)) =
                                (conn.session.peer, &self.signals.control)
                            {
                                control.suspect(peer);
                            }
                        }
                        Ok(n) if conn.session.discard_bytes > 0 => {
                            // The rest of a refused oversized frame: dropped unread.
                            conn.session.discarded(n);
                            self.protocol.metrics.bytes_received += n as u64;
                            self.arm_recv(slot);
                        }
                        Ok(n) => {
                            conn.received(n, self.protocol.now_us());
                            self.protocol.metrics.bytes_received += n as u64;
                            self.on_input(slot);
                        }
                    }
                } else {
                    match completion.result {
                        Ok(n) => {
                            let (sock, generation) = (conn.sock(), conn.generation);
                            if let Some(rest) = conn.sent(n) {
                                let t = NetToken {
                                    op: NetOp::Send,
                                    slot: token.slot,
                                    generation,
                                };
                                let rest = [RawSlice::of(rest)];
                                // SAFETY: the connection keeps its in-flight send buffer,
                                // untouched, until this send's completion.
                                unsafe { self.store.io_mut().send(sock, &rest, t) };
                            }
                        }
                        Err(_) => {
                            conn.send_in_flight = false;
                            conn.session.closing = true;
                            conn.session.out.clear();
                        }
                    }
                }
            }
        }
    }

    fn on_accept(&mut self, result: std::io::Result<usize>) {
        let Some(listener) = self.listener else {
            if let Ok(n) = result {
                // Accepted as the shard stopped: closed at once.
                let sock = self.store.io_mut().accepted(n);
                self.store.io_mut().close_socket(sock);
            }
            return;
        };
        match result {
            Ok(n) => {
                let sock = self.store.io_mut().accepted(n);
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None if self.conns.len() < SLOTS_MAX => {
                        self.conns.push(None);
                        (self.conns.len() - 1) as u32
                    }
                    None => {
                        tracing::warn!(
                            shard = self.index(),
                            "connection refused: every slot is in use"
                        );
                        self.store.io_mut().close_socket(sock);
                        self.store
                            .io_mut()
                            .accept(listener, NetToken::of(NetOp::Accept));
                        return;
                    }
                };
                let generation = self.next_generation;
                // Tokens carry 24 bits of generation: wrap there (0 is never used).
                self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
                self.next_generation = self.next_generation.max(1);
                let now = self.protocol.now_us();
                let mut conn = Conn::new(sock, generation, self.params.recv_bytes, now);
                self.protocol.metrics.connections_accepted += 1;
                let open = self.conns.len() - self.free.len() - 1;
                let max = self.params.conn_limits.connections_max;
                if open >= max {
                    // Answered, then closed once the answer is out (read never).
                    self.protocol.refuse_connection(&mut conn, max);
                    self.conns[slot as usize] = Some(conn);
                } else {
                    self.conns[slot as usize] = Some(conn);
                    self.arm_recv(slot as usize);
                }
            }
            Err(e) => tracing::warn!(shard = self.index(), error = %e, "accept failed"),
        }
        if !self.stopping {
            self.store
                .io_mut()
                .accept(listener, NetToken::of(NetOp::Accept));
        }
    }

    /// Closes the connections that did not say HELLO in time, and the client connections
    /// idle for too long (once a second; the flush that follows ends their receive).
    fn close_expired(&mut self) {
        let now = self.protocol.now_us();
        let limits = self.params.conn_limits;
        for conn in self.conns.iter_mut().flatten() {
            if let Some(why) = limits.expired(conn, now) {
                tracing::debug!(
                    shard = self.params.identity.shard_index,
                    why,
                    "closing a connection"
                );
                self.protocol.metrics.connections_expired += 1;
                conn.session.closing = true;
            }
        }
    }

    /// A read that waited for the disk finished: to its owner. A store that failed stops the
    /// node, as for any store failure.
    fn on_read(&mut self, done: ReadDone) {
        if let Err(Error::Fatal(reason)) = &done.result {
            fatal(FatalReason::store(Some(self.index()), reason));
        }
        match self.reads.finish(done.token) {
            owner @ Owner::CatchUp { .. } => {
                let protocol = &mut self.protocol;
                self.chain.on_read(
                    &mut protocol.replicas,
                    &mut protocol.metrics,
                    owner,
                    done.result,
                );
            }
            Owner::Answer {
                conn,
                request_id,
                parked,
            } => {
                if let Some(c) = conn_of(&mut self.conns, conn) {
                    self.protocol.answer_parked(
                        &mut c.session,
                        &mut self.store,
                        &mut self.reads,
                        conn,
                        request_id,
                        parked,
                        done.result,
                    );
                }
            }
            Owner::Push { conn } => {
                if let Some(conn) = conn_of(&mut self.conns, conn) {
                    conn.session.subscriptions.on_read(
                        &mut conn.session.out,
                        &self.protocol.replicas,
                        &self.params.identity.limits,
                        done.token,
                        done.result,
                    );
                }
            }
        }
    }

    /// A completion of a replication link's operation.
    fn on_link(&mut self, token: NetToken, result: std::io::Result<usize>) {
        let now = self.protocol.now_us();
        let protocol = &mut self.protocol;
        self.chain.on_completion(
            token,
            result,
            &mut protocol.replicas,
            &mut protocol.metrics,
            &mut self.store,
            now,
        );
    }

    /// The control thread has news: install the newest cluster map, and read the eventfd
    /// again.
    fn on_control(&mut self) {
        let update = self.signals.control.as_ref().and_then(ControlInbox::newest);
        if let Some(update) = update {
            self.install(&update);
            if let Some(control) = &self.signals.control {
                control
                    .applied
                    .store(update.map.version(), std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.arm_control();
    }

    /// Installs a cluster map: the logs this shard holds a replica of, and the nodes.
    pub(crate) fn install(&mut self, update: &MapUpdate) {
        self.protocol.apply_map(&update.map, &mut self.store);
        self.chain.set_peers(update.peers.clone());
    }

    /// Reads the control eventfd again (the next news wakes the shard).
    fn arm_control(&mut self) {
        if let Some(control) = &self.signals.control {
            let fd = control.wake.as_raw_fd();
            self.store
                .io_mut()
                .read_event(fd, NetToken::of(NetOp::Control));
        }
    }

    /// After the last connection closed: closes the replication links and waits until the
    /// kernel is done with them (cancelling what lingers: a connect to a host that does not
    /// answer), then gives their pins back; and completes the control eventfd's pending read,
    /// so that no operation of the shard is left in the ring when it is dropped.
    fn close_links(&mut self) {
        self.chain.close_all(self.store.io_mut());
        let mut acks = Vec::new();
        let cancel_at = self.protocol.now_us() + LINKS_CLOSE_WAIT_US;
        let mut cancelled = false;
        while !self.chain.all_idle() {
            if !cancelled && self.protocol.now_us() >= cancel_at {
                self.chain.cancel_busy(&mut self.store);
                cancelled = true;
            }
            if let Err(e) = self.store.poll(true, &mut acks) {
                fatal(FatalReason::store(Some(self.index()), e));
            }
            self.store.take_external(&mut self.external);
            for completion in std::mem::take(&mut self.external) {
                if let Some(token) = NetToken::decode(completion.token) {
                    if matches!(
                        token.op,
                        NetOp::LinkConnect | NetOp::LinkRecv | NetOp::LinkSend
                    ) {
                        self.on_link(token, completion.result);
                    }
                }
            }
            acks.clear();
        }
        let now = self.protocol.now_us();
        self.chain.release(&mut self.store, now);
        if let Some(control) = &self.signals.control {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd the shard owns.
            unsafe { libc::write(control.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// SIGTERM: accept nothing more, read nothing more; answer what was received, flush, close.
    pub(crate) fn on_stop(&mut self) {
        self.stopping = true;
        self.stop_deadline_us = Some(self.protocol.now_us() + STOP_WAIT_US);
        if let Some(listener) = self.listener.take() {
            // Shutting it down completes the pending accept (which then finds no listener
            // and stops); closed with the environment.
            self.store.io_mut().shutdown(listener);
        }
        for conn in self.conns.iter_mut().flatten() {
            conn.session.closing = true;
            conn.session.discard_bytes = 0;
        }
    }

    fn arm_recv(&mut self, slot: usize) {
        let conn = self.conns[slot].as_mut().expect("live connection");
        // A closing connection reads only the rest of a refused oversized frame (dropped).
        let discarding = conn.session.discard_bytes > 0;
        if conn.recv_in_flight
            || !discarding
                && (conn.session.closing
                    || conn.session.pending.len() >= self.params.in_flight_max
                    || conn.session.out.len() >= OUTPUT_MAX)
        {
            return;
        }
        let token = NetToken {
            op: NetOp::Recv,
            slot: slot as u32,
            generation: conn.generation,
        };
        let sock = conn.sock();
        conn.recv_in_flight = true;
        let space = conn.recv_space();
        // SAFETY: the connection owns its receive buffer (a boxed slice, never reallocated)
        // and neither reads nor writes it while `recv_in_flight`.
        unsafe {
            self.store
                .io_mut()
                .recv(sock, space.as_mut_ptr(), space.len(), token)
        };
    }

    /// Handles every whole frame received on `slot`.
    fn on_input(&mut self, slot: usize) {
        let mut conn = self.conns[slot].take().expect("live connection");
        let token = ack_token(slot as u32, conn.generation);
        let subscribed = !conn.session.subscriptions.is_empty();
        let consumed =
            self.protocol
                .handle_input(&mut conn, &mut self.store, &mut self.reads, token);
        conn.consume(consumed);
        if !subscribed && !conn.session.subscriptions.is_empty() {
            self.subscribed.push(slot as u32);
        }
        let output_full = conn.session.out.len() >= OUTPUT_MAX;
        if !conn.session.closing && !output_full && conn.recv_space().is_empty() && !conn.grow() {
            // A frame larger than the largest buffer can only come from a limit mismatch:
            // refuse it.
            self.protocol.refuse_oversized(&mut conn);
        }
        self.conns[slot] = Some(conn);
        self.arm_recv(slot);
    }

    /// A connection that was paused (no receive in flight: too many unanswered requests, or
    /// too much queued output) handles the frames it has buffered and is read again, once
    /// there is room.
    fn resume(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let paused = !conn.recv_in_flight && !conn.session.closing;
        let room = conn.session.pending.len() < self.params.in_flight_max
            && conn.session.out.len() < OUTPUT_MAX;
        if paused && room {
            self.on_input(slot);
        }
    }

    /// Publishes this shard's metrics for `/metrics` (once a second: the lock is taken on the
    /// control path only).
    fn publish(&mut self) {
        let (lagging_logs, lag_records) = self.protocol.replicas.lag();
        // Read back to back: the traces' times are placed on CLOCK_MONOTONIC by the gap.
        let now_us = self.protocol.now_us();
        let origin_ns = metrics::monotonic_ns().saturating_sub(now_us * 1_000);
        let done = self
            .protocol
            .metrics
            .traces
            .take_done(now_us, TRACE_SEND_GIVE_UP_US);
        let mut snapshot = Snapshot {
            shard: self.protocol.metrics.clone(),
            store: self.store.metrics().clone(),
            logs: self.protocol.logs(),
            catalog_bytes: self.protocol.catalog_bytes(),
            connections: self.conns.iter().flatten().count(),
            connections_max: self.params.conn_limits.connections_max,
            receive_buffer_bytes: self
                .conns
                .iter()
                .flatten()
                .map(Conn::recv_buffer_bytes)
                .sum(),
            lagging_logs,
            lag_records,
            origin_ns,
            traces: Vec::new(),
        };
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut board[usize::from(self.index())];
        let kept = slot
            .as_mut()
            .map(|previous| std::mem::take(&mut previous.traces))
            .unwrap_or_default();
        snapshot.keep_traces(kept, done);
        *slot = Some(snapshot);
    }

    /// Makes the turn's catalog changes durable, pushes to subscriptions, starts sends for
    /// connections with output, closes connections that are done.
    fn flush(&mut self) {
        // First: every answer and message of the turn may depend on a create made in it.
        self.protocol.sync_catalog();
        let now = self.protocol.now_us();
        let protocol = &mut self.protocol;
        self.chain.pump(
            &mut protocol.replicas,
            &mut protocol.metrics,
            &mut self.store,
            &mut self.reads,
            &mut self.conns,
            now,
        );
        let expected = self.protocol.replicas.take_map_expected();
        for node in self.chain.take_suspects() {
            if let Some(control) = &self.signals.control {
                control.suspect(node);
            }
        }
        if let (Some(control), Some(sealed)) = (&self.signals.control, expected) {
            control.expect_map(sealed);
        }
        let give_up = self.stop_deadline_us.is_some_and(|d| now >= d);
        let mut i = 0;
        while i < self.subscribed.len() {
            let slot = self.subscribed[i] as usize;
            let active = match self.conns[slot].as_mut() {
                Some(conn) if !conn.session.closing => conn.session.subscriptions.pump(
                    &mut conn.session.out,
                    &mut self.store,
                    &mut self.reads,
                    ack_token(slot as u32, conn.generation),
                    &self.protocol.replicas,
                    &self.params.identity.limits,
                ),
                _ => false,
            };
            if active {
                i += 1;
            } else {
                self.subscribed.swap_remove(i);
            }
        }
        for slot in 0..self.conns.len() {
            self.resume(slot);
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            if !conn.session.pending.is_empty() || !conn.session.barriers.is_empty() {
                // Answers that waited for the rest of the chain.
                self.protocol.drain(&mut conn.session, &self.store);
                if give_up && !conn.session.pending.is_empty() {
                    tracing::warn!(
                        shard = self.params.identity.shard_index,
                        unanswered = conn.session.pending.len(),
                        "stopping: appends still wait for their chain; closing their connection"
                    );
                    conn.session.pending.clear();
                    conn.session.local_next = 0;
                    conn.session.barriers.clear();
                    self.store.io_mut().shutdown(conn.sock());
                }
            }
            let (sock, generation) = (conn.sock(), conn.generation);
            if let Some(bytes) = conn.start_send() {
                let token = NetToken {
                    op: NetOp::Send,
                    slot: slot as u32,
                    generation,
                };
                let bytes = [RawSlice::of(bytes)];
                // SAFETY: the connection keeps its in-flight send buffer, untouched, until
                // this send's completion.
                unsafe { self.store.io_mut().send(sock, &bytes, token) };
            }
            let traced = conn.take_sending_traces();
            if !traced.is_empty() {
                let now = self.protocol.now_us();
                self.protocol.metrics.sent(&traced, now);
            }
            let done = conn.session.closing
                && conn.session.discard_bytes == 0
                && conn.session.pending.is_empty()
                && conn.session.barriers.is_empty()
                && conn.flushed();
            if done && conn.recv_in_flight {
                self.store.io_mut().shutdown(sock);
            }
            if done && conn.idle() {
                self.conns[slot] = None;
                self.free.push(slot as u32);
                self.store.io_mut().close_socket(sock);
            }
        }
    }
}

fn pin_to(core: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(core, error = %std::io::Error::last_os_error(), "could not pin the shard");
        }
    }
}
