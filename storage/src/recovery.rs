//! Recovery: rebuild a shard's state from its segments, truncating a torn tail and reporting
//! (never truncating) damage to committed data.
//!
//! The scan follows the frame chain from the oldest segment's snapshot frame: a frame continues
//! the chain when its CRC holds, its `seq` is the next one and its `prev_crc` is the previous
//! frame's CRC. Where the chain stops decides what the rest is:
//!
//! - After a clean stop (`Store::close` left a [`CleanStop`] record), every frame up to the
//!   record's `last_seq` was durable and none was in flight: the chain must end exactly there.
//!   If it stops before, committed data is damaged or missing: that is corruption, reported at
//!   the offset where the chain stops. Nothing is a torn tail.
//! - After a crash (no record), the rest of the shard's blocks are scanned for valid frames: if
//!   any says `durable_seq >= s` (frame `s` being where the chain stopped), frame `s` had been
//!   durable (and maybe acknowledged) and is now damaged: corruption. Otherwise `s` and
//!   everything after it were in flight when the process stopped (never acknowledged): the tail
//!   is torn and the store resumes writing at that offset. A frame is built with `durable_seq`
//!   at least its `seq - writes_in_flight_max`, so at most the last `writes_in_flight_max`
//!   frames before any surviving frame can be taken for a torn tail.
//!
//! Recovery only deletes segments past the end (keeping one as the spare) and, once the chain
//! checked out, the clean-stop record (durably, before the store writes anything), so running
//! it twice gives the same state.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::{
    snapshot_entry_bytes, CleanStop, ControlRecord, FrameFault, FrameKind, Records, SnapshotEntry,
    StateRecord, BLOCK_SIZE, CLEAN_STOP_FILE, CLEAN_STOP_MAGIC, CLEAN_STOP_VERSION, CONTROL_FENCE,
    CONTROL_RECORD_BYTES, CONTROL_RESET, CONTROL_TRIM, CONTROL_TRUNCATE, CONTROL_WRITER,
    FORMAT_VERSION, STATE_RECORD_BYTES, SYSTEM_LOG,
};
use crate::io::{FileId, Io};
use crate::log::LogState;
use crate::segment::{check_header, parse_segment_name, read_sync, Segment, Window};
use crate::writers::Writers;

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments holding the recovered history.
    pub segments: usize,
    /// Frames replayed.
    pub frames: u64,
    /// Records replayed (all logs, control records included).
    pub records: u64,
    /// Where a torn tail was cut: the segment and the offset writing resumes at.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// The store had been stopped cleanly (`Store::close`): its frames were checked to end
    /// exactly where it stopped, and nothing was cut.
    pub clean_stop: bool,
    /// Segment files removed (past the end, or never finished).
    pub removed: Vec<PathBuf>,
}

/// The state recovery hands to the store.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Oldest first; the last is the active segment. Empty for a new store.
    pub(crate) segments: VecDeque<Segment>,
    /// A prepared segment after the active one, reused as the next.
    pub(crate) spare: Option<Segment>,
    /// Where the next frame goes in the active segment.
    pub(crate) active_offset: u64,
    /// The next frame must be a snapshot (the active segment has none yet).
    pub(crate) need_snapshot: bool,
    pub(crate) next_seq: u64,
    pub(crate) last_crc: u32,
    pub(crate) logs: HashMap<u64, LogState>,
    pub(crate) system_next_lsn: u64,
    /// The idempotency table.
    pub(crate) writers: Writers,
    pub(crate) report: RecoveryReport,
}

struct SegFile {
    id: u64,
    path: PathBuf,
    file: FileId,
    size: u64,
}

const WINDOW_BYTES: usize = 4 << 20;

