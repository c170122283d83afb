//! A cluster member's control thread: it registers the node with the controller, heartbeats
//! (reporting the newest map version every shard has applied), fetches the cluster map when
//! the controller's version moves, and hands it to the shards through bounded channels,
//! waking each through an eventfd its ring reads. This is the only cross-thread traffic of a
//! node, and it is on the control path: shards never wait for it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::controller::client::Client as ControllerClient;
use crate::replication::NodeId;
use chainlog_net::cluster::ClusterMap;

use super::chain::Peer;

/// Pause between two heartbeats.
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_millis(50);
/// Pause between two heartbeats while a shard expects a new map: the controller seals a
/// log's members, then extends the chain with a new map (a failover, or a spare promoted at
/// the tail), and the log takes no appends until its members install that map; a learner
/// close to its source is about to be promoted by such a map. Polling at [`HEARTBEAT_EVERY`]
/// left a failover, and the promotion of a spare after it, up to 50 ms more without appends.
const HEARTBEAT_EVERY_EXPECTING: Duration = Duration::from_millis(5);
/// How long a node polls at [`HEARTBEAT_EVERY_EXPECTING`] after a shard said it expects a
/// map, at most (until a newer map arrives; a controller that died mid-way is not waited
/// for faster than usual). Nudges meanwhile do not extend it.
const EXPECTING_FOR: Duration = Duration::from_millis(500);
/// After a quick window that ended without a new map, nudges are ignored for this long: a
/// learner that stays close to its source but is not promoted (the controller cannot reach
/// its tail) nudges after every answer, and would otherwise keep its node at a heartbeat
/// every 5 ms for as long (at most about 80 heartbeats a second this way, against 20).
const EXPECTING_CALM: Duration = Duration::from_secs(1);
/// How long one call to the controller may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed call before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// Maps a shard may have queued (it applies the newest).
const UPDATES_MAX: usize = 4;

/// What a shard learns from a map.
#[derive(Debug)]
pub(crate) struct MapUpdate {
    pub(crate) map: ClusterMap,
    pub(crate) peers: HashMap<NodeId, Peer>,
}

impl MapUpdate {
    /// What the shards learn from `map`.
    pub(crate) fn of(map: ClusterMap) -> MapUpdate {
        let peers = peers_of(&map);
        MapUpdate { map, peers }
    }
}

/// The control thread's end of one shard.
#[derive(Debug)]
pub(crate) struct ShardControl {
    pub(crate) updates: SyncSender<Arc<MapUpdate>>,
    /// Written to wake the shard.
    pub(crate) wake: OwnedFd,
    /// The newest map version the shard applied.
    pub(crate) applied: Arc<AtomicU64>,
    /// A node whose replication connection with the shard failed, to name in the next
    /// heartbeat (0: none).
    pub(crate) suspect: Arc<AtomicU64>,
}

