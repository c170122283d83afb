//! The tokens of the shard's own operations in its environment ([`super::env::Net`]): accept,
//! receive, send, the stop signal and the timers, and the replication links' connect, receive
//! and send. They carry [`EXTERNAL_TOKEN`] so the store hands their completions back.
//!
//! Token layout: bit 63 external, bits 48..56 the operation, bits 24..48 the connection's
//! generation (a stale completion for a reused slot is recognised), bits 0..24 the slot.

use chainlog_storage::EXTERNAL_TOKEN;

/// What a completion of the shard's own is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NetOp {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Stop = 4,
    Tick = 5,
    /// A replication link's connect (slot: the link).
    LinkConnect = 6,
    /// A replication link's receive.
    LinkRecv = 7,
    /// A replication link's `sendmsg`.
    LinkSend = 8,
    /// The replication timer (link retries, held logs).
    Timer = 9,
    /// The control thread has news (a new cluster map).
    Control = 10,
    /// A cancellation of operations on a descriptor (its completion means nothing).
    Cancel = 11,
}

/// A decoded token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NetToken {
    pub(crate) op: NetOp,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

const SLOT_BITS: u64 = 24;
const GENERATION_BITS: u64 = 24;
const OP_SHIFT: u64 = SLOT_BITS + GENERATION_BITS;
/// Connections one shard holds at most (slots are 24-bit).
pub(crate) const SLOTS_MAX: usize = 1 << SLOT_BITS;
/// Connection generations are 24-bit (they wrap there).
pub(crate) const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

impl NetToken {
    /// The token of one of the shard's own operations (slot and generation 0).
    pub(crate) fn of(op: NetOp) -> NetToken {
        NetToken {
            op,
            slot: 0,
            generation: 0,
        }
    }

    pub(crate) fn encode(self) -> u64 {
        debug_assert!((self.slot as u64) < 1 << SLOT_BITS);
        EXTERNAL_TOKEN
            | (self.op as u64) << OP_SHIFT
            | (u64::from(self.generation) & ((1 << GENERATION_BITS) - 1)) << SLOT_BITS
            | u64::from(self.slot)
    }

    pub(crate) fn decode(token: u64) -> Option<NetToken> {
        if token & EXTERNAL_TOKEN == 0 {
            return None;
        }
        let op = match (token >> OP_SHIFT) & 0xff {
            1 => NetOp::Accept,
            2 => NetOp::Recv,
            3 => NetOp::Send,
            4 => NetOp::Stop,
            5 => NetOp::Tick,
            6 => NetOp::LinkConnect,
            7 => NetOp::LinkRecv,
            8 => NetOp::LinkSend,
            9 => NetOp::Timer,
            10 => NetOp::Control,
            11 => NetOp::Cancel,
            _ => return None,
        };
        Some(NetToken {
            op,
            slot: (token & ((1 << SLOT_BITS) - 1)) as u32,
            generation: ((token >> SLOT_BITS) & ((1 << GENERATION_BITS) - 1)) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_carry_the_external_bit() {
        for op in [
            NetOp::Accept,
            NetOp::Recv,
            NetOp::Send,
            NetOp::Stop,
            NetOp::Tick,
            NetOp::LinkConnect,
            NetOp::LinkRecv,
            NetOp::LinkSend,
            NetOp::Timer,
            NetOp::Control,
            NetOp::Cancel,
        ] {
            let t = NetToken {
                op,
                slot: (1 << 24) - 1,
                generation: 0x00ab_cdef,
            };
            let encoded = t.encode();
            assert_ne!(encoded & EXTERNAL_TOKEN, 0);
            assert_eq!(NetToken::decode(encoded), Some(t));
        }
        assert_eq!(NetToken::decode(5), None);
    }
}
