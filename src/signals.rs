//! Stop signals (SIGTERM, SIGINT) taken synchronously: blocked in every thread and waited for
//! by one, so that a process that owns something (a node's shards, a dev cluster's children)
//! stops it in order instead of dying with the signal's default action.

use std::io;
use std::time::Duration;

/// SIGTERM and SIGINT, blocked in the calling thread and taken only by [`StopSignals::wait`]:
/// how `chainlog node` and `chainlog dev` wait for Ctrl-C. Create it
/// on the main thread before any other thread starts, so that every thread inherits the
/// block and no thread takes the signal's default action (dying without stopping the nodes).
#[derive(Debug)]
pub struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    /// Blocks SIGTERM and SIGINT in this thread (and the threads it starts from now on).
    pub fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset_t is plain data; the calls only write to the set we pass.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(StopSignals { set })
        }
    }

    /// Waits up to `timeout` for SIGTERM or SIGINT; whether one came.
    pub fn wait(&self, timeout: Duration) -> bool {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: set and ts are valid for the call; no siginfo is asked for.
        unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) > 0 }
    }
}
