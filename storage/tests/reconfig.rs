//! The storage pieces reconfiguration needs, on the simulator and on io_uring:
//!
//! - `truncate` discards a log's suffix (durable or not yet), new records take its LSNs (with
//!   another epoch), idempotency keys of the discarded batches are forgotten (a retry is
//!   appended anew), the fencing token stays, and recovery rebuilds exactly that, also once
//!   the segment holding the truncation is deleted and only a snapshot carries it;
//! - `reset_log` starts a log, new or not, empty at any LSN (a replica joining after a trim),
//!   durably, with the head's fencing token;
//! - `read_async` returns records in memory at once and waits for the disk in the ring, not in
//!   the call: appends are acknowledged while a read waits, a read goes on from the disk when
//!   its frames leave the tail cache meanwhile, fails with the store, with `Trimmed` when a
//!   trim passes it (and the segment it reads is not deleted under it), returns none of what
//!   a truncation or reset discards meanwhile, and at most `READS_IN_FLIGHT_MAX` reads wait.
//!
//! A wrapper backend holds the completions of chosen reads back, so that each race happens in
//! the same order on both backends.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

use chainlog_storage::io::{Completion, FileId};
use chainlog_storage::{
    Ack, AlignedBuf, AppendOptions, Batch, Durability, DurabilityMode, Error, Io, ReadDone,
    ReadKind, ReadOutput, ReadRecord, ReadRequest, Record, ReplicaState, Store, StoreConfig,
    WriterKey, READS_IN_FLIGHT_MAX,
};

mod common;
use common::{assert_res, on_both_backends, stamped, Backend, Real, Sim};

/// The log under test.
const LOG: u64 = 7;
/// Another log, whose appends fill frames and segments.
const OTHER: u64 = 8;
/// The writer of the keyed batches.
const WRITER: u64 = 3;
const SEGMENT_BYTES: u64 = 512 << 10;
const BATCH_BYTES_MAX: usize = 64 << 10;
const RECORD_BYTES_MAX: usize = 16 << 10;
const WRITE_BUFFERS: usize = 5;

fn config() -> StoreConfig {
    StoreConfig {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: BATCH_BYTES_MAX,
        record_bytes_max: RECORD_BYTES_MAX,
        writes_in_flight_max: 2,
        write_buffers: WRITE_BUFFERS,
        logs_max: 8,
        writers_max: 8,
        durability: DurabilityMode::Dsync,
        calibration_writes: 2,
    }
}

on_both_backends!(
    truncate_discards_a_suffix_that_new_records_replace,
    truncating_records_not_yet_durable,
    truncations_outside_the_log_are_refused,
    reset_starts_a_log_at_an_lsn,
    a_reset_takes_the_sources_keys_below_its_point,
    reads_from_memory_complete_at_once_and_disk_reads_wait_in_the_ring,
    a_read_goes_on_from_the_disk_when_its_frames_leave_the_tail_cache,
    a_store_failure_fails_the_reads_waiting,
    a_trim_racing_a_read_fails_it_and_its_segment_waits_for_it,
    a_truncation_or_reset_racing_a_read_discards_what_it_gathered,
    reads_waiting_for_the_disk_are_bounded,
);

// ---------------------------------------------------------------------------------------------
// A backend that holds reads back
// ---------------------------------------------------------------------------------------------

/// What the test tells a [`Gated`] backend.
#[derive(Debug, Default)]
struct Gate {
    /// Reads submitted while set complete only when released.
    hold: Cell<bool>,
    /// Held reads to hand out at the next wait, oldest first.
    release: Cell<usize>,
    /// The next write completes with EIO.
    fail_next_write: Cell<bool>,
}

/// A backend whose read completions can be held back and whose next write can fail.
#[derive(Debug)]
struct Gated<I: Io> {
    inner: I,
    gate: Rc<Gate>,
    /// Tokens of the reads submitted while holding, not completed yet.
    holding: Vec<u64>,
    held: VecDeque<Completion>,
    doomed: Option<u64>,
}

impl<I: Io> Io for Gated<I> {
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
        if self.gate.fail_next_write.replace(false) {
            self.doomed = Some(token);
        }
        self.inner.write(file, offset, buf, durability, token)
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        if self.gate.hold.get() {
            self.holding.push(token);
        }
        self.inner.read(file, offset, buf, token)
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.inner.sync(file, token)
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        // Never wait for what is held: nothing would come.
        let min = if self.inner.in_flight() == 0 {
            0
        } else {
            min_complete
        };
        self.inner.wait(min, out)?;
        let mut i = before;
        while i < out.len() {
            match self.holding.iter().position(|&t| t == out[i].token) {
                Some(k) => {
                    self.holding.swap_remove(k);
                    self.held.push_back(out.remove(i));
                }
                None => i += 1,
            }
        }
        if let Some(c) = out[before..]
            .iter_mut()
            .find(|c| Some(c.token) == self.doomed)
        {
            c.result = Err(io::Error::from_raw_os_error(libc::EIO));
            self.doomed = None;
        }
        while self.gate.release.get() > 0 && !self.held.is_empty() {
            self.gate.release.set(self.gate.release.get() - 1);
            out.push(self.held.pop_front().expect("checked"));
        }
        if !self.gate.hold.get() {
            out.extend(self.held.drain(..));
        }
        Ok(())
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
    }
}

/// Opens the store `name` of `b` on a [`Gated`] backend controlled by the gate returned.
fn open_gated<B: Backend>(b: &mut B, name: &str) -> (Store<Gated<B::Io>>, Rc<Gate>) {
    let gate = Rc::new(Gate::default());
    let io = Gated {
        inner: b.io(),
        gate: gate.clone(),
        holding: Vec::new(),
        held: VecDeque::new(),
        doomed: None,
    };
    let store = Store::open(io, &b.dir(name), config(), b.clock()).expect("open");
    (store, gate)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn payloads(n: usize, len: usize, seed: u8) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            (0..len + i)
                .map(|j| seed ^ (j as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(7))
                .collect()
        })
        .collect()
}

