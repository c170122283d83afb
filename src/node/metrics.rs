//! Node metrics: what each shard measures, the snapshot it publishes once a second (the only
//! cross-thread traffic, on the control path), and the Prometheus text served at `/metrics`.
//!
//! Append latency is split into stages: `queue` (frame received to handed to the store),
//! `batch_wait` (handed to the store to its frame's submission: group commit), `disk` (the
//! frame's durable write), `ack` (durability seen to the answer queued), and `total`
//! (frame received to answer queued). Group commit batch sizes, bytes and records per shard,
//! logs, and connections with their bound and the memory of their receive buffers complete
//! the picture. Distributions are served as Prometheus histograms (ten buckets per decade),
//! whose buckets a scraper can subtract to get the distribution of any window between two
//! scrapes (`chainlog-bench` does, for its run). Names end in base units (`_seconds`,
//! `_bytes`), counters in `_total`: `promtool check metrics` finds nothing to say
//! (`tests/operations.rs`).
//!
//! **Append traces** break single appends down where histograms cannot (a p99 of the total
//! is not the sum of the stages' p99s): every append whose first LSN is a multiple of
//! [`TRACE_EVERY`] gets the times its frame was received, its records were seen durable,
//! its answer was queued and that answer's send was handed to the ring. `GET /traces` serves the last
//! [`TRACES_KEPT`] of each shard in `CLOCK_MONOTONIC` nanoseconds, so that a client on the
//! same host can put them next to its own times for the same append (found by log and LSN).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use chainlog_storage::StoreMetrics;
use hdrhistogram::Histogram;

use super::conn::Session;
use crate::prometheus::{self, family, histogram, histogram_series, Recorded};

/// Appends whose first LSN is a multiple of this are traced.
pub(crate) const TRACE_EVERY: u64 = 16;
/// Traces a shard keeps for `/traces` (the newest; about 4 s at 270,000 appends/s).
pub(crate) const TRACES_KEPT: usize = 1 << 16;
/// Traces whose answer is still being sent at most (older ones are dropped unsent).
const TRACES_OPEN_MAX: usize = 1 << 16;

/// One traced append's way through its shard, microseconds since the shard's origin
/// ([`Snapshot::origin_ns`]); `sent_us` is 0 if the answer never went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AppendTrace {
    pub(crate) log_id: u64,
    pub(crate) first_lsn: u64,
    /// The turn in which its frame's bytes were seen.
    pub(crate) received_us: u64,
    /// The turn in which its records were seen durable here.
    pub(crate) durable_us: u64,
    /// When its answer was queued for the connection.
    pub(crate) answered_us: u64,
    /// When the send carrying its answer was handed to the ring (it goes out with the
    /// loop's next enter).
    pub(crate) sent_us: u64,
}

/// The traces of a shard whose answers are on their way out, by sequence number.
#[derive(Clone, Debug, Default)]
pub(crate) struct Traces {
    /// The sequence number of `open[0]`.
    base: u64,
    open: VecDeque<AppendTrace>,
}

impl Traces {
    /// The traces whose answers went out, oldest first, and those waiting longer than
    /// `give_up_us` before `now_us` (a connection that closed): their answers never went out.
    pub(crate) fn take_done(&mut self, now_us: u64, give_up_us: u64) -> Vec<AppendTrace> {
        let mut done = Vec::new();
        while let Some(front) = self.open.front() {
            if front.sent_us == 0 && now_us.saturating_sub(front.answered_us) < give_up_us {
                break;
            }
            done.extend(self.open.pop_front());
            self.base += 1;
        }
        done
    }
}

