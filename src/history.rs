//! The history model and its checks, shared by the real-process history test
//! (`tests/history`) and the simulator ([`crate::sim`]), with no processes and no I/O: what the
//! writers did (one [`Op`] per keyed append: its key, its records, its condition and fencing
//! token, when it was first sent, and whether it was acknowledged at LSNs, refused for good or
//! is indefinite), what clients saw of the log meanwhile ([`Seen`]: records read or pushed,
//! linearizable tails, trims and TRIMMED answers), what every replica holds at the end (its
//! records from its trim point, read in full), and [`check`], which compares them and names
//! every anomaly.
//!
//! Every record's payload names its log, its writer, the append's `writer_seq` and its index
//! in the batch, padded to a length that follows from them ([`payload`]), so any record read
//! back says which value it is, and a byte that differs from what was sent is seen.
//!
//! What a correct chain guarantees and [`check`] verifies, per log:
//!
//! - every replica's records are dense from its trim point up to the committed tail it
//!   reports, and all replicas report the same tail once the chain settled;
//! - no LSN holds different bytes on two replicas;
//! - every record was sent (its writer, sequence number and index belong to an append that was
//!   invoked, and its bytes are those sent);
//! - every acknowledged record is on every replica, at the LSN that was acknowledged (a
//!   record on no replica, or missing where a replica holds another record, is lost; one a
//!   replica does not serve because its committed records end before it is reported apart);
//! - no record is at two LSNs (on one replica or across them): an append retried with its key
//!   is appended once, acknowledged or not;
//! - an indefinite append is all there, at consecutive LSNs, or not there at all; a refused
//!   one is not there at all;
//! - real-time order: an append acknowledged before another was first sent has lower LSNs;
//! - reads (I2 during the run): every record a client read or was pushed, from whichever
//!   replica, is the one the final history holds at its LSN, with the same timestamp wherever
//!   it was read, and below the final committed tail; no answer names a committed tail above
//!   the final one;
//! - conditions (I6): an append with `expected_lsn` succeeds only at that LSN, and a
//!   CONDITION_FAILED names a tail other than the expected one and not below anything
//!   acknowledged before the append was sent;
//! - fencing (I7): in LSN order, the tokens of the fenced appends in the log never go down
//!   (no append with a lower token succeeds after one with a higher token), and a FENCED names
//!   a token above the append's, one an append carried, not below the tokens acknowledged
//!   before the append was sent;
//! - tails: a CHECK_TAIL names a tail at or above the end of every append acknowledged before
//!   it was sent (linearizable), and not above the final committed tail;
//! - trims: a replica is trimmed no further than some TRIM asked and at least as far as every
//!   acknowledged TRIM asked, and a TRIMMED answer names a trim point above the LSN asked for
//!   and no further than some TRIM asked. The trimmed prefix is checked from what was read
//!   before it was trimmed: a trimmed LSN nobody read cannot be checked, and is reported.
//!
//! [`check_stamps`] checks the records' timestamps against the wall clocks of the nodes
//! that could have stamped them, which only the caller knows.
//!
//! The unit tests at the end give [`check`] hand-made histories, each with one anomaly, so each
//! check is known to bite.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// A point in time of a history: the real clock (`Instant`) for real processes, virtual
/// microseconds (`u64`) for the simulator.
pub trait Time: Copy + Ord + fmt::Debug {
    /// Microseconds from `earlier` to `self` (0 if `earlier` is later).
    fn micros_since(self, earlier: Self) -> u64;
}

impl Time for Instant {
    fn micros_since(self, earlier: Instant) -> u64 {
        self.saturating_duration_since(earlier).as_micros() as u64
    }
}

impl Time for u64 {
    fn micros_since(self, earlier: u64) -> u64 {
        self.saturating_sub(earlier)
    }
}

/// One record an append carried: record `index` of writer `writer`'s append `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub writer: u64,
    pub seq: u64,
    pub index: u32,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}/s{}/r{}", self.writer, self.seq, self.index)
    }
}

/// The header of `value`'s payload in log `log_id` (what the payload repeats).
fn unit(log_id: u64, value: Value) -> String {
    format!(
        "{log_id:x} w{} s{} r{};",
        value.writer, value.seq, value.index
    )
}

/// The length of `value`'s payload: half the records up to a few hundred bytes, half 1 to
/// 8 KiB.
fn payload_len(unit_len: usize, value: Value) -> usize {
    let mix = value
        .writer
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(value.seq.wrapping_mul(31))
        .wrapping_add(u64::from(value.index));
    if mix.is_multiple_of(2) {
        1024 + (mix % 7168) as usize
    } else {
        unit_len + (mix % 200) as usize
    }
}

/// The payload of `value` in log `log_id`: a header naming both, repeated to a length that
/// follows from the value: half the records up to a few hundred bytes, half 1 to 8 KiB.
/// (Larger writes keep a head's write slots busy longer, so more records wait for a slot,
/// already forwarded to the successor, when a kill lands: the window of issue 10's
/// restarted-head defect. With only small records the head kills rarely found it.)
pub fn payload(log_id: u64, value: Value) -> Vec<u8> {
    let unit = unit(log_id, value);
    let len = payload_len(unit.len(), value);
    let mut out = Vec::with_capacity(len + unit.len());
    while out.len() < len {
        out.extend_from_slice(unit.as_bytes());
    }
    out.truncate(len);
    out
}

/// The value `bytes` claims to be in log `log_id` (from its header), or `None` if it names no
/// value of this log. Whether the bytes are exactly that value's is for the caller to see.
fn claimed(log_id: u64, bytes: &[u8]) -> Option<Value> {
    let end = bytes.iter().position(|&b| b == b';')?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut parts = head.split(' ');
    let log = u64::from_str_radix(parts.next()?, 16).ok()?;
    let writer = parts.next()?.strip_prefix('w')?.parse().ok()?;
    let seq = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let index = parts.next()?.strip_prefix('r')?.parse().ok()?;
    (log == log_id && parts.next().is_none()).then_some(Value { writer, seq, index })
}

/// The value whose payload in log `log_id` is exactly `bytes`; otherwise what the bytes are,
/// for a report (a damaged copy of a value, or bytes naming none). For clients that read
/// records back during a run (without building the payload it compares against).
pub fn identify(log_id: u64, bytes: &[u8]) -> Result<Value, String> {
    match claimed(log_id, bytes) {
        Some(v) => {
            let unit = unit(log_id, v);
            let unit = unit.as_bytes();
            let exact = bytes.len() == payload_len(unit.len(), v)
                && bytes.chunks(unit.len()).all(|c| c == &unit[..c.len()]);
            if exact {
                Ok(v)
            } else {
                Err(format!("a damaged copy of {v} ({} bytes)", bytes.len()))
            }
        }
        None => Err(format!("{} bytes naming no value of this log", bytes.len())),
    }
}

/// How an append ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Acknowledged: its records got `lsns`; the answer was seen at `at`.
    Acked { lsns: Range<u64>, at: T },
    /// No answer but "unknown" (lost connection, timeout, or a terminal error after an attempt
    /// whose outcome was unknown) before the run ended: appended once or not at all.
    Indefinite { last_error: String },
    /// Refused for good (`at`), and no attempt of it had an unknown outcome: it was never
    /// appended.
    Refused { refusal: Refusal, at: T },
}

/// Why an append was refused for good, with what the answer named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// CONDITION_FAILED: the log's tail was `tail`, not the expected LSN.
    ConditionFailed { tail: u64 },
    /// FENCED: the log's fencing token was `token`, above the append's.
    Fenced { token: u64 },
}

/// One keyed append (`writer`, `seq`) of `records` records, first sent at `invoked`.
#[derive(Clone, Debug)]
pub struct Op<T> {
    pub writer: u64,
    pub seq: u64,
    pub records: u32,
    pub invoked: T,
    /// Its condition: append only if the batch would start at this LSN.
    pub expected_lsn: Option<u64>,
    /// Its fencing token (nonzero).
    pub fencing_token: Option<u64>,
    pub outcome: Outcome<T>,
}

impl<T> Op<T> {
    fn value(&self, index: u32) -> Value {
        Value {
            writer: self.writer,
            seq: self.seq,
            index,
        }
    }
}

