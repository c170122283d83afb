//! The shard runtime, measured: chainlog's own loop (one io_uring drives a shard's sockets and
//! its disk writes, ARCHITECTURE.md section 12) against tokio-uring doing the same work, in
//! the same run, with the same client.
//!
//! Work per request: receive a 128-byte request on a loopback TCP connection, make it durable
//! (its bytes copied into a block-aligned buffer, written with O_DIRECT + O_DSYNC at the next
//! offset of a preallocated, already-written file), then send a 16-byte answer. Requests that
//! arrive while a write is in flight are group-committed by the next write (one write in
//! flight at a time, no timer), as the store does. The `nodisk` groups answer at once, which
//! leaves only the runtime: accept, receive, send, wake-ups.
//!
//! - `own_loop`: `chainlog::storage::UringIo`, the store's real backend: sockets go in with
//!   `submit_external` (tokens with `EXTERNAL_TOKEN`), the write with `Io::write`
//!   (`Durability::Dsync`), and each turn is one `wait`, i.e. one `io_uring_enter`.
//! - `own_loop_store`: the same loop around the real `Store` (frames, CRCs, group commit,
//!   segments), the node's loop without its protocol: `Store::poll`, `take_external`, acks.
//! - `tokio_uring`: `tokio_uring::start`, a task per connection, a committer task, the file
//!   opened with `custom_flags(O_DIRECT | O_DSYNC)` and written with `write_at`.
//! - `own_raw_ring`, `own_raw_defer_taskrun` (no disk only): the own loop's socket path on a
//!   bare `io_uring::IoUring`, with default setup flags (the control: it should match
//!   `own_loop`) and with `COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN`, the flags
//!   `UringIo::new` does not set today.
//!
//! One client thread (epoll) keeps `c` connections with one request outstanding each; one
//! iteration is one answered request, so criterion's throughput is requests/s. After each
//! function a `SUMMARY` line gives latency percentiles, the group commit size and, for the
//! server thread: syscalls per request (a perf tracepoint counter on that thread, every
//! syscall and `io_uring_enter` alone; "n/a" where perf events are refused), CPU time and
//! sleeps (voluntary context switches) per request (`RUSAGE_THREAD`).
//!
//! Criterion measures the servers one after the other, so on a shared machine a change of load
//! between them skews the ratio. With `CHAINLOG_RUNTIME_SLICE_MS` set, the binary instead runs
//! all servers of a configuration at once and loads them in turn, slice by slice, and prints
//! `RATIO` lines; `tools/scripts/compare-runtime.sh` does that three times (the spread).

use std::cell::{Cell, RefCell};
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chainlog::storage::format::block_align;
use chainlog::storage::io::{Completion, Durability, Io, EXTERNAL_TOKEN};
use chainlog::storage::{
    AlignedBuf, DurabilityMode, Record, Store, StoreConfig, SystemClock, UringIo,
};
use criterion::{criterion_group, Criterion, Throughput};
use hdrhistogram::Histogram;
use io_uring::{opcode, squeue, types};
use tokio::sync::Notify;

/// Bytes of a request; its first 8 are the client's request id.
const REQUEST_BYTES: usize = 128;
/// Bytes of an answer: the request id and 8 reserved bytes.
const RESPONSE_BYTES: usize = 16;
/// Receive buffer of a server connection.
const RECV_BYTES: usize = 64 * REQUEST_BYTES;
/// Connections of the concurrent runs (one request outstanding each).
const CONCURRENCY: [usize; 2] = [1, 64];
/// The file the bare servers write; offsets wrap around it.
const FILE_BYTES: u64 = 4 << 20;
/// A group-commit buffer. Each connection has at most one receive buffer of requests waiting,
/// so one buffer always holds every waiting request.
const COMMIT_BYTES: usize = 1 << 20;
const _: () = assert!(CONCURRENCY[1] * RECV_BYTES <= COMMIT_BYTES);
/// The log of the `own_loop_store` server's appends.
const LOG_ID: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Own,
    OwnStore,
    TokioUring,
    /// The own loop without disk on a bare ring with default setup flags (the control).
    RawDefault,
    /// ... with `COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN`.
    RawDeferTaskrun,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Own => "own_loop",
            Server::OwnStore => "own_loop_store",
            Server::TokioUring => "tokio_uring",
            Server::RawDefault => "own_raw_ring",
            Server::RawDeferTaskrun => "own_raw_defer_taskrun",
        }
    }
}

/// What a server thread counted over its life.
#[derive(Debug, Default)]
struct ServerStats {
    requests: u64,
    /// Durable writes (group commits).
    writes: u64,
    syscalls: Option<u64>,
    io_uring_enters: Option<u64>,
    /// CPU time of the server thread (user + system).
    cpu: Duration,
    /// Times the server thread went to sleep (voluntary context switches).
    sleeps: u64,
}

/// Where the servers write: a file of `FILE_BYTES`, already written once (writes into
/// fallocated but unwritten blocks also commit extent metadata, ARCHITECTURE.md section 7),
/// and a directory for the store.
#[derive(Debug)]
struct Disk {
    file: PathBuf,
    store_dir: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Server A: our own loop on UringIo.

const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;

fn net_token(op: u64, slot: usize) -> u64 {
    EXTERNAL_TOKEN | op << 32 | slot as u64
}

/// Where the own loop submits its socket operations: the store's backend, or a bare ring
/// built with other setup flags (the `own_raw_*` experiments).
trait Submit {
    /// Submits `entry` with `token` (which has `EXTERNAL_TOKEN`).
    ///
    /// # Safety
    ///
    /// As [`UringIo::submit_external`]: what the entry points to stays valid and untouched
    /// until its completion is reaped.
    unsafe fn submit(&mut self, entry: squeue::Entry, token: u64);
}

impl Submit for UringIo {
    unsafe fn submit(&mut self, entry: squeue::Entry, token: u64) {
        // SAFETY: the caller keeps the contract of submit_external.
        unsafe { self.submit_external(entry, token) }
    }
}

/// A bare ring: the own loop's socket path with chosen setup flags, to see what they change.
struct RawRing {
    ring: io_uring::IoUring,
    in_flight: usize,
}

impl Submit for RawRing {
    unsafe fn submit(&mut self, entry: squeue::Entry, token: u64) {
        let entry = entry.user_data(token);
        self.in_flight += 1;
        // SAFETY: the caller keeps what the entry points to valid until its completion.
        while unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.ring.submit().expect("io_uring submit");
        }
    }
}

