//! A simulated disk: in-memory files, deterministic from a seed, with injected faults.
//!
//! Each file has a *volatile* view (what reads see: the page cache and the device's write
//! cache) and a *durable* view (what survives a crash). A completed write lands in the volatile
//! view; a flush (a sync, a `Dsync` write, or the fdatasync of an `Fdatasync` write) makes every
//! write to that file that completed before the flush was submitted durable. [`SimDisk::crash`]
//! throws the volatile view away, drops every write not covered by a completed flush, and tears
//! one of them: a random prefix of 512-byte sectors of a random unflushed or in-flight write
//! reaches the durable view (possibly all of it, possibly a later write while an earlier one is
//! lost, as a real disk may reorder). Metadata operations (create, allocate, remove) are durable
//! when they return; the store syncs the directory before it depends on them anyway.
//!
//! Operations complete after a random virtual latency (`FaultConfig::latency_us_max`) and may
//! fail with EIO; time is a [`SimClock`] that `wait` advances, so a run replays exactly from
//! its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Completion, Durability, FileId, Io};
use crate::buf::AlignedBuf;
use crate::clock::{SimClock, SimRng};

const SECTOR: usize = 512;

/// Which faults a [`SimIo`] injects, from its seed.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Seed of the backend's random choices (latencies, faults).
    pub seed: u64,
    /// A write fails with EIO once in this many (0: never).
    pub eio_write_one_in: u32,
    /// A sync (or the flush of a durable write) fails with EIO once in this many (0: never).
    pub eio_sync_one_in: u32,
    /// Every operation takes 1 ..= this many virtual microseconds (0 is taken as 1).
    pub latency_us_max: u64,
}

