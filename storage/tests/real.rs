//! The storage engine on the real io_uring backend (O_DIRECT files in temporary directories):
//! round trips across segment rollovers and reopens, reads interleaved with appends, kill -9 of
//! a writing process, the fatal stop after a failed write, space reclaimed by trims, and
//! idempotent recovery.
//!
//! Child processes: a parent test runs this test binary again with `--exact <child test>` and
//! [`CHILD_DIR_ENV`] set; a child test does its work only when that variable is present, so in
//! a normal run it passes at once as a no-op. Every child is killed and reaped by a
//! [`ChildGuard`], also when an assertion fails. Nothing here waits on time: parents block on
//! the child's stdout pipe and on its exit, and every loop is bounded by a count.
//!
//! Payloads are derived from (log, LSN) ([`payload`]), so a parent can check any record a
//! child wrote, acknowledged or not, without being told its bytes.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::ops::Range;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::Arc;

use chainlog_storage::buf::AlignedBuf;
use chainlog_storage::format::{
    record_bytes, FrameHeader, FrameKind, Records, FRAME_HEADER_BYTES, FRAME_MAGIC, SYSTEM_LOG,
};
use chainlog_storage::io::{Completion, FileId};
use chainlog_storage::{
    fatal, Ack, Durability, DurabilityMode, Error, FatalReason, FaultConfig, FaultPlan, FaultyIo,
    Io, LogTail, ReadRecord, Record, SimDisk, SimRng, Store, StoreConfig, SystemClock, UringIo,
    FATAL_EXIT_CODE,
};
use common::writes_at_open;

/// The shard directory a child works in; its presence is what makes a child test run.
const CHILD_DIR_ENV: &str = "CHAINLOG_CHILD_DIR";
/// The epoch a child appends with (a parent runs one child per epoch on a directory).
const CHILD_EPOCH_ENV: &str = "CHAINLOG_CHILD_EPOCH";
/// "1": the appender child also trims every log behind its acknowledged end.
const CHILD_TRIM_ENV: &str = "CHAINLOG_CHILD_TRIM";
/// The faulty child's `FaultPlan::fail_write_number`.
const CHILD_FAIL_WRITE_ENV: &str = "CHAINLOG_CHILD_FAIL_WRITE";

/// The child test that appends until it is killed.
const CHILD_APPENDER: &str = "child_appender";
/// The child test that appends over a failing write and stops with `fatal`.
const CHILD_FAULTY_APPENDER: &str = "child_faulty_appender";

/// The logs the tests write.
const LOGS: [u64; 4] = [1, 2, 3, 4];

/// Largest payload in the round-trip tests (the config's `record_bytes_max`).
const ROUNDTRIP_LEN_MAX: usize = 100 << 10;
/// Largest payload the appender child writes.
const KILL_LEN_MAX: usize = 32 << 10;
/// Largest payload of the fault tests (small, so the failing write is a known frame).
const FAULT_LEN_MAX: usize = 512;

/// Appends a child has in flight at most (then it waits for acknowledgements).
const CHILD_OUTSTANDING_MAX: usize = 32;
/// Iterations of a child's append loop at most (parents kill it long before).
const CHILD_STEPS_MAX: u64 = 2_000_000;
/// Acknowledgements a parent waits for before it kills the child.
const KILL_AFTER_ACKS: usize = 3_000;
/// Lines a parent reads from one child at most.
const CHILD_LINES_MAX: usize = 10_000_000;
/// An appender child trims a log once this many acknowledged records are above its trim point,
/// keeping the newest [`TRIM_KEEP`].
const TRIM_EVERY: u64 = 256;
const TRIM_KEEP: u64 = 128;

/// Token of trims (appends count up from 0).
const TRIM_TOKEN: u64 = 1 << 63;
/// Attempts of one append while the store is overloaded.
const OVERLOADED_RETRIES_MAX: usize = 10_000;

