//! Chain replication's side of the store: appending records that another node sequenced
//! ([`Store::append_replica`]), pinning stored records so that they are forwarded from the
//! frame buffer that goes to disk ([`Pin`]), and cutting stored records into the runs that
//! catch a successor up ([`StoredRun`], read with [`Store::read_stored_runs`]).
//!
//! A replica stores the head's records as they are: same bytes, same LSNs, epochs and
//! timestamps, and the head's fencing-token raises and idempotency keys as the same control
//! records in the same frame as the records (ARCHITECTURE.md 9a), so its recovery rebuilds
//! what the head's would, and it can become the head.
//!
//! Pins: the records of an append are copied once, from the socket buffer into the building
//! frame; a pin keeps that frame's buffer from being reused, and promises that the pinned bytes
//! are not written again, while the frame is sealed, written, cached and (if the store fails)
//! abandoned. So the same memory goes to disk and to the successor. Pins are counted per frame
//! buffer; when every buffer the store could fill next is pinned, appends get
//! [`Error::Overloaded`](crate::Error::Overloaded): backpressure from slow successors.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buf::BufAddr;
use crate::error::{Error, Result};
use crate::format::{payload_crc, RecordHeader, Records, SYSTEM_LOG};
use crate::io::Io;
use crate::reads::BatchMark;
use crate::store::{measure_encoded, Admitted, ReadRecord, Store};

/// The head's decisions about a replicated batch, applied by the replica without checking
/// them (the head checked them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaState {
    /// The log's fencing token after the batch: it becomes the log's if it is higher (a lower
    /// one changes nothing and is not refused).
    pub fencing_token: Option<u64>,
    /// The batch's idempotency key (`writer_id`, `writer_seq`), remembered for its LSNs so that
    /// a retry to this node, once it is the head, gets them.
    pub writer: Option<(u64, u64)>,
}

/// Stored records pinned in their frame buffer: the buffer is not reused and the bytes are not
/// written again until the pin is given back to [`Store::unpin`]. From
/// [`Store::append_batch`] or [`Store::append_replica`] asked to pin; read with
/// [`Store::pinned`].
///
/// Safety contract of the bytes: the slice [`Store::pinned`] returns stays valid for reads,
/// and its bytes unchanged, from the pin until [`Store::unpin`], even after the borrow ends and
/// while the store keeps appending, writing and polling, but no longer than the store lives;
/// so its pointer may be handed to the kernel (a zero-copy send on the store's ring) as long as
/// the send completes before the pin is unpinned and the store dropped, and nothing may write
/// through it. (A store's ring is dropped before its buffers, after its operations completed.)
#[derive(Debug)]
#[must_use = "a pin keeps its frame buffer from being reused until it is given to Store::unpin"]
pub struct Pin {
    store: u64,
    slot: usize,
    buf: BufAddr,
    bytes: Range<usize>,
}

impl Pin {
    /// Bytes pinned.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no bytes are pinned (never: an append stores at least one record).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

static STORE_IDS: AtomicU64 = AtomicU64::new(1);

/// An id no other store of this process has (pins name their store).
pub(crate) fn next_store_id() -> u64 {
    STORE_IDS.fetch_add(1, Ordering::Relaxed)
}

impl<I: Io> Store<I> {
    /// Appends `count` records that the head of the log's chain sequenced, as they are: `bytes`
    /// holds them stamped, in the stored layout ([`RecordHeader`] with every field set,
    /// payload, zero padding to 8 bytes), with LSNs `first_lsn ..`, and they are copied once
    /// into the building frame without re-stamping. `state` carries the head's fencing token
    /// and idempotency key, applied unconditionally. Returns the LSNs; they are durable once
    /// [`poll`](Self::poll) reports an [`Ack`](crate::Ack) with `token`. With `pin`, the
    /// records stored are pinned too (as for [`append_batch`](Self::append_batch)). Creates
    /// the log at its first records, at LSN 0 (a log that starts elsewhere is started with
    /// [`reset_log`](Self::reset_log)).
    ///
    /// Refused, with nothing written: `first_lsn` other than the log's next LSN
    /// ([`Error::Gap`]), a record of another log, LSN or epoch ([`Error::Malformed`]), a bad
    /// payload CRC ([`Error::Checksum`]), and whatever [`append_batch`](Self::append_batch)
    /// refuses for the same bytes (sizes, [`Error::TooManyLogs`], [`Error::Overloaded`]).
    #[allow(clippy::too_many_arguments)] // The fields of a REPLICATE request (PROTOCOL.md).
    pub fn append_replica(
        &mut self,
        log_id: u64,
        epoch: u64,
        first_lsn: u64,
        bytes: &[u8],
        count: u32,
        state: &ReplicaState,
        pin: bool,
        token: u64,
    ) -> Result<(Range<u64>, Option<Pin>)> {
        self.check_failed()?;
        if log_id == SYSTEM_LOG {
            return Err(Error::ReservedLog(log_id));
        }
        let as_sequenced = |i: usize, header: &RecordHeader| {
            if header.log_id != log_id {
                Err(Error::Malformed("a replicated record names another log"))
            } else if header.lsn.checked_sub(first_lsn) != Some(i as u64) {
                Err(Error::Malformed(
                    "replicated records do not follow first_lsn",
                ))
            } else if header.epoch != epoch {
                Err(Error::Malformed("a replicated record is of another epoch"))
            } else {
                Ok(())
            }
        };
        let measured = measure_encoded(bytes, count, self.config.record_bytes_max, as_sequenced)?;
        if count == 0 {
            return Err(Error::EmptyBatch);
        }
        let (next_lsn, fence) = self
            .logs
            .get(&log_id)
            .map_or((0, 0), |l| (l.next_lsn, l.fence));
        if first_lsn != next_lsn {
            return Err(Error::Gap { expected: next_lsn });
        }
        let admitted = Admitted {
            token,
            log_id,
            first_lsn,
            count,
            bytes: measured,
            raise: state.fencing_token.filter(|&t| t > fence),
            writer: state.writer,
        };
        self.store_admitted(admitted, pin, |out, _now_wall| {
            out.copy_from_slice(bytes);
            let bad = Records::new(out, count).position(|r| {
                let r = r.expect("measured before the copy");
                payload_crc(r.payload) != r.header.crc
            });
            bad.map_or(Ok(()), Err)
        })
    }

