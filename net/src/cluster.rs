//! The cluster map as nodes and clients keep it, owned and immutable: [`ClusterMap`] of
//! [`MapNode`]s and [`MapLog`]s, their conversions from and to the views a GET_MAP page
//! carries ([`crate::map`]), and [`log_id_of`], which every party uses to find a log's id
//! (and so its shard) from its name without asking anyone.
//!
//! These live here, under the client, the controller and the node alike, because all three
//! use them: the controller builds the map, nodes install it, clients route by it.

use std::sync::Arc;

use crate::map;

/// The id of the log called `name`: FNV-1a 64 of its UTF-8 bytes (PROTOCOL.md section 3.2).
pub fn log_id_of(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A node as the cluster map shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapNode {
    /// Its id.
    pub node_id: u64,
    /// `host:port` of its shard 0; shard `i` listens on port + `i`.
    pub addr: String,
    /// Its shards.
    pub shard_count: u16,
    /// It heartbeated within the controller's liveness timeout when the map was served.
    pub alive: bool,
    /// An operator drained it: it gets no new chain (`chainlog node drain`).
    pub drained: bool,
    /// Milliseconds since its last heartbeat when the map was served, or `u64::MAX`
    /// ([`HEARTBEAT_MS_NEVER`](crate::HEARTBEAT_MS_NEVER)) if none since the controller started.
    pub last_heartbeat_ms: u64,
    /// Its failure zone, as it registered (empty: none); placement spreads a chain over zones.
    pub zone: String,
    /// Its rack within the zone, as it registered (empty: none).
    pub rack: String,
}

impl MapNode {
    /// As a GET_MAP page carries it.
    pub fn wire(&self) -> map::MapNode<'_> {
        map::MapNode {
            node_id: self.node_id,
            shard_count: self.shard_count,
            alive: self.alive,
            drained: self.drained,
            last_heartbeat_ms: self.last_heartbeat_ms,
            addr: &self.addr,
            zone: &self.zone,
            rack: &self.rack,
        }
    }
}

impl From<map::MapNode<'_>> for MapNode {
    fn from(node: map::MapNode<'_>) -> MapNode {
        MapNode {
            node_id: node.node_id,
            addr: node.addr.to_string(),
            shard_count: node.shard_count,
            alive: node.alive,
            drained: node.drained,
            last_heartbeat_ms: node.last_heartbeat_ms,
            zone: node.zone.to_string(),
            rack: node.rack.to_string(),
        }
    }
}

/// A log as the cluster map shows it: its current epoch and chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLog {
    /// Its id.
    pub log_id: u64,
    /// Its name.
    pub name: String,
    /// Replicas per chain.
    pub replication_factor: u8,
    /// The current epoch.
    pub epoch: u64,
    /// The first LSN of the current epoch.
    pub start_lsn: u64,
    /// The log's trim point when the current epoch began: every replica of the epoch has
    /// trimmed at least to it (PROTOCOL.md 6.12).
    pub trim_lsn: u64,
    /// The current chain's node ids, head first (never empty, at most the replication
    /// factor).
    pub chain: Vec<u64>,
    /// Nodes copying the log's committed records from the chain's tail before they join the
    /// chain (ARCHITECTURE.md, "Reconfiguration"): they serve nothing of it yet.
    pub learners: Vec<u64>,
    /// The map version that created the log.
    pub created_version: u64,
}

impl MapLog {
    /// The head's node id: where appends go. (A map's chains are never empty: the decoder
    /// and the controller's state both refuse empty ones.)
    pub fn head(&self) -> u64 {
        self.chain[0]
    }

    /// The node after `node_id` in the chain (`None` for the tail, or a node not in it).
    pub fn successor(&self, node_id: u64) -> Option<u64> {
        let position = self.chain.iter().position(|&n| n == node_id)?;
        self.chain.get(position + 1).copied()
    }

    /// The node before `node_id` in the chain (`None` for the head, or a node not in it).
    pub fn predecessor(&self, node_id: u64) -> Option<u64> {
        let position = self.chain.iter().position(|&n| n == node_id)?;
        position.checked_sub(1).map(|p| self.chain[p])
    }

    /// As a GET_MAP page carries it.
    pub fn wire(&self) -> map::MapLog<'_> {
        map::MapLog {
            log_id: self.log_id,
            epoch: self.epoch,
            start_lsn: self.start_lsn,
            trim_lsn: self.trim_lsn,
            replication_factor: self.replication_factor,
            created_version: self.created_version,
            chain: map::Chain::from_slice(&self.chain),
            learners: map::Chain::from_slice(&self.learners),
            name: &self.name,
        }
    }
}

