//! `chainlog-bench storage`: the storage engine alone, in this process, no network.
//!
//! The model is one shard (thread-per-core): one thread owns a [`Store`] over io_uring and
//! drives `C` logical clients through it in a **closed loop**. Each client has exactly one
//! append of one record outstanding; when its durable acknowledgement is seen, its latency is
//! recorded and its next append is issued at once. Between rounds the thread calls
//! `poll(true)`, which submits what is pending as one group-committed write and sleeps until a
//! write completes. When the store refuses an append as `Overloaded` (every write buffer busy),
//! that client and the others ready after it offer their appends again after the next poll,
//! first come first served.
//!
//! A record's latency runs from the moment its client sends it (the previous ack was seen, or
//! the run started) to the moment its own ack is seen. Without backpressure that is the
//! `append` call to the ack; under `Overloaded` it includes the wait for a write buffer, as a
//! client blocked in `append` would see it. Starting the clock at the first successful call
//! instead would hide exactly the queueing that overload causes.
//!
//! After a warm-up (not counted) the run measures for the given duration; group-commit
//! metrics are the store's own, restricted to the same window.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chainlog_storage::{
    fatal, Ack, Calibration, Durability, DurabilityMode, Error, FatalReason, Record, Store,
    StoreConfig, StoreMetrics, SystemClock, UringIo,
};
use clap::builder::TypedValueParser as _;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{self, Distribution, Errors, LoadSummary, Progress};

/// Submission queue entries of the ring: frame writes (two entries each when linked to an
/// fdatasync) plus the spare segment's preparation, with room to spare.
const RING_ENTRIES: u32 = 256;
/// Every append carries this epoch (the storage engine records it; fencing is the node's job).
const EPOCH: u64 = 1;
/// Log ids used are `FIRST_LOG_ID .. FIRST_LOG_ID + logs`.
const FIRST_LOG_ID: u64 = 1;
/// Distinct payloads prepared; client `i` sends payload `i % PAYLOAD_VARIANTS`. A few distinct
/// contents so that no layer can get away with deduplicating, without `C` copies in memory.
const PAYLOAD_VARIANTS: usize = 8;
/// How long the run may go without a single acknowledgement before it is declared stuck.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// How appends are made durable (the store's `DurabilityMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DurabilityArg {
    /// Measure both at open and use the faster.
    Auto,
    /// Each write with RWF_DSYNC.
    Dsync,
    /// Each write linked to an fdatasync in the ring.
    Fdatasync,
}

impl From<DurabilityArg> for DurabilityMode {
    fn from(arg: DurabilityArg) -> DurabilityMode {
        match arg {
            DurabilityArg::Auto => DurabilityMode::Auto,
            DurabilityArg::Dsync => DurabilityMode::Dsync,
            DurabilityArg::Fdatasync => DurabilityMode::Fdatasync,
        }
    }
}

/// The arguments of `chainlog-bench storage`; also the `config` object of its JSON report.
#[derive(Clone, Debug, Args, Serialize)]
pub(crate) struct StorageArgs {
    /// Directory of the store's segments: created if missing and left in place afterwards (a
    /// store already there is recovered and appended to). Default: a fresh temporary
    /// directory, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// Payload bytes of each record (at most the store's record_bytes_max).
    #[arg(long, value_name = "BYTES")]
    pub(crate) record_size: usize,
    /// Clients, each with one append of one record outstanding.
    #[arg(long, value_name = "C", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) concurrency: u32,
    /// Seconds to measure, after the warm-up.
    #[arg(long = "duration", value_name = "SECS", value_parser = parse_positive_seconds)]
    pub(crate) duration_s: f64,
    /// Logs appended to; client i appends to log i % N (at most --concurrency).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) logs: u32,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// How appends are made durable; auto measures both at open and picks the faster.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Auto)]
    pub(crate) durability: DurabilityArg,
    /// Frame writes in flight at most (the store's writes_in_flight_max).
    #[arg(long, value_name = "N", default_value_t = StoreConfig::default().writes_in_flight_max,
          value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub(crate) writes_in_flight: usize,
    /// Segment size in MiB (each segment is preallocated and zero-filled ahead of use).
    #[arg(long, value_name = "MIB", default_value_t = StoreConfig::default().segment_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub(crate) segment_mib: u64,
    /// Seconds of warm-up before measuring (not counted).
    #[arg(long = "warmup", value_name = "SECS", default_value_t = 1.0,
          value_parser = parse_seconds)]
    pub(crate) warmup_s: f64,
}

