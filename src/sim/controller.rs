//! The simulated controller: the real controller's decisions ([`crate::controller::reconfig`]
//! and [`ClusterState`]) driven as `crate::controller::server` drives them, with the
//! simulation's time and network. It hears a heartbeat from every node that runs, is not
//! paused and can reach it (both directions), every [`HEARTBEAT_EVERY_US`], and answers with
//! the map when the node has not applied the newest (the node's control thread fetches it);
//! every [`RECONFIGURE_EVERY_US`] it asks [`plan`] which logs to reconfigure and carries the
//! plans out one after the other: it records the intent ([`ClusterState::begin_seal`]), sends
//! SEAL to the log's shard on each live member over a connection of its own (one that takes
//! longer than [`SEAL_TIMEOUT_US`], or that fails, leaves that member out), then starts the
//! next epoch from the members that sealed ([`ClusterState::extend`]). Each round it also
//! adds and drops learners ([`learner_changes`]: the map changes, nobody is sealed), and, as
//! the real controller's learner watch does, asks each learner and its log's chain tail for
//! their tails (TAIL_HINT, one connection each, the same timeout), recording the learners
//! that caught up ([`ClusterState::set_ready`]); [`plan`] promotes those ([`Why::Promote`]).
//!
//! It can be killed and restarted: what the real controller persists (the state, with the
//! seal it began and the learners) survives, as if written to its file and read back; its
//! heartbeats, its SEALs and TAIL_HINTs in flight, which learners it found ready and its
//! retry timers do not. After a restart it waits a liveness timeout
//! before it plans (a node it has not heard from yet is not dead), then finishes any seal it
//! began ([`Why::Sealing`]). It can be paused (SIGSTOP: nothing runs, its connections keep
//! receiving) and partitioned from nodes (it stops hearing them: they look dead to it, and it
//! reconfigures their chains, which is a false suspicion a correct cluster survives).
//!
//! The simplifications: the state's file cannot fail; a node starting gets the current map at
//! once (a real one fetches it from the controller on its first heartbeat); clients are told
//! the new chains at once (a real one learns them from the map when its node refuses it).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chainlog_net::{Request, Response, SealRequest};

use super::conn::{ClientConn, Link};
use super::world::{HostId, World};
use crate::controller::reconfig::{
    learner_changes, plan, usable_seals, LearnerChange, LearnerWatch, Plan, Why,
};
use crate::controller::state::Target;
use crate::controller::{ClusterState, StateError};

/// The controller's machine.
pub(crate) const HOST: HostId = 900;
/// How long after its last heartbeat a node counts as alive (the real default is 500 ms).
pub(crate) const LIVENESS_US: u64 = 300_000;
/// How often a node heartbeats (`crate::node::control::HEARTBEAT_EVERY`).
const HEARTBEAT_EVERY_US: u64 = 50_000;
/// How often the controller plans (`server::RECONFIGURE_EVERY`).
const RECONFIGURE_EVERY_US: u64 = 20_000;
/// How long a SEAL may take (`server::SEAL_TIMEOUT`).
const SEAL_TIMEOUT_US: u64 = 500_000;
/// How long a log whose reconfiguration could not be done is left alone
/// (`server::RETRY_AFTER`).
const RETRY_AFTER_US: u64 = 1_000_000;

/// What the controller knows of a node to hear it and reach it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeView {
    pub(crate) id: u64,
    pub(crate) host: HostId,
    /// Its process runs and is not paused (it heartbeats).
    pub(crate) running: bool,
    /// The newest map version it applied.
    pub(crate) applied: u64,
    /// Where its shard 0 serves (shard `i` at port + `i`), and its shards.
    pub(crate) addr: SocketAddr,
    pub(crate) shards: u16,
}

/// What the controller did in a run, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reconfigurations {
    /// Epochs started after a member failed (or looked failed).
    pub failed: u64,
    /// Epochs started to finish a seal begun before the controller restarted (or whose
    /// SEALs reached no member).
    pub sealing: u64,
    /// Epochs started to grow a short chain back (learners that caught up, at the tail).
    pub promoted: u64,
    /// Nodes made learners of a log.
    pub learners_added: u64,
    /// Learners dropped (not alive, drained, not needed, or in the chain).
    pub learners_dropped: u64,
    /// Reconfigurations begun (the seal recorded).
    pub begun: u64,
    /// SEALs that failed or timed out.
    pub seals_failed: u64,
    /// Extends refused because no kept member held every record (tried again later).
    pub behind: u64,
    /// Reconfigurations another won (the epoch moved on).
    pub lost: u64,
}

