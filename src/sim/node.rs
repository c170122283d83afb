//! A simulated cluster node: its shards (the real [`Shard`] code over [`SimEnv`]), its disk,
//! its catalog files and its machine's wall clock, and what happens to it: a process crash
//! (kill -9: what the device holds survives, writes in flight are lost), a power loss (only
//! what was flushed survives, one write torn, and the network hears nothing of it), a pause
//! (SIGSTOP: nothing runs, the kernel still receives), a slow disk, a jump of the wall clock,
//! a restart, and a fatal storage error (EIO: the process stops, as `fatal` makes it in
//! production). A new cluster map reaches a running node at once (a paused one when it
//! resumes), as the control thread hands it to the shards.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chainlog_storage::io::FaultConfig;
use chainlog_storage::{
    Clock, DurabilityMode, Error as StoreError, FatalPanic, SimClock, SimDisk, Store, StoreConfig,
};

use super::env::{CatalogFiles, DiskSpeed, Shared, SimCatalogFile, SimEnv};
use super::world::{EndpointId, HostId};
use crate::node::catalog::{Catalog, StoreLogs};
use crate::node::control::MapUpdate;
use crate::node::metrics::Board;
use crate::node::protocol::Identity;
use crate::node::shard::{Shard, ShardParams, Signals};
use crate::node::ConnLimits;

/// The limits simulated nodes enforce: small frames and segments, so that a short run rolls
/// segments over, fills write buffers and splits batches.
pub(crate) fn limits() -> chainlog_net::Limits {
    chainlog_net::Limits {
        frame_bytes_max: 64 << 10,
        record_bytes_max: 16 << 10,
        batch_records_max: 64,
        ..chainlog_net::Limits::DEFAULT
    }
}

fn store_config() -> StoreConfig {
    let limits = limits();
    StoreConfig {
        segment_bytes: 1 << 20,
        batch_bytes_max: chainlog_storage::format::block_align(
            limits.frame_bytes_max as usize + chainlog_storage::format::FRAME_HEADER_BYTES,
        ),
        record_bytes_max: limits.record_bytes_max as usize,
        writes_in_flight_max: 4,
        write_buffers: 12,
        logs_max: 64,
        writers_max: 16,
        durability: DurabilityMode::Dsync,
        calibration_writes: 2,
    }
}

/// A machine's clocks: the world's monotonic time, and a wall clock that may be stepped away
/// from the world's (as NTP or an operator steps a real one). The node stamps records with
/// its wall clock and uses it for nothing else.
#[derive(Debug)]
pub(crate) struct NodeClock {
    world: SimClock,
    offset_us: AtomicI64,
}

impl Clock for NodeClock {
    fn wall_us(&self) -> u64 {
        self.world
            .wall_us()
            .saturating_add_signed(self.offset_us.load(Ordering::Relaxed))
    }

    fn monotonic_us(&self) -> u64 {
        self.world.monotonic_us()
    }
}

/// Why a node is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Down {
    /// Its process died (crash, power loss or a fatal error); it comes back when restarted.
    Dead,
}

/// A simulated node. See the module documentation.
#[derive(Debug)]
pub(crate) struct SimNode {
    pub(crate) id: u64,
    pub(crate) host: HostId,
    /// Shard 0's address (shard `i` at port + `i`).
    pub(crate) addr: SocketAddr,
    shard_count: u16,
    disk: SimDisk,
    catalogs: CatalogFiles,
    pub(crate) shards: Vec<Shard<SimEnv>>,
    endpoints: Vec<EndpointId>,
    /// Paused (SIGSTOP) until then.
    pub(crate) paused_until: Option<u64>,
    pub(crate) down: Option<Down>,
    /// A write or sync fails once in this many in its current life (0: never).
    pub(crate) eio_one_in: u32,
    /// How fast its disk is now.
    pub(crate) speed: DiskSpeed,
    clock: Arc<NodeClock>,
    /// The wall clock's offset from the world's over time: (from when, offset), in order.
    pub(crate) offsets: Vec<(u64, i64)>,
    /// A map to install when the node runs again (it was paused).
    map_pending: bool,
    /// A map was installed since the shards' last turns: each shard takes a turn at once. A
    /// node installs a map within a turn, whose rest (the replication pump, the sends, what
    /// installing reaped from the store) runs right after; the simulator installs between
    /// turns, so it owes every shard that rest. Installing syncs a shard's store, which may
    /// reap the completions of the shard's own operations (an accept, a timer): armed again
    /// only once handled, so the ring may hold nothing else to wake the shard (it then never
    /// accepted a connection again).
    turn_owed: bool,
    /// The version of the newest map its shards installed (what its heartbeats report).
    pub(crate) map_version: u64,
    starts: u64,
}

