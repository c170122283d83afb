//! The dev cluster with real processes: [`chainlog::dev::DevCluster`] in this process (a
//! node that cannot start stops the controller started before it; a member killed is
//! reported once, the rest goes on, and it can be started again: a node on new ports, the
//! controller on its own), and the `chainlog dev` command (serves through the address it
//! prints; SIGINT stops its node and exits 0; a `kill -9` of it takes its node down too; three
//! nodes with rf 3 start a controller whose map shows them alive, and stop leaving no
//! process; a member that dies is reported and the cluster goes on, and `--restart-dead`
//! starts it again).
//!
//! Every process a test starts is killed by PID and reaped when the test ends, failed or not
//! ([`Dev`]'s `Drop`). Waits have generous deadlines, as guards against hanging, never as
//! timing assertions.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chainlog::client::{log_id, Client};
use chainlog::dev::{DevCluster, DevError, DevOptions, Failure, Launcher, Member};

/// How long a test waits for anything (a process to print, answer or exit) before failing.
const DEADLINE: Duration = Duration::from_secs(120);

fn chainlog() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chainlog"))
}

/// The `chainlog` binary's `node` and `controller` subcommands.
fn launcher() -> Launcher {
    Launcher {
        program: chainlog(),
        node_prefix: vec!["node".into()],
        controller_prefix: vec!["controller".into()],
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Whether process `pid` exists and is not a zombie (a zombie has exited).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name, which may itself hold spaces.
        Ok(stat) => match stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
        {
            Some(state) => state != "Z" && state != "X",
            None => true,
        },
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; whether it went before the deadline.
fn gone_within(pid: u32, deadline: Duration) -> bool {
    let end = Instant::now() + deadline;
    while alive(pid) {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Writes, appends three records, reads them back, through `addr`.
async fn round_trip(addr: SocketAddr) {
    let client = Client::connect(addr).await.expect("connect");
    let id = client.create_log("dev-test").await.expect("create");
    assert_eq!(id, log_id("dev-test"));
    let records = [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()];
    let lsns = client.append(id, &records).await.expect("append");
    assert_eq!(lsns.end - lsns.start, 3);
    let batch = client
        .read(id, lsns.start, 16, 1 << 20)
        .await
        .expect("read");
    let payloads: Vec<Vec<u8>> = batch.records.into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads, records);
}

#[test]
fn dev_cluster_in_process_serves_then_stops_and_removes_its_temp_dir() {
    let runtime = runtime();
    let options = DevOptions {
        shards: 2,
        ..DevOptions::new(launcher())
    };
    let cluster = runtime.block_on(DevCluster::start(options)).expect("start");
    assert!(cluster.is_temporary());
    let node = cluster.nodes()[0].process();
    let (pid, dir) = (node.pid(), cluster.data_dir().to_path_buf());
    assert_eq!(node.addr(), cluster.target());
    assert!(cluster.controller().is_none(), "one node, rf 1: standalone");
    assert_eq!(cluster.nodes()[0].metrics().port(), node.addr().port() + 2);
    assert!(node.data_dir().join("shard-1").is_dir());
    runtime.block_on(round_trip(cluster.target()));
    cluster.stop();
    assert!(!alive(pid), "node {pid} outlived stop()");
    assert!(!dir.exists(), "{} outlived stop()", dir.display());
}

#[test]
fn dev_cluster_keeps_a_given_data_dir() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let options = DevOptions {
        data_dir: Some(dir.path().join("cluster")),
        ..DevOptions::new(launcher())
    };
    let cluster = runtime.block_on(DevCluster::start(options)).expect("start");
    assert!(!cluster.is_temporary());
    let pid = cluster.nodes()[0].process().pid();
    cluster.stop();
    assert!(!alive(pid));
    assert!(dir.path().join("cluster/node-1/shard-0").is_dir());
    // The log is a file, not a terminal: plain text, no colour codes.
    let log = std::fs::read_to_string(dir.path().join("cluster/node-1.log")).expect("node log");
    assert!(log.contains("shard serving"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// The processes whose command line mentions `text`.
fn processes_mentioning(text: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(text) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_node_that_cannot_start_stops_the_controller_started_before_it() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("cluster");
    let mut launcher = launcher();
    launcher.node_prefix.push("--no-such-flag".into());
    let options = DevOptions {
        nodes: 2,
        rf: 2,
        data_dir: Some(data.clone()),
        ..DevOptions::new(launcher)
    };
    let e = runtime
        .block_on(DevCluster::start(options))
        .expect_err("the nodes cannot start");
    match &e {
        DevError::Failed {
            member, failure, ..
        } => {
            // Both nodes start at once and both fail: either may be found first.
            assert!(matches!(member, Member::Node(1 | 2)), "{e}");
            assert!(matches!(**failure, Failure::Exited(_)), "{e}");
        }
        other => panic!("{other}"),
    }
    // The controller was started (and answered: the nodes start after it) and is gone.
    assert!(data.join("controller.log").is_file());
    let data = data.to_str().expect("a UTF-8 temp path");
    let left = processes_mentioning(data);
    assert!(left.is_empty(), "processes {left:?} outlived the cluster");
}

/// A `chainlog dev` process and the controller and nodes it printed; all killed by PID and
/// reaped on drop.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its stderr's lines, if asked for ([`Dev::start_watched`]).
    errors: Option<mpsc::Receiver<String>>,
    controller_pid: Option<u32>,
    node_pids: Vec<u32>,
    /// The data directory it printed.
    data_dir: Option<PathBuf>,
    /// The banner's first `use it:` line.
    use_it: String,
}

impl Dev {
    fn start(args: &[&str]) -> Dev {
        Dev::start_in(None, args)
    }

    /// As [`Dev::start`], with its temporary directories in `tmp` if given (`TMPDIR`).
    fn start_in(tmp: Option<&std::path::Path>, args: &[&str]) -> Dev {
        Dev::spawn(tmp, args, false)
    }

    /// As [`Dev::start`], with its stderr read line by line ([`Dev::said`]).
    fn start_watched(args: &[&str]) -> Dev {
        Dev::spawn(None, args, true)
    }

    fn spawn(tmp: Option<&std::path::Path>, args: &[&str], watched: bool) -> Dev {
        let mut command = Command::new(chainlog());
        if let Some(tmp) = tmp {
            command.env("TMPDIR", tmp);
        }
        let mut child = command
            .arg("dev")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if watched {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start chainlog dev");
        let lines_of = |stream: Box<dyn std::io::Read + Send>| {
            let (send, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
            lines
        };
        let lines = lines_of(Box::new(child.stdout.take().expect("stdout")));
        let errors = child.stderr.take().map(|stderr| lines_of(Box::new(stderr)));
        Dev {
            child,
            lines,
            errors,
            controller_pid: None,
            node_pids: Vec::new(),
            data_dir: None,
            use_it: String::new(),
        }
    }

    /// Reads the banner up to the `use it:` line: the target; the controller's and the
    /// nodes' pids (kept for `Drop`) and the data directory on the way.
    fn target(&mut self) -> SocketAddr {
        loop {
            let line = self
                .lines
                .recv_timeout(DEADLINE)
                .expect("chainlog dev printed its target");
            if let Some(rest) = line.strip_prefix("chainlog dev: data in ") {
                let (dir, _) = rest.rsplit_once(" (").expect("data dir line");
                self.data_dir = Some(PathBuf::from(dir));
            }
            let pid = || {
                line.split_once("(pid ")
                    .and_then(|(_, r)| r.split_once(')'))
                    .map(|(pid, _)| pid.parse::<u32>().expect("pid"))
                    .expect("a process line names its pid")
            };
            if line.starts_with("controller ") {
                self.controller_pid = Some(pid());
            }
            if line.starts_with("node ") {
                self.node_pids.push(pid());
            }
            if line.starts_with("use it:") {
                self.use_it = line.clone();
                let mut words = line.split_whitespace();
                words.find(|w| *w == "--target");
                return words
                    .next()
                    .expect("an address after --target")
                    .parse()
                    .expect("a socket address");
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Reads its stderr until a line contains `text`; that line.
    fn said(&self, text: &str) -> String {
        let errors = self.errors.as_ref().expect("stderr is read");
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match errors.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("chainlog dev never said {text:?}: {e}"),
            }
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < end, "chainlog dev did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &pid in self.node_pids.iter().chain(&self.controller_pid) {
            if alive(pid) {
                // SAFETY: kill(2) on a process this test started and saw alive just now.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn chainlog_dev_serves_then_sigint_stops_its_node_and_exits_0() {
    let mut dev = Dev::start(&["--nodes", "1"]);
    let target = dev.target();
    assert_eq!(dev.node_pids.len(), 1);
    let node = dev.node_pids[0];
    assert!(alive(node));
    runtime().block_on(round_trip(target));
    dev.signal(libc::SIGINT);
    let status = dev.wait();
    assert!(status.success(), "{status}");
    // The node was reaped by `chainlog dev` before it exited.
    assert!(!alive(node), "node {node} outlived chainlog dev");
    let dir = dev.data_dir.clone().expect("a data dir was printed");
    assert!(
        !dir.exists(),
        "the temp dir {} outlived chainlog dev",
        dir.display()
    );
}

#[test]
fn a_kill_9_of_chainlog_dev_takes_its_node_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 temp path").to_string();
    let mut dev = Dev::start(&["--nodes", "1", "--shards", "2", "--data-dir", &data]);
    let target = dev.target();
    let node = dev.node_pids[0];
    runtime().block_on(round_trip(target));
    dev.signal(libc::SIGKILL);
    let status = dev.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        gone_within(node, DEADLINE),
        "node {node} outlived chainlog dev"
    );
}

#[test]
fn chainlog_dev_with_3_nodes_and_rf_3_serves_the_map_and_stops_leaving_no_process() {
    // Over 3 zones: each node registers with its own (`--zone`), the map and `chainlog
    // status` show them.
    let mut dev = Dev::start(&["--nodes", "3", "--rf", "3", "--zones", "3"]);
    let target = dev.target();
    // --rf is the cluster's default: the printed command needs no --rf of its own.
    assert!(
        dev.use_it.contains("chainlog log create orders --target"),
        "{}",
        dev.use_it
    );
    let controller = dev.controller_pid.expect("a controller line");
    assert_eq!(dev.node_pids.len(), 3);
    runtime().block_on(async {
        let client = Client::connect(target).await.expect("connect");
        let map = client.map().expect("the target is the controller");
        let alive: Vec<u64> = map
            .nodes()
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.node_id)
            .collect();
        assert_eq!(alive, [1, 2, 3]);
        let zones: Vec<&str> = map.nodes().iter().map(|n| n.zone.as_str()).collect();
        assert_eq!(zones, ["zone-1", "zone-2", "zone-3"]);
        // Created without a replication factor: it gets the cluster's default, --rf 3 (issue
        // 16, F5).
        let id = client.create_log("dev-rf3").await.expect("create");
        let map = client.map().expect("map");
        let log = map.log(id).expect("the log");
        assert_eq!(log.replication_factor, 3);
        let chain = &log.chain.clone();
        assert_eq!(chain.len(), 3);
        let lsns = client.append(id, &[b"replicated"]).await.expect("append");
        // Every replica learns the commit (the deadline is a guard, not a timing assertion).
        let end = Instant::now() + DEADLINE;
        for &node in chain {
            while client.tail_hint_at(node, id).await.expect("tail hint").tail < lsns.end {
                assert!(Instant::now() < end, "node {node} never learned the commit");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let status = std::process::Command::new(chainlog())
        .args(["status", "--target", &target.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chainlog status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    for id in 1..=3 {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("node {id}  "))
                && l.contains(&format!("  zone zone-{id}  "))),
            "{text}"
        );
    }
    dev.signal(libc::SIGINT);
    let status = dev.wait();
    assert!(status.success(), "{status}");
    for pid in dev.node_pids.iter().chain([&controller]) {
        assert!(!alive(*pid), "process {pid} outlived chainlog dev");
    }
}

/// A `chainlog dev` killed with kill -9 cannot remove its temporary directory; the next one
/// started removes it, and only it: not the directory of a `chainlog dev` still running.
#[test]
fn a_temp_dir_left_by_a_kill_9_is_removed_by_the_next_chainlog_dev() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut running = Dev::start_in(Some(tmp.path()), &["--nodes", "1"]);
    running.target();
    let running_dir = running.data_dir.clone().expect("a data dir");
    let mut killed = Dev::start_in(Some(tmp.path()), &["--nodes", "1"]);
    killed.target();
    let killed_dir = killed.data_dir.clone().expect("a data dir");
    killed.signal(libc::SIGKILL);
    killed.wait();
    let node = killed.node_pids[0];
    assert!(
        gone_within(node, DEADLINE),
        "node {node} outlived chainlog dev"
    );
    assert!(killed_dir.is_dir(), "nobody removed it yet");

    let mut next = Dev::start_in(Some(tmp.path()), &["--nodes", "1"]);
    next.target();
    assert!(!killed_dir.exists(), "{} was left", killed_dir.display());
    assert!(
        running_dir.is_dir(),
        "the running cluster's directory is kept"
    );
    for dev in [&mut running, &mut next] {
        dev.signal(libc::SIGINT);
        assert!(dev.wait().success());
    }
    assert!(!running_dir.exists() && !next.data_dir.clone().expect("dir").exists());
}

/// Sends `signal` to process `pid`, which this test started (through a dev cluster).
fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process of this test's cluster, alive when this is called.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Waits until `cluster` reports members exited; returns them.
fn wait_exited(cluster: &mut DevCluster) -> Vec<Member> {
    let end = Instant::now() + DEADLINE;
    loop {
        let exited = cluster.exited();
        if !exited.is_empty() {
            return exited.into_iter().map(|e| e.member).collect();
        }
        assert!(Instant::now() < end, "no member was reported exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_member_killed_is_reported_once_the_rest_goes_on_and_it_starts_again() {
    let runtime = runtime();
    let options = DevOptions {
        nodes: 3,
        rf: 3,
        ..DevOptions::new(launcher())
    };
    let mut cluster = runtime.block_on(DevCluster::start(options)).expect("start");
    let target = cluster.target();
    assert!(
        cluster.controller_metrics().is_some(),
        "the controller serves metrics"
    );
    let (id, chain) = runtime.block_on(async {
        let client = Client::connect(target).await.expect("connect");
        let id = client.create_log_with("dev-kill", 3).await.expect("create");
        client.append(id, &[b"before"]).await.expect("append");
        let chain = client
            .map()
            .expect("map")
            .log(id)
            .expect("log")
            .chain
            .clone();
        (id, chain)
    });
    // The tail dies: reported once; the other processes go on.
    let tail = chain[2];
    let old = cluster.nodes()[tail as usize - 1].process();
    let (old_pid, old_addr) = (old.pid(), old.addr());
    assert!(cluster.signal(Member::Node(tail), libc::SIGKILL));
    assert_eq!(wait_exited(&mut cluster), [Member::Node(tail)]);
    assert!(cluster.exited().is_empty(), "an exit is reported once");
    assert!(
        !cluster.signal(Member::Node(tail), libc::SIGKILL),
        "it is gone"
    );
    for node in cluster.nodes().iter().filter(|n| n.id() != tail) {
        assert!(alive(node.process().pid()), "node {}", node.id());
    }
    let controller_pid = cluster.controller().expect("controller").pid();
    assert!(alive(controller_pid));
    // The log goes on without it (sealed out: no spare, so two replicas).
    runtime.block_on(async {
        let client = Client::connect(target).await.expect("connect");
        client.append(id, &[b"without it"]).await.expect("append");
    });
    // It starts again: a new process on new ports, with its data; the log grows back (it
    // learns the log, then joins the chain at the tail).
    runtime
        .block_on(cluster.restart(Member::Node(tail)))
        .expect("restart");
    let again = cluster.nodes()[tail as usize - 1].process();
    assert_ne!(again.pid(), old_pid);
    assert!(alive(again.pid()));
    assert_ne!(again.addr(), old_addr, "a node restarts on new ports");
    assert!(
        matches!(
            runtime.block_on(cluster.restart(Member::Node(tail))),
            Err(DevError::Failed { .. })
        ),
        "a running member is not restarted"
    );
    runtime.block_on(async {
        let client = Client::connect(target).await.expect("connect");
        let end = Instant::now() + DEADLINE;
        loop {
            let map = chainlog::controller::client::Client::connect(target, DEADLINE)
                .expect("controller")
                .map()
                .expect("map");
            if map.log(id).expect("log").chain.len() == 3 {
                break;
            }
            assert!(
                Instant::now() < end,
                "the log never grew back to 3 replicas"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.append(id, &[b"back at 3"]).await.expect("append");
    });
    // The controller dies and starts again, at the same address, with its state.
    assert!(cluster.signal(Member::Controller, libc::SIGKILL));
    assert_eq!(wait_exited(&mut cluster), [Member::Controller]);
    runtime
        .block_on(cluster.restart(Member::Controller))
        .expect("restart the controller");
    assert_eq!(cluster.target(), target, "the controller keeps its address");
    assert_ne!(
        cluster.controller().expect("controller").pid(),
        controller_pid
    );
    runtime.block_on(async {
        let client = Client::connect(target).await.expect("connect");
        assert!(
            client.map().expect("map").log(id).is_some(),
            "the state is kept"
        );
        client.append(id, &[b"after"]).await.expect("append");
    });
    cluster.stop();
}

#[test]
fn chainlog_dev_reports_a_dead_member_goes_on_and_restarts_it_with_restart_dead() {
    // Without --restart-dead: reported, stays down, the rest serves, SIGINT still stops all.
    let mut dev = Dev::start_watched(&["--nodes", "2", "--rf", "2"]);
    let target = dev.target();
    let node = dev.node_pids[1];
    kill(node, libc::SIGKILL);
    let said = dev.said("node 2 exited");
    assert!(said.contains("it stays down"), "{said}");
    assert!(
        dev.child.try_wait().expect("try_wait").is_none(),
        "chainlog dev goes on"
    );
    runtime().block_on(round_trip(target));
    dev.signal(libc::SIGINT);
    assert!(dev.wait().success());

    // With it: started again, with a new pid.
    let mut dev = Dev::start_watched(&["--nodes", "2", "--rf", "2", "--restart-dead", "0.2"]);
    let target = dev.target();
    let node = dev.node_pids[0];
    kill(node, libc::SIGKILL);
    let said = dev.said("node 1 exited");
    assert!(said.contains("started again in"), "{said}");
    let again = dev.said("node 1 started again");
    let pid: u32 = again
        .split_once("(pid ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .and_then(|(pid, _)| pid.parse().ok())
        .expect("the new pid");
    assert_ne!(pid, node);
    assert!(alive(pid));
    dev.node_pids.push(pid);
    runtime().block_on(round_trip(target));
    dev.signal(libc::SIGINT);
    assert!(dev.wait().success());
    assert!(!alive(pid), "the restarted node outlived chainlog dev");
}
