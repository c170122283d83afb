//! Bad input gives a clear, typed error: never a panic, never silent loss.
//!
//! Damaged data directories (a stray file, a segment of random bytes, a truncated segment, a
//! newer format version, a flipped byte in a committed frame, a missing segment; after a clean
//! stop, damage at the very end of the committed frames, a lost newest segment, a damaged or
//! stale clean-stop record; frames whose checksums hold but that contradict what the writer
//! asserts) must make `Store::open` fail with an error that names the file
//! (and the offset, where there is one), and must leave every file as it was. Bad API calls (oversized records, wrong checksums,
//! empty batches, the reserved log, trims beyond the tail, unknown logs, reads below the trim
//! point) must fail with their own error and change nothing. Every case runs on the simulator
//! and on the real io_uring backend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chainlog_storage::format::{
    block_align, check_frame, CleanStop, FrameHeader, SegmentHeader, SnapshotEntry, BLOCK_SIZE,
    CLEAN_STOP_FILE, CLEAN_STOP_VERSION, FORMAT_VERSION, FRAME_HEADER_BYTES, FRAME_MAGIC,
    RECORD_HEADER_BYTES, SNAPSHOT_ENTRY_BYTES, SYSTEM_LOG,
};
use chainlog_storage::{
    Clock, DurabilityMode, Error, Io, Record, SimIo, SimRng, Store, StoreConfig, SystemClock,
    UringIo,
};

mod common;

// ---------------------------------------------------------------------------------------------
// The two backends, and a way to look at and damage their files
// ---------------------------------------------------------------------------------------------

trait Backend {
    type Io: Io + std::fmt::Debug;
    /// The shard directory.
    fn dir(&self) -> PathBuf;
    /// A new backend ("process") on the same disk.
    fn io(&mut self) -> Self::Io;
    fn clock(&self) -> Arc<dyn Clock>;
    /// Writes a whole file in the shard directory.
    fn write(&self, name: &str, bytes: &[u8]);
    /// Removes a file of the shard directory.
    fn remove(&mut self, name: &str);
    /// Every file of the shard directory, with its bytes.
    fn files(&self) -> BTreeMap<String, Vec<u8>>;

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        self.files()
            .remove(name)
            .unwrap_or_else(|| panic!("no file {name}"))
    }
}

use common::Sim;

impl Backend for Sim {
    type Io = SimIo;

    fn dir(&self) -> PathBuf {
        PathBuf::from("/sim/bad_input")
    }

    fn io(&mut self) -> SimIo {
        self.next_io(100)
    }

    fn clock(&self) -> Arc<dyn Clock> {
        self.sim_clock()
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        self.disk.write_file(&self.path(name), bytes);
    }

    fn remove(&mut self, name: &str) {
        let path = self.path(name);
        self.io().remove(&path).expect("remove");
    }

    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let dir = self.dir();
        self.disk
            .files_in(&dir)
            .into_iter()
            .map(|(name, _)| {
                let bytes = self.disk.read_file(&dir.join(&name)).expect("listed");
                (name, bytes)
            })
            .collect()
    }
}

struct Real {
    root: tempfile::TempDir,
}

impl Real {
    fn new() -> Real {
        Real {
            root: common::real_dir("bad-input-"),
        }
    }
}

impl Backend for Real {
    type Io = UringIo;

    fn dir(&self) -> PathBuf {
        self.root.path().join("shard")
    }

