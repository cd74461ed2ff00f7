use std::io;

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: i64, max: usize },
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    #[error("connection closed mid-frame after {read} of {expected} bytes")]
    TruncatedFrame { read: usize, expected: usize },
    #[error("file range ended early: {remaining} bytes left at position {position}")]
    FileShorter { position: u64, remaining: usize },
    #[error("send timed out after {ms} ms")]
    SendTimeout { ms: u64 },
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl NetError {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        NetError::Io { op, source }
    }
}
