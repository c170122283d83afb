//! The simulated clients that look at a log without appending, each recording what it was
//! served for the history checks ([`Seen`]) and refusing, on the spot, answers no correct
//! node gives:
//!
//! - a [`Reader`] READs from every replica of the log in turn, mostly continuing where it
//!   left off, sometimes from an LSN anywhere below the tail it knows, with small and large
//!   byte limits (a READ from a committed LSN returns at least one record);
//! - a [`Subscriber`] SUBSCRIBEs to one replica with a credit window and tops it up; pushes
//!   must continue exactly where the last one ended (in order, no gap, no duplicate); now and
//!   then it unsubscribes (an END push closes the stream) or drops its connection, and
//!   resumes on another replica from where it was; TRIMMED moves it up to the trim point;
//! - a [`Trimmer`] reads the whole log in order at its head and TRIMs below what it has read
//!   (so the checker knows the trimmed prefix), and asks CHECK_TAIL now and then.

use std::net::SocketAddr;

use chainlog_net::{
    CreditRequest, ErrorCode, ReadRequest, ReadResponse, Request, Response, SubscribeRequest,
    TrimRequest, UnsubscribeRequest,
};
use chainlog_storage::SimRng;

use super::conn::{try_again, ClientConn, Link, RETRY_US};
use super::world::{HostId, World};
use crate::history::{identify, Seen, Stamped};

/// How long a READ, CHECK_TAIL or TRIM may wait for its answer before the client drops its
/// connection (a paused or partitioned node).
const ANSWER_TIMEOUT_US: u64 = 1_500_000;

/// What the looking clients count (for the run's report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LookCounts {
    /// READs answered with records, and records read.
    pub(crate) reads: u64,
    pub(crate) records_read: u64,
    /// Pushes received, and records pushed.
    pub(crate) pushes: u64,
    pub(crate) records_pushed: u64,
    /// Subscriptions resumed after a lost connection or an unsubscribe.
    pub(crate) resumes: u64,
    /// TRIMMED answers (READ or subscription).
    pub(crate) trimmed: u64,
    /// CHECK_TAILs answered.
    pub(crate) tails: u64,
    /// TRIMs acknowledged.
    pub(crate) trims: u64,
}

impl std::ops::AddAssign for LookCounts {
    fn add_assign(&mut self, o: LookCounts) {
        self.reads += o.reads;
        self.records_read += o.records_read;
        self.pushes += o.pushes;
        self.records_pushed += o.records_pushed;
        self.resumes += o.resumes;
        self.trimmed += o.trimmed;
        self.tails += o.tails;
        self.trims += o.trims;
    }
}

/// What every looking client keeps: what it was served, what was wrong, its counts.
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub(crate) seen: Vec<Seen<u64>>,
    pub(crate) unexpected: Vec<String>,
    pub(crate) counts: LookCounts,
}

impl Record {
    /// The records of a READ answer or a push, which asked for `from` on: each must be a value
    /// that was sent, the first at `from`. Recorded as seen by `source`; returns how many.
    fn served(
        &mut self,
        log_id: u64,
        source: String,
        now: u64,
        from: u64,
        batch: &ReadResponse<'_>,
    ) -> u64 {
        let mut records = Vec::new();
        for (i, r) in batch.records.iter().enumerate() {
            let h = r.header;
            if h.log_id != log_id || h.lsn != from + i as u64 {
                self.unexpected.push(format!(
                    "{source}: record {i} from {from} is LSN {} of log {}",
                    h.lsn, h.log_id
                ));
                return 0;
            }
            match identify(log_id, r.payload) {
                Ok(value) => records.push(Stamped {
                    value,
                    timestamp_us: h.timestamp_us,
                }),
                Err(what) => {
                    self.unexpected
                        .push(format!("{source}: LSN {} holds {what}", h.lsn));
                    return 0;
                }
            }
        }
        let n = records.len() as u64;
        self.seen.push(Seen::Records {
            source,
            at: now,
            first: from,
            tail: batch.tail,
            records,
        });
        n
    }

    /// A TRIMMED answer for `from`.
    fn trimmed(&mut self, source: String, from: u64, trim_point: u64) {
        self.counts.trimmed += 1;
        self.seen.push(Seen::Trimmed {
            source,
            from,
            trim_point,
        });
    }
}

