//! `SegmentFd`: a duplicated descriptor of a segment file that other threads may read from.
//!
//! This is the crate's only `unsafe` code.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// A dup()ed descriptor of a segment's `.log` file, for sendfile/pread on other threads.
/// Send + Sync; closes on drop. It keeps the file readable even after the segment is deleted.
#[derive(Debug)]
pub struct SegmentFd(OwnedFd);

impl SegmentFd {
    /// Duplicates `fd` (with close-on-exec).
    ///
    /// `fd` must be an open descriptor for the duration of the call; the caller guarantees that
    /// by passing the descriptor of a file it holds open.
    pub(crate) fn dup_of(fd: RawFd) -> std::io::Result<SegmentFd> {
        // SAFETY: the caller holds the file that owns `fd` open across this call (see above), so
        // the borrowed descriptor is valid for the borrow's lifetime, which ends in this statement.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Ok(SegmentFd(borrowed.try_clone_to_owned()?))
    }

    /// Another owned duplicate of the descriptor (e.g. to wrap in a `std::fs::File`).
    pub fn try_clone_owned(&self) -> std::io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

impl From<OwnedFd> for SegmentFd {
    /// Wraps a descriptor the caller owns (e.g. a file opened by a test or tool).
    fn from(fd: OwnedFd) -> SegmentFd {
        SegmentFd(fd)
    }
}

impl AsRawFd for SegmentFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for SegmentFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
