//! Chain replication's side of the store: appending records that another node sequenced
//! ([`Store::append_replica`]).
//!
//! A replica stores the head's records as they are: same bytes, same LSNs, epochs and
//! timestamps, and the head's fencing-token raises and idempotency keys as the same control
//! records in the same frame as the records (ARCHITECTURE.md 9a), so its recovery rebuilds
//! what the head's would, and it can become the head.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::format::{payload_crc, RecordHeader, Records, SYSTEM_LOG};
use crate::io::Io;
use crate::store::{measure_encoded, Admitted, Store};

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

impl<I: Io> Store<I> {
    /// Appends `count` records that the head of the log's chain sequenced, as they are: `bytes`
    /// holds them stamped, in the stored layout ([`RecordHeader`] with every field set,
    /// payload, zero padding to 8 bytes), with LSNs `first_lsn ..`, and they are copied once
    /// into the building frame without re-stamping. `state` carries the head's fencing token
    /// and idempotency key, applied unconditionally. Returns the LSNs; they are durable once
    /// [`poll`](Self::poll) reports an [`Ack`](crate::Ack) with `token`. Creates the log at
    /// its first records.
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
        token: u64,
    ) -> Result<Range<u64>> {
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
        self.store_admitted(admitted, |out, _now_wall| {
            out.copy_from_slice(bytes);
            let bad = Records::new(out, count).position(|r| {
                let r = r.expect("measured before the copy");
                payload_crc(r.payload) != r.header.crc
            });
            bad.map_or(Ok(()), Err)
        })
    }
}