/// The bytes of record `lsn` of `log`: 0 ..= `len_max` bytes, mostly small, sometimes empty
/// or as large as allowed, from a generator seeded by (log, LSN).
fn payload(log: u64, lsn: u64, len_max: usize) -> Vec<u8> {
    let mut rng = SimRng::new((log << 40) ^ lsn);
    let len = match rng.below(32) {
        0 => 0,
        1 => len_max,
        2..=5 => rng.below(len_max as u64 + 1) as usize,
        _ => rng.below(len_max.min(2048) as u64 + 1) as usize,
    };
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The configuration of the round-trip, kill and trim tests: small segments, so that a test
/// crosses many rollovers.
fn real_config(record_bytes_max: usize) -> StoreConfig {
    StoreConfig {
        segment_bytes: 1 << 20,
        batch_bytes_max: 128 << 10,
        record_bytes_max,
        writes_in_flight_max: 4,
        write_buffers: 16,
        logs_max: 64,
        writers_max: 4,
        durability: DurabilityMode::Auto,
        calibration_writes: 8,
    }
}

fn real_io() -> UringIo {
    UringIo::new(256).expect("io_uring is available")
}

fn open_real(dir: &Path, config: StoreConfig) -> Store<UringIo> {
    Store::open(real_io(), dir, config, Arc::new(SystemClock::new()))
        .unwrap_or_else(|e| panic!("opening the store in {}: {e}", dir.display()))
}

/// Appends up to `count` records with derived payloads to `log` at its tail (fewer if more
/// would not fit a batch body of `body_max` bytes), polling while the store is overloaded
/// (acknowledgements go to `acks`). Returns the LSNs the records got.
#[allow(clippy::too_many_arguments)]
fn append_derived<I: Io>(
    store: &mut Store<I>,
    log: u64,
    epoch: u64,
    count: u64,
    len_max: usize,
    body_max: usize,
    token: u64,
    acks: &mut Vec<Ack>,
) -> Range<u64> {
    let next = store.tail(log).map_or(0, |t| t.next_lsn);
    let mut payloads = Vec::new();
    let mut bytes = 0;
    for lsn in next..next + count {
        let p = payload(log, lsn, len_max);
        if !payloads.is_empty() && bytes + record_bytes(p.len()) > body_max {
            break;
        }
        bytes += record_bytes(p.len());
        payloads.push(p);
    }
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    for _ in 0..OVERLOADED_RETRIES_MAX {
        match store.append(log, epoch, &records, token) {
            Ok(lsns) => {
                assert_eq!(lsns, next..next + records.len() as u64, "log {log}");
                return lsns;
            }
            Err(Error::Overloaded) => store.poll(true, acks).expect("poll"),
            Err(e) => panic!("append to log {log}: {e}"),
        }
    }
    panic!("log {log}: still overloaded after {OVERLOADED_RETRIES_MAX} polls");
}

/// The durable records of `log` in `from..end`, checked dense.
fn read_range<I: Io>(store: &mut Store<I>, log: u64, from: u64, end: u64) -> Vec<ReadRecord> {
    let mut out = Vec::new();
    let mut next = from;
    // Each read returns at least one record while any is left.
    for _ in 0..=end.saturating_sub(from) {
        if next >= end {
            break;
        }
        let batch = store
            .read(log, next, 64, 1 << 20)
            .unwrap_or_else(|e| panic!("reading log {log} from {next}: {e}"));
        assert!(
            !batch.is_empty(),
            "log {log}: nothing read at {next} < {end}"
        );
        for r in batch {
            assert_eq!(r.lsn, next, "log {log}: LSNs are dense");
            next += 1;
            out.push(r);
        }
    }
    assert_eq!(next, end, "log {log}: read up to the durable end");
    out
}

/// Every log's tail and durable records from its trim point.
type Contents = BTreeMap<u64, (LogTail, Vec<ReadRecord>)>;

fn capture<I: Io>(store: &mut Store<I>) -> Contents {
    let mut logs: Vec<u64> = store.log_ids().collect();
    logs.sort_unstable();
    logs.into_iter()
        .map(|log| {
            let tail = store.tail(log).expect("listed log");
            let records = read_range(store, log, tail.trim_point, tail.durable_lsn);
            (log, (tail, records))
        })
        .collect()
}

/// Checks that every record has its derived payload.
fn check_payloads(log: u64, records: &[ReadRecord], len_max: usize) {
    for r in records {
        let want = payload(log, r.lsn, len_max);
        assert!(
            r.payload == want,
            "log {log} lsn {}: {} bytes read differ from the {} bytes written",
            r.lsn,
            r.payload.len(),
            want.len()
        );
    }
}

/// Sizes of the segment files in `dir`: (count, total bytes).
fn disk_usage(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).expect("shard directory") {
        let entry = entry.expect("directory entry");
        files += 1;
        bytes += entry.metadata().expect("metadata").len();
    }
    (files, bytes)
}

// ---------------------------------------------------------------------------------------------
// 1. Round trip.

/// Appends `appends` batches of derived records (epoch `epoch`) to random logs and waits until
/// all are durable; checks that every append is acknowledged exactly once with its LSNs.
fn append_all<I: Io>(
    store: &mut Store<I>,
    config: &StoreConfig,
    epoch: u64,
    appends: u64,
    seed: u64,
) {
    let body_max = config.batch_bytes_max - FRAME_HEADER_BYTES;
    let mut rng = SimRng::new(seed);
    let mut acks = Vec::new();
    let mut pending = HashMap::new();
    for token in 0..appends {
        let log = LOGS[rng.below(LOGS.len() as u64) as usize];
        let count = 1 + rng.below(8);
        let lsns = append_derived(
            store,
            log,
            epoch,
            count,
            config.record_bytes_max,
            body_max,
            token,
            &mut acks,
        );
        pending.insert(token, (log, lsns));
        store.poll(false, &mut acks).expect("poll");
    }
    store.sync_all(&mut acks).expect("sync_all");
    for ack in acks {
        let appended = pending.remove(&ack.token);
        assert_eq!(
            appended,
            Some((ack.log_id, ack.lsns.clone())),
            "ack {ack:?}: one per append, with its LSNs"
        );
    }
    assert!(pending.is_empty(), "unacknowledged appends: {pending:?}");
}

fn check_contents(contents: &Contents, epoch_of: impl Fn(u64, u64) -> u64) {
    for (&log, (tail, records)) in contents {
        assert_eq!(tail.next_lsn, tail.durable_lsn, "log {log}: all durable");
        assert_eq!(tail.trim_point, 0, "log {log}");
        assert_eq!(records.len() as u64, tail.next_lsn, "log {log}");
        check_payloads(log, records, ROUNDTRIP_LEN_MAX);
        for r in records {
            assert_eq!(r.epoch, epoch_of(log, r.lsn), "log {log} lsn {}", r.lsn);
        }
    }
}

