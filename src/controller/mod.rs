//! The controller (`chainlog controller`): the one process that knows the cluster. Nodes
//! register and heartbeat with it; it places each new log's chain over live nodes, keeps the
//! cluster state durable, and serves the versioned cluster map to nodes and clients
//! (ARCHITECTURE.md, "The controller").
//!
//! - [`state`]: the cluster state as plain data and pure transitions (placement, liveness).
//! - [`store`]: the state's file, rewritten atomically and checksummed.
//! - [`server`]: the process: connections, requests, waiting creates, graceful stop.
//! - [`client`]: a blocking client of it, for a node's control thread and for tools.
//! - [`reconfig`]: sealing a chain that lost a member (or that an operator asked to change)
//!   and starting its next epoch with the survivors; learners for short chains, promoted
//!   once they have copied the log.
//! - `metrics`: what `/metrics` shows (reconfigurations by phase, nodes, logs, learners).
//!
//! The map it serves (`chainlog_net::cluster`) and its reading from GET_MAP pages
//! (`chainlog_net::pages`) are the wire crate's: clients and nodes use them too.

pub mod client;
mod metrics;
pub mod reconfig;
pub mod server;
mod settings;
pub mod state;
pub mod store;

pub use server::{run, ControllerConfig, ControllerError};
pub use settings::{
    ControllerArgs, ControllerSettings, CONNECTIONS_MAX_DEFAULT, CREATE_TIMEOUT_DEFAULT,
    DEFAULT_RF_DEFAULT, LISTEN_DEFAULT,
};
pub use state::{ClusterState, StateError};
pub use store::{StateStore, StoreError};
