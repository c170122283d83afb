//! The on-disk format: segment header, batch frames and records.
//!
//! Every durable write is one **frame**: a 64-byte [`FrameHeader`] followed by a body, padded
//! with zeros to [`BLOCK_SIZE`]. A data frame's body is a sequence of records, each a 40-byte
//! [`RecordHeader`] followed by the payload padded to 8 bytes. The record layout is the wire
//! layout too (the client fills `len` and `crc`; the shard stamps the rest in place), so a
//! record is never re-encoded between the socket and the disk.
//!
//! The frame CRC32C covers the header (with `crc` zeroed) and the body. Each record also
//! carries the CRC32C of its payload, computed by the client and verified at every hop.
//! `prev_crc` chains each frame to the one before it and `durable_seq` says which earlier
//! frames were already durable when this one was built; recovery uses both to tell a torn
//! tail (truncate) from corruption in the middle (report). See ARCHITECTURE.md.
//!
//! A snapshot frame's body is `count` [`SnapshotEntry`] values (24 bytes each in format
//! version 1, 32 from version 2, which added `fence`), followed (version 2) by any number of
//! [`StateRecord`]s: the idempotency windows of the shard's writers. Control records (the
//! system log's payloads) are a [`ControlRecord`] (trims, truncations and resets) or a
//! [`StateRecord`] (fencing-token raises and idempotency keys), told apart by their first four
//! bytes, the kind.
//!
//! Outside the segments, a [`CleanStop`] record (the file [`CLEAN_STOP_FILE`]) says that the
//! store was stopped cleanly and where its frame chain ends (ARCHITECTURE.md 8).

use bytemuck::{Pod, Zeroable};

/// The unit of alignment for every write, read and frame (O_DIRECT needs it).
pub const BLOCK_SIZE: usize = 4096;
/// The format version this build writes and the newest it reads. Version 2 added fencing
/// tokens and idempotency keys (snapshot entries of 32 bytes, [`StateRecord`]s); version 3
/// added truncations and resets ([`CONTROL_TRUNCATE`], [`CONTROL_RESET`]), which a build that
/// reads up to version 2 would not understand. Segments of versions 1 and 2 are still read.
pub const FORMAT_VERSION: u16 = 3;
/// `"CLFR"` little-endian: the first bytes of every frame.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"CLFR");
/// `"CLSG"` little-endian: the first bytes of every segment file.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"CLSG");
/// The largest frame this format allows (the configured `batch_bytes_max` is at most this).
/// Parsing uses this bound, never the current configuration, so a frame written under another
/// configuration still reads back.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// The file in a shard directory that holds the [`CleanStop`] record.
pub const CLEAN_STOP_FILE: &str = "clean-stop";
/// `"CLCS"` little-endian: the first bytes of a [`CleanStop`] record.
pub const CLEAN_STOP_MAGIC: u32 = u32::from_le_bytes(*b"CLCS");
/// The version of the [`CleanStop`] record this build writes and the newest it reads.
pub const CLEAN_STOP_VERSION: u16 = 1;
/// The log id reserved for the shard's own control records (trims, fencing tokens,
/// idempotency keys).
pub const SYSTEM_LOG: u64 = u64::MAX;

/// What a frame's body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    /// Records of one or more logs (including the system log).
    Data = 1,
    /// The state of every log at the start of a segment: [`SnapshotEntry`] values.
    Snapshot = 2,
}

impl FrameKind {
    /// Decodes a kind field; `None` for an unknown value.
    pub fn from_u16(value: u16) -> Option<FrameKind> {
        match value {
            1 => Some(FrameKind::Data),
            2 => Some(FrameKind::Snapshot),
            _ => None,
        }
    }
}

/// The header of a frame: one group-committed write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct FrameHeader {
    /// [`FRAME_MAGIC`].
    pub magic: u32,
    /// [`FORMAT_VERSION`] when written.
    pub version: u16,
    /// A [`FrameKind`].
    pub kind: u16,
    /// CRC32C of this header (with `crc` = 0) followed by the body.
    pub crc: u32,
    /// Bytes of body after the header, padding excluded.
    pub body_len: u32,
    /// Shard sequence number: dense, starting at 1, one per frame.
    pub seq: u64,
    /// The segment this frame was written to (stale frames of another segment never match).
    pub segment_id: u64,
    /// Every frame with `seq <= durable_seq` was durable when this frame was built.
    pub durable_seq: u64,
    /// `crc` of the frame with `seq - 1` (0 for the first frame of the shard).
    pub prev_crc: u32,
    /// Records in the body (data frames) or entries (snapshot frames).
    pub count: u32,
    /// Zero.
    pub reserved: [u8; 16],
}

