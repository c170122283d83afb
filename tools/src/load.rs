//! The load engine of `chainlog-bench append` and `plan`: who sends which append when, and what
//! is measured about it. It owns the two loop models, the arrival schedules, record sizes and
//! payloads, the time series, the send-lateness accounting and what became of every append.
//!
//! **Closed loop** (`concurrency C`): `C` slots each keep one append outstanding; when its
//! acknowledgement arrives the slot sends its next append at once. Latency runs from the send
//! to the acknowledgement. A stalled target slows the senders down, so a stall shows up once
//! per slot, however long it lasts (coordinated omission).
//!
//! **Open loop** (`rate R`): sends are due at times fixed in advance by the arrival schedule
//! (`uniform`: exactly every `1/R`; `poisson`: exponential gaps of mean `1/R` from a seeded
//! generator), whatever the target does. Latency runs from the **intended** send time, so
//! requests queued behind a stall carry the stall in their latency (coordinated omission
//! corrected). Outstanding appends are bounded (`outstanding_max`): a send due while the
//! bound is full waits for a free slot and goes out late; one still waiting when the measured
//! window ends never went out and is counted in `not_sent`. Each send's lateness (actual minus
//! intended send time) is recorded; sends later than `late_after` are counted as late.
//!
//! The engine is one future, generic over a [`Clock`] and a [`Target`]: the real run passes
//! [`SystemClock`] and the client library; tests pass a simulated clock and a fake target and
//! get exact, repeatable timings. It spawns nothing: outstanding appends are futures polled in
//! place, and each one takes its completion time the moment it is polled ready.
//!
//! **What counts.** The appends meant for the measured window (after the warm-up): in open
//! loop those the schedule has due in it, in closed loop those sent in it. Each is judged on
//! its own answer, whenever it comes: after the window the run *drains*, waiting up to
//! `drain` for the answers still outstanding, so an answer that lands just after the window
//! is a latency, not a missing append. An append that was not acknowledged (an error, no
//! answer by the end of the drain, never sent) is counted in [`Completion`] and enters the
//! latency percentiles as the time from its intended send to the end of the run: a lower
//! bound of what its writer waited, so a run where appends failed never shows the healthy
//! percentiles of the few that succeeded. The time series puts each append in the interval
//! of its intended send time.
//!
//! Payloads carry their send time (clock microseconds, little endian) in their first 8 bytes,
//! so a tailer can measure end-to-end latency.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};
use tokio::io::unix::AsyncFd;

use crate::report::{self, Errors, LatencyPercentiles};

/// The time series cuts a measured window into at least this many intervals (down to 100 ms
/// each): [`interval_for`].
const INTERVALS_MIN: u32 = 20;
/// The real clock's timer wakes this long before a deadline; the rest is waited for by
/// yielding to the runtime ([`SystemClock`]).
const SPIN_BEFORE: Duration = Duration::from_micros(25);
/// The share of its time the real clock may spend yielding until deadlines.
const SPIN_SHARE_MAX: f64 = 0.25;
/// Bytes at the start of a payload that carry its send time.
pub(crate) const STAMP_BYTES: usize = 8;

/// A source of time: the engine reads it and sleeps on it, never on the system clock.
pub(crate) trait Clock {
    /// Time since the clock's origin.
    fn now(&self) -> Duration;
    /// Completes once [`Clock::now`] is at least `at`.
    fn sleep_until(&self, at: Duration) -> impl Future<Output = ()>;
}

/// The real clock: `CLOCK_MONOTONIC` from when it was made, with a timerfd (armed at absolute
/// deadlines, woken through tokio's reactor) for sleeps. tokio's own timer rounds every
/// deadline up to the next whole millisecond, which would send each open-loop append up to
/// 1 ms after its intended time even on an idle machine; the timerfd wakes within tens of
/// microseconds, so it is armed [`SPIN_BEFORE`] early and the rest is waited for by yielding
/// to the runtime (sends go out within microseconds of their time; on this project's VM the
/// timer alone left them 17-25 µs late at p50). One sleeper at a time (the engine has one): a
/// sleep re-arms the timer.
#[derive(Debug)]
pub(crate) struct SystemClock {
    now: MonotonicClock,
    timer: AsyncFd<OwnedFd>,
    /// The deadline the timer is armed at: a sleep until the same deadline (the engine asks
    /// again after every completion) does not re-arm it.
    armed_ns: Cell<u64>,
    /// Time spent yielding until deadlines (CPU the generator spent waiting, not working).
    spun: Cell<Duration>,
}

impl SystemClock {
    /// A clock whose origin is now. Must be called inside a tokio runtime with I/O enabled.
    pub(crate) fn new() -> std::io::Result<SystemClock> {
        // SAFETY: a plain system call with constant arguments; the result is checked below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` is open, and always answers the same descriptor, until the
        // `AsyncFd` that owns it drops it.
        let timer = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(SystemClock {
            now: MonotonicClock::new(),
            timer,
            armed_ns: Cell::new(0),
            spun: Cell::new(Duration::ZERO),
        })
    }

    /// Time spent so far yielding until deadlines rather than sleeping.
    pub(crate) fn spun(&self) -> Duration {
        self.spun.get()
    }

    /// The clock's reading alone, to share with other tasks (the tailers).
    pub(crate) fn monotonic(&self) -> MonotonicClock {
        self.now
    }

    /// Arms the timer to fire at `deadline_ns` on `CLOCK_MONOTONIC`.
    fn arm(&self, deadline_ns: u64) -> std::io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: the descriptor is a live timerfd we own; `spec` outlives the call; a null
        // old value is allowed.
        let rc = unsafe {
            libc::timerfd_settime(
                self.timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Whether the timer has fired since it was armed (consumes the expiration).
    fn fired(&self) -> bool {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8 from a live timerfd we own.
        let n = unsafe {
            libc::read(
                self.timer.as_raw_fd(),
                expirations.as_mut_ptr().cast(),
                expirations.len(),
            )
        };
        n == expirations.len() as isize
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.now.now()
    }

    async fn sleep_until(&self, at: Duration) {
        // The timer wakes the thread SPIN_BEFORE early, and the rest is waited for by
        // yielding to the runtime (answers are still handled): waking from a timer takes tens
        // of microseconds on a VM, and arming one for a closer deadline costs more than the
        // wait. At high rates that would spin all the time, starving the target's threads
        // of a core (and, under SCHED_FIFO, getting the thread throttled for 50 ms a
        // second): past SPIN_SHARE_MAX of the time, sleeps use the timer alone.
        let spin = self.spun.get().as_secs_f64() < self.now().as_secs_f64() * SPIN_SHARE_MAX;
        let wake = if spin {
            at.saturating_sub(SPIN_BEFORE)
        } else {
            at
        };
        if self.now() < wake {
            self.timer_until(wake).await;
        }
        let spin_from = self.now();
        while self.now() < at {
            tokio::task::yield_now().await;
        }
        self.spun
            .set(self.spun.get() + self.now().saturating_sub(spin_from));
    }
}

impl SystemClock {
    /// Completes once the timer armed at `at` fired.
    async fn timer_until(&self, at: Duration) {
        let deadline_ns = self.now.origin_ns + u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        if self.armed_ns.get() != deadline_ns {
            if let Err(e) = self.arm(deadline_ns) {
                panic!("arming a timerfd failed: {e}");
            }
            self.armed_ns.set(deadline_ns);
        }
        while self.now() < at {
            let mut ready = match self.timer.readable().await {
                Ok(ready) => ready,
                Err(e) => panic!("waiting on a timerfd failed: {e}"),
            };
            if self.fired() {
                return;
            }
            // Readiness left over from an earlier arming: wait for this one.
            ready.clear_ready();
        }
    }
}

/// `CLOCK_MONOTONIC` time since an origin: the reading half of [`SystemClock`], copyable.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MonotonicClock {
    origin_ns: u64,
}

impl MonotonicClock {
    fn new() -> MonotonicClock {
        MonotonicClock {
            origin_ns: monotonic_ns(),
        }
    }

