//! Reads: records of a log from the tail cache, the frames in memory, or the disk, without
//! blocking the shard.
//!
//! A read walks the log's frames forward from the index entry at or before its first LSN
//! ([`crate::log`]), taking the log's records in order. A frame comes from the tail cache
//! (its write completed, its buffer not reused yet), from a window of the segment read
//! earlier (by this read, or by the last read that finished: sequential readers hit it
//! again), or from the disk: then the read submits one O_DIRECT read of a window of
//! [`READ_WINDOW_BYTES`] (more if one frame is larger) to the store's ring and waits in a
//! slot until [`Store::poll`] reaps it. A read that needs nothing from the disk completes
//! within the call ([`Store::read_async`] returns its records at once).
//!
//! A read is a state machine over the store's *current* state: each step re-reads the log's
//! positions and index, so what it returns is what the log holds when it completes. A trim
//! past its first LSN fails it with [`Error::Trimmed`]; a truncation or reset drops what it
//! gathered of the records it discards (the read then goes on in the new history); a
//! failure of the store fails it ([`Error::Fatal`]). A window holds only frames whose writes
//! had completed when it was read, and a segment is not deleted while a read of it is in
//! flight. At most [`READS_IN_FLIGHT_MAX`] reads wait for the disk; beyond, a read that needs
//! the disk is refused with [`Error::Overloaded`].
//!
//! The blocking calls ([`Store::read`], [`Store::read_stored`], [`Store::read_stored_runs`])
//! run the same machine and wait for its disk reads inside the call, stashing every other
//! completion meanwhile, so that no frame moves and no LSN becomes durable during the call.

use crate::buf::AlignedBuf;
use crate::commit::{token, Op};
use crate::error::{Error, Result};
use crate::format::{
    block_align, check_frame, payload_crc, FrameHeader, FrameKind, RecordHeader, Records,
    StateRecord, BLOCK_SIZE, CONTROL_FENCE, CONTROL_WRITER, FRAME_BYTES_MAX, FRAME_HEADER_BYTES,
    FRAME_MAGIC, STATE_RECORD_BYTES, SYSTEM_LOG,
};
use crate::io::{FileId, Io};
use crate::replica::{runs, StoredRun};
use crate::store::{Entry, ReadRecord, Store};

/// Reads that may wait for the disk at the same time (each holds a window buffer of
/// [`READ_WINDOW_BYTES`] meanwhile); a read that needs the disk beyond this is refused with
/// [`Error::Overloaded`].
pub const READS_IN_FLIGHT_MAX: usize = 32;

/// Bytes of a segment one disk read of a read request fetches (at least a whole frame): a
/// read of small records costs one disk read per window, not per frame.
pub const READ_WINDOW_BYTES: usize = 256 << 10;

/// The slot value of the blocking read's disk reads (never an asynchronous read's slot).
const BLOCKING_SLOT: usize = READS_IN_FLIGHT_MAX;

/// Which records a read returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// Durable records ([`Store::read`]).
    Durable,
    /// Durable records, then those stored but not durable yet ([`Store::read_stored`]).
    Stored,
    /// As `Stored`, cut into runs that carry the batches' keys and fencing-token raises
    /// ([`Store::read_stored_runs`]).
    StoredRuns,
}

/// A read: up to `max_records` records of `log_id` from `from` on, stopping before
/// `max_bytes` of payload is exceeded (at least one record is returned if any exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The log.
    pub log_id: u64,
    /// The first LSN asked for.
    pub from: u64,
    /// Records at most.
    pub max_records: usize,
    /// Payload bytes at most (the first record is returned whatever its size).
    pub max_bytes: usize,
    /// Which records.
    pub kind: ReadKind,
}

/// What a read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutput {
    /// The records ([`ReadKind::Durable`], [`ReadKind::Stored`]).
    Records(Vec<ReadRecord>),
    /// The records in runs ([`ReadKind::StoredRuns`]).
    Runs(Vec<StoredRun>),
}

