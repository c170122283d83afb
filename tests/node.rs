//! The real `chainlog node` binary on loopback, driven over the wire protocol (PROTOCOL.md) by
//! a minimal client built from chainlog-net's encoders: log administration, appends (plain
//! and conditional), reads, trims and tails; a restart that reads everything back; and a
//! graceful stop on SIGTERM. Each test stops the node it started, by PID.

mod common;

use chainlog::net::{
    encode_request, AppendBuilder, AppendHeader, CreateLogRequest, DescribeLogRequest, ErrorCode,
    ListLogsRequest, LogRef, ReadRequest, Request, Response, TrimRequest,
};
use common::Node;

fn payload(log: u64, lsn: u64) -> Vec<u8> {
    format!("log {log} record {lsn} ")
        .repeat(1 + (lsn % 7) as usize)
        .into_bytes()
}

#[test]
fn logs_appends_reads_trims_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    // Every shard owns the names that hash to it: a client goes where the id says.
    let mut shard = [node.connect(0), node.connect(1)];
    let name = "orders";
    let id = chainlog::net::log_id_of(name);
    let owner = (id % 2) as usize;
    let wrong = &mut shard[1 - owner];
    let refused = wrong.call(
        &Request::CreateLog(CreateLogRequest {
            replication_factor: 1,
            name,
        }),
        |r| match r {
            Response::Error(e) => (e.code, e.arg0),
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(refused, (ErrorCode::WrongShard, owner as u64));
    let c = &mut shard[owner];
    assert_eq!(c.create(name), id);

    // Appends: batches of 1..4 records; LSNs are dense.
    let mut next = 0;
    for batch in 0..50u64 {
        let count = 1 + batch % 4;
        let payloads: Vec<Vec<u8>> = (next..next + count).map(|lsn| payload(id, lsn)).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        assert_eq!(c.append(&AppendHeader::new(id), &refs), Ok(next));
        next += count;
    }
    // Conditional append: only at the tail.
    let stale = AppendHeader {
        expected_lsn: next - 1,
        ..AppendHeader::new(id)
    };
    assert_eq!(
        c.append(&stale, &[b"x"]),
        Err((ErrorCode::ConditionFailed, next))
    );
    let at_tail = AppendHeader {
        expected_lsn: next,
        ..AppendHeader::new(id)
    };
    let tail_payload = payload(id, next);
    assert_eq!(c.append(&at_tail, &[&tail_payload]), Ok(next));
    next += 1;
    // Unknown logs and logs of another shard are refused with the right code.
    assert_eq!(
        c.append(&AppendHeader::new(id + 2), &[b"x"])
            .map_err(|e| e.0),
        Err(ErrorCode::UnknownLog)
    );
    assert_eq!(
        c.append(&AppendHeader::new(id + 1), &[b"x"])
            .map_err(|e| e.0),
        Err(ErrorCode::WrongShard)
    );

    let (tail, records) = c.read(id, 0).expect("read");
    assert_eq!(tail, next);
    assert_eq!(records.len() as u64, next);
    for (lsn, bytes) in &records {
        assert_eq!(bytes, &payload(id, *lsn));
    }
    // Trim, then reads below the trim point are refused.
    let trimmed = c.call(
        &Request::Trim(TrimRequest {
            log_id: id,
            before_lsn: 10,
        }),
        |r| matches!(r, Response::Trim),
    );
    assert!(trimmed);
    assert_eq!(c.read(id, 3).map(|_| ()), Err(ErrorCode::Trimmed));
    let tails = c.call(&Request::CheckTail { log_id: id }, |r| match r {
        Response::CheckTail(t) => (t.tail, t.trim_point),
        other => panic!("{other:?}"),
    });
    assert_eq!(tails, (next, 10));
    let described = c.call(
        &Request::DescribeLog(DescribeLogRequest {
            by: LogRef::Name(name),
        }),
        |r| match r {
            Response::DescribeLog(d) => (d.log_id, d.tail, d.trim_point, d.name.to_string()),
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(described, (id, next, 10, name.to_string()));
    let listed = c.call(
        &Request::ListLogs(ListLogsRequest {
            after_log_id: 0,
            max: 100,
        }),
        |r| match r {
            Response::ListLogs(l) => l
                .entries
                .iter()
                .map(|e| e.name.to_string())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(listed, [name]);

    // SIGTERM: a clean stop, then everything is still there.
    drop(shard);
    let status = node.terminate();
    assert!(status.success(), "the node exits 0 on SIGTERM: {status:?}");
    let node = Node::start(dir.path(), 2);
    let mut c = node.connect(owner as u16);
    let (tail, records) = c.read(id, 10).expect("read after restart");
    assert_eq!(tail, next);
    assert_eq!(records.len() as u64, next - 10);
    for (lsn, bytes) in &records {
        assert_eq!(bytes, &payload(id, *lsn));
    }
    assert_eq!(
        c.append(&AppendHeader::new(id), &[b"after restart"]),
        Ok(next)
    );
    let deleted = c.call(&Request::DeleteLog { log_id: id }, |r| {
        matches!(r, Response::DeleteLog)
    });
    assert!(deleted);
    assert_eq!(c.read(id, 10).map(|_| ()), Err(ErrorCode::UnknownLog));
    drop(c);
    assert!(node.terminate().success());
}

#[test]
fn pipelined_appends_are_answered_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut c = node.connect(0);
    let id = c.create("pipelined");
    // 200 appends in one write, then the answers: one per request, in order, dense LSNs.
    let mut out = Vec::new();
    let limits = c.limits;
    for i in 0..200u64 {
        let mut b = AppendBuilder::new(&mut out, 1000 + i, &AppendHeader::new(id), &limits);
        b.push(&payload(id, i)).expect("record");
        b.finish();
    }
    c.send(&out);
    for i in 0..200u64 {
        let (rid, lsn) = c.receive(|rid, r| match r {
            Response::Append(a) => (rid, a.first_lsn),
            other => panic!("{other:?}"),
        });
        assert_eq!((rid, lsn), (1000 + i, i));
    }
    drop(c);
    assert!(node.terminate().success());
}

#[test]
fn subscriptions_push_committed_records_within_their_credit() {
    use chainlog::net::{CreditRequest, SubscribeRequest, UnsubscribeRequest};
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut writer = node.connect(0);
    let mut reader = node.connect(0);
    let id = writer.create("followed");
    for lsn in 0..3 {
        assert_eq!(
            writer.append(&AppendHeader::new(id), &[&payload(id, lsn)]),
            Ok(lsn)
        );
    }
    // Subscribe from 0 with credit for 5 records.
    let sub_id = 77;
    let mut out = Vec::new();
    let subscribe = SubscribeRequest {
        log_id: id,
        from_lsn: 0,
        credit_records: 5,
    };
    encode_request(&mut out, sub_id, &Request::Subscribe(subscribe));
    reader.send(&out);
    let start = reader.receive(|rid, r| match r {
        Response::Subscribe(s) => {
            assert_eq!(rid, sub_id);
            s.start_lsn
        }
        other => panic!("{other:?}"),
    });
    assert_eq!(start, 0);
    for lsn in 3..12 {
        assert_eq!(
            writer.append(&AppendHeader::new(id), &[&payload(id, lsn)]),
            Ok(lsn)
        );
    }
    // Pushes: in LSN order, never beyond the credit (5 records), never empty.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        reader.receive(|rid, r| match r {
            Response::Push(p) => {
                assert_eq!(rid, sub_id);
                assert!(!p.end && p.batch.records.count() > 0);
                for v in p.batch.records.iter() {
                    seen.push((v.header.lsn, v.payload.to_vec()));
                }
            }
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(seen.len(), 5, "no record beyond the credit");
    // More credit: the rest arrives; then UNSUBSCRIBE ends the stream before its response.
    let mut out = Vec::new();
    encode_request(
        &mut out,
        78,
        &Request::Credit(CreditRequest {
            subscription_id: sub_id,
            records: 100,
        }),
    );
    reader.send(&out);
    let mut credit_answered = false;
    while seen.len() < 12 || !credit_answered {
        reader.receive(|rid, r| match r {
            Response::Push(p) => {
                assert_eq!(rid, sub_id);
                for v in p.batch.records.iter() {
                    seen.push((v.header.lsn, v.payload.to_vec()));
                }
            }
            Response::Credit => credit_answered = true,
            other => panic!("{other:?}"),
        });
    }
    let expected: Vec<(u64, Vec<u8>)> = (0..12).map(|lsn| (lsn, payload(id, lsn))).collect();
    assert_eq!(seen, expected);
    let mut out = Vec::new();
    encode_request(
        &mut out,
        79,
        &Request::Unsubscribe(UnsubscribeRequest {
            subscription_id: sub_id,
        }),
    );
    reader.send(&out);
    reader.receive(|rid, r| match r {
        Response::Push(p) => assert!(rid == sub_id && p.end),
        other => panic!("the END push comes first: {other:?}"),
    });
    reader.receive(|rid, r| assert!(rid == 79 && matches!(r, Response::Unsubscribe)));

    // Below the trim point: TRIMMED; a deleted log ends its subscriptions with UNKNOWN_LOG.
    assert!(writer.call(
        &Request::Trim(TrimRequest {
            log_id: id,
            before_lsn: 4
        }),
        |r| matches!(r, Response::Trim)
    ));
    let below = SubscribeRequest {
        log_id: id,
        from_lsn: 1,
        credit_records: 10,
    };
    let refused = reader.call(&Request::Subscribe(below), |r| match r {
        Response::Error(e) => (e.code, e.arg0),
        other => panic!("{other:?}"),
    });
    assert_eq!(refused, (ErrorCode::Trimmed, 4));
    let mut out = Vec::new();
    let from_tail = SubscribeRequest {
        log_id: id,
        from_lsn: u64::MAX,
        credit_records: 10,
    };
    encode_request(&mut out, 90, &Request::Subscribe(from_tail));
    reader.send(&out);
    reader.receive(|_, r| assert!(matches!(r, Response::Subscribe(s) if s.start_lsn == 12)));
    assert!(
        writer.call(&Request::DeleteLog { log_id: id }, |r| matches!(
            r,
            Response::DeleteLog
        ))
    );
    reader.receive(|rid, r| match r {
        Response::PushError(e) => assert!(rid == 90 && e.code == ErrorCode::UnknownLog),
        other => panic!("{other:?}"),
    });
    drop((writer, reader));
    assert!(node.terminate().success());
}

/// `GET /metrics` on the port after the last shard's: Prometheus text with the append stages,
/// group commit and per-shard counters, published by the shards once a second.
#[test]
fn metrics_are_served_as_prometheus_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut c = node.connect(0);
    let id = c.create("measured");
    for lsn in 0..20 {
        assert_eq!(
            c.append(&AppendHeader::new(id), &[&payload(id, lsn)]),
            Ok(lsn)
        );
    }
    assert_eq!(
        node.metrics.port(),
        node.port + 1,
        "after the last shard's port"
    );
    let scrape = |path: &str| node.scrape(path);
    assert!(scrape("/nothing").starts_with("HTTP/1.1 404"));
    // Shards publish once a second: wait (bounded) until this shard's appends show.
    let mut text = String::new();
    for _ in 0..250 {
        text = scrape("/metrics");
        if text.contains("chainlog_records_appended_total{shard=\"0\"} 20") {
            break;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(20));
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for needle in [
        "chainlog_records_appended_total{shard=\"0\"} 20",
        "chainlog_append_stage_latency_seconds_count{shard=\"0\",stage=\"total\"} 20",
        "chainlog_append_stage_latency_seconds_bucket{shard=\"0\",stage=\"disk\",le=\"+Inf\"}",
        "chainlog_group_commit_batch_records_count{shard=\"0\"}",
        "chainlog_logs{shard=\"0\"} 1",
        // The first create wrote the snapshot: header 12, the entry 24 + "measured", CRC 4.
        "chainlog_catalog_bytes{shard=\"0\"} 48\n",
        "chainlog_connections{shard=\"0\"} 1",
        "chainlog_connections_max{shard=\"0\"} 4096",
        // One connection's receive buffer, at its start size (the appends are small).
        "chainlog_connections_receive_buffer_bytes{shard=\"0\"} 65536",
        "chainlog_requests_total{shard=\"0\",opcode=\"APPEND\"} 20",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The appends whose first LSN is a multiple of 16 are traced: LSNs 0 and 16, each with
    // its four times in order, on this host's CLOCK_MONOTONIC (the same clock as Instant).
    let traces = scrape("/traces");
    assert!(traces.starts_with("HTTP/1.1 200"), "{traces}");
    let (_, body) = traces.split_once("\r\n\r\n").expect("an end of headers");
    let lines: Vec<Vec<u64>> = body
        .lines()
        .filter(|l| !l.starts_with('#') && l.split_whitespace().count() == 7)
        .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
        .collect();
    let lsns: Vec<u64> = lines.iter().map(|l| l[2]).collect();
    assert_eq!(lsns, [0, 16], "{traces}");
    for line in &lines {
        assert_eq!((line[0], line[1]), (0, id), "{traces}");
        let times = &line[3..];
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{traces}");
    }
    drop(c);
    assert!(node.terminate().success());
}

/// A client that floods READs and never reads the answers costs the node bounded memory: the
/// shard stops handling a connection's requests while its queued output is at the limit
/// (8 MiB), instead of answering all of them into memory. 20,000 READs of 64 KiB each would be
/// 1.3 GB of answers.
#[test]
fn a_read_flood_that_is_never_read_costs_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut good = node.connect(0);
    let id = good.create("flooded");
    let kib = vec![b'k'; 1024];
    for lsn in 0..64 {
        assert_eq!(good.append(&AppendHeader::new(id), &[&kib]), Ok(lsn));
    }
    let rss_kib = || -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", node.pid())).expect("node status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS");
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmRSS value")
    };
    let before = rss_kib();
    let mut flood = node.connect(0);
    let mut out = Vec::new();
    for i in 0..20_000u64 {
        let read = ReadRequest {
            log_id: id,
            from_lsn: 0,
            max_records: 1000,
            max_bytes: 64 << 10,
        };
        encode_request(&mut out, 10_000 + i, &Request::Read(read));
    }
    flood.send(&out);
    // The shard handles connections in order: once the good client's requests are answered,
    // the flood's bytes that had arrived were handled as far as the node is willing to.
    for lsn in 64..164 {
        assert_eq!(good.append(&AppendHeader::new(id), &[&kib]), Ok(lsn));
        let _ = good.read(id, lsn);
    }
    let after = rss_kib();
    assert!(
        after < before + 256 * 1024,
        "the node's memory grew from {before} KiB to {after} KiB while a client did not read"
    );
    drop((good, flood));
    assert!(node.terminate().success());
}

/// A node started at a port in use (held here for the whole test, never released) says which
/// listener could not be bound and exits 1 before any shard serves: a shard's, or the
/// metrics'.
#[test]
fn a_node_at_a_port_in_use_names_the_listener_and_exits_1() {
    use chainlog::node::listen::bind_run;
    use std::net::{Ipv4Addr, SocketAddr};
    let held = bind_run(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 2).expect("two ports");
    let at = |i: usize| held[i].local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let shard = format!("shard 0: listening on {}: Address already in use", at(0));
    let metrics = format!("metrics: listening on {}: Address already in use", at(1));
    for (args, says) in [
        (["--listen", &at(0), "--shards", "2"], shard),
        (["--listen", "127.0.0.1:0", "--metrics", &at(1)], metrics),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chainlog"))
            .args(["node", "--no-pin", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run chainlog node");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&says), "{stderr}");
        assert!(output.stdout.is_empty(), "it never served");
    }
}

/// The ERROR of `response` as (code, arg0, message); panics on anything else.
fn refused(response: Response<'_>) -> (ErrorCode, u64, String) {
    match response {
        Response::Error(e) => (e.code, e.arg0, e.message.to_string()),
        other => panic!("expected an ERROR, got {other:?}"),
    }
}

/// PROTOCOL.md 3.2 and 6 (issue 16, P4 and P6): a node routes data requests and its log
/// administration alike, and WRONG_SHARD's message is worded as section 10.2's example.
#[test]
fn wrong_shard_is_answered_to_every_routed_request_as_the_spec_words_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 2);
    let mut shard0 = node.connect(0);
    // Log 7 is on shard 1 (7 % 2): section 10.2's example, message and all.
    let mut frame = Vec::new();
    let limits = shard0.limits;
    let mut append = AppendBuilder::new(&mut frame, 2, &AppendHeader::new(7), &limits);
    append.push(b"hello").expect("a record");
    append.finish();
    shard0.send(&frame);
    let append = shard0.receive(|rid, r| (rid, refused(r)));
    assert_eq!(
        append,
        (2, (ErrorCode::WrongShard, 1, "log 7 is on shard 1".into()))
    );
    shard0.next_id = 3;
    let by_id = shard0.call(
        &Request::DescribeLog(DescribeLogRequest { by: LogRef::Id(7) }),
        refused,
    );
    assert_eq!(
        by_id,
        (ErrorCode::WrongShard, 1, "log 7 is on shard 1".into())
    );
    let delete = shard0.call(&Request::DeleteLog { log_id: 7 }, refused);
    assert_eq!(
        delete,
        (ErrorCode::WrongShard, 1, "log 7 is on shard 1".into())
    );
    let read = shard0.call(
        &Request::Read(ReadRequest {
            log_id: 7,
            from_lsn: 0,
            max_records: 1,
            max_bytes: 1,
        }),
        refused,
    );
    assert_eq!(
        read,
        (ErrorCode::WrongShard, 1, "log 7 is on shard 1".into())
    );
    // By name: the message names the log.
    let name = (0..)
        .map(|i| format!("elsewhere-{i}"))
        .find(|n| chainlog::net::log_id_of(n) % 2 == 1)
        .expect("a name of shard 1");
    let expected = (
        ErrorCode::WrongShard,
        1,
        format!("log {name:?} is on shard 1"),
    );
    let create = shard0.call(
        &Request::CreateLog(CreateLogRequest {
            replication_factor: 1,
            name: &name,
        }),
        refused,
    );
    assert_eq!(create, expected);
    let by_name = shard0.call(
        &Request::DescribeLog(DescribeLogRequest {
            by: LogRef::Name(&name),
        }),
        refused,
    );
    assert_eq!(by_name, expected);
    // LIST_LOGS is not routed: every shard answers for its own logs.
    let listed = shard0.call(
        &Request::ListLogs(ListLogsRequest {
            after_log_id: 0,
            max: 10,
        }),
        |r| matches!(r, Response::ListLogs(_)),
    );
    assert!(listed);
    drop(shard0);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 6.3 (issue 16, P1): READ's `max_bytes` counts the bytes that travel (each
/// record's 40-byte header, payload and padding to 8), with at least one record.
#[test]
fn read_max_bytes_counts_the_bytes_that_travel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut c = node.connect(0);
    let id = c.create("sized");
    let lens = [0usize, 1, 5, 7, 8, 9, 1000, 65536];
    for len in lens {
        let payload = vec![b'x'; len];
        c.append(&AppendHeader::new(id), &[&payload])
            .expect("append");
    }
    let wire = |len: usize| 40 + len.next_multiple_of(8) as u32;
    // Sizes on the wire: 40, 48, 48, 48, 48, 56, 1040, 65576.
    let mut read = |from_lsn: u64, max_records: u32, max_bytes: u32| {
        c.call(
            &Request::Read(ReadRequest {
                log_id: id,
                from_lsn,
                max_records,
                max_bytes,
            }),
            |r| match r {
                Response::Read(read) => read
                    .records
                    .iter()
                    .map(|r| r.header.len as usize)
                    .collect::<Vec<_>>(),
                other => panic!("READ answered with {other:?}"),
            },
        )
    };
    let upto = |n: usize| lens[..n].iter().map(|&l| wire(l)).sum::<u32>();
    for n in 1..=lens.len() {
        assert_eq!(
            read(0, 100, upto(n)),
            lens[..n],
            "max_bytes exactly {n} records"
        );
        assert_eq!(
            read(0, 100, upto(n) - 1),
            lens[..(n - 1).max(1)],
            "max_bytes one short of {n} records"
        );
    }
    assert_eq!(read(0, 100, 0), lens[..1], "max_bytes 0: one record");
    assert_eq!(read(0, 100, 1), lens[..1], "max_bytes 1: one record");
    assert_eq!(
        read(7, 100, 100),
        [65536],
        "a record larger than max_bytes alone"
    );
    assert_eq!(read(0, 2, u32::MAX), lens[..2], "max_records bounds it too");
    assert_eq!(read(0, 100, u32::MAX), lens, "everything");
    drop(c);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 6.7 (issue 16, P2 and F5): a create of an existing log with its replication
/// factor succeeds (a retry whose answer was lost), with another one is LOG_EXISTS;
/// replication factor 0 asks for the server's default (1 on a standalone node).
#[test]
fn create_log_is_idempotent_and_0_asks_for_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut c = node.connect(0);
    let create = |c: &mut common::Client, name: &str, replication_factor: u8| {
        c.call(
            &Request::CreateLog(CreateLogRequest {
                replication_factor,
                name,
            }),
            |r| match r {
                Response::CreateLog(created) => Ok((created.log_id, created.shard)),
                Response::Error(e) => Err((e.code, e.arg0)),
                other => panic!("CREATE_LOG answered with {other:?}"),
            },
        )
    };
    let id = chainlog::net::log_id_of("kept");
    assert_eq!(create(&mut c, "kept", 1), Ok((id, 0)));
    assert_eq!(
        create(&mut c, "kept", 1),
        Ok((id, 0)),
        "the same create again"
    );
    assert_eq!(create(&mut c, "kept", 0), Ok((id, 0)), "the default is 1");
    assert_eq!(
        create(&mut c, "kept", 2),
        Err((ErrorCode::LogExists, id)),
        "another replication factor"
    );
    let fresh = chainlog::net::log_id_of("fresh");
    assert_eq!(
        create(&mut c, "fresh", 0),
        Ok((fresh, 0)),
        "a new log at the default"
    );
    assert_eq!(
        create(&mut c, "big", 2),
        Err((ErrorCode::TooLarge, 1)),
        "a single node offers 1"
    );
    let described = c.call(
        &Request::DescribeLog(DescribeLogRequest {
            by: LogRef::Name("fresh"),
        }),
        |r| match r {
            Response::DescribeLog(d) => d.replication_factor,
            other => panic!("{other:?}"),
        },
    );
    assert_eq!(described, 1);
    // The log is one log: a retried create did not make another or touch its records.
    assert_eq!(c.append(&AppendHeader::new(id), &[b"one"]), Ok(0));
    assert_eq!(create(&mut c, "kept", 1), Ok((id, 0)));
    assert_eq!(c.append(&AppendHeader::new(id), &[b"two"]), Ok(1));
    drop(c);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 6.4 (issue 16, P7): a SUBSCRIBE from above the tail is acknowledged at its
/// `from_lsn`, and its first push starts there once that LSN commits: the LSNs between the
/// tail and `from_lsn` are never pushed.
#[test]
fn a_subscription_from_above_the_tail_waits_for_its_first_lsn() {
    use chainlog::net::SubscribeRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut writer = node.connect(0);
    let mut reader = node.connect(0);
    let id = writer.create("ahead");
    for lsn in 0..2 {
        assert_eq!(
            writer.append(&AppendHeader::new(id), &[&payload(id, lsn)]),
            Ok(lsn)
        );
    }
    // The tail is 2; ask for 5.
    let mut out = Vec::new();
    let subscribe = SubscribeRequest {
        log_id: id,
        from_lsn: 5,
        credit_records: 100,
    };
    encode_request(&mut out, 7, &Request::Subscribe(subscribe));
    reader.send(&out);
    reader.receive(|rid, r| match r {
        Response::Subscribe(s) => assert_eq!((rid, s.start_lsn), (7, 5)),
        other => panic!("{other:?}"),
    });
    // LSNs 2..=6 commit one by one; pushes come in order, so had 2..=4 been pushed they
    // would come first.
    for lsn in 2..7 {
        assert_eq!(
            writer.append(&AppendHeader::new(id), &[&payload(id, lsn)]),
            Ok(lsn)
        );
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        reader.receive(|rid, r| match r {
            Response::Push(p) => {
                assert!(rid == 7 && !p.end);
                for v in p.batch.records.iter() {
                    seen.push((v.header.lsn, v.payload.to_vec()));
                }
            }
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(seen, [(5, payload(id, 5)), (6, payload(id, 6))]);
    drop((writer, reader));
    assert!(node.terminate().success());
}

/// PROTOCOL.md 6.1: a standalone node calls itself node 1 in its HELLO response, unless it
/// was started with `--node-id`; either way it is a node (role 0).
#[test]
fn a_standalone_node_is_node_1_unless_given_an_id() {
    use chainlog::net::Role;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(&dir.path().join("plain"), 1);
    let hello = node.connect(0).hello;
    assert_eq!((hello.node_id, hello.role), (1, Role::Node));
    assert!(node.terminate().success());
    let node = Node::start_with(&dir.path().join("named"), 1, None, &["--node-id", "7"]);
    let hello = node.connect(0).hello;
    assert_eq!((hello.node_id, hello.role), (7, Role::Node));
    assert!(node.terminate().success());
}

/// PROTOCOL.md 6.2: a writer's idempotency keys are remembered for its last 32 batches per
/// log, across a restart: the 32nd-latest batch resent gets its original LSN, the 33rd-latest
/// is WRITER_SEQ (`arg0` the writer's last), before and after the node restarts.
#[test]
fn a_writers_last_32_batches_are_remembered_across_a_restart() {
    const WINDOW: u64 = 32;
    let dir = tempfile::tempdir().expect("tempdir");
    let keyed = |id, seq| AppendHeader {
        writer_id: 77,
        writer_seq: seq,
        ..AppendHeader::new(id)
    };
    // Batch `seq` (1..=33) is one record at LSN seq - 1.
    let check = |c: &mut common::Client, id| {
        let last = WINDOW + 1;
        assert_eq!(c.append(&keyed(id, last), &[b"33"]), Ok(last - 1));
        assert_eq!(c.append(&keyed(id, 2), &[b"2"]), Ok(1), "the 32nd-latest");
        assert_eq!(
            c.append(&keyed(id, 1), &[b"1"]),
            Err((ErrorCode::WriterSeq, last)),
            "the 33rd-latest is forgotten"
        );
    };
    let node = Node::start(dir.path(), 1);
    let mut c = node.connect(0);
    let id = c.create("keyed");
    for seq in 1..=WINDOW + 1 {
        assert_eq!(
            c.append(&keyed(id, seq), &[seq.to_string().as_bytes()]),
            Ok(seq - 1)
        );
    }
    check(&mut c, id);
    drop(c);
    assert!(node.terminate().success());
    let node = Node::start(dir.path(), 1);
    let mut c = node.connect(0);
    check(&mut c, id);
    assert_eq!(c.append(&keyed(id, WINDOW + 2), &[b"34"]), Ok(WINDOW + 1));
    drop(c);
    assert!(node.terminate().success());
}

/// PROTOCOL.md 4 and 6.9: a LIST_LOGS page holds at most `list_max` (1000, fixed by version
/// 1) entries however many are asked for; the next page goes on after the last id.
#[test]
fn a_list_logs_page_holds_at_most_1000_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = Node::start(dir.path(), 1);
    let mut c = node.connect(0);
    // Pipelined: the node writes its catalog once per create, one after the other.
    let mut out = Vec::new();
    for i in 0..1001u64 {
        let name = format!("log-{i:04}");
        let request = Request::CreateLog(CreateLogRequest {
            replication_factor: 1,
            name: &name,
        });
        encode_request(&mut out, 100 + i, &request);
    }
    c.send(&out);
    for i in 0..1001u64 {
        c.receive(|rid, r| assert!(rid == 100 + i && matches!(r, Response::CreateLog(_))));
    }
    let page = |c: &mut common::Client, after| {
        c.call(
            &Request::ListLogs(ListLogsRequest {
                after_log_id: after,
                max: u32::MAX,
            }),
            |r| match r {
                Response::ListLogs(l) => l.entries.iter().map(|e| e.log_id).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            },
        )
    };
    let first = page(&mut c, 0);
    assert_eq!(first.len(), 1000);
    let second = page(&mut c, *first.last().expect("a full page"));
    assert_eq!(second.len(), 1);
    assert_eq!(page(&mut c, second[0]), Vec::<u64>::new());
    drop(c);
    assert!(node.terminate().success());
}
