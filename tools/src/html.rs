//! The HTML report of a run or a capacity sweep: one self-contained file (inline CSS, inline
//! SVG plots drawn by plotters, no script, nothing fetched) that can be mailed, archived next
//! to its JSON and opened years later.
//!
//! The caller fills an [`HtmlReport`] and calls [`write_report`]. What it shows:
//! - the command line and the summary table (latency percentiles, throughput, errors);
//! - with a sweep: the capacity answer at the knee, latency against offered load (p50, p99,
//!   p99.9, the SLO as a horizontal line, the knee marked) and the sweep table;
//! - the percentile spectrum, x in "nines" (`-log10(1 - q)`, so 90, 99, 99.9 ... are evenly
//!   spaced, as HdrHistogram's plots do);
//! - latency and throughput per second over the run, each fault of a drill marked on them by
//!   a dashed line, and the faults' table ([`crate::faults`]);
//! - single appends end to end (the per-append breakdown, [`crate::trace`]) and where the
//!   time goes on each node (server-side stages, [`crate::stages`]) when they were fetched;
//! - the machine fingerprint ([`crate::fingerprint`]) so that two reports can be compared.
//!
//! Latency axes are logarithmic: tails are often a hundred times the median, and a linear axis
//! would flatten everything that is not the tail.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::append_mode::NodeStages;
use crate::faults::{FaultReport, Window};
use crate::fingerprint::Fingerprint;
use crate::report::{thousands, LoadSummary};
use crate::stages::StageBreakdown;
use crate::trace::{AppendStages, Breakdown};

/// Everything the HTML report shows.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HtmlReport {
    /// The heading, e.g. `chainlog-bench plan: 128 B records, p99 <= 2 ms`.
    pub(crate) title: String,
    /// The command line that produced the run, as typed (shown verbatim).
    pub(crate) command_line: String,
    /// The measured window of the run (for a sweep: the step the report is about, usually
    /// the knee, or the last step).
    pub(crate) summary: LoadSummary,
    /// What makes the figures doubtful (failed appends, a generator that was the bottleneck,
    /// noise deciding a sweep), shown first.
    pub(crate) warnings: Vec<String>,
    /// The offered-load sweep of `chainlog-bench plan`, if this was one.
    pub(crate) sweep: Option<Sweep>,
    /// One sample per interval of the measured window, in time order (for a sweep: of every
    /// step, in the order they ran, on one time axis).
    pub(crate) timeline: Vec<SecondSample>,
    /// The percentile spectrum of the summary's latencies, in increasing percentile order
    /// ([`spectrum_of`] computes it from a histogram).
    pub(crate) spectrum: Vec<SpectrumPoint>,
    /// The machine, build and configuration the run was made with.
    pub(crate) fingerprint: Fingerprint,
    /// Server-side latency by stage over the run, one entry per node whose metrics were
    /// scraped.
    pub(crate) stages: Vec<NodeStages>,
    /// Single appends end to end ([`crate::trace`]), if the heads' traces were fetched.
    pub(crate) per_append: Option<Breakdown>,
    /// The faults of a drill, marked on the time plots (empty without one).
    pub(crate) faults: Vec<FaultReport>,
}

/// An offered-load sweep and what it found.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Sweep {
    /// Payload bytes per record (turns records/s into MB/s).
    pub(crate) record_bytes: u64,
    /// The latency objective: p99 at most this many milliseconds.
    pub(crate) slo_p99_ms: f64,
    /// One point per offered rate, in increasing offered order.
    pub(crate) points: Vec<SweepPoint>,
    /// The highest sustainable load meeting the SLO (one of `points` or interpolated between
    /// two); `None` when no step met it.
    pub(crate) knee: Option<SweepPoint>,
}

/// One step of a sweep: the rate offered (open loop) and what came of it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct SweepPoint {
    /// Records per second offered.
    pub(crate) offered_records_per_s: f64,
    /// Records per second acknowledged.
    pub(crate) achieved_records_per_s: f64,
    /// Median latency (from the intended send time), microseconds.
    pub(crate) latency_us_p50: u64,
    /// 99th percentile latency, microseconds.
    pub(crate) latency_us_p99: u64,
    /// 99.9th percentile latency, microseconds.
    pub(crate) latency_us_p999: u64,
}

/// One interval of a run's time series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct SecondSample {
    /// End of the interval, seconds since the measured window started.
    pub(crate) t_s: f64,
    /// Records of the interval acknowledged, per second.
    pub(crate) records_per_s: f64,
    /// Median latency of those records, microseconds.
    pub(crate) latency_us_p50: u64,
    /// 99th percentile, microseconds.
    pub(crate) latency_us_p99: u64,
    /// 99.9th percentile, microseconds.
    pub(crate) latency_us_p999: u64,
    /// Slowest record, microseconds.
    pub(crate) latency_us_max: u64,
}

/// One point of a percentile spectrum.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct SpectrumPoint {
    /// Percentile, 0 to 100 (exclusive).
    pub(crate) percentile: f64,
    /// Latency at that percentile, microseconds.
    pub(crate) latency_us: u64,
}

/// Spectrum points per "nine" (per tenfold fewer records left above the percentile).
const SPECTRUM_POINTS_PER_NINE: u32 = 20;
/// The spectrum's x axis shows at least 99.999 (five nines), however few records there were.
const SPECTRUM_NINES_MIN: f64 = 5.0;
/// Per-second plots mark each sample with a dot up to this many samples.
const MARKED_SAMPLES_MAX: usize = 120;
/// Plot size, pixels.
const PLOT_SIZE: (u32, u32) = (960, 440);
const FONT: &str = "sans-serif";
const CAPTION_PX: u32 = 22;
const AXIS_DESC_PX: u32 = 16;
const LABEL_PX: u32 = 14;
/// Line colours: p50, p99, p99.9, max (colour-blind-safe Okabe-Ito hues).
const BLUE: RGBColor = RGBColor(0, 114, 178);
const ORANGE: RGBColor = RGBColor(230, 159, 0);
const VERMILION: RGBColor = RGBColor(213, 94, 0);
const PURPLE: RGBColor = RGBColor(204, 121, 167);
const GREEN: RGBColor = RGBColor(0, 158, 115);
const GREY: RGBColor = RGBColor(90, 90, 90);

