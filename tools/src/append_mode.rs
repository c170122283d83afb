//! `chainlog-bench append`: durable appends against a running node, over the network, through
//! the client library (`chainlog::client`), paced by the load engine ([`crate::load`]).
//!
//! **Closed loop** (`--concurrency C`): `C` appenders (sharing one client, so one pipelined
//! connection per shard) each keep exactly one append of one record outstanding. Appender `i`
//! appends to log `bench-(i % N)`.
//!
//! **Open loop** (`--rate R`): appends are due at `R` per second on average (`--arrivals
//! poisson`, the default, or `uniform`), round robin over the logs, whatever the node does;
//! latency runs from each append's intended send time (coordinated omission corrected), and
//! the report says how many sends went out late, by how much, and how many never went out
//! because `--outstanding-max` appends were already outstanding.
//!
//! A record's latency includes the client's retries of retryable errors (OVERLOADED,
//! WRONG_SHARD, UNAVAILABLE). After a warm-up (not counted) the run measures for the given
//! duration; an acknowledgement counts if it arrives inside the measured window. Errors are
//! counted by kind; the bench does not retry a failed call.
//!
//! `--readers K` adds `K` tailers (subscriptions from the tail, reader `j` on log `j % N`):
//! each record carries its send time in its first 8 bytes, and a tailer records the time from
//! the append call to the record's arrival (end-to-end latency).
//!
//! The logs are created if missing. Besides the report on stdout: `--json` (the report as
//! JSON), `--hdr-log` (an HdrHistogram interval log, one interval per second) and `--html`
//! (the HTML report, [`crate::html`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chainlog::client::{log_id, Client, ClientError, Subscription};
use chainlog::net::{ErrorCode, LSN_FROM_TAIL};
use clap::builder::TypedValueParser as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use crate::fingerprint::Fingerprint;
use crate::load::{
    self, Arrivals, Clock as _, IntervalStats, LoadResult, LoadSpec, LoopMode, MonotonicClock,
    RecordSizes, SendStats, SystemClock, Target, TargetError,
};
use crate::report::{self, LatencyPercentiles, LoadSummary, Progress};
use crate::stages::{self, StageBreakdown};
use crate::storage_mode::{parse_positive_seconds, parse_seconds};
use crate::target::{DevGuard, TargetArgs};

/// A send more than this after its intended time counts as late: below it is the wake-up
/// latency of the bench's own timer and thread, not a sender falling behind.
pub(crate) const LATE_AFTER: Duration = Duration::from_micros(200);
/// The default bound on outstanding appends in open loop: the client's own per-connection
/// bound (a request beyond it would wait inside the client, unseen by the lateness count).
const OUTSTANDING_MAX_DEFAULT: usize = 1024;