/// One replica's committed records of a log, read in full at the end.
#[derive(Clone, Debug)]
pub struct Replica {
    /// For the report, e.g. "node 2 (middle)".
    pub name: String,
    /// Records below this LSN are trimmed here: `records` start at it.
    pub trim_point: u64,
    /// The committed tail it reported.
    pub tail: u64,
    /// Its records as (LSN, payload), in the order read. A payload is shared: replicas that
    /// hold the same bytes at an LSN can hold one copy (a long run's replicas are gigabytes).
    pub records: Vec<(u64, Arc<[u8]>)>,
}

/// A record a client was served: its value and the timestamp it was stamped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamped {
    pub value: Value,
    pub timestamp_us: u64,
}

/// What a client saw of a log during the run, besides its own appends' answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen<T> {
    /// Committed records served by one replica (a READ's answer or a subscription's push,
    /// `source` says which and where) at `at`: consecutive from `first`, under the committed
    /// `tail` the answer named.
    Records {
        source: String,
        at: T,
        first: u64,
        tail: u64,
        records: Vec<Stamped>,
    },
    /// A READ or SUBSCRIBE from `from` refused with TRIMMED naming `trim_point`.
    Trimmed {
        source: String,
        from: u64,
        trim_point: u64,
    },
    /// A CHECK_TAIL sent at `invoked`, answered at `at` with `tail` and `trim_point`.
    Tail {
        source: String,
        invoked: T,
        at: T,
        tail: u64,
        trim_point: u64,
    },
    /// A TRIM to `before` was sent (and `acked` if it was answered with success).
    Trim { before: u64, acked: bool },
}

/// Something a correct chain never shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// A replica's records are not dense from its trim point: `found` where `expected`
    /// should be.
    Gap {
        replica: String,
        expected: u64,
        found: u64,
    },
    /// A replica's records end at `end`, not at the committed `tail` it reported.
    ShortRead {
        replica: String,
        tail: u64,
        end: u64,
    },
    /// The replicas report different committed tails after the chain settled.
    TailsDiffer { tails: Vec<(String, u64)> },
    /// LSN `lsn` holds different bytes on different replicas: (replica, what it holds).
    Divergent {
        lsn: u64,
        holders: Vec<(String, String)>,
    },
    /// LSN `lsn` holds bytes no append sent (`what` says what they claim to be).
    NeverSent {
        lsn: u64,
        replicas: Vec<String>,
        what: String,
    },
    /// An acknowledged record is on no replica, or not on replicas that hold `acked_lsn`:
    /// (replica, what it holds at `acked_lsn`).
    Lost {
        value: Value,
        acked_lsn: u64,
        missing_on: Vec<(String, String)>,
    },
    /// An acknowledged record is on some replicas, but others serve committed records only up
    /// to an end at or below its LSN: (replica, its end). After settling, a replica that is
    /// behind lost it for its readers.
    BeyondEnd {
        value: Value,
        acked_lsn: u64,
        ends: Vec<(String, u64)>,
    },
    /// An acknowledged record sits elsewhere than its acknowledged LSN: (replica, its LSNs).
    Moved {
        value: Value,
        acked_lsn: u64,
        found: Vec<(String, Vec<u64>)>,
    },
    /// A record is at more than one LSN: (LSN, the replicas holding it there).
    Duplicate {
        value: Value,
        acked: bool,
        at: Vec<(u64, Vec<String>)>,
    },
    /// An indefinite append is only partly present on `replica`, or not at consecutive LSNs:
    /// (index, LSN) of the records that are.
    TornBatch {
        writer: u64,
        seq: u64,
        records: u32,
        replica: String,
        present: Vec<(u32, u64)>,
    },
    /// A record of an append that was refused for good is in the log, at these LSNs.
    RefusedPresent { value: Value, lsns: Vec<u64> },
    /// `earlier` was acknowledged `gap_us` before `later` was first sent, yet `later` has an
    /// LSN at or below one of `earlier`'s.
    RealTime {
        earlier: (Value, Range<u64>),
        later: (Value, Range<u64>),
        gap_us: u64,
    },
    /// `replica` is trimmed below `trim_point`, but nobody read `lsns` before they were
    /// trimmed: what they held cannot be checked.
    TrimmedUnread { replica: String, lsns: Range<u64> },
    /// A client was served `read` at `lsn` (by `source`), but the final history holds `there`
    /// (another value, or the same one with another timestamp).
    ReadDiffers {
        source: String,
        lsn: u64,
        read: String,
        there: String,
    },
    /// A client was served a record at `lsn` as committed, but the final committed tail is at
    /// or below it.
    ReadUncommitted {
        source: String,
        lsn: u64,
        read: Value,
        final_tail: u64,
    },
    /// An answer named a committed `tail` above the final committed tail.
    TailAhead {
        source: String,
        tail: u64,
        final_tail: u64,
    },
    /// An answer named a `tail` below the end of `missed`, acknowledged `gap_us` before the
    /// request was sent.
    StaleTail {
        source: String,
        tail: u64,
        missed: (Value, Range<u64>),
        gap_us: u64,
    },
    /// A conditional append (expected at `expected`) was answered against its condition.
    Condition {
        value: Value,
        expected: Option<u64>,
        problem: String,
    },
    /// `later` (its first record, its token, its LSN) is in the log after `earlier`, which
    /// carried a higher fencing token.
    FencingOrder {
        earlier: (Value, u64, u64),
        later: (Value, u64, u64),
    },
    /// A FENCED answer to an append with token `token` named `named`, which it may not.
    Fenced {
        value: Value,
        token: Option<u64>,
        named: u64,
        problem: String,
    },
    /// A trim point that no correct chain shows (`problem` says why).
    TrimPoint {
        source: String,
        trim_point: u64,
        problem: String,
    },
    /// A record was stamped `stamp_us`, outside the wall-clock `window` of the nodes that
    /// could have stamped it while its append was in flight.
    Stamp {
        value: Value,
        lsn: u64,
        stamp_us: u64,
        window: Range<u64>,
    },
}

impl Anomaly {
    /// The kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Anomaly::Gap { .. } => "gap",
            Anomaly::ShortRead { .. } => "short read",
            Anomaly::TailsDiffer { .. } => "tails differ",
            Anomaly::Divergent { .. } => "divergent LSN",
            Anomaly::NeverSent { .. } => "never sent",
            Anomaly::Lost { .. } => "acknowledged and lost",
            Anomaly::BeyondEnd { .. } => "acknowledged, beyond a replica's end",
            Anomaly::Moved { .. } => "acknowledged at another LSN",
            Anomaly::Duplicate { .. } => "at two LSNs",
            Anomaly::TornBatch { .. } => "torn batch",
            Anomaly::RefusedPresent { .. } => "refused and present",
            Anomaly::RealTime { .. } => "real-time order",
            Anomaly::TrimmedUnread { .. } => "trimmed unread",
            Anomaly::ReadDiffers { .. } => "read differs",
            Anomaly::ReadUncommitted { .. } => "read uncommitted",
            Anomaly::TailAhead { .. } => "tail ahead",
            Anomaly::StaleTail { .. } => "stale tail",
            Anomaly::Condition { .. } => "condition",
            Anomaly::FencingOrder { .. } => "fencing order",
            Anomaly::Fenced { .. } => "fenced",
            Anomaly::TrimPoint { .. } => "trim point",
            Anomaly::Stamp { .. } => "timestamp",
        }
    }
}

