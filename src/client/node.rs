//! One server's connections: a node (or the controller, a server of one shard) named by its
//! shard 0's address and its shard count, with one slot per shard holding that shard's
//! pipelined [`Conn`]. Slots open lazily, the first time a request needs the shard, and again
//! after the connection failed. A standalone client has one of these; a cluster client has
//! one for the controller and one per node of the map.

use std::net::SocketAddr;
use std::sync::Arc;

use chainlog_net::{HelloResponse, Limits, Opcode};
use tokio::sync::Mutex;

use super::conn::{Answer, Conn};
use super::{ClientConfig, ClientError};

/// A server's connections, one slot per shard.
#[derive(Debug)]
pub(crate) struct NodeConns {
    /// Shard 0's address; shard `i` listens on its port + `i`.
    base: SocketAddr,
    shard_count: u16,
    slots: Vec<Slot>,
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

impl NodeConns {
    /// The connections of a server of `shard_count` shards whose shard 0 is at `base`, none
    /// open yet. Refused if its shards' ports do not fit the port range.
    pub(crate) fn new(base: SocketAddr, shard_count: u16) -> Result<NodeConns, ClientError> {
        let shard_count = shard_count.max(1);
        if usize::from(base.port()) + usize::from(shard_count) > usize::from(u16::MAX) + 1 {
            return Err(ClientError::Protocol(format!(
                "{shard_count} shards from port {} do not fit the port range",
                base.port()
            )));
        }
        Ok(NodeConns {
            base,
            shard_count,
            slots: (0..shard_count).map(|_| Slot::default()).collect(),
        })
    }

    /// Connects to shard 0 at `addr` and returns the server's connections (as many shards as
    /// its HELLO says, shard 0's open) and its HELLO response.
    pub(crate) async fn connect(
        addr: SocketAddr,
        config: &ClientConfig,
    ) -> Result<(NodeConns, HelloResponse), ClientError> {
        let first = open_within(addr, 0, config).await?;
        let hello = *first.hello();
        let node = NodeConns::new(addr, hello.shard_count)?;
        *node.slots[0].current.lock().expect("slot lock") = Some(Arc::new(first));
        Ok((node, hello))
    }

    /// The server's shards.
    pub(crate) fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// The address of shard `shard`.
    pub(crate) fn shard_addr(&self, shard: u16) -> SocketAddr {
        let mut addr = self.base;
        addr.set_port(addr.port() + shard);
        addr
    }

    /// The shard that owns `log_id` here.
    pub(crate) fn shard_of(&self, log_id: u64) -> u16 {
        // The remainder is below the shard count, a u16.
        (log_id % u64::from(self.shard_count)) as u16
    }

    /// The connection to `shard`, opened if there is none or the last one failed.
    pub(crate) async fn conn(
        &self,
        shard: u16,
        config: &ClientConfig,
    ) -> Result<Arc<Conn>, ClientError> {
        let slot = self.slots.get(usize::from(shard)).ok_or_else(|| {
            ClientError::Invalid(format!(
                "shard {shard} of a server of {} shards",
                self.shard_count
            ))
        })?;
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        let _opening = slot.opening.lock().await;
        if let Some(conn) = slot.live() {
            return Ok(conn); // opened while this request waited
        }
        let conn = Arc::new(open_within(self.shard_addr(shard), shard, config).await?);
        if conn.hello().shard_count != self.shard_count {
            return Err(ClientError::Protocol(format!(
                "shard {shard} at {} says its node has {} shards, not {}",
                self.shard_addr(shard),
                conn.hello().shard_count,
                self.shard_count
            )));
        }
        *slot.current.lock().expect("slot lock") = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// One try of a request: connect to `shard` if needed, send what `encode` writes, wait for
    /// the answer within the request timeout.
    pub(crate) async fn attempt(
        &self,
        shard: u16,
        opcode: Opcode,
        config: &ClientConfig,
        encode: &impl Fn(&mut Vec<u8>, u64, &Limits) -> Result<(), ClientError>,
    ) -> Result<Answer, ClientError> {
        let timeout = config.request_timeout;
        let conn = self.conn(shard, config).await?;
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
