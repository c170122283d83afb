//! The history model and its checks, shared by the real-process history test
//! (`tests/history`) and the simulator ([`crate::sim`]), with no processes and no I/O: what the writers did (one
//! [`Op`] per keyed append: its key, its records, when it was first sent, and whether it was
//! acknowledged at LSNs or is indefinite) and what every replica holds at the end (its
//! committed records, read in full), and [`check`], which compares the two and names every
//! anomaly.
//!
//! Every record's payload names its log, its writer, the append's `writer_seq` and its index
//! in the batch, padded to a length that follows from them ([`payload`]), so any record read
//! back says which value it is, and a byte that differs from what was sent is seen.
//!
//! What a correct chain guarantees and [`check`] verifies, per log:
//!
//! - every replica's records are dense from LSN 0 up to the committed tail it reports, and all
//!   replicas report the same tail once the chain settled;
//! - no LSN holds different bytes on two replicas;
//! - every record was sent (its writer, sequence number and index belong to an append that was
//!   invoked, and its bytes are those sent);
//! - every acknowledged record is on every replica, at the LSN that was acknowledged (a
//!   record on no replica, or missing where a replica holds another record, is lost; one a
//!   replica does not serve because its committed records end before it is reported apart);
//! - no record is at two LSNs (on one replica or across them): an append retried with its key
//!   is appended once, acknowledged or not;
//! - an indefinite append is all there, at consecutive LSNs, or not there at all;
//! - real-time order: an append acknowledged before another was first sent has lower LSNs.
//!
//! The unit tests at the end give [`check`] hand-made histories, each with one anomaly, so each
//! check is known to bite.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
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

/// The payload of `value` in log `log_id`: a header naming both, repeated to a length that
/// follows from the value: half the records up to a few hundred bytes, half 1 to 8 KiB.
/// (Larger writes keep a head's write slots busy longer, so more records wait for a slot,
/// already forwarded to the successor, when a kill lands: the window of issue 10's
/// restarted-head defect. With only small records the head kills rarely found it.)
pub fn payload(log_id: u64, value: Value) -> Vec<u8> {
    let unit = format!(
        "{log_id:x} w{} s{} r{};",
        value.writer, value.seq, value.index
    );
    let mix = value
        .writer
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(value.seq.wrapping_mul(31))
        .wrapping_add(u64::from(value.index));
    let len = if mix.is_multiple_of(2) {
        1024 + (mix % 7168) as usize
    } else {
        unit.len() + (mix % 200) as usize
    };
    unit.bytes().cycle().take(len).collect()
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

/// How an append ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Acknowledged: its records got `lsns`; the answer was seen at `at`.
    Acked { lsns: Range<u64>, at: T },
    /// No answer but "unknown" (lost connection, timeout, or a terminal error after an attempt
    /// whose outcome was unknown) before the run ended: appended once or not at all.
    Indefinite { last_error: String },
}

/// One keyed append (`writer`, `seq`) of `records` records, first sent at `invoked`.
#[derive(Clone, Debug)]
pub struct Op<T> {
    pub writer: u64,
    pub seq: u64,
    pub records: u32,
    pub invoked: T,
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
    /// The committed tail it reported.
    pub tail: u64,
    /// Its records as (LSN, payload), in the order read.
    pub records: Vec<(u64, Vec<u8>)>,
}

/// Something a correct chain never shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// A replica's records are not dense from 0: `found` where `expected` should be.
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
    /// `earlier` was acknowledged `gap_us` before `later` was first sent, yet `later` has an
    /// LSN at or below one of `earlier`'s.
    RealTime {
        earlier: (Value, Range<u64>),
        later: (Value, Range<u64>),
        gap_us: u64,
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
            Anomaly::RealTime { .. } => "real-time order",
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
        }
    }
}

/// What `bytes` is, for a report: the value it is, a damaged copy of one, or how long it is.
fn describe(log_id: u64, bytes: &[u8]) -> String {
    match claimed(log_id, bytes) {
        Some(v) if payload(log_id, v) == bytes => v.to_string(),
        Some(v) => format!("a damaged copy of {v} ({} bytes)", bytes.len()),
        None => format!("{} bytes naming no value of this log", bytes.len()),
    }
}

