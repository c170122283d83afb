//! A history checker under kill -9 (issue 10): concurrent writers append unique records with
//! idempotency keys through the client library ([`workload`]), pipelined, retrying with the
//! same key whatever has no answer; a nemesis kills a process with SIGKILL under that load
//! and restarts it on the same data directory and port after a short, seeded pause; at the
//! end the load stops, the chain settles, every log is read in full from every replica
//! directly, and [`checker::check`] compares what was acknowledged, sent and left indefinite
//! with what the replicas hold (lost, moved, duplicated, divergent, never-sent records, gaps,
//! real-time order; the checker's header lists each check).
//!
//! The victims, one test each: a standalone node (two shards, a log on each); and in a
//! 3-node rf=3 cluster (a controller and three member nodes), the head, the middle or the tail
//! of the log's chain when the kill lands (the chain is full again before each kill). The
//! controller seals a killed member out and the log runs on two replicas until the member is
//! back and rejoins at the tail; the writers keep resending through that. (tests/failover runs
//! the same harness with a spare node and kills that stay down for seconds.)
//!
//! The harness (the processes, the end check, and the nemesis [`harness::run`]) is
//! tests/common/history.rs, the writers tests/common/workload.rs. The cluster runs have one
//! log, so that the victim has one role. The seed (HISTORY_SEED, default 1) picks the pauses
//! before each kill and before each restart and the batch sizes; the rest (where a kill lands)
//! is up to timing, so a run is not replayed exactly.
//!
//! In CI each test kills its victim 3 times. Longer runs, one `#[ignore]`d test per victim,
//! with HISTORY_KILLS kills (default: 20 standalone, 30 head, 15 middle, 15 tail):
//!
//! ```sh
//! HISTORY_KILLS=30 HISTORY_SEED=7 cargo test --release --test history -- --ignored --nocapture long_chain_head
//! cargo test --release --test history -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Every run prints its seed, what it did and the anomalies by kind with samples; a test fails
//! on any anomaly, if a restarted node serves a record that is not the log's, or if appends do
//! not resume within 30 s after a restart (a stall: the nemesis stops, and the history is
//! still checked).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/history.rs"]
mod harness;
#[path = "../common/workload.rs"]
mod workload;

use harness::{run_and_check, Role, Settings, Victim};

#[test]
fn standalone_kill9_loses_nothing() {
    run_and_check(Settings::short(Victim::Standalone));
}

#[test]
fn chain_middle_kill9_loses_nothing() {
    run_and_check(Settings::short(Victim::Chain(Role::Middle)));
}

#[test]
fn chain_tail_kill9_loses_nothing() {
    run_and_check(Settings::short(Victim::Chain(Role::Tail)));
}

/// Red now and then on today's code (issue 10, point 1: a restarted head that lost records
/// its successors hold either refuses every append for good or rewrites their LSNs); green
/// for good once the restarted-head fix lands.
#[test]
fn chain_head_kill9_loses_nothing() {
    run_and_check(Settings::short(Victim::Chain(Role::Head)));
}

#[test]
#[ignore = "long: run with --ignored (HISTORY_KILLS, HISTORY_SEED)"]
fn long_standalone() {
    run_and_check(Settings::long(Victim::Standalone, 20));
}

#[test]
#[ignore = "long: run with --ignored (HISTORY_KILLS, HISTORY_SEED)"]
fn long_chain_head() {
    run_and_check(Settings::long(Victim::Chain(Role::Head), 30));
}

#[test]
#[ignore = "long: run with --ignored (HISTORY_KILLS, HISTORY_SEED)"]
fn long_chain_middle() {
    run_and_check(Settings::long(Victim::Chain(Role::Middle), 15));
}

#[test]
#[ignore = "long: run with --ignored (HISTORY_KILLS, HISTORY_SEED)"]
fn long_chain_tail() {
    run_and_check(Settings::long(Victim::Chain(Role::Tail), 15));
}
