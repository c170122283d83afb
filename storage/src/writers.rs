//! Idempotency keys: the batches each writer appended recently, so that a batch sent again
//! with the same (`writer_id`, `writer_seq`) is answered with the LSNs it got the first time
//! instead of being appended twice.
//!
//! A writer is a (log, `writer_id`) pair. For each, the store remembers its last
//! [`WRITER_WINDOW`] batches (sequence number, first LSN, count); at most `writers_max`
//! writers per shard are remembered, the one that appended least recently is forgotten first.
//! A writer's sequence numbers increase: a `writer_seq` above the writer's last is a new
//! batch; one equal to a remembered batch is a retry of it; anything else (below the window,
//! or a gap that was never appended) is refused, because appending it now would reorder the
//! writer's batches. The table is durable: every new batch of a writer is followed, in the
//! same frame, by a `CONTROL_WRITER` record, and every snapshot frame lists the whole table
//! (in least-recently-used order, so that recovery rebuilds the same eviction order).
//!
//! A truncation or reset of a log forgets the batches whose records it discards
//! ([`Writers::forget_from`]): their LSNs will hold other records, so a retry of such a batch
//! must be appended anew, not answered with those LSNs.
//!
//! Every remembered batch begins below its log's next LSN, and all but one end at or below
//! it: a replica that starts a log at its source's trim point takes the key of the batch that
//! point cuts through, whose last records it gets afterwards ([`crate::Store::reset_log`]).
//! Until they come, that key names LSNs the replica does not hold; a new epoch that starts
//! below its end makes the replica forget it ([`Writers::keys_end`] tells whether one does).

use std::collections::{HashMap, VecDeque};

use crate::format::{StateRecord, CONTROL_WRITER};

/// Batches remembered per writer: a writer may have this many batches outstanding (sent,
/// outcome unknown) and still resolve every one of them by retrying.
pub const WRITER_WINDOW: usize = 32;

/// One remembered batch of a writer of a log, as a replica that starts the log at its
/// source's trim point takes it over ([`crate::Store::writer_keys`],
/// [`crate::Store::reset_log`]): a retry of a batch below that trim point must be answered with
/// its LSNs there too, not appended again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterKey {
    /// The writer (nonzero).
    pub writer_id: u64,
    /// The batch's sequence number.
    pub writer_seq: u64,
    /// The batch's first LSN.
    pub first_lsn: u64,
    /// The batch's records (at least 1).
    pub count: u32,
}

/// One remembered batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WriterBatch {
    pub(crate) seq: u64,
    pub(crate) first_lsn: u64,
    pub(crate) count: u32,
}

/// What the table says of a (writer, sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// A batch the writer has not appended: append it.
    New,
    /// The writer appended this batch already.
    Duplicate(WriterBatch),
    /// Neither new nor remembered; `last` is the writer's last sequence number.
    OutOfOrder { last: u64 },
}

#[derive(Clone, Debug)]
struct Writer {
    /// When the writer last appended, in table ticks (for eviction).
    touched: u64,
    /// Oldest first, sequence numbers increasing.
    batches: VecDeque<WriterBatch>,
}

/// The shard's idempotency table.
#[derive(Clone, Debug)]
pub(crate) struct Writers {
    writers: HashMap<(u64, u64), Writer>,
    writers_max: usize,
    tick: u64,
}

impl Writers {
    pub(crate) fn new(writers_max: usize) -> Writers {
        Writers {
            writers: HashMap::new(),
            writers_max,
            tick: 0,
        }
    }

    pub(crate) fn lookup(&self, log_id: u64, writer_id: u64, seq: u64) -> Lookup {
        let Some(writer) = self.writers.get(&(log_id, writer_id)) else {
            return Lookup::New;
        };
        let last = writer.batches.back().expect("a writer has a batch").seq;
        if seq > last {
            return Lookup::New;
        }
        match writer.batches.iter().find(|b| b.seq == seq) {
            Some(batch) => Lookup::Duplicate(*batch),
            None => Lookup::OutOfOrder { last },
        }
    }

