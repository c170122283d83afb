//! The simulated workload: writers that append keyed batches to a log through its head, as
//! a database appending its WAL would, with the wire protocol of PROTOCOL.md over the world's
//! connections. Each writer keeps a few batches in flight, resends every outstanding batch
//! with the same idempotency key after a lost connection, a timeout or a retryable error
//! (following NOT_HEAD and the cluster map to the head), and records what happened to each
//! batch for the checkers: acknowledged at LSNs, or indefinite.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chainlog_net::{
    decode_response, encode_request, parse_frame, AppendBuilder, AppendHeader, ErrorCode,
    HelloRequest, Request, Response,
};

use super::world::{EndpointId, HostId, World};
use crate::history::{payload, Op, Outcome, Value};
use crate::node::env::Sock;

/// How long an append may wait for its answer before the writer takes its outcome as unknown
/// and resends it (with its key) on a new connection.
const APPEND_TIMEOUT_US: u64 = 1_500_000;
/// Pause before reconnecting or resending after a retryable refusal.
const RETRY_US: u64 = 20_000;

#[derive(Debug)]
enum Conn {
    /// No connection; connect at `at_us`.
    Idle {
        at_us: u64,
    },
    Connecting {
        sock: Sock,
    },
    /// Connected and greeted (HELLO sent: answers are matched by request id).
    Up {
        sock: Sock,
    },
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
}

/// A writer of one log. See the module documentation.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) writer_id: u64,
    pub(crate) log_id: u64,
    endpoint: EndpointId,
    host: HostId,
    conn: Conn,
    inbox: Vec<u8>,
    next_request: u64,
    next_seq: u64,
    in_flight_max: usize,
    outstanding: BTreeMap<u64, Outstanding>,
    /// Every batch invoked, by sequence number.
    pub(crate) ops: BTreeMap<u64, Op<u64>>,
    /// Acknowledgements received after the batch's first (a retry answered again): each must
    /// name the same LSNs.
    pub(crate) reacks: Vec<(u64, std::ops::Range<u64>)>,
    /// Refusals that no correct run gives (terminal codes other than WRITER_SEQ).
    pub(crate) unexpected: Vec<String>,
}

impl Writer {
    pub(crate) fn new(
        world: &mut World,
        writer_id: u64,
        log_id: u64,
        in_flight_max: usize,
    ) -> Writer {
        let endpoint = world.endpoint();
        Writer {
            writer_id,
            log_id,
            endpoint,
            host: 1000 + writer_id as HostId,
            conn: Conn::Idle { at_us: 0 },
            inbox: Vec::new(),
            next_request: 1,
            next_seq: 1,
            in_flight_max,
            outstanding: BTreeMap::new(),
            ops: BTreeMap::new(),
            reacks: Vec::new(),
            unexpected: Vec::new(),
        }
    }

    /// Batches with no final answer yet.
    pub(crate) fn pending(&self) -> usize {
        self.outstanding.len()
    }