    /// Time since the origin.
    pub(crate) fn now(&self) -> Duration {
        Duration::from_nanos(monotonic_ns().saturating_sub(self.origin_ns))
    }

    /// `CLOCK_MONOTONIC` nanoseconds at the origin: other processes on this host read the
    /// same clock.
    pub(crate) fn origin_ns(&self) -> u64 {
        self.origin_ns
    }
}

/// `CLOCK_MONOTONIC`, nanoseconds.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Why an append failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetError {
    /// Counted under this kind (snake_case), and the run goes on.
    Counted(&'static str),
    /// The run cannot go on (connection refused, the log deleted under the bench...).
    Fatal(String),
}

/// What the engine appends to.
pub(crate) trait Target {
    /// Appends one record, `payload`, to log number `log` (0-based, below the spec's `logs`);
    /// completes once it is durable, with its LSN.
    fn append(
        &self,
        log: usize,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<u64, TargetError>>;
}

/// Open-loop arrival schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Arrivals {
    /// Exactly every `1/rate`.
    Uniform,
    /// A Poisson process: independent exponential gaps of mean `1/rate`.
    Poisson,
}

impl Arrivals {
    /// `"uniform"` or `"poisson"`, as the command line and the reports name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Arrivals::Uniform => "uniform",
            Arrivals::Poisson => "poisson",
        }
    }
}

/// How sends are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum LoopMode {
    /// `concurrency` slots, each with one append outstanding.
    Closed {
        /// Slots.
        concurrency: u32,
    },
    /// Sends due at `rate_per_s` on average, by `arrivals`, at most `outstanding_max` at once.
    Open {
        /// Offered load, records per second.
        rate_per_s: f64,
        /// The schedule of intended send times.
        arrivals: Arrivals,
        /// Appends outstanding at most; a send due beyond that waits.
        outstanding_max: usize,
    },
}

impl LoopMode {
    /// `"closed"` or `"open"`, as reports name it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            LoopMode::Closed { .. } => "closed",
            LoopMode::Open { .. } => "open",
        }
    }
}

/// Payload sizes: `--record-size 128` (every record 128 bytes) or `--record-size 64..4096`
/// (each record's size drawn uniformly from 64 to 4096 bytes, both included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordSizes {
    /// Every record this many bytes.
    Fixed(usize),
    /// Uniform over `min..=max` bytes.
    Uniform {
        /// Smallest size.
        min: usize,
        /// Largest size.
        max: usize,
    },
}

impl RecordSizes {
    /// The largest size a record can have.
    pub(crate) fn max(&self) -> usize {
        match *self {
            RecordSizes::Fixed(n) => n,
            RecordSizes::Uniform { max, .. } => max,
        }
    }

    /// The smallest size a record can have.
    pub(crate) fn min(&self) -> usize {
        match *self {
            RecordSizes::Fixed(n) => n,
            RecordSizes::Uniform { min, .. } => min,
        }
    }

    /// The mean size, bytes.
    pub(crate) fn mean_bytes(&self) -> f64 {
        (self.min() + self.max()) as f64 / 2.0
    }

    fn draw(&self, rng: &mut SplitMix64) -> usize {
        match *self {
            RecordSizes::Fixed(n) => n,
            RecordSizes::Uniform { min, max } => {
                min + (rng.next_u64() % (max - min + 1) as u64) as usize
            }
        }
    }
}

/// Parses `--record-size`: `BYTES` or `MIN..MAX` (both included, `MIN < MAX`).
pub(crate) fn parse_record_sizes(s: &str) -> Result<RecordSizes, String> {
    let bytes = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("{t:?} is not a number of bytes (BYTES or MIN..MAX)"))
    };
    match s.split_once("..") {
        None => Ok(RecordSizes::Fixed(bytes(s)?)),
        Some((min, max)) => {
            let (min, max) = (bytes(min)?, bytes(max)?);
            if min >= max {
                return Err(format!("{s}: MIN must be below MAX"));
            }
            Ok(RecordSizes::Uniform { min, max })
        }
    }
}

impl fmt::Display for RecordSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordSizes::Fixed(n) => write!(f, "{n}"),
            RecordSizes::Uniform { min, max } => write!(f, "{min}..{max}"),
        }
    }
}

/// A fixed size is a number in JSON (as it always was); a range is its `MIN..MAX` string.
impl Serialize for RecordSizes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RecordSizes::Fixed(n) => s.serialize_u64(*n as u64),
            RecordSizes::Uniform { .. } => s.collect_str(self),
        }
    }
}

/// A run of the engine.
#[derive(Clone, Debug)]
pub(crate) struct LoadSpec {
    /// Closed or open loop.
    pub(crate) loop_mode: LoopMode,
    /// Logs appended to, round robin (closed loop: slot `i` appends to log `i % logs`).
    pub(crate) logs: usize,
    /// Payload sizes.
    pub(crate) record_sizes: RecordSizes,
    /// Not measured, from the start.
    pub(crate) warmup: Duration,
    /// Measured, after the warm-up.
    pub(crate) duration: Duration,
    /// After the window, how long the answers of appends still outstanding are waited for.
    pub(crate) drain: Duration,
    /// A send later than this after its intended time counts as late.
    pub(crate) late_after: Duration,
    /// Seeds arrivals, sizes and payload bytes.
    pub(crate) seed: u64,
    /// Keep what became of every append of the window ([`LoadResult::outcomes`]): a fault
    /// drill reads its outages from them.
    pub(crate) outcomes: bool,
}

/// Send accounting of an open-loop run, over the sends intended inside the measured window.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SendStats {
    /// Sends the schedule intended in the measured window.
    pub(crate) intended: u64,
    /// Of those, sends that went out.
    pub(crate) sent: u64,
    /// Of those sent, sends later than `late_after_us` after their intended time.
    pub(crate) late: u64,
    /// Intended sends that never went out (the outstanding bound was full to the end).
    pub(crate) not_sent: u64,
    /// The lateness that counts as late, microseconds.
    pub(crate) late_after_us: u64,
    /// Lateness of the sends that went out (actual minus intended send time), microseconds.
    pub(crate) lateness_us: LatencyPercentiles,
    /// Of the sends that went out, the late ones that had to wait for a free slot (the
    /// outstanding bound was full): their lateness is the target's doing (it held answers
    /// back).
    pub(crate) held_by_bound: u64,
    /// Lateness of the other sends, microseconds: the generator's own (its thread did not get
    /// to them in time).
    pub(crate) own_lateness_us: LatencyPercentiles,
}

