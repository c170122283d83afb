//! One client connection of a shard: its socket, its receive buffer (frames are parsed in
//! place, so record bytes go from this buffer straight into the store's frame), its output
//! (double-buffered: one buffer is filled while the other is in the kernel), and its protocol
//! session: the answers it waits for, in order.
//!
//! The receive buffer starts at [`RECV_START_BYTES`] and grows, between receives, to hold
//! the frame that is arriving (up to the shard's maximum, two frames of `frame_bytes_max`),
//! and shrinks back once what it holds fits the start size again, at once from above
//! [`RECV_KEEP_BYTES`] and else after [`RECV_SHRINK_AFTER`] small frames in a row (a
//! stream of 64 KiB appends regrew it for every frame: 20% fewer of them per second). An
//! idle connection costs tens of kilobytes, not the megabytes of a frame it never sends;
//! one that sent large frames keeps at most about what it sent (ARCHITECTURE.md 12).

use std::collections::VecDeque;

use chainlog_net::Opcode;

use super::env::Sock;
use super::refusal::Refusal;
use super::subscriptions::Subscriptions;

/// The store token of a connection's appends and trims (and of its REPLICATEs' answers).
pub(crate) fn ack_token(slot: u32, generation: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(slot)
}

/// The connection a store token names ([`ack_token`]), if it is still open.
pub(crate) fn conn_of(conns: &mut [Option<Conn>], token: u64) -> Option<&mut Conn> {
    let (slot, generation) = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
    conns
        .get_mut(slot)
        .and_then(Option::as_mut)
        .filter(|c| c.generation == generation)
}

/// A shard's bounds on its client connections (PROTOCOL.md 3.5): how many it holds, and how
/// long one may go without saying HELLO, or without sending anything once it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections a shard holds at most; one more is answered OVERLOADED and closed.
    pub connections_max: usize,
    /// A connection that has not sent a whole HELLO this long after its accept is closed.
    pub hello_timeout_ms: u64,
    /// A client connection with nothing unanswered, no subscription and no replication that
    /// sent nothing for this long is closed (0: never).
    pub idle_timeout_ms: u64,
}

impl ConnLimits {
    /// 4,096 connections per shard, 10 s to say HELLO, 10 minutes idle.
    pub const DEFAULT: ConnLimits = ConnLimits {
        connections_max: 4096,
        hello_timeout_ms: 10_000,
        idle_timeout_ms: 600_000,
    };

    /// Why `conn` is to be closed at `now_us`, if it is: no HELLO in time, or idle too long.
    pub(crate) fn expired(&self, conn: &Conn, now_us: u64) -> Option<&'static str> {
        let session = &conn.session;
        if session.closing {
            return None;
        }
        let since = |us: u64| now_us.saturating_sub(us) / 1000;
        if !session.greeted {
            return (since(conn.opened_us) >= self.hello_timeout_ms).then_some("no HELLO");
        }
        let quiet = session.peer.is_none()
            && session.pending.is_empty()
            && session.barriers.is_empty()
            && session.subscriptions.is_empty()
            && conn.flushed();
        (self.idle_timeout_ms > 0 && quiet && since(conn.last_input_us) >= self.idle_timeout_ms)
            .then_some("idle")
    }
}

/// A connection's receive buffer when it opens, and whenever what it holds fits again.
pub(crate) const RECV_START_BYTES: usize = 64 << 10;
/// A grown receive buffer up to this size is kept while large frames keep coming.
const RECV_KEEP_BYTES: usize = 1 << 20;
/// Frames in a row that fit [`RECV_START_BYTES`] after which a kept buffer shrinks back.
const RECV_SHRINK_AFTER: u8 = 8;

/// Frame bytes a frame's length field announces (`4 + length`, PROTOCOL.md 2), if `input`
/// holds the field.
fn announced_bytes(input: &[u8]) -> Option<usize> {
    let length = input.first_chunk::<4>()?;
    Some(4 + u32::from_le_bytes(*length) as usize)
}

