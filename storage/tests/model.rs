//! The store against a reference model: random operations on the simulated disk, each result
//! compared with what a few vectors say it must be.
//!
//! The model is, per log, the payloads appended (index = LSN) and the trim point. Appends must
//! get the next LSNs, trims move the trim point (or fail as documented), reads return exactly
//! the durable records asked for (within the record and byte limits; `read_stored` every
//! record appended), `tail` agrees, and a reopen after a clean `sync_all` finds everything as
//! it was. Durability timing belongs to the engine, so the model only bounds it: everything
//! acknowledged is durable, nothing beyond what was appended is, and `sync_all` makes
//! everything durable.
//!
//! Some appends come as replica appends (`append_replica`, at the log's next LSN or, refused
//! with `Gap`, elsewhere), and the records of some appends are pinned and released later: after
//! every operation each held pin must still read the bytes it read when it was taken.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use chainlog_storage::{
    Ack, AppendOptions, Batch, DurabilityMode, Error, FaultConfig, Pin, Record, ReplicaState,
    SimDisk, SimIo, Store, StoreConfig,
};
use proptest::prelude::*;

mod common;

const DIR: &str = "/sim/model";
/// The logs the operations pick from (by index).
const LOGS: [u64; 4] = [0, 1, 42, u64::MAX - 1];