/// Recovers the shard in `dir` (created if missing), remembering at most `writers_max`
/// writers' idempotency windows.
pub(crate) fn recover<I: Io>(io: &mut I, dir: &Path, writers_max: usize) -> Result<Recovered> {
    io.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut report = RecoveryReport::default();
    let mut ids = Vec::new();
    let mut clean_stop_file = false;
    for name in io.list_dir(dir).map_err(|e| Error::io(dir, e))? {
        if name == CLEAN_STOP_FILE {
            clean_stop_file = true;
            continue;
        }
        match parse_segment_name(&name) {
            Some(id) => ids.push(id),
            None => {
                return Err(Error::UnexpectedFile {
                    path: dir.join(name),
                })
            }
        }
    }
    let clean_stop_path = dir.join(CLEAN_STOP_FILE);
    let clean_stop = match clean_stop_file {
        true => read_clean_stop(io, &clean_stop_path)?,
        false => None,
    };
    ids.sort_unstable();
    for pair in ids.windows(2) {
        if pair[1] != pair[0] + 1 {
            let missing = dir.join(crate::segment::segment_name(pair[0] + 1));
            return Err(Error::corrupt(
                missing,
                0,
                "segment is missing: the ids around it are present",
            ));
        }
    }
    let mut files = Vec::new();
    let mut removed_any = false;
    for (i, &id) in ids.iter().enumerate() {
        let path = dir.join(crate::segment::segment_name(id));
        let file = io.open(&path, false).map_err(|e| Error::io(&path, e))?;
        let size = io.file_size(file).map_err(|e| Error::io(&path, e))?;
        let mut block = AlignedBuf::new(BLOCK_SIZE);
        block.set_len(BLOCK_SIZE);
        let (block, n) =
            read_sync(io, file, 0, block, &mut Vec::new()).map_err(|e| Error::io(&path, e))?;
        let head = &block.as_slice()[..n];
        if head.iter().all(|&b| b == 0) && i == ids.len() - 1 {
            // The newest file never got its header: a segment whose preparation was cut short
            // (frames only go to segments whose header is durable, so it holds nothing).
            io.close(file);
            io.remove(&path).map_err(|e| Error::io(&path, e))?;
            report.removed.push(path);
            removed_any = true;
            continue;
        }
        if n < BLOCK_SIZE {
            return Err(Error::corrupt(
                &path,
                n as u64,
                format!("file is {size} bytes: too short for a segment header"),
            ));
        }
        check_header(&path, head, id, size)?;
        files.push(SegFile {
            id,
            path,
            file,
            size,
        });
    }
    let mut recovered = Recovered {
        segments: VecDeque::new(),
        spare: None,
        active_offset: BLOCK_SIZE as u64,
        need_snapshot: true,
        next_seq: 1,
        last_crc: 0,
        logs: HashMap::new(),
        system_next_lsn: 0,
        writers: Writers::new(writers_max),
        report,
    };
    if files.is_empty() && clean_stop.is_some() {
        return Err(Error::corrupt(
            &clean_stop_path,
            0,
            "says the store was stopped cleanly, but the directory holds no segment",
        ));
    }
    if !files.is_empty() {
        let clean_stop = clean_stop.map(|stop| (stop, clean_stop_path.as_path()));
        scan(io, &files, clean_stop, &mut recovered)?;
        // Keep the active segment and one after it (the spare); remove the rest.
        let active = recovered.segments.len();
        for (i, f) in files.into_iter().enumerate() {
            if i < active {
                continue;
            }
            if i == active {
                recovered.spare = Some(Segment::new(f.id, f.path, f.file, f.size));
                continue;
            }
            io.close(f.file);
            io.remove(&f.path).map_err(|e| Error::io(&f.path, e))?;
            recovered.report.removed.push(f.path);
            removed_any = true;
        }
    }
    // The chain checked out: the record has said what it had to. It goes (durably, before
    // anything is written) so that a crash from here on is recovered as a crash. A record cut
    // short by a crash during the close goes too.
    if clean_stop_file {
        io.remove(&clean_stop_path)
            .map_err(|e| Error::io(&clean_stop_path, e))?;
        removed_any = true;
    }
    if removed_any {
        crate::segment::sync_dir(io, dir)?;
    }
    recovered.report.segments = recovered.segments.len();
    recovered.report.clean_stop = clean_stop.is_some();
    recovered.assert_consistent();
    Ok(recovered)
}

