//! Scenarios on simulated nodes that a seed's random run reaches only by chance, set up step
//! by step.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use chainlog_net::cluster::MapLog;
use chainlog_net::{ReadRequest, Request, Response, SealRequest};
use chainlog_storage::{Clock, SimDisk};

use super::client::{Mode, Writer};
use super::conn::{try_again, ClientConn, Link};
use super::env::{Shared, Slowdown};
use super::fixture::{map_all, A, B};
use super::node::SimNode;
use super::world::{NetConfig, World};
use crate::history::Outcome;
use crate::node::control::MapUpdate;

const SEED: u64 = 7;

/// Two nodes, each of one shard; logs `A` and `B`, both on chain [1, 2].
fn cluster_map() -> MapUpdate {
    map_of(1, 2, &[])
}

/// Map `version`: nodes 1 to `nodes`, each of one shard; logs `A` and `B`, both on chain
/// [1, 2] in epoch 1, `A` with `learners`.
fn map_of(version: u64, nodes: u64, learners: &[u64]) -> MapUpdate {
    map_with(version, nodes, &mut |a| a.learners = learners.to_vec())
}

/// As [`map_of`], with `A`'s entry as `change` makes it.
fn map_with(version: u64, nodes: u64, change: &mut dyn FnMut(&mut MapLog)) -> MapUpdate {
    map_all(version, nodes, &mut |log| {
        if log.log_id == A {
            change(log);
        }
    })
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

/// A writer of `log_id` (batches of 4 records) with client id `id`.
fn writer(world: &Shared, id: u64, log_id: u64) -> Writer {
    let mode = Mode::default();
    Writer::new(&mut world.borrow_mut(), id, log_id, mode, 4, 1, 60_000_000)
}

/// The records of `log_id` that `node` stores, if it runs and holds the log.
fn records(node: &mut SimNode, log_id: u64) -> Option<Vec<(u64, Vec<u8>)>> {
    node.shard_of(log_id)
        .and_then(|s| s.stored_records(log_id).expect("a store that runs reads"))
        .map(|(_, _, r)| r)
}

/// Runs until `nodes[to]` stores every record of `A` that `nodes[from]` stores now, which
/// must be within 60 virtual seconds of `from_us`.
fn run_until_copied(
    world: &Shared,
    nodes: &mut [SimNode],
    writers: &mut [(u64, Writer)],
    map: &MapUpdate,
    from_us: u64,
    (from, to): (usize, usize),
) {
    let a = records(&mut nodes[from], A);
    run(
        world,
        nodes,
        writers,
        map,
        from_us + 60_000_000,
        &mut |n, _| records(&mut n[to], A) == a,
    );
}

/// Nodes 1 to `count` started on `map` (`A` and `B` on chain [1, 2]), with 1,600 records of
/// `A` acknowledged: enough that its first ones left the tail cache of every replica.
fn written(count: u64, map: &MapUpdate) -> (Shared, Vec<SimNode>, Vec<(u64, Writer)>) {
    let world: Shared = Rc::new(RefCell::new(World::new(
        SEED,
        NetConfig {
            latency_us: (20, 400),
            short_send_one_in: 0,
            silent_power_loss: false,
        },
    )));
    let clock = world.borrow().clock.clone();
    let mut nodes: Vec<SimNode> = (1..=count)
        .map(|id| SimNode::new(id, 1, SimDisk::with_clock(clock.clone())))
        .collect();
    for node in &mut nodes {
        node.start(&world, map, SEED)
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    let mut writers = vec![(A, writer(&world, 1, A))];
    let mut batches = 0;
    run(
        &world,
        &mut nodes,
        &mut writers,
        map,
        60_000_000,
        &mut |_, w| {
            if batches < 400 && w[0].1.invoke(clock.monotonic_us(), 4) {
                batches += 1;
            }
            batches == 400 && acked(&w[0].1).is_some()
        },
    );
    assert_eq!(records(&mut nodes[0], A).map(|r| r.len()), Some(1600));
    (world, nodes, writers)
}

/// Holds `node`'s disk reads back for 30 virtual seconds; returns when they end.
fn stall_reads(world: &Shared, node: &SimNode) -> u64 {
    let reads_until_us = world.borrow().now_us() + 30_000_000;
    node.speed.set(Slowdown {
        reads_until_us,
        ..Slowdown::default()
    });
    reads_until_us
}

/// Whether a read of `node`'s shard of `A` waits for the disk.
fn waiting(node: &mut SimNode) -> bool {
    let shard = node.shard_of(A).expect("the node runs");
    shard.env().stalled_reads() > 0
}

/// Appends a batch to `B` (its head is node 1) and runs until it is acknowledged, which must
/// be before `until_us`; the read that `node` waits for must still wait then.
fn append_to_b_while_waiting(
    world: &Shared,
    nodes: &mut [SimNode],
    writers: &mut Vec<(u64, Writer)>,
    map: &MapUpdate,
    node: usize,
    until_us: u64,
) {
    writers.push((B, writer(world, 2, B)));
    let now = world.borrow().now_us();
    assert!(writers[1].1.invoke(now, 4));
    run(world, nodes, writers, map, until_us, &mut |_, w| {
        acked(&w[1].1).is_some()
    });
    assert!(waiting(&mut nodes[node]), "the read still waits");
}

/// Sends `request` on `client` to `addr` once the connection is up (again after a retryable
/// refusal, or on a new connection), and returns what `take` makes of its answer once it
/// came.
fn ask<T>(
    world: &Shared,
    client: &mut ClientConn,
    addr: SocketAddr,
    asked: &mut Option<u64>,
    request: &Request<'_>,
    take: &mut dyn FnMut(&Response<'_>) -> T,
) -> Option<T> {
    let w = &mut world.borrow_mut();
    match client.poll(w, addr, true) {
        Link::Up => {}
        Link::Fresh => *asked = None,
        Link::Down | Link::Lost => return None,
    }
    if asked.is_none() {
        *asked = Some(client.send(w, request));
    }
    let mut answer = None;
    client.receive(w, &mut |id, response| {
        if Some(id) != *asked {
            return;
        }
        match response {
            Ok(Response::Error(e)) if try_again(e.code) => *asked = None,
            Ok(r) => answer = Some(take(&r)),
            Err(e) => panic!("{e}"),
        }
    });
    answer
}

/// Runs until `request`, sent to `addr` on a client of its own, is answered by
/// `until_us`; returns what `take` makes of the answer.
#[allow(clippy::too_many_arguments)]
fn answer<T>(
    world: &Shared,
    nodes: &mut [SimNode],
    writers: &mut [(u64, Writer)],
    map: &MapUpdate,
    until_us: u64,
    addr: SocketAddr,
    request: &Request<'_>,
    take: &mut dyn FnMut(&Response<'_>) -> T,
) -> T {
    let mut client = ClientConn::new(&mut world.borrow_mut(), 900);
    let mut asked = None;
    let mut answer = None;
    run(world, nodes, writers, map, until_us, &mut |_, _| {
        answer = ask(world, &mut client, addr, &mut asked, request, take);
        answer.is_some()
    });
    answer.expect("answered")
}

/// Seals epoch 1 of `log_id` at `nodes[node]` with a client's SEAL (within 5 virtual
/// seconds); returns the end it was sealed at.
fn seal_at(
    world: &Shared,
    nodes: &mut [SimNode],
    writers: &mut [(u64, Writer)],
    map: &MapUpdate,
    node: usize,
    log_id: u64,
) -> u64 {
    let addr = nodes[node].addr_of(log_id);
    let seal = Request::Seal(SealRequest { log_id, epoch: 1 });
    let until = world.borrow().now_us() + 5_000_000;
    answer(
        world,
        nodes,
        writers,
        map,
        until,
        addr,
        &seal,
        &mut |r| match r {
            Response::Seal(s) => s.end_lsn,
            other => panic!("a SEAL answered with {other:?}"),
        },
    )
}

/// A head catching its successor up reads the records from its disk without waiting for the
/// read: while the read waits (the disk holds reads back), the head stores and acknowledges
/// appends to another log of the same shard; when the read completes, the successor gets the
/// records. A read that waited inside the call stopped the shard until the disk answered.
#[test]
fn a_head_acknowledges_appends_while_a_catch_up_read_waits_for_the_disk() {
    let map = cluster_map();
    let (world, mut nodes, mut writers) = written(2, &map);
    let clock = world.borrow().clock.clone();
    // Node 2 comes back empty (its disk replaced) while node 1's disk holds reads back: the
    // head catches A up from 0, from the disk.
    nodes[1].kill(&world, None);
    nodes[1] = SimNode::new(2, 1, SimDisk::with_clock(clock.clone()));
    nodes[1]
        .start(&world, &map, SEED)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let reads_until_us = stall_reads(&world, &nodes[0]);
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        reads_until_us,
        &mut |n, _| waiting(&mut n[0]),
    );
    append_to_b_while_waiting(&world, &mut nodes, &mut writers, &map, 0, reads_until_us);
    // Once the disk answers, node 2 gets every record of A.
    run_until_copied(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        reads_until_us,
        (0, 1),
    );
}

/// The chain's tail answers a learner's PULL of records on its disk once they are read, and
/// meanwhile serves the rest: while the read waits (the disk holds reads back), it stores and
/// acknowledges appends to another log of its shard; once the disk answers, the learner
/// copies the whole log. A read inside the call stopped the tail's shard, and with it the
/// chain's appends, until the disk answered.
#[test]
fn a_tail_acknowledges_appends_while_a_learners_read_waits_for_the_disk() {
    let (world, mut nodes, mut writers) = written(3, &map_of(1, 3, &[]));
    // Node 3 becomes a learner of A while node 2's disk holds reads back.
    let reads_until_us = stall_reads(&world, &nodes[1]);
    let learning = map_of(2, 3, &[3]);
    let now = world.borrow().now_us();
    for node in &mut nodes {
        node.map_changed(&learning, now).expect("installs");
    }
    run(
        &world,
        &mut nodes,
        &mut writers,
        &learning,
        reads_until_us,
        &mut |n, _| waiting(&mut n[1]),
    );
    append_to_b_while_waiting(
        &world,
        &mut nodes,
        &mut writers,
        &learning,
        1,
        reads_until_us,
    );
    // Once the disk answers, node 3 copies every record of A.
    run_until_copied(
        &world,
        &mut nodes,
        &mut writers,
        &learning,
        reads_until_us,
        (0, 2),
    );
}

/// A client's READ of records on the disk is answered once they are read, and meanwhile the
/// node serves the rest: while the read waits, it stores and acknowledges appends to another
/// log of its shard; then the READ is answered with the log's first records. A read inside
/// the call stopped the shard until the disk answered.
#[test]
fn a_node_acknowledges_appends_while_a_clients_read_waits_for_the_disk() {
    let map = cluster_map();
    let (world, mut nodes, mut writers) = written(2, &map);
    let reads_until_us = stall_reads(&world, &nodes[0]);
    let addr = nodes[0].addr_of(A);
    let mut client = ClientConn::new(&mut world.borrow_mut(), 900);
    let mut asked = None;
    // The LSNs the READ was answered with, once it is.
    let request = Request::Read(ReadRequest {
        log_id: A,
        from_lsn: 0,
        max_records: 10,
        max_bytes: 1 << 20,
    });
    let mut read = |world: &Shared, client: &mut ClientConn| {
        ask(
            world,
            client,
            addr,
            &mut asked,
            &request,
            &mut |r| match r {
                Response::Read(batch) => batch
                    .records
                    .iter()
                    .map(|r| r.header.lsn)
                    .collect::<Vec<u64>>(),
                other => panic!("a READ answered with {other:?}"),
            },
        )
    };
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        reads_until_us,
        &mut |n, _| {
            assert_eq!(read(&world, &mut client), None);
            waiting(&mut n[0])
        },
    );
    append_to_b_while_waiting(&world, &mut nodes, &mut writers, &map, 0, reads_until_us);
    assert_eq!(
        read(&world, &mut client),
        None,
        "not answered while the read waits"
    );
    let mut answer = None;
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        reads_until_us + 60_000_000,
        &mut |_, _| {
            answer = read(&world, &mut client);
            answer.is_some()
        },
    );
    assert_eq!(answer, Some((0..10).collect()));
}

/// A head answers CHECK_TAIL only once the members of its new epoch hold every record of the
/// epoch before: epoch 1 of `A` is sealed after 1,600 acknowledged records; node 1 restarts
/// (forgetting what it knew committed) into epoch 2, which starts there, with node 2 back
/// empty; while node 1's disk holds back the reads that catch node 2 up, a CHECK_TAIL must
/// not name a tail below 1,600. It named 0: the barrier had no records queued before it,
/// and the empty tail answered it at once.
#[test]
fn a_check_tail_at_the_start_of_an_epoch_covers_the_epoch_before() {
    let (world, mut nodes, mut writers) = written(2, &cluster_map());
    let clock = world.borrow().clock.clone();
    assert_eq!(
        seal_at(&world, &mut nodes, &mut writers, &cluster_map(), 0, A),
        1600
    );
    let addr = nodes[0].addr_of(A);
    let next = map_with(2, 2, &mut |a| {
        a.epoch = 2;
        a.start_lsn = 1600;
    });
    for node in &mut nodes {
        node.kill(&world, None);
    }
    nodes[1] = SimNode::new(2, 1, SimDisk::with_clock(clock.clone()));
    for node in &mut nodes {
        node.start(&world, &next, SEED)
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    let reads_until_us = stall_reads(&world, &nodes[0]);
    let check = Request::CheckTail { log_id: A };
    let tail = answer(
        &world,
        &mut nodes,
        &mut writers,
        &next,
        reads_until_us + 60_000_000,
        addr,
        &check,
        &mut |r| match r {
            Response::CheckTail(t) => t.tail,
            other => panic!("a CHECK_TAIL answered with {other:?}"),
        },
    );
    assert!(
        tail >= 1600,
        "CHECK_TAIL named {tail}, below the 1,600 records acknowledged"
    );
    assert!(
        clock.monotonic_us() >= reads_until_us,
        "answered once node 2 caught up"
    );
}

/// The answer to a PULL that the replica of an epoch sent is not stored once the log moved
/// to the next epoch here: node 1, the head, loses its last batch of `A` in a power loss
/// (node 2 stored it), restarts and PULLs it back; the answer is slow, and meanwhile epoch 1
/// is sealed and epoch 2 installed, with node 1 as the tail. The late answer was stored for
/// epoch 2's replica, which never asked for it and did not count it, and the node stopped
/// on "durable beyond what was stored" once the store made it durable.
#[test]
fn a_pull_answered_after_the_next_epoch_was_installed_is_not_stored() {
    let map = cluster_map();
    let (world, mut nodes, mut writers) = written(2, &map);
    let clock = world.borrow().clock.clone();
    // Node 1's write of the next batch stays in flight; node 2 stores it.
    nodes[0].speed.set(Slowdown {
        until_us: clock.monotonic_us() + 60_000_000,
        extra_us: 30_000_000,
        reads_until_us: 0,
    });
    assert!(writers[0].1.invoke(clock.monotonic_us(), 4));
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        60_000_000,
        &mut |n, _| records(&mut n[1], A).map(|r| r.len()) == Some(1604),
    );
    nodes[0].kill(&world, Some(1));
    nodes[0].speed.set(Slowdown::default());
    nodes[0]
        .start(&world, &map, SEED)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(records(&mut nodes[0], A).map(|r| r.len()), Some(1600));
    let now = world.borrow().now_us();
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        now + 5_000_000,
        &mut |n, _| n[0].shard_of(A).is_some_and(|s| s.awaits_pull(A)),
    );
    // Node 2's answers take 5 s from here: node 1's PULL stays out.
    let now = world.borrow().now_us();
    world
        .borrow_mut()
        .slow_down(2, 1, now + 10_000_000, 5_000_000);
    for (node, end) in [(0, 1600), (1, 1604)] {
        let sealed = seal_at(&world, &mut nodes, &mut writers, &map, node, A);
        assert_eq!(sealed, end);
    }
    let next = map_with(2, 2, &mut |a| {
        a.epoch = 2;
        a.start_lsn = 1604;
        a.chain = vec![2, 1];
    });
    // Node 1 installs epoch 2 first: the answer comes before any REPLICATE of epoch 2.
    let now = world.borrow().now_us();
    nodes[0].map_changed(&next, now).expect("installs");
    assert!(
        nodes[0].shard_of(A).is_some_and(|s| !s.awaits_pull(A)),
        "epoch 2's replica asked for nothing"
    );
    run(
        &world,
        &mut nodes,
        &mut writers,
        &map,
        now + 7_000_000,
        &mut |_, _| clock.monotonic_us() >= now + 6_000_000,
    );
    // Node 1 takes the batch from its predecessor in epoch 2.
    let now = world.borrow().now_us();
    nodes[1].map_changed(&next, now).expect("installs");
    run_until_copied(&world, &mut nodes, &mut writers, &next, now, (1, 0));
}

