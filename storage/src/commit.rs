//! Group commit: how appends become durable writes.
//!
//! Appends fill the *building* frame. Whenever fewer than `writes_in_flight_max` frame writes
//! are in flight, [`Store::pump`] seals whatever is pending into one frame and submits it as
//! one aligned O_DIRECT write with the chosen durability (`RWF_DSYNC`, or linked to an
//! fdatasync). No timer: at low load every append is its own write (latency = one device
//! write); under load, appends pile up while writes are in flight and the next frame carries
//! them all (throughput = the device's bandwidth).
//!
//! Writes may complete out of order; acknowledgements do not. The durable frontier advances
//! over the in-flight queue in sequence order, so an append is acknowledged only when its own
//! frame and every frame before it are durable. A failed write or flush stops the store: the
//! frontier never passes the failed frame.

use std::io;

use crate::buf::AlignedBuf;
use crate::format::{
    FrameHeader, FrameKind, SnapshotEntry, StateRecord, CONTROL_WRITER, FORMAT_VERSION,
    FRAME_HEADER_BYTES, FRAME_MAGIC, SNAPSHOT_ENTRY_BYTES, STATE_RECORD_BYTES, SYSTEM_LOG,
};
use crate::io::{Completion, Io, EXTERNAL_TOKEN};
use crate::lifecycle::Spare;
use crate::store::{disk_len, Ack, Entry, Frame, Store};

/// The operation a completion token belongs to (top byte of the token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// A frame write; the low bits are its seq.
    Frame = 1,
    /// A zero-fill write of the spare segment.
    ZeroFill = 2,
    /// The header write (with flush) that makes the spare ready.
    SpareHeader = 3,
    /// A directory sync after creating or deleting a segment.
    DirSync = 4,
    /// The clean-stop record's write and its directory sync (`Store::close` waits for them).
    CleanStop = 5,
    /// A read of a segment for a read request; the low bits are the request's slot.
    Read = 6,
}

const OP_SHIFT: u32 = 56;

pub(crate) fn token(op: Op, value: u64) -> u64 {
    debug_assert!(value < 1 << OP_SHIFT);
    (op as u64) << OP_SHIFT | value
}

fn untoken(token: u64) -> (Option<Op>, u64) {
    let op = match token >> OP_SHIFT {
        1 => Some(Op::Frame),
        2 => Some(Op::ZeroFill),
        3 => Some(Op::SpareHeader),
        4 => Some(Op::DirSync),
        5 => Some(Op::CleanStop),
        6 => Some(Op::Read),
        _ => None,
    };
    (op, token & ((1 << OP_SHIFT) - 1))
}

impl<I: Io> Store<I> {
    /// Submits what can be submitted: spare preparation, then frames while write slots are free.
    pub(crate) fn pump(&mut self) {
        if self.failed.is_some() {
            return;
        }
        self.advance_spare();
        while self.in_flight.len() < self.config.writes_in_flight_max && self.failed.is_none() {
            if self.need_snapshot {
                if !self.submit_snapshot() {
                    break;
                }
                continue;
            }
            if self.sealed.is_empty() {
                match self.building.take() {
                    Some(frame) if !frame.entries.is_empty() => self.sealed.push_back(frame),
                    other => {
                        self.building = other;
                        break;
                    }
                }
            }
            let len = disk_len(self.sealed.front().expect("a sealed frame").bytes().len()) as u64;
            let active_bytes = self.segments.back().expect("an active segment").bytes;
            if self.active_offset + len > active_bytes {
                if !self.roll_over() {
                    break;
                }
                continue;
            }
            let frame = self.sealed.pop_front().expect("a sealed frame");
            self.submit(frame);
        }
    }

    /// Moves to the spare segment if it is ready; the next frame is then its snapshot.
    fn roll_over(&mut self) -> bool {
        if !matches!(self.spare, Spare::Ready(_)) {
            if !self.waiting_for_spare {
                self.waiting_for_spare = true;
                self.metrics.rollover_waits += 1;
                // The spare's zero-fill may have been paced: it goes at full speed now.
                self.advance_spare();
            }
            return false;
        }
        self.waiting_for_spare = false;
        self.activate_spare();
        self.advance_spare();
        true
    }

