//! "Where the time goes": the node's server-side append latency by stage over a run, from two
//! scrapes of its Prometheus `/metrics` (DESIGN.md section 8), one before and one after.
//!
//! The stages are the node's (`src/node/metrics.rs`): `queue` (frame received to handed to the
//! store), `batch_wait` (group commit), `disk` (the durable write), `replication` (durable at
//! the head to committed on the chain), `ack` (durability seen to
//! answer queued) and `total`, in the family `chainlog_append_stage_latency_seconds` with
//! labels `shard` and `stage`; group-commit batch sizes are
//! `chainlog_group_commit_batch_records`. Times are served in seconds (Prometheus's base
//! unit) and reported in microseconds: bounds, sums and quantiles are scaled as they are read
//! ([`Family`]).
//!
//! Two exposition forms are understood, and the report says which one it used:
//! - **histogram** (`_bucket{le=...}` series, what the node serves, ten buckets per decade):
//!   the buckets of the two scrapes are subtracted, summed over shards, and p50/p99 are
//!   *estimated* by linear interpolation inside the bucket holding the rank (as Prometheus's
//!   `histogram_quantile` does; a rank in the `+Inf` bucket gets the largest finite bound).
//!   They describe exactly the run; the estimate is as coarse as the buckets.
//! - **summary** (`{quantile=...}` series, what nodes served before): quantiles cannot be
//!   subtracted, so p50/p99 are the node's own, over everything each shard recorded since it
//!   started. They describe the run exactly only when the before-scrape counted nothing (a
//!   fresh node); across shards the largest shard quantile is taken (an upper bound).
//!
//! In both forms the count and the mean come from `_count` and `_sum` differences and are
//! exact for the run. A counter that went down (the node restarted) counts from zero.
//!
//! The scrape is a plain HTTP/1.1 GET over a `TcpStream`: one request, `Connection: close`,
//! the body read to the end (no chunked encoding; the node sends a `Content-Length`).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

/// A histogram (or summary) family of the node or the controller, and what its values are
/// multiplied by to be in the unit this tool reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) to_reported: f64,
}

/// Seconds, the unit the node and the controller serve times in, in microseconds, the unit
/// this tool reports them in.
const MICROS_PER_SECOND: f64 = 1e6;

/// The node's per-stage append latency family (seconds; reported in microseconds).
pub(crate) const STAGE_FAMILY: Family = Family {
    name: "chainlog_append_stage_latency_seconds",
    to_reported: MICROS_PER_SECOND,
};
/// The node's group-commit batch size family (records per write).
const BATCH_RECORDS_FAMILY: Family = Family {
    name: "chainlog_group_commit_batch_records",
    to_reported: 1.0,
};
/// Connecting, sending and reading the scrape each give up after this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// A larger answer is refused (the node's is a few KiB per shard).
const SCRAPE_BYTES_MAX: u64 = 16 << 20;

/// One sample line of the exposition: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    /// Label pairs in the order written.
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The labels without `drop` (the series a bucket or quantile belongs to).
    fn labels_without(&self, drop: &str) -> Vec<(String, String)> {
        self.labels
            .iter()
            .filter(|(k, _)| k != drop)
            .cloned()
            .collect()
    }
}

/// The samples of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Scrape {
    pub(crate) samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the series `name{labels}` (labels in any order), if present.
    fn value(&self, name: &str, labels: &[(String, String)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.label(k) == Some(v))
            })
            .map(|s| s.value)
    }

    /// Samples named `name` whose labels include every pair of `want`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && want.iter().all(|(k, v)| s.label(k) == Some(v)))
    }

    /// How much series `sample` grew since `self` (the earlier scrape): a series missing
    /// before, or one that went down (a restart), counts from zero.
    fn growth(&self, sample: &Sample) -> f64 {
        let before = self.value(&sample.name, &sample.labels).unwrap_or(0.0);
        if sample.value >= before {
            sample.value - before
        } else {
            sample.value
        }
    }
}

