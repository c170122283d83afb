//! Learners: logs a shard copies from a chain it is not in yet.
//!
//! The controller makes a node a learner of a log whose chain is short of its replication
//! factor (the map's `learners`) instead of putting it in the chain at once: a new member of
//! a chain would hold every append of the log until it had copied the whole log. A learner
//! copies the log's committed records from the chain's tail with learner PULLs (PROTOCOL.md
//! 6.13), with the idempotency keys and fencing raises stored with them, while the chain goes
//! on appending; it serves nothing of the log. Once it is close behind, the controller seals
//! the epoch and extends it with the learner at the tail. What it copied is committed, so it
//! is a prefix of every later epoch's history: it keeps it and takes only the rest from its
//! predecessor in the new epoch (`super::protocol::Server::apply_map`).
//!
//! A learner's catalog entry names the chain it copies from, which does not hold this node:
//! a restart goes on copying from where the store ends.

use std::collections::BTreeMap;

use chainlog_storage::io::Io;
use chainlog_storage::{Store, WriterKey};

use super::catalog::LogEntry;
use super::chain::log_shard;
use super::records::replica_state;
use super::replicas::UNANSWERED;
use crate::replication::NodeId;

/// How long a learner that is caught up waits before it asks its source again (the shard's
/// replication timer wakes it at this pace anyway).
const POLL_MS: u64 = 20;
/// How long a learner waits after its source refused a PULL (another epoch, sealed, not
/// there yet) or did not answer it (the link went down).
const HOLD_MS: u64 = 100;

/// One log this shard learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Learner {
    /// The epoch of the chain it copies from (PULLs name it).
    pub(crate) epoch: u64,
    /// The chain's tail: where it copies from.
    pub(crate) source: NodeId,
    /// A PULL is out.
    pulling: bool,
    /// When it may ask again (µs of the shard's clock).
    due_us: u64,
}

impl Learner {
    /// Whether this learner (of `log_id`) copies from shard `shard` of `source`, a node of
    /// `shards`.
    fn copies_from(&self, log_id: u64, source: NodeId, shard: u16, shards: u16) -> bool {
        self.source == source && log_shard(log_id, shards) == shard
    }
}

/// The logs a shard learns, by id (in id order, so that a simulated run is the same run).
#[derive(Debug, Default)]
pub(crate) struct Learners {
    logs: BTreeMap<u64, Learner>,
}

/// A learner PULL's answer, as the link decoded it.
#[derive(Debug)]
pub(crate) struct Learned<'a> {
    pub(crate) log_id: u64,
    /// The epoch the records were appended in.
    pub(crate) epoch: u64,
    /// The LSN the PULL asked from: the end of the copy when it asked.
    pub(crate) asked: u64,
    /// The first record's LSN: `asked`, or the source's trim point above it (then the
    /// answer holds no records).
    pub(crate) first: u64,
    /// The run's fencing token (or, for an empty answer at the trim point, the log's).
    pub(crate) fencing_token: u64,
    pub(crate) writer: (u64, u64),
    pub(crate) count: u32,
    pub(crate) records: &'a [u8],
    /// An empty answer at the trim point: the source's idempotency keys of the batches
    /// below it.
    pub(crate) keys: &'a [WriterKey],
}

impl Learners {
    /// Learns `log_id` from `source` in `epoch` (from now on, or still).
    pub(crate) fn learn(&mut self, log_id: u64, epoch: u64, source: NodeId) {
        let learner = self.logs.entry(log_id).or_insert(Learner {
            epoch,
            source,
            pulling: false,
            due_us: 0,
        });
        if (learner.epoch, learner.source) != (epoch, source) {
            // A PULL out to the old source is answered there or lost with its link; either
            // way its records are committed ones.
            learner.epoch = epoch;
            learner.source = source;
            learner.due_us = 0;
        }
    }

    /// Stops learning `log_id` (it joined the chain, or left the map). True if it was.
    pub(crate) fn remove(&mut self, log_id: u64) -> bool {
        self.logs.remove(&log_id).is_some()
    }

    /// True if this shard learns no log.
    pub(crate) fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// The learner of `log_id`, if this shard learns it.
    pub(crate) fn get(&self, log_id: u64) -> Option<&Learner> {
        self.logs.get(&log_id)
    }