/// The arguments of `chainlog-bench append`; also the `config` object of its JSON report.
#[derive(Clone, Debug, Args, Serialize)]
pub(crate) struct AppendArgs {
    /// Where the load goes: `--target HOST:PORT` or `--dev N`.
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) target: TargetArgs,
    /// Payload bytes of each record: BYTES, or MIN..MAX for sizes drawn uniformly from MIN to
    /// MAX (both included). At most the node's record_bytes_max.
    #[arg(long, value_name = "BYTES|MIN..MAX", value_parser = load::parse_record_sizes)]
    pub(crate) record_size: RecordSizes,
    /// Closed loop: appenders, each with one append of one record outstanding.
    #[arg(long, value_name = "C", required_unless_present = "rate_per_s",
          conflicts_with = "rate_per_s",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) concurrency: Option<u32>,
    /// Open loop: records per second offered, whatever the node does.
    #[arg(long = "rate", value_name = "R", value_parser = parse_rate)]
    pub(crate) rate_per_s: Option<f64>,
    /// Open loop: how sends are spaced.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    pub(crate) arrivals: Arrivals,
    /// Open loop: appends outstanding at most; a send due beyond that waits (and goes out
    /// late, or not at all if the window ends first).
    #[arg(long, value_name = "N", default_value_t = OUTSTANDING_MAX_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000)
              .map(|n| n as usize))]
    pub(crate) outstanding_max: usize,
    /// Seconds to measure, after the warm-up.
    #[arg(long = "duration", value_name = "SECS", value_parser = parse_positive_seconds)]
    pub(crate) duration_s: f64,
    /// Logs appended to (bench-0 .. bench-N-1, created if missing), round robin.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) logs: u32,
    /// Tailers measuring end-to-end latency (append call to record seen); needs records of
    /// at least 8 bytes.
    #[arg(long, value_name = "K", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub(crate) readers: u32,
    /// Seeds the arrivals, record sizes and payload bytes.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Also write the latencies as an HdrHistogram interval log (one interval per second).
    #[arg(long, value_name = "FILE")]
    pub(crate) hdr_log: Option<PathBuf>,
    /// Also write the HTML report (plots, machine fingerprint) to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,
    /// Where the node serves Prometheus metrics, scraped before and after the run for the
    /// HTML report's stage breakdown [default: the port after the node's last shard's].
    #[arg(long, value_name = "HOST:PORT", requires = "html")]
    pub(crate) metrics: Option<String>,
    /// Seconds of warm-up before measuring (not counted).
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 1.0,
          value_parser = parse_seconds)]
    pub(crate) warmup_s: f64,
}

/// Parses a rate in records per second: a finite number above 0.
pub(crate) fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e9 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate in records per second (above 0)"
        )),
    }
}

impl AppendArgs {
    fn loop_mode(&self) -> LoopMode {
        match (self.concurrency, self.rate_per_s) {
            (_, Some(rate_per_s)) => LoopMode::Open {
                rate_per_s,
                arrivals: self.arrivals,
                outstanding_max: self.outstanding_max,
            },
            (Some(concurrency), None) => LoopMode::Closed { concurrency },
            (None, None) => unreachable!("clap requires --concurrency or --rate"),
        }
    }
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
    /// The load: closed or open loop, and how it went.
    #[serde(flatten)]
    load: LoadFacts,
    /// The node's own latency by stage over the run, warm-up included (scraped with
    /// `--html`); `null` if not scraped.
    stages: Option<StageBreakdown>,
}

/// What the new load engine adds to the report (top-level JSON fields).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LoadFacts {
    /// `"closed"` or `"open"`.
    pub(crate) loop_mode: &'static str,
    /// Open loop: records per second offered; `null` in closed loop.
    pub(crate) rate_per_s: Option<f64>,
    /// Open loop: `"uniform"` or `"poisson"`; `null` in closed loop.
    pub(crate) arrivals: Option<Arrivals>,
    /// Open loop: how the sends kept to the schedule; `null` in closed loop.
    pub(crate) sends: Option<SendStats>,
    /// Latency from the actual send, microseconds: the uncorrected view, which `latency_us`
    /// equals in closed loop.
    pub(crate) service_latency_us: LatencyPercentiles,
    /// Tailers' end-to-end latency (append call to record seen), microseconds; `null`
    /// without `--readers`.
    pub(crate) e2e_latency_us: Option<LatencyPercentiles>,
    /// Records the tailers saw in the measured window (one per tailer that saw it).
    pub(crate) e2e_records: u64,
    /// One entry per second of the measured window.
    pub(crate) intervals: Vec<IntervalStats>,
}

impl LoadFacts {
    /// The facts of `result` run as `loop_mode`, with the tailers' latencies if any.
    pub(crate) fn of(
        loop_mode: LoopMode,
        result: &LoadResult,
        e2e: Option<&Histogram<u64>>,
    ) -> LoadFacts {
        let (rate_per_s, arrivals) = match loop_mode {
            LoopMode::Closed { .. } => (None, None),
            LoopMode::Open {
                rate_per_s,
                arrivals,
                ..
            } => (Some(rate_per_s), Some(arrivals)),
        };
        LoadFacts {
            loop_mode: loop_mode.name(),
            rate_per_s,
            arrivals,
            sends: result.sends.clone(),
            service_latency_us: LatencyPercentiles::of(&result.service_latency),
            e2e_latency_us: e2e.map(LatencyPercentiles::of),
            e2e_records: e2e.map_or(0, Histogram::len),
            intervals: result.time_series(),
        }
    }
}

