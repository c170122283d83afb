//! Shared by the tests that run the real `chainlog node` binary on loopback: [`Node`] starts it
//! (ready once it printed where it serves, no sleeping) and kills and reaps it when dropped,
//! even when a test fails; [`Controller`] does the same for `chainlog controller` (ready once
//! it printed its address); [`Client`] is a minimal blocking protocol client built from
//! chainlog-net's encoders and decoders. A node's log (its stderr) can be waited on for a line
//! ([`Node::wait_log`]), and a process can be paused and resumed (SIGSTOP, SIGCONT) by PID.
//!
//! Ports: a process listens on port 0 and the test takes the address it prints, so no port is
//! ever chosen, released and bound again later (an outgoing connection may take an ephemeral
//! port in between). A test that restarts a process at the same address starts it with
//! [`Node::start_fixed`] or [`Controller::start_fixed`] instead: at a random free port below
//! the kernel's ephemeral range (which outgoing connections never take), started again
//! elsewhere if another test process took the port first.
//!
//! Each test binary compiles this module and uses part of it, hence `dead_code` is allowed.

#![allow(dead_code)]

pub(crate) mod raw;

use std::collections::{BTreeSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chainlog::controller::server::SERVING_AT;
use chainlog::net::{
    decode_response, encode_request, parse_frame, AppendBuilder, AppendHeader, CreateLogRequest,
    ErrorCode, HelloRequest, HelloResponse, Limits, ReadRequest, Request, Response, Role,
};

/// How long a test socket waits for bytes before the test fails: a guard against hanging for
/// ever when the node stops answering, never a timing assertion.
pub(crate) const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a started process may take to say where it serves before the test fails (a
/// guard against hanging, not a measurement).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Starts at a fixed port tried before giving up (each at another random port).
const FIXED_TRIES_MAX: usize = 32;
/// Lines of a node's stderr kept, to quote when it fails.
const STDERR_LINES_MAX: usize = 200;
/// What a process's log says when its port is taken.
const IN_USE: &str = "Address already in use";

/// Why a process did not start.
enum StartError {
    /// Its port was in use (another test process took it first).
    InUse(String),
    /// Anything else: the test fails with this message.
    Failed(String),
}

impl StartError {
    fn from_log(what: &str, status: ExitStatus, log: String) -> StartError {
        let message = format!("{what} exited before serving ({status}): {log}");
        match log.contains(IN_USE) {
            true => StartError::InUse(message),
            false => StartError::Failed(message),
        }
    }

    fn message(self) -> String {
        match self {
            StartError::InUse(m) | StartError::Failed(m) => m,
        }
    }
}

/// Starts a process at a random free port below the ephemeral range by `start(port)`, again
/// at another one while `start` finds its port in use.
fn start_fixed<T>(ports: u16, mut start: impl FnMut(u16) -> Result<T, StartError>) -> T {
    let mut last = String::new();
    for _ in 0..FIXED_TRIES_MAX {
        match start(fixed_ports(ports)) {
            Ok(started) => return started,
            Err(StartError::InUse(message)) => last = message,
            Err(StartError::Failed(message)) => panic!("{message}"),
        }
    }
    panic!("no free fixed port in {FIXED_TRIES_MAX} tries; the last: {last}")
}

/// The first of `n` consecutive ports below the kernel's ephemeral range (which outgoing
/// connections never take), free when looked at: a random base, so that test processes
/// running at once rarely pick the same. Another process may still bind one first; starts at
/// a fixed port retry ([`start_fixed`]).
///
/// A port handed out is never handed out again in this process: a node restarted at its
/// port (`Node::start_with(.., Some(port), ..)`) finds it free, where another test of the
/// same process could take it while the node was down (a restart failed with "Address
/// already in use" on its metrics port).
fn fixed_ports(n: u16) -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let low = ephemeral_low();
    let (from, to) = (low / 2, low - n);
    loop {
        let base =
            from + (RandomState::new().hash_one(std::process::id()) % u64::from(to - from)) as u16;
        let mut handed_out = HANDED_OUT.lock().expect("no test panics holding it");
        if (base..base + n).any(|p| handed_out.contains(&p)) {
            continue;
        }
        let free = (0..n).all(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).is_ok());
        if free {
            handed_out.extend(base..base + n);
            return base;
        }
    }
}