/// One interval of the time series, as the HTML report and the JSON report show it. An append
/// belongs to the interval of its intended send time (closed loop: its send time), whenever
/// its answer came.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct IntervalStats {
    /// Start of the interval, seconds after the measured window began.
    pub(crate) start_s: f64,
    /// Length of the interval (the last one may be short), seconds.
    pub(crate) duration_s: f64,
    /// Appends of the interval that were acknowledged, per second.
    pub(crate) records_per_s: f64,
    /// Their payload bytes, per second.
    pub(crate) bytes_per_s: f64,
    /// Appends of the interval that were not acknowledged by the end of the run (failed,
    /// unanswered, never sent).
    pub(crate) unacknowledged: u64,
    /// Latency (corrected in open loop) of the appends of the interval, unacknowledged ones
    /// included (see [`LoadResult::latency`]), microseconds.
    pub(crate) latency_us_p50: u64,
    /// 99th percentile, microseconds.
    pub(crate) latency_us_p99: u64,
    /// 99.9th percentile, microseconds.
    pub(crate) latency_us_p999: u64,
    /// The slowest, microseconds.
    pub(crate) latency_us_max: u64,
}

/// One interval's histogram, kept for the HdrHistogram interval log.
#[derive(Debug)]
pub(crate) struct Interval {
    /// Start, after the measured window began.
    pub(crate) start: Duration,
    /// Length.
    pub(crate) duration: Duration,
    /// Latencies (corrected in open loop; unacknowledged appends included), microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Appends acknowledged.
    pub(crate) records: u64,
    /// Their payload bytes.
    pub(crate) bytes: u64,
    /// Appends not acknowledged by the end of the run.
    pub(crate) unacknowledged: u64,
}

impl Interval {
    fn new(start: Duration, duration: Duration) -> Interval {
        Interval {
            start,
            duration,
            latency: report::latency_histogram(),
            records: 0,
            bytes: 0,
            unacknowledged: 0,
        }
    }

    /// Its line of the time series.
    pub(crate) fn stats(&self) -> IntervalStats {
        let duration_s = self.duration.as_secs_f64();
        let p = LatencyPercentiles::of(&self.latency);
        IntervalStats {
            start_s: self.start.as_secs_f64(),
            duration_s,
            records_per_s: self.records as f64 / duration_s,
            bytes_per_s: self.bytes as f64 / duration_s,
            unacknowledged: self.unacknowledged,
            latency_us_p50: p.p50,
            latency_us_p99: p.p99,
            latency_us_p999: p.p999,
            latency_us_max: p.max,
        }
    }
}

/// The length of the time series' intervals for a measured window of `window`: the longest
/// of 1 s, 500 ms, 250 ms and 100 ms that still cuts the window into at least
/// [`INTERVALS_MIN`] intervals (100 ms for windows under 2 s), so a short run still shows how
/// it went over time.
pub(crate) fn interval_for(window: Duration) -> Duration {
    [1_000, 500, 250]
        .into_iter()
        .map(Duration::from_millis)
        .find(|interval| window >= *interval * INTERVALS_MIN)
        .unwrap_or(Duration::from_millis(100))
}

/// What became of the appends a run meant to make in its measured window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Completion {
    /// Appends meant for the window: open loop, the sends the schedule had due in it; closed
    /// loop, the appends sent in it.
    pub(crate) intended: u64,
    /// Of those, acknowledged (durable), during the window or the drain after it.
    pub(crate) acknowledged: u64,
    /// Answered with an error (after the client's retries; `errors` has the kinds).
    pub(crate) failed: u64,
    /// Sent, and still unanswered when the drain ended.
    pub(crate) unanswered: u64,
    /// Never sent (open loop: the outstanding bound was full until the window ended).
    pub(crate) not_sent: u64,
    /// `acknowledged / intended` (1 when nothing was intended).
    pub(crate) acknowledged_share: f64,
    /// How long after the window the run waited for outstanding answers, seconds.
    pub(crate) drain_s: f64,
    /// The most it would have waited, seconds.
    pub(crate) drain_max_s: f64,
}

impl Completion {
    /// Appends meant for the window that were not acknowledged.
    pub(crate) fn unacknowledged(&self) -> u64 {
        self.failed + self.unanswered + self.not_sent
    }
}

/// What a run measured: every append meant for the measured window, whenever its answer came
/// (within the drain).
#[derive(Debug)]
pub(crate) struct LoadResult {
    /// The measured window.
    pub(crate) duration: Duration,
    /// Appends of the window that were acknowledged.
    pub(crate) records: u64,
    /// Their payload bytes.
    pub(crate) bytes: u64,
    /// Latencies of the window's appends, microseconds: from the intended send time in open
    /// loop (corrected), from the send in closed loop. An append that was not acknowledged
    /// (failed, unanswered, never sent) counts as the time from its intended send to the end
    /// of the run: a lower bound of how long its writer waited.
    pub(crate) latency: Histogram<u64>,
    /// Latencies of the acknowledged appends from their actual send, microseconds (the
    /// uncorrected view; the same as `latency` in closed loop when all were acknowledged).
    pub(crate) service_latency: Histogram<u64>,
    /// Failed appends by kind.
    pub(crate) errors: Errors,
    /// What became of the window's appends.
    pub(crate) completion: Completion,
    /// Open loop only: how the sends kept to the schedule.
    pub(crate) sends: Option<SendStats>,
    /// The time series, intervals of [`interval_for`] the window.
    pub(crate) intervals: Vec<Interval>,
    /// The acknowledged appends of the window whose LSN is a multiple of [`TRACE_EVERY`].
    pub(crate) samples: Vec<Sample>,
    /// What became of each append of the window, in the order the run learnt it (empty
    /// unless [`LoadSpec::outcomes`]).
    pub(crate) outcomes: Vec<Outcome>,
    /// When the run ended (the drain included), clock time: what an unacknowledged append's
    /// latency runs to.
    pub(crate) finished: Duration,
}

/// What became of one append of the measured window, clock times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// When it was meant to be sent (closed loop: when it was sent).
    pub(crate) intended: Duration,
    /// How it ended.
    pub(crate) end: End,
}

/// How an append of the window ended ([`Outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Acknowledged (durable) at this time.
    Acknowledged(Duration),
    /// Answered with an error of this kind (as counted in `errors`) at this time.
    Failed(Duration, &'static str),
    /// Sent, and unanswered when the run ended: its outcome is unknown.
    Unanswered,
    /// Never sent.
    NotSent,
}

impl LoadResult {
    /// The time series.
    pub(crate) fn time_series(&self) -> Vec<IntervalStats> {
        self.intervals.iter().map(Interval::stats).collect()
    }
}
/// SplitMix64: a small, fast, seedable generator (arrivals, sizes, payload bytes need
/// repeatability, not cryptographic quality).
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The intended send times of an open-loop run, from its start.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    arrivals: Arrivals,
    rate_per_s: f64,
    rng: SplitMix64,
    /// Sends scheduled so far.
    index: u64,
    /// The next intended time, nanoseconds after the start (fractional: no drift).
    next_ns: f64,
}

