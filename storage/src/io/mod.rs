//! The I/O seam: the only way the storage engine touches files.
//!
//! Data operations (write, read, sync) are asynchronous: a buffer is moved in with a caller's
//! token and comes back in a [`Completion`] from [`Io::wait`]. Metadata operations (open,
//! allocate, rename, remove, list) are synchronous; they happen at startup, at segment
//! creation and at segment deletion, never per append.
//!
//! Two implementations are siblings: [`UringIo`] (io_uring, O_DIRECT) and
//! [`SimIo`] (an in-memory disk that is deterministic from a seed and injects EIO, latency,
//! crashes and torn writes). One contract test suite runs against both (`tests/io_contract.rs`).

mod faulty;
mod sim;
mod uring;

use std::io;
use std::path::Path;

pub use faulty::{FaultPlan, FaultyIo};
pub use sim::{FaultConfig, SimDisk, SimIo};
pub use uring::UringIo;

use crate::buf::AlignedBuf;

/// Tokens with this bit belong to the store's owner, not to the store: operations the owner
/// submits to the same backend (a shard's sockets, with [`UringIo::submit_external`]) so that
/// one ring drives network and disk. The store never submits such tokens and hands their
/// completions back untouched ([`Store::take_external`](crate::Store::take_external)).
pub const EXTERNAL_TOKEN: u64 = 1 << 63;

/// A file opened through an [`Io`] backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId(pub u32);

/// How a write becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Not durable by itself: a later sync or durable write to the same file covers it.
    Buffered,
    /// One write with `RWF_DSYNC`: durable when it completes.
    Dsync,
    /// A write followed by `fdatasync` (linked in the ring): durable when both complete. The
    /// flush also covers every write to the file that completed before it.
    Fdatasync,
}

/// The outcome of an asynchronous operation.
#[derive(Debug)]
pub struct Completion {
    /// The caller's token from the submission.
    pub token: u64,
    /// The buffer that was moved in (writes and reads), now handed back.
    pub buf: Option<AlignedBuf>,
    /// Bytes transferred, or the error. A short write is reported as an error.
    pub result: io::Result<usize>,
}

/// The storage engine's file system and disk.
///
/// Offsets and lengths of `write` and `read` are multiples of
/// [`BLOCK_SIZE`](crate::format::BLOCK_SIZE), and buffers are block-aligned (O_DIRECT).
///
/// Buffers: the buffer moved into `write` or `read` comes back in that operation's
/// [`Completion`], the same allocation at the same address, and until then the backend keeps
/// it alive (also when the backend itself fails or the process "crashed": then until the
/// backend is dropped). A backend only reads a write's buffer, never writes it. The store
/// relies on both: it reads frames whose writes are in flight, and the bytes of pinned frames
/// are sent from the same memory while it goes to disk (ARCHITECTURE.md 9b).
pub trait Io {
    /// Creates `dir` and its parents.
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()>;
    /// The names of the entries of `dir`.
    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for direct I/O, creating it (empty) if `create`.
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId>;
    /// Opens a directory, for [`Io::sync`] after entries are created or removed.
    fn open_dir(&mut self, path: &Path) -> io::Result<FileId>;
    /// The file's size in bytes.
    fn file_size(&mut self, file: FileId) -> io::Result<u64>;
    /// Preallocates the file to `len` bytes (fallocate).
    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()>;
    /// Closes a file. Operations on it must have completed.
    fn close(&mut self, file: FileId);
    /// Removes a file (not durable until the directory is synced).
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Submits a write of `buf.len()` bytes at `offset`.
    fn write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        durability: Durability,
        token: u64,
    );
    /// Submits a read of `buf.len()` bytes at `offset`; the completion says how many arrived.
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64);
    /// Submits a sync: fdatasync for a file, fsync for a directory.
    fn sync(&mut self, file: FileId, token: u64);
    /// Submits what is queued and waits until at least `min_complete` operations completed
    /// (fewer if fewer are in flight), appending every available completion to `out`.
    /// An error here is the backend itself failing (not an operation).
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()>;
    /// Operations submitted and not yet returned by `wait`.
    fn in_flight(&self) -> usize;
}
