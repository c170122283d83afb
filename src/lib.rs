//! chainlog: a log storage service for write-ahead-log offload.
//!
//! This crate holds the node ([`node`]), the controller ([`controller`]), the async client
//! library ([`client`]), the local cluster of node processes ([`dev`]), and what the binaries
//! share: the stop-signal handling ([`signals`]), their logs' setup ([`logging`]) and the
//! `/metrics` exposition (`prometheus`); the storage engine and the wire protocol are their
//! own crates, re-exported.

pub mod client;
mod command;
pub mod controller;
pub mod dev;
mod durable_file;
pub mod history;
pub mod logging;
pub mod node;
mod prometheus;
pub mod replication;
pub mod signals;
pub mod sim;

pub use chainlog_net as net;
pub use chainlog_storage as storage;
