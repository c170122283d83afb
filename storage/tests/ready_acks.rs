//! `Store::poll` hands out acknowledgements that are ready without waiting for a completion.
//!
//! A retried batch whose records are all durable is acknowledged at once (the store has
//! nothing to write for it). Its owner shares the ring with operations of its own that may not
//! complete for a long time (a node's accept and socket receives): before this was fixed, the
//! next `poll(true)` waited for one of those, and a node answered such a retry only at its
//! next timer, up to a second later, holding up every later answer on the connection (issue
//! 16, P3). Here the owner's operation is one that never completes: the backend below stands
//! for a ring where it is in flight, and fails the test if the store waits for it.

use std::path::Path;
use std::sync::Arc;

use chainlog_storage::buf::AlignedBuf;
use chainlog_storage::io::{Completion, FileId};
use chainlog_storage::{
    Ack, AppendOptions, Batch, Durability, DurabilityMode, FaultConfig, Io, Record, SimDisk, SimIo,
    Store, StoreConfig,
};

/// The simulator's backend, plus (once `owner_pending`) one operation of the store's owner in
/// flight that never completes.
#[derive(Debug)]
struct WithOwnerOp {
    inner: SimIo,
    owner_pending: bool,
}

impl Io for WithOwnerOp {
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
        self.inner.close(file);
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
        self.inner.write(file, offset, buf, durability, token);
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        self.inner.read(file, offset, buf, token);
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.inner.sync(file, token);
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> std::io::Result<()> {
        assert!(
            !(min_complete > 0 && self.owner_pending && self.inner.in_flight() == 0),
            "the store waits for a completion while only its owner's operation is in flight \
             (on a real ring: until that operation completes, however long that is)"
        );
        self.inner.wait(min_complete, out)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight() + usize::from(self.owner_pending)
    }
}

#[test]
fn a_retry_of_a_durable_batch_is_handed_out_by_the_next_poll_without_waiting() {
    let disk = SimDisk::new();
    let config = StoreConfig {
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        record_bytes_max: 16 << 10,
        logs_max: 4,
        writers_max: 4,
        durability: DurabilityMode::Dsync,
        ..StoreConfig::default()
    };
    let io = WithOwnerOp {
        inner: disk.io(FaultConfig::default()),
        owner_pending: false,
    };
    let mut store =
        Store::open(io, Path::new("/sim/shard"), config, Arc::new(disk.clock())).expect("open");
    let keyed = AppendOptions {
        writer: Some((7, 1)),
        ..AppendOptions::default()
    };
    let records = [Record::new(b"one"), Record::new(b"two")];
    let mut acks: Vec<Ack> = Vec::new();
    let (lsns, _) = store
        .append_batch(1, 1, &keyed, Batch::Records(&records), false, 10)
        .expect("append");
    store.sync_all(&mut acks).expect("durable");
    assert_eq!(acks.len(), 1, "the first append is acknowledged");
    acks.clear();

    // From now on the owner has an operation in flight (a socket receive, say).
    store.io_mut().owner_pending = true;
    let (again, _) = store
        .append_batch(1, 1, &keyed, Batch::Records(&records), false, 11)
        .expect("the retry");
    assert_eq!(again, lsns, "the retry gets the original LSNs");
    store.poll(true, &mut acks).expect("poll");
    assert_eq!(
        acks.iter()
            .map(|a| (a.token, a.lsns.clone()))
            .collect::<Vec<_>>(),
        [(11, lsns)],
        "the retry's acknowledgement comes with the next poll"
    );
}