/// "`name` on node N" for each of `replicas`.
fn sources_of(name: &str, replicas: &[(u64, SocketAddr)]) -> Vec<String> {
    replicas
        .iter()
        .map(|(node, _)| format!("{name} on node {node}"))
        .collect()
}

/// Makes `sources` name `replicas` (the chain changed, or they were never named).
fn rename(sources: &mut Vec<String>, name: &str, replicas: &[(u64, SocketAddr)]) {
    let same = sources.len() == replicas.len()
        && sources
            .iter()
            .zip(replicas)
            .all(|(s, (node, _))| s.rsplit(' ').next().is_some_and(|n| n.parse() == Ok(*node)));
    if !same {
        *sources = sources_of(name, replicas);
    }
}

/// A READ out on a connection.
#[derive(Clone, Copy, Debug)]
struct Asked {
    request: u64,
    from: u64,
    max_records: u32,
    sent_us: u64,
}

/// A reader of one log's replicas. See the module documentation.
#[derive(Debug)]
pub(crate) struct Reader {
    pub(crate) log_id: u64,
    name: String,
    host: HostId,
    /// "reader N on node M", per replica (for what it saw).
    sources: Vec<String>,
    /// One connection per replica, in chain order.
    conns: Vec<ClientConn>,
    asked: Vec<Option<Asked>>,
    /// The replica the next READ goes to, and when.
    target: usize,
    next_us: u64,
    /// Where the reader continues, and the highest tail it was told.
    cursor: u64,
    tail: u64,
    pub(crate) record: Record,
}

impl Reader {
    pub(crate) fn new(world: &mut World, id: u64, log_id: u64, replicas: usize) -> Reader {
        Reader {
            log_id,
            name: format!("reader {id}"),
            host: 1000 + id as HostId,
            sources: Vec::new(),
            conns: (0..replicas)
                .map(|_| ClientConn::new(world, 1000 + id as HostId))
                .collect(),
            asked: vec![None; replicas],
            target: 0,
            next_us: 0,
            cursor: 0,
            tail: 0,
            record: Record::default(),
        }
    }

    /// One step; `replicas` are the log's replicas (node id, address of the log's shard), in
    /// chain order (a connection per position: one whose replica changed moves to the new
    /// one); new READs only while `active`.
    pub(crate) fn step(
        &mut self,
        world: &mut World,
        rng: &mut SimRng,
        replicas: &[(u64, SocketAddr)],
        active: bool,
    ) {
        let now = world.now_us();
        rename(&mut self.sources, &self.name, replicas);
        while self.conns.len() < replicas.len() {
            self.conns.push(ClientConn::new(world, self.host));
            self.asked.push(None);
        }
        while self.conns.len() > replicas.len() {
            self.conns.pop().expect("more than one").drop_conn(world);
            self.asked.pop();
        }
        self.target %= replicas.len();
        for (i, &(_, addr)) in replicas.iter().enumerate() {
            let want = (active && i == self.target) || self.asked[i].is_some();
            match self.conns[i].poll(world, addr, want) {
                Link::Down => continue,
                Link::Lost | Link::Fresh => {
                    self.asked[i] = None;
                }
                Link::Up => {}
            }
            let source = &self.sources[i];
            let (asked, record, cursor, tail) = (
                &mut self.asked[i],
                &mut self.record,
                &mut self.cursor,
                &mut self.tail,
            );
            let log_id = self.log_id;
            let ended = self.conns[i].receive(world, &mut |id, answer| {
                let Some(a) = asked.filter(|a| a.request == id) else {
                    return;
                };
                *asked = None;
                match answer {
                    Ok(Response::Read(batch)) => {
                        *tail = (*tail).max(batch.tail);
                        let n = record.served(log_id, source.clone(), now, a.from, &batch);
                        if n == 0 && a.from < batch.tail && a.max_records > 0 {
                            record.unexpected.push(format!(
                                "{source}: a READ from the committed LSN {} (tail {}) returned \
                                 no record",
                                a.from, batch.tail
                            ));
                        }
                        if n > 0 {
                            record.counts.reads += 1;
                            record.counts.records_read += n;
                        }
                        if a.from == *cursor {
                            *cursor += n;
                        }
                    }
                    Ok(Response::Error(e)) if e.code == ErrorCode::Trimmed => {
                        record.trimmed(source.clone(), a.from, e.arg0);
                        if a.from == *cursor {
                            *cursor = (*cursor).max(e.arg0);
                        }
                    }
                    // Not there yet (a log created while this node was paused), or going down.
                    Ok(Response::Error(e)) if try_again(e.code) => {}
                    Ok(other) => record
                        .unexpected
                        .push(format!("{source}: a READ answered with {other:?}")),
                    Err(e) => record.unexpected.push(format!("{source}: {e}")),
                }
            });
            if ended {
                self.asked[i] = None;
                continue;
            }
            if self.asked[i].is_some_and(|a| now.saturating_sub(a.sent_us) > ANSWER_TIMEOUT_US) {
                self.conns[i].drop_conn(world);
                self.asked[i] = None;
            }
        }
        let t = self.target;
        if active && now >= self.next_us && self.asked[t].is_none() && self.conns[t].is_up() {
            let from = if rng.one_in(3) {
                rng.below(self.tail + 1)
            } else {
                self.cursor
            };
            let max_records = rng.below(40) as u32;
            // Now and then a byte limit below one record: at least one comes anyway.
            let max_bytes = if rng.one_in(4) { 64 } else { 256 << 10 };
            let request = self.conns[t].send(
                world,
                &Request::Read(ReadRequest {
                    log_id: self.log_id,
                    from_lsn: from,
                    max_records,
                    max_bytes,
                }),
            );
            self.asked[t] = Some(Asked {
                request,
                from,
                max_records,
                sent_us: now,
            });
            self.target = rng.below(replicas.len() as u64) as usize;
            self.next_us = now + 2_000 + rng.below(20_000);
        }
    }
}

