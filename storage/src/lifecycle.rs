//! Segment lifecycle: preparing the next segment ahead of need, and deleting segments whose
//! records are all trimmed.
//!
//! The *spare* is prepared in the background through the same ring as the appends: created,
//! preallocated (fallocate), its directory entry synced, zero-filled in unsynced writes (so
//! frame writes later overwrite written blocks and a flush never has to commit extent
//! metadata: on ext4 here that halves the latency of a durable 4 KiB write, ARCHITECTURE.md),
//! and finally its header written with a flush. A file with a zero header is a spare cut short
//! and recovery removes it.
//!
//! The zero-fill is **paced** by the active segment: it keeps [`ZERO_LEAD`] of a segment
//! ahead of how full the active segment is, in small writes ([`ZERO_CHUNK_BYTES`]) while it
//! is more than a quarter of that ahead, in large ones ([`ZERO_CHUNK_BYTES_MAX`]) when it is
//! less (large appends fill segments fast), when the store waits for the spare, and at open.
//! The device's volatile cache holds the zeros until the next flush, and every append's
//! durable write flushes it: zero-filling in one burst made the flushes of that moment carry
//! megabytes of zeros (a p99 spike every segment); paced, a flush carries at most one small
//! chunk.
//!
//! A segment is deleted when it is the oldest, the next segment's snapshot frame is durable
//! (it carries every log's state forward), every log with records in it has a durable trim
//! point past them, and no read of it is in flight.

use std::io;
use std::path::PathBuf;

use crate::buf::AlignedBuf;
use crate::commit::{token, Op};
use crate::error::{Error, Result};
use crate::format::{SegmentHeader, BLOCK_SIZE};
use crate::io::{Durability, FileId, Io};
use crate::segment::{segment_name, Segment};
use crate::store::Store;

/// Bytes per zero-fill write while the spare is well ahead of the active segment: what one
/// flush may have to carry in addition to its frame.
pub const ZERO_CHUNK_BYTES: usize = 128 << 10;
/// Bytes per zero-fill write while the spare is not far ahead (large appends fill segments
/// faster than small zero-fill writes keep up with).
pub const ZERO_CHUNK_BYTES_MAX: usize = 1 << 20;
/// How far (as a fraction of a segment) the spare's zero-fill keeps ahead of the active
/// segment's fill: large writes below a quarter of it, small ones beyond.
const ZERO_LEAD: f64 = 0.25;
/// `DirSync` token value for the spare's directory entry.
const DIR_SYNC_SPARE: u64 = 0;
/// `DirSync` token value after a deletion.
const DIR_SYNC_DELETE: u64 = 1;

/// How fast the spare is zero-filled.
#[derive(Clone, Copy, Debug)]
enum Pace {
    /// As fast as possible.
    Unpaced,
    /// Paced by the active segment: its fill corresponds to offset `fill` of the spare, and
    /// the zero-fill stops `lead` bytes ahead of that.
    Fill { fill: u64, lead: u64 },
}

impl Pace {
    /// Bytes to zero-fill now at offset `next_zero` of the spare (0: not now).
    fn chunk(self, next_zero: u64) -> usize {
        match self {
            Pace::Unpaced => ZERO_CHUNK_BYTES_MAX,
            Pace::Fill { fill, lead } if next_zero < fill + lead / 4 => ZERO_CHUNK_BYTES_MAX,
            Pace::Fill { fill, lead } if next_zero < fill + lead => ZERO_CHUNK_BYTES,
            Pace::Fill { .. } => 0,
        }
    }
}

/// The next segment.
#[derive(Debug)]
pub(crate) enum Spare {
    /// Not started; the next segment gets this id.
    Idle { next_id: u64 },
    /// Being created.
    Preparing(Prep),
    /// Ready to become the active segment.
    Ready(Segment),
}

#[derive(Debug)]
pub(crate) struct Prep {
    id: u64,
    path: PathBuf,
    file: FileId,
    /// Offset of the next zero-fill write.
    next_zero: u64,
    /// The zero buffer, when no zero-fill write has it.
    zero: Option<AlignedBuf>,
    dir_synced: bool,
    header_in_flight: bool,
}

impl<I: Io> Store<I> {
    /// Takes the next step of preparing the spare, if one can be taken now.
    pub(crate) fn advance_spare(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let pace = self.zero_fill_pace();
        match &mut self.spare {
            Spare::Ready(_) => {}
            Spare::Idle { next_id } => {
                let id = *next_id;
                match self.start_spare(id) {
                    Ok(prep) => {
                        self.spare = Spare::Preparing(prep);
                        self.metrics.segments_created += 1;
                        self.advance_spare();
                    }
                    Err(e) => self.fail(format!("creating segment {id}: {e}")),
                }
            }
            Spare::Preparing(prep) => {
                let segment_bytes = self.config.segment_bytes;
                if prep.next_zero < segment_bytes {
                    let chunk = pace.chunk(prep.next_zero);
                    if chunk == 0 {
                        // Far enough ahead of the active segment for now (module docs).
                    } else if let Some(mut zero) = prep.zero.take() {
                        let len = (segment_bytes - prep.next_zero).min(chunk as u64) as usize;
                        zero.set_len(len);
                        self.io.write(
                            prep.file,
                            prep.next_zero,
                            zero,
                            Durability::Buffered,
                            token(Op::ZeroFill, 0),
                        );
                    }
                } else if prep.zero.is_some() && prep.dir_synced && !prep.header_in_flight {
                    let header = SegmentHeader::new(prep.id, segment_bytes);
                    let mut block = AlignedBuf::new(BLOCK_SIZE);
                    block.set_len(BLOCK_SIZE);
                    block.as_mut_slice()[..std::mem::size_of::<SegmentHeader>()]
                        .copy_from_slice(bytemuck::bytes_of(&header));
                    // The flush also covers the zero-fill writes before it.
                    self.io.write(
                        prep.file,
                        0,
                        block,
                        Durability::Fdatasync,
                        token(Op::SpareHeader, 0),
                    );
                    prep.header_in_flight = true;
                }
            }
        }
    }

