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
//! `--fault` (with `--dev`) applies scripted faults to the dev cluster during the window and
//! reports what each did ([`crate::faults`]).
//!
//! The logs are created if missing. Besides the report on stdout: `--json` (the report as
//! JSON), `--hdr-log` (an HdrHistogram interval log, one per interval of the time series) and `--html`
//! (the HTML report, [`crate::html`]).

use std::collections::HashMap;
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

use crate::faults::{self, Drill, Fault, FaultReport};
use crate::fingerprint::Fingerprint;
use crate::load::{
    self, Arrivals, Clock as _, Completion, IntervalStats, LoadResult, LoadSpec, LoopMode,
    MonotonicClock, RecordSizes, SendStats, SystemClock, Target, TargetError,
};
use crate::report::{self, LatencyPercentiles, LoadSummary, Progress};
use crate::stages::{self, StageBreakdown};
use crate::storage_mode::{parse_positive_seconds, parse_seconds};
use crate::target::{DevGuard, TargetArgs};
use crate::topology::{NodeInfo, Topology};
use crate::trace;
use crate::Failure;

/// A send more than this after its intended time counts as late: below it is the wake-up
/// latency of the bench's own timer and thread, not a sender falling behind.
pub(crate) const LATE_AFTER: Duration = Duration::from_micros(200);
/// After the measured window, answers of appends still outstanding are waited for this long
/// at most; an append unanswered by then counts as not acknowledged.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);
/// How long after a run its nodes have surely published its end to `/metrics` and `/traces`
/// (each shard publishes once a second).
const PUBLISH_WAIT: Duration = Duration::from_millis(1_100);
/// A run with fewer of its intended appends acknowledged is reported as failed (exit status
/// 3) and warned about.
pub(crate) const ACKNOWLEDGED_SHARE_MIN: f64 = 0.99;
/// A generator that used this much of a core over the run is warned about.
const GENERATOR_CPU_SHARE_MAX: f64 = 0.85;
/// Send lateness (p99) above this may be warned about (below it is timer wake-up noise).
const LATE_AFTER_US_WARN: u64 = 1_000;
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
    /// Also write the latencies as an HdrHistogram interval log (one per interval of the time
    /// series: 1 s, shorter for short runs).
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
    /// A fault applied to the dev cluster (--dev only), T after the measured window began:
    /// kill:ROLE@T (SIGKILL), stop:ROLE@T/D (SIGSTOP, SIGCONT D later) or restart@T (start
    /// again the members earlier faults killed). ROLE: head, middle or tail of the first
    /// log's chain in the cluster map at that moment, or controller. Times: 5s, 500ms.
    /// Repeatable; the report gives each fault's unavailability, failed and indefinite
    /// appends, and p99 / p99.9 before, during and after.
    #[arg(long = "fault", value_name = "FAULT", value_parser = faults::parse_fault)]
    pub(crate) faults: Vec<Fault>,
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
    /// The arguments that applied to the run, as JSON (the HTML report's configuration).
    fn applied_config(&self) -> serde_json::Value {
        let loop_keys: &[&str] = match self.loop_mode() {
            LoopMode::Closed { .. } => &["rate_per_s", "arrivals", "outstanding_max"],
            LoopMode::Open { .. } => &["concurrency"],
        };
        let drop: Vec<&str> = loop_keys
            .iter()
            .chain(self.target.unapplied())
            .copied()
            .collect();
        crate::target::applied_config(self, &drop)
    }

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
    /// What the target said in HELLO (the controller's, in a cluster: `topology` describes
    /// the nodes).
    node: NodeSettings,
    /// What the run ran against: the node, or the cluster's nodes and the logs' chains.
    topology: Topology,
    /// The logs appended to.
    log_names: Vec<String>,
    /// Throughput, latency and errors of the measured window (top-level fields).
    #[serde(flatten)]
    summary: LoadSummary,
    /// The load: closed or open loop, and how it went.
    #[serde(flatten)]
    load: LoadFacts,
    /// The server-side latency by stage over the run (warm-up included) of the node that
    /// heads the first log; `null` if its metrics could not be scraped.
    stages: Option<StageBreakdown>,
    /// The same for every node that holds the run's logs (heads, middles, tails).
    node_stages: Vec<NodeStages>,
    /// Where single appends' time went, from the generator's schedule to its seeing the
    /// acknowledgement, joined with the heads' traces ([`crate::trace`]); `null` if the
    /// heads' traces could not be fetched.
    per_append: Option<trace::Breakdown>,
    /// What each `--fault` did, in the order they were applied (empty without faults).
    faults: Vec<FaultReport>,
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
    /// What became of the appends meant for the window.
    pub(crate) completion: Completion,
    /// How busy this process was over the run: user + system CPU seconds per second of the
    /// run (1.0: one core, all the time), less the microseconds before each send that it
    /// spent yielding until the send was due.
    pub(crate) generator_cpu_share: f64,
    /// What makes this run's figures doubtful (fewer than 99% of the appends acknowledged,
    /// the generator itself the bottleneck), one sentence each; empty if nothing does.
    pub(crate) warnings: Vec<String>,
    /// The time series: the window cut into intervals (1 s, or shorter for short runs).
    pub(crate) intervals: Vec<IntervalStats>,
}

