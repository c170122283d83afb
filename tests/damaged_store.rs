//! A node whose data is damaged does not start as if its logs were shorter or gone: the real
//! `chainlog node`, stopped cleanly (SIGTERM), then its newest segment damaged at the end of
//! the committed frames (the last 4 KiB or 64 KiB zeroed, or one byte 2,000 bytes before the
//! end flipped), or its shard's catalog deleted. Started again, it must exit with a non-zero
//! code and the typed error naming the file (and the offset of the damage), logged at ERROR,
//! and never serve; with the data put back, it serves every record again. Each test stops the
//! nodes it started, by PID.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chainlog::net::AppendHeader;
use chainlog::storage::format::{
    block_align, check_frame, FrameHeader, BLOCK_SIZE, FRAME_HEADER_BYTES, FRAME_MAGIC,
};
use common::Node;

/// How long a node that must refuse to start may take to exit: a guard against hanging for
/// ever, never a timing assertion.
const EXIT_DEADLINE: Duration = Duration::from_secs(120);
/// Small segments start faster (they are zero-filled at the first start).
const SEGMENT_MIB: &str = "16";

/// A node process that must not start: killed and reaped when dropped (also when the test
/// fails because it did start).
struct Refusing(Child);

impl Drop for Refusing {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `chainlog node` on `dir` (one shard, on a port the kernel picks) expecting it to
/// refuse to start: returns its exit status and everything it wrote to stderr. Fails the test
/// if the node starts serving.
fn start_refused(dir: &Path) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args(["node", "--data-dir"])
        .arg(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--metrics",
            "off",
        ])
        .args([
            "--no-pin",
            "--durability",
            "dsync",
            "--segment-mib",
            SEGMENT_MIB,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chainlog node");
    let stderr = child.stderr.take().expect("stderr");
    let mut node = Refusing(child);
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = String::new();
    loop {
        match received.recv_timeout(EXIT_DEADLINE) {
            Ok(line) => {
                assert!(
                    !line.contains("shard serving"),
                    "the node serves a damaged shard:\n{log}{line}"
                );
                log.push_str(&line);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the node neither served nor exited:\n{log}")
            }
        }
    }
    let status = node.0.wait().expect("wait for the node");
    (status, log)
}

/// Checks that a refused start exited non-zero, logged at ERROR and said `what` (each part).
fn assert_refused(status: ExitStatus, log: &str, what: &[&str]) {
    assert!(!status.success(), "{status}:\n{log}");
    assert!(
        log.lines().any(|l| l.contains("ERROR")),
        "nothing logged at ERROR:\n{log}"
    );
    for part in what {
        assert!(log.contains(part), "the node did not say {part:?}:\n{log}");
    }
}

/// Where the frames of segment `id` (its bytes) end: each frame's header says how long it is,
/// and the first block that is not a valid frame of the segment is the end.
fn committed_end(bytes: &[u8], id: u64) -> usize {
    let mut at = BLOCK_SIZE;
    loop {
        let Some(head) = bytes.get(at..at + FRAME_HEADER_BYTES) else {
            return at;
        };
        let header: FrameHeader = bytemuck::pod_read_unaligned(head);
        let end = at + FRAME_HEADER_BYTES + header.body_len as usize;
        if header.magic != FRAME_MAGIC
            || end > bytes.len()
            || check_frame(&bytes[at..end], id).is_err()
        {
            return at;
        }
        at += block_align(end - at);
    }
}

fn payload(lsn: u64) -> Vec<u8> {
    format!("record {lsn};")
        .bytes()
        .cycle()
        .take(3000)
        .collect()
}

/// Creates `name` on a one-shard node in `dir` and appends `records` records one at a time
/// (each acknowledged before the next), then stops the node cleanly. Returns the log's id.
fn fill_and_stop(dir: &Path, name: &str, records: u64) -> u64 {
    let node = Node::start_with(dir, 1, None, &["--segment-mib", SEGMENT_MIB]);
    let mut client = node.connect(0);
    let id = client.create(name);
    for lsn in 0..records {
        assert_eq!(
            client.append(&AppendHeader::new(id), &[&payload(lsn)]),
            Ok(lsn)
        );
    }
    drop(client);
    let status = node.terminate();
    assert!(status.success(), "the node stops cleanly: {status}");
    id
}

/// Starts the node on `dir` again and reads `id` back: every record is there.
fn serves_every_record(dir: &Path, id: u64, records: u64) {
    let node = Node::start_with(dir, 1, None, &["--segment-mib", SEGMENT_MIB]);
    let (tail, got) = node.connect(0).read_all(id, 0).expect("read");
    assert_eq!(tail, records);
    let want: Vec<(u64, Vec<u8>)> = (0..records).map(|lsn| (lsn, payload(lsn))).collect();
    assert_eq!(got, want);
    assert!(node.terminate().success());
}

fn store_dir(dir: &Path) -> PathBuf {
    dir.join("shard-0").join("store")
}

#[test]
fn damage_at_the_end_of_the_newest_segment_after_a_clean_stop() {
    const RECORDS: u64 = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = fill_and_stop(dir.path(), "damaged", RECORDS);
    // Every record fits the first segment: it is the newest with frames.
    let segment = store_dir(dir.path()).join(format!("{:020}.seg", 1));
    let whole = std::fs::read(&segment).expect("segment 1");
    let end = committed_end(&whole, 1);
    assert!(
        end >= 2 * BLOCK_SIZE + RECORDS as usize * 3000,
        "the records end at {end}"
    );
    let zero = |from: usize| {
        let mut damaged = whole.clone();
        damaged[from..end].fill(0);
        damaged
    };
    let mut flipped = whole.clone();
    flipped[end - 2000] ^= 0x01;
    // One record of 3000 bytes per frame (a 4 KiB block): a flip 2,000 bytes before the end
    // is in the last record.
    for (what, damaged, at) in [
        ("the last 4 KiB zeroed", zero(end - 4096), end - 4096),
        ("the last 64 KiB zeroed", zero(end - 65536), end - 65536),
        (
            "a byte 2,000 bytes before the end flipped",
            flipped,
            end - 4096,
        ),
    ] {
        std::fs::write(&segment, &damaged).expect("damage the segment");
        let (status, log) = start_refused(dir.path());
        assert_refused(
            status,
            &log,
            &[
                &segment.display().to_string(),
                &format!("corrupt at offset {at}"),
            ],
        );
        eprintln!("{what}: refused as it must be");
    }
    std::fs::write(&segment, &whole).expect("restore the segment");
    serves_every_record(dir.path(), id, RECORDS);
}

#[test]
fn a_deleted_catalog_stops_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = fill_and_stop(dir.path(), "listed", 3);
    let catalog = dir.path().join("shard-0").join("catalog");
    let kept = std::fs::read(&catalog).expect("the catalog");
    std::fs::remove_file(&catalog).expect("delete the catalog");
    let (status, log) = start_refused(dir.path());
    assert_refused(
        status,
        &log,
        &[&catalog.display().to_string(), "the catalog is missing"],
    );
    // The refused start left the store stopped cleanly, as it found it.
    assert!(store_dir(dir.path()).join("clean-stop").exists());
    std::fs::write(&catalog, &kept).expect("restore the catalog");
    serves_every_record(dir.path(), id, 3);
}
