//! Scenarios on simulated nodes that a seed's random run reaches only by chance, set up step
//! by step.

use std::cell::RefCell;
use std::rc::Rc;

use chainlog_net::cluster::{ClusterMap, MapLog, MapNode};
use chainlog_storage::{Clock, SimDisk};

use super::client::{Mode, Writer};
use super::env::{Shared, Slowdown};
use super::node::SimNode;
use super::world::{NetConfig, World};
use crate::history::Outcome;
use crate::node::control::MapUpdate;

/// A log with many records, whose successor comes back empty and is caught up from the disk.
const A: u64 = 1;
/// A log of the same shard, whose chain is in sync.
const B: u64 = 2;
const SEED: u64 = 7;

/// Two nodes, each of one shard; logs `A` and `B`, both on chain [1, 2].
fn cluster_map() -> MapUpdate {
    let nodes = (1..=2)
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
        .collect();
    MapUpdate::of(ClusterMap::new(1, nodes, logs))
}

/// When a scenario's step is done, from the nodes and the writers (each with its log).
type Done<'a> = dyn FnMut(&mut [SimNode], &mut [(u64, Writer)]) -> bool + 'a;

/// Runs the nodes and the writers (each to its log's head, node 1) until `done` or until
/// virtual time `until_us`.
fn run(
    world: &Shared,
    nodes: &mut [SimNode],
    writers: &mut [(u64, Writer)],
    map: &MapUpdate,
    until_us: u64,
    done: &mut Done<'_>,
) {
    loop {
        if done(nodes, writers) {
            return;
        }
        let now = world.borrow().now_us();
        if now >= until_us {
            let states: Vec<String> = nodes
                .iter_mut()
                .filter_map(|n| n.shard_of(A).map(|s| s.describe(A)))
                .collect();
            panic!("not done by {until_us} µs; log A: {states:?}");
        }
        world.borrow_mut().run_due();
        for node in nodes.iter_mut() {
            node.step(now, map).expect("no fatal error");
        }
        for (log_id, writer) in writers.iter_mut() {
            let head = nodes[0].addr_of(*log_id);
            writer.step(&mut world.borrow_mut(), head);
        }
        let mut next = now + 1_000; // the writers' timers
        if let Some(t) = world.borrow().next_event_us() {
            next = next.min(t);
        }
        for node in nodes.iter() {
            if let Some(t) = node.next_us() {
                next = next.min(t);
            }
        }
        world.borrow().clock.advance_to(next.max(now + 1));
    }
}

/// Whether `writer`'s batches are all acknowledged, and when the last one was.
fn acked(writer: &Writer) -> Option<u64> {
    let mut last = 0;
    for op in writer.ops() {
        match &op.outcome {
            Outcome::Acked { at, .. } => last = last.max(*at),
            _ => return None,
        }
    }
    Some(last)
}

/// A head catching its successor up reads the records from its disk without waiting for the
/// read: while the read waits (the disk holds reads back), the head stores and acknowledges
/// appends to another log of the same shard; when the read completes, the successor gets the
/// records. A read that waited inside the call stopped the shard until the disk answered.
#[test]
fn a_head_acknowledges_appends_while_a_catch_up_read_waits_for_the_disk() {
    let world: Shared = Rc::new(RefCell::new(World::new(
        SEED,
        NetConfig {
            latency_us: (20, 400),
            short_send_one_in: 0,
            silent_power_loss: false,
        },
    )));
    let clock = world.borrow().clock.clone();
    let map = cluster_map();
    let mut nodes: Vec<SimNode> = (1..=2)
        .map(|id| SimNode::new(id, 1, SimDisk::with_clock(clock.clone())))
        .collect();
    for node in &mut nodes {
        node.start(&world, &map, SEED)
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    // Enough of A that its first records left the head's tail cache.
    let writer = |world: &Shared, id, log_id| {
        let mode = Mode::default();
        Writer::new(&mut world.borrow_mut(), id, log_id, mode, 4, 1, 60_000_000)
    };
    let mut writers = vec![(A, writer(&world, 1, A))];
    let mut batches = 0;
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        60_000_000,
        &mut |_, w| {
            if batches < 400 && w[0].1.invoke(clock.monotonic_us(), 4) {
                batches += 1;
            }
            batches == 400 && acked(&w[0].1).is_some()
        },
    );
    let a_end = nodes[0]
        .shard_of(A)
        .and_then(|s| s.stored_records(A))
        .map(|(_, _, records)| records.len())
        .expect("A at the head");
    assert_eq!(a_end, 1600);
    // Node 2 comes back empty (its disk replaced) while node 1's disk holds reads back: the
    // head catches A up from 0, from the disk.
    nodes[1].kill(&world, None);
    nodes[1] = SimNode::new(2, 1, SimDisk::with_clock(clock.clone()));
    nodes[1]
        .start(&world, &map, SEED)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let reads_until_us = clock.monotonic_us() + 30_000_000;
    nodes[0].speed.set(Slowdown {
        reads_until_us,
        ..Slowdown::default()
    });
    let waiting = |nodes: &mut [SimNode]| {
        let shard = nodes[0].shard_of(A).expect("node 1 runs");
        shard.env().stalled_reads() > 0
    };
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        reads_until_us,
        &mut |n, _| waiting(n),
    );
    // An append to B now is stored and acknowledged by both nodes while the read waits.
    writers.push((B, writer(&world, 2, B)));
    assert!(writers[1].1.invoke(clock.monotonic_us(), 4));
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        reads_until_us,
        &mut |_, w| acked(&w[1].1).is_some(),
    );
    assert!(waiting(&mut nodes), "the catch-up read still waits");
    assert!(clock.monotonic_us() < reads_until_us);
    // Once the disk answers, node 2 gets every record of A.
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        reads_until_us + 60_000_000,
        &mut |n, _| {
            let shard = n[1].shard_of(A).expect("node 2 runs");
            shard.stored_records(A).map(|(_, _, r)| r.len()) == Some(a_end)
        },
    );
    let records = |node: &mut SimNode| {
        node.shard_of(A)
            .and_then(|s| s.stored_records(A))
            .map(|(_, _, r)| r)
    };
    assert!(
        records(&mut nodes[1]) == records(&mut nodes[0]),
        "node 2 holds A as node 1 does"
    );
}
