//! Reconfiguration: what the controller does when a chain loses a member, or can get one
//! back (DESIGN.md section 6, ARCHITECTURE.md "Reconfiguration").
//!
//! For each log whose current chain has a member that is not alive (no heartbeat within the
//! liveness timeout), or fewer members than its replication factor while a live node is free,
//! or whose epoch the controller was sealing when it stopped:
//!
//! 0. **Record the intent** ([`ClusterState::begin_seal`]), durably, before any SEAL goes
//!    out: a replica that sealed takes no more appends, so a controller restarted before it
//!    extended the epoch must finish the reconfiguration even if every member is alive again.
//! 1. **Seal** the current epoch at the members that are alive ([`seal`], SEAL on the log's
//!    shard of each): one way and durable; a sealed replica appends, stores and forwards
//!    nothing more in that epoch, and answers with its end, every record below it durable.
//!    Sealing any one member stops the old epoch from committing anything more (a commit
//!    needs every member), so a falsely suspected node is harmless.
//! 2. **Pick the end and extend** ([`ClusterState::extend`]): every acknowledged record is on
//!    every member, so on each one that sealed; the new epoch starts at the longest sealed
//!    end (records above the shortest one's may have been acknowledged: nothing is dropped or
//!    renumbered). Its chain is the sealed members in order plus live spares at the tail. The
//!    epoch is compared and set under the state's lock: one reconfiguration wins per epoch.
//! 3. The nodes install the new epoch from the map; its replicas settle with each other
//!    (probe, pull, catch-up: `crate::replication`) before the new head sequences anything,
//!    so the survivors are brought to the same end first.
//!
//! [`plan`] is pure (the state and the time in, the work out); the seals are blocking calls
//! the controller's reconfiguring thread makes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use chainlog_net::{
    decode_response, encode_request, parse_frame, ErrorCode, HelloRequest, Limits, Request,
    Response, SealRequest,
};

use super::state::ClusterState;

/// Why a log is reconfigured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// These members of the chain are not alive.
    Failed(Vec<u64>),
    /// The chain is shorter than the replication factor and a live node is free.
    UnderReplicated,
    /// The controller began sealing the epoch and has not extended it (it stopped in
    /// between, or the seal reached no member).
    Sealing,
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
}

/// The reconfigurations the state needs at `now`. A chain with no live member is left as it
/// is (no replica can say where its epoch ends: the log waits for one to return).
pub fn plan(state: &ClusterState, now: Instant) -> Vec<Plan> {
    let mut plans = Vec::new();
    for log in state.logs_after(0, usize::MAX) {
        let current = log.current();
        let (alive, dead): (Vec<u64>, Vec<u64>) = current
            .chain
            .iter()
            .partition(|&&id| state.node(id).is_some_and(|node| state.is_alive(node, now)));
        if alive.is_empty() {
            continue;
        }
        let why = if !dead.is_empty() {
            Why::Failed(dead)
        } else if log.sealing == Some(current.epoch) {
            Why::Sealing
        } else if current.chain.len() < usize::from(log.replication_factor)
            && !state.spares(&current.chain, now).is_empty()
        {
            Why::UnderReplicated
        } else {
            continue;
        };
        plans.push(Plan {
            log_id: log.log_id,
            epoch: current.epoch,
            seal_at: alive,
            why,
        });
    }
    plans
}

/// Why a seal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
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

