//! The server's handling of cluster maps against a store on a simulated disk.

use std::path::Path;
use std::sync::Arc;

use chainlog_net::cluster::{ClusterMap, MapLog, MapNode};
use chainlog_net::Limits;
use chainlog_storage::io::{FaultConfig, SimIo};
use chainlog_storage::{Record, SimDisk, Store, StoreConfig};

use super::{Identity, Server};
use crate::node::catalog::{Catalog, StoreLogs};
use crate::node::replicas::UNANSWERED;

const LOG: u64 = 7;

fn map(version: u64, epoch: u64, chain: &[u64]) -> ClusterMap {
    let nodes = (1..=2)
        .map(|node_id| MapNode {
            node_id,
            addr: format!("10.0.0.{node_id}:7400"),
            shard_count: 1,
            alive: true,
            drained: false,
            last_heartbeat_ms: 0,
        })
        .collect();
    let log = MapLog {
        log_id: LOG,
        name: "orders".to_string(),
        replication_factor: 2,
        epoch,
        start_lsn: 0,
        chain: chain.to_vec(),
        learners: Vec::new(),
        created_version: 1,
    };
    ClusterMap::new(version, nodes, vec![log])
}

/// Node 1's only shard, on an empty store of `disk` and a catalog in `dir`.
fn server(disk: &SimDisk, dir: &Path) -> (Server, Store<SimIo>) {
    let clock = Arc::new(disk.clock());
    let io = disk.io(FaultConfig {
        seed: 1,
        latency_us_max: 50,
        ..FaultConfig::default()
    });
    let store = Store::open(
        io,
        Path::new("/store"),
        StoreConfig::default(),
        clock.clone(),
    )
    .expect("open the store");
    let logs = StoreLogs {
        new: true,
        log_ids: Vec::new(),
    };
    let catalog = Catalog::open(dir, &logs).expect("open the catalog");
    let who = Identity {
        shard_index: 0,
        shard_count: 1,
        node_id: 1,
        limits: Limits::DEFAULT,
        cluster: true,
    };
    let server = Server::new(who, catalog, &store, clock);
    (server, store)
}

/// Everything in flight made durable, its acks handled as a shard turn handles them.
fn sync(server: &mut Server, store: &mut Store<SimIo>) {
    let mut acks = Vec::new();
    store.sync_all(&mut acks).expect("sync");
    server.store_acked(&acks, &mut Vec::new());
}

/// A node sealed out of a log's chain, and taken back into it as a new replica while the
/// trims of its old copy were still in flight: installing the new epoch starts the log again
/// empty here and waits for the store, which reports those trims. They are the old copy's:
/// counted against the new replica (next LSN 0), the trim past its records stopped the shard
/// (`trimmed durably past the records`).
#[test]
fn the_acks_an_install_collects_belong_to_the_replica_they_were_made_for() {
    let disk = SimDisk::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, mut store) = server(&disk, dir.path());
    server.apply_map(&map(1, 1, &[1]), &mut store);
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 16]).collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    let lsns = store.append(LOG, 1, &records, UNANSWERED).expect("append");
    let replica = server.replicas.get_mut(LOG).expect("installed");
    replica.stored(lsns.start, lsns.end, None);
    sync(&mut server, &mut store);
    assert_eq!(server.replicas.get(LOG).map(|r| r.durable_lsn()), Some(10));
    store.trim(LOG, 8, UNANSWERED).expect("trim");
    // Sealed out: the log leaves this node (its records are trimmed away, not durably yet).
    server.apply_map(&map(2, 2, &[2]), &mut store);
    assert!(server.replicas.get(LOG).is_none());
    // Back in the chain, at its tail: a new replica, empty.
    server.apply_map(&map(3, 3, &[2, 1]), &mut store);
    let mut tokens = Vec::new();
    server.store_acked(&[], &mut tokens);
    assert_eq!(
        tokens.len(),
        3,
        "the two trims and the reset, answered to nobody"
    );
    sync(&mut server, &mut store);
    let replica = server.replicas.get(LOG).expect("installed");
    assert_eq!((replica.next_lsn(), replica.durable_lsn()), (0, 0));
    assert_eq!(
        store.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
        Some((0, 0))
    );
}
