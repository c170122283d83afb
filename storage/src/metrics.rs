//! Group commit and segment metrics: batch sizes, batch wait, write time, counters.

use hdrhistogram::Histogram;

/// What the store measured since it opened.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Records per frame.
    pub batch_records: Histogram<u64>,
    /// Bytes per frame write (padded).
    pub batch_bytes: Histogram<u64>,
    /// Microseconds from a frame's first record to its submission.
    pub batch_wait_us: Histogram<u64>,
    /// Microseconds from a frame's submission to its durable completion.
    pub write_us: Histogram<u64>,
    /// Frames written.
    pub frames_written: u64,
    /// Bytes written in frames.
    pub bytes_written: u64,
    /// Records appended.
    pub records_appended: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments deleted after trims.
    pub segments_deleted: u64,
    /// Rollovers that had to wait for the next segment to be ready.
    pub rollover_waits: u64,
    /// Appends refused with `Overloaded`.
    pub overloaded: u64,
    /// Appends answered with the LSNs of an earlier batch with the same idempotency key.
    pub duplicates: u64,
    /// Frame buffers pinned now (a gauge, not a count since open): they cannot be reused
    /// until unpinned ([`Store::unpin`](crate::Store::unpin)).
    pub frames_pinned: u64,
    /// Disk reads submitted for reads of records that were in neither the tail cache nor a
    /// window read before.
    pub read_ios: u64,
}

fn histogram(high: u64) -> Histogram<u64> {
    Histogram::new_with_bounds(1, high, 3).expect("valid histogram bounds")
}

impl StoreMetrics {
    pub(crate) fn new() -> StoreMetrics {
        StoreMetrics {
            batch_records: histogram(1 << 24),
            batch_bytes: histogram(1 << 32),
            batch_wait_us: histogram(3_600_000_000),
            write_us: histogram(3_600_000_000),
            frames_written: 0,
            bytes_written: 0,
            records_appended: 0,
            segments_created: 0,
            segments_deleted: 0,
            rollover_waits: 0,
            overloaded: 0,
            duplicates: 0,
            frames_pinned: 0,
            read_ios: 0,
        }
    }

    pub(crate) fn record_batch(&mut self, records: u32, bytes: u64, wait_us: u64) {
        self.frames_written += 1;
        self.bytes_written += bytes;
        self.batch_records
            .saturating_record(u64::from(records).max(1));
        self.batch_bytes.saturating_record(bytes.max(1));
        self.batch_wait_us.saturating_record(wait_us.max(1));
    }

    pub(crate) fn record_write(&mut self, us: u64) {
        self.write_us.saturating_record(us.max(1));
    }
}