/// Plot titles (also what the tests look for).
const TITLE_LOAD: &str = "Latency vs offered load";
const TITLE_SPECTRUM: &str = "Latency by percentile";
const TITLE_LATENCY_TIME: &str = "Latency over time";
const TITLE_THROUGHPUT_TIME: &str = "Throughput over time";

/// The percentile spectrum of `histogram` (microseconds): [`SPECTRUM_POINTS_PER_NINE`] points
/// per nine from the 0th percentile up to the last percentile its record count resolves
/// (`1 - 1/count`). Empty for an empty histogram.
pub(crate) fn spectrum_of(histogram: &Histogram<u64>) -> Vec<SpectrumPoint> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let nines_max = (histogram.len() as f64).log10();
    let steps = (nines_max * f64::from(SPECTRUM_POINTS_PER_NINE)).floor() as u32;
    let mut points: Vec<SpectrumPoint> = (0..=steps)
        .map(|i| {
            let quantile = 1.0 - 10f64.powf(-f64::from(i) / f64::from(SPECTRUM_POINTS_PER_NINE));
            SpectrumPoint {
                percentile: quantile * 100.0,
                latency_us: histogram.value_at_quantile(quantile),
            }
        })
        .collect();
    // The slowest record, at the last resolvable percentile.
    let last = 100.0 * (1.0 - 1.0 / histogram.len() as f64);
    if points.last().is_some_and(|p| p.percentile < last) {
        points.push(SpectrumPoint {
            percentile: last,
            latency_us: histogram.max(),
        });
    }
    points
}

/// Writes `report` to `path` as one self-contained HTML file (replacing it).
pub(crate) fn write_report(path: &Path, report: &HtmlReport) -> std::io::Result<()> {
    std::fs::write(path, render(report)?)
}

/// The HTML text of `report`.
fn render(report: &HtmlReport) -> std::io::Result<String> {
    let mut html = String::new();
    let title = escape(&report.title);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n\
         <pre class=\"command\">{}</pre>\n",
        escape(&report.command_line)
    );
    for warning in &report.warnings {
        let _ = writeln!(html, "<p class=\"warn\">{}</p>", escape(warning));
    }
    if let Some(sweep) = &report.sweep {
        capacity_answer(&mut html, sweep);
    }
    html.push_str("<h2>Summary</h2>\n");
    summary_table(&mut html, &report.summary);
    if let Some(sweep) = &report.sweep {
        html.push_str("<h2>Offered load sweep</h2>\n");
        figure(&mut html, &plot_load(sweep)?);
        sweep_table(&mut html, sweep);
    }
    html.push_str("<h2>Latency distribution</h2>\n");
    if report.spectrum.is_empty() {
        html.push_str("<p>No latencies were recorded.</p>\n");
    } else {
        figure(&mut html, &plot_spectrum(&report.spectrum)?);
    }
    html.push_str("<h2>Over time</h2>\n");
    if report.timeline.is_empty() {
        html.push_str("<p>No per-second samples were recorded.</p>\n");
    } else {
        let marks = fault_marks(&report.faults);
        figure(&mut html, &plot_latency_time(&report.timeline, &marks)?);
        figure(&mut html, &plot_throughput_time(&report.timeline, &marks)?);
    }
    if !report.faults.is_empty() {
        html.push_str("<h2>Faults</h2>\n");
        faults_table(&mut html, &report.faults);
    }
    if let Some(per_append) = &report.per_append {
        html.push_str("<h2>Where single appends' time goes (end to end)</h2>\n");
        per_append_table(&mut html, per_append);
    }
    if !report.stages.is_empty() {
        html.push_str("<h2>Where the time goes (server side)</h2>\n");
        for node in &report.stages {
            let who = match node.node_id {
                Some(id) => format!("Node {id} ({}) at {}", node.role, node.addr),
                None => format!("The node at {}", node.addr),
            };
            let _ = writeln!(html, "<h3>{}</h3>", escape(&who));
            stages_table(&mut html, &node.stages);
        }
    }
    html.push_str("<h2>Machine fingerprint</h2>\n");
    fingerprint_table(&mut html, &report.fingerprint);
    html.push_str("</body>\n</html>\n");
    Ok(html)
}