/// Server-side latency of one append stage over a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct StageLatency {
    /// The node's stage name (`queue`, `batch_wait`, `disk`, `ack`, `total`).
    pub(crate) stage: String,
    /// Appends (or frames, for `batch_wait` and `disk`) measured in the run, all shards.
    pub(crate) count: u64,
    /// Mean over the run, microseconds (exact: from `_sum` and `_count`).
    pub(crate) mean_us: f64,
    /// Median, microseconds (see the module docs for how it is estimated).
    pub(crate) p50_us: u64,
    /// 99th percentile, microseconds.
    pub(crate) p99_us: u64,
}

/// Group-commit batch sizes over a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct BatchSizes {
    /// Group-commit writes in the run, all shards.
    pub(crate) count: u64,
    /// Mean records per write (exact).
    pub(crate) mean: f64,
    /// Median records per write.
    pub(crate) p50: u64,
    /// 99th percentile records per write.
    pub(crate) p99: u64,
}

/// The node's side of a run: per-stage latency and group commit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct StageBreakdown {
    /// How the percentiles were obtained, in a sentence for the reader.
    pub(crate) basis: String,
    /// True when p50/p99 describe exactly the run's appends (histogram buckets subtracted,
    /// or summaries of a node that had counted nothing before the run).
    pub(crate) percentiles_cover_run_only: bool,
    /// One entry per stage, in the node's order.
    pub(crate) stages: Vec<StageLatency>,
    /// Records per group-commit write, if the node exposes them.
    pub(crate) batch_records: Option<BatchSizes>,
}

/// Fetches and parses `http://{addr}/metrics` (`addr` is `HOST:PORT`).
pub(crate) fn scrape(addr: &str) -> Result<Scrape, String> {
    let text = http_get(addr, "/metrics")?;
    parse(&text)
}

/// Fetches `http://{addr}/traces` ([`crate::trace`] parses it).
pub(crate) fn fetch_traces(addr: &str) -> Result<String, String> {
    http_get(addr, "/traces")
}

/// The body of `GET path` on `addr`, which must answer 200.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, SCRAPE_TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(SCRAPE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(SCRAPE_TIMEOUT)))
        .map_err(|e| format!("setting timeouts on {addr}: {e}"))?;
    // One buffer, one write: `write!` on the stream would send each piece in its own segment.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending GET {path} to {addr}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(SCRAPE_BYTES_MAX + 1)
        .read_to_end(&mut answer)
        .map_err(|e| format!("reading {path} from {addr}: {e}"))?;
    if answer.len() as u64 > SCRAPE_BYTES_MAX {
        return Err(format!(
            "{addr}{path} is larger than {SCRAPE_BYTES_MAX} bytes"
        ));
    }
    let answer = String::from_utf8(answer).map_err(|_| format!("{addr}{path} is not UTF-8"))?;
    http_body(&answer).map_err(|e| format!("{addr}{path}: {e}"))
}

/// The body of an HTTP/1.1 answer read to the end; an error unless the status is 200.
fn http_body(answer: &str) -> Result<String, String> {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or("the answer has no end of headers")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("the answer is {status:?}, not 200"));
    }
    let mut body = body;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!("transfer-encoding {value} is not supported"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
            body = body
                .get(..length)
                .ok_or_else(|| format!("the body is shorter than its content-length {length}"))?;
        }
    }
    Ok(body.to_string())
}

/// Parses the Prometheus text exposition format (version 0.0.4): comments and blank lines are
/// skipped, every other line is `name[{labels}] value [timestamp]`.
pub(crate) fn parse(text: &str) -> Result<Scrape, String> {
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|e| format!("line {}: {e}: {line:?}", number + 1))?;
        samples.push(sample);
    }
    Ok(Scrape { samples })
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = rest.split_once('=').ok_or("a label without '='")?;
            let after_quote = after_key
                .strip_prefix('"')
                .ok_or("a label value without quotes")?;
            let (value, after_value) = label_value(after_quote)?;
            labels.push((key.trim().to_string(), value));
            rest = after_value;
        }
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A quoted label value (opening quote already consumed) with its escapes (`\\`, `\"`, `\n`)
/// resolved, and what follows the closing quote.
fn label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, c)) => value.push(c),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("an unterminated label value".into())
}

