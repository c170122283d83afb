//! A connection's subscriptions (PROTOCOL.md section 7): SUBSCRIBE, CREDIT and UNSUBSCRIBE,
//! and the pushes of committed records, pumped from the store (recent records come from its
//! tail cache) after every loop turn, within each subscription's credit and only while the
//! connection's output is not backed up, so a slow reader costs memory bounded per
//! connection and never stalls the shard. A subscription whose next records are on disk only
//! waits for its read ([`super::reads`]) and pushes them when it completes
//! ([`Subscriptions::on_read`]); the other subscriptions and the shard's appends go on.

use chainlog_net::{
    encode_response, ErrorCode, ErrorResponse, Limits, Opcode, ReadBuilder, ReadKind, Response,
    SubscribeResponse, ARG_NONE, LSN_FROM_TAIL,
};
use chainlog_storage::io::Io;
use chainlog_storage::{
    Error, ReadKind as StoreReadKind, ReadOutput, ReadRecord, ReadRequest, Result as StoreResult,
    Store,
};

use super::reads::{Owner, Reads, Started};
use super::records::push_records;
use super::refusal::{refuse, Refusal};
use super::replicas::Replicas;

/// Subscriptions one connection may hold.
const SUBSCRIPTIONS_MAX: usize = 64;

/// A connection's queued output above which its subscriptions wait (they resume as the
/// socket drains), so a slow reader cannot make the shard buffer without bound.
const PUSH_OUTPUT_MAX: usize = 4 << 20;

/// A subscription of a connection: the log, where its stream is, and how much it may push.
#[derive(Debug)]
struct Subscription {
    /// The SUBSCRIBE's request id (pushes carry it).
    id: u64,
    log_id: u64,
    /// The LSN of the next record to push.
    next_lsn: u64,
    /// Records the server may still push.
    credit: u64,
    /// The token of its read waiting for the disk, if one is: it pushes nothing until then.
    reading: Option<u64>,
}

/// The active subscriptions of one connection.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    active: Vec<Subscription>,
}