impl std::ops::AddAssign for Reconfigurations {
    fn add_assign(&mut self, o: Reconfigurations) {
        self.failed += o.failed;
        self.sealing += o.sealing;
        self.promoted += o.promoted;
        self.learners_added += o.learners_added;
        self.learners_dropped += o.learners_dropped;
        self.begun += o.begun;
        self.seals_failed += o.seals_failed;
        self.behind += o.behind;
        self.lost += o.lost;
    }
}

/// One SEAL or TAIL_HINT out, on its own connection.
#[derive(Debug)]
struct Call {
    node_id: u64,
    addr: SocketAddr,
    conn: ClientConn,
    request: Option<u64>,
    started_us: u64,
    /// SEAL: the end it sealed at and the epoch; TAIL_HINT: the tail and epoch; or why not.
    result: Option<Result<(u64, u64), String>>,
}

impl Call {
    /// A call to `node`'s shard of `log_id`, on a connection of the controller's own.
    fn new(world: &mut World, node: &NodeView, log_id: u64, now_us: u64) -> Call {
        let mut addr = node.addr;
        addr.set_port(addr.port() + (log_id % u64::from(node.shards)) as u16);
        Call {
            node_id: node.id,
            addr,
            conn: ClientConn::new(world, HOST),
            request: None,
            started_us: now_us,
            result: None,
        }
    }
}

/// The reconfiguration under way.
#[derive(Debug)]
struct Work {
    plan: Plan,
    calls: Vec<Call>,
}

/// A log's learners and chain tail being asked for their tails.
#[derive(Debug)]
struct Poll {
    log_id: u64,
    epoch: u64,
    tail: Call,
    learners: Vec<Call>,
}

/// What a step of the controller did that the simulation acts on.
#[derive(Debug, Default)]
pub(crate) struct Step {
    /// The map changed (an epoch started): new chains for the clients.
    pub(crate) changed: bool,
    /// Nodes that fetch the map now (they heartbeated and are behind it).
    pub(crate) fetch: Vec<u64>,
    /// A reconfiguration began (its SEALs go out now).
    pub(crate) began: bool,
}

/// The simulated controller. See the module documentation.
#[derive(Debug)]
pub(crate) struct SimController {
    /// Its process runs (false: killed, until restarted).
    pub(crate) up: bool,
    /// Paused (SIGSTOP) until then.
    pub(crate) paused_until: Option<u64>,
    born: Instant,
    started_us: u64,
    next_heartbeat_us: u64,
    next_round_us: u64,
    /// The current round's plans not carried out yet.
    queue: VecDeque<Plan>,
    /// Logs left alone until then (their last reconfiguration could not be done).
    retry_at: BTreeMap<u64, u64>,
    work: Option<Work>,
    /// The learner polls of the current round (at most one per log).
    polls: Vec<Poll>,
    /// Which learners caught up (kept in memory only, as the controller's).
    watch: LearnerWatch,
    pub(crate) counts: Reconfigurations,
}

impl SimController {
    /// A controller that runs from time 0, `born` being that time as an `Instant` (the
    /// state's nodes registered then).
    pub(crate) fn new(born: Instant) -> SimController {
        SimController {
            up: true,
            paused_until: None,
            born,
            started_us: 0,
            next_heartbeat_us: 0,
            next_round_us: 0,
            queue: VecDeque::new(),
            retry_at: BTreeMap::new(),
            work: None,
            polls: Vec::new(),
            watch: LearnerWatch::default(),
            counts: Reconfigurations::default(),
        }
    }

    /// The state's time for virtual time `us`.
    pub(crate) fn instant(&self, us: u64) -> Instant {
        self.born + Duration::from_micros(us)
    }

