#![no_main]
//! A shard's catalog (snapshot and change log): arbitrary files load as a catalog or fail
//! with a typed error; never a panic. A catalog that loads reloads as the same catalog from
//! what it wrote back (a load that drops a change cut short compacts at once). The input:
//! a mode byte (bit 0: set the checksums right first; bit 1: no snapshot file; bit 2: a
//! store that is new), the snapshot's length (u16), the snapshot, the change log.

use std::cell::RefCell;
use std::rc::Rc;

use chainlog::node::catalog::{Catalog, LogEntry, StoreLogs};
use chainlog_fuzz::{fix_catalog_checksums, MemCatalog, MemCatalogFile};
use libfuzzer_sys::fuzz_target;

/// Every entry of `catalog`, in id order.
fn entries(catalog: &Catalog) -> Vec<(u64, LogEntry)> {
    catalog
        .list(None, usize::MAX)
        .map(|(id, entry)| (id, entry.clone()))
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let Some((&[mode, a, b], rest)) = input.split_first_chunk::<3>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes([a, b])).min(rest.len());
    let mut files = MemCatalog {
        snapshot: (mode & 2 == 0).then(|| rest[..split].to_vec()),
        changes: rest[split..].to_vec(),
    };
    if mode & 1 == 1 {
        fix_catalog_checksums(&mut files);
    }
    let files = Rc::new(RefCell::new(files));
    let store = StoreLogs {
        new: mode & 4 != 0,
        log_ids: Vec::new(),
    };
    let Ok(catalog) = Catalog::load(Box::new(MemCatalogFile(files.clone())), &store) else {
        return;
    };
    let loaded = entries(&catalog);
    drop(catalog);
    let again = Catalog::load(Box::new(MemCatalogFile(files)), &store).expect("reloads");
    assert_eq!(loaded, entries(&again));
});
