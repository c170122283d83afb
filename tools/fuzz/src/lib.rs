//! What the fuzz targets (`fuzz_targets/`) and the corpus they start from
//! (`src/bin/seed_corpus.rs`) share: how a target reads its input, and the valid files a
//! corpus starts from. The targets live in ARCHITECTURE.md's "Fuzzing" section; how to run
//! them is in the README.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chainlog_storage::format::{
    block_align, FrameHeader, SegmentHeader, BLOCK_SIZE, FRAME_HEADER_BYTES, FRAME_MAGIC,
};
use chainlog_storage::{
    Ack, AppendOptions, Batch, DurabilityMode, FaultConfig, Record, SimDisk, SimIo, Store,
    StoreConfig,
};

/// The segments of a fuzzed store: small, so that an input can be a whole one.
pub const SEGMENT_BYTES: u64 = 64 << 10;

/// The store the `segment` target opens, as the seed's store was written.
pub fn store_config() -> StoreConfig {
    StoreConfig {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: 16 << 10,
        record_bytes_max: 4 << 10,
        writes_in_flight_max: 2,
        write_buffers: 6,
        logs_max: 16,
        writers_max: 4,
        durability: DurabilityMode::Fdatasync,
        calibration_writes: 2,
    }
}

/// The directory of the fuzzed store on its simulated disk.
pub fn store_dir() -> PathBuf {
    PathBuf::from("/fuzz/store")
}

/// The file of segment `id` in `dir`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// A backend on `disk` that completes everything within a simulated microsecond.
pub fn sim_io(disk: &SimDisk) -> SimIo {
    disk.io(FaultConfig {
        seed: 1,
        latency_us_max: 1,
        ..FaultConfig::default()
    })
}

/// Opens the store in [`store_dir`] on `disk`.
pub fn open_store(disk: &SimDisk) -> chainlog_storage::Result<Store<SimIo>> {
    Store::open(
        sim_io(disk),
        &store_dir(),
        store_config(),
        Arc::new(disk.clock()),
    )
}

/// Sets the checksums of a segment's header and of every frame header found where the
/// previous frame ends (with a length that fits), so that mutations of a segment reach the
/// parsers behind the checksums instead of stopping at them.
pub fn fix_checksums(segment: &mut [u8]) {
    let header_bytes = std::mem::size_of::<SegmentHeader>();
    if segment.len() < header_bytes {
        return;
    }
    let mut header: SegmentHeader = bytemuck::pod_read_unaligned(&segment[..header_bytes]);
    header.crc = header.compute_crc();
    segment[..header_bytes].copy_from_slice(bytemuck::bytes_of(&header));
    let mut offset = BLOCK_SIZE;
    while offset + FRAME_HEADER_BYTES <= segment.len() {
        let mut frame: FrameHeader =
            bytemuck::pod_read_unaligned(&segment[offset..offset + FRAME_HEADER_BYTES]);
        let end = offset + FRAME_HEADER_BYTES + frame.body_len as usize;
        if frame.magic != FRAME_MAGIC || end > segment.len() {
            return;
        }
        frame.crc = frame.compute_crc(&segment[offset + FRAME_HEADER_BYTES..end]);
        segment[offset..offset + FRAME_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&frame));
        offset += block_align(FRAME_HEADER_BYTES + frame.body_len as usize);
    }
}

/// A store's one segment, written as the node writes one (records of three logs in batches,
/// with fencing raises, idempotency keys and a trim), up to its last frame: the `segment`
/// target's seed.
pub fn written_segment() -> Vec<u8> {
    let disk = SimDisk::new();
    let mut store = open_store(&disk).expect("a new store opens");
    let payloads: Vec<Vec<u8>> = (0..24u8).map(|i| vec![i; 1 + usize::from(i) * 7]).collect();
    let mut acks: Vec<Ack> = Vec::new();
    for (i, chunk) in payloads.chunks(3).enumerate() {
        let records: Vec<Record<'_>> = chunk.iter().map(|p| Record::new(p)).collect();
        let i = i as u64;
        let options = AppendOptions {
            fencing_token: (i % 3 == 1).then_some(i),
            writer: i.is_multiple_of(2).then_some((7 + i % 3, i)),
            ..AppendOptions::default()
        };
        store
            .append_batch(1 + i % 3, 1, &options, Batch::Records(&records), false, i)
            .expect("appended");
        store.poll(true, &mut acks).expect("polled");
    }
    store.trim(1, 2, 99).expect("trimmed");
    while acks.len() < 9 {
        store.poll(true, &mut acks).expect("polled");
    }
    drop(store);
    let mut bytes = disk
        .read_file(&segment_path(&store_dir(), 1))
        .expect("the first segment");
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes.truncate(block_align(end));
    bytes
}

/// The controller's state file header: magic, version, reserved, body length, CRC32C of the
/// body (`chainlog::controller::store`).
const STATE_HEADER_BYTES: usize = 16;

