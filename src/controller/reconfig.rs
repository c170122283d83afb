//! Reconfiguration: what the controller does when a chain loses a member, can get one back,
//! or an operator asks for it (DESIGN.md section 6, ARCHITECTURE.md "Reconfiguration").
//!
//! A log is reconfigured ([`plan`]) when its current chain has a member that is not alive (no
//! heartbeat within the liveness timeout), when an operator asked (`chainlog log seal`,
//! `chainlog log reconfigure`: a durable request in the state), when the controller was
//! sealing its epoch when it stopped, when its chain holds a drained node and another live
//! member (`chainlog node drain`), or when it is shorter than its replication factor and a
//! learner has caught up with it ([`Why::Promote`]):
//!
//! 0. **Record the intent** ([`ClusterState::begin_seal`]), durably, before any SEAL goes
//!    out: a replica that sealed takes no more appends, so a controller restarted before it
//!    extended the epoch must finish the reconfiguration even if every member is alive again.
//! 1. **Seal** the current epoch at the members that are alive ([`seal`], SEAL on the log's
//!    shard of each): one way and durable; a sealed replica appends, stores and forwards
//!    nothing more in that epoch, and answers with its end, every record below it durable.
//!    Sealing any one member stops the old epoch from committing anything more (a commit
//!    needs every member), so a falsely suspected node is harmless.
//! 2. **Pick the end and extend** ([`ClusterState::extend`]): the new chain keeps sealed
//!    members in their order (less drained ones), then, for a promotion, the learners that
//!    caught up at the tail (or exactly the chain an operator asked for, if the seals allow
//!    it); it starts at the longest end among the members it keeps, one of which must hold
//!    every acknowledged record (nothing is dropped or renumbered). The epoch is compared
//!    and set under the state's lock: one reconfiguration wins per epoch.
//! 3. The nodes install the new epoch from the map; its replicas settle with each other
//!    (probe, pull, catch-up: `crate::replication`) before the new head sequences anything,
//!    so the survivors are brought to the same end first, and a new member copies what it
//!    lacks from its predecessor. The controller watches the new members' tails
//!    ([`tail_hint`]) to know when they have caught up.
//!
//! **Nobody new joins after a failure.** A node that joins a chain inside an epoch holds the
//! epoch's appends up until it has copied the whole log, which takes as long as the log is
//! long. So a failure, a drain or a finished seal extends with the survivors only, and a
//! chain left short grows back in two steps that never wait for a copy: [`learner_changes`]
//! makes live spare nodes **learners** of the log (a change of the map, no seal), which copy
//! its committed records from the chain's tail outside the chain; once one is within
//! [`LEARNER_LAG_CLOSE`] records of the tail in the current epoch, or within
//! [`LEARNER_LAG_MAX`] for long enough ([`LearnerWatch`], asked by TAIL_HINT), it is
//! **promoted**: a seal and an extend with it at the tail, where it only
//! has the few records it lacks to copy. Only an operator's chain (`chainlog log
//! reconfigure --chain`) still puts a node new to the log straight in the chain.
//!
//! [`plan`] and [`learner_changes`] are pure (the state and the time in, the work out); the
//! calls to nodes are blocking calls the controller's threads make.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use chainlog_net::{
    decode_response, encode_request, parse_frame, ErrorCode, HelloRequest, Limits, Request,
    Response, SealRequest,
};

use super::state::ClusterState;
use super::StateError;

/// How many records a learner may lag the chain's tail (both answering TAIL_HINT in the
/// log's current epoch) and be promoted at once: the records it then copies inside the new
/// epoch, holding its first appends up. Drills promoted at up to 4,096 records behind, and
/// the copy held appends for 35-70 ms.
pub const LEARNER_LAG_CLOSE: u64 = 256;
/// How many records a learner may lag the chain's tail and still be promoted, once it has
/// stayed within this for [`LEARNER_NEAR_POLLS`] polls in a row: a log that grows faster
/// than a learner comes within [`LEARNER_LAG_CLOSE`] of it (which it polls for every 20 ms
/// once it has caught up) still gets its replica back.
pub const LEARNER_LAG_MAX: u64 = 4096;
/// Polls in a row within [`LEARNER_LAG_MAX`] after which a learner is promoted (about half a
/// second at the controller's pace).
pub const LEARNER_NEAR_POLLS: u32 = 25;

/// Why a log is reconfigured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// These members of the chain are not alive.
    Failed(Vec<u64>),
    /// An operator asked for it.
    Requested,
    /// These members of the chain are drained.
    Drain(Vec<u64>),
    /// The chain is shorter than the replication factor and these learners of the log have
    /// caught up with it: they join at the tail.
    Promote(Vec<u64>),
    /// The controller began sealing the epoch and has not extended it (it stopped in
    /// between, or the seal reached no member).
    Sealing,
}

impl Why {
    /// A label for metrics and logs: `failed`, `requested`, `drain`, `promote`, `sealing`.
    pub fn label(&self) -> &'static str {
        match self {
            Why::Failed(_) => "failed",
            Why::Requested => "requested",
            Why::Drain(_) => "drain",
            Why::Promote(_) => "promote",
            Why::Sealing => "sealing",
        }
    }

    /// The labels [`Why::label`] gives, for metrics that list every one.
    pub const LABELS: [&'static str; 5] = ["failed", "requested", "drain", "promote", "sealing"];
}

/// One reconfiguration to make: seal `epoch` of `log_id` at `seal_at`, then extend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The log.
    pub log_id: u64,
    /// Its current epoch (the one to seal).
    pub epoch: u64,
    /// The members to seal: the chain's live ones, in chain order.
    pub seal_at: Vec<u64>,
    /// Why.
    pub why: Why,
    /// The chain an operator asked for, if one did (else the controller picks it).
    pub chain: Option<Vec<u64>>,
    /// For a failure: the last time a member found dead was heard from (`None` if never
    /// since this controller started): the detection took from there to the plan.
    pub last_heard: Option<Instant>,
}

