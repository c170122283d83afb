//! Shared by the tests that run the real `chainlog node` binary on loopback: [`Node`] starts it
//! (ready once every shard logged "shard serving", no sleeping) and kills and reaps it when
//! dropped, even when a test fails; [`Controller`] does the same for `chainlog controller`
//! (ready once it printed its address); [`Client`] is a minimal blocking protocol client built
//! from chainlog-net's encoders and decoders.
//!
//! Each test binary compiles this module and uses part of it, hence `dead_code` is allowed.

#![allow(dead_code)]

pub(crate) mod raw;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use chainlog::net::{
    decode_response, encode_request, parse_frame, AppendBuilder, AppendHeader, CreateLogRequest,
    ErrorCode, HelloRequest, HelloResponse, Limits, ReadRequest, Request, Response, Role,
};

/// How long a test socket waits for bytes before the test fails: a guard against hanging for
/// ever when the node stops answering, never a timing assertion.
pub(crate) const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

/// A node child process, killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) child: Child,
    /// Shard 0's port; shard `i` listens on `port + i`.
    pub(crate) port: u16,
    pub(crate) shards: u16,
}

impl Node {
    /// Starts `chainlog node` on `dir` with `shards` shards and returns once every shard serves.
    pub(crate) fn start(dir: &Path, shards: u16) -> Node {
        // One port more than the shards: the node may serve metrics at the port after the last
        // shard's.
        let port = free_ports(shards + 1);
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
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chainlog node");
        let stderr = child.stderr.take().expect("stderr");
        // From here on a failure drops `node`, which kills and reaps the child.
        let node = Node {
            child,
            port,
            shards,
        };
        // Ready once every shard logged that it serves (no sleeping, no polling).
        let mut lines = BufReader::new(stderr).lines();
        let mut serving = 0;
        while serving < shards {
            let line = lines
                .next()
                .expect("the node exited before serving")
                .expect("stderr line");
            if line.contains("shard serving") {
                serving += 1;
            }
        }
        // Keep draining stderr so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        node
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
        // SAFETY: kill(2) on our own child's pid, not yet reaped (so not reused).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the node")
    }

    /// SIGKILL (kill -9), then the exit status: the node gets no chance to clean up.
    pub(crate) fn kill9(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid, not yet reaped (so not reused).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().expect("wait for the node")
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
        let log = dir.with_extension("log");
        let stderr = std::fs::File::create(&log).expect("controller log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chainlog"))
            .args(["controller", "--listen", "127.0.0.1:0", "--data-dir"])
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
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("stdout");
        let Some(addr) = line.trim().strip_prefix("chainlog controller: serving at ") else {
            let status = controller.child.wait().expect("wait");
            panic!(
                "the controller did not start ({status}): {}",
                std::fs::read_to_string(&controller.log).unwrap_or_default()
            );
        };
        controller.addr = addr.parse().expect("an address");
        controller
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid, not yet reaped (so not reused).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait for the controller")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` consecutive free ports on loopback (asked of the kernel, then released).
pub(crate) fn free_ports(n: u16) -> u16 {
    loop {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if first.checked_add(n).is_none() {
            continue;
        }
        let all_free = (0..n).all(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, first + i)).is_ok());
        if all_free {
            return first;
        }
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

    /// Sends one APPEND of `payloads` and returns its answer: Ok(first_lsn) or the error's
    /// (code, arg0).
    pub(crate) fn append(
        &mut self,
        header: &AppendHeader,
        payloads: &[&[u8]],
    ) -> Result<u64, (ErrorCode, u64)> {
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
        let mut next = from_lsn;
        loop {
            let (tail, batch) = self.read(log_id, next)?;
            if batch.is_empty() {
                assert!(next >= tail, "a READ below the tail returns records");
                return Ok((tail, records));
            }
            next = batch.last().expect("nonempty").0 + 1;
            records.extend(batch);
        }
    }
}
