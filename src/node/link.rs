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

use chainlog_storage::{Pin, Store};

use super::env::{Net, RawSlice, Sock, SEND_IOV_MAX};
use crate::replication::NodeId;

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
    /// PULL of `log_id` from `from`, sent in the log's `epoch` here.
    Pull {
        log_id: u64,
        from: u64,
        epoch: u64,
    },
    /// A learner's PULL of `log_id` from `from`.
    Learn {
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
    sock: Option<Sock>,
    pub(crate) connect_in_flight: bool,
    recv_buf: Box<[u8]>,
    recv_len: usize,
    pub(crate) recv_in_flight: bool,
    out: VecDeque<Chunk>,
    /// Bytes of `out[0]` already sent.
    sent_offset: usize,
    pub(crate) send_in_flight: bool,
    /// Chunks the in-flight send covers (from the front): the kernel reads them.
    in_kernel: usize,
    /// Where the in-flight send's chunks are (reused).
    gather: Vec<RawSlice>,
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
            sock: None,
            connect_in_flight: false,
            recv_buf: vec![0; recv_bytes].into_boxed_slice(),
            recv_len: 0,
            recv_in_flight: false,
            out: VecDeque::new(),
            sent_offset: 0,
            send_in_flight: false,
            in_kernel: 0,
            gather: Vec::with_capacity(SEND_IOV_MAX),
            requests: HashMap::new(),
            unacked_bytes: 0,
            backoff_ms: BACKOFF_MIN_MS,
            retired: false,
        }
    }

    /// A connect to the peer was submitted on `sock`.
    pub(crate) fn connecting(&mut self, sock: Sock) {
        self.sock = Some(sock);
        self.connect_in_flight = true;
        self.state = LinkState::Connecting;
    }

    /// The socket, while the link has one.
    pub(crate) fn sock(&self) -> Option<Sock> {
        self.sock
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

    /// If nothing is being sent and output is queued, gathers the front chunks for one send
    /// and returns where they are (they stay put until [`sent`](Self::sent): owned chunks are
    /// not touched while in the kernel, pinned ones stay pinned).
    pub(crate) fn start_send<E: Net>(&mut self, store: &Store<E>) -> Option<&[RawSlice]> {
        if self.send_in_flight || self.out.is_empty() || self.state == LinkState::Closing {
            return None;
        }
        self.gather.clear();
        for (i, chunk) in self.out.iter().take(SEND_IOV_MAX).enumerate() {
            let bytes: &[u8] = match chunk {
                Chunk::Bytes(b) => b,
                Chunk::Pinned(pin) => store.pinned(pin),
            };
            let bytes = if i == 0 {
                &bytes[self.sent_offset..]
            } else {
                bytes
            };
            self.gather.push(RawSlice::of(bytes));
        }
        self.in_kernel = self.gather.len();
        self.send_in_flight = true;
        Some(&self.gather)
    }

    /// `n` bytes of the in-flight send went out: drops (and unpins) the chunks fully sent.
    pub(crate) fn sent<E: Net>(&mut self, mut n: usize, store: &mut Store<E>) {
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
    pub(crate) fn close(&mut self, net: &mut impl Net) {
        if let Some(sock) = self.sock {
            net.shutdown(sock);
        }
        self.state = LinkState::Closing;
    }

    /// No operation of the link is in the kernel.
    pub(crate) fn idle(&self) -> bool {
        !self.connect_in_flight && !self.recv_in_flight && !self.send_in_flight
    }

    /// Finishes a close once the kernel is done: unpins what was queued, forgets requests,
    /// and waits `backoff_ms` before connecting again.
    pub(crate) fn reset<E: Net>(&mut self, store: &mut Store<E>, now_us: u64) {
        debug_assert!(self.idle());
        for chunk in self.out.drain(..) {
            if let Chunk::Pinned(pin) = chunk {
                store.unpin(pin);
            }
        }
        self.sent_offset = 0;
        if let Some(sock) = self.sock.take() {
            store.io_mut().close_socket(sock);
        }
        self.recv_len = 0;
        self.requests.clear();
        self.unacked_bytes = 0;
        self.state = LinkState::Idle {
            retry_at_us: now_us + self.backoff_ms * 1000,
        };
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
    }
}
