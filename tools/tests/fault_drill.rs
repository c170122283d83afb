//! `chainlog-bench append --dev ... --fault`: a scripted fault is applied to the dev cluster the
//! bench starts, and the report says what it did. No timing thresholds: the fault is named,
//! hit the first log's head, its unavailability is a finite number, and appends were
//! acknowledged after it (the chain failed over). Faults without `--dev` are refused.

mod common;

use common::{bench, f64_at, read_json, succeeded, u64_at};

#[test]
fn killing_the_head_is_reported_with_its_outage_and_the_run_goes_on() {
    let scratch = tempfile::tempdir().unwrap();
    let json = scratch.path().join("report.json");
    let html = scratch.path().join("report.html");
    let output = bench(&[
        "append",
        "--dev",
        "4",
        "--rf",
        "3",
        "--record-size",
        "128",
        "--rate",
        "500",
        "--duration",
        "6",
        "--warmup",
        "0.5",
        "--fault",
        "kill:head@2s",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    // A failover may cost more than 1% of the appends (exit 3, the run reported): that too
    // is a run that went to its end.
    if output.status.code() != Some(3) {
        succeeded(&output);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("fault          kill:head@2s: node "),
        "the fault is not named:\n{stdout}"
    );
    assert!(stdout.contains("unavailable "), "{stdout}");

    let r = read_json(&json);
    let faults = r["faults"].as_array().expect("faults");
    assert_eq!(faults.len(), 1, "{r:#}");
    let f = &faults[0];
    assert_eq!(f["fault"], "kill:head@2s");
    assert_eq!(f["error"], serde_json::Value::Null, "{f:#}");
    // The head of bench-0 in the map at the time, which the run's topology also names.
    let head = u64_at(&r, "/topology/logs/0/chain/0");
    assert!(
        f["target"]
            .as_str()
            .expect("target")
            .starts_with(&format!("node {head} (head of bench-0")),
        "{f:#}"
    );
    let applied = f64_at(f, "/applied_s");
    assert!(applied >= 2.0, "{f:#}");
    let unavailable = f64_at(f, "/unavailability_s");
    assert!(unavailable.is_finite() && unavailable >= 0.0, "{f:#}");
    // Acknowledged after the fault: the outage ended, and its end follows the fault.
    let back = f64_at(f, "/first_ack_after_s");
    assert!(back > applied, "{f:#}");
    assert!((back - applied - unavailable).abs() < 1e-6, "{f:#}");
    let during = &f["during"];
    assert_eq!(
        u64_at(during, "/acknowledged")
            + u64_at(during, "/failed")
            + u64_at(during, "/indefinite")
            + u64_at(during, "/unanswered")
            + u64_at(during, "/not_sent"),
        u64_at(during, "/appends"),
        "{f:#}"
    );
    for window in ["before", "during"] {
        assert!(
            u64_at(f, &format!("/latency_us/{window}/appends")) > 0,
            "{f:#}"
        );
        u64_at(f, &format!("/latency_us/{window}/p99"));
        u64_at(f, &format!("/latency_us/{window}/p999"));
    }
    // The failover, by phase, from the controller's metrics: the dead head was detected,
    // its epoch sealed and the log extended.
    let phases = f["reconfiguration"]
        .as_array()
        .expect("reconfiguration phases");
    for phase in ["detect", "seal", "extend"] {
        let p = phases
            .iter()
            .find(|p| p["phase"] == phase)
            .unwrap_or_else(|| panic!("no {phase} phase: {f:#}"));
        assert!(u64_at(p, "/count") >= 1, "{f:#}");
        assert!(f64_at(p, "/mean_us") > 0.0, "{f:#}");
    }
    assert!(stdout.contains("reconfiguration: detect "), "{stdout}");
    // The headline still carries what became of the intended appends.
    assert!(
        stdout.contains("intended appends acknowledged ("),
        "{stdout}"
    );
    let page = std::fs::read_to_string(&html).expect("the HTML report was written");
    assert!(page.contains("<h2>Faults</h2>"), "no faults table");
    // The fault's label is on both time plots.
    assert!(
        page.matches("kill:head@2s").count() >= 3,
        "the fault is not marked"
    );
}

#[test]
fn faults_need_a_dev_cluster() {
    let output = bench(&[
        "append",
        "--target",
        "127.0.0.1:9",
        "--record-size",
        "128",
        "--rate",
        "100",
        "--duration",
        "1",
        "--fault",
        "kill:head@0.5s",
    ]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs --dev"), "{stderr}");
}