    /// A reconfiguration is under way (seals out).
    pub(crate) fn busy(&self) -> bool {
        self.work.is_some()
    }

    /// Runs, is not paused, and is done with what it plans (for the end of a run).
    pub(crate) fn idle(&self, now_us: u64) -> bool {
        self.up
            && self.paused_until.is_none_or(|t| t <= now_us)
            && self.work.is_none()
            && self.queue.is_empty()
    }

    /// kill -9: what is not durable goes (the state stays as persisted: the caller keeps
    /// it); SEALs in flight are forgotten (their connections close).
    pub(crate) fn kill(&mut self, world: &mut World) {
        if let Some(work) = self.work.take() {
            for mut call in work.calls {
                call.conn.drop_conn(world);
            }
        }
        for poll in self.polls.drain(..) {
            for mut call in std::iter::once(poll.tail).chain(poll.learners) {
                call.conn.drop_conn(world);
            }
        }
        self.queue.clear();
        self.retry_at.clear();
        self.watch = LearnerWatch::default();
        self.paused_until = None;
        self.up = false;
    }

    /// Starts the process again: the state is read back from its file (what is not durable,
    /// heartbeats and applied versions, starts empty).
    pub(crate) fn restart(&mut self, state: &mut ClusterState, now_us: u64) {
        assert!(!self.up, "the controller runs");
        let json = serde_json::to_string(&*state).expect("the state serializes");
        *state = serde_json::from_str::<ClusterState>(&json)
            .expect("the state reads back")
            .with_liveness(Duration::from_micros(LIVENESS_US));
        assert_eq!(state.check(), Ok(()), "the persisted state is consistent");
        self.up = true;
        self.started_us = now_us;
        self.next_heartbeat_us = now_us;
        self.next_round_us = now_us;
    }

    /// One step at `now_us`: hears the nodes it can, plans, moves the reconfiguration under
    /// way along.
    pub(crate) fn step(
        &mut self,
        world: &mut World,
        state: &mut ClusterState,
        nodes: &[NodeView],
        now_us: u64,
    ) -> Step {
        let mut step = Step::default();
        if !self.up {
            return step;
        }
        match self.paused_until {
            Some(t) if t > now_us => return step,
            Some(_) => {
                // Resumed: the heartbeats that queued up are read at once.
                self.paused_until = None;
                self.next_heartbeat_us = now_us;
            }
            None => {}
        }
        let now = self.instant(now_us);
        if now_us >= self.next_heartbeat_us {
            self.next_heartbeat_us = now_us + HEARTBEAT_EVERY_US;
            for node in nodes.iter().filter(|n| n.running) {
                if !world.reachable(node.host, HOST) {
                    continue;
                }
                let version = state
                    .heartbeat(node.id, node.applied, now)
                    .expect("every simulated node is registered");
                if node.applied < version {
                    step.fetch.push(node.id);
                }
            }
        }
        self.poll_learners(world, state, now_us);
        if let Some(work) = &mut self.work {
            for call in &mut work.calls {
                let request = Request::Seal(SealRequest {
                    log_id: work.plan.log_id,
                    epoch: work.plan.epoch,
                });
                call_step(world, call, &request, now_us);
            }
            if work.calls.iter().all(|c| c.result.is_some()) {
                let work = self.work.take().expect("checked");
                step.changed = self.finish(world, state, work, now_us);
            }
            return step;
        }
        // Nothing happens before a liveness timeout since the start: until then a node's
        // silence means it has not heartbeated to this process yet.
        if now_us < self.started_us + LIVENESS_US {
            return step;
        }
        if self.queue.is_empty() {
            if now_us < self.next_round_us {
                return step;
            }
            self.next_round_us = now_us + RECONFIGURE_EVERY_US;
            self.retry_at.retain(|_, at| *at > now_us);
            step.changed |= self.tend_learners(world, state, now_us);
            if self.polls.is_empty() {
                self.start_polls(world, state, nodes, now_us);
            }
            self.queue = plan(state, now).into();
        }
        while let Some(plan) = self.queue.pop_front() {
            if self.retry_at.contains_key(&plan.log_id) && plan.why != Why::Requested {
                continue;
            }
            match state.begin_seal(plan.log_id, plan.epoch) {
                Ok(_) => {}
                Err(StateError::StaleEpoch { .. }) => {
                    self.counts.lost += 1;
                    continue;
                }
                Err(e) => panic!("begin_seal of a planned log: {e}"),
            }
            self.counts.begun += 1;
            world.trace(&[20, plan.log_id, plan.epoch, plan.seal_at.len() as u64]);
            tracing::debug!(at_us = now_us, ?plan, "controller: sealing");
            let calls = plan
                .seal_at
                .iter()
                .filter_map(|id| nodes.iter().find(|n| n.id == *id))
                .map(|n| Call::new(world, n, plan.log_id, now_us))
                .collect();
            self.work = Some(Work { plan, calls });
            step.began = true;
            break;
        }
        step
    }

