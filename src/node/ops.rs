//! The shard's own operations on its ring: accept, receive, send, the stop signal and the
//! timers, and the replication links' connect, receive and `sendmsg`, tagged with tokens that
//! carry [`EXTERNAL_TOKEN`] so the store hands their completions back.
//!
//! Token layout: bit 63 external, bits 48..56 the operation, bits 24..48 the connection's
//! generation (a stale completion for a reused slot is recognised), bits 0..24 the slot.

use std::os::fd::RawFd;

use chainlog_storage::{UringIo, EXTERNAL_TOKEN};
use io_uring::{opcode, types};

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

/// Submits an accept on `listener`.
pub(crate) fn accept(io: &mut UringIo, listener: RawFd) {
    let entry = opcode::Accept::new(
        types::Fd(listener),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )
    .flags(libc::SOCK_CLOEXEC)
    .build();
    let token = NetToken {
        op: NetOp::Accept,
        slot: 0,
        generation: 0,
    };
    // SAFETY: no buffer; the listener stays open for the life of the shard loop.
    unsafe { io.submit_external(entry, token.encode()) };
}

/// Submits a receive into `buf` (which must stay untouched until the completion).
pub(crate) fn recv(io: &mut UringIo, fd: RawFd, buf: &mut [u8], token: NetToken) {
    let entry = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build();
    // SAFETY: the connection owns `buf` (a boxed slice that is never reallocated) and keeps
    // it, and the socket, until this receive completes (Conn::recv_in_flight).
    unsafe { io.submit_external(entry, token.encode()) };
}

/// Submits a send of `buf` (which must stay untouched until the completion).
pub(crate) fn send(io: &mut UringIo, fd: RawFd, buf: &[u8], token: NetToken) {
    let entry = opcode::Send::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    // SAFETY: the connection keeps `buf` (its in-flight send buffer, not touched while
    // Conn::send_in_flight) and the socket until this send completes.
    unsafe { io.submit_external(entry, token.encode()) };
}

/// Submits a connect of `fd` to `addr` (which must stay valid until the completion).
pub(crate) fn connect(
    io: &mut UringIo,
    fd: RawFd,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
    token: NetToken,
) {
    let entry = opcode::Connect::new(types::Fd(fd), addr, len).build();
    // SAFETY: the link owns the socket and the boxed address until this connect completes
    // (Link::connect_in_flight).
    unsafe { io.submit_external(entry, token.encode()) };
}

/// Submits a `sendmsg` of `msg` (whose iovecs and their bytes must stay untouched until the
/// completion).
pub(crate) fn sendmsg(io: &mut UringIo, fd: RawFd, msg: *const libc::msghdr, token: NetToken) {
    let entry = opcode::SendMsg::new(types::Fd(fd), msg)
        .flags(libc::MSG_NOSIGNAL as u32)
        .build();
    // SAFETY: the link keeps its boxed msghdr and iovecs, the chunks they point into (owned
    // bytes or pinned store bytes) and the socket until this send completes
    // (Link::send_in_flight).
    unsafe { io.submit_external(entry, token.encode()) };
}

/// Cancels every operation in flight on `fd` (they complete with ECANCELED).
pub(crate) fn cancel_fd(io: &mut UringIo, fd: RawFd) {
    let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
    let token = NetToken {
        op: NetOp::Cancel,
        slot: 0,
        generation: 0,
    };
    // SAFETY: no buffer; the descriptor stays open until its operations completed.
    unsafe { io.submit_external(entry, token.encode()) };
}

/// Submits a read of an eventfd into `buf` (`op`: the stop signal or the control thread's
/// news).
pub(crate) fn wait_event(io: &mut UringIo, eventfd: RawFd, buf: &mut [u8; 8], op: NetOp) {
    let entry = opcode::Read::new(types::Fd(eventfd), buf.as_mut_ptr(), 8).build();
    let token = NetToken {
        op,
        slot: 0,
        generation: 0,
    };
    // SAFETY: the shard owns the eventfd and the 8-byte buffer for the life of its loop.
    unsafe { io.submit_external(entry, token.encode()) };
}

/// Submits a timeout that completes after `ts` (`op`: the shard's periodic metrics tick or
/// the replication timer).
pub(crate) fn timeout(io: &mut UringIo, ts: &types::Timespec, op: NetOp) {
    let entry = opcode::Timeout::new(ts as *const types::Timespec).build();
    let token = NetToken {
        op,
        slot: 0,
        generation: 0,
    };
    // SAFETY: the shard owns the boxed timespec for the life of its loop.
    unsafe { io.submit_external(entry, token.encode()) };
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