impl Schedule {
    /// The schedule of `rate_per_s` sends per second by `arrivals`; the first is due at the
    /// start.
    pub(crate) fn new(arrivals: Arrivals, rate_per_s: f64, seed: u64) -> Schedule {
        assert!(
            rate_per_s > 0.0 && rate_per_s.is_finite(),
            "rate {rate_per_s}"
        );
        Schedule {
            arrivals,
            rate_per_s,
            rng: SplitMix64::new(seed),
            index: 0,
            next_ns: 0.0,
        }
    }

    /// The next intended send time, after the start.
    pub(crate) fn peek(&self) -> Duration {
        Duration::from_nanos(self.next_ns.round() as u64)
    }

    /// Moves to the send after the one [`Schedule::peek`] shows.
    pub(crate) fn advance(&mut self) {
        self.index += 1;
        self.next_ns = match self.arrivals {
            // From the index, not by adding gaps: exact spacing, no accumulated rounding.
            Arrivals::Uniform => self.index as f64 * 1e9 / self.rate_per_s,
            // Exponential gap by inversion; 1 - u is in (0, 1], so the logarithm is finite.
            Arrivals::Poisson => {
                self.next_ns - (1.0 - self.rng.next_f64()).ln() * 1e9 / self.rate_per_s
            }
        };
    }
}

/// Builds payloads: pseudo-random bytes (they neither compress nor deduplicate) with the send
/// time in the first [`STAMP_BYTES`].
#[derive(Debug)]
struct Payloads {
    sizes: RecordSizes,
    rng: SplitMix64,
    /// Random bytes of twice the largest size; a payload is a window of it.
    pattern: Vec<u8>,
}

impl Payloads {
    fn new(sizes: RecordSizes, seed: u64) -> Payloads {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_F00D);
        let pattern = (0..sizes.max() * 2).map(|_| rng.next_u64() as u8).collect();
        Payloads {
            sizes,
            rng,
            pattern,
        }
    }

    fn next(&mut self, sent: Duration) -> Vec<u8> {
        let len = self.sizes.draw(&mut self.rng);
        let offset = (self.rng.next_u64() % (self.sizes.max() as u64 + 1)) as usize;
        let mut payload = self.pattern[offset..offset + len].to_vec();
        if len >= STAMP_BYTES {
            let us = u64::try_from(sent.as_micros()).unwrap_or(u64::MAX);
            payload[..STAMP_BYTES].copy_from_slice(&us.to_le_bytes());
        }
        payload
    }
}

/// The send time carried by `payload` (see [`STAMP_BYTES`]), if it is long enough.
pub(crate) fn stamp_of(payload: &[u8]) -> Option<Duration> {
    let bytes: [u8; STAMP_BYTES] = payload.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(Duration::from_micros(u64::from_le_bytes(bytes)))
}

/// One append's outcome, as its future yields it.
struct Done {
    /// Closed loop: the slot that sent it.
    slot: usize,
    /// The log's number.
    log: usize,
    /// Its place in [`Outstanding`].
    seq: u64,
    intended: Duration,
    sent: Duration,
    bytes: u64,
    result: Result<u64, TargetError>,
    at: Duration,
}

/// Of every [`TRACE_EVERY`]th append (by LSN, as the node picks the appends it traces), when
/// the run meant to send it, sent it and saw its acknowledgement, clock time: what a
/// per-append breakdown joins with the node's times for the same append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    /// The log's number (as [`Target::append`] takes it).
    pub(crate) log: usize,
    /// Its LSN.
    pub(crate) lsn: u64,
    pub(crate) intended: Duration,
    pub(crate) sent: Duration,
    pub(crate) acknowledged: Duration,
}

/// Appends whose LSN is a multiple of this are sampled: the node traces the same ones
/// (`/traces`, every append whose first LSN is a multiple of 16).
pub(crate) const TRACE_EVERY: u64 = 16;

/// The intended send times of the appends in flight, by send order: what the drain leaves
/// unanswered is read from here. Answers come roughly in send order, so this is a queue
/// whose answered front is dropped.
#[derive(Debug, Default)]
struct Outstanding {
    /// The send number of `waiting[0]`.
    base: u64,
    /// Intended send times; `None` once answered.
    waiting: VecDeque<Option<Duration>>,
}

impl Outstanding {
    /// Notes a send intended at `intended`; returns its number.
    fn sent(&mut self, intended: Duration) -> u64 {
        self.waiting.push_back(Some(intended));
        self.base + self.waiting.len() as u64 - 1
    }

    /// Send number `seq` was answered.
    fn answered(&mut self, seq: u64) {
        if let Some(slot) = self.waiting.get_mut((seq - self.base) as usize) {
            *slot = None;
        }
        while let Some(None) = self.waiting.front() {
            self.waiting.pop_front();
            self.base += 1;
        }
    }

    /// Intended send times of the sends still unanswered.
    fn unanswered(&self) -> impl Iterator<Item = Duration> + '_ {
        self.waiting.iter().flatten().copied()
    }
}

/// The measurements as they accumulate.
struct Recorder<'a> {
    measure_start: Duration,
    end: Duration,
    /// Length of the intervals.
    interval: Duration,
    result: LoadResult,
    /// Intervals shown to `on_interval` so far.
    shown: usize,
    /// Intended send times (after the window's start) of the window's appends that were not
    /// acknowledged: their latency is known only when the run ends.
    unacknowledged: Vec<Duration>,
    /// Whether to keep [`LoadResult::outcomes`].
    keep_outcomes: bool,
    on_interval: &'a mut dyn FnMut(&IntervalStats),
}