/// The header of a record, on the wire and on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RecordHeader {
    /// Payload bytes (the payload follows, padded to 8 bytes).
    pub len: u32,
    /// CRC32C of the payload, computed by the client.
    pub crc: u32,
    /// The log the record belongs to.
    pub log_id: u64,
    /// The record's position in its log.
    pub lsn: u64,
    /// The log's epoch when the record was sequenced.
    pub epoch: u64,
    /// Server timestamp, microseconds since the Unix epoch.
    pub timestamp_us: u64,
}

/// The first block of every segment file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct SegmentHeader {
    /// [`SEGMENT_MAGIC`].
    pub magic: u32,
    /// [`FORMAT_VERSION`] when written.
    pub version: u16,
    /// Zero.
    pub reserved0: u16,
    /// CRC32C of this header with `crc` = 0.
    pub crc: u32,
    /// [`BLOCK_SIZE`] when written.
    pub block_size: u32,
    /// The segment's id (also its file name).
    pub segment_id: u64,
    /// The size the segment was preallocated to.
    pub segment_bytes: u64,
    /// Zero.
    pub reserved: [u8; 32],
}

/// The clean-stop record: written (alone in the first block of [`CLEAN_STOP_FILE`], made
/// durable) by `Store::close` once every frame is durable, and removed durably by the next
/// open before it writes anything. While it exists, the frame chain must end exactly at frame
/// `last_seq` with CRC `last_crc`: a chain that stops earlier is damaged committed data, never
/// a torn tail. The record fits one 512-byte sector, so a crash while it is written leaves
/// either all of it or none (an empty or zero file: the close did not finish).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct CleanStop {
    /// [`CLEAN_STOP_MAGIC`].
    pub magic: u32,
    /// [`CLEAN_STOP_VERSION`] when written.
    pub version: u16,
    /// Zero.
    pub reserved0: u16,
    /// CRC32C of this record with `crc` = 0.
    pub crc: u32,
    /// `crc` of the last frame.
    pub last_crc: u32,
    /// `seq` of the last frame (0: the store has no frame).
    pub last_seq: u64,
    /// Zero.
    pub reserved: [u64; 5],
}

impl CleanStop {
    /// The record of a store whose last frame is `last_seq` with CRC `last_crc`, CRC filled in.
    pub fn new(last_seq: u64, last_crc: u32) -> CleanStop {
        let mut stop = CleanStop {
            magic: CLEAN_STOP_MAGIC,
            version: CLEAN_STOP_VERSION,
            last_crc,
            last_seq,
            ..CleanStop::default()
        };
        stop.crc = stop.compute_crc();
        stop
    }

    /// CRC32C of the record with `crc` zeroed.
    pub fn compute_crc(&self) -> u32 {
        let mut stop = *self;
        stop.crc = 0;
        crc32c::crc32c(bytemuck::bytes_of(&stop))
    }
}

/// One log's state in a snapshot frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct SnapshotEntry {
    /// The log.
    pub log_id: u64,
    /// The LSN the log's next record gets.
    pub next_lsn: u64,
    /// Records below this LSN are trimmed.
    pub trim_point: u64,
    /// The log's fencing token (0: never fenced). Absent in format version 1.
    pub fence: u64,
}

impl SnapshotEntry {
    /// Decodes an entry of a snapshot written in format `version` (`bytes` holds
    /// [`snapshot_entry_bytes`]`(version)` bytes).
    pub fn decode(bytes: &[u8], version: u16) -> SnapshotEntry {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        SnapshotEntry {
            log_id: u64_at(0),
            next_lsn: u64_at(8),
            trim_point: u64_at(16),
            fence: if version >= 2 { u64_at(24) } else { 0 },
        }
    }
}

/// Bytes of a snapshot entry in format `version`.
pub const fn snapshot_entry_bytes(version: u16) -> usize {
    if version >= 2 {
        SNAPSHOT_ENTRY_BYTES
    } else {
        24
    }
}

/// The payload of a system-log record about a log's positions: a trim, a truncation or a
/// reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct ControlRecord {
    /// A `CONTROL_*` value.
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
    /// The log the control record is about.
    pub log_id: u64,
    /// The LSN argument: for a trim, records below it are trimmed; for a truncation, the log's
    /// records from it on are discarded; for a reset, where the log starts again, empty.
    pub lsn: u64,
}

