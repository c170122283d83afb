//! A small blocking client of the controller, for a node's control thread and for tools: one
//! `std::net::TcpStream` with read and write timeouts, one request at a time.
//!
//! Errors are typed ([`ClientError`]). An ERROR answer ([`ClientError::Server`]) means the
//! request did not take effect and the connection stays usable (unless the code closes it).
//! Anything else (a timeout, a lost connection, a broken answer) leaves the outcome unknown
//! and the connection unusable: it is shut down, every later call fails, and the caller
//! connects again.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use chainlog_net::{
    decode_response, encode_request, parse_frame, Chain, CreateLogRequest, DescribeLogRequest,
    DrainNodeRequest, HeartbeatRequest, HelloRequest, Limits, ListLogsRequest, LogRef, Opcode,
    ReconfigureLogRequest, RegisterNodeRequest, Request, Response, Role, EPOCH_CURRENT,
};

use chainlog_net::cluster::ClusterMap;
use chainlog_net::pages::{MapPage, MapPages, MapPagesError, MAP_RESTARTS_MAX};
use chainlog_net::{LogInfo, LogName, ServerError};

/// Bytes read from the socket at once.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a call to the controller did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (nothing was sent).
    #[error("connecting to the controller at {addr}: {source}")]
    Connect {
        /// The controller's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The controller answered with an ERROR: the request did not take effect.
    #[error("{0}")]
    Server(ServerError),
    /// No answer within the timeout: the outcome is unknown; the connection is closed.
    #[error("no answer to {opcode} within {after:?}: the outcome is unknown")]
    Timeout {
        /// The request.
        opcode: Opcode,
        /// The timeout.
        after: Duration,
    },
    /// The connection failed or was closed before the answer came: the outcome is unknown.
    #[error("connection to the controller lost during {opcode}: {reason}")]
    ConnectionLost {
        /// The request.
        opcode: Opcode,
        /// What happened.
        reason: String,
    },
    /// The peer broke the protocol, or is not a controller; the connection is closed.
    #[error("protocol violation by the controller: {0}")]
    Protocol(String),
    /// The request was refused before it was sent (e.g. a name the protocol cannot carry).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The map changed between the pages of every one of [`MAP_RESTARTS_MAX`] reads.
    #[error("the cluster map changed during each of {MAP_RESTARTS_MAX} reads; try again")]
    MapUnsettled,
}

/// The epoch a RECONFIGURE_LOG started, as the controller answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextEpoch {
    /// The epoch number.
    pub epoch: u64,
    /// Its chain's node ids, head first.
    pub chain: Vec<u64>,
    /// Its first LSN.
    pub start_lsn: u64,
}

/// A connection to the controller, past the handshake.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    /// Received bytes not yet consumed as frames.
    input: Vec<u8>,
    /// The frame being sent.
    output: Vec<u8>,
    limits: Limits,
    timeout: Duration,
    next_id: u64,
    /// Set once the connection is unusable (module documentation).
    broken: Option<String>,
}

