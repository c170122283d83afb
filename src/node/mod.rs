//! The chainlog node: one pinned shard thread per core, each owning a store, its sockets and
//! one io_uring that drives both (ARCHITECTURE.md, "Shards"). Shard `i` listens on the base
//! port + `i` and serves the logs with `log_id % shards == i`; the main thread binds every
//! listening socket ([`listen`]), starts the shards, says where the node serves once they all
//! do, and turns SIGTERM/SIGINT into a graceful stop. A cluster member also runs a control
//! thread ([`control`]) that talks to the controller and hands the cluster map to the shards,
//! which replicate their logs along their chains ([`chain`]).
//!
//! Inside a shard ([`shard`]): the protocol ([`protocol`]: decode or refuse, dispatch, answers
//! in order) calls the shard's replication state ([`replicas`]) through a narrow API and keeps
//! each connection's subscriptions ([`subscriptions`]); the links ([`chain`]) carry what
//! replication leaves for the end of each turn. Catch-up and subscriptions read older records
//! without blocking the shard ([`reads`]).

pub mod catalog;
pub(crate) mod chain;
mod conn;
pub use conn::ConnLimits;
pub(crate) mod control;
pub(crate) mod env;
mod learners;
mod link;
pub mod listen;
pub(crate) mod metrics;
pub(crate) mod ops;
pub(crate) mod protocol;
mod reads;
mod records;
mod refusal;
mod replicas;
mod settings;
pub(crate) mod shard;
mod subscriptions;

pub use listen::Serving;
pub use settings::{NodeArgs, NodeSettings};

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chainlog_storage::StoreConfig;

use crate::signals::StopSignals;

/// A node's settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Data directory: shard `i` keeps its store in `DIR/shard-i`.
    pub data_dir: PathBuf,
    /// Address of shard 0; shard `i` listens on the same host and port + `i`. Port 0: the node
    /// binds a run of free consecutive ports it finds ([`listen::bind_run`]).
    pub listen: SocketAddr,
    /// Shard threads (default: one per core).
    pub shards: usize,
    /// Pin shard `i` to core `i % cores`.
    pub pin: bool,
    /// The store of each shard.
    pub store: StoreConfig,
    /// Receive buffer per connection (at least the largest frame).
    pub recv_bytes: usize,
    /// Requests a connection may have unanswered before the shard stops reading it.
    pub in_flight_max: usize,
    /// How many connections a shard holds, and how long a silent one is kept.
    pub conn_limits: ConnLimits,
    /// The protocol limits the node enforces.
    pub limits: chainlog_net::Limits,
    /// This node's id (reported in HELLO).
    pub node_id: u64,
    /// Where `GET /metrics` is served (Prometheus text).
    pub metrics: MetricsAt,
    /// The controller of the cluster this node is a member of (`None`: standalone).
    pub controller: Option<SocketAddr>,
    /// Where other nodes and clients reach shard 0 (`None`: the address shard 0 is bound to).
    pub advertise: Option<SocketAddr>,
    /// The failure zone it registers in (empty: none): the controller spreads a chain's
    /// replicas over zones.
    pub zone: String,
    /// Its rack within the zone (empty: none).
    pub rack: String,
}

/// Where a node serves `GET /metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAt {
    /// Nowhere.
    Off,
    /// On the listen host at the port after the last shard's, bound with the shards' ports.
    AfterShards,
    /// At this address (port 0: one the kernel picks).
    Addr(SocketAddr),
}

/// Why a node stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A shard could not start or failed.
    #[error("shard {shard}: {reason}")]
    Shard {
        /// The shard.
        shard: usize,
        /// What went wrong.
        reason: String,
    },
    /// A listening socket could not be bound.
    #[error("{0}")]
    Listen(String),
    /// Setting up signal handling failed.
    #[error("signals: {0}")]
    Signals(std::io::Error),
}