/// The lowest port of the kernel's ephemeral range (32768 unless configured otherwise).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A child's stdout's first line, or `None` if it closed without one (the child is exiting);
/// the test fails if `START_TIMEOUT` passes first. The rest is read and dropped, so that the
/// child never blocks on a full pipe.
fn first_line(stdout: ChildStdout, what: &str) -> Option<String> {
    let (send, line) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = send.send(first);
        }
        lines.for_each(drop);
    });
    match line.recv_timeout(START_TIMEOUT) {
        Ok(line) => Some(line),
        Err(mpsc::RecvTimeoutError::Disconnected) => None,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not say where it serves within {START_TIMEOUT:?}")
        }
    }
}

/// The last lines of a child's stderr, read by a thread of its own; waiters on a line are
/// woken as each line arrives.
#[derive(Debug)]
struct Captured {
    lines: Arc<(Mutex<Lines>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

/// The lines kept, and how many were read in all (the first kept one is line
/// `total - kept.len()`).
#[derive(Debug, Default)]
struct Lines {
    kept: VecDeque<String>,
    total: u64,
}

impl Captured {
    fn start(stderr: impl Read + Send + 'static) -> Captured {
        let lines = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let kept = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (lock, arrived) = &*kept;
                let mut lines = lock.lock().unwrap_or_else(|e| e.into_inner());
                if lines.kept.len() == STDERR_LINES_MAX {
                    lines.kept.pop_front();
                }
                lines.kept.push_back(line);
                lines.total += 1;
                arrived.notify_all();
            }
        });
        Captured {
            lines,
            reader: Some(reader),
        }
    }

    /// Lines read so far.
    fn total(&self) -> u64 {
        let lines = self.lines.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.total
    }

    /// The first line from line `since` on that contains `needle`, waiting for it at most
    /// `timeout`.
    fn wait_for(&self, since: u64, needle: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        let (lock, arrived) = &*self.lines;
        let mut lines = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let first = lines.total - lines.kept.len() as u64;
            let found = lines
                .kept
                .iter()
                .enumerate()
                .find(|&(i, line)| first + i as u64 >= since && line.contains(needle));
            if let Some((_, line)) = found {
                return Some(line.clone());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            lines = arrived
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The lines kept so far.
    fn kept(&self) -> String {
        let lines = self.lines.0.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .kept
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Everything kept, once the child has exited (its stderr read to the end).
    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.kept()
    }
}

/// Sends `signal` to `child` (ours, not yet reaped, so its pid is not reused).
fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid, not yet reaped (so not reused).
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// A node child process, killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) child: Child,
    /// Shard 0's port; shard `i` listens on `port + i`.
    pub(crate) port: u16,
    pub(crate) shards: u16,
    /// Where it serves `GET /metrics` (the port after the last shard's).
    pub(crate) metrics: SocketAddr,
    stderr: Captured,
}

impl Node {
    /// Starts `chainlog node` on `dir` with `shards` shards on ports it picks, and returns once
    /// every shard serves.
    pub(crate) fn start(dir: &Path, shards: u16) -> Node {
        Node::start_with(dir, shards, None, &[])
    }

    /// As [`Node::start`], with `args` added (e.g. `--controller ADDR --node-id N`), at `port`
    /// if given: a restart at the same address, which must be a port of [`Node::start_fixed`]
    /// (below the ephemeral range).
    pub(crate) fn start_with(dir: &Path, shards: u16, port: Option<u16>, args: &[&str]) -> Node {
        if let Some(port) = port {
            assert!(
                port < ephemeral_low(),
                "port {port} is in the ephemeral range: an outgoing connection may have taken it \
                 since; start the node with Node::start_fixed to restart it at the same port"
            );
        }
        Node::spawn(dir, shards, port.unwrap_or(0), args)
            .unwrap_or_else(|e| panic!("{}", e.message()))
    }