    /// Starts a new batch now (if there is room in flight).
    pub(crate) fn invoke(&mut self, now_us: u64, records: u32) -> bool {
        if self.outstanding.len() >= self.in_flight_max {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ops.insert(
            seq,
            Op {
                writer: self.writer_id,
                seq,
                records,
                invoked: now_us,
                expected_lsn: None,
                fencing_token: None,
                outcome: Outcome::Indefinite {
                    last_error: "no answer yet".into(),
                },
            },
        );
        self.outstanding.insert(
            seq,
            Outstanding {
                seq,
                records,
                sent_us: now_us,
                not_before_us: now_us,
                request: None,
            },
        );
        true
    }

    /// One step: takes what arrived, connects, sends what is due, times out what waited too
    /// long. `head` is where the log's head serves (from the map).
    pub(crate) fn step(&mut self, world: &mut World, head: SocketAddr) {
        let now = world.now_us();
        match self.conn {
            Conn::Idle { at_us } if at_us <= now && !self.outstanding.is_empty() => {
                let sock = world.connect(
                    self.endpoint,
                    self.host,
                    head,
                    crate::node::ops::NetToken::of(crate::node::ops::NetOp::LinkConnect),
                    true,
                );
                self.conn = Conn::Connecting { sock };
            }
            Conn::Connecting { sock } => match world.client_connected(sock) {
                Some(true) => {
                    let mut out = Vec::new();
                    encode_request(&mut out, 0, &Request::Hello(HelloRequest::CURRENT));
                    world.client_send(sock, out);
                    self.conn = Conn::Up { sock };
                    for o in self.outstanding.values_mut() {
                        o.request = None;
                    }
                }
                Some(false) => self.drop_conn(world, now),
                None => {}
            },
            _ => {}
        }
        let Conn::Up { sock } = self.conn else {
            return;
        };
        let (bytes, ended) = world.client_take(sock);
        self.inbox.extend(bytes);
        self.read_answers(now);
        if ended {
            self.drop_conn(world, now);
            return;
        }
        // Send what is due, in sequence order (answers come in that order on a connection).
        let mut out = Vec::new();
        let limits = super::node::limits();
        let due: Vec<u64> = self
            .outstanding
            .values()
            .filter(|o| o.request.is_none() && o.not_before_us <= now)
            .map(|o| o.seq)
            .collect();
        for seq in due {
            let id = self.next_request;
            self.next_request += 1;
            let o = self.outstanding.get_mut(&seq).expect("listed");
            let header = AppendHeader {
                writer_id: self.writer_id,
                writer_seq: seq,
                ..AppendHeader::new(self.log_id)
            };
            let mut builder = AppendBuilder::new(&mut out, id, &header, &limits);
            for index in 0..o.records {
                let value = Value {
                    writer: self.writer_id,
                    seq,
                    index,
                };
                builder
                    .push(&payload(self.log_id, value))
                    .expect("a workload batch fits the limits");
            }
            builder.finish();
            o.request = Some(id);
            o.sent_us = now;
        }
        if !out.is_empty() {
            world.client_send(sock, out);
        }
        let late = self
            .outstanding
            .values()
            .any(|o| o.request.is_some() && now.saturating_sub(o.sent_us) > APPEND_TIMEOUT_US);
        if late {
            // The outcome of what is out is unknown: start over on a new connection, where
            // every outstanding batch goes again with its key.
            self.drop_conn(world, now);
        }
    }

    fn drop_conn(&mut self, world: &mut World, now: u64) {
        if let Conn::Up { sock } | Conn::Connecting { sock } = self.conn {
            world.close(sock);
        }
        self.conn = Conn::Idle {
            at_us: now + RETRY_US,
        };
        self.inbox.clear();
        for o in self.outstanding.values_mut() {
            o.request = None;
        }
    }

    fn read_answers(&mut self, now: u64) {
        let limits = super::node::limits();
        let mut consumed = 0;
        loop {
            let frame = match parse_frame(&self.inbox[consumed..], &limits) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.unexpected
                        .push(format!("a bad frame from the node: {e}"));
                    break;
                }
            };
            consumed += frame.frame_bytes();
            let id = frame.request_id;
            let response = match decode_response(&frame, &limits) {
                Ok(r) => r,
                Err(e) => {
                    self.unexpected
                        .push(format!("a bad answer from the node: {e}"));
                    continue;
                }
            };
            let Some(seq) = self
                .outstanding
                .values()
                .find(|o| o.request == Some(id))
                .map(|o| o.seq)
            else {
                continue; // HELLO's answer, or an answer to an attempt given up on.
            };
            match response {
                Response::Append(a) => {
                    let lsns = a.first_lsn..a.first_lsn + u64::from(a.count);
                    self.outstanding.remove(&seq);
                    let op = self.ops.get_mut(&seq).expect("invoked");
                    match &op.outcome {
                        Outcome::Acked { lsns: first, .. } => {
                            self.reacks.push((seq, first.clone()));
                            if *first != lsns {
                                self.unexpected.push(format!(
                                    "writer {} batch {seq} acknowledged at {first:?} and again at {lsns:?}",
                                    self.writer_id
                                ));
                            }
                        }
                        Outcome::Indefinite { .. } | Outcome::Refused { .. } => {
                            op.outcome = Outcome::Acked { lsns, at: now };
                        }
                    }
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
                Response::Error(e) if e.code.is_retryable() => {
                    let o = self.outstanding.get_mut(&seq).expect("listed");
                    o.request = None;
                    o.not_before_us = now + RETRY_US;
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
        self.inbox.drain(..consumed);
    }
}
