//! The whole-cluster simulator from seeds (`chainlog::sim`): seeds with faults find no
//! violation, the same seed gives the same run, and a known bug put in on purpose is caught.
//! This debug build runs a few hundred seeds; `.ci/run` runs a thousand more with the release
//! build (`chainlog sim --seeds 1000`), and `chainlog sim --seeds N --from S` runs as many as
//! wanted.

use chainlog::sim::{self, Canary, Options};

/// Seeds this test covers.
const SEEDS: u64 = 200;

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn seeds_with_faults_keep_every_invariant() {
    let summary = sim::run_seeds(0, SEEDS, &Options::default(), threads(), &|_| {});
    let failing: Vec<String> = summary.failures.iter().map(ToString::to_string).collect();
    assert!(failing.is_empty(), "{}", failing.join("\n"));
    assert_eq!(summary.runs, SEEDS);
    // The runs exercised what they claim to.
    let f = summary.faults;
    for (what, n) in [
        ("kills", f.kills),
        ("power losses", f.power_losses),
        ("pauses", f.pauses),
        ("failing disks", f.disk_errors),
        ("fatal stops", f.fatal_stops),
        ("connection resets", f.resets),
        ("partitions", f.partitions),
    ] {
        assert!(n >= SEEDS / 10, "only {n} {what}: {f:?}");
    }
    assert!(summary.acked > SEEDS * 50, "{}", summary.acked);
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 41] {
        let a = sim::run(seed, &Options::default());
        let b = sim::run(seed, &Options::default());
        assert_eq!((a.trace, a.acked), (b.trace, b.acked), "seed {seed}");
    }
}

#[test]
fn a_restarted_head_that_skips_settling_is_caught() {
    let options = Options {
        canary: Some(Canary::HeadSkipsSettling),
        ..Options::default()
    };
    let caught = (0..500)
        .map(|seed| sim::run(seed, &options))
        .find(|report| !report.violations.is_empty())
        .expect("500 seeds of a head that sequences before it settles found nothing");
    assert!(
        caught
            .violations
            .iter()
            .any(|v| v.contains("divergent") || v.contains("lost") || v.contains("two LSNs")),
        "{caught}"
    );
}

/// Seeds that found bugs, run on every build: 3081 (a restarted middle answered its restarted
/// head's probe before pulling back what the tail kept, and the head sequenced LSN 72 again;
/// `src/replication/tests.rs` holds the same case as a unit test) and 4523 (a store that met
/// its failing disk while recovering was counted as a refused start, not a fatal stop). The
/// seeds name these runs only while the simulated workload is the one they were found with;
/// they stay as cheap extra seeds after it changes.
#[test]
fn seeds_that_found_bugs_pass() {
    for seed in [3081, 4523] {
        let report = sim::run(seed, &Options::default());
        assert!(report.violations.is_empty(), "{report}");
    }
}
