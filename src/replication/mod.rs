//! Chain replication of one log on one node, as a deterministic state machine: events in
//! (records stored here, records durable here, the successor answered, the link to the
//! successor went up or down, a REPLICATE arrived from the predecessor), actions out (answer
//! the predecessor, send a trim, a barrier or the committed LSN to the successor, catch the
//! successor up from the store). No I/O, no clock, no randomness: the shard drives it from its
//! loop, and the unit tests drive whole chains in memory with reordered, delayed and
//! duplicated messages (ARCHITECTURE.md, "Chain replication").
//!
//! Positions, for a chain `head -> ... -> tail` in one epoch:
//!
//! ```text
//!            trim_point   committed   durable here   next_lsn
//!                 |            |            |            |
//!   ... trimmed   | committed  | durable    | stored,    |  (not yet)
//!                 |  (on every | here, not  | not yet    |
//!                 |   replica) | everywhere | durable    |
//! ```
//!
//! - The **head** sequences: records get their LSNs there ([`Replica::stored`]), and are
//!   forwarded to the successor at once, from the same buffer that goes to disk
//!   ([`Forwarding::Now`]), while the head's own write is in flight.
//! - Every node answers its predecessor's REPLICATE once the records are durable here and
//!   (unless it is the tail) its successor answered them: answers carry the cumulative
//!   `durable_lsn` of this node and every node after it. At the head that is the committed
//!   LSN; it travels downstream on later REPLICATEs (and as COMMIT when there is nothing else
//!   to send), so every replica serves reads up to the committed LSN it knows.
//! - Nothing is kept for resending but positions: what a successor lacks after a reconnect
//!   is in this node's store, from the successor's `next_lsn` (learned by a barrier when the
//!   link comes up, or from a GAP answer) to ours ([`Replica::catch_up_from`]).
//! - Trims, barriers and the committed LSN are cumulative, so the latest value is all that is
//!   sent, and sending it again after a reconnect is harmless.
//! - **A replica that (re)started settles before it acts** ([`Replica::recovered`]). A node
//!   forwards records before its own write is durable, so after a crash its successor may
//!   hold records this node lost. Until the probe of its successor answered, a recovered head
//!   appends nothing ([`Blocked::Settling`]); if the successor is ahead, the missing records
//!   are **pulled** back from it ([`Replica::pull_from`], with their idempotency keys and
//!   fencing tokens, which the shard stores as a replica would) before the link is in sync.
//!   A node answers its predecessor's barrier only once its own link is in sync and it has
//!   settled itself (pulled back what its own probe found missing, even when that probe
//!   also covered the predecessor's barrier), so the `next_lsn` a probe learns covers the
//!   whole rest of the chain: no LSN that any replica
//!   holds is ever sequenced again, and replicas never hold different records at one LSN.
//! - **An answer vouches only for what its request named**: `durable_lsn` never exceeds the
//!   end of the request's records, or for a barrier or trim the predecessor's next LSN as
//!   the request declared it; and a node never counts its successor durable beyond its own
//!   next LSN. So a head cannot take a successor's durability of records it does not have
//!   (yet) for its own.
//!
//! Work items (records up to an LSN, a trim, a barrier) complete in the order they were
//! queued; each completes when its local part is durable and the successor answered it (the
//! tail has no successor).

#[cfg(test)]
mod tests;

std::thread_local! {
    /// The simulator's canary: recovered replicas skip settling (a restarted head sequences
    /// at once, the bug of issue 10). Never set outside a simulation that checks its checks.
    static CANARY_SKIP_SETTLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Breaks this thread's replicas on purpose, for the simulator's canary test: a replica
/// recovered after a restart acts at once instead of settling with its chain first.
pub fn canary_skip_settling(on: bool) {
    CANARY_SKIP_SETTLING.with(|c| c.set(on));
}

use std::collections::VecDeque;

/// A node's id in the cluster (nonzero).
pub type NodeId = u64;

/// Where this node is in a log's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The first node: the sequencer (with one replica it is also the tail).
    Head,
    /// Between the head and the tail.
    Middle,
    /// The last node (not the head).
    Tail,
}

/// What the shard does with records it just stored at the head or from the predecessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Send them to the successor now, from the store's buffer (the link is in sync).
    Now,
    /// Not now: there is no successor, or the link is down or catching up (the records go
    /// later, read from the store).
    Later,
}

