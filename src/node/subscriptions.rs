//! A connection's subscriptions (PROTOCOL.md section 7): SUBSCRIBE, CREDIT and UNSUBSCRIBE,
//! and the pushes of committed records, pumped from the store (recent records come from its
//! tail cache) after every loop turn, within each subscription's credit and only while the
//! connection's output is not backed up, so a slow reader costs memory bounded per
//! connection and never stalls the shard.

use chainlog_net::{
    encode_response, ErrorCode, ErrorResponse, Limits, Opcode, ReadBuilder, ReadKind, Response,
    SubscribeResponse, ARG_NONE, LSN_FROM_TAIL,
};
use chainlog_storage::io::Io;
use chainlog_storage::Store;

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
    /// [`LSN_FROM_TAIL`]) with `credit` records: acknowledged in `out`, then pushed to at once.
    /// A `from` above the readable tail waits for it (PROTOCOL.md 6.4: a replica may lag the
    /// one the reader read from), and the LSNs below it are never pushed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn subscribe<I: Io>(
        &mut self,
        out: &mut Vec<u8>,
        store: &mut Store<I>,
        replicas: &Replicas,
        limits: &Limits,
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
        });
        let ack = Response::Subscribe(SubscribeResponse { start_lsn: start });
        encode_response(out, request_id, Opcode::Subscribe, &ack);
        self.pump(out, store, replicas, limits);
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
    /// backed up. Ends subscriptions whose log was deleted or trimmed past them. Returns
    /// whether any subscription remains.
    pub(crate) fn pump<I: Io>(
        &mut self,
        out: &mut Vec<u8>,
        store: &mut Store<I>,
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
                    if sub.next_lsn >= readable || sub.credit == 0 || out.len() >= PUSH_OUTPUT_MAX {
                        break None;
                    }
                    let max = sub
                        .credit
                        .min(u64::from(limits.batch_records_max))
                        .min(readable - sub.next_lsn) as usize;
                    let body_budget = limits.frame_bytes_max as usize / 2;
                    let records = match store.read(sub.log_id, sub.next_lsn, max, body_budget) {
                        Ok(records) => records,
                        Err(e) => break Some(Refusal::of_store(&e)),
                    };
                    let mut builder =
                        ReadBuilder::new(out, sub.id, ReadKind::Push, readable, limits);
                    let pushed = push_records(&mut builder, sub.log_id, &records, usize::MAX);
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
                    let sub = self.active.swap_remove(i);
                    let response = ErrorResponse::new(refusal.code, refusal.arg0, &refusal.message);
                    encode_response(
                        out,
                        sub.id,
                        Opcode::Subscribe,
                        &Response::PushError(response),
                    );
                }
                None => i += 1,
            }
        }
        !self.active.is_empty()
    }
}
