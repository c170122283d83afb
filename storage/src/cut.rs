//! Cutting a log's history: truncating its unacknowledged suffix ([`Store::truncate`]) and
//! starting it again, empty, at any LSN ([`Store::reset_log`]). Reconfiguration needs both
//! (ARCHITECTURE.md 9c): a replica that returns with records of a sealed epoch beyond that
//! epoch's end discards them before their LSNs get the new epoch's records, and a replica
//! that joins a chain after the head trimmed (or must copy a log again from scratch) starts
//! the log at the head's trim point.
//!
//! Both are control records of the system log, group-committed and acknowledged like a trim.
//! The store is append-only, so the records they discard stay in their frames; what makes
//! them unreachable is, in memory, the log's positions, its index (the entries from the cut
//! go, and the log's next frame gets an entry of its own: [`crate::log`]) and the entries of
//! the frames not yet durable (their `live` count, so that neither their submission indexes
//! them nor their durability makes them readable), and on disk the control record, which
//! recovery applies in frame order as it does everything else. The frame that carries the
//! cut is sealed right after it, so that no frame holds both a discarded record and a newer
//! one under the same LSN.

use crate::error::{Error, Result};
use crate::format::{
    record_bytes, ControlRecord, StateRecord, CONTROL_FENCE, CONTROL_RECORD_BYTES, CONTROL_RESET,
    CONTROL_TRUNCATE, FRAME_HEADER_BYTES, STATE_RECORD_BYTES, SYSTEM_LOG,
};
use crate::io::Io;
use crate::store::{Entry, Store};
use crate::writers::WriterKey;

impl<I: Io> Store<I> {
    /// Discards `log_id`'s records at and above `from` (durably once [`poll`](Self::poll)
    /// reports an [`Ack`](crate::Ack) with `token` and the empty range `from..from`): the
    /// log's next LSN becomes `from`, reads at or above it see nothing, and the next append
    /// (typically [`append_replica`](Self::append_replica), with another epoch) stores its
    /// records from `from`. Recovery honours it, across segments and snapshots.
    ///
    /// Idempotency keys of the batches with records at or above `from` are forgotten: a
    /// retry of such a batch is appended anew. The fencing token is kept, even if a
    /// discarded batch raised it (a token only rises; ARCHITECTURE.md 9c). Appends made
    /// before the truncation are still acknowledged, with their LSNs, in order before it,
    /// whatever it discarded of them. A read in flight returns none of the discarded records.
    ///
    /// Refused, with nothing written: `from` below the log's trim point ([`Error::Trimmed`]:
    /// those records are gone already, there is nothing left to truncate to), `from` beyond
    /// the log's next LSN ([`Error::TruncateBeyondTail`]), an unknown log, and
    /// [`Error::Overloaded`]. Truncating acknowledged records is the caller's business: the
    /// store only knows what is durable, not what the chain committed.
    pub fn truncate(&mut self, log_id: u64, from: u64, token: u64) -> Result<()> {
        self.check_failed()?;
        if log_id == SYSTEM_LOG {
            return Err(Error::ReservedLog(log_id));
        }
        let log = self.logs.get(&log_id).ok_or(Error::UnknownLog(log_id))?;
        if from < log.trim_point {
            return Err(Error::Trimmed {
                trim_point: log.trim_point,
            });
        }
        if from > log.next_lsn {
            return Err(Error::TruncateBeyondTail {
                from,
                tail: log.next_lsn,
            });
        }
        let control = ControlRecord {
            kind: CONTROL_TRUNCATE,
            reserved: 0,
            log_id,
            lsn: from,
        };
        let now_wall = self.clock.wall_us();
        self.make_room(record_bytes(CONTROL_RECORD_BYTES))?;
        self.push_control(bytemuck::bytes_of(&control), now_wall);
        self.push_entry(Entry::Truncate {
            token,
            log_id,
            from,
        });
        self.seal_building();
        let log = self.logs.get_mut(&log_id).expect("checked above");
        log.next_lsn = from;
        log.durable_lsn = log.durable_lsn.min(from);
        log.cut_index(from);
        self.discard_in_frames(log_id, from);
        self.writers.forget_from(log_id, from);
        self.reads.cut(log_id, from);
        Ok(())
    }

