//! The controller's metrics, served as Prometheus text at `/metrics` (`--metrics HOST:PORT`)
//! with the node's exposition code ([`crate::prometheus`]).
//!
//! **Reconfigurations** are counted by why they happened (`failed`, `requested`, `drain`,
//! `promote`: learners that caught up join a short chain, `sealing`: a seal begun before a
//! restart, finished), and each one's time by phase, as histograms a scraper can subtract
//! between two scrapes (`chainlog-bench --fault` does, for each fault):
//! - `detect`: from the last heartbeat of the member found dead to the decision to
//!   reconfigure (failures only: the liveness timeout plus up to one round of the loop);
//! - `seal`: sealing the epoch at the live members (in parallel);
//! - `extend`: picking the new chain and writing the state (an fsync) under the lock;
//! - `catch_up`: from the extend until every new member of the chain says (TAIL_HINT) that
//!   it holds the log up to the new epoch's start, as the controller sees it by asking (so
//!   within one poll of the truth); a watch abandoned (the epoch moved on) records nothing.
//!   After a promotion that is the few records the learner lacked, not the whole log;
//! - `learn`: from making a node a learner of a log to its promotion into the chain (the
//!   whole copy, made outside the chain; learners this process did not add record nothing).
//!
//! Learners added and dropped are counted. Gauges are read from the state at each scrape:
//! nodes registered, alive and drained, logs, under-replicated logs (a chain shorter than the
//! replication factor), learners, replicas still catching up, the map version; and the open
//! connections with their bound. Times are served in seconds, as Prometheus names units.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::reconfig::{LearnerChange, Why};
use super::state::ClusterState;
use crate::prometheus::{family, histogram, histogram_series, Recorded};

/// A phase of a reconfiguration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Detect,
    Seal,
    Extend,
    CatchUp,
    Learn,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Detect,
        Phase::Seal,
        Phase::Extend,
        Phase::CatchUp,
        Phase::Learn,
    ];

    fn label(self) -> &'static str {
        match self {
            Phase::Detect => "detect",
            Phase::Seal => "seal",
            Phase::Extend => "extend",
            Phase::CatchUp => "catch_up",
            Phase::Learn => "learn",
        }
    }
}

/// What the controller counts; behind a mutex of the controller's.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// New epochs started, by why.
    reconfigurations: BTreeMap<&'static str, u64>,
    /// Microseconds, by phase (served in seconds).
    phases: BTreeMap<Phase, Histogram<u64>>,
    /// Members that did not answer a SEAL (or refused it).
    seal_failures: u64,
    /// Operators' chains refused once the epoch was sealed (the controller's chain followed).
    chains_refused: u64,
    /// Learners added to logs.
    learners_added: u64,
    /// Learners dropped (dead, drained, not needed, or put in the chain by an operator).
    learners_dropped: u64,
    /// New members of chains not yet caught up, as the catch-up watch last saw.
    pub(crate) catching_up: usize,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            reconfigurations: BTreeMap::new(),
            phases: Phase::ALL.iter().map(|&p| (p, histogram())).collect(),
            seal_failures: 0,
            chains_refused: 0,
            learners_added: 0,
            learners_dropped: 0,
            catching_up: 0,
        }
    }

    /// A reconfiguration for `why` started a new epoch.
    pub(crate) fn reconfigured(&mut self, why: &'static str) {
        *self.reconfigurations.entry(why).or_default() += 1;
    }

    /// A phase took `took`.
    pub(crate) fn phase(&mut self, phase: Phase, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Some(h) = self.phases.get_mut(&phase) {
            h.saturating_record(us);
        }
    }

    pub(crate) fn seal_failed(&mut self) {
        self.seal_failures += 1;
    }

    pub(crate) fn chain_refused(&mut self) {
        self.chains_refused += 1;
    }

    /// A log's learners changed.
    pub(crate) fn learner_changed(&mut self, change: &LearnerChange) {
        match change {
            LearnerChange::Add { .. } => self.learners_added += 1,
            LearnerChange::Drop { .. } => self.learners_dropped += 1,
        }
    }
}

/// Connections the controller serves, and its bound on them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Connections {
    pub(crate) open: usize,
    pub(crate) max: usize,
}

