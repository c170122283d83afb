//! A shard's log catalog: the names, ids and replication factors of the logs it owns, kept
//! next to the shard's store as a snapshot (`catalog`) and a log of the changes made since
//! (`catalog.changes`). A create, delete, install or seal appends one change record to the
//! change log and makes it durable (write, fdatasync) before it returns: its cost does not
//! grow with the number of logs. When the change log grows past the snapshot's size (and at
//! least [`COMPACT_BYTES_MIN`]), the whole catalog is written as a new snapshot, atomically
//! (`crate::durable_file`: temporary file, fsync, rename, directory fsync), and the change log
//! is emptied: each change is written about twice in all, and a start reads at most about
//! twice the catalog. A crash between the two leaves changes the snapshot already holds;
//! replaying them over it changes nothing (each change sets or removes one log's entry whole,
//! and they are replayed in order). The first change of a shard writes the snapshot, so a
//! catalog with changes always has one. Appends never touch either file.
//!
//! The catalog and the store must agree when a shard starts ([`Catalog::open`]): a missing
//! catalog file is a new shard only if the store holds no log; a store holding logs without
//! one (the file deleted or lost) is an error naming the file, never an empty shard that
//! answers UNKNOWN_LOG for logs whose records are all still there. Likewise a catalog next to
//! a store that has no segment (the store's data is gone) is an error, never logs that start
//! again at LSN 0. The catalog file is written first on every create (and the store's first
//! segment exists before any create), so a shard that never got that far has neither.
//!
//! A log's id is derived from its name (`chainlog_net::log_id_of`), so every shard and client can tell
//! which shard owns a name without asking anyone (the controller assigns the same ids).
//!
//! On a cluster node the catalog also keeps each log's epoch and chain as the controller
//! last gave them, so that a restarted node knows its chains before it hears from the
//! controller.
//!
//! Snapshot layout (little-endian): magic `"CLCT"` u32, version u16, reserved u16, count u32,
//! then per log an entry: log_id u64, replication_factor u8, chain_len u8, name_len u16, flags u32
//! (bit 0: the epoch is sealed here; format version 3; 0 in version 2), epoch u64, `chain_len` node ids u64 (head first; none on a standalone node), name
//! bytes; finally the CRC32C of everything before it, u32. Version 1 files (log_id u64,
//! replication_factor u8, reserved u8, name_len u16, name: standalone logs in epoch 1) are
//! still read.
//!
//! Change log layout: records one after another, each body_len u32, CRC32C of the body u32,
//! then the body: kind u8 (1: the entry that follows is the log's now, in the snapshot's
//! version 3 entry layout; 2: the log with the log_id u64 that follows is deleted). A record
//! cut short at the end of the file (a crash during its write, never acknowledged) is dropped
//! when the catalog is loaded, and the catalog is compacted at once so that no change is
//! appended after it; a record that fails its checksum with records after it is damage, an
//! error naming the file.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = u32::from_le_bytes(*b"CLCT");
const VERSION: u16 = 3;
/// Flag of a log whose epoch is sealed here (format version 3).
const FLAG_SEALED: u32 = 1;
/// The epoch of a standalone node's logs.
const STANDALONE_EPOCH: u64 = 1;
/// The change log is compacted into a new snapshot once it is larger than the snapshot and
/// than this.
pub const COMPACT_BYTES_MIN: usize = 64 << 10;
/// A change record: the entry that follows is the log's now.
const CHANGE_PUT: u8 = 1;
/// A change record: the log is deleted.
const CHANGE_DELETE: u8 = 2;
/// A change record's length and checksum.
const CHANGE_HEADER_BYTES: usize = 8;
/// The largest change record's body: kind, an entry's fixed fields, the longest chain and
/// name.
const CHANGE_BODY_MAX: usize = 1 + 24 + 8 * u8::MAX as usize + u16::MAX as usize;

