//! The client commands of `chainlog` (everything but running a `node`, the `controller` and
//! `dev`): log administration, append, read, trim, tail and status, each a thin layer over
//! [`chainlog::client`]; and the cluster operations (`log seal`, `log reconfigure`, `node
//! drain`, `node undrain`), requests to the controller through its blocking client
//! ([`chainlog::controller::client`]). `--target` is a standalone node's shard 0 or a
//! cluster's controller (the client library routes from there; the operations need the
//! controller). Output is one line per record or answer for people, or with `--json` one
//! JSON object per line.
//!
//! Exit codes: 0 ok, 1 the request failed (the server's error name and message, or why the
//! node could not be reached; for `status`, a shard, node or replica that did not answer),
//! 2 bad arguments.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chainlog::client::{log_id, AppendOptions, Client, ClientError, LogInfo, Record};
use chainlog::controller::client::{Client as ControllerClient, ClientError as ControllerError};
use chainlog::net::cluster::{ClusterMap, MapLog};
use chainlog::net::{
    ErrorCode, LogRef, HEARTBEAT_MS_NEVER, LSN_FROM_TAIL, RECORD_HEADER_BYTES, RF_DEFAULT,
};
use clap::{Args, Subcommand};
use serde_json::json;

/// Records a READ asks for at most.
const READ_RECORDS_MAX: u32 = 4096;
/// Bytes of records a READ asks for at most.
const READ_BYTES_MAX: u32 = 1 << 20;
/// Records `tail` shows without `--from`.
const TAIL_RECORDS_DEFAULT: u64 = 10;
/// Pause between two tries of `status --wait`, and between two looks at the map while
/// `node drain` waits.
const STATUS_RETRY_EVERY: Duration = Duration::from_millis(200);
/// How long a request to the controller may take (a reconfiguration waits up to the
/// controller's create timeout, 5 s by default).
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the node or the cluster is and how to print.
#[derive(Args, Debug, Clone)]
pub(crate) struct Common {
    /// Address of the node's shard 0, or of the cluster's controller.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7400",
        global = true
    )]
    target: String,
    /// One JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum LogCommand {
    /// Create a log.
    Create {
        /// The log's name.
        name: String,
        /// Replicas per chain (above 1 needs a cluster: --target the controller) [default:
        /// the target's: 1 on a standalone node, the controller's --default-rf in a cluster].
        #[arg(long, value_name = "R", value_parser = clap::value_parser!(u8).range(1..))]
        rf: Option<u8>,
    },
    /// A log's id, positions, epoch and shard.
    Describe {
        /// The log's name.
        name: String,
    },
    /// Every log of the node (all shards), or of the cluster.
    List,
    /// Delete a log.
    Delete {
        /// The log's name.
        name: String,
    },
    /// Seal the log's current epoch at its replicas and start the next one, with the chain
    /// the controller picks (as after a failure: the replicas in order, then spares up to
    /// the replication factor). Needs --target the controller.
    Seal {
        /// The log's name.
        name: String,
        /// Only if this is the current epoch (else WRONG_EPOCH).
        #[arg(long, value_name = "E")]
        epoch: Option<u64>,
    },
    /// Seal the log's current epoch and start the next one with this chain: members of the
    /// current chain, in their order (at least one), then nodes new to it, which join at the
    /// tail and copy the log from their predecessor. A chain that would lose records is
    /// refused. Needs --target the controller.
    Reconfigure {
        /// The log's name.
        name: String,
        /// The new chain's node ids, head first, e.g. `2,3,4`.
        #[arg(long, value_name = "IDS", value_delimiter = ',', required = true,
              value_parser = clap::value_parser!(u64).range(1..))]
        chain: Vec<u64>,
        /// Only if this is the current epoch (else WRONG_EPOCH).
        #[arg(long, value_name = "E")]
        epoch: Option<u64>,
    },
}

