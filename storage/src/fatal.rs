//! The third failure tier: stop the process when continuing could lose or corrupt data.
//!
//! A failed write or flush leaves the device and page cache in a state that cannot be trusted
//! (retrying fsync after an error can report success for data that never reached the disk), so
//! the node stops instead: nothing is acknowledged after the error, and recovery on restart
//! decides what is durable.

/// The exit code of a process stopped by [`fatal`]. Supervisors treat it as "do not restart
/// blindly: the disk failed".
pub const FATAL_EXIT_CODE: i32 = 86;

/// Logs `reason` and exits the process with [`FATAL_EXIT_CODE`]. Never returns.
pub fn fatal(reason: &str) -> ! {
    tracing::error!(reason, "fatal storage error; stopping");
    eprintln!("chainlog: fatal storage error: {reason}");
    std::process::exit(FATAL_EXIT_CODE)
}