fn sync<I: Io>(store: &mut Store<I>) -> Vec<Ack> {
    let mut acks = Vec::new();
    store.sync_all(&mut acks).expect("sync_all");
    acks
}

fn keyed(seq: u64, fencing_token: Option<u64>) -> AppendOptions {
    AppendOptions {
        writer: Some((WRITER, seq)),
        fencing_token,
        ..AppendOptions::default()
    }
}

/// Appends `payloads` to `log` with `options` (polling while overloaded).
fn append<I: Io>(
    store: &mut Store<I>,
    log: u64,
    options: &AppendOptions,
    payloads: &[Vec<u8>],
    token: u64,
) -> Range<u64> {
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    loop {
        let batch = Batch::Records(&records);
        match store.append_batch(log, 1, options, batch, false, token) {
            Ok((lsns, _)) => return lsns,
            Err(Error::Overloaded) => store.poll(true, &mut Vec::new()).expect("poll"),
            Err(e) => panic!("append to log {log}: {e}"),
        }
    }
}

/// Stores `payloads` from `first_lsn` as a replica of a head in `epoch`.
fn replicate<I: Io>(
    store: &mut Store<I>,
    log: u64,
    epoch: u64,
    first_lsn: u64,
    payloads: &[Vec<u8>],
    state: &ReplicaState,
    token: u64,
) -> Result<Range<u64>, Error> {
    let bytes = stamped(log, first_lsn, epoch, payloads);
    let count = payloads.len() as u32;
    store
        .append_replica(log, epoch, first_lsn, &bytes, count, state, false, token)
        .map(|(lsns, _)| lsns)
}

/// Every readable record of `log` (from its trim point), with blocking reads.
fn read_all<I: Io>(store: &mut Store<I>, log: u64) -> Vec<ReadRecord> {
    let from = store.tail(log).expect("the log exists").trim_point;
    store.read(log, from, usize::MAX, usize::MAX).expect("read")
}

/// (LSN, epoch, payload) of records.
fn contents(records: &[ReadRecord]) -> Vec<(u64, u64, Vec<u8>)> {
    records
        .iter()
        .map(|r| (r.lsn, r.epoch, r.payload.clone()))
        .collect()
}

/// What a retry of the writer's batch `seq` would get, without appending anything: its
/// original LSNs if the batch is remembered (`Ok`), `ConditionFailed` if it is new (then it
/// would be appended anew), `WriterSeq` otherwise.
fn probe<I: Io>(store: &mut Store<I>, log: u64, seq: u64) -> Result<Range<u64>, Error> {
    let options = AppendOptions {
        writer: Some((WRITER, seq)),
        expected_lsn: Some(u64::MAX),
        ..AppendOptions::default()
    };
    let batch = Batch::Records(&[Record::new(b"probe")]);
    let got = store.append_batch(log, 1, &options, batch, false, u64::MAX - seq);
    sync(store);
    got.map(|(lsns, _)| lsns)
}

/// Frames of [`OTHER`], each synced, until none of the frames before them is in the tail
/// cache: the records appended before are read from the disk from then on.
fn evict<I: Io>(store: &mut Store<I>) {
    let filler = payloads(4, 12 << 10, 0x5a);
    for token in 0..2 * WRITE_BUFFERS as u64 {
        append(
            store,
            OTHER,
            &AppendOptions::default(),
            &filler,
            1_000 + token,
        );
        sync(store);
    }
}

/// Polls until the read with `token` completes.
fn wait_read<I: Io>(store: &mut Store<I>, token: u64) -> Result<ReadOutput, Error> {
    // A hang guard, not a deadline: every poll that waits completes something.
    for _ in 0..100_000 {
        store.poll(true, &mut Vec::new())?;
        let mut done: Vec<ReadDone> = Vec::new();
        store.take_reads(&mut done);
        if let Some(i) = done.iter().position(|d| d.token == token) {
            assert_eq!(done.len(), 1, "only the read waited for completed");
            return done.remove(i).result;
        }
        assert!(done.is_empty(), "another read completed: {done:?}");
    }
    panic!("read {token} never completed");
}

fn records_of(output: ReadOutput) -> Vec<ReadRecord> {
    match output {
        ReadOutput::Records(records) => records,
        ReadOutput::Runs(runs) => runs.into_iter().flat_map(|r| r.records).collect(),
    }
}

