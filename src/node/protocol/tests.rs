//! The server's handling of cluster maps against a store on a simulated disk.

use std::path::Path;
use std::sync::Arc;

use chainlog_net::cluster::{ClusterMap, MapLog, MapNode};
use chainlog_net::{
    decode_response, parse_frame, Keys, Limits, PullRequest, RecordForm, Records, ReplicateHeader,
    ReplicateKind, ReplicateRequest, Response,
};
use chainlog_storage::io::{FaultConfig, SimIo};
use chainlog_storage::{
    AppendOptions, Batch, ReadOutput, Record, SimDisk, Store, StoreConfig, StoredRun,
};

use super::{Identity, Server};
use crate::node::catalog::{Catalog, StoreLogs};
use crate::node::learners::{store_learned, Learned};
use crate::node::reads::{Owner, Reads};
use crate::node::records::encode_run;
use crate::node::replicas::{keys_below, UNANSWERED};

const LOG: u64 = 7;
/// The writer of the keyed batches.
const WRITER: u64 = 40;

/// A node's only shard: its server and store.
type SimNode = (Server, Store<SimIo>);

fn map(version: u64, epoch: u64, chain: &[u64]) -> ClusterMap {
    map_with_learners(version, epoch, 0, chain, &[])
}

fn map_with_learners(
    version: u64,
    epoch: u64,
    start_lsn: u64,
    chain: &[u64],
    learners: &[u64],
) -> ClusterMap {
    map_trimmed(version, epoch, (start_lsn, 0), chain, learners)
}

/// A map whose epoch starts at `start_lsn`, trimmed at `trim_lsn`.
fn map_trimmed(
    version: u64,
    epoch: u64,
    (start_lsn, trim_lsn): (u64, u64),
    chain: &[u64],
    learners: &[u64],
) -> ClusterMap {
    let nodes = (1..=2)
        .map(|node_id| MapNode {
            node_id,
            addr: format!("10.0.0.{node_id}:7400"),
            shard_count: 1,
            alive: true,
            drained: false,
            last_heartbeat_ms: 0,
            zone: String::new(),
            rack: String::new(),
        })
        .collect();
    let log = MapLog {
        log_id: LOG,
        name: "orders".to_string(),
        replication_factor: 2,
        epoch,
        start_lsn,
        trim_lsn,
        chain: chain.to_vec(),
        learners: learners.to_vec(),
        created_version: 1,
    };
    ClusterMap::new(version, nodes, vec![log])
}

/// Node 1's only shard, on an empty store of `disk` and a catalog in `dir`.
fn server(disk: &SimDisk, dir: &Path) -> SimNode {
    node(1, disk, dir)
}

/// Node `node_id`'s only shard, on an empty store of `disk` and a catalog in `dir`.
fn node(node_id: u64, disk: &SimDisk, dir: &Path) -> SimNode {
    let clock = Arc::new(disk.clock());
    let io = disk.io(FaultConfig {
        seed: 1,
        latency_us_max: 50,
        ..FaultConfig::default()
    });
    let store = Store::open(
        io,
        Path::new("/store"),
        StoreConfig::default(),
        clock.clone(),
    )
    .expect("open the store");
    let logs = StoreLogs {
        new: true,
        log_ids: Vec::new(),
    };
    let catalog = Catalog::open(dir, &logs).expect("open the catalog");
    let who = Identity {
        shard_index: 0,
        shard_count: 1,
        node_id,
        limits: Limits::DEFAULT,
        cluster: true,
    };
    let server = Server::new(who, catalog, &store, clock);
    (server, store)
}

/// Everything in flight made durable, its acks handled as a shard turn handles them.
fn sync(server: &mut Server, store: &mut Store<SimIo>) {
    let mut acks = Vec::new();
    store.sync_all(&mut acks).expect("sync");
    server.store_acked(&acks, &mut Vec::new());
}