/// The shards' nudge to the control thread: a new map is expected (an epoch was sealed here,
/// or a learner here is close to its source); the control thread wakes and polls for it
/// quickly for a while ([`HEARTBEAT_EVERY_EXPECTING`]).
#[derive(Debug, Default)]
pub(crate) struct Nudge {
    expected: AtomicBool,
    /// The map expected follows a seal made here (so it surely comes, soon).
    sealed: AtomicBool,
    /// The control thread, once it runs (woken from its pause).
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl Nudge {
    fn expect_map(&self, sealed: bool) {
        if sealed {
            self.sealed.store(true, Ordering::Relaxed);
        }
        self.expected.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// The shard's end.
#[derive(Debug)]
pub(crate) struct ControlInbox {
    pub(crate) updates: Receiver<Arc<MapUpdate>>,
    /// Readable when there is news.
    pub(crate) wake: OwnedFd,
    pub(crate) applied: Arc<AtomicU64>,
    pub(crate) suspect: Arc<AtomicU64>,
    nudge: Arc<Nudge>,
}

impl ControlInbox {
    /// The shard expects a new map (`sealed`: after a seal it made): the control thread
    /// polls for it quickly for a while ([`HEARTBEAT_EVERY_EXPECTING`]). Never blocks.
    pub(crate) fn expect_map(&self, sealed: bool) {
        self.nudge.expect_map(sealed);
    }

    /// Names `node` in the next heartbeat: its replication connection with this shard
    /// failed, so the controller checks at once whether it is still heartbeating.
    pub(crate) fn suspect(&self, node: NodeId) {
        self.suspect.store(node, Ordering::Relaxed);
    }

    /// The newest map queued, if any.
    pub(crate) fn newest(&self) -> Option<Arc<MapUpdate>> {
        let mut newest = None;
        while let Ok(update) = self.updates.try_recv() {
            newest = Some(update);
        }
        newest
    }
}

/// A channel and an eventfd between the control thread and one shard (`nudge`: every shard's,
/// to the control thread).
pub(crate) fn channel(nudge: &Arc<Nudge>) -> std::io::Result<(ShardControl, ControlInbox)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(UPDATES_MAX);
    let wake = super::eventfd()?;
    let read = wake.try_clone()?;
    let applied = Arc::new(AtomicU64::new(0));
    let suspect = Arc::new(AtomicU64::new(0));
    Ok((
        ShardControl {
            updates: tx,
            wake,
            applied: applied.clone(),
            suspect: suspect.clone(),
        },
        ControlInbox {
            updates: rx,
            wake: read,
            applied,
            suspect,
            nudge: nudge.clone(),
        },
    ))
}

/// Who this node is to the controller.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub(crate) node_id: NodeId,
    pub(crate) advertise: SocketAddr,
    pub(crate) shards: u16,
    pub(crate) zone: String,
    pub(crate) rack: String,
}

/// Runs until `stop` is set: register, heartbeat, fetch and hand out maps.
pub(crate) fn run(
    controller: SocketAddr,
    me: Identity,
    shards: Vec<ShardControl>,
    nudge: Arc<Nudge>,
    stop: Arc<AtomicBool>,
) {
    let _ = nudge.thread.set(std::thread::current());
    let mut client: Option<ControllerClient> = None;
    let mut handed_out = 0u64;
    let mut last_error: Option<(String, Instant)> = None;
    let mut pace = Pace::default();
    while !stop.load(Ordering::Relaxed) {
        if nudge.expected.swap(false, Ordering::Relaxed) {
            pace.expect(Instant::now(), nudge.sealed.swap(false, Ordering::Relaxed));
        }
        let before = handed_out;
        let step = step(controller, &me, &shards, &mut client, &mut handed_out);
        if handed_out > before {
            pace.arrived();
        }
        let pause = match step {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!(%controller, "controller reachable again");
                }
                pace.pause(Instant::now())
            }
            Err(e) => {
                client = None;
                // One warning per distinct error per 10 s: a controller that is down must not
                // flood the log.
                let repeat = last_error
                    .as_ref()
                    .is_some_and(|(m, at)| *m == e && at.elapsed() < Duration::from_secs(10));
                if !repeat {
                    tracing::warn!(%controller, error = %e, "controller call failed; retrying");
                    last_error = Some((e, Instant::now()));
                }
                RETRY_AFTER
            }
        };
        pause_unless(pause, &stop, &nudge);
    }
}

/// The pause between heartbeats: [`HEARTBEAT_EVERY`], or [`HEARTBEAT_EVERY_EXPECTING`] in a
/// window of [`EXPECTING_FOR`] that a shard's nudge opens (a nudge after a seal always, others
/// unless a window ended without a map less than [`EXPECTING_CALM`] ago) and a new map
/// closes. Seals come only from the controller, which extends after each: they are bounded.
#[derive(Debug, Default)]
struct Pace {
    quick_until: Option<Instant>,
    calm_until: Option<Instant>,
}

impl Pace {
    /// A shard expects a map (at `now`; `sealed`: after a seal).
    fn expect(&mut self, now: Instant, sealed: bool) {
        self.lapse(now);
        if self.quick_until.is_none() && (sealed || self.calm_until.is_none_or(|t| now >= t)) {
            self.quick_until = Some(now + EXPECTING_FOR);
        }
    }

    /// A newer map arrived.
    fn arrived(&mut self) {
        self.quick_until = None;
    }

    /// The pause before the next heartbeat, at `now`.
    fn pause(&mut self, now: Instant) -> Duration {
        self.lapse(now);
        if self.quick_until.is_some() {
            HEARTBEAT_EVERY_EXPECTING
        } else {
            HEARTBEAT_EVERY
        }
    }

    /// Ends a window that ran out without a map, and starts the calm after it.
    fn lapse(&mut self, now: Instant) {
        if self.quick_until.is_some_and(|t| now >= t) {
            self.quick_until = None;
            self.calm_until = Some(now + EXPECTING_CALM);
        }
    }
}

/// Waits `pause`, or less if `stop` is set or a shard expects a map.
fn pause_unless(pause: Duration, stop: &AtomicBool, nudge: &Nudge) {
    let until = Instant::now() + pause;
    while !stop.load(Ordering::Relaxed) && !nudge.expected.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::park_timeout((until - now).min(Duration::from_millis(20)));
    }
}

