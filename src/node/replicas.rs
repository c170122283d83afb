//! A shard's replication state: one [`Replica`] (the state machine of `crate::replication`)
//! per log it holds, and what the shard does with them between the protocol and the links.
//!
//! The protocol (`super::protocol`) calls a narrow API: whether a log may take an append here
//! ([`Replicas::admit_append`]: the head, settled, the chain not too far behind) and what was
//! stored for it ([`Replicas::appended`]), trims and barriers, the logs a create, a delete or
//! a cluster map adds and removes, the positions readers may see ([`Replicas::readable`]), and
//! the predecessor's requests as a whole ([`Replicas::replicate`], [`Replicas::pull`]), and
//! SEAL of an epoch ([`Replicas::seal`]; a sealed epoch's appends, REPLICATEs and PULLs are
//! SEALED from then on). Those are checked here against the log's current epoch and chain,
//! and records sent again are
//! checked against the ones stored ([`same_as_stored`]). The links (`super::chain`) take what
//! this leaves for the end of the turn: the records to forward now ([`Forward`], pinned in the
//! store), the logs whose state changed, and the answers owed upstream ([`encode_answers`], on
//! the connection the log's REPLICATEs came from: [`Replicas::upstream`]); and they say which
//! logs' links are over budget ([`Replicas::set_congested`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use chainlog_net::{
    encode_response, ErrorCode, Keys, Limits, Opcode, PullRequest, PullResponse, RecordForm,
    Records, ReplicateKind, ReplicateRequest, ReplicateResponse, Response, ARG_NONE, TOKEN_NONE,
    WRITER_NONE,
};
use chainlog_storage::io::Io;
use chainlog_storage::{
    Ack, Pin, ReadKind, ReadOutput, ReadRequest, ReplicaState, Store, StoredRun, WriterKey,
};

use super::catalog::{Catalog, LogEntry as CatalogEntry};
use super::learners::{is_learner_entry, Learners};
use super::reads::{Owner, Parked, Reads, Started};
use super::records::{encode_run, replica_state};
use super::refusal::{refuse, Refusal};
use crate::replication::{Answer, Blocked, Forwarding, NodeId, Receive, Replica, Upstream};

/// Records of a log its head holds and the rest of the chain has not yet (uncommitted) at
/// which the head refuses more appends with OVERLOADED: a slow or stopped replica must not
/// make the head pile up records without bound (65,536 records is 0.3 s of appends at
/// 200,000 records/s).
const UNCOMMITTED_RECORDS_MAX: u64 = 1 << 16;
/// Record bytes one answer to a learner's PULL carries at most (in several responses).
const LEARN_ANSWER_BYTES: usize = 1 << 20;

/// Store token of operations nobody waits for (a replica's writes, whose answers go upstream
/// by LSN; the trim that frees a deleted log's space): it names no connection slot.
pub(crate) const UNANSWERED: u64 = u64::MAX;

/// Records stored here that go to the successor now, pinned where they were stored.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) log_id: u64,
    pub(crate) epoch: u64,
    pub(crate) first: u64,
    pub(crate) end: u64,
    /// The batch's fencing token (0: none) and idempotency key (0, 0: none).
    pub(crate) fencing_token: u64,
    pub(crate) writer: (u64, u64),
    pub(crate) pin: Pin,
}

/// The replication state of every log of a shard's catalog (a single node's logs are chains
/// of one: durable here is committed).
#[derive(Debug)]
pub(crate) struct Replicas {
    node_id: NodeId,
    limits: Limits,
    logs: HashMap<u64, Replica>,
    /// Records stored in this turn that go to the successor now (pinned in the store).
    forwards: Vec<Forward>,
    /// Logs whose replication state changed in this turn.
    touched: HashSet<u64>,
    /// Logs whose link to the successor is over its budget: their appends are OVERLOADED.
    congested: HashSet<u64>,
    /// The store token of the connection each log's REPLICATEs came from last (its answers
    /// go there).
    upstream: HashMap<u64, u64>,
    /// The logs this shard copies before it joins their chains (no replica of them here).
    pub(crate) learners: Learners,
    /// Runs read for a learner's PULL beyond the one it answered, per log, with the epoch
    /// they were read in: the learner's next PULLs start there, and a keyed batch is a run of
    /// its own, so reading the disk for each would make the copy one disk read per batch.
    /// They are committed records, which never change.
    read_ahead: HashMap<u64, (u64, VecDeque<StoredRun>)>,
    /// A new map is expected since [`take_map_expected`](Self::take_map_expected): `Some(true)`
    /// after an epoch was sealed here, `Some(false)` when a learner here came close to its
    /// source.
    map_expected: Option<bool>,
}

