//! The store as a chain replica, on the simulator and on io_uring: `append_replica` stores
//! the head's records as they are (and refuses anything else with nothing written), the head's
//! fencing tokens and idempotency keys survive a reopen so the replica can become the head,
//! pinned records stay byte-identical in their frame buffer through its write, completion,
//! tail-cache life and a store failure, a pinned buffer is never reused (every buffer pinned is
//! `Overloaded`), `read_stored` returns the records not yet durable, and nothing else, and
//! `read_stored_runs` cuts them where the head's keys and fencing raises belong, from memory
//! and from disk alike.

use std::ops::Range;

use chainlog_storage::format::{record_bytes, RecordHeader, Records, SYSTEM_LOG};
use chainlog_storage::{
    AppendOptions, Batch, DurabilityMode, Error, FaultPlan, FaultyIo, Io, Pin, ReadRecord, Record,
    ReplicaState, Store, StoreConfig, StoredRun,
};

mod common;
use common::{assert_res, on_both_backends, stamped, writes_at_open, Backend, Real, Sim};

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

/// Opens the store `name` of a backend with this suite's configuration.
trait Open: Backend {
    fn open(&mut self, name: &str) -> Store<Self::Io> {
        self.open_with(name, config())
    }
}

impl<B: Backend> Open for B {}

