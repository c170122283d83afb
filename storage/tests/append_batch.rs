//! `Store::append_batch`: records already in the wire layout (copied once and stamped in
//! place), and conditional appends (`expected_lsn`), on the simulator.

use std::path::Path;
use std::sync::Arc;

use chainlog_storage::format::{record_bytes, RecordHeader, RECORD_HEADER_BYTES};
use chainlog_storage::{
    Ack, Batch, DurabilityMode, Error, FaultConfig, Record, SimDisk, SimIo, Store, StoreConfig,
};

const DIR: &str = "/sim/shard";

fn open(disk: &SimDisk, seed: u64) -> Store<SimIo> {
    let config = StoreConfig {
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        record_bytes_max: 16 << 10,
        logs_max: 16,
        durability: DurabilityMode::Dsync,
        ..StoreConfig::default()
    };
    let io = disk.io(FaultConfig {
        seed,
        latency_us_max: 50,
        ..FaultConfig::default()
    });
    Store::open(io, Path::new(DIR), config, Arc::new(disk.clock())).expect("open")
}

/// Lays payloads out as a client does: header with `len` and `crc` only, payload, padding.
fn encode(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        let header = RecordHeader {
            len: p.len() as u32,
            crc: crc32c::crc32c(p),
            ..RecordHeader::default()
        };
        out.extend_from_slice(bytemuck::bytes_of(&header));
        out.extend_from_slice(p);
        out.resize(
            out.len() + record_bytes(p.len()) - RECORD_HEADER_BYTES - p.len(),
            0,
        );
    }
    out
}

fn payloads_of(store: &mut Store<SimIo>, log: u64) -> Vec<Vec<u8>> {
    store
        .read(log, 0, 1000, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

#[test]
fn encoded_batches_read_back_like_record_batches_and_survive_reopen() {
    let disk = SimDisk::new();
    let mut store = open(&disk, 1);
    let mut acks: Vec<Ack> = Vec::new();
    let a: [&[u8]; 3] = [b"", b"one", &[7u8; 1000]];
    let encoded = encode(&a);
    let lsns = store
        .append_batch(
            1,
            3,
            None,
            Batch::Encoded {
                bytes: &encoded,
                count: 3,
            },
            10,
        )
        .expect("encoded append");
    assert_eq!(lsns, 0..3);
    let lsns = store
        .append(1, 3, &[Record::new(b"plain")], 11)
        .expect("plain append");
    assert_eq!(lsns, 3..4);
    store.sync_all(&mut acks).expect("sync");
    assert_eq!(acks.iter().map(|a| a.token).collect::<Vec<_>>(), [10, 11]);
    let expected: Vec<Vec<u8>> = a
        .iter()
        .map(|p| p.to_vec())
        .chain([b"plain".to_vec()])
        .collect();
    assert_eq!(payloads_of(&mut store, 1), expected);
    let records = store.read(1, 0, 10, usize::MAX).expect("read");
    assert!(records.iter().all(|r| r.epoch == 3));
    drop(store);
    let mut store = open(&disk, 2);
    assert_eq!(payloads_of(&mut store, 1), expected);
}

#[test]
fn conditional_append_succeeds_only_at_the_tail() {
    let disk = SimDisk::new();
    let mut store = open(&disk, 3);
    let one = [Record::new(b"x")];
    assert!(matches!(
        store.append_batch(5, 1, Some(1), Batch::Records(&one), 1),
        Err(Error::ConditionFailed { tail: 0 })
    ));
    assert_eq!(store.tail(5), None, "a failed condition creates no log");
    assert_eq!(
        store
            .append_batch(5, 1, Some(0), Batch::Records(&one), 2)
            .expect("at 0"),
        0..1
    );
    assert_eq!(
        store
            .append_batch(5, 1, Some(1), Batch::Records(&one), 3)
            .expect("at 1"),
        1..2
    );
    assert!(matches!(
        store.append_batch(5, 1, Some(1), Batch::Records(&one), 4),
        Err(Error::ConditionFailed { tail: 2 })
    ));
    let mut acks = Vec::new();
    store.sync_all(&mut acks).expect("sync");
    assert_eq!(acks.iter().map(|a| a.token).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn bad_encoded_batches_are_refused_and_write_nothing() {
    let disk = SimDisk::new();
    let mut store = open(&disk, 4);
    let good = encode(&[b"abc", b"defg"]);
    let cases: Vec<(Vec<u8>, u32, &str)> = vec![
        (good.clone(), 3, "count larger than the records"),
        ([good.clone(), vec![0; 8]].concat(), 2, "trailing bytes"),
        (good[..good.len() - 8].to_vec(), 2, "truncated record"),
        (
            encode(&[&[1u8; 20 << 10]]),
            1,
            "record over record_bytes_max",
        ),
    ];
    for (bytes, count, what) in &cases {
        let result = store.append_batch(
            1,
            1,
            None,
            Batch::Encoded {
                bytes,
                count: *count,
            },
            1,
        );
        assert!(
            matches!(
                result,
                Err(Error::Malformed(_)) | Err(Error::TooLarge { .. })
            ),
            "{what}: {result:?}"
        );
    }
    let mut bad_crc = good.clone();
    let second_payload = record_bytes(3) + RECORD_HEADER_BYTES;
    bad_crc[second_payload] ^= 1;
    assert!(matches!(
        store.append_batch(
            1,
            1,
            None,
            Batch::Encoded {
                bytes: &bad_crc,
                count: 2
            },
            1
        ),
        Err(Error::Checksum { index: 1 })
    ));
    assert_eq!(store.tail(1), None, "nothing was appended");
    assert_eq!(
        store
            .append_batch(
                1,
                1,
                None,
                Batch::Encoded {
                    bytes: &good,
                    count: 2
                },
                2
            )
            .expect("good"),
        0..2
    );
    let mut acks = Vec::new();
    store.sync_all(&mut acks).expect("sync");
    assert_eq!(
        payloads_of(&mut store, 1),
        [b"abc".to_vec(), b"defg".to_vec()]
    );
}
