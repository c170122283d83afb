//! The client library, the CLI and `chainlog-bench append` against the real `chainlog node`
//! binary on loopback: appends (plain, conditional), reads, trims, tails and log
//! administration through `chainlog::client`; 1000 pipelined appends from 16 tasks getting
//! dense LSNs; a subscription under credit; every CLI command, in text and `--json`; a short
//! benchmark run writing a sane JSON report. Against a scripted fake node: retries of
//! retryable errors within their bound, and timeouts and lost connections reported as
//! "outcome unknown", never resent, with a reconnect on the next call. Against a scripted fake
//! cluster (a controller serving a map, two nodes): appends at the head, NOT_HEAD and
//! WRONG_EPOCH followed by a map fetch and a retry where the newer map says, reads where
//! `ReadFrom` says, log administration at the controller. Each test stops the processes it
//! started (the node by `Drop`, even on failure; CLI and bench processes are waited for). No
//! timing thresholds.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chainlog::client::{log_id, AppendOptions, Client, ClientConfig, ClientError, ReadFrom};
use chainlog::net::{
    decode_request, encode_error, encode_response, parse_frame, AppendResponse, Chain,
    CreateLogResponse, DescribeLogResponse, ErrorCode, ErrorResponse, GetMapResponse,
    HelloResponse, Limits, ListLogsResponse, LogEntries, LogEntry, LogRef, MapLog, MapLogs,
    MapNode, MapNodes, Opcode, ReadResponse, Records, Request, Response, Role, TailResponse,
    LSN_FROM_TAIL,
};
use chainlog::node::listen::bind_run;
use common::Node;
use serde_json::Value;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn server_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (ErrorCode, u64) {
    match result {
        Err(ClientError::Server(e)) => (e.code, e.arg0),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn library_appends_reads_trims_conditions_and_administers_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    runtime().block_on(async {
        let client = Client::connect(node.addr(0)).await.expect("connect");
        assert_eq!(client.shard_count(), 2);
        // Three logs, on whichever shards their names hash to: routing is the client's job.
        let names = ["orders", "payments", "users"];
        let mut ids = Vec::new();
        for name in names {
            let id = client.create_log(name).await.expect("create");
            assert_eq!(id, log_id(name));
            ids.push(id);
        }
        assert!(
            ids.iter().any(|id| id % 2 == 0) && ids.iter().any(|id| id % 2 == 1),
            "the logs cover both shards"
        );
        // A create again (a retry) is the same log; with another replication factor it is not.
        assert_eq!(client.create_log("orders").await.expect("again"), ids[0]);
        let (code, arg0) = server_code(client.create_log_with("orders", 2).await);
        assert_eq!((code, arg0), (ErrorCode::LogExists, ids[0]));

        for (i, &id) in ids.iter().enumerate() {
            let first = client.append(id, &[b"a".as_slice(), b"bb"]).await.unwrap();
            assert_eq!(first, 0..2);
            let second = client.append(id, &[format!("log {i}")]).await.unwrap();
            assert_eq!(second, 2..3);
            let batch = client.read(id, 0, 100, 1 << 20).await.unwrap();
            assert_eq!(batch.tail, 3);
            let payloads: Vec<&[u8]> = batch.records.iter().map(|r| &r.payload[..]).collect();
            assert_eq!(
                payloads,
                [b"a".as_slice(), b"bb", format!("log {i}").as_bytes()]
            );
            assert_eq!(
                batch.records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
                [0, 1, 2]
            );
            assert!(batch.records.iter().all(|r| r.epoch == 1));
            // max_bytes counts the bytes that travel: 48 for each of these records (a 40-byte
            // header and a payload padded to 8), at least one record (PROTOCOL.md 6.3).
            for (max_bytes, records) in [(96, 2), (95, 1), (144, 3), (1, 1)] {
                let batch = client.read(id, 0, 100, max_bytes).await.unwrap();
                assert_eq!(batch.records.len(), records, "max_bytes {max_bytes}");
            }
            assert_eq!(client.check_tail(id).await.unwrap().tail, 3);
            assert_eq!(client.tail_hint(id).await.unwrap().tail, 3);
        }

        // Conditional appends: at the tail it succeeds, anywhere else CONDITION_FAILED(tail).
        let id = ids[0];
        let at_tail = AppendOptions {
            expected_lsn: Some(3),
            ..AppendOptions::default()
        };
        assert_eq!(
            client.append_with(id, &[b"c"], &at_tail).await.unwrap(),
            3..4
        );
        let stale = client.append_with(id, &[b"d"], &at_tail).await;
        let error = stale.as_ref().unwrap_err();
        assert!(!error.is_retryable() && !error.outcome_unknown());
        assert_eq!(server_code(stale), (ErrorCode::ConditionFailed, 4));

        // Trim: reads below fail with TRIMMED(trim point); above still work.
        client.trim(id, 2).await.unwrap();
        assert_eq!(
            server_code(client.read(id, 0, 10, 1 << 20).await),
            (ErrorCode::Trimmed, 2)
        );
        let rest = client.read(id, 2, 10, 1 << 20).await.unwrap();
        assert_eq!(rest.records.len(), 2);
        let (code, _) = server_code(client.trim(id, 100).await);
        assert_eq!(code, ErrorCode::ConditionFailed);

        // Describe by name and by id; list merges every shard, ascending by id.
        let by_name = client.describe_log(LogRef::Name("orders")).await.unwrap();
        let by_id = client.describe_log(LogRef::Id(id)).await.unwrap();
        assert_eq!(by_name, by_id);
        assert_eq!(
            (by_name.name.as_str(), by_name.tail, by_name.trim_point),
            ("orders", 4, 2)
        );
        assert_eq!(u64::from(by_name.shard), id % 2);
        let listed = client.list_logs().await.unwrap();
        let mut expected: Vec<(u64, &str)> = ids.iter().copied().zip(names).collect();
        expected.sort();
        assert_eq!(
            listed
                .iter()
                .map(|l| (l.log_id, l.name.as_str()))
                .collect::<Vec<_>>(),
            expected
        );

        // Delete: gone for describe, append and read.
        client.delete_log(ids[1]).await.unwrap();
        assert_eq!(
            server_code(client.describe_log(LogRef::Name("payments")).await).0,
            ErrorCode::UnknownLog
        );
        assert_eq!(
            server_code(client.append(ids[1], &[b"x"]).await).0,
            ErrorCode::UnknownLog
        );
        assert_eq!(client.list_logs().await.unwrap().len(), 2);
        // Refused before sending.
        assert!(matches!(
            client.append::<&[u8]>(id, &[]).await,
            Err(ClientError::Invalid(_))
        ));
    });
}

#[test]
fn pipelined_appends_from_16_tasks_get_dense_lsns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    runtime().block_on(async {
        let client = Client::connect(node.addr(0)).await.expect("connect");
        let id = client.create_log("pipelined").await.unwrap();
        const TASKS: usize = 16;
        const APPENDS: usize = 1000;
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..TASKS {
            let client = client.clone();
            tasks.spawn(async move {
                // Every append of this task in flight at once.
                let mut appends = tokio::task::JoinSet::new();
                for i in (task..APPENDS).step_by(TASKS) {
                    let client = client.clone();
                    appends.spawn(async move {
                        let payload = format!("append {i}");
                        let lsns = client.append(id, &[payload]).await.expect("append");
                        (i, lsns)
                    });
                }
                let mut done = Vec::new();
                while let Some(result) = appends.join_next().await {
                    done.push(result.expect("append task"));
                }
                done
            });
        }
        let mut lsn_of = vec![u64::MAX; APPENDS];
        while let Some(result) = tasks.join_next().await {
            for (i, lsns) in result.expect("task") {
                assert_eq!(lsns.end - lsns.start, 1);
                lsn_of[i] = lsns.start;
            }
        }
        let distinct: BTreeSet<u64> = lsn_of.iter().copied().collect();
        assert_eq!(distinct.len(), APPENDS, "no duplicate LSNs");
        assert_eq!(
            distinct.into_iter().collect::<Vec<_>>(),
            (0..APPENDS as u64).collect::<Vec<_>>(),
            "dense LSNs from 0"
        );
        // Each LSN holds the append it was acknowledged for.
        let mut next = 0;
        while next < APPENDS as u64 {
            let batch = client.read(id, next, 4096, 1 << 20).await.unwrap();
            assert!(!batch.records.is_empty());
            for record in &batch.records {
                let i = lsn_of.iter().position(|&l| l == record.lsn).unwrap();
                assert_eq!(record.payload, format!("append {i}").into_bytes());
                next = record.lsn + 1;
            }
        }
        // One connection: sequential appends from one task complete in LSN order.
        let mut last = client.check_tail(id).await.unwrap().tail;
        for _ in 0..10 {
            let lsns = client.append(id, &[b"seq"]).await.unwrap();
            assert_eq!(lsns.start, last);
            last = lsns.end;
        }
    });
}

