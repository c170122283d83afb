//! Record batches: the validated zero-copy view a decoder returns ([`Records`]) and the
//! builders that lay records out in an output buffer ([`AppendBuilder`] for clients,
//! [`ReadBuilder`] for servers' READ responses and pushes).
//!
//! A record is the storage layout: a 40-byte [`RecordHeader`] (`len`, `crc`, `log_id`, `lsn`,
//! `epoch`, `timestamp_us`), the payload, and zero padding to a multiple of 8. In an APPEND
//! only `len` and `crc` are set (the server stamps the rest in place); in a READ response or a
//! push every field is; in a REPLICATE every field is too, and `log_id`, `lsn` and `epoch` are
//! the ones the REPLICATE header names, so a replica stores the bytes as they are.

use crate::frame::{begin_frame, finish_frame, Flags, FRAME_HEADER_BYTES};
use crate::message::{AppendHeader, Opcode, APPEND_HEADER_BYTES};
use crate::{Error, Limits};
use chainlog_storage::format::{
    payload_crc, record_bytes, RecordHeader, RecordView, RECORD_HEADER_BYTES,
};

/// Which record fields a batch must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordForm {
    /// As a client sends them in an APPEND: `log_id`, `lsn`, `epoch` and `timestamp_us` are 0.
    Unstamped,
    /// As a server returns them: every field set, one log, consecutive LSNs.
    Stamped,
    /// As a head sends them to a replica in a REPLICATE: every field set, record `i` of log
    /// `log_id` with LSN `first_lsn + i`, all appended in one epoch, `epoch` or an earlier
    /// one (records of an earlier epoch go to a replica that catches up in a later one), any
    /// `timestamp_us`.
    Replicated {
        /// The log every record belongs to.
        log_id: u64,
        /// The latest epoch the records may have been appended in.
        epoch: u64,
        /// The first record's LSN.
        first_lsn: u64,
    },
}

/// A validated batch of `count` records, borrowed from a frame: the bytes are exactly the
/// records (header, payload, zero padding each), and every payload matches its CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Records<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> Records<'a> {
    /// No records.
    pub const EMPTY: Records<'static> = Records {
        bytes: &[],
        count: 0,
    };

    /// Checks that `bytes` are exactly `count` records of the given form within `limits`
    /// (`record_bytes_max`, `batch_records_max`), every CRC included. Errors name the first
    /// offending record. Allocation-free; one pass.
    pub fn parse(
        bytes: &'a [u8],
        count: u32,
        form: RecordForm,
        limits: &Limits,
    ) -> Result<Records<'a>, Error> {
        if count > limits.batch_records_max {
            return Err(Error::TooManyRecords {
                count,
                max: limits.batch_records_max,
            });
        }
        let mut rest = bytes;
        let mut previous: Option<RecordHeader> = None;
        for index in 0..count {
            if rest.is_empty() {
                return Err(Error::CountMismatch {
                    declared: count,
                    found: index,
                });
            }
            let Some(head) = rest.get(..RECORD_HEADER_BYTES) else {
                return Err(Error::RecordTruncated { index });
            };
            let header: RecordHeader = bytemuck::pod_read_unaligned(head);
            if header.len > limits.record_bytes_max {
                return Err(Error::RecordTooLarge {
                    index,
                    len: u64::from(header.len),
                    max: limits.record_bytes_max,
                });
            }
            let len = header.len as usize;
            let size = record_bytes(len);
            let Some(record) = rest.get(..size) else {
                return Err(Error::RecordTruncated { index });
            };
            match form {
                RecordForm::Unstamped => check_unstamped(&header, index)?,
                RecordForm::Stamped => {
                    if let Some(previous) = previous {
                        let next = previous.lsn.checked_add(1);
                        if header.log_id != previous.log_id || Some(header.lsn) != next {
                            return Err(Error::RecordOutOfSequence { index });
                        }
                    }
                    previous = Some(header);
                }
                RecordForm::Replicated {
                    log_id,
                    epoch,
                    first_lsn,
                } => {
                    // The first record's epoch is the batch's: every record has it.
                    let run_epoch = previous.map_or(header.epoch.min(epoch), |p| p.epoch);
                    check_replicated(&header, index, log_id, run_epoch, first_lsn)?;
                    previous = Some(header);
                }
            }
            let (payload, padding) = record[RECORD_HEADER_BYTES..].split_at(len);
            if padding.iter().any(|&b| b != 0) {
                return Err(Error::RecordPaddingNonzero { index });
            }
            let computed = payload_crc(payload);
            if computed != header.crc {
                return Err(Error::BadRecordCrc {
                    index,
                    stored: header.crc,
                    computed,
                });
            }
            rest = &rest[size..];
        }
        if !rest.is_empty() {
            return Err(Error::BytesAfterRecords {
                count,
                extra_bytes: rest.len(),
            });
        }
        Ok(Records { bytes, count })
    }

    /// The encoded records, ready to be copied (to disk, to a replica) as they are.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// How many records.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records in order: each one's header (with `crc`) and payload.
    pub fn iter(&self) -> RecordIter<'a> {
        RecordIter {
            rest: self.bytes,
            remaining: self.count,
        }
    }

    /// The records after the first `n` (all of them if `n` is 0, none if `n >= count`): what
    /// a replica that has the first `n` still needs.
    pub fn skip(&self, n: u32) -> Records<'a> {
        let n = n.min(self.count);
        let mut at = 0;
        for record in self.iter().take(n as usize) {
            at += record_bytes(record.payload.len());
        }
        Records {
            bytes: &self.bytes[at..],
            count: self.count - n,
        }
    }

    /// The last record's header, if any.
    pub(crate) fn last(&self) -> Option<RecordHeader> {
        self.iter().last().map(|r| r.header)
    }
}