#[derive(Debug, Default)]
struct SimFile {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Completed writes not yet covered by a flush: (completion counter, offset, bytes).
    unflushed: Vec<(u64, u64, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct DiskState {
    files: BTreeMap<PathBuf, SimFile>,
    dirs: BTreeSet<PathBuf>,
    /// Bumped by every crash; a backend of an older generation is a dead process.
    generation: u64,
    /// Counts completed writes, to order them against flushes.
    completed_writes: u64,
    /// Submitted, not completed writes: (path, offset, bytes), by op id.
    in_flight: BTreeMap<u64, (PathBuf, u64, Vec<u8>)>,
    next_op_id: u64,
}

fn apply(target: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = offset as usize;
    if target.len() < offset + bytes.len() {
        target.resize(offset + bytes.len(), 0);
    }
    target[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl SimFile {
    fn flush(&mut self, upto: u64) {
        let mut keep = Vec::new();
        for (counter, offset, bytes) in self.unflushed.drain(..) {
            if counter <= upto {
                apply(&mut self.durable, offset, &bytes);
            } else {
                keep.push((counter, offset, bytes));
            }
        }
        self.unflushed = keep;
    }
}

/// A simulated disk shared by the backends ("processes") that use it over time, and by the
/// test that inspects, damages and crashes it.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    clock: SimClock,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// An empty disk whose time is `clock` (disks of one simulated cluster share it).
    pub fn with_clock(clock: SimClock) -> SimDisk {
        SimDisk {
            clock,
            ..SimDisk::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backend ("a process") on this disk.
    pub fn io(&self, faults: FaultConfig) -> SimIo {
        let generation = self.lock().generation;
        SimIo {
            disk: self.clone(),
            generation,
            rng: SimRng::new(faults.seed),
            faults,
            files: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The disk's virtual clock.
    pub fn clock(&self) -> SimClock {
        self.clock.clone()
    }

    /// Power loss: keeps what is durable plus one torn unflushed or in-flight write (chosen
    /// from `seed`), and kills every backend using the disk.
    pub fn crash(&self, seed: u64) {
        let mut rng = SimRng::new(seed);
        let mut state = self.lock();
        let mut candidates: Vec<(PathBuf, u64, Vec<u8>)> = Vec::new();
        for (path, file) in &state.files {
            for (_, offset, bytes) in &file.unflushed {
                candidates.push((path.clone(), *offset, bytes.clone()));
            }
        }
        candidates.extend(state.in_flight.values().cloned());
        if !candidates.is_empty() && !rng.one_in(4) {
            let (path, offset, bytes) =
                candidates.swap_remove(rng.below(candidates.len() as u64) as usize);
            let sectors = bytes.len().div_ceil(SECTOR) as u64;
            let keep = (rng.below(sectors + 1) as usize * SECTOR).min(bytes.len());
            if let Some(file) = state.files.get_mut(&path) {
                apply(&mut file.durable, offset, &bytes[..keep]);
            }
        }
        for file in state.files.values_mut() {
            file.unflushed.clear();
            file.volatile = file.durable.clone();
        }
        state.in_flight.clear();
        state.generation += 1;
    }

    /// The bytes of a file as reads see them, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().files.get(path).map(|f| f.volatile.clone())
    }

    /// Writes a whole file durably (tests: garbage files, damaged segments).
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut state = self.lock();
        let file = state.files.entry(path.to_path_buf()).or_default();
        file.volatile = bytes.to_vec();
        file.durable = bytes.to_vec();
        file.unflushed.clear();
    }

    /// Sizes of the files directly in `dir`, by name.
    pub fn files_in(&self, dir: &Path) -> Vec<(String, u64)> {
        self.lock()
            .files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, f)| {
                (
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    f.volatile.len() as u64,
                )
            })
            .collect()
    }
}

#[derive(Debug)]
enum OpKind {
    Write {
        path: PathBuf,
        offset: u64,
        durability: Durability,
        fail: bool,
    },
    Read {
        path: PathBuf,
        offset: u64,
    },
    Sync {
        path: Option<PathBuf>,
        upto: u64,
        fail: bool,
    },
}

#[derive(Debug)]
struct Pending {
    id: u64,
    ready_at_us: u64,
    token: u64,
    buf: Option<AlignedBuf>,
    kind: OpKind,
}

/// [`Io`] on a [`SimDisk`]: one per simulated process.
#[derive(Debug)]
pub struct SimIo {
    disk: SimDisk,
    generation: u64,
    rng: SimRng,
    faults: FaultConfig,
    /// Open files: the path, and whether it is a directory.
    files: Vec<Option<(PathBuf, bool)>>,
    pending: Vec<Pending>,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: this process is dead")
}

impl SimIo {
    fn alive(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let state = self.disk.lock();
        if state.generation != self.generation {
            return Err(crashed());
        }
        Ok(state)
    }

    fn path(&self, file: FileId) -> (PathBuf, bool) {
        self.files
            .get(file.0 as usize)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("file {file:?} is not open"))
    }

    fn add_file(&mut self, path: PathBuf, is_dir: bool) -> FileId {
        self.files.push(Some((path, is_dir)));
        FileId((self.files.len() - 1) as u32)
    }

    fn latency(&mut self) -> u64 {
        1 + self.rng.below(self.faults.latency_us_max.max(1))
    }

    fn enqueue(
        &mut self,
        token: u64,
        buf: Option<AlignedBuf>,
        kind: OpKind,
        in_flight_copy: Option<(PathBuf, u64, Vec<u8>)>,
    ) {
        let ready_at_us = self.disk.clock.monotonic_now() + self.latency();
        let mut state = self.disk.lock();
        let id = state.next_op_id;
        state.next_op_id += 1;
        if let Some(copy) = in_flight_copy {
            state.in_flight.insert(id, copy);
        }
        drop(state);
        self.pending.push(Pending {
            id,
            ready_at_us,
            token,
            buf,
            kind,
        });
    }

    fn complete(&mut self, op: Pending, state: &mut DiskState) -> Completion {
        let Pending {
            id,
            token,
            mut buf,
            kind,
            ..
        } = op;
        let result = match kind {
            OpKind::Write {
                path,
                offset,
                durability,
                fail,
            } => {
                // The copy kept for tearing it in a crash is the write's bytes (its buffer
                // stayed here, untouched).
                let bytes = match state.in_flight.remove(&id) {
                    Some((_, _, bytes)) => bytes,
                    None => buf
                        .as_ref()
                        .map(|b| b.as_slice().to_vec())
                        .unwrap_or_default(),
                };
                match state.files.get_mut(&path) {
                    None => Err(not_found(&path)),
                    Some(_) if fail => Err(io::Error::from_raw_os_error(libc::EIO)),
                    Some(file) => {
                        state.completed_writes += 1;
                        let counter = state.completed_writes;
                        let n = bytes.len();
                        apply(&mut file.volatile, offset, &bytes);
                        let synced = durability != Durability::Buffered;
                        if synced && file.unflushed.is_empty() {
                            // What flushing it after nothing else unflushed would do.
                            apply(&mut file.durable, offset, &bytes);
                        } else {
                            file.unflushed.push((counter, offset, bytes));
                            if synced {
                                file.flush(counter);
                            }
                        }
                        Ok(n)
                    }
                }
            }
            OpKind::Read { path, offset } => match (state.files.get(&path), buf.as_mut()) {
                (Some(file), Some(b)) => {
                    let start = (offset as usize).min(file.volatile.len());
                    let n = b.len().min(file.volatile.len() - start);
                    b.as_mut_slice()[..n].copy_from_slice(&file.volatile[start..start + n]);
                    Ok(n)
                }
                _ => Err(not_found(&path)),
            },
            OpKind::Sync { path, upto, fail } => {
                if fail {
                    Err(io::Error::from_raw_os_error(libc::EIO))
                } else {
                    if let Some(file) = path.and_then(|p| state.files.get_mut(&p)) {
                        file.flush(upto);
                    }
                    Ok(0)
                }
            }
        };
        Completion { token, buf, result }
    }
}

/// A backend dropped while it has writes in flight is a process that died without the
/// machine losing power: the kernel finishes or cancels those writes as the process goes, so
/// they are never torn into the disk by a later power loss. Here they never happened.
impl Drop for SimIo {
    fn drop(&mut self) {
        let mut state = self.disk.lock();
        if state.generation == self.generation {
            for op in &self.pending {
                state.in_flight.remove(&op.id);
            }
        }
    }
}

impl SimIo {
    /// When the earliest operation in flight completes (virtual microseconds), if any: a
    /// simulator that runs many processes on one clock wakes this one then.
    pub fn next_ready_us(&self) -> Option<u64> {
        self.pending.iter().map(|p| p.ready_at_us).min()
    }
}

impl SimClock {
    fn monotonic_now(&self) -> u64 {
        crate::clock::Clock::monotonic_us(self)
    }
}

impl Io for SimIo {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        let mut state = self.alive()?;
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.alive()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let mut names: Vec<String> = state
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }

    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        let mut state = self.alive()?;
        if create {
            if state.files.contains_key(path) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            state.files.insert(path.to_path_buf(), SimFile::default());
        } else if !state.files.contains_key(path) {
            return Err(not_found(path));
        }
        drop(state);
        Ok(self.add_file(path.to_path_buf(), false))
    }