    /// Remembers a new batch of a writer (its sequence number above the writer's last).
    pub(crate) fn record(&mut self, log_id: u64, writer_id: u64, batch: WriterBatch) {
        let key = (log_id, writer_id);
        if !self.writers.contains_key(&key) && self.writers.len() >= self.writers_max {
            let oldest = self
                .writers
                .iter()
                .min_by_key(|(_, w)| w.touched)
                .map(|(k, _)| *k)
                .expect("writers_max is at least 1");
            self.writers.remove(&oldest);
        }
        self.tick += 1;
        let writer = self.writers.entry(key).or_insert_with(|| Writer {
            touched: 0,
            batches: VecDeque::with_capacity(WRITER_WINDOW),
        });
        debug_assert!(writer.batches.back().is_none_or(|b| b.seq < batch.seq));
        writer.touched = self.tick;
        if writer.batches.len() == WRITER_WINDOW {
            writer.batches.pop_front();
        }
        writer.batches.push_back(batch);
    }

    /// Applies a `CONTROL_WRITER` record: as [`record`](Self::record), except that a batch
    /// that is not new for its writer is skipped. Appends apply their key this way, and so
    /// does recovery, so both build the same table: in recovery a snapshot and the records
    /// after it overlap; a replica appends the head's keys unconditionally, and its table may
    /// have forgotten other writers than the head's (`writers_max` may differ).
    pub(crate) fn apply(&mut self, record: &StateRecord) {
        debug_assert_eq!(record.kind, CONTROL_WRITER);
        if let Lookup::New = self.lookup(record.log_id, record.writer_id, record.writer_seq) {
            let batch = WriterBatch {
                seq: record.writer_seq,
                first_lsn: record.value,
                count: record.count,
            };
            self.record(record.log_id, record.writer_id, batch);
        }
    }

    /// Forgets the batches of `log_id` that end above `lsn` (a truncation there discarded
    /// some of their records); a writer left with none is forgotten. Its next batch is then
    /// new if its sequence number is above its last remembered one.
    pub(crate) fn forget_from(&mut self, log_id: u64, lsn: u64) {
        self.writers.retain(|&(log, _), writer| {
            if log == log_id {
                while writer
                    .batches
                    .back()
                    .is_some_and(|b| b.first_lsn + u64::from(b.count) > lsn)
                {
                    writer.batches.pop_back();
                }
            }
            !writer.batches.is_empty()
        });
    }

    /// The highest LSN that a remembered batch of `log_id` ends at (0 if none): above the
    /// log's next LSN only while a replica lacks the last records of the batch it started the
    /// log in (see the module's header). A pass over the table (at most `writers_max`
    /// writers), for a new epoch's installation, never for an append.
    pub(crate) fn keys_end(&self, log_id: u64) -> u64 {
        self.writers
            .iter()
            .filter(|(&(log, _), _)| log == log_id)
            .filter_map(|(_, w)| w.batches.back())
            .map(|b| b.first_lsn + u64::from(b.count))
            .max()
            .unwrap_or(0)
    }

    /// The remembered batches of `log_id` that begin below `lsn`, least recently used writer
    /// first and each writer's oldest batch first (the order that [`apply`](Self::apply)
    /// rebuilds them in).
    pub(crate) fn keys_below(&self, log_id: u64, lsn: u64) -> Vec<WriterKey> {
        let mut writers: Vec<_> = self
            .writers
            .iter()
            .filter(|(&(log, _), _)| log == log_id)
            .collect();
        writers.sort_unstable_by_key(|(_, w)| w.touched);
        writers
            .into_iter()
            .flat_map(|(&(_, writer_id), w)| {
                w.batches
                    .iter()
                    .filter(move |b| b.first_lsn < lsn)
                    .map(move |b| WriterKey {
                        writer_id,
                        writer_seq: b.seq,
                        first_lsn: b.first_lsn,
                        count: b.count,
                    })
            })
            .collect()
    }

