//! The store as a chain replica, on the simulator and on io_uring: `append_replica` refuses
//! anything but the log's next records, as the head stamped them, with nothing written, and
//! the head's fencing tokens and idempotency keys survive a reopen so the replica can become
//! the head.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chainlog_storage::format::{record_bytes, SYSTEM_LOG};
use chainlog_storage::{
    AppendOptions, Batch, Clock, DurabilityMode, Error, FaultConfig, Io, ReadRecord, Record,
    ReplicaState, SimDisk, Store, StoreConfig, SystemClock, UringIo,
};

mod common;
use common::{assert_res, real_dir, stamped};

const LOG: u64 = 7;
const RECORD_BYTES_MAX: usize = 16 << 10;
const BATCH_BYTES_MAX: usize = 64 << 10;
const SEGMENT_BYTES: u64 = 1 << 20;
const WRITE_BUFFERS: usize = 5;
const LOGS_MAX: usize = 4;

fn config() -> StoreConfig {
    StoreConfig {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: BATCH_BYTES_MAX,
        record_bytes_max: RECORD_BYTES_MAX,
        writes_in_flight_max: 2,
        write_buffers: WRITE_BUFFERS,
        logs_max: LOGS_MAX,
        writers_max: 4,
        // No calibration writes, so a write number names a known write (the failure test).
        durability: DurabilityMode::Dsync,
        calibration_writes: 2,
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// Where stores live: shard directories reopened on the same files.
trait Backend {
    type Io: Io;
    fn io(&mut self) -> Self::Io;
    fn dir(&self, name: &str) -> PathBuf;
    fn clock(&self) -> Arc<dyn Clock>;

    fn open(&mut self, name: &str) -> Store<Self::Io> {
        let io = self.io();
        Store::open(io, &self.dir(name), config(), self.clock()).expect("open")
    }
}

struct Sim {
    disk: SimDisk,
    seed: u64,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            disk: SimDisk::new(),
            seed: 0,
        }
    }
}

impl Backend for Sim {
    type Io = chainlog_storage::SimIo;
    fn io(&mut self) -> Self::Io {
        self.seed += 1;
        // Latency, so that a `poll(false)` leaves the frames it submits in flight.
        self.disk.io(FaultConfig {
            seed: self.seed,
            latency_us_max: 500,
            ..FaultConfig::default()
        })
    }
    fn dir(&self, name: &str) -> PathBuf {
        Path::new("/sim").join(name)
    }
    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.disk.clock())
    }
}

/// Directories on the real file system.
struct Real {
    tmp: tempfile::TempDir,
}

impl Real {
    fn new() -> Real {
        Real {
            tmp: real_dir("replica-"),
        }
    }
}

impl Backend for Real {
    type Io = UringIo;
    fn io(&mut self) -> UringIo {
        UringIo::new(64).expect("io_uring is available")
    }
    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock::new())
    }
}

/// Each scenario as one test per backend.
macro_rules! on_both_backends {
    ($($name:ident,)*) => {
        mod sim {
            $(#[test] fn $name() { super::$name(&mut super::Sim::new()); })*
        }
        mod uring {
            $(#[test] fn $name() { super::$name(&mut super::Real::new()); })*
        }
    };
}

on_both_backends!(
    the_heads_state_survives_a_reopen_and_the_replica_can_lead,
    refused_replica_appends_write_nothing,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn payloads(n: usize, len: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..len + i)
                .map(|j| seed ^ (j as u8).wrapping_mul(13) ^ i as u8)
                .collect()
        })
        .collect()
}

fn sync<I: Io>(store: &mut Store<I>) -> Vec<u64> {
    let mut acks = Vec::new();
    store.sync_all(&mut acks).expect("sync_all");
    acks.into_iter().map(|a| a.token).collect()
}

fn read_all<I: Io>(store: &mut Store<I>, log: u64) -> Vec<ReadRecord> {
    store.read(log, 0, usize::MAX, usize::MAX).expect("read")
}

