#![no_main]
//! The wire: frames and every message body, as a node reads them from clients (the client
//! limits), from peers (the replication limits) and under small limits that short inputs
//! reach. Never a panic; whatever decodes re-encodes to the very same bytes (the encoding is
//! canonical). The first byte picks how the rest is read: as a raw stream of frames, or as
//! one frame whose length and CRC are set right, so that mutations reach the message
//! decoders instead of stopping at the checksum.

use chainlog_net::Limits;
use libfuzzer_sys::fuzz_target;

#[path = "../../../net/tests/common/mod.rs"]
mod common;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode & 1 == 1 {
        common::reframe(&mut bytes);
    }
    for limits in [
        Limits::DEFAULT,
        Limits::DEFAULT.replication(),
        common::small_limits(),
    ] {
        common::decode_everything(&bytes, &limits);
    }
});
