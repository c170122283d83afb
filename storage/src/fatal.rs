//! The third failure tier: stop the process when continuing could lose or corrupt data.
//!
//! A failed write or flush leaves the device and page cache in a state that cannot be trusted
//! (retrying fsync after an error can report success for data that never reached the disk), so
//! the node stops instead: nothing is acknowledged after the error, and recovery on restart
//! decides what is durable. [`FatalReason`] says which of the failures it was.

use std::fmt;

/// The exit code of a process stopped by [`fatal`]. Supervisors treat it as "do not restart
/// blindly: the disk failed".
pub const FATAL_EXIT_CODE: i32 = 86;

/// Why a process stops through [`fatal`]: what failed (typed, so that a caller, a test or a
/// simulator can tell the failures apart), with the error's text for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FatalReason {
    /// A store failed: a write or flush of its segments, a segment's preparation or
    /// deletion, its calibration write, or its clean close
    /// ([`Error::Fatal`](crate::Error::Fatal), or an error while closing). Nothing after it is
    /// acknowledged.
    Store {
        /// The shard whose store failed (`None`: a process with one store).
        shard: Option<u16>,
        /// What failed.
        error: String,
    },
    /// The I/O ring refused a submission: the operations it held are in an unknown state.
    Submit {
        /// The system's error.
        error: String,
    },
    /// A small state file replaced atomically (a shard's catalog, the controller's state)
    /// could not be replaced durably: the disk may hold the old version or the new one, and
    /// answering either way could contradict it after a restart.
    StateFile {
        /// What failed (it names the file).
        error: String,
    },
}

impl FatalReason {
    /// A store's failure: `error` (its [`Error::Fatal`](crate::Error::Fatal) reason, or what
    /// else failed) in shard `shard`, if the process has shards.
    pub fn store(shard: Option<u16>, error: impl fmt::Display) -> FatalReason {
        FatalReason::Store {
            shard,
            error: error.to_string(),
        }
    }
}

impl fmt::Display for FatalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FatalReason::Store {
                shard: Some(shard),
                error,
            } => write!(f, "shard {shard}: {error}"),
            FatalReason::Store { shard: None, error } => f.write_str(error),
            FatalReason::Submit { error } => write!(f, "io_uring submit failed: {error}"),
            FatalReason::StateFile { error } => {
                write!(f, "a state file could not be replaced durably: {error}")
            }
        }
    }
}

std::thread_local! {
    /// Whether [`fatal`] panics with a [`FatalPanic`] instead of exiting: set by a simulator
    /// that runs many "processes" in one thread and stops only the one that failed.
    static PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The panic payload of [`fatal`] in a thread that asked for panics ([`fatal_panics`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatalPanic(pub FatalReason);

/// Makes [`fatal`] in this thread panic with a [`FatalPanic`] (`true`) instead of exiting the
/// process: a simulator catches it and stops only the simulated process that failed, as the
/// real one would exit.
pub fn fatal_panics(panics: bool) {
    PANICS.with(|p| p.set(panics));
}

/// Logs `reason` and exits the process with [`FATAL_EXIT_CODE`] (or, in a simulator's thread,
/// panics with a [`FatalPanic`]). Never returns.
pub fn fatal(reason: FatalReason) -> ! {
    tracing::error!(%reason, "fatal storage error; stopping");
    if PANICS.with(std::cell::Cell::get) {
        std::panic::panic_any(FatalPanic(reason));
    }
    eprintln!("chainlog: fatal storage error: {reason}");
    std::process::exit(FATAL_EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_asked_for_panics_gets_the_reason_as_the_payload() {
        let reason = FatalReason::Store {
            shard: Some(3),
            error: "write of frame 9 failed: EIO".into(),
        };
        let caught = std::thread::spawn(move || {
            fatal_panics(true);
            std::panic::catch_unwind(|| fatal(reason)).expect_err("fatal never returns")
        })
        .join()
        .expect("the thread itself ends");
        let payload = caught.downcast::<FatalPanic>().expect("a FatalPanic");
        assert_eq!(
            payload.0,
            FatalReason::Store {
                shard: Some(3),
                error: "write of frame 9 failed: EIO".into()
            }
        );
        assert_eq!(
            payload.0.to_string(),
            "shard 3: write of frame 9 failed: EIO"
        );
    }
}
