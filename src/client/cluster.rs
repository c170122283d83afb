//! A cluster client's view of the cluster: the controller's map and one [`NodeConns`] per node
//! of it, swapped as a whole when a newer map is fetched (connections to nodes whose address
//! and shard count did not change are kept). At most one fetch is in flight: a caller that
//! finds the map already newer than the one it failed with does not fetch again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chainlog_net::{ErrorCode, ARG_NONE};
use tokio::sync::Mutex as AsyncMutex;

use super::node::NodeConns;
use super::{ClientError, ReadFrom, ServerError};
use chainlog_net::cluster::{ClusterMap, MapNode};

/// Which replica of a log's chain a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replica {
    /// The head: appends, trims, CHECK_TAIL.
    Head,
    /// The one [`ReadFrom`] picks: reads, subscriptions, TAIL_HINT.
    Reader(ReadFrom),
    /// This node (it need not be in the chain: it answers for itself).
    Node(u64),
}

/// A map and the connections to its nodes.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) map: ClusterMap,
    /// Every node of the map; `Err` if its address does not resolve (why, for the error).
    nodes: BTreeMap<u64, Result<Arc<NodeConns>, String>>,
}

impl View {
    /// The connections to node `node_id`.
    fn node(&self, node_id: u64) -> Result<Arc<NodeConns>, ClientError> {
        match self.nodes.get(&node_id) {
            Some(Ok(node)) => Ok(Arc::clone(node)),
            Some(Err(why)) => Err(ClientError::Protocol(format!(
                "the cluster map's address of node {node_id} is unusable: {why}"
            ))),
            None => Err(ClientError::Protocol(format!(
                "node {node_id} is not in the cluster map (version {})",
                self.map.version()
            ))),
        }
    }
}

/// The cluster state of a client whose target is the controller.
#[derive(Debug)]
pub(crate) struct Cluster {
    view: Mutex<Arc<View>>,
    /// Held while a map is fetched: one fetch at a time.
    fetching: AsyncMutex<()>,
    /// Turns of [`ReadFrom::Any`].
    next_replica: AtomicUsize,
}

impl Cluster {
    /// A cluster client that has no map yet (version 0, nothing in it).
    pub(crate) fn new() -> Cluster {
        Cluster {
            view: Mutex::new(Arc::new(View {
                map: ClusterMap::new(0, Vec::new(), Vec::new()),
                nodes: BTreeMap::new(),
            })),
            fetching: AsyncMutex::new(()),
            next_replica: AtomicUsize::new(0),
        }
    }

    /// The current view.
    pub(crate) fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.lock().expect("view lock"))
    }

    /// Fetches the map with `fetch` and installs it, unless the map held is already newer
    /// than version `seen` (another caller fetched it meanwhile).
    pub(crate) async fn refresh(
        &self,
        seen: u64,
        fetch: impl Future<Output = Result<ClusterMap, ClientError>>,
    ) -> Result<(), ClientError> {
        let _fetching = self.fetching.lock().await;
        let old = self.view();
        if old.map.version() > seen {
            return Ok(());
        }
        let map = fetch.await?;
        let mut nodes = BTreeMap::new();
        for node in map.nodes() {
            let kept = old.nodes.get(&node.node_id).and_then(|conns| match conns {
                Ok(conns) if same_node(conns, node, &old.map) => Some(Arc::clone(conns)),
                _ => None,
            });
            let conns = match kept {
                Some(conns) => Ok(conns),
                None => resolve(&node.addr)
                    .await
                    .and_then(|addr| {
                        NodeConns::new(addr, node.shard_count).map_err(|e| e.to_string())
                    })
                    .map(Arc::new),
            };
            nodes.insert(node.node_id, conns);
        }
        tracing::debug!(version = map.version(), "cluster map installed");
        *self.view.lock().expect("view lock") = Arc::new(View { map, nodes });
        Ok(())
    }

    /// The node that serves `at` for log `log_id` in `view`, and its connections; `None` if
    /// the map does not hold the log.
    pub(crate) fn replica(
        &self,
        view: &View,
        log_id: u64,
        at: Replica,
    ) -> Result<Option<Arc<NodeConns>>, ClientError> {
        let node_id = match at {
            Replica::Node(node_id) => node_id,
            Replica::Head | Replica::Reader(_) => {
                let Some(log) = view.map.log(log_id) else {
                    return Ok(None);
                };
                let chain = &log.chain;
                let picked = match at {
                    Replica::Reader(ReadFrom::Tail) => chain.last(),
                    Replica::Reader(ReadFrom::Any) => {
                        let turn = self.next_replica.fetch_add(1, Ordering::Relaxed);
                        chain.get(turn % chain.len().max(1))
                    }
                    _ => chain.first(),
                };
                // The decoder refuses empty chains; a map made otherwise could have one.
                *picked.ok_or_else(|| {
                    ClientError::Protocol(format!("log {log_id} has an empty chain in the map"))
                })?
            }
        };
        view.node(node_id).map(Some)
    }
}

/// Whether `conns` still are `node`'s connections in `old` (same address, same shards).
fn same_node(conns: &NodeConns, node: &MapNode, old: &ClusterMap) -> bool {
    conns.shard_count() == node.shard_count
        && old
            .node(node.node_id)
            .is_some_and(|before| before.addr == node.addr)
}

/// `host:port` as a socket address (the first one it resolves to).
async fn resolve(addr: &str) -> Result<std::net::SocketAddr, String> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("{addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

/// What a cluster client answers for a log its map does not hold, after fetching the map
/// again: UNKNOWN_LOG, as a node would.
pub(crate) fn not_in_map(log_id: u64, version: u64) -> ClientError {
    ClientError::Server(ServerError {
        code: ErrorCode::UnknownLog,
        arg0: ARG_NONE,
        arg1: 0,
        message: format!("log {log_id} is not in the cluster map (version {version})"),
    })
}
