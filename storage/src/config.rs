//! The store's configuration: every limit named, sized at startup.

use crate::error::{Error, Result};
use crate::format::{
    block_align, BLOCK_SIZE, FRAME_BYTES_MAX, FRAME_HEADER_BYTES, SNAPSHOT_ENTRY_BYTES,
    STATE_RECORD_BYTES,
};
use crate::writers::WRITER_WINDOW;

/// How appends are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DurabilityMode {
    /// Measure both at open and use the faster ([`calibrate`](crate::calibrate)).
    #[default]
    Auto,
    /// Each write linked to an fdatasync in the ring.
    Fdatasync,
    /// Each write with `RWF_DSYNC`.
    Dsync,
}

impl std::str::FromStr for DurabilityMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DurabilityMode::Auto),
            "fdatasync" => Ok(DurabilityMode::Fdatasync),
            "dsync" => Ok(DurabilityMode::Dsync),
            _ => Err(format!(
                "unknown durability mode {s:?} (auto, fdatasync, dsync)"
            )),
        }
    }
}

/// Limits and sizes of one shard's store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Size each segment file is preallocated (and zero-filled) to.
    pub segment_bytes: u64,
    /// Largest frame (one group-committed write), header included.
    pub batch_bytes_max: usize,
    /// Largest record payload.
    pub record_bytes_max: usize,
    /// Frame writes submitted and not yet durable, at most.
    pub writes_in_flight_max: usize,
    /// Write buffers: in flight + queued + the one being filled + the tail cache.
    pub write_buffers: usize,
    /// Logs one shard holds at most (bounded so a segment's snapshot frame fits one buffer).
    pub logs_max: usize,
    /// Writers (log, `writer_id`) whose idempotency windows one shard remembers at most;
    /// the least recently appending is forgotten first (bounded so the snapshot fits too).
    pub writers_max: usize,
    /// How appends are made durable.
    pub durability: DurabilityMode,
    /// Writes per mode when calibrating.
    pub calibration_writes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_bytes: 64 << 20,
            batch_bytes_max: 2 << 20,
            record_bytes_max: 1 << 20,
            writes_in_flight_max: 4,
            write_buffers: 16,
            logs_max: 32_768,
            writers_max: 512,
            durability: DurabilityMode::Auto,
            calibration_writes: 64,
        }
    }
}

impl StoreConfig {
    /// Checks the limits against each other.
    pub fn validate(&self) -> Result<()> {
        let fail = |why: String| Err(Error::Config(why));
        if self.batch_bytes_max > FRAME_BYTES_MAX {
            return fail(format!(
                "batch_bytes_max {} is over the format's limit of {FRAME_BYTES_MAX}",
                self.batch_bytes_max
            ));
        }
        if !self.batch_bytes_max.is_multiple_of(BLOCK_SIZE) {
            return fail(format!(
                "batch_bytes_max {} is not a multiple of {BLOCK_SIZE}",
                self.batch_bytes_max
            ));
        }
        if !self.segment_bytes.is_multiple_of(BLOCK_SIZE as u64) {
            return fail(format!(
                "segment_bytes {} is not a multiple of {BLOCK_SIZE}",
                self.segment_bytes
            ));
        }
        if crate::format::record_bytes(self.record_bytes_max) + FRAME_HEADER_BYTES
            > self.batch_bytes_max
        {
            return fail(format!(
                "record_bytes_max {} does not fit a frame of batch_bytes_max {}",
                self.record_bytes_max, self.batch_bytes_max
            ));
        }
        let snapshot_bytes = FRAME_HEADER_BYTES
            + (self.logs_max + 1) * SNAPSHOT_ENTRY_BYTES
            + self.writers_max * WRITER_WINDOW * STATE_RECORD_BYTES;
        if self.writers_max == 0 {
            return fail("writers_max must be at least 1".into());
        }
        if snapshot_bytes > self.batch_bytes_max {
            return fail(format!(
                "a snapshot of logs_max {} logs and writers_max {} writers ({snapshot_bytes} \
                 bytes) does not fit batch_bytes_max",
                self.logs_max, self.writers_max
            ));
        }
        // The segment header, a snapshot frame and a full data frame must fit one segment.
        if (BLOCK_SIZE + 2 * block_align(self.batch_bytes_max)) as u64 > self.segment_bytes {
            return fail(format!(
                "segment_bytes {} is too small for batch_bytes_max {}",
                self.segment_bytes, self.batch_bytes_max
            ));
        }
        if self.writes_in_flight_max == 0 {
            return fail("writes_in_flight_max must be at least 1".into());
        }
        // In flight, one queued snapshot, one being filled, one spare.
        if self.write_buffers < self.writes_in_flight_max + 3 {
            return fail(format!(
                "write_buffers must be at least writes_in_flight_max + 3 = {}",
                self.writes_in_flight_max + 3
            ));
        }
        Ok(())
    }
}