/// A node sealed out of a log's chain, and taken back into it as a new replica while the
/// trims of its old copy were still in flight: installing the new epoch starts the log again
/// empty here and waits for the store, which reports those trims. They are the old copy's:
/// counted against the new replica (next LSN 0), the trim past its records stopped the shard
/// (`trimmed durably past the records`).
#[test]
fn the_acks_an_install_collects_belong_to_the_replica_they_were_made_for() {
    let disk = SimDisk::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, mut store) = server(&disk, dir.path());
    server.apply_map(&map(1, 1, &[1]), &mut store);
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 16]).collect();
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    let lsns = store.append(LOG, 1, &records, UNANSWERED).expect("append");
    let replica = server.replicas.get_mut(LOG).expect("installed");
    replica.stored(lsns.start, lsns.end, None);
    sync(&mut server, &mut store);
    assert_eq!(server.replicas.get(LOG).map(|r| r.durable_lsn()), Some(10));
    store.trim(LOG, 8, UNANSWERED).expect("trim");
    // Sealed out: the log leaves this node (its records are trimmed away, not durably yet).
    server.apply_map(&map(2, 2, &[2]), &mut store);
    assert!(server.replicas.get(LOG).is_none());
    // Back in the chain, at its tail: a new replica, empty.
    server.apply_map(&map(3, 3, &[2, 1]), &mut store);
    let mut tokens = Vec::new();
    server.store_acked(&[], &mut tokens);
    assert_eq!(
        tokens.len(),
        3,
        "the two trims and the reset, answered to nobody"
    );
    sync(&mut server, &mut store);
    let replica = server.replicas.get(LOG).expect("installed");
    assert_eq!((replica.next_lsn(), replica.durable_lsn()), (0, 0));
    assert_eq!(
        store.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
        Some((0, 0))
    );
}

/// Appends `payloads` to `LOG` at `server`'s head and makes them durable.
fn append(server: &mut Server, store: &mut Store<SimIo>, epoch: u64, payloads: &[&[u8]]) {
    let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
    let lsns = store
        .append(LOG, epoch, &records, UNANSWERED)
        .expect("append");
    stored(server, &lsns);
    sync(server, store);
}

/// Tells `server`'s replica of `LOG` that its store took the records `lsns` (as a shard does
/// after a store append).
fn stored(server: &mut Server, lsns: &std::ops::Range<u64>) {
    let replica = server.replicas.get_mut(LOG).expect("a replica here");
    replica.stored(lsns.start, lsns.end, None);
}

/// One learner PULL of node `learner` to `source` (in `epoch`), answered and stored as the
/// learner's link stores it, and made durable. Returns (first LSN, records) of the answer.
fn learn_once(
    source: &mut SimNode,
    learner: &mut Store<SimIo>,
    learner_id: u64,
    epoch: u64,
) -> (u64, u32) {
    let answer = learn_unsynced(source, learner, learner_id, epoch);
    let mut acks = Vec::new();
    learner.sync_all(&mut acks).expect("sync");
    answer
}

