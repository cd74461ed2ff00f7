//! `SyncJournal`: disk hooks for black-box power-loss tests of the whole broker (test-only
//! settings). It appends one line per durable fact to a journal file, so that after a SIGKILL a
//! test can cut every file back to what a power loss could have left, and it can fail the
//! fdatasyncs of chosen files with EIO.
//!
//! Journal lines are `<st_dev> <st_ino> <op> <bytes>`, in the order the facts happened:
//! - `sync N`: an fdatasync of the file succeeded; its first N bytes are durable (N is the size
//!   when the sync started, so it covers every write that completed before);
//! - `create 0`: the file was created or truncated to empty; nothing of it is durable;
//! - `trunc N`: the file was cut to N bytes; at most N bytes of it are durable.
//!
//! Files are named by inode so that renames need no line. A file with no line is not durable.

use std::io::Write;
use std::os::fd::RawFd;
use std::path::Path;

use crate::file_io::{DiskHooks, FileRef};

/// See the module comment.
#[derive(Debug)]
pub struct SyncJournal {
    journal: Option<std::fs::File>,
    fail_sync_path_contains: Option<String>,
}

/// (st_dev, st_ino, st_size) of an open descriptor.
fn stat_fd(fd: RawFd) -> Option<(u64, u64, u64)> {
    // SAFETY: `libc::stat` is plain integers, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the struct we own; `fd` is open for the call (FileRef).
    let rc = unsafe { libc::fstat(fd, &mut st) };
    (rc == 0).then_some((st.st_dev, st.st_ino, st.st_size as u64))
}

impl SyncJournal {
    /// Hooks that journal to `journal` (appending; created if missing) and fail with EIO every
    /// fdatasync of a file whose path contains `fail_sync_path_contains`. Either may be absent.
    pub fn open(
        journal: Option<&Path>,
        fail_sync_path_contains: Option<String>,
    ) -> std::io::Result<SyncJournal> {
        let journal = match journal {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => None,
        };
        Ok(SyncJournal {
            journal,
            fail_sync_path_contains: fail_sync_path_contains.filter(|s| !s.is_empty()),
        })
    }

    fn line(&self, fd: RawFd, op: &str, bytes: u64) {
        let (Some(mut journal), Some((dev, ino, _))) = (self.journal.as_ref(), stat_fd(fd)) else {
            return;
        };
        // One write(2) per line on an O_APPEND descriptor: lines of several shards never mix.
        let line = format!("{dev} {ino} {op} {bytes}\n");
        if let Err(e) = journal.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "writing the sync journal (test.fault.sync.journal)");
        }
    }
}

impl DiskHooks for SyncJournal {
    fn before_sync(&self, file: FileRef<'_>) -> std::io::Result<u64> {
        if let Some(pattern) = &self.fail_sync_path_contains {
            if file.path.to_string_lossy().contains(pattern.as_str()) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(stat_fd(file.fd).map_or(0, |(_, _, size)| size))
    }

    fn after_sync(&self, file: FileRef<'_>, token: u64, ok: bool) {
        if ok {
            self.line(file.fd, "sync", token);
        }
    }

    fn after_truncate(&self, file: FileRef<'_>, size: u64) {
        self.line(file.fd, "trunc", size);
    }

    fn after_open(&self, file: FileRef<'_>, created: bool, truncated: bool) {
        if created || truncated {
            self.line(file.fd, "create", 0);
        }
    }
}
