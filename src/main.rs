//! The `chainlog` command: `chainlog node` runs a storage node, `chainlog controller` the
//! cluster's controller ([`chainlog::controller`]), `chainlog dev` a local dev cluster
//! ([`chainlog::dev`]); the other subcommands are clients of a node or of a cluster (their
//! code is in `cli/`).

mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chainlog::controller::ControllerArgs;
use chainlog::dev::{DevCluster, DevError, DevOptions, Launcher, Member};
use chainlog::node::NodeArgs;
use chainlog::signals::StopSignals;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chainlog",
    version,
    about = "chainlog: a log storage service for write-ahead-log offload"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a storage node: one shard thread per core, shard i on the base port + i. Or, with
    /// `drain` or `undrain`, ask the controller to move every chain off a node of the cluster
    /// (or to give it chains again).
    Node(NodeRun),
    /// Run the controller: nodes register and heartbeat with it, it places logs and serves
    /// the cluster map; until SIGTERM or SIGINT.
    Controller(ControllerArgs),
    /// Run a local dev cluster (a controller and nodes as child processes on loopback) until
    /// Ctrl-C or SIGTERM; a member that dies is reported and the rest goes on (with
    /// --restart-dead, it is started again).
    Dev(DevArgs),
    /// Run whole clusters in one thread from seeds, with faults, and check every history
    /// (the deterministic simulator; a failing seed replays exactly).
    Sim(SimArgs),
    /// Create, describe, list or delete logs.
    Log {
        #[command(subcommand)]
        command: cli::LogCommand,
        #[command(flatten)]
        common: cli::Common,
    },
    /// Append records to a log: the arguments, else each line of stdin, or --file as one.
    Append {
        #[command(flatten)]
        args: cli::AppendArgs,
        #[command(flatten)]
        common: cli::Common,
    },
    /// Print a log's records from --from up to --to (default: the tail).
    Read {
        #[command(flatten)]
        args: cli::ReadArgs,
        #[command(flatten)]
        common: cli::Common,
    },
    /// Trim a log's records below --before.
    Trim {
        #[command(flatten)]
        args: cli::TrimArgs,
        #[command(flatten)]
        common: cli::Common,
    },
    /// Print a log's last records; with --follow, keep printing new ones as they commit.
    Tail {
        #[command(flatten)]
        args: cli::TailArgs,
        #[command(flatten)]
        common: cli::Common,
    },
    /// A cluster (--target the controller): its nodes (alive, drained), its logs with their
    /// epoch and chain (under-replicated if shorter than the rf), and each replica's tail
    /// (catching up if below the epoch's start). A node: per shard, reachable or not, its logs
    /// and their tails. Exits 1 if a shard (a node, a replica) does not answer.
    Status {
        #[command(flatten)]
        args: cli::StatusArgs,
        #[command(flatten)]
        common: cli::Common,
    },
}

/// `chainlog node`: a node's flags, to run it, or a subcommand about one of a cluster's nodes.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct NodeRun {
    #[command(subcommand)]
    operation: Option<cli::NodeCommand>,
    /// Boxed: a node's settings are most of the command line's size, and the other commands
    /// need none of them.
    #[command(flatten)]
    args: Box<NodeArgs>,
}

/// `chainlog dev`'s arguments.
#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Nodes (more than 1, or --rf above 1, starts the controller too).
    #[arg(long, value_name = "N", default_value_t = 1)]
    nodes: usize,
    /// The cluster's default replication factor (at most the nodes; above 1 starts the
    /// controller too): logs created without one (`chainlog log create` without --rf) get it.
    #[arg(long, value_name = "R", default_value_t = 1)]
    rf: usize,
    /// Spread the nodes over this many failure zones (`--zone zone-1` ... on each node, in
    /// turn), to see placement keep a chain's replicas in distinct zones [default: none].
    #[arg(long, value_name = "Z", default_value_t = 0)]
    zones: usize,
    /// Shards per node.
    #[arg(long, value_name = "S", default_value_t = 1)]
    shards: usize,
    /// Keep the processes' data and logs here (default: a temp dir, removed on stop).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start a member that died (exited, or was killed) again after this many seconds
    /// [default without a value: 1]; without the flag, a dead member stays down.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1",
          value_parser = cli::seconds)]
    restart_dead: Option<Duration>,
}

