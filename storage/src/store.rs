//! The store: one shard's logs over its segments. Appends, trims, reads, and the state that
//! ties them to the group-commit pipeline ([`crate::commit`]) and the segment lifecycle
//! ([`crate::lifecycle`]).
//!
//! A `Store` is single-threaded and poll-driven, like the shard that owns it: `append` and
//! `trim` only lay records into the current write buffer and return at once; `poll` submits
//! frames, reaps completions and hands out [`Ack`]s for what became durable. Replica appends
//! and pins are in [`crate::replica`], truncations and resets in [`crate::cut`], reads in
//! [`crate::reads`].

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::buf::{AlignedBuf, BufAddr};
use crate::calibrate::Calibration;
use crate::clock::Clock;
use crate::commit::{token, Op};
use crate::config::{DurabilityMode, StoreConfig};
use crate::error::{Error, Result};
use crate::format::{
    block_align, payload_crc, record_bytes, CleanStop, ControlRecord, FrameHeader, FrameKind,
    RecordHeader, Records, StateRecord, BLOCK_SIZE, CLEAN_STOP_FILE, CONTROL_FENCE, CONTROL_TRIM,
    CONTROL_WRITER, FRAME_HEADER_BYTES, RECORD_HEADER_BYTES, STATE_RECORD_BYTES, SYSTEM_LOG,
};
use crate::io::{Completion, Durability, FileId, Io};
use crate::lifecycle::Spare;
use crate::log::LogState;
use crate::metrics::StoreMetrics;
use crate::reads::Reads;
use crate::recovery::{recover, RecoveryReport};
use crate::replica::{next_store_id, Pin};
use crate::segment::Segment;
use crate::writers::{Lookup, WriterBatch, WriterKey, Writers};

/// The conditions of an append (all optional): where the batch must start, the writer's
/// fencing token, and its idempotency key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOptions {
    /// Append only if the log's next LSN is this ([`Error::ConditionFailed`] otherwise).
    pub expected_lsn: Option<u64>,
    /// Refuse with [`Error::Fenced`] if lower than the log's token; a higher one becomes the
    /// log's token (durably, with the batch).
    pub fencing_token: Option<u64>,
    /// `(writer_id, writer_seq)`: a batch with a key already appended is not appended again,
    /// its original LSNs are returned (and acknowledged once durable); see [`crate::writers`].
    pub writer: Option<(u64, u64)>,
}

/// A record to append: its payload and the payload's CRC32C (computed by the client, checked
/// before anything is written).
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// The bytes.
    pub payload: &'a [u8],
    /// CRC32C of `payload`.
    pub crc: u32,
}

impl<'a> Record<'a> {
    /// A record whose CRC is computed here.
    pub fn new(payload: &'a [u8]) -> Record<'a> {
        Record {
            payload,
            crc: payload_crc(payload),
        }
    }
}

/// The records of an append.
#[derive(Clone, Copy, Debug)]
pub enum Batch<'a> {
    /// Payloads with their CRCs.
    Records(&'a [Record<'a>]),
    /// `count` records already in the wire and disk layout ([`RecordHeader`] with `len` and
    /// `crc` set, the payload, zero padding to 8 bytes), as a client sends them: they are
    /// copied to the frame as they are and stamped in place.
    Encoded {
        /// The encoded records.
        bytes: &'a [u8],
        /// How many records `bytes` holds.
        count: u32,
    },
}