impl Recorder<'_> {
    fn new<'a>(
        spec: &LoadSpec,
        measure_start: Duration,
        on_interval: &'a mut dyn FnMut(&IntervalStats),
    ) -> Recorder<'a> {
        let interval = interval_for(spec.duration);
        let mut intervals = Vec::new();
        let mut start = Duration::ZERO;
        while start < spec.duration {
            intervals.push(Interval::new(start, interval.min(spec.duration - start)));
            start += interval;
        }
        Recorder {
            measure_start,
            end: measure_start + spec.duration,
            interval,
            result: LoadResult {
                duration: spec.duration,
                records: 0,
                bytes: 0,
                latency: report::latency_histogram(),
                service_latency: report::latency_histogram(),
                errors: Errors::new(),
                completion: Completion {
                    intended: 0,
                    acknowledged: 0,
                    failed: 0,
                    unanswered: 0,
                    not_sent: 0,
                    acknowledged_share: 1.0,
                    drain_s: 0.0,
                    drain_max_s: spec.drain.as_secs_f64(),
                },
                sends: None,
                intervals,
                samples: Vec::new(),
                outcomes: Vec::new(),
                finished: measure_start + spec.duration,
            },
            shown: 0,
            unacknowledged: Vec::new(),
            keep_outcomes: spec.outcomes,
            on_interval,
        }
    }

    /// Whether an append intended at `intended` (clock time) belongs to the window.
    fn in_window(&self, intended: Duration) -> bool {
        intended >= self.measure_start && intended < self.end
    }

    /// The interval of an append of the window intended at `intended` (clock time).
    fn interval_of(&mut self, intended: Duration) -> &mut Interval {
        let offset = intended - self.measure_start;
        let index = (offset.as_nanos() / self.interval.as_nanos()) as usize;
        let last = self.result.intervals.len() - 1;
        &mut self.result.intervals[index.min(last)]
    }

    /// When the next interval to show ends, clock time.
    fn next_shown_end(&self) -> Duration {
        self.result
            .intervals
            .get(self.shown)
            .map_or(self.end, |i| self.measure_start + i.start + i.duration)
    }

    /// Shows every interval that ended by `now` (with what it holds so far: answers still
    /// due to it come later).
    fn show_intervals(&mut self, now: Duration) {
        while self.shown < self.result.intervals.len() && now >= self.next_shown_end() {
            (self.on_interval)(&self.result.intervals[self.shown].stats());
            self.shown += 1;
        }
    }

    /// An append meant for the window at `intended` (clock time) was sent (closed loop: all
    /// its appends are counted here; open loop counts its schedule).
    fn intend(&mut self, intended: Duration) {
        if self.in_window(intended) {
            self.result.completion.intended += 1;
        }
    }

    /// Keeps what became of an append of the window, if asked to.
    fn outcome(&mut self, intended: Duration, end: End) {
        if self.keep_outcomes {
            self.result.outcomes.push(Outcome { intended, end });
        }
    }

    /// An append of the window intended at `intended` (clock time) was never sent.
    fn not_sent(&mut self, intended: Duration) {
        self.outcome(intended, End::NotSent);
        self.result.completion.intended += 1;
        self.result.completion.not_sent += 1;
        self.unacknowledged.push(intended - self.measure_start);
    }

    fn record(&mut self, done: &Done) -> Result<(), String> {
        if !self.in_window(done.intended) {
            return match &done.result {
                Err(TargetError::Fatal(reason)) => Err(reason.clone()),
                _ => Ok(()),
            };
        }
        match &done.result {
            Ok(lsn) => {
                if lsn.is_multiple_of(TRACE_EVERY) {
                    self.result.samples.push(Sample {
                        log: done.log,
                        lsn: *lsn,
                        intended: done.intended,
                        sent: done.sent,
                        acknowledged: done.at,
                    });
                }
                self.outcome(done.intended, End::Acknowledged(done.at));
                let latency = done.at - done.intended;
                report::record_latency(&mut self.result.latency, latency);
                report::record_latency(&mut self.result.service_latency, done.at - done.sent);
                self.result.records += 1;
                self.result.bytes += done.bytes;
                self.result.completion.acknowledged += 1;
                let interval = self.interval_of(done.intended);
                report::record_latency(&mut interval.latency, latency);
                interval.records += 1;
                interval.bytes += done.bytes;
            }
            Err(TargetError::Counted(kind)) => {
                self.outcome(done.intended, End::Failed(done.at, kind));
                *self.result.errors.entry(kind).or_default() += 1;
                self.result.completion.failed += 1;
                self.unacknowledged.push(done.intended - self.measure_start);
            }
            Err(TargetError::Fatal(reason)) => return Err(reason.clone()),
        }
        Ok(())
    }

    /// Ends the run at `finished` (clock time, at or after the window's end), with the sends
    /// of `outstanding` unanswered: the window's unacknowledged appends get their latency
    /// (until `finished`), the last intervals are shown.
    fn finish(mut self, finished: Duration, outstanding: &Outstanding) -> LoadResult {
        let unanswered: Vec<Duration> = outstanding
            .unanswered()
            .filter(|intended| self.in_window(*intended))
            .collect();
        for intended in unanswered {
            self.outcome(intended, End::Unanswered);
            self.result.completion.unanswered += 1;
            self.unacknowledged.push(intended - self.measure_start);
        }
        for offset in std::mem::take(&mut self.unacknowledged) {
            let intended = self.measure_start + offset;
            let waited = finished - intended;
            report::record_latency(&mut self.result.latency, waited);
            let interval = self.interval_of(intended);
            report::record_latency(&mut interval.latency, waited);
            interval.unacknowledged += 1;
        }
        let c = &mut self.result.completion;
        c.drain_s = (finished - self.end).as_secs_f64();
        if c.intended > 0 {
            c.acknowledged_share = c.acknowledged as f64 / c.intended as f64;
        }
        self.show_intervals(Duration::MAX);
        self.result.finished = finished;
        self.result
    }
}

