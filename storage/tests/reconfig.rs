//! Reads that do not block the shard, on the simulator and on io_uring: `read_async` returns
//! records in memory at once and waits for the disk in the ring, not in the call: appends are
//! acknowledged while a read waits, a read goes on from the disk when its frames leave the
//! tail cache meanwhile, fails with the store, with `Trimmed` when a trim passes it (and the
//! segment it reads is not deleted under it), and at most `READS_IN_FLIGHT_MAX` reads wait.
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
    ReadKind, ReadOutput, ReadRecord, ReadRequest, Record, Store, StoreConfig, READS_IN_FLIGHT_MAX,
};

mod common;
use common::{assert_res, on_both_backends, Backend, Real, Sim};

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
    reads_from_memory_complete_at_once_and_disk_reads_wait_in_the_ring,
    a_read_goes_on_from_the_disk_when_its_frames_leave_the_tail_cache,
    a_store_failure_fails_the_reads_waiting,
    a_trim_racing_a_read_fails_it_and_its_segment_waits_for_it,
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
    fn register_buffers(&mut self, bufs: &mut [AlignedBuf]) -> bool {
        self.inner.register_buffers(bufs)
    }
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