/// One log of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The log's name.
    pub name: String,
    /// Replicas of each record.
    pub replication_factor: u8,
    /// The log's current epoch.
    pub epoch: u64,
    /// The epoch's chain, head first; empty on a standalone node (the node alone).
    pub chain: Vec<u64>,
    /// The epoch is sealed here (reconfiguration): nothing more is stored in it.
    pub sealed: bool,
}

impl LogEntry {
    /// A standalone node's log: one replica, epoch 1, the node alone.
    pub fn standalone(name: &str) -> LogEntry {
        LogEntry {
            name: name.to_string(),
            replication_factor: 1,
            epoch: STANDALONE_EPOCH,
            chain: Vec::new(),
            sealed: false,
        }
    }
}

/// What the shard's store holds, for checking the catalog against it when the shard starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreLogs {
    /// The store had no segment before this start: a new shard (or its data is gone).
    pub new: bool,
    /// The logs the store holds records of (deleted ones too: their records are trimmed).
    pub log_ids: Vec<u64>,
}

/// Why the catalog cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a catalog of this version, or is damaged.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file and the store disagree about whether the shard has logs: the file is missing
    /// while the store holds logs, or the store is new while the file exists.
    #[error("{}: {reason}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Where a catalog's bytes live: a snapshot, read whole and replaced whole, atomically and
/// durably (a replace that returned survives a crash; one interrupted leaves the old bytes),
/// and a change log appended to durably.
pub trait CatalogFile: Debug {
    /// The snapshot, for messages.
    fn path(&self) -> &Path;
    /// The snapshot's bytes, or `None` if there is no snapshot.
    fn read(&mut self) -> io::Result<Option<Vec<u8>>>;
    /// The change log's bytes (none if there is no change log).
    fn read_changes(&mut self) -> io::Result<Vec<u8>>;
    /// Appends `bytes` to the change log, durably.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Replaces the snapshot by `bytes`, then empties the change log, both durably.
    fn replace(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// The catalog files `catalog` and `catalog.changes` of a shard directory on the real file
/// system.
#[derive(Debug)]
pub struct FsCatalogFile {
    path: PathBuf,
    changes_path: PathBuf,
    /// The change log, open for appending once a change was appended in this process.
    changes: Option<fs::File>,
}

impl FsCatalogFile {
    /// The catalog files of the shard directory `dir` (created if missing).
    pub fn in_dir(dir: &Path) -> Result<FsCatalogFile, CatalogError> {
        fs::create_dir_all(dir).map_err(|source| CatalogError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(FsCatalogFile {
            path: dir.join("catalog"),
            changes_path: changes_path(&dir.join("catalog")),
            changes: None,
        })
    }

    /// The change log, opened (and created, durably) on first use.
    fn changes(&mut self) -> io::Result<&mut fs::File> {
        if self.changes.is_none() {
            let file = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.changes_path)?;
            // Its directory entry is durable before any change in it is taken for durable.
            let dir = self.path.parent().unwrap_or(Path::new("."));
            fs::File::open(dir)?.sync_all()?;
            self.changes = Some(file);
        }
        Ok(self.changes.as_mut().expect("opened above"))
    }
}

impl CatalogFile for FsCatalogFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read(&mut self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_changes(&mut self) -> io::Result<Vec<u8>> {
        match fs::read(&self.changes_path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self.changes()?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        crate::durable_file::replace(&self.path, bytes)?;
        let file = self.changes()?;
        file.set_len(0)?;
        file.sync_data()
    }
}

/// The logs a shard owns.
#[derive(Debug)]
pub struct Catalog {
    file: Box<dyn CatalogFile>,
    logs: BTreeMap<u64, LogEntry>,
    /// The snapshot's size (0: there is none).
    snapshot_bytes: usize,
    /// The change log's size.
    changes_bytes: usize,
    /// Change records made but not written yet ([`Catalog::create`]).
    pending: Vec<u8>,
}

impl Catalog {
    /// Loads the catalog in `dir`, checked against what the shard's `store` holds (module
    /// docs): empty if there is no file yet and the store holds no log.
    pub fn open(dir: &Path, store: &StoreLogs) -> Result<Catalog, CatalogError> {
        Catalog::load(Box::new(FsCatalogFile::in_dir(dir)?), store)
    }

    /// Loads the catalog kept in `file`, checked against what the shard's `store` holds.
    pub fn load(
        mut file: Box<dyn CatalogFile>,
        store: &StoreLogs,
    ) -> Result<Catalog, CatalogError> {
        let path = file.path().to_path_buf();
        let bytes = match file.read() {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                if let Some(&example) = store.log_ids.iter().min() {
                    return Err(CatalogError::Mismatch {
                        path,
                        reason: format!(
                            "the catalog is missing, but the shard's store holds records of {} \
                             log(s) (log id {example}, ...): restore the file (the shard does \
                             not start without it)",
                            store.log_ids.len()
                        ),
                    });
                }
                if !changes_of(&mut file, &path)?.is_empty() {
                    return Err(CatalogError::Mismatch {
                        path,
                        reason: "the catalog is missing, but its change log is there: \
                                 restore the file (the shard does not start without it)"
                            .into(),
                    });
                }
                return Ok(Catalog {
                    file,
                    logs: BTreeMap::new(),
                    snapshot_bytes: 0,
                    changes_bytes: 0,
                    pending: Vec::new(),
                });
            }
            Err(source) => return Err(CatalogError::Io { path, source }),
        };
        if store.new {
            return Err(CatalogError::Mismatch {
                path,
                reason: "the catalog exists, but the shard's store has no segment: its data \
                         is missing (the shard does not start with its logs emptied)"
                    .into(),
            });
        }
        let corrupt = |reason| CatalogError::Corrupt {
            path: path.clone(),
            reason,
        };
        let mut logs = decode(&bytes).map_err(corrupt)?;
        let changes = changes_of(&mut file, &path)?;
        let whole = replay(&changes, &mut logs).map_err(corrupt)?;
        let mut catalog = Catalog {
            file,
            logs,
            snapshot_bytes: bytes.len(),
            changes_bytes: changes.len(),
            pending: Vec::new(),
        };
        if whole < changes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = changes.len() - whole,
                "the catalog's last change was cut short (a crash while it was written, \
                 never acknowledged): dropped"
            );
            catalog.compact()?;
        }
        Ok(catalog)
    }

