//! One connection to one shard: the HELLO, then a writer task (frames from callers, coalesced
//! into few writes) and a reader task (frames from the server, matched by request id to the
//! caller waiting for them). Many requests are in flight at once, at most `in_flight_max`
//! (a semaphore); APPEND answers arrive, and so complete, in the order the APPENDs were sent.
//!
//! When the connection fails every waiting caller gets `ConnectionLost` (outcome unknown) and
//! the connection is marked closed; the client opens a new one for the next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chainlog_net::{
    decode_response, encode_request, parse_frame, HelloRequest, HelloResponse, Limits, Opcode,
    Request, Response, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{ClientError, Record, ServerError};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// Frames the writer coalesces into one write at most.
const WRITE_COALESCE_FRAMES_MAX: usize = 256;

/// A response, owned (decoded from the reader's buffer and copied out of it).
#[derive(Debug)]
pub(crate) enum Answer {
    Append { first_lsn: u64, count: u32 },
    Read { tail: u64, records: Vec<Record> },
    Tail(chainlog_net::TailResponse),
    Created { log_id: u64 },
    Described(super::LogInfo),
    Listed(Vec<super::LogName>),
    MapPage(chainlog_net::pages::MapPage),
    Empty,
}

/// What a subscription's stream receives.
#[derive(Debug)]
pub(crate) enum SubEvent {
    /// The acknowledgement: the first LSN the stream pushes.
    Started(u64),
    /// Records (END: the stream is over).
    Records { records: Vec<Record>, end: bool },
    /// The subscription failed (or could not start), or the connection did.
    Failed(ClientError),
}

enum Waiter {
    Once(oneshot::Sender<Result<Answer, ClientError>>),
    Stream(mpsc::UnboundedSender<SubEvent>),
}

struct Pending {
    waiters: HashMap<u64, Waiter>,
    /// Set (under the lock) when the connection has failed: no waiter is added after.
    closed: Option<String>,
}

/// A connection to one shard.
#[derive(Debug)]
pub(crate) struct Conn {
    shard: u16,
    hello: HelloResponse,
    limits: Limits,
    next_id: AtomicU64,
    out: mpsc::UnboundedSender<Vec<u8>>,
    shared: Arc<Shared>,
    in_flight: Arc<Semaphore>,
}

struct Shared {
    shard: u16,
    pending: Mutex<Pending>,
    failed: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("shard", &self.shard)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Marks the connection failed and tells every waiter that its outcome is unknown.
    fn fail(&self, reason: String) {
        let waiters = {
            let mut pending = self.pending.lock().expect("pending lock");
            if pending.closed.is_none() {
                pending.closed = Some(reason.clone());
            }
            std::mem::take(&mut pending.waiters)
        };
        self.failed.store(true, Ordering::Release);
        for (_, waiter) in waiters {
            let lost = ClientError::ConnectionLost {
                shard: self.shard,
                reason: reason.clone(),
            };
            match waiter {
                Waiter::Once(tx) => {
                    let _ = tx.send(Err(lost));
                }
                Waiter::Stream(tx) => {
                    let _ = tx.send(SubEvent::Failed(lost));
                }
            }
        }
    }
}