impl<'a> IntoIterator for Records<'a> {
    type Item = RecordView<'a>;
    type IntoIter = RecordIter<'a>;

    fn into_iter(self) -> RecordIter<'a> {
        self.iter()
    }
}

fn check_unstamped(header: &RecordHeader, index: u32) -> Result<(), Error> {
    let stamped = [
        ("log_id", header.log_id),
        ("lsn", header.lsn),
        ("epoch", header.epoch),
        ("timestamp_us", header.timestamp_us),
    ];
    match stamped.iter().find(|(_, value)| *value != 0) {
        Some(&(field, _)) => Err(Error::RecordFieldNonzero { index, field }),
        None => Ok(()),
    }
}

fn check_replicated(
    header: &RecordHeader,
    index: u32,
    log_id: u64,
    epoch: u64,
    first_lsn: u64,
) -> Result<(), Error> {
    // Past u64::MAX there is no LSN for this record to have.
    let Some(lsn) = first_lsn.checked_add(u64::from(index)) else {
        return Err(Error::RecordOutOfSequence { index });
    };
    let fields = [
        ("log_id", header.log_id, log_id),
        ("lsn", header.lsn, lsn),
        ("epoch", header.epoch, epoch),
    ];
    match fields.iter().find(|(_, value, expected)| value != expected) {
        Some(&(field, value, expected)) => Err(Error::RecordStampMismatch {
            index,
            field,
            value,
            expected,
        }),
        None => Ok(()),
    }
}

/// Iterator over [`Records`].
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Records::parse checked the structure, so the slicing cannot fail.
        let header: RecordHeader = bytemuck::pod_read_unaligned(&self.rest[..RECORD_HEADER_BYTES]);
        let len = header.len as usize;
        let payload = &self.rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
        self.rest = &self.rest[record_bytes(len)..];
        Some(RecordView { header, payload })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for RecordIter<'_> {}

