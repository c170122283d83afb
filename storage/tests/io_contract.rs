//! The contract of the [`Io`] seam, written once and run against every backend: io_uring on a
//! real file system, the simulated disk, and the fault-injecting wrapper with no faults planned
//! (it must be transparent). Buffers come back from their operations at the address they went
//! in with, which pinned frames rely on. A store-level scenario then checks that the engine behaves the same
//! on the real backend and on the simulator (same LSNs, same payloads), which is what makes the
//! simulator's verdicts worth trusting.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chainlog_storage::format::BLOCK_SIZE;
use chainlog_storage::io::{Completion, FileId};
use chainlog_storage::{
    AlignedBuf, Clock, Durability, DurabilityMode, Error, FaultConfig, FaultPlan, FaultyIo, Io,
    LogTail, Record, SimDisk, SimRng, Store, StoreConfig, SystemClock, UringIo,
};

mod common;

const BLOCK: u64 = BLOCK_SIZE as u64;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A buffer of `blocks` blocks filled with a pattern derived from `seed`.
fn pattern(blocks: usize, seed: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(blocks * BLOCK_SIZE);
    buf.set_len(blocks * BLOCK_SIZE);
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) | 1;
    }
    buf
}

fn expected_pattern(blocks: usize, seed: u8) -> Vec<u8> {
    pattern(blocks, seed).as_slice().to_vec()
}

fn zeroed(blocks: usize) -> AlignedBuf {
    let mut buf = AlignedBuf::new(blocks * BLOCK_SIZE);
    buf.set_len(blocks * BLOCK_SIZE);
    buf
}

/// Waits until nothing is in flight; returns every completion, in arrival order.
fn drain<I: Io>(io: &mut I) -> Vec<Completion> {
    let mut out = Vec::new();
    while io.in_flight() > 0 {
        let before = out.len();
        io.wait(1, &mut out).expect("the backend itself works");
        assert!(
            out.len() > before,
            "wait(1) returned without a completion while {} operations are in flight",
            io.in_flight()
        );
    }
    out
}

/// Waits for exactly one operation (the only one in flight) and returns its completion.
fn one<I: Io>(io: &mut I) -> Completion {
    assert_eq!(io.in_flight(), 1, "one operation in flight");
    let mut out = drain(io);
    assert_eq!(out.len(), 1, "exactly one completion");
    out.pop().expect("one completion")
}

fn write_sync<I: Io>(io: &mut I, file: FileId, offset: u64, buf: AlignedBuf, mode: Durability) {
    let len = buf.len();
    io.write(file, offset, buf, mode, 7);
    let c = one(io);
    assert_eq!(c.token, 7);
    assert_eq!(c.result.expect("write succeeds"), len);
}

fn read_sync<I: Io>(io: &mut I, file: FileId, offset: u64, blocks: usize) -> Vec<u8> {
    io.read(file, offset, zeroed(blocks), 9);
    let c = one(io);
    assert_eq!(c.token, 9);
    let n = c.result.expect("read succeeds");
    let buf = c.buf.expect("a read returns its buffer");
    buf.as_slice()[..n].to_vec()
}

// ---------------------------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------------------------

/// Files can be created, listed (sorted names), reopened, closed and removed.
fn contract_create_open_list_remove<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    // Creating an existing directory again is fine.
    io.create_dir_all(dir)
        .expect("create_dir_all is idempotent");
    assert_eq!(io.list_dir(dir).expect("list"), Vec::<String>::new());
    let b = io.open(&dir.join("b.seg"), true).expect("create b");
    let a = io.open(&dir.join("a.seg"), true).expect("create a");
    assert_ne!(a, b, "two open files get two ids");
    assert_eq!(io.list_dir(dir).expect("list"), ["a.seg", "b.seg"]);
    assert_eq!(io.file_size(a).expect("size"), 0, "a created file is empty");
    io.close(a);
    io.close(b);
    let a = io.open(&dir.join("a.seg"), false).expect("reopen a");
    assert_eq!(io.file_size(a).expect("size"), 0);
    io.close(a);
    io.remove(&dir.join("a.seg")).expect("remove a");
    assert_eq!(io.list_dir(dir).expect("list"), ["b.seg"]);
    let err = io
        .open(&dir.join("a.seg"), false)
        .expect_err("a removed file is gone");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = io
        .remove(&dir.join("a.seg"))
        .expect_err("removing a missing file fails");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // A nested directory is created with its parents.
    let nested = dir.join("x").join("y");
    io.create_dir_all(&nested).expect("nested create_dir_all");
    assert_eq!(
        io.list_dir(&nested).expect("list nested"),
        Vec::<String>::new()
    );
    let d = io.open_dir(&nested).expect("open nested dir");
    io.close(d);
}