    /// Discards everything the store has of `log_id` and starts it again, empty, at `at`:
    /// next LSN and trim point `at` (reads below fail with [`Error::Trimmed`], reads at or
    /// above see nothing until records are appended from `at`). Creates the log if the store
    /// does not have it. Durable once [`poll`](Self::poll) reports an [`Ack`](crate::Ack)
    /// with `token` and the empty range `at..at`; recovery honours it.
    ///
    /// One call serves a replica that joins a chain after the head trimmed (the log starts at
    /// the head's trim point, not at 0) and one that must copy the whole log again (whatever
    /// it held is discarded, whether `at` is below or above it). The log's idempotency keys
    /// become `keys` (the source's batches that begin below `at`,
    /// [`writer_keys`](Self::writer_keys), so that a retry of one of them is answered with its
    /// LSNs here too; none for a copy from scratch); if they do not all fit the reset's frame,
    /// the least recently used writers' are left out, as the table forgets them first anyway.
    /// The batch that `at` cuts through is among them: its records from `at` come afterwards,
    /// as a run without a key, and a retry of it must be answered with its LSNs once they are
    /// here. Until then its key names LSNs the log does not hold ([`keys_end`](Self::keys_end)
    /// is above its next LSN): a caller that starts a new epoch below that end must
    /// [`truncate`](Self::truncate) there first, which forgets it. The fencing token becomes
    /// `fencing_token` if that is higher (the head's token, so that a replica that becomes
    /// the head fences as the head did; 0 for none), else stays: a token only rises. Appends
    /// made before it are still acknowledged.
    ///
    /// Refused, with nothing written: a new log over `logs_max` ([`Error::TooManyLogs`]),
    /// [`Error::Overloaded`].
    pub fn reset_log(
        &mut self,
        log_id: u64,
        at: u64,
        fencing_token: u64,
        keys: &[WriterKey],
        token: u64,
    ) -> Result<()> {
        self.check_failed()?;
        if log_id == SYSTEM_LOG {
            return Err(Error::ReservedLog(log_id));
        }
        if !self.logs.contains_key(&log_id) && self.logs.len() >= self.config.logs_max {
            return Err(Error::TooManyLogs {
                max: self.config.logs_max,
            });
        }
        let fence = self.logs.get(&log_id).map_or(0, |l| l.fence);
        let raise = (fencing_token > fence).then_some(fencing_token);
        let control = ControlRecord {
            kind: CONTROL_RESET,
            reserved: 0,
            log_id,
            lsn: at,
        };
        let state_bytes = record_bytes(STATE_RECORD_BYTES);
        let fixed = record_bytes(CONTROL_RECORD_BYTES) + usize::from(raise.is_some()) * state_bytes;
        let body_max = self.config.batch_bytes_max - FRAME_HEADER_BYTES;
        let fit = (body_max - fixed) / state_bytes;
        assert!(
            keys.iter()
                .all(|k| k.writer_id != 0 && k.count > 0 && k.first_lsn < at),
            "log {log_id}: a key names a writer and a batch that begins below {at}"
        );
        if keys.len() > fit {
            tracing::warn!(
                log_id,
                keys = keys.len(),
                kept = fit,
                "more idempotency keys than a frame holds: the least recently used are left out"
            );
        }
        let keys = &keys[keys.len().saturating_sub(fit)..];
        let now_wall = self.clock.wall_us();
        self.make_room(fixed + keys.len() * state_bytes)?;
        self.push_control(bytemuck::bytes_of(&control), now_wall);
        self.push_entry(Entry::Reset { token, log_id, at });
        self.writers.forget_from(log_id, 0);
        if let Some(token) = raise {
            // After the reset record: recovery applies it to the log the reset created.
            let state = StateRecord {
                kind: CONTROL_FENCE,
                log_id,
                value: token,
                ..StateRecord::default()
            };
            self.push_control(bytemuck::bytes_of(&state), now_wall);
            self.push_entry(Entry::Fence { log_id, token });
        }
        for key in keys {
            // Likewise after the reset, which forgot the log's keys before these.
            self.push_key(log_id, key, now_wall);
        }
        self.seal_building();
        let log = self.logs.entry(log_id).or_default();
        log.next_lsn = at;
        log.durable_lsn = at;
        log.trim_point = at;
        log.fence = log.fence.max(fencing_token);
        log.cut_index(0);
        self.discard_in_frames(log_id, 0);
        self.reads.reset(log_id);
        Ok(())
    }

    /// The idempotency keys of `log_id`'s batches that begin below `lsn`, for a replica that
    /// starts the log at `lsn` ([`reset_log`](Self::reset_log)), the batch that `lsn` cuts
    /// through included: the replica holds none of the records of these batches below `lsn`,
    /// so it learns none of their keys from the records it gets.
    pub fn writer_keys(&self, log_id: u64, lsn: u64) -> Vec<WriterKey> {
        self.writers.keys_below(log_id, lsn)
    }

    /// The highest LSN that a remembered batch of `log_id` ends at (0 if none). Above
    /// the log's next LSN only after a [`reset_log`](Self::reset_log) inside a batch, until the
    /// batch's last records are appended: a new epoch that starts below it must truncate at
    /// its start, so that a retry of that batch is not answered with LSNs that will hold other
    /// records.
    pub fn keys_end(&self, log_id: u64) -> u64 {
        self.writers.keys_end(log_id)
    }

    /// Ends the building frame with what it holds (a cut is the last thing in its frame).
    fn seal_building(&mut self) {
        if let Some(frame) = self.building.take() {
            self.sealed.push_back(frame);
        }
    }

    /// Marks `log_id`'s records at and above `from` in the frames not yet durable as
    /// discarded: they are not indexed when submitted nor made readable when durable.
    fn discard_in_frames(&mut self, log_id: u64, from: u64) {
        let frames = self.in_flight.iter_mut().chain(self.sealed.iter_mut());
        for frame in frames.chain(self.building.as_mut()) {
            for entry in &mut frame.entries {
                if let Entry::Append {
                    log_id: l,
                    first_lsn,
                    live,
                    ..
                } = entry
                {
                    if *l == log_id {
                        let kept = from.saturating_sub(*first_lsn).min(u64::from(*live));
                        *live = kept as u32;
                    }
                }
            }
        }
    }
}
