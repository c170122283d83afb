//! The third failure tier: stop the process when continuing could lose or corrupt data.
//!
//! A failed write or flush leaves the device and page cache in a state that cannot be trusted
//! (retrying fsync after an error can report success for data that never reached the disk), so
//! the node stops instead: nothing is acknowledged after the error, and recovery on restart
//! decides what is durable.

/// The exit code of a process stopped by [`fatal`]. Supervisors treat it as "do not restart
/// blindly: the disk failed".
pub const FATAL_EXIT_CODE: i32 = 86;

std::thread_local! {
    /// Whether [`fatal`] panics with a [`FatalPanic`] instead of exiting: set by a simulator
    /// that runs many "processes" in one thread and stops only the one that failed.
    static PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The panic payload of [`fatal`] in a thread that asked for panics ([`fatal_panics`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatalPanic(pub String);

/// Makes [`fatal`] in this thread panic with a [`FatalPanic`] (`true`) instead of exiting the
/// process: a simulator catches it and stops only the simulated process that failed, as the
/// real one would exit.
pub fn fatal_panics(panics: bool) {
    PANICS.with(|p| p.set(panics));
}

/// Logs `reason` and exits the process with [`FATAL_EXIT_CODE`] (or, in a simulator's thread,
/// panics with a [`FatalPanic`]). Never returns.
pub fn fatal(reason: &str) -> ! {
    tracing::error!(reason, "fatal storage error; stopping");
    if PANICS.with(std::cell::Cell::get) {
        std::panic::panic_any(FatalPanic(reason.to_string()));
    }
    eprintln!("chainlog: fatal storage error: {reason}");
    std::process::exit(FATAL_EXIT_CODE)
}
