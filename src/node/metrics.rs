//! Node metrics: what each shard measures, the snapshot it publishes once a second (the only
//! cross-thread traffic, on the control path), and the Prometheus text served at `/metrics`.
//!
//! Append latency is split into stages: `queue` (frame received to handed to the store),
//! `batch_wait` (handed to the store to its frame's submission: group commit), `disk` (the
//! frame's durable write), `ack` (durability seen to the answer queued), and `total`
//! (frame received to answer queued). Group commit batch sizes, bytes and records per shard,
//! logs and connections complete the picture.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use chainlog_storage::StoreMetrics;
use hdrhistogram::Histogram;

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
    pub(crate) bytes_received: u64,
    /// Appended or received batches forwarded to the successor from the store's buffer.
    pub(crate) forwards: u64,
    /// Records sent to a successor that was behind, read from the store.
    pub(crate) catch_up_records: u64,
    /// Records taken back from a successor after a restart (this node had lost them).
    pub(crate) pulled_records: u64,
    /// Replication links closed (they reconnect).
    pub(crate) link_resets: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
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
            bytes_received: 0,
            forwards: 0,
            catch_up_records: 0,
            pulled_records: 0,
            link_resets: 0,
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
    pub(crate) connections: usize,
    /// Logs whose successor has not answered every record stored here, and how many records
    /// it is behind in all.
    pub(crate) lagging_logs: usize,
    pub(crate) lag_records: u64,
}

/// The latest snapshot of every shard, by index.
pub(crate) type Board = Arc<Mutex<Vec<Option<Snapshot>>>>;

/// How to find a histogram or a count in a snapshot.
type HistogramOf = fn(&Snapshot) -> &Histogram<u64>;
type CountOf = fn(&Snapshot) -> u64;
type NamedCountsOf = fn(&Snapshot) -> &Vec<(&'static str, u64)>;

const STAGES_NAME: &str = "chainlog_append_stage_latency_us";
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
const COUNTS: [(&str, &str, &str, CountOf); 14] = [
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
        "chainlog_replication_pulled_records_total",
        "counter",
        "Records taken back from a successor after a restart (this node had lost them).",
        |s| s.shard.pulled_records,
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
        "chainlog_bytes_written_total",
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
        "chainlog_bytes_received_total",
        "counter",
        "Bytes received from clients.",
        |s| s.shard.bytes_received,
    ),
    ("chainlog_logs", "gauge", "Logs owned by the shard.", |s| {
        s.logs as u64
    }),
    (
        "chainlog_connections",
        "gauge",
        "Open client connections.",
        |s| s.connections as u64,
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

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn summary(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    for q in [0.5, 0.9, 0.99, 0.999] {
        let _ = writeln!(
            out,
            "{name}{{{labels},quantile=\"{q}\"}} {}",
            h.value_at_quantile(q)
        );
    }
    let sum = (h.mean() * h.len() as f64).round() as u64;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// The Prometheus text exposition of `snapshots` (index = shard).
pub(crate) fn render(snapshots: &[Option<Snapshot>]) -> String {
    let shards = || {
        snapshots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    };
    let mut out = String::new();
    let help = "Append latency by stage in microseconds (queue, batch_wait, disk, replication, \
                ack, total).";
    family(&mut out, STAGES_NAME, "summary", help);
    for (stage, get) in STAGES {
        for (i, s) in shards() {
            summary(
                &mut out,
                STAGES_NAME,
                &format!("shard=\"{i}\",stage=\"{stage}\""),
                get(s),
            );
        }
    }
    for (name, help, get) in BATCHES {
        family(&mut out, name, "summary", help);
        for (i, s) in shards() {
            summary(&mut out, name, &format!("shard=\"{i}\""), get(s));
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

/// Serves `GET /metrics` on `listener` from a thread of its own (a small HTTP/1.1 responder:
/// one request per connection). Returns the address it listens on.
pub(crate) fn serve(listener: TcpListener, board: Board) -> std::io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request_line = String::new();
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            });
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (status, body) = if request_line.starts_with("GET /metrics ") {
                let snapshots = board.lock().unwrap_or_else(|e| e.into_inner()).clone();
                ("200 OK", render(&snapshots))
            } else {
                ("404 Not Found", "only GET /metrics is served here\n".to_string())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(local)
}
