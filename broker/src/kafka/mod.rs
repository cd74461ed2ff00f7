//! The Kafka protocol layer: connections, the API version table, one handler file per API.

pub mod affinity;
pub mod api;
pub mod codec;
pub mod connection;
pub mod handlers;
