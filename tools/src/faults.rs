//! Fault drills of `chainlog-bench append --dev`: scripted faults applied to the dev cluster
//! while the load runs, and what each did to the appends.
//!
//! A fault is `kill:ROLE@T` (SIGKILL), `stop:ROLE@T/D` (SIGSTOP, then SIGCONT `D` later) or
//! `restart@T` (start again every member an earlier fault killed). `ROLE` is `head`, `middle`,
//! `tail` (of the run's first log, in the cluster map fetched from the controller with
//! GET_MAP at the moment of the fault: after a failover the head is another node) or
//! `controller`. `T` counts from the start of the measured window (after the warm-up); the
//! report's times count from there too.
//!
//! **What a fault did** is read from what became of every append of the window
//! ([`crate::load::Outcome`]), with the same conventions as the rest of the report (latency
//! from the intended send time; an unacknowledged append waits until the run ends):
//!
//! - *Unavailability*: the longest stretch without an acknowledgement that starts at the fault
//!   or within [`OUTAGE_START_GRACE`] after it, up to the next fault (the fault's time counts
//!   as the stretch's start), measured from the fault. The
//!   acknowledgement that ends it is the *first ack after* the fault (the outage's end).
//!   Without any acknowledgement after the fault, the fault is not recovered from and its
//!   unavailability lasts until the run ended: a lower bound.
//! - *Before*: the appends meant from the end of the previous fault's *after* window (or the
//!   window's start; if that is not before the fault, the previous outage's end) up to the
//!   fault and answered before it.
//! - *During*: the appends meant before the outage's end that were still outstanding at the
//!   fault or meant after it: the ones the fault could touch. Its counts say how many were
//!   acknowledged, failed (an error: not appended), indefinite (a lost connection or a
//!   timeout: appended or not), unanswered at the end of the run (indefinite too) or never
//!   sent.
//! - *After*: the appends meant in the [`AFTER`] following the outage's end.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use chainlog::dev::Member;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{End, MonotonicClock, Outcome};
use crate::report::{self, LatencyPercentiles};
use crate::stages::{self, PhaseTime, Scrape};
use crate::target::DevGuard;

/// The window after an outage's end whose latency says whether the log is back to normal.
pub(crate) const AFTER: Duration = Duration::from_secs(2);
/// How soon after a fault its outage starts at the latest: the acknowledgements of appends
/// already committed at the fault may still arrive for a moment, and a stretch without any
/// that starts later (a disk stall seconds on) is not the fault's doing.
const OUTAGE_START_GRACE: Duration = Duration::from_millis(100);
/// How long reading the cluster map at a fault may take.
const MAP_TIMEOUT: Duration = Duration::from_secs(1);

/// A chain member named by its place in the first log's chain, or the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Head,
    Middle,
    Tail,
    Controller,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Middle => "middle",
            Role::Tail => "tail",
            Role::Controller => "controller",
        }
    }
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// SIGKILL the member.
    Kill(Role),
    /// SIGSTOP the member, SIGCONT it this long after.
    Stop(Role, Duration),
    /// Start again the members earlier faults killed.
    Restart,
}

/// One `--fault`: an action at a time after the measured window's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) action: Action,
    pub(crate) at: Duration,
    /// As given on the command line.
    pub(crate) text: String,
}