    /// Writes the state of every log as of the frames submitted so far, as the first frame
    /// of the active segment (recovery starts from the oldest segment's snapshot): an entry
    /// per log, then the idempotency table.
    fn submit_snapshot(&mut self) -> bool {
        let Some(mut frame) = self.take_frame() else {
            return false;
        };
        frame.kind = FrameKind::Snapshot;
        frame.opened_us = self.clock.monotonic_us();
        // Logs that are not yet in a submitted frame do not exist on disk yet.
        let system = SnapshotEntry {
            log_id: SYSTEM_LOG,
            next_lsn: self.system_submitted_lsn,
            trim_point: 0,
            fence: 0,
        };
        let on_disk = self.logs.iter().filter(|(_, l)| l.on_disk);
        // Paired with recovery's check of the oldest snapshot it starts from.
        assert!(
            self.logs
                .values()
                .all(|l| l.submitted_trim <= l.submitted_lsn),
            "a log is trimmed within its submitted records"
        );
        let entries: Vec<SnapshotEntry> = std::iter::once(system)
            .chain(on_disk.map(|(&log_id, l)| SnapshotEntry {
                log_id,
                next_lsn: l.submitted_lsn,
                trim_point: l.submitted_trim,
                fence: l.submitted_fence,
            }))
            .collect();
        assert!(
            entries.len() <= self.config.logs_max + 1,
            "logs_max bounds the snapshot"
        );
        let writers = self.submitted_writers.records();
        let body = entries.len() * SNAPSHOT_ENTRY_BYTES + writers.len() * STATE_RECORD_BYTES;
        let buf = frame.buf.as_mut().expect("frame buffer");
        assert!(
            FRAME_HEADER_BYTES + body <= buf.capacity(),
            "logs_max and writers_max bound the snapshot (StoreConfig::validate)"
        );
        buf.set_len(FRAME_HEADER_BYTES + body);
        let out = buf.range_mut(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body);
        let (log_bytes, writer_bytes) = out.split_at_mut(entries.len() * SNAPSHOT_ENTRY_BYTES);
        log_bytes.copy_from_slice(bytemuck::cast_slice(&entries));
        writer_bytes.copy_from_slice(bytemuck::cast_slice(&writers));
        frame.records = entries.len() as u32;
        self.need_snapshot = false;
        self.submit(frame);
        true
    }

