//! `chainlog::client`: the async (tokio) client library of the wire protocol (PROTOCOL.md).
//!
//! [`Client::connect`] does the HELLO with shard 0 and learns the node's shard count; it then
//! opens one connection per shard, lazily, the first time a request needs that shard (shard i
//! listens on the port of shard 0 + i). Every request about a log goes to the shard that owns
//! it (`log_id % shard_count`). A connection carries many requests at once (pipelining): a
//! writer task and a reader task per connection, each request's answer matched by request id.
//! Appends on one connection complete in the order they were sent, which is LSN order.
//!
//! Errors are typed ([`ClientError`]). Retryable server errors (OVERLOADED after the wait it
//! names, WRONG_SHARD at the shard it names, UNAVAILABLE after a pause) are retried up to
//! [`ClientConfig::retries_max`] times: an ERROR means the request did not take effect, so
//! resending is safe. A timeout or a lost connection is "outcome unknown" and is never
//! retried by the client.

mod conn;
mod error;
mod subscription;

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use chainlog_net::{
    encode_request, AppendBuilder, AppendHeader, CreateLogRequest, DescribeLogRequest,
    DescribeLogResponse, ErrorCode, Limits, ListLogsRequest, LogRef, Opcode, ReadRequest, Request,
    SubscribeRequest, TailResponse, TrimRequest,
};
use tokio::sync::Mutex;

use conn::{Answer, Conn};
pub use error::{ClientError, ServerError};
pub use subscription::Subscription;

/// The id of the log called `name` (FNV-1a 64, PROTOCOL.md section 3.2).
pub fn log_id(name: &str) -> u64 {
    crate::node::catalog::log_id_of(name)
}

/// How a [`Client`] behaves.
#[derive(Clone, Copy, Debug)]
pub struct ClientConfig {
    /// How long a request waits for its answer before it is reported as
    /// [`ClientError::Timeout`] (outcome unknown).
    pub request_timeout: Duration,
    /// Retries of a retryable server error, per call.
    pub retries_max: u32,
    /// Requests outstanding per connection at most (the server reads no more than 1024).
    pub in_flight_max: usize,
    /// Retries of UNAVAILABLE, per call (within `retries_max`): a node that is shutting down
    /// or whose storage stopped rarely recovers within a call.
    pub unavailable_retries_max: u32,
    /// Pause before the first retry of UNAVAILABLE (doubled on each retry).
    pub unavailable_backoff: Duration,
    /// Records a subscription may have pushed to it and not yet consumed.
    pub subscription_credit: u32,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            request_timeout: Duration::from_secs(30),
            retries_max: 8,
            in_flight_max: Limits::DEFAULT.in_flight_max as usize,
            unavailable_retries_max: 3,
            unavailable_backoff: Duration::from_millis(50),
            subscription_credit: 1024,
        }
    }
}

/// Options of [`Client::append_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// Append only if the batch would start at this LSN (else CONDITION_FAILED with the tail).
    pub expected_lsn: Option<u64>,
    /// The epoch the caller believes current (`None`: whatever is current).
    pub epoch: Option<u64>,
    /// Refused with FENCED if lower than the log's token (`None`: no fencing).
    pub fencing_token: Option<u64>,
    /// Idempotency key: `(writer_id, writer_seq)`, `writer_id` nonzero. A writer's sequence
    /// numbers increase (one batch at a time, or pipelined in order); an append with a key
    /// whose outcome is unknown (lost connection, timeout) is sent again with the same key,
    /// and answered with the original LSNs if the first attempt was appended.
    pub idempotency: Option<(u64, u64)>,
}

/// A committed record, as read or pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its position in the log.
    pub lsn: u64,
    /// The log's epoch when it was appended.
    pub epoch: u64,
    /// Server time of the append, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// A READ's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBatch {
    /// Records below this LSN are committed.
    pub tail: u64,
    /// Consecutive records from the LSN asked for (none if it is at or past the tail).
    pub records: Vec<Record>,
}

/// A log's metadata and positions (DESCRIBE_LOG).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogInfo {
    /// The id.
    pub log_id: u64,
    /// The name.
    pub name: String,
    /// Records below this LSN are committed.
    pub tail: u64,
    /// Records below this LSN are trimmed.
    pub trim_point: u64,
    /// The current epoch.
    pub epoch: u64,
    /// The shard that owns it.
    pub shard: u16,
    /// Replicas per chain.
    pub replication_factor: u8,
}