impl Serialize for Fault {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl Fault {
    /// The role it needs in the cluster, if any.
    pub(crate) fn role(&self) -> Option<Role> {
        match self.action {
            Action::Kill(role) | Action::Stop(role, _) => Some(role),
            Action::Restart => None,
        }
    }
}

/// Parses `kill:ROLE@T`, `stop:ROLE@T/D` or `restart@T` (times: `5s`, `500ms`, or seconds).
pub(crate) fn parse_fault(s: &str) -> Result<Fault, String> {
    let bad = |why: &str| {
        format!(
            "{s:?}: {why} (kill:ROLE@T, stop:ROLE@T/D or restart@T; ROLE head, middle, tail \
             or controller; times like 5s, 500ms)"
        )
    };
    let (what, when) = s.split_once('@').ok_or_else(|| bad("no @TIME"))?;
    let (at, pause) = match when.split_once('/') {
        Some((at, pause)) => (
            at,
            Some(parse_time(pause).ok_or_else(|| bad("bad duration"))?),
        ),
        None => (when, None),
    };
    let at = parse_time(at).ok_or_else(|| bad("bad time"))?;
    let role = |name: &str| match name {
        "head" => Ok(Role::Head),
        "middle" => Ok(Role::Middle),
        "tail" => Ok(Role::Tail),
        "controller" => Ok(Role::Controller),
        _ => Err(bad("unknown role")),
    };
    let action = match (what.split_once(':'), pause) {
        (Some(("kill", r)), None) => Action::Kill(role(r)?),
        (Some(("stop", r)), Some(pause)) if !pause.is_zero() => Action::Stop(role(r)?, pause),
        (Some(("stop", _)), _) => return Err(bad("stop needs a duration above 0: /D")),
        (None, None) if what == "restart" => Action::Restart,
        _ => return Err(bad("unknown fault")),
    };
    Ok(Fault {
        action,
        at,
        text: s.to_string(),
    })
}

/// `5s`, `2.5s`, `500ms` or `5` (seconds).
fn parse_time(s: &str) -> Option<Duration> {
    let (number, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    let seconds = number.parse::<f64>().ok()? * scale;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// A fault as it was applied.
#[derive(Clone, Debug)]
pub(crate) struct Applied {
    pub(crate) fault: Fault,
    /// When it was applied, clock time (`None`: it could not be, see `error`).
    pub(crate) at: Option<Duration>,
    /// Whom it hit: `node 2 (head of bench-0, chain 2 -> 3 -> 4)`, `the controller`, ...
    pub(crate) target: String,
    /// Why it was not applied.
    pub(crate) error: Option<String>,
    /// A stop: when the member was continued; a restart: when the members served again.
    pub(crate) resumed: Option<Duration>,
    /// The controller's metrics just before it was applied (`None`: not read).
    pub(crate) controller_metrics: Option<Scrape>,
}

/// One step of the drill.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Apply fault number `i`.
    Apply(usize),
    /// Continue the member fault number `i` stopped.
    Resume(usize),
}

/// Where a drill acts.
#[derive(Debug)]
pub(crate) struct Drill<'a> {
    pub(crate) faults: &'a [Fault],
    pub(crate) cluster: &'a DevGuard,
    /// The controller's address (the map is read from it).
    pub(crate) controller: SocketAddr,
    /// The log whose chain names the roles.
    pub(crate) log: &'a str,
}

impl Drill<'_> {
    /// Applies the faults at their times after `measure_start` (clock time of `clock`), in time
    /// order, one at a time (a restart holds back the faults after it until it is done).
    pub(crate) async fn run(&self, clock: MonotonicClock, measure_start: Duration) -> Vec<Applied> {
        let mut steps: Vec<(Duration, Step)> = Vec::new();
        for (i, fault) in self.faults.iter().enumerate() {
            steps.push((fault.at, Step::Apply(i)));
            if let Action::Stop(_, pause) = fault.action {
                steps.push((fault.at + pause, Step::Resume(i)));
            }
        }
        // Stable: faults at the same time go in command-line order.
        steps.sort_by_key(|(at, _)| *at);
        let mut applied: Vec<Applied> = self
            .faults
            .iter()
            .map(|fault| Applied {
                fault: fault.clone(),
                at: None,
                target: String::new(),
                error: None,
                resumed: None,
                controller_metrics: None,
            })
            .collect();
        // Whom each applied fault hit.
        let mut hit: Vec<Option<Member>> = vec![None; self.faults.len()];
        for (at, step) in steps {
            let due = measure_start + at;
            tokio::time::sleep(due.saturating_sub(clock.now())).await;
            let mut slot = self.cluster.cluster().await;
            let Some(cluster) = slot.as_mut() else {
                break;
            };
            match step {
                Step::Apply(i) => {
                    let fault = &self.faults[i];
                    let a = &mut applied[i];
                    a.controller_metrics = scrape(cluster.controller_metrics()).await;
                    match fault.action {
                        Action::Kill(role) | Action::Stop(role, _) => {
                            let signal = match fault.action {
                                Action::Kill(_) => libc::SIGKILL,
                                _ => libc::SIGSTOP,
                            };
                            match self.whom(role).await {
                                Ok((member, target)) => {
                                    a.target = target;
                                    if cluster.signal(member, signal) {
                                        a.at = Some(clock.now());
                                        hit[i] = Some(member);
                                    } else {
                                        a.error = Some(format!("{member} is not running"));
                                    }
                                }
                                Err(e) => a.error = Some(e),
                            }
                        }
                        Action::Restart => {
                            // Killed by the faults applied so far (in time order), not yet
                            // restarted.
                            let killed: Vec<Member> = (0..self.faults.len())
                                .filter(|&j| matches!(self.faults[j].action, Action::Kill(_)))
                                .filter_map(|j| hit[j].take())
                                .collect();
                            let names: Vec<String> =
                                killed.iter().map(ToString::to_string).collect();
                            a.target = if names.is_empty() {
                                "nothing (no member killed before it)".into()
                            } else {
                                names.join(", ")
                            };
                            a.at = Some(clock.now());
                            let mut errors = Vec::new();
                            for member in killed {
                                if let Err(e) = cluster.restart(member).await {
                                    errors.push(format!("{member}: {e}"));
                                }
                            }
                            a.resumed = Some(clock.now());
                            if !errors.is_empty() {
                                a.error = Some(errors.join("; "));
                            }
                        }
                    }
                }
                Step::Resume(i) => {
                    if let Some(member) = hit[i] {
                        cluster.signal(member, libc::SIGCONT);
                        applied[i].resumed = Some(clock.now());
                    }
                }
            }
        }
        applied
    }