/// The reconfigurations the state needs at `now`. A chain with no live member is left as it
/// is (no replica can say where its epoch ends: the log waits for one to return); so is a
/// drained node's chain with no other live member (nobody to move the log to: an rf 1 log).
/// A short chain is promoted to only by learners the state says are ready
/// ([`ClusterState::ready_learners`]), never by a node that has not copied the log.
pub fn plan(state: &ClusterState, now: Instant) -> Vec<Plan> {
    let mut plans = Vec::new();
    for log in state.logs_after(0, usize::MAX) {
        let current = log.current();
        let node = |id: &u64| state.node(*id);
        let (alive, dead): (Vec<u64>, Vec<u64>) = current
            .chain
            .iter()
            .partition(|&id| node(id).is_some_and(|n| state.is_alive(n, now)));
        if alive.is_empty() {
            continue;
        }
        let drained: Vec<u64> = current
            .chain
            .iter()
            .copied()
            .filter(|id| node(id).is_some_and(|n| n.drained))
            .collect();
        let request = log.pending_request();
        let why = if !dead.is_empty() {
            Why::Failed(dead.clone())
        } else if request.is_some() {
            Why::Requested
        } else if log.sealing == Some(current.epoch) {
            Why::Sealing
        } else if !drained.is_empty() && alive.iter().any(|id| !drained.contains(id)) {
            Why::Drain(drained)
        } else {
            let wanted = usize::from(log.replication_factor).saturating_sub(current.chain.len());
            // One learner per promotion, at the tail: a learner's copy may be shorter than
            // its last TAIL_HINT said (a crash lost what was not synced), even below the
            // log's trim point. At the tail its predecessor starts it at the trim point (a
            // TRIM) and sends the rest; as a middle member it would take back from its
            // successor, with PULL, records that are trimmed there.
            let mut ready = state.ready_learners(log, now);
            ready.truncate(wanted.min(1));
            if ready.is_empty() {
                continue;
            }
            Why::Promote(ready)
        };
        let last_heard = dead
            .iter()
            .filter_map(|id| node(id).and_then(|n| n.last_heartbeat))
            .max();
        plans.push(Plan {
            log_id: log.log_id,
            epoch: current.epoch,
            seal_at: alive,
            why,
            chain: request.and_then(|r| r.chain.clone()),
            last_heard,
        });
    }
    plans
}

/// A change of a log's learners ([`learner_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnerChange {
    /// Make the node a learner of the log ([`ClusterState::add_learner`]).
    Add {
        /// The log.
        log_id: u64,
        /// The node.
        node_id: u64,
    },
    /// Drop the node from the log's learners ([`ClusterState::remove_learner`]).
    Drop {
        /// The log.
        log_id: u64,
        /// The node.
        node_id: u64,
        /// Why: `in the chain`, `not alive`, `drained`, `not registered`, `not needed`.
        why: &'static str,
    },
}

impl LearnerChange {
    /// Makes the change in `state` at `now`; returns the map version after it.
    pub fn apply(&self, state: &mut ClusterState, now: Instant) -> Result<u64, StateError> {
        match *self {
            LearnerChange::Add { log_id, node_id } => state.add_learner(log_id, node_id, now),
            LearnerChange::Drop {
                log_id, node_id, ..
            } => state.remove_learner(log_id, node_id),
        }
    }
}

/// The changes of the logs' learners the state needs at `now`: a learner in its log's chain
/// (promoted, or named by an operator), not alive (it does not copy; the node deletes its
/// copy, and may be picked again once it is back), drained or unknown is dropped, and so are
/// the newest beyond what the chain lacks of the replication factor; a log whose chain
/// and learners are fewer than its replication factor gets live, undrained nodes outside
/// both as learners, up to the factor, as placement picks them ([`ClusterState::pick`]: in
/// the zones the chain and its learners hold fewest of, the least loaded first).
pub fn learner_changes(state: &ClusterState, now: Instant) -> Vec<LearnerChange> {
    let mut changes = Vec::new();
    for log in state.logs_after(0, usize::MAX) {
        let chain = &log.current().chain;
        let mut kept = Vec::new();
        for &node_id in &log.learners {
            let why = match state.node(node_id) {
                _ if chain.contains(&node_id) => Some("in the chain"),
                None => Some("not registered"),
                Some(node) if node.drained => Some("drained"),
                Some(node) if !state.is_alive(node, now) => Some("not alive"),
                Some(_) => None,
            };
            match why {
                Some(why) => changes.push(LearnerChange::Drop {
                    log_id: log.log_id,
                    node_id,
                    why,
                }),
                None => kept.push(node_id),
            }
        }
        // More learners than the chain lacks (an operator filled it with other nodes): the
        // newest go.
        let room = usize::from(log.replication_factor).saturating_sub(chain.len());
        for &node_id in kept.iter().skip(room) {
            changes.push(LearnerChange::Drop {
                log_id: log.log_id,
                node_id,
                why: "not needed",
            });
        }
        let wanted = room.saturating_sub(kept.len());
        if wanted == 0 {
            continue;
        }
        let taken: Vec<u64> = chain.iter().chain(&log.learners).copied().collect();
        for node_id in state.pick(&taken, wanted, now) {
            changes.push(LearnerChange::Add {
                log_id: log.log_id,
                node_id,
            });
        }
    }
    changes
}

/// Which learners have caught up with their chains, from polls of their tails (TAIL_HINT):
/// a learner within [`LEARNER_LAG_CLOSE`] records of the chain's tail is ready at once, one
/// within [`LEARNER_LAG_MAX`] once it stayed there for [`LEARNER_NEAR_POLLS`] polls in a
/// row; both answering in the log's current epoch.
#[derive(Debug, Default)]
pub struct LearnerWatch {
    /// Polls in a row within [`LEARNER_LAG_MAX`] (and not within [`LEARNER_LAG_CLOSE`]), by
    /// (log, learner).
    near: HashMap<(u64, u64), u32>,
}