/// `chainlog node drain` and `undrain`: requests to the controller about one of its nodes.
#[derive(Subcommand, Debug)]
pub(crate) enum NodeCommand {
    /// Move every chain off the node (each by a seal and a new epoch without it) and give it
    /// no new one, for maintenance; it stays in the cluster. Waits until no chain that can
    /// move holds it (an rf 1 log, or one whose other replicas are down, cannot).
    Drain {
        /// The node's id.
        node_id: u64,
        /// Wait at most this long for the chains to move (0: do not wait).
        #[arg(long, value_name = "SECONDS", value_parser = seconds, default_value = "60")]
        wait: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Undo a drain: the node gets chains again (under-replicated logs grow back onto it).
    Undrain {
        /// The node's id.
        node_id: u64,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args, Debug)]
pub(crate) struct AppendArgs {
    /// The log's name.
    log: String,
    /// Records, one per argument; without any, each line of stdin is a record.
    records: Vec<String>,
    /// The whole file is one record.
    #[arg(long, value_name = "PATH", conflicts_with = "records")]
    file: Option<PathBuf>,
    /// Append only if the first record gets this LSN (each later batch: right after the
    /// previous one); otherwise fail with CONDITION_FAILED and the log's tail.
    #[arg(long, value_name = "LSN")]
    expected_lsn: Option<u64>,
    /// The writer's fencing token: refused (FENCED) if lower than the log's; a higher one
    /// becomes the log's.
    #[arg(long, value_name = "TOKEN", value_parser = clap::value_parser!(u64).range(1..))]
    fencing_token: Option<u64>,
    /// Idempotency key's writer (nonzero): the same command run again with the same
    /// --writer-id, --writer-seq and records returns the original LSNs and appends nothing.
    #[arg(long, value_name = "ID", requires = "writer_seq",
          value_parser = clap::value_parser!(u64).range(1..))]
    writer_id: Option<u64>,
    /// Idempotency key's sequence number of the first batch; later batches of the command
    /// take the next numbers.
    #[arg(long, value_name = "SEQ", requires = "writer_id")]
    writer_seq: Option<u64>,
}

#[derive(Args, Debug)]
pub(crate) struct ReadArgs {
    /// The log's name.
    log: String,
    /// The first LSN.
    #[arg(long, value_name = "N")]
    from: u64,
    /// Stop before this LSN (default: the tail when the read started).
    #[arg(long, value_name = "M")]
    to: Option<u64>,
}

#[derive(Args, Debug)]
pub(crate) struct TrimArgs {
    /// The log's name.
    log: String,
    /// Records below this LSN are trimmed.
    #[arg(long, value_name = "LSN")]
    before: u64,
}

#[derive(Args, Debug)]
pub(crate) struct TailArgs {
    /// The log's name.
    log: String,
    /// The first LSN (default: the last 10 records; with --follow, new records only).
    #[arg(long, value_name = "N")]
    from: Option<u64>,
    /// Keep printing records as they are committed (a subscription), until interrupted.
    #[arg(long)]
    follow: bool,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Try again until every shard (a cluster: every node and replica) answers, for up to
    /// this long; then print the last try.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    wait: Option<Duration>,
}

/// A duration in seconds (fractions allowed).
pub(crate) fn seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{e}"))
}

/// A client command with its common options.
#[derive(Debug)]
pub(crate) enum Command {
    Log(LogCommand),
    Node(NodeCommand),
    Append(AppendArgs),
    Read(ReadArgs),
    Trim(TrimArgs),
    Tail(TailArgs),
    Status(StatusArgs),
}

impl NodeCommand {
    /// Where the controller is and how to print.
    pub(crate) fn common(&self) -> &Common {
        match self {
            NodeCommand::Drain { common, .. } | NodeCommand::Undrain { common, .. } => common,
        }
    }
}

impl Command {
    /// Whether this is a cluster operation: a request to the controller ([`operate`]).
    fn is_operation(&self) -> bool {
        matches!(
            self,
            Command::Log(LogCommand::Seal { .. } | LogCommand::Reconfigure { .. })
                | Command::Node(_)
        )
    }

    /// The log the command is about, if one.
    fn log_name(&self) -> Option<&str> {
        match self {
            Command::Log(
                LogCommand::Create { name, .. }
                | LogCommand::Describe { name }
                | LogCommand::Delete { name }
                | LogCommand::Seal { name, .. }
                | LogCommand::Reconfigure { name, .. },
            ) => Some(name),
            Command::Append(AppendArgs { log, .. })
            | Command::Read(ReadArgs { log, .. })
            | Command::Trim(TrimArgs { log, .. })
            | Command::Tail(TailArgs { log, .. }) => Some(log),
            Command::Log(LogCommand::List) | Command::Node(_) | Command::Status(_) => None,
        }
    }
}