    /// As [`Node::start_with`] without a port, at a fixed port below the ephemeral range, so
    /// that the node can be started again at the same address (`start_with(.., Some(port),
    /// ..)`).
    pub(crate) fn start_fixed(dir: &Path, shards: u16, args: &[&str]) -> Node {
        // One port more than the shards: the metrics port, after the last shard's.
        start_fixed(shards + 1, |port| Node::spawn(dir, shards, port, args))
    }

    fn spawn(dir: &Path, shards: u16, port: u16, args: &[&str]) -> Result<Node, StartError> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chainlog"))
            .args(["node", "--data-dir"])
            .arg(dir)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--shards",
                &shards.to_string(),
            ])
            .args(["--no-pin", "--durability", "dsync"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chainlog node");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = Captured::start(child.stderr.take().expect("stderr"));
        // From here on a failure drops `node`, which kills and reaps the child.
        let mut node = Node {
            child,
            port,
            shards,
            metrics: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            stderr,
        };
        // Ready once it says where it serves: every shard does (no sleeping, no polling).
        let Some(line) = first_line(stdout, "the node") else {
            let status = node.child.wait().expect("wait for the node");
            return Err(StartError::from_log(
                "the node",
                status,
                node.stderr.finish(),
            ));
        };
        let serving: chainlog::node::Serving = line
            .parse()
            .unwrap_or_else(|e| panic!("the node's first line: {e}"));
        assert_eq!(serving.shards, shards);
        node.port = serving.addr.port();
        node.metrics = serving.metrics.expect("the node serves metrics");
        Ok(node)
    }

    /// The address of shard `shard`.
    pub(crate) fn addr(&self, shard: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port + shard))
    }

    /// A client connected to shard `shard`, past the handshake.
    pub(crate) fn connect(&self, shard: u16) -> Client {
        Client::connect(self.addr(shard))
    }

    /// The node's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGTERM);
        self.child.wait().expect("wait for the node")
    }

    /// SIGKILL (kill -9), then the exit status: the node gets no chance to clean up.
    pub(crate) fn kill9(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGKILL);
        self.child.wait().expect("wait for the node")
    }

    /// SIGSTOP, and returns once every thread of the node has stopped (no heartbeats, no
    /// answers) until [`Node::resume`]; its sockets stay open and keep taking bytes. (Dropping
    /// a stopped node still kills it: SIGKILL ends a stopped process.)
    pub(crate) fn pause(&self) {
        signal(&self.child, libc::SIGSTOP);
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child, for a stop only (WUNTRACED): a stop is not
        // reaped, so `Child` still owns the pid.
        let waited = unsafe { libc::waitpid(self.child.id() as i32, &mut status, libc::WUNTRACED) };
        assert!(
            waited > 0 && libc::WIFSTOPPED(status),
            "the node did not stop (waitpid {waited}, status {status:#x})"
        );
    }

    /// SIGCONT: a paused node runs on from where it stopped.
    pub(crate) fn resume(&self) {
        signal(&self.child, libc::SIGCONT);
    }

    /// Lines of its log (stderr) so far: a mark for [`Node::wait_log`].
    pub(crate) fn log_mark(&self) -> u64 {
        self.stderr.total()
    }

    /// The first line of its log after `mark` that contains `needle`, as soon as it is
    /// written; `None` if none is within `timeout` (of the last 200 lines).
    pub(crate) fn wait_log(&self, mark: u64, needle: &str, timeout: Duration) -> Option<String> {
        self.stderr.wait_for(mark, needle, timeout)
    }

    /// The last lines of its log (stderr), for a failure's message.
    pub(crate) fn log_tail(&self) -> String {
        self.stderr.kept()
    }

    /// The HTTP response (status line, headers, body) to `GET path` on its metrics port.
    pub(crate) fn scrape(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.metrics).expect("metrics port");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("response");
        response
    }

    /// Whether the node has exited (reaping it if so), without waiting.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `chainlog controller` child process, killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Controller {
    pub(crate) child: Child,
    /// Where it serves.
    pub(crate) addr: SocketAddr,
    /// Its stderr (its log).
    pub(crate) log: PathBuf,
}