    /// Where the spare's zero-fill stands against the active segment's fill, or unpaced: when
    /// the store waits for the spare, is opening, or has no active segment.
    fn zero_fill_pace(&self) -> Pace {
        match self.segments.back() {
            Some(active) if self.pace_spare && !self.waiting_for_spare => {
                let spare_bytes = self.config.segment_bytes as f64;
                let fill = self.active_offset as f64 / active.bytes as f64;
                Pace::Fill {
                    fill: (fill * spare_bytes) as u64,
                    lead: (ZERO_LEAD * spare_bytes) as u64,
                }
            }
            _ => Pace::Unpaced,
        }
    }

    fn start_spare(&mut self, id: u64) -> io::Result<Prep> {
        let path = self.dir.join(segment_name(id));
        let file = self.io.open(&path, true)?;
        self.io.allocate(file, self.config.segment_bytes)?;
        self.io
            .sync(self.dir_file, token(Op::DirSync, DIR_SYNC_SPARE));
        Ok(Prep {
            id,
            path,
            file,
            next_zero: BLOCK_SIZE as u64,
            zero: Some(AlignedBuf::new(ZERO_CHUNK_BYTES_MAX)),
            dir_synced: false,
            header_in_flight: false,
        })
    }

    /// Handles a completion of the spare's preparation or of a deletion's directory sync.
    pub(crate) fn spare_completed(
        &mut self,
        op: Op,
        value: u64,
        buf: Option<AlignedBuf>,
        result: io::Result<usize>,
    ) {
        if let Err(e) = result {
            self.fail(format!("segment lifecycle {op:?} failed: {e}"));
            return;
        }
        if op == Op::DirSync && value == DIR_SYNC_DELETE {
            return;
        }
        let Spare::Preparing(prep) = &mut self.spare else {
            unreachable!("{op:?} completion without a spare in preparation");
        };
        match op {
            Op::ZeroFill => {
                let zero = buf.expect("zero buffer");
                prep.next_zero += zero.len() as u64;
                prep.zero = Some(zero);
            }
            Op::DirSync => prep.dir_synced = true,
            Op::SpareHeader => {
                let segment = Segment::new(
                    prep.id,
                    prep.path.clone(),
                    prep.file,
                    self.config.segment_bytes,
                );
                self.spare = Spare::Ready(segment);
            }
            Op::Frame | Op::CleanStop | Op::Read => unreachable!("{op:?} is not the spare's"),
        }
    }

    /// Makes the ready spare the active segment; its first frame will be a snapshot.
    pub(crate) fn activate_spare(&mut self) {
        let next_id = match &self.spare {
            Spare::Ready(segment) => segment.id + 1,
            other => panic!("activating a spare that is not ready: {other:?}"),
        };
        let Spare::Ready(segment) = std::mem::replace(&mut self.spare, Spare::Idle { next_id })
        else {
            unreachable!("checked above");
        };
        self.segments.push_back(segment);
        self.active_offset = BLOCK_SIZE as u64;
        self.need_snapshot = true;
    }

    /// Prepares the spare, waiting for it (at open, before anything else is in flight).
    pub(crate) fn prepare_spare_now(&mut self) -> Result<()> {
        let mut completions = Vec::new();
        let paced = std::mem::replace(&mut self.pace_spare, false);
        let prepared = self.prepare_spare_unpaced(&mut completions);
        self.pace_spare = paced;
        prepared
    }

    fn prepare_spare_unpaced(
        &mut self,
        completions: &mut Vec<crate::io::Completion>,
    ) -> Result<()> {
        loop {
            self.advance_spare();
            if let Some(reason) = &self.failed {
                return Err(Error::Fatal(reason.clone()));
            }
            if matches!(self.spare, Spare::Ready(_)) {
                return Ok(());
            }
            self.io
                .wait(1, completions)
                .map_err(|e| Error::io(&self.dir, e))?;
            for completion in completions.drain(..) {
                self.handle(completion);
            }
        }
    }

    /// Deletes the oldest segments while every record in them is trimmed durably.
    pub(crate) fn reclaim(&mut self) {
        while self.segments.len() >= 2 && self.failed.is_none() {
            let next = &self.segments[1];
            if next.first_seq == 0 || next.first_seq > self.durable_seq {
                return;
            }
            let oldest = &self.segments[0];
            let live = oldest
                .log_ends
                .iter()
                .any(|(log_id, &end)| self.logs.get(log_id).is_some_and(|l| l.durable_trim < end));
            // A read of it in flight: it goes once the read completed (which calls this).
            if live || self.reads.reading(oldest.id) {
                return;
            }
            let oldest = self.segments.pop_front().expect("checked");
            self.io.close(oldest.file);
            for log_id in oldest.log_ends.keys() {
                if let Some(log) = self.logs.get_mut(log_id) {
                    log.forget_segment(oldest.id);
                }
            }
            if let Err(e) = self.io.remove(&oldest.path) {
                self.fail(format!("deleting {}: {e}", oldest.path.display()));
                return;
            }
            self.io
                .sync(self.dir_file, token(Op::DirSync, DIR_SYNC_DELETE));
            self.metrics.segments_deleted += 1;
            tracing::debug!(segment = %oldest.path.display(), "trimmed segment deleted");
        }
    }
}