/// Runs `command` and returns the process's exit code.
pub(crate) fn run(common: Common, command: Command) -> ExitCode {
    if command.is_operation() {
        let log = command.log_name().map(str::to_owned);
        return exit_code(operate(&common, command), log);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chainlog: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log = command.log_name().map(str::to_owned);
    exit_code(runtime.block_on(run_async(&common, command)), log)
}

/// The exit code of a command that ended with `result`, its error said on stderr (`log`:
/// the name of the log it was about).
fn exit_code(result: Result<(), Failure>, log: Option<String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("chainlog: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("chainlog: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Controller(e)) => {
            match (&e, &log) {
                (ControllerError::Server(s), Some(name)) if s.code == ErrorCode::UnknownLog => {
                    eprintln!(
                        "chainlog: UNKNOWN_LOG: no log {name:?} (id {})",
                        log_id(name)
                    )
                }
                (ControllerError::Protocol(reason), _) if reason.contains("is a node") => {
                    eprintln!("chainlog: {reason}: cluster operations go to the controller (--target its address)")
                }
                _ => eprintln!("chainlog: {e}"),
            }
            ExitCode::FAILURE
        }
        Err(Failure::Client(e)) => {
            match (e.code(), &log) {
                // The server names the log by its id only; the user named it.
                (Some(ErrorCode::UnknownLog), Some(name)) => {
                    eprintln!(
                        "chainlog: UNKNOWN_LOG: no log {name:?} (id {})",
                        log_id(name)
                    )
                }
                _ => eprintln!("chainlog: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Bad arguments (exit 2).
    Usage(String),
    /// The controller's client failed (exit 1).
    Controller(ControllerError),
    /// The request failed (exit 1).
    Failed(String),
    /// The client library's error (exit 1).
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Client(e)
    }
}

impl From<ControllerError> for Failure {
    fn from(e: ControllerError) -> Failure {
        Failure::Controller(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Failed(e.to_string())
    }
}

async fn target(common: &Common) -> Result<SocketAddr, Failure> {
    let mut addrs = tokio::net::lookup_host(&common.target)
        .await
        .map_err(|e| Failure::Usage(format!("--target {}: {e}", common.target)))?;
    addrs
        .next()
        .ok_or_else(|| Failure::Usage(format!("--target {}: no address", common.target)))
}

async fn run_async(common: &Common, command: Command) -> Result<(), Failure> {
    let addr = target(common).await?;
    let json = common.json;
    if let Command::Status(args) = &command {
        return status_command(addr, args, json).await;
    }
    let client = Client::connect(addr).await?;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Log(LogCommand::Create { name, rf }) => {
            let id = client
                .create_log_with(&name, rf.unwrap_or(RF_DEFAULT))
                .await?;
            let shard = client.shard_of(id);
            let mapped = client
                .map()
                .and_then(|map| map.log(id).map(|l| (l.chain.clone(), l.replication_factor)));
            let (chain, rf) = match mapped {
                Some((chain, rf)) => (Some(chain), rf),
                None => (
                    None,
                    client
                        .describe_log(LogRef::Id(id))
                        .await?
                        .replication_factor,
                ),
            };
            if json {
                let mut created =
                    json!({"name": name, "log_id": id, "shard": shard, "replication_factor": rf});
                if let Some(chain) = &chain {
                    created["chain"] = json!(chain);
                }
                print_json(&mut out, created)?;
            } else {
                match &chain {
                    Some(chain) => writeln!(
                        out,
                        "created log {name}: id {id}, rf {rf}, chain {}, shard {shard} at the head",
                        chain_text(chain)
                    )?,
                    None => writeln!(out, "created log {name}: id {id}, shard {shard}")?,
                }
            }
        }
        Command::Log(LogCommand::Describe { name }) => {
            let info = client.describe_log(LogRef::Name(&name)).await?;
            if json {
                print_json(&mut out, info_json(&info))?;
            } else {
                writeln!(
                    out,
                    "log {}: id {}, shard {}, tail {}, trim point {}, epoch {}, replication factor {}",
                    info.name,
                    info.log_id,
                    info.shard,
                    info.tail,
                    info.trim_point,
                    info.epoch,
                    info.replication_factor
                )?;
            }
        }
        Command::Log(LogCommand::List) => {
            for log in client.list_logs().await? {
                if json {
                    print_json(
                        &mut out,
                        json!({"name": log.name, "log_id": log.log_id, "shard": client.shard_of(log.log_id)}),
                    )?;
                } else {
                    writeln!(out, "{}\t{}", log.log_id, log.name)?;
                }
            }
        }
        Command::Log(LogCommand::Delete { name }) => {
            let id = log_id(&name);
            client.delete_log(id).await?;
            if json {
                print_json(
                    &mut out,
                    json!({"name": name, "log_id": id, "deleted": true}),
                )?;
            } else {
                writeln!(out, "deleted log {name} (id {id})")?;
            }
        }
        Command::Append(args) => append(&client, &args, json, &mut out).await?,
        Command::Read(args) => {
            let id = log_id(&args.log);
            let to = match args.to {
                Some(to) => to,
                None => client.check_tail(id).await?.tail,
            };
            if to < args.from {
                return Err(Failure::Usage(format!(
                    "--to {to} is below --from {}",
                    args.from
                )));
            }
            read_range(&client, id, args.from, to, json, &mut out).await?;
        }
        Command::Trim(args) => {
            let id = log_id(&args.log);
            // A trim at or below the trim point does nothing (and succeeds): say so.
            let was = client.check_tail(id).await?.trim_point;
            client.trim(id, args.before).await?;
            let trimmed = args.before > was;
            if json {
                print_json(
                    &mut out,
                    json!({"name": args.log, "log_id": id, "trimmed_before": args.before,
                           "trimmed": trimmed, "trim_point": was.max(args.before)}),
                )?;
            } else if trimmed {
                writeln!(out, "trimmed log {} below LSN {}", args.log, args.before)?;
            } else {
                writeln!(
                    out,
                    "nothing trimmed: log {} is already trimmed below LSN {was}",
                    args.log
                )?;
            }
        }
        Command::Tail(args) => {
            let id = log_id(&args.log);
            if args.follow {
                let mut subscription = client
                    .subscribe(id, args.from.unwrap_or(LSN_FROM_TAIL))
                    .await?;
                while let Some(record) = subscription.next().await {
                    print_record(&mut out, &record?, json)?;
                    out.flush()?;
                }
            } else {
                let tail = client.check_tail(id).await?;
                let from = args.from.unwrap_or_else(|| {
                    tail.tail
                        .saturating_sub(TAIL_RECORDS_DEFAULT)
                        .max(tail.trim_point)
                });
                read_range(&client, id, from, tail.tail, json, &mut out).await?;
            }
        }
        Command::Status(_) => unreachable!("status is run by status_command"),
        Command::Log(LogCommand::Seal { .. } | LogCommand::Reconfigure { .. })
        | Command::Node(_) => unreachable!("cluster operations are run by operate"),
    }
    out.flush()?;
    Ok(())
}

/// A cluster operation ([`Command::is_operation`]): one request to the controller (and, for
/// `node drain`, looks at its map until the node's chains have moved).
fn operate(common: &Common, command: Command) -> Result<(), Failure> {
    use std::net::ToSocketAddrs;
    let addr = common
        .target
        .to_socket_addrs()
        .map_err(|e| Failure::Usage(format!("--target {}: {e}", common.target)))?
        .next()
        .ok_or_else(|| Failure::Usage(format!("--target {}: no address", common.target)))?;
    let mut controller = ControllerClient::connect(addr, CONTROLLER_TIMEOUT)?;
    let mut out = std::io::stdout().lock();
    let json = common.json;
    match command {
        Command::Log(LogCommand::Seal { name, epoch }) => {
            let next = controller.reconfigure_log(log_id(&name), epoch, &[])?;
            print_epoch(&mut out, &name, &next, json)?;
        }
        Command::Log(LogCommand::Reconfigure { name, chain, epoch }) => {
            let next = controller.reconfigure_log(log_id(&name), epoch, &chain)?;
            print_epoch(&mut out, &name, &next, json)?;
        }
        Command::Node(NodeCommand::Drain { node_id, wait, .. }) => {
            let version = controller.drain_node(node_id, true)?;
            let deadline = Instant::now() + wait;
            let (moved, stuck) = loop {
                let map = controller.map()?;
                let (movable, stuck) = chains_holding(&map, node_id);
                if movable.is_empty() || Instant::now() >= deadline {
                    break (movable, stuck);
                }
                std::thread::sleep(STATUS_RETRY_EVERY);
            };
            if json {
                print_json(
                    &mut out,
                    json!({"node_id": node_id, "drained": true, "map_version": version,
                           "still_on_it": moved, "cannot_move": stuck}),
                )?;
            } else {
                writeln!(
                    out,
                    "node {node_id} drained (map version {version}): it gets no new chain"
                )?;
                if !stuck.is_empty() {
                    writeln!(
                        out,
                        "  cannot move (no other live replica to take them): {}",
                        stuck.join(", ")
                    )?;
                }
            }
            out.flush()?;
            if !moved.is_empty() {
                return Err(Failure::Failed(format!(
                    "after {wait:?}, logs still on node {node_id}: {} (the controller goes on \
                     moving them; its log says why it could not yet)",
                    moved.join(", ")
                )));
            }
            if !json {
                writeln!(out, "  no chain that can move holds it any more")?;
            }
        }
        Command::Node(NodeCommand::Undrain { node_id, .. }) => {
            let version = controller.drain_node(node_id, false)?;
            if json {
                print_json(
                    &mut out,
                    json!({"node_id": node_id, "drained": false, "map_version": version}),
                )?;
            } else {
                writeln!(
                    out,
                    "node {node_id} undrained (map version {version}): it gets chains again"
                )?;
            }
        }
        _ => unreachable!("only cluster operations are run here"),
    }
    out.flush()?;
    Ok(())
}

/// The logs whose current chain holds `node_id`: those that can move off it (another member
/// is alive and not drained) and those that cannot, by name.
fn chains_holding(map: &ClusterMap, node_id: u64) -> (Vec<String>, Vec<String>) {
    let mut movable = Vec::new();
    let mut stuck = Vec::new();
    for log in map.logs().iter().filter(|l| l.chain.contains(&node_id)) {
        let other = log
            .chain
            .iter()
            .any(|&id| id != node_id && map.node(id).is_some_and(|n| n.alive && !n.drained));
        if other {
            movable.push(log.name.clone());
        } else {
            stuck.push(log.name.clone());
        }
    }
    (movable, stuck)
}

/// A log's new epoch, after `log seal` or `log reconfigure`.
fn print_epoch(
    out: &mut impl Write,
    name: &str,
    next: &chainlog::controller::client::NextEpoch,
    json: bool,
) -> Result<(), Failure> {
    if json {
        print_json(
            out,
            json!({"name": name, "log_id": log_id(name), "sealed_epoch": next.epoch - 1,
                   "epoch": next.epoch, "start_lsn": next.start_lsn, "chain": next.chain}),
        )
    } else {
        writeln!(
            out,
            "log {name}: epoch {} sealed; epoch {} from LSN {}, chain {}",
            next.epoch - 1,
            next.epoch,
            next.start_lsn,
            chain_text(&next.chain)
        )?;
        Ok(())
    }
}

/// `status`: once, or with `--wait` again until everything answers or the time is up; only
/// the last try is printed. `Err` (exit 1) if something did not answer.
async fn status_command(addr: SocketAddr, args: &StatusArgs, json: bool) -> Result<(), Failure> {
    let deadline = args.wait.map(|wait| Instant::now() + wait);
    loop {
        let mut shown = Vec::new();
        let result = status_once(addr, json, &mut shown).await;
        let again = result.is_err() && deadline.is_some_and(|d| Instant::now() < d);
        if !again {
            let mut out = std::io::stdout().lock();
            out.write_all(&shown)?;
            out.flush()?;
            return result;
        }
        tokio::time::sleep(STATUS_RETRY_EVERY).await;
    }
}

async fn status_once(addr: SocketAddr, json: bool, out: &mut Vec<u8>) -> Result<(), Failure> {
    let client = Client::connect(addr).await?;
    match client.map() {
        Some(map) => cluster_status(&client, &map, json, out).await,
        None => status(&client, addr, json, out).await,
    }
}

async fn append(
    client: &Client,
    args: &AppendArgs,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let id = log_id(&args.log);
    // Records are read as they are sent (stdin may be long): one batch at a time.
    let mut records: Box<dyn Iterator<Item = std::io::Result<Vec<u8>>>> =
        if let Some(path) = &args.file {
            let record = std::fs::read(path)
                .map_err(|e| Failure::Failed(format!("reading {}: {e}", path.display())))?;
            Box::new(std::iter::once(Ok(record)))
        } else if !args.records.is_empty() {
            Box::new(args.records.iter().map(|r| Ok(r.as_bytes().to_vec())))
        } else {
            Box::new(
                std::io::stdin()
                    .lock()
                    .lines()
                    .map(|line| line.map(String::into_bytes)),
            )
        };
    // Batches within the node's limits: records, and bytes with room for the headers.
    let limits = client.limits();
    let batch_bytes_max = (limits.frame_bytes_max as usize).saturating_sub(4096) / 2;
    let mut carried: Option<Vec<u8>> = None;
    let mut appended_any = false;
    let mut options = AppendOptions {
        expected_lsn: args.expected_lsn,
        fencing_token: args.fencing_token,
        idempotency: args.writer_id.zip(args.writer_seq),
        ..AppendOptions::default()
    };
    loop {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        while batch.len() < limits.batch_records_max as usize {
            let record = match carried.take() {
                Some(record) => record,
                None => match records.next() {
                    Some(record) => record?,
                    None => break,
                },
            };
            let record_bytes = record.len() + RECORD_HEADER_BYTES;
            if !batch.is_empty() && bytes + record_bytes > batch_bytes_max {
                carried = Some(record);
                break;
            }
            bytes += record_bytes;
            batch.push(record);
        }
        if batch.is_empty() {
            break;
        }
        let lsns = client.append_with(id, &batch, &options).await?;
        appended_any = true;
        options.expected_lsn = options.expected_lsn.map(|_| lsns.end);
        if let Some((_, seq)) = &mut options.idempotency {
            *seq += 1;
        }
        if json {
            print_json(
                out,
                json!({"name": args.log, "log_id": id, "first_lsn": lsns.start, "count": lsns.end - lsns.start}),
            )?;
        } else {
            writeln!(
                out,
                "appended {} record(s) to {}: LSN {}..{}",
                lsns.end - lsns.start,
                args.log,
                lsns.start,
                lsns.end
            )?;
        }
    }
    if !appended_any {
        return Err(Failure::Usage("no records to append".into()));
    }
    Ok(())
}

async fn read_range(
    client: &Client,
    id: u64,
    from: u64,
    to: u64,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut next = from;
    while next < to {
        let want = u32::try_from(to - next)
            .unwrap_or(u32::MAX)
            .min(READ_RECORDS_MAX);
        let batch = client.read(id, next, want, READ_BYTES_MAX).await?;
        let Some(last) = batch.records.last() else {
            break; // the tail is below `to`
        };
        next = last.lsn + 1;
        for record in batch.records.iter().filter(|r| r.lsn < to) {
            print_record(out, record, json)?;
        }
    }
    Ok(())
}

async fn status(
    client: &Client,
    addr: SocketAddr,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut unreachable = 0;
    for shard in 0..client.shard_count() {
        let port = addr.port() + shard;
        let logs = match client.list_logs_of_shard(shard).await {
            Ok(logs) => logs,
            Err(e) => {
                if json {
                    print_json(
                        out,
                        json!({"shard": shard, "port": port, "reachable": false, "error": e.to_string()}),
                    )?;
                } else {
                    writeln!(out, "shard {shard} (port {port}): unreachable: {e}")?;
                }
                unreachable += 1;
                continue;
            }
        };
        let mut described = Vec::new();
        for log in &logs {
            match client.tail_hint(log.log_id).await {
                Ok(tail) => described.push((log, Some(tail))),
                Err(_) => described.push((log, None)),
            }
        }
        if json {
            let logs: Vec<_> = described
                .iter()
                .map(|(log, tail)| {
                    json!({
                        "name": log.name,
                        "log_id": log.log_id,
                        "tail": tail.map(|t| t.tail),
                        "trim_point": tail.map(|t| t.trim_point),
                    })
                })
                .collect();
            print_json(
                out,
                json!({"shard": shard, "port": port, "reachable": true, "logs": logs}),
            )?;
        } else {
            writeln!(
                out,
                "shard {shard} (port {port}): reachable, {} log(s)",
                logs.len()
            )?;
            for (log, tail) in described {
                match tail {
                    Some(t) => writeln!(
                        out,
                        "  {}  id {}  tail {}  trim point {}",
                        log.name, log.log_id, t.tail, t.trim_point
                    )?,
                    None => writeln!(out, "  {}  id {}  tail unknown", log.name, log.log_id)?,
                }
            }
        }
    }
    match unreachable {
        0 => Ok(()),
        n => Err(Failure::Failed(format!(
            "{n} of {} shard(s) unreachable",
            client.shard_count()
        ))),
    }
}

/// A cluster's status: every node (id, address, shards, zone and rack if it has them, alive,
/// drained, last heartbeat), then
/// every log (name, id, rf, epoch and its start, chain, under-replicated if the chain is
/// shorter than the rf) with each replica's tail as that replica knows it (TAIL_HINT to it),
/// its lag behind the head's, and whether it is still catching up (its tail below the epoch's
/// start: it joined the chain in this epoch and is copying older records); then a summary of
/// the under-replicated logs and the replicas catching up.
async fn cluster_status(
    client: &Client,
    map: &ClusterMap,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    if !json {
        writeln!(
            out,
            "cluster map version {}: {} node(s), {} log(s)",
            map.version(),
            map.nodes().len(),
            map.logs().len()
        )?;
    }
    // What did not answer: nodes the map shows not alive, replicas whose tail is unknown.
    let mut missing = Vec::new();
    for node in map.nodes() {
        if !node.alive {
            missing.push(format!("node {} is not alive", node.node_id));
        }
        let heartbeat_ms =
            (node.last_heartbeat_ms != HEARTBEAT_MS_NEVER).then_some(node.last_heartbeat_ms);
        if json {
            print_json(
                out,
                json!({
                    "kind": "node",
                    "node_id": node.node_id,
                    "addr": node.addr,
                    "shard_count": node.shard_count,
                    "zone": node.zone,
                    "rack": node.rack,
                    "alive": node.alive,
                    "drained": node.drained,
                    "last_heartbeat_ms": heartbeat_ms,
                }),
            )?;
        } else {
            let heartbeat = heartbeat_ms.map_or("never".to_string(), |ms| format!("{ms} ms ago"));
            let labels: String = [("zone", &node.zone), ("rack", &node.rack)]
                .into_iter()
                .filter(|(_, label)| !label.is_empty())
                .map(|(name, label)| format!("  {name} {label}"))
                .collect();
            writeln!(
                out,
                "node {}  {}  {} shard(s){labels}  {}{}  last heartbeat {heartbeat}",
                node.node_id,
                node.addr,
                node.shard_count,
                if node.alive { "alive" } else { "not alive" },
                if node.drained { ", drained" } else { "" },
            )?;
        }
    }
    let mut under_replicated = Vec::new();
    let mut catching_up = Vec::new();
    for log in map.logs() {
        let short = log.chain.len() < usize::from(log.replication_factor);
        if short {
            under_replicated.push(log.name.clone());
        }
        let tails = replica_tails(client, log).await;
        for (node_id, tail) in &tails {
            match tail {
                Err(e) => missing.push(format!("log {} at node {node_id}: {e}", log.name)),
                Ok(t) if t.tail < log.start_lsn => {
                    catching_up.push(format!("{} at node {node_id}", log.name))
                }
                Ok(_) => {}
            }
        }
        let head_tail = tails
            .first()
            .and_then(|(_, tail)| tail.as_ref().ok())
            .map(|t| t.tail);
        let lag = |tail: u64| head_tail.map(|head| head.saturating_sub(tail));
        if json {
            let replicas: Vec<_> = tails
                .iter()
                .map(|(node_id, tail)| match tail {
                    Ok(t) => json!({
                        "node_id": node_id,
                        "tail": t.tail,
                        "trim_point": t.trim_point,
                        "lag": lag(t.tail),
                        "catching_up": t.tail < log.start_lsn,
                    }),
                    Err(e) => json!({"node_id": node_id, "error": e.to_string()}),
                })
                .collect();
            print_json(
                out,
                json!({
                    "kind": "log",
                    "name": log.name,
                    "log_id": log.log_id,
                    "replication_factor": log.replication_factor,
                    "epoch": log.epoch,
                    "start_lsn": log.start_lsn,
                    "chain": log.chain,
                    "learners": log.learners,
                    "under_replicated": short,
                    "replicas": replicas,
                }),
            )?;
        } else {
            writeln!(
                out,
                "log {}  id {}  rf {}  epoch {} from LSN {}  chain {}{}{}",
                log.name,
                log.log_id,
                log.replication_factor,
                log.epoch,
                log.start_lsn,
                chain_text(&log.chain),
                if log.learners.is_empty() {
                    String::new()
                } else {
                    let ids: Vec<String> = log.learners.iter().map(u64::to_string).collect();
                    format!("  learners {}", ids.join(", "))
                },
                if short {
                    format!(
                        "  UNDER-REPLICATED ({} of {})",
                        log.chain.len(),
                        log.replication_factor
                    )
                } else {
                    String::new()
                }
            )?;
            for (i, (node_id, tail)) in tails.iter().enumerate() {
                let role = if i == 0 { " (head)" } else { "" };
                match tail {
                    Ok(t) => {
                        let lag = lag(t.tail)
                            .filter(|_| i > 0)
                            .map_or(String::new(), |lag| format!("  lag {lag}"));
                        let joining = if t.tail < log.start_lsn {
                            format!("  catching up (the epoch starts at {})", log.start_lsn)
                        } else {
                            String::new()
                        };
                        writeln!(
                            out,
                            "  node {node_id}{role}  tail {}  trim point {}{lag}{joining}",
                            t.tail, t.trim_point
                        )?
                    }
                    Err(e) => writeln!(out, "  node {node_id}{role}  tail unknown: {e}")?,
                }
            }
        }
    }
    if json {
        print_json(
            out,
            json!({
                "kind": "summary",
                "under_replicated": under_replicated,
                "catching_up": catching_up,
            }),
        )?;
    } else {
        let listed = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                format!("{} ({})", names.len(), names.join(", "))
            }
        };
        writeln!(out, "under-replicated logs: {}", listed(&under_replicated))?;
        writeln!(out, "replicas catching up: {}", listed(&catching_up))?;
    }
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(Failure::Failed(format!(
            "{} part(s) of the cluster did not answer (first: {first})",
            missing.len()
        ))),
    }
}