impl Client {
    /// Connects to the controller at `addr` and does the HELLO; `timeout` bounds connecting
    /// and every wait for the controller's bytes (CREATE_LOG waits up to the controller's
    /// create timeout, 5 s by default: give more).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect { addr, source };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(connect_error)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(connect_error)?;
        let mut client = Client {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            limits: Limits::DEFAULT,
            timeout,
            next_id: 1,
            broken: None,
        };
        let hello = client.call(&Request::Hello(HelloRequest::CURRENT), |r| match r {
            Response::Hello(hello) => Some(hello),
            _ => None,
        })?;
        if hello.role != Role::Controller {
            return Err(client.broken(format!(
                "{addr} is a node (node id {}), not the controller",
                hello.node_id
            )));
        }
        client.limits = hello.limits();
        Ok(client)
    }

    /// Registers node `node_id` whose shard 0 listens at `shard0_addr` (`host:port`) with
    /// `shard_count` shards, in `zone` and `rack` (empty: none); returns the map version.
    /// Registering again (after a restart) replaces the address, shard count and labels.
    pub fn register(
        &mut self,
        node_id: u64,
        shard0_addr: &str,
        shard_count: u16,
        zone: &str,
        rack: &str,
    ) -> Result<u64, ClientError> {
        if node_id == 0 || shard_count == 0 {
            return Err(ClientError::Invalid(format!(
                "node id {node_id} and shard count {shard_count} must be nonzero"
            )));
        }
        if shard0_addr.is_empty() || shard0_addr.len() > usize::from(chainlog_net::ADDR_BYTES_MAX) {
            return Err(ClientError::Invalid(format!(
                "an address of {} bytes (1..={})",
                shard0_addr.len(),
                chainlog_net::ADDR_BYTES_MAX
            )));
        }
        if let Some(label) = [zone, rack]
            .into_iter()
            .find(|label| label.len() > usize::from(chainlog_net::LABEL_BYTES_MAX))
        {
            return Err(ClientError::Invalid(format!(
                "a zone or rack label of {} bytes (0..={})",
                label.len(),
                chainlog_net::LABEL_BYTES_MAX
            )));
        }
        let request = Request::RegisterNode(RegisterNodeRequest {
            node_id,
            shard_count,
            addr: shard0_addr,
            zone,
            rack,
        });
        self.call(&request, |r| match r {
            Response::RegisterNode(version) => Some(version.map_version),
            _ => None,
        })
    }

    /// Says node `node_id` is alive and has applied map version `applied_version` on every
    /// shard, and names `suspect` (0: none), a node whose replication connection with it
    /// failed; returns the controller's map version (fetch the map if it is newer). A node
    /// that never registered gets UNKNOWN_NODE ([`ClientError::Server`]).
    pub fn heartbeat(
        &mut self,
        node_id: u64,
        applied_version: u64,
        suspect: u64,
    ) -> Result<u64, ClientError> {
        if node_id == 0 {
            return Err(ClientError::Invalid("node id 0 is not a node".into()));
        }
        let request = Request::Heartbeat(HeartbeatRequest {
            node_id,
            applied_version,
            suspect,
        });
        self.call(&request, |r| match r {
            Response::Heartbeat(version) => Some(version.map_version),
            _ => None,
        })
    }

    /// The whole cluster map: GET_MAP page after page; if the version changes between
    /// pages, it starts again (at most [`MAP_RESTARTS_MAX`] times).
    pub fn map(&mut self) -> Result<ClusterMap, ClientError> {
        let mut pages = MapPages::new(self.limits.list_max);
        loop {
            let page = self.call(&Request::GetMap(pages.request()), |r| match r {
                Response::GetMap(page) => Some(MapPage::from(&page)),
                _ => None,
            })?;
            match pages.add(page) {
                Ok(Some(map)) => return Ok(map),
                Ok(None) => {}
                Err(MapPagesError::Unstable { .. }) => return Err(ClientError::MapUnsettled),
                Err(e @ MapPagesError::OutOfOrder { .. }) => return Err(self.broken(e.to_string())),
            }
        }
    }

    /// Creates the log `name` with `rf` replicas (`chainlog_net::RF_DEFAULT`: the
    /// controller's default); returns its id once every replica's node has applied the map
    /// that holds it. Creating a log that exists with the same replication factor succeeds
    /// (so a create that timed out can be retried).
    pub fn create_log(&mut self, name: &str, rf: u8) -> Result<u64, ClientError> {
        self.check_name(name)?;
        let request = Request::CreateLog(CreateLogRequest {
            replication_factor: rf,
            name,
        });
        self.call(&request, |r| match r {
            Response::CreateLog(created) => Some(created.log_id),
            _ => None,
        })
    }

    /// Deletes log `log_id`.
    pub fn delete_log(&mut self, log_id: u64) -> Result<(), ClientError> {
        self.call(&Request::DeleteLog { log_id }, |r| {
            matches!(r, Response::DeleteLog).then_some(())
        })
    }

    /// The log called `name`, from the map: its id, epoch, replication factor and the shard
    /// that owns it on its head; `tail` and `trim_point` are `u64::MAX` (ask the head).
    pub fn describe_log(&mut self, name: &str) -> Result<LogInfo, ClientError> {
        self.check_name(name)?;
        let request = Request::DescribeLog(DescribeLogRequest {
            by: LogRef::Name(name),
        });
        self.call(&request, |r| match r {
            Response::DescribeLog(described) => Some(LogInfo::from(&described)),
            _ => None,
        })
    }

    /// Every log, ascending by id (LIST_LOGS, every page).
    pub fn list_logs(&mut self) -> Result<Vec<LogName>, ClientError> {
        let mut logs: Vec<LogName> = Vec::new();
        loop {
            let after = logs.last().map_or(0, |log| log.log_id);
            let request = Request::ListLogs(ListLogsRequest {
                after_log_id: after,
                max: self.limits.list_max,
            });
            let page = self.call(&request, |r| match r {
                Response::ListLogs(list) => {
                    Some(list.entries.iter().map(LogName::from).collect::<Vec<_>>())
                }
                _ => None,
            })?;
            match page.first() {
                None => return Ok(logs),
                Some(first) if first.log_id <= after => {
                    return Err(self.broken(format!(
                        "a LIST_LOGS page after log {after} starts at log {}",
                        first.log_id
                    )));
                }
                Some(_) => logs.extend(page),
            }
        }
    }

    /// Seals `log_id`'s epoch `epoch` (`None`: whichever is current) and starts the next one
    /// with `chain` (empty: the controller's choice), as the controller does after a failure;
    /// returns the new epoch once it has started. The controller waits for it up to its
    /// create timeout (5 s by default): give more. Errors (the server's): UNKNOWN_LOG,
    /// WRONG_EPOCH, UNKNOWN_NODE, TOO_LARGE, CONDITION_FAILED (the chain cannot follow the
    /// current one; after the seal, the controller's chain followed), UNAVAILABLE (not done in
    /// time: the request stands).
    pub fn reconfigure_log(
        &mut self,
        log_id: u64,
        epoch: Option<u64>,
        chain: &[u64],
    ) -> Result<NextEpoch, ClientError> {
        if chain.len() > usize::from(u8::MAX) || chain.contains(&0) {
            return Err(ClientError::Invalid(format!(
                "a chain of 0 to 255 nonzero node ids, not {chain:?}"
            )));
        }
        let request = Request::ReconfigureLog(ReconfigureLogRequest {
            log_id,
            epoch: epoch.unwrap_or(EPOCH_CURRENT),
            chain: Chain::from_slice(chain),
        });
        self.call(&request, |r| match r {
            Response::ReconfigureLog(next) if next.log_id == log_id => Some(NextEpoch {
                epoch: next.epoch,
                chain: next.chain.iter().collect(),
                start_lsn: next.start_lsn,
            }),
            _ => None,
        })
    }

    /// Drains node `node_id` (`drained` true: it gets no new chain and the controller moves
    /// the chains that hold it off it) or undoes that; returns the map version that says so.
    pub fn drain_node(&mut self, node_id: u64, drained: bool) -> Result<u64, ClientError> {
        if node_id == 0 {
            return Err(ClientError::Invalid("node id 0 is not a node".into()));
        }
        let request = Request::DrainNode(DrainNodeRequest { node_id, drained });
        self.call(&request, |r| match r {
            Response::DrainNode(version) => Some(version.map_version),
            _ => None,
        })
    }

    /// Refuses a name the protocol cannot carry before anything is sent.
    fn check_name(&self, name: &str) -> Result<(), ClientError> {
        chainlog_net::check_name(name.as_bytes(), &self.limits)
            .map(drop)
            .map_err(|e| ClientError::Invalid(e.to_string()))
    }

    /// Marks the connection unusable (shutting it down) and returns the protocol error.
    fn broken(&mut self, reason: String) -> ClientError {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.broken = Some(reason.clone());
        ClientError::Protocol(reason)
    }

    /// Sends `request` and waits for its answer, which `accept` turns into the result
    /// (`None`: not an answer to this request, a protocol violation).
    fn call<R>(
        &mut self,
        request: &Request<'_>,
        accept: impl FnOnce(Response<'_>) -> Option<R>,
    ) -> Result<R, ClientError> {
        let opcode = request.opcode();
        if let Some(reason) = &self.broken {
            return Err(ClientError::ConnectionLost {
                opcode,
                reason: format!("unusable since: {reason}"),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.output.clear();
        encode_request(&mut self.output, id, request);
        let result = match self.stream.write_all(&self.output) {
            Ok(()) => self.receive(id, opcode, accept),
            Err(e) => Err(self.io_error(opcode, e)),
        };
        match &result {
            Err(ClientError::Server(e)) if !e.code.closes_connection() => {}
            Err(e) => {
                let reason = e.to_string();
                let _ = self.stream.shutdown(Shutdown::Both);
                self.broken.get_or_insert(reason);
            }
            Ok(_) => {}
        }
        result
    }

    /// Reads until the answer to request `id` is whole.
    fn receive<R>(
        &mut self,
        id: u64,
        opcode: Opcode,
        accept: impl FnOnce(Response<'_>) -> Option<R>,
    ) -> Result<R, ClientError> {
        let protocol = |what: String| ClientError::Protocol(what);
        loop {
            let parsed =
                parse_frame(&self.input, &self.limits).map_err(|e| protocol(e.to_string()))?;
            if let Some(frame) = parsed {
                let len = frame.frame_bytes();
                if frame.request_id != id {
                    return Err(protocol(format!(
                        "an answer to request {} while request {id} ({opcode}) waits",
                        frame.request_id
                    )));
                }
                let result = match decode_response(&frame, &self.limits) {
                    Err(e) => Err(protocol(e.to_string())),
                    Ok(Response::Error(e)) => Err(ClientError::Server(ServerError::from(&e))),
                    Ok(response) => {
                        let answered = response.opcode().map_or("?", Opcode::name);
                        accept(response).ok_or_else(|| {
                            protocol(format!("{opcode} answered with a {answered} response"))
                        })
                    }
                };
                self.input.drain(..len);
                return result;
            }
            let start = self.input.len();
            self.input.resize(start + READ_CHUNK_BYTES, 0);
            let read = self.stream.read(&mut self.input[start..]);
            self.input.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => {
                    return Err(ClientError::ConnectionLost {
                        opcode,
                        reason: "the controller closed the connection".into(),
                    })
                }
                Ok(_) => {}
                Err(e) => return Err(self.io_error(opcode, e)),
            }
        }
    }

    fn io_error(&self, opcode: Opcode, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                opcode,
                after: self.timeout,
            },
            _ => ClientError::ConnectionLost {
                opcode,
                reason: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainlog_net::{
        decode_request, encode_response, Chain, GetMapResponse, HelloResponse, MapLogs, MapNodes,
    };
    use std::net::TcpListener;

    /// A fake controller that answers HELLO, then each GET_MAP with the next of `pages`
    /// (version, log ids), every page with one node.
    fn scripted(pages: Vec<(u64, Vec<u64>)>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let limits = Limits::DEFAULT;
            let mut pages = pages.into_iter();
            let mut input = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Some(frame) = parse_frame(&input, &limits).expect("frame") else {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => input.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let len = frame.frame_bytes();
                let mut out = Vec::new();
                let opcode = Opcode::from_u16(frame.opcode).expect("opcode");
                let (nodes, logs);
                let chain = [1];
                let response = match decode_request(&frame, &limits).expect("request") {
                    Request::Hello(_) => Response::Hello(HelloResponse {
                        version: 1,
                        shard_index: 0,
                        shard_count: 1,
                        frame_bytes_max: limits.frame_bytes_max,
                        record_bytes_max: limits.record_bytes_max,
                        batch_records_max: limits.batch_records_max,
                        node_id: 0,
                        role: Role::Controller,
                    }),
                    Request::GetMap(_) => {
                        let (version, ids) = pages.next().expect("a scripted page");
                        let node = chainlog_net::MapNode {
                            node_id: 1,
                            shard_count: 1,
                            alive: true,
                            drained: false,
                            last_heartbeat_ms: 0,
                            addr: "127.0.0.1:1",
                            zone: "",
                            rack: "",
                        };
                        logs = ids
                            .iter()
                            .map(|&log_id| chainlog_net::MapLog {
                                log_id,
                                epoch: 1,
                                start_lsn: 0,
                                trim_lsn: 0,
                                replication_factor: 1,
                                created_version: 1,
                                chain: Chain::from_slice(&chain),
                                learners: Chain::from_slice(&[]),
                                name: "log",
                            })
                            .collect::<Vec<_>>();
                        nodes = [node];
                        Response::GetMap(GetMapResponse {
                            version,
                            nodes: MapNodes::from_slice(&nodes),
                            logs: MapLogs::from_slice(&logs),
                        })
                    }
                    other => panic!("unexpected {other:?}"),
                };
                encode_response(&mut out, frame.request_id, opcode, &response);
                input.drain(..len);
                stream.write_all(&out).expect("send");
            }
        });
        addr
    }

    #[test]
    fn map_reads_every_page_and_starts_again_when_the_version_changes() {
        let addr = scripted(vec![
            (1, vec![10]),
            (2, vec![20]),
            (2, vec![10]),
            (2, vec![20]),
            (2, vec![]),
        ]);
        let mut client = Client::connect(addr, Duration::from_secs(30)).expect("connect");
        let map = client.map().expect("map");
        assert_eq!(map.version(), 2);
        let ids: Vec<u64> = map.logs().iter().map(|log| log.log_id).collect();
        assert_eq!(ids, [10, 20]);
        assert_eq!(map.nodes().len(), 1);
        assert_eq!(map.log(20).expect("log").chain, [1]);
    }

    #[test]
    fn a_page_that_goes_backwards_breaks_the_connection() {
        let addr = scripted(vec![(1, vec![10]), (1, vec![5])]);
        let mut client = Client::connect(addr, Duration::from_secs(30)).expect("connect");
        assert!(matches!(client.map(), Err(ClientError::Protocol(_))));
        assert!(matches!(
            client.heartbeat(1, 0, 0),
            Err(ClientError::ConnectionLost { .. })
        ));
    }
}
