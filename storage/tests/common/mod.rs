//! Helpers shared by the storage test suites (each suite uses some of them).
#![allow(dead_code, unused_macros, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chainlog_storage::format::{record_bytes, RecordHeader, RECORD_HEADER_BYTES};
use chainlog_storage::{
    Clock, FaultConfig, Io, SimDisk, SimIo, Store, StoreConfig, SystemClock, UringIo,
};

/// `assert_eq!` for store results (`Error` has no `PartialEq`: compared by message).
macro_rules! assert_res {
    ($left:expr, $right:expr $(, $msg:expr)?) => {
        assert_eq!(
            ($left).map_err(|e| e.to_string()),
            ($right).map_err(|e: chainlog_storage::Error| e.to_string())
            $(, $msg)?
        )
    };
}
pub(crate) use assert_res;

/// A directory on the real file system, removed when dropped: under the target dir, because
/// O_DIRECT needs a real file system, which /tmp may not be.
pub(crate) fn real_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

/// A simulated disk, and the backends ("processes") opened on it in turn.
pub(crate) struct Sim {
    pub(crate) disk: SimDisk,
    seed: u64,
}

impl Sim {
    pub(crate) fn new() -> Sim {
        Sim {
            disk: SimDisk::new(),
            seed: 0,
        }
    }

    /// The next process on the disk: the next seed, completions within `latency_us_max`.
    pub(crate) fn next_io(&mut self, latency_us_max: u64) -> SimIo {
        self.seed += 1;
        self.disk.io(FaultConfig {
            seed: self.seed,
            latency_us_max,
            ..FaultConfig::default()
        })
    }

    pub(crate) fn sim_clock(&self) -> Arc<dyn Clock> {
        Arc::new(self.disk.clock())
    }
}

/// Where stores live (the simulator or the real file system with io_uring): shard directories
/// reopened on the same files, by name.
pub(crate) trait Backend {
    type Io: Io;
    fn io(&mut self) -> Self::Io;
    fn dir(&self, name: &str) -> PathBuf;
    fn clock(&self) -> Arc<dyn Clock>;

    fn open_with(&mut self, name: &str, config: StoreConfig) -> Store<Self::Io> {
        let io = self.io();
        Store::open(io, &self.dir(name), config, self.clock()).expect("open")
    }
}

impl Backend for Sim {
    type Io = SimIo;
    fn io(&mut self) -> Self::Io {
        // Latency, so that a `poll(false)` leaves the frames it submits in flight.
        self.next_io(500)
    }
    fn dir(&self, name: &str) -> PathBuf {
        Path::new("/sim").join(name)
    }
    fn clock(&self) -> Arc<dyn Clock> {
        self.sim_clock()
    }
}

/// Directories on the real file system.
pub(crate) struct Real {
    tmp: tempfile::TempDir,
}

impl Real {
    pub(crate) fn new() -> Real {
        Real {
            tmp: real_dir("backend-"),
        }
    }
}

impl Backend for Real {
    type Io = UringIo;
    fn io(&mut self) -> UringIo {
        UringIo::new(64).expect("io_uring is available")
    }
    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock::new())
    }
}

/// Each scenario (a function generic over [`Backend`]) as one test per backend.
macro_rules! on_both_backends {
    ($($name:ident,)*) => {
        mod sim {
            $(#[test] fn $name() { super::$name(&mut super::Sim::new()); })*
        }
        mod uring {
            $(#[test] fn $name() { super::$name(&mut super::Real::new()); })*
        }
    };
}
pub(crate) use on_both_backends;

/// `payloads` in the stored layout, as a head sequenced them: every header field set, LSNs
/// from `first_lsn`, a timestamp derived from the LSN (so it is recognisable when read back).
pub(crate) fn stamped(log_id: u64, first_lsn: u64, epoch: u64, payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let lsn = first_lsn + i as u64;
        let header = RecordHeader {
            len: p.len() as u32,
            crc: crc32c::crc32c(p),
            log_id,
            lsn,
            epoch,
            timestamp_us: 1_700_000_000_000_000 + lsn,
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

/// Writes a new store makes before its first frame (with `Dsync` and no calibration): the
/// zero-fill (unpaced at open: `ZERO_CHUNK_BYTES_MAX` writes) and the header of the first segment, then the same
/// of the spare.
pub(crate) fn writes_at_open(segment_bytes: u64) -> u64 {
    let zero_fill = (segment_bytes - 4096).div_ceil(chainlog_storage::ZERO_CHUNK_BYTES_MAX as u64);
    2 * (zero_fill + 1)
}
