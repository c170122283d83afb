#![no_main]
//! The controller's state file: arbitrary bytes load as a consistent state or fail with a
//! typed error naming the file; never a panic. A state that loads saves and loads again as
//! the same state. The first byte picks whether the body's length and checksum are set
//! right first, so that mutations reach the JSON and the state's consistency checks.

use std::path::Path;

use chainlog::controller::store::decode;
use chainlog_fuzz::fix_state_checksum;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, bytes)) = input.split_first() else {
        return;
    };
    let mut file = bytes.to_vec();
    if mode & 1 == 1 {
        fix_state_checksum(&mut file);
    }
    let path = Path::new("/fuzz/state");
    let Ok(state) = decode(&file, path) else {
        return;
    };
    let again = decode(&chainlog::controller::store::encode(&state), path).expect("reloads");
    assert_eq!(format!("{state:?}"), format!("{again:?}"));
});
