//! `chainlog-bench plan`: the capacity planner. It answers "how many appends per second of
//! `S`-byte records can one node sustain with p99 at most `X` ms?" by measuring, and owns the
//! calibration that puts the answer in context, the offered-load sweep, the knee rule, and
//! the plan's reports (stdout, JSON, HTML through [`crate::html`]).
//!
//! 1. **Calibrate**: the disk (the storage engine's durability calibration on a scratch store,
//!    via the machine fingerprint) and the network (the median of a few TAIL_HINT round
//!    trips to the node).
//! 2. **Sweep** offered load in open loop ([`crate::load`], latency from the intended send
//!    time): start at `--start-rate`, double while the node keeps up, then bisect between the
//!    highest rate that held and the lowest above it that did not, until they are within 5%
//!    or `--max-steps` steps have run ([`next_rate`]). A failed first step may be the
//!    machine's noise rather than the node's limit: it is retried at three quarters of its
//!    rate, and if that holds the first rate is tried once more before it bounds the answer;
//!    only when the lower rate fails too does the sweep halve down.
//! 3. **Knee**: the highest offered rate that held. A step *holds* when the node acknowledged
//!    at least 95% of the appends the schedule intended in the window (answers that land in
//!    the drain after the window count: [`crate::load`]), and the corrected p99 is at most
//!    `X` ms. When a rate held at or above one that failed, noise decided part of the answer,
//!    and the report says so ([`noise`]).
//!
//! The answer is for the target as a whole; per shard it is divided by the shards that took
//! the appends (the heads' shards of the logs, [`Topology::head_shards`]). Each step is short
//! (`--step-secs`) with its own short warm-up, so the whole sweep takes about `max_steps *
//! (step + warm-up)`.

use std::path::PathBuf;
use std::time::Duration;

use chainlog::client::{log_id, Client};
use clap::builder::TypedValueParser as _;
use clap::Args;
use serde::Serialize;

use crate::append_mode::{
    self, ClientTarget, HasTarget, Measured, NodeStages, StageScrapes, DRAIN, LATE_AFTER,
};
use crate::fingerprint::{CalibrationProbe, Fingerprint};
use crate::html::{self, HtmlReport, SecondSample, Sweep, SweepPoint};
use crate::load::{
    self, Arrivals, Completion, IntervalStats, LoadSpec, LoopMode, RecordSizes, SendStats,
};
use crate::report::{self, Errors, LatencyPercentiles, LoadSummary};
use crate::stages::StageBreakdown;
use crate::storage_mode::{parse_positive_seconds, parse_seconds};
use crate::target::{DevGuard, TargetArgs};
use crate::topology::Topology;
use crate::trace::Breakdown;

/// A step holds if at least this share of the intended appends were acknowledged.
const ACHIEVED_SHARE_MIN: f64 = 0.95;
/// The sweep stops bisecting when the rate that held and the rate that did not are this close
/// (relative to the former).
const BISECT_GAP_MAX: f64 = 0.05;
/// Below this offered rate the sweep gives up halving.
const RATE_MIN_PER_S: f64 = 10.0;
/// A failed first step is retried at this share of its rate before the sweep halves down.
const FIRST_RETRY_SHARE: f64 = 0.75;
/// TAIL_HINT round trips of the network calibration.
const ROUND_TRIPS: usize = 16;