impl RawRing {
    /// As `UringIo::wait(1, ..)`: one `io_uring_enter` that submits and, unless completions
    /// are already there, waits for one.
    fn wait(&mut self, out: &mut Vec<(u64, i32)>) {
        let want = usize::from(self.ring.completion().is_empty() && self.in_flight > 0);
        match self.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => panic!("io_uring_enter: {e}"),
        }
        for cqe in self.ring.completion() {
            out.push((cqe.user_data(), cqe.result()));
            self.in_flight -= 1;
        }
    }
}

/// A server connection of the own loop: input parsed in place, answers double-buffered
/// (one buffer in the kernel, one being filled), as `src/node/conn.rs` does.
struct OwnConn {
    fd: OwnedFd,
    input: Box<[u8]>,
    filled: usize,
    out: Vec<u8>,
    sending: Vec<u8>,
    sent: usize,
    recv_in_flight: bool,
    send_in_flight: bool,
    /// Until the client closes (a receive returns 0 or fails).
    open: bool,
    /// A send failed: the client went away with a request outstanding.
    send_failed: bool,
}

impl OwnConn {
    fn new(fd: OwnedFd) -> OwnConn {
        OwnConn {
            fd,
            input: vec![0; RECV_BYTES].into_boxed_slice(),
            filled: 0,
            out: Vec::with_capacity(RECV_BYTES),
            sending: Vec::with_capacity(RECV_BYTES),
            sent: 0,
            recv_in_flight: false,
            send_in_flight: false,
            open: true,
            send_failed: false,
        }
    }

    fn arm_recv(&mut self, io: &mut impl Submit, slot: usize) {
        if !self.open || self.recv_in_flight {
            return;
        }
        let space = &mut self.input[self.filled..];
        let entry = opcode::Recv::new(
            types::Fd(self.fd.as_raw_fd()),
            space.as_mut_ptr(),
            space.len() as u32,
        )
        .build();
        // SAFETY: the connection owns `input` (never reallocated) and its socket until the
        // receive completes: the loop ends only when nothing is in flight.
        unsafe { io.submit(entry, net_token(OP_RECV, slot)) };
        self.recv_in_flight = true;
    }

