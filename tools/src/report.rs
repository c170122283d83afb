//! What every mode measures and how it is shown: latency histograms and their percentiles, the
//! throughput/latency/errors summary that every JSON report starts with, the human-readable
//! lines of the report, the JSON file, and the progress line on stderr.
//!
//! Also the other outputs of a load run: the HdrHistogram interval log and the time series as
//! the HTML report takes it.
//!
//! The JSON field names are a contract with scripts (README, `chainlog-bench` section): add
//! fields, never rename or remove one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::html::SecondSample;
use crate::load::{Interval, IntervalStats};

/// Significant digits of every latency histogram (values within 0.1% of the truth).
pub(crate) const SIGNIFICANT_DIGITS: u8 = 3;
/// The largest latency a histogram holds; slower operations are recorded as this.
pub(crate) const LATENCY_US_MAX: u64 = 3_600_000_000;

/// An empty latency histogram, microseconds, [`SIGNIFICANT_DIGITS`] significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records `elapsed` in a latency histogram, in whole microseconds (at least 1).
pub(crate) fn record_latency(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(us.max(1));
}

/// Latency percentiles of the measured operations, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(crate) struct LatencyPercentiles {
    /// Median.
    pub(crate) p50: u64,
    /// 90th percentile.
    pub(crate) p90: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
    /// 99.9th percentile.
    pub(crate) p999: u64,
    /// 99.99th percentile.
    pub(crate) p9999: u64,
    /// The slowest operation.
    pub(crate) max: u64,
    /// The fastest operation.
    pub(crate) min: u64,
    /// Arithmetic mean.
    pub(crate) mean: f64,
}

impl LatencyPercentiles {
    /// The percentiles of `histogram` (all zero if it is empty).
    pub(crate) fn of(histogram: &Histogram<u64>) -> LatencyPercentiles {
        if histogram.is_empty() {
            return LatencyPercentiles::default();
        }
        LatencyPercentiles {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            p9999: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
            min: histogram.min(),
            mean: histogram.mean(),
        }
    }
}

/// A distribution summed up in four numbers (group-commit batch sizes, waits, write times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Distribution {
    /// Arithmetic mean.
    pub(crate) mean: f64,
    /// Median.
    pub(crate) p50: u64,
    /// 99th percentile.
    pub(crate) p99: u64,
    /// Largest value.
    pub(crate) max: u64,
}

impl Distribution {
    /// The summary of `histogram` (all zero if it is empty).
    pub(crate) fn of(histogram: &Histogram<u64>) -> Distribution {
        if histogram.is_empty() {
            return Distribution::default();
        }
        Distribution {
            mean: histogram.mean(),
            p50: histogram.value_at_quantile(0.50),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        }
    }
}

/// Errors by kind (a short snake_case name per kind, e.g. `overloaded`), counted during the
/// measurement. Retryable errors are retried and counted; the run goes on.
pub(crate) type Errors = BTreeMap<&'static str, u64>;

/// The part of a report that every mode has: what was done in the measured window, how fast,
/// and how long it took. Its fields appear at the top level of the JSON report.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LoadSummary {
    /// Seconds measured (the warm-up is not included).
    pub(crate) duration_s: f64,
    /// Operations (records) acknowledged in the measured window.
    pub(crate) records: u64,
    /// Payload bytes of those records.
    pub(crate) bytes: u64,
    /// `records / duration_s`.
    pub(crate) records_per_s: f64,
    /// `bytes / duration_s` (payload bytes only; headers and padding excluded).
    pub(crate) bytes_per_s: f64,
    /// Latency of each record, from the call that issued it (open loop: from its intended
    /// send time, coordinated omission corrected) to the moment its durable acknowledgement
    /// was seen, microseconds.
    pub(crate) latency_us: LatencyPercentiles,
    /// Errors by kind.
    pub(crate) errors: Errors,
}

impl LoadSummary {
    /// The summary of `records` of `record_bytes` each acknowledged in `duration`, with their
    /// latencies in `latency`.
    pub(crate) fn new(
        duration: Duration,
        records: u64,
        record_bytes: u64,
        latency: &Histogram<u64>,
        errors: Errors,
    ) -> LoadSummary {
        LoadSummary::of_bytes(duration, records, records * record_bytes, latency, errors)
    }

    /// The summary of `records` of `bytes` in all (sizes may differ) acknowledged in
    /// `duration`, with their latencies in `latency`.
    pub(crate) fn of_bytes(
        duration: Duration,
        records: u64,
        bytes: u64,
        latency: &Histogram<u64>,
        errors: Errors,
    ) -> LoadSummary {
        let duration_s = duration.as_secs_f64();
        let per_s = |n: u64| {
            if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            }
        };
        LoadSummary {
            duration_s,
            records,
            bytes,
            records_per_s: per_s(records),
            bytes_per_s: per_s(bytes),
            latency_us: LatencyPercentiles::of(latency),
            errors,
        }
    }

    /// The human-readable lines: throughput, latency, errors.
    pub(crate) fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  throughput     {} records/s, {:.2} MB/s ({} records in {:.3} s)",
            thousands(self.records_per_s.round() as u64),
            self.bytes_per_s / 1e6,
            thousands(self.records),
            self.duration_s,
        );
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "  latency (µs)   p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  (mean {:.1})",
            thousands(l.p50),
            thousands(l.p90),
            thousands(l.p99),
            thousands(l.p999),
            thousands(l.p9999),
            thousands(l.max),
            l.mean,
        );
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(kind, n)| format!("{kind} {}", thousands(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "  errors         {errors}");
    }
}