const STYLE: &str = "
body { font-family: sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
pre.command { background: #f4f4f4; padding: 0.6em; white-space: pre-wrap; word-break: break-all; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f0; }
td pre { margin: 0; font-size: 0.85em; white-space: pre-wrap; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
p.answer { font-size: 1.15em; background: #eef6ee; padding: 0.6em; border-left: 4px solid #4a4; }
p.warn { background: #fbeeee; padding: 0.6em; border-left: 4px solid #c44; }
";

/// `&`, `<`, `>` and quotes made harmless.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An SVG drawn by plotters, inlined. The namespace attribute is dropped: HTML parsers put
/// inline `<svg>` in the SVG namespace themselves, and the file then names no URL at all.
fn figure(html: &mut String, svg: &str) {
    html.push_str("<figure>\n");
    html.push_str(&svg.replace(" xmlns=\"http://www.w3.org/2000/svg\"", ""));
    html.push_str("\n</figure>\n");
}

/// A table of (name, value) rows; values are HTML already.
fn key_value_table(html: &mut String, rows: &[(&str, String)]) {
    html.push_str("<table>\n");
    for (key, value) in rows {
        let _ = writeln!(html, "<tr><th>{}</th><td>{value}</td></tr>", escape(key));
    }
    html.push_str("</table>\n");
}

fn summary_table(html: &mut String, summary: &LoadSummary) {
    let l = &summary.latency_us;
    html.push_str(
        "<table>\n<tr><th>records/s</th><th>MB/s</th><th>records</th><th>seconds</th>\
         <th>p50 µs</th><th>p90 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>p99.99 µs</th>\
         <th>max µs</th><th>errors</th></tr>\n<tr>",
    );
    let cells = [
        thousands(summary.records_per_s.round() as u64),
        format!("{:.2}", summary.bytes_per_s / 1e6),
        thousands(summary.records),
        format!("{:.3}", summary.duration_s),
        thousands(l.p50),
        thousands(l.p90),
        thousands(l.p99),
        thousands(l.p999),
        thousands(l.p9999),
        thousands(l.max),
    ];
    for cell in cells {
        let _ = write!(html, "<td class=\"n\">{cell}</td>");
    }
    let errors = if summary.errors.is_empty() {
        "none".to_string()
    } else {
        summary
            .errors
            .iter()
            .map(|(kind, n)| format!("{} {}", escape(kind), thousands(*n)))
            .collect::<Vec<_>>()
            .join("<br>")
    };
    let _ = writeln!(html, "<td>{errors}</td></tr>\n</table>");
}

/// "At most N records/s (M MB/s) at p99 <= X ms", or why there is no answer.
fn capacity_answer(html: &mut String, sweep: &Sweep) {
    match &sweep.knee {
        Some(knee) => {
            let _ = writeln!(
                html,
                "<p class=\"answer\">Max sustainable load at p99 ≤ {} ms with {} B records: \
                 <b>{} records/s offered ({:.2} MB/s)</b>, of which {} records/s were \
                 acknowledged in the step's window (arrivals vary); there p50 {} µs, \
                 p99 {} µs, p99.9 {} µs.</p>",
                sweep.slo_p99_ms,
                sweep.record_bytes,
                thousands(knee.offered_records_per_s.round() as u64),
                knee.offered_records_per_s * sweep.record_bytes as f64 / 1e6,
                thousands(knee.achieved_records_per_s.round() as u64),
                thousands(knee.latency_us_p50),
                thousands(knee.latency_us_p99),
                thousands(knee.latency_us_p999),
            );
        }
        None => {
            let _ = writeln!(
                html,
                "<p class=\"warn\">No offered load met p99 ≤ {} ms: the lowest step is already \
                 past the knee (sweep lower).</p>",
                sweep.slo_p99_ms
            );
        }
    }
}

fn sweep_table(html: &mut String, sweep: &Sweep) {
    let slo_us = sweep.slo_p99_ms * 1000.0;
    html.push_str(
        "<table>\n<tr><th>offered records/s</th><th>achieved records/s</th><th>MB/s</th>\
         <th>p50 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>p99 within SLO</th></tr>\n",
    );
    for p in &sweep.points {
        let _ = writeln!(
            html,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.2}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            thousands(p.offered_records_per_s.round() as u64),
            thousands(p.achieved_records_per_s.round() as u64),
            p.achieved_records_per_s * sweep.record_bytes as f64 / 1e6,
            thousands(p.latency_us_p50),
            thousands(p.latency_us_p99),
            thousands(p.latency_us_p999),
            if p.latency_us_p99 as f64 <= slo_us {
                "yes"
            } else {
                "no"
            },
        );
    }
    html.push_str("</table>\n");
}

fn per_append_table(html: &mut String, b: &Breakdown) {
    if !b.clocks_comparable {
        html.push_str("<p>The node's clock is not this host's: no end-to-end breakdown.</p>\n");
        return;
    }
    let _ = writeln!(
        html,
        "<p>The bench's own times of {} sampled appends (every append whose LSN is a multiple \
         of 16) joined with the node's traces of the same appends ({} joined); the stages of \
         each append add up to its latency. µs.</p>",
        thousands(b.sampled as u64),
        thousands(b.joined as u64)
    );
    html.push_str("<table>\n<tr><th>appends</th><th>latency</th>");
    for name in b.stage_names {
        let _ = write!(html, "<th>{}</th>", escape(name));
    }
    html.push_str("</tr>\n");
    let row = |html: &mut String, label: String, a: &AppendStages| {
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td>",
            escape(&label),
            thousands(a.total_us.round() as u64)
        );
        for us in a.stages_us {
            let _ = write!(
                html,
                "<td class=\"n\">{}</td>",
                thousands(us.max(0.0).round() as u64)
            );
        }
        html.push_str("</tr>\n");
    };
    for band in &b.bands {
        row(
            html,
            format!("around {} ({})", band.percentile, band.appends),
            &band.mean,
        );
    }
    for (i, slow) in b.slowest.iter().enumerate() {
        row(html, format!("slowest #{}", i + 1), slow);
    }
    html.push_str("</table>\n");
}

fn stages_table(html: &mut String, breakdown: &StageBreakdown) {
    let _ = writeln!(html, "<p>{}</p>", escape(&breakdown.basis));
    html.push_str(
        "<table>\n<tr><th>stage</th><th>count</th><th>mean µs</th><th>p50 µs</th>\
         <th>p99 µs</th></tr>\n",
    );
    for s in &breakdown.stages {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&s.stage),
            thousands(s.count),
            s.mean_us,
            thousands(s.p50_us),
            thousands(s.p99_us),
        );
    }
    html.push_str("</table>\n");
    if let Some(batches) = &breakdown.batch_records {
        let _ = writeln!(
            html,
            "<p>Group commit: {} writes, {:.1} records per write on average \
             (p50 {}, p99 {}).</p>",
            thousands(batches.count),
            batches.mean,
            thousands(batches.p50),
            thousands(batches.p99),
        );
    }
}

fn fingerprint_table(html: &mut String, fingerprint: &Fingerprint) {
    let rows: Vec<(&str, String)> = fingerprint
        .rows()
        .into_iter()
        .map(|(key, value)| (key, escape(&value)))
        .chain(std::iter::once((
            "bench config",
            format!(
                "<pre>{}</pre>",
                escape(
                    &serde_json::to_string_pretty(&fingerprint.config)
                        .unwrap_or_else(|e| format!("(not encodable: {e})"))
                )
            ),
        )))
        .collect();
    key_value_table(html, &rows);
}

/// Turns a plotters error into an I/O error (the SVG backend writes to a string: its errors
/// are drawing errors, e.g. an empty range).
fn plot_error<E: std::error::Error + Send + Sync>(
    error: DrawingAreaErrorKind<E>,
) -> std::io::Error {
    std::io::Error::other(format!("drawing a plot: {error}"))
}

/// A logarithmic latency axis range covering `values` (µs), widened to whole decades so
/// that the axis always has labelled ticks.
fn latency_range_us(values: impl Iterator<Item = u64>) -> std::ops::Range<f64> {
    let (low, high) = values.fold((u64::MAX, 1), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let low = low.clamp(1, high) as f64;
    let low = 10f64.powf(low.log10().floor());
    let high = 10f64.powf((high as f64).log10().ceil()).max(low * 10.0);
    low..high
}

/// Latency in µs as an axis label: `250`, `1.5k`, `20k`, `3M`.
fn latency_label(us: f64) -> String {
    let (value, unit) = if us >= 1e6 {
        (us / 1e6, "M")
    } else if us >= 1e3 {
        (us / 1e3, "k")
    } else {
        (us, "")
    };
    let digits = if value < 10.0 && value.fract().abs() > 1e-9 {
        1
    } else {
        0
    };
    format!("{value:.digits$}{unit}")
}

/// A rate as an axis label: `500`, `2.5k`, `5k`, `40k`, `1.2M`.
fn rate_label(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{}M", trimmed(per_s / 1e6))
    } else if per_s >= 1e3 {
        format!("{}k", trimmed(per_s / 1e3))
    } else {
        trimmed(per_s)
    }
}

/// `value` with at most one decimal, none if it is whole: `5`, `2.5`.
fn trimmed(value: f64) -> String {
    let text = format!("{value:.1}");
    match text.strip_suffix(".0") {
        Some(whole) => whole.to_string(),
        None => text,
    }
}

/// The top of a linear axis over `values`: 10% headroom, never empty.
fn linear_top(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0, f64::max);
    if max > 0.0 {
        max * 1.1
    } else {
        1.0
    }
}