fn request(from: u64, kind: ReadKind) -> ReadRequest {
    ReadRequest {
        log_id: LOG,
        from,
        max_records: usize::MAX,
        max_bytes: usize::MAX,
        kind,
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation and reset
// ---------------------------------------------------------------------------------------------

/// Ten keyed batches (two of them raising the fencing token), durable; a truncation in the
/// middle of a batch: the log ends there, reads see nothing from there, the batches that
/// lost records are forgotten (a retry of one is appended anew) and the others are not, the
/// token stays; new records of another epoch take the LSNs. Reopening gives the same state,
/// and so does reopening once the segment holding the truncation is deleted (recovery then
/// starts from a snapshot that carries it).
fn truncate_discards_a_suffix_that_new_records_replace<B: Backend>(b: &mut B) {
    let mut store = b.open_with("shard", config());
    let mut all = Vec::new();
    for seq in 1..=10u64 {
        let batch = payloads(2, 100 * seq as usize, seq as u8);
        let fence = match seq {
            6 => Some(5),
            8 => Some(9),
            _ => None,
        };
        let lsns = append(&mut store, LOG, &keyed(seq, fence), &batch, seq);
        assert_eq!(lsns, 2 * (seq - 1)..2 * seq);
        all.extend(batch);
    }
    sync(&mut store);
    // Batch 7 holds LSNs 12..14: the truncation leaves half of it.
    store.truncate(LOG, 13, 100).expect("truncate");
    let tail = store.tail(LOG).expect("log");
    assert_eq!(
        (tail.next_lsn, tail.durable_lsn, tail.trim_point),
        (13, 13, 0)
    );
    assert_eq!(
        tail.fencing_token, 9,
        "the token raised by a discarded batch stays"
    );
    assert_eq!(store.read(LOG, 13, 10, usize::MAX).expect("read"), []);
    assert_eq!(
        store.read_stored(LOG, 13, 10, usize::MAX).expect("read"),
        []
    );
    let kept: Vec<Vec<u8>> = read_all(&mut store, LOG)
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(kept, all[..13]);
    let acks = sync(&mut store);
    assert_eq!(
        acks,
        [Ack {
            token: 100,
            log_id: LOG,
            lsns: 13..13
        }]
    );
    assert_res!(probe(&mut store, LOG, 6), Ok(10..12), "batch 6 is whole");
    assert_res!(
        probe(&mut store, LOG, 7),
        Err(Error::ConditionFailed { tail: 13 }),
        "batch 7 lost a record: forgotten"
    );
    assert_res!(
        probe(&mut store, LOG, 10),
        Err(Error::ConditionFailed { tail: 13 })
    );
    // The retry of batch 7 is appended anew, then the new epoch's records follow.
    let retry = payloads(1, 50, 70);
    assert_eq!(
        append(&mut store, LOG, &keyed(7, None), &retry, 101),
        13..14
    );
    let new_epoch = payloads(3, 300, 90);
    assert_res!(
        replicate(
            &mut store,
            LOG,
            2,
            14,
            &new_epoch,
            &ReplicaState::default(),
            102
        ),
        Ok(14..17)
    );
    sync(&mut store);
    let expected = contents(&read_all(&mut store, LOG));
    assert_eq!(expected.len(), 17);
    assert_eq!(expected[13].2, retry[0]);
    assert!(expected[14..].iter().all(|r| r.1 == 2), "the new epoch");
    let check = |store: &mut Store<B::Io>, when: &str| {
        let tail = store.tail(LOG).expect("log");
        assert_eq!(
            (tail.next_lsn, tail.fencing_token),
            (17, 9),
            "{when}: positions"
        );
        let from = tail.trim_point as usize;
        assert_eq!(
            contents(&read_all(store, LOG)),
            expected[from..],
            "{when}: records"
        );
        assert_res!(probe(store, LOG, 7), Ok(13..14), "{when}: the new batch 7");
        let forgotten = probe(store, LOG, 8);
        assert!(
            matches!(forgotten, Err(Error::ConditionFailed { .. })),
            "{when}: batch 8 stays forgotten (new): {forgotten:?}"
        );
        assert_res!(probe(store, LOG, 6), Ok(10..12), "{when}: batch 6");
    };
    check(&mut store, "before reopening");
    drop(store);
    let mut store = b.open_with("shard", config());
    check(&mut store, "reopened");
    // Trim everything, fill segments until the first one (truncation and all) is deleted,
    // and append: recovery then starts from a snapshot that carries the log's state.
    store.trim(LOG, 17, 103).expect("trim");
    delete_the_first_segment(&mut store);
    let after = payloads(2, 80, 0x66);
    assert_eq!(
        append(&mut store, LOG, &AppendOptions::default(), &after, 104),
        17..19
    );
    sync(&mut store);
    let expected = contents(&read_all(&mut store, LOG));
    assert_eq!(expected.len(), 2);
    let check = |store: &mut Store<B::Io>, when: &str| {
        let tail = store.tail(LOG).expect("log");
        assert_eq!(
            (tail.next_lsn, tail.trim_point, tail.fencing_token),
            (19, 17, 9),
            "{when}: positions"
        );
        assert_eq!(contents(&read_all(store, LOG)), expected, "{when}");
        assert_res!(probe(store, LOG, 7), Ok(13..14), "{when}: the new batch 7");
        assert_res!(probe(store, LOG, 6), Ok(10..12), "{when}: batch 6");
    };
    check(&mut store, "after the first segment went");
    drop(store);
    let mut store = b.open_with("shard", config());
    check(&mut store, "reopened from a later snapshot");
}

/// Appends to [`OTHER`] and trims it until the oldest segment is deleted (the caller trimmed
/// the other logs' records there).
fn delete_the_first_segment<I: Io>(store: &mut Store<I>) {
    let deleted = store.metrics().segments_deleted;
    let filler = payloads(4, 12 << 10, 0x33);
    let mut token = 200;
    while store.metrics().segments_deleted == deleted {
        let lsns = append(store, OTHER, &AppendOptions::default(), &filler, token);
        sync(store);
        store.trim(OTHER, lsns.end, token + 1).expect("trim");
        token += 2;
        assert!(token < 10_000, "the first segment is never deleted");
    }
    sync(store);
}

/// A truncation of records in frames being filled, sealed and in flight: their appends are
/// still acknowledged, in order and before the truncation, but none of the discarded records
/// is ever read, before or after they become durable, nor after a reopen.
fn truncating_records_not_yet_durable<B: Backend>(b: &mut B) {
    let mut store = b.open_with("shard", config());
    let first = payloads(3, 2000, 1);
    let second = payloads(3, 3000, 2);
    let third = payloads(2, 500, 3);
    // On a real ring a frame submitted by a poll may complete by the next one: every ack
    // collected on the way is kept for the check below.
    let mut acks = Vec::new();
    assert_eq!(append(&mut store, LOG, &keyed(1, None), &first, 1), 0..3);
    store.poll(false, &mut acks).expect("poll");
    assert_eq!(
        append(&mut store, LOG, &keyed(2, Some(4)), &second, 2),
        3..6
    );
    store.poll(false, &mut acks).expect("poll");
    assert_eq!(append(&mut store, LOG, &keyed(3, None), &third, 3), 6..8);
    store.truncate(LOG, 4, 4).expect("truncate");
    let tail = store.tail(LOG).expect("log");
    assert_eq!((tail.next_lsn, tail.fencing_token), (4, 4));
    assert!(tail.durable_lsn <= 4);
    let stored = store.read_stored(LOG, 0, 100, usize::MAX).expect("read");
    let kept: Vec<Vec<u8>> = first.iter().chain(&second[..1]).cloned().collect();
    assert_eq!(
        stored.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        kept
    );
    let durable = store.read(LOG, 0, 100, usize::MAX).expect("read");
    assert_eq!(durable, stored[..durable.len()], "a prefix of the same");
    let new_epoch = payloads(2, 700, 9);
    assert_res!(
        replicate(
            &mut store,
            LOG,
            2,
            4,
            &new_epoch,
            &ReplicaState::default(),
            5
        ),
        Ok(4..6)
    );
    let stored = store.read_stored(LOG, 3, 100, usize::MAX).expect("read");
    assert_eq!(
        contents(&stored),
        [
            (3, 1, second[0].clone()),
            (4, 2, new_epoch[0].clone()),
            (5, 2, new_epoch[1].clone())
        ]
    );
    acks.extend(sync(&mut store));
    let got: Vec<(u64, Range<u64>)> = acks.into_iter().map(|a| (a.token, a.lsns)).collect();
    assert_eq!(
        got,
        [(1, 0..3), (2, 3..6), (3, 6..8), (4, 4..4), (5, 4..6)],
        "every append acknowledged, in order, with the LSNs it got"
    );
    let expected = contents(&read_all(&mut store, LOG));
    assert_eq!(expected[3..], contents(&stored));
    assert_res!(probe(&mut store, LOG, 1), Ok(0..3));
    assert_res!(
        probe(&mut store, LOG, 2),
        Err(Error::ConditionFailed { tail: 6 })
    );
    drop(store);
    let mut store = b.open_with("shard", config());
    assert_eq!(contents(&read_all(&mut store, LOG)), expected);
    let tail = store.tail(LOG).expect("log");
    assert_eq!((tail.next_lsn, tail.fencing_token), (6, 4));
    assert_res!(probe(&mut store, LOG, 1), Ok(0..3));
    assert_res!(
        probe(&mut store, LOG, 3),
        Err(Error::ConditionFailed { tail: 6 })
    );
}

/// Truncations below the trim point, beyond the tail, of an unknown or reserved log: refused,
/// nothing written. One at the tail discards nothing and is acknowledged like the others.
fn truncations_outside_the_log_are_refused<B: Backend>(b: &mut B) {
    let mut store = b.open_with("shard", config());
    append(
        &mut store,
        LOG,
        &AppendOptions::default(),
        &payloads(5, 10, 1),
        1,
    );
    store.trim(LOG, 2, 2).expect("trim");
    sync(&mut store);
    let before = (store.tail(LOG), store.metrics().frames_written);
    assert_res!(
        store.truncate(LOG, 1, 9),
        Err(Error::Trimmed { trim_point: 2 })
    );
    assert_res!(
        store.truncate(LOG, 6, 9),
        Err(Error::TruncateBeyondTail { from: 6, tail: 5 })
    );
    assert_res!(store.truncate(OTHER, 0, 9), Err(Error::UnknownLog(OTHER)));
    assert_res!(
        store.truncate(u64::MAX, 0, 9),
        Err(Error::ReservedLog(u64::MAX))
    );
    assert!(sync(&mut store).is_empty());
    assert_eq!(
        (store.tail(LOG), store.metrics().frames_written),
        before,
        "nothing written"
    );
    store.truncate(LOG, 5, 10).expect("at the tail");
    store.truncate(LOG, 2, 11).expect("at the trim point");
    let acks: Vec<(u64, Range<u64>)> = sync(&mut store)
        .into_iter()
        .map(|a| (a.token, a.lsns))
        .collect();
    assert_eq!(acks, [(10, 5..5), (11, 2..2)]);
    let tail = store.tail(LOG).expect("log");
    assert_eq!((tail.next_lsn, tail.trim_point), (2, 2));
    assert_eq!(read_all(&mut store, LOG), []);
}

/// A replica that starts a log at its source's trim point takes the source's idempotency keys
/// of the batches that begin below that point with it: a retry of one of them is answered with
/// its LSNs, before and after reopening, rather than appended again. That includes the batch
/// the trim point cuts through, whose key names LSNs the replica does not hold yet: a
/// truncation at the trim point (a new epoch that starts there) forgets it, durably. The
/// least recently used writers' keys are left out when they do not all fit the reset's frame.
fn a_reset_takes_the_sources_keys_below_its_point<B: Backend>(b: &mut B) {
    const JOINED: u64 = 9;
    let mut store = b.open_with("shard", config());
    for seq in 1..=5 {
        append(
            &mut store,
            LOG,
            &keyed(seq, None),
            &payloads(10, 20, 1),
            seq,
        );
    }
    store.trim(LOG, 35, 10).expect("trim");
    sync(&mut store);
    let keys = store.writer_keys(LOG, 35);
    let batches: Vec<(u64, u64, u32)> = keys
        .iter()
        .map(|k| (k.writer_seq, k.first_lsn, k.count))
        .collect();
    assert_eq!(batches, [(1, 0, 10), (2, 10, 10), (3, 20, 10), (4, 30, 10)]);
    store.reset_log(JOINED, 35, 0, &keys, 11).expect("reset");
    let check = |store: &mut Store<B::Io>, when: &str, cut: Result<Range<u64>, Error>| {
        assert_res!(probe(store, JOINED, 2), Ok(10..20), "{when}: a retry below");
        assert_res!(probe(store, JOINED, 4), cut, "{when}: the cut batch");
        assert_res!(
            probe(store, JOINED, 5),
            Err(Error::ConditionFailed { tail: 35 }),
            "{when}: a batch above is new here"
        );
    };
    check(&mut store, "before reopening", Ok(30..40));
    assert_eq!(store.keys_end(JOINED), 40, "beyond the log's next LSN, 35");
    drop(store);
    let mut store = b.open_with("shard", config());
    check(&mut store, "reopened", Ok(30..40));
    // A new epoch from 35: the cut batch's records never came, its LSNs will be others'.
    store
        .truncate(JOINED, 35, 12)
        .expect("truncate at the tail");
    sync(&mut store);
    assert!(store.keys_end(JOINED) <= 35);
    let new = || Err(Error::ConditionFailed { tail: 35 });
    check(&mut store, "truncated", new());
    drop(store);
    let mut store = b.open_with("shard", config());
    check(&mut store, "truncated and reopened", new());

    // More keys than a frame holds: the newest are kept.
    let many: Vec<WriterKey> = (0..2_000)
        .map(|i| WriterKey {
            writer_id: WRITER + i,
            writer_seq: 1,
            first_lsn: i,
            count: 1,
        })
        .collect();
    store.reset_log(JOINED, 2_000, 0, &many, 13).expect("reset");
    sync(&mut store);
    let kept = store.writer_keys(JOINED, 2_000);
    assert!(
        !kept.is_empty() && kept.len() < many.len(),
        "{}",
        kept.len()
    );
    assert_eq!(kept.last(), many.last());
}

/// A replica joining after the head trimmed starts the log at the trim point with the head's
/// token; an existing log reset below and above its tail loses everything it had (records,
/// keys) but its token; both survive reopening, also from a snapshot once the segments
/// holding the resets are deleted.
fn reset_starts_a_log_at_an_lsn<B: Backend>(b: &mut B) {
    const JOINED: u64 = 9;
    let mut store = b.open_with("shard", config());
    store.reset_log(JOINED, 1000, 7, &[], 1).expect("reset");
    let tail = store.tail(JOINED).expect("created");
    assert_eq!(
        (
            tail.next_lsn,
            tail.durable_lsn,
            tail.trim_point,
            tail.fencing_token
        ),
        (1000, 1000, 1000, 7)
    );
    assert_res!(
        store.read(JOINED, 999, 1, 1),
        Err(Error::Trimmed { trim_point: 1000 })
    );
    assert_eq!(store.read_stored(JOINED, 1000, 1, 1).expect("read"), []);
    assert_res!(
        replicate(
            &mut store,
            JOINED,
            4,
            0,
            &payloads(1, 1, 1),
            &ReplicaState::default(),
            2
        ),
        Err(Error::Gap { expected: 1000 })
    );
    let caught_up = payloads(3, 400, 4);
    let keyed_state = ReplicaState {
        fencing_token: Some(7),
        writer: Some((WRITER, 40)),
    };
    assert_res!(
        replicate(&mut store, JOINED, 4, 1000, &caught_up, &keyed_state, 3),
        Ok(1000..1003)
    );
    let fenced = AppendOptions {
        fencing_token: Some(6),
        ..AppendOptions::default()
    };
    let batch = Batch::Records(&[Record::new(b"old writer")]);
    assert_res!(
        store
            .append_batch(JOINED, 4, &fenced, batch, false, 4)
            .map(|(lsns, _)| lsns),
        Err(Error::Fenced { token: 7 })
    );

    // An existing log with keys and a token, reset below its tail, then above.
    for seq in 1..=5 {
        let fence = (seq == 2).then_some(3);
        append(
            &mut store,
            LOG,
            &keyed(seq, fence),
            &payloads(10, 50, 5),
            10 + seq,
        );
    }
    store.reset_log(LOG, 20, 0, &[], 20).expect("reset below");
    let tail = store.tail(LOG).expect("log");
    assert_eq!(
        (tail.next_lsn, tail.trim_point, tail.fencing_token),
        (20, 20, 3)
    );
    assert_eq!(
        store.read_stored(LOG, 20, 100, usize::MAX).expect("read"),
        []
    );
    let new_epoch = payloads(2, 60, 6);
    assert_res!(
        replicate(
            &mut store,
            LOG,
            5,
            20,
            &new_epoch,
            &ReplicaState::default(),
            21
        ),
        Ok(20..22)
    );
    store.reset_log(LOG, 500, 2, &[], 22).expect("reset above");
    let last = payloads(2, 70, 7);
    assert_res!(
        replicate(&mut store, LOG, 6, 500, &last, &ReplicaState::default(), 23),
        Ok(500..502)
    );
    let acks: Vec<(u64, Range<u64>)> = sync(&mut store)
        .into_iter()
        .map(|a| (a.token, a.lsns))
        .collect();
    assert_eq!(
        acks,
        [
            (1, 1000..1000),
            (3, 1000..1003),
            (11, 0..10),
            (12, 10..20),
            (13, 20..30),
            (14, 30..40),
            (15, 40..50),
            (20, 20..20),
            (21, 20..22),
            (22, 500..500),
            (23, 500..502),
        ]
    );
    assert_res!(
        probe(&mut store, LOG, 1),
        Err(Error::ConditionFailed { tail: 502 }),
        "keys forgotten"
    );
    let joined = contents(&read_all(&mut store, JOINED));
    assert_eq!(joined.len(), 3);
    let expected = contents(&read_all(&mut store, LOG));
    assert_eq!(
        expected,
        [(500, 6, last[0].clone()), (501, 6, last[1].clone())]
    );
    let check = |store: &mut Store<B::Io>, when: &str| {
        let tail = store.tail(JOINED).expect("joined log");
        assert_eq!(
            (tail.next_lsn, tail.trim_point, tail.fencing_token),
            (1003, 1000, 7),
            "{when}"
        );
        assert_eq!(contents(&read_all(store, JOINED)), joined, "{when}");
        assert_res!(probe(store, JOINED, 40), Ok(1000..1003), "{when}");
        let tail = store.tail(LOG).expect("log");
        assert_eq!(
            (tail.next_lsn, tail.trim_point, tail.fencing_token),
            (502, 500, 3),
            "{when}"
        );
        assert_eq!(contents(&read_all(store, LOG)), expected, "{when}");
        let forgotten = probe(store, LOG, 5);
        assert!(
            matches!(forgotten, Err(Error::ConditionFailed { .. })),
            "{when}: {forgotten:?}"
        );
    };
    check(&mut store, "before reopening");
    drop(store);
    let mut store = b.open_with("shard", config());
    check(&mut store, "reopened");
    // Trim both, fill segments until the first one (resets and all) is deleted, and append:
    // recovery then starts from a snapshot that carries both logs' state.
    store.trim(JOINED, 1003, 30).expect("trim");
    store.trim(LOG, 502, 31).expect("trim");
    delete_the_first_segment(&mut store);
    let joined_more = payloads(2, 90, 8);
    assert_res!(
        replicate(
            &mut store,
            JOINED,
            4,
            1003,
            &joined_more,
            &ReplicaState::default(),
            32
        ),
        Ok(1003..1005)
    );
    let more = payloads(1, 90, 9);
    assert_res!(
        replicate(&mut store, LOG, 6, 502, &more, &ReplicaState::default(), 33),
        Ok(502..503)
    );
    sync(&mut store);
    let joined = contents(&read_all(&mut store, JOINED));
    let expected = contents(&read_all(&mut store, LOG));
    assert_eq!((joined.len(), expected.len()), (2, 1));
    let check = |store: &mut Store<B::Io>, when: &str| {
        let tail = store.tail(JOINED).expect("joined log");
        assert_eq!(
            (tail.next_lsn, tail.trim_point, tail.fencing_token),
            (1005, 1003, 7),
            "{when}"
        );
        assert_eq!(contents(&read_all(store, JOINED)), joined, "{when}");
        assert_res!(probe(store, JOINED, 40), Ok(1000..1003), "{when}");
        let tail = store.tail(LOG).expect("log");
        assert_eq!(
            (tail.next_lsn, tail.trim_point, tail.fencing_token),
            (503, 502, 3),
            "{when}"
        );
        assert_eq!(contents(&read_all(store, LOG)), expected, "{when}");
        let forgotten = probe(store, LOG, 5);
        assert!(
            matches!(forgotten, Err(Error::ConditionFailed { .. })),
            "{when}: {forgotten:?}"
        );
    };
    check(&mut store, "after the first segment went");
    drop(store);
    let mut store = b.open_with("shard", config());
    check(&mut store, "reopened from a later snapshot");
}

// ---------------------------------------------------------------------------------------------
// Asynchronous reads
// ---------------------------------------------------------------------------------------------

/// Forty records of `LOG` in frames of four, durable; the last ones are still in the tail
/// cache.
fn forty_records<I: Io>(store: &mut Store<I>) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for i in 0..10u64 {
        let batch = payloads(4, 2500 + 100 * i as usize, i as u8);
        append(store, LOG, &keyed(i + 1, None), &batch, i);
        sync(store);
        all.extend(batch);
    }
    all
}

/// Records in the tail cache and in frames not durable yet come back from the call; records on
/// disk only are read in the ring: the call returns at once, appends are acknowledged while
/// the read waits, and the records come from `take_reads` after a poll, as a blocking read
/// returns them.
fn reads_from_memory_complete_at_once_and_disk_reads_wait_in_the_ring<B: Backend>(b: &mut B) {
    let (mut store, gate) = open_gated(b, "shard");
    let all = forty_records(&mut store);
    let ios = store.metrics().read_ios;
    let cached = store
        .read_async(request(36, ReadKind::Durable), 1)
        .expect("read")
        .expect("in the tail cache");
    assert_eq!(
        records_of(cached),
        store.read(LOG, 36, 100, usize::MAX).expect("read")
    );
    // Not durable yet: in the frame being filled.
    let more = payloads(2, 10, 99);
    append(&mut store, LOG, &AppendOptions::default(), &more, 50);
    let stored = store
        .read_async(request(40, ReadKind::Stored), 2)
        .expect("read")
        .expect("in memory");
    assert_eq!(
        records_of(stored)
            .into_iter()
            .map(|r| r.payload)
            .collect::<Vec<_>>(),
        more
    );
    assert_eq!(store.metrics().read_ios, ios, "no disk read");
    sync(&mut store);
    evict(&mut store);

    gate.hold.set(true);
    assert!(store
        .read_async(request(0, ReadKind::Durable), 3)
        .expect("read")
        .is_none());
    assert_eq!(store.reads_in_flight(), 1);
    assert_eq!(store.metrics().read_ios, ios + 1);
    // The shard goes on: appends become durable while the read waits.
    let lsns = append(&mut store, OTHER, &AppendOptions::default(), &more, 60);
    let acks = sync(&mut store);
    assert_eq!(
        acks,
        [Ack {
            token: 60,
            log_id: OTHER,
            lsns
        }]
    );
    let mut done = Vec::new();
    store.take_reads(&mut done);
    assert!(done.is_empty(), "still waiting");
    gate.hold.set(false);
    let records = records_of(wait_read(&mut store, 3).expect("read"));
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, [all, more].concat());
    assert_eq!(
        records,
        store.read(LOG, 0, usize::MAX, usize::MAX).expect("read")
    );
    assert_eq!(store.reads_in_flight(), 0);
    // The runs of the same records, read asynchronously, as the blocking call gives them.
    evict(&mut store);
    let runs = match store.read_async(request(0, ReadKind::StoredRuns), 4) {
        Ok(Some(output)) => output,
        Ok(None) => wait_read(&mut store, 4).expect("read"),
        Err(e) => panic!("{e}"),
    };
    let blocking = store
        .read_stored_runs(LOG, 0, usize::MAX, usize::MAX)
        .expect("read");
    assert_eq!(runs, ReadOutput::Runs(blocking));
}

