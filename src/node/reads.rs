//! The shard's reads of older records that wait for the disk, and whom each is for.
//!
//! Catching a successor up ([`super::chain`]), pushing to a subscription
//! ([`super::subscriptions`]), and answering a client's READ or a node's PULL
//! ([`super::protocol`], [`super::replicas`]) read with `Store::read_async`: records in
//! memory come back at once, others arrive in a later turn (`Store::take_reads`), so a read
//! never stalls the appends of the shard's other logs, nor the rest of its own. A READ or
//! PULL whose records wait for the disk is answered when they arrive: it is handled again
//! then, with them ([`Parked`]), and the answer goes out of order with the connection's
//! others (PROTOCOL.md 3.3 lets it). The shard routes a finished
//! read by its token to its [`Owner`], which checks that what it read for still stands (the
//! link, the epoch, the position) before it uses the records; a read whose owner went away
//! is dropped when it arrives. At most [`READS_IN_FLIGHT_MAX`] reads wait (the store refuses
//! more with `Overloaded`: a catch-up or a push asks again in a later turn, a READ or PULL
//! reads inside the call, as when the disk is the bottleneck anyway), so the table is
//! bounded.

use chainlog_net::{Opcode, PullRequest, ReadRequest as ReadMessage};
use chainlog_storage::io::Io;
use chainlog_storage::{ReadOutput, ReadRequest, Result, Store, READS_IN_FLIGHT_MAX};

/// Whom a read that waits for the disk is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Records of `log_id` from `from` for its successor, read in `epoch` for the link in
    /// `slot` of `generation`.
    CatchUp {
        log_id: u64,
        from: u64,
        epoch: u64,
        slot: u32,
        generation: u32,
    },
    /// The next records of a subscription of the connection that `conn` names
    /// (`conn::ack_token`); the subscription knows the token.
    Push { conn: u64 },
    /// The answer to request `request_id` of the connection that `conn` names.
    Answer {
        conn: u64,
        request_id: u64,
        parked: Parked,
    },
}

/// A request whose answer waits for its records to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parked {
    /// A client's READ.
    Read(ReadMessage),
    /// A node's PULL.
    Pull(PullRequest),
}

impl Parked {
    /// The request's opcode (for its refusal).
    pub(crate) fn opcode(self) -> Opcode {
        match self {
            Parked::Read(_) => Opcode::Read,
            Parked::Pull(_) => Opcode::Pull,
        }
    }
}

/// What starting a read gave.
#[derive(Debug)]
pub(crate) enum Started {
    /// Its records: all were in memory.
    Now(ReadOutput),
    /// It waits for the disk; its result comes back with this token.
    Waiting(u64),
}

/// The reads waiting for the disk, by token.
#[derive(Debug, Default)]
pub(crate) struct Reads {
    next_token: u64,
    waiting: Vec<(u64, Owner)>,
}

impl Reads {
    /// Starts `request` for `owner`. Errors as `Store::read_async` (`Overloaded`: ask again
    /// in a later turn).
    pub(crate) fn start<I: Io>(
        &mut self,
        store: &mut Store<I>,
        request: ReadRequest,
        owner: Owner,
    ) -> Result<Started> {
        let token = self.next_token;
        self.next_token += 1;
        Ok(match store.read_async(request, token)? {
            Some(output) => Started::Now(output),
            None => {
                assert!(
                    self.waiting.len() < READS_IN_FLIGHT_MAX,
                    "the store bounds the reads that wait"
                );
                self.waiting.push((token, owner));
                Started::Waiting(token)
            }
        })
    }

    /// As [`start`](Self::start) for a request that is answered as soon as it can be (a
    /// READ or PULL, `Owner::Answer`): with every read slot waiting, it reads inside the call
    /// (the disk is the bottleneck then, and a client should not see OVERLOADED for a read).
    pub(crate) fn start_answer<I: Io>(
        &mut self,
        store: &mut Store<I>,
        request: ReadRequest,
        owner: Owner,
    ) -> Result<Started> {
        match self.start(store, request, owner) {
            Err(chainlog_storage::Error::Overloaded) => store.read_now(request).map(Started::Now),
            started => started,
        }
    }

    /// The read `token` finished: whom it was for.
    pub(crate) fn finish(&mut self, token: u64) -> Owner {
        let i = self
            .waiting
            .iter()
            .position(|&(t, _)| t == token)
            .expect("the store finishes only reads it started");
        self.waiting.swap_remove(i).1
    }

    /// Whether a catch-up read of `log_id` is waiting (one at a time per log).
    pub(crate) fn catching_up(&self, log_id: u64) -> bool {
        self.waiting
            .iter()
            .any(|(_, o)| matches!(*o, Owner::CatchUp { log_id: l, .. } if l == log_id))
    }
}