/// A read that waited for the disk, finished: from [`Store::take_reads`] after a
/// [`Store::poll`].
#[derive(Debug)]
pub struct ReadDone {
    /// The caller's token from [`Store::read_async`].
    pub token: u64,
    /// The records, or why there are none: [`Error::Trimmed`] (a trim passed the first LSN
    /// meanwhile), [`Error::Corrupt`], [`Error::Io`] (the disk read failed), [`Error::Fatal`]
    /// (the store failed meanwhile).
    pub result: Result<ReadOutput>,
}

/// The records a read gathers, within its limits, and (for [`ReadKind::StoredRuns`]) the
/// idempotency keys and fencing-token raises stored with their batches.
#[derive(Debug)]
pub(crate) struct Gather {
    pub(crate) out: Vec<ReadRecord>,
    bytes: usize,
    max_records: usize,
    max_bytes: usize,
    /// `Some` when the batches' state is asked for: one mark per batch end.
    pub(crate) marks: Option<Vec<BatchMark>>,
    /// The LSN after the last record of the log the walk went past (gathered or not): a
    /// fencing-token raise belongs to the batch that ends there.
    seen_end: u64,
}

/// What was stored with a batch of a log: its idempotency key, a fencing-token raise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchMark {
    /// The LSN after the batch's last record.
    pub(crate) end: u64,
    /// The batch's key and its first LSN.
    pub(crate) writer: Option<(u64, u64, u64)>,
    /// The log's token after the batch, if the batch raised it.
    pub(crate) fence: Option<u64>,
}

impl Gather {
    fn new(max_records: usize, max_bytes: usize) -> Gather {
        Gather {
            out: Vec::new(),
            bytes: 0,
            max_records,
            max_bytes,
            marks: None,
            seen_end: 0,
        }
    }

    /// Whether a record with `len` bytes of payload still fits (the first one always does,
    /// whatever its size, unless no record may be returned at all).
    fn fits(&self, len: usize) -> bool {
        self.out.len() < self.max_records
            && (self.out.is_empty() || self.bytes + len <= self.max_bytes)
    }

    fn push(&mut self, header: &RecordHeader, payload: Vec<u8>) {
        self.bytes += payload.len();
        self.out.push(ReadRecord {
            lsn: header.lsn,
            epoch: header.epoch,
            timestamp_us: header.timestamp_us,
            crc: header.crc,
            payload,
        });
    }

    /// The walk went past a record of the log.
    fn saw(&mut self, lsn: u64) {
        self.seen_end = lsn + 1;
    }

    /// The walk met a record of the system log: if marks are asked for and it is a key or
    /// a raise of `log_id`'s batch ending after `from` and at most at `bound` (past it, the
    /// batch's records were discarded by a truncation), remember it with its batch.
    fn control(&mut self, log_id: u64, from: u64, bound: u64, payload: &[u8]) {
        let Some(marks) = self.marks.as_mut() else {
            return;
        };
        if payload.len() != STATE_RECORD_BYTES {
            return;
        }
        let state: StateRecord = bytemuck::pod_read_unaligned(payload);
        if state.log_id != log_id {
            return;
        }
        let (end, writer, fence) = match state.kind {
            CONTROL_WRITER => (
                state.value + u64::from(state.count),
                Some((state.writer_id, state.writer_seq, state.value)),
                None,
            ),
            CONTROL_FENCE => (self.seen_end, None, Some(state.value)),
            _ => return,
        };
        if end <= from || end > bound {
            return;
        }
        match marks.last_mut() {
            // A batch's raise and key follow its records, one after the other.
            Some(last) if last.end == end => {
                last.writer = last.writer.or(writer);
                last.fence = last.fence.or(fence);
            }
            _ => marks.push(BatchMark { end, writer, fence }),
        }
    }