impl Replicas {
    /// The replicas of the logs `catalog` holds, over what `store` holds of them. Every one
    /// may have lost records that others hold, so each settles before it acts; chained logs
    /// link up to their successors at once.
    pub(crate) fn load<I: Io>(
        node_id: NodeId,
        limits: Limits,
        catalog: &Catalog,
        store: &Store<I>,
    ) -> Replicas {
        let mut learners = Learners::default();
        let mut logs = HashMap::new();
        for (log_id, entry) in catalog.list(None, usize::MAX) {
            match entry.chain.last() {
                Some(&source) if is_learner_entry(entry, node_id) => {
                    learners.learn(log_id, entry.epoch, source);
                }
                _ => {
                    logs.insert(log_id, replica_of(log_id, entry, node_id, store, true));
                }
            }
        }
        let touched = logs
            .iter()
            .filter(|(_, r)| r.successor().is_some())
            .map(|(&log_id, _)| log_id)
            .collect();
        Replicas {
            node_id,
            limits,
            logs,
            forwards: Vec::new(),
            touched,
            congested: HashSet::new(),
            upstream: HashMap::new(),
            learners,
            read_ahead: HashMap::new(),
            map_expected: None,
        }
    }

    /// The replica of `log_id`, if this shard holds the log.
    pub(crate) fn get(&self, log_id: u64) -> Option<&Replica> {
        self.logs.get(&log_id)
    }

    /// The replica of `log_id`, to change (the links' side).
    pub(crate) fn get_mut(&mut self, log_id: u64) -> Option<&mut Replica> {
        self.logs.get_mut(&log_id)
    }