impl LearnerWatch {
    /// Whether learner `node` of `log_id`, which answered `learner` (its durable next LSN,
    /// the epoch it learns in), has caught up with the chain whose tail answered `tail` (its
    /// committed and durable tail, its epoch), in the log's `epoch`. `None`: no answer.
    pub fn ready(
        &mut self,
        log_id: u64,
        node: u64,
        learner: Option<(u64, u64)>,
        tail: Option<(u64, u64)>,
        epoch: u64,
    ) -> bool {
        let lag = match (learner, tail) {
            (Some((next, e)), Some((end, t))) if e == epoch && t == epoch => {
                Some(end.saturating_sub(next))
            }
            _ => None,
        };
        let key = (log_id, node);
        match lag {
            Some(lag) if lag <= LEARNER_LAG_CLOSE => {
                self.near.remove(&key);
                true
            }
            Some(lag) if lag <= LEARNER_LAG_MAX => {
                let polls = self.near.entry(key).or_insert(0);
                *polls += 1;
                let ready = *polls >= LEARNER_NEAR_POLLS;
                if ready {
                    self.near.remove(&key);
                }
                ready
            }
            _ => {
                self.near.remove(&key);
                false
            }
        }
    }

    /// Forgets the learners `polled` does not name (promoted, dropped, or their log gone).
    pub fn keep(&mut self, polled: impl Fn(u64, u64) -> bool) {
        self.near.retain(|&(log_id, node), _| polled(log_id, node));
    }
}

/// The seals a new epoch can build on, from what each member answered (node, end, trim
/// point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsableSeals {
    /// The members to build on, as (node, end): those whose end is below another member's
    /// trim point are left out. Such a member lacks records that every member still holding
    /// them has trimmed (a new replica that was still being copied when the epoch was
    /// sealed, or whose copy a crash shortened): in the new chain it could get them from
    /// nobody (a member behind its successor takes records back from it, and they are
    /// trimmed there), so the log would stop. Left out, it is a free node that learns the log
    /// again. The members with the longest end are never left out (a trim point may lie
    /// beyond every record, as a trim of an empty log asks for).
    pub ends: Vec<(u64, u64)>,
    /// The greatest trim point among them (at most the longest end): every trim
    /// acknowledged in the sealed epoch is at or below it, since it is on every member. The
    /// new epoch starts trimmed there ([`ClusterState::extend`]), so that no member of it,
    /// a promoted learner that copied the log before a trim among them, brings trimmed
    /// records back.
    pub trim_point: u64,
}

/// The seals a new epoch can build on ([`UsableSeals`]), from what each member answered
/// (node, end, trim point).
pub fn usable_seals(seals: &[(u64, u64, u64)]) -> UsableSeals {
    let longest = seals.iter().map(|&(_, end, _)| end).max().unwrap_or(0);
    let trimmed = seals
        .iter()
        .map(|&(_, _, trim)| trim)
        .max()
        .unwrap_or(0)
        .min(longest);
    UsableSeals {
        ends: seals
            .iter()
            .filter(|&&(_, end, _)| end >= trimmed)
            .map(|&(node, end, _)| (node, end))
            .collect(),
        trim_point: trimmed,
    }
}

/// Why a call to a node did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The node could not be reached or did not answer in time.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The node answered with an error.
    #[error("{code}: {message}")]
    Refused {
        /// The code.
        code: ErrorCode,
        /// The code's argument.
        arg0: u64,
        /// The message.
        message: String,
    },
    /// The node answered something else.
    #[error("an unexpected answer: {0}")]
    Unexpected(String),
}

/// What a node answered to a seal: the end it sealed at and its trim point, or why not.
pub type Sealed = Result<(u64, u64), CallError>;

/// Seals `epoch` of `log_id` at the node whose shard 0 is at `addr` (with `shards` shards),
/// within `timeout`: the end it sealed at and its trim point.
pub fn seal(addr: &str, shards: u16, log_id: u64, epoch: u64, timeout: Duration) -> Sealed {
    let request = Request::Seal(SealRequest { log_id, epoch });
    call(
        addr,
        shards,
        log_id,
        &request,
        timeout,
        |response| match response {
            Response::Seal(s) if s.log_id == log_id && s.epoch == epoch => {
                Some((s.end_lsn, s.trim_point))
            }
            _ => None,
        },
    )
}

/// `log_id`'s tail at the node whose shard 0 is at `addr` (with `shards` shards), as that
/// replica knows it (TAIL_HINT: below it, records are committed and durable there), with the
/// epoch it serves; within `timeout`.
pub fn tail_hint(
    addr: &str,
    shards: u16,
    log_id: u64,
    timeout: Duration,
) -> Result<(u64, u64), CallError> {
    let request = Request::TailHint { log_id };
    call(
        addr,
        shards,
        log_id,
        &request,
        timeout,
        |response| match response {
            Response::TailHint(t) => Some((t.tail, t.epoch)),
            _ => None,
        },
    )
}