pub(crate) fn parse_seconds(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("{s} is not a sensible number of seconds"));
    }
    Ok(secs)
}

pub(crate) fn parse_positive_seconds(s: &str) -> Result<f64, String> {
    let secs = parse_seconds(s)?;
    if secs <= 0.0 {
        return Err("must be more than 0 seconds".into());
    }
    Ok(secs)
}

/// The store configuration the arguments ask for; exits with a usage error if it is not one
/// the store accepts.
fn store_config(args: &StorageArgs) -> StoreConfig {
    let defaults = StoreConfig::default();
    let config = StoreConfig {
        segment_bytes: args.segment_mib << 20,
        writes_in_flight_max: args.writes_in_flight,
        // In flight, plus the one being filled, a queued one, the snapshot reserve and a tail
        // cache as large as the default's.
        write_buffers: defaults
            .write_buffers
            .max(args.writes_in_flight + (defaults.write_buffers - defaults.writes_in_flight_max)),
        durability: args.durability.into(),
        ..defaults
    };
    if args.record_size > config.record_bytes_max {
        crate::usage_error(
            "storage",
            format!(
                "--record-size {} is larger than the store's record_bytes_max ({} bytes)",
                args.record_size, config.record_bytes_max
            ),
        );
    }
    if args.logs > args.concurrency {
        crate::usage_error(
            "storage",
            format!(
                "--logs {} is more than --concurrency {}: logs beyond one per client would \
                 get no appends",
                args.logs, args.concurrency
            ),
        );
    }
    if args.logs as usize > config.logs_max {
        crate::usage_error(
            "storage",
            format!(
                "--logs {} is more than the store's logs_max ({})",
                args.logs, config.logs_max
            ),
        );
    }
    if let Err(e) = config.validate() {
        crate::usage_error("storage", format!("the store refuses these settings: {e}"));
    }
    config
}

