//! `chainlog::client`: the async (tokio) client library of the wire protocol (PROTOCOL.md).
//!
//! [`Client::connect`] does the HELLO with the target and learns what it is (its role):
//!
//! - **A node** (standalone): the client learns the node's shard count and opens one
//!   connection per shard, lazily, the first time a request needs that shard (shard i listens
//!   on the port of shard 0 + i). Every request about a log goes to the shard that owns it
//!   (`log_id % shard_count`).
//! - **The controller**: the client becomes a cluster client. It fetches the cluster map
//!   (GET_MAP, every page) and keeps, per node of the map, the same per-shard connections.
//!   Appends, trims and CHECK_TAIL go to the log's head (shard `log_id % that node's shard
//!   count`); reads, subscriptions and TAIL_HINT to the replica [`ClientConfig::read_from`]
//!   picks; log administration (create, describe, list, delete) to the controller. The map is
//!   fetched again, at most once per failure and one fetch at a time, when a node answers
//!   NOT_HEAD, WRONG_EPOCH or UNKNOWN_LOG (the map may be stale), when a node cannot be
//!   reached, and when a request names a log the map does not hold; the request is then sent
//!   again if the newer map routes it anew (and, after WRONG_EPOCH, only if the caller did
//!   not ask for another epoch than the map's). A log the controller's map does not hold is
//!   UNKNOWN_LOG, as a node would answer.
//!
//! A connection carries many requests at once (pipelining): a writer task and a reader task
//! per connection, each request's answer matched by request id. Appends on one connection
//! complete in the order they were sent, which is LSN order.
//!
//! Errors are typed ([`ClientError`]). Retryable server errors (OVERLOADED after the wait it
//! names, WRONG_SHARD at the shard it names, UNAVAILABLE after a pause) are retried up to
//! [`ClientConfig::retries_max`] times: an ERROR means the request did not take effect, so
//! resending is safe. A timeout or a lost connection is "outcome unknown" and is never
//! retried by the client, except an append with an idempotency key.

mod cluster;
mod conn;
mod error;
mod node;
mod subscription;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chainlog_net::{
    encode_request, AppendBuilder, AppendHeader, CreateLogRequest, DescribeLogRequest, ErrorCode,
    HelloResponse, Limits, ListLogsRequest, LogRef, Opcode, ReadRequest, Request, Role,
    SubscribeRequest, TailResponse, TrimRequest, RF_DEFAULT,
};

use chainlog_net::cluster::ClusterMap;
use chainlog_net::pages::{MapPages, MapPagesError};
pub use chainlog_net::{LogInfo, LogName, ServerError};
use cluster::{Cluster, Replica};
use conn::Answer;
pub use error::ClientError;
use node::NodeConns;
pub use subscription::Subscription;

/// The id of the log called `name` (FNV-1a 64, PROTOCOL.md section 3.2).
pub use chainlog_net::log_id_of as log_id;

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
    /// Retries of UNAVAILABLE, per call (a budget of their own, beside `retries_max`), about
    /// 1.5 s of pauses in all with the default backoff: long enough for a head that restarted
    /// to learn where its chain stands, while a node that is shutting down or whose storage
    /// stopped rarely recovers within a call.
    pub unavailable_retries_max: u32,
    /// Pause before the first retry of UNAVAILABLE, doubled on each retry up to 256 times
    /// itself. Short: the usual UNAVAILABLE is a head that installed a new epoch and settles
    /// with its successor within a millisecond or two, and every append that came meanwhile
    /// waits this long before it is sent again.
    pub unavailable_backoff: Duration,
    /// Pause before the first retry after a lost connection, a timeout or a failed connect
    /// (doubled on each retry, up to 16 times itself): the node may be restarting.
    pub reconnect_backoff: Duration,
    /// Pause before asking the controller again for the epoch that follows a sealed one
    /// (doubled on each try): the controller extends a sealed epoch within milliseconds, so
    /// this is short, unlike a node's recovery.
    pub sealed_backoff: Duration,
    /// Records a subscription may have pushed to it and not yet consumed.
    pub subscription_credit: u32,
    /// In a cluster, the replica that serves reads, subscriptions and TAIL_HINT.
    pub read_from: ReadFrom,
}