    /// Stamps the frame header, places the frame in the active segment and writes it. Only the
    /// header and the padding are written here: the records (maybe pinned) stay as they are.
    /// What the frame holds becomes the state a snapshot may claim (`submitted_*`), in frame
    /// order: records as written (those a later truncation discards too, until its own frame
    /// is submitted), trims, raises, keys, truncations and resets.
    fn submit(&mut self, mut frame: Frame) {
        assert_eq!(frame.seq, 0, "a frame is submitted once");
        let now = self.clock.monotonic_us();
        let seq = self.next_seq;
        self.next_seq += 1;
        // Paired with the frontier (frames become durable in seq order) and with recovery's
        // torn-tail rule (a frame is written with `durable_seq >= seq - writes_in_flight_max`,
        // so only the last `writes_in_flight_max` frames before a surviving one can be torn):
        // the frames in flight are the ones right after the durable frontier, and at most
        // `writes_in_flight_max` of them.
        let last_in_flight = self.in_flight.back().map_or(self.durable_seq, |f| f.seq);
        assert_eq!(
            seq,
            last_in_flight + 1,
            "frames in flight follow the durable frontier without a gap"
        );
        assert!(
            self.in_flight.len() < self.config.writes_in_flight_max,
            "at most writes_in_flight_max frames in flight"
        );
        let segment = self.segments.back_mut().expect("an active segment");
        let offset = self.active_offset;
        let buf = frame.buf.as_mut().expect("frame buffer");
        let used = buf.len();
        let mut header = FrameHeader {
            magic: FRAME_MAGIC,
            version: FORMAT_VERSION,
            kind: frame.kind as u16,
            crc: 0,
            body_len: (used - FRAME_HEADER_BYTES) as u32,
            seq,
            segment_id: segment.id,
            durable_seq: self.durable_seq,
            prev_crc: self.last_crc,
            count: frame.records,
            reserved: [0; 16],
        };
        header.crc = header.compute_crc(&buf.as_slice()[FRAME_HEADER_BYTES..]);
        let disk = disk_len(used);
        buf.set_len(disk);
        buf.range_mut(0..FRAME_HEADER_BYTES)
            .copy_from_slice(bytemuck::bytes_of(&header));
        buf.range_mut(used..disk).fill(0);
        self.last_crc = header.crc;
        self.active_offset += disk as u64;
        if segment.first_seq == 0 {
            segment.first_seq = seq;
        }
        segment.last_seq = seq;
        segment.end_offset = self.active_offset;
        for entry in &frame.entries {
            match *entry {
                Entry::Append {
                    log_id,
                    first_lsn,
                    count,
                    live,
                    ..
                } => {
                    let log = self.logs.get_mut(&log_id).expect("appended log exists");
                    log.submitted_lsn = first_lsn + u64::from(count);
                    log.on_disk = true;
                    // Records already discarded are not indexed: no read may find them.
                    if live > 0 {
                        log.note_frame(first_lsn, segment.id, offset);
                    }
                    segment.log_ends.insert(log_id, log.submitted_lsn);
                }
                Entry::Trim { log_id, before, .. } => {
                    let log = self.logs.get_mut(&log_id).expect("trimmed log exists");
                    log.submitted_trim = log.submitted_trim.max(before);
                    self.system_submitted_lsn += 1;
                }
                Entry::Fence { log_id, token } => {
                    let log = self.logs.get_mut(&log_id).expect("fenced log exists");
                    log.submitted_fence = log.submitted_fence.max(token);
                    self.system_submitted_lsn += 1;
                }
                Entry::Key {
                    log_id,
                    writer_id,
                    writer_seq,
                    first_lsn,
                    count,
                } => {
                    self.submitted_writers.apply(&StateRecord {
                        kind: CONTROL_WRITER,
                        count,
                        log_id,
                        writer_id,
                        writer_seq,
                        value: first_lsn,
                    });
                    self.system_submitted_lsn += 1;
                }
                Entry::Truncate { log_id, from, .. } => {
                    let log = self.logs.get_mut(&log_id).expect("truncated log exists");
                    log.submitted_lsn = from;
                    log.index_cut = true;
                    self.submitted_writers.forget_from(log_id, from);
                    self.system_submitted_lsn += 1;
                }
                Entry::Reset { log_id, at, .. } => {
                    let log = self.logs.get_mut(&log_id).expect("reset log exists");
                    log.submitted_lsn = at;
                    log.submitted_trim = at;
                    log.on_disk = true;
                    log.index_cut = true;
                    self.submitted_writers.forget_from(log_id, 0);
                    self.system_submitted_lsn += 1;
                }
                Entry::Echo { .. } => {}
            }
        }
        self.metrics.record_batch(
            frame.records,
            disk as u64,
            now.saturating_sub(frame.opened_us),
        );
        frame.seq = seq;
        frame.segment_id = segment.id;
        frame.offset = offset;
        frame.submitted_us = now;
        let file = segment.file;
        let buf = frame.buf.take().expect("frame buffer");
        self.io
            .write(file, offset, buf, self.durability, token(Op::Frame, seq));
        self.in_flight.push_back(frame);
    }