/// A read that needs several windows waits for the first while the frames it needs later
/// leave the tail cache and another read replaces the window the store keeps: it reads them
/// from the disk, and returns every record.
fn a_read_goes_on_from_the_disk_when_its_frames_leave_the_tail_cache<B: Backend>(b: &mut B) {
    let (mut store, gate) = open_gated(b, "shard");
    let mut all = Vec::new();
    // 64 records of 10 KiB: three windows' worth, the last frames in the tail cache.
    for i in 0..16u64 {
        let batch = payloads(4, 10 << 10, i as u8);
        append(&mut store, LOG, &AppendOptions::default(), &batch, i);
        sync(&mut store);
        all.extend(batch);
    }
    let ios = store.metrics().read_ios;
    gate.hold.set(true);
    assert!(store
        .read_async(request(0, ReadKind::Durable), 1)
        .expect("read")
        .is_none());
    evict(&mut store);
    assert!(store
        .read_async(request(60, ReadKind::Stored), 2)
        .expect("read")
        .is_none());
    gate.hold.set(false);
    let mut done = wait_reads(&mut store, 2);
    let second = records_of(done.remove(&2).expect("read 2").expect("read"));
    assert_eq!(
        second.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        all[60..]
    );
    let first = records_of(done.remove(&1).expect("read 1").expect("read"));
    assert_eq!(
        first.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        all
    );
    assert!(
        store.metrics().read_ios >= ios + 4,
        "three windows and the other read: {} disk reads",
        store.metrics().read_ios - ios
    );
}