/// A linear axis range over `values` (not negative) with 5% of their span on each side, so
/// that the first and last points are not drawn on the frame; never empty.
fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let low = low.min(high);
    let pad = match high - low {
        span if span > 0.0 => span * 0.05,
        _ if high > 0.0 => high * 0.1,
        _ => 1.0,
    };
    (low - pad).max(0.0)..high + pad
}

/// The time axis of the per-second plots: from 0 to a little past the last sample.
fn time_range(timeline: &[SecondSample]) -> std::ops::Range<f64> {
    0.0..padded_range(timeline.iter().map(|s| s.t_s)).end
}

/// Runs `draw` on a fresh SVG canvas and returns the SVG text.
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> std::io::Result<()>,
) -> std::io::Result<String> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    Ok(text)
}

fn legend_style() -> ShapeStyle {
    WHITE.mix(0.85).filled()
}

/// Width of the legend panel right of the latency-vs-load plot, pixels: the legend sits
/// beside the data, never on it.
const LEGEND_PANEL_PX: u32 = 200;

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Mark {
    Line(RGBColor),
    Dashed(RGBColor),
    Ring(RGBColor),
}

/// A legend of `entries` drawn in `area` (a panel of its own), top down below the caption.
fn side_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[(String, Mark)],
) -> std::io::Result<()> {
    let top = i32::try_from(CAPTION_PX).unwrap_or(0) + 40;
    for (i, (label, mark)) in entries.iter().enumerate() {
        let y = top + 26 * i32::try_from(i).unwrap_or(0);
        match *mark {
            Mark::Line(colour) => area
                .draw(&PathElement::new([(8, y), (32, y)], colour.stroke_width(2)))
                .map_err(plot_error)?,
            Mark::Dashed(colour) => {
                for x in [8, 22] {
                    area.draw(&PathElement::new(
                        [(x, y), (x + 8, y)],
                        colour.stroke_width(2),
                    ))
                    .map_err(plot_error)?;
                }
            }
            Mark::Ring(colour) => area
                .draw(&Circle::new((20, y), 6, colour.stroke_width(3)))
                .map_err(plot_error)?,
        }
        area.draw(&Text::new(
            label.clone(),
            (40, y - i32::try_from(LABEL_PX / 2).unwrap_or(0)),
            (FONT, LABEL_PX),
        ))
        .map_err(plot_error)?;
    }
    Ok(())
}

/// A logarithmic rate axis range covering `rates` with a margin on each side (a factor of
/// 1.25), so the first and last points are not drawn on the frame; never empty.
fn log_rate_range(rates: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (low, high) = rates
        .filter(|r| *r > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
            (lo.min(r), hi.max(r))
        });
    if high <= 0.0 {
        return 1.0..10.0;
    }
    low / 1.25..high * 1.25
}

