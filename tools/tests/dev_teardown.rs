//! `chainlog-bench --dev`: the dev cluster it starts is torn down when the run ends and when
//! the run is interrupted (Ctrl-C, i.e. SIGINT): no node process and no temp dir is left. And
//! a run against a cluster whose member stops answering half way never looks healthy: the
//! failures are in its headline and it exits non-zero.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bench process, killed and reaped if the test fails before it exits.
struct Bench(Child);

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Processes whose parent is `pid`, with their command lines.
fn children_of(pid: u32) -> Vec<(u32, Vec<String>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            let args = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            found.push((child, args));
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still show "Z" in its stat.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat[stat.rfind(')').map_or(0, |i| i + 1)..]
            .trim_start()
            .starts_with('Z')
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_during_a_dev_run_stops_the_cluster() {
    let mut bench = Bench(
        Command::new(env!("CARGO_BIN_EXE_chainlog-bench"))
            .args([
                "append",
                "--dev",
                "1",
                "--record-size",
                "64",
                "--concurrency",
                "2",
            ])
            .args(["--duration", "600", "--warmup", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chainlog-bench starts"),
    );
    let pid = bench.0.id();
    // The run is under way once the progress line appears.
    let stderr = bench.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let progress = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("append:"));
    assert!(progress.is_some(), "the run never started");
    let nodes = children_of(pid);
    assert_eq!(nodes.len(), 1, "one node child: {nodes:?}");
    let (node, args) = &nodes[0];
    assert!(args.iter().any(|a| a == "node"), "{args:?}");
    let data_dir: PathBuf = args
        .iter()
        .position(|a| a == "--data-dir")
        .map(|i| PathBuf::from(&args[i + 1]))
        .expect("the node has a --data-dir");
    assert!(data_dir.exists());

    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    assert!(sent.expect("kill runs").success());
    // Drain stderr so the bench never blocks on a full pipe while stopping.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = bench.0.wait().expect("the bench exits");
    assert_eq!(
        status.code(),
        Some(130),
        "exit code after Ctrl-C; stderr: {rest:?}"
    );
    wait_until("the node to be gone", || !alive(*node));
    assert!(
        !data_dir.exists(),
        "the dev cluster's temp dir {} is left",
        data_dir.display()
    );
}

#[test]
fn a_dev_run_leaves_nothing_behind() {
    let mut bench = Bench(
        Command::new(env!("CARGO_BIN_EXE_chainlog-bench"))
            .args([
                "append",
                "--dev",
                "1",
                "--record-size",
                "64",
                "--concurrency",
                "1",
            ])
            .args(["--duration", "0.5", "--warmup", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chainlog-bench starts"),
    );
    let pid = bench.0.id();
    // The bench's stderr, read on a thread so that it never blocks on a full pipe: what it
    // said is in the failure message if it exits without a node.
    let stderr = bench.0.stderr.take().expect("piped");
    let said = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut nodes = Vec::new();
    wait_until("the node child", || {
        nodes = children_of(pid);
        !nodes.is_empty() || bench.0.try_wait().ok().flatten().is_some()
    });
    if nodes.len() != 1 {
        let status = bench.0.wait().expect("the bench exits");
        let said = said.join().expect("the reader");
        panic!("no node child seen before the bench exited ({status}): {said:?}");
    }
    let status = bench.0.wait().expect("the bench exits");
    let said = said.join().expect("the reader");
    assert!(status.success(), "{status}: {said:?}");
    for (node, _) in nodes {
        wait_until("the node to be gone", || !alive(node));
    }
}

/// A process stopped with SIGSTOP, continued (SIGCONT) when this is dropped, also when the
/// test fails: the bench's teardown (and the kernel's, if the bench dies) can then stop it.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal(pid, "-STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
    assert!(sent.expect("kill runs").success(), "kill {signal} {pid}");
}

#[test]
fn a_run_with_a_chain_member_and_the_controller_stopped_for_half_of_it_reports_the_failures_and_fails(
) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let json = scratch.path().join("report.json");
    let mut bench = Bench(
        Command::new(env!("CARGO_BIN_EXE_chainlog-bench"))
            .args(["append", "--dev", "3", "--rf", "3", "--record-size", "128"])
            .args(["--rate", "200", "--arrivals", "uniform"])
            .args(["--duration", "4", "--warmup", "0.5", "--json"])
            .arg(&json)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chainlog-bench starts"),
    );
    let pid = bench.0.id();
    // Progress lines ("append: 2.0 s, ...") say how far into the window the run is: stop a
    // node once half of it has passed.
    let stderr = bench.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let half = lines.by_ref().find(|l| {
        l.strip_prefix("append: ")
            .and_then(|rest| rest.split(" s,").next())
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|s| s >= 2.0)
    });
    assert!(half.is_some(), "the run never got half way");
    let children = children_of(pid);
    let nodes: Vec<u32> = children
        .iter()
        .filter(|(_, args)| args.iter().any(|a| a == "node"))
        .map(|(pid, _)| *pid)
        .collect();
    assert_eq!(nodes.len(), 3, "three node children: {nodes:?}");
    let controller = children
        .iter()
        .find(|(_, args)| args.iter().any(|a| a == "controller"))
        .map(|(pid, _)| *pid)
        .expect("a controller child");
    // Every node is in the one log's chain of three: stopping any stops every append until
    // the controller seals it out; with the controller stopped too, until the end.
    let stopped = (Stopped::stop(controller), Stopped::stop(nodes[2]));
    // Drain stderr so the bench never blocks on a full pipe.
    let stderr_rest = std::thread::spawn(move || lines.collect::<Vec<String>>());
    // The node stays stopped through the end of the window and the drain: until the report
    // is out.
    let stdout = bench.0.stdout.take().expect("stdout");
    let mut report = BufReader::new(stdout).lines().map_while(Result::ok);
    let headline = report
        .by_ref()
        .find(|l| l.starts_with("chainlog-bench append:"))
        .expect("the report's headline");
    drop(stopped);
    let rest: Vec<String> = report.collect();
    let status = bench.0.wait().expect("the bench exits");
    let stderr = stderr_rest.join().expect("stderr reader");
    assert_eq!(
        status.code(),
        Some(3),
        "a run with failed appends exits 3\n{headline}\n{rest:#?}\n{stderr:#?}"
    );
    // The headline says how many of the intended appends were acknowledged: about half.
    let (acknowledged, intended) = headline
        .split(": ")
        .last()
        .and_then(|tail| tail.split_once(" of "))
        .map(|(a, rest)| {
            (
                a.replace(',', ""),
                rest.split(' ').next().unwrap_or("").replace(',', ""),
            )
        })
        .expect("'N of M intended appends acknowledged' in the headline");
    let (acknowledged, intended): (u64, u64) = (
        acknowledged.parse().expect("a count"),
        intended.parse().expect("a count"),
    );
    assert_eq!(intended, 800, "{headline}");
    assert!(acknowledged < intended * 99 / 100, "{headline}");
    assert!(
        headline.contains("intended appends acknowledged ("),
        "{headline}"
    );
    assert!(rest.iter().any(|l| l.contains("WARNING")), "{rest:#?}");
    let text = std::fs::read_to_string(&json).expect("the JSON report was written");
    let r: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(r["completion"]["acknowledged"], acknowledged);
    assert!(
        r["completion"]["unanswered"].as_u64().expect("unanswered") > 0,
        "{r:#}"
    );
    assert!(!r["warnings"].as_array().expect("warnings").is_empty());
    assert_eq!(r["topology"]["kind"], "cluster");
    assert_eq!(
        r["topology"]["logs"][0]["chain"].as_array().map(Vec::len),
        Some(3)
    );
    for node in nodes {
        wait_until("the node to be gone", || !alive(node));
    }
}
