//! A simulated shard's environment: its disk is a [`SimIo`] on its node's [`SimDisk`]
//! (crashes lose what was not flushed), its network and timers are the [`World`]'s. Both kinds
//! of completion come out of [`Io::wait`], as on the real ring. A node's disk may go slow for
//! a while ([`Slowdown`]): the completions it delivers then are held longer, in order, as a
//! device that stalls (garbage collection, a firmware hiccup) holds them; a shard that waits
//! for one inside a turn (a read) waits that long. Its reads alone may also stall until a
//! given time (a scenario sets it; the random faults do not): then the shard's other
//! operations complete meanwhile. A node's catalogs live in a map that survives its crashes,
//! like a file replaced atomically and durably.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use chainlog_storage::buf::AlignedBuf;
use chainlog_storage::io::{Completion, Durability, FileId, Io};
use chainlog_storage::SimIo;

use super::world::{EndpointId, HostId, World};
use crate::node::catalog::{changes_path, CatalogFile};
use crate::node::env::{Net, RawSlice, Sock};
use crate::node::ops::NetToken;

/// The world, shared by every simulated process of a run (one thread).
pub(crate) type Shared = Rc<RefCell<World>>;

/// A node's disk going slow: until `until_us`, every completion it delivers is held `extra_us`
/// longer; and reads it completes before `reads_until_us` are held until then (a device whose
/// reads queue behind a long internal operation while its writes go on).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slowdown {
    pub(crate) until_us: u64,
    pub(crate) extra_us: u64,
    pub(crate) reads_until_us: u64,
}

/// The slowdown of one node's disk, shared by its shards' environments.
pub(crate) type DiskSpeed = Rc<Cell<Slowdown>>;

/// One shard's environment. See the module documentation.
#[derive(Debug)]
pub(crate) struct SimEnv {
    disk: SimIo,
    world: Shared,
    endpoint: EndpointId,
    host: HostId,
    speed: DiskSpeed,
    /// Disk completions held by a slowdown: (when they are delivered, the completion), in
    /// the order the disk completed them.
    held: VecDeque<(u64, Completion)>,
    /// The tokens of the disk reads in flight (the store's: at most one per read slot).
    reads: Vec<u64>,
    /// Reads completed while reads stall, delivered once they no longer do.
    stalled: Vec<Completion>,
}

impl SimEnv {
    pub(crate) fn new(
        disk: SimIo,
        world: Shared,
        endpoint: EndpointId,
        host: HostId,
        speed: DiskSpeed,
    ) -> SimEnv {
        world.borrow_mut().attach(endpoint);
        SimEnv {
            disk,
            world,
            endpoint,
            host,
            speed,
            held: VecDeque::new(),
            reads: Vec::new(),
            stalled: Vec::new(),
        }
    }

    /// When this shard has something to do next: now if completions wait, else when its disk
    /// completes or delivers an operation.
    pub(crate) fn next_us(&self) -> Option<u64> {
        let world = self.world.borrow();
        if world.has_ready(self.endpoint) {
            return Some(world.now_us());
        }
        self.next_disk_us()
    }

    /// Reads the disk completed and holds back while reads stall.
    #[cfg(test)]
    pub(crate) fn stalled_reads(&self) -> usize {
        self.stalled.len()
    }

    fn next_disk_us(&self) -> Option<u64> {
        let held = self.held.front().map(|&(at, _)| at);
        let stalled = (!self.stalled.is_empty()).then(|| self.speed.get().reads_until_us);
        [held, stalled, self.disk.next_ready_us()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Takes what the disk completed by now, holds it as the slowdown says, and moves what is
    /// due to `out`.
    fn take_disk(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let mut done = Vec::new();
        self.disk.wait(0, &mut done)?;
        let now = self.world.borrow().now_us();
        let slow = self.speed.get();
        let extra = if now < slow.until_us {
            slow.extra_us
        } else {
            0
        };
        let last = self.held.back().map_or(0, |&(at, _)| at);
        for completion in done {
            if let Some(i) = self.reads.iter().position(|&t| t == completion.token) {
                self.reads.swap_remove(i);
                if now < slow.reads_until_us {
                    self.stalled.push(completion);
                    continue;
                }
            }
            self.held.push_back(((now + extra).max(last), completion));
        }
        if now >= slow.reads_until_us {
            out.append(&mut self.stalled);
        }
        while self.held.front().is_some_and(|&(at, _)| at <= now) {
            out.push(self.held.pop_front().expect("checked").1);
        }
        Ok(())
    }
}

impl Net for SimEnv {
    fn accept(&mut self, listener: Sock, token: NetToken) {
        self.world.borrow_mut().accept(listener, token);
    }

    fn accepted(&mut self, n: usize) -> Sock {
        self.world.borrow_mut().accepted(n)
    }

    unsafe fn recv(&mut self, sock: Sock, buf: *mut u8, len: usize, token: NetToken) {
        let buf = RawSlice { ptr: buf, len };
        self.world.borrow_mut().recv(sock, buf, token);
    }

    unsafe fn send(&mut self, sock: Sock, bufs: &[RawSlice], token: NetToken) {
        let mut bytes = Vec::new();
        for b in bufs {
            // SAFETY: the caller keeps the bytes valid until the completion (Net::send's
            // contract); they are copied here, at the submission.
            bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(b.ptr, b.len) });
        }
        self.world.borrow_mut().send(sock, bytes, token);
    }