/// Sends `request` about `log_id` to the log's shard at the node whose shard 0 is at `addr`
/// (with `shards` shards), on a connection of its own, and turns the answer into the result
/// with `accept` (`None`: not an answer to it), all within `timeout`.
fn call<R>(
    addr: &str,
    shards: u16,
    log_id: u64,
    request: &Request<'_>,
    timeout: Duration,
    accept: impl FnOnce(Response<'_>) -> Option<R>,
) -> Result<R, CallError> {
    let mut target: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
    target.set_port(target.port() + (log_id % u64::from(shards.max(1))) as u16);
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_nodelay(true)?;
    let mut out = Vec::new();
    encode_request(&mut out, 1, &Request::Hello(HelloRequest::CURRENT));
    encode_request(&mut out, 2, request);
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&out)?;
    let limits = Limits::DEFAULT;
    let mut input = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut accept = Some(accept);
    loop {
        let mut consumed = 0;
        while let Some(frame) = parse_frame(&input[consumed..], &limits)
            .map_err(|e| CallError::Unexpected(e.to_string()))?
        {
            consumed += frame.frame_bytes();
            let response = decode_response(&frame, &limits)
                .map_err(|e| CallError::Unexpected(e.to_string()))?;
            match (frame.request_id, response) {
                (1, Response::Hello(_)) => {}
                (_, Response::Error(e)) => {
                    return Err(CallError::Refused {
                        code: e.code,
                        arg0: e.arg0,
                        message: e.message.to_string(),
                    })
                }
                (2, response) => {
                    let text = format!("{response:?}");
                    let accept = accept.take().expect("one answer to request 2");
                    return accept(response).ok_or(CallError::Unexpected(text));
                }
                (_, other) => return Err(CallError::Unexpected(format!("{other:?}"))),
            }
        }
        input.drain(..consumed);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CallError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        input.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::{Requested, Target, NODES_MAX};
    use crate::controller::StateError;
    use chainlog_net::cluster::MapLog;

    /// A member still being copied when the epoch was sealed (end below the others' trim
    /// point) is left out of the next chain; a trim point beyond every record leaves out
    /// nobody with the longest end.
    #[test]
    fn members_behind_the_trim_point_are_left_out_of_the_next_epoch() {
        assert_eq!(
            usable_seals(&[(1, 40, 30), (2, 40, 30), (3, 0, 0)]),
            UsableSeals {
                ends: vec![(1, 40), (2, 40)],
                trim_point: 30
            }
        );
        assert_eq!(
            usable_seals(&[(1, 40, 30), (3, 35, 0)]),
            UsableSeals {
                ends: vec![(1, 40), (3, 35)],
                trim_point: 30
            }
        );
        // A trim point beyond every record: the new epoch starts trimmed at the end.
        assert_eq!(
            usable_seals(&[(4, 0, 1), (1, 0, 1)]),
            UsableSeals {
                ends: vec![(4, 0), (1, 0)],
                trim_point: 0
            }
        );
    }

    fn cluster(nodes: u64, now: Instant) -> ClusterState {
        let mut state = ClusterState::new(Duration::from_millis(300));
        for id in 1..=nodes {
            state
                .register(id, &format!("10.0.0.{id}:7400"), 1, "", "", now)
                .expect("register");
        }
        state
    }

    #[test]
    fn a_seal_begun_before_a_restart_is_finished_after_it() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let version = state.version();
        assert_eq!(state.begin_seal(log_id, 1), Ok(true), "news: persist it");
        assert_eq!(state.begin_seal(log_id, 1), Ok(false), "known already");
        assert_eq!(state.version(), version, "not part of the map");
        assert!(matches!(
            state.begin_seal(log_id, 7),
            Err(crate::controller::StateError::StaleEpoch { current: 1, .. })
        ));
        // The controller restarts (its state reloaded) with every member alive again: the
        // sealed epoch takes no appends, so it is still reconfigured.
        let json = serde_json::to_string(&state).expect("serialize");
        let mut state: ClusterState = serde_json::from_str(&json).expect("deserialize");
        let later = t0 + Duration::from_millis(500);
        for &id in &chain {
            state
                .register(id, &format!("10.0.0.{id}:7400"), 1, "", "", later)
                .expect("register");
        }
        let plans = plan(&state, later);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].why, Why::Sealing);
        assert_eq!(plans[0].seal_at, chain);
        let sealed: Vec<(u64, u64)> = chain.iter().map(|&id| (id, 4)).collect();
        let epoch = state
            .extend(log_id, 1, &sealed, 0, Target::Auto, later)
            .expect("extend");
        assert_eq!(epoch.chain, chain);
        assert_eq!(state.log(log_id).expect("log").sealing, None, "done");
        assert!(plan(&state, later).is_empty());
    }

    /// Every acknowledged trim is on every member that sealed: the next epoch starts trimmed
    /// at the greatest trim point among the seals, and never below the epoch before's (its
    /// members, a promoted learner among them, may have sealed below it).
    #[test]
    fn an_epoch_starts_trimmed_at_the_seals_trim_point_and_never_lower() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let usable = usable_seals(&[(chain[0], 40, 35), (chain[1], 40, 35), (chain[2], 38, 20)]);
        let epoch = state
            .extend(log_id, 1, &usable.ends, usable.trim_point, Target::Auto, t0)
            .expect("extend");
        assert_eq!((epoch.start_lsn, epoch.trim_lsn), (40, 35));
        assert_eq!(MapLog::from(state.log(log_id).expect("log")).trim_lsn, 35);
        let usable = usable_seals(&[(chain[2], 40, 11)]);
        let epoch = state
            .extend(log_id, 2, &usable.ends, usable.trim_point, Target::Auto, t0)
            .expect("extend");
        assert_eq!(
            (epoch.start_lsn, epoch.trim_lsn),
            (40, 35),
            "not back to 11"
        );
    }

    /// Applies every learner change `state` needs at `now`; returns them.
    fn tend(state: &mut ClusterState, now: Instant) -> Vec<LearnerChange> {
        let changes = learner_changes(state, now);
        for change in &changes {
            change.apply(state, now).expect("apply");
        }
        changes
    }

    /// After node losses the learners that grow a chain back are picked by the placement's
    /// zone rule against what is left of the chain: in the zones it lost, not in the zone of
    /// its survivor, even though the nodes there are the lowest ids, and never two in one zone.
    #[test]
    fn learners_after_a_node_loss_go_to_the_zones_the_chain_lost() {
        let t0 = Instant::now();
        let mut state = ClusterState::new(Duration::from_millis(300));
        let zones = ["a", "b", "c", "c", "c", "a", "b"];
        for (id, zone) in (1..).zip(zones) {
            state
                .register(id, &format!("10.0.0.{id}:7400"), 1, zone, "", t0)
                .expect("register");
        }
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        assert_eq!(chain, [1, 2, 3], "zones a, b and c");
        // The head and the middle fall silent; the tail seals alone and is the chain.
        let later = t0 + Duration::from_millis(500);
        heartbeats(&mut state, later, &chain[..2]);
        state
            .extend(log_id, 1, &[(3, 0)], 0, Target::Auto, later)
            .expect("extend");
        assert_eq!(
            tend(&mut state, later),
            [6, 7].map(|node_id| LearnerChange::Add { log_id, node_id }),
            "a and b, not 4 and 5 of c"
        );
    }

    #[test]
    fn a_dead_member_is_sealed_out_and_a_spare_learns_then_takes_the_tail() {
        let t0 = Instant::now();
        let mut state = cluster(4, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        assert_eq!(chain.len(), 3);
        assert!(
            plan(&state, t0).is_empty(),
            "every member alive, no spare needed"
        );
        assert!(learner_changes(&state, t0).is_empty(), "the chain is full");
        // Everyone but the head heartbeats on; the head falls silent.
        let later = t0 + Duration::from_millis(500);
        for &id in &chain[1..] {
            state.heartbeat(id, 0, later).expect("heartbeat");
        }
        let spare = (1..=4).find(|id| !chain.contains(id)).expect("a spare");
        state.heartbeat(spare, 0, later).expect("heartbeat");
        assert!(
            learner_changes(&state, later).is_empty(),
            "the dead head is still in the chain: no learner before the extend"
        );
        let plans = plan(&state, later);
        assert_eq!(
            plans,
            vec![Plan {
                log_id,
                epoch: 1,
                seal_at: chain[1..].to_vec(),
                why: Why::Failed(vec![chain[0]]),
                chain: None,
                last_heard: Some(t0),
            }]
        );
        // The middle sealed at 10, the tail at 8: the new epoch starts at 10, the old middle
        // leads, and nobody joins inside the epoch (the spare would copy the whole log there).
        let version = state.version();
        let epoch = state
            .extend(
                log_id,
                1,
                &[(chain[1], 10), (chain[2], 8)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        assert_eq!(epoch.epoch, 2);
        assert_eq!(epoch.start_lsn, 10);
        assert_eq!(epoch.chain, chain[1..].to_vec(), "the survivors only");
        assert_eq!(state.version(), version + 1);
        // One reconfiguration per epoch: a second one from epoch 1 loses.
        assert!(matches!(
            state.extend(log_id, 1, &[(chain[1], 10)], 0, Target::Auto, later),
            Err(StateError::StaleEpoch { current: 2, .. })
        ));
        // The short chain gets the spare as a learner: a change of the map, no seal.
        assert!(plan(&state, later).is_empty());
        assert_eq!(
            tend(&mut state, later),
            vec![LearnerChange::Add {
                log_id,
                node_id: spare
            }]
        );
        assert_eq!(state.version(), version + 2);
        assert_eq!(state.log(log_id).expect("log").learners, vec![spare]);
        assert_eq!(
            state.map(later).log(log_id).expect("log").learners,
            vec![spare]
        );
        assert!(tend(&mut state, later).is_empty(), "one is enough for rf 3");
        // Not promoted until it has caught up in the current epoch.
        assert!(plan(&state, later).is_empty(), "not ready");
        state.set_ready(log_id, spare, 1, true);
        assert!(
            plan(&state, later).is_empty(),
            "ready in an epoch that ended"
        );
        state.set_ready(log_id, spare, 2, false);
        assert!(plan(&state, later).is_empty(), "behind");
        state.set_ready(log_id, spare, 2, true);
        let plans = plan(&state, later);
        assert_eq!(
            plans,
            vec![Plan {
                log_id,
                epoch: 2,
                seal_at: chain[1..].to_vec(),
                why: Why::Promote(vec![spare]),
                chain: None,
                last_heard: None,
            }]
        );
        assert_eq!(plans[0].why.label(), "promote");
        // Sealed at 70 and 70: the learner joins at the tail, and is a learner no more.
        let epoch = state
            .extend(
                log_id,
                2,
                &[(chain[1], 70), (chain[2], 70)],
                0,
                Target::Promote(&[spare]),
                later,
            )
            .expect("extend");
        assert_eq!(epoch.chain, vec![chain[1], chain[2], spare], "back at rf 3");
        assert_eq!(epoch.start_lsn, 70);
        assert!(state.log(log_id).expect("log").learners.is_empty());
        assert!(plan(&state, later).is_empty());
        assert!(learner_changes(&state, later).is_empty());
    }

    #[test]
    fn without_a_spare_the_log_runs_short_and_grows_back_when_a_node_returns() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let later = t0 + Duration::from_millis(500);
        for &id in &chain[..2] {
            state.heartbeat(id, 0, later).expect("heartbeat");
        }
        let epoch = state
            .extend(
                log_id,
                1,
                &[(chain[0], 5), (chain[1], 5)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        assert_eq!(epoch.chain, chain[..2].to_vec(), "no spare: two replicas");
        assert!(plan(&state, later).is_empty(), "nothing to add");
        assert!(learner_changes(&state, later).is_empty(), "nobody to learn");
        // The lost node comes back: it learns the log, and joins once it has caught up.
        state
            .register(chain[2], "10.0.0.3:7400", 1, "", "", later)
            .expect("register");
        assert!(plan(&state, later).is_empty(), "it has not copied the log");
        assert_eq!(
            tend(&mut state, later),
            vec![LearnerChange::Add {
                log_id,
                node_id: chain[2]
            }]
        );
        state.set_ready(log_id, chain[2], 2, true);
        let plans = plan(&state, later);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].why, Why::Promote(vec![chain[2]]));
        assert_eq!(plans[0].seal_at, chain[..2].to_vec());
        let epoch = state
            .extend(
                log_id,
                2,
                &[(chain[0], 9), (chain[1], 9)],
                0,
                Target::Promote(&[chain[2]]),
                later,
            )
            .expect("extend");
        assert_eq!(epoch.chain, chain, "back at rf 3");
        assert_eq!(epoch.start_lsn, 9);
    }

    #[test]
    fn dead_drained_and_chained_learners_are_dropped_and_replaced() {
        let t0 = Instant::now();
        let mut state = cluster(7, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let others: Vec<u64> = (1..=7).filter(|id| !chain.contains(id)).collect();
        let later = t0 + Duration::from_millis(500);
        heartbeats(&mut state, later, &[chain[0]]);
        state
            .extend(
                log_id,
                1,
                &[(chain[1], 3), (chain[2], 3)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        let added = tend(&mut state, later);
        let [LearnerChange::Add { node_id: first, .. }] = added[..] else {
            panic!("one learner added: {added:?}");
        };
        assert!(others.contains(&first));
        assert_eq!(
            state.add_learner(log_id, first, later),
            Err(StateError::LearnerRefused {
                log_id,
                node_id: first,
                reason: "it is a learner of it already"
            })
        );
        assert!(matches!(
            state.add_learner(log_id, chain[1], later),
            Err(StateError::LearnerRefused { .. })
        ));
        // It dies: it is dropped (the node deletes its copy), and another learns instead.
        let even_later = later + Duration::from_millis(400);
        heartbeats(&mut state, even_later, &[chain[0], first]);
        state.set_ready(log_id, first, 2, true);
        let version = state.version();
        let changes = tend(&mut state, even_later);
        assert_eq!(
            changes[0],
            LearnerChange::Drop {
                log_id,
                node_id: first,
                why: "not alive"
            }
        );
        let LearnerChange::Add {
            node_id: second, ..
        } = changes[1]
        else {
            panic!("a learner added: {changes:?}");
        };
        assert_ne!(second, first);
        assert_eq!(changes.len(), 2);
        assert_eq!(state.version(), version + 2);
        assert!(
            plan(&state, even_later).is_empty(),
            "a dropped learner is never promoted"
        );
        // The second is drained: dropped too.
        state.drain(second, true).expect("drain");
        let changes = tend(&mut state, even_later);
        assert_eq!(
            changes[0],
            LearnerChange::Drop {
                log_id,
                node_id: second,
                why: "drained"
            }
        );
        // An operator fills the chain with another node: the learner is not needed any more.
        let learner = state.log(log_id).expect("log").learners[0];
        let other = (1..=7)
            .find(|&n| !chain.contains(&n) && ![first, second, learner].contains(&n))
            .expect("another node");
        let mut filled = state.clone();
        filled
            .extend(
                log_id,
                2,
                &[(chain[1], 8), (chain[2], 8)],
                0,
                Target::Chain(&[chain[1], chain[2], other]),
                even_later,
            )
            .expect("extend");
        assert_eq!(
            tend(&mut filled, even_later),
            vec![LearnerChange::Drop {
                log_id,
                node_id: learner,
                why: "not needed"
            }]
        );
        // An operator puts the current learner in the chain: it is no learner any more.
        let asked = [chain[1], chain[2], learner];
        let epoch = state
            .extend(
                log_id,
                2,
                &[(chain[1], 8), (chain[2], 8)],
                0,
                Target::Chain(&asked),
                even_later,
            )
            .expect("extend");
        assert_eq!(epoch.chain, asked);
        assert!(state.log(log_id).expect("log").learners.is_empty());
        assert_eq!(state.check(), Ok(()));
    }

    #[test]
    fn a_restarted_controller_keeps_its_learners_but_asks_again_whether_they_are_ready() {
        let t0 = Instant::now();
        let mut state = cluster(4, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let later = t0 + Duration::from_millis(500);
        heartbeats(&mut state, later, &[chain[2]]);
        state
            .extend(
                log_id,
                1,
                &[(chain[0], 4), (chain[1], 4)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        tend(&mut state, later);
        let learners = state.log(log_id).expect("log").learners.clone();
        assert_eq!(learners.len(), 1);
        state.set_ready(log_id, learners[0], 2, true);
        assert_eq!(plan(&state, later).len(), 1);
        let json = serde_json::to_string(&state).expect("serialize");
        let mut reloaded: ClusterState = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(reloaded.check(), Ok(()));
        assert_eq!(reloaded.log(log_id).expect("log").learners, learners);
        assert_eq!(reloaded.version(), state.version());
        heartbeats(&mut reloaded, later, &[chain[2]]);
        assert!(
            plan(&reloaded, later).is_empty(),
            "readiness is not durable: asked again first"
        );
        assert!(
            learner_changes(&reloaded, later).is_empty(),
            "still learning"
        );
        reloaded.set_ready(log_id, learners[0], 2, true);
        assert_eq!(
            plan(&reloaded, later)[0].why,
            Why::Promote(learners.clone())
        );
    }

    /// A learner is ready at once close to its tail, within the wider lag only after it
    /// stayed there for polls in a row, and only in the log's current epoch.
    #[test]
    fn a_learner_is_ready_close_to_its_tail_or_near_it_for_long_enough() {
        let mut watch = LearnerWatch::default();
        let mut ready = |learner, tail, epoch| watch.ready(7, 2, Some(learner), Some(tail), epoch);
        assert!(ready((100, 3), (100, 3), 3));
        assert!(ready((0, 3), (LEARNER_LAG_CLOSE, 3), 3));
        assert!(!ready((100, 2), (100, 3), 3), "an old epoch");
        assert!(!ready((100, 3), (100, 2), 3), "the tail is behind");
        assert!(!ready((100, 3), (100, 3), 4), "the log moved on");
        for _ in 1..LEARNER_NEAR_POLLS {
            assert!(!ready((0, 3), (LEARNER_LAG_MAX, 3), 3));
        }
        assert!(
            ready((0, 3), (LEARNER_LAG_MAX, 3), 3),
            "near for long enough"
        );
        for _ in 1..LEARNER_NEAR_POLLS {
            assert!(!ready((0, 3), (LEARNER_LAG_MAX, 3), 3));
        }
        assert!(
            !ready((0, 3), (LEARNER_LAG_MAX + 1, 3), 3),
            "too far: counted again"
        );
        assert!(!ready((0, 3), (LEARNER_LAG_MAX, 3), 3));
        assert!(!watch.ready(7, 2, None, Some((0, 3)), 3), "no answer");
        watch.keep(|_, _| false);
        assert!(watch.near.is_empty());
    }

    #[test]
    fn learners_count_as_load_when_spares_are_ranked() {
        let t0 = Instant::now();
        let mut state = cluster(5, t0);
        let a = state.create_log("a", 3, t0).expect("create").log_id;
        let chain = state.log(a).expect("log").current().chain.clone();
        let free: Vec<u64> = (1..=5).filter(|id| !chain.contains(id)).collect();
        assert_eq!(free.len(), 2);
        let later = t0 + Duration::from_millis(500);
        heartbeats(&mut state, later, &[chain[0]]);
        state
            .extend(
                a,
                1,
                &[(chain[1], 0), (chain[2], 0)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        tend(&mut state, later);
        let learner = state.log(a).expect("log").learners[0];
        let other = free.iter().copied().find(|&n| n != learner).expect("other");
        assert_eq!(state.pick(&chain, 2, later), vec![other, learner]);
    }

    #[test]
    fn a_chain_with_no_live_member_waits_and_a_seal_nobody_answered_extends_nothing() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let log_id = state.create_log("solo", 1, t0).expect("create").log_id;
        let later = t0 + Duration::from_secs(5);
        assert!(plan(&state, later).is_empty(), "its only replica is gone");
        assert!(matches!(
            state.extend(log_id, 1, &[], 0, Target::Auto, later),
            Err(StateError::NoSurvivor { .. })
        ));
    }

    /// `state` with every node heartbeating at `now` but those in `silent`.
    fn heartbeats(state: &mut ClusterState, now: Instant, silent: &[u64]) {
        let ids: Vec<u64> = state.nodes().map(|n| n.node_id).collect();
        for id in ids.into_iter().filter(|id| !silent.contains(id)) {
            state.heartbeat(id, 0, now).expect("heartbeat");
        }
    }

    #[test]
    fn an_operators_chain_is_checked_kept_durably_and_installed() {
        let t0 = Instant::now();
        let mut state = cluster(5, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let spare = (1..=5).find(|id| !chain.contains(id)).expect("a spare");
        let refused = |state: &mut ClusterState, asked: Vec<u64>| {
            let before = state.clone();
            let e = state
                .request(log_id, None, Some(asked), t0)
                .expect_err("refused");
            assert_eq!(*state, before, "a refused request changes nothing");
            e
        };
        // New nodes join at the tail, kept ones keep their order, something is kept, nodes
        // exist, at most rf.
        let e = refused(&mut state, vec![spare, chain[0], chain[1]]);
        assert!(e.to_string().contains("new nodes join at the tail"), "{e}");
        let e = refused(&mut state, vec![chain[1], chain[0]]);
        assert!(e.to_string().contains("stay in their order"), "{e}");
        let others: Vec<u64> = (1..=5).filter(|id| !chain.contains(id)).collect();
        let e = refused(&mut state, others);
        assert!(e.to_string().contains("keeps no member"), "{e}");
        assert_eq!(
            refused(&mut state, vec![chain[0], 9]),
            StateError::UnknownNode { node_id: 9 }
        );
        assert!(matches!(
            refused(&mut state, vec![chain[0], chain[1], chain[2], spare]),
            StateError::ChainTooLong { len: 4, rf: 3, .. }
        ));
        assert!(matches!(
            state.request(log_id, Some(7), None, t0),
            Err(StateError::StaleEpoch { current: 1, .. })
        ));
        // Drop the head, add the spare at the tail.
        let asked = vec![chain[1], chain[2], spare];
        let requested = state
            .request(log_id, Some(1), Some(asked.clone()), t0)
            .expect("a fine chain");
        assert_eq!(
            requested,
            Requested {
                epoch: 1,
                chain: Some(asked.clone())
            }
        );
        // The same again is fine; another one while it is pending is not.
        state
            .request(log_id, None, Some(asked.clone()), t0)
            .expect("the same request");
        let e = refused(&mut state, vec![chain[0], chain[1]]);
        assert!(e.to_string().contains("under way"), "{e}");
        // It survives a restart (it is durable state) and makes the plan.
        let json = serde_json::to_string(&state).expect("serialize");
        let reloaded: ClusterState = serde_json::from_str(&json).expect("deserialize");
        let reloaded_log = reloaded.log(log_id).expect("log");
        assert_eq!(reloaded_log.pending_request(), Some(&requested));
        let plans = plan(&state, t0);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].why, Why::Requested);
        assert_eq!(plans[0].chain.as_ref(), Some(&asked));
        assert_eq!(plans[0].seal_at, chain);
        // The head sealed at 12 (two records nobody else has), the others at 10.
        let sealed = [(chain[0], 12), (chain[1], 10), (chain[2], 10)];
        let epoch = state
            .extend(log_id, 1, &sealed, 0, Target::Chain(&asked), t0)
            .expect("extend");
        assert_eq!(epoch.chain, asked);
        assert_eq!(
            epoch.start_lsn, 10,
            "the kept members' end: the head's last two were never acknowledged"
        );
        assert_eq!(state.log(log_id).expect("log").pending_request(), None);
        assert!(plan(&state, t0).is_empty());
    }

    #[test]
    fn a_chain_whose_kept_member_did_not_seal_is_refused_after_the_seal() {
        let t0 = Instant::now();
        let mut state = cluster(4, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let asked = chain[..2].to_vec();
        state
            .request(log_id, None, Some(asked.clone()), t0)
            .expect("request");
        let before = state.clone();
        let e = state
            .extend(
                log_id,
                1,
                &[(chain[0], 5), (chain[2], 5)],
                0,
                Target::Chain(&asked),
                t0,
            )
            .expect_err("chain[1] did not seal");
        assert!(e.to_string().contains("did not seal"), "{e}");
        assert_eq!(state, before);
        // The controller then extends as it would have (the epoch is sealed: it must go on).
        let epoch = state
            .extend(
                log_id,
                1,
                &[(chain[0], 5), (chain[2], 5)],
                0,
                Target::Auto,
                t0,
            )
            .expect("extend");
        assert_eq!(&epoch.chain[..2], &[chain[0], chain[2]]);
    }

    #[test]
    fn a_replica_still_catching_up_cannot_carry_the_log_alone() {
        // Epoch 2 started at 100 with a new replica at the tail, which had copied up to 40
        // when the other two died. Before: the controller made it the log's only replica,
        // from LSN 100, without the records below that it never got.
        let t0 = Instant::now();
        let mut state = cluster(4, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        let later = t0 + Duration::from_millis(500);
        heartbeats(&mut state, later, &[chain[0]]);
        let spare = (1..=4).find(|id| !chain.contains(id)).expect("a spare");
        // An operator's chain puts a node new to the log straight in the chain.
        let epoch = state
            .extend(
                log_id,
                1,
                &[(chain[1], 100), (chain[2], 100)],
                0,
                Target::Chain(&[chain[1], chain[2], spare]),
                later,
            )
            .expect("extend");
        let joiner = epoch.chain[2];
        assert_eq!(joiner, spare);
        let before = state.clone();
        let e = state
            .extend(log_id, 2, &[(joiner, 40)], 0, Target::Auto, later)
            .expect_err("the joiner alone lacks records");
        assert_eq!(
            e,
            StateError::Behind {
                log_id,
                epoch: 2,
                start_lsn: 100,
                longest: 40
            }
        );
        assert_eq!(state, before, "the log waits for a replica that has it all");
        // With a full replica among those that sealed, the joiner stays, behind it.
        let epoch = state
            .extend(
                log_id,
                2,
                &[(chain[1], 130), (joiner, 40)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        assert_eq!(&epoch.chain[..2], &[chain[1], joiner]);
        assert_eq!(epoch.start_lsn, 130);
    }

    #[test]
    fn a_drained_node_leaves_every_chain_it_can_and_gets_no_new_one() {
        let t0 = Instant::now();
        let mut state = cluster(4, t0);
        let three = state.create_log("three", 3, t0).expect("create").log_id;
        let single = state.create_log("single", 1, t0).expect("create").log_id;
        let chain = state.log(three).expect("log").current().chain.clone();
        let lone = state.log(single).expect("log").current().chain[0];
        let head = chain[0];
        let version = state.version();
        assert_eq!(state.drain(head, true), Ok(version + 1));
        assert_eq!(state.drain(head, true), Ok(version + 1), "no change");
        assert_eq!(
            state.drain(9, true),
            Err(StateError::UnknownNode { node_id: 9 })
        );
        assert!(state.map(t0).node(head).expect("node").drained);
        assert!(!state.pick(&[], NODES_MAX, t0).contains(&head));
        let plans = plan(&state, t0);
        let moves: Vec<(u64, Why)> = plans.iter().map(|p| (p.log_id, p.why.clone())).collect();
        assert!(
            moves.contains(&(three, Why::Drain(vec![head]))),
            "{moves:?}"
        );
        if lone == head {
            assert!(
                !moves.iter().any(|(log, _)| *log == single),
                "an rf 1 log has nowhere to go: {moves:?}"
            );
        }
        // The drained head sealed longest (records only it has): the new epoch starts at the
        // kept members' end, without it; a spare that is not drained learns the log.
        let epoch = state
            .extend(
                three,
                1,
                &[(head, 12), (chain[1], 10), (chain[2], 9)],
                0,
                Target::Auto,
                t0,
            )
            .expect("extend");
        assert_eq!(epoch.chain, &chain[1..]);
        assert_eq!(epoch.start_lsn, 10);
        assert!(!plan(&state, t0).iter().any(|p| p.log_id == three));
        let learners: Vec<LearnerChange> = learner_changes(&state, t0)
            .into_iter()
            .filter(|c| matches!(c, LearnerChange::Add { log_id, .. } if *log_id == three))
            .collect();
        assert_eq!(learners.len(), 1);
        assert!(!matches!(learners[0], LearnerChange::Add { node_id, .. } if node_id == head));
        // New logs are not placed on it either.
        for i in 0..4 {
            let id = state
                .create_log(&format!("new-{i}"), 3, t0)
                .expect("create")
                .log_id;
            assert!(!state.log(id).expect("log").current().chain.contains(&head));
        }
        state.drain(head, false).expect("undrain");
        assert!(state.pick(&[], NODES_MAX, t0).contains(&head));
    }

    #[test]
    fn a_drain_waits_while_only_the_drained_node_holds_every_record() {
        let t0 = Instant::now();
        let mut state = cluster(4, t0);
        let log_id = state.create_log("orders", 2, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        // Epoch 2 from 50: the head kept, a new node (an operator's) copying at the tail.
        let later = t0 + Duration::from_millis(500);
        heartbeats(&mut state, later, &[chain[1]]);
        let spare = (1..=4).find(|id| !chain.contains(id)).expect("a spare");
        let epoch = state
            .extend(
                log_id,
                1,
                &[(chain[0], 50)],
                0,
                Target::Chain(&[chain[0], spare]),
                later,
            )
            .expect("extend");
        let joiner = epoch.chain[1];
        heartbeats(&mut state, later, &[]);
        state.drain(chain[0], true).expect("drain");
        // The joiner is at 20: moving the log off the head now would lose 20..50, so the
        // controller's chain keeps the head, and the drain is tried again later.
        let epoch = state
            .extend(
                log_id,
                2,
                &[(chain[0], 60), (joiner, 20)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        assert_eq!(epoch.chain, vec![chain[0], joiner]);
        assert_eq!(epoch.start_lsn, 60);
        // Once it has caught up, the head goes.
        let epoch = state
            .extend(
                log_id,
                3,
                &[(chain[0], 70), (joiner, 70)],
                0,
                Target::Auto,
                later,
            )
            .expect("extend");
        assert_eq!(epoch.chain[0], joiner);
        assert!(!epoch.chain.contains(&chain[0]));
    }
}