/// What to do with a REPLICATE of records `[first, end)` from the predecessor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// Store the records from `from` (the first `from - first` are already here), then call
    /// [`Replica::stored`].
    Store {
        /// The first LSN to store.
        from: u64,
    },
    /// Every record is already here: nothing to store; the request is answered in its turn
    /// (call [`Replica::duplicate`]).
    Duplicate,
    /// The records start above this node's next LSN: refuse with GAP (nothing is written).
    Gap {
        /// The LSN this node expects next.
        expected: u64,
    },
}

/// What a node's answer to its predecessor says (a REPLICATE response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The predecessor's request this answers.
    pub request_id: u64,
    /// Durable on this node and every node after it, below this LSN.
    pub durable_lsn: u64,
    /// Trimmed durably on this node and every node after it, below this LSN.
    pub trim_point: u64,
    /// This node's next LSN (records stored, durable or not).
    pub next_lsn: u64,
}

/// A message for the successor that the machine decided on (records go by
/// [`Forwarding::Now`] and [`Replica::catch_up_from`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Send {
    /// REPLICATE TRIM to `before`.
    Trim {
        /// The trim point.
        before: u64,
        /// The successor may hold less than `before` (it joined empty, or far behind): the
        /// trim skips it there, and carries the idempotency keys of the batches below.
        skip: bool,
    },
    /// REPLICATE BARRIER, answered once the successor and everything after it answered what
    /// came before it; `covers` is the barrier sequence number it settles (passed back in
    /// [`Reply::barrier`]).
    Barrier {
        /// Barriers up to this sequence number are settled by its answer.
        covers: u64,
    },
    /// REPLICATE COMMIT: records below `committed` are committed (not answered).
    Commit {
        /// The committed LSN.
        committed: u64,
    },
}

/// The successor's answer to a REPLICATE, as the shard passes it in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Durable on the successor and after it, below this LSN.
    pub durable_lsn: u64,
    /// Trimmed durably on the successor and after it, below this LSN.
    pub trim_point: u64,
    /// The successor's next LSN.
    pub next_lsn: u64,
    /// For the answer to a barrier: the `covers` it was sent with.
    pub barrier: Option<u64>,
}

/// Why the head may not append to a log now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// This node is not the head.
    NotHead,
    /// This head (re)started and does not know yet where the rest of its chain stands: the
    /// successor may hold records it sequenced and lost in a crash. Appends wait until the
    /// link to the successor is up, probed, and what the successor had beyond this head is
    /// pulled back.
    Settling,
    /// The epoch is sealed here (reconfiguration): nothing more is appended in it, ever.
    Sealed {
        /// The epoch's end as this replica holds it.
        end: u64,
    },
    /// A settled head found its successor ahead of it: the successor holds records this head
    /// never had in its life since it settled, which the protocol never produces (damaged
    /// state). Appending would give their LSNs to other records, so it refuses until an
    /// operator or a new epoch resolves it.
    SuccessorAhead {
        /// The successor's next LSN.
        successor_next: u64,
    },
}

/// A predecessor's request that waits for its answer: its id, and what the answer may vouch
/// for. An answer says records are durable below `durable_lsn`, and never beyond `vouch`,
/// the end of the request's records, or for a barrier or a trim the predecessor's next LSN
/// as the request declared it: records above it are not the predecessor's to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The predecessor's request id.
    pub request_id: u64,
    /// The highest `durable_lsn` the answer may carry.
    pub vouch: u64,
}

/// The state of the link to the successor, for this log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No connection (or no successor).
    Down,
    /// Connected; a barrier asks for the successor's next LSN (sent at `covers`).
    Probing { covers: u64 },
    /// The probe found the successor holding records below `until` that this node does not
    /// (it lost them in a crash after forwarding them): they are pulled back before anything
    /// is sent; then the link is probed again.
    Pulling { until: u64 },
    /// The successor has (or has been sent) every record below `forwarded`, which is below
    /// our next LSN: the rest is read from the store and sent.
    CatchingUp,
    /// Every record stored here has been sent: new records are forwarded as they are stored.
    InSync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// Records below `end`.
    Records { end: u64 },
    /// A trim to `before`.
    Trim { before: u64 },
    /// Barrier number `seq`, issued when this replica's records ended at `end`.
    Barrier { seq: u64, end: u64 },
}

#[derive(Clone, Copy, Debug)]
struct Item {
    work: Work,
    /// The predecessor's request to answer when it completes.
    upstream: Option<Upstream>,
}