impl Controller {
    /// Starts `chainlog controller` on `dir`, listening on a port the kernel picks, with
    /// `args` added; returns once it printed where it serves (so it serves).
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Controller {
        Controller::spawn(dir, "127.0.0.1:0", args).unwrap_or_else(|e| panic!("{}", e.message()))
    }

    /// As [`Controller::start`], at a fixed port below the ephemeral range, so that it can be
    /// started again at the same address ([`Controller::start_on`]).
    pub(crate) fn start_fixed(dir: &Path, args: &[&str]) -> Controller {
        start_fixed(1, |port| {
            Controller::spawn(dir, &format!("127.0.0.1:{port}"), args)
        })
    }

    /// As [`Controller::start`], listening on `listen`: a restart at the same address, which
    /// must be one of [`Controller::start_fixed`] (below the ephemeral range).
    pub(crate) fn start_on(dir: &Path, listen: &str, args: &[&str]) -> Controller {
        let addr: SocketAddr = listen.parse().expect("an address");
        assert!(
            addr.port() == 0 || addr.port() < ephemeral_low(),
            "port {} is in the ephemeral range: an outgoing connection may have taken it \
             since; start the controller with Controller::start_fixed to restart it there",
            addr.port()
        );
        Controller::spawn(dir, listen, args).unwrap_or_else(|e| panic!("{}", e.message()))
    }

    fn spawn(dir: &Path, listen: &str, args: &[&str]) -> Result<Controller, StartError> {
        let log = dir.with_extension("log");
        let stderr = std::fs::File::create(&log).expect("controller log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chainlog"))
            .args(["controller", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start chainlog controller");
        let stdout = child.stdout.take().expect("stdout");
        let mut controller = Controller {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            log,
        };
        let Some(line) = first_line(stdout, "the controller") else {
            let status = controller.child.wait().expect("wait for the controller");
            let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
            return Err(StartError::from_log("the controller", status, log));
        };
        controller.addr = line
            .trim()
            .strip_prefix(SERVING_AT)
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("the controller printed {line:?}"));
        Ok(controller)
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGTERM);
        self.child.wait().expect("wait for the controller")
    }

    /// SIGKILL (kill -9), then the exit status: whatever it was doing stops there.
    pub(crate) fn kill9(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGKILL);
        self.child.wait().expect("wait for the controller")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A READ's answer: the committed tail and the records as (LSN, payload).
pub(crate) type ReadAnswer = (u64, Vec<(u64, Vec<u8>)>);

/// A blocking protocol client for tests.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) stream: TcpStream,
    /// Received bytes not yet consumed as frames.
    pub(crate) input: Vec<u8>,
    pub(crate) limits: Limits,
    /// The request id the next [`Client::call`] uses.
    pub(crate) next_id: u64,
    /// The node's HELLO response.
    pub(crate) hello: HelloResponse,
}

