//! Sockets, framing and zero-copy send for Strom. Knows nothing about Kafka.
//!
//! - [`frame`]: length-prefixed request frames, refused before allocation when too large.
//! - [`sender`]: writes response chunks (bytes and file ranges) to a non-blocking socket;
//!   file ranges go out with `sendfile(2)`, so their bytes never pass through user space.
//! - [`side_ring`]: a small per-thread io_uring used only to wait for socket writability,
//!   because glommio 0.9 has no public readiness API.
//! - [`budget`]: a shard's budget of request bytes in flight, charged before a body is read.
//! - [`conn_limit`]: connection counts in all and per client address.
//! - [`alloc`]: a global allocator that maps huge allocations lazily, so a request that claims
//!   billions of array elements cannot abort the process.

pub mod alloc;
pub mod budget;
pub mod conn_limit;
mod error;
pub mod frame;
pub mod limits;
pub mod listener;
pub mod sender;
mod side_ring;
mod sys;

pub use budget::{BudgetPermit, ByteBudget};
pub use conn_limit::{ConnectionLimiter, ConnectionSlot, Refused};
pub use error::NetError;
pub use frame::FrameReader;
pub use sender::{OutChunk, ResponseSender};
pub use sys::{set_nodelay, set_nonblocking, set_user_timeout};