impl Batch<'_> {
    /// Records and frame bytes of the batch, checking every record's length (and, for an
    /// encoded batch, that the records exactly fill `bytes`).
    fn measure(&self, record_bytes_max: usize) -> Result<(u32, usize)> {
        let too_large = |len: usize| Error::TooLarge {
            len,
            max: record_bytes_max,
        };
        match *self {
            Batch::Records(records) => {
                let mut bytes = 0;
                for r in records {
                    if r.payload.len() > record_bytes_max {
                        return Err(too_large(r.payload.len()));
                    }
                    bytes += record_bytes(r.payload.len());
                }
                Ok((records.len() as u32, bytes))
            }
            Batch::Encoded { bytes, count } => {
                let bytes = measure_encoded(bytes, count, record_bytes_max, |_, _| Ok(()))?;
                Ok((count, bytes))
            }
        }
    }

    /// Writes the records into `out` (exactly the measured bytes) with their headers stamped;
    /// `Err(index)` for the first record whose payload fails its CRC.
    fn lay_out(
        &self,
        out: &mut [u8],
        log_id: u64,
        first_lsn: u64,
        epoch: u64,
        now_wall: u64,
    ) -> Result<(), usize> {
        let mut at = 0;
        let stamp =
            |out: &mut [u8], at: usize, i: usize, len: usize, crc: u32| -> Result<(), usize> {
                let payload = &out[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len];
                if payload_crc(payload) != crc {
                    return Err(i);
                }
                let header = RecordHeader {
                    len: len as u32,
                    crc,
                    log_id,
                    lsn: first_lsn + i as u64,
                    epoch,
                    timestamp_us: now_wall,
                };
                out[at..at + RECORD_HEADER_BYTES].copy_from_slice(bytemuck::bytes_of(&header));
                Ok(())
            };
        match *self {
            Batch::Records(records) => {
                for (i, r) in records.iter().enumerate() {
                    let payload_at = at + RECORD_HEADER_BYTES;
                    let end = at + record_bytes(r.payload.len());
                    out[payload_at..payload_at + r.payload.len()].copy_from_slice(r.payload);
                    out[payload_at + r.payload.len()..end].fill(0);
                    stamp(out, at, i, r.payload.len(), r.crc)?;
                    at = end;
                }
            }
            Batch::Encoded { bytes, count } => {
                out.copy_from_slice(bytes);
                for i in 0..count as usize {
                    let header: RecordHeader =
                        bytemuck::pod_read_unaligned(&out[at..at + RECORD_HEADER_BYTES]);
                    stamp(out, at, i, header.len as usize, header.crc)?;
                    at += record_bytes(header.len as usize);
                }
            }
        }
        Ok(())
    }
}

/// Checks that `count` encoded records exactly fill `bytes`, none over `record_bytes_max`, and
/// that `check(index, header)` accepts each; returns the bytes.
pub(crate) fn measure_encoded(
    bytes: &[u8],
    count: u32,
    record_bytes_max: usize,
    mut check: impl FnMut(usize, &RecordHeader) -> Result<()>,
) -> Result<usize> {
    let mut seen = 0;
    for (i, record) in Records::new(bytes, count).enumerate() {
        let record = record.map_err(|_| Error::Malformed("records overrun the batch"))?;
        if record.payload.len() > record_bytes_max {
            return Err(Error::TooLarge {
                len: record.payload.len(),
                max: record_bytes_max,
            });
        }
        check(i, &record.header)?;
        seen += record_bytes(record.payload.len());
    }
    if seen != bytes.len() {
        return Err(Error::Malformed(
            "the batch holds more bytes than its records",
        ));
    }
    Ok(bytes.len())
}

/// A durable append, trim, truncation or reset, reported by [`Store::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The caller's token.
    pub token: u64,
    /// The log.
    pub log_id: u64,
    /// The LSNs appended (for a trim: empty, starting at the trim point; for a truncation:
    /// empty, at the LSN the log was truncated from; for a reset: empty, where it starts).
    pub lsns: Range<u64>,
}

/// A record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    /// Its position in the log.
    pub lsn: u64,
    /// The log's epoch when it was appended.
    pub epoch: u64,
    /// Server timestamp, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// CRC32C of the payload, as the client computed it (verified on the way out).
    pub crc: u32,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// A log's positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogTail {
    /// The LSN the next record gets.
    pub next_lsn: u64,
    /// Records below are durable and readable.
    pub durable_lsn: u64,
    /// Records below are trimmed.
    pub trim_point: u64,
    /// The log's fencing token (0: never fenced).
    pub fencing_token: u64,
}

/// What a frame holds, for acknowledging it (and for the bookkeeping of its submission).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Entry {
    Append {
        token: u64,
        log_id: u64,
        first_lsn: u64,
        count: u32,
        /// How many of the records are still the log's: `count`, unless a truncation or reset
        /// made after the append discarded some (they are written all the same, and
        /// acknowledged with `count`, but they are not indexed and do not become readable).
        live: u32,
    },
    Trim {
        token: u64,
        log_id: u64,
        before: u64,
    },
    /// A fencing-token raise (one control record in the frame).
    Fence { log_id: u64, token: u64 },
    /// An idempotency key (one control record in the frame).
    Key {
        log_id: u64,
        writer_id: u64,
        writer_seq: u64,
        first_lsn: u64,
        count: u32,
    },
    /// A truncation (the last record of its frame, [`crate::cut`]).
    Truncate { token: u64, log_id: u64, from: u64 },
    /// A reset (the last record of its frame but for a fencing-token raise, [`crate::cut`]).
    Reset { token: u64, log_id: u64, at: u64 },
    /// A retried batch, acknowledged with its original LSNs when this frame is durable.
    Echo {
        token: u64,
        log_id: u64,
        first_lsn: u64,
        count: u32,
    },
}