    /// Every replica, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Replica)> {
        self.logs.iter().map(|(&log_id, r)| (log_id, r))
    }

    /// Every replica, to change, in no particular order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut Replica)> {
        self.logs.iter_mut().map(|(&log_id, r)| (log_id, r))
    }

    /// The replica of a log of this shard, or UNKNOWN_LOG.
    pub(crate) fn known(&self, log_id: u64) -> Result<&Replica, Refusal> {
        self.logs.get(&log_id).ok_or_else(|| {
            refuse(
                ErrorCode::UnknownLog,
                ARG_NONE,
                format!("no log {log_id} on this shard"),
            )
        })
    }

    /// Records of `log_id` that may be served to readers here (committed and durable here);
    /// 0 for a log this shard does not hold.
    pub(crate) fn readable(&self, log_id: u64) -> u64 {
        self.logs.get(&log_id).map_or(0, Replica::readable)
    }

    /// The log's replica if this node is its head and may act as one (appends, trims and
    /// CHECK_TAIL go there): NOT_HEAD naming the head, or UNAVAILABLE while it settles.
    pub(crate) fn head(&mut self, log_id: u64) -> Result<&mut Replica, Refusal> {
        let replica = self.known(log_id)?;
        match replica.can_append() {
            Ok(()) => {}
            Err(Blocked::NotHead) => {
                let head = replica.head();
                return Err(refuse(
                    ErrorCode::NotHead,
                    head,
                    format!("node {head} is the head of log {log_id}"),
                ));
            }
            Err(Blocked::Sealed { end }) => {
                return Err(refuse(
                    ErrorCode::Sealed,
                    end,
                    format!("log {log_id}: the epoch is sealed here at {end}; a new one follows"),
                ))
            }
            Err(Blocked::Settling) => {
                return Err(refuse(
                    ErrorCode::Unavailable,
                    ARG_NONE,
                    format!(
                        "log {log_id}: this head restarted and waits to learn where the rest \
                         of its chain stands"
                    ),
                ))
            }
            Err(Blocked::SuccessorAhead { successor_next }) => {
                return Err(refuse(
                    ErrorCode::Unavailable,
                    ARG_NONE,
                    format!(
                        "log {log_id}: the chain holds records up to {successor_next} that \
                         this head lost; appends wait for a new epoch"
                    ),
                ))
            }
        }
        Ok(self.logs.get_mut(&log_id).expect("checked above"))
    }

    /// Whether `log_id` takes an append here now (see [`head`](Self::head)), and OVERLOADED
    /// while the rest of its chain is too far behind; returns the log's current epoch.
    pub(crate) fn admit_append(&mut self, log_id: u64) -> Result<u64, Refusal> {
        let replica = self.head(log_id)?;
        let epoch = replica.epoch();
        let uncommitted = replica.next_lsn() - replica.committed();
        let chained = replica.successor().is_some();
        if chained && uncommitted >= UNCOMMITTED_RECORDS_MAX || self.congested.contains(&log_id) {
            // The rest of the chain is slow (or down): refuse rather than pile up records
            // that cannot commit.
            return Err(refuse(
                ErrorCode::Overloaded,
                10,
                format!("log {log_id}: {uncommitted} records wait for the rest of the chain"),
            ));
        }
        Ok(epoch)
    }

    /// The head stored an APPEND's records at `lsns` in `epoch` (just now, with
    /// `Store::append_batch`, which pinned them: `pin`): they go to the successor at once if
    /// its link is in sync, else they are unpinned. A retried batch (its idempotency key was
    /// seen) got its original LSNs and stored (and pinned) nothing.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn appended<I: Io>(
        &mut self,
        log_id: u64,
        epoch: u64,
        lsns: Range<u64>,
        pin: Option<Pin>,
        fencing_token: u64,
        writer: (u64, u64),
        store: &mut Store<I>,
    ) {
        let Some(pin) = pin else {
            return;
        };
        let replica = self.logs.get_mut(&log_id).expect("admitted");
        if replica.stored(lsns.start, lsns.end, None) != Forwarding::Now {
            store.unpin(pin);
        } else {
            self.forwards.push(Forward {
                log_id,
                epoch,
                first: lsns.start,
                end: lsns.end,
                fencing_token,
                writer,
                pin,
            });
        }
        self.touch(log_id);
    }

    /// A CHECK_TAIL at the head: a barrier through the chain, settled when every replica
    /// answered what came before it (at once on a single node); returns its sequence number.
    pub(crate) fn barrier(&mut self, log_id: u64) -> Result<u64, Refusal> {
        let seq = self.head(log_id)?.barrier(None);
        self.touch(log_id);
        Ok(seq)
    }

    /// The head trimmed `log_id` before `before` in its store: the trim goes down the chain.
    pub(crate) fn trimmed(&mut self, log_id: u64, before: u64) {
        self.logs
            .get_mut(&log_id)
            .expect("trimmed at the head")
            .trim(before, None);
        self.touch(log_id);
    }

    /// A log created on this standalone node: new to everyone, nothing to settle.
    pub(crate) fn create<I: Io>(&mut self, log_id: u64, entry: &CatalogEntry, store: &Store<I>) {
        let replica = replica_of(log_id, entry, self.node_id, store, false);
        self.logs.insert(log_id, replica);
    }

    /// True if `log_id` is held here in `epoch` with `chain`.
    pub(crate) fn is_current(&self, log_id: u64, epoch: u64, chain: &[u64]) -> bool {
        self.logs
            .get(&log_id)
            .is_some_and(|r| r.epoch() == epoch && r.chain() == chain)
    }

    /// A log (or a new epoch of one) the cluster map gives this node; `recovered` unless it is
    /// new to the whole chain (then it settles first: [`Replica::recovered`]). What this node
    /// served as committed (as the replica of the epoch before, or a learner's copy, which
    /// holds committed records only) it goes on serving ([`Replica::knows_committed`]); a
    /// store started again empty holds none of it.
    pub(crate) fn install<I: Io>(
        &mut self,
        log_id: u64,
        entry: &CatalogEntry,
        store: &Store<I>,
        recovered: bool,
    ) {
        let known = match self.logs.get(&log_id) {
            Some(replica) => replica.readable(),
            None if self.learners.remove(log_id) => store.tail(log_id).map_or(0, |t| t.durable_lsn),
            None => 0,
        };
        let mut replica = replica_of(log_id, entry, self.node_id, store, recovered);
        replica.knows_committed(known);
        self.logs.insert(log_id, replica);
        self.touched.insert(log_id);
    }

    /// A new map is expected (`sealed`: after a seal here): the node polls the controller
    /// for it quickly for a while (`super::control`).
    pub(crate) fn expect_map(&mut self, sealed: bool) {
        self.map_expected = Some(sealed || self.map_expected == Some(true));
    }

    /// Whether a new map was expected since the last call, and whether after a seal.
    pub(crate) fn take_map_expected(&mut self) -> Option<bool> {
        self.map_expected.take()
    }

    /// A log deleted here, or gone from the cluster map.
    pub(crate) fn remove(&mut self, log_id: u64) {
        self.logs.remove(&log_id);
        self.read_ahead.remove(&log_id);
    }

    /// Checks that a replication request of `log_id` in `epoch` comes from the log's
    /// predecessor in its current epoch (`peer`: its connection's PEER).
    fn check_predecessor(&self, peer: Option<u64>, log_id: u64, epoch: u64) -> Result<(), Refusal> {
        let replica = self.known(log_id)?;
        let predecessor = replica.predecessor();
        if peer.is_none() || peer != predecessor {
            let from = peer.map_or_else(
                || "a connection without PEER".to_string(),
                |p| format!("node {p}"),
            );
            return Err(refuse(
                ErrorCode::UnknownNode,
                predecessor.unwrap_or(ARG_NONE),
                format!("log {log_id}: {from} is not this replica's predecessor"),
            ));
        }
        in_epoch(replica, log_id, epoch)
    }

    /// Checks that a learner PULL of `log_id` in `epoch` comes from a node (`peer`: its
    /// connection's PEER) in the log's current epoch. Any node may copy committed records,
    /// which READ serves to anyone; the epoch keeps a learner of a chain that moved on from
    /// copying an old one's view.
    fn check_learner(&self, peer: Option<u64>, log_id: u64, epoch: u64) -> Result<(), Refusal> {
        let replica = self.known(log_id)?;
        if peer.is_none() {
            return Err(refuse(
                ErrorCode::UnknownNode,
                ARG_NONE,
                format!("log {log_id}: a learner PULL on a connection without PEER"),
            ));
        }
        in_epoch(replica, log_id, epoch)
    }

    /// The SEALED refusal of traffic of `log_id`'s sealed epoch, if it is sealed here.
    fn refuse_if_sealed(&self, log_id: u64) -> Result<(), Refusal> {
        match self.logs.get(&log_id).and_then(Replica::sealed) {
            Some(end) => Err(refuse(
                ErrorCode::Sealed,
                end,
                format!("log {log_id}: the epoch is sealed here at {end}"),
            )),
            None => Ok(()),
        }
    }

    /// SEAL of `log_id` in `epoch` (the current epoch here, or WRONG_EPOCH): seals it here for
    /// good; returns its end and whether this sealed it (false: sealed already, same end).
    pub(crate) fn seal(&mut self, log_id: u64, epoch: u64) -> Result<(u64, bool), Refusal> {
        let replica = self.known(log_id)?;
        in_epoch(replica, log_id, epoch)?;
        let first = replica.sealed().is_none();
        let end = self.logs.get_mut(&log_id).expect("checked above").seal();
        Ok((end, first))
    }

    /// REPLICATE from the predecessor (on a connection whose PEER is `peer`, whose store
    /// token is `token`): checked (it must come from the log's predecessor in its current
    /// epoch), then stored, forwarded and answered as the log's replica decides. Records it
    /// carries that are here already must be the same records (else DIVERGED). Nothing
    /// refused is written.
    pub(crate) fn replicate<I: Io>(
        &mut self,
        peer: Option<u64>,
        store: &mut Store<I>,
        request_id: u64,
        r: &ReplicateRequest<'_>,
        token: u64,
    ) -> Result<(), Refusal> {
        let h = r.header;
        let log_id = h.log_id;
        self.check_predecessor(peer, log_id, h.epoch)?;
        self.refuse_if_sealed(log_id)?;
        let epoch = h.epoch;
        self.upstream.insert(log_id, token);
        self.touched.insert(log_id);
        let replica = self.logs.get_mut(&log_id).expect("checked");
        match h.kind {
            ReplicateKind::Records => {
                let count = r.records.count();
                let end = h.first_lsn + u64::from(count);
                replica.learn_committed(h.committed_lsn);
                let receive = replica.receive(h.first_lsn, end);
                if let Receive::Duplicate | Receive::Store { .. } = receive {
                    same_as_stored(store, log_id, h.first_lsn, r.records)?;
                }
                let replica = self.logs.get_mut(&log_id).expect("checked");
                match receive {
                    Receive::Gap { expected } => {
                        return Err(refuse(
                            ErrorCode::Gap,
                            expected,
                            format!(
                                "log {log_id}: records from {} leave a gap after {expected}",
                                h.first_lsn
                            ),
                        ))
                    }
                    Receive::Duplicate => replica.duplicate(end, request_id),
                    Receive::Store { from } => {
                        if self.congested.contains(&log_id) {
                            return Err(refuse(
                                ErrorCode::Overloaded,
                                10,
                                format!("log {log_id}: this replica's successor is behind"),
                            ));
                        }
                        let skip = (from - h.first_lsn) as usize;
                        let bytes = r.records.skip(skip as u32).bytes();
                        // The head's decisions go with the whole batch only (a partial resend
                        // has no key of its own).
                        let writer = if skip == 0 {
                            (h.writer_id, h.writer_seq)
                        } else {
                            (WRITER_NONE, 0)
                        };
                        let state = replica_state(h.fencing_token, writer);
                        // Records keep the epoch they were appended in (an earlier one for
                        // a replica catching up in this one); one epoch per batch.
                        let records_epoch =
                            r.records.iter().next().map_or(epoch, |r| r.header.epoch);
                        let (_, pin) = store
                            .append_replica(
                                log_id,
                                records_epoch,
                                from,
                                bytes,
                                count - skip as u32,
                                &state,
                                true,
                                UNANSWERED,
                            )
                            .map_err(|e| Refusal::of_store(&e))?;
                        let pin = pin.expect("records were stored");
                        let replica = self.logs.get_mut(&log_id).expect("checked");
                        if replica.stored(from, end, Some(request_id)) != Forwarding::Now {
                            store.unpin(pin);
                        } else {
                            self.forwards.push(Forward {
                                log_id,
                                epoch,
                                first: from,
                                end,
                                fencing_token: h.fencing_token,
                                writer: if skip == 0 {
                                    (h.writer_id, h.writer_seq)
                                } else {
                                    (WRITER_NONE, 0)
                                },
                                pin,
                            });
                        }
                    }
                }
            }
            ReplicateKind::Trim if h.trim_before > replica.next_lsn() => {
                // The predecessor trimmed past everything here (this replica joined empty, or
                // far behind): start the log again at the trim point, with the log's token
                // and the keys of the batches below it.
                let keys = keys_below(&r.keys, h.trim_before);
                store
                    .reset_log(log_id, h.trim_before, h.fencing_token, &keys, UNANSWERED)
                    .map_err(|e| Refusal::of_store(&e))?;
                tracing::info!(
                    log_id,
                    at = h.trim_before,
                    "skipped to the predecessor's trim point"
                );
                let replica = self.logs.get_mut(&log_id).expect("checked");
                replica.skip_to(
                    h.trim_before,
                    Upstream {
                        request_id,
                        vouch: h.first_lsn,
                    },
                );
            }
            ReplicateKind::Trim => {
                store
                    .trim(log_id, h.trim_before, UNANSWERED)
                    .map_err(|e| Refusal::of_store(&e))?;
                let replica = self.logs.get_mut(&log_id).expect("checked");
                replica.trim(
                    h.trim_before,
                    Some(Upstream {
                        request_id,
                        vouch: h.first_lsn,
                    }),
                );
            }
            ReplicateKind::Barrier => {
                replica.barrier(Some(Upstream {
                    request_id,
                    vouch: h.first_lsn,
                }));
            }
            ReplicateKind::Commit => replica.learn_committed(h.committed_lsn),
        }
        Ok(())
    }

    /// PULL from the predecessor (a restarted node taking back records it lost), on a
    /// connection whose PEER is `peer`: its answer, appended to `out`: one run of this
    /// replica's stored records from `from_lsn` on, durable or not, with the keys and fencing
    /// raises stored with them, and this replica's next LSN. When its records wait for the
    /// disk, nothing is appended now: the PULL of connection `conn` is parked
    /// ([`Parked::Pull`]) and handled again with the runs read (`read`) once they arrive.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pull<I: Io>(
        &mut self,
        peer: Option<u64>,
        store: &mut Store<I>,
        reads: &mut Reads,
        conn: u64,
        request_id: u64,
        pull: &PullRequest,
        read: Option<Vec<StoredRun>>,
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        let log_id = pull.log_id;
        if pull.learner {
            self.check_learner(peer, log_id, pull.epoch)?;
        } else {
            self.check_predecessor(peer, log_id, pull.epoch)?;
        }
        self.refuse_if_sealed(log_id)?;
        let replica = &self.logs[&log_id];
        let epoch = replica.epoch();
        let (trim_point, fencing_token) = store
            .tail(log_id)
            .map_or((0, 0), |t| (t.trim_point, t.fencing_token));
        // A learner copies committed records only (what readers see here), from the trim
        // point on: below it, an empty answer at the trim point with the log's fencing token
        // (as a TRIM to a replica that joined: section 6.11) starts its copy there.
        let (from, end, next) = if pull.learner {
            let trimmed = pull.from_lsn < trim_point;
            let from = pull.from_lsn.max(trim_point);
            let end = if trimmed { from } else { replica.readable() };
            (from, end, replica.readable())
        } else {
            (pull.from_lsn, replica.next_lsn(), replica.next_lsn())
        };
        let mut records_left = u64::from(pull.max_records.min(self.limits.batch_records_max))
            .min(end.saturating_sub(from));
        let mut read_ahead = match (read, self.read_ahead.remove(&log_id)) {
            (Some(runs), _) => runs.into(),
            (None, Some((read_in, runs))) if pull.learner && read_in == epoch => runs,
            _ => VecDeque::new(),
        };
        // A learner's answer is several runs, one PULL response each (all but the last with
        // `more`), up to LEARN_ANSWER_BYTES: a keyed batch is a run of its own, and one
        // round trip per batch would copy a log of small batches slower than it grows.
        let mut at = from;
        let mut sent_bytes = 0;
        let mut answered = false;
        while !answered {
            let run = if records_left == 0 {
                None
            } else if let Some((run, rest)) = run_at(std::mem::take(&mut read_ahead), at, end) {
                read_ahead = rest;
                Some(run)
            } else {
                // Only an answer's first run reads (the next ones come from what it read).
                debug_assert_eq!(at, from, "a read for a run after the answer's first");
                let request = ReadRequest {
                    log_id,
                    from: at,
                    max_records: records_left as usize,
                    max_bytes: self.limits.frame_bytes_max as usize,
                    kind: ReadKind::StoredRuns,
                };
                let owner = Owner::Answer {
                    conn,
                    request_id,
                    parked: Parked::Pull(*pull),
                };
                let mut runs: VecDeque<StoredRun> = match reads.start_answer(store, request, owner)
                {
                    Ok(Started::Now(ReadOutput::Runs(runs))) => runs.into(),
                    Ok(Started::Now(ReadOutput::Records(_))) => unreachable!("a read of runs"),
                    // Answered when they arrive (nothing of the answer is out yet).
                    Ok(Started::Waiting(_)) => return Ok(()),
                    Err(e) => return Err(Refusal::of_store(&e)),
                };
                let first = runs.pop_front();
                read_ahead = runs;
                first
            };
            let mut body = Vec::new();
            let mut keys = Vec::new();
            let (first, count, run_epoch, state) = match run {
                Some(run) => {
                    let (count, state) =
                        encode_run(&mut body, log_id, &run, self.limits.records_bytes_max());
                    (run.first_lsn(), count, run.records[0].epoch, state)
                }
                None if from > pull.from_lsn => {
                    // With the keys of the batches below the trim point (PROTOCOL.md 6.13a).
                    keys = store.writer_keys(log_id, from);
                    let state = ReplicaState {
                        fencing_token: Some(fencing_token).filter(|&t| t != 0),
                        writer: None,
                    };
                    (from, 0, epoch, state)
                }
                None => (at, 0, epoch, ReplicaState::default()),
            };
            at = first + u64::from(count);
            records_left = records_left.saturating_sub(u64::from(count));
            sent_bytes += body.len();
            let next_is_ready = read_ahead
                .front()
                .is_some_and(|r| r.first_lsn() == at && r.end_lsn() <= end);
            answered = !pull.learner
                || count == 0
                || records_left == 0
                || sent_bytes >= LEARN_ANSWER_BYTES
                || !next_is_ready;
            let form = RecordForm::Replicated {
                log_id,
                epoch: run_epoch,
                first_lsn: first,
            };
            let records = Records::parse(&body, count, form, &self.limits.replication())
                .expect("stored records encode as a valid batch");
            let (writer_id, writer_seq) = state.writer.unwrap_or((WRITER_NONE, 0));
            let mut key_bytes = Vec::new();
            let response = Response::Pull(PullResponse {
                log_id,
                epoch: run_epoch,
                first_lsn: first,
                next_lsn: next,
                fencing_token: state.fencing_token.unwrap_or(TOKEN_NONE),
                writer_id,
                writer_seq,
                more: !answered,
                records,
                keys: Keys::encode(&mut key_bytes, &keys),
            });
            encode_response(out, request_id, Opcode::Pull, &response);
        }
        if pull.learner {
            self.read_ahead.insert(log_id, (epoch, read_ahead));
        }
        Ok(())
    }

    /// A store ack: records or a trim of a log became durable here.
    pub(crate) fn on_store_ack(&mut self, ack: &Ack) {
        let Some(replica) = self.logs.get_mut(&ack.log_id) else {
            return;
        };
        if ack.lsns.is_empty() {
            replica.trim_durable(ack.lsns.start);
        } else {
            replica.durable(ack.lsns.end);
        }
        self.touch(ack.log_id);
    }

    /// The store token of the connection `log_id`'s REPLICATEs came from last: its answers
    /// ([`encode_answers`]) go there.
    pub(crate) fn upstream(&self, log_id: u64) -> Option<u64> {
        self.upstream.get(&log_id).copied()
    }

    /// Marks a log for the end of the turn's replication pump (answers, sends, catch-up): only
    /// logs with more than one replica have anything there, so a standalone node's appends
    /// skip it.
    fn touch(&mut self, log_id: u64) {
        if self.logs.get(&log_id).is_some_and(|r| r.chain().len() > 1) {
            self.touched.insert(log_id);
        }
    }

    /// Marks a log whose state the links changed (an answer, a refusal, pulled records).
    pub(crate) fn mark(&mut self, log_id: u64) {
        self.touched.insert(log_id);
    }

    /// The records stored in this turn that go to their successors now.
    pub(crate) fn take_forwards(&mut self) -> Vec<Forward> {
        std::mem::take(&mut self.forwards)
    }

    /// Moves the logs whose state changed in this turn to `into`.
    pub(crate) fn take_touched(&mut self, into: &mut Vec<u64>) {
        into.extend(self.touched.drain());
    }

    /// Recomputes which logs' links are over their budget: those `over(log_id, successor)`
    /// says are (their appends, and the REPLICATEs this node would store, are OVERLOADED).
    /// `any` is false when no link is over: then nothing is asked.
    pub(crate) fn set_congested(&mut self, any: bool, over: impl Fn(u64, NodeId) -> bool) {
        if !any && self.congested.is_empty() {
            return;
        }
        self.congested.clear();
        for (&log_id, replica) in &self.logs {
            if replica.successor().is_some_and(|s| over(log_id, s)) {
                self.congested.insert(log_id);
            }
        }
    }

    /// Lag of the logs this shard forwards: (logs whose successor is behind, records behind).
    pub(crate) fn lag(&self) -> (usize, u64) {
        let mut behind = 0;
        let mut records = 0;
        for replica in self.logs.values() {
            let lag = replica.lag();
            if lag > 0 {
                behind += 1;
                records += lag;
            }
        }
        (behind, records)
    }
}

