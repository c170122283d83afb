//! chainlog-storage: the durable heart of chainlog.
//!
//! One [`Store`] per shard owns a directory of preallocated segments and writes every append
//! through **group commit**: pending records of all the shard's logs go out as
//! one aligned O_DIRECT write, made durable by `RWF_DSYNC` or a linked fdatasync (chosen by
//! [`calibrate`] at open), and are acknowledged only when that write and every one before it
//! completed. [`recovery`] rebuilds state after a crash, cutting a torn tail and reporting
//! damage to committed data; after a clean stop ([`Store::close`]) nothing is taken for a
//! torn tail. All I/O goes through the [`io::Io`] seam: io_uring in production, a
//! deterministic fault-injecting simulator in tests.
//!
//! The on-disk format is in [`format`](mod@format); the design and its reasons are in ARCHITECTURE.md.

pub mod buf;
pub mod calibrate;
pub mod clock;
mod commit;
pub mod config;
mod cut;
pub mod error;
pub mod fatal;
pub mod format;
pub mod io;
mod lifecycle;
pub use lifecycle::{ZERO_CHUNK_BYTES, ZERO_CHUNK_BYTES_MAX};
mod log;
pub mod metrics;
mod reads;
pub mod recovery;
mod replica;
mod segment;
mod store;
mod writers;

pub use buf::AlignedBuf;
pub use calibrate::Calibration;
pub use clock::{Clock, SimClock, SimRng, SystemClock};
pub use config::{DurabilityMode, StoreConfig};
pub use error::{Error, Result};
pub use fatal::{fatal, fatal_panics, FatalPanic, FatalReason, FATAL_EXIT_CODE};
pub use io::{
    Durability, FaultConfig, FaultPlan, FaultyIo, Io, SimDisk, SimIo, UringIo, EXTERNAL_TOKEN,
};
pub use metrics::StoreMetrics;
pub use reads::{
    ReadDone, ReadKind, ReadOutput, ReadRequest, READS_IN_FLIGHT_MAX, READ_WINDOW_BYTES,
};
pub use recovery::RecoveryReport;
pub use replica::{Pin, ReplicaState, StoredRun};
pub use store::{Ack, AppendOptions, Batch, LogTail, ReadRecord, Record, Store};
pub use writers::{WriterKey, WRITER_WINDOW};