/// `open(create = true)` never truncates or reuses an existing file.
fn contract_create_existing_fails<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let path = dir.join("exists.seg");
    let f = io.open(&path, true).expect("create");
    write_sync(io, f, 0, pattern(1, 3), Durability::Fdatasync);
    let err = io
        .open(&path, true)
        .expect_err("creating an existing file fails");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // And the file kept its contents.
    assert_eq!(read_sync(io, f, 0, 1), expected_pattern(1, 3));
    io.close(f);
}

/// Opening, listing or syncing what does not exist fails with `NotFound`.
fn contract_missing_fails<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let err = io
        .open(&dir.join("missing.seg"), false)
        .expect_err("opening a missing file fails");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = io
        .open_dir(&dir.join("missing-dir"))
        .expect_err("opening a missing directory fails");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = io
        .list_dir(&dir.join("missing-dir"))
        .expect_err("listing a missing directory fails");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        io.list_dir(dir).expect("list").is_empty(),
        "failed opens create nothing"
    );
}

/// `allocate` sets the size (never shrinks) and the allocated range reads as zeros.
fn contract_allocate_and_size<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let f = io.open(&dir.join("alloc.seg"), true).expect("create");
    assert_eq!(io.file_size(f).expect("size"), 0);
    io.allocate(f, 16 * BLOCK).expect("allocate");
    assert_eq!(io.file_size(f).expect("size"), 16 * BLOCK);
    assert_eq!(read_sync(io, f, 0, 16), vec![0u8; 16 * BLOCK_SIZE]);
    io.allocate(f, 4 * BLOCK).expect("allocate less");
    assert_eq!(
        io.file_size(f).expect("size"),
        16 * BLOCK,
        "allocate never shrinks"
    );
    // Writing inside the allocation does not change the size; writing past it extends it.
    write_sync(io, f, 2 * BLOCK, pattern(1, 1), Durability::Buffered);
    assert_eq!(io.file_size(f).expect("size"), 16 * BLOCK);
    write_sync(io, f, 16 * BLOCK, pattern(2, 2), Durability::Fdatasync);
    assert_eq!(io.file_size(f).expect("size"), 18 * BLOCK);
    io.close(f);
}

/// An aligned write reads back byte for byte, in every durability mode, and hands back its
/// buffer unchanged.
fn contract_write_read_back<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let f = io.open(&dir.join("rw.seg"), true).expect("create");
    io.allocate(f, 32 * BLOCK).expect("allocate");
    let modes = [
        Durability::Buffered,
        Durability::Dsync,
        Durability::Fdatasync,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        let seed = 10 + i as u8;
        let offset = (1 + 4 * i as u64) * BLOCK;
        io.write(f, offset, pattern(3, seed), mode, 100 + i as u64);
        assert_eq!(io.in_flight(), 1);
        let c = one(io);
        assert_eq!(
            c.token,
            100 + i as u64,
            "{mode:?}: the completion carries the token"
        );
        assert_eq!(
            c.result.expect("write"),
            3 * BLOCK_SIZE,
            "{mode:?}: full write"
        );
        let buf = c.buf.expect("a write returns its buffer");
        assert_eq!(buf.len(), 3 * BLOCK_SIZE);
        assert_eq!(
            buf.as_slice(),
            expected_pattern(3, seed),
            "{mode:?}: buffer unchanged"
        );
        assert_eq!(
            read_sync(io, f, offset, 3),
            expected_pattern(3, seed),
            "{mode:?}: reads back"
        );
    }
    // The writes did not disturb each other or the zeros around them.
    let all = read_sync(io, f, 0, 32);
    assert_eq!(all.len(), 32 * BLOCK_SIZE);
    assert!(all[..BLOCK_SIZE].iter().all(|&b| b == 0));
    for i in 0..3 {
        let at = (1 + 4 * i) * BLOCK_SIZE;
        assert_eq!(
            &all[at..at + 3 * BLOCK_SIZE],
            expected_pattern(3, 10 + i as u8)
        );
        assert!(all[at + 3 * BLOCK_SIZE..at + 4 * BLOCK_SIZE]
            .iter()
            .all(|&b| b == 0));
    }
    // Overwriting replaces.
    write_sync(io, f, BLOCK, pattern(1, 99), Durability::Dsync);
    assert_eq!(read_sync(io, f, BLOCK, 1), expected_pattern(1, 99));
    io.close(f);
    // Reopened, the file still holds the data.
    let f = io.open(&dir.join("rw.seg"), false).expect("reopen");
    assert_eq!(read_sync(io, f, BLOCK, 1), expected_pattern(1, 99));
    assert_eq!(read_sync(io, f, 9 * BLOCK, 3), expected_pattern(3, 12));
    io.close(f);
}

