//! The server side of the wire protocol (PROTOCOL.md) for one shard: turns the frames a
//! connection received into store operations and encoded answers, and acknowledgements of
//! durable appends and trims into APPEND and TRIM responses, in the order they were asked.
//!
//! APPEND record bytes go from the connection's receive buffer into the store's write buffer
//! in one copy (`Batch::Encoded`: the wire layout is the disk layout). Conditions, fencing
//! tokens and idempotency keys are checked by the store (`AppendOptions`), which keeps their
//! state durable; a retried batch is answered with its original LSNs once they are durable,
//! in its place in the order.
//!
//! Every log has its replication state ([`Replica`]): an append is answered once its records
//! are durable here *and* committed on the log's chain; reads, tails and subscriptions serve
//! only committed records. A standalone node's logs are chains of one in epoch 1, where
//! durable here is committed. Subscriptions are pumped from the store's
//! tail cache after every loop turn, within their credit and while the connection's output
//! is not backed up.

use chainlog_net::{
    decode_request, encode_error, encode_response, parse_frame, AppendRequest, CreateLogResponse,
    DescribeLogResponse, ErrorCode, ErrorResponse, Frame, HelloResponse, Limits, ListLogsResponse,
    LogEntries, LogEntry, LogRef, Opcode, ReadBuilder, ReadKind, RecordHeader, Request, Response,
    Role, SubscribeResponse, TailResponse, ARG_NONE, EPOCH_CURRENT, LSN_FROM_TAIL,
    LSN_UNCONDITIONAL, PROTOCOL_VERSION, TOKEN_NONE, WRITER_NONE,
};
use chainlog_storage::io::Io;
use chainlog_storage::{fatal, Ack, AppendOptions, Batch, Clock, Error, ReadRecord, Store};

use super::catalog::{log_id_of, Catalog, LogEntry as CatalogEntry};
use super::chain::Forward;
use super::conn::{Barrier, Conn, Pending, Session, Subscription, Until};
use super::metrics::ShardMetrics;
use crate::controller::ClusterMap;
use crate::replication::{Answer, Blocked, Forwarding, Receive, Replica, Upstream};
use chainlog_net::{
    PullRequest, PullResponse, ReplicateKind, ReplicateRequest, ReplicateResponse, SealRequest,
    SealResponse,
};
use chainlog_storage::{ReplicaState, StoredRun};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Queued output of a connection at which the shard stops handling its requests (and reading
/// it) until the socket drains.
pub(crate) const OUTPUT_MAX: usize = 8 << 20;

/// Records of a log its head holds and the rest of the chain has not yet (uncommitted) at
/// which the head refuses more appends with OVERLOADED: a slow or stopped replica must not
/// make the head pile up records without bound (65,536 records is 0.3 s of appends at
/// 200,000 records/s).
const UNCOMMITTED_RECORDS_MAX: u64 = 1 << 16;

/// Subscriptions one connection may hold.
const SUBSCRIPTIONS_MAX: usize = 64;

/// A connection's queued output above which its subscriptions wait (they resume as the
/// socket drains), so a slow reader cannot make the shard buffer without bound.
const PUSH_OUTPUT_MAX: usize = 4 << 20;

/// Store token of operations nobody waits for (the trim that frees a deleted log's space):
/// it names no connection slot.
pub(crate) const UNANSWERED: u64 = u64::MAX;

/// One shard's protocol state.
#[derive(Debug)]
pub(crate) struct Server {
    /// What this shard measures of its requests.
    pub(crate) metrics: ShardMetrics,
    /// The clock of the stage latencies, and the time the current loop turn's completions
    /// were seen (an ack's durability is seen then).
    clock: Arc<dyn Clock>,
    turn_us: u64,
    /// When the frames being handled arrived.
    received_us: u64,
    shard_index: u16,
    shard_count: u16,
    node_id: u64,
    limits: Limits,
    catalog: Catalog,
    /// The replication state of every log of the catalog (a single node's logs are chains of
    /// one: durable here is committed).
    pub(crate) replicas: HashMap<u64, Replica>,
    /// Records stored in this turn that go to the successor now (pinned in the store).
    pub(crate) forwards: Vec<Forward>,
    /// Logs whose replication state changed in this turn.
    pub(crate) touched: HashSet<u64>,
    /// Logs whose link to the successor is over its budget: their appends are OVERLOADED.
    pub(crate) congested: HashSet<u64>,
    /// The store token of the connection each log's REPLICATEs came from last (its answers
    /// go there).
    upstream: HashMap<u64, u64>,
    /// A cluster member: logs come from the controller, which serves CREATE_LOG and
    /// DELETE_LOG.
    cluster: bool,
    /// Acks the store gave while the server waited for it ([`Server::take_acks`]).
    acks_taken: Vec<Ack>,
    /// Per log of the cluster map: the epoch since which this node's store holds the log as
    /// its epochs' heads sequenced it (it started the log anew, or cut it, when it installed
    /// that epoch), or `u64::MAX` once the log left this node. An append sequenced here in
    /// an earlier epoch may not be at its LSNs any more: it is never acknowledged
    /// ([`Server::drain`]).
    rebuilt_in: HashMap<u64, u64>,
}

/// Who a shard's server is: its place in its node and cluster, and the limits it enforces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Identity {
    pub(crate) shard_index: u16,
    pub(crate) shard_count: u16,
    pub(crate) node_id: u64,
    pub(crate) limits: Limits,
    /// A cluster member (logs come from the controller).
    pub(crate) cluster: bool,
}

/// A failed request's answer, before encoding.
struct Refusal {
    code: ErrorCode,
    arg0: u64,
    arg1: u64,
    message: String,
}

fn refuse(code: ErrorCode, arg0: u64, message: impl Into<String>) -> Refusal {
    // TOO_LARGE's arg1 names the offending record; none does here (PROTOCOL.md 8).
    let arg1 = if code == ErrorCode::TooLarge {
        ARG_NONE
    } else {
        0
    };
    Refusal {
        code,
        arg0,
        arg1,
        message: message.into(),
    }
}

/// The wire error for a store error.
fn store_refusal(e: &Error) -> Refusal {
    match *e {
        Error::Overloaded => refuse(ErrorCode::Overloaded, 1, e.to_string()),
        Error::ConditionFailed { tail } => refuse(ErrorCode::ConditionFailed, tail, e.to_string()),
        Error::Fenced { token } => refuse(ErrorCode::Fenced, token, e.to_string()),
        Error::WriterSeq { last, .. } => refuse(ErrorCode::WriterSeq, last, e.to_string()),
        Error::TrimBeyondTail { tail, .. } => {
            refuse(ErrorCode::ConditionFailed, tail, e.to_string())
        }
        Error::TooLarge { max, .. } => refuse(ErrorCode::TooLarge, max as u64, e.to_string()),
        Error::TooManyLogs { max } => refuse(ErrorCode::TooLarge, max as u64, e.to_string()),
        Error::Trimmed { trim_point } => refuse(ErrorCode::Trimmed, trim_point, e.to_string()),
        Error::Gap { expected } => refuse(ErrorCode::Gap, expected, e.to_string()),
        Error::UnknownLog(_) => refuse(ErrorCode::UnknownLog, ARG_NONE, e.to_string()),
        Error::Checksum { index } => refuse(ErrorCode::Malformed, index as u64, e.to_string()),
        Error::Malformed(_) | Error::EmptyBatch => {
            refuse(ErrorCode::Malformed, ARG_NONE, e.to_string())
        }
        _ => {
            tracing::error!(error = %e, "storage error while serving a request");
            refuse(ErrorCode::Unavailable, ARG_NONE, e.to_string())
        }
    }
}