/// As [`learn_once`], leaving the stored records on their way to the disk.
fn learn_unsynced(
    source: &mut SimNode,
    learner: &mut Store<SimIo>,
    learner_id: u64,
    epoch: u64,
) -> (u64, u32) {
    let from = learner.tail(LOG).map_or(0, |t| t.next_lsn);
    let pull = PullRequest {
        log_id: LOG,
        epoch,
        from_lsn: from,
        max_records: 4,
        learner: true,
    };
    let mut out = Vec::new();
    let (server, store) = source;
    let mut reads = Reads::default();
    let mut read = None;
    while out.is_empty() {
        server
            .replicas
            .pull(
                Some(learner_id),
                store,
                &mut reads,
                0,
                9,
                &pull,
                read.take(),
                &mut out,
            )
            .expect("a learner PULL is answered");
        if out.is_empty() {
            // Its records wait for the disk: it is answered with them once they are read.
            read = Some(read_runs(store, &mut reads));
        }
    }
    // The answer is one PULL response per run, all but the last with `more`.
    let limits = Limits::DEFAULT.replication();
    let (mut consumed, mut answer, mut more, mut asked) = (0, None, true, from);
    while more {
        let frame = parse_frame(&out[consumed..], &limits)
            .expect("a frame")
            .expect("whole");
        consumed += frame.frame_bytes();
        let Ok(Response::Pull(p)) = decode_response(&frame, &limits) else {
            panic!("not a PULL answer");
        };
        let learned = Learned {
            log_id: LOG,
            epoch: p.epoch,
            asked,
            first: p.first_lsn,
            fencing_token: p.fencing_token,
            writer: (p.writer_id, p.writer_seq),
            count: p.records.count(),
            records: p.records.bytes(),
            keys: &keys_below(&p.keys, p.first_lsn),
        };
        let stored = store_learned(learner, &learned).expect("stored");
        assert!(stored.is_some(), "an answer to the copy's PULL");
        asked = p.first_lsn + u64::from(p.records.count());
        let (first, count) = answer.unwrap_or((p.first_lsn, 0));
        answer = Some((first, count + p.records.count()));
        more = p.more;
    }
    assert_eq!(consumed, out.len(), "nothing after the last run");
    answer.expect("an answer")
}

/// Waits for the read waiting in `reads` (its disk reads) and returns its runs.
fn read_runs(store: &mut Store<SimIo>, reads: &mut Reads) -> Vec<StoredRun> {
    let mut done = Vec::new();
    while done.is_empty() {
        store.poll(true, &mut Vec::new()).expect("poll");
        store.take_reads(&mut done);
    }
    let done = done.pop().expect("one read");
    assert!(matches!(reads.finish(done.token), Owner::Answer { .. }));
    match done.result {
        Ok(ReadOutput::Runs(runs)) => runs,
        other => panic!("a read of runs, not {other:?}"),
    }
}

/// The records of `LOG` in `store` from `from`: (LSN, epoch, payload).
fn records(store: &mut Store<SimIo>, from: u64) -> Vec<(u64, u64, Vec<u8>)> {
    store
        .read_stored(LOG, from, usize::MAX, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|r| (r.lsn, r.epoch, r.payload.to_vec()))
        .collect()
}

