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

/// The shard's end.
#[derive(Debug)]
pub(crate) struct ControlInbox {
    pub(crate) updates: Receiver<Arc<MapUpdate>>,
    /// Readable when there is news.
    pub(crate) wake: OwnedFd,
    pub(crate) applied: Arc<AtomicU64>,
    pub(crate) suspect: Arc<AtomicU64>,
}

impl ControlInbox {
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

/// A channel and an eventfd between the control thread and one shard.
pub(crate) fn channel() -> std::io::Result<(ShardControl, ControlInbox)> {
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
    stop: Arc<AtomicBool>,
) {
    let mut client: Option<ControllerClient> = None;
    let mut handed_out = 0u64;
    let mut last_error: Option<(String, Instant)> = None;
    while !stop.load(Ordering::Relaxed) {
        let step = step(controller, &me, &shards, &mut client, &mut handed_out);
        let pause = match step {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!(%controller, "controller reachable again");
                }
                HEARTBEAT_EVERY
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
        sleep_unless_stopped(pause, &stop);
    }
}

fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let until = Instant::now() + pause;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
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