/// The subscription a [`Subscriber`] holds.
#[derive(Clone, Copy, Debug)]
struct Sub {
    request: u64,
    /// Acknowledged (its `start_lsn` checked).
    acked: bool,
    /// Credit the node has left.
    credit: u64,
    /// UNSUBSCRIBE sent: an END push ends it.
    ending: bool,
}

/// A subscriber of one log. See the module documentation.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) log_id: u64,
    name: String,
    /// "subscriber N on node M", per replica.
    sources: Vec<String>,
    conn: ClientConn,
    /// The replica subscribed to (chain position).
    replica: usize,
    sub: Option<Sub>,
    /// The LSN of the next record the subscriber wants: every record below was pushed to it
    /// (or trimmed before it got there).
    pub(crate) next: u64,
    window: u32,
    resubscribe_us: u64,
    switch_us: u64,
    pub(crate) record: Record,
}

impl Subscriber {
    pub(crate) fn new(world: &mut World, id: u64, log_id: u64, window: u32) -> Subscriber {
        Subscriber {
            log_id,
            name: format!("subscriber {id}"),
            sources: Vec::new(),
            conn: ClientConn::new(world, 1000 + id as HostId),
            replica: 0,
            sub: None,
            next: 0,
            window,
            resubscribe_us: 0,
            switch_us: 0,
            record: Record::default(),
        }
    }

    /// Where the subscriber is, for a report.
    pub(crate) fn describe(&self) -> String {
        format!(
            "at {} on replica {} (connection {}), subscription {:?}",
            self.next,
            self.replica,
            if self.conn.is_up() { "up" } else { "down" },
            self.sub
        )
    }

