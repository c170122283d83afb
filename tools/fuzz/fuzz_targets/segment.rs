#![no_main]
//! Recovery of a damaged data directory: a store opens over one segment of arbitrary bytes
//! (padded with zeros to the segment's size). It opens, or fails with a typed error; never a
//! panic. When it opens, every record of every log reads back or fails with an error. The
//! first byte picks whether the checksums are set right first, so that mutations reach the
//! frame bodies' parsers (records, snapshots, state and control records).

use chainlog_fuzz::{fix_checksums, open_store, segment_path, store_dir, SEGMENT_BYTES};
use chainlog_storage::SimDisk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let mut segment = bytes[..bytes.len().min(SEGMENT_BYTES as usize)].to_vec();
    segment.resize(SEGMENT_BYTES as usize, 0);
    if mode & 1 == 1 {
        fix_checksums(&mut segment);
    }
    let disk = SimDisk::new();
    disk.write_file(&segment_path(&store_dir(), 1), &segment);
    let Ok(mut store) = open_store(&disk) else {
        return;
    };
    let logs: Vec<u64> = store.log_ids().collect();
    for log_id in logs {
        let tail = store.tail(log_id).expect("listed");
        let mut from = tail.trim_point;
        while from < tail.next_lsn {
            match store.read_stored(log_id, from, 64, 1 << 20) {
                Ok(records) if !records.is_empty() => {
                    from = records.last().expect("not empty").lsn + 1;
                }
                _ => break,
            }
        }
    }
});
