//! A replication link: this shard's connection to the shard of a successor node that holds
//! some of its logs' next replicas. The link connects through the shard's ring, greets the
//! peer (HELLO, then PEER with this node's id), and carries REPLICATE requests out and their
//! answers back.
//!
//! Output is a queue of chunks: encoded frame heads (owned bytes) and **pinned store bytes**
//! (the records of an append, in the frame buffer that also goes to disk), sent together by
//! one `sendmsg` with an iovec per chunk, so records reach the successor without being copied
//! again. A pin is given back to the store once its bytes are sent, or when the link closes
//! (only after the kernel is done with every operation of the link).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use chainlog_storage::{Pin, Store, UringIo};

use crate::replication::NodeId;

/// iovecs of one `sendmsg` at most (later chunks go in the next one).
const IOV_MAX: usize = 64;

/// Where a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Not connected; a connect is tried at `retry_at_us`.
    Idle { retry_at_us: u64 },
    /// The connect is in flight.
    Connecting,
    /// HELLO and PEER sent, their answers awaited.
    Greeting,
    /// Greeted: REPLICATE requests may go.
    Up,
    /// Closing: waiting for the kernel to finish the link's operations.
    Closing,
}

/// What a request on the link was (to interpret its answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    Hello,
    Peer,
    /// REPLICATE RECORDS of `log_id` from `first`, `bytes` long (unacked until answered).
    Records {
        log_id: u64,
        first: u64,
        bytes: usize,
    },
    /// REPLICATE TRIM of `log_id`.
    Trim {
        log_id: u64,
    },
    /// REPLICATE BARRIER of `log_id` settling barriers up to `covers`.
    Barrier {
        log_id: u64,
        covers: u64,
    },
    /// PULL of `log_id` from `from`.
    Pull {
        log_id: u64,
        from: u64,
    },
}

/// Bytes to send.
#[derive(Debug)]
enum Chunk {
    Bytes(Vec<u8>),
    Pinned(Pin),
}

/// A connection to a successor's shard.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) peer: NodeId,
    pub(crate) shard: u16,
    pub(crate) addr: SocketAddr,
    pub(crate) generation: u32,
    pub(crate) state: LinkState,
    fd: Option<OwnedFd>,
    /// The peer's address for the connect (the kernel reads it until the connect completes).
    sockaddr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
    pub(crate) connect_in_flight: bool,
    recv_buf: Box<[u8]>,
    recv_len: usize,
    pub(crate) recv_in_flight: bool,
    out: VecDeque<Chunk>,
    /// Bytes of `out[0]` already sent.
    sent_offset: usize,
    pub(crate) send_in_flight: bool,
    /// Chunks the in-flight `sendmsg` covers (from the front): the kernel reads them.
    in_kernel: usize,
    iov: Box<[libc::iovec; IOV_MAX]>,
    msg: Box<libc::msghdr>,
    /// Requests sent and not answered, by request id.
    pub(crate) requests: HashMap<u64, Sent>,
    /// Record bytes sent and not yet answered (the link's backpressure measure).
    pub(crate) unacked_bytes: usize,
    /// Pause before the next connect after a failure (doubles up to a bound).
    pub(crate) backoff_ms: u64,
    /// The peer's shard moved: once closed, the link is dropped (a new one replaces it).
    pub(crate) retired: bool,
}

/// Longest pause between two connects.
pub(crate) const BACKOFF_MAX_MS: u64 = 1000;
/// First pause after a failure.
pub(crate) const BACKOFF_MIN_MS: u64 = 50;

impl Link {
    pub(crate) fn new(
        peer: NodeId,
        shard: u16,
        addr: SocketAddr,
        generation: u32,
        recv_bytes: usize,
    ) -> Link {
        Link {
            peer,
            shard,
            addr,
            generation,
            state: LinkState::Idle { retry_at_us: 0 },
            fd: None,
            sockaddr: Box::new(sockaddr_of(addr)),
            connect_in_flight: false,
            recv_buf: vec![0; recv_bytes].into_boxed_slice(),
            recv_len: 0,
            recv_in_flight: false,
            out: VecDeque::new(),
            sent_offset: 0,
            send_in_flight: false,
            in_kernel: 0,
            // SAFETY: iovec and msghdr are plain C structs for which all-zero is valid.
            iov: Box::new(unsafe { std::mem::zeroed() }),
            // SAFETY: as above.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            requests: HashMap::new(),
            unacked_bytes: 0,
            backoff_ms: BACKOFF_MIN_MS,
            retired: false,
        }
    }

