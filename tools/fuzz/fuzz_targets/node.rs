#![no_main]
//! A hostile client against two simulated nodes (`chainlog::sim::hostile_client`): arbitrary
//! bytes after its HELLO, then a good client's append. No node may stop or panic, and the
//! append must be answered. The first byte picks whether every frame's length and CRC are set
//! right first, so that mutations reach the node's request handling behind the checksum.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let mut bytes = bytes.to_vec();
    if mode & 1 == 1 {
        chainlog::sim::fix_frame_checksums(&mut bytes);
    }
    if let Err(e) = chainlog::sim::hostile_client(&bytes) {
        panic!("{e}");
    }
});
