//! Where one append's time goes, from end to end: the bench's own times for a sampled append
//! ([`crate::load::Sample`]: intended, sent, acknowledged) joined with the node's times for
//! the same append (its `/traces`, found by log and LSN: received, durable, answered, sent),
//! all on the host's `CLOCK_MONOTONIC`. Consecutive times make consecutive stages, so the
//! stages of an append add up to its latency exactly:
//!
//! | stage | from | to | what is in it |
//! |---|---|---|---|
//! | `generator` | intended send | the bench's send | the generator falling behind its schedule, or the outstanding bound holding the send back (the report counts those sends apart) |
//! | `to_node` | the bench's send | the node's turn that saw the frame | the client library's queue and writer task, loopback, the node's loop waking |
//! | `durable` | frame seen | records seen durable | the store: queue, group commit, the write and flush, the loop seeing the completion |
//! | `answer` | durable | answer queued | answers held in order behind earlier ones, the rest of the chain (rf > 1) |
//! | `send` | answer queued | its send handed to the ring | the rest of the node's turn, a send already in flight on the connection |
//! | `to_client` | send handed to the ring | the bench sees the acknowledgement | the ring's next enter, loopback, the client library's reader task, the generator's thread getting to it |
//!
//! The breakdown is given for the appends around each percentile of the latency (their mean
//! stages) and for the slowest appends one by one. It needs the node on the same host (the
//! same clock): a node whose times do not fall between the bench's is reported as not
//! comparable.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::load::Sample;

/// The stages, in order.
pub(crate) const STAGES: [&str; 6] = [
    "generator",
    "to_node",
    "durable",
    "answer",
    "send",
    "to_client",
];
/// Slowest appends listed one by one.
const SLOWEST: usize = 10;
/// A node time this far outside the bench's times for the same append means the clocks are
/// not the same (a node on another host).
const CLOCK_SLACK_NS: u64 = 50_000;
/// Consecutive times may be this much out of order: the node's are whole microseconds.
const ORDER_SLACK_NS: u64 = 1_000;

/// The node's times for one traced append, `CLOCK_MONOTONIC` nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeTimes {
    pub(crate) received_ns: u64,
    pub(crate) durable_ns: u64,
    pub(crate) answered_ns: u64,
    /// 0: the answer never went out.
    pub(crate) sent_ns: u64,
}

/// Parses the node's `/traces` text: `(log_id, first_lsn) -> times`.
pub(crate) fn parse_traces(text: &str) -> Result<HashMap<(u64, u64), NodeTimes>, String> {
    let mut traces = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("/traces line {}: not numbers: {line:?}", number + 1))?;
        let [_shard, log_id, first_lsn, received_ns, durable_ns, answered_ns, sent_ns] = fields[..]
        else {
            return Err(format!(
                "/traces line {}: 7 fields expected: {line:?}",
                number + 1
            ));
        };
        traces.insert(
            (log_id, first_lsn),
            NodeTimes {
                received_ns,
                durable_ns,
                answered_ns,
                sent_ns,
            },
        );
    }
    Ok(traces)
}

/// One append's stages, microseconds, in [`STAGES`] order, and its latency.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct AppendStages {
    /// Latency from the intended send (the sum of the stages), microseconds.
    pub(crate) total_us: f64,
    /// Microseconds per stage, in the order of `stage_names`.
    pub(crate) stages_us: [f64; 6],
}

/// The mean stages of the appends around one percentile of the latency.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Band {
    /// `"p50"`, `"p90"`, `"p99"`, `"p99.9"`.
    pub(crate) percentile: &'static str,
    /// Appends in the band (ranked between `from` and `to` of the joined ones).
    pub(crate) appends: usize,
    /// Their mean latency and mean stages.
    pub(crate) mean: AppendStages,
}

/// The end-to-end breakdown of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Breakdown {
    /// The stage names, in order.
    pub(crate) stage_names: [&'static str; 6],
    /// Sampled appends of the run (one in 16 by LSN).
    pub(crate) sampled: usize,
    /// Of those, found in the node's traces and answered (the rest: the node's traces no
    /// longer held them, or the clocks were not comparable).
    pub(crate) joined: usize,
    /// Whether the node's times fell between the bench's (the same clock): when not, only
    /// the node's own stages mean anything, and `bands` is empty.
    pub(crate) clocks_comparable: bool,
    /// Around p50, p90, p99 and p99.9 of the joined appends' latency.
    pub(crate) bands: Vec<Band>,
    /// The slowest joined appends, slowest first.
    pub(crate) slowest: Vec<AppendStages>,
}

/// The bands: percentile name and the rank range (fractions of the joined appends).
const BANDS: [(&str, f64, f64); 4] = [
    ("p50", 0.45, 0.55),
    ("p90", 0.88, 0.92),
    ("p99", 0.985, 0.995),
    ("p99.9", 0.998, 1.0),
];