#[test]
fn round_trip_across_rollovers_and_reopens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard = tmp.path().join("shard");
    let config = real_config(ROUNDTRIP_LEN_MAX);

    let mut store = open_real(&shard, config.clone());
    append_all(&mut store, &config, 1, 250, 1);
    let segments = store.segment_count();
    assert!(segments >= 4, "only {segments} segments: no rollovers");
    let first = capture(&mut store);
    assert_eq!(first.len(), LOGS.len());
    check_contents(&first, |_, _| 1);
    drop(store);

    let mut store = open_real(&shard, config.clone());
    assert_eq!(capture(&mut store), first, "the same after a reopen");
    assert_eq!(store.recovery_report().torn_tail, None);
    assert_eq!(store.recovery_report().segments, segments);

    // Continue after the reopen, and reopen again.
    append_all(&mut store, &config, 2, 150, 2);
    let second = capture(&mut store);
    let first_end: HashMap<u64, u64> = first.iter().map(|(&l, (t, _))| (l, t.next_lsn)).collect();
    let epoch_of = |log: u64, lsn: u64| if lsn < first_end[&log] { 1 } else { 2 };
    check_contents(&second, epoch_of);
    for (log, (_, records)) in &first {
        assert_eq!(
            &second[log].1[..records.len()],
            &records[..],
            "log {log}: history kept"
        );
    }
    drop(store);

    let mut store = open_real(&shard, config);
    assert_eq!(
        capture(&mut store),
        second,
        "the same after a second reopen"
    );
}

/// A reader following the writers (reading the whole log after every few appends) sees every
/// durable record, also those the tail cache no longer holds and that were written after an
/// earlier read of the same segment.
#[test]
fn reads_interleaved_with_appends_see_every_durable_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard = tmp.path().join("shard");
    // Few write buffers: a small tail cache, so reads go to the disk.
    let config = StoreConfig {
        writes_in_flight_max: 1,
        write_buffers: 4,
        ..real_config(8 << 10)
    };
    let body_max = config.batch_bytes_max - FRAME_HEADER_BYTES;
    let mut store = open_real(&shard, config);
    let mut acks = Vec::new();
    let log = 7;
    for round in 0..40 {
        for token in 0..4 {
            append_derived(&mut store, log, 1, 1, 8 << 10, body_max, token, &mut acks);
            store.sync_all(&mut acks).expect("sync_all");
        }
        let tail = store.tail(log).expect("log");
        assert_eq!(tail.durable_lsn, (round + 1) * 4);
        let records = read_range(&mut store, log, 0, tail.durable_lsn);
        check_payloads(log, &records, 8 << 10);
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// Kills (SIGKILL) and reaps its child when dropped, so that no test leaves a process behind,
/// also when an assertion fails.
#[derive(Debug)]
struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Runs this test binary's test `name` alone, as a child, with `envs` set; its stdout is a
    /// pipe and its stderr goes to `stderr`.
    fn spawn(name: &str, envs: &[(&str, String)], stderr: &Path) -> ChildGuard {
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = Command::new(exe);
        command
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(stderr).expect("stderr file"));
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawning the child");
        ChildGuard { child: Some(child) }
    }

    fn stdout(&mut self) -> BufReader<std::process::ChildStdout> {
        let child = self.child.as_mut().expect("a child");
        BufReader::new(child.stdout.take().expect("a stdout pipe"))
    }

    /// Sends SIGKILL (if it still runs) and reaps it by its PID.
    fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a child");
        // Fails only if the child already exited; `wait` then reaps it all the same.
        let _ = child.kill();
        child.wait().expect("waiting for the child")
    }

    /// Waits for it to exit by itself.
    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a child");
        child.wait().expect("waiting for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One complete line from the child, or `None` at the end of its output (a line cut short by
/// the kill counts as the end).
fn next_line(reader: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => None,
        Ok(_) if line.ends_with('\n') => Some(line),
        Ok(_) => None,
        Err(e) => panic!("reading the child's output: {e}"),
    }
}

/// What an appender child reported.
#[derive(Debug, Default)]
struct ChildReport {
    /// The tails it found at open: log -> (next LSN, trim point).
    opened: BTreeMap<u64, (u64, u64)>,
    /// Durable appends, in the order acknowledged.
    acks: Vec<(u64, Range<u64>)>,
    /// Durable trims: (log, trim point).
    trims: Vec<(u64, u64)>,
}

impl ChildReport {
    fn take_line(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> u64 {
            words[i]
                .parse()
                .unwrap_or_else(|e| panic!("line {line:?}: {e}"))
        };
        match words.first().copied() {
            Some("open") => {
                self.opened.insert(number(1), (number(2), number(3)));
            }
            Some("ack") => {
                let first = number(2);
                self.acks.push((number(1), first..first + number(3)));
            }
            Some("trim") => self.trims.push((number(1), number(2))),
            // The test harness's own lines.
            _ => {}
        }
    }
}

fn read_stderr(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{}: {e}>", path.display()))
}

/// Runs an appender child on `shard` with `epoch` until it reported [`KILL_AFTER_ACKS`]
/// acknowledgements, kills it with SIGKILL, reaps it and returns everything it reported.
fn append_until_killed(tmp: &Path, shard: &Path, epoch: u64, trims: bool) -> ChildReport {
    let stderr = tmp.join(format!("child-{epoch}.stderr"));
    let envs = [
        (CHILD_DIR_ENV, shard.display().to_string()),
        (CHILD_EPOCH_ENV, epoch.to_string()),
        (CHILD_TRIM_ENV, if trims { "1" } else { "0" }.to_string()),
    ];
    let mut child = ChildGuard::spawn(CHILD_APPENDER, &envs, &stderr);
    let mut out = child.stdout();
    let mut report = ChildReport::default();
    let mut killed = None;
    for _ in 0..CHILD_LINES_MAX {
        if killed.is_none() && report.acks.len() >= KILL_AFTER_ACKS {
            killed = Some(child.kill());
        }
        // After the kill: the rest of what it wrote before it died (all of it acknowledged).
        let Some(line) = next_line(&mut out) else {
            break;
        };
        report.take_line(&line);
    }
    let status = killed.unwrap_or_else(|| child.kill());
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child should have been killed while appending, but: {status}; {} acks; stderr:\n{}",
        report.acks.len(),
        read_stderr(&stderr)
    );
    assert!(report.acks.len() >= KILL_AFTER_ACKS);
    report
}