/// Runs `spec` against `target` from clock time `start`: warm-up, then the measured window,
/// then the drain: up to `spec.drain` more for the answers of appends still outstanding, so
/// that every append meant for the window is judged on its own answer (a slow answer is a
/// latency, not a missing append). `on_interval` sees each interval of the time series when it
/// ends (the progress line).
pub(crate) async fn run<C: Clock, T: Target>(
    clock: &C,
    target: &T,
    spec: &LoadSpec,
    start: Duration,
    on_interval: &mut dyn FnMut(&IntervalStats),
) -> Result<LoadResult, String> {
    assert!(spec.logs > 0, "at least one log");
    assert!(!spec.duration.is_zero(), "a measured window");
    let measure_start = start + spec.warmup;
    let end = measure_start + spec.duration;
    let mut recorder = Recorder::new(spec, measure_start, on_interval);
    let mut payloads = Payloads::new(spec.record_sizes, spec.seed);
    let mut in_flight = FuturesUnordered::new();
    let mut outstanding = Outstanding::default();
    let send = |slot: usize, log: usize, intended: Duration, payload: Vec<u8>, seq: u64| {
        let sent = clock.now();
        let bytes = payload.len() as u64;
        async move {
            let result = target.append(log, payload).await;
            Done {
                slot,
                log,
                seq,
                intended,
                sent,
                bytes,
                result,
                at: clock.now(),
            }
        }
    };
    let mut send_stats = None;
    match spec.loop_mode {
        LoopMode::Closed { concurrency } => {
            for slot in 0..concurrency as usize {
                let now = clock.now();
                recorder.intend(now);
                let seq = outstanding.sent(now);
                in_flight.push(send(slot, slot % spec.logs, now, payloads.next(now), seq));
            }
            loop {
                let now = clock.now();
                recorder.show_intervals(now);
                if now >= end {
                    break;
                }
                let wake = end.min(recorder.next_shown_end());
                tokio::select! {
                    biased;
                    Some(done) = in_flight.next() => {
                        outstanding.answered(done.seq);
                        recorder.record(&done)?;
                        let now = clock.now();
                        if now < end {
                            let slot = done.slot;
                            recorder.intend(now);
                            let seq = outstanding.sent(now);
                            in_flight.push(send(slot, slot % spec.logs, now, payloads.next(now), seq));
                        }
                    }
                    () = clock.sleep_until(wake) => {}
                }
            }
        }
        LoopMode::Open {
            rate_per_s,
            arrivals,
            outstanding_max,
        } => {
            assert!(outstanding_max > 0, "room for one append");
            let mut schedule = Schedule::new(arrivals, rate_per_s, spec.seed);
            let mut lateness = report::latency_histogram();
            let mut stats = SendStats {
                intended: 0,
                sent: 0,
                late: 0,
                not_sent: 0,
                late_after_us: u64::try_from(spec.late_after.as_micros()).unwrap_or(u64::MAX),
                lateness_us: LatencyPercentiles::default(),
                held_by_bound: 0,
                own_lateness_us: LatencyPercentiles::default(),
            };
            let mut own_lateness = report::latency_histogram();
            // Whether the outstanding bound was full when the loop last waited: the late sends
            // it sends now waited for a free slot.
            let mut bound_was_full = false;
            let mut sends: u64 = 0;
            loop {
                let now = clock.now();
                recorder.show_intervals(now);
                // Sends due before the end go out even when the loop wakes at or after it:
                // only the outstanding bound keeps a send back.
                let mut due = start + schedule.peek();
                while due <= now && due < end && in_flight.len() < outstanding_max {
                    let log = (sends % spec.logs as u64) as usize;
                    let seq = outstanding.sent(due);
                    in_flight.push(send(0, log, due, payloads.next(now), seq));
                    sends += 1;
                    if due >= measure_start {
                        recorder.intend(due);
                        stats.intended += 1;
                        stats.sent += 1;
                        let late_by = now - due;
                        // Zero is a lateness like any other (record_latency rounds up to 1).
                        let late_us = u64::try_from(late_by.as_micros()).unwrap_or(u64::MAX);
                        lateness.saturating_record(late_us);
                        // Held: late, and the loop could not send it before now for want of a
                        // slot.
                        if bound_was_full && due < now {
                            stats.held_by_bound += 1;
                        } else {
                            own_lateness.saturating_record(late_us);
                        }
                        if late_by > spec.late_after {
                            stats.late += 1;
                        }
                    }
                    schedule.advance();
                    due = start + schedule.peek();
                }
                bound_was_full = in_flight.len() >= outstanding_max;
                if now >= end {
                    break;
                }
                let blocked = in_flight.len() >= outstanding_max;
                let mut wake = end.min(recorder.next_shown_end());
                if !blocked {
                    wake = wake.min(due);
                }
                tokio::select! {
                    biased;
                    Some(done) = in_flight.next() => {
                        outstanding.answered(done.seq);
                        recorder.record(&done)?;
                    }
                    () = clock.sleep_until(wake) => {}
                }
            }
            // Sends due in the window that the bound kept back to the end.
            let mut due = start + schedule.peek();
            while due < end {
                if due >= measure_start {
                    recorder.not_sent(due);
                    stats.intended += 1;
                    stats.not_sent += 1;
                }
                schedule.advance();
                due = start + schedule.peek();
            }
            stats.lateness_us = LatencyPercentiles::of(&lateness);
            stats.own_lateness_us = LatencyPercentiles::of(&own_lateness);
            send_stats = Some(stats);
        }
    }
    // The drain: answers of appends still outstanding, up to its bound.
    let drain_end = end + spec.drain;
    while !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(done) = in_flight.next() => {
                outstanding.answered(done.seq);
                recorder.record(&done)?;
            }
            () = clock.sleep_until(drain_end) => break,
        }
    }
    let finished = clock.now().max(end);
    let mut result = recorder.finish(finished, &outstanding);
    result.sends = send_stats;
    Ok(result)
}
#[cfg(test)]
pub(crate) mod sim {
    //! A simulated clock and a one-future executor that moves it: time jumps to the next
    //! sleeper's deadline whenever the future under test cannot make progress.

    use std::cell::{Cell, RefCell};
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use super::Clock;

    /// Simulated time, moved only by [`SimClock::block_on`].
    #[derive(Debug, Default)]
    pub(crate) struct SimClock {
        now: Cell<Duration>,
        /// Sleepers' deadlines and wakers.
        sleepers: RefCell<Vec<(Duration, Waker)>>,
    }

    impl Clock for SimClock {
        fn now(&self) -> Duration {
            self.now.get()
        }

        fn sleep_until(&self, at: Duration) -> impl Future<Output = ()> {
            std::future::poll_fn(move |cx| {
                if self.now.get() >= at {
                    Poll::Ready(())
                } else {
                    self.sleepers.borrow_mut().push((at, cx.waker().clone()));
                    Poll::Pending
                }
            })
        }
    }

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    impl SimClock {
        /// Runs `future` to completion, advancing time to the earliest deadline whenever it
        /// waits on nothing but sleepers.
        pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
            let flag = Arc::new(Flag(AtomicBool::new(false)));
            let waker = Waker::from(Arc::clone(&flag));
            let mut cx = Context::from_waker(&waker);
            let mut future = pin!(future);
            loop {
                if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                    return output;
                }
                if flag.0.swap(false, Ordering::AcqRel) {
                    continue;
                }
                let mut sleepers = self.sleepers.borrow_mut();
                let next = sleepers
                    .iter()
                    .map(|(at, _)| *at)
                    .min()
                    .expect("the future waits on nothing: it would never complete");
                self.now.set(next.max(self.now.get()));
                for (_, waker) in sleepers.extract_if(.., |(at, _)| *at <= next) {
                    waker.wake();
                }
                flag.0.swap(false, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::sim::SimClock;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One server, first come first served: each append takes `service`, except append number
    /// `stall_index` (0-based), which takes `stall`.
    struct FakeTarget<'a> {
        clock: &'a SimClock,
        service: Duration,
        stall_index: u64,
        stall: Duration,
        appends: Cell<u64>,
        busy_until: Cell<Duration>,
    }

    impl<'a> FakeTarget<'a> {
        fn new(clock: &'a SimClock, service: Duration, stall_index: u64, stall: Duration) -> Self {
            FakeTarget {
                clock,
                service,
                stall_index,
                stall,
                appends: Cell::new(0),
                busy_until: Cell::new(Duration::ZERO),
            }
        }
    }

    impl Target for FakeTarget<'_> {
        async fn append(&self, _log: usize, _payload: Vec<u8>) -> Result<u64, TargetError> {
            let index = self.appends.replace(self.appends.get() + 1);
            let service = if index == self.stall_index {
                self.stall
            } else {
                self.service
            };
            let done = self.busy_until.get().max(self.clock.now()) + service;
            self.busy_until.set(done);
            self.clock.sleep_until(done).await;
            Ok(index)
        }
    }

    fn spec(loop_mode: LoopMode, duration: Duration) -> LoadSpec {
        LoadSpec {
            loop_mode,
            logs: 1,
            record_sizes: RecordSizes::Fixed(128),
            warmup: Duration::ZERO,
            duration,
            drain: Duration::from_secs(1),
            late_after: Duration::ZERO,
            seed: 7,
            outcomes: true,
        }
    }

    fn run_sim(target: &FakeTarget<'_>, clock: &SimClock, spec: &LoadSpec) -> LoadResult {
        run_sim_any(target, clock, spec)
    }

    fn run_sim_any(target: &impl Target, clock: &SimClock, spec: &LoadSpec) -> LoadResult {
        let mut seen = 0;
        let result = clock
            .block_on(run(clock, target, spec, Duration::ZERO, &mut |_| seen += 1))
            .expect("the run succeeds");
        assert_eq!(seen, result.intervals.len());
        result
    }