/// Microseconds from `a` to `b` (nanoseconds), negative if `b` is earlier.
fn us_between(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1_000.0
}

/// The stages of `sample` (bench times since `origin_ns`) with the node's `times`; `None`
/// if the node's times do not fall between the bench's.
fn stages_of(sample: &Sample, times: &NodeTimes, origin_ns: u64) -> Option<AppendStages> {
    let ns = |d: Duration| origin_ns + u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let points = [
        ns(sample.intended),
        ns(sample.sent),
        times.received_ns,
        times.durable_ns,
        times.answered_ns,
        times.sent_ns,
        ns(sample.acknowledged),
    ];
    // The node's times are microseconds of its own: allow that much out of order.
    let ordered = points.windows(2).all(|w| w[1] + ORDER_SLACK_NS >= w[0]);
    if times.sent_ns == 0 || !ordered {
        return None;
    }
    let mut stages_us = [0.0; 6];
    for (i, w) in points.windows(2).enumerate() {
        stages_us[i] = us_between(w[0], w[1]);
    }
    Some(AppendStages {
        total_us: us_between(points[0], points[6]),
        stages_us,
    })
}

/// Whether the node's times are on the bench's clock at all: the first joined append's
/// node times within [`CLOCK_SLACK_NS`] of its send and acknowledgement.
fn comparable(sample: &Sample, times: &NodeTimes, origin_ns: u64) -> bool {
    let ns = |d: Duration| origin_ns + u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    times.received_ns + CLOCK_SLACK_NS >= ns(sample.sent)
        && times.received_ns <= ns(sample.acknowledged) + CLOCK_SLACK_NS
}

/// The breakdown of `samples` (bench times since `origin_ns`) joined with the node's
/// `traces`; `log_ids[i]` is the id of log number `i`.
pub(crate) fn breakdown(
    samples: &[Sample],
    log_ids: &[u64],
    traces: &HashMap<(u64, u64), NodeTimes>,
    origin_ns: u64,
) -> Breakdown {
    let found: Vec<(&Sample, &NodeTimes)> = samples
        .iter()
        .filter_map(|s| Some((s, traces.get(&(log_ids[s.log], s.lsn))?)))
        .collect();
    let clocks_comparable = found
        .first()
        .is_none_or(|(s, t)| comparable(s, t, origin_ns));
    let mut joined: Vec<AppendStages> = if clocks_comparable {
        found
            .iter()
            .filter_map(|(s, t)| stages_of(s, t, origin_ns))
            .collect()
    } else {
        Vec::new()
    };
    joined.sort_by(|a, b| a.total_us.total_cmp(&b.total_us));
    let n = joined.len();
    let bands = BANDS
        .iter()
        .filter_map(|&(percentile, from, to)| {
            let start = ((n as f64 * from).floor() as usize).min(n);
            let end = ((n as f64 * to).ceil() as usize).clamp(start, n);
            let band = &joined[start..end];
            (!band.is_empty()).then(|| Band {
                percentile,
                appends: band.len(),
                mean: mean(band),
            })
        })
        .collect();
    let slowest = joined.iter().rev().take(SLOWEST).cloned().collect();
    Breakdown {
        stage_names: STAGES,
        sampled: samples.len(),
        joined: n,
        clocks_comparable,
        bands,
        slowest,
    }
}

/// The mean latency and stages of `appends` (not empty).
fn mean(appends: &[AppendStages]) -> AppendStages {
    let n = appends.len() as f64;
    let mut stages_us = [0.0; 6];
    for a in appends {
        for (sum, stage) in stages_us.iter_mut().zip(a.stages_us) {
            *sum += stage / n;
        }
    }
    AppendStages {
        total_us: appends.iter().map(|a| a.total_us).sum::<f64>() / n,
        stages_us,
    }
}

