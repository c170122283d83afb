//! The controller's durable state: one file, `DIR/state`, rewritten whole and atomically on
//! every change (`crate::durable_file`: temporary file, fsync, rename, directory fsync), so
//! it always holds either the state before a change or the state after it. Changes are rare
//! (nodes registering, logs created and deleted), so a whole rewrite is cheap and simple.
//!
//! The file is a 16-byte header and a JSON body (the durable part of [`ClusterState`], which
//! people can read with `tail -c +17 DIR/state`):
//!
//! ```text
//! offset size field
//!      0    4 magic           "CLCS"
//!      4    2 format_version  2
//!      6    2 reserved        0
//!      8    4 body_len        bytes of JSON that follow
//!     12    4 body_crc        CRC32C of the body
//!     16    . body            JSON
//! ```
//!
//! Format version 2 added the nodes' zones and racks (`zone`, `rack`): a version 1 file, which
//! has none, still loads, as nodes without labels. A build that knows only version 1 refuses a
//! version 2 file rather than load it and silently forget the labels (it would write the state
//! back without them).
//!
//! A file that is not this format, is damaged or describes an inconsistent cluster is a
//! typed error naming the file: the controller refuses to start rather than silently
//! starting empty (which would forget every log). `DIR/lock` is held (`flock`) while the
//! store is open, so two controllers never share a directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::state::ClusterState;

/// The state file's name in the data directory.
pub const STATE_FILE: &str = "state";
/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "lock";
/// The state file format this build writes (and the newest it reads; it reads every older
/// one too).
pub const FORMAT_VERSION: u16 = 2;

const MAGIC: [u8; 4] = *b"CLCS";
const HEADER_BYTES: usize = 16;

/// Why the state cannot be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another process (another controller) holds the data directory.
    #[error("{}: the data directory is in use by another controller", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The file is not a chainlog controller state file.
    #[error("{}: not a chainlog controller state file (magic {magic:02x?})", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        magic: Vec<u8>,
    },
    /// The file is in a format newer than this build reads.
    #[error(
        "{}: controller state format version {version}; this build reads up to {FORMAT_VERSION}",
        path.display()
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its format version.
        version: u16,
    },
    /// The file is damaged (truncated, failing its checksum) or describes an inconsistent
    /// cluster.
    #[error("{}: damaged controller state: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The open state file of a data directory (holding its lock).
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    /// Held open for the `flock` on `DIR/lock`; released when the store is dropped.
    _lock: File,
}