fn list<T>(items: &[T], each: impl Fn(&T) -> String) -> String {
    items.iter().map(each).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.kind())?;
        match self {
            Anomaly::Gap {
                replica,
                expected,
                found,
            } => write!(f, "{replica} holds LSN {found} where {expected} should be"),
            Anomaly::ShortRead { replica, tail, end } => write!(
                f,
                "{replica} reports records up to {tail} committed but serves them up to {end}"
            ),
            Anomaly::TailsDiffer { tails } => write!(
                f,
                "committed tails after settling: {}",
                list(tails, |(r, t)| format!("{r} {t}"))
            ),
            Anomaly::Divergent { lsn, holders } => write!(
                f,
                "LSN {lsn} holds {}",
                list(holders, |(r, what)| format!("{what} on {r}"))
            ),
            Anomaly::NeverSent {
                lsn,
                replicas,
                what,
            } => write!(f, "LSN {lsn} on {} holds {what}", replicas.join(", ")),
            Anomaly::Lost {
                value,
                acked_lsn,
                missing_on,
            } => write!(
                f,
                "{value} acknowledged at LSN {acked_lsn} is on no LSN of {}",
                list(missing_on, |(r, there)| format!(
                    "{r} (LSN {acked_lsn}: {there})"
                ))
            ),
            Anomaly::BeyondEnd {
                value,
                acked_lsn,
                ends,
            } => write!(
                f,
                "{value} acknowledged at LSN {acked_lsn} is not served by {}",
                list(ends, |(r, end)| format!("{r} (records up to {end})"))
            ),
            Anomaly::Moved {
                value,
                acked_lsn,
                found,
            } => write!(
                f,
                "{value} acknowledged at LSN {acked_lsn} is at {}",
                list(found, |(r, lsns)| format!("LSNs {lsns:?} on {r}"))
            ),
            Anomaly::Duplicate { value, acked, at } => write!(
                f,
                "{value} ({}) is at {}",
                if *acked { "acknowledged" } else { "indefinite" },
                list(at, |(lsn, rs)| format!("LSN {lsn} on {}", rs.join(", ")))
            ),
            Anomaly::TornBatch {
                writer,
                seq,
                records,
                replica,
                present,
            } => write!(
                f,
                "indefinite append w{writer}/s{seq} of {records} records: on {replica} only \
                 (record, LSN) {present:?}"
            ),
            Anomaly::RefusedPresent { value, lsns } => write!(
                f,
                "{value} was refused for good, yet it is at LSNs {lsns:?}"
            ),
            Anomaly::RealTime {
                earlier,
                later,
                gap_us,
            } => write!(
                f,
                "{} (LSNs {:?}) was acknowledged {gap_us} µs before {} was first sent, \
                 which has LSNs {:?}",
                earlier.0, earlier.1, later.0, later.1
            ),
            Anomaly::TrimmedUnread { replica, lsns } => write!(
                f,
                "{replica} is trimmed past LSNs {lsns:?}, which nobody read before"
            ),
            Anomaly::ReadDiffers {
                source,
                lsn,
                read,
                there,
            } => write!(
                f,
                "{source} served {read} at LSN {lsn}, where the final history holds {there}"
            ),
            Anomaly::ReadUncommitted {
                source,
                lsn,
                read,
                final_tail,
            } => write!(
                f,
                "{source} served {read} at LSN {lsn} as committed; the final committed tail \
                 is {final_tail}"
            ),
            Anomaly::TailAhead {
                source,
                tail,
                final_tail,
            } => write!(
                f,
                "{source} named the committed tail {tail}; the final one is {final_tail}"
            ),
            Anomaly::StaleTail {
                source,
                tail,
                missed,
                gap_us,
            } => write!(
                f,
                "{source} named the tail {tail}, below {} (LSNs {:?}) acknowledged {gap_us} µs \
                 before it was sent",
                missed.0, missed.1
            ),
            Anomaly::Condition {
                value,
                expected,
                problem,
            } => write!(f, "{value} (expected LSN {expected:?}) {problem}"),
            Anomaly::FencingOrder { earlier, later } => write!(
                f,
                "{} (token {}) is at LSN {}, after {} (token {}) at LSN {}",
                later.0, later.1, later.2, earlier.0, earlier.1, earlier.2
            ),
            Anomaly::Fenced {
                value,
                token,
                named,
                problem,
            } => write!(
                f,
                "{value} (token {token:?}) was refused with FENCED naming token {named}: \
                 {problem}"
            ),
            Anomaly::TrimPoint {
                source,
                trim_point,
                problem,
            } => write!(f, "{source}: trim point {trim_point}: {problem}"),
            Anomaly::Stamp {
                value,
                lsn,
                stamp_us,
                window,
            } => write!(
                f,
                "{value} at LSN {lsn} is stamped {stamp_us}, outside {window:?} (the wall \
                 clocks while its append was in flight)"
            ),
        }
    }
}

/// What `bytes` is, for a report: the value it is, a damaged copy of one, or how long it is.
fn describe(log_id: u64, bytes: &[u8]) -> String {
    identify(log_id, bytes).map_or_else(|what| what, |v| v.to_string())
}

/// The acknowledged appends of `ops` by the time their answers came: (when, the append, its
/// LSNs), in time order, and for each position the one with the highest LSNs so far.
struct AckedInOrder<'a, T> {
    acked: Vec<(T, &'a Op<T>, Range<u64>)>,
    highest: Vec<usize>,
}