/// What the node said in HELLO.
#[derive(Debug, Serialize)]
struct NodeSettings {
    /// The address of shard 0.
    addr: String,
    /// Shards of the node (shard i listens on shard 0's port + i).
    shard_count: u16,
    /// Largest record payload the node accepts.
    record_bytes_max: u32,
    /// Most records in one APPEND.
    batch_records_max: u32,
    /// Largest frame the node accepts.
    frame_bytes_max: u32,
}

/// The client library as the load engine's target: log number `i` is `logs[i]`.
#[derive(Debug)]
pub(crate) struct ClientTarget {
    client: Client,
    logs: Vec<u64>,
}

impl ClientTarget {
    /// Appends through `client` to the logs called `log_names`.
    pub(crate) fn new(client: Client, log_names: &[String]) -> ClientTarget {
        ClientTarget {
            client,
            logs: log_names.iter().map(|name| log_id(name)).collect(),
        }
    }
}

impl Target for ClientTarget {
    async fn append(&self, log: usize, payload: Vec<u8>) -> Result<(), TargetError> {
        match self.client.append(self.logs[log], &[payload]).await {
            Ok(_) => Ok(()),
            Err(e @ ClientError::Connect { .. }) | Err(e @ ClientError::Invalid(_)) => {
                Err(TargetError::Fatal(e.to_string()))
            }
            // The log was deleted under the bench.
            Err(e) if e.code() == Some(ErrorCode::UnknownLog) => {
                Err(TargetError::Fatal(e.to_string()))
            }
            Err(e) => Err(TargetError::Counted(error_kind(&e))),
        }
    }
}

/// Resolves `target` (starting the dev cluster with `--dev`) and connects a client to its
/// shard 0. The guard, if any, must outlive the run and its report.
pub(crate) async fn connect(
    target: &TargetArgs,
) -> Result<(SocketAddr, Client, Option<DevGuard>), String> {
    let (addr, guard) = target.resolve().await?;
    let client = Client::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    Ok((addr, client, guard))
}

/// Creates logs `bench-0 .. bench-(n-1)` with `rf` replicas where missing; returns their
/// names.
pub(crate) async fn create_logs(client: &Client, n: u32, rf: u8) -> Result<Vec<String>, String> {
    let log_names: Vec<String> = (0..n).map(|i| format!("bench-{i}")).collect();
    for name in &log_names {
        match client.create_log_with(name, rf).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::LogExists) => {}
            Err(e) => return Err(format!("creating log {name}: {e}")),
        }
    }
    Ok(log_names)
}

/// Runs `chainlog-bench append`: prints the report on stdout and writes the files asked for.
pub(crate) fn main(args: AppendArgs) -> Result<(), String> {
    if args.readers > 0 && args.record_size.min() < load::STAMP_BYTES {
        crate::usage_error(
            "append",
            format!(
                "--readers needs records of at least {} bytes (they carry their send time)",
                load::STAMP_BYTES
            ),
        );
    }
    // Before the load starts: probing the machine writes to the disk.
    let fingerprint = args
        .html
        .as_ref()
        .map(|_| Fingerprint::probe(args.target.dev_dir.as_deref()));
    // One thread for the load engine and the client's connections: an ack is handled on the
    // thread that received it, with no cross-thread wake-up per append (on a 2-vCPU VM a
    // multi-threaded runtime added 40-70 µs to the c=1 p50 and cost a third of the c=64
    // throughput: ARCHITECTURE.md section 16).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    // `_guard` keeps a dev cluster up until the reports are written.
    let (report, measured, _guard) = runtime.block_on(run(&args))?;
    print!("{}", report.human());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.hdr_log {
        report::write_hdr_log(path, &measured.result.intervals, measured.measure_start)?;
    }
    if let (Some(path), Some(fingerprint)) = (&args.html, fingerprint) {
        let html = crate::html::HtmlReport {
            title: format!(
                "chainlog-bench append: {} B records, {}",
                args.record_size,
                load_phrase(args.loop_mode())
            ),
            command_line: report::command_line(),
            summary: report.summary.clone(),
            sweep: None,
            timeline: report::timeline(&report.load.intervals),
            spectrum: crate::html::spectrum_of(&measured.result.latency),
            fingerprint: Fingerprint {
                config: serde_json::to_value(&args).unwrap_or_default(),
                ..fingerprint
            },
            stages: report.stages.clone(),
        };
        crate::html::write_report(path, &html)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("  report         {}", path.display());
    }
    Ok(())
}