#[test]
fn subscription_yields_committed_records_in_order_within_its_credit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    runtime().block_on(async {
        let config = ClientConfig {
            subscription_credit: 4,
            ..ClientConfig::default()
        };
        let client = Client::connect_with(node.addr(0), config).await.unwrap();
        let id = client.create_log("events").await.unwrap();
        client
            .append(id, &[b"before-0", b"before-1"])
            .await
            .unwrap();
        let mut from_start = client.subscribe(id, 0).await.unwrap();
        let mut from_tail = client.subscribe(id, LSN_FROM_TAIL).await.unwrap();
        assert_eq!(from_start.start_lsn(), 0);
        assert_eq!(from_tail.start_lsn(), 2);
        for i in 0..20 {
            client.append(id, &[format!("after-{i}")]).await.unwrap();
        }
        // 22 records through a credit of 4: the stream keeps granting credit as it consumes.
        for lsn in 0..22 {
            let record = from_start.next().await.unwrap().unwrap();
            assert_eq!(record.lsn, lsn);
            let expected = if lsn < 2 {
                format!("before-{lsn}")
            } else {
                format!("after-{}", lsn - 2)
            };
            assert_eq!(record.payload, expected.into_bytes());
        }
        for lsn in 2..22 {
            assert_eq!(from_tail.next().await.unwrap().unwrap().lsn, lsn);
        }
        // Deleting the log ends its subscriptions with UNKNOWN_LOG.
        drop(from_start);
        client.delete_log(id).await.unwrap();
        match from_tail.next().await {
            Some(Err(e)) => assert_eq!(e.code(), Some(ErrorCode::UnknownLog)),
            other => panic!("expected UNKNOWN_LOG, got {other:?}"),
        }
        assert!(from_tail.next().await.is_none());
    });
}