/// A member sealed out of a log's chain and then made its learner: what it held may be a
/// suffix never acknowledged, so it copies the log from nothing; it copies only committed
/// records, from the source's trim point; and when the next epoch puts it in the chain it
/// keeps its copy (committed records are below every later epoch's start) instead of
/// starting empty again.
#[test]
fn a_learner_copies_committed_records_and_keeps_them_when_it_joins_the_chain() {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let disks = [SimDisk::new(), SimDisk::new()];
    let mut one = node(1, &disks[0], dirs[0].path());
    let mut two = node(2, &disks[1], dirs[1].path());
    // Epoch 1: node 1 alone; it sequences records that node 2 never gets.
    one.0.apply_map(&map(1, 1, &[1]), &mut one.1);
    append(
        &mut one.0,
        &mut one.1,
        1,
        &[b"lost-0", b"lost-1", b"lost-2"],
    );
    // Epoch 2 (as if node 1 had been sealed out with nothing acknowledged): node 2 alone,
    // from 0; node 1 its learner.
    let epoch2 = map_with_learners(2, 2, 0, &[2], &[1]);
    two.0.apply_map(&epoch2, &mut two.1);
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'a' + i; 20]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    append(&mut two.0, &mut two.1, 2, &refs);
    two.1.trim(LOG, 3, UNANSWERED).expect("trim");
    sync(&mut two.0, &mut two.1);
    // Two more stored at the source, not durable there yet: not committed.
    let uncommitted = [Record::new(b"maybe-0"), Record::new(b"maybe-1")];
    let lsns = two
        .1
        .append(LOG, 2, &uncommitted, UNANSWERED)
        .expect("append");
    stored(&mut two.0, &lsns);
    one.0.apply_map(&epoch2, &mut one.1);
    assert!(one.0.replicas.get(LOG).is_none(), "no replica: a learner");
    assert_eq!(
        one.0
            .replicas
            .learners
            .get(LOG)
            .map(|l| (l.epoch, l.source)),
        Some((2, 2))
    );
    assert_eq!(
        one.1.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
        Some((0, 0)),
        "the records it sequenced itself are gone"
    );
    // The copy starts at the source's trim point, then takes committed records only.
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (3, 0));
    assert_eq!(
        one.1.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
        Some((3, 3))
    );
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (3, 4));
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (7, 3));
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (10, 0), "caught up");
    assert_eq!(records(&mut one.1, 3), records(&mut two.1, 3)[..7].to_vec());
    // Keyed batches are runs of their own: one answer brings several, each with its key.
    for seq in 1..=3u64 {
        let options = chainlog_storage::AppendOptions {
            writer: Some((77, seq)),
            ..Default::default()
        };
        let batch = [Record::new(b"keyed")];
        let (lsns, _) = two
            .1
            .append_batch(LOG, 2, &options, Batch::Records(&batch), false, UNANSWERED)
            .expect("append");
        stored(&mut two.0, &lsns);
    }
    sync(&mut two.0, &mut two.1);
    // Records 10 and 11 (durable now: committed) and two of the keyed batches, in one
    // answer of 3 runs (the PULL asks for 4 records); then the third batch.
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (10, 4));
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (14, 1));
    assert_eq!(records(&mut one.1, 3), records(&mut two.1, 3));
    // Epoch 3: node 1 joins at the tail. It keeps its copy, settles, and its TAIL_HINT
    // epoch is the chain's.
    one.0
        .apply_map(&map_with_learners(3, 3, 15, &[2, 1], &[]), &mut one.1);
    assert!(one.0.replicas.learners.get(LOG).is_none());
    let replica = one.0.replicas.get(LOG).expect("a replica now");
    assert_eq!((replica.epoch(), replica.next_lsn()), (3, 15));
    assert_eq!(records(&mut one.1, 3).len(), 12, "the copy is kept");
    assert_eq!(
        replica.readable(),
        15,
        "its copy is committed: served at once"
    );
    // Appends it sequenced as head in epoch 1 stay unanswered; those of epoch 3 are answered.
    assert_eq!(one.0.rebuilt_in.get(&LOG), Some(&3));
}

/// Node 2 alone in epoch 2, empty; node 1 its learner. Returns the catalogs' directories
/// (kept until the test ends) and both nodes.
fn learning() -> ([tempfile::TempDir; 2], SimNode, SimNode) {
    let dirs = [
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    ];
    let mut one = node(1, &SimDisk::new(), dirs[0].path());
    let mut two = node(2, &SimDisk::new(), dirs[1].path());
    let epoch2 = map_with_learners(2, 2, 0, &[2], &[1]);
    two.0.apply_map(&epoch2, &mut two.1);
    one.0.apply_map(&epoch2, &mut one.1);
    (dirs, one, two)
}

/// As [`learning`], node 2 with 8 records of 20 bytes, durable, nothing copied yet.
fn learning_eight_records() -> ([tempfile::TempDir; 2], SimNode, SimNode) {
    let (dirs, one, mut two) = learning();
    let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 20]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    append(&mut two.0, &mut two.1, 2, &refs);
    sync(&mut two.0, &mut two.1);
    (dirs, one, two)
}