/// Polls until `count` reads completed; their results by token.
fn wait_reads<I: Io>(
    store: &mut Store<I>,
    count: usize,
) -> BTreeMap<u64, Result<ReadOutput, Error>> {
    let mut done = Vec::new();
    // A hang guard, not a deadline: every poll that waits completes something.
    for _ in 0..100_000 {
        store.take_reads(&mut done);
        if done.len() >= count {
            break;
        }
        store.poll(true, &mut Vec::new()).expect("poll");
    }
    assert_eq!(done.len(), count, "reads completed");
    done.into_iter().map(|d| (d.token, d.result)).collect()
}

/// The store fails (a frame write fails) while a read waits for the disk: the read fails with
/// it, and so does every read after.
fn a_store_failure_fails_the_reads_waiting<B: Backend>(b: &mut B) {
    let (mut store, gate) = open_gated(b, "shard");
    forty_records(&mut store);
    evict(&mut store);
    gate.hold.set(true);
    assert!(store
        .read_async(request(0, ReadKind::Durable), 1)
        .expect("read")
        .is_none());
    gate.fail_next_write.set(true);
    append(
        &mut store,
        OTHER,
        &AppendOptions::default(),
        &payloads(1, 10, 1),
        99,
    );
    let mut acks = Vec::new();
    let failed = store.sync_all(&mut acks);
    assert!(matches!(failed, Err(Error::Fatal(_))), "{failed:?}");
    assert!(acks.is_empty());
    let mut done = Vec::new();
    store.take_reads(&mut done);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].token, 1);
    assert!(
        matches!(done[0].result, Err(Error::Fatal(_))),
        "{:?}",
        done[0].result
    );
    gate.hold.set(false);
    let again = store.poll(true, &mut acks);
    assert!(matches!(again, Err(Error::Fatal(_))), "{again:?}");
    store.take_reads(&mut done);
    assert_eq!(done.len(), 1, "a failed read is reported once");
    assert!(matches!(
        store.read_async(request(36, ReadKind::Durable), 2),
        Err(Error::Fatal(_))
    ));
    assert!(matches!(store.read(LOG, 36, 1, 1), Err(Error::Fatal(_))));
}