/// A write buffer and what is in it.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Which of the store's buffers this is (its index in [`Store::pins`]).
    pub(crate) slot: usize,
    /// Where the buffer's bytes are, also while the buffer is moved into its write.
    pub(crate) base: BufAddr,
    /// The bytes (header space first); `None` while the kernel has it.
    pub(crate) buf: Option<AlignedBuf>,
    pub(crate) kind: FrameKind,
    pub(crate) entries: Vec<Entry>,
    pub(crate) records: u32,
    /// When the first record went in (batch wait starts).
    pub(crate) opened_us: u64,
    // Set when submitted:
    /// The frame's sequence number; 0 until it is submitted.
    pub(crate) seq: u64,
    pub(crate) segment_id: u64,
    pub(crate) offset: u64,
    pub(crate) submitted_us: u64,
    pub(crate) done: bool,
}

impl Frame {
    fn new(slot: usize, buf: AlignedBuf) -> Frame {
        Frame {
            slot,
            base: buf.addr(),
            buf: Some(buf),
            kind: FrameKind::Data,
            entries: Vec::new(),
            records: 0,
            opened_us: 0,
            seq: 0,
            segment_id: 0,
            offset: 0,
            submitted_us: 0,
            done: false,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.buf.as_ref().expect("frame buffer").as_slice()
    }

    /// The records laid into the frame so far, wherever its buffer is: in the frame (being
    /// filled, sealed, back from its write) or moved into its in-flight write.
    pub(crate) fn contents(&self) -> Records<'_> {
        if self.seq == 0 {
            return Records::new(&self.bytes()[FRAME_HEADER_BYTES..], self.records);
        }
        // SAFETY: the buffer lives (here, or in its write until the completion: the Io
        // contract), its header and body were written at submission, and nothing writes a
        // submitted frame (the store does not; a backend only reads a write's buffer).
        let header: FrameHeader =
            bytemuck::pod_read_unaligned(unsafe { self.base.slice(0..FRAME_HEADER_BYTES) });
        let body = FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.body_len as usize;
        // SAFETY: as above.
        Records::new(unsafe { self.base.slice(body) }, header.count)
    }
}

/// A batch that passed the checks of its kind of append, about to be stored
/// ([`Store::store_admitted`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Admitted {
    pub(crate) token: u64,
    pub(crate) log_id: u64,
    pub(crate) first_lsn: u64,
    pub(crate) count: u32,
    /// Bytes of the records in the frame.
    pub(crate) bytes: usize,
    /// A fencing token above the log's, to become the log's.
    pub(crate) raise: Option<u64>,
    /// The idempotency key (`writer_id`, `writer_seq`) to remember for the batch.
    pub(crate) writer: Option<(u64, u64)>,
}

/// One shard's storage engine.
#[derive(Debug)]
pub struct Store<I: Io> {
    /// The first field, so the first dropped: the backend finishes (or abandons, keeping their
    /// buffers) every operation in flight, frame writes and the owner's sends from pinned
    /// frames alike, before any frame buffer is freed.
    pub(crate) io: I,
    /// Tells this store's pins from another's.
    pub(crate) id: u64,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: StoreConfig,
    pub(crate) dir: PathBuf,
    /// The shard directory, opened for syncing its entries.
    pub(crate) dir_file: FileId,
    pub(crate) durability: Durability,
    pub(crate) calibration: Option<Calibration>,
    pub(crate) recovery: RecoveryReport,
    // Segments: oldest first, the last is active.
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) active_offset: u64,
    pub(crate) need_snapshot: bool,
    pub(crate) spare: Spare,
    /// A full segment is waiting for the spare (counted once per rollover).
    pub(crate) waiting_for_spare: bool,
    /// Whether the spare's zero-fill is paced by the active segment's fill (not at open).
    pub(crate) pace_spare: bool,
    // Frames: free, being filled, sealed (waiting for a write slot), in flight, cached.
    pub(crate) free: Vec<Frame>,
    pub(crate) building: Option<Frame>,
    pub(crate) sealed: VecDeque<Frame>,
    pub(crate) in_flight: VecDeque<Frame>,
    pub(crate) tail_cache: VecDeque<Frame>,
    /// Pins of each frame buffer (by [`Frame::slot`]): a pinned buffer is never reused.
    pub(crate) pins: Vec<u32>,
    pub(crate) next_seq: u64,
    pub(crate) last_crc: u32,
    pub(crate) durable_seq: u64,
    // Logs.
    pub(crate) logs: HashMap<u64, LogState>,
    pub(crate) system_next_lsn: u64,
    pub(crate) system_submitted_lsn: u64,
    /// The idempotency table as appends left it: what retries are answered from.
    pub(crate) writers: Writers,
    /// The idempotency table as the submitted frames built it (the same operations, applied
    /// when their frame is submitted): what a snapshot frame carries, exactly what recovery
    /// rebuilds from the frames before it.
    pub(crate) submitted_writers: Writers,
    // Completions waiting to be handled, acks waiting to be handed out.
    pub(crate) stash: Vec<Completion>,
    pub(crate) acks: Vec<Ack>,
    /// Completions of the owner's own operations ([`EXTERNAL_TOKEN`](crate::io::EXTERNAL_TOKEN)), not yet taken.
    pub(crate) external: Vec<Completion>,
    pub(crate) failed: Option<String>,
    pub(crate) metrics: StoreMetrics,
    /// Reads waiting for the disk, and their results ([`crate::reads`]).
    pub(crate) reads: Reads,
}