/// A frame holding a batch of records, being written at the end of a buffer. Dropping it
/// without `finish` removes the partial frame again.
#[derive(Debug)]
struct BatchFrame<'b> {
    out: &'b mut Vec<u8>,
    start: usize,
    /// Where the u32 `count` goes.
    count_at: usize,
    count: u32,
    limits: Limits,
    finished: bool,
}

impl<'b> BatchFrame<'b> {
    /// Makes room for one more record of `len` payload bytes (zeroed) and returns its offset in
    /// `out`, or says which limit it would break (leaving `out` as it was).
    fn reserve(&mut self, len: usize) -> Result<usize, Error> {
        if self.count >= self.limits.batch_records_max {
            return Err(Error::TooManyRecords {
                count: self.count.saturating_add(1),
                max: self.limits.batch_records_max,
            });
        }
        if len > self.limits.record_bytes_max as usize {
            return Err(Error::RecordTooLarge {
                index: self.count,
                len: len as u64,
                max: self.limits.record_bytes_max,
            });
        }
        let at = self.out.len();
        let frame_bytes = (at - self.start + record_bytes(len)) as u64;
        if frame_bytes > u64::from(self.limits.frame_bytes_max) {
            return Err(Error::FrameTooLarge {
                frame_bytes,
                max: self.limits.frame_bytes_max,
            });
        }
        self.out.resize(at + record_bytes(len), 0);
        self.count += 1;
        Ok(at)
    }

    fn write_header(&mut self, at: usize, header: &RecordHeader) {
        self.out[at..at + RECORD_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(header));
    }

    fn payload_mut(&mut self, at: usize, len: usize) -> &mut [u8] {
        &mut self.out[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len]
    }

    fn frame_bytes(&self) -> usize {
        self.out.len() - self.start
    }

    fn finish(mut self) {
        let count = self.count.to_le_bytes();
        self.out[self.count_at..self.count_at + 4].copy_from_slice(&count);
        finish_frame(self.out, self.start);
        self.finished = true;
    }
}

impl Drop for BatchFrame<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

/// Lays out an APPEND frame directly in a client's output buffer: header, then one record at
/// a time (len, crc, payload, padding), then `finish` fills the count, length and frame CRC.
/// Each record is checked against the server's limits as it is added, so the frame is never
/// one the server refuses for size.
///
/// ```
/// use chainlog_net::{AppendBuilder, AppendHeader, Limits};
/// let mut out = Vec::new();
/// let mut batch = AppendBuilder::new(&mut out, 2, &AppendHeader::new(7), &Limits::DEFAULT);
/// batch.push(b"hello").unwrap();
/// batch.push_with(3, |payload| payload.copy_from_slice(b"abc")).unwrap();
/// batch.finish();
/// assert_eq!(out.len(), 24 + 56 + 48 + 48);
/// ```
#[derive(Debug)]
pub struct AppendBuilder<'b> {
    frame: BatchFrame<'b>,
}

impl<'b> AppendBuilder<'b> {
    /// Starts an APPEND frame with `request_id` and `header` at the end of `out`, to be sent
    /// to a server with `limits`.
    pub fn new(
        out: &'b mut Vec<u8>,
        request_id: u64,
        header: &AppendHeader,
        limits: &Limits,
    ) -> AppendBuilder<'b> {
        let start = begin_frame(out, Opcode::Append as u16, Flags::NONE, request_id);
        for field in [
            header.log_id,
            header.epoch,
            header.expected_lsn,
            header.fencing_token,
            header.writer_id,
            header.writer_seq,
        ] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        let count_at = out.len();
        out.extend_from_slice(&[0; 8]); // count, reserved
        debug_assert_eq!(out.len() - start, FRAME_HEADER_BYTES + APPEND_HEADER_BYTES);
        AppendBuilder {
            frame: BatchFrame {
                out,
                start,
                count_at,
                count: 0,
                limits: *limits,
                finished: false,
            },
        }
    }

    /// Adds a record with a copy of `payload` and its CRC. On error (the batch is full, the
    /// record too large or the frame would be) nothing is added.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.push_with(payload.len(), |slot| slot.copy_from_slice(payload))
    }

    /// Adds a record of `len` bytes that `fill` writes in place (the slot starts zeroed); the
    /// CRC is computed after. On error nothing is added and `fill` is not called.
    pub fn push_with(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<(), Error> {
        let at = self.frame.reserve(len)?;
        let payload = self.frame.payload_mut(at, len);
        fill(payload);
        let header = RecordHeader {
            len: len as u32, // at most record_bytes_max, a u32
            crc: payload_crc(payload),
            ..RecordHeader::default()
        };
        self.frame.write_header(at, &header);
        Ok(())
    }

    /// Records added so far.
    pub fn count(&self) -> u32 {
        self.frame.count
    }

    /// The frame's size so far, header included.
    pub fn frame_bytes(&self) -> usize {
        self.frame.frame_bytes()
    }

    /// Completes the frame. An APPEND carries at least one record: panics on an empty batch.
    pub fn finish(self) {
        assert!(
            self.frame.count > 0,
            "an APPEND carries at least one record"
        );
        self.frame.finish();
    }
}

