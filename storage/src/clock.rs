//! Time, passed in: the real clock, or the simulator's virtual one.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time for the store: record timestamps and stage latencies.
pub trait Clock: Debug + Send + Sync {
    /// Wall-clock microseconds since the Unix epoch (record timestamps).
    fn wall_us(&self) -> u64;
    /// Monotonic microseconds since an arbitrary start (latencies).
    fn monotonic_us(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    /// A clock whose monotonic time starts now.
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn wall_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }

    fn monotonic_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// Virtual time, advanced by the simulated disk as operations complete.
#[derive(Clone, Debug, Default)]
pub struct SimClock {
    now_us: Arc<AtomicU64>,
}

/// The simulator's wall clock starts here (2026-01-01), so timestamps look like timestamps.
const SIM_EPOCH_US: u64 = 1_767_225_600_000_000;

impl SimClock {
    /// Moves time forward to `us` (never backwards).
    pub fn advance_to(&self, us: u64) {
        self.now_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Moves time forward by `us`.
    pub fn advance_by(&self, us: u64) {
        self.now_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn wall_us(&self) -> u64 {
        SIM_EPOCH_US + self.monotonic_us()
    }

    fn monotonic_us(&self) -> u64 {
        self.now_us.load(Ordering::Relaxed)
    }
}

/// A small deterministic random number generator (SplitMix64), for the simulator and tests.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True once in `n` calls on average (never for `n == 0`).
    pub fn one_in(&mut self, n: u32) -> bool {
        n != 0 && self.below(u64::from(n)) == 0
    }
}