    fn connect(&mut self, addr: SocketAddr, token: NetToken) -> io::Result<Sock> {
        Ok(self
            .world
            .borrow_mut()
            .connect(self.endpoint, self.host, addr, token, false))
    }

    fn shutdown(&mut self, sock: Sock) {
        self.world.borrow_mut().shutdown(sock);
    }

    fn cancel(&mut self, sock: Sock) {
        self.world.borrow_mut().cancel(sock);
    }

    fn close_socket(&mut self, sock: Sock) {
        self.world.borrow_mut().close(sock);
    }

    fn timeout(&mut self, after_us: u64, token: NetToken) {
        self.world
            .borrow_mut()
            .timeout(self.endpoint, after_us, token);
    }

    fn read_event(&mut self, _eventfd: RawFd, _token: NetToken) {
        unreachable!("a simulated shard has no eventfds: the simulator tells it directly");
    }
}

impl Io for SimEnv {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.disk.create_dir_all(dir)
    }
    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        self.disk.list_dir(dir)
    }
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        self.disk.open(path, create)
    }
    fn open_dir(&mut self, path: &Path) -> io::Result<FileId> {
        self.disk.open_dir(path)
    }
    fn file_size(&mut self, file: FileId) -> io::Result<u64> {
        self.disk.file_size(file)
    }
    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.disk.allocate(file, len)
    }
    fn close(&mut self, file: FileId) {
        self.disk.close(file)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.disk.remove(path)
    }
    fn write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        durability: Durability,
        token: u64,
    ) {
        self.disk.write(file, offset, buf, durability, token)
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        self.reads.push(token);
        self.disk.read(file, offset, buf, token)
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.disk.sync(file, token)
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        self.world.borrow_mut().take_ready(self.endpoint, out);
        loop {
            self.take_disk(out)?;
            if out.len() - before >= min_complete {
                return Ok(());
            }
            // Only the disk can be waited for inside a turn (the store waits for its own
            // writes and reads): time moves to its next completion. The network's
            // completions come with the world's events.
            match self.next_disk_us() {
                Some(at) => self.world.borrow().clock.advance_to(at),
                None => return Ok(()),
            }
        }
    }
    fn in_flight(&self) -> usize {
        self.disk.in_flight()
            + self.held.len()
            + self.stalled.len()
            + self.world.borrow().in_flight(self.endpoint)
    }
}

/// The catalog files of one node, by path (snapshots and change logs): replaced whole or
/// appended to, they survive its crashes.
pub(crate) type CatalogFiles = Rc<RefCell<BTreeMap<PathBuf, Vec<u8>>>>;

/// One shard's catalog file in its node's [`CatalogFiles`].
#[derive(Debug)]
pub(crate) struct SimCatalogFile {
    pub(crate) files: CatalogFiles,
    pub(crate) path: PathBuf,
}

impl CatalogFile for SimCatalogFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.files.borrow().get(&self.path).cloned())
    }

    fn read_changes(&mut self) -> io::Result<Vec<u8>> {
        let changes = changes_path(&self.path);
        Ok(self
            .files
            .borrow()
            .get(&changes)
            .cloned()
            .unwrap_or_default())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let changes = changes_path(&self.path);
        let mut files = self.files.borrow_mut();
        files.entry(changes).or_default().extend_from_slice(bytes);
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut files = self.files.borrow_mut();
        files.insert(self.path.clone(), bytes.to_vec());
        files.remove(&changes_path(&self.path));
        Ok(())
    }
}