impl From<&DescribeLogResponse<'_>> for LogInfo {
    fn from(d: &DescribeLogResponse<'_>) -> LogInfo {
        LogInfo {
            log_id: d.log_id,
            name: d.name.to_string(),
            tail: d.tail,
            trim_point: d.trim_point,
            epoch: d.epoch,
            shard: d.shard,
            replication_factor: d.replication_factor,
        }
    }
}

/// A log as LIST_LOGS names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogName {
    /// The id.
    pub log_id: u64,
    /// The name.
    pub name: String,
}

impl From<chainlog_net::LogEntry<'_>> for LogName {
    fn from(e: chainlog_net::LogEntry<'_>) -> LogName {
        LogName {
            log_id: e.log_id,
            name: e.name.to_string(),
        }
    }
}

/// A client of one node. Cheap to clone (clones share the connections); usable from many
/// tasks at once.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    base: SocketAddr,
    shard_count: u16,
    limits: Limits,
    config: ClientConfig,
    /// One slot per shard: the connection, opened when first needed and again after it fails.
    conns: Vec<Slot>,
}

/// A shard's connection. Requests take it under a short synchronous lock; opening one is
/// serialized by an async lock, so concurrent requests open it once.
#[derive(Debug, Default)]
struct Slot {
    current: std::sync::Mutex<Option<Arc<Conn>>>,
    opening: Mutex<()>,
}

impl Slot {
    /// The connection, if there is one that has not failed.
    fn live(&self) -> Option<Arc<Conn>> {
        let current = self.current.lock().expect("slot lock");
        current.as_ref().filter(|c| !c.is_failed()).map(Arc::clone)
    }
}

impl Client {
    /// Connects to shard 0 of a node at `addr` with the default configuration.
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects to shard 0 of a node at `addr`: does the HELLO and learns the shard count.
    pub async fn connect_with(
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let first = open_within(addr, 0, &config).await?;
        let hello = *first.hello();
        let shard_count = hello.shard_count.max(1);
        if usize::from(addr.port()) + usize::from(shard_count) > usize::from(u16::MAX) + 1 {
            return Err(ClientError::Protocol(format!(
                "{shard_count} shards from port {} do not fit the port range",
                addr.port()
            )));
        }
        let conns: Vec<Slot> = (0..shard_count).map(|_| Slot::default()).collect();
        *conns[0].current.lock().expect("slot lock") = Some(Arc::new(first));
        Ok(Client {
            inner: Arc::new(Inner {
                base: addr,
                shard_count,
                limits: hello.limits(),
                config,
                conns,
            }),
        })
    }

    /// The node's shards.
    pub fn shard_count(&self) -> u16 {
        self.inner.shard_count
    }

    /// The node's limits (from shard 0's HELLO).
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The address of shard `shard`.
    pub fn shard_addr(&self, shard: u16) -> SocketAddr {
        let mut addr = self.inner.base;
        addr.set_port(addr.port() + shard);
        addr
    }

    /// The shard that owns `log_id`.
    pub fn shard_of(&self, log_id: u64) -> u16 {
        (log_id % u64::from(self.inner.shard_count)) as u16
    }

    /// Appends `payloads` (one record each, at least one) to log `log_id`; returns their
    /// LSNs once durable.
    pub async fn append<P: AsRef<[u8]>>(
        &self,
        log_id: u64,
        payloads: &[P],
    ) -> Result<Range<u64>, ClientError> {
        self.append_with(log_id, payloads, &AppendOptions::default())
            .await
    }