/// Why a node's process did not start.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// Its disk failed while a store recovered (an injected EIO): the process stops, as a
    /// fatal storage error stops it in production.
    Disk(String),
    /// A store or catalog refused what it found: a failed run.
    Refused(String),
}

impl SimNode {
    pub(crate) fn new(id: u64, shard_count: u16, disk: SimDisk) -> SimNode {
        let host = id as HostId;
        let clock = Arc::new(NodeClock {
            world: disk.clock(),
            offset_us: AtomicI64::new(0),
        });
        SimNode {
            id,
            host,
            addr: SocketAddr::from(([10, 0, 0, id as u8], 7400)),
            shard_count,
            disk,
            catalogs: CatalogFiles::default(),
            shards: Vec::new(),
            endpoints: Vec::new(),
            paused_until: None,
            down: Some(Down::Dead),
            eio_one_in: 0,
            speed: DiskSpeed::default(),
            clock,
            offsets: vec![(0, 0)],
            map_pending: false,
            turn_owed: false,
            map_version: 0,
            starts: 0,
        }
    }

    /// Steps the machine's wall clock by `by_us` at `now_us`.
    pub(crate) fn jump_clock(&mut self, now_us: u64, by_us: i64) {
        let offset = self.clock.offset_us.fetch_add(by_us, Ordering::Relaxed) + by_us;
        self.offsets.push((now_us, offset));
    }

    /// A new cluster map: installed at once if the node runs, when it resumes if it is
    /// paused, at its next start if it is down (every start installs the current map).
    /// Returns the reason the process stopped if installing it met a fatal storage error
    /// (a replica reset or cut on a failing disk): then it is dead.
    pub(crate) fn map_changed(&mut self, map: &MapUpdate, now_us: u64) -> Result<(), String> {
        if self.down.is_some() {
            return Ok(());
        }
        if self.paused_until.is_some_and(|t| t > now_us) {
            self.map_pending = true;
            return Ok(());
        }
        self.install(map)
    }