/// The appender child: opens the store in [`CHILD_DIR_ENV`] and appends derived records to
/// [`LOGS`] until killed, printing `open <log> <next_lsn> <trim_point>` for each log at open,
/// then `ack <log> <first_lsn> <count>` for every durable append and `trim <log> <before>` for
/// every durable trim.
#[test]
fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let epoch: u64 = std::env::var(CHILD_EPOCH_ENV)
        .expect("epoch")
        .parse()
        .expect("epoch");
    let trims = std::env::var(CHILD_TRIM_ENV).is_ok_and(|v| v == "1");
    let config = real_config(KILL_LEN_MAX);
    let body_max = config.batch_bytes_max - FRAME_HEADER_BYTES;
    let mut store = open_real(Path::new(&dir), config);
    let mut stdout = std::io::stdout().lock();
    // The harness printed "test <name> ... " without a newline: end that line first.
    let mut lines = String::from("\n");
    for log in LOGS {
        if let Some(t) = store.tail(log) {
            lines += &format!("open {log} {} {}\n", t.next_lsn, t.trim_point);
        }
    }
    let mut rng = SimRng::new(epoch);
    let mut acks = Vec::new();
    let mut outstanding = 0;
    let mut acked_end: HashMap<u64, u64> = HashMap::new();
    let mut trimmed: HashMap<u64, u64> = LOGS
        .iter()
        .map(|&log| (log, store.tail(log).map_or(0, |t| t.trim_point)))
        .collect();
    for token in 0..CHILD_STEPS_MAX {
        if outstanding < CHILD_OUTSTANDING_MAX {
            let log = LOGS[rng.below(LOGS.len() as u64) as usize];
            let count = 1 + rng.below(4);
            append_derived(
                &mut store,
                log,
                epoch,
                count,
                KILL_LEN_MAX,
                body_max,
                token,
                &mut acks,
            );
            outstanding += 1;
        }
        store
            .poll(outstanding >= CHILD_OUTSTANDING_MAX, &mut acks)
            .expect("poll");
        for ack in acks.drain(..) {
            if ack.token == TRIM_TOKEN {
                lines += &format!("trim {} {}\n", ack.log_id, ack.lsns.start);
                continue;
            }
            outstanding -= 1;
            let count = ack.lsns.end - ack.lsns.start;
            lines += &format!("ack {} {} {count}\n", ack.log_id, ack.lsns.start);
            acked_end.insert(ack.log_id, ack.lsns.end);
            let trim = trimmed.get_mut(&ack.log_id).expect("a known log");
            if trims && ack.lsns.end >= *trim + TRIM_EVERY + TRIM_KEEP {
                let before = ack.lsns.end - TRIM_KEEP;
                match store.trim(ack.log_id, before, TRIM_TOKEN) {
                    Ok(()) => *trim = before,
                    // Tried again after the next acknowledgement.
                    Err(Error::Overloaded) => {}
                    Err(e) => panic!("trim: {e}"),
                }
            }
        }
        if !lines.is_empty() {
            // The parent is gone when this fails: nothing left to do.
            if stdout.write_all(lines.as_bytes()).is_err() || stdout.flush().is_err() {
                return;
            }
            lines.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. and 5. kill -9.

/// What the parent knows of a log across children.
#[derive(Debug, Default)]
struct LogModel {
    /// The tail recovered after the last child.
    next_lsn: u64,
    trim_point: u64,
    /// The epoch of each LSN below `next_lsn` (trimmed ones included).
    epochs: Vec<u64>,
}

/// Checks a killed child's report against the store recovered from its directory, and brings
/// `model` up to date: every acknowledged record (not trimmed by an acknowledged trim) is
/// present with its derived payload and the child's epoch, LSNs are dense, records after the
/// last acknowledgement are the child's records too, and acknowledged trims survived.
fn check_recovered(
    store: &mut Store<UringIo>,
    model: &mut BTreeMap<u64, LogModel>,
    report: &ChildReport,
    epoch: u64,
) -> Contents {
    // The child found what the parent recovered last time.
    let expected_open: BTreeMap<u64, (u64, u64)> = model
        .iter()
        .map(|(&log, m)| (log, (m.next_lsn, m.trim_point)))
        .collect();
    assert_eq!(report.opened, expected_open, "tails the child opened with");
    // Acknowledgements of each log are contiguous from its tail at open.
    let mut acked_end: BTreeMap<u64, u64> = model.iter().map(|(&l, m)| (l, m.next_lsn)).collect();
    for (log, lsns) in &report.acks {
        let end = acked_end.entry(*log).or_insert(0);
        assert_eq!(lsns.start, *end, "log {log}: acks are contiguous");
        *end = lsns.end;
    }
    let mut acked_trim: BTreeMap<u64, u64> = BTreeMap::new();
    for &(log, before) in &report.trims {
        let trim = acked_trim.entry(log).or_insert(0);
        assert!(before >= *trim, "log {log}: trims only move forward");
        *trim = before;
    }
    let contents = capture(store);
    let logs: Vec<u64> = contents.keys().copied().collect();
    let acked_logs: Vec<u64> = acked_end.keys().copied().collect();
    for log in &acked_logs {
        assert!(logs.contains(log), "log {log} was acknowledged and is gone");
    }
    for (&log, (tail, records)) in &contents {
        let end = acked_end.get(&log).copied().unwrap_or(0);
        assert!(
            tail.next_lsn >= end,
            "log {log}: acknowledged up to {end}, recovered up to {}",
            tail.next_lsn
        );
        assert_eq!(tail.durable_lsn, tail.next_lsn, "log {log}");
        let trim = acked_trim.get(&log).copied().unwrap_or(0);
        let m = model.entry(log).or_default();
        assert!(
            tail.trim_point >= trim.max(m.trim_point),
            "log {log}: trim point {} below the acknowledged {trim}",
            tail.trim_point
        );
        // The child trims only acknowledged records.
        assert!(tail.trim_point <= end.max(m.trim_point), "log {log}");
        // Everything past the last tail is this child's.
        assert!(tail.next_lsn >= m.next_lsn, "log {log}: records lost");
        m.epochs.resize(tail.next_lsn as usize, epoch);
        check_payloads(log, records, KILL_LEN_MAX);
        for r in records {
            assert_eq!(r.epoch, m.epochs[r.lsn as usize], "log {log} lsn {}", r.lsn);
        }
        if tail.trim_point > 0 {
            let below = store.read(log, tail.trim_point - 1, 1, 1 << 20);
            assert!(
                matches!(below, Err(Error::Trimmed { trim_point }) if trim_point == tail.trim_point),
                "log {log}: read below the trim point: {below:?}"
            );
        }
        m.next_lsn = tail.next_lsn;
        m.trim_point = tail.trim_point;
    }
    contents
}

/// kill -9 of a process appending to several logs, three times on the same directory, each
/// child continuing from the tails the previous one left: every acknowledged record survives.
#[test]
fn kill9_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard = tmp.path().join("shard");
    let mut model = BTreeMap::new();
    for epoch in 1..=3 {
        let report = append_until_killed(tmp.path(), &shard, epoch, false);
        let mut store = open_real(&shard, real_config(KILL_LEN_MAX));
        check_recovered(&mut store, &mut model, &report, epoch);
        assert!(
            store.segment_count() >= 2 * epoch as usize,
            "the children should cross segment rollovers"
        );
    }
}

/// Recovery after kill -9 (of a child that appends and trims, so that segments are deleted
/// while it runs) gives the same tails and contents when done twice.
#[test]
fn recovery_after_kill9_is_idempotent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard = tmp.path().join("shard");
    let mut model = BTreeMap::new();
    for epoch in 1..=2 {
        let report = append_until_killed(tmp.path(), &shard, epoch, true);
        let mut store = open_real(&shard, real_config(KILL_LEN_MAX));
        let first = check_recovered(&mut store, &mut model, &report, epoch);
        let first_report = store.recovery_report().clone();
        drop(store);
        let mut store = open_real(&shard, real_config(KILL_LEN_MAX));
        assert_eq!(
            capture(&mut store),
            first,
            "a second recovery changed the contents"
        );
        let again = store.recovery_report();
        assert_eq!(again.segments, first_report.segments);
        assert_eq!(again.frames, first_report.frames);
        assert_eq!(again.records, first_report.records);
        assert_eq!(again.torn_tail, first_report.torn_tail);
    }
    assert!(
        !shard.join(format!("{:020}.seg", 1)).exists(),
        "the trims should have deleted the first segment"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Fatal stop after a failed write.

/// The fault tests' configuration: one segment holds every frame before the failing write,
/// and durability is fixed (no calibration writes), so the write count is known.
fn fault_config(segment_bytes: u64) -> StoreConfig {
    StoreConfig {
        segment_bytes,
        durability: DurabilityMode::Dsync,
        ..real_config(FAULT_LEN_MAX)
    }
}

/// Frames written successfully before the failing one (after the first segment's snapshot).
const FRAMES_BEFORE_FAILURE: u64 = 40;
const FAULT_SEGMENT_BYTES: u64 = 2 << 20;

/// The faulty child: a store over `FaultyIo<UringIo>` whose write number
/// [`CHILD_FAIL_WRITE_ENV`] fails; appends, printing `ack` lines, until the store fails, then
/// stops with `fatal`.
#[test]
fn child_faulty_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let fail_write: u64 = std::env::var(CHILD_FAIL_WRITE_ENV)
        .expect("fail write")
        .parse()
        .expect("fail write");
    let plan = FaultPlan {
        fail_write_number: Some(fail_write),
        ..FaultPlan::default()
    };
    let config = fault_config(FAULT_SEGMENT_BYTES);
    let body_max = config.batch_bytes_max - FRAME_HEADER_BYTES;
    let io = FaultyIo::new(real_io(), plan);
    let mut store =
        Store::open(io, Path::new(&dir), config, Arc::new(SystemClock::new())).expect("open");
    let mut stdout = std::io::stdout().lock();
    // The harness printed "test <name> ... " without a newline: end that line first.
    writeln!(stdout).expect("stdout");
    let mut rng = SimRng::new(9);
    let mut acks = Vec::new();
    let mut outstanding = 0;
    for token in 0..CHILD_STEPS_MAX {
        if outstanding < 4 {
            let log = LOGS[rng.below(LOGS.len() as u64) as usize];
            let next = store.tail(log).map_or(0, |t| t.next_lsn);
            let payloads: Vec<Vec<u8>> = (next..next + 1 + rng.below(2))
                .map(|lsn| payload(log, lsn, FAULT_LEN_MAX))
                .collect();
            let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
            assert!(records.len() * record_bytes(FAULT_LEN_MAX) < body_max);
            match store.append(log, 1, &records, token) {
                Ok(lsns) => {
                    assert_eq!(lsns.start, next);
                    outstanding += 1;
                }
                Err(Error::Overloaded) => {}
                Err(Error::Fatal(reason)) => fatal(FatalReason::store(None, reason)),
                Err(e) => panic!("append: {e}"),
            }
        }
        let polled = store.poll(outstanding >= 4, &mut acks);
        // Acknowledgements handed out with the failure are durable too.
        for ack in acks.drain(..) {
            outstanding -= 1;
            let count = ack.lsns.end - ack.lsns.start;
            writeln!(stdout, "ack {} {} {count}", ack.log_id, ack.lsns.start).expect("stdout");
        }
        stdout.flush().expect("stdout");
        match polled {
            Ok(()) => {}
            Err(Error::Fatal(reason)) => fatal(FatalReason::store(None, reason)),
            Err(e) => panic!("poll: {e}"),
        }
    }
    panic!("write {fail_write} never failed");
}

/// A write fails in a running process: it stops with `FATAL_EXIT_CODE`, says why on stderr,
/// and every record it acknowledged before is there after a restart.
#[test]
fn failed_write_stops_the_process_with_the_fatal_code() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard = tmp.path().join("shard");
    let stderr = tmp.path().join("child.stderr");
    let fail_write = writes_at_open(FAULT_SEGMENT_BYTES) + 1 + FRAMES_BEFORE_FAILURE + 1;
    let envs = [
        (CHILD_DIR_ENV, shard.display().to_string()),
        (CHILD_FAIL_WRITE_ENV, fail_write.to_string()),
    ];
    let mut child = ChildGuard::spawn(CHILD_FAULTY_APPENDER, &envs, &stderr);
    let mut out = child.stdout();
    let mut report = ChildReport::default();
    for _ in 0..CHILD_LINES_MAX {
        let Some(line) = next_line(&mut out) else {
            break;
        };
        report.take_line(&line);
    }
    let status = child.wait();
    let stderr = read_stderr(&stderr);
    assert_eq!(
        status.code(),
        Some(FATAL_EXIT_CODE),
        "exit status {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("fatal storage error") && stderr.contains("write of frame"),
        "stderr should name the failed write:\n{stderr}"
    );
    assert!(
        stderr.contains(&std::io::Error::from_raw_os_error(libc::EIO).to_string()),
        "stderr should carry the EIO:\n{stderr}"
    );
    assert!(
        !report.acks.is_empty(),
        "the failure should come after some acknowledgements"
    );

    let mut store = open_real(&shard, fault_config(FAULT_SEGMENT_BYTES));
    let mut acked_end: BTreeMap<u64, u64> = BTreeMap::new();
    for (log, lsns) in &report.acks {
        let end = acked_end.entry(*log).or_insert(0);
        assert_eq!(lsns.start, *end, "log {log}: acks are contiguous");
        *end = lsns.end;
    }
    let contents = capture(&mut store);
    for (log, end) in acked_end {
        let (tail, records) = contents
            .get(&log)
            .unwrap_or_else(|| panic!("acknowledged log {log} is gone"));
        assert!(
            tail.next_lsn >= end,
            "log {log}: acknowledged up to {end}, recovered up to {}",
            tail.next_lsn
        );
        check_payloads(log, records, FAULT_LEN_MAX);
    }
}