impl<'a, T: Time> AckedInOrder<'a, T> {
    fn new(ops: &'a [Op<T>]) -> AckedInOrder<'a, T> {
        let mut acked: Vec<(T, &Op<T>, Range<u64>)> = ops
            .iter()
            .filter_map(|op| match &op.outcome {
                Outcome::Acked { lsns, at } => Some((*at, op, lsns.clone())),
                _ => None,
            })
            .collect();
        acked.sort_by_key(|(at, ..)| *at);
        // highest[k]: the acknowledged append among the first k + 1 with the highest last LSN.
        let mut highest: Vec<usize> = Vec::with_capacity(acked.len());
        for k in 0..acked.len() {
            let best = match highest.last() {
                Some(&b) if acked[b].2.end >= acked[k].2.end => b,
                _ => k,
            };
            highest.push(best);
        }
        AckedInOrder { acked, highest }
    }

    /// The append acknowledged before `t` with the highest LSNs: (when, the append, its LSNs).
    fn highest_before(&self, t: T) -> Option<&(T, &'a Op<T>, Range<u64>)> {
        let before = self.acked.partition_point(|(at, ..)| *at < t);
        before.checked_sub(1).map(|k| &self.acked[self.highest[k]])
    }
}

/// Checks the history of log `log_id`: the appends `ops` (every one that was invoked) and what
/// clients saw meanwhile (`seen`) against what `replicas` hold at the end. Returns every
/// anomaly found (none: the history is valid).
pub fn check<T: Time>(
    log_id: u64,
    ops: &[Op<T>],
    replicas: &[Replica],
    seen: &[Seen<T>],
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let by_key: HashMap<(u64, u64), &Op<T>> =
        ops.iter().map(|op| ((op.writer, op.seq), op)).collect();

    // What was read at each LSN first: (the record, who served it). The trimmed prefix of
    // the log is known only from these.
    let mut read_at: BTreeMap<u64, (Stamped, &str)> = BTreeMap::new();
    for s in seen {
        if let Seen::Records {
            source,
            first,
            records,
            ..
        } = s
        {
            for (lsn, r) in (*first..).zip(records) {
                read_at.entry(lsn).or_insert((*r, source));
            }
        }
    }
    let trimmed_max = replicas.iter().map(|r| r.trim_point).max().unwrap_or(0);
    let prefix: BTreeMap<u64, Vec<u8>> = read_at
        .range(..trimmed_max)
        .map(|(&lsn, (r, _))| (lsn, payload(log_id, r.value)))
        .collect();

    // Each replica: dense from its trim point up to the tail it reports, its trimmed prefix
    // read before it was trimmed.
    for r in replicas {
        if let Some((i, &(lsn, _))) = r
            .records
            .iter()
            .enumerate()
            .find(|&(i, (lsn, _))| *lsn != r.trim_point + i as u64)
        {
            anomalies.push(Anomaly::Gap {
                replica: r.name.clone(),
                expected: r.trim_point + i as u64,
                found: lsn,
            });
        }
        let end = r.records.last().map_or(r.trim_point, |(lsn, _)| lsn + 1);
        if end != r.tail {
            anomalies.push(Anomaly::ShortRead {
                replica: r.name.clone(),
                tail: r.tail,
                end,
            });
        }
        let unread = (0..r.trim_point).find(|lsn| !prefix.contains_key(lsn));
        if let Some(from) = unread {
            let to = (from..r.trim_point)
                .find(|lsn| prefix.contains_key(lsn))
                .unwrap_or(r.trim_point);
            anomalies.push(Anomaly::TrimmedUnread {
                replica: r.name.clone(),
                lsns: from..to,
            });
        }
    }
    if replicas.windows(2).any(|w| w[0].tail != w[1].tail) {
        anomalies.push(Anomaly::TailsDiffer {
            tails: replicas.iter().map(|r| (r.name.clone(), r.tail)).collect(),
        });
    }

    // Every LSN: the same bytes everywhere (a replica's trimmed prefix is what was read
    // there before the trim), bytes that were sent; where each value is.
    let mut at_lsn: BTreeMap<u64, Vec<(usize, &[u8])>> = BTreeMap::new();
    for (i, r) in replicas.iter().enumerate() {
        for (lsn, bytes) in prefix.range(..r.trim_point) {
            at_lsn.entry(*lsn).or_default().push((i, bytes));
        }
        for (lsn, bytes) in &r.records {
            at_lsn.entry(*lsn).or_default().push((i, bytes));
        }
    }
    // value -> replica index -> its LSNs there.
    let mut places: HashMap<Value, BTreeMap<usize, Vec<u64>>> = HashMap::new();
    // What the final history holds at each LSN (the first replica's, where they differ).
    let mut final_at: BTreeMap<u64, Result<Value, String>> = BTreeMap::new();
    for (&lsn, holders) in &at_lsn {
        if holders.iter().any(|(_, b)| *b != holders[0].1) {
            anomalies.push(Anomaly::Divergent {
                lsn,
                holders: holders
                    .iter()
                    .map(|&(i, b)| (replicas[i].name.clone(), describe(log_id, b)))
                    .collect(),
            });
        }
        let mut distinct: Vec<&[u8]> = holders.iter().map(|(_, b)| *b).collect();
        distinct.sort_unstable();
        distinct.dedup();
        for bytes in distinct {
            let sent = match identify(log_id, bytes) {
                Ok(v)
                    if by_key
                        .get(&(v.writer, v.seq))
                        .is_some_and(|op| v.index < op.records) =>
                {
                    Ok(v)
                }
                Ok(v) => Err(v.to_string()),
                Err(what) => Err(what),
            };
            let here = holders.iter().filter(|(_, b)| *b == bytes).map(|(i, _)| *i);
            match sent {
                Ok(v) => {
                    for i in here {
                        places.entry(v).or_default().entry(i).or_default().push(lsn);
                    }
                }
                Err(what) => anomalies.push(Anomaly::NeverSent {
                    lsn,
                    replicas: here.map(|i| replicas[i].name.clone()).collect(),
                    what,
                }),
            }
        }
        final_at.insert(lsn, identify(log_id, holders[0].1));
    }

    // No value at two LSNs.
    let mut values: Vec<&Value> = places.keys().collect();
    values.sort_unstable();
    for v in values {
        let mut at: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (&i, lsns) in &places[v] {
            for &lsn in lsns {
                at.entry(lsn).or_default().push(replicas[i].name.clone());
            }
        }
        if at.len() > 1 {
            let acked = matches!(by_key[&(v.writer, v.seq)].outcome, Outcome::Acked { .. });
            anomalies.push(Anomaly::Duplicate {
                value: *v,
                acked,
                at: at.into_iter().collect(),
            });
        }
    }

    // Acknowledged records: on every replica, at the acknowledged LSN.
    for op in ops {
        let Outcome::Acked { lsns, .. } = &op.outcome else {
            continue;
        };
        for (index, acked_lsn) in (0..op.records).zip(lsns.clone()) {
            let value = op.value(index);
            let mut missing_on = Vec::new();
            let mut ends = Vec::new();
            let mut found = Vec::new();
            for (i, r) in replicas.iter().enumerate() {
                if acked_lsn < r.trim_point && !prefix.contains_key(&acked_lsn) {
                    continue; // Trimmed unread: reported above.
                }
                match places.get(&value).and_then(|p| p.get(&i)) {
                    None => {
                        let there = at_lsn
                            .get(&acked_lsn)
                            .and_then(|h| h.iter().find(|(j, _)| *j == i));
                        match there {
                            Some((_, b)) => missing_on.push((r.name.clone(), describe(log_id, b))),
                            None => ends.push((r.name.clone(), r.tail)),
                        }
                    }
                    Some(lsns) if !lsns.contains(&acked_lsn) => {
                        found.push((r.name.clone(), lsns.clone()));
                    }
                    Some(_) => {}
                }
            }
            if !places.contains_key(&value) {
                // Nowhere at all: lost, whatever the replicas hold at its LSN.
                missing_on.extend(
                    ends.drain(..)
                        .map(|(r, end)| (r, format!("beyond its end {end}"))),
                );
            }
            if !missing_on.is_empty() {
                anomalies.push(Anomaly::Lost {
                    value,
                    acked_lsn,
                    missing_on,
                });
            }
            if !ends.is_empty() {
                anomalies.push(Anomaly::BeyondEnd {
                    value,
                    acked_lsn,
                    ends,
                });
            }
            if !found.is_empty() {
                anomalies.push(Anomaly::Moved {
                    value,
                    acked_lsn,
                    found,
                });
            }
        }
    }

    // Indefinite appends: whole, at consecutive LSNs, or absent, on each replica. Refused
    // ones: absent.
    for op in ops {
        match op.outcome {
            Outcome::Acked { .. } => {}
            Outcome::Indefinite { .. } => {
                for (i, r) in replicas.iter().enumerate() {
                    let present: Vec<(u32, u64)> = (0..op.records)
                        .filter_map(|index| {
                            let lsns = places.get(&op.value(index))?.get(&i)?;
                            Some((index, lsns[0]))
                        })
                        .collect();
                    let whole = present.len() == op.records as usize
                        && present.windows(2).all(|w| w[1].1 == w[0].1 + 1);
                    if !present.is_empty() && !whole {
                        anomalies.push(Anomaly::TornBatch {
                            writer: op.writer,
                            seq: op.seq,
                            records: op.records,
                            replica: r.name.clone(),
                            present,
                        });
                    }
                }
            }
            Outcome::Refused { .. } => {
                for index in 0..op.records {
                    let value = op.value(index);
                    if let Some(p) = places.get(&value) {
                        let mut lsns: Vec<u64> = p.values().flatten().copied().collect();
                        lsns.sort_unstable();
                        lsns.dedup();
                        anomalies.push(Anomaly::RefusedPresent { value, lsns });
                    }
                }
            }
        }
    }

    let acked = AckedInOrder::new(ops);
    anomalies.extend(real_time(ops, &places, &acked));
    let final_tail = replicas.iter().map(|r| r.tail).max().unwrap_or(0);
    anomalies.extend(reads(seen, &read_at, &final_at, final_tail, &acked));
    anomalies.extend(trims(replicas, seen));
    anomalies.extend(conditions(ops, &acked));
    anomalies.extend(fencing(ops, &places, &acked));
    anomalies
}

/// Where an append is: its acknowledged LSNs, or the LSNs an indefinite one was found at.
fn position<T>(
    op: &Op<T>,
    places: &HashMap<Value, BTreeMap<usize, Vec<u64>>>,
) -> Option<Range<u64>> {
    match &op.outcome {
        Outcome::Acked { lsns, .. } => Some(lsns.clone()),
        Outcome::Indefinite { .. } => {
            let found: Vec<u64> = (0..op.records)
                .filter_map(|i| places.get(&op.value(i)))
                .flat_map(|p| p.values().flatten().copied())
                .collect();
            match (found.iter().min(), found.iter().max()) {
                (Some(&lo), Some(&hi)) => Some(lo..hi + 1),
                _ => None,
            }
        }
        Outcome::Refused { .. } => None,
    }
}

/// Real-time order: for every append B with a position, the appends acknowledged before B was
/// first sent all have lower LSNs. One anomaly per B, naming the earlier append with the
/// highest LSN.
fn real_time<T: Time>(
    ops: &[Op<T>],
    places: &HashMap<Value, BTreeMap<usize, Vec<u64>>>,
    acked: &AckedInOrder<'_, T>,
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for op in ops {
        let Some(lsns) = position(op, places) else {
            continue;
        };
        let Some((at, earlier, earlier_lsns)) = acked.highest_before(op.invoked) else {
            continue;
        };
        if earlier_lsns.end > lsns.start {
            anomalies.push(Anomaly::RealTime {
                earlier: (earlier.value(0), earlier_lsns.clone()),
                later: (op.value(0), lsns),
                gap_us: op.invoked.micros_since(*at),
            });
        }
    }
    anomalies
}

/// What clients were served during the run against the final history (I2), and the tails
/// they were told against the final tail and the acknowledgements before them.
fn reads<T: Time>(
    seen: &[Seen<T>],
    read_at: &BTreeMap<u64, (Stamped, &str)>,
    final_at: &BTreeMap<u64, Result<Value, String>>,
    final_tail: u64,
    acked: &AckedInOrder<'_, T>,
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let ahead = |source: &str, tail: u64, anomalies: &mut Vec<Anomaly>| {
        if tail > final_tail {
            anomalies.push(Anomaly::TailAhead {
                source: source.to_string(),
                tail,
                final_tail,
            });
        }
    };
    for s in seen {
        match s {
            Seen::Records {
                source,
                first,
                tail,
                records,
                ..
            } => {
                ahead(source, *tail, &mut anomalies);
                for (lsn, r) in (*first..).zip(records) {
                    if lsn >= final_tail {
                        anomalies.push(Anomaly::ReadUncommitted {
                            source: source.clone(),
                            lsn,
                            read: r.value,
                            final_tail,
                        });
                        continue;
                    }
                    let there = match final_at.get(&lsn) {
                        Some(Ok(v)) if *v == r.value => None,
                        Some(Ok(v)) => Some(v.to_string()),
                        Some(Err(what)) => Some(what.clone()),
                        // Below every replica's trim point, and what was first read there is
                        // this: compared with the first read below.
                        None => None,
                    };
                    let first_read = &read_at[&lsn];
                    let there = there.or_else(|| {
                        (first_read.0 != *r).then(|| {
                            format!(
                                "{} stamped {} (served by {})",
                                first_read.0.value, first_read.0.timestamp_us, first_read.1
                            )
                        })
                    });
                    if let Some(there) = there {
                        anomalies.push(Anomaly::ReadDiffers {
                            source: source.clone(),
                            lsn,
                            read: format!("{} stamped {}", r.value, r.timestamp_us),
                            there,
                        });
                    }
                }
            }
            Seen::Tail {
                source,
                invoked,
                tail,
                ..
            } => {
                ahead(source, *tail, &mut anomalies);
                if let Some((at, op, lsns)) = acked.highest_before(*invoked) {
                    if lsns.end > *tail {
                        anomalies.push(Anomaly::StaleTail {
                            source: source.clone(),
                            tail: *tail,
                            missed: (op.value(0), lsns.clone()),
                            gap_us: invoked.micros_since(*at),
                        });
                    }
                }
            }
            Seen::Trimmed { .. } | Seen::Trim { .. } => {}
        }
    }
    anomalies
}

/// Trim points: no replica, TRIMMED or CHECK_TAIL answer beyond what some TRIM asked; every
/// replica at least as far as every acknowledged TRIM asked; a TRIMMED answer above the LSN
/// asked for.
fn trims<T>(replicas: &[Replica], seen: &[Seen<T>]) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let asked = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Trim { before, .. } => Some(*before),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let beyond = |source: &str, trim_point: u64, anomalies: &mut Vec<Anomaly>| {
        if trim_point > asked {
            anomalies.push(Anomaly::TrimPoint {
                source: source.to_string(),
                trim_point,
                problem: format!("no TRIM asked for more than {asked}"),
            });
        }
    };
    for r in replicas {
        beyond(&r.name, r.trim_point, &mut anomalies);
    }
    for s in seen {
        match s {
            Seen::Trim {
                before,
                acked: true,
            } => {
                for r in replicas.iter().filter(|r| r.trim_point < *before) {
                    anomalies.push(Anomaly::TrimPoint {
                        source: r.name.clone(),
                        trim_point: r.trim_point,
                        problem: format!("a TRIM to {before} was acknowledged"),
                    });
                }
            }
            Seen::Trimmed {
                source,
                from,
                trim_point,
            } => {
                beyond(source, *trim_point, &mut anomalies);
                if trim_point <= from {
                    anomalies.push(Anomaly::TrimPoint {
                        source: source.clone(),
                        trim_point: *trim_point,
                        problem: format!("TRIMMED for LSN {from}, which is not below it"),
                    });
                }
            }
            Seen::Tail {
                source, trim_point, ..
            } => beyond(source, *trim_point, &mut anomalies),
            Seen::Trim { acked: false, .. } | Seen::Records { .. } => {}
        }
    }
    anomalies
}

