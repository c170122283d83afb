//! chainlog: a log storage service for write-ahead-log offload.
//!
//! This crate holds the node ([`node`]) and, as they land, the controller, the client library
//! and the CLI; the storage engine and the wire protocol are their own crates, re-exported.

pub mod node;

pub use chainlog_net as net;
pub use chainlog_storage as storage;