on_both_backends!(
    a_replica_stores_the_heads_records_as_they_are,
    the_heads_state_survives_a_reopen_and_the_replica_can_lead,
    refused_replica_appends_write_nothing,
    pinned_bytes_stay_identical_through_the_frames_life,
    a_pinned_buffer_is_never_reused,
    pins_of_a_failed_store_stay_valid_until_unpinned,
    read_stored_sees_every_stored_record_and_nothing_else,
    stored_runs_carry_each_batchs_key_and_raise,
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

/// The records of stored-layout bytes.
fn parse(bytes: &[u8], count: u32) -> Vec<(RecordHeader, Vec<u8>)> {
    Records::new(bytes, count)
        .map(|r| {
            let r = r.expect("well formed");
            (r.header, r.payload.to_vec())
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
    store
        .append_replica(log, 3, first_lsn, &bytes, count, state, false, token)
        .map(|(lsns, _)| lsns)
}

/// Appends `records` to `log` and pins them.
fn append_pinned<I: Io>(
    store: &mut Store<I>,
    log: u64,
    options: &AppendOptions,
    records: &[Record<'_>],
    token: u64,
) -> Result<(Range<u64>, Pin), Error> {
    let batch = Batch::Records(records);
    let (lsns, pin) = store.append_batch(log, 1, options, batch, true, token)?;
    Ok((lsns, pin.expect("records were stored")))
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

/// The head's pinned bytes, replicated: the replica stores and pins the very same bytes, and
/// reads back the head's LSNs, epochs and timestamps.
fn a_replica_stores_the_heads_records_as_they_are<B: Backend>(b: &mut B) {
    let mut head = b.open("head");
    let mut replica = b.open("replica");
    let batches = [payloads(3, 10, 1), payloads(2, 5000, 2)];
    let options = [
        AppendOptions {
            fencing_token: Some(5),
            writer: Some((9, 1)),
            ..AppendOptions::default()
        },
        AppendOptions::default(),
    ];
    let mut next = 0;
    for (i, (batch, options)) in batches.iter().zip(&options).enumerate() {
        let records: Vec<Record<'_>> = batch.iter().map(|p| Record::new(p)).collect();
        let token = i as u64;
        let (lsns, pin) = head
            .append_batch(LOG, 3, options, Batch::Records(&records), true, token)
            .expect("head append");
        assert_eq!(lsns, next..next + batch.len() as u64);
        let pin = pin.expect("records were stored");
        let bytes = head.pinned(&pin).to_vec();
        let state = ReplicaState {
            fencing_token: options.fencing_token,
            writer: options.writer,
        };
        let count = batch.len() as u32;
        let (stored, copy) = replica
            .append_replica(LOG, 3, next, &bytes, count, &state, true, 10 + token)
            .expect("replica append");
        assert_eq!(stored, lsns);
        let copy = copy.expect("records were stored");
        assert_eq!(replica.pinned(&copy), bytes, "stored as they came");
        let parsed = parse(&bytes, count);
        for (k, (header, payload)) in parsed.iter().enumerate() {
            assert_eq!(
                (header.log_id, header.lsn, header.epoch),
                (LOG, next + k as u64, 3)
            );
            assert_eq!(payload, &batch[k]);
        }
        head.unpin(pin);
        replica.unpin(copy);
        next = lsns.end;
    }
    assert_eq!(sync(&mut head), [0, 1]);
    assert_eq!(sync(&mut replica), [10, 11], "acked like appends");
    assert_eq!(read_all(&mut replica, LOG), read_all(&mut head, LOG));
    assert_eq!(
        replica.tail(LOG),
        head.tail(LOG),
        "same positions and token"
    );
    assert_eq!(replica.metrics().frames_pinned, 0);
}

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
        leader
            .append_batch(LOG, 4, &fenced, Batch::Records(&x), false, 4)
            .map(|(lsns, _)| lsns),
        Err(Error::Fenced { token: 6 })
    );
    for (seq, lsns) in [(1, 0..2), (4, 2..3)] {
        let retry = AppendOptions {
            writer: Some((9, seq)),
            ..AppendOptions::default()
        };
        assert_res!(
            leader
                .append_batch(LOG, 4, &retry, Batch::Records(&x), false, 5)
                .map(|(lsns, _)| lsns),
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
        leader
            .append_batch(
                LOG,
                4,
                &AppendOptions::default(),
                Batch::Records(&x),
                false,
                6
            )
            .map(|(lsns, _)| lsns),
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
        let got = store.append_replica(LOG, 3, first_lsn, &bytes, count, &none, true, 99);
        assert_eq!(
            got.map(|(lsns, _)| lsns).map_err(|e| e.to_string()),
            Err(expected),
            "{what}"
        );
        assert_eq!(store.tail(LOG), before, "{what}: nothing written");
        assert_eq!(store.metrics().frames_pinned, 0, "{what}: nothing pinned");
    }
    let system = stamped(SYSTEM_LOG, 0, 3, &good);
    assert_res!(
        store
            .append_replica(SYSTEM_LOG, 3, 0, &system, 2, &none, false, 99)
            .map(|(lsns, _)| lsns),
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

// ---------------------------------------------------------------------------------------------
// Pins
// ---------------------------------------------------------------------------------------------

/// A pin taken right after an append: the bytes and their address stay the same while the
/// frame is built further, written, completed, cached, and while every other buffer is reused
/// many times over (segments roll over meanwhile); the records read back from disk are the
/// pinned ones.
fn pinned_bytes_stay_identical_through_the_frames_life<B: Backend>(b: &mut B) {
    let mut store = b.open("head");
    let batch = payloads(3, 700, 7);
    let records: Vec<Record<'_>> = batch.iter().map(|p| Record::new(p)).collect();
    let options = AppendOptions {
        fencing_token: Some(2),
        writer: Some((1, 1)),
        ..AppendOptions::default()
    };
    let (_, pin) = append_pinned(&mut store, LOG, &options, &records, 1).expect("append");
    let bytes = store.pinned(&pin).to_vec();
    let at = store.pinned(&pin).as_ptr();
    assert_eq!(pin.len(), bytes.len());
    assert_eq!(
        bytes.len(),
        batch.iter().map(|p| record_bytes(p.len())).sum()
    );
    let parsed = parse(&bytes, 3);
    for (i, (header, payload)) in parsed.iter().enumerate() {
        assert_eq!(
            (header.log_id, header.lsn, header.epoch),
            (LOG, i as u64, 1)
        );
        assert_eq!(payload, &batch[i]);
    }
    assert_eq!(store.metrics().frames_pinned, 1);
    let check = |store: &Store<B::Io>, when: &str| {
        assert_eq!(store.pinned(&pin).as_ptr(), at, "{when}: the same memory");
        assert_eq!(store.pinned(&pin), bytes, "{when}: the same bytes");
    };
    // More records in the same frame, after the pinned ones.
    store
        .append(LOG, 1, &[Record::new(&[9; 300])], 2)
        .expect("append");
    check(&store, "building");
    store.poll(false, &mut Vec::new()).expect("poll");
    check(&store, "submitted");
    sync(&mut store);
    check(&store, "durable");
    let filler = [0x5a_u8; 12 << 10];
    for token in 0..(12 * WRITE_BUFFERS) as u64 {
        // Each frame of another log takes a buffer of its own and goes through the cache.
        let four = [Record::new(&filler); 4];
        store.append(LOG + 1, 1, &four, 10 + token).expect("append");
        store.poll(false, &mut Vec::new()).expect("poll");
        check(&store, "other frames written");
        sync(&mut store);
        check(&store, "other frames durable");
    }
    assert!(
        store.metrics().segments_created >= 4,
        "segments rolled over meanwhile"
    );
    let read: Vec<Vec<u8>> = store
        .read(LOG, 0, 3, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(read, batch);
    store.unpin(pin);
    assert_eq!(store.metrics().frames_pinned, 0);
}

/// Each frame pinned stays out of use: with every buffer but the one kept for a rollover's
/// snapshot pinned, appends (and replica appends) get `Overloaded`, reads still work, and
/// after an unpin appends succeed again.
fn a_pinned_buffer_is_never_reused<B: Backend>(b: &mut B) {
    let mut store = b.open("head");
    // Over half a frame: every append needs a frame of its own.
    let big = vec![3u8; RECORD_BYTES_MAX];
    let two = [Record::new(&big), Record::new(&big)];
    let mut pins = Vec::new();
    let mut lsn = 0;
    let overloaded = loop {
        match append_pinned(&mut store, LOG, &AppendOptions::default(), &two, lsn) {
            Ok((lsns, pin)) => {
                assert_eq!(lsns, lsn..lsn + 2);
                lsn += 2;
                let bytes = store.pinned(&pin).to_vec();
                pins.push((pin, bytes));
                sync(&mut store);
            }
            Err(e) => break e,
        }
        assert!(pins.len() < WRITE_BUFFERS, "a pinned buffer was reused");
    };
    assert!(matches!(overloaded, Error::Overloaded), "{overloaded}");
    assert_eq!(pins.len(), WRITE_BUFFERS - 1, "all but one buffer pinned");
    assert_eq!(store.metrics().frames_pinned, pins.len() as u64);
    let stamped_two = stamped(LOG, lsn, 3, &[big.clone(), big.clone()]);
    assert_res!(
        store
            .append_replica(
                LOG,
                3,
                lsn,
                &stamped_two,
                2,
                &ReplicaState::default(),
                false,
                99
            )
            .map(|(lsns, _)| lsns),
        Err(Error::Overloaded)
    );
    assert_eq!(
        store
            .read(LOG, 0, usize::MAX, usize::MAX)
            .expect("read")
            .len() as u64,
        lsn
    );
    for (pin, bytes) in &pins {
        assert_eq!(store.pinned(pin), bytes);
    }
    let (pin, _) = pins.remove(0);
    store.unpin(pin);
    assert_res!(store.append(LOG, 1, &two, lsn), Ok(lsn..lsn + 2));
    assert_res!(
        store
            .append_replica(
                LOG,
                3,
                lsn + 2,
                &stamped(LOG, lsn + 2, 3, &[vec![1]]),
                1,
                &ReplicaState::default(),
                false,
                100
            )
            .map(|(lsns, _)| lsns),
        Ok(lsn + 2..lsn + 3),
        "room in the same frame"
    );
    sync(&mut store);
    for (pin, bytes) in pins {
        assert_eq!(store.pinned(&pin), bytes);
        store.unpin(pin);
    }
    assert_eq!(store.metrics().frames_pinned, 0);
}

/// A frame write fails: the store stops (`Fatal`), and its pins, one of the failed frame and
/// one of a frame never written, still read the same bytes and unpin.
fn pins_of_a_failed_store_stay_valid_until_unpinned<B: Backend>(b: &mut B) {
    // The first segment's snapshot is the next write, then the first data frame fails.
    let plan = FaultPlan {
        fail_write_number: Some(writes_at_open(SEGMENT_BYTES) + 2),
        ..FaultPlan::default()
    };
    let dir = b.dir("failing");
    let io = FaultyIo::new(b.io(), plan);
    let mut store = Store::open(io, &dir, config(), b.clock()).expect("open");
    let one = payloads(2, 100, 8);
    let records: Vec<Record<'_>> = one.iter().map(|p| Record::new(p)).collect();
    let none = AppendOptions::default();
    let (_, failing) = append_pinned(&mut store, LOG, &none, &records, 1).expect("append");
    let mut pins = vec![(store.pinned(&failing).to_vec(), failing)];
    // The failing write is submitted here; on a real ring it may also complete (and fail the
    // store) before this poll returns, else a second frame is filled and pinned meanwhile.
    if store.poll(false, &mut Vec::new()).is_ok() {
        let (_, unwritten) = append_pinned(&mut store, LOG, &none, &records, 2).expect("append");
        pins.push((store.pinned(&unwritten).to_vec(), unwritten));
    }
    let mut acks = Vec::new();
    let failed = store.sync_all(&mut acks);
    assert!(matches!(failed, Err(Error::Fatal(_))), "{failed:?}");
    assert!(acks.is_empty());
    assert!(matches!(
        append_pinned(&mut store, LOG, &none, &records, 3),
        Err(Error::Fatal(_))
    ));
    for (bytes, pin) in pins {
        assert_eq!(store.pinned(&pin), bytes);
        store.unpin(pin);
    }
    assert_eq!(store.metrics().frames_pinned, 0);
}

// ---------------------------------------------------------------------------------------------
// Reads of stored records
// ---------------------------------------------------------------------------------------------

/// Records durable (in the tail cache), in flight, sealed and being filled: `read` returns the
/// durable ones, `read_stored` all of them, byte for byte, within its limits, and nothing of
/// another log or beyond the tail.
fn read_stored_sees_every_stored_record_and_nothing_else<B: Backend>(b: &mut B) {
    let mut store = b.open("head");
    let small = payloads(2, 10, 9);
    let big = vec![4u8; RECORD_BYTES_MAX];
    let mut appended: Vec<Vec<u8>> = Vec::new();
    let mut token = 0;
    let mut append = |store: &mut Store<B::Io>, log: u64, batch: &[Vec<u8>]| {
        token += 1;
        let records: Vec<Record<'_>> = batch.iter().map(|p| Record::new(p)).collect();
        store.append(log, 1, &records, token).expect("append");
        if log == LOG {
            appended.extend(batch.iter().cloned());
        }
    };
    append(&mut store, LOG, &small);
    sync(&mut store);
    let durable = store.tail(LOG).expect("log").durable_lsn;
    assert_eq!(durable, 2);
    append(&mut store, LOG, &small);
    append(&mut store, LOG + 1, &small);
    store.poll(false, &mut Vec::new()).expect("poll"); // submitted
    append(&mut store, LOG, &[big.clone(), big.clone()]); // a frame of its own, sealed below
    append(&mut store, LOG, &[big.clone(), big.clone()]); // seals the previous frame
    append(&mut store, LOG, &small);
    let tail = store.tail(LOG).expect("log");
    assert_eq!(tail.next_lsn, appended.len() as u64);
    assert!(tail.durable_lsn < tail.next_lsn, "{tail:?}");
    let durable_now = tail.durable_lsn;
    let payloads_of = |records: Vec<ReadRecord>| -> Vec<(u64, Vec<u8>)> {
        records.into_iter().map(|r| (r.lsn, r.payload)).collect()
    };
    let want = |from: u64, to: u64| -> Vec<(u64, Vec<u8>)> {
        (from..to)
            .map(|i| (i, appended[i as usize].clone()))
            .collect()
    };
    let all = store
        .read_stored(LOG, 0, usize::MAX, usize::MAX)
        .expect("read_stored");
    assert!(all.iter().all(|r| r.epoch == 1));
    assert_eq!(payloads_of(all), want(0, tail.next_lsn));
    let durable_only = store.read(LOG, 0, usize::MAX, usize::MAX).expect("read");
    assert_eq!(payloads_of(durable_only), want(0, durable_now));
    for (from, max_records, max_bytes, to) in [
        (1, 2, usize::MAX, 3),                      // across the durable end
        (3, 3, usize::MAX, 6),                      // from not yet durable records on
        (4, usize::MAX, RECORD_BYTES_MAX + 100, 5), // the byte limit
        (5, usize::MAX, 1, 6),                      // at least one record
        (7, usize::MAX, usize::MAX, 10),
        (10, usize::MAX, usize::MAX, 10), // at the tail: nothing
        (2, 0, usize::MAX, 2),
    ] {
        let got = store
            .read_stored(LOG, from, max_records, max_bytes)
            .expect("read_stored");
        assert_eq!(
            payloads_of(got),
            want(from, to),
            "from {from}, {max_records}, {max_bytes}"
        );
    }
    let other = store
        .read_stored(LOG + 1, 0, usize::MAX, usize::MAX)
        .expect("read_stored");
    assert_eq!(
        payloads_of(other),
        [(0, small[0].clone()), (1, small[1].clone())]
    );
    assert!(matches!(
        store.read_stored(99, 0, 1, 1),
        Err(Error::UnknownLog(99))
    ));
    store.trim(LOG, 1, 100).expect("trim");
    assert!(matches!(
        store.read_stored(LOG, 0, 1, 1),
        Err(Error::Trimmed { trim_point: 1 })
    ));
    sync(&mut store);
    let stored = store
        .read_stored(LOG, 1, usize::MAX, usize::MAX)
        .expect("read_stored");
    let durable = store.read(LOG, 1, usize::MAX, usize::MAX).expect("read");
    assert_eq!(
        stored, durable,
        "once everything is durable, the same as read"
    );
}

/// Each run's LSNs and state, for comparing.
fn shapes(runs: &[StoredRun]) -> Vec<(std::ops::Range<u64>, ReplicaState)> {
    runs.iter()
        .map(|r| (r.first_lsn()..r.end_lsn(), r.state))
        .collect()
}

fn stored_runs_carry_each_batchs_key_and_raise<B: Backend>(b: &mut B) {
    let keyed = |writer_id, seq, fence: Option<u64>| ReplicaState {
        fencing_token: fence,
        writer: Some((writer_id, seq)),
    };
    let fenced = |token| ReplicaState {
        fencing_token: Some(token),
        writer: None,
    };
    let plain = ReplicaState::default();
    // (records, key, fencing token) of each batch, and the runs they must come back as.
    type Spec = (usize, Option<(u64, u64)>, Option<u64>);
    let batches: [Spec; 7] = [
        (2, None, None),             // [0, 2)
        (3, Some((9, 1)), None),     // [2, 5)
        (1, None, Some(10)),         // [5, 6): raises the token
        (2, Some((9, 2)), Some(11)), // [6, 8): keyed, raises it again
        (1, Some((8, 1)), Some(11)), // [8, 9): keyed, the same token (no raise)
        (2, None, None),             // [9, 11)
        (1, None, None),             // [11, 12): runs on with the one before
    ];
    let want = vec![
        (0..2, plain),
        (2..5, keyed(9, 1, None)),
        (5..6, fenced(10)),
        (6..8, keyed(9, 2, Some(11))),
        (8..9, keyed(8, 1, None)),
        (9..12, plain),
    ];
    let mut store = b.open("runs");
    let payload = vec![3u8; 64];
    let mut token = 0;
    let mut append = |store: &mut Store<B::Io>, (count, writer, fence): (usize, _, _)| {
        token += 1;
        let records: Vec<Record<'_>> = (0..count).map(|_| Record::new(&payload)).collect();
        let options = AppendOptions {
            writer,
            fencing_token: fence,
            expected_lsn: None,
        };
        store
            .append_batch(LOG, 1, &options, Batch::Records(&records), false, token)
            .map(|(lsns, _)| lsns)
            .expect("append");
        // Another log's batch between: runs are of one log.
        store
            .append(LOG + 1, 1, &[Record::new(&payload)], 1000 + token)
            .expect("append");
    };
    for &batch in &batches[..4] {
        append(&mut store, batch);
    }
    sync(&mut store);
    // Not polled: these frames stay in memory (a poll may submit them and, on a real ring,
    // see them complete in the same call: the check below then failed under load).
    for &batch in &batches[4..] {
        append(&mut store, batch);
    }
    let tail = store.tail(LOG).expect("log");
    assert!(
        tail.durable_lsn < tail.next_lsn,
        "some records are in memory only"
    );
    let read = |store: &mut Store<B::Io>, from, max_records, max_bytes| {
        shapes(
            &store
                .read_stored_runs(LOG, from, max_records, max_bytes)
                .expect("read_stored_runs"),
        )
    };
    // From the tail cache and the frames in memory, then from disk after a reopen.
    for pass in ["memory", "disk"] {
        assert_eq!(read(&mut store, 0, usize::MAX, usize::MAX), want, "{pass}");
        // From inside a keyed batch: the rest of it, without the key.
        assert_eq!(
            read(&mut store, 3, usize::MAX, usize::MAX)[0],
            (3..5, plain),
            "{pass}"
        );
        // A keyed batch cut by the limits ends the read, unless it comes first.
        assert_eq!(read(&mut store, 0, 4, usize::MAX), want[..1], "{pass}");
        assert_eq!(
            read(&mut store, 2, 2, usize::MAX),
            [(2..4, plain)],
            "{pass}"
        );
        assert_eq!(
            read(&mut store, 6, usize::MAX, usize::MAX),
            want[3..],
            "{pass}"
        );
        if pass == "memory" {
            sync(&mut store);
            drop(store);
            store = b.open("runs");
        }
    }
}