/// The arguments of `chainlog-bench plan`; also the `config` object of its JSON report.
#[derive(Clone, Debug, Args, Serialize)]
pub(crate) struct PlanArgs {
    /// Where the load goes: `--target HOST:PORT` or `--dev N`.
    #[command(flatten)]
    #[serde(flatten)]
    pub(crate) target: TargetArgs,
    /// Payload bytes of each record: BYTES, or MIN..MAX (uniform, both included).
    #[arg(long, value_name = "BYTES|MIN..MAX", value_parser = load::parse_record_sizes)]
    pub(crate) record_size: RecordSizes,
    /// The latency objective: p99 (from the intended send time) at most this many ms.
    #[arg(long = "p99-ms", value_name = "MS", value_parser = parse_ms)]
    pub(crate) p99_ms: f64,
    /// Seconds measured per step.
    #[arg(long = "step-secs", value_name = "SECS", default_value_t = 2.0,
          value_parser = parse_positive_seconds)]
    pub(crate) step_s: f64,
    /// Seconds of warm-up before each step (not counted).
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 0.5,
          value_parser = parse_seconds)]
    pub(crate) warmup_s: f64,
    /// Steps at most.
    #[arg(long, value_name = "K", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) max_steps: u32,
    /// Offered load of the first step, records per second.
    #[arg(long = "start-rate", value_name = "R", default_value_t = 1000.0,
          value_parser = append_mode::parse_rate)]
    pub(crate) start_rate_per_s: f64,
    /// How sends are spaced.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    pub(crate) arrivals: Arrivals,
    /// Appends outstanding at most.
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000)
              .map(|n| n as usize))]
    pub(crate) outstanding_max: usize,
    /// Logs appended to (bench-0 .. bench-N-1, created if missing), round robin.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) logs: u32,
    /// Seeds the arrivals, record sizes and payload bytes.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Also write the HTML report (latency vs load, spectrum, time series, fingerprint).
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,
    /// Where a standalone node serves Prometheus metrics, scraped around each step for the
    /// stage breakdown [default: the port after its last shard's; in a cluster, that of each
    /// node of the logs' chains].
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics: Option<String>,
}

impl HasTarget for PlanArgs {
    fn target(&self) -> &TargetArgs {
        &self.target
    }
    fn metrics(&self) -> Option<&str> {
        self.metrics.as_deref()
    }
}

/// Parses a latency objective in milliseconds: a finite number above 0.
fn parse_ms(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms > 0.0 => Ok(ms),
        _ => Err(format!("{s:?} is not a number of milliseconds (above 0)")),
    }
}

/// What the calibration measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Calibration {
    /// The storage engine's durability calibration on this machine's temporary directory's
    /// file system; `null` if it could not run.
    pub(crate) disk: Option<CalibrationProbe>,
    /// Median TAIL_HINT round trip to the node, microseconds.
    pub(crate) network_rtt_us_p50: u64,
    /// Fastest round trip, microseconds.
    pub(crate) network_rtt_us_min: u64,
    /// Round trips measured.
    pub(crate) round_trips: usize,
}

/// One step of the sweep.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PlanStep {
    /// Records per second offered.
    pub(crate) offered_records_per_s: f64,
    /// Records per second acknowledged.
    pub(crate) achieved_records_per_s: f64,
    /// Payload bytes per second acknowledged.
    pub(crate) achieved_bytes_per_s: f64,
    /// Latency from the intended send time, microseconds.
    pub(crate) latency_us: LatencyPercentiles,
    /// How the sends kept to the schedule.
    pub(crate) sends: SendStats,
    /// Errors by kind.
    pub(crate) errors: Errors,
    /// What became of the step's intended appends.
    pub(crate) completion: Completion,
    /// Whether the step held (enough acknowledged, p99 within the objective).
    pub(crate) held: bool,
    /// Why it did not hold; `null` if it did.
    pub(crate) failed_because: Option<String>,
    /// The step's time series.
    pub(crate) intervals: Vec<IntervalStats>,
    /// The server-side latency by stage over the step (warm-up included) of the first log's
    /// head; `null` if its metrics could not be scraped.
    pub(crate) stages: Option<StageBreakdown>,
    /// The same for every node of the logs' chains.
    pub(crate) node_stages: Vec<NodeStages>,
    /// Where single appends' time went ([`crate::trace`]); `null` if the heads' traces
    /// could not be fetched.
    pub(crate) per_append: Option<Breakdown>,
}

impl PlanStep {
    fn point(&self) -> SweepPoint {
        SweepPoint {
            offered_records_per_s: self.offered_records_per_s,
            achieved_records_per_s: self.achieved_records_per_s,
            latency_us_p50: self.latency_us.p50,
            latency_us_p99: self.latency_us.p99,
            latency_us_p999: self.latency_us.p999,
        }
    }
}

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Knee {
    /// The highest offered rate that held, records per second, for the whole target.
    pub(crate) records_per_s: f64,
    /// Records per second acknowledged at that step (a little below or above the offered
    /// rate: Poisson arrivals vary).
    pub(crate) achieved_records_per_s: f64,
    /// The offered rate in payload megabytes (10^6 bytes) per second, at the mean record size.
    pub(crate) mb_per_s: f64,
    /// Shards that took the appends: the logs' heads' shards, each counted once.
    pub(crate) shards: u16,
    /// `records_per_s / shards`.
    pub(crate) per_shard_records_per_s: f64,
    /// The p99 measured at that rate, microseconds.
    pub(crate) latency_us_p99: u64,
}

