//! The `chainlog` command: `chainlog node` runs a storage node; the other subcommands are
//! clients of a node (their code is in `cli/`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use chainlog::node::{self, NodeSettings};
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
    /// A TOML settings file (keys as the flags, with underscores); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: NodeSettings,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
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
            let file = match args.config.as_deref().map(NodeSettings::load).transpose() {
                Ok(file) => file.unwrap_or_default(),
                Err(e) => {
                    eprintln!("chainlog node: --config {e}");
                    return ExitCode::from(2);
                }
            };
            let mut flags = args.settings;
            if args.no_pin {
                flags.pin = Some(false);
            }
            let config = match flags.or(file).resolve() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("chainlog node: {e}");
                    return ExitCode::from(2);
                }
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