impl Recovered {
    /// What recovery built from frames that checked out satisfies what the running store
    /// asserts of the same state (the other half of each pair is in `commit.rs`): every
    /// log's records are durable and dense up to its next LSN, its trim point is within them,
    /// its index is in LSN and disk order and points below its next LSN; the segments hold
    /// consecutive frames; the next frame follows the last one, at a block boundary.
    /// Damage on the disk is an error before this point, never a failed assertion here.
    fn assert_consistent(&self) {
        for (&log_id, log) in &self.logs {
            assert!(
                log.trim_point <= log.next_lsn,
                "recovered log {log_id}: trim point {} above its next LSN {}",
                log.trim_point,
                log.next_lsn
            );
            assert_eq!(
                (log.submitted_lsn, log.durable_lsn),
                (log.next_lsn, log.next_lsn),
                "recovered log {log_id}: everything recovered is submitted and durable"
            );
            assert_eq!(
                (log.submitted_trim, log.durable_trim),
                (log.trim_point, log.trim_point),
                "recovered log {log_id}: its trim is submitted and durable"
            );
            assert_eq!(
                log.submitted_fence, log.fence,
                "recovered log {log_id}: its fencing token is submitted"
            );
            let in_order = log
                .index
                .iter()
                .zip(log.index.iter().skip(1))
                .all(|(a, b)| {
                    a.first_lsn < b.first_lsn && (a.segment_id, a.offset) < (b.segment_id, b.offset)
                });
            assert!(
                in_order,
                "recovered log {log_id}: index entries in LSN and disk order"
            );
            assert!(
                log.index.back().is_none_or(|e| e.first_lsn < log.next_lsn),
                "recovered log {log_id}: index entries point at records it has"
            );
        }
        let mut next_frame = None;
        // A segment's log ends may lie past the log's next LSN: a truncation or reset cut the
        // history after them, and they pin the segment until a trim passes them again.
        for segment in &self.segments {
            if segment.last_seq == 0 {
                continue; // The active segment, before its first frame.
            }
            assert!(
                segment.first_seq <= segment.last_seq
                    && next_frame.is_none_or(|next| segment.first_seq == next),
                "recovered segment {}: frames {}..={} do not continue the segment before it",
                segment.id,
                segment.first_seq,
                segment.last_seq
            );
            next_frame = Some(segment.last_seq + 1);
        }
        assert_eq!(
            self.next_seq,
            next_frame.unwrap_or(1),
            "the next frame follows the last recovered one"
        );
        assert!(
            self.active_offset.is_multiple_of(BLOCK_SIZE as u64),
            "writing resumes at a block boundary"
        );
        assert_eq!(
            self.need_snapshot,
            self.active_offset == BLOCK_SIZE as u64,
            "the active segment starts with its snapshot"
        );
    }
}

/// Reads the clean-stop record at `path`: `None` if the file is empty or zero (a close that a
/// crash cut short: it had not said anything yet), an error naming the file if it is anything
/// but a valid record.
fn read_clean_stop<I: Io>(io: &mut I, path: &Path) -> Result<Option<CleanStop>> {
    let file = io.open(path, false).map_err(|e| Error::io(path, e))?;
    let mut block = AlignedBuf::new(BLOCK_SIZE);
    block.set_len(BLOCK_SIZE);
    let read = read_sync(io, file, 0, block, &mut Vec::new());
    io.close(file);
    let (block, n) = read.map_err(|e| Error::io(path, e))?;
    let bytes = &block.as_slice()[..n];
    if bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let record_bytes = std::mem::size_of::<CleanStop>();
    if n < record_bytes {
        return Err(Error::corrupt(
            path,
            n as u64,
            format!("{n} bytes: too short for a clean-stop record"),
        ));
    }
    let stop: CleanStop = bytemuck::pod_read_unaligned(&bytes[..record_bytes]);
    if stop.magic != CLEAN_STOP_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a chainlog clean-stop record (bad magic)",
        ));
    }
    if stop.version > CLEAN_STOP_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: stop.version,
            supported: CLEAN_STOP_VERSION,
        });
    }
    if stop.compute_crc() != stop.crc {
        return Err(Error::corrupt(
            path,
            0,
            "the clean-stop record fails its checksum",
        ));
    }
    Ok(Some(stop))
}