impl StateStore {
    /// Opens the store in `dir` (created if missing) and loads its state: the one saved last,
    /// or an empty cluster if none was ever saved.
    pub fn open(dir: &Path) -> Result<(StateStore, ClusterState), StoreError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(io_error(&lock_path))?;
        // SAFETY: flock on a descriptor we own; no pointers.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(StoreError::Locked { path: lock_path });
            }
            return Err(io_error(&lock_path)(e));
        }
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => decode(&bytes, &path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => ClusterState::default(),
            Err(e) => return Err(io_error(&path)(e)),
        };
        Ok((StateStore { path, _lock: lock }, state))
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the saved state by `state`, durably: when this returns Ok, a crash at any
    /// later point reloads `state`; when it fails, the previous state is still the saved one.
    pub fn save(&self, state: &ClusterState) -> Result<(), StoreError> {
        let bytes = encode(state);
        self.save_with(|file| file.write_all(&bytes))
    }

    fn save_with(&self, write: impl FnOnce(&mut File) -> io::Result<()>) -> Result<(), StoreError> {
        crate::durable_file::replace_with(&self.path, write).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// A state file's bytes for `state` ([`decode`] reads them back).
pub fn encode(state: &ClusterState) -> Vec<u8> {
    let body = serde_json::to_vec_pretty(state).expect("the state serializes to JSON");
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    let body_len = u32::try_from(body.len()).expect("the state is below 4 GiB");
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads a state file's bytes (`path` is for messages): the state, or why the file is not
/// one this build can load. The controller's start reads its file with it; the `state` fuzz
/// target feeds it arbitrary bytes.
pub fn decode(bytes: &[u8], path: &Path) -> Result<ClusterState, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            magic: bytes[..bytes.len().min(MAGIC.len())].to_vec(),
        });
    }
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_BYTES>() else {
        return Err(corrupt(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    };
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = u16_at(4);
    if version == 0 || version > FORMAT_VERSION {
        return Err(StoreError::Version {
            path: path.to_path_buf(),
            version,
        });
    }
    if u16_at(6) != 0 {
        return Err(corrupt("the header's reserved field is not 0".into()));
    }
    let body_len = u32_at(8) as usize;
    if body.len() != body_len {
        return Err(corrupt(format!(
            "the header says {body_len} bytes of state, the file has {}",
            body.len()
        )));
    }
    let (stored, computed) = (u32_at(12), crc32c::crc32c(body));
    if stored != computed {
        return Err(corrupt(format!(
            "checksum {computed:#010x} of the state does not match the stored {stored:#010x}"
        )));
    }
    let state: ClusterState =
        serde_json::from_slice(body).map_err(|e| corrupt(format!("unreadable state: {e}")))?;
    state
        .check()
        .map_err(|reason| corrupt(format!("inconsistent state: {reason}")))?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// [`StateStore::open`], tried again while the directory is locked by nobody else: other
    /// tests of this process fork children (`crate::dev`'s), and a child forked while a store
    /// is open holds a copy of the lock's descriptor, and so the `flock`, until it execs. The
    /// deadline only guards against hanging.
    fn open(dir: &Path) -> Result<(StateStore, ClusterState), StoreError> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match StateStore::open(dir) {
                Err(StoreError::Locked { .. }) if Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                other => return other,
            }
        }
    }

    fn some_state() -> ClusterState {
        let t0 = Instant::now();
        let mut state = ClusterState::default();
        for id in 1..=3 {
            state
                .register(id, &format!("127.0.0.1:{}", 7400 + id), 2, "", "", t0)
                .expect("register");
        }
        for (name, rf) in [("orders", 3), ("users", 2), ("events", 1)] {
            state.create_log(name, rf, t0).expect("create");
        }
        state
            .delete_log(state.log_named("users").expect("users").log_id)
            .expect("delete");
        state
    }

    /// What survives a restart: everything but heartbeat times and applied versions.
    fn durable(state: &ClusterState) -> ClusterState {
        let json = serde_json::to_vec(state).expect("to json");
        serde_json::from_slice(&json).expect("from json")
    }

    #[test]
    fn the_state_round_trips_and_a_fresh_directory_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, state) = open(dir.path()).expect("open");
        assert_eq!(state, ClusterState::default());
        let state = some_state();
        store.save(&state).expect("save");
        drop(store);
        let (store, loaded) = open(dir.path()).expect("reopen");
        assert_eq!(loaded, durable(&state));
        assert_eq!(loaded.version(), state.version());
        assert!(loaded
            .nodes()
            .all(|n| n.last_heartbeat.is_none() && n.applied_version == 0));
        assert_eq!(store.path(), dir.path().join(STATE_FILE));
    }

    #[test]
    fn a_save_cut_short_leaves_the_previous_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path()).expect("open");
        let state = some_state();
        store.save(&state).expect("save");
        let before = fs::read(store.path()).expect("read");
        let mut next = state.clone();
        next.create_log("more", 1, Instant::now()).expect("create");
        let bytes = encode(&next);
        let err = store
            .save_with(|file| {
                file.write_all(&bytes[..bytes.len() / 2])?;
                Err(io::Error::other("crash"))
            })
            .expect_err("cut short");
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert_eq!(fs::read(store.path()).expect("read"), before);
        drop(store);
        // The half-written temporary file is still there, as after a crash; it is ignored.
        assert!(dir.path().join("state.tmp").exists());
        let (_store, loaded) = open(dir.path()).expect("reopen");
        assert_eq!(loaded, durable(&state));
    }

    #[test]
    fn damaged_and_foreign_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STATE_FILE);
        let good = encode(&some_state());
        let refused = |bytes: &[u8]| {
            fs::write(&path, bytes).expect("write");
            let err = open(dir.path()).expect_err("refused");
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
            err
        };
        assert!(matches!(
            refused(b"{\"version\": 3}"),
            StoreError::Foreign { .. }
        ));
        assert!(matches!(refused(b""), StoreError::Foreign { .. }));
        assert!(matches!(refused(b"CLCS"), StoreError::Corrupt { .. }));
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 10] ^= 1;
        assert!(matches!(refused(&flipped), StoreError::Corrupt { .. }));
        assert!(matches!(
            refused(&good[..good.len() - 1]),
            StoreError::Corrupt { .. }
        ));
        let mut newer = good.clone();
        newer[4] = 3;
        assert!(matches!(
            refused(&newer),
            StoreError::Version { version: 3, .. }
        ));
        // Well framed and checksummed, but not a consistent cluster: the JSON of a state
        // whose log names a node that is not registered.
        let body = br#"{"version":1,"nodes":{},"logs":{"12638187200555641996":{"log_id":12638187200555641996,"name":"a","replication_factor":1,"created_version":1,"epochs":[{"epoch":1,"chain":[7],"start_lsn":0}]}}}"#;
        let mut framed = good[..HEADER_BYTES].to_vec();
        framed[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
        framed[12..16].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
        framed.extend_from_slice(body);
        let err = refused(&framed);
        assert!(err.to_string().contains("inconsistent"), "{err}");
        fs::write(&path, &good).expect("write");
        open(dir.path()).expect("the good file opens");
    }

    /// A state file of format version 1, before zones and racks, as such a build wrote it:
    /// its nodes load without labels, and the next save writes version 2 with them.
    #[test]
    fn a_version_1_file_loads_as_nodes_without_zones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = br#"{"version":2,"nodes":{"1":{"node_id":1,"addr":"10.0.0.1:7400","shard_count":2},"2":{"node_id":2,"addr":"10.0.0.2:7400","shard_count":2,"drained":true}},"logs":{}}"#;
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&1u16.to_le_bytes());
        file.extend_from_slice(&0u16.to_le_bytes());
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        file.extend_from_slice(body);
        fs::write(dir.path().join(STATE_FILE), &file).expect("write");
        let (store, mut state) = open(dir.path()).expect("a version 1 file opens");
        let labels: Vec<(u64, &str, &str, bool)> = state
            .nodes()
            .map(|n| (n.node_id, n.zone.as_str(), n.rack.as_str(), n.drained))
            .collect();
        assert_eq!(labels, [(1, "", "", false), (2, "", "", true)]);
        state
            .register(1, "10.0.0.1:7400", 2, "eu-west-1a", "r1", Instant::now())
            .expect("register");
        store.save(&state).expect("save");
        let saved = fs::read(store.path()).expect("read");
        assert_eq!(saved[4..6], FORMAT_VERSION.to_le_bytes());
        drop(store);
        let (_store, loaded) = open(dir.path()).expect("reopen");
        let node = loaded.node(1).expect("node 1");
        assert_eq!(
            (node.zone.as_str(), node.rack.as_str()),
            ("eu-west-1a", "r1")
        );
        assert_eq!(loaded, durable(&state));
    }

    #[test]
    fn a_directory_is_used_by_one_store_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, _) = open(dir.path()).expect("open");
        assert!(matches!(
            StateStore::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
        drop(first);
        open(dir.path()).expect("free again");
    }
}