/// Count, sum and two percentiles of one family over a run, all matching series combined.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Estimate {
    count: u64,
    sum: f64,
    p50: u64,
    p99: u64,
    /// From histogram buckets (true) or the node's summary quantiles (false).
    from_buckets: bool,
    /// The percentiles describe only the run.
    run_only: bool,
}

impl Estimate {
    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }
}

/// The growth of `family` between the scrapes, over the series whose labels include `want`,
/// in the unit reported; `None` if `after` has no such series.
fn estimate(
    before: &Scrape,
    after: &Scrape,
    family: Family,
    want: &[(&str, &str)],
) -> Option<Estimate> {
    let Family { name, to_reported } = family;
    let count_name = format!("{name}_count");
    let sum_name = format!("{name}_sum");
    let counts: Vec<&Sample> = after.matching(&count_name, want).collect();
    if counts.is_empty() {
        return None;
    }
    let count = counts.iter().map(|s| before.growth(s)).sum::<f64>().round() as u64;
    let sum = after
        .matching(&sum_name, want)
        .map(|s| before.growth(s))
        .sum::<f64>()
        * to_reported;
    let bucket_name = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for sample in after.matching(&bucket_name, want) {
        let Some(le) = sample.label("le").and_then(parse_bound) else {
            continue;
        };
        let le = le * to_reported;
        let grown = before.growth(sample);
        match buckets.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, total)) => *total += grown,
            None => buckets.push((le, grown)),
        }
    }
    if !buckets.is_empty() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        return Some(Estimate {
            count,
            sum,
            p50: bucket_quantile(&buckets, 0.50),
            p99: bucket_quantile(&buckets, 0.99),
            from_buckets: true,
            run_only: true,
        });
    }
    // Summary: the largest shard quantile among the shards that grew.
    let mut run_only = true;
    let mut quantile_max = |q: f64| -> u64 {
        let mut max = 0.0f64;
        for sample in after.matching(name, want) {
            if sample.label("quantile").and_then(|v| v.parse::<f64>().ok()) != Some(q) {
                continue;
            }
            let series = sample.labels_without("quantile");
            let count_after = after.value(&count_name, &series).unwrap_or(0.0);
            let count_before = before.value(&count_name, &series).unwrap_or(0.0);
            let restarted = count_after < count_before;
            let grown = if restarted {
                count_after
            } else {
                count_after - count_before
            };
            if grown <= 0.0 {
                continue; // this shard saw none of the run
            }
            if count_before > 0.0 && !restarted {
                run_only = false;
            }
            if sample.value.is_finite() {
                max = max.max(sample.value * to_reported);
            }
        }
        max.round() as u64
    };
    let p50 = quantile_max(0.5);
    let p99 = quantile_max(0.99);
    Some(Estimate {
        count,
        sum,
        p50,
        p99,
        from_buckets: false,
        run_only,
    })
}

/// A bucket bound (`le` label value): a number or `+Inf`.
fn parse_bound(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// The `q` quantile of cumulative buckets `(upper bound, count up to it)` sorted by bound,
/// interpolated linearly inside the bucket holding rank `q * total` (the first bucket starts
/// at 0; a rank in the `+Inf` bucket gets the largest finite bound). 0 when empty.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> u64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0;
    };
    if total <= 0.0 {
        return 0;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0f64, 0.0f64);
    for &(bound, cumulative) in buckets {
        if cumulative >= rank && cumulative > below {
            if bound.is_infinite() {
                return lower.round() as u64;
            }
            let within = (rank - below) / (cumulative - below);
            return (lower + (bound - lower) * within).round() as u64;
        }
        if bound.is_finite() {
            lower = bound;
        }
        below = cumulative;
    }
    lower.round() as u64
}

