//! A wrapper that injects faults into any backend, real ones included: EIO on chosen writes
//! or syncs, reported after the operation really ran (as a failing device would: the data may
//! or may not be on disk, and nothing may be assumed about it).

use std::io;
use std::path::Path;

use super::{Completion, Durability, FileId, Io};
use crate::buf::AlignedBuf;
use crate::clock::SimRng;

/// Which operations of the wrapped backend fail.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Seed for `eio_one_in`.
    pub seed: u64,
    /// The n-th data write (counting from 1; zero-fill and header writes included) fails.
    pub fail_write_number: Option<u64>,
    /// Each write or sync fails once in this many (0: never).
    pub eio_one_in: u32,
}

/// [`Io`] that forwards to `inner` and turns chosen completions into EIO.
#[derive(Debug)]
pub struct FaultyIo<I: Io> {
    inner: I,
    plan: FaultPlan,
    rng: SimRng,
    writes: u64,
    /// Tokens whose completion is to fail.
    doomed: Vec<u64>,
}

impl<I: Io> FaultyIo<I> {
    /// Wraps `inner`.
    pub fn new(inner: I, plan: FaultPlan) -> FaultyIo<I> {
        let rng = SimRng::new(plan.seed);
        FaultyIo {
            inner,
            plan,
            rng,
            writes: 0,
            doomed: Vec::new(),
        }
    }

    fn decide(&mut self, token: u64, is_write: bool) {
        if is_write {
            self.writes += 1;
        }
        let chosen = (is_write && self.plan.fail_write_number == Some(self.writes))
            || self.rng.one_in(self.plan.eio_one_in);
        if chosen {
            self.doomed.push(token);
        }
    }
}

impl<I: Io> Io for FaultyIo<I> {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(dir)
    }
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        self.inner.open(path, create)
    }
    fn open_dir(&mut self, path: &Path) -> io::Result<FileId> {
        self.inner.open_dir(path)
    }
    fn file_size(&mut self, file: FileId) -> io::Result<u64> {
        self.inner.file_size(file)
    }
    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.inner.allocate(file, len)
    }
    fn close(&mut self, file: FileId) {
        self.inner.close(file)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
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
        self.decide(token, true);
        self.inner.write(file, offset, buf, durability, token)
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        self.inner.read(file, offset, buf, token)
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.decide(token, false);
        self.inner.sync(file, token)
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        self.inner.wait(min_complete, out)?;
        for completion in &mut out[before..] {
            if let Some(i) = self.doomed.iter().position(|&t| t == completion.token) {
                self.doomed.swap_remove(i);
                completion.result = Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}
