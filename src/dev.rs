//! The local dev cluster (`chainlog dev`, `chainlog-bench --dev N`): node processes on
//! loopback, children of this process, always torn down.
//!
//! [`DevCluster::start`] picks free loopback ports, launches each node with a [`Launcher`]
//! (this executable's `node` subcommand, usually), waits until every node answers a client and
//! returns the addresses. [`DevCluster::stop`] (and `Drop`) sends SIGTERM, waits, then
//! SIGKILLs what is left. If this process dies without stopping them (kill -9), the kernel
//! kills the nodes: each is started with `PR_SET_PDEATHSIG`. So no node outlives its cluster.
//!
//! Layout of the data directory (a temp dir removed on stop, or a given one that is kept):
//! node `i` (from 1) keeps its data in `DIR/node-i` and writes its log (stderr) to
//! `DIR/node-i.log`.
//!
//! Today a cluster is one node with replication factor 1. More nodes or rf > 1 need the
//! controller and chain replication (DESIGN.md sections 5 and 6), which are not built yet, so
//! [`DevOptions`] asking for them is refused with [`DevError::ReplicationNotBuilt`]; when they
//! land, the cluster starts the controller first and points the nodes at it.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError};

/// How long [`DevCluster::start`] waits for every node to answer, by default: generous,
/// because a node measures the disk at startup (`--durability auto`).
pub const READY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// How long [`DevCluster::stop`] lets the nodes finish after SIGTERM before it SIGKILLs them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two readiness probes of a node, and between two looks at a stopping one.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Lines of a node's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 20;
/// Tries at finding a run of free consecutive ports before giving up.
const PORT_TRIES_MAX: usize = 64;

/// How to run a node: `program args_prefix... --data-dir D --listen A ...`, where
/// `args_prefix` selects the node subcommand (e.g. `["node"]`) and the rest are `chainlog
/// node`'s flags ([`crate::node::NodeArgs`]).
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The executable.
    pub program: PathBuf,
    /// The arguments before the node's flags.
    pub args_prefix: Vec<String>,
}

impl Launcher {
    /// This process's own executable, with `args_prefix` (e.g. `["node"]`).
    pub fn current_exe(args_prefix: &[&str]) -> Result<Launcher, DevError> {
        let program = std::env::current_exe().map_err(|source| DevError::Io {
            what: "finding this executable".into(),
            source,
        })?;
        Ok(Launcher {
            program,
            args_prefix: args_prefix.iter().map(|a| a.to_string()).collect(),
        })
    }
}

/// What [`DevCluster::start`] starts.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Nodes (at least 1; more than 1 needs chain replication, not built yet).
    pub nodes: usize,
    /// Replication factor of the logs (at least 1, at most `nodes`).
    pub rf: usize,
    /// Shards per node (at least 1).
    pub shards: usize,
    /// Where the nodes keep their data and logs; kept after stop. `None`: a temp dir,
    /// removed on stop.
    pub data_dir: Option<PathBuf>,
    /// How to run a node.
    pub launcher: Launcher,
    /// How long to wait for every node to answer.
    pub ready_timeout: Duration,
}

impl DevOptions {
    /// One node, rf 1, one shard, a temp dir, the default readiness timeout.
    pub fn new(launcher: Launcher) -> DevOptions {
        DevOptions {
            nodes: 1,
            rf: 1,
            shards: 1,
            data_dir: None,
            launcher,
            ready_timeout: READY_TIMEOUT_DEFAULT,
        }
    }

    /// Refuses what cannot run: zero counts, rf above the nodes, shards whose ports cannot
    /// exist, and (today) anything but one node with rf 1.
    fn check(&self) -> Result<(), DevError> {
        if self.nodes == 0 || self.rf == 0 || self.shards == 0 {
            return Err(DevError::Invalid(format!(
                "nodes, rf and shards must be at least 1 (got {}, {} and {})",
                self.nodes, self.rf, self.shards
            )));
        }
        if self.rf > self.nodes {
            return Err(DevError::Invalid(format!(
                "rf {} needs at least {} nodes (got {})",
                self.rf, self.rf, self.nodes
            )));
        }
        // A node needs a port per shard and one for its metrics, below 65536.
        if self.shards >= usize::from(u16::MAX) / 2 {
            return Err(DevError::Invalid(format!(
                "{} shards per node need more ports than loopback has",
                self.shards
            )));
        }
        if self.nodes > 1 || self.rf > 1 {
            return Err(DevError::ReplicationNotBuilt {
                nodes: self.nodes,
                rf: self.rf,
            });
        }
        Ok(())
    }
}