    /// The SEALs are answered (or failed): starts the next epoch from the members that
    /// sealed. Returns whether the map changed.
    fn finish(
        &mut self,
        world: &mut World,
        state: &mut ClusterState,
        work: Work,
        now_us: u64,
    ) -> bool {
        let plan = work.plan;
        let mut seals = Vec::new();
        for call in &work.calls {
            match &call.result {
                Some(Ok((end, trim))) => seals.push((call.node_id, *end, *trim)),
                Some(Err(e)) => {
                    self.counts.seals_failed += 1;
                    tracing::debug!(at_us = now_us, node = call.node_id, log_id = plan.log_id, error = %e, "controller: seal failed");
                }
                None => unreachable!("finished when every call has its result"),
            }
        }
        let usable = usable_seals(&seals);
        let sealed = usable.ends;
        if sealed.is_empty() {
            return false; // Tried again on the next round (Why::Sealing).
        }
        let now = self.instant(now_us);
        let target = match &plan.why {
            Why::Promote(learners) => Target::Promote(learners),
            _ => Target::Auto,
        };
        match state.extend(
            plan.log_id,
            plan.epoch,
            &sealed,
            usable.trim_point,
            target,
            now,
        ) {
            Ok(epoch) => {
                match plan.why {
                    Why::Failed(_) => self.counts.failed += 1,
                    Why::Sealing => self.counts.sealing += 1,
                    Why::Promote(_) => self.counts.promoted += 1,
                    Why::Requested | Why::Drain(_) => {}
                }
                world.trace(&[21, plan.log_id, epoch.epoch, epoch.start_lsn]);
                tracing::debug!(
                    at_us = now_us,
                    log_id = plan.log_id,
                    why = plan.why.label(),
                    ?sealed,
                    ?epoch,
                    "controller: log reconfigured"
                );
                true
            }
            Err(StateError::StaleEpoch { .. }) => {
                self.counts.lost += 1;
                false
            }
            Err(e) => {
                tracing::debug!(at_us = now_us, log_id = plan.log_id, ?sealed, error = %e, "controller: the sealed epoch cannot be followed yet");
                self.counts.behind += 1;
                self.retry_at.insert(plan.log_id, now_us + RETRY_AFTER_US);
                false
            }
        }
    }

    /// Adds and drops the learners the state needs now (as the real controller does each
    /// round); returns whether the map changed.
    fn tend_learners(&mut self, world: &mut World, state: &mut ClusterState, now_us: u64) -> bool {
        let now = self.instant(now_us);
        let changes = learner_changes(state, now);
        for change in &changes {
            change
                .apply(state, now)
                .expect("a learner change planned on the same state");
            match *change {
                LearnerChange::Add { log_id, node_id } => {
                    self.counts.learners_added += 1;
                    world.trace(&[22, log_id, node_id]);
                }
                LearnerChange::Drop {
                    log_id, node_id, ..
                } => {
                    self.counts.learners_dropped += 1;
                    world.trace(&[23, log_id, node_id]);
                }
            }
            tracing::debug!(at_us = now_us, ?change, "controller: learners");
        }
        !changes.is_empty()
    }