    /// How many logs it holds.
    pub fn len(&self) -> usize {
        self.logs.len()
    }

    /// True if it holds no log.
    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// Its size on disk: the snapshot, the change log, and the changes not written yet.
    pub fn bytes(&self) -> usize {
        self.snapshot_bytes + self.changes_bytes + self.pending.len()
    }

    /// The log with this id.
    pub fn get(&self, log_id: u64) -> Option<&LogEntry> {
        self.logs.get(&log_id)
    }

    /// Logs with ids above `after`, at most `max`, in id order.
    pub fn list(&self, after: Option<u64>, max: usize) -> impl Iterator<Item = (u64, &LogEntry)> {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.logs
            .range((from, std::ops::Bound::Unbounded))
            .take(max)
            .map(|(&id, e)| (id, e))
    }

    /// Adds a log. Returns false (and changes nothing) if its id is taken. The change is
    /// durable once [`sync`](Self::sync) returned: until then the caller lets out nothing
    /// that depends on it (an answer, a message), so the creates of one shard turn share one
    /// write and one fdatasync.
    pub fn create(&mut self, log_id: u64, entry: LogEntry) -> bool {
        if self.logs.contains_key(&log_id) {
            return false;
        }
        self.pending
            .extend_from_slice(&change_record(log_id, Some(&entry)));
        self.logs.insert(log_id, entry);
        true
    }

