//! Where the binaries' logs go and how they look: stderr, filtered by `RUST_LOG` (else a
//! default level), coloured only when stderr is a terminal, so that a log written to a file
//! (`chainlog dev`'s `node-N.log`, a test's captured output) is plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: stderr, `RUST_LOG` or else `default_filter` (e.g. "info"),
/// ANSI colours only on a terminal.
pub fn init(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