/// A trim passes the first LSN of a read waiting for the disk, and makes the segment it reads
/// deletable: the segment stays until the read completed, the read fails with `Trimmed`, and
/// then the segment goes.
fn a_trim_racing_a_read_fails_it_and_its_segment_waits_for_it<B: Backend>(b: &mut B) {
    let (mut store, gate) = open_gated(b, "shard");
    forty_records(&mut store);
    evict(&mut store);
    gate.hold.set(true);
    assert!(store
        .read_async(request(0, ReadKind::Durable), 1)
        .expect("read")
        .is_none());
    let segments = store.segment_count();
    assert!(segments >= 2, "the log's records are in an older segment");
    store.trim(LOG, 40, 2).expect("trim");
    let other_end = store.tail(OTHER).expect("other").next_lsn;
    store.trim(OTHER, other_end, 3).expect("trim");
    let filler = payloads(4, 12 << 10, 0x21);
    for token in 0..WRITE_BUFFERS as u64 {
        let lsns = append(
            &mut store,
            OTHER,
            &AppendOptions::default(),
            &filler,
            10 + token,
        );
        sync(&mut store);
        store.trim(OTHER, lsns.end, 20 + token).expect("trim");
    }
    sync(&mut store);
    assert_eq!(store.reads_in_flight(), 1);
    assert_eq!(
        store.metrics().segments_deleted,
        0,
        "the segment being read is not deleted"
    );
    gate.hold.set(false);
    assert_res!(
        wait_read(&mut store, 1).map(records_of),
        Err(Error::Trimmed { trim_point: 40 })
    );
    assert!(store.metrics().segments_deleted >= 1, "deleted once read");
    assert_res!(
        store.read(LOG, 0, 1, 1),
        Err(Error::Trimmed { trim_point: 40 })
    );
}

