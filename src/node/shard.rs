//! One shard: a thread that owns a store, a listener and its connections, and drives all of
//! them from the store's io_uring. Each turn of the loop is one `Store::poll` (one
//! `io_uring_enter` for disk and network together), then the network completions, then the
//! acknowledgements of durable appends, then the sends they produced.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use chainlog_storage::io::Completion;
use chainlog_storage::{fatal, Ack, Error, Store, StoreConfig, SystemClock, UringIo};

use super::catalog::Catalog;
use super::chain::Chain;
use super::conn::{ack_token, token_conn, Conn};
use super::control::ControlInbox;
use super::metrics::{self, Board, Snapshot};
use super::ops::{self, NetOp, NetToken, GENERATION_MASK, SLOTS_MAX};
use super::protocol::{self, OUTPUT_MAX};

/// Submission queue entries of a shard's ring.
const RING_ENTRIES: u32 = 4096;
/// Period of the replication timer (link reconnects, held logs) of a cluster member.
const REPLICATION_TICK_MS: u32 = 20;
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
    pub(crate) listen: SocketAddr,
    pub(crate) dir: PathBuf,
    pub(crate) store: StoreConfig,
    pub(crate) recv_bytes: usize,
    pub(crate) in_flight_max: usize,
    pub(crate) limits: chainlog_net::Limits,
    pub(crate) node_id: u64,
    pub(crate) core: Option<usize>,
    /// Where the shard publishes its metrics once a second.
    pub(crate) board: Board,
    /// Readable when the node stops.
    pub(crate) stop: OwnedFd,
    /// A cluster member's news from the control thread (`None`: standalone).
    pub(crate) control: Option<ControlInbox>,
}

/// Runs a shard until it is stopped (Ok) or cannot go on (Err). A storage failure ends the
/// process through `fatal` (nothing more may be acknowledged).
pub(crate) fn run(ctx: ShardContext) -> Result<(), String> {
    if let Some(core) = ctx.core {
        pin_to(core);
    }
    let catalog = Catalog::open(&ctx.dir).map_err(|e| e.to_string())?;
    let store_dir = ctx.dir.join("store");
    let io = UringIo::new(RING_ENTRIES).map_err(|e| format!("io_uring: {e}"))?;
    let store = match Store::open(
        io,
        &store_dir,
        ctx.store.clone(),
        Arc::new(SystemClock::new()),
    ) {
        Ok(store) => store,
        Err(Error::Fatal(reason)) => fatal(&reason),
        Err(e) => return Err(format!("opening the store in {}: {e}", store_dir.display())),
    };
    let listener =
        TcpListener::bind(ctx.listen).map_err(|e| format!("listening on {}: {e}", ctx.listen))?;
    tracing::info!(shard = ctx.index, listen = %ctx.listen, durability = ?store.durability(), "shard serving");
    let mut shard = Shard {
        protocol: protocol::Server::new(
            ctx.index,
            ctx.count,
            ctx.node_id,
            ctx.limits,
            catalog,
            &store,
            ctx.control.is_some(),
        ),
        chain: Chain::new(ctx.node_id, ctx.limits, ctx.recv_bytes),
        ctx,
        store,
        listener: Some(listener),
        conns: Vec::new(),
        free: Vec::new(),
        next_generation: 1,
        acks: Vec::new(),
        external: Vec::new(),
        stop_buf: Box::new([0; 8]),
        stopping: false,
        subscribed: Vec::new(),
        tick: Box::new(io_uring::types::Timespec::new().sec(1)),
        replication_tick: Box::new(
            io_uring::types::Timespec::new().nsec(REPLICATION_TICK_MS * 1_000_000),
        ),
        control_buf: Box::new([0; 8]),
        stop_deadline_us: None,
    };
    shard.serve();
    Ok(())
}

struct Shard {
    ctx: ShardContext,
    protocol: protocol::Server,
    store: Store<UringIo>,
    listener: Option<TcpListener>,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    next_generation: u32,
    acks: Vec<Ack>,
    external: Vec<Completion>,
    stop_buf: Box<[u8; 8]>,
    stopping: bool,
    /// Slots of connections with subscriptions, pumped every turn.
    subscribed: Vec<u32>,
    /// The period of the metrics tick (owned here while the kernel reads it).
    tick: Box<io_uring::types::Timespec>,
    /// Replication links and forwarding.
    chain: Chain,
    /// The period of the replication timer, and the control eventfd's read buffer (owned
    /// here while the kernel uses them).
    replication_tick: Box<io_uring::types::Timespec>,
    control_buf: Box<[u8; 8]>,
    /// When a stopping shard gives up on appends still waiting for their chain.
    stop_deadline_us: Option<u64>,
}

