//! `chainlog controller`'s settings: a TOML file (`--config FILE`) and command-line flags,
//! the flags winning, resolved into a [`ControllerConfig`]. Unknown keys in the file are
//! errors, as for the node (`crate::node::NodeArgs`).
//!
//! ```toml
//! data_dir = "/var/lib/chainlog-controller"
//! listen = "127.0.0.1:7300"
//! liveness_ms = 500         # a node is alive this long after its last heartbeat
//! create_timeout_ms = 5000  # CREATE_LOG waits this long for the replicas to apply the map
//! default_rf = 3            # the replication factor of a CREATE_LOG that asks for the default
//! metrics = "127.0.0.1:7301"  # serve GET /metrics there; default: off
//! hello_timeout_ms = 10000  # a connection that sends no HELLO this long is closed
//! idle_timeout_ms = 600000  # a connection that sends nothing this long is closed
//! connections_max = 256     # connections served at once, nodes' included
//! node_connections_reserved = 64  # more, kept for nodes while clients hold the first
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

use super::server::ControllerConfig;
use super::state::LIVENESS_DEFAULT;

/// How long CREATE_LOG waits for every replica's node to apply the new map, by default.
pub const CREATE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How long a connection may take to send its HELLO, by default.
const HELLO_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long a connection may send nothing, by default.
const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(600);
/// Connections served at once (client slots), by default.
pub const CONNECTIONS_MAX_DEFAULT: usize = 256;
/// Connections beyond those kept for nodes, by default: one per node of a cluster of up to 64
/// nodes (a node holds one connection to the controller).
const NODE_CONNECTIONS_RESERVED_DEFAULT: usize = 64;
/// The replication factor of a CREATE_LOG that asks for the default, by default.
pub const DEFAULT_RF_DEFAULT: u8 = 1;
/// Where the controller listens by default.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    7300,
));

/// A controller's command line: `--config FILE` and the settings flags.
#[derive(clap::Args, Debug, Default)]
pub struct ControllerArgs {
    /// A TOML settings file (keys as the flags, with underscores); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: ControllerSettings,
}

impl ControllerArgs {
    /// The controller configuration: the file's settings under the flags', resolved.
    pub fn resolve(self) -> Result<ControllerConfig, String> {
        let file = match self.config.as_deref() {
            Some(path) => ControllerSettings::load(path).map_err(|e| format!("--config {e}"))?,
            None => ControllerSettings::default(),
        };
        self.settings.or(file).resolve()
    }

    /// Runs the controller until SIGTERM or SIGINT ([`super::server::run`]). Errors go to
    /// stderr after `program`; the exit code is 2 for bad settings, 1 for a controller that
    /// failed (its state unreadable, its address taken, ...), 0 for a graceful stop.
    pub fn run(self, program: &str) -> ExitCode {
        crate::command::run_resolved(program, self.resolve(), super::server::run)
    }
}

/// The controller's settings, as given by a file or by flags (every field optional).
#[derive(clap::Args, Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ControllerSettings {
    /// Data directory (created if missing): the cluster state is DIR/state.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve nodes and clients on [default: 127.0.0.1:7300].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// A node is alive for this long after its last heartbeat [default: 500].
    #[arg(long, value_name = "N")]
    pub liveness_ms: Option<u64>,
    /// CREATE_LOG waits this long for every replica's node to apply the new map before it
    /// answers UNAVAILABLE, and RECONFIGURE_LOG for its reconfiguration [default: 5000].
    #[arg(long, value_name = "N")]
    pub create_timeout_ms: Option<u64>,
    /// The replication factor of logs created without one (CREATE_LOG with 0, e.g.
    /// `chainlog log create` without --rf) [default: 1].
    #[arg(long, value_name = "R")]
    pub default_rf: Option<u8>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port, printed
    /// on the serving line), or `off` [default: off].
    #[arg(long, value_name = "HOST:PORT|off")]
    pub metrics: Option<String>,
    /// Close a connection that has not sent a whole HELLO this long after it was accepted
    /// [default: 10000].
    #[arg(long, value_name = "MS")]
    pub hello_timeout_ms: Option<u64>,
    /// Close a connection that sent nothing for this long [default: 600000].
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Connections served at once, clients' and nodes'; one more is served only by the
    /// reserve for nodes [default: 256].
    #[arg(long, value_name = "N")]
    pub connections_max: Option<usize>,
    /// Connections served beyond connections_max, for nodes only: one accepted there must
    /// register or heartbeat within the HELLO timeout, anything else is answered OVERLOADED
    /// [default: 64; 0: no reserve].
    #[arg(long, value_name = "N")]
    pub node_connections_reserved: Option<usize>,
}

impl ControllerSettings {
    /// Reads a settings file.
    pub fn load(path: &Path) -> Result<ControllerSettings, String> {
        crate::command::load_settings(path)
    }