    fn io(&mut self) -> UringIo {
        UringIo::new(64).expect("io_uring is available")
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock::new())
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::create_dir_all(self.dir()).expect("mkdir");
        std::fs::write(self.path(name), bytes).expect("write");
    }

    fn remove(&mut self, name: &str) {
        std::fs::remove_file(self.path(name)).expect("remove");
    }

    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return BTreeMap::new();
        };
        entries
            .map(|e| {
                let e = e.expect("dir entry");
                let bytes = std::fs::read(e.path()).expect("read");
                (e.file_name().to_string_lossy().into_owned(), bytes)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const SEGMENT_BYTES: u64 = 64 << 10;
const RECORD_BYTES_MAX: usize = 4 << 10;

fn config() -> StoreConfig {
    StoreConfig {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 16 << 10,
        record_bytes_max: RECORD_BYTES_MAX,
        writes_in_flight_max: 2,
        write_buffers: 6,
        logs_max: 16,
        writers_max: 4,
        durability: DurabilityMode::Fdatasync,
        calibration_writes: 2,
    }
}

fn segment(id: u64) -> String {
    format!("{id:020}.seg")
}

fn open<B: Backend>(b: &mut B) -> Result<Store<B::Io>, Error> {
    let io = b.io();
    Store::open(io, &b.dir(), config(), b.clock())
}

/// Opens a damaged directory: it must fail, and leave every file as it was.
fn open_fails<B: Backend>(b: &mut B) -> Error {
    let before = b.files();
    let err = match open(b) {
        Ok(_) => panic!("a damaged directory opened"),
        Err(e) => e,
    };
    let after = b.files();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "a failed open leaves the files in place ({err})"
    );
    for (name, bytes) in &before {
        assert!(
            after[name] == *bytes,
            "a failed open leaves {name} untouched ({err})"
        );
    }
    // And it fails the same way the second time.
    let again = match open(b) {
        Ok(_) => panic!("a damaged directory opened at the second try"),
        Err(e) => e,
    };
    assert_eq!(
        (std::mem::discriminant(&again), where_(&again)),
        (std::mem::discriminant(&err), where_(&err)),
        "{err} / {again}"
    );
    err
}

/// The file (and offset) an error is about.
fn where_(err: &Error) -> Option<(&Path, Option<u64>)> {
    match err {
        Error::Io { path, .. }
        | Error::UnexpectedFile { path }
        | Error::UnsupportedVersion { path, .. } => Some((path, None)),
        Error::Corrupt { path, offset, .. } => Some((path, Some(*offset))),
        _ => None,
    }
}

/// The error's message names `path`.
fn assert_names(err: &Error, path: &Path) {
    let shown = err.to_string();
    assert!(
        shown.contains(&path.display().to_string()),
        "the error does not name {}: {shown}",
        path.display()
    );
    assert!(!err.is_retryable(), "{err}");
}

/// Each append of `payloads` as its own frame (synced one by one), to logs 1, 2, 3 in turn.
fn populate<B: Backend>(b: &mut B, payloads: &[Vec<u8>]) {
    let mut store = open(b).expect("open a new store");
    let mut acks = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        store
            .append(1 + i as u64 % 3, 1, &[Record::new(p)], i as u64)
            .expect("append");
        store.sync_all(&mut acks).expect("sync");
    }
    assert_eq!(acks.len(), payloads.len());
}

fn small_payloads(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![i as u8 + 1; 100 + i]).collect()
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SimRng::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Offset of the first data frame of a store's first segment: after the segment header block
/// and the one-block snapshot frame.
const FIRST_DATA_FRAME: u64 = 2 * BLOCK_SIZE as u64;

// ---------------------------------------------------------------------------------------------
// Damaged data directories
// ---------------------------------------------------------------------------------------------

fn stray_file<B: Backend>(b: &mut B) {
    // Alone in a new directory.
    b.write("notes.txt", b"remember the milk\n");
    let err = open_fails(b);
    let path = b.path("notes.txt");
    assert!(
        matches!(&err, Error::UnexpectedFile { path: p } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
    b.remove("notes.txt");
    // Next to a store's segments.
    populate(b, &small_payloads(3));
    b.write("notes.txt", b"remember the milk\n");
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::UnexpectedFile { path: p } if *p == path),
        "{err:?}"
    );
    // Names that look almost like segments are not segments either.
    b.remove("notes.txt");
    for name in [
        "1.seg",
        "00000000000000000001.seg.tmp",
        "0000000000000000000x.seg",
    ] {
        b.write(name, &[0u8; BLOCK_SIZE]);
        let err = open_fails(b);
        let path = b.path(name);
        assert!(
            matches!(&err, Error::UnexpectedFile { path: p } if *p == path),
            "{name}: {err:?}"
        );
        b.remove(name);
    }
    // Moved away, the store opens with its data.
    let store = open(b).expect("open after the stray files are gone");
    assert_eq!(store.tail(1).expect("log 1").next_lsn, 1);
}

