//! The local dev cluster (`chainlog dev`, `chainlog-bench --dev N`): a controller and node
//! processes on loopback, children of this process, always torn down.
//!
//! **Members die and come back.** Once started, the cluster goes on when a member exits (or
//! is killed: [`DevCluster::signal`]); [`DevCluster::exited`] reports each exit once, with
//! the end of the member's log, and [`DevCluster::restart`] starts a member that exited again,
//! with its data directory and its log file (appended to). A node restarts on new ports (it
//! registers its new address with the controller, and clients follow the map); the
//! controller restarts on the port it had, since the nodes know it by that address (if that
//! port was taken meanwhile, the restart fails and says so). The controller serves its
//! metrics ([`DevCluster::controller_metrics`]).
//!
//! [`DevCluster::start`] launches the processes with a [`Launcher`] (this executable's
//! `controller` and `node` subcommands, usually), each on loopback port 0: the process binds
//! free ports itself and says where it serves on stdout (`chainlog controller: serving at
//! ADDR`, a node's [`Serving`] line), and the cluster takes the addresses from there, so no
//! port is ever chosen here and released for a process to bind later. One node with
//! replication factor 1 is a standalone node, as `chainlog node` runs it alone. More nodes, or
//! rf above 1, make a cluster: the controller starts first, then the nodes with `--controller
//! ADDR --node-id i`; the cluster is ready once every node serves and the controller's map
//! shows every node alive, and clients use the controller's address
//! ([`DevCluster::target`]). [`DevCluster::stop`] (and `Drop`) sends SIGTERM to the nodes,
//! waits, SIGKILLs what is left, then does the same to the controller. If this process dies
//! without stopping them (kill -9), the kernel kills them: each is started with
//! `PR_SET_PDEATHSIG`. So no process outlives its cluster.
//!
//! Layout of the data directory (a temp dir removed on stop, or a given one that is kept):
//! node `i` (from 1) keeps its data in `DIR/node-i` and writes its log (stderr) to
//! `DIR/node-i.log`; the controller keeps its state in `DIR/controller` and its log in
//! `DIR/controller.log`. A temp dir also names the process that owns it (`DIR/owner`: its pid
//! and start time): a cluster whose owner was killed with kill -9 could not remove its temp
//! dir, and the next cluster started removes such stale dirs, only those whose owner is gone.

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::controller::server::parse_serving as parse_controller_serving;
use crate::node::Serving;

/// How long [`DevCluster::start`] waits for every process to answer, by default: generous,
/// because a node measures the disk at startup (`--durability auto`).
pub const READY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// How long [`DevCluster::stop`] lets the processes finish after SIGTERM before it SIGKILLs
/// them.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two readiness probes of a process, and between two looks at a stopping one.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Lines of a process's log quoted when it fails to start.
const LOG_TAIL_LINES: usize = 20;
/// Where every process of the cluster listens: loopback, at ports it binds itself.
const LISTEN: &str = "127.0.0.1:0";
/// A process's address until it says where it serves.
const UNKNOWN_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// The start of a temp data directory's name (in the system's temp dir).
const TEMP_PREFIX: &str = "chainlog-dev-";
/// The file in a temp data directory that names the process owning it: `PID STARTTIME`.
const OWNER_FILE: &str = "owner";
/// Replicas of a chain at most (the wire's `replication_factor` is a u8).
const RF_MAX: usize = u8::MAX as usize;

/// How to run the cluster's processes: `program node_prefix... --data-dir D --listen
/// 127.0.0.1:0 ...` for a node, where `node_prefix` selects the node subcommand (e.g.
/// `["node"]`) and the rest are `chainlog node`'s flags ([`crate::node::NodeArgs`]); `program
/// controller_prefix... --data-dir D --listen 127.0.0.1:0` for the controller, whose flags are
/// `chainlog controller`'s ([`crate::controller::ControllerArgs`]). Each must say where it
/// serves on its stdout's first line, as `chainlog node` and `chainlog controller` do.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The executable.
    pub program: PathBuf,
    /// The arguments before a node's flags.
    pub node_prefix: Vec<String>,
    /// The arguments before the controller's flags.
    pub controller_prefix: Vec<String>,
}