/// Connects (starting the dev cluster with `--dev`), creates the logs, runs the load; returns
/// the report, what was measured, and the dev cluster's guard.
async fn run(args: &AppendArgs) -> Result<(AppendReport<'_>, Measured, Option<DevGuard>), String> {
    let (addr, client, guard) = connect(&args.target).await?;
    let limits = client.limits();
    if args.record_size.max() > limits.record_bytes_max as usize {
        crate::usage_error(
            "append",
            format!(
                "--record-size {} is above the node's record_bytes_max {}",
                args.record_size, limits.record_bytes_max
            ),
        );
    }
    let log_names = create_logs(&client, args.logs, args.target.rf).await?;
    let spec = LoadSpec {
        loop_mode: args.loop_mode(),
        logs: log_names.len(),
        record_sizes: args.record_size,
        warmup: Duration::from_secs_f64(args.warmup_s),
        duration: Duration::from_secs_f64(args.duration_s),
        late_after: LATE_AFTER,
        seed: args.seed,
    };
    let target = ClientTarget::new(client.clone(), &log_names);
    let metrics = args
        .html
        .as_ref()
        .and_then(|_| metrics_addr(args.metrics.as_deref(), &client, &log_names[0]));
    let before = match &metrics {
        Some(addr) => scrape_metrics(addr).await,
        None => None,
    };
    let measured = run_load(&target, &spec, args.readers, "append").await?;
    let stages = match (&metrics, before) {
        (Some(addr), Some(before)) => scrape_metrics(addr)
            .await
            .and_then(|after| stages::breakdown(&before, &after)),
        _ => None,
    };
    let result = &measured.result;
    let report = AppendReport {
        mode: "append",
        version: env!("CARGO_PKG_VERSION"),
        config: args,
        node: NodeSettings {
            addr: addr.to_string(),
            shard_count: client.shard_count(),
            record_bytes_max: limits.record_bytes_max,
            batch_records_max: limits.batch_records_max,
            frame_bytes_max: limits.frame_bytes_max,
        },
        log_names,
        summary: LoadSummary::of_bytes(
            result.duration,
            result.records,
            result.bytes,
            &result.latency,
            result.errors.clone(),
        ),
        load: LoadFacts::of(spec.loop_mode, result, measured.e2e.as_ref()),
        stages,
    };
    Ok((report, measured, guard))
}

/// Where the node that takes the appends to `first_log` serves its metrics: `given`, or by
/// default the port after its last shard's (the node's default, and the dev cluster's). That
/// node is the target (a standalone node) or the log's head (in a cluster). `None`, with a
/// note on stderr, if the map does not say: the stage breakdown is optional.
pub(crate) fn metrics_addr(
    given: Option<&str>,
    client: &Client,
    first_log: &str,
) -> Option<String> {
    if let Some(addr) = given {
        return Some(addr.to_string());
    }
    let Some(map) = client.map() else {
        let node = client.shard_addr(0);
        let port = node.port().saturating_add(client.shard_count());
        return Some(SocketAddr::new(node.ip(), port).to_string());
    };
    let head = map
        .log(log_id(first_log))
        .and_then(|log| map.node(log.head()));
    let addr = head.and_then(|node| {
        let (host, port) = node.addr.rsplit_once(':')?;
        let port = port.parse::<u16>().ok()?.saturating_add(node.shard_count);
        Some(format!("{host}:{port}"))
    });
    if addr.is_none() {
        eprintln!("chainlog-bench: no stage breakdown: the cluster map does not say where the head of {first_log} is");
    }
    addr
}