    /// Installs `map` on every shard; a fatal storage error stops the process, as in
    /// [`step`](Self::step).
    fn install(&mut self, map: &MapUpdate) -> Result<(), String> {
        for i in 0..self.shards.len() {
            let shard = &mut self.shards[i];
            let installed =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.install(map)));
            if let Err(payload) = installed {
                match payload.downcast::<FatalPanic>() {
                    Ok(fatal) => return Err(fatal.0.to_string()),
                    Err(other) => std::panic::resume_unwind(other),
                }
            }
        }
        self.map_version = map.map.version();
        self.turn_owed = true;
        Ok(())
    }

    /// Starts the node's process: opens every shard's store and catalog, listens, installs
    /// `map`. A store that does not open stops the process: with [`StartFailure::Disk`] if
    /// the disk failed under it (an EIO while recovering), else [`StartFailure::Refused`]
    /// (recovery refused what it found).
    pub(crate) fn start(
        &mut self,
        world: &Shared,
        map: &MapUpdate,
        seed: u64,
    ) -> Result<(), StartFailure> {
        assert!(self.shards.is_empty(), "node {} is running", self.id);
        self.starts += 1;
        self.map_pending = false;
        world.borrow_mut().host_up(self.host);
        let clock: Arc<dyn Clock> = self.clock.clone();
        let board: Board = Arc::new(std::sync::Mutex::new(vec![
            None;
            usize::from(self.shard_count)
        ]));
        for index in 0..self.shard_count {
            let endpoint = world.borrow_mut().endpoint();
            self.endpoints.push(endpoint);
            let faults = FaultConfig {
                seed: seed ^ (self.id << 32) ^ (u64::from(index) << 16) ^ self.starts,
                eio_write_one_in: self.eio_one_in,
                eio_sync_one_in: self.eio_one_in,
                latency_us_max: 400,
            };
            let env = SimEnv::new(
                self.disk.io(faults),
                world.clone(),
                endpoint,
                self.host,
                self.speed.clone(),
            );
            let dir = PathBuf::from(format!("/node-{}/shard-{index}", self.id));
            let store = match Store::open(env, &dir.join("store"), store_config(), clock.clone()) {
                Ok(store) => store,
                Err(e) => {
                    let reason = format!("node {} shard {index}: store: {e}", self.id);
                    // The shards opened so far go with the process.
                    self.kill(world, None);
                    return Err(match e {
                        StoreError::Io { .. } | StoreError::Fatal(_) => StartFailure::Disk(reason),
                        _ => StartFailure::Refused(reason),
                    });
                }
            };
            let logs = StoreLogs {
                new: store.recovery_report().segments == 0,
                log_ids: store.log_ids().collect(),
            };
            let file = SimCatalogFile {
                files: self.catalogs.clone(),
                path: dir.join("catalog"),
            };
            let catalog = match Catalog::load(Box::new(file), &logs) {
                Ok(catalog) => catalog,
                Err(e) => {
                    self.kill(world, None);
                    return Err(StartFailure::Refused(format!(
                        "node {} shard {index}: {e}",
                        self.id
                    )));
                }
            };
            let mut addr = self.addr;
            addr.set_port(addr.port() + index);
            let listener = world.borrow_mut().listen(endpoint, self.host, addr);
            let limits = limits();
            let params = ShardParams {
                identity: Identity {
                    shard_index: index,
                    shard_count: self.shard_count,
                    node_id: self.id,
                    limits,
                    cluster: true,
                },
                recv_bytes: 2 * limits.frame_bytes_max as usize,
                in_flight_max: limits.in_flight_max as usize,
                conn_limits: ConnLimits::DEFAULT,
            };
            let mut shard = Shard::new(
                params,
                store,
                catalog,
                clock.clone(),
                listener,
                board.clone(),
                Signals::default(),
            );
            shard.start();
            self.shards.push(shard);
        }
        if let Err(reason) = self.install(map) {
            self.kill(world, None);
            return Err(StartFailure::Disk(reason));
        }
        self.down = None;
        Ok(())
    }

    /// The process dies (kill -9 or a fatal error): its sockets reset, its operations in
    /// flight are lost, what the device completed stays. With `power_loss`, the machine loses
    /// power too: only what was flushed survives, one write may be torn, and its peers hear
    /// nothing until it is back.
    pub(crate) fn kill(&mut self, world: &Shared, power_loss: Option<u64>) {
        let silent = power_loss.map(|_| self.host);
        world.borrow_mut().kill(&self.endpoints, silent);
        if let Some(host) = silent {
            world.borrow_mut().host_down(host);
        }
        // The world forgot every operation of these endpoints (no receive into a buffer that
        // is about to be freed remains), so the shards can go.
        self.shards.clear();
        self.endpoints.clear();
        if let Some(seed) = power_loss {
            self.disk.crash(seed);
        }
        self.paused_until = None;
        self.down = Some(Down::Dead);
    }

    /// Runs one turn of every shard that has something to do now. Returns whether any ran,
    /// or the reason the process stopped on a fatal error (then it is dead).
    pub(crate) fn step(&mut self, now_us: u64, map: &MapUpdate) -> Result<bool, String> {
        if self.down.is_some() || self.paused_until.is_some_and(|t| t > now_us) {
            return Ok(false);
        }
        self.paused_until = None;
        if std::mem::take(&mut self.map_pending) {
            self.install(map)?;
        }
        let owed = std::mem::take(&mut self.turn_owed);
        let mut ran = owed;
        for i in 0..self.shards.len() {
            if !owed && self.shards[i].env().next_us().is_none_or(|t| t > now_us) {
                continue;
            }
            ran = true;
            let shard = &mut self.shards[i];
            let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.turn(false)));
            match turn {
                Ok(_) => {}
                Err(payload) => match payload.downcast::<FatalPanic>() {
                    Ok(fatal) => return Err(fatal.0.to_string()),
                    Err(other) => std::panic::resume_unwind(other),
                },
            }
        }
        Ok(ran)
    }

    /// When this node has something to do next (if it runs).
    pub(crate) fn next_us(&self) -> Option<u64> {
        if self.down.is_some() {
            return None;
        }
        let next = if self.turn_owed {
            Some(0) // Now.
        } else {
            self.shards.iter().filter_map(|s| s.env().next_us()).min()
        };
        match self.paused_until {
            Some(until) => next.map(|t| t.max(until)),
            None => next,
        }
    }

    /// The shard of this node that holds `log_id`.
    pub(crate) fn shard_of(&mut self, log_id: u64) -> Option<&mut Shard<SimEnv>> {
        let index = (log_id % u64::from(self.shard_count)) as usize;
        self.shards.get_mut(index)
    }

    /// Where clients reach the shard of `log_id`.
    pub(crate) fn addr_of(&self, log_id: u64) -> SocketAddr {
        let mut addr = self.addr;
        addr.set_port(addr.port() + (log_id % u64::from(self.shard_count)) as u16);
        addr
    }
}