impl Shard {
    fn serve(&mut self) {
        let listener = self.listener.as_ref().expect("listener").as_raw_fd();
        ops::accept(self.store.io_mut(), listener);
        ops::wait_event(
            self.store.io_mut(),
            self.ctx.stop.as_raw_fd(),
            &mut self.stop_buf,
            NetOp::Stop,
        );
        ops::timeout(self.store.io_mut(), &self.tick, NetOp::Tick);
        if self.ctx.control.is_some() {
            self.arm_control();
            ops::timeout(self.store.io_mut(), &self.replication_tick, NetOp::Timer);
        }
        loop {
            if let Err(e) = self.store.poll(true, &mut self.acks) {
                fatal(&format!("shard {}: {e}", self.ctx.index));
            }
            self.protocol.start_turn();
            self.store.take_external(&mut self.external);
            for completion in std::mem::take(&mut self.external) {
                self.on_completion(completion);
            }
            for ack in std::mem::take(&mut self.acks) {
                self.on_ack(ack);
            }
            self.flush();
            if self.stopping && self.conns.iter().all(Option::is_none) {
                break;
            }
        }
        self.close_links();
        let mut acks = Vec::new();
        if let Err(e) = self.store.sync_all(&mut acks) {
            fatal(&format!("shard {}: {e}", self.ctx.index));
        }
        tracing::info!(shard = self.ctx.index, "shard stopped");
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
                ops::timeout(self.store.io_mut(), &self.tick, NetOp::Tick);
            }
            NetOp::Timer => {
                // Waking is the point: the end of the turn retries links and held logs.
                ops::timeout(self.store.io_mut(), &self.replication_tick, NetOp::Timer);
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
                        Ok(0) | Err(_) => conn.session.closing = true,
                        Ok(n) => {
                            conn.received(n);
                            self.protocol.metrics.bytes_received += n as u64;
                            self.on_input(slot);
                        }
                    }
                } else {
                    match completion.result {
                        Ok(n) => {
                            let (fd, generation) = (conn.fd(), conn.generation);
                            if let Some(rest) = conn.sent(n) {
                                let t = NetToken {
                                    op: NetOp::Send,
                                    slot: token.slot,
                                    generation,
                                };
                                ops::send(self.store.io_mut(), fd, rest, t);
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
        // SAFETY: a successful accept returns a new descriptor that nobody else owns.
        let accepted = result.map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let Some(listener) = self.listener.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        match accepted {
            Ok(fd) => {
                set_nodelay(&fd);
                let slot = match self.free.pop() {
                    Some(slot) => slot,
                    None if self.conns.len() < SLOTS_MAX => {
                        self.conns.push(None);
                        (self.conns.len() - 1) as u32
                    }
                    None => {
                        tracing::warn!(
                            shard = self.ctx.index,
                            "connection refused: every slot is in use"
                        );
                        ops::accept(self.store.io_mut(), listener);
                        return;
                    }
                };
                let generation = self.next_generation;
                // Tokens carry 24 bits of generation: wrap there (0 is never used).
                self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
                self.next_generation = self.next_generation.max(1);
                self.conns[slot as usize] = Some(Conn::new(fd, generation, self.ctx.recv_bytes));
                self.protocol.metrics.connections_accepted += 1;
                self.arm_recv(slot as usize);
            }
            Err(e) => tracing::warn!(shard = self.ctx.index, error = %e, "accept failed"),
        }
        if !self.stopping {
            ops::accept(self.store.io_mut(), listener);
        }
    }

    /// A completion of a replication link's operation.
    fn on_link(&mut self, token: NetToken, result: std::io::Result<usize>) {
        let now = self.protocol.now_us();
        self.chain
            .on_completion(token, result, &mut self.protocol, &mut self.store, now);
    }

    /// The control thread has a new cluster map: install it.
    fn on_control(&mut self) {
        let Some(control) = &self.ctx.control else {
            return;
        };
        if let Some(update) = control.newest() {
            self.protocol.apply_map(&update.map, &mut self.store);
            self.chain.set_peers(update.peers.clone());
            control
                .applied
                .store(update.map.version(), std::sync::atomic::Ordering::Relaxed);
        }
        self.arm_control();
    }

    /// Reads the control eventfd again (the next news wakes the shard).
    fn arm_control(&mut self) {
        if let Some(control) = &self.ctx.control {
            let fd = control.wake.as_raw_fd();
            ops::wait_event(
                self.store.io_mut(),
                fd,
                &mut self.control_buf,
                NetOp::Control,
            );
        }
    }

    /// After the last connection closed: closes the replication links and waits until the
    /// kernel is done with them (cancelling what lingers: a connect to a host that does not
    /// answer), then gives their pins back; and completes the control eventfd's pending read,
    /// so that no operation of the shard is left in the ring when it is dropped.
    fn close_links(&mut self) {
        self.chain.close_all();
        let mut acks = Vec::new();
        let cancel_at = self.protocol.now_us() + LINKS_CLOSE_WAIT_US;
        let mut cancelled = false;
        while !self.chain.all_idle() {
            if !cancelled && self.protocol.now_us() >= cancel_at {
                self.chain.cancel_busy(&mut self.store);
                cancelled = true;
            }
            if let Err(e) = self.store.poll(true, &mut acks) {
                fatal(&format!("shard {}: {e}", self.ctx.index));
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
        if let Some(control) = &self.ctx.control {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd the shard owns.
            unsafe { libc::write(control.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// SIGTERM: accept nothing more, read nothing more; answer what was received, flush, close.
    fn on_stop(&mut self) {
        self.stopping = true;
        self.stop_deadline_us = Some(self.protocol.now_us() + STOP_WAIT_US);
        if let Some(listener) = self.listener.take() {
            // SAFETY: the listener's descriptor is open; shutting it down completes the
            // pending accept (which then finds `listener` gone and stops).
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
            drop(listener);
        }
        for conn in self.conns.iter_mut().flatten() {
            conn.session.closing = true;
        }
    }

    fn arm_recv(&mut self, slot: usize) {
        let conn = self.conns[slot].as_mut().expect("live connection");
        if conn.recv_in_flight
            || conn.session.closing
            || conn.session.pending.len() >= self.ctx.in_flight_max
            || conn.session.out.len() >= OUTPUT_MAX
        {
            return;
        }
        let token = NetToken {
            op: NetOp::Recv,
            slot: slot as u32,
            generation: conn.generation,
        };
        let fd = conn.fd();
        conn.recv_in_flight = true;
        ops::recv(self.store.io_mut(), fd, conn.recv_space(), token);
    }

    /// Handles every whole frame received on `slot`.
    fn on_input(&mut self, slot: usize) {
        let mut conn = self.conns[slot].take().expect("live connection");
        let token = ack_token(slot as u32, conn.generation);
        let subscribed = !conn.session.subscriptions.is_empty();
        let consumed = self
            .protocol
            .handle_input(&mut conn, &mut self.store, token);
        conn.consume(consumed);
        if !subscribed && !conn.session.subscriptions.is_empty() {
            self.subscribed.push(slot as u32);
        }
        let output_full = conn.session.out.len() >= OUTPUT_MAX;
        if !conn.session.closing && !output_full && conn.recv_space().is_empty() {
            // A frame larger than the buffer can only come from a limit mismatch: refuse it.
            self.protocol.refuse_oversized(&mut conn);
        }
        self.conns[slot] = Some(conn);
        self.arm_recv(slot);
    }

    fn on_ack(&mut self, ack: Ack) {
        self.protocol.on_store_ack(&ack);
        let (slot, generation) = token_conn(ack.token);
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        self.protocol.acknowledge(&mut conn.session, &self.store);
    }

    /// A connection that was paused (no receive in flight: too many unanswered requests, or
    /// too much queued output) handles the frames it has buffered and is read again, once
    /// there is room.
    fn resume(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let paused = !conn.recv_in_flight && !conn.session.closing;
        let room = conn.session.pending.len() < self.ctx.in_flight_max
            && conn.session.out.len() < OUTPUT_MAX;
        if paused && room {
            self.on_input(slot);
        }
    }

    /// Publishes this shard's metrics for `/metrics` (once a second: the lock is taken on the
    /// control path only).
    fn publish(&mut self) {
        let (lagging_logs, lag_records) = Chain::lag(&self.protocol);
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
            connections: self.conns.iter().flatten().count(),
            lagging_logs,
            lag_records,
            origin_ns,
            traces: Vec::new(),
        };
        let mut board = self.ctx.board.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut board[usize::from(self.ctx.index)];
        let kept = slot
            .as_mut()
            .map(|previous| std::mem::take(&mut previous.traces))
            .unwrap_or_default();
        snapshot.keep_traces(kept, done);
        *slot = Some(snapshot);
    }

    /// Pushes to subscriptions, starts sends for connections with output, closes connections
    /// that are done.
    fn flush(&mut self) {
        let now = self.protocol.now_us();
        self.chain
            .pump(&mut self.protocol, &mut self.store, &mut self.conns, now);
        let give_up = self.stop_deadline_us.is_some_and(|d| now >= d);
        let mut i = 0;
        while i < self.subscribed.len() {
            let slot = self.subscribed[i] as usize;
            let active = match self.conns[slot].as_mut() {
                Some(conn) if !conn.session.closing => {
                    self.protocol.pump(&mut conn.session, &mut self.store)
                }
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
                        shard = self.ctx.index,
                        unanswered = conn.session.pending.len(),
                        "stopping: appends still wait for their chain; closing their connection"
                    );
                    conn.session.pending.clear();
                    conn.session.local_next = 0;
                    conn.session.barriers.clear();
                    conn.shutdown();
                }
            }
            let (fd, generation) = (conn.fd(), conn.generation);
            if let Some(bytes) = conn.start_send() {
                let token = NetToken {
                    op: NetOp::Send,
                    slot: slot as u32,
                    generation,
                };
                ops::send(self.store.io_mut(), fd, bytes, token);
            }
            let traced = conn.take_sending_traces();
            if !traced.is_empty() {
                let now = self.protocol.now_us();
                self.protocol.metrics.sent(&traced, now);
            }
            let done = conn.session.closing
                && conn.session.pending.is_empty()
                && conn.session.barriers.is_empty()
                && conn.flushed();
            if done && conn.recv_in_flight {
                conn.shutdown();
            }
            if done && conn.idle() {
                self.conns[slot] = None;
                self.free.push(slot as u32);
            }
        }
    }
}

pub(crate) fn set_nodelay(fd: &OwnedFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a live int of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
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
