//! A hostile client against simulated nodes, for the `node` fuzz target (`tools/fuzz`): the
//! fixture's two nodes ([`super::fixture`]), a client that connects to node 1 and sends
//! arbitrary bytes after its HELLO, then a good client that appends one batch. Whatever the
//! bytes, no node may stop (a fatal error, or a panic, which the fuzzer sees as a crash) and
//! the good client's append must be answered: acknowledged, or refused with a typed error
//! (the hostile bytes may hold a SEAL: a client may seal a log today, issue 14). The bytes
//! may also claim to be a peer (PEER, REPLICATE, PULL): nodes do not authenticate peers yet,
//! so what a forged REPLICATE stores is not checked here, only that it stops nobody.

use std::cell::RefCell;
use std::rc::Rc;

use chainlog_net::{AppendBuilder, AppendHeader, Limits};
use chainlog_storage::SimDisk;

use super::conn::{ClientConn, Link};
use super::env::Shared;
use super::fixture::{map_all, A};
use super::node::{limits, SimNode};
use super::world::{NetConfig, World};
use crate::node::control::MapUpdate;

const SEED: u64 = 11;
/// How long the hostile bytes have before the good client appends (virtual µs).
const HOSTILE_US: u64 = 200_000;
/// How long the good client's append may take to be answered (virtual µs).
const ANSWER_US: u64 = 10_000_000;

/// Sets the length of the frame at the start of `bytes` (when the bytes hold its header) to
/// what follows, up to the next frame, and the CRC of every frame that starts where the one
/// before ends: mutated bodies then reach the node's decoders instead of its CRC check.
pub fn fix_frame_checksums(bytes: &mut [u8]) {
    let mut at = 0;
    while at + 24 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let Some(end) = (at + 4)
            .checked_add(length)
            .filter(|&e| e <= bytes.len() && e >= at + 24)
        else {
            return;
        };
        let frame = &mut bytes[at..end];
        let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[4..16]), &frame[24..]);
        frame[16..20].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// Runs the fixture's nodes and the hostile client's `bytes`, then the good client's append.
/// `Err` says what went wrong: a node stopped, or the append was never answered.
pub fn hostile_client(bytes: &[u8]) -> Result<(), String> {
    let world: Shared = Rc::new(RefCell::new(World::new(
        SEED,
        NetConfig {
            latency_us: (20, 400),
            short_send_one_in: 0,
            silent_power_loss: false,
        },
    )));
    let clock = world.borrow().clock.clone();
    let map = map_all(1, 2, &mut |_| {});
    let mut nodes: Vec<SimNode> = (1..=2)
        .map(|id| SimNode::new(id, 1, SimDisk::with_clock(clock.clone())))
        .collect();
    for node in &mut nodes {
        node.start(&world, &map, SEED)
            .map_err(|e| format!("a node did not start: {e:?}"))?;
    }
    let head = nodes[0].addr_of(A);
    let mut hostile = ClientConn::new(&mut world.borrow_mut(), 900);
    let mut sent = false;
    run(&world, &mut nodes, &map, HOSTILE_US, &mut |w| {
        if !sent && hostile.poll(w, head, true) == Link::Fresh {
            hostile.send_bytes(w, bytes.to_vec());
            sent = true;
        }
        hostile.receive(w, &mut |_, _| {});
        false
    })?;
    let mut good = ClientConn::new(&mut world.borrow_mut(), 901);
    let mut asked = None;
    let mut answered = false;
    let limits: Limits = limits();
    run(&world, &mut nodes, &map, ANSWER_US, &mut |w| {
        hostile.receive(w, &mut |_, _| {});
        match good.poll(w, head, true) {
            Link::Fresh => asked = None,
            Link::Up => {}
            Link::Down | Link::Lost => return false,
        }
        if asked.is_none() {
            let id = good.next_id();
            let mut out = Vec::new();
            let mut batch = AppendBuilder::new(&mut out, id, &AppendHeader::new(A), &limits);
            batch.push(b"good").expect("a record within the limits");
            batch.finish();
            good.send_bytes(w, out);
            asked = Some(id);
        }
        good.receive(w, &mut |id, _| answered |= Some(id) == asked);
        answered
    })?;
    if answered {
        Ok(())
    } else {
        Err("the good client's append was not answered".into())
    }
}

/// Runs the nodes and `step` (true: done) for `for_us` of virtual time or until done; `Err`
/// if a node stopped.
fn run(
    world: &Shared,
    nodes: &mut [SimNode],
    map: &MapUpdate,
    for_us: u64,
    step: &mut dyn FnMut(&mut World) -> bool,
) -> Result<(), String> {
    let until = world.borrow().now_us() + for_us;
    loop {
        let now = world.borrow().now_us();
        if step(&mut world.borrow_mut()) || now >= until {
            return Ok(());
        }
        world.borrow_mut().run_due();
        for node in nodes.iter_mut() {
            node.step(now, map)
                .map_err(|reason| format!("node {} stopped: {reason}", node.id))?;
        }
        let mut next = now + 1_000; // the clients' turns
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness holds no failure of its own: nothing hostile, and the append is answered.
    #[test]
    fn a_good_client_is_answered_after_nothing_hostile() {
        assert_eq!(hostile_client(&[]), Ok(()));
    }

    /// Garbage closes the hostile connection; the node goes on serving the good client.
    #[test]
    fn a_good_client_is_answered_after_garbage() {
        let mut garbage = vec![0xa5; 300];
        garbage[..4].copy_from_slice(&296u32.to_le_bytes());
        fix_frame_checksums(&mut garbage);
        assert_eq!(hostile_client(&garbage), Ok(()));
    }
}