    fn send_rest(&mut self, io: &mut impl Submit, slot: usize) {
        let rest = &self.sending[self.sent..];
        let entry = opcode::Send::new(
            types::Fd(self.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build();
        // SAFETY: `sending` is not touched while the send is in flight, and the loop ends
        // only when nothing is in flight.
        unsafe { io.submit(entry, net_token(OP_SEND, slot)) };
        self.send_in_flight = true;
    }

    fn flush(&mut self, io: &mut impl Submit, slot: usize) {
        if self.open && !self.send_failed && !self.send_in_flight && !self.out.is_empty() {
            std::mem::swap(&mut self.out, &mut self.sending);
            self.out.clear();
            self.sent = 0;
            self.send_rest(io, slot);
        }
    }

    /// The whole requests received: their bytes, moved out of the way by `consumed`.
    fn requests(&self) -> &[u8] {
        &self.input[..self.filled / REQUEST_BYTES * REQUEST_BYTES]
    }

    fn consumed(&mut self, bytes: usize) {
        self.input.copy_within(bytes..self.filled, 0);
        self.filled -= bytes;
    }
}

fn answer(out: &mut Vec<u8>, request: &[u8]) {
    out.extend_from_slice(&request[..8]);
    out.extend_from_slice(&[0; RESPONSE_BYTES - 8]);
}

/// What the own loop does with whole requests: a bare durable write, the real store, or
/// nothing (answer at once).
enum Backend {
    NoDisk,
    Write {
        file: chainlog::storage::io::FileId,
        building: AlignedBuf,
        spare: Option<AlignedBuf>,
        /// (connection, request id) of the requests in `building`, then of the write in flight.
        waiting: Vec<(usize, [u8; 8])>,
        writing: Vec<(usize, [u8; 8])>,
        offset: u64,
    },
}

/// The own loop with a bare write per group commit.
fn serve_own(
    listener: TcpListener,
    conns_expected: usize,
    disk: Option<&Disk>,
    ready: Ready,
) -> ServerStats {
    let counter = SyscallCounter::start();
    let (cpu, sleeps) = thread_cpu();
    let mut io = UringIo::new(1024).expect("io_uring");
    let mut backend = match disk {
        None => Backend::NoDisk,
        Some(disk) => Backend::Write {
            file: io.open(&disk.file, false).expect("the bench file opens"),
            building: AlignedBuf::new(COMMIT_BYTES),
            spare: Some(AlignedBuf::new(COMMIT_BYTES)),
            waiting: Vec::with_capacity(conns_expected * RECV_BYTES / REQUEST_BYTES),
            writing: Vec::with_capacity(conns_expected * RECV_BYTES / REQUEST_BYTES),
            offset: 0,
        },
    };
    let mut stats = ServerStats::default();
    let mut conns: Vec<OwnConn> = Vec::with_capacity(conns_expected);
    let mut completions: Vec<Completion> = Vec::with_capacity(256);
    let mut closed = 0;
    ready.signal();
    submit_accept(&mut io, &listener);
    loop {
        if closed == conns_expected && io.in_flight() == 0 {
            break;
        }
        // One turn: one io_uring_enter submits everything queued and waits for a completion.
        io.wait(1, &mut completions).expect("the ring works");
        for completion in completions.drain(..) {
            if completion.token & EXTERNAL_TOKEN == 0 {
                let Backend::Write { spare, writing, .. } = &mut backend else {
                    unreachable!("writes only with a disk");
                };
                completion.result.expect("the durable write succeeds");
                let mut buf = completion.buf.expect("a write hands its buffer back");
                buf.set_len(0);
                *spare = Some(buf);
                for (slot, id) in writing.drain(..) {
                    answer(&mut conns[slot].out, &id);
                }
                continue;
            }
            let slot = (completion.token & 0xffff_ffff) as usize;
            match (completion.token >> 32) & 0xff {
                OP_ACCEPT => {
                    // SAFETY: a successful accept returns a new descriptor nobody else owns.
                    let fd = unsafe {
                        OwnedFd::from_raw_fd(completion.result.expect("accept") as RawFd)
                    };
                    set_nodelay(fd.as_raw_fd());
                    conns.push(OwnConn::new(fd));
                    let slot = conns.len() - 1;
                    conns[slot].arm_recv(&mut io, slot);
                    if conns.len() < conns_expected {
                        submit_accept(&mut io, &listener);
                    }
                }
                OP_RECV => {
                    let conn = &mut conns[slot];
                    conn.recv_in_flight = false;
                    match completion.result {
                        Ok(0) | Err(_) => {
                            conn.open = false;
                            closed += 1;
                        }
                        Ok(n) => {
                            conn.filled += n;
                            let requests = conn.requests().len();
                            stats.requests += (requests / REQUEST_BYTES) as u64;
                            match &mut backend {
                                Backend::NoDisk => {
                                    for request in
                                        conn.input[..requests].chunks_exact(REQUEST_BYTES)
                                    {
                                        answer(&mut conn.out, request);
                                    }
                                }
                                Backend::Write {
                                    building, waiting, ..
                                } => {
                                    // One copy, from the receive buffer into the frame.
                                    let at = building.len();
                                    building.set_len(at + requests);
                                    building.as_mut_slice()[at..]
                                        .copy_from_slice(&conn.input[..requests]);
                                    for request in
                                        conn.input[..requests].chunks_exact(REQUEST_BYTES)
                                    {
                                        waiting.push((
                                            slot,
                                            request[..8].try_into().expect("8 bytes"),
                                        ));
                                    }
                                }
                            }
                            conn.consumed(requests);
                            conn.arm_recv(&mut io, slot);
                        }
                    }
                }
                OP_SEND => {
                    let conn = &mut conns[slot];
                    conn.send_in_flight = false;
                    match completion.result {
                        Ok(n) if conn.sent + n < conn.sending.len() => {
                            conn.sent += n;
                            conn.send_rest(&mut io, slot);
                        }
                        Ok(_) => conn.sending.clear(),
                        Err(_) => conn.send_failed = true,
                    }
                }
                op => unreachable!("unknown operation {op}"),
            }
        }
        // Group commit: everything received while no write was in flight goes in one write.
        if let Backend::Write {
            file,
            building,
            spare,
            waiting,
            writing,
            offset,
        } = &mut backend
        {
            if !waiting.is_empty() && writing.is_empty() {
                let next = spare.take().expect("the spare buffer is back");
                let mut frame = std::mem::replace(building, next);
                let len = block_align(frame.len());
                frame.set_len(len);
                if *offset + len as u64 > FILE_BYTES {
                    *offset = 0;
                }
                io.write(*file, *offset, frame, Durability::Dsync, 0);
                *offset += len as u64;
                std::mem::swap(waiting, writing);
                stats.writes += 1;
            }
        }
        for (slot, conn) in conns.iter_mut().enumerate() {
            conn.flush(&mut io, slot);
        }
    }
    stats.syscalls = counter.all();
    stats.io_uring_enters = counter.io_uring_enters();
    let (cpu_end, sleeps_end) = thread_cpu();
    stats.cpu = cpu_end - cpu;
    stats.sleeps = sleeps_end - sleeps;
    stats
}

fn submit_accept(io: &mut impl Submit, listener: &TcpListener) {
    let entry = opcode::Accept::new(
        types::Fd(listener.as_raw_fd()),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .flags(libc::SOCK_CLOEXEC)
    .build();
    // SAFETY: no buffer; the listener outlives the loop.
    unsafe { io.submit(entry, net_token(OP_ACCEPT, 0)) };
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a live int of the right size.
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

/// The own loop without disk on a bare ring (`RawRing`): the same connections and turns as
/// `serve_own`, with the ring's setup flags as the variable.
fn serve_raw(
    listener: TcpListener,
    conns_expected: usize,
    defer_taskrun: bool,
    ready: Ready,
) -> ServerStats {
    let counter = SyscallCounter::start();
    let (cpu, sleeps) = thread_cpu();
    let mut builder = io_uring::IoUring::builder();
    if defer_taskrun {
        builder
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    let mut ring = RawRing {
        ring: builder
            .build(1024)
            .expect("io_uring with these setup flags"),
        in_flight: 0,
    };
    let mut stats = ServerStats::default();
    let mut conns: Vec<OwnConn> = Vec::with_capacity(conns_expected);
    let mut completions: Vec<(u64, i32)> = Vec::with_capacity(256);
    let mut closed = 0;
    ready.signal();
    submit_accept(&mut ring, &listener);
    while closed < conns_expected || ring.in_flight > 0 {
        ring.wait(&mut completions);
        for (token, result) in completions.drain(..) {
            let slot = (token & 0xffff_ffff) as usize;
            match (token >> 32) & 0xff {
                OP_ACCEPT => {
                    assert!(result >= 0, "accept: {result}");
                    // SAFETY: a successful accept returns a new descriptor nobody else owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(result) };
                    set_nodelay(fd.as_raw_fd());
                    conns.push(OwnConn::new(fd));
                    let slot = conns.len() - 1;
                    conns[slot].arm_recv(&mut ring, slot);
                    if conns.len() < conns_expected {
                        submit_accept(&mut ring, &listener);
                    }
                }
                OP_RECV => {
                    let conn = &mut conns[slot];
                    conn.recv_in_flight = false;
                    if result <= 0 {
                        conn.open = false;
                        closed += 1;
                        continue;
                    }
                    conn.filled += result as usize;
                    let requests = conn.requests().len();
                    stats.requests += (requests / REQUEST_BYTES) as u64;
                    for request in conn.input[..requests].chunks_exact(REQUEST_BYTES) {
                        answer(&mut conn.out, request);
                    }
                    conn.consumed(requests);
                    conn.arm_recv(&mut ring, slot);
                }
                OP_SEND => {
                    let conn = &mut conns[slot];
                    conn.send_in_flight = false;
                    if result < 0 {
                        conn.send_failed = true;
                    } else if conn.sent + (result as usize) < conn.sending.len() {
                        conn.sent += result as usize;
                        conn.send_rest(&mut ring, slot);
                    } else {
                        conn.sending.clear();
                    }
                }
                op => unreachable!("unknown operation {op}"),
            }
        }
        for (slot, conn) in conns.iter_mut().enumerate() {
            conn.flush(&mut ring, slot);
        }
    }
    stats.syscalls = counter.all();
    stats.io_uring_enters = counter.io_uring_enters();
    let (cpu_end, sleeps_end) = thread_cpu();
    stats.cpu = cpu_end - cpu;
    stats.sleeps = sleeps_end - sleeps;
    stats
}

/// The own loop around the real store: the node's loop (`src/node/shard.rs`) without the
/// protocol. Each whole request is one 128-byte record appended to one log; its answer goes
/// out when `Store::poll` acknowledges it.
fn serve_own_store(
    listener: TcpListener,
    conns_expected: usize,
    disk: &Disk,
    ready: Ready,
) -> ServerStats {
    let counter = SyscallCounter::start();
    let (cpu, sleeps) = thread_cpu();
    let config = StoreConfig {
        segment_bytes: 64 << 20,
        // As the bare servers: one write in flight, group-committing what arrives meanwhile.
        writes_in_flight_max: 1,
        durability: DurabilityMode::Dsync,
        ..StoreConfig::default()
    };
    let io = UringIo::new(1024).expect("io_uring");
    let mut store = Store::open(io, &disk.store_dir, config, Arc::new(SystemClock::new()))
        .expect("the store opens");
    let writes_before = store.metrics().frames_written;
    let mut stats = ServerStats::default();
    let mut conns: Vec<OwnConn> = Vec::with_capacity(conns_expected);
    let mut external: Vec<Completion> = Vec::with_capacity(256);
    let mut acks = Vec::with_capacity(256);
    let mut closed = 0;
    ready.signal();
    submit_accept(store.io_mut(), &listener);
    loop {
        if closed == conns_expected && store.io_mut().in_flight() == 0 {
            break;
        }
        store
            .poll(true, &mut acks)
            .expect("the store stays healthy");
        store.take_external(&mut external);
        for completion in external.drain(..) {
            let slot = (completion.token & 0xffff_ffff) as usize;
            match (completion.token >> 32) & 0xff {
                OP_ACCEPT => {
                    // SAFETY: a successful accept returns a new descriptor nobody else owns.
                    let fd = unsafe {
                        OwnedFd::from_raw_fd(completion.result.expect("accept") as RawFd)
                    };
                    set_nodelay(fd.as_raw_fd());
                    conns.push(OwnConn::new(fd));
                    let slot = conns.len() - 1;
                    conns[slot].arm_recv(store.io_mut(), slot);
                    if conns.len() < conns_expected {
                        submit_accept(store.io_mut(), &listener);
                    }
                }
                OP_RECV => {
                    let conn = &mut conns[slot];
                    conn.recv_in_flight = false;
                    match completion.result {
                        Ok(0) | Err(_) => {
                            conn.open = false;
                            closed += 1;
                        }
                        Ok(n) => {
                            conn.filled += n;
                            let requests = conn.requests().len();
                            stats.requests += (requests / REQUEST_BYTES) as u64;
                            for request in conn.input[..requests].chunks_exact(REQUEST_BYTES) {
                                let id =
                                    u64::from_le_bytes(request[..8].try_into().expect("8 bytes"));
                                // The token carries the connection and the request id (the
                                // client's ids stay far below 2^48).
                                let token = (slot as u64) << 48 | id;
                                store
                                    .append(LOG_ID, 1, &[Record::new(request)], token)
                                    .expect("append accepted");
                            }
                            conn.consumed(requests);
                            conn.arm_recv(store.io_mut(), slot);
                        }
                    }
                }
                OP_SEND => {
                    let conn = &mut conns[slot];
                    conn.send_in_flight = false;
                    match completion.result {
                        Ok(n) if conn.sent + n < conn.sending.len() => {
                            conn.sent += n;
                            conn.send_rest(store.io_mut(), slot);
                        }
                        Ok(_) => conn.sending.clear(),
                        Err(_) => conn.send_failed = true,
                    }
                }
                op => unreachable!("unknown operation {op}"),
            }
        }
        for ack in acks.drain(..) {
            let slot = (ack.token >> 48) as usize;
            let id = ack.token & ((1 << 48) - 1);
            answer(&mut conns[slot].out, &id.to_le_bytes());
        }
        for (slot, conn) in conns.iter_mut().enumerate() {
            conn.flush(store.io_mut(), slot);
        }
    }
    stats.writes = store.metrics().frames_written - writes_before;
    stats.syscalls = counter.all();
    stats.io_uring_enters = counter.io_uring_enters();
    let (cpu_end, sleeps_end) = thread_cpu();
    stats.cpu = cpu_end - cpu;
    stats.sleeps = sleeps_end - sleeps;
    drop(store);
    stats
}

// ---------------------------------------------------------------------------------------------
// Server B: tokio-uring.

/// An `AlignedBuf` that tokio-uring can own for an O_DIRECT write.
struct DirectBuf(AlignedBuf);

// SAFETY: the pointer is the buffer's heap allocation, stable while the buffer is moved; the
// initialised length and the capacity are the buffer's own.
unsafe impl tokio_uring::buf::IoBuf for DirectBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.0.len()
    }

    fn bytes_total(&self) -> usize {
        self.0.capacity()
    }
}

/// Group commit state shared by the connection tasks and the committer task (one thread:
/// `Rc`, `RefCell`, `Cell`).
struct Commits {
    group: RefCell<Group>,
    /// Wakes the committer when the first request of a group arrives.
    wake: Notify,
    /// Per connection: requests made durable so far, and the wake-up of its task.
    durable: Vec<(Cell<u64>, Notify)>,
}

/// The requests waiting for the next write.
struct Group {
    building: AlignedBuf,
    /// (connection, requests) in `building`.
    waiting: Vec<(usize, u64)>,
    stopping: bool,
}

fn serve_tokio_uring(
    listener: TcpListener,
    conns_expected: usize,
    disk: Option<&Disk>,
    ready: Ready,
) -> ServerStats {
    let counter = SyscallCounter::start();
    let (cpu, sleeps) = thread_cpu();
    let file = disk.map(|d| d.file.clone());
    let mut stats = tokio_uring::start(async move {
        let listener = tokio_uring::net::TcpListener::from_std(listener);
        let commits = Rc::new(Commits {
            group: RefCell::new(Group {
                building: AlignedBuf::new(COMMIT_BYTES),
                waiting: Vec::with_capacity(conns_expected * RECV_BYTES / REQUEST_BYTES),
                stopping: false,
            }),
            wake: Notify::new(),
            durable: (0..conns_expected)
                .map(|_| (Cell::new(0), Notify::new()))
                .collect(),
        });
        let committer = match &file {
            Some(path) => {
                let file = tokio_uring::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
                    .open(path)
                    .await
                    .expect("the bench file opens");
                Some(tokio_uring::spawn(commit_loop(file, commits.clone())))
            }
            None => None,
        };
        ready.signal();
        let mut tasks = Vec::with_capacity(conns_expected);
        for index in 0..conns_expected {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            let commits = committer.is_some().then(|| commits.clone());
            tasks.push(tokio_uring::spawn(serve_conn(stream, index, commits)));
        }
        let mut stats = ServerStats::default();
        for task in tasks {
            stats.requests += task.await.expect("connection task");
        }
        if let Some(committer) = committer {
            commits.group.borrow_mut().stopping = true;
            commits.wake.notify_one();
            stats.writes = committer.await.expect("committer task");
        }
        stats
    });
    stats.syscalls = counter.all();
    stats.io_uring_enters = counter.io_uring_enters();
    let (cpu_end, sleeps_end) = thread_cpu();
    stats.cpu = cpu_end - cpu;
    stats.sleeps = sleeps_end - sleeps;
    stats
}

/// One write at a time: everything that arrived while the previous write was in flight.
async fn commit_loop(file: tokio_uring::fs::File, commits: Rc<Commits>) -> u64 {
    let mut spare = Some(AlignedBuf::new(COMMIT_BYTES));
    let mut writing: Vec<(usize, u64)> =
        Vec::with_capacity(commits.group.borrow().waiting.capacity());
    let mut offset = 0u64;
    let mut writes = 0;
    loop {
        let frame = {
            let mut g = commits.group.borrow_mut();
            if g.building.is_empty() {
                if g.stopping {
                    break;
                }
                None
            } else {
                std::mem::swap(&mut g.waiting, &mut writing);
                let next = spare.take().expect("the spare buffer is back");
                Some(std::mem::replace(&mut g.building, next))
            }
        };
        let Some(mut frame) = frame else {
            commits.wake.notified().await;
            continue;
        };
        let len = block_align(frame.len());
        frame.set_len(len);
        if offset + len as u64 > FILE_BYTES {
            offset = 0;
        }
        let (result, DirectBuf(mut frame)) = file.write_at(DirectBuf(frame), offset).submit().await;
        let written = result.expect("the durable write succeeds");
        assert_eq!(written, len, "short write");
        offset += len as u64;
        writes += 1;
        frame.set_len(0);
        spare = Some(frame);
        for (conn, requests) in writing.drain(..) {
            let (durable, notify) = &commits.durable[conn];
            durable.set(durable.get() + requests);
            notify.notify_one();
        }
    }
    file.close().await.expect("close");
    writes
}

/// A connection: whole requests are answered at once, or when the committer made them durable.
async fn serve_conn(
    stream: tokio_uring::net::TcpStream,
    index: usize,
    commits: Option<Rc<Commits>>,
) -> u64 {
    use tokio_uring::buf::BoundedBuf;
    let mut input: Vec<u8> = Vec::with_capacity(RECV_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(RECV_BYTES);
    let mut asked = 0u64;
    let mut served = 0u64;
    loop {
        let filled = input.len();
        let (result, slice) = stream.read(input.slice(filled..)).await;
        input = slice.into_inner();
        match result {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let requests = input.len() / REQUEST_BYTES * REQUEST_BYTES;
        if requests == 0 {
            continue;
        }
        let count = (requests / REQUEST_BYTES) as u64;
        out.clear();
        for request in input[..requests].chunks_exact(REQUEST_BYTES) {
            answer(&mut out, request);
        }
        if let Some(commits) = &commits {
            {
                // One copy, from the receive buffer into the frame.
                let mut g = commits.group.borrow_mut();
                let at = g.building.len();
                if at == 0 {
                    commits.wake.notify_one();
                }
                g.building.set_len(at + requests);
                g.building.as_mut_slice()[at..].copy_from_slice(&input[..requests]);
                g.waiting.push((index, count));
            }
            asked += count;
            let (durable, notify) = &commits.durable[index];
            while durable.get() < asked {
                notify.notified().await;
            }
        }
        input.drain(..requests);
        let (result, o) = stream.write_all(out).await;
        out = o;
        if result.is_err() {
            break;
        }
        served += count;
    }
    served
}

// ---------------------------------------------------------------------------------------------
// Syscall counting: a perf tracepoint counter on the server thread.

/// Counts the calling thread's syscalls (and its `io_uring_enter` calls) from `start` on.
struct SyscallCounter {
    all: Option<OwnedFd>,
    enters: Option<OwnedFd>,
}

const PERF_TYPE_TRACEPOINT: u64 = 2;
const PERF_ATTR_SIZE_VER0: u64 = 64;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 6, char *)` and `_IO('$', 0)` from linux/perf_event.h.
const PERF_EVENT_IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

impl SyscallCounter {
    fn start() -> SyscallCounter {
        let id = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|root| {
                std::fs::read_to_string(format!("{root}/events/raw_syscalls/sys_enter/id"))
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        let Some(id) = id else {
            return SyscallCounter {
                all: None,
                enters: None,
            };
        };
        SyscallCounter {
            all: perf_counter(id, None),
            enters: perf_counter(id, Some(&format!("id == {}", libc::SYS_io_uring_enter))),
        }
    }

    fn all(&self) -> Option<u64> {
        self.all.as_ref().and_then(read_counter)
    }

    fn io_uring_enters(&self) -> Option<u64> {
        self.enters.as_ref().and_then(read_counter)
    }
}

/// A counter of tracepoint `id` on the calling thread (not inherited by threads it starts).
fn perf_counter(id: u64, filter: Option<&str>) -> Option<OwnedFd> {
    // struct perf_event_attr, first version (64 bytes): type and size, config, then the flag
    // bits at byte 40, of which bit 0 is `disabled` (enabled after the filter is set).
    let mut attr = [0u64; 8];
    attr[0] = PERF_TYPE_TRACEPOINT | PERF_ATTR_SIZE_VER0 << 32;
    attr[1] = id;
    attr[5] = 1;
    // SAFETY: attr is a valid perf_event_attr of the size it declares; pid 0 and cpu -1 mean
    // this thread on any CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            0,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: perf_event_open returned a new descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if let Some(filter) = filter {
        let filter = CString::new(filter).expect("no NUL");
        // SAFETY: a perf event descriptor and a NUL-terminated filter string.
        if unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_FILTER, filter.as_ptr()) } != 0 {
            return None;
        }
    }
    // SAFETY: a perf event descriptor; ENABLE takes no argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } != 0 {
        return None;
    }
    Some(fd)
}

/// CPU time (user + system) of the calling thread so far, and its voluntary context switches.
fn thread_cpu() -> (Duration, u64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD fills the struct for the calling thread.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(r, 0, "getrusage: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        tv(usage.ru_utime) + tv(usage.ru_stime),
        usage.ru_nvcsw as u64,
    )
}

fn read_counter(fd: &OwnedFd) -> Option<u64> {
    let mut value = [0u8; 8];
    (&std::fs::File::from(fd.try_clone().ok()?))
        .read_exact(&mut value)
        .ok()?;
    Some(u64::from_ne_bytes(value))
}

// ---------------------------------------------------------------------------------------------
// The client, the same for every server.

struct ClientConn {
    stream: TcpStream,
    id: u64,
    sent_at: Instant,
    answer: [u8; RESPONSE_BYTES],
    got: usize,
    in_flight: bool,
}

/// `c` connections, one request outstanding on each, driven from one thread with epoll.
struct Client {
    epoll: OwnedFd,
    conns: Vec<ClientConn>,
    request: [u8; REQUEST_BYTES],
    next_id: u64,
    latency_ns: Histogram<u64>,
    answered: u64,
    busy: Duration,
}

impl Client {
    fn connect(addr: SocketAddr, count: usize) -> Client {
        // SAFETY: plain syscall; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(
            epoll >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let mut conns = Vec::with_capacity(count);
        for i in 0..count {
            let stream = TcpStream::connect(addr).expect("connect");
            stream.set_nodelay(true).expect("TCP_NODELAY");
            stream.set_nonblocking(true).expect("non-blocking");
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: both descriptors are open; the event is a valid epoll_event.
            let r = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    stream.as_raw_fd(),
                    &mut event,
                )
            };
            assert_eq!(r, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
            conns.push(ClientConn {
                stream,
                id: 0,
                sent_at: Instant::now(),
                answer: [0; RESPONSE_BYTES],
                got: 0,
                in_flight: false,
            });
        }
        let mut request = [0u8; REQUEST_BYTES];
        for (i, b) in request.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31);
        }
        Client {
            epoll,
            conns,
            request,
            next_id: 1,
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram"),
            answered: 0,
            busy: Duration::ZERO,
        }
    }

    fn send(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        conn.id = self.next_id;
        self.next_id += 1;
        self.request[..8].copy_from_slice(&conn.id.to_le_bytes());
        conn.sent_at = Instant::now();
        // One request outstanding: the socket's send buffer is empty, so it all goes at once.
        let n = (&conn.stream).write(&self.request).expect("send a request");
        assert_eq!(n, REQUEST_BYTES, "a whole request is sent at once");
        conn.in_flight = true;
    }

    /// Runs until `requests` more answers arrived (keeping every connection busy); returns the
    /// time it took. Requests still outstanding carry over to the next call.
    fn run(&mut self, requests: u64) -> Duration {
        let start = Instant::now();
        self.send_idle();
        let mut done = 0;
        while done < requests {
            done += self.answers(true);
        }
        let took = start.elapsed();
        self.answered += done;
        self.busy += took;
        took
    }

    /// Keeps every connection busy for `slice`, then lets the outstanding requests finish
    /// (so that no request waits while another server is measured). Returns the answers and
    /// the time they took.
    fn run_slice(&mut self, slice: Duration) -> (u64, Duration) {
        let start = Instant::now();
        self.send_idle();
        let mut done = 0;
        while start.elapsed() < slice {
            done += self.answers(true);
        }
        while self.conns.iter().any(|c| c.in_flight) {
            done += self.answers(false);
        }
        let took = start.elapsed();
        self.answered += done;
        self.busy += took;
        (done, took)
    }

    /// Forgets what was measured so far (after a warm-up).
    fn reset(&mut self) {
        self.latency_ns.reset();
        self.answered = 0;
        self.busy = Duration::ZERO;
    }

    fn send_idle(&mut self) {
        for i in 0..self.conns.len() {
            if !self.conns[i].in_flight {
                self.send(i);
            }
        }
    }

    /// Waits for answers once (epoll_wait) and reads every answer that arrived, sending the
    /// next request on each connection if `resend`. Returns the answers read.
    fn answers(&mut self, resend: bool) -> u64 {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: an open epoll descriptor and a writable array of its length.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "epoll_wait: {e}");
            return 0;
        }
        let mut done = 0;
        for event in &events[..n as usize] {
            let i = event.u64 as usize;
            loop {
                let conn = &mut self.conns[i];
                match (&conn.stream).read(&mut conn.answer[conn.got..]) {
                    Ok(0) => panic!("the server closed a connection"),
                    Ok(k) => conn.got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("receive: {e}"),
                }
                if conn.got < RESPONSE_BYTES {
                    continue;
                }
                let id = u64::from_le_bytes(conn.answer[..8].try_into().expect("8 bytes"));
                assert_eq!(id, conn.id, "answers come in order");
                conn.got = 0;
                conn.in_flight = false;
                let ns = conn.sent_at.elapsed().as_nanos() as u64;
                self.latency_ns.saturating_record(ns.max(1));
                done += 1;
                if resend {
                    self.send(i);
                }
            }
        }
        done
    }
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// Tells the harness that a server is set up (ring, file, store), so that set-up is not
/// measured.
struct Ready(std::sync::mpsc::SyncSender<()>);

impl Ready {
    fn signal(&self) {
        self.0.send(()).expect("the harness waits");
    }
}

struct Running {
    client: Client,
    server: JoinHandle<ServerStats>,
}

fn start(server: Server, conns: usize, disk: Option<Arc<Disk>>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let (ready, set_up) = std::sync::mpsc::sync_channel(1);
    let ready = Ready(ready);
    let thread = std::thread::Builder::new()
        .name(server.name().into())
        .spawn(move || match server {
            Server::Own => serve_own(listener, conns, disk.as_deref(), ready),
            Server::OwnStore => serve_own_store(
                listener,
                conns,
                disk.as_deref().expect("the store writes to disk"),
                ready,
            ),
            Server::TokioUring => serve_tokio_uring(listener, conns, disk.as_deref(), ready),
            Server::RawDefault => serve_raw(listener, conns, false, ready),
            Server::RawDeferTaskrun => serve_raw(listener, conns, true, ready),
        })
        .expect("server thread");
    set_up.recv().expect("the server sets up");
    Running {
        client: Client::connect(addr, conns),
        server: thread,
    }
}

/// A server's figures over a measurement.
#[derive(Debug)]
struct Summary {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    syscalls_per_request: Option<f64>,
    cpu_us_per_request: f64,
}

impl Running {
    /// Closes the client's connections (the server ends when all are closed) and prints the
    /// figures: latency and rate since the last `reset` (criterion: warm-up included), server
    /// syscalls over the server's whole life.
    fn finish(self, name: &str) -> Option<Summary> {
        let Running { client, server } = self;
        let Client {
            conns,
            latency_ns,
            answered,
            busy,
            ..
        } = client;
        drop(conns);
        let stats = server.join().expect("the server thread");
        if answered == 0 {
            return None;
        }
        let us = |q: f64| latency_ns.value_at_quantile(q) as f64 / 1000.0;
        let per_request = |n: Option<u64>| n.map(|n| n as f64 / stats.requests.max(1) as f64);
        let show = |x: Option<f64>| x.map_or_else(|| "n/a".to_string(), |x| format!("{x:.3}"));
        let group = if stats.writes > 0 {
            format!("{:.2}", stats.requests as f64 / stats.writes as f64)
        } else {
            "-".to_string()
        };
        let summary = Summary {
            rate: answered as f64 / busy.as_secs_f64(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            syscalls_per_request: per_request(stats.syscalls),
            cpu_us_per_request: stats.cpu.as_secs_f64() * 1e6 / stats.requests.max(1) as f64,
        };
        println!(
            "SUMMARY {name}: requests={answered} rate={:.0}/s p50={:.1}us p99={:.1}us \
             p99.9={:.1}us max={:.1}us requests_per_write={group} \
             server_syscalls_per_request={} io_uring_enter_per_request={} \
             server_cpu_us_per_request={:.2} server_sleeps_per_request={:.3}",
            summary.rate,
            summary.p50_us,
            summary.p99_us,
            us(0.999),
            latency_ns.max() as f64 / 1000.0,
            show(summary.syscalls_per_request),
            show(per_request(stats.io_uring_enters)),
            summary.cpu_us_per_request,
            stats.sleeps as f64 / stats.requests.max(1) as f64,
        );
        Some(summary)
    }
}

fn prepare_disk(root: &Path) -> Disk {
    let file = root.join("requests.dat");
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&file)
        .expect("create the bench file");
    f.write_all(&vec![0x5a; FILE_BYTES as usize])
        .expect("write the bench file");
    f.sync_all().expect("sync the bench file");
    Disk {
        file,
        store_dir: root.join("store"),
    }
}

fn runtime(c: &mut Criterion) {
    // O_DIRECT needs a real file system: the target directory, not a tmpfs /tmp.
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    // Which of the two goes first in each group (compare-runtime.sh alternates it per run, so
    // that a drift of the machine's load does not always favour the same one).
    let reverse = std::env::var("CHAINLOG_RUNTIME_REVERSE").is_ok_and(|v| v == "1");
    for disk in [true, false] {
        for conns in CONCURRENCY {
            let group_name = format!("runtime_{}_c{conns}", if disk { "disk" } else { "nodisk" });
            let mut group = c.benchmark_group(&group_name);
            group.throughput(Throughput::Elements(1));
            let mut servers = vec![Server::Own, Server::TokioUring];
            if reverse {
                servers.reverse();
            }
            if disk {
                servers.push(Server::OwnStore);
            } else {
                servers.extend([Server::RawDefault, Server::RawDeferTaskrun]);
            }
            for server in servers {
                let files = disk.then(|| {
                    let dir = root.path().join(format!("{group_name}-{}", server.name()));
                    std::fs::create_dir(&dir).expect("a directory per run");
                    Arc::new(prepare_disk(&dir))
                });
                let mut running = start(server, conns, files);
                group.bench_function(server.name(), |b| {
                    b.iter_custom(|iters| running.client.run(iters))
                });
                running.finish(&format!("{group_name}/{}", server.name()));
            }
            group.finish();
        }
    }
}

/// The servers of one configuration, all running at once and loaded in turn: `rounds` slices
/// of `slice` each, in alternating order, so that the machine's drifting load (it is shared)
/// falls on all of them alike. Prints each server's SUMMARY and a RATIO line per server
/// against tokio-uring: the median and range of the per-round requests/s ratios, and the
/// latency and syscall ratios over all rounds.
fn interleaved(slice: Duration, rounds: usize) {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
    for disk in [true, false] {
        for conns in CONCURRENCY {
            let group_name = format!(
                "interleaved_{}_c{conns}",
                if disk { "disk" } else { "nodisk" }
            );
            let mut servers = vec![Server::Own, Server::TokioUring];
            if disk {
                servers.push(Server::OwnStore);
            } else {
                servers.extend([Server::RawDefault, Server::RawDeferTaskrun]);
            }
            let mut running: Vec<Running> = servers
                .iter()
                .map(|&server| {
                    let files = disk.then(|| {
                        let dir = root.path().join(format!("{group_name}-{}", server.name()));
                        std::fs::create_dir(&dir).expect("a directory per run");
                        Arc::new(prepare_disk(&dir))
                    });
                    start(server, conns, files)
                })
                .collect();
            for r in &mut running {
                r.client.run_slice(slice);
                r.client.reset();
            }
            let mut rates = vec![Vec::with_capacity(rounds); servers.len()];
            for round in 0..rounds {
                let mut order: Vec<usize> = (0..servers.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for i in order {
                    let (done, took) = running[i].client.run_slice(slice);
                    rates[i].push(done as f64 / took.as_secs_f64());
                }
            }
            let summaries: Vec<Option<Summary>> = running
                .into_iter()
                .zip(&servers)
                .map(|(r, server)| r.finish(&format!("{group_name}/{}", server.name())))
                .collect();
            let tokio = servers
                .iter()
                .position(|&s| s == Server::TokioUring)
                .expect("tokio-uring runs");
            for (i, server) in servers.iter().enumerate() {
                if i == tokio {
                    continue;
                }
                let (Some(ours), Some(theirs)) = (&summaries[i], &summaries[tokio]) else {
                    continue;
                };
                let mut per_round: Vec<f64> = rates[i]
                    .iter()
                    .zip(&rates[tokio])
                    .map(|(a, b)| a / b)
                    .collect();
                per_round.sort_by(f64::total_cmp);
                let syscalls = match (ours.syscalls_per_request, theirs.syscalls_per_request) {
                    (Some(a), Some(b)) => format!("{:.2}", a / b),
                    _ => "n/a".to_string(),
                };
                println!(
                    "RATIO {group_name} {}/tokio_uring: requests_per_s={:.2} \
                     (per round: min {:.2}, median {:.2}, max {:.2}; {rounds} rounds of {} ms) \
                     p50={:.2} p99={:.2} server_syscalls_per_request={syscalls} \
                     server_cpu_per_request={:.2}",
                    server.name(),
                    ours.rate / theirs.rate,
                    per_round[0],
                    per_round[per_round.len() / 2],
                    per_round[per_round.len() - 1],
                    slice.as_millis(),
                    ours.p50_us / theirs.p50_us,
                    ours.p99_us / theirs.p99_us,
                    ours.cpu_us_per_request / theirs.cpu_us_per_request,
                );
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = runtime
}

/// `cargo bench` and `cargo test` run the criterion benches; with
/// `CHAINLOG_RUNTIME_SLICE_MS` set (compare-runtime.sh) the binary runs the interleaved
/// comparison instead (`CHAINLOG_RUNTIME_ROUNDS` rounds, 20 by default).
fn main() {
    let env_number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(slice_ms) = env_number("CHAINLOG_RUNTIME_SLICE_MS") {
        let rounds = env_number("CHAINLOG_RUNTIME_ROUNDS").unwrap_or(20) as usize;
        interleaved(Duration::from_millis(slice_ms), rounds.max(1));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