/// One log's replication state on one node, in one epoch.
#[derive(Debug)]
pub struct Replica {
    log_id: u64,
    epoch: u64,
    chain: Vec<NodeId>,
    /// This node's index in `chain`.
    index: usize,
    /// Records below are stored here (durable or not).
    next_lsn: u64,
    /// Records below are durable here.
    durable_lsn: u64,
    /// Trimmed durably here, below this LSN.
    trim_durable: u64,
    /// The highest trim asked of this node.
    trim_requested: u64,
    /// What this node knows is committed (at the head: durable on every replica).
    committed: u64,
    /// What this node knew was committed before this replica was made (in an earlier epoch,
    /// or as a learner's copy): served to readers while `committed` is learned again.
    committed_before: u64,
    /// At the head: trimmed durably on every replica.
    trim_committed: u64,
    /// Barriers issued here, and settled (answered by the whole rest of the chain).
    barriers_issued: u64,
    barriers_settled: u64,
    items: VecDeque<Item>,
    answers: Vec<Answer>,
    // The successor (unused at the tail).
    link: Link,
    /// Records below are on the successor or on their way to it (meaningful when the link
    /// is catching up or in sync).
    forwarded: u64,
    /// The successor's cumulative answers.
    down_durable: u64,
    down_trim: u64,
    down_barrier: u64,
    /// The successor's next LSN as last learned (its probe's answer, a GAP refusal below the
    /// trim point, a trim that skipped it): with `down_durable`, what it holds at least.
    down_next: u64,
    /// What was last sent to the successor on this link (trim, barrier, committed).
    sent_trim: u64,
    sent_barrier: u64,
    sent_commit: u64,
    /// A settled head found its successor ahead of it (never in a correct run).
    successor_ahead: Option<u64>,
    /// This replica knows where the rest of its chain stands: it was created for a new log or
    /// epoch, or its probe was answered (and anything the successor had beyond it pulled).
    settled: bool,
    /// A PULL is outstanding on the link.
    pull_in_flight: bool,
    /// The epoch was sealed here with this end (the next LSN then): one way, for good.
    sealed_end: Option<u64>,
}

impl Replica {
    /// A log's replica on node `me` of `chain` (head first) in `epoch`, over a store that
    /// holds records below `next_lsn`, all durable, trimmed below `trim_point`, that knows no
    /// other replica holds records it does not: a new log, or a new epoch whose start every
    /// replica agreed on.
    ///
    /// Panics if `me` is not in the chain (the caller installs only its own logs).
    pub fn new(
        log_id: u64,
        me: NodeId,
        epoch: u64,
        chain: Vec<NodeId>,
        next_lsn: u64,
        trim_point: u64,
    ) -> Replica {
        Replica::with_state(log_id, me, epoch, chain, next_lsn, trim_point, true)
    }

    /// As [`new`](Self::new), for a replica recovered from its store after the node
    /// (re)started: its successor may hold records this node forwarded and lost, so it settles
    /// first (see the module header). A replica without a successor is settled at once.
    pub fn recovered(
        log_id: u64,
        me: NodeId,
        epoch: u64,
        chain: Vec<NodeId>,
        next_lsn: u64,
        trim_point: u64,
    ) -> Replica {
        let settled = CANARY_SKIP_SETTLING.with(std::cell::Cell::get);
        Replica::with_state(log_id, me, epoch, chain, next_lsn, trim_point, settled)
    }

    fn with_state(
        log_id: u64,
        me: NodeId,
        epoch: u64,
        chain: Vec<NodeId>,
        next_lsn: u64,
        trim_point: u64,
        settled: bool,
    ) -> Replica {
        let index = chain
            .iter()
            .position(|&n| n == me)
            .expect("a node holds replicas only of the chains it is in");
        assert!(trim_point <= next_lsn, "trimmed past the tail");
        let sole = chain.len() == 1;
        let chain_len = chain.len();
        let replica = Replica {
            log_id,
            epoch,
            chain,
            index,
            next_lsn,
            durable_lsn: next_lsn,
            trim_durable: trim_point,
            trim_requested: trim_point,
            // A sole replica's durable records are committed; in a chain, what is
            // committed is learned (from the head's messages, or at the head from answers).
            committed: if sole { next_lsn } else { 0 },
            committed_before: 0,
            trim_committed: if sole { trim_point } else { 0 },
            barriers_issued: 0,
            barriers_settled: 0,
            items: VecDeque::new(),
            answers: Vec::new(),
            link: Link::Down,
            forwarded: 0,
            down_durable: 0,
            down_trim: 0,
            down_barrier: 0,
            down_next: 0,
            sent_trim: 0,
            sent_barrier: 0,
            sent_commit: 0,
            successor_ahead: None,
            settled: settled || sole || index + 1 == chain_len,
            pull_in_flight: false,
            sealed_end: None,
        };
        replica.assert_invariants();
        replica
    }

