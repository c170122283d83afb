//! The server side of the wire protocol (PROTOCOL.md) for one shard: turns the frames a
//! connection received into store operations and encoded answers, and acknowledgements of
//! durable appends and trims into APPEND and TRIM responses, in the order they were asked.
//!
//! A frame goes through two steps: [`Server::decode`] decodes it or refuses it (broken
//! framing or body, a connection that did not start with HELLO, a log of another shard), and
//! [`Server::dispatch`] serves the request. Every refusal, from either step or from a handler,
//! becomes an ERROR answer in one place ([`Server::refuse`]): counted, closing the
//! connection when its code says so, and queued behind the appends and trims still waiting
//! when it answers one of those, so that their answers keep the order of the requests.
//!
//! APPEND record bytes go from the connection's receive buffer into the store's write buffer
//! in one copy (`Batch::Encoded`: the wire layout is the disk layout). Conditions, fencing
//! tokens and idempotency keys are checked by the store (`AppendOptions`), which keeps their
//! state durable; a retried batch is answered with its original LSNs once they are durable,
//! in its place in the order.
//!
//! Every log has its replication state, owned by [`Replicas`] (`super::replicas`): an append
//! is answered once its records are durable here *and* committed on the log's chain; reads,
//! tails and subscriptions (`super::subscriptions`) serve only committed records. A
//! standalone node's logs are chains of one in epoch 1, where durable here is committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chainlog_net::cluster::{ClusterMap, MapLog};
use chainlog_net::{
    decode_request, encode_response, log_id_of, parse_frame, AppendRequest, CreateLogResponse,
    DescribeLogResponse, ErrorCode, Frame, HelloResponse, Limits, ListLogsResponse, LogEntries,
    LogEntry, LogRef, Opcode, ReadBuilder, ReadKind, ReadRequest as ReadMessage, Request, Response,
    Role, SealRequest, SealResponse, TailResponse, ARG_NONE, CONNECTION_RETRY_MS, EPOCH_CURRENT,
    LSN_UNCONDITIONAL, PROTOCOL_VERSION, RF_DEFAULT, TOKEN_NONE, WRITER_NONE,
};
use chainlog_storage::io::Io;
use chainlog_storage::{
    fatal, Ack, AppendOptions, Batch, Clock, FatalReason, ReadKind as StoreReadKind, ReadOutput,
    ReadRecord, ReadRequest, Store,
};

use super::catalog::{Catalog, CatalogError, LogEntry as CatalogEntry};
use super::conn::{Barrier, Conn, Pending, Session, Until};
use super::learners::is_learner_entry;
use super::metrics::ShardMetrics;
use super::reads::{Owner, Parked, Reads, Started};
use super::records::push_records;
use super::refusal::{refuse, Refusal};
use super::replicas::{Replicas, UNANSWERED};

/// Queued output of a connection at which the shard stops handling its requests (and reading
/// it) until the socket drains.
pub(crate) const OUTPUT_MAX: usize = 8 << 20;

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
    /// The replication state of every log of the catalog.
    pub(crate) replicas: Replicas,
    /// A cluster member: logs come from the controller, which serves CREATE_LOG and
    /// DELETE_LOG.
    cluster: bool,
    /// Acks the store gave while the server waited for it (installing a map): their
    /// replication side was handled then; their connections are answered in the next turn
    /// ([`Server::store_acked`]).
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