impl Server {
    pub(crate) fn new<I: Io>(
        who: Identity,
        catalog: Catalog,
        store: &Store<I>,
        clock: Arc<dyn Clock>,
    ) -> Server {
        let Identity {
            shard_index,
            shard_count,
            node_id,
            limits,
            cluster,
        } = who;
        // Every replica the catalog knows at startup may have lost records that others hold.
        let replicas: HashMap<u64, Replica> = catalog
            .list(None, usize::MAX)
            .map(|(log_id, entry)| (log_id, replica_of(log_id, entry, node_id, store, true)))
            .collect();
        // Chained logs link up to their successors at once: they settle before anything
        // else may happen to them.
        let touched = replicas
            .iter()
            .filter(|(_, r)| r.successor().is_some())
            .map(|(&log_id, _)| log_id)
            .collect();
        Server {
            metrics: ShardMetrics::new(),
            clock,
            turn_us: 0,
            received_us: 0,
            shard_index,
            shard_count,
            node_id,
            limits,
            catalog,
            replicas,
            forwards: Vec::new(),
            touched,
            congested: HashSet::new(),
            upstream: HashMap::new(),
            cluster,
            acks_taken: Vec::new(),
            rebuilt_in: HashMap::new(),
        }
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.clock.monotonic_us()
    }

    /// Marks the start of a loop turn: completions seen now (acks, received frames).
    pub(crate) fn start_turn(&mut self) {
        self.turn_us = self.now_us();
    }

    /// Logs this shard owns.
    pub(crate) fn logs(&self) -> usize {
        self.catalog.list(None, usize::MAX).count()
    }

    /// The shard that owns `log_id` if it is this one; otherwise the WRONG_SHARD answer that
    /// names the owner (`name` for the message, when the request named the log).
    fn route(&self, log_id: u64, name: Option<&str>) -> Result<u16, Refusal> {
        let owner = (log_id % u64::from(self.shard_count)) as u16;
        if owner == self.shard_index {
            return Ok(owner);
        }
        let what = name.map_or_else(|| log_id.to_string(), |name| format!("{name:?}"));
        Err(refuse(
            ErrorCode::WrongShard,
            u64::from(owner),
            format!("log {what} lives on shard {owner}"),
        ))
    }