/// Conditional appends (I6): acknowledged only at their expected LSN; refused naming another
/// tail, not below what was acknowledged before they were sent.
fn conditions<T: Time>(ops: &[Op<T>], acked: &AckedInOrder<'_, T>) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for op in ops {
        let problem = match (&op.outcome, op.expected_lsn) {
            (Outcome::Acked { lsns, .. }, Some(expected)) if lsns.start != expected => {
                Some(format!("was acknowledged at LSNs {lsns:?}"))
            }
            (
                Outcome::Refused {
                    refusal: Refusal::ConditionFailed { tail },
                    ..
                },
                expected,
            ) => {
                let stale = acked
                    .highest_before(op.invoked)
                    .filter(|(_, _, lsns)| lsns.end > *tail);
                if expected.is_none() {
                    Some("is unconditional, yet it was refused with CONDITION_FAILED".to_string())
                } else if expected == Some(*tail) {
                    Some(format!(
                        "was refused with CONDITION_FAILED naming the tail {tail}: the expected one"
                    ))
                } else {
                    stale.map(|(_, earlier, lsns)| {
                        format!(
                            "was refused with CONDITION_FAILED naming the tail {tail}, below {} \
                             (LSNs {lsns:?}) acknowledged before it was sent",
                            earlier.value(0)
                        )
                    })
                }
            }
            _ => None,
        };
        if let Some(problem) = problem {
            anomalies.push(Anomaly::Condition {
                value: op.value(0),
                expected: op.expected_lsn,
                problem,
            });
        }
    }
    anomalies
}