    /// The log.
    pub fn log_id(&self) -> u64 {
        self.log_id
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The chain, head first.
    pub fn chain(&self) -> &[NodeId] {
        &self.chain
    }

    /// This node's position.
    pub fn position(&self) -> Position {
        if self.index == 0 {
            Position::Head
        } else if self.index + 1 == self.chain.len() {
            Position::Tail
        } else {
            Position::Middle
        }
    }

    /// The head's node id.
    pub fn head(&self) -> NodeId {
        self.chain[0]
    }

    /// The predecessor, if this node is not the head.
    pub fn predecessor(&self) -> Option<NodeId> {
        self.index.checked_sub(1).map(|i| self.chain[i])
    }

    /// The successor, if this node is not the tail.
    pub fn successor(&self) -> Option<NodeId> {
        self.chain.get(self.index + 1).copied()
    }

    /// Records below are stored here.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Records below are durable here.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn
    }

    /// Records below are committed, as far as this node knows (at the head: exactly).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Records below may be served to readers here: committed (now, or known to be from an
    /// earlier epoch: [`knows_committed`](Self::knows_committed)) and durable here.
    pub fn readable(&self) -> u64 {
        self.committed
            .max(self.committed_before)
            .min(self.durable_lsn)
    }

    /// Records below `committed` (as far as they are durable here) were committed before
    /// this replica was made: in an earlier epoch, whose committed records every later one
    /// keeps, or copied as a learner. Readers are served them at once, so the committed tail
    /// they see here never goes back while the new chain settles. It changes nothing of what
    /// this replica decides (what it acknowledges, trims or forwards as committed).
    pub fn knows_committed(&mut self, committed: u64) {
        self.committed_before = self.committed_before.max(committed.min(self.durable_lsn));
    }

    /// At the head: trimmed durably on every replica below this (a client's TRIM is
    /// answered when this reaches it).
    pub fn trim_committed(&self) -> u64 {
        self.trim_committed
    }

    /// Barriers issued here so far, and settled.
    pub fn barriers(&self) -> (u64, u64) {
        (self.barriers_issued, self.barriers_settled)
    }

    /// Records the successor has not yet answered as durable (at the tail: 0).
    pub fn lag(&self) -> u64 {
        match self.successor() {
            Some(_) => self.next_lsn.saturating_sub(self.down_durable),
            None => 0,
        }
    }

    /// Whether the head can append now.
    pub fn can_append(&self) -> Result<(), Blocked> {
        if self.index != 0 {
            return Err(Blocked::NotHead);
        }
        if let Some(end) = self.sealed_end {
            return Err(Blocked::Sealed { end });
        }
        if !self.settled {
            return Err(Blocked::Settling);
        }
        match self.successor_ahead {
            Some(successor_next) => Err(Blocked::SuccessorAhead { successor_next }),
            None => Ok(()),
        }
    }

    /// Records `[first, end)` were stored here: sequenced by this head, or received from the
    /// predecessor for `upstream` (its request id). Says whether to forward them now.
    pub fn stored(&mut self, first: u64, end: u64, upstream: Option<u64>) -> Forwarding {
        assert_eq!(first, self.next_lsn, "records are stored densely");
        assert!(
            self.sealed_end.is_none(),
            "nothing is stored in a sealed epoch"
        );
        assert!(end > first, "a batch holds records");
        self.next_lsn = end;
        self.items.push_back(Item {
            work: Work::Records { end },
            upstream: upstream.map(|request_id| Upstream {
                request_id,
                vouch: end,
            }),
        });
        let forwarding = if self.link == Link::InSync && self.forwarded == first {
            self.forwarded = end;
            Forwarding::Now
        } else {
            if self.link == Link::InSync {
                // Cannot happen (in sync means everything stored was sent); fall back to
                // catching up rather than leave a hole.
                self.link = Link::CatchingUp;
            }
            Forwarding::Later
        };
        self.assert_invariants();
        forwarding
    }