    /// These settings, with `base`'s where these have none.
    pub fn or(self, base: ControllerSettings) -> ControllerSettings {
        ControllerSettings {
            data_dir: self.data_dir.or(base.data_dir),
            listen: self.listen.or(base.listen),
            liveness_ms: self.liveness_ms.or(base.liveness_ms),
            create_timeout_ms: self.create_timeout_ms.or(base.create_timeout_ms),
            default_rf: self.default_rf.or(base.default_rf),
            metrics: self.metrics.or(base.metrics),
            hello_timeout_ms: self.hello_timeout_ms.or(base.hello_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.or(base.idle_timeout_ms),
            connections_max: self.connections_max.or(base.connections_max),
            node_connections_reserved: self
                .node_connections_reserved
                .or(base.node_connections_reserved),
        }
    }

    /// The controller configuration, defaults filled in and every value checked.
    pub fn resolve(self) -> Result<ControllerConfig, String> {
        let data_dir = self
            .data_dir
            .ok_or("a data directory is required (--data-dir, or data_dir in --config)")?;
        let positive = |what: &str, ms: Option<u64>, default: Duration| match ms {
            Some(0) => Err(format!("{what} must be at least 1 ms")),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(default),
        };
        if self.default_rf == Some(0) {
            return Err("default_rf must be at least 1".into());
        }
        if self.connections_max == Some(0) {
            return Err("connections_max must be at least 1".into());
        }
        Ok(ControllerConfig {
            data_dir,
            listen: self.listen.unwrap_or(LISTEN_DEFAULT),
            liveness: positive("liveness_ms", self.liveness_ms, LIVENESS_DEFAULT)?,
            create_timeout: positive(
                "create_timeout_ms",
                self.create_timeout_ms,
                CREATE_TIMEOUT_DEFAULT,
            )?,
            default_rf: self.default_rf.unwrap_or(DEFAULT_RF_DEFAULT),
            hello_timeout: positive(
                "hello_timeout_ms",
                self.hello_timeout_ms,
                HELLO_TIMEOUT_DEFAULT,
            )?,
            idle_timeout: positive(
                "idle_timeout_ms",
                self.idle_timeout_ms,
                IDLE_TIMEOUT_DEFAULT,
            )?,
            connections_max: self.connections_max.unwrap_or(CONNECTIONS_MAX_DEFAULT),
            node_connections_reserved: self
                .node_connections_reserved
                .unwrap_or(NODE_CONNECTIONS_RESERVED_DEFAULT),
            metrics: match self.metrics.as_deref() {
                None | Some("off") => None,
                Some(addr) => Some(
                    addr.parse()
                        .map_err(|e| format!("metrics address {addr:?}: {e}"))?,
                ),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        controller: ControllerArgs,
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("controller.toml");
        std::fs::write(
            &file,
            "data_dir = \"/data\"\nliveness_ms = 500\nconnections_max = 8\n",
        )
        .expect("write");
        let file = file.to_str().expect("utf-8 path");
        let cli =
            Cli::try_parse_from(["c", "--config", file, "--liveness-ms", "700"]).expect("parses");
        let config = cli.controller.resolve().expect("resolves");
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert_eq!(config.listen, LISTEN_DEFAULT);
        assert_eq!(config.liveness, Duration::from_millis(700));
        assert_eq!(config.create_timeout, CREATE_TIMEOUT_DEFAULT);
        assert_eq!(config.default_rf, DEFAULT_RF_DEFAULT);
        assert_eq!(config.connections_max, 8);
        assert_eq!(
            config.node_connections_reserved,
            NODE_CONNECTIONS_RESERVED_DEFAULT
        );
        let cli =
            Cli::try_parse_from(["c", "--config", file, "--default-rf", "3"]).expect("parses");
        assert_eq!(cli.controller.resolve().expect("resolves").default_rf, 3);
        assert_eq!(config.metrics, None, "no metrics unless asked");
        let cli = Cli::try_parse_from(["c", "--data-dir", "/d", "--metrics", "127.0.0.1:0"])
            .expect("parses");
        let config = cli.controller.resolve().expect("resolves");
        assert_eq!(config.metrics, Some("127.0.0.1:0".parse().expect("addr")));
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let unknown = toml::from_str::<ControllerSettings>("data_dir = \"/d\"\nlivenes_ms = 2")
            .expect_err("typo");
        assert!(unknown.to_string().contains("livenes_ms"), "{unknown}");
        let none = ControllerSettings::default()
            .resolve()
            .expect_err("no data dir");
        assert!(none.contains("data directory"), "{none}");
        let zero = ControllerSettings {
            data_dir: Some("/d".into()),
            create_timeout_ms: Some(0),
            ..ControllerSettings::default()
        };
        assert!(zero
            .resolve()
            .expect_err("zero")
            .contains("create_timeout_ms"));
        let no_replicas = ControllerSettings {
            data_dir: Some("/d".into()),
            default_rf: Some(0),
            ..ControllerSettings::default()
        };
        assert!(no_replicas
            .resolve()
            .expect_err("zero")
            .contains("default_rf"));
        let bad = ControllerSettings {
            data_dir: Some("/d".into()),
            metrics: Some("nowhere".into()),
            ..ControllerSettings::default()
        };
        assert!(bad.resolve().expect_err("bad").contains("metrics address"));
        let no_slots = ControllerSettings {
            data_dir: Some("/d".into()),
            connections_max: Some(0),
            ..ControllerSettings::default()
        };
        assert!(no_slots
            .resolve()
            .expect_err("zero")
            .contains("connections_max"));
    }
}
