//! chainlog: a log storage service for write-ahead-log offload.
//!
//! This crate will hold the node, the controller, the client library and the `chainlog`
//! binary; today it re-exports the storage engine that they are built on.

pub use chainlog_storage as storage;