/// A node keeps no link to a node that left the chains it forwards to: node 2 dies, and `A`
/// and `B` go on in epoch 2 on [1, 3]. Node 1's link to node 2 kept reconnecting every
/// second for as long as node 1 ran, and reported node 2 to the controller as a failed
/// neighbour each time; a node back after a restart, in other chains by then, could be
/// sealed out of them on the strength of those reports.
#[test]
fn a_link_no_log_uses_any_more_is_closed_not_reconnected() {
    let map = map_of(1, 3, &[]);
    let (world, mut nodes, mut writers) = written(3, &map);
    nodes[1].kill(&world, None);
    // Epoch 1 ends at node 1, the survivor.
    assert_eq!(seal_at(&world, &mut nodes, &mut writers, &map, 0, A), 1600);
    assert_eq!(seal_at(&world, &mut nodes, &mut writers, &map, 0, B), 0);
    let next = map_all(2, 3, &mut |log| {
        log.epoch = 2;
        log.start_lsn = if log.log_id == A { 1600 } else { 0 };
        log.chain = vec![1, 3];
    });
    let now = world.borrow().now_us();
    for node in [0, 2] {
        nodes[node].map_changed(&next, now).expect("installs");
    }
    // Node 3 takes A from node 1 in epoch 2; by then node 1 tried node 2 again.
    run_until_copied(&world, &mut nodes, &mut writers, &next, now, (0, 2));
    let until = world.borrow().now_us() + 5_000_000;
    run(
        &world,
        &mut nodes,
        &mut writers,
        &next,
        until + 1_000_000,
        &mut |_, _| world.borrow().now_us() >= until,
    );
    let shard = nodes[0].shard_of(A).expect("node 1 runs");
    assert!(!shard.has_link_to(2), "{}", shard.describe(A));
    assert!(shard.has_link_to(3));
}