/// Follows the frame chain through `files`, filling `out`; the chain must end where
/// `clean_stop` (the record and its file), if any, says.
fn scan<I: Io>(
    io: &mut I,
    files: &[SegFile],
    clean_stop: Option<(CleanStop, &Path)>,
    out: &mut Recovered,
) -> Result<()> {
    let mut window = Window::new(WINDOW_BYTES);
    // Nothing else is in flight during recovery: the stash stays empty.
    let mut stash = Vec::new();
    let mut idx = 0;
    let mut offset = BLOCK_SIZE as u64;
    let mut started = false;
    let mut segment = Segment::new(
        files[0].id,
        files[0].path.clone(),
        files[0].file,
        files[0].size,
    );
    let mut progress = Progress::new(files);
    loop {
        let f = &files[idx];
        let found = window
            .frame_at(io, &mut stash, f.file, f.size, f.id, offset)
            .map_err(|e| Error::io(&f.path, e))?;
        let stopped_on_data = !matches!(found, Err(FrameFault::Empty));
        let continues = match &found {
            Ok(frame) if !started => {
                frame.header.kind == FrameKind::Snapshot as u16 && offset == BLOCK_SIZE as u64
            }
            Ok(frame) => {
                frame.header.seq == out.next_seq
                    && frame.header.prev_crc == out.last_crc
                    && (frame.header.kind == FrameKind::Snapshot as u16)
                        == (offset == BLOCK_SIZE as u64)
            }
            Err(_) => false,
        };
        if continues {
            let frame = found.expect("checked");
            let header = frame.header;
            let disk_bytes = frame.disk_bytes;
            let body = frame.body.to_vec();
            apply_frame(out, &mut segment, f, offset, &header, &body, !started)?;
            started = true;
            offset += disk_bytes;
            segment.end_offset = offset;
            continue;
        }
        if let Some(FrameFault::FutureVersion(v)) = found.as_ref().err() {
            return Err(Error::UnsupportedVersion {
                path: f.path.clone(),
                found: *v,
                supported: FORMAT_VERSION,
            });
        }
        // The chain stops here, or continues at the start of the next segment.
        if started && idx + 1 < files.len() {
            let n = &files[idx + 1];
            let next = window
                .frame_at(io, &mut stash, n.file, n.size, n.id, BLOCK_SIZE as u64)
                .map_err(|e| Error::io(&n.path, e))?;
            if let Ok(frame) = next {
                let h = frame.header;
                if h.kind == FrameKind::Snapshot as u16
                    && h.seq == out.next_seq
                    && h.prev_crc == out.last_crc
                {
                    out.segments.push_back(std::mem::replace(
                        &mut segment,
                        Segment::new(n.id, n.path.clone(), n.file, n.size),
                    ));
                    idx += 1;
                    offset = BLOCK_SIZE as u64;
                    progress.reached(files, idx);
                    continue;
                }
            }
        }
        match clean_stop {
            Some((stop, record)) => check_clean_end(&stop, record, &f.path, offset, out)?,
            None => {
                check_torn_tail(
                    io,
                    files,
                    idx,
                    offset,
                    started.then_some(out.next_seq),
                    &mut window,
                )?;
                if stopped_on_data {
                    out.report.torn_tail = Some((f.path.clone(), offset));
                }
            }
        }
        out.segments.push_back(segment);
        out.active_offset = offset;
        out.need_snapshot = offset == BLOCK_SIZE as u64;
        break;
    }
    let mut log_ids: Vec<u64> = out.logs.keys().copied().collect();
    log_ids.sort_unstable();
    for log_id in log_ids {
        let log = &out.logs[&log_id];
        let first_indexed = log.index.front().map(|e| e.first_lsn);
        let complete = match first_indexed {
            Some(first) => first <= log.trim_point || log.trim_point == log.next_lsn,
            None => log.trim_point == log.next_lsn,
        };
        if !complete {
            let present = first_indexed.map_or("none".to_string(), |lsn| lsn.to_string());
            return Err(Error::corrupt(
                &files[0].path,
                0,
                format!(
                    "log {log_id}: records from its trim point {} are missing (first present: {present})",
                    log.trim_point
                ),
            ));
        }
    }
    Ok(())
}

/// Segment bytes from which recovery says how far it got.
const PROGRESS_BYTES_MIN: u64 = 1 << 30;