/// A truncation while a read waits for its second window, after it gathered records past the
/// truncation point from its first: what it gathered from there is dropped and it returns the
/// log as it is when it completes, new records of the next epoch included. A reset while
/// reads wait: they return nothing of the old records (`Trimmed` from below the reset, the
/// new history from above).
fn a_truncation_or_reset_racing_a_read_discards_what_it_gathered<B: Backend>(b: &mut B) {
    let (mut store, gate) = open_gated(b, "shard");
    for i in 0..16u64 {
        let batch = payloads(4, 10 << 10, i as u8);
        append(&mut store, LOG, &keyed(i + 1, None), &batch, i);
        sync(&mut store);
    }
    evict(&mut store);
    gate.hold.set(true);
    assert!(store
        .read_async(request(0, ReadKind::StoredRuns), 1)
        .expect("read")
        .is_none());
    // The first window (about 24 records of 10 KiB) arrives; the read waits for the next.
    gate.release.set(1);
    while gate.release.get() > 0 {
        store.poll(true, &mut Vec::new()).expect("poll");
    }
    let mut done = Vec::new();
    store.take_reads(&mut done);
    assert!(done.is_empty(), "waiting for its second window");
    assert_eq!(store.reads_in_flight(), 1);
    store.truncate(LOG, 10, 100).expect("truncate");
    let new_epoch = payloads(6, 900, 0x77);
    let state = ReplicaState {
        writer: Some((WRITER, 30)),
        ..ReplicaState::default()
    };
    assert_res!(
        replicate(&mut store, LOG, 2, 10, &new_epoch, &state, 101),
        Ok(10..16)
    );
    sync(&mut store);
    gate.hold.set(false);
    let got = wait_read(&mut store, 1).expect("read");
    let now = store
        .read_stored_runs(LOG, 0, usize::MAX, usize::MAX)
        .expect("read");
    assert_eq!(got, ReadOutput::Runs(now.clone()));
    let records: Vec<ReadRecord> = now.iter().flat_map(|r| r.records.clone()).collect();
    assert_eq!(records.len(), 16);
    assert!(records[10..].iter().all(|r| r.epoch == 2));
    assert_eq!(now.last().expect("runs").state.writer, Some((WRITER, 30)));

    evict(&mut store);
    gate.hold.set(true);
    assert!(store
        .read_async(request(0, ReadKind::Durable), 2)
        .expect("read")
        .is_none());
    assert!(store
        .read_async(request(8, ReadKind::Stored), 3)
        .expect("read")
        .is_none());
    store.reset_log(LOG, 5, 0, &[], 102).expect("reset");
    let last = payloads(5, 10, 0x78);
    assert_res!(
        replicate(&mut store, LOG, 3, 5, &last, &ReplicaState::default(), 103),
        Ok(5..10)
    );
    sync(&mut store);
    gate.hold.set(false);
    let mut done = wait_reads(&mut store, 2);
    assert_res!(
        done.remove(&2).expect("read 2").map(records_of),
        Err(Error::Trimmed { trim_point: 5 })
    );
    // A read from above the reset's LSN that started before it gets the new history only.
    let from_reset = records_of(done.remove(&3).expect("read 3").expect("read"));
    assert_eq!(
        contents(&from_reset),
        [(8, 3, last[3].clone()), (9, 3, last[4].clone())]
    );
}