/// The controller's reconfiguration phase times family (seconds, label `phase`; reported in
/// microseconds).
pub(crate) const PHASE_FAMILY: Family = Family {
    name: "chainlog_controller_reconfiguration_phase_seconds",
    to_reported: MICROS_PER_SECOND,
};
/// The controller's phases of a reconfiguration, in order (`src/controller/metrics.rs`):
/// after a failure, the survivors' epoch (detect, seal, extend), then a learner copies the
/// log (learn) and is promoted (another seal and extend, then its catch_up).
const PHASES: [&str; 5] = ["detect", "seal", "extend", "catch_up", "learn"];

/// One phase of the controller's reconfigurations between two scrapes of its metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct PhaseTime {
    /// `detect`, `seal`, `extend`, `catch_up` or `learn`.
    pub(crate) phase: String,
    /// Reconfigurations that went through it in between (only a failure is detected).
    pub(crate) count: u64,
    /// Their mean time, microseconds (exact: from `_sum` and `_count`).
    pub(crate) mean_us: f64,
}

/// The phases of the controller's reconfigurations that ended between two scrapes of its
/// metrics (none if it has no phase times).
pub(crate) fn phase_times(before: &Scrape, after: &Scrape) -> Vec<PhaseTime> {
    PHASES
        .iter()
        .filter_map(|&phase| {
            let e = estimate(before, after, PHASE_FAMILY, &[("phase", phase)])?;
            (e.count > 0).then(|| PhaseTime {
                phase: phase.to_string(),
                count: e.count,
                mean_us: e.mean(),
            })
        })
        .collect()
}