    /// [`Client::append`] with a condition, an epoch, a fencing token or an idempotency key.
    pub async fn append_with<P: AsRef<[u8]>>(
        &self,
        log_id: u64,
        payloads: &[P],
        options: &AppendOptions,
    ) -> Result<Range<u64>, ClientError> {
        if payloads.is_empty() {
            return Err(ClientError::Invalid(
                "an APPEND carries at least one record".into(),
            ));
        }
        let mut header = AppendHeader::new(log_id);
        if let Some(lsn) = options.expected_lsn {
            header.expected_lsn = lsn;
        }
        if let Some(epoch) = options.epoch {
            header.epoch = epoch;
        }
        if let Some(token) = options.fencing_token {
            header.fencing_token = token;
        }
        if let Some((writer_id, writer_seq)) = options.idempotency {
            header.writer_id = writer_id;
            header.writer_seq = writer_seq;
        }
        let retry = if options.idempotency.is_some() {
            Retry::EvenIfUnknown
        } else {
            Retry::Safe
        };
        let answer = self
            .call(
                self.shard_of(log_id),
                Opcode::Append,
                retry,
                |out, id, limits| {
                    let mut batch = AppendBuilder::new(out, id, &header, limits);
                    for payload in payloads {
                        batch
                            .push(payload.as_ref())
                            .map_err(|e| ClientError::Invalid(e.to_string()))?;
                    }
                    batch.finish();
                    Ok(())
                },
            )
            .await?;
        match answer {
            Answer::Append { first_lsn, count } if count as usize == payloads.len() => {
                Ok(first_lsn..first_lsn + u64::from(count))
            }
            other => Err(unexpected(Opcode::Append, other)),
        }
    }

    /// Reads committed records of `log_id` from `from_lsn`: at most `max_records` and about
    /// `max_bytes` (at least one record if `from_lsn` is committed).
    pub async fn read(
        &self,
        log_id: u64,
        from_lsn: u64,
        max_records: u32,
        max_bytes: u32,
    ) -> Result<ReadBatch, ClientError> {
        let request = Request::Read(ReadRequest {
            log_id,
            from_lsn,
            max_records,
            max_bytes,
        });
        match self.simple(self.shard_of(log_id), &request).await? {
            Answer::Read { tail, records } => Ok(ReadBatch { tail, records }),
            other => Err(unexpected(Opcode::Read, other)),
        }
    }

    /// The linearizable committed tail of `log_id`, with its trim point and epoch.
    pub async fn check_tail(&self, log_id: u64) -> Result<TailResponse, ClientError> {
        match self
            .simple(self.shard_of(log_id), &Request::CheckTail { log_id })
            .await?
        {
            Answer::Tail(tail) => Ok(tail),
            other => Err(unexpected(Opcode::CheckTail, other)),
        }
    }

    /// The node's view of the tail of `log_id` (cheap, possibly stale).
    pub async fn tail_hint(&self, log_id: u64) -> Result<TailResponse, ClientError> {
        match self
            .simple(self.shard_of(log_id), &Request::TailHint { log_id })
            .await?
        {
            Answer::Tail(tail) => Ok(tail),
            other => Err(unexpected(Opcode::TailHint, other)),
        }
    }

    /// Trims the records of `log_id` below `before_lsn`, durably.
    pub async fn trim(&self, log_id: u64, before_lsn: u64) -> Result<(), ClientError> {
        let request = Request::Trim(TrimRequest { log_id, before_lsn });
        match self.simple(self.shard_of(log_id), &request).await? {
            Answer::Empty => Ok(()),
            other => Err(unexpected(Opcode::Trim, other)),
        }
    }

    /// Creates the log called `name` (replication factor 1); returns its id.
    pub async fn create_log(&self, name: &str) -> Result<u64, ClientError> {
        self.check_name(name)?;
        let request = Request::CreateLog(CreateLogRequest {
            replication_factor: 1,
            name,
        });
        match self.simple(self.shard_of(log_id(name)), &request).await? {
            Answer::Created { log_id, .. } => Ok(log_id),
            other => Err(unexpected(Opcode::CreateLog, other)),
        }
    }

    /// A log's metadata and positions, by id or by name.
    pub async fn describe_log(&self, log: LogRef<'_>) -> Result<LogInfo, ClientError> {
        let shard = match log {
            LogRef::Id(id) => self.shard_of(id),
            LogRef::Name(name) => {
                self.check_name(name)?;
                self.shard_of(log_id(name))
            }
        };
        let request = Request::DescribeLog(DescribeLogRequest { by: log });
        match self.simple(shard, &request).await? {
            Answer::Described(info) => Ok(info),
            other => Err(unexpected(Opcode::DescribeLog, other)),
        }
    }

    /// Every log of the node (every shard is asked), ascending by id.
    pub async fn list_logs(&self) -> Result<Vec<LogName>, ClientError> {
        let mut all = Vec::new();
        for shard in 0..self.inner.shard_count {
            all.extend(self.list_logs_of_shard(shard).await?);
        }
        all.sort();
        Ok(all)
    }

