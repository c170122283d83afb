//! The fixed cluster of the scenarios set up step by step (`tests.rs`) and of the hostile
//! client ([`super::hostile`]): nodes of one shard each, and two logs of that shard.

use chainlog_net::cluster::{ClusterMap, MapLog, MapNode};

use crate::node::control::MapUpdate;

/// A log of the fixture: the one scenarios fill with records and move between chains.
pub(crate) const A: u64 = 1;
/// The other log of the fixture, on the same shard.
pub(crate) const B: u64 = 2;

/// Map `version`: nodes 1 to `nodes`, each of one shard; logs `A` and `B` on chain [1, 2] in
/// epoch 1 (replication factor 2), each entry as `change` makes it.
pub(crate) fn map_all(version: u64, nodes: u64, change: &mut dyn FnMut(&mut MapLog)) -> MapUpdate {
    let nodes = (1..=nodes)
        .map(|node_id| MapNode {
            node_id,
            addr: format!("10.0.0.{node_id}:7400"),
            shard_count: 1,
            alive: true,
            drained: false,
            last_heartbeat_ms: 0,
            zone: String::new(),
            rack: String::new(),
        })
        .collect();
    let logs = [A, B]
        .into_iter()
        .map(|log_id| MapLog {
            log_id,
            name: format!("log-{log_id}"),
            replication_factor: 2,
            epoch: 1,
            start_lsn: 0,
            trim_lsn: 0,
            chain: vec![1, 2],
            learners: Vec::new(),
            created_version: 1,
        })
        .map(|mut log| {
            change(&mut log);
            log
        })
        .collect();
    MapUpdate::of(ClusterMap::new(version, nodes, logs))
}
