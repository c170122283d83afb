//! `chainlog node`'s settings: a TOML file (`--config FILE`) and command-line flags, the flags
//! winning, resolved into a [`NodeConfig`]. Unknown keys in the file are errors (a typo must
//! not silently fall back to a default). [`NodeArgs`] is the whole command line of a node, so
//! that every binary that runs one (`chainlog node`, `chainlog-bench node`) takes the same flags.
//!
//! ```toml
//! data_dir = "/var/lib/chainlog"
//! listen = "127.0.0.1:7400"   # shard i listens on port + i; port 0: free ports the node finds
//! shards = 2                  # default: one per core
//! pin = true
//! node_id = 1
//! metrics = "127.0.0.1:7402"  # or "off"; default: the port after the last shard's
//! durability = "auto"         # auto, dsync or fdatasync
//! segment_mib = 64
//! writes_in_flight_max = 4
//! connections_max = 4096      # per shard; one more is answered OVERLOADED and closed
//! hello_timeout_ms = 10000    # a connection that sends no HELLO this long is closed
//! idle_timeout_ms = 600000    # a client connection silent this long is closed; 0: never
//! controller = "127.0.0.1:7300" # a cluster member (node_id required); default: standalone
//! advertise = "10.0.0.5:7400" # where other nodes and clients reach shard 0 [default: its bound address]
//! zone = "eu-west-1a"         # the failure zone it registers in [default: none]
//! rack = "r17"                # its rack within the zone [default: none]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chainlog_storage::format::{block_align, FRAME_HEADER_BYTES};
use chainlog_storage::{DurabilityMode, StoreConfig};
use serde::Deserialize;

use super::{ConnLimits, MetricsAt, NodeConfig};

/// A node's command line: `--config FILE`, the settings flags and `--no-pin`.
#[derive(clap::Args, Debug, Default)]
pub struct NodeArgs {
    /// A TOML settings file (keys as the flags, with underscores); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: NodeSettings,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
}

impl NodeArgs {
    /// The node configuration: the file's settings under the flags', resolved.
    pub fn resolve(self) -> Result<NodeConfig, String> {
        let file = match self.config.as_deref() {
            Some(path) => NodeSettings::load(path).map_err(|e| format!("--config {e}"))?,
            None => NodeSettings::default(),
        };
        let mut flags = self.settings;
        if self.no_pin {
            flags.pin = Some(false);
        }
        flags.or(file).resolve()
    }

    /// Runs the node until it is stopped (see [`super::run`]). Errors go to stderr after
    /// `program` (e.g. `chainlog node`); the exit code is 2 for bad settings, 1 for a node
    /// that failed, 0 for a graceful stop.
    pub fn run(self, program: &str) -> ExitCode {
        crate::command::run_resolved(program, self.resolve(), super::run)
    }
}

/// The node's settings, as given by a file or by flags (every field optional).
#[derive(clap::Args, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Data directory (created if missing); shard i keeps its data in DIR/shard-i.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of shard 0; shard i listens on the same host at port + i; port 0 binds the first
    /// run of free consecutive ports found (the node prints where it serves on stdout)
    /// [default: 127.0.0.1:7400].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Shard threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Durability of appends: auto measures dsync and fdatasync at startup and picks the
    /// faster [default: auto].
    #[arg(long, value_name = "auto|dsync|fdatasync")]
    pub durability: Option<String>,
    /// Pin shard threads to cores (a file setting; the flag is --no-pin).
    #[arg(skip)]
    pub pin: Option<bool>,
    /// This node's id, reported to clients in HELLO [default: 1].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics, or `off` [default: the listen
    /// host, at the port after the last shard's].
    #[arg(long, value_name = "HOST:PORT|off")]
    pub metrics: Option<String>,
    /// Segment size in MiB [default: 64].
    #[arg(long, value_name = "MIB")]
    pub segment_mib: Option<u64>,
    /// Group-commit writes in flight per shard at most [default: 4].
    #[arg(long, value_name = "N")]
    pub writes_in_flight_max: Option<usize>,
    /// Connections each shard holds at most; one more is answered OVERLOADED and closed
    /// [default: 4096].
    #[arg(long, value_name = "N")]
    pub connections_max: Option<usize>,
    /// Close a connection that has not sent a whole HELLO this long after it was accepted
    /// [default: 10000].
    #[arg(long, value_name = "MS")]
    pub hello_timeout_ms: Option<u64>,
    /// Close a client connection that sent nothing for this long while nothing of it was
    /// pending (no answers owed, no subscription, no replication); 0: never [default: 600000].
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Join the cluster of the controller at HOST:PORT (needs --node-id): the node registers,
    /// heartbeats, takes its logs and chains from the controller's map and replicates them
    /// [default: none, a standalone node].
    #[arg(long, value_name = "HOST:PORT")]
    pub controller: Option<String>,
    /// The address of shard 0 that other nodes and clients use [default: the address shard 0
    /// is bound to].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<SocketAddr>,
    /// The failure zone this cluster member is in (a data centre, an availability zone; at
    /// most 64 bytes): the controller puts a log's replicas in distinct zones when there are
    /// enough [default: none, a zone of its own].
    #[arg(long, value_name = "NAME")]
    pub zone: Option<String>,
    /// Its rack within the zone (at most 64 bytes): after zones, the controller spreads a
    /// chain over racks [default: none, a rack of its own].
    #[arg(long, value_name = "NAME")]
    pub rack: Option<String>,
}

