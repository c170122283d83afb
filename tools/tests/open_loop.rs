//! Runs the real `chainlog-bench append` in open loop and `chainlog-bench plan` briefly against
//! a dev node that the bench starts itself (`--dev 1`), and checks their reports: the fields
//! scripts rely on are there and the counts hang together. No timing thresholds: only counts,
//! structure and order.

mod common;

use common::{bench, f64_at, read_json, succeeded, u64_at};
use serde_json::Value;

#[test]
fn open_loop_append_reports_sends_readers_and_intervals() {
    let scratch = tempfile::tempdir().unwrap();
    let json = scratch.path().join("report.json");
    let hdr_log = scratch.path().join("latency.hlog");
    let output = bench(&[
        "append",
        "--dev",
        "1",
        "--record-size",
        "128",
        "--rate",
        "500",
        "--arrivals",
        "uniform",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--readers",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--hdr-log",
        hdr_log.to_str().unwrap(),
    ]);
    succeeded(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in [
        "open loop at 500 records/s",
        "latency (µs)",
        "sends",
        "end-to-end",
    ] {
        assert!(
            stdout.contains(line),
            "no {line:?} in the report:\n{stdout}"
        );
    }

    let r = read_json(&json);
    // The fields every append report had, unchanged.
    assert_eq!(r["mode"], "append");
    for field in ["records_per_s", "bytes_per_s", "duration_s"] {
        f64_at(&r, &format!("/{field}"));
    }
    for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        u64_at(&r, &format!("/latency_us/{p}"));
    }
    assert_eq!(u64_at(&r, "/config/record_size"), 128);
    assert_eq!(r["config"]["concurrency"], Value::Null);
    assert!(r["errors"].is_object());
    // Uniform at 500/s: exactly one send due every 2 ms of the 1 s window.
    assert_eq!(r["loop_mode"], "open");
    assert_eq!(f64_at(&r, "/rate_per_s"), 500.0);
    assert_eq!(r["arrivals"], "uniform");
    let intended = u64_at(&r, "/sends/intended");
    assert_eq!(intended, 500);
    assert_eq!(
        u64_at(&r, "/sends/sent") + u64_at(&r, "/sends/not_sent"),
        intended
    );
    assert!(u64_at(&r, "/sends/late") <= u64_at(&r, "/sends/sent"));
    let records = u64_at(&r, "/records");
    // The appends of the window that were acknowledged, whenever their answer came.
    assert!(records > 0, "{r:#}");
    assert_eq!(u64_at(&r, "/completion/intended"), intended);
    assert_eq!(u64_at(&r, "/completion/acknowledged"), records);
    assert_eq!(
        records
            + u64_at(&r, "/completion/failed")
            + u64_at(&r, "/completion/unanswered")
            + u64_at(&r, "/completion/not_sent"),
        intended
    );
    assert!(r["warnings"].is_array());
    // Single appends broken down end to end: the bench's times for the appends of LSNs that
    // are multiples of 16, joined with the node's, add up to their latency.
    let per_append = &r["per_append"];
    assert_eq!(per_append["clocks_comparable"], true, "{per_append:#}");
    let joined = u64_at(per_append, "/joined");
    assert!(
        joined > 0 && joined <= u64_at(per_append, "/sampled"),
        "{per_append:#}"
    );
    for band in per_append["bands"].as_array().expect("bands") {
        let stages: f64 = band["mean"]["stages_us"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|v| v.as_f64().expect("µs"))
            .sum();
        let total = f64_at(band, "/mean/total_us");
        assert!((stages - total).abs() < 1.0, "{band:#}");
    }
    assert!(stdout.contains("per append     p50"), "{stdout}");
    // What the run ran against.
    assert_eq!(r["topology"]["kind"], "node");
    assert_eq!(r["topology"]["logs"][0]["name"], "bench-0");
    assert!(
        stdout.contains(&format!("{records} of 500 intended appends acknowledged")),
        "{stdout}"
    );
    assert_eq!(u64_at(&r, "/bytes"), records * 128);
    // Latency from the intended send is never below latency from the actual send.
    assert!(u64_at(&r, "/latency_us/max") >= u64_at(&r, "/service_latency_us/max"));
    // The tailer saw appends sent in the window.
    assert!(u64_at(&r, "/e2e_records") > 0, "{r:#}");
    u64_at(&r, "/e2e_latency_us/p99");
    // A 1 s window is cut into ten intervals of 100 ms, adding up to the records.
    let intervals = r["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 10);
    let summed: f64 = intervals
        .iter()
        .map(|i| f64_at(i, "/records_per_s") * f64_at(i, "/duration_s"))
        .sum();
    assert_eq!(summed.round() as u64, records);

    let log = std::fs::read_to_string(&hdr_log).expect("the interval log was written");
    let histograms = log.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(histograms, 10, "{log}");
    assert!(log.contains("#[BaseTime:"), "{log}");
}

#[test]
fn plan_sweeps_and_answers() {
    let scratch = tempfile::tempdir().unwrap();
    let json = scratch.path().join("plan.json");
    let html = scratch.path().join("plan.html");
    let output = bench(&[
        "plan",
        "--html",
        html.to_str().unwrap(),
        "--dev",
        "1",
        "--record-size",
        "128",
        "--p99-ms",
        "1000",
        "--step-secs",
        "0.5",
        "--warmup",
        "0.1",
        "--max-steps",
        "2",
        "--start-rate",
        "200",
        "--json",
        json.to_str().unwrap(),
    ]);
    succeeded(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("max sustainable:"), "{stdout}");
    assert!(stdout.contains("network        round trip"), "{stdout}");

    // The HTML report: self-contained, with every plot and the fingerprint.
    let page = std::fs::read_to_string(&html).expect("the HTML report was written");
    for title in [
        "Latency vs offered load",
        "Latency by percentile",
        "Latency over time",
        "Throughput over time",
        "Machine fingerprint",
        "Where the time goes",
    ] {
        assert!(page.contains(title), "the report has no {title:?}");
    }
    assert_eq!(page.matches("<svg").count(), 4, "four plots");
    assert!(!page.contains("<script") && !page.contains("src=\"http"));

    let r = read_json(&json);
    assert_eq!(r["mode"], "plan");
    let steps = r["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{r:#}");
    // The second step doubles the first if it held, retries it at three quarters if not.
    let first = f64_at(&steps[0], "/offered_records_per_s");
    let second = f64_at(&steps[1], "/offered_records_per_s");
    assert_eq!(first, 200.0);
    let held = steps[0]["held"].as_bool().expect("held");
    assert_eq!(second, if held { 400.0 } else { 150.0 });
    for step in steps {
        let intended = u64_at(step, "/sends/intended");
        assert_eq!(
            u64_at(step, "/sends/sent") + u64_at(step, "/sends/not_sent"),
            intended
        );
        assert_eq!(
            step["held"].as_bool(),
            Some(step["failed_because"].is_null())
        );
        assert_eq!(u64_at(step, "/completion/intended"), intended);
    }
    match r["knee"].as_object() {
        Some(knee) => {
            let rate = knee["records_per_s"].as_f64().unwrap();
            assert!(steps
                .iter()
                .any(|s| s["held"] == true && f64_at(s, "/offered_records_per_s") == rate));
            assert_eq!(knee["shards"], 1);
        }
        None => assert!(steps.iter().all(|s| s["held"] == false), "{r:#}"),
    }
}