    #[test]
    fn open_loop_latency_carries_a_stall_that_closed_loop_hides() {
        // 10 s at 500/s; each append takes 1 ms, append 2000 takes 100 ms.
        let duration = Duration::from_secs(10);
        let clock = SimClock::default();
        let target = FakeTarget::new(&clock, MS, 2_000, 100 * MS);
        let open = run_sim(
            &target,
            &clock,
            &spec(
                LoopMode::Open {
                    rate_per_s: 500.0,
                    arrivals: Arrivals::Uniform,
                    outstanding_max: 1_000,
                },
                duration,
            ),
        );
        let open_p = LatencyPercentiles::of(&open.latency);
        // The ~99 appends queued behind the stall wait 100, 99, 98 ... ms: 2% of 5000.
        assert!(open_p.p99 >= 40_000, "open p99 {open_p:?}");
        assert!(open_p.max >= 100_000 && open_p.max <= 100_100, "{open_p:?}");
        assert!(open_p.p50 <= 1_001, "{open_p:?}");
        let sends = open.sends.as_ref().expect("open loop counts sends");
        assert_eq!(sends.intended, 5_000);
        assert_eq!((sends.sent, sends.late, sends.not_sent), (5_000, 0, 0));
        assert_eq!(open.records, 5_000);
        assert_eq!(open.completion.acknowledged_share, 1.0);
        // The stall is in the time series too: 500 ms intervals, the ninth (4.0 to 4.5 s)
        // holds append 2000 (intended at 4 s).
        let series = open.time_series();
        assert_eq!(series.len(), 20);
        assert!(series[8].latency_us_max >= 100_000, "{:?}", series[8]);
        assert!(series[0].latency_us_max <= 1_001, "{:?}", series[0]);

        // Closed loop, one slot, the same target: the stall is one sample among thousands.
        let clock = SimClock::default();
        let target = FakeTarget::new(&clock, MS, 2_000, 100 * MS);
        let closed = run_sim(
            &target,
            &clock,
            &spec(LoopMode::Closed { concurrency: 1 }, duration),
        );
        let closed_p = LatencyPercentiles::of(&closed.latency);
        assert!(closed_p.p99 <= 1_001, "closed p99 {closed_p:?}");
        assert!(closed_p.max >= 100_000, "{closed_p:?}");
        assert!(closed.sends.is_none());
        // 10,000 ms of 1 ms appends, less the 99 ms the stall adds; the last one sent in the
        // window is acknowledged in the drain, and counts.
        assert_eq!(closed.records, 10_000 - 99);
        assert_eq!(closed.completion.intended, 10_000 - 99);
    }

    #[test]
    fn sends_held_back_by_the_bound_are_late_by_exactly_the_wait() {
        // 1000/s from 0 ms, one outstanding, appends take 0.5 ms, append 3 (sent at 3 ms)
        // takes 10.5 ms: sends 4..=22 wait for it and go out 9.5, 9, ... 0.5 ms late; send 23
        // is on time again.
        let clock = SimClock::default();
        let target = FakeTarget::new(&clock, MS / 2, 3, 21 * MS / 2);
        let result = run_sim(
            &target,
            &clock,
            &spec(
                LoopMode::Open {
                    rate_per_s: 1_000.0,
                    arrivals: Arrivals::Uniform,
                    outstanding_max: 1,
                },
                Duration::from_secs(1),
            ),
        );
        let sends = result.sends.as_ref().expect("open loop");
        assert_eq!(sends.intended, 1_000);
        assert_eq!(sends.late, 19);
        assert_eq!(sends.not_sent, 0);
        // Sends 4..=22 were due while append 3 filled the bound: the target's lateness, not
        // the generator's, which was nil.
        assert_eq!(sends.held_by_bound, 19);
        assert_eq!(sends.own_lateness_us.max, 0, "{sends:?}");
        // Within the histogram's precision (3 significant digits).
        assert!(
            (9_500..=9_510).contains(&sends.lateness_us.max),
            "{sends:?}"
        );
        // Corrected latency counts the wait; the uncorrected view does not.
        assert!(LatencyPercentiles::of(&result.latency).max >= 10_000);
        assert!(LatencyPercentiles::of(&result.service_latency).p99 <= 500);
    }

    #[test]
    fn sends_the_bound_kept_back_to_the_end_are_not_sent() {
        // 1000/s for 1 s from 0 ms, one outstanding, append 899 (sent at 899 ms) stalls for
        // 10 s: the 100 sends due after it (900 .. 999 ms) never go out.
        let clock = SimClock::default();
        let target = FakeTarget::new(&clock, MS / 2, 899, Duration::from_secs(10));
        let result = run_sim(
            &target,
            &clock,
            &spec(
                LoopMode::Open {
                    rate_per_s: 1_000.0,
                    arrivals: Arrivals::Uniform,
                    outstanding_max: 1,
                },
                Duration::from_secs(1),
            ),
        );
        let sends = result.sends.as_ref().expect("open loop");
        assert_eq!(sends.intended, 1_000);
        assert_eq!(sends.sent, 900);
        assert_eq!(sends.not_sent, 100);
        assert_eq!(sends.late, 0);
        assert_eq!(result.records, 899);
        // Append 899 is still unanswered when the 1 s drain ends, at 2 s: it and the 100
        // never sent count at their wait until then.
        let c = &result.completion;
        assert_eq!((c.intended, c.acknowledged), (1_000, 899));
        assert_eq!((c.failed, c.unanswered, c.not_sent), (0, 1, 100));
        assert_eq!(c.drain_s, 1.0);
        // Every append of the window has its outcome, ended as the counts say.
        let ended = |f: fn(&End) -> bool| result.outcomes.iter().filter(|o| f(&o.end)).count();
        assert_eq!(result.outcomes.len(), 1_000);
        assert_eq!(ended(|e| matches!(e, End::Acknowledged(_))), 899);
        assert_eq!(ended(|e| matches!(e, End::Unanswered)), 1);
        assert_eq!(ended(|e| matches!(e, End::NotSent)), 100);
        assert_eq!(result.finished, Duration::from_secs(2));
        assert_eq!(result.latency.len(), 1_000);
        let p = LatencyPercentiles::of(&result.latency);
        // The last one never sent was due at 999 ms: it waited 1,001 ms; append 899 1,101 ms.
        assert!((1_100_000..=1_102_000).contains(&p.max), "{p:?}");
        assert!(p.p99 >= 1_001_000, "{p:?}");
        let last = result.intervals.last().expect("intervals");
        assert_eq!(last.unacknowledged, 100, "900 .. 999 ms");
    }

    /// Every append takes `delay`, whatever else is in flight (many servers), and fails with
    /// `failing` if it is sent inside `failing_from..failing_until`.
    struct DelayTarget<'a> {
        clock: &'a SimClock,
        delay: Duration,
        failing: Option<(Duration, Duration, &'static str)>,
        /// LSNs handed out so far.
        lsns: Cell<u64>,
    }