/// A learner dropped and made a learner again starts its copy over, and an answer to a PULL
/// of the copy before is not taken for the new one: node 3 copied `A` to its end, 1,600,
/// asked again, was dropped (its copy deleted) and added back, and asked from 0. The old
/// PULL's answer (nothing from 1,600) came first and was read as "the source trimmed up to
/// 1,600": the new copy started there, without the 1,600 records below, which its source
/// never trimmed.
#[test]
fn a_learner_added_again_does_not_take_an_answer_to_its_earlier_copys_pull() {
    let (world, mut nodes, mut writers) = written(3, &map_of(1, 3, &[]));
    let learning = map_of(2, 3, &[3]);
    let now = world.borrow().now_us();
    for node in &mut nodes {
        node.map_changed(&learning, now).expect("installs");
    }
    run_until_copied(&world, &mut nodes, &mut writers, &learning, now, (0, 2));
    // Node 2's answers to node 3 take 5 s from here: node 3's next PULL (from 1,600) stays
    // out while node 3 is dropped and added back.
    let now = world.borrow().now_us();
    world
        .borrow_mut()
        .slow_down(2, 3, now + 10_000_000, 5_000_000);
    run(
        &world,
        &mut nodes,
        &mut writers,
        &learning,
        now + 1_000_000,
        &mut |_, _| world.borrow().now_us() >= now + 100_000,
    );
    let dropped = map_of(3, 3, &[]);
    let now = world.borrow().now_us();
    nodes[2].map_changed(&dropped, now).expect("installs");
    assert!(
        records(&mut nodes[2], A).is_none_or(|r| r.is_empty()),
        "the copy is deleted"
    );
    let again = map_of(4, 3, &[3]);
    nodes[2].map_changed(&again, now).expect("installs");
    // Node 3 copies A from 0 again, every record of it.
    run_until_copied(&world, &mut nodes, &mut writers, &again, now, (0, 2));
}