/// (a) p50/p99/p99.9 against offered load, the SLO and the knee. Both axes are logarithmic:
/// a sweep doubles its rate, so a linear axis would crowd the first steps into its left
/// edge.
fn plot_load(sweep: &Sweep) -> std::io::Result<String> {
    svg(|root| {
        let (plot, legend) = root.split_horizontally(PLOT_SIZE.0 - LEGEND_PANEL_PX);
        let points = &sweep.points;
        let slo_us = sweep.slo_p99_ms * 1000.0;
        let x = log_rate_range(points.iter().map(|p| p.offered_records_per_s));
        let y = latency_range_us(
            points
                .iter()
                .flat_map(|p| [p.latency_us_p50, p.latency_us_p99, p.latency_us_p999])
                .chain(std::iter::once(slo_us.round() as u64)),
        );
        let mut chart = ChartBuilder::on(&plot)
            .caption(TITLE_LOAD, (FONT, CAPTION_PX))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x.clone().log_scale(), y.clone().log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("offered load (records/s, log scale)")
            .y_desc("latency (µs, log scale)")
            .axis_desc_style((FONT, AXIS_DESC_PX))
            .label_style((FONT, LABEL_PX))
            .x_label_formatter(&|x| rate_label(*x))
            .y_label_formatter(&|y| latency_label(*y))
            .draw()
            .map_err(plot_error)?;
        type Pick = fn(&SweepPoint) -> u64;
        let lines: [(&str, RGBColor, Pick); 3] = [
            ("p50", BLUE, |p| p.latency_us_p50),
            ("p99", VERMILION, |p| p.latency_us_p99),
            ("p99.9", PURPLE, |p| p.latency_us_p999),
        ];
        let mut entries = Vec::new();
        for (name, colour, pick) in lines {
            let xy = || {
                points
                    .iter()
                    .map(move |p| (p.offered_records_per_s, pick(p) as f64))
            };
            chart
                .draw_series(LineSeries::new(xy(), colour.stroke_width(2)))
                .map_err(plot_error)?;
            chart
                .draw_series(xy().map(|xy| Circle::new(xy, 3, colour.filled())))
                .map_err(plot_error)?;
            entries.push((name.to_string(), Mark::Line(colour)));
        }
        chart
            .draw_series(DashedLineSeries::new(
                [(x.start, slo_us), (x.end, slo_us)],
                8,
                5,
                GREY.stroke_width(2),
            ))
            .map_err(plot_error)?;
        entries.push((
            format!("SLO: p99 ≤ {} ms", sweep.slo_p99_ms),
            Mark::Dashed(GREY),
        ));
        if let Some(knee) = &sweep.knee {
            let at = (knee.offered_records_per_s, knee.latency_us_p99 as f64);
            chart
                .draw_series(DashedLineSeries::new(
                    [
                        (knee.offered_records_per_s, y.start),
                        (knee.offered_records_per_s, y.end),
                    ],
                    4,
                    4,
                    GREEN.stroke_width(1),
                ))
                .map_err(plot_error)?;
            chart
                .draw_series(std::iter::once(Circle::new(at, 8, GREEN.stroke_width(3))))
                .map_err(plot_error)?;
            entries.push((
                format!(
                    "knee: {} records/s",
                    thousands(knee.offered_records_per_s.round() as u64)
                ),
                Mark::Ring(GREEN),
            ));
        }
        side_legend(&legend, &entries)
    })
}

/// Nines of a percentile: `-log10(1 - p/100)` (0 → 0, 90 → 1, 99 → 2, 99.9 → 3 ...).
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).log10()
}

/// The percentile at `nines` nines, as an axis label: `0`, `90`, `99`, `99.9`, `99.99` ...
fn nines_label(nines: f64) -> String {
    if nines < 0.5 {
        return "0".to_string();
    }
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{:.decimals$}", 100.0 * (1.0 - 10f64.powf(-nines)))
}

/// (b) the percentile spectrum, x in nines.
fn plot_spectrum(spectrum: &[SpectrumPoint]) -> std::io::Result<String> {
    svg(|root| {
        let x_top = spectrum
            .iter()
            .map(|p| nines(p.percentile))
            .fold(SPECTRUM_NINES_MIN, f64::max)
            .ceil();
        let y = latency_range_us(spectrum.iter().map(|p| p.latency_us));
        let mut chart = ChartBuilder::on(root)
            .caption(TITLE_SPECTRUM, (FONT, CAPTION_PX))
            .margin(16)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_top, y.clone().log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("percentile (%, log scale: one step per nine)")
            .y_desc("latency (µs, log scale)")
            .axis_desc_style((FONT, AXIS_DESC_PX))
            .label_style((FONT, LABEL_PX))
            .x_labels(x_top as usize + 1)
            .x_label_formatter(&|x| nines_label(*x))
            .y_label_formatter(&|y| latency_label(*y))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(
                spectrum
                    .iter()
                    .map(|p| (nines(p.percentile), p.latency_us as f64)),
                BLUE.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label("latency at percentile")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(legend_style())
            .border_style(BLACK)
            .label_font((FONT, LABEL_PX))
            .draw()
            .map_err(plot_error)
    })
}

/// A dot per sample when there are few enough to tell apart (a run of one or two seconds
/// would otherwise show no line at all).
fn markers(
    timeline: &[SecondSample],
    colour: RGBColor,
    value: impl Fn(&SecondSample) -> f64,
) -> Vec<Circle<(f64, f64), u32>> {
    if timeline.len() > MARKED_SAMPLES_MAX {
        return Vec::new();
    }
    timeline
        .iter()
        .map(|s| Circle::new((s.t_s, value(s)), 3, colour.filled()))
        .collect()
}

/// Where the faults were applied (seconds after the window began) and what to call them.
fn fault_marks(faults: &[FaultReport]) -> Vec<(f64, String)> {
    faults
        .iter()
        .filter_map(|f| f.applied_s.map(|t| (t, f.fault.text.clone())))
        .collect()
}

/// A dashed vertical line at each mark's time from `low` to `high`, labelled at the top.
fn draw_marks<Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    marks: &[(f64, String)],
    low: f64,
    high: f64,
) -> std::io::Result<()> {
    for (t, label) in marks {
        // Dashes: ten segments, every other one drawn.
        let dashes = (0..10).filter(|i| i % 2 == 0).map(|i| {
            let at = |k: f64| low * (high / low).powf(k / 10.0);
            let linear = |k: f64| low + (high - low) * k / 10.0;
            let pick = |k: f64| if low > 0.0 { at(k) } else { linear(k) };
            PathElement::new(
                [(*t, pick(f64::from(i))), (*t, pick(f64::from(i + 1)))],
                BLACK.stroke_width(1),
            )
        });
        chart.draw_series(dashes).map_err(plot_error)?;
        chart
            .draw_series([Text::new(label.clone(), (*t, high), (FONT, LABEL_PX))])
            .map_err(plot_error)?;
    }
    Ok(())
}