/// A read that reaches past the end of the file is short, and one starting at the end reads 0.
fn contract_read_past_eof_is_short<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let f = io.open(&dir.join("short.seg"), true).expect("create");
    write_sync(io, f, 0, pattern(2, 5), Durability::Fdatasync);
    assert_eq!(io.file_size(f).expect("size"), 2 * BLOCK);
    io.read(f, BLOCK, zeroed(4), 1);
    let c = one(io);
    assert_eq!(c.token, 1);
    assert_eq!(c.result.expect("short read"), BLOCK_SIZE);
    let buf = c.buf.expect("buffer back");
    assert_eq!(buf.len(), 4 * BLOCK_SIZE, "the buffer keeps its length");
    assert_eq!(
        &buf.as_slice()[..BLOCK_SIZE],
        &expected_pattern(2, 5)[BLOCK_SIZE..]
    );
    io.read(f, 2 * BLOCK, zeroed(1), 2);
    let c = one(io);
    assert_eq!(c.token, 2);
    assert_eq!(c.result.expect("read at EOF"), 0);
    io.read(f, 10 * BLOCK, zeroed(1), 3);
    assert_eq!(one(io).result.expect("read past EOF"), 0);
    io.close(f);
}

/// Syncs of a file and of a directory complete with their token and no buffer.
fn contract_sync_file_and_dir<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let f = io.open(&dir.join("sync.seg"), true).expect("create");
    io.allocate(f, 4 * BLOCK).expect("allocate");
    io.write(f, 0, pattern(1, 8), Durability::Buffered, 11);
    assert_eq!(one(io).token, 11);
    io.sync(f, 12);
    let c = one(io);
    assert_eq!(c.token, 12);
    assert!(c.buf.is_none(), "a sync has no buffer");
    c.result.expect("file sync");
    let d = io.open_dir(dir).expect("open dir");
    io.sync(d, 13);
    let c = one(io);
    assert_eq!(c.token, 13);
    assert!(c.buf.is_none());
    c.result.expect("directory sync");
    io.close(d);
    io.close(f);
}