    impl Target for DelayTarget<'_> {
        async fn append(&self, _log: usize, _payload: Vec<u8>) -> Result<u64, TargetError> {
            let now = self.clock.now();
            self.clock.sleep_until(now + self.delay).await;
            match self.failing {
                Some((from, until, kind)) if now >= from && now < until => {
                    Err(TargetError::Counted(kind))
                }
                _ => Ok(self.lsns.replace(self.lsns.get() + 1)),
            }
        }
    }

    fn uniform(rate_per_s: f64, duration: Duration) -> LoadSpec {
        spec(
            LoopMode::Open {
                rate_per_s,
                arrivals: Arrivals::Uniform,
                outstanding_max: 1_000,
            },
            duration,
        )
    }

    #[test]
    fn answers_that_land_after_the_window_count_for_it() {
        // 200/s for 0.5 s, every append answered after 30 ms: the answers of the last five
        // (sent at 475 .. 495 ms) land after the window. Each is still a 30 ms latency of an
        // acknowledged append.
        let clock = SimClock::default();
        let target = DelayTarget {
            clock: &clock,
            delay: 30 * MS,
            failing: None,
            lsns: Cell::new(0),
        };
        let result = run_sim_any(&target, &clock, &uniform(200.0, Duration::from_millis(500)));
        let c = &result.completion;
        assert_eq!((c.intended, c.acknowledged), (100, 100));
        assert_eq!(c.unacknowledged(), 0);
        assert_eq!(c.acknowledged_share, 1.0);
        assert_eq!(
            c.drain_s, 0.025,
            "the drain ends with the last answer, at 525 ms"
        );
        assert_eq!(result.records, 100);
        // LSNs 0, 16, ... 96 are sampled, with their three times.
        let lsns: Vec<u64> = result.samples.iter().map(|s| s.lsn).collect();
        assert_eq!(lsns, [0, 16, 32, 48, 64, 80, 96]);
        let last = result.samples[6];
        assert_eq!(
            last.intended,
            Duration::from_millis(480),
            "LSN 96 is append 96"
        );
        assert_eq!(
            (last.sent, last.acknowledged),
            (last.intended, last.intended + 30 * MS)
        );
        let p = LatencyPercentiles::of(&result.latency);
        assert_eq!(p.min, 30_000);
        assert!(result.latency.equivalent(p.max, 30_000), "{p:?}");
        // 100 ms intervals, 20 appends each, whenever they were answered.
        let series = result.time_series();
        assert_eq!(series.len(), 5);
        assert!(
            series.iter().all(|i| i.records_per_s == 200.0),
            "{series:?}"
        );
    }

    #[test]
    fn failed_appends_count_in_the_percentiles_until_the_run_ends() {
        // 1000/s for 1 s, 1 ms each; those sent from 500 ms on fail: half the window.
        let clock = SimClock::default();
        let target = DelayTarget {
            clock: &clock,
            delay: MS,
            failing: Some((Duration::from_millis(500), Duration::MAX, "unavailable")),
            lsns: Cell::new(0),
        };
        let result = run_sim_any(&target, &clock, &uniform(1_000.0, Duration::from_secs(1)));
        let c = &result.completion;
        assert_eq!((c.intended, c.acknowledged, c.failed), (1_000, 500, 500));
        assert_eq!(c.acknowledged_share, 0.5);
        assert_eq!(result.errors.get("unavailable"), Some(&500));
        assert_eq!(result.records, 500);
        // The run ends with the last answer, at 1,000 ms: the failed ones waited 1 to
        // 500 ms, and p99 is among them.
        let p = LatencyPercentiles::of(&result.latency);
        assert_eq!(result.latency.len(), 1_000);
        assert_eq!(p.p50, 1_000, "the acknowledged half");
        assert!((490_000..=491_000).contains(&p.p99), "{p:?}");
        // The uncorrected view holds only acknowledged appends.
        assert_eq!(result.service_latency.len(), 500);
        let series = result.time_series();
        assert_eq!(series.len(), 10);
        assert_eq!(series[4].unacknowledged, 0);
        assert_eq!(series[5].unacknowledged, 100);
    }

    #[test]
    fn uniform_arrivals_are_exactly_spaced() {
        let mut schedule = Schedule::new(Arrivals::Uniform, 1_000.0, 1);
        for i in 0..10_000u64 {
            assert_eq!(schedule.peek(), Duration::from_micros(1_000 * i));
            schedule.advance();
        }
        let mut schedule = Schedule::new(Arrivals::Uniform, 3.0, 1);
        schedule.advance();
        assert_eq!(schedule.peek(), Duration::from_nanos(333_333_333));
        schedule.advance();
        assert_eq!(schedule.peek(), Duration::from_nanos(666_666_667));
        schedule.advance();
        assert_eq!(schedule.peek(), Duration::from_secs(1));
    }

    #[test]
    fn poisson_arrivals_have_the_asked_mean_rate() {
        let rate = 20_000.0;
        let mut schedule = Schedule::new(Arrivals::Poisson, rate, 42);
        let n = 200_000;
        let mut gaps_ns = Vec::with_capacity(n);
        let mut last = Duration::ZERO;
        for _ in 0..n {
            let t = schedule.peek();
            assert!(t >= last, "arrivals go forward");
            gaps_ns.push((t - last).as_nanos() as f64);
            last = t;
            schedule.advance();
        }
        let achieved = n as f64 / last.as_secs_f64();
        assert!((achieved / rate - 1.0).abs() < 0.01, "rate {achieved}");
        // Exponential gaps: the standard deviation equals the mean.
        let mean = gaps_ns.iter().sum::<f64>() / n as f64;
        let var = gaps_ns.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.02,
            "cv {}",
            var.sqrt() / mean
        );
        // Same seed, same schedule.
        let mut again = Schedule::new(Arrivals::Poisson, rate, 42);
        let mut other = Schedule::new(Arrivals::Poisson, rate, 43);
        again.advance();
        other.advance();
        let mut first = Schedule::new(Arrivals::Poisson, rate, 42);
        first.advance();
        assert_eq!(again.peek(), first.peek());
        assert_ne!(again.peek(), other.peek());
    }

    #[test]
    fn record_sizes_parse_and_draw_in_range() {
        assert_eq!(parse_record_sizes("128"), Ok(RecordSizes::Fixed(128)));
        let range = parse_record_sizes("64..4096").unwrap();
        assert_eq!(range, RecordSizes::Uniform { min: 64, max: 4096 });
        assert_eq!(range.to_string(), "64..4096");
        assert!(parse_record_sizes("10..10").is_err());
        assert!(parse_record_sizes("big").is_err());
        assert_eq!(
            serde_json::to_string(&RecordSizes::Fixed(128)).unwrap(),
            "128"
        );
        assert_eq!(serde_json::to_string(&range).unwrap(), "\"64..4096\"");
        let mut payloads = Payloads::new(range, 3);
        let mut seen = (usize::MAX, 0);
        for i in 0..10_000u64 {
            let p = payloads.next(Duration::from_micros(i));
            assert!((64..=4096).contains(&p.len()));
            assert_eq!(stamp_of(&p), Some(Duration::from_micros(i)));
            seen = (seen.0.min(p.len()), seen.1.max(p.len()));
        }
        assert!(seen.0 < 100 && seen.1 > 4000, "{seen:?}");
        let mut small = Payloads::new(RecordSizes::Fixed(4), 3);
        assert_eq!(stamp_of(&small.next(Duration::from_secs(1))), None);
    }
}