impl Launcher {
    /// This process's own executable, with the node's and the controller's argument prefixes
    /// (e.g. `["node"]` and `["controller"]`).
    pub fn current_exe(
        node_prefix: &[&str],
        controller_prefix: &[&str],
    ) -> Result<Launcher, DevError> {
        let program = std::env::current_exe().map_err(|source| DevError::Io {
            what: "finding this executable".into(),
            source,
        })?;
        let owned = |prefix: &[&str]| prefix.iter().map(|a| a.to_string()).collect();
        Ok(Launcher {
            program,
            node_prefix: owned(node_prefix),
            controller_prefix: owned(controller_prefix),
        })
    }
}

/// What [`DevCluster::start`] starts.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// Nodes (at least 1).
    pub nodes: usize,
    /// The cluster's default replication factor: logs created without one get it (at least
    /// 1, at most `nodes`); above 1, or with more than one node, the cluster has a controller.
    pub rf: usize,
    /// Failure zones the nodes are spread over (`--zone zone-1` to `zone-Z`, node `i` in
    /// zone `(i - 1) % Z + 1`), so that placement over zones can be tried on one machine; 0:
    /// no labels. A cluster only (a standalone node has no placement), at most `nodes`.
    pub zones: usize,
    /// Shards per node (at least 1).
    pub shards: usize,
    /// Where the processes keep their data and logs; kept after stop. `None`: a temp dir,
    /// removed on stop.
    pub data_dir: Option<PathBuf>,
    /// How to run a node and the controller.
    pub launcher: Launcher,
    /// How long to wait for every process to answer.
    pub ready_timeout: Duration,
}

impl DevOptions {
    /// One node, rf 1, one shard, a temp dir, the default readiness timeout.
    pub fn new(launcher: Launcher) -> DevOptions {
        DevOptions {
            nodes: 1,
            rf: 1,
            zones: 0,
            shards: 1,
            data_dir: None,
            launcher,
            ready_timeout: READY_TIMEOUT_DEFAULT,
        }
    }

    /// Whether the cluster has a controller: more than one node, or rf above 1.
    pub fn is_cluster(&self) -> bool {
        self.nodes > 1 || self.rf > 1
    }

    /// Refuses what cannot run: zero counts, rf above the nodes or the protocol's 255,
    /// shards whose ports cannot exist.
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
        if self.rf > RF_MAX {
            return Err(DevError::Invalid(format!(
                "rf {} is above the {RF_MAX} replicas a chain can have",
                self.rf
            )));
        }
        if self.zones > 0 && (!self.is_cluster() || self.zones > self.nodes) {
            return Err(DevError::Invalid(format!(
                "{} zones need a cluster of at least as many nodes (got {} node(s), rf {})",
                self.zones, self.nodes, self.rf
            )));
        }
        // A node needs a port per shard and one for its metrics, below 65536.
        if self.shards >= usize::from(u16::MAX) / 2 {
            return Err(DevError::Invalid(format!(
                "{} shards per node need more ports than loopback has",
                self.shards
            )));
        }
        Ok(())
    }
}

/// A process of a dev cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Member {
    /// The controller.
    Controller,
    /// The node with this id.
    Node(u64),
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Member::Controller => write!(f, "the controller"),
            Member::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// Why a dev cluster did not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The options are not a cluster that can exist.
    #[error("{0}")]
    Invalid(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A process failed: it exited (before it served, or later while the cluster ran), or it
    /// did not answer in time.
    #[error("{member} {failure}; the end of its log {}:\n{tail}", log.display())]
    Failed {
        /// Which process.
        member: Member,
        /// What happened (boxed: keeps every `Result<_, DevError>` small).
        failure: Box<Failure>,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
}

/// How a process failed ([`DevError::Failed`]).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// It exited.
    #[error("exited ({0})")]
    Exited(ExitStatus),
    /// It printed something else than where it serves.
    #[error("printed {0:?} instead of where it serves")]
    NotServing(String),
    /// It is running: only a member that exited can be restarted.
    #[error("is running (pid {0}): only a member that exited can be restarted")]
    Running(u32),
    /// It was not ready within the readiness timeout.
    #[error("was not ready within {after:?} (last: {last})")]
    NotReady {
        /// How long it was waited for.
        after: Duration,
        /// What the last probe found.
        last: String,
    },
}