impl From<map::MapLog<'_>> for MapLog {
    fn from(log: map::MapLog<'_>) -> MapLog {
        MapLog {
            log_id: log.log_id,
            name: log.name.to_string(),
            replication_factor: log.replication_factor,
            epoch: log.epoch,
            start_lsn: log.start_lsn,
            trim_lsn: log.trim_lsn,
            chain: log.chain.iter().collect(),
            learners: log.learners.iter().collect(),
            created_version: log.created_version,
        }
    }
}

/// The cluster map: a version, every node and every log's current epoch and chain, as nodes
/// and clients learn it (GET_MAP, PROTOCOL.md). Immutable and cheap to clone (the nodes and
/// logs are shared); a newer version is a new map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMap {
    version: u64,
    nodes: Arc<[MapNode]>,
    logs: Arc<[MapLog]>,
}

impl ClusterMap {
    /// The map of `version` with these nodes and logs (in any order; kept ascending by id).
    pub fn new(version: u64, mut nodes: Vec<MapNode>, mut logs: Vec<MapLog>) -> ClusterMap {
        nodes.sort_unstable_by_key(|node| node.node_id);
        logs.sort_unstable_by_key(|log| log.log_id);
        ClusterMap {
            version,
            nodes: nodes.into(),
            logs: logs.into(),
        }
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every node, ascending id.
    pub fn nodes(&self) -> &[MapNode] {
        &self.nodes
    }

    /// The node with this id.
    pub fn node(&self, node_id: u64) -> Option<&MapNode> {
        find(&self.nodes, node_id, |node| node.node_id)
    }

    /// Every log, ascending id.
    pub fn logs(&self) -> &[MapLog] {
        &self.logs
    }

    /// The log with this id.
    pub fn log(&self, log_id: u64) -> Option<&MapLog> {
        find(&self.logs, log_id, |log| log.log_id)
    }

    /// The log called `name`.
    pub fn log_named(&self, name: &str) -> Option<&MapLog> {
        self.log(log_id_of(name)).filter(|log| log.name == name)
    }
}

/// The item of `items` (ascending by `id_of`) whose id is `id`.
fn find<T>(items: &[T], id: u64, id_of: impl Fn(&T) -> u64) -> Option<&T> {
    let i = items.binary_search_by_key(&id, id_of).ok()?;
    Some(&items[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(name: &str, chain: &[u64]) -> MapLog {
        MapLog {
            log_id: log_id_of(name),
            name: name.into(),
            replication_factor: 3,
            epoch: 1,
            start_lsn: 0,
            trim_lsn: 0,
            chain: chain.to_vec(),
            learners: Vec::new(),
            created_version: 1,
        }
    }

    fn node(node_id: u64) -> MapNode {
        MapNode {
            node_id,
            addr: format!("127.0.0.1:{}", 7400 + node_id),
            shard_count: 2,
            alive: true,
            drained: false,
            last_heartbeat_ms: 0,
            zone: format!("zone-{}", node_id % 2),
            rack: String::new(),
        }
    }

    #[test]
    fn a_map_keeps_ids_ascending_finds_by_id_and_name_and_shares_on_clone() {
        let map = ClusterMap::new(
            7,
            vec![node(3), node(1), node(2)],
            vec![log("b", &[2, 3, 1]), log("a", &[1, 2, 3])],
        );
        assert!(map.nodes().windows(2).all(|w| w[0].node_id < w[1].node_id));
        assert!(map.logs().windows(2).all(|w| w[0].log_id < w[1].log_id));
        assert_eq!(map.node(2), Some(&node(2)));
        assert_eq!(map.node(4), None);
        let b = map.log_named("b").expect("b");
        assert_eq!(map.log(log_id_of("b")), Some(b));
        assert_eq!(map.log_named("c"), None);
        assert_eq!(
            (b.head(), b.successor(2), b.successor(1)),
            (2, Some(3), None)
        );
        assert_eq!((b.predecessor(2), b.predecessor(1)), (None, Some(3)));
        assert_eq!((b.successor(9), b.predecessor(9)), (None, None));
        let clone = map.clone();
        assert!(
            Arc::ptr_eq(&clone.logs, &map.logs),
            "a clone shares the logs"
        );
    }

    #[test]
    fn the_wire_views_convert_both_ways() {
        let n = node(5);
        assert_eq!(MapNode::from(n.wire()), n);
        let l = log("x", &[4, 5]);
        assert_eq!(MapLog::from(l.wire()), l);
    }

    #[test]
    fn log_ids_are_fnv1a_64_of_the_name() {
        assert_eq!(log_id_of(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(log_id_of("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
