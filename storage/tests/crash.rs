//! Crash consistency of the store on the simulated disk.
//!
//! Each seed drives a random workload (appends of 0..3000-byte records across eight logs, trims,
//! truncations, resets, reads, polls) against a store with small segments, so that rollovers,
//! snapshots and segment deletions happen often; at a random point the disk loses power
//! (`SimDisk::crash`: unflushed writes dropped, one of them torn), and a new store recovers.
//! The test keeps a model: the state the store had at the last recovery, and every append,
//! trim, truncation and reset accepted since, in call order (which is frame order). It checks
//! after every recovery that:
//!
//! - the recovered state is exactly the model's state after some prefix of those calls that
//!   holds every acknowledged one: each log's next LSN, trim point and fencing token, and
//!   every record readable from the trim point, byte for byte (so every acknowledged append
//!   and trim survived, whatever survived beyond is what was appended there, whole batches
//!   only, nothing after a lost call is visible, and a truncation or reset that survived
//!   left nothing of what it discarded);
//! - LSNs are dense from the trim point, and new appends continue after the recovered tail;
//! - every append carries an idempotency key (one writer per log) and some a fencing token:
//!   the recovered token is the prefix's, and retrying any batch the writer's window holds in
//!   that state (its last `WRITER_WINDOW` batches that no truncation or reset discarded)
//!   returns its original LSNs and appends nothing (retries are also made during the workload,
//!   where their acks must come in call order, after the original's); a batch that a
//!   truncation or reset discarded is forgotten, and the writer's next batch reuses its
//!   sequence number: it must be appended anew;
//! - a third of the appends are replica appends (`append_replica`: records stamped by a head,
//!   with the head's token and key applied unconditionally), and their token and key survive
//!   exactly like a head's, so that the retries above find them too;
//! - truncations discard a random suffix (acknowledged or not, durable or not) and resets
//!   start a log again below, at or above its tail, sometimes raising its token: a token
//!   stays when a truncation discards the batch that raised it;
//! - half the reads are `read_stored`, which must also return every record not yet durable,
//!   and some are asynchronous (`read_async`), left waiting for the disk while the workload
//!   goes on: when one completes it must hold exactly the log's records at that point (a
//!   truncation or reset meanwhile included), or `Trimmed` if a trim passed its first LSN.
//!
//! Some cycles also stop the store cleanly (`Store::close`) and reopen it before the crash: the
//! next open must find the clean stop, cut nothing and have everything that was appended.
//!
//! The tests differ in where the power fails: between store calls (with and without reads in
//! the workload), between any two I/O operations inside a call, inside a clean stop or inside
//! recovery itself (a wrapper backend pulls the plug), during a new store's first open, at
//! each I/O operation of a clean stop in turn, and right after a recovery (recovering twice
//! must give the same state). One more test crashes with frame writes in flight and damages
//! the frames before them. Several crash/recover cycles run per
//! seed; a failing run prints its seed, and
//! `CHAINLOG_SEED=<seed> cargo test -p chainlog-storage --test crash <test>` replays just that
//! seed (`CHAINLOG_SEED_COUNT=<n>` runs n seeds per test instead of the default, for a soak).

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use chainlog_storage::format::{
    check_frame, FrameHeader, BLOCK_SIZE, FRAME_HEADER_BYTES, FRAME_MAGIC,
};
use chainlog_storage::io::{Completion, FileId};
use chainlog_storage::{
    Ack, AlignedBuf, AppendOptions, Batch, Durability, DurabilityMode, Error, FaultConfig, Io,
    LogTail, ReadDone, ReadKind, ReadOutput, ReadRecord, ReadRequest, Record, RecoveryReport,
    ReplicaState, SimDisk, SimIo, SimRng, Store, StoreConfig, WRITER_WINDOW,
};

mod common;

const DIR: &str = "/sim/shard";
/// Log ids used by the workload (not dense, not starting at 0).
const LOG_IDS: [u64; 8] = [1, 2, 3, 5, 8, 13, 21, 1 << 40];
/// The writer of every log's appends (idempotency keys).
const WRITER_ID: u64 = 7;
/// Crash/recover cycles per seed.
const CYCLES_PER_SEED: u64 = 5;
/// The least number of crash points one run must exercise.
const CRASH_POINTS_MIN: u64 = 1_000;
/// Asynchronous reads the workload leaves waiting at most.
const OUTSTANDING_READS_MAX: usize = 4;

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// One log, as the accepted calls left it.
#[derive(Clone, Default)]
struct LogModel {
    /// The LSN of `records[0]`: 0, or where the last reset started the log.
    first: u64,
    /// (epoch, payload) appended at each LSN from `first`, acknowledged or not.
    records: Vec<(u64, Rc<Vec<u8>>)>,
    /// Every LSN below is durable (acknowledged, or recovered).
    acked: u64,
    /// The trim point.
    trim: u64,
    /// The fencing token.
    fence: u64,
    /// The writer's batches the store remembers, oldest first: sequence number and LSNs.
    window: VecDeque<(u64, Range<u64>)>,
    /// The writer's next sequence number.
    next_seq: u64,
}

impl std::fmt::Debug for LogModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payloads would drown the message: their count is what matters.
        f.debug_struct("LogModel")
            .field("first", &self.first)
            .field("next_lsn", &self.next_lsn())
            .field("acked", &self.acked)
            .field("trim", &self.trim)
            .field("fence", &self.fence)
            .field("window", &self.window)
            .finish()
    }
}

impl LogModel {
    fn next_lsn(&self) -> u64 {
        self.first + self.records.len() as u64
    }

    fn record(&self, lsn: u64) -> &(u64, Rc<Vec<u8>>) {
        &self.records[(lsn - self.first) as usize]
    }

    /// What the store would say of the log: next LSN, trim point, fencing token.
    fn summary(&self) -> (u64, u64, u64) {
        (self.next_lsn(), self.trim, self.fence)
    }

    /// The writer's batches ending after `lsn` are forgotten; its next batch reuses the
    /// first sequence number forgotten (a retry of it, which must be appended anew).
    fn forget_from(&mut self, lsn: u64) {
        while self.window.back().is_some_and(|(_, lsns)| lsns.end > lsn) {
            let (seq, _) = self.window.pop_back().expect("checked");
            self.next_seq = self.next_seq.min(seq);
        }
    }
}

/// An append, trim, truncation or reset accepted by the store, in the order they were made.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Append {
        log: u64,
        lsns: Range<u64>,
        epoch: u64,
        payloads: Vec<Rc<Vec<u8>>>,
        seq: u64,
        /// The fencing token it came with.
        token: Option<u64>,
        /// Its records below this LSN are still the log's (a truncation or reset made since
        /// may have discarded the rest): what becomes durable when it is acknowledged.
        live_end: u64,
    },
    Trim {
        log: u64,
        before: u64,
    },
    /// A retried batch, answered with its original LSNs.
    Retry {
        log: u64,
        lsns: Range<u64>,
    },
    Truncate {
        log: u64,
        from: u64,
    },
    Reset {
        log: u64,
        at: u64,
        token: u64,
    },
}

type Logs = BTreeMap<u64, LogModel>;

/// Applies an accepted call to the logs, as the store does.
fn apply(logs: &mut Logs, event: &Event) {
    match event {
        Event::Append {
            log,
            lsns,
            epoch,
            payloads,
            seq,
            token,
            ..
        } => {
            let m = logs.entry(*log).or_default();
            assert_eq!(lsns.start, m.next_lsn(), "log {log}: LSNs are dense");
            m.records
                .extend(payloads.iter().map(|p| (*epoch, p.clone())));
            m.fence = m.fence.max(token.unwrap_or(0));
            if m.window.len() == WRITER_WINDOW {
                m.window.pop_front();
            }
            m.window.push_back((*seq, lsns.clone()));
            m.next_seq = seq + 1;
        }
        Event::Trim { log, before } => {
            let m = logs.get_mut(log).expect("a trimmed log exists");
            m.trim = m.trim.max(*before);
        }
        Event::Retry { .. } => {}
        Event::Truncate { log, from } => {
            let m = logs.get_mut(log).expect("a truncated log exists");
            m.records.truncate((from - m.first) as usize);
            m.acked = m.acked.min(*from);
            m.forget_from(*from);
        }
        Event::Reset { log, at, token } => {
            let m = logs.entry(*log).or_default();
            m.first = *at;
            m.records.clear();
            m.acked = *at;
            m.trim = *at;
            m.fence = m.fence.max(*token);
            m.forget_from(0);
        }
    }
}

/// An asynchronous read waiting for the disk.
#[derive(Debug)]
struct Outstanding {
    request: ReadRequest,
    token: u64,
}

#[derive(Debug, Default)]
struct Model {
    /// The logs at the last recovery.
    base: Logs,
    /// The logs after every call accepted since.
    logs: Logs,
    /// The calls accepted since the last recovery, in call order (which is frame order).
    events: Vec<Event>,
    /// The event each outstanding token stands for (index into `events`).
    tokens: BTreeMap<u64, usize>,
    /// Events `..acked_events` are acknowledged: acks come in exactly the order of the calls.
    acked_events: usize,
    next_token: u64,
    /// Asynchronous reads waiting, by token.
    reads: Vec<Outstanding>,
    next_read_token: u64,
}