/// A process of a dev cluster (the controller, or a node: [`DevNode::process`]), a child of
/// this one.
#[derive(Debug)]
pub struct DevProcess {
    member: Member,
    /// Where it serves, once it said so (until then, the unspecified address).
    addr: SocketAddr,
    /// Where it serves metrics, once it said so, if it does.
    metrics: Option<SocketAddr>,
    /// Its exit was reported by [`DevCluster::exited`].
    reported: bool,
    /// Its stdout's first line, once it comes (taken when waited for).
    serving: Option<tokio::sync::oneshot::Receiver<String>>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
    /// Set once the child has been reaped: its pid is no longer ours to signal.
    exited: Option<ExitStatus>,
}

impl DevProcess {
    /// Where it serves: the controller's address, or a node's shard 0 (shard `i` listens on
    /// the same host at port + `i`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Its log file (its stderr).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// Its process id (of its latest start).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (reaping it), without waiting.
    pub fn has_exited(&mut self) -> bool {
        self.poll_exit().is_some()
    }

    /// How the process exited, if it has (reaping it), without waiting.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            // An error here means the child is already reaped, which only this type does.
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn failed(&self, failure: Failure) -> DevError {
        DevError::Failed {
            member: self.member,
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

/// One node of a dev cluster.
#[derive(Debug)]
pub struct DevNode {
    id: u64,
    process: DevProcess,
}

impl DevNode {
    /// The node's id (1, 2, ...).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the node serves Prometheus metrics.
    pub fn metrics(&self) -> SocketAddr {
        self.process.metrics.unwrap_or(UNKNOWN_ADDR)
    }

    /// `http://ADDR/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics())
    }

    /// Its process: shard 0's address, data directory, log file, pid.
    pub fn process(&self) -> &DevProcess {
        &self.process
    }
}

/// A running dev cluster. Dropping it stops it (see [`DevCluster::stop`]).
#[derive(Debug)]
pub struct DevCluster {
    controller: Option<DevProcess>,
    nodes: Vec<DevNode>,
    spawner: Spawner,
    dir: DataDir,
    /// What it was started with (a restart launches the same way).
    options: DevOptions,
}

/// A member that exited on its own or was killed ([`DevCluster::exited`]).
#[derive(Debug)]
pub struct Exited {
    /// Which.
    pub member: Member,
    /// How it ended.
    pub status: ExitStatus,
    /// Its log file.
    pub log: PathBuf,
    /// The last lines of its log.
    pub tail: String,
}

/// Which processes a wait watches for an exit: any (while the cluster starts, every one must
/// stay up) or one (a restart, while others may be down on purpose).
#[derive(Clone, Copy, Debug)]
enum Watching {
    All,
    One(Member),
}

#[derive(Debug)]
enum DataDir {
    /// Removed when dropped, after the processes have stopped.
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
    /// Starts the cluster and returns once it serves: every node answers (a HELLO and a
    /// LIST_LOGS on every shard) and, with a controller, the controller's map shows every
    /// node alive. On any error, what was started is stopped again.
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
            None => DataDir::Temp(temp_dir()?),
        };
        let mut cluster = DevCluster {
            controller: None,
            nodes: Vec::new(),
            spawner: Spawner::start()?,
            dir,
            options: options.clone(),
        };
        // From here on an error drops `cluster`, which stops every process started so far.
        let deadline = Instant::now() + options.ready_timeout;
        let controller = match options.is_cluster() {
            true => {
                cluster.controller = Some(cluster.launch_controller(LISTEN, false)?);
                cluster
                    .serving(Member::Controller, deadline, Watching::All)
                    .await?;
                cluster.controller.as_ref().map(|c| c.addr)
            }
            false => None,
        };
        // Every node starts before any is waited for: they measure their disks at once.
        for index in 0..options.nodes {
            let node = cluster.launch_node(index as u64 + 1, controller, false)?;
            cluster.nodes.push(node);
        }
        let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
        for &id in &ids {
            cluster
                .serving(Member::Node(id), deadline, Watching::All)
                .await?;
        }
        if let Some(controller) = controller {
            for id in ids {
                cluster
                    .wait_ready(Member::Node(id), deadline, Watching::All, || {
                        alive_in_map(controller, id)
                    })
                    .await?;
            }
        }
        Ok(cluster)
    }

