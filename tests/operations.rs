//! Cluster operations from the `chainlog` CLI against a real dev cluster (a controller and
//! four nodes, processes of this test through [`chainlog::dev::DevCluster`]): `log seal` and
//! `log reconfigure` start a new epoch by the controller's seal and extend, with no
//! acknowledged record lost; a chain that cannot follow is refused; `node drain` moves every
//! chain off a node and `node undrain` undoes it; `status` shows epochs, drained nodes,
//! under-replicated logs and replicas catching up; the controller's `/metrics` counts it all,
//! and its and a node's pass `promtool check metrics` (installed by
//! `tools/scripts/install-test-deps.sh` if missing).
//!
//! Waits have generous deadlines, as guards against hanging, never as timing assertions.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use chainlog::client::Client;
use chainlog::controller::client::Client as ControllerClient;
use chainlog::dev::{DevCluster, DevOptions, Launcher, Member};
use chainlog::net::cluster::ClusterMap;

const DEADLINE: Duration = Duration::from_secs(120);

fn launcher() -> Launcher {
    Launcher {
        program: PathBuf::from(env!("CARGO_BIN_EXE_chainlog")),
        node_prefix: vec!["node".into()],
        controller_prefix: vec!["controller".into()],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn cli(target: SocketAddr, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args(args)
        .args(["--target", &target.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chainlog")
}

fn cli_ok(target: SocketAddr, args: &[&str]) -> String {
    let output = cli(target, args);
    assert!(
        output.status.success(),
        "chainlog {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn cli_json(target: SocketAddr, args: &[&str]) -> serde_json::Value {
    let text = cli_ok(target, &[args, &["--json"]].concat());
    serde_json::from_str(text.trim()).expect("one JSON object")
}

fn map(target: SocketAddr) -> ClusterMap {
    ControllerClient::connect(target, DEADLINE)
        .expect("the controller")
        .map()
        .expect("the map")
}

fn metrics(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("ask");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("answer");
    text
}

/// What `promtool check metrics` says of the body of the `/metrics` answer `answer` (nothing
/// when the exposition follows Prometheus's rules and naming conventions). promtool is
/// installed by `tools/scripts/install-test-deps.sh` if missing (it does nothing when it is
/// there; it needs root and apt to install); without promtool this fails, saying so.
fn promtool_complaints(answer: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = format!("{root}/tools/scripts/install-test-deps.sh");
    let installed = std::process::Command::new(&script)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        installed.status.success(),
        "promtool is needed to check /metrics and could not be installed: run {script} as \
         root, or install promtool yourself:\n{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let (_, body) = answer.split_once("\r\n\r\n").expect("an end of headers");
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running promtool (is /usr/local/bin on the PATH?): {e}"));
    check
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let output = check.wait_with_output().expect("promtool's answer");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        said
    } else {
        format!("promtool exited with {}: {said}", output.status)
    }
}

/// The value of the metric line starting with `series ` in `text`.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .expect("a count")
}

/// Appends `n` records to log `id` through `target`; their LSNs.
async fn append(client: &Client, id: u64, n: usize, tag: &str) -> std::ops::Range<u64> {
    let records: Vec<Vec<u8>> = (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect();
    client
        .append(id, &records)
        .await
        .unwrap_or_else(|e| panic!("append {tag}: {e:?}"))
}

/// Every record of log `id` below `end`, read back through the head.
async fn read_all(client: &Client, id: u64, end: u64) -> Vec<String> {
    let mut records = Vec::new();
    while (records.len() as u64) < end {
        let batch = client
            .read(id, records.len() as u64, 4096, 1 << 20)
            .await
            .expect("read");
        assert!(!batch.records.is_empty(), "nothing at {}", records.len());
        records.extend(
            batch
                .records
                .into_iter()
                .map(|r| String::from_utf8(r.payload).expect("UTF-8")),
        );
    }
    records
}

/// Waits until `replica` holds log `id` up to `end` (TAIL_HINT there).
async fn caught_up(client: &Client, replica: u64, id: u64, end: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if client
            .tail_hint_at(replica, id)
            .await
            .is_ok_and(|t| t.tail >= end)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {replica} never caught up to {end}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node of `chain` serves log `id` in `epoch` (TAIL_HINT there).
async fn serving_epoch(client: &Client, chain: &[u64], id: u64, epoch: u64) {
    let deadline = Instant::now() + DEADLINE;
    for &node in chain {
        while !client
            .tail_hint_at(node, id)
            .await
            .is_ok_and(|t| t.epoch == epoch)
        {
            assert!(
                Instant::now() < deadline,
                "node {node} never served epoch {epoch}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[test]
fn seal_reconfigure_and_drain_from_the_cli_keep_every_record() {
    let runtime = runtime();
    let options = DevOptions {
        nodes: 4,
        rf: 3,
        ..DevOptions::new(launcher())
    };
    let cluster = runtime.block_on(DevCluster::start(options)).expect("start");
    let target = cluster.target();
    let metrics_at = cluster
        .controller_metrics()
        .expect("the controller's metrics");
    let client = runtime.block_on(Client::connect(target)).expect("connect");
    let id = runtime
        .block_on(client.create_log_with("ops", 3))
        .expect("create");
    let chain = map(target).log(id).expect("log").chain.clone();
    let spare = (1..=4).find(|n| !chain.contains(n)).expect("a spare");
    let first = runtime.block_on(append(&client, id, 5, "one"));

    // Seal: the same members (all alive, none drained), from where the records end.
    let sealed = cli_json(target, &["log", "seal", "ops"]);
    assert_eq!(sealed["sealed_epoch"], 1);
    assert_eq!(sealed["epoch"], 2);
    assert_eq!(sealed["start_lsn"], first.end);
    assert_eq!(sealed["chain"], serde_json::json!(chain));
    let second = runtime.block_on(append(&client, id, 5, "two"));
    assert_eq!(second.start, first.end, "nothing renumbered");

    // A chain that cannot follow: refused before anything is sealed.
    let refused = cli(
        target,
        &[
            "log",
            "reconfigure",
            "ops",
            "--chain",
            &format!("{spare},{}", chain[1]),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("CONDITION_FAILED") && stderr.contains("join at the tail"),
        "{stderr}"
    );
    assert_eq!(map(target).log(id).expect("log").epoch, 2, "nothing sealed");
    let too_long = cli(
        target,
        &[
            "log",
            "reconfigure",
            "ops",
            "--chain",
            &format!("{},{},{},{spare}", chain[0], chain[1], chain[2]),
        ],
    );
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("TOO_LARGE"));

    // Reconfigure: drop the head, the spare joins at the tail and copies the log.
    let asked = [chain[1], chain[2], spare];
    let asked_text = format!("{},{},{}", asked[0], asked[1], asked[2]);
    let text = cli_ok(
        target,
        &["log", "reconfigure", "ops", "--chain", &asked_text],
    );
    assert!(
        text.contains(&format!(
            "log ops: epoch 2 sealed; epoch 3 from LSN {}, chain {} -> {} -> {}",
            second.end, asked[0], asked[1], asked[2]
        )),
        "{text}"
    );
    assert_eq!(map(target).log(id).expect("log").chain, asked);
    let third = runtime.block_on(append(&client, id, 5, "three"));
    runtime.block_on(caught_up(&client, spare, id, third.end));
    let all = runtime.block_on(read_all(&client, id, third.end));
    let expected: Vec<String> = ["one", "two", "three"]
        .iter()
        .flat_map(|tag| (0..5).map(move |i| format!("{tag}-{i}")))
        .collect();
    assert_eq!(all, expected, "every acknowledged record, in order");

    // Drain the new head: its chains move off it (to the survivors), it gets no new one,
    // status says so. The node left out by the reconfigure above learns the log and is
    // promoted to the tail once it has copied it.
    let head = asked[0];
    let drained = cli_json(target, &["node", "drain", &head.to_string()]);
    assert_eq!(drained["drained"], true);
    assert_eq!(drained["still_on_it"], serde_json::json!([]));
    let after = map(target);
    assert!(after.node(head).expect("node").drained);
    let moved = after.log(id).expect("log");
    assert!(!moved.chain.contains(&head), "{:?}", moved.chain);
    assert_eq!(&moved.chain[..2], &asked[1..], "the survivors, in order");
    let deadline = Instant::now() + DEADLINE;
    let moved = loop {
        let log = map(target).log(id).expect("log").clone();
        if log.chain.len() == 3 {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the old head never learned the log and joined: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        moved.chain,
        [asked[1], asked[2], chain[0]],
        "the old head, which learned the log, joined as the third"
    );
    assert!(moved.learners.is_empty(), "{:?}", moved.learners);
    let other = runtime
        .block_on(client.create_log_with("after-drain", 3))
        .expect("create");
    assert!(!map(target).log(other).expect("log").chain.contains(&head));
    // The drain returns once the map shows the moves; the nodes apply the map when their
    // next heartbeat tells them (an append meanwhile may find the new head still behind).
    runtime.block_on(serving_epoch(&client, &moved.chain, id, moved.epoch));
    let fourth = runtime.block_on(append(&client, id, 5, "four"));
    assert_eq!(fourth.start, third.end);
    let status = cli_ok(target, &["status"]);
    assert!(status.contains(&format!("node {head}  ")), "{status}");
    assert!(status.contains("alive, drained"), "{status}");
    assert!(
        status.contains(&format!("log ops  id {id}  rf 3  epoch 5 from LSN")),
        "{status}"
    );
    assert!(status.contains("under-replicated logs: none"), "{status}");
    let undrained = cli_json(target, &["node", "undrain", &head.to_string()]);
    assert_eq!(undrained["drained"], false);
    assert!(!map(target).node(head).expect("node").drained);

    let text = metrics(metrics_at);
    assert_eq!(
        metric(
            &text,
            "chainlog_controller_reconfigurations_total{why=\"requested\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            "chainlog_controller_reconfigurations_total{why=\"drain\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "chainlog_controller_reconfigurations_total{why=\"promote\"}"
        ),
        1
    );
    assert_eq!(metric(&text, "chainlog_controller_learners_added_total"), 1);
    assert_eq!(metric(&text, "chainlog_controller_learners"), 0);
    assert_eq!(metric(&text, "chainlog_controller_nodes_alive"), 4);
    assert_eq!(metric(&text, "chainlog_controller_chains_refused_total"), 0);
    assert!(
        metric(
            &text,
            "chainlog_controller_reconfiguration_phase_seconds_count{phase=\"seal\"}"
        ) >= 4,
        "{text}"
    );
    // Both processes' expositions pass promtool: base units, counters in `_total`, HELP and
    // TYPE for every family. The node's is read once its shard has published the appends,
    // so that its histograms hold values.
    assert_eq!(promtool_complaints(&text), "", "the controller's:\n{text}");
    let node = cluster
        .nodes()
        .iter()
        .find(|n| n.id() == head)
        .expect("the head");
    let appended = "chainlog_records_appended_total{shard=\"0\"}";
    let deadline = Instant::now() + DEADLINE;
    let mut text = metrics(node.metrics());
    while !text.contains(appended) || metric(&text, appended) == 0 {
        assert!(Instant::now() < deadline, "no appends published:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
        text = metrics(node.metrics());
    }
    assert_eq!(promtool_complaints(&text), "", "node {head}'s:\n{text}");
    drop(client);
    cluster.stop();
}

#[test]
fn status_and_metrics_show_a_log_under_replicated_after_a_node_dies_without_a_spare() {
    let runtime = runtime();
    let options = DevOptions {
        nodes: 3,
        rf: 3,
        ..DevOptions::new(launcher())
    };
    let mut cluster = runtime.block_on(DevCluster::start(options)).expect("start");
    let target = cluster.target();
    let metrics_at = cluster
        .controller_metrics()
        .expect("the controller's metrics");
    let client = runtime.block_on(Client::connect(target)).expect("connect");
    let id = runtime
        .block_on(client.create_log_with("short", 3))
        .expect("create");
    runtime.block_on(append(&client, id, 3, "r"));
    let chain = map(target).log(id).expect("log").chain.clone();
    assert!(cluster.signal(Member::Node(chain[1]), libc::SIGKILL));
    let deadline = Instant::now() + DEADLINE;
    while map(target).log(id).expect("log").chain.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the dead middle was never sealed out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    runtime.block_on(append(&client, id, 3, "s"));
    let status = cli(target, &["status"]);
    // A node is down: status exits 1, and says what it can.
    assert_eq!(status.status.code(), Some(1));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("UNDER-REPLICATED (2 of 3)"), "{text}");
    assert!(text.contains("under-replicated logs: 1 (short)"), "{text}");
    let json = cli(target, &["status", "--json"]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let log = lines.iter().find(|v| v["kind"] == "log").expect("the log");
    assert_eq!(log["under_replicated"], true);
    assert_eq!(
        log["learners"],
        serde_json::json!([]),
        "nobody free to learn it"
    );
    let summary = lines
        .iter()
        .find(|v| v["kind"] == "summary")
        .expect("summary");
    assert_eq!(summary["under_replicated"], serde_json::json!(["short"]));
    let text = metrics(metrics_at);
    assert_eq!(
        metric(&text, "chainlog_controller_under_replicated_logs"),
        1
    );
    assert_eq!(metric(&text, "chainlog_controller_nodes_alive"), 2);
    assert_eq!(
        metric(
            &text,
            "chainlog_controller_reconfigurations_total{why=\"failed\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "chainlog_controller_reconfiguration_phase_seconds_count{phase=\"detect\"}"
        ),
        1
    );
    // The node comes back: it learns the log outside the chain, is promoted to the tail once
    // it has caught up (a seal and a new epoch), and catches up the rest in the epoch (the
    // controller watches it: one learn and one catch-up time).
    runtime
        .block_on(cluster.restart(Member::Node(chain[1])))
        .expect("restart");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = metrics(metrics_at);
        if metric(&text, "chainlog_controller_under_replicated_logs") == 0
            && metric(
                &text,
                "chainlog_controller_reconfiguration_phase_seconds_count{phase=\"catch_up\"}",
            ) == 1
        {
            assert_eq!(metric(&text, "chainlog_controller_catching_up_replicas"), 0);
            assert_eq!(metric(&text, "chainlog_controller_learners"), 0);
            assert_eq!(
                metric(
                    &text,
                    "chainlog_controller_reconfigurations_total{why=\"promote\"}"
                ),
                1
            );
            assert_eq!(
                metric(
                    &text,
                    "chainlog_controller_reconfiguration_phase_seconds_count{phase=\"learn\"}"
                ),
                1
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never back at rf 3 and caught up:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(client);
    cluster.stop();
}