/// A client connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The socket (closed by the shard once the connection is idle).
    sock: Sock,
    pub(crate) generation: u32,
    /// Received bytes not yet consumed are `recv_buf[..recv_len]`. Replaced (grown or
    /// shrunk) only while no receive is in flight.
    recv_buf: Box<[u8]>,
    recv_len: usize,
    /// How large `recv_buf` may grow.
    recv_max: usize,
    /// Consumes in a row of what fit [`RECV_START_BYTES`], with a rest that fits too.
    recv_small: u8,
    /// When it was accepted, and when bytes last came (µs of the shard's clock).
    opened_us: u64,
    last_input_us: u64,
    pub(crate) recv_in_flight: bool,
    /// Bytes the kernel is sending (untouched while `send_in_flight`), and how many went.
    sending: Vec<u8>,
    sent: usize,
    /// The traces ([`super::metrics::Traces`]) whose answers are in `sending`.
    sending_traced: Vec<u64>,
    pub(crate) send_in_flight: bool,
    /// The protocol's state of this connection.
    pub(crate) session: Session,
}

/// What the protocol keeps per connection.
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Encoded responses waiting for the socket.
    pub(crate) out: Vec<u8>,
    /// The HELLO exchange happened.
    pub(crate) greeted: bool,
    /// Answers owed in order: appends and trims waiting for durability, and errors of later
    /// appends held behind them (APPEND answers come in the order the APPENDs were sent).
    pub(crate) pending: VecDeque<Pending>,
    /// Index in `pending` of the first append or trim whose store ack has not come (the
    /// store acks a connection's operations in the order it took them).
    pub(crate) local_next: usize,
    /// CHECK_TAILs waiting for their barrier to settle down the chain, SEALs for their end
    /// to be durable.
    pub(crate) barriers: Vec<Barrier>,
    /// The node this connection carries replication traffic from (PEER).
    pub(crate) peer: Option<u64>,
    /// Stop reading and close once the output is flushed (protocol error, peer gone, stop).
    pub(crate) closing: bool,
    /// Bytes of a refused oversized frame still to read and drop before closing
    /// ([`Session::discard_oversized`]).
    pub(crate) discard_bytes: u64,
    /// Active subscriptions (PROTOCOL.md section 7).
    pub(crate) subscriptions: Subscriptions,
    /// The traces ([`super::metrics::Traces`]) whose answers are in `out`.
    pub(crate) traced: Vec<u64>,
}

/// A request answered once something about its log holds: a CHECK_TAIL once its barrier
/// settled down the chain, a SEAL once the sealed end is durable here.
#[derive(Debug)]
pub(crate) struct Barrier {
    pub(crate) request_id: u64,
    pub(crate) log_id: u64,
    pub(crate) until: Until,
}

/// What a [`Barrier`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Until {
    /// CHECK_TAIL: barrier `seq` of the log settled.
    Settled { seq: u64 },
    /// SEAL of `epoch`: the log's records below `end` are durable here.
    Durable { epoch: u64, end: u64 },
}

/// An answer owed to a connection, in order.
#[derive(Debug)]
pub(crate) enum Pending {
    /// An append waiting until its records (below `end`) are durable here (`durable_us`:
    /// when its store ack was seen) and committed on the log's whole chain; `received_us` is
    /// when its frame arrived.
    Append {
        request_id: u64,
        received_us: u64,
        log_id: u64,
        /// The epoch its records were sequenced in.
        epoch: u64,
        first: u64,
        end: u64,
        durable_us: Option<u64>,
    },
    /// A trim waiting until it is durable here and on the whole chain.
    Trim {
        request_id: u64,
        log_id: u64,
        before: u64,
        local: bool,
    },
    /// An error, sent once everything before it is answered.
    Failed {
        request_id: u64,
        opcode: Opcode,
        refusal: Refusal,
    },
}

/// The largest oversized frame whose bytes a closing connection still reads and drops
/// (PROTOCOL.md 2.2): a frame announced larger is not read on (a client still writing it
/// sees its write fail).
pub(crate) const OVERSIZED_DISCARD_BYTES_MAX: u64 = 64 << 20;