/// The faults' table: when, whom, the outage, and latency before, during and after.
fn faults_table(html: &mut String, faults: &[FaultReport]) {
    html.push_str(
        "<table>\n<tr><th>fault</th><th>applied (s)</th><th>target</th>\
         <th>unavailable (ms)</th><th>first ack after (s)</th>\
         <th>during: acked / failed / indefinite / unanswered / not sent</th>\
         <th>p99 / p99.9 µs before</th><th>during</th><th>2 s after</th>\
         <th>reconfiguration until the next fault</th></tr>\n",
    );
    let window = |w: &Window| match (w.p99, w.p999) {
        (Some(p99), Some(p999)) => format!("{} / {}", thousands(p99), thousands(p999)),
        _ => "none".to_string(),
    };
    let seconds = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{s:.3}"));
    for f in faults {
        let d = &f.during;
        let target = match &f.error {
            Some(error) => format!("{} (failed: {error})", f.target),
            None => f.target.clone(),
        };
        let unavailable = match (f.unavailability_s, f.first_ack_after_s) {
            (Some(u), Some(_)) => format!("{:.0}", u * 1000.0),
            (Some(u), None) => format!("at least {:.0}", u * 1000.0),
            (None, _) => "-".to_string(),
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{} / {} / {} / {} / {}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td>{}</td></tr>",
            escape(&f.fault.text),
            seconds(f.applied_s),
            escape(&target),
            unavailable,
            seconds(f.first_ack_after_s),
            thousands(d.acknowledged),
            thousands(d.failed),
            thousands(d.indefinite),
            thousands(d.unanswered),
            thousands(d.not_sent),
            window(&f.latency_us.before),
            window(&f.latency_us.during),
            window(&f.latency_us.after),
            escape(&f.reconfiguration_text()),
        );
    }
    html.push_str("</table>\n");
}