impl Client {
    /// Connects to `addr` and does the handshake.
    pub(crate) fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(SOCKET_TIMEOUT))
            .expect("read timeout");
        let mut out = Vec::new();
        encode_request(&mut out, 1, &Request::Hello(HelloRequest::CURRENT));
        let mut client = Client {
            stream,
            input: Vec::new(),
            limits: Limits::DEFAULT,
            next_id: 2,
            hello: HelloResponse {
                version: 0,
                shard_index: 0,
                shard_count: 0,
                frame_bytes_max: 0,
                record_bytes_max: 0,
                batch_records_max: 0,
                node_id: 0,
                role: Role::Node,
            },
        };
        client.send(&out);
        client.hello = client.receive(|rid, r| match r {
            Response::Hello(h) if rid == 1 => h,
            other => panic!("HELLO answered with {other:?} (request id {rid})"),
        });
        client.limits = client.hello.limits();
        client
    }

    pub(crate) fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).expect("send");
    }

    /// The next frame's response, given to `f` with its request id.
    pub(crate) fn receive<R>(&mut self, f: impl FnOnce(u64, Response<'_>) -> R) -> R {
        loop {
            if let Some(frame) = parse_frame(&self.input, &self.limits).expect("well-formed frame")
            {
                let len = frame.frame_bytes();
                let response = decode_response(&frame, &self.limits).expect("decodable response");
                let result = f(frame.request_id, response);
                self.input.drain(..len);
                return result;
            }
            let mut chunk = [0u8; 64 << 10];
            let n = self.stream.read(&mut chunk).expect("receive");
            assert!(n > 0, "the node closed the connection");
            self.input.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `request` and gives its response to `f` (one request at a time).
    pub(crate) fn call<R>(
        &mut self,
        request: &Request<'_>,
        f: impl FnOnce(Response<'_>) -> R,
    ) -> R {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        encode_request(&mut out, id, request);
        self.send(&out);
        self.receive(|rid, r| {
            assert_eq!(
                rid, id,
                "responses to one request at a time come back in order"
            );
            f(r)
        })
    }

    /// Creates the log `name` (replication factor 1) and returns its id.
    pub(crate) fn create(&mut self, name: &str) -> u64 {
        self.call(
            &Request::CreateLog(CreateLogRequest {
                replication_factor: 1,
                name,
            }),
            |r| match r {
                Response::CreateLog(c) => c.log_id,
                other => panic!("CREATE_LOG {name}: {other:?}"),
            },
        )
    }

    /// Sends one APPEND of `payloads` without waiting for its answer; returns its request id.
    pub(crate) fn send_append(&mut self, header: &AppendHeader, payloads: &[&[u8]]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        let limits = self.limits;
        let mut builder = AppendBuilder::new(&mut out, id, header, &limits);
        for p in payloads {
            builder.push(p).expect("record within limits");
        }
        builder.finish();
        self.send(&out);
        id
    }

    /// Sends one APPEND of `payloads` and returns its answer: Ok(first_lsn) or the error's
    /// (code, arg0).
    pub(crate) fn append(
        &mut self,
        header: &AppendHeader,
        payloads: &[&[u8]],
    ) -> Result<u64, (ErrorCode, u64)> {
        let id = self.send_append(header, payloads);
        self.receive(|rid, r| {
            assert_eq!(rid, id);
            match r {
                Response::Append(a) => {
                    assert_eq!(a.count as usize, payloads.len());
                    Ok(a.first_lsn)
                }
                Response::Error(e) => Err((e.code, e.arg0)),
                other => panic!("APPEND answered with {other:?}"),
            }
        })
    }

    /// READs `log_id` from `from_lsn` (at most 1000 records, 1 MiB).
    pub(crate) fn read(&mut self, log_id: u64, from_lsn: u64) -> Result<ReadAnswer, ErrorCode> {
        let request = Request::Read(ReadRequest {
            log_id,
            from_lsn,
            max_records: 1000,
            max_bytes: 1 << 20,
        });
        self.call(&request, |r| match r {
            Response::Read(read) => Ok((
                read.tail,
                read.records
                    .iter()
                    .map(|v| (v.header.lsn, v.payload.to_vec()))
                    .collect(),
            )),
            Response::Error(e) => Err(e.code),
            other => panic!("READ answered with {other:?}"),
        })
    }

    /// Every record of `log_id` from `from_lsn` up to the tail, READ by READ: (tail, records).
    pub(crate) fn read_all(&mut self, log_id: u64, from_lsn: u64) -> Result<ReadAnswer, ErrorCode> {
        let mut records = Vec::new();
        let tail = self.read_each(log_id, from_lsn, &mut |batch| records.extend(batch))?;
        Ok((tail, records))
    }

    /// Reads `log_id` from `from_lsn` up to the tail, READ by READ, handing each READ's
    /// records to `each` (nothing held here: a long run's log is gigabytes); returns the tail.
    pub(crate) fn read_each(
        &mut self,
        log_id: u64,
        from_lsn: u64,
        each: &mut dyn FnMut(Vec<(u64, Vec<u8>)>),
    ) -> Result<u64, ErrorCode> {
        let mut next = from_lsn;
        loop {
            let (tail, batch) = self.read(log_id, next)?;
            if batch.is_empty() {
                assert!(next >= tail, "a READ below the tail returns records");
                return Ok(tail);
            }
            next = batch.last().expect("nonempty").0 + 1;
            each(batch);
        }
    }
}