/// Which replica of a log's chain a cluster client reads from. Every replica serves records
/// up to the committed LSN it knows (CRAQ-style), so any of them may be read; a replica behind
/// the head answers with a lower tail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// The head, which knows the newest committed LSN.
    #[default]
    Head,
    /// The tail, which does not forward: reading there takes load off the head.
    Tail,
    /// Each request at the next replica of the chain in turn: reads spread over all.
    Any,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            request_timeout: Duration::from_secs(30),
            retries_max: 8,
            in_flight_max: Limits::DEFAULT.in_flight_max as usize,
            unavailable_retries_max: 10,
            unavailable_backoff: Duration::from_millis(2),
            reconnect_backoff: Duration::from_millis(50),
            sealed_backoff: Duration::from_millis(5),
            subscription_credit: 1024,
            read_from: ReadFrom::Head,
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

/// A client of a standalone node or of a cluster (through its controller). Cheap to clone
/// (clones share the connections and the map); usable from many tasks at once.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// What [`Client::connect`] reached: the node, or the controller.
    target: Arc<NodeConns>,
    /// The target's HELLO response.
    hello: HelloResponse,
    /// Set when the target is the controller.
    cluster: Option<Cluster>,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug)]
enum Dest {
    /// Shard `shard` of the target: the node's, or the controller's only one.
    Target(u16),
    /// Log `log_id`'s data: its shard on the node, or on the replica `at` of its chain.
    Log { log_id: u64, at: Replica },
}

/// Where one try of a request goes.
#[derive(Debug)]
struct Route {
    node: Arc<NodeConns>,
    shard: u16,
    /// The map version that chose the node (`None`: the target, no map involved).
    map_version: Option<u64>,
}

/// The failed tries of one request so far: the UNAVAILABLE ones (bounded by
/// `unavailable_retries_max`) and the others (bounded by `retries_max`), each a budget of
/// its own: a head that settles with its new chain after a reconfiguration answers
/// UNAVAILABLE right after the SEALEDs that led the request there, and its short pauses
/// must not use up the budget of the rest.
#[derive(Clone, Copy, Debug, Default)]
struct Failures {
    other: u32,
    unavailable: u32,
}

/// What to do after a failed try.
#[derive(Debug)]
enum Next {
    /// Send it again, to the same shard.
    Again,
    /// Send it again to this shard of the same node.
    Shard(u16),
    /// Route it again (by a newer map) and send it again.
    Reroute,
    /// Give the error to the caller.
    Stop,
}