/// Runs `chainlog ARGS --target <node>` to completion.
fn cli(node: &Node, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args(args)
        .args(["--target", &node.addr(0).to_string()])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chainlog");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for chainlog")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "chainlog failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn json_lines(output: &Output) -> Vec<Value> {
    ok(output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn cli_commands_against_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    let id = log_id("cli-log");

    let created = json_lines(&cli(&node, &["log", "create", "cli-log", "--json"], None));
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["log_id"], id);
    assert_eq!(created[0]["shard"], id % 2);
    assert_eq!(created[0]["replication_factor"], 1, "the node's default");
    // Created again: the same log (a retry); with another replication factor, LOG_EXISTS.
    let again = json_lines(&cli(&node, &["log", "create", "cli-log", "--json"], None));
    assert_eq!(again, created);
    let other = cli(&node, &["log", "create", "cli-log", "--rf", "2"], None);
    assert_eq!(other.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(stderr.contains("LOG_EXISTS"), "{stderr}");
    ok(&cli(&node, &["log", "create", "other-log"], None));
    // A standalone node offers one replica: the node's error, exit code 1.
    let replicated = cli(&node, &["log", "create", "rf-2", "--rf", "2"], None);
    assert_eq!(replicated.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&replicated.stderr);
    assert!(stderr.starts_with("chainlog: TOO_LARGE"), "{stderr}");
    assert_eq!(
        cli(&node, &["log", "create", "x", "--rf", "0"], None)
            .status
            .code(),
        Some(2)
    );

    // Records from arguments, from stdin lines, from a file.
    let text = ok(&cli(&node, &["append", "cli-log", "one", "two"], None));
    assert!(text.contains("LSN 0..2"), "{text}");
    let appended = json_lines(&cli(
        &node,
        &["append", "cli-log", "--json"],
        Some("three\nfour\n"),
    ));
    assert_eq!(appended.len(), 1);
    assert_eq!(
        (&appended[0]["first_lsn"], &appended[0]["count"]),
        (&Value::from(2), &Value::from(2))
    );
    let file = dir.path().join("record.bin");
    std::fs::write(&file, b"five\nstill five").unwrap();
    ok(&cli(
        &node,
        &["append", "cli-log", "--file", file.to_str().unwrap()],
        None,
    ));

    // One line per record: the newline inside record 4 is escaped.
    let read = ok(&cli(&node, &["read", "cli-log", "--from", "0"], None));
    assert_eq!(
        read,
        "0\tone\n1\ttwo\n2\tthree\n3\tfour\n4\tfive\\nstill five\n"
    );
    let records = json_lines(&cli(
        &node,
        &["read", "cli-log", "--from", "1", "--to", "3", "--json"],
        None,
    ));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["lsn"], 1);
    assert_eq!(records[0]["payload"], "two");
    assert_eq!(records[1]["payload"], "three");
    assert_eq!(records[1]["epoch"], 1);

    let text = ok(&cli(&node, &["trim", "cli-log", "--before", "2"], None));
    assert_eq!(text, "trimmed log cli-log below LSN 2\n");
    let trimmed = cli(&node, &["read", "cli-log", "--from", "0"], None);
    assert_eq!(trimmed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&trimmed.stderr).contains("TRIMMED"));
    // A trim at or below the trim point does nothing, and says so.
    for before in ["1", "2"] {
        let text = ok(&cli(&node, &["trim", "cli-log", "--before", before], None));
        assert_eq!(
            text,
            "nothing trimmed: log cli-log is already trimmed below LSN 2\n"
        );
    }
    let again = json_lines(&cli(
        &node,
        &["trim", "cli-log", "--before", "1", "--json"],
        None,
    ));
    assert_eq!(
        (&again[0]["trimmed"], &again[0]["trim_point"]),
        (&Value::from(false), &Value::from(2))
    );

    let described = json_lines(&cli(&node, &["log", "describe", "cli-log", "--json"], None));
    assert_eq!(described[0]["tail"], 5);
    assert_eq!(described[0]["trim_point"], 2);
    assert_eq!(described[0]["name"], "cli-log");

    let tail = json_lines(&cli(&node, &["tail", "cli-log", "--json"], None));
    assert_eq!(
        tail.iter()
            .map(|r| r["lsn"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );

    let listed = json_lines(&cli(&node, &["log", "list", "--json"], None));
    let names: BTreeSet<&str> = listed.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["cli-log", "other-log"]));

    let status = json_lines(&cli(&node, &["status", "--json"], None));
    assert_eq!(status.len(), 2, "one object per shard");
    for shard in &status {
        assert_eq!(shard["reachable"], true);
    }
    let owner = &status[(id % 2) as usize];
    let entry = owner["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "cli-log")
        .expect("the log is on its shard");
    assert_eq!(entry["tail"], 5);
    let text = ok(&cli(&node, &["status"], None));
    assert!(
        text.contains("shard 0") && text.contains("shard 1"),
        "{text}"
    );

    ok(&cli(&node, &["log", "delete", "other-log"], None));
    // UNKNOWN_LOG names the log the command was given, not only its id.
    let other = log_id("other-log");
    for args in [
        &["log", "describe", "other-log"][..],
        &["read", "other-log", "--from", "0"],
        &["append", "other-log", "x"],
    ] {
        let gone = cli(&node, args, None);
        assert_eq!(gone.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&gone.stderr),
            format!("chainlog: UNKNOWN_LOG: no log \"other-log\" (id {other})\n"),
            "{args:?}"
        );
    }

    // Conditional appends: at the tail, and not.
    let at_tail = json_lines(&cli(
        &node,
        &["append", "cli-log", "--expected-lsn", "5", "--json", "six"],
        None,
    ));
    assert_eq!(at_tail[0]["first_lsn"], 5);
    let stale = cli(
        &node,
        &["append", "cli-log", "--expected-lsn", "5", "again"],
        None,
    );
    assert_eq!(stale.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&stale.stderr);
    assert!(
        stderr.contains("CONDITION_FAILED") && stderr.contains('6'),
        "{stderr}"
    );

    // Idempotent retry: the same command with the same key returns the same LSNs and
    // appends nothing; stdin lines go in batches with consecutive sequence numbers.
    let keyed = [
        "append",
        "cli-log",
        "--writer-id",
        "77",
        "--writer-seq",
        "10",
        "--json",
    ];
    let first = json_lines(&cli(&node, &keyed, Some("seven\neight\n")));
    let again = json_lines(&cli(&node, &keyed, Some("seven\neight\n")));
    assert_eq!(first, again, "a retry answers with the original LSNs");
    assert_eq!(
        (&first[0]["first_lsn"], &first[0]["count"]),
        (&Value::from(6), &Value::from(2))
    );
    let read = json_lines(&cli(
        &node,
        &["read", "cli-log", "--from", "5", "--json"],
        None,
    ));
    let payloads: Vec<&str> = read
        .iter()
        .map(|r| r["payload"].as_str().unwrap())
        .collect();
    assert_eq!(
        payloads,
        ["six", "seven", "eight"],
        "nothing appended twice"
    );

    // Fencing: a token raises the log's; a lower one is refused.
    ok(&cli(
        &node,
        &["append", "cli-log", "--fencing-token", "9", "nine"],
        None,
    ));
    let fenced = cli(
        &node,
        &["append", "cli-log", "--fencing-token", "8", "old leader"],
        None,
    );
    assert_eq!(fenced.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fenced.stderr).contains("FENCED"));

    // Bad arguments: exit code 2.
    let bad = cli(&node, &["read", "cli-log"], None);
    assert_eq!(bad.status.code(), Some(2));
    let bad = cli(&node, &["trim", "cli-log", "--before", "x"], None);
    assert_eq!(bad.status.code(), Some(2));
    let bad = cli(&node, &["append", "cli-log", "--writer-id", "1", "x"], None);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a writer id needs a sequence number"
    );
    let bad = cli(
        &node,
        &[
            "append",
            "cli-log",
            "--writer-id",
            "0",
            "--writer-seq",
            "1",
            "x",
        ],
        None,
    );
    assert_eq!(bad.status.code(), Some(2), "writer id 0 means none");
}

#[test]
fn idempotency_keys_and_fencing_tokens_hold_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let keyed = |seq| AppendOptions {
        idempotency: Some((42, seq)),
        ..AppendOptions::default()
    };
    let token = |t| AppendOptions {
        fencing_token: Some(t),
        ..AppendOptions::default()
    };
    let id = runtime().block_on(async {
        let client = Client::connect(node.addr(0)).await.expect("connect");
        let id = client.create_log("wal").await.unwrap();
        let batch = [b"a".as_slice(), b"b"];
        assert_eq!(
            client.append_with(id, &batch, &keyed(1)).await.unwrap(),
            0..2
        );
        assert_eq!(
            client.append_with(id, &batch, &keyed(1)).await.unwrap(),
            0..2
        );
        assert_eq!(
            client.append_with(id, &[b"c"], &keyed(2)).await.unwrap(),
            2..3
        );
        // Below the writer's last and not one of its batches: refused, terminal.
        let error = client
            .append_with(id, &[b"x"], &keyed(0))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::WriterSeq));
        assert_eq!(
            server_code::<()>(Err(error)).1,
            2,
            "arg0: the writer's last"
        );

        assert_eq!(
            client.append_with(id, &[b"d"], &token(5)).await.unwrap(),
            3..4
        );
        let (code, arg0) = server_code(client.append_with(id, &[b"x"], &token(3)).await);
        assert_eq!((code, arg0), (ErrorCode::Fenced, 5));
        assert_eq!(
            client.append_with(id, &[b"e"], &token(7)).await.unwrap(),
            4..5
        );
        id
    });
    assert!(node.terminate().success());
    let node = Node::start(dir.path(), 1);
    runtime().block_on(async {
        let client = Client::connect(node.addr(0)).await.expect("connect");
        assert_eq!(
            client.append_with(id, &[b"c"], &keyed(2)).await.unwrap(),
            2..3
        );
        assert_eq!(
            client
                .append_with(id, &[b"a", b"b"], &keyed(1))
                .await
                .unwrap(),
            0..2
        );
        let (code, arg0) = server_code(client.append_with(id, &[b"x"], &token(6)).await);
        assert_eq!((code, arg0), (ErrorCode::Fenced, 7));
        let read = client.read(id, 0, 100, 1 << 20).await.unwrap();
        let payloads: Vec<&[u8]> = read.records.iter().map(|r| r.payload.as_slice()).collect();
        assert_eq!(
            payloads,
            [b"a".as_slice(), b"b", b"c", b"d", b"e"],
            "no duplicates"
        );
    });
}

