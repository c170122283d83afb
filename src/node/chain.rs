//! The shard's side of chain replication: its links to successors, what goes out on them,
//! and what their answers mean for each log's [`Replica`] (the state machine of
//! `crate::replication`).
//!
//! - **Forwarding**: records stored by an APPEND (at the head) or a REPLICATE (further down)
//!   while the log's link is in sync are sent at once, pinned in the store's frame buffer:
//!   the frame head is encoded, the records follow from the buffer that goes to disk.
//! - **Catching up**: a successor that is behind (after a reconnect, a GAP, an OVERLOADED)
//!   gets the records it lacks read from this node's store, a bounded batch per read, as
//!   runs that carry the idempotency keys and fencing raises stored with them. A read of
//!   records on disk only does not block the shard ([`super::reads`]): the log waits for it
//!   (one at a time), and what it returns is sent only if the log still catches up from
//!   there on the same link in the same epoch.
//! - **Pulling back**: a restarted node whose successor holds records it lost takes them
//!   back with PULLs, one run per answer, stored as a replica stores a REPLICATE, before its
//!   link is in sync (and, at the head, before it sequences anything).
//! - **Answers** flow back to the predecessor on the connection its REPLICATEs came from;
//!   trims, barriers and the committed LSN go down when they change.
//! - **Backpressure**: a link with more than [`LINK_UNACKED_BYTES_MAX`] of records sent and
//!   not answered makes appends to its logs OVERLOADED; a successor that refuses (OVERLOADED,
//!   or a log it does not have yet) makes this node hold that log's traffic for a while.
//!
//! Links are keyed by (successor node, its shard): the logs of one shard that share a
//! successor shard share a connection. Request ids are unique per shard for its whole life, so
//! a late answer to a closed link's request can never be taken for another's.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use chainlog_net::{
    decode_response, encode_replicate_head, encode_request, parse_frame, ErrorCode, HelloRequest,
    Keys, Limits, PeerRequest, PullRequest, Records, ReplicateHeader, ReplicateKind,
    ReplicateRequest, Request, Response, Role, KEY_BYTES, PROTOCOL_VERSION,
};
use chainlog_storage::{Error, ReadKind, ReadOutput, ReadRequest, Store, StoredRun, WriterKey};

use super::conn::{conn_of, Conn};
use super::env::Net;
use super::learners::{store_learned, Learned, Stored};
use super::link::{Link, LinkState, Sent, BACKOFF_MIN_MS};
use super::metrics::ShardMetrics;
use super::ops::{NetOp, NetToken, GENERATION_MASK};
use super::reads::{Owner, Reads, Started};
use super::records::{encode_run, replica_state};
use super::replicas::{encode_answers, keys_below, Forward, Replicas, UNANSWERED};
use crate::controller::reconfig::LEARNER_LAG_CLOSE;
use crate::replication::{NodeId, Replica, Reply, Send};

/// Record bytes a link may have sent and not had answered; beyond, appends to its logs get
/// OVERLOADED (and a middle node refuses REPLICATEs of those logs the same way).
pub(crate) const LINK_UNACKED_BYTES_MAX: usize = 32 << 20;
/// Record bytes one catch-up REPLICATE carries at most.
const CATCH_UP_BYTES_MAX: usize = 1 << 20;
/// How long a log's traffic waits at most after its successor refused it for a reason other
/// than OVERLOADED (which names its own wait), e.g. a log or an epoch it does not have yet.
const HOLD_MS: u64 = 100;
/// The first such wait; each refusal in a row doubles it up to [`HOLD_MS`]. After a
/// reconfiguration the members of the new chain install its map a few milliseconds apart,
/// so the predecessor that asks first is refused once and should ask again soon: a flat
/// 100 ms wait there was most of the log's unavailability.
const HOLD_MIN_MS: u64 = 1;
/// A refusal this long after the previous one of the same log starts again at
/// [`HOLD_MIN_MS`].
const HOLD_RESET_US: u64 = 1_000_000;

/// A node of the cluster, as the shard needs it: where its shard 0 listens, how many shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) shards: u16,
}

/// The shard of a node of `shards` shards that holds `log_id`.
pub(super) fn log_shard(log_id: u64, shards: u16) -> u16 {
    // The remainder is below `shards`, a u16.
    (log_id % u64::from(shards.max(1))) as u16
}

/// Whether `replica` (of `log_id`) forwards to shard `shard` of `peer`, a node of `shards`.
fn forwards_to(log_id: u64, replica: &Replica, peer: NodeId, shard: u16, shards: u16) -> bool {
    replica.successor() == Some(peer) && log_shard(log_id, shards) == shard
}

impl Peer {
    /// The shard that holds `log_id` on this peer, and its address.
    fn shard_addr(&self, log_id: u64) -> (u16, SocketAddr) {
        let shard = log_shard(log_id, self.shards);
        (shard, self.addr_of(shard))
    }

    /// The address of shard `shard`.
    fn addr_of(&self, shard: u16) -> SocketAddr {
        let mut addr = self.addr;
        addr.set_port(addr.port().wrapping_add(shard));
        addr
    }
}

/// The shard's replication links and what it knows of the other nodes.
#[derive(Debug)]
pub(crate) struct Chain {
    me: NodeId,
    limits: Limits,
    recv_bytes: usize,
    peers: HashMap<NodeId, Peer>,
    links: Vec<Option<Link>>,
    by_peer: HashMap<(NodeId, u16), u32>,
    next_request: u64,
    next_generation: u32,
    /// Logs whose traffic to the successor waits until the time given (µs).
    hold: HashMap<u64, u64>,
    /// The last refusal's wait (ms) of each log whose successor refused it, and when (µs).
    refusals: HashMap<u64, (u64, u64)>,
    /// Logs to look at in the next turn (catching up, held, probing).
    again: HashSet<u64>,
    /// Reused buffers of a turn (the loop allocates nothing once warm).
    turn_logs: Vec<u64>,
    answers: Vec<crate::replication::Answer>,
    sends: Vec<Send>,
    /// Nodes whose link from this shard failed since the shard last took them.
    suspects: Vec<NodeId>,
}