/// (c) p50, p99 and max per second, faults marked.
fn plot_latency_time(
    timeline: &[SecondSample],
    marks: &[(f64, String)],
) -> std::io::Result<String> {
    svg(|root| {
        let x = time_range(timeline);
        let y = latency_range_us(
            timeline
                .iter()
                .flat_map(|s| [s.latency_us_p50, s.latency_us_max]),
        );
        let mut chart = ChartBuilder::on(root)
            .caption(TITLE_LATENCY_TIME, (FONT, CAPTION_PX))
            .margin(16)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y.clone().log_scale())
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .x_label_formatter(&|t| trimmed(*t))
            .y_desc("latency per second (µs, log scale)")
            .axis_desc_style((FONT, AXIS_DESC_PX))
            .label_style((FONT, LABEL_PX))
            .y_label_formatter(&|y| latency_label(*y))
            .draw()
            .map_err(plot_error)?;
        type Pick = fn(&SecondSample) -> u64;
        // Slowest first, so that a p99 equal to the max (few records in a second) is drawn
        // over it and stays visible.
        let lines: [(&str, RGBColor, Pick); 3] = [
            ("max", ORANGE, |s| s.latency_us_max),
            ("p99", VERMILION, |s| s.latency_us_p99),
            ("p50", BLUE, |s| s.latency_us_p50),
        ];
        for (name, colour, pick) in lines {
            chart
                .draw_series(LineSeries::new(
                    timeline.iter().map(|s| (s.t_s, pick(s) as f64)),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(markers(timeline, colour, |s| pick(s) as f64))
                .map_err(plot_error)?;
        }
        draw_marks(&mut chart, marks, y.start, y.end)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(legend_style())
            .border_style(BLACK)
            .label_font((FONT, LABEL_PX))
            .draw()
            .map_err(plot_error)
    })
}

/// (d) records acknowledged per second, faults marked.
fn plot_throughput_time(
    timeline: &[SecondSample],
    marks: &[(f64, String)],
) -> std::io::Result<String> {
    svg(|root| {
        let x = time_range(timeline);
        let y_top = linear_top(timeline.iter().map(|s| s.records_per_s)) * 1.15;
        let mut chart = ChartBuilder::on(root)
            .caption(TITLE_THROUGHPUT_TIME, (FONT, CAPTION_PX))
            .margin(16)
            .margin_right(40)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x, 0.0..y_top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .x_label_formatter(&|t| trimmed(*t))
            .y_desc("throughput (records/s)")
            .axis_desc_style((FONT, AXIS_DESC_PX))
            .label_style((FONT, LABEL_PX))
            .y_label_formatter(&|y| rate_label(*y))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(LineSeries::new(
                timeline.iter().map(|s| (s.t_s, s.records_per_s)),
                GREEN.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label("records acknowledged per second")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN.stroke_width(2)));
        chart
            .draw_series(markers(timeline, GREEN, |s| s.records_per_s))
            .map_err(plot_error)?;
        draw_marks(&mut chart, marks, 0.0, y_top)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(legend_style())
            .border_style(BLACK)
            .label_font((FONT, LABEL_PX))
            .draw()
            .map_err(plot_error)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::{latency_histogram, record_latency, Errors};
    use crate::stages;

    /// A small deterministic generator (xorshift64*), so the synthetic runs are the same
    /// every time.
    struct Rng(u64);

    impl Rng {
        /// Uniform in [0, 1).
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }

        /// A latency shaped like a durable append here: a median near `median_us`, a
        /// log-normal body and rare disk stalls of several milliseconds.
        fn latency_us(&mut self, median_us: f64) -> u64 {
            let (u1, u2) = (self.unit().max(1e-12), self.unit());
            let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let mut us = median_us * (0.45 * normal).exp();
            if self.unit() < 0.002 {
                us += 2_000.0 + 15_000.0 * self.unit();
            }
            us.max(1.0) as u64
        }
    }

    /// A sweep of an open-loop run against a node whose knee is near 24k records/s.
    fn sweep() -> Sweep {
        let points: Vec<SweepPoint> = (1..=10)
            .map(|step| {
                let offered = 4_000.0 * f64::from(step);
                let load = offered / 30_000.0;
                // Queueing: latency grows like 1 / (1 - utilisation).
                let queueing = 1.0 / (1.0 - load.min(0.97));
                SweepPoint {
                    offered_records_per_s: offered,
                    achieved_records_per_s: offered.min(29_000.0),
                    latency_us_p50: (180.0 * queueing) as u64,
                    latency_us_p99: (400.0 * queueing) as u64,
                    latency_us_p999: (1_500.0 * queueing) as u64,
                }
            })
            .collect();
        let slo_p99_ms = 2.0;
        let knee = points
            .iter()
            .rev()
            .find(|p| p.latency_us_p99 as f64 <= slo_p99_ms * 1000.0)
            .copied();
        Sweep {
            record_bytes: 128,
            slo_p99_ms,
            points,
            knee,
        }
    }

    /// A 30-second run at about 20k records/s with a disk stall at t = 17 s.
    fn synthetic_report(fingerprint: Fingerprint) -> HtmlReport {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut all = latency_histogram();
        let mut timeline = Vec::new();
        for second in 1..=30u32 {
            let stall = second == 17;
            let records = if stall {
                9_000
            } else {
                19_000 + (rng.unit() * 2_000.0) as u64
            };
            let mut h = latency_histogram();
            for _ in 0..records / 20 {
                let mut us = rng.latency_us(300.0);
                if stall {
                    us += 6_000;
                }
                record_latency(&mut h, Duration::from_micros(us));
            }
            all.add(&h).unwrap();
            timeline.push(SecondSample {
                t_s: f64::from(second),
                records_per_s: records as f64,
                latency_us_p50: h.value_at_quantile(0.5),
                latency_us_p99: h.value_at_quantile(0.99),
                latency_us_p999: h.value_at_quantile(0.999),
                latency_us_max: h.max(),
            });
        }
        let records: u64 = timeline.iter().map(|s| s.records_per_s as u64).sum();
        let mut errors = Errors::new();
        errors.insert("overloaded", 12);
        let summary = LoadSummary::new(Duration::from_secs(30), records, 128, &all, errors);
        let before = stages::parse(include_str!("../tests/data/node-metrics-mid.txt")).unwrap();
        let after = stages::parse(include_str!("../tests/data/node-metrics-after.txt")).unwrap();
        HtmlReport {
            title: "chainlog-bench plan: 128 B records, p99 <= 2 ms".into(),
            command_line: "chainlog-bench plan --target 127.0.0.1:7400 --record-size 128 \
                           --slo-p99-ms 2 --rates 4000..40000/4000 --duration 30"
                .into(),
            summary,
            warnings: vec!["noise decided part of this answer".into()],
            sweep: Some(sweep()),
            timeline,
            spectrum: spectrum_of(&all),
            fingerprint,
            stages: vec![NodeStages {
                node_id: Some(2),
                addr: "127.0.0.1:7200".into(),
                role: "head".into(),
                stages: stages::breakdown(&before, &after).unwrap(),
            }],
            per_append: Some(per_append()),
            faults: Vec::new(),
        }
    }

    /// A per-append breakdown whose p99 went to the disk.
    fn per_append() -> Breakdown {
        let append = |total_us: f64, durable_us: f64| AppendStages {
            total_us,
            stages_us: [
                5.0,
                40.0,
                durable_us,
                1.0,
                2.0,
                total_us - durable_us - 48.0,
            ],
        };
        Breakdown {
            stage_names: crate::trace::STAGES,
            sampled: 6_250,
            joined: 6_200,
            clocks_comparable: true,
            bands: vec![crate::trace::Band {
                percentile: "p99",
                appends: 62,
                mean: append(9_000.0, 8_800.0),
            }],
            slowest: vec![append(21_000.0, 20_700.0)],
        }
    }

    fn probed_fingerprint() -> Fingerprint {
        let mut f = Fingerprint::probe(None);
        f.config = serde_json::json!({"record_size": 128, "slo_p99_ms": 2.0, "shards": 1});
        f
    }

    /// The `<svg>...</svg>` elements of `html`.
    fn svgs(html: &str) -> Vec<&str> {
        html.match_indices("<svg")
            .map(|(start, _)| {
                let end = html[start..].find("</svg>").expect("closed svg") + start;
                &html[start..end + "</svg>".len()]
            })
            .collect()
    }

    #[test]
    fn writes_one_self_contained_file_with_every_plot_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        let report = synthetic_report(probed_fingerprint());
        write_report(&path, &report).unwrap();
        let html = std::fs::read_to_string(&path).unwrap();
        // Set CHAINLOG_HTML_SAMPLE=FILE to keep a copy to look at.
        if let Some(keep) = std::env::var_os("CHAINLOG_HTML_SAMPLE") {
            std::fs::write(keep, &html).unwrap();
        }
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.trim_end().ends_with("</html>"));
        let plots = svgs(&html);
        assert_eq!(plots.len(), 4);
        let titles = [
            TITLE_LOAD,
            TITLE_SPECTRUM,
            TITLE_LATENCY_TIME,
            TITLE_THROUGHPUT_TIME,
        ];
        for (svg, title) in plots.iter().zip(titles) {
            let caption = svg.find("<text").map(|at| &svg[at..]).unwrap_or_default();
            let caption = &caption[..caption.find("</text>").unwrap_or_default()];
            assert!(
                caption.contains(title),
                "{title} is the first text of its plot"
            );
            assert!(svg.contains("<polyline"), "{title}: a line is drawn");
        }
        for text in [
            "latency (µs, log scale)",
            "offered load (records/s, log scale)",
            "time (s)",
            "throughput (records/s)",
            "SLO: p99 ≤ 2 ms",
            "knee: 24,000 records/s",
            "p99.9",
            "99.99",
        ] {
            assert!(html.contains(text), "{text}");
        }
        // The capacity answer, the summary, the stages and the fingerprint.
        assert!(html.contains("Max sustainable load at p99 ≤ 2 ms with 128 B records"));
        assert!(html.contains("overloaded 12"));
        assert!(html.contains("<td>disk</td>"));
        assert!(html.contains("Node 2 (head) at 127.0.0.1:7200"));
        assert!(html.contains("Where single appends' time goes"));
        assert!(html.contains("<td>around p99 (62)</td><td class=\"n\">9,000</td>"));
        assert!(html.contains("<td>slowest #1</td><td class=\"n\">21,000</td>"));
        assert!(html.contains("<p class=\"warn\">noise decided part of this answer</p>"));
        assert!(html.contains("Machine fingerprint"));
        for row in ["kernel", "CPU", "memory", "&quot;record_size&quot;: 128"] {
            assert!(html.contains(row), "{row}");
        }
        // The command line is escaped, not markup.
        assert!(html.contains("--record-size 128"));
        // Nothing is fetched: no URL, no external reference of any kind.
        for needle in [
            "http://", "https://", "src=", "href=", "url(", "@import", "<script",
        ] {
            assert!(!html.contains(needle), "{needle}");
        }
    }

    #[test]
    fn without_a_sweep_or_samples_the_report_says_so() {
        let mut report = synthetic_report(probed_fingerprint());
        report.sweep = None;
        report.timeline.clear();
        report.spectrum.clear();
        report.stages.clear();
        report.warnings.clear();
        report.per_append = None;
        let html = render(&report).unwrap();
        assert!(svgs(&html).is_empty());
        assert!(html.contains("No per-second samples were recorded."));
        assert!(html.contains("No latencies were recorded."));
        assert!(!html.contains(TITLE_LOAD));
        assert!(!html.contains("Where the time goes"));
        assert!(!html.contains("Where single appends"));
        // A sweep where nothing met the SLO has no knee, and says why.
        let mut report = synthetic_report(probed_fingerprint());
        let sweep = report.sweep.as_mut().unwrap();
        sweep.knee = None;
        let html = render(&report).unwrap();
        assert!(html.contains("No offered load met p99 ≤ 2 ms"));
        assert_eq!(svgs(&html).len(), 4);
    }

    #[test]
    fn faults_are_marked_on_the_time_plots_and_tabled() {
        let mut report = synthetic_report(probed_fingerprint());
        let html = render(&report).unwrap();
        assert!(!html.contains("<h2>Faults</h2>"));
        report.faults = vec![FaultReport {
            fault: crate::faults::parse_fault("kill:head@5s").unwrap(),
            target: "node 2 (head of bench-0, chain 2 -> 3 -> 4, epoch 1)".into(),
            applied_s: Some(5.001),
            error: None,
            resumed_s: None,
            unavailability_s: Some(0.4),
            first_ack_after_s: Some(5.401),
            during: Default::default(),
            latency_us: Default::default(),
            reconfiguration: Some(vec![crate::stages::PhaseTime {
                phase: "detect".into(),
                count: 1,
                mean_us: 505_000.0,
            }]),
        }];
        let html = render(&report).unwrap();
        let plots = svgs(&html);
        // Latency and throughput over time carry the fault's label; the sweep and the
        // spectrum do not.
        let marked: Vec<bool> = plots.iter().map(|p| p.contains("kill:head@5s")).collect();
        assert_eq!(marked, [false, false, true, true]);
        assert!(html.contains("<h2>Faults</h2>"));
        assert!(
            html.contains("<td class=\"n\">400</td>"),
            "the unavailability in ms"
        );
        assert!(
            html.contains("<td>detect 505 ms</td>"),
            "the reconfiguration's phases"
        );
    }

    #[test]
    fn a_one_second_run_still_shows_its_sample() {
        let mut report = synthetic_report(probed_fingerprint());
        report.timeline.truncate(1);
        let html = render(&report).unwrap();
        let plots = svgs(&html);
        // One dot per line: max, p99 and p50, then throughput.
        assert_eq!(plots[2].matches("<circle").count(), 3);
        assert_eq!(plots[3].matches("<circle").count(), 1);
    }

    #[test]
    fn spectrum_spans_the_nines_the_count_resolves() {
        assert!(spectrum_of(&latency_histogram()).is_empty());
        let mut h = latency_histogram();
        for us in 1..=10_000 {
            h.record(us).unwrap();
        }
        let s = spectrum_of(&h);
        assert_eq!(s[0].percentile, 0.0);
        // Four nines from 10,000 records: 81 grid points, the last one the slowest record.
        assert_eq!(s.len(), 4 * SPECTRUM_POINTS_PER_NINE as usize + 1);
        assert!((s.last().unwrap().percentile - 99.99).abs() < 1e-9);
        assert!(s.windows(2).all(|w| w[0].percentile < w[1].percentile));
        assert!(s.windows(2).all(|w| w[0].latency_us <= w[1].latency_us));
        assert!(s[20].latency_us.abs_diff(9_000) <= 10, "p90 {:?}", s[20]);
    }

    #[test]
    fn axis_labels() {
        assert_eq!(nines_label(0.0), "0");
        assert_eq!(nines_label(1.0), "90");
        assert_eq!(nines_label(2.0), "99");
        assert_eq!(nines_label(3.0), "99.9");
        assert_eq!(nines_label(5.0), "99.999");
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(latency_label(250.0), "250");
        assert_eq!(latency_label(1_500.0), "1.5k");
        assert_eq!(latency_label(20_000.0), "20k");
        assert_eq!(latency_label(3e6), "3M");
        assert_eq!(rate_label(500.0), "500");
        assert_eq!(rate_label(2_500.0), "2.5k");
        assert_eq!(rate_label(5_000.0), "5k");
        assert_eq!(rate_label(0.0), "0");
        assert_eq!(rate_label(40_000.0), "40k");
        assert_eq!(
            padded_range([2_000.0, 4_000.0].into_iter()),
            1_900.0..4_100.0
        );
        assert_eq!(padded_range([10.0].into_iter()), 9.0..11.0);
        assert_eq!(padded_range(std::iter::empty()), 0.0..1.0);
        assert_eq!(latency_range_us([120, 800].into_iter()), 100.0..1000.0);
        assert_eq!(latency_range_us([100].into_iter()), 100.0..1000.0);
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
