//! What the tests of the `chainlog-bench` binary share: running it and reading its JSON.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub(crate) fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chainlog-bench"))
        .args(args)
        .output()
        .expect("chainlog-bench runs")
}

pub(crate) fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "chainlog-bench failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub(crate) fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    serde_json::from_str(&text).expect("the report is JSON")
}

pub(crate) fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} is not an unsigned integer in {v:#}"))
}

pub(crate) fn f64_at(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} is not a number in {v:#}"))
}