    /// Adds or replaces a log, durably (a cluster node installing what the controller says).
    /// Returns false (and writes nothing) if the entry is already exactly this. An error
    /// leaves the catalog unusable, as [`sync`](Self::sync)'s does.
    pub fn install(&mut self, log_id: u64, entry: LogEntry) -> Result<bool, CatalogError> {
        if self.logs.get(&log_id) == Some(&entry) {
            return Ok(false);
        }
        self.logs.insert(log_id, entry);
        self.persist(log_id)?;
        Ok(true)
    }

    /// Records, durably, that `log_id`'s epoch `epoch` is sealed here. Returns false (and
    /// writes nothing) if it was already, or if the log is not in that epoch here.
    pub fn seal(&mut self, log_id: u64, epoch: u64) -> Result<bool, CatalogError> {
        match self.logs.get(&log_id) {
            Some(entry) if entry.epoch == epoch && !entry.sealed => {
                let mut entry = entry.clone();
                entry.sealed = true;
                self.install(log_id, entry)
            }
            _ => Ok(false),
        }
    }

    /// Removes a log, durably. Returns false if there was none. An error leaves the catalog
    /// unusable, as [`sync`](Self::sync)'s does.
    pub fn delete(&mut self, log_id: u64) -> Result<bool, CatalogError> {
        if self.logs.remove(&log_id).is_none() {
            return Ok(false);
        }
        self.persist(log_id)?;
        Ok(true)
    }

    /// Makes the change of `log_id`'s entry (to what `logs` holds now, or its removal)
    /// durable, with the creates before it ([`sync`](Self::sync)).
    fn persist(&mut self, log_id: u64) -> Result<(), CatalogError> {
        self.pending
            .extend_from_slice(&change_record(log_id, self.logs.get(&log_id)));
        self.sync()
    }

    /// Makes the changes made so far durable: one append of their records, or a new snapshot
    /// (the shard's first change, or a change log grown past the snapshot). A failure leaves
    /// the catalog unusable: the files may hold some of the changes, and the caller stops.
    pub fn sync(&mut self) -> Result<(), CatalogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let grown = self.changes_bytes + self.pending.len();
        if self.snapshot_bytes == 0 || grown > self.snapshot_bytes.max(COMPACT_BYTES_MIN) {
            return self.compact();
        }
        self.file
            .append(&self.pending)
            .map_err(|source| self.io_error(source))?;
        self.pending.clear();
        self.changes_bytes = grown;
        Ok(())
    }

    /// Writes the whole catalog as the new snapshot and empties the change log.
    fn compact(&mut self) -> Result<(), CatalogError> {
        let bytes = encode(&self.logs);
        self.file
            .replace(&bytes)
            .map_err(|source| self.io_error(source))?;
        self.snapshot_bytes = bytes.len();
        self.changes_bytes = 0;
        self.pending.clear();
        Ok(())
    }

    fn io_error(&self, source: io::Error) -> CatalogError {
        CatalogError::Io {
            path: self.file.path().to_path_buf(),
            source,
        }
    }
}