/// Runs the node until SIGTERM or SIGINT (then stops gracefully: no new connections, what is
/// in flight is finished and flushed) or until a shard fails. Once every shard serves, prints
/// where ([`Serving`]) on stdout.
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    exit_on_panic();
    return_freed_buffers();
    // Blocked before the shard threads start, so that they inherit the block.
    let signals = StopSignals::block().map_err(NodeError::Signals)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (listeners, metrics_listener) = bind(&config)?;
    let shard0 = listeners[0]
        .local_addr()
        .map_err(|e| NodeError::Listen(format!("shard 0: {e}")))?;
    let board: metrics::Board =
        std::sync::Arc::new(std::sync::Mutex::new(vec![None; config.shards]));
    let metrics = match metrics_listener {
        Some(listener) => {
            let local = metrics::serve(listener, board.clone())
                .map_err(|e| NodeError::Listen(format!("metrics: {e}")))?;
            tracing::info!(%local, "metrics served at /metrics");
            Some(local)
        }
        None => None,
    };
    let startup = std::sync::Arc::new(Startup {
        left: AtomicUsize::new(config.shards),
        serving: Serving {
            addr: shard0,
            shards: config.shards as u16,
            metrics,
        },
    });
    let mut shards = Vec::new();
    let mut controls = Vec::new();
    let nudge = std::sync::Arc::new(control::Nudge::default());
    for (index, listener) in listeners.into_iter().enumerate() {
        let setup = |what: &str, e: std::io::Error| NodeError::Shard {
            shard: index,
            reason: format!("{what}: {e}"),
        };
        let stop = eventfd().map_err(|e| setup("eventfd", e))?;
        let wake = stop.try_clone().map_err(|e| setup("dup", e))?;
        let control = match config.controller {
            Some(_) => {
                let (control, inbox) = control::channel(&nudge).map_err(|e| setup("eventfd", e))?;
                controls.push(control);
                Some(inbox)
            }
            None => None,
        };
        let ctx = shard::ShardContext {
            index: index as u16,
            count: config.shards as u16,
            dir: config.data_dir.join(format!("shard-{index}")),
            store: config.store.clone(),
            recv_bytes: config.recv_bytes,
            in_flight_max: config.in_flight_max,
            conn_limits: config.conn_limits,
            limits: config.limits,
            node_id: config.node_id,
            core: config.pin.then_some(index % cores),
            board: board.clone(),
            stop,
            control,
            startup: startup.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || shard::run(ctx, listener))
            .map_err(|e| NodeError::Shard {
                shard: index,
                reason: format!("spawn: {e}"),
            })?;
        shards.push((handle, wake));
    }
    tracing::info!(shards = config.shards, listen = %shard0, "node started");
    let control_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control_thread = match config.controller {
        Some(controller) => {
            let me = control::Identity {
                node_id: config.node_id,
                advertise: config.advertise.unwrap_or(shard0),
                shards: config.shards as u16,
                zone: config.zone.clone(),
                rack: config.rack.clone(),
            };
            let stop = control_stop.clone();
            let spawned = std::thread::Builder::new()
                .name("control".into())
                .spawn(move || control::run(controller, me, controls, nudge, stop));
            Some(spawned.map_err(|e| NodeError::Shard {
                shard: 0,
                reason: format!("spawn the control thread: {e}"),
            })?)
        }
        None => None,
    };
    let result = supervise(shards, &signals);
    control_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(thread) = control_thread {
        let _ = thread.join();
    }
    result
}

/// Every shard's listener (shard `i` at the listen port + `i`) and the metrics listener, if
/// the node serves metrics: bound here, before any shard starts, and held until the shards and
/// the metrics thread take them.
fn bind(config: &NodeConfig) -> Result<(Vec<TcpListener>, Option<TcpListener>), NodeError> {
    let after_shards = config.metrics == MetricsAt::AfterShards;
    let count = config.shards + usize::from(after_shards);
    let mut run = listen::bind_run(config.listen, count).map_err(|e| {
        let what = match &e {
            listen::BindError::Port { index, .. } if *index < config.shards => {
                format!("shard {index}")
            }
            listen::BindError::Port { .. } => "metrics".to_string(),
            listen::BindError::NoRun { .. } => "listening".to_string(),
        };
        NodeError::Listen(format!("{what}: {e}"))
    })?;
    let metrics = match config.metrics {
        MetricsAt::Off => None,
        MetricsAt::AfterShards => run.pop(),
        MetricsAt::Addr(addr) => Some(
            TcpListener::bind(addr)
                .map_err(|e| NodeError::Listen(format!("metrics: listening on {addr}: {e}")))?,
        ),
    };
    Ok((run, metrics))
}

/// Counts the shards that serve; the last one to start serving prints the node's [`Serving`]
/// line on stdout.
#[derive(Debug)]
pub(crate) struct Startup {
    left: AtomicUsize,
    serving: Serving,
}

impl Startup {
    /// A shard serves (called once by each).
    pub(crate) fn shard_serving(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut out = std::io::stdout().lock();
            // A closed stdout must not stop the node.
            let _ = writeln!(out, "{}", self.serving);
            let _ = out.flush();
        }
    }
}