fn config() -> StoreConfig {
    StoreConfig {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        record_bytes_max: 4 << 10,
        writes_in_flight_max: 2,
        write_buffers: 6,
        logs_max: 16,
        writers_max: 8,
        durability: DurabilityMode::Fdatasync,
        calibration_writes: 2,
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Append records of these payload lengths (contents derived from `fill`), as a replica
    /// at `skew` from the log's next LSN if `replica` (refused unless `skew` is 0), and pin
    /// them if `pin`.
    Append {
        log: usize,
        lens: Vec<usize>,
        fill: u8,
        replica: bool,
        skew: i64,
        pin: bool,
    },
    /// Release the oldest pin.
    Unpin,
    /// Trim at `percent` of the way from the trim point to the tail (over 100: beyond it).
    Trim {
        log: usize,
        percent: u64,
    },
    /// Read from the trim point plus `offset` (negative: below it), with `read_stored` if
    /// `stored`.
    Read {
        log: usize,
        offset: i64,
        max_records: usize,
        max_bytes: usize,
        stored: bool,
    },
    Poll {
        wait: bool,
    },
    SyncAll,
    /// `sync_all`, drop the store, and open it again on the same disk.
    Reopen {
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop_oneof![
        8 => 0usize..400,
        1 => Just(0usize),
        1 => 400usize..=4096,
    ];
    let skew = prop_oneof![8 => Just(0i64), 1 => -2i64..=2];
    let append = (
        (0..LOGS.len(), prop::collection::vec(len, 1..5), any::<u8>()),
        (any::<bool>(), skew, prop::bool::weighted(0.3)),
    );
    prop_oneof![
        10 => append.prop_map(|((log, lens, fill), (replica, skew, pin))| Op::Append {
            log,
            lens,
            fill,
            replica,
            skew,
            pin
        }),
        2 => Just(Op::Unpin),
        2 => (0..LOGS.len(), prop_oneof![9 => 0u64..=100, 1 => 101u64..200])
            .prop_map(|(log, percent)| Op::Trim { log, percent }),
        3 => (0..LOGS.len(), -3i64..60, 0usize..12, 0usize..6000, any::<bool>()).prop_map(
            |(log, offset, max_records, max_bytes, stored)| Op::Read {
                log,
                offset,
                max_records,
                max_bytes,
                stored,
            }
        ),
        3 => any::<bool>().prop_map(|wait| Op::Poll { wait }),
        1 => Just(Op::SyncAll),
        1 => any::<u64>().prop_map(|seed| Op::Reopen { seed }),
    ]
}

fn payload(len: usize, fill: u8, index: usize) -> Vec<u8> {
    (0..len)
        .map(|i| fill ^ (i as u8).wrapping_mul(7) ^ (index as u8))
        .collect()
}

#[derive(Debug, Default)]
struct LogModel {
    payloads: Vec<Vec<u8>>,
    trim_point: u64,
    /// Every LSN below is acknowledged.
    acked: u64,
}

/// What each outstanding token stands for.
#[derive(Debug)]
enum Pending {
    Append(u64, Range<u64>),
    Trim(u64, u64),
}

#[derive(Debug, Default)]
struct Model {
    logs: BTreeMap<u64, LogModel>,
    pending: BTreeMap<u64, Pending>,
    next_token: u64,
}

impl Model {
    fn on_acks(&mut self, acks: Vec<Ack>) {
        for ack in acks {
            let pending = self
                .pending
                .remove(&ack.token)
                .unwrap_or_else(|| panic!("ack of an unknown or already acked token: {ack:?}"));
            // Acks come in the order of the calls: nothing older is still outstanding.
            assert!(
                self.pending.keys().all(|&t| t > ack.token),
                "ack {ack:?} overtook an older operation"
            );
            match pending {
                Pending::Append(log, lsns) => {
                    assert_eq!((ack.log_id, &ack.lsns), (log, &lsns));
                    let m = self.logs.get_mut(&log).expect("log");
                    assert_eq!(m.acked, lsns.start, "log {log}: acks in LSN order");
                    m.acked = lsns.end;
                }
                Pending::Trim(log, before) => {
                    assert_eq!((ack.log_id, ack.lsns), (log, before..before));
                }
            }
        }
    }
}

fn open(disk: &SimDisk, seed: u64) -> Store<SimIo> {
    let io = disk.io(FaultConfig {
        seed,
        latency_us_max: 1 + seed % 500,
        ..FaultConfig::default()
    });
    Store::open(io, Path::new(DIR), config(), Arc::new(disk.clock())).expect("open")
}

/// Compares every log's tail with the model.
fn check_tails(store: &Store<SimIo>, model: &Model, synced: bool) {
    for log in LOGS {
        match (store.tail(log), model.logs.get(&log)) {
            (None, None) => {}
            (Some(t), Some(m)) => {
                assert_eq!(t.next_lsn, m.payloads.len() as u64, "log {log}: next LSN");
                assert_eq!(t.trim_point, m.trim_point, "log {log}: trim point");
                assert!(
                    m.acked <= t.durable_lsn && t.durable_lsn <= t.next_lsn,
                    "log {log}: durable {} outside acked {} ..= next {}",
                    t.durable_lsn,
                    m.acked,
                    t.next_lsn
                );
                if synced {
                    assert_eq!(t.durable_lsn, t.next_lsn, "log {log}: synced");
                }
            }
            (t, m) => panic!(
                "log {log}: store has {t:?}, model has {:?}",
                m.map(|m| (m.payloads.len(), m.trim_point, m.acked))
            ),
        }
    }
    let mut ids: Vec<u64> = store.log_ids().collect();
    ids.sort_unstable();
    assert_eq!(ids, model.logs.keys().copied().collect::<Vec<_>>());
}

/// The pins held, oldest first, each with the bytes it read when it was taken.
#[derive(Debug, Default)]
struct Pins(Vec<(Pin, Vec<u8>)>);

impl Pins {
    /// Every pin still reads its bytes; the store counts no more pinned frames than pins.
    fn check(&self, store: &Store<SimIo>) {
        for (i, (pin, bytes)) in self.0.iter().enumerate() {
            assert_eq!(store.pinned(pin), bytes, "pin {i} changed");
        }
        let frames = store.metrics().frames_pinned;
        let held = self.0.len() as u64;
        assert!(
            frames <= held && (frames == 0) == (held == 0),
            "{frames} frames, {held} pins"
        );
    }

    /// Releases the oldest pin; false if none is held.
    fn release_one(&mut self, store: &mut Store<SimIo>) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let (pin, bytes) = self.0.remove(0);
        assert_eq!(store.pinned(&pin), bytes);
        store.unpin(pin);
        true
    }

    fn release_all(&mut self, store: &mut Store<SimIo>) {
        while self.release_one(store) {}
        assert_eq!(store.metrics().frames_pinned, 0);
    }
}

/// After `Overloaded`: a buffer comes back when a pin is released or a write completes.
fn relieve(store: &mut Store<SimIo>, model: &mut Model, pins: &mut Pins) {
    if !pins.release_one(store) {
        let mut acks = Vec::new();
        store.poll(true, &mut acks).expect("poll");
        model.on_acks(acks);
    }
}

fn sync_all(store: &mut Store<SimIo>, model: &mut Model, pins: &mut Pins) {
    let mut acks = Vec::new();
    while let Err(e) = store.sync_all(&mut acks) {
        assert!(matches!(e, Error::Overloaded), "sync_all: {e}");
        assert!(
            pins.release_one(store),
            "only pins keep sync_all from finishing"
        );
    }
    model.on_acks(acks);
    assert!(model.pending.is_empty(), "sync_all acks everything");
    check_tails(store, model, true);
}

fn run(ops: &[Op], seed: u64) {
    let disk = SimDisk::new();
    let mut store = open(&disk, seed);
    let mut model = Model::default();
    let mut pins = Pins::default();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Append {
                log,
                lens,
                fill,
                replica,
                skew,
                pin,
            } => {
                let log = LOGS[*log];
                let payloads: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| payload(len, *fill, step + i))
                    .collect();
                let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
                let next = model.logs.get(&log).map_or(0, |m| m.payloads.len() as u64);
                let epoch = step as u64;
                let token = model.next_token;
                let first_lsn = next.saturating_add_signed(*skew);
                let gap = *replica && first_lsn != next;
                let got = if *replica {
                    let stamped = common::stamped(log, first_lsn, epoch, &payloads);
                    let count = payloads.len() as u32;
                    let state = ReplicaState::default();
                    loop {
                        match store.append_replica(
                            log, epoch, first_lsn, &stamped, count, &state, *pin, token,
                        ) {
                            Err(Error::Overloaded) => relieve(&mut store, &mut model, &mut pins),
                            other => break other,
                        }
                    }
                } else {
                    let options = AppendOptions::default();
                    loop {
                        let batch = Batch::Records(&records);
                        match store.append_batch(log, epoch, &options, batch, *pin, token) {
                            Err(Error::Overloaded) => relieve(&mut store, &mut model, &mut pins),
                            other => break other,
                        }
                    }
                };
                if gap {
                    assert!(
                        matches!(got, Err(Error::Gap { expected }) if expected == next),
                        "step {step}: a replica append at {first_lsn}, next LSN {next}: {got:?}"
                    );
                } else {
                    let (lsns, pinned) = got.unwrap_or_else(|e| panic!("step {step}: append: {e}"));
                    assert_eq!(lsns, next..next + records.len() as u64, "step {step}");
                    assert_eq!(pinned.is_some(), *pin, "step {step}: a pin when asked");
                    if let Some(pin) = pinned {
                        let bytes = store.pinned(&pin).to_vec();
                        let stamped: Vec<_> =
                            chainlog_storage::format::Records::new(&bytes, lens.len() as u32)
                                .map(|r| {
                                    r.map(|r| (r.header.log_id, r.header.lsn, r.payload.to_vec()))
                                })
                                .collect::<Result<_, _>>()
                                .expect("pinned records are well formed");
                        let want: Vec<_> = (next..)
                            .zip(&payloads)
                            .map(|(lsn, p)| (log, lsn, p.clone()))
                            .collect();
                        assert_eq!(stamped, want, "step {step}: the pin holds the records");
                        pins.0.push((pin, bytes));
                    }
                    let m = model.logs.entry(log).or_default();
                    m.payloads.extend(payloads);
                    model.next_token += 1;
                    model.pending.insert(token, Pending::Append(log, lsns));
                }
            }
            Op::Unpin => {
                pins.release_one(&mut store);
            }
            Op::Trim { log, percent } => {
                let log = LOGS[*log];
                let token = model.next_token;
                let Some(m) = model.logs.get_mut(&log) else {
                    let got = store.trim(log, 0, token);
                    assert!(
                        matches!(got, Err(Error::UnknownLog(l)) if l == log),
                        "{got:?}"
                    );
                    continue;
                };
                let next = m.payloads.len() as u64;
                let before = m.trim_point
                    + (next - m.trim_point) * percent / 100
                    + u64::from(*percent > 100);
                let got = loop {
                    match store.trim(log, before, token) {
                        Err(Error::Overloaded) => relieve(&mut store, &mut model, &mut pins),
                        other => break other,
                    }
                };
                let m = model.logs.get_mut(&log).expect("log");
                if before > next {
                    assert!(
                        matches!(got, Err(Error::TrimBeyondTail { before: b, tail }) if b == before && tail == next),
                        "step {step}: trim beyond the tail: {got:?}"
                    );
                } else {
                    got.unwrap_or_else(|e| panic!("step {step}: trim: {e}"));
                    m.trim_point = m.trim_point.max(before);
                    model.next_token += 1;
                    model.pending.insert(token, Pending::Trim(log, before));
                }
            }
            Op::Read {
                log,
                offset,
                max_records,
                max_bytes,
                stored,
            } => {
                let log = LOGS[*log];
                let Some(m) = model.logs.get(&log) else {
                    let got = store.read(log, 0, 10, 10_000);
                    assert!(
                        matches!(got, Err(Error::UnknownLog(l)) if l == log),
                        "{got:?}"
                    );
                    continue;
                };
                let tail = store.tail(log).expect("log");
                let Some(from) = m.trim_point.checked_add_signed(*offset) else {
                    continue;
                };
                let got = if *stored {
                    store.read_stored(log, from, *max_records, *max_bytes)
                } else {
                    store.read(log, from, *max_records, *max_bytes)
                };
                if from < m.trim_point {
                    assert!(
                        matches!(got, Err(Error::Trimmed { trim_point }) if trim_point == m.trim_point),
                        "step {step}: read below the trim point: {got:?}"
                    );
                    continue;
                }
                let got = got.unwrap_or_else(|e| {
                    panic!(
                        "step {step}: read(log {log}, from {from}, {max_records}, {max_bytes}) with {tail:?}: {e}"
                    )
                });
                let mut want = Vec::new();
                let mut bytes = 0;
                let end = if *stored {
                    tail.next_lsn
                } else {
                    tail.durable_lsn
                };
                for lsn in from..end {
                    let p = &m.payloads[lsn as usize];
                    if want.len() >= *max_records
                        || (!want.is_empty() && bytes + p.len() > *max_bytes)
                    {
                        break;
                    }
                    bytes += p.len();
                    want.push((lsn, p.clone()));
                }
                let got: Vec<(u64, Vec<u8>)> =
                    got.into_iter().map(|r| (r.lsn, r.payload)).collect();
                assert_eq!(
                    got, want,
                    "step {step}: read(log {log}, from {from}, {max_records}, {max_bytes}) with {tail:?}"
                );
            }
            Op::Poll { wait } => {
                let mut acks = Vec::new();
                store.poll(*wait, &mut acks).expect("poll");
                model.on_acks(acks);
            }
            Op::SyncAll => sync_all(&mut store, &mut model, &mut pins),
            Op::Reopen { seed } => {
                sync_all(&mut store, &mut model, &mut pins);
                pins.release_all(&mut store);
                drop(store);
                store = open(&disk, *seed);
                check_tails(&store, &model, true);
            }
        }
        check_tails(&store, &model, false);
        pins.check(&store);
    }
    // Finally everything reads back, before and after a reopen.
    sync_all(&mut store, &mut model, &mut pins);
    pins.release_all(&mut store);
    for pass in 0..2 {
        for (&log, m) in &model.logs {
            let mut next = m.trim_point;
            while next < m.payloads.len() as u64 {
                let got = store
                    .read(log, next, 5, 3000)
                    .unwrap_or_else(|e| panic!("pass {pass}: read(log {log}, from {next}): {e}"));
                assert!(!got.is_empty(), "pass {pass}: log {log} from {next}");
                for r in got {
                    assert_eq!(r.lsn, next);
                    assert_eq!(
                        r.payload, m.payloads[next as usize],
                        "log {log} record {next}"
                    );
                    next += 1;
                }
            }
        }
        drop(store);
        store = open(&disk, seed ^ 1);
        check_tails(&store, &model, true);
    }
}