impl Model {
    fn accept(&mut self, event: Event) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        match &event {
            // Appends not acknowledged yet: their records from the cut on never become
            // durable (readable) now.
            Event::Truncate { log, from } | Event::Reset { log, at: from, .. } => {
                let from = if matches!(event, Event::Reset { .. }) {
                    0
                } else {
                    *from
                };
                for e in &mut self.events[self.acked_events..] {
                    if let Event::Append {
                        log: l, live_end, ..
                    } = e
                    {
                        if l == log {
                            *live_end = (*live_end).min(from);
                        }
                    }
                }
            }
            _ => {}
        }
        apply(&mut self.logs, &event);
        self.tokens.insert(token, self.events.len());
        self.events.push(event);
        token
    }

    fn on_acks(&mut self, acks: &[Ack]) {
        for ack in acks {
            let index = self
                .tokens
                .remove(&ack.token)
                .unwrap_or_else(|| panic!("ack of an unknown or already acked token: {ack:?}"));
            assert_eq!(
                index, self.acked_events,
                "acks come in the order of the calls: {ack:?}"
            );
            self.acked_events += 1;
            let (log, lsns) = match self.events[index].clone() {
                Event::Append {
                    log,
                    lsns,
                    live_end,
                    ..
                } => {
                    let m = self.logs.get_mut(&log).expect("log");
                    if live_end > lsns.start {
                        m.acked = m.acked.max(live_end);
                    }
                    (log, lsns)
                }
                Event::Trim { log, before } => (log, before..before),
                Event::Retry { log, lsns } => (log, lsns),
                Event::Truncate { log, from } => (log, from..from),
                Event::Reset { log, at, .. } => (log, at..at),
            };
            assert_eq!((ack.log_id, &ack.lsns), (log, &lsns), "ack of {ack:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

/// What a run exercised (to check that it tests what it claims to).
#[derive(Debug, Default)]
struct Coverage {
    crash_points: u64,
    appends: u64,
    /// Appends made with `append_replica`.
    replica_appends: u64,
    trims: u64,
    retries: u64,
    /// Batches retried (and found by their idempotency key) right after a recovery.
    retries_after_recovery: u64,
    truncations: u64,
    resets: u64,
    /// Recoveries whose state had a truncation or reset among its calls since the last one.
    cuts_recovered: u64,
    reads: u64,
    /// Reads made with `read_stored` that returned records not durable yet.
    stored_reads: u64,
    /// Asynchronous reads that waited for the disk and were checked when they completed.
    async_reads: u64,
    segments_created: u64,
    segments_deleted: u64,
    torn_tails: u64,
    /// Clean stops (`Store::close`) that the next open found as such.
    clean_stops: u64,
    files_removed_by_recovery: u64,
    /// Recoveries that surfaced appends that had not been acknowledged before the crash.
    unacked_survivors: u64,
    /// Recoveries that lost calls that had been accepted (never acknowledged).
    unacked_lost: u64,
}

fn config(rng: &mut SimRng) -> StoreConfig {
    let writes_in_flight_max = 1 + rng.below(4) as usize;
    StoreConfig {
        segment_bytes: 256 << 10,
        batch_bytes_max: 32 << 10,
        record_bytes_max: 4 << 10,
        writes_in_flight_max,
        write_buffers: writes_in_flight_max + 3 + rng.below(4) as usize,
        logs_max: 64,
        writers_max: LOG_IDS.len(),
        durability: match rng.below(3) {
            0 => DurabilityMode::Auto,
            1 => DurabilityMode::Dsync,
            _ => DurabilityMode::Fdatasync,
        },
        calibration_writes: 2,
    }
}

fn faults(rng: &mut SimRng) -> FaultConfig {
    FaultConfig {
        seed: rng.next_u64(),
        latency_us_max: [1, 20, 300, 5_000][rng.below(4) as usize],
        ..FaultConfig::default()
    }
}

fn random_payload(rng: &mut SimRng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1 => 3000,
        _ => rng.below(3001) as usize,
    };
    let mut p = Vec::with_capacity(len + 8);
    while p.len() < len {
        p.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    p.truncate(len);
    p
}

fn open(disk: &SimDisk, rng: &mut SimRng) -> Store<SimIo> {
    Store::open(
        disk.io(faults(rng)),
        Path::new(DIR),
        config(rng),
        Arc::new(disk.clock()),
    )
    .unwrap_or_else(|e| panic!("recovery failed: {e}"))
}

/// A store operation failed (only expected once the disk lost power under it).
#[derive(Debug)]
struct Failed {
    what: String,
    error: Error,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            what: String::new(),
            error,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.error)
    }
}

type Step = Result<(), Failed>;

fn poll<I: Io>(store: &mut Store<I>, model: &mut Model, wait: bool) -> Step {
    let mut acks = Vec::new();
    let result = store.poll(wait, &mut acks);
    // Acks handed out are durable even when the store fails in the same call.
    model.on_acks(&acks);
    check_reads_done(store, model);
    Ok(result?)
}

fn sync_all<I: Io>(store: &mut Store<I>, model: &mut Model) -> Step {
    let mut acks = Vec::new();
    let result = store.sync_all(&mut acks);
    model.on_acks(&acks);
    check_reads_done(store, model);
    result?;
    assert!(model.tokens.is_empty(), "sync_all acknowledges everything");
    Ok(())
}

/// Checks the store's view of `log` against the model (between crashes).
fn check_tail<I: Io>(store: &Store<I>, model: &Model, log: u64) -> Option<LogTail> {
    let m = model.logs.get(&log);
    let tail = store.tail(log);
    match (m, tail) {
        (None, None) => None,
        (Some(m), Some(t)) => {
            assert_eq!(t.next_lsn, m.next_lsn(), "log {log}: next LSN");
            assert_eq!(t.trim_point, m.trim, "log {log}: trim point");
            assert_eq!(t.fencing_token, m.fence, "log {log}: fencing token");
            assert!(
                m.acked <= t.durable_lsn && t.durable_lsn <= t.next_lsn,
                "log {log}: durable LSN {} outside acked {} ..= next {}",
                t.durable_lsn,
                m.acked,
                t.next_lsn
            );
            Some(t)
        }
        (m, t) => panic!("log {log}: model {m:?}, store {t:?}"),
    }
}

/// Appends a batch, with `append_batch` or (a third of the time) as a replica of a head that
/// sequenced it with the same token and key; returns whether it was a replica append.
fn append<I: Io>(
    store: &mut Store<I>,
    model: &mut Model,
    rng: &mut SimRng,
    epoch: u64,
) -> Result<bool, Failed> {
    let log = LOG_IDS[rng.below(LOG_IDS.len() as u64) as usize];
    let count = 1 + rng.below(4) as usize;
    let payloads: Vec<Vec<u8>> = (0..count).map(|_| random_payload(rng)).collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    let m = model.logs.get(&log).cloned().unwrap_or_default();
    // Sequence numbers increase, sometimes with gaps.
    let seq = m.next_seq + rng.below(2);
    let fence = m.fence;
    let token_asked = rng.one_in(4).then(|| match rng.below(3) {
        0 => fence.saturating_sub(1),
        1 => fence,
        _ => fence + 1 + rng.below(3),
    });
    let options = AppendOptions {
        writer: Some((WRITER_ID, seq)),
        fencing_token: token_asked,
        ..AppendOptions::default()
    };
    // A replica gets the batch stamped, with the head's decisions (the head took a lower
    // token than the log's because it is the head's to check, not the replica's).
    let replica = rng.one_in(3);
    let first_lsn = m.next_lsn();
    let stamped = common::stamped(log, first_lsn, epoch, &payloads);
    let state = ReplicaState {
        fencing_token: token_asked,
        writer: options.writer,
    };
    let token = model.next_token;
    let lsns = loop {
        let appended = if replica {
            let count = count as u32;
            store.append_replica(log, epoch, first_lsn, &stamped, count, &state, false, token)
        } else {
            let batch = Batch::Records(&records);
            store.append_batch(log, epoch, &options, batch, false, token)
        };
        match appended {
            Ok((lsns, pin)) => {
                assert!(pin.is_none(), "no pin unless asked");
                break lsns;
            }
            Err(Error::Overloaded) => poll(store, model, true)?,
            Err(Error::Fenced { token: current }) if !replica => {
                assert!(
                    token_asked < Some(fence),
                    "log {log}: fenced at {fence} by {token_asked:?}"
                );
                assert_eq!(current, fence);
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert!(
        replica || token_asked.is_none_or(|t| t >= fence),
        "log {log}: a lower token was accepted"
    );
    // New (a sequence number a truncation made the writer forget included): appended anew.
    assert_eq!(
        lsns,
        first_lsn..first_lsn + count as u64,
        "log {log}: batch {seq} is appended at the tail"
    );
    let event = Event::Append {
        log,
        live_end: lsns.end,
        lsns,
        epoch,
        payloads: payloads.into_iter().map(Rc::new).collect(),
        seq,
        token: token_asked,
    };
    assert_eq!(model.accept(event), token);
    Ok(replica)
}

/// Sends a batch of the writer's window again: it gets its original LSNs, nothing is appended.
fn retry<I: Io>(store: &mut Store<I>, model: &mut Model, rng: &mut SimRng) -> Step {
    let log = LOG_IDS[rng.below(LOG_IDS.len() as u64) as usize];
    let Some(m) = model.logs.get(&log) else {
        return Ok(());
    };
    if m.window.is_empty() {
        return Ok(());
    }
    let (seq, lsns) = m.window[rng.below(m.window.len() as u64) as usize].clone();
    let before = store.tail(log);
    let payload = random_payload(rng);
    let options = AppendOptions {
        writer: Some((WRITER_ID, seq)),
        // Conditions no longer true do not matter: the original succeeded.
        expected_lsn: Some(lsns.start),
        ..AppendOptions::default()
    };
    let token = model.next_token;
    let batch = Batch::Records(&[Record::new(&payload)]);
    let (got, pin) = store.append_batch(log, 1, &options, batch, true, token)?;
    assert_eq!(got, lsns, "log {log}: retry of batch {seq}");
    assert!(pin.is_none(), "log {log}: a retry stores nothing to pin");
    assert_eq!(
        store.tail(log),
        before,
        "log {log}: a retry appends nothing"
    );
    assert_eq!(model.accept(Event::Retry { log, lsns }), token);
    Ok(())
}

fn trim<I: Io>(store: &mut Store<I>, model: &mut Model, rng: &mut SimRng) -> Step {
    let log = LOG_IDS[rng.below(LOG_IDS.len() as u64) as usize];
    let Some(m) = model.logs.get(&log) else {
        match store.trim(log, 0, 0) {
            Err(Error::UnknownLog(l)) if l == log => return Ok(()),
            other => return Err(other.expect_err("a trim of an unknown log fails").into()),
        }
    };
    let next = m.next_lsn();
    if next == m.trim {
        return Ok(());
    }
    // A third trim everything (so that whole segments become free), a third a few records.
    let before = match rng.below(3) {
        0 => next,
        1 => next.min(m.trim + 1 + rng.below(8)),
        _ => m.trim + 1 + rng.below(next - m.trim),
    };
    let token = model.next_token;
    loop {
        match store.trim(log, before, token) {
            Ok(()) => break,
            Err(Error::Overloaded) => poll(store, model, true)?,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(model.accept(Event::Trim { log, before }), token);
    Ok(())
}

/// Truncates a random suffix of a log (mostly the last few records, sometimes down to its trim
/// point, sometimes nothing), checking the refusals on the way.
fn truncate<I: Io>(store: &mut Store<I>, model: &mut Model, rng: &mut SimRng) -> Step {
    let log = LOG_IDS[rng.below(LOG_IDS.len() as u64) as usize];
    let Some(m) = model.logs.get(&log) else {
        return match store.truncate(log, 0, 0) {
            Err(Error::UnknownLog(l)) if l == log => Ok(()),
            other => Err(other
                .expect_err("a truncation of an unknown log fails")
                .into()),
        };
    };
    let (next, trim) = (m.next_lsn(), m.trim);
    // The store may have failed already (an I/O error in the last poll): that ends the run.
    let failed = |e: &Result<(), Error>| matches!(e, Err(Error::Fatal(_)));
    if trim > 0 {
        let below = store.truncate(log, trim - 1, u64::MAX);
        if failed(&below) {
            return Err(below.expect_err("failed").into());
        }
        assert!(
            matches!(below, Err(Error::Trimmed { trim_point }) if trim_point == trim),
            "log {log}: a truncation below the trim point {trim}: {below:?}"
        );
    }
    let beyond = store.truncate(log, next + 1, u64::MAX);
    if failed(&beyond) {
        return Err(beyond.expect_err("failed").into());
    }
    assert!(
        matches!(beyond, Err(Error::TruncateBeyondTail { from, tail }) if from == next + 1 && tail == next),
        "log {log}: a truncation beyond the tail {next}: {beyond:?}"
    );
    let from = match rng.below(4) {
        0 => trim,
        1 => next,
        _ => next - rng.below(next - trim + 1).min(1 + rng.below(6)),
    };
    let token = model.next_token;
    loop {
        match store.truncate(log, from, token) {
            Ok(()) => break,
            Err(Error::Overloaded) => poll(store, model, true)?,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(model.accept(Event::Truncate { log, from }), token);
    check_tail(store, model, log);
    Ok(())
}

/// Starts a log again, empty: a new one or an existing one, below, at or above its tail.
fn reset<I: Io>(store: &mut Store<I>, model: &mut Model, rng: &mut SimRng) -> Step {
    let log = LOG_IDS[rng.below(LOG_IDS.len() as u64) as usize];
    let m = model.logs.get(&log).cloned().unwrap_or_default();
    let next = m.next_lsn();
    let at = match rng.below(3) {
        0 => rng.below(next + 1),
        1 => next,
        _ => next + rng.below(1000),
    };
    let fence = match rng.below(3) {
        0 => 0,
        1 => m.fence.saturating_sub(1),
        _ => m.fence + 1 + rng.below(3),
    };
    let token = model.next_token;
    loop {
        match store.reset_log(log, at, fence, &[], token) {
            Ok(()) => break,
            Err(Error::Overloaded) => poll(store, model, true)?,
            Err(e) => return Err(e.into()),
        }
    }
    let event = Event::Reset {
        log,
        at,
        token: fence,
    };
    assert_eq!(model.accept(event), token);
    check_tail(store, model, log);
    if at > 0 {
        let below = store.read(log, at - 1, 1, 1);
        check_reads_done(store, model);
        if let Err(e @ Error::Fatal(_)) = below {
            return Err(e.into());
        }
        assert!(
            matches!(below, Err(Error::Trimmed { trim_point }) if trim_point == at),
            "log {log}: a read below where it was reset: {below:?}"
        );
    }
    Ok(())
}

/// The records of a read of `log` from `from` within the limits, as the model has them, up
/// to `end` (exclusive).
fn expected_lsns(
    m: &LogModel,
    from: u64,
    end: u64,
    max_records: usize,
    max_bytes: usize,
) -> Vec<u64> {
    let mut want = Vec::new();
    let mut bytes = 0;
    for lsn in from..end {
        let len = m.record(lsn).1.len();
        if want.len() >= max_records || (!want.is_empty() && bytes + len > max_bytes) {
            break;
        }
        bytes += len;
        want.push(lsn);
    }
    want
}

/// Checks records read from `log` against the model: the epochs and payloads appended there.
fn check_read_records(m: &LogModel, log: u64, got: &[ReadRecord], what: &str) {
    for r in got {
        let (epoch, payload) = m.record(r.lsn);
        assert!(
            r.epoch == *epoch && r.payload == **payload,
            "log {log}: record {} read back with other bytes ({what})",
            r.lsn
        );
    }
}

/// A random read request of an existing log.
fn random_request(rng: &mut SimRng, log: u64, tail: &LogTail, kind: ReadKind) -> ReadRequest {
    let end = if kind == ReadKind::Durable {
        tail.durable_lsn
    } else {
        tail.next_lsn
    };
    let from = if tail.trim_point > 0 && rng.one_in(10) {
        rng.below(tail.trim_point)
    } else {
        tail.trim_point + rng.below(end.saturating_sub(tail.trim_point) + 2)
    };
    ReadRequest {
        log_id: log,
        from,
        max_records: rng.below(20) as usize,
        max_bytes: rng.below(12_000) as usize,
        kind,
    }
}

/// A read of random bounds, with `read` or (half the time) `read_stored`, compared with
/// exactly what the model says it must return; returns whether it was a `read_stored` that
/// returned records not durable yet.
fn read<I: Io>(store: &mut Store<I>, model: &mut Model, rng: &mut SimRng) -> Result<bool, Failed> {
    let log = LOG_IDS[rng.below(LOG_IDS.len() as u64) as usize];
    let Some(tail) = check_tail(store, model, log) else {
        match store.read(log, 0, 1, 1) {
            Err(Error::UnknownLog(l)) if l == log => return Ok(false),
            other => return Err(other.expect_err("a read of an unknown log fails").into()),
        }
    };
    let stored = rng.one_in(2);
    let kind = if stored {
        ReadKind::Stored
    } else {
        ReadKind::Durable
    };
    let request = random_request(rng, log, &tail, kind);
    let ReadRequest {
        from,
        max_records,
        max_bytes,
        ..
    } = request;
    let got = if stored {
        store.read_stored(log, from, max_records, max_bytes)
    } else {
        store.read(log, from, max_records, max_bytes)
    };
    // A blocking read handles the completions that arrived meanwhile once it is done.
    check_reads_done(store, model);
    let m = &model.logs[&log];
    if from < tail.trim_point {
        match got {
            Err(Error::Trimmed { trim_point }) if trim_point == tail.trim_point => {
                return Ok(false)
            }
            Err(Error::Trimmed { .. }) | Ok(_) => {
                panic!("log {log}: read below the trim point {tail:?}: {got:?}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    let got = got.map_err(|error| Failed {
        what: format!("log {log}: {request:?} with tail {tail:?}"),
        error,
    })?;
    // What the read must return: records from `from` while below the durable LSN (or, for
    // `read_stored`, the next LSN), at most `max_records`, and within `max_bytes` of payload
    // after the first.
    let end = if stored {
        tail.next_lsn
    } else {
        tail.durable_lsn
    };
    let want = expected_lsns(m, from, end, max_records, max_bytes);
    let got_lsns: Vec<u64> = got.iter().map(|r| r.lsn).collect();
    assert_eq!(got_lsns, want, "log {log}: {request:?} with tail {tail:?}");
    check_read_records(m, log, &got, "read");
    Ok(stored && got.last().is_some_and(|r| r.lsn >= tail.durable_lsn))
}

/// Starts an asynchronous read of random bounds: checked at once if it needed no disk read,
/// else left waiting (checked by `check_reads_done` when it completes).
fn read_async<I: Io>(store: &mut Store<I>, model: &mut Model, rng: &mut SimRng) -> Step {
    let log = LOG_IDS[rng.below(LOG_IDS.len() as u64) as usize];
    if model.reads.len() >= OUTSTANDING_READS_MAX {
        return Ok(());
    }
    let Some(tail) = check_tail(store, model, log) else {
        return Ok(());
    };
    let kind = [ReadKind::Durable, ReadKind::Stored, ReadKind::StoredRuns][rng.below(3) as usize];
    let request = random_request(rng, log, &tail, kind);
    let token = model.next_read_token;
    model.next_read_token += 1;
    match store.read_async(request, token) {
        Ok(Some(output)) => check_read_output(store, model, &request, Ok(output)),
        Ok(None) => model.reads.push(Outstanding { request, token }),
        Err(Error::Trimmed { trim_point }) => {
            assert!(
                request.from < tail.trim_point && trim_point == tail.trim_point,
                "{request:?} with tail {tail:?}"
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// Checks the asynchronous reads that completed (right after the poll that completed them:
/// no call changed the logs since).
fn check_reads_done<I: Io>(store: &mut Store<I>, model: &mut Model) {
    let mut done: Vec<ReadDone> = Vec::new();
    store.take_reads(&mut done);
    for ReadDone { token, result } in done {
        let i = model
            .reads
            .iter()
            .position(|r| r.token == token)
            .unwrap_or_else(|| panic!("a read result for an unknown token {token}"));
        let request = model.reads.remove(i).request;
        match result {
            // The store failed (the disk lost power): nothing to check.
            Err(Error::Fatal(_)) => {}
            result => check_read_output(store, model, &request, result),
        }
    }
}

/// A read's output (or its `Trimmed`) against the model as it is now: the records the log
/// holds from the first LSN asked for, within the limits, up to the durable LSN (or the next
/// LSN for the stored kinds) as it was when the read completed, which is at most what it is
/// now: so the records returned are a prefix of what a read would return now.
fn check_read_output<I: Io>(
    store: &Store<I>,
    model: &Model,
    request: &ReadRequest,
    result: Result<ReadOutput, Error>,
) {
    let log = request.log_id;
    let tail = check_tail(store, model, log).expect("a log read exists");
    let m = &model.logs[&log];
    let records = match result {
        Err(Error::Trimmed { trim_point }) => {
            assert!(
                request.from < tail.trim_point && trim_point == tail.trim_point,
                "{request:?}: Trimmed({trim_point}) with tail {tail:?}"
            );
            return;
        }
        Err(e) => panic!("{request:?} with tail {tail:?}: {e}"),
        Ok(_) if request.from < tail.trim_point => {
            panic!("{request:?}: records below the trim point {tail:?}")
        }
        Ok(ReadOutput::Records(records)) => {
            assert_ne!(request.kind, ReadKind::StoredRuns, "{request:?}");
            records
        }
        Ok(ReadOutput::Runs(runs)) => {
            assert_eq!(request.kind, ReadKind::StoredRuns, "{request:?}");
            runs.into_iter().flat_map(|r| r.records).collect()
        }
    };
    let end = if request.kind == ReadKind::Durable {
        tail.durable_lsn
    } else {
        tail.next_lsn
    };
    let want = expected_lsns(m, request.from, end, request.max_records, request.max_bytes);
    let got: Vec<u64> = records.iter().map(|r| r.lsn).collect();
    assert!(
        want.starts_with(&got),
        "{request:?} with tail {tail:?}: got {got:?}, the log holds {want:?}"
    );
    check_read_records(m, log, &records, "asynchronous read");
}

/// Random operations until the crash point.
fn run_workload<I: Io>(
    store: &mut Store<I>,
    model: &mut Model,
    rng: &mut SimRng,
    epoch: u64,
    ops: u64,
    reads: bool,
    coverage: &mut Coverage,
) -> Step {
    for _ in 0..ops {
        match rng.below(100) {
            0..=52 => {
                coverage.replica_appends += u64::from(append(store, model, rng, epoch)?);
                coverage.appends += 1;
            }
            53..=56 => {
                trim(store, model, rng)?;
                coverage.trims += 1;
            }
            57..=59 => {
                retry(store, model, rng)?;
                coverage.retries += 1;
            }
            60..=61 => {
                truncate(store, model, rng)?;
                coverage.truncations += 1;
            }
            62 => {
                reset(store, model, rng)?;
                coverage.resets += 1;
            }
            63..=67 if reads => {
                coverage.stored_reads += u64::from(read(store, model, rng)?);
                coverage.reads += 1;
            }
            68..=70 if reads => {
                let waiting = model.reads.len();
                read_async(store, model, rng)?;
                coverage.async_reads += (model.reads.len() - waiting) as u64;
            }
            63..=81 => poll(store, model, false)?,
            82..=97 => poll(store, model, true)?,
            _ => sync_all(store, model)?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Recovery checks
// ---------------------------------------------------------------------------------------------

/// Everything readable in the store: each log's tail and records (trimmed ones excluded).
type State = BTreeMap<u64, (LogTail, Vec<ReadRecord>)>;

fn read_state<I: Io>(store: &mut Store<I>) -> State {
    let mut ids: Vec<u64> = store.log_ids().collect();
    ids.sort_unstable();
    let mut state = State::new();
    for log in ids {
        let tail = store.tail(log).expect("a listed log");
        let mut records = Vec::new();
        let mut next = tail.trim_point;
        loop {
            let batch = store
                .read(log, next, 64, 1 << 20)
                .unwrap_or_else(|e| panic!("log {log}: read from {next} after recovery: {e}"));
            if batch.is_empty() {
                break;
            }
            for r in batch {
                assert_eq!(r.lsn, next, "log {log}: LSNs are dense after recovery");
                next += 1;
                records.push(r);
            }
        }
        assert_eq!(
            next, tail.durable_lsn,
            "log {log}: every durable record from the trim point is readable"
        );
        if tail.trim_point > 0 {
            assert!(
                matches!(store.read(log, tail.trim_point - 1, 1, 1), Err(Error::Trimmed { trim_point }) if trim_point == tail.trim_point),
                "log {log}: a read below the recovered trim point fails"
            );
        }
        state.insert(log, (tail, records));
    }
    state
}

/// Stops the store cleanly; every call made is acknowledged by then.
fn close<I: Io>(store: Store<I>, model: &mut Model) -> Step {
    let mut acks = Vec::new();
    let result = store.close(&mut acks);
    model.on_acks(&acks);
    result?;
    assert!(model.tokens.is_empty(), "close acknowledges everything");
    Ok(())
}

/// Whether the recovered `state` is, in every log, `logs`: positions, token, and every record
/// readable from the trim point.
fn state_is(state: &State, logs: &Logs) -> bool {
    state.len() == logs.len()
        && state.iter().all(|(log, (tail, records))| {
            logs.get(log).is_some_and(|m| {
                (tail.next_lsn, tail.trim_point, tail.fencing_token) == m.summary()
                    && records.iter().all(|r| {
                        let (epoch, payload) = m.record(r.lsn);
                        r.epoch == *epoch && r.payload == **payload
                    })
            })
        })
}

/// Checks a freshly recovered store against the model, then makes the model match it.
fn check_recovered<I: Io>(store: &mut Store<I>, model: &mut Model, coverage: &mut Coverage) {
    let report: RecoveryReport = store.recovery_report().clone();
    if report.clean_stop {
        // Everything was durable at the stop: nothing was in flight to be cut.
        assert_eq!(report.torn_tail, None, "a torn tail after a clean stop");
        assert_eq!(
            model.acked_events,
            model.events.len(),
            "a clean stop acknowledged everything"
        );
        coverage.clean_stops += 1;
    }
    coverage.torn_tails += u64::from(report.torn_tail.is_some());
    coverage.files_removed_by_recovery += report.removed.len() as u64;
    let state = read_state(store);
    for (log, (tail, _)) in &state {
        assert_eq!(
            tail.durable_lsn, tail.next_lsn,
            "log {log}: recovered = durable"
        );
    }
    let probes = probe_writers(store, model);
    // The recovered state is the state after some prefix of the calls that holds every
    // acknowledged one: the longest such prefix that matches (several may, when later calls
    // changed nothing that shows).
    let recovered: BTreeMap<u64, (u64, u64, u64)> = state
        .iter()
        .map(|(&log, (t, _))| (log, (t.next_lsn, t.trim_point, t.fencing_token)))
        .collect();
    let mut logs = model.base.clone();
    let mut candidates = Vec::new();
    for k in 0..=model.events.len() {
        if k > 0 {
            apply(&mut logs, &model.events[k - 1]);
        }
        let summary: BTreeMap<u64, (u64, u64, u64)> =
            logs.iter().map(|(&log, m)| (log, m.summary())).collect();
        if k >= model.acked_events && summary == recovered {
            candidates.push(k);
        }
    }
    let chosen = candidates.iter().rev().copied().find_map(|k| {
        let mut logs = model.base.clone();
        for event in &model.events[..k] {
            apply(&mut logs, event);
        }
        (state_is(&state, &logs) && writers_are(&probes, &logs)).then_some((k, logs))
    });
    let Some((k, mut logs)) = chosen else {
        let mut at_acked = model.base.clone();
        for event in &model.events[..model.acked_events] {
            apply(&mut at_acked, event);
        }
        panic!(
            "the recovered state is the state after no prefix of the calls holding the {} \
             acknowledged ones (of {}; candidates by positions {candidates:?}):\nrecovered \
             {recovered:?}, writers {probes:?}\nafter the acknowledged calls {at_acked:?}\n\
             after all {:?}",
            model.acked_events,
            model.events.len(),
            model.logs
        );
    };
    let survived = &model.events[model.acked_events..k];
    coverage.unacked_survivors +=
        u64::from(survived.iter().any(|e| matches!(e, Event::Append { .. })));
    coverage.unacked_lost += u64::from(k < model.events.len());
    coverage.cuts_recovered += u64::from(
        model.events[..k]
            .iter()
            .any(|e| matches!(e, Event::Truncate { .. } | Event::Reset { .. })),
    );
    // The model becomes what was recovered: all of it durable.
    for m in logs.values_mut() {
        m.acked = m.next_lsn();
    }
    model.base = logs.clone();
    model.logs = logs;
    model.events.clear();
    model.tokens.clear();
    model.acked_events = 0;
    model.reads.clear();
    coverage.retries_after_recovery += probes
        .values()
        .filter(|p| matches!(p, Probe::Remembered(_)))
        .count() as u64;
}

/// What the store's idempotency table says of a writer's sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Probe {
    /// A batch it remembers, with its LSNs.
    Remembered(Range<u64>),
    /// A new batch.
    New,
    /// Neither: the writer's last sequence number.
    OutOfOrder(u64),
}

/// Asks the store, without changing anything, about every sequence number of each log's
/// writer that the calls since the last recovery or the state then name: a keyed append
/// with a condition that cannot hold is answered with the original LSNs if the batch is
/// remembered (and acknowledged at once: everything is durable after recovery), refused
/// with `ConditionFailed` if it is new (no log is created), and with `WriterSeq` otherwise.
fn probe_writers<I: Io>(store: &mut Store<I>, model: &Model) -> BTreeMap<(u64, u64), Probe> {
    let mut seqs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (&log, m) in &model.base {
        seqs.entry(log)
            .or_default()
            .extend(m.window.iter().map(|(seq, _)| *seq));
    }
    for event in &model.events {
        if let Event::Append { log, seq, .. } = event {
            seqs.entry(*log).or_default().push(*seq);
        }
    }
    let mut probes = BTreeMap::new();
    let mut expected = Vec::new();
    for (log, mut seqs) in seqs {
        seqs.sort_unstable();
        seqs.dedup();
        let before = store.tail(log);
        for seq in seqs {
            let token = u64::MAX - expected.len() as u64;
            let options = AppendOptions {
                writer: Some((WRITER_ID, seq)),
                expected_lsn: Some(u64::MAX),
                ..AppendOptions::default()
            };
            let batch = Batch::Records(&[Record::new(b"again")]);
            let probe = match store.append_batch(log, 1, &options, batch, false, token) {
                Ok((lsns, _)) => {
                    expected.push(Ack {
                        token,
                        log_id: log,
                        lsns: lsns.clone(),
                    });
                    Probe::Remembered(lsns)
                }
                Err(Error::ConditionFailed { .. }) => Probe::New,
                Err(Error::WriterSeq { last, .. }) => Probe::OutOfOrder(last),
                Err(e) => panic!("log {log}: probe of batch {seq} after recovery: {e}"),
            };
            probes.insert((log, seq), probe);
        }
        assert_eq!(store.tail(log), before, "log {log}: probes append nothing");
    }
    let mut acks = Vec::new();
    store.poll(false, &mut acks).expect("poll after recovery");
    assert_eq!(
        acks, expected,
        "retries are acknowledged at once after recovery"
    );
    probes
}

/// Whether the store's answers to the probes are what `logs`' writer windows say.
fn writers_are(probes: &BTreeMap<(u64, u64), Probe>, logs: &Logs) -> bool {
    probes.iter().all(|(&(log, seq), probe)| {
        let window = logs.get(&log).map(|m| &m.window);
        let last = window.and_then(|w| w.back()).map(|(s, _)| *s);
        let remembered = window.and_then(|w| w.iter().find(|(s, _)| *s == seq));
        let want = match (remembered, last) {
            (Some((_, lsns)), _) => Probe::Remembered(lsns.clone()),
            (None, Some(last)) if seq <= last => Probe::OutOfOrder(last),
            _ => Probe::New,
        };
        *probe == want
    })
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// Prints the seed of a failing run (the panic message comes first).
struct SeedGuard {
    seed: u64,
    test: &'static str,
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{0} failed with seed {1}: replay with CHAINLOG_SEED={1} cargo test -p chainlog-storage --test crash {0}",
                self.test, self.seed
            );
        }
    }
}

/// The seeds to run: `CHAINLOG_SEED` alone (a replay), or `range`, or as many seeds from its
/// start as `CHAINLOG_SEED_COUNT` says (a longer soak), and whether this is a replay.
fn seeds(range: Range<u64>) -> (Vec<u64>, bool) {
    let number = |var: &str| {
        std::env::var(var).ok().map(|s| {
            s.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{var} is a number"))
        })
    };
    if let Some(seed) = number("CHAINLOG_SEED") {
        return (vec![seed], true);
    }
    match number("CHAINLOG_SEED_COUNT") {
        Some(n) => ((range.start..range.start + n).collect(), false),
        None => (range.collect(), false),
    }
}

/// One seed: `CYCLES_PER_SEED` workloads, each ended by a crash and checked after recovery.
fn run_seed(seed: u64, reads: bool, coverage: &mut Coverage) {
    let mut rng = SimRng::new(seed);
    let disk = SimDisk::new();
    let mut model = Model::default();
    let mut store = open(&disk, &mut rng);
    check_recovered(&mut store, &mut model, coverage);
    for cycle in 0..CYCLES_PER_SEED {
        // Mostly short runs (the interesting windows are near rollovers and early in a log's
        // life), sometimes long ones that fill several segments.
        let ops = if rng.one_in(4) {
            rng.below(600)
        } else {
            rng.below(120)
        };
        run_workload(
            &mut store,
            &mut model,
            &mut rng,
            cycle + 1,
            ops,
            reads,
            coverage,
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: the store failed with no crash: {e}"));
        if rng.one_in(3) {
            // A clean stop and a restart, then more of the workload before the crash.
            coverage.segments_created += store.metrics().segments_created;
            coverage.segments_deleted += store.metrics().segments_deleted;
            close(store, &mut model).unwrap_or_else(|e| panic!("cycle {cycle}: clean stop: {e}"));
            store = open(&disk, &mut rng);
            assert!(store.recovery_report().clean_stop, "cycle {cycle}");
            check_recovered(&mut store, &mut model, coverage);
            let ops = rng.below(120);
            run_workload(
                &mut store,
                &mut model,
                &mut rng,
                cycle + 1,
                ops,
                reads,
                coverage,
            )
            .unwrap_or_else(|e| panic!("cycle {cycle}: after a clean restart: {e}"));
        }
        coverage.segments_created += store.metrics().segments_created;
        coverage.segments_deleted += store.metrics().segments_deleted;
        disk.crash(rng.next_u64());
        drop(store);
        coverage.crash_points += 1;
        store = open(&disk, &mut rng);
        check_recovered(&mut store, &mut model, coverage);
        // Appends continue after the recovered tail.
        append(&mut store, &mut model, &mut rng, cycle + 100)
            .and_then(|_| sync_all(&mut store, &mut model))
            .unwrap_or_else(|e| panic!("cycle {cycle}: append after recovery: {e}"));
    }
}

/// Runs `seeds` and checks that they reached the windows the test is meant to cover.
fn run_crash_test(test: &'static str, range: Range<u64>, reads: bool) {
    let (seeds, replay) = seeds(range);
    let runs = seeds.len() as u64 * CYCLES_PER_SEED;
    let mut coverage = Coverage::default();
    for seed in seeds {
        let _guard = SeedGuard { seed, test };
        run_seed(seed, reads, &mut coverage);
    }
    eprintln!("{test}: {coverage:?}");
    if !replay {
        assert!(coverage.segments_deleted > 0, "{coverage:?}");
        assert!(
            coverage.segments_created > coverage.crash_points,
            "{coverage:?}"
        );
        assert!(coverage.torn_tails > 0, "{coverage:?}");
        assert!(coverage.clean_stops > 0, "{coverage:?}");
        assert!(coverage.retries > 0, "{coverage:?}");
        assert!(coverage.replica_appends > 0, "{coverage:?}");
        if reads {
            assert!(coverage.stored_reads > 0, "{coverage:?}");
            assert!(coverage.async_reads > 0, "{coverage:?}");
        }
        assert!(
            coverage.truncations > 0 && coverage.resets > 0,
            "{coverage:?}"
        );
        assert!(coverage.cuts_recovered > 0, "{coverage:?}");
        assert!(coverage.retries_after_recovery > 0, "{coverage:?}");
        assert!(coverage.unacked_survivors > 0, "{coverage:?}");
        assert!(coverage.unacked_lost > 0, "{coverage:?}");
        assert_eq!(coverage.crash_points, runs);
    }
}

/// Crash points of the two crash tests below; together at least `CRASH_POINTS_MIN` per run.
const WRITES_ONLY_SEEDS: Range<u64> = 0..130;
const WITH_READS_SEEDS: Range<u64> = 100_000..100_100;
const _: () = assert!(
    ((WRITES_ONLY_SEEDS.end - WRITES_ONLY_SEEDS.start)
        + (WITH_READS_SEEDS.end - WITH_READS_SEEDS.start))
        * CYCLES_PER_SEED
        >= CRASH_POINTS_MIN
);

/// Appends, trims and polls (reads only after recovery): the recovery guarantees on their own.
#[test]
fn crashes_during_writes() {
    run_crash_test("crashes_during_writes", WRITES_ONLY_SEEDS, false);
}

/// The same with reads of random ranges between the writes, checked against the model.
#[test]
fn crashes_during_writes_and_reads() {
    run_crash_test("crashes_during_writes_and_reads", WITH_READS_SEEDS, true);
}

// ---------------------------------------------------------------------------------------------
// Power loss in the middle of a store call, recovery included
// ---------------------------------------------------------------------------------------------

/// When the power fails, shared by the test and the backend it armed.
#[derive(Debug, Default)]
struct Power {
    /// I/O operations left before the power fails (`None`: it does not).
    ops_left: Cell<Option<u64>>,
    /// Seed of the crash's choices (which unflushed write is torn, and where).
    crash_seed: Cell<u64>,
    lost: Cell<bool>,
}

/// A [`SimIo`] whose disk loses power just before the n-th I/O operation (waits included), in
/// the middle of whatever the store is doing. Afterwards every operation fails: the process is
/// dead, and nothing it submits reaches the disk.
#[derive(Debug)]
struct CrashingIo {
    inner: SimIo,
    disk: SimDisk,
    power: Rc<Power>,
    /// Operations submitted after the power failed (never completed).
    dead: usize,
    /// Their buffers: kept until the backend is dropped, as the `Io` contract says (the store
    /// reads frames whose writes are in flight).
    dead_bufs: Vec<AlignedBuf>,
}

fn power_lost() -> io::Error {
    io::Error::other("power lost")
}

impl CrashingIo {
    /// Counts one operation; whether the power is still on for it.
    fn powered(&mut self) -> bool {
        if self.power.lost.get() {
            return false;
        }
        match self.power.ops_left.get() {
            Some(0) => {
                self.disk.crash(self.power.crash_seed.get());
                self.power.lost.set(true);
                false
            }
            Some(n) => {
                self.power.ops_left.set(Some(n - 1));
                true
            }
            None => true,
        }
    }
}

impl Io for CrashingIo {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.list_dir(dir)
    }
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.open(path, create)
    }
    fn open_dir(&mut self, path: &Path) -> io::Result<FileId> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.open_dir(path)
    }
    fn file_size(&mut self, file: FileId) -> io::Result<u64> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.file_size(file)
    }
    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.allocate(file, len)
    }
    fn close(&mut self, file: FileId) {
        self.inner.close(file)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.remove(path)
    }
    fn write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        durability: Durability,
        token: u64,
    ) {
        if self.powered() {
            self.inner.write(file, offset, buf, durability, token);
        } else {
            self.dead += 1;
            self.dead_bufs.push(buf);
        }
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        if self.powered() {
            self.inner.read(file, offset, buf, token);
        } else {
            self.dead += 1;
            self.dead_bufs.push(buf);
        }
    }
    fn sync(&mut self, file: FileId, token: u64) {
        if self.powered() {
            self.inner.sync(file, token);
        } else {
            self.dead += 1;
        }
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.powered() {
            return Err(power_lost());
        }
        self.inner.wait(min_complete, out)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.dead
    }
}

/// Opens the store with the power armed to fail during recovery about a third of the time;
/// returns `None` if it did.
fn open_crashing(disk: &SimDisk, power: &Rc<Power>, rng: &mut SimRng) -> Option<Store<CrashingIo>> {
    power.lost.set(false);
    power.crash_seed.set(rng.next_u64());
    power.ops_left.set(rng.one_in(3).then(|| rng.below(80)));
    let io = CrashingIo {
        inner: disk.io(faults(rng)),
        disk: disk.clone(),
        power: power.clone(),
        dead: 0,
        dead_bufs: Vec::new(),
    };
    let opened = Store::open(io, Path::new(DIR), config(rng), Arc::new(disk.clock()));
    match opened {
        _ if power.lost.get() => None,
        Ok(store) => Some(store),
        Err(e) => panic!("recovery failed: {e}"),
    }
}

/// Power fails between any two I/O operations: inside appends' group commit, rollovers,
/// segment preparation and deletion, reads, and recovery itself.
#[test]
fn crashes_between_any_two_io_operations() {
    let test = "crashes_between_any_two_io_operations";
    let range = 200_000..200_100;
    let (seeds, replay) = seeds(range);
    let runs = seeds.len() as u64 * CYCLES_PER_SEED;
    let mut coverage = Coverage::default();
    let mut crashes_in_recovery = 0;
    let mut crashes_in_workload = 0;
    let mut crashes_in_close = 0;
    for seed in seeds {
        let _guard = SeedGuard { seed, test };
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new();
        let power = Rc::new(Power::default());
        let mut model = Model::default();
        // The last cycle ended with a clean stop (then the power failed).
        let mut stopped_cleanly = false;
        for cycle in 0..CYCLES_PER_SEED {
            let mut store = loop {
                match open_crashing(&disk, &power, &mut rng) {
                    Some(store) => break store,
                    None => {
                        // Maybe after recovery removed the clean-stop record: a crash now.
                        stopped_cleanly = false;
                        crashes_in_recovery += 1;
                        coverage.crash_points += 1;
                    }
                }
            };
            power.ops_left.set(None);
            if stopped_cleanly {
                assert!(store.recovery_report().clean_stop, "cycle {cycle}");
            }
            check_recovered(&mut store, &mut model, &mut coverage);
            power.ops_left.set(Some(rng.below(200)));
            let ops = rng.below(300);
            let ran = run_workload(
                &mut store,
                &mut model,
                &mut rng,
                cycle + 1,
                ops,
                true,
                &mut coverage,
            );
            coverage.segments_created += store.metrics().segments_created;
            coverage.segments_deleted += store.metrics().segments_deleted;
            stopped_cleanly = false;
            match ran {
                _ if power.lost.get() => crashes_in_workload += 1,
                // A clean stop with the power still armed: it may fail inside the close.
                Ok(()) if rng.one_in(2) => match close(store, &mut model) {
                    _ if power.lost.get() => crashes_in_close += 1,
                    Ok(()) => {
                        stopped_cleanly = true;
                        disk.crash(rng.next_u64());
                    }
                    Err(e) => panic!("cycle {cycle}: the clean stop failed with no crash: {e}"),
                },
                Ok(()) => disk.crash(rng.next_u64()),
                Err(e) => panic!("cycle {cycle}: the store failed with no crash: {e}"),
            }
            coverage.crash_points += 1;
        }
    }
    eprintln!("{test}: {coverage:?}, {crashes_in_recovery} in recovery, {crashes_in_workload} inside store calls, {crashes_in_close} inside a clean stop");
    if !replay {
        assert!(coverage.crash_points >= runs);
        assert!(crashes_in_recovery > 0 && crashes_in_workload > 0 && crashes_in_close > 0);
        assert!(coverage.segments_deleted > 0, "{coverage:?}");
        assert!(coverage.clean_stops > 0, "{coverage:?}");
    }
}

/// Power fails at each I/O operation of a new store's very first open in turn (nothing was
/// ever acknowledged): opening again gives a working, empty store.
#[test]
fn crash_during_the_first_open_of_a_new_store() {
    let mut k = 0;
    loop {
        let disk = SimDisk::new();
        let power = Rc::new(Power::default());
        power.crash_seed.set(k);
        power.ops_left.set(Some(k));
        let io = CrashingIo {
            inner: disk.io(FaultConfig::default()),
            disk: disk.clone(),
            power: power.clone(),
            dead: 0,
            dead_bufs: Vec::new(),
        };
        let mut rng = SimRng::new(k);
        let opened = Store::open(io, Path::new(DIR), config(&mut rng), Arc::new(disk.clock()));
        if !power.lost.get() {
            opened.expect("open without a crash");
            assert!(k > 10, "the first open does some I/O");
            break;
        }
        drop(opened);
        let mut store = Store::open(
            disk.io(FaultConfig::default()),
            Path::new(DIR),
            config(&mut rng),
            Arc::new(disk.clock()),
        )
        .unwrap_or_else(|e| {
            panic!("power lost at I/O operation {k} of a new store's first open; reopening: {e}")
        });
        assert_eq!(store.log_ids().count(), 0);
        let mut model = Model::default();
        append(&mut store, &mut model, &mut rng, 1)
            .and_then(|_| sync_all(&mut store, &mut model))
            .expect("the recovered store works");
        k += 1;
    }
}

/// Power fails at each I/O operation of a clean stop in turn (its flushes of what was pending,
/// the clean-stop record's write and its directory sync): reopening gives back every
/// acknowledged record, and once the close got through, the next open finds the clean stop.
#[test]
fn crash_at_each_io_operation_of_a_clean_stop() {
    let mut coverage = Coverage::default();
    let mut k = 0;
    loop {
        let disk = SimDisk::new();
        let power = Rc::new(Power::default());
        let io = CrashingIo {
            inner: disk.io(FaultConfig {
                seed: 1,
                latency_us_max: 300,
                ..FaultConfig::default()
            }),
            disk: disk.clone(),
            power: power.clone(),
            dead: 0,
            dead_bufs: Vec::new(),
        };
        // The same store and workload every time: only the crash point moves.
        let mut rng = SimRng::new(7);
        let config = StoreConfig {
            durability: DurabilityMode::Fdatasync,
            ..config(&mut rng)
        };
        let mut store =
            Store::open(io, Path::new(DIR), config, Arc::new(disk.clock())).expect("open");
        let mut model = Model::default();
        check_recovered(&mut store, &mut model, &mut coverage);
        run_workload(
            &mut store,
            &mut model,
            &mut rng,
            1,
            150,
            false,
            &mut coverage,
        )
        .expect("the workload without a crash");
        // Some appends still waiting for their frame's write when the stop begins.
        for _ in 0..5 {
            append(&mut store, &mut model, &mut rng, 1).expect("append");
        }
        assert!(model.acked_events < model.events.len());
        power.crash_seed.set(k);
        power.ops_left.set(Some(k));
        let closed = close(store, &mut model);
        let crashed = power.lost.get();
        if !crashed {
            closed.expect("a clean stop without a crash");
        }
        let mut store = open(&disk, &mut SimRng::new(k));
        // After a crash inside the close, the record may have made it or not (a crash during
        // its write leaves it whole or empty): check_recovered checks either way.
        assert!(crashed || store.recovery_report().clean_stop);
        check_recovered(&mut store, &mut model, &mut coverage);
        if !crashed {
            assert!(k > 5, "a clean stop does some I/O");
            break;
        }
        k += 1;
    }
    eprintln!("{k} crash points inside a clean stop: {coverage:?}");
}

/// A crash with frame writes in flight: whichever of them reached the disk (whole, torn or
/// not at all), they are a torn tail and are cut, and every acknowledged record is there; but
/// when one of them survived whole, it records the frames before it as durable, and damage to
/// those is corruption (named with its offset), not a torn tail.
#[test]
fn crash_with_writes_in_flight() {
    const ACKED: u64 = 10;
    const IN_FLIGHT: u64 = 4;
    let payload = |i: u64| vec![i as u8; 3000];
    let mut cut_on_data = 0;
    let mut witnessed = 0;
    for seed in 0..200 {
        let disk = SimDisk::new();
        let config = StoreConfig {
            writes_in_flight_max: IN_FLIGHT as usize,
            write_buffers: IN_FLIGHT as usize + 4,
            durability: DurabilityMode::Dsync,
            ..config(&mut SimRng::new(0))
        };
        let io = disk.io(FaultConfig {
            seed,
            latency_us_max: 5_000,
            ..FaultConfig::default()
        });
        let clock = Arc::new(disk.clock());
        let mut store =
            Store::open(io, Path::new(DIR), config.clone(), clock.clone()).expect("open");
        let mut acks = Vec::new();
        for i in 0..ACKED {
            store
                .append(1, 1, &[Record::new(&payload(i))], i)
                .expect("append");
            store.sync_all(&mut acks).expect("sync");
        }
        // Each append its own frame, submitted and in flight (a poll that does not wait
        // completes nothing: no virtual time passes).
        for i in ACKED..ACKED + IN_FLIGHT {
            store
                .append(1, 1, &[Record::new(&payload(i))], i)
                .expect("append");
            store.poll(false, &mut acks).expect("poll");
        }
        assert_eq!(
            acks.len() as u64,
            ACKED,
            "the frames in flight are not acknowledged"
        );
        disk.crash(seed);
        drop(store);
        // Frames are one block each, after the segment header and the snapshot frame.
        let path = Path::new(DIR).join(format!("{:020}.seg", 1));
        let crashed = disk.read_file(&path).expect("segment 1");
        let frame_at = |i: u64| 2 * BLOCK_SIZE + i as usize * BLOCK_SIZE;
        let whole = |bytes: &[u8], i: u64| {
            let at = frame_at(i);
            let header: FrameHeader =
                bytemuck::pod_read_unaligned(&bytes[at..at + FRAME_HEADER_BYTES]);
            let end = at + FRAME_HEADER_BYTES + header.body_len as usize;
            header.magic == FRAME_MAGIC
                && end <= bytes.len()
                && check_frame(&bytes[at..end], 1).is_ok()
        };
        let survived: Vec<u64> = (ACKED..ACKED + IN_FLIGHT)
            .filter(|&i| whole(&crashed, i))
            .collect();
        let in_chain = (ACKED..ACKED + IN_FLIGHT)
            .take_while(|&i| whole(&crashed, i))
            .count() as u64;

        // Damage to the last acknowledged frame (and the one before it).
        if !survived.is_empty() {
            witnessed += 1;
            for damaged_frame in [ACKED - 1, ACKED - 2] {
                let mut damaged = crashed.clone();
                damaged[frame_at(damaged_frame) + 100] ^= 0x10;
                disk.write_file(&path, &damaged);
                let opened = Store::open(
                    disk.io(FaultConfig::default()),
                    Path::new(DIR),
                    config.clone(),
                    clock.clone(),
                );
                match opened {
                    Err(Error::Corrupt { path: p, offset, .. })
                        if p == path && offset == frame_at(damaged_frame) as u64 => {}
                    other => panic!(
                        "seed {seed}: frame {damaged_frame} damaged, in-flight frames {survived:?} survived: {:?}",
                        other.map(|s| s.tail(1))
                    ),
                }
            }
            disk.write_file(&path, &crashed);
        }

        let mut store = Store::open(
            disk.io(FaultConfig::default()),
            Path::new(DIR),
            config,
            clock,
        )
        .unwrap_or_else(|e| panic!("seed {seed}: recovery: {e}"));
        let report = store.recovery_report().clone();
        assert!(!report.clean_stop);
        let tail = store.tail(1).expect("log 1");
        assert_eq!(
            tail.next_lsn,
            ACKED + in_chain,
            "seed {seed}: the acknowledged records and the whole frames in flight before the first missing one ({survived:?} survived)"
        );
        let got = store.read(1, 0, 100, 1 << 20).expect("read");
        let want: Vec<Vec<u8>> = (0..ACKED + in_chain).map(payload).collect();
        assert_eq!(
            got.into_iter().map(|r| r.payload).collect::<Vec<_>>(),
            want,
            "seed {seed}"
        );
        cut_on_data += u64::from(report.torn_tail.is_some());
        // Writing resumes where the chain stopped, and that survives a crash too.
        store
            .append(1, 2, &[Record::new(b"next")], 99)
            .expect("append");
        store.sync_all(&mut acks).expect("sync");
        disk.crash(seed + 1);
        drop(store);
        let store = open(&disk, &mut SimRng::new(seed));
        assert_eq!(store.tail(1).expect("log 1").next_lsn, ACKED + in_chain + 1);
    }
    eprintln!("{witnessed} crashes left a whole frame in flight; {cut_on_data} cut a torn frame");
    assert!(
        witnessed > 0 && cut_on_data > 0,
        "{witnessed} {cut_on_data}"
    );
}

/// A write or flush fails (EIO) now and then: the store stops acknowledging (`Error::Fatal`,
/// and nothing after it), the process dies, and recovery still finds every acknowledged append
/// and nothing that was not appended.
#[test]
fn io_errors_then_crash() {
    let test = "io_errors_then_crash";
    let (seeds, replay) = seeds(300_000..300_060);
    let mut coverage = Coverage::default();
    let mut failures = 0;
    for seed in seeds {
        let _guard = SeedGuard { seed, test };
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new();
        let mut model = Model::default();
        for cycle in 0..CYCLES_PER_SEED {
            let faulty = FaultConfig {
                eio_write_one_in: 100 + rng.below(200) as u32,
                eio_sync_one_in: 100 + rng.below(200) as u32,
                ..faults(&mut rng)
            };
            let opened = Store::open(
                disk.io(faulty),
                Path::new(DIR),
                config(&mut rng),
                Arc::new(disk.clock()),
            );
            let mut store = match opened {
                Ok(store) => store,
                Err(Error::Fatal(_) | Error::Io { .. }) => {
                    // A write of the spare's preparation or of the calibration failed, or a
                    // sync of recovery's own.
                    failures += 1;
                    disk.crash(rng.next_u64());
                    open(&disk, &mut rng)
                }
                Err(e) => panic!("cycle {cycle}: open: {e}"),
            };
            check_recovered(&mut store, &mut model, &mut coverage);
            let ops = rng.below(400);
            match run_workload(
                &mut store,
                &mut model,
                &mut rng,
                cycle + 1,
                ops,
                true,
                &mut coverage,
            ) {
                Ok(()) => {}
                Err(Failed {
                    error: Error::Fatal(_),
                    ..
                }) => {
                    failures += 1;
                    // Failed for good: every later call fails. (Acks that still come out
                    // must be durable like any other: the recovery below checks them. That
                    // none should come is `no_acks_after_a_fatal_error`.)
                    let mut acks = Vec::new();
                    let polled = store.poll(true, &mut acks);
                    model.on_acks(&acks);
                    assert!(matches!(polled, Err(Error::Fatal(_))), "{polled:?}");
                    let p = [1u8];
                    assert!(matches!(
                        store.append(LOG_IDS[0], 1, &[Record::new(&p)], u64::MAX),
                        Err(Error::Fatal(_))
                    ));
                    assert!(matches!(
                        store.read(LOG_IDS[0], 0, 1, 1),
                        Err(Error::Fatal(_))
                    ));
                }
                Err(e) => panic!("cycle {cycle}: {e}"),
            }
            disk.crash(rng.next_u64());
            drop(store);
            coverage.crash_points += 1;
        }
        let mut store = open(&disk, &mut rng);
        check_recovered(&mut store, &mut model, &mut coverage);
    }
    eprintln!("{test}: {coverage:?}, {failures} I/O failures");
    if !replay {
        assert!(failures > 50, "{failures} I/O failures");
    }
}

/// [`SimIo`] that fails the next write submitted once armed (EIO in its completion), and can
/// hand that completion out before the others of the same wait.
#[derive(Debug)]
struct FailNextWrite {
    inner: SimIo,
    armed: Rc<Cell<bool>>,
    doomed: Option<u64>,
    failure_first: bool,
}

impl Io for FailNextWrite {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        self.inner.open(path, create)
    }
    fn open_dir(&mut self, path: &Path) -> io::Result<FileId> {
        self.inner.open_dir(path)
    }
    fn file_size(&mut self, file: FileId) -> io::Result<u64> {
        self.inner.file_size(file)
    }
    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.inner.allocate(file, len)
    }
    fn close(&mut self, file: FileId) {
        self.inner.close(file)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        durability: Durability,
        token: u64,
    ) {
        if self.armed.replace(false) {
            self.doomed = Some(token);
        }
        self.inner.write(file, offset, buf, durability, token)
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        self.inner.read(file, offset, buf, token)
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.inner.sync(file, token)
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        self.inner.wait(min_complete, out)?;
        if let Some(i) = out[before..]
            .iter()
            .position(|c| Some(c.token) == self.doomed)
        {
            self.doomed = None;
            out[before + i].result = Err(io::Error::from_raw_os_error(libc::EIO));
            if self.failure_first {
                out[before..].swap(0, i);
            }
        }
        Ok(())
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

/// Two frames in flight, the second one's write fails, and both complete in the same wait
/// (the failure first, or last); the wait happens in a `poll`, or in a `read` that needs the
/// disk. Returns every ack handed out from the first call that returned `Error::Fatal` on.
fn acks_with_or_after_the_failure(in_read: bool, failure_first: bool) -> Vec<Ack> {
    let disk = SimDisk::new();
    let armed = Rc::new(Cell::new(false));
    let io = FailNextWrite {
        inner: disk.io(FaultConfig {
            latency_us_max: 1,
            ..FaultConfig::default()
        }),
        armed: armed.clone(),
        doomed: None,
        failure_first,
    };
    let config = StoreConfig {
        writes_in_flight_max: 4,
        write_buffers: 8,
        durability: DurabilityMode::Fdatasync,
        ..config(&mut SimRng::new(0))
    };
    let mut store =
        Store::open(io, Path::new(DIR), config.clone(), Arc::new(disk.clock())).expect("open");
    let mut acks = Vec::new();
    let p = [5u8; 100];
    let mut token = 0;
    let mut append = |store: &mut Store<FailNextWrite>, log: u64| {
        token += 1;
        store.append(log, 1, &[Record::new(&p)], token)
    };
    // Log 1's record is on disk only (frames of log 2 pushed it out of the tail cache).
    append(&mut store, 1).expect("append");
    store.sync_all(&mut acks).expect("sync");
    for _ in 0..2 * config.write_buffers {
        append(&mut store, 2).expect("append");
        store.sync_all(&mut acks).expect("sync");
    }
    acks.clear();
    // Two frames in flight (every operation takes 1 virtual us: they complete together).
    append(&mut store, 3).expect("append");
    store.poll(false, &mut acks).expect("poll");
    armed.set(true);
    append(&mut store, 3).expect("append");
    store.poll(false, &mut acks).expect("poll");
    assert!(acks.is_empty() && !armed.get());
    if in_read {
        // Both complete while the read waits for the disk; the read itself may succeed.
        let read = store.read(1, 0, 10, 1000);
        assert!(
            matches!(&read, Ok(r) if r.len() == 1) || matches!(read, Err(Error::Fatal(_))),
            "{read:?}"
        );
        let failed = append(&mut store, 4);
        assert!(matches!(failed, Err(Error::Fatal(_))), "{failed:?}");
    } else {
        let polled = store.poll(true, &mut acks);
        assert!(matches!(polled, Err(Error::Fatal(_))), "{polled:?}");
    }
    let polled = store.poll(true, &mut acks);
    assert!(matches!(polled, Err(Error::Fatal(_))), "{polled:?}");
    acks
}

/// Once a write failed, no ack comes with the `Error::Fatal` that reports it, nor after it
/// (`Store::poll`'s contract), whatever the order in which the failed write and an earlier,
/// successful one complete, and whether they complete in a `poll` or in a `read`.
#[test]
fn no_acks_with_or_after_a_fatal_error() {
    let mut wrong = Vec::new();
    for in_read in [false, true] {
        for failure_first in [false, true] {
            let acks = acks_with_or_after_the_failure(in_read, failure_first);
            if !acks.is_empty() {
                wrong.push(format!(
                    "completed in a {}, failure {}: {acks:?}",
                    if in_read { "read" } else { "poll" },
                    if failure_first { "first" } else { "last" }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "acks handed out with or after Error::Fatal:\n{}",
        wrong.join("\n")
    );
}

/// Recovery is idempotent: recovering, losing power at once (nothing written), and recovering
/// again gives the same logs, tails and records, and the second recovery removes nothing.
#[test]
fn recovering_twice_gives_the_same_state() {
    let (seeds, _) = seeds(0..40);
    let mut coverage = Coverage::default();
    for seed in seeds {
        let _guard = SeedGuard {
            seed,
            test: "recovering_twice_gives_the_same_state",
        };
        let mut rng = SimRng::new(seed ^ 0x5eed_0f7e);
        let disk = SimDisk::new();
        let mut model = Model::default();
        let mut store = open(&disk, &mut rng);
        for cycle in 0..CYCLES_PER_SEED {
            let ops = rng.below(400);
            run_workload(
                &mut store,
                &mut model,
                &mut rng,
                cycle + 1,
                ops,
                false,
                &mut coverage,
            )
            .unwrap_or_else(|e| panic!("cycle {cycle}: the store failed with no crash: {e}"));
            disk.crash(rng.next_u64());
            drop(store);
            let mut first = open(&disk, &mut rng);
            let first_report = first.recovery_report().clone();
            let first_state = read_state(&mut first);
            let mut first_files = disk.files_in(Path::new(DIR));
            first_files.sort();
            disk.crash(rng.next_u64());
            drop(first);
            store = open(&disk, &mut rng);
            let second_report = store.recovery_report().clone();
            let second_state = read_state(&mut store);
            let mut second_files = disk.files_in(Path::new(DIR));
            second_files.sort();
            assert_eq!(
                second_state, first_state,
                "cycle {cycle}: state after recovering twice"
            );
            assert_eq!(second_files, first_files, "cycle {cycle}: segment files");
            assert!(
                second_report.removed.is_empty(),
                "cycle {cycle}: the second recovery removed {:?}",
                second_report.removed
            );
            assert_eq!(
                (
                    second_report.segments,
                    second_report.frames,
                    second_report.records
                ),
                (
                    first_report.segments,
                    first_report.frames,
                    first_report.records
                ),
                "cycle {cycle}: both recoveries replayed the same frames"
            );
            assert_eq!(
                second_report.torn_tail, first_report.torn_tail,
                "cycle {cycle}"
            );
            check_recovered(&mut store, &mut model, &mut coverage);
        }
    }
}
