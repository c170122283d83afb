//! The simulated writers: each appends keyed batches to one log through its head, as a
//! database appending its WAL would, with the wire protocol of PROTOCOL.md over the world's
//! connections. A writer may be conditional (every batch carries `expected_lsn`: the tail it
//! believes, learned from its acknowledgements and from CONDITION_FAILED answers; one batch
//! in flight) and fenced (every batch carries its fencing token; fenced out, it takes a token
//! above the one that fenced it, as a new leader would), or neither (a few batches in
//! flight). Each resends every outstanding batch unchanged, with its key, after a lost
//! connection, a timeout or a retryable error (following the map to the head), and records
//! what happened to each batch for the checkers: acknowledged at LSNs, refused for good, or
//! indefinite.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chainlog_net::{
    AppendBuilder, AppendHeader, ErrorCode, ErrorResponse, Response, LSN_UNCONDITIONAL, TOKEN_NONE,
};

use super::conn::{try_again, ClientConn, Link, RETRY_US};
use super::world::{HostId, World};
use crate::history::{payload, Op, Outcome, Refusal, Value};

/// What a writer's batches carry besides their key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mode {
    /// Each batch expects the tail the writer believes (one batch in flight).
    pub(crate) conditional: bool,
    /// Each batch carries the writer's fencing token.
    pub(crate) fenced: bool,
}

/// One batch the writer sent and has no final answer for.
#[derive(Clone, Debug)]
struct Outstanding {
    seq: u64,
    records: u32,
    /// When the current attempt went out.
    sent_us: u64,
    /// Not to be resent before this (after a retryable refusal).
    not_before_us: u64,
    /// The attempt's request id, if one is out on the current connection.
    request: Option<u64>,
    /// An earlier attempt's outcome is unknown (a lost connection or a timeout): a refusal
    /// now does not mean the batch was never appended.
    uncertain: bool,
    expected_lsn: Option<u64>,
    fencing_token: Option<u64>,
}

/// What the writer counts of its answers (for the run's report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WriterCounts {
    pub(crate) conditional_acked: u64,
    pub(crate) condition_failed: u64,
    pub(crate) fenced_acked: u64,
    pub(crate) fenced_out: u64,
}

/// A writer of one log. See the module documentation.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) writer_id: u64,
    conn: ClientConn,
    st: State,
}

#[derive(Debug)]
struct State {
    writer_id: u64,
    log_id: u64,
    mode: Mode,
    in_flight_max: usize,
    next_seq: u64,
    /// The tail the writer believes (conditional writers).
    tail: u64,
    /// The writer's fencing token (fenced writers).
    token: u64,
    /// How long an append may wait for its answer before the writer takes its outcome as
    /// unknown and resends it (with its key) on a new connection.
    timeout_us: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    ops: BTreeMap<u64, Op<u64>>,
    unexpected: Vec<String>,
    counts: WriterCounts,
}

impl Writer {
    pub(crate) fn new(
        world: &mut World,
        writer_id: u64,
        log_id: u64,
        mode: Mode,
        in_flight_max: usize,
        token: u64,
        timeout_us: u64,
    ) -> Writer {
        Writer {
            writer_id,
            conn: ClientConn::new(world, 1000 + writer_id as HostId),
            st: State {
                writer_id,
                log_id,
                mode,
                in_flight_max: if mode.conditional { 1 } else { in_flight_max },
                next_seq: 1,
                tail: 0,
                token,
                timeout_us,
                outstanding: BTreeMap::new(),
                ops: BTreeMap::new(),
                unexpected: Vec::new(),
                counts: WriterCounts::default(),
            },
        }
    }

    /// Batches with no final answer yet.
    pub(crate) fn pending(&self) -> usize {
        self.st.outstanding.len()
    }

    /// Every batch invoked.
    pub(crate) fn ops(&self) -> impl Iterator<Item = &Op<u64>> {
        self.st.ops.values()
    }

    /// Answers no correct run gives.
    pub(crate) fn unexpected(&self) -> &[String] {
        &self.st.unexpected
    }

    pub(crate) fn counts(&self) -> WriterCounts {
        self.st.counts
    }

