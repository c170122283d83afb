#![no_main]
//! The settings files of `chainlog node --config` and `chainlog controller --config`:
//! arbitrary text parses and resolves into a configuration or fails with a message; never a
//! panic (an overflow included: the targets build with debug assertions), and never a value
//! other than the one given (a segment size in MiB that overflowed into another size). A
//! controller address that is a host name is left out (resolving it would ask DNS).

use chainlog::controller::ControllerSettings;
use chainlog::node::NodeSettings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(mut node) = toml::from_str::<NodeSettings>(text) {
        if node
            .controller
            .as_deref()
            .is_some_and(|a| a.parse::<std::net::SocketAddr>().is_err())
        {
            node.controller = None;
        }
        let segment_mib = node.segment_mib;
        if let (Ok(config), Some(mib)) = (node.resolve(), segment_mib) {
            assert_eq!(
                u128::from(config.store.segment_bytes),
                u128::from(mib) << 20
            );
        }
    }
    if let Ok(controller) = toml::from_str::<ControllerSettings>(text) {
        let _ = controller.resolve();
    }
});