/// Many operations in flight at once each complete exactly once, with their own token and
/// buffer; `in_flight` counts them; waiting with nothing in flight returns at once.
fn contract_many_in_flight<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let mut nothing = Vec::new();
    io.wait(0, &mut nothing).expect("wait(0)");
    io.wait(1, &mut nothing)
        .expect("wait(1) with nothing in flight");
    assert!(nothing.is_empty());
    assert_eq!(io.in_flight(), 0);

    let files = [
        io.open(&dir.join("m0.seg"), true).expect("create"),
        io.open(&dir.join("m1.seg"), true).expect("create"),
    ];
    for &f in &files {
        io.allocate(f, 64 * BLOCK).expect("allocate");
    }
    // Writes to distinct blocks in every mode, and syncs, all in flight together.
    let modes = [
        Durability::Buffered,
        Durability::Dsync,
        Durability::Fdatasync,
    ];
    let mut expected: BTreeMap<u64, (FileId, u64, u8)> = BTreeMap::new();
    let mut submitted = 0;
    for i in 0..24u64 {
        let f = files[(i % 2) as usize];
        let offset = (i / 2) * 2 * BLOCK;
        let seed = i as u8 + 40;
        let token = 1000 + i * 7;
        io.write(f, offset, pattern(2, seed), modes[(i % 3) as usize], token);
        expected.insert(token, (f, offset, seed));
        submitted += 1;
        assert_eq!(io.in_flight(), submitted);
    }
    io.sync(files[0], 5000);
    io.sync(files[1], 5001);
    submitted += 2;
    assert_eq!(io.in_flight(), submitted);
    let done = drain(io);
    assert_eq!(done.len(), submitted, "every operation completes");
    assert_eq!(io.in_flight(), 0);
    let mut seen = BTreeMap::new();
    for c in done {
        *seen.entry(c.token).or_insert(0) += 1;
        match expected.get(&c.token) {
            Some(&(_, _, seed)) => {
                assert_eq!(c.result.expect("write"), 2 * BLOCK_SIZE);
                let buf = c.buf.expect("a write returns its buffer");
                assert_eq!(buf.as_slice(), expected_pattern(2, seed), "its own buffer");
            }
            None => {
                assert!(
                    c.token == 5000 || c.token == 5001,
                    "unknown token {}",
                    c.token
                );
                assert!(c.buf.is_none());
                c.result.expect("sync");
            }
        }
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "each token exactly once: {seen:?}"
    );
    assert_eq!(seen.len(), submitted);

    // Reads in flight together, each getting its own data.
    for (&token, &(f, offset, _)) in &expected {
        io.read(f, offset, zeroed(2), token);
    }
    assert_eq!(io.in_flight(), expected.len());
    let done = drain(io);
    assert_eq!(done.len(), expected.len());
    let mut seen = BTreeMap::new();
    for c in done {
        *seen.entry(c.token).or_insert(0) += 1;
        let (_, _, seed) = expected[&c.token];
        assert_eq!(c.result.expect("read"), 2 * BLOCK_SIZE);
        assert_eq!(
            c.buf.expect("a read returns its buffer").as_slice(),
            expected_pattern(2, seed)
        );
    }
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(seen.len(), expected.len());

    // wait(n) returns at least n completions when n are in flight.
    for i in 0..4u64 {
        io.sync(files[(i % 2) as usize], 6000 + i);
    }
    let mut out = Vec::new();
    io.wait(3, &mut out).expect("wait(3)");
    assert!(out.len() >= 3, "wait(3) returned {}", out.len());
    assert_eq!(io.in_flight(), 4 - out.len());
    out.extend(drain(io));
    let mut tokens: Vec<u64> = out.iter().map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [6000, 6001, 6002, 6003]);
    for &f in &files {
        io.close(f);
    }
}

/// The buffer of a write or a read comes back in its completion: the same allocation at the
/// same address (a pinned frame is sent from that memory while it goes to disk), and a write
/// leaves its buffer's bytes as they were.
fn contract_buffers_come_back_at_their_address<I: Io>(io: &mut I, dir: &Path) {
    io.create_dir_all(dir).expect("create_dir_all");
    let f = io.open(&dir.join("addr.seg"), true).expect("create");
    io.allocate(f, 8 * BLOCK).expect("allocate");
    let mut sent = BTreeMap::new();
    let modes = [
        Durability::Buffered,
        Durability::Dsync,
        Durability::Fdatasync,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        let buf = pattern(2, i as u8);
        let token = 100 + i as u64;
        sent.insert(token, (buf.as_ptr(), Some(expected_pattern(2, i as u8))));
        io.write(f, 2 * BLOCK * i as u64, buf, mode, token);
    }
    let buf = zeroed(2);
    sent.insert(200, (buf.as_ptr(), None));
    io.read(f, 6 * BLOCK, buf, 200);
    let completions = drain(io);
    assert_eq!(completions.len(), sent.len());
    for c in completions {
        let (at, bytes) = sent.remove(&c.token).expect("a token submitted once");
        c.result.expect("the operation succeeds");
        let buf = c.buf.expect("the buffer comes back");
        assert_eq!(buf.as_ptr(), at, "token {}: the same memory", c.token);
        if let Some(bytes) = bytes {
            assert_eq!(
                buf.as_slice(),
                bytes,
                "token {}: a write leaves its buffer",
                c.token
            );
        }
    }
    io.close(f);
}

// ---------------------------------------------------------------------------------------------
// The backends
// ---------------------------------------------------------------------------------------------

fn real_dir() -> tempfile::TempDir {
    common::real_dir("io-contract-")
}

