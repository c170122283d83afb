//! The node's environment seam: everything a shard does to the world besides its store's
//! files goes through [`Net`] (sockets, timers, its wake-up eventfds), and its time comes from
//! a [`Clock`](chainlog_storage::Clock). A `Net` is also the store's [`Io`]: one object drives
//! disk and network together, so that on the real backend one `io_uring_enter` per loop turn
//! submits both and reaps both ([`RealEnv`], over [`UringIo`]), and in the simulator one
//! event queue orders both (`crate::sim`).
//!
//! Operations are asynchronous and complete, like disk operations, through [`Io::wait`] with
//! the caller's token (a [`NetToken`], which carries
//! [`EXTERNAL_TOKEN`](chainlog_storage::EXTERNAL_TOKEN) so the store hands the completion back
//! untouched). Buffers are the caller's: a receive or a send names memory that must stay
//! valid, and for a receive untouched, until its completion, which is why those methods are
//! `unsafe` with that contract. Everything else an operation needs for its lifetime (socket
//! addresses, `msghdr`s and iovecs, timeouts) the environment keeps itself.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use chainlog_storage::buf::AlignedBuf;
use chainlog_storage::io::{Completion, Durability, FileId, Io};
use chainlog_storage::UringIo;
use io_uring::{opcode, types};

use super::ops::{NetOp, NetToken};

/// A socket of the environment: a descriptor on the real backend, a handle in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Sock(pub(crate) i32);

/// Bytes a send gathers, by address: they belong to the caller, who keeps them valid and
/// unchanged until the send completes ([`Net::send`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawSlice {
    pub(crate) ptr: *const u8,
    pub(crate) len: usize,
}

impl RawSlice {
    pub(crate) fn of(bytes: &[u8]) -> RawSlice {
        RawSlice {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }
}

/// Sockets, timers and wake-ups, beside the store's disk ([`Io`]).
pub(crate) trait Net: Io {
    /// Accepts a connection on `listener`; the completion's result is a number that
    /// [`Net::accepted`] turns into the new socket.
    fn accept(&mut self, listener: Sock, token: NetToken);

    /// Takes the socket an accept's completion returned (`n`), set up like every socket.
    fn accepted(&mut self, n: usize) -> Sock;

    /// Receives into `buf`; the completion's result is the bytes received (0: the peer
    /// closed).
    ///
    /// # Safety
    /// `buf` must stay valid, and nothing may read or write it, until the completion.
    unsafe fn recv(&mut self, sock: Sock, buf: *mut u8, len: usize, token: NetToken);

    /// Sends `bufs` in order (one `sendmsg`, at most [`SEND_IOV_MAX`] of them, one send in
    /// flight per socket); the completion's result is the bytes sent (a short send leaves the
    /// rest to send again).
    ///
    /// # Safety
    /// The bytes `bufs` point to must stay valid and unchanged until the completion.
    unsafe fn send(&mut self, sock: Sock, bufs: &[RawSlice], token: NetToken);

    /// Opens a socket and connects it to `addr`; the completion's result is 0 once
    /// connected, or the error.
    fn connect(&mut self, addr: SocketAddr, token: NetToken) -> io::Result<Sock>;

    /// Shuts both directions of `sock` down: its operations in flight complete.
    fn shutdown(&mut self, sock: Sock);

    /// Cancels every operation in flight on `sock` (they complete with an error).
    fn cancel(&mut self, sock: Sock);

    /// Closes `sock`. No operation of it may be in flight.
    fn close_socket(&mut self, sock: Sock);

    /// Completes once, `after_us` microseconds from now.
    fn timeout(&mut self, after_us: u64, token: NetToken);

    /// Reads the 8-byte counter of an eventfd the shard was started with (its stop signal,
    /// the control thread's news); the completion comes when it is written.
    fn read_event(&mut self, eventfd: RawFd, token: NetToken);
}

/// The real environment of a shard: its io_uring ([`UringIo`], also the store's disk), and
/// the memory the kernel reads while socket operations are in flight.
#[derive(Debug)]
pub(crate) struct RealEnv {
    io: UringIo,
    /// The peer address of each socket with a connect in flight (the kernel reads it).
    connecting: HashMap<RawFd, Box<(libc::sockaddr_storage, libc::socklen_t)>>,
    /// The `msghdr` and iovecs of each socket's send in flight.
    sending: HashMap<RawFd, Box<SendMsg>>,
    /// Timeouts by length (a handful of distinct periods; the kernel reads them at submission,
    /// which is the next ring enter, so they live as long as the environment).
    periods: HashMap<u64, Box<types::Timespec>>,
    /// Eventfd read buffers (the kernel writes 8 bytes into them).
    events: HashMap<RawFd, Box<[u8; 8]>>,
    /// Sockets this environment opened or accepted, closed with it.
    sockets: HashMap<RawFd, OwnedFd>,
}

/// The most iovecs one send gathers.
pub(crate) const SEND_IOV_MAX: usize = 64;

#[derive(Debug)]
struct SendMsg {
    msg: libc::msghdr,
    iov: [libc::iovec; SEND_IOV_MAX],
}

impl RealEnv {
    /// A shard's environment over its ring.
    pub(crate) fn new(io: UringIo) -> RealEnv {
        RealEnv {
            io,
            connecting: HashMap::new(),
            sending: HashMap::new(),
            periods: HashMap::new(),
            events: HashMap::new(),
            sockets: HashMap::new(),
        }
    }

    /// Takes a socket the shard was started with (its listener): closed with the environment.
    pub(crate) fn adopt(&mut self, fd: OwnedFd) -> Sock {
        let raw = fd.as_raw_fd();
        self.sockets.insert(raw, fd);
        Sock(raw)
    }