    /// Opens the socket for a connect; returns it with the address to connect to (which
    /// stays valid until the connect completes).
    pub(crate) fn open_socket(
        &mut self,
    ) -> std::io::Result<(RawFd, *const libc::sockaddr, libc::socklen_t)> {
        let family = if self.addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket takes no pointers.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        super::shard::set_nodelay(&fd);
        let raw = fd.as_raw_fd();
        self.fd = Some(fd);
        self.connect_in_flight = true;
        self.state = LinkState::Connecting;
        let (storage, len) = &*self.sockaddr;
        Ok((raw, (storage as *const libc::sockaddr_storage).cast(), *len))
    }

    /// The socket, while the link has one.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Queues encoded frames.
    pub(crate) fn push_bytes(&mut self, bytes: Vec<u8>) {
        // Coalesce small frames into the last chunk, unless the kernel reads it (a Vec that
        // grows may move).
        let last_in_kernel = self.send_in_flight && self.out.len() <= self.in_kernel;
        if let (Some(Chunk::Bytes(last)), false) = (self.out.back_mut(), last_in_kernel) {
            last.extend_from_slice(&bytes);
            return;
        }
        self.out.push_back(Chunk::Bytes(bytes));
    }

    /// Queues pinned store bytes (they follow the frame head queued just before).
    pub(crate) fn push_pinned(&mut self, pin: Pin) {
        self.out.push_back(Chunk::Pinned(pin));
    }

    /// If nothing is being sent and output is queued, builds the `sendmsg` of the front
    /// chunks and returns it for submission.
    pub(crate) fn start_send(&mut self, store: &Store<UringIo>) -> Option<*const libc::msghdr> {
        if self.send_in_flight || self.out.is_empty() || self.state == LinkState::Closing {
            return None;
        }
        let mut n = 0;
        for (i, chunk) in self.out.iter().take(IOV_MAX).enumerate() {
            let bytes: &[u8] = match chunk {
                Chunk::Bytes(b) => b,
                Chunk::Pinned(pin) => store.pinned(pin),
            };
            let bytes = if i == 0 {
                &bytes[self.sent_offset..]
            } else {
                bytes
            };
            self.iov[i] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            n = i + 1;
        }
        self.in_kernel = n;
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n;
        self.send_in_flight = true;
        Some(&*self.msg as *const libc::msghdr)
    }

    /// `n` bytes of the in-flight send went out: drops (and unpins) the chunks fully sent.
    pub(crate) fn sent(&mut self, mut n: usize, store: &mut Store<UringIo>) {
        self.send_in_flight = false;
        self.in_kernel = 0;
        while n > 0 {
            let chunk = self.out.front().expect("sent bytes were queued");
            let len = match chunk {
                Chunk::Bytes(b) => b.len(),
                Chunk::Pinned(pin) => pin.len(),
            } - self.sent_offset;
            if n < len {
                self.sent_offset += n;
                return;
            }
            n -= len;
            self.sent_offset = 0;
            if let Some(Chunk::Pinned(pin)) = self.out.pop_front() {
                store.unpin(pin);
            }
        }
    }

    /// Where the next receive goes.
    pub(crate) fn recv_space(&mut self) -> &mut [u8] {
        &mut self.recv_buf[self.recv_len..]
    }

    pub(crate) fn received(&mut self, n: usize) {
        self.recv_len += n;
        debug_assert!(self.recv_len <= self.recv_buf.len());
    }

    /// The received bytes not consumed yet, and the requests their answers are for.
    pub(crate) fn input_and_requests(&mut self) -> (&[u8], &mut HashMap<u64, Sent>) {
        (&self.recv_buf[..self.recv_len], &mut self.requests)
    }

    /// Drops the first `n` input bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        self.recv_buf.copy_within(n..self.recv_len, 0);
        self.recv_len -= n;
    }

    /// Starts closing: both directions are shut down so in-flight operations complete.
    pub(crate) fn close(&mut self) {
        if let Some(fd) = &self.fd {
            // SAFETY: the descriptor is open (owned by self).
            unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.state = LinkState::Closing;
    }

    /// No operation of the link is in the kernel.
    pub(crate) fn idle(&self) -> bool {
        !self.connect_in_flight && !self.recv_in_flight && !self.send_in_flight
    }

    /// Finishes a close once the kernel is done: unpins what was queued, forgets requests,
    /// and waits `backoff_ms` before connecting again.
    pub(crate) fn reset(&mut self, store: &mut Store<UringIo>, now_us: u64) {
        debug_assert!(self.idle());
        for chunk in self.out.drain(..) {
            if let Chunk::Pinned(pin) = chunk {
                store.unpin(pin);
            }
        }
        self.sent_offset = 0;
        self.fd = None;
        self.recv_len = 0;
        self.requests.clear();
        self.unacked_bytes = 0;
        self.state = LinkState::Idle {
            retry_at_us: now_us + self.backoff_ms * 1000,
        };
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
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