    /// Decides what to do with a REPLICATE of records `[first, end)` from the predecessor.
    pub fn receive(&self, first: u64, end: u64) -> Receive {
        if first > self.next_lsn {
            Receive::Gap {
                expected: self.next_lsn,
            }
        } else if end <= self.next_lsn {
            Receive::Duplicate
        } else {
            Receive::Store {
                from: self.next_lsn,
            }
        }
    }

    /// A REPLICATE whose records are all here already: answered in its turn.
    pub fn duplicate(&mut self, end: u64, upstream: u64) {
        self.items.push_back(Item {
            work: Work::Records { end },
            upstream: Some(Upstream {
                request_id: upstream,
                vouch: end,
            }),
        });
        self.settle();
    }

    /// Records below `end` are durable here.
    pub fn durable(&mut self, end: u64) {
        assert!(end <= self.next_lsn, "durable beyond what was stored");
        self.durable_lsn = self.durable_lsn.max(end);
        self.settle();
    }

    /// A trim to `before` was asked (at the head by a client, elsewhere by the predecessor
    /// for `upstream`) and laid into the store here.
    ///
    /// A successor being caught up from below it skips to it: nothing below can be read here
    /// any more, so the trim goes first ([`to_send`](Self::to_send)), then the records from
    /// there.
    pub fn trim(&mut self, before: u64, upstream: Option<Upstream>) {
        self.trim_requested = self.trim_requested.max(before);
        if self.link == Link::CatchingUp && self.forwarded < self.trim_requested {
            self.forwarded = self.trim_requested;
            if self.forwarded == self.next_lsn {
                self.link = Link::InSync;
            }
        }
        self.items.push_back(Item {
            work: Work::Trim { before },
            upstream,
        });
        self.settle();
    }

    /// The predecessor trimmed past everything stored here (this replica joined the chain
    /// empty, or far behind): the log starts again, empty, at `at` (the store's `reset_log`),
    /// and the trim is answered once that is durable. Records below `at` are committed and
    /// trimmed everywhere, so none of them is lost here.
    pub fn skip_to(&mut self, at: u64, upstream: Upstream) {
        assert!(at > self.next_lsn, "a skip goes forward");
        assert!(
            self.sealed_end.is_none(),
            "nothing is stored in a sealed epoch"
        );
        self.next_lsn = at;
        self.durable_lsn = at;
        self.forwarded = self.forwarded.max(at);
        // Only committed records are trimmed: everything below `at` is.
        self.committed = self.committed.max(at);
        self.trim(at, Some(upstream));
    }

    /// The store made a trim to `before` durable here.
    pub fn trim_durable(&mut self, before: u64) {
        self.trim_durable = self.trim_durable.max(before);
        self.settle();
    }

    /// A barrier (CHECK_TAIL at the head, or the predecessor's for `upstream`). Returns its
    /// sequence number: it is settled when [`barriers`](Self::barriers)' second value
    /// reaches it, which is once every record this replica holds now is durable on the rest
    /// of the chain too: the records queued before it, and those of an earlier epoch that a
    /// new member is still being caught up with.
    pub fn barrier(&mut self, upstream: Option<Upstream>) -> u64 {
        self.barriers_issued += 1;
        let seq = self.barriers_issued;
        self.items.push_back(Item {
            work: Work::Barrier {
                seq,
                end: self.next_lsn,
            },
            upstream,
        });
        self.settle();
        seq
    }

    /// The predecessor says records below `committed` are committed.
    pub fn learn_committed(&mut self, committed: u64) {
        if self.index == 0 {
            return;
        }
        self.committed = self.committed.max(committed.min(self.next_lsn));
        self.assert_invariants();
    }

    /// Its positions and link, in one line (for a simulator's reports).
    pub fn summary(&self) -> String {
        format!(
            "next {} durable {} committed {} settled {} link {:?} forwarded {} down_durable {} items {} pull_in_flight {}",
            self.next_lsn,
            self.durable_lsn,
            self.committed,
            self.settled,
            self.link,
            self.forwarded,
            self.down_durable,
            self.items.len(),
            self.pull_in_flight
        )
    }

