//! The `chainlog` command: `chainlog node` runs a storage node; the other subcommands are
//! clients of a node (their code is in `cli/`).

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use chainlog::node::{self, NodeConfig};
use chainlog::storage::{DurabilityMode, StoreConfig};
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
    /// Per shard: reachable or not, its logs and their tails.
    Status {
        #[command(flatten)]
        common: cli::Common,
    },
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Data directory (created if missing); shard i keeps its segments in DIR/shard-i.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Address of shard 0; shard i listens on the same host at port + i.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Shard threads (default: one per core).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Durability of appends: auto measures dsync and fdatasync at open and picks the faster.
    #[arg(long, default_value = "auto", value_parser = parse_durability)]
    durability: DurabilityMode,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// This node's id, reported to clients in HELLO.
    #[arg(long, default_value_t = 1)]
    node_id: u64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default: the listen host, at the
    /// port after the last shard's); `off` to serve none.
    #[arg(long, value_name = "HOST:PORT|off")]
    metrics: Option<String>,
}

fn parse_durability(s: &str) -> Result<DurabilityMode, String> {
    s.parse()
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
        Command::Node(args) => {
            let shards = args
                .shards
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if shards == 0 || usize::from(args.listen.port()) + shards > usize::from(u16::MAX) + 1 {
                eprintln!("chainlog node: --shards must be at least 1 and the ports base..base+shards must exist");
                return ExitCode::from(2);
            }
            let metrics = match args.metrics.as_deref() {
                Some("off") => None,
                Some(addr) => match addr.parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        eprintln!("chainlog node: --metrics {addr}: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => {
                    let mut addr = args.listen;
                    addr.set_port(args.listen.port().saturating_add(shards as u16));
                    Some(addr)
                }
            };
            let limits = chainlog::net::Limits::DEFAULT;
            // A store frame holds the largest APPEND the node accepts (one frame, one write).
            let frame_bytes = chainlog::storage::format::block_align(
                limits.frame_bytes_max as usize + chainlog::storage::format::FRAME_HEADER_BYTES,
            );
            let store = StoreConfig {
                durability: args.durability,
                batch_bytes_max: frame_bytes.max(StoreConfig::default().batch_bytes_max),
                record_bytes_max: limits.record_bytes_max as usize,
                ..StoreConfig::default()
            };
            let config = NodeConfig {
                data_dir: args.data_dir,
                listen: args.listen,
                shards,
                pin: !args.no_pin,
                recv_bytes: 2 * limits.frame_bytes_max as usize,
                in_flight_max: limits.in_flight_max as usize,
                limits,
                node_id: args.node_id,
                metrics,
                store,
            };
            match node::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chainlog node: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