impl AppendStages {
    /// `generator 12, to_node 40, ...` (µs, rounded).
    pub(crate) fn phrase(&self) -> String {
        STAGES
            .iter()
            .zip(self.stages_us)
            .map(|(name, us)| {
                format!(
                    "{name} {}",
                    crate::report::thousands(us.max(0.0).round() as u64)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Breakdown {
    /// The human-readable lines: one per band, and the slowest append.
    pub(crate) fn human(&self, out: &mut String) {
        use std::fmt::Write as _;
        if !self.clocks_comparable {
            let _ = writeln!(
                out,
                "  per append     the node's clock is not this host's: no end-to-end breakdown"
            );
            return;
        }
        for band in &self.bands {
            let _ = writeln!(
                out,
                "  per append     {:<5} {} µs = {} ({} appends)",
                band.percentile,
                crate::report::thousands(band.mean.total_us.round() as u64),
                band.mean.phrase(),
                band.appends,
            );
        }
        if let Some(slowest) = self.slowest.first() {
            let _ = writeln!(
                out,
                "  slowest        {} µs = {} ({} of {} sampled appends joined with the node's traces)",
                crate::report::thousands(slowest.total_us.round() as u64),
                slowest.phrase(),
                self.joined,
                self.sampled,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lsn: u64, intended_ms: u64, total_ms: u64) -> Sample {
        let intended = Duration::from_millis(intended_ms);
        Sample {
            log: 0,
            lsn,
            intended,
            sent: intended + Duration::from_micros(10),
            acknowledged: intended + Duration::from_millis(total_ms),
        }
    }

    /// The node's times for `sample` on a bench clock whose origin is `origin_ns`: the rest
    /// of its latency after the send split 10% / 60% / 10% / 10% / 10%.
    fn node_times(sample: &Sample, origin_ns: u64) -> NodeTimes {
        let sent = origin_ns + sample.sent.as_nanos() as u64;
        let rest = (sample.acknowledged - sample.sent).as_nanos() as u64;
        NodeTimes {
            received_ns: sent + rest / 10,
            durable_ns: sent + rest * 7 / 10,
            answered_ns: sent + rest * 8 / 10,
            sent_ns: sent + rest * 9 / 10,
        }
    }

    #[test]
    fn traces_parse_and_the_stages_add_up_to_the_latency() {
        let origin = 5_000_000_000;
        let samples: Vec<Sample> = (0..1_000u64)
            .map(|i| sample(i * 16, i, if i == 500 { 40 } else { 1 + i % 3 }))
            .collect();
        let mut text = String::from("# header\n# shard log_id ...\n");
        for s in &samples {
            let t = node_times(s, origin);
            text.push_str(&format!(
                "0 77 {} {} {} {} {}\n",
                s.lsn, t.received_ns, t.durable_ns, t.answered_ns, t.sent_ns
            ));
        }
        let traces = parse_traces(&text).unwrap();
        assert_eq!(traces.len(), 1_000);
        let b = breakdown(&samples, &[77], &traces, origin);
        assert!(b.clocks_comparable);
        assert_eq!((b.sampled, b.joined), (1_000, 1_000));
        let names: Vec<&str> = b.bands.iter().map(|b| b.percentile).collect();
        assert_eq!(names, ["p50", "p90", "p99", "p99.9"]);
        for band in &b.bands {
            let sum: f64 = band.mean.stages_us.iter().sum();
            assert!((sum - band.mean.total_us).abs() < 1e-6, "{band:?}");
        }
        // The slowest is the 40 ms one, most of it in `durable`.
        let slowest = &b.slowest[0];
        assert!((slowest.total_us - 40_000.0).abs() < 1e-6, "{slowest:?}");
        assert!(slowest.stages_us[2] > 23_000.0, "{slowest:?}");
        assert_eq!(slowest.stages_us[0], 10.0, "the generator was 10 µs late");
        assert_eq!(b.slowest.len(), SLOWEST);
        let mut out = String::new();
        b.human(&mut out);
        assert!(out.contains("per append     p99"), "{out}");
        assert!(
            out.contains("slowest        40,000 µs = generator 10, to_node 3,999"),
            "{out}"
        );
    }

    #[test]
    fn another_hosts_clock_and_unsent_answers_are_not_joined() {
        let origin = 5_000_000_000;
        let samples = [sample(0, 0, 1), sample(16, 1, 1)];
        let mut traces = HashMap::new();
        for s in &samples {
            let mut t = node_times(s, origin);
            if s.lsn == 16 {
                t.sent_ns = 0;
            }
            traces.insert((9, s.lsn), t);
        }
        let b = breakdown(&samples, &[9], &traces, origin);
        assert_eq!((b.sampled, b.joined), (2, 1));
        // A node whose clock is an hour off.
        let far: HashMap<(u64, u64), NodeTimes> = traces
            .iter()
            .map(|(k, t)| {
                let hour = 3_600_000_000_000;
                let shifted = NodeTimes {
                    received_ns: t.received_ns + hour,
                    durable_ns: t.durable_ns + hour,
                    answered_ns: t.answered_ns + hour,
                    sent_ns: t.sent_ns + hour,
                };
                (*k, shifted)
            })
            .collect();
        let b = breakdown(&samples, &[9], &far, origin);
        assert!(!b.clocks_comparable);
        assert!(b.bands.is_empty() && b.joined == 0);
        assert!(parse_traces("0 1 2 3\n").is_err());
        assert!(parse_traces("0 1 2 3 4 5 x\n").is_err());
    }
}