/// Why a dev cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The options are not a cluster that can exist.
    #[error("{0}")]
    Invalid(String),
    /// More than one node, or rf > 1: that needs chain replication.
    #[error(
        "a dev cluster of {nodes} node(s) with rf {rf} needs chain replication and the \
         controller, which are not built yet: for now it is one node with rf 1 (--nodes 1 --rf 1)"
    )]
    ReplicationNotBuilt {
        /// The nodes asked for.
        nodes: usize,
        /// The replication factor asked for.
        rf: usize,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A node failed: it exited (before it served, or later while the cluster ran), or it
    /// did not answer in time.
    #[error("node {node} {failure}; the end of its log {}:\n{tail}", log.display())]
    Node {
        /// The node's id.
        node: u64,
        /// What happened (boxed: keeps every `Result<_, DevError>` small).
        failure: Box<NodeFailure>,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
}

/// How a node failed ([`DevError::Node`]).
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    /// It exited.
    #[error("exited ({0})")]
    Exited(ExitStatus),
    /// It did not answer within the readiness timeout.
    #[error("did not answer at {addr} within {after:?} (last: {last})")]
    NotReady {
        /// Its shard-0 address.
        addr: SocketAddr,
        /// How long it was waited for.
        after: Duration,
        /// The last probe's error.
        last: String,
    },
}

/// One node of a dev cluster: a child process.
#[derive(Debug)]
pub struct DevNode {
    id: u64,
    addr: SocketAddr,
    metrics: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
    /// Set once the child has been reaped: its pid is no longer ours to signal.
    exited: Option<ExitStatus>,
}

impl DevNode {
    /// The node's id (1, 2, ...).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Shard 0's address; shard `i` listens on the same host at port + `i`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the node serves Prometheus metrics.
    pub fn metrics(&self) -> SocketAddr {
        self.metrics
    }

    /// `http://ADDR/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics)
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The node's log file (its stderr).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the node exited, if it has (reaping it), without waiting.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            // An error here means the child is already reaped, which only this type does.
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn failed(&self, failure: NodeFailure) -> DevError {
        DevError::Node {
            node: self.id,
            failure: Box::new(failure),
            log: self.log.clone(),
            tail: log_tail(&self.log),
        }
    }

    fn signal(&self, signal: libc::c_int) {
        if self.exited.is_none() {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is not reused.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }
}

/// A running dev cluster. Dropping it stops it (see [`DevCluster::stop`]).
#[derive(Debug)]
pub struct DevCluster {
    nodes: Vec<DevNode>,
    spawner: Spawner,
    dir: DataDir,
}

#[derive(Debug)]
enum DataDir {
    /// Removed when dropped, after the nodes have stopped.
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(dir) => dir.path(),
            DataDir::Kept(dir) => dir,
        }
    }
}