/// Each replica of `log`'s chain (head first) with its tail as it knows it.
async fn replica_tails(
    client: &Client,
    log: &MapLog,
) -> Vec<(u64, Result<chainlog::net::TailResponse, ClientError>)> {
    let mut tails = Vec::with_capacity(log.chain.len());
    for &node_id in &log.chain {
        tails.push((node_id, client.tail_hint_at(node_id, log.log_id).await));
    }
    tails
}

/// A chain as `2 -> 1 -> 3` (head first).
fn chain_text(chain: &[u64]) -> String {
    let ids: Vec<String> = chain.iter().map(u64::to_string).collect();
    ids.join(" -> ")
}

fn info_json(info: &LogInfo) -> serde_json::Value {
    json!({
        "name": info.name,
        "log_id": info.log_id,
        "shard": info.shard,
        "tail": info.tail,
        "trim_point": info.trim_point,
        "epoch": info.epoch,
        "replication_factor": info.replication_factor,
    })
}

/// A record: `LSN<TAB>payload` on one line ([`escaped`]), or a JSON object with `payload`
/// (valid UTF-8) or `payload_hex`.
fn print_record(out: &mut impl Write, record: &Record, json: bool) -> Result<(), Failure> {
    if json {
        let mut value = json!({
            "lsn": record.lsn,
            "epoch": record.epoch,
            "timestamp_us": record.timestamp_us,
        });
        match std::str::from_utf8(&record.payload) {
            Ok(text) => value["payload"] = json!(text),
            Err(_) => {
                let hex: String = record.payload.iter().map(|b| format!("{b:02x}")).collect();
                value["payload_hex"] = json!(hex);
            }
        }
        print_json(out, value)
    } else {
        writeln!(out, "{}\t{}", record.lsn, escaped(&record.payload))?;
        Ok(())
    }
}