fn uring() -> UringIo {
    UringIo::new(64).expect("io_uring is available")
}

macro_rules! contract_suite {
    ($backend:ident, $setup:expr) => {
        /// The whole contract on one backend, one test per clause.
        mod $backend {
            use super::*;

            contract_suite!(@tests $setup;
                create_open_list_remove => contract_create_open_list_remove,
                create_existing_fails => contract_create_existing_fails,
                missing_fails => contract_missing_fails,
                allocate_and_size => contract_allocate_and_size,
                write_read_back => contract_write_read_back,
                read_past_eof_is_short => contract_read_past_eof_is_short,
                sync_file_and_dir => contract_sync_file_and_dir,
                many_in_flight => contract_many_in_flight,
                buffers_come_back_at_their_address => contract_buffers_come_back_at_their_address,
            );
        }
    };
    (@tests $setup:expr; $($name:ident => $contract:ident,)*) => {
        $(
            #[test]
            fn $name() {
                let (mut io, dir, _keep) = $setup;
                $contract(&mut io, &dir);
                assert_eq!(io.in_flight(), 0, "the contract leaves nothing in flight");
            }
        )*
    };
}

contract_suite!(uring_io, {
    let keep = real_dir();
    let dir = keep.path().join("shard");
    (uring(), dir, Some(keep))
});

contract_suite!(sim_io, {
    let disk = SimDisk::new();
    let io = disk.io(FaultConfig {
        seed: 7,
        latency_us_max: 50,
        ..FaultConfig::default()
    });
    (
        io,
        PathBuf::from("/sim/contract/shard"),
        None::<tempfile::TempDir>,
    )
});

contract_suite!(faulty_uring_io, {
    let keep = real_dir();
    let dir = keep.path().join("shard");
    (
        FaultyIo::new(uring(), FaultPlan::default()),
        dir,
        Some(keep),
    )
});

// ---------------------------------------------------------------------------------------------
// The store behaves the same on the real backend and on the simulator
// ---------------------------------------------------------------------------------------------

/// What a scenario observed, compared across backends (timestamps excluded: they are the
/// clocks' business).
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Appended(u64, Range<u64>),
    Acks(Vec<(u64, u64, Range<u64>)>),
    Trimmed(u64, u64),
    Read(u64, u64, Vec<(u64, u64, Vec<u8>)>),
    ReadError(u64, u64, String),
    Tail(u64, Option<LogTail>),
    Logs(Vec<u64>),
}

fn scenario_config() -> StoreConfig {
    StoreConfig {
        segment_bytes: 256 << 10,
        batch_bytes_max: 32 << 10,
        record_bytes_max: 8 << 10,
        writes_in_flight_max: 3,
        write_buffers: 8,
        logs_max: 64,
        writers_max: 4,
        durability: DurabilityMode::Fdatasync,
        calibration_writes: 4,
    }
}

fn payload(rng: &mut SimRng, log: u64, i: u64) -> Vec<u8> {
    let len = rng.below(3000) as usize;
    let mut p = format!("log {log} record {i} ").into_bytes();
    p.resize(len.max(p.len()), 0);
    for (j, b) in p.iter_mut().enumerate().skip(24) {
        *b = (rng.next_u64() as u8) ^ (j as u8);
    }
    p
}

fn read_all<I: Io>(store: &mut Store<I>, log: u64, from: u64, seen: &mut Vec<Seen>) {
    let mut next = from;
    let mut got = Vec::new();
    loop {
        match store.read(log, next, 7, 10_000) {
            Ok(records) if records.is_empty() => break,
            Ok(records) => {
                for r in records {
                    assert_eq!(r.lsn, next, "reads are dense");
                    next += 1;
                    got.push((r.lsn, r.epoch, r.payload));
                }
            }
            Err(e) => {
                seen.push(Seen::ReadError(log, next, e.to_string()));
                break;
            }
        }
    }
    seen.push(Seen::Read(log, from, got));
}

fn sync<I: Io>(store: &mut Store<I>, seen: &mut Vec<Seen>) {
    let mut acks = Vec::new();
    store.sync_all(&mut acks).expect("sync_all");
    seen.push(Seen::Acks(
        acks.into_iter()
            .map(|a| (a.token, a.log_id, a.lsns))
            .collect(),
    ));
}