/// Sets a state file's body length and checksum to its body's, so that mutations reach the
/// JSON and the state's consistency checks.
pub fn fix_state_checksum(file: &mut [u8]) {
    if file.len() < STATE_HEADER_BYTES {
        return;
    }
    let (header, body) = file.split_at_mut(STATE_HEADER_BYTES);
    header[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[12..16].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
}

/// A controller's state file: four nodes in two zones, logs of replication factor 1 to 3,
/// one sealed and extended to a shorter chain with a learner, one being sealed, one
/// deleted, a node drained.
pub fn written_state() -> Vec<u8> {
    use chainlog::controller::state::Target;
    use std::time::{Duration, Instant};
    let now = Instant::now();
    let mut state = chainlog::controller::ClusterState::new(Duration::from_millis(500));
    for node in 1..=4u64 {
        let zone = if node.is_multiple_of(2) { "a" } else { "b" };
        state
            .register(node, &format!("10.0.0.{node}:7400"), 2, zone, "r1", now)
            .expect("registered");
    }
    let mut ids = Vec::new();
    for (i, rf) in [1u8, 2, 3, 3, 2].into_iter().enumerate() {
        let created = state
            .create_log(&format!("log-{i}"), rf, now)
            .expect("created");
        ids.push(created.log_id);
    }
    let log = state.log(ids[2]).expect("created").current().clone();
    state.begin_seal(ids[2], log.epoch).expect("begun");
    let survivors: Vec<(u64, u64)> = log.chain[..2].iter().map(|&n| (n, 10)).collect();
    state
        .extend(ids[2], log.epoch, &survivors, 2, Target::Auto, now)
        .expect("extended");
    let chain = state.log(ids[2]).expect("created").current().chain.clone();
    let spare = (1..=4).find(|n| !chain.contains(n)).expect("a spare node");
    state.add_learner(ids[2], spare, now).expect("a learner");
    let epoch = state.log(ids[3]).expect("created").current().epoch;
    state.begin_seal(ids[3], epoch).expect("begun");
    state.delete_log(ids[4]).expect("deleted");
    state.drain(4, true).expect("drained");
    let dir = tempdir();
    let (store, _) = chainlog::controller::StateStore::open(&dir).expect("a state store");
    store.save(&state).expect("saved");
    let bytes = std::fs::read(store.path()).expect("the state file");
    drop(store);
    std::fs::remove_dir_all(&dir).expect("removed");
    bytes
}

/// A new directory under the system's temporary directory.
fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chainlog-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// A shard's catalog files in memory: what a target loads, and what the catalog writes back.
#[derive(Debug, Default)]
pub struct MemCatalog {
    pub snapshot: Option<Vec<u8>>,
    pub changes: Vec<u8>,
}

/// A handle to a [`MemCatalog`] that [`chainlog::node::catalog::Catalog::load`] takes.
#[derive(Debug)]
pub struct MemCatalogFile(pub std::rc::Rc<std::cell::RefCell<MemCatalog>>);

impl chainlog::node::catalog::CatalogFile for MemCatalogFile {
    fn path(&self) -> &Path {
        Path::new("/fuzz/catalog")
    }

    fn read(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.borrow().snapshot.clone())
    }

    fn read_changes(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(self.0.borrow().changes.clone())
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.borrow_mut().changes.extend_from_slice(bytes);
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut files = self.0.borrow_mut();
        files.snapshot = Some(bytes.to_vec());
        files.changes.clear();
        Ok(())
    }
}

/// Sets the checksums of a catalog snapshot (its last four bytes: the CRC32C of everything
/// before) and of every whole record of a change log (body length, CRC32C of the body, body),
/// so that mutations reach the entries' parsers.
pub fn fix_catalog_checksums(files: &mut MemCatalog) {
    if let Some(snapshot) = files.snapshot.as_mut().filter(|s| s.len() >= 4) {
        let at = snapshot.len() - 4;
        let (body, crc) = snapshot.split_at_mut(at);
        crc.copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    }
    let changes = &mut files.changes;
    let mut at = 0;
    while at + 8 <= changes.len() {
        let len = u32::from_le_bytes(changes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + 8)
            .checked_add(len)
            .filter(|&end| end <= changes.len())
        else {
            return;
        };
        let crc = crc32c::crc32c(&changes[at + 8..end]);
        changes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// A shard's catalog as a cluster node keeps it: a snapshot and the changes since (creates,
/// an install of a new epoch's chain, a seal, a delete).
pub fn written_catalog() -> MemCatalog {
    use chainlog::node::catalog::{Catalog, LogEntry, StoreLogs};
    let files = std::rc::Rc::new(std::cell::RefCell::new(MemCatalog::default()));
    let store = StoreLogs {
        new: true,
        log_ids: Vec::new(),
    };
    let mut catalog =
        Catalog::load(Box::new(MemCatalogFile(files.clone())), &store).expect("a new catalog");
    for i in 0..4u64 {
        catalog.create(
            100 + i,
            LogEntry {
                name: format!("log-{i}"),
                replication_factor: 3,
                epoch: 1,
                chain: vec![1, 2, 3],
                sealed: false,
            },
        );
    }
    catalog.sync().expect("synced");
    let entry = LogEntry {
        name: "log-1".into(),
        replication_factor: 3,
        epoch: 2,
        chain: vec![2, 3, 4],
        sealed: false,
    };
    catalog.install(101, entry).expect("installed");
    catalog.seal(102, 1).expect("sealed");
    catalog.delete(103).expect("deleted");
    catalog.sync().expect("synced");
    drop(catalog);
    std::rc::Rc::try_unwrap(files)
        .expect("the catalog is gone")
        .into_inner()
}