    /// The logs of one shard, ascending by id (every page).
    pub async fn list_logs_of_shard(&self, shard: u16) -> Result<Vec<LogName>, ClientError> {
        let list_max = self.inner.limits.list_max;
        let mut logs: Vec<LogName> = Vec::new();
        loop {
            let request = Request::ListLogs(ListLogsRequest {
                after_log_id: logs.last().map_or(0, |l| l.log_id),
                max: list_max,
            });
            match self.simple(shard, &request).await? {
                Answer::Listed(page) if page.is_empty() => return Ok(logs),
                Answer::Listed(page) => {
                    if let (Some(last), Some(first)) = (logs.last(), page.first()) {
                        if first.log_id <= last.log_id {
                            return Err(ClientError::Protocol(
                                "LIST_LOGS pages out of order".into(),
                            ));
                        }
                    }
                    logs.extend(page);
                }
                other => return Err(unexpected(Opcode::ListLogs, other)),
            }
        }
    }

    /// Deletes log `log_id`.
    pub async fn delete_log(&self, log_id: u64) -> Result<(), ClientError> {
        match self
            .simple(self.shard_of(log_id), &Request::DeleteLog { log_id })
            .await?
        {
            Answer::Empty => Ok(()),
            other => Err(unexpected(Opcode::DeleteLog, other)),
        }
    }

    /// Subscribes to log `log_id` from `from_lsn` ([`chainlog_net::LSN_FROM_TAIL`]: only
    /// records committed from now on). The [`Subscription`] is a `Stream` of records; it grants
    /// the server credit as records are consumed ([`ClientConfig::subscription_credit`]
    /// outstanding at most) and unsubscribes when dropped.
    pub async fn subscribe(&self, log_id: u64, from_lsn: u64) -> Result<Subscription, ClientError> {
        let credit = self.inner.config.subscription_credit.max(2);
        let mut shard = self.shard_of(log_id);
        let mut attempt = 0;
        loop {
            let conn = self.conn(shard).await?;
            let (id, mut events) = conn.send_stream(|out, id| {
                let request = Request::Subscribe(SubscribeRequest {
                    log_id,
                    from_lsn,
                    credit_records: credit,
                });
                encode_request(out, id, &request);
            })?;
            let first = tokio::time::timeout(self.inner.config.request_timeout, events.recv())
                .await
                .map_err(|_| {
                    conn.forget(id);
                    conn.send_unanswered(&Request::Unsubscribe(chainlog_net::UnsubscribeRequest {
                        subscription_id: id,
                    }));
                    ClientError::Timeout {
                        opcode: Opcode::Subscribe,
                        after: self.inner.config.request_timeout,
                    }
                })?;
            match first {
                Some(conn::SubEvent::Started(start_lsn)) => {
                    return Ok(Subscription::new(conn, id, start_lsn, credit, events));
                }
                Some(conn::SubEvent::Failed(e)) => {
                    attempt += 1;
                    match self.retry_wait(&e, attempt, Retry::Safe).await {
                        Some(Some(next)) => shard = next,
                        Some(None) => {}
                        None => return Err(e),
                    }
                }
                Some(conn::SubEvent::Records { .. }) => {
                    return Err(ClientError::Protocol(
                        "a subscription pushed before its acknowledgement".into(),
                    ))
                }
                None => {
                    return Err(ClientError::ConnectionLost {
                        shard,
                        reason: "the subscription ended before it started".into(),
                    })
                }
            }
        }
    }

