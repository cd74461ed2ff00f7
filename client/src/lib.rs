//! `strom-client`: a small blocking Kafka-protocol client shared by the `strom` command-line
//! tools and the `strom-bench` load generator.

pub mod batch;
pub mod cluster;
pub mod conn;
pub mod member;
pub mod partitioner;

pub use conn::{code_name, Conn};
