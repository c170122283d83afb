//! The writers: concurrent keyed appends through the client library, recorded as a history.
//!
//! Each writer has its own [`Client`] (its own connections, as a separate process would) and
//! appends batches of 1 to a few unique records to one log, several batches in flight at
//! once, each with the idempotency key (`writer_id`, `writer_seq`). An append whose outcome is
//! unknown (lost connection, timeout, connect failure) or that was refused with a retryable
//! error is sent again with the same key until it is answered or the run ends: then it is
//! indefinite. Only errors that resending cannot change end an append early (e.g.
//! WRITER_SEQ: its outcome is unknown for ever), also as indefinite, since an earlier attempt
//! may have been appended.
//!
//! A writer resends in `writer_seq` order, itself: once an append fails it sends nothing new
//! until its pipeline has drained, then resends the lowest failed one alone (after a pause)
//! until it is answered, then the other failed ones, in order, on the connection that
//! answered. (The client's own retries are off: each request would be resent on its own
//! timer, in any order; and resending all at once while the node comes back could connect for
//! a later batch after an earlier one found the port still closed. A batch that reaches the
//! head after a later batch of its writer is refused with WRITER_SEQ, which would leave the
//! batches in flight at a crash indefinite instead of answered.)
//!
//! The writers run on one current-thread runtime in a thread of their own, so the test's
//! thread stays free to kill and restart processes; within a writer, appends are spawned, and
//! so sent, in `writer_seq` order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chainlog::client::{AppendOptions, Client, ClientConfig, ClientError};
use chainlog::net::ErrorCode;
use chainlog::storage::SimRng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use chainlog::history::{payload, Op, Outcome, Value};

/// How hard the writers push.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) writers_per_log: u64,
    /// Appends each writer keeps in flight (well below the 32 batches a node remembers per
    /// writer, so a retry always finds its key).
    pub(crate) in_flight: usize,
    /// Records per append, from 1 to this.
    pub(crate) batch_records_max: u32,
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Append.
    Run,
    /// Send nothing new; keep resending what has no answer yet.
    Stop,
    /// Give up on what has no answer (it is indefinite).
    Abandon,
}

/// A client request's timeout: an append held while a chain member is down times out and is
/// resent (with its key) rather than waited for in silence.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a writer resends its failed appends (doubled each time, up to the max).
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(20);

/// What the writers did: per log (in the order given), every append invoked; and how often
/// each kind of error was seen.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) ops: Vec<Vec<Op<Instant>>>,
    pub(crate) errors: BTreeMap<String, u64>,
}

/// The writers of a run, stopped when dropped (their appends then end as indefinite).
#[derive(Debug)]
pub(crate) struct Load {
    phase: watch::Sender<Phase>,
    thread: Option<JoinHandle<History>>,
    acked: Arc<AtomicU64>,
}

impl Load {
    /// Starts `shape.writers_per_log` writers on each of `logs`, through clients of `target`
    /// (a standalone node or a controller); `seed` picks the batch sizes.
    pub(crate) fn start(target: SocketAddr, logs: &[u64], shape: Shape, seed: u64) -> Load {
        let (phase, watch_phase) = watch::channel(Phase::Run);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&acked);
        let logs = logs.to_vec();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut writers = JoinSet::new();
                for (l, &log_id) in logs.iter().enumerate() {
                    for w in 0..shape.writers_per_log {
                        // Writer ids are unique across the run's logs and nonzero.
                        let writer_id = 1 + l as u64 * 1000 + w;
                        let rng = SimRng::new(seed ^ writer_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                        writers.spawn(write(
                            Writer {
                                target,
                                log_id,
                                writer_id,
                                shape,
                                rng,
                                acked: Arc::clone(&counter),
                            },
                            watch_phase.clone(),
                        ));
                    }
                }
                let mut history = History {
                    ops: vec![Vec::new(); logs.len()],
                    ..History::default()
                };
                while let Some(done) = writers.join_next().await {
                    let (log_id, ops, errors) = done.expect("a writer");
                    let l = logs.iter().position(|&id| id == log_id).expect("its log");
                    history.ops[l].extend(ops);
                    for (kind, n) in errors {
                        *history.errors.entry(kind).or_default() += n;
                    }
                }
                history
            })
        });
        Load {
            phase,
            thread: Some(thread),
            acked,
        }
    }

    /// Appends acknowledged so far, all writers together.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stops the load: nothing new is sent; appends without an answer are resent for up to
    /// `drain` (every process is up by now), then given up as indefinite. Returns the history.
    pub(crate) fn finish(mut self, drain: Duration) -> History {
        self.phase.send_replace(Phase::Stop);
        let thread = self.thread.take().expect("not finished yet");
        let end = Instant::now() + drain;
        while !thread.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.phase.send_replace(Phase::Abandon);
        thread.join().expect("the writers' thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A failing test: let the writers' thread end (it is not waited for).
        self.phase.send_replace(Phase::Abandon);
    }
}