impl Client {
    /// Connects to the node or controller at `addr` with the default configuration.
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects to `addr`: shard 0 of a standalone node, or the controller (the HELLO says
    /// which); a cluster client fetches the map before it returns.
    pub async fn connect_with(
        addr: SocketAddr,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let (target, hello) = NodeConns::connect(addr, &config).await?;
        let cluster = (hello.role == Role::Controller).then(Cluster::new);
        let client = Client {
            inner: Arc::new(Inner {
                config,
                target: Arc::new(target),
                hello,
                cluster,
            }),
        };
        if client.inner.cluster.is_some() {
            client.refresh(0).await?;
        }
        Ok(client)
    }

    /// The cluster map this client routes by (a cluster client), or `None` (a standalone
    /// node's client).
    pub fn map(&self) -> Option<ClusterMap> {
        let cluster = self.inner.cluster.as_ref()?;
        Some(cluster.view().map.clone())
    }

    /// The target's shards (a controller has one).
    pub fn shard_count(&self) -> u16 {
        self.inner.target.shard_count()
    }

    /// The target's limits (from its HELLO; a controller announces the defaults, and each
    /// node's own limits apply to the requests sent to it).
    pub fn limits(&self) -> Limits {
        self.inner.hello.limits()
    }

    /// The address of the target's shard `shard`.
    pub fn shard_addr(&self, shard: u16) -> SocketAddr {
        self.inner.target.shard_addr(shard)
    }

    /// The shard that owns `log_id`: on the node (standalone), or on the log's head as the
    /// map says (a cluster client; 0 for a log the map does not hold).
    pub fn shard_of(&self, log_id: u64) -> u16 {
        let Some(cluster) = &self.inner.cluster else {
            return self.inner.target.shard_of(log_id);
        };
        let view = cluster.view();
        match cluster.replica(&view, log_id, Replica::Head) {
            Ok(Some(head)) => head.shard_of(log_id),
            _ => 0,
        }
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
        let dest = Dest::Log {
            log_id,
            at: Replica::Head,
        };
        let answer = self
            .call(
                dest,
                Opcode::Append,
                retry,
                header.epoch,
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

    /// Reads committed records of `log_id` from `from_lsn`: at most `max_records`, and at
    /// most `max_bytes` of records as they travel (each record's 40-byte header, its payload
    /// and padding to 8 bytes: a buffer of `max_bytes` holds them), but at least one record if
    /// `from_lsn` is committed (PROTOCOL.md 6.3).
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
        let dest = Dest::Log {
            log_id,
            at: self.reader(),
        };
        match self.simple(dest, &request).await? {
            Answer::Read { tail, records } => Ok(ReadBatch { tail, records }),
            other => Err(unexpected(Opcode::Read, other)),
        }
    }

    /// The linearizable committed tail of `log_id`, with its trim point and epoch.
    pub async fn check_tail(&self, log_id: u64) -> Result<TailResponse, ClientError> {
        let dest = Dest::Log {
            log_id,
            at: Replica::Head,
        };
        match self.simple(dest, &Request::CheckTail { log_id }).await? {
            Answer::Tail(tail) => Ok(tail),
            other => Err(unexpected(Opcode::CheckTail, other)),
        }
    }

    /// The tail of `log_id` as a replica knows it (cheap, possibly stale): the node's
    /// (standalone), or the replica's [`ClientConfig::read_from`] picks.
    pub async fn tail_hint(&self, log_id: u64) -> Result<TailResponse, ClientError> {
        self.tail_hint_to(log_id, self.reader()).await
    }

    /// The tail of `log_id` as node `node_id` of the cluster knows it (TAIL_HINT to that
    /// node's shard of the log): how far a replica is. Only for a cluster client.
    pub async fn tail_hint_at(
        &self,
        node_id: u64,
        log_id: u64,
    ) -> Result<TailResponse, ClientError> {
        if self.inner.cluster.is_none() {
            return Err(ClientError::Invalid(
                "a node is named only in a cluster (this client's target is a node)".into(),
            ));
        }
        self.tail_hint_to(log_id, Replica::Node(node_id)).await
    }

    async fn tail_hint_to(&self, log_id: u64, at: Replica) -> Result<TailResponse, ClientError> {
        let dest = Dest::Log { log_id, at };
        match self.simple(dest, &Request::TailHint { log_id }).await? {
            Answer::Tail(tail) => Ok(tail),
            other => Err(unexpected(Opcode::TailHint, other)),
        }
    }

    /// Trims the records of `log_id` below `before_lsn`, durably.
    pub async fn trim(&self, log_id: u64, before_lsn: u64) -> Result<(), ClientError> {
        let request = Request::Trim(TrimRequest { log_id, before_lsn });
        let dest = Dest::Log {
            log_id,
            at: Replica::Head,
        };
        match self.simple(dest, &request).await? {
            Answer::Empty => Ok(()),
            other => Err(unexpected(Opcode::Trim, other)),
        }
    }

    /// Creates the log called `name` with the target's default replication factor (1 on a
    /// standalone node, the controller's `--default-rf` in a cluster); returns its id. As
    /// [`create_log_with`](Self::create_log_with).
    pub async fn create_log(&self, name: &str) -> Result<u64, ClientError> {
        self.create_log_with(name, RF_DEFAULT).await
    }

    /// Creates the log called `name` with `rf` replicas per chain ([`RF_DEFAULT`]: the
    /// target's default); returns its id. A cluster client asks the controller, which answers
    /// once every replica's node has the log (and then fetches the map, to route the log at
    /// once); a standalone node offers rf 1 only (TOO_LARGE). Creating a log that exists with
    /// the same replication factor succeeds with its id (a retry whose first answer was
    /// lost); with another one it is LOG_EXISTS (PROTOCOL.md 6.7).
    pub async fn create_log_with(&self, name: &str, rf: u8) -> Result<u64, ClientError> {
        self.check_name(name)?;
        let request = Request::CreateLog(CreateLogRequest {
            replication_factor: rf,
            name,
        });
        let dest = Dest::Target(self.inner.target.shard_of(log_id(name)));
        let log_id = match self.simple(dest, &request).await? {
            Answer::Created { log_id } => log_id,
            other => return Err(unexpected(Opcode::CreateLog, other)),
        };
        if let Some(cluster) = &self.inner.cluster {
            // Not needed for correctness (a log the map misses makes the client fetch it).
            if let Err(e) = self.refresh(cluster.view().map.version()).await {
                tracing::debug!(log_id, error = %e, "no map after a create");
            }
        }
        Ok(log_id)
    }

    /// A log's metadata and positions, by id or by name. A cluster client asks the
    /// controller, then the log's head for the tail and trim point (TAIL_HINT).
    pub async fn describe_log(&self, log: LogRef<'_>) -> Result<LogInfo, ClientError> {
        let shard = match log {
            LogRef::Id(id) => self.inner.target.shard_of(id),
            LogRef::Name(name) => {
                self.check_name(name)?;
                self.inner.target.shard_of(log_id(name))
            }
        };
        let request = Request::DescribeLog(DescribeLogRequest { by: log });
        let mut info = match self.simple(Dest::Target(shard), &request).await? {
            Answer::Described(info) => info,
            other => return Err(unexpected(Opcode::DescribeLog, other)),
        };
        if self.inner.cluster.is_some() {
            // The controller answers u64::MAX for both: the head knows them.
            let at_head = self.tail_hint_to(info.log_id, Replica::Head).await?;
            info.tail = at_head.tail;
            info.trim_point = at_head.trim_point;
        }
        Ok(info)
    }

    /// Every log, ascending by id: of the node (every shard is asked), or of the cluster
    /// (the controller's list).
    pub async fn list_logs(&self) -> Result<Vec<LogName>, ClientError> {
        let mut all = Vec::new();
        for shard in 0..self.inner.target.shard_count() {
            all.extend(self.list_logs_of_shard(shard).await?);
        }
        all.sort();
        Ok(all)
    }

    /// The logs of the target's shard `shard`, ascending by id (every page).
    pub async fn list_logs_of_shard(&self, shard: u16) -> Result<Vec<LogName>, ClientError> {
        let list_max = self.limits().list_max;
        let mut logs: Vec<LogName> = Vec::new();
        loop {
            let request = Request::ListLogs(ListLogsRequest {
                after_log_id: logs.last().map_or(0, |l| l.log_id),
                max: list_max,
            });
            match self.simple(Dest::Target(shard), &request).await? {
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
        let dest = Dest::Target(self.inner.target.shard_of(log_id));
        match self.simple(dest, &Request::DeleteLog { log_id }).await? {
            Answer::Empty => Ok(()),
            other => Err(unexpected(Opcode::DeleteLog, other)),
        }
    }

    /// Subscribes to log `log_id` from `from_lsn` ([`chainlog_net::LSN_FROM_TAIL`]: only
    /// records committed from now on). The [`Subscription`] is a `Stream` of records; it grants
    /// the server credit as records are consumed ([`ClientConfig::subscription_credit`]
    /// outstanding at most) and unsubscribes when dropped.
    pub async fn subscribe(&self, log_id: u64, from_lsn: u64) -> Result<Subscription, ClientError> {
        let config = &self.inner.config;
        let credit = config.subscription_credit.max(2);
        let request = Request::Subscribe(SubscribeRequest {
            log_id,
            from_lsn,
            credit_records: credit,
        });
        let request = &request;
        let start = move |node: Arc<NodeConns>, shard: u16| async move {
            let conn = node.conn(shard, config).await?;
            let (id, mut events) = conn.send_stream(|out, id| encode_request(out, id, request))?;
            let first = tokio::time::timeout(config.request_timeout, events.recv())
                .await
                .map_err(|_| {
                    conn.forget(id);
                    conn.send_unanswered(&Request::Unsubscribe(chainlog_net::UnsubscribeRequest {
                        subscription_id: id,
                    }));
                    ClientError::Timeout {
                        opcode: Opcode::Subscribe,
                        after: config.request_timeout,
                    }
                })?;
            match first {
                Some(conn::SubEvent::Started(start_lsn)) => {
                    Ok(Subscription::new(conn, id, start_lsn, credit, events))
                }
                Some(conn::SubEvent::Failed(e)) => Err(e),
                Some(conn::SubEvent::Records { .. }) => Err(ClientError::Protocol(
                    "a subscription pushed before its acknowledgement".into(),
                )),
                None => Err(ClientError::ConnectionLost {
                    shard,
                    reason: "the subscription ended before it started".into(),
                }),
            }
        };
        let dest = Dest::Log {
            log_id,
            at: self.reader(),
        };
        self.with_retries(dest, Retry::Safe, 0, start).await
    }

    fn check_name(&self, name: &str) -> Result<(), ClientError> {
        chainlog_net::check_name(name.as_bytes(), &self.limits())
            .map(|_| ())
            .map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// The replica reads go to.
    fn reader(&self) -> Replica {
        Replica::Reader(self.inner.config.read_from)
    }

    /// Sends `request` to `dest` and waits for its answer, retrying retryable errors.
    async fn simple(&self, dest: Dest, request: &Request<'_>) -> Result<Answer, ClientError> {
        self.call(dest, request.opcode(), Retry::Safe, 0, |out, id, _| {
            encode_request(out, id, request);
            Ok(())
        })
        .await
    }

    /// Sends the request `encode` writes to `dest` and waits for its answer; `epoch` is the
    /// epoch the request names (0: any). Retries as [`Client::with_retries`] says.
    async fn call(
        &self,
        dest: Dest,
        opcode: Opcode,
        retry: Retry,
        epoch: u64,
        encode: impl Fn(&mut Vec<u8>, u64, &Limits) -> Result<(), ClientError>,
    ) -> Result<Answer, ClientError> {
        let config = &self.inner.config;
        let encode = &encode;
        let attempt = move |node: Arc<NodeConns>, shard: u16| async move {
            node.attempt(shard, opcode, config, encode).await
        };
        self.with_retries(dest, retry, epoch, attempt).await
    }

    /// Runs `attempt` at the shard and node `dest` routes to until it succeeds, or fails
    /// with an error not to retry, or has failed `retries_max` + 1 times. `epoch` is the epoch
    /// the request names (0: any).
    async fn with_retries<T, F>(
        &self,
        dest: Dest,
        retry: Retry,
        epoch: u64,
        attempt: impl Fn(Arc<NodeConns>, u16) -> F,
    ) -> Result<T, ClientError>
    where
        F: Future<Output = Result<T, ClientError>>,
    {
        let mut route = self.route(dest).await?;
        let mut failures = Failures::default();
        loop {
            let error = match attempt(Arc::clone(&route.node), route.shard).await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            if error.code() == Some(ErrorCode::Unavailable) {
                failures.unavailable += 1;
            } else {
                failures.other += 1;
            }
            match self
                .after_failure(&error, failures, retry, dest, &route, epoch)
                .await
            {
                Next::Again => {}
                Next::Shard(shard) => route.shard = shard,
                Next::Reroute => route = self.route(dest).await?,
                Next::Stop => return Err(error),
            }
        }
    }

    /// Where `dest` goes now. A cluster client fetches the map once if it does not hold the
    /// log (it may be newer than the map), then answers UNKNOWN_LOG if it still does not.
    async fn route(&self, dest: Dest) -> Result<Route, ClientError> {
        let (log_id, at, cluster) = match (dest, &self.inner.cluster) {
            (Dest::Target(shard), _) => return Ok(self.to_target(shard)),
            (Dest::Log { log_id, .. }, None) => {
                return Ok(self.to_target(self.inner.target.shard_of(log_id)))
            }
            (Dest::Log { log_id, at }, Some(cluster)) => (log_id, at, cluster),
        };
        let mut view = cluster.view();
        let mut replica = cluster.replica(&view, log_id, at)?;
        if replica.is_none() {
            self.refresh(view.map.version()).await?;
            view = cluster.view();
            replica = cluster.replica(&view, log_id, at)?;
        }
        let node = replica.ok_or_else(|| cluster::not_in_map(log_id, view.map.version()))?;
        Ok(Route {
            shard: node.shard_of(log_id),
            node,
            map_version: Some(view.map.version()),
        })
    }

    fn to_target(&self, shard: u16) -> Route {
        Route {
            node: Arc::clone(&self.inner.target),
            shard,
            map_version: None,
        }
    }

    /// What to do after `error`, the last of the `failures` of a request to `dest` sent by
    /// `route`; waits here when a retry must wait. `epoch` is the epoch the request names.
    async fn after_failure(
        &self,
        error: &ClientError,
        failures: Failures,
        retry: Retry,
        dest: Dest,
        route: &Route,
        epoch: u64,
    ) -> Next {
        let config = &self.inner.config;
        let Failures {
            other: failures,
            unavailable,
        } = failures;
        if failures > config.retries_max || unavailable > config.unavailable_retries_max {
            // Not retried here, but the next call must not go where this one failed: a
            // stale route (a new head, a new epoch) is refreshed all the same.
            if let (Some(seen), Some(_)) = (route.map_version, &self.inner.cluster) {
                if error.outcome_unknown()
                    || matches!(error, ClientError::Connect { .. })
                    || matches!(
                        error.code(),
                        Some(
                            ErrorCode::NotHead
                                | ErrorCode::WrongEpoch
                                | ErrorCode::UnknownLog
                                | ErrorCode::Sealed
                        )
                    )
                {
                    self.refresh_quietly(seen).await;
                }
            }
            return Next::Stop;
        }
        let backoff = config.reconnect_backoff * (1 << failures.saturating_sub(1).min(4));
        if retry == Retry::EvenIfUnknown
            && (error.outcome_unknown() || matches!(error, ClientError::Connect { .. }))
        {
            // The node may be restarting, or no longer the head: back off, then reconnect
            // and resend the same key (by a newer map in a cluster).
            tokio::time::sleep(backoff).await;
            return match route.map_version {
                Some(seen) => {
                    self.refresh_quietly(seen).await;
                    Next::Reroute
                }
                None => Next::Again,
            };
        }
        if let Some(server) = error.server() {
            match server.code {
                ErrorCode::Overloaded => {
                    let ms = server.arg0.clamp(1, 1_000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    return Next::Again;
                }
                ErrorCode::WrongShard if server.arg0 < u64::from(route.node.shard_count()) => {
                    return Next::Shard(server.arg0 as u16);
                }
                ErrorCode::Unavailable => {
                    let backoff = config.unavailable_backoff * (1 << (unavailable - 1).min(8));
                    tokio::time::sleep(backoff).await;
                    return Next::Again;
                }
                _ => {}
            }
        }
        // In a cluster, a node's answer or its silence may mean that the map is stale.
        let (Some(seen), Some(cluster), Dest::Log { log_id, .. }) =
            (route.map_version, &self.inner.cluster, dest)
        else {
            return Next::Stop;
        };
        let stale_map = match error {
            ClientError::Server(e) => matches!(
                e.code,
                ErrorCode::NotHead
                    | ErrorCode::WrongEpoch
                    | ErrorCode::UnknownLog
                    | ErrorCode::Sealed
            ),
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::Protocol(_) | ClientError::Invalid(_) | ClientError::MapUnsettled => false,
        };
        if !stale_map {
            return Next::Stop;
        }
        self.refresh_quietly(seen).await;
        let view = cluster.view();
        let not_sent = matches!(error, ClientError::Connect { .. });
        let waits = matches!(error.code(), Some(ErrorCode::Sealed | ErrorCode::NotHead));
        if (waits || not_sent) && view.map.version() <= seen {
            // The epoch is sealed, or its head cannot be reached, and the controller has not
            // published the next one yet (it detects a dead member, seals, then extends), or
            // the map is newer than the node's (the head it names has not installed it yet,
            // and answers NOT_HEAD): wait for either rather than give up. The request did not
            // take effect (an ERROR never does, and nothing was sent to a node that could not
            // be reached).
            tokio::time::sleep(config.sealed_backoff * (1 << (failures - 1).min(4))).await;
            return Next::Reroute;
        }
        if view.map.version() <= seen || error.outcome_unknown() {
            // Nothing new to route by, or the request may have taken effect: the newer map
            // serves the next call.
            return Next::Stop;
        }
        if error.code() == Some(ErrorCode::WrongEpoch) {
            let current = view.map.log(log_id).map(|log| log.epoch);
            if epoch != 0 && current != Some(epoch) {
                return Next::Stop; // the caller asked for an epoch that is not current
            }
        }
        Next::Reroute
    }

    /// Fetches the map (a cluster client) unless it is already newer than version `seen`;
    /// one fetch at a time. Boxed: fetching sends requests, whose failures may fetch again.
    fn refresh(
        &self,
        seen: u64,
    ) -> Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + '_>> {
        Box::pin(async move {
            let Some(cluster) = &self.inner.cluster else {
                return Ok(());
            };
            cluster.refresh(seen, self.fetch_map()).await
        })
    }

    /// [`Client::refresh`] after a failed request: a map that cannot be fetched leaves the
    /// request's own error to report.
    async fn refresh_quietly(&self, seen: u64) {
        if let Err(e) = self.refresh(seen).await {
            tracing::debug!(error = %e, "the cluster map could not be fetched");
        }
    }

    /// The whole map, GET_MAP page by page from the controller.
    async fn fetch_map(&self) -> Result<ClusterMap, ClientError> {
        let mut pages = MapPages::new(self.limits().list_max);
        loop {
            let request = Request::GetMap(pages.request());
            let page = match self.simple(Dest::Target(0), &request).await? {
                Answer::MapPage(page) => page,
                other => return Err(unexpected(Opcode::GetMap, other)),
            };
            match pages.add(page) {
                Ok(Some(map)) => return Ok(map),
                Ok(None) => {}
                Err(MapPagesError::Unstable { .. }) => return Err(ClientError::MapUnsettled),
                Err(e @ MapPagesError::OutOfOrder { .. }) => {
                    return Err(ClientError::Protocol(e.to_string()))
                }
            }
        }
    }
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
