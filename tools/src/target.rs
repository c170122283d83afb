//! Where a load mode sends its load: `--target HOST:PORT`, a node or a cluster's controller
//! that is already running, or `--dev N [--rf R]`, a local dev cluster ([`chainlog::dev`])
//! that this process starts for the run and always tears down: at the end of the run, on an
//! error, and on Ctrl-C or SIGTERM (which then exit 130). More than one node, or rf above 1,
//! makes the dev cluster a cluster with a controller; the target is then the controller, and
//! the client library routes each append to its log's head.
//!
//! The processes of a dev cluster run from this very executable (`chainlog-bench node ...` and
//! `chainlog-bench controller ...`, hidden subcommands taking `chainlog node`'s and `chainlog
//! controller`'s flags), so `cargo run -p chainlog-tools` needs no `chainlog` binary.
//!
//! # Contract for a mode (e.g. `append`)
//!
//! - Flatten [`TargetArgs`] into the mode's arguments (`#[command(flatten)] pub(crate) target:
//!   TargetArgs`) in place of its own `--target`. It serializes as its fields (`target`, `dev`,
//!   `rf`, `dev_shards`, `dev_dir`) in the JSON report's `config`.
//! - Inside the mode's tokio runtime, before any load, call `args.target.resolve().await` once.
//!   It answers the address to connect the client to (a node's shard 0, or the controller),
//!   and, with `--dev`, a [`DevGuard`]. Create the mode's logs with `--rf` replicas
//!   ([`TargetArgs::rf`], 1 without `--dev`).
//! - Keep the guard alive until the load and the report are done: dropping it stops the
//!   cluster (so `?` on an error path tears it down too). Do not move it into a task that may
//!   outlive the run.
//! - Error strings are ready to print after `chainlog-bench: `.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chainlog::dev::{DevCluster, DevOptions, Launcher};
use clap::Args;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{Mutex, MutexGuard};

/// The exit code after Ctrl-C or SIGTERM stopped a run (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

/// Where the load goes: a running node or controller (`--target`) or a dev cluster started
/// for the run (`--dev`).
#[derive(Clone, Debug, Args, Serialize)]
pub(crate) struct TargetArgs {
    /// Address of a running node's shard 0 (shard i listens on port + i), or of a cluster's
    /// controller.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:7400",
        conflicts_with = "dev"
    )]
    pub(crate) target: String,
    /// Start a local dev cluster of N nodes for this run (stopped after it) instead of using
    /// --target; its processes run from this executable (more than one node, or --rf above
    /// 1, adds the controller).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) dev: Option<u16>,
    /// Replication factor of the logs the run creates (in the dev cluster, or in the cluster
    /// behind --target); an existing log of another factor is refused.
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..))]
    pub(crate) rf: u8,
    /// Shards per node of the dev cluster.
    #[arg(long, value_name = "S", default_value_t = 1, requires = "dev",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) dev_shards: u16,
    /// Keep the dev cluster's data and node logs in DIR (default: a temp dir, removed).
    #[arg(long, value_name = "DIR", requires = "dev")]
    pub(crate) dev_dir: Option<PathBuf>,
}

