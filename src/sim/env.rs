//! A simulated shard's environment: its disk is a [`SimIo`] on its node's [`SimDisk`]
//! (crashes lose what was not flushed), its network and timers are the [`World`]'s. Both kinds
//! of completion come out of [`Io::wait`], as on the real ring. A node's catalogs live in a
//! map that survives its crashes, like a file replaced atomically and durably.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use chainlog_storage::buf::AlignedBuf;
use chainlog_storage::io::{Completion, Durability, FileId, Io};
use chainlog_storage::SimIo;

use super::world::{EndpointId, HostId, World};
use crate::node::catalog::CatalogFile;
use crate::node::env::{Net, RawSlice, Sock};
use crate::node::ops::NetToken;

/// The world, shared by every simulated process of a run (one thread).
pub(crate) type Shared = Rc<RefCell<World>>;

/// One shard's environment. See the module documentation.
#[derive(Debug)]
pub(crate) struct SimEnv {
    disk: SimIo,
    world: Shared,
    endpoint: EndpointId,
    host: HostId,
}

impl SimEnv {
    pub(crate) fn new(disk: SimIo, world: Shared, endpoint: EndpointId, host: HostId) -> SimEnv {
        world.borrow_mut().attach(endpoint);
        SimEnv {
            disk,
            world,
            endpoint,
            host,
        }
    }

    /// When this shard has something to do next: now if completions wait, else when its disk
    /// completes an operation.
    pub(crate) fn next_us(&self) -> Option<u64> {
        let world = self.world.borrow();
        if world.has_ready(self.endpoint) {
            return Some(world.now_us());
        }
        self.disk.next_ready_us()
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
    fn register_buffers(&mut self, bufs: &mut [AlignedBuf]) -> bool {
        self.disk.register_buffers(bufs)
    }
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
        self.disk.read(file, offset, buf, token)
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.disk.sync(file, token)
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        self.world.borrow_mut().take_ready(self.endpoint, out);
        let got = out.len() - before;
        // Only the disk can be waited for inside a turn (the store waits for its own writes
        // and reads); the network's completions come with the world's events.
        self.disk.wait(min_complete.saturating_sub(got), out)
    }
    fn in_flight(&self) -> usize {
        self.disk.in_flight() + self.world.borrow().in_flight(self.endpoint)
    }
}

/// The catalog files of one node, by path: replaced whole, they survive its crashes.
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

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.files
            .borrow_mut()
            .insert(self.path.clone(), bytes.to_vec());
        Ok(())
    }
}