fn segment_of_random_bytes<B: Backend>(b: &mut B) {
    let name = segment(1);
    b.write(&name, &random_bytes(1, 3 * BLOCK_SIZE));
    let err = open_fails(b);
    let path = b.path(&name);
    assert!(
        matches!(&err, Error::Corrupt { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
    b.remove(&name);

    // As the next segment of a store (not the newest file: random bytes after it).
    populate(b, &small_payloads(3));
    assert_eq!(b.files().len(), 2, "a store holds its segment and a spare");
    b.write(&segment(2), &random_bytes(2, SEGMENT_BYTES as usize));
    b.write(&segment(3), &random_bytes(3, SEGMENT_BYTES as usize));
    let err = open_fails(b);
    let path = b.path(&segment(2));
    assert!(
        matches!(&err, Error::Corrupt { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
}

fn truncated_segment<B: Backend>(b: &mut B) {
    populate(b, &small_payloads(5));
    let name = segment(1);
    let path = b.path(&name);
    let whole = b.read(&name);
    assert_eq!(whole.len() as u64, SEGMENT_BYTES);
    for cut in [SEGMENT_BYTES as usize / 2, 20_000, 3 * BLOCK_SIZE, 100] {
        b.write(&name, &whole[..cut]);
        let err = open_fails(b);
        assert!(
            matches!(&err, Error::Corrupt { path: p, .. } if *p == path),
            "cut to {cut}: {err:?}"
        );
        assert_names(&err, &path);
    }
    // Restored, it opens again with everything.
    b.write(&name, &whole);
    let store = open(b).expect("open the restored store");
    assert_eq!(store.tail(2).expect("log 2").next_lsn, 2);
}

fn segment_from_a_newer_format<B: Backend>(b: &mut B) {
    populate(b, &small_payloads(3));
    let name = segment(1);
    let path = b.path(&name);
    let whole = b.read(&name);
    let header_len = std::mem::size_of::<SegmentHeader>();

    // The segment header says a newer version (with a correct checksum).
    let mut header: SegmentHeader = bytemuck::pod_read_unaligned(&whole[..header_len]);
    assert_eq!(header.version, FORMAT_VERSION);
    header.version = FORMAT_VERSION + 1;
    header.crc = header.compute_crc();
    let mut newer = whole.clone();
    newer[..header_len].copy_from_slice(bytemuck::bytes_of(&header));
    b.write(&name, &newer);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::UnsupportedVersion { path: p, found, supported }
            if *p == path && *found == FORMAT_VERSION + 1 && *supported == FORMAT_VERSION),
        "{err:?}"
    );
    assert_names(&err, &path);

    // A committed frame says a newer version (with a correct checksum).
    let at = FIRST_DATA_FRAME as usize;
    let mut frame: FrameHeader = bytemuck::pod_read_unaligned(&whole[at..at + FRAME_HEADER_BYTES]);
    assert_eq!(frame.version, FORMAT_VERSION, "a data frame at {at}");
    frame.version = FORMAT_VERSION + 1;
    let body = &whole[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + frame.body_len as usize];
    frame.crc = frame.compute_crc(body);
    let mut newer = whole.clone();
    newer[at..at + FRAME_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&frame));
    b.write(&name, &newer);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::UnsupportedVersion { path: p, found, .. }
            if *p == path && *found == FORMAT_VERSION + 1),
        "{err:?}"
    );
    assert_names(&err, &path);
}

fn flipped_byte_in_a_committed_frame<B: Backend>(b: &mut B) {
    let payloads = small_payloads(6);
    populate(b, &payloads);
    let name = segment(1);
    let path = b.path(&name);
    let whole = b.read(&name);
    let at = FIRST_DATA_FRAME as usize;
    let frame: FrameHeader = bytemuck::pod_read_unaligned(&whole[at..at + FRAME_HEADER_BYTES]);
    assert_eq!(
        frame.count, 1,
        "the first data frame holds the first append"
    );
    // Later frames exist (and say this one was durable): this is damage, not a torn tail.
    let next: FrameHeader =
        bytemuck::pod_read_unaligned(&whole[at + BLOCK_SIZE..at + BLOCK_SIZE + FRAME_HEADER_BYTES]);
    assert!(next.seq > frame.seq && next.durable_seq >= frame.seq);
    // A byte of the first record's payload, of the record header, of the frame header's
    // sequence number and of its body length.
    let payload_at = at + FRAME_HEADER_BYTES + RECORD_HEADER_BYTES + 5;
    assert_eq!(whole[payload_at], payloads[0][5]);
    for flip in [payload_at, at + FRAME_HEADER_BYTES + 2, at + 20, at + 14] {
        let mut damaged = whole.clone();
        damaged[flip] ^= 0x40;
        b.write(&name, &damaged);
        let err = open_fails(b);
        assert!(
            matches!(&err, Error::Corrupt { path: p, offset, .. } if *p == path && *offset == FIRST_DATA_FRAME),
            "byte {flip} flipped: {err:?}"
        );
        assert_names(&err, &path);
        assert!(
            err.to_string().contains(&FIRST_DATA_FRAME.to_string()),
            "the error names the offset: {err}"
        );
    }
    // The snapshot frame that starts the segment (and the shard's history).
    let snapshot_at = BLOCK_SIZE;
    let mut damaged = whole.clone();
    damaged[snapshot_at + FRAME_HEADER_BYTES + 1] ^= 0x01;
    b.write(&name, &damaged);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::Corrupt { path: p, offset, .. } if *p == path && *offset == snapshot_at as u64),
        "snapshot byte flipped: {err:?}"
    );
    assert_names(&err, &path);
    // The segment header.
    let mut damaged = whole.clone();
    damaged[30] ^= 0x01;
    b.write(&name, &damaged);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::Corrupt { path: p, offset: 0, .. } if *p == path),
        "segment header byte flipped: {err:?}"
    );
    assert_names(&err, &path);
    b.write(&name, &whole);
    let store = open(b).expect("open the repaired store");
    assert_eq!(store.tail(1).expect("log 1").next_lsn, 2);
}