/// The `chainlog-bench` binary: built next to `chainlog` (a workspace build or test builds
/// it); built here if it is missing.
fn bench_binary() -> PathBuf {
    let chainlog = Path::new(env!("CARGO_BIN_EXE_chainlog"));
    let bench = chainlog.with_file_name("chainlog-bench");
    if !bench.exists() {
        let profile_dir = chainlog.parent().expect("target dir");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "-p", "chainlog-tools", "--bin", "chainlog-bench"]);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building chainlog-bench failed");
    }
    bench
}

#[test]
fn bench_append_runs_against_a_node_and_writes_sane_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    let json = dir.path().join("append.json");
    let output = Command::new(bench_binary())
        .args(["append", "--target", &node.addr(0).to_string()])
        .args(["--record-size", "100", "--concurrency", "4", "--logs", "3"])
        .args(["--duration", "1", "--warmup", "0.2", "--json"])
        .arg(&json)
        .stdin(Stdio::null())
        .output()
        .expect("run chainlog-bench");
    let stdout = ok(&output);
    assert!(stdout.contains("chainlog-bench append"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("JSON");
    assert_eq!(report["mode"], "append");
    assert_eq!(report["node"]["shard_count"], 2);
    let records = report["records"].as_u64().unwrap();
    assert!(records > 0, "{report:#}");
    assert_eq!(report["bytes"].as_u64().unwrap(), records * 100);
    assert!(report["records_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["duration_s"].as_f64().unwrap() >= 1.0);
    let latency = &report["latency_us"];
    let at = |k: &str| latency[k].as_u64().unwrap();
    assert!(at("min") >= 1 && at("min") <= at("p50") && at("p50") <= at("p99"));
    assert!(at("p99") <= at("p999") && at("p999") <= at("max"));
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(report["config"]["concurrency"], 4);
    // The bench created its logs, and what it acknowledged is in them.
    runtime().block_on(async {
        let client = Client::connect(node.addr(0)).await.unwrap();
        let mut total = 0;
        for i in 0..3 {
            let info = client
                .describe_log(LogRef::Name(&format!("bench-{i}")))
                .await
                .expect("bench log exists");
            total += info.tail;
        }
        assert!(
            total >= records,
            "{total} records in the logs, {records} measured"
        );
    });
}

/// What a scripted fake shard does with a request (after the HELLO, which it answers itself).
enum Act {
    Answer(Response<'static>),
    /// Answer a GET_MAP with this map's logs above the request's `after_log_id`.
    Map(FakeMap),
    Error(ErrorCode, u64),
    /// Never answer.
    Silent,
    /// Close the connection without answering.
    Close,
}

/// A cluster map as a fake controller serves it.
struct FakeMap {
    version: u64,
    /// (node id, shard 0's port, shards), ascending by id.
    nodes: Vec<(u64, u16, u16)>,
    /// (name, chain), ascending by the name's log id; each in epoch 3.
    logs: Vec<(&'static str, Vec<u64>)>,
}

type Script = dyn Fn(u16, &Request<'_>) -> Act + Send + Sync;

/// A fake node (node id 1) of `shards` shards on loopback; see [`fake_server`].
fn fake_node(shards: u16, script: Arc<Script>) -> (u16, Arc<Vec<AtomicUsize>>) {
    fake_server(shards, 1, Role::Node, script)
}

/// A fake server of `shards` shards on loopback (consecutive ports, bound once and held by
/// its threads, as a node binds them) that says it is `role` with id `node_id`, each
/// connection served by a thread that answers by `script(shard, request)`. Returns shard 0's
/// port and the connections accepted per shard. Its threads end with the test process (they
/// are threads, not processes).
fn fake_server(
    shards: u16,
    node_id: u64,
    role: Role,
    script: Arc<Script>,
) -> (u16, Arc<Vec<AtomicUsize>>) {
    let listeners = bind_run(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        usize::from(shards),
    )
    .expect("consecutive ports");
    let port = listeners[0].local_addr().expect("addr").port();
    let accepted: Arc<Vec<AtomicUsize>> =
        Arc::new((0..shards).map(|_| AtomicUsize::new(0)).collect());
    for (shard, listener) in (0..shards).zip(listeners) {
        let script = Arc::clone(&script);
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                accepted[usize::from(shard)].fetch_add(1, Ordering::SeqCst);
                let script = Arc::clone(&script);
                let hello = HelloResponse {
                    version: 1,
                    shard_index: shard,
                    shard_count: shards,
                    frame_bytes_max: Limits::DEFAULT.frame_bytes_max,
                    record_bytes_max: Limits::DEFAULT.record_bytes_max,
                    batch_records_max: Limits::DEFAULT.batch_records_max,
                    node_id,
                    role,
                };
                std::thread::spawn(move || serve_fake(stream, hello, &*script));
            }
        });
    }
    (port, accepted)
}

fn serve_fake(mut stream: TcpStream, hello: HelloResponse, script: &Script) {
    use std::io::{Read, Write};
    let limits = Limits::DEFAULT;
    let mut input = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        while let Ok(Some(frame)) = parse_frame(&input, &limits) {
            let len = frame.frame_bytes();
            let request = decode_request(&frame, &limits).expect("a valid request");
            let mut out = Vec::new();
            let opcode = request.opcode();
            match request {
                Request::Hello(_) => {
                    encode_response(&mut out, frame.request_id, opcode, &Response::Hello(hello));
                }
                request => match script(hello.shard_index, &request) {
                    Act::Answer(response) => {
                        encode_response(&mut out, frame.request_id, opcode, &response)
                    }
                    Act::Map(map) => {
                        let Request::GetMap(get) = request else {
                            panic!("a map answers GET_MAP, not {request:?}")
                        };
                        encode_map(&mut out, frame.request_id, &map, get.after_log_id);
                    }
                    Act::Error(code, arg0) => encode_error(
                        &mut out,
                        frame.request_id,
                        Some(opcode),
                        &ErrorResponse::new(code, arg0, "scripted"),
                    ),
                    Act::Silent => {}
                    Act::Close => return,
                },
            }
            input.drain(..len);
            if stream.write_all(&out).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Appends the GET_MAP response frame of `map`'s logs above `after`.
fn encode_map(out: &mut Vec<u8>, request_id: u64, map: &FakeMap, after: u64) {
    let addrs: Vec<String> = map
        .nodes
        .iter()
        .map(|&(_, port, _)| format!("127.0.0.1:{port}"))
        .collect();
    let nodes: Vec<MapNode<'_>> = map
        .nodes
        .iter()
        .zip(&addrs)
        .map(|(&(node_id, _, shard_count), addr)| MapNode {
            node_id,
            shard_count,
            alive: true,
            drained: false,
            last_heartbeat_ms: 10,
            addr,
            zone: "",
            rack: "",
        })
        .collect();
    let logs: Vec<MapLog<'_>> = map
        .logs
        .iter()
        .filter(|(name, _)| log_id(name) > after)
        .map(|(name, chain)| MapLog {
            log_id: log_id(name),
            epoch: 3,
            start_lsn: 0,
            trim_lsn: 0,
            replication_factor: chain.len() as u8,
            created_version: 1,
            chain: Chain::from_slice(chain),
            learners: Chain::from_slice(&[]),
            name,
        })
        .collect();
    let page = GetMapResponse {
        version: map.version,
        nodes: MapNodes::from_slice(&nodes),
        logs: MapLogs::from_slice(&logs),
    };
    encode_response(out, request_id, Opcode::GetMap, &Response::GetMap(page));
}

#[test]
fn retryable_errors_are_retried_within_a_bound() {
    let appends = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&appends);
    let refused = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::clone(&refused);
    let even_log = 2 * 1000;
    let script: Arc<Script> = Arc::new(move |shard, request| match request {
        // OVERLOADED twice, then the append succeeds.
        Request::Append(a) if a.header.log_id == even_log => {
            if seen.fetch_add(1, Ordering::SeqCst) < 2 {
                Act::Error(ErrorCode::Overloaded, 1)
            } else {
                Act::Answer(Response::Append(AppendResponse {
                    first_lsn: 7,
                    count: 1,
                }))
            }
        }
        // Always OVERLOADED.
        Request::Append(_) => {
            refusing.fetch_add(1, Ordering::SeqCst);
            Act::Error(ErrorCode::Overloaded, 1)
        }
        // Shard 0 sends CHECK_TAIL to shard 1; shard 1 answers.
        Request::CheckTail { .. } if shard == 0 => Act::Error(ErrorCode::WrongShard, 1),
        Request::CheckTail { .. } => Act::Answer(Response::CheckTail(TailResponse {
            tail: 5,
            trim_point: 0,
            epoch: 1,
        })),
        _ => Act::Error(ErrorCode::UnknownLog, u64::MAX),
    });
    let (port, accepted) = fake_node(2, script);
    runtime().block_on(async {
        let config = ClientConfig {
            retries_max: 3,
            ..ClientConfig::default()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let client = Client::connect_with(addr, config).await.unwrap();
        assert_eq!(client.append(even_log, &[b"x"]).await.unwrap(), 7..8);
        assert_eq!(appends.load(Ordering::SeqCst), 3);

        let tail = client.check_tail(even_log).await.unwrap();
        assert_eq!(tail.tail, 5);
        assert_eq!(accepted[1].load(Ordering::SeqCst), 1, "rerouted to shard 1");

        // Past the bound: the last error is returned, marked retryable.
        let error = client.append(even_log + 2, &[b"y"]).await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::Overloaded));
        assert!(error.is_retryable() && !error.outcome_unknown());
        assert_eq!(refused.load(Ordering::SeqCst), 4, "1 try + 3 retries");
    });
}

/// Appends once with `config` to a fake node that refuses APPENDs with `refusals` in turn
/// (`arg0` 1) and then takes it at LSN 3. Returns the APPENDs the node got.
fn append_through_refusals(refusals: &'static [ErrorCode], config: ClientConfig) -> usize {
    let appends = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&appends);
    let script: Arc<Script> = Arc::new(move |_, request| match request {
        Request::Append(_) => match refusals.get(seen.fetch_add(1, Ordering::SeqCst)) {
            Some(&code) => Act::Error(code, 1),
            None => Act::Answer(Response::Append(AppendResponse {
                first_lsn: 3,
                count: 1,
            })),
        },
        _ => Act::Error(ErrorCode::UnknownLog, u64::MAX),
    });
    let (port, _) = fake_node(1, script);
    runtime().block_on(async {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let client = Client::connect_with(addr, config).await.unwrap();
        assert_eq!(client.append(1000, &[b"x"]).await.unwrap(), 3..4);
    });
    appends.load(Ordering::SeqCst)
}

/// UNAVAILABLE has a budget of its own (`unavailable_retries_max`), not shared with the
/// failures before it: a head settling with its new chain after a reconfiguration answers
/// UNAVAILABLE right after the refusals that led the request there. It counted them, so the
/// request failed at its second UNAVAILABLE.
#[test]
fn unavailable_after_other_refusals_still_gets_its_retries() {
    use ErrorCode::{Overloaded, Unavailable};
    let config = ClientConfig {
        unavailable_retries_max: 3,
        ..ClientConfig::default()
    };
    let refusals = &[
        Overloaded,
        Overloaded,
        Unavailable,
        Unavailable,
        Unavailable,
    ];
    assert_eq!(append_through_refusals(refusals, config), 6);
}

/// UNAVAILABLE's retries are not counted against `retries_max`: its pauses start short (a
/// head settling with its new chain answers it for a millisecond or two), so it takes more
/// tries than other refusals to cover the same time.
#[test]
fn unavailable_retries_have_their_own_budget_beside_retries_max() {
    let config = ClientConfig {
        retries_max: 2,
        unavailable_retries_max: 6,
        ..ClientConfig::default()
    };
    assert_eq!(
        append_through_refusals(&[ErrorCode::Unavailable; 6], config),
        7
    );
}

#[test]
fn timeouts_and_lost_connections_are_outcome_unknown_and_the_next_call_reconnects() {
    let appends = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&appends);
    let script: Arc<Script> = Arc::new(move |_, request| match request {
        Request::CheckTail { .. } => Act::Silent,
        Request::Append(_) if seen.fetch_add(1, Ordering::SeqCst) == 0 => Act::Close,
        Request::Append(_) => Act::Answer(Response::Append(AppendResponse {
            first_lsn: 0,
            count: 1,
        })),
        _ => Act::Error(ErrorCode::UnknownLog, u64::MAX),
    });
    let (port, accepted) = fake_node(1, script);
    runtime().block_on(async {
        let config = ClientConfig {
            request_timeout: Duration::from_millis(200),
            ..ClientConfig::default()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let client = Client::connect_with(addr, config).await.unwrap();
        let error = client.check_tail(1).await.unwrap_err();
        assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
        assert!(error.outcome_unknown() && !error.is_retryable());

        let error = client.append(1, &[b"x"]).await.unwrap_err();
        assert!(
            matches!(error, ClientError::ConnectionLost { .. }),
            "{error:?}"
        );
        assert!(error.outcome_unknown() && !error.is_retryable());
        assert_eq!(appends.load(Ordering::SeqCst), 1, "not resent");

        assert_eq!(client.append(1, &[b"x"]).await.unwrap(), 0..1);
        assert_eq!(accepted[0].load(Ordering::SeqCst), 2, "a new connection");
    });
}

#[test]
fn an_append_with_an_idempotency_key_is_resent_after_a_lost_connection() {
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&keys);
    let script: Arc<Script> = Arc::new(move |_, request| match request {
        Request::Append(a) => {
            let mut seen = seen.lock().unwrap();
            seen.push((a.header.writer_id, a.header.writer_seq));
            if seen.len() == 1 {
                Act::Close // the outcome of the first attempt is unknown to the client
            } else {
                Act::Answer(Response::Append(AppendResponse {
                    first_lsn: 5,
                    count: 1,
                }))
            }
        }
        _ => Act::Error(ErrorCode::UnknownLog, u64::MAX),
    });
    let (port, accepted) = fake_node(1, script);
    runtime().block_on(async {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let client = Client::connect(addr).await.unwrap();
        let options = AppendOptions {
            idempotency: Some((9, 3)),
            ..AppendOptions::default()
        };
        assert_eq!(
            client.append_with(1, &[b"x"], &options).await.unwrap(),
            5..6
        );
        assert_eq!(
            *keys.lock().unwrap(),
            [(9, 3), (9, 3)],
            "resent with the same key"
        );
        assert_eq!(accepted[0].load(Ordering::SeqCst), 2, "on a new connection");
    });
}

/// The log of [`FakeCluster`]'s map.
const ROUTED: &str = "routed";

/// What a fake cluster node answers: given its id, the current head and the request.
type NodeScript = fn(u64, u64, &Request<'_>) -> Act;

/// A fake cluster on loopback: a controller (role controller) whose map lists node 1 (one
/// shard) and node 2 (two shards) and the log [`ROUTED`] with the chain `[head, the other]`,
/// and the two nodes, answering by a [`NodeScript`]. The controller answers GET_MAP itself and
/// everything else by `admin`. Every request a node's shard gets is recorded.
struct FakeCluster {
    controller: SocketAddr,
    head: Arc<AtomicU64>,
    version: Arc<AtomicU64>,
    /// Maps served: GET_MAPs of the first page.
    maps_served: Arc<AtomicUsize>,
    /// (node, shard, opcode) of every request to a node, in arrival order.
    requests: Arc<Mutex<Vec<(u64, u16, Opcode)>>>,
}

impl FakeCluster {
    fn start(node: NodeScript, admin: fn(&Request<'_>) -> Act) -> FakeCluster {
        let head = Arc::new(AtomicU64::new(2));
        let version = Arc::new(AtomicU64::new(1));
        let maps_served = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mut ports = Vec::new();
        for (node_id, shards) in [(1, 1), (2, 2)] {
            let head = Arc::clone(&head);
            let requests = Arc::clone(&requests);
            let script: Arc<Script> = Arc::new(move |shard, request| {
                requests
                    .lock()
                    .unwrap()
                    .push((node_id, shard, request.opcode()));
                node(node_id, head.load(Ordering::SeqCst), request)
            });
            ports.push((
                node_id,
                fake_server(shards, node_id, Role::Node, script).0,
                shards,
            ));
        }
        let script: Arc<Script> = {
            let (head, version, served) = (
                Arc::clone(&head),
                Arc::clone(&version),
                Arc::clone(&maps_served),
            );
            Arc::new(move |_, request| match request {
                Request::GetMap(get) => {
                    if get.after_log_id == 0 {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    let head = head.load(Ordering::SeqCst);
                    Act::Map(FakeMap {
                        version: version.load(Ordering::SeqCst),
                        nodes: ports.clone(),
                        logs: vec![(ROUTED, vec![head, 3 - head])],
                    })
                }
                other => admin(other),
            })
        };
        let (port, _) = fake_server(1, 0, Role::Controller, script);
        FakeCluster {
            controller: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            head,
            version,
            maps_served,
            requests,
        }
    }

    /// The controller makes `node` the head: a new map version.
    fn move_head(&self, node: u64) {
        self.head.store(node, Ordering::SeqCst);
        self.bump_version();
    }

    fn bump_version(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    fn maps_served(&self) -> usize {
        self.maps_served.load(Ordering::SeqCst)
    }

    /// Where the requests of `opcode` went: (node, shard) each.
    fn sent(&self, opcode: Opcode) -> Vec<(u64, u16)> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r.2 == opcode)
            .map(|&(node, shard, _)| (node, shard))
            .collect()
    }
}

/// A fake cluster node: appends at the head (LSN 10 × its id; epoch 7 is refused with
/// WRONG_EPOCH, epoch 3 too the first time), NOT_HEAD elsewhere; reads and tail hints answer
/// a tail of 100 × its id.
fn cluster_node(node_id: u64, head: u64, request: &Request<'_>) -> Act {
    static EPOCH_3_REFUSED: AtomicUsize = AtomicUsize::new(0);
    match request {
        Request::Append(_) if node_id != head => Act::Error(ErrorCode::NotHead, head),
        Request::Append(a) if a.header.epoch == 7 => Act::Error(ErrorCode::WrongEpoch, 3),
        Request::Append(a)
            if a.header.epoch == 3 && EPOCH_3_REFUSED.fetch_add(1, Ordering::SeqCst) == 0 =>
        {
            Act::Error(ErrorCode::WrongEpoch, 3)
        }
        Request::Append(_) => Act::Answer(Response::Append(AppendResponse {
            first_lsn: 10 * node_id,
            count: 1,
        })),
        Request::Read(_) => Act::Answer(Response::Read(ReadResponse {
            tail: 100 * node_id,
            records: Records::EMPTY,
        })),
        Request::TailHint { .. } => Act::Answer(Response::TailHint(TailResponse {
            tail: 100 * node_id,
            trim_point: node_id,
            epoch: 3,
        })),
        _ => Act::Error(ErrorCode::UnknownLog, u64::MAX),
    }
}

/// A fake controller's answers besides GET_MAP: CREATE_LOG, DESCRIBE_LOG (positions
/// `u64::MAX`) and LIST_LOGS of [`ROUTED`].
fn cluster_admin(request: &Request<'_>) -> Act {
    static LISTED: OnceLock<[LogEntry<'static>; 1]> = OnceLock::new();
    let id = log_id(ROUTED);
    match request {
        Request::CreateLog(create) if create.name == ROUTED && create.replication_factor == 2 => {
            Act::Answer(Response::CreateLog(CreateLogResponse {
                log_id: id,
                shard: (id % 2) as u16,
            }))
        }
        Request::DescribeLog(_) => Act::Answer(Response::DescribeLog(DescribeLogResponse {
            log_id: id,
            tail: u64::MAX,
            trim_point: u64::MAX,
            epoch: 3,
            shard: (id % 2) as u16,
            replication_factor: 2,
            name: ROUTED,
        })),
        Request::ListLogs(list) => {
            let entries: &[LogEntry<'static>] = if list.after_log_id < id {
                LISTED.get_or_init(|| {
                    [LogEntry {
                        log_id: id,
                        name: ROUTED,
                    }]
                })
            } else {
                &[]
            };
            Act::Answer(Response::ListLogs(ListLogsResponse {
                entries: LogEntries::from_slice(entries),
            }))
        }
        _ => Act::Error(ErrorCode::Malformed, u64::MAX),
    }
}

#[test]
fn a_cluster_client_appends_at_the_head_and_follows_not_head_to_the_new_head() {
    let cluster = FakeCluster::start(cluster_node, cluster_admin);
    let id = log_id(ROUTED);
    let on_node_2 = (id % 2) as u16;
    runtime().block_on(async {
        let client = Client::connect(cluster.controller).await.unwrap();
        let map = client
            .map()
            .expect("the controller's client is a cluster client");
        assert_eq!((map.version(), map.nodes().len()), (1, 2));
        assert_eq!(map.log(id).expect("the log").chain, [2, 1]);
        assert_eq!(cluster.maps_served(), 1);

        // At the head, node 2, on its shard of the log.
        assert_eq!(client.append(id, &[b"x"]).await.unwrap(), 20..21);
        assert_eq!(cluster.sent(Opcode::Append), [(2, on_node_2)]);
        assert_eq!(client.shard_of(id), on_node_2);

        // Node 1 becomes the head: node 2 answers NOT_HEAD, the client fetches the map once
        // and sends the append again, to node 1.
        cluster.move_head(1);
        assert_eq!(client.append(id, &[b"y"]).await.unwrap(), 10..11);
        assert_eq!(
            cluster.sent(Opcode::Append),
            [(2, on_node_2), (2, on_node_2), (1, 0)]
        );
        assert_eq!(cluster.maps_served(), 2);
        assert_eq!(client.map().unwrap().version(), 2);

        // WRONG_EPOCH: sent again by a newer map if the caller's epoch is the current one
        // (3 here)...
        cluster.bump_version();
        let current = AppendOptions {
            epoch: Some(3),
            ..AppendOptions::default()
        };
        assert_eq!(
            client.append_with(id, &[b"z"], &current).await.unwrap(),
            10..11
        );
        assert_eq!(
            cluster.sent(Opcode::Append).len(),
            5,
            "refused once, then sent again"
        );
        // ... and not if the caller asked for another epoch: the map is fetched, the append
        // is not sent again.
        cluster.bump_version();
        let stale = AppendOptions {
            epoch: Some(7),
            ..AppendOptions::default()
        };
        let error = client.append_with(id, &[b"z"], &stale).await;
        assert_eq!(server_code(error), (ErrorCode::WrongEpoch, 3));
        assert_eq!(cluster.sent(Opcode::Append).len(), 6);
        assert_eq!(cluster.maps_served(), 4);

        // A log the map does not hold: fetched once more, then UNKNOWN_LOG; nothing is sent
        // to a node.
        let error = client.append(log_id("nowhere"), &[b"x"]).await;
        assert_eq!(server_code(error).0, ErrorCode::UnknownLog);
        assert_eq!(cluster.maps_served(), 5);
        assert_eq!(cluster.sent(Opcode::Append).len(), 6);
    });
}

/// A fake cluster node that installs the map late: the head answers its first
/// [`LATE_REFUSALS`] appends with NOT_HEAD (it does not know it is the head yet), then as
/// [`cluster_node`] does.
fn late_head(node_id: u64, head: u64, request: &Request<'_>) -> Act {
    static REFUSED: AtomicUsize = AtomicUsize::new(0);
    match request {
        Request::Append(_)
            if node_id == head && REFUSED.fetch_add(1, Ordering::SeqCst) < LATE_REFUSALS =>
        {
            Act::Error(ErrorCode::NotHead, 3 - head)
        }
        _ => cluster_node(node_id, head, request),
    }
}

/// How many appends [`late_head`] refuses.
const LATE_REFUSALS: usize = 3;

/// NOT_HEAD from the node the newest map names head: the node has not installed that map
/// yet. Nothing was appended (an ERROR never is), so the client waits for the node (or a
/// newer map), as for SEALED, rather than fail the append (in head-kill drills about 500
/// appends a run failed so).
#[test]
fn a_head_that_has_not_installed_the_map_yet_is_waited_for() {
    let cluster = FakeCluster::start(late_head, cluster_admin);
    let id = log_id(ROUTED);
    runtime().block_on(async {
        let client = Client::connect(cluster.controller).await.unwrap();
        assert_eq!(client.append(id, &[b"x"]).await.unwrap(), 20..21);
        let on_node_2 = (id % 2) as u16;
        assert_eq!(
            cluster.sent(Opcode::Append),
            vec![(2, on_node_2); LATE_REFUSALS + 1],
            "refused, then sent again to the same head"
        );
    });
}

#[test]
fn a_cluster_client_reads_where_read_from_says_and_administers_logs_at_the_controller() {
    let cluster = FakeCluster::start(cluster_node, cluster_admin);
    let id = log_id(ROUTED);
    runtime().block_on(async {
        let read_from = |read_from| async move {
            let config = ClientConfig {
                read_from,
                ..ClientConfig::default()
            };
            Client::connect_with(cluster.controller, config)
                .await
                .unwrap()
        };
        // The chain is [2, 1]: the head is node 2, the tail node 1.
        let head = read_from(ReadFrom::Head).await;
        assert_eq!(head.read(id, 0, 10, 1 << 20).await.unwrap().tail, 200);
        assert_eq!(head.tail_hint(id).await.unwrap().tail, 200);
        let tail = read_from(ReadFrom::Tail).await;
        assert_eq!(tail.read(id, 0, 10, 1 << 20).await.unwrap().tail, 100);
        assert_eq!(tail.tail_hint_at(2, id).await.unwrap().tail, 200);
        let any = read_from(ReadFrom::Any).await;
        let mut tails = BTreeSet::new();
        for _ in 0..4 {
            tails.insert(any.read(id, 0, 10, 1 << 20).await.unwrap().tail);
        }
        assert_eq!(tails, BTreeSet::from([100, 200]), "both replicas serve");
        assert!(cluster.sent(Opcode::Read).contains(&(2, (id % 2) as u16)));

        // Metadata goes to the controller; DESCRIBE_LOG takes its positions from the head.
        let maps = cluster.maps_served();
        assert_eq!(head.create_log_with(ROUTED, 2).await.unwrap(), id);
        assert_eq!(
            cluster.maps_served(),
            maps + 1,
            "the map is fetched after a create"
        );
        let info = head.describe_log(LogRef::Name(ROUTED)).await.unwrap();
        assert_eq!(
            (info.tail, info.trim_point, info.replication_factor),
            (200, 2, 2)
        );
        let listed = head.list_logs().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].log_id, listed[0].name.as_str()), (id, ROUTED));
        assert_eq!(
            cluster.sent(Opcode::ListLogs),
            [],
            "no node was asked to list"
        );
    });
}

/// A child process killed and reaped when dropped (also when the test fails).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cli_tail_follow_prints_records_as_they_commit() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    ok(&cli(&node, &["log", "create", "followed"], None));
    ok(&cli(&node, &["append", "followed", "old-0", "old-1"], None));
    let mut tail = Reaped(
        Command::new(env!("CARGO_BIN_EXE_chainlog"))
            .args(["tail", "followed", "--follow", "--from", "1", "--json"])
            .args(["--target", &node.addr(0).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chainlog tail"),
    );
    let mut lines = std::io::BufReader::new(tail.0.stdout.take().expect("stdout")).lines();
    let mut next_line = || -> Value {
        let line = lines
            .next()
            .expect("tail exited early")
            .expect("a line of output");
        serde_json::from_str(&line).expect("one JSON object per line")
    };
    // The record already there, then new ones as they are appended.
    let first = next_line();
    assert_eq!(
        (first["lsn"].as_u64(), first["payload"].as_str()),
        (Some(1), Some("old-1"))
    );
    ok(&cli(&node, &["append", "followed", "new-2", "new-3"], None));
    for lsn in 2..4 {
        let record = next_line();
        assert_eq!(record["lsn"], lsn);
        assert_eq!(record["payload"], format!("new-{lsn}"));
    }
    drop(tail);
}

#[test]
fn cli_and_bench_report_an_unreachable_node_with_exit_code_1() {
    let refusing = Refusing::bind();
    let nobody = refusing.addr.to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args(["status", "--target", &nobody])
        .stdin(Stdio::null())
        .output()
        .expect("run chainlog");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connecting to"), "{stderr}");
    let output = Command::new(bench_binary())
        .args(["append", "--target", &nobody, "--record-size", "8"])
        .args(["--concurrency", "1", "--duration", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run chainlog-bench");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connecting to"), "{stderr}");
}

/// `read` and `tail` print a binary payload as one line of escapes, never raw bytes to the
/// terminal; `--json` gives it as hex.
#[test]
fn cli_read_and_tail_escape_binary_payloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    ok(&cli(&node, &["log", "create", "bin"], None));
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, b"\x1b[2J\x00\xff\\ caf\xc3\xa9\n").unwrap();
    let file = file.to_str().unwrap();
    ok(&cli(&node, &["append", "bin", "--file", file], None));
    let line = "0\t\\x1b[2J\\x00\\xff\\\\ caf\u{e9}\\n\n";
    let read = cli(&node, &["read", "bin", "--from", "0"], None);
    assert_eq!(read.stdout, line.as_bytes());
    let tail = cli(&node, &["tail", "bin"], None);
    assert_eq!(tail.stdout, line.as_bytes());
    let json = json_lines(&cli(&node, &["read", "bin", "--from", "0", "--json"], None));
    assert_eq!(json[0]["payload_hex"], "1b5b324a00ff5c20636166c3a90a");
    assert!(node.terminate().success());
}