    /// Seals the epoch here (the controller reconfigures the log): from now on nothing is
    /// appended or stored in this epoch here, and its end is this replica's next LSN now (the
    /// answer to SEAL waits until everything below it is durable). Idempotent: sealing again
    /// returns the same end.
    pub fn seal(&mut self) -> u64 {
        *self.sealed_end.get_or_insert(self.next_lsn)
    }

    /// The end of the epoch, if it is sealed here.
    pub fn sealed(&self) -> Option<u64> {
        self.sealed_end
    }

    /// Whether this replica knows where the rest of its chain stands (see
    /// [`recovered`](Self::recovered)).
    pub fn is_settled(&self) -> bool {
        self.settled
    }

    /// The link to the successor is up (connected, PEER accepted): probe it with a barrier,
    /// whose answer says where the successor is.
    pub fn link_up(&mut self) -> Option<Send> {
        self.successor()?;
        // The probe re-sends what a reconnect may have lost: trims and the committed LSN
        // go again once it is answered.
        self.sent_trim = 0;
        self.sent_commit = 0;
        self.pull_in_flight = false;
        Some(self.probe())
    }

    /// Asks the successor where it is, with a barrier covering every barrier issued so far.
    fn probe(&mut self) -> Send {
        let covers = self.barriers_issued;
        self.link = Link::Probing { covers };
        self.sent_barrier = covers;
        Send::Barrier { covers }
    }

    /// The link to the successor is down: what was in flight on it is lost (it is sent
    /// again after the next probe).
    pub fn link_down(&mut self) {
        self.link = Link::Down;
        self.pull_in_flight = false;
    }

    /// Whether the link to the successor is down (the shard reconnects).
    pub fn link_is_down(&self) -> bool {
        self.successor().is_some() && self.link == Link::Down
    }

    /// The successor answered a REPLICATE. It vouches for nothing this node does not hold.
    pub fn reply(&mut self, reply: Reply) {
        if self.successor().is_none() {
            return;
        }
        self.down_durable = self.down_durable.max(reply.durable_lsn.min(self.next_lsn));
        self.down_trim = self.down_trim.max(reply.trim_point);
        if let Some(covers) = reply.barrier {
            self.down_barrier = self.down_barrier.max(covers);
            if self.link == (Link::Probing { covers }) {
                self.probed(reply.next_lsn);
            }
        }
        self.settle();
    }

    /// The probe's answer: the successor holds records below `next` (and so does every node
    /// after it: a node answers a barrier only once its own link is in sync).
    fn probed(&mut self, next: u64) {
        self.down_next = next;
        if next > self.next_lsn {
            if !self.settled {
                // Records this node forwarded and lost in a crash: take them back before
                // anything else goes to the successor (or is sequenced, at the head).
                tracing::info!(
                    log_id = self.log_id,
                    next = self.next_lsn,
                    successor_next = next,
                    "the successor holds records this replica lost: pulling them back"
                );
                self.link = Link::Pulling { until: next };
                self.forwarded = next;
                return;
            }
            // A settled node's successor only has what this node sent it: never ahead.
            tracing::error!(
                log_id = self.log_id,
                next = self.next_lsn,
                successor_next = next,
                "the successor holds records this settled replica never had: refusing to \
                 sequence over them"
            );
            if self.index == 0 {
                self.successor_ahead = Some(next);
            }
            self.forwarded = self.next_lsn;
        } else {
            // What the successor holds but has not vouched durable (on it and after it) is
            // sent again: it takes the records as duplicates and answers them once durable,
            // which a barrier's answer, settled at once, would not wait for. A successor
            // below this node's trim point (a replica that joined empty) skips to it: the
            // trim goes first, then the records from there. The trim point is the one laid
            // into the store, durable or not: nothing below it can be read for the
            // successor (a middle that skipped to its predecessor's trim point and was
            // probed before the reset was durable would otherwise read below it for ever).
            self.forwarded = next
                .min(self.down_durable.max(self.trim_durable))
                .max(self.trim_requested);
        }
        self.settled = true;
        self.link = if self.forwarded == self.next_lsn {
            Link::InSync
        } else {
            Link::CatchingUp
        };
        self.assert_invariants();
    }