/// Frames whose checksums hold but which say what the writer never writes (it asserts the
/// same before writing): a frame durable before it was written, and an oldest snapshot that
/// trims a log above its next LSN. Each is corruption at that frame's offset.
fn frames_that_contradict_the_writer<B: Backend>(b: &mut B) {
    populate(b, &small_payloads(3));
    let name = segment(1);
    let path = b.path(&name);
    let whole = b.read(&name);

    let at = FIRST_DATA_FRAME as usize;
    let mut frame: FrameHeader = bytemuck::pod_read_unaligned(&whole[at..at + FRAME_HEADER_BYTES]);
    frame.durable_seq = frame.seq;
    let body = &whole[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + frame.body_len as usize];
    frame.crc = frame.compute_crc(body);
    let mut damaged = whole.clone();
    damaged[at..at + FRAME_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&frame));
    b.write(&name, &damaged);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::Corrupt { path: p, offset, .. } if *p == path && *offset == FIRST_DATA_FRAME),
        "a frame durable before it was written: {err:?}"
    );
    assert_names(&err, &path);

    let at = BLOCK_SIZE;
    let mut snapshot: FrameHeader =
        bytemuck::pod_read_unaligned(&whole[at..at + FRAME_HEADER_BYTES]);
    assert_eq!(
        (snapshot.count, snapshot.body_len as usize),
        (1, SNAPSHOT_ENTRY_BYTES),
        "a new store's first snapshot holds the system log alone"
    );
    let mut body =
        whole[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + SNAPSHOT_ENTRY_BYTES].to_vec();
    let trimmed_above = SnapshotEntry {
        log_id: 7,
        next_lsn: 2,
        trim_point: 5,
        fence: 0,
    };
    body.extend_from_slice(bytemuck::bytes_of(&trimmed_above));
    snapshot.count = 2;
    snapshot.body_len = body.len() as u32;
    snapshot.crc = snapshot.compute_crc(&body);
    let mut damaged = whole.clone();
    damaged[at..at + FRAME_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&snapshot));
    damaged[at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + body.len()].copy_from_slice(&body);
    b.write(&name, &damaged);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::Corrupt { path: p, offset, .. } if *p == path && *offset == BLOCK_SIZE as u64),
        "a snapshot trimming a log above its next LSN: {err:?}"
    );
    assert_names(&err, &path);

    b.write(&name, &whole);
    let store = open(b).expect("open the repaired store");
    assert_eq!(store.tail(1).expect("log 1").next_lsn, 1);
}