/// A trim the chain acknowledged while a learner copied the log never reaches the learner
/// (a PULL answer carries records, not the source's trim point). When the next epoch puts
/// the learner in the chain, it trims to the epoch's trim point before it installs the
/// epoch: were it the only member left, the trim would otherwise go back. A learner whose
/// copy ends below that trim point lacks what the chain trimmed and starts again empty, as
/// a new replica.
#[test]
fn a_promoted_learner_trims_to_the_epochs_trim_point() {
    // (learner PULLs of 4 records, the chain's trim, the learner's (next, trim) after).
    for (pulls, trim, after) in [(2, 5, (8, 5)), (1, 6, (0, 0))] {
        let (_dirs, mut one, mut two) = learning_eight_records();
        for pull in 0..pulls {
            assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (4 * pull, 4));
        }
        // The chain trims after the learner copied past the trim point (or while it is
        // still below it): the trim is not copied.
        two.1.trim(LOG, trim, UNANSWERED).expect("trim");
        sync(&mut two.0, &mut two.1);
        assert_eq!(
            one.1.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
            Some((4 * pulls, 0))
        );
        // Epoch 3 (sealed at 8, trimmed at `trim`) with the learner at the tail.
        one.0
            .apply_map(&map_trimmed(3, 3, (8, trim), &[2, 1], &[]), &mut one.1);
        assert_eq!(
            one.1.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
            Some(after),
            "trimmed to {trim}, or a new replica below it"
        );
        assert_eq!(
            records(&mut one.1, after.1),
            records(&mut two.1, trim)[..(after.0 - after.1) as usize]
        );
        let replica = one.0.replicas.get(LOG).expect("a replica now");
        assert_eq!(replica.epoch(), 3);
    }
}

/// Appends keyed batches of writer [`WRITER`] to `LOG` at `server`'s head, one per entry of
/// `sizes` (records of 20 bytes), sequence numbers from 1, and makes them durable.
fn append_keyed(server: &mut Server, store: &mut Store<SimIo>, epoch: u64, sizes: &[usize]) {
    for (seq, &size) in (1..).zip(sizes) {
        let payloads: Vec<Vec<u8>> = (0..size).map(|i| vec![seq as u8 + i as u8; 20]).collect();
        let records: Vec<Record<'_>> = payloads.iter().map(|p| Record::new(p)).collect();
        let options = AppendOptions {
            writer: Some((WRITER, seq)),
            ..AppendOptions::default()
        };
        let (lsns, _) = store
            .append_batch(LOG, epoch, &options, Batch::Records(&records), false, 0)
            .expect("append");
        stored(server, &lsns);
    }
    sync(server, store);
}

/// What a head answers a retry of a keyed batch.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// The batch's original LSNs.
    Original(std::ops::Range<u64>),
    /// A batch it does not know: it would append it (at the log's tail).
    New,
    /// Neither new nor known: refused (WriterSeq), appended nowhere.
    Refused,
}

/// What `store`, at the head, answers a retry of writer [`WRITER`]'s batch `seq` (with a
/// condition that never holds, so that a batch taken for new is not appended).
fn retry(store: &mut Store<SimIo>, seq: u64) -> Retry {
    let options = AppendOptions {
        writer: Some((WRITER, seq)),
        expected_lsn: Some(u64::MAX - 1),
        ..AppendOptions::default()
    };
    let batch = Batch::Records(&[Record::new(b"retry")]);
    match store.append_batch(LOG, 3, &options, batch, false, 0) {
        Ok((lsns, _)) => Retry::Original(lsns),
        Err(chainlog_storage::Error::ConditionFailed { .. }) => Retry::New,
        Err(chainlog_storage::Error::WriterSeq { .. }) => Retry::Refused,
        Err(e) => panic!("retry: {e}"),
    }
}