impl LoadFacts {
    /// The facts of `measured`, run as `loop_mode`.
    pub(crate) fn of(loop_mode: LoopMode, measured: &Measured) -> LoadFacts {
        let result = &measured.result;
        let e2e = measured.e2e.as_ref();
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
            completion: result.completion.clone(),
            generator_cpu_share: measured.cpu_share,
            warnings: warnings(result, measured.cpu_share),
            intervals: result.time_series(),
        }
    }

    /// Whether fewer than [`ACKNOWLEDGED_SHARE_MIN`] of the intended appends were
    /// acknowledged.
    pub(crate) fn unhealthy(&self) -> bool {
        self.completion.acknowledged_share < ACKNOWLEDGED_SHARE_MIN
    }
}

/// The warnings of a run (see [`LoadFacts::warnings`]).
fn warnings(result: &LoadResult, cpu_share: f64) -> Vec<String> {
    let mut warnings = Vec::new();
    let c = &result.completion;
    if c.acknowledged_share < ACKNOWLEDGED_SHARE_MIN {
        warnings.push(format!(
            "only {:.1}% of the {} intended appends were acknowledged (fewer than {:.0}%): \
             {} failed, {} unanswered {:.1} s after the window, {} never sent; their latency \
             counts as the time to the end of the run, a lower bound",
            c.acknowledged_share * 100.0,
            report::thousands(c.intended),
            ACKNOWLEDGED_SHARE_MIN * 100.0,
            report::thousands(c.failed),
            report::thousands(c.unanswered),
            c.drain_max_s,
            report::thousands(c.not_sent),
        ));
    }
    if cpu_share >= GENERATOR_CPU_SHARE_MAX {
        warnings.push(format!(
            "the generator used {:.0}% of a core: it may be the bottleneck, not the target \
             (its sends and the handling of answers wait for its own thread)",
            cpu_share * 100.0
        ));
    }
    if let Some(s) = &result.sends {
        let latency = LatencyPercentiles::of(&result.latency);
        // Lateness the bound caused is the target's (it held answers back); the rest is
        // this process not getting to its sends on time.
        let own = s.own_lateness_us.p99;
        if own > LATE_AFTER_US_WARN && own * 2 >= latency.p99 {
            warnings.push(format!(
                "the generator's own sends were late by up to {} µs at p99 (latency p99 {} µs): \
                 at least half of the p99 is this process falling behind its schedule, not \
                 the target",
                report::thousands(own),
                report::thousands(latency.p99),
            ));
        }
    }
    warnings
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
    /// Whether a failed connect ends the run (the target is unreachable), or is an append's
    /// failure like another (a fault drill killed the head; the map will move on).
    connect_fatal: bool,
}

impl ClientTarget {
    /// Appends through `client` to the logs called `log_names`.
    pub(crate) fn new(client: Client, log_names: &[String]) -> ClientTarget {
        ClientTarget {
            client,
            logs: log_names.iter().map(|name| log_id(name)).collect(),
            connect_fatal: true,
        }
    }

    /// Counts failed connects as failed appends instead of ending the run.
    pub(crate) fn counting_connect_failures(self) -> ClientTarget {
        ClientTarget {
            connect_fatal: false,
            ..self
        }
    }
}