/// [`ControlRecord::kind`] of a trim.
pub const CONTROL_TRIM: u32 = 1;
/// [`ControlRecord::kind`] of a truncation: the log's records at and above `lsn` (in the
/// frames before this record) are discarded, and its next record gets `lsn`. Idempotency
/// keys of the batches discarded are forgotten; the fencing token stays (ARCHITECTURE.md 9c).
pub const CONTROL_TRUNCATE: u32 = 4;
/// [`ControlRecord::kind`] of a reset: everything the shard had of the log before this record
/// is discarded (records, idempotency keys; the fencing token stays), and the log starts
/// again, empty, with next LSN and trim point `lsn`. Creates the log if it did not exist.
pub const CONTROL_RESET: u32 = 5;
/// [`StateRecord::kind`] of a fencing-token raise: the log's token became `value`.
pub const CONTROL_FENCE: u32 = 2;
/// [`StateRecord::kind`] of an idempotency key: writer `writer_id`'s batch `writer_seq` got
/// LSNs `value .. value + count` (its records are in the same frame, before this record).
pub const CONTROL_WRITER: u32 = 3;

/// Durable per-log state beyond positions: a fencing-token raise or one batch of a writer.
/// The payload of `CONTROL_FENCE` and `CONTROL_WRITER` system records, and the trailing
/// entries of a snapshot frame (idempotency windows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct StateRecord {
    /// `CONTROL_FENCE` or `CONTROL_WRITER`.
    pub kind: u32,
    /// The batch's records (`CONTROL_WRITER`), else 0.
    pub count: u32,
    /// The log.
    pub log_id: u64,
    /// The writer (`CONTROL_WRITER`), else 0.
    pub writer_id: u64,
    /// The writer's sequence number of the batch (`CONTROL_WRITER`), else 0.
    pub writer_seq: u64,
    /// The new fencing token (`CONTROL_FENCE`) or the batch's first LSN (`CONTROL_WRITER`).
    pub value: u64,
}

/// Size of [`FrameHeader`].
pub const FRAME_HEADER_BYTES: usize = std::mem::size_of::<FrameHeader>();
/// Size of [`RecordHeader`].
pub const RECORD_HEADER_BYTES: usize = std::mem::size_of::<RecordHeader>();
/// Size of [`SnapshotEntry`] (format version 2).
pub const SNAPSHOT_ENTRY_BYTES: usize = std::mem::size_of::<SnapshotEntry>();
/// Size of [`StateRecord`].
pub const STATE_RECORD_BYTES: usize = std::mem::size_of::<StateRecord>();
/// Size of [`ControlRecord`].
pub const CONTROL_RECORD_BYTES: usize = std::mem::size_of::<ControlRecord>();

const _: () = assert!(FRAME_HEADER_BYTES == 64);
const _: () = assert!(RECORD_HEADER_BYTES == 40);
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(std::mem::size_of::<SegmentHeader>() == 64);
const _: () = assert!(std::mem::size_of::<CleanStop>() == 64);
const _: () = assert!(SNAPSHOT_ENTRY_BYTES == 32);
const _: () = assert!(CONTROL_RECORD_BYTES == 24);
const _: () = assert!(STATE_RECORD_BYTES == 40);
const _: () = assert!(BLOCK_SIZE.is_power_of_two() && BLOCK_SIZE >= 512);

/// Rounds `n` up to a multiple of [`BLOCK_SIZE`].
pub const fn block_align(n: usize) -> usize {
    (n + BLOCK_SIZE - 1) & !(BLOCK_SIZE - 1)
}

/// Bytes a record with `payload_len` bytes of payload takes in a frame.
pub const fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + ((payload_len + 7) & !7)
}

/// CRC32C of a record payload, as the client computes it.
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

impl FrameHeader {
    /// The CRC of a frame whose header is `self` (its `crc` field is ignored) and body `body`.
    pub fn compute_crc(&self, body: &[u8]) -> u32 {
        let mut header = *self;
        header.crc = 0;
        let crc = crc32c::crc32c(bytemuck::bytes_of(&header));
        crc32c::crc32c_append(crc, body)
    }
}

impl SegmentHeader {
    /// A header for a new segment, CRC filled in.
    pub fn new(segment_id: u64, segment_bytes: u64) -> SegmentHeader {
        let mut header = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: FORMAT_VERSION,
            block_size: BLOCK_SIZE as u32,
            segment_id,
            segment_bytes,
            ..SegmentHeader::default()
        };
        header.crc = header.compute_crc();
        header
    }

    /// CRC32C of the header with `crc` zeroed.
    pub fn compute_crc(&self) -> u32 {
        let mut header = *self;
        header.crc = 0;
        crc32c::crc32c(bytemuck::bytes_of(&header))
    }
}

/// Why a frame at some offset is not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFault {
    /// The block is all zeros: nothing was ever written there.
    Empty,
    /// Not a frame of this format (magic), or a frame of a newer version.
    BadMagic,
    /// A frame of a format version newer than this build reads.
    FutureVersion(u16),
    /// The header's length does not fit the segment.
    BadLength,
    /// The CRC does not match: torn or corrupted.
    BadCrc,
    /// The header names another segment (stale data).
    WrongSegment,
    /// The record structure inside a frame with a valid CRC is inconsistent (a bug or tampering).
    BadBody,
}