    /// One step (subscribers keep going after the faults stop, until they have caught up).
    pub(crate) fn step(
        &mut self,
        world: &mut World,
        rng: &mut SimRng,
        replicas: &[(u64, SocketAddr)],
        active: bool,
    ) {
        let now = world.now_us();
        rename(&mut self.sources, &self.name, replicas);
        if self.replica >= replicas.len() {
            self.replica = 0; // The chain got shorter: the connection moves.
        }
        let addr = replicas[self.replica].1;
        match self.conn.poll(world, addr, true) {
            Link::Down => return,
            Link::Lost => {
                if self.sub.take().is_some() {
                    self.record.counts.resumes += 1;
                }
                return;
            }
            Link::Fresh => self.sub = None,
            Link::Up => {}
        }
        let source = &self.sources[self.replica];
        let (sub, next, record, resubscribe_us) = (
            &mut self.sub,
            &mut self.next,
            &mut self.record,
            &mut self.resubscribe_us,
        );
        let log_id = self.log_id;
        let mut ended_by_end = false;
        let ended = self.conn.receive(world, &mut |id, answer| {
            let Some(s) = sub.as_mut().filter(|s| s.request == id) else {
                return; // HELLO, CREDIT and UNSUBSCRIBE answers; an ended subscription's.
            };
            match answer {
                Ok(Response::Subscribe(ack)) => {
                    if ack.start_lsn != *next {
                        record.unexpected.push(format!(
                            "{source}: SUBSCRIBE from {} acknowledged from {}",
                            *next, ack.start_lsn
                        ));
                    }
                    s.acked = true;
                }
                Ok(Response::Push(push)) => {
                    let count = u64::from(push.batch.records.count());
                    if !s.acked || count > s.credit {
                        record.unexpected.push(format!(
                            "{source}: a push of {count} records before the acknowledgement or \
                             beyond the credit ({})",
                            s.credit
                        ));
                    }
                    if count == 0 && !push.end {
                        record
                            .unexpected
                            .push(format!("{source}: an empty push that is not the END"));
                    }
                    let n = record.served(log_id, source.clone(), now, *next, &push.batch);
                    s.credit = s.credit.saturating_sub(n);
                    *next += n;
                    if n > 0 {
                        record.counts.pushes += 1;
                        record.counts.records_pushed += n;
                    }
                    if push.end {
                        if !s.ending {
                            record
                                .unexpected
                                .push(format!("{source}: an END push nobody asked for"));
                        }
                        *sub = None;
                        ended_by_end = true;
                    }
                }
                Ok(Response::PushError(e) | Response::Error(e)) => {
                    if e.code == ErrorCode::Trimmed {
                        record.trimmed(source.clone(), *next, e.arg0);
                        *next = (*next).max(e.arg0);
                    } else if !try_again(e.code) {
                        record.unexpected.push(format!(
                            "{source}: the subscription ended with {} {}",
                            e.code.name(),
                            e.message
                        ));
                    }
                    *sub = None;
                    *resubscribe_us = now + RETRY_US;
                }
                Ok(other) => record
                    .unexpected
                    .push(format!("{source}: a subscription answered with {other:?}")),
                Err(e) => record.unexpected.push(format!("{source}: {e}")),
            }
        });
        if ended {
            if self.sub.take().is_some() {
                self.record.counts.resumes += 1;
            }
            return;
        }
        if ended_by_end {
            // Resume on another replica (the connection moves there).
            self.record.counts.resumes += 1;
            self.replica = rng.below(replicas.len() as u64) as usize;
            return;
        }
        match self.sub {
            None if now >= self.resubscribe_us => {
                let request = self.conn.send(
                    world,
                    &Request::Subscribe(SubscribeRequest {
                        log_id: self.log_id,
                        from_lsn: self.next,
                        credit_records: self.window,
                    }),
                );
                self.sub = Some(Sub {
                    request,
                    acked: false,
                    credit: u64::from(self.window),
                    ending: false,
                });
                self.switch_us = now + 50_000 + rng.below(400_000);
            }
            Some(ref mut s) if !s.ending && s.credit < u64::from(self.window / 2) => {
                let more = u64::from(self.window) - s.credit;
                s.credit += more;
                let subscription_id = s.request;
                self.conn.send(
                    world,
                    &Request::Credit(CreditRequest {
                        subscription_id,
                        records: more as u32,
                    }),
                );
            }
            Some(ref mut s) if active && !s.ending && now >= self.switch_us => {
                if rng.one_in(2) {
                    s.ending = true;
                    let subscription_id = s.request;
                    self.conn.send(
                        world,
                        &Request::Unsubscribe(UnsubscribeRequest { subscription_id }),
                    );
                } else {
                    // The connection goes: resume elsewhere from where it was.
                    self.conn.drop_conn(world);
                    self.sub = None;
                    self.record.counts.resumes += 1;
                    self.replica = rng.below(replicas.len() as u64) as usize;
                }
            }
            _ => {}
        }
    }
}