    /// Waits for `member`'s serving line (until `deadline`, watching what `watching` says
    /// for exits) and takes its addresses from it.
    async fn serving(
        &mut self,
        member: Member,
        deadline: Instant,
        watching: Watching,
    ) -> Result<(), DevError> {
        let line = self.wait_serving(member, deadline, watching).await?;
        let shards = self.options.shards;
        let process = self.process(member);
        let addrs = match member {
            Member::Controller => parse_controller_serving(&line),
            Member::Node(_) => line
                .parse::<Serving>()
                .ok()
                .filter(|s| usize::from(s.shards) == shards)
                .and_then(|s| Some((s.addr, Some(s.metrics?)))),
        };
        let (addr, metrics) =
            addrs.ok_or_else(|| process.failed(Failure::NotServing(line.clone())))?;
        (process.addr, process.metrics) = (addr, metrics);
        Ok(())
    }

    /// Starts the controller listening at `listen`, serving metrics at a port of its own;
    /// logs created without a replication factor get the cluster's (`options.rf`).
    /// `again`: a restart (its log is appended to).
    fn launch_controller(&self, listen: &str, again: bool) -> Result<DevProcess, DevError> {
        let flags = [
            OsString::from("--listen"),
            listen.into(),
            "--metrics".into(),
            LISTEN.into(),
            "--default-rf".into(),
            self.options.rf.to_string().into(),
        ];
        self.launch(
            Member::Controller,
            "controller",
            &self.options.launcher.controller_prefix,
            &flags,
            again,
        )
    }

    /// Starts node `id`; its metrics are served at the port after its last shard's (the
    /// node's default), bound by the node with its shards' ports. `again`: a restart (its
    /// log is appended to).
    fn launch_node(
        &self,
        id: u64,
        controller: Option<SocketAddr>,
        again: bool,
    ) -> Result<DevNode, DevError> {
        let options = &self.options;
        let mut flags: Vec<OsString> = vec![
            "--listen".into(),
            LISTEN.into(),
            "--shards".into(),
            options.shards.to_string().into(),
            "--node-id".into(),
            id.to_string().into(),
            // Several nodes share this machine's cores: pinning each node's shard i to core i
            // would stack them.
            "--no-pin".into(),
        ];
        if let Some(controller) = controller {
            flags.extend(["--controller".into(), controller.to_string().into()]);
        }
        if options.zones > 0 {
            let zone = (id - 1) % options.zones as u64 + 1;
            flags.extend(["--zone".into(), format!("zone-{zone}").into()]);
        }
        let process = self.launch(
            Member::Node(id),
            &format!("node-{id}"),
            &options.launcher.node_prefix,
            &flags,
            again,
        )?;
        Ok(DevNode { id, process })
    }