impl<I: Io> Store<I> {
    /// Opens (recovering) or creates the store in `dir`.
    pub fn open(
        mut io: I,
        dir: &Path,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Store<I>> {
        config.validate()?;
        let recovered = recover(&mut io, dir, config.writers_max)?;
        // Address space for every frame at startup; memory only for the bytes frames hold
        // (`AlignedBuf::new`). Registering the buffers with the ring would pin all of them.
        let free: Vec<Frame> = (0..config.write_buffers)
            .map(|slot| Frame::new(slot, AlignedBuf::new(config.batch_bytes_max)))
            .collect();
        let next_segment_id = recovered.segments.back().map_or(1, |s| s.id + 1);
        let spare = match recovered.spare {
            Some(segment) => Spare::Ready(segment),
            None => Spare::Idle {
                next_id: next_segment_id,
            },
        };
        tracing::info!(dir = %dir.display(), report = ?recovered.report, "store recovered");
        let dir_file = io.open_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut store = Store {
            io,
            id: next_store_id(),
            clock,
            dir: dir.to_path_buf(),
            dir_file,
            durability: Durability::Fdatasync,
            calibration: None,
            recovery: recovered.report,
            segments: recovered.segments,
            active_offset: recovered.active_offset,
            need_snapshot: recovered.need_snapshot,
            spare,
            waiting_for_spare: false,
            pace_spare: true,
            free,
            building: None,
            sealed: VecDeque::new(),
            in_flight: VecDeque::new(),
            tail_cache: VecDeque::new(),
            pins: vec![0; config.write_buffers],
            next_seq: recovered.next_seq,
            last_crc: recovered.last_crc,
            durable_seq: recovered.next_seq - 1,
            system_next_lsn: recovered.system_next_lsn,
            system_submitted_lsn: recovered.system_next_lsn,
            logs: recovered.logs,
            submitted_writers: recovered.writers.clone(),
            writers: recovered.writers,
            stash: Vec::new(),
            acks: Vec::new(),
            external: Vec::new(),
            failed: None,
            metrics: StoreMetrics::new(),
            reads: Reads::new(),
            config,
        };
        if store.segments.is_empty() {
            // A new shard: its first segment, prepared before anything is accepted.
            store.prepare_spare_now()?;
            store.activate_spare();
        }
        store.prepare_spare_now()?;
        store.durability = match store.config.durability {
            DurabilityMode::Fdatasync => Durability::Fdatasync,
            DurabilityMode::Dsync => Durability::Dsync,
            DurabilityMode::Auto => {
                let calibration = store.calibrate()?;
                let chosen = calibration.chosen;
                store.calibration = Some(calibration);
                chosen
            }
        };
        tracing::info!(durability = ?store.durability, calibration = ?store.calibration, "store open");
        Ok(store)
    }

    /// Appends `records` to `log_id` (creating the log at its first append). Returns the LSNs
    /// they get; they are durable once [`poll`](Self::poll) reports an [`Ack`] with `token`.
    pub fn append(
        &mut self,
        log_id: u64,
        epoch: u64,
        records: &[Record<'_>],
        token: u64,
    ) -> Result<Range<u64>> {
        let options = AppendOptions::default();
        let batch = Batch::Records(records);
        let (lsns, _) = self.append_batch(log_id, epoch, &options, batch, false, token)?;
        Ok(lsns)
    }

    /// Appends a batch in either form under `options` (condition, fencing token, idempotency
    /// key). As [`append`](Self::append); a batch whose idempotency key was appended before
    /// returns that batch's LSNs, and its ack (with `token`) comes once they are durable.
    ///
    /// With `pin`, the records stored are also pinned in their frame buffer (a [`Pin`], for
    /// forwarding them to a successor from the buffer that goes to disk, ARCHITECTURE.md 9b);
    /// a retry answered with its original LSNs stores nothing and gets no pin.
    pub fn append_batch(
        &mut self,
        log_id: u64,
        epoch: u64,
        options: &AppendOptions,
        batch: Batch<'_>,
        pin: bool,
        token: u64,
    ) -> Result<(Range<u64>, Option<Pin>)> {
        self.check_failed()?;
        if log_id == SYSTEM_LOG {
            return Err(Error::ReservedLog(log_id));
        }
        let (count, bytes) = batch.measure(self.config.record_bytes_max)?;
        if count == 0 {
            return Err(Error::EmptyBatch);
        }
        // A retry is answered as the original was, whatever changed since (the tail, the
        // token): the original succeeded.
        if let Some((writer_id, seq)) = options.writer {
            match self.writers.lookup(log_id, writer_id, seq) {
                Lookup::New => {}
                Lookup::Duplicate(original) => {
                    return Ok((self.echo(token, log_id, original), None))
                }
                Lookup::OutOfOrder { last } => return Err(Error::WriterSeq { seq, last }),
            }
        }
        let (next_lsn, fence) = self
            .logs
            .get(&log_id)
            .map_or((0, 0), |l| (l.next_lsn, l.fence));
        if let Some(token) = options.fencing_token {
            if token < fence {
                return Err(Error::Fenced { token: fence });
            }
        }
        if options
            .expected_lsn
            .is_some_and(|expected| expected != next_lsn)
        {
            return Err(Error::ConditionFailed { tail: next_lsn });
        }
        let admitted = Admitted {
            token,
            log_id,
            first_lsn: next_lsn,
            count,
            bytes,
            raise: options.fencing_token.filter(|&t| t > fence),
            writer: options.writer,
        };
        // Headers are stamped in place on the copy.
        self.store_admitted(admitted, pin, |out, now_wall| {
            batch.lay_out(out, log_id, next_lsn, epoch, now_wall)
        })
    }

    /// Stores a batch that passed the checks of its kind of append
    /// ([`append_batch`](Self::append_batch), [`append_replica`](Self::append_replica)): makes
    /// room in the building frame for its records and their control records (one frame, so
    /// they are durable together), copies the records in once with `lay_out(out, now_wall)`,
    /// which verifies each record's checksum on the copy (`Err(index)` for the first that
    /// fails: nothing is kept), then does the log's bookkeeping and lays the control records
    /// of a fencing-token raise and an idempotency key. With `pin`, pins the records.
    pub(crate) fn store_admitted(
        &mut self,
        batch: Admitted,
        pin: bool,
        lay_out: impl FnOnce(&mut [u8], u64) -> Result<(), usize>,
    ) -> Result<(Range<u64>, Option<Pin>)> {
        let Admitted {
            token,
            log_id,
            first_lsn,
            count,
            bytes,
            raise,
            writer,
        } = batch;
        let controls = usize::from(raise.is_some()) + usize::from(writer.is_some());
        let frame_bytes = bytes + controls * record_bytes(STATE_RECORD_BYTES);
        let body_max = self.config.batch_bytes_max - FRAME_HEADER_BYTES;
        if frame_bytes > body_max {
            return Err(Error::TooLarge {
                len: frame_bytes,
                max: body_max,
            });
        }
        if !self.logs.contains_key(&log_id) && self.logs.len() >= self.config.logs_max {
            return Err(Error::TooManyLogs {
                max: self.config.logs_max,
            });
        }
        let now_wall = self.clock.wall_us();
        // Room first: a refused (Overloaded) append must not cost a pass over its bytes.
        self.make_room(frame_bytes)?;
        let frame = self
            .building
            .as_mut()
            .expect("make_room leaves a building frame");
        let buf = frame.buf.as_mut().expect("building frame has its buffer");
        let start = buf.len();
        buf.set_len(start + bytes);
        // One copy from the caller's bytes into the frame, checked before anything is written.
        if let Err(index) = lay_out(buf.range_mut(start..start + bytes), now_wall) {
            buf.set_len(start);
            return Err(Error::Checksum { index });
        }
        frame.records += count;
        frame.entries.push(Entry::Append {
            token,
            log_id,
            first_lsn,
            count,
            live: count,
        });
        let (slot, base) = (frame.slot, frame.base);
        let pin = pin.then(|| self.pin(slot, base, start..start + bytes));
        let log = self.logs.entry(log_id).or_default();
        assert_eq!(log.next_lsn, first_lsn, "log {log_id}: LSNs are dense");
        log.next_lsn = first_lsn + u64::from(count);
        self.metrics.records_appended += u64::from(count);
        if let Some(token) = raise {
            assert!(
                token > log.fence,
                "log {log_id}: a fencing token only rises"
            );
            log.fence = token;
            let state = StateRecord {
                kind: CONTROL_FENCE,
                log_id,
                value: token,
                ..StateRecord::default()
            };
            self.push_control(bytemuck::bytes_of(&state), now_wall);
            self.push_entry(Entry::Fence { log_id, token });
        }
        if let Some((writer_id, writer_seq)) = writer {
            let key = WriterKey {
                writer_id,
                writer_seq,
                first_lsn,
                count,
            };
            self.push_key(log_id, &key, now_wall);
        }
        Ok((first_lsn..first_lsn + u64::from(count), pin))
    }

    /// Remembers `key` for `log_id` and lays its `CONTROL_WRITER` record into the building
    /// frame (which has room for it).
    pub(crate) fn push_key(&mut self, log_id: u64, key: &WriterKey, now_wall: u64) {
        let state = StateRecord {
            kind: CONTROL_WRITER,
            count: key.count,
            log_id,
            writer_id: key.writer_id,
            writer_seq: key.writer_seq,
            value: key.first_lsn,
        };
        self.writers.apply(&state);
        self.push_control(bytemuck::bytes_of(&state), now_wall);
        self.push_entry(Entry::Key {
            log_id,
            writer_id: key.writer_id,
            writer_seq: key.writer_seq,
            first_lsn: key.first_lsn,
            count: key.count,
        });
    }

    /// Answers a retried batch with its original LSNs: the ack goes with the newest frame
    /// (so it follows every ack owed before it, and the original's), or at once if everything
    /// is durable.
    fn echo(&mut self, token: u64, log_id: u64, original: WriterBatch) -> Range<u64> {
        self.metrics.duplicates += 1;
        let lsns = original.first_lsn..original.first_lsn + u64::from(original.count);
        let entry = Entry::Echo {
            token,
            log_id,
            first_lsn: original.first_lsn,
            count: original.count,
        };
        let newest = match self.building.as_mut().filter(|f| !f.entries.is_empty()) {
            Some(frame) => Some(frame),
            None => self.sealed.back_mut().or(self.in_flight.back_mut()),
        };
        match newest {
            Some(frame) => frame.entries.push(entry),
            None => self.acks.push(Ack {
                token,
                log_id,
                lsns: lsns.clone(),
            }),
        }
        lsns
    }

    /// Trims `log_id` below `before`: reads below fail with [`Error::Trimmed`] at once; the
    /// trim is durable when an [`Ack`] with `token` is reported, and segments whose records
    /// are all trimmed are deleted after that.
    pub fn trim(&mut self, log_id: u64, before: u64, token: u64) -> Result<()> {
        self.check_failed()?;
        if log_id == SYSTEM_LOG {
            return Err(Error::ReservedLog(log_id));
        }
        let log = self.logs.get(&log_id).ok_or(Error::UnknownLog(log_id))?;
        if before > log.next_lsn {
            return Err(Error::TrimBeyondTail {
                before,
                tail: log.next_lsn,
            });
        }
        let control = ControlRecord {
            kind: CONTROL_TRIM,
            reserved: 0,
            log_id,
            lsn: before,
        };
        let now_wall = self.clock.wall_us();
        self.make_room(record_bytes(std::mem::size_of::<ControlRecord>()))?;
        self.push_control(bytemuck::bytes_of(&control), now_wall);
        self.push_entry(Entry::Trim {
            token,
            log_id,
            before,
        });
        let log = self.logs.get_mut(&log_id).expect("checked above");
        log.trim_point = log.trim_point.max(before);
        Ok(())
    }

    /// Lays a system-log record with `payload` into the building frame (room already made).
    pub(crate) fn push_control(&mut self, payload: &[u8], now_wall: u64) {
        let header = RecordHeader {
            len: payload.len() as u32,
            crc: payload_crc(payload),
            log_id: SYSTEM_LOG,
            lsn: self.system_next_lsn,
            epoch: 0,
            timestamp_us: now_wall,
        };
        self.system_next_lsn += 1;
        let frame = self.building.as_mut().expect("room was made");
        frame.records += 1;
        let buf = frame.buf.as_mut().expect("building frame has its buffer");
        let at = buf.len();
        let size = record_bytes(payload.len());
        buf.set_len(at + size);
        let out = buf.range_mut(at..at + size);
        let (head, rest) = out.split_at_mut(RECORD_HEADER_BYTES);
        head.copy_from_slice(bytemuck::bytes_of(&header));
        rest[..payload.len()].copy_from_slice(payload);
        rest[payload.len()..].fill(0);
    }

    pub(crate) fn push_entry(&mut self, entry: Entry) {
        let frame = self.building.as_mut().expect("room was made");
        frame.entries.push(entry);
    }

    /// Submits pending frames, handles completions (waiting for at least one if `wait`,
    /// anything is in flight and no acknowledgement is ready), and moves acknowledgements of durable appends and trims into
    /// `acks`. An `Err(Error::Fatal)` means a write or flush failed: no ack comes with it or
    /// ever after (every ack delivered before it was durable).
    pub fn poll(&mut self, wait: bool, acks: &mut Vec<Ack>) -> Result<()> {
        if self.failed.is_none() {
            self.pump();
            let mut completions = std::mem::take(&mut self.stash);
            // Acks that are ready (a retried batch that is durable already) go out now: the
            // owner's own operations in the ring may not complete for a long time.
            let ready = !completions.is_empty() || !self.acks.is_empty();
            let min = usize::from(wait && !ready && self.io.in_flight() > 0);
            if let Err(e) = self.io.wait(min, &mut completions) {
                self.fail(format!("I/O backend failed: {e}"));
            }
            for completion in completions.drain(..) {
                self.handle(completion);
            }
            self.stash = completions;
            self.pump();
        }
        if self.failed.is_none() {
            acks.append(&mut self.acks);
        }
        self.check_failed()
    }

    /// The I/O backend, for the owner to submit its own operations (tokens with
    /// [`EXTERNAL_TOKEN`](crate::io::EXTERNAL_TOKEN)) to the same ring; their completions come back through
    /// [`take_external`](Self::take_external) after a [`poll`](Self::poll).
    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// The I/O backend, to look at (a simulator asks its environment when it has work).
    pub fn io(&self) -> &I {
        &self.io
    }

    /// Moves the completions of the owner's own operations into `out`.
    pub fn take_external(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.external);
    }

    /// True if completions of the owner's own operations wait to be taken (a wait of the
    /// store's own, such as [`sync_all`](Self::sync_all), reaped them): the owner handles them
    /// before it waits for more, since the operations they finish (an accept, a timer) are
    /// armed again only once handled, and the ring may hold nothing else to wake it.
    pub fn has_external(&self) -> bool {
        !self.external.is_empty()
    }

    /// Polls until everything appended so far is durable (or the store failed).
    /// [`Error::Overloaded`] if pinned buffers keep it from getting there (a segment rollover
    /// needs a buffer for its snapshot and every one is pinned): unpin, then call it again.
    pub fn sync_all(&mut self, acks: &mut Vec<Ack>) -> Result<()> {
        let pending = |store: &Self| {
            store
                .building
                .as_ref()
                .is_some_and(|f| !f.entries.is_empty())
                || !store.sealed.is_empty()
                || !store.in_flight.is_empty()
        };
        while pending(self) {
            self.poll(true, acks)?;
            if pending(self) && self.io.in_flight() == 0 {
                // Nothing to wait for and still something to write: only a buffer can help.
                self.metrics.overloaded += 1;
                return Err(Error::Overloaded);
            }
        }
        self.poll(false, acks)
    }

    /// Stops the store cleanly: polls until everything appended is durable (acks into `acks`),
    /// then writes the clean-stop record (durably, directory included): where the frame chain
    /// ends. The next open then takes any frame missing before that point for damaged
    /// committed data ([`Error::Corrupt`]), never for a torn tail (ARCHITECTURE.md 8). A store
    /// dropped without `close` is recovered as after a crash. Errors as
    /// [`sync_all`](Self::sync_all) (unpin everything first); [`Error::Fatal`] if the record's
    /// write or sync fails (the disk failed: what it left is either no record, and the next
    /// open recovers as after a crash, or one that the next open reports).
    pub fn close(mut self, acks: &mut Vec<Ack>) -> Result<()> {
        self.sync_all(acks)?;
        let path = self.dir.join(CLEAN_STOP_FILE);
        let file = self.io.open(&path, true).map_err(|e| Error::io(&path, e))?;
        let record = CleanStop::new(self.next_seq - 1, self.last_crc);
        let mut block = AlignedBuf::new(BLOCK_SIZE);
        block.set_len(BLOCK_SIZE);
        block.as_mut_slice()[..std::mem::size_of::<CleanStop>()]
            .copy_from_slice(bytemuck::bytes_of(&record));
        // The record and its directory entry, in either order: without both it is absent or
        // empty, which recovery takes for a close that did not finish.
        let (write, dir_sync) = (token(Op::CleanStop, 0), token(Op::CleanStop, 1));
        self.io.write(file, 0, block, Durability::Fdatasync, write);
        self.io.sync(self.dir_file, dir_sync);
        let mut pending = 2;
        let mut completions = Vec::new();
        while pending > 0 {
            if let Err(e) = self.io.wait(1, &mut completions) {
                self.fail(format!("I/O backend failed while closing: {e}"));
            }
            for completion in completions.drain(..) {
                if completion.token != write && completion.token != dir_sync {
                    // The spare's preparation, or the owner's operations.
                    self.handle(completion);
                    continue;
                }
                pending -= 1;
                if let Err(e) = completion.result {
                    self.fail(format!("writing {}: {e}", path.display()));
                }
            }
            self.check_failed()?;
        }
        self.io.close(file);
        tracing::info!(dir = %self.dir.display(), last_seq = record.last_seq, "store closed cleanly");
        Ok(())
    }

    /// The positions of `log_id`, if the store has it.
    pub fn tail(&self, log_id: u64) -> Option<LogTail> {
        self.logs.get(&log_id).map(|l| LogTail {
            next_lsn: l.next_lsn,
            durable_lsn: l.durable_lsn,
            trim_point: l.trim_point,
            fencing_token: l.fence,
        })
    }

    /// The ids of the logs in the store (unordered).
    pub fn log_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.logs.keys().copied()
    }