/// Scrapes the metrics at `addr` (off the runtime's threads: it blocks); `None`, with a note
/// on stderr, if that fails: the stage breakdown is optional, the run goes on without it.
pub(crate) async fn scrape_metrics(addr: &str) -> Option<stages::Scrape> {
    let owned = addr.to_string();
    match tokio::task::spawn_blocking(move || stages::scrape(&owned)).await {
        Ok(Ok(scrape)) => Some(scrape),
        Ok(Err(e)) => {
            eprintln!("chainlog-bench: no stage breakdown: scraping {addr}: {e}");
            None
        }
        Err(e) => {
            eprintln!("chainlog-bench: no stage breakdown: scraping {addr}: {e}");
            None
        }
    }
}

/// What [`run_load`] measured.
#[derive(Debug)]
pub(crate) struct Measured {
    /// The engine's measurements.
    pub(crate) result: LoadResult,
    /// The tailers' end-to-end latencies, microseconds (`None` without tailers).
    pub(crate) e2e: Option<Histogram<u64>>,
    /// Wall-clock time when the measured window began (for the HdrHistogram log).
    pub(crate) measure_start: SystemTime,
}

/// Runs `spec` through `target` with `readers` tailers, showing a progress line labelled
/// `label`.
pub(crate) async fn run_load(
    target: &ClientTarget,
    spec: &LoadSpec,
    readers: u32,
    label: &str,
) -> Result<Measured, String> {
    let clock = SystemClock::new().map_err(|e| format!("creating a timerfd: {e}"))?;
    let (stop, stopped) = watch::channel(false);
    let mut tailers = Vec::with_capacity(readers as usize);
    // Subscribed before the load starts, so they see every measured record.
    let start = clock.now();
    let measure_start = SystemTime::now() + spec.warmup;
    let window = (start + spec.warmup, start + spec.warmup + spec.duration);
    for j in 0..readers as usize {
        let log = target.logs[j % target.logs.len()];
        let subscription = target
            .client
            .subscribe(log, LSN_FROM_TAIL)
            .await
            .map_err(|e| format!("a reader subscribing: {e}"))?;
        tailers.push(tokio::spawn(tail(
            subscription,
            clock.monotonic(),
            window,
            stopped.clone(),
        )));
    }
    let mut progress = Progress::new();
    let mut on_interval = |i: &IntervalStats| {
        progress.update(&format!(
            "{label}: {:.1} s, {} records/s, p99 {} µs",
            i.start_s + i.duration_s,
            report::thousands(i.records_per_s.round() as u64),
            report::thousands(i.latency_us_p99),
        ));
    };
    let result = load::run(&clock, target, spec, start, &mut on_interval).await;
    progress.finish();
    let _ = stop.send(true);
    let mut e2e = (readers > 0).then(report::latency_histogram);
    for tailer in tailers {
        let seen = tailer
            .await
            .map_err(|e| format!("a reader failed: {e}"))??;
        if let Some(e2e) = e2e.as_mut() {
            e2e.add(&seen)
                .map_err(|e| format!("merging histograms: {e}"))?;
        }
    }
    Ok(Measured {
        result: result?,
        e2e,
        measure_start,
    })
}