    /// Starts a new batch of `records` now (if there is room in flight).
    pub(crate) fn invoke(&mut self, now_us: u64, records: u32) -> bool {
        let st = &mut self.st;
        if st.outstanding.len() >= st.in_flight_max {
            return false;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let expected_lsn = st.mode.conditional.then_some(st.tail);
        let fencing_token = st.mode.fenced.then_some(st.token);
        st.ops.insert(
            seq,
            Op {
                writer: st.writer_id,
                seq,
                records,
                invoked: now_us,
                expected_lsn,
                fencing_token,
                outcome: Outcome::Indefinite {
                    last_error: "no answer yet".into(),
                },
            },
        );
        st.outstanding.insert(
            seq,
            Outstanding {
                seq,
                records,
                sent_us: now_us,
                not_before_us: now_us,
                request: None,
                uncertain: false,
                expected_lsn,
                fencing_token,
            },
        );
        true
    }

    /// One step: takes what arrived, connects, sends what is due, times out what waited too
    /// long. `head` is where the log's head serves (from the map).
    pub(crate) fn step(&mut self, world: &mut World, head: SocketAddr) {
        let now = world.now_us();
        let want = !self.st.outstanding.is_empty();
        match self.conn.poll(world, head, want) {
            Link::Down => return,
            Link::Lost => {
                self.st.lost();
                return;
            }
            Link::Fresh | Link::Up => {}
        }
        let st = &mut self.st;
        let ended = self
            .conn
            .receive(world, &mut |id, answer| st.on_answer(id, answer, now));
        if ended {
            self.st.lost();
            return;
        }
        self.send_due(world, now);
        let late = self
            .st
            .outstanding
            .values()
            .any(|o| o.request.is_some() && now.saturating_sub(o.sent_us) > self.st.timeout_us);
        if late {
            // The outcome of what is out is unknown: start over on a new connection, where
            // every outstanding batch goes again with its key.
            self.conn.drop_conn(world);
            self.st.lost();
        }
    }

    /// Sends what is due, in sequence order (answers come in that order on a connection).
    fn send_due(&mut self, world: &mut World, now: u64) {
        let mut out = Vec::new();
        let limits = super::node::limits();
        let due: Vec<u64> = self
            .st
            .outstanding
            .values()
            .filter(|o| o.request.is_none() && o.not_before_us <= now)
            .map(|o| o.seq)
            .collect();
        for seq in due {
            let id = self.conn.next_id();
            let st = &mut self.st;
            let o = st.outstanding.get_mut(&seq).expect("listed");
            let header = AppendHeader {
                writer_id: st.writer_id,
                writer_seq: seq,
                expected_lsn: o.expected_lsn.unwrap_or(LSN_UNCONDITIONAL),
                fencing_token: o.fencing_token.unwrap_or(TOKEN_NONE),
                ..AppendHeader::new(st.log_id)
            };
            let mut builder = AppendBuilder::new(&mut out, id, &header, &limits);
            for index in 0..o.records {
                let value = Value {
                    writer: st.writer_id,
                    seq,
                    index,
                };
                builder
                    .push(&payload(st.log_id, value))
                    .expect("a workload batch fits the limits");
            }
            builder.finish();
            o.request = Some(id);
            o.sent_us = now;
        }
        if !out.is_empty() {
            self.conn.send_bytes(world, out);
        }
    }
}

impl State {
    /// The connection is gone: what was out on it has an unknown outcome, and goes again.
    fn lost(&mut self) {
        for o in self.outstanding.values_mut() {
            if o.request.take().is_some() {
                o.uncertain = true;
            }
        }
    }

    fn on_answer(&mut self, id: u64, answer: Result<Response<'_>, String>, now: u64) {
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                return self
                    .unexpected
                    .push(format!("writer {}: {e}", self.writer_id))
            }
        };
        let Some(seq) = self
            .outstanding
            .values()
            .find(|o| o.request == Some(id))
            .map(|o| o.seq)
        else {
            return; // HELLO's answer, or an answer to an attempt given up on.
        };
        match response {
            Response::Append(a) => {
                let lsns = a.first_lsn..a.first_lsn + u64::from(a.count);
                let o = self.outstanding.remove(&seq).expect("listed");
                if o.expected_lsn.is_some() {
                    self.counts.conditional_acked += 1;
                    self.tail = self.tail.max(lsns.end);
                }
                if o.fencing_token.is_some() {
                    self.counts.fenced_acked += 1;
                }
                let op = self.ops.get_mut(&seq).expect("invoked");
                op.outcome = Outcome::Acked { lsns, at: now };
            }
            Response::Error(e) if e.code == ErrorCode::WriterSeq => {
                // Too old to resolve: its outcome stays unknown.
                self.outstanding.remove(&seq);
                if let Some(op) = self.ops.get_mut(&seq) {
                    op.outcome = Outcome::Indefinite {
                        last_error: format!("WRITER_SEQ: {}", e.message),
                    };
                }
            }
            Response::Error(e) if try_again(e.code) => {
                let o = self.outstanding.get_mut(&seq).expect("listed");
                o.request = None;
                o.not_before_us = now + RETRY_US;
            }
            Response::Error(e) if e.code == ErrorCode::ConditionFailed => {
                self.counts.condition_failed += 1;
                self.tail = e.arg0;
                self.refused(seq, Refusal::ConditionFailed { tail: e.arg0 }, &e, now);
            }
            Response::Error(e) if e.code == ErrorCode::Fenced => {
                self.counts.fenced_out += 1;
                // A new leader: a token above the one that fenced this writer out.
                self.token = self.token.max(e.arg0 + 1);
                self.refused(seq, Refusal::Fenced { token: e.arg0 }, &e, now);
            }
            Response::Error(e) => {
                self.unexpected.push(format!(
                    "writer {} batch {seq}: {} {}",
                    self.writer_id,
                    e.code.name(),
                    e.message
                ));
                self.outstanding.remove(&seq);
            }
            other => self
                .unexpected
                .push(format!("an APPEND answered with {other:?}")),
        }
    }

    /// Batch `seq` was refused for good: never appended, unless an earlier attempt's outcome
    /// is unknown (that one may have been).
    fn refused(&mut self, seq: u64, refusal: Refusal, e: &ErrorResponse<'_>, now: u64) {
        let o = self.outstanding.remove(&seq).expect("listed");
        let op = self.ops.get_mut(&seq).expect("invoked");
        op.outcome = if o.uncertain {
            Outcome::Indefinite {
                last_error: format!(
                    "{} after an attempt whose outcome is unknown: {}",
                    e.code.name(),
                    e.message
                ),
            }
        } else {
            Outcome::Refused { refusal, at: now }
        };
    }
}
