//! `chainlog-bench append`: durable appends against a running node, over the network, through
//! the client library (`chainlog::client`).
//!
//! **Closed loop**: `C` appenders (tokio tasks sharing one client, so one pipelined connection
//! per shard) each keep exactly one append of one record outstanding; when its acknowledgement
//! arrives, its latency is recorded and the next append is sent at once. Appender `i` appends
//! to log `bench-(i % N)`; the logs are created if missing. A record's latency runs from the
//! call to `append` to its durable acknowledgement, retries of retryable errors (OVERLOADED,
//! WRONG_SHARD, UNAVAILABLE) included. After a warm-up (not counted) the run measures for the
//! given duration; an acknowledgement counts if it arrives inside the measured window.
//!
//! Errors are counted by kind; a call that failed is not retried by the bench (the client
//! already retried what was retryable), the appender just sends its next record.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainlog::client::{log_id, Client, ClientError};
use chainlog::net::ErrorCode;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{self, Errors, LoadSummary, Progress};
use crate::storage_mode::{parse_positive_seconds, parse_seconds, payloads};

/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Phases of a run, as the appenders see them.
const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;

/// The arguments of `chainlog-bench append`; also the `config` object of its JSON report.
#[derive(Clone, Debug, Args, Serialize)]
pub(crate) struct AppendArgs {
    /// Address of the node's shard 0 (shard i listens on port + i).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7400")]
    pub(crate) target: String,
    /// Payload bytes of each record (at most the node's record_bytes_max).
    #[arg(long, value_name = "BYTES")]
    pub(crate) record_size: usize,
    /// Appenders, each with one append of one record outstanding.
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) concurrency: u32,
    /// Seconds to measure, after the warm-up.
    #[arg(long = "duration", value_name = "SECS", value_parser = parse_positive_seconds)]
    pub(crate) duration_s: f64,
    /// Logs appended to (bench-0 .. bench-N-1, created if missing); appender i appends to
    /// log i % N.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) logs: u32,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Seconds of warm-up before measuring (not counted).
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 1.0,
          value_parser = parse_seconds)]
    pub(crate) warmup_s: f64,
}

/// The JSON report of `chainlog-bench append` (field docs are the README's).
#[derive(Debug, Serialize)]
struct AppendReport<'a> {
    /// Always `"append"`.
    mode: &'static str,
    /// chainlog-bench's version.
    version: &'static str,
    /// The arguments, defaults filled in.
    config: &'a AppendArgs,
    /// What the node said in HELLO.
    node: NodeSettings,
    /// The logs appended to.
    log_names: Vec<String>,
    /// Throughput, latency and errors of the measured window (top-level fields).
    #[serde(flatten)]
    summary: LoadSummary,
}

#[derive(Debug, Serialize)]
struct NodeSettings {
    /// The address of shard 0.
    addr: String,
    shard_count: u16,
    record_bytes_max: u32,
    batch_records_max: u32,
    frame_bytes_max: u32,
}

/// What one appender measured.
struct Measured {
    latency: Histogram<u64>,
    records: u64,
    errors: Errors,
}

pub(crate) fn main(args: AppendArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(run(args))
}