impl Chain {
    pub(crate) fn new(me: NodeId, limits: Limits, recv_bytes: usize) -> Chain {
        Chain {
            me,
            limits,
            recv_bytes,
            peers: HashMap::new(),
            links: Vec::new(),
            by_peer: HashMap::new(),
            next_request: 1,
            next_generation: 1,
            hold: HashMap::new(),
            refusals: HashMap::new(),
            again: HashSet::new(),
            turn_logs: Vec::new(),
            answers: Vec::new(),
            sends: Vec::new(),
            suspects: Vec::new(),
        }
    }

    /// The nodes whose link from this shard failed (closed, or could not connect) since the
    /// last call: the shard names them to the controller, which then checks at once whether
    /// they still heartbeat.
    pub(crate) fn take_suspects(&mut self) -> std::vec::Drain<'_, NodeId> {
        self.suspects.drain(..)
    }

    /// The cluster's nodes changed (a new map). Links to shards whose address moved (a node
    /// restarted elsewhere, or left the map) are retired: closed, and replaced by a new link
    /// to the new address when a log needs one.
    pub(crate) fn set_peers(&mut self, peers: HashMap<NodeId, Peer>) {
        for link in self.links.iter_mut().flatten() {
            let moved = peers
                .get(&link.peer)
                .is_none_or(|p| link.shard >= p.shards || p.addr_of(link.shard) != link.addr);
            if moved && !link.retired {
                // Closed at the end of the turn (drive_link), then replaced by a new link to
                // the new address when a log needs one.
                link.retired = true;
                self.by_peer.remove(&(link.peer, link.shard));
            }
        }
        self.peers = peers;
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// The link that carries `log_id` to `successor`, created (idle) if there is none.
    fn link_for(&mut self, log_id: u64, successor: NodeId) -> Option<u32> {
        let peer = *self.peers.get(&successor)?;
        let (shard, addr) = peer.shard_addr(log_id);
        if let Some(&slot) = self.by_peer.get(&(successor, shard)) {
            return Some(slot);
        }
        let generation = self.next_generation;
        self.next_generation = ((self.next_generation + 1) & GENERATION_MASK).max(1);
        let link = Link::new(successor, shard, addr, generation, self.recv_bytes);
        let slot = match self.links.iter().position(Option::is_none) {
            Some(free) => {
                self.links[free] = Some(link);
                free
            }
            None => {
                self.links.push(Some(link));
                self.links.len() - 1
            }
        } as u32;
        self.by_peer.insert((successor, shard), slot);
        Some(slot)
    }

    /// The up link of a log, if it has one.
    fn up_link(&mut self, replicas: &Replicas, log_id: u64) -> Option<u32> {
        let successor = replicas.get(log_id)?.successor()?;
        let slot = self.link_for(log_id, successor)?;
        let link = self.links[slot as usize].as_ref()?;
        (link.state == LinkState::Up).then_some(slot)
    }

    /// Queues a forward of records pinned in the store on the log's link (or gives the pin
    /// back if the link went away meanwhile: the records go by catch-up).
    fn forward<E: Net>(
        &mut self,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        f: Forward,
    ) {
        let Some(slot) = self.up_link(replicas, f.log_id) else {
            store.unpin(f.pin);
            return;
        };
        let replica = replicas.get_mut(f.log_id).expect("forwarded log");
        let committed = replica.committed_for_forward(f.end);
        let header = ReplicateHeader {
            fencing_token: f.fencing_token,
            writer_id: f.writer.0,
            writer_seq: f.writer.1,
            ..ReplicateHeader::new(
                ReplicateKind::Records,
                f.log_id,
                f.epoch,
                f.first,
                committed,
            )
        };
        let request_id = self.request_id();
        let count = (f.end - f.first) as u32;
        let mut head = Vec::with_capacity(128);
        encode_replicate_head(&mut head, request_id, &header, count, store.pinned(&f.pin));
        let bytes = f.pin.len();
        let link = self.links[slot as usize].as_mut().expect("up link");
        link.push_bytes(head);
        link.push_pinned(f.pin);
        link.unacked_bytes += bytes;
        link.requests.insert(
            request_id,
            Sent::Records {
                log_id: f.log_id,
                first: f.first,
                bytes,
            },
        );
        metrics.forwards += 1;
    }

    /// Queues a REPLICATE of `kind` without records (a trim carries the log's fencing token
    /// `fence`, for a successor that skips to the trim point, and then `keys`, the
    /// idempotency keys of the batches below it).
    fn send_control(
        &mut self,
        replicas: &Replicas,
        log_id: u64,
        slot: u32,
        send: Send,
        (fence, keys): (u64, &[WriterKey]),
    ) {
        let replica = replicas.get(log_id).expect("a log of this shard");
        let (kind, sent) = match send {
            Send::Trim { .. } => (ReplicateKind::Trim, Some(Sent::Trim { log_id })),
            Send::Barrier { covers } => (
                ReplicateKind::Barrier,
                Some(Sent::Barrier { log_id, covers }),
            ),
            Send::Commit { .. } => (ReplicateKind::Commit, None),
        };
        let committed = match send {
            Send::Commit { committed } => committed,
            _ => replica.committed(),
        };
        let mut header =
            ReplicateHeader::new(kind, log_id, replica.epoch(), replica.next_lsn(), committed);
        if let Send::Trim { before, .. } = send {
            header.trim_before = before;
            header.fencing_token = fence;
        }
        let request_id = self.request_id();
        let mut key_bytes = Vec::new();
        let request = Request::Replicate(ReplicateRequest {
            header,
            records: Records::EMPTY,
            keys: Keys::encode(&mut key_bytes, keys),
        });
        let mut out = Vec::with_capacity(128 + keys.len() * KEY_BYTES);
        encode_request(&mut out, request_id, &request);
        let link = self.links[slot as usize].as_mut().expect("up link");
        link.push_bytes(out);
        if let Some(sent) = sent {
            link.requests.insert(request_id, sent);
        }
    }

    /// Reads the records the successor lacks from the store (one read per log at a time,
    /// within the link's budget) and sends them ([`send_runs`](Self::send_runs)) at once if
    /// they were in memory; a read that waits for the disk sends them when it completes
    /// ([`on_read`](Self::on_read)). Returns whether to look at the log again next turn.
    fn catch_up<E: Net>(
        &mut self,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        reads: &mut Reads,
        log_id: u64,
        slot: u32,
    ) -> bool {
        let replica = replicas.get(log_id).expect("a log of this shard");
        let Some(from) = replica.catch_up_from() else {
            return false;
        };
        if reads.catching_up(log_id) {
            return false; // Its completion looks at the log again.
        }
        let link = self.links[slot as usize].as_ref().expect("up link");
        if link.unacked_bytes >= LINK_UNACKED_BYTES_MAX {
            return true;
        }
        let epoch = replica.epoch();
        let max = (replica.next_lsn() - from).min(u64::from(self.limits.batch_records_max));
        // Whole batches fit (one APPEND's worth), so keyed batches come back whole.
        let request = ReadRequest {
            log_id,
            from,
            max_records: max as usize,
            max_bytes: self.limits.frame_bytes_max as usize,
            kind: ReadKind::StoredRuns,
        };
        let owner = Owner::CatchUp {
            log_id,
            from,
            epoch,
            slot,
            generation: link.generation,
        };
        match reads.start(store, request, owner) {
            Ok(Started::Now(ReadOutput::Runs(runs))) => {
                self.send_runs(replicas, metrics, log_id, slot, epoch, &runs)
            }
            Ok(Started::Now(ReadOutput::Records(_))) => unreachable!("a read of runs"),
            Ok(Started::Waiting(_)) => {
                metrics.catch_up_disk_reads += 1;
                false
            }
            Err(Error::Overloaded) => true, // Every read slot waits: one completes first.
            Err(e) => {
                tracing::warn!(log_id, from, error = %e, "cannot read records to catch a successor up");
                true
            }
        }
    }

    /// A catch-up read that waited for the disk finished: its records go to the successor if
    /// the log still catches up from where it read, in the same epoch, on the same link (a
    /// link that went down, a new epoch, a trim or a refusal that moved the position drop
    /// them; the log reads again from where it is). A read that a trim passed fails with
    /// `Trimmed`: the trim moved the position to the trim point, read next.
    pub(crate) fn on_read(
        &mut self,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        owner: Owner,
        result: chainlog_storage::Result<ReadOutput>,
    ) {
        let Owner::CatchUp {
            log_id,
            from,
            epoch,
            slot,
            generation,
        } = owner
        else {
            unreachable!("a catch-up read");
        };
        self.again.insert(log_id);
        let link_same = self
            .links
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|l| l.generation == generation && l.state == LinkState::Up && !l.retired);
        let replica_same = replicas
            .get(log_id)
            .is_some_and(|r| r.epoch() == epoch && r.catch_up_from() == Some(from));
        if !(link_same && replica_same) {
            tracing::debug!(
                log_id,
                from,
                "a catch-up read outlived its position; dropped"
            );
            return;
        }
        match result {
            Ok(ReadOutput::Runs(runs)) => {
                self.send_runs(replicas, metrics, log_id, slot, epoch, &runs);
            }
            Ok(ReadOutput::Records(_)) => unreachable!("a read of runs"),
            Err(e) => {
                tracing::warn!(log_id, from, error = %e, "cannot read records to catch a successor up");
            }
        }
    }

    /// Sends `runs` (read from the log's catch-up position) to the successor, a REPLICATE per
    /// run so that each carries the key and fencing raise stored with it, at most
    /// [`CATCH_UP_BYTES_MAX`] of records. Returns whether the log has more to catch up.
    fn send_runs(
        &mut self,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        log_id: u64,
        slot: u32,
        epoch: u64,
        runs: &[StoredRun],
    ) -> bool {
        if runs.is_empty() {
            return true;
        }
        let mut sent_bytes = 0;
        for run in runs {
            if sent_bytes >= CATCH_UP_BYTES_MAX {
                break;
            }
            let mut body = Vec::new();
            let (count, state) =
                encode_run(&mut body, log_id, run, self.limits.records_bytes_max());
            let first = run.first_lsn();
            let end = first + u64::from(count);
            let replica = replicas.get_mut(log_id).expect("checked");
            let committed = replica.committed_for_forward(end);
            let (writer_id, writer_seq) = state.writer.unwrap_or((0, 0));
            let header = ReplicateHeader {
                fencing_token: state.fencing_token.unwrap_or(0),
                writer_id,
                writer_seq,
                ..ReplicateHeader::new(ReplicateKind::Records, log_id, epoch, first, committed)
            };
            let request_id = self.request_id();
            let mut out = Vec::with_capacity(128 + body.len());
            encode_replicate_head(&mut out, request_id, &header, count, &body);
            let bytes = body.len();
            out.extend_from_slice(&body);
            let link = self.links[slot as usize].as_mut().expect("up link");
            link.push_bytes(out);
            link.unacked_bytes += bytes;
            link.requests.insert(
                request_id,
                Sent::Records {
                    log_id,
                    first,
                    bytes,
                },
            );
            replica.caught_up(first, end);
            metrics.catch_up_records += u64::from(count);
            sent_bytes += bytes;
            if (count as usize) < run.records.len() {
                break; // The rest of the run goes next turn.
            }
        }
        replicas
            .get(log_id)
            .is_some_and(|r| r.catch_up_from().is_some())
    }

    /// Asks the successor for the records it holds beyond this node, if the log is pulling
    /// them back (one PULL outstanding per log).
    fn pull(&mut self, replicas: &mut Replicas, log_id: u64, slot: u32) {
        let replica = replicas.get_mut(log_id).expect("checked");
        let Some(from) = replica.pull_from() else {
            return;
        };
        let epoch = replica.epoch();
        self.send_pull(slot, log_id, epoch, from, false);
    }

    /// Queues a PULL of `log_id` in `epoch` from `from` on the link in `slot`: a replica's
    /// taking back what it lost, or (`learner`) a learner's copy.
    fn send_pull(&mut self, slot: u32, log_id: u64, epoch: u64, from: u64, learner: bool) {
        let request = PullRequest {
            log_id,
            epoch,
            from_lsn: from,
            max_records: self.limits.batch_records_max,
            learner,
        };
        let request_id = self.request_id();
        let mut out = Vec::with_capacity(64);
        encode_request(&mut out, request_id, &Request::Pull(request));
        let link = self.links[slot as usize].as_mut().expect("up link");
        link.push_bytes(out);
        let sent = if learner {
            Sent::Learn { log_id, from }
        } else {
            Sent::Pull {
                log_id,
                from,
                epoch,
            }
        };
        link.requests.insert(request_id, sent);
    }

    /// The successor answered a PULL: store what it sent (the records this node lost), as a
    /// replica stores a REPLICATE, with the keys and fencing raise that came with them.
    fn on_pulled<E: Net>(
        &mut self,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        slot: u32,
        pulled: Pulled,
        asked_in: u64,
    ) {
        let Some(replica) = replicas.get(pulled.log_id) else {
            return;
        };
        let log_id = pulled.log_id;
        if replica.epoch() != asked_in || !replica.awaits_pull() {
            // Asked for by the replica of an earlier epoch here (sealed and replaced while the
            // PULL was out), or before the link was probed again: this replica did not ask.
            tracing::debug!(
                log_id,
                first = pulled.first,
                asked_in,
                "a PULL answer nobody waits for; not stored"
            );
            return;
        }
        let here = replica.next_lsn();
        let count = pulled.count as u64;
        let end = pulled.first + count;
        let mut stored_end = here;
        if replica.sealed().is_some() {
            // Sealed while the PULL was out: the epoch stores nothing more here.
            tracing::debug!(
                log_id,
                first = pulled.first,
                "a PULL answered after the seal; not stored"
            );
        } else if pulled.first == here && count > 0 {
            let state = replica_state(pulled.fencing_token, pulled.writer);
            match store.append_replica(
                log_id,
                pulled.epoch,
                pulled.first,
                &pulled.records,
                pulled.count,
                &state,
                false,
                UNANSWERED,
            ) {
                Ok(_) => stored_end = end,
                Err(e) => {
                    // Overloaded, or damaged records: ask again later.
                    tracing::warn!(log_id, first = pulled.first, error = %e, "could not store pulled records");
                }
            }
        } else if count > 0 {
            tracing::warn!(
                log_id,
                first = pulled.first,
                here,
                "a PULL answer that does not start here; asking again"
            );
        }
        let replica = replicas.get_mut(log_id).expect("checked");
        metrics.pulled_records += stored_end - here;
        if let Some(probe) = replica.pulled(here, stored_end, pulled.next) {
            self.send_control(replicas, log_id, slot, probe, (0, &[]));
        }
        replicas.mark(log_id);
        self.again.insert(log_id);
    }

    /// Sends a learner PULL for each log this shard learns that may ask its source now
    /// (one PULL out per log; the next goes when it is answered).
    fn learn<E: Net>(&mut self, replicas: &mut Replicas, store: &Store<E>, now_us: u64) {
        if replicas.learners.is_empty() {
            return; // Every turn comes here: nothing to allocate for a shard that learns nothing.
        }
        for (log_id, source, epoch) in replicas.learners.due(now_us) {
            let Some(slot) = self.link_for(log_id, source) else {
                // The source is not in the map (yet).
                replicas.learners.held(log_id, now_us);
                continue;
            };
            if self.links[slot as usize].as_ref().map(|l| l.state) != Some(LinkState::Up) {
                continue; // Asked when the link is up (the timer's turns look again).
            }
            let from = store.tail(log_id).map_or(0, |t| t.next_lsn);
            self.send_pull(slot, log_id, epoch, from, true);
            replicas.learners.sent(log_id);
        }
    }

    /// A run of the answer to a learner's PULL (from `asked`) arrived: the records go to the
    /// store; once the answer is whole (`more` false), the next PULL goes at once if the
    /// source may hold more, else after a pause. An answer to a PULL of a copy deleted since
    /// changes nothing: the PULL of the copy that replaced it is out.
    fn on_learned<E: Net>(
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        pulled: &Pulled,
        asked: u64,
        more: bool,
        now_us: u64,
    ) {
        let log_id = pulled.log_id;
        if replicas.learners.get(log_id).is_none() {
            return; // No longer learned here.
        }
        let learned = Learned {
            log_id,
            epoch: pulled.epoch,
            asked,
            first: pulled.first,
            fencing_token: pulled.fencing_token,
            writer: pulled.writer,
            count: pulled.count,
            records: &pulled.records,
            keys: &pulled.keys,
        };
        match store_learned(store, &learned) {
            Ok(None) => {}
            Ok(Some(Stored { records, again })) => {
                metrics.learned_records += records;
                if !more {
                    replicas.learners.answered(log_id, again, now_us);
                    // Close enough to its source to be promoted: the map that makes this
                    // node the log's tail comes soon, and the chain waits for it.
                    let here = store.tail(log_id).map_or(0, |t| t.next_lsn);
                    if pulled.next.saturating_sub(here) <= LEARNER_LAG_CLOSE {
                        replicas.expect_map(false);
                    }
                }
            }
            Err(e) => {
                // Overloaded, or damaged records: ask again later.
                tracing::warn!(log_id, first = pulled.first, error = %e, "could not store learned records");
                replicas.learners.held(log_id, now_us);
            }
        }
    }

    /// The end of a loop turn: forwards what was stored, answers predecessors, sends what
    /// changed, catches successors up, connects links and starts their sends.
    pub(crate) fn pump<E: Net>(
        &mut self,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        reads: &mut Reads,
        conns: &mut [Option<Conn>],
        now_us: u64,
    ) {
        for f in replicas.take_forwards() {
            self.forward(replicas, metrics, store, f);
        }
        let mut logs = std::mem::take(&mut self.turn_logs);
        replicas.take_touched(&mut logs);
        logs.extend(self.again.drain());
        logs.sort_unstable();
        logs.dedup();
        let mut answers = std::mem::take(&mut self.answers);
        let mut sends = std::mem::take(&mut self.sends);
        for &log_id in &logs {
            let Some(replica) = replicas.get_mut(log_id) else {
                self.hold.remove(&log_id);
                self.refusals.remove(&log_id);
                continue;
            };
            replica.take_answers(&mut answers);
            let successor = replica.successor();
            if !answers.is_empty() {
                // Dropped if that connection is gone: the predecessor resends after it
                // reconnects.
                match replicas.upstream(log_id).and_then(|t| conn_of(conns, t)) {
                    Some(conn) => encode_answers(&mut conn.session.out, log_id, &mut answers),
                    None => answers.clear(),
                }
            }
            let Some(successor) = successor else {
                continue;
            };
            if let Some(&until) = self.hold.get(&log_id) {
                if now_us < until {
                    self.again.insert(log_id);
                    continue;
                }
                self.hold.remove(&log_id);
            }
            let Some(slot) = self.link_for(log_id, successor) else {
                // The successor is not in the map (yet): look again later.
                self.hold.insert(log_id, now_us + HOLD_MS * 1000);
                self.again.insert(log_id);
                continue;
            };
            let link = self.links[slot as usize].as_ref().expect("link");
            if link.state != LinkState::Up {
                continue; // Probed when the link comes up.
            }
            let replica = replicas.get_mut(log_id).expect("checked");
            if replica.link_is_down() {
                // Refused earlier (held meanwhile): probe again.
                if let Some(probe) = replica.link_up() {
                    self.send_control(replicas, log_id, slot, probe, (0, &[]));
                }
                continue;
            }
            self.pull(replicas, log_id, slot);
            // Trims, barriers and the committed LSN before the records caught up: a successor
            // that joined empty skips to this node's trim point first.
            let replica = replicas.get_mut(log_id).expect("checked");
            replica.to_send(&mut sends);
            let fence = store.tail(log_id).map_or(0, |t| t.fencing_token);
            for send in sends.drain(..) {
                let keys = match send {
                    Send::Trim { before, skip: true } => store.writer_keys(log_id, before),
                    _ => Vec::new(),
                };
                self.send_control(replicas, log_id, slot, send, (fence, &keys));
            }
            let more = self.catch_up(replicas, metrics, store, reads, log_id, slot);
            if more {
                self.again.insert(log_id);
            }
        }
        logs.clear();
        self.turn_logs = logs;
        self.answers = answers;
        self.sends = sends;
        self.update_congestion(replicas);
        self.learn(replicas, store, now_us);
        for slot in 0..self.links.len() {
            self.drive_link(slot as u32, replicas, metrics, store, now_us);
        }
    }

    /// Recomputes which logs' links are over their budget.
    fn update_congestion(&mut self, replicas: &mut Replicas) {
        let full: HashSet<u32> = self
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                l.as_ref()
                    .filter(|l| l.unacked_bytes >= LINK_UNACKED_BYTES_MAX)
                    .map(|_| i as u32)
            })
            .collect();
        let (by_peer, peers) = (&self.by_peer, &self.peers);
        replicas.set_congested(!full.is_empty(), |log_id, successor| {
            peers.get(&successor).is_some_and(|peer| {
                let (shard, _) = peer.shard_addr(log_id);
                by_peer
                    .get(&(successor, shard))
                    .is_some_and(|s| full.contains(s))
            })
        });
    }

    /// Connects, sends, or finishes closing a link, as its state asks.
    fn drive_link<E: Net>(
        &mut self,
        slot: u32,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        now_us: u64,
    ) {
        let Some(link) = self.links[slot as usize].as_mut() else {
            return;
        };
        let generation = link.generation;
        let token = move |op| NetToken {
            op,
            slot,
            generation,
        };
        if link.retired && link.state != LinkState::Closing {
            link.close(store.io_mut());
        }
        match link.state {
            LinkState::Idle { retry_at_us } if now_us >= retry_at_us => {
                match store.io_mut().connect(link.addr, token(NetOp::LinkConnect)) {
                    Ok(sock) => link.connecting(sock),
                    Err(e) => {
                        tracing::warn!(peer = link.peer, error = %e, "cannot open a socket for a replication link");
                        link.reset(store, now_us);
                    }
                }
            }
            LinkState::Greeting | LinkState::Up => {
                if let Some(sock) = link.sock() {
                    if let Some(bufs) = link.start_send(store) {
                        let bufs = bufs.to_vec();
                        // SAFETY: the chunks stay queued, unchanged (owned bytes are not
                        // touched while in the kernel, pinned store bytes stay pinned), until
                        // the send's completion reaches `Link::sent`.
                        unsafe { store.io_mut().send(sock, &bufs, token(NetOp::LinkSend)) };
                    }
                }
            }
            LinkState::Closing if link.idle() => {
                let (peer, shard, retired) = (link.peer, link.shard, link.retired);
                link.reset(store, now_us);
                metrics.link_resets += 1;
                if retired {
                    tracing::info!(peer, shard, "replication link to a moved shard closed");
                    self.links[slot as usize] = None;
                } else if !self.in_use(replicas, peer, shard) {
                    // No log goes to that shard any more (its node left their chains): a
                    // link is made again if one does; meanwhile the peer is nobody's
                    // neighbour here, so its failures are not reported.
                    tracing::info!(peer, shard, "replication link closed; no log uses it");
                    self.links[slot as usize] = None;
                    self.by_peer.remove(&(peer, shard));
                } else {
                    tracing::info!(peer, shard, "replication link closed; reconnecting");
                    self.suspects.push(peer);
                }
                self.links_down(replicas, peer, shard);
                let shards = self.peer_shards(peer);
                replicas.learners.link_down(peer, shard, shards, now_us);
            }
            _ => {}
        }
    }

    /// How many shards `peer` has (1 if it is not in the map).
    fn peer_shards(&self, peer: NodeId) -> u16 {
        self.peers.get(&peer).map_or(1, |p| p.shards.max(1))
    }

    /// Whether a log goes to (`peer`, `shard`): its successor there, or a learner's source.
    fn in_use(&self, replicas: &Replicas, peer: NodeId, shard: u16) -> bool {
        let shards = self.peer_shards(peer);
        replicas.learners.uses(peer, shard, shards)
            || replicas
                .iter()
                .any(|(log_id, r)| forwards_to(log_id, r, peer, shard, shards))
    }

    /// Whether a link to `peer` is kept (for a simulator's scenarios).
    #[cfg(test)]
    pub(crate) fn has_link_to(&self, peer: NodeId) -> bool {
        self.links.iter().flatten().any(|l| l.peer == peer)
    }

    /// Every log carried by the link to (`peer`, `shard`) lost it.
    fn links_down(&mut self, replicas: &mut Replicas, peer: NodeId, shard: u16) {
        let shards = self.peer_shards(peer);
        for (log_id, replica) in replicas.iter_mut() {
            if forwards_to(log_id, replica, peer, shard, shards) {
                replica.link_down();
            }
        }
    }

    /// Every log carried by the link to (`peer`, `shard`) may use it: probe each.
    fn links_up(&mut self, replicas: &mut Replicas, slot: u32, peer: NodeId, shard: u16) {
        let shards = self.peer_shards(peer);
        let mut logs: Vec<u64> = replicas
            .iter()
            .filter(|&(log_id, r)| forwards_to(log_id, r, peer, shard, shards))
            .map(|(log_id, _)| log_id)
            .collect();
        // In log order, whatever the map's: the same run gives the same requests.
        logs.sort_unstable();
        for log_id in logs {
            if self.hold.contains_key(&log_id) {
                self.again.insert(log_id);
                continue;
            }
            let replica = replicas.get_mut(log_id).expect("listed");
            if let Some(probe) = replica.link_up() {
                self.send_control(replicas, log_id, slot, probe, (0, &[]));
            }
        }
    }

    /// A completion of a link's operation.
    pub(crate) fn on_completion<E: Net>(
        &mut self,
        token: NetToken,
        result: std::io::Result<usize>,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        now_us: u64,
    ) {
        let slot = token.slot;
        let Some(link) = self.links.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if link.generation != token.generation {
            return;
        }
        match token.op {
            NetOp::LinkConnect => {
                link.connect_in_flight = false;
                match result {
                    Ok(_) if link.state == LinkState::Connecting => {
                        let mut out = Vec::new();
                        let hello = HelloRequest {
                            min_version: PROTOCOL_VERSION,
                            max_version: PROTOCOL_VERSION,
                        };
                        let hello_id = self.next_request;
                        let peer_id = hello_id + 1;
                        self.next_request += 2;
                        encode_request(&mut out, hello_id, &Request::Hello(hello));
                        let me = PeerRequest { node_id: self.me };
                        encode_request(&mut out, peer_id, &Request::Peer(me));
                        link.push_bytes(out);
                        link.requests.insert(hello_id, Sent::Hello);
                        link.requests.insert(peer_id, Sent::Peer);
                        link.state = LinkState::Greeting;
                        self.arm_recv(slot, store);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer = link.peer, addr = %link.addr, error = %e, "replication link: connect failed");
                        link.close(store.io_mut());
                    }
                }
            }
            NetOp::LinkSend => match result {
                Ok(n) => link.sent(n, store),
                Err(_) => {
                    link.sent(0, store);
                    link.close(store.io_mut());
                }
            },
            NetOp::LinkRecv => {
                link.recv_in_flight = false;
                match result {
                    Ok(0) | Err(_) => link.close(store.io_mut()),
                    Ok(n) => {
                        link.received(n);
                        self.on_input(slot, replicas, metrics, store, now_us);
                        self.arm_recv(slot, store);
                    }
                }
            }
            _ => unreachable!("not a link operation"),
        }
    }

    fn arm_recv<E: Net>(&mut self, slot: u32, store: &mut Store<E>) {
        let Some(link) = self.links[slot as usize].as_mut() else {
            return;
        };
        if link.recv_in_flight || matches!(link.state, LinkState::Closing | LinkState::Idle { .. })
        {
            return;
        }
        let Some(sock) = link.sock() else {
            return;
        };
        let token = NetToken {
            op: NetOp::LinkRecv,
            slot,
            generation: link.generation,
        };
        link.recv_in_flight = true;
        let space = link.recv_space();
        // SAFETY: the link owns its receive buffer (a boxed slice, never reallocated) and
        // neither reads nor writes it while `recv_in_flight`.
        unsafe {
            store
                .io_mut()
                .recv(sock, space.as_mut_ptr(), space.len(), token)
        };
    }

    /// Handles the whole answers received on a link.
    fn on_input<E: Net>(
        &mut self,
        slot: u32,
        replicas: &mut Replicas,
        metrics: &mut ShardMetrics,
        store: &mut Store<E>,
        now_us: u64,
    ) {
        let mut consumed = 0;
        loop {
            let link = self.links[slot as usize].as_mut().expect("live link");
            if link.state == LinkState::Closing {
                return;
            }
            // A PULL's answer is as large as a REPLICATE: read with the replication limits.
            let limits = self.limits.replication();
            let Some(event) = next_answer(link, &mut consumed, &limits) else {
                break;
            };
            let (peer, shard) = (link.peer, link.shard);
            match event {
                LinkEvent::Close => {
                    link.close(store.io_mut());
                    return;
                }
                LinkEvent::Up => {
                    link.state = LinkState::Up;
                    link.backoff_ms = BACKOFF_MIN_MS;
                    tracing::info!(peer, shard, addr = %link.addr, "replication link up");
                    self.links_up(replicas, slot, peer, shard);
                }
                LinkEvent::Greeted | LinkEvent::Ignored => {}
                LinkEvent::Answered {
                    log_id,
                    reply,
                    bytes,
                } => {
                    link.unacked_bytes -= bytes;
                    if let Some(replica) = replicas.get_mut(log_id) {
                        replica.reply(reply);
                        replicas.mark(log_id);
                    }
                }
                LinkEvent::Refused {
                    log_id,
                    sent: Sent::Learn { .. },
                    code,
                    message,
                    ..
                } => {
                    tracing::debug!(
                        log_id,
                        code = code.name(),
                        message,
                        "a learner PULL refused; holding"
                    );
                    replicas.learners.held(log_id, now_us);
                }
                LinkEvent::Refused {
                    log_id,
                    sent,
                    code,
                    arg0,
                    message,
                    bytes,
                } => {
                    link.unacked_bytes -= bytes;
                    self.refused(replicas, log_id, sent, code, arg0, &message, now_us);
                }
                LinkEvent::Pulled(pulled, epoch) => {
                    self.on_pulled(replicas, metrics, store, slot, pulled, epoch);
                }
                LinkEvent::Learned {
                    pulled,
                    asked,
                    more,
                } => {
                    Self::on_learned(replicas, metrics, store, &pulled, asked, more, now_us);
                }
            }
        }
        let link = self.links[slot as usize].as_mut().expect("live link");
        link.consume(consumed);
    }

    /// The successor refused a REPLICATE of `log_id`.
    #[allow(clippy::too_many_arguments)]
    fn refused(
        &mut self,
        replicas: &mut Replicas,
        log_id: u64,
        sent: Sent,
        code: ErrorCode,
        arg0: u64,
        message: &str,
        now_us: u64,
    ) {
        if replicas.get(log_id).is_none() {
            return;
        }
        replicas.mark(log_id);
        let replica = replicas.get_mut(log_id).expect("checked");
        match (code, sent) {
            (ErrorCode::Gap, Sent::Records { .. }) => replica.refused(arg0),
            (ErrorCode::Overloaded, Sent::Records { first, .. }) => {
                replica.refused(first);
                self.hold
                    .insert(log_id, now_us + arg0.clamp(1, 1000) * 1000);
            }
            _ => {
                // The successor does not (yet) have this log in this epoch, or does not take
                // it from us: probe again after a pause.
                tracing::debug!(
                    log_id,
                    code = code.name(),
                    message,
                    "successor refused a REPLICATE; holding"
                );
                replica.link_down();
                // The refusals of the other requests that were in flight with it come at
                // once: they are the same refusal, and do not lengthen the wait.
                let held = self.hold.get(&log_id).is_some_and(|&until| until > now_us);
                if !held {
                    let hold_ms = refusal_hold_ms(&mut self.refusals, log_id, now_us);
                    self.hold.insert(log_id, now_us + hold_ms * 1000);
                }
            }
        }
        self.again.insert(log_id);
    }

    /// The links' states, in one line (for a simulator's reports).
    pub(crate) fn describe(&self) -> String {
        self.links
            .iter()
            .flatten()
            .map(|l| format!("{}:{:?}/unacked {}", l.peer, l.state, l.unacked_bytes))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Closes every link (the shard stops).
    pub(crate) fn close_all(&mut self, net: &mut impl Net) {
        for link in self.links.iter_mut().flatten() {
            if link.state != LinkState::Closing {
                link.close(net);
            }
        }
    }

    /// Cancels the operations of every link that still has some in the kernel (a connect to
    /// a host that does not answer).
    pub(crate) fn cancel_busy<E: Net>(&mut self, store: &mut Store<E>) {
        for link in self.links.iter().flatten().filter(|l| !l.idle()) {
            if let Some(sock) = link.sock() {
                store.io_mut().cancel(sock);
            }
        }
    }

    /// True once no link has an operation in the kernel.
    pub(crate) fn all_idle(&self) -> bool {
        self.links.iter().flatten().all(Link::idle)
    }

    /// Gives back the pins of the links (the shard stops; every link is idle).
    pub(crate) fn release<E: Net>(&mut self, store: &mut Store<E>, now_us: u64) {
        for link in self.links.iter_mut().flatten() {
            link.reset(store, now_us);
        }
    }
}

