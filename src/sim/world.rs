//! The simulated world: one virtual clock, one seeded random generator, an event queue, and a
//! network of TCP-like connections between hosts.
//!
//! **What the network is.** A connection is two ordered byte streams, as TCP gives: bytes of
//! one direction arrive in order, once, or the connection breaks. So the faults are those a
//! TCP user sees: latency (per send, drawn from the link's range, never reordering a stream),
//! slow links (a direction between two hosts takes longer for a while), short sends (the
//! sender sends the rest), partitions (a blocked direction holds its bytes until it heals;
//! connects into a partition time out), resets (both ends fail their operations), processes
//! that die (their kernel resets their connections), machines that lose power (nothing tells
//! their peers: a connection to one stays open until its side sends and the machine, back up,
//! answers with a reset; connects to it time out while it is down) and processes that stop
//! (their kernel still receives, nothing runs). Bytes a process sent before closing its socket
//! are still delivered (the kernel keeps sending them), also when a partition held them until
//! after the close. Duplicated and reordered messages happen where they happen in production:
//! across connections, when a sender reconnects and sends again, or when the bytes of a
//! closed connection arrive after those of its successor.
//!
//! **How it runs.** Everything is an event at a virtual time; the simulator takes the earliest,
//! moves the clock there and applies it. Completions of an endpoint's operations (a shard's
//! environment) wait in its ready queue until the shard's next turn takes them
//! ([`super::env::SimEnv`]). Clients (the workload) are endpoints whose sockets are read for
//! them: arriving bytes land in their inbox.
//!
//! Every event folds into a trace hash, so two runs of one seed can be compared byte for byte.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};

use chainlog_storage::io::Completion;
use chainlog_storage::{Clock, SimClock, SimRng};

use crate::node::env::{RawSlice, Sock};
use crate::node::ops::NetToken;

/// A process's place in the world (its operations complete into its ready queue).
pub(crate) type EndpointId = u32;
/// A machine: its processes share its fate in partitions.
pub(crate) type HostId = u32;

/// How long a connect into a partition waits before it fails (a real SYN retries for about
/// two minutes; the simulation shortens it).
const CONNECT_TIMEOUT_US: u64 = 1_000_000;

/// When a client's connection to a machine that lost power breaks: the simulated clients set
/// TCP keepalive, whose probes find out (a real client's settings, shortened). Nodes do not:
/// their connections to such a machine stay open until they send on them.
const KEEPALIVE_US: u64 = 2_000_000;

/// The network's behaviour, from the run's fault plan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NetConfig {
    /// One-way latency of a send, drawn uniformly from this range (microseconds).
    pub(crate) latency_us: (u64, u64),
    /// A send is short (part of its bytes go, the caller sends the rest) once in this many
    /// (0: never).
    pub(crate) short_send_one_in: u32,
    /// A machine that loses power tells its peers nothing (as in production). Otherwise
    /// its connections reset, as a process's that died.
    pub(crate) silent_power_loss: bool,
}

#[derive(Debug)]
enum SocketState {
    Listening {
        addr: SocketAddr,
        /// Connections accepted by the kernel, not yet by the process.
        backlog: VecDeque<u32>,
        /// Accepts submitted.
        accepts: VecDeque<NetToken>,
    },
    Connecting,
    Connected,
    Closed,
}

#[derive(Debug)]
struct SimSocket {
    endpoint: EndpointId,
    host: HostId,
    state: SocketState,
    peer: Option<u32>,
    /// Bytes arrived and not yet received.
    inbox: VecDeque<u8>,
    /// The peer sent its last byte (a receive with nothing left returns 0).
    fin: bool,
    /// The connection broke: operations fail.
    reset: bool,
    /// A receive in flight: where its bytes go.
    recv: Option<(RawSlice, NetToken)>,
    /// When this socket's last sent bytes arrive (later sends arrive after them).
    last_arrival_us: u64,
    /// A client's socket: arriving bytes stay in `inbox` for the client to take.
    auto_read: bool,
    /// Bytes of this direction held by a partition, in order (delivered when it heals).
    held: VecDeque<Vec<u8>>,
    /// The peer's machine lost power (this host): bytes sent go nowhere until it is back,
    /// and then draw a reset.
    vanished: Option<HostId>,
    /// Bytes were sent since the peer vanished (the kernel retransmits them).
    retransmitting: bool,
}