/// Parses and verifies the frame at the start of `bytes`, which holds at least the header and
/// as much of the body as is available. `segment_id` is the segment being read. On success the
/// header is returned; the caller must check `bytes.len() >= FRAME_HEADER_BYTES + body_len`
/// before calling, or get `BadLength`.
pub fn check_frame(bytes: &[u8], segment_id: u64) -> Result<FrameHeader, FrameFault> {
    debug_assert!(bytes.len() >= FRAME_HEADER_BYTES);
    let header: FrameHeader = bytemuck::pod_read_unaligned(&bytes[..FRAME_HEADER_BYTES]);
    if header.magic != FRAME_MAGIC {
        if bytes[..FRAME_HEADER_BYTES].iter().all(|&b| b == 0) {
            return Err(FrameFault::Empty);
        }
        return Err(FrameFault::BadMagic);
    }
    if header.version > FORMAT_VERSION {
        return Err(FrameFault::FutureVersion(header.version));
    }
    let end = FRAME_HEADER_BYTES + header.body_len as usize;
    if end > bytes.len() {
        return Err(FrameFault::BadLength);
    }
    if header.compute_crc(&bytes[FRAME_HEADER_BYTES..end]) != header.crc {
        return Err(FrameFault::BadCrc);
    }
    if header.segment_id != segment_id {
        return Err(FrameFault::WrongSegment);
    }
    if FrameKind::from_u16(header.kind).is_none() {
        return Err(FrameFault::BadBody);
    }
    Ok(header)
}

/// One record of a frame body, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    /// The record's header.
    pub header: RecordHeader,
    /// The payload.
    pub payload: &'a [u8],
}

/// Iterates over the records of a data frame body. Yields `Err(FrameFault::BadBody)` once (and
/// then stops) if the body is inconsistent.
#[derive(Debug)]
pub struct Records<'a> {
    body: &'a [u8],
    remaining: u32,
}

impl<'a> Records<'a> {
    /// Records of `body`, of which the frame header says there are `count`.
    pub fn new(body: &'a [u8], count: u32) -> Records<'a> {
        Records {
            body,
            remaining: count,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordView<'a>, FrameFault>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        if self.body.len() < RECORD_HEADER_BYTES {
            self.remaining = 0;
            return Some(Err(FrameFault::BadBody));
        }
        let header: RecordHeader = bytemuck::pod_read_unaligned(&self.body[..RECORD_HEADER_BYTES]);
        let size = record_bytes(header.len as usize);
        if size > self.body.len() {
            self.remaining = 0;
            return Some(Err(FrameFault::BadBody));
        }
        let payload = &self.body[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + header.len as usize];
        self.body = &self.body[size..];
        Some(Ok(RecordView { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_crc_detects_a_flipped_bit_anywhere() {
        let mut frame = vec![0u8; BLOCK_SIZE];
        let body = b"some body bytes";
        frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body.len()].copy_from_slice(body);
        let mut header = FrameHeader {
            magic: FRAME_MAGIC,
            version: FORMAT_VERSION,
            kind: FrameKind::Data as u16,
            body_len: body.len() as u32,
            seq: 7,
            segment_id: 3,
            ..FrameHeader::default()
        };
        header.crc = header.compute_crc(body);
        frame[..FRAME_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
        assert_eq!(check_frame(&frame, 3), Ok(header));
        assert_eq!(check_frame(&frame, 4), Err(FrameFault::WrongSegment));
        for bit in 0..(FRAME_HEADER_BYTES + body.len()) * 8 {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(check_frame(&bad, 3).is_err(), "bit {bit} flip undetected");
        }
    }

    #[test]
    fn empty_block_is_recognised() {
        assert_eq!(check_frame(&[0u8; BLOCK_SIZE], 1), Err(FrameFault::Empty));
    }

    #[test]
    fn records_iterator_rejects_overlong_length() {
        let header = RecordHeader {
            len: 1000,
            ..RecordHeader::default()
        };
        let body = bytemuck::bytes_of(&header).to_vec();
        let mut records = Records::new(&body, 1);
        assert!(matches!(records.next(), Some(Err(FrameFault::BadBody))));
        assert!(records.next().is_none());
    }

    #[test]
    fn sizes_round_as_documented() {
        assert_eq!(record_bytes(0), 40);
        assert_eq!(record_bytes(1), 48);
        assert_eq!(record_bytes(8), 48);
        assert_eq!(block_align(1), BLOCK_SIZE);
        assert_eq!(block_align(BLOCK_SIZE), BLOCK_SIZE);
    }
}