    /// The logs that may ask their source now, in id order: (log, source, epoch).
    pub(crate) fn due(&self, now_us: u64) -> Vec<(u64, NodeId, u64)> {
        self.logs
            .iter()
            .filter(|(_, l)| !l.pulling && l.due_us <= now_us)
            .map(|(&log_id, l)| (log_id, l.source, l.epoch))
            .collect()
    }

    /// A PULL of `log_id` went out.
    pub(crate) fn sent(&mut self, log_id: u64) {
        if let Some(l) = self.logs.get_mut(&log_id) {
            l.pulling = true;
        }
    }

    /// The PULL of `log_id` was answered; `more` if the source may hold more (ask at once).
    pub(crate) fn answered(&mut self, log_id: u64, more: bool, now_us: u64) {
        if let Some(l) = self.logs.get_mut(&log_id) {
            l.pulling = false;
            l.due_us = if more { 0 } else { now_us + POLL_MS * 1000 };
        }
    }

    /// The PULL of `log_id` was refused, or lost with its link: ask again after a pause.
    pub(crate) fn held(&mut self, log_id: u64, now_us: u64) {
        if let Some(l) = self.logs.get_mut(&log_id) {
            l.pulling = false;
            l.due_us = now_us + HOLD_MS * 1000;
        }
    }

    /// Whether a log learnt here copies from `source`'s shard `shard` (of `shards`).
    pub(crate) fn uses(&self, source: NodeId, shard: u16, shards: u16) -> bool {
        self.logs
            .iter()
            .any(|(&log_id, l)| l.copies_from(log_id, source, shard, shards))
    }

    /// The link to `source`'s shard `shard` (of `shards`) went down: its PULLs are lost.
    pub(crate) fn link_down(&mut self, source: NodeId, shard: u16, shards: u16, now_us: u64) {
        let lost: Vec<u64> = self
            .logs
            .iter()
            .filter(|(&log_id, l)| l.pulling && l.copies_from(log_id, source, shard, shards))
            .map(|(&log_id, _)| log_id)
            .collect();
        for log_id in lost {
            self.held(log_id, now_us);
        }
    }
}

/// True if `entry` is a learner's (this node, `me`, copies the log from the chain it names,
/// which does not hold it), not a replica's (a chain that holds it, or a standalone log's).
pub(crate) fn is_learner_entry(entry: &LogEntry, me: NodeId) -> bool {
    !entry.chain.is_empty() && !entry.chain.contains(&me)
}

/// What storing a run of a learner's answer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Records appended to the copy.
    pub(crate) records: u64,
    /// The source may hold more from there: the next PULL goes at once.
    pub(crate) again: bool,
}

/// Stores a run of a learner PULL's answer into `store`: records that continue the copy are
/// appended as a replica stores them (nobody waits for their acks: the controller reads how
/// far the copy is durable); an empty answer that starts above the copy's end (the source
/// trimmed past it) starts the log again at the source's trim point, with the log's fencing
/// token and the keys of the batches below it (so that a retry of one of them is answered
/// with its LSNs once this node is the head); any other run that does not continue the copy
/// is dropped.
///
/// `None`: the PULL asked from beyond the copy's end, so the answer is not about this copy
/// (it was deleted and started over since, or an earlier run of the answer was not
/// stored): an empty answer above the end says nothing of what the source trimmed.
pub(crate) fn store_learned<I: Io>(
    store: &mut Store<I>,
    learned: &Learned<'_>,
) -> chainlog_storage::Result<Option<Stored>> {
    let log_id = learned.log_id;
    let here = store.tail(log_id).map_or(0, |t| t.next_lsn);
    let none = |again| Some(Stored { records: 0, again });
    if learned.asked > here {
        return Ok(None);
    }
    if learned.first > here {
        tracing::info!(
            log_id,
            here,
            trim_point = learned.first,
            "learning a log from its source's trim point"
        );
        store.reset_log(
            log_id,
            learned.first,
            learned.fencing_token,
            learned.keys,
            UNANSWERED,
        )?;
        return Ok(none(true));
    }
    if learned.first < here || learned.count == 0 {
        // Caught up (or an answer to a PULL from before this copy moved on).
        return Ok(none(learned.first < here));
    }
    store.append_replica(
        log_id,
        learned.epoch,
        learned.first,
        learned.records,
        learned.count,
        &replica_state(learned.fencing_token, learned.writer),
        false,
        UNANSWERED,
    )?;
    Ok(Some(Stored {
        records: u64::from(learned.count),
        again: true,
    }))
}