/// A TRIM the trimmer wants answered.
#[derive(Clone, Copy, Debug)]
struct TrimOut {
    before: u64,
    request: Option<u64>,
    sent_us: u64,
    not_before_us: u64,
}

/// The trimmer of one log (and its CHECK_TAILs). See the module documentation.
#[derive(Debug)]
pub(crate) struct Trimmer {
    pub(crate) log_id: u64,
    name: String,
    /// "trimmer N on node M" (the head), and M.
    source: String,
    source_node: Option<u64>,
    conn: ClientConn,
    /// Every record below was read (in order, at the head).
    read_upto: u64,
    reading: Option<Asked>,
    /// When the next READ goes (at once while the last one came back full).
    next_read_us: u64,
    /// CHECK_TAIL out: (request, sent).
    tail_asked: Option<(u64, u64)>,
    next_tail_us: u64,
    trim: Option<TrimOut>,
    next_trim_us: u64,
    pub(crate) record: Record,
}

impl Trimmer {
    pub(crate) fn new(world: &mut World, id: u64, log_id: u64, now_us: u64) -> Trimmer {
        Trimmer {
            log_id,
            name: format!("trimmer {id}"),
            source: String::new(),
            source_node: None,
            conn: ClientConn::new(world, 1000 + id as HostId),
            read_upto: 0,
            reading: None,
            next_read_us: now_us,
            tail_asked: None,
            next_tail_us: now_us,
            trim: None,
            next_trim_us: now_us + 100_000,
            record: Record::default(),
        }
    }

    /// A TRIM waits for its answer.
    pub(crate) fn pending(&self) -> bool {
        self.trim.is_some()
    }

    /// One step; `head` is where the log's head serves. New reads, tails and trims only while
    /// `active`.
    pub(crate) fn step(
        &mut self,
        world: &mut World,
        rng: &mut SimRng,
        head: (u64, SocketAddr),
        active: bool,
    ) {
        let now = world.now_us();
        let want = active || self.trim.is_some();
        match self.conn.poll(world, head.1, want) {
            Link::Down => return,
            Link::Lost => return self.forget(),
            Link::Fresh => self.forget(),
            Link::Up => {}
        }
        if self.source_node != Some(head.0) {
            self.source_node = Some(head.0);
            self.source = format!("{} on node {}", self.name, head.0);
        }
        let source = &self.source;
        let (reading, tail_asked, trim, record, read_upto) = (
            &mut self.reading,
            &mut self.tail_asked,
            &mut self.trim,
            &mut self.record,
            &mut self.read_upto,
        );
        let mut caught_up = false;
        let log_id = self.log_id;
        let ended = self.conn.receive(world, &mut |id, answer| {
            if let Some(a) = reading.filter(|a| a.request == id) {
                *reading = None;
                match answer {
                    Ok(Response::Read(batch)) => {
                        let n = record.served(log_id, source.clone(), now, a.from, &batch);
                        *read_upto += n;
                        caught_up = n < u64::from(a.max_records);
                        if n > 0 {
                            record.counts.reads += 1;
                            record.counts.records_read += n;
                        }
                    }
                    Ok(Response::Error(e)) if try_again(e.code) => {}
                    // Below the trim point although nothing below what was read was trimmed:
                    // the checker judges the trim point named.
                    Ok(Response::Error(e)) if e.code == ErrorCode::Trimmed => {
                        record.trimmed(source.clone(), a.from, e.arg0);
                        *read_upto = (*read_upto).max(e.arg0);
                    }
                    Ok(other) => record
                        .unexpected
                        .push(format!("{source}: a READ answered with {other:?}")),
                    Err(e) => record.unexpected.push(format!("{source}: {e}")),
                }
            } else if let Some((_, invoked)) = tail_asked.filter(|(r, _)| *r == id) {
                *tail_asked = None;
                match answer {
                    Ok(Response::CheckTail(t)) => {
                        record.counts.tails += 1;
                        if t.trim_point > t.tail {
                            record.unexpected.push(format!(
                                "{source}: CHECK_TAIL named the trim point {} above the tail {}",
                                t.trim_point, t.tail
                            ));
                        }
                        record.seen.push(Seen::Tail {
                            source: format!("CHECK_TAIL to node {}", head.0),
                            invoked,
                            at: now,
                            tail: t.tail,
                            trim_point: t.trim_point,
                        });
                    }
                    Ok(Response::Error(e)) if try_again(e.code) => {}
                    Ok(other) => record
                        .unexpected
                        .push(format!("{source}: a CHECK_TAIL answered with {other:?}")),
                    Err(e) => record.unexpected.push(format!("{source}: {e}")),
                }
            } else if let Some(t) = trim.as_mut().filter(|t| t.request == Some(id)) {
                match answer {
                    Ok(Response::Trim) => {
                        record.counts.trims += 1;
                        record.seen.push(Seen::Trim {
                            before: t.before,
                            acked: true,
                        });
                        *trim = None;
                    }
                    Ok(Response::Error(e)) if try_again(e.code) => {
                        t.request = None;
                        t.not_before_us = now + RETRY_US;
                    }
                    Ok(Response::Error(e)) if e.code == ErrorCode::ConditionFailed => {
                        // A restarted head knows less committed than was read: later.
                        if e.arg0 >= t.before {
                            record.unexpected.push(format!(
                                "{source}: TRIM to {} refused with CONDITION_FAILED naming the \
                                 tail {}",
                                t.before, e.arg0
                            ));
                        }
                        t.request = None;
                        t.not_before_us = now + RETRY_US;
                    }
                    Ok(other) => {
                        record
                            .unexpected
                            .push(format!("{source}: a TRIM answered with {other:?}"));
                        *trim = None;
                    }
                    Err(e) => record.unexpected.push(format!("{source}: {e}")),
                }
            }
        });
        if caught_up {
            self.next_read_us = now + 2_000 + rng.below(20_000);
        }
        if ended {
            self.forget();
            return;
        }
        let late = |sent: u64| now.saturating_sub(sent) > ANSWER_TIMEOUT_US;
        if self.reading.is_some_and(|a| late(a.sent_us))
            || self.tail_asked.is_some_and(|(_, sent)| late(sent))
            || self
                .trim
                .is_some_and(|t| t.request.is_some() && late(t.sent_us))
        {
            self.conn.drop_conn(world);
            self.forget();
            return;
        }
        self.send_due(world, rng, now, active);
    }