impl Target for ClientTarget {
    async fn append(&self, log: usize, payload: Vec<u8>) -> Result<u64, TargetError> {
        match self.client.append(self.logs[log], &[payload]).await {
            Ok(lsns) => Ok(lsns.start),
            Err(e @ ClientError::Connect { .. }) if self.connect_fatal => {
                Err(TargetError::Fatal(e.to_string()))
            }
            Err(e @ ClientError::Invalid(_)) => Err(TargetError::Fatal(e.to_string())),
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
/// A run in which fewer than [`ACKNOWLEDGED_SHARE_MIN`] of the intended appends were
/// acknowledged fails ([`Failure::Unhealthy`]) once its reports are out.
pub(crate) fn main(args: AppendArgs) -> Result<(), Failure> {
    if args.readers > 0 && args.record_size.min() < load::STAMP_BYTES {
        crate::usage_error(
            "append",
            format!(
                "--readers needs records of at least {} bytes (they carry their send time)",
                load::STAMP_BYTES
            ),
        );
    }
    check_faults(&args);
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
            warnings: report.load.warnings.clone(),
            sweep: None,
            timeline: report::timeline(&report.load.intervals),
            spectrum: crate::html::spectrum_of(&measured.result.latency),
            fingerprint: Fingerprint {
                config: args.applied_config(),
                ..fingerprint
            },
            stages: report.node_stages.clone(),
            per_append: report.per_append.clone(),
            faults: report.faults.clone(),
        };
        crate::html::write_report(path, &html)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("  report         {}", path.display());
    }
    if report.load.unhealthy() {
        return Err(Failure::Unhealthy(format!(
            "{:.1}% of the intended appends were acknowledged (fewer than {:.0}%)",
            report.load.completion.acknowledged_share * 100.0,
            ACKNOWLEDGED_SHARE_MIN * 100.0
        )));
    }
    Ok(())
}

/// Refuses faults that cannot apply to the run (a usage error).
fn check_faults(args: &AppendArgs) {
    let Some(first) = args.faults.first() else {
        return;
    };
    let Some(nodes) = args.target.dev else {
        crate::usage_error(
            "append",
            format!(
                "--fault {} needs --dev: faults are applied to the dev cluster this run \
                 starts, not to a cluster behind --target",
                first.text
            ),
        );
    };
    for fault in &args.faults {
        if fault.at.as_secs_f64() >= args.duration_s {
            crate::usage_error(
                "append",
                format!(
                    "--fault {}: its time is not inside the measured window (--duration {})",
                    fault.text, args.duration_s
                ),
            );
        }
        let has_controller = nodes > 1 || args.target.rf > 1;
        match fault.role() {
            Some(faults::Role::Controller) if !has_controller => crate::usage_error(
                "append",
                format!(
                    "--fault {}: a --dev 1 --rf 1 cluster has no controller",
                    fault.text
                ),
            ),
            Some(faults::Role::Middle) if args.target.rf < 3 => crate::usage_error(
                "append",
                format!(
                    "--fault {}: a chain of --rf below 3 has no middle",
                    fault.text
                ),
            ),
            Some(_) if !has_controller => crate::usage_error(
                "append",
                format!(
                    "--fault {}: a --dev 1 --rf 1 node is no chain (use --rf or more nodes)",
                    fault.text
                ),
            ),
            _ => {}
        }
    }
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
    let topology = describe(&client, addr, &log_names, args).await?;
    let spec = LoadSpec {
        loop_mode: args.loop_mode(),
        logs: log_names.len(),
        record_sizes: args.record_size,
        warmup: Duration::from_secs_f64(args.warmup_s),
        duration: Duration::from_secs_f64(args.duration_s),
        drain: DRAIN,
        late_after: LATE_AFTER,
        seed: args.seed,
        outcomes: !args.faults.is_empty(),
    };
    let mut target = ClientTarget::new(client.clone(), &log_names);
    if !args.faults.is_empty() {
        target = target.counting_connect_failures();
    }
    let loud = args.html.is_some() || args.metrics.is_some();
    let before = StageScrapes::before(&topology, loud).await;
    let drill = match &guard {
        Some(guard) if !args.faults.is_empty() => Some(Drill {
            faults: &args.faults,
            cluster: guard,
            controller: addr,
            log: &log_names[0],
        }),
        _ => None,
    };
    let (measured, applied) =
        run_load_with(&target, &spec, args.readers, "append", drill.as_ref()).await?;
    let controller_at_end = match &drill {
        Some(drill) => drill.controller_metrics().await,
        None => None,
    };
    let fault_reports = faults::analyse(
        &applied,
        &measured.result.outcomes,
        measured.measure_start_clock,
        measured.result.finished,
        controller_at_end.as_ref(),
    );
    let node_stages = before.after().await;
    let per_append = per_append(&topology, &measured, loud).await;
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
        stages: first_head_stages(&topology, &node_stages),
        topology,
        log_names,
        summary: LoadSummary::of_bytes(
            result.duration,
            result.records,
            result.bytes,
            &result.latency,
            result.errors.clone(),
        ),
        load: LoadFacts::of(spec.loop_mode, &measured),
        node_stages,
        per_append,
        faults: fault_reports,
    };
    Ok((report, measured, guard))
}

