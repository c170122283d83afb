//! `chainlog-bench`: chainlog's load generator. This file owns the command line (one
//! subcommand per mode) and the process's exit code; each mode lives in its own module and
//! shares the measurement and reporting code of [`report`].
//!
//! Modes: `storage` (the storage engine alone, in this process, no network), `append`
//! (closed- or open-loop appends against a running node or cluster, through the client
//! library; the load engine is [`load`]), `plan` (the capacity planner: an open-loop sweep to the knee)
//! and `catalog` (log creation at scale next to an appender).

mod append_mode;
mod catalog_mode;
mod faults;
mod fingerprint;
mod html;
mod load;
mod plan;
mod report;
mod stages;
mod storage_mode;
mod target;
mod topology;
mod trace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// chainlog's load generator: durable-append throughput and latency percentiles.
#[derive(Debug, Parser)]
#[command(name = "chainlog-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// The storage engine alone (no network): C closed-loop clients in one thread, as a shard
    /// runs them, each with one durable append of one record outstanding.
    Storage(storage_mode::StorageArgs),
    /// Appends against a running node over the network, through one client: closed loop
    /// (--concurrency C appenders, one append outstanding each) or open loop (--rate R
    /// records/s, latency from the intended send time).
    Append(append_mode::AppendArgs),
    /// Log creation at scale: create --logs N logs while an appender runs on the same shard;
    /// the create rate as the catalog grows and the appender's latency alone and during it.
    Catalog(catalog_mode::CatalogArgs),
    /// Capacity planning: calibrate, sweep offered load in open loop, and answer the highest
    /// rate a node sustains at p99 <= --p99-ms for records of --record-size.
    Plan(plan::PlanArgs),
    /// Run a storage node with `chainlog node`'s flags: how `--dev` starts its nodes from
    /// this executable.
    #[command(hide = true)]
    Node(chainlog::node::NodeArgs),
    /// Run the controller with `chainlog controller`'s flags: how `--dev` starts a cluster's
    /// controller from this executable.
    #[command(hide = true)]
    Controller(chainlog::controller::ControllerArgs),
}

fn main() -> ExitCode {
    // Logs go to stderr, quiet unless RUST_LOG asks: stdout is for the report.
    chainlog::logging::init("warn");
    let cli = Cli::parse();
    let outcome = match cli.mode {
        Mode::Storage(args) => storage_mode::main(args).map_err(Failure::Error),
        Mode::Append(args) => append_mode::main(args),
        Mode::Plan(args) => plan::main(args).map_err(Failure::Error),
        Mode::Catalog(args) => catalog_mode::main(args).map_err(Failure::Error),
        Mode::Node(args) => return args.run("chainlog-bench node"),
        Mode::Controller(args) => return args.run("chainlog-bench controller"),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Error(message)) => {
            eprintln!("chainlog-bench: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Unhealthy(message)) => {
            eprintln!("chainlog-bench: the run failed: {message}");
            ExitCode::from(EXIT_UNHEALTHY)
        }
    }
}

/// The exit status of a run that finished, reports written, but whose appends were not
/// acknowledged well enough for its figures to describe a healthy target.
const EXIT_UNHEALTHY: u8 = 3;

/// Why a mode did not succeed.
#[derive(Debug)]
enum Failure {
    /// It could not run, or not to the end (exit status 1).
    Error(String),
    /// It ran and reported, but too few of its appends were acknowledged (exit status 3).
    Unhealthy(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Error(message)
    }
}

/// Exits with clap's usage-error format and exit code (2), naming subcommand `mode`: for
/// argument values that can only be checked against each other or against the engine's
/// limits after parsing.
fn usage_error(mode: &str, message: impl std::fmt::Display) -> ! {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    cli.build();
    let command = cli
        .find_subcommand_mut(mode)
        .expect("usage_error names a subcommand");
    command
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}