impl Conn {
    /// Connects to `addr`, which must be shard `shard`, and does the HELLO. `in_flight_max` bounds the requests outstanding on the connection.
    pub(crate) async fn open(
        addr: SocketAddr,
        shard: u16,
        in_flight_max: usize,
    ) -> Result<Conn, ClientError> {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let mut hello_frame = Vec::new();
        encode_request(&mut hello_frame, 1, &Request::Hello(HelloRequest::CURRENT));
        let lost = |e: std::io::Error| ClientError::ConnectionLost {
            shard,
            reason: e.to_string(),
        };
        stream.write_all(&hello_frame).await.map_err(lost)?;
        let mut input = Vec::with_capacity(READ_CHUNK_BYTES);
        let hello = loop {
            let parsed = parse_frame(&input, &Limits::DEFAULT)
                .map_err(|e| ClientError::Protocol(format!("HELLO response: {e}")))?;
            if let Some(frame) = parsed {
                let consumed = frame.frame_bytes();
                let response = decode_response(&frame, &Limits::DEFAULT)
                    .map_err(|e| ClientError::Protocol(format!("HELLO response: {e}")))?;
                let hello = match response {
                    Response::Hello(hello) => hello,
                    Response::Error(e) => return Err(ClientError::Server(ServerError::from(&e))),
                    other => {
                        return Err(ClientError::Protocol(format!(
                            "HELLO answered with {other:?}"
                        )))
                    }
                };
                input.drain(..consumed);
                break hello;
            }
            let n = stream.read_buf(&mut input).await.map_err(lost)?;
            if n == 0 {
                return Err(ClientError::ConnectionLost {
                    shard,
                    reason: "closed during the HELLO".into(),
                });
            }
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "HELLO agreed on version {}",
                hello.version
            )));
        }
        if hello.shard_index != shard {
            return Err(ClientError::Protocol(format!(
                "{addr} is shard {} of {}, not shard {shard}",
                hello.shard_index, hello.shard_count
            )));
        }
        let limits = hello.limits();
        let (read_half, write_half) = stream.into_split();
        let (out, frames) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            shard,
            pending: Mutex::new(Pending {
                waiters: HashMap::new(),
                closed: None,
            }),
            failed: AtomicBool::new(false),
        });
        tokio::spawn(write_loop(write_half, frames, Arc::clone(&shared)));
        tokio::spawn(read_loop(read_half, input, limits, Arc::clone(&shared)));
        Ok(Conn {
            shard,
            hello,
            limits,
            next_id: AtomicU64::new(2),
            out,
            shared,
            in_flight: Arc::new(Semaphore::new(in_flight_max.max(1))),
        })
    }

    pub(crate) fn hello(&self) -> &HelloResponse {
        &self.hello
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// True once the connection has failed (a new one is needed).
    pub(crate) fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    fn lost(&self, reason: String) -> ClientError {
        ClientError::ConnectionLost {
            shard: self.shard,
            reason,
        }
    }

    /// Sends the request that `encode` writes (given its request id) and returns the receiver
    /// of its answer and the permit that counts it in flight. `encode` may refuse the request
    /// (then nothing is sent).
    pub(crate) async fn send(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64) -> Result<(), ClientError>,
    ) -> Result<
        (
            u64,
            oneshot::Receiver<Result<Answer, ClientError>>,
            OwnedSemaphorePermit,
        ),
        ClientError,
    > {
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode(&mut frame, id)?;
        let (tx, rx) = oneshot::channel();
        self.register(id, Waiter::Once(tx), frame)?;
        Ok((id, rx, permit))
    }

    /// Sends a SUBSCRIBE that `encode` writes; its events arrive on the returned receiver.
    pub(crate) fn send_stream(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, u64),
    ) -> Result<(u64, mpsc::UnboundedReceiver<SubEvent>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode(&mut frame, id);
        let (tx, rx) = mpsc::unbounded_channel();
        self.register(id, Waiter::Stream(tx), frame)?;
        Ok((id, rx))
    }

    /// Sends a request whose answer nobody waits for (CREDIT, UNSUBSCRIBE); the reader drops
    /// answers to unknown ids.
    pub(crate) fn send_unanswered(&self, request: &Request<'_>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_request(&mut frame, id, request);
        let _ = self.out.send(frame);
    }

    /// Forgets request `id` (its caller gave up waiting).
    pub(crate) fn forget(&self, id: u64) {
        self.shared
            .pending
            .lock()
            .expect("pending lock")
            .waiters
            .remove(&id);
    }

    fn register(&self, id: u64, waiter: Waiter, frame: Vec<u8>) -> Result<(), ClientError> {
        // Registered and queued under the lock: frames reach the writer in registration order
        // (APPEND order is LSN order), and no answer can arrive before its waiter exists.
        let mut pending = self.shared.pending.lock().expect("pending lock");
        if let Some(reason) = &pending.closed {
            return Err(self.lost(reason.clone()));
        }
        pending.waiters.insert(id, waiter);
        if self.out.send(frame).is_err() {
            pending.waiters.remove(&id);
            return Err(self.lost("the writer stopped".into()));
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer ends when the last sender (ours) is dropped, which shuts the socket's
        // write side; the reader then sees the server close.
        self.shared.fail("the client closed the connection".into());
    }
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut batch = Vec::new();
    while let Some(frame) = frames.recv().await {
        batch.clear();
        batch.extend_from_slice(&frame);
        let mut coalesced = 1;
        while coalesced < WRITE_COALESCE_FRAMES_MAX {
            match frames.try_recv() {
                Ok(frame) => {
                    batch.extend_from_slice(&frame);
                    coalesced += 1;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = socket.write_all(&batch).await {
            shared.fail(format!("writing: {e}"));
            return;
        }
    }
    let _ = socket.shutdown().await;
}

async fn read_loop(
    mut socket: OwnedReadHalf,
    mut input: Vec<u8>,
    limits: Limits,
    shared: Arc<Shared>,
) {
    loop {
        let mut consumed = 0;
        loop {
            let frame = match parse_frame(&input[consumed..], &limits) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    shared.fail(format!("malformed frame from the server: {e}"));
                    return;
                }
            };
            consumed += frame.frame_bytes();
            let response = match decode_response(&frame, &limits) {
                Ok(response) => response,
                Err(e) => {
                    shared.fail(format!("malformed response from the server: {e}"));
                    return;
                }
            };
            if let Err(reason) = dispatch(&shared, frame.opcode, frame.request_id, response) {
                shared.fail(reason);
                return;
            }
        }
        input.drain(..consumed);
        input.reserve(READ_CHUNK_BYTES);
        match socket.read_buf(&mut input).await {
            Ok(0) => {
                shared.fail("the server closed the connection".into());
                return;
            }
            Ok(_) => {}
            Err(e) => {
                shared.fail(format!("reading: {e}"));
                return;
            }
        }
    }
}

/// Hands a response to whoever waits for it. An error means the server broke the protocol.
fn dispatch(
    shared: &Shared,
    opcode: u16,
    request_id: u64,
    response: Response<'_>,
) -> Result<(), String> {
    if let Response::Error(e) = &response {
        if opcode == 0 && e.code.closes_connection() {
            // A connection-level error: the server closes; everything pending is unknown.
            return Err(format!(
                "the server refused the connection: {}",
                ServerError::from(e)
            ));
        }
    }
    let mut pending = shared.pending.lock().expect("pending lock");
    let stream_ends = matches!(
        response,
        Response::PushError(_) | Response::Push(chainlog_net::Push { end: true, .. })
    ) || (matches!(response, Response::Error(_))
        && matches!(pending.waiters.get(&request_id), Some(Waiter::Stream(_))));
    let waiter = match pending.waiters.get(&request_id) {
        None => return Ok(()), // given up on, or CREDIT/UNSUBSCRIBE
        Some(Waiter::Stream(tx)) => {
            let event = match response {
                Response::Subscribe(ack) => SubEvent::Started(ack.start_lsn),
                Response::Push(push) => SubEvent::Records {
                    records: owned_records(&push.batch.records),
                    end: push.end,
                },
                Response::Error(e) | Response::PushError(e) => {
                    SubEvent::Failed(ClientError::Server(ServerError::from(&e)))
                }
                other => return Err(format!("a SUBSCRIBE answered with {other:?}")),
            };
            let _ = tx.send(event);
            if stream_ends {
                pending.waiters.remove(&request_id);
            }
            return Ok(());
        }
        Some(Waiter::Once(_)) => match pending.waiters.remove(&request_id) {
            Some(Waiter::Once(tx)) => tx,
            _ => unreachable!("just looked it up"),
        },
    };
    drop(pending);
    let answer = match response {
        Response::Error(e) => Err(ClientError::Server(ServerError::from(&e))),
        Response::Append(a) => Ok(Answer::Append {
            first_lsn: a.first_lsn,
            count: a.count,
        }),
        Response::Read(read) => Ok(Answer::Read {
            tail: read.tail,
            records: owned_records(&read.records),
        }),
        Response::CheckTail(t) | Response::TailHint(t) => Ok(Answer::Tail(t)),
        Response::CreateLog(c) => Ok(Answer::Created { log_id: c.log_id }),
        Response::DescribeLog(d) => Ok(Answer::Described(super::LogInfo::from(&d))),
        Response::ListLogs(list) => Ok(Answer::Listed(
            list.entries.iter().map(super::LogName::from).collect(),
        )),
        Response::GetMap(page) => Ok(Answer::MapPage((&page).into())),
        Response::Trim | Response::DeleteLog | Response::Credit | Response::Unsubscribe => {
            Ok(Answer::Empty)
        }
        other => {
            let name = Opcode::from_u16(opcode).map_or("?", Opcode::name);
            return Err(format!("a {name} request answered with {other:?}"));
        }
    };
    let _ = waiter.send(answer);
    Ok(())
}

fn owned_records(records: &chainlog_net::Records<'_>) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record {
            lsn: r.header.lsn,
            epoch: r.header.epoch,
            timestamp_us: r.header.timestamp_us,
            payload: r.payload.to_vec(),
        })
        .collect()
}
