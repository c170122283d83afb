//! The `chainlog` command: `chainlog node` runs a storage node, `chainlog controller` the
//! cluster's controller ([`chainlog::controller`]), `chainlog dev` a local dev cluster
//! ([`chainlog::dev`]); the other subcommands are clients of a node or of a cluster (their
//! code is in `cli/`).

mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chainlog::controller::ControllerArgs;
use chainlog::dev::{DevCluster, DevError, DevOptions, Launcher};
use chainlog::node::NodeArgs;
use chainlog::signals::StopSignals;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    /// Run a storage node: one shard thread per core, shard i on the base port + i.
    Node(NodeArgs),
    /// Run the controller: nodes register and heartbeat with it, it places logs and serves
    /// the cluster map; until SIGTERM or SIGINT.
    Controller(ControllerArgs),
    /// Run a local dev cluster (a controller and nodes as child processes on loopback) until
    /// Ctrl-C or SIGTERM.
    Dev(DevArgs),
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
    /// A cluster (--target the controller): its nodes, its logs with their chains, and each
    /// replica's tail. A node: per shard, reachable or not, its logs and their tails.
    Status {
        #[command(flatten)]
        common: cli::Common,
    },
}

/// `chainlog dev`'s arguments.
#[derive(clap::Args, Debug)]
struct DevArgs {
    /// Nodes (more than 1, or --rf above 1, starts the controller too).
    #[arg(long, value_name = "N", default_value_t = 1)]
    nodes: usize,
    /// Replication factor of the logs (at most the nodes).
    #[arg(long, value_name = "R", default_value_t = 1)]
    rf: usize,
    /// Shards per node.
    #[arg(long, value_name = "S", default_value_t = 1)]
    shards: usize,
    /// Keep the processes' data and logs here (default: a temp dir, removed on stop).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Log { command, common } => cli::run(common, cli::Command::Log(command)),
        Command::Append { args, common } => cli::run(common, cli::Command::Append(args)),
        Command::Read { args, common } => cli::run(common, cli::Command::Read(args)),
        Command::Trim { args, common } => cli::run(common, cli::Command::Trim(args)),
        Command::Tail { args, common } => cli::run(common, cli::Command::Tail(args)),
        Command::Status { common } => cli::run(common, cli::Command::Status),
        Command::Node(args) => args.run("chainlog node"),
        Command::Controller(args) => args.run("chainlog controller"),
        Command::Dev(args) => dev(args),
    }
}

/// How often `chainlog dev` looks whether a process died while it waits for Ctrl-C.
const DEV_CHECK_EVERY: Duration = Duration::from_millis(200);

/// `chainlog dev`: starts the cluster, prints where it is, waits for SIGINT or SIGTERM, stops
/// every process. Exit codes: 0 stopped by a signal, 1 a process failed, 2 bad arguments.
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
    drop(runtime);
    print_dev(&cluster, rf);
    loop {
        if signals.wait(DEV_CHECK_EVERY) {
            eprintln!("chainlog dev: stopping every process");
            cluster.stop();
            return ExitCode::SUCCESS;
        }
        if let Err(e) = cluster.check() {
            eprintln!("chainlog dev: {e}");
            cluster.stop();
            return ExitCode::FAILURE;
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
            "use it:  chainlog log create orders --rf {rf} --target {target}"
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
    lines.push("Ctrl-C (or SIGTERM) stops every process.".to_string());
    for line in lines {
        // A closed stdout must not stop the cluster from running or being torn down.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}
