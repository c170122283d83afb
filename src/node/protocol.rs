//! The server side of the wire protocol (PROTOCOL.md) for one shard: turns the frames a
//! connection received into store operations and encoded answers, and acknowledgements of
//! durable appends and trims into APPEND and TRIM responses, in the order they were asked.
//!
//! APPEND record bytes go from the connection's receive buffer into the store's write buffer
//! in one copy (`Batch::Encoded`: the wire layout is the disk layout). A single node serves
//! every log in epoch [`NODE_EPOCH`]. Conditions, fencing tokens and idempotency keys are
//! checked by the store (`AppendOptions`), which keeps their state durable; a retried batch
//! is answered with its original LSNs once they are durable, in its place in the order.
//! Subscriptions are pumped from the store's tail cache after every loop turn, within their
//! credit and while the connection's output is not backed up.

use chainlog_net::{
    decode_request, encode_error, encode_response, parse_frame, AppendRequest, CreateLogResponse,
    DescribeLogResponse, ErrorCode, ErrorResponse, Frame, HelloResponse, Limits, ListLogsResponse,
    LogEntries, LogEntry, LogRef, Opcode, ReadBuilder, ReadKind, RecordHeader, Request, Response,
    Role, SubscribeResponse, TailResponse, ARG_NONE, EPOCH_CURRENT, LSN_FROM_TAIL,
    LSN_UNCONDITIONAL, PROTOCOL_VERSION, TOKEN_NONE, WRITER_NONE,
};
use chainlog_storage::{fatal, Ack, AppendOptions, Batch, Error, ReadRecord, Store, UringIo};

use super::catalog::{log_id_of, Catalog, LogEntry as CatalogEntry};
use super::conn::{Conn, Pending, Session, Subscription};
use super::metrics::ShardMetrics;
use std::time::Instant;

/// The epoch of every log on a single node (epochs change with reconfiguration).
pub(crate) const NODE_EPOCH: u64 = 1;

/// Queued output of a connection at which the shard stops handling its requests (and reading
/// it) until the socket drains.
pub(crate) const OUTPUT_MAX: usize = 8 << 20;

/// Subscriptions one connection may hold.
const SUBSCRIPTIONS_MAX: usize = 64;

/// A connection's queued output above which its subscriptions wait (they resume as the
/// socket drains), so a slow reader cannot make the shard buffer without bound.
const PUSH_OUTPUT_MAX: usize = 4 << 20;

/// Store token of operations nobody waits for (the trim that frees a deleted log's space):
/// it names no connection slot.
const UNANSWERED: u64 = u64::MAX;