    /// The connection went: nothing is out on it (a TRIM goes again).
    fn forget(&mut self) {
        self.reading = None;
        self.tail_asked = None;
        if let Some(t) = &mut self.trim {
            t.request = None;
        }
    }

    fn send_due(&mut self, world: &mut World, rng: &mut SimRng, now: u64, active: bool) {
        if active && self.reading.is_none() && now >= self.next_read_us {
            let request = self.conn.send(
                world,
                &Request::Read(ReadRequest {
                    log_id: self.log_id,
                    from_lsn: self.read_upto,
                    max_records: 64,
                    max_bytes: 256 << 10,
                }),
            );
            self.reading = Some(Asked {
                request,
                from: self.read_upto,
                max_records: 64,
                sent_us: now,
            });
        }
        if active && self.tail_asked.is_none() && now >= self.next_tail_us {
            let request = self.conn.send(
                world,
                &Request::CheckTail {
                    log_id: self.log_id,
                },
            );
            self.tail_asked = Some((request, now));
            self.next_tail_us = now + 5_000 + rng.below(50_000);
        }
        if active && self.trim.is_none() && now >= self.next_trim_us && self.read_upto > 0 {
            // Below what was read, now and then a little below (so the next trim overlaps).
            let before = self.read_upto - rng.below(self.read_upto.min(4) + 1);
            self.trim = Some(TrimOut {
                before,
                request: None,
                sent_us: now,
                not_before_us: now,
            });
            self.record.seen.push(Seen::Trim {
                before,
                acked: false,
            });
            self.next_trim_us = now + 100_000 + rng.below(400_000);
        }
        if let Some(t) = &mut self.trim {
            if t.request.is_none() && now >= t.not_before_us {
                let request = self.conn.send(
                    world,
                    &Request::Trim(TrimRequest {
                        log_id: self.log_id,
                        before_lsn: t.before,
                    }),
                );
                t.request = Some(request);
                t.sent_us = now;
            }
        }
    }
}
