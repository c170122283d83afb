//! Runs the real `chainlog-bench storage` binary briefly and checks its JSON report: the fields
//! scripts rely on are there and hang together. No timing thresholds: only counts and order.

mod common;

use common::{bench, f64_at, read_json, succeeded, u64_at};
use std::path::Path;

#[test]
fn storage_run_writes_a_consistent_json_report() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    let json = scratch.path().join("report.json");
    let output = bench(&[
        "storage",
        "--dir",
        dir.to_str().unwrap(),
        "--record-size",
        "512",
        "--concurrency",
        "4",
        "--logs",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--segment-mib",
        "8",
        "--json",
        json.to_str().unwrap(),
    ]);
    succeeded(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in ["throughput", "latency (µs)", "durability", "group commit"] {
        assert!(
            stdout.contains(line),
            "no {line:?} in the report:\n{stdout}"
        );
    }

    let r = read_json(&json);
    assert_eq!(r["mode"], "storage");
    let records = u64_at(&r, "/records");
    assert!(records > 0, "no record acknowledged: {r:#}");
    assert_eq!(u64_at(&r, "/bytes"), records * 512);
    assert!(f64_at(&r, "/records_per_s") > 0.0);
    assert!(f64_at(&r, "/bytes_per_s") > 0.0);
    assert!(f64_at(&r, "/duration_s") >= 1.0);

    let p = |name: &str| u64_at(&r, &format!("/latency_us/{name}"));
    assert!(p("p50") > 0);
    assert!(p("p50") <= p("p90") && p("p90") <= p("p99"), "{r:#}");
    assert!(p("p99") <= p("p999") && p("p999") <= p("max"), "{r:#}");
    assert!(r["errors"].is_object());

    assert_eq!(u64_at(&r, "/config/record_size"), 512);
    assert_eq!(u64_at(&r, "/config/concurrency"), 4);
    assert_eq!(u64_at(&r, "/config/logs"), 2);
    assert_eq!(f64_at(&r, "/config/duration_s"), 1.0);
    assert_eq!(r["config"]["durability"], "auto");
    assert!(["dsync", "fdatasync"].contains(&r["durability"].as_str().unwrap()));
    assert!(u64_at(&r, "/calibration/writes") > 0);

    assert!(u64_at(&r, "/group_commit/frames") > 0, "{r:#}");
    // A data frame holds at most one record per client; a snapshot frame one entry per log
    // plus the system log's.
    assert!(
        u64_at(&r, "/group_commit/records_per_batch/max") <= 4,
        "{r:#}"
    );
    assert!(u64_at(&r, "/group_commit/write_us/p50") <= u64_at(&r, "/group_commit/write_us/p99"));

    // An explicit --dir is left in place, with the store's segments in it.
    assert_eq!(r["dir_removed"], false);
    let segments = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
        .count();
    assert!(segments > 0, "no segment left in {}", dir.display());
}

#[test]
fn default_directory_is_temporary_and_removed() {
    let scratch = tempfile::tempdir().unwrap();
    let json = scratch.path().join("report.json");
    let output = bench(&[
        "storage",
        "--record-size",
        "100",
        "--concurrency",
        "1",
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--segment-mib",
        "8",
        "--durability",
        "fdatasync",
        "--json",
        json.to_str().unwrap(),
    ]);
    succeeded(&output);
    let r = read_json(&json);
    assert_eq!(r["durability"], "fdatasync");
    assert!(
        r["calibration"].is_null(),
        "no calibration when the mode is given"
    );
    assert_eq!(r["dir_removed"], true);
    assert!(r["config"]["dir"].is_null());
    let dir = r["dir"].as_str().unwrap();
    assert!(!Path::new(dir).exists(), "{dir} was not removed");
}

#[test]
fn oversized_record_is_a_usage_error() {
    let output = bench(&[
        "storage",
        "--record-size",
        "100000000",
        "--concurrency",
        "1",
        "--duration",
        "1",
    ]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap's usage-error exit code"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("record_bytes_max"), "{stderr}");
}