/// Seals `epoch` of `log_id` at the node whose shard 0 is at `addr` (with `shards` shards),
/// within `timeout`: the end it sealed at and its trim point.
pub fn seal(
    addr: &str,
    shards: u16,
    log_id: u64,
    epoch: u64,
    timeout: Duration,
) -> Result<(u64, u64), SealError> {
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
    encode_request(&mut out, 2, &Request::Seal(SealRequest { log_id, epoch }));
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&out)?;
    let limits = Limits::DEFAULT;
    let mut input = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut consumed = 0;
        while let Some(frame) = parse_frame(&input[consumed..], &limits)
            .map_err(|e| SealError::Unexpected(e.to_string()))?
        {
            consumed += frame.frame_bytes();
            let response = decode_response(&frame, &limits)
                .map_err(|e| SealError::Unexpected(e.to_string()))?;
            match (frame.request_id, response) {
                (1, Response::Hello(_)) => {}
                (2, Response::Seal(s)) if s.log_id == log_id && s.epoch == epoch => {
                    return Ok((s.end_lsn, s.trim_point))
                }
                (_, Response::Error(e)) => {
                    return Err(SealError::Refused {
                        code: e.code,
                        arg0: e.arg0,
                        message: e.message.to_string(),
                    })
                }
                (_, other) => return Err(SealError::Unexpected(format!("{other:?}"))),
            }
        }
        input.drain(..consumed);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SealError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(SealError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        input.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(nodes: u64, now: Instant) -> ClusterState {
        let mut state = ClusterState::new(Duration::from_millis(300));
        for id in 1..=nodes {
            state
                .register(id, &format!("10.0.0.{id}:7400"), 1, now)
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
                .register(id, &format!("10.0.0.{id}:7400"), 1, later)
                .expect("register");
        }
        let plans = plan(&state, later);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].why, Why::Sealing);
        assert_eq!(plans[0].seal_at, chain);
        let sealed: Vec<(u64, u64)> = chain.iter().map(|&id| (id, 4)).collect();
        let epoch = state.extend(log_id, 1, &sealed, later).expect("extend");
        assert_eq!(epoch.chain, chain);
        assert_eq!(state.log(log_id).expect("log").sealing, None, "done");
        assert!(plan(&state, later).is_empty());
    }

    #[test]
    fn a_dead_member_is_sealed_out_and_a_spare_takes_the_tail() {
        let t0 = Instant::now();
        let mut state = cluster(4, t0);
        let log_id = state.create_log("orders", 3, t0).expect("create").log_id;
        let chain = state.log(log_id).expect("log").current().chain.clone();
        assert_eq!(chain.len(), 3);
        assert!(
            plan(&state, t0).is_empty(),
            "every member alive, no spare needed"
        );
        // Everyone but the head heartbeats on; the head falls silent.
        let later = t0 + Duration::from_millis(500);
        for &id in &chain[1..] {
            state.heartbeat(id, 0, later).expect("heartbeat");
        }
        let spare = (1..=4).find(|id| !chain.contains(id)).expect("a spare");
        state.heartbeat(spare, 0, later).expect("heartbeat");
        let plans = plan(&state, later);
        assert_eq!(
            plans,
            vec![Plan {
                log_id,
                epoch: 1,
                seal_at: chain[1..].to_vec(),
                why: Why::Failed(vec![chain[0]]),
            }]
        );
        // The middle sealed at 10, the tail at 8: the new epoch starts at 10, the old middle
        // leads, the spare joins at the tail.
        let version = state.version();
        let epoch = state
            .extend(log_id, 1, &[(chain[1], 10), (chain[2], 8)], later)
            .expect("extend");
        assert_eq!(epoch.epoch, 2);
        assert_eq!(epoch.start_lsn, 10);
        assert_eq!(epoch.chain, vec![chain[1], chain[2], spare]);
        assert_eq!(state.version(), version + 1);
        // One reconfiguration per epoch: a second one from epoch 1 loses.
        assert!(matches!(
            state.extend(log_id, 1, &[(chain[1], 10)], later),
            Err(crate::controller::StateError::StaleEpoch { current: 2, .. })
        ));
        assert!(plan(&state, later).is_empty());
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
            .extend(log_id, 1, &[(chain[0], 5), (chain[1], 5)], later)
            .expect("extend");
        assert_eq!(epoch.chain, chain[..2].to_vec(), "no spare: two replicas");
        assert!(plan(&state, later).is_empty(), "nothing to add");
        // The lost node comes back: the log is under-replicated, and it can grow.
        state
            .register(chain[2], "10.0.0.3:7400", 1, later)
            .expect("register");
        let plans = plan(&state, later);
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].why, Why::UnderReplicated);
        assert_eq!(plans[0].seal_at, chain[..2].to_vec());
        let epoch = state
            .extend(log_id, 2, &[(chain[0], 9), (chain[1], 9)], later)
            .expect("extend");
        assert_eq!(epoch.chain, chain, "back at rf 3");
        assert_eq!(epoch.start_lsn, 9);
    }

    #[test]
    fn a_chain_with_no_live_member_waits_and_a_seal_nobody_answered_extends_nothing() {
        let t0 = Instant::now();
        let mut state = cluster(3, t0);
        let log_id = state.create_log("solo", 1, t0).expect("create").log_id;
        let later = t0 + Duration::from_secs(5);
        assert!(plan(&state, later).is_empty(), "its only replica is gone");
        assert!(matches!(
            state.extend(log_id, 1, &[], later),
            Err(crate::controller::StateError::NoSurvivor { .. })
        ));
    }
}
