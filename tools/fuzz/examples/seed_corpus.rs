//! Writes the corpus each fuzz target starts from, into `DIR/<target>/` (default `corpus`):
//! one valid input of every kind the tests know, so that the fuzzer mutates real frames,
//! segments and files instead of finding their structure from nothing.
//!
//!   cargo run --manifest-path tools/fuzz/Cargo.toml --example seed_corpus [DIR]

use std::fs;
use std::path::Path;

#[path = "../../../net/tests/common/mod.rs"]
mod common;

/// Writes `inputs` as `dir/target/seed-M-N`, each after the mode byte `M` if there is one.
fn write(dir: &Path, target: &str, mode: Option<u8>, inputs: &[Vec<u8>]) {
    let dir = dir.join(target);
    fs::create_dir_all(&dir).expect("a corpus directory");
    for (i, input) in inputs.iter().enumerate() {
        let mut bytes: Vec<u8> = mode.into_iter().collect();
        bytes.extend_from_slice(input);
        let name = format!("seed-{}-{i}", mode.unwrap_or(0));
        fs::write(dir.join(name), bytes).expect("a corpus file");
    }
}

/// A node's and a controller's settings file, every setting given.
const CONFIGS: [&str; 2] = [
    r#"data_dir = "/var/lib/chainlog"
listen = "127.0.0.1:7400"
shards = 2
durability = "fdatasync"
pin = false
node_id = 3
metrics = "127.0.0.1:9400"
segment_mib = 64
writes_in_flight_max = 4
connections_max = 1000
hello_timeout_ms = 5000
idle_timeout_ms = 60000
controller = "127.0.0.1:7300"
advertise = "10.0.0.3:7400"
zone = "a"
rack = "r1"
"#,
    r#"data_dir = "/var/lib/chainlog-controller"
listen = "127.0.0.1:7300"
liveness_ms = 500
create_timeout_ms = 5000
default_rf = 3
metrics = "off"
hello_timeout_ms = 5000
idle_timeout_ms = 60000
connections_max = 256
node_connections_reserved = 64
"#,
];

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let dir = Path::new(&dir);
    let requests = common::request_corpus();
    let mut frames = requests.clone();
    frames.extend(common::response_corpus());
    let segment = vec![chainlog_fuzz::written_segment()];
    let state = vec![chainlog_fuzz::written_state()];
    let catalog = chainlog_fuzz::written_catalog();
    let snapshot = catalog.snapshot.expect("a snapshot");
    let mut files = u16::try_from(snapshot.len())
        .expect("a small snapshot")
        .to_le_bytes()
        .to_vec();
    files.extend_from_slice(&snapshot);
    files.extend_from_slice(&catalog.changes);
    let catalog = vec![files];
    let configs: Vec<Vec<u8>> = CONFIGS.iter().map(|c| c.as_bytes().to_vec()).collect();
    for mode in [0, 1] {
        write(dir, "wire", Some(mode), &frames);
        write(dir, "node", Some(mode), &requests);
        write(dir, "segment", Some(mode), &segment);
        write(dir, "state", Some(mode), &state);
        write(dir, "catalog", Some(mode), &catalog);
    }
    write(dir, "config", None, &configs);
    println!("corpus written to {}", dir.display());
}