    /// The controller's metrics now (`None`: the cluster has none, or they could not be
    /// read: the controller is down).
    pub(crate) async fn controller_metrics(&self) -> Option<Scrape> {
        let addr = self.cluster.cluster().await.as_ref()?.controller_metrics();
        scrape(addr).await
    }

    /// The member that has `role` now, and a description of it.
    async fn whom(&self, role: Role) -> Result<(Member, String), String> {
        if role == Role::Controller {
            return Ok((Member::Controller, "the controller".into()));
        }
        let controller = self.controller;
        let map = tokio::task::spawn_blocking(move || {
            chainlog::controller::client::Client::connect(controller, MAP_TIMEOUT)
                .and_then(|mut c| c.map())
        })
        .await
        .map_err(|e| format!("reading the cluster map: {e}"))?
        .map_err(|e| format!("reading the cluster map: {e}"))?;
        let log = map
            .log_named(self.log)
            .ok_or_else(|| format!("the cluster map has no log {}", self.log))?;
        let chain = &log.chain;
        let id = match role {
            Role::Head => chain.first(),
            Role::Tail => chain.last(),
            // The first middle of a longer chain.
            Role::Middle => chain.get(1).filter(|_| chain.len() >= 3),
            Role::Controller => unreachable!("answered above"),
        };
        let shown: Vec<String> = chain.iter().map(u64::to_string).collect();
        let Some(&id) = id else {
            return Err(format!(
                "the chain of {} ({}) has no {}",
                self.log,
                shown.join(" -> "),
                role.name()
            ));
        };
        Ok((
            Member::Node(id),
            format!(
                "node {id} ({} of {}, chain {}, epoch {})",
                role.name(),
                self.log,
                shown.join(" -> "),
                log.epoch
            ),
        ))
    }
}

/// The metrics served at `addr`, if any and if they can be read.
async fn scrape(addr: Option<SocketAddr>) -> Option<Scrape> {
    let addr = addr?.to_string();
    tokio::task::spawn_blocking(move || stages::scrape(&addr).ok())
        .await
        .ok()
        .flatten()
}

