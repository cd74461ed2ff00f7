use std::io;

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A frame's length prefix is above the reader's limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length the prefix announced.
        len: i64,
        /// The reader's frame size limit in bytes.
        max: usize,
    },
    /// A frame's length prefix is negative, so the stream cannot be trusted any further.
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    /// The peer closed the connection before a whole frame arrived.
    #[error("connection closed mid-frame after {read} of {expected} bytes")]
    TruncatedFrame {
        /// Bytes of the frame received before the close.
        read: usize,
        /// Bytes the length prefix announced.
        expected: usize,
    },
    /// `sendfile` hit the end of a file before a file range was sent whole (the file shrank).
    #[error("file range ended early: {remaining} bytes left at position {position}")]
    FileShorter {
        /// File position at which the file ended.
        position: u64,
        /// Bytes of the range still unsent.
        remaining: usize,
    },
    /// The socket stayed full (the peer did not read) for longer than the send wait limit.
    #[error("send timed out after {ms} ms")]
    SendTimeout {
        /// The wait limit that expired, in milliseconds.
        ms: u64,
    },
    /// A system call on a socket or file failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done, e.g. "sendmsg" or "set O_NONBLOCK".
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl NetError {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        NetError::Io { op, source }
    }
}