    fn submit(&mut self, entry: io_uring::squeue::Entry, token: NetToken) {
        // SAFETY: every entry built here points only into memory this environment keeps
        // until the operation completes (or into the caller's, under the unsafe methods'
        // contracts), on sockets it keeps open.
        unsafe { self.io.submit_external(entry, token.encode()) };
    }
}

impl Net for RealEnv {
    fn accept(&mut self, listener: Sock, token: NetToken) {
        let entry = opcode::Accept::new(
            types::Fd(listener.0),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        self.submit(entry, token);
    }

    fn accepted(&mut self, n: usize) -> Sock {
        // SAFETY: a successful accept returns a new descriptor that nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(n as RawFd) };
        set_nodelay(fd.as_raw_fd());
        self.adopt(fd)
    }

    unsafe fn recv(&mut self, sock: Sock, buf: *mut u8, len: usize, token: NetToken) {
        let entry = opcode::Recv::new(types::Fd(sock.0), buf, len as u32).build();
        self.submit(entry, token);
    }

    unsafe fn send(&mut self, sock: Sock, bufs: &[RawSlice], token: NetToken) {
        assert!(
            !bufs.is_empty() && bufs.len() <= SEND_IOV_MAX,
            "1..={SEND_IOV_MAX} buffers per send"
        );
        let slot = self.sending.entry(sock.0).or_insert_with(|| {
            Box::new(SendMsg {
                // SAFETY: msghdr and iovec are plain C structs for which all-zero is valid.
                msg: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
            })
        });
        for (iov, buf) in slot.iov.iter_mut().zip(bufs) {
            *iov = libc::iovec {
                iov_base: buf.ptr as *mut libc::c_void,
                iov_len: buf.len,
            };
        }
        slot.msg.msg_iov = slot.iov.as_mut_ptr();
        slot.msg.msg_iovlen = bufs.len();
        let msg: *const libc::msghdr = &slot.msg;
        let entry = opcode::SendMsg::new(types::Fd(sock.0), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        self.submit(entry, token);
    }

    fn connect(&mut self, addr: SocketAddr, token: NetToken) -> io::Result<Sock> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_nodelay(fd.as_raw_fd());
        let raw = fd.as_raw_fd();
        self.sockets.insert(raw, fd);
        let sockaddr = self
            .connecting
            .entry(raw)
            .or_insert_with(|| Box::new(sockaddr_of(addr)));
        **sockaddr = sockaddr_of(addr);
        let (storage, len) = &**sockaddr;
        let ptr = (storage as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
        let entry = opcode::Connect::new(types::Fd(raw), ptr, *len).build();
        self.submit(entry, token);
        Ok(Sock(raw))
    }

    fn shutdown(&mut self, sock: Sock) {
        // SAFETY: shutdown(2) on a descriptor this environment keeps open.
        unsafe { libc::shutdown(sock.0, libc::SHUT_RDWR) };
    }

    fn cancel(&mut self, sock: Sock) {
        let entry =
            opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(sock.0)).all()).build();
        self.submit(entry, NetToken::of(NetOp::Cancel));
    }

    fn close_socket(&mut self, sock: Sock) {
        self.connecting.remove(&sock.0);
        self.sending.remove(&sock.0);
        self.sockets.remove(&sock.0);
    }

    fn timeout(&mut self, after_us: u64, token: NetToken) {
        let ts = self.periods.entry(after_us).or_insert_with(|| {
            Box::new(
                types::Timespec::new()
                    .sec(after_us / 1_000_000)
                    .nsec((after_us % 1_000_000) as u32 * 1000),
            )
        });
        let ptr: *const types::Timespec = &**ts;
        let entry = opcode::Timeout::new(ptr).build();
        self.submit(entry, token);
    }

    fn read_event(&mut self, eventfd: RawFd, token: NetToken) {
        let buf = self
            .events
            .entry(eventfd)
            .or_insert_with(|| Box::new([0; 8]));
        let ptr = buf.as_mut_ptr();
        let entry = opcode::Read::new(types::Fd(eventfd), ptr, 8).build();
        self.submit(entry, token);
    }
}

/// The store's side: [`UringIo`]'s, unchanged.
impl Io for RealEnv {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.io.create_dir_all(dir)
    }
    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        self.io.list_dir(dir)
    }
    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        self.io.open(path, create)
    }
    fn open_dir(&mut self, path: &Path) -> io::Result<FileId> {
        self.io.open_dir(path)
    }
    fn file_size(&mut self, file: FileId) -> io::Result<u64> {
        self.io.file_size(file)
    }
    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.io.allocate(file, len)
    }
    fn close(&mut self, file: FileId) {
        self.io.close(file)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.io.remove(path)
    }
    fn write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        durability: Durability,
        token: u64,
    ) {
        self.io.write(file, offset, buf, durability, token)
    }
    fn read(&mut self, file: FileId, offset: u64, buf: AlignedBuf, token: u64) {
        self.io.read(file, offset, buf, token)
    }
    fn sync(&mut self, file: FileId, token: u64) {
        self.io.sync(file, token)
    }
    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        self.io.wait(min_complete, out)
    }
    fn in_flight(&self) -> usize {
        self.io.in_flight()
    }
}

/// Disables Nagle's algorithm: answers and forwards are small and must not wait for an ack.
pub(crate) fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a socket descriptor and a live int of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// A socket address in the C layout, with its length.
fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            unsafe {
                std::ptr::write(
                    (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned.
            unsafe {
                std::ptr::write(
                    (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