/// What [`Observed`] saw.
#[derive(Debug, Default)]
struct Observations {
    /// The seq of the frame holding each (log, LSN) written.
    frame_of: HashMap<(u64, u64), u64>,
    /// Data frame writes by token: (seq, records).
    data_frames: HashMap<u64, (u64, u32)>,
    /// The failed frame write: (seq, records).
    failed: Option<(u64, u32)>,
    /// Frames after the failed one whose successful completion was handed to the store.
    later_ok: u64,
}

/// An [`Io`] wrapper that records which records each frame write carries, and hands a failed
/// frame write's completion to the store only after a later frame's successful one (a device
/// may complete writes in any order), or when nothing else is in flight.
#[derive(Debug)]
struct Observed<I: Io> {
    inner: I,
    seen: Rc<RefCell<Observations>>,
    held: Vec<Completion>,
}

impl<I: Io> Observed<I> {
    fn take(&mut self, got: Vec<Completion>, out: &mut Vec<Completion>) {
        let mut seen = self.seen.borrow_mut();
        for c in got {
            let frame = seen.data_frames.get(&c.token).copied();
            match (frame, &c.result) {
                (Some(frame), Err(_)) if seen.failed.is_none() => {
                    seen.failed = Some(frame);
                    self.held.push(c);
                }
                (Some((seq, _)), Ok(_)) => {
                    if seen.failed.is_some_and(|(failed, _)| seq > failed) {
                        seen.later_ok += 1;
                    }
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        if seen.later_ok > 0 || self.inner.in_flight() == 0 {
            out.append(&mut self.held);
        }
    }
}

impl<I: Io> Io for Observed<I> {
    fn create_dir_all(&mut self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&mut self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(&mut self, path: &Path, create: bool) -> std::io::Result<FileId> {
        self.inner.open(path, create)
    }
    fn open_dir(&mut self, path: &Path) -> std::io::Result<FileId> {
        self.inner.open_dir(path)
    }
    fn file_size(&mut self, file: FileId) -> std::io::Result<u64> {
        self.inner.file_size(file)
    }
    fn allocate(&mut self, file: FileId, len: u64) -> std::io::Result<()> {
        self.inner.allocate(file, len)
    }
    fn close(&mut self, file: FileId) {
        self.inner.close(file)
    }
    fn remove(&mut self, path: &Path) -> std::io::Result<()> {
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
        let bytes = buf.as_slice();
        let header: FrameHeader = bytemuck::pod_read_unaligned(&bytes[..FRAME_HEADER_BYTES]);
        if header.magic == FRAME_MAGIC && header.kind == FrameKind::Data as u16 {
            let body = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.body_len as usize];
            let mut seen = self.seen.borrow_mut();
            let mut records = 0;
            for record in Records::new(body, header.count) {
                let h = record.expect("a well-formed frame").header;
                if h.log_id != SYSTEM_LOG {
                    seen.frame_of.insert((h.log_id, h.lsn), header.seq);
                    records += 1;
                }
            }
            seen.data_frames.insert(token, (header.seq, records));
        }
        self.inner.write(file, offset, buf, durability, token)
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        self.inner.read(file, offset, buf, token)
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.inner.sync(file, token)
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> std::io::Result<()> {
        let before = out.len();
        let want = min_complete.min(self.in_flight());
        // Each round that still needs completions takes at least one from the inner backend
        // or releases the held one: bounded by what is in flight.
        for _ in 0..=self.in_flight() {
            let need = out.len() - before < want;
            let mut got = Vec::new();
            self.inner
                .wait(usize::from(need && self.inner.in_flight() > 0), &mut got)?;
            self.take(got, out);
            if out.len() - before >= want {
                break;
            }
        }
        Ok(())
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
    }
}

/// Once a frame write fails, no acknowledgement is ever handed out for it or any later frame,
/// although later writes succeed, and every call fails with `Error::Fatal`; after a restart
/// every acknowledged record is there. (Simulated disk, faults from `FaultyIo`.)
#[test]
fn after_a_failed_write_nothing_more_is_acknowledged() {
    const SEGMENT_BYTES: u64 = 1 << 20;
    const FRAMES_OK: u64 = 20;
    let disk = SimDisk::new();
    let seen = Rc::new(RefCell::new(Observations::default()));
    let plan = FaultPlan {
        fail_write_number: Some(writes_at_open(SEGMENT_BYTES) + 1 + FRAMES_OK + 1),
        ..FaultPlan::default()
    };
    let faults = FaultConfig {
        seed: 5,
        latency_us_max: 200,
        ..FaultConfig::default()
    };
    let io = Observed {
        inner: FaultyIo::new(disk.io(faults), plan),
        seen: Rc::clone(&seen),
        held: Vec::new(),
    };
    let dir = Path::new("/shard");
    let config = StoreConfig {
        writes_in_flight_max: 4,
        ..fault_config(SEGMENT_BYTES)
    };
    let body_max = config.batch_bytes_max - FRAME_HEADER_BYTES;
    let mut store = Store::open(io, dir, config.clone(), Arc::new(disk.clock())).expect("open");
    let mut rng = SimRng::new(3);
    let mut acks = Vec::new();
    let mut failure = None;
    for token in 0..10_000 {
        let log = LOGS[rng.below(LOGS.len() as u64) as usize];
        let count = 1 + rng.below(2);
        append_derived(
            &mut store,
            log,
            1,
            count,
            FAULT_LEN_MAX,
            body_max,
            token,
            &mut acks,
        );
        // Two appends per wait, so that several frames are in flight.
        if let Err(e) = store.poll(!token.is_multiple_of(2), &mut acks) {
            failure = Some(e);
            break;
        }
    }
    let failure = failure.expect("the write never failed");
    assert!(matches!(failure, Error::Fatal(_)), "{failure}");
    let seen_now = seen.borrow();
    let (failed_seq, failed_records) = seen_now.failed.expect("a data frame write failed");
    assert!(failed_records > 0, "the failed frame carries records");
    assert!(
        seen_now.later_ok > 0,
        "a later frame's write should have succeeded before the failure was seen"
    );
    assert!(!acks.is_empty(), "acknowledgements before the failure");
    for ack in &acks {
        for lsn in ack.lsns.clone() {
            let seq = seen_now.frame_of[&(ack.log_id, lsn)];
            assert!(
                seq < failed_seq,
                "log {} lsn {lsn} acknowledged, in frame {seq}, at or after the failed frame {failed_seq}",
                ack.log_id
            );
        }
    }
    drop(seen_now);

    // Every later call fails, and hands out nothing.
    let mut late = Vec::new();
    for i in 0..8 {
        let p = payload(1, 0, FAULT_LEN_MAX);
        let r = store.append(1, 1, &[Record::new(&p)], 1_000_000 + i);
        assert!(matches!(r, Err(Error::Fatal(_))), "append: {r:?}");
        let r = store.trim(1, 0, TRIM_TOKEN);
        assert!(matches!(r, Err(Error::Fatal(_))), "trim: {r:?}");
        let r = store.read(1, 0, 1, 1 << 20);
        assert!(matches!(r, Err(Error::Fatal(_))), "read: {r:?}");
        let r = store.poll(i.is_multiple_of(2), &mut late);
        assert!(matches!(r, Err(Error::Fatal(_))), "poll: {r:?}");
        let r = store.sync_all(&mut late);
        assert!(matches!(r, Err(Error::Fatal(_))), "sync_all: {r:?}");
    }
    assert_eq!(late, [], "acknowledgements after the failure");

    // Power loss, restart: everything acknowledged is there.
    drop(store);
    disk.crash(11);
    let mut store = Store::open(
        disk.io(FaultConfig::default()),
        dir,
        config,
        Arc::new(disk.clock()),
    )
    .expect("reopen");
    let contents = capture(&mut store);
    for ack in &acks {
        let (tail, records) = &contents[&ack.log_id];
        assert!(tail.next_lsn >= ack.lsns.end, "ack {ack:?} lost: {tail:?}");
        check_payloads(ack.log_id, records, FAULT_LEN_MAX);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Trim.

/// Trimming every log to its tail deletes the segments behind it: fewer files, fewer bytes;
/// reads below the trim fail with `Trimmed`; the trim survives a reopen.
#[test]
fn trim_reclaims_space_and_survives_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let shard = tmp.path().join("shard");
    let config = real_config(ROUNDTRIP_LEN_MAX);
    let body_max = config.batch_bytes_max - FRAME_HEADER_BYTES;
    let mut store = open_real(&shard, config.clone());
    append_all(&mut store, &config, 1, 200, 4);
    let segments_before = store.segment_count();
    let (files_before, bytes_before) = disk_usage(&shard);
    assert!(segments_before >= 4, "only {segments_before} segments");
    assert!(files_before > segments_before, "the segments and the spare");

    let mut acks = Vec::new();
    let mut trims = BTreeMap::new();
    for log in LOGS {
        let tail = store.tail(log).expect("log").next_lsn;
        store.trim(log, tail, TRIM_TOKEN + log).expect("trim");
        trims.insert(log, tail);
        // At once, before it is durable.
        let below = store.read(log, 0, 1, 1 << 20);
        assert!(
            matches!(below, Err(Error::Trimmed { trim_point }) if trim_point == tail),
            "{below:?}"
        );
    }
    store.sync_all(&mut acks).expect("sync_all");
    // The deletions' directory syncs complete.
    for _ in 0..8 {
        store.poll(true, &mut acks).expect("poll");
    }
    for log in LOGS {
        let ack = Ack {
            token: TRIM_TOKEN + log,
            log_id: log,
            lsns: trims[&log]..trims[&log],
        };
        assert!(acks.contains(&ack), "{ack:?} in {acks:?}");
    }
    let segments_after = store.segment_count();
    let (files_after, bytes_after) = disk_usage(&shard);
    assert_eq!(
        segments_after, 1,
        "every segment but the active one is trimmed"
    );
    assert!(
        files_after < files_before && bytes_after < bytes_before,
        "files {files_before} -> {files_after}, bytes {bytes_before} -> {bytes_after}"
    );
    assert_eq!(
        store.metrics().segments_deleted,
        (segments_before - segments_after) as u64
    );

    // New records after the trim point read back, before and after a reopen.
    let mut acks = Vec::new();
    for (token, log) in LOGS.into_iter().enumerate() {
        append_derived(
            &mut store,
            log,
            2,
            5,
            ROUNDTRIP_LEN_MAX,
            body_max,
            token as u64,
            &mut acks,
        );
    }
    store.sync_all(&mut acks).expect("sync_all");
    let contents = capture(&mut store);
    drop(store);
    let mut store = open_real(&shard, config);
    assert_eq!(capture(&mut store), contents, "the same after a reopen");
    assert_eq!(store.segment_count(), segments_after);
    assert!(disk_usage(&shard).0 <= files_after);
    for log in LOGS {
        let (tail, records) = &contents[&log];
        assert_eq!(tail.trim_point, trims[&log], "log {log}: the trim survived");
        assert_eq!(tail.next_lsn, trims[&log] + 5, "log {log}");
        check_payloads(log, records, ROUNDTRIP_LEN_MAX);
        for lsn in [0, trims[&log] - 1] {
            let below = store.read(log, lsn, 1, 1 << 20);
            assert!(
                matches!(below, Err(Error::Trimmed { trim_point }) if trim_point == trims[&log]),
                "log {log} lsn {lsn}: {below:?}"
            );
        }
    }
}

/// The shard's own operations (its sockets) go through the store's ring: an operation
/// submitted with an external token comes back from `poll` through `take_external`, between
/// appends, and is not mistaken for a storage completion.
#[test]
fn external_operations_share_the_ring() {
    use chainlog_storage::EXTERNAL_TOKEN;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut store = open_real(tmp.path(), StoreConfig::default());
    let token = EXTERNAL_TOKEN | 7;
    // SAFETY: a NOP refers to no buffer and no descriptor.
    unsafe {
        store
            .io_mut()
            .submit_external(io_uring::opcode::Nop::new().build(), token)
    };
    let mut acks = Vec::new();
    store
        .append(1, 1, &[Record::new(b"with a neighbour")], 1)
        .expect("append");
    let mut external = Vec::new();
    while external.is_empty() || acks.is_empty() {
        store.poll(true, &mut acks).expect("poll");
        store.take_external(&mut external);
    }
    assert_eq!(external.len(), 1);
    assert_eq!(external[0].token, token);
    assert!(external[0].buf.is_none());
    assert_eq!(external[0].result.as_ref().ok(), Some(&0));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].lsns, 0..1);
}