/// Waits for a stop signal (then stops every shard gracefully) or for a shard to end.
fn supervise(
    mut shards: Vec<(std::thread::JoinHandle<Result<(), String>>, OwnedFd)>,
    signals: &StopSignals,
) -> Result<(), NodeError> {
    let mut stopping = false;
    loop {
        let finished = shards.iter().position(|(h, _)| h.is_finished());
        if let Some(i) = finished {
            let (handle, _) = shards.swap_remove(i);
            // Named `shard-N` when spawned; `i` is only its place in what is left.
            let shard = handle
                .thread()
                .name()
                .and_then(|n| n.strip_prefix("shard-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(i);
            let result = handle
                .join()
                .unwrap_or_else(|_| Err("the shard thread panicked".into()));
            if let Err(reason) = result {
                stop_all(&shards);
                for (h, _) in shards {
                    let _ = h.join();
                }
                return Err(NodeError::Shard { shard, reason });
            }
            if shards.is_empty() {
                return Ok(());
            }
            continue;
        }
        if !stopping && signals.wait(Duration::from_millis(100)) {
            tracing::info!("stop signal: finishing what is in flight");
            stopping = true;
            stop_all(&shards);
        } else if stopping {
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

/// The exit code of a node stopped by a panic (a bug: an invariant did not hold).
pub const PANIC_EXIT_CODE: i32 = 101;

/// Makes the allocator hand every buffer of [`conn::RECV_START_BYTES`] or more back to the
/// system when it is freed. glibc raises its mmap threshold to the largest block freed, so
/// once a connection's buffer had been freed the next ones came from the heap, zeroed page
/// by page, and stayed there after their connections closed: 300 idle connections took
/// 350 MB, and kept it (issue 15).
fn return_freed_buffers() {
    let threshold = conn::RECV_START_BYTES as libc::c_int;
    // SAFETY: mallopt only sets an allocator parameter; called before the shards start.
    if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) } != 1 {
        tracing::warn!("the allocator's mmap threshold could not be set");
    }
}

/// Makes a panic in any thread of the process stop it at once, after the usual report, with
/// [`PANIC_EXIT_CODE`]. A panic is a bug that leaves the node's state unknown, and unwinding a
/// shard does not end it: its ring waits, in its drop, for operations that never complete (a
/// read of an eventfd, an accept), so the node stayed half-alive, its listener accepting and
/// nobody answering, and its chains never reconfigured. A node that exits is a failure the
/// controller handles.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(%info, "a thread of the node panicked: stopping");
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

/// A new eventfd (a shard's ring reads it to learn of a stop or of news).
fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stop_all(shards: &[(std::thread::JoinHandle<Result<(), String>>, OwnedFd)]) {
    for (_, wake) in shards {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use chainlog_storage::UringIo;

    use chainlog_storage::io::Io;

    use super::env::{Net, RealEnv};
    use super::ops::{NetOp, NetToken};
    use super::*;

    /// Set in the child process of the test below, which runs the test again in it.
    const CHILD: &str = "CHAINLOG_TEST_PANICKING_SHARD";
    const NAME: &str = "node::tests::a_panic_in_a_shard_thread_stops_the_process";

    /// The child's part: a "shard" thread with a read of an eventfd in its ring (as every shard
    /// has: its stop and control eventfds) panics. Unwinding it never ends (the ring waits for
    /// that read in its drop); with the hook, the process exits.
    fn panicking_shard() -> ! {
        exit_on_panic();
        let shard = std::thread::spawn(|| {
            let event = eventfd().expect("an eventfd");
            let mut env = RealEnv::new(UringIo::new(8).expect("a ring"));
            env.read_event(event.as_raw_fd(), NetToken::of(NetOp::Stop));
            // In the kernel, as a shard's turn leaves it.
            env.wait(0, &mut Vec::new()).expect("submitted");
            panic!("an invariant of the shard did not hold");
        });
        let _ = shard.join();
        std::process::exit(0);
    }

    #[test]
    fn a_panic_in_a_shard_thread_stops_the_process() {
        if std::env::var_os(CHILD).is_some() {
            panicking_shard();
        }
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the test again in a child");
        // Not a timing assertion: without the hook the child never ends.
        let give_up = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > give_up {
                child.kill().expect("kill the hung child");
                child.wait().expect("reap");
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let status = status.expect("the process stopped after a shard panicked (it hung)");
        assert_eq!(status.code(), Some(PANIC_EXIT_CODE));
    }
}