impl NodeSettings {
    /// Reads a settings file.
    pub fn load(path: &Path) -> Result<NodeSettings, String> {
        crate::command::load_settings(path)
    }

    /// These settings, with `base`'s where these have none.
    pub fn or(self, base: NodeSettings) -> NodeSettings {
        NodeSettings {
            data_dir: self.data_dir.or(base.data_dir),
            listen: self.listen.or(base.listen),
            shards: self.shards.or(base.shards),
            durability: self.durability.or(base.durability),
            pin: self.pin.or(base.pin),
            node_id: self.node_id.or(base.node_id),
            metrics: self.metrics.or(base.metrics),
            segment_mib: self.segment_mib.or(base.segment_mib),
            writes_in_flight_max: self.writes_in_flight_max.or(base.writes_in_flight_max),
            connections_max: self.connections_max.or(base.connections_max),
            hello_timeout_ms: self.hello_timeout_ms.or(base.hello_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(base.idle_timeout_ms),
            controller: self.controller.or(base.controller),
            advertise: self.advertise.or(base.advertise),
            zone: self.zone.or(base.zone),
            rack: self.rack.or(base.rack),
        }
    }

    /// The node configuration, defaults filled in and every value checked.
    pub fn resolve(self) -> Result<NodeConfig, String> {
        let data_dir = self
            .data_dir
            .ok_or("a data directory is required (--data-dir, or data_dir in --config)")?;
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
        let shards = self
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if shards == 0 || usize::from(listen.port()) + shards + 1 > usize::from(u16::MAX) + 1 {
            return Err(format!(
                "shards must be at least 1, and ports {}..={} must exist",
                listen.port(),
                usize::from(listen.port()) + shards
            ));
        }
        let durability: DurabilityMode = self.durability.as_deref().unwrap_or("auto").parse()?;
        let metrics = match self.metrics.as_deref() {
            Some("off") => MetricsAt::Off,
            Some(addr) => MetricsAt::Addr(
                addr.parse::<SocketAddr>()
                    .map_err(|e| format!("metrics address {addr:?}: {e}"))?,
            ),
            None => MetricsAt::AfterShards,
        };
        let limits = chainlog_net::Limits::DEFAULT;
        let defaults = StoreConfig::default();
        // A store frame holds the largest APPEND the node accepts (one frame, one write).
        let frame_bytes = block_align(limits.frame_bytes_max as usize + FRAME_HEADER_BYTES);
        let writes_in_flight_max = self
            .writes_in_flight_max
            .unwrap_or(defaults.writes_in_flight_max);
        let store = StoreConfig {
            durability,
            batch_bytes_max: frame_bytes.max(defaults.batch_bytes_max),
            record_bytes_max: limits.record_bytes_max as usize,
            segment_bytes: match self.segment_mib {
                None => defaults.segment_bytes,
                Some(mib) => mib
                    .checked_mul(1 << 20)
                    .ok_or_else(|| format!("segment_mib {mib} is more bytes than a u64 holds"))?,
            },
            writes_in_flight_max,
            write_buffers: defaults.write_buffers.max(writes_in_flight_max + 3),
            ..defaults
        };
        store.validate().map_err(|e| e.to_string())?;
        let controller = match self.controller.as_deref() {
            None => None,
            Some(addr) => {
                if self.node_id.is_none() {
                    return Err(
                        "a cluster member needs its own --node-id (unique in the cluster)".into(),
                    );
                }
                let resolved = std::net::ToSocketAddrs::to_socket_addrs(addr)
                    .map_err(|e| format!("controller address {addr:?}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("controller address {addr:?} resolves to nothing"))?;
                Some(resolved)
            }
        };
        let conn_limits = ConnLimits {
            connections_max: self
                .connections_max
                .unwrap_or(ConnLimits::DEFAULT.connections_max),
            hello_timeout_ms: self
                .hello_timeout_ms
                .unwrap_or(ConnLimits::DEFAULT.hello_timeout_ms),
            idle_timeout_ms: self
                .idle_timeout_ms
                .unwrap_or(ConnLimits::DEFAULT.idle_timeout_ms),
        };
        if conn_limits.connections_max == 0 {
            return Err("connections_max must be at least 1".into());
        }
        let (zone, rack) = (self.zone.unwrap_or_default(), self.rack.unwrap_or_default());
        if (!zone.is_empty() || !rack.is_empty()) && controller.is_none() {
            return Err("--zone and --rack label a cluster member (they need --controller)".into());
        }
        if let Some(label) = [&zone, &rack]
            .into_iter()
            .find(|label| label.len() > usize::from(chainlog_net::LABEL_BYTES_MAX))
        {
            return Err(format!(
                "zone or rack {label:?}: {} bytes, above {}",
                label.len(),
                chainlog_net::LABEL_BYTES_MAX
            ));
        }
        let node_id = self.node_id.unwrap_or(1);
        if node_id == 0 || node_id == u64::MAX {
            return Err(format!("node id {node_id} is reserved; choose another"));
        }
        Ok(NodeConfig {
            data_dir,
            listen,
            shards,
            pin: self.pin.unwrap_or(true),
            recv_bytes: 2 * limits.frame_bytes_max as usize,
            in_flight_max: limits.in_flight_max as usize,
            conn_limits,
            limits,
            node_id,
            metrics,
            store,
            controller,
            advertise: self.advertise,
            zone,
            rack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file: NodeSettings = toml::from_str(
            "data_dir = \"/data\"\nlisten = \"127.0.0.1:9000\"\nshards = 3\nsegment_mib = 16\nmetrics = \"off\"\npin = false",
        )
        .expect("valid file");
        let flags = NodeSettings {
            shards: Some(2),
            ..NodeSettings::default()
        };
        let config = flags.or(file).resolve().expect("resolves");
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.shards, 2);
        assert_eq!(config.store.segment_bytes, 16 << 20);
        assert_eq!(config.metrics, MetricsAt::Off);
        assert!(!config.pin);
        assert_eq!(config.node_id, 1);
    }

    /// A segment size in MiB whose bytes overflow is refused: it was shifted into bytes,
    /// and 2^44 + 16 MiB became 16 MiB without a word (found by the `config` fuzz target).
    #[test]
    fn a_segment_size_beyond_a_u64_of_bytes_is_refused() {
        let settings = NodeSettings {
            data_dir: Some("/data".into()),
            segment_mib: Some((1 << 44) + 16),
            ..NodeSettings::default()
        };
        let error = settings.resolve().expect_err("refused");
        assert!(error.contains("segment_mib 17592186044432"), "{error}");
    }

    #[test]
    fn node_args_put_the_flags_over_the_config_file() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            node: NodeArgs,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "data_dir = \"/data\"\nshards = 3\npin = true\n").expect("write");
        let file = file.to_str().expect("utf-8 path");
        let cli = Cli::try_parse_from(["node", "--config", file, "--shards", "2", "--no-pin"])
            .expect("parses");
        let config = cli.node.resolve().expect("resolves");
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert_eq!(config.shards, 2);
        assert!(!config.pin);
        let missing = Cli::try_parse_from(["node", "--config", "/nonexistent/node.toml"])
            .expect("parses")
            .node
            .resolve()
            .expect_err("no such file");
        assert!(
            missing.starts_with("--config /nonexistent/node.toml"),
            "{missing}"
        );
    }

    #[test]
    fn zone_and_rack_label_a_cluster_member_only() {
        let file: NodeSettings = toml::from_str(
            "data_dir = \"/d\"\nnode_id = 2\ncontroller = \"127.0.0.1:7300\"\nzone = \"a\"\nrack = \"r1\"",
        )
        .expect("valid file");
        let flags = NodeSettings {
            zone: Some("b".into()),
            ..NodeSettings::default()
        };
        let config = flags.or(file).resolve().expect("resolves");
        assert_eq!((config.zone.as_str(), config.rack.as_str()), ("b", "r1"));
        let standalone = NodeSettings {
            data_dir: Some("/d".into()),
            zone: Some("a".into()),
            ..NodeSettings::default()
        };
        let refused = standalone
            .resolve()
            .expect_err("a standalone node has no zone");
        assert!(refused.contains("--controller"), "{refused}");
        let long = NodeSettings {
            data_dir: Some("/d".into()),
            node_id: Some(2),
            controller: Some("127.0.0.1:7300".into()),
            rack: Some("r".repeat(65)),
            ..NodeSettings::default()
        };
        let refused = long.resolve().expect_err("too long");
        assert!(refused.contains("65 bytes"), "{refused}");
        let none = NodeSettings {
            data_dir: Some("/d".into()),
            ..NodeSettings::default()
        };
        let config = none.resolve().expect("resolves");
        assert_eq!((config.zone.as_str(), config.rack.as_str()), ("", ""));
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let unknown =
            toml::from_str::<NodeSettings>("data_dir = \"/d\"\nshard = 2").expect_err("typo");
        assert!(unknown.to_string().contains("shard"), "{unknown}");
        let none = NodeSettings::default().resolve().expect_err("no data dir");
        assert!(none.contains("data directory"), "{none}");
        let bad = NodeSettings {
            data_dir: Some("/d".into()),
            durability: Some("sometimes".into()),
            ..NodeSettings::default()
        };
        assert!(bad
            .resolve()
            .expect_err("bad durability")
            .contains("sometimes"));
        let tiny = NodeSettings {
            data_dir: Some("/d".into()),
            segment_mib: Some(1),
            ..NodeSettings::default()
        };
        assert!(tiny
            .resolve()
            .expect_err("segment too small")
            .contains("segment_bytes"));
    }
}