    /// Where to pull records from the successor now, if the link is pulling and no PULL is
    /// outstanding: from this node's next LSN. The shard sends a PULL and reports what came
    /// back with [`pulled`](Self::pulled).
    pub fn pull_from(&mut self) -> Option<u64> {
        let Link::Pulling { until } = self.link else {
            return None;
        };
        // A sealed epoch stores nothing more: its end was answered to the controller. What
        // the successor holds beyond it was never durable here, so never acknowledged; the
        // next epoch settles it.
        if self.pull_in_flight || self.next_lsn >= until || self.sealed_end.is_some() {
            return None;
        }
        self.pull_in_flight = true;
        Some(self.next_lsn)
    }

    /// Whether a PULL of this replica is out (its answer is expected, [`pulled`](Self::pulled)).
    pub fn awaits_pull(&self) -> bool {
        matches!(self.link, Link::Pulling { .. }) && self.pull_in_flight
    }

    /// A PULL was answered: the records `[first, end)` were stored here (`first` is this
    /// node's next LSN; `end == first` if the successor had nothing from there, or if the
    /// epoch was sealed here meanwhile: then nothing is stored), and the successor's next
    /// LSN is `successor_next`. Returns the probe to send once everything
    /// the successor had is here (its answer vouches for the pulled records).
    pub fn pulled(&mut self, first: u64, end: u64, successor_next: u64) -> Option<Send> {
        let Link::Pulling { until } = self.link else {
            return None;
        };
        assert_eq!(first, self.next_lsn, "pulled records are stored densely");
        assert!(end >= first, "a pull returns records in order");
        assert!(
            end == first || self.sealed_end.is_none(),
            "nothing is stored in a sealed epoch"
        );
        self.pull_in_flight = false;
        self.next_lsn = end;
        // Nobody upstream waits for pulled records, but their answers keep the queue's order.
        if end > first {
            self.items.push_back(Item {
                work: Work::Records { end },
                upstream: None,
            });
        }
        // The successor may have less than its probe said only if it restarted meanwhile
        // (then the link resets too); never pull past what it has.
        let until = until.min(successor_next.max(end));
        self.forwarded = until;
        self.assert_invariants();
        if end >= until {
            Some(self.probe())
        } else {
            self.link = Link::Pulling { until };
            None
        }
    }

    /// The successor refused records with GAP: it expects `expected` next (or refused them
    /// with OVERLOADED: then `expected` is the first refused LSN). Sending resumes from there,
    /// read from the store.
    ///
    /// Nothing below the trim point laid into the store can be read for it: a successor that
    /// expects records below it (records forwarded before the trim that skips it there
    /// reached it) is sent the trim again, and the records from there.
    pub fn refused(&mut self, expected: u64) {
        if matches!(self.link, Link::InSync | Link::CatchingUp) && expected < self.forwarded {
            if expected < self.trim_requested {
                self.sent_trim = self.sent_trim.min(expected);
                self.down_next = expected;
            }
            self.forwarded = expected.max(self.trim_requested);
            self.link = if self.forwarded == self.next_lsn {
                Link::InSync
            } else {
                Link::CatchingUp
            };
        }
    }

    /// Where to read records from the store for the successor, if the link is catching up.
    /// The shard sends some of `[from, next_lsn)` and reports it with
    /// [`caught_up`](Self::caught_up).
    pub fn catch_up_from(&self) -> Option<u64> {
        (self.link == Link::CatchingUp && self.forwarded < self.next_lsn).then_some(self.forwarded)
    }

    /// Records `[first, end)` were read from the store and sent to the successor.
    pub fn caught_up(&mut self, first: u64, end: u64) {
        assert_eq!(first, self.forwarded, "catch-up continues where it was");
        assert!(end <= self.next_lsn, "sent beyond what is stored");
        self.forwarded = end;
        if self.link == Link::CatchingUp && self.forwarded == self.next_lsn {
            self.link = Link::InSync;
        }
        self.assert_invariants();
    }

    /// The trim, barrier and committed LSN to send the successor now, if they changed since
    /// they were last sent (the link must be up and probed). The committed LSN goes as a
    /// COMMIT only if no REPLICATE of records carried it ([`committed_for_forward`]
    /// (Self::committed_for_forward)).
    pub fn to_send(&mut self, out: &mut Vec<Send>) {
        if self.successor().is_none() || !matches!(self.link, Link::InSync | Link::CatchingUp) {
            return;
        }
        if self.trim_requested > self.sent_trim && self.trim_requested <= self.forwarded {
            self.sent_trim = self.trim_requested;
            let before = self.trim_requested;
            out.push(Send::Trim {
                before,
                skip: before > self.down_next.max(self.down_durable),
            });
            self.down_next = self.down_next.max(before);
        }
        if self.barriers_issued > self.sent_barrier {
            self.sent_barrier = self.barriers_issued;
            out.push(Send::Barrier {
                covers: self.barriers_issued,
            });
        }
        let committed = self.committed.min(self.forwarded);
        if committed > self.sent_commit {
            self.sent_commit = committed;
            out.push(Send::Commit { committed });
        }
    }