/// Fencing (I7): the tokens of the fenced appends in the log never go down in LSN order; a
/// FENCED names a token above the append's, one some append carried, not below the tokens
/// acknowledged before the append was sent.
fn fencing<T: Time>(
    ops: &[Op<T>],
    places: &HashMap<Value, BTreeMap<usize, Vec<u64>>>,
    acked: &AckedInOrder<'_, T>,
) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut in_log: Vec<(u64, u64, Value)> = ops
        .iter()
        .filter_map(|op| {
            let token = op.fencing_token?;
            Some((position(op, places)?.start, token, op.value(0)))
        })
        .collect();
    in_log.sort_unstable();
    let mut highest: Option<(u64, u64, Value)> = None;
    for &(lsn, token, value) in &in_log {
        match highest {
            Some((h_lsn, h_token, h_value)) if token < h_token => {
                anomalies.push(Anomaly::FencingOrder {
                    earlier: (h_value, h_token, h_lsn),
                    later: (value, token, lsn),
                });
            }
            Some((_, h_token, _)) if token == h_token => {}
            _ => highest = Some((lsn, token, value)),
        }
    }
    let sent: std::collections::BTreeSet<u64> =
        ops.iter().filter_map(|op| op.fencing_token).collect();
    // The highest token acknowledged before each time: over the acknowledged appends in time
    // order.
    let mut acked_tokens: Vec<(T, u64)> = Vec::new();
    for (at, op, _) in &acked.acked {
        let best = acked_tokens.last().map_or(0, |&(_, t)| t);
        acked_tokens.push((*at, best.max(op.fencing_token.unwrap_or(0))));
    }
    for op in ops {
        let Outcome::Refused {
            refusal: Refusal::Fenced { token: named },
            ..
        } = op.outcome
        else {
            continue;
        };
        let before = acked_tokens.partition_point(|(at, _)| *at < op.invoked);
        let acked_token = before.checked_sub(1).map_or(0, |k| acked_tokens[k].1);
        let problem = if op.fencing_token.is_none() {
            Some("the append carried no token".to_string())
        } else if op.fencing_token.is_some_and(|t| named <= t) {
            Some("it is not above the append's".to_string())
        } else if !sent.contains(&named) {
            Some("no append carried it".to_string())
        } else if named < acked_token {
            Some(format!(
                "an append with token {acked_token} was acknowledged before this one was sent"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            anomalies.push(Anomaly::Fenced {
                value: op.value(0),
                token: op.fencing_token,
                named,
                problem,
            });
        }
    }
    anomalies
}

/// Checks the timestamps of the records clients were served: each must lie in the `window`
/// of wall-clock time (µs since the Unix epoch) in which a node could have stamped its
/// append (the caller knows the clocks: from the append's first send to its answer, or to the
/// end of the run).
pub fn check_stamps<T: Time>(
    ops: &[Op<T>],
    seen: &[Seen<T>],
    window: impl Fn(&Op<T>) -> Range<u64>,
) -> Vec<Anomaly> {
    let by_key: HashMap<(u64, u64), &Op<T>> =
        ops.iter().map(|op| ((op.writer, op.seq), op)).collect();
    let mut anomalies = Vec::new();
    for s in seen {
        let Seen::Records { first, records, .. } = s else {
            continue;
        };
        for (lsn, r) in (*first..).zip(records) {
            let Some(op) = by_key.get(&(r.value.writer, r.value.seq)) else {
                continue; // Never sent: the history check names it.
            };
            let window = window(op);
            if !window.contains(&r.timestamp_us) {
                anomalies.push(Anomaly::Stamp {
                    value: r.value,
                    lsn,
                    stamp_us: r.timestamp_us,
                    window,
                });
            }
        }
    }
    anomalies
}

/// The anomalies as a report: a count per kind, then up to `samples` of each kind.
pub fn report(anomalies: &[Anomaly], samples: usize) -> String {
    let mut by_kind: BTreeMap<&str, Vec<&Anomaly>> = BTreeMap::new();
    for a in anomalies {
        by_kind.entry(a.kind()).or_default().push(a);
    }
    let mut out = String::new();
    for (kind, all) in &by_kind {
        out.push_str(&format!("  {kind}: {}\n", all.len()));
        for a in all.iter().take(samples) {
            out.push_str(&format!("    {a}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LOG: u64 = 0xabc;

    /// Hand-made histories: appends in order, each acknowledged 1 ms after it was sent, the
    /// next one sent 1 ms after that.
    struct Hist {
        base: Instant,
        ops: Vec<Op<Instant>>,
        next_lsn: u64,
        clock_ms: u64,
    }

    impl Hist {
        fn new() -> Hist {
            Hist {
                base: Instant::now(),
                ops: Vec::new(),
                next_lsn: 0,
                clock_ms: 0,
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.base + Duration::from_millis(ms)
        }

        /// An acknowledged append of `records` records by `writer`, at the next LSNs.
        fn acked(&mut self, writer: u64, seq: u64, records: u32) -> &mut Hist {
            let lsns = self.next_lsn..self.next_lsn + u64::from(records);
            self.next_lsn = lsns.end;
            self.ops.push(Op {
                writer,
                seq,
                records,
                invoked: self.at(self.clock_ms),
                expected_lsn: None,
                fencing_token: None,
                outcome: Outcome::Acked {
                    lsns,
                    at: self.at(self.clock_ms + 1),
                },
            });
            self.clock_ms += 2;
            self
        }

        /// An indefinite append; if `appended`, it took the next LSNs.
        fn indefinite(&mut self, writer: u64, seq: u64, records: u32, appended: bool) -> &mut Hist {
            if appended {
                self.next_lsn += u64::from(records);
            }
            self.ops.push(Op {
                writer,
                seq,
                records,
                invoked: self.at(self.clock_ms),
                expected_lsn: None,
                fencing_token: None,
                outcome: Outcome::Indefinite {
                    last_error: "connection lost".into(),
                },
            });
            self.clock_ms += 2;
            self
        }

        /// What a correct replica holds: every acknowledged record and every appended
        /// indefinite one, at their LSNs (indefinite ones where `indefinite_at` says).
        fn log(&self, indefinite_at: &[(u64, u64, u64)]) -> Vec<(u64, Vec<u8>)> {
            let mut records = BTreeMap::new();
            for op in &self.ops {
                if let Outcome::Acked { lsns, .. } = &op.outcome {
                    for (i, lsn) in (0..op.records).zip(lsns.clone()) {
                        records.insert(lsn, payload(LOG, op.value(i)));
                    }
                }
            }
            for &(writer, seq, first) in indefinite_at {
                let op = self
                    .ops
                    .iter()
                    .find(|op| (op.writer, op.seq) == (writer, seq))
                    .expect("the op");
                for i in 0..op.records {
                    records.insert(first + u64::from(i), payload(LOG, op.value(i)));
                }
            }
            records.into_iter().collect()
        }
    }

    fn replica(name: &str, records: Vec<(u64, Vec<u8>)>) -> Replica {
        let tail = records.last().map_or(0, |(lsn, _)| lsn + 1);
        Replica {
            name: name.into(),
            trim_point: 0,
            tail,
            records: records.into_iter().map(|(l, p)| (l, p.into())).collect(),
        }
    }

    /// Three replicas holding `records`.
    fn three(records: &[(u64, Vec<u8>)]) -> Vec<Replica> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| replica(n, records.to_vec()))
            .collect()
    }

    /// Two writers, batches of 1 to 3 records, an indefinite append that was appended (at
    /// 6..8) and one that was not.
    fn sample() -> (Hist, Vec<(u64, Vec<u8>)>) {
        let mut h = Hist::new();
        h.acked(1, 1, 2).acked(2, 1, 1).acked(1, 2, 3);
        h.indefinite(2, 2, 2, true).indefinite(1, 3, 1, false);
        h.acked(2, 3, 1).acked(1, 4, 2);
        let log = h.log(&[(2, 2, 6)]);
        (h, log)
    }

    fn kinds(anomalies: &[Anomaly]) -> Vec<&'static str> {
        let mut k: Vec<_> = anomalies.iter().map(Anomaly::kind).collect();
        k.dedup();
        k
    }

    #[test]
    fn payloads_name_their_value_and_differ_in_length() {
        let v = Value {
            writer: 7,
            seq: 812,
            index: 2,
        };
        let p = payload(LOG, v);
        assert_eq!(claimed(LOG, &p), Some(v));
        assert_eq!(claimed(LOG + 1, &p), None, "another log's record");
        assert_eq!(describe(LOG, &p), "w7/s812/r2");
        let lens: std::collections::BTreeSet<usize> = (0..200)
            .map(|seq| payload(LOG, Value { seq, ..v }).len())
            .collect();
        assert!(lens.len() > 50 && *lens.last().expect("some") >= 4096);
    }

    #[test]
    fn a_valid_history_has_no_anomaly() {
        let (h, log) = sample();
        assert_eq!(log.len(), 11);
        assert_eq!(check(LOG, &h.ops, &three(&log), &[]), vec![]);
        // The indefinite append that was appended may also be absent: its records were never
        // acknowledged (the log is then shorter and later appends sit lower).
        let mut h = Hist::new();
        h.acked(1, 1, 1).indefinite(1, 2, 2, false).acked(2, 1, 1);
        assert_eq!(check(LOG, &h.ops, &three(&h.log(&[])), &[]), vec![]);
    }

    #[test]
    fn an_acknowledged_record_missing_on_one_replica_is_lost() {
        let (h, log) = sample();
        let mut replicas = three(&log);
        // n3 holds another (sent, indefinite) record at LSN 3 instead of w1/s2/r1.
        replicas[2].records[3].1 = payload(
            LOG,
            Value {
                writer: 1,
                seq: 3,
                index: 0,
            },
        )
        .into();
        let found = check(LOG, &h.ops, &replicas, &[]);
        assert!(found.contains(&Anomaly::Lost {
            value: Value {
                writer: 1,
                seq: 2,
                index: 0
            },
            acked_lsn: 3,
            missing_on: vec![("n3".into(), "w1/s3/r0".into())],
        }));
        assert!(kinds(&found).contains(&"divergent LSN"));
    }

    #[test]
    fn a_log_cut_short_everywhere_loses_acknowledged_records() {
        let (h, log) = sample();
        let found = check(LOG, &h.ops, &three(&log[..10]), &[]);
        assert_eq!(kinds(&found), vec!["acknowledged and lost"]);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].to_string().contains("beyond its end 10"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn an_acknowledged_record_at_another_lsn_is_moved() {
        let (h, mut log) = sample();
        // w2/s1 (acknowledged at 2) and w1/s2/r0 (at 3) swapped, on every replica.
        let (a, b) = (log[2].1.clone(), log[3].1.clone());
        log[2].1 = b;
        log[3].1 = a;
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert_eq!(kinds(&found), vec!["acknowledged at another LSN"]);
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn a_record_at_two_lsns_is_a_duplicate_acknowledged_or_not() {
        let (h, mut log) = sample();
        // The indefinite w2/s2 appended twice (a retry whose key was forgotten).
        let again: Vec<Vec<u8>> = log[6..8].iter().map(|(_, p)| p.clone()).collect();
        for p in again {
            log.push((log.len() as u64, p));
        }
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert_eq!(kinds(&found), vec!["at two LSNs"]);
        assert_eq!(found.len(), 2);
        assert!(matches!(&found[0], Anomaly::Duplicate { acked: false, at, .. } if at.len() == 2));
        // An acknowledged one, at its LSN on one replica and elsewhere on another.
        let (h, log) = sample();
        let mut replicas = three(&log);
        replicas[1].records[9].1 = log[0].1.as_slice().into();
        let found = check(LOG, &h.ops, &replicas, &[]);
        assert!(found.iter().any(|a| matches!(a,
            Anomaly::Duplicate { acked: true, at, .. } if at == &[(0, vec!["n1".into(), "n2".into(), "n3".into()]), (9, vec!["n2".into()])])));
    }

    #[test]
    fn replicas_with_different_bytes_at_one_lsn_diverge() {
        let (h, log) = sample();
        let mut replicas = three(&log);
        // The head holds the two indefinite records' LSNs the other way round.
        replicas[0].records.swap(6, 7);
        replicas[0].records[6].0 = 6;
        replicas[0].records[7].0 = 7;
        let found = check(LOG, &h.ops, &replicas, &[]);
        assert_eq!(
            kinds(&found),
            vec!["divergent LSN", "at two LSNs", "torn batch"]
        );
        assert_eq!(found.len(), 2 + 2 + 1);
    }

    #[test]
    fn a_gap_a_short_read_and_different_tails_are_seen() {
        let (h, log) = sample();
        let mut replicas = three(&log);
        replicas[1].records.remove(4);
        replicas[2].tail = 12;
        let found = check(LOG, &h.ops, &replicas, &[]);
        assert!(found.contains(&Anomaly::Gap {
            replica: "n2".into(),
            expected: 4,
            found: 5
        }));
        assert!(found.contains(&Anomaly::ShortRead {
            replica: "n3".into(),
            tail: 12,
            end: 11
        }));
        assert!(kinds(&found).contains(&"tails differ"));
    }

    #[test]
    fn a_replica_behind_the_others_does_not_serve_acknowledged_records() {
        let (h, log) = sample();
        let mut replicas = three(&log);
        replicas[2] = replica("n3", log[..9].to_vec());
        let found = check(LOG, &h.ops, &replicas, &[]);
        assert_eq!(
            kinds(&found),
            vec!["tails differ", "acknowledged, beyond a replica's end"]
        );
        assert_eq!(found.len(), 1 + 2);
        assert_eq!(
            found[1],
            Anomaly::BeyondEnd {
                value: Value {
                    writer: 1,
                    seq: 4,
                    index: 0
                },
                acked_lsn: 9,
                ends: vec![("n3".into(), 9)],
            }
        );
    }

    #[test]
    fn bytes_no_append_sent_are_never_sent() {
        let (h, log) = sample();
        let cases: [Vec<u8>; 5] = [
            // An append that was never invoked, a record beyond its batch, another log's
            // record, a damaged copy, garbage.
            payload(
                LOG,
                Value {
                    writer: 9,
                    seq: 1,
                    index: 0,
                },
            ),
            payload(
                LOG,
                Value {
                    writer: 1,
                    seq: 1,
                    index: 2,
                },
            ),
            payload(
                LOG + 1,
                Value {
                    writer: 1,
                    seq: 1,
                    index: 0,
                },
            ),
            {
                let mut p = log[4].1.clone();
                let last = p.len() - 1;
                p[last] ^= 1;
                p
            },
            vec![0; 40],
        ];
        for bytes in cases {
            let mut log = log.clone();
            log.push((log.len() as u64, bytes));
            let found = check(LOG, &h.ops, &three(&log), &[]);
            assert_eq!(kinds(&found), vec!["never sent"], "{found:?}");
        }
    }

    #[test]
    fn an_indefinite_append_partly_present_is_torn() {
        let (h, mut log) = sample();
        // The history up to w1/s3, and a log without w2/s2's second record (LSN 7).
        log.truncate(7);
        let found = check(LOG, &h.ops[..5], &three(&log), &[]);
        assert_eq!(kinds(&found), vec!["torn batch"]);
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn an_append_sent_after_another_was_acknowledged_with_lower_lsns_breaks_real_time() {
        let (mut h, log) = sample();
        // w1/s4 (LSNs 9..11) acknowledged at 1 ms, before the appends at lower LSNs were sent.
        let ack_of_s4 = h.at(1);
        let Outcome::Acked { at, .. } = &mut h.ops[6].outcome else {
            panic!("acked")
        };
        *at = ack_of_s4;
        h.ops[6].invoked = h.at(0);
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert_eq!(kinds(&found), vec!["real-time order"], "{found:?}");
        // Every append sent after 1 ms and found in the log (all but w1/s1 and the absent
        // w1/s3) has lower LSNs.
        assert_eq!(found.len(), 4);
        // And an indefinite append found below an append acknowledged before it was sent.
        let (mut h, log) = sample();
        h.ops[3].invoked = h.at(100);
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(matches!(&found[0], Anomaly::RealTime { later, .. } if later.1 == (6..8)));
    }

    #[test]
    fn the_report_counts_each_kind_and_shows_samples() {
        let (h, log) = sample();
        let found = check(LOG, &h.ops, &three(&log[..8]), &[]);
        let text = report(&found, 1);
        assert!(text.contains("acknowledged and lost: 3"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    /// What a reader was served of `log[range]` (tail 11, each record stamped 1000 + LSN).
    fn read(log: &[(u64, Vec<u8>)], range: Range<usize>, source: &str) -> Seen<Instant> {
        Seen::Records {
            source: source.into(),
            at: Instant::now(),
            first: range.start as u64,
            tail: 11,
            records: log[range]
                .iter()
                .map(|(lsn, p)| Stamped {
                    value: identify(LOG, p).expect("a sent value"),
                    timestamp_us: 1000 + lsn,
                })
                .collect(),
        }
    }

    /// Three replicas of `log` trimmed below `trim_point`.
    fn trimmed(log: &[(u64, Vec<u8>)], trim_point: u64) -> Vec<Replica> {
        let mut replicas = three(log);
        for r in &mut replicas {
            r.trim_point = trim_point;
            r.records.retain(|(lsn, _)| *lsn >= trim_point);
        }
        replicas
    }

    #[test]
    fn identify_names_exact_payloads_only() {
        let v = Value {
            writer: 3,
            seq: 9,
            index: 1,
        };
        let mut p = payload(LOG, v);
        assert_eq!(identify(LOG, &p), Ok(v));
        p.push(b'x');
        assert!(identify(LOG, &p)
            .unwrap_err()
            .contains("damaged copy of w3/s9/r1"));
        assert!(identify(LOG, b"nothing").is_err());
    }

    #[test]
    fn a_trimmed_prefix_is_checked_from_what_was_read_before_the_trim() {
        let (h, log) = sample();
        let trim = Seen::Trim {
            before: 5,
            acked: true,
        };
        let seen = vec![read(&log, 0..5, "trimmer"), trim.clone()];
        assert_eq!(check(LOG, &h.ops, &trimmed(&log, 5), &seen), vec![]);
        // Nobody read LSNs 3 and 4 before they were trimmed: they cannot be checked.
        let seen = vec![read(&log, 0..3, "trimmer"), trim.clone()];
        let found = check(LOG, &h.ops, &trimmed(&log, 5), &seen);
        assert_eq!(kinds(&found), vec!["trimmed unread"]);
        assert_eq!(found.len(), 3);
        assert!(matches!(&found[0], Anomaly::TrimmedUnread { lsns, .. } if *lsns == (3..5)));
        // What was read before the trim at LSN 3 is not what was acknowledged there.
        let mut wrong = log.clone();
        wrong.swap(3, 4);
        let seen = vec![read(&wrong, 0..5, "trimmer"), trim];
        let found = check(LOG, &h.ops, &trimmed(&log, 5), &seen);
        assert!(
            kinds(&found).contains(&"acknowledged at another LSN"),
            "{found:?}"
        );
    }

    #[test]
    fn what_readers_were_served_is_the_final_history() {
        let (h, log) = sample();
        let seen = vec![read(&log, 0..11, "reader"), read(&log, 4..9, "subscriber")];
        assert_eq!(check(LOG, &h.ops, &three(&log), &seen), vec![]);
        // Another value at LSN 4, another timestamp at LSN 5.
        let Seen::Records { mut records, .. } = read(&log, 4..6, "reader on n2") else {
            unreachable!()
        };
        records[0].value = identify(LOG, &log[2].1).expect("sent");
        records[1].timestamp_us += 1;
        let seen = vec![
            read(&log, 0..11, "reader"),
            Seen::Records {
                source: "reader on n2".into(),
                at: Instant::now(),
                first: 4,
                tail: 11,
                records,
            },
        ];
        let found = check(LOG, &h.ops, &three(&log), &seen);
        assert_eq!(kinds(&found), vec!["read differs"]);
        assert_eq!(found.len(), 2);
        // Records served as committed beyond the final tail, and a tail beyond it.
        let found = check(
            LOG,
            &h.ops,
            &three(&log[..10]),
            &[read(&log, 8..11, "reader")],
        );
        assert!(found.iter().any(|a| matches!(
            a,
            Anomaly::ReadUncommitted {
                lsn: 10,
                final_tail: 10,
                ..
            }
        )));
        assert!(kinds(&found).contains(&"tail ahead"), "{found:?}");
    }

    #[test]
    fn a_check_tail_below_an_acknowledgement_before_it_is_stale() {
        let (h, log) = sample();
        let tail = |tail: u64| Seen::Tail {
            source: "CHECK_TAIL".into(),
            invoked: h.at(14),
            at: h.at(15),
            tail,
            trim_point: 0,
        };
        assert_eq!(check(LOG, &h.ops, &three(&log), &[tail(11)]), vec![]);
        let found = check(LOG, &h.ops, &three(&log), &[tail(10)]);
        assert_eq!(kinds(&found), vec!["stale tail"]);
        let found = check(LOG, &h.ops, &three(&log), &[tail(12)]);
        assert_eq!(kinds(&found), vec!["tail ahead"]);
    }

    #[test]
    fn trim_points_follow_the_trims_asked() {
        let (h, log) = sample();
        let trim = |before: u64, acked: bool| Seen::Trim { before, acked };
        let found = check(
            LOG,
            &h.ops,
            &trimmed(&log, 5),
            &[read(&log, 0..11, "trimmer"), trim(4, true)],
        );
        assert_eq!(kinds(&found), vec!["trim point"]);
        assert_eq!(
            found.len(),
            3,
            "every replica trimmed beyond what was asked"
        );
        let found = check(
            LOG,
            &h.ops,
            &trimmed(&log, 5),
            &[read(&log, 0..11, "trimmer"), trim(5, true), trim(6, true)],
        );
        assert_eq!(
            found.len(),
            3,
            "every replica short of an acknowledged trim"
        );
        let trimmed_answer = |from: u64, trim_point: u64| Seen::Trimmed {
            source: "reader".into(),
            from,
            trim_point,
        };
        let seen = [
            read(&log, 0..11, "trimmer"),
            trim(5, false),
            trimmed_answer(2, 5),
        ];
        assert_eq!(check(LOG, &h.ops, &trimmed(&log, 5), &seen), vec![]);
        for bad in [trimmed_answer(5, 5), trimmed_answer(2, 6)] {
            let seen = [read(&log, 0..11, "trimmer"), trim(5, false), bad];
            let found = check(LOG, &h.ops, &trimmed(&log, 5), &seen);
            assert_eq!(kinds(&found), vec!["trim point"], "{found:?}");
        }
    }

    #[test]
    fn a_conditional_append_succeeds_only_where_it_expected_and_fails_truthfully() {
        let (mut h, log) = sample();
        h.ops[2].expected_lsn = Some(3);
        assert_eq!(check(LOG, &h.ops, &three(&log), &[]), vec![]);
        h.ops[2].expected_lsn = Some(4);
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert_eq!(kinds(&found), vec!["condition"]);
        // The append that was not appended (w1/s3), refused: naming another tail is right,
        // naming its expected LSN or one below an earlier acknowledgement is not.
        let (mut h, log) = sample();
        let refuse = |h: &mut Hist, expected: u64, tail: u64| {
            h.ops[4].expected_lsn = Some(expected);
            h.ops[4].outcome = Outcome::Refused {
                refusal: Refusal::ConditionFailed { tail },
                at: h.at(9),
            };
        };
        refuse(&mut h, 5, 6);
        assert_eq!(check(LOG, &h.ops, &three(&log), &[]), vec![]);
        for (expected, tail) in [(6, 6), (2, 5)] {
            refuse(&mut h, expected, tail);
            let found = check(LOG, &h.ops, &three(&log), &[]);
            assert_eq!(kinds(&found), vec!["condition"], "{found:?}");
        }
    }

    #[test]
    fn fencing_tokens_never_go_down_in_the_log() {
        let (mut h, log) = sample();
        for (op, token) in h.ops.iter_mut().zip([1, 2, 2, 3, 3, 3, 5]) {
            op.fencing_token = Some(token);
        }
        assert_eq!(check(LOG, &h.ops, &three(&log), &[]), vec![]);
        // w2/s3 at LSN 8 with token 2, after w2/s2 (indefinite, in the log) with 3.
        h.ops[5].fencing_token = Some(2);
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert_eq!(kinds(&found), vec!["fencing order"]);
        h.ops[5].fencing_token = Some(3);
        // The append that was not appended (w1/s3, token 3), refused with FENCED.
        let fenced = |h: &mut Hist, named: u64| {
            h.ops[4].outcome = Outcome::Refused {
                refusal: Refusal::Fenced { token: named },
                at: h.at(9),
            };
        };
        fenced(&mut h, 5);
        assert_eq!(check(LOG, &h.ops, &three(&log), &[]), vec![]);
        // Its own token; a token nobody sent; and (with w1/s3 sent after w1/s2 was
        // acknowledged with 5) a token below an acknowledged one.
        for named in [3, 4] {
            fenced(&mut h, named);
            let found = check(LOG, &h.ops, &three(&log), &[]);
            assert_eq!(kinds(&found), vec!["fenced"], "{named}: {found:?}");
        }
        h.ops[2].fencing_token = Some(7);
        h.ops[6].fencing_token = Some(7);
        fenced(&mut h, 5);
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert!(found
            .iter()
            .any(|a| matches!(a, Anomaly::Fenced { named: 5, .. })));
    }

    #[test]
    fn a_refused_append_in_the_log_is_seen() {
        let (mut h, log) = sample();
        h.ops[3].outcome = Outcome::Refused {
            refusal: Refusal::Fenced { token: 9 },
            at: h.at(7),
        };
        let found = check(LOG, &h.ops, &three(&log), &[]);
        assert!(kinds(&found).contains(&"refused and present"), "{found:?}");
        assert!(found.contains(&Anomaly::RefusedPresent {
            value: Value {
                writer: 2,
                seq: 2,
                index: 1
            },
            lsns: vec![7]
        }));
    }

    #[test]
    fn stamps_outside_the_window_of_their_append_are_seen() {
        let (h, log) = sample();
        let seen = [read(&log, 0..11, "reader")];
        // Record LSN n is stamped 1000 + n: inside 1000..1011, but not inside 1000..1005.
        assert_eq!(check_stamps(&h.ops, &seen, |_| 1000..1011), vec![]);
        let found = check_stamps(&h.ops, &seen, |_| 1000..1005);
        assert_eq!(found.len(), 6);
        assert!(matches!(
            found[0],
            Anomaly::Stamp {
                lsn: 5,
                stamp_us: 1005,
                ..
            }
        ));
    }
}