/// Which frame a [`ReadBuilder`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// A READ response (flags RESPONSE, opcode READ).
    Read,
    /// A subscription's push (flags RESPONSE|PUSH, opcode SUBSCRIBE).
    Push,
    /// A subscription's last push (flags RESPONSE|PUSH|END, opcode SUBSCRIBE).
    PushEnd,
}

/// Lays out a READ response or a push directly in a server's output buffer: tail, then one
/// stamped record at a time, then `finish`. Records must be consecutive records of one log,
/// below `tail` (asserted: a server bug otherwise); the limits are checked as records are
/// added, so the server can stop filling when one says no.
#[derive(Debug)]
pub struct ReadBuilder<'b> {
    frame: BatchFrame<'b>,
    tail: u64,
    last: Option<(u64, u64)>,
}

impl<'b> ReadBuilder<'b> {
    /// Starts a frame of `kind` answering `request_id` at the end of `out`, reporting `tail`.
    pub fn new(
        out: &'b mut Vec<u8>,
        request_id: u64,
        kind: ReadKind,
        tail: u64,
        limits: &Limits,
    ) -> ReadBuilder<'b> {
        let (opcode, flags) = match kind {
            ReadKind::Read => (Opcode::Read, Flags::RESPONSE),
            ReadKind::Push => (Opcode::Subscribe, Flags::RESPONSE | Flags::PUSH),
            ReadKind::PushEnd => (
                Opcode::Subscribe,
                Flags::RESPONSE | Flags::PUSH | Flags::END,
            ),
        };
        let start = begin_frame(out, opcode as u16, flags, request_id);
        out.extend_from_slice(&tail.to_le_bytes());
        let count_at = out.len();
        out.extend_from_slice(&[0; 8]); // count, reserved
        ReadBuilder {
            frame: BatchFrame {
                out,
                start,
                count_at,
                count: 0,
                limits: *limits,
                finished: false,
            },
            tail,
            last: None,
        }
    }

    /// Adds a stored record: `header` as stored (its `crc` travels unchanged, end to end) and
    /// its payload. On error nothing is added.
    pub fn push(&mut self, header: &RecordHeader, payload: &[u8]) -> Result<(), Error> {
        assert_eq!(header.len as usize, payload.len(), "record len vs payload");
        assert!(header.lsn < self.tail, "a record at or past the tail");
        if let Some((log_id, lsn)) = self.last {
            assert!(
                header.log_id == log_id && Some(header.lsn) == lsn.checked_add(1),
                "records of a READ response are consecutive records of one log"
            );
        }
        let at = self.frame.reserve(payload.len())?;
        self.frame.write_header(at, header);
        self.frame
            .payload_mut(at, payload.len())
            .copy_from_slice(payload);
        self.last = Some((header.log_id, header.lsn));
        Ok(())
    }

    /// Records added so far.
    pub fn count(&self) -> u32 {
        self.frame.count
    }

    /// The frame's size so far, header included.
    pub fn frame_bytes(&self) -> usize {
        self.frame.frame_bytes()
    }

    /// Completes the frame (an empty batch is allowed).
    pub fn finish(self) {
        self.frame.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstamped(payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for p in payloads {
            let header = RecordHeader {
                len: p.len() as u32,
                crc: payload_crc(p),
                ..RecordHeader::default()
            };
            bytes.extend_from_slice(bytemuck::bytes_of(&header));
            bytes.extend_from_slice(p);
            bytes.resize(bytes.len().next_multiple_of(8), 0);
        }
        bytes
    }

    #[test]
    fn parse_returns_each_payload_and_crc() {
        let bytes = unstamped(&[b"a", b"", b"12345678", b"hello"]);
        let records = Records::parse(&bytes, 4, RecordForm::Unstamped, &Limits::DEFAULT).unwrap();
        let payloads: Vec<&[u8]> = records.iter().map(|r| r.payload).collect();
        assert_eq!(payloads, [&b"a"[..], b"", b"12345678", b"hello"]);
        for r in records {
            assert_eq!(r.header.crc, payload_crc(r.payload));
        }
        assert_eq!(records.bytes(), &bytes[..]);
        assert_eq!(records.iter().len(), 4);
    }

    #[test]
    fn stamped_records_must_be_in_sequence() {
        let mut bytes = Vec::new();
        for (lsn, log_id) in [(5u64, 1u64), (6, 1), (8, 1)] {
            let header = RecordHeader {
                len: 0,
                crc: payload_crc(b""),
                log_id,
                lsn,
                ..RecordHeader::default()
            };
            bytes.extend_from_slice(bytemuck::bytes_of(&header));
        }
        let limits = Limits::DEFAULT;
        assert!(Records::parse(&bytes[..80], 2, RecordForm::Stamped, &limits).is_ok());
        assert_eq!(
            Records::parse(&bytes, 3, RecordForm::Stamped, &limits),
            Err(Error::RecordOutOfSequence { index: 2 })
        );
        assert_eq!(
            Records::parse(&bytes, 3, RecordForm::Unstamped, &limits),
            Err(Error::RecordFieldNonzero {
                index: 0,
                field: "log_id"
            })
        );
    }

    #[test]
    fn builder_refuses_what_the_limits_forbid_and_leaves_the_frame_intact() {
        let limits = Limits {
            batch_records_max: 2,
            record_bytes_max: 16,
            frame_bytes_max: 184,
            ..Limits::DEFAULT
        };
        let mut out = vec![0xAA];
        let mut batch = AppendBuilder::new(&mut out, 1, &AppendHeader::new(3), &limits);
        assert_eq!(
            batch.push(&[0; 17]),
            Err(Error::RecordTooLarge {
                index: 0,
                len: 17,
                max: 16
            })
        );
        batch.push(&[1; 16]).unwrap();
        let before = batch.frame_bytes();
        assert!(matches!(
            batch.push(&[2; 16]),
            Err(Error::FrameTooLarge { .. })
        ));
        assert_eq!(batch.frame_bytes(), before);
        batch.push(&[2; 8]).unwrap();
        assert_eq!(
            batch.push(&[]),
            Err(Error::TooManyRecords { count: 3, max: 2 })
        );
        batch.finish();
        assert_eq!(out[0], 0xAA);
        let frame = crate::parse_frame(&out[1..], &limits).unwrap().unwrap();
        assert_eq!(frame.frame_bytes(), out.len() - 1);
    }

    #[test]
    fn a_dropped_builder_leaves_nothing_behind() {
        let mut out = vec![1, 2, 3];
        {
            let mut batch =
                AppendBuilder::new(&mut out, 1, &AppendHeader::new(3), &Limits::DEFAULT);
            batch.push(b"partial").unwrap();
        }
        assert_eq!(out, [1, 2, 3]);
    }
}