/// Appends in several logs (enough to roll over segments), trims, reopens and reads back.
fn store_scenario<I: Io>(
    mut new_io: impl FnMut() -> I,
    dir: &Path,
    clock: Arc<dyn Clock>,
) -> Vec<Seen> {
    let logs = [1u64, 2, 3, 40];
    let mut seen = Vec::new();
    let mut rng = SimRng::new(2024);
    let mut token = 0;
    {
        let mut store =
            Store::open(new_io(), dir, scenario_config(), clock.clone()).expect("open new store");
        for i in 0..300u64 {
            let log = logs[rng.below(logs.len() as u64) as usize];
            let count = 1 + rng.below(3);
            let payloads: Vec<Vec<u8>> = (0..count)
                .map(|k| payload(&mut rng, log, i * 4 + k))
                .collect();
            let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
            token += 1;
            let lsns = loop {
                match store.append(log, 1 + i / 100, &records, token) {
                    Ok(lsns) => break lsns,
                    Err(Error::Overloaded) => {
                        store.poll(true, &mut Vec::new()).expect("poll");
                    }
                    Err(e) => panic!("append: {e}"),
                }
            };
            seen.push(Seen::Appended(log, lsns));
            if i % 25 == 24 {
                sync(&mut store, &mut seen);
            }
            if i == 150 {
                for (log, before) in [(1, 20), (2, 5)] {
                    token += 1;
                    store.trim(log, before, token).expect("trim");
                    seen.push(Seen::Trimmed(log, before));
                }
            }
        }
        sync(&mut store, &mut seen);
        for &log in &logs {
            seen.push(Seen::Tail(log, store.tail(log)));
        }
        // Trim every log (one of them entirely) so that the oldest segments are deleted and
        // the reopen starts from a later segment's snapshot.
        for log in logs {
            let next = store.tail(log).expect("log").next_lsn;
            let before = match log {
                1 => next - 10,
                2 => next,
                3 => next / 2,
                _ => next - 3,
            };
            token += 1;
            store.trim(log, before, token).expect("trim");
            seen.push(Seen::Trimmed(log, before));
        }
        sync(&mut store, &mut seen);
        assert!(
            store.metrics().segments_deleted > 0,
            "the trims free whole segments"
        );
    }
    let mut store = Store::open(new_io(), dir, scenario_config(), clock.clone()).expect("reopen");
    let mut ids: Vec<u64> = store.log_ids().collect();
    ids.sort_unstable();
    seen.push(Seen::Logs(ids));
    for &log in &logs {
        let tail = store.tail(log);
        seen.push(Seen::Tail(log, tail));
        let trim_point = tail.expect("every log survives").trim_point;
        read_all(&mut store, log, trim_point, &mut seen);
        if trim_point > 0 {
            read_all(&mut store, log, trim_point - 1, &mut seen);
        }
    }
    // The logs continue after the reopen.
    for &log in &logs {
        let p = payload(&mut rng, log, 9999);
        token += 1;
        let lsns = store
            .append(log, 9, &[Record::new(&p)], token)
            .expect("append");
        seen.push(Seen::Appended(log, lsns));
    }
    sync(&mut store, &mut seen);
    for &log in &logs {
        let tail = store.tail(log).expect("log");
        seen.push(Seen::Tail(log, Some(tail)));
        read_all(&mut store, log, tail.next_lsn - 1, &mut seen);
    }
    seen
}

#[test]
fn store_behaves_the_same_on_uring_and_sim() {
    let keep = real_dir();
    let real_dir = keep.path().join("shard");
    let real = store_scenario(uring, &real_dir, Arc::new(SystemClock::new()));

    let disk = SimDisk::new();
    let mut seed = 0;
    let sim = store_scenario(
        || {
            seed += 1;
            disk.io(FaultConfig {
                seed,
                latency_us_max: 200,
                ..FaultConfig::default()
            })
        },
        Path::new("/sim/shard"),
        Arc::new(disk.clock()),
    );
    assert!(
        real.iter()
            .any(|s| matches!(s, Seen::Read(_, _, r) if r.len() > 50)),
        "the scenario reads real data back"
    );
    assert_eq!(real.len(), sim.len());
    for (i, (r, s)) in real.iter().zip(&sim).enumerate() {
        assert_eq!(r, s, "step {i} differs between io_uring and the simulator");
    }
}