    /// Drops what was gathered at and above `lsn` (a truncation discarded it).
    fn cut(&mut self, lsn: u64) {
        let keep = self.out.partition_point(|r| r.lsn < lsn);
        self.bytes -= self.out[keep..]
            .iter()
            .map(|r| r.payload.len())
            .sum::<usize>();
        self.out.truncate(keep);
        if let Some(marks) = self.marks.as_mut() {
            marks.retain(|m| m.end <= lsn);
        }
        self.seen_end = self.seen_end.min(lsn);
    }
}

/// Takes `log_id`'s records from `*next` on out of one frame's `records`, while below `bound`
/// (records of the log at or past it, if any, were discarded by a truncation: the live ones
/// are where the index's next entry points), and hands the system log's to [`Gather::control`].
/// Returns whether the gather is full (the rest of the frame is still looked at for the key
/// and the raise of the batch the read stopped in: they follow its records), or why the frame
/// breaks the log's order or a payload its checksum.
fn walk_frame(
    gather: &mut Gather,
    log_id: u64,
    from: u64,
    next: &mut u64,
    bound: u64,
    records: Records<'_>,
) -> std::result::Result<bool, String> {
    let mut full = false;
    for record in records {
        let record = record.map_err(|_| "records overrun their frame".to_string())?;
        let header = record.header;
        if header.log_id == SYSTEM_LOG {
            gather.control(log_id, from, bound, record.payload);
            continue;
        }
        if header.log_id != log_id {
            continue;
        }
        if full || header.lsn < *next || header.lsn >= bound {
            gather.saw(header.lsn);
            continue;
        }
        if header.lsn != *next {
            return Err(format!(
                "log {log_id}: expected record {next}, found {}",
                header.lsn
            ));
        }
        if !gather.fits(record.payload.len()) {
            full = true;
            continue;
        }
        if payload_crc(record.payload) != header.crc {
            return Err(format!("log {log_id} record {next} fails its checksum"));
        }
        gather.saw(header.lsn);
        gather.push(&header, record.payload.to_vec());
        *next += 1;
    }
    Ok(full)
}

/// Bytes of a segment read back: `valid` bytes from `offset`, all of them frames whose
/// writes had completed when they were read (durable frames never change, and segment ids
/// are never reused, so a window never goes stale).
#[derive(Debug)]
struct Window {
    segment_id: u64,
    offset: u64,
    buf: AlignedBuf,
    valid: usize,
}

impl Window {
    /// The frame at (`segment_id`, `offset`): `None` if the window does not start it,
    /// `Some(Err(bytes))` if it starts it but does not hold all of its `bytes`, else its
    /// bytes (padded; what [`check_frame`] checks).
    fn frame(&self, segment_id: u64, offset: u64) -> Option<std::result::Result<&[u8], usize>> {
        if self.segment_id != segment_id || offset < self.offset {
            return None;
        }
        let start = (offset - self.offset) as usize;
        if start + BLOCK_SIZE > self.valid {
            return None;
        }
        let bytes = &self.buf.as_slice()[start..self.valid];
        let header: FrameHeader = bytemuck::pod_read_unaligned(&bytes[..FRAME_HEADER_BYTES]);
        let total = FRAME_HEADER_BYTES + header.body_len as usize;
        let len = if header.magic == FRAME_MAGIC && total <= FRAME_BYTES_MAX {
            block_align(total)
        } else {
            // Not a frame: `check_frame` says what it is.
            BLOCK_SIZE
        };
        Some(if len <= bytes.len() {
            Ok(&bytes[..len])
        } else {
            Err(len)
        })
    }
}