/// The JSON report of `chainlog-bench plan`, and what the HTML report is made from.
#[derive(Debug, Serialize)]
pub(crate) struct PlanReport {
    /// Always `"plan"`.
    pub(crate) mode: &'static str,
    /// chainlog-bench's version.
    pub(crate) version: &'static str,
    /// The arguments, defaults filled in.
    pub(crate) config: PlanArgs,
    /// The target in a phrase: a node's address and shards, or the cluster's controller and
    /// nodes.
    pub(crate) node: String,
    /// What the sweep ran against: the node, or the cluster's nodes and the logs' chains.
    pub(crate) topology: Topology,
    /// What the calibration measured.
    pub(crate) calibration: Calibration,
    /// The steps, in the order they ran.
    pub(crate) steps: Vec<PlanStep>,
    /// The knee; `null` if no step held.
    pub(crate) knee: Option<Knee>,
    /// When noise decided part of the answer (a rate held at or above one that failed), how,
    /// in a sentence; `null` when the steps agree.
    pub(crate) noise: Option<String>,
}

/// Whether a step held, and if not why: `acknowledged` of its `intended` appends, with p99
/// `latency_us_p99`, against an objective of `p99_ms`.
fn verdict(acknowledged: u64, intended: u64, latency_us_p99: u64, p99_ms: f64) -> Option<String> {
    let share = if intended == 0 {
        0.0
    } else {
        acknowledged as f64 / intended as f64
    };
    if share < ACHIEVED_SHARE_MIN {
        return Some(format!(
            "acknowledged {:.1}% of the intended appends (< {:.0}%)",
            share * 100.0,
            ACHIEVED_SHARE_MIN * 100.0
        ));
    }
    if latency_us_p99 as f64 > p99_ms * 1000.0 {
        return Some(format!(
            "p99 {:.3} ms > {p99_ms} ms",
            latency_us_p99 as f64 / 1000.0
        ));
    }
    None
}

/// The sweep's next offered rate after `steps` (rate, held) in the order they ran, or `None`
/// when it is done: double the highest rate that held until one above it fails, then bisect
/// between the two. A failed first step is retried at [`FIRST_RETRY_SHARE`] of its rate; if
/// that holds, the first rate is tried once more before it bounds the answer; if nothing
/// holds, halve down to [`RATE_MIN_PER_S`].
fn next_rate(steps: &[(f64, bool)]) -> Option<f64> {
    let (first_rate, first_held) = *steps.first().expect("asked after at least one step");
    let lowest = |held: bool, above: f64| {
        steps
            .iter()
            .filter(|&&(rate, h)| h == held && rate > above)
            .map(|&(rate, _)| rate)
            .min_by(f64::total_cmp)
    };
    let held_max = steps
        .iter()
        .filter(|&&(_, held)| held)
        .map(|&(rate, _)| rate)
        .max_by(f64::total_cmp);
    let Some(held) = held_max else {
        if steps.len() == 1 {
            return Some(first_rate * FIRST_RETRY_SHARE);
        }
        let failed = lowest(false, 0.0).expect("every step failed");
        return Some(failed / 2.0).filter(|r| *r >= RATE_MIN_PER_S);
    };
    let Some(failed) = lowest(false, held) else {
        return Some(held * 2.0);
    };
    let tries_of_first = steps
        .iter()
        .filter(|&&(rate, _)| rate == first_rate)
        .count();
    if !first_held && failed == first_rate && tries_of_first == 1 {
        // The first step failed but a lower rate held: one failure may have been noise.
        return Some(first_rate);
    }
    Some((held + failed) / 2.0).filter(|_| (failed - held) / held > BISECT_GAP_MAX)
}

/// When noise decided part of a sweep: the first failed step at a rate that also held, or
/// below a rate that held, as a sentence for the report; `None` if the steps agree.
fn noise(steps: &[(f64, bool)]) -> Option<String> {
    for (i, &(failed, held)) in steps.iter().enumerate() {
        if held {
            continue;
        }
        let Some((j, &(rate, _))) = steps
            .iter()
            .enumerate()
            .find(|&(_, &(rate, held))| held && rate >= failed)
        else {
            continue;
        };
        return Some(format!(
            "noise decided part of this answer: {} records/s failed at step {} yet {} records/s \
             held at step {}; the machine's load changed during the sweep (run it again, at a \
             quieter moment, or with longer --step-secs)",
            report::thousands(failed.round() as u64),
            i + 1,
            report::thousands(rate.round() as u64),
            j + 1,
        ));
    }
    None
}