/// The change record that makes `log_id`'s entry `entry`, or deletes it (`None`).
fn change_record(log_id: u64, entry: Option<&LogEntry>) -> Vec<u8> {
    let mut change = vec![0; CHANGE_HEADER_BYTES];
    match entry {
        Some(entry) => {
            change.push(CHANGE_PUT);
            encode_entry(&mut change, log_id, entry);
        }
        None => {
            change.push(CHANGE_DELETE);
            change.extend_from_slice(&log_id.to_le_bytes());
        }
    }
    let body_len = (change.len() - CHANGE_HEADER_BYTES) as u32;
    let crc = crc32c::crc32c(&change[CHANGE_HEADER_BYTES..]);
    change[..4].copy_from_slice(&body_len.to_le_bytes());
    change[4..CHANGE_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    change
}

/// The change log beside the catalog snapshot at `snapshot`.
pub(crate) fn changes_path(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("changes")
}

/// The change log's bytes of `file` (the snapshot at `path`).
fn changes_of(file: &mut Box<dyn CatalogFile>, path: &Path) -> Result<Vec<u8>, CatalogError> {
    file.read_changes().map_err(|source| CatalogError::Io {
        path: changes_path(path),
        source,
    })
}

/// Applies the change records of `changes` to `logs`, in order. Returns how many bytes of
/// whole records there are: the rest is a record cut short at the end.
fn replay(changes: &[u8], logs: &mut BTreeMap<u64, LogEntry>) -> Result<usize, String> {
    let mut at = 0;
    while changes.len() - at >= CHANGE_HEADER_BYTES {
        let header = &changes[at..at + CHANGE_HEADER_BYTES];
        let body_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if body_len > CHANGE_BODY_MAX {
            return Err(format!(
                "change record at byte {at}: {body_len} bytes, more than any change"
            ));
        }
        let end = at + CHANGE_HEADER_BYTES + body_len;
        if end > changes.len() {
            break; // Cut short.
        }
        let body = &changes[at + CHANGE_HEADER_BYTES..end];
        if crc32c::crc32c(body) != crc {
            if end == changes.len() {
                break; // The last record, its end written before its middle.
            }
            return Err(format!("change record at byte {at} fails its checksum"));
        }
        let mut r = Reader(body);
        match r.u8()? {
            CHANGE_PUT => {
                let (log_id, entry) = decode_entry(&mut r, VERSION)?;
                logs.insert(log_id, entry);
            }
            CHANGE_DELETE => {
                logs.remove(&r.u64()?);
            }
            kind => return Err(format!("change record at byte {at}: unknown kind {kind}")),
        }
        if !r.0.is_empty() {
            return Err(format!("change record at byte {at}: trailing bytes"));
        }
        at = end;
    }
    Ok(at)
}

fn encode(logs: &BTreeMap<u64, LogEntry>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(logs.len() as u32).to_le_bytes());
    for (&id, entry) in logs {
        encode_entry(&mut out, id, entry);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// One log's entry, in the current version's layout (module docs).
fn encode_entry(out: &mut Vec<u8>, id: u64, entry: &LogEntry) {
    assert!(
        entry.chain.len() <= usize::from(u8::MAX),
        "chains are short"
    );
    out.extend_from_slice(&id.to_le_bytes());
    out.push(entry.replication_factor);
    out.push(entry.chain.len() as u8);
    out.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
    let flags = if entry.sealed { FLAG_SEALED } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&entry.epoch.to_le_bytes());
    for node in &entry.chain {
        out.extend_from_slice(&node.to_le_bytes());
    }
    out.extend_from_slice(entry.name.as_bytes());
}

fn decode(bytes: &[u8]) -> Result<BTreeMap<u64, LogEntry>, String> {
    if bytes.len() < 16 {
        return Err(format!("{} bytes is too short for a catalog", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("the catalog fails its checksum".into());
    }
    let mut r = Reader(body);
    if r.u32()? != MAGIC {
        return Err("not a chainlog catalog (bad magic)".into());
    }
    let version = r.u16()?;
    if version > VERSION {
        return Err(format!(
            "catalog format version {version}; this build reads up to {VERSION}"
        ));
    }
    r.u16()?;
    let count = r.u32()?;
    let mut logs = BTreeMap::new();
    for _ in 0..count {
        let (id, entry) = decode_entry(&mut r, version)?;
        logs.insert(id, entry);
    }
    if !r.0.is_empty() {
        return Err("trailing bytes after the last log".into());
    }
    Ok(logs)
}

/// One log's entry in the layout of format `version`.
fn decode_entry(r: &mut Reader<'_>, version: u16) -> Result<(u64, LogEntry), String> {
    let id = r.u64()?;
    let replication_factor = r.u8()?;
    let chain_len = r.u8()?;
    let len = usize::from(r.u16()?);
    let (epoch, chain, sealed) = if version == 1 {
        (STANDALONE_EPOCH, Vec::new(), false)
    } else {
        let flags = r.u32()?;
        if version == 2 && flags != 0 || flags & !FLAG_SEALED != 0 {
            return Err(format!("log {id}: unknown flags {flags:#x}"));
        }
        let epoch = r.u64()?;
        let chain = (0..chain_len).map(|_| r.u64()).collect::<Result<_, _>>()?;
        (epoch, chain, flags & FLAG_SEALED != 0)
    };
    let name = String::from_utf8(r.take(len)?.to_vec())
        .map_err(|_| "a log name is not UTF-8".to_string())?;
    let entry = LogEntry {
        name,
        replication_factor,
        epoch,
        chain,
        sealed,
    };
    Ok((id, entry))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the catalog is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainlog_net::log_id_of;

    fn entry(name: &str) -> LogEntry {
        LogEntry::standalone(name)
    }

    /// A store that existed before this start and holds `log_ids`.
    fn store(log_ids: &[u64]) -> StoreLogs {
        StoreLogs {
            new: false,
            log_ids: log_ids.to_vec(),
        }
    }

    #[test]
    fn creates_and_deletes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Catalog::open(dir.path(), &store(&[])).expect("open");
        assert!(c.create(log_id_of("orders"), entry("orders")));
        assert!(c.create(log_id_of("users"), entry("users")));
        assert!(!c.create(log_id_of("orders"), entry("orders")), "duplicate");
        assert!(c.delete(log_id_of("users")).expect("delete"));
        assert!(!c.delete(log_id_of("users")).expect("absent"));
        let c = Catalog::open(dir.path(), &store(&[])).expect("reopen");
        assert_eq!(c.get(log_id_of("orders")), Some(&entry("orders")));
        assert_eq!(c.get(log_id_of("users")), None);
        assert_eq!(c.list(None, 10).count(), 1);
    }

    /// A catalog in memory that counts what is written to it.
    #[derive(Debug, Default)]
    struct MemoryFile {
        snapshot: Option<Vec<u8>>,
        changes: Vec<u8>,
        replaced: usize,
        appended: usize,
        written_bytes: usize,
    }

    /// Shared, so that a test can look at it and load it again.
    #[derive(Debug, Clone, Default)]
    struct Shared(std::rc::Rc<std::cell::RefCell<MemoryFile>>);

    impl CatalogFile for Shared {
        fn path(&self) -> &Path {
            Path::new("catalog")
        }
        fn read(&mut self) -> io::Result<Option<Vec<u8>>> {
            Ok(self.0.borrow().snapshot.clone())
        }
        fn read_changes(&mut self) -> io::Result<Vec<u8>> {
            Ok(self.0.borrow().changes.clone())
        }
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut f = self.0.borrow_mut();
            f.changes.extend_from_slice(bytes);
            f.appended += 1;
            f.written_bytes += bytes.len();
            Ok(())
        }
        fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut f = self.0.borrow_mut();
            f.snapshot = Some(bytes.to_vec());
            f.changes.clear();
            f.replaced += 1;
            f.written_bytes += bytes.len();
            Ok(())
        }
    }

    /// Many changes cost what they change, not the catalog's size: each is one appended
    /// record, and the snapshot is rewritten only when the changes outgrow it, so the bytes
    /// written stay within a small multiple of the change records' (the whole catalog was
    /// rewritten on every change: quadratic). All of it survives loading again.
    #[test]
    fn changes_are_appended_and_compacted_as_they_outgrow_the_snapshot() {
        let file = Shared::default();
        let mut c = Catalog::load(Box::new(file.clone()), &store(&[])).expect("load");
        let mut change_bytes = 0;
        for i in 0..20_000u64 {
            let name = format!("log-{i:05}");
            assert!(c.create(i, entry(&name)));
            change_bytes += CHANGE_HEADER_BYTES + 1 + 24 + name.len();
            if i % 3 == 0 {
                c.seal(i, STANDALONE_EPOCH).expect("seal");
                change_bytes += CHANGE_HEADER_BYTES + 1 + 24 + name.len();
            }
            if i % 5 == 0 {
                c.delete(i).expect("delete");
                change_bytes += CHANGE_HEADER_BYTES + 9;
            }
        }
        c.sync().expect("sync");
        let (replaced, written) = {
            let f = file.0.borrow();
            (f.replaced, f.written_bytes)
        };
        assert!(replaced >= 2, "compacted: {replaced}");
        assert!(
            written <= 3 * change_bytes,
            "{written} bytes written for {change_bytes} bytes of changes"
        );
        let again = Catalog::load(Box::new(file.clone()), &store(&[1])).expect("again");
        assert_eq!(again.logs, c.logs);
        assert_eq!(again.logs.len(), 16_000);
        assert!(again.get(3).is_some_and(|e| e.sealed));
        assert!(again.get(5).is_none());
    }

    /// Creates wait for a sync: all those made since the last one are written with one
    /// append (one fdatasync); before it, a restart finds none of them. A change made
    /// durable at once (a delete, an install, a seal) takes the creates before it along.
    #[test]
    fn creates_are_durable_together_at_the_next_sync() {
        let file = Shared::default();
        let mut c = Catalog::load(Box::new(file.clone()), &store(&[])).expect("load");
        assert!(c.create(1, entry("first")));
        c.sync().expect("the first change writes the snapshot");
        for i in 2..=5 {
            assert!(c.create(i, entry(&format!("log-{i}"))));
        }
        let reload = || Catalog::load(Box::new(file.clone()), &store(&[1])).expect("load");
        assert_eq!(reload().logs.len(), 1, "not durable before the sync");
        c.sync().expect("sync");
        assert_eq!(reload().logs.len(), 5);
        assert_eq!(file.0.borrow().appended, 1, "four creates, one append");
        assert!(c.create(6, entry("log-6")));
        assert!(c.delete(2).expect("delete"));
        let again = reload();
        assert_eq!(again.logs, c.logs, "the delete took the create along");
        assert_eq!(file.0.borrow().appended, 2);
    }

    /// A change record cut short at the end (a crash while it was written: never
    /// acknowledged) is dropped when the catalog loads, and the catalog is compacted so that
    /// no change follows it; a record that fails its checksum with records after it is damage.
    /// A crash after a new snapshot, before the change log was emptied, replays changes the
    /// snapshot holds already: nothing changes.
    #[test]
    fn a_cut_change_is_dropped_a_damaged_one_refused_and_a_replay_harmless() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Catalog::open(dir.path(), &store(&[])).expect("open");
        for i in 1..=4 {
            assert!(c.create(i, entry(&format!("log-{i}"))));
            c.sync().expect("sync");
        }
        c.delete(2).expect("delete");
        let logs = c.logs.clone();
        drop(c);
        let changes = dir.path().join("catalog.changes");
        let whole = fs::read(&changes).expect("changes");
        assert!(
            !whole.is_empty(),
            "changes appended, not a new snapshot each"
        );
        // Half of a fifth create.
        let mut cut = whole.clone();
        let fifth = change_record(5, Some(&entry("log-5")));
        cut.extend_from_slice(&fifth[..fifth.len() / 2]);
        fs::write(&changes, &cut).expect("write");
        let c = Catalog::open(dir.path(), &store(&[1])).expect("cut short");
        assert_eq!(c.logs, logs);
        assert_eq!(fs::read(&changes).expect("changes").len(), 0, "compacted");
        drop(c);
        // The replay of changes a snapshot holds.
        fs::write(&changes, &whole).expect("write");
        let mut c = Catalog::open(dir.path(), &store(&[1])).expect("replayed");
        assert_eq!(c.logs, logs);
        assert!(c.create(6, entry("log-6")));
        c.sync().expect("a create after");
        drop(c);
        // A bit flipped in the first record, with records after it.
        let mut damaged = whole;
        damaged[CHANGE_HEADER_BYTES + 3] ^= 1;
        fs::write(&changes, &damaged).expect("write");
        let err = Catalog::open(dir.path(), &store(&[1])).expect_err("damaged");
        assert!(matches!(err, CatalogError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
        // Garbage whose first record claims more than any change holds.
        fs::write(&changes, [0xff; 64]).expect("write");
        let err = Catalog::open(dir.path(), &store(&[1])).expect_err("garbage");
        assert!(matches!(err, CatalogError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_damaged_catalog_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Catalog::open(dir.path(), &store(&[])).expect("open");
        assert!(c.create(1, entry("a")));
        c.sync().expect("sync");
        let path = dir.path().join("catalog");
        let mut bytes = fs::read(&path).expect("read");
        bytes[14] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let err = Catalog::open(dir.path(), &store(&[])).expect_err("damaged");
        assert!(err.to_string().contains("catalog"), "{err}");
        fs::write(&path, b"junk").expect("write");
        assert!(matches!(
            Catalog::open(dir.path(), &store(&[])),
            Err(CatalogError::Corrupt { .. })
        ));
    }

    #[test]
    fn installed_chains_survive_reopen_and_version_1_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = Catalog::open(dir.path(), &store(&[])).expect("open");
        let chained = LogEntry {
            name: "orders".into(),
            replication_factor: 3,
            epoch: 7,
            chain: vec![3, 1, 2],
            sealed: false,
        };
        assert!(c.install(9, chained.clone()).expect("install"));
        assert!(
            !c.install(9, chained.clone()).expect("same again"),
            "no rewrite"
        );
        // A seal of the epoch the log is in is durable; of another epoch, nothing.
        assert!(!c.seal(9, 6).expect("another epoch"));
        assert!(c.seal(9, 7).expect("seal"));
        assert!(!c.seal(9, 7).expect("sealed already"), "no rewrite");
        let c = Catalog::open(dir.path(), &store(&[])).expect("reopen");
        let sealed = LogEntry {
            sealed: true,
            ..chained
        };
        assert_eq!(c.get(9), Some(&sealed));
        // A version 1 file, as earlier builds wrote it.
        let mut v1 = Vec::new();
        v1.extend_from_slice(&MAGIC.to_le_bytes());
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&0u16.to_le_bytes());
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(&[1, 0]);
        v1.extend_from_slice(&3u16.to_le_bytes());
        v1.extend_from_slice(b"old");
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join("catalog"), &v1).expect("write");
        let c = Catalog::open(dir.path(), &store(&[])).expect("v1");
        assert_eq!(c.get(5), Some(&LogEntry::standalone("old")));
    }

    #[test]
    fn a_missing_catalog_is_an_error_when_the_store_holds_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog");
        // A new shard, and a store that opened before but never got a log: empty.
        let new = StoreLogs {
            new: true,
            log_ids: Vec::new(),
        };
        for start in [&new, &store(&[])] {
            let c = Catalog::open(dir.path(), start).expect("no log anywhere");
            assert_eq!(c.list(None, 10).count(), 0);
            assert!(!path.exists(), "opening writes nothing");
        }
        // The store holds logs the (missing) catalog would name.
        let err = Catalog::open(dir.path(), &store(&[9, 4])).expect_err("missing");
        assert!(
            matches!(&err, CatalogError::Mismatch { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("log id 4"), "{err}");
        // The file there and the store new: the store's data is gone.
        let mut c = Catalog::open(dir.path(), &store(&[])).expect("open");
        assert!(c.create(4, entry("a")));
        c.sync().expect("sync");
        drop(c);
        let err = Catalog::open(dir.path(), &new).expect_err("store gone");
        assert!(
            matches!(&err, CatalogError::Mismatch { path: p, .. } if *p == path),
            "{err:?}"
        );
        let c = Catalog::open(dir.path(), &store(&[4])).expect("agrees");
        assert_eq!(c.get(4), Some(&entry("a")));
    }
}