/// A read in progress.
#[derive(Debug)]
struct Reader {
    request: ReadRequest,
    /// The caller's token (asynchronous reads).
    token: u64,
    gather: Gather,
    /// The next LSN to gather.
    next: u64,
    /// The frame to look at next; `None`: the one the log's index gives for `next`.
    at: Option<(u64, u64)>,
    /// The last window this read fetched.
    window: Option<Window>,
    /// The disk read in flight: segment, offset, bytes asked for.
    reading: Option<(u64, u64, usize)>,
    /// Its result was delivered already (the store failed): dropped when its disk read
    /// completes.
    abandoned: bool,
}

impl Reader {
    fn new(request: ReadRequest, token: u64) -> Reader {
        let mut gather = Gather::new(request.max_records, request.max_bytes);
        if request.kind == ReadKind::StoredRuns {
            gather.marks = Some(Vec::new());
        }
        Reader {
            request,
            token,
            gather,
            next: request.from,
            at: None,
            window: None,
            reading: None,
            abandoned: false,
        }
    }

    /// The log was truncated from `lsn`: what was gathered from there goes, and the walk goes
    /// on from there in the new history.
    fn cut(&mut self, lsn: u64) {
        self.gather.cut(lsn);
        let next = self.next.min(lsn).max(self.request.from);
        if next != self.next {
            self.next = next;
            self.at = None;
        }
    }

    fn output(&mut self) -> ReadOutput {
        let out = std::mem::take(&mut self.gather.out);
        match self.gather.marks.take() {
            Some(marks) => ReadOutput::Runs(runs(out, &marks)),
            None => ReadOutput::Records(out),
        }
    }
}

/// A disk read a read needs.
#[derive(Clone, Copy, Debug)]
struct DiskRead {
    segment_id: u64,
    file: FileId,
    offset: u64,
    len: usize,
}

/// What a step of a read came to.
#[derive(Debug)]
enum Step {
    Done(Result<ReadOutput>),
    Disk(DiskRead),
}

/// The store's reads that wait for the disk, their results, and window buffers.
#[derive(Debug)]
pub(crate) struct Reads {
    /// One per read waiting for its disk read, by slot (the low bits of its I/O token).
    slots: Vec<Option<Reader>>,
    /// Finished reads, for [`Store::take_reads`].
    done: Vec<ReadDone>,
    /// The window of the last read that finished.
    cache: Option<Window>,
    /// Window buffers of [`READ_WINDOW_BYTES`] to reuse.
    spare_bufs: Vec<AlignedBuf>,
}

impl Reads {
    pub(crate) fn new() -> Reads {
        Reads {
            slots: (0..READS_IN_FLIGHT_MAX).map(|_| None).collect(),
            done: Vec::new(),
            cache: None,
            spare_bufs: Vec::new(),
        }
    }

    /// Whether a disk read of segment `segment_id` is in flight (it must not be deleted).
    pub(crate) fn reading(&self, segment_id: u64) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|r| r.reading.is_some_and(|(s, _, _)| s == segment_id))
    }

    /// `log_id` was truncated from `lsn`: reads of it drop what they gathered from there.
    pub(crate) fn cut(&mut self, log_id: u64, lsn: u64) {
        for reader in self.slots.iter_mut().flatten() {
            if reader.request.log_id == log_id {
                reader.cut(lsn);
            }
        }
    }

    /// `log_id` was reset: reads of it drop everything they gathered and start again.
    pub(crate) fn reset(&mut self, log_id: u64) {
        for reader in self.slots.iter_mut().flatten() {
            if reader.request.log_id == log_id {
                reader.cut(0);
                reader.next = reader.request.from;
                reader.at = None;
            }
        }
    }

    /// The store failed: every read waiting fails with it (its disk read may never complete).
    pub(crate) fn fail(&mut self, reason: &str) {
        for reader in self.slots.iter_mut().flatten() {
            if !reader.abandoned {
                reader.abandoned = true;
                self.done.push(ReadDone {
                    token: reader.token,
                    result: Err(Error::Fatal(reason.to_string())),
                });
            }
        }
    }

    fn take_buf(&mut self, len: usize) -> AlignedBuf {
        let mut buf = match self.spare_bufs.pop() {
            Some(buf) if len <= READ_WINDOW_BYTES => buf,
            other => {
                self.spare_bufs.extend(other);
                AlignedBuf::new(block_align(len).max(READ_WINDOW_BYTES))
            }
        };
        buf.set_len(block_align(len));
        buf
    }

    fn put_buf(&mut self, buf: AlignedBuf) {
        if buf.capacity() == READ_WINDOW_BYTES && self.spare_bufs.len() <= READS_IN_FLIGHT_MAX {
            self.spare_bufs.push(buf);
        }
    }

    /// A read finished: its window becomes the one the next reads look at first.
    fn keep_window(&mut self, window: Option<Window>) {
        if let Some(window) = window {
            if let Some(old) = self.cache.replace(window) {
                self.put_buf(old.buf);
            }
        }
    }
}

