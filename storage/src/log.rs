//! Per-log state in a shard: dense LSNs, trim point, and a sparse index into the segments.
//!
//! The index lists where the log's live history is, in LSN order: a read starts at the entry
//! at or before its LSN and walks frames forward, but never past the next entry's first LSN
//! (it jumps there instead). So after a truncation or a reset (ARCHITECTURE.md 9c), whose
//! discarded records are still in the frames before it, the entries at and above the cut go
//! and the next frame of the log gets an entry of its own: the walk leaves the old frames at
//! the cut and never sees a discarded record under an LSN that a newer record now holds.

use std::collections::VecDeque;

/// One index entry: the first record of a log in some frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// LSN of the log's first record in the frame.
    pub(crate) first_lsn: u64,
    pub(crate) segment_id: u64,
    /// Offset of the frame in its segment.
    pub(crate) offset: u64,
}

/// The index gets a new entry when a log's previous entry is this far back in the same
/// segment (reads walk forward from an entry), or at a new segment.
pub(crate) const INDEX_INTERVAL_BYTES: u64 = 64 << 10;

/// What a shard knows of one log.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// The LSN the next appended record gets.
    pub(crate) next_lsn: u64,
    /// One past the last LSN in a frame handed to the disk (what a snapshot may claim).
    pub(crate) submitted_lsn: u64,
    /// One past the last durable LSN: records below it are readable.
    pub(crate) durable_lsn: u64,
    /// Records below are trimmed (as requested; reads below fail at once).
    pub(crate) trim_point: u64,
    /// The trim point of the submitted frames (what a snapshot may claim).
    pub(crate) submitted_trim: u64,
    /// The durable trim point (what space reclamation may rely on).
    pub(crate) durable_trim: u64,
    /// The log's fencing token: appends with a lower one are refused (0: never fenced).
    pub(crate) fence: u64,
    /// The fencing token of the submitted frames (what a snapshot may claim).
    pub(crate) submitted_fence: u64,
    /// Whether a submitted frame holds the log (its records, or its reset): a snapshot lists
    /// exactly these logs.
    pub(crate) on_disk: bool,
    /// Sparse index, oldest first.
    pub(crate) index: VecDeque<IndexEntry>,
    /// The history was cut (truncated or reset) after the last indexed frame: the next frame
    /// of the log gets an entry, however close it is to the last.
    pub(crate) index_cut: bool,
}

impl LogState {
    /// A log whose next LSN, trim point and fencing token are as given, all of it durable.
    pub(crate) fn recovered(next_lsn: u64, trim_point: u64, fence: u64) -> LogState {
        LogState {
            next_lsn,
            submitted_lsn: next_lsn,
            durable_lsn: next_lsn,
            trim_point,
            submitted_trim: trim_point,
            durable_trim: trim_point,
            fence,
            submitted_fence: fence,
            on_disk: true,
            index: VecDeque::new(),
            index_cut: false,
        }
    }

    /// Notes that a frame at (`segment_id`, `offset`) holds this log's records from `first_lsn`.
    pub(crate) fn note_frame(&mut self, first_lsn: u64, segment_id: u64, offset: u64) {
        let sparse = !self.index_cut
            && self.index.back().is_some_and(|last| {
                last.segment_id == segment_id && offset < last.offset + INDEX_INTERVAL_BYTES
            });
        self.index_cut = false;
        if !sparse {
            self.index.push_back(IndexEntry {
                first_lsn,
                segment_id,
                offset,
            });
        }
    }

    /// The entry to start reading `lsn` from: the last one at or before it.
    pub(crate) fn entry_for(&self, lsn: u64) -> Option<usize> {
        self.entry_after(lsn).checked_sub(1)
    }

    /// The index of the first entry after `lsn` (`index.len()` if none): a read of `lsn`
    /// stops walking at its first LSN.
    pub(crate) fn entry_after(&self, lsn: u64) -> usize {
        self.index.partition_point(|e| e.first_lsn <= lsn)
    }

    /// Drops the entries at and above `lsn` (the history from there was cut); the next frame
    /// of the log is indexed once the cut is in a submitted frame ([`Self::index_cut`]).
    pub(crate) fn cut_index(&mut self, lsn: u64) {
        let keep = self.index.partition_point(|e| e.first_lsn < lsn);
        self.index.truncate(keep);
    }

    /// Drops the entries of a deleted segment.
    pub(crate) fn forget_segment(&mut self, segment_id: u64) {
        while self
            .index
            .front()
            .is_some_and(|e| e.segment_id <= segment_id)
        {
            self.index.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_sparse_within_a_segment_and_dense_across() {
        let mut log = LogState::default();
        log.note_frame(0, 1, 4096);
        log.note_frame(5, 1, 8192);
        log.note_frame(9, 1, 4096 + INDEX_INTERVAL_BYTES);
        log.note_frame(12, 2, 4096);
        let lsns: Vec<u64> = log.index.iter().map(|e| e.first_lsn).collect();
        assert_eq!(lsns, [0, 9, 12]);
        assert_eq!(log.entry_for(7), Some(0));
        assert_eq!(log.entry_for(9), Some(1));
        assert_eq!(log.entry_for(100), Some(2));
        log.forget_segment(1);
        assert_eq!(log.entry_for(7), None);
    }

    #[test]
    fn a_cut_drops_the_entries_above_it_and_indexes_the_next_frame() {
        let mut log = LogState::default();
        log.note_frame(0, 1, 4096);
        log.note_frame(9, 1, 4096 + INDEX_INTERVAL_BYTES);
        log.cut_index(9);
        assert_eq!(log.index.len(), 1);
        // The frame right after the cut is indexed, although it is near the last entry.
        log.index_cut = true;
        log.note_frame(9, 1, 8192);
        log.note_frame(11, 1, 12288);
        let lsns: Vec<u64> = log.index.iter().map(|e| e.first_lsn).collect();
        assert_eq!(lsns, [0, 9]);
        assert_eq!(log.entry_after(3), 1);
        assert_eq!(log.entry_after(9), 2);
    }
}