/// A learner whose source trimmed past its copy starts the log at the trim point with the
/// source's idempotency keys of the batches that begin below it: once it is the head, a
/// retry of one of them is answered with its LSNs, not appended again (a duplicate the
/// simulator found after a reconfiguration). That includes the batch the trim point cuts
/// through, whose records from there are copied without their key (a retry of it was
/// refused).
#[test]
fn a_learner_that_starts_at_the_trim_point_takes_the_keys_below_it() {
    let (_dirs, mut one, mut two) = learning();
    // Batches 0..3, 3..6, 6..9, 9..11; trimmed at 7.
    append_keyed(&mut two.0, &mut two.1, 2, &[3, 3, 3, 2]);
    two.1.trim(LOG, 7, UNANSWERED).expect("trim");
    sync(&mut two.0, &mut two.1);
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (7, 0));
    while learn_once(&mut two, &mut one.1, 1, 2).1 > 0 {}
    assert_eq!(
        one.1.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
        Some((11, 7))
    );
    let answers: Vec<Retry> = (1..=4).map(|seq| retry(&mut one.1, seq)).collect();
    use Retry::*;
    assert_eq!(
        answers,
        [
            Original(0..3),
            Original(3..6),
            Original(6..9),
            Original(9..11)
        ]
    );
}

/// A replica that joined a chain empty skips to its predecessor's trim point on the TRIM
/// that says so, and takes the keys that TRIM carries: those of the batches that begin below
/// it, the one it cuts through included (a retry of that one was appended again). That key
/// names LSNs the replica gets later in the epoch; if the next epoch starts before they came
/// (they were never acknowledged, and will hold other records), the replica forgets it as it
/// installs that epoch, and a retry of the batch is new there.
#[test]
fn a_replica_that_skips_to_the_trim_point_takes_the_keys_below_it() {
    use Retry::*;
    for (copied, start, cut_batch) in [(false, 7, New), (true, 9, Original(6..9))] {
        let dirs = [
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        ];
        let mut one = node(1, &SimDisk::new(), dirs[0].path());
        let mut two = node(2, &SimDisk::new(), dirs[1].path());
        for (server, store) in [&mut one, &mut two] {
            server.apply_map(&map(2, 2, &[2, 1]), store);
        }
        // Node 2, the head: batches 0..3, 3..6, 6..9, 9..11, trimmed at 7.
        append_keyed(&mut two.0, &mut two.1, 2, &[3, 3, 3, 2]);
        two.1.trim(LOG, 7, UNANSWERED).expect("trim");
        sync(&mut two.0, &mut two.1);
        let keys = two.1.writer_keys(LOG, 7);
        let mut key_bytes = Vec::new();
        let request = ReplicateRequest {
            header: ReplicateHeader {
                trim_before: 7,
                fencing_token: 0,
                ..ReplicateHeader::new(ReplicateKind::Trim, LOG, 2, 11, 11)
            },
            records: Records::EMPTY,
            keys: Keys::encode(&mut key_bytes, &keys),
        };
        let (server, store) = &mut one;
        server
            .replicas
            .replicate(Some(2), store, 5, &request, 0)
            .expect("the trim is taken");
        sync(server, store);
        assert_eq!(
            store.tail(LOG).map(|t| (t.next_lsn, t.trim_point)),
            Some((7, 7))
        );
        if copied {
            // The cut batch's records from 7 come as the head sends them: without its key.
            let runs = two.1.read_stored_runs(LOG, 7, 2, usize::MAX).expect("read");
            let mut body = Vec::new();
            let (count, state) = encode_run(&mut body, LOG, &runs[0], usize::MAX);
            assert_eq!((count, state.writer), (2, None));
            let form = RecordForm::Replicated {
                log_id: LOG,
                epoch: 2,
                first_lsn: 7,
            };
            let limits = Limits::DEFAULT.replication();
            let request = ReplicateRequest {
                header: ReplicateHeader::new(ReplicateKind::Records, LOG, 2, 7, 7),
                records: Records::parse(&body, count, form, &limits).expect("records"),
                keys: Keys::EMPTY,
            };
            server
                .replicas
                .replicate(Some(2), store, 6, &request, 0)
                .expect("the records are taken");
            sync(server, store);
        }
        // Epoch 2 sealed, epoch 3 (node 1 alone) starts at `start`.
        server.replicas.seal(LOG, 2).expect("seal");
        server.catalog.seal(LOG, 2).expect("catalog seal");
        server.apply_map(&map_with_learners(3, 3, start, &[1], &[]), store);
        assert_eq!(store.tail(LOG).map(|t| t.next_lsn), Some(start));
        let answers: Vec<Retry> = (1..=3).map(|seq| retry(store, seq)).collect();
        assert_eq!(
            answers,
            [Original(0..3), Original(3..6), cut_batch],
            "records of the cut batch here: {copied}"
        );
    }
}