/// The Prometheus text of `metrics`, of `state` at `now` and of the controller's
/// `connections`.
pub(crate) fn render(
    metrics: &Metrics,
    state: &ClusterState,
    connections: Connections,
    now: Instant,
) -> String {
    let mut out = String::new();
    let name = "chainlog_controller_reconfigurations_total";
    family(
        &mut out,
        name,
        "counter",
        "Epochs started by a reconfiguration, by why (failed, requested, drain, promote, sealing).",
    );
    for why in Why::LABELS {
        let count = metrics.reconfigurations.get(why).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}{{why=\"{why}\"}} {count}");
    }
    let name = "chainlog_controller_reconfiguration_phase_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Time of each phase of a reconfiguration in seconds: detect (last heartbeat of \
         the dead member to the decision), seal, extend (new chain chosen and written), \
         catch_up (extend to every new member holding the log up to the epoch's start), learn \
         (a node made a learner to its promotion into the chain).",
    );
    for (phase, h) in &metrics.phases {
        let labels = format!("phase=\"{}\"", phase.label());
        histogram_series(&mut out, name, &labels, h, Recorded::Micros);
    }
    let nodes = || state.nodes();
    let counts: [(&str, &str, &str, u64); 14] = [
        (
            "chainlog_controller_seal_failures_total",
            "counter",
            "Members that did not answer a SEAL in time, or refused it.",
            metrics.seal_failures,
        ),
        (
            "chainlog_controller_chains_refused_total",
            "counter",
            "Chains asked for by an operator that the seals did not allow (the controller's chain followed).",
            metrics.chains_refused,
        ),
        (
            "chainlog_controller_learners_added_total",
            "counter",
            "Nodes made learners of a log (to copy it before they join its chain).",
            metrics.learners_added,
        ),
        (
            "chainlog_controller_learners_dropped_total",
            "counter",
            "Learners dropped (dead, drained, not needed, or put in the chain by an operator); promoted ones are not counted.",
            metrics.learners_dropped,
        ),
        (
            "chainlog_controller_learners",
            "gauge",
            "Learners of logs (a node learning two logs counts twice).",
            state
                .logs_after(0, usize::MAX)
                .map(|log| log.learners.len() as u64)
                .sum(),
        ),
        (
            "chainlog_controller_nodes",
            "gauge",
            "Registered nodes.",
            nodes().count() as u64,
        ),
        (
            "chainlog_controller_nodes_alive",
            "gauge",
            "Nodes that heartbeated within the liveness timeout.",
            nodes().filter(|n| state.is_alive(n, now)).count() as u64,
        ),
        (
            "chainlog_controller_nodes_drained",
            "gauge",
            "Nodes drained by an operator.",
            nodes().filter(|n| n.drained).count() as u64,
        ),
        (
            "chainlog_controller_logs",
            "gauge",
            "Logs.",
            state.logs_after(0, usize::MAX).count() as u64,
        ),
        (
            "chainlog_controller_under_replicated_logs",
            "gauge",
            "Logs whose chain is shorter than their replication factor.",
            state.under_replicated().count() as u64,
        ),
        (
            "chainlog_controller_catching_up_replicas",
            "gauge",
            "New members of chains that do not yet hold their log up to the epoch's start.",
            metrics.catching_up as u64,
        ),
        (
            "chainlog_controller_map_version",
            "gauge",
            "The cluster map's version.",
            state.version(),
        ),
        (
            "chainlog_controller_connections",
            "gauge",
            "Open connections (nodes, clients, operators).",
            connections.open as u64,
        ),
        (
            "chainlog_controller_connections_max",
            "gauge",
            "Connections the controller serves at most; one more is answered OVERLOADED.",
            connections.max as u64,
        ),
    ];
    for (name, kind, help, value) in counts {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_phases_and_the_states_gauges() {
        let t0 = Instant::now();
        let mut state = ClusterState::new(Duration::from_millis(500));
        for id in 1..=3 {
            state
                .register(id, &format!("10.0.0.{id}:7400"), 1, "", "", t0)
                .expect("register");
        }
        state.create_log("a", 3, t0).expect("create");
        let b = state.create_log("b", 2, t0).expect("create").log_id;
        let chain = state.log(b).expect("log").current().chain.clone();
        let later = t0 + Duration::from_secs(1);
        state.heartbeat(chain[0], 0, later).expect("heartbeat");
        state
            .extend(
                b,
                1,
                &[(chain[0], 0)],
                0,
                crate::controller::state::Target::Auto,
                later,
            )
            .expect("extend");
        state.drain(chain[0], true).expect("drain");
        let learner = (1..=3).find(|id| !chain.contains(id)).expect("a spare");
        state.heartbeat(learner, 0, later).expect("heartbeat");
        state.add_learner(b, learner, later).expect("learner");
        let mut metrics = Metrics::new();
        metrics.learner_changed(&LearnerChange::Add {
            log_id: b,
            node_id: learner,
        });
        metrics.phase(Phase::Learn, Duration::from_secs(2));
        metrics.reconfigured("failed");
        metrics.phase(Phase::Detect, Duration::from_millis(510));
        metrics.phase(Phase::Seal, Duration::from_micros(900));
        metrics.seal_failed();
        let connections = Connections { open: 2, max: 256 };
        let text = render(&metrics, &state, connections, later);
        for line in [
            "chainlog_controller_reconfigurations_total{why=\"failed\"} 1\n",
            "chainlog_controller_reconfigurations_total{why=\"drain\"} 0\n",
            "chainlog_controller_reconfiguration_phase_seconds_count{phase=\"detect\"} 1\n",
            "chainlog_controller_reconfiguration_phase_seconds_bucket{phase=\"detect\",le=\"0.5\"} 0\n",
            "chainlog_controller_reconfiguration_phase_seconds_bucket{phase=\"detect\",le=\"0.6\"} 1\n",
            "chainlog_controller_reconfiguration_phase_seconds_sum{phase=\"seal\"} 0.0009\n",
            "chainlog_controller_reconfiguration_phase_seconds_count{phase=\"catch_up\"} 0\n",
            "chainlog_controller_seal_failures_total 1\n",
            "chainlog_controller_nodes 3\n",
            "chainlog_controller_nodes_alive 2\n",
            "chainlog_controller_learners 1\n",
            "chainlog_controller_learners_added_total 1\n",
            "chainlog_controller_reconfiguration_phase_seconds_count{phase=\"learn\"} 1\n",
            "chainlog_controller_nodes_drained 1\n",
            "chainlog_controller_logs 2\n",
            "chainlog_controller_under_replicated_logs 1\n",
            "chainlog_controller_connections 2\n",
            "chainlog_controller_connections_max 256\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE chainlog_controller_nodes_alive gauge\n"));
    }
}