/// One tailer: records the end-to-end latency of each record sent inside `window` (clock
/// times) until told to stop.
async fn tail(
    mut subscription: Subscription,
    clock: MonotonicClock,
    window: (Duration, Duration),
    mut stop: watch::Receiver<bool>,
) -> Result<Histogram<u64>, String> {
    let mut e2e = report::latency_histogram();
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(e2e),
            item = subscription.next() => match item {
                Some(Ok(record)) => {
                    let seen = clock.now();
                    if let Some(sent) = load::stamp_of(&record.payload) {
                        if sent >= window.0 && sent < window.1 {
                            report::record_latency(&mut e2e, seen.saturating_sub(sent));
                        }
                    }
                }
                Some(Err(e)) => return Err(format!("a reader's subscription failed: {e}")),
                None => return Err("a reader's subscription ended".into()),
            },
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
            ErrorCode::WriterSeq => "writer_seq",
            ErrorCode::Gap => "gap",
            ErrorCode::UnknownNode => "unknown_node",
            ErrorCode::NotController => "not_controller",
            ErrorCode::Diverged => "diverged",
        },
        ClientError::Connect { .. } => "connect",
        ClientError::ConnectionLost { .. } => "connection_lost",
        ClientError::Timeout { .. } => "timeout",
        ClientError::Protocol(_) => "protocol",
        ClientError::Invalid(_) => "invalid",
        ClientError::MapUnsettled => "map_unsettled",
    }
}

/// `"4 appenders"` or `"open loop at 10,000 records/s (poisson, at most 1,024 outstanding)"`.
pub(crate) fn load_phrase(loop_mode: LoopMode) -> String {
    match loop_mode {
        LoopMode::Closed { concurrency } => format!(
            "{concurrency} appender{}",
            if concurrency == 1 { "" } else { "s" }
        ),
        LoopMode::Open {
            rate_per_s,
            arrivals,
            outstanding_max,
        } => format!(
            "open loop at {} records/s ({}, at most {} outstanding)",
            report::thousands(rate_per_s.round() as u64),
            arrivals.name(),
            report::thousands(outstanding_max as u64),
        ),
    }
}

impl LoadFacts {
    /// The human-readable lines the load engine adds: send accounting, the uncorrected view,
    /// the tailers.
    pub(crate) fn human(&self, out: &mut String) {
        use std::fmt::Write as _;
        if let Some(s) = &self.sends {
            let _ = writeln!(
                out,
                "  sends          {} intended, {} sent, {} late (> {} µs), {} not sent; \
                 lateness (µs) p99 {} max {}",
                report::thousands(s.intended),
                report::thousands(s.sent),
                report::thousands(s.late),
                report::thousands(s.late_after_us),
                report::thousands(s.not_sent),
                report::thousands(s.lateness_us.p99),
                report::thousands(s.lateness_us.max),
            );
            let u = &self.service_latency_us;
            let _ = writeln!(
                out,
                "  uncorrected    p50 {}  p99 {}  p99.9 {}  max {}  (µs from the actual send; \
                 latency above is from the intended send)",
                report::thousands(u.p50),
                report::thousands(u.p99),
                report::thousands(u.p999),
                report::thousands(u.max),
            );
        }
        if let Some(e) = &self.e2e_latency_us {
            let _ = writeln!(
                out,
                "  end-to-end     p50 {}  p99 {}  p99.9 {}  max {}  (µs, append call to tailer, \
                 {} records seen)",
                report::thousands(e.p50),
                report::thousands(e.p99),
                report::thousands(e.p999),
                report::thousands(e.max),
                report::thousands(self.e2e_records),
            );
        }
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
            report::headline_with(
                "append",
                c.record_size,
                &load_phrase(c.loop_mode()),
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
        self.load.human(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_checked() {
        assert_eq!(parse_rate("1000"), Ok(1000.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-3").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn load_phrases_name_the_loop() {
        assert_eq!(
            load_phrase(LoopMode::Closed { concurrency: 1 }),
            "1 appender"
        );
        assert_eq!(
            load_phrase(LoopMode::Open {
                rate_per_s: 10_000.0,
                arrivals: Arrivals::Poisson,
                outstanding_max: 1024
            }),
            "open loop at 10,000 records/s (poisson, at most 1,024 outstanding)"
        );
    }
}