/// 64 cases per run; `PROPTEST_CASES=<n>` for a longer soak.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn store_matches_the_model(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..300)) {
        run(&ops, seed);
    }
}

/// A read of a record whose frame was written after an earlier read from disk of the same
/// segment, and has left the tail cache since. (Found by the property test: the read window
/// kept the blocks it had read ahead, zeros then, and the read reported corruption.)
#[test]
fn read_of_a_frame_written_after_an_earlier_read() {
    let disk = SimDisk::new();
    let config = StoreConfig {
        segment_bytes: 1 << 20,
        write_buffers: 4,
        writes_in_flight_max: 1,
        ..config()
    };
    let io = disk.io(FaultConfig::default());
    let mut store =
        Store::open(io, Path::new(DIR), config.clone(), Arc::new(disk.clock())).expect("open");
    let mut acks = Vec::new();
    let p = [7u8; 100];
    let mut token = 0;
    let mut append = |store: &mut Store<SimIo>, log: u64| {
        token += 1;
        store
            .append(log, 1, &[Record::new(&p)], token)
            .expect("append");
        store.sync_all(&mut acks).expect("sync");
    };
    // Each append is its own frame; frames of another log push log 1's out of the tail cache.
    append(&mut store, 1);
    for _ in 0..2 * config.write_buffers {
        append(&mut store, 2);
    }
    assert_eq!(store.read(1, 0, 10, 1000).expect("read from disk").len(), 1);
    append(&mut store, 1);
    for _ in 0..2 * config.write_buffers {
        append(&mut store, 2);
    }
    assert_eq!(store.segment_count(), 1, "all in one segment");
    let got = store
        .read(1, 1, 10, 1000)
        .expect("the second record reads back");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, p);
}