/// Runs `chainlog-bench storage`: prints the report on stdout, writes the JSON file if asked.
pub(crate) fn main(args: StorageArgs) -> Result<(), String> {
    let config = store_config(&args);
    let store_settings = StoreSettings::of(&config);
    let (dir, temp) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("chainlog-bench-")
                .tempdir()
                .map_err(|e| format!("creating a temporary directory: {e}"))?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let io = UringIo::new(RING_ENTRIES).map_err(|e| format!("setting up io_uring: {e}"))?;
    let mut store = match Store::open(io, &dir, config, Arc::new(SystemClock::new())) {
        Ok(store) => store,
        Err(Error::Fatal(reason)) => fatal(FatalReason::store(None, reason)),
        Err(e) => return Err(format!("opening the store in {}: {e}", dir.display())),
    };
    let payloads = payloads(args.record_size, args.concurrency as usize);
    let measured = run(&mut store, &args, &payloads)?;
    let report = StorageReport {
        mode: "storage",
        version: env!("CARGO_PKG_VERSION"),
        config: &args,
        dir: dir.display().to_string(),
        dir_removed: temp.is_some(),
        store: store_settings,
        summary: LoadSummary::new(
            measured.duration,
            measured.records,
            args.record_size as u64,
            &measured.latency,
            measured.errors,
        ),
        durability: durability_name(store.durability()),
        calibration: store.calibration().map(CalibrationReport::of),
        group_commit: GroupCommit::between(&measured.metrics_start, &measured.metrics_end),
    };
    drop(store);
    if let Some(temp) = temp {
        let path = temp.path().to_path_buf();
        temp.close()
            .map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    print!("{}", report.human());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// Payloads of `len` bytes, one per client up to [`PAYLOAD_VARIANTS`], pseudo-random so that
/// they neither compress nor deduplicate.
pub(crate) fn payloads(len: usize, clients: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..clients.clamp(1, PAYLOAD_VARIANTS))
        .map(|_| {
            (0..len)
                .map(|_| {
                    // xorshift64: cheap, and enough to defeat compression.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        })
        .collect()
}

/// One closed-loop client.
#[derive(Debug)]
struct Client {
    log_id: u64,
    /// When the client sent the record now pending: its previous ack (or the start of the
    /// run), however long the store then kept it waiting for a write buffer.
    sent: Instant,
    /// The LSNs the store assigned to the pending append; its ack must name the same.
    lsns: Range<u64>,
    /// Whether the store accepted the pending append (an ack is due).
    accepted: bool,
}

/// What a run measured.
#[derive(Debug)]
struct Measured {
    duration: Duration,
    records: u64,
    latency: Histogram<u64>,
    errors: Errors,
    metrics_start: StoreMetrics,
    metrics_end: StoreMetrics,
}

/// The closed loop: warm-up, then the measured window, then draining what is still in flight.
fn run(
    store: &mut Store<UringIo>,
    args: &StorageArgs,
    payloads: &[Vec<u8>],
) -> Result<Measured, String> {
    // Prepared once: the loop below allocates nothing.
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    let concurrency = args.concurrency as usize;
    let logs = u64::from(args.logs);
    let mut clients: Vec<Client> = (0..concurrency)
        .map(|i| Client {
            log_id: FIRST_LOG_ID + i as u64 % logs,
            sent: Instant::now(),
            lsns: 0..0,
            accepted: false,
        })
        .collect();
    // Clients with an append to offer, first come first served: an overloaded store leaves
    // the longest-waiting ones at the front, so no client starves (a starved client's latency
    // would never be recorded, flattering the percentiles).
    let mut ready: VecDeque<usize> = (0..concurrency).collect();
    let mut acks: Vec<Ack> = Vec::with_capacity(concurrency);
    let mut latency = report::latency_histogram();
    let mut errors = Errors::new();
    let mut progress = Progress::new();

    let warmup = Duration::from_secs_f64(args.warmup_s);
    let duration = Duration::from_secs_f64(args.duration_s);
    let start = Instant::now();
    for client in &mut clients {
        client.sent = start;
    }
    let mut measuring = false;
    let mut window_start = start;
    let mut window_end = start + warmup + duration;
    let mut metrics_start = store.metrics().clone();
    let mut records_total: u64 = 0;
    let mut records_measured: u64 = 0;
    let mut next_progress = start + PROGRESS_EVERY;
    let (mut last_progress_at, mut last_progress_records) = (start, 0u64);
    let mut last_ack = start;

    let end = loop {
        let now = Instant::now();
        if !measuring && now >= start + warmup {
            measuring = true;
            window_start = now;
            window_end = now + duration;
            metrics_start = store.metrics().clone();
            latency.reset();
            errors.clear();
            next_progress = now + PROGRESS_EVERY;
        }
        if measuring && now >= window_end {
            break now;
        }
        if now >= next_progress {
            let interval = now - last_progress_at;
            let last_rate = (records_total - last_progress_records) as f64 / interval.as_secs_f64();
            let line = if measuring {
                let elapsed = (now - window_start).as_secs_f64();
                format!(
                    "{:>5.1}/{} s  {} records/s (last 1 s: {})  p99 {} µs",
                    elapsed,
                    args.duration_s,
                    report::thousands((records_measured as f64 / elapsed).round() as u64),
                    report::thousands(last_rate.round() as u64),
                    report::thousands(latency.value_at_quantile(0.99)),
                )
            } else {
                format!(
                    "warm-up {:.1}/{} s  {} records/s",
                    (now - start).as_secs_f64(),
                    args.warmup_s,
                    report::thousands(last_rate.round() as u64),
                )
            };
            progress.update(&line);
            (last_progress_at, last_progress_records) = (now, records_total);
            next_progress = now + PROGRESS_EVERY;
        }

        while let Some(&i) = ready.front() {
            let client = &mut clients[i];
            let record = std::slice::from_ref(&records[i % records.len()]);
            match store.append(client.log_id, EPOCH, record, i as u64) {
                Ok(lsns) => {
                    client.lsns = lsns;
                    client.accepted = true;
                    ready.pop_front();
                }
                Err(Error::Fatal(reason)) => fatal(FatalReason::store(None, reason)),
                Err(e) if e.is_retryable() => {
                    // Overloaded: no write buffer frees up before the next poll, so the other
                    // ready clients would be refused too (each refusal costs the store a CRC
                    // pass over the payload). They all wait for the next poll, in order.
                    *errors.entry(e.kind()).or_default() += 1;
                    break;
                }
                Err(e) => {
                    progress.finish();
                    return Err(format!("append to log {} failed: {e}", client.log_id));
                }
            }
        }

        // Every client is waiting now: for its ack, or for a retry after this poll.
        poll(store, true, &mut acks);
        let now = Instant::now();
        if !acks.is_empty() {
            last_ack = now;
        } else if now - last_ack > STALL_LIMIT {
            progress.finish();
            return Err(format!(
                "no acknowledgement for {} s with {} appends accepted and {} refused as \
                 overloaded: the store is stuck (an engine problem; please report it)",
                STALL_LIMIT.as_secs(),
                clients.iter().filter(|c| c.accepted).count(),
                ready.len(),
            ));
        }
        for ack in acks.drain(..) {
            let i = take_ack(&mut clients, &ack);
            records_total += 1;
            if measuring {
                report::record_latency(&mut latency, now - clients[i].sent);
                records_measured += 1;
            }
            // Closed loop: the client sends its next record now. Its latency starts here,
            // even if the store makes it wait for a write buffer.
            clients[i].sent = now;
            ready.push_back(i);
        }
    };
    let metrics_end = store.metrics().clone();
    progress.finish();

    // Let what is still in flight become durable (not counted), so the store ends clean.
    if let Err(e) = store.sync_all(&mut acks) {
        fatal(FatalReason::store(None, format!("draining the store: {e}")));
    }
    for ack in acks.drain(..) {
        take_ack(&mut clients, &ack);
    }
    assert!(
        clients.iter().all(|c| !c.accepted),
        "engine problem: sync_all returned with appends still unacknowledged"
    );

    Ok(Measured {
        duration: end - window_start,
        records: records_measured,
        latency,
        errors,
        metrics_start,
        metrics_end,
    })
}

/// Polls the store; a failed store ends the process ([`fatal`]).
fn poll(store: &mut Store<UringIo>, wait: bool, acks: &mut Vec<Ack>) {
    match store.poll(wait, acks) {
        Ok(()) => {}
        Err(Error::Fatal(reason)) => fatal(FatalReason::store(None, reason)),
        Err(e) => fatal(FatalReason::store(None, format!("poll failed: {e}"))),
    }
}

/// Checks `ack` against the client it names and marks that client's append done; returns the
/// client's index. An ack nobody waits for, or for other LSNs than the append got, is an
/// engine bug: the run stops there.
fn take_ack(clients: &mut [Client], ack: &Ack) -> usize {
    let i = usize::try_from(ack.token)
        .ok()
        .filter(|&i| i < clients.len())
        .unwrap_or_else(|| panic!("engine problem: ack with unknown token: {ack:?}"));
    let client = &mut clients[i];
    assert!(
        client.accepted,
        "engine problem: ack for client {i}, which has no append pending: {ack:?}"
    );
    assert!(
        ack.log_id == client.log_id && ack.lsns == client.lsns,
        "engine problem: ack {ack:?} for client {i}, whose append went to log {} at {:?}",
        client.log_id,
        client.lsns
    );
    client.accepted = false;
    i
}

fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Dsync => "dsync",
        Durability::Fdatasync => "fdatasync",
        Durability::Buffered => "buffered",
    }
}

/// The JSON report of `chainlog-bench storage` (field docs are the README's).
#[derive(Debug, Serialize)]
struct StorageReport<'a> {
    /// Always `"storage"`.
    mode: &'static str,
    /// chainlog-bench's version.
    version: &'static str,
    /// The arguments, defaults filled in.
    config: &'a StorageArgs,
    /// The directory the store was in.
    dir: String,
    /// Whether that directory was a temporary one, removed after the run.
    dir_removed: bool,
    /// The store's limits as configured for the run.
    store: StoreSettings,
    /// Throughput, latency and errors of the measured window (top-level fields).
    #[serde(flatten)]
    summary: LoadSummary,
    /// How appends were made durable: `"dsync"` or `"fdatasync"`.
    durability: &'static str,
    /// The measurement behind `--durability auto`; `null` when the mode was given.
    calibration: Option<CalibrationReport>,
    /// The store's group-commit metrics over the measured window.
    group_commit: GroupCommit,
}

/// The store limits a run used (what the arguments do not show directly).
#[derive(Debug, Serialize)]
struct StoreSettings {
    /// Bytes each segment file is preallocated to.
    segment_bytes: u64,
    /// Largest frame (one group-committed write), header included.
    batch_bytes_max: usize,
    /// Largest record payload.
    record_bytes_max: usize,
    /// Frame writes in flight at most.
    writes_in_flight_max: usize,
    /// Write buffers in the pool.
    write_buffers: usize,
}

impl StoreSettings {
    fn of(config: &StoreConfig) -> StoreSettings {
        StoreSettings {
            segment_bytes: config.segment_bytes,
            batch_bytes_max: config.batch_bytes_max,
            record_bytes_max: config.record_bytes_max,
            writes_in_flight_max: config.writes_in_flight_max,
            write_buffers: config.write_buffers,
        }
    }
}

/// The durability calibration measured when the store opened.
#[derive(Debug, Serialize)]
struct CalibrationReport {
    /// Median latency of a 4 KiB RWF_DSYNC write, microseconds.
    dsync_us_p50: u64,
    /// Median latency of a 4 KiB write linked to fdatasync, microseconds.
    fdatasync_us_p50: u64,
    /// Writes measured per mode.
    writes: usize,
}

impl CalibrationReport {
    fn of(c: &Calibration) -> CalibrationReport {
        CalibrationReport {
            dsync_us_p50: c.dsync_us_p50,
            fdatasync_us_p50: c.fdatasync_us_p50,
            writes: c.writes,
        }
    }
}

/// Group commit over the measured window, from the store's own metrics.
#[derive(Debug, Serialize)]
struct GroupCommit {
    /// Frames written: one durable write each (segment snapshot frames included).
    frames: u64,
    /// Records per frame.
    records_per_batch: Distribution,
    /// Bytes per frame write, padded to 4 KiB blocks.
    bytes_per_batch: Distribution,
    /// Microseconds from a frame's first record to its submission.
    batch_wait_us: Distribution,
    /// Microseconds from a frame's submission to its durable completion.
    write_us: Distribution,
    /// Bytes written in frames.
    bytes_written: u64,
    /// Segments created (each preallocated and zero-filled ahead of use).
    segments_created: u64,
    /// Times a full segment had to wait for the next one to be ready.
    rollover_waits: u64,
    /// Appends the store refused with `Overloaded` (all write buffers busy).
    overloaded: u64,
}

impl GroupCommit {
    fn between(start: &StoreMetrics, end: &StoreMetrics) -> GroupCommit {
        let window = |end: &Histogram<u64>, start: &Histogram<u64>| {
            let mut h = end.clone();
            h.subtract(start)
                .expect("store metrics only grow, within the same bounds");
            Distribution::of(&h)
        };
        GroupCommit {
            frames: end.frames_written - start.frames_written,
            records_per_batch: window(&end.batch_records, &start.batch_records),
            bytes_per_batch: window(&end.batch_bytes, &start.batch_bytes),
            batch_wait_us: window(&end.batch_wait_us, &start.batch_wait_us),
            write_us: window(&end.write_us, &start.write_us),
            bytes_written: end.bytes_written - start.bytes_written,
            segments_created: end.segments_created - start.segments_created,
            rollover_waits: end.rollover_waits - start.rollover_waits,
            overloaded: end.overloaded - start.overloaded,
        }
    }
}

impl StorageReport<'_> {
    /// The human-readable report.
    fn human(&self) -> String {
        use std::fmt::Write as _;
        let c = self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}",
            report::headline(
                "storage",
                c.record_size,
                c.concurrency,
                "client",
                c.logs,
                c.duration_s,
                c.warmup_s
            )
        );
        let _ = writeln!(
            out,
            "  store          {}{}",
            self.dir,
            if self.dir_removed {
                " (temporary, removed)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "                 segments {} MiB, batch max {} KiB, writes in flight {}, \
             write buffers {}",
            self.store.segment_bytes >> 20,
            self.store.batch_bytes_max >> 10,
            self.store.writes_in_flight_max,
            self.store.write_buffers,
        );
        let durability = match &self.calibration {
            Some(cal) => format!(
                "{} (calibrated: dsync p50 {} µs, fdatasync p50 {} µs, {} writes each)",
                self.durability, cal.dsync_us_p50, cal.fdatasync_us_p50, cal.writes
            ),
            None => format!("{} (as asked)", self.durability),
        };
        let _ = writeln!(out, "  durability     {durability}");
        self.summary.human(&mut out);
        let g = &self.group_commit;
        let _ = writeln!(
            out,
            "  group commit   {} frames; records/batch mean {:.1}, p50 {}, p99 {}, max {}",
            report::thousands(g.frames),
            g.records_per_batch.mean,
            g.records_per_batch.p50,
            g.records_per_batch.p99,
            g.records_per_batch.max,
        );
        let _ = writeln!(
            out,
            "                 batch wait p50 {} µs, p99 {} µs; write p50 {} µs, p99 {} µs, max {} µs",
            report::thousands(g.batch_wait_us.p50),
            report::thousands(g.batch_wait_us.p99),
            report::thousands(g.write_us.p50),
            report::thousands(g.write_us.p99),
            report::thousands(g.write_us.max),
        );
        let _ = writeln!(
            out,
            "                 {:.1} MB written; segments created {}, rollover waits {}, \
             overloaded {}",
            g.bytes_written as f64 / 1e6,
            g.segments_created,
            g.rollover_waits,
            g.overloaded,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_distinct_and_sized() {
        let p = payloads(100, 3);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|p| p.len() == 100));
        assert_ne!(p[0], p[1]);
        assert_eq!(payloads(10, 1_000).len(), PAYLOAD_VARIANTS);
        assert_eq!(payloads(0, 1), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn seconds_are_checked() {
        assert_eq!(parse_seconds("0"), Ok(0.0));
        assert_eq!(parse_seconds("1.5"), Ok(1.5));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
        assert!(parse_seconds("soon").is_err());
        assert!(parse_positive_seconds("0").is_err());
    }

    #[test]
    fn acks_are_matched_to_their_client() {
        let mut clients = vec![Client {
            log_id: 1,
            sent: Instant::now(),
            lsns: 5..6,
            accepted: true,
        }];
        let ack = Ack {
            token: 0,
            log_id: 1,
            lsns: 5..6,
        };
        assert_eq!(take_ack(&mut clients, &ack), 0);
        assert!(!clients[0].accepted);
        let twice = std::panic::catch_unwind(move || {
            let mut clients = clients;
            take_ack(&mut clients, &ack)
        });
        assert!(
            twice.is_err(),
            "a second ack for the same append is refused"
        );
    }
}