/// `status` exits 1 while a shard does not answer (it prints what it found, the shard marked
/// unreachable); with `--wait` it tries again until every shard answers, then exits 0.
#[test]
fn cli_status_fails_while_a_shard_does_not_answer_and_waits_for_it_with_wait() {
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let refused = Arc::new(AtomicUsize::new(0));
    let script: Arc<Script> = {
        let (down, refused) = (Arc::clone(&down), Arc::clone(&refused));
        Arc::new(move |shard, request| match request {
            Request::ListLogs(_) if shard == 1 && down.load(Ordering::SeqCst) => {
                refused.fetch_add(1, Ordering::SeqCst);
                Act::Close
            }
            Request::ListLogs(_) => Act::Answer(Response::ListLogs(ListLogsResponse {
                entries: LogEntries::from_slice(&[]),
            })),
            other => panic!("status sent {other:?}"),
        })
    };
    let (port, _) = fake_node(2, script);
    let target = format!("127.0.0.1:{port}");
    let status = |wait: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_chainlog"))
            .args(["status", "--target", &target])
            .args(wait)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run chainlog status")
    };
    let once = status(&[]).wait_with_output().expect("status");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&once.stdout),
        String::from_utf8_lossy(&once.stderr),
    );
    assert_eq!(once.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("shard 0 (port"), "{stdout}");
    assert!(stdout.contains("): unreachable: "), "{stdout}");
    assert_eq!(stderr, "chainlog: 1 of 2 shard(s) unreachable\n");
    // Shard 1 answers only after `--wait` has found it unreachable at least once.
    let seen = refused.load(Ordering::SeqCst);
    let waiting = status(&["--wait", "120"]);
    let end = std::time::Instant::now() + Duration::from_secs(120);
    while refused.load(Ordering::SeqCst) == seen {
        assert!(std::time::Instant::now() < end, "status --wait never asked");
        std::thread::sleep(Duration::from_millis(10));
    }
    down.store(false, Ordering::SeqCst);
    let waited = waiting.wait_with_output().expect("status --wait");
    let stdout = String::from_utf8_lossy(&waited.stdout);
    assert!(waited.status.success(), "{stdout}");
    assert!(
        !stdout.contains("unreachable"),
        "only the last try is printed: {stdout}"
    );
}