    /// Handles one completion.
    pub(crate) fn handle(&mut self, completion: Completion) {
        if completion.token & EXTERNAL_TOKEN != 0 {
            self.external.push(completion);
            return;
        }
        let Completion { token, buf, result } = completion;
        let (op, value) = untoken(token);
        match op {
            Some(Op::Frame) => self.frame_written(value, buf, result),
            Some(Op::Read) => self.read_completed(value as usize, buf, result),
            // Nothing that completes after a failure may advance anything.
            Some(_) if self.failed.is_some() => {}
            Some(op @ (Op::ZeroFill | Op::SpareHeader | Op::DirSync)) => {
                self.spare_completed(op, value, buf, result)
            }
            Some(Op::CleanStop) => unreachable!("close waits for its own completions"),
            None => unreachable!("unknown completion token {token:#x}"),
        }
    }

    /// The write of frame `seq` completed: its buffer goes back to the frame (also after a
    /// failure: pinned bytes live in it), and the frontier advances over what is durable.
    fn frame_written(&mut self, seq: u64, buf: Option<AlignedBuf>, result: io::Result<usize>) {
        let front = self.in_flight.front().map_or(0, |f| f.seq);
        let index = seq
            .checked_sub(front)
            .expect("completion of a frame not in flight") as usize;
        let frame = &mut self.in_flight[index];
        assert_eq!(frame.seq, seq, "frames in flight are contiguous in seq");
        assert!(frame.buf.is_none(), "a frame write completes once");
        assert_eq!(
            buf.as_ref().map(AlignedBuf::addr),
            Some(frame.base),
            "a frame's buffer comes back from its write, at the same address"
        );
        frame.buf = buf;
        if self.failed.is_some() {
            // Nothing that completes after a failure may advance the frontier.
            return;
        }
        match result {
            Ok(_) => {
                frame.done = true;
                let write_us = self.clock.monotonic_us().saturating_sub(frame.submitted_us);
                self.metrics.record_write(write_us);
                self.advance_frontier();
            }
            Err(e) => self.fail(format!("write of frame {seq} failed: {e}")),
        }
    }

    /// Acknowledges every frame at the head of the in-flight queue that is durable.
    fn advance_frontier(&mut self) {
        while self.in_flight.front().is_some_and(|f| f.done) {
            let frame = self.in_flight.pop_front().expect("checked");
            assert_eq!(
                frame.seq,
                self.durable_seq + 1,
                "frames become durable in order"
            );
            self.durable_seq = frame.seq;
            for entry in &frame.entries {
                match *entry {
                    Entry::Append {
                        token,
                        log_id,
                        first_lsn,
                        count,
                        live,
                    } => {
                        // Discarded records (beyond `live`) never become readable.
                        if live > 0 {
                            let log = self.logs.get_mut(&log_id).expect("log");
                            log.durable_lsn = first_lsn + u64::from(live);
                        }
                        self.acks.push(Ack {
                            token,
                            log_id,
                            lsns: first_lsn..first_lsn + u64::from(count),
                        });
                    }
                    Entry::Trim {
                        token,
                        log_id,
                        before,
                    } => {
                        let log = self.logs.get_mut(&log_id).expect("log");
                        log.durable_trim = log.durable_trim.max(before);
                        self.acks.push(Ack {
                            token,
                            log_id,
                            lsns: before..before,
                        });
                    }
                    Entry::Truncate {
                        token,
                        log_id,
                        from,
                    } => self.acks.push(Ack {
                        token,
                        log_id,
                        lsns: from..from,
                    }),
                    Entry::Reset { token, log_id, at } => {
                        // May lower it: the log's old records are pinned by their segments'
                        // ends until a trim passes them again (ARCHITECTURE.md 9c).
                        self.logs.get_mut(&log_id).expect("log").durable_trim = at;
                        self.acks.push(Ack {
                            token,
                            log_id,
                            lsns: at..at,
                        });
                    }
                    Entry::Fence { .. } | Entry::Key { .. } => {}
                    Entry::Echo {
                        token,
                        log_id,
                        first_lsn,
                        count,
                    } => self.acks.push(Ack {
                        token,
                        log_id,
                        lsns: first_lsn..first_lsn + u64::from(count),
                    }),
                }
            }
            if frame.kind == FrameKind::Data {
                self.tail_cache.push_back(frame);
            } else {
                self.free.push(frame);
            }
        }
        self.reclaim();
    }
}