impl<I: Io> Store<I> {
    /// Starts a read. Returns its output at once if it needs nothing from the disk (the
    /// records are in the tail cache or, for the stored kinds, in frames not durable yet);
    /// `Ok(None)` if it waits for a disk read submitted to the store's ring: its result
    /// comes as a [`ReadDone`] with `token` from [`take_reads`](Self::take_reads) after a
    /// [`poll`](Self::poll) that reaped it (`poll(true, ..)` waits for it if nothing else
    /// completes). The shard never blocks on it.
    ///
    /// The output is what the log holds when the read completes: see the module docs for
    /// trims, truncations, resets and failures meanwhile. Errors at once: those of
    /// [`read`](Self::read), and [`Error::Overloaded`] when the read needs the disk and
    /// [`READS_IN_FLIGHT_MAX`] reads are waiting already (retry after a poll).
    pub fn read_async(&mut self, request: ReadRequest, token: u64) -> Result<Option<ReadOutput>> {
        self.check_failed()?;
        let mut reader = Reader::new(request, token);
        match self.advance_read(&mut reader) {
            Step::Done(result) => {
                self.reads.keep_window(reader.window.take());
                result.map(Some)
            }
            Step::Disk(disk) => {
                let slot = self.reads.slots.iter().position(Option::is_none);
                let Some(slot) = slot else {
                    self.reads.keep_window(reader.window.take());
                    return Err(Error::Overloaded);
                };
                self.submit_read(slot, reader, disk);
                Ok(None)
            }
        }
    }

    /// Moves the results of the reads that waited for the disk and finished into `out`.
    pub fn take_reads(&mut self, out: &mut Vec<ReadDone>) {
        out.append(&mut self.reads.done);
    }

    /// Reads waiting for the disk now (at most [`READS_IN_FLIGHT_MAX`]).
    pub fn reads_in_flight(&self) -> usize {
        self.reads.slots.iter().flatten().count()
    }

    /// `request`, waiting inside the call if its records are on disk only: the blocking
    /// counterpart of [`read_async`](Self::read_async), for a caller that has a
    /// [`ReadRequest`] (when every read slot waits).
    pub fn read_now(&mut self, request: ReadRequest) -> Result<ReadOutput> {
        let r = request;
        self.read_blocking(r.log_id, r.from, r.max_records, r.max_bytes, r.kind)
    }