/// Describes what the run appends to, and checks that its logs have the replication factor
/// asked for (an existing log of another one would silently measure something else).
pub(crate) async fn describe(
    client: &Client,
    addr: SocketAddr,
    log_names: &[String],
    args: &impl HasTarget,
) -> Result<Topology, String> {
    let topology = Topology::describe(client, addr, log_names, args.metrics()).await?;
    let rf = usize::from(args.target().rf);
    for log in &topology.logs {
        let replicas = log.chain.len().max(1);
        if replicas != rf {
            return Err(format!(
                "log {} exists with {replicas} replica{} where --rf asks for {rf}: delete it \
                 (chainlog log delete {} --target {}) or pass --rf {replicas}",
                log.name,
                if replicas == 1 { "" } else { "s" },
                log.name,
                topology.target,
            ));
        }
    }
    Ok(topology)
}

/// What [`describe`] needs of a mode's arguments.
pub(crate) trait HasTarget {
    fn target(&self) -> &TargetArgs;
    fn metrics(&self) -> Option<&str>;
}

impl HasTarget for AppendArgs {
    fn target(&self) -> &TargetArgs {
        &self.target
    }
    fn metrics(&self) -> Option<&str> {
        self.metrics.as_deref()
    }
}

/// The stage breakdown of one node over a run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NodeStages {
    /// The node's id (`null`: a standalone node).
    pub(crate) node_id: Option<u64>,
    /// Its shard 0's address.
    pub(crate) addr: String,
    /// What it is in the run's chains: `node` (standalone), `head`, `middle`, `tail`, or
    /// several joined by `+`.
    pub(crate) role: String,
    /// Its stages over the run.
    pub(crate) stages: StageBreakdown,
}

/// The first log's head's breakdown (the `stages` field of the reports).
pub(crate) fn first_head_stages(
    topology: &Topology,
    node_stages: &[NodeStages],
) -> Option<StageBreakdown> {
    let head = topology.logs.first().and_then(|l| l.chain.first().copied());
    node_stages
        .iter()
        .find(|n| n.node_id == head)
        .map(|n| n.stages.clone())
}

/// The scrapes taken before a run of every node that holds its logs, to subtract from the
/// ones taken after it.
#[derive(Debug)]
pub(crate) struct StageScrapes {
    /// Each node involved, its role, where it serves metrics, and its scrape before the run.
    nodes: Vec<(NodeInfo, String, String, stages::Scrape)>,
    /// Whether a failed scrape is said on stderr (it was asked for).
    loud: bool,
}

impl StageScrapes {
    /// Scrapes every node of `topology` that holds the run's logs. A node whose metrics cannot
    /// be scraped is left out (said on stderr if `loud`): the breakdown is optional.
    pub(crate) async fn before(topology: &Topology, loud: bool) -> StageScrapes {
        let mut nodes = Vec::new();
        for (node, role) in topology.involved() {
            let Some(metrics) = node.metrics.clone() else {
                continue;
            };
            if let Some(scrape) = scrape_metrics(&metrics, loud).await {
                nodes.push((node.clone(), role, metrics, scrape));
            }
        }
        StageScrapes { nodes, loud }
    }