/// `chainlog sim`'s arguments.
#[derive(clap::Args, Debug)]
struct SimArgs {
    /// The first seed.
    #[arg(long, value_name = "S", default_value_t = 0)]
    from: u64,
    /// Seeds to run (from --from on).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    seeds: u64,
    /// Threads running seeds (default: one per core).
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
    /// Nodes per cluster [default: 3, 4 with --reconfigure].
    #[arg(long)]
    nodes: Option<usize>,
    /// Shards per node.
    #[arg(long, default_value_t = 1)]
    shards: u16,
    /// No faults (only the workload).
    #[arg(long)]
    no_faults: bool,
    /// Machines that lose power tell their peers nothing (as in production; off until nodes
    /// notice such peers by themselves: ARCHITECTURE.md, "The simulator").
    #[arg(long)]
    silent_power_loss: bool,
    /// Virtual seconds of load and faults per run.
    #[arg(long, value_name = "SECS", default_value_t = 1.5)]
    active_secs: f64,
    /// A controller reconfigures the chains, and faults aim at heads, middles, tails and the
    /// controller (four nodes unless --nodes says otherwise).
    #[arg(long)]
    reconfigure: bool,
    /// Put a known bug in (to see the checks catch it): head-skips-settling.
    #[arg(long, value_name = "BUG")]
    canary: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The simulator runs thousands of clusters: their nodes' logs only when asked for.
    let quiet = matches!(cli.command, Command::Sim(_));
    chainlog::logging::init(if quiet { "off" } else { "info" });
    match cli.command {
        Command::Log { command, common } => cli::run(common, cli::Command::Log(command)),
        Command::Append { args, common } => cli::run(common, cli::Command::Append(args)),
        Command::Read { args, common } => cli::run(common, cli::Command::Read(args)),
        Command::Trim { args, common } => cli::run(common, cli::Command::Trim(args)),
        Command::Tail { args, common } => cli::run(common, cli::Command::Tail(args)),
        Command::Status { args, common } => cli::run(common, cli::Command::Status(args)),
        Command::Node(NodeRun {
            operation: Some(operation),
            ..
        }) => cli::run(operation.common().clone(), cli::Command::Node(operation)),
        Command::Node(NodeRun { args, .. }) => args.run("chainlog node"),
        Command::Controller(args) => args.run("chainlog controller"),
        Command::Dev(args) => dev(args),
        Command::Sim(args) => sim(args),
    }
}

