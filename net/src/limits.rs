//! Bounds of the network layer. Each number says why it is what it is.

/// Bytes read from a socket per `recv` when no frame length is known yet: large enough to take
/// several pipelined small requests in one call, small enough to keep idle connections cheap.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Most bytes handed to one `sendfile` call. Bounds how long one call keeps the core (about
/// 0.5 ms at loopback speed), so other tasks on the shard are not starved.
pub const SENDFILE_CALL_BYTES_MAX: usize = 1024 * 1024;

/// Most iovecs gathered into one `writev` call (Linux IOV_MAX is 1024).
pub const WRITEV_IOVECS_MAX: usize = 64;

/// Depth of the per-thread side ring that waits for socket writability. Each waiting
/// connection holds one entry; more waiters than this simply submit in several rounds.
pub const SIDE_RING_ENTRIES: u32 = 256;

const _: () = assert!(READ_CHUNK_BYTES >= 4);
const _: () = assert!(WRITEV_IOVECS_MAX <= 1024);