impl Session {
    /// The framing error `error` closes the connection, with `buffered` bytes of input
    /// received from the frame's first byte on. If it is a frame over `frame_bytes_max` of
    /// at most [`OVERSIZED_DISCARD_BYTES_MAX`] bytes, the rest of it is read and dropped
    /// before the close: the client finishes writing it and then reads the MALFORMED answer,
    /// where a close with its bytes still arriving would reset the connection under the
    /// client's write (EPIPE, and maybe the answer lost).
    pub(crate) fn discard_oversized(&mut self, error: &chainlog_net::Error, buffered: usize) {
        if let chainlog_net::Error::FrameTooLarge { frame_bytes, .. } = *error {
            if frame_bytes <= OVERSIZED_DISCARD_BYTES_MAX {
                self.discard_bytes = frame_bytes.saturating_sub(buffered as u64);
            }
        }
    }

    /// `n` bytes of the oversized frame being discarded arrived (and were dropped).
    pub(crate) fn discarded(&mut self, n: usize) {
        debug_assert!(self.closing && self.discard_bytes > 0);
        self.discard_bytes = self.discard_bytes.saturating_sub(n as u64);
    }
}

impl Conn {
    /// A connection accepted at `now_us` whose receive buffer may grow to `recv_max` bytes.
    pub(crate) fn new(sock: Sock, generation: u32, recv_max: usize, now_us: u64) -> Conn {
        Conn {
            sock,
            generation,
            recv_buf: vec![0; RECV_START_BYTES.min(recv_max)].into_boxed_slice(),
            recv_len: 0,
            recv_max,
            recv_small: 0,
            opened_us: now_us,
            last_input_us: now_us,
            recv_in_flight: false,
            sending: Vec::new(),
            sent: 0,
            sending_traced: Vec::new(),
            send_in_flight: false,
            session: Session::default(),
        }
    }

    pub(crate) fn sock(&self) -> Sock {
        self.sock
    }

    /// The size of its receive buffer (the memory it holds for input).
    pub(crate) fn recv_buffer_bytes(&self) -> usize {
        self.recv_buf.len()
    }

    /// Where the next receive goes (empty when the buffer is full: [`grow`](Self::grow)).
    pub(crate) fn recv_space(&mut self) -> &mut [u8] {
        &mut self.recv_buf[self.recv_len..]
    }

    /// Makes room in a full buffer for the frame that is arriving: to the size its length
    /// field announces (at least double, at most the maximum). False if the buffer is at its
    /// maximum already (a frame larger than that is refused by the frame limit before it
    /// fills the buffer, so only a limit mismatch gets here).
    pub(crate) fn grow(&mut self) -> bool {
        debug_assert!(!self.recv_in_flight, "the kernel owns the receive buffer");
        let len = self.recv_buf.len();
        if len >= self.recv_max {
            return false;
        }
        let wanted = announced_bytes(&self.recv_buf[..self.recv_len]).unwrap_or(0);
        self.resize(wanted.max(2 * len).min(self.recv_max));
        true
    }

    /// Replaces the receive buffer by one of `len` bytes holding what was received.
    fn resize(&mut self, len: usize) {
        debug_assert!(len >= self.recv_len);
        let mut buf = vec![0; len].into_boxed_slice();
        buf[..self.recv_len].copy_from_slice(&self.recv_buf[..self.recv_len]);
        self.recv_buf = buf;
    }

    /// `n` bytes arrived at `now_us`.
    pub(crate) fn received(&mut self, n: usize, now_us: u64) {
        self.last_input_us = now_us;
        self.recv_len += n;
        debug_assert!(self.recv_len <= self.recv_buf.len());
    }

    /// The received bytes not consumed yet, and the session to answer them in.
    pub(crate) fn input(&mut self) -> (&[u8], &mut Session) {
        (&self.recv_buf[..self.recv_len], &mut self.session)
    }