/// One writer's settings.
struct Writer {
    target: SocketAddr,
    log_id: u64,
    writer_id: u64,
    shape: Shape,
    rng: SimRng,
    acked: Arc<AtomicU64>,
}

/// An append of this writer without its final answer yet.
struct Pending {
    records: u32,
    invoked: Instant,
    last_error: String,
}

/// The answer to one try of an append: its sequence number, the result, when it came.
type Try = (u64, Result<Range<u64>, ClientError>, Instant);

/// Whether sending the same append again may get another answer.
fn worth_resending(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. }
        | ClientError::ConnectionLost { .. }
        | ClientError::Timeout { .. }
        | ClientError::MapUnsettled => true,
        ClientError::Server(s) => matches!(
            s.code,
            ErrorCode::Overloaded
                | ErrorCode::Unavailable
                | ErrorCode::WrongShard
                | ErrorCode::NotHead
                | ErrorCode::WrongEpoch
                | ErrorCode::UnknownLog
                | ErrorCode::Sealed
        ),
        ClientError::Protocol(_) | ClientError::Invalid(_) => false,
    }
}

/// A short name of the error's kind, for the run's tally.
fn kind(e: &ClientError) -> String {
    match e {
        ClientError::Server(s) => s.code.name().to_string(),
        ClientError::Connect { .. } => "connect".into(),
        ClientError::ConnectionLost { .. } => "connection lost".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Protocol(_) => "protocol".into(),
        ClientError::Invalid(_) => "invalid".into(),
        ClientError::MapUnsettled => "map unsettled".into(),
    }
}