    /// How appends are made durable here.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The calibration measured at open, if the mode was `Auto`.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// What recovery found when the store opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Group commit and segment metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// The shard directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segment files currently in use (the spare excluded).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub(crate) fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(reason) => Err(Error::Fatal(reason.clone())),
            None => Ok(()),
        }
    }

    /// Stops the store for good: nothing is acknowledged after this, not even acks of earlier
    /// durable frames that were not handed out yet (their outcome stays unknown to clients,
    /// which is allowed; an ack after the failure was reported would not be).
    pub(crate) fn fail(&mut self, reason: String) {
        self.acks.clear();
        if self.failed.is_none() {
            tracing::error!(%reason, "storage failure; the store stops acknowledging");
            self.failed = Some(reason.clone());
            self.reads.fail(&reason);
        }
    }

    pub(crate) fn segment_path(&self, segment_id: u64) -> PathBuf {
        self.dir.join(crate::segment::segment_name(segment_id))
    }

    pub(crate) fn process_stash(&mut self) {
        let completions = std::mem::take(&mut self.stash);
        for completion in completions {
            self.handle(completion);
        }
    }

    /// A free frame buffer: from the free list, or the oldest cached frame that is not pinned.
    pub(crate) fn take_frame(&mut self) -> Option<Frame> {
        let mut frame = match self.free.pop() {
            Some(frame) => frame,
            None => {
                let pins = &self.pins;
                let i = self.tail_cache.iter().position(|f| pins[f.slot] == 0)?;
                self.tail_cache.remove(i).expect("found above")
            }
        };
        assert_eq!(
            self.pins[frame.slot], 0,
            "a pinned frame buffer is never reused"
        );
        frame.entries.clear();
        frame.records = 0;
        frame.done = false;
        frame.seq = 0;
        frame
            .buf
            .as_mut()
            .expect("a free frame has its buffer")
            .set_len(FRAME_HEADER_BYTES);
        Some(frame)
    }

    /// The frame being filled, with room for `bytes` more; seals the current one if full.
    pub(crate) fn make_room(&mut self, bytes: usize) -> Result<()> {
        let fits = self
            .building
            .as_ref()
            .is_some_and(|f| f.bytes().len() + bytes <= self.config.batch_bytes_max);
        if !fits {
            // Keep one buffer back for the snapshot frame that a segment rollover needs. Pinned
            // buffers cannot be had: when they are all that is left, this is the backpressure.
            let pins = &self.pins;
            let reusable = self.tail_cache.iter().filter(|f| pins[f.slot] == 0).count();
            if self.free.len() + reusable <= 1 {
                self.metrics.overloaded += 1;
                return Err(Error::Overloaded);
            }
            if let Some(full) = self.building.take() {
                self.sealed.push_back(full);
            }
            let mut frame = self.take_frame().expect("checked above");
            frame.kind = FrameKind::Data;
            frame.opened_us = self.clock.monotonic_us();
            self.building = Some(frame);
        }
        let frame = self.building.as_mut().expect("building frame");
        if frame.entries.is_empty() {
            frame.opened_us = self.clock.monotonic_us();
        }
        Ok(())
    }
}

/// Rounds a frame's used bytes to what it takes on disk.
pub(crate) fn disk_len(used: usize) -> usize {
    block_align(used).max(BLOCK_SIZE)
}