/// A cluster client whose log's head cannot be reached (it died, and the controller has not
/// replaced it yet) waits for the newer map and appends at the new head: nothing was sent,
/// so the append is not lost to the failover. It failed at once with the connect error.
#[test]
fn an_append_to_an_unreachable_head_waits_for_the_map_that_replaces_it() {
    let dead = Refusing::bind();
    let appends = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&appends);
    let script: Arc<Script> = Arc::new(move |_, request| match request {
        Request::Append(_) => {
            seen.fetch_add(1, Ordering::SeqCst);
            Act::Answer(Response::Append(AppendResponse {
                first_lsn: 10,
                count: 1,
            }))
        }
        _ => Act::Error(ErrorCode::UnknownLog, u64::MAX),
    });
    let live = fake_server(1, 1, Role::Node, script).0;
    // Node 2, the head, is dead; the third map the client fetches has node 1 as the head.
    let maps = Arc::new(AtomicUsize::new(0));
    let served = Arc::clone(&maps);
    let controller: Arc<Script> = Arc::new(move |_, request| match request {
        Request::GetMap(get) => {
            let n = if get.after_log_id == 0 {
                served.fetch_add(1, Ordering::SeqCst) + 1
            } else {
                served.load(Ordering::SeqCst)
            };
            let replaced = n >= 3;
            Act::Map(FakeMap {
                version: if replaced { 2 } else { 1 },
                nodes: vec![(1, live, 1), (2, dead.addr.port(), 1)],
                logs: vec![(ROUTED, if replaced { vec![1] } else { vec![2, 1] })],
            })
        }
        _ => Act::Error(ErrorCode::Malformed, u64::MAX),
    });
    let (port, _) = fake_server(1, 0, Role::Controller, controller);
    runtime().block_on(async {
        let client = Client::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .unwrap();
        assert_eq!(
            client.append(log_id(ROUTED), &[b"x"]).await.unwrap(),
            10..11
        );
        assert_eq!(appends.load(Ordering::SeqCst), 1);
        assert_eq!(client.map().unwrap().version(), 2);
    });
}

/// A loopback address that refuses connections for as long as this lives: a socket bound
/// there that never listens, so no other socket can take the port meanwhile.
struct Refusing {
    _socket: OwnedFd,
    addr: SocketAddr,
}

impl Refusing {
    fn bind() -> Refusing {
        // SAFETY: socket(2) takes no pointers; the descriptor is owned by the OwnedFd alone.
        let socket = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        };
        let mut sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `sin` and `len` are live and sized for an IPv4 address, for both calls.
        unsafe {
            let at = (&mut sin as *mut libc::sockaddr_in).cast::<libc::sockaddr>();
            assert_eq!(libc::bind(socket.as_raw_fd(), at, len), 0, "bind");
            assert_eq!(
                libc::getsockname(socket.as_raw_fd(), at, &mut len),
                0,
                "getsockname"
            );
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, u16::from_be(sin.sin_port)));
        Refusing {
            _socket: socket,
            addr,
        }
    }
}