async fn run(args: AppendArgs) -> Result<(), String> {
    let addr: SocketAddr = tokio::net::lookup_host(&args.target)
        .await
        .map_err(|e| format!("--target {}: {e}", args.target))?
        .next()
        .ok_or_else(|| format!("--target {}: no address", args.target))?;
    let client = Client::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let limits = client.limits();
    if args.record_size > limits.record_bytes_max as usize {
        crate::usage_error(
            "append",
            format!(
                "--record-size {} is above the node's record_bytes_max {}",
                args.record_size, limits.record_bytes_max
            ),
        );
    }
    let log_names: Vec<String> = (0..args.logs).map(|i| format!("bench-{i}")).collect();
    for name in &log_names {
        match client.create_log(name).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::LogExists) => {}
            Err(e) => return Err(format!("creating log {name}: {e}")),
        }
    }
    let payloads = Arc::new(payloads(args.record_size, args.concurrency as usize));
    let phase = Arc::new(AtomicU8::new(PHASE_WARMUP));
    let acked = Arc::new(AtomicU64::new(0));
    let mut appenders = Vec::with_capacity(args.concurrency as usize);
    for i in 0..args.concurrency as usize {
        let client = client.clone();
        let log = log_id(&log_names[i % log_names.len()]);
        let payloads = Arc::clone(&payloads);
        let phase = Arc::clone(&phase);
        let acked = Arc::clone(&acked);
        appenders.push(tokio::spawn(async move {
            appender(&client, log, &payloads[i % payloads.len()], &phase, &acked).await
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_s)).await;
    phase.store(PHASE_MEASURE, Ordering::Release);
    let start = Instant::now();
    let acked_at_start = acked.load(Ordering::Relaxed);
    let end = start + Duration::from_secs_f64(args.duration_s);
    let mut progress = Progress::new();
    let mut last = (start, acked_at_start);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(PROGRESS_EVERY)).await;
        let now = Instant::now();
        let total = acked.load(Ordering::Relaxed);
        let rate = (total - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        progress.update(&format!(
            "append: {:.1} s, {} records/s",
            now.duration_since(start).as_secs_f64(),
            report::thousands(rate.round() as u64)
        ));
        last = (now, total);
    }
    phase.store(PHASE_STOP, Ordering::Release);
    let duration = start.elapsed();
    progress.finish();
    let mut latency = report::latency_histogram();
    let mut records = 0;
    let mut errors = Errors::new();
    for appender in appenders {
        let measured = appender
            .await
            .map_err(|e| format!("an appender failed: {e}"))??;
        latency
            .add(&measured.latency)
            .map_err(|e| format!("merging histograms: {e}"))?;
        records += measured.records;
        for (kind, n) in measured.errors {
            *errors.entry(kind).or_default() += n;
        }
    }
    let report = AppendReport {
        mode: "append",
        version: env!("CARGO_PKG_VERSION"),
        config: &args,
        node: NodeSettings {
            addr: addr.to_string(),
            shard_count: client.shard_count(),
            record_bytes_max: limits.record_bytes_max,
            batch_records_max: limits.batch_records_max,
            frame_bytes_max: limits.frame_bytes_max,
        },
        log_names,
        summary: LoadSummary::new(duration, records, args.record_size as u64, &latency, errors),
    };
    print!("{}", report.human());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// One closed-loop appender: one record outstanding until the phase is STOP.
async fn appender(
    client: &Client,
    log: u64,
    payload: &[u8],
    phase: &AtomicU8,
    acked: &AtomicU64,
) -> Result<Measured, String> {
    let mut measured = Measured {
        latency: report::latency_histogram(),
        records: 0,
        errors: Errors::new(),
    };
    loop {
        if phase.load(Ordering::Acquire) == PHASE_STOP {
            return Ok(measured);
        }
        let sent = Instant::now();
        let result = client.append(log, &[payload]).await;
        let measuring = match phase.load(Ordering::Acquire) {
            PHASE_STOP => return Ok(measured),
            p => p == PHASE_MEASURE,
        };
        match result {
            Ok(_) => {
                acked.fetch_add(1, Ordering::Relaxed);
                if measuring {
                    report::record_latency(&mut measured.latency, sent.elapsed());
                    measured.records += 1;
                }
            }
            Err(e @ ClientError::Connect { .. }) | Err(e @ ClientError::Invalid(_)) => {
                return Err(e.to_string());
            }
            Err(e) => {
                if let Some(ErrorCode::UnknownLog) = e.code() {
                    return Err(e.to_string()); // the log was deleted under the bench
                }
                *measured.errors.entry(error_kind(&e)).or_default() += 1;
            }
        }
    }
}

/// The snake_case name an error is counted under.
fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::Server(s) => match s.code {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownLog => "unknown_log",
            ErrorCode::WrongEpoch => "wrong_epoch",
            ErrorCode::NotHead => "not_head",
            ErrorCode::Sealed => "sealed",
            ErrorCode::ConditionFailed => "condition_failed",
            ErrorCode::Fenced => "fenced",
            ErrorCode::Trimmed => "trimmed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::WrongShard => "wrong_shard",
            ErrorCode::LogExists => "log_exists",
            ErrorCode::Unavailable => "unavailable",
        },
        ClientError::Connect { .. } => "connect",
        ClientError::ConnectionLost { .. } => "connection_lost",
        ClientError::Timeout { .. } => "timeout",
        ClientError::Protocol(_) => "protocol",
        ClientError::Invalid(_) => "invalid",
    }
}

impl AppendReport<'_> {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let c = self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}",
            report::headline(
                "append",
                c.record_size,
                c.concurrency,
                "appender",
                c.logs,
                c.duration_s,
                c.warmup_s
            )
        );
        let _ = writeln!(
            out,
            "  node           {}, {} shard{}",
            self.node.addr,
            self.node.shard_count,
            if self.node.shard_count == 1 { "" } else { "s" },
        );
        self.summary.human(&mut out);
        out
    }
}