/// One round: (re)connect and register if needed, heartbeat, fetch a newer map.
fn step(
    controller: SocketAddr,
    me: &Identity,
    shards: &[ShardControl],
    client: &mut Option<ControllerClient>,
    handed_out: &mut u64,
) -> Result<(), String> {
    if client.is_none() {
        let mut c =
            ControllerClient::connect(controller, CALL_TIMEOUT).map_err(|e| e.to_string())?;
        c.register(
            me.node_id,
            &me.advertise.to_string(),
            me.shards,
            &me.zone,
            &me.rack,
        )
        .map_err(|e| e.to_string())?;
        tracing::info!(%controller, node_id = me.node_id, "registered with the controller");
        *client = Some(c);
    }
    let c = client.as_mut().expect("connected above");
    let applied = shards
        .iter()
        .map(|s| s.applied.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    // One suspect per heartbeat (the first shard's that has one; the others' go next).
    let suspect = shards
        .iter()
        .map(|s| s.suspect.swap(0, Ordering::Relaxed))
        .find(|&s| s != 0)
        .unwrap_or(0);
    let version = c
        .heartbeat(me.node_id, applied, suspect)
        .map_err(|e| e.to_string())?;
    if version > *handed_out || applied < *handed_out {
        // A newer map, or a shard that has not applied the last one (its queue was full):
        // hand out the current map again.
        let map = c.map().map_err(|e| e.to_string())?;
        let update = Arc::new(MapUpdate::of(map));
        *handed_out = update.map.version();
        for shard in shards {
            match shard.updates.try_send(update.clone()) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return Ok(()),
            }
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe { libc::write(shard.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
    Ok(())
}

/// The nodes of a map, as shards need them (nodes whose address does not parse are left out,
/// with a warning: their logs cannot be replicated to until it is fixed).
fn peers_of(map: &ClusterMap) -> HashMap<NodeId, Peer> {
    map.nodes()
        .iter()
        .filter_map(|n| match n.addr.parse::<SocketAddr>() {
            Ok(addr) => Some((
                n.node_id,
                Peer {
                    addr,
                    shards: n.shard_count,
                },
            )),
            Err(e) => {
                tracing::warn!(node_id = n.node_id, addr = n.addr, error = %e, "a node's address in the map does not parse");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard that expects a map ends the control thread's pause (an hour here): set before
    /// the pause, or while it waits (the thread is woken). The pause before a heartbeat held
    /// the next map back up to 50 ms after a seal, and the log with it.
    #[test]
    fn an_expected_map_ends_the_pause_between_heartbeats() {
        let nudge = Arc::new(Nudge::default());
        let stop = AtomicBool::new(false);
        nudge.expect_map(false);
        pause_unless(Duration::from_secs(3600), &stop, &nudge);
        assert!(nudge.expected.swap(false, Ordering::Relaxed));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let waiting = {
            let nudge = nudge.clone();
            std::thread::spawn(move || {
                let _ = nudge.thread.set(std::thread::current());
                started_tx.send(()).expect("the test waits");
                pause_unless(Duration::from_secs(3600), &AtomicBool::new(false), &nudge);
            })
        };
        started_rx.recv().expect("the thread started");
        nudge.expect_map(true);
        waiting.join().expect("the pause ended");
    }

    /// A nudge opens a quick window, which a map closes; a window that runs out without a
    /// map is followed by a calm in which nudges are ignored, so a node that expects a map
    /// that never comes does not heartbeat every 5 ms for good.
    #[test]
    fn quick_heartbeats_are_bounded() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut pace = Pace::default();
        assert_eq!(pace.pause(t0), HEARTBEAT_EVERY);
        pace.expect(t0, false);
        assert_eq!(pace.pause(ms(1)), HEARTBEAT_EVERY_EXPECTING);
        pace.arrived();
        assert_eq!(pace.pause(ms(2)), HEARTBEAT_EVERY, "the map came");
        pace.expect(ms(3), false);
        pace.expect(ms(450), false);
        assert_eq!(pace.pause(ms(450)), HEARTBEAT_EVERY_EXPECTING);
        assert_eq!(
            pace.pause(ms(503)),
            HEARTBEAT_EVERY,
            "not extended by a nudge"
        );
        pace.expect(ms(800), false);
        assert_eq!(
            pace.pause(ms(800)),
            HEARTBEAT_EVERY,
            "calm after a window without a map"
        );
        pace.expect(ms(900), true);
        assert_eq!(
            pace.pause(ms(900)),
            HEARTBEAT_EVERY_EXPECTING,
            "a seal's map comes"
        );
        pace.arrived();
        pace.expect(ms(1503), false);
        assert_eq!(
            pace.pause(ms(1503)),
            HEARTBEAT_EVERY_EXPECTING,
            "the calm is over"
        );
    }
}