/// `chainlog sim`: runs the seeds, prints a progress line, then every failing seed with the
/// command that replays it. Exit codes: 0 no violation, 1 violations, 2 bad arguments.
fn sim(args: SimArgs) -> ExitCode {
    let canary = match args.canary.as_deref() {
        None => None,
        Some("head-skips-settling") => Some(chainlog::sim::Canary::HeadSkipsSettling),
        Some(other) => {
            eprintln!("chainlog sim: no canary {other:?} (there is head-skips-settling)");
            return ExitCode::from(2);
        }
    };
    let base = if args.reconfigure {
        chainlog::sim::Options::reconfiguration()
    } else {
        chainlog::sim::Options::default()
    };
    let options = chainlog::sim::Options {
        nodes: args.nodes.unwrap_or(base.nodes),
        shards: args.shards,
        faults: !args.no_faults,
        silent_power_loss: args.silent_power_loss,
        active_us: (args.active_secs * 1e6) as u64,
        canary,
        ..base
    };
    if options.nodes < usize::from(options.rf) {
        eprintln!("chainlog sim: --nodes must be at least {}", options.rf);
        return ExitCode::from(2);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = std::time::Instant::now();
    let reported = std::sync::atomic::AtomicUsize::new(0);
    let progress = |s: &chainlog::sim::Summary| {
        // A failing seed is named at once (a long run's summary comes only at its end).
        let seen = reported.load(std::sync::atomic::Ordering::Relaxed);
        for report in s.failures.iter().skip(seen) {
            eprintln!(
                "\nchainlog sim: seed {} FAILED ({} violation(s))",
                report.seed,
                report.violations.len()
            );
        }
        reported.store(s.failures.len(), std::sync::atomic::Ordering::Relaxed);
        if s.runs.is_multiple_of(10) || s.runs == args.seeds {
            eprint!(
                "\rchainlog sim: {}/{} seeds, {} failing, {:.1} h simulated, {} batches acknowledged, {:.0} s",
                s.runs,
                args.seeds,
                s.failures.len(),
                s.simulated_us as f64 / 3.6e9,
                s.acked,
                started.elapsed().as_secs_f64()
            );
        }
    };
    let summary = chainlog::sim::run_seeds(args.from, args.seeds, &options, threads, &progress);
    eprintln!();
    println!(
        "{} seeds from {}: {} failing; {:.2} h simulated; faults {:?}; {} batches acknowledged; \
         workload {:?}; reconfigurations {:?}",
        summary.runs,
        args.from,
        summary.failures.len(),
        summary.simulated_us as f64 / 3.6e9,
        summary.faults,
        summary.acked,
        summary.workload,
        summary.reconfigurations
    );
    for report in &summary.failures {
        println!("{report}");
        println!(
            "  replay: RUST_LOG=debug chainlog sim --from {} --seeds 1 --threads 1 --nodes {} --shards {}{}{}{}",
            report.seed,
            options.nodes,
            args.shards,
            if args.reconfigure { " --reconfigure" } else { "" },
            if args.no_faults { " --no-faults" } else { "" },
            if args.silent_power_loss {
                " --silent-power-loss"
            } else {
                ""
            }
        );
    }
    if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// How often `chainlog dev` looks whether a process died while it waits for Ctrl-C.
const DEV_CHECK_EVERY: Duration = Duration::from_millis(200);
/// Restarts of a member in a row that fail before `chainlog dev --restart-dead` stops trying.
const DEV_RESTARTS_MAX: u32 = 3;

/// `chainlog dev`: starts the cluster, prints where it is, waits for SIGINT or SIGTERM, stops
/// every process. A member that dies meanwhile is reported on stderr (with the end of its
/// log) and the rest goes on; with `--restart-dead`, it is started again after the delay
/// (given up after [`DEV_RESTARTS_MAX`] failed restarts in a row). Exit codes: 0 stopped by a
/// signal, 1 the cluster did not start, 2 bad arguments.
fn dev(args: DevArgs) -> ExitCode {
    // Before any thread starts, so that every thread inherits the block and only `wait`
    // takes the signals; the children start with an empty mask (std resets it).
    let signals = match StopSignals::block() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("chainlog dev: signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let launcher = match Launcher::current_exe(&["node"], &["controller"]) {
        Ok(launcher) => launcher,
        Err(e) => {
            eprintln!("chainlog dev: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rf = args.rf;
    let options = DevOptions {
        nodes: args.nodes,
        rf: args.rf,
        zones: args.zones,
        shards: args.shards,
        data_dir: args.data_dir,
        ..DevOptions::new(launcher)
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chainlog dev: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cluster = match runtime.block_on(DevCluster::start(options)) {
        Ok(cluster) => cluster,
        Err(e @ DevError::Invalid(_)) => {
            eprintln!("chainlog dev: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("chainlog dev: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_dev(&cluster, rf);
    // Members to start again, when, and how many restarts of each failed in a row.
    let mut restarts: Vec<(Member, Instant, u32)> = Vec::new();
    loop {
        if signals.wait(DEV_CHECK_EVERY) {
            eprintln!("chainlog dev: stopping every process");
            cluster.stop();
            return ExitCode::SUCCESS;
        }
        for exited in cluster.exited() {
            let next = match args.restart_dead {
                Some(delay) => {
                    restarts.push((exited.member, Instant::now() + delay, 0));
                    format!("it is started again in {delay:?}")
                }
                None => "it stays down (--restart-dead starts dead members again)".into(),
            };
            eprintln!(
                "chainlog dev: {} exited ({}); the rest of the cluster goes on, {next}; the end of its log {}:\n{}",
                exited.member,
                exited.status,
                exited.log.display(),
                exited.tail
            );
        }
        let now = Instant::now();
        let due: Vec<(Member, u32)> = restarts
            .iter()
            .filter(|(_, at, _)| *at <= now)
            .map(|&(member, _, failed)| (member, failed))
            .collect();
        restarts.retain(|(_, at, _)| *at > now);
        for (member, failed) in due {
            match runtime.block_on(cluster.restart(member)) {
                Ok(()) => {
                    let process = cluster.member(member).expect("just restarted");
                    eprintln!(
                        "chainlog dev: {member} started again (pid {}), at {}",
                        process.pid(),
                        process.addr()
                    );
                }
                Err(e) => {
                    let failed = failed + 1;
                    if failed < DEV_RESTARTS_MAX {
                        let delay = args.restart_dead.unwrap_or_default();
                        restarts.push((member, Instant::now() + delay, failed));
                        eprintln!("chainlog dev: starting {member} again failed ({failed} in a row), trying again in {delay:?}: {e}");
                    } else {
                        eprintln!("chainlog dev: starting {member} again failed {failed} times in a row; it stays down: {e}");
                    }
                }
            }
        }
    }
}

/// One line for the controller (if any) and one per node, then how to use the cluster
/// (stdout, flushed: scripts read it).
fn print_dev(cluster: &DevCluster, rf: usize) {
    let dir = cluster.data_dir().display();
    let fate = if cluster.is_temporary() {
        "removed on stop"
    } else {
        "kept"
    };
    let target = cluster.target();
    let mut out = std::io::stdout().lock();
    let mut lines = vec![format!("chainlog dev: data in {dir} ({fate})")];
    if let Some(controller) = cluster.controller() {
        lines.push(format!(
            "controller (pid {}): at {}, data in {}, log in {}",
            controller.pid(),
            controller.addr(),
            controller.data_dir().display(),
            controller.log_file().display()
        ));
    }
    for node in cluster.nodes() {
        let process = node.process();
        lines.push(format!(
            "node {} (pid {}): shard 0 at {}, metrics at {}, data in {}, log in {}",
            node.id(),
            process.pid(),
            process.addr(),
            node.metrics_url(),
            process.data_dir().display(),
            process.log_file().display()
        ));
    }
    if cluster.controller().is_some() {
        lines.push(format!(
            "use it:  chainlog log create orders --target {target}   # rf {rf}, the cluster's default"
        ));
        lines.push(format!(
            "         chainlog append orders hello --target {target}"
        ));
        lines.push(format!("         chainlog status --target {target}"));
    } else {
        lines.push(format!("use it:  chainlog status --target {target}"));
    }
    lines.push(format!(
        "         chainlog-bench append --target {target} --rf {rf} --record-size 1024 --concurrency 8 --duration 10"
    ));
    if let Some(metrics) = cluster.controller_metrics() {
        lines.push(format!(
            "         curl http://{metrics}/metrics   # the controller's"
        ));
    }
    lines.push("Ctrl-C (or SIGTERM) stops every process.".to_string());
    for line in lines {
        // A closed stdout must not stop the cluster from running or being torn down.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