/// What one answer on a link means, decoded (owning what it needs, so that the link's input
/// buffer is free again).
enum LinkEvent {
    /// Close the link (a malformed or unexpected answer, or a refused handshake).
    Close,
    /// The HELLO was answered as expected.
    Greeted,
    /// An ERROR answered a request the link does not track: a refused COMMIT (nothing to do).
    Ignored,
    /// The PEER was accepted: the link is up.
    Up,
    /// A REPLICATE was answered (`bytes` of records are no longer unacked).
    Answered {
        log_id: u64,
        reply: Reply,
        bytes: usize,
    },
    /// A PULL sent in the given epoch was answered.
    Pulled(Pulled, u64),
    /// A learner's PULL was answered with a run: `asked` is the LSN the PULL (or, for a
    /// run after the first, the run before it) asked from; `more` if more of the answer
    /// follows.
    Learned {
        pulled: Pulled,
        asked: u64,
        more: bool,
    },
    /// A REPLICATE was refused.
    Refused {
        log_id: u64,
        sent: Sent,
        code: ErrorCode,
        arg0: u64,
        message: String,
        bytes: usize,
    },
}

/// A PULL's answer, owning its records.
struct Pulled {
    log_id: u64,
    epoch: u64,
    first: u64,
    next: u64,
    fencing_token: u64,
    writer: (u64, u64),
    count: u32,
    records: Vec<u8>,
    /// A learner's answer at the trim point: the source's keys below it.
    keys: Vec<WriterKey>,
}