/// What one fault did to the appends (a fault of the JSON report's `faults`).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FaultReport {
    /// As given: `kill:head@5s`.
    pub(crate) fault: Fault,
    /// Whom it hit.
    pub(crate) target: String,
    /// When it was applied, seconds after the measured window began (`null`: it was not).
    pub(crate) applied_s: Option<f64>,
    /// Why it was not applied, or what failed in it (a restart that did not serve).
    pub(crate) error: Option<String>,
    /// A stop: when the member was continued; a restart: when the members served again.
    pub(crate) resumed_s: Option<f64>,
    /// The longest time without an acknowledgement from the fault on, seconds (up to the run's
    /// end if nothing was acknowledged after the fault: then a lower bound).
    pub(crate) unavailability_s: Option<f64>,
    /// When the first acknowledgement after the outage came (its end), seconds after the
    /// window began; `null` if none came.
    pub(crate) first_ack_after_s: Option<f64>,
    /// The appends the fault could touch (module documentation) and what became of them.
    pub(crate) during: Counts,
    /// Latency before, during and after, microseconds (from the intended send).
    pub(crate) latency_us: Windows,
    /// The controller's reconfigurations that ended from this fault to the next one (or to
    /// the run's end), by phase (detect, seal, extend, catch_up, learn; a failure's survivors'
    /// epoch and the promotion of the learner that replaced it each seal and extend);
    /// `null` if the controller's
    /// metrics could not be read at both ends (it was down).
    pub(crate) reconfiguration: Option<Vec<PhaseTime>>,
}