    /// Starts `program prefix... --data-dir DIR/name flags...` with its stderr in
    /// `DIR/name.log` (appended to if `again`, a restart): in its own process group, killed by
    /// the kernel if this process dies. Its stdout's first line is kept for
    /// [`DevCluster::wait_serving`]; the rest is read and dropped, so that the process never
    /// blocks on a full pipe.
    fn launch(
        &self,
        member: Member,
        name: &str,
        prefix: &[String],
        flags: &[OsString],
        again: bool,
    ) -> Result<DevProcess, DevError> {
        let options = &self.options;
        let data_dir = self.dir.path().join(name);
        let log = self.dir.path().join(format!("{name}.log"));
        let log_file = File::options()
            .create(true)
            .write(true)
            .append(again)
            .truncate(!again)
            .open(&log)
            .map_err(|source| DevError::Io {
                what: format!("creating {}", log.display()),
                source,
            })?;
        let mut command = Command::new(&options.launcher.program);
        command
            .args(prefix)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            // Its own process group: a Ctrl-C at the terminal reaches this process only,
            // which then stops the cluster in order.
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe calls (prctl, getppid), without allocating.
        unsafe {
            command.pre_exec(move || {
                // SIGKILL, not SIGTERM: a parent that died without stopping its cluster left
                // nobody to wait for a graceful stop, and a store recovers from a kill.
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
        // SIGTERM (to take it with sigtimedwait) does not pass the block on to its children.
        let mut child = self.spawner.spawn(command).map_err(|source| DevError::Io {
            what: format!("starting {}", options.launcher.program.display()),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (said, serving) = tokio::sync::oneshot::channel();
        let mut process = DevProcess {
            member,
            addr: UNKNOWN_ADDR,
            metrics: None,
            reported: false,
            serving: Some(serving),
            data_dir,
            log,
            child,
            exited: None,
        };
        let reader = std::thread::Builder::new()
            .name(format!("dev-{name}-stdout"))
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                if let Some(Ok(line)) = lines.next() {
                    let _ = said.send(line);
                }
                lines.for_each(drop);
            });
        if let Err(source) = reader {
            // Not part of the cluster yet: stopped here.
            stop_all(vec![&mut process]);
            return Err(DevError::Io {
                what: format!("starting a thread to read {member}'s output"),
                source,
            });
        }
        Ok(process)
    }

    /// The nodes, by id.
    pub fn nodes(&self) -> &[DevNode] {
        &self.nodes
    }

    /// The controller, if the cluster has one (more than one node, or rf above 1).
    pub fn controller(&self) -> Option<&DevProcess> {
        self.controller.as_ref()
    }

    /// Where clients connect: the controller, or the only node's shard 0.
    pub fn target(&self) -> SocketAddr {
        match &self.controller {
            Some(controller) => controller.addr,
            None => self.nodes[0].process.addr,
        }
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the data directory is removed on stop (a temp dir).
    pub fn is_temporary(&self) -> bool {
        matches!(self.dir, DataDir::Temp(_))
    }

    /// Where the controller serves its metrics (`http://ADDR/metrics`), if the cluster has
    /// one.
    pub fn controller_metrics(&self) -> Option<SocketAddr> {
        self.controller.as_ref().and_then(|c| c.metrics)
    }

    /// The members that exited (on their own, or killed) since the last call, each once per
    /// exit, without waiting; the rest of the cluster goes on.
    pub fn exited(&mut self) -> Vec<Exited> {
        let mut exited = Vec::new();
        for process in self.processes() {
            if let (Some(status), false) = (process.poll_exit(), process.reported) {
                process.reported = true;
                exited.push(Exited {
                    member: process.member,
                    status,
                    log: process.log.clone(),
                    tail: log_tail(&process.log),
                });
            }
        }
        exited
    }

    /// The process of `member`, if the cluster has it.
    pub fn member(&mut self, member: Member) -> Option<&mut DevProcess> {
        self.processes().find(|p| p.member == member)
    }

    /// Sends `signal` (e.g. `SIGKILL`, `SIGSTOP`, `SIGCONT`) to `member`; false if it has no
    /// such member or the member has exited.
    pub fn signal(&mut self, member: Member, signal: libc::c_int) -> bool {
        let Some(process) = self.member(member) else {
            return false;
        };
        if process.has_exited() {
            return false;
        }
        process.signal(signal);
        true
    }

    /// Starts `member` again, which has exited: with its data directory, its log appended to,
    /// a node on new ports, the controller on its port; returns once it serves (a node: once
    /// the controller's map shows it alive too), or with why not (the member is then down
    /// again, and can be restarted again).
    pub async fn restart(&mut self, member: Member) -> Result<(), DevError> {
        let process = self
            .member(member)
            .ok_or_else(|| DevError::Invalid(format!("the cluster has no {member}")))?;
        if !process.has_exited() {
            return Err(process.failed(Failure::Running(process.pid())));
        }
        let deadline = Instant::now() + self.options.ready_timeout;
        let controller = self.controller.as_ref().map(|c| c.addr);
        match member {
            Member::Controller => {
                let listen = controller.map(|addr| addr.to_string()).unwrap_or_default();
                let process = self.launch_controller(&listen, true)?;
                self.controller = Some(process);
            }
            Member::Node(id) => {
                let node = self.launch_node(id, controller, true)?;
                let index = self
                    .nodes
                    .iter()
                    .position(|n| n.id == id)
                    .expect("found above");
                self.nodes[index] = node;
            }
        }
        let mut ready = self.serving(member, deadline, Watching::One(member)).await;
        if let (Ok(()), Member::Node(id), Some(controller)) = (&ready, member, controller) {
            ready = self
                .wait_ready(member, deadline, Watching::One(member), || {
                    alive_in_map(controller, id)
                })
                .await;
        }
        if ready.is_err() {
            // Down again, for good, and said so by the error rather than by `exited`.
            let process = self.member(member).expect("just launched");
            stop_all(vec![&mut *process]);
            process.reported = true;
        }
        ready
    }

    /// `Err` if a process `watching` names has exited (with its log's tail), without
    /// waiting.
    fn check(&mut self, watching: Watching) -> Result<(), DevError> {
        for process in self.processes() {
            let watched = match watching {
                Watching::All => true,
                Watching::One(member) => process.member == member,
            };
            if let (true, Some(status)) = (watched, process.poll_exit()) {
                return Err(process.failed(Failure::Exited(status)));
            }
        }
        Ok(())
    }

    /// Stops every process, the nodes first and the controller last: SIGTERM (a graceful
    /// stop), up to [`STOP_TIMEOUT`] to finish, then SIGKILL; every child is reaped. Then
    /// removes the data directory if it is a temp dir.
    pub fn stop(self) {
        drop(self)
    }

    /// Every process: the controller first, then the nodes.
    fn processes(&mut self) -> impl Iterator<Item = &mut DevProcess> {
        let nodes = self.nodes.iter_mut().map(|n| &mut n.process);
        self.controller.iter_mut().chain(nodes)
    }

    /// Waits until `member` says where it serves (its stdout's first line, returned), or a
    /// process `watching` names exits, or `deadline` passes.
    async fn wait_serving(
        &mut self,
        member: Member,
        deadline: Instant,
        watching: Watching,
    ) -> Result<String, DevError> {
        let after = self.options.ready_timeout;
        let mut serving = self
            .process(member)
            .serving
            .take()
            .expect("each member's line is waited for once");
        let mut last = "nothing on stdout yet".to_string();
        let mut open = true;
        loop {
            self.check(watching)?;
            if open {
                match tokio::time::timeout(POLL_EVERY, &mut serving).await {
                    Ok(Ok(line)) => return Ok(line),
                    // Closed without a line: the process is ending, and `check` will say how.
                    Ok(Err(_)) => {
                        open = false;
                        last = "stdout closed without a line".into();
                    }
                    Err(_) => {}
                }
            } else {
                tokio::time::sleep(POLL_EVERY).await;
            }
            if Instant::now() >= deadline {
                return Err(self
                    .process(member)
                    .failed(Failure::NotReady { after, last }));
            }
        }
    }

    /// The process of `member`, which was started.
    fn process(&mut self, member: Member) -> &mut DevProcess {
        self.processes()
            .find(|p| p.member == member)
            .expect("a member waited for was started")
    }

    /// Waits until `probe` succeeds for `member`, or a process `watching` names exits, or
    /// `deadline` passes.
    async fn wait_ready<F, P>(
        &mut self,
        member: Member,
        deadline: Instant,
        watching: Watching,
        probe: P,
    ) -> Result<(), DevError>
    where
        P: Fn() -> F,
        F: Future<Output = Result<(), String>>,
    {
        let after = self.options.ready_timeout;
        let mut last = "no answer".to_string();
        loop {
            self.check(watching)?;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                // Cut short by the deadline: what the probe found before says more.
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(self
                    .process(member)
                    .failed(Failure::NotReady { after, last }));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        stop_all(self.nodes.iter_mut().map(|n| &mut n.process).collect());
        self.nodes.clear();
        stop_all(self.controller.iter_mut().collect());
        self.controller = None;
        // Only now may the spawning thread end (its end would SIGKILL the processes); the
        // temp dir is removed after this, when `dir` drops.
        self.spawner.finish();
    }
}

/// SIGTERM to each of `processes`, up to [`STOP_TIMEOUT`] for all to exit, SIGKILL to the
/// rest; every one reaped.
fn stop_all(mut processes: Vec<&mut DevProcess>) {
    for process in processes.iter_mut() {
        process.poll_exit();
        process.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    for process in processes {
        while process.poll_exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(POLL_EVERY);
        }
        if process.poll_exit().is_none() {
            tracing::warn!(
                member = %process.member,
                pid = process.child.id(),
                "no stop after SIGTERM: SIGKILL"
            );
            process.signal(libc::SIGKILL);
            process.exited = process.child.wait().ok();
        }
        match process.exited {
            Some(status) if !status.success() => {
                tracing::warn!(member = %process.member, %status, log = %process.log.display(), "exited with a failure");
            }
            _ => {}
        }
    }
}

/// The thread that forks the processes. `PR_SET_PDEATHSIG` fires when the *thread* that forked
/// a child exits, not the process: a child forked from a tokio worker or from some short-lived
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

/// A new temp data directory owned by this process, after removing the stale ones.
fn temp_dir() -> Result<tempfile::TempDir, DevError> {
    let failed = |what: &str| {
        let what = what.to_string();
        move |source| DevError::Io { what, source }
    };
    remove_stale_temp_dirs(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir()
        .map_err(failed("creating a temp dir"))?;
    let me = owner_id(std::process::id())
        .ok_or_else(|| io::Error::other("this process is not in /proc"))
        .map_err(failed("naming the temp dir's owner"))?;
    std::fs::write(dir.path().join(OWNER_FILE), format!("{me}\n"))
        .map_err(failed("naming the temp dir's owner"))?;
    Ok(dir)
}

/// Removes this user's temp data directories in `tmp` whose owner is gone: left by a cluster
/// whose process was killed (kill -9) before it could remove its own. A directory that names
/// no owner (one being created at this moment) or a live one is kept.
fn remove_stale_temp_dirs(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    // SAFETY: geteuid takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TEMP_PREFIX))
            && entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me)
            && std::fs::read_to_string(entry.path().join(OWNER_FILE)).is_ok_and(|owner| {
                let owner = owner.trim();
                let pid = owner.split(' ').next().and_then(|pid| pid.parse().ok());
                pid.and_then(owner_id).as_deref() != Some(owner)
            });
        if !stale {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed a stale dev cluster directory (its process is gone)")
            }
            // Another cluster starting at the same time removed it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "could not remove a stale dev cluster directory")
            }
        }
    }
}

/// `PID STARTTIME` of a live process (its start time in clock ticks since boot, from
/// `/proc/PID/stat`, so that a reused pid does not pass for the process that owned a
/// directory); `None` if there is no such process or it has exited (a zombie).
fn owner_id(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which is in parentheses and may hold anything):
    // the state (field 3 of proc(5)) first, the start time (field 22) 19 later.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = *fields.first()?;
    if state == "Z" || state == "X" {
        return None;
    }
    Some(format!("{pid} {}", fields.get(19)?))
}

/// The controller's map shows node `node_id` alive.
async fn alive_in_map(controller: SocketAddr, node_id: u64) -> Result<(), String> {
    let client = Client::connect(controller)
        .await
        .map_err(|e| format!("the controller: {e}"))?;
    let map = client.map().ok_or("the controller answered as a node")?;
    match map.node(node_id) {
        Some(node) if node.alive => Ok(()),
        Some(_) => Err(format!(
            "not alive in the controller's map (version {})",
            map.version()
        )),
        None => Err(format!(
            "not registered in the controller's map (version {})",
            map.version()
        )),
    }
}

/// The last lines of a process's log, or why it could not be read.
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