/// Runs one writer until the load is abandoned, or stopped and every append answered;
/// returns its log, its appends and the errors it saw.
async fn write(
    mut w: Writer,
    mut phase: watch::Receiver<Phase>,
) -> (u64, Vec<Op<Instant>>, BTreeMap<String, u64>) {
    let config = ClientConfig {
        request_timeout: REQUEST_TIMEOUT,
        // The writer resends itself, in order (module header).
        retries_max: 0,
        ..ClientConfig::default()
    };
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let client = loop {
        match Client::connect_with(w.target, config).await {
            Ok(client) => break client,
            Err(e) if *phase.borrow() != Phase::Abandon => {
                *errors.entry(kind(&e)).or_default() += 1;
                tokio::time::sleep(BACKOFF_MAX).await;
            }
            Err(_) => return (w.log_id, Vec::new(), errors),
        }
    };
    let mut ops = Vec::new();
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut failed: BTreeSet<u64> = BTreeSet::new();
    let mut tries: JoinSet<Try> = JoinSet::new();
    let mut next_seq = 1;
    let mut backoff = BACKOFF_MIN;
    // The failed append resent alone, and whether it was answered since the last failure.
    let mut probe = None;
    let mut probe_answered = false;
    let send = |tries: &mut JoinSet<Try>, seq: u64, records: u32| {
        let client = client.clone();
        let (log_id, writer) = (w.log_id, w.writer_id);
        tries.spawn(async move {
            let payloads: Vec<Vec<u8>> = (0..records)
                .map(|index| payload(log_id, Value { writer, seq, index }))
                .collect();
            let options = AppendOptions {
                idempotency: Some((writer, seq)),
                ..AppendOptions::default()
            };
            let result = client.append_with(log_id, &payloads, &options).await;
            (seq, result, Instant::now())
        });
    };
    loop {
        let now = *phase.borrow_and_update();
        if now == Phase::Abandon {
            break;
        }
        if tries.is_empty() {
            if probe_answered {
                for seq in std::mem::take(&mut failed) {
                    send(&mut tries, seq, pending[&seq].records);
                }
                probe_answered = false;
            } else if let Some(&seq) = failed.first() {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = phase.changed() => continue,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                failed.remove(&seq);
                send(&mut tries, seq, pending[&seq].records);
                probe = Some(seq);
                continue;
            }
        }
        if tries.is_empty() && now == Phase::Stop {
            break; // nothing failed is left either
        }
        if now == Phase::Run && failed.is_empty() && probe.is_none() {
            while tries.len() < w.shape.in_flight {
                let records = 1 + w.rng.below(u64::from(w.shape.batch_records_max)) as u32;
                pending.insert(
                    next_seq,
                    Pending {
                        records,
                        invoked: Instant::now(),
                        last_error: String::new(),
                    },
                );
                send(&mut tries, next_seq, records);
                next_seq += 1;
            }
        }
        tokio::select! {
            Some(done) = tries.join_next() => {
                let (seq, result, at) = done.expect("an append task");
                let probed = probe == Some(seq);
                if probed {
                    probe = None;
                }
                match result {
                    Ok(lsns) => {
                        let p = pending.remove(&seq).expect("pending");
                        ops.push(acked(&w, seq, p, lsns, at));
                        backoff = BACKOFF_MIN;
                        probe_answered |= probed;
                    }
                    Err(e) => {
                        probe_answered = false;
                        *errors.entry(kind(&e)).or_default() += 1;
                        if worth_resending(&e) {
                            pending.get_mut(&seq).expect("pending").last_error = e.to_string();
                            failed.insert(seq);
                        } else {
                            let p = pending.remove(&seq).expect("pending");
                            ops.push(indefinite(&w, seq, p, e.to_string()));
                        }
                    }
                }
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    break; // the load is gone
                }
            }
        }
    }
    // What is still out: answers that came before the abort count; the rest is indefinite.
    tries.abort_all();
    while let Some(done) = tries.join_next().await {
        if let Ok((seq, Ok(lsns), at)) = done {
            let p = pending.remove(&seq).expect("pending");
            ops.push(acked(&w, seq, p, lsns, at));
        }
    }
    for (seq, p) in std::mem::take(&mut pending) {
        let why = format!("the run ended (last error: {})", p.last_error);
        ops.push(indefinite(&w, seq, p, why));
    }
    (w.log_id, ops, errors)
}

fn acked(w: &Writer, seq: u64, p: Pending, lsns: Range<u64>, at: Instant) -> Op<Instant> {
    w.acked.fetch_add(1, Ordering::Relaxed);
    Op {
        writer: w.writer_id,
        seq,
        records: p.records,
        invoked: p.invoked,
        expected_lsn: None,
        fencing_token: None,
        outcome: Outcome::Acked { lsns, at },
    }
}

fn indefinite(w: &Writer, seq: u64, p: Pending, last_error: String) -> Op<Instant> {
    Op {
        writer: w.writer_id,
        seq,
        records: p.records,
        invoked: p.invoked,
        expected_lsn: None,
        fencing_token: None,
        outcome: Outcome::Indefinite { last_error },
    }
}