    /// Starts asking every log's learners and chain tail for their tails.
    fn start_polls(
        &mut self,
        world: &mut World,
        state: &ClusterState,
        nodes: &[NodeView],
        now_us: u64,
    ) {
        let node = |id: u64| nodes.iter().find(|n| n.id == id);
        for log in state.logs_after(0, usize::MAX) {
            if log.learners.is_empty() {
                continue;
            }
            let current = log.current();
            let tail = *current.chain.last().expect("a chain is never empty");
            let Some(tail) = node(tail) else {
                continue;
            };
            let tail = Call::new(world, tail, log.log_id, now_us);
            let learners = log
                .learners
                .iter()
                .filter_map(|&id| node(id))
                .map(|n| Call::new(world, n, log.log_id, now_us))
                .collect();
            self.polls.push(Poll {
                log_id: log.log_id,
                epoch: current.epoch,
                tail,
                learners,
            });
        }
    }

    /// Moves the learner polls along; a poll whose calls are all answered (or failed) says
    /// which learners caught up.
    fn poll_learners(&mut self, world: &mut World, state: &mut ClusterState, now_us: u64) {
        for poll in &mut self.polls {
            let request = Request::TailHint {
                log_id: poll.log_id,
            };
            for call in std::iter::once(&mut poll.tail).chain(&mut poll.learners) {
                call_step(world, call, &request, now_us);
            }
        }
        let (done, pending): (Vec<Poll>, Vec<Poll>) =
            std::mem::take(&mut self.polls).into_iter().partition(|p| {
                std::iter::once(&p.tail)
                    .chain(&p.learners)
                    .all(|c| c.result.is_some())
            });
        self.polls = pending;
        for poll in done {
            let tail = poll.tail.result.and_then(Result::ok);
            for call in poll.learners {
                let learner = call.result.and_then(Result::ok);
                let ready = self
                    .watch
                    .ready(poll.log_id, call.node_id, learner, tail, poll.epoch);
                state.set_ready(poll.log_id, call.node_id, poll.epoch, ready);
            }
        }
    }

    /// Where the reconfiguration under way is, for a report.
    pub(crate) fn describe(&self, now_us: u64) -> String {
        format!(
            "controller {} (paused until {:?}, started at {} us), {} plan(s) queued, work {:?}",
            if self.up { "up" } else { "down" },
            self.paused_until,
            self.started_us,
            self.queue.len(),
            self.work.as_ref().map(|w| (
                &w.plan,
                w.calls
                    .iter()
                    .map(|c| (c.node_id, now_us - c.started_us, &c.result))
                    .collect::<Vec<_>>()
            ))
        )
    }
}

/// Moves one call along: connects, sends `request`, takes its answer, gives up after
/// [`SEAL_TIMEOUT_US`] or when the connection fails (as `reconfig::call` does).
fn call_step(world: &mut World, call: &mut Call, request: &Request<'_>, now_us: u64) {
    if call.result.is_some() {
        return;
    }
    match call.conn.poll(world, call.addr, true) {
        Link::Down => {}
        Link::Lost => call.result = Some(Err("the connection failed".into())),
        Link::Fresh | Link::Up => {
            if call.request.is_none() {
                call.request = Some(call.conn.send(world, request));
            }
            let (id_sent, result) = (call.request, &mut call.result);
            let ended = call.conn.receive(world, &mut |id, answer| {
                if Some(id) != id_sent || result.is_some() {
                    return; // HELLO's answer.
                }
                *result = Some(match (request, answer) {
                    (Request::Seal(r), Ok(Response::Seal(s)))
                        if s.log_id == r.log_id && s.epoch == r.epoch =>
                    {
                        Ok((s.end_lsn, s.trim_point))
                    }
                    (Request::TailHint { .. }, Ok(Response::TailHint(t))) => Ok((t.tail, t.epoch)),
                    (_, Ok(Response::Error(e))) => Err(format!("{}: {}", e.code.name(), e.message)),
                    (_, Ok(other)) => Err(format!("an unexpected answer: {other:?}")),
                    (_, Err(e)) => Err(e),
                });
            });
            if ended && call.result.is_none() {
                call.result = Some(Err("the connection ended".into()));
            }
        }
    }
    if call.result.is_none() && now_us.saturating_sub(call.started_us) > SEAL_TIMEOUT_US {
        call.result = Some(Err("timed out".into()));
    }
    if call.result.is_some() {
        call.conn.drop_conn(world);
    }
}