/// A frame that [`Server::decode`] refused: the opcode to answer with (if the frame named a
/// known one) and why.
type Refused = (Option<Opcode>, Refusal);

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
        Server {
            metrics: ShardMetrics::new(),
            clock,
            turn_us: 0,
            received_us: 0,
            shard_index,
            shard_count,
            node_id,
            limits,
            replicas: Replicas::load(node_id, limits, &catalog, store),
            catalog,
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
        self.catalog.len()
    }

    /// The catalog's size on disk (snapshot and change log).
    pub(crate) fn catalog_bytes(&self) -> usize {
        self.catalog.bytes()
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
            format!("log {what} is on shard {owner}"),
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
        reads: &mut Reads,
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
                    match self.decode(&frame, session) {
                        Ok(request) => {
                            self.dispatch(request, frame.request_id, session, store, reads, token)
                        }
                        Err((opcode, refusal)) => {
                            self.refuse(session, frame.request_id, opcode, refusal)
                        }
                    }
                }
                Err(e) => {
                    // The framing is broken: answer once and close (PROTOCOL.md).
                    self.refuse(session, 0, None, Refusal::of_decoding(&e));
                    session.closing = true;
                    session.discard_oversized(&e, input.len() - consumed);
                    consumed = input.len();
                }
            }
        }
        consumed
    }

    /// A frame that cannot fit the receive buffer (limits misconfigured): refuse and close.
    pub(crate) fn refuse_oversized(&mut self, conn: &mut Conn) {
        let refusal = Refusal {
            code: ErrorCode::TooLarge,
            arg0: u64::from(self.limits.frame_bytes_max),
            arg1: 0,
            message: "a frame larger than the connection's receive buffer".into(),
        };
        self.refuse(&mut conn.session, 0, None, refusal);
        conn.session.closing = true;
    }

    /// Refuses a connection over the shard's `max`: OVERLOADED (retry after 100 ms), then
    /// closed (PROTOCOL.md 3.5).
    pub(crate) fn refuse_connection(&mut self, conn: &mut Conn, max: usize) {
        self.metrics.connections_refused += 1;
        let refusal = Refusal {
            code: ErrorCode::Overloaded,
            arg0: CONNECTION_RETRY_MS,
            arg1: 0,
            message: format!("too many connections: this shard holds {max} at most"),
        };
        self.refuse(&mut conn.session, 0, None, refusal);
        conn.session.closing = true;
    }

    /// The request a frame carries, or why it is refused: its body does not decode, the
    /// connection did not start with HELLO, or it is about a log of another shard.
    fn decode<'f>(&mut self, frame: &Frame<'f>, session: &Session) -> Result<Request<'f>, Refused> {
        let named = Opcode::from_u16(frame.opcode);
        let request = match decode_request(frame, &self.limits) {
            Ok(request) => request,
            Err(e) if !session.greeted && named != Some(Opcode::Hello) => {
                // Whatever is wrong with it, a first frame that is not a HELLO is MALFORMED.
                let message = format!("the first frame of a connection must be HELLO ({e})");
                return Err((named, refuse(ErrorCode::Malformed, ARG_NONE, message)));
            }
            Err(e) => return Err((named, Refusal::of_decoding(&e))),
        };
        let opcode = request.opcode();
        self.metrics.request(opcode.name());
        if !session.greeted && opcode != Opcode::Hello {
            let message = "the first frame of a connection must be HELLO";
            return Err((
                Some(opcode),
                refuse(ErrorCode::Malformed, ARG_NONE, message),
            ));
        }
        if let Some(log_id) = request.routed_log() {
            self.route(log_id, None).map_err(|r| (Some(opcode), r))?;
        }
        Ok(request)
    }

    /// Serves a decoded request; a refusal is answered by [`refuse`](Self::refuse).
    fn dispatch<I: Io>(
        &mut self,
        request: Request<'_>,
        request_id: u64,
        session: &mut Session,
        store: &mut Store<I>,
        reads: &mut Reads,
        token: u64,
    ) {
        let opcode = request.opcode();
        let result = match request {
            Request::Hello(hello) => {
                self.hello(session, request_id, hello.min_version, hello.max_version)
            }
            Request::Append(append) => self.append(session, store, request_id, &append, token),
            Request::Read(read) => self.read(session, store, reads, token, request_id, read),
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
                self.replicas
                    .replicate(session.peer, store, request_id, &replicate, token)
            }
            Request::Pull(pull) => self.replicas.pull(
                session.peer,
                store,
                reads,
                token,
                request_id,
                &pull,
                None,
                &mut session.out,
            ),
            Request::Seal(seal) => self.seal(session, request_id, &seal),
            Request::Subscribe(sub) => session.subscriptions.subscribe(
                &mut session.out,
                store,
                &self.replicas,
                request_id,
                sub.log_id,
                sub.from_lsn,
                sub.credit_records,
            ),
            Request::Credit(credit) => {
                session.subscriptions.credit(
                    &mut session.out,
                    request_id,
                    credit.subscription_id,
                    credit.records,
                );
                Ok(())
            }
            Request::Unsubscribe(unsub) => {
                session.subscriptions.unsubscribe(
                    &mut session.out,
                    &self.replicas,
                    &self.limits,
                    request_id,
                    unsub.subscription_id,
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
        };
        if let Err(refusal) = result {
            self.refuse(session, request_id, Some(opcode), refusal);
        }
    }

    /// The one place a refused request (or frame, `opcode` `None`) is answered: counted,
    /// closing the connection if its code says so, and encoded now, or queued behind the
    /// appends and trims still waiting when it answers an APPEND or a TRIM, so that answers
    /// keep the order of the requests that wait for durability.
    fn refuse(
        &mut self,
        session: &mut Session,
        request_id: u64,
        opcode: Option<Opcode>,
        refusal: Refusal,
    ) {
        self.metrics.error(refusal.code.name());
        if refusal.code.closes_connection() {
            session.closing = true;
        }
        match opcode {
            Some(opcode @ (Opcode::Append | Opcode::Trim)) if !session.pending.is_empty() => {
                session.pending.push_back(Pending::Failed {
                    request_id,
                    opcode,
                    refusal,
                });
            }
            _ => refusal.encode(&mut session.out, request_id, opcode),
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

    fn append<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        request_id: u64,
        append: &AppendRequest<'_>,
        token: u64,
    ) -> Result<(), Refusal> {
        let h = append.header;
        let epoch = self.replicas.admit_append(h.log_id)?;
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
            .map_err(|e| Refusal::of_store(&e))?;
        self.replicas.appended(
            h.log_id,
            epoch,
            lsns.clone(),
            pin,
            h.fencing_token,
            (h.writer_id, h.writer_seq),
            store,
        );
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

    /// A READ: answered at once when its records are in memory, else once they are read
    /// ([`Parked::Read`]: [`answer_parked`](Self::answer_parked)).
    fn read<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        reads: &mut Reads,
        conn: u64,
        request_id: u64,
        read: ReadMessage,
    ) -> Result<(), Refusal> {
        let log_id = read.log_id;
        let tail = self.replicas.known(log_id)?.readable();
        if store.tail(log_id).is_none() {
            return self.answer_read(session, request_id, read, &[]);
        }
        // Only committed records are served (a replica may hold durable ones that are not
        // committed yet). The store counts payload bytes, fewer than travel: it returns at
        // least the records that fit `max_bytes` on the wire.
        let request = ReadRequest {
            log_id,
            from: read.from_lsn,
            max_records: u64::from(read.max_records.min(self.limits.batch_records_max))
                .min(tail.saturating_sub(read.from_lsn)) as usize,
            max_bytes: read.max_bytes as usize,
            kind: StoreReadKind::Durable,
        };
        let parked = Parked::Read(read);
        let records = match reads.start_answer(
            store,
            request,
            Owner::Answer {
                conn,
                request_id,
                parked,
            },
        ) {
            Ok(Started::Now(ReadOutput::Records(records))) => records,
            Ok(Started::Now(ReadOutput::Runs(_))) => unreachable!("a read of records"),
            Ok(Started::Waiting(_)) => return Ok(()),
            Err(e) => return Err(Refusal::of_store(&e)),
        };
        self.answer_read(session, request_id, read, &records)
    }

    /// Answers `read` with `records` (read from the store: committed when the read began),
    /// and the log's tail readers see now.
    fn answer_read(
        &mut self,
        session: &mut Session,
        request_id: u64,
        read: ReadMessage,
        records: &[ReadRecord],
    ) -> Result<(), Refusal> {
        let tail = self.replicas.known(read.log_id)?.readable();
        let mut builder = ReadBuilder::new(
            &mut session.out,
            request_id,
            ReadKind::Read,
            tail,
            &self.limits,
        );
        push_records(&mut builder, read.log_id, records, read.max_bytes as usize);
        builder.finish();
        Ok(())
    }

    /// The records a READ or PULL of this connection waited for were read (or the read
    /// failed): it is answered now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn answer_parked<I: Io>(
        &mut self,
        session: &mut Session,
        store: &mut Store<I>,
        reads: &mut Reads,
        conn: u64,
        request_id: u64,
        parked: Parked,
        read: chainlog_storage::Result<ReadOutput>,
    ) {
        let (opcode, result) = match (parked, read) {
            (_, Err(e)) => (parked.opcode(), Err(Refusal::of_store(&e))),
            (Parked::Read(read), Ok(ReadOutput::Records(records))) => (
                Opcode::Read,
                self.answer_read(session, request_id, read, &records),
            ),
            (Parked::Pull(pull), Ok(ReadOutput::Runs(runs))) => (
                Opcode::Pull,
                self.replicas.pull(
                    session.peer,
                    store,
                    reads,
                    conn,
                    request_id,
                    &pull,
                    Some(runs),
                    &mut session.out,
                ),
            ),
            (_, Ok(_)) => unreachable!("a READ reads records, a PULL runs"),
        };
        if let Err(refusal) = result {
            self.refuse(session, request_id, Some(opcode), refusal);
        }
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
            let seq = self.replicas.barrier(log_id)?;
            session.barriers.push(Barrier {
                request_id,
                log_id,
                until: Until::Settled { seq },
            });
            self.answer_barriers(session, store);
            return Ok(());
        }
        // A learner's tail is how far its copy is durable (the controller watches it).
        let (tail, epoch) = match self.replicas.known(log_id) {
            Ok(replica) => (replica.readable(), replica.epoch()),
            Err(unknown) => match self.replicas.learners.get(log_id) {
                Some(learner) => (
                    store.tail(log_id).map_or(0, |t| t.durable_lsn),
                    learner.epoch,
                ),
                None => return Err(unknown),
            },
        };
        let tail = TailResponse {
            tail,
            trim_point: store.tail(log_id).map_or(0, |t| t.trim_point),
            epoch,
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
    fn answer_barriers<I: Io>(&mut self, session: &mut Session, store: &Store<I>) {
        let mut i = 0;
        while i < session.barriers.len() {
            let b = &session.barriers[i];
            let trim_point = store.tail(b.log_id).map_or(0, |t| t.trim_point);
            let answer = match (self.replicas.get(b.log_id), b.until) {
                (Some(r), Until::Settled { seq }) if r.barriers().1 >= seq => {
                    Ok(Response::CheckTail(TailResponse {
                        tail: r.readable(),
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
                Err(refusal) => self.refuse(session, b.request_id, Some(opcode), refusal),
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
        let (log_id, epoch) = (seal.log_id, seal.epoch);
        let (end, first) = self.replicas.seal(log_id, epoch)?;
        if first {
            tracing::info!(log_id, epoch, end, "epoch sealed");
            // The controller extends the chain with a new map next.
            self.replicas.expect_map(true);
            if let Err(e) = self.catalog.seal(log_id, epoch) {
                self.catalog_failed(&e);
            }
        }
        session.barriers.push(Barrier {
            request_id,
            log_id,
            until: Until::Durable { epoch, end },
        });
        Ok(())
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
        let committed = self.replicas.head(log_id)?.committed();
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
            .map_err(|e| Refusal::of_store(&e))?;
        self.replicas.trimmed(log_id, before);
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
        let entry = CatalogEntry::standalone(name);
        let rf = match replication_factor {
            RF_DEFAULT => entry.replication_factor,
            rf => rf,
        };
        if let Some(existing) = self.catalog.get(log_id) {
            // A retried create (its answer was lost) succeeds; anything else is another log.
            if existing.name != name || existing.replication_factor != rf {
                return Err(refuse(
                    ErrorCode::LogExists,
                    log_id,
                    format!(
                        "log {:?} exists with replication factor {}",
                        existing.name, existing.replication_factor
                    ),
                ));
            }
        } else {
            if rf != entry.replication_factor {
                return Err(refuse(
                    ErrorCode::TooLarge,
                    1,
                    "a single node stores one replica (replication factor 1)",
                ));
            }
            // Durable before the answer goes out (the shard syncs the catalog first).
            let created = self.catalog.create(log_id, entry.clone());
            assert!(created, "checked that it does not exist");
            self.replicas.create(log_id, &entry, store);
        }
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
        let (log_id, name) = match log {
            LogRef::Id(id) => (id, None),
            LogRef::Name(name) => (log_id_of(name), Some(name)),
        };
        let owner = self.route(log_id, name)?;
        let (Some(entry), Some(replica)) = (self.catalog.get(log_id), self.replicas.get(log_id))
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
            Err(e) => self.catalog_failed(&e),
        }
        self.replicas.remove(log_id);
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
        let here = |l: &&MapLog| (l.log_id % shard_count) as u16 == shard_index;
        let mine: Vec<&MapLog> = map
            .logs()
            .iter()
            .filter(|l| l.chain.contains(&me) && here(l))
            .collect();
        let learning: Vec<&MapLog> = map
            .logs()
            .iter()
            .filter(|l| l.learners.contains(&me) && here(l))
            .collect();
        let mut kept = HashSet::new();
        // A map older than what this node has installed (as a replica or a learner) changes
        // nothing: acting on it could make a member a learner and start its copy again.
        let older = |catalog: &Catalog, log: &MapLog| {
            catalog.get(log.log_id).is_some_and(|e| e.epoch > log.epoch)
        };
        for log in learning {
            kept.insert(log.log_id);
            if !older(&self.catalog, log) {
                self.learn(log, store);
            }
        }
        for log in mine {
            kept.insert(log.log_id);
            if older(&self.catalog, log) {
                continue;
            }
            let current = self.replicas.is_current(log.log_id, log.epoch, &log.chain);
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
            if !recovered {
                // Durable with the turn's other creates, before anything of the turn goes out.
                let created = self.catalog.create(log.log_id, entry.clone());
                assert!(created, "a log new here is not in the catalog");
            } else if let Err(e) = self.catalog.install(log.log_id, entry.clone()) {
                self.catalog_failed(&e);
            }
            if !current {
                tracing::info!(log_id = log.log_id, name = log.name, epoch = log.epoch, chain = ?log.chain, start_lsn = log.start_lsn, "log installed");
                self.replicas.install(log.log_id, &entry, store, recovered);
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
                self.catalog_failed(&e);
            }
            self.replicas.remove(log_id);
            self.replicas.learners.remove(log_id);
            self.free_space(log_id, store);
        }
    }

    /// Makes this shard a learner of `log` (the map names this node among its learners):
    /// it copies the log's committed records from the chain's tail (`super::learners`). A
    /// copy already under way goes on from where the store ends (its records are committed
    /// ones); anything else the store holds of the log may be a suffix that was never
    /// acknowledged (this node was sealed out of the chain), so the copy starts from nothing.
    fn learn<I: Io>(&mut self, log: &MapLog, store: &mut Store<I>) {
        let me = self.node_id;
        let before = self.catalog.get(log.log_id).cloned();
        if !before.as_ref().is_some_and(|e| is_learner_entry(e, me)) {
            if self.replicas.get(log.log_id).is_some() {
                // A member sealed out: what it sequenced as head is answered no more.
                self.rebuilt_in.insert(log.log_id, u64::MAX);
            }
            if let Some(tail) = store.tail(log.log_id) {
                if tail.next_lsn > 0 || tail.trim_point > 0 {
                    tracing::info!(
                        log_id = log.log_id,
                        next = tail.next_lsn,
                        "a learner of this log here: copying it from nothing"
                    );
                    let reset = store.reset_log(log.log_id, 0, 0, &[], UNANSWERED);
                    self.make_durable(log.log_id, reset, store);
                }
            }
            self.replicas.remove(log.log_id);
        }
        let entry = CatalogEntry {
            name: log.name.clone(),
            replication_factor: log.replication_factor,
            epoch: log.epoch,
            chain: log.chain.clone(),
            sealed: false,
        };
        if let Err(e) = self.catalog.install(log.log_id, entry) {
            self.catalog_failed(&e);
        }
        let source = *log.chain.last().expect("a map's chain is never empty");
        self.replicas.learners.learn(log.log_id, log.epoch, source);
    }

    /// Makes the store fit for `log`'s epoch before this node installs it (the epoch is new
    /// here; `before` is what the catalog had). A replica of the epoch just before, that
    /// sealed it (the controller builds a new chain from the old one's sealed members, then
    /// nodes outside the old chain), keeps its records, cut back to the new epoch's start if
    /// it holds more (never acknowledged: every acknowledged record is below the start), and
    /// so does a learner the epoch promotes; both trim to the epoch's trim point (the map's
    /// `trim_lsn`: every trim acknowledged before is at or below it). Any other node is a
    /// new replica of the log: whatever its store holds of it may be leftovers of an epoch
    /// it was sealed out of, so the log starts again empty and is copied from its
    /// predecessor. All of it, and what a learner copied, is made durable before the
    /// catalog names the new epoch, so a restart never finds the epoch installed over a
    /// store not fit for it, and the replica made from the store holds only durable records.
    /// Returns true if the store holds this node's records of the earlier epochs as they
    /// were (a survivor that cut nothing).
    fn prepare_store<I: Io>(
        &mut self,
        log: &MapLog,
        before: Option<&CatalogEntry>,
        store: &mut Store<I>,
    ) -> bool {
        let survivor = before.is_some_and(|e| {
            e.epoch + 1 == log.epoch && e.sealed && e.chain.contains(&self.node_id)
        });
        // A learner's copy is of committed records: below the start of every later epoch.
        let learned = before.is_some_and(|e| is_learner_entry(e, self.node_id));
        let Some(tail) = store.tail(log.log_id) else {
            return survivor; // Nothing here of this log.
        };
        // What it keeps ends at the new epoch's start at most, and must reach the epoch's trim
        // point: a learner's copy that ends below it lacks records (and fencing raises) the
        // chain trimmed, so it is copied again, from the trim point, as a new replica's.
        let keeps = (survivor || learned) && tail.next_lsn.min(log.start_lsn) >= log.trim_lsn;
        let (prepared, kept_whole) = if keeps {
            let cut = tail.next_lsn > log.start_lsn;
            // The key of the batch a reset here cut through (its last records not here yet)
            // names LSNs the new epoch gives to other records: the cut forgets it.
            let stale_key = store.keys_end(log.log_id) > log.start_lsn;
            let trim = log.trim_lsn > tail.trim_point;
            // A survivor's records are durable (it sealed); a learner's last copied records
            // may still be on their way to the disk, and the replica made from the store
            // counts what it holds as durable: it would serve them as committed to readers
            // (who then read nothing there) before they are.
            let unsynced = tail.durable_lsn < tail.next_lsn;
            if !cut && !stale_key && !trim && !unsynced {
                // A survivor holds its records as they were; a learner's copy is not records
                // this node sequenced (what it sequenced before it left is never answered).
                return survivor;
            }
            let mut prepared = Ok(());
            if cut || stale_key {
                tracing::info!(
                    log_id = log.log_id,
                    from = log.start_lsn,
                    next = tail.next_lsn,
                    "cutting records (or an idempotency key) of the sealed epoch beyond its end"
                );
                prepared = store.truncate(log.log_id, log.start_lsn, UNANSWERED);
            }
            if trim {
                // A trim acknowledged while this node was not in the chain (it learned the
                // log then, or a member it replaces did not pass it on): it never goes back.
                tracing::info!(
                    log_id = log.log_id,
                    from = tail.trim_point,
                    to = log.trim_lsn,
                    "trimming to the epoch's trim point"
                );
                prepared = prepared.and_then(|()| store.trim(log.log_id, log.trim_lsn, UNANSWERED));
            }
            (prepared, survivor && !cut)
        } else {
            if tail.next_lsn == 0 && tail.trim_point == 0 {
                return false;
            }
            tracing::info!(
                log_id = log.log_id,
                next = tail.next_lsn,
                "a new replica of this log here: starting it again empty"
            );
            (store.reset_log(log.log_id, 0, 0, &[], UNANSWERED), false)
        };
        self.make_durable(log.log_id, prepared, store);
        kept_whole
    }

    /// Makes a cut or reset of `log_id` (`cut`: its outcome) durable before what depends on
    /// it is installed; a store that fails here stops the node.
    fn make_durable<I: Io>(
        &mut self,
        log_id: u64,
        cut: chainlog_storage::Result<()>,
        store: &mut Store<I>,
    ) {
        let mut acks = Vec::new();
        let durable = cut.and_then(|()| store.sync_all(&mut acks));
        if let Err(e) = durable {
            fatal(FatalReason::store(
                Some(self.shard_index),
                format!("preparing log {log_id}: {e}"),
            ));
        }
        // The acks this wait collected are the replicas' now, before the cut log's replica
        // of the new epoch replaces the old one: they are the old one's (a trim made before
        // the log started again at 0 would otherwise count as trimmed past the new replica's
        // records, an append cut away as durable beyond them). Their connections (appends of
        // other logs among them) are answered in the shard's next turn.
        for ack in &acks {
            self.replicas.on_store_ack(ack);
        }
        self.acks_taken.append(&mut acks);
    }

    /// True if acks the store gave while the server waited for it (installing a map) wait
    /// for [`store_acked`](Self::store_acked): the shard handles them before it waits again.
    pub(crate) fn has_taken_acks(&self) -> bool {
        !self.acks_taken.is_empty()
    }

    /// The store's acks of a turn (`polled`), after those it gave while the server waited
    /// on it (installing a map), whose replication side was handled then: records and trims
    /// durable here move the replicas on. Returns, in order, the tokens whose connections
    /// have an append or trim durable here ([`acknowledge`](Self::acknowledge)), in `tokens`.
    pub(crate) fn store_acked(&mut self, polled: &[Ack], tokens: &mut Vec<u64>) {
        tokens.extend(self.acks_taken.drain(..).map(|a| a.token));
        for ack in polled {
            self.replicas.on_store_ack(ack);
            tokens.push(ack.token);
        }
    }

    /// Trims away a deleted log's records (nobody waits for this trim's ack).
    fn free_space<I: Io>(&mut self, log_id: u64, store: &mut Store<I>) {
        if let Some(t) = store.tail(log_id) {
            if let Err(e) = store.trim(log_id, t.next_lsn, UNANSWERED) {
                tracing::warn!(log_id, error = %e, "could not trim a deleted log");
            }
        }
    }

    /// The catalog could not be written: which version is on disk is unknown, so the shard
    /// can answer neither way (the catalog kept the old one in memory); the node stops.
    /// Makes the catalog's changes of this turn durable (the creates'): before anything of
    /// the turn goes out.
    pub(crate) fn sync_catalog(&mut self) {
        if let Err(e) = self.catalog.sync() {
            self.catalog_failed(&e);
        }
    }

    fn catalog_failed(&self, e: &CatalogError) -> ! {
        fatal(FatalReason::StateFile {
            error: format!("shard {}: {e}", self.shard_index),
        })
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
                            .get(log_id)
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
                            .get(log_id)
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
                    refusal,
                } => refusal.encode(&mut session.out, request_id, Some(opcode)),
            }
        }
        if !session.barriers.is_empty() {
            self.answer_barriers(session, store);
        }
    }
}

#[cfg(test)]
mod tests;