/// What one shard measures itself (the store measures the rest).
#[derive(Clone, Debug)]
pub(crate) struct ShardMetrics {
    pub(crate) queue_us: Histogram<u64>,
    /// From the records durable here to the append committed on its whole chain.
    pub(crate) replication_us: Histogram<u64>,
    pub(crate) ack_us: Histogram<u64>,
    pub(crate) total_us: Histogram<u64>,
    /// Requests by opcode name.
    pub(crate) requests: Vec<(&'static str, u64)>,
    /// Error answers by code name.
    pub(crate) errors: Vec<(&'static str, u64)>,
    pub(crate) connections_accepted: u64,
    /// Connections answered OVERLOADED and closed: the shard held `connections_max`.
    pub(crate) connections_refused: u64,
    /// Connections closed for saying no HELLO in time, or for idling.
    pub(crate) connections_expired: u64,
    pub(crate) bytes_received: u64,
    /// Appended or received batches forwarded to the successor from the store's buffer.
    pub(crate) forwards: u64,
    /// Records sent to a successor that was behind, read from the store.
    pub(crate) catch_up_records: u64,
    /// Catch-up reads that waited for the disk (the shard went on meanwhile).
    pub(crate) catch_up_disk_reads: u64,
    /// Records taken back from a successor after a restart (this node had lost them).
    pub(crate) pulled_records: u64,
    /// Records a learner copied from its source (before it joins the chain).
    pub(crate) learned_records: u64,
    /// Replication links closed (they reconnect).
    pub(crate) link_resets: u64,
    /// Traced appends whose answers are on their way out.
    pub(crate) traces: Traces,
}

fn bump(counts: &mut Vec<(&'static str, u64)>, name: &'static str) {
    match counts.iter_mut().find(|(n, _)| *n == name) {
        Some((_, c)) => *c += 1,
        None => counts.push((name, 1)),
    }
}

impl ShardMetrics {
    pub(crate) fn new() -> ShardMetrics {
        ShardMetrics {
            queue_us: histogram(),
            replication_us: histogram(),
            ack_us: histogram(),
            total_us: histogram(),
            requests: Vec::new(),
            errors: Vec::new(),
            connections_accepted: 0,
            connections_refused: 0,
            connections_expired: 0,
            bytes_received: 0,
            forwards: 0,
            catch_up_records: 0,
            catch_up_disk_reads: 0,
            pulled_records: 0,
            learned_records: 0,
            link_resets: 0,
            traces: Traces::default(),
        }
    }

    /// The answer of an append of `log_id` from `first_lsn`, received at `received_us` and
    /// durable here at `durable_us`, was queued on `session` at `now_us`: traces it if it is
    /// sampled ([`TRACE_EVERY`]); its send's completion is stamped by [`ShardMetrics::sent`].
    pub(crate) fn answered(
        &mut self,
        session: &mut Session,
        log_id: u64,
        first_lsn: u64,
        received_us: u64,
        durable_us: u64,
        now_us: u64,
    ) {
        if !first_lsn.is_multiple_of(TRACE_EVERY) {
            return;
        }
        let traces = &mut self.traces;
        if traces.open.len() >= TRACES_OPEN_MAX {
            traces.open.pop_front();
            traces.base += 1;
        }
        session.traced.push(traces.base + traces.open.len() as u64);
        traces.open.push_back(AppendTrace {
            log_id,
            first_lsn,
            received_us,
            durable_us,
            answered_us: now_us,
            sent_us: 0,
        });
    }

    /// The send carrying the answers of traces `seqs` was handed to the ring at `now_us`.
    pub(crate) fn sent(&mut self, seqs: &[u64], now_us: u64) {
        let traces = &mut self.traces;
        for &seq in seqs {
            if let Some(trace) = seq
                .checked_sub(traces.base)
                .and_then(|i| traces.open.get_mut(i as usize))
            {
                trace.sent_us = now_us;
            }
        }
    }

    pub(crate) fn request(&mut self, opcode: &'static str) {
        bump(&mut self.requests, opcode);
    }

    pub(crate) fn error(&mut self, code: &'static str) {
        bump(&mut self.errors, code);
    }
}

/// A shard's state as published.
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub(crate) shard: ShardMetrics,
    pub(crate) store: StoreMetrics,
    pub(crate) logs: usize,
    /// The catalog's size on disk (snapshot and change log).
    pub(crate) catalog_bytes: usize,
    pub(crate) connections: usize,
    /// The shard's bound on `connections` (`connections_max`).
    pub(crate) connections_max: usize,
    /// What the receive buffers of the connections hold in all (their sizes, not what is
    /// in them: each one's memory).
    pub(crate) receive_buffer_bytes: usize,
    /// Logs whose successor has not answered every record stored here, and how many records
    /// it is behind in all.
    pub(crate) lagging_logs: usize,
    pub(crate) lag_records: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at the shard's origin (its traces count from there).
    pub(crate) origin_ns: u64,
    /// The newest traces whose answers went out (at most [`TRACES_KEPT`]), oldest first.
    pub(crate) traces: Vec<AppendTrace>,
}

impl Snapshot {
    /// Adds `done` to the traces kept, dropping the oldest beyond [`TRACES_KEPT`].
    pub(crate) fn keep_traces(&mut self, mut kept: Vec<AppendTrace>, done: Vec<AppendTrace>) {
        kept.extend(done);
        let excess = kept.len().saturating_sub(TRACES_KEPT);
        kept.drain(..excess);
        self.traces = kept;
    }
}

/// `CLOCK_MONOTONIC`, nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The text of `GET /traces`: a header, then one line per trace of every shard.
pub(crate) fn render_traces(snapshots: &[Option<Snapshot>]) -> String {
    let mut out = format!(
        "# chainlog append traces: appends whose first LSN is a multiple of {TRACE_EVERY}, \
         times in CLOCK_MONOTONIC nanoseconds (sent 0: the answer never went out)\n\
         # shard log_id first_lsn received_ns durable_ns answered_ns sent_ns\n"
    );
    for (shard, snapshot) in snapshots.iter().enumerate() {
        let Some(snapshot) = snapshot else { continue };
        let at = |us: u64| snapshot.origin_ns + us * 1_000;
        for t in &snapshot.traces {
            let sent = if t.sent_us == 0 { 0 } else { at(t.sent_us) };
            let _ = writeln!(
                out,
                "{shard} {} {} {} {} {} {sent}",
                t.log_id,
                t.first_lsn,
                at(t.received_us),
                at(t.durable_us),
                at(t.answered_us),
            );
        }
    }
    out
}

/// The latest snapshot of every shard, by index.
pub(crate) type Board = Arc<Mutex<Vec<Option<Snapshot>>>>;

/// How to find a histogram or a count in a snapshot.
type HistogramOf = fn(&Snapshot) -> &Histogram<u64>;
type CountOf = fn(&Snapshot) -> u64;
type NamedCountsOf = fn(&Snapshot) -> &Vec<(&'static str, u64)>;

const STAGES_NAME: &str = "chainlog_append_stage_latency_seconds";
const STAGES: [(&str, HistogramOf); 6] = [
    ("queue", |s| &s.shard.queue_us),
    ("batch_wait", |s| &s.store.batch_wait_us),
    ("disk", |s| &s.store.write_us),
    ("replication", |s| &s.shard.replication_us),
    ("ack", |s| &s.shard.ack_us),
    ("total", |s| &s.shard.total_us),
];
const BATCHES: [(&str, &str, HistogramOf); 2] = [
    (
        "chainlog_group_commit_batch_records",
        "Records per group-commit write.",
        |s| &s.store.batch_records,
    ),
    (
        "chainlog_group_commit_batch_bytes",
        "Bytes per group-commit write.",
        |s| &s.store.batch_bytes,
    ),
];
const COUNTS: [(&str, &str, &str, CountOf); 23] = [
    (
        "chainlog_connections_accepted_total",
        "counter",
        "Connections accepted (refused ones included).",
        |s| s.shard.connections_accepted,
    ),
    (
        "chainlog_connections_refused_total",
        "counter",
        "Connections answered OVERLOADED and closed: the shard held its connections_max.",
        |s| s.shard.connections_refused,
    ),
    (
        "chainlog_connections_expired_total",
        "counter",
        "Connections closed for sending no HELLO in time, or for idling.",
        |s| s.shard.connections_expired,
    ),
    (
        "chainlog_replication_forwards_total",
        "counter",
        "Batches forwarded to the successor from the store's buffer.",
        |s| s.shard.forwards,
    ),
    (
        "chainlog_replication_catch_up_records_total",
        "counter",
        "Records sent to a successor that was behind, read from the store.",
        |s| s.shard.catch_up_records,
    ),
    (
        "chainlog_replication_catch_up_disk_reads_total",
        "counter",
        "Catch-up reads that waited for the disk (the shard went on meanwhile).",
        |s| s.shard.catch_up_disk_reads,
    ),
    (
        "chainlog_replication_pulled_records_total",
        "counter",
        "Records taken back from a successor after a restart (this node had lost them).",
        |s| s.shard.pulled_records,
    ),
    (
        "chainlog_replication_learned_records_total",
        "counter",
        "Records copied as a learner of a log, before joining its chain.",
        |s| s.shard.learned_records,
    ),
    (
        "chainlog_replication_link_resets_total",
        "counter",
        "Replication links closed (they reconnect).",
        |s| s.shard.link_resets,
    ),
    (
        "chainlog_replication_lagging_logs",
        "gauge",
        "Logs whose successor has not answered every record stored here.",
        |s| s.lagging_logs as u64,
    ),
    (
        "chainlog_replication_lag_records",
        "gauge",
        "Records stored here and not yet answered by the successors.",
        |s| s.lag_records,
    ),
    (
        "chainlog_records_appended_total",
        "counter",
        "Records appended.",
        |s| s.store.records_appended,
    ),
    (
        "chainlog_written_bytes_total",
        "counter",
        "Bytes written in frames.",
        |s| s.store.bytes_written,
    ),
    (
        "chainlog_frames_written_total",
        "counter",
        "Group-commit writes.",
        |s| s.store.frames_written,
    ),
    (
        "chainlog_segments_created_total",
        "counter",
        "Segments created.",
        |s| s.store.segments_created,
    ),
    (
        "chainlog_segments_deleted_total",
        "counter",
        "Segments deleted after trims.",
        |s| s.store.segments_deleted,
    ),
    (
        "chainlog_rollover_waits_total",
        "counter",
        "Times frames waited for the spare segment to be ready at a rollover.",
        |s| s.store.rollover_waits,
    ),
    (
        "chainlog_received_bytes_total",
        "counter",
        "Bytes received from clients.",
        |s| s.shard.bytes_received,
    ),
    ("chainlog_logs", "gauge", "Logs owned by the shard.", |s| {
        s.logs as u64
    }),
    (
        "chainlog_catalog_bytes",
        "gauge",
        "Size of the shard's catalog on disk (snapshot and change log).",
        |s| s.catalog_bytes as u64,
    ),
    (
        "chainlog_connections",
        "gauge",
        "Open client connections.",
        |s| s.connections as u64,
    ),
    (
        "chainlog_connections_max",
        "gauge",
        "Connections the shard holds at most (connections_max); one more is refused.",
        |s| s.connections_max as u64,
    ),
    (
        "chainlog_connections_receive_buffer_bytes",
        "gauge",
        "Bytes of the receive buffers of the open connections.",
        |s| s.receive_buffer_bytes as u64,
    ),
];
const NAMED_COUNTS: [(&str, &str, &str, NamedCountsOf); 2] = [
    (
        "chainlog_requests_total",
        "Requests by opcode.",
        "opcode",
        |s| &s.shard.requests,
    ),
    (
        "chainlog_errors_total",
        "Error answers by code.",
        "code",
        |s| &s.shard.errors,
    ),
];

/// The Prometheus text exposition of `snapshots` (index = shard).
pub(crate) fn render(snapshots: &[Option<Snapshot>]) -> String {
    let shards = || {
        snapshots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    };
    let mut out = String::new();
    let help = "Append latency by stage in seconds (queue, batch_wait, disk, replication, ack, \
                total).";
    family(&mut out, STAGES_NAME, "histogram", help);
    for (stage, get) in STAGES {
        for (i, s) in shards() {
            histogram_series(
                &mut out,
                STAGES_NAME,
                &format!("shard=\"{i}\",stage=\"{stage}\""),
                get(s),
                Recorded::Micros,
            );
        }
    }
    for (name, help, get) in BATCHES {
        family(&mut out, name, "histogram", help);
        for (i, s) in shards() {
            let labels = format!("shard=\"{i}\"");
            histogram_series(&mut out, name, &labels, get(s), Recorded::Units);
        }
    }
    for (name, kind, help, get) in COUNTS {
        family(&mut out, name, kind, help);
        for (i, s) in shards() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(s));
        }
    }
    for (name, help, label, get) in NAMED_COUNTS {
        family(&mut out, name, "counter", help);
        for (i, s) in shards() {
            for (what, count) in get(s) {
                let _ = writeln!(out, "{name}{{shard=\"{i}\",{label}=\"{what}\"}} {count}");
            }
        }
    }
    out
}

/// Serves `GET /metrics` and `GET /traces` on `listener` from a thread of its own
/// ([`crate::prometheus::serve`]). Returns the address it listens on.
pub(crate) fn serve(listener: TcpListener, board: Board) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            // Rendered under the lock (a shard publishes once a second; the traces are not
            // copied for every scrape).
            prometheus::serve(&listener, &["/metrics", "/traces"], move |path| {
                let snapshots = board.lock().unwrap_or_else(|e| e.into_inner());
                match path {
                    "/metrics" => render(&snapshots),
                    _ => render_traces(&snapshots),
                }
            });
        })?;
    Ok(local)
}
