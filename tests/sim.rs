//! The whole-cluster simulator, from seeds (see `chainlog::sim`).

use chainlog::sim::{self, Options};

#[test]
fn one_seed_without_faults() {
    let r = sim::run(1, &Options { faults: false, ..Options::default() });
    println!("{r}");
    assert!(r.violations.is_empty(), "{r}");
    assert!(r.acked > 50, "{r}");
}

#[test]
fn seeds_with_faults() {
    let mut bad = Vec::new();
    for seed in 0..20 {
        let r = sim::run(seed, &Options::default());
        println!("{r}");
        if !r.violations.is_empty() {
            bad.push(seed);
        }
    }
    assert!(bad.is_empty(), "failing seeds: {bad:?}");
}

#[test]
fn dbg_seed() {
    let seed: u64 = std::env::var("SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let r = sim::run(seed, &Options::default());
    println!("{r}");
}

#[test]
fn dbg_determinism() {
    for seed in [0, 0, 0, 1, 0, 1] {
        let a = sim::run(seed, &Options::default());
        println!("{seed}: {:016x} {}", a.trace, a.acked);
    }
}

#[test]
fn dbg_canary() {
    let mut found = Vec::new();
    for seed in 0..200 {
        let r = sim::run(seed, &Options { canary: Some(sim::Canary::HeadSkipsSettling), ..Options::default() });
        if !r.violations.is_empty() {
            found.push(seed);
            if found.len() == 1 { println!("{r}"); }
        }
    }
    println!("canary caught by seeds {found:?}");
}