/// The node's stages over the run between two scrapes; `None` if `after` has no stage
/// latencies (not a chainlog node, or a version without them).
pub(crate) fn breakdown(before: &Scrape, after: &Scrape) -> Option<StageBreakdown> {
    let count_name = format!("{}_count", STAGE_FAMILY.name);
    let mut names: Vec<&str> = Vec::new();
    for sample in after.matching(&count_name, &[]) {
        if let Some(stage) = sample.label("stage") {
            if !names.contains(&stage) {
                names.push(stage);
            }
        }
    }
    let mut stages = Vec::new();
    let mut from_buckets = true;
    let mut run_only = true;
    for stage in names {
        let Some(e) = estimate(before, after, STAGE_FAMILY, &[("stage", stage)]) else {
            continue;
        };
        from_buckets &= e.from_buckets;
        run_only &= e.run_only;
        stages.push(StageLatency {
            stage: stage.to_string(),
            count: e.count,
            mean_us: e.mean(),
            p50_us: e.p50,
            p99_us: e.p99,
        });
    }
    if stages.is_empty() {
        return None;
    }
    let batch_records = estimate(before, after, BATCH_RECORDS_FAMILY, &[]).map(|e| BatchSizes {
        count: e.count,
        mean: e.mean(),
        p50: e.p50,
        p99: e.p99,
    });
    let basis = if from_buckets {
        "Counts and means are exact for the run; p50 and p99 are estimated from the node's \
         histogram buckets (the run's buckets, summed over shards, linear interpolation within \
         a bucket)."
    } else if run_only {
        "Counts and means are exact for the run; p50 and p99 are the node's own summary \
         quantiles, which cover exactly this run (the node had counted nothing before it); \
         with several shards, the largest shard's value."
    } else {
        "Counts and means are exact for the run; p50 and p99 are the node's own summary \
         quantiles since it started, not just this run (summaries cannot be subtracted); \
         with several shards, the largest shard's value."
    };
    Some(StageBreakdown {
        basis: basis.to_string(),
        percentiles_cover_run_only: run_only,
        stages,
        batch_records,
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Scrapes of a 2-shard node (`chainlog node --shards 2`): just started (only the first
    /// segments' snapshot frames written), after appends to three logs, after two more. Taken
    /// when nodes served summaries in microseconds, and written since in seconds with today's
    /// names (the summary form is still understood).
    const FRESH: &str = include_str!("../tests/data/node-metrics-fresh.txt");
    const MID: &str = include_str!("../tests/data/node-metrics-mid.txt");
    const AFTER: &str = include_str!("../tests/data/node-metrics-after.txt");

    fn stage<'a>(b: &'a StageBreakdown, name: &str) -> &'a StageLatency {
        b.stages.iter().find(|s| s.stage == name).unwrap()
    }

    #[test]
    fn parses_every_sample_line_of_the_node() {
        for text in [FRESH, MID, AFTER] {
            let scrape = parse(text).unwrap();
            let lines = text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count();
            assert_eq!(scrape.samples.len(), lines);
        }
        let after = parse(AFTER).unwrap();
        let labels = [
            ("shard".to_string(), "1".to_string()),
            ("stage".to_string(), "disk".to_string()),
        ];
        let name = "chainlog_append_stage_latency_seconds_sum";
        assert_eq!(after.value(name, &labels), Some(0.003603));
        // Label order does not matter.
        let reversed = [labels[1].clone(), labels[0].clone()];
        assert_eq!(after.value(name, &reversed), Some(0.003603));
    }

    #[test]
    fn parses_escapes_infinities_and_timestamps() {
        let s = parse_line(r#"m{a="x\"y\\z\n",le="+Inf"} 7 1700000000"#).unwrap();
        assert_eq!(s.name, "m");
        assert_eq!(s.label("a"), Some("x\"y\\z\n"));
        assert_eq!(s.label("le"), Some("+Inf"));
        assert_eq!(s.value, 7.0);
        assert_eq!(parse_line("up 1").unwrap().labels, vec![]);
        assert_eq!(parse_line("g{} +Inf").unwrap().value, f64::INFINITY);
        assert!(parse_line(r#"m{a="x} 1"#).is_err());
        assert!(parse_line("m{a=x} 1").is_err());
        assert!(parse_line("m").is_err());
        assert!(parse("ok 1\nbad{ 2\n").unwrap_err().starts_with("line 2"));
    }

    #[test]
    fn summaries_give_exact_counts_and_means_and_say_what_the_quantiles_cover() {
        let (mid, after) = (parse(MID).unwrap(), parse(AFTER).unwrap());
        let b = breakdown(&mid, &after).unwrap();
        let names: Vec<&str> = b.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["queue", "batch_wait", "disk", "ack", "total"]);
        // One append per shard between the scrapes: shard 0 wrote a frame of 641 µs, shard 1
        // one of 379 µs.
        let disk = stage(&b, "disk");
        assert_eq!(disk.count, 2);
        assert!((disk.mean_us - (641.0 + 379.0) / 2.0).abs() < 1e-9);
        let total = stage(&b, "total");
        assert_eq!(total.count, 2);
        assert!((total.mean_us - (815.0 + 717.0) / 2.0).abs() < 1e-9);
        // The node's quantiles are since its start: the largest shard's is reported.
        assert_eq!((disk.p50_us, disk.p99_us), (641, 7955));
        assert!(!b.percentiles_cover_run_only);
        assert!(b.basis.contains("since it started"));
        let batches = b.batch_records.unwrap();
        assert_eq!(batches.count, 2);
        assert!((batches.mean - 350.0).abs() < 1e-9, "{batches:?}");
    }

    #[test]
    fn a_restarted_node_counts_from_zero() {
        let (fresh, after) = (parse(FRESH).unwrap(), parse(AFTER).unwrap());
        // "Before" taken from a later scrape than "after": every counter went down.
        let b = breakdown(&after, &fresh).unwrap();
        let disk = stage(&b, "disk");
        assert_eq!(disk.count, 2, "the fresh node's own frames");
        let queue = stage(&b, "queue");
        assert_eq!((queue.count, queue.p50_us), (0, 0));
    }

    #[test]
    fn histogram_buckets_are_subtracted_and_interpolated() {
        let before = parse(
            "# TYPE chainlog_append_stage_latency_seconds histogram\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"0.0001\"} 10\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"0.0002\"} 10\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"0.0004\"} 10\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"+Inf\"} 10\n\
             chainlog_append_stage_latency_seconds_sum{shard=\"0\",stage=\"disk\"} 0.0005\n\
             chainlog_append_stage_latency_seconds_count{shard=\"0\",stage=\"disk\"} 10\n",
        )
        .unwrap();
        // Shard 0 adds 100 appends between 100 and 200 µs; shard 1 (new) 100 between 200 and
        // 400 µs. The node serves seconds; the breakdown is in microseconds.
        let after = parse(
            "chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"0.0001\"} 10\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"0.0002\"} 110\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"0.0004\"} 110\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"+Inf\"} 110\n\
             chainlog_append_stage_latency_seconds_sum{shard=\"0\",stage=\"disk\"} 0.0155\n\
             chainlog_append_stage_latency_seconds_count{shard=\"0\",stage=\"disk\"} 110\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"1\",stage=\"disk\",le=\"0.0001\"} 0\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"1\",stage=\"disk\",le=\"0.0002\"} 0\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"1\",stage=\"disk\",le=\"0.0004\"} 100\n\
             chainlog_append_stage_latency_seconds_bucket{shard=\"1\",stage=\"disk\",le=\"+Inf\"} 100\n\
             chainlog_append_stage_latency_seconds_sum{shard=\"1\",stage=\"disk\"} 0.03\n\
             chainlog_append_stage_latency_seconds_count{shard=\"1\",stage=\"disk\"} 100\n",
        )
        .unwrap();
        let b = breakdown(&before, &after).unwrap();
        let disk = stage(&b, "disk");
        assert_eq!(disk.count, 200);
        assert!((disk.mean_us - 225.0).abs() < 1e-9);
        // Rank 100 of 200 is the last of the 100..200 bucket; rank 198 is 98% into 200..400.
        assert_eq!(disk.p50_us, 200);
        assert_eq!(disk.p99_us, 396);
        assert!(b.percentiles_cover_run_only);
        assert!(b.basis.contains("interpolation"));
        assert_eq!(b.batch_records, None);
    }

    #[test]
    fn bucket_quantile_maths() {
        let buckets = [
            (10.0, 0.0),
            (20.0, 50.0),
            (40.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(bucket_quantile(&buckets, 0.0), 10);
        assert_eq!(bucket_quantile(&buckets, 0.25), 15);
        assert_eq!(bucket_quantile(&buckets, 0.5), 20);
        assert_eq!(bucket_quantile(&buckets, 0.75), 30);
        assert_eq!(bucket_quantile(&buckets, 1.0), 40);
        // Ranks in +Inf get the largest finite bound.
        assert_eq!(
            bucket_quantile(&[(5.0, 1.0), (f64::INFINITY, 10.0)], 0.99),
            5
        );
        // The first bucket starts at 0.
        assert_eq!(bucket_quantile(&[(8.0, 4.0), (f64::INFINITY, 4.0)], 0.5), 4);
        assert_eq!(bucket_quantile(&[], 0.5), 0);
        assert_eq!(bucket_quantile(&[(1.0, 0.0)], 0.5), 0);
    }

    #[test]
    fn scrapes_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Read the whole request: closing with unread bytes would reset the connection.
            let mut request = Vec::new();
            let mut chunk = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut chunk).unwrap();
                assert!(n > 0, "the request ends with a blank line");
                request.extend_from_slice(&chunk[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{AFTER}",
                AFTER.len()
            )
            .unwrap();
            request
        });
        let scrape = scrape(&addr).unwrap();
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /metrics HTTP/1.1\r\n"));
        assert_eq!(scrape, parse(AFTER).unwrap());
        assert!(http_body("HTTP/1.1 404 Not Found\r\n\r\nno").is_err());
        assert!(http_body("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert_eq!(
            http_body("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcd").unwrap(),
            "ab"
        );
    }
}