    fn check_name(&self, name: &str) -> Result<(), ClientError> {
        chainlog_net::check_name(name.as_bytes(), &self.inner.limits)
            .map(|_| ())
            .map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// The connection to `shard`, opened if there is none or the last one failed.
    async fn conn(&self, shard: u16) -> Result<Arc<Conn>, ClientError> {
        let slot = &self.inner.conns[usize::from(shard)];
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let _opening = slot.opening.lock().await;
        if let Some(conn) = slot.live() {
            return Ok(conn); // opened while this request waited
        }
        let conn = Arc::new(open_within(self.shard_addr(shard), shard, &self.inner.config).await?);
        if conn.hello().shard_count != self.inner.shard_count {
            return Err(ClientError::Protocol(format!(
                "shard {shard} says the node has {} shards, shard 0 said {}",
                conn.hello().shard_count,
                self.inner.shard_count
            )));
        }
        *slot.current.lock().expect("slot lock") = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Sends `request` to `shard` and waits for its answer, retrying retryable errors.
    async fn simple(&self, shard: u16, request: &Request<'_>) -> Result<Answer, ClientError> {
        self.call(shard, request.opcode(), Retry::Safe, |out, id, _| {
            encode_request(out, id, request);
            Ok(())
        })
        .await
    }

    /// Sends the request `encode` writes to `shard` and waits for its answer. Retryable server
    /// errors are retried (at most `retries_max` times); everything else is returned.
    async fn call(
        &self,
        mut shard: u16,
        opcode: Opcode,
        retry: Retry,
        encode: impl Fn(&mut Vec<u8>, u64, &Limits) -> Result<(), ClientError>,
    ) -> Result<Answer, ClientError> {
        let mut attempt = 0;
        loop {
            match self.attempt(shard, opcode, &encode).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    attempt += 1;
                    match self.retry_wait(&e, attempt, retry).await {
                        Some(Some(next)) => shard = next,
                        Some(None) => {}
                        None => return Err(e),
                    }
                }
            }
        }
    }

    /// One try of [`call`](Self::call): connect if needed, send, wait for the answer within
    /// the request timeout.
    async fn attempt(
        &self,
        shard: u16,
        opcode: Opcode,
        encode: &impl Fn(&mut Vec<u8>, u64, &Limits) -> Result<(), ClientError>,
    ) -> Result<Answer, ClientError> {
        let timeout = self.inner.config.request_timeout;
        let conn = self.conn(shard).await?;
        let limits = *conn.limits();
        let (id, answer, _permit) = conn.send(|out, id| encode(out, id, &limits)).await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::ConnectionLost {
                shard,
                reason: "the connection went away".into(),
            }),
            Err(_) => {
                conn.forget(id);
                Err(ClientError::Timeout {
                    opcode,
                    after: timeout,
                })
            }
        }
    }

    /// Whether to retry after `error` (the `attempt`-th failure): `None` no; `Some(shard)`
    /// yes, after waiting here, at `shard` if it is another one.
    async fn retry_wait(
        &self,
        error: &ClientError,
        attempt: u32,
        retry: Retry,
    ) -> Option<Option<u16>> {
        let config = &self.inner.config;
        if attempt > config.retries_max {
            return None;
        }
        let unknown_but_safe = retry == Retry::EvenIfUnknown
            && (error.outcome_unknown() || matches!(error, ClientError::Connect { .. }));
        if unknown_but_safe {
            // The node may be restarting: back off, then reconnect and resend the same key.
            let backoff = config.unavailable_backoff * (1 << (attempt - 1).min(4));
            tokio::time::sleep(backoff).await;
            return Some(None);
        }
        let server = error.server()?;
        match server.code {
            ErrorCode::Overloaded => {
                let ms = server.arg0.clamp(1, 1_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Some(None)
            }
            ErrorCode::WrongShard if server.arg0 < u64::from(self.inner.shard_count) => {
                Some(Some(server.arg0 as u16))
            }
            ErrorCode::Unavailable if attempt <= self.inner.config.unavailable_retries_max => {
                let backoff = self.inner.config.unavailable_backoff * (1 << (attempt - 1).min(4));
                tokio::time::sleep(backoff).await;
                Some(None)
            }
            _ => None,
        }
    }
}

/// Opens a connection to shard `shard` at `addr`, HELLO included, within the request timeout.
async fn open_within(
    addr: SocketAddr,
    shard: u16,
    config: &ClientConfig,
) -> Result<Conn, ClientError> {
    tokio::time::timeout(
        config.request_timeout,
        Conn::open(addr, shard, config.in_flight_max),
    )
    .await
    .map_err(|_| ClientError::Timeout {
        opcode: Opcode::Hello,
        after: config.request_timeout,
    })?
}

/// Which failures a request may be sent again after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Only those that prove it did not take effect (retryable server codes).
    Safe,
    /// Also those whose outcome is unknown (an APPEND with an idempotency key: sending it
    /// again cannot append it twice).
    EvenIfUnknown,
}

fn unexpected(opcode: Opcode, answer: Answer) -> ClientError {
    ClientError::Protocol(format!("{opcode} answered with {answer:?}"))
}