impl Subscriptions {
    /// True if none is active.
    pub(crate) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// SUBSCRIBE (request `request_id`) to `log_id` from `from` (or the readable tail, for
    /// [`LSN_FROM_TAIL`]) with `credit` records: acknowledged in `out`, then pushed to at the
    /// end of the turn ([`pump`](Self::pump)).
    /// A `from` above the readable tail waits for it (PROTOCOL.md 6.4: a replica may lag the
    /// one the reader read from), and the LSNs below it are never pushed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn subscribe<I: Io>(
        &mut self,
        out: &mut Vec<u8>,
        store: &Store<I>,
        replicas: &Replicas,
        request_id: u64,
        log_id: u64,
        from: u64,
        credit: u32,
    ) -> Result<(), Refusal> {
        replicas.known(log_id)?;
        if self.active.iter().any(|s| s.id == request_id) {
            return Err(refuse(
                ErrorCode::Malformed,
                ARG_NONE,
                "a subscription with this request id is active",
            ));
        }
        if self.active.len() >= SUBSCRIPTIONS_MAX {
            return Err(refuse(
                ErrorCode::Overloaded,
                1000,
                format!("at most {SUBSCRIPTIONS_MAX} subscriptions per connection"),
            ));
        }
        let tail = replicas.readable(log_id);
        let trim_point = store.tail(log_id).map_or(0, |t| t.trim_point);
        let start = if from == LSN_FROM_TAIL { tail } else { from };
        if start < trim_point {
            return Err(refuse(
                ErrorCode::Trimmed,
                trim_point,
                format!("records below {trim_point} are trimmed"),
            ));
        }
        self.active.push(Subscription {
            id: request_id,
            log_id,
            next_lsn: start,
            credit: u64::from(credit),
            reading: None,
        });
        let ack = Response::Subscribe(SubscribeResponse { start_lsn: start });
        encode_response(out, request_id, Opcode::Subscribe, &ack);
        Ok(())
    }

    /// CREDIT: `records` more for subscription `id` (none if it ended meanwhile), answered.
    pub(crate) fn credit(&mut self, out: &mut Vec<u8>, request_id: u64, id: u64, records: u32) {
        if let Some(sub) = self.active.iter_mut().find(|s| s.id == id) {
            sub.credit = sub.credit.saturating_add(u64::from(records));
        }
        encode_response(out, request_id, Opcode::Credit, &Response::Credit);
    }

    /// UNSUBSCRIBE of subscription `id`: its END push (if it was active) comes before the
    /// answer (PROTOCOL.md 7).
    pub(crate) fn unsubscribe(
        &mut self,
        out: &mut Vec<u8>,
        replicas: &Replicas,
        limits: &Limits,
        request_id: u64,
        id: u64,
    ) {
        if let Some(i) = self.active.iter().position(|s| s.id == id) {
            let sub = self.active.swap_remove(i);
            let tail = replicas.readable(sub.log_id);
            ReadBuilder::new(out, sub.id, ReadKind::PushEnd, tail, limits).finish();
        }
        encode_response(out, request_id, Opcode::Unsubscribe, &Response::Unsubscribe);
    }

    /// Pushes committed records to the subscriptions, within their credit, while `out` is not
    /// backed up; a subscription whose next records are on disk only starts a read for
    /// `conn` (this connection's `conn::ack_token`) and waits for it. Ends subscriptions whose
    /// log was deleted or trimmed past them. Returns whether any subscription remains.
    pub(crate) fn pump<I: Io>(
        &mut self,
        out: &mut Vec<u8>,
        store: &mut Store<I>,
        reads: &mut Reads,
        conn: u64,
        replicas: &Replicas,
        limits: &Limits,
    ) -> bool {
        let mut i = 0;
        while i < self.active.len() {
            let sub = &mut self.active[i];
            let readable = replicas.readable(sub.log_id);
            let ended = if replicas.get(sub.log_id).is_none() {
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
                    if sub.reading.is_some()
                        || sub.next_lsn >= readable
                        || sub.credit == 0
                        || out.len() >= PUSH_OUTPUT_MAX
                    {
                        break None;
                    }
                    let request = ReadRequest {
                        log_id: sub.log_id,
                        from: sub.next_lsn,
                        max_records: sub
                            .credit
                            .min(u64::from(limits.batch_records_max))
                            .min(readable - sub.next_lsn)
                            as usize,
                        max_bytes: limits.frame_bytes_max as usize / 2,
                        kind: StoreReadKind::Durable,
                    };
                    let records = match reads.start(store, request, Owner::Push { conn }) {
                        Ok(Started::Now(ReadOutput::Records(records))) => records,
                        Ok(Started::Now(ReadOutput::Runs(_))) => unreachable!("a read of records"),
                        Ok(Started::Waiting(token)) => {
                            sub.reading = Some(token);
                            break None;
                        }
                        // Every read slot waits: a later turn (one completes first) reads.
                        Err(Error::Overloaded) => break None,
                        Err(e) => break Some(Refusal::of_store(&e)),
                    };
                    if !sub.push(out, &records, readable, limits) {
                        break None;
                    }
                }
            };
            match ended {
                Some(refusal) => self.end(i, out, &refusal),
                None => i += 1,
            }
        }
        !self.active.is_empty()
    }

    /// The read `token` (of a subscription of this connection, or of one that ended since)
    /// finished: its records are pushed, within what is readable and the credit now; a read
    /// that failed ends the subscription as a read that waited in the call would have.
    pub(crate) fn on_read(
        &mut self,
        out: &mut Vec<u8>,
        replicas: &Replicas,
        limits: &Limits,
        token: u64,
        result: StoreResult<ReadOutput>,
    ) {
        let Some(i) = self.active.iter().position(|s| s.reading == Some(token)) else {
            return; // Unsubscribed meanwhile.
        };
        let sub = &mut self.active[i];
        sub.reading = None;
        match result {
            Ok(ReadOutput::Records(records)) => {
                let readable = replicas.readable(sub.log_id);
                sub.push(out, &records, readable, limits);
            }
            Ok(ReadOutput::Runs(_)) => unreachable!("a read of records"),
            Err(e) => self.end(i, out, &Refusal::of_store(&e)),
        }
    }

    /// Ends the subscription at `i` with `refusal`'s error push.
    fn end(&mut self, i: usize, out: &mut Vec<u8>, refusal: &Refusal) {
        let sub = self.active.swap_remove(i);
        let response = ErrorResponse::new(refusal.code, refusal.arg0, &refusal.message);
        encode_response(
            out,
            sub.id,
            Opcode::Subscribe,
            &Response::PushError(response),
        );
    }
}

impl Subscription {
    /// Pushes what of `records` (read from `next_lsn` on) is below `readable` and within the
    /// credit, in one push. Returns whether any was pushed.
    fn push(
        &mut self,
        out: &mut Vec<u8>,
        records: &[ReadRecord],
        readable: u64,
        limits: &Limits,
    ) -> bool {
        if records.first().map(|r| r.lsn) != Some(self.next_lsn) {
            // None (cannot happen below the readable tail), or a read that a truncation cut
            // (the next pump reads again).
            return false;
        }
        let take = records
            .iter()
            .take(self.credit as usize)
            .take_while(|r| r.lsn < readable)
            .count();
        let mut builder = ReadBuilder::new(out, self.id, ReadKind::Push, readable, limits);
        let pushed = push_records(&mut builder, self.log_id, &records[..take], usize::MAX);
        if pushed == 0 {
            // Nothing fit (cannot happen within the limits): never send an empty push.
            drop(builder);
            return false;
        }
        builder.finish();
        self.next_lsn += pushed;
        self.credit -= pushed;
        true
    }
}