/// `READS_IN_FLIGHT_MAX` reads wait for the disk; one more that needs the disk is refused with
/// `Overloaded`, one that needs only memory is not; once they completed, each with what a
/// blocking read returns, reads wait again.
fn reads_waiting_for_the_disk_are_bounded<B: Backend>(b: &mut B) {
    let (mut store, gate) = open_gated(b, "shard");
    forty_records(&mut store);
    evict(&mut store);
    gate.hold.set(true);
    let waiting = |from: usize| request((from % 36) as u64, ReadKind::Durable);
    for token in 0..READS_IN_FLIGHT_MAX {
        let started = store.read_async(waiting(token), token as u64);
        assert!(matches!(started, Ok(None)), "read {token}: {started:?}");
    }
    assert_eq!(store.reads_in_flight(), READS_IN_FLIGHT_MAX);
    assert!(matches!(
        store.read_async(waiting(0), 99),
        Err(Error::Overloaded)
    ));
    let recent = store.tail(OTHER).expect("other").next_lsn - 1;
    let memory = ReadRequest {
        log_id: OTHER,
        ..request(recent, ReadKind::Durable)
    };
    let from_memory = store
        .read_async(memory, 98)
        .expect("read")
        .expect("at once");
    assert_eq!(records_of(from_memory).len(), 1);
    gate.hold.set(false);
    let done = wait_reads(&mut store, READS_IN_FLIGHT_MAX);
    assert_eq!(store.reads_in_flight(), 0);
    for (token, result) in done {
        let from = waiting(token as usize).from;
        let blocking = store.read(LOG, from, usize::MAX, usize::MAX).expect("read");
        assert_eq!(records_of(result.expect("read")), blocking, "read {token}");
    }
    evict(&mut store);
    let again = store.read_async(waiting(0), 100).expect("read");
    let again = match again {
        Some(output) => output,
        None => wait_read(&mut store, 100).expect("read"),
    };
    assert_eq!(records_of(again).len(), 40);
}