/// Recovery's progress line: at the start and at every tenth of the segments' bytes scanned,
/// when there are at least [`PROGRESS_BYTES_MIN`] of them (a long recovery is not silent).
struct Progress {
    total: u64,
    scanned: u64,
    tenths: u64,
}

impl Progress {
    fn new(files: &[SegFile]) -> Progress {
        let total = files.iter().map(|f| f.size).sum();
        if total >= PROGRESS_BYTES_MIN {
            tracing::info!(
                segments = files.len(),
                total_mib = total >> 20,
                "recovering the store: scanning its segments"
            );
        }
        Progress {
            total,
            scanned: 0,
            tenths: 0,
        }
    }

    /// The scan moved on to `files[idx]`.
    fn reached(&mut self, files: &[SegFile], idx: usize) {
        self.scanned += files[idx - 1].size;
        let scanned = self.scanned;
        let tenths = scanned * 10 / self.total.max(1);
        if self.total >= PROGRESS_BYTES_MIN && tenths > self.tenths {
            self.tenths = tenths;
            tracing::info!(
                segments = idx,
                of = files.len(),
                scanned_mib = scanned >> 20,
                total_mib = self.total >> 20,
                "recovering the store: {}% scanned",
                tenths * 10
            );
        }
    }
}

/// After a clean stop, the chain stopped at (`path`, `offset`) after the frames replayed into
/// `out`: it must have reached the last frame the clean-stop record (in `record`) names.
fn check_clean_end(
    stop: &CleanStop,
    record: &Path,
    path: &Path,
    offset: u64,
    out: &Recovered,
) -> Result<()> {
    let last = out.next_seq - 1;
    if last < stop.last_seq {
        return Err(Error::corrupt(
            path,
            offset,
            format!(
                "committed data is damaged or missing here: the readable frames before this \
                 offset end with frame {last}, but the store was stopped cleanly after frame {}",
                stop.last_seq
            ),
        ));
    }
    if last > stop.last_seq || out.last_crc != stop.last_crc {
        return Err(Error::corrupt(
            record,
            0,
            format!(
                "says the store stopped after frame {} (crc {:#010x}), but the frames end at \
                 frame {last} (crc {:#010x}) in {}: the record does not belong to these segments",
                stop.last_seq,
                stop.last_crc,
                out.last_crc,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The chain stopped at (`files[idx]`, `offset`), where frame `expected` (if known) belongs.
/// Fails if a later frame proves that frame was durable.
fn check_torn_tail<I: Io>(
    io: &mut I,
    files: &[SegFile],
    idx: usize,
    offset: u64,
    expected: Option<u64>,
    window: &mut Window,
) -> Result<()> {
    let mut stash = Vec::new();
    // With no frame replayed yet, the missing one is the oldest segment's snapshot: only the
    // first segment of a new shard may lack one (crash before its first write was durable).
    let expected = match expected {
        Some(seq) => seq,
        None if files[0].id == 1 => 1,
        None => {
            return Err(Error::corrupt(
                &files[0].path,
                offset,
                "the oldest segment's snapshot frame is missing or damaged",
            ))
        }
    };
    for (i, f) in files.iter().enumerate().skip(idx) {
        let mut at = if i == idx { offset } else { BLOCK_SIZE as u64 };
        while at + BLOCK_SIZE as u64 <= f.size {
            let found = window
                .frame_at(io, &mut stash, f.file, f.size, f.id, at)
                .map_err(|e| Error::io(&f.path, e))?;
            if let Ok(frame) = found {
                if frame.header.durable_seq >= expected {
                    return Err(Error::corrupt(
                        &files[idx].path,
                        offset,
                        format!(
                            "frame {expected} is damaged or missing, but frame {} at {}:{at} records it as durable",
                            frame.header.seq,
                            f.path.display()
                        ),
                    ));
                }
            }
            at += BLOCK_SIZE as u64;
        }
    }
    Ok(())
}

fn apply_frame(
    out: &mut Recovered,
    segment: &mut Segment,
    f: &SegFile,
    offset: u64,
    header: &crate::format::FrameHeader,
    body: &[u8],
    first: bool,
) -> Result<()> {
    let bad = |reason: String| Error::corrupt(&f.path, offset, reason);
    // No writer reaches the last sequence number: one there is forged (its successor would
    // wrap to 0).
    if header.seq == u64::MAX {
        return Err(bad("frame sequence number u64::MAX".into()));
    }
    // Paired with `Store::submit`: a frame is written with the frontier before it.
    if header.durable_seq >= header.seq {
        return Err(bad(format!(
            "frame {} says frame {} was durable before it was written",
            header.seq, header.durable_seq
        )));
    }
    if header.kind == FrameKind::Snapshot as u16 {
        let entry_bytes = snapshot_entry_bytes(header.version);
        let logs_len = header.count as usize * entry_bytes;
        if body.len() < logs_len || !(body.len() - logs_len).is_multiple_of(STATE_RECORD_BYTES) {
            return Err(bad(
                "snapshot frame length does not match its entry count".into()
            ));
        }
        let (log_bytes, writer_bytes) = body.split_at(logs_len);
        let entries: Vec<SnapshotEntry> = log_bytes
            .chunks_exact(entry_bytes)
            .map(|e| SnapshotEntry::decode(e, header.version))
            .collect();
        if first {
            for e in entries {
                // Paired with `Store::submit_snapshot`: a log is trimmed within its records.
                if e.log_id != SYSTEM_LOG && e.trim_point > e.next_lsn {
                    return Err(bad(format!(
                        "snapshot says log {} is trimmed to {}, above its next LSN {}",
                        e.log_id, e.trim_point, e.next_lsn
                    )));
                }
                if e.log_id == SYSTEM_LOG {
                    out.system_next_lsn = e.next_lsn;
                } else {
                    let log = LogState::recovered(e.next_lsn, e.trim_point, e.fence);
                    out.logs.insert(e.log_id, log);
                }
            }
        } else {
            // A later snapshot must agree with what the frames before it built.
            let logs = entries.iter().filter(|e| e.log_id != SYSTEM_LOG).count();
            for e in &entries {
                let agrees = if e.log_id == SYSTEM_LOG {
                    e.next_lsn == out.system_next_lsn
                } else {
                    out.logs.get(&e.log_id).is_some_and(|l| {
                        l.next_lsn == e.next_lsn
                            && l.trim_point == e.trim_point
                            && l.fence == e.fence
                    })
                };
                if !agrees {
                    return Err(bad(format!(
                        "snapshot disagrees with the frames before it about log {}",
                        e.log_id
                    )));
                }
            }
            if logs != out.logs.len() {
                return Err(bad("snapshot is missing logs".into()));
            }
        }
        // The idempotency table: from the oldest snapshot it is the starting point; a later
        // one holds nothing the records before it did not (applying it changes nothing that
        // matters, but it is checked like everything else).
        for bytes in writer_bytes.chunks_exact(STATE_RECORD_BYTES) {
            let state: StateRecord = bytemuck::pod_read_unaligned(bytes);
            check_writer(out, &state).map_err(bad)?;
            if first {
                out.writers.apply(&state);
            }
        }
    } else {
        let mut noted: Option<u64> = None;
        for record in Records::new(body, header.count) {
            let record = record.map_err(|_| bad("records overrun their frame".into()))?;
            let h = record.header;
            if crate::format::payload_crc(record.payload) != h.crc {
                return Err(bad(format!(
                    "record {} of log {} fails its checksum",
                    h.lsn, h.log_id
                )));
            }
            out.report.records += 1;
            if h.log_id == SYSTEM_LOG {
                if h.lsn != out.system_next_lsn {
                    return Err(bad(format!("control record {} is out of sequence", h.lsn)));
                }
                out.system_next_lsn += 1;
                let cut = apply_control(out, record.payload)
                    .map_err(|reason| bad(format!("control record {}: {reason}", h.lsn)))?;
                if cut.is_some() && cut == noted {
                    // The log's next records in this frame, if any, start a new history.
                    noted = None;
                }
                continue;
            }
            let log = out.logs.entry(h.log_id).or_default();
            log.on_disk = true;
            if h.lsn != log.next_lsn {
                return Err(bad(format!(
                    "log {} record {} follows {} (LSNs must be dense)",
                    h.log_id, h.lsn, log.next_lsn
                )));
            }
            if noted != Some(h.log_id) {
                log.note_frame(h.lsn, f.id, offset);
                noted = Some(h.log_id);
            }
            log.next_lsn += 1;
            log.submitted_lsn = log.next_lsn;
            log.durable_lsn = log.next_lsn;
            segment.log_ends.insert(h.log_id, log.next_lsn);
        }
    }
    if segment.first_seq == 0 {
        segment.first_seq = header.seq;
    }
    segment.last_seq = header.seq;
    out.report.frames += 1;
    out.next_seq = header.seq + 1;
    out.last_crc = header.crc;
    Ok(())
}

/// Applies a control record (a system-log payload) to the recovered state. Returns the log
/// whose history it cut (a truncation or a reset), if any.
fn apply_control(out: &mut Recovered, payload: &[u8]) -> std::result::Result<Option<u64>, String> {
    let kind = payload
        .get(..4)
        .map(|k| u32::from_le_bytes(k.try_into().expect("4 bytes")));
    match kind {
        Some(CONTROL_TRIM) if payload.len() == CONTROL_RECORD_BYTES => {
            let control: ControlRecord = bytemuck::pod_read_unaligned(payload);
            let log = out.logs.entry(control.log_id).or_default();
            if control.lsn > log.next_lsn {
                return Err(format!("trim of log {} beyond its tail", control.log_id));
            }
            let trim = log.trim_point.max(control.lsn);
            log.trim_point = trim;
            log.submitted_trim = trim;
            log.durable_trim = trim;
            Ok(None)
        }
        Some(CONTROL_TRUNCATE) if payload.len() == CONTROL_RECORD_BYTES => {
            let control: ControlRecord = bytemuck::pod_read_unaligned(payload);
            let (log_id, from) = (control.log_id, control.lsn);
            let log = out
                .logs
                .get_mut(&log_id)
                .ok_or_else(|| format!("truncation of log {log_id} before its records"))?;
            if from < log.trim_point || from > log.next_lsn {
                return Err(format!(
                    "truncation of log {log_id} from {from}, outside its trim point {} and \
                     tail {}",
                    log.trim_point, log.next_lsn
                ));
            }
            log.next_lsn = from;
            log.submitted_lsn = from;
            log.durable_lsn = from;
            log.cut_index(from);
            log.index_cut = true;
            out.writers.forget_from(log_id, from);
            Ok(Some(log_id))
        }
        Some(CONTROL_RESET) if payload.len() == CONTROL_RECORD_BYTES => {
            let control: ControlRecord = bytemuck::pod_read_unaligned(payload);
            let (log_id, at) = (control.log_id, control.lsn);
            let log = out.logs.entry(log_id).or_default();
            let fence = log.fence;
            *log = LogState::recovered(at, at, fence);
            log.index_cut = true;
            out.writers.forget_from(log_id, 0);
            Ok(Some(log_id))
        }
        Some(CONTROL_FENCE) if payload.len() == STATE_RECORD_BYTES => {
            let state: StateRecord = bytemuck::pod_read_unaligned(payload);
            let log = out.logs.get_mut(&state.log_id).ok_or_else(|| {
                format!("fencing token of log {} before its records", state.log_id)
            })?;
            log.fence = log.fence.max(state.value);
            log.submitted_fence = log.fence;
            Ok(None)
        }
        Some(CONTROL_WRITER) if payload.len() == STATE_RECORD_BYTES => {
            let state: StateRecord = bytemuck::pod_read_unaligned(payload);
            check_writer(out, &state)?;
            out.writers.apply(&state);
            Ok(None)
        }
        _ => Err(format!("unknown kind or length ({} bytes)", payload.len())),
    }
}

/// An idempotency key must name a batch that begins with records preceding it (it may end
/// above them: the batch a reset cut through, [`crate::Store::reset_log`]).
fn check_writer(out: &Recovered, state: &StateRecord) -> std::result::Result<(), String> {
    let end = state.value.checked_add(u64::from(state.count));
    let next_lsn = out.logs.get(&state.log_id).map_or(0, |l| l.next_lsn);
    if state.kind != CONTROL_WRITER || state.count == 0 || end.is_none() || state.value >= next_lsn
    {
        return Err(format!(
            "idempotency key of log {} names records it does not have",
            state.log_id
        ));
    }
    Ok(())
}