    /// The committed LSN a REPLICATE of records carries (and counts as sent).
    pub fn committed_for_forward(&mut self, end: u64) -> u64 {
        let committed = self.committed.min(end);
        self.sent_commit = self.sent_commit.max(committed);
        committed
    }

    /// Answers owed to the predecessor, in order.
    pub fn take_answers(&mut self, out: &mut Vec<Answer>) {
        out.append(&mut self.answers);
    }

    /// Completes the items at the front of the queue that are done, in order.
    fn settle(&mut self) {
        let tail = self.successor().is_none();
        let chain_durable = if tail {
            self.durable_lsn
        } else {
            self.durable_lsn.min(self.down_durable)
        };
        let chain_trim = if tail {
            self.trim_durable
        } else {
            self.trim_durable.min(self.down_trim)
        };
        while let Some(item) = self.items.front().copied() {
            let done = match item.work {
                Work::Records { end } => chain_durable >= end,
                Work::Trim { before } => chain_trim >= before,
                // A barrier's answer says where the whole rest of the chain ends (its
                // `next_lsn`): a replica still settling (its probe found records downstream
                // that it lost, and it pulls them back) cannot say that yet, even if the probe
                // that found them covered this barrier. Nor before everything it held when
                // the barrier came is durable down the chain: not only the records queued
                // before it, but those of an earlier epoch that a new member is still being
                // caught up with (a head's CHECK_TAIL answered at the start of an epoch named
                // a tail below records acknowledged in the epoch before).
                Work::Barrier { seq, end } => {
                    chain_durable >= end && (tail || (self.settled && self.down_barrier >= seq))
                }
            };
            if !done {
                break;
            }
            self.items.pop_front();
            if let Work::Barrier { seq, .. } = item.work {
                self.barriers_settled = self.barriers_settled.max(seq);
            }
            if let Some(up) = item.upstream {
                self.answers.push(Answer {
                    request_id: up.request_id,
                    durable_lsn: chain_durable.min(up.vouch),
                    trim_point: chain_trim,
                    next_lsn: self.next_lsn,
                });
            }
        }
        if self.index == 0 {
            // At the head, durable on every node of the chain is what committed means.
            self.committed = self.committed.max(chain_durable);
            self.trim_committed = self.trim_committed.max(chain_trim);
        }
        self.assert_invariants();
    }

    /// The positions the module header draws, checked after every event:
    /// `trim <= next`, `committed <= next`, `durable <= next`, and the link's bookkeeping
    /// within what is stored (`down_durable <= next`, `forwarded <= next` once in sync or
    /// catching up).
    fn assert_invariants(&self) {
        assert!(
            self.trim_durable <= self.next_lsn,
            "log {}: trimmed durably past the records",
            self.log_id
        );
        assert!(
            self.durable_lsn <= self.next_lsn,
            "log {}: durable {} beyond next {}",
            self.log_id,
            self.durable_lsn,
            self.next_lsn
        );
        assert!(
            self.committed <= self.next_lsn,
            "log {}: committed {} beyond next {}",
            self.log_id,
            self.committed,
            self.next_lsn
        );
        assert!(
            self.down_durable <= self.next_lsn,
            "log {}: the successor counted durable beyond what is here",
            self.log_id
        );
        if matches!(self.link, Link::InSync | Link::CatchingUp) {
            assert!(
                self.forwarded <= self.next_lsn,
                "log {}: forwarded beyond what is here",
                self.log_id
            );
        }
        if self.index == 0 {
            assert!(
                self.committed <= self.durable_lsn,
                "log {}: the head commits only what is durable here",
                self.log_id
            );
        }
        assert!(
            self.settled || !matches!(self.link, Link::InSync | Link::CatchingUp),
            "log {}: in sync before settling",
            self.log_id
        );
        if let Some(end) = self.sealed_end {
            assert_eq!(
                end, self.next_lsn,
                "log {}: stored past its sealed end",
                self.log_id
            );
        }
    }
}