    /// Scrapes the same nodes again, once they have published the end of the run (a node
    /// publishes once a second): each one's stages over the run.
    pub(crate) async fn after(&self) -> Vec<NodeStages> {
        if !self.nodes.is_empty() {
            tokio::time::sleep(PUBLISH_WAIT).await;
        }
        let mut breakdowns = Vec::new();
        for (node, role, metrics, before) in &self.nodes {
            let Some(after) = scrape_metrics(metrics, self.loud).await else {
                continue;
            };
            if let Some(stages) = stages::breakdown(before, &after) {
                breakdowns.push(NodeStages {
                    node_id: node.node_id,
                    addr: node.addr.clone(),
                    role: role.clone(),
                    stages,
                });
            }
        }
        breakdowns
    }
}

/// The per-append breakdown of `measured`: its samples joined with the traces of the heads
/// of `topology`'s logs (fetched now: call after [`StageScrapes::after`], which waits for the
/// nodes to publish the run's end); `None` if no head's traces could be fetched.
pub(crate) async fn per_append(
    topology: &Topology,
    measured: &Measured,
    loud: bool,
) -> Option<trace::Breakdown> {
    let mut traces = HashMap::new();
    let mut fetched = false;
    for (node, role) in topology.involved() {
        let Some(metrics) = node.metrics.clone() else {
            continue;
        };
        if !(role.contains("head") || role == "node") {
            continue;
        }
        let addr = metrics.clone();
        let text = match tokio::task::spawn_blocking(move || stages::fetch_traces(&addr)).await {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                if loud {
                    eprintln!("chainlog-bench: no per-append breakdown: {metrics}: {e}");
                }
                continue;
            }
            Err(e) => {
                if loud {
                    eprintln!("chainlog-bench: no per-append breakdown: {metrics}: {e}");
                }
                continue;
            }
        };
        match trace::parse_traces(&text) {
            Ok(parsed) => {
                traces.extend(parsed);
                fetched = true;
            }
            Err(e) if loud => eprintln!("chainlog-bench: no per-append breakdown: {e}"),
            Err(_) => {}
        }
    }
    let log_ids: Vec<u64> = topology.logs.iter().map(|l| l.log_id).collect();
    fetched.then(|| {
        trace::breakdown(
            &measured.result.samples,
            &log_ids,
            &traces,
            measured.clock_origin_ns,
        )
    })
}

/// Scrapes the metrics at `addr` (off the runtime's threads: it blocks); `None` if that fails,
/// with a note on stderr if `loud`: the stage breakdown is optional, the run goes on without
/// it.
pub(crate) async fn scrape_metrics(addr: &str, loud: bool) -> Option<stages::Scrape> {
    let owned = addr.to_string();
    let failed = match tokio::task::spawn_blocking(move || stages::scrape(&owned)).await {
        Ok(Ok(scrape)) => return Some(scrape),
        Ok(Err(e)) => e,
        Err(e) => e.to_string(),
    };
    if loud {
        eprintln!("chainlog-bench: no stage breakdown: scraping {addr}: {failed}");
    }
    None
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
    /// CPU seconds this process used per second of the run (warm-up, window and drain),
    /// less the time it spent yielding until a send was due.
    pub(crate) cpu_share: f64,
    /// `CLOCK_MONOTONIC` nanoseconds at the origin of the run's clock (the samples' times
    /// count from there).
    pub(crate) clock_origin_ns: u64,
    /// When the measured window began, clock time.
    pub(crate) measure_start_clock: Duration,
}

/// User + system CPU time this process has used.
fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF always exists.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Runs `spec` through `target` with `readers` tailers, showing a progress line labelled
/// `label`.
pub(crate) async fn run_load(
    target: &ClientTarget,
    spec: &LoadSpec,
    readers: u32,
    label: &str,
) -> Result<Measured, String> {
    Ok(run_load_with(target, spec, readers, label, None).await?.0)
}