/// A payload as one line of text that is safe on a terminal: UTF-8 text as it is, except
/// backslashes (`\\`), control characters (`\n`, `\r`, `\t`, else `\xNN` or `\u{NNNN}`,
/// so that no escape sequence reaches the terminal and a record stays on its line) and bytes
/// that are not UTF-8 (`\xNN`).
fn escaped(payload: &[u8]) -> String {
    let mut text = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                '\t' => text.push_str("\\t"),
                c if c.is_control() && c.is_ascii() => {
                    text.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => text.push_str(&format!("\\u{{{:04x}}}", c as u32)),
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

fn print_json(out: &mut impl Write, value: serde_json::Value) -> Result<(), Failure> {
    writeln!(out, "{value}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn payloads_print_as_one_safe_line() {
        assert_eq!(escaped(b"plain text, caf\xc3\xa9"), "plain text, café");
        assert_eq!(
            escaped(b"two\nlines\r\tand a \\"),
            "two\\nlines\\r\\tand a \\\\"
        );
        assert_eq!(escaped(b"\x1b[31mred\x00"), "\\x1b[31mred\\x00");
        assert_eq!(escaped("\u{85}\u{9b}".as_bytes()), "\\u{0085}\\u{009b}");
        assert_eq!(escaped(b"\xff\xfe ok \xc3"), "\\xff\\xfe ok \\xc3");
    }
}