/// Checks the history of log `log_id`: the appends `ops` (every one that was invoked) against
/// what `replicas` hold at the end. Returns every anomaly found (none: the history is valid).
pub fn check<T: Time>(log_id: u64, ops: &[Op<T>], replicas: &[Replica]) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let by_key: HashMap<(u64, u64), &Op<T>> =
        ops.iter().map(|op| ((op.writer, op.seq), op)).collect();

    // Each replica: dense from 0 up to the tail it reports.
    for r in replicas {
        if let Some((i, &(lsn, _))) = r
            .records
            .iter()
            .enumerate()
            .find(|&(i, (lsn, _))| *lsn != i as u64)
        {
            anomalies.push(Anomaly::Gap {
                replica: r.name.clone(),
                expected: i as u64,
                found: lsn,
            });
        }
        let end = r.records.last().map_or(0, |(lsn, _)| lsn + 1);
        if end != r.tail {
            anomalies.push(Anomaly::ShortRead {
                replica: r.name.clone(),
                tail: r.tail,
                end,
            });
        }
    }
    if replicas.windows(2).any(|w| w[0].tail != w[1].tail) {
        anomalies.push(Anomaly::TailsDiffer {
            tails: replicas.iter().map(|r| (r.name.clone(), r.tail)).collect(),
        });
    }

    // Every LSN: the same bytes everywhere, bytes that were sent; where each value is.
    let mut at_lsn: BTreeMap<u64, Vec<(usize, &[u8])>> = BTreeMap::new();
    for (i, r) in replicas.iter().enumerate() {
        for (lsn, bytes) in &r.records {
            at_lsn.entry(*lsn).or_default().push((i, bytes));
        }
    }
    // value -> replica index -> its LSNs there.
    let mut places: HashMap<Value, BTreeMap<usize, Vec<u64>>> = HashMap::new();
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
            let sent = claimed(log_id, bytes).filter(|v| {
                by_key
                    .get(&(v.writer, v.seq))
                    .is_some_and(|op| v.index < op.records)
                    && payload(log_id, *v) == bytes
            });
            let here = holders.iter().filter(|(_, b)| *b == bytes).map(|(i, _)| *i);
            match sent {
                Some(v) => {
                    for i in here {
                        places.entry(v).or_default().entry(i).or_default().push(lsn);
                    }
                }
                None => anomalies.push(Anomaly::NeverSent {
                    lsn,
                    replicas: here.map(|i| replicas[i].name.clone()).collect(),
                    what: describe(log_id, bytes),
                }),
            }
        }
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

    // Indefinite appends: whole, at consecutive LSNs, or absent, on each replica.
    for op in ops {
        if matches!(op.outcome, Outcome::Acked { .. }) {
            continue;
        }
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

    anomalies.extend(real_time(ops, &places));
    anomalies
}

/// Real-time order: for every append B with a position (acknowledged LSNs, or the LSNs an
/// indefinite one was found at), the appends acknowledged before B was first sent all have
/// lower LSNs. One anomaly per B, naming the earlier append with the highest LSN.
fn real_time<T: Time>(
    ops: &[Op<T>],
    places: &HashMap<Value, BTreeMap<usize, Vec<u64>>>,
) -> Vec<Anomaly> {
    let mut acked: Vec<(T, &Op<T>, Range<u64>)> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Acked { lsns, at } => Some((*at, op, lsns.clone())),
            Outcome::Indefinite { .. } => None,
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
    let mut anomalies = Vec::new();
    for op in ops {
        let lsns = match &op.outcome {
            Outcome::Acked { lsns, .. } => lsns.clone(),
            Outcome::Indefinite { .. } => {
                let found: Vec<u64> = (0..op.records)
                    .filter_map(|i| places.get(&op.value(i)))
                    .flat_map(|p| p.values().flatten().copied())
                    .collect();
                match (found.iter().min(), found.iter().max()) {
                    (Some(&lo), Some(&hi)) => lo..hi + 1,
                    _ => continue,
                }
            }
        };
        let before = acked.partition_point(|(at, ..)| *at < op.invoked);
        let Some(&b) = before.checked_sub(1).map(|k| &highest[k]) else {
            continue;
        };
        let (at, earlier, earlier_lsns) = &acked[b];
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
            tail,
            records,
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
        assert_eq!(check(LOG, &h.ops, &three(&log)), vec![]);
        // The indefinite append that was appended may also be absent: its records were never
        // acknowledged (the log is then shorter and later appends sit lower).
        let mut h = Hist::new();
        h.acked(1, 1, 1).indefinite(1, 2, 2, false).acked(2, 1, 1);
        assert_eq!(check(LOG, &h.ops, &three(&h.log(&[]))), vec![]);
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
        );
        let found = check(LOG, &h.ops, &replicas);
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
        let found = check(LOG, &h.ops, &three(&log[..10]));
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
        let found = check(LOG, &h.ops, &three(&log));
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
        let found = check(LOG, &h.ops, &three(&log));
        assert_eq!(kinds(&found), vec!["at two LSNs"]);
        assert_eq!(found.len(), 2);
        assert!(matches!(&found[0], Anomaly::Duplicate { acked: false, at, .. } if at.len() == 2));
        // An acknowledged one, at its LSN on one replica and elsewhere on another.
        let (h, log) = sample();
        let mut replicas = three(&log);
        replicas[1].records[9].1 = log[0].1.clone();
        let found = check(LOG, &h.ops, &replicas);
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
        let found = check(LOG, &h.ops, &replicas);
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
        let found = check(LOG, &h.ops, &replicas);
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
        let found = check(LOG, &h.ops, &replicas);
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
            let found = check(LOG, &h.ops, &three(&log));
            assert_eq!(kinds(&found), vec!["never sent"], "{found:?}");
        }
    }

    #[test]
    fn an_indefinite_append_partly_present_is_torn() {
        let (h, mut log) = sample();
        // The history up to w1/s3, and a log without w2/s2's second record (LSN 7).
        log.truncate(7);
        let found = check(LOG, &h.ops[..5], &three(&log));
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
        let found = check(LOG, &h.ops, &three(&log));
        assert_eq!(kinds(&found), vec!["real-time order"], "{found:?}");
        // Every append sent after 1 ms and found in the log (all but w1/s1 and the absent
        // w1/s3) has lower LSNs.
        assert_eq!(found.len(), 4);
        // And an indefinite append found below an append acknowledged before it was sent.
        let (mut h, log) = sample();
        h.ops[3].invoked = h.at(100);
        let found = check(LOG, &h.ops, &three(&log));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(matches!(&found[0], Anomaly::RealTime { later, .. } if later.1 == (6..8)));
    }

    #[test]
    fn the_report_counts_each_kind_and_shows_samples() {
        let (h, log) = sample();
        let found = check(LOG, &h.ops, &three(&log[..8]));
        let text = report(&found, 1);
        assert!(text.contains("acknowledged and lost: 3"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