impl DevCluster {
    /// Starts the cluster and returns once every node answers (a HELLO and a LIST_LOGS on
    /// every shard). On any error, what was started is stopped again.
    pub async fn start(options: DevOptions) -> Result<DevCluster, DevError> {
        options.check()?;
        let dir = match &options.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| DevError::Io {
                    what: format!("creating {}", dir.display()),
                    source,
                })?;
                DataDir::Kept(dir.clone())
            }
            None => DataDir::Temp(
                tempfile::Builder::new()
                    .prefix("chainlog-dev-")
                    .tempdir()
                    .map_err(|source| DevError::Io {
                        what: "creating a temp dir".into(),
                        source,
                    })?,
            ),
        };
        let mut cluster = DevCluster {
            nodes: Vec::new(),
            spawner: Spawner::start()?,
            dir,
        };
        // From here on an error drops `cluster`, which stops every node started so far.
        let ports = u16::try_from(options.shards + 1).expect("checked by DevOptions::check");
        // Every node's ports are held until all are chosen, so that no two nodes share one.
        let mut held = Vec::new();
        let mut bases = Vec::new();
        for _ in 0..options.nodes {
            let (base, listeners) = reserve_ports(ports).map_err(|source| DevError::Io {
                what: format!("finding {ports} free consecutive loopback ports"),
                source,
            })?;
            held.extend(listeners);
            bases.push(base);
        }
        drop(held);
        for (index, base) in bases.into_iter().enumerate() {
            let id = index as u64 + 1;
            let node = cluster.launch(&options, id, base)?;
            cluster.nodes.push(node);
        }
        let deadline = Instant::now() + options.ready_timeout;
        for node in &mut cluster.nodes {
            wait_ready(node, deadline, options.ready_timeout).await?;
        }
        Ok(cluster)
    }

    fn launch(&self, options: &DevOptions, id: u64, base: u16) -> Result<DevNode, DevError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, base));
        let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, base + options.shards as u16));
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let log = self.dir.path().join(format!("node-{id}.log"));
        let log_file = File::create(&log).map_err(|source| DevError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let mut command = Command::new(&options.launcher.program);
        command
            .args(&options.launcher.args_prefix)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--shards")
            .arg(options.shards.to_string())
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--node-id")
            .arg(id.to_string())
            // Several nodes share this machine's cores: pinning each node's shard i to core i
            // would stack them.
            .arg("--no-pin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // Its own process group: a Ctrl-C at the terminal reaches this process only,
            // which then stops the nodes in order.
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, getppid), without allocating.
        unsafe {
            command.pre_exec(move || {
                // SIGKILL, not SIGTERM: a parent that died without stopping its nodes left
                // nobody to wait for a graceful stop, and a node's store recovers from a kill.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl: then nobody would ever signal us.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        // std resets the child's signal mask and dispositions, so a parent that blocks
        // SIGTERM (to take it with sigtimedwait) does not pass the block on to its nodes.
        let child = self.spawner.spawn(command).map_err(|source| DevError::Io {
            what: format!("starting {}", options.launcher.program.display()),
            source,
        })?;
        Ok(DevNode {
            id,
            addr,
            metrics,
            data_dir,
            log,
            child,
            exited: None,
        })
    }

    /// The nodes, by id.
    pub fn nodes(&self) -> &[DevNode] {
        &self.nodes
    }

    /// Where clients connect: node 1's shard 0.
    pub fn target(&self) -> SocketAddr {
        self.nodes[0].addr
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the data directory is removed on stop (a temp dir).
    pub fn is_temporary(&self) -> bool {
        matches!(self.dir, DataDir::Temp(_))
    }

    /// `Err` if a node has exited on its own (with its log's tail), without waiting.
    pub fn check(&mut self) -> Result<(), DevError> {
        for node in &mut self.nodes {
            if let Some(status) = node.poll_exit() {
                return Err(node.failed(NodeFailure::Exited(status)));
            }
        }
        Ok(())
    }

    /// Stops every node: SIGTERM (a graceful stop), up to [`STOP_TIMEOUT`] to finish, then
    /// SIGKILL; every child is reaped. Then removes the data directory if it is a temp dir.
    pub fn stop(self) {
        drop(self)
    }

    fn stop_nodes(&mut self) {
        // Reverse order: when there is a controller it goes first and stops last.
        for node in self.nodes.iter_mut().rev() {
            node.poll_exit();
            node.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for node in self.nodes.iter_mut().rev() {
            while node.poll_exit().is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL_EVERY);
            }
            if node.poll_exit().is_none() {
                tracing::warn!(
                    node = node.id,
                    pid = node.pid(),
                    "no stop after SIGTERM: SIGKILL"
                );
                node.signal(libc::SIGKILL);
                node.exited = node.child.wait().ok();
            }
            match node.exited {
                Some(status) if !status.success() => {
                    tracing::warn!(node = node.id, %status, log = %node.log.display(), "node exited with a failure");
                }
                _ => {}
            }
        }
        self.nodes.clear();
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop_nodes();
        // Only now may the spawning thread end (its end would SIGKILL the nodes); the temp
        // dir is removed after this, when `dir` drops.
        self.spawner.finish();
    }
}

/// The thread that forks the nodes. `PR_SET_PDEATHSIG` fires when the *thread* that forked a
/// child exits, not the process: a node forked from a tokio worker or from some short-lived
/// thread would be killed when that thread ends. This thread lives as long as the cluster.
#[derive(Debug)]
struct Spawner {
    requests: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<JoinHandle<()>>,
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

impl Spawner {
    fn start() -> Result<Spawner, DevError> {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("dev-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let spawned = command.spawn();
                    if let Err(Ok(mut child)) = reply.send(spawned).map_err(|e| e.0) {
                        // Nobody is waiting for it any more: it must not outlive us.
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            })
            .map_err(|source| DevError::Io {
                what: "starting the spawner thread".into(),
                source,
            })?;
        Ok(Spawner {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    fn spawn(&self, command: Command) -> io::Result<Child> {
        let gone = || io::Error::other("the spawner thread is gone");
        let (reply, answer) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send((command, reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// Ends the thread (call once every child is reaped).
    fn finish(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `count` free consecutive loopback ports, held bound (so that nobody else takes them while
/// more are chosen) until the listeners are dropped.
fn reserve_ports(count: u16) -> io::Result<(u16, Vec<TcpListener>)> {
    for _ in 0..PORT_TRIES_MAX {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let base = first.local_addr()?.port();
        if base.checked_add(count - 1).is_none() {
            continue;
        }
        let mut held = vec![first];
        for port in base + 1..base + count {
            match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(listener) => held.push(listener),
                Err(_) => break,
            }
        }
        if held.len() == usize::from(count) {
            return Ok((base, held));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no run of {count} free ports in {PORT_TRIES_MAX} tries"),
    ))
}

/// Waits until `node` answers on every shard, or exits, or `deadline` passes.
async fn wait_ready(
    node: &mut DevNode,
    deadline: Instant,
    after: Duration,
) -> Result<(), DevError> {
    loop {
        if let Some(status) = node.poll_exit() {
            return Err(node.failed(NodeFailure::Exited(status)));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(left, probe(node.addr)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if Instant::now() >= deadline {
            return Err(node.failed(NodeFailure::NotReady {
                addr: node.addr,
                after,
                last,
            }));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A HELLO on shard 0, then a LIST_LOGS on every shard.
async fn probe(addr: SocketAddr) -> Result<(), ClientError> {
    let client = Client::connect(addr).await?;
    client.list_logs().await?;
    Ok(())
}

/// The last lines of a node's log, or why it could not be read.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            if tail.is_empty() {
                "(empty)".to_string()
            } else {
                tail.join("\n")
            }
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(nodes: usize, rf: usize) -> DevOptions {
        DevOptions {
            nodes,
            rf,
            ..DevOptions::new(Launcher {
                program: PathBuf::from("/bin/true"),
                args_prefix: Vec::new(),
            })
        }
    }

    #[test]
    fn more_than_one_node_or_rf_is_refused_until_replication_exists() {
        assert!(options(1, 1).check().is_ok());
        for (nodes, rf) in [(2, 1), (3, 3), (2, 2)] {
            let e = options(nodes, rf).check().expect_err("needs replication");
            assert!(matches!(e, DevError::ReplicationNotBuilt { .. }), "{e}");
            assert!(e.to_string().contains("chain replication"), "{e}");
        }
        let e = options(1, 2).check().expect_err("rf above nodes");
        assert!(matches!(e, DevError::Invalid(_)), "{e}");
        let e = options(0, 1).check().expect_err("no nodes");
        assert!(matches!(e, DevError::Invalid(_)), "{e}");
    }

    #[test]
    fn reserved_ports_are_consecutive_and_held() {
        let (base, held) = reserve_ports(3).expect("ports");
        assert_eq!(held.len(), 3);
        for (i, listener) in held.iter().enumerate() {
            assert_eq!(listener.local_addr().expect("addr").port(), base + i as u16);
        }
    }

    #[test]
    fn a_launcher_that_exits_at_once_is_reported_with_its_log() {
        let mut options = options(1, 1);
        options.launcher = Launcher {
            program: PathBuf::from("/bin/sh"),
            args_prefix: vec!["-c".into(), "echo cannot start >&2; exit 3".into()],
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let e = runtime
            .block_on(DevCluster::start(options))
            .expect_err("the node exits");
        match &e {
            DevError::Node {
                node,
                failure,
                tail,
                ..
            } => {
                let NodeFailure::Exited(status) = **failure else {
                    panic!("{e}")
                };
                assert_eq!((*node, status.code()), (1, Some(3)));
                assert!(tail.contains("cannot start"), "{e}");
            }
            other => panic!("{other}"),
        }
    }
}