/// The run of `runs` (read ahead, in LSN order) that starts at `from` and ends by `end`, and
/// the runs after it; `None` if there is none.
fn run_at(
    mut runs: VecDeque<StoredRun>,
    from: u64,
    end: u64,
) -> Option<(StoredRun, VecDeque<StoredRun>)> {
    while runs.front().is_some_and(|r| r.first_lsn() < from) {
        runs.pop_front();
    }
    let run = runs.pop_front()?;
    (run.first_lsn() == from && run.end_lsn() <= end).then_some((run, runs))
}

/// WRONG_EPOCH unless `replica` (of `log_id`) is in `epoch`.
fn in_epoch(replica: &Replica, log_id: u64, epoch: u64) -> Result<(), Refusal> {
    let current = replica.epoch();
    if epoch != current {
        return Err(refuse(
            ErrorCode::WrongEpoch,
            current,
            format!("log {log_id} is in epoch {current}, not {epoch}"),
        ));
    }
    Ok(())
}

/// The replication state of a catalog's log on this node, over what the store holds (a
/// standalone node's log is a chain of one); `recovered` if other replicas may hold records
/// this one lost (it then settles before it acts: [`Replica::recovered`]).
fn replica_of<I: Io>(
    log_id: u64,
    entry: &CatalogEntry,
    node_id: u64,
    store: &Store<I>,
    recovered: bool,
) -> Replica {
    let (next, trim) = store
        .tail(log_id)
        .map_or((0, 0), |t| (t.next_lsn, t.trim_point));
    let chain = if entry.chain.is_empty() {
        vec![node_id]
    } else {
        entry.chain.clone()
    };
    let mut replica = if recovered {
        Replica::recovered(log_id, node_id, entry.epoch, chain, next, trim)
    } else {
        Replica::new(log_id, node_id, entry.epoch, chain, next, trim)
    };
    if entry.sealed {
        replica.seal();
    }
    replica
}

