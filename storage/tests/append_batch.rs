//! `Store::append_batch`: records already in the wire layout (copied once and stamped in
//! place), conditional appends (`expected_lsn`), fencing tokens and idempotency keys, on the
//! simulator.

use std::path::Path;
use std::sync::Arc;

use chainlog_storage::format::{record_bytes, RecordHeader, RECORD_HEADER_BYTES};
use chainlog_storage::{
    Ack, AppendOptions, Batch, DurabilityMode, Error, FaultConfig, Record, SimDisk, SimIo, Store,
    StoreConfig,
};

mod common;
use common::assert_res;

const DIR: &str = "/sim/shard";

fn open(disk: &SimDisk, seed: u64) -> Store<SimIo> {
    let config = StoreConfig {
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        record_bytes_max: 16 << 10,
        logs_max: 16,
        writers_max: 8,
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

/// A conditional append at `lsn`.
fn at(lsn: u64) -> AppendOptions {
    AppendOptions {
        expected_lsn: Some(lsn),
        ..AppendOptions::default()
    }
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
            &AppendOptions::default(),
            Batch::Encoded {
                bytes: &encoded,
                count: 3,
            },
            false,
            10,
        )
        .map(|(lsns, _)| lsns)
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
        store
            .append_batch(5, 1, &at(1), Batch::Records(&one), false, 1)
            .map(|(lsns, _)| lsns),
        Err(Error::ConditionFailed { tail: 0 })
    ));
    assert_eq!(store.tail(5), None, "a failed condition creates no log");
    assert_eq!(
        store
            .append_batch(5, 1, &at(0), Batch::Records(&one), false, 2)
            .map(|(lsns, _)| lsns)
            .expect("at 0"),
        0..1
    );
    assert_eq!(
        store
            .append_batch(5, 1, &at(1), Batch::Records(&one), false, 3)
            .map(|(lsns, _)| lsns)
            .expect("at 1"),
        1..2
    );
    assert!(matches!(
        store
            .append_batch(5, 1, &at(1), Batch::Records(&one), false, 4)
            .map(|(lsns, _)| lsns),
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
        let result = store
            .append_batch(
                1,
                1,
                &AppendOptions::default(),
                Batch::Encoded {
                    bytes,
                    count: *count,
                },
                false,
                1,
            )
            .map(|(lsns, _)| lsns);
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
        store
            .append_batch(
                1,
                1,
                &AppendOptions::default(),
                Batch::Encoded {
                    bytes: &bad_crc,
                    count: 2
                },
                false,
                1
            )
            .map(|(lsns, _)| lsns),
        Err(Error::Checksum { index: 1 })
    ));
    assert_eq!(store.tail(1), None, "nothing was appended");
    assert_eq!(
        store
            .append_batch(
                1,
                1,
                &AppendOptions::default(),
                Batch::Encoded {
                    bytes: &good,
                    count: 2
                },
                false,
                2
            )
            .map(|(lsns, _)| lsns)
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

fn fenced(token: u64) -> AppendOptions {
    AppendOptions {
        fencing_token: Some(token),
        ..AppendOptions::default()
    }
}

fn keyed(writer_id: u64, seq: u64) -> AppendOptions {
    AppendOptions {
        writer: Some((writer_id, seq)),
        ..AppendOptions::default()
    }
}

#[test]
fn fencing_tokens_only_rise_and_survive_reopen() {
    let disk = SimDisk::new();
    let mut store = open(&disk, 5);
    let one = [Record::new(b"x")];
    let append = |store: &mut Store<SimIo>, options: &AppendOptions| {
        store
            .append_batch(9, 1, options, Batch::Records(&one), false, 0)
            .map(|(lsns, _)| lsns)
    };
    assert_res!(append(&mut store, &AppendOptions::default()), Ok(0..1));
    assert_res!(append(&mut store, &fenced(5)), Ok(1..2), "raises the token");
    assert_eq!(store.tail(9).expect("log").fencing_token, 5);
    assert_res!(append(&mut store, &fenced(5)), Ok(2..3), "an equal token");
    assert_res!(
        append(&mut store, &fenced(4)),
        Err(Error::Fenced { token: 5 })
    );
    assert_res!(
        append(&mut store, &AppendOptions::default()),
        Ok(3..4),
        "appends without a token are not fenced"
    );
    // A refused append (here its condition) does not raise the token.
    let conditional = AppendOptions {
        expected_lsn: Some(0),
        fencing_token: Some(9),
        ..AppendOptions::default()
    };
    assert_res!(
        append(&mut store, &conditional),
        Err(Error::ConditionFailed { tail: 4 })
    );
    assert_eq!(store.tail(9).expect("log").fencing_token, 5);
    store.sync_all(&mut Vec::new()).expect("sync");
    drop(store);
    let mut store = open(&disk, 6);
    assert_eq!(store.tail(9).expect("log").fencing_token, 5);
    assert_res!(
        append(&mut store, &fenced(4)),
        Err(Error::Fenced { token: 5 })
    );
    assert_res!(append(&mut store, &fenced(6)), Ok(4..5));
}

#[test]
fn a_retried_batch_gets_its_original_lsns_in_ack_order() {
    let disk = SimDisk::new();
    let mut store = open(&disk, 7);
    let a = [Record::new(b"a")];
    let bc = [Record::new(b"b"), Record::new(b"c")];
    let mut acks = Vec::new();
    // The original and its retry before anything is durable: the retry is acked after it.
    assert_res!(
        store
            .append_batch(1, 1, &keyed(7, 1), Batch::Records(&bc), false, 1)
            .map(|(lsns, _)| lsns),
        Ok(0..2)
    );
    assert_res!(
        store
            .append_batch(
                2,
                1,
                &AppendOptions::default(),
                Batch::Records(&a),
                false,
                2
            )
            .map(|(lsns, _)| lsns),
        Ok(0..1)
    );
    assert_res!(
        store
            .append_batch(1, 1, &keyed(7, 1), Batch::Records(&a), false, 3)
            .map(|(lsns, _)| lsns),
        Ok(0..2)
    );
    store.sync_all(&mut acks).expect("sync");
    let order: Vec<(u64, u64, std::ops::Range<u64>)> = acks
        .iter()
        .map(|a| (a.token, a.log_id, a.lsns.clone()))
        .collect();
    assert_eq!(order, [(1, 1, 0..2), (2, 2, 0..1), (3, 1, 0..2)]);
    assert_eq!(payloads_of(&mut store, 1), [b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(store.metrics().duplicates, 1);
    // A retry of a durable batch is acknowledged at the next poll; a new sequence number
    // appends; an old one that is not remembered is refused; other writers are independent.
    assert_res!(
        store
            .append_batch(1, 1, &keyed(7, 1), Batch::Records(&a), false, 4)
            .map(|(lsns, _)| lsns),
        Ok(0..2)
    );
    acks.clear();
    store.poll(false, &mut acks).expect("poll");
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].token, acks[0].lsns.clone()), (4, 0..2));
    assert_res!(
        store
            .append_batch(1, 1, &keyed(7, 5), Batch::Records(&a), false, 5)
            .map(|(lsns, _)| lsns),
        Ok(2..3)
    );
    assert_res!(
        store
            .append_batch(1, 1, &keyed(7, 3), Batch::Records(&a), false, 6)
            .map(|(lsns, _)| lsns),
        Err(Error::WriterSeq { seq: 3, last: 5 })
    );
    assert_res!(
        store
            .append_batch(1, 1, &keyed(8, 1), Batch::Records(&a), false, 7)
            .map(|(lsns, _)| lsns),
        Ok(3..4)
    );
    store.sync_all(&mut Vec::new()).expect("sync");
    // The keys survive a reopen.
    drop(store);
    let mut store = open(&disk, 8);
    assert_res!(
        store
            .append_batch(1, 1, &keyed(7, 1), Batch::Records(&a), false, 8)
            .map(|(lsns, _)| lsns),
        Ok(0..2)
    );
    assert_res!(
        store
            .append_batch(1, 1, &keyed(7, 5), Batch::Records(&a), false, 9)
            .map(|(lsns, _)| lsns),
        Ok(2..3)
    );
    assert_res!(
        store
            .append_batch(1, 1, &keyed(8, 1), Batch::Records(&a), false, 10)
            .map(|(lsns, _)| lsns),
        Ok(3..4)
    );
    assert_eq!(
        store.tail(1).expect("log").next_lsn,
        4,
        "nothing appended twice"
    );
}
