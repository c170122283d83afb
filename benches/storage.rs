//! Criterion benches of the storage engine's hot path: laying records into a frame and reading
//! them back (the record codec), CRC32C at the sizes the format checksums, and durable appends
//! through a real io_uring store at several batch sizes.
//!
//! Kept short (few samples, about two seconds each) so that `cargo bench` finishes in about a
//! minute and `cargo test --benches`, which runs each bench once, stays fast: these are for
//! spotting regressions side by side, not for absolute figures (BENCHMARKS.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use chainlog_storage::format::{
    block_align, check_frame, payload_crc, record_bytes, FrameHeader, FrameKind, RecordHeader,
    Records, FORMAT_VERSION, FRAME_HEADER_BYTES, FRAME_MAGIC, RECORD_HEADER_BYTES,
};
use chainlog_storage::{Record, Store, StoreConfig, SystemClock, UringIo};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Records per batch: one append alone, a typical group commit under load, a large one.
const BATCH_RECORDS: [usize; 3] = [1, 16, 256];
/// Payload bytes of each record in the codec and append benches (BENCHMARKS.md's workload).
const RECORD_BYTES: usize = 128;
const SEGMENT_ID: u64 = 7;
const LOG_ID: u64 = 1;

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Lays `records` into `frame` (header space first) as the store does: verify the client's
/// CRC, write each record header and payload padded to 8 bytes, then stamp the frame header
/// with its CRC and zero the padding to the block. Returns the frame's length on disk.
fn encode(frame: &mut [u8], records: &[Record<'_>], first_lsn: u64) -> usize {
    let mut at = FRAME_HEADER_BYTES;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(payload_crc(r.payload), r.crc, "the client's CRC is checked");
        let header = RecordHeader {
            len: r.payload.len() as u32,
            crc: r.crc,
            log_id: LOG_ID,
            lsn: first_lsn + i as u64,
            epoch: 1,
            timestamp_us: 1_767_225_600_000_000,
        };
        frame[at..at + RECORD_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
        let payload_at = at + RECORD_HEADER_BYTES;
        frame[payload_at..payload_at + r.payload.len()].copy_from_slice(r.payload);
        let end = at + record_bytes(r.payload.len());
        frame[payload_at + r.payload.len()..end].fill(0);
        at = end;
    }
    let mut header = FrameHeader {
        magic: FRAME_MAGIC,
        version: FORMAT_VERSION,
        kind: FrameKind::Data as u16,
        body_len: (at - FRAME_HEADER_BYTES) as u32,
        seq: 1,
        segment_id: SEGMENT_ID,
        count: records.len() as u32,
        ..FrameHeader::default()
    };
    header.crc = header.compute_crc(&frame[FRAME_HEADER_BYTES..at]);
    frame[..FRAME_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
    let disk = block_align(at);
    frame[at..disk].fill(0);
    disk
}

/// Reads a frame back as a reader does: check the frame's CRC, walk its records and check
/// each payload's CRC. Returns the payload bytes seen.
fn decode(frame: &[u8]) -> usize {
    let header = check_frame(frame, SEGMENT_ID).expect("a valid frame");
    let body = &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.body_len as usize];
    let mut bytes = 0;
    for record in Records::new(body, header.count) {
        let record = record.expect("well-formed records");
        assert_eq!(payload_crc(record.payload), record.header.crc);
        bytes += record.payload.len();
    }
    bytes
}

fn codec(c: &mut Criterion) {
    let payloads: Vec<Vec<u8>> = (0..BATCH_RECORDS[BATCH_RECORDS.len() - 1])
        .map(|i| payload(RECORD_BYTES, i as u8))
        .collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    let mut frame = vec![0u8; block_align(FRAME_HEADER_BYTES + records.len() * 4096)];

    let mut group = c.benchmark_group("record_encode");
    for n in BATCH_RECORDS {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| encode(black_box(&mut frame), black_box(&records[..n]), 100));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("record_decode");
    for n in BATCH_RECORDS {
        let len = encode(&mut frame, &records[..n], 100);
        assert_eq!(decode(&frame[..len]), n * RECORD_BYTES, "round trip");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| decode(black_box(&frame[..len])));
        });
    }
    group.finish();
}

fn crc32c(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for len in [128, 4 << 10, 64 << 10] {
        let data = payload(len, 3);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            b.iter(|| payload_crc(black_box(data)));
        });
    }
    group.finish();
}

/// One append call of N records of 128 B, then `sync_all` until it is durable: the latency of
/// a durable batch on this device (group commit's unit of work), on a real io_uring store.
fn store_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = StoreConfig {
        // Small segments: opening prepares (zero-fills) two of them.
        segment_bytes: 64 << 20,
        ..StoreConfig::default()
    };
    let io = UringIo::new(256).expect("io_uring");
    let mut store =
        Store::open(io, dir.path(), config, Arc::new(SystemClock::new())).expect("the store opens");
    let payloads: Vec<Vec<u8>> = (0..BATCH_RECORDS[BATCH_RECORDS.len() - 1])
        .map(|i| payload(RECORD_BYTES, i as u8))
        .collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    let mut acks = Vec::with_capacity(1);

    let mut group = c.benchmark_group("store_append_durable");
    for n in BATCH_RECORDS {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                store
                    .append(LOG_ID, 1, &records[..n], 0)
                    .expect("append accepted");
                store.sync_all(&mut acks).expect("the store stays healthy");
                assert_eq!(acks.len(), 1, "one ack per append");
                acks.clear();
            });
        });
    }
    group.finish();
    drop(store);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec, crc32c, store_append
}
criterion_main!(benches);