fn segment_under_another_name<B: Backend>(b: &mut B) {
    populate(b, &small_payloads(3));
    // The spare (segment 2) replaced by a copy of segment 1: its header names segment 1.
    let first = b.read(&segment(1));
    b.write(&segment(2), &first);
    let err = open_fails(b);
    let path = b.path(&segment(2));
    assert!(
        matches!(&err, Error::Corrupt { path: p, offset: 0, .. } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
}

fn missing_segment<B: Backend>(b: &mut B) {
    // Enough data for several segments, never trimmed.
    let payloads: Vec<Vec<u8>> = (0..60).map(|i| vec![i as u8; 3000]).collect();
    populate(b, &payloads);
    let files = b.files();
    assert!(
        files.len() >= 4,
        "several segments and a spare: {:?}",
        files.keys()
    );
    // One in the middle.
    let name = segment(2);
    let kept = b.read(&name);
    b.remove(&name);
    let err = open_fails(b);
    let path = b.path(&name);
    assert!(
        matches!(&err, Error::Corrupt { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
    b.write(&name, &kept);
    // The oldest: its records were never trimmed, so they must not vanish silently.
    let name = segment(1);
    let kept = b.read(&name);
    b.remove(&name);
    let err = open_fails(b);
    assert!(matches!(&err, Error::Corrupt { .. }), "{err:?}");
    assert_names(&err, &b.path(&segment(2)));
    b.write(&name, &kept);
    let store = open(b).expect("open the restored store");
    assert_eq!(store.tail(3).expect("log 3").next_lsn, 20);
}

// ---------------------------------------------------------------------------------------------
// After a clean stop: nothing is a torn tail
// ---------------------------------------------------------------------------------------------

/// Segments large enough for 64 KiB of damage inside the newest one.
const LARGE_SEGMENT_BYTES: u64 = 1 << 20;

/// Each append of `payloads` as its own frame (synced one by one) to logs 1, 2, 3 in turn, in
/// a store with `segment_bytes` segments, then a clean stop (`Store::close`).
fn populate_and_close<B: Backend>(b: &mut B, payloads: &[Vec<u8>], segment_bytes: u64) {
    let config = StoreConfig {
        segment_bytes,
        ..config()
    };
    let mut store = Store::open(b.io(), &b.dir(), config, b.clock()).expect("open a new store");
    let mut acks = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        store
            .append(1 + i as u64 % 3, 1, &[Record::new(p)], i as u64)
            .expect("append");
        store.sync_all(&mut acks).expect("sync");
    }
    store.close(&mut acks).expect("close");
    assert_eq!(acks.len(), payloads.len());
    assert!(b.files().contains_key(CLEAN_STOP_FILE));
}

/// Where the frames of segment `id` (its bytes) end: each frame's header says how long it is,
/// and the first block that is not a valid frame of the segment is the end.
fn committed_end(bytes: &[u8], id: u64) -> u64 {
    let mut at = BLOCK_SIZE;
    loop {
        let Some(head) = bytes.get(at..at + FRAME_HEADER_BYTES) else {
            return at as u64;
        };
        let header: FrameHeader = bytemuck::pod_read_unaligned(head);
        let end = at + FRAME_HEADER_BYTES + header.body_len as usize;
        if header.magic != FRAME_MAGIC
            || end > bytes.len()
            || check_frame(&bytes[at..end], id).is_err()
        {
            return at as u64;
        }
        at += block_align(end - at);
    }
}

/// The store reopens whole: every record of the logs `populate_and_close` wrote is there.
fn reopens_whole<B: Backend>(b: &mut B, payloads: &[Vec<u8>]) -> Store<B::Io> {
    let mut store = open(b).expect("open the intact store");
    for log in 1..=3u64 {
        let want: Vec<&Vec<u8>> = payloads.iter().skip(log as usize - 1).step_by(3).collect();
        let tail = store.tail(log).expect("the log");
        assert_eq!(tail.next_lsn, want.len() as u64, "log {log}");
        let got = store.read(log, 0, 1000, 1 << 20).expect("read");
        let got: Vec<&Vec<u8>> = got.iter().map(|r| &r.payload).collect();
        assert_eq!(got, want, "log {log}");
    }
    store
}

fn damage_at_the_end_after_a_clean_stop<B: Backend>(b: &mut B) {
    // 40 frames of one 3000-byte record each (a frame is one 4 KiB block).
    let payloads: Vec<Vec<u8>> = (0..40).map(|i| random_bytes(i, 3000)).collect();
    populate_and_close(b, &payloads, LARGE_SEGMENT_BYTES);
    let name = segment(1);
    let path = b.path(&name);
    let whole = b.read(&name);
    let end = committed_end(&whole, 1);
    assert_eq!(end, FIRST_DATA_FRAME + 40 * BLOCK_SIZE as u64);
    let end = end as usize;
    // (what, damaged bytes, where the chain of committed frames must be reported broken)
    let zero = |from: usize| {
        let mut damaged = whole.clone();
        damaged[from..end].fill(0);
        damaged
    };
    let mut flipped = whole.clone();
    flipped[end - 2000] ^= 0x01;
    for (what, damaged, at) in [
        ("the last 4 KiB zeroed", zero(end - 4096), end - 4096),
        ("the last 64 KiB zeroed", zero(end - 65536), end - 65536),
        (
            "a byte 2,000 bytes before the end flipped",
            flipped,
            end - 4096,
        ),
    ] {
        b.write(&name, &damaged);
        let err = open_fails(b);
        assert!(
            matches!(&err, Error::Corrupt { path: p, offset, .. } if *p == path && *offset == at as u64),
            "{what}: {err:?}"
        );
        assert_names(&err, &path);
        assert!(err.to_string().contains("stopped cleanly"), "{what}: {err}");
    }
    // Undamaged, it opens with every record and cuts nothing; appends continue after them.
    b.write(&name, &whole);
    let mut store = reopens_whole(b, &payloads);
    let report = store.recovery_report().clone();
    assert!(
        report.clean_stop && report.torn_tail.is_none(),
        "{report:?}"
    );
    assert!(
        !b.files().contains_key(CLEAN_STOP_FILE),
        "the record is used once"
    );
    let mut acks = Vec::new();
    let lsns = store
        .append(1, 2, &[Record::new(b"after")], 99)
        .expect("append");
    assert_eq!(lsns, 14..15);
    store.close(&mut acks).expect("close");
    let store = open(b).expect("reopen");
    assert_eq!(store.tail(1).expect("log 1").next_lsn, 15);
    assert!(store.recovery_report().clean_stop);
}

fn newest_segment_lost_after_a_clean_stop<B: Backend>(b: &mut B) {
    let payloads: Vec<Vec<u8>> = (0..60).map(|i| vec![i as u8; 3000]).collect();
    populate_and_close(b, &payloads, SEGMENT_BYTES);
    let names: Vec<String> = b
        .files()
        .into_keys()
        .filter(|n| n.ends_with(".seg"))
        .collect();
    assert!(names.len() >= 4, "several segments and a spare: {names:?}");
    // The newest segment and the spare after it are gone: the ids left are contiguous.
    let newest = names.len() as u64 - 1;
    b.remove(&segment(newest + 1));
    b.remove(&segment(newest));
    let err = open_fails(b);
    let path = b.path(&segment(newest - 1));
    assert!(
        matches!(&err, Error::Corrupt { path: p, .. } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
}

fn damaged_clean_stop_record<B: Backend>(b: &mut B) {
    let payloads = small_payloads(10);
    populate_and_close(b, &payloads, SEGMENT_BYTES);
    let path = b.path(CLEAN_STOP_FILE);
    let record = b.read(CLEAN_STOP_FILE);
    assert_eq!(record.len(), BLOCK_SIZE);
    // A flipped byte: the record cannot be trusted, and it is the only witness.
    let mut damaged = record.clone();
    damaged[17] ^= 0x01;
    b.write(CLEAN_STOP_FILE, &damaged);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::Corrupt { path: p, offset: 0, .. } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
    // A newer version of the record (with a correct checksum).
    let mut newer: CleanStop = bytemuck::pod_read_unaligned(&record[..64]);
    newer.version = CLEAN_STOP_VERSION + 1;
    newer.crc = newer.compute_crc();
    let mut bytes = record.clone();
    bytes[..64].copy_from_slice(bytemuck::bytes_of(&newer));
    b.write(CLEAN_STOP_FILE, &bytes);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::UnsupportedVersion { path: p, .. } if *p == path),
        "{err:?}"
    );
    // Empty or zero (a crash cut the close short): as after a crash, and nothing is lost.
    for cut_short in [Vec::new(), vec![0u8; BLOCK_SIZE]] {
        b.write(CLEAN_STOP_FILE, &cut_short);
        let store = reopens_whole(b, &payloads);
        assert!(!store.recovery_report().clean_stop);
        assert!(!b.files().contains_key(CLEAN_STOP_FILE));
    }
    // A stale record (frames were written after it): it does not belong to these segments.
    let mut store = open(b).expect("open");
    let mut acks = Vec::new();
    store
        .append(2, 1, &[Record::new(b"later")], 1)
        .expect("append");
    store.sync_all(&mut acks).expect("sync");
    drop(store);
    b.write(CLEAN_STOP_FILE, &record);
    let err = open_fails(b);
    assert!(
        matches!(&err, Error::Corrupt { path: p, offset: 0, .. } if *p == path),
        "{err:?}"
    );
    assert_names(&err, &path);
}

// ---------------------------------------------------------------------------------------------
// Bad API calls
// ---------------------------------------------------------------------------------------------

fn bad_api_calls<B: Backend>(b: &mut B) {
    let mut store = open(b).expect("open");
    let mut acks = Vec::new();
    let good = b"good".to_vec();
    store
        .append(1, 1, &[Record::new(&good)], 1)
        .expect("append");
    store.sync_all(&mut acks).expect("sync");
    let tail = store.tail(1).expect("log 1");

    // A record over the limit.
    let big = vec![1u8; RECORD_BYTES_MAX + 1];
    let err = store
        .append(1, 1, &[Record::new(&good), Record::new(&big)], 2)
        .expect_err("oversized record");
    assert!(
        matches!(err, Error::TooLarge { len, max } if len == big.len() && max == RECORD_BYTES_MAX),
        "{err:?}"
    );
    // A batch over the limit (each record within it).
    let fits = vec![2u8; RECORD_BYTES_MAX];
    let batch: Vec<Record<'_>> = (0..8).map(|_| Record::new(&fits)).collect();
    let err = store.append(1, 1, &batch, 3).expect_err("oversized batch");
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    // A payload that does not match its checksum.
    let wrong = Record {
        payload: &b"tampered"[..],
        crc: Record::new(b"original").crc,
    };
    let err = store
        .append(1, 1, &[Record::new(&good), wrong], 4)
        .expect_err("bad checksum");
    assert!(matches!(err, Error::Checksum { index: 1 }), "{err:?}");
    // No records.
    let err = store.append(1, 1, &[], 5).expect_err("empty batch");
    assert!(matches!(err, Error::EmptyBatch), "{err:?}");
    // The reserved log.
    let err = store
        .append(SYSTEM_LOG, 1, &[Record::new(&good)], 6)
        .expect_err("reserved log");
    assert!(matches!(err, Error::ReservedLog(SYSTEM_LOG)), "{err:?}");
    let err = store
        .trim(SYSTEM_LOG, 0, 7)
        .expect_err("trim of the reserved log");
    assert!(
        matches!(
            err,
            Error::ReservedLog(SYSTEM_LOG) | Error::UnknownLog(SYSTEM_LOG)
        ),
        "{err:?}"
    );
    // None of them created a log or took an LSN.
    assert_eq!(store.tail(1), Some(tail));
    for log in [2, SYSTEM_LOG] {
        assert_eq!(store.tail(log), None, "log {log}");
    }
    let err = store
        .append(2, 1, &[Record::new(&big)], 8)
        .expect_err("oversized record");
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert_eq!(store.tail(2), None, "a refused first append creates no log");

    // Trims beyond the tail, and of unknown logs.
    let err = store
        .trim(1, tail.next_lsn + 1, 9)
        .expect_err("trim beyond the tail");
    assert!(
        matches!(err, Error::TrimBeyondTail { before, tail: t } if before == tail.next_lsn + 1 && t == tail.next_lsn),
        "{err:?}"
    );
    let err = store.trim(77, 0, 10).expect_err("trim of an unknown log");
    assert!(matches!(err, Error::UnknownLog(77)), "{err:?}");
    // Reads of unknown logs, and below the trim point.
    let err = store.read(77, 0, 10, 1000).expect_err("unknown log");
    assert!(matches!(err, Error::UnknownLog(77)), "{err:?}");
    let more: Vec<Vec<u8>> = (0..5).map(|i| vec![i; 10]).collect();
    let records: Vec<Record<'_>> = more.iter().map(|p| Record::new(p)).collect();
    store.append(1, 1, &records, 11).expect("append");
    store.trim(1, 3, 12).expect("trim");
    let err = store
        .read(1, 2, 10, 1000)
        .expect_err("read below the trim point");
    assert!(matches!(err, Error::Trimmed { trim_point: 3 }), "{err:?}");
    store.sync_all(&mut acks).expect("sync");
    let err = store
        .read(1, 0, 10, 1000)
        .expect_err("read below the trim point");
    assert!(matches!(err, Error::Trimmed { trim_point: 3 }), "{err:?}");
    // Every refusal is final and says what is wrong.
    for err in [
        Error::TooLarge { len: 5, max: 4 },
        Error::Checksum { index: 1 },
        Error::EmptyBatch,
        Error::ReservedLog(SYSTEM_LOG),
        Error::UnknownLog(77),
        Error::Trimmed { trim_point: 3 },
        Error::TrimBeyondTail { before: 9, tail: 8 },
    ] {
        assert!(!err.is_retryable(), "{err}");
        assert!(!err.to_string().is_empty());
    }

    // After all that, the store holds exactly the good appends.
    let tail = store.tail(1).expect("log 1");
    assert_eq!((tail.next_lsn, tail.trim_point), (6, 3));
    drop(store);
    let mut store = open(b).expect("reopen");
    let mut ids: Vec<u64> = store.log_ids().collect();
    ids.sort_unstable();
    assert_eq!(ids, [1]);
    assert_eq!(store.tail(1), Some(tail));
    let got: Vec<Vec<u8>> = store
        .read(1, 3, 10, 1 << 20)
        .expect("read")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, more[2..].to_vec());
}

fn bad_config<B: Backend>(b: &mut B) {
    let bad = [
        StoreConfig {
            batch_bytes_max: (16 << 10) + 1,
            ..config()
        },
        StoreConfig {
            segment_bytes: SEGMENT_BYTES + 1,
            ..config()
        },
        StoreConfig {
            segment_bytes: 16 << 10,
            ..config()
        },
        StoreConfig {
            writes_in_flight_max: 0,
            ..config()
        },
        StoreConfig {
            write_buffers: 2,
            ..config()
        },
        StoreConfig {
            record_bytes_max: 16 << 10,
            ..config()
        },
    ];
    for config in bad {
        let io = b.io();
        let err = Store::open(io, &b.dir(), config.clone(), b.clock())
            .expect_err("an invalid configuration is refused");
        assert!(matches!(err, Error::Config(_)), "{config:?}: {err:?}");
        assert!(
            b.files().is_empty(),
            "a refused configuration writes nothing"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Both backends
// ---------------------------------------------------------------------------------------------

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sim {
            $(
                #[test]
                fn $case() {
                    super::$case(&mut super::Sim::new());
                }
            )*
        }
        mod real {
            $(
                #[test]
                fn $case() {
                    super::$case(&mut super::Real::new());
                }
            )*
        }
    };
}

on_both_backends!(
    stray_file,
    segment_of_random_bytes,
    truncated_segment,
    segment_from_a_newer_format,
    flipped_byte_in_a_committed_frame,
    frames_that_contradict_the_writer,
    missing_segment,
    segment_under_another_name,
    damage_at_the_end_after_a_clean_stop,
    newest_segment_lost_after_a_clean_stop,
    damaged_clean_stop_record,
    bad_api_calls,
    bad_config,
);