    /// Pins `bytes` of the frame buffer `slot` (at `base`): the records an append just laid.
    pub(crate) fn pin(&mut self, slot: usize, base: BufAddr, bytes: Range<usize>) -> Pin {
        let pins = &mut self.pins[slot];
        *pins += 1;
        if *pins == 1 {
            self.metrics.frames_pinned += 1;
        }
        Pin {
            store: self.id,
            slot,
            buf: base,
            bytes,
        }
    }

    /// The pinned bytes: `count` records in the stored layout, as REPLICATE carries them. See
    /// [`Pin`] for how long the slice's memory stays valid and unchanged.
    pub fn pinned(&self, pin: &Pin) -> &[u8] {
        assert_eq!(pin.store, self.id, "a pin is read through its own store");
        assert!(self.pins[pin.slot] > 0, "the frame is pinned");
        // SAFETY: the frame buffer lives as long as the store (it is in one of the store's
        // queues, or moved into a write whose backend keeps it until its completion or its own
        // drop: the Io contract). The pinned bytes were written by the append before the pin
        // and nothing writes them again while pinned: later appends go after them, a
        // submission writes only the header and the padding, a backend only reads a write's
        // buffer, and a pinned buffer is never reused (`take_frame`).
        unsafe { pin.buf.slice(pin.bytes.clone()) }
    }

    /// Releases a pin. Safe in every state of the store, a failed one included; the buffer is
    /// reused once its last pin is released.
    pub fn unpin(&mut self, pin: Pin) {
        assert_eq!(pin.store, self.id, "a pin is unpinned by its own store");
        let pins = &mut self.pins[pin.slot];
        *pins = pins.checked_sub(1).expect("the frame is pinned");
        if *pins == 0 {
            self.metrics.frames_pinned -= 1;
        }
    }
}

/// Consecutive stored records of one log and one epoch, with what the node that sequenced
/// them decided about them: what one REPLICATE (or one run of a PULL's answer) carries. From
/// [`Store::read_stored_runs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRun {
    /// The records, LSNs consecutive.
    pub records: Vec<ReadRecord>,
    /// The idempotency key if the run is exactly one keyed batch, and the log's fencing
    /// token after the run if its last batch raised it.
    pub state: ReplicaState,
}

impl StoredRun {
    /// The first record's LSN.
    pub fn first_lsn(&self) -> u64 {
        self.records[0].lsn
    }

    /// The LSN after the last record.
    pub fn end_lsn(&self) -> u64 {
        self.first_lsn() + self.records.len() as u64
    }
}

/// Cuts records into [`StoredRun`]s at the batches `marks` describe (ascending by end).
pub(crate) fn runs(records: Vec<ReadRecord>, marks: &[BatchMark]) -> Vec<StoredRun> {
    let mut out: Vec<StoredRun> = Vec::new();
    let mut records = records.into_iter().peekable();
    let mut m = 0;
    while let Some(first) = records.peek() {
        let (lsn, epoch) = (first.lsn, first.epoch);
        while marks.get(m).is_some_and(|k| k.end <= lsn) {
            m += 1;
        }
        // Where this run must end, and what it carries if it reaches there.
        let (end, state) = match marks.get(m) {
            Some(&BatchMark {
                end,
                writer: Some((writer_id, writer_seq, first_lsn)),
                fence,
            }) if first_lsn <= lsn => {
                // A keyed batch (from its start: with its key).
                let writer = (first_lsn == lsn).then_some((writer_id, writer_seq));
                (
                    end,
                    ReplicaState {
                        fencing_token: fence,
                        writer,
                    },
                )
            }
            Some(&BatchMark {
                writer: Some((_, _, first_lsn)),
                ..
            }) => (first_lsn, ReplicaState::default()),
            Some(&BatchMark { end, fence, .. }) => (
                end,
                ReplicaState {
                    fencing_token: fence,
                    writer: None,
                },
            ),
            None => (u64::MAX, ReplicaState::default()),
        };
        let mut run = Vec::new();
        while let Some(r) = records.next_if(|r| r.lsn < end && r.epoch == epoch) {
            run.push(r);
        }
        let reached = run.last().is_some_and(|r| r.lsn + 1 == end);
        let state = if reached {
            state
        } else if state.writer.is_some() && !out.is_empty() {
            // A keyed batch cut short by the limits: read it again, whole, from its start.
            break;
        } else {
            // Cut short by an epoch change or the limits: the decisions belong to the end.
            ReplicaState::default()
        };
        out.push(StoredRun {
            records: run,
            state,
        });
    }
    out
}