/// Bytes of a closed socket that a partition held: the kernel delivers them (then the end of
/// the stream) once the partition heals.
#[derive(Debug)]
struct Orphan {
    peer: u32,
    from_host: HostId,
    bytes: VecDeque<Vec<u8>>,
    last_arrival_us: u64,
}

#[derive(Debug)]
enum Event {
    /// Bytes of a connection arrive at socket `to`.
    Arrive { to: u32, bytes: Vec<u8> },
    /// The sending side of `to`'s peer is done (a shutdown or close).
    Fin { to: u32 },
    /// A connect completes: `client` is connected to a new socket queued on `listener`.
    Establish {
        client: u32,
        listener: u32,
        token: NetToken,
    },
    /// A completion for an endpoint.
    Complete {
        endpoint: EndpointId,
        token: NetToken,
        result: Result<usize, i32>,
    },
    /// The connection of `to` broke (its peer died).
    Reset { to: u32 },
    /// A connect of `sock` failed with `errno` (nothing listens there, or a partition).
    ConnectFailed {
        sock: u32,
        token: NetToken,
        errno: i32,
    },
}

/// The world. See the module documentation.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) clock: SimClock,
    pub(crate) rng: SimRng,
    pub(crate) net: NetConfig,
    events: BTreeMap<(u64, u64), Event>,
    next_event: u64,
    sockets: Vec<Option<SimSocket>>,
    listeners: BTreeMap<SocketAddr, u32>,
    /// Completions waiting for their endpoint's next turn.
    ready: BTreeMap<EndpointId, VecDeque<Completion>>,
    /// Operations of each endpoint not completed yet (for its environment's `in_flight`).
    pending: BTreeMap<EndpointId, usize>,
    /// Directions blocked by a partition: (from host, to host).
    blocked: BTreeSet<(HostId, HostId)>,
    /// Slow directions: (from host, to host) -> (until, extra latency), microseconds.
    slow: BTreeMap<(HostId, HostId), (u64, u64)>,
    /// Machines without power.
    down: BTreeSet<HostId>,
    /// The host each listening address was ever on (a connect to a machine that is down
    /// times out instead of being refused).
    hosts: BTreeMap<IpAddr, HostId>,
    orphans: Vec<Orphan>,
    /// Closed connections whose held bytes were delivered after a partition healed.
    pub(crate) late_deliveries: u64,
    trace: u64,
    next_endpoint: EndpointId,
}

impl World {
    pub(crate) fn new(seed: u64, net: NetConfig) -> World {
        World {
            clock: SimClock::default(),
            rng: SimRng::new(seed),
            net,
            events: BTreeMap::new(),
            next_event: 0,
            sockets: Vec::new(),
            listeners: BTreeMap::new(),
            ready: BTreeMap::new(),
            pending: BTreeMap::new(),
            blocked: BTreeSet::new(),
            slow: BTreeMap::new(),
            down: BTreeSet::new(),
            hosts: BTreeMap::new(),
            orphans: Vec::new(),
            late_deliveries: 0,
            trace: 0xcbf2_9ce4_8422_2325,
            next_endpoint: 1,
        }
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.clock.monotonic_us()
    }