    /// Drops the first `n` input bytes (whole frames that were handled); a grown buffer
    /// shrinks back once the rest, and the frame it begins, fit the start size (module
    /// header: at once if it is large, else once small frames keep coming).
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(!self.recv_in_flight, "the kernel owns the receive buffer");
        self.recv_buf.copy_within(n..self.recv_len, 0);
        self.recv_len -= n;
        if self.recv_buf.len() <= RECV_START_BYTES {
            return;
        }
        let rest = &self.recv_buf[..self.recv_len];
        if n > RECV_START_BYTES || announced_bytes(rest).unwrap_or(0) > RECV_START_BYTES {
            self.recv_small = 0;
            return;
        }
        self.recv_small = self.recv_small.saturating_add(1);
        if self.recv_buf.len() > RECV_KEEP_BYTES || self.recv_small >= RECV_SHRINK_AFTER {
            self.recv_small = 0;
            self.resize(RECV_START_BYTES);
        }
    }

    /// If nothing is being sent and output is queued, makes it the in-flight buffer and
    /// returns it for submission.
    pub(crate) fn start_send(&mut self) -> Option<&[u8]> {
        if self.send_in_flight || self.session.out.is_empty() {
            return None;
        }
        std::mem::swap(&mut self.session.out, &mut self.sending);
        std::mem::swap(&mut self.session.traced, &mut self.sending_traced);
        self.sent = 0;
        self.send_in_flight = true;
        Some(&self.sending)
    }

    /// Records that `n` bytes of the in-flight buffer went out; returns the rest if any is
    /// left (to submit again), otherwise frees the buffer for the next send.
    pub(crate) fn sent(&mut self, n: usize) -> Option<&[u8]> {
        self.sent += n;
        if self.sent < self.sending.len() {
            return Some(&self.sending[self.sent..]);
        }
        self.sending.clear();
        self.send_in_flight = false;
        None
    }

    /// The traces whose answers the send just started carries (taken: stamped once, when
    /// the send is handed to the kernel).
    pub(crate) fn take_sending_traces(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.sending_traced)
    }

    /// No operation of this connection is in the kernel: it may be closed.
    pub(crate) fn idle(&self) -> bool {
        !self.recv_in_flight && !self.send_in_flight
    }

    /// Everything queued was sent.
    pub(crate) fn flushed(&self) -> bool {
        self.session.out.is_empty() && !self.send_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn::new(Sock(7), 1, 64, 0)
    }

    /// Receives `bytes` as the kernel would, growing a full buffer as the shard does.
    fn receive(c: &mut Conn, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if c.recv_space().is_empty() {
                assert!(c.grow(), "room for the frame");
            }
            let n = c.recv_space().len().min(bytes.len());
            c.recv_space()[..n].copy_from_slice(&bytes[..n]);
            c.received(n, 0);
            bytes = &bytes[n..];
        }
    }

    /// A connection starts with a small buffer, grows it to the frame that arrives (up to
    /// its maximum, once, from the announced length), and shrinks it back once what is left
    /// fits: at once from above a MiB, else after a few small frames (a stream of large
    /// frames keeps it). An idle connection held 8 MiB (two frames of `frame_bytes_max`)
    /// from its accept.
    #[test]
    fn the_receive_buffer_grows_to_the_frame_and_shrinks_back() {
        let max = 8 << 20;
        let mut c = Conn::new(Sock(7), 1, max, 0);
        assert_eq!(c.recv_space().len(), RECV_START_BYTES);
        let frame_bytes = 1 << 20;
        let mut frame = ((frame_bytes - 4) as u32).to_le_bytes().to_vec();
        frame.resize(frame_bytes, 0xab);
        receive(&mut c, &frame[..100 << 10]);
        assert_eq!(c.recv_buf.len(), frame_bytes, "grown once, to the frame");
        receive(&mut c, &frame[100 << 10..]);
        receive(&mut c, &frame[..10]); // the next frame's start
        assert_eq!(c.input().0.len(), frame_bytes + 10);
        assert!(c.input().0[..frame_bytes] == frame[..]);
        c.consume(frame_bytes);
        assert!(
            c.recv_space().len() >= frame_bytes - 10,
            "stays grown: the next frame is as large"
        );
        c.consume(10);
        assert_eq!(c.recv_buf.len(), RECV_START_BYTES, "shrunk back at once");
        // 100 KiB frames: grown once and kept while they come, shrunk after small ones.
        let mut c = Conn::new(Sock(7), 1, max, 0);
        let mut large = ((100 << 10) - 4u32).to_le_bytes().to_vec();
        large.resize(100 << 10, 1);
        let mut small = 60u32.to_le_bytes().to_vec();
        small.resize(64, 2);
        for _ in 0..3 {
            receive(&mut c, &large);
            c.consume(large.len());
        }
        assert!(c.recv_buf.len() >= large.len(), "kept");
        for i in 1..=RECV_SHRINK_AFTER {
            assert!(c.recv_buf.len() > RECV_START_BYTES, "kept until {i}");
            receive(&mut c, &small);
            c.consume(small.len());
        }
        assert_eq!(
            c.recv_buf.len(),
            RECV_START_BYTES,
            "shrunk after small frames"
        );
        // A frame larger than the maximum can only be refused.
        let mut c = Conn::new(Sock(7), 1, 2 * RECV_START_BYTES, 0);
        let huge = (16u32 << 20).to_le_bytes();
        receive(&mut c, &huge);
        let rest = c.recv_space().len();
        receive(&mut c, &vec![0; rest]);
        assert!(c.grow() && c.recv_buf.len() == 2 * RECV_START_BYTES);
        let rest = c.recv_space().len();
        receive(&mut c, &vec![0; rest]);
        assert!(!c.grow(), "at its maximum");
    }

    #[test]
    fn input_is_consumed_from_the_front() {
        let mut c = conn();
        c.recv_space()[..5].copy_from_slice(b"hello");
        c.received(5, 0);
        c.consume(2);
        assert_eq!(c.input().0, b"llo");
        assert_eq!(c.recv_space().len(), 61);
    }

    /// A connection that does not say HELLO in time is closed, and so is a greeted one
    /// that sends nothing for the idle time while it waits for nothing; one that waits for
    /// answers or pushes, or carries replication, is not idle.
    #[test]
    fn silent_connections_expire() {
        let limits = ConnLimits {
            connections_max: 8,
            hello_timeout_ms: 10,
            idle_timeout_ms: 100,
        };
        let ms = 1000;
        let mut c = Conn::new(Sock(7), 1, 64, 5 * ms);
        assert_eq!(limits.expired(&c, 14 * ms), None);
        assert_eq!(limits.expired(&c, 15 * ms), Some("no HELLO"));
        c.session.greeted = true;
        c.received(1, 20 * ms);
        assert_eq!(limits.expired(&c, 119 * ms), None);
        assert_eq!(limits.expired(&c, 120 * ms), Some("idle"));
        c.session.peer = Some(2);
        assert_eq!(limits.expired(&c, 500 * ms), None, "replication");
        c.session.peer = None;
        c.session.out.push(1);
        assert_eq!(limits.expired(&c, 500 * ms), None, "output to send");
        c.session.out.clear();
        let never = ConnLimits {
            idle_timeout_ms: 0,
            ..limits
        };
        assert_eq!(never.expired(&c, u64::MAX), None);
        c.session.closing = true;
        assert_eq!(limits.expired(&c, u64::MAX), None, "closing already");
    }

    #[test]
    fn only_an_oversized_frame_within_the_bound_is_read_on() {
        let too_large = |frame_bytes| chainlog_net::Error::FrameTooLarge {
            frame_bytes,
            max: 4096,
        };
        let mut s = Session::default();
        s.discard_oversized(&too_large(OVERSIZED_DISCARD_BYTES_MAX), 24);
        assert_eq!(s.discard_bytes, OVERSIZED_DISCARD_BYTES_MAX - 24);
        let mut s = Session::default();
        s.discard_oversized(&too_large(OVERSIZED_DISCARD_BYTES_MAX + 1), 24);
        assert_eq!(
            s.discard_bytes, 0,
            "announced above the bound: closed at once"
        );
        s.discard_oversized(&too_large(5000), 6000);
        assert_eq!(s.discard_bytes, 0, "all of it arrived already");
        s.discard_oversized(&chainlog_net::Error::FrameTooShort { length: 3 }, 8);
        assert_eq!(s.discard_bytes, 0, "only an oversized frame is read on");
    }

    #[test]
    fn output_is_double_buffered_and_partial_sends_resume() {
        let mut c = conn();
        c.session.out.extend_from_slice(b"abcdef");
        assert_eq!(c.start_send(), Some(&b"abcdef"[..]));
        assert_eq!(c.start_send(), None, "one send at a time");
        c.session.out.extend_from_slice(b"gh");
        assert_eq!(c.sent(4), Some(&b"ef"[..]));
        assert_eq!(c.sent(2), None);
        assert!(!c.flushed(), "gh is still queued");
        assert_eq!(c.start_send(), Some(&b"gh"[..]));
        assert_eq!(c.sent(2), None);
        assert!(c.flushed() && c.idle());
    }
}