impl TargetArgs {
    /// The keys of this struct's JSON form that did not apply to the run: `target` with
    /// `--dev`, the dev cluster's without it.
    pub(crate) fn unapplied(&self) -> &'static [&'static str] {
        if self.dev.is_some() {
            &["target"]
        } else {
            &["dev", "dev_shards", "dev_dir"]
        }
    }

    /// The address to connect to (a node's shard 0, or the controller) and, with `--dev`, the
    /// cluster started for it.
    /// Must be called inside a tokio runtime (the signal watcher is a task of it).
    pub(crate) async fn resolve(&self) -> Result<(SocketAddr, Option<DevGuard>), String> {
        let Some(nodes) = self.dev else {
            let addr = tokio::net::lookup_host(&self.target)
                .await
                .map_err(|e| format!("--target {}: {e}", self.target))?
                .next()
                .ok_or_else(|| format!("--target {}: no address", self.target))?;
            return Ok((addr, None));
        };
        // Listening before the cluster starts: a Ctrl-C during the start is kept and acted on
        // as soon as the cluster is in the guard, rather than killing this process with the
        // temp dir left behind.
        let mut interrupt =
            signal(SignalKind::interrupt()).map_err(|e| format!("--dev: SIGINT: {e}"))?;
        let mut terminate =
            signal(SignalKind::terminate()).map_err(|e| format!("--dev: SIGTERM: {e}"))?;
        let launcher =
            Launcher::current_exe(&["node"], &["controller"]).map_err(|e| format!("--dev: {e}"))?;
        let options = DevOptions {
            nodes: usize::from(nodes),
            rf: usize::from(self.rf),
            shards: usize::from(self.dev_shards),
            data_dir: self.dev_dir.clone(),
            ..DevOptions::new(launcher)
        };
        let cluster = DevCluster::start(options)
            .await
            .map_err(|e| format!("--dev {nodes}: {e}"))?;
        let addr = cluster.target();
        let slot = Arc::new(Mutex::new(Some(cluster)));
        let watched = Arc::clone(&slot);
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            // The run's guard may have stopped the cluster already; then there is nothing to
            // stop but the signal still ends the run.
            // Waits for a fault drill's restart in progress (bounded by the ready timeout).
            let cluster = watched.lock().await.take();
            if let Some(cluster) = cluster {
                cluster.stop();
                eprintln!("chainlog-bench: interrupted; the dev cluster is stopped");
            }
            std::process::exit(EXIT_INTERRUPTED);
        });
        Ok((addr, Some(DevGuard { cluster: slot })))
    }
}

/// `config` as a JSON object without the keys in `drop` and without the options left unset
/// (`null`): the configuration block of the HTML report shows only what applied to the run.
pub(crate) fn applied_config(config: &impl Serialize, drop: &[&str]) -> serde_json::Value {
    let mut value = serde_json::to_value(config).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.retain(|key, v| !v.is_null() && !drop.contains(&key.as_str()));
    }
    value
}

/// A dev cluster started for a run: dropping it stops the cluster (every process reaped, the
/// temp dir removed), unless the signal watcher did first.
#[derive(Debug)]
pub(crate) struct DevGuard {
    /// An async mutex: a fault drill holds it across a member's restart
    /// ([`crate::faults`]); the signal watcher waits for that.
    cluster: Arc<Mutex<Option<DevCluster>>>,
}

impl DevGuard {
    /// The cluster (`None` once the signal watcher has stopped it).
    pub(crate) async fn cluster(&self) -> MutexGuard<'_, Option<DevCluster>> {
        self.cluster.lock().await
    }
}

impl Drop for DevGuard {
    fn drop(&mut self) {
        // Locked only by a fault drill, which is over before the guard drops, and by the
        // signal watcher, which then stops the cluster itself and exits.
        let Ok(mut slot) = self.cluster.try_lock() else {
            return;
        };
        if let Some(cluster) = slot.take() {
            cluster.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        target: TargetArgs,
    }

    #[test]
    fn dev_conflicts_with_target_and_dev_flags_require_dev() {
        let plain = Cli::try_parse_from(["t"]).expect("defaults");
        assert_eq!(plain.target.target, "127.0.0.1:7400");
        assert_eq!(plain.target.dev, None);
        let dev = Cli::try_parse_from(["t", "--dev", "1", "--dev-shards", "2"]).expect("dev");
        assert_eq!((dev.target.dev, dev.target.rf), (Some(1), 1));
        assert_eq!(dev.target.dev_shards, 2);
        // --rf applies to a cluster behind --target too.
        let rf = Cli::try_parse_from(["t", "--target", "10.0.0.1:7000", "--rf", "3"]).expect("rf");
        assert_eq!(rf.target.rf, 3);
        assert_eq!(rf.target.unapplied(), ["dev", "dev_shards", "dev_dir"]);
        assert_eq!(dev.target.unapplied(), ["target"]);
        let applied = applied_config(&dev.target, dev.target.unapplied());
        assert_eq!(
            applied,
            serde_json::json!({"dev": 1, "rf": 1, "dev_shards": 2}),
            "no target, no unset dev_dir"
        );
        for bad in [
            &["t", "--dev", "1", "--target", "10.0.0.1:7400"][..],
            &["t", "--dev-shards", "2"],
            &["t", "--dev-dir", "/tmp/x"],
            &["t", "--dev", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