    fn open_dir(&mut self, path: &Path) -> io::Result<FileId> {
        if !self.alive()?.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(self.add_file(path.to_path_buf(), true))
    }

    fn file_size(&mut self, file: FileId) -> io::Result<u64> {
        let (path, _) = self.path(file);
        let state = self.alive()?;
        state
            .files
            .get(&path)
            .map(|f| f.volatile.len() as u64)
            .ok_or_else(|| not_found(&path))
    }

    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let (path, _) = self.path(file);
        let mut state = self.alive()?;
        let f = state.files.get_mut(&path).ok_or_else(|| not_found(&path))?;
        for view in [&mut f.volatile, &mut f.durable] {
            if (view.len() as u64) < len {
                view.resize(len as usize, 0);
            }
        }
        Ok(())
    }

    fn close(&mut self, file: FileId) {
        if let Some(slot) = self.files.get_mut(file.0 as usize) {
            *slot = None;
        }
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.alive()?
            .files
            .remove(path)
            .map(drop)
            .ok_or_else(|| not_found(path))
    }

    fn write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        durability: Durability,
        token: u64,
    ) {
        let (path, _) = self.path(file);
        let fail = self.rng.one_in(self.faults.eio_write_one_in)
            || (durability == Durability::Fdatasync
                && self.rng.one_in(self.faults.eio_sync_one_in));
        let copy = (path.clone(), offset, buf.as_slice().to_vec());
        self.enqueue(
            token,
            Some(buf),
            OpKind::Write {
                path,
                offset,
                durability,
                fail,
            },
            Some(copy),
        );
    }

    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        let (path, _) = self.path(file);
        self.enqueue(token, Some(buf), OpKind::Read { path, offset }, None);
    }

    fn sync(&mut self, file: FileId, token: u64) {
        let (path, is_dir) = self.path(file);
        let fail = self.rng.one_in(self.faults.eio_sync_one_in);
        let upto = self.disk.lock().completed_writes;
        let path = (!is_dir).then_some(path);
        self.enqueue(token, None, OpKind::Sync { path, upto, fail }, None);
    }

    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let min = min_complete.min(self.pending.len());
        let mut done = 0;
        loop {
            let now = self.disk.clock.monotonic_now();
            let mut ready: Vec<Pending> = Vec::new();
            let mut i = 0;
            while i < self.pending.len() {
                if self.pending[i].ready_at_us <= now {
                    ready.push(self.pending.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            ready.sort_by_key(|p| (p.ready_at_us, p.id));
            if !ready.is_empty() {
                let disk = self.disk.clone();
                let mut state = disk.lock();
                if state.generation != self.generation {
                    return Err(crashed());
                }
                for op in ready {
                    out.push(self.complete(op, &mut state));
                    done += 1;
                }
            }
            if done >= min {
                return Ok(());
            }
            let next = self
                .pending
                .iter()
                .map(|p| p.ready_at_us)
                .min()
                .expect("pending operations");
            self.disk.clock.advance_to(next);
        }
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }
}