    /// Folds `words` into the trace hash (FNV-1a over their bytes).
    pub(crate) fn trace(&mut self, words: &[u64]) {
        for w in words {
            for b in w.to_le_bytes() {
                self.trace ^= u64::from(b);
                self.trace = self.trace.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }

    /// The trace hash so far.
    pub(crate) fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// A new endpoint id (ids are never reused, so completions for a dead process's
    /// endpoint are never taken for a new one's).
    pub(crate) fn endpoint(&mut self) -> EndpointId {
        let id = self.next_endpoint;
        self.next_endpoint += 1;
        id
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        let seq = self.next_event;
        self.next_event += 1;
        self.events.insert((at_us.max(self.now_us()), seq), event);
    }

    /// The time of the earliest event, if any.
    pub(crate) fn next_event_us(&self) -> Option<u64> {
        self.events.keys().next().map(|&(at, _)| at)
    }

    /// Applies every event due at or before now.
    pub(crate) fn run_due(&mut self) {
        loop {
            let Some((&key, _)) = self.events.iter().next() else {
                return;
            };
            if key.0 > self.now_us() {
                return;
            }
            let event = self.events.remove(&key).expect("just seen");
            self.apply(event);
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Arrive { to, bytes } => {
                self.trace(&[1, u64::from(to), bytes.len() as u64]);
                if let Some(sock) = self.sock_mut(to) {
                    if !sock.reset && !matches!(sock.state, SocketState::Closed) {
                        sock.inbox.extend(bytes);
                        self.try_recv(to);
                    }
                }
            }
            Event::Fin { to } => {
                self.trace(&[2, u64::from(to)]);
                if let Some(sock) = self.sock_mut(to) {
                    sock.fin = true;
                    self.try_recv(to);
                }
            }
            Event::Establish {
                client,
                listener,
                token,
            } => self.establish(client, listener, token),
            Event::Complete {
                endpoint,
                token,
                result,
            } => self.complete(endpoint, token, result),
            Event::Reset { to } => self.reset_now(to),
            Event::ConnectFailed { sock, token, errno } => {
                let Some(s) = self.sock_mut(sock) else { return };
                let endpoint = s.endpoint;
                s.state = SocketState::Closed;
                self.complete(endpoint, token, Err(errno));
            }
        }
    }

    fn sock_mut(&mut self, id: u32) -> Option<&mut SimSocket> {
        self.sockets.get_mut(id as usize).and_then(Option::as_mut)
    }

    fn new_socket(&mut self, endpoint: EndpointId, host: HostId, state: SocketState) -> u32 {
        self.sockets.push(Some(SimSocket {
            endpoint,
            host,
            state,
            peer: None,
            inbox: VecDeque::new(),
            fin: false,
            reset: false,
            recv: None,
            last_arrival_us: 0,
            auto_read: false,
            held: VecDeque::new(),
            vanished: None,
            retransmitting: false,
        }));
        (self.sockets.len() - 1) as u32
    }

    /// A completion for `endpoint` now.
    fn complete(&mut self, endpoint: EndpointId, token: NetToken, result: Result<usize, i32>) {
        self.trace(&[
            4,
            u64::from(endpoint),
            token.encode(),
            result.map_or_else(|e| e as u64, |n| n as u64),
        ]);
        if let Some(n) = self.pending.get_mut(&endpoint) {
            *n = n.saturating_sub(1);
        }
        let Some(queue) = self.ready.get_mut(&endpoint) else {
            return; // The process died.
        };
        queue.push_back(Completion {
            token: token.encode(),
            buf: None,
            result: result.map_err(io::Error::from_raw_os_error),
        });
    }

    fn started(&mut self, endpoint: EndpointId) {
        *self.pending.entry(endpoint).or_default() += 1;
    }

    /// Registers a live endpoint (its completions are kept for it).
    pub(crate) fn attach(&mut self, endpoint: EndpointId) {
        self.ready.entry(endpoint).or_default();
    }

    /// Completions ready for `endpoint`.
    pub(crate) fn take_ready(&mut self, endpoint: EndpointId, out: &mut Vec<Completion>) {
        if let Some(queue) = self.ready.get_mut(&endpoint) {
            out.extend(queue.drain(..));
        }
    }

    /// Whether `endpoint` has completions waiting.
    pub(crate) fn has_ready(&self, endpoint: EndpointId) -> bool {
        self.ready.get(&endpoint).is_some_and(|q| !q.is_empty())
    }

    /// Operations of `endpoint` in flight.
    pub(crate) fn in_flight(&self, endpoint: EndpointId) -> usize {
        self.pending.get(&endpoint).copied().unwrap_or(0)
            + self.ready.get(&endpoint).map_or(0, VecDeque::len)
    }

    /// Listens at `addr` for `endpoint` on `host`.
    pub(crate) fn listen(&mut self, endpoint: EndpointId, host: HostId, addr: SocketAddr) -> Sock {
        let id = self.new_socket(
            endpoint,
            host,
            SocketState::Listening {
                addr,
                backlog: VecDeque::new(),
                accepts: VecDeque::new(),
            },
        );
        self.listeners.insert(addr, id);
        self.hosts.insert(addr.ip(), host);
        Sock(id as i32)
    }

    pub(crate) fn accept(&mut self, listener: Sock, token: NetToken) {
        let id = listener.0 as u32;
        let endpoint = self.sock_mut(id).map(|s| s.endpoint);
        let Some(endpoint) = endpoint else { return };
        self.started(endpoint);
        if let Some(SocketState::Listening { accepts, .. }) =
            self.sock_mut(id).map(|s| &mut s.state)
        {
            accepts.push_back(token);
        }
        self.try_accept(id);
    }

    fn try_accept(&mut self, listener: u32) {
        loop {
            let Some(sock) = self.sock_mut(listener) else {
                return;
            };
            let endpoint = sock.endpoint;
            let SocketState::Listening {
                backlog, accepts, ..
            } = &mut sock.state
            else {
                return;
            };
            if backlog.is_empty() || accepts.is_empty() {
                return;
            }
            let conn = backlog.pop_front().expect("checked");
            let token = accepts.pop_front().expect("checked");
            self.complete(endpoint, token, Ok(conn as usize));
        }
    }

    /// Gives an accepted connection's socket to `endpoint` (it was created for the listener's).
    pub(crate) fn accepted(&mut self, n: usize) -> Sock {
        Sock(n as i32)
    }

    /// Connects a new socket of `endpoint` on `host` to `addr`.
    pub(crate) fn connect(
        &mut self,
        endpoint: EndpointId,
        host: HostId,
        addr: SocketAddr,
        token: NetToken,
        auto_read: bool,
    ) -> Sock {
        let id = self.new_socket(endpoint, host, SocketState::Connecting);
        self.sock_mut(id).expect("new").auto_read = auto_read;
        self.started(endpoint);
        let now = self.now_us();
        let latency = self.latency();
        let target = self.listeners.get(&addr).copied().map(|listener| {
            let to_host = self.sockets[listener as usize]
                .as_ref()
                .expect("listening")
                .host;
            (listener, to_host)
        });
        let event = match target {
            Some((_, to_host))
                if self.blocked.contains(&(host, to_host))
                    || self.blocked.contains(&(to_host, host)) =>
            {
                (
                    now + CONNECT_TIMEOUT_US,
                    Event::ConnectFailed {
                        sock: id,
                        token,
                        errno: libc::ETIMEDOUT,
                    },
                )
            }
            Some((listener, _)) => (
                now + 2 * latency,
                Event::Establish {
                    client: id,
                    listener,
                    token,
                },
            ),
            // A machine without power answers nothing: the SYN goes unanswered.
            None if self
                .hosts
                .get(&addr.ip())
                .is_some_and(|h| self.down.contains(h)) =>
            {
                (
                    now + CONNECT_TIMEOUT_US,
                    Event::ConnectFailed {
                        sock: id,
                        token,
                        errno: libc::ETIMEDOUT,
                    },
                )
            }
            None => (
                now + 2 * latency,
                Event::ConnectFailed {
                    sock: id,
                    token,
                    errno: libc::ECONNREFUSED,
                },
            ),
        };
        self.schedule(event.0, event.1);
        Sock(id as i32)
    }

    fn establish(&mut self, client: u32, listener: u32, token: NetToken) {
        self.trace(&[3, u64::from(client), u64::from(listener)]);
        let Some(c) = self.sock_mut(client) else {
            return;
        };
        let client_endpoint = c.endpoint;
        if !matches!(c.state, SocketState::Connecting) || c.reset {
            c.state = SocketState::Closed;
            self.complete(client_endpoint, token, Err(libc::ECONNABORTED));
            return;
        }
        let listening = self
            .sockets
            .get(listener as usize)
            .and_then(Option::as_ref)
            .filter(|l| matches!(l.state, SocketState::Listening { .. }))
            .map(|l| (l.endpoint, l.host));
        let Some((server_endpoint, server_host)) = listening else {
            self.sock_mut(client).expect("checked").state = SocketState::Closed;
            self.complete(client_endpoint, token, Err(libc::ECONNREFUSED));
            return;
        };
        let server = self.new_socket(server_endpoint, server_host, SocketState::Connected);
        self.sock_mut(server).expect("new").peer = Some(client);
        let c = self.sock_mut(client).expect("checked");
        c.peer = Some(server);
        c.state = SocketState::Connected;
        self.complete(client_endpoint, token, Ok(0));
        if let Some(SocketState::Listening { backlog, .. }) =
            self.sock_mut(listener).map(|l| &mut l.state)
        {
            backlog.push_back(server);
        }
        self.try_accept(listener);
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = self.net.latency_us;
        lo + self.rng.below(hi.saturating_sub(lo) + 1)
    }

    /// The latency of a send from `from` to `to` now (a slow link adds to it).
    fn link_latency(&mut self, from: HostId, to: HostId) -> u64 {
        let now = self.now_us();
        let extra = match self.slow.get(&(from, to)) {
            Some(&(until, extra)) if now < until => extra,
            _ => 0,
        };
        self.latency() + extra
    }

    /// Sends `bytes` on `sock` for its endpoint; completes with the bytes taken (maybe fewer:
    /// a short send).
    pub(crate) fn send(&mut self, sock: Sock, bytes: Vec<u8>, token: NetToken) {
        let id = sock.0 as u32;
        let Some(s) = self.sock_mut(id) else { return };
        let (endpoint, broken) = (
            s.endpoint,
            s.reset || !matches!(s.state, SocketState::Connected),
        );
        self.started(endpoint);
        let now = self.now_us();
        if broken {
            self.schedule(
                now + 1,
                Event::Complete {
                    endpoint,
                    token,
                    result: Err(libc::EPIPE),
                },
            );
            return;
        }
        let mut n = bytes.len();
        if n > 1 && self.rng.one_in(self.net.short_send_one_in) {
            n = 1 + self.rng.below(n as u64 - 1) as usize;
        }
        let mut bytes = bytes;
        bytes.truncate(n);
        self.transmit(id, bytes);
        self.schedule(
            now + 1,
            Event::Complete {
                endpoint,
                token,
                result: Ok(n),
            },
        );
    }

    /// Bytes a client sends (whole, no completion).
    pub(crate) fn client_send(&mut self, sock: Sock, bytes: Vec<u8>) {
        let id = sock.0 as u32;
        if self
            .sock_mut(id)
            .is_some_and(|s| !s.reset && matches!(s.state, SocketState::Connected))
        {
            self.transmit(id, bytes);
        }
    }

    /// Puts bytes of `from`'s direction on the wire (or holds them, in a partition).
    fn transmit(&mut self, from: u32, bytes: Vec<u8>) {
        let Some(s) = self.sock_mut(from) else { return };
        let Some(peer) = s.peer else { return };
        let from_host = s.host;
        if let Some(host) = s.vanished {
            // Retransmitted into the void until the machine is back; then it resets.
            s.retransmitting = true;
            if !self.down.contains(&host) {
                self.reset_later(from);
            }
            return;
        }
        let Some(to_host) = self
            .sockets
            .get(peer as usize)
            .and_then(Option::as_ref)
            .map(|p| p.host)
        else {
            return;
        };
        if self.blocked.contains(&(from_host, to_host)) {
            self.sock_mut(from).expect("live").held.push_back(bytes);
            return;
        }
        let last = self.sock_mut(from).expect("live").last_arrival_us;
        let at = self.arrival(from_host, to_host, last);
        self.sock_mut(from).expect("live").last_arrival_us = at;
        self.schedule(at, Event::Arrive { to: peer, bytes });
    }

    /// When bytes sent now from `from` to `to` arrive, after the last ones of their stream.
    fn arrival(&mut self, from: HostId, to: HostId, last_arrival_us: u64) -> u64 {
        let latency = self.link_latency(from, to);
        (last_arrival_us + 1).max(self.now_us() + latency)
    }

    /// Receives on `sock` into `buf` (completes when bytes are there, at the peer's end, or
    /// on a reset).
    pub(crate) fn recv(&mut self, sock: Sock, buf: RawSlice, token: NetToken) {
        let id = sock.0 as u32;
        let Some(s) = self.sock_mut(id) else { return };
        let endpoint = s.endpoint;
        s.recv = Some((buf, token));
        self.started(endpoint);
        self.try_recv(id);
    }

    fn try_recv(&mut self, id: u32) {
        let Some(s) = self.sock_mut(id) else { return };
        if s.auto_read {
            return;
        }
        let endpoint = s.endpoint;
        let result = if s.reset {
            Err(libc::ECONNRESET)
        } else if !s.inbox.is_empty() {
            let Some((buf, _)) = s.recv else { return };
            let n = buf.len.min(s.inbox.len());
            // SAFETY: the receive's buffer stays valid and untouched by its owner until this
            // completion (Net::recv's contract), and `n <= buf.len`.
            let to = unsafe { std::slice::from_raw_parts_mut(buf.ptr as *mut u8, n) };
            let (a, b) = s.inbox.as_slices();
            let from_a = n.min(a.len());
            to[..from_a].copy_from_slice(&a[..from_a]);
            to[from_a..].copy_from_slice(&b[..n - from_a]);
            s.inbox.drain(..n);
            Ok(n)
        } else if s.fin || matches!(s.state, SocketState::Closed) {
            Ok(0)
        } else {
            return;
        };
        let Some((_, token)) = s.recv.take() else {
            return;
        };
        self.complete(endpoint, token, result);
    }

    /// Moves a client's received bytes to `out`; returns whether its connection ended.
    pub(crate) fn client_take(&mut self, sock: Sock, out: &mut Vec<u8>) -> bool {
        match self.sock_mut(sock.0 as u32) {
            Some(s) => {
                let (a, b) = s.inbox.as_slices();
                out.extend_from_slice(a);
                out.extend_from_slice(b);
                s.inbox.clear();
                s.reset || s.fin
            }
            None => true,
        }
    }

    /// Whether a client's connect is done: `Some(true)` connected, `Some(false)` failed.
    pub(crate) fn client_connected(&self, sock: Sock) -> Option<bool> {
        let s = self.sockets.get(sock.0 as usize).and_then(Option::as_ref)?;
        match s.state {
            SocketState::Connected if !s.reset => Some(true),
            SocketState::Connecting => None,
            _ => Some(false),
        }
    }

    /// Ends both directions of `sock`: its receive completes, its peer sees the end.
    pub(crate) fn shutdown(&mut self, sock: Sock) {
        let id = sock.0 as u32;
        let Some(s) = self.sock_mut(id) else { return };
        if let SocketState::Listening { accepts, addr, .. } = &mut s.state {
            let endpoint = s.endpoint;
            let tokens: Vec<NetToken> = accepts.drain(..).collect();
            let addr = *addr;
            s.state = SocketState::Closed;
            self.listeners.remove(&addr);
            for token in tokens {
                self.complete(endpoint, token, Err(libc::EINVAL));
            }
            return;
        }
        let peer = s.peer;
        s.fin = true;
        let was_closed = matches!(s.state, SocketState::Closed);
        s.state = SocketState::Closed;
        self.try_recv(id);
        if !was_closed {
            if let Some(peer) = peer {
                self.send_fin(id, peer);
            }
        }
    }

    fn send_fin(&mut self, from: u32, peer: u32) {
        let latency = self.latency();
        let Some(s) = self.sock_mut(from) else { return };
        if !s.held.is_empty() {
            return; // It follows the held bytes when the partition heals.
        }
        let at = (s.last_arrival_us + 1).max(self.clock.monotonic_us() + latency);
        self.schedule(at, Event::Fin { to: peer });
    }

    /// Cancels `sock`'s receive.
    pub(crate) fn cancel(&mut self, sock: Sock) {
        let Some(s) = self.sock_mut(sock.0 as u32) else {
            return;
        };
        let endpoint = s.endpoint;
        if let Some((_, token)) = s.recv.take() {
            self.complete(endpoint, token, Err(libc::ECANCELED));
        }
    }

    /// Closes `sock` (its peer sees the end of the stream, after any bytes a partition holds:
    /// the kernel still delivers them).
    pub(crate) fn close(&mut self, sock: Sock) {
        let id = sock.0 as u32;
        let Some(s) = self.sockets.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        let peer = s.peer;
        let closed = matches!(s.state, SocketState::Closed);
        if let SocketState::Listening { addr, .. } = s.state {
            self.listeners.remove(&addr);
        }
        if let (Some(peer), false) = (peer, s.held.is_empty() || s.reset) {
            self.orphans.push(Orphan {
                peer,
                from_host: s.host,
                bytes: s.held,
                last_arrival_us: s.last_arrival_us,
            });
        } else if !closed {
            if let Some(peer) = peer {
                let at = (s.last_arrival_us + 1).max(self.now_us() + self.latency());
                self.schedule(at, Event::Fin { to: peer });
            }
        }
    }

    /// Completes once `after_us` from now.
    pub(crate) fn timeout(&mut self, endpoint: EndpointId, after_us: u64, token: NetToken) {
        self.started(endpoint);
        let at = self.now_us() + after_us;
        self.schedule(
            at,
            Event::Complete {
                endpoint,
                token,
                result: Ok(0),
            },
        );
    }

    /// A process dies: its endpoint's completions are dropped, its sockets reset (the peers
    /// see it after a latency; unless its machine lost power, `power_loss`, and the network is
    /// configured with silent power losses: then nothing tells them, but a client's keepalive
    /// finds out), its listeners vanish.
    pub(crate) fn kill(&mut self, endpoints: &[EndpointId], power_loss: Option<HostId>) {
        let silent = power_loss.filter(|_| self.net.silent_power_loss);
        for &e in endpoints {
            self.ready.remove(&e);
            self.pending.remove(&e);
        }
        let dead: Vec<u32> = self
            .sockets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| endpoints.contains(&s.endpoint))
                    .map(|_| i as u32)
            })
            .collect();
        for id in dead {
            let s = self.sockets[id as usize].take().expect("listed");
            if let SocketState::Listening { addr, .. } = s.state {
                self.listeners.remove(&addr);
            }
            match (s.peer, silent) {
                (Some(peer), Some(host)) => {
                    let now = self.now_us();
                    let mut keepalive = false;
                    if let Some(p) = self.sock_mut(peer) {
                        p.vanished = Some(host);
                        // Bytes still on their way are unacknowledged: the kernel resends them.
                        p.retransmitting = p.last_arrival_us > now || !p.held.is_empty();
                        keepalive = p.auto_read;
                    }
                    if keepalive {
                        self.schedule(now + KEEPALIVE_US, Event::Reset { to: peer });
                    }
                }
                (Some(peer), None) => self.reset_later(peer),
                (None, _) => {}
            }
        }
    }

    /// A machine loses power: until [`host_up`](Self::host_up), connects to it time out.
    pub(crate) fn host_down(&mut self, host: HostId) {
        self.trace(&[9, u64::from(host)]);
        self.down.insert(host);
    }

    /// A machine is back: connections whose side kept retransmitting to it get its reset.
    pub(crate) fn host_up(&mut self, host: HostId) {
        if !self.down.remove(&host) {
            return;
        }
        self.trace(&[10, u64::from(host)]);
        let retransmitting: Vec<u32> = self
            .sockets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| s.vanished == Some(host) && s.retransmitting)
                    .map(|_| i as u32)
            })
            .collect();
        for id in retransmitting {
            self.reset_later(id);
        }
    }

    /// The direction `from` → `to` takes `extra_us` longer until `until_us`.
    pub(crate) fn slow_down(&mut self, from: HostId, to: HostId, until_us: u64, extra_us: u64) {
        self.trace(&[11, u64::from(from), u64::from(to), until_us, extra_us]);
        self.slow.insert((from, to), (until_us, extra_us));
    }

    /// Every link at its normal speed again.
    pub(crate) fn speed_up(&mut self) {
        self.slow.clear();
    }

    /// Resets the connection `sock` is an end of (a fault): both ends fail.
    pub(crate) fn reset_connection(&mut self, sock: u32) {
        let peer = self.sock_mut(sock).and_then(|s| s.peer);
        self.reset_now(sock);
        if let Some(peer) = peer {
            self.reset_now(peer);
        }
    }

    fn reset_later(&mut self, id: u32) {
        let latency = self.latency();
        let at = self.now_us() + latency;
        self.schedule(at, Event::Reset { to: id });
    }

    fn reset_now(&mut self, id: u32) {
        self.trace(&[6, u64::from(id)]);
        let Some(s) = self.sock_mut(id) else { return };
        s.reset = true;
        s.held.clear();
        self.try_recv(id);
    }

    /// Connected sockets (for picking one to reset).
    pub(crate) fn connections(&self) -> Vec<u32> {
        self.sockets
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| matches!(s.state, SocketState::Connected) && !s.reset)
                    .map(|_| i as u32)
            })
            .collect()
    }

    /// Blocks the direction `from` → `to`.
    pub(crate) fn block(&mut self, from: HostId, to: HostId) {
        self.trace(&[7, u64::from(from), u64::from(to)]);
        self.blocked.insert((from, to));
    }

    /// Whether `a` and `b` hear each other (no partition either way, both machines up).
    pub(crate) fn reachable(&self, a: HostId, b: HostId) -> bool {
        !self.blocked.contains(&(a, b))
            && !self.blocked.contains(&(b, a))
            && !self.down.contains(&a)
            && !self.down.contains(&b)
    }

    /// Heals every partition: held bytes go, in order (a closed socket's too, then the end
    /// of its stream).
    pub(crate) fn heal(&mut self) {
        self.trace(&[8]);
        self.blocked.clear();
        for id in 0..self.sockets.len() as u32 {
            let (held, closed, peer) = match self.sock_mut(id) {
                Some(s) => (
                    s.held.drain(..).collect::<Vec<_>>(),
                    matches!(s.state, SocketState::Closed),
                    s.peer,
                ),
                None => continue,
            };
            let had = !held.is_empty();
            for bytes in held {
                self.transmit(id, bytes);
            }
            if let (true, true, Some(peer)) = (had, closed, peer) {
                self.send_fin(id, peer); // Shut down while held: the end follows the bytes.
            }
        }
        for mut orphan in std::mem::take(&mut self.orphans) {
            let Some(to_host) = self
                .sockets
                .get(orphan.peer as usize)
                .and_then(Option::as_ref)
                .map(|p| p.host)
            else {
                continue; // The peer is gone too: its kernel answers with a reset.
            };
            self.trace(&[12, u64::from(orphan.peer)]);
            self.late_deliveries += 1;
            for bytes in orphan.bytes.drain(..) {
                let at = self.arrival(orphan.from_host, to_host, orphan.last_arrival_us);
                orphan.last_arrival_us = at;
                self.schedule(
                    at,
                    Event::Arrive {
                        to: orphan.peer,
                        bytes,
                    },
                );
            }
            let at = self.arrival(orphan.from_host, to_host, orphan.last_arrival_us);
            self.schedule(at, Event::Fin { to: orphan.peer });
        }
    }
}