/// One shard's protocol state.
#[derive(Debug)]
pub(crate) struct Server {
    /// What this shard measures of its requests.
    pub(crate) metrics: ShardMetrics,
    /// The clock of the stage latencies, and the time the current loop turn's completions
    /// were seen (an ack's durability is seen then).
    started: Instant,
    turn_us: u64,
    /// When the frames being handled arrived.
    received_us: u64,
    shard_index: u16,
    shard_count: u16,
    node_id: u64,
    limits: Limits,
    catalog: Catalog,
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
    pub(crate) fn new(
        shard_index: u16,
        shard_count: u16,
        node_id: u64,
        limits: Limits,
        catalog: Catalog,
    ) -> Server {
        Server {
            metrics: ShardMetrics::new(),
            started: Instant::now(),
            turn_us: 0,
            received_us: 0,
            shard_index,
            shard_count,
            node_id,
            limits,
            catalog,
        }
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
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
    pub(crate) fn handle_input(
        &mut self,
        conn: &mut Conn,
        store: &mut Store<UringIo>,
        token: u64,
    ) -> usize {
        self.received_us = self.turn_us;
        let (input, session) = conn.input();
        let mut consumed = 0;
        while !session.closing && session.out.len() < OUTPUT_MAX {
            match parse_frame(&input[consumed..], &self.limits) {
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

    fn handle_frame(
        &mut self,
        frame: &Frame<'_>,
        session: &mut Session,
        store: &mut Store<UringIo>,
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
            Request::CreateLog(create) => {
                self.create_log(session, request_id, create.name, create.replication_factor)
            }
            Request::DescribeLog(describe) => {
                self.describe_log(session, store, request_id, describe.by)
            }
            Request::ListLogs(list) => {
                self.list_logs(session, request_id, list.after_log_id, list.max)
            }
            Request::DeleteLog { log_id } => self.delete_log(session, store, request_id, log_id),
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
            // A standalone node is in no chain: no node is its predecessor (PROTOCOL.md 6.11).
            Request::Peer(_) | Request::Replicate(_) => Err(refuse(
                ErrorCode::UnknownNode,
                ARG_NONE,
                "this node is standalone: it replicates no log",
            )),
            Request::RegisterNode(_) | Request::Heartbeat(_) | Request::GetMap(_) => Err(refuse(
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
                    let tail = store.tail(sub.log_id).map_or(0, |t| t.durable_lsn);
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
        match self.catalog.get(log_id) {
            Some(_) => Ok(()),
            None => Err(refuse(
                ErrorCode::UnknownLog,
                ARG_NONE,
                format!("no log {log_id} on this shard"),
            )),
        }
    }

    fn append(
        &mut self,
        session: &mut Session,
        store: &mut Store<UringIo>,
        request_id: u64,
        append: &AppendRequest<'_>,
        token: u64,
    ) -> Result<(), Refusal> {
        let h = append.header;
        self.known(h.log_id)?;
        if h.epoch != EPOCH_CURRENT && h.epoch != NODE_EPOCH {
            return Err(refuse(
                ErrorCode::WrongEpoch,
                NODE_EPOCH,
                format!("epoch {} is not current", h.epoch),
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
        store
            .append_batch(h.log_id, NODE_EPOCH, &options, batch, token)
            .map_err(|e| store_refusal(&e))?;
        let received_us = self.received_us;
        self.metrics
            .queue_us
            .saturating_record(self.now_us().saturating_sub(received_us).max(1));
        session.pending.push_back(Pending::Append {
            request_id,
            received_us,
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        session: &mut Session,
        store: &mut Store<UringIo>,
        request_id: u64,
        log_id: u64,
        from: u64,
        max_records: u32,
        max_bytes: u32,
    ) -> Result<(), Refusal> {
        self.known(log_id)?;
        let tail = store.tail(log_id).map_or(0, |t| t.durable_lsn);
        let records = if store.tail(log_id).is_some() {
            let max_records = max_records.min(self.limits.batch_records_max) as usize;
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

    fn subscribe(
        &mut self,
        session: &mut Session,
        store: &mut Store<UringIo>,
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
        let t = store.tail(log_id);
        let (tail, trim_point) = t.map_or((0, 0), |t| (t.durable_lsn, t.trim_point));
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
    pub(crate) fn pump(&self, session: &mut Session, store: &mut Store<UringIo>) -> bool {
        let mut i = 0;
        while i < session.subscriptions.len() {
            let sub = &mut session.subscriptions[i];
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
                    if sub.next_lsn >= t.durable_lsn
                        || sub.credit == 0
                        || session.out.len() >= PUSH_OUTPUT_MAX
                    {
                        break None;
                    }
                    let max = sub.credit.min(u64::from(self.limits.batch_records_max)) as usize;
                    let body_budget = self.limits.frame_bytes_max as usize / 2;
                    let records = match store.read(sub.log_id, sub.next_lsn, max, body_budget) {
                        Ok(records) => records,
                        Err(e) => break Some(store_refusal(&e)),
                    };
                    let mut builder = ReadBuilder::new(
                        &mut session.out,
                        sub.id,
                        ReadKind::Push,
                        t.durable_lsn,
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

    fn tail(
        &mut self,
        session: &mut Session,
        store: &Store<UringIo>,
        request_id: u64,
        opcode: Opcode,
        log_id: u64,
    ) -> Result<(), Refusal> {
        self.known(log_id)?;
        let t = store.tail(log_id);
        let tail = TailResponse {
            tail: t.map_or(0, |t| t.durable_lsn),
            trim_point: t.map_or(0, |t| t.trim_point),
            epoch: NODE_EPOCH,
        };
        let response = if opcode == Opcode::CheckTail {
            Response::CheckTail(tail)
        } else {
            Response::TailHint(tail)
        };
        encode_response(&mut session.out, request_id, opcode, &response);
        Ok(())
    }

    fn trim(
        &mut self,
        session: &mut Session,
        store: &mut Store<UringIo>,
        request_id: u64,
        log_id: u64,
        before: u64,
        token: u64,
    ) -> Result<(), Refusal> {
        self.known(log_id)?;
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
        store
            .trim(log_id, before, token)
            .map_err(|e| store_refusal(&e))?;
        session.pending.push_back(Pending::Trim { request_id });
        Ok(())
    }

    fn create_log(
        &mut self,
        session: &mut Session,
        request_id: u64,
        name: &str,
        replication_factor: u8,
    ) -> Result<(), Refusal> {
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
        let entry = CatalogEntry {
            name: name.to_string(),
            replication_factor,
        };
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
        let response = Response::CreateLog(CreateLogResponse {
            log_id,
            shard: owner,
        });
        encode_response(&mut session.out, request_id, Opcode::CreateLog, &response);
        Ok(())
    }

    fn describe_log(
        &mut self,
        session: &mut Session,
        store: &Store<UringIo>,
        request_id: u64,
        log: LogRef<'_>,
    ) -> Result<(), Refusal> {
        let log_id = match log {
            LogRef::Id(id) => id,
            LogRef::Name(name) => log_id_of(name),
        };
        let owner = self.route(log_id, None)?;
        let Some(entry) = self.catalog.get(log_id) else {
            return Err(refuse(
                ErrorCode::UnknownLog,
                ARG_NONE,
                format!("no log {log_id}"),
            ));
        };
        let t = store.tail(log_id);
        let response = Response::DescribeLog(DescribeLogResponse {
            log_id,
            tail: t.map_or(0, |t| t.durable_lsn),
            trim_point: t.map_or(0, |t| t.trim_point),
            epoch: NODE_EPOCH,
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

    fn delete_log(
        &mut self,
        session: &mut Session,
        store: &mut Store<UringIo>,
        request_id: u64,
        log_id: u64,
    ) -> Result<(), Refusal> {
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
        // Free its space: trim everything (nobody waits for this trim's ack).
        if let Some(t) = store.tail(log_id) {
            if let Err(e) = store.trim(log_id, t.next_lsn, UNANSWERED) {
                tracing::warn!(log_id, error = %e, "could not trim a deleted log");
            }
        }
        encode_response(
            &mut session.out,
            request_id,
            Opcode::DeleteLog,
            &Response::DeleteLog,
        );
        Ok(())
    }

    /// Answers the oldest pending append or trim of a connection, and the errors queued
    /// behind it.
    pub(crate) fn acknowledge(&mut self, session: &mut Session, ack: &Ack) {
        match session.pending.pop_front() {
            Some(Pending::Append {
                request_id,
                received_us,
            }) => {
                let now = self.now_us();
                self.metrics
                    .total_us
                    .saturating_record(now.saturating_sub(received_us).max(1));
                self.metrics
                    .ack_us
                    .saturating_record(now.saturating_sub(self.turn_us).max(1));
                let response = chainlog_net::AppendResponse {
                    first_lsn: ack.lsns.start,
                    count: (ack.lsns.end - ack.lsns.start) as u32,
                };
                encode_response(
                    &mut session.out,
                    request_id,
                    Opcode::Append,
                    &Response::Append(response),
                );
            }
            Some(Pending::Trim { request_id }) => {
                encode_response(&mut session.out, request_id, Opcode::Trim, &Response::Trim);
            }
            other => unreachable!("an ack with no append or trim waiting: {other:?}"),
        }
        flush_failed(session);
    }
}

/// Adds stored records to a READ answer or a push, until the frame is full; returns how many
/// went in. The records' CRCs travel unchanged (end to end).
fn push_records(builder: &mut ReadBuilder<'_>, log_id: u64, records: &[ReadRecord]) -> u64 {
    let mut pushed = 0;
    for r in records {
        let header = RecordHeader {
            len: r.payload.len() as u32,
            crc: r.crc,
            log_id,
            lsn: r.lsn,
            epoch: r.epoch,
            timestamp_us: r.timestamp_us,
        };
        if builder.push(&header, &r.payload).is_err() {
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

fn flush_failed(session: &mut Session) {
    while let Some(Pending::Failed { .. }) = session.pending.front() {
        let Some(Pending::Failed {
            request_id,
            opcode,
            code,
            arg0,
            arg1,
            message,
        }) = session.pending.pop_front()
        else {
            unreachable!("checked above");
        };
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