/// Checks that records a predecessor sent again (a resend after a reconnect) are the ones
/// stored here at the same LSNs (same epoch, timestamp, length and CRC). Replicas that hold
/// different records at one LSN have diverged, which the protocol never produces: refuse
/// with DIVERGED rather than answer for records that are not the predecessor's.
fn same_as_stored<I: Io>(
    store: &mut Store<I>,
    log_id: u64,
    first: u64,
    records: Records<'_>,
) -> Result<(), Refusal> {
    let Some(tail) = store.tail(log_id) else {
        return Ok(());
    };
    // Below the trim point the records were committed, so on every replica: nothing to check
    // (and nothing to read).
    let from = first.max(tail.trim_point);
    let end = (first + u64::from(records.count())).min(tail.next_lsn);
    if from >= end {
        return Ok(());
    }
    let here = store
        .read_stored(log_id, from, (end - from) as usize, usize::MAX)
        .map_err(|e| Refusal::of_store(&e))?;
    let sent = records.iter().skip((from - first) as usize);
    for (mine, theirs) in here.iter().zip(sent) {
        let h = theirs.header;
        let same = mine.lsn == h.lsn
            && mine.epoch == h.epoch
            && mine.timestamp_us == h.timestamp_us
            && mine.crc == h.crc
            && mine.payload.len() == h.len as usize;
        if !same {
            tracing::error!(
                log_id,
                lsn = mine.lsn,
                "the predecessor sent a record that differs from the one stored here at the \
                 same LSN: the replicas diverged"
            );
            return Err(refuse(
                ErrorCode::Diverged,
                mine.lsn,
                format!(
                    "log {log_id}: record {} differs from the one stored here",
                    mine.lsn
                ),
            ));
        }
    }
    Ok(())
}

/// Encodes a log's answers to its predecessor's REPLICATEs into `out` (the output of the
/// connection they came from), emptying `answers`.
pub(crate) fn encode_answers(out: &mut Vec<u8>, log_id: u64, answers: &mut Vec<Answer>) {
    for a in answers.drain(..) {
        let response = Response::Replicate(ReplicateResponse {
            log_id,
            durable_lsn: a.durable_lsn,
            trim_point: a.trim_point,
            next_lsn: a.next_lsn,
        });
        encode_response(out, a.request_id, Opcode::Replicate, &response);
    }
}

/// The idempotency keys a replica that starts a log at `at` takes from its source (a TRIM
/// that skips it there, a learner's answer at the trim point): those of batches that begin
/// below `at`, as the source sends them (the one `at` cuts through included: its records from
/// `at` come without it); any other names a batch whose first records it will get with it.
pub(crate) fn keys_below(keys: &Keys<'_>, at: u64) -> Vec<WriterKey> {
    keys.iter().filter(|k| k.first_lsn < at).collect()
}