impl FaultReport {
    /// The controller's reconfigurations after the fault, by phase, in a line:
    /// `detect 505 ms, seal 15 ms, extend 3 ms`.
    pub(crate) fn reconfiguration_text(&self) -> String {
        match self.reconfiguration.as_deref() {
            None => "not known (the controller's metrics could not be read)".to_string(),
            Some([]) => "none ended before the next fault or the run's end".to_string(),
            Some(phases) => phases
                .iter()
                .map(|p| {
                    let times = if p.count == 1 {
                        String::new()
                    } else {
                        format!(" (mean of {})", p.count)
                    };
                    format!("{} {:.0} ms{times}", p.phase, p.mean_us / 1000.0)
                })
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The error kinds (as `errors` counts them) whose append may or may not have taken effect:
/// the client's timeout and lost connection ([`chainlog::client::ClientError::outcome_unknown`]).
const INDEFINITE: [&str; 2] = ["connection_lost", "timeout"];

/// What became of a set of appends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counts {
    pub(crate) appends: u64,
    pub(crate) acknowledged: u64,
    /// Answered with an error: it did not take effect.
    pub(crate) failed: u64,
    /// Failed with an error whose outcome is unknown (a lost connection, a timeout): it may
    /// or may not have taken effect.
    pub(crate) indefinite: u64,
    /// Unanswered when the run ended: indefinite too.
    pub(crate) unanswered: u64,
    pub(crate) not_sent: u64,
}

/// The latency windows of a fault.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Windows {
    pub(crate) before: Window,
    pub(crate) during: Window,
    pub(crate) after: Window,
}

/// The latency of the appends of one window (`null` percentiles: it had none).
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Window {
    /// Start and end, seconds after the measured window began.
    pub(crate) start_s: f64,
    pub(crate) end_s: f64,
    pub(crate) appends: u64,
    pub(crate) p99: Option<u64>,
    pub(crate) p999: Option<u64>,
}

/// Reads what each of `applied` did from `outcomes` (a run whose window began at
/// `measure_start` and that ended at `finished`, clock times), and the controller's
/// reconfigurations from its metrics (`end`: read when the run ended).
pub(crate) fn analyse(
    applied: &[Applied],
    outcomes: &[Outcome],
    measure_start: Duration,
    finished: Duration,
    end: Option<&Scrape>,
) -> Vec<FaultReport> {
    let seconds = |t: Duration| t.saturating_sub(measure_start).as_secs_f64();
    let mut acks: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| match o.end {
            End::Acknowledged(at) => Some(at),
            _ => None,
        })
        .collect();
    acks.sort_unstable();
    let mut times: Vec<Duration> = applied.iter().filter_map(|a| a.at).collect();
    times.sort_unstable();
    let mut reports = Vec::with_capacity(applied.len());
    // Where the next fault's before may begin, by preference: the end of the previous fault's
    // after window, else the previous outage's end (a fault soon after another: its before
    // is the state the previous one left).
    let mut before_starts = [measure_start, measure_start];
    let mut by_time: Vec<&Applied> = applied.iter().collect();
    by_time.sort_by_key(|a| a.at.unwrap_or(Duration::MAX));
    for (i, a) in by_time.iter().enumerate() {
        // Up to the next fault applied, or the run's end.
        let until = match by_time[i + 1..].iter().find(|b| b.at.is_some()) {
            Some(b) => b.controller_metrics.as_ref(),
            None => end,
        };
        let reconfiguration = a
            .controller_metrics
            .as_ref()
            .zip(until)
            .map(|(from, until)| stages::phase_times(from, until));
        let mut r = FaultReport {
            fault: a.fault.clone(),
            target: a.target.clone(),
            applied_s: a.at.map(seconds),
            error: a.error.clone(),
            resumed_s: a.resumed.map(seconds),
            unavailability_s: None,
            first_ack_after_s: None,
            during: Counts::default(),
            latency_us: Windows::default(),
            reconfiguration,
        };
        let Some(fault) = a.at else {
            reports.push(r);
            continue;
        };
        let next = times.iter().copied().find(|t| *t > fault);
        let recovered = outage_end(&acks, fault, next);
        r.unavailability_s = Some((recovered.unwrap_or(finished) - fault).as_secs_f64());
        r.first_ack_after_s = recovered.map(seconds);
        let outage_end = recovered.unwrap_or(finished);
        // As the engine counts it: an append not acknowledged waited until the run ended.
        let latency = |o: &Outcome| match o.end {
            End::Acknowledged(at) => at - o.intended,
            End::Failed(..) | End::Unanswered | End::NotSent => finished - o.intended,
        };
        let answered = |o: &Outcome| match o.end {
            End::Acknowledged(at) | End::Failed(at, _) => Some(at),
            End::Unanswered | End::NotSent => None,
        };
        let window = |start: Duration, end: Duration, member: &dyn Fn(&Outcome) -> bool| {
            let mut h = report::latency_histogram();
            for o in outcomes.iter().filter(|o| member(o)) {
                report::record_latency(&mut h, latency(o));
            }
            of(&h, seconds(start), seconds(end))
        };
        let before_start = before_starts
            .into_iter()
            .find(|t| *t < fault)
            .unwrap_or(fault);
        r.latency_us.before = window(before_start, fault, &|o| {
            o.intended >= before_start && answered(o).is_some_and(|at| at <= fault)
        });
        let touched = |o: &Outcome| {
            o.intended < outage_end
                && (o.intended >= fault || answered(o).is_none_or(|at| at > fault))
        };
        r.latency_us.during = window(fault, outage_end, &touched);
        for o in outcomes.iter().filter(|o| touched(o)) {
            let c = &mut r.during;
            c.appends += 1;
            match o.end {
                End::Acknowledged(_) => c.acknowledged += 1,
                End::Failed(_, kind) if INDEFINITE.contains(&kind) => c.indefinite += 1,
                End::Failed(..) => c.failed += 1,
                End::Unanswered => c.unanswered += 1,
                End::NotSent => c.not_sent += 1,
            }
        }
        if let Some(back) = recovered {
            let end = back + AFTER;
            r.latency_us.after = window(back, end, &|o| o.intended >= back && o.intended < end);
            before_starts = [end, back];
        } else {
            before_starts = [finished, finished];
        }
        reports.push(r);
    }
    reports
}