/// [`run_load`], with `drill`'s faults applied while it runs (the measured window's start is
/// their time origin); also answers how they were applied.
async fn run_load_with(
    target: &ClientTarget,
    spec: &LoadSpec,
    readers: u32,
    label: &str,
    drill: Option<&Drill<'_>>,
) -> Result<(Measured, Vec<faults::Applied>), String> {
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
    let cpu_before = process_cpu();
    let faults = async {
        match drill {
            Some(drill) => drill.run(clock.monotonic(), start + spec.warmup).await,
            None => Vec::new(),
        }
    };
    let (result, applied) = tokio::join!(
        load::run(&clock, target, spec, start, &mut on_interval),
        faults
    );
    // Yielding until a deadline (the last microseconds before a send) is waiting, not work.
    let busy = (process_cpu() - cpu_before).saturating_sub(clock.spun());
    let cpu_share = busy.as_secs_f64() / (clock.now() - start).as_secs_f64().max(f64::MIN_POSITIVE);
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
    let measured = Measured {
        result: result?,
        e2e,
        measure_start,
        cpu_share,
        clock_origin_ns: clock.monotonic().origin_ns(),
        measure_start_clock: start + spec.warmup,
    };
    Ok((measured, applied))
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
    /// What became of the intended appends, for the end of the headline: `"1,000 of 1,000
    /// intended appends acknowledged (100.0%)"`.
    pub(crate) fn completion_phrase(&self) -> String {
        let c = &self.completion;
        format!(
            "{} of {} intended appends acknowledged ({:.1}%)",
            report::thousands(c.acknowledged),
            report::thousands(c.intended),
            c.acknowledged_share * 100.0
        )
    }

    /// The human-readable lines the load engine adds: the generator's own lateness and CPU,
    /// send accounting, the uncorrected view, the tailers. They follow the latency line.
    pub(crate) fn human(&self, out: &mut String) {
        use std::fmt::Write as _;
        let cpu = format!("{:.0}% of a core", self.generator_cpu_share * 100.0);
        if let Some(s) = &self.sends {
            let l = &s.own_lateness_us;
            let _ = writeln!(
                out,
                "  lateness (µs)  p50 {}  p99 {}  p99.9 {}  max {}  (the generator's own: actual \
                 minus intended send time of the sends the outstanding bound did not hold \
                 back; its CPU {cpu})",
                report::thousands(l.p50),
                report::thousands(l.p99),
                report::thousands(l.p999),
                report::thousands(l.max),
            );
            let _ = writeln!(
                out,
                "  sends          {} intended, {} sent, {} late (> {} µs), {} held back by the \
                 outstanding bound (lateness p99 of all {} µs), {} not sent",
                report::thousands(s.intended),
                report::thousands(s.sent),
                report::thousands(s.late),
                report::thousands(s.late_after_us),
                report::thousands(s.held_by_bound),
                report::thousands(s.lateness_us.p99),
                report::thousands(s.not_sent),
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
        } else {
            let _ = writeln!(out, "  generator      its CPU {cpu}");
        }
        let c = &self.completion;
        if c.unacknowledged() > 0 {
            let _ = writeln!(
                out,
                "  not acked      {} failed, {} unanswered {:.1} s after the window, {} never \
                 sent (counted in the latency as their wait until the run ended)",
                report::thousands(c.failed),
                report::thousands(c.unanswered),
                c.drain_max_s,
                report::thousands(c.not_sent),
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

    /// The warnings, one line each.
    pub(crate) fn human_warnings(&self, out: &mut String) {
        use std::fmt::Write as _;
        for warning in &self.warnings {
            let _ = writeln!(out, "  WARNING        {warning}");
        }
    }
}

/// The stage breakdowns, one line per node: `stage p50/p99` in µs.
pub(crate) fn human_stages(node_stages: &[NodeStages], out: &mut String) {
    use std::fmt::Write as _;
    for n in node_stages {
        let who = match n.node_id {
            Some(id) => format!("node {id} ({})", n.role),
            None => "node".to_string(),
        };
        let stages: Vec<String> = n
            .stages
            .stages
            .iter()
            .map(|s| {
                format!(
                    "{} {}/{}",
                    s.stage,
                    report::thousands(s.p50_us),
                    report::thousands(s.p99_us)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  stages         {who}, p50/p99 µs: {}",
            stages.join(", ")
        );
    }
}

impl AppendReport<'_> {
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let c = self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {}",
            report::headline_with(
                "append",
                c.record_size,
                &load_phrase(c.loop_mode()),
                c.logs,
                c.duration_s,
                c.warmup_s
            ),
            self.load.completion_phrase(),
        );
        self.load.human_warnings(&mut out);
        self.topology.human(&mut out);
        self.summary.human(&mut out);
        self.load.human(&mut out);
        faults::human(&self.faults, &mut out);
        human_stages(&self.node_stages, &mut out);
        if let Some(per_append) = &self.per_append {
            per_append.human(&mut out);
        }
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