fn replicate<I: Io>(
    store: &mut Store<I>,
    log: u64,
    first_lsn: u64,
    payloads: &[Vec<u8>],
    state: &ReplicaState,
    token: u64,
) -> Result<Range<u64>, Error> {
    let bytes = stamped(log, first_lsn, 3, payloads);
    let count = payloads.len() as u32;
    store.append_replica(log, 3, first_lsn, &bytes, count, state, token)
}

fn keyed_and_fenced(writer: (u64, u64), token: u64) -> ReplicaState {
    ReplicaState {
        fencing_token: Some(token),
        writer: Some(writer),
    }
}

// ---------------------------------------------------------------------------------------------
// Replica appends
// ---------------------------------------------------------------------------------------------

/// Fencing tokens and idempotency keys that came with replicated batches are applied without
/// checks, survive a reopen, and then work as on a head: a lower token is fenced, a retry
/// gets its original LSNs.
fn the_heads_state_survives_a_reopen_and_the_replica_can_lead<B: Backend>(b: &mut B) {
    let mut replica = b.open("replica");
    let one = payloads(1, 8, 3);
    let two = payloads(2, 8, 4);
    assert_res!(
        replicate(&mut replica, LOG, 0, &two, &keyed_and_fenced((9, 1), 5), 1),
        Ok(0..2)
    );
    // A lower token is the head's business, not refused here (and changes nothing).
    assert_res!(
        replicate(&mut replica, LOG, 2, &one, &keyed_and_fenced((9, 4), 2), 2),
        Ok(2..3)
    );
    assert_eq!(replica.tail(LOG).expect("log").fencing_token, 5);
    // A key the table holds already (its writer was forgotten at the head) changes nothing.
    assert_res!(
        replicate(&mut replica, LOG, 3, &one, &keyed_and_fenced((9, 4), 6), 3),
        Ok(3..4)
    );
    assert_eq!(replica.tail(LOG).expect("log").fencing_token, 6);
    assert_eq!(sync(&mut replica), [1, 2, 3]);
    drop(replica);

    let mut leader = b.open("replica");
    let tail = leader.tail(LOG).expect("log");
    assert_eq!(
        (tail.next_lsn, tail.durable_lsn, tail.fencing_token),
        (4, 4, 6)
    );
    let x = [Record::new(b"x")];
    let fenced = AppendOptions {
        fencing_token: Some(5),
        ..AppendOptions::default()
    };
    assert_res!(
        leader.append_batch(LOG, 4, &fenced, Batch::Records(&x), 4),
        Err(Error::Fenced { token: 6 })
    );
    for (seq, lsns) in [(1, 0..2), (4, 2..3)] {
        let retry = AppendOptions {
            writer: Some((9, seq)),
            ..AppendOptions::default()
        };
        assert_res!(
            leader.append_batch(LOG, 4, &retry, Batch::Records(&x), 5),
            Ok(lsns),
            "a retry of a replicated batch"
        );
    }
    assert_eq!(
        leader.tail(LOG).expect("log").next_lsn,
        4,
        "retries append nothing"
    );
    assert_res!(
        leader.append_batch(LOG, 4, &AppendOptions::default(), Batch::Records(&x), 6),
        Ok(4..5)
    );
    assert_eq!(sync(&mut leader), [5, 5, 6]);
}