/// Runs `chainlog-bench plan`: prints the calibration, the sweep table and the answer on
/// stdout (each step's row also on stderr as it completes) and writes the files asked for.
pub(crate) fn main(args: PlanArgs) -> Result<(), String> {
    // Before any load: the probe writes to the disk.
    eprintln!("plan: calibrating the disk (storage engine calibration on a scratch store)");
    let fingerprint = Fingerprint::probe(args.target.dev_dir.as_deref());
    // One thread for the load engine and the client's connections: an ack is handled on the
    // thread that received it, with no cross-thread wake-up per append (on a 2-vCPU VM a
    // multi-threaded runtime added 40-70 µs to the c=1 p50 and cost a third of the c=64
    // throughput: ARCHITECTURE.md section 16).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    // `_guard` keeps a dev cluster up until the reports are written.
    let (report, knee_run, _guard) =
        runtime.block_on(run(&args, fingerprint.calibration.clone()))?;
    print!("{}", report.human());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    if let Some(path) = &args.html {
        let html = html_report(&report, knee_run.as_ref(), fingerprint);
        html::write_report(path, &html).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(())
}

/// The whole sweep as one time series: every step's per-second samples, in the order the
/// steps ran, on one time axis (warm-ups left out), so the over-time plots show how latency
/// and throughput followed the offered load.
fn sweep_timeline(report: &PlanReport) -> Vec<SecondSample> {
    let mut timeline = Vec::new();
    let mut offset_s = 0.0;
    for step in &report.steps {
        let samples = report::timeline(&step.intervals);
        let end_s = samples.last().map_or(0.0, |s| s.t_s);
        timeline.extend(samples.into_iter().map(|s| SecondSample {
            t_s: s.t_s + offset_s,
            ..s
        }));
        offset_s += end_s;
    }
    timeline
}

/// The HTML report: the sweep, and the knee's step (or the last step if none held) as the
/// run the summary and spectrum are about; the time series cover the whole sweep.
fn html_report(
    report: &PlanReport,
    knee_run: Option<&Measured>,
    fingerprint: Fingerprint,
) -> HtmlReport {
    let args = &report.config;
    let mut points: Vec<SweepPoint> = report.steps.iter().map(PlanStep::point).collect();
    points.sort_by(|a, b| a.offered_records_per_s.total_cmp(&b.offered_records_per_s));
    let knee_step = report.knee.as_ref().and_then(|k| {
        report
            .steps
            .iter()
            .find(|s| s.held && s.offered_records_per_s == k.records_per_s)
    });
    let (summary, timeline, spectrum) = match knee_run {
        Some(run) => (
            LoadSummary::of_bytes(
                run.result.duration,
                run.result.records,
                run.result.bytes,
                &run.result.latency,
                run.result.errors.clone(),
            ),
            sweep_timeline(report),
            html::spectrum_of(&run.result.latency),
        ),
        _ => (
            LoadSummary::of_bytes(
                Duration::ZERO,
                0,
                0,
                &report::latency_histogram(),
                Errors::new(),
            ),
            Vec::new(),
            Vec::new(),
        ),
    };
    HtmlReport {
        title: format!(
            "chainlog-bench plan: {} B records, p99 <= {} ms",
            args.record_size, args.p99_ms
        ),
        command_line: report::command_line(),
        summary,
        warnings: report.noise.iter().cloned().collect(),
        sweep: Some(Sweep {
            record_bytes: args.record_size.mean_bytes().round() as u64,
            slo_p99_ms: args.p99_ms,
            points,
            knee: knee_step.map(PlanStep::point),
        }),
        timeline,
        spectrum,
        fingerprint: Fingerprint {
            config: crate::target::applied_config(args, args.target.unapplied()),
            ..fingerprint
        },
        stages: knee_step
            .or(report.steps.last())
            .map(|s| s.node_stages.clone())
            .unwrap_or_default(),
        per_append: knee_step
            .or(report.steps.last())
            .and_then(|s| s.per_append.clone()),
        faults: Vec::new(),
    }
}

/// Calibrates the network, sweeps, and returns the report with the run of the knee's step (or
/// of the last step if none held), and the dev cluster's guard if `--dev` started one.
async fn run(
    args: &PlanArgs,
    disk: Option<CalibrationProbe>,
) -> Result<(PlanReport, Option<Measured>, Option<DevGuard>), String> {
    let (addr, client, guard) = append_mode::connect(&args.target).await?;
    let limits = client.limits();
    if args.record_size.max() > limits.record_bytes_max as usize {
        crate::usage_error(
            "plan",
            format!(
                "--record-size {} is above the node's record_bytes_max {}",
                args.record_size, limits.record_bytes_max
            ),
        );
    }
    let log_names = append_mode::create_logs(&client, args.logs, args.target.rf).await?;
    let (network_rtt_us_p50, network_rtt_us_min) = round_trips(&client, &log_names[0]).await?;
    let calibration = Calibration {
        disk,
        network_rtt_us_p50,
        network_rtt_us_min,
        round_trips: ROUND_TRIPS,
    };
    eprintln!(
        "plan: network round trip p50 {network_rtt_us_p50} µs; sweeping offered load, {} s \
         per step, {} steps at most",
        args.step_s, args.max_steps
    );
    let topology = append_mode::describe(&client, addr, &log_names, args).await?;
    let target = ClientTarget::new(client.clone(), &log_names);
    let loud = args.html.is_some() || args.metrics.is_some();
    let mut steps: Vec<PlanStep> = Vec::new();
    let mut verdicts: Vec<(f64, bool)> = Vec::new();
    let mut knee_run: Option<Measured> = None;
    let mut last_run: Option<Measured> = None;
    let mut rate = args.start_rate_per_s;
    for step in 0..args.max_steps {
        let spec = LoadSpec {
            loop_mode: LoopMode::Open {
                rate_per_s: rate,
                arrivals: args.arrivals,
                outstanding_max: args.outstanding_max,
            },
            logs: log_names.len(),
            record_sizes: args.record_size,
            warmup: Duration::from_secs_f64(args.warmup_s),
            duration: Duration::from_secs_f64(args.step_s),
            // Long enough that an answer within twice the objective is judged as a latency.
            drain: DRAIN.max(Duration::from_secs_f64(args.p99_ms * 2.0 / 1000.0)),
            late_after: LATE_AFTER,
            seed: args.seed.wrapping_add(u64::from(step)),
            outcomes: false,
        };
        let label = format!("plan step {} at {} records/s", step + 1, rate.round());
        let before = StageScrapes::before(&topology, loud).await;
        let measured = append_mode::run_load(&target, &spec, 0, &label).await?;
        let node_stages = before.after().await;
        let per_append = append_mode::per_append(&topology, &measured, loud).await;
        let result = &measured.result;
        let sends = result.sends.clone().expect("open loop counts sends");
        let latency_us = LatencyPercentiles::of(&result.latency);
        let completion = result.completion.clone();
        let failed_because = verdict(
            completion.acknowledged,
            completion.intended,
            latency_us.p99,
            args.p99_ms,
        );
        let duration_s = result.duration.as_secs_f64();
        let planned = PlanStep {
            offered_records_per_s: rate,
            achieved_records_per_s: result.records as f64 / duration_s,
            achieved_bytes_per_s: result.bytes as f64 / duration_s,
            latency_us,
            sends,
            errors: result.errors.clone(),
            completion,
            held: failed_because.is_none(),
            failed_because,
            intervals: result.time_series(),
            stages: append_mode::first_head_stages(&topology, &node_stages),
            node_stages,
            per_append,
        };
        eprintln!("{}", planned.row());
        verdicts.push((rate, planned.held));
        if planned.held {
            let highest = verdicts
                .iter()
                .filter(|&&(_, held)| held)
                .all(|&(r, _)| r <= rate);
            if highest {
                knee_run = Some(measured);
            }
        } else {
            last_run = Some(measured);
        }
        steps.push(planned);
        match next_rate(&verdicts) {
            Some(next) => rate = next,
            None => break,
        }
    }
    let shards = topology.head_shards() as u16;
    let held_max = verdicts
        .iter()
        .filter(|&&(_, held)| held)
        .map(|&(rate, _)| rate)
        .max_by(f64::total_cmp);
    let knee = held_max.map(|records_per_s| {
        let step = steps
            .iter()
            .rev()
            .find(|s| s.held && s.offered_records_per_s == records_per_s)
            .expect("the knee is a step that held");
        Knee {
            records_per_s,
            achieved_records_per_s: step.achieved_records_per_s,
            mb_per_s: records_per_s * args.record_size.mean_bytes() / 1e6,
            shards,
            per_shard_records_per_s: records_per_s / f64::from(shards),
            latency_us_p99: step.latency_us.p99,
        }
    });
    let report = PlanReport {
        mode: "plan",
        version: env!("CARGO_PKG_VERSION"),
        config: args.clone(),
        node: topology.phrase(),
        topology,
        calibration,
        steps,
        knee,
        noise: noise(&verdicts),
    };
    Ok((report, knee_run.or(last_run), guard))
}

/// Median and fastest of [`ROUND_TRIPS`] TAIL_HINT round trips on log `name`, microseconds.
async fn round_trips(client: &Client, name: &str) -> Result<(u64, u64), String> {
    let log = log_id(name);
    let mut samples_us = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = std::time::Instant::now();
        client
            .tail_hint(log)
            .await
            .map_err(|e| format!("TAIL_HINT of {name}: {e}"))?;
        samples_us.push(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    samples_us.sort_unstable();
    Ok((samples_us[samples_us.len() / 2], samples_us[0]))
}

impl PlanStep {
    /// The step's line of the sweep table.
    fn row(&self) -> String {
        format!(
            "  {:>12} {:>12} {:>10} {:>10} {:>10} {:>8} {:>8}  {}",
            report::thousands(self.offered_records_per_s.round() as u64),
            report::thousands(self.achieved_records_per_s.round() as u64),
            report::thousands(self.latency_us.p50),
            report::thousands(self.latency_us.p99),
            report::thousands(self.latency_us.p999),
            report::thousands(self.sends.late),
            report::thousands(self.sends.not_sent),
            match &self.failed_because {
                None => "held".to_string(),
                Some(why) => format!("no: {why}"),
            }
        )
    }
}

impl PlanReport {
    /// The human-readable report: calibration, the sweep table (in offered order), the answer.
    pub(crate) fn human(&self) -> String {
        use std::fmt::Write as _;
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chainlog-bench plan: {} B records, p99 <= {} ms, {} log{}, {} s per step after {} s \
             warm-up, {} arrivals",
            c.record_size,
            c.p99_ms,
            c.logs,
            if c.logs == 1 { "" } else { "s" },
            c.step_s,
            c.warmup_s,
            c.arrivals.name(),
        );
        self.topology.human(&mut out);
        let disk = match &self.calibration.disk {
            Some(d) => format!(
                "dsync p50 {} µs, fdatasync p50 {} µs ({} writes each, {} chosen)",
                d.dsync_us_p50, d.fdatasync_us_p50, d.writes, d.chosen
            ),
            None => "not measured".into(),
        };
        let _ = writeln!(out, "  disk           {disk}");
        let _ = writeln!(
            out,
            "  network        round trip p50 {} µs, min {} µs ({} TAIL_HINTs)",
            self.calibration.network_rtt_us_p50,
            self.calibration.network_rtt_us_min,
            self.calibration.round_trips,
        );
        let _ = writeln!(
            out,
            "  {:>12} {:>12} {:>10} {:>10} {:>10} {:>8} {:>8}  held?",
            "offered/s", "achieved/s", "p50 µs", "p99 µs", "p99.9 µs", "late", "not sent"
        );
        let mut steps: Vec<&PlanStep> = self.steps.iter().collect();
        steps.sort_by(|a, b| a.offered_records_per_s.total_cmp(&b.offered_records_per_s));
        for step in steps {
            let _ = writeln!(out, "{}", step.row());
        }
        match &self.knee {
            Some(k) => {
                let _ = writeln!(
                    out,
                    "max sustainable: {} records/s offered ({} acknowledged, {:.2} MB/s) at p99 <= {} \
                     ms, record size {}; per shard: {} records/s ({} shard{} took the appends)",
                    report::thousands(k.records_per_s.round() as u64),
                    report::thousands(k.achieved_records_per_s.round() as u64),
                    k.mb_per_s,
                    c.p99_ms,
                    c.record_size,
                    report::thousands(k.per_shard_records_per_s.round() as u64),
                    k.shards,
                    if k.shards == 1 { "" } else { "s" },
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "max sustainable: none of the offered rates held at p99 <= {} ms, record \
                     size {} (lowest tried: {} records/s)",
                    c.p99_ms,
                    c.record_size,
                    report::thousands(
                        self.steps
                            .iter()
                            .map(|s| s.offered_records_per_s)
                            .fold(f64::INFINITY, f64::min)
                            .round() as u64
                    ),
                );
            }
        }
        if let Some(noise) = &self.noise {
            let _ = writeln!(out, "WARNING: {noise}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_holds_only_when_acked_and_within_the_objective() {
        assert_eq!(verdict(1_000, 1_000, 1_999, 2.0), None);
        assert_eq!(verdict(950, 1_000, 2_000, 2.0), None);
        assert!(verdict(949, 1_000, 100, 2.0).unwrap().contains("94.9%"));
        assert!(verdict(1_000, 1_000, 2_001, 2.0).unwrap().contains("p99"));
        assert!(verdict(0, 0, 0, 2.0).is_some());
    }

    /// The rates a sweep tries against a node that holds every rate in `holds`.
    fn sweep(start: f64, holds: impl Fn(f64, usize) -> bool) -> Vec<(f64, bool)> {
        let mut steps = Vec::new();
        let mut rate = start;
        for i in 0..20 {
            steps.push((rate, holds(rate, i)));
            match next_rate(&steps) {
                Some(next) => rate = next,
                None => break,
            }
        }
        steps
    }

    #[test]
    fn the_sweep_doubles_then_bisects_to_within_five_percent() {
        // A node that holds up to 5000/s, swept from 1000/s.
        let steps = sweep(1_000.0, |rate, _| rate <= 5_000.0);
        let rates: Vec<f64> = steps.iter().map(|s| s.0).collect();
        assert_eq!(&rates[..4], &[1_000.0, 2_000.0, 4_000.0, 8_000.0]);
        let held = steps
            .iter()
            .filter(|s| s.1)
            .map(|s| s.0)
            .fold(0.0, f64::max);
        let failed = steps
            .iter()
            .filter(|s| !s.1)
            .map(|s| s.0)
            .fold(f64::MAX, f64::min);
        assert!(held <= 5_000.0 && (failed - held) / held <= BISECT_GAP_MAX);
        assert!(steps.len() < 10, "{steps:?}");
        assert_eq!(noise(&steps), None);
    }

    #[test]
    fn a_failed_first_step_is_retried_lower_then_again_before_it_bounds_the_answer() {
        // The first step fails (the machine was busy), the rest see a node that holds up to
        // 6000/s: 750 holds, 1000 is tried again and holds, and the sweep doubles on.
        let steps = sweep(1_000.0, |rate, i| i > 0 && rate <= 6_000.0);
        let rates: Vec<f64> = steps.iter().map(|s| s.0).collect();
        assert_eq!(&rates[..5], &[1_000.0, 750.0, 1_000.0, 2_000.0, 4_000.0]);
        let held = steps
            .iter()
            .filter(|s| s.1)
            .map(|s| s.0)
            .fold(0.0, f64::max);
        assert!(held > 5_500.0 && held <= 6_000.0, "{steps:?}");
        let said = noise(&steps).expect("noise decided");
        assert!(said.contains("1,000 records/s failed at step 1"), "{said}");
        assert!(
            said.contains("held at step 2") || said.contains("held at step 3"),
            "{said}"
        );
        // A first rate that fails again bounds the answer: bisect between 750 and 1000.
        let steps = sweep(1_000.0, |rate, _| rate <= 800.0);
        let rates: Vec<f64> = steps.iter().map(|s| s.0).collect();
        assert_eq!(&rates[..4], &[1_000.0, 750.0, 1_000.0, 875.0]);
        assert_eq!(noise(&steps), None);
    }

    #[test]
    fn when_nothing_holds_the_sweep_halves_down_to_the_floor() {
        let steps = sweep(1_000.0, |_, _| false);
        let rates: Vec<f64> = steps.iter().map(|s| s.0).collect();
        assert_eq!(&rates[..4], &[1_000.0, 750.0, 375.0, 187.5]);
        assert!(rates.iter().all(|r| *r >= RATE_MIN_PER_S));
        assert!(*rates.last().unwrap() / 2.0 < RATE_MIN_PER_S);
        // Halving below a lower rate that held is noise too, and said.
        assert!(noise(&[(1_000.0, true), (500.0, false)]).is_some());
    }
}