/// A learner promoted while its last copied records are still on their way to the disk
/// makes them durable before it installs the epoch: its replica counts what the store holds
/// as durable, and would serve a committed tail that a READ finds nothing below (the
/// simulator's reader saw "a READ from the committed LSN 228 (tail 234) returned no
/// record").
#[test]
fn a_promoted_learner_serves_only_durable_records() {
    let (_dirs, mut one, mut two) = learning_eight_records();
    assert_eq!(learn_once(&mut two, &mut one.1, 1, 2), (0, 4));
    assert_eq!(learn_unsynced(&mut two, &mut one.1, 1, 2), (4, 4));
    one.0
        .apply_map(&map_with_learners(3, 3, 8, &[2, 1], &[]), &mut one.1);
    let durable = one.1.tail(LOG).expect("log").durable_lsn;
    let readable = one.0.replicas.get(LOG).expect("a replica").readable();
    assert_eq!((durable, readable), (8, 8));
    let read = one.1.read(LOG, 4, 10, usize::MAX).expect("read");
    assert_eq!(read.len(), 4, "every record below the tail it serves");
}

/// A map older than the epoch a node installed changes nothing there: one that named the
/// node a learner would otherwise make the member start its copy again from nothing.
#[test]
fn an_older_map_that_names_a_member_a_learner_changes_nothing() {
    let disk = SimDisk::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, mut store) = server(&disk, dir.path());
    server.apply_map(&map_with_learners(3, 3, 0, &[1, 2], &[]), &mut store);
    append(&mut server, &mut store, 3, &[b"kept-0", b"kept-1"]);
    server.apply_map(&map_with_learners(2, 2, 0, &[2], &[1]), &mut store);
    assert!(server.replicas.learners.get(LOG).is_none(), "not a learner");
    let replica = server.replicas.get(LOG).expect("still a replica");
    assert_eq!((replica.epoch(), replica.next_lsn()), (3, 2));
    assert_eq!(records(&mut store, 0).len(), 2, "its records are kept");
}

/// A replica that seals an epoch and goes on in the next one (here the head) knows that what
/// was committed stays committed: READ and TAIL_HINT there keep serving it while the new
/// chain settles, instead of a committed tail of 0 until the successor answers (a reader
/// saw the log go back, and the history check read an empty head).
#[test]
fn a_survivor_serves_what_was_committed_while_its_new_epoch_settles() {
    let disk = SimDisk::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, mut store) = server(&disk, dir.path());
    server.apply_map(&map(1, 1, &[1]), &mut store);
    append(&mut server, &mut store, 1, &[b"c-0", b"c-1", b"c-2"]);
    assert_eq!(server.replicas.readable(LOG), 3);
    server.replicas.seal(LOG, 1).expect("seal");
    server.catalog.seal(LOG, 1).expect("catalog seal");
    server.apply_map(&map_with_learners(2, 2, 3, &[1, 2], &[]), &mut store);
    let replica = server.replicas.get(LOG).expect("a replica of epoch 2");
    assert_eq!((replica.epoch(), replica.next_lsn()), (2, 3));
    assert_eq!(
        replica.readable(),
        3,
        "committed in epoch 1, served in epoch 2"
    );
}