    /// A launcher whose node and controller are `sh -c SCRIPT` (the cluster's flags follow,
    /// as the script's `$0...`).
    fn sh(node: &str, controller: &str) -> Launcher {
        let prefix = |script: &str| vec!["-c".to_string(), script.to_string()];
        Launcher {
            program: PathBuf::from("/bin/sh"),
            node_prefix: prefix(node),
            controller_prefix: prefix(controller),
        }
    }

    fn options(nodes: usize, rf: usize) -> DevOptions {
        DevOptions {
            nodes,
            rf,
            ..DevOptions::new(sh("exit 0", "exit 0"))
        }
    }

    #[test]
    fn counts_are_checked_and_more_than_one_node_or_rf_makes_a_cluster() {
        assert!(options(1, 1).check().is_ok());
        assert!(!options(1, 1).is_cluster());
        for (nodes, rf) in [(2, 1), (3, 3), (2, 2)] {
            assert!(options(nodes, rf).check().is_ok());
            assert!(options(nodes, rf).is_cluster());
        }
        for (nodes, rf) in [(1, 2), (0, 1), (3, 0), (300, 256)] {
            let e = options(nodes, rf).check().expect_err("not a cluster");
            assert!(matches!(e, DevError::Invalid(_)), "{e}");
        }
        // Zones: a cluster's, no more than its nodes.
        let zoned = |nodes, rf, zones| DevOptions {
            zones,
            ..options(nodes, rf)
        };
        assert!(zoned(3, 3, 3).check().is_ok());
        assert!(zoned(4, 2, 2).check().is_ok());
        for (nodes, rf, zones) in [(1, 1, 1), (3, 3, 4)] {
            let e = zoned(nodes, rf, zones).check().expect_err("refused");
            assert!(matches!(e, DevError::Invalid(_)), "{e}");
        }
    }

    /// Starts `options`, expecting `member` to exit with `code` and its log to say `says`.
    fn expect_exit(options: DevOptions, member: Member, code: i32, says: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let e = runtime
            .block_on(DevCluster::start(options))
            .expect_err("a process exits");
        match &e {
            DevError::Failed {
                member: failed,
                failure,
                tail,
                ..
            } => {
                let Failure::Exited(status) = **failure else {
                    panic!("{e}")
                };
                assert_eq!((*failed, status.code()), (member, Some(code)));
                assert!(tail.contains(says), "{e}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_node_that_exits_at_once_is_reported_with_its_log() {
        let options = DevOptions::new(sh("echo cannot start >&2; exit 3", "exit 0"));
        expect_exit(options, Member::Node(1), 3, "cannot start");
    }

    #[test]
    fn a_controller_that_exits_at_once_is_reported_with_its_log() {
        let options = DevOptions {
            nodes: 3,
            rf: 3,
            ..DevOptions::new(sh("exit 0", "echo no controller >&2; exit 4"))
        };
        expect_exit(options, Member::Controller, 4, "no controller");
    }
}