/// The end of the longest stretch without an acknowledgement from `fault` on, up to `next`
/// (the next fault): the acknowledgement that ends it. If none came before `next`, the first
/// after `fault` at all; `None` if none came.
fn outage_end(acks: &[Duration], fault: Duration, next: Option<Duration>) -> Option<Duration> {
    let from = acks.partition_point(|t| *t <= fault);
    let until = next.map_or(acks.len(), |next| acks.partition_point(|t| *t <= next));
    if from >= until {
        return acks.get(from).copied();
    }
    let mut previous = fault;
    let mut longest = (Duration::ZERO, acks[from]);
    for &ack in &acks[from..until] {
        if previous > fault + OUTAGE_START_GRACE {
            break;
        }
        if ack - previous > longest.0 {
            longest = (ack - previous, ack);
        }
        previous = ack;
    }
    Some(longest.1)
}

fn of(h: &Histogram<u64>, start_s: f64, end_s: f64) -> Window {
    let p = (!h.is_empty()).then(|| LatencyPercentiles::of(h));
    Window {
        start_s,
        end_s,
        appends: h.len(),
        p99: p.as_ref().map(|p| p.p99),
        p999: p.as_ref().map(|p| p.p999),
    }
}

/// The report's lines for the faults: one block per fault.
pub(crate) fn human(faults: &[FaultReport], out: &mut String) {
    let ms = |s: f64| format!("{:.0} ms", s * 1000.0);
    let at = |s: f64| format!("{s:.3} s");
    for f in faults {
        let Some(applied) = f.applied_s else {
            let _ = writeln!(
                out,
                "  fault          {}: not applied: {}",
                f.fault.text,
                f.error.as_deref().unwrap_or("the cluster was stopped")
            );
            continue;
        };
        let mut line = format!(
            "  fault          {}: {} at {}",
            f.fault.text,
            f.target,
            at(applied)
        );
        if let Some(resumed) = f.resumed_s {
            let _ = write!(line, " (resumed at {})", at(resumed));
        }
        if let Some(error) = &f.error {
            let _ = write!(line, " (failed: {error})");
        }
        let _ = writeln!(out, "{line}");
        let unavailable = f.unavailability_s.unwrap_or_default();
        let outage = match f.first_ack_after_s {
            Some(back) => format!(
                "unavailable {} (first ack after it at {})",
                ms(unavailable),
                at(back)
            ),
            None => format!(
                "unavailable at least {} (no ack after it until the run ended)",
                ms(unavailable)
            ),
        };
        let d = &f.during;
        let _ = writeln!(
            out,
            "                 {outage}; during it {} appends: {} acknowledged, {} failed, {} \
             indefinite (lost connection or timeout), {} unanswered, {} never sent",
            report::thousands(d.appends),
            report::thousands(d.acknowledged),
            report::thousands(d.failed),
            report::thousands(d.indefinite),
            report::thousands(d.unanswered),
            report::thousands(d.not_sent),
        );
        let w = |w: &Window| match (w.p99, w.p999) {
            (Some(p99), Some(p999)) => format!(
                "{} / {} ({} appends)",
                report::thousands(p99),
                report::thousands(p999),
                report::thousands(w.appends)
            ),
            _ => "none".to_string(),
        };
        let l = &f.latency_us;
        let _ = writeln!(
            out,
            "                 p99 / p99.9 µs: before {}, during {}, {} s after {}",
            w(&l.before),
            w(&l.during),
            AFTER.as_secs(),
            w(&l.after),
        );
        let _ = writeln!(
            out,
            "                 reconfiguration: {}",
            f.reconfiguration_text()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn faults_parse() {
        let f = parse_fault("kill:head@5s").unwrap();
        assert_eq!((f.action, f.at), (Action::Kill(Role::Head), 5 * 1000 * MS));
        let f = parse_fault("stop:tail@2.5s/500ms").unwrap();
        assert_eq!(f.action, Action::Stop(Role::Tail, 500 * MS));
        assert_eq!(f.at, 2500 * MS);
        assert_eq!(parse_fault("restart@8").unwrap().action, Action::Restart);
        assert_eq!(
            parse_fault("kill:controller@0s").unwrap().role(),
            Some(Role::Controller)
        );
        for bad in [
            "kill:head",
            "kill:leader@5s",
            "stop:head@5s",
            "stop:head@5s/0s",
            "kill:head@5s/1s",
            "restart:head@1s",
            "kill:head@-1s",
            "kill:head@soon",
        ] {
            assert!(parse_fault(bad).is_err(), "{bad}");
        }
    }

    fn acked(intended_ms: u64, at_ms: u64) -> Outcome {
        Outcome {
            intended: ms(intended_ms),
            end: End::Acknowledged(ms(at_ms)),
        }
    }

    fn applied(text: &str, at_ms: u64) -> Applied {
        Applied {
            fault: parse_fault(text).unwrap(),
            at: Some(ms(at_ms)),
            target: "node 1".into(),
            error: None,
            resumed: None,
            controller_metrics: None,
        }
    }

    #[test]
    fn an_outage_is_the_longest_stretch_without_acks_after_the_fault() {
        // One append every 10 ms from 0 to 2 s, acknowledged 1 ms later, except those meant
        // from 990 ms to 1,390 ms: they wait until 1,400 ms; the one meant at 1,100 ms loses
        // its connection at 1,400 ms, and the one at 1,200 ms is never answered.
        let mut outcomes = Vec::new();
        for i in 0..200 {
            let t = i * 10;
            outcomes.push(match t {
                1_100 => Outcome {
                    intended: ms(t),
                    end: End::Failed(ms(1_400), "connection_lost"),
                },
                1_200 => Outcome {
                    intended: ms(t),
                    end: End::Unanswered,
                },
                990..=1_390 => acked(t, 1_400),
                _ => acked(t, t + 1),
            });
        }
        let reports = analyse(
            &[applied("kill:head@1s", 995)],
            &outcomes,
            Duration::ZERO,
            ms(3_000),
            None,
        );
        let r = &reports[0];
        assert_eq!(r.applied_s, Some(0.995));
        assert_eq!(r.first_ack_after_s, Some(1.4));
        assert!((r.unavailability_s.unwrap() - 0.405).abs() < 1e-9);
        // Meant from 990 ms (outstanding at the fault) to 1,390 ms.
        assert_eq!(
            r.during,
            Counts {
                appends: 41,
                acknowledged: 39,
                failed: 0,
                indefinite: 1,
                unanswered: 1,
                not_sent: 0
            }
        );
        let l = &r.latency_us;
        assert_eq!(l.before.appends, 99);
        assert!(l.before.p99.unwrap() <= 1_001);
        // The two not acknowledged waited until the run's end: 1.9 s and 1.8 s.
        assert!(l.during.p999.unwrap() >= 1_790_000);
        // Meant from 1,400 ms to 3,400 ms: 60 appends, back to 1 ms.
        assert_eq!(l.after.appends, 60);
        assert!(l.after.p99.unwrap() <= 1_001);
    }

    #[test]
    fn a_stall_long_after_the_fault_is_not_its_outage() {
        // One append every 10 ms from 0 to 5 s, acknowledged 1 ms later, except those meant
        // from 990 ms to 1,070 ms (acknowledged at 1,080 ms: the fault's 85 ms outage) and
        // from 3,000 ms to 3,110 ms (at 3,120 ms: a stall of the disk two seconds on,
        // longer than the outage).
        let outcomes: Vec<Outcome> = (0..500)
            .map(|i| match i * 10 {
                t @ 990..=1_070 => acked(t, 1_080),
                t @ 3_000..=3_110 => acked(t, 3_120),
                t => acked(t, t + 1),
            })
            .collect();
        let reports = analyse(
            &[applied("kill:tail@1s", 995)],
            &outcomes,
            Duration::ZERO,
            ms(6_000),
            None,
        );
        assert_eq!(reports[0].first_ack_after_s, Some(1.08));
        assert!((reports[0].unavailability_s.unwrap() - 0.085).abs() < 1e-9);
    }

    #[test]
    fn a_fault_soon_after_another_measures_its_before_from_the_first_outage_end() {
        // One append every 10 ms, acknowledged 1 ms later, except those meant from 990 ms to
        // 1,390 ms: at 1,400 ms.
        let outcomes: Vec<Outcome> = (0..300)
            .map(|i| match i * 10 {
                t @ 990..=1_390 => acked(t, 1_400),
                t => acked(t, t + 1),
            })
            .collect();
        let reports = analyse(
            &[applied("restart@2s", 2_000), applied("kill:head@1s", 995)],
            &outcomes,
            Duration::ZERO,
            ms(4_000),
            None,
        );
        // In time order; the first one's outage ends before the second.
        assert_eq!(reports[0].fault.text, "kill:head@1s");
        assert_eq!(reports[0].first_ack_after_s, Some(1.4));
        let second = &reports[1];
        assert_eq!(second.fault.text, "restart@2s");
        // Its before runs from the first outage's end (the first's after window reaches
        // past it): meant from 1,400 ms to 1,990 ms.
        assert_eq!(second.latency_us.before.start_s, 1.4);
        assert_eq!(second.latency_us.before.appends, 60);
        assert_eq!(second.during.failed + second.during.unanswered, 0);
    }

    #[test]
    fn a_fault_never_recovered_from_lasts_until_the_run_ends() {
        let outcomes: Vec<Outcome> = (0..10)
            .map(|i| Outcome {
                intended: ms(i * 100),
                end: if i < 5 {
                    End::Acknowledged(ms(i * 100 + 1))
                } else {
                    End::Unanswered
                },
            })
            .collect();
        let reports = analyse(
            &[applied("kill:tail@450ms", 450)],
            &outcomes,
            Duration::ZERO,
            ms(2_000),
            None,
        );
        let r = &reports[0];
        assert_eq!(r.first_ack_after_s, None);
        assert!((r.unavailability_s.unwrap() - 1.55).abs() < 1e-9);
        assert_eq!(r.during.unanswered, 5);
        assert_eq!(r.latency_us.after.appends, 0);
        assert_eq!(r.latency_us.after.p99, None);
    }

    /// The controller's phase histograms as it serves them (sum in seconds and count per
    /// phase).
    fn controller(detect: (f64, u64), seal: (f64, u64)) -> Scrape {
        let family = stages::PHASE_FAMILY.name;
        let text = format!(
            "{family}_sum{{phase=\"detect\"}} {}\n{family}_count{{phase=\"detect\"}} {}\n\
             {family}_sum{{phase=\"seal\"}} {}\n{family}_count{{phase=\"seal\"}} {}\n",
            detect.0, detect.1, seal.0, seal.1
        );
        stages::parse(&text).unwrap()
    }

    #[test]
    fn each_fault_gets_the_reconfigurations_until_the_next_one() {
        let outcomes: Vec<Outcome> = (0..40).map(|t| acked(t * 100, t * 100 + 1)).collect();
        let mut first = applied("kill:head@1s", 1_000);
        first.controller_metrics = Some(controller((0.0, 0), (0.0, 0)));
        let mut second = applied("kill:tail@2s", 2_000);
        second.controller_metrics = Some(controller((0.5, 1), (0.02, 1)));
        let third = applied("kill:middle@3s", 3_000);
        let end = controller((1.5, 3), (0.08, 3));
        let reports = analyse(
            &[second, first, third],
            &outcomes,
            Duration::ZERO,
            ms(4_000),
            Some(&end),
        );
        let phases = |i: usize| {
            reports[i].reconfiguration.as_ref().map(|p| {
                p.iter()
                    .map(|p| (p.phase.clone(), p.count, p.mean_us))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            phases(0),
            Some(vec![
                ("detect".into(), 1, 500_000.0),
                ("seal".into(), 1, 20_000.0)
            ])
        );
        // The controller's metrics were not read at the third fault: the second's window has
        // no end, and the third's no start.
        assert_eq!(phases(1), None);
        assert_eq!(phases(2), None);
        let mut human_text = String::new();
        human(&reports, &mut human_text);
        assert!(
            human_text.contains("reconfiguration: detect 500 ms, seal 20 ms"),
            "{human_text}"
        );
    }
}