    /// Up to `max_records` durable records of `log_id` from `from` on, stopping before
    /// `max_bytes` of payload is exceeded (at least one record is returned if any exists).
    /// Waits inside the call if the records are on disk only: [`read_async`](Self::read_async)
    /// does not.
    pub fn read(
        &mut self,
        log_id: u64,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<ReadRecord>> {
        let kind = ReadKind::Durable;
        match self.read_blocking(log_id, from, max_records, max_bytes, kind)? {
            ReadOutput::Records(records) => Ok(records),
            ReadOutput::Runs(_) => unreachable!("a read of records"),
        }
    }

    /// As [`read`](Self::read), and then the records stored but not yet durable (in frames
    /// being filled, sealed or in flight, read from memory): what a successor that is behind
    /// needs. Never anything that was not appended, and never part of a record.
    pub fn read_stored(
        &mut self,
        log_id: u64,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<ReadRecord>> {
        let kind = ReadKind::Stored;
        match self.read_blocking(log_id, from, max_records, max_bytes, kind)? {
            ReadOutput::Records(records) => Ok(records),
            ReadOutput::Runs(_) => unreachable!("a read of records"),
        }
    }

    /// As [`read_stored`](Self::read_stored), cut into runs that one REPLICATE each can
    /// carry with the head's decisions: a batch stored with an idempotency key is a run of
    /// its own, with its key; a fencing-token raise ends the run of the batch that raised it,
    /// which carries the new token; other records run together, within one epoch. So a
    /// replica caught up (or a head pulling back what it lost) stores the same keys and
    /// tokens as the node that sequenced the records, and a retry finds its original LSNs
    /// there. A keyed batch that the limits cut short ends the read (read again from its
    /// first LSN with limits that hold a batch), unless it is the first run: then its records
    /// go without the key.
    pub fn read_stored_runs(
        &mut self,
        log_id: u64,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRun>> {
        let kind = ReadKind::StoredRuns;
        match self.read_blocking(log_id, from, max_records, max_bytes, kind)? {
            ReadOutput::Runs(runs) => Ok(runs),
            ReadOutput::Records(_) => unreachable!("a read of runs"),
        }
    }

    /// Runs a read to its end, waiting for its disk reads here; other completions that
    /// arrive meanwhile are stashed, not handled, so no frame moves and no LSN becomes
    /// durable during the call.
    fn read_blocking(
        &mut self,
        log_id: u64,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        kind: ReadKind,
    ) -> Result<ReadOutput> {
        self.check_failed()?;
        let request = ReadRequest {
            log_id,
            from,
            max_records,
            max_bytes,
            kind,
        };
        let mut reader = Reader::new(request, 0);
        let result = loop {
            let disk = match self.advance_read(&mut reader) {
                Step::Done(result) => break result,
                Step::Disk(disk) => disk,
            };
            let read_token = token(Op::Read, BLOCKING_SLOT as u64);
            let buf = self.reads.take_buf(disk.len);
            self.metrics.read_ios += 1;
            self.io.read(disk.file, disk.offset, buf, read_token);
            let completion = loop {
                let before = self.stash.len();
                if let Err(e) = self.io.wait(1, &mut self.stash) {
                    self.fail(format!("I/O backend failed: {e}"));
                    break None;
                }
                if let Some(i) = self.stash[before..]
                    .iter()
                    .position(|c| c.token == read_token)
                {
                    break Some(self.stash.remove(before + i));
                }
            };
            let Some(completion) = completion else {
                break Err(Error::Fatal(self.failed.clone().unwrap_or_default()));
            };
            let buf = completion.buf.expect("a read returns its buffer");
            let read = (disk.segment_id, disk.offset, disk.len);
            if let Err(e) = self.read_arrived(&mut reader, read, buf, completion.result) {
                break Err(e);
            }
        };
        self.reads.keep_window(reader.window.take());
        self.process_stash();
        result
    }

    /// Submits the disk read `disk` of the read `reader`, which waits in `slot` until it
    /// completes.
    fn submit_read(&mut self, slot: usize, mut reader: Reader, disk: DiskRead) {
        let buf = self.reads.take_buf(disk.len);
        reader.reading = Some((disk.segment_id, disk.offset, disk.len));
        self.metrics.read_ios += 1;
        self.io
            .read(disk.file, disk.offset, buf, token(Op::Read, slot as u64));
        self.reads.slots[slot] = Some(reader);
    }

    /// The disk read of the read waiting in `slot` completed: the read goes on (and may
    /// finish, or need another disk read).
    pub(crate) fn read_completed(
        &mut self,
        slot: usize,
        buf: Option<AlignedBuf>,
        result: std::io::Result<usize>,
    ) {
        let mut reader = self.reads.slots[slot]
            .take()
            .expect("a completion of a read waiting in its slot");
        let disk = reader.reading.take().expect("its disk read");
        let buf = buf.expect("a read returns its buffer");
        if reader.abandoned {
            self.reads.put_buf(buf);
            return;
        }
        let step = match self.read_arrived(&mut reader, disk, buf, result) {
            Err(e) => Step::Done(Err(e)),
            Ok(()) => self.advance_read(&mut reader),
        };
        match step {
            Step::Done(result) => {
                self.reads.keep_window(reader.window.take());
                self.reads.done.push(ReadDone {
                    token: reader.token,
                    result,
                });
            }
            Step::Disk(disk) => self.submit_read(slot, reader, disk),
        }
        // A segment's deletion may have waited for this read.
        self.reclaim();
    }

    /// The disk read of `reader` (segment, offset, bytes) returned `buf` with `result`: it
    /// becomes the read's window (the previous one's buffer is reused).
    fn read_arrived(
        &mut self,
        reader: &mut Reader,
        (segment_id, offset, len): (u64, u64, usize),
        buf: AlignedBuf,
        result: std::io::Result<usize>,
    ) -> Result<()> {
        match result {
            Ok(n) => {
                let window = Window {
                    segment_id,
                    offset,
                    buf,
                    valid: n.min(len),
                };
                if let Some(old) = reader.window.replace(window) {
                    self.reads.put_buf(old.buf);
                }
                Ok(())
            }
            Err(e) => {
                self.reads.put_buf(buf);
                Err(Error::io(self.segment_path(segment_id), e))
            }
        }
    }

    /// Walks `reader` forward over the frames that need no disk read: to its end, or to the
    /// first frame it must read from the disk.
    fn advance_read(&self, r: &mut Reader) -> Step {
        let ReadRequest { log_id, from, .. } = r.request;
        loop {
            if let Some(reason) = &self.failed {
                return Step::Done(Err(Error::Fatal(reason.clone())));
            }
            let Some(log) = self.logs.get(&log_id) else {
                return Step::Done(Err(Error::UnknownLog(log_id)));
            };
            let trimmed = Error::Trimmed {
                trim_point: log.trim_point,
            };
            if from < log.trim_point {
                return Step::Done(Err(trimmed));
            }
            let end = log.durable_lsn;
            if r.next >= end || !r.gather.fits(0) {
                if r.request.kind != ReadKind::Durable && r.gather.fits(0) {
                    self.gather_in_memory(r);
                }
                return Step::Done(Ok(r.output()));
            }
            let (segment_id, offset) = match r.at {
                Some(at) => at,
                None => match log.entry_for(r.next) {
                    Some(e) => (log.index[e].segment_id, log.index[e].offset),
                    None => return Step::Done(Err(trimmed)),
                },
            };
            // Where the log's history goes on in another frame (after a truncation, the
            // records at and past it in this one were discarded).
            let bound = log
                .index
                .get(log.entry_after(r.next))
                .map_or(end, |e| e.first_lsn)
                .min(end);
            let Some(segment) = self.segments.iter().find(|s| s.id == segment_id) else {
                return Step::Done(Err(trimmed));
            };
            let path = || self.segment_path(segment_id);
            let walked = if let Some(frame) = self
                .tail_cache
                .iter()
                .find(|f| f.segment_id == segment_id && f.offset == offset)
            {
                let walked = walk_frame(&mut r.gather, log_id, from, &mut r.next, bound, {
                    frame.contents()
                });
                walked.map(|full| (full, frame.bytes().len() as u64))
            } else {
                let found = [r.window.as_ref(), self.reads.cache.as_ref()]
                    .into_iter()
                    .flatten()
                    .find_map(|w| w.frame(segment_id, offset));
                let bytes = match found {
                    Some(Ok(bytes)) => bytes,
                    wanted => {
                        // The frame's bytes if the window said how many, else its first block.
                        let need = match wanted {
                            Some(Err(len)) => len,
                            _ => BLOCK_SIZE,
                        };
                        let written = self.written_end(segment_id, segment.end_offset);
                        let len = (need.max(READ_WINDOW_BYTES) as u64)
                            .min(written.saturating_sub(offset))
                            as usize;
                        if len < need {
                            return Step::Done(Err(Error::corrupt(
                                path(),
                                offset,
                                format!(
                                    "a frame of log {log_id} runs past the end of what was \
                                     written ({written})"
                                ),
                            )));
                        }
                        return Step::Disk(DiskRead {
                            segment_id,
                            file: segment.file,
                            offset,
                            len,
                        });
                    }
                };
                match check_frame(bytes, segment_id) {
                    Ok(header) => {
                        let disk_bytes = block_align(FRAME_HEADER_BYTES + header.body_len as usize);
                        if header.kind == FrameKind::Data as u16 {
                            let body = &bytes
                                [FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.body_len as usize];
                            let records = Records::new(body, header.count);
                            walk_frame(&mut r.gather, log_id, from, &mut r.next, bound, records)
                                .map(|full| (full, disk_bytes as u64))
                        } else {
                            Ok((false, disk_bytes as u64))
                        }
                    }
                    Err(fault) => Err(format!("a committed frame is unreadable: {fault:?}")),
                }
            };
            let (full, disk_bytes) = match walked {
                Ok(walked) => walked,
                Err(reason) => return Step::Done(Err(Error::corrupt(path(), offset, reason))),
            };
            if full {
                return Step::Done(Ok(r.output()));
            }
            if r.next >= bound {
                // The history goes on at the index's next entry (or the read is at its end).
                r.at = None;
                continue;
            }
            let offset = offset + disk_bytes;
            r.at = if offset < segment.end_offset {
                Some((segment_id, offset))
            } else {
                // The rest of the log is in later segments: its first entry there.
                let later = log.index.iter().find(|e| e.segment_id > segment_id);
                match later {
                    Some(e) => Some((e.segment_id, e.offset)),
                    None => return Step::Done(Ok(r.output())),
                }
            };
        }
    }

    /// Where the frames of segment `segment_id` whose writes completed end (`end_offset` is
    /// where its submitted frames end): a disk read goes no further.
    fn written_end(&self, segment_id: u64, end_offset: u64) -> u64 {
        self.in_flight
            .iter()
            .find(|f| f.segment_id == segment_id)
            .map_or(end_offset, |f| f.offset)
    }

    /// Gathers the records from the durable LSN on, in the frames in flight, sealed or being
    /// filled, in that order (frames do not move within a step).
    fn gather_in_memory(&self, r: &mut Reader) {
        let ReadRequest { log_id, from, .. } = r.request;
        let frames = self.in_flight.iter().chain(&self.sealed);
        for frame in frames.chain(self.building.as_ref()) {
            // The log's live records in the frame end here (a truncation made after the
            // frame was filled may have discarded the rest).
            let live_end = frame
                .entries
                .iter()
                .filter_map(|e| match *e {
                    Entry::Append {
                        log_id: l,
                        first_lsn,
                        live,
                        ..
                    } if l == log_id && live > 0 => Some(first_lsn + u64::from(live)),
                    _ => None,
                })
                .max();
            if live_end.is_none_or(|end| end <= r.next) {
                continue;
            }
            let bound = live_end.expect("checked above");
            let full = walk_frame(
                &mut r.gather,
                log_id,
                from,
                &mut r.next,
                bound,
                frame.contents(),
            )
            .unwrap_or_else(|reason| panic!("a frame in memory: {reason}"));
            if full {
                break;
            }
        }
    }
}