/// How long `log_id`'s traffic waits after a refusal at `now_us`: [`HOLD_MIN_MS`], doubled
/// for each refusal that follows the previous one within [`HOLD_RESET_US`], at most
/// [`HOLD_MS`].
fn refusal_hold_ms(refusals: &mut HashMap<u64, (u64, u64)>, log_id: u64, now_us: u64) -> u64 {
    let (last_ms, last_us) = refusals.get(&log_id).copied().unwrap_or((0, 0));
    let hold_ms = if last_ms == 0 || now_us.saturating_sub(last_us) > HOLD_RESET_US {
        HOLD_MIN_MS
    } else {
        (last_ms * 2).min(HOLD_MS)
    };
    refusals.insert(log_id, (hold_ms, now_us));
    hold_ms
}

/// The next whole answer in the link's input from `consumed` on (advancing it), decoded; or
/// `None` if it has not fully arrived.
fn next_answer(link: &mut Link, consumed: &mut usize, limits: &Limits) -> Option<LinkEvent> {
    let peer = link.peer;
    let shard = link.shard;
    let (input, requests) = link.input_and_requests();
    let frame = match parse_frame(&input[*consumed..], limits) {
        Ok(Some(frame)) => frame,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(peer, error = %e, "replication link: malformed answer");
            return Some(LinkEvent::Close);
        }
    };
    *consumed += frame.frame_bytes();
    let response = match decode_response(&frame, limits) {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(peer, error = %e, "replication link: malformed answer");
            return Some(LinkEvent::Close);
        }
    };
    let request_id = frame.request_id;
    let Some(sent) = requests.remove(&request_id) else {
        if let Response::Error(e) = response {
            // A COMMIT is answered only when it is refused (PROTOCOL.md 6.11), and is not
            // tracked: its log's next tracked request meets the same refusal and is acted
            // on. Closing the link here (a COMMIT refused as SEALED by a successor sealed a
            // moment before this node) held a promoted chain's appends for a reconnect.
            tracing::debug!(
                peer,
                code = e.code.name(),
                message = e.message,
                "replication link: a COMMIT refused"
            );
            return Some(LinkEvent::Ignored);
        }
        tracing::warn!(
            peer,
            request_id,
            "replication link: an answer to no request"
        );
        return Some(LinkEvent::Close);
    };
    let (log_id, barrier, bytes) = match sent {
        Sent::Hello => {
            return Some(match response {
                Response::Hello(hello)
                    if hello.role == Role::Node && hello.shard_index == shard =>
                {
                    LinkEvent::Greeted
                }
                other => {
                    tracing::warn!(peer, shard, answer = ?other, "replication link reached the wrong server");
                    LinkEvent::Close
                }
            })
        }
        Sent::Peer => {
            return Some(match response {
                Response::Peer => LinkEvent::Up,
                other => {
                    tracing::warn!(peer, answer = ?other, "replication link: the peer refused us");
                    LinkEvent::Close
                }
            })
        }
        Sent::Records { log_id, bytes, .. } => (log_id, None, bytes),
        Sent::Trim { log_id } => (log_id, None, 0),
        Sent::Barrier { log_id, covers } => (log_id, Some(covers), 0),
        Sent::Pull { log_id, from, .. } | Sent::Learn { log_id, from } => {
            // The epoch a replica's PULL was sent in; none for a learner's.
            let asked_in = match sent {
                Sent::Pull { epoch, .. } => Some(epoch),
                _ => None,
            };
            let learner = asked_in.is_none();
            return Some(match response {
                // A learner's answer starts at the source's trim point if that is above (and
                // then holds no records).
                Response::Pull(p)
                    if p.log_id == log_id
                        && (p.first_lsn == from
                            || (learner && p.first_lsn > from && p.records.count() == 0)) =>
                {
                    let pulled = Pulled {
                        log_id,
                        epoch: p.epoch,
                        first: p.first_lsn,
                        next: p.next_lsn,
                        fencing_token: p.fencing_token,
                        writer: (p.writer_id, p.writer_seq),
                        count: p.records.count(),
                        records: p.records.bytes().to_vec(),
                        keys: keys_below(&p.keys, p.first_lsn),
                    };
                    let Some(epoch) = asked_in else {
                        if p.more {
                            // The next run of the same answer follows.
                            let from = p.first_lsn + u64::from(p.records.count());
                            requests.insert(request_id, Sent::Learn { log_id, from });
                        }
                        return Some(LinkEvent::Learned {
                            pulled,
                            asked: from,
                            more: p.more,
                        });
                    };
                    LinkEvent::Pulled(pulled, epoch)
                }
                Response::Error(e) => LinkEvent::Refused {
                    log_id,
                    sent,
                    code: e.code,
                    arg0: e.arg0,
                    message: e.message.to_string(),
                    bytes: 0,
                },
                other => {
                    tracing::warn!(peer, answer = ?other, "replication link: a PULL answer that does not fit its request");
                    LinkEvent::Close
                }
            });
        }
    };
    Some(match response {
        Response::Replicate(answer) if answer.log_id == log_id => LinkEvent::Answered {
            log_id,
            reply: Reply {
                durable_lsn: answer.durable_lsn,
                trim_point: answer.trim_point,
                next_lsn: answer.next_lsn,
                barrier,
            },
            bytes,
        },
        Response::Error(e) => LinkEvent::Refused {
            log_id,
            sent,
            code: e.code,
            arg0: e.arg0,
            message: e.message.to_string(),
            bytes,
        },
        other => {
            tracing::warn!(peer, answer = ?other, "replication link: an answer that does not fit its request");
            LinkEvent::Close
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainlog_net::{encode_error, ErrorResponse, Opcode};

    /// A COMMIT is answered only when refused, and the link does not track it: the
    /// refusal (a successor sealed a moment before this node) is let go, and the answers
    /// after it are read. It closed the link, whose reconnect held a promoted chain's
    /// appends for 50 ms.
    #[test]
    fn a_refused_commit_leaves_the_link_up() {
        let limits = Limits::DEFAULT.replication();
        let mut link = Link::new(2, 0, "127.0.0.1:7400".parse().unwrap(), 1, 1 << 16);
        link.requests.insert(
            8,
            Sent::Barrier {
                log_id: 5,
                covers: 0,
            },
        );
        let mut input = Vec::new();
        let refusal = ErrorResponse {
            code: ErrorCode::Sealed,
            arg0: 40,
            arg1: 0,
            message: "log 5: the epoch is sealed here at 40",
        };
        // The COMMIT's refusal (request 7, never tracked), then the BARRIER's.
        encode_error(&mut input, 7, Some(Opcode::Replicate), &refusal);
        encode_error(&mut input, 8, Some(Opcode::Replicate), &refusal);
        link.recv_space()[..input.len()].copy_from_slice(&input);
        link.received(input.len());
        let mut consumed = 0;
        assert!(matches!(
            next_answer(&mut link, &mut consumed, &limits),
            Some(LinkEvent::Ignored)
        ));
        assert!(matches!(
            next_answer(&mut link, &mut consumed, &limits),
            Some(LinkEvent::Refused {
                log_id: 5,
                code: ErrorCode::Sealed,
                ..
            })
        ));
        assert_eq!(consumed, input.len());
    }

    #[test]
    fn a_refused_log_waits_briefly_first_then_longer_while_refusals_go_on() {
        let mut refusals = HashMap::new();
        let mut now_us = 5_000_000;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let ms = refusal_hold_ms(&mut refusals, 7, now_us);
            waits.push(ms);
            now_us += ms * 1000;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 100, 100]);
        // Another log has its own count.
        assert_eq!(refusal_hold_ms(&mut refusals, 8, now_us), 1);
        // Long after the last refusal, the next one is a first one again.
        assert_eq!(refusal_hold_ms(&mut refusals, 7, now_us + 2_000_000), 1);
    }
}