/// Writes `report` as pretty-printed JSON to `path` (replacing the file).
pub(crate) fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<(), String> {
    let mut text = serde_json::to_string_pretty(report)
        .map_err(|e| format!("encoding the JSON report: {e}"))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The first line of a human-readable report: what ran, with how many of what.
pub(crate) fn headline(
    mode: &str,
    record_size: usize,
    concurrency: u32,
    who: &str,
    logs: u32,
    duration_s: f64,
    warmup_s: f64,
) -> String {
    let plural = if concurrency == 1 { "" } else { "s" };
    headline_with(
        mode,
        record_size,
        &format!("{concurrency} {who}{plural}"),
        logs,
        duration_s,
        warmup_s,
    )
}

/// [`headline`] with the load described by the caller (`"4 appenders"`, `"open loop at
/// ..."`) and any record size description (`128`, `64..4096`).
pub(crate) fn headline_with(
    mode: &str,
    record_size: impl std::fmt::Display,
    load: &str,
    logs: u32,
    duration_s: f64,
    warmup_s: f64,
) -> String {
    let plural = if logs == 1 { "" } else { "s" };
    format!(
        "chainlog-bench {mode}: {record_size} B records, {load}, {logs} log{plural}, {duration_s} s measured after {warmup_s} s warm-up",
    )
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes `intervals` (latencies in microseconds) as an HdrHistogram interval log to `path`
/// (replacing it): one compressed V2 histogram per interval, timestamps in seconds after
/// `measure_start` (the log's BaseTime and StartTime), values in microseconds.
pub(crate) fn write_hdr_log(
    path: &Path,
    intervals: &[Interval],
    measure_start: SystemTime,
) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| format!("writing {}: {e}", path.display());
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("chainlog-bench latency, microseconds, by intended send time")
        .with_start_time(measure_start)
        .with_base_time(measure_start)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(|e| failed(&e))?;
    for interval in intervals {
        log.write_histogram(&interval.latency, interval.start, interval.duration, None)
            .map_err(|e| failed(&e))?;
    }
    std::fs::write(path, out).map_err(|e| failed(&e))
}

/// The command line of this process, as one string (for reports).
pub(crate) fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The time series as the HTML report plots it.
pub(crate) fn timeline(intervals: &[IntervalStats]) -> Vec<SecondSample> {
    intervals
        .iter()
        .map(|i| SecondSample {
            t_s: i.start_s + i.duration_s,
            records_per_s: i.records_per_s,
            latency_us_p50: i.latency_us_p50,
            latency_us_p99: i.latency_us_p99,
            latency_us_p999: i.latency_us_p999,
            latency_us_max: i.latency_us_max,
        })
        .collect()
}

/// The progress line on stderr: rewritten in place (`\r`) on a terminal, one plain line per
/// update otherwise (logs and CI output stay readable).
#[derive(Debug)]
pub(crate) struct Progress {
    terminal: bool,
    /// Characters of the line on screen, to blank what a shorter line would leave behind.
    shown: usize,
}

impl Progress {
    /// A progress line on this process's stderr.
    pub(crate) fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            shown: 0,
        }
    }

    /// Shows `line` (no newline in it).
    pub(crate) fn update(&mut self, line: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let width = line.chars().count();
            let pad = self.shown.saturating_sub(width);
            let _ = write!(stderr, "\r{line}{:pad$}", "");
            self.shown = width;
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
    }

    /// Ends the line on a terminal, so what follows starts on a fresh one.
    pub(crate) fn finish(&mut self) {
        if self.terminal && self.shown > 0 {
            eprintln!();
            self.shown = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn percentiles_are_ordered_and_empty_is_zero() {
        assert_eq!(
            LatencyPercentiles::of(&latency_histogram()),
            LatencyPercentiles::default()
        );
        let mut h = latency_histogram();
        for us in 1..=10_000 {
            record_latency(&mut h, Duration::from_micros(us));
        }
        let p = LatencyPercentiles::of(&h);
        assert!(p.min <= p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99);
        assert!(p.p99 <= p.p999 && p.p999 <= p.p9999 && p.p9999 <= p.max);
        // 3 significant digits: within 0.1%.
        assert!(p.p50.abs_diff(5_000) <= 5, "p50 {}", p.p50);
        assert!(p.max.abs_diff(10_000) <= 10, "max {}", p.max);
    }

    #[test]
    fn summary_rates_follow_from_counts() {
        let mut h = latency_histogram();
        record_latency(&mut h, Duration::from_micros(100));
        let s = LoadSummary::new(Duration::from_secs(2), 10, 128, &h, Errors::new());
        assert_eq!(s.bytes, 1280);
        assert!((s.records_per_s - 5.0).abs() < 1e-9);
        assert!((s.bytes_per_s - 640.0).abs() < 1e-9);
        let zero = LoadSummary::new(Duration::ZERO, 0, 128, &h, Errors::new());
        assert_eq!(zero.records_per_s, 0.0);
    }
}