    /// The table as `CONTROL_WRITER` records, least recently used writer first.
    pub(crate) fn records(&self) -> Vec<StateRecord> {
        let mut writers: Vec<_> = self.writers.iter().collect();
        writers.sort_unstable_by_key(|(_, w)| w.touched);
        writers
            .into_iter()
            .flat_map(|(&(log_id, writer_id), w)| {
                w.batches.iter().map(move |b| StateRecord {
                    kind: CONTROL_WRITER,
                    count: b.count,
                    log_id,
                    writer_id,
                    writer_seq: b.seq,
                    value: b.first_lsn,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, first_lsn: u64) -> WriterBatch {
        WriterBatch {
            seq,
            first_lsn,
            count: 1,
        }
    }

    #[test]
    fn retries_find_the_original_and_gaps_are_refused() {
        let mut w = Writers::new(8);
        assert_eq!(w.lookup(1, 7, 5), Lookup::New);
        w.record(1, 7, batch(5, 100));
        w.record(1, 7, batch(9, 140));
        assert_eq!(w.lookup(1, 7, 5), Lookup::Duplicate(batch(5, 100)));
        assert_eq!(w.lookup(1, 7, 9), Lookup::Duplicate(batch(9, 140)));
        assert_eq!(w.lookup(1, 7, 7), Lookup::OutOfOrder { last: 9 });
        assert_eq!(w.lookup(1, 7, 4), Lookup::OutOfOrder { last: 9 });
        assert_eq!(w.lookup(1, 7, 10), Lookup::New);
        assert_eq!(w.lookup(2, 7, 5), Lookup::New, "writers are per log");
    }

    #[test]
    fn the_window_and_the_writer_count_are_bounded() {
        let mut w = Writers::new(2);
        for seq in 0..WRITER_WINDOW as u64 + 3 {
            w.record(1, 1, batch(seq, seq));
        }
        assert_eq!(w.lookup(1, 1, 2), Lookup::OutOfOrder { last: 34 });
        assert_eq!(w.lookup(1, 1, 3), Lookup::Duplicate(batch(3, 3)));
        w.record(1, 2, batch(0, 50));
        w.record(1, 1, batch(40, 60)); // writer 1 is now the most recent
        w.record(1, 3, batch(0, 70)); // evicts writer 2
        assert_eq!(w.lookup(1, 2, 0), Lookup::New);
        assert_eq!(w.lookup(1, 1, 40), Lookup::Duplicate(batch(40, 60)));
        assert_eq!(w.lookup(1, 3, 0), Lookup::Duplicate(batch(0, 70)));
    }

    #[test]
    fn records_rebuild_the_same_table() {
        let mut w = Writers::new(2);
        w.record(1, 1, batch(0, 0));
        w.record(2, 1, batch(0, 0));
        w.record(1, 1, batch(1, 1));
        let records = w.records();
        let mut again = Writers::new(2);
        for r in &records {
            again.apply(r);
        }
        assert_eq!(again.records(), records);
        // The same eviction follows: log 2's writer is the least recent in both.
        w.record(3, 1, batch(0, 0));
        again.record(3, 1, batch(0, 0));
        assert_eq!(again.records(), w.records());
    }

    #[test]
    fn keys_end_is_where_a_logs_batches_end_and_goes_with_its_last_writer() {
        let mut w = Writers::new(2);
        let cut = WriterBatch {
            seq: 1,
            first_lsn: 30,
            count: 10,
        };
        w.record(1, 7, cut);
        assert_eq!(w.keys_end(1), 40);
        assert_eq!(w.keys_below(1, 35).len(), 1, "it begins below 35");
        assert!(w.keys_below(1, 30).is_empty());
        w.forget_from(1, 35);
        assert_eq!(w.keys_end(1), 0, "no writer left");
        w.record(1, 7, batch(2, 5));
        w.record(1, 8, batch(1, 6));
        assert_eq!(w.keys_end(1), 7);
        w.record(2, 1, batch(1, 100)); // evicts writer 7 of log 1
        assert_eq!((w.keys_end(1), w.keys_end(2)), (7, 101));
        w.record(3, 1, batch(1, 0)); // evicts writer 8, log 1's last
        assert_eq!(w.keys_end(1), 0);
    }

    #[test]
    fn forgetting_from_an_lsn_drops_the_batches_that_reach_it() {
        let mut w = Writers::new(4);
        w.record(1, 7, batch(1, 0));
        w.record(1, 7, batch(2, 1));
        w.record(
            1,
            7,
            WriterBatch {
                seq: 3,
                first_lsn: 2,
                count: 3,
            },
        );
        w.record(1, 8, batch(1, 5));
        w.record(2, 7, batch(9, 3));
        w.forget_from(1, 3);
        assert_eq!(w.lookup(1, 7, 2), Lookup::Duplicate(batch(2, 1)));
        // Batch 3 (LSNs 2..5) lost its last records: a retry of it is new.
        assert_eq!(w.lookup(1, 7, 3), Lookup::New);
        assert_eq!(w.lookup(1, 8, 1), Lookup::New, "a writer with nothing left");
        assert_eq!(
            w.lookup(2, 7, 9),
            Lookup::Duplicate(batch(9, 3)),
            "another log"
        );
        w.forget_from(1, 0);
        assert_eq!(w.lookup(1, 7, 1), Lookup::New);
        assert_eq!(w.records().len(), 1);
    }
}