    /// Handles the whole frames at the start of the connection's input; returns the bytes
    /// consumed. Stops at the first frame that closes the connection, and while the
    /// connection's queued output is at [`OUTPUT_MAX`] (the rest waits in the receive buffer
    /// until the socket drains: a client that sends requests and never reads the answers
    /// costs bounded memory).
    pub(crate) fn handle_input<I: Io>(
        &mut self,
        conn: &mut Conn,
        store: &mut Store<I>,
        token: u64,
    ) -> usize {
        self.received_us = self.turn_us;
        let (input, session) = conn.input();
        let mut consumed = 0;
        while !session.closing && session.out.len() < OUTPUT_MAX {
            // A peer's REPLICATE header is larger than an APPEND's: its frames may be too
            // (PROTOCOL.md 6.11).
            let limits = if session.peer.is_some() {
                self.limits.replication()
            } else {
                self.limits
            };
            match parse_frame(&input[consumed..], &limits) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    consumed += frame.frame_bytes();
                    self.handle_frame(&frame, session, store, token);
                }
                Err(e) => {
                    // The framing is broken: answer once and close (PROTOCOL.md).
                    self.metrics.error(e.code().name());
                    let message = e.to_string();
                    encode_error(&mut session.out, 0, None, &e.response(&message));
                    session.closing = true;
                    consumed = input.len();
                }
            }
        }
        consumed
    }

    /// A frame that cannot fit the receive buffer (limits misconfigured): refuse and close.
    pub(crate) fn refuse_oversized(&self, conn: &mut Conn) {
        let session = &mut conn.session;
        let message = "a frame larger than the connection's receive buffer";
        encode_error(
            &mut session.out,
            0,
            None,
            &ErrorResponse::new(
                ErrorCode::TooLarge,
                u64::from(self.limits.frame_bytes_max),
                message,
            ),
        );
        session.closing = true;
    }

    fn handle_frame<I: Io>(
        &mut self,
        frame: &Frame<'_>,
        session: &mut Session,
        store: &mut Store<I>,
        token: u64,
    ) {
        let request_id = frame.request_id;
        let request = match decode_request(frame, &self.limits) {
            Ok(request) => request,
            Err(e) if !session.greeted && Opcode::from_u16(frame.opcode) != Some(Opcode::Hello) => {
                // Whatever is wrong with it, a first frame that is not a HELLO is MALFORMED.
                self.metrics.error(ErrorCode::Malformed.name());
                let refusal = refuse(
                    ErrorCode::Malformed,
                    ARG_NONE,
                    format!("the first frame of a connection must be HELLO ({e})"),
                );
                let response = ErrorResponse {
                    code: refusal.code,
                    arg0: refusal.arg0,
                    arg1: refusal.arg1,
                    message: &refusal.message,
                };
                encode_error(
                    &mut session.out,
                    request_id,
                    Opcode::from_u16(frame.opcode),
                    &response,
                );
                session.closing = true;
                return;
            }
            Err(e) => {
                self.metrics.error(e.code().name());
                if e.code().closes_connection() {
                    session.closing = true;
                }
                let refusal = Refusal {
                    code: e.code(),
                    arg0: e.arg0(),
                    arg1: e.arg1(),
                    message: e.to_string(),
                };
                // Even a refused APPEND is answered after the appends before it (in order).
                match Opcode::from_u16(frame.opcode) {
                    Some(opcode) => answer(session, request_id, opcode, refusal),
                    None => {
                        let response = ErrorResponse {
                            code: refusal.code,
                            arg0: refusal.arg0,
                            arg1: refusal.arg1,
                            message: &refusal.message,
                        };
                        encode_error(&mut session.out, request_id, None, &response);
                    }
                }
                return;
            }
        };
        let opcode = request.opcode();
        self.metrics.request(opcode.name());
        if !session.greeted && opcode != Opcode::Hello {
            let refusal = refuse(
                ErrorCode::Malformed,
                ARG_NONE,
                "the first frame of a connection must be HELLO",
            );
            answer_now(session, request_id, opcode, &refusal);
            session.closing = true;
            return;
        }
        if let Some(log_id) = request.routed_log() {
            if let Err(refusal) = self.route(log_id, None) {
                return answer(session, request_id, opcode, refusal);
            }
        }
        let result = match request {
            Request::Hello(hello) => {
                self.hello(session, request_id, hello.min_version, hello.max_version)
            }
            Request::Append(append) => self.append(session, store, request_id, &append, token),
            Request::Read(read) => self.read(
                session,
                store,
                request_id,
                read.log_id,
                read.from_lsn,
                read.max_records,
                read.max_bytes,
            ),
            Request::CheckTail { log_id } | Request::TailHint { log_id } => {
                self.tail(session, store, request_id, opcode, log_id)
            }
            Request::Trim(trim) => self.trim(
                session,
                store,
                request_id,
                trim.log_id,
                trim.before_lsn,
                token,
            ),
            Request::CreateLog(create) => self.create_log(
                session,
                store,
                request_id,
                create.name,
                create.replication_factor,
            ),
            Request::DescribeLog(describe) => {
                self.describe_log(session, store, request_id, describe.by)
            }
            Request::ListLogs(list) => {
                self.list_logs(session, request_id, list.after_log_id, list.max)
            }
            Request::DeleteLog { log_id } => self.delete_log(session, store, request_id, log_id),
            Request::Peer(peer) => self.peer(session, request_id, peer.node_id),
            Request::Replicate(replicate) => {
                self.replicate(session, store, request_id, &replicate, token)
            }
            Request::Pull(pull) => self.pull(session, store, request_id, &pull),
            Request::Seal(seal) => self.seal(session, request_id, &seal),
            Request::Subscribe(sub) => self.subscribe(
                session,
                store,
                request_id,
                sub.log_id,
                sub.from_lsn,
                sub.credit_records,
            ),
            Request::Credit(credit) => {
                if let Some(sub) = session
                    .subscriptions
                    .iter_mut()
                    .find(|s| s.id == credit.subscription_id)
                {
                    sub.credit = sub.credit.saturating_add(u64::from(credit.records));
                }
                encode_response(
                    &mut session.out,
                    request_id,
                    Opcode::Credit,
                    &Response::Credit,
                );
                Ok(())
            }
            Request::RegisterNode(_)
            | Request::Heartbeat(_)
            | Request::GetMap(_)
            | Request::ReconfigureLog(_)
            | Request::DrainNode(_) => Err(refuse(
                ErrorCode::NotController,
                ARG_NONE,
                "this is a node, not the controller",
            )),
            Request::Unsubscribe(unsub) => {
                if let Some(i) = session
                    .subscriptions
                    .iter()
                    .position(|s| s.id == unsub.subscription_id)
                {
                    let sub = session.subscriptions.swap_remove(i);
                    let tail = self.readable(sub.log_id);
                    // The END push comes before the UNSUBSCRIBE's response (PROTOCOL.md 7).
                    ReadBuilder::new(
                        &mut session.out,
                        sub.id,
                        ReadKind::PushEnd,
                        tail,
                        &self.limits,
                    )
                    .finish();
                }
                encode_response(
                    &mut session.out,
                    request_id,
                    Opcode::Unsubscribe,
                    &Response::Unsubscribe,
                );
                Ok(())
            }
        };
        if let Err(refusal) = result {
            self.metrics.error(refusal.code.name());
            if refusal.code == ErrorCode::Malformed || refusal.code == ErrorCode::UnsupportedVersion
            {
                session.closing = true;
            }
            answer(session, request_id, opcode, refusal);
        }
    }

    fn hello(
        &mut self,
        session: &mut Session,
        request_id: u64,
        min: u16,
        max: u16,
    ) -> Result<(), Refusal> {
        if session.greeted {
            return Err(refuse(
                ErrorCode::Malformed,
                ARG_NONE,
                "HELLO was already exchanged on this connection",
            ));
        }
        if !(min..=max).contains(&PROTOCOL_VERSION) {
            return Err(refuse(
                ErrorCode::UnsupportedVersion,
                u64::from(PROTOCOL_VERSION),
                "this node speaks protocol version 1",
            ));
        }
        session.greeted = true;
        let hello = HelloResponse {
            version: PROTOCOL_VERSION,
            shard_index: self.shard_index,
            shard_count: self.shard_count,
            frame_bytes_max: self.limits.frame_bytes_max,
            record_bytes_max: self.limits.record_bytes_max,
            batch_records_max: self.limits.batch_records_max,
            node_id: self.node_id,
            role: Role::Node,
        };
        encode_response(
            &mut session.out,
            request_id,
            Opcode::Hello,
            &Response::Hello(hello),
        );
        Ok(())
    }

    fn known(&self, log_id: u64) -> Result<(), Refusal> {
        self.replica(log_id).map(|_| ())
    }

    /// The replication state of a log of this shard.
    fn replica(&self, log_id: u64) -> Result<&Replica, Refusal> {
        self.replicas.get(&log_id).ok_or_else(|| {
            refuse(
                ErrorCode::UnknownLog,
                ARG_NONE,
                format!("no log {log_id} on this shard"),
            )
        })
    }

    /// The log's replica if this node is its head (appends, trims and CHECK_TAIL go there).
    fn head_replica(&mut self, log_id: u64) -> Result<&mut Replica, Refusal> {
        let replica = self.replica(log_id)?;
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
        Ok(self.replicas.get_mut(&log_id).expect("checked above"))
    }

    fn append<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        append: &AppendRequest<'_>,
        token: u64,
    ) -> Result<(), Refusal> {
        let h = append.header;
        let replica = self.head_replica(h.log_id)?;
        let epoch = replica.epoch();
        let uncommitted = replica.next_lsn() - replica.committed();
        let chained = replica.successor().is_some();
        if chained && uncommitted >= UNCOMMITTED_RECORDS_MAX || self.congested.contains(&h.log_id) {
            // The rest of the chain is slow (or down): refuse rather than pile up records
            // that cannot commit.
            return Err(refuse(
                ErrorCode::Overloaded,
                10,
                format!(
                    "log {}: {uncommitted} records wait for the rest of the chain",
                    h.log_id
                ),
            ));
        }
        if h.epoch != EPOCH_CURRENT && h.epoch != epoch {
            return Err(refuse(
                ErrorCode::WrongEpoch,
                epoch,
                format!("epoch {} is not current (it is {epoch})", h.epoch),
            ));
        }
        let options = AppendOptions {
            expected_lsn: (h.expected_lsn != LSN_UNCONDITIONAL).then_some(h.expected_lsn),
            fencing_token: (h.fencing_token != TOKEN_NONE).then_some(h.fencing_token),
            writer: (h.writer_id != WRITER_NONE).then_some((h.writer_id, h.writer_seq)),
        };
        let batch = Batch::Encoded {
            bytes: append.records.bytes(),
            count: append.records.count(),
        };
        let (lsns, pin) = store
            .append_batch(h.log_id, epoch, &options, batch, true, token)
            .map_err(|e| store_refusal(&e))?;
        let replica = self.replicas.get_mut(&h.log_id).expect("checked above");
        // A retried batch (its idempotency key was seen) gets its original LSNs: nothing new
        // was stored (and nothing pinned).
        if let Some(pin) = pin {
            if replica.stored(lsns.start, lsns.end, None) != Forwarding::Now {
                store.unpin(pin);
            } else {
                self.forwards.push(Forward {
                    log_id: h.log_id,
                    epoch,
                    first: lsns.start,
                    end: lsns.end,
                    fencing_token: h.fencing_token,
                    writer: (h.writer_id, h.writer_seq),
                    pin,
                });
            }
            self.touch(h.log_id);
        }
        let received_us = self.received_us;
        self.metrics
            .queue_us
            .saturating_record(self.now_us().saturating_sub(received_us).max(1));
        session.pending.push_back(Pending::Append {
            request_id,
            received_us,
            log_id: h.log_id,
            epoch,
            first: lsns.start,
            end: lsns.end,
            durable_us: None,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn read<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        log_id: u64,
        from: u64,
        max_records: u32,
        max_bytes: u32,
    ) -> Result<(), Refusal> {
        let tail = self.replica(log_id)?.readable();
        let records = if store.tail(log_id).is_some() {
            // Only committed records are served (a replica may hold durable ones that are
            // not committed yet).
            let max_records = u64::from(max_records.min(self.limits.batch_records_max))
                .min(tail.saturating_sub(from)) as usize;
            store
                .read(log_id, from, max_records, max_bytes as usize)
                .map_err(|e| store_refusal(&e))?
        } else {
            Vec::new()
        };
        let mut builder = ReadBuilder::new(
            &mut session.out,
            request_id,
            ReadKind::Read,
            tail,
            &self.limits,
        );
        push_records(&mut builder, log_id, &records);
        builder.finish();
        Ok(())
    }

    fn subscribe<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        log_id: u64,
        from: u64,
        credit: u32,
    ) -> Result<(), Refusal> {
        self.known(log_id)?;
        if session.subscriptions.iter().any(|s| s.id == request_id) {
            return Err(refuse(
                ErrorCode::Malformed,
                ARG_NONE,
                "a subscription with this request id is active",
            ));
        }
        if session.subscriptions.len() >= SUBSCRIPTIONS_MAX {
            return Err(refuse(
                ErrorCode::Overloaded,
                1000,
                format!("at most {SUBSCRIPTIONS_MAX} subscriptions per connection"),
            ));
        }
        let tail = self.readable(log_id);
        let trim_point = store.tail(log_id).map_or(0, |t| t.trim_point);
        let start = if from == LSN_FROM_TAIL { tail } else { from };
        if start < trim_point {
            return Err(refuse(
                ErrorCode::Trimmed,
                trim_point,
                format!("records below {trim_point} are trimmed"),
            ));
        }
        session.subscriptions.push(Subscription {
            id: request_id,
            log_id,
            next_lsn: start,
            credit: u64::from(credit),
        });
        let ack = Response::Subscribe(SubscribeResponse { start_lsn: start });
        encode_response(&mut session.out, request_id, Opcode::Subscribe, &ack);
        self.pump(session, store);
        Ok(())
    }

    /// Pushes committed records to the connection's subscriptions, within their credit, while
    /// the connection's output is not backed up. Ends subscriptions whose log was deleted or
    /// trimmed past them. Returns whether any subscription remains.
    pub(crate) fn pump<I: Io>(&self, session: &mut Session, store: &mut Store<I>) -> bool {
        let mut i = 0;
        while i < session.subscriptions.len() {
            let sub = &mut session.subscriptions[i];
            let readable = self.readable(sub.log_id);
            let ended = if self.catalog.get(sub.log_id).is_none() {
                Some(refuse(
                    ErrorCode::UnknownLog,
                    ARG_NONE,
                    format!("log {} was deleted", sub.log_id),
                ))
            } else {
                loop {
                    let Some(t) = store.tail(sub.log_id) else {
                        break None;
                    };
                    if sub.next_lsn < t.trim_point {
                        break Some(refuse(
                            ErrorCode::Trimmed,
                            t.trim_point,
                            "the subscription fell below the trim point",
                        ));
                    }
                    if sub.next_lsn >= readable
                        || sub.credit == 0
                        || session.out.len() >= PUSH_OUTPUT_MAX
                    {
                        break None;
                    }
                    let max = sub
                        .credit
                        .min(u64::from(self.limits.batch_records_max))
                        .min(readable - sub.next_lsn) as usize;
                    let body_budget = self.limits.frame_bytes_max as usize / 2;
                    let records = match store.read(sub.log_id, sub.next_lsn, max, body_budget) {
                        Ok(records) => records,
                        Err(e) => break Some(store_refusal(&e)),
                    };
                    let mut builder = ReadBuilder::new(
                        &mut session.out,
                        sub.id,
                        ReadKind::Push,
                        readable,
                        &self.limits,
                    );
                    let pushed = push_records(&mut builder, sub.log_id, &records);
                    if pushed == 0 {
                        // Nothing fit (cannot happen within the limits): never send an empty push.
                        drop(builder);
                        break None;
                    }
                    builder.finish();
                    sub.next_lsn += pushed;
                    sub.credit -= pushed;
                }
            };
            match ended {
                Some(refusal) => {
                    let sub = session.subscriptions.swap_remove(i);
                    let response = ErrorResponse::new(refusal.code, refusal.arg0, &refusal.message);
                    encode_response(
                        &mut session.out,
                        sub.id,
                        Opcode::Subscribe,
                        &Response::PushError(response),
                    );
                }
                None => i += 1,
            }
        }
        !session.subscriptions.is_empty()
    }

    fn tail<I: Io>(
        &mut self,
        session: &mut Session,
        store: &Store<I>,
        request_id: u64,
        opcode: Opcode,
        log_id: u64,
    ) -> Result<(), Refusal> {
        if opcode == Opcode::CheckTail {
            // A barrier through the chain: answered when every replica has answered what
            // came before it (at once on a single node).
            let seq = self.head_replica(log_id)?.barrier(None);
            self.touch(log_id);
            session.barriers.push(Barrier {
                request_id,
                log_id,
                until: Until::Settled { seq },
            });
            self.answer_barriers(session, store);
            return Ok(());
        }
        let replica = self.replica(log_id)?;
        let tail = TailResponse {
            tail: replica.readable(),
            trim_point: store.tail(log_id).map_or(0, |t| t.trim_point),
            epoch: replica.epoch(),
        };
        encode_response(
            &mut session.out,
            request_id,
            opcode,
            &Response::TailHint(tail),
        );
        Ok(())
    }

    /// Answers the connection's CHECK_TAILs whose barriers settled and SEALs whose end is
    /// durable here (with UNAVAILABLE, if the connection is closing or the log is gone).
    fn answer_barriers<I: Io>(&self, session: &mut Session, store: &Store<I>) {
        let mut i = 0;
        while i < session.barriers.len() {
            let b = &session.barriers[i];
            let trim_point = store.tail(b.log_id).map_or(0, |t| t.trim_point);
            let answer = match (self.replicas.get(&b.log_id), b.until) {
                (Some(r), Until::Settled { seq }) if r.barriers().1 >= seq => {
                    Ok(Response::CheckTail(TailResponse {
                        tail: r.committed(),
                        trim_point,
                        epoch: r.epoch(),
                    }))
                }
                (Some(_), Until::Durable { epoch, end })
                    if store.tail(b.log_id).map_or(0, |t| t.durable_lsn) >= end =>
                {
                    Ok(Response::Seal(SealResponse {
                        log_id: b.log_id,
                        epoch,
                        end_lsn: end,
                        trim_point,
                    }))
                }
                (Some(_), _) if !session.closing => {
                    i += 1;
                    continue;
                }
                _ => Err(refuse(
                    ErrorCode::Unavailable,
                    ARG_NONE,
                    "the log left this node, or the connection closed, before the answer",
                )),
            };
            let b = session.barriers.swap_remove(i);
            let opcode = match b.until {
                Until::Settled { .. } => Opcode::CheckTail,
                Until::Durable { .. } => Opcode::Seal,
            };
            match answer {
                Ok(response) => encode_response(&mut session.out, b.request_id, opcode, &response),
                Err(refusal) => answer_now(session, b.request_id, opcode, &refusal),
            }
        }
    }

    /// SEAL (controller or admin): seals the log's epoch here, durably and for good, and
    /// answers with its end once every record below it is durable here. Sealing again is
    /// answered with the same end; a SEAL of another epoch than the replica's current one is
    /// WRONG_EPOCH (the log moved on, or this node has not heard of that epoch yet).
    fn seal(
        &mut self,
        session: &mut Session,
        request_id: u64,
        seal: &SealRequest,
    ) -> Result<(), Refusal> {
        let log_id = seal.log_id;
        let replica = self.replica(log_id)?;
        let epoch = replica.epoch();
        if seal.epoch != epoch {
            return Err(refuse(
                ErrorCode::WrongEpoch,
                epoch,
                format!("log {log_id} is in epoch {epoch} here, not {}", seal.epoch),
            ));
        }
        let first = replica.sealed().is_none();
        let end = self
            .replicas
            .get_mut(&log_id)
            .expect("checked above")
            .seal();
        if first {
            tracing::info!(log_id, epoch, end, "epoch sealed");
            if let Err(e) = self.catalog.seal(log_id, epoch) {
                fatal(&format!("shard {}: {e}", self.shard_index));
            }
        }
        session.barriers.push(Barrier {
            request_id,
            log_id,
            until: Until::Durable { epoch, end },
        });
        Ok(())
    }

    /// The SEALED refusal of traffic of `log_id`'s sealed epoch, if it is sealed here.
    fn refuse_if_sealed(&self, log_id: u64) -> Result<(), Refusal> {
        match self.replicas.get(&log_id).and_then(Replica::sealed) {
            Some(end) => Err(refuse(
                ErrorCode::Sealed,
                end,
                format!("log {log_id}: the epoch is sealed here at {end}"),
            )),
            None => Ok(()),
        }
    }

    fn trim<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        log_id: u64,
        before: u64,
        token: u64,
    ) -> Result<(), Refusal> {
        let committed = self.head_replica(log_id)?.committed();
        if store.tail(log_id).is_none() {
            // Nothing was ever appended: only a trim to 0 is within the tail.
            if before > 0 {
                return Err(refuse(
                    ErrorCode::ConditionFailed,
                    0,
                    format!("cannot trim before {before}: the log's tail is 0"),
                ));
            }
            encode_response(&mut session.out, request_id, Opcode::Trim, &Response::Trim);
            return Ok(());
        }
        if before > committed {
            // Only committed records are trimmed: a trim travels down the chain after the
            // records it trims, and every replica has them.
            return Err(refuse(
                ErrorCode::ConditionFailed,
                committed,
                format!("cannot trim before {before}: the log's committed tail is {committed}"),
            ));
        }
        store
            .trim(log_id, before, token)
            .map_err(|e| store_refusal(&e))?;
        self.replicas
            .get_mut(&log_id)
            .expect("checked above")
            .trim(before, None);
        self.touch(log_id);
        session.pending.push_back(Pending::Trim {
            request_id,
            log_id,
            before,
            local: false,
        });
        Ok(())
    }

    fn create_log<I: Io>(
        &mut self,
        session: &mut Session,
        store: &Store<I>,
        request_id: u64,
        name: &str,
        replication_factor: u8,
    ) -> Result<(), Refusal> {
        self.not_in_cluster()?;
        let log_id = log_id_of(name);
        if log_id == 0 || log_id == u64::MAX {
            return Err(refuse(
                ErrorCode::Malformed,
                ARG_NONE,
                "this name maps to a reserved log id; choose another",
            ));
        }
        let owner = self.route(log_id, Some(name))?;
        if replication_factor != 1 {
            return Err(refuse(
                ErrorCode::TooLarge,
                1,
                "a single node stores one replica (replication factor 1)",
            ));
        }
        let entry = CatalogEntry::standalone(name);
        let replica = replica_of(log_id, &entry, self.node_id, store, false);
        match self.catalog.create(log_id, entry) {
            Ok(true) => {}
            Ok(false) => {
                return Err(refuse(
                    ErrorCode::LogExists,
                    log_id,
                    format!("log {name:?} exists"),
                ))
            }
            Err(e) => fatal(&format!("shard {}: {e}", self.shard_index)),
        }
        self.replicas.insert(log_id, replica);
        let response = Response::CreateLog(CreateLogResponse {
            log_id,
            shard: owner,
        });
        encode_response(&mut session.out, request_id, Opcode::CreateLog, &response);
        Ok(())
    }

    fn describe_log<I: Io>(
        &mut self,
        session: &mut Session,
        store: &Store<I>,
        request_id: u64,
        log: LogRef<'_>,
    ) -> Result<(), Refusal> {
        let log_id = match log {
            LogRef::Id(id) => id,
            LogRef::Name(name) => log_id_of(name),
        };
        let owner = self.route(log_id, None)?;
        let (Some(entry), Some(replica)) = (self.catalog.get(log_id), self.replicas.get(&log_id))
        else {
            return Err(refuse(
                ErrorCode::UnknownLog,
                ARG_NONE,
                format!("no log {log_id}"),
            ));
        };
        let response = Response::DescribeLog(DescribeLogResponse {
            log_id,
            tail: replica.readable(),
            trim_point: store.tail(log_id).map_or(0, |t| t.trim_point),
            epoch: replica.epoch(),
            shard: owner,
            replication_factor: entry.replication_factor,
            name: &entry.name,
        });
        encode_response(&mut session.out, request_id, Opcode::DescribeLog, &response);
        Ok(())
    }

    fn list_logs(
        &mut self,
        session: &mut Session,
        request_id: u64,
        after: u64,
        max: u32,
    ) -> Result<(), Refusal> {
        let max = max.min(self.limits.list_max) as usize;
        let entries: Vec<LogEntry<'_>> = self
            .catalog
            .list(Some(after), max)
            .map(|(log_id, e)| LogEntry {
                log_id,
                name: &e.name,
            })
            .collect();
        let response = Response::ListLogs(ListLogsResponse {
            entries: LogEntries::from_slice(&entries),
        });
        encode_response(&mut session.out, request_id, Opcode::ListLogs, &response);
        Ok(())
    }

    fn delete_log<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        log_id: u64,
    ) -> Result<(), Refusal> {
        self.not_in_cluster()?;
        self.route(log_id, None)?;
        match self.catalog.delete(log_id) {
            Ok(true) => {}
            Ok(false) => {
                return Err(refuse(
                    ErrorCode::UnknownLog,
                    ARG_NONE,
                    format!("no log {log_id}"),
                ))
            }
            Err(e) => fatal(&format!("shard {}: {e}", self.shard_index)),
        }
        self.replicas.remove(&log_id);
        self.free_space(log_id, store);
        encode_response(
            &mut session.out,
            request_id,
            Opcode::DeleteLog,
            &Response::DeleteLog,
        );
        Ok(())
    }

    /// Installs the logs of a cluster map that this shard holds a replica of (new logs, new
    /// epochs), durably in the catalog, and removes those that are gone from it (their space
    /// is trimmed away).
    pub(crate) fn apply_map<I: Io>(&mut self, map: &ClusterMap, store: &mut Store<I>) {
        let me = self.node_id;
        let (shard_count, shard_index) = (u64::from(self.shard_count), self.shard_index);
        let mine: Vec<&crate::controller::MapLog> = map
            .logs()
            .iter()
            .filter(|l| l.chain.contains(&me) && (l.log_id % shard_count) as u16 == shard_index)
            .collect();
        let mut kept = HashSet::new();
        for log in mine {
            kept.insert(log.log_id);
            let here = self.replicas.get(&log.log_id);
            if here.is_some_and(|r| r.epoch() > log.epoch) {
                continue; // A map older than what this node has installed.
            }
            let current =
                here.is_some_and(|r| r.epoch() == log.epoch && r.chain() == log.chain.as_slice());
            let before = self.catalog.get(log.log_id).cloned();
            // A seal of this very epoch here stands.
            let sealed = before
                .as_ref()
                .is_some_and(|e| e.epoch == log.epoch && e.sealed);
            let entry = CatalogEntry {
                name: log.name.clone(),
                replication_factor: log.replication_factor,
                epoch: log.epoch,
                chain: log.chain.clone(),
                sealed,
            };
            if !current && !self.prepare_store(log, before.as_ref(), store) {
                self.rebuilt_in.insert(log.log_id, log.epoch);
            }
            // A log this node never held, with no records here, is new to the whole chain:
            // nobody holds records of it. Anything else settles first.
            let recovered = before.is_some() || store.tail(log.log_id).is_some();
            if let Err(e) = self.catalog.install(log.log_id, entry.clone()) {
                fatal(&format!("shard {}: {e}", self.shard_index));
            }
            if !current {
                tracing::info!(log_id = log.log_id, name = log.name, epoch = log.epoch, chain = ?log.chain, start_lsn = log.start_lsn, "log installed");
                let replica = replica_of(log.log_id, &entry, me, store, recovered);
                self.replicas.insert(log.log_id, replica);
                self.touched.insert(log.log_id);
            }
        }
        let gone: Vec<u64> = self
            .catalog
            .list(None, usize::MAX)
            .map(|(id, _)| id)
            .filter(|id| !kept.contains(id))
            .collect();
        for log_id in gone {
            tracing::info!(log_id, "log removed from the cluster map: deleting it here");
            self.rebuilt_in.insert(log_id, u64::MAX);
            if let Err(e) = self.catalog.delete(log_id) {
                fatal(&format!("shard {}: {e}", self.shard_index));
            }
            self.replicas.remove(&log_id);
            self.free_space(log_id, store);
        }
    }

    /// Makes the store fit for `log`'s epoch before this node installs it (the epoch is new
    /// here; `before` is what the catalog had). A replica of the epoch just before, that
    /// sealed it (the controller builds a new chain from the old one's sealed members, then
    /// nodes outside the old chain), keeps its records, cut back to the new epoch's start if
    /// it holds more (never acknowledged: every acknowledged record is below the start).
    /// Any other node is a new replica of the log: whatever its store holds of it may be
    /// leftovers of an epoch it was sealed out of, so the log starts again empty and is
    /// copied from its predecessor. Both are made durable before the catalog names the new
    /// epoch, so a restart never finds the epoch installed over a store not fit for it.
    /// Returns true if the store holds this node's records of the earlier epochs as they
    /// were (a survivor that cut nothing).
    fn prepare_store<I: Io>(
        &mut self,
        log: &crate::controller::MapLog,
        before: Option<&CatalogEntry>,
        store: &mut Store<I>,
    ) -> bool {
        let survivor = before.is_some_and(|e| {
            e.epoch + 1 == log.epoch && e.sealed && e.chain.contains(&self.node_id)
        });
        let Some(tail) = store.tail(log.log_id) else {
            return survivor; // Nothing here of this log.
        };
        let cut = if survivor {
            if tail.next_lsn <= log.start_lsn {
                return true;
            }
            tracing::info!(
                log_id = log.log_id,
                from = log.start_lsn,
                next = tail.next_lsn,
                "cutting records of the sealed epoch beyond its end"
            );
            store.truncate(log.log_id, log.start_lsn, UNANSWERED)
        } else {
            if tail.next_lsn == 0 && tail.trim_point == 0 {
                return false;
            }
            tracing::info!(
                log_id = log.log_id,
                next = tail.next_lsn,
                "a new replica of this log here: starting it again empty"
            );
            store.reset_log(log.log_id, 0, 0, UNANSWERED)
        };
        // The acks this wait collects belong to the shard's next turn (appends of its
        // connections among them).
        let durable = cut.and_then(|()| store.sync_all(&mut self.acks_taken));
        if let Err(e) = durable {
            fatal(&format!(
                "shard {}: preparing log {}: {e}",
                self.shard_index, log.log_id
            ));
        }
        false
    }

    /// Acks the store gave while the server waited for it (installing a map): the shard
    /// handles them before those of its next poll.
    pub(crate) fn take_acks(&mut self) -> Vec<Ack> {
        std::mem::take(&mut self.acks_taken)
    }

    /// Trims away a deleted log's records (nobody waits for this trim's ack).
    fn free_space<I: Io>(&mut self, log_id: u64, store: &mut Store<I>) {
        if let Some(t) = store.tail(log_id) {
            if let Err(e) = store.trim(log_id, t.next_lsn, UNANSWERED) {
                tracing::warn!(log_id, error = %e, "could not trim a deleted log");
            }
        }
    }

    /// CREATE_LOG and DELETE_LOG belong to the controller in a cluster.
    fn not_in_cluster(&self) -> Result<(), Refusal> {
        if self.cluster {
            return Err(refuse(
                ErrorCode::NotController,
                ARG_NONE,
                "this node is a cluster member: create and delete logs through the controller",
            ));
        }
        Ok(())
    }

    /// PEER: the connection carries replication traffic from node `node_id`.
    fn peer(
        &mut self,
        session: &mut Session,
        request_id: u64,
        node_id: u64,
    ) -> Result<(), Refusal> {
        if session.peer.is_some() {
            return Err(refuse(
                ErrorCode::Malformed,
                ARG_NONE,
                "PEER was already sent on this connection",
            ));
        }
        if node_id == self.node_id {
            return Err(refuse(
                ErrorCode::UnknownNode,
                ARG_NONE,
                format!("node {node_id} is this node"),
            ));
        }
        session.peer = Some(node_id);
        encode_response(&mut session.out, request_id, Opcode::Peer, &Response::Peer);
        Ok(())
    }

    /// Checks that a replication request of `log_id` in `epoch` comes from the log's
    /// predecessor in its current epoch (its connection's PEER).
    fn check_predecessor(&self, session: &Session, log_id: u64, epoch: u64) -> Result<(), Refusal> {
        let replica = self.replica(log_id)?;
        let predecessor = replica.predecessor();
        if session.peer.is_none() || session.peer != predecessor {
            let from = session.peer.map_or_else(
                || "a connection without PEER".to_string(),
                |p| format!("node {p}"),
            );
            return Err(refuse(
                ErrorCode::UnknownNode,
                predecessor.unwrap_or(ARG_NONE),
                format!("log {log_id}: {from} is not this replica's predecessor"),
            ));
        }
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

    /// REPLICATE from the predecessor: checked (it must come from the log's predecessor in
    /// its current epoch), then stored, forwarded and answered as the log's replica decides.
    /// Records it carries that are here already must be the same records (else DIVERGED).
    /// Nothing refused is written.
    fn replicate<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        r: &ReplicateRequest<'_>,
        token: u64,
    ) -> Result<(), Refusal> {
        let h = r.header;
        let log_id = h.log_id;
        self.check_predecessor(session, log_id, h.epoch)?;
        self.refuse_if_sealed(log_id)?;
        let epoch = h.epoch;
        self.upstream.insert(log_id, token);
        self.touched.insert(log_id);
        let replica = self.replicas.get_mut(&log_id).expect("checked");
        match h.kind {
            ReplicateKind::Records => {
                let count = r.records.count();
                let end = h.first_lsn + u64::from(count);
                replica.learn_committed(h.committed_lsn);
                let receive = replica.receive(h.first_lsn, end);
                if let Receive::Duplicate | Receive::Store { .. } = receive {
                    same_as_stored(store, log_id, h.first_lsn, r.records)?;
                }
                let replica = self.replicas.get_mut(&log_id).expect("checked");
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
                        let state = ReplicaState {
                            fencing_token: (h.fencing_token != TOKEN_NONE)
                                .then_some(h.fencing_token),
                            writer: (h.writer_id != WRITER_NONE && skip == 0)
                                .then_some((h.writer_id, h.writer_seq)),
                        };
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
                            .map_err(|e| store_refusal(&e))?;
                        let pin = pin.expect("records were stored");
                        let replica = self.replicas.get_mut(&log_id).expect("checked");
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
                // far behind): start the log again at the trim point, with the log's token.
                store
                    .reset_log(log_id, h.trim_before, h.fencing_token, UNANSWERED)
                    .map_err(|e| store_refusal(&e))?;
                tracing::info!(
                    log_id,
                    at = h.trim_before,
                    "skipped to the predecessor's trim point"
                );
                let replica = self.replicas.get_mut(&log_id).expect("checked");
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
                    .map_err(|e| store_refusal(&e))?;
                let replica = self.replicas.get_mut(&log_id).expect("checked");
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

    /// PULL from the predecessor (a restarted node taking back records it lost): one run of
    /// this replica's stored records from `from_lsn` on, durable or not, with the keys and
    /// fencing raises stored with them, and this replica's next LSN.
    fn pull<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        pull: &PullRequest,
    ) -> Result<(), Refusal> {
        let log_id = pull.log_id;
        self.check_predecessor(session, log_id, pull.epoch)?;
        self.refuse_if_sealed(log_id)?;
        let replica = &self.replicas[&log_id];
        let (epoch, next) = (replica.epoch(), replica.next_lsn());
        let max_records = pull.max_records.min(self.limits.batch_records_max) as usize;
        let run = if pull.from_lsn < next {
            store
                .read_stored_runs(
                    log_id,
                    pull.from_lsn,
                    max_records,
                    self.limits.frame_bytes_max as usize,
                )
                .map_err(|e| store_refusal(&e))?
                .into_iter()
                .next()
        } else {
            None
        };
        let mut body = Vec::new();
        let (first, count, run_epoch, state) = match run {
            Some(run) => {
                let (count, state) =
                    encode_run(&mut body, log_id, &run, self.limits.records_bytes_max());
                (run.first_lsn(), count, run.records[0].epoch, state)
            }
            None => (pull.from_lsn, 0, epoch, ReplicaState::default()),
        };
        let form = chainlog_net::RecordForm::Replicated {
            log_id,
            epoch: run_epoch,
            first_lsn: first,
        };
        let records = chainlog_net::Records::parse(&body, count, form, &self.limits.replication())
            .expect("stored records encode as a valid batch");
        let (writer_id, writer_seq) = state.writer.unwrap_or((WRITER_NONE, 0));
        let response = Response::Pull(PullResponse {
            log_id,
            epoch: run_epoch,
            first_lsn: first,
            next_lsn: next,
            fencing_token: state.fencing_token.unwrap_or(TOKEN_NONE),
            writer_id,
            writer_seq,
            records,
        });
        encode_response(&mut session.out, request_id, Opcode::Pull, &response);
        Ok(())
    }

    /// Sends a log's answers to the connection its REPLICATEs came from (dropped if it is
    /// gone: the predecessor resends after it reconnects).
    pub(crate) fn answer_upstream(
        &mut self,
        log_id: u64,
        answers: &mut Vec<Answer>,
        conns: &mut [Option<Conn>],
    ) {
        let token = self.upstream.get(&log_id).copied();
        let conn = token.and_then(|token| {
            let (slot, generation) = super::conn::token_conn(token);
            conns
                .get_mut(slot)
                .and_then(Option::as_mut)
                .filter(|c| c.generation == generation)
        });
        let Some(conn) = conn else {
            answers.clear();
            return;
        };
        for a in answers.drain(..) {
            let response = Response::Replicate(ReplicateResponse {
                log_id,
                durable_lsn: a.durable_lsn,
                trim_point: a.trim_point,
                next_lsn: a.next_lsn,
            });
            encode_response(
                &mut conn.session.out,
                a.request_id,
                Opcode::Replicate,
                &response,
            );
        }
    }

    /// Marks a log for the end of the turn's replication pump (answers, sends, catch-up): only
    /// logs with more than one replica have anything there, so a standalone node's appends
    /// skip it.
    fn touch(&mut self, log_id: u64) {
        if self
            .replicas
            .get(&log_id)
            .is_some_and(|r| r.chain().len() > 1)
        {
            self.touched.insert(log_id);
        }
    }

    /// A store ack: records or a trim of a log became durable here.
    pub(crate) fn on_store_ack(&mut self, ack: &Ack) {
        let Some(replica) = self.replicas.get_mut(&ack.log_id) else {
            return;
        };
        if ack.lsns.is_empty() {
            replica.trim_durable(ack.lsns.start);
        } else {
            replica.durable(ack.lsns.end);
        }
        self.touch(ack.log_id);
    }

    /// A store ack for one of the connection's appends or trims (they come in the order
    /// the connection's operations were taken): it is durable here. Answers what is ready.
    pub(crate) fn acknowledge<I: Io>(&mut self, session: &mut Session, store: &Store<I>) {
        let mut i = session.local_next;
        loop {
            match session.pending.get_mut(i) {
                Some(Pending::Append { durable_us, .. }) => {
                    *durable_us = Some(self.turn_us);
                    break;
                }
                Some(Pending::Trim { local, .. }) => {
                    *local = true;
                    break;
                }
                Some(Pending::Failed { .. }) => i += 1,
                None => {
                    // Only a connection given up on at a stop drops what it waited for.
                    assert!(
                        session.closing,
                        "a store ack with no append or trim waiting"
                    );
                    return;
                }
            }
        }
        session.local_next = i + 1;
        self.drain(session, store);
    }

    /// Answers, in order, the connection's appends and trims that are durable here and
    /// committed on the whole chain, the errors queued behind them, and its settled
    /// CHECK_TAILs. An append sequenced in an epoch whose records this node no longer holds
    /// as they were (it was sealed out, started the log anew or cut it since) is never
    /// answered: committed LSNs of a later epoch say nothing of it, and it may or may not be
    /// in the log (an ERROR would say it is not), so the connection closes with it and what
    /// follows unanswered, and the client learns that their outcome is unknown.
    pub(crate) fn drain<I: Io>(&mut self, session: &mut Session, store: &Store<I>) {
        while let Some(front) = session.pending.front() {
            let ready = match *front {
                Pending::Append {
                    log_id,
                    epoch,
                    end,
                    durable_us,
                    ..
                } => {
                    if self
                        .rebuilt_in
                        .get(&log_id)
                        .is_some_and(|&since| epoch < since)
                    {
                        tracing::info!(
                            log_id,
                            epoch,
                            unanswered = session.pending.len(),
                            "appends of an epoch this node no longer holds: closing their \
                             connection unanswered"
                        );
                        session.pending.clear();
                        session.local_next = 0;
                        session.closing = true;
                        break;
                    }
                    durable_us.is_some()
                        && self
                            .replicas
                            .get(&log_id)
                            .is_none_or(|r| r.committed() >= end)
                }
                Pending::Trim {
                    log_id,
                    before,
                    local,
                    ..
                } => {
                    local
                        && self
                            .replicas
                            .get(&log_id)
                            .is_none_or(|r| r.trim_committed() >= before)
                }
                Pending::Failed { .. } => true,
            };
            if !ready {
                break;
            }
            let front = session.pending.pop_front().expect("checked");
            session.local_next = session.local_next.saturating_sub(1);
            match front {
                Pending::Append {
                    request_id,
                    received_us,
                    log_id,
                    first,
                    end,
                    durable_us,
                    ..
                } => {
                    let now = self.now_us();
                    // How long the answer waited for the rest of the chain after the
                    // records were durable here.
                    let durable_us = durable_us.expect("ready appends are durable here");
                    self.metrics
                        .replication_us
                        .saturating_record(self.turn_us.saturating_sub(durable_us).max(1));
                    self.metrics
                        .total_us
                        .saturating_record(now.saturating_sub(received_us).max(1));
                    self.metrics
                        .ack_us
                        .saturating_record(now.saturating_sub(self.turn_us).max(1));
                    self.metrics
                        .answered(session, log_id, first, received_us, durable_us, now);
                    let response = chainlog_net::AppendResponse {
                        first_lsn: first,
                        count: (end - first) as u32,
                    };
                    encode_response(
                        &mut session.out,
                        request_id,
                        Opcode::Append,
                        &Response::Append(response),
                    );
                }
                Pending::Trim { request_id, .. } => {
                    encode_response(&mut session.out, request_id, Opcode::Trim, &Response::Trim);
                }
                Pending::Failed {
                    request_id,
                    opcode,
                    code,
                    arg0,
                    arg1,
                    message,
                } => {
                    let response = ErrorResponse {
                        code,
                        arg0,
                        arg1,
                        message: &message,
                    };
                    encode_error(
                        &mut session.out,
                        request_id,
                        Opcode::from_u16(opcode),
                        &response,
                    );
                }
            }
        }
        if !session.barriers.is_empty() {
            self.answer_barriers(session, store);
        }
    }

    /// Records of `log_id` that may be served to readers here (committed and durable here).
    fn readable(&self, log_id: u64) -> u64 {
        self.replicas.get(&log_id).map_or(0, Replica::readable)
    }

    /// [`readable`](Self::readable), for the shard's owner.
    pub(crate) fn readable_lsn(&self, log_id: u64) -> u64 {
        self.readable(log_id)
    }
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

/// The header a record read back was stored with (its CRC is the client's: end to end).
fn stored_header(log_id: u64, r: &ReadRecord) -> RecordHeader {
    RecordHeader {
        len: r.payload.len() as u32,
        crc: r.crc,
        log_id,
        lsn: r.lsn,
        epoch: r.epoch,
        timestamp_us: r.timestamp_us,
    }
}

/// Appends a stored run's records to `out` in the stamped layout a REPLICATE or a PULL's
/// answer carries, within `bytes_max`; returns how many went in and the decisions that go
/// with them (none if the run had to be cut: they belong to its end). A keyed batch always
/// fits (it arrived in one APPEND).
pub(crate) fn encode_run(
    out: &mut Vec<u8>,
    log_id: u64,
    run: &StoredRun,
    bytes_max: usize,
) -> (u32, ReplicaState) {
    let start = out.len();
    let mut count = 0;
    for r in &run.records {
        let size = chainlog_net::RECORD_HEADER_BYTES + r.payload.len().next_multiple_of(8);
        if count > 0 && out.len() - start + size > bytes_max {
            break;
        }
        out.extend_from_slice(bytemuck::bytes_of(&stored_header(log_id, r)));
        out.extend_from_slice(&r.payload);
        out.resize(
            out.len() + (r.payload.len().next_multiple_of(8) - r.payload.len()),
            0,
        );
        count += 1;
    }
    let whole = count as usize == run.records.len();
    if !whole && run.state.writer.is_some() {
        tracing::warn!(
            log_id,
            first = run.first_lsn(),
            "a keyed batch did not fit one message: it goes without its key"
        );
    }
    (
        count,
        if whole {
            run.state
        } else {
            ReplicaState::default()
        },
    )
}

/// Checks that records a predecessor sent again (a resend after a reconnect) are the ones
/// stored here at the same LSNs (same epoch, timestamp, length and CRC). Replicas that hold
/// different records at one LSN have diverged, which the protocol never produces: refuse
/// with DIVERGED rather than answer for records that are not the predecessor's.
fn same_as_stored<I: Io>(
    store: &mut Store<I>,
    log_id: u64,
    first: u64,
    records: chainlog_net::Records<'_>,
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
        .map_err(|e| store_refusal(&e))?;
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

/// Adds stored records to a READ answer or a push, until the frame is full; returns how many
/// went in. The records' CRCs travel unchanged (end to end).
fn push_records(builder: &mut ReadBuilder<'_>, log_id: u64, records: &[ReadRecord]) -> u64 {
    let mut pushed = 0;
    for r in records {
        if builder.push(&stored_header(log_id, r), &r.payload).is_err() {
            break;
        }
        pushed += 1;
    }
    pushed
}

/// Encodes an error now.
fn answer_now(session: &mut Session, request_id: u64, opcode: Opcode, refusal: &Refusal) {
    let response = ErrorResponse {
        code: refusal.code,
        arg0: refusal.arg0,
        arg1: refusal.arg1,
        message: &refusal.message,
    };
    encode_error(&mut session.out, request_id, Some(opcode), &response);
}

/// Encodes an error, or queues it behind the appends and trims still waiting, so that answers
/// keep the order of the requests that wait for durability.
fn answer(session: &mut Session, request_id: u64, opcode: Opcode, refusal: Refusal) {
    let ordered = matches!(opcode, Opcode::Append | Opcode::Trim);
    if ordered && !session.pending.is_empty() {
        session.pending.push_back(Pending::Failed {
            request_id,
            opcode: opcode as u16,
            code: refusal.code,
            arg0: refusal.arg0,
            arg1: refusal.arg1,
            message: refusal.message,
        });
    } else {
        answer_now(session, request_id, opcode, &refusal);
    }
}