/// Every refusal of `append_replica`, each with nothing written: the log's positions do not
/// move, the good batches after them get the next LSNs, and a reopen finds only those.
fn refused_replica_appends_write_nothing<B: Backend>(b: &mut B) {
    let mut store = b.open("replica");
    let none = ReplicaState::default();
    let good = payloads(2, 30, 5);
    assert_res!(replicate(&mut store, LOG, 0, &good, &none, 1), Ok(0..2));
    let before = store.tail(LOG);
    let appended = store.metrics().records_appended;
    let three = payloads(3, 20, 6);
    let bytes = stamped(LOG, 2, 3, &three);
    let second = record_bytes(three[0].len());
    let mut wrong_log = bytes.clone();
    wrong_log[second + 8] ^= 1;
    let mut wrong_lsn = bytes.clone();
    wrong_lsn[second + 16] ^= 1;
    let mut wrong_epoch = bytes.clone();
    wrong_epoch[second + 24] ^= 1;
    let mut bad_crc = bytes.clone();
    bad_crc[second + 40] ^= 1;
    let stored = |sizes: &[usize]| -> Vec<u8> {
        let p: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![1u8; n]).collect();
        stamped(LOG, 2, 3, &p)
    };
    let max = RECORD_BYTES_MAX;
    let cases: Vec<(&str, u64, Vec<u8>, u32, String)> = vec![
        (
            "a gap",
            3,
            stamped(LOG, 3, 3, &three),
            3,
            Error::Gap { expected: 2 }.to_string(),
        ),
        (
            "a resend",
            1,
            stamped(LOG, 1, 3, &three),
            3,
            Error::Gap { expected: 2 }.to_string(),
        ),
        (
            "another log",
            2,
            wrong_log,
            3,
            "malformed batch: a replicated record names another log".into(),
        ),
        (
            "LSNs out of sequence",
            2,
            wrong_lsn,
            3,
            "malformed batch: replicated records do not follow first_lsn".into(),
        ),
        (
            "another epoch",
            2,
            wrong_epoch,
            3,
            "malformed batch: a replicated record is of another epoch".into(),
        ),
        (
            "a bad payload",
            2,
            bad_crc,
            3,
            Error::Checksum { index: 1 }.to_string(),
        ),
        (
            "a record too large",
            2,
            stored(&[3, max + 1]),
            2,
            Error::TooLarge { len: max + 1, max }.to_string(),
        ),
        (
            "a batch too large for a frame",
            2,
            stored(&[max; 4]),
            4,
            Error::TooLarge {
                len: 4 * record_bytes(max),
                max: BATCH_BYTES_MAX - 64,
            }
            .to_string(),
        ),
        (
            "a count above the records",
            2,
            bytes.clone(),
            4,
            "malformed batch: records overrun the batch".into(),
        ),
        (
            "bytes after the records",
            2,
            [bytes.clone(), vec![0; 8]].concat(),
            3,
            "malformed batch: the batch holds more bytes than its records".into(),
        ),
        (
            "no records",
            2,
            Vec::new(),
            0,
            Error::EmptyBatch.to_string(),
        ),
    ];
    for (what, first_lsn, bytes, count, expected) in cases {
        let got = store.append_replica(LOG, 3, first_lsn, &bytes, count, &none, 99);
        assert_eq!(got.map_err(|e| e.to_string()), Err(expected), "{what}");
        assert_eq!(store.tail(LOG), before, "{what}: nothing written");
    }
    let system = stamped(SYSTEM_LOG, 0, 3, &good);
    assert_res!(
        store.append_replica(SYSTEM_LOG, 3, 0, &system, 2, &none, 99),
        Err(Error::ReservedLog(SYSTEM_LOG))
    );
    for log in 1..LOGS_MAX as u64 {
        assert_res!(
            replicate(&mut store, 100 + log, 0, &good, &none, 2),
            Ok(0..2)
        );
    }
    assert_res!(
        replicate(&mut store, 200, 0, &good, &none, 99),
        Err(Error::TooManyLogs { max: LOGS_MAX })
    );
    assert_eq!(store.tail(200), None);
    assert_eq!(
        store.metrics().records_appended,
        appended + 2 * (LOGS_MAX as u64 - 1)
    );
    assert_res!(replicate(&mut store, LOG, 2, &three, &none, 3), Ok(2..5));
    assert!(
        !sync(&mut store).contains(&99),
        "no refusal is acknowledged"
    );
    drop(store);
    let mut store = b.open("replica");
    let got: Vec<Vec<u8>> = read_all(&mut store, LOG)
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, [good, three].concat());
    assert_eq!(store.tail(200), None);
}
